//! The watcher's metrics, all under `hass_config_watcher_`. Label values are
//! bounded: results and reasons by these enums, `domain` by the integrations
//! Home Assistant has loaded.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ValidationResult {
    Valid,
    Invalid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ReloadResult {
    Ok,
    Error,
    /// Not sent: Home Assistant's own `check_config` found errors.
    Refused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum RestartReason {
    /// A changed domain has no `reload` service.
    NoReloadService,
    /// Something under `custom_components/` changed.
    CustomComponents,
    /// The config became valid after an invalid start: what Home Assistant
    /// runs is unknown.
    UnknownBaseline,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum RestartResult {
    /// `homeassistant.restart` was called.
    Requested,
    /// Home Assistant's own `check_config` said invalid: no restart.
    Refused,
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum EventKind {
    Relevant,
    Ignored,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum RescanReason {
    Periodic,
    /// The kernel's event queue overflowed: events were lost.
    Overflow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum BackupResult {
    Written,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum CommitResult {
    Committed,
    /// The allowlisted files equal the last commit's.
    Unchanged,
    Failed,
}

impl EncodeLabelValue for BackupResult {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            Self::Written => "written",
            Self::Failed => "failed",
        })
    }
}

impl EncodeLabelValue for CommitResult {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            Self::Committed => "committed",
            Self::Unchanged => "unchanged",
            Self::Failed => "failed",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct BackupLabels {
    pub(crate) result: BackupResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct CommitLabels {
    pub(crate) result: CommitResult,
}

/// How one application of the HTTP settings ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum HttpSettingsResult {
    /// Verified after Home Assistant's restart, and promoted to stable.
    Promoted,
    /// Verification failed: left pending, Home Assistant reverts it.
    NotPromoted,
    /// Home Assistant refused the settings, or could not start with them.
    Refused,
}

impl EncodeLabelValue for HttpSettingsResult {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            Self::Promoted => "promoted",
            Self::NotPromoted => "not_promoted",
            Self::Refused => "refused",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct HttpSettingsLabels {
    pub(crate) result: HttpSettingsResult,
}

/// What one new revision of the Git source came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SourceResult {
    /// Valid: its changed files are written.
    Applied,
    /// Invalid, unsafe or force-pushed: nothing written.
    Refused,
    /// The repository could not be read, or the folder written.
    Failed,
    /// Applied, then put back: Home Assistant did not take it.
    RolledBack,
}

impl EncodeLabelValue for SourceResult {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            Self::Applied => "applied",
            Self::Refused => "refused",
            Self::Failed => "failed",
            Self::RolledBack => "rolled_back",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct SourceLabels {
    pub(crate) result: SourceResult,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ApiErrorKind {
    Unreachable,
    Unauthorized,
    ServerError,
    ClientError,
    BadResponse,
}

impl EncodeLabelValue for ValidationResult {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            Self::Valid => "valid",
            Self::Invalid => "invalid",
        })
    }
}

impl EncodeLabelValue for ReloadResult {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Refused => "refused",
        })
    }
}

impl EncodeLabelValue for RestartReason {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            Self::NoReloadService => "no_reload_service",
            Self::CustomComponents => "custom_components",
            Self::UnknownBaseline => "unknown_baseline",
        })
    }
}

impl EncodeLabelValue for RestartResult {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            Self::Requested => "requested",
            Self::Refused => "refused",
            Self::Error => "error",
        })
    }
}

impl EncodeLabelValue for EventKind {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            Self::Relevant => "relevant",
            Self::Ignored => "ignored",
        })
    }
}

impl EncodeLabelValue for RescanReason {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            Self::Periodic => "periodic",
            Self::Overflow => "overflow",
        })
    }
}

impl EncodeLabelValue for ApiErrorKind {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            Self::Unreachable => "unreachable",
            Self::Unauthorized => "unauthorized",
            Self::ServerError => "server_error",
            Self::ClientError => "client_error",
            Self::BadResponse => "bad_response",
        })
    }
}

/// Label sets, one per label name and value type (the derive takes no generics).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct ValidationLabels {
    pub(crate) result: ValidationResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct ReloadLabels {
    pub(crate) domain: String,
    pub(crate) result: ReloadResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct RestartReasonLabels {
    pub(crate) reason: RestartReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct RestartLabels {
    pub(crate) result: RestartResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct EventLabels {
    pub(crate) kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct RescanLabels {
    pub(crate) reason: RescanReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct ApiErrorLabels {
    pub(crate) kind: ApiErrorKind,
}

/// Cheap to clone: every field is a shared handle.
#[derive(Debug, Clone)]
pub(crate) struct WatchMetrics {
    pub(crate) validation_runs: Family<ValidationLabels, Counter>,
    pub(crate) validation_errors: Gauge,
    pub(crate) validation_warnings: Gauge,
    pub(crate) config_valid: Gauge,
    pub(crate) validation_duration: Histogram,
    pub(crate) reloads: Family<ReloadLabels, Counter>,
    pub(crate) last_reload: Gauge<f64, AtomicU64>,
    pub(crate) restart_required: Gauge,
    pub(crate) restart_required_events: Family<RestartReasonLabels, Counter>,
    pub(crate) restarts: Family<RestartLabels, Counter>,
    pub(crate) watch_events: Family<EventLabels, Counter>,
    pub(crate) rescans: Family<RescanLabels, Counter>,
    pub(crate) ha_up: Gauge,
    pub(crate) ha_api_errors: Family<ApiErrorLabels, Counter>,
    pub(crate) backups: Family<BackupLabels, Counter>,
    pub(crate) last_backup: Gauge<f64, AtomicU64>,
    pub(crate) backup_size: Gauge,
    pub(crate) history_commits: Family<CommitLabels, Counter>,
    pub(crate) http_settings_applies: Family<HttpSettingsLabels, Counter>,
    pub(crate) http_settings_in_sync: Gauge,
    pub(crate) source_revisions: Family<SourceLabels, Counter>,
    pub(crate) source_conflicts: Counter,
    pub(crate) source_last_applied: Gauge<f64, AtomicU64>,
    pub(crate) local_rollbacks: Counter,
}

impl WatchMetrics {
    /// Fresh metrics, registered in `metrics`.
    pub(crate) fn register(metrics: &hass_runtime::metrics::Metrics) -> Self {
        let this = Self {
            validation_runs: Family::default(),
            validation_errors: Gauge::default(),
            validation_warnings: Gauge::default(),
            config_valid: Gauge::default(),
            // 1 ms to 8 s.
            validation_duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            reloads: Family::default(),
            last_reload: Gauge::default(),
            restart_required: Gauge::default(),
            restart_required_events: Family::default(),
            restarts: Family::default(),
            watch_events: Family::default(),
            rescans: Family::default(),
            ha_up: Gauge::default(),
            ha_api_errors: Family::default(),
            backups: Family::default(),
            last_backup: Gauge::default(),
            backup_size: Gauge::default(),
            history_commits: Family::default(),
            http_settings_applies: Family::default(),
            http_settings_in_sync: Gauge::default(),
            source_revisions: Family::default(),
            source_conflicts: Counter::default(),
            source_last_applied: Gauge::default(),
            local_rollbacks: Counter::default(),
        };
        let m = this.clone();
        metrics.register(move |r| {
            r.register(
                "validation_runs",
                "Validations of the whole include graph, by result",
                m.validation_runs,
            );
            r.register(
                "validation_errors",
                "Errors found by the last validation",
                m.validation_errors,
            );
            r.register(
                "validation_warnings",
                "Warnings found by the last validation",
                m.validation_warnings,
            );
            r.register(
                "config_valid",
                "Whether the config on disk was valid at the last validation (1) or not (0)",
                m.config_valid,
            );
            r.register(
                "validation_duration_seconds",
                "Time to load and check the whole include graph",
                m.validation_duration,
            );
            r.register(
                "reloads",
                "Reload service calls, by domain and result",
                m.reloads,
            );
            r.register(
                "last_successful_reload_timestamp_seconds",
                "Unix time of the last reload Home Assistant acknowledged",
                m.last_reload,
            );
            r.register(
                "restart_required",
                "Whether a change waits for a Home Assistant restart (1) or not (0)",
                m.restart_required,
            );
            r.register(
                "restart_required_events",
                "Changes that needed a restart, by reason",
                m.restart_required_events,
            );
            r.register(
                "restarts",
                "Automatic restarts of Home Assistant, by result",
                m.restarts,
            );
            r.register(
                "watch_events",
                "Filesystem events under the config folder, relevant or ignored",
                m.watch_events,
            );
            r.register(
                "rescans",
                "Full rescans of the include graph, by reason",
                m.rescans,
            );
            r.register(
                "ha_up",
                "Whether Home Assistant's API answered the last call (1) or not (0)",
                m.ha_up,
            );
            r.register(
                "ha_api_errors",
                "Failed Home Assistant API calls, by kind",
                m.ha_api_errors,
            );
            r.register(
                "backups",
                "Backups written or failed (scheduled ones)",
                m.backups,
            );
            r.register(
                "last_backup_timestamp_seconds",
                "Unix time of the last backup written",
                m.last_backup,
            );
            r.register(
                "last_backup_size_bytes",
                "Size of the last backup written",
                m.backup_size,
            );
            r.register(
                "history_commits",
                "Valid configs recorded in the history repository, by result",
                m.history_commits,
            );
            r.register(
                "http_settings_applies",
                "Applications of the managed HTTP settings through Home Assistant's API, by result",
                m.http_settings_applies,
            );
            r.register(
                "http_settings_in_sync",
                "Whether Home Assistant's stable HTTP config has the managed settings (1) or not (0)",
                m.http_settings_in_sync,
            );
            r.register(
                "source_revisions",
                "New revisions of the Git source, by what came of them",
                m.source_revisions,
            );
            r.register(
                "source_conflicts",
                "Files changed both in the Git source and in the folder, kept as the folder has them",
                m.source_conflicts,
            );
            r.register(
                "source_last_applied_timestamp_seconds",
                "Unix time the last revision of the Git source was applied",
                m.source_last_applied,
            );
            r.register(
                "local_rollbacks",
                "Local edits put back because Home Assistant did not take them (rollback_local_edits)",
                m.local_rollbacks,
            );
        });
        this
    }

    pub(crate) fn count_api_error(&self, kind: ApiErrorKind) {
        self.ha_api_errors
            .get_or_create(&ApiErrorLabels { kind })
            .inc();
    }

    pub(crate) fn count_reload(&self, domain: &str, result: ReloadResult) {
        self.reloads
            .get_or_create(&ReloadLabels {
                domain: domain.to_owned(),
                result,
            })
            .inc();
    }
}
