//! Home Assistant's HTTP settings (`trusted_proxies`, `use_x_forwarded_for`…)
//! kept as the watcher's config says, through the WebSocket API that replaced
//! YAML in 2026.8: `http/config` to read, `http/config/configure` to store a
//! *pending* config (Home Assistant restarts with it on trial), then a check
//! that Home Assistant answers with it, then `http/config/promote`. A trial
//! that fails its check is never promoted: Home Assistant reverts it by
//! itself after five minutes and records it as failed, and the watcher does
//! not try those settings again.
//!
//! Only the keys the config names are managed; every other key (the port,
//! `server_host`, certificates) stays as Home Assistant's stable config has
//! it. Nothing is sent while Home Assistant is not RUNNING.

use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value as Json, json};
use tracing::{info, warn};

use crate::ha_api::{ApiError, HaApi};
use crate::watch_metrics::{HttpSettingsLabels, HttpSettingsResult, WatchMetrics};

/// The persistent notification a failed trial raises.
const NOTIFICATION_ID: &str = "hass_config_watcher_http_settings";
/// Keys Home Assistant adds to a stored config; never compared.
const META_KEYS: [&str; 3] = ["created_at", "error", "error_message"];

/// `http_settings:` in the watcher's config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettingsConfig {
    pub use_x_forwarded_for: Option<bool>,
    /// Addresses or networks (`10.0.0.0/8`) whose `X-Forwarded-For` is
    /// believed: the ingress controller's.
    pub trusted_proxies: Option<Vec<String>>,
    pub ip_ban_enabled: Option<bool>,
    /// Failed logins before an address is banned; -1 never.
    pub login_attempts_threshold: Option<i64>,
    pub cors_allowed_origins: Option<Vec<String>>,
    pub use_x_frame_options: Option<bool>,
    /// After the restart, a request carrying this `X-Forwarded-For` (from the
    /// watcher's own address, which must then be a trusted proxy) must get
    /// 200, not 400, before the settings are promoted.
    pub verify_forwarded_for: Option<IpAddr>,
    /// How often Home Assistant's settings are compared with these.
    #[serde(default = "default_interval", with = "hass_runtime::config::duration")]
    pub interval: Duration,
    /// How long Home Assistant may take to restart with new settings.
    #[serde(
        default = "default_restart_timeout",
        with = "hass_runtime::config::duration"
    )]
    pub restart_timeout: Duration,
}

fn default_interval() -> Duration {
    Duration::from_secs(60)
}

fn default_restart_timeout() -> Duration {
    Duration::from_secs(600)
}

impl HttpSettingsConfig {
    /// The managed keys as Home Assistant stores them (trusted proxies as
    /// Python's `ip_network` writes them); the error names the bad key.
    pub fn managed(&self) -> Result<Map<String, Json>, String> {
        let mut keys = Map::new();
        let mut put = |key: &str, value: Option<Json>| {
            if let Some(value) = value {
                keys.insert(key.to_owned(), value);
            }
        };
        put(
            "use_x_forwarded_for",
            self.use_x_forwarded_for.map(Json::from),
        );
        if let Some(proxies) = &self.trusted_proxies {
            let normalised = proxies
                .iter()
                .map(|p| hass_runtime::ip_network::ip_network(p).map(Json::from))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("trusted_proxies: {e}"))?;
            put("trusted_proxies", Some(Json::Array(normalised)));
        }
        put("ip_ban_enabled", self.ip_ban_enabled.map(Json::from));
        if let Some(threshold) = self.login_attempts_threshold {
            if threshold < -1 || threshold == 0 {
                return Err(format!(
                    "login_attempts_threshold: {threshold} is neither a positive number nor -1"
                ));
            }
            put("login_attempts_threshold", Some(Json::from(threshold)));
        }
        put(
            "cors_allowed_origins",
            self.cors_allowed_origins.clone().map(Json::from),
        );
        put(
            "use_x_frame_options",
            self.use_x_frame_options.map(Json::from),
        );
        if keys.is_empty() {
            return Err("names no setting to manage".to_owned());
        }
        if self.use_x_forwarded_for == Some(true)
            && self.trusted_proxies.as_ref().is_none_or(Vec::is_empty)
        {
            return Err(
                "use_x_forwarded_for needs trusted_proxies (Home Assistant refuses it without)"
                    .to_owned(),
            );
        }
        if self.interval.is_zero() || self.restart_timeout.is_zero() {
            return Err("interval and restart_timeout must be more than 0s".to_owned());
        }
        Ok(keys)
    }
}

/// `http/config`'s answer, the parts the watcher reads.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HttpConfigState {
    pub(crate) stable: Map<String, Json>,
    pub(crate) pending: Option<Map<String, Json>>,
    /// The slot the running server started with: `stable`, `pending`, …
    pub(crate) active: String,
}

impl HttpConfigState {
    pub(crate) fn parse(answer: &Json) -> Result<Self, String> {
        let object = |value: &Json| value.as_object().cloned();
        Ok(Self {
            stable: answer
                .get("stable")
                .and_then(object)
                .ok_or("http/config has no stable config")?,
            pending: answer.get("pending").and_then(object),
            active: answer
                .get("active_config_type")
                .and_then(Json::as_str)
                .unwrap_or_default()
                .to_owned(),
        })
    }
}

/// What to do, from Home Assistant's state and the managed keys.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Plan {
    /// Stable has every managed key as wanted.
    InSync,
    /// Send this config (stable with the managed keys) as pending.
    Configure(Map<String, Json>),
    /// Home Assistant runs on trial with the wanted settings: check, promote.
    Verify,
    /// The wanted settings failed a trial (Home Assistant's `error`): not
    /// sent again until they change.
    Failed(String),
    /// A pending config that is not ours (set in the UI, or ours waiting for
    /// its restart): left alone.
    Wait,
}

fn without_meta(config: &Map<String, Json>) -> Map<String, Json> {
    let mut config = config.clone();
    for key in META_KEYS {
        config.remove(key);
    }
    config
}

fn has_managed(config: &Map<String, Json>, managed: &Map<String, Json>) -> bool {
    managed.iter().all(|(k, v)| config.get(k) == Some(v))
}

pub(crate) fn plan(state: &HttpConfigState, managed: &Map<String, Json>) -> Plan {
    if let Some(pending) = &state.pending {
        let ours = has_managed(pending, managed);
        let error = pending.get("error").filter(|e| !e.is_null());
        match (ours, error) {
            (true, Some(error)) => {
                return Plan::Failed(error.as_str().unwrap_or("failed").to_owned());
            }
            (true, None) if state.active == "pending" => return Plan::Verify,
            (_, None) => return Plan::Wait,
            // Someone's failed trial: it no longer runs, stable does.
            (false, Some(_)) => {}
        }
    }
    if has_managed(&state.stable, managed) {
        return Plan::InSync;
    }
    let mut config = without_meta(&state.stable);
    config.extend(managed.clone());
    Plan::Configure(config)
}

/// Keeps Home Assistant's HTTP settings as `config` says until shutdown.
pub(crate) async fn keep(
    api: HaApi,
    config: HttpSettingsConfig,
    managed: Map<String, Json>,
    metrics: WatchMetrics,
    shutdown: hass_runtime::shutdown::Shutdown,
) {
    let mut memory = Memory::default();
    info!(keys = ?managed.keys().collect::<Vec<_>>(), every = ?config.interval, "keeping Home Assistant's HTTP settings");
    loop {
        let outcome = step(&api, &config, &managed, &metrics, &mut memory).await;
        if let Err(e) = outcome
            && e != ApiError::ShuttingDown
        {
            warn!("HTTP settings: {e}");
        }
        if !shutdown.sleep(config.interval).await {
            return;
        }
    }
}

async fn http_config(api: &HaApi) -> Result<HttpConfigState, ApiError> {
    let answer = api.websocket(json!({"type": "http/config"})).await?;
    HttpConfigState::parse(&answer).map_err(ApiError::BadResponse)
}

async fn running(api: &HaApi) -> Result<bool, ApiError> {
    let config = api.websocket(json!({"type": "get_config"})).await?;
    Ok(config.get("state").and_then(Json::as_str) == Some("RUNNING"))
}

/// What one comparison leaves for the next.
#[derive(Debug, Default)]
struct Memory {
    /// The last plan, so each state is logged once.
    reported: Option<Plan>,
    /// The trial (its `created_at`) whose check failed: it runs until Home
    /// Assistant reverts it, and is not checked or reported again.
    failed_trial: Option<Json>,
}

fn trial_id(state: &HttpConfigState) -> Option<Json> {
    state.pending.as_ref()?.get("created_at").cloned()
}

/// One comparison, and what it calls for.
async fn step(
    api: &HaApi,
    config: &HttpSettingsConfig,
    managed: &Map<String, Json>,
    metrics: &WatchMetrics,
    memory: &mut Memory,
) -> Result<(), ApiError> {
    if !running(api).await? {
        tracing::debug!("HTTP settings: Home Assistant is not RUNNING");
        return Ok(());
    }
    let state = http_config(api).await?;
    let mut plan = plan(&state, managed);
    if plan == Plan::Verify
        && memory.failed_trial.is_some()
        && memory.failed_trial == trial_id(&state)
    {
        plan = Plan::Failed("not promoted; Home Assistant reverts it".to_owned());
    }
    tracing::debug!(?plan, "HTTP settings compared");
    metrics
        .http_settings_in_sync
        .set(i64::from(plan == Plan::InSync));
    let first_time = memory.reported.as_ref() != Some(&plan);
    memory.reported = Some(plan.clone());
    match plan {
        Plan::InSync => {
            if first_time {
                info!("HTTP settings: Home Assistant's stable config has them");
            }
            Ok(())
        }
        Plan::Wait => {
            if first_time {
                info!(
                    active = state.active,
                    "HTTP settings: a pending config that is not ours is on trial; waiting"
                );
            }
            Ok(())
        }
        Plan::Failed(error) => {
            if first_time {
                warn!(
                    error,
                    "HTTP settings: Home Assistant reverted them after a failed trial; not trying them again until they change"
                );
            }
            Ok(())
        }
        Plan::Configure(wanted) => {
            let keys: Vec<&String> = managed.keys().collect();
            info!(
                ?keys,
                "HTTP settings differ from Home Assistant's: applying them, Home Assistant restarts"
            );
            let started = tokio::time::Instant::now();
            if let Err(e) = api
                .websocket(json!({"type": "http/config/configure", "config": wanted}))
                .await
            {
                if matches!(e, ApiError::Refused { .. }) {
                    count(metrics, HttpSettingsResult::Refused);
                }
                return Err(e);
            }
            let Some(trial) = wait_for_trial(api, config.restart_timeout).await? else {
                count(metrics, HttpSettingsResult::Refused);
                let message = format!(
                    "Home Assistant did not come back with the new HTTP settings within {:?}",
                    config.restart_timeout
                );
                warn!("{message}");
                notify(api, &message).await;
                return Ok(());
            };
            if trial.active != "pending" {
                count(metrics, HttpSettingsResult::Refused);
                let message =
                    "Home Assistant could not start its HTTP server with the new settings and runs on the previous ones".to_owned();
                warn!("{message}");
                notify(api, &message).await;
                return Ok(());
            }
            info!(took = ?started.elapsed(), "Home Assistant restarted on trial with the new HTTP settings");
            if !verify_and_promote(api, config, metrics).await? {
                memory.failed_trial = trial_id(&trial);
            }
            Ok(())
        }
        Plan::Verify => {
            if !verify_and_promote(api, config, metrics).await? {
                memory.failed_trial = trial_id(&state);
            }
            Ok(())
        }
    }
}

/// Waits until Home Assistant runs again after `configure` and reports which
/// config it started with; `None` after `limit`.
async fn wait_for_trial(api: &HaApi, limit: Duration) -> Result<Option<HttpConfigState>, ApiError> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut went_down = false;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        match running(api).await {
            Ok(true) => {
                let state = http_config(api).await?;
                // The old process may answer before it stops: only a new
                // start (down first, or already on the pending slot) counts.
                if went_down || state.active == "pending" {
                    return Ok(Some(state));
                }
            }
            Ok(false) => went_down = true,
            Err(ApiError::ShuttingDown) => return Err(ApiError::ShuttingDown),
            Err(ApiError::Unauthorized(code)) => return Err(ApiError::Unauthorized(code)),
            Err(_) => went_down = true,
        }
    }
    Ok(None)
}

/// Checks that Home Assistant answers with the trial settings, then promotes
/// them; a failed check is reported and left for Home Assistant to revert.
/// Whether they were promoted.
async fn verify_and_promote(
    api: &HaApi,
    config: &HttpSettingsConfig,
    metrics: &WatchMetrics,
) -> Result<bool, ApiError> {
    let mut failures = Vec::new();
    match api.status_of("/api/", None).await {
        Ok(200) => {}
        Ok(status) => failures.push(format!("/api/ answered {status}")),
        Err(e) => failures.push(format!("/api/: {e}")),
    }
    if let Some(client) = config.verify_forwarded_for {
        match api.status_of("/api/", Some(client)).await {
            Ok(200) => {}
            Ok(status) => failures.push(format!(
                "/api/ with X-Forwarded-For {client} answered {status}"
            )),
            Err(e) => failures.push(format!("/api/ with X-Forwarded-For {client}: {e}")),
        }
    }
    if failures.is_empty() {
        api.websocket(json!({"type": "http/config/promote"}))
            .await?;
        count(metrics, HttpSettingsResult::Promoted);
        metrics.http_settings_in_sync.set(1);
        info!("HTTP settings verified and promoted to Home Assistant's stable config");
        // A notification of an earlier failure no longer applies.
        api.dismiss(NOTIFICATION_ID).await;
        return Ok(true);
    }
    count(metrics, HttpSettingsResult::NotPromoted);
    let message = format!(
        "The new HTTP settings failed their check ({}); they are not promoted, and Home Assistant returns to its previous settings within 5 minutes.",
        failures.join("; ")
    );
    warn!("{message}");
    notify(api, &message).await;
    Ok(false)
}

fn count(metrics: &WatchMetrics, result: HttpSettingsResult) {
    metrics
        .http_settings_applies
        .get_or_create(&HttpSettingsLabels { result })
        .inc();
}

async fn notify(api: &HaApi, message: &str) {
    api.notify(
        NOTIFICATION_ID,
        "hass-config-watcher: HTTP settings",
        message,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The managed keys of `http_settings: {<flow>}`.
    fn settings(flow: &str) -> Result<Map<String, Json>, String> {
        let config: crate::config::WatcherConfig =
            hass_runtime::config::parse_yaml(&format!("http_settings: {{{flow}}}\n"))
                .map_err(|e| e.to_string())?;
        config.http_settings.ok_or("no http_settings")?.managed()
    }

    #[test]
    fn trusted_proxies_are_written_as_home_assistant_stores_them() {
        let managed = settings(
            "use_x_forwarded_for: true, trusted_proxies: [10.0.0.0/8, 127.0.0.1, 'fd00::/8']",
        )
        .unwrap();
        assert_eq!(
            managed["trusted_proxies"],
            json!(["10.0.0.0/8", "127.0.0.1/32", "fd00::/8"])
        );
        for (yaml, why) in [
            ("trusted_proxies: [10.1.2.3/8]", "host bits set"),
            ("trusted_proxies: [example.com]", "not an IP address"),
            ("use_x_forwarded_for: true", "needs trusted_proxies"),
            ("interval: 5s", "names no setting"),
            ("login_attempts_threshold: 0", "neither a positive"),
            ("server_port: 8124", "unknown field"),
        ] {
            let error = settings(yaml).unwrap_err();
            assert!(error.contains(why), "{yaml}: {error}");
        }
    }

    fn state(stable: Json, pending: Json, active: &str) -> HttpConfigState {
        HttpConfigState::parse(&json!({
            "stable": stable, "pending": pending, "active_config_type": active
        }))
        .unwrap()
    }

    /// Each case: Home Assistant's http/config, and what the watcher does.
    #[test]
    fn the_plan_follows_home_assistant_state() {
        let managed = settings("use_x_forwarded_for: true, trusted_proxies: [10.0.0.0/8]").unwrap();
        let stable = json!({"server_port": 8123, "use_x_forwarded_for": false, "created_at": "x", "error": null, "error_message": null});
        let wanted = json!({"server_port": 8123, "use_x_forwarded_for": true, "trusted_proxies": ["10.0.0.0/8"], "error": null});
        let mut expected = without_meta(stable.as_object().unwrap());
        expected.extend(managed.clone());
        assert_eq!(
            plan(&state(stable.clone(), Json::Null, "stable"), &managed),
            Plan::Configure(expected),
            "stable lacks them: stable's other keys kept, meta keys dropped"
        );
        assert_eq!(
            plan(&state(wanted.clone(), Json::Null, "stable"), &managed),
            Plan::InSync
        );
        assert_eq!(
            plan(&state(stable.clone(), wanted.clone(), "pending"), &managed),
            Plan::Verify,
            "our trial runs: check it"
        );
        assert_eq!(
            plan(&state(stable.clone(), wanted.clone(), "stable"), &managed),
            Plan::Wait,
            "ours, before the restart"
        );
        let mut failed = wanted.clone();
        failed["error"] = json!("not_promoted");
        assert_eq!(
            plan(&state(stable.clone(), failed, "stable"), &managed),
            Plan::Failed("not_promoted".to_owned()),
            "reverted by Home Assistant: never again"
        );
        let theirs = json!({"server_port": 8124, "error": null});
        assert_eq!(
            plan(&state(stable.clone(), theirs, "pending"), &managed),
            Plan::Wait,
            "someone else's trial"
        );
        let theirs_failed = json!({"server_port": 8124, "error": "apply_failed"});
        assert!(matches!(
            plan(&state(stable, theirs_failed, "stable"), &managed),
            Plan::Configure(_)
        ));
    }
}
