//! Moving from the Mosquitto sidecar: a `mosquitto.db` written by Debian's
//! Mosquitto 2.0.11 in the test, imported once by hass-broker, brings Home
//! Assistant's discovery topics and its persistent session along.

mod common;

use std::process::Command;

use common::{PASSWORD, TestBroker, USER};
use hass_test_support::Mosquitto;
use serde_json::json;

/// A retained message published to Mosquitto; `extra` adds flags
/// (`-V mqttv5`, a content type).
fn retain_on(mosquitto: &Mosquitto, topic: &str, payload: &str, extra: &[&str]) {
    common::mosquitto_pub_retained(
        mosquitto.path(),
        mosquitto.addr.port(),
        topic,
        payload.as_bytes(),
        extra,
    );
}

/// Runs the paho helper against `port` as the test user.
fn paho(port: u16, protocol: u8, args: &[&str]) -> serde_json::Value {
    let out = Command::new("python3")
        .arg(hass_test_support::paho::script())
        .args([
            "--port",
            &port.to_string(),
            "--protocol",
            &protocol.to_string(),
        ])
        .args(["--user", USER, "--password", PASSWORD])
        .args(args)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("paho JSON")
}

#[test]
fn a_mosquitto_db_brings_retained_messages_and_persistent_sessions_once() {
    let mut mosquitto = Mosquitto::start(
        USER,
        PASSWORD,
        "persistence true\npersistence_location {dir}/\nautosave_interval 3600\n",
    );
    retain_on(
        &mosquitto,
        "homeassistant/sensor/kitchen/config",
        r#"{"name":"Kitchen","state_topic":"zigbee2mqtt/kitchen"}"#,
        &[],
    );
    retain_on(
        &mosquitto,
        "homeassistant/light/hall/config",
        r#"{"name":"Hall"}"#,
        &[
            "-V",
            "mqttv5",
            "-D",
            "publish",
            "content-type",
            "application/json",
        ],
    );
    retain_on(&mosquitto, "zigbee2mqtt/bridge/state", "online", &[]);
    // Home Assistant's session: persistent, subscribed, gone.
    let ha = paho(
        mosquitto.addr.port(),
        4,
        &[
            "--client-id",
            "homeassistant-core",
            "subscribe",
            "--persistent",
            "--filter",
            "zigbee2mqtt/#",
            "--qos",
            "1",
            "--timeout",
            "0",
        ],
    );
    assert_eq!(ha["granted"], json!([1]));
    // SIGTERM: Mosquitto writes mosquitto.db as it exits.
    mosquitto.stop();
    let db = mosquitto.path().join("mosquitto.db");
    assert!(db.exists(), "Mosquitto wrote no mosquitto.db");

    let mut broker = TestBroker::start(&format!("import_mosquitto_db: {}\n", db.display()));
    assert_eq!(
        broker.metric("hass_broker_mosquitto_imports", Some(("reason", "ok"))),
        1.0
    );
    let retained = broker.paho(
        5,
        true,
        &[
            "subscribe",
            "--filter",
            "#",
            "--expect",
            "3",
            "--timeout",
            "10",
            "--show",
        ],
    );
    let got = hass_test_support::paho::received(&retained);
    assert_eq!(
        got,
        [
            (
                "homeassistant/light/hall/config".to_owned(),
                r#"{"name":"Hall"}"#.to_owned(),
                true
            ),
            (
                "homeassistant/sensor/kitchen/config".to_owned(),
                r#"{"name":"Kitchen","state_topic":"zigbee2mqtt/kitchen"}"#.to_owned(),
                true
            ),
            (
                "zigbee2mqtt/bridge/state".to_owned(),
                "online".to_owned(),
                true
            ),
        ]
    );
    // The session came along: Home Assistant finds it, and a state
    // published now reaches it without a new SUBSCRIBE.
    let returning = broker.paho_subscribed(
        4,
        true,
        &[
            "--client-id",
            "homeassistant-core",
            "subscribe",
            "--persistent",
            "--no-subscribe",
            "--filter",
            "unused",
            "--expect",
            "1",
            "--timeout",
            "10",
            "--show",
        ],
    );
    broker.paho(
        4,
        true,
        &[
            "publish-many",
            "--topic",
            "zigbee2mqtt/kitchen",
            "--payload",
            "{\"temperature\":21}",
        ],
    );
    let back = returning.finish();
    assert_eq!(back["session_present"], true, "{back}");
    let topics: Vec<&str> = back["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["topic"].as_str().unwrap())
        .collect();
    assert!(topics.contains(&"zigbee2mqtt/kitchen"), "{back}");

    // Once: a topic cleared after the import stays cleared across a restart.
    broker.paho(
        4,
        true,
        &[
            "publish-many",
            "--topic",
            "zigbee2mqtt/bridge/state",
            "--payload",
            "",
            "--retain",
        ],
    );
    broker.kill9();
    broker.restart();
    let after = broker.paho(
        4,
        true,
        &[
            "subscribe",
            "--filter",
            "zigbee2mqtt/bridge/#",
            "--timeout",
            "0.5",
        ],
    );
    assert_eq!(after["count"], 0, "the import ran again: {after}");
    assert_eq!(
        broker.metric("hass_broker_mosquitto_imports", Some(("reason", "ok"))),
        0.0,
        "a restart does not import again"
    );
}

#[test]
fn a_file_that_is_not_a_mosquitto_db_is_reported_and_the_broker_starts() {
    let broker = TestBroker::start_with_files(
        &[("mosquitto.db", "retained: not really\n")],
        "",
        "import_mosquitto_db: {dir}/mosquitto.db\n",
    );
    assert_eq!(
        broker.metric("hass_broker_mosquitto_imports", Some(("reason", "failed"))),
        1.0
    );
    assert!(
        broker.stderr().contains("not a mosquitto.db"),
        "{}",
        broker.stderr()
    );
    assert!(
        !broker.stderr().contains("not really"),
        "the file's content is not echoed"
    );
}
