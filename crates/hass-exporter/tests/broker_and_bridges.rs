//! The real exporter against a real Mosquitto (round trip with a password
//! from a file, `$SYS` values, outage and recovery) and a stand-in serial
//! bridge admin port serving the shared readiness text. Also the binary's
//! config errors and clean SIGTERM.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::{Exporter, StandInBridge, value};
use hass_test_support::binary::run;
use hass_test_support::{Mosquitto, free_addr, http};
use nix::sys::signal::Signal;

const USER: &str = "exporter";
const PASSWORD: &str = "mqtt-Pa55-word";

/// A Mosquitto with the exporter's user and `$SYS` every second.
fn mosquitto() -> Mosquitto {
    Mosquitto::start(USER, PASSWORD, "sys_interval 1\npersistence false\n")
}

fn broker_config(addr: SocketAddr) -> String {
    format!(
        "broker:\n  address: {addr}\n  username: {USER}\n  password: {{ file: {{dir}}/mqtt-password }}\n  \
         interval: 200ms\n  timeout: 1s\n  required: true\n"
    )
}

#[test]
fn broker_round_trip_against_mosquitto_with_outage_and_recovery() {
    let mut mosquitto = mosquitto();
    let exporter = Exporter::start(
        &broker_config(mosquitto.addr),
        &[("mqtt-password", &format!("{PASSWORD}\n"))],
    );
    exporter.wait_metric("round trips", Duration::from_secs(10), |m| {
        value(m, "hass_exporter_broker_round_trip_seconds_count", &[]).is_some_and(|n| n >= 3.0)
    });
    assert_eq!(exporter.value("hass_exporter_broker_up", &[]), Some(1.0));
    assert_eq!(exporter.status("/readyz"), 200);
    exporter.wait_metric("$SYS clients", Duration::from_secs(5), |m| {
        value(
            m,
            "hass_exporter_broker_sys",
            &[("topic", "$SYS/broker/clients/connected")],
        )
        .is_some_and(|n| n >= 1.0)
    });
    let m = exporter.metrics();
    let sum = value(&m, "hass_exporter_broker_round_trip_seconds_sum", &[]).unwrap();
    let count = value(&m, "hass_exporter_broker_round_trip_seconds_count", &[]).unwrap();
    eprintln!(
        "mean broker round trip: {:.2} ms over {count} trips",
        sum / count * 1000.0
    );
    assert!(sum / count < 0.5);

    mosquitto.kill();
    let down = exporter.wait_metric("broker down", Duration::from_secs(5), |m| {
        value(m, "hass_exporter_broker_up", &[]) == Some(0.0)
    });
    eprintln!("broker_up 0 {down:?} after Mosquitto was killed (interval 200ms, timeout 1s)");
    assert_eq!(exporter.status("/readyz"), 503, "the broker is required");

    mosquitto.launch();
    let up = exporter.wait_metric("broker back", Duration::from_secs(40), |m| {
        value(m, "hass_exporter_broker_up", &[]) == Some(1.0)
    });
    eprintln!("broker_up 1 {up:?} after Mosquitto restarted");
    assert!(
        exporter
            .value("hass_exporter_broker_connects_total", &[])
            .is_some_and(|n| n >= 2.0)
    );
    assert!(
        !exporter.process.stderr().contains(PASSWORD),
        "the password leaked into the log"
    );
}

#[test]
fn broker_username_and_password_from_files() {
    let mosquitto = mosquitto();
    let exporter = Exporter::start(
        &format!(
            "broker:\n  address: {}\n  username: {{ file: {{dir}}/mqtt-username }}\n  \
             password: {{ file: {{dir}}/mqtt-password }}\n  interval: 200ms\n  timeout: 1s\n",
            mosquitto.addr
        ),
        &[
            ("mqtt-username", &format!("{USER}\n")),
            ("mqtt-password", &format!("{PASSWORD}\n")),
        ],
    );
    exporter.wait_metric("round trip", Duration::from_secs(10), |m| {
        value(m, "hass_exporter_broker_round_trip_seconds_count", &[]).is_some_and(|n| n >= 1.0)
    });
    assert_eq!(exporter.value("hass_exporter_broker_up", &[]), Some(1.0));
}

#[test]
fn wrong_broker_password_is_down_not_a_crash() {
    let mosquitto = mosquitto();
    let exporter = Exporter::start(
        &broker_config(mosquitto.addr),
        &[("mqtt-password", "wrong-Pa55")],
    );
    // Evidence it tried and Mosquitto refused the login, not just silence.
    exporter.wait_metric("login refused", Duration::from_secs(10), |m| {
        value(
            m,
            "hass_exporter_broker_connection_errors_total",
            &[("reason", "not_authorized")],
        )
        .is_some_and(|n| n >= 1.0)
    });
    // Keeps retrying (with backoff), stays down, never connects.
    exporter.wait_metric("login refused again", Duration::from_secs(10), |m| {
        value(
            m,
            "hass_exporter_broker_connection_errors_total",
            &[("reason", "not_authorized")],
        )
        .is_some_and(|n| n >= 2.0)
    });
    let m = exporter.metrics();
    assert_eq!(value(&m, "hass_exporter_broker_up", &[]), Some(0.0));
    assert_eq!(
        value(&m, "hass_exporter_broker_round_trip_seconds_count", &[]),
        Some(0.0)
    );
    assert_eq!(
        value(&m, "hass_exporter_broker_connects_total", &[]),
        Some(0.0)
    );
    assert_eq!(exporter.status("/healthz"), 200);
    assert_eq!(exporter.status("/readyz"), 503, "the broker is required");
    let log = exporter.process.stderr();
    assert!(log.contains("refused the exporter's login"), "{log}");
    assert_eq!(
        log.matches("refused the exporter's login").count(),
        1,
        "said once, not on every retry: {log}"
    );
    assert!(
        !log.contains("wrong-Pa55"),
        "the password leaked into the log"
    );
}

#[test]
fn bridge_devices_follow_readyz_and_only_readyz_is_requested() {
    let bridge = StandInBridge::start(
        200,
        "ready\nok device:zigbee\nok device:zwave\nok listeners\n",
    );
    let exporter = Exporter::start(
        &format!(
            "bridges:\n  - name: node1\n    url: http://{}\n    interval: 100ms\n    timeout: 500ms\n    required: true\n",
            bridge.addr
        ),
        &[],
    );
    exporter.wait_metric("devices up", Duration::from_secs(5), |m| {
        value(
            m,
            "hass_exporter_bridge_device_up",
            &[("bridge", "node1"), ("device", "zwave")],
        ) == Some(1.0)
    });
    assert_eq!(
        exporter.value("hass_exporter_bridge_up", &[("bridge", "node1")]),
        Some(1.0)
    );
    exporter.wait_status("/readyz", 200, Duration::from_secs(5));

    // The stick is unplugged: the bridge answers 503 with the reason.
    bridge.set(
        503,
        "not ready\nok device:zigbee\nFAIL device:zwave: /dev/ttyACM0: unplugged\nok listeners\n",
    );
    let flip = exporter.wait_metric("zwave down", Duration::from_secs(5), |m| {
        value(
            m,
            "hass_exporter_bridge_device_up",
            &[("bridge", "node1"), ("device", "zwave")],
        ) == Some(0.0)
    });
    eprintln!("bridge_device_up 0 {flip:?} after the bridge reported the device unplugged");
    let m = exporter.metrics();
    assert_eq!(
        value(
            &m,
            "hass_exporter_bridge_device_up",
            &[("device", "zigbee")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&m, "hass_exporter_bridge_up", &[("bridge", "node1")]),
        Some(1.0)
    );
    let body = http::get(exporter.admin, "/readyz").unwrap();
    assert_eq!(body.status, 503);
    assert!(body.body.contains("bridge:node1"), "{}", body.body);

    // A device the bridge no longer lists disappears instead of going stale.
    bridge.set(200, "ready\nok device:zigbee\n");
    exporter.wait_metric("zwave gone", Duration::from_secs(5), |m| {
        value(m, "hass_exporter_bridge_device_up", &[("device", "zwave")]).is_none()
    });

    let paths = bridge.paths();
    assert!(paths.len() >= 3);
    assert!(paths.iter().all(|p| p == "/readyz"), "{paths:?}");
}

#[test]
fn unreachable_bridge_is_down_and_its_devices_unknown() {
    let exporter = Exporter::start(
        &format!(
            "bridges:\n  - name: gone\n    url: http://{}\n    interval: 100ms\n    timeout: 300ms\n",
            free_addr()
        ),
        &[],
    );
    exporter.wait_metric("bridge down", Duration::from_secs(5), |m| {
        value(m, "hass_exporter_bridge_up", &[("bridge", "gone")]) == Some(0.0)
    });
    assert!(
        exporter
            .value("hass_exporter_bridge_device_up", &[])
            .is_none()
    );
    assert_eq!(exporter.status("/readyz"), 200, "not required");
}

#[test]
fn bad_config_exits_2_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("exporter.yaml");
    std::fs::write(
        &config,
        "postgres:\n  host: db\n  user: hass\n  pasword: { file: /p }\n",
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hass-exporter"));
    cmd.arg("--config").arg(&config).arg("--check-config");
    let (status, _, stderr) = run(cmd).unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("exporter.yaml:4:3"), "{stderr}");
    assert!(stderr.contains("postgres.pasword"), "{stderr}");

    // A password inside the connection string is refused: secrets live in files.
    std::fs::write(
        &config,
        "postgres:\n  connection: postgresql://hass:hunter2@db/hass\n",
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hass-exporter"));
    cmd.arg("--config").arg(&config).arg("--check-config");
    let (status, _, stderr) = run(cmd).unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("postgres.password"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");

    // An unreadable token file is caught before serving.
    std::fs::write(
        &config,
        "home_assistant:\n  token: { file: /nonexistent/ha-token }\n",
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hass-exporter"));
    cmd.arg("--config").arg(&config).arg("--check-config");
    let (status, _, stderr) = run(cmd).unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("/nonexistent/ha-token"), "{stderr}");
}

#[test]
fn sigterm_stops_it_cleanly_with_probes_running() {
    let bridge = StandInBridge::start(200, "ready\nok device:zigbee\n");
    let mut exporter = Exporter::start(
        &format!(
            "bridges:\n  - name: b\n    url: http://{}\n    interval: 100ms\n",
            bridge.addr
        ),
        &[],
    );
    exporter.wait_metric("bridge up", Duration::from_secs(5), |m| {
        value(m, "hass_exporter_bridge_up", &[("bridge", "b")]) == Some(1.0)
    });
    exporter.process.signal(Signal::SIGTERM);
    let status = exporter
        .process
        .wait_exit(Duration::from_secs(5))
        .expect("exited");
    assert_eq!(status.code(), Some(0), "{}", exporter.process.stderr());
    assert!(exporter.process.stderr().contains("stopped cleanly"));
}
