//! Exactly one client per device: a second one is refused with nothing
//! written, or replaces the first, and bytes never cross between clients.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::Duration;

use common::{Bridge, PtyPair, connect, read_exactly};
use hass_test_support::wait_for;

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
    let stick = PtyPair::new();
    let (mut bridge, listen) = Bridge::one_device(&stick.device(), "    second_client: reject\n");
    bridge.wait_ready();
    let mut peer = stick.open_peer();

    let mut first = connect(listen, Duration::from_secs(10));
    bridge.wait_metric("hass_serial_bridge_client_connected", &[], 1.0);

    // The second client talks too: none of it may reach the stick.
    let mut second = connect(listen, Duration::from_secs(10));
    let _ = second.write_all(b"SECOND-WRITES");
    bridge.wait_metric(
        "hass_serial_bridge_client_refusals_total",
        &[("reason", "busy")],
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
        bridge.metric("hass_serial_bridge_serial_written_bytes_total", &[]),
        10.0
    );
    assert_eq!(
        bridge.metric("hass_serial_bridge_client_replacements_total", &[]),
        0.0
    );
    assert_eq!(
        bridge.metric("hass_serial_bridge_client_connects_total", &[]),
        1.0
    );

    // Once the first leaves, a new client is served.
    drop(first);
    bridge.wait_metric("hass_serial_bridge_client_connected", &[], 0.0);
    let mut third = connect(listen, Duration::from_secs(10));
    bridge.wait_metric("hass_serial_bridge_client_connected", &[], 1.0);
    third.write_all(b"third").unwrap();
    assert_eq!(read_exactly(&mut peer, 5), b"third");
}

#[test]
fn replace_closes_the_first_client_before_serving_the_second() {
    let stick = PtyPair::new();
    let (mut bridge, listen) = Bridge::one_device(&stick.device(), "");
    bridge.wait_ready();
    let mut peer = stick.open_peer();

    let mut first = connect(listen, Duration::from_secs(10));
    bridge.wait_metric("hass_serial_bridge_client_connected", &[], 1.0);
    first.write_all(b"first-1").unwrap();
    assert_eq!(read_exactly(&mut peer, 7), b"first-1");
    peer.write_all(b"to-first").unwrap();
    assert_eq!(read_exactly(&mut first, 8), b"to-first");

    let mut second = connect(listen, Duration::from_secs(10));
    bridge.wait_metric("hass_serial_bridge_client_replacements_total", &[], 1.0);
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
        bridge.metric("hass_serial_bridge_serial_written_bytes_total", &[]),
        15.0
    );
    assert_eq!(
        bridge.metric("hass_serial_bridge_client_connects_total", &[]),
        2.0
    );
    assert_eq!(
        bridge.metric("hass_serial_bridge_client_connected", &[]),
        1.0
    );
}

/// Frames whose every byte tells who sent it: the first client's are all
/// lowercase, the second's all uppercase, so even a torn frame is traced.
/// A request is `a` + six seq letters + `z`; the stick's reply to it is the
/// same with `r` first.
fn frame(first_client: bool, kind: u8, seq: u32) -> Vec<u8> {
    let mut bytes = vec![kind];
    bytes.extend(format!("{seq:06}").bytes().map(|digit| digit - b'0' + b'k'));
    bytes.push(b'z');
    if !first_client {
        bytes.make_ascii_uppercase();
    }
    bytes
}

fn frames(first_client: bool, kind: u8, count: u32) -> Vec<u8> {
    (0..count)
        .flat_map(|seq| frame(first_client, kind, seq))
        .collect()
}

/// The stick's side: records every byte and answers each whole request,
/// the first client's only while `answer_first` is set. Ends after
/// answering `second_total` requests of the second client.
struct StickPlayer {
    received: Arc<Mutex<Vec<u8>>>,
    answer_first: Arc<AtomicBool>,
    answered_first: Arc<AtomicUsize>,
    done: mpsc::Receiver<()>,
}

impl StickPlayer {
    fn start(peer: File, second_total: usize) -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let answer_first = Arc::new(AtomicBool::new(true));
        let answered_first = Arc::new(AtomicUsize::new(0));
        let (done_tx, done) = mpsc::channel();
        let (received_in, answer_in, answered_in) = (
            received.clone(),
            answer_first.clone(),
            answered_first.clone(),
        );
        thread::spawn(move || {
            let mut reader = peer.try_clone().expect("clone pty handle");
            let mut writer = peer;
            let mut request = Vec::new();
            let mut answered_second = 0;
            let mut buf = [0u8; 4096];
            while answered_second < second_total {
                let n = match reader.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                received_in
                    .lock()
                    .expect("lock")
                    .extend_from_slice(&buf[..n]);
                for &byte in &buf[..n] {
                    if byte.eq_ignore_ascii_case(&b'a') {
                        request = vec![byte];
                        continue;
                    }
                    let same_sender = request.first().is_some_and(|first| {
                        first.is_ascii_lowercase() == byte.is_ascii_lowercase()
                    });
                    if !same_sender {
                        // A torn frame: not a request, so no answer.
                        request.clear();
                        continue;
                    }
                    request.push(byte);
                    if request.len() < 8 {
                        continue;
                    }
                    let from_first = byte.is_ascii_lowercase();
                    let whole = request.last() == Some(if from_first { &b'z' } else { &b'Z' });
                    let answer = whole && (!from_first || answer_in.load(Ordering::SeqCst));
                    if answer {
                        let mut reply = request.clone();
                        reply[0] = if from_first { b'r' } else { b'R' };
                        if writer.write_all(&reply).is_err() {
                            return;
                        }
                        if from_first {
                            answered_in.fetch_add(1, Ordering::SeqCst);
                        } else {
                            answered_second += 1;
                        }
                    }
                    request.clear();
                }
            }
            let _ = done_tx.send(());
        });
        Self {
            received,
            answer_first,
            answered_first,
            done,
        }
    }
}

/// How a client's stream ended.
#[derive(Debug, PartialEq, Eq)]
enum StreamEnd {
    /// EOF or reset: the bridge closed it.
    Closed,
    /// Any other error, e.g. the read timeout: it was left open.
    Failed(std::io::ErrorKind),
}

/// Reads until the stream ends, counting bytes as they come.
fn read_all_counting(
    mut stream: TcpStream,
) -> (Arc<AtomicUsize>, thread::JoinHandle<(Vec<u8>, StreamEnd)>) {
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    let reader = thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return (got, StreamEnd::Closed),
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    counter.fetch_add(n, Ordering::SeqCst);
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return (got, StreamEnd::Closed);
                }
                Err(e) => return (got, StreamEnd::Failed(e.kind())),
            }
        }
    });
    (count, reader)
}

#[test]
fn a_client_writing_nonstop_is_cut_off_cleanly_when_replaced() {
    const SECOND_REQUESTS: u32 = 200;
    let stick = PtyPair::new();
    let (mut bridge, listen) = Bridge::one_device(&stick.device(), "");
    bridge.wait_ready();
    let player = StickPlayer::start(stick.open_peer(), SECOND_REQUESTS as usize);

    // The first client writes requests without pause until its socket fails.
    let first = connect(listen, Duration::from_secs(10));
    bridge.wait_metric("hass_serial_bridge_client_connected", &[], 1.0);
    let (first_got_bytes, first_reader) = read_all_counting(first.try_clone().unwrap());
    let stop_first = Arc::new(AtomicBool::new(false));
    let stop = stop_first.clone();
    let mut first_writer = first;
    let first_writes = thread::spawn(move || {
        let mut seq = 0;
        while !stop.load(Ordering::SeqCst)
            && first_writer.write_all(&frame(true, b'a', seq)).is_ok()
        {
            seq += 1;
            thread::sleep(Duration::from_micros(100));
        }
        seq
    });
    let answered = wait_for(Duration::from_secs(10), || {
        (first_got_bytes.load(Ordering::SeqCst) >= 50 * 8).then_some(())
    });
    assert!(answered.is_some(), "the first client got no replies");

    // A reply the stick sends after the switch goes to whoever is connected
    // then, which is the stick's timing, not the bridge's: so the stick stops
    // answering the first client, and its replies are all read, before the
    // second connects. The first keeps writing.
    player.answer_first.store(false, Ordering::SeqCst);
    let drained = wait_for(Duration::from_secs(10), || {
        let before = player.answered_first.load(Ordering::SeqCst);
        thread::sleep(Duration::from_millis(50));
        let after = player.answered_first.load(Ordering::SeqCst);
        (before == after && first_got_bytes.load(Ordering::SeqCst) == after * 8).then_some(after)
    });
    let answered_first = drained.expect("the first client's replies never all arrived");

    let mut second = connect(listen, Duration::from_secs(10));
    let mut second_writer = second.try_clone().unwrap();
    let second_writes = thread::spawn(move || {
        for seq in 0..SECOND_REQUESTS {
            second_writer
                .write_all(&frame(false, b'a', seq))
                .expect("the second client writes");
            thread::sleep(Duration::from_millis(1));
        }
    });
    let second_got = read_exactly(&mut second, SECOND_REQUESTS as usize * 8);
    second_writes.join().unwrap();
    player
        .done
        .recv_timeout(Duration::from_secs(10))
        .expect("the stick answered all of the second client's requests");
    stop_first.store(true, Ordering::SeqCst);
    let first_written = first_writes.join().unwrap();
    let (first_got, first_end) = first_reader.join().unwrap();

    // The stick: once the second client's bytes start, not one byte of the
    // first's follows, and the second's arrive whole and in order.
    let received = player.received.lock().unwrap().clone();
    let switch = received
        .iter()
        .position(u8::is_ascii_uppercase)
        .expect("the stick heard the second client");
    let late: Vec<u8> = received[switch..]
        .iter()
        .copied()
        .filter(u8::is_ascii_lowercase)
        .collect();
    assert!(
        late.is_empty(),
        "{} bytes of the replaced client reached the stick after the switch: {:?}",
        late.len(),
        String::from_utf8_lossy(&late[..late.len().min(64)])
    );
    let from_second: Vec<u8> = received
        .iter()
        .copied()
        .filter(u8::is_ascii_uppercase)
        .collect();
    assert_eq!(from_second, frames(false, b'a', SECOND_REQUESTS));
    let from_first = &received[..switch];
    assert!(
        frames(true, b'a', first_written + 1).starts_with(from_first),
        "the first client's bytes reached the stick out of order"
    );
    assert!(from_first.len() >= answered_first * 8);

    // Each client got replies to its own requests only, all of them.
    assert_eq!(
        first_end,
        StreamEnd::Closed,
        "the replaced client was left open"
    );
    assert_eq!(first_got, frames(true, b'r', answered_first as u32));
    assert_eq!(second_got, frames(false, b'r', SECOND_REQUESTS));

    assert_eq!(
        bridge.metric("hass_serial_bridge_client_replacements_total", &[]),
        1.0
    );
    assert_eq!(
        bridge.metric("hass_serial_bridge_client_connects_total", &[]),
        2.0
    );
    eprintln!(
        "first client: {first_written} requests written, {} bytes reached the stick, {answered_first} answered",
        from_first.len()
    );
}
