//! A real hass-broker process for tests, with a real password file made by
//! `mosquitto_passwd`, and the paho-mqtt client Home Assistant uses.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use hass_test_support::{Restartable, SpawnedBinary, http, openmetrics};
use tempfile::TempDir;

pub const USER: &str = "homeassistant";
pub const PASSWORD: &str = "s3cret-Pa55";

pub struct TestBroker {
    pub dir: TempDir,
    pub mqtt: SocketAddr,
    pub ws: SocketAddr,
    pub admin: SocketAddr,
    pub process: Restartable,
}

impl TestBroker {
    /// Starts a broker with `extra` appended to its YAML config.
    pub fn start(extra: &str) -> Self {
        Self::start_with_files(&[], "", extra)
    }

    /// Like `start`, with files written into the broker's directory first,
    /// and `listeners` lines added under `listeners:`; `{dir}` in `extra`
    /// stands for that directory.
    pub fn start_with_files(files: &[(&str, &str)], listeners: &str, extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).expect("test file");
        }
        let extra = extra.replace("{dir}", &dir.path().display().to_string());
        let passwd = dir.path().join("passwd");
        hass_test_support::mosquitto::add_user(&passwd, USER, PASSWORD);
        // Port 0: the kernel picks each port, the broker logs it, and the
        // first launch writes them into the config for restarts to keep.
        let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
        let config = format!(
            "data_dir: {data}\npassword_file: {passwd}\nlisteners:\n  mqtt: {any}\n  ws: {any}\n{listeners}{extra}",
            data = dir.path().join("data").display(),
            passwd = passwd.display(),
        );
        std::fs::write(dir.path().join("broker.yaml"), config).expect("config");
        let mut broker = Self {
            dir,
            mqtt: any,
            ws: any,
            admin: any,
            process: Restartable::default(),
        };
        broker.launch();
        broker
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("broker.yaml")
    }

    fn launch(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hass-broker"));
        cmd.arg("--config")
            .arg(self.config_path())
            .arg("--admin-listen")
            .arg(self.admin.to_string())
            .env("RUST_LOG", "info");
        let mut process = SpawnedBinary::spawn(cmd).expect("spawn hass-broker");
        if self.admin.port() == 0 {
            let logged = |process: &mut SpawnedBinary, message: &str, field: &str| {
                process
                    .logged_addr(message, field, Duration::from_secs(20))
                    .expect("the broker logs where it listens")
            };
            self.admin = logged(&mut process, " started ", "admin");
            self.mqtt = logged(&mut process, "MQTT listener up", "address");
            self.ws = logged(&mut process, "MQTT over WebSocket listener up", "address");
            let config = std::fs::read_to_string(self.config_path()).expect("config");
            let config = config
                .replacen(
                    "  mqtt: 127.0.0.1:0\n",
                    &format!("  mqtt: {}\n", self.mqtt),
                    1,
                )
                .replacen("  ws: 127.0.0.1:0\n", &format!("  ws: {}\n", self.ws), 1);
            std::fs::write(self.config_path(), config).expect("config");
        }
        process
            .wait_ready(self.admin, Duration::from_secs(20))
            .expect("broker ready");
        self.process.started(process);
    }

    /// SIGKILL: no flush, no goodbye, as an OOM kill or node loss.
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    pub fn restart(&mut self) {
        self.launch();
    }

    /// SIGTERM and the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        self.process.stop()
    }

    pub fn stderr(&self) -> String {
        self.process.logs()
    }

    /// Adds or changes a user in the password file with `mosquitto_passwd`.
    pub fn set_password(&self, user: &str, password: &str) {
        hass_test_support::mosquitto::add_user(&self.dir.path().join("passwd"), user, password);
    }

    /// Runs the paho helper as `user`.
    pub fn paho_as(
        &self,
        protocol: u8,
        user: &str,
        password: &str,
        args: &[&str],
    ) -> serde_json::Value {
        let mut all = vec!["--user", user, "--password", password];
        all.extend_from_slice(args);
        self.paho(protocol, false, &all)
    }

    /// Runs the paho helper with `args` after the connection flags.
    pub fn paho(&self, protocol: u8, auth: bool, args: &[&str]) -> serde_json::Value {
        self.paho_on(self.mqtt.port(), protocol, auth, args)
    }

    /// Runs the paho helper against `port` (the WebSocket one, with
    /// `--transport websockets` in `args`).
    pub fn paho_on(&self, port: u16, protocol: u8, auth: bool, args: &[&str]) -> serde_json::Value {
        let output = self
            .paho_command(port, protocol, auth, args)
            .output()
            .expect("python3");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "paho {args:?} failed: {}\n{stdout}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("paho output {stdout:?}: {e}"))
    }

    /// Starts a paho `subscribe` (`args`) and returns once every filter
    /// is acknowledged; `finish()` gives what it received.
    pub fn paho_subscribed(
        &self,
        protocol: u8,
        auth: bool,
        args: &[&str],
    ) -> hass_test_support::paho::Subscribed {
        self.paho_subscribed_on(self.mqtt.port(), protocol, auth, args)
    }

    /// [`TestBroker::paho_subscribed`] on `port` (TLS, WebSockets).
    pub fn paho_subscribed_on(
        &self,
        port: u16,
        protocol: u8,
        auth: bool,
        args: &[&str],
    ) -> hass_test_support::paho::Subscribed {
        hass_test_support::paho::Subscribed::spawn(self.paho_command(port, protocol, auth, args))
    }

    fn paho_command(&self, port: u16, protocol: u8, auth: bool, args: &[&str]) -> Command {
        let mut cmd = Command::new("python3");
        cmd.arg(hass_test_support::paho::script())
            .args(["--port", &port.to_string()])
            .args(["--protocol", &protocol.to_string()]);
        if auth {
            cmd.args(["--user", USER, "--password", PASSWORD]);
        }
        cmd.args(args);
        cmd
    }

    /// The broker's metrics, parsed by the reference OpenMetrics parser.
    pub fn metrics(&self) -> Vec<openmetrics::Family> {
        let reply = http::get(self.admin, "/metrics").expect("metrics");
        openmetrics::parse(&reply.body).expect("valid OpenMetrics")
    }

    pub fn metric(&self, family: &str, label: Option<(&str, &str)>) -> f64 {
        let families = self.metrics();
        let Some(found) = openmetrics::find(&families, family) else {
            return 0.0;
        };
        found
            .samples
            .iter()
            .filter(|s| !s.name.ends_with("_created"))
            .filter(|s| label.is_none_or(|(k, v)| s.labels.get(k).map(String::as_str) == Some(v)))
            .map(|s| s.value)
            .sum()
    }

    /// Waits (up to 10 s) until `family`'s value, labelled `label`,
    /// satisfies `until`; whether it did.
    pub fn await_metric(
        &self,
        family: &str,
        label: Option<(&str, &str)>,
        until: impl Fn(f64) -> bool,
    ) -> bool {
        hass_test_support::wait_for(std::time::Duration::from_secs(10), || {
            until(self.metric(family, label)).then_some(())
        })
        .is_some()
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A CONNECT packet (MQTT 3.1.1 unless `level` says otherwise) with the
/// test credentials and a clean session.
pub fn connect_packet(name: &[u8], level: u8, client_id: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(name.len() as u16).to_be_bytes());
    body.extend_from_slice(name);
    body.push(level);
    body.push(0b1100_0010); // username, password, clean session
    body.extend_from_slice(&60u16.to_be_bytes());
    if level == 5 {
        body.push(0); // no properties
    }
    for field in [client_id.as_bytes(), USER.as_bytes(), PASSWORD.as_bytes()] {
        body.extend_from_slice(&(field.len() as u16).to_be_bytes());
        body.extend_from_slice(field);
    }
    frame(0x10, body)
}

/// A QoS 0 PUBLISH.
pub fn publish_packet(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    body.extend_from_slice(topic.as_bytes());
    body.extend_from_slice(payload);
    frame(0x30, body)
}

/// A SUBSCRIBE for one filter at `qos`.
pub fn subscribe_packet(filter: &str, qos: u8) -> Vec<u8> {
    let mut body = vec![0x00, 0x01];
    body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    body.extend_from_slice(filter.as_bytes());
    body.push(qos);
    frame(0x82, body)
}

pub fn frame(first: u8, body: Vec<u8>) -> Vec<u8> {
    let mut packet = vec![first];
    packet.extend(remaining_length(body.len()));
    packet.extend(body);
    packet
}

pub fn remaining_length(mut len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            return out;
        }
    }
}

/// Peak resident memory of a process, from /proc, in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    proc_status_bytes(pid, "VmHWM:")
}

/// Asserts that a process's peak resident memory is less than `limit_mib`
/// MiB above `before` (its RSS when the test began), and prints both.
pub fn assert_peak_rss_grew_less_than(pid: u32, before: u64, limit_mib: u64) {
    let peak = peak_rss(pid);
    eprintln!("RSS {} MiB before, peak {} MiB", before >> 20, peak >> 20);
    assert!(
        peak < before + (limit_mib << 20),
        "peak RSS {} MiB from {} MiB",
        peak >> 20,
        before >> 20
    );
}

/// Resident memory of a process now, from /proc, in bytes.
pub fn rss(pid: u32) -> u64 {
    proc_status_bytes(pid, "VmRSS:")
}

fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
        * 1024
}

/// A will for [`RawClient::connect`]: topic, payload, QoS, retain.
pub struct Will<'a>(pub &'a str, pub &'a [u8], pub u8, pub bool);

/// An MQTT client written byte by byte, for what real clients never do
/// (stop reading, send half a packet) and to read exactly what the broker
/// answers, in order, before the next step.
pub struct RawClient {
    pub stream: std::net::TcpStream,
    pub level: u8,
}

impl RawClient {
    /// Connects and returns the CONNACK's reason code (MQTT 3.1.1: the
    /// return code) with the client, whatever the code.
    pub fn connect(
        addr: SocketAddr,
        level: u8,
        client_id: &str,
        login: Option<(&str, &str)>,
        will: Option<Will<'_>>,
    ) -> (u8, Self) {
        let stream = std::net::TcpStream::connect(addr).expect("connect");
        Self::over(stream, level, client_id, login, will)
    }

    /// Like [`RawClient::connect`], for a persistent session: MQTT 3.1.1
    /// `clean_session = 0`, MQTT 5 an hour's Session Expiry Interval.
    pub fn connect_persistent(
        addr: SocketAddr,
        level: u8,
        client_id: &str,
        login: Option<(&str, &str)>,
    ) -> (u8, Self) {
        let stream = std::net::TcpStream::connect(addr).expect("connect");
        Self::handshake(stream, level, client_id, login, None, true)
    }

    /// Like [`RawClient::connect`], on a stream already open.
    pub fn over(
        stream: std::net::TcpStream,
        level: u8,
        client_id: &str,
        login: Option<(&str, &str)>,
        will: Option<Will<'_>>,
    ) -> (u8, Self) {
        Self::handshake(stream, level, client_id, login, will, false)
    }

    fn handshake(
        stream: std::net::TcpStream,
        level: u8,
        client_id: &str,
        login: Option<(&str, &str)>,
        will: Option<Will<'_>>,
        persistent: bool,
    ) -> (u8, Self) {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        let mut client = Self { stream, level };
        // Clean session / clean start, unless persistent.
        let mut flags = if persistent { 0 } else { 0b0000_0010 };
        let mut body = Vec::new();
        body.extend_from_slice(&4u16.to_be_bytes());
        body.extend_from_slice(b"MQTT");
        body.push(level);
        if login.is_some() {
            flags |= 0b1100_0000;
        }
        if let Some(Will(_, _, qos, retain)) = &will {
            flags |= 0b100 | (qos << 3) | (u8::from(*retain) << 5);
        }
        body.push(flags);
        body.extend_from_slice(&60u16.to_be_bytes());
        match (level, persistent) {
            (5, true) => body.extend_from_slice(&[5, 0x11, 0, 0, 0x0e, 0x10]),
            (5, false) => body.push(0),
            _ => {}
        }
        let string = |body: &mut Vec<u8>, field: &[u8]| {
            body.extend_from_slice(&(field.len() as u16).to_be_bytes());
            body.extend_from_slice(field);
        };
        string(&mut body, client_id.as_bytes());
        if let Some(Will(topic, payload, _, _)) = will {
            if level == 5 {
                body.push(0);
            }
            string(&mut body, topic.as_bytes());
            string(&mut body, payload);
        }
        if let Some((user, password)) = login {
            string(&mut body, user.as_bytes());
            string(&mut body, password.as_bytes());
        }
        client.send(&frame(0x10, body));
        let (kind, body) = client.read_packet().expect("CONNACK");
        assert_eq!(kind >> 4, 2, "expected CONNACK, got {kind:#x}");
        (body[1], client)
    }

    pub fn send(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.stream.write_all(bytes).expect("send");
    }

    /// The next packet's first byte and body; `None` when the broker closed
    /// the connection.
    pub fn read_packet(&mut self) -> Option<(u8, Vec<u8>)> {
        use std::io::Read;
        let mut first = [0u8; 1];
        match self.stream.read_exact(&mut first) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("no packet and no close: {e}"),
        }
        let mut len = 0usize;
        for shift in (0..28).step_by(7) {
            let mut byte = [0u8; 1];
            self.stream.read_exact(&mut byte).ok()?;
            len |= usize::from(byte[0] & 0x7f) << shift;
            if byte[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body).ok()?;
        Some((first[0], body))
    }

    /// SUBSCRIBE and the SUBACK's granted codes.
    pub fn subscribe(&mut self, filter: &str, qos: u8) -> Vec<u8> {
        self.subscribe_all(&[filter], qos)
    }

    /// One SUBSCRIBE of every filter, and the SUBACK's codes, one a filter.
    pub fn subscribe_all<F: AsRef<str>>(&mut self, filters: &[F], qos: u8) -> Vec<u8> {
        let mut body = vec![0x00, 0x01];
        if self.level == 5 {
            body.push(0);
        }
        for filter in filters {
            let filter = filter.as_ref();
            body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
            body.extend_from_slice(filter.as_bytes());
            body.push(qos);
        }
        self.send(&frame(0x82, body));
        loop {
            let (kind, body) = self.read_packet().expect("SUBACK");
            if kind >> 4 == 9 {
                let skip = if self.level == 5 {
                    3 + usize::from(body[2])
                } else {
                    2
                };
                return body[skip..].to_vec();
            }
        }
    }

    /// PINGREQ answered by PINGRESP: the connection is alive and served.
    pub fn ping(&mut self) -> bool {
        self.send(&[0xc0, 0]);
        loop {
            match self.read_packet() {
                Some((0xd0, _)) => return true,
                Some(_) => {}
                None => return false,
            }
        }
    }

    /// Reads until the broker closes the connection; returns the reason code
    /// of the DISCONNECT it sent first, if any.
    pub fn until_closed(&mut self) -> Option<u8> {
        let mut reason = None;
        while let Some((kind, body)) = self.read_packet() {
            if kind >> 4 == 14 {
                reason = Some(body.first().copied().unwrap_or(0));
            }
        }
        reason
    }
}

/// Reads what the broker sent on `stream` up to the first packet of `kind`
/// (the type nibble: 2 CONNACK, 9 SUBACK), so the next step starts after the
/// broker acted on what came before. Sets a 10 s read timeout on the socket.
pub fn await_packet(stream: &std::net::TcpStream, kind: u8) {
    let stream = stream.try_clone().expect("clone");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut reader = RawClient { stream, level: 4 };
    loop {
        let (got, _) = reader
            .read_packet()
            .expect("the broker closed the connection");
        if got >> 4 == kind {
            return;
        }
    }
}

/// A TCP connection to `to` from the loopback address `from` (127.0.0.2 and
/// up are all this machine's), to be another client address to the broker.
pub fn connect_from(from: std::net::Ipv4Addr, to: SocketAddr) -> std::net::TcpStream {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket};
    let SocketAddr::V4(to) = to else {
        panic!("IPv4 only")
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(std::net::SocketAddrV4::new(from, 0)),
    )
    .expect("bind the source address");
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(to)).expect("connect");
    std::net::TcpStream::from(fd)
}

/// Publishes a retained QoS 1 message with mosquitto_pub as the test user
/// to the broker on `port` (hass-broker or Mosquitto); the payload goes
/// through a file in `dir` so any bytes pass. `extra` adds flags
/// (`-V mqttv5`, a content type).
pub fn mosquitto_pub_retained(
    dir: &std::path::Path,
    port: u16,
    topic: &str,
    payload: &[u8],
    extra: &[&str],
) {
    let file = dir.join("payload");
    std::fs::write(&file, payload).expect("payload file");
    let status = Command::new("mosquitto_pub")
        .args(["-p", &port.to_string(), "-u", USER, "-P", PASSWORD])
        .args(extra)
        .args(["-q", "1", "-r", "-t", topic, "-f"])
        .arg(&file)
        .status()
        .expect("mosquitto_pub");
    assert!(status.success(), "mosquitto_pub {topic}");
}
