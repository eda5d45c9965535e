//! hass-broker with real clients: paho-mqtt (Home Assistant's) and the
//! Mosquitto command-line tools, over MQTT 3.1.1 and 5.

mod common;

use std::process::Command;

use common::{PASSWORD, RawClient, TestBroker, USER};

fn mosquitto(tool: &str, broker: &TestBroker, args: &[&str]) -> std::process::Output {
    Command::new(tool)
        .args(["-h", "127.0.0.1", "-p", &broker.mqtt.port().to_string()])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e} (Debian's mosquitto-clients)"))
}

#[test]
fn ten_thousand_retained_discovery_topics_reach_every_new_subscriber() {
    let broker = TestBroker::start("");
    let published = broker.paho(
        4,
        true,
        &[
            "publish-many",
            "--topic",
            "homeassistant/sensor/dev{i}/config",
            "--payload",
            r#"{"name":"dev{i}","state_topic":"zigbee2mqtt/dev{i}"}"#,
            "--count",
            "10000",
            "--qos",
            "1",
            "--retain",
        ],
    );
    assert_eq!(published["acked"], 10_000, "{published}");

    for (protocol, qos) in [(4, "0"), (4, "1"), (5, "0"), (5, "1")] {
        let got = broker.paho(
            protocol,
            true,
            &[
                "subscribe",
                "--filter",
                "homeassistant/#",
                "--qos",
                qos,
                "--expect",
                "10000",
                "--timeout",
                "60",
                // Then 0.3 s in which no duplicate may arrive.
                "--linger",
                "0.3",
            ],
        );
        assert_eq!(got["count"], 10_000, "MQTT {protocol} QoS {qos}: {got}");
        assert_eq!(got["retained"], 10_000, "MQTT {protocol} QoS {qos}: {got}");
    }
    assert_eq!(
        broker.metric("hass_broker_retained_messages", None),
        10_000.0
    );
}

#[test]
fn delivery_qos_is_the_lower_of_publish_and_subscription() {
    let broker = TestBroker::start("");
    for (sub_qos, pub_qos, want) in [("1", "0", 0), ("1", "2", 1), ("2", "2", 2), ("0", "2", 0)] {
        let topic = format!("qos/{sub_qos}/{pub_qos}");
        {
            let subscriber = broker.paho_subscribed(
                5,
                true,
                &[
                    "subscribe",
                    "--filter",
                    &topic,
                    "--qos",
                    sub_qos,
                    "--expect",
                    "1",
                    "--timeout",
                    "10",
                ],
            );
            let sent = broker.paho(
                4,
                true,
                &["publish-many", "--topic", &topic, "--qos", pub_qos],
            );
            assert_eq!(sent["rc"], 0);
            let got = subscriber.finish();
            assert_eq!(got["count"], 1, "sub {sub_qos} pub {pub_qos}: {got}");
            assert_eq!(
                got["qos"],
                serde_json::json!([want]),
                "sub {sub_qos} pub {pub_qos}: {got}"
            );
        }
    }
}

#[test]
fn bad_credentials_get_a_connack_refusal_not_a_dropped_socket() {
    let broker = TestBroker::start("");
    // MQTT 3.1.1 gets return code 5, which paho 2 reports as reason 0x87
    // "Not authorized" (and Home Assistant as "invalid auth", not "cannot
    // connect"); MQTT 5 tells a wrong password (0x86) from no credentials (0x87).
    for protocol in [4u8, 5] {
        let got = paho_raw(
            &broker,
            protocol,
            &["--user", USER, "--password", "wrong", "connect"],
        );
        let want = if protocol == 4 { 0x87 } else { 0x86 };
        assert_eq!(got["rc"], want, "MQTT {protocol} wrong password: {got}");
        let got = paho_raw(&broker, protocol, &["connect"]);
        assert_eq!(got["rc"], 0x87, "MQTT {protocol} anonymous: {got}");
    }
    let out = mosquitto(
        "mosquitto_pub",
        &broker,
        &["-u", USER, "-P", "nope", "-t", "x", "-m", "y"],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not authorised"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        broker.metric(
            "hass_broker_auth_failures",
            Some(("reason", "bad_credentials"))
        ),
        3.0
    );
    assert_eq!(
        broker.metric(
            "hass_broker_auth_failures",
            Some(("reason", "not_authorized"))
        ),
        2.0
    );
}

/// paho without the default credentials.
fn paho_raw(broker: &TestBroker, protocol: u8, args: &[&str]) -> serde_json::Value {
    let script = hass_test_support::paho::script();
    let output = Command::new("python3")
        .arg(script)
        .args([
            "--port",
            &broker.mqtt.port().to_string(),
            "--protocol",
            &protocol.to_string(),
        ])
        .args(args)
        .output()
        .expect("python3");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

#[test]
fn keepalive_zero_is_accepted() {
    let broker = TestBroker::start("");
    for protocol in [4u8, 5] {
        let got = broker.paho(
            protocol,
            true,
            &["connect", "--keepalive", "0", "--hold", "0.5"],
        );
        assert_eq!(got["rc"], 0, "MQTT {protocol}: {got}");
        assert_eq!(got["still_connected"], true, "MQTT {protocol}: {got}");
    }
}

#[test]
fn mosquitto_clients_round_trip_on_one_port_for_both_versions() {
    let broker = TestBroker::start("");
    for version in ["mqttv311", "mqttv5"] {
        let topic = format!("zigbee2mqtt/bridge/state/{version}");
        let out = mosquitto(
            "mosquitto_pub",
            &broker,
            &[
                "-V", version, "-u", USER, "-P", PASSWORD, "-t", &topic, "-m", "online", "-r",
                "-q", "1",
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = mosquitto(
            "mosquitto_sub",
            &broker,
            &[
                "-V", version, "-u", USER, "-P", PASSWORD, "-t", &topic, "-C", "1", "-W", "5", "-v",
            ],
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("{topic} online")
        );
    }
}

#[test]
fn empty_retained_payload_clears_the_topic() {
    let broker = TestBroker::start("");
    broker.paho(
        4,
        true,
        &[
            "publish-many",
            "--topic",
            "homeassistant/light/x/config",
            "--payload",
            "{}",
            "--retain",
        ],
    );
    broker.paho(
        4,
        true,
        &[
            "publish-many",
            "--topic",
            "homeassistant/light/x/config",
            "--payload",
            "",
            "--retain",
        ],
    );
    let got = broker.paho(
        4,
        true,
        &["subscribe", "--filter", "homeassistant/#", "--timeout", "1"],
    );
    assert_eq!(got["count"], 0, "{got}");
    assert_eq!(broker.metric("hass_broker_retained_messages", None), 0.0);
}

#[test]
fn websockets_carry_both_versions_on_mqtt_and_root_paths() {
    let broker = TestBroker::start("");
    let sent = broker.paho(
        4,
        true,
        &[
            "publish-many",
            "--topic",
            "homeassistant/switch/s{i}/config",
            "--count",
            "300",
            "--retain",
        ],
    );
    assert_eq!(sent["acked"], 300);
    for protocol in [4u8, 5] {
        for path in ["/mqtt", "/"] {
            let got = broker.paho_on(
                broker.ws.port(),
                protocol,
                true,
                &[
                    "--transport",
                    "websockets",
                    "--ws-path",
                    path,
                    "subscribe",
                    "--filter",
                    "homeassistant/#",
                    "--qos",
                    "1",
                    "--expect",
                    "300",
                    "--timeout",
                    "20",
                ],
            );
            assert_eq!(got["count"], 300, "MQTT {protocol} over ws {path}: {got}");
        }
    }
    // And publishing over a WebSocket reaches a TCP subscriber.
    {
        let tcp = broker.paho_subscribed(
            4,
            true,
            &[
                "subscribe",
                "--filter",
                "ws/test",
                "--expect",
                "1",
                "--timeout",
                "10",
            ],
        );
        broker.paho_on(
            broker.ws.port(),
            5,
            true,
            &[
                "--transport",
                "websockets",
                "publish-many",
                "--topic",
                "ws/test",
            ],
        );
        assert_eq!(tcp.finish()["count"], 1);
    }
}

/// The Python client's `counted_payload`: hex counters, `size` bytes.
fn counted_payload(size: usize) -> String {
    let mut text: String = (0..=size / 8).map(|k| format!("{k:08x}")).collect();
    text.truncate(size);
    text
}

#[test]
fn a_megabyte_retained_message_crosses_websockets_intact() {
    // Zigbee2MQTT's `bridge/devices` on a big network, published from and
    // read by WebSocket clients, whose frames the broker reads in 4 KiB
    // pieces and writes back in its own.
    let broker = TestBroker::start("");
    let size = 1024 * 1024 + 3;
    let sent = broker.paho_on(
        broker.ws.port(),
        5,
        true,
        &[
            "--transport",
            "websockets",
            "publish-many",
            "--topic",
            "zigbee2mqtt/bridge/devices",
            "--payload-size",
            &size.to_string(),
            "--retain",
        ],
    );
    assert_eq!(sent["acked"], 1, "{sent}");
    let expected = counted_payload(size);
    for (port, transport) in [
        (broker.ws.port(), "websockets"),
        (broker.mqtt.port(), "tcp"),
    ] {
        let got = broker.paho_on(
            port,
            4,
            true,
            &[
                "--transport",
                transport,
                "subscribe",
                "--filter",
                "zigbee2mqtt/bridge/#",
                "--expect",
                "1",
                "--timeout",
                "20",
                "--show",
            ],
        );
        assert_eq!(got["count"], 1, "over {transport}: {}", broker.stderr());
        let payload = got["messages"][0]["payload"].as_str().unwrap_or_default();
        assert_eq!(payload.len(), size, "over {transport}");
        assert!(payload == expected, "over {transport}: payload differs");
    }
}

#[test]
fn sys_topics_report_the_broker_like_mosquitto() {
    let broker = TestBroker::start("sys_interval: 200ms\n");
    broker.paho(
        4,
        true,
        &[
            "publish-many",
            "--topic",
            "homeassistant/x/config",
            "--retain",
        ],
    );
    let got = broker.paho(
        4,
        true,
        // The retained snapshot, then one live refresh.
        &[
            "subscribe",
            "--filter",
            "$SYS/broker/#",
            "--expect",
            "32",
            "--timeout",
            "5",
            "--show",
        ],
    );
    let value = |topic: &str| -> String {
        got["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .rfind(|m| m["topic"] == topic)
            .map(|m| m["payload"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_else(|| panic!("{topic} missing from {got}"))
    };
    assert_eq!(
        value("$SYS/broker/version"),
        format!("hass-broker {}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        value("$SYS/broker/clients/connected"),
        "1",
        "the subscriber itself"
    );
    assert_eq!(value("$SYS/broker/retained messages/count"), "1");
    assert!(value("$SYS/broker/uptime").ends_with(" seconds"));
    // `#` does not reach `$SYS`.
    let plain = broker.paho(4, true, &["subscribe", "--filter", "#", "--timeout", "0.6"]);
    assert_eq!(
        plain["count"], 1,
        "only the client's retained message: {plain}"
    );
}

/// MQTT.js, as Zigbee2MQTT runs it.
fn mqttjs(url: &str, version: &str, args: &[&str]) -> serde_json::Value {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node/mqttjs_client.js");
    let out = Command::new("node")
        .arg(script)
        .args([url, USER, PASSWORD, version])
        .args(args)
        .output()
        .expect("node (the README test command installs MQTT.js)");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn mqttjs_publishes_discovery_and_reads_it_back_over_tcp_and_websockets() {
    let broker = TestBroker::start("");
    let tcp = format!("mqtt://{}", broker.mqtt);
    let ws = format!("ws://{}/mqtt", broker.ws);
    let sent = mqttjs(
        &tcp,
        "5",
        &["publish-retained", "homeassistant/sensor/z2m", "1000"],
    );
    assert_eq!(sent["acked"], 1000, "{sent}");
    for (url, version) in [(&tcp, "4"), (&tcp, "5"), (&ws, "4"), (&ws, "5")] {
        let got = mqttjs(
            url,
            version,
            &["count-retained", "homeassistant/#", "1000", "20000"],
        );
        assert_eq!(got["retained"], 1000, "{url} v{version}: {got}");
    }
    let refused = Command::new("node")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node/mqttjs_client.js"))
        .args([
            tcp.as_str(),
            USER,
            "wrong",
            "4",
            "count-retained",
            "x",
            "1",
            "100",
        ])
        .output()
        .expect("node");
    let refused: serde_json::Value = serde_json::from_slice(&refused.stdout).expect("json");
    assert_eq!(
        refused["code"], 5,
        "MQTT.js sees return code 5 (not authorised): {refused}"
    );
}

/// An idle client's connection parks (no task, its socket in the parking
/// lot) and is served as before: what it sends is handled in its turn
/// against a client that is not parked (a parked subscriber's SUBSCRIBE,
/// then an active publisher's PUBLISH: the message arrives, 20 times; half
/// were missed when the lot's task only spawned the parked one), it
/// gets what is published to it, and its PINGREQ is answered.
#[test]
fn a_parked_connection_keeps_its_turn_and_its_service() {
    let broker = TestBroker::start("");
    let login = Some((USER, PASSWORD));
    let parked = |n: f64| broker.await_metric("hass_broker_clients_parked", None, |v| v == n);
    let mut missed = Vec::new();
    for round in 0..20 {
        let (_, mut publisher) =
            RawClient::connect(broker.mqtt, 4, &format!("p{round}"), login, None);
        let (_, mut subscriber) =
            RawClient::connect(broker.mqtt, 4, &format!("s{round}"), login, None);
        // Both park once CONNACK is out; the publisher's PINGREQ brings it
        // back, and it stays a task until the sweep has found it idle twice.
        assert!(parked(2.0), "round {round}: both clients parked");
        assert!(publisher.ping(), "round {round}: a parked client's PINGREQ");
        assert!(parked(1.0), "round {round}: the publisher is a task again");
        if subscribe_then_publish(&mut subscriber, &mut publisher, &format!("turn/{round}")) {
            missed.push(round);
        } else {
            // The marker too, to a subscriber that may have parked again.
            let (_, body) = subscriber.read_packet().expect("the marker");
            assert!(body.ends_with(b"marker"), "round {round}");
        }
    }
    assert!(
        missed.is_empty(),
        "rounds whose message was missed: {missed:?}"
    );
}

/// The subscriber's SUBSCRIBE to `topic`, then, microseconds later, the
/// publisher's PUBLISH "request" on it; once the SUBACK is in, a PUBLISH
/// "marker". Whether the subscriber's first message was the marker: the
/// request was applied before the subscription (a late request would
/// come first), with no timeout to tell.
fn subscribe_then_publish(
    subscriber: &mut RawClient,
    publisher: &mut RawClient,
    topic: &str,
) -> bool {
    subscriber.send(&common::subscribe_packet(topic, 0));
    publisher.send(&common::publish_packet(topic, b"request"));
    let (kind, _) = subscriber.read_packet().expect("SUBACK");
    assert_eq!(kind, 0x90, "{topic}: expected SUBACK");
    publisher.send(&common::publish_packet(topic, b"marker"));
    let (kind, body) = subscriber.read_packet().expect("a PUBLISH");
    assert_eq!(kind & 0xf0, 0x30, "{topic}: expected PUBLISH");
    body.ends_with(b"marker")
}

/// Packets that arrive on two connections are applied in the order they
/// arrived, as Mosquitto does (Eclipse Paho's `test_request_response` and
/// `test_subscribe_options` count on it): one client's SUBSCRIBE, then,
/// microseconds later, another client's PUBLISH on that topic, 40 times;
/// the subscriber gets the message every time. A second PUBLISH, sent once
/// the SUBACK is in, tells a missed message from a late one without a
/// timeout. (On tokio's multi-thread scheduler, which runs the task woken
/// last first, most rounds were missed.)
#[test]
fn packets_from_two_connections_are_applied_in_the_order_they_arrive() {
    let broker = TestBroker::start("");
    let login = Some((USER, PASSWORD));
    let mut missed = Vec::new();
    for round in 0..40 {
        let (_, mut publisher) =
            RawClient::connect(broker.mqtt, 4, &format!("p{round}"), login, None);
        let (_, mut subscriber) =
            RawClient::connect(broker.mqtt, 4, &format!("s{round}"), login, None);
        if subscribe_then_publish(&mut subscriber, &mut publisher, &format!("order/{round}")) {
            missed.push(round);
        }
    }
    assert!(
        missed.is_empty(),
        "rounds whose message was missed: {missed:?}"
    );
}
