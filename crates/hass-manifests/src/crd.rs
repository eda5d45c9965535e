//! Typed structs for the custom resources we emit: Prometheus Operator's
//! ServiceMonitor, PodMonitor and PrometheusRule, and Cilium's
//! CiliumNetworkPolicy. Only the fields we set are modelled; the tests check
//! the output against each CRD's `openAPIV3Schema`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::Serialize;

/// A custom resource: its `apiVersion`, `kind` and metadata.
pub trait CustomResource: Serialize {
    const API_VERSION: &'static str;
    const KIND: &'static str;
    fn metadata(&self) -> &ObjectMeta;
}

/// Serializes `apiVersion` and `kind` ahead of the object's own fields.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Typed<'a, T: CustomResource> {
    pub api_version: &'static str,
    pub kind: &'static str,
    #[serde(flatten)]
    pub object: &'a T,
}

impl<'a, T: CustomResource> Typed<'a, T> {
    pub fn new(object: &'a T) -> Self {
        Self {
            api_version: T::API_VERSION,
            kind: T::KIND,
            object,
        }
    }
}

macro_rules! custom_resource {
    ($ty:ty, $api:literal, $kind:literal) => {
        impl CustomResource for $ty {
            const API_VERSION: &'static str = $api;
            const KIND: &'static str = $kind;
            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }
        }
    };
}

// ---- Prometheus Operator ----

#[derive(Debug, Clone, Serialize)]
pub struct ServiceMonitor {
    pub metadata: ObjectMeta,
    pub spec: ServiceMonitorSpec,
}
custom_resource!(ServiceMonitor, "monitoring.coreos.com/v1", "ServiceMonitor");

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    pub selector: LabelSelector,
    pub endpoints: Vec<Endpoint>,
}

/// One scrape endpoint of a ServiceMonitor (`port`) or PodMonitor (`port`
/// naming a container port).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub port: String,
    pub path: String,
    pub interval: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization: Option<SafeAuthorization>,
}

/// `authorization: { type: Bearer, credentials: { name, key } }`.
#[derive(Debug, Clone, Serialize)]
pub struct SafeAuthorization {
    pub r#type: String,
    pub credentials: SecretKeySelector,
}

#[derive(Debug, Clone, Serialize)]
pub struct SecretKeySelector {
    pub name: String,
    pub key: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PodMonitor {
    pub metadata: ObjectMeta,
    pub spec: PodMonitorSpec,
}
custom_resource!(PodMonitor, "monitoring.coreos.com/v1", "PodMonitor");

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodMonitorSpec {
    pub selector: LabelSelector,
    pub pod_metrics_endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PrometheusRule {
    pub metadata: ObjectMeta,
    pub spec: PrometheusRuleSpec,
}
custom_resource!(PrometheusRule, "monitoring.coreos.com/v1", "PrometheusRule");

#[derive(Debug, Clone, Serialize)]
pub struct PrometheusRuleSpec {
    pub groups: Vec<RuleGroup>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RuleGroup {
    pub name: String,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rule {
    pub alert: String,
    pub expr: String,
    #[serde(rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

// ---- Cilium ----

#[derive(Debug, Clone, Serialize)]
pub struct CiliumNetworkPolicy {
    pub metadata: ObjectMeta,
    pub spec: CiliumRule,
}
custom_resource!(CiliumNetworkPolicy, "cilium.io/v2", "CiliumNetworkPolicy");

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CiliumRule {
    pub description: String,
    pub endpoint_selector: LabelSelector,
    /// An empty list with `enableDefaultDeny` still on denies all ingress.
    pub ingress: Vec<CiliumIngressRule>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<CiliumEgressRule>>,
    pub enable_default_deny: DefaultDeny,
}

#[derive(Debug, Clone, Serialize)]
pub struct DefaultDeny {
    pub ingress: bool,
    pub egress: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CiliumIngressRule {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub from_endpoints: Vec<LabelSelector>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub from_entities: Vec<String>,
    #[serde(rename = "fromCIDR", skip_serializing_if = "Vec::is_empty")]
    pub from_cidr: Vec<String>,
    pub to_ports: Vec<CiliumPortRule>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CiliumEgressRule {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub to_endpoints: Vec<LabelSelector>,
    #[serde(rename = "toCIDR", skip_serializing_if = "Vec::is_empty")]
    pub to_cidr: Vec<String>,
    pub to_ports: Vec<CiliumPortRule>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CiliumPortRule {
    pub ports: Vec<CiliumPort>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CiliumPort {
    pub port: String,
    pub protocol: String,
}

impl CiliumPortRule {
    /// TCP ports.
    pub fn tcp(ports: &[i32]) -> Self {
        Self {
            ports: ports
                .iter()
                .map(|p| CiliumPort {
                    port: p.to_string(),
                    protocol: "TCP".to_owned(),
                })
                .collect(),
        }
    }

    /// DNS to any server, UDP and TCP.
    pub fn dns() -> Self {
        Self {
            ports: ["UDP", "TCP"]
                .iter()
                .map(|proto| CiliumPort {
                    port: "53".to_owned(),
                    protocol: (*proto).to_owned(),
                })
                .collect(),
        }
    }
}
