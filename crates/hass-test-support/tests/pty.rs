//! socat pty pairs carry bytes both ways untouched, like a serial line.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use hass_test_support::PtyPair;

/// Reads exactly `n` bytes from `path` on a thread, so a hang fails the test
/// instead of blocking it.
fn read_exactly(path: &Path, n: usize) -> mpsc::Receiver<Vec<u8>> {
    let mut file = OpenOptions::new()
        .read(true)
        .open(path)
        .expect("open pty end");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0; n];
        if file.read_exact(&mut buf).is_ok() {
            let _ = tx.send(buf);
        }
    });
    rx
}

#[test]
fn bytes_cross_in_both_directions_unchanged() {
    let pair = PtyPair::new();
    // Raw mode matters: a cooked pty would eat 0x03 and turn \r into \n.
    let frame: Vec<u8> = vec![0x1a, 0xc0, 0x38, 0xbc, 0x7e, 0x03, b'\r', b'\n', 0x00, 0xff];

    let from_device = read_exactly(&pair.peer(), frame.len());
    let mut device = OpenOptions::new().write(true).open(pair.device()).unwrap();
    device.write_all(&frame).unwrap();
    assert_eq!(
        from_device.recv_timeout(Duration::from_secs(5)).unwrap(),
        frame
    );

    let reply: Vec<u8> = vec![0x1a, 0xc1, 0x02, 0x0b, 0x0a, 0x52, 0x7e];
    let from_peer = read_exactly(&pair.device(), reply.len());
    let mut peer = OpenOptions::new().write(true).open(pair.peer()).unwrap();
    peer.write_all(&reply).unwrap();
    assert_eq!(
        from_peer.recv_timeout(Duration::from_secs(5)).unwrap(),
        reply
    );
}

#[test]
fn unplug_removes_the_device_path() {
    let mut pair = PtyPair::new();
    assert!(pair.device().exists());
    pair.unplug();
    assert!(
        hass_test_support::wait_for(Duration::from_secs(5), || (!pair.device().exists())
            .then_some(()))
        .is_some(),
        "device link still present after unplug"
    );
}
