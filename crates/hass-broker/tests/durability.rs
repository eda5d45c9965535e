//! What Home Assistant relies on across broker restarts: retained messages,
//! persistent sessions with their subscriptions, and queued QoS 1 messages
//! survive SIGKILL (nothing acknowledged is lost) and a clean SIGTERM.

mod common;

use common::TestBroker;

/// Home Assistant's session: persistent, subscribed to `zigbee2mqtt/#`
/// (QoS 1), then gone.
fn ha_subscribes_and_leaves(broker: &TestBroker) {
    let ha = broker.paho(
        4,
        true,
        &[
            "--client-id",
            "homeassistant-core",
            "subscribe",
            "--filter",
            "zigbee2mqtt/#",
            "--qos",
            "1",
            "--persistent",
            "--timeout",
            "0.2",
        ],
    );
    assert_eq!(ha["granted"], serde_json::json!([1]), "{ha}");
}

/// Home Assistant back on its session, without subscribing again: what it
/// receives until `expect` messages arrived (or `timeout` seconds passed),
/// and half a second more; with `messages` listed.
fn ha_returns(broker: &TestBroker, expect: usize, timeout: &str) -> serde_json::Value {
    broker.paho(
        4,
        true,
        &[
            "--client-id",
            "homeassistant-core",
            "subscribe",
            "--filter",
            "unused",
            "--persistent",
            "--no-subscribe",
            "--expect",
            &expect.to_string(),
            "--timeout",
            timeout,
            // Then 0.5 s in which no duplicate may arrive.
            "--linger",
            "0.5",
            "--show",
        ],
    )
}

/// Whether the broker has a session for `client_id`: CONNACK's Session
/// Present when it connects asking to keep one, subscribing to nothing.
fn session_present(broker: &TestBroker, protocol: u8, client_id: &str) -> serde_json::Value {
    let got = broker.paho(
        protocol,
        true,
        &[
            "--client-id",
            client_id,
            "subscribe",
            "--filter",
            "x",
            "--persistent",
            "--no-subscribe",
            "--timeout",
            "0",
        ],
    );
    got["session_present"].clone()
}

fn payloads(summary: &serde_json::Value) -> Vec<String> {
    summary["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["payload"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn publish_retained_and_queue(broker: &TestBroker) {
    ha_subscribes_and_leaves(broker);
    let sent = broker.paho(
        4,
        true,
        &[
            "publish-many",
            "--topic",
            "homeassistant/binary_sensor/door{i}/config",
            "--payload",
            "cfg{i}",
            "--count",
            "50",
            "--qos",
            "1",
            "--retain",
        ],
    );
    assert_eq!(sent["acked"], 50);
    let sent = broker.paho(
        5,
        true,
        &[
            "publish-many",
            "--topic",
            "zigbee2mqtt/door{i}",
            "--payload",
            "open{i}",
            "--count",
            "5",
            "--qos",
            "1",
        ],
    );
    assert_eq!(sent["acked"], 5, "every QoS 1 publish acknowledged: {sent}");
}

fn assert_state_restored(broker: &TestBroker) {
    let retained = broker.paho(
        5,
        true,
        &[
            "subscribe",
            "--filter",
            "homeassistant/#",
            "--qos",
            "1",
            "--expect",
            "50",
            "--timeout",
            "10",
            // Then 0.2 s in which no duplicate may arrive.
            "--linger",
            "0.2",
        ],
    );
    assert_eq!(
        retained["count"],
        50,
        "retained after restart: {retained}\n{}",
        broker.stderr()
    );
    assert_eq!(retained["retained"], 50);

    // The session resumes without subscribing again, and gets what was queued.
    let ha = ha_returns(broker, 5, "10");
    assert_eq!(ha["session_present"], true, "{ha}");
    assert_eq!(
        ha["count"],
        5,
        "queued QoS 1 after restart: {ha}\n{}",
        broker.stderr()
    );
    assert_eq!(
        payloads(&ha),
        ["open0", "open1", "open2", "open3", "open4"],
        "in order"
    );
}

#[test]
fn state_survives_sigkill() {
    let mut broker = TestBroker::start("");
    publish_retained_and_queue(&broker);
    broker.kill9();
    broker.restart();
    assert_state_restored(&broker);
}

#[test]
fn state_survives_sigterm_and_exit_is_clean() {
    let mut broker = TestBroker::start("");
    publish_retained_and_queue(&broker);
    assert_eq!(broker.stop(), Some(0), "{}", broker.stderr());
    assert!(
        broker.stderr().contains("store flushed"),
        "{}",
        broker.stderr()
    );
    broker.restart();
    assert_state_restored(&broker);
}

#[test]
fn delivered_messages_are_not_replayed_after_restart() {
    let mut broker = TestBroker::start("");
    publish_retained_and_queue(&broker);
    // Home Assistant comes back and receives (and acknowledges) the queue...
    let ha = ha_returns(&broker, 5, "10");
    assert_eq!(ha["count"], 5);
    broker.kill9();
    broker.restart();
    // ...so after a crash there is nothing left to deliver twice.
    let ha = ha_returns(&broker, 0, "1.5");
    assert_eq!(ha["session_present"], true);
    assert_eq!(ha["count"], 0, "acknowledged messages came back: {ha}");
}

#[test]
fn a_clean_session_leaves_nothing_behind() {
    let mut broker = TestBroker::start("");
    broker.paho(
        4,
        true,
        &[
            "--client-id",
            "transient",
            "subscribe",
            "--filter",
            "a/#",
            "--qos",
            "1",
            "--timeout",
            "0.2",
        ],
    );
    broker.kill9();
    broker.restart();
    assert_eq!(broker.metric("hass_broker_sessions", None), 0.0);
    assert_eq!(session_present(&broker, 4, "transient"), false);
}

#[test]
fn metrics_parse_and_show_the_store_at_work() {
    let broker = TestBroker::start("");
    broker.paho(
        4,
        true,
        &[
            "publish-many",
            "--topic",
            "homeassistant/a/config",
            "--count",
            "20",
            "--retain",
        ],
    );
    let families = broker.metrics();
    let commits = hass_test_support::openmetrics::find(
        &families,
        "hass_broker_store_commit_duration_seconds",
    )
    .expect("commit histogram");
    assert_eq!(commits.kind, "histogram");
    let count = commits
        .samples
        .iter()
        .find(|s| s.name.ends_with("_count"))
        .map(|s| s.value)
        .unwrap_or_default();
    assert!(count >= 1.0, "{commits:?}");
    assert_eq!(broker.metric("hass_broker_retained_messages", None), 1.0);
    assert_eq!(
        broker.metric("hass_broker_messages_received", Some(("qos", "1"))),
        20.0
    );
}

/// Home Assistant away while a device reports 200 times into a queue of 50,
/// then the broker is killed: what comes back is the newest 50, in order
/// (`slow_consumer: drop_oldest`, the default), or the oldest 50 with
/// `drop_newest`; the shed messages stay gone from the store.
fn queued_after_overflow_and_sigkill(extra: &str) -> Vec<String> {
    let mut broker = TestBroker::start(extra);
    ha_subscribes_and_leaves(&broker);
    let sent = broker.paho(
        4,
        true,
        &[
            "publish-many",
            "--topic",
            "zigbee2mqtt/sensor",
            "--payload",
            "{i}",
            "--count",
            "200",
            "--qos",
            "1",
        ],
    );
    assert_eq!(sent["acked"], 200);
    assert_eq!(broker.metric("hass_broker_dropped_queue_full", None), 150.0);
    broker.kill9();
    broker.restart();
    let ha = ha_returns(&broker, 50, "10");
    assert_eq!(ha["count"], 50, "{ha}\n{}", broker.stderr());
    payloads(&ha)
}

#[test]
fn a_full_queue_keeps_the_newest_messages_across_sigkill() {
    let got = queued_after_overflow_and_sigkill("limits:\n  max_queued_messages: 50\n");
    let newest: Vec<String> = (150..200).map(|i| i.to_string()).collect();
    assert_eq!(got, newest);
}

#[test]
fn drop_newest_keeps_the_oldest_messages_across_sigkill() {
    let got = queued_after_overflow_and_sigkill(
        "limits:\n  max_queued_messages: 50\n  slow_consumer: drop_newest\n",
    );
    let oldest: Vec<String> = (0..50).map(|i| i.to_string()).collect();
    assert_eq!(got, oldest);
}

/// MQTT 5 lets a client end its session by setting the Session Expiry
/// Interval to 0 in DISCONNECT: the stored session goes with it and a
/// restart does not bring it back.
#[test]
fn a_session_ended_by_disconnect_stays_ended_across_sigkill() {
    let mut broker = TestBroker::start("");
    for (client_id, end) in [("ends", Some("0")), ("stays", None)] {
        let mut args = vec![
            "--client-id",
            client_id,
            "subscribe",
            "--filter",
            "zigbee2mqtt/#",
            "--persistent",
            "--timeout",
            "0",
        ];
        if let Some(expiry) = end {
            args.extend(["--expiry-on-disconnect", expiry]);
        }
        assert_eq!(
            broker.paho(5, true, &args)["granted"],
            serde_json::json!([0])
        );
    }
    broker.kill9();
    broker.restart();
    assert_eq!(session_present(&broker, 5, "ends"), false);
    assert_eq!(session_present(&broker, 5, "stays"), true);
}
