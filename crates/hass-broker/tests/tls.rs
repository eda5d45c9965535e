//! MQTT over TLS (8883) and over secure WebSockets (8884), and certificate
//! rotation as cert-manager does it: new files, no restart.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{PASSWORD, TestBroker, USER};
use hass_test_support::{free_addr, wait_for};

/// A self-signed certificate for 127.0.0.1 made by the openssl CLI.
fn make_cert(dir: &Path, name: &str) {
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
        ])
        .args([
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ])
        .arg("-keyout")
        .arg(dir.join(format!("{name}.key")))
        .arg("-out")
        .arg(dir.join(format!("{name}.crt")))
        .output()
        .expect("openssl");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
}

/// SHA-256 of the certificate a fresh TLS connection to `port` presents.
fn presented_cert(port: u16, ca: &Path) -> String {
    let script = "import hashlib, socket, ssl, sys\n\
        ctx = ssl.create_default_context(cafile=sys.argv[2])\n\
        s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', int(sys.argv[1]))), server_hostname='127.0.0.1')\n\
        print(hashlib.sha256(s.getpeercert(True)).hexdigest())";
    let out = Command::new("python3")
        .args(["-c", script, &port.to_string()])
        .arg(ca)
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn fingerprint(cert: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(cert)
        .output()
        .expect("openssl");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .rsplit('=')
        .next()
        .unwrap_or_default()
        .replace(':', "")
        .to_lowercase()
}

struct TlsBroker {
    broker: TestBroker,
    mqtts: u16,
    wss: u16,
}

fn start() -> TlsBroker {
    let certs = tempfile::tempdir().expect("dir");
    make_cert(certs.path(), "first");
    let (mqtts, wss) = (free_addr(), free_addr());
    let crt = std::fs::read_to_string(certs.path().join("first.crt")).expect("crt");
    let key = std::fs::read_to_string(certs.path().join("first.key")).expect("key");
    let broker = TestBroker::start_with_files(
        &[("tls.crt", &crt), ("tls.key", &key), ("ca.crt", &crt)],
        &format!("  mqtts: {mqtts}\n  wss: {wss}\n"),
        "tls:\n  cert_file: {dir}/tls.crt\n  key_file: {dir}/tls.key\n  reload_interval: 200ms\n",
    );
    TlsBroker {
        broker,
        mqtts: mqtts.port(),
        wss: wss.port(),
    }
}

#[test]
fn mqtts_and_wss_serve_both_versions() {
    let tls = start();
    let broker = &tls.broker;
    let ca = broker.dir.path().join("ca.crt");
    let ca = ca.to_str().expect("utf-8 path");
    broker.paho(
        4,
        true,
        &[
            "publish-many",
            "--topic",
            "homeassistant/tls/x/config",
            "--retain",
        ],
    );
    for protocol in [4u8, 5] {
        let got = broker.paho_on(
            tls.mqtts,
            protocol,
            true,
            &[
                "--tls-ca",
                ca,
                "subscribe",
                "--filter",
                "homeassistant/#",
                "--expect",
                "1",
                "--timeout",
                "10",
            ],
        );
        assert_eq!(got["count"], 1, "mqtts MQTT {protocol}: {got}");
        let got = broker.paho_on(
            tls.wss,
            protocol,
            true,
            &[
                "--tls-ca",
                ca,
                "--transport",
                "websockets",
                "subscribe",
                "--filter",
                "homeassistant/#",
                "--expect",
                "1",
                "--timeout",
                "10",
            ],
        );
        assert_eq!(got["count"], 1, "wss MQTT {protocol}: {got}");
    }
    let out = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &tls.mqtts.to_string(),
            "--cafile",
            ca,
            "-u",
            USER,
            "-P",
            PASSWORD,
        ])
        .args(["-t", "homeassistant/#", "-C", "1", "-W", "5"])
        .output()
        .expect("mosquitto_sub");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_rotated_certificate_is_served_without_a_restart_or_dropped_connections() {
    let tls = start();
    let broker = &tls.broker;
    let dir = broker.dir.path();
    let first = fingerprint(&dir.join("tls.crt"));
    assert_eq!(presented_cert(tls.mqtts, &dir.join("ca.crt")), first);

    {
        let ca = dir.join("ca.crt");
        let ca = ca.to_str().expect("utf-8").to_owned();
        // Connected and subscribed over TLS, for 6 s: across the rotation.
        let live = broker.paho_subscribed_on(
            tls.mqtts,
            4,
            true,
            &[
                "--tls-ca",
                &ca,
                "subscribe",
                "--filter",
                "tls/live",
                "--timeout",
                "6",
            ],
        );
        make_cert(dir, "second");
        std::fs::copy(dir.join("second.key"), dir.join("tls.key")).expect("key");
        std::fs::copy(dir.join("second.crt"), dir.join("tls.crt")).expect("crt");
        let second = fingerprint(&dir.join("tls.crt"));
        assert_ne!(first, second);
        let served = wait_for(Duration::from_secs(5), || {
            (presented_cert(tls.mqtts, &dir.join("second.crt")) == second).then_some(())
        });
        assert!(
            served.is_some(),
            "new certificate not served\n{}",
            broker.stderr()
        );
        assert_eq!(live.finish()["still_connected"], true);
    }
    assert!(broker.metric("hass_broker_tls_reloads", Some(("reason", "ok"))) >= 1.0);
}

#[test]
fn tls_listeners_without_certificates_are_a_config_error() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("broker.yaml");
    std::fs::write(
        &config,
        format!(
            "allow_anonymous: true\nlisteners:\n  mqtts: {}\n",
            free_addr()
        ),
    )
    .expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_hass-broker"))
        .arg("--check-config")
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("need tls.cert_file"));
}
