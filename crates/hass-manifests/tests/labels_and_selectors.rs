//! Labels and selectors, for the defaults and every example: each object
//! (and each pod or Job template inside one) carries the
//! `app.kubernetes.io/*` labels `meta::labels` promises; each workload's
//! selector picks its own pods and no other workload's; and every Service,
//! PodDisruptionBudget, policy and monitor selects something the same render
//! creates, on ports those pods or Services name.

// Helpers outside #[test] fns panic on setup failures too (clippy.toml only
// exempts test fns).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use hass_manifests::Values;
use serde_json::Value;

type Labels = BTreeMap<String, String>;

/// The labels `meta::labels` puts on every object, and their fixed values
/// (`None`: per object).
const PROMISED: &[(&str, Option<&str>)] = &[
    ("app.kubernetes.io/name", None),
    ("app.kubernetes.io/instance", None),
    ("app.kubernetes.io/component", None),
    ("app.kubernetes.io/part-of", Some("hass-sidecars")),
    ("app.kubernetes.io/managed-by", Some("hass-manifests")),
];

/// Kinds whose pods run until replaced: what Services and PDBs may select.
const CONTROLLERS: &[&str] = &["StatefulSet", "DaemonSet", "Deployment"];

struct Object {
    kind: String,
    name: String,
    value: Value,
}

/// One render: where its values came from, the values, the objects.
struct Rendered {
    source: String,
    values: Values,
    objects: Vec<Object>,
}

fn rendered(source: &str, values: Values) -> Rendered {
    let objects = hass_manifests::render(&values)
        .unwrap()
        .into_iter()
        .map(|m| Object {
            value: serde_saphyr::from_str(&m.yaml)
                .unwrap_or_else(|e| panic!("{source}: {} {}: {e}", m.kind, m.name)),
            kind: m.kind,
            name: m.name,
        })
        .collect();
    Rendered {
        source: source.to_owned(),
        values,
        objects,
    }
}

/// The defaults and every example.
fn renders() -> Vec<Rendered> {
    let mut out = vec![rendered("defaults", Values::default())];
    for name in ["minimal", "homelab", "everything"] {
        let path = format!(
            "{}/../../examples/{name}.values.yaml",
            env!("CARGO_MANIFEST_DIR")
        );
        let values = hass_manifests::values::load(std::path::Path::new(&path)).unwrap();
        out.push(rendered(name, values));
    }
    out
}

fn labels_at(value: &Value) -> Labels {
    serde_json::from_value(value.clone()).unwrap_or_default()
}

/// `matchLabels` of a selector; a selector with anything else (expressions)
/// is not something these objects use, so it fails here.
fn match_labels(selector: &Value, what: &str) -> Labels {
    let map = selector
        .as_object()
        .unwrap_or_else(|| panic!("{what}: no selector"));
    assert!(
        map.keys().all(|k| k == "matchLabels"),
        "{what}: selector has more than matchLabels: {selector}"
    );
    let labels = labels_at(&selector["matchLabels"]);
    assert!(
        !labels.is_empty(),
        "{what}: an empty selector selects everything"
    );
    labels
}

fn subset(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Where templates sit in an object, as JSON pointers.
fn template_pointers(kind: &str) -> &'static [&'static str] {
    match kind {
        "StatefulSet" | "DaemonSet" | "Deployment" | "Job" => &["/spec/template"],
        "CronJob" => &["/spec/jobTemplate", "/spec/jobTemplate/spec/template"],
        _ => &[],
    }
}

/// A pod template of the render: its workload, labels and named container ports.
struct Pod<'a> {
    owner: &'a Object,
    labels: Labels,
    ports: Vec<(String, i64)>,
}

fn pods(r: &Rendered) -> Vec<Pod<'_>> {
    let mut out = Vec::new();
    for o in &r.objects {
        let template = match o.kind.as_str() {
            "CronJob" => o.value.pointer("/spec/jobTemplate/spec/template"),
            kind if CONTROLLERS.contains(&kind) => o.value.pointer("/spec/template"),
            _ => None,
        };
        let Some(template) = template else { continue };
        let ports = template["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or("").to_owned(),
                    p["containerPort"].as_i64().unwrap(),
                )
            })
            .collect();
        out.push(Pod {
            owner: o,
            labels: labels_at(&template["metadata"]["labels"]),
            ports,
        });
    }
    out
}

fn assert_promised_labels(r: &Rendered, what: &str, labels: &Labels) {
    for (key, fixed) in PROMISED {
        let value = labels
            .get(*key)
            .unwrap_or_else(|| panic!("{}: {what} lacks {key}: {labels:?}", r.source));
        let want = match (*key, fixed) {
            ("app.kubernetes.io/instance", _) => r.values.name.as_str(),
            (_, Some(fixed)) => fixed,
            (_, None) => {
                assert!(!value.is_empty(), "{}: {what}: {key} is empty", r.source);
                continue;
            }
        };
        assert_eq!(value, want, "{}: {what}: {key}", r.source);
    }
}

/// The test's list is the code's list: a label added to `meta::labels`
/// must be added here (and so checked), and one dropped there fails here.
#[test]
fn promised_labels_are_what_meta_labels_sets() {
    let values = Values::default();
    let keys: Vec<String> = hass_manifests::meta::labels(&values, "c", "n")
        .into_keys()
        .collect();
    let mut promised: Vec<String> = PROMISED.iter().map(|(k, _)| (*k).to_owned()).collect();
    promised.sort();
    assert_eq!(keys, promised);
}

#[test]
fn every_object_and_template_carries_the_app_kubernetes_io_labels() {
    for r in renders() {
        assert!(r.objects.len() > 5, "{}", r.source);
        for o in &r.objects {
            let what = format!("{} {}", o.kind, o.name);
            let labels = labels_at(&o.value["metadata"]["labels"]);
            assert_promised_labels(&r, &what, &labels);
            for pointer in template_pointers(&o.kind) {
                let template = o
                    .value
                    .pointer(pointer)
                    .unwrap_or_else(|| panic!("{}: {what} has no {pointer}", r.source));
                let inner = labels_at(&template["metadata"]["labels"]);
                assert_promised_labels(&r, &format!("{what} {pointer}"), &inner);
                // A workload's pods are of its component.
                assert_eq!(
                    inner.get("app.kubernetes.io/component"),
                    labels.get("app.kubernetes.io/component"),
                    "{}: {what} {pointer}",
                    r.source
                );
            }
        }
    }
}

/// A controller's selector picks its own template's pods and none of another
/// controller's (two controllers owning one pod fight over it).
#[test]
fn every_workload_selects_its_own_pods_only() {
    for r in renders() {
        let pods = pods(&r);
        let controllers: Vec<&Pod<'_>> = pods
            .iter()
            .filter(|p| CONTROLLERS.contains(&p.owner.kind.as_str()))
            .collect();
        assert!(!controllers.is_empty(), "{}", r.source);
        for pod in &controllers {
            let what = format!("{} {}", pod.owner.kind, pod.owner.name);
            let selector = match_labels(&pod.owner.value["spec"]["selector"], &what);
            assert!(
                subset(&selector, &pod.labels),
                "{}: {what}: selector {selector:?} is not in its pod labels {:?}",
                r.source,
                pod.labels
            );
            for other in pods.iter().filter(|p| !std::ptr::eq(p.owner, pod.owner)) {
                assert!(
                    !subset(&selector, &other.labels),
                    "{}: {what}'s selector also picks {} {}'s pods",
                    r.source,
                    other.owner.kind,
                    other.owner.name
                );
            }
        }
    }
}

/// Services select running pods (never a backup Job's), and every port's
/// target is a port those pods name.
#[test]
fn every_service_selects_pods_of_the_render_on_their_ports() {
    for r in renders() {
        let pods = pods(&r);
        let mut services = 0;
        for svc in r.objects.iter().filter(|o| o.kind == "Service") {
            services += 1;
            let what = format!("Service {}", svc.name);
            let selector = labels_at(&svc.value["spec"]["selector"]);
            assert!(!selector.is_empty(), "{}: {what} has no selector", r.source);
            let selected: Vec<&Pod<'_>> = pods
                .iter()
                .filter(|p| subset(&selector, &p.labels))
                .collect();
            assert!(
                !selected.is_empty(),
                "{}: {what} selects no pod: {selector:?}",
                r.source
            );
            for pod in &selected {
                assert!(
                    CONTROLLERS.contains(&pod.owner.kind.as_str()),
                    "{}: {what} selects {} {}",
                    r.source,
                    pod.owner.kind,
                    pod.owner.name
                );
                for port in svc.value["spec"]["ports"].as_array().unwrap() {
                    let target = &port["targetPort"];
                    let found = match target {
                        Value::String(name) => pod.ports.iter().any(|(n, _)| n == name),
                        Value::Number(n) => pod.ports.iter().any(|(_, p)| Some(*p) == n.as_i64()),
                        _ => pod
                            .ports
                            .iter()
                            .any(|(_, p)| Some(*p) == port["port"].as_i64()),
                    };
                    assert!(
                        found,
                        "{}: {what}: port {port} is not a port of {} {} ({:?})",
                        r.source, pod.owner.kind, pod.owner.name, pod.ports
                    );
                }
            }
        }
        assert!(services >= 3, "{}", r.source);
    }
}

/// PDBs, both policy flavours and both monitor kinds select something here.
#[test]
fn budgets_policies_and_monitors_select_objects_of_the_render() {
    let mut kinds_seen = std::collections::BTreeSet::new();
    for r in renders() {
        let pods = pods(&r);
        let services: Vec<(&Object, Labels)> = r
            .objects
            .iter()
            .filter(|o| o.kind == "Service")
            .map(|o| (o, labels_at(&o.value["metadata"]["labels"])))
            .collect();
        for o in &r.objects {
            let what = format!("{} {}", o.kind, o.name);
            let selects_pods = |selector: &Labels, controllers_only: bool| {
                pods.iter().any(|p| {
                    subset(selector, &p.labels)
                        && (!controllers_only || CONTROLLERS.contains(&p.owner.kind.as_str()))
                })
            };
            match o.kind.as_str() {
                "PodDisruptionBudget" => {
                    let s = match_labels(&o.value["spec"]["selector"], &what);
                    assert!(selects_pods(&s, true), "{}: {what}: {s:?}", r.source);
                }
                "NetworkPolicy" => {
                    let s = match_labels(&o.value["spec"]["podSelector"], &what);
                    assert!(selects_pods(&s, false), "{}: {what}: {s:?}", r.source);
                }
                "CiliumNetworkPolicy" => {
                    // Cilium's `k8s:` source prefix is not part of the pod's label.
                    let s: Labels = match_labels(&o.value["spec"]["endpointSelector"], &what)
                        .into_iter()
                        .map(|(k, v)| (k.trim_start_matches("k8s:").to_owned(), v))
                        .collect();
                    assert!(selects_pods(&s, false), "{}: {what}: {s:?}", r.source);
                }
                "PodMonitor" => {
                    let s = match_labels(&o.value["spec"]["selector"], &what);
                    let selected: Vec<&Pod<'_>> =
                        pods.iter().filter(|p| subset(&s, &p.labels)).collect();
                    assert!(!selected.is_empty(), "{}: {what}: {s:?}", r.source);
                    for endpoint in o.value["spec"]["podMetricsEndpoints"].as_array().unwrap() {
                        let port = endpoint["port"].as_str().unwrap();
                        for pod in &selected {
                            assert!(
                                pod.ports.iter().any(|(n, _)| n == port),
                                "{}: {what}: no port {port} on {}",
                                r.source,
                                pod.owner.name
                            );
                        }
                    }
                }
                "ServiceMonitor" => {
                    let s = match_labels(&o.value["spec"]["selector"], &what);
                    let selected: Vec<&Object> = services
                        .iter()
                        .filter(|(_, l)| subset(&s, l))
                        .map(|(svc, _)| *svc)
                        .collect();
                    assert!(!selected.is_empty(), "{}: {what}: {s:?}", r.source);
                    for endpoint in o.value["spec"]["endpoints"].as_array().unwrap() {
                        let port = endpoint["port"].as_str().unwrap();
                        for svc in &selected {
                            let names: Vec<&str> = svc.value["spec"]["ports"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .filter_map(|p| p["name"].as_str())
                                .collect();
                            assert!(
                                names.contains(&port),
                                "{}: {what}: Service {} has no port {port}: {names:?}",
                                r.source,
                                svc.name
                            );
                        }
                    }
                }
                _ => continue,
            }
            kinds_seen.insert(o.kind.clone());
        }
    }
    assert_eq!(
        kinds_seen.into_iter().collect::<Vec<_>>(),
        [
            "CiliumNetworkPolicy",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "PodMonitor",
            "ServiceMonitor"
        ]
    );
}
