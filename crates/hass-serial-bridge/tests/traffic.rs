//! A mebibyte of random bytes each way at once, through the clients
//! Home Assistant's Zigbee stacks use, arriving intact.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Bridge, PtyPair, connect, first_difference, play_stick, random_bytes, read_exactly};
use hass_test_support::{openmetrics, wait_for};

const MIB: usize = 1024 * 1024;

/// ZHA's path: pyserial's `socket://` URL handler.
const PYSERIAL_CLIENT: &str = r#"
import sys, threading, serial
url, infile, outfile, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
port = serial.serial_for_url(url, timeout=30)
data = open(infile, "rb").read()
writer = threading.Thread(target=port.write, args=(data,))
writer.start()
got = bytearray()
while len(got) < n:
    chunk = port.read(n - len(got))
    if not chunk:
        break
    got += chunk
writer.join()
open(outfile, "wb").write(got)
port.close()
"#;

/// Zigbee2MQTT's path: zigbee-herdsman's socket setup for `tcp://` ports.
const NODE_CLIENT: &str = r#"
const net = require("net");
const fs = require("fs");
// With `node -e`, arguments start at argv[1].
const [host, port, infile, outfile, n] = process.argv.slice(1);
const data = fs.readFileSync(infile);
const chunks = [];
let got = 0;
const socket = new net.Socket();
socket.setNoDelay(true);
socket.setKeepAlive(true, 15000);
socket.on("data", (chunk) => {
  chunks.push(chunk);
  got += chunk.length;
  if (got >= Number(n)) {
    fs.writeFileSync(outfile, Buffer.concat(chunks));
    socket.destroy();
  }
});
socket.on("error", (e) => { console.error(String(e)); process.exit(1); });
socket.on("close", () => { if (got < Number(n)) { console.error("closed after " + got); process.exit(1); } });
socket.connect(Number(port), host, () => socket.write(data));
"#;

/// Runs `client` (given the input and output files) against a bridge on a
/// fresh stick while the test plays the stick, and checks both directions.
fn exchange_a_mebibyte(client: impl FnOnce(SocketAddr, &str, &str) -> Command) {
    let stick = PtyPair::new();
    let (mut bridge, listen) = Bridge::one_device(&stick.device(), "");
    bridge.wait_ready();

    let dir = tempfile::tempdir().expect("temp dir");
    let to_stick = random_bytes(MIB, 1);
    let to_client = random_bytes(MIB, 2);
    let infile = dir.path().join("to_stick.bin");
    let outfile = dir.path().join("from_stick.bin");
    std::fs::write(&infile, &to_stick).expect("write the client's input");

    let mut command = client(
        listen,
        infile.to_str().expect("utf-8 temp path"),
        outfile.to_str().expect("utf-8 temp path"),
    );
    let mut child = command.spawn().expect("start the client");
    // Bytes the stick sends before a client is connected go nowhere.
    bridge.wait_metric("hass_serial_bridge_client_connected", &[], 1.0);
    let stick_got = play_stick(stick.open_peer(), to_client.clone(), MIB);

    let status = child.wait().expect("wait for the client");
    assert!(status.success(), "client failed: {status}");
    let client_got = std::fs::read(&outfile).expect("the client's output");
    let stick_got = stick_got
        .recv_timeout(Duration::from_secs(60))
        .expect("the stick received nothing in 60 s");
    assert!(
        client_got == to_client,
        "client got corrupted data: {}",
        first_difference(&client_got, &to_client)
    );
    assert!(
        stick_got == to_stick,
        "stick got corrupted data: {}",
        first_difference(&stick_got, &to_stick)
    );

    // Prometheus sees the same totals.
    let text = hass_test_support::http::get(bridge.admin, "/metrics")
        .expect("GET /metrics")
        .body;
    let families = openmetrics::parse(&text).expect("valid OpenMetrics");
    let value = |name: &str| {
        families
            .iter()
            .flat_map(|f| &f.samples)
            .find(|s| {
                s.name == name && s.labels.get("device").map(String::as_str) == Some("zigbee")
            })
            .map(|s| s.value)
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    assert_eq!(
        value("hass_serial_bridge_serial_written_bytes_total"),
        MIB as f64
    );
    assert_eq!(
        value("hass_serial_bridge_serial_read_bytes_total"),
        MIB as f64
    );
    assert_eq!(value("hass_serial_bridge_client_connects_total"), 1.0);
    assert_eq!(value("hass_serial_bridge_device_up"), 1.0);
}

#[test]
fn pyserial_socket_client_moves_a_mebibyte_each_way_intact() {
    exchange_a_mebibyte(|listen, infile, outfile| {
        let mut command = Command::new("python3");
        command.args([
            "-c",
            PYSERIAL_CLIENT,
            &format!("socket://{listen}"),
            infile,
            outfile,
            &MIB.to_string(),
        ]);
        command
    });
}

#[test]
fn node_client_set_up_like_zigbee_herdsman_moves_a_mebibyte_each_way_intact() {
    exchange_a_mebibyte(|listen, infile, outfile| {
        let mut command = Command::new("node");
        command.args([
            "-e",
            NODE_CLIENT,
            &listen.ip().to_string(),
            &listen.port().to_string(),
            infile,
            outfile,
            &MIB.to_string(),
        ]);
        command
    });
}

/// Slack for the metric's millisecond rounding.
const ROUNDING: f64 = 0.002;

fn last_byte_age(bridge: &Bridge) -> f64 {
    bridge.metric("hass_serial_bridge_last_byte_age_seconds", &[])
}

/// Waits until the bridge has noted a byte sent at `sent`: its age is no
/// older than the time since. Returns when that was seen, which is after
/// the bridge noted the byte.
fn wait_until_noted(bridge: &Bridge, sent: Instant, direction: &str) -> Instant {
    let noted = wait_for(Duration::from_secs(5), || {
        let age = last_byte_age(bridge);
        (age <= sent.elapsed().as_secs_f64() + ROUNDING).then(Instant::now)
    });
    noted.unwrap_or_else(|| {
        panic!(
            "last_byte_age_seconds is {} s, {:?} after a byte {direction}",
            last_byte_age(bridge),
            sent.elapsed()
        )
    })
}

#[test]
fn last_byte_age_restarts_with_each_byte_either_way_and_grows_while_idle() {
    let stick = PtyPair::new();
    let (mut bridge, listen) = Bridge::one_device(&stick.device(), "");
    bridge.wait_ready();
    let mut client = connect(listen, Duration::from_secs(10));
    let mut peer = stick.open_peer();
    bridge.wait_metric("hass_serial_bridge_client_connected", &[], 1.0);
    // Idle since start, so that a byte that is not noted shows as an old age.
    std::thread::sleep(Duration::from_millis(1500));

    let sent = Instant::now();
    client.write_all(b"ping").unwrap();
    assert_eq!(read_exactly(&mut peer, 4), b"ping");
    let noted = wait_until_noted(&bridge, sent, "to the stick");

    // Idle: the age grows with the clock, within what the clock allows.
    std::thread::sleep(Duration::from_millis(1500));
    let youngest = noted.elapsed().as_secs_f64() - ROUNDING;
    let age = last_byte_age(&bridge);
    let oldest = sent.elapsed().as_secs_f64() + ROUNDING;
    assert!(
        age >= 1.0 && youngest <= age && age <= oldest,
        "after 1.5 s idle: {age} s, expected {youngest}..{oldest}"
    );

    let sent = Instant::now();
    peer.write_all(b"pong").unwrap();
    assert_eq!(read_exactly(&mut client, 4), b"pong");
    wait_until_noted(&bridge, sent, "to the client");
}
