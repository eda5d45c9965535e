//! MQTT 5 features Home Assistant, Zigbee2MQTT and friends use, each checked
//! with paho-mqtt against a real broker.

mod common;

use std::path::Path;
use std::process::Command;

use common::{PASSWORD, TestBroker, USER};
use serde_json::json;

fn scenario(broker: &TestBroker, name: &str) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/v5_features.py");
    let out = Command::new("python3")
        .arg(script)
        .args([&broker.mqtt.port().to_string(), USER, PASSWORD, name])
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "scenario {name}: {e}\nstdout: {stdout}\nstderr: {}\nbroker: {}",
            String::from_utf8_lossy(&out.stderr),
            broker.stderr()
        )
    })
}

#[test]
fn shared_subscriptions_split_messages_between_members() {
    let broker = TestBroker::start("");
    let got = scenario(&broker, "shared");
    assert_eq!(got, json!({"a": 10, "b": 10, "distinct": 20}));
}

#[test]
fn topic_aliases_resolve() {
    let broker = TestBroker::start("");
    let got = scenario(&broker, "topic_alias");
    let topic = "zigbee2mqtt/living_room/lamp";
    assert_eq!(
        got["messages"],
        json!([[topic, "first"], [topic, "second"], [topic, "third"]])
    );
}

#[test]
fn no_local_skips_the_publishers_own_messages() {
    let broker = TestBroker::start("");
    assert_eq!(scenario(&broker, "no_local")["payloads"], json!(["theirs"]));
}

#[test]
fn retain_handling_options() {
    let broker = TestBroker::start("");
    let got = scenario(&broker, "retain_handling");
    assert_eq!(
        got,
        json!({"never": 0, "always": 1, "if_new_first": 1, "if_new_again": 0})
    );
}

#[test]
fn retain_as_published() {
    let broker = TestBroker::start("");
    assert_eq!(
        scenario(&broker, "retain_as_published"),
        json!({"keep": [true], "clear": [false]})
    );
}

#[test]
fn subscription_identifiers_come_back_on_deliveries() {
    let broker = TestBroker::start("");
    assert_eq!(
        scenario(&broker, "subscription_ids")["sub_ids"],
        json!([[7]])
    );
}

#[test]
fn expired_messages_are_not_delivered_and_the_rest_carry_their_remaining_time() {
    let broker = TestBroker::start("");
    let got = scenario(&broker, "message_expiry");
    assert_eq!(got["payloads"], json!(["kept"]));
    let left = got["expiry"][0].as_u64().expect("expiry property");
    assert!((590..=600).contains(&left), "remaining expiry {left}");
}

#[test]
fn a_session_ends_when_its_expiry_interval_passes() {
    let broker = TestBroker::start("");
    assert_eq!(
        scenario(&broker, "session_expiry"),
        json!({"session_present": false})
    );
    assert_eq!(broker.metric("hass_broker_sessions_expired", None), 1.0);
}

#[test]
fn will_delay_holds_the_will_and_a_reconnect_cancels_it() {
    let broker = TestBroker::start("");
    assert_eq!(
        scenario(&broker, "will_delay"),
        json!({"early": 0, "late": 1})
    );
    assert_eq!(
        scenario(&broker, "will_delay_cancelled"),
        json!({"early": 0, "late": 0})
    );
}

#[test]
fn deliveries_over_the_clients_maximum_packet_size_are_dropped() {
    let broker = TestBroker::start("");
    assert_eq!(
        scenario(&broker, "max_packet_size")["payloads"],
        json!(["ok"])
    );
    assert_eq!(broker.metric("hass_broker_dropped_too_large", None), 1.0);
}

#[test]
fn the_clients_receive_maximum_bounds_unacknowledged_deliveries() {
    use std::io::Read;
    let broker = TestBroker::start("");
    // MQTT 5 CONNECT with Receive Maximum 3, then SUBSCRIBE at QoS 1; the
    // client then never acknowledges anything.
    let mut connect = common::connect_packet(b"MQTT", 5, "tiny-window");
    // Replace the empty property block (a single 0x00 after keep-alive) with
    // one holding Receive Maximum (0x21) = 3.
    let at = 2 + 6 + 1 + 1 + 2;
    assert_eq!(connect[at], 0x00);
    connect.splice(at..=at, [0x03, 0x21, 0x00, 0x03]);
    connect[1] += 3;
    let stream = std::net::TcpStream::connect(broker.mqtt).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let mut client = common::RawClient { stream, level: 5 };
    client.send(&connect);
    let (kind, _) = client.read_packet().expect("CONNACK");
    assert_eq!(kind >> 4, 2, "CONNACK, got {kind:#x}");
    assert_eq!(client.subscribe("rm/#", 1), [1]);
    broker.paho(
        4,
        true,
        &[
            "publish-many",
            "--topic",
            "rm/x",
            "--count",
            "10",
            "--qos",
            "1",
        ],
    );
    for n in 0..3 {
        let (kind, _) = client.read_packet().expect("PUBLISH");
        assert_eq!(kind >> 4, 3, "delivery {n} is a PUBLISH, got {kind:#x}");
    }
    // Nothing happens for half a second: no fourth delivery while three
    // are unacknowledged (a wait for an absence, so a timed one).
    client
        .stream
        .set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .expect("timeout");
    let mut byte = [0u8; 1];
    match client.stream.read(&mut byte) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("a fourth delivery or a close while 3 are in flight: {other:?}"),
    }
}

/// Mosquitto's `max_keepalive`, as Eclipse Paho's interoperability suite
/// checks it (`test_server_keep_alive`: 120 asked, 60 told).
#[test]
fn max_keepalive_is_told_as_server_keep_alive() {
    let broker = TestBroker::start("limits:\n  max_keepalive: 60\n");
    assert_eq!(
        scenario(&broker, "server_keep_alive"),
        json!({"120": 60, "0": 60, "30": null}),
        "over the maximum or none: told the maximum; within it: told nothing"
    );
}

/// Eclipse Paho's interoperability `test_server_topic_alias`: the broker
/// assigns aliases on what it sends, only to a client that allows them.
#[test]
fn the_broker_assigns_topic_aliases_to_clients_that_allow_them() {
    let broker = TestBroker::start("");
    assert_eq!(
        scenario(&broker, "server_topic_alias"),
        json!({
            "allowed": [["alias/topic", 1], ["", 1], ["", 1]],
            "not_allowed": [["alias/topic", null], ["alias/topic", null], ["alias/topic", null]],
        })
    );
}

/// Eclipse Paho's interoperability `test_request_response`: the responder's
/// SUBSCRIBE, not yet acknowledged, then the request on another connection;
/// the request reaches the responder with its Response Topic and the
/// response comes back with its Correlation Data. (The same race, sent
/// microseconds apart: `clients.rs`, `packets_from_two_connections_…`.)
#[test]
fn requests_and_responses_carry_response_topic_and_correlation_data() {
    let broker = TestBroker::start("");
    assert_eq!(
        scenario(&broker, "request_response"),
        json!({"rounds": 10, "answered": 10})
    );
}
