//! Real parts for the watcher tests: a stand-in Home Assistant HTTP server that
//! checks the bearer token and records every call, an in-process watcher run
//! through the `Component` contract, and condition waits.

// Test helpers unwrap: a failure is a test failure. Not every test file uses
// every helper.
#![allow(clippy::unwrap_used, dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hass_config_watcher::{ConfigWatcher, RunArgs, WatcherConfig};
use hass_runtime::liveness::Liveness;
use hass_runtime::metrics::Metrics;
use hass_runtime::readiness::Readiness;
use hass_runtime::shutdown::Shutdown;
use hass_runtime::{Component, Context, Fatal};
use hass_test_support::{SpawnedBinary, http, openmetrics};
use tokio::task::JoinHandle;

pub const TOKEN: &str = "test-token-abc123";

/// One request the stand-in received.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub body: String,
    pub authorized: bool,
    pub at: Instant,
}

#[derive(Debug, Default)]
struct HaState {
    calls: Vec<Call>,
    /// Answer 401 to everything.
    unauthorized: bool,
    /// Answer this many service calls with 500 before behaving.
    server_errors: u32,
    /// How long each `<domain>/reload` takes.
    reload_delay: Duration,
    in_flight: HashMap<String, usize>,
    max_in_flight: HashMap<String, usize>,
    /// `check_config`'s verdict.
    check_config_valid: bool,
    /// `check_config`'s warnings (another integration's schema errors).
    check_config_warnings: Option<String>,
    /// `GET /api/config`'s `state`.
    core_state: &'static str,
}

/// A Home Assistant stand-in: serves `/api/services`, the reload services,
/// `check_config`, `homeassistant.restart` and persistent notifications.
#[derive(Debug, Clone)]
pub struct StandInHa {
    pub addr: SocketAddr,
    state: Arc<Mutex<HaState>>,
}

/// Domains the stand-in lists, and whether each has `reload`.
const SERVICES: &[(&str, &[&str])] = &[
    (
        "homeassistant",
        &[
            "reload_core_config",
            "restart",
            "check_config",
            "reload_all",
        ],
    ),
    ("automation", &["reload", "trigger", "turn_on"]),
    ("script", &["reload", "turn_on"]),
    ("input_boolean", &["reload", "toggle"]),
    ("mqtt", &["publish", "dump"]),
    ("persistent_notification", &["create", "dismiss"]),
];

impl StandInHa {
    /// Starts on a port the kernel picks.
    pub async fn start() -> Self {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts on `addr` (for "Home Assistant comes up later" tests).
    pub async fn start_on(addr: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(HaState {
            check_config_valid: true,
            check_config_warnings: None,
            core_state: "RUNNING",
            ..HaState::default()
        }));
        let app = Router::new().fallback(handle).with_state(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    /// `domain/service` of every service call, in order.
    pub fn service_calls(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter_map(|c| c.path.strip_prefix("/api/services/").map(str::to_owned))
            .collect()
    }

    /// Service calls whose service is a reload or a restart.
    pub fn reloads(&self) -> Vec<String> {
        self.service_calls()
            .into_iter()
            .filter(|s| s.contains("reload") || s.ends_with("/restart"))
            .collect()
    }

    pub fn count(&self, service: &str) -> usize {
        self.service_calls()
            .iter()
            .filter(|s| *s == service)
            .count()
    }

    pub fn set_unauthorized(&self, on: bool) {
        self.state.lock().unwrap().unauthorized = on;
    }

    pub fn set_server_errors(&self, n: u32) {
        self.state.lock().unwrap().server_errors = n;
    }

    pub fn set_reload_delay(&self, delay: Duration) {
        self.state.lock().unwrap().reload_delay = delay;
    }

    pub fn set_check_config_valid(&self, valid: bool) {
        self.state.lock().unwrap().check_config_valid = valid;
    }

    /// Warnings in `check_config`'s answer, as Home Assistant 2026.11 gives an
    /// integration's schema errors (the config still "valid").
    pub fn set_check_config_warnings(&self, warnings: Option<&str>) {
        self.state.lock().unwrap().check_config_warnings = warnings.map(str::to_owned);
    }

    /// What `GET /api/config` says Home Assistant's state is.
    pub fn set_core_state(&self, state: &'static str) {
        self.state.lock().unwrap().core_state = state;
    }

    pub fn in_flight(&self, domain: &str) -> usize {
        *self
            .state
            .lock()
            .unwrap()
            .in_flight
            .get(domain)
            .unwrap_or(&0)
    }

    pub fn max_in_flight(&self, domain: &str) -> usize {
        *self
            .state
            .lock()
            .unwrap()
            .max_in_flight
            .get(domain)
            .unwrap_or(&0)
    }

    /// Nothing ever reached `/api/` without the token.
    pub fn assert_all_authorized(&self) {
        for call in self.calls() {
            assert!(call.authorized, "call without the token: {call:?}");
        }
    }
}

async fn handle(
    State(state): State<Arc<Mutex<HaState>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let authorized = headers.get("authorization").and_then(|v| v.to_str().ok())
        == Some(format!("Bearer {TOKEN}").as_str());
    let (delay, domain) = {
        let mut s = state.lock().unwrap();
        s.calls.push(Call {
            method: method.to_string(),
            path: path.clone(),
            body: String::from_utf8_lossy(&body).into_owned(),
            authorized,
            at: Instant::now(),
        });
        if !authorized || s.unauthorized {
            return (StatusCode::UNAUTHORIZED, "401: Unauthorized").into_response();
        }
        if path.starts_with("/api/services/") && s.server_errors > 0 {
            s.server_errors -= 1;
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "500 Internal Server Error",
            )
                .into_response();
        }
        match (method.as_str(), path.as_str()) {
            ("GET", "/api/services") => {
                let list: Vec<serde_json::Value> = SERVICES
                    .iter()
                    .map(|(domain, services)| {
                        let services: serde_json::Map<String, serde_json::Value> = services
                            .iter()
                            .map(|s| ((*s).to_owned(), serde_json::json!({"fields": {}})))
                            .collect();
                        serde_json::json!({"domain": domain, "services": services})
                    })
                    .collect();
                return json(serde_json::Value::Array(list));
            }
            ("GET", "/api/config") => {
                return json(serde_json::json!({"state": s.core_state, "version": "2026.11.0"}));
            }
            ("POST", "/api/config/core/check_config") => {
                return json(if s.check_config_valid {
                    serde_json::json!({"result": "valid", "errors": null, "warnings": s.check_config_warnings})
                } else {
                    serde_json::json!({"result": "invalid", "errors": "Integration error: bogus", "warnings": s.check_config_warnings})
                });
            }
            ("POST", p) if p.starts_with("/api/services/") => {
                let rest = &p["/api/services/".len()..];
                let Some((domain, service)) = rest.split_once('/') else {
                    return StatusCode::NOT_FOUND.into_response();
                };
                let known = SERVICES
                    .iter()
                    .any(|(d, services)| *d == domain && services.contains(&service));
                if !known {
                    return (StatusCode::BAD_REQUEST, "Service not found").into_response();
                }
                if service != "reload" {
                    return json(serde_json::json!([]));
                }
                let n = s.in_flight.entry(domain.to_owned()).or_default();
                *n += 1;
                let n = *n;
                let max = s.max_in_flight.entry(domain.to_owned()).or_default();
                *max = (*max).max(n);
                (s.reload_delay, domain.to_owned())
            }
            _ => return StatusCode::NOT_FOUND.into_response(),
        }
    };
    tokio::time::sleep(delay).await;
    *state.lock().unwrap().in_flight.get_mut(&domain).unwrap() -= 1;
    json(serde_json::json!([]))
}

fn json(value: serde_json::Value) -> Response {
    ([("content-type", "application/json")], value.to_string()).into_response()
}

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
