//! DTR/RTS levels and a pin sequence on a device without modem-control lines
//! (a pty, as network-backed ttys are): the bridge warns, counts it, and
//! serves, instead of keeping the device not ready forever.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{Bridge, PtyPair, connect, read_exactly};
use hass_test_support::wait_for;

const PINS: &str = "    dtr: true
    rts: false
    pin_sequence:
      - { dtr: false, wait: 50ms }
      - { rts: true }
";

const WARNING: &str = "no modem-control lines";

#[test]
fn pin_settings_on_a_pty_warn_once_per_open_and_serve() {
    let mut stick = PtyPair::new();
    let (mut bridge, listen) = Bridge::one_device(&stick.device(), PINS);
    bridge.wait_ready();
    assert_eq!(
        bridge.metric("hass_serial_bridge_pins_skipped_total", &[]),
        1.0
    );

    let mut client = connect(listen, Duration::from_secs(10));
    let mut peer = stick.open_peer();
    bridge.wait_metric("hass_serial_bridge_client_connected", &[], 1.0);
    client.write_all(b"to-stick").unwrap();
    assert_eq!(read_exactly(&mut peer, 8), b"to-stick");
    peer.write_all(b"to-client").unwrap();
    assert_eq!(read_exactly(&mut client, 9), b"to-client");
    assert_eq!(
        bridge.process.stderr().matches(WARNING).count(),
        1,
        "one warning for one open:\n{}",
        bridge.process.stderr()
    );

    // Each open warns again: after a replug, an operator reading recent logs
    // still learns why the pins were not set.
    drop(client);
    drop(peer);
    stick.unplug();
    let not_ready = wait_for(Duration::from_secs(10), || {
        (bridge.readyz().status == 503).then_some(())
    });
    assert!(not_ready.is_some(), "still ready while unplugged");
    stick.plug();
    bridge.wait_ready();
    assert_eq!(
        bridge.metric("hass_serial_bridge_pins_skipped_total", &[]),
        2.0
    );
    let warned_twice = wait_for(Duration::from_secs(5), || {
        (bridge.process.stderr().matches(WARNING).count() == 2).then_some(())
    });
    assert!(warned_twice.is_some(), "{}", bridge.process.stderr());
}

#[test]
fn without_pin_settings_nothing_is_skipped_or_warned() {
    let stick = PtyPair::new();
    let (mut bridge, _) = Bridge::one_device(&stick.device(), "");
    bridge.wait_ready();
    assert_eq!(
        bridge.metric("hass_serial_bridge_pins_skipped_total", &[]),
        0.0
    );
    assert!(!bridge.process.stderr().contains(WARNING));
}
