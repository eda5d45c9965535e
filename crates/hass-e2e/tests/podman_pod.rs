//! The container images, run as the generated manifests say: the pod
//! templates of `hass-manifests render` (Home Assistant's StatefulSet with
//! broker, config watcher and exporter; the serial bridge's DaemonSet) as
//! podman pods with the templates' users, read-only roots, dropped
//! capabilities, limits, ConfigMaps, Secrets and volumes. Home Assistant is
//! played by the stand-in on the host, PostgreSQL is a real server on the
//! host (`postgres.mode: external`), the stick a pty handed over as a device
//! plugin would. The same health checks as the binaries' end-to-end tests
//! must pass.
//!
//! It needs the images: `images/test` runs it after building them
//! (`cargo test -p hass-e2e --test podman_pod -- --ignored`). Both pods use
//! the host's network, so the ports of DESIGN.md (1883, 1884, 6638, 8123,
//! 9181-9184) must be free.

// Tests unwrap: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;
mod podman;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::{
    HA_TOKEN, MQTT_PASSWORD, MQTT_USER, StandInHa, Stick, metric_value, paho, read_exactly,
};
use hass_test_support::binary::workspace_binary;
use hass_test_support::{TempPostgres, http, openmetrics, wait_for};
use podman::{Cluster, PodmanPod, RenderedTree, volume_mountpoint};

const NAME: &str = "hass-podtest";
const NODE: &str = "podman";
const DEVICE_PATH: &str = "/dev/serial/by-id/usb-hass-sidecars_pod-test-if00-port0";
const PLUGIN_RESOURCE: &str = "squat.ai/serial";
const EXPORTER_PASSWORD: &str = "exporter-Pa55";
const DB_PASSWORD: &str = "recorderpw42";
/// The generated exporter config keeps the default intervals (15 s for the
/// database), not the 1 s of the binaries' end-to-end tests.
const EXPORTER_FLIP: Duration = Duration::from_secs(45);

/// The ports DESIGN.md fixes, all on the host here.
const PORTS: [(u16, &str); 8] = [
    (1883, "MQTT"),
    (1884, "MQTT over WebSocket"),
    (6638, "the zigbee device"),
    (8123, "Home Assistant (the stand-in)"),
    (9181, "broker admin"),
    (9182, "serial bridge admin"),
    (9183, "config watcher admin"),
    (9184, "exporter admin"),
];

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The image tag `images/build` gives this host's arch.
fn image_tag() -> String {
    std::env::var("HASS_E2E_IMAGE_TAG").unwrap_or_else(|_| {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        format!("{}-{arch}", env!("CARGO_PKG_VERSION"))
    })
}

fn values_yaml(pg_port: u16) -> String {
    format!(
        r#"name: {NAME}
namespace: default
sidecar_images:
  registry: localhost/hass-sidecars
  tag: "{tag}"
home_assistant:
  host_network: true
  token_secret:
    name: ha-token
    key: token
broker:
  exporter_password:
    name: mqtt-exporter
    key: password
postgres:
  mode: external
  external:
    host: 127.0.0.1
    port: {pg_port}
  password_secret:
    name: postgres
    key: password
serial_bridge:
  enabled: true
  device_access: device_plugin
  device_plugin_resource: {PLUGIN_RESOURCE}
  devices:
    - name: zigbee
      node: {NODE}
      path: {DEVICE_PATH}
      port: 6638
"#,
        tag = image_tag()
    )
}

fn mosquitto_passwd(file: &std::path::Path, user: &str, password: &str) {
    let status = Command::new("mosquitto_passwd")
        .arg("-b")
        .arg(file)
        .args([user, password])
        .status()
        .expect("mosquitto_passwd");
    assert!(status.success());
}

/// What the operator creates by hand before applying (see the values' comments).
fn secrets(dir: &std::path::Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let passwd = dir.join("passwd");
    std::fs::write(&passwd, "").unwrap();
    mosquitto_passwd(&passwd, MQTT_USER, MQTT_PASSWORD);
    mosquitto_passwd(&passwd, "hass-exporter", EXPORTER_PASSWORD);
    let acl = format!(
        "user {MQTT_USER}\ntopic readwrite #\n\nuser hass-exporter\ntopic readwrite hass-sidecars/exporter/#\n"
    );
    let secret = |pairs: &[(&str, String)]| {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    BTreeMap::from([
        (
            "mqtt-auth".to_owned(),
            secret(&[
                ("passwd", std::fs::read_to_string(&passwd).unwrap()),
                ("acl", acl),
            ]),
        ),
        (
            "mqtt-exporter".to_owned(),
            secret(&[("password", EXPORTER_PASSWORD.to_owned())]),
        ),
        (
            "ha-token".to_owned(),
            secret(&[("token", HA_TOKEN.to_owned())]),
        ),
        (
            "postgres".to_owned(),
            secret(&[("password", DB_PASSWORD.to_owned())]),
        ),
    ])
}

fn wait_status(port: u16, path: &str, status: u16, pods: &[&PodmanPod]) {
    let reached = wait_for(Duration::from_secs(30), || {
        (http::get(local(port), path).ok()?.status == status).then_some(())
    });
    if reached.is_none() {
        let logs: String = pods.iter().map(|p| p.all_logs()).collect();
        panic!(
            "{path} on {port} is not {status} after 30 s ({:?}); logs:\n{logs}",
            http::get(local(port), path).map(|r| r.status)
        );
    }
}

fn exporter_metric(name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metric_value(&http::get(local(9184), "/metrics").ok()?.body, name, labels)
}

fn wait_exporter(name: &str, labels: &[(&str, &str)], value: f64, pods: &[&PodmanPod]) {
    if wait_for(EXPORTER_FLIP, || {
        (exporter_metric(name, labels) == Some(value)).then_some(())
    })
    .is_none()
    {
        let logs: String = pods.iter().map(|p| p.all_logs()).collect();
        panic!(
            "{name}{labels:?} is {:?}, not {value}; logs:\n{logs}",
            exporter_metric(name, labels)
        );
    }
}

#[test]
#[ignore = "needs the container images; images/test runs it after building them"]
fn the_generated_pods_run_under_podman_and_pass_the_same_health_checks() {
    for (port, what) in PORTS {
        if let Err(e) = TcpListener::bind(local(port)) {
            panic!("127.0.0.1:{port} ({what}) must be free for host-network pods: {e}");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let postgres = TempPostgres::start().unwrap();
    postgres
        .psql(&format!(
            "CREATE ROLE homeassistant LOGIN PASSWORD '{DB_PASSWORD}'"
        ))
        .unwrap();
    postgres
        .psql("CREATE DATABASE homeassistant OWNER homeassistant")
        .unwrap();
    let ha = StandInHa::start_on(local(8123));
    let stick = Stick::owned_by_dialout();

    // The operator's steps: values file, render.
    let values = dir.path().join("values.yaml");
    std::fs::write(&values, values_yaml(postgres.port())).unwrap();
    let rendered = dir.path().join("rendered");
    let render = Command::new(workspace_binary("hass-manifests").unwrap())
        .arg("render")
        .arg("-f")
        .arg(&values)
        .arg("-o")
        .arg(&rendered)
        .output()
        .unwrap();
    assert!(
        render.status.success(),
        "{}",
        String::from_utf8_lossy(&render.stderr)
    );
    let tree = RenderedTree::load(&rendered);

    let cluster = Cluster {
        secrets: secrets(dir.path()),
        devices: BTreeMap::from([(
            PLUGIN_RESOURCE.to_owned(),
            (stick.device_node(), DEVICE_PATH.to_owned()),
        )]),
        skip_containers: vec!["home-assistant".to_owned()],
        images: BTreeMap::new(),
    };
    let bridge_pod = PodmanPod::create(
        &tree,
        "DaemonSet",
        &format!("{NAME}-serial-bridge-{NODE}"),
        &cluster,
    );
    let ha_pod = PodmanPod::create(&tree, "StatefulSet", NAME, &cluster);
    assert_eq!(
        ha_pod.containers,
        [
            format!("{NAME}-broker"),
            format!("{NAME}-config-watcher"),
            format!("{NAME}-exporter")
        ],
        "the sidecars the default values choose"
    );
    // Home Assistant's /config (its PVC) as onboarding leaves it.
    let config_dir = volume_mountpoint(&format!("config-{NAME}-0"));
    std::fs::write(
        config_dir.join("configuration.yaml"),
        "homeassistant:\n  name: Pod test\nautomation: !include automations.yaml\n",
    )
    .unwrap();
    std::fs::write(config_dir.join("automations.yaml"), "[]\n").unwrap();
    // The mount point of the package ConfigMap, which Home Assistant's own
    // container (first in the pod, read-write on /config) creates; the
    // watcher mounts /config read-only and could not.
    std::fs::create_dir_all(config_dir.join("packages/hass-sidecars")).unwrap();
    bridge_pod.start();
    ha_pod.start();
    let pods = [&ha_pod, &bridge_pod];

    // Every sidecar's probes, as the kubelet would call them.
    for port in [9181, 9182, 9183, 9184] {
        wait_status(port, "/healthz", 200, &pods);
        wait_status(port, "/readyz", 200, &pods);
    }
    // HA's own probes go through the exporter.
    wait_status(9184, "/probe/ha/ready", 200, &pods);
    wait_status(9184, "/probe/ha/live", 200, &pods);

    // The exporter sees every part: broker (as the hass-exporter user), the
    // bridge by its Service name, the device behind it, PostgreSQL as the
    // homeassistant role, Home Assistant with the token.
    for (name, labels) in [
        ("hass_exporter_broker_up", &[][..]),
        ("hass_exporter_bridge_up", &[("bridge", NODE)][..]),
        (
            "hass_exporter_bridge_device_up",
            &[("bridge", NODE), ("device", "zigbee")][..],
        ),
        ("hass_exporter_postgres_up", &[][..]),
        ("hass_exporter_ha_up", &[][..]),
    ] {
        wait_exporter(name, labels, 1.0, &pods);
    }
    let families = openmetrics::parse(&http::get(local(9184), "/metrics").unwrap().body)
        .expect("valid OpenMetrics");
    assert!(openmetrics::find(&families, "hass_exporter_ha_up").is_some());
    ha.assert_all_authorized();

    // Home Assistant's discovery, retained through the broker's kill -9 and
    // a restart on the same volume, as the kubelet restarts it. (podman's
    // own restart policy needs `podman container cleanup` to find this
    // containers.conf, which conmon does not pass on.)
    let topic = "homeassistant/sensor/podtest/temperature/config";
    let config = r#"{"name":"Pod test","state_topic":"podtest/state"}"#;
    paho(
        1883,
        &["pub", "--topic", topic, "--message", config, "--retain"],
    );
    let broker = ha_pod.container("broker");
    podman::podman(&["kill", "--signal", "KILL", &broker]).unwrap();
    podman::podman(&["wait", &broker]).unwrap();
    podman::podman(&["start", &broker]).unwrap();
    wait_status(9181, "/readyz", 200, &pods);
    let got = paho(
        1883,
        &["sub", "--topic", "homeassistant/#", "--wait", "1.5"],
    );
    assert_eq!(
        got,
        serde_json::json!([{"topic": topic, "payload": config, "retain": true, "qos": 1}]),
        "{}",
        ha_pod.logs("broker")
    );

    // An automation edited in /config reloads automations, nothing else.
    let before = ha.reloads().len();
    std::fs::write(
        config_dir.join("automations.yaml"),
        "- id: pod_test\n  alias: Pod test\n  triggers: []\n  actions: []\n",
    )
    .unwrap();
    let reloaded = wait_for(Duration::from_secs(15), || {
        let reloads = ha.reloads();
        (reloads.len() > before).then(|| reloads[before..].to_vec())
    });
    assert_eq!(
        reloaded,
        Some(vec!["automation/reload".to_owned()]),
        "{}",
        ha_pod.logs("config-watcher")
    );

    // Zigbee2MQTT's side: bytes cross the bridge both ways.
    let mut client = TcpStream::connect(local(6638)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut peer = stick.open_peer();
    client.write_all(b"\x1a\xc0\x38\xbc\x7e").unwrap();
    assert_eq!(read_exactly(&mut peer, 5), b"\x1a\xc0\x38\xbc\x7e");
    peer.write_all(b"\x1a\xc1\x02\x0b\x0a\x52\x7e").unwrap();
    assert_eq!(
        read_exactly(&mut client, 7),
        b"\x1a\xc1\x02\x0b\x0a\x52\x7e"
    );
    drop(client);

    // A rolling update's SIGTERM: every container drains and exits 0.
    for pod in pods {
        for (container, code) in pod.stop() {
            assert_eq!(code, 0, "{container}: {}", pod.all_logs());
        }
    }
}
