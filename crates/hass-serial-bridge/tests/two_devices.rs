//! One process serving two sticks, each on its own port: readiness names the
//! absent one, traffic on both at once arrives intact, and each device's
//! metrics count only its own bytes and clients.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::{Bridge, PtyPair, connect, first_difference, play_stick, random_bytes, read_exactly};
use hass_test_support::{free_addr, wait_for};

/// Plays a TCP client: writes `send` and reads `expect` bytes at the same time.
fn play_client(stream: TcpStream, send: Vec<u8>, expect: usize) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    let mut writer = stream.try_clone().expect("clone the socket");
    thread::spawn(move || {
        // A failed write shows as missing bytes at the stick.
        let _ = writer.write_all(&send);
    });
    let mut reader = stream;
    thread::spawn(move || {
        let _ = tx.send(read_exactly(&mut reader, expect));
    });
    rx
}

/// Bytes one device's stick and client send each other; sizes differ per
/// device so that swapped metric labels would show.
struct Exchange {
    to_stick: Vec<u8>,
    to_client: Vec<u8>,
}

#[test]
fn two_devices_in_one_process_serve_at_once_with_their_own_readiness_and_metrics() {
    let zigbee_stick = PtyPair::new();
    let mut zwave_stick = PtyPair::unplugged();
    let (zigbee_listen, zwave_listen) = (free_addr(), free_addr());
    let mut bridge = Bridge::start(&format!(
        "devices:
  - name: zigbee
    path: {}
    listen: {zigbee_listen}
  - name: zwave
    path: {}
    listen: {zwave_listen}
",
        zigbee_stick.device().display(),
        zwave_stick.device().display(),
    ));

    // One absent device keeps the process not ready, and /readyz says which.
    let absent = format!(
        "FAIL device:zwave: {}: not present",
        zwave_stick.device().display()
    );
    let body = wait_for(Duration::from_secs(10), || {
        let reply = hass_test_support::http::get(bridge.admin, "/readyz").ok()?;
        (reply.status == 503 && reply.body.contains("ok device:zigbee")).then_some(reply.body)
    })
    .expect("/readyz 503 with zigbee open");
    assert!(body.contains(&absent), "{body}");

    // The absent device refuses its clients; the other is unaffected.
    let mut early = connect(zwave_listen, Duration::from_secs(30));
    let mut buf = [0u8; 8];
    assert!(matches!(early.read(&mut buf), Ok(0) | Err(_)));
    bridge.wait_metric_of(
        "zwave",
        "hass_serial_bridge_client_refusals_total",
        &[("reason", "device_absent")],
        1.0,
    );
    assert_eq!(
        bridge.metric(
            "hass_serial_bridge_client_refusals_total",
            &[("reason", "device_absent")]
        ),
        0.0
    );
    assert_eq!(
        bridge.device_metric("zwave", "hass_serial_bridge_device_up", &[]),
        0.0
    );
    assert_eq!(bridge.metric("hass_serial_bridge_device_up", &[]), 1.0);

    zwave_stick.plug();
    bridge.wait_ready();
    let body = bridge.readyz().body;
    assert!(
        body.contains("ok device:zigbee") && body.contains("ok device:zwave"),
        "{body}"
    );

    // Both clients connect, then all four streams run at the same time.
    let zigbee_client = connect(zigbee_listen, Duration::from_secs(30));
    let zwave_client = connect(zwave_listen, Duration::from_secs(30));
    bridge.wait_metric("hass_serial_bridge_client_connected", &[], 1.0);
    bridge.wait_metric_of("zwave", "hass_serial_bridge_client_connected", &[], 1.0);
    let zigbee = Exchange {
        to_stick: random_bytes(300_000, 11),
        to_client: random_bytes(200_000, 12),
    };
    let zwave = Exchange {
        to_stick: random_bytes(170_000, 21),
        to_client: random_bytes(90_000, 22),
    };
    let zigbee_stick_got = play_stick(
        zigbee_stick.open_peer(),
        zigbee.to_client.clone(),
        zigbee.to_stick.len(),
    );
    let zwave_stick_got = play_stick(
        zwave_stick.open_peer(),
        zwave.to_client.clone(),
        zwave.to_stick.len(),
    );
    let zigbee_client_got = play_client(
        zigbee_client,
        zigbee.to_stick.clone(),
        zigbee.to_client.len(),
    );
    let zwave_client_got = play_client(zwave_client, zwave.to_stick.clone(), zwave.to_client.len());
    let wait = Duration::from_secs(60);
    for (what, got, sent) in [
        ("zigbee stick", zigbee_stick_got, &zigbee.to_stick),
        ("zigbee client", zigbee_client_got, &zigbee.to_client),
        ("zwave stick", zwave_stick_got, &zwave.to_stick),
        ("zwave client", zwave_client_got, &zwave.to_client),
    ] {
        let got = got
            .recv_timeout(wait)
            .unwrap_or_else(|_| panic!("{what}: nothing received in {wait:?}"));
        assert!(
            &got == sent,
            "{what}: bytes differ: {}",
            first_difference(&got, sent)
        );
    }

    for (device, exchange) in [("zigbee", &zigbee), ("zwave", &zwave)] {
        let value = |name: &str| bridge.device_metric(device, name, &[]);
        assert_eq!(
            value("hass_serial_bridge_serial_written_bytes_total"),
            exchange.to_stick.len() as f64,
            "{device}"
        );
        assert_eq!(
            value("hass_serial_bridge_serial_read_bytes_total"),
            exchange.to_client.len() as f64,
            "{device}"
        );
        assert_eq!(
            value("hass_serial_bridge_client_connects_total"),
            1.0,
            "{device}"
        );
        assert_eq!(value("hass_serial_bridge_device_up"), 1.0, "{device}");
        assert_eq!(
            value("hass_serial_bridge_device_reopens_total"),
            0.0,
            "{device}"
        );
    }
}
