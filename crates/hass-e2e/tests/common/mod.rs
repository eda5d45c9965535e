//! The parts of a pod for end-to-end tests: the built sidecar binaries (found
//! with `workspace_binary`, so `cargo build --workspace --bins` must have run
//! into the same target dir), a replugable pty stick, a PostgreSQL that can
//! be killed and restarted, a stand-in Home Assistant, and real MQTT clients.

// Test helpers: a failure is a test failure. Not every test uses every helper.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub use hass_test_support::PtyPair;
use hass_test_support::binary::workspace_binary;
use hass_test_support::{Restartable, SpawnedBinary, free_addr, http, wait_for};
use tempfile::TempDir;

pub const MQTT_USER: &str = "homeassistant";
pub const MQTT_PASSWORD: &str = "e2e-Pa55-word";
pub use hass_test_support::stand_in_ha::TOKEN as HA_TOKEN;

/// The budget for a flip the exporter must report: its probes run every
/// second here, so a flip shows within one Prometheus scrape (15 s default)
/// with a wide margin.
pub const FLIP: Duration = Duration::from_secs(8);

/// A sidecar binary that can be killed and started again with the same flags.
#[derive(Debug)]
pub struct Sidecar {
    pub name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    pub admin: SocketAddr,
    process: Restartable,
}

impl Sidecar {
    /// Resident memory and CPU time so far; `None` when not running.
    pub fn usage(&self) -> Option<(u64, Duration)> {
        self.process.running()?.usage()
    }

    /// Starts `hass-<name>` with `args` plus `--admin-listen` on a free port,
    /// and waits until its `/readyz` says ready.
    pub fn start(name: &'static str, args: &[&str]) -> Self {
        let mut sidecar = Self::spawn(name, args);
        sidecar.wait_ready();
        sidecar
    }

    /// Like `start`, without waiting for ready.
    pub fn spawn(name: &'static str, args: &[&str]) -> Self {
        let program = workspace_binary(&format!("hass-{name}")).unwrap_or_else(|e| panic!("{e}"));
        let mut sidecar = Self {
            name,
            program,
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            admin: free_addr(),
            process: Restartable::default(),
        };
        sidecar.launch();
        sidecar
    }

    fn launch(&mut self) {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .arg("--admin-listen")
            .arg(self.admin.to_string())
            .env("RUST_LOG", "info");
        self.process
            .started(SpawnedBinary::spawn(cmd).expect("spawn sidecar"));
    }

    pub fn wait_ready(&mut self) {
        let admin = self.admin;
        let name = self.name;
        self.process
            .running_mut()
            .expect("running")
            .wait_ready(admin, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("hass-{name}: {e}"));
    }

    /// Starts it again on the same ports and waits for ready.
    pub fn restart(&mut self) {
        self.launch();
        self.wait_ready();
    }

    /// SIGKILL: no drain, no flush, as an OOM kill.
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// SIGTERM; the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        self.process.stop()
    }

    pub fn logs(&self) -> String {
        self.process.logs()
    }

    pub fn readyz(&self) -> Option<http::Reply> {
        http::get(self.admin, "/readyz").ok()
    }

    /// The sum of the samples of `name` matching `labels`; None when absent
    /// or when the admin port does not answer.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let reply = http::get(self.admin, "/metrics").ok()?;
        hass_test_support::openmetrics::sum(&reply.body, name, labels)
    }

    /// Waits until `name{labels}` is `value`; returns how long it took.
    pub fn wait_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        value: f64,
        timeout: Duration,
    ) -> Duration {
        let started = Instant::now();
        let reached = wait_for(timeout, || {
            (self.metric(name, labels) == Some(value)).then_some(())
        });
        assert!(
            reached.is_some(),
            "{name}{labels:?} is {:?}, not {value}, after {timeout:?}; hass-{} log:\n{}",
            self.metric(name, labels),
            self.name,
            self.logs()
        );
        started.elapsed()
    }
}

// ---------------------------------------------------------------------------
// Broker

/// hass-broker with a Mosquitto password file made by `mosquitto_passwd`.
#[derive(Debug)]
pub struct Broker {
    pub dir: TempDir,
    pub mqtt: SocketAddr,
    pub sidecar: Sidecar,
}

impl Broker {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let passwd = dir.path().join("passwd");
        hass_test_support::mosquitto::add_user(&passwd, MQTT_USER, MQTT_PASSWORD);
        let mqtt = free_addr();
        let config = dir.path().join("broker.yaml");
        std::fs::write(
            &config,
            format!(
                "data_dir: {}\npassword_file: {}\nlisteners:\n  mqtt: {mqtt}\n  ws: null\n",
                dir.path().join("data").display(),
                passwd.display()
            ),
        )
        .unwrap();
        let sidecar = Sidecar::start("broker", &["--config", config.to_str().unwrap()]);
        Self { dir, mqtt, sidecar }
    }
}

/// Runs hass-test-support's paho client (paho-mqtt, as Home Assistant)
/// with the e2e user; its JSON answer.
fn paho(port: u16, args: &[&str]) -> serde_json::Value {
    let output = Command::new("python3")
        .arg(hass_test_support::paho::script())
        .args(["--port", &port.to_string()])
        .args(["--user", MQTT_USER, "--password", MQTT_PASSWORD])
        .args(args)
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "paho {args:?}: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("paho output {stdout:?}: {e}"))
}

/// Publishes `payload` at QoS 1 and returns once the broker acknowledged it.
pub fn paho_publish(port: u16, topic: &str, payload: &str, retain: bool) {
    let mut args = vec![
        "publish-many",
        "--topic",
        topic,
        "--payload",
        payload,
        "--qos",
        "1",
    ];
    if retain {
        args.push("--retain");
    }
    let answer = paho(port, &args);
    assert_eq!(answer["acked"], 1, "{topic}: {answer}");
}

/// Subscribes to `filters` (each SUBACKed) and returns the messages once
/// `expect` have arrived (or after 10 s, with what came):
/// `[{"topic", "payload", "retain", "qos"}]`.
pub fn paho_subscribe(port: u16, filters: &[&str], expect: usize) -> serde_json::Value {
    let expect = expect.to_string();
    let mut args = vec![
        "subscribe",
        "--qos",
        "1",
        "--expect",
        &expect,
        "--timeout",
        "10",
        "--show",
    ];
    for filter in filters {
        args.extend(["--filter", filter]);
    }
    paho(port, &args)["messages"].clone()
}

// ---------------------------------------------------------------------------
// Stick and bridge

/// hass-serial-bridge serving `stick` as device `zigbee`.
#[derive(Debug)]
pub struct Bridge {
    _dir: TempDir,
    pub listen: SocketAddr,
    pub sidecar: Sidecar,
}

impl Bridge {
    pub fn start(stick: &PtyPair) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let listen = free_addr();
        let config = dir.path().join("bridge.yaml");
        std::fs::write(
            &config,
            format!(
                "devices:\n  - name: zigbee\n    path: {}\n    listen: {listen}\n",
                stick.device().display()
            ),
        )
        .unwrap();
        let sidecar = Sidecar::start("serial-bridge", &["--config", config.to_str().unwrap()]);
        Self {
            _dir: dir,
            listen,
            sidecar,
        }
    }
}

/// Reads exactly `n` bytes, or panics after 10 s.
pub fn read_exactly(from: &mut impl std::io::Read, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    from.read_exact(&mut buf).expect("read the expected bytes");
    buf
}

/// Writes `text` to `root/rel`, creating folders.
pub fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A token file for the sidecars that call Home Assistant.
pub fn token_file(dir: &Path) -> PathBuf {
    let path = dir.join("ha-token");
    std::fs::write(&path, format!("{HA_TOKEN}\n")).unwrap();
    path
}
