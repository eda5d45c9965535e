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
//! A second test runs Home Assistant 2026.11 itself in that pod (its image
//! made by `images/ha-image` from the real-HA root filesystem), with the
//! rendered securityContext, volumes and probes.
//!
//! It needs the images: `images/test` runs it after building them
//! (`cargo test -p hass-e2e --test podman_pod -- --ignored`). The pods use
//! the host's network, so the ports of DESIGN.md (1883, 1884, 6638, 8123,
//! 9181-9184) must be free, and the tests take turns.

// Tests unwrap: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;
mod podman;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{
    HA_TOKEN, MQTT_PASSWORD, MQTT_USER, PtyPair, paho_publish, paho_subscribe, read_exactly,
};
use hass_test_support::StandInHa;
use hass_test_support::binary::workspace_binary;
use hass_test_support::git::GitHttpsServer;
use hass_test_support::home_assistant::HomeAssistantApi;
use hass_test_support::{GitRemote, TempPostgres, http, openmetrics, wait_for};
use podman::{Cluster, PodmanPod, RenderedTree, volume_mountpoint};

const NAME: &str = "hass-podtest";
const NODE: &str = "podman";
const DEVICE_PATH: &str = "/dev/serial/by-id/usb-hass-sidecars_pod-test-if00-port0";
const PLUGIN_RESOURCE: &str = "squat.ai/serial";
const EXPORTER_PASSWORD: &str = "exporter-Pa55";
const DB_PASSWORD: &str = "recorderpw42";
const GIT_TOKEN: &str = "git-token-pod-test";
/// The config the operator installs, and the Git source's first revision.
const POD_CONFIGURATION: &str = "homeassistant:\n  name: Pod test\n  packages: !include_dir_named packages\n\
     automation: !include automations.yaml\npodcheck:\n";
/// The generated exporter config keeps the default intervals (15 s for the
/// database), not the 1 s of the binaries' end-to-end tests.
const EXPORTER_FLIP: Duration = Duration::from_secs(45);

/// The ports DESIGN.md fixes, all on the host here.
const PORTS: [(u16, &str); 8] = [
    (1883, "MQTT"),
    (1884, "MQTT over WebSocket"),
    (6638, "the zigbee device"),
    (8123, "Home Assistant"),
    (9181, "broker admin"),
    (9182, "serial bridge admin"),
    (9183, "config watcher admin"),
    (9184, "exporter admin"),
];

/// The host ports are one set: one test's pods at a time.
static HOST_PORTS: Mutex<()> = Mutex::new(());

/// Takes the host ports, checking that nothing else holds them.
fn host_ports() -> std::sync::MutexGuard<'static, ()> {
    let guard = HOST_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    for (port, what) in PORTS {
        if let Err(e) = TcpListener::bind(local(port)) {
            panic!("127.0.0.1:{port} ({what}) must be free for host-network pods: {e}");
        }
    }
    guard
}

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

/// The operator's values: Home Assistant's pod on the host network with
/// the Prometheus package, PostgreSQL outside; `more` appends sections.
fn values_yaml(pg_port: u16, more: &str) -> String {
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
  package:
    prometheus: true
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
{more}"#,
        tag = image_tag()
    )
}

/// The stick's DaemonSet, for the pods test.
fn serial_bridge_values() -> String {
    format!(
        "serial_bridge:
  enabled: true
  device_access: device_plugin
  device_plugin_resource: {PLUGIN_RESOURCE}
  devices:
    - name: zigbee
      node: {NODE}
      path: {DEVICE_PATH}
      port: 6638
"
    )
}

/// PostgreSQL with the recorder's role and database, as the operator makes them.
fn recorder_database() -> TempPostgres {
    let postgres = TempPostgres::start().unwrap();
    postgres
        .psql(&format!(
            "CREATE ROLE homeassistant LOGIN PASSWORD '{DB_PASSWORD}'"
        ))
        .unwrap();
    postgres
        .psql("CREATE DATABASE homeassistant OWNER homeassistant")
        .unwrap();
    postgres
}

/// `hass-manifests render` of `values` into `dir/rendered`.
fn render(dir: &std::path::Path, values: &str) -> RenderedTree {
    let file = dir.join("values.yaml");
    std::fs::write(&file, values).unwrap();
    let rendered = dir.join("rendered");
    let mut render = Command::new(workspace_binary("hass-manifests").unwrap());
    render
        .arg("render")
        .arg("-f")
        .arg(&file)
        .arg("-o")
        .arg(&rendered);
    // images/test pins the sidecars to what it pushed to its registry, so
    // podman pulls them by digest as a node would.
    let lock = std::env::var_os("HASS_E2E_IMAGES_LOCK");
    if let Some(lock) = &lock {
        render.arg("--images-lock").arg(lock);
    }
    let render = render.output().unwrap();
    assert!(
        render.status.success(),
        "{}",
        String::from_utf8_lossy(&render.stderr)
    );
    if lock.is_some() {
        // Every sidecar comes from the registry, by digest.
        let kustomization = std::fs::read_to_string(rendered.join("kustomization.yaml")).unwrap();
        for line in kustomization
            .lines()
            .filter(|l| l.contains("/hass-sidecars/"))
        {
            assert!(
                line.contains("127.0.0.1:"),
                "not the test's registry: {line}"
            );
        }
        let pinned = kustomization.matches("    digest: sha256:").count();
        assert!(pinned >= 3, "{kustomization}");
    }
    RenderedTree::load(&rendered)
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
    openmetrics::sum(&http::get(local(9184), "/metrics").ok()?.body, name, labels)
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
    let _ports = host_ports();
    let dir = tempfile::tempdir().unwrap();
    let postgres = recorder_database();
    let ha = StandInHa::start_on(local(8123));
    let stick = PtyPair::owned_by_dialout();

    // The operator's steps: values file, render.
    let tree = render(
        dir.path(),
        &values_yaml(postgres.port(), &serial_bridge_values()),
    );

    let cluster = Cluster {
        secrets: secrets(dir.path()),
        devices: BTreeMap::from([(
            PLUGIN_RESOURCE.to_owned(),
            (stick.device_node(), DEVICE_PATH.to_owned()),
        )]),
        skip_containers: vec!["home-assistant".to_owned()],
        ..Cluster::default()
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
    paho_publish(1883, topic, config, true);
    let broker = ha_pod.container("broker");
    podman::podman(&["kill", "--signal", "KILL", &broker]).unwrap();
    podman::podman(&["wait", &broker]).unwrap();
    podman::podman(&["start", &broker]).unwrap();
    wait_status(9181, "/readyz", 200, &pods);
    let got = paho_subscribe(1883, &["homeassistant/#"], 1);
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

/// The Home Assistant image `images/ha-image` makes (once per root
/// filesystem recipe) from the real-HA root filesystem.
fn home_assistant_image() -> String {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../images/ha-image");
    let out = Command::new("bash").arg(&script).output().unwrap();
    assert!(
        out.status.success(),
        "images/ha-image: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Waits until `GET path` on `port` answers `status`, as the kubelet polls
/// a probe; how long that took.
fn wait_probe(port: u16, path: &str, status: u16, limit: Duration, pod: &PodmanPod) -> Duration {
    let started = Instant::now();
    let reached = wait_for(limit, || {
        (http::get(local(port), path).ok()?.status == status).then_some(())
    });
    assert!(
        reached.is_some(),
        "{path} on {port} is not {status} after {limit:?} ({:?}); logs:\n{}",
        http::get(local(port), path).map(|r| r.status),
        pod.all_logs()
    );
    started.elapsed()
}

/// Home Assistant 2026.11 itself in the pod `hass-manifests` renders by
/// default (UID 65532, read-only root, every capability dropped, `/tmp` an
/// emptyDir, `/config` the PVC): it starts, is onboarded through its API,
/// loads the hass-sidecars package (the recorder on PostgreSQL, the
/// Prometheus endpoint), sets up MQTT against the pod's broker by config
/// flow, and the probes the StatefulSet names pass; every container exits
/// 0 on the pod's SIGTERM.
#[test]
#[ignore = "needs the container images; images/test runs it after building them"]
fn home_assistant_2026_11_runs_in_the_generated_pod() {
    let _ports = host_ports();
    let ha_image = home_assistant_image();
    let dir = tempfile::tempdir().unwrap();
    let postgres = recorder_database();
    // The config also lives in Git, behind HTTPS with a token and a
    // private CA: the pod's hass-git-mirror fetches it, its watcher applies it.
    let git_dir = dir.path().join("git");
    std::fs::create_dir(&git_dir).unwrap();
    let git = GitRemote::new(&git_dir, "");
    git.push(
        &[
            ("configuration.yaml", Some(POD_CONFIGURATION)),
            ("automations.yaml", Some("[]\n")),
        ],
        "as installed",
    );
    let git_server = GitHttpsServer::start(&git_dir, GIT_TOKEN);
    let source = format!(
        "config_watcher:\n  source:\n    enabled: true\n    git: {}\n    interval: 1s\n\
         \x20   token_secret: {{ name: ha-config-git, key: token }}\n\
         \x20   ca_secret: {{ name: ha-config-git, key: ca.crt }}\n",
        git_server.url("remote.git")
    );
    let tree = render(dir.path(), &values_yaml(postgres.port(), &source));
    let statefulset = tree.find("StatefulSet", NAME).unwrap();
    let ha_container = &statefulset["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(ha_container["name"], "home-assistant");
    let rendered_image = ha_container["image"].as_str().unwrap().to_owned();
    assert!(
        rendered_image.ends_with(":2026.11.0"),
        "the default is today's release: {rendered_image}"
    );

    let mut secrets = secrets(dir.path());
    // The token exists once Home Assistant is onboarded; until then the
    // Secret holds a placeholder, as an operator's first apply would.
    secrets
        .get_mut("ha-token")
        .unwrap()
        .insert("token".to_owned(), "not-onboarded-yet".to_owned());
    // A custom integration that needs a Python package Home Assistant
    // does not ship, from a package index on loopback.
    secrets.insert(
        "ha-config-git".to_owned(),
        BTreeMap::from([
            ("token".to_owned(), GIT_TOKEN.to_owned()),
            (
                "ca.crt".to_owned(),
                std::fs::read_to_string(&git_server.cert).unwrap(),
            ),
        ]),
    );
    let index = PackageIndex::serve(dir.path(), "hass-sidecars-podcheck", "1.0.0");
    let cluster = Cluster {
        secrets,
        images: BTreeMap::from([(rendered_image, ha_image)]),
        env: BTreeMap::from([(
            "home-assistant".to_owned(),
            vec![("UV_DEFAULT_INDEX".to_owned(), index.url())],
        )]),
        ..Cluster::default()
    };
    let pod = PodmanPod::create(&tree, "StatefulSet", NAME, &cluster);
    assert_eq!(
        pod.containers,
        [
            format!("{NAME}-home-assistant"),
            format!("{NAME}-broker"),
            format!("{NAME}-config-watcher"),
            format!("{NAME}-git-mirror"),
            format!("{NAME}-exporter")
        ]
    );
    // configuration.yaml with the one line the install asks for.
    let config_dir = volume_mountpoint(&format!("config-{NAME}-0"));
    std::fs::write(config_dir.join("configuration.yaml"), POD_CONFIGURATION).unwrap();
    std::fs::write(config_dir.join("automations.yaml"), "[]\n").unwrap();
    let custom = config_dir.join("custom_components/podcheck");
    std::fs::create_dir_all(&custom).unwrap();
    std::fs::write(
        custom.join("manifest.json"),
        r#"{"domain": "podcheck", "name": "Pod check", "version": "1.0.0",
            "documentation": "https://example.invalid", "codeowners": [],
            "requirements": ["hass-sidecars-podcheck==1.0.0"], "iot_class": "local_push"}"#,
    )
    .unwrap();
    std::fs::write(
        custom.join("__init__.py"),
        "\"\"\"Sets podcheck.answer from a package installed at run time.\"\"\"\n\n\
         async def async_setup(hass, config):\n    \
             import hass_sidecars_podcheck\n\n    \
             hass.states.async_set(\"podcheck.answer\", hass_sidecars_podcheck.ANSWER)\n    \
             return True\n",
    )
    .unwrap();
    // The watcher mounts /config read-only; the package's mount point in
    // it is made by Home Assistant's container, which podman may start
    // after the watcher's.
    std::fs::create_dir_all(config_dir.join("packages/hass-sidecars")).unwrap();
    let started = Instant::now();
    pod.start();

    // Onboarding, as the operator does it in the browser, then the token
    // into the Secret and a restart of the two sidecars that read it.
    let answered = wait_probe(8123, "/api/onboarding", 200, Duration::from_secs(300), &pod);
    let api = HomeAssistantApi::onboard(local(8123)).unwrap();
    pod.update_file("ha-token", "token", api.token());
    pod.restart("exporter");
    pod.restart("config-watcher");
    api.wait_running(Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{e}\n{}", pod.logs("home-assistant")));
    let running = started.elapsed();

    // The probes the StatefulSet names, called as the kubelet calls them.
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let get = &ha_container[probe]["httpGet"];
        let port = u16::try_from(get["port"].as_u64().unwrap()).unwrap();
        let took = wait_probe(
            port,
            get["path"].as_str().unwrap(),
            200,
            EXPORTER_FLIP,
            &pod,
        );
        eprintln!("{probe} {} on {port}: 200 after {took:?}", get["path"]);
    }

    // What Home Assistant wrote as UID 65532 into its PVC.
    let entries = std::fs::metadata(config_dir.join(".storage/core.config_entries"))
        .or_else(|_| std::fs::metadata(config_dir.join(".storage/auth")))
        .unwrap();
    assert_eq!(
        entries.uid(),
        65532,
        "Home Assistant runs as the rendered user"
    );

    // The package: the recorder writes into PostgreSQL, the Prometheus
    // endpoint answers.
    let recorded = wait_for(Duration::from_secs(60), || {
        let n: u64 = postgres
            .psql_in("homeassistant", "SELECT count(*) FROM states")
            .ok()?
            .parse()
            .ok()?;
        (n > 0).then_some(n)
    });
    assert!(
        recorded.is_some(),
        "the recorder wrote nothing to PostgreSQL; {}",
        pod.logs("home-assistant")
    );
    let (status, _) = api.get("/api/prometheus").unwrap();
    assert_eq!(status, 200, "the package's prometheus: is loaded");

    // The custom integration's package was installed on the read-only root
    // (into the PVC) and imported in the same start.
    let (_, answer) = api.get("/api/states/podcheck.answer").unwrap();
    assert_eq!(
        answer["state"],
        "42",
        "the custom integration's requirement; {}",
        pod.logs("home-assistant")
    );
    let local = std::fs::metadata(config_dir.join(".local")).unwrap();
    assert_eq!(local.uid(), 65532, "installed packages live on the PVC");

    // MQTT by config flow against the pod's broker; a retained discovery
    // config becomes an entity.
    api.add_mqtt_broker("127.0.0.1", 1883, MQTT_USER, MQTT_PASSWORD)
        .unwrap();
    paho_publish(
        1883,
        "homeassistant/sensor/podtest/temperature/config",
        r#"{"name":"Pod temperature","unique_id":"podtest_temp","state_topic":"podtest/state"}"#,
        true,
    );
    paho_publish(1883, "podtest/state", "19.5", true);
    let entity = wait_for(Duration::from_secs(60), || {
        let (_, states) = api.get("/api/states/sensor.pod_temperature").ok()?;
        (states["state"] == "19.5").then_some(states)
    });
    assert!(
        entity.is_some(),
        "no sensor.pod_temperature = 19.5; {}",
        pod.logs("home-assistant")
    );
    wait_exporter("hass_exporter_ha_up", &[], 1.0, &[&pod]);
    wait_exporter("hass_exporter_postgres_up", &[], 1.0, &[&pod]);

    // A push to the Git remote: fetched by the mirror, validated and written
    // by the watcher, reloaded in Home Assistant.
    let pushed = Instant::now();
    git.push(
        &[(
            "automations.yaml",
            Some("- id: from_git\n  alias: From Git\n  triggers: []\n  actions: []\n"),
        )],
        "an automation from Git",
    );
    let from_git = wait_for(Duration::from_secs(60), || {
        let (status, _) = api.get("/api/states/automation.from_git").ok()?;
        (status == 200).then(|| pushed.elapsed())
    });
    let from_git = from_git.unwrap_or_else(|| {
        panic!(
            "no automation.from_git\n{}\n{}",
            pod.logs("git-mirror"),
            pod.logs("config-watcher")
        )
    });
    eprintln!("git push to entity, through the pod's mirror and watcher: {from_git:?}");

    // Home Assistant's own restart (the UI's, and how HTTP settings are
    // applied) exits with 100; it must start again inside its container,
    // as under the official image's s6, not by a container restart.
    let container = pod.container("home-assistant");
    let restarted = Instant::now();
    let (status, _) = api
        .post(
            "/api/services/homeassistant/restart",
            &serde_json::json!({}),
        )
        .unwrap();
    assert_eq!(status, 200);
    wait_for(Duration::from_secs(60), || {
        api.core_state().is_none().then_some(())
    })
    .expect("Home Assistant went down for its restart");
    api.wait_running(Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}\n{}", pod.logs("home-assistant")));
    let restarted = restarted.elapsed();
    let restarts =
        podman::podman(&["inspect", "--format", "{{.RestartCount}}", &container]).unwrap();
    assert_eq!(
        restarts.trim(),
        "0",
        "restarted in place, not by the runtime"
    );
    // MQTT reconnects after RUNNING; the retained state comes back.
    let after = wait_for(Duration::from_secs(60), || {
        let (_, states) = api.get("/api/states/sensor.pod_temperature").ok()?;
        (states["state"] == "19.5").then_some(())
    });
    assert!(after.is_some(), "the entity after the restart");
    eprintln!(
        "Home Assistant 2026.11 in the pod: HTTP after {answered:?}, RUNNING after {running:?} from pod start; \
         homeassistant.restart to RUNNING in {restarted:?}"
    );
    // Each container's memory (its cgroup's, page cache included) and CPU
    // time since the pod started, for BENCHMARKS.md.
    let stats: serde_json::Value = serde_json::from_str(
        &podman::podman(
            &[
                &["stats", "--no-stream", "--format", "json"][..],
                &pod.containers_refs(),
            ]
            .concat(),
        )
        .unwrap(),
    )
    .unwrap();
    for container in stats.as_array().into_iter().flatten() {
        eprintln!(
            "{}: memory {}, CPU time {}",
            container["name"], container["mem_usage"], container["cpu_time"]
        );
    }

    for (container, code) in pod.stop() {
        assert_eq!(code, 0, "{container}: {}", pod.all_logs());
    }
}

/// `tests/clients/wheel_index.py`'s index, served by `python3 -m http.server`
/// on loopback until dropped.
struct PackageIndex {
    port: u16,
    server: std::process::Child,
}

impl PackageIndex {
    fn serve(dir: &std::path::Path, name: &str, version: &str) -> Self {
        let root = dir.join("index");
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/wheel_index.py");
        let made = Command::new("python3")
            .arg(script)
            .arg(&root)
            .args([name, version])
            .status()
            .unwrap();
        assert!(made.success());
        let port = hass_test_support::free_port();
        let server = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"])
            .arg(&root)
            .arg(port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let path = format!("/simple/{name}/");
        wait_for(Duration::from_secs(10), || {
            (http::get(local(port), &path).ok()?.status == 200).then_some(())
        })
        .expect("the package index answers");
        Self { port, server }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/simple", self.port)
    }
}

impl Drop for PackageIndex {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}
