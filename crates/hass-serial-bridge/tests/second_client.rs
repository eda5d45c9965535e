//! Exactly one client per device: a second one is refused with nothing
//! written, or replaces the first, and bytes never cross between clients.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Bridge, Stick, read_exactly};

fn connect(addr: std::net::SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect to the bridge");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set a read timeout");
    stream
}

/// What the peer reads before the stream ends (EOF or reset).
fn read_to_end(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("expected the stream to end, got {e}"),
        }
    }
}

#[test]
fn reject_closes_the_second_client_unserved_and_keeps_the_first() {
    let stick = Stick::new();
    let (mut bridge, listen) = Bridge::one_device(&stick.device(), "    second_client: reject\n");
    bridge.wait_ready();
    let mut peer = stick.open_peer();

    let mut first = connect(listen);
    bridge.wait_metric("hass_serial_bridge_client_connected", "", 1.0);

    // The second client talks too: none of it may reach the stick.
    let mut second = connect(listen);
    let _ = second.write_all(b"SECOND-WRITES");
    bridge.wait_metric(
        "hass_serial_bridge_client_refusals_total",
        "reason=\"busy\"",
        1.0,
    );
    assert_eq!(
        read_to_end(&mut second),
        b"",
        "nothing is written to a refused client"
    );

    // Both directions still belong to the first client alone.
    first.write_all(b"from-first").unwrap();
    assert_eq!(read_exactly(&mut peer, 10), b"from-first");
    peer.write_all(b"to-first").unwrap();
    assert_eq!(read_exactly(&mut first, 8), b"to-first");
    assert_eq!(
        bridge.metric("hass_serial_bridge_serial_written_bytes_total", ""),
        10.0
    );
    assert_eq!(
        bridge.metric("hass_serial_bridge_client_replacements_total", ""),
        0.0
    );
    assert_eq!(
        bridge.metric("hass_serial_bridge_client_connects_total", ""),
        1.0
    );

    // Once the first leaves, a new client is served.
    drop(first);
    bridge.wait_metric("hass_serial_bridge_client_connected", "", 0.0);
    let mut third = connect(listen);
    bridge.wait_metric("hass_serial_bridge_client_connected", "", 1.0);
    third.write_all(b"third").unwrap();
    assert_eq!(read_exactly(&mut peer, 5), b"third");
}

#[test]
fn replace_closes_the_first_client_before_serving_the_second() {
    let stick = Stick::new();
    let (mut bridge, listen) = Bridge::one_device(&stick.device(), "");
    bridge.wait_ready();
    let mut peer = stick.open_peer();

    let mut first = connect(listen);
    bridge.wait_metric("hass_serial_bridge_client_connected", "", 1.0);
    first.write_all(b"first-1").unwrap();
    assert_eq!(read_exactly(&mut peer, 7), b"first-1");
    peer.write_all(b"to-first").unwrap();
    assert_eq!(read_exactly(&mut first, 8), b"to-first");

    let mut second = connect(listen);
    bridge.wait_metric("hass_serial_bridge_client_replacements_total", "", 1.0);
    // The first sees its stream end, with nothing meant for the second.
    peer.write_all(b"to-second").unwrap();
    assert_eq!(read_exactly(&mut second, 9), b"to-second");
    assert_eq!(
        read_to_end(&mut first),
        b"",
        "the replaced client got bytes"
    );
    // Whatever the first still writes goes nowhere (its socket is closed).
    let _ = first.write_all(b"LATE-FIRST");
    second.write_all(b"second-1").unwrap();
    assert_eq!(read_exactly(&mut peer, 8), b"second-1");
    assert_eq!(
        bridge.metric("hass_serial_bridge_serial_written_bytes_total", ""),
        15.0
    );
    assert_eq!(
        bridge.metric("hass_serial_bridge_client_connects_total", ""),
        2.0
    );
    assert_eq!(
        bridge.metric("hass_serial_bridge_client_connected", ""),
        1.0
    );
}
