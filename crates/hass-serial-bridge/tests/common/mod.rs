//! Shared helpers for the bridge's integration tests: the bridge binary with
//! a YAML config, and metric and data helpers. The stick is
//! hass-test-support's `PtyPair`.

// Each test binary uses a subset of these helpers.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

pub(crate) use hass_test_support::PtyPair;
use hass_test_support::{SpawnedBinary, free_addr, http, openmetrics, wait_for};
use tempfile::TempDir;

pub(crate) mod fake_sysfs;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_hass-serial-bridge");

/// The bridge binary running with a config file written for the test.
#[derive(Debug)]
pub(crate) struct Bridge {
    pub(crate) process: SpawnedBinary,
    pub(crate) admin: SocketAddr,
    pub(crate) config: PathBuf,
    _dir: TempDir,
}

impl Bridge {
    /// Starts the bridge with `yaml` as `bridge.yaml`; does not wait for ready.
    pub(crate) fn start(yaml: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("bridge.yaml");
        std::fs::write(&config, yaml).expect("write config");
        let admin = free_addr();
        let mut command = Command::new(BIN);
        command
            .arg("--config")
            .arg(&config)
            .arg("--admin-listen")
            .arg(admin.to_string())
            .env("RUST_LOG", "info");
        let process = SpawnedBinary::spawn(command).expect("spawn the bridge");
        Self {
            process,
            admin,
            config,
            _dir: dir,
        }
    }

    /// One device `zigbee` on `stick`, listening on a free port.
    pub(crate) fn one_device(device: &Path, extra: &str) -> (Self, SocketAddr) {
        let listen = free_addr();
        let yaml = format!(
            "devices:\n  - name: zigbee\n    path: {}\n    listen: {listen}\n{extra}",
            device.display()
        );
        (Self::start(&yaml), listen)
    }

    pub(crate) fn wait_ready(&mut self) {
        self.process
            .wait_ready(self.admin, Duration::from_secs(10))
            .expect("bridge ready");
    }

    pub(crate) fn readyz(&self) -> http::Reply {
        http::get(self.admin, "/readyz").expect("GET /readyz")
    }

    /// The value of `name` for `device="zigbee"` and `labels` (e.g.
    /// `[("reason", "busy")]`), from `/metrics`; for polling.
    pub(crate) fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.device_metric("zigbee", name, labels)
    }

    /// The value of `name` for `device` and `labels`.
    pub(crate) fn device_metric(&self, device: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = http::get(self.admin, "/metrics")
            .expect("GET /metrics")
            .body;
        let mut all = vec![("device", device)];
        all.extend_from_slice(labels);
        openmetrics::sum(&text, name, &all)
            .unwrap_or_else(|| panic!("no {name}{all:?} in /metrics:\n{text}"))
    }

    /// Waits until `name` for `device="zigbee"` reaches `value`.
    pub(crate) fn wait_metric(&self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.wait_metric_of("zigbee", name, labels, value);
    }

    /// Waits until `name` for `device` reaches `value`.
    pub(crate) fn wait_metric_of(
        &self,
        device: &str,
        name: &str,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        let reached = wait_for(Duration::from_secs(10), || {
            (self.device_metric(device, name, labels) == value).then_some(())
        });
        assert!(
            reached.is_some(),
            "{name}{{device=\"{device}\",{labels:?}}} is {} not {value} after 10 s; stderr:\n{}",
            self.device_metric(device, name, labels),
            self.process.stderr()
        );
    }
}

/// Deterministic pseudo-random bytes (xorshift), different per seed.
pub(crate) fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Plays the stick: writes `send` and reads `expect` bytes at the same time.
/// The result arrives on the channel, so a test can bound the wait.
pub(crate) fn play_stick(peer: File, send: Vec<u8>, expect: usize) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    let mut writer = peer.try_clone().expect("clone pty handle");
    thread::spawn(move || {
        // The bridge may close the line mid-test; the reader's result tells.
        let _ = writer.write_all(&send);
    });
    let mut reader = peer;
    thread::spawn(move || {
        let mut got = vec![0u8; expect];
        let mut filled = 0;
        while filled < expect {
            match reader.read(&mut got[filled..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => filled += n,
            }
        }
        got.truncate(filled);
        let _ = tx.send(got);
    });
    rx
}

/// Reads from `stream` until `n` bytes or the stream ends.
pub(crate) fn read_exactly(stream: &mut impl Read, n: usize) -> Vec<u8> {
    let mut got = vec![0u8; n];
    let mut filled = 0;
    while filled < n {
        match stream.read(&mut got[filled..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => filled += k,
        }
    }
    got.truncate(filled);
    got
}

/// A short, readable description of where two byte strings differ.
pub(crate) fn first_difference(a: &[u8], b: &[u8]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!("first difference at byte {i} of {}/{}", a.len(), b.len()),
        None => format!("lengths {} and {}", a.len(), b.len()),
    }
}

/// A client of the bridge whose reads give up after `read_timeout`, so a
/// bridge that stops forwarding fails the test instead of hanging it.
pub(crate) fn connect(addr: SocketAddr, read_timeout: Duration) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect to the bridge");
    stream
        .set_read_timeout(Some(read_timeout))
        .expect("set a read timeout");
    stream
}

/// Addresses inside the test's own namespaces only.
pub(crate) const BRIDGE_IP: &str = "10.213.77.1";
pub(crate) const CLIENT_IP: &str = "10.213.77.2";

/// Two network namespaces joined by a veth pair (the bridge's host and a
/// client's), for what crosses a network; deleted on drop. Needs root (as
/// CI runs) and iproute2.
pub(crate) struct NetnsPair {
    pub(crate) bridge_ns: String,
    pub(crate) client_ns: String,
    /// Each side's end of the veth pair.
    bridge_veth: String,
    client_veth: String,
}

pub(crate) fn ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .expect("cannot run `ip`: install iproute2 (and run as root)");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl NetnsPair {
    pub(crate) fn new(tag: &str) -> Self {
        let id = std::process::id();
        // Interface names must stay under 16 bytes.
        let veth_b = format!("hsb{id}{tag}b");
        let veth_c = format!("hsb{id}{tag}c");
        let pair = Self {
            bridge_ns: format!("hsb-{id}-{tag}-b"),
            client_ns: format!("hsb-{id}-{tag}-c"),
            bridge_veth: veth_b.clone(),
            client_veth: veth_c.clone(),
        };
        let (b, c) = (pair.bridge_ns.as_str(), pair.client_ns.as_str());
        ip(&["netns", "add", b]);
        ip(&["netns", "add", c]);
        ip(&[
            "link", "add", &veth_b, "netns", b, "type", "veth", "peer", "name", &veth_c, "netns", c,
        ]);
        for (ns, dev, addr) in [(b, &veth_b, BRIDGE_IP), (c, &veth_c, CLIENT_IP)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/30"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    /// Multicast (mDNS) between the two: a route for 224.0.0.0/4 on each
    /// side's veth, as a LAN has.
    pub(crate) fn route_multicast(&self) {
        for (ns, dev) in [
            (&self.bridge_ns, &self.bridge_veth),
            (&self.client_ns, &self.client_veth),
        ] {
            ip(&["-n", ns, "route", "add", "224.0.0.0/4", "dev", dev]);
        }
    }

    /// The client's packets stop: no FIN, no RST, nothing.
    pub(crate) fn blackhole_client(&self) {
        ip(&[
            "-n",
            &self.client_ns,
            "link",
            "set",
            &self.client_veth,
            "down",
        ]);
    }

    pub(crate) fn exec(&self, ns: &str, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns, program]);
        command
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.bridge_ns, &self.client_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}
