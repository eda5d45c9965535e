//! Malformed values: every error names the file, line and column, and the key.

// Helpers outside #[test] fns panic on setup failures too (clippy.toml only
// exempts test fns).
#![allow(clippy::unwrap_used)]

use std::io::Write;

fn load(text: &str) -> String {
    let mut file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    let err = hass_manifests::values::load(file.path()).unwrap_err();
    let text = err.to_string();
    let name = file.path().display().to_string();
    assert!(text.starts_with(&name), "{text}");
    text[name.len()..].to_owned()
}

#[test]
fn unknown_key_names_line_column_and_key() {
    let e = load("name: ha\nhome_assistant:\n  preset: small\n  hostNetwork: true\n");
    assert!(
        e.starts_with(":4:3: home_assistant.hostNetwork: unknown field `hostNetwork`"),
        "{e}"
    );
}

#[test]
fn wrong_type_names_line_and_key() {
    let e = load("broker:\n  enabled: yes please\n");
    assert!(e.starts_with(":2:12: broker.enabled:"), "{e}");
    let e = load(
        "serial_bridge:\n  devices:\n    - name: z\n      node: n\n      path: /dev/x\n      port: 70000\n",
    );
    assert!(
        e.starts_with(":6:13: serial_bridge.devices[0].port:"),
        "{e}"
    );
}

#[test]
fn unknown_enum_value_lists_the_key() {
    let e = load("postgres:\n  mode: cnpg\n");
    assert!(e.starts_with(":2:9: postgres.mode:"), "{e}");
    assert!(e.contains("cnpg"), "{e}");
}

#[test]
fn a_device_without_a_node_is_an_error_at_its_line() {
    let e = load(
        "serial_bridge:\n  enabled: true\n  devices:\n    - name: zigbee\n      path: /dev/ttyUSB0\n",
    );
    // serde-saphyr reports a missing field where the device's mapping ends.
    assert!(
        e.starts_with(":5:7: serial_bridge.devices[0]: missing field `node`"),
        "{e}"
    );
}

#[test]
fn checks_after_parsing_point_at_the_offending_key() {
    let e = load(
        "serial_bridge:\n  enabled: true\n  devices:\n    - { name: admin, node: n1, path: /dev/ttyUSB0 }\n",
    );
    assert!(
        e.starts_with(":4:9: serial_bridge.devices[0].name: \"admin\" would collide"),
        "{e}"
    );
    let e = load(
        "serial_bridge:\n  enabled: true\n  devices:\n    - name: zigbee\n      node: \"\"\n      path: /dev/ttyUSB0\n",
    );
    assert!(
        e.starts_with(":5:7: serial_bridge.devices[0].node: must name a node"),
        "{e}"
    );
    let e = load(
        "serial_bridge:\n  enabled: true\n  devices:\n    - { name: a, node: n1, path: /dev/ttyUSB0 }\n    - name: b\n      node: n1\n      path: /dev/ttyUSB1\n      port: 6638\n",
    );
    assert!(
        e.starts_with(
            ":8:7: serial_bridge.devices[1].port: 6638 is used by another device on node n1"
        ),
        "{e}"
    );
    // A port left to its default: the device that clashes.
    let e = load(
        "serial_bridge:\n  enabled: true\n  devices:\n    - { name: a, node: n1, path: /dev/ttyUSB0 }\n    - { name: b, node: n1, path: /dev/ttyUSB1 }\n",
    );
    assert!(
        e.starts_with(
            ":5:9: serial_bridge.devices[1].port: 6638 is used by another device on node n1"
        ),
        "{e}"
    );
    // An RFC 2217 port that takes another device's port on the same node.
    let e = load(
        "serial_bridge:\n  enabled: true\n  devices:\n    - { name: a, node: n1, path: /dev/ttyUSB0 }\n    - { name: b, node: n1, path: /dev/ttyUSB1, port: 6639, rfc2217_port: 6638 }\n",
    );
    assert!(
        e.starts_with(":5:60: serial_bridge.devices[1].rfc2217_port: 6638 is zero, the admin port, or used by another port on node n1"),
        "{e}"
    );
    // A key left out is reported where its parent is.
    let e = load("name: ha\nserial_bridge:\n  enabled: true\n");
    assert!(
        e.starts_with(":2:1: serial_bridge.devices: the bridge is enabled but lists no device"),
        "{e}"
    );
    let e = load("postgres:\n  mode: external\n");
    assert!(
        e.starts_with(":1:1: postgres.external.host: is required"),
        "{e}"
    );
    // Monitor labels are merged into the objects' own: ours must stay ours.
    let e =
        load("monitoring:\n  labels:\n    release: kps\n    app.kubernetes.io/instance: other\n");
    assert!(
        e.starts_with(
            ":2:3: monitoring.labels: \"app.kubernetes.io/instance\" is set by hass-manifests"
        ),
        "{e}"
    );
    let e = load("namespace: home\nname: Home_Assistant\n");
    assert!(
        e.starts_with(":2:1: name: \"Home_Assistant\" must be a DNS label"),
        "{e}"
    );
}

#[test]
fn secrets_are_references_never_values() {
    let e = load("home_assistant:\n  token_secret: hunter2\n");
    assert!(e.starts_with(":2:17: home_assistant.token_secret:"), "{e}");
}

/// `trusted_proxies` is written into Home Assistant's YAML: a value that is
/// not an address or a network (here a newline and a key of its own) would
/// be YAML of its own, so it is refused, naming the item (at the list's
/// line: positions are kept for keys, not for list items).
#[test]
fn a_trusted_proxy_must_be_an_address_or_a_network() {
    let e = load(
        "ingress:\n  enabled: true\n  trusted_proxies:\n    - 10.0.0.0/8\n    - \"10.0.0.1\\nhomeassistant:\\n  auth_providers: []\"\n",
    );
    assert!(
        e.starts_with(":3:3: ingress.trusted_proxies[1]: must be an IP address or a network"),
        "{e}"
    );
    for bad in [
        // Home Assistant's ip_network refuses host bits.
        "10.1.2.3/8",
        "10.0.0.0/33",
        "fd00::/129",
        "example.com",
        "",
    ] {
        let e = load(&format!("ingress:\n  trusted_proxies:\n    - \"{bad}\"\n"));
        assert!(e.contains("ingress.trusted_proxies[0]"), "{bad}: {e}");
    }
    for good in ["10.0.0.0/8", "192.168.1.10", "fd00::/8", "::1"] {
        let values = hass_manifests::values::parse(&format!(
            "ingress:\n  trusted_proxies:\n    - \"{good}\"\n"
        ));
        assert!(values.is_ok(), "{good}: {values:?}");
    }
}

/// With host_network the admin ports listen on loopback unless opened, where
/// Prometheus cannot scrape: monitoring without `admin` opened is an error.
#[test]
fn monitoring_a_host_network_pod_needs_its_admin_ports_opened() {
    let e = load("home_assistant:\n  host_network: true\nmonitoring:\n  scrape: service_monitor\n");
    assert!(
        e.starts_with(":1:1: home_assistant.host_network_expose: must list `admin`"),
        "{e}"
    );
}

/// On current Home Assistant the Ingress's trusted proxies go through the
/// config watcher, which needs the token: without it they would silently
/// never arrive.
#[test]
fn http_settings_without_a_way_to_apply_them_are_refused() {
    let e = load("ingress:\n  enabled: true\n  host: ha.example.com\n");
    assert!(
        e.contains("home_assistant.package.http") && e.contains("home_assistant.token_secret"),
        "{e}"
    );
}

#[test]
fn a_git_source_needs_an_https_url_without_credentials() {
    for (git, says) in [
        ("http://git.example.com/r.git", "must be an https:// URL"),
        ("git@github.com:me/r.git", "must be an https:// URL"),
        (
            "https://me:ghp_secret@github.com/me/r.git",
            "no credentials",
        ),
    ] {
        let e = load(&format!(
            "config_watcher:\n  source:\n    enabled: true\n    git: {git}\n"
        ));
        assert!(e.contains("config_watcher.source.git"), "{git}: {e}");
        assert!(e.contains(says), "{git}: {e}");
        assert!(!e.contains("ghp_secret"), "{e}");
    }
    let e = load(
        "config_watcher:\n  source:\n    enabled: true\n    git: https://github.com/me/r.git\n    interval: 0s\n",
    );
    assert!(
        e.contains("config_watcher.source.interval: must be more than 0s"),
        "{e}"
    );
}

#[test]
fn the_brokers_memory_limit_must_be_a_size_its_budgets_can_come_from() {
    for limit in ["0.5Gi", "32Mi", "lots"] {
        let e = load(&format!(
            "broker:\n  resources:\n    cpu_request: 20m\n    memory_request: 16Mi\n    \
             cpu_limit: 500m\n    memory_limit: {limit}\n"
        ));
        assert!(e.starts_with(":6:5: broker.resources.memory_limit:"), "{e}");
    }
}
