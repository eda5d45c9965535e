//! A stand-in for Home Assistant's REST API, for the faults a real Home
//! Assistant cannot be made to show on demand: a hung or crashed server, a
//! 401, 500s, slow reloads, a failing `check_config`. Tests whose outcome
//! depends on what Home Assistant itself does use `home_assistant` instead.
//!
//! It answers as Home Assistant 2026.11 does what the sidecars ask:
//! `/manifest.json` without a token; with the bearer token `/api/core/state`,
//! `/api/config`, `/api/states`, `/api/services`, service calls (a reload
//! takes `reload_delay`), and `check_config`. Every request is recorded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

/// The long-lived access token the stand-in accepts unless told otherwise.
pub const TOKEN: &str = "stand-in-long-lived-token-0123456789";

/// How the stand-in answers; change it with [`StandInHa::set`].
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// Home Assistant's state (`RUNNING`, `STARTING`, `NOT_RUNNING`, …) in
    /// `/api/core/state` and `/api/config`.
    pub state: String,
    /// `Some((in_progress, is_live))` adds the recorder's migration state to
    /// `/api/core/state`.
    pub recorder_state: Option<(bool, bool)>,
    pub version: String,
    /// The bearer token it accepts.
    pub token: String,
    /// 401 to every `/api/` call, whatever the token.
    pub unauthorized: bool,
    /// Delay before every answer.
    pub delay: Duration,
    /// The next this many service calls answer 500.
    pub server_errors: u32,
    /// How long each `<domain>.reload` takes.
    pub reload_delay: Duration,
    /// `check_config`'s verdict, and its warnings (another integration's
    /// schema errors, with the config still valid).
    pub check_config_valid: bool,
    pub check_config_warnings: Option<String>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            state: "RUNNING".to_owned(),
            recorder_state: None,
            version: "2026.11.0".to_owned(),
            token: TOKEN.to_owned(),
            unauthorized: false,
            delay: Duration::ZERO,
            server_errors: 0,
            reload_delay: Duration::ZERO,
            check_config_valid: true,
            check_config_warnings: None,
        }
    }
}

/// One request the stand-in received.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub body: String,
    pub authorization: Option<String>,
    /// It carried the bearer token the stand-in accepts.
    pub authorized: bool,
    pub at: Instant,
}

/// Domains the stand-in lists in `/api/services`, with their services.
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

const STATES: &str = r#"[
  {"entity_id":"light.kitchen","state":"on","attributes":{}},
  {"entity_id":"light.hall","state":"unavailable","attributes":{}},
  {"entity_id":"light.porch","state":"off","attributes":{}},
  {"entity_id":"sensor.temp","state":"21.5","attributes":{"unit_of_measurement":"°C"}},
  {"entity_id":"sensor.humidity","state":"unavailable","attributes":{}},
  {"entity_id":"sun.sun","state":"above_horizon","attributes":{}}
]"#;

#[derive(Debug, Default)]
struct Shared {
    behaviour: Behaviour,
    calls: Vec<Call>,
    in_flight: HashMap<String, usize>,
    max_in_flight: HashMap<String, usize>,
}

type SharedState = Arc<Mutex<Shared>>;

/// The stand-in on its own runtime (so sync and async tests alike can hold
/// it); `set_down(true)` stops it as a crashed pod: connections refused,
/// keep-alive connections gone.
#[derive(Debug)]
pub struct StandInHa {
    pub addr: SocketAddr,
    shared: SharedState,
    runtime: Option<tokio::runtime::Runtime>,
}

impl StandInHa {
    /// On a port the kernel picks.
    pub fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the stand-in");
        let addr = listener.local_addr().expect("bound address");
        let mut ha = Self {
            addr,
            shared: SharedState::default(),
            runtime: None,
        };
        ha.serve(listener);
        ha
    }

    /// On a fixed address: Home Assistant's own 127.0.0.1:8123 for a pod on
    /// the host's network, or one a sidecar was told before it came up.
    pub fn start_on(addr: SocketAddr) -> Self {
        let mut ha = Self {
            addr,
            shared: SharedState::default(),
            runtime: None,
        };
        ha.set_down(false);
        ha
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes how it answers from the next request on.
    pub fn set(&self, change: impl FnOnce(&mut Behaviour)) {
        change(&mut self.lock().behaviour);
    }

    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// `domain/service` of every service call, in order.
    pub fn service_calls(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == "POST")
            .filter_map(|c| c.path.strip_prefix("/api/services/").map(str::to_owned))
            .collect()
    }

    /// The service calls that reload or restart, in order.
    pub fn reloads(&self) -> Vec<String> {
        self.service_calls()
            .into_iter()
            .filter(|s| s.contains("reload") || s.ends_with("/restart"))
            .collect()
    }

    /// How many times `domain/service` was called.
    pub fn count(&self, service: &str) -> usize {
        self.service_calls()
            .iter()
            .filter(|s| *s == service)
            .count()
    }

    /// Reloads of `domain` running now, and the most ever at once.
    pub fn in_flight(&self, domain: &str) -> usize {
        self.lock().in_flight.get(domain).copied().unwrap_or(0)
    }

    pub fn max_in_flight(&self, domain: &str) -> usize {
        self.lock().max_in_flight.get(domain).copied().unwrap_or(0)
    }

    /// Nothing reached `/api/` without the token.
    pub fn assert_all_authorized(&self) {
        for call in self.calls() {
            assert!(
                call.authorized || !call.path.starts_with("/api/"),
                "a call without the token: {call:?}"
            );
        }
    }

    pub fn set_down(&mut self, down: bool) {
        if down {
            if let Some(runtime) = self.runtime.take() {
                // Ends the listener and every connection; allowed in async
                // code, unlike dropping the runtime.
                runtime.shutdown_background();
            }
            return;
        }
        if self.runtime.is_some() {
            return;
        }
        // The port may linger a moment after the last stop.
        let mut last = None;
        for _ in 0..100 {
            match std::net::TcpListener::bind(self.addr) {
                Ok(listener) => return self.serve(listener),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("cannot bind {}: {last:?}", self.addr);
    }

    fn serve(&mut self, listener: std::net::TcpListener) {
        listener.set_nonblocking(true).expect("nonblocking");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let app = Router::new()
            .fallback(handle)
            .with_state(self.shared.clone());
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let _ = axum::serve(listener, app).await;
        });
        self.runtime = Some(runtime);
    }
}

impl Drop for StandInHa {
    fn drop(&mut self) {
        self.set_down(true);
    }
}

async fn handle(
    State(shared): State<SharedState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let behaviour = {
        let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
        let authorized =
            authorization.as_deref() == Some(format!("Bearer {}", s.behaviour.token).as_str());
        s.calls.push(Call {
            method: method.to_string(),
            path: path.clone(),
            body: String::from_utf8_lossy(&body).into_owned(),
            authorization: authorization.clone(),
            authorized,
            at: Instant::now(),
        });
        s.behaviour.clone()
    };
    if !behaviour.delay.is_zero() {
        tokio::time::sleep(behaviour.delay).await;
    }
    if path == "/manifest.json" {
        return json(r#"{"name":"Home Assistant"}"#.to_owned());
    }
    if !path.starts_with("/api/") {
        return (StatusCode::NOT_FOUND, "404: Not Found").into_response();
    }
    // Home Assistant's own check: a missing or wrong bearer token is a 401
    // (and a strike towards an IP ban).
    if behaviour.unauthorized
        || authorization.as_deref() != Some(&format!("Bearer {}", behaviour.token))
    {
        return (StatusCode::UNAUTHORIZED, "401: Unauthorized").into_response();
    }
    match (method.as_str(), path.as_str()) {
        ("GET", "/api/core/state") => {
            let mut body = serde_json::json!({ "state": behaviour.state });
            if let Some((in_progress, live)) = behaviour.recorder_state {
                body["recorder_state"] = serde_json::json!({
                    "migration_in_progress": in_progress,
                    "migration_is_live": live,
                });
            }
            json(body.to_string())
        }
        ("GET", "/api/config") => json(
            serde_json::json!({
                "state": behaviour.state,
                "version": behaviour.version,
                "location_name": "Home",
                "unit_system": {},
            })
            .to_string(),
        ),
        ("GET", "/api/states") => json(STATES.to_owned()),
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
            json(serde_json::Value::Array(list).to_string())
        }
        ("POST", "/api/config/core/check_config") => {
            let (result, errors) = if behaviour.check_config_valid {
                ("valid", None)
            } else {
                ("invalid", Some("Integration error: bogus"))
            };
            json(
                serde_json::json!({
                    "result": result,
                    "errors": errors,
                    "warnings": behaviour.check_config_warnings,
                })
                .to_string(),
            )
        }
        ("POST", p) if p.starts_with("/api/services/") => service_call(&shared, p).await,
        _ => (StatusCode::NOT_FOUND, "404: Not Found").into_response(),
    }
}

async fn service_call(shared: &SharedState, path: &str) -> Response {
    let rest = &path["/api/services/".len()..];
    let Some((domain, service)) = rest.split_once('/') else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let known = SERVICES
        .iter()
        .any(|(d, services)| *d == domain && services.contains(&service));
    let reload_delay = {
        let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
        if s.behaviour.server_errors > 0 {
            s.behaviour.server_errors -= 1;
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "500 Internal Server Error",
            )
                .into_response();
        }
        if !known {
            return (StatusCode::BAD_REQUEST, "Service not found").into_response();
        }
        if service != "reload" {
            return json("[]".to_owned());
        }
        let n = s.in_flight.entry(domain.to_owned()).or_default();
        *n += 1;
        let n = *n;
        let max = s.max_in_flight.entry(domain.to_owned()).or_default();
        *max = (*max).max(n);
        s.behaviour.reload_delay
    };
    tokio::time::sleep(reload_delay).await;
    let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(n) = s.in_flight.get_mut(domain) {
        *n -= 1;
    }
    json("[]".to_owned())
}

fn json(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}
