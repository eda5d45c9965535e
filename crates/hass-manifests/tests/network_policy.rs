//! Least privilege per port, checked on the rendered NetworkPolicies and
//! CiliumNetworkPolicies: a small evaluator answers "may this pod (or
//! address) open a TCP connection to that port of that pod?" the way each
//! policy engine does, for the pods the manifests themselves run and for
//! outsiders with and without the client labels.
//!
//! The evaluator follows the documented semantics: a pod selected by no
//! policy is open; selected, it accepts what any rule of any selecting
//! policy allows. Kubernetes peers without a namespaceSelector are the
//! policy's namespace; Cilium endpoint selectors without a namespace label
//! are too.

// Helpers outside #[test] fns panic on setup failures too (clippy.toml only
// exempts test fns).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde_json::Value;

type Labels = BTreeMap<String, String>;

const CILIUM_NAMESPACE: &str = "k8s:io.kubernetes.pod.namespace";

#[derive(Debug, Clone)]
enum Source {
    Pod {
        namespace: String,
        labels: Labels,
    },
    Ip(Ipv4Addr),
    /// The node itself: kubelet's probes.
    Host,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Flavour {
    Kubernetes,
    Cilium,
}

struct Rendered {
    values: hass_manifests::Values,
    docs: Vec<(String, Value)>,
}

impl Rendered {
    fn new(values: hass_manifests::Values) -> Self {
        let docs = hass_manifests::render(&values)
            .unwrap()
            .iter()
            .map(|m| (m.kind.clone(), serde_saphyr::from_str(&m.yaml).unwrap()))
            .collect();
        Self { values, docs }
    }

    fn of_kind(&self, kind: &str) -> impl Iterator<Item = &Value> {
        self.docs
            .iter()
            .filter(move |(k, _)| k == kind)
            .map(|(_, v)| v)
    }

    fn flavours(&self) -> Vec<Flavour> {
        let mut out = Vec::new();
        if self.of_kind("NetworkPolicy").next().is_some() {
            out.push(Flavour::Kubernetes);
        }
        if self.of_kind("CiliumNetworkPolicy").next().is_some() {
            out.push(Flavour::Cilium);
        }
        out
    }

    /// The pod templates the manifests run, by component label, with their
    /// container ports by name.
    fn pods(&self, component: &str) -> Vec<(Labels, BTreeMap<String, i64>)> {
        let mut out = Vec::new();
        for (kind, doc) in &self.docs {
            let template = match kind.as_str() {
                "StatefulSet" | "DaemonSet" => &doc["spec"]["template"],
                "CronJob" => &doc["spec"]["jobTemplate"]["spec"]["template"],
                _ => continue,
            };
            let labels: Labels =
                serde_json::from_value(template["metadata"]["labels"].clone()).unwrap();
            if labels
                .get("app.kubernetes.io/component")
                .map(String::as_str)
                != Some(component)
            {
                continue;
            }
            let mut ports = BTreeMap::new();
            for c in template["spec"]["containers"].as_array().unwrap() {
                for p in c["ports"].as_array().into_iter().flatten() {
                    ports.insert(
                        p["name"].as_str().unwrap().to_owned(),
                        p["containerPort"].as_i64().unwrap(),
                    );
                }
            }
            out.push((labels, ports));
        }
        out
    }

    fn pod_source(&self, component: &str) -> Source {
        let (labels, _) = self.pods(component).into_iter().next().unwrap();
        Source::Pod {
            namespace: self.values.namespace.clone(),
            labels,
        }
    }

    fn allows(&self, flavour: Flavour, dest: &Labels, port: i64, src: &Source) -> bool {
        let ns = &self.values.namespace;
        match flavour {
            Flavour::Kubernetes => {
                let selecting: Vec<&Value> = self
                    .of_kind("NetworkPolicy")
                    .filter(|p| p["metadata"]["namespace"] == ns.as_str())
                    .filter(|p| {
                        p["spec"]["policyTypes"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|t| t == "Ingress")
                    })
                    .filter(|p| selects(&p["spec"]["podSelector"], dest))
                    .collect();
                selecting.is_empty()
                    || selecting.iter().any(|p| {
                        p["spec"]["ingress"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|rule| k8s_rule_allows(rule, ns, port, src))
                    })
            }
            Flavour::Cilium => {
                let endpoint = cilium_labels(ns, dest);
                let selecting: Vec<&Value> = self
                    .of_kind("CiliumNetworkPolicy")
                    .filter(|p| p["metadata"]["namespace"] == ns.as_str())
                    .filter(|p| cilium_selects(&p["spec"]["endpointSelector"], ns, &endpoint))
                    .collect();
                selecting.is_empty()
                    || selecting.iter().any(|p| {
                        p["spec"]["ingress"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|rule| cilium_rule_allows(rule, ns, port, src))
                    })
            }
        }
    }
}

fn selects(selector: &Value, labels: &Labels) -> bool {
    let labels_ok = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str());
    let expressions_ok = selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e["key"].as_str().unwrap();
            let listed = |v: &str| e["values"].as_array().into_iter().flatten().any(|x| x == v);
            match e["operator"].as_str().unwrap() {
                "Exists" => labels.contains_key(key),
                "DoesNotExist" => !labels.contains_key(key),
                "In" => labels.get(key).is_some_and(|v| listed(v)),
                "NotIn" => !labels.get(key).is_some_and(|v| listed(v)),
                op => panic!("operator {op}"),
            }
        });
    labels_ok && expressions_ok
}

fn in_cidr(ip: Ipv4Addr, cidr: &str) -> bool {
    let (net, bits) = cidr.split_once('/').unwrap();
    let net: Ipv4Addr = net.parse().unwrap();
    let bits: u32 = bits.parse().unwrap();
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    };
    u32::from(ip) & mask == u32::from(net) & mask
}

fn port_listed(ports: &Value, port: i64) -> bool {
    match ports.as_array() {
        None => true,
        Some(list) if list.is_empty() => true,
        Some(list) => list.iter().any(|p| {
            p["protocol"] == "TCP"
                && (p["port"].as_i64() == Some(port)
                    || p["port"].as_str() == Some(&port.to_string()))
        }),
    }
}

fn k8s_rule_allows(rule: &Value, policy_ns: &str, port: i64, src: &Source) -> bool {
    if !port_listed(&rule["ports"], port) {
        return false;
    }
    let Some(peers) = rule["from"].as_array() else {
        return true;
    };
    peers.is_empty()
        || peers.iter().any(|peer| match src {
            Source::Ip(ip) => peer["ipBlock"]["cidr"]
                .as_str()
                .is_some_and(|cidr| in_cidr(*ip, cidr)),
            // Kubernetes leaves kubelet's probes to the implementation;
            // not what these tests are about.
            Source::Host => false,
            Source::Pod { namespace, labels } => {
                if peer.get("ipBlock").is_some() {
                    return false;
                }
                let ns_ok = match peer.get("namespaceSelector") {
                    Some(sel) => selects(
                        sel,
                        &Labels::from([(
                            "kubernetes.io/metadata.name".to_owned(),
                            namespace.clone(),
                        )]),
                    ),
                    None => namespace == policy_ns,
                };
                let pod_ok = peer
                    .get("podSelector")
                    .is_none_or(|sel| selects(sel, labels));
                ns_ok && pod_ok
            }
        })
}

fn cilium_labels(namespace: &str, labels: &Labels) -> Labels {
    let mut out: Labels = labels
        .iter()
        .map(|(k, v)| (format!("k8s:{k}"), v.clone()))
        .collect();
    out.insert(CILIUM_NAMESPACE.to_owned(), namespace.to_owned());
    out
}

/// A selector that names no namespace means the policy's own.
fn cilium_selects(selector: &Value, policy_ns: &str, endpoint: &Labels) -> bool {
    let names_namespace = selector["matchLabels"]
        .as_object()
        .is_some_and(|m| m.contains_key(CILIUM_NAMESPACE))
        || selector["matchExpressions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["key"] == CILIUM_NAMESPACE);
    selects(selector, endpoint)
        && (names_namespace
            || endpoint.get(CILIUM_NAMESPACE).map(String::as_str) == Some(policy_ns))
}

fn cilium_rule_allows(rule: &Value, policy_ns: &str, port: i64, src: &Source) -> bool {
    let ports_ok = match rule["toPorts"].as_array() {
        None => true,
        Some(list) => list.iter().any(|p| port_listed(&p["ports"], port)),
    };
    if !ports_ok {
        return false;
    }
    let list = |key: &str| rule[key].as_array().cloned().unwrap_or_default();
    match src {
        Source::Host => list("fromEntities")
            .iter()
            .any(|e| e == "host" || e == "all"),
        Source::Ip(ip) => {
            list("fromCIDR")
                .iter()
                .any(|c| in_cidr(*ip, c.as_str().unwrap()))
                || list("fromEntities")
                    .iter()
                    .any(|e| e == "world" || e == "all")
        }
        Source::Pod { namespace, labels } => {
            let endpoint = cilium_labels(namespace, labels);
            list("fromEndpoints")
                .iter()
                .any(|sel| cilium_selects(sel, policy_ns, &endpoint))
                || list("fromEntities")
                    .iter()
                    .any(|e| e == "cluster" || e == "all")
        }
    }
}

fn pod(namespace: &str, labels: &[(&str, &str)]) -> Source {
    Source::Pod {
        namespace: namespace.to_owned(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

fn labelled(namespace: &str, labels: &Labels) -> Source {
    Source::Pod {
        namespace: namespace.to_owned(),
        labels: labels.clone(),
    }
}

/// Outsiders: a pod of the same namespace and one of another, both without
/// any client label, and an address off every configured CIDR.
fn strangers(r: &Rendered) -> Vec<(&'static str, Source)> {
    vec![
        (
            "an unlabelled pod of the namespace",
            pod(&r.values.namespace, &[("app", "other")]),
        ),
        (
            "an unlabelled pod elsewhere",
            pod("default", &[("app", "other")]),
        ),
        (
            "an address off every CIDR",
            Source::Ip(Ipv4Addr::new(203, 0, 113, 7)),
        ),
    ]
}

/// Asserts who may reach `port` of the pods of `component`: exactly the
/// `allowed`, none of the `denied`.
fn check(
    r: &Rendered,
    what: &str,
    component: &str,
    port: i64,
    allowed: &[(&str, Source)],
    denied: &[(&str, Source)],
) {
    let pods = r.pods(component);
    assert!(!pods.is_empty(), "{what}: no {component} pod");
    for flavour in r.flavours() {
        for (dest, _) in &pods {
            for (who, src) in allowed {
                assert!(
                    r.allows(flavour, dest, port, src),
                    "{flavour:?}: {who} cannot reach {what} ({component}:{port})"
                );
            }
            for (who, src) in denied {
                assert!(
                    !r.allows(flavour, dest, port, src),
                    "{flavour:?}: {who} can reach {what} ({component}:{port})"
                );
            }
        }
    }
}

/// Every property, for one rendered set of values.
fn assert_least_privilege(r: &Rendered) {
    assert!(!r.flavours().is_empty(), "no policy rendered");
    let np = &r.values.network_policy;
    let monitoring = pod(&np.monitoring_namespace, &[("app", "prometheus")]);
    let mqtt_client = labelled("zigbee2mqtt", &np.mqtt_client_labels);
    let serial_client = labelled(&r.values.namespace, &r.values.serial_bridge.client_labels);
    // The device port has no authentication: the label alone, in another
    // namespace, is not enough.
    let serial_client_elsewhere = labelled("zigbee2mqtt", &r.values.serial_bridge.client_labels);
    let ha = r.pod_source("home-assistant");
    let outsiders = strangers(r);
    let with = |extra: Vec<(&'static str, Source)>| -> Vec<(&'static str, Source)> {
        outsiders.iter().cloned().chain(extra).collect()
    };
    let (_, ha_ports) = r.pods("home-assistant").into_iter().next().unwrap();

    // PostgreSQL: the Home Assistant pod, and the backup job (the documented
    // exception: it dumps the database).
    if !r.pods("postgres").is_empty() {
        let mut allowed = vec![("the Home Assistant pod", ha.clone())];
        if !r.pods("pg-dump").is_empty() {
            allowed.push(("the pg_dump job", r.pod_source("pg-dump")));
        }
        let denied = with(vec![
            ("a labelled MQTT client", mqtt_client.clone()),
            ("a labelled serial client", serial_client.clone()),
            ("the monitoring namespace", monitoring.clone()),
        ]);
        check(r, "PostgreSQL", "postgres", 5432, &allowed, &denied);
    }

    // The broker: labelled MQTT clients and the listed CIDRs. Home
    // Assistant reaches it over the pod's loopback, which no policy sees.
    for name in ["mqtt", "mqtt-ws"] {
        let Some(&port) = ha_ports.get(name) else {
            continue;
        };
        let mut allowed = vec![("a labelled MQTT client", mqtt_client.clone())];
        for cidr in &np.mqtt_from_cidrs {
            let net: Ipv4Addr = cidr.split('/').next().unwrap().parse().unwrap();
            allowed.push((
                "an address of mqtt_from_cidrs",
                Source::Ip(Ipv4Addr::from(u32::from(net) + 1)),
            ));
        }
        let denied = with(vec![
            ("a labelled serial client", serial_client.clone()),
            ("the monitoring namespace", monitoring.clone()),
        ]);
        check(r, "the broker", "home-assistant", port, &allowed, &denied);
    }

    // Admin ports of the Home Assistant pod: the monitoring namespace (and,
    // with Cilium, kubelet's probes from the node).
    let admin: Vec<i64> = ha_ports
        .iter()
        .filter(|(name, _)| name.ends_with("-admin"))
        .map(|(_, port)| *port)
        .collect();
    assert!(!admin.is_empty());
    for port in admin {
        let denied = with(vec![
            ("a labelled MQTT client", mqtt_client.clone()),
            ("a labelled serial client", serial_client.clone()),
        ]);
        check(
            r,
            "an admin port",
            "home-assistant",
            port,
            &[("the monitoring namespace", monitoring.clone())],
            &denied,
        );
    }
    if r.flavours().contains(&Flavour::Cilium) {
        let (dest, _) = r.pods("home-assistant").into_iter().next().unwrap();
        assert!(
            r.allows(Flavour::Cilium, &dest, 9184, &Source::Host),
            "kubelet cannot probe"
        );
    }

    // Each bridge: device ports from labelled clients and Home Assistant
    // (ZHA); the admin port from monitoring and the exporter in the Home
    // Assistant pod (the documented exception: it polls `/readyz`).
    for (labels, ports) in r.pods("serial-bridge") {
        let bridge = labels["hass-sidecars.io/node"].clone();
        for (name, port) in &ports {
            let what = format!("bridge {bridge} port {name}");
            let node_pods = |r: &Rendered| {
                r.pods("serial-bridge")
                    .into_iter()
                    .filter(|(l, _)| l["hass-sidecars.io/node"] == bridge)
                    .count()
            };
            assert_eq!(node_pods(r), 1);
            let dest = labels.clone();
            let (allowed, denied) = if name == "admin" {
                (
                    vec![
                        ("the monitoring namespace", monitoring.clone()),
                        ("the exporter's pod", ha.clone()),
                    ],
                    with(vec![
                        ("a labelled MQTT client", mqtt_client.clone()),
                        ("a labelled serial client", serial_client.clone()),
                    ]),
                )
            } else {
                (
                    vec![
                        ("a labelled serial client", serial_client.clone()),
                        ("the Home Assistant pod", ha.clone()),
                    ],
                    with(vec![
                        ("a labelled MQTT client", mqtt_client.clone()),
                        ("the monitoring namespace", monitoring.clone()),
                        (
                            "a labelled serial client of another namespace",
                            serial_client_elsewhere.clone(),
                        ),
                    ]),
                )
            };
            for flavour in r.flavours() {
                for (who, src) in &allowed {
                    assert!(
                        r.allows(flavour, &dest, *port, src),
                        "{flavour:?}: {who} cannot reach {what}"
                    );
                }
                for (who, src) in &denied {
                    assert!(
                        !r.allows(flavour, &dest, *port, src),
                        "{flavour:?}: {who} can reach {what}"
                    );
                }
            }
        }
    }
}

#[test]
fn every_port_is_open_only_to_its_documented_clients_in_both_flavours() {
    let values = hass_manifests::values::parse(
        "name: ha\nnamespace: home\n\
         home_assistant:\n  token_secret: { name: ha-token, key: token }\n\
         broker:\n  websockets: true\n\
         postgres:\n  mode: internal\n  backup: { enabled: true }\n\
         serial_bridge:\n  enabled: true\n  devices:\n\
         \x20   - { name: zigbee, node: n1, path: /dev/ttyUSB0 }\n\
         \x20   - { name: zwave, node: n2, path: /dev/ttyACM0, port: 6639 }\n\
         network_policy:\n  kubernetes: true\n  cilium: true\n  mqtt_from_cidrs: [192.168.1.0/24]\n",
    )
    .unwrap();
    let r = Rendered::new(values);
    assert_eq!(r.flavours(), [Flavour::Kubernetes, Flavour::Cilium]);
    assert_eq!(r.pods("serial-bridge").len(), 2);
    assert_least_privilege(&r);
}

#[test]
fn every_example_is_least_privilege() {
    for example in ["minimal", "homelab", "everything"] {
        let path = format!(
            "{}/../../examples/{example}.values.yaml",
            env!("CARGO_MANIFEST_DIR")
        );
        let values = hass_manifests::values::load(std::path::Path::new(&path)).unwrap();
        assert_least_privilege(&Rendered::new(values));
    }
}
