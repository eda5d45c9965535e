//! Mosquitto ACL files enforced on publish, subscribe and delivery, and the
//! password and ACL files reloaded on change without dropping connections.

mod common;

use std::time::Duration;

use common::{PASSWORD, RawClient, TestBroker, USER, Will};

const ACL: &str = "\
user homeassistant
topic readwrite homeassistant/#
topic read zigbee2mqtt/#
topic deny zigbee2mqtt/secret/#

user zigbee2mqtt
topic readwrite zigbee2mqtt/#
";

#[test]
fn subscriptions_outside_the_acl_get_a_failure_code() {
    let broker = start_with_acl();
    for (protocol, failure) in [(4u8, 0x80), (5, 0x87)] {
        let got = broker.paho(
            protocol,
            true,
            &["subscribe", "--filter", "#", "--timeout", "0.2"],
        );
        assert_eq!(
            got["granted"],
            serde_json::json!([failure]),
            "MQTT {protocol}: {got}"
        );
        let got = broker.paho(
            protocol,
            true,
            &[
                "subscribe",
                "--filter",
                "zigbee2mqtt/#",
                "--qos",
                "1",
                "--timeout",
                "0.2",
            ],
        );
        assert_eq!(
            got["granted"],
            serde_json::json!([1]),
            "MQTT {protocol}: {got}"
        );
    }
    assert_eq!(
        broker.metric("hass_broker_acl_denied", Some(("action", "subscribe"))),
        2.0
    );
}

#[test]
fn denied_publishes_reach_nobody_and_denied_topics_are_never_delivered() {
    let broker = start_with_acl();
    broker.set_password("zigbee2mqtt", "z2m-pass");
    {
        let ha = broker.paho_subscribed(
            5,
            true,
            &[
                "subscribe",
                "--filter",
                "zigbee2mqtt/#",
                "--qos",
                "1",
                "--expect",
                "2",
                "--timeout",
                "3",
                "--show",
            ],
        );
        // Home Assistant may not write under zigbee2mqtt/: dropped.
        broker.paho(
            5,
            true,
            &[
                "publish-many",
                "--topic",
                "zigbee2mqtt/kitchen/set",
                "--payload",
                "forged",
            ],
        );
        // Zigbee2MQTT publishes a normal state and a secret; the secret is
        // within HA's subscription but denied to it at delivery.
        broker.paho_as(
            4,
            "zigbee2mqtt",
            "z2m-pass",
            &[
                "publish-many",
                "--topic",
                "zigbee2mqtt/secret/network_key",
                "--payload",
                "k",
            ],
        );
        broker.paho_as(
            4,
            "zigbee2mqtt",
            "z2m-pass",
            &[
                "publish-many",
                "--topic",
                "zigbee2mqtt/kitchen",
                "--payload",
                "on",
            ],
        );
        let got = ha.finish();
        let payloads: Vec<&str> = got["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["payload"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(payloads, ["on"], "{got}");
    }
    assert_eq!(
        broker.metric("hass_broker_acl_denied", Some(("action", "publish"))),
        1.0
    );
}

/// A rotated password applies to the next login at once; other users'
/// live connections stay (the rotated user's own is closed: see
/// `a_revoked_user_is_disconnected_and_the_others_stay`).
#[test]
fn password_changes_apply_to_new_connections_without_dropping_other_users() {
    let broker = start_with_acl_and_zigbee2mqtt();
    let (rc, mut live) = RawClient::connect(broker.mqtt, 4, "ha", Some((USER, PASSWORD)), None);
    assert_eq!(rc, 0);
    let reloads = broker.metric("hass_broker_policy_reloads", Some(("reason", "ok")));
    broker.set_password("zigbee2mqtt", "rotated-password");
    wait_for_metric(
        &broker,
        "hass_broker_policy_reloads",
        Some(("reason", "ok")),
        reloads + 1.0,
    );
    let old = broker.paho_as(4, "zigbee2mqtt", "z2m-pass", &["connect"]);
    assert_eq!(
        old["rc"], 0x87,
        "old password refused after rotation: {old}"
    );
    let new = broker.paho_as(4, "zigbee2mqtt", "rotated-password", &["connect"]);
    assert_eq!(new["rc"], 0, "{new}");
    assert!(
        live.ping(),
        "rotation dropped another user's live connection"
    );
}

#[test]
fn a_broken_acl_edit_keeps_the_previous_rules() {
    let broker = start_with_acl();
    write_acl(&broker, "user homeassistant\ntopic readwrite a/#/b\n");
    let reported = hass_test_support::wait_for(Duration::from_secs(5), || {
        (broker.metric("hass_broker_policy_reloads", Some(("reason", "failed"))) >= 1.0)
            .then_some(())
    });
    assert!(reported.is_some(), "{}", broker.stderr());
    let got = broker.paho(
        4,
        true,
        &["subscribe", "--filter", "zigbee2mqtt/#", "--timeout", "0.2"],
    );
    assert_eq!(
        got["granted"],
        serde_json::json!([0]),
        "old rules still apply: {got}"
    );
    assert!(broker.stderr().contains("keeping the previous ones"));

    // A fixed file is picked up, and now grants everything under a/.
    write_acl(&broker, "user homeassistant\ntopic readwrite a/#\n");
    let applied = hass_test_support::wait_for(Duration::from_secs(5), || {
        (broker.metric("hass_broker_policy_reloads", Some(("reason", "ok"))) >= 1.0).then_some(())
    });
    assert!(applied.is_some());
    let got = broker.paho(
        4,
        true,
        &["subscribe", "--filter", "zigbee2mqtt/#", "--timeout", "0.2"],
    );
    assert_eq!(
        got["granted"],
        serde_json::json!([0x80]),
        "new rules apply: {got}"
    );
}

/// [`start_with_acl`] with a second user, `zigbee2mqtt` (password
/// `z2m-pass`), in force.
fn start_with_acl_and_zigbee2mqtt() -> TestBroker {
    let broker = start_with_acl();
    broker.set_password("zigbee2mqtt", "z2m-pass");
    wait_for_metric(
        &broker,
        "hass_broker_policy_reloads",
        Some(("reason", "ok")),
        1.0,
    );
    broker
}

fn start_with_acl() -> TestBroker {
    TestBroker::start_with_files(
        &[("acl", ACL)],
        "",
        "acl_file: {dir}/acl\npolicy_reload_interval: 200ms\n",
    )
}

fn write_acl(broker: &TestBroker, text: &str) {
    std::fs::write(broker.dir.path().join("acl"), text).expect("acl");
}

fn wait_for_metric(broker: &TestBroker, family: &str, label: Option<(&str, &str)>, at_least: f64) {
    assert!(
        broker.await_metric(family, label, |v| v >= at_least),
        "{family} never reached {at_least}\n{}",
        broker.stderr()
    );
}

/// Mosquitto closes a client on reload when its user is gone from the
/// password file or has a new password; so does the broker, with 0x87, and
/// keeps everyone else.
#[test]
fn a_revoked_user_is_disconnected_and_the_others_stay() {
    let broker = start_with_acl();
    broker.set_password("zigbee2mqtt", "z2m-pass");
    broker.set_password("esphome", "esp-pass");
    wait_for_metric(
        &broker,
        "hass_broker_policy_reloads",
        Some(("reason", "ok")),
        1.0,
    );
    let login = |user, password| Some((user, password));
    let (rc, mut removed) = RawClient::connect(
        broker.mqtt,
        5,
        "z2m",
        login("zigbee2mqtt", "z2m-pass"),
        None,
    );
    assert_eq!(rc, 0);
    let (rc, mut rotated) =
        RawClient::connect(broker.mqtt, 4, "esp", login("esphome", "esp-pass"), None);
    assert_eq!(rc, 0);
    let (rc, mut kept) = RawClient::connect(broker.mqtt, 5, "ha", login(USER, PASSWORD), None);
    assert_eq!(rc, 0);

    let status = std::process::Command::new("mosquitto_passwd")
        .arg("-D")
        .arg(broker.dir.path().join("passwd"))
        .arg("zigbee2mqtt")
        .status()
        .expect("mosquitto_passwd");
    assert!(status.success());
    assert_eq!(removed.until_closed(), Some(0x87), "MQTT 5 is told why");
    broker.set_password("esphome", "new-esp-pass");
    assert_eq!(
        rotated.until_closed(),
        None,
        "MQTT 3.1.1 has no DISCONNECT to send"
    );
    assert!(kept.ping(), "an unchanged user stays connected");
    assert_eq!(
        broker.metric("hass_broker_credentials_revoked_disconnects", None),
        2.0
    );
    let (rc, _) = RawClient::connect(
        broker.mqtt,
        4,
        "esp",
        login("esphome", "new-esp-pass"),
        None,
    );
    assert_eq!(rc, 0, "the new password works");
}

/// A will accepted at CONNECT is checked again when it is due: an ACL edit
/// that took the topic away also takes the will.
#[test]
fn a_will_is_checked_against_the_acl_in_force_when_it_is_due() {
    let broker = start_with_acl_and_zigbee2mqtt();
    let will = Will("zigbee2mqtt/bridge/state", b"offline", 1, true);
    let (rc, client) = RawClient::connect(
        broker.mqtt,
        4,
        "z2m",
        Some(("zigbee2mqtt", "z2m-pass")),
        Some(will),
    );
    assert_eq!(rc, 0);
    let reloads = broker.metric("hass_broker_policy_reloads", Some(("reason", "ok")));
    write_acl(
        &broker,
        "user homeassistant\ntopic readwrite homeassistant/#\ntopic read zigbee2mqtt/#\n\
         user zigbee2mqtt\ntopic read zigbee2mqtt/#\n",
    );
    wait_for_metric(
        &broker,
        "hass_broker_policy_reloads",
        Some(("reason", "ok")),
        reloads + 1.0,
    );
    // Gone without DISCONNECT: the will is due at once.
    drop(client);
    wait_for_metric(&broker, "hass_broker_wills_refused", None, 1.0);
    assert_eq!(broker.metric("hass_broker_wills_published", None), 0.0);
    let (rc, mut reader) =
        RawClient::connect(broker.mqtt, 4, "reader", Some((USER, PASSWORD)), None);
    assert_eq!(rc, 0);
    assert_eq!(reader.subscribe("zigbee2mqtt/bridge/state", 1), [1]);
    assert!(
        reader.ping(),
        "PINGRESP came first: nothing retained was replayed"
    );
}

/// User B connecting with user A's client id is refused and A keeps its
/// connection, session and will; with `client_id_takeover: any_user` B takes
/// the session over, as with Mosquitto.
#[test]
fn another_user_cannot_take_over_a_client_id() {
    let broker = start_with_acl_and_zigbee2mqtt();
    let will = Will("homeassistant/status", b"offline", 1, true);
    let (rc, mut owner) = RawClient::connect(
        broker.mqtt,
        5,
        "hass-main",
        Some((USER, PASSWORD)),
        Some(will),
    );
    assert_eq!(rc, 0);
    for level in [5u8, 4] {
        let (rc, _) = RawClient::connect(
            broker.mqtt,
            level,
            "hass-main",
            Some(("zigbee2mqtt", "z2m-pass")),
            None,
        );
        assert_eq!(rc, if level == 5 { 0x85 } else { 2 }, "MQTT {level}");
    }
    assert!(owner.ping(), "the owner's connection is untouched");
    assert_eq!(broker.metric("hass_broker_wills_published", None), 0.0);
    assert_eq!(
        broker.metric(
            "hass_broker_auth_failures",
            Some(("reason", "client_id_owned"))
        ),
        2.0
    );
    // The owner itself may still take its session over.
    let (rc, _again) =
        RawClient::connect(broker.mqtt, 5, "hass-main", Some((USER, PASSWORD)), None);
    assert_eq!(rc, 0);
    assert_eq!(owner.until_closed(), Some(0x8e), "session taken over");
    drop(broker);

    let broker = TestBroker::start_with_files(&[], "", "client_id_takeover: any_user\n");
    broker.set_password("zigbee2mqtt", "z2m-pass");
    let taken = hass_test_support::wait_for(Duration::from_secs(10), || {
        let (_, mut owner) =
            RawClient::connect(broker.mqtt, 5, "hass-main", Some((USER, PASSWORD)), None);
        let (rc, _other) = RawClient::connect(
            broker.mqtt,
            5,
            "hass-main",
            Some(("zigbee2mqtt", "z2m-pass")),
            None,
        );
        (rc == 0).then(|| owner.until_closed())
    });
    assert_eq!(taken, Some(Some(0x8e)));
}

/// Only the broker writes `$SYS`, with or without an ACL file: a client's
/// retained `$SYS/broker/version` is refused (MQTT 5: PUBACK 0x87) and never
/// replayed.
#[test]
fn clients_cannot_write_sys_topics() {
    let broker = TestBroker::start("sys_interval: null\n");
    let (rc, mut client) =
        RawClient::connect(broker.mqtt, 5, "forger", Some((USER, PASSWORD)), None);
    assert_eq!(rc, 0);
    let topic = b"$SYS/broker/version";
    let mut body = (topic.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(topic);
    body.extend_from_slice(&[0, 7, 0]); // packet id 7, no properties
    body.extend_from_slice(b"pwned");
    client.send(&common::frame(0x33, body)); // QoS 1, retained
    let (kind, puback) = client.read_packet().expect("PUBACK");
    assert_eq!((kind, &puback[..3]), (0x40, &[0, 7, 0x87][..]));
    assert_eq!(client.subscribe("$SYS/broker/version", 0), [0]);
    assert!(client.ping(), "PINGRESP came first: nothing was retained");
    assert_eq!(
        broker.metric("hass_broker_acl_denied", Some(("action", "publish"))),
        1.0
    );
}
