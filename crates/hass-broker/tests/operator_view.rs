//! The operator's view on the admin port, with real paho-mqtt and Mosquitto
//! clients connected: what `/api/clients`, `/api/sessions`, `/api/retained`
//! and the page say, what they keep back, who may read them, and how
//! Debian's Chromium shows the page on a phone-sized screen.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{TestBroker, USER};
use hass_test_support::http;
use serde_json::Value;

/// Publishes a retained message to `broker` as the test user.
fn retain(broker: &TestBroker, topic: &str, payload: &[u8]) {
    common::mosquitto_pub_retained(broker.dir.path(), broker.mqtt.port(), topic, payload, &[]);
}

fn get_json(broker: &TestBroker, path: &str) -> Value {
    let reply = http::get(broker.admin, path).expect("admin answers");
    assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    assert_eq!(reply.content_type.as_deref(), Some("application/json"));
    serde_json::from_str(&reply.body).expect("JSON")
}

fn item<'a>(page: &'a Value, key: &str, value: &str) -> &'a Value {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|i| i[key] == value)
        .unwrap_or_else(|| panic!("no item with {key} = {value} in {page}"))
}

fn topics(page: &Value) -> Vec<&str> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["topic"].as_str().expect("topic"))
        .collect()
}

#[test]
fn clients_sessions_and_retained_messages_are_listed_as_an_operator_needs_them() {
    let broker = TestBroker::start("");
    for (topic, payload) in [
        (
            "homeassistant/sensor/kitchen/config",
            r#"{"name":"Kitchen"}"#,
        ),
        (
            "homeassistant/light/hall/config",
            r#"{"name":"Hall light"}"#,
        ),
        ("homeassistant/switch/porch/config", r#"{"name":"Porch"}"#),
        ("zigbee2mqtt/bridge/state", "online"),
    ] {
        retain(&broker, topic, payload.as_bytes());
    }
    // A session kept after its client left (MQTT 3.1.1 clean_session=0).
    let kept = broker.paho(
        4,
        true,
        &[
            "--client-id",
            "zigbee2mqtt-kept",
            "subscribe",
            "--persistent",
            "--filter",
            "zigbee2mqtt/#",
            "--timeout",
            "0",
        ],
    );
    assert_eq!(kept["granted"], serde_json::json!([0]));
    // Home Assistant-like: connected, two filters at QoS 1, the three
    // discovery messages replayed; it ends when one more message comes.
    let live = broker.paho_subscribed(
        4,
        true,
        &[
            "--client-id",
            "homeassistant-live",
            "subscribe",
            "--filter",
            "homeassistant/#",
            "--filter",
            "zigbee2mqtt/+/availability",
            "--qos",
            "1",
            "--expect",
            "4",
            "--timeout",
            "30",
        ],
    );

    let clients = get_json(&broker, "/api/clients");
    assert_eq!(clients["total"], 1, "{clients}");
    assert_eq!(clients["next"], Value::Null);
    let ha = item(&clients, "client_id", "homeassistant-live");
    assert_eq!(ha["username"], USER);
    assert_eq!(ha["protocol"], "3.1.1");
    assert_eq!(ha["keep_alive"], 60);
    assert!(
        ha["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{ha}"
    );
    assert!(
        ha["connected_at"]
            .as_str()
            .is_some_and(|t| t.len() == 20 && t.ends_with('Z')),
        "{ha}"
    );
    let filters: Vec<(&str, u64)> = ha["subscriptions"]
        .as_array()
        .expect("subscriptions")
        .iter()
        .map(|s| (s["filter"].as_str().unwrap(), s["qos"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        filters,
        [("homeassistant/#", 1), ("zigbee2mqtt/+/availability", 1)]
    );
    for key in ["queued", "inflight", "dropped"] {
        assert!(ha[key].is_u64(), "{key} in {ha}");
    }

    let sessions = get_json(&broker, "/api/sessions");
    assert_eq!(sessions["total"], 1, "only the kept session: {sessions}");
    let z2m = item(&sessions, "client_id", "zigbee2mqtt-kept");
    assert_eq!(z2m["online"], false);
    assert_eq!(z2m["owner"], USER);
    assert_eq!(z2m["expiry_interval"], Value::Null, "3.1.1: kept forever");
    assert_eq!(z2m["subscriptions"], 1);
    assert!(z2m["disconnected_at"].is_string(), "{z2m}");

    let retained = get_json(&broker, "/api/retained?prefix=homeassistant/");
    assert_eq!(retained["total"], 3);
    assert_eq!(
        topics(&retained),
        [
            "homeassistant/light/hall/config",
            "homeassistant/sensor/kitchen/config",
            "homeassistant/switch/porch/config"
        ]
    );
    let hall = item(&retained, "topic", "homeassistant/light/hall/config");
    assert_eq!(hall["bytes"], r#"{"name":"Hall light"}"#.len());
    assert_eq!(hall["qos"], 1);
    assert!(hall["received_at"].is_string(), "{hall}");
    assert!(hall.get("payload").is_none(), "payloads are off by default");

    // Two pages of two: each continues where the last stopped.
    let first = get_json(&broker, "/api/retained?prefix=homeassistant/&limit=2");
    assert_eq!(topics(&first).len(), 2);
    assert_eq!(first["total"], 3);
    let next = first["next"].as_str().expect("a next page");
    assert_eq!(next, "homeassistant/sensor/kitchen/config");
    let second = get_json(
        &broker,
        &format!("/api/retained?prefix=homeassistant/&limit=2&after={next}"),
    );
    assert_eq!(topics(&second), ["homeassistant/switch/porch/config"]);
    assert_eq!(second["next"], Value::Null);
    // Without a prefix: everything clients retained, not the broker's $SYS.
    let all = get_json(&broker, "/api/retained");
    assert_eq!(all["total"], 4, "{all}");

    // The page says the same to a person.
    let page = http::get(broker.admin, "/").expect("page");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.content_type.as_deref(),
        Some("text/html; charset=utf-8")
    );
    for text in [
        "Connected: 1",
        "Sessions kept: 1",
        "<code>homeassistant-live</code>",
        "<code>zigbee2mqtt/+/availability</code>",
        "<code>zigbee2mqtt-kept</code>",
        "<code>homeassistant/switch/porch/config</code>",
    ] {
        assert!(page.body.contains(text), "{text:?} not on the page");
    }
    assert!(
        !page.body.contains("zigbee2mqtt/bridge/state"),
        "the page lists the homeassistant/ prefix first"
    );

    retain(&broker, "homeassistant/sensor/last/config", b"{}");
    let got = live.finish();
    assert_eq!(got["count"], 4, "{got}");
}

#[test]
fn retained_payloads_are_shown_only_when_the_config_says_so() {
    let secret = "wifi-password-Zu8!";
    let hidden = TestBroker::start("");
    retain(
        &hidden,
        "homeassistant/text/wifi/config",
        format!(r#"{{"initial":"{secret}"}}"#).as_bytes(),
    );
    let api = http::get(hidden.admin, "/api/retained").expect("api");
    let page = http::get(hidden.admin, "/").expect("page");
    assert!(api.body.contains("homeassistant/text/wifi/config"));
    assert!(page.body.contains("homeassistant/text/wifi/config"));
    assert!(!api.body.contains(secret) && !page.body.contains(secret));

    let shown = TestBroker::start("operator_view:\n  payloads: true\n");
    retain(&shown, "homeassistant/text/wifi/config", secret.as_bytes());
    retain(&shown, "zigbee2mqtt/raw", &[0xff, 0x00, 0x10]);
    let retained = get_json(&shown, "/api/retained");
    let text = item(&retained, "topic", "homeassistant/text/wifi/config");
    assert_eq!(text["payload"], secret);
    let raw = item(&retained, "topic", "zigbee2mqtt/raw");
    assert_eq!(raw["payload_base64"], "/wAQ");
    assert!(raw.get("payload").is_none());
    let page = http::get(shown.admin, "/").expect("page");
    assert!(page.body.contains(secret));
}

#[test]
fn a_token_guards_the_view_but_not_the_probes_or_metrics() {
    let token = "op-token-7f3a9c";
    let broker = TestBroker::start_with_files(
        &[("view-token", &format!("{token}\n"))],
        "",
        "operator_view:\n  token:\n    file: {dir}/view-token\n",
    );
    for path in ["/", "/api/clients", "/api/sessions", "/api/retained"] {
        let refused = http::get(broker.admin, path).expect("answer");
        assert_eq!(refused.status, 401, "{path} without a token");
        assert!(!refused.body.contains(token));
        let challenges = refused.header_values("www-authenticate");
        assert!(
            challenges.iter().any(|c| c.starts_with("Basic ")),
            "a browser is asked for it: {challenges:?}"
        );
    }
    let wrong = http::get_with(
        broker.admin,
        "/api/clients",
        &[("Authorization", "Bearer op-token-7f3a9")],
    )
    .expect("answer");
    assert_eq!(wrong.status, 401, "a prefix of the token is not the token");
    let bearer = format!("Bearer {token}");
    let right = http::get_with(broker.admin, "/api/clients", &[("Authorization", &bearer)])
        .expect("answer");
    assert_eq!(right.status, 200, "{}", right.body);
    // What a browser sends after asking: any user name, the token as password.
    let basic = http::get_with(
        broker.admin,
        "/",
        &[("Authorization", "Basic b3BlcmF0b3I6b3AtdG9rZW4tN2YzYTlj")],
    )
    .expect("answer");
    assert_eq!(basic.status, 200);
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            http::get(broker.admin, path).expect(path).status,
            200,
            "{path}"
        );
    }
    assert_eq!(
        broker.metric("hass_broker_operator_view_unauthorized", None),
        5.0
    );

    let off = TestBroker::start("operator_view:\n  enabled: false\n");
    assert_eq!(
        http::get(off.admin, "/api/clients").expect("answer").status,
        404
    );
    assert_eq!(
        http::get(off.admin, "/healthz").expect("answer").status,
        200
    );
}

/// Debian's Chromium, headless, with what keeps it off the network.
fn chromium(profile: &Path) -> Command {
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    cmd
}

/// Where tests leave files for a person to look at.
fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

#[test]
fn hostile_names_show_as_text_in_chromium_on_a_phone_sized_screen() {
    let broker = TestBroker::start("");
    let hostile_id = "<img src=x onerror=alert(1)>";
    let hostile_topic = "homeassistant/sensor/</code><script>alert(2)</script>/config";
    retain(&broker, hostile_topic, b"{}");
    retain(&broker, "homeassistant/binary_sensor/door/config", b"{}");
    let client = broker.paho_subscribed(
        5,
        true,
        &[
            "--client-id",
            hostile_id,
            "subscribe",
            "--filter",
            "homeassistant/#",
            "--expect",
            "3",
            "--timeout",
            "60",
        ],
    );
    let page = http::get(broker.admin, "/").expect("page");
    assert!(!page.body.contains("<img") && !page.body.contains("<script"));
    assert!(page.body.contains("&lt;img src=x onerror=alert(1)&gt;"));
    let policy = page.header_values("content-security-policy").join(" ");
    assert!(policy.contains("default-src 'none'"), "{policy}");

    let profile = tempfile::tempdir().expect("profile");
    let url = format!("http://{}/", broker.admin);
    let dom = chromium(profile.path())
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .expect("chromium (Debian's package; the README test command installs it)");
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let dom = String::from_utf8_lossy(&dom.stdout);
    // As the browser parsed it: no element came from a name, the names are text.
    assert!(!dom.contains("<img") && !dom.contains("<script"), "{dom}");
    assert!(dom.contains("&lt;img src=x onerror=alert(1)&gt;"), "{dom}");
    assert!(dom.contains("homeassistant/binary_sensor/door/config"));
    assert!(dom.contains("MQTT") && dom.contains("Retained messages"));

    // A Pixel-sized screenshot, kept for a person to look at.
    let shot = artifacts().join("operator-view-phone.png");
    let _ = std::fs::remove_file(&shot);
    let status = chromium(profile.path())
        .arg("--window-size=412,915")
        .arg("--force-device-scale-factor=1")
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .expect("chromium");
    assert!(status.status.success());
    let png = std::fs::read(&shot).expect("screenshot written");
    assert_eq!(&png[1..4], b"PNG");
    // Width and height from the IHDR chunk: the phone's viewport.
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    assert_eq!(width, 412, "{}", shot.display());

    retain(&broker, "homeassistant/sensor/last/config", b"{}");
    assert_eq!(client.finish()["count"], 3);
}
