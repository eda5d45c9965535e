//! Bad input and abrupt clients: the offending connection is closed, the
//! broker stays up for everyone else, and a metric counts what happened.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{PASSWORD, RawClient, TestBroker, USER, connect_packet, remaining_length};

/// Sends `bytes` and returns what the broker answered before closing, or
/// panics if it keeps the connection open.
fn send_and_expect_close(broker: &TestBroker, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(broker.mqtt)
        .unwrap_or_else(|e| panic!("connect: {e}\n{}", broker.stderr()));
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let _ = stream.write_all(bytes);
    let mut answer = Vec::new();
    let started = Instant::now();
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return answer,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return answer,
            Err(e) => panic!("connection not closed after {:?}: {e}", started.elapsed()),
        }
    }
}

fn still_serving(broker: &TestBroker) {
    let got = broker.paho(4, true, &["connect"]);
    assert_eq!(
        got["rc"],
        0,
        "broker stopped serving: {got}\n{}",
        broker.stderr()
    );
}

#[test]
fn random_bytes_close_the_connection_and_are_counted() {
    let broker = TestBroker::start("");
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..50 {
        let bytes: Vec<u8> = (0..64)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        send_and_expect_close(&broker, &bytes);
    }
    still_serving(&broker);
    assert!(broker.metric("hass_broker_malformed_packets", None) >= 40.0);
}

#[test]
fn garbage_after_a_good_connect_is_malformed() {
    let broker = TestBroker::start("");
    for version in [4u8, 5] {
        let mut bytes = connect_packet(b"MQTT", version, "fuzzed");
        // A PUBLISH with QoS 3 (both QoS bits set) is malformed.
        bytes.extend_from_slice(&[0x36, 0x05, 0x00, 0x01, b't', 0x00, 0x01]);
        let answer = send_and_expect_close(&broker, &bytes);
        assert_eq!(
            answer.first(),
            Some(&0x20),
            "a CONNACK first: {answer:02x?}"
        );
        if version == 4 {
            assert_eq!(
                answer,
                [0x20, 0x02, 0x00, 0x00],
                "CONNACK, then closed without a word"
            );
        } else {
            // CONNACK, then DISCONNECT 0x81 Malformed Packet, with its reason in words.
            let disconnect = &answer[usize::from(answer[1]) + 2..];
            assert_eq!(disconnect[0], 0xe0, "{answer:02x?}");
            assert_eq!(
                usize::from(disconnect[1]),
                disconnect.len() - 2,
                "{answer:02x?}"
            );
            assert_eq!(disconnect[2], 0x81, "{answer:02x?}");
        }
    }
    still_serving(&broker);
    assert_eq!(
        broker.metric(
            "hass_broker_malformed_packets",
            Some(("reason", "malformed"))
        ),
        2.0
    );
}

#[test]
fn a_remaining_length_over_the_limit_is_refused_without_reading_it() {
    let broker = TestBroker::start("limits:\n  max_packet_size: 4096\n");
    let mut bytes = connect_packet(b"MQTT", 4, "big");
    // PUBLISH announcing 100 MiB; only the header is sent.
    bytes.push(0x30);
    bytes.extend(remaining_length(100 * 1024 * 1024));
    send_and_expect_close(&broker, &bytes);
    still_serving(&broker);
    assert_eq!(
        broker.metric(
            "hass_broker_malformed_packets",
            Some(("reason", "too_large"))
        ),
        1.0
    );
}

#[test]
fn truncated_packets_do_not_wedge_the_broker() {
    let broker = TestBroker::start("");
    let full = connect_packet(b"MQTT", 4, "truncated");
    let mut stream = TcpStream::connect(broker.mqtt)
        .unwrap_or_else(|e| panic!("connect: {e}\n{}", broker.stderr()));
    stream.write_all(&full[..full.len() / 2]).expect("write");
    // The half-sent CONNECT holds nothing up for other clients.
    still_serving(&broker);
    drop(stream);
    still_serving(&broker);
}

#[test]
fn mqtt_3_1_gets_connack_unacceptable_protocol_version() {
    let broker = TestBroker::start("");
    let answer = send_and_expect_close(&broker, &connect_packet(b"MQIsdp", 3, "old"));
    assert_eq!(answer, [0x20, 0x02, 0x00, 0x01]);
    assert_eq!(
        broker.metric(
            "hass_broker_malformed_packets",
            Some(("reason", "unsupported_protocol"))
        ),
        1.0
    );
}

#[test]
fn a_subscribe_to_an_invalid_filter_closes_the_connection() {
    let broker = TestBroker::start("");
    let mut bytes = connect_packet(b"MQTT", 4, "badfilter");
    let filter = b"a/#/b";
    let mut body = vec![0x00, 0x07];
    body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    body.extend_from_slice(filter);
    body.push(0);
    bytes.push(0x82);
    bytes.extend(remaining_length(body.len()));
    bytes.extend(body);
    let answer = send_and_expect_close(&broker, &bytes);
    assert_eq!(answer.len(), 4, "a CONNACK and no SUBACK: {answer:02x?}");
    still_serving(&broker);
    assert_eq!(
        broker.metric(
            "hass_broker_malformed_packets",
            Some(("reason", "invalid_filter"))
        ),
        1.0
    );
}

#[test]
fn a_vanished_client_has_its_will_published() {
    let broker = TestBroker::start("");
    {
        let watcher = broker.paho_subscribed(
            5,
            true,
            &[
                "subscribe",
                "--filter",
                "zigbee2mqtt/bridge/state",
                "--qos",
                "1",
                "--expect",
                "1",
                "--timeout",
                "10",
                "--show",
            ],
        );
        broker.paho(
            4,
            true,
            &[
                "--client-id",
                "zigbee2mqtt",
                "connect",
                "--will-topic",
                "zigbee2mqtt/bridge/state",
                "--will-payload",
                "offline",
                "--abort",
            ],
        );
        let got = watcher.finish();
        assert_eq!(got["count"], 1, "{got}");
        assert_eq!(got["messages"][0]["payload"], "offline");
    }
    assert_eq!(broker.metric("hass_broker_wills_published", None), 1.0);
}

#[test]
fn a_clean_disconnect_discards_the_will() {
    let broker = TestBroker::start("");
    broker.paho(
        4,
        true,
        &[
            "connect",
            "--will-topic",
            "zigbee2mqtt/bridge/state",
            "--will-retain",
        ],
    );
    let got = broker.paho(
        4,
        true,
        &["subscribe", "--filter", "zigbee2mqtt/#", "--timeout", "0.5"],
    );
    assert_eq!(got["count"], 0, "{got}");
    assert_eq!(broker.metric("hass_broker_wills_published", None), 0.0);
}

#[test]
fn a_flood_towards_a_stalled_subscriber_stays_within_the_memory_budget() {
    // 200 MiB of QoS 0 publishes towards a subscriber that never reads.
    let broker =
        TestBroker::start("limits:\n  memory_budget: 16777216\n  max_queued_messages: 500\n");
    let mut stalled = TcpStream::connect(broker.mqtt).expect("connect");
    stalled
        .write_all(&connect_packet(b"MQTT", 4, "stalled"))
        .expect("connect");
    stalled
        .write_all(&common::subscribe_packet("flood/#", 0))
        .expect("subscribe");
    common::await_packet(&stalled, 9);

    let payload = vec![0x5a; 10 * 1024];
    let count = 20_000;
    let mut publisher = TcpStream::connect(broker.mqtt).expect("connect");
    publisher
        .write_all(&connect_packet(b"MQTT", 4, "flooder"))
        .expect("connect");
    let packet = common::publish_packet("flood/data", &payload);
    let mut batch = Vec::with_capacity(packet.len() * 100);
    for _ in 0..100 {
        batch.extend_from_slice(&packet);
    }
    for _ in 0..count / 100 {
        publisher.write_all(&batch).expect("publish");
    }
    let received = hass_test_support::wait_for(Duration::from_secs(60), || {
        (broker.metric("hass_broker_messages_received", None) >= f64::from(count)).then_some(())
    });
    assert!(
        received.is_some(),
        "the broker did not take the flood\n{}",
        broker.stderr()
    );

    let pid = broker.process.running().expect("running").pid();
    let peak = common::peak_rss(pid);
    eprintln!(
        "peak RSS under a 200 MiB flood: {} MiB",
        peak / (1024 * 1024)
    );
    // Budget 16 MiB queued + socket buffers + a baseline of a few MiB.
    assert!(
        peak < 96 * 1024 * 1024,
        "peak RSS {} MiB",
        peak / (1024 * 1024)
    );
    assert!(broker.metric("hass_broker_dropped_queue_full", None) > 0.0);
    still_serving(&broker);
    drop(stalled);
}

#[test]
fn a_stalled_client_over_the_memory_budget_does_not_starve_the_others() {
    // A client that subscribed and then stopped reading holds a growing
    // backlog until the global budget (1 MiB here) is full; Home Assistant,
    // reading normally, must still get every message.
    let broker = TestBroker::start("limits:\n  memory_budget: 1048576\n");
    let mut stalled = TcpStream::connect(broker.mqtt).expect("connect");
    stalled
        .write_all(&connect_packet(b"MQTT", 4, "stalled"))
        .expect("connect");
    stalled
        .write_all(&common::subscribe_packet("load/#", 1))
        .expect("subscribe");
    let count = 3000;
    {
        let ha = broker.paho_subscribed(
            4,
            true,
            &[
                "--client-id",
                "homeassistant",
                "subscribe",
                "--filter",
                "load/#",
                "--qos",
                "1",
                "--expect",
                &count.to_string(),
                "--timeout",
                "60",
            ],
        );
        let sent = broker.paho(
            4,
            true,
            &[
                "publish-many",
                "--topic",
                "load/sensor",
                "--count",
                &count.to_string(),
                "--qos",
                "1",
                "--payload-size",
                "1000",
            ],
        );
        assert_eq!(sent["acked"], count);
        let ha = ha.finish();
        assert_eq!(ha["count"], count, "{ha}\n{}", broker.stderr());
    }
    // The stalled client's backlog paid for it.
    assert!(broker.metric("hass_broker_dropped_memory_budget", None) > 1000.0);
    assert!(broker.metric("hass_broker_queued_bytes", None) <= 1048576.0);
    still_serving(&broker);
    drop(stalled);
}

#[test]
fn a_slow_consumer_is_disconnected_when_its_queue_fills_with_qos1() {
    let broker =
        TestBroker::start("limits:\n  max_queued_messages: 50\n  slow_consumer: disconnect\n");
    // An MQTT 5 subscriber that never acknowledges and never reads.
    let mut slow = TcpStream::connect(broker.mqtt).expect("connect");
    slow.write_all(&connect_packet(b"MQTT", 5, "slowpoke"))
        .expect("connect");
    let mut body = vec![0x00, 0x01, 0x00];
    body.extend_from_slice(&(b"load/#".len() as u16).to_be_bytes());
    body.extend_from_slice(b"load/#");
    body.push(1);
    slow.write_all(&common::frame(0x82, body))
        .expect("subscribe");
    common::await_packet(&slow, 9);
    let sent = broker.paho(
        4,
        true,
        &[
            "publish-many",
            "--topic",
            "load/x",
            "--count",
            "200",
            "--qos",
            "1",
        ],
    );
    assert_eq!(
        sent["acked"], 200,
        "publishers are never held up by a slow consumer"
    );
    let disconnected = hass_test_support::wait_for(Duration::from_secs(5), || {
        (broker.metric("hass_broker_slow_consumer_disconnects", None) >= 1.0).then_some(())
    });
    assert!(disconnected.is_some(), "{}", broker.stderr());
    // Its socket was closed, after a DISCONNECT 0x97 (Quota exceeded).
    slow.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut all = Vec::new();
    let _ = slow.read_to_end(&mut all);
    let tail = all.windows(3).any(|w| w[0] == 0xe0 && w[2] == 0x97);
    assert!(tail, "no DISCONNECT 0x97 in {} bytes", all.len());
    still_serving(&broker);
}

#[test]
fn by_default_a_slow_consumer_only_loses_messages() {
    let broker = TestBroker::start("limits:\n  max_queued_messages: 50\n");
    let mut slow = TcpStream::connect(broker.mqtt).expect("connect");
    slow.write_all(&connect_packet(b"MQTT", 4, "slowpoke"))
        .expect("connect");
    slow.write_all(&common::subscribe_packet("load/#", 1))
        .expect("subscribe");
    common::await_packet(&slow, 9);
    broker.paho(
        4,
        true,
        &[
            "publish-many",
            "--topic",
            "load/x",
            "--count",
            "200",
            "--qos",
            "1",
        ],
    );
    assert!(broker.metric("hass_broker_dropped_queue_full", None) >= 100.0);
    assert_eq!(
        broker.metric("hass_broker_slow_consumer_disconnects", None),
        0.0
    );
    assert_eq!(
        broker.metric("hass_broker_clients_connected", None),
        1.0,
        "still connected"
    );
}

#[test]
fn a_session_taken_over_is_told_so_before_it_is_closed() {
    let broker = TestBroker::start("");
    let mut first = TcpStream::connect(broker.mqtt).expect("connect");
    first
        .write_all(&connect_packet(b"MQTT", 5, "zigbee2mqtt"))
        .expect("connect");
    common::await_packet(&first, 2);
    let mut second = TcpStream::connect(broker.mqtt).expect("connect");
    second
        .write_all(&connect_packet(b"MQTT", 5, "zigbee2mqtt"))
        .expect("connect");
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut all = Vec::new();
    let _ = first.read_to_end(&mut all);
    assert!(
        all.windows(3).any(|w| w[0] == 0xe0 && w[2] == 0x8e),
        "no DISCONNECT 0x8E (session taken over) in {all:02x?}"
    );
}

/// Every reason to close reaches a parked connection (no task, its socket
/// in the parking lot) as it does a running one: Keep Alive (0x8D), a
/// takeover (0x8E) and shutdown (0x8B), each with the client known to be
/// parked first.
#[test]
fn a_parked_connection_is_told_why_it_is_closed() {
    let mut broker = TestBroker::start("");
    let parked = |broker: &TestBroker, n: f64| {
        let seen = broker.await_metric("hass_broker_clients_parked", None, |v| v == n);
        assert!(seen, "{n} parked");
    };
    let told = |mut stream: TcpStream, code: u8| {
        stream
            .set_read_timeout(Some(Duration::from_secs(8)))
            .expect("timeout");
        let mut all = Vec::new();
        let _ = stream.read_to_end(&mut all);
        assert!(
            all.windows(3).any(|w| w[0] == 0xe0 && w[2] == code),
            "no DISCONNECT {code:#x} in {all:02x?}"
        );
    };
    let taken = connected_with_keepalive(&broker, "taken", 0);
    let stays = connected_with_keepalive(&broker, "stays", 0);
    let silent = connected_with_keepalive(&broker, "silent", 1);
    parked(&broker, 3.0);
    told(silent, 0x8d);
    let _again = connected_with_keepalive(&broker, "taken", 0);
    told(taken, 0x8e);
    parked(&broker, 2.0);
    assert_eq!(broker.stop(), Some(0));
    told(stays, 0x8b);
}

#[test]
fn sigterm_tells_mqtt5_clients_the_server_is_shutting_down() {
    let mut broker = TestBroker::start("");
    let mut client = TcpStream::connect(broker.mqtt).expect("connect");
    client
        .write_all(&connect_packet(b"MQTT", 5, "ha"))
        .expect("connect");
    common::await_packet(&client, 2);
    assert_eq!(broker.stop(), Some(0));
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut all = Vec::new();
    let _ = client.read_to_end(&mut all);
    assert!(
        all.windows(3).any(|w| w[0] == 0xe0 && w[2] == 0x8b),
        "no DISCONNECT 0x8B (server shutting down) in {all:02x?}"
    );
}

/// CONNECT at protocol `level` with a Keep Alive of `seconds`: the stream
/// and the CONNACK's body (flags, reason code, MQTT 5 properties).
fn connect_with_keepalive(
    broker: &TestBroker,
    level: u8,
    client_id: &str,
    seconds: u16,
) -> (TcpStream, Vec<u8>) {
    let mut packet = connect_packet(b"MQTT", level, client_id);
    // Fixed header (2), protocol name (6), level, flags, then Keep Alive.
    packet[10..12].copy_from_slice(&seconds.to_be_bytes());
    let mut stream = TcpStream::connect(broker.mqtt).expect("connect");
    stream.write_all(&packet).expect("CONNECT");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut header = [0u8; 2];
    stream.read_exact(&mut header).expect("CONNACK header");
    assert_eq!(header[0], 0x20, "expected CONNACK");
    let mut body = vec![0u8; usize::from(header[1])];
    stream.read_exact(&mut body).expect("CONNACK");
    (stream, body)
}

/// MQTT 5 CONNECT with a Keep Alive of `seconds`, accepted.
fn connected_with_keepalive(broker: &TestBroker, client_id: &str, seconds: u8) -> TcpStream {
    let (stream, connack) = connect_with_keepalive(broker, 5, client_id, u16::from(seconds));
    assert_eq!(connack[1], 0, "CONNACK refused");
    stream
}

/// The two-byte property `id` of an MQTT 5 CONNACK body, walking the
/// property list (ids from MQTT 5 §3.2.2.3).
fn connack_u16_property(connack: &[u8], id: u8) -> Option<u16> {
    let (mut at, end) = (3, 3 + usize::from(connack[2]));
    while at < end {
        let kind = connack[at];
        at += 1;
        let string =
            |at: usize| 2 + usize::from(u16::from_be_bytes([connack[at], connack[at + 1]]));
        let len = match kind {
            0x24 | 0x25 | 0x28 | 0x29 | 0x2a => 1,
            0x13 | 0x21 | 0x22 => 2,
            0x11 | 0x27 => 4,
            0x12 | 0x15 | 0x16 | 0x1a | 0x1c | 0x1f => string(at),
            0x26 => string(at) + string(at + string(at)),
            other => panic!("unknown CONNACK property {other:#x}"),
        };
        if kind == id {
            return Some(u16::from_be_bytes([connack[at], connack[at + 1]]));
        }
        at += len;
    }
    None
}

#[test]
fn max_keepalive_holds_mqtt5_clients_to_it_and_refuses_311_clients_over_it() {
    let broker = TestBroker::start("limits:\n  max_keepalive: 1\n");
    // MQTT 5 asking for 120 s: told 1 s (Server Keep Alive) and held to it.
    let started = Instant::now();
    let (mut asked_long, connack) = connect_with_keepalive(&broker, 5, "asked-long", 120);
    assert_eq!(connack[1], 0);
    assert_eq!(connack_u16_property(&connack, 0x13), Some(1));
    asked_long
        .set_read_timeout(Some(Duration::from_secs(8)))
        .expect("timeout");
    let mut all = Vec::new();
    let _ = asked_long.read_to_end(&mut all);
    let closed_after = started.elapsed();
    assert!(
        closed_after >= Duration::from_millis(1400) && closed_after <= Duration::from_millis(3500),
        "closed after {closed_after:?}: not after 1.5 s of the 1 s told"
    );
    assert!(
        all.windows(3).any(|w| w[0] == 0xe0 && w[2] == 0x8d),
        "no DISCONNECT 0x8D (keep alive timeout) in {all:02x?}"
    );
    let (_none, connack) = connect_with_keepalive(&broker, 5, "asked-none", 0);
    assert_eq!(connack_u16_property(&connack, 0x13), Some(1));
    let (_within, connack) = connect_with_keepalive(&broker, 5, "asked-within", 1);
    assert_eq!(connack_u16_property(&connack, 0x13), None);

    // MQTT 3.1.1 cannot be told: over the maximum is refused (rc 2), as
    // Mosquitto does; none is what it asked for.
    let (mut over, connack) = connect_with_keepalive(&broker, 4, "v311-over", 120);
    assert_eq!(connack, [0, 2]);
    assert_eq!(over.read(&mut [0u8; 8]).expect("closed"), 0);
    let (_zero, connack) = connect_with_keepalive(&broker, 4, "v311-none", 0);
    assert_eq!(connack, [0, 0]);
    assert_eq!(
        broker.metric(
            "hass_broker_auth_failures",
            Some(("reason", "keepalive_over_max"))
        ),
        1.0
    );
}

#[test]
fn keepalive_closes_a_silent_client_after_one_and_a_half_periods_only() {
    let broker = TestBroker::start("");
    let mut silent = connected_with_keepalive(&broker, "silent", 1);
    let mut pinging = connected_with_keepalive(&broker, "pinging", 1);
    let started = Instant::now();
    let watcher = std::thread::spawn(move || {
        silent
            .set_read_timeout(Some(Duration::from_secs(8)))
            .expect("timeout");
        let mut all = Vec::new();
        let _ = silent.read_to_end(&mut all);
        (started.elapsed(), all)
    });
    // A client that sends something within each period stays, however long.
    while started.elapsed() < Duration::from_secs(4) {
        pinging.write_all(&[0xc0, 0x00]).expect("PINGREQ");
        std::thread::sleep(Duration::from_millis(700));
    }
    let (closed_after, all) = watcher.join().expect("watcher");
    assert!(
        closed_after >= Duration::from_millis(1400) && closed_after <= Duration::from_millis(3500),
        "silent client closed after {closed_after:?}, not after 1.5 s (+ up to a sweep)"
    );
    assert!(
        all.windows(3).any(|w| w[0] == 0xe0 && w[2] == 0x8d),
        "no DISCONNECT 0x8D (keep alive timeout) in {all:02x?}"
    );
    pinging.write_all(&[0xc0, 0x00]).expect("PINGREQ");
    let mut answers = Vec::new();
    pinging
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    while let Ok(n) = pinging.read(&mut buf) {
        if n == 0 {
            break;
        }
        answers.extend_from_slice(&buf[..n]);
    }
    assert!(
        answers.len() >= 12 && answers.chunks(2).all(|p| p == [0xd0, 0x00]),
        "the pinging client lost its connection: {answers:02x?}"
    );
}

/// Before a client has logged in it is owed kilobytes, not megabytes: a
/// CONNECT over `max_connect_size` (64 KiB) is refused on its fixed header,
/// and handshakes that stall after 60 KiB are capped per source address (32),
/// so 160 of them from five addresses leave the broker's memory where it was,
/// a 33rd from a full address waits unread until a slot frees, and the next
/// honest client logs in. (Unfixed: each could hold 8 MiB until
/// `connect_timeout`.)
#[test]
fn unauthenticated_peers_are_capped_in_bytes_and_in_number() {
    let broker = TestBroker::start("");
    let mut header = vec![0x10];
    header.extend(remaining_length(1 << 20));
    header.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4]);
    assert!(send_and_expect_close(&broker, &header).is_empty());
    assert_eq!(
        broker.metric("hass_broker_malformed_packets", None),
        1.0,
        "{}",
        broker.stderr()
    );

    let pid = broker.process.running().expect("running").pid();
    let before = common::rss(pid);
    // Most of a 64 000-byte CONNECT: the protocol name, then a client id
    // that never ends.
    let mut stall = vec![0x10];
    stall.extend(remaining_length(64_000));
    stall.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 0b10, 0, 60, 0xff, 0xff]);
    stall.resize(60 * 1024, b'x');
    let mut stalled = Vec::new();
    for host in 1..=5u8 {
        let from = std::net::Ipv4Addr::new(127, 0, 0, host);
        for _ in 0..32 {
            let mut stream = common::connect_from(from, broker.mqtt);
            stream.write_all(&stall).expect("send");
            stalled.push(stream);
        }
    }
    // One more from a full address waits for a slot, unread: its CONNECT
    // goes unanswered while the 32 stall ("nothing happens" for 1 s).
    let mut extra = common::connect_from(std::net::Ipv4Addr::new(127, 0, 0, 1), broker.mqtt);
    extra
        .write_all(&common::connect_packet(b"MQTT", 4, "waiting"))
        .expect("send");
    extra
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let mut buf = [0u8; 4];
    assert!(
        matches!(extra.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the 33rd handshake from one address was served or closed"
    );
    // Everything sent has been read by now: an honest client from a sixth
    // address gets its CONNACK behind all of them.
    let honest = common::connect_from(std::net::Ipv4Addr::new(127, 0, 0, 6), broker.mqtt);
    let (rc, mut honest) = RawClient::over(honest, 4, "honest", Some((USER, PASSWORD)), None);
    assert_eq!(rc, 0);
    assert!(honest.ping());
    let grown = common::rss(pid).saturating_sub(before);
    eprintln!(
        "RSS grew {} KiB with 160 stalled 60 KiB handshakes",
        grown / 1024
    );
    assert!(grown < 48 << 20, "RSS grew {} MiB", grown >> 20);
    // The first address's stalled handshakes go: the waiting one is served.
    stalled.drain(..32);
    extra
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    extra
        .read_exact(&mut buf)
        .expect("CONNACK once a slot came free");
    assert_eq!(buf, [0x20, 2, 0, 0]);
    assert_eq!(
        broker.metric(
            "hass_broker_connections_refused",
            Some(("reason", "max_handshakes_per_address"))
        ),
        0.0
    );
    drop(stalled);
}

/// Devices behind one NAT address (a Kubernetes Service without
/// `externalTrafficPolicy: Local`) reconnect all at once when the broker
/// restarts: 200 CONNECTs sent together from one address, over six times
/// the per-address handshake cap, all get in under the default limits.
#[test]
fn a_burst_of_clients_from_one_address_all_get_in() {
    let broker = TestBroker::start("");
    let mut streams: Vec<_> = (0..200)
        .map(|i| {
            let mut stream = std::net::TcpStream::connect(broker.mqtt).expect("connect");
            stream
                .write_all(&common::connect_packet(b"MQTT", 4, &format!("device-{i}")))
                .expect("send");
            stream
        })
        .collect();
    for (i, stream) in streams.iter_mut().enumerate() {
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut connack = [0u8; 4];
        stream
            .read_exact(&mut connack)
            .unwrap_or_else(|e| panic!("device-{i}: no CONNACK: {e}"));
        assert_eq!(connack, [0x20, 2, 0, 0], "device-{i}");
    }
    assert_eq!(
        broker.metric("hass_broker_connections_refused", None),
        0.0,
        "{}",
        broker.stderr()
    );
}

/// A `$7$` password file line for `user` at `iterations`, as
/// `mosquitto_passwd` writes it (it cannot be told the iteration count).
fn pbkdf2_line(user: &str, password: &str, iterations: u32) -> String {
    use base64::Engine;
    let salt = b"0123456789abcdef";
    let mut hash = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password.as_bytes(), salt, iterations, &mut hash);
    let b64 = base64::engine::general_purpose::STANDARD;
    format!(
        "{user}:$7${iterations}${}${}\n",
        b64.encode(salt),
        b64.encode(hash)
    )
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Wrong passwords for a user with an expensive hash, from four addresses at
/// once, do not stall the clients already logged in (hashing is off the
/// runtime, a few at a time, and a guessing address is made to wait), and an
/// unknown user costs what a known one does, so timing tells no names.
#[test]
fn a_wrong_password_flood_does_not_stall_other_clients() {
    const ITERATIONS: u32 = 10_000;
    let broker = TestBroker::start("policy_reload_interval: 100ms\n");
    let passwd = broker.dir.path().join("passwd");
    let mut text = std::fs::read_to_string(&passwd).expect("passwd");
    text.push_str(&pbkdf2_line("slow", "right", ITERATIONS));
    std::fs::write(&passwd, text).expect("passwd");
    let loaded = hass_test_support::wait_for(Duration::from_secs(10), || {
        (broker.metric("hass_broker_policy_reloads", Some(("reason", "ok"))) >= 1.0).then_some(())
    });
    assert!(loaded.is_some(), "{}", broker.stderr());

    // What one check costs, from addresses of their own (no waits).
    let attempt = |host: u8, user: &str| {
        let stream = common::connect_from(std::net::Ipv4Addr::new(127, 0, 1, host), broker.mqtt);
        let started = Instant::now();
        let (rc, _) = RawClient::over(stream, 4, "guess", Some((user, "wrong")), None);
        assert_eq!(rc, 5);
        started.elapsed()
    };
    let known = median((0..3).map(|i| attempt(1 + i, "slow")).collect());
    let unknown = median((0..3).map(|i| attempt(11 + i, "nobody")).collect());
    eprintln!("wrong password: known user {known:?}, unknown user {unknown:?}");
    assert!(
        unknown * 2 > known && unknown < known * 2,
        "a username oracle: known {known:?}, unknown {unknown:?}"
    );

    let (rc, mut live) = RawClient::connect(broker.mqtt, 4, "ha", Some((USER, PASSWORD)), None);
    assert_eq!(rc, 0);
    // Five wrong passwords from each of four addresses: the fifth waits.
    let flooders_left = std::sync::atomic::AtomicUsize::new(4);
    let pings = std::thread::scope(|s| {
        for host in 0..4u8 {
            let flooders_left = &flooders_left;
            s.spawn(move || {
                let from = std::net::Ipv4Addr::new(127, 0, 2, host + 1);
                for _ in 0..5 {
                    let stream = common::connect_from(from, broker.mqtt);
                    let (rc, _) = RawClient::over(stream, 4, "guess", Some(("slow", "x")), None);
                    assert_eq!(rc, 5);
                }
                flooders_left.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            });
        }
        let mut pings = Vec::new();
        while flooders_left.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            let started = Instant::now();
            assert!(live.ping());
            pings.push(started.elapsed());
            // Spread the pings over the flood.
            std::thread::sleep(Duration::from_millis(20));
        }
        pings
    });
    let mut sorted = pings.clone();
    sorted.sort();
    let (p50, p99) = (sorted[sorted.len() / 2], sorted[sorted.len() * 99 / 100]);
    eprintln!(
        "PINGREQ under the flood ({} pings): p50 {p50:?}, p99 {p99:?}; one check {known:?}",
        sorted.len()
    );
    assert!(
        p50 * 4 < known,
        "other clients wait on password hashing: ping p50 {p50:?}, one check {known:?}"
    );
    assert!(broker.metric("hass_broker_auth_delayed", None) >= 1.0);
}

/// Four logged-in clients that never read, each sending 500 SUBSCRIBEs to a
/// filter matching 5 000 retained 4 KiB messages (20 MiB each: more than
/// loopback socket buffers hold): a repeated SUBSCRIBE
/// replaces the replays still waiting instead of adding to them, a client
/// asking for more than `max_replay_messages` is cut off, a client whose
/// socket stops draining is closed after `write_timeout`, and memory stays
/// bounded. Home Assistant's own start, 10 000 retained discovery topics to
/// one new subscriber, still arrives complete. (Unfixed: 9.9 M queued
/// deliveries, 471 MiB RSS.)
#[test]
fn retained_replays_to_clients_that_never_read_stay_bounded() {
    let broker = TestBroker::start("limits:\n  max_replay_messages: 12000\n  write_timeout: 3s\n");
    let published = broker.paho(
        4,
        true,
        &[
            "publish-many",
            "--topic",
            "zigbee2mqtt/device{i}",
            "--payload-size",
            "4096",
            "--count",
            "5000",
            "--retain",
        ],
    );
    assert_eq!(published["acked"], 5000, "{published}");
    let pid = broker.process.running().expect("running").pid();
    let before = common::rss(pid);

    let mut sleepers = Vec::new();
    for n in 0..4 {
        let (rc, mut client) = RawClient::connect(
            broker.mqtt,
            4,
            &format!("sleeper{n}"),
            Some((USER, PASSWORD)),
            None,
        );
        assert_eq!(rc, 0);
        // 500 SUBSCRIBEs at QoS 0 (replays not held back by in-flight
        // slots) in one write, none of the answers read.
        let mut burst = Vec::new();
        for id in 1..=500u16 {
            let mut body = id.to_be_bytes().to_vec();
            body.extend_from_slice(&13u16.to_be_bytes());
            body.extend_from_slice(b"zigbee2mqtt/#");
            body.push(0);
            burst.extend(common::frame(0x82, body));
        }
        client.send(&burst);
        sleepers.push(client);
    }
    // One more asks for more than its cap: the same filter under three
    // MQTT 5 subscription identifiers, 3 x 5 000 > 12 000.
    let (rc, mut greedy) =
        RawClient::connect(broker.mqtt, 5, "greedy", Some((USER, PASSWORD)), None);
    assert_eq!(rc, 0);
    let mut burst = Vec::new();
    for id in 1..=3u8 {
        let mut body = vec![0, id, 2, 0x0b, id];
        body.extend_from_slice(&13u16.to_be_bytes());
        body.extend_from_slice(b"zigbee2mqtt/#");
        body.push(0);
        burst.extend(common::frame(0x82, body));
    }
    greedy.send(&burst);
    greedy
        .stream
        .shutdown(std::net::Shutdown::Read)
        .expect("stop reading");

    // The sleepers are closed once their sockets stop draining.
    let closed = hass_test_support::wait_for(Duration::from_secs(30), || {
        (broker.metric("hass_broker_write_timeouts", None) >= 4.0).then_some(())
    });
    assert!(
        closed.is_some(),
        "{}",
        hass_test_support::http::get(broker.admin, "/metrics")
            .expect("metrics")
            .body
    );
    assert!(broker.metric("hass_broker_slow_consumer_disconnects", None) >= 1.0);
    // 4 x 499 repeated SUBSCRIBEs' waiting replays were replaced, never added.
    let dropped = broker.metric("hass_broker_replays_dropped", None);
    assert!(dropped >= 1_000_000.0, "{dropped} replays dropped");
    common::assert_peak_rss_grew_less_than(pid, before, 128);
    drop(sleepers);

    // Home Assistant's restart: 10 000 retained discovery topics, all of them.
    let published = broker.paho(
        4,
        true,
        &[
            "publish-many",
            "--topic",
            "homeassistant/sensor/n{i}/config",
            "--count",
            "10000",
            "--retain",
        ],
    );
    assert_eq!(published["acked"], 10000, "{published}");
    let got = broker.paho(
        4,
        true,
        &[
            "subscribe",
            "--filter",
            "homeassistant/#",
            "--qos",
            "1",
            "--expect",
            "10000",
            "--timeout",
            "60",
        ],
    );
    assert_eq!(got["count"], 10000, "{got}");
    assert_eq!(got["retained"], 10000, "{got}");
}

/// HTTP peers that never finish a request: on the WebSocket listener one is
/// closed after `connect_timeout`; on the admin port one address holds at
/// most 16 connections, so kubelet's probes from another still get answers.
/// (Unfixed: every such connection was held forever, and 1 100 of them ran
/// the broker out of descriptors.)
#[test]
fn idle_http_peers_are_timed_out_and_capped_per_address() {
    let broker = TestBroker::start("limits:\n  connect_timeout: 1s\n");
    let mut silent = std::net::TcpStream::connect(broker.ws).expect("connect");
    silent
        .write_all(b"GET /mqtt HTTP/1.1\r\nHost: x\r\n")
        .expect("half a request");
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut rest = Vec::new();
    let closed = silent.read_to_end(&mut rest);
    assert!(
        closed.is_ok(),
        "a WebSocket request never finished was not closed: {closed:?}"
    );

    let hogs: Vec<_> = (0..40)
        .map(|_| common::connect_from(std::net::Ipv4Addr::new(127, 0, 0, 1), broker.admin))
        .collect();
    let mut probe = common::connect_from(std::net::Ipv4Addr::new(127, 0, 0, 2), broker.admin);
    probe
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("probe");
    let mut answer = String::new();
    probe.read_to_string(&mut answer).expect("answer");
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    let refused = common::connect_from(std::net::Ipv4Addr::new(127, 0, 0, 3), broker.admin);
    let mut metrics = String::new();
    let mut scrape = refused;
    scrape
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("scrape");
    scrape.read_to_string(&mut metrics).expect("metrics");
    assert!(
        metrics.contains("hass_broker_admin_connections_refused_total 24"),
        "{metrics}"
    );
    drop(hogs);
}

/// A client id is the client's to choose, newlines and terminal escapes
/// included: logged, it comes out escaped, so it cannot forge a log line.
#[test]
fn a_client_id_cannot_forge_a_log_line() {
    let broker = TestBroker::start("");
    let forged =
        "evil\n2026-12-06T00:00:00.000000Z  INFO hass_broker: user admin logged in\u{1b}[2J";
    let (rc, _) = RawClient::connect(broker.mqtt, 4, forged, Some((USER, "wrong")), None);
    assert_eq!(rc, 5);
    let logged = hass_test_support::wait_for(Duration::from_secs(5), || {
        let stderr = broker.stderr();
        stderr.contains("refused CONNECT").then_some(stderr)
    })
    .expect("the refusal is logged");
    assert!(
        !logged
            .lines()
            .any(|l| l.starts_with("2026-12-06T00:00:00.000000Z")),
        "{logged}"
    );
    assert!(!logged.contains('\u{1b}'), "{logged}");
    assert!(logged.contains(r"evil\n2026-12-06"), "{logged}");
}

/// A CONNECT with the test credentials, `props` as its property section
/// (MQTT 5; `None`: MQTT 3.1.1), `client_id`, and a will on `will_topic`.
fn connect_with(props: Option<&[u8]>, client_id: &[u8], will_topic: Option<&str>) -> Vec<u8> {
    fn field(body: &mut Vec<u8>, bytes: &[u8]) {
        body.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        body.extend_from_slice(bytes);
    }
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T'];
    body.push(if props.is_some() { 5 } else { 4 });
    body.push(0b1100_0010 | if will_topic.is_some() { 0b100 } else { 0 });
    body.extend_from_slice(&[0, 60]);
    if let Some(props) = props {
        body.push(props.len() as u8);
        body.extend_from_slice(props);
    }
    field(&mut body, client_id);
    if let Some(topic) = will_topic {
        if props.is_some() {
            body.push(0); // no will properties
        }
        field(&mut body, topic.as_bytes());
        field(&mut body, b"offline");
    }
    field(&mut body, USER.as_bytes());
    field(&mut body, PASSWORD.as_bytes());
    common::frame(0x10, body)
}

/// What rumqttd's readers let through and a conformant broker closes the
/// connection for: each case, what the broker answers before closing, and
/// the `hass_broker_malformed_packets` reason it is counted under.
#[test]
fn protocol_violations_close_the_connection() {
    let broker = TestBroker::start("");
    let v4 = || connect_with(None, b"c", None);
    let v5 = || connect_with(Some(&[]), b"c", None);
    let then = |mut first: Vec<u8>, next: &[u8]| {
        first.extend_from_slice(next);
        first
    };
    let cases: Vec<(&str, Vec<u8>, &[u8], &str)> = vec![
        (
            "Receive Maximum twice",
            connect_with(Some(&[0x21, 0, 10, 0x21, 0, 20]), b"c", None),
            &[],
            "bad_property",
        ),
        (
            "Receive Maximum 0",
            connect_with(Some(&[0x21, 0, 0]), b"c", None),
            &[0x20, 3, 0, 0x82, 0],
            "receive_maximum_zero",
        ),
        (
            "a NUL in the client id",
            connect_with(None, b"a\0b", None),
            &[0x20, 2, 0, 2],
            "client_id_nul",
        ),
        (
            "a will topic with a wildcard, MQTT 5",
            connect_with(Some(&[]), b"c", Some("status/#")),
            &[0x20, 3, 0, 0x90, 0],
            "will_topic_invalid",
        ),
        (
            "a will topic with a wildcard, MQTT 3.1.1",
            connect_with(None, b"c", Some("status/+")),
            &[],
            "will_topic_invalid",
        ),
        (
            "SUBSCRIBE with flags 0000",
            then(v4(), &[0x80, 6, 0, 1, 0, 1, b't', 0]),
            &[0x20, 2, 0, 0],
            "bad_flags",
        ),
        (
            "PUBREL with flags 0000",
            then(v4(), &[0x60, 2, 0, 1]),
            &[0x20, 2, 0, 0],
            "bad_flags",
        ),
        (
            "a Subscription Identifier in a client's PUBLISH",
            then(v5(), &[0x32, 8, 0, 1, b't', 0, 1, 2, 0x0b, 1]),
            &[0x20],
            "bad_property",
        ),
    ];
    for (case, bytes, answer_starts, reason) in &cases {
        let before = broker.metric("hass_broker_malformed_packets", Some(("reason", reason)));
        let answer = send_and_expect_close(&broker, bytes);
        assert!(
            answer.starts_with(answer_starts) && (!answer_starts.is_empty() || answer.is_empty()),
            "{case}: answered {answer:02x?}"
        );
        // Whatever followed CONNACK is a DISCONNECT, never an acknowledgement.
        let rest = answer.get(2 + usize::from(*answer.get(1).unwrap_or(&0))..);
        assert!(
            rest.is_none_or(|r| r.is_empty() || r[0] == 0xe0),
            "{case}: answered {answer:02x?}"
        );
        assert_eq!(
            broker.metric("hass_broker_malformed_packets", Some(("reason", reason))),
            before + 1.0,
            "{case}"
        );
    }
    still_serving(&broker);
}

/// Eclipse Paho's interoperability `test_flow_control2`: an MQTT 5 client
/// told a Receive Maximum that publishes more QoS 2 messages without
/// releasing them is disconnected with 0x93, after the broker acknowledged
/// as many as it allowed.
#[test]
fn a_client_over_its_receive_maximum_is_disconnected() {
    let broker = TestBroker::start("limits:\n  receive_maximum: 5\n");
    let (mut stream, connack) = connect_with_keepalive(&broker, 5, "flooder", 60);
    assert_eq!(connack[1], 0);
    assert_eq!(
        connack_u16_property(&connack, 0x21),
        Some(5),
        "Receive Maximum"
    );
    let mut flood = Vec::new();
    for pkid in 1..=6u16 {
        // PUBLISH QoS 2, topic "flood", packet id, no properties, payload "x".
        let mut body = vec![0, 5];
        body.extend_from_slice(b"flood");
        body.extend_from_slice(&pkid.to_be_bytes());
        body.extend_from_slice(&[0, b'x']);
        flood.extend(common::frame(0x34, body));
    }
    stream.write_all(&flood).expect("PUBLISHes");
    let mut all = Vec::new();
    let _ = stream.read_to_end(&mut all);
    let pubrecs = all.windows(2).filter(|w| *w == [0x50, 0x02]).count();
    assert_eq!(pubrecs, 5, "{all:02x?}");
    assert!(
        all.windows(3).any(|w| w[0] == 0xe0 && w[2] == 0x93),
        "no DISCONNECT 0x93 (receive maximum exceeded) in {all:02x?}"
    );
}

/// A publisher's burst makes way for the subscriber it outruns: a publish
/// that makes a subscriber that could read now shed a QoS 0 message ends
/// the publisher's turn, and the subscriber drains before the rest of the
/// burst is handled. With a one-message queue and ten publishes in one TCP
/// write, the subscriber gets every second one; handled in one turn, the
/// burst left it only the last.
#[test]
fn a_burst_makes_way_for_the_subscriber_it_outruns() {
    let broker = TestBroker::start("limits:\n  max_queued_messages: 1\n");
    let login = Some((USER, PASSWORD));
    let (code, mut subscriber) = RawClient::connect(broker.mqtt, 4, "reader", login, None);
    assert_eq!(code, 0);
    subscriber
        .stream
        .write_all(&common::subscribe_packet("burst/#", 0))
        .expect("subscribe");
    common::await_packet(&subscriber.stream, 9);
    let (code, mut publisher) = RawClient::connect(broker.mqtt, 4, "burster", login, None);
    assert_eq!(code, 0);
    let burst: Vec<u8> = (1..=10)
        .flat_map(|i| common::publish_packet("burst/x", i.to_string().as_bytes()))
        .collect();
    publisher.stream.write_all(&burst).expect("burst");

    // The last is never shed; what came before it shows how many were.
    let mut got = Vec::new();
    while got.last().map(String::as_str) != Some("10") {
        let (kind, body) = subscriber.read_packet().expect("a PUBLISH");
        assert_eq!(kind >> 4, 3, "PUBLISH");
        let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
        got.push(String::from_utf8_lossy(&body[2 + topic_len..]).into_owned());
    }
    assert_eq!(got, ["2", "4", "6", "8", "10"]);
    assert_eq!(broker.metric("hass_broker_dropped_queue_full", None), 5.0);
}

/// The deepest topic a client can send (32 767 levels in a 65 535-byte
/// name) reaches a `#` subscriber. A filter deeper than Mosquitto's 201
/// levels is a malformed SUBSCRIBE, as Mosquitto 2.0.11 takes it (checked
/// by hand: 201 granted, 202 disconnected); one at the limit is granted.
/// The broker lives on after the clients leave.
#[test]
fn the_deepest_topic_a_client_can_send_is_routed() {
    let broker = TestBroker::start("");
    let login = Some((USER, PASSWORD));
    let (code, mut too_deep) = RawClient::connect(broker.mqtt, 4, "too-deep", login, None);
    assert_eq!(code, 0);
    too_deep
        .stream
        .write_all(&common::subscribe_packet(&vec!["a"; 202].join("/"), 0))
        .expect("subscribe");
    assert_eq!(too_deep.read_packet(), None, "closed without a SUBACK");

    let (code, mut subscriber) = RawClient::connect(broker.mqtt, 4, "deep-reader", login, None);
    assert_eq!(code, 0);
    for filter in [vec!["a"; 201].join("/"), "#".to_string()] {
        subscriber
            .stream
            .write_all(&common::subscribe_packet(&filter, 0))
            .expect("subscribe");
        let (kind, body) = subscriber.read_packet().expect("SUBACK");
        assert_eq!((kind >> 4, body.last()), (9, Some(&0)), "granted");
    }
    let (code, mut publisher) = RawClient::connect(broker.mqtt, 4, "deep-writer", login, None);
    assert_eq!(code, 0);
    let deep = vec!["a"; 32_767].join("/");
    publisher
        .stream
        .write_all(&common::publish_packet(&deep, b"down here"))
        .expect("publish");
    let (kind, body) = subscriber.read_packet().expect("the PUBLISH");
    assert_eq!(kind >> 4, 3, "PUBLISH");
    assert!(body.ends_with(b"down here"));
    drop((subscriber, publisher));
    still_serving(&broker);
}

/// What a client's subscriptions make the broker hold is bounded in bytes,
/// whatever their count or text: each level of a filter is a node of the
/// routing tree, and 8 MiB of distinct 201-level filters in SUBSCRIBEs held
/// 1.9 GB before (measured by hand). Over its client's budget or the
/// broker's, a new filter is refused (0x80; MQTT 5: 0x97 Quota exceeded),
/// counted, and the client's other subscriptions stand; what a session
/// holds is released when it ends and counted again after a restart.
#[test]
fn subscriptions_are_bounded_in_bytes_per_client_and_in_all() {
    let mut broker = TestBroker::start(
        "limits:\n  subscription_budget_per_client: 4194304\n  subscription_budget: 10485760\n",
    );
    let login = Some((USER, PASSWORD));
    // Home Assistant's own filters, in a persistent session: all granted.
    let mut ha = vec!["--client-id", "ha", "subscribe", "--persistent"];
    let filters: Vec<String> = (0..200)
        .map(|i| format!("zigbee2mqtt/device{i}/availability"))
        .collect();
    for filter in &filters {
        ha.extend(["--filter", filter]);
    }
    let got = broker.paho(4, true, &ha);
    assert_eq!(got["granted"], serde_json::json!(vec![0; 200]), "{got}");
    let held_by_ha = broker.metric("hass_broker_subscriptions_bytes", None);
    assert!(held_by_ha > 0.0);

    let pid = broker.process.running().expect("running").pid();
    let before = common::rss(pid);
    let deep = |client: &str, i: usize| format!("{client}-{i}/{}", vec!["a"; 200].join("/"));
    let mut flooders = Vec::new();
    let mut granted = Vec::new();
    for (name, level, refused_code) in [("one", 4, 0x80), ("two", 5, 0x97), ("three", 5, 0x97)] {
        let (code, mut client) = RawClient::connect(broker.mqtt, level, name, login, None);
        assert_eq!(code, 0);
        let mut codes = Vec::new();
        for packet in 0..2 {
            let filters: Vec<String> = (0..1000).map(|i| deep(name, packet * 1000 + i)).collect();
            codes.extend(client.subscribe_all(&filters, 0));
        }
        // A prefix granted, the rest refused, and the client still served.
        let held = codes.iter().take_while(|c| **c == 0).count();
        assert!(held > 0, "{name}: none granted");
        assert!(
            codes[held..].iter().all(|c| *c == refused_code),
            "{name}: {:?}",
            &codes[held..held + 3]
        );
        assert!(client.ping(), "{name} disconnected");
        granted.push(held);
        flooders.push(client);
    }
    // The third client met the broker's budget before its own.
    assert!(granted[2] < granted[0], "{granted:?}");
    let refused = |reason| {
        broker.metric(
            "hass_broker_subscriptions_refused",
            Some(("reason", reason)),
        )
    };
    assert_eq!(
        refused("client_budget") + refused("broker_budget"),
        (6000 - granted.iter().sum::<usize>()) as f64
    );
    assert!(refused("broker_budget") > 0.0);
    eprintln!("granted {granted:?}");
    // 10 MiB of budget, as the budget counts it (an upper bound).
    common::assert_peak_rss_grew_less_than(pid, before, 24);

    // A client that goes gives its share back to the others.
    drop(flooders.remove(0));
    let freed = hass_test_support::wait_for(Duration::from_secs(10), || {
        (broker.metric("hass_broker_subscriptions_bytes", None) < 7.0 * 1048576.0).then_some(())
    });
    assert!(freed.is_some(), "{}", broker.stderr());
    assert_eq!(flooders[1].subscribe(&deep("three", 9999), 0), [0]);
    drop(flooders);
    let gone = hass_test_support::wait_for(Duration::from_secs(10), || {
        (broker.metric("hass_broker_subscriptions_bytes", None) == held_by_ha).then_some(())
    });
    assert!(gone.is_some(), "{}", broker.stderr());
    // Home Assistant's persistent session is counted again after a restart.
    assert_eq!(broker.stop(), Some(0));
    broker.restart();
    assert_eq!(
        broker.metric("hass_broker_subscriptions_bytes", None),
        held_by_ha
    );
    // Logged at the 1st, 2nd, 4th... refusal of each kind: 12 and 11
    // lines for ~3 700 and ~1 900 refusals, not one a filter.
    let lines = broker
        .stderr()
        .matches("over the subscription budget")
        .count();
    assert!((2..=24).contains(&lines), "{lines} lines");
}

/// Retained messages are bounded in bytes: a client that retains large
/// payloads on ever new topics (each up to `max_packet_size`) cannot make
/// the broker hold, and restore at every start, more than
/// `limits.retained_budget`. Over it a retained message is still delivered
/// live, not kept, and the topic's older value goes with it; a deletion
/// makes room again.
#[test]
fn retained_messages_are_bounded_by_their_budget() {
    let mut broker = TestBroker::start("limits:\n  retained_budget: 1048576\n");
    let live = broker.paho_subscribed(
        4,
        true,
        &[
            "subscribe",
            "--filter",
            "big/#",
            "--expect",
            "100",
            "--timeout",
            "30",
        ],
    );
    let published = broker.paho(
        4,
        true,
        &[
            "publish-many",
            "--topic",
            "big/{i}",
            "--payload-size",
            "65536",
            "--count",
            "100",
            "--retain",
        ],
    );
    assert_eq!(published["acked"], 100, "{published}");
    // Every one delivered live.
    assert_eq!(live.finish()["count"], 100);
    let kept = broker.metric("hass_broker_retained_messages", None);
    assert!(
        (10.0..16.0).contains(&kept),
        "{kept} kept of 64 KiB in 1 MiB"
    );
    assert!(broker.metric("hass_broker_retained_bytes", None) <= 1048576.0);
    assert_eq!(
        broker.metric("hass_broker_retained_refused", None),
        100.0 - kept
    );
    let replayed = |filter: &str| {
        broker.paho(
            4,
            true,
            &["subscribe", "--filter", filter, "--timeout", "1"],
        )["retained"]
            .as_u64()
            .expect("count")
    };
    assert_eq!(replayed("big/#"), kept as u64);
    assert_eq!(replayed("big/0"), 1);

    // A kept topic that grows past the budget is not left stale.
    let grow = [
        "publish-many",
        "--topic",
        "big/0",
        "--payload-size",
        "131072",
        "--retain",
    ];
    assert_eq!(broker.paho(4, true, &grow)["acked"], 1);
    assert_eq!(replayed("big/0"), 0, "the old value was dropped");
    // Deleting makes room: the same message is kept now.
    for i in 1..4 {
        let topic = format!("big/{i}");
        broker.paho(
            4,
            true,
            &[
                "publish-many",
                "--topic",
                &topic,
                "--payload",
                "",
                "--retain",
            ],
        );
    }
    assert_eq!(broker.paho(4, true, &grow)["acked"], 1);
    assert_eq!(replayed("big/0"), 1);

    // A flood of 1 MiB retained messages on new topics: the broker holds
    // about the budget, not the flood.
    let pid = broker.process.running().expect("running").pid();
    let before = common::rss(pid);
    let flood = broker.paho(
        4,
        true,
        &[
            "publish-many",
            "--topic",
            "flood/{i}",
            "--payload-size",
            "1048576",
            "--count",
            "150",
            "--retain",
        ],
    );
    assert_eq!(flood["acked"], 150, "{flood}");
    let after = common::rss(pid);
    eprintln!(
        "RSS {} MiB before the flood, {} MiB after",
        before >> 20,
        after >> 20
    );
    assert!(
        after < before + (48 << 20),
        "RSS {} MiB from {} MiB",
        after >> 20,
        before >> 20
    );
    assert!(broker.metric("hass_broker_retained_bytes", None) <= 1048576.0);
    // What is kept is what comes back after a restart ($SYS aside).
    let held = broker.metric("hass_broker_retained_messages", None);
    assert_eq!(broker.stop(), Some(0));
    broker.restart();
    assert_eq!(broker.metric("hass_broker_retained_messages", None), held);
    // Logged at the 1st, 2nd, 4th... refusal, not at each.
    let lines = broker.stderr().matches("delivered but not kept").count();
    assert!((1..=10).contains(&lines), "{lines} lines");
}

/// Persistent sessions outlive their connections, so connections do not
/// bound them: a user (or every anonymous client together) holds at most
/// `limits.max_persistent_sessions_per_user`. One more is refused at
/// CONNECT; coming back to a held session, clean sessions and other users
/// are not affected, and a DISCONNECT cannot make a clean session persist.
#[test]
fn persistent_sessions_are_capped_per_user() {
    let broker = TestBroker::start("limits:\n  max_persistent_sessions_per_user: 3\n");
    broker.set_password("other", "other-pass");
    let reloaded = hass_test_support::wait_for(Duration::from_secs(10), || {
        (broker.metric("hass_broker_policy_reloads", Some(("reason", "ok"))) >= 1.0).then_some(())
    });
    assert!(reloaded.is_some(), "{}", broker.stderr());
    let login = Some((USER, PASSWORD));
    for id in ["p1", "p2", "p3"] {
        let (code, client) = RawClient::connect_persistent(broker.mqtt, 4, id, login);
        assert_eq!(code, 0, "{id}");
        drop(client);
    }
    let (code, _) = RawClient::connect_persistent(broker.mqtt, 4, "p4", login);
    assert_eq!(code, 3, "MQTT 3.1.1: server unavailable");
    let (code, _) = RawClient::connect_persistent(broker.mqtt, 5, "p4", login);
    assert_eq!(code, 0x97, "MQTT 5: quota exceeded");
    let refused = || {
        broker.metric(
            "hass_broker_auth_failures",
            Some(("reason", "too_many_sessions")),
        )
    };
    assert_eq!(refused(), 2.0);

    // A held session, a clean session and another user still get in.
    let (code, mut back) = RawClient::connect_persistent(broker.mqtt, 4, "p1", login);
    assert_eq!(code, 0);
    assert!(back.ping());
    let (code, mut clean) = RawClient::connect(broker.mqtt, 4, "c1", login, None);
    assert_eq!(code, 0);
    assert!(clean.ping());
    let (code, _) =
        RawClient::connect_persistent(broker.mqtt, 4, "o1", Some(("other", "other-pass")));
    assert_eq!(code, 0);

    // MQTT 5: a clean session's DISCONNECT asking for an expiry (a
    // Protocol Error) does not make a fourth persistent session.
    let (code, mut sneaky) = RawClient::connect(broker.mqtt, 5, "sneaky", login, None);
    assert_eq!(code, 0);
    sneaky.send(&[0xe0, 7, 0, 5, 0x11, 0, 0, 0x0e, 0x10]);
    assert_eq!(sneaky.until_closed(), None);
    let gone = hass_test_support::wait_for(Duration::from_secs(5), || {
        (broker.metric("hass_broker_sessions", None) == 5.0).then_some(())
    });
    assert!(gone.is_some(), "p1-p3, o1 and c1 only");
    let (code, _) = RawClient::connect_persistent(broker.mqtt, 4, "p5", login);
    assert_eq!(code, 3);
    assert_eq!(refused(), 3.0);
}

/// An MQTT 5 PUBLISH's properties count against the memory budget with its
/// payload: a user property runs to the packet's size, and a queue of tiny
/// payloads with 60 KiB properties each was counted as ~100 bytes a message.
#[test]
fn properties_count_against_the_memory_budget() {
    let broker =
        TestBroker::start("limits:\n  memory_budget: 1048576\n  max_queued_messages: 1000\n");
    let login = Some((USER, PASSWORD));
    let (code, mut stalled) = RawClient::connect(broker.mqtt, 5, "stalled", login, None);
    assert_eq!(code, 0);
    assert_eq!(stalled.subscribe("props/#", 0), [0]);
    // From here on the subscriber reads nothing.
    let pid = broker.process.running().expect("running").pid();
    let before = common::rss(pid);

    let (code, mut publisher) = RawClient::connect(broker.mqtt, 5, "props", login, None);
    assert_eq!(code, 0);
    let value = vec![b'v'; 60 * 1024];
    let mut properties = vec![0x26, 0, 1, b'k'];
    properties.extend_from_slice(&(value.len() as u16).to_be_bytes());
    properties.extend_from_slice(&value);
    let mut body = 7u16.to_be_bytes().to_vec();
    body.extend_from_slice(b"props/x");
    body.extend(remaining_length(properties.len()));
    body.extend(properties);
    body.push(b'x');
    let packet = common::frame(0x30, body);
    // 1 000 of them: 60 MiB of properties behind 1 000 one-byte payloads.
    for _ in 0..1000 {
        publisher.send(&packet);
    }
    assert!(publisher.ping(), "the publisher is still served");
    assert!(broker.metric("hass_broker_queued_bytes", None) <= 1048576.0);
    assert!(broker.metric("hass_broker_dropped_memory_budget", None) > 0.0);
    common::assert_peak_rss_grew_less_than(pid, before, 24);
    drop(stalled);
}

/// Each client that has logged in may send a packet of up to
/// `max_packet_size`, and thousands may connect: the bytes of large packets
/// still arriving are capped in all. Over `limits.partial_packet_budget`
/// the clients in the middle of one are disconnected (MQTT 5: 0x97), and a
/// large packet sent whole afterwards still goes through.
#[test]
fn large_packets_still_arriving_are_capped_in_all() {
    let broker = TestBroker::start(
        "limits:\n  max_packet_size: 1048576\n  partial_packet_budget: 2097152\n",
    );
    let login = Some((USER, PASSWORD));
    let pid = broker.process.running().expect("running").pid();
    let before = common::rss(pid);
    // 40 clients each send 900 KiB of a 1 MiB PUBLISH, and no more.
    let mut senders = Vec::new();
    for i in 0..40 {
        let (code, client) = RawClient::connect(broker.mqtt, 5, &format!("big{i}"), login, None);
        assert_eq!(code, 0);
        let mut head = vec![0x30];
        head.extend(remaining_length(1024 * 1024));
        head.extend_from_slice(&5u16.to_be_bytes());
        head.extend_from_slice(b"big/x");
        head.push(0);
        let mut stream = client.stream;
        stream
            .set_write_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        // A disconnected client's write fails: that is the point.
        let _ = stream.write_all(&head);
        let _ = stream.write_all(&vec![b'x'; 900 * 1024]);
        senders.push(stream);
    }
    let cut_off = hass_test_support::wait_for(Duration::from_secs(20), || {
        (broker.metric("hass_broker_partial_packet_budget_disconnects", None) >= 30.0).then_some(())
    });
    assert!(
        cut_off.is_some(),
        "{}",
        hass_test_support::http::get(broker.admin, "/metrics")
            .expect("metrics")
            .body
    );
    assert!(broker.metric("hass_broker_partial_packets_bytes", None) <= 2097152.0);
    // 36 MiB sent; the budget is 2 MiB, plus a read's worth a connection.
    common::assert_peak_rss_grew_less_than(pid, before, 16);
    drop(senders);
    let released = hass_test_support::wait_for(Duration::from_secs(10), || {
        (broker.metric("hass_broker_partial_packets_bytes", None) == 0.0).then_some(())
    });
    assert!(
        released.is_some(),
        "the closed clients' bytes are given back"
    );
    // A large packet sent whole goes through.
    let subscriber = broker.paho_subscribed(
        4,
        true,
        &[
            "subscribe",
            "--filter",
            "big/#",
            "--expect",
            "1",
            "--timeout",
            "10",
        ],
    );
    let published = broker.paho(
        4,
        true,
        &[
            "publish-many",
            "--topic",
            "big/y",
            "--payload-size",
            "524288",
        ],
    );
    assert_eq!(published["acked"], 1, "{published}");
    assert_eq!(subscriber.finish()["count"], 1);
}
