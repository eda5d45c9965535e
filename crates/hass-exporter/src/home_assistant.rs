//! Home Assistant's health, read from its REST API with a long-lived token:
//! `GET /api/core/state` every poll, `/api/states` and `/api/config` at a
//! slower, bounded interval. The results feed the metrics and the
//! [`HaView`] that `/probe/ha/*` answers from.
//!
//! Nothing here calls `/api/` without the token, and a 401/403 stops all
//! `/api/` calls for a doubling pause: HA counts every rejected request
//! towards banning the caller's IP, and the caller is the whole pod. While
//! paused, `GET /manifest.json` (served without auth, outside `/api/`) keeps
//! telling the liveness and startup probes whether HA still answers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hass_runtime::liveness::Heartbeat;
use hass_runtime::readiness::ReadinessCheck;
use hass_runtime::secret::{ExposeSecret, SecretSource, SecretString};
use hass_runtime::shutdown::Shutdown;
use hyper::Uri;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tracing::{debug, error, info, warn};

use crate::config::HomeAssistantConfig;
use crate::pause::pause;
use hass_runtime::backoff::Backoff;
use hass_runtime::http_client::{self as http, HttpClient, HttpRequest};

/// HA's core states (`homeassistant.core.CoreState`); one `core_state`
/// series each, so the label set is fixed.
pub const CORE_STATES: [&str; 6] = [
    "NOT_RUNNING",
    "STARTING",
    "RUNNING",
    "STOPPING",
    "FINAL_WRITE",
    "STOPPED",
];

/// More domains than this are counted under `domain="other"`.
const MAX_DOMAINS: usize = 100;
const MAX_STATE_BODY: usize = 1 << 10 << 10; // 1 MiB: core state, config
const MAX_STATES_BODY: usize = 64 << 10 << 10; // 64 MiB: every entity's state

/// What the probes know about HA, shared by the poll loop and `/probe/ha/*`.
#[derive(Debug, Clone)]
pub struct HaView {
    started: Instant,
    /// The last time HA's HTTP server answered anything (even 401).
    pub last_answer: Option<Instant>,
    /// HA's HTTP server answered the last request (any status, even 401);
    /// false after a refused connection or a timeout.
    pub answering: bool,
    /// The core state of the last successful poll; `None` when it failed.
    pub state: Option<String>,
    /// Last known recorder migration state (kept while HA is unreachable).
    pub migration_in_progress: bool,
    pub migration_is_live: bool,
    /// The token was rejected and `/api/` calls are paused.
    pub auth_rejected: bool,
    /// Why the last poll failed, for probe bodies.
    pub last_error: Option<String>,
}

/// A probe's verdict and the line its body says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub ok: bool,
    pub reason: String,
}

impl HaView {
    pub fn new(started: Instant) -> Self {
        Self {
            started,
            last_answer: None,
            answering: false,
            state: None,
            migration_in_progress: false,
            migration_is_live: false,
            auth_rejected: false,
            last_error: None,
        }
    }

    fn not_running_reason(&self) -> String {
        if self.auth_rejected {
            return "Home Assistant rejected the token (401/403); see the exporter's log"
                .to_owned();
        }
        match (&self.state, &self.last_error) {
            (Some(state), _) => format!("Home Assistant is {state}"),
            (None, Some(e)) => format!("Home Assistant's API did not answer: {e}"),
            (None, None) => "Home Assistant has not been polled yet".to_owned(),
        }
    }

    /// Ready: RUNNING, and not in a recorder migration that blocks the
    /// recorder. A *live* migration (HA serving while it runs, which can take
    /// hours on a big database) keeps HA ready: taking it out of its Service
    /// for that long would help nobody.
    pub fn ready(&self) -> Verdict {
        let running = self.state.as_deref() == Some("RUNNING");
        if !running {
            return Verdict::fail(self.not_running_reason());
        }
        if self.migration_in_progress && !self.migration_is_live {
            return Verdict::fail(
                "Home Assistant is RUNNING but a recorder migration is in progress",
            );
        }
        Verdict::pass("Home Assistant is RUNNING")
    }

    /// Started: HA's HTTP server answers, whatever it says (a 401/403 too:
    /// only a running server can reject a token), or a recorder migration is
    /// known to be in progress. Not "RUNNING": kubelet restarts a container
    /// whose startupProbe keeps failing, so waiting for RUNNING would restart
    /// HA mid-migration, or forever when the exporter's token is wrong, which
    /// is the restart loop this exporter exists to prevent. Once it passes,
    /// the liveness rule (silence for `live_timeout`, never during a
    /// migration) takes over; readiness still waits for RUNNING.
    pub fn startup(&self) -> Verdict {
        if self.migration_in_progress {
            return Verdict::pass("a recorder migration is in progress");
        }
        if !self.answering {
            return Verdict::fail(match &self.last_error {
                Some(e) => format!("Home Assistant's HTTP server does not answer: {e}"),
                None => "Home Assistant has not been polled yet".to_owned(),
            });
        }
        match (&self.state, self.auth_rejected) {
            (_, true) => Verdict::pass(
                "Home Assistant's HTTP server answers (it rejected the token; see ready)",
            ),
            (Some(state), false) => {
                Verdict::pass(format!("Home Assistant's HTTP server answers ({state})"))
            }
            (None, false) => Verdict::pass("Home Assistant's HTTP server answers"),
        }
    }

    /// Alive unless HA's API has been silent for `live_timeout` *and* no
    /// recorder migration is known to be in progress. Silence is counted from
    /// the exporter's start until HA first answers.
    pub fn live(&self, now: Instant, live_timeout: Duration) -> Verdict {
        let since = self.last_answer.unwrap_or(self.started);
        let silent = now.saturating_duration_since(since);
        if silent <= live_timeout {
            return Verdict::pass(format!(
                "Home Assistant answered {:.1}s ago",
                silent.as_secs_f64()
            ));
        }
        if self.migration_in_progress {
            return Verdict::pass(format!(
                "Home Assistant silent for {:.0}s, but a recorder migration is in progress",
                silent.as_secs_f64()
            ));
        }
        Verdict::fail(format!(
            "Home Assistant's API has not answered for {:.0}s (limit {live_timeout:?})",
            silent.as_secs_f64()
        ))
    }
}

impl Verdict {
    fn pass(reason: impl Into<String>) -> Self {
        Self {
            ok: true,
            reason: reason.into(),
        }
    }

    fn fail(reason: impl Into<String>) -> Self {
        Self {
            ok: false,
            reason: reason.into(),
        }
    }
}

/// The view plus the config the probes need; cloned into the admin routes.
#[derive(Debug, Clone)]
pub struct HaShared {
    view: Arc<Mutex<HaView>>,
    pub live_timeout: Duration,
}

impl HaShared {
    pub fn new(live_timeout: Duration) -> Self {
        Self {
            view: Arc::new(Mutex::new(HaView::new(Instant::now()))),
            live_timeout,
        }
    }

    pub fn view(&self) -> HaView {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, HaView> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ErrorLabels {
    endpoint: &'static str,
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DomainLabels {
    domain: String,
}

#[derive(Debug, Clone)]
struct HaMetrics {
    up: Gauge,
    core_state: Family<StateLabels, Gauge>,
    latency: Family<EndpointLabels, Histogram>,
    errors: Family<ErrorLabels, Counter>,
    info: Family<VersionLabels, Gauge>,
    entities: Family<DomainLabels, Gauge>,
    unavailable: Family<DomainLabels, Gauge>,
    migration_in_progress: Gauge,
    migration_is_live: Gauge,
    auth_rejected: Gauge,
    auth_failures: Counter,
    auth_backoff: Gauge<f64, std::sync::atomic::AtomicU64>,
    last_answer: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl HaMetrics {
    fn new() -> Self {
        let metrics = Self {
            up: Gauge::default(),
            core_state: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 12))
            }),
            errors: Family::default(),
            info: Family::default(),
            entities: Family::default(),
            unavailable: Family::default(),
            migration_in_progress: Gauge::default(),
            migration_is_live: Gauge::default(),
            auth_rejected: Gauge::default(),
            auth_failures: Counter::default(),
            auth_backoff: Gauge::default(),
            last_answer: Gauge::default(),
        };
        metrics.set_state(None);
        metrics
    }

    fn register(&self, r: &mut Registry) {
        r.register(
            "ha_up",
            "Whether Home Assistant's GET /api/core/state answered with a state on the last poll",
            self.up.clone(),
        );
        r.register(
            "ha_core_state",
            "Home Assistant's core state: 1 for the current one, 0 for the others (all 0 when unknown)",
            self.core_state.clone(),
        );
        r.register(
            "ha_api_request_duration_seconds",
            "Time Home Assistant's REST API took to answer, by endpoint",
            self.latency.clone(),
        );
        r.register(
            "ha_api_request_errors",
            "REST API requests that got no usable answer, by endpoint and kind",
            self.errors.clone(),
        );
        r.register(
            "ha_info",
            "Home Assistant's version (from /api/config); the value is always 1",
            self.info.clone(),
        );
        r.register(
            "ha_entities",
            "Entities in Home Assistant's state machine, by domain",
            self.entities.clone(),
        );
        r.register(
            "ha_entities_unavailable",
            "Entities whose state is 'unavailable', by domain",
            self.unavailable.clone(),
        );
        r.register(
            "ha_recorder_migration_in_progress",
            "Whether Home Assistant reports a recorder schema migration in progress",
            self.migration_in_progress.clone(),
        );
        r.register(
            "ha_recorder_migration_is_live",
            "Whether the running recorder migration lets Home Assistant serve meanwhile",
            self.migration_is_live.clone(),
        );
        r.register(
            "ha_auth_rejected",
            "1 while Home Assistant rejects the token (401/403) and /api/ calls are paused",
            self.auth_rejected.clone(),
        );
        r.register(
            "ha_auth_failures",
            "Requests Home Assistant answered with 401 or 403",
            self.auth_failures.clone(),
        );
        r.register(
            "ha_auth_backoff_seconds",
            "The current pause of /api/ calls after a rejected token; 0 when none",
            self.auth_backoff.clone(),
        );
        r.register(
            "ha_last_answer_timestamp_seconds",
            "Unix time Home Assistant's HTTP server last answered anything",
            self.last_answer.clone(),
        );
    }

    fn set_state(&self, state: Option<&str>) {
        for s in CORE_STATES {
            self.core_state
                .get_or_create(&StateLabels {
                    state: s.to_owned(),
                })
                .set(i64::from(state == Some(s)));
        }
    }
}

/// The Home Assistant poller: config checked, token source known.
#[derive(Debug)]
pub struct HaProbe {
    core_state_uri: Uri,
    states_uri: Uri,
    config_uri: Uri,
    manifest_uri: Uri,
    token: SecretSource,
    poll_interval: Duration,
    timeout: Duration,
    states_interval: Duration,
    auth_backoff: Backoff,
    shared: HaShared,
    metrics: HaMetrics,
}

/// What one authenticated call came back with.
enum Call {
    Ok(hyper::body::Bytes),
    Rejected(u16),
    Failed(String),
}

impl HaProbe {
    pub fn new(cfg: &HomeAssistantConfig) -> Result<Self, String> {
        let uri =
            |path: &str| http::join(&cfg.url, path).map_err(|e| format!("home_assistant.url: {e}"));
        Ok(Self {
            core_state_uri: uri("/api/core/state")?,
            states_uri: uri("/api/states")?,
            config_uri: uri("/api/config")?,
            manifest_uri: uri("/manifest.json")?,
            token: cfg.token.clone(),
            poll_interval: cfg.poll_interval,
            timeout: cfg.timeout,
            states_interval: cfg.states_interval,
            auth_backoff: Backoff::new(cfg.auth_backoff, cfg.auth_backoff_max),
            shared: HaShared::new(cfg.live_timeout),
            metrics: HaMetrics::new(),
        })
    }

    pub fn shared(&self) -> HaShared {
        self.shared.clone()
    }

    /// The longest stretch without a heartbeat: three calls and a ping.
    pub fn longest_wait(&self) -> Duration {
        self.timeout * 4
    }

    pub fn register_metrics(&self, r: &mut Registry) {
        self.metrics.register(r);
    }

    /// Polls until shutdown.
    pub async fn run(
        mut self,
        client: HttpClient,
        shutdown: Shutdown,
        heartbeat: Heartbeat,
        check: Option<ReadinessCheck>,
    ) {
        // A token that was rejected, and until when /api/ stays untouched.
        let mut rejected: Option<(SecretString, Instant)> = None;
        let mut next_states = Instant::now();
        loop {
            heartbeat.beat();
            let token = match self.token.load() {
                Ok(token) => Some(token),
                Err(e) => {
                    // Never call /api/ without a token: that is a 401.
                    warn!("home_assistant.token: {e}; not polling Home Assistant");
                    self.record_failure(format!("token unreadable: {e}"));
                    // Still tell startup and liveness whether HA is up.
                    self.ping_unauthenticated(&client).await;
                    None
                }
            };
            if let Some(token) = token {
                let paused = rejected.as_ref().is_some_and(|(bad, until)| {
                    Instant::now() < *until && bad.expose_secret() == token.expose_secret()
                });
                if paused {
                    self.ping_unauthenticated(&client).await;
                } else {
                    if rejected.take().is_some() {
                        info!("retrying Home Assistant's API after the auth pause");
                    }
                    match self.poll_core_state(&client, &token).await {
                        Call::Rejected(status) => {
                            rejected = Some((token, self.reject(status)));
                        }
                        Call::Ok(_) => {
                            self.auth_backoff.reset();
                            self.metrics.auth_backoff.set(0.0);
                            if Instant::now() >= next_states {
                                next_states = Instant::now() + self.states_interval;
                                if let Some(status) = self.poll_slow(&client, &token).await {
                                    rejected = Some((token, self.reject(status)));
                                }
                            }
                        }
                        Call::Failed(_) => {}
                    }
                }
            }
            if let Some(check) = &check {
                check.set_from(&{
                    let v = self.shared.view().ready();
                    if v.ok { Ok(()) } else { Err(v.reason) }
                });
            }
            if !pause(self.poll_interval, &shutdown, &heartbeat).await {
                return;
            }
        }
    }

    /// One authenticated GET, timed and counted.
    async fn call(
        &self,
        client: &HttpClient,
        uri: &Uri,
        endpoint: &'static str,
        token: &SecretString,
        max_body: usize,
    ) -> Call {
        let started = Instant::now();
        let request = HttpRequest::get(uri.clone()).bearer(token.expose_secret());
        let result = client.send(request, self.timeout, max_body).await;
        let error = |kind: &'static str| {
            self.metrics
                .errors
                .get_or_create(&ErrorLabels { endpoint, kind })
                .inc();
        };
        match result {
            Ok(reply) => {
                self.answered();
                self.metrics
                    .latency
                    .get_or_create(&EndpointLabels { endpoint })
                    .observe(started.elapsed().as_secs_f64());
                match reply.status.as_u16() {
                    200 => Call::Ok(reply.body),
                    status @ (401 | 403) => Call::Rejected(status),
                    status => {
                        error("status");
                        Call::Failed(format!("GET {uri}: HTTP {status}"))
                    }
                }
            }
            Err(e) => {
                error(e.kind());
                self.shared.lock().answering = false;
                Call::Failed(format!("GET {uri}: {e}"))
            }
        }
    }

    async fn poll_core_state(&self, client: &HttpClient, token: &SecretString) -> Call {
        let call = self
            .call(
                client,
                &self.core_state_uri,
                "core_state",
                token,
                MAX_STATE_BODY,
            )
            .await;
        match &call {
            Call::Ok(body) => match serde_json::from_slice::<CoreStateReply>(body) {
                Ok(reply) => self.record_state(reply),
                Err(e) => {
                    self.metrics
                        .errors
                        .get_or_create(&ErrorLabels {
                            endpoint: "core_state",
                            kind: "parse",
                        })
                        .inc();
                    self.record_failure(format!("/api/core/state answered unexpected JSON: {e}"));
                    return Call::Failed(e.to_string());
                }
            },
            Call::Failed(e) => self.record_failure(e.clone()),
            Call::Rejected(_) => {}
        }
        call
    }

    /// `/api/config` (version) and `/api/states` (entity counts). Returns the
    /// status of a rejection, if one happened.
    async fn poll_slow(&self, client: &HttpClient, token: &SecretString) -> Option<u16> {
        match self
            .call(client, &self.config_uri, "config", token, MAX_STATE_BODY)
            .await
        {
            Call::Ok(body) => match serde_json::from_slice::<ConfigReply>(&body) {
                Ok(config) => {
                    self.metrics.info.clear();
                    self.metrics
                        .info
                        .get_or_create(&VersionLabels {
                            version: config.version,
                        })
                        .set(1);
                }
                Err(e) => debug!("/api/config answered unexpected JSON: {e}"),
            },
            Call::Rejected(status) => return Some(status),
            Call::Failed(e) => debug!("{e}"),
        }
        match self
            .call(client, &self.states_uri, "states", token, MAX_STATES_BODY)
            .await
        {
            Call::Ok(body) => match serde_json::from_slice::<Vec<EntityState>>(&body) {
                Ok(states) => self.record_entities(&states),
                Err(e) => warn!("/api/states answered unexpected JSON: {e}"),
            },
            Call::Rejected(status) => return Some(status),
            Call::Failed(e) => debug!("{e}"),
        }
        None
    }

    /// While `/api/` is paused: does HA's HTTP server still answer at all?
    async fn ping_unauthenticated(&self, client: &HttpClient) {
        let request = HttpRequest::get(self.manifest_uri.clone());
        match client.send(request, self.timeout, MAX_STATE_BODY).await {
            Ok(_) => self.answered(),
            Err(e) => {
                debug!("GET {}: {e}", self.manifest_uri);
                self.shared.lock().answering = false;
            }
        }
    }

    /// Handles a 401/403: pause `/api/` calls, loudly. Returns the pause's end.
    fn reject(&mut self, status: u16) -> Instant {
        let delay = self.auth_backoff.next_delay();
        error!(
            status,
            pause = ?delay,
            "Home Assistant rejected the token: not calling /api/ again for {delay:?} \
             (each rejected call counts towards HA's IP ban); check home_assistant.token \
             — a changed token is tried at once"
        );
        self.metrics.auth_failures.inc();
        self.metrics.auth_rejected.set(1);
        self.metrics.auth_backoff.set(delay.as_secs_f64());
        self.metrics.up.set(0);
        self.metrics.set_state(None);
        let mut view = self.shared.lock();
        view.auth_rejected = true;
        view.state = None;
        view.last_error = Some(format!("HTTP {status}: token rejected"));
        Instant::now() + delay
    }

    fn answered(&self) {
        {
            let mut view = self.shared.lock();
            view.last_answer = Some(Instant::now());
            view.answering = true;
        }
        self.metrics
            .last_answer
            .set(hass_runtime::clock::unix_seconds_f64());
    }

    fn record_state(&self, reply: CoreStateReply) {
        self.metrics.up.set(1);
        self.metrics.auth_rejected.set(0);
        self.metrics.set_state(Some(&reply.state));
        let mut view = self.shared.lock();
        if view.state.as_deref() != Some(reply.state.as_str()) {
            info!(state = %reply.state, "Home Assistant core state");
        }
        if let Some(recorder) = &reply.recorder_state {
            view.migration_in_progress = recorder.migration_in_progress;
            view.migration_is_live = recorder.migration_is_live;
        } else {
            // Releases before recorder_state say nothing about migrations.
            view.migration_in_progress = false;
            view.migration_is_live = false;
        }
        self.metrics
            .migration_in_progress
            .set(i64::from(view.migration_in_progress));
        self.metrics
            .migration_is_live
            .set(i64::from(view.migration_is_live));
        view.state = Some(reply.state);
        view.auth_rejected = false;
        view.last_error = None;
    }

    fn record_failure(&self, error: String) {
        self.metrics.up.set(0);
        self.metrics.set_state(None);
        let mut view = self.shared.lock();
        if view.state.is_some() {
            warn!("Home Assistant's API stopped answering: {error}");
        }
        view.state = None;
        view.last_error = Some(error);
    }

    fn record_entities(&self, states: &[EntityState]) {
        let counts = count_by_domain(states);
        self.metrics.entities.clear();
        self.metrics.unavailable.clear();
        for (domain, (total, unavailable)) in counts {
            let labels = DomainLabels { domain };
            self.metrics.entities.get_or_create(&labels).set(total);
            self.metrics
                .unavailable
                .get_or_create(&labels)
                .set(unavailable);
        }
    }
}

/// (entities, unavailable) per domain, at most [`MAX_DOMAINS`] + "other".
fn count_by_domain(states: &[EntityState]) -> BTreeMap<String, (i64, i64)> {
    let mut counts: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for s in states {
        let domain = s.entity_id.split_once('.').map_or("other", |(d, _)| d);
        let key = if counts.contains_key(domain) || counts.len() < MAX_DOMAINS {
            domain
        } else {
            "other"
        };
        let entry = counts.entry(key.to_owned()).or_default();
        entry.0 += 1;
        if s.state == "unavailable" {
            entry.1 += 1;
        }
    }
    counts
}

/// `GET /api/core/state`: `{"state": "RUNNING"}` up to 2024.x, plus
/// `recorder_state` in newer releases.
#[derive(Debug, Deserialize)]
struct CoreStateReply {
    state: String,
    #[serde(default)]
    recorder_state: Option<RecorderState>,
}

#[derive(Debug, Deserialize)]
struct RecorderState {
    #[serde(default)]
    migration_in_progress: bool,
    #[serde(default)]
    migration_is_live: bool,
}

#[derive(Debug, Deserialize)]
struct ConfigReply {
    version: String,
}

#[derive(Debug, Deserialize)]
struct EntityState {
    entity_id: String,
    state: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(state: Option<&str>) -> HaView {
        let mut v = HaView::new(Instant::now());
        v.state = state.map(str::to_owned);
        v
    }

    #[test]
    fn ready_only_when_running_and_not_blocked_by_migration() {
        assert!(!view(None).ready().ok);
        assert!(!view(Some("STARTING")).ready().ok);
        assert!(view(Some("RUNNING")).ready().ok);
        let mut v = view(Some("RUNNING"));
        v.migration_in_progress = true;
        assert!(!v.ready().ok, "a blocking migration is not ready");
        v.migration_is_live = true;
        assert!(v.ready().ok, "a live migration keeps HA serving");
    }

    #[test]
    fn startup_passes_on_any_answer_or_a_migration() {
        let mut v = view(None);
        assert!(!v.startup().ok, "never answered");
        v.answering = true;
        assert!(v.startup().ok, "answered, not RUNNING yet");
        v.auth_rejected = true;
        assert!(v.startup().ok, "a 401 proves the server is up");
        v.answering = false;
        assert!(!v.startup().ok, "stopped answering");
        v.migration_in_progress = true;
        assert!(v.startup().ok, "a migration never counts against startup");
    }

    #[test]
    fn live_fails_only_after_timeout_without_migration() {
        let start = Instant::now();
        let mut v = HaView::new(start);
        let t = Duration::from_secs(60);
        assert!(v.live(start + Duration::from_secs(59), t).ok);
        assert!(!v.live(start + Duration::from_secs(61), t).ok);
        v.migration_in_progress = true;
        assert!(v.live(start + Duration::from_secs(600), t).ok);
        v.migration_in_progress = false;
        v.last_answer = Some(start + Duration::from_secs(100));
        assert!(v.live(start + Duration::from_secs(150), t).ok);
    }

    #[test]
    fn both_core_state_shapes_parse() {
        let old: CoreStateReply = serde_json::from_str(r#"{"state":"RUNNING"}"#).unwrap();
        assert!(old.recorder_state.is_none());
        let new: CoreStateReply = serde_json::from_str(
            r#"{"state":"RUNNING","recorder_state":{"migration_in_progress":true,"migration_is_live":false}}"#,
        )
        .unwrap();
        assert!(new.recorder_state.unwrap().migration_in_progress);
    }

    #[test]
    fn domains_are_bounded() {
        let states: Vec<EntityState> = (0..150)
            .map(|i| EntityState {
                entity_id: format!("d{i}.x"),
                state: if i % 2 == 0 { "on" } else { "unavailable" }.to_owned(),
            })
            .collect();
        let counts = count_by_domain(&states);
        assert_eq!(counts.len(), MAX_DOMAINS + 1);
        let total: i64 = counts.values().map(|c| c.0).sum();
        assert_eq!(total, 150);
        assert_eq!(counts["other"].0, 50);
    }
}
