//! hass-broker, Mosquitto and (when `rmqttd` is installed) rmqtt side by
//! side, in one run, under the same load from the same generator: fan-in
//! (50 publishers → 1 subscriber) and fan-out (1 publisher → 100
//! subscribers), QoS 0 and 1, at a fixed rate and unthrottled, and fan-in
//! QoS 0 to a subscriber that also holds 1 000 Home Assistant-shaped
//! filters; then 1000 idle connections; then (hass-broker only) the time to
//! restore 100 000 retained messages at start. The generator shares the
//! machine with the broker, so it writes what it may send in one call and
//! waits for PUBACKs without spinning.
//!
//! Run: `cargo bench -p hass-broker --bench vs_mosquitto` (needs `mosquitto`
//! and `mosquitto_passwd` on PATH). `-- --quick` shortens each scenario;
//! `-- --idle-only` measures only the idle connections (a few seconds);
//! `-- --subscribe-only` only SUBSCRIBE→SUBACK on one connection;
//! `-- --default-limits` gives each broker its own default limits instead
//! of equal ones;
//! `-- --only TEXT` runs the scenarios whose name contains TEXT (and skips
//! the idle and restore parts); `-- --repeat N` runs each scenario N times,
//! the brokers taking turns, and compares the medians: a p99 from one short
//! run on a shared machine swings more than the brokers differ.

// Printing the results table is this binary's job.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use hass_broker::codec::{self, Version};
use rumqttd::protocol::{
    Connect, Filter, Login, Packet, PubAck, PubAckReason, QoS, RetainForwardRule, Subscribe,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Mutex;

const USER: &str = "bench";
const PASSWORD: &str = "bench-password";
const PAYLOAD: usize = 64;

/// `--default-limits`: each broker with its own default limits, as a user
/// who sets none gets them (Mosquitto's defaults are the equal limits
/// above: 20 in flight, 1 000 queued; hass-broker's are 32 and 1 000
/// within a 256 MiB budget).
static DEFAULT_LIMITS: AtomicBool = AtomicBool::new(false);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Hass,
    Mosquitto,
    /// rmqtt's server, `rmqttd` (crates.io; `cargo install rmqttd` needs
    /// cmake and protoc), from `$RMQTTD` or `PATH`; left out, with a note,
    /// when there is none. TCP scenarios only.
    Rmqtt,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Hass => "hass-broker",
            Kind::Mosquitto => "mosquitto",
            Kind::Rmqtt => "rmqtt",
        }
    }
}

/// `rmqttd`'s path, if there is one.
fn rmqttd() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("RMQTTD") {
        return Some(PathBuf::from(path));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("rmqttd"))
        .find(|path| path.is_file())
}

/// The brokers each scenario runs on: hass-broker first, the peers after.
fn scenario_brokers() -> Vec<Kind> {
    let mut kinds = vec![Kind::Hass, Kind::Mosquitto];
    if rmqttd().is_some() {
        kinds.push(Kind::Rmqtt);
    }
    kinds
}

struct Broker {
    child: Child,
    addr: SocketAddr,
    /// MQTT over WebSockets, path `/mqtt`.
    ws: SocketAddr,
    /// MQTT over TLS, with the certificate `make_cert` wrote.
    tls: SocketAddr,
    admin: Option<SocketAddr>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn start(kind: Kind, dir: &Path, data: &Path) -> Broker {
    let addr = free_addr();
    let ws = free_addr();
    let tls = free_addr();
    let passwd = dir.join("passwd");
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let child = match kind {
        Kind::Hass => {
            let admin = free_addr();
            let config = dir.join("hass-broker.yaml");
            std::fs::write(
                &config,
                format!(
                    "data_dir: {}\npassword_file: {}\nsys_interval: null\ntls:\n  cert_file: {}\n  key_file: {}\nlisteners:\n  mqtt: {addr}\n  ws: {ws}\n  mqtts: {tls}\n{}",
                    data.display(),
                    passwd.display(),
                    cert.display(),
                    key.display(),
                    if DEFAULT_LIMITS.load(Ordering::Relaxed) {
                        ""
                    } else {
                        "limits:\n  max_inflight: 20\n  max_queued_messages: 1000\n"
                    },
                ),
            )
            .expect("config");
            let child = Command::new(env!("CARGO_BIN_EXE_hass-broker"))
                .arg("--config")
                .arg(&config)
                .args(["--admin-listen", &admin.to_string()])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn hass-broker");
            let broker = Broker {
                child,
                addr,
                ws,
                tls,
                admin: Some(admin),
            };
            wait_listening(addr);
            wait_listening(ws);
            wait_listening(tls);
            return broker;
        }
        Kind::Mosquitto => {
            // `user root`: started as root (as on the bench machine), Mosquitto
            // would switch to its own user before reading the key in this
            // private temp dir. Not root, the line does nothing.
            let config = dir.join("mosquitto.conf");
            std::fs::write(
                &config,
                format!(
                    "listener {} 127.0.0.1\nlistener {} 127.0.0.1\nprotocol websockets\nlistener {} 127.0.0.1\ncertfile {}\nkeyfile {}\nuser root\nallow_anonymous false\npassword_file {}\npersistence false\nmax_inflight_messages 20\nmax_queued_messages 1000\nset_tcp_nodelay true\nlog_dest none\n",
                    addr.port(),
                    ws.port(),
                    tls.port(),
                    cert.display(),
                    key.display(),
                    passwd.display()
                ),
            )
            .expect("config");
            Command::new("mosquitto")
                .arg("-c")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn mosquitto (Debian's mosquitto package)")
        }
        Kind::Rmqtt => {
            let child = start_rmqtt(dir, addr);
            wait_listening(addr);
            return Broker {
                child,
                addr,
                ws: addr,
                tls: addr,
                admin: None,
            };
        }
    };
    wait_listening(addr);
    wait_listening(ws);
    wait_listening(tls);
    Broker {
        child,
        addr,
        ws,
        tls,
        admin: None,
    }
}

/// rmqttd on `addr` (TCP only), logging off, with the bench's user and
/// password checked by its ACL plugin and everything else allowed; its
/// cluster RPC port on loopback, its HTTP API off.
fn start_rmqtt(dir: &Path, addr: SocketAddr) -> Child {
    let plugins = dir.join("rmqtt-plugins");
    std::fs::create_dir_all(&plugins).expect("plugins dir");
    std::fs::write(
        plugins.join("rmqtt-acl.toml"),
        format!(
            "disconnect_if_pub_rejected = true\nrules = [\n  [\"allow\", {{ user = \"{USER}\", password = \"{PASSWORD}\" }}, \"connect\"],\n  [\"deny\", \"all\", \"connect\"],\n  [\"allow\", \"all\"],\n]\n"
        ),
    )
    .expect("acl");
    for plugin in ["rmqtt-retainer", "rmqtt-counter"] {
        let path = plugins.join(format!("{plugin}.toml"));
        if !path.exists() {
            std::fs::write(path, "").expect("plugin config");
        }
    }
    let limits = if DEFAULT_LIMITS.load(Ordering::Relaxed) {
        ""
    } else {
        "max_inflight = 20\nmax_mqueue_len = 1000\n"
    };
    let config = dir.join("rmqtt.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nid = 1\n[rpc]\nserver_addr = \"{rpc}\"\n[log]\nto = \"off\"\nlevel = \"error\"\n[plugins]\ndir = \"{plugins}\"\ndisabled_default_startups = [\"rmqtt-http-api\", \"rmqtt-p2p-messaging\"]\n[listener.tcp.external]\naddr = \"{addr}\"\nallow_anonymous = false\n{limits}",
            rpc = free_addr(),
            plugins = plugins.display(),
        ),
    )
    .expect("config");
    Command::new(rmqttd().expect("rmqttd"))
        .arg("-f")
        .arg(&config)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn rmqttd")
}

fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("broker on {addr} did not start");
}

/// (CPU seconds, peak RSS bytes, current RSS bytes) of a process.
fn usage(pid: u32) -> (f64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields 14 and 15 of /proc/PID/stat (utime, stime) in clock ticks (100/s).
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (cpu, kb("VmHWM:"), kb("VmRSS:"))
}

// A minimal MQTT 3.1.1 client on hass-broker's codec module.

fn connect_packet(client_id: &str) -> BytesMut {
    connect_packet_with(client_id, true)
}

fn connect_packet_with(client_id: &str, clean_session: bool) -> BytesMut {
    let mut out = BytesMut::new();
    let connect = Packet::Connect(
        Connect {
            keep_alive: 0,
            client_id: client_id.to_owned(),
            clean_session,
        },
        None,
        None,
        None,
        Some(Login {
            username: USER.into(),
            password: PASSWORD.into(),
        }),
    );
    codec::write(Version::V4, connect, &mut out).expect("encode");
    out
}

const CONNACK: [u8; 4] = [0x20, 0x02, 0x00, 0x00];

/// Sends CONNECT on an open stream and checks the CONNACK accepts it.
async fn mqtt_handshake<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, client_id: &str) {
    stream
        .write_all(&connect_packet(client_id))
        .await
        .expect("send CONNECT");
    let mut ack = [0u8; 4];
    stream.read_exact(&mut ack).await.expect("CONNACK");
    assert_eq!(ack, CONNACK, "CONNACK refused");
}

async fn connect(addr: SocketAddr, client_id: &str) -> (OwnedReadHalf, OwnedWriteHalf) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    mqtt_handshake(&mut stream, client_id).await;
    stream.into_split()
}

/// An MQTT connection over WebSockets (path `/mqtt`, subprotocol `mqtt`),
/// written by hand: the handshake, then CONNECT in one masked binary frame.
async fn connect_ws(addr: SocketAddr, client_id: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = "GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";
    stream.write_all(request.as_bytes()).await.expect("upgrade");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await.expect("101 response"));
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let packet = connect_packet(client_id);
    let len = u8::try_from(packet.len()).expect("short CONNECT");
    // Binary frame, FIN; masked with a zero key, so the payload is as is.
    let mut frame = vec![0x82, 0x80 | len, 0, 0, 0, 0];
    frame.extend_from_slice(&packet);
    stream.write_all(&frame).await.expect("send CONNECT");
    let mut ack = [0u8; 6];
    stream.read_exact(&mut ack).await.expect("CONNACK");
    assert_eq!(ack[..2], [0x82, 4], "one binary frame");
    assert_eq!(ack[2..], CONNACK, "CONNACK refused");
    stream
}

async fn subscribe(read: &mut OwnedReadHalf, write: &mut OwnedWriteHalf, filter: &str, qos: QoS) {
    let mut out = BytesMut::new();
    let sub = Packet::Subscribe(
        Subscribe {
            pkid: 1,
            filters: vec![Filter {
                path: filter.into(),
                qos,
                nolocal: false,
                preserve_retain: false,
                retain_forward_rule: RetainForwardRule::OnEverySubscribe,
            }],
        },
        None,
    );
    codec::write(Version::V4, sub, &mut out).expect("encode");
    write.write_all(&out).await.expect("SUBSCRIBE");
    let mut ack = [0u8; 5];
    read.read_exact(&mut ack).await.expect("SUBACK");
}

/// Frames server-to-client packets; calls `on_publish(pkid, payload)` for
/// PUBLISH and `on_ack(pkid)` for PUBACK.
fn drain_packets(
    buf: &mut BytesMut,
    mut on_publish: impl FnMut(u8, u16, &[u8]),
    mut on_ack: impl FnMut(u16),
) {
    while let Ok(header) = rumqttd::protocol::v4::check(buf.iter(), usize::MAX) {
        let frame = buf.split_to(header.frame_length());
        let body = &frame[header.fixed_header_len..];
        match header.byte1 >> 4 {
            3 => {
                let qos = (header.byte1 >> 1) & 0b11;
                let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
                let mut at = 2 + topic_len;
                let mut pkid = 0;
                if qos > 0 {
                    pkid = u16::from_be_bytes([body[at], body[at + 1]]);
                    at += 2;
                }
                on_publish(qos, pkid, &body[at..]);
            }
            4 => on_ack(u16::from_be_bytes([body[0], body[1]])),
            _ => {}
        }
    }
}

struct Subscriber {
    received: Arc<AtomicU64>,
    /// Deliveries that came after a later message from the same publisher
    /// (MQTT 3.1.1 §4.6 and 5.0 §4.6 require a topic's messages from one
    /// publisher in the order they were published).
    out_of_order: Arc<AtomicU64>,
    latencies: Arc<Mutex<Vec<u64>>>,
}

async fn run_subscriber(
    addr: SocketAddr,
    id: String,
    qos: QoS,
    filters: usize,
    epoch: Instant,
    sub: Arc<Subscriber>,
    ready: Arc<AtomicU64>,
) {
    let (mut read, mut write) = connect(addr, &id).await;
    // Shaped like Home Assistant's: per entity, a state and an
    // availability topic; every tenth a wildcard.
    for i in 0..filters {
        let filter = match i % 10 {
            0 => format!("zigbee2mqtt/device{i}/+"),
            n if n % 2 == 1 => format!("zigbee2mqtt/device{i}/availability"),
            _ => format!("zigbee2mqtt/device{i}"),
        };
        subscribe(&mut read, &mut write, &filter, qos).await;
    }
    subscribe(&mut read, &mut write, "bench/#", qos).await;
    ready.fetch_add(1, Ordering::SeqCst);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut local = Vec::new();
    // Per publisher, the highest sequence number seen so far.
    let mut last_seen: Vec<Option<u64>> = Vec::new();
    let mut out_of_order = 0u64;
    loop {
        match tokio::time::timeout(Duration::from_secs(3), read.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => break,
        }
        let now = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let mut acks = BytesMut::new();
        drain_packets(
            &mut buf,
            |qos, pkid, payload| {
                let mut p = payload;
                if p.len() >= 20 {
                    local.push(now.saturating_sub(p.get_u64()));
                    let publisher = p.get_u32() as usize;
                    let seq = p.get_u64();
                    if last_seen.len() <= publisher {
                        last_seen.resize(publisher + 1, None);
                    }
                    match last_seen[publisher] {
                        Some(last) if seq < last => out_of_order += 1,
                        _ => last_seen[publisher] = Some(seq),
                    }
                }
                if qos == 1 {
                    let ack = Packet::PubAck(
                        PubAck {
                            pkid,
                            reason: PubAckReason::Success,
                        },
                        None,
                    );
                    let _ = codec::write(Version::V4, ack, &mut acks);
                }
            },
            |_| {},
        );
        if !acks.is_empty() && write.write_all(&acks).await.is_err() {
            break;
        }
        sub.received.store(local.len() as u64, Ordering::Relaxed);
    }
    sub.received.store(local.len() as u64, Ordering::Relaxed);
    sub.out_of_order.store(out_of_order, Ordering::Relaxed);
    sub.latencies.lock().await.extend(local);
}

/// Publishes until `until`, at `rate` messages/s (0: as fast as it can),
/// keeping at most `window` QoS 1 messages unacknowledged.
async fn run_publisher(
    addr: SocketAddr,
    index: u32,
    qos: QoS,
    rate: u32,
    until: Instant,
    epoch: Instant,
    sent: Arc<AtomicU64>,
) {
    let (mut read, mut write) = connect(addr, &format!("pub-{index}")).await;
    let acked = Arc::new(AtomicU64::new(0));
    let acked_reader = acked.clone();
    // The window waits for a PUBACK, not in a yield loop: spinning through
    // 50 publishers' loops took a core from the broker under test.
    let window_open = Arc::new(tokio::sync::Notify::new());
    let window_opener = window_open.clone();
    let reader = tokio::spawn(async move {
        let mut buf = BytesMut::with_capacity(4096);
        while let Ok(n) = read.read_buf(&mut buf).await {
            if n == 0 {
                break;
            }
            drain_packets(
                &mut buf,
                |_, _, _| {},
                |_| {
                    acked_reader.fetch_add(1, Ordering::Relaxed);
                    window_opener.notify_one();
                },
            );
        }
    });
    let window = 20u64;
    let mut count = 0u64;
    let mut pkid = 0u16;
    let mut tick =
        (rate > 0).then(|| tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate))));
    let mut out = BytesMut::new();
    while Instant::now() < until {
        if let Some(tick) = tick.as_mut() {
            tick.tick().await;
        }
        // Unthrottled, a publisher writes what it may send in one system
        // call (QoS 1: what its window allows; QoS 0: 16 at a time), as a
        // busy client's library does: a write per message took more CPU
        // on the client than the broker under test had.
        let mut batch = if rate == 0 { 16 } else { 1 };
        if qos == QoS::AtLeastOnce {
            while count - acked.load(Ordering::Relaxed) >= window {
                if Instant::now() >= until {
                    break;
                }
                let deadline = tokio::time::Instant::from_std(until);
                let _ = tokio::time::timeout_at(deadline, window_open.notified()).await;
            }
            let open = window.saturating_sub(count - acked.load(Ordering::Relaxed));
            batch = batch.min(open);
        }
        out.clear();
        for _ in 0..batch {
            let mut payload = vec![0u8; PAYLOAD];
            let stamp = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(0);
            payload[..8].copy_from_slice(&stamp.to_be_bytes());
            payload[8..12].copy_from_slice(&index.to_be_bytes());
            payload[12..20].copy_from_slice(&count.to_be_bytes());
            pkid = pkid.wrapping_add(1).max(1);
            let publish = codec::outgoing_publish(b"bench/data", &payload, qos, pkid, false, false);
            codec::write(Version::V4, Packet::Publish(publish, None), &mut out).expect("encode");
            count += 1;
        }
        if batch > 0 && write.write_all(&out).await.is_err() {
            break;
        }
        // Unthrottled QoS 0: yield now and then so subscribers get to run.
        if rate == 0 && qos == QoS::AtMostOnce && count.is_multiple_of(64) {
            tokio::task::yield_now().await;
        }
    }
    sent.fetch_add(count, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    reader.abort();
}

#[derive(Debug, Clone, Copy)]
struct Scenario {
    name: &'static str,
    publishers: usize,
    subscribers: usize,
    qos: QoS,
    /// Per publisher, messages/s; 0 = unthrottled.
    rate: u32,
    /// Filters each subscriber holds besides `bench/#`, none of them
    /// matching: Home Assistant holds hundreds (one per entity's state,
    /// command and availability topic), and a broker matches every publish
    /// against them.
    filters: usize,
}

#[derive(Debug, Default, Clone, Copy)]
struct Result {
    delivered_pct: f64,
    throughput: f64,
    out_of_order_pct: f64,
    p50_us: f64,
    p99_us: f64,
    cpu_s: f64,
    peak_rss_mib: f64,
}

impl Result {
    /// Each figure's median over the runs (the middle one, or the upper of
    /// the two middle ones).
    fn median(runs: &[Result]) -> Result {
        let of = |figure: fn(&Result) -> f64| {
            let mut values: Vec<f64> = runs.iter().map(figure).collect();
            values.sort_by(f64::total_cmp);
            values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
        };
        Result {
            delivered_pct: of(|r| r.delivered_pct),
            throughput: of(|r| r.throughput),
            out_of_order_pct: of(|r| r.out_of_order_pct),
            p50_us: of(|r| r.p50_us),
            p99_us: of(|r| r.p99_us),
            cpu_s: of(|r| r.cpu_s),
            peak_rss_mib: of(|r| r.peak_rss_mib),
        }
    }
}

async fn run_scenario(addr: SocketAddr, pid: u32, s: Scenario, seconds: f64) -> Result {
    let epoch = Instant::now();
    let ready = Arc::new(AtomicU64::new(0));
    let mut subs = Vec::new();
    let mut handles = Vec::new();
    for i in 0..s.subscribers {
        let sub = Arc::new(Subscriber {
            received: Arc::new(AtomicU64::new(0)),
            out_of_order: Arc::new(AtomicU64::new(0)),
            latencies: Arc::new(Mutex::new(Vec::new())),
        });
        subs.push(sub.clone());
        handles.push(tokio::spawn(run_subscriber(
            addr,
            format!("sub-{i}"),
            s.qos,
            s.filters,
            epoch,
            sub,
            ready.clone(),
        )));
    }
    // A subscriber that could not connect panics in its own task; say so
    // instead of waiting for it forever.
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready.load(Ordering::SeqCst) < s.subscribers as u64 {
        assert!(
            Instant::now() < deadline,
            "{} of {} subscribers connected and subscribed within 30 s",
            ready.load(Ordering::SeqCst),
            s.subscribers
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (cpu_before, _, _) = usage(pid);
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(seconds);
    let mut pubs = Vec::new();
    for i in 0..s.publishers {
        pubs.push(tokio::spawn(run_publisher(
            addr,
            i as u32,
            s.qos,
            s.rate,
            until,
            epoch,
            sent.clone(),
        )));
    }
    for p in pubs {
        let _ = p.await;
    }
    for h in handles {
        let _ = h.await;
    }
    let elapsed = started.elapsed().as_secs_f64() - 3.0; // subscribers wait 3 s idle at the end
    let (cpu_after, peak, _) = usage(pid);
    let expected = sent.load(Ordering::Relaxed) * s.subscribers as u64;
    let mut all = Vec::new();
    let mut received = 0;
    let mut out_of_order = 0;
    for sub in &subs {
        received += sub.received.load(Ordering::Relaxed);
        out_of_order += sub.out_of_order.load(Ordering::Relaxed);
        all.extend(sub.latencies.lock().await.iter().copied());
    }
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    Result {
        delivered_pct: if expected == 0 {
            0.0
        } else {
            100.0 * received as f64 / expected as f64
        },
        throughput: received as f64 / elapsed.max(seconds),
        out_of_order_pct: if received == 0 {
            0.0
        } else {
            100.0 * out_of_order as f64 / received as f64
        },
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        cpu_s: cpu_after - cpu_before,
        peak_rss_mib: peak as f64 / (1024.0 * 1024.0),
    }
}

#[derive(Debug, Clone, Copy)]
enum Transport {
    Tcp,
    WebSocket,
    Tls,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "TCP",
            Transport::WebSocket => "WebSocket",
            Transport::Tls => "TLS",
        }
    }
}

/// A self-signed P-256 certificate for 127.0.0.1 in `dir` (tls.crt,
/// tls.key), made by the openssl CLI, as cert-manager would issue one.
fn make_cert(dir: &Path) {
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=bench"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(dir.join("tls.key"))
        .arg("-out")
        .arg(dir.join("tls.crt"))
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success());
}

fn tls_connector(cert: &Path) -> tokio_rustls::TlsConnector {
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(cert).expect("tls.crt"))
        .expect("trust tls.crt");
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn connect_tls(
    addr: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
    client_id: &str,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = tokio_rustls::rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let mut stream = connector.connect(name, tcp).await.expect("TLS handshake");
    mqtt_handshake(&mut stream, client_id).await;
    stream
}

/// RSS growth per connection for `count` connections that connect and
/// then stay silent (Keep Alive 0).
async fn idle_connections(broker: &Broker, dir: &Path, count: usize, transport: Transport) -> f64 {
    let pid = broker.child.id();
    let connector = tls_connector(&dir.join("tls.crt"));
    let (_, _, before) = usage(pid);
    let mut tcp = Vec::with_capacity(count);
    let mut held = Vec::with_capacity(count);
    let mut tls = Vec::with_capacity(count);
    for i in 0..count {
        let id = format!("idle-{i}");
        match transport {
            Transport::Tcp => tcp.push(connect(broker.addr, &id).await),
            Transport::WebSocket => held.push(connect_ws(broker.ws, &id).await),
            Transport::Tls => tls.push(connect_tls(broker.tls, &connector, &id).await),
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    if let (Some(admin), Transport::Tcp) = (broker.admin, transport) {
        // hass-broker parks a plain TCP connection after two quiet sweeps
        // (2-3 s): measure what an idle connection holds once parked.
        let parked = tokio::task::spawn_blocking(move || {
            hass_test_support::wait_for(Duration::from_secs(10), || {
                let body = hass_test_support::http::get(admin, "/metrics").ok()?.body;
                let families = hass_test_support::openmetrics::parse(&body).ok()?;
                let family =
                    hass_test_support::openmetrics::find(&families, "hass_broker_clients_parked")?;
                let parked = family.samples.first()?.value;
                (parked >= count as f64).then_some(parked)
            })
        })
        .await
        .expect("wait for parking");
        if parked.is_none() {
            eprintln!("hass-broker: not all {count} idle connections parked within 10 s");
        }
    }
    let (_, _, after) = usage(pid);
    (after.saturating_sub(before)) as f64 / count as f64
}

fn restore_time(dir: &Path, retained: usize) -> (Duration, String) {
    let data = dir.join("restore-data");
    let _ = std::fs::remove_dir_all(&data);
    let mut broker = start(Kind::Hass, dir, &data);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let (mut read, mut write) = connect(broker.addr, "loader").await;
        let mut out = BytesMut::new();
        for i in 0..retained {
            let topic = format!("homeassistant/sensor/dev{i}/config");
            let payload = format!("{{\"name\":\"dev{i}\",\"state_topic\":\"zigbee2mqtt/dev{i}\",\"unique_id\":\"{i:08x}\"}}");
            let publish = codec::outgoing_publish(topic.as_bytes(), payload.as_bytes(), QoS::AtLeastOnce, (i % 60000 + 1) as u16, false, true);
            codec::write(Version::V4, Packet::Publish(publish, None), &mut out).expect("encode");
            if out.len() > 256 * 1024 {
                write.write_all(&out).await.expect("publish");
                out.clear();
            }
        }
        write.write_all(&out).await.expect("publish");
        // Wait for every PUBACK: each means the message is durable.
        let mut acks = 0;
        let mut buf = BytesMut::new();
        while acks < retained {
            if read.read_buf(&mut buf).await.expect("read") == 0 {
                break;
            }
            drain_packets(&mut buf, |_, _, _| {}, |_| acks += 1);
        }
    });
    // SIGKILL, then time the restart to a listening socket (restore happens before).
    let _ = broker.child.kill();
    let _ = broker.child.wait();
    let started = Instant::now();
    let restarted = start(Kind::Hass, dir, &data);
    let admin = restarted.admin.expect("hass-broker has an admin port");
    while hass_test_support::http::get(admin, "/readyz").map(|r| r.status) != Ok(200) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let ready = started.elapsed();
    let size = std::fs::metadata(data.join("broker.redb"))
        .map(|m| m.len())
        .unwrap_or(0);
    (
        ready,
        format!("{:.1} MiB store", size as f64 / (1024.0 * 1024.0)),
    )
}

/// SUBSCRIBE→SUBACK on one connection, as Home Assistant subscribes at
/// start: `count` distinct filters, each sent once the last is acknowledged.
/// Microseconds per SUBSCRIBE.
async fn subscribe_latencies(addr: SocketAddr, count: usize, clean: bool) -> Vec<u64> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream
        .write_all(&connect_packet_with("subscribe-latency", clean))
        .await
        .expect("CONNECT");
    let mut ack = [0u8; 4];
    stream.read_exact(&mut ack).await.expect("CONNACK");
    assert_eq!(ack[3], 0, "CONNACK refused");
    let (mut read, mut write) = stream.into_split();
    let mut latencies = Vec::with_capacity(count);
    for i in 0..count {
        let filter = format!("homeassistant/sensor/dev{i}/state");
        let started = Instant::now();
        subscribe(&mut read, &mut write, &filter, QoS::AtLeastOnce).await;
        latencies.push(started.elapsed().as_micros() as u64);
    }
    latencies
}

fn print_subscribe_latency(rt: &tokio::runtime::Runtime, dir: &Path, count: usize, repeat: usize) {
    for clean in [true, false] {
        print_subscribe_latency_for(rt, dir, count, repeat, clean);
    }
}

fn print_subscribe_latency_for(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    count: usize,
    repeat: usize,
    clean: bool,
) {
    let mut all: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..repeat {
        for (i, kind) in [Kind::Hass, Kind::Mosquitto].into_iter().enumerate() {
            let data = dir.join(format!("subscribe-{i}"));
            let _ = std::fs::remove_dir_all(&data);
            let broker = start(kind, dir, &data);
            all[i].extend(rt.block_on(subscribe_latencies(broker.addr, count, clean)));
        }
    }
    let session = if clean {
        "clean session"
    } else {
        "persistent session"
    };
    let quantile = |v: &mut Vec<u64>, q: f64| {
        v.sort_unstable();
        v[((v.len() - 1) as f64 * q) as usize] as f64
    };
    let mut summary = Vec::new();
    for (i, kind) in [Kind::Hass, Kind::Mosquitto].into_iter().enumerate() {
        let (p50, p99) = (quantile(&mut all[i], 0.5), quantile(&mut all[i], 0.99));
        println!(
            "SUBSCRIBE→SUBACK, {session}, {count} filters one after another × {repeat} on {}: p50 {p50:.0} µs, p99 {p99:.0} µs",
            kind.name()
        );
        summary.push((p50, p99));
    }
    println!(
        "ratio hass-broker / mosquitto, {session}: p50 {:.2}×, p99 {:.2}×",
        summary[0].0 / summary[1].0,
        summary[0].1 / summary[1].1
    );
}

fn print_idle_connections(rt: &tokio::runtime::Runtime, dir: &Path) {
    let idle = 1000;
    for transport in [Transport::Tcp, Transport::WebSocket, Transport::Tls] {
        for (i, kind) in [Kind::Hass, Kind::Mosquitto].into_iter().enumerate() {
            let data = dir.join(format!("idle-{i}"));
            let broker = start(kind, dir, &data);
            let per = rt.block_on(idle_connections(&broker, dir, idle, transport));
            let (_, _, rss) = usage(broker.child.id());
            println!(
                "{} idle {} connections on {}: {:.0} bytes each, {:.1} MiB RSS in all",
                idle,
                transport.name(),
                kind.name(),
                per,
                rss as f64 / (1024.0 * 1024.0)
            );
        }
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs bench
    // binaries too, without it, and must not start a several-minute run.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let idle_only = std::env::args().any(|a| a == "--idle-only");
    let seconds = if quick { 1.5 } else { 4.0 };
    let args: Vec<String> = std::env::args().collect();
    let value_of = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let only = value_of("--only");
    DEFAULT_LIMITS.store(
        args.iter().any(|a| a == "--default-limits"),
        Ordering::Relaxed,
    );
    let repeat: usize = value_of("--repeat").map_or(1, |n| n.parse().expect("--repeat N"));
    let dir = tempfile::tempdir().expect("dir");
    let passwd = dir.path().join("passwd");
    std::fs::write(&passwd, "").expect("passwd");
    let status = Command::new("mosquitto_passwd")
        .arg("-b")
        .arg(&passwd)
        .args([USER, PASSWORD])
        .status()
        .expect("mosquitto_passwd");
    assert!(status.success());
    make_cert(dir.path());

    let scenarios = [
        Scenario {
            name: "fan-in 50→1 QoS0 @2000/s",
            publishers: 50,
            subscribers: 1,
            qos: QoS::AtMostOnce,
            rate: 40,
            filters: 0,
        },
        Scenario {
            name: "fan-in 50→1 QoS0 max",
            publishers: 50,
            subscribers: 1,
            qos: QoS::AtMostOnce,
            rate: 0,
            filters: 0,
        },
        Scenario {
            name: "fan-in 50→1 QoS1 @2000/s",
            publishers: 50,
            subscribers: 1,
            qos: QoS::AtLeastOnce,
            rate: 40,
            filters: 0,
        },
        Scenario {
            name: "fan-in 50→1 QoS1 max",
            publishers: 50,
            subscribers: 1,
            qos: QoS::AtLeastOnce,
            rate: 0,
            filters: 0,
        },
        Scenario {
            name: "fan-out 1→100 QoS0 @50/s",
            publishers: 1,
            subscribers: 100,
            qos: QoS::AtMostOnce,
            rate: 50,
            filters: 0,
        },
        Scenario {
            name: "fan-out 1→100 QoS0 max",
            publishers: 1,
            subscribers: 100,
            qos: QoS::AtMostOnce,
            rate: 0,
            filters: 0,
        },
        Scenario {
            name: "fan-out 1→100 QoS1 @50/s",
            publishers: 1,
            subscribers: 100,
            qos: QoS::AtLeastOnce,
            rate: 50,
            filters: 0,
        },
        Scenario {
            name: "fan-out 1→100 QoS1 max",
            publishers: 1,
            subscribers: 100,
            qos: QoS::AtLeastOnce,
            rate: 0,
            filters: 0,
        },
        Scenario {
            name: "fan-in 50→1 QoS0 @2000/s, 1000 filters",
            publishers: 50,
            subscribers: 1,
            qos: QoS::AtMostOnce,
            rate: 40,
            filters: 1000,
        },
        Scenario {
            name: "fan-in 50→1 QoS0 max, 1000 filters",
            publishers: 50,
            subscribers: 1,
            qos: QoS::AtMostOnce,
            rate: 0,
            filters: 1000,
        },
    ];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    if idle_only {
        print_idle_connections(&rt, dir.path());
        return;
    }
    if args.iter().any(|a| a == "--subscribe-only") {
        print_subscribe_latency(&rt, dir.path(), 2000, repeat);
        return;
    }
    let brokers = scenario_brokers();
    if !brokers.contains(&Kind::Rmqtt) {
        eprintln!("no rmqttd (set RMQTTD or put it on PATH): rmqtt left out");
    }
    println!(
        "# hass-broker vs {} ({} s per scenario, 64-byte payloads)",
        brokers[1..]
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(" and "),
        seconds
    );
    println!();
    println!(
        "| scenario | broker | delivered % | msgs/s | out of order % | p50 µs | p99 µs | CPU s | peak RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for s in scenarios {
        if only.as_deref().is_some_and(|text| !s.name.contains(text)) {
            continue;
        }
        let mut runs: Vec<Vec<Result>> = brokers.iter().map(|_| Vec::new()).collect();
        for _ in 0..repeat {
            for (i, &kind) in brokers.iter().enumerate() {
                let data = dir.path().join(format!("data-{i}"));
                let _ = std::fs::remove_dir_all(&data);
                let broker = start(kind, dir.path(), &data);
                let r = rt.block_on(run_scenario(broker.addr, broker.child.id(), s, seconds));
                println!(
                    "| {} | {} | {:.1} | {:.0} | {:.2} | {:.0} | {:.0} | {:.2} | {:.1} |",
                    s.name,
                    kind.name(),
                    r.delivered_pct,
                    r.throughput,
                    r.out_of_order_pct,
                    r.p50_us,
                    r.p99_us,
                    r.cpu_s,
                    r.peak_rss_mib
                );
                runs[i].push(r);
            }
        }
        ratios.push((
            s.name,
            runs.iter().map(|r| Result::median(r)).collect::<Vec<_>>(),
        ));
    }
    for (peer, kind) in brokers.iter().enumerate().skip(1) {
        println!();
        println!(
            "Ratios, hass-broker / {}{} (throughput: higher is better; p99, CPU, RSS: lower is better):",
            kind.name(),
            if repeat > 1 {
                format!(", medians of {repeat} runs each")
            } else {
                String::new()
            }
        );
        println!();
        println!("| scenario | throughput | p99 | CPU | peak RSS |");
        println!("|---|---|---|---|---|");
        for (name, medians) in &ratios {
            let (h, m) = (&medians[0], &medians[peer]);
            let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
            println!(
                "| {name} | {:.2}× | {:.2}× | {:.2}× | {:.2}× |",
                ratio(h.throughput, m.throughput),
                ratio(h.p99_us, m.p99_us),
                ratio(h.cpu_s, m.cpu_s),
                ratio(h.peak_rss_mib, m.peak_rss_mib)
            );
        }
    }

    if only.is_some() {
        return;
    }
    println!();
    print_subscribe_latency(&rt, dir.path(), 2000, repeat);
    println!();
    print_idle_connections(&rt, dir.path());
    drop(rt);

    let retained = if quick { 20_000 } else { 100_000 };
    let (elapsed, store) = restore_time(dir.path(), retained);
    println!();
    println!(
        "hass-broker restart with {retained} retained messages ({store}): /readyz 200 after {elapsed:?} (store restored, listener up)"
    );
}
