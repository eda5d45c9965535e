//! Turning "these domains changed" into Home Assistant service calls: a
//! targeted `<domain>.reload` where Home Assistant offers one, otherwise a
//! restart advised (or done, when configured and Home Assistant's own
//! `check_config` agrees). Never `reload_all`: it reloads MQTT too, which
//! drops every MQTT entity for minutes.
//!
//! At most one reload per domain is in flight. A request for a domain whose
//! reload is running marks it to run once more afterwards, however many
//! requests arrive meanwhile: the last reload then sees the final files.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use hass_runtime::shutdown::Shutdown;
use tokio::sync::{broadcast, mpsc};
use tracing::{debug, error, info, warn};

use crate::ha_api::{ApiError, HaApi, HaCheck, Retry};
use crate::watch_metrics::{
    ReloadResult, RestartLabels, RestartReason, RestartReasonLabels, RestartResult, WatchMetrics,
};
use hass_config_check::CORE;
use hass_runtime::logging::Untrusted;

/// The id of the persistent notification the watcher raises and dismisses.
pub const NOTIFICATION_ID: &str = "hass_config_watcher";

/// What one or more valid changes ask of Home Assistant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Top-level domains whose resolved config changed.
    pub(crate) domains: BTreeSet<String>,
    /// Reasons for a restart known before asking Home Assistant.
    pub(crate) restart_reasons: BTreeSet<RestartReason>,
}

impl Plan {
    pub(crate) fn is_empty(&self) -> bool {
        self.domains.is_empty() && self.restart_reasons.is_empty()
    }

    fn merge(&mut self, other: Plan) {
        self.domains.extend(other.domains);
        self.restart_reasons.extend(other.restart_reasons);
    }
}

/// Work for the task that talks to Home Assistant, in the order it was found.
#[derive(Debug, Clone)]
pub(crate) enum Work {
    Apply(Plan),
    /// The config on disk is invalid: raise (or update) the notification.
    NotifyInvalid(String),
    /// The config is valid again: dismiss it.
    DismissNotification,
}

/// What came of a change in Home Assistant, for whoever watches over it
/// (the Git source's rollback).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// These domains are about to be reloaded; `restart`: Home Assistant
    /// is about to be restarted first (`auto_restart`), if its check agrees.
    Planned {
        reloads: BTreeSet<String>,
        restart: bool,
    },
    Reloaded(String),
    /// `homeassistant.restart` was called.
    Restarting,
    /// A reload failed, or Home Assistant's check refused the change.
    Failed {
        why: String,
    },
}

/// How many verdicts a slow watcher may fall behind by.
const VERDICTS: usize = 256;

/// The sending end; the task stops at shutdown.
#[derive(Debug, Clone)]
pub(crate) struct Applier {
    tx: mpsc::UnboundedSender<Work>,
    verdicts: broadcast::Sender<Verdict>,
}

impl Applier {
    /// Starts the task. Without an API (no token) it only logs what it would do.
    pub(crate) fn start(
        api: Option<HaApi>,
        auto_restart: bool,
        check_before_reload: bool,
        metrics: WatchMetrics,
        shutdown: Shutdown,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (verdicts, _) = broadcast::channel(VERDICTS);
        let task = Task {
            verdicts: verdicts.clone(),
            api,
            auto_restart,
            check_before_reload,
            refused_notified: AtomicBool::new(false),
            metrics,
            shutdown: shutdown.clone(),
            slots: Arc::default(),
        };
        shutdown.spawn(task.run(rx));
        Self { tx, verdicts }
    }

    /// Verdicts from now on.
    pub(crate) fn verdicts(&self) -> broadcast::Receiver<Verdict> {
        self.verdicts.subscribe()
    }

    pub(crate) fn send(&self, work: Work) {
        // The task ends only at shutdown, when nothing is left to do.
        let _ = self.tx.send(work);
    }
}

struct Task {
    api: Option<HaApi>,
    verdicts: broadcast::Sender<Verdict>,
    auto_restart: bool,
    /// Ask Home Assistant's own `check_config` before any reload.
    check_before_reload: bool,
    /// A notification says Home Assistant's check refused the last change.
    refused_notified: AtomicBool,
    metrics: WatchMetrics,
    shutdown: Shutdown,
    /// Domains with a reload in flight, and whether another was asked for.
    slots: Arc<Mutex<HashMap<String, bool>>>,
}

impl Task {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Work>) {
        let Some(api) = self.api.clone() else {
            info!("no home_assistant.token: validating only, never calling Home Assistant");
            while let Some(work) = self.next(&mut rx).await {
                if let Work::Apply(plan) = work {
                    warn!(
                        domains = ?plan.domains,
                        "config changed; no token, so nothing is reloaded"
                    );
                }
            }
            return;
        };
        // One call at startup, so a wrong token shows in the log (and in
        // `ha_api_errors_total`) now rather than at the first change.
        match api.services().await {
            Ok(services) => info!(domains = services.len(), "Home Assistant's API answers"),
            Err(ApiError::ShuttingDown) => return,
            Err(e) => error!("{e}"),
        }
        while let Some(first) = self.next(&mut rx).await {
            // Everything queued meanwhile: one merged plan, the last
            // notification state.
            let mut plan = Plan::default();
            let mut notification = None;
            let mut work = Some(first);
            while let Some(item) = work.take().or_else(|| rx.try_recv().ok()) {
                match item {
                    Work::Apply(p) => plan.merge(p),
                    other => notification = Some(other),
                }
            }
            match notification {
                Some(Work::NotifyInvalid(message)) => {
                    let title = "Configuration invalid: changes not reloaded";
                    api.notify(NOTIFICATION_ID, title, &message).await;
                }
                Some(Work::DismissNotification) => api.dismiss(NOTIFICATION_ID).await,
                _ => {}
            }
            if !plan.is_empty() {
                self.apply(&api, plan).await;
            }
        }
    }

    /// Tells the watchers, if any.
    fn tell(&self, verdict: Verdict) {
        let _ = self.verdicts.send(verdict);
    }

    async fn next(&self, rx: &mut mpsc::UnboundedReceiver<Work>) -> Option<Work> {
        tokio::select! {
            work = rx.recv() => work,
            () = self.shutdown.cancelled() => None,
        }
    }

    async fn apply(&self, api: &HaApi, plan: Plan) {
        let services = if plan.domains.is_empty() {
            BTreeMap::new()
        } else {
            match api.services().await {
                Ok(services) => services,
                Err(ApiError::ShuttingDown) => return,
                Err(e) => {
                    error!(domains = ?plan.domains, "cannot list Home Assistant's services, so nothing is reloaded: {e}");
                    return;
                }
            }
        };
        let mut reloads = Vec::new();
        let mut no_reload = Vec::new();
        for domain in &plan.domains {
            let offered = services.get(domain);
            let service = if domain == CORE {
                "reload_core_config"
            } else {
                "reload"
            };
            if offered.is_some_and(|s| s.contains(service)) {
                reloads.push((domain.clone(), service));
            } else {
                no_reload.push(domain.clone());
            }
        }
        let mut reasons = plan.restart_reasons;
        if !no_reload.is_empty() {
            reasons.insert(RestartReason::NoReloadService);
        }
        self.tell(Verdict::Planned {
            reloads: reloads.iter().map(|(d, _)| d.clone()).collect(),
            restart: !reasons.is_empty() && self.auto_restart,
        });
        if !reasons.is_empty() {
            self.metrics.restart_required.set(1);
            for reason in &reasons {
                self.metrics
                    .restart_required_events
                    .get_or_create(&RestartReasonLabels { reason: *reason })
                    .inc();
            }
            warn!(
                ?reasons,
                domains_without_reload = ?no_reload,
                "Home Assistant must restart to apply this change"
            );
        }
        let restart_wanted = !reasons.is_empty() && self.auto_restart;
        let check_wanted = !reloads.is_empty() && self.check_before_reload;
        if restart_wanted || check_wanted {
            // Asked once per change, for the restart and the reloads alike.
            let started = std::time::Instant::now();
            let verdict = api.check_config().await;
            debug!(took = ?started.elapsed(), "Home Assistant's check_config");
            if restart_wanted && self.restart(api, &plan.domains, &verdict).await {
                // The restart loads everything; reloads would only race it.
                return;
            }
            if check_wanted && !self.home_assistant_agrees(api, &reloads, &verdict).await {
                return;
            }
        }
        for (domain, service) in reloads {
            self.request_reload(api, domain, service);
        }
    }

    /// Home Assistant's own `check_config` on the files about to be
    /// reloaded: it knows every integration's schema, where the watcher's
    /// validator knows YAML. It reports another integration's schema errors
    /// as warnings ("Invalid config for 'input_boolean' at …") while calling
    /// the config valid; a domain named there is not reloaded. False when it
    /// rejects a domain about to be reloaded or cannot be asked: nothing is
    /// reloaded then, and Home Assistant keeps what it runs.
    async fn home_assistant_agrees(
        &self,
        api: &HaApi,
        reloads: &[(String, &'static str)],
        verdict: &Result<HaCheck, ApiError>,
    ) -> bool {
        let refuse = |why: &str| {
            for (domain, _) in reloads {
                self.metrics.count_reload(domain, ReloadResult::Refused);
            }
            let domains: Vec<&str> = reloads.iter().map(|(d, _)| d.as_str()).collect();
            warn!(?domains, "not reloading: {why}");
            self.tell(Verdict::Failed {
                why: format!("not reloaded ({}): {why}", domains.join(", ")),
            });
        };
        let rejected: Vec<&str> = match verdict {
            Ok(check) => reloads
                .iter()
                .map(|(d, _)| d.as_str())
                .filter(|d| check.rejects(d))
                .collect(),
            Err(_) => Vec::new(),
        };
        debug!(?rejected, "Home Assistant's check_config before reloading");
        match verdict {
            Ok(_) if rejected.is_empty() => {
                if self.refused_notified.swap(false, Ordering::Relaxed) {
                    api.dismiss(NOTIFICATION_ID).await;
                }
                true
            }
            Ok(check) => {
                let findings = check.errors.as_ref().or(check.warnings.as_ref());
                let findings = findings.map(String::as_str).unwrap_or_default();
                refuse(&format!(
                    "Home Assistant's check_config rejects the config of {rejected:?}: {}",
                    Untrusted(findings)
                ));
                // Home Assistant's wording can quote the files' values: the
                // notification names the check, not its findings.
                api.notify(
                    NOTIFICATION_ID,
                    "Configuration rejected by Home Assistant's check: changes not reloaded",
                    "The files are valid YAML, but Home Assistant's own configuration check found errors, so nothing was reloaded and Home Assistant keeps running the previous configuration. Run the check under Developer tools → YAML for its findings.",
                )
                .await;
                self.refused_notified.store(true, Ordering::Relaxed);
                false
            }
            Err(ApiError::ShuttingDown) => false,
            Err(e) => {
                refuse(&format!(
                    "Home Assistant's check_config could not be asked: {e}"
                ));
                false
            }
        }
    }

    /// Restarts Home Assistant if its own check passes, and names no error
    /// for a changed domain (an integration whose config fails its schema
    /// is not set up at all after a restart); true when asked to.
    async fn restart(
        &self,
        api: &HaApi,
        changed: &BTreeSet<String>,
        verdict: &Result<HaCheck, ApiError>,
    ) -> bool {
        let count = |result| {
            self.metrics
                .restarts
                .get_or_create(&RestartLabels { result })
                .inc();
        };
        match verdict {
            Ok(check) if !changed.iter().any(|d| check.rejects(d)) && check.errors.is_none() => {}
            Ok(check) => {
                count(RestartResult::Refused);
                self.tell(Verdict::Failed {
                    why: "Home Assistant's check_config refuses the restart".to_owned(),
                });
                let findings = check.errors.as_ref().or(check.warnings.as_ref());
                warn!(
                    "not restarting: Home Assistant's check_config rejects the config: {}",
                    Untrusted(findings.map(String::as_str).unwrap_or_default())
                );
                return false;
            }
            Err(ApiError::ShuttingDown) => return false,
            Err(e) => {
                count(RestartResult::Error);
                error!("not restarting: Home Assistant's check_config failed: {e}");
                return false;
            }
        }
        match api
            .call_service(CORE, "restart", None, Retry::OnlyIfNotSent)
            .await
        {
            // A connection dropped after sending is Home Assistant going down.
            Ok(()) | Err(ApiError::Unreachable(_)) => {
                count(RestartResult::Requested);
                self.tell(Verdict::Restarting);
                self.metrics.restart_required.set(0);
                info!("Home Assistant is restarting to apply the change");
                true
            }
            Err(ApiError::ShuttingDown) => false,
            Err(e) => {
                count(RestartResult::Error);
                error!("homeassistant.restart failed: {e}");
                false
            }
        }
    }

    /// Starts `domain.service` unless a reload of `domain` is in flight, in
    /// which case that one runs again when it finishes.
    fn request_reload(&self, api: &HaApi, domain: String, service: &'static str) {
        {
            let mut slots = lock(&self.slots);
            if let Some(again) = slots.get_mut(&domain) {
                *again = true;
                return;
            }
            slots.insert(domain.clone(), false);
        }
        let api = api.clone();
        let slots = self.slots.clone();
        let metrics = self.metrics.clone();
        let verdicts = self.verdicts.clone();
        self.shutdown.spawn(async move {
            loop {
                let started = std::time::Instant::now();
                match api
                    .call_service(&domain, service, None, Retry::Idempotent)
                    .await
                {
                    Ok(()) => {
                        metrics.count_reload(&domain, ReloadResult::Ok);
                        metrics
                            .last_reload
                            .set(hass_runtime::clock::unix_seconds_f64());
                        info!(%domain, service, took = ?started.elapsed(), "reloaded");
                        let _ = verdicts.send(Verdict::Reloaded(domain.clone()));
                    }
                    Err(ApiError::ShuttingDown) => return,
                    Err(e) => {
                        metrics.count_reload(&domain, ReloadResult::Error);
                        error!(%domain, service, "reload failed: {e}");
                        let why = format!("{domain}.{service} failed: {e}");
                        let _ = verdicts.send(Verdict::Failed { why });
                    }
                }
                let mut slots = lock(&slots);
                match slots.get_mut(&domain) {
                    Some(again) if *again => *again = false,
                    _ => {
                        slots.remove(&domain);
                        return;
                    }
                }
            }
        });
    }
}

fn lock(slots: &Mutex<HashMap<String, bool>>) -> MutexGuard<'_, HashMap<String, bool>> {
    slots.lock().unwrap_or_else(|p| p.into_inner())
}
