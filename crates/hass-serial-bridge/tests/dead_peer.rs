//! A client that vanishes without a FIN or RST (its network blackholed) is
//! found dead within the configured keepalive/user-timeout, which frees the
//! stick for the next client even under `second_client: reject`.
//!
//! Runs the bridge and the client in two network namespaces made by the test
//! and joined by a veth pair; the blackhole is the client's link going down.
//! Needs root (as CI runs) and iproute2.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, BRIDGE_IP, NetnsPair, PtyPair, read_exactly};
use hass_test_support::{SpawnedBinary, wait_for};

const PORT: u16 = 6638;

/// Connects, sends `hello`, prints what it reads back, then holds the socket.
const CLIENT: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
s.sendall(b"hello")
print(s.recv(2).decode(), flush=True)
sys.stdin.read()
"#;

fn python_client(pair: &NetnsPair, ns: &str) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = pair
        .exec(ns, "python3")
        .args(["-c", CLIENT, BRIDGE_IP, &PORT.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the python client");
    let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    (child, stdout)
}

/// Blackholes a served client and returns how long the bridge took to drop it.
/// `keepalive` is the config's `keepalive:` line, empty for the defaults.
fn detection_time(tag: &str, keepalive: &str, with_traffic: bool) -> Duration {
    let pair = NetnsPair::new(tag);
    let stick = PtyPair::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("bridge.yaml");
    std::fs::write(
        &config,
        format!(
            "devices:
  - name: zigbee
    path: {}
    listen: {BRIDGE_IP}:{PORT}
    second_client: reject
{keepalive}
",
            stick.device().display()
        ),
    )
    .expect("write config");
    let mut command = pair.exec(&pair.bridge_ns, BIN);
    command
        .arg("--config")
        .arg(&config)
        .args(["--admin-listen", "127.0.0.1:9182"]);
    let bridge = SpawnedBinary::spawn(command).expect("spawn the bridge");
    let open = wait_for(Duration::from_secs(10), || {
        bridge.stderr().contains("device open").then_some(())
    });
    assert!(open.is_some(), "bridge not serving:\n{}", bridge.stderr());

    let mut peer = stick.open_peer();
    let (mut client, mut client_out) = python_client(&pair, &pair.client_ns);
    assert_eq!(read_exactly(&mut peer, 5), b"hello");
    peer.write_all(b"hi").expect("stick writes");
    let mut line = String::new();
    client_out.read_line(&mut line).expect("client output");
    assert_eq!(line.trim(), "hi", "the client is served");

    pair.blackhole_client();
    let blackholed = Instant::now();
    if with_traffic {
        // The stick keeps talking; those bytes are never acknowledged.
        peer.write_all(&[0x7e; 32]).expect("stick writes");
    }
    let detected = wait_for(Duration::from_secs(60), || {
        bridge
            .stderr()
            .contains("client gone")
            .then(|| blackholed.elapsed())
    })
    .unwrap_or_else(|| panic!("dead client never dropped:\n{}", bridge.stderr()));

    // The stick is free again: a new client is served, not refused.
    let (mut next, mut next_out) = python_client(&pair, &pair.bridge_ns);
    assert_eq!(read_exactly(&mut peer, 5), b"hello");
    peer.write_all(b"ok").expect("stick writes");
    let mut line = String::new();
    next_out.read_line(&mut line).expect("client output");
    assert_eq!(line.trim(), "ok");
    let _ = client.kill();
    let _ = next.kill();
    let _ = client.wait();
    let _ = next.wait();
    detected
}

/// Configured: keepalive 1 s + 2 × 1 s, user timeout 3 s. Budget 3 s plus
/// a margin for retransmission backoff and a loaded machine; the kernel's
/// defaults would take minutes (retransmissions) or hours (keepalive).
const BUDGET: Duration = Duration::from_secs(8);
const FAST: &str = "keepalive: { idle: 1s, interval: 1s, count: 2, user_timeout: 3s }";

#[test]
fn a_silent_dead_client_is_dropped_by_keepalive() {
    let took = detection_time("k", FAST, false);
    eprintln!("idle dead client dropped after {took:?}");
    assert!(took <= BUDGET, "took {took:?}, budget {BUDGET:?}");
}

#[test]
fn a_dead_client_with_unacknowledged_data_is_dropped_by_user_timeout() {
    let took = detection_time("u", FAST, true);
    eprintln!("dead client with pending data dropped after {took:?}");
    assert!(took <= BUDGET, "took {took:?}, budget {BUDGET:?}");
}

/// The issue's promise with no keepalive settings at all: ≤ 30 s (the
/// defaults add up to 25 s).
#[test]
fn with_default_settings_a_dead_client_is_dropped_within_30_seconds() {
    let took = detection_time("d", "", false);
    eprintln!("idle dead client dropped after {took:?} with default keepalive");
    assert!(took <= Duration::from_secs(30), "took {took:?}");
}
