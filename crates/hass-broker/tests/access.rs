//! Mosquitto ACL files enforced on publish, subscribe and delivery, and the
//! password and ACL files reloaded on change without dropping connections.

mod common;

use std::time::Duration;

use common::{TestBroker, USER};

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
    std::thread::scope(|s| {
        let ha = s.spawn(|| {
            broker.paho(
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
            )
        });
        std::thread::sleep(Duration::from_millis(700));
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
        let got = ha.join().expect("ha");
        let payloads: Vec<&str> = got["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["payload"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(payloads, ["on"], "{got}");
    });
    assert_eq!(
        broker.metric("hass_broker_acl_denied", Some(("action", "publish"))),
        1.0
    );
}

#[test]
fn password_changes_apply_to_new_connections_without_dropping_live_ones() {
    let broker = start_with_acl();
    std::thread::scope(|s| {
        let live = s.spawn(|| broker.paho(4, true, &["connect", "--hold", "2.5"]));
        std::thread::sleep(Duration::from_millis(800));
        broker.set_password(USER, "rotated-password");
        std::thread::sleep(Duration::from_millis(800));
        let old = broker.paho(4, true, &["connect"]);
        assert_eq!(
            old["rc"], 0x87,
            "old password refused after rotation: {old}"
        );
        let new = broker.paho_as(4, USER, "rotated-password", &["connect"]);
        assert_eq!(new["rc"], 0, "{new}");
        let live = live.join().expect("live");
        assert_eq!(
            live["still_connected"], true,
            "rotation dropped a live connection: {live}"
        );
    });
    assert!(broker.metric("hass_broker_policy_reloads", Some(("reason", "ok"))) >= 1.0);
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
