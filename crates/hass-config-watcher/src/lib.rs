//! Watches a Home Assistant config folder, validates every change with
//! `hass-config-check` (the validator, which knows nothing of this crate), and
//! reloads in Home Assistant exactly the domains whose resolved config changed
//! ([`ConfigWatcher`], the `run` subcommand); keeps the history, backups and
//! rollbacks, applies HTTP settings through Home Assistant's API, and follows
//! a Git source.

pub mod backup;
mod config;
mod config_files;
mod fswatch;
mod git_source;
mod ha_api;
pub mod history;
pub mod http_settings;
mod ignore;
mod local_rollback;
mod reloads;
mod rollback;
pub mod run_command;
mod watch_metrics;
mod watcher;

pub use config::{HomeAssistantConfig, RunArgs, Settings, WatcherConfig};
pub use git_source::SourceConfig;
pub use ignore::IgnoreList;
pub use reloads::NOTIFICATION_ID;
pub use watcher::ConfigWatcher;
