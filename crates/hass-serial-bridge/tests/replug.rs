//! Unplugging and replugging the stick under traffic: the client is closed,
//! the device is not ready and refuses clients while absent, and it serves
//! again within a second of coming back, without a restart.

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{Bridge, PtyPair, connect, read_exactly};
use hass_test_support::wait_for;

/// The replug budget from the issue: serving again ≤ 1 s after the stick returns.
const REOPEN_BUDGET: Duration = Duration::from_secs(1);

#[test]
fn unplug_and_replug_under_traffic_three_times() {
    let mut stick = PtyPair::new();
    let (mut bridge, listen) = Bridge::one_device(&stick.device(), "");
    bridge.wait_ready();
    let mut reopen_times = Vec::new();

    for cycle in 1..=3u8 {
        let mut client = connect(listen, Duration::from_secs(10));
        let mut peer = stick.open_peer();
        bridge.wait_metric("hass_serial_bridge_client_connected", &[], 1.0);
        // Data flows both ways before the unplug.
        let frame = [b'F', cycle, 1, 2, 3];
        client.write_all(&frame).unwrap();
        assert_eq!(read_exactly(&mut peer, 5), frame);
        peer.write_all(&frame).unwrap();
        assert_eq!(read_exactly(&mut client, 5), frame);

        // Traffic keeps going both ways while the stick is pulled.
        let stop = Arc::new(AtomicBool::new(false));
        let mut client_writer = client.try_clone().unwrap();
        let client_stop = stop.clone();
        let client_traffic = thread::spawn(move || {
            while !client_stop.load(Ordering::Relaxed) {
                if client_writer.write_all(&[0x55; 64]).is_err() {
                    break;
                }
                thread::sleep(Duration::from_millis(2));
            }
        });
        let mut stick_writer = peer.try_clone().unwrap();
        let stick_stop = stop.clone();
        let stick_traffic = thread::spawn(move || {
            while !stick_stop.load(Ordering::Relaxed) {
                if stick_writer.write_all(&[0xAA; 64]).is_err() {
                    break;
                }
                thread::sleep(Duration::from_millis(2));
            }
        });
        thread::sleep(Duration::from_millis(100));
        stick.unplug();
        drop(peer);

        // The client's stream ends; it does not hang.
        let mut sink = [0u8; 4096];
        let ended = wait_for(Duration::from_secs(10), || match client.read(&mut sink) {
            Ok(0) | Err(_) => Some(()),
            Ok(_) => None,
        });
        assert!(
            ended.is_some(),
            "cycle {cycle}: client not closed after unplug"
        );
        stop.store(true, Ordering::Relaxed);
        client_traffic.join().unwrap();
        stick_traffic.join().unwrap();

        // Absent: not ready, and a new client is closed unserved.
        let not_ready = wait_for(Duration::from_secs(10), || {
            (bridge.readyz().status == 503).then_some(())
        });
        assert!(
            not_ready.is_some(),
            "cycle {cycle}: still ready while unplugged"
        );
        assert!(
            bridge.readyz().body.contains("FAIL device:zigbee"),
            "{}",
            bridge.readyz().body
        );
        let refused_before = bridge.metric(
            "hass_serial_bridge_client_refusals_total",
            &[("reason", "device_absent")],
        );
        let mut early = connect(listen, Duration::from_secs(10));
        let mut buf = [0u8; 16];
        assert!(
            matches!(early.read(&mut buf), Ok(0) | Err(_)),
            "cycle {cycle}: a client was served while the stick was away"
        );
        bridge.wait_metric(
            "hass_serial_bridge_client_refusals_total",
            &[("reason", "device_absent")],
            refused_before + 1.0,
        );

        // Back: the bridge serves again within the budget.
        stick.plug();
        let plugged = Instant::now();
        let ready = wait_for(Duration::from_secs(10), || {
            (bridge.readyz().status == 200).then(|| plugged.elapsed())
        })
        .unwrap_or_else(|| panic!("cycle {cycle}: not ready 10 s after replug"));
        reopen_times.push(ready);
        assert!(
            ready <= REOPEN_BUDGET,
            "cycle {cycle}: ready {ready:?} after replug, budget {REOPEN_BUDGET:?}"
        );
    }

    // A client reconnecting after the last replug is served both ways.
    let mut client = connect(listen, Duration::from_secs(10));
    let mut peer = stick.open_peer();
    bridge.wait_metric("hass_serial_bridge_client_connected", &[], 1.0);
    client.write_all(b"after").unwrap();
    assert_eq!(read_exactly(&mut peer, 5), b"after");
    peer.write_all(b"again").unwrap();
    assert_eq!(read_exactly(&mut client, 5), b"again");
    assert_eq!(
        bridge.metric("hass_serial_bridge_device_reopens_total", &[]),
        3.0
    );
    assert_eq!(bridge.metric("hass_serial_bridge_device_up", &[]), 1.0);
    eprintln!("ready after replug: {reopen_times:?}");
}
