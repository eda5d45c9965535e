//! `hass-config-watcher run`: the component that watches `/config`, validates
//! the whole include graph after each quiet burst of changes, and asks Home
//! Assistant to reload exactly the domains whose resolved config changed.
//!
//! Readiness is one check, `watch`: the filesystem watch is set up and the
//! first validation has run. Home Assistant being reachable is deliberately not
//! part of it: the watcher runs in Home Assistant's pod, and a pod is ready only
//! when all its containers are, so tying the sidecar's readiness to HA's API
//! (or to a wrong token) would take Home Assistant itself out of its Service.
//! Reachability is the `ha_up` gauge and `ha_api_errors_total` instead.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hass_runtime::{Component, ComponentInfo, Context, Fatal};
use tokio::time::{MissedTickBehavior, interval_at, sleep_until};
use tracing::{error, info, warn};

use crate::config::{RunArgs, Settings, WatcherConfig};
use crate::fswatch::{self, Pending};
use crate::git_source::{self, GitSource};
use crate::ha_api::HaApi;
use crate::history::{Committed, History};
use crate::http_settings;
use crate::local_rollback::LocalRollback;
use crate::reloads::{Applier, Plan, Work};
use crate::watch_metrics::{
    BackupLabels, BackupResult, CommitLabels, CommitResult, RescanLabels, RescanReason,
    RestartReason, ValidationLabels, ValidationResult, WatchMetrics,
};
use hass_config_check::Mapping;
use hass_config_check::{Checked, Diagnostic, Severity};
use hass_config_check::{changed_domains, graph_fingerprint};

/// How many diagnostics a persistent notification lists.
pub(crate) const NOTIFICATION_LINES: usize = 20;

/// The prepared watcher: settings checked, token readable.
#[derive(Debug)]
pub struct ConfigWatcher {
    settings: Settings,
    history: Option<History>,
    source: Option<GitSource>,
}

impl ConfigWatcher {
    pub fn settings(&self) -> &Settings {
        &self.settings
    }
}

impl Component for ConfigWatcher {
    const INFO: ComponentInfo = ComponentInfo {
        name: "config-watcher",
        version: env!("CARGO_PKG_VERSION"),
        admin_port: hass_runtime::ports::WATCHER_ADMIN,
    };
    type Args = RunArgs;
    type Config = WatcherConfig;

    fn admin_config(config: &WatcherConfig) -> Option<hass_runtime::config::AdminConfig> {
        Some(config.admin)
    }

    fn prepare(args: RunArgs, config: WatcherConfig, _path: Option<&Path>) -> Result<Self, Fatal> {
        let settings = Settings::new(args, config)?;
        // Opened (and created) now, so a read-only /config without a
        // separate `history.repo` stops the pod at startup.
        let history = match &settings.history {
            Some(h) => Some(
                History::open(&settings.config_dir, h.repo.as_deref(), h.include_secrets)
                    .map_err(|e| Fatal::config(format!("history: {e}")))?,
            ),
            None => None,
        };
        let source = match &settings.source {
            Some(source) => Some(
                source
                    .check(&settings.config_dir)
                    .map_err(|e| Fatal::config(format!("source: {e}")))?,
            ),
            None => None,
        };
        Ok(Self {
            settings,
            history,
            source,
        })
    }

    async fn run(self, ctx: Context) -> Result<(), Fatal> {
        let settings = self.settings;
        let metrics = WatchMetrics::register(&ctx.metrics);
        let watching = ctx.readiness.register("watch");
        let tick = Duration::from_secs(5);
        let heartbeat = ctx.liveness.register("watch-loop", tick * 12);
        let root = settings.config_dir.clone();
        let (watcher, changes) = fswatch::watch(&root, settings.ignore.clone(), metrics.clone())
            .map_err(|e| Fatal::runtime(format!("cannot watch {}: {e}", root.display())))?;
        let api = settings.ha.token.clone().map(|token| {
            HaApi::new(
                settings.ha_base.clone(),
                token,
                &settings.ha,
                metrics.clone(),
                ctx.shutdown.clone(),
            )
        });
        let http_settings = match (&api, &settings.http_settings) {
            (Some(api), Some((config, managed))) => Some(tokio::spawn(http_settings::keep(
                api.clone(),
                config.clone(),
                managed.clone(),
                metrics.clone(),
                ctx.shutdown.clone(),
            ))),
            _ => None,
        };
        let applier = Applier::start(
            api.clone(),
            settings.auto_restart,
            settings.check_before_reload,
            metrics.clone(),
            ctx.shutdown.clone(),
        );
        let source = self.source.map(|source| {
            tokio::spawn(git_source::keep(
                source,
                settings.ignore.clone(),
                api.clone(),
                applier.verdicts(),
                metrics.clone(),
                ctx.shutdown.clone(),
            ))
        });
        let local_rollback = match (settings.local_rollback, &api) {
            (Some(window), Some(api)) => Some(LocalRollback::new(
                root.clone(),
                settings.ignore.clone(),
                window,
                api.clone(),
                metrics.clone(),
                ctx.shutdown.clone(),
            )),
            _ => None,
        };
        let mut state = State {
            local_rollback,
            root: root.clone(),
            notify_invalid: settings.notify_invalid,
            metrics: metrics.clone(),
            applier,
            baseline: None,
            fingerprint: 0,
            graph: (Vec::new(), Vec::new()),
            invalid: false,
            custom_components: false,
            history: self.history.map(|h| Arc::new(Mutex::new(h))),
        };
        // What Home Assistant runs is taken to be what is on disk now: nothing
        // is reloaded for it.
        state.initial().await;
        watching.set_ready();
        info!(config_dir = %root.display(), debounce = ?settings.debounce, "watching");

        let mut pending = Pending::default();
        let mut first_change: Option<Instant> = None;
        let mut deadline = tokio::time::Instant::now();
        let max_delay = settings.debounce * 10;
        let start = tokio::time::Instant::now();
        let mut rescan = interval_at(start + settings.rescan_interval, settings.rescan_interval);
        rescan.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut beat = interval_at(start, tick);
        beat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Without a schedule the timer still exists, but its branch is off.
        let every = settings
            .backup_interval
            .unwrap_or(Duration::from_secs(86_400));
        let mut backup = interval_at(start + every, every);
        backup.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = ctx.shutdown.cancelled() => break,
                () = changes.changed() => {
                    let new = changes.take();
                    if new.is_empty() {
                        continue;
                    }
                    if new.overflow {
                        metrics.rescans.get_or_create(&RescanLabels { reason: RescanReason::Overflow }).inc();
                    }
                    if new.data_swap && !pending.data_swap {
                        info!("ConfigMap/Secret volume updated (..data swapped): revalidating everything behind it");
                    }
                    merge(&mut pending, new);
                    // Trailing debounce: wait for a quiet `debounce`, but never
                    // longer than ten of them after the first change, so a
                    // folder that never settles is still validated.
                    let now = Instant::now();
                    let first = *first_change.get_or_insert(now);
                    let quiet = now + settings.debounce;
                    deadline = (quiet.min(first + max_delay)).into();
                }
                () = sleep_until(deadline), if first_change.is_some() => {
                    first_change = None;
                    let changed = std::mem::take(&mut pending);
                    state.cycle(changed.custom_components).await;
                }
                _ = rescan.tick() => {
                    metrics.rescans.get_or_create(&RescanLabels { reason: RescanReason::Periodic }).inc();
                    if first_change.is_none() && state.graph_changed().await {
                        info!("periodic rescan: the include graph changed without a filesystem event; revalidating");
                        state.cycle(false).await;
                    }
                }
                _ = backup.tick(), if settings.backup_interval.is_some() => {
                    let (root, dir, keep) = (root.clone(), settings.backup_dir.clone(), settings.backup_keep);
                    let metrics = metrics.clone();
                    // Tracked, so SIGTERM waits for a backup being written.
                    ctx.shutdown.spawn(async move {
                        let done = tokio::task::spawn_blocking(move || {
                            crate::backup::write_backup(&root, &dir, keep)
                        })
                        .await;
                        record_backup(&metrics, done);
                    });
                }
                _ = beat.tick() => heartbeat.beat(),
            }
        }
        drop(watcher);
        // It stops at the shutdown signal: a call in flight is cut short.
        for task in [http_settings, source].into_iter().flatten() {
            let _ = task.await;
        }
        Ok(())
    }
}

fn record_backup(
    metrics: &WatchMetrics,
    done: Result<
        Result<crate::backup::Written, crate::backup::BackupError>,
        tokio::task::JoinError,
    >,
) {
    let result = match done {
        Ok(Ok(written)) => {
            metrics
                .last_backup
                .set(hass_runtime::clock::unix_seconds_f64());
            metrics
                .backup_size
                .set(i64::try_from(written.size).unwrap_or(i64::MAX));
            info!(path = %written.path.display(), size = written.size, deleted = written.deleted.len(), "backup written");
            BackupResult::Written
        }
        Ok(Err(e)) => {
            error!("{e}");
            BackupResult::Failed
        }
        Err(e) => {
            error!("backup task failed: {e}");
            BackupResult::Failed
        }
    };
    metrics
        .backups
        .get_or_create(&BackupLabels { result })
        .inc();
}

fn merge(into: &mut Pending, new: Pending) {
    into.relevant += new.relevant;
    into.custom_components |= new.custom_components;
    into.data_swap |= new.data_swap;
    into.overflow |= new.overflow;
}

/// What the loop remembers between validations.
struct State {
    root: PathBuf,
    notify_invalid: bool,
    metrics: WatchMetrics,
    applier: Applier,
    /// The last valid config: what Home Assistant runs once the reloads are done.
    baseline: Option<Mapping>,
    /// The include graph's fingerprint at the last validation.
    fingerprint: u64,
    /// The files and folders the last validation read.
    graph: (Vec<PathBuf>, Vec<PathBuf>),
    /// The last validation found errors.
    invalid: bool,
    /// `custom_components/` changed while the config was invalid.
    custom_components: bool,
    /// Where valid configs are committed.
    history: Option<Arc<Mutex<History>>>,
    /// `rollback_local_edits`.
    local_rollback: Option<LocalRollback>,
}

impl State {
    async fn initial(&mut self) {
        let checked = self.validate().await;
        if let Some(config) = checked.config {
            self.baseline = Some(config);
            if let Some(rollback) = &mut self.local_rollback {
                rollback.take_as_good().await;
            }
            self.record("Valid config at startup".to_owned()).await;
        }
    }

    /// Commits the config on disk, which was just found valid.
    async fn record(&self, message: String) {
        let Some(history) = self.history.clone() else {
            return;
        };
        let done = tokio::task::spawn_blocking(move || {
            history
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .commit(&message)
        })
        .await;
        let result = match done {
            Ok(Ok(Committed::New(id))) => {
                info!(commit = %id, "history: committed");
                CommitResult::Committed
            }
            Ok(Ok(Committed::Unchanged)) => CommitResult::Unchanged,
            Ok(Err(e)) => {
                error!("history: cannot commit: {e}");
                CommitResult::Failed
            }
            Err(e) => {
                error!("history: commit task failed: {e}");
                CommitResult::Failed
            }
        };
        self.metrics
            .history_commits
            .get_or_create(&CommitLabels { result })
            .inc();
    }

    /// Validates, and on a valid config hands what changed to the applier.
    async fn cycle(&mut self, custom_components: bool) {
        self.custom_components |= custom_components;
        let checked = self.validate().await;
        let Some(config) = checked.config else {
            return;
        };
        let mut plan = Plan::default();
        match &self.baseline {
            Some(old) => plan.domains = changed_domains(old, &config),
            None => {
                plan.restart_reasons.insert(RestartReason::UnknownBaseline);
            }
        }
        if std::mem::take(&mut self.custom_components) {
            plan.restart_reasons.insert(RestartReason::CustomComponents);
        }
        self.baseline = Some(config);
        let message = if plan.domains.is_empty() {
            "Valid config; no domain changed".to_owned()
        } else {
            let domains: Vec<&str> = plan.domains.iter().map(String::as_str).collect();
            format!("Valid config; changed: {}", domains.join(", "))
        };
        if plan.is_empty() {
            info!("valid; nothing Home Assistant sees has changed");
            if let Some(rollback) = &mut self.local_rollback {
                rollback.take_as_good().await;
            }
        } else {
            info!(domains = ?plan.domains, restart = ?plan.restart_reasons, "valid; applying the change");
            // Subscribed before the plan is sent: no verdict of it is missed.
            let verdicts = self.applier.verdicts();
            self.applier.send(Work::Apply(plan));
            if let Some(rollback) = &mut self.local_rollback {
                rollback.watch(verdicts).await;
            }
        }
        self.record(message).await;
    }

    /// Loads the whole tree, records the outcome in logs and metrics, and
    /// raises or dismisses the notification.
    async fn validate(&mut self) -> Checked {
        let root = self.root.clone();
        let started = Instant::now();
        let joined = tokio::task::spawn_blocking(move || {
            let checked = hass_config_check::load(&root);
            let fingerprint = graph_fingerprint(&root, &checked.files, &checked.dirs);
            (checked, fingerprint)
        })
        .await;
        let (checked, fingerprint) = match joined {
            Ok(done) => done,
            Err(e) => {
                // `load` catches its own panics; this is the blocking pool failing.
                error!("validation task failed: {e}");
                (internal_error(), 0)
            }
        };
        self.fingerprint = fingerprint;
        self.graph = (checked.files.clone(), checked.dirs.clone());
        let took = started.elapsed();
        self.metrics.validation_duration.observe(took.as_secs_f64());
        let errors = count(&checked.diagnostics, Severity::Error);
        let warnings = count(&checked.diagnostics, Severity::Warning);
        self.metrics.validation_errors.set(errors as i64);
        self.metrics.validation_warnings.set(warnings as i64);
        for diagnostic in &checked.diagnostics {
            match diagnostic.severity {
                Severity::Error => error!("{diagnostic}"),
                Severity::Warning => warn!("{diagnostic}"),
            }
        }
        let result = if checked.has_errors() {
            ValidationResult::Invalid
        } else {
            ValidationResult::Valid
        };
        self.metrics
            .validation_runs
            .get_or_create(&ValidationLabels { result })
            .inc();
        self.metrics
            .config_valid
            .set(i64::from(result == ValidationResult::Valid));
        info!(
            ?result,
            errors,
            warnings,
            files = checked.files.len(),
            ?took,
            "validated"
        );
        if checked.has_errors() {
            error!("the config is invalid: nothing is reloaded until it is fixed");
            if self.notify_invalid {
                self.applier
                    .send(Work::NotifyInvalid(notification_text(&checked.diagnostics)));
            }
            self.invalid = true;
        } else if std::mem::take(&mut self.invalid) && self.notify_invalid {
            self.applier.send(Work::DismissNotification);
        }
        checked
    }

    /// Whether the files of the include graph differ from the last validation.
    async fn graph_changed(&self) -> bool {
        let root = self.root.clone();
        let (files, dirs) = self.graph.clone();
        let before = self.fingerprint;
        tokio::task::spawn_blocking(move || graph_fingerprint(&root, &files, &dirs) != before)
            .await
            .unwrap_or(false)
    }
}

fn count(diagnostics: &[Diagnostic], severity: Severity) -> usize {
    diagnostics
        .iter()
        .filter(|d| d.severity == severity)
        .count()
}

fn notification_text(diagnostics: &[Diagnostic]) -> String {
    let mut lines: Vec<String> = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .take(NOTIFICATION_LINES)
        .map(|d| format!("- `{d}`"))
        .collect();
    let total = count(diagnostics, Severity::Error);
    if total > NOTIFICATION_LINES {
        lines.push(format!("- … and {} more", total - NOTIFICATION_LINES));
    }
    format!(
        "hass-config-watcher found errors in the config on disk; Home Assistant keeps running the last valid config.\n\n{}",
        lines.join("\n")
    )
}

fn internal_error() -> Checked {
    Checked {
        config: None,
        diagnostics: vec![Diagnostic {
            file: PathBuf::from(hass_config_check::CONFIG_FILE),
            line: 1,
            column: 1,
            severity: Severity::Error,
            message: "internal error: the validation task failed; please report this".to_owned(),
        }],
        files: Vec::new(),
        dirs: Vec::new(),
    }
}
