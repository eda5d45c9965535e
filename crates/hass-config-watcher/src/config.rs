//! The `run` subcommand's YAML config and flags, and the checks `prepare` makes
//! on them before anything is watched or called.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hass_runtime::Fatal;
use hass_runtime::config::AdminConfig;
use hass_runtime::secret::SecretSource;
use serde::Deserialize;

use crate::git_source::SourceConfig;
use crate::http_settings::HttpSettingsConfig;
use crate::ignore::IgnoreList;

/// `hass-config-watcher run --config FILE`: every key is optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatcherConfig {
    /// The admin server (`/healthz`, `/readyz`, `/metrics`); `--admin-listen`
    /// wins over it.
    pub admin: AdminConfig,
    /// Home Assistant's config folder, the one holding `configuration.yaml`.
    pub config_dir: PathBuf,
    pub home_assistant: HomeAssistantConfig,
    /// Quiet time after the last change before the tree is validated: a burst
    /// of writes (an editor, `git pull`, a ConfigMap swap) is validated once,
    /// in its final state.
    #[serde(with = "hass_runtime::config::duration")]
    pub debounce: Duration,
    /// How often the files of the include graph are re-read and hashed, to
    /// catch changes no filesystem event announced (files behind symlinks that
    /// point outside the folder, network filesystems).
    #[serde(with = "hass_runtime::config::duration")]
    pub rescan_interval: Duration,
    /// Restart Home Assistant when a change needs it (a domain without a
    /// `reload` service, `custom_components/`), after its own `check_config`
    /// says the config is valid. Off: only report that a restart is required.
    pub auto_restart: bool,
    /// Ask Home Assistant's own `check_config` before reloading, and reload
    /// nothing it rejects: it knows every integration's schema, where this
    /// validator knows YAML. Off saves its second or so per change.
    pub check_before_reload: bool,
    /// Raise a persistent notification in Home Assistant while the config on
    /// disk is invalid, and dismiss it once it is valid again.
    pub notify_invalid: bool,
    /// More paths to ignore, relative to `config_dir`, beside Home Assistant's
    /// own churn (`.storage/`, logs, databases…). `name/` matches a folder at
    /// any depth, `/name` only at the top; `*` matches within one path part.
    pub ignore: Vec<String>,
    /// Commit every valid config to a git repository; absent: no history.
    pub history: Option<HistoryConfig>,
    /// How often to write a backup (`24h`); absent: only on demand
    /// (`hass-config-watcher backup`).
    #[serde(with = "hass_runtime::config::optional_duration")]
    pub backup_interval: Option<Duration>,
    /// Where backups go; default `<config_dir>/backups`, where Home
    /// Assistant's own UI lists them.
    pub backup_dir: Option<PathBuf>,
    /// How many of this tool's backups to keep, oldest deleted first; 0 keeps all.
    pub backup_keep: usize,
    /// Home Assistant's HTTP settings (2026.8 and later take them only
    /// through its API): the keys named here are kept as written, verified
    /// after Home Assistant's restart before they are made stable. Needs
    /// `home_assistant.token` (an owner's).
    pub http_settings: Option<HttpSettingsConfig>,
    /// Put back a local edit Home Assistant does not take (a failed reload,
    /// its check refusing it, no RUNNING within `rollback_window` of a
    /// restart). Off: such an edit stays on disk, unreloaded. Needs
    /// `home_assistant.token`; the Git source rolls back its own revisions.
    pub rollback_local_edits: bool,
    /// How long a local edit is watched (`rollback_local_edits`).
    #[serde(with = "hass_runtime::config::duration")]
    pub rollback_window: Duration,
    /// Follow a branch of a Git repository: each new revision is validated
    /// and written into `config_dir` only when valid. Absent: the folder is
    /// edited in place.
    pub source: Option<SourceConfig>,
}

/// `history:` — `{}` commits into `<config_dir>/.git`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// A separate (bare) repository instead of `<config_dir>/.git`, for a
    /// read-only `/config` or to keep `.git` out of it.
    pub repo: Option<PathBuf>,
    /// Commit `secrets.yaml` too. Off: it never enters the repository.
    pub include_secrets: bool,
}

impl Default for WatcherConfig {
    fn default() -> Self {
        Self {
            admin: AdminConfig::default(),
            config_dir: PathBuf::from("/config"),
            home_assistant: HomeAssistantConfig::default(),
            debounce: Duration::from_secs(1),
            rescan_interval: Duration::from_secs(60),
            auto_restart: false,
            check_before_reload: true,
            notify_invalid: true,
            ignore: Vec::new(),
            history: None,
            backup_interval: None,
            backup_dir: None,
            backup_keep: 7,
            http_settings: None,
            rollback_local_edits: false,
            rollback_window: Duration::from_secs(120),
            source: None,
        }
    }
}

/// How to reach Home Assistant's REST API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HomeAssistantConfig {
    /// Base URL, plain HTTP: Home Assistant runs in the same pod.
    pub url: String,
    /// A long-lived access token (`{file: …}` or `{env: …}`). Without one the
    /// watcher only validates: nothing ever calls `/api/` without a token.
    pub token: Option<SecretSource>,
    /// Limit for one API call; reloading many automations can take a while.
    #[serde(with = "hass_runtime::config::duration")]
    pub request_timeout: Duration,
    /// First wait before retrying a call Home Assistant could not answer
    /// (down, starting); doubled on each retry up to `retry_max`, with jitter.
    #[serde(with = "hass_runtime::config::duration")]
    pub retry_initial: Duration,
    #[serde(with = "hass_runtime::config::duration")]
    pub retry_max: Duration,
}

impl Default for HomeAssistantConfig {
    fn default() -> Self {
        Self {
            url: format!("http://127.0.0.1:{}", hass_runtime::ports::HOME_ASSISTANT),
            token: None,
            request_timeout: Duration::from_secs(60),
            retry_initial: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
        }
    }
}

/// Flags of `hass-config-watcher run` beside the shared ones; each overrides
/// its YAML key and has an env fallback (`HASS_CONFIG_WATCHER_CONFIG_DIR`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunArgs {
    /// Home Assistant's config folder (YAML `config_dir`).
    #[arg(long, value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    /// Home Assistant's base URL (YAML `home_assistant.url`).
    #[arg(long, value_name = "URL")]
    pub ha_url: Option<String>,
}

/// The settings a running watcher uses, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config_dir: PathBuf,
    pub ha: HomeAssistantConfig,
    /// The HA URL without a trailing slash.
    pub ha_base: String,
    pub debounce: Duration,
    pub rescan_interval: Duration,
    pub auto_restart: bool,
    pub check_before_reload: bool,
    pub notify_invalid: bool,
    pub ignore: IgnoreList,
    pub history: Option<HistoryConfig>,
    pub backup_interval: Option<Duration>,
    /// Absolute.
    pub backup_dir: PathBuf,
    pub backup_keep: usize,
    /// With the managed keys as Home Assistant stores them.
    pub http_settings: Option<(
        HttpSettingsConfig,
        serde_json::Map<String, serde_json::Value>,
    )>,
    pub source: Option<SourceConfig>,
    /// The window of `rollback_local_edits`; None: off.
    pub local_rollback: Option<Duration>,
}

impl Settings {
    /// Applies flag overrides and checks everything that can be checked
    /// without serving. Every error is bad config (exit 2).
    pub fn new(args: RunArgs, mut config: WatcherConfig) -> Result<Self, Fatal> {
        if let Some(dir) = args.config_dir {
            config.config_dir = dir;
        }
        if let Some(url) = args.ha_url {
            config.home_assistant.url = url;
        }
        let config_dir = std::path::absolute(&config.config_dir).map_err(|e| {
            Fatal::config(format!("config_dir: {}: {e}", config.config_dir.display()))
        })?;
        if !config_dir.is_dir() {
            return Err(Fatal::config(format!(
                "config_dir: {} is not a folder (mount Home Assistant's /config there)",
                config_dir.display()
            )));
        }
        let ha_base = hass_runtime::http_client::base_url(&config.home_assistant.url)
            .map_err(|e| Fatal::config(format!("home_assistant.url: {e}")))?;
        if let Some(token) = &config.home_assistant.token {
            // Read now so a missing Secret stops the pod at startup, not at the
            // first change; it is read again before each batch of calls, so a
            // rotated Secret is picked up.
            token
                .load()
                .map_err(|e| Fatal::config(format!("home_assistant.token: {e}")))?;
        }
        for (name, value) in [
            ("debounce", config.debounce),
            ("rescan_interval", config.rescan_interval),
            (
                "home_assistant.request_timeout",
                config.home_assistant.request_timeout,
            ),
            (
                "home_assistant.retry_initial",
                config.home_assistant.retry_initial,
            ),
            ("home_assistant.retry_max", config.home_assistant.retry_max),
        ] {
            if value.is_zero() {
                return Err(Fatal::config(format!("{name}: must be more than 0s")));
            }
        }
        let ignore =
            IgnoreList::new(&config.ignore).map_err(|e| Fatal::config(format!("ignore: {e}")))?;
        if config.backup_interval.is_some_and(|i| i.is_zero()) {
            return Err(Fatal::config("backup_interval: must be more than 0s"));
        }
        let backup_dir = match &config.backup_dir {
            Some(dir) => std::path::absolute(dir)
                .map_err(|e| Fatal::config(format!("backup_dir: {}: {e}", dir.display())))?,
            None => config_dir.join("backups"),
        };
        let mut history = config.history;
        if let Some(h) = &mut history
            && let Some(repo) = &h.repo
        {
            h.repo =
                Some(std::path::absolute(repo).map_err(|e| {
                    Fatal::config(format!("history.repo: {}: {e}", repo.display()))
                })?);
        }
        let http_settings = match config.http_settings {
            Some(http) => {
                if config.home_assistant.token.is_none() {
                    return Err(Fatal::config(
                        "http_settings: needs home_assistant.token (an owner's)",
                    ));
                }
                let managed = http
                    .managed()
                    .map_err(|e| Fatal::config(format!("http_settings: {e}")))?;
                Some((http, managed))
            }
            None => None,
        };
        let local_rollback = if config.rollback_local_edits {
            if config.home_assistant.token.is_none() {
                return Err(Fatal::config(
                    "rollback_local_edits: needs home_assistant.token, to see what Home Assistant makes of an edit",
                ));
            }
            if config.source.is_some() {
                return Err(Fatal::config(
                    "rollback_local_edits: with a Git source, the source rolls back its own revisions (source.rollback); turn one off",
                ));
            }
            if config.rollback_window.is_zero() {
                return Err(Fatal::config("rollback_window: must be more than 0s"));
            }
            Some(config.rollback_window)
        } else {
            None
        };
        Ok(Self {
            local_rollback,
            source: config.source,
            http_settings,
            history,
            backup_interval: config.backup_interval,
            backup_dir,
            backup_keep: config.backup_keep,
            config_dir,
            ha: config.home_assistant,
            ha_base,
            debounce: config.debounce,
            rescan_interval: config.rescan_interval,
            auto_restart: config.auto_restart,
            check_before_reload: config.check_before_reload,
            notify_invalid: config.notify_invalid,
            ignore,
        })
    }

    pub fn config_dir(&self) -> &Path {
        &self.config_dir
    }
}
