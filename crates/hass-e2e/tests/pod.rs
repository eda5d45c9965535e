//! The pod, end to end: the built binaries started together on loopback as
//! one Home Assistant pod runs them, with a real PostgreSQL, a stand-in Home
//! Assistant, a pty stick and real clients (paho-mqtt, mosquitto_pub/sub, a
//! TCP client as Zigbee2MQTT). Each test checks a flow that crosses
//! components and fails if that flow breaks.

// Tests unwrap: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::symlink;
use std::process::Command;
use std::time::Duration;

use common::{
    Bridge, Broker, FLIP, MQTT_PASSWORD, MQTT_USER, PtyPair, Sidecar, paho_publish, paho_subscribe,
    read_exactly, token_file, write,
};
use hass_test_support::StandInHa;
use hass_test_support::{TempPostgres, http, openmetrics, wait_for};

const DISCOVERY_TOPIC: &str = "homeassistant/sensor/e2e_kitchen/temperature/config";
const DISCOVERY: &str = r#"{"name":"Kitchen temperature","unique_id":"e2e_kitchen_temp","state_topic":"zigbee2mqtt/kitchen","value_template":"{{ value_json.temperature }}","device_class":"temperature","unit_of_measurement":"°C","device":{"identifiers":["e2e_kitchen"],"name":"Kitchen sensor"}}"#;
const STATE_TOPIC: &str = "zigbee2mqtt/kitchen";
const STATE: &str = r#"{"temperature":21.5,"linkquality":120}"#;
const DOOR_TOPIC: &str = "homeassistant/binary_sensor/e2e_door/contact/config";
const DOOR: &str = r#"{"name":"Door","unique_id":"e2e_door","state_topic":"zigbee2mqtt/door"}"#;

/// Home Assistant's discovery config and a device's state, retained at QoS 1
/// by paho (as Zigbee2MQTT and HA publish) and mosquitto_pub, survive the
/// broker's kill -9 and restart; a new subscriber gets every one of them,
/// flagged retained, byte for byte.
#[test]
fn retained_discovery_and_state_survive_a_broker_kill_9() {
    let mut broker = Broker::start();
    let port = broker.mqtt.port();
    for (topic, payload) in [(DISCOVERY_TOPIC, DISCOVERY), (STATE_TOPIC, STATE)] {
        paho_publish(port, topic, payload, true);
    }
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-u", MQTT_USER, "-P", MQTT_PASSWORD])
        .args(["-q", "1", "-r", "-t", DOOR_TOPIC, "-m", DOOR])
        .status()
        .expect("mosquitto_pub (Debian's mosquitto-clients)");
    assert!(status.success());

    // Acknowledged means stored: kill -9 right after the PUBACKs.
    broker.sidecar.kill9();
    broker.sidecar.restart();

    let got = paho_subscribe(port, &["homeassistant/#", "zigbee2mqtt/#"], 3);
    let got = hass_test_support::paho::received(&got);
    let mut want = vec![
        (DISCOVERY_TOPIC.to_owned(), DISCOVERY.to_owned(), true),
        (DOOR_TOPIC.to_owned(), DOOR.to_owned(), true),
        (STATE_TOPIC.to_owned(), STATE.to_owned(), true),
    ];
    want.sort();
    assert_eq!(got, want, "broker log:\n{}", broker.sidecar.logs());

    // mosquitto_sub, a second client library, sees the same.
    let output = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-u", MQTT_USER, "-P", MQTT_PASSWORD])
        .args(["-t", DISCOVERY_TOPIC, "-C", "1", "-W", "5"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), DISCOVERY);
}

/// The exporter reports the broker (an MQTT round trip through hass-broker),
/// the bridge, the recorder database and Home Assistant up; each flips to 0
/// within one scrape interval when that part stops, and back to 1 when it
/// returns, while the others stay up.
#[test]
fn exporter_reports_every_part_and_each_flips_when_it_stops_and_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start();
    let stick = PtyPair::new();
    let mut bridge = Bridge::start(&stick);
    let mut postgres = TempPostgres::start().unwrap();
    let mut ha = StandInHa::start();
    let token = token_file(dir.path());
    let password = dir.path().join("mqtt-password");
    std::fs::write(&password, format!("{MQTT_PASSWORD}\n")).unwrap();
    let config = dir.path().join("exporter.yaml");
    std::fs::write(
        &config,
        format!(
            "home_assistant:\n  url: {ha}\n  token: {{ file: {token} }}\n  poll_interval: 1s\n  timeout: 1s\n\
             postgres:\n  connection: host=127.0.0.1 port={pg} user=postgres dbname=postgres\n  interval: 1s\n  query_timeout: 1s\n  connect_timeout: 1s\n\
             broker:\n  address: {mqtt}\n  username: {MQTT_USER}\n  password: {{ file: {password} }}\n  interval: 1s\n  timeout: 1s\n\
             bridges:\n  - name: zigbee\n    url: http://{bridge}\n    interval: 1s\n    timeout: 1s\n",
            ha = ha.url(),
            token = token.display(),
            pg = postgres.port(),
            mqtt = broker.mqtt,
            password = password.display(),
            bridge = bridge.sidecar.admin,
        ),
    )
    .unwrap();
    let exporter = Sidecar::start("exporter", &["--config", config.to_str().unwrap()]);

    let parts: [(&str, &[(&str, &str)]); 4] = [
        ("hass_exporter_broker_up", &[]),
        ("hass_exporter_bridge_up", &[("bridge", "zigbee")]),
        ("hass_exporter_postgres_up", &[]),
        ("hass_exporter_ha_up", &[]),
    ];
    let all_up = |except: Option<&str>| {
        for (name, labels) in parts {
            if Some(name) != except {
                exporter.wait_metric(name, labels, 1.0, FLIP);
            }
        }
    };
    all_up(None);
    exporter.wait_metric(
        "hass_exporter_bridge_device_up",
        &[("bridge", "zigbee"), ("device", "zigbee")],
        1.0,
        FLIP,
    );
    // What Prometheus reads is valid OpenMetrics with every part up.
    let families =
        openmetrics::parse(&http::get(exporter.admin, "/metrics").unwrap().body).unwrap();
    for (name, _) in parts {
        let family = openmetrics::find(&families, name).unwrap_or_else(|| panic!("no {name}"));
        assert_eq!(family.samples[0].value, 1.0, "{name}");
    }
    let mut flips = Vec::new();

    broker.sidecar.kill9();
    flips.push((
        "broker down",
        exporter.wait_metric("hass_exporter_broker_up", &[], 0.0, FLIP),
    ));
    all_up(Some("hass_exporter_broker_up"));
    broker.sidecar.restart();
    flips.push((
        "broker back",
        exporter.wait_metric("hass_exporter_broker_up", &[], 1.0, FLIP),
    ));

    assert_eq!(bridge.sidecar.stop(), Some(0));
    let bridge_label: &[(&str, &str)] = &[("bridge", "zigbee")];
    flips.push((
        "bridge down",
        exporter.wait_metric("hass_exporter_bridge_up", bridge_label, 0.0, FLIP),
    ));
    all_up(Some("hass_exporter_bridge_up"));
    bridge.sidecar.restart();
    flips.push((
        "bridge back",
        exporter.wait_metric("hass_exporter_bridge_up", bridge_label, 1.0, FLIP),
    ));

    postgres.kill();
    flips.push((
        "database down",
        exporter.wait_metric("hass_exporter_postgres_up", &[], 0.0, FLIP),
    ));
    all_up(Some("hass_exporter_postgres_up"));
    postgres
        .restart()
        .unwrap_or_else(|e| panic!("{e}\n{}", postgres.log()));
    flips.push((
        "database back",
        exporter.wait_metric("hass_exporter_postgres_up", &[], 1.0, FLIP),
    ));

    ha.set_down(true);
    flips.push((
        "HA down",
        exporter.wait_metric("hass_exporter_ha_up", &[], 0.0, FLIP),
    ));
    all_up(Some("hass_exporter_ha_up"));
    ha.set_down(false);
    flips.push((
        "HA back",
        exporter.wait_metric("hass_exporter_ha_up", &[], 1.0, FLIP),
    ));

    all_up(None);
    eprintln!("exporter flip times (probe interval 1 s): {flips:?}");
    ha.assert_all_authorized();
}

/// The watcher started as `hass-config-watcher run` beside a stand-in HA
/// with a token: an edit reloads exactly its domain, a broken edit reloads
/// nothing, and once fixed the next change reloads only what changed.
#[test]
fn a_config_edit_reloads_exactly_its_domain_and_a_broken_edit_none() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("config");
    write(
        &root,
        "configuration.yaml",
        "homeassistant:\n  name: Home\nautomation: !include automations.yaml\nscript: !include scripts.yaml\ninput_boolean: !include input_boolean.yaml\n",
    );
    write(
        &root,
        "automations.yaml",
        "- id: first\n  alias: first\n  trigger: []\n  action: []\n",
    );
    write(&root, "scripts.yaml", "hello:\n  sequence: []\n");
    write(&root, "input_boolean.yaml", "guest_mode:\n  name: Guest\n");
    let (ha, watcher) = start_watcher(dir.path(), &root);

    write(&root, "input_boolean.yaml", "guest_mode:\n  name: Guests\n");
    wait_reloads(&ha, &watcher, &["input_boolean/reload"]);

    // Broken YAML: validated, found invalid, nothing reloaded.
    write(&root, "automations.yaml", "- id: first\n  alias: [broken\n");
    watcher.wait_metric(
        "hass_config_watcher_config_valid",
        &[],
        0.0,
        Duration::from_secs(15),
    );
    // Fixed back to what HA has, plus a script change: only the script reloads.
    write(
        &root,
        "automations.yaml",
        "- id: first\n  alias: first\n  trigger: []\n  action: []\n",
    );
    write(
        &root,
        "scripts.yaml",
        "hello:\n  sequence: []\nbye:\n  sequence: []\n",
    );
    wait_reloads(&ha, &watcher, &["input_boolean/reload", "script/reload"]);
    ha.assert_all_authorized();
}

/// The same through a ConfigMap mount: Kubernetes swaps a `..data` symlink;
/// the swap reloads exactly the changed domain, a swap to a broken version
/// none, and the next good swap only what differs from what HA has.
#[test]
fn a_configmap_data_swap_reloads_exactly_the_changed_domain() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("config");
    let version = |name: &str, automation: &str, script: &str| {
        write(
            &root,
            &format!("{name}/configuration.yaml"),
            "homeassistant:\n  name: Home\nautomation: !include automations.yaml\nscript: !include scripts.yaml\n",
        );
        write(
            &root,
            &format!("{name}/automations.yaml"),
            &format!("- id: {automation}\n  alias: {automation}\n  trigger: []\n  action: []\n"),
        );
        write(
            &root,
            &format!("{name}/scripts.yaml"),
            &format!("{script}:\n  sequence: []\n"),
        );
    };
    version("..2024_05_01_v1", "first", "hello");
    symlink("..2024_05_01_v1", root.join("..data")).unwrap();
    for name in ["configuration.yaml", "automations.yaml", "scripts.yaml"] {
        symlink(format!("..data/{name}"), root.join(name)).unwrap();
    }
    let (ha, watcher) = start_watcher(dir.path(), &root);
    let swap = |to: &str| {
        // What the kubelet does: a new symlink renamed over `..data`.
        symlink(to, root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    };

    version("..2024_05_01_v2", "second", "hello");
    swap("..2024_05_01_v2");
    wait_reloads(&ha, &watcher, &["automation/reload"]);

    write(
        &root,
        "..2024_05_01_v3/configuration.yaml",
        "homeassistant: [broken\n",
    );
    write(&root, "..2024_05_01_v3/automations.yaml", "[]\n");
    write(&root, "..2024_05_01_v3/scripts.yaml", "{}\n");
    swap("..2024_05_01_v3");
    watcher.wait_metric(
        "hass_config_watcher_config_valid",
        &[],
        0.0,
        Duration::from_secs(15),
    );

    version("..2024_05_01_v4", "second", "goodbye");
    swap("..2024_05_01_v4");
    wait_reloads(&ha, &watcher, &["automation/reload", "script/reload"]);
    ha.assert_all_authorized();
}

fn start_watcher(dir: &std::path::Path, root: &std::path::Path) -> (StandInHa, Sidecar) {
    let ha = StandInHa::start();
    let token = token_file(dir);
    let config = dir.join("watcher.yaml");
    std::fs::write(
        &config,
        format!(
            "config_dir: {}\nhome_assistant:\n  url: {}\n  token: {{ file: {} }}\n  retry_initial: 50ms\n  retry_max: 200ms\ndebounce: 200ms\nnotify_invalid: false\n",
            root.display(),
            ha.url(),
            token.display()
        ),
    )
    .unwrap();
    let watcher = Sidecar::start(
        "config-watcher",
        &["run", "--config", config.to_str().unwrap()],
    );
    (ha, watcher)
}

/// Waits until the reload calls are exactly `want`, then a little longer to
/// catch any extra call the change could still cause.
fn wait_reloads(ha: &StandInHa, watcher: &Sidecar, want: &[&str]) {
    let reached = wait_for(Duration::from_secs(15), || {
        (ha.reloads() == want).then_some(())
    });
    assert!(
        reached.is_some(),
        "reloads {:?}, want {want:?}; watcher log:\n{}",
        ha.reloads(),
        watcher.logs()
    );
    // Debounce is 200 ms: a second call from the same change would be here by now.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(ha.reloads(), want, "watcher log:\n{}", watcher.logs());
}

/// Unplugging the stick makes the bridge not ready and the exporter report
/// the device down; replugging restores both; the client (as Zigbee2MQTT's
/// `tcp://`) reconnects and its data flows both ways again.
#[test]
fn unplug_and_replug_the_stick_through_bridge_and_exporter() {
    let dir = tempfile::tempdir().unwrap();
    let mut stick = PtyPair::new();
    let bridge = Bridge::start(&stick);
    let config = dir.path().join("exporter.yaml");
    std::fs::write(
        &config,
        format!(
            "bridges:\n  - name: zigbee\n    url: http://{}\n    interval: 1s\n    timeout: 1s\n",
            bridge.sidecar.admin
        ),
    )
    .unwrap();
    let exporter = Sidecar::start("exporter", &["--config", config.to_str().unwrap()]);
    let device: &[(&str, &str)] = &[("bridge", "zigbee"), ("device", "zigbee")];
    exporter.wait_metric("hass_exporter_bridge_device_up", device, 1.0, FLIP);

    let exchange = |stick: &PtyPair, round: u8| {
        let mut client = TcpStream::connect(bridge.listen).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut peer = stick.open_peer();
        let frame = [0x1a, round, 0xc0, 0x38, 0xbc, 0x7e];
        client.write_all(&frame).unwrap();
        assert_eq!(
            read_exactly(&mut peer, frame.len()),
            frame,
            "client → stick"
        );
        peer.write_all(&frame).unwrap();
        assert_eq!(
            read_exactly(&mut client, frame.len()),
            frame,
            "stick → client"
        );
        client
    };
    let client = exchange(&stick, 1);

    stick.unplug();
    let not_ready = wait_for(Duration::from_secs(5), || {
        let reply = bridge.sidecar.readyz()?;
        (reply.status == 503 && reply.body.contains("device:zigbee")).then_some(())
    });
    assert!(
        not_ready.is_some(),
        "bridge still ready; log:\n{}",
        bridge.sidecar.logs()
    );
    exporter.wait_metric("hass_exporter_bridge_device_up", device, 0.0, FLIP);
    // The bridge's admin port still answers: the bridge is up, its device is not.
    exporter.wait_metric(
        "hass_exporter_bridge_up",
        &[("bridge", "zigbee")],
        1.0,
        FLIP,
    );
    drop(client);

    stick.plug();
    let ready = wait_for(Duration::from_secs(5), || {
        (bridge.sidecar.readyz()?.status == 200).then_some(())
    });
    assert!(
        ready.is_some(),
        "bridge not ready after replug; log:\n{}",
        bridge.sidecar.logs()
    );
    exporter.wait_metric("hass_exporter_bridge_device_up", device, 1.0, FLIP);
    let _client = exchange(&stick, 2);
}
