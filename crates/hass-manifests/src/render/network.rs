//! Least privilege per port, as Kubernetes NetworkPolicies and/or
//! CiliumNetworkPolicies built from one list of rules:
//! - Home Assistant's 8123 from the ingress controller and listed CIDRs;
//! - MQTT only from pods with the MQTT client labels and listed CIDRs;
//! - PostgreSQL only from the Home Assistant pod and the backup job;
//! - each bridge's device ports only from Home Assistant and labelled clients;
//! - every admin port only from the monitoring namespace (and, for the
//!   bridges, the exporter in the Home Assistant pod).
//!
//! PostgreSQL and the bridges may not open any connection; the backup job
//! only to PostgreSQL and DNS. Home Assistant's egress is open: integrations
//! talk to the LAN and the internet.

use std::collections::BTreeMap;

use hass_runtime::ports;
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Objects;
use super::home_assistant::{self, HA_PORT, MQTT_PORT, MQTT_WS_PORT};
use super::postgres;
use super::serial_bridge::{self, ADMIN_PORT};
use crate::crd::{
    CiliumEgressRule, CiliumIngressRule, CiliumNetworkPolicy, CiliumPortRule, CiliumRule,
    DefaultDeny,
};
use crate::meta::{labels, object_meta, selector, selector_labels};
use crate::values::{PostgresMode, Values};

/// Where allowed traffic comes from (or goes to).
#[derive(Debug, Clone)]
enum Peer {
    /// Pods of this instance with these labels, in its namespace.
    Local(BTreeMap<String, String>),
    /// Pods with these labels in any namespace.
    AnyNamespace(BTreeMap<String, String>),
    /// Every pod of a namespace.
    Namespace(String),
    Cidr(String),
}

#[derive(Debug, Clone)]
struct Allow {
    peers: Vec<Peer>,
    ports: Vec<i32>,
}

#[derive(Debug, Clone)]
struct Policy {
    name: String,
    description: String,
    pods: BTreeMap<String, String>,
    ingress: Vec<Allow>,
    /// `None`: egress unrestricted. `Some(vec![])`: none at all.
    egress: Option<Vec<Allow>>,
    /// Egress to DNS servers as well.
    dns: bool,
}

fn policies(values: &Values) -> Vec<Policy> {
    let np = &values.network_policy;
    let name = &values.name;
    let ha_pod = selector_labels(values, home_assistant::COMPONENT);
    let monitoring = Peer::Namespace(np.monitoring_namespace.clone());
    let mut out = Vec::new();

    // The Home Assistant pod.
    let mut ingress = Vec::new();
    let mut http_from: Vec<Peer> = np
        .home_assistant_from_cidrs
        .iter()
        .cloned()
        .map(Peer::Cidr)
        .collect();
    if values.ingress.enabled {
        http_from.push(Peer::Namespace(np.ingress_namespace.clone()));
    }
    if values.monitoring.home_assistant_token_secret.is_some() {
        http_from.push(monitoring.clone());
    }
    if !http_from.is_empty() {
        ingress.push(Allow {
            peers: http_from,
            ports: vec![HA_PORT],
        });
    }
    if values.broker.enabled {
        let mut peers = vec![Peer::AnyNamespace(np.mqtt_client_labels.clone())];
        peers.extend(np.mqtt_from_cidrs.iter().cloned().map(Peer::Cidr));
        let mut ports = vec![MQTT_PORT];
        if values.broker.websockets {
            ports.push(MQTT_WS_PORT);
        }
        ingress.push(Allow { peers, ports });
    }
    let admin: Vec<i32> = home_assistant::admin_ports(values)
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    if !admin.is_empty() {
        ingress.push(Allow {
            peers: vec![monitoring.clone()],
            ports: admin,
        });
    }
    let mut description = format!(
        "Home Assistant pod: {} from the ingress controller and listed CIDRs, MQTT from labelled clients, admin ports from monitoring",
        ports::HOME_ASSISTANT
    );
    let ha = &values.home_assistant;
    if ha.host_network {
        // Policies select pods by their own addresses; a hostNetwork pod has
        // the node's, so this one is written down but does not hold.
        let exposed: Vec<String> = ha
            .host_network_expose
            .iter()
            .map(|p| {
                serde_json::to_value(p).map_or_else(
                    |_| String::new(),
                    |v| v.as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        description.push_str(&format!(
            ". DOES NOT APPLY: home_assistant.host_network puts the pod on the node's network, \
             where no pod policy reaches; Home Assistant's {} is open to the node's networks, \
             the sidecars listen on 127.0.0.1 except: {}",
            ports::HOME_ASSISTANT,
            if exposed.is_empty() {
                "nothing".to_owned()
            } else {
                exposed.join(", ")
            }
        ));
    }
    out.push(Policy {
        name: name.clone(),
        description,
        pods: ha_pod.clone(),
        ingress,
        egress: None,
        dns: false,
    });

    if values.postgres.mode == PostgresMode::Internal {
        out.push(Policy {
            name: format!("{name}-postgres"),
            description: format!(
                "PostgreSQL: {} from the Home Assistant pod and the backup job only; no egress",
                ports::POSTGRES
            ),
            pods: selector_labels(values, postgres::COMPONENT),
            ingress: vec![Allow {
                peers: vec![
                    Peer::Local(ha_pod.clone()),
                    Peer::Local(selector_labels(values, postgres::BACKUP_COMPONENT)),
                ],
                ports: vec![postgres::PORT],
            }],
            egress: Some(Vec::new()),
            dns: false,
        });
    }
    if values.postgres.backup.enabled && values.postgres.mode != PostgresMode::Disabled {
        let (_, port) = postgres::address(values);
        let peers = if values.postgres.mode == PostgresMode::Internal {
            vec![Peer::Local(selector_labels(values, postgres::COMPONENT))]
        } else if values.postgres.external.cidrs.is_empty() {
            vec![Peer::Cidr("0.0.0.0/0".to_owned())]
        } else {
            values
                .postgres
                .external
                .cidrs
                .iter()
                .cloned()
                .map(Peer::Cidr)
                .collect()
        };
        out.push(Policy {
            name: format!("{name}-pg-dump"),
            description: "pg_dump job: no ingress; egress to PostgreSQL and DNS only".to_owned(),
            pods: selector_labels(values, postgres::BACKUP_COMPONENT),
            ingress: Vec::new(),
            egress: Some(vec![Allow {
                peers,
                ports: vec![i32::from(port)],
            }]),
            dns: true,
        });
    }
    for group in serial_bridge::node_groups(values) {
        let mut pods = selector_labels(values, serial_bridge::COMPONENT);
        pods.insert(crate::meta::NODE.to_owned(), group.slug.clone());
        // The device port has no authentication (zigpy and zigbee-herdsman
        // speak plain TCP): only the labelled pods of this namespace, never a
        // pod anywhere that copies the label; no labels, no clients but
        // Home Assistant.
        let mut device_clients = vec![Peer::Local(ha_pod.clone())];
        let client_labels = &values.serial_bridge.client_labels;
        if !client_labels.is_empty() {
            device_clients.push(Peer::Local(client_labels.clone()));
        }
        let mut description = format!(
            "serial bridge on {}: device ports from Home Assistant and labelled clients of this namespace, admin from monitoring and the exporter; no egress",
            group.node
        );
        if serial_bridge::on_host_network(&group) {
            // As for Home Assistant's: written down, but it does not hold.
            description.push_str(
                ". DOES NOT APPLY: serial_bridge.devices[].zeroconf puts this node's bridge on the \
                 node's network, where no pod policy reaches; its device ports (no \
                 authentication) and admin port are open to the node's networks",
            );
        }
        out.push(Policy {
            name: group.name.clone(),
            description,
            pods,
            ingress: vec![
                Allow {
                    peers: device_clients,
                    ports: group
                        .devices
                        .iter()
                        .flat_map(|d| serial_bridge::device_ports(d))
                        .collect(),
                },
                Allow {
                    peers: vec![monitoring.clone(), Peer::Local(ha_pod.clone())],
                    ports: vec![ADMIN_PORT],
                },
            ],
            egress: Some(Vec::new()),
            dns: false,
        });
    }
    out
}

pub(crate) fn render(values: &Values, objects: &mut Objects) {
    let np = &values.network_policy;
    for policy in policies(values) {
        if np.kubernetes {
            objects.push(network_policy(values, &policy));
        }
        if np.cilium {
            objects.push_custom(cilium_policy(values, &policy));
        }
    }
}

fn ports(ports: &[i32]) -> Vec<NetworkPolicyPort> {
    ports
        .iter()
        .map(|p| NetworkPolicyPort {
            port: Some(IntOrString::Int(*p)),
            protocol: Some("TCP".to_owned()),
            ..Default::default()
        })
        .collect()
}

fn namespace_selector(namespace: &str) -> LabelSelector {
    selector(BTreeMap::from([(
        "kubernetes.io/metadata.name".to_owned(),
        namespace.to_owned(),
    )]))
}

fn k8s_peer(peer: &Peer) -> NetworkPolicyPeer {
    match peer {
        Peer::Local(labels) => NetworkPolicyPeer {
            pod_selector: Some(selector(labels.clone())),
            ..Default::default()
        },
        Peer::AnyNamespace(labels) => NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector::default()),
            pod_selector: Some(selector(labels.clone())),
            ..Default::default()
        },
        Peer::Namespace(ns) => NetworkPolicyPeer {
            namespace_selector: Some(namespace_selector(ns)),
            ..Default::default()
        },
        Peer::Cidr(cidr) => NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: cidr.clone(),
                except: None,
            }),
            ..Default::default()
        },
    }
}

fn network_policy(values: &Values, policy: &Policy) -> NetworkPolicy {
    let mut types = vec!["Ingress".to_owned()];
    let egress = policy.egress.as_ref().map(|allows| {
        types.push("Egress".to_owned());
        let mut rules: Vec<NetworkPolicyEgressRule> = allows
            .iter()
            .map(|a| NetworkPolicyEgressRule {
                to: Some(a.peers.iter().map(k8s_peer).collect()),
                ports: Some(ports(&a.ports)),
            })
            .collect();
        if policy.dns {
            rules.push(NetworkPolicyEgressRule {
                to: None,
                ports: Some(
                    ["UDP", "TCP"]
                        .iter()
                        .map(|proto| NetworkPolicyPort {
                            port: Some(IntOrString::Int(53)),
                            protocol: Some((*proto).to_owned()),
                            ..Default::default()
                        })
                        .collect(),
                ),
            });
        }
        rules
    });
    let mut metadata = object_meta(
        values,
        &policy.name,
        labels(values, "network-policy", "hass-sidecars"),
    );
    metadata.annotations = Some(BTreeMap::from([(
        "hass-sidecars.io/description".to_owned(),
        policy.description.clone(),
    )]));
    NetworkPolicy {
        metadata,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector(policy.pods.clone())),
            policy_types: Some(types),
            ingress: Some(
                policy
                    .ingress
                    .iter()
                    .map(|a| NetworkPolicyIngressRule {
                        from: Some(a.peers.iter().map(k8s_peer).collect()),
                        ports: Some(ports(&a.ports)),
                    })
                    .collect(),
            ),
            egress,
        }),
    }
}

const CILIUM_NAMESPACE: &str = "k8s:io.kubernetes.pod.namespace";

fn cilium_endpoints(values: &Values, peer: &Peer) -> Option<LabelSelector> {
    let prefixed = |labels: &BTreeMap<String, String>| -> BTreeMap<String, String> {
        labels
            .iter()
            .map(|(k, v)| (format!("k8s:{k}"), v.clone()))
            .collect()
    };
    match peer {
        Peer::Local(labels) => {
            let mut l = prefixed(labels);
            l.insert(CILIUM_NAMESPACE.to_owned(), values.namespace.clone());
            Some(selector(l))
        }
        Peer::AnyNamespace(labels) => Some(LabelSelector {
            match_labels: Some(prefixed(labels)),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: CILIUM_NAMESPACE.to_owned(),
                operator: "Exists".to_owned(),
                values: None,
            }]),
        }),
        Peer::Namespace(ns) => Some(selector(BTreeMap::from([(
            CILIUM_NAMESPACE.to_owned(),
            ns.clone(),
        )]))),
        Peer::Cidr(_) => None,
    }
}

fn cilium_cidrs(peers: &[Peer]) -> Vec<String> {
    peers
        .iter()
        .filter_map(|p| match p {
            Peer::Cidr(c) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

fn cilium_policy(values: &Values, policy: &Policy) -> CiliumNetworkPolicy {
    let mut ingress: Vec<CiliumIngressRule> = policy
        .ingress
        .iter()
        .map(|a| CiliumIngressRule {
            from_endpoints: a
                .peers
                .iter()
                .filter_map(|p| cilium_endpoints(values, p))
                .collect(),
            from_cidr: cilium_cidrs(&a.peers),
            to_ports: vec![CiliumPortRule::tcp(&a.ports)],
            ..Default::default()
        })
        .collect();
    // kubelet's probes come from the node.
    let probe_ports: Vec<i32> = match policy.pods.get(crate::meta::COMPONENT).map(String::as_str) {
        Some(home_assistant::COMPONENT) => {
            let mut p = vec![HA_PORT];
            p.extend(
                home_assistant::admin_ports(values)
                    .into_iter()
                    .map(|(_, p)| p),
            );
            p
        }
        Some(serial_bridge::COMPONENT) => vec![ADMIN_PORT],
        _ => Vec::new(),
    };
    if !probe_ports.is_empty() {
        ingress.push(CiliumIngressRule {
            from_entities: vec!["host".to_owned()],
            to_ports: vec![CiliumPortRule::tcp(&probe_ports)],
            ..Default::default()
        });
    }
    let egress = policy.egress.as_ref().map(|allows| {
        let mut rules: Vec<CiliumEgressRule> = allows
            .iter()
            .map(|a| CiliumEgressRule {
                to_endpoints: a
                    .peers
                    .iter()
                    .filter_map(|p| cilium_endpoints(values, p))
                    .collect(),
                to_cidr: cilium_cidrs(&a.peers),
                to_ports: vec![CiliumPortRule::tcp(&a.ports)],
            })
            .collect();
        if policy.dns {
            rules.push(CiliumEgressRule {
                to_endpoints: vec![selector(BTreeMap::from([
                    (CILIUM_NAMESPACE.to_owned(), "kube-system".to_owned()),
                    ("k8s:k8s-app".to_owned(), "kube-dns".to_owned()),
                ]))],
                to_ports: vec![CiliumPortRule::dns()],
                ..Default::default()
            });
        }
        rules
    });
    CiliumNetworkPolicy {
        metadata: object_meta(
            values,
            &policy.name,
            labels(values, "network-policy", "hass-sidecars"),
        ),
        spec: CiliumRule {
            description: policy.description.clone(),
            endpoint_selector: selector(
                policy
                    .pods
                    .iter()
                    .map(|(k, v)| (format!("k8s:{k}"), v.clone()))
                    .collect(),
            ),
            ingress,
            enable_default_deny: DefaultDeny {
                ingress: true,
                egress: egress.is_some(),
            },
            egress,
        },
    }
}
