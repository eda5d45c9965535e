//! Real parts for the watcher tests: an in-process watcher run through the
//! `Component` contract, config fixtures, and condition waits. The stand-in
//! Home Assistant is hass-test-support's.

// Test helpers unwrap: a failure is a test failure. Not every test file uses
// every helper.
#![allow(clippy::unwrap_used, dead_code, unreachable_pub)]

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hass_config_watcher::{ConfigWatcher, RunArgs, WatcherConfig};
use hass_runtime::liveness::Liveness;
use hass_runtime::metrics::Metrics;
use hass_runtime::readiness::Readiness;
use hass_runtime::shutdown::Shutdown;
use hass_runtime::{Component, Context, Fatal};
use hass_test_support::{SpawnedBinary, http, openmetrics};
use tokio::task::JoinHandle;

pub use hass_test_support::stand_in_ha::TOKEN;

/// Writes `text` to `root/rel`, creating folders.
pub fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

/// Writes like an editor or Home Assistant's UI: a temp file beside the target,
/// then a rename over it.
pub fn write_atomic(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    let tmp = path.with_file_name(format!("tmp{:08x}", fastrand::u32(..)));
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, &path).unwrap();
}

/// A small config: automations, scripts and an input_boolean in their own files.
pub fn sample_config(root: &Path) {
    write(
        root,
        "configuration.yaml",
        "homeassistant:\n  name: Home\nautomation: !include automations.yaml\nscript: !include scripts.yaml\ninput_boolean: !include input_boolean.yaml\nmqtt:\n  broker: 127.0.0.1\n",
    );
    write(root, "automations.yaml", &automation("first"));
    write(root, "scripts.yaml", "hello:\n  sequence: []\n");
    write(root, "input_boolean.yaml", "guest_mode:\n  name: Guest\n");
}

pub fn automation(id: &str) -> String {
    format!("- id: {id}\n  alias: {id}\n  trigger: []\n  action: []\n")
}

/// A watcher running in this process, through the same `Component` contract
/// the binary uses.
pub struct Running {
    pub ctx: Context,
    task: JoinHandle<Result<(), Fatal>>,
}

impl Running {
    /// Prepares the watcher from `yaml` (its config file) and runs it until it
    /// is ready.
    pub async fn start(yaml: &str) -> Self {
        let config: WatcherConfig = hass_runtime::config::parse_yaml(yaml).unwrap();
        let watcher = ConfigWatcher::prepare(RunArgs::default(), config, None).unwrap();
        let ctx = Context {
            shutdown: Shutdown::new(),
            readiness: Readiness::new(),
            liveness: Liveness::new(),
            metrics: Metrics::new(&ConfigWatcher::INFO),
        };
        let task = tokio::spawn(watcher.run(ctx.clone()));
        let readiness = ctx.readiness.clone();
        eventually("the watcher is ready", Duration::from_secs(10), || {
            let report = readiness.report();
            report.ready && report.checks.contains_key("watch")
        })
        .await;
        Self { ctx, task }
    }

    /// The value of the sample `name{labels}`; 0 when absent.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        openmetrics::sum(&self.ctx.metrics.encode(), name, labels).unwrap_or(0.0)
    }

    /// Stops the watcher and waits for it to drain.
    pub async fn stop(self) {
        self.ctx.shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the watcher stops within 5s")
            .unwrap()
            .unwrap();
        self.ctx
            .shutdown
            .drain(Duration::from_secs(5))
            .await
            .unwrap();
    }
}

/// A watcher config for `root` talking to `ha_url` with the test token, fast
/// timings and extra YAML lines.
pub fn watcher_yaml(root: &Path, ha_url: &str, token_file: &Path, extra: &str) -> String {
    format!(
        "config_dir: {}\nhome_assistant:\n  url: {ha_url}\n  token: {{ file: {} }}\n  retry_initial: 50ms\n  retry_max: 200ms\n  request_timeout: 10s\ndebounce: 200ms\n{extra}",
        root.display(),
        token_file.display()
    )
}

/// Temp dirs for one test: the config folder and the token file.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub token_file: PathBuf,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("config");
        fs::create_dir(&root).unwrap();
        let token_file = dir.path().join("token");
        fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        Self {
            dir,
            root,
            token_file,
        }
    }
}

/// Polls `check` every 10 ms until it holds; panics with `what` after `timeout`.
pub async fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub const WAIT: Duration = Duration::from_secs(15);

/// The built `hass-config-watcher` binary, for tests that run it as kubelet does.
pub fn binary() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_hass-config-watcher"))
}

/// `hass-config-watcher run` on `config`, serving its admin port on `admin`.
pub fn run_command(config: &Path, admin: SocketAddr) -> std::process::Command {
    let mut command = binary();
    command
        .args(["run", "--config"])
        .arg(config)
        .args(["--admin-listen", &admin.to_string()]);
    command
}

/// Spawns the binary with its admin port on port 0, reads the port the
/// kernel gave it from its "started" line, and waits until it is ready there.
pub fn spawn_ready(
    command: impl Fn(SocketAddr) -> std::process::Command,
) -> (SpawnedBinary, SocketAddr) {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut watcher = SpawnedBinary::spawn(command(any)).unwrap();
    let admin = watcher
        .logged_addr(" started ", "admin", Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("the watcher never said where it listens: {e}"));
    watcher
        .wait_ready(admin, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("the watcher never became ready: {e}"));
    let readyz = http::get(admin, "/readyz").unwrap();
    assert!(readyz.body.contains("ok watch"), "{}", readyz.body);
    (watcher, admin)
}
