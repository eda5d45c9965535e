//! Names, labels and the small builders every object uses.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ContainerPort, HTTPGetAction, Probe, ResourceRequirements, SeccompProfile,
    SecurityContext,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::values::{Resources, Values};

/// The non-root UID (and GID) of every hass-sidecars container.
pub const SIDECAR_UID: i64 = 65532;

pub const INSTANCE: &str = "app.kubernetes.io/instance";
pub const COMPONENT: &str = "app.kubernetes.io/component";
/// Which Service a monitor selects: `admin` for the metrics Services.
pub const SERVICE_ROLE: &str = "hass-sidecars.io/service";
pub const NODE: &str = "hass-sidecars.io/node";

/// Labels that pick a component's pods: stable across upgrades, so they are
/// the selectors of Deployments, Services and policies.
pub fn selector_labels(values: &Values, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (INSTANCE.to_owned(), values.name.clone()),
        (COMPONENT.to_owned(), component.to_owned()),
    ])
}

/// Every label of an object of `component`: the selector labels plus name,
/// part-of and managed-by.
pub fn labels(values: &Values, component: &str, app: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(values, component);
    labels.insert("app.kubernetes.io/name".to_owned(), app.to_owned());
    labels.insert(
        "app.kubernetes.io/part-of".to_owned(),
        "hass-sidecars".to_owned(),
    );
    labels.insert(
        "app.kubernetes.io/managed-by".to_owned(),
        "hass-manifests".to_owned(),
    );
    labels
}

pub fn selector(labels: BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels),
        ..Default::default()
    }
}

/// Metadata in the instance's namespace.
pub fn object_meta(values: &Values, name: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(values.namespace.clone()),
        labels: Some(labels),
        ..Default::default()
    }
}

/// A checkov finding accepted on purpose, with the reason: becomes a
/// `checkov.io/skipN: CHECK=reason` annotation on the object.
#[derive(Debug, Clone, Copy)]
pub struct Accepted {
    pub check: &'static str,
    pub reason: &'static str,
}

pub fn accept(meta: &mut ObjectMeta, accepted: &[Accepted]) {
    if accepted.is_empty() {
        return;
    }
    let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
    let start = annotations
        .keys()
        .filter(|k| k.starts_with("checkov.io/skip"))
        .count();
    for (i, a) in accepted.iter().enumerate() {
        annotations.insert(
            format!("checkov.io/skip{}", start + i + 1),
            format!("{}={}", a.check, a.reason),
        );
    }
}

pub fn quantity(text: &str) -> Quantity {
    Quantity(text.to_owned())
}

pub fn resources(r: &Resources) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), quantity(&r.cpu_request)),
            ("memory".to_owned(), quantity(&r.memory_request)),
        ])),
        limits: Some(BTreeMap::from([
            ("cpu".to_owned(), quantity(&r.cpu_limit)),
            ("memory".to_owned(), quantity(&r.memory_limit)),
        ])),
        ..Default::default()
    }
}

pub fn seccomp_runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        ..Default::default()
    }
}

/// The container security context of every sidecar: UID 65532, read-only
/// root filesystem, no capabilities, no privilege escalation, RuntimeDefault
/// seccomp.
pub fn restricted_security_context() -> SecurityContext {
    SecurityContext {
        run_as_user: Some(SIDECAR_UID),
        run_as_group: Some(SIDECAR_UID),
        run_as_non_root: Some(true),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Default::default()
        }),
        seccomp_profile: Some(seccomp_runtime_default()),
        ..Default::default()
    }
}

pub fn tcp_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: port,
        protocol: Some("TCP".to_owned()),
        ..Default::default()
    }
}

pub fn http_probe(path: &str, port: i32, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(port),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(5),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

/// [`http_probe`] on 127.0.0.1: with `hostNetwork` the pod's loopback is the
/// node's, where kubelet runs, so it reaches a port bound there.
pub fn loopback_probe(path: &str, port: i32, period: i32, failures: i32) -> Probe {
    let mut probe = http_probe(path, port, period, failures);
    if let Some(get) = probe.http_get.as_mut() {
        get.host = Some("127.0.0.1".to_owned());
    }
    probe
}

/// A node name as part of an object name: lowercase letters, digits and `-`.
pub fn slug(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    out.truncate(max);
    let trimmed = out.trim_matches('-');
    if trimmed.is_empty() {
        "node".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// The image findings a workload accepts: pinned by tag rather than digest
/// (unless every image has a digest), and a pull policy other than `Always`.
pub fn image_findings(values: &Values, images: &[String]) -> Vec<Accepted> {
    let mut accepted = Vec::new();
    if images.iter().any(|image| !image.contains('@')) {
        accepted.push(Accepted {
            check: "CKV_K8S_43",
            reason: "images are pinned by tag; set the image digest values to pin by digest",
        });
    }
    if values.image_pull_policy != crate::values::PullPolicy::Always {
        accepted.push(Accepted {
            check: "CKV_K8S_15",
            reason: "image_pull_policy is not Always: tags are pinned, and Always would need a registry on every restart",
        });
    }
    accepted
}

/// Policies for a workload's pods exist only as CiliumNetworkPolicies, which
/// checkov does not read.
pub fn network_policy_findings(values: &Values) -> Vec<Accepted> {
    if values.network_policy.cilium && !values.network_policy.kubernetes {
        vec![Accepted {
            check: "CKV2_K8S_6",
            reason: "a CiliumNetworkPolicy of the same name selects these pods (checkov reads only networking.k8s.io policies)",
        }]
    } else {
        Vec::new()
    }
}

/// Every image of a pod's containers.
pub fn pod_images(pod: &k8s_openapi::api::core::v1::PodSpec) -> Vec<String> {
    pod.containers
        .iter()
        .filter_map(|c| c.image.clone())
        .collect()
}
