//! Validates a Home Assistant config folder exactly the way Home Assistant's YAML
//! loader reads it (`!include*`, `!secret`, `!env_var`, packages), reporting every
//! problem with its file, line and column, and yields the resolved config so a
//! watcher can tell which top-level domains changed.
//!
//! `run` ([`ConfigWatcher`]) watches the folder and reloads in Home Assistant
//! exactly the domains whose resolved config changed.

pub mod backup;
mod changes;
mod config;
mod config_files;
mod diagnostic;
mod fswatch;
mod git_source;
mod ha_api;
pub mod history;
pub mod http_settings;
mod ignore;
mod loader;
mod local_rollback;
mod packages;
mod parse_ahead;
mod reloads;
mod rollback;
pub mod run_command;
mod scalar;
mod secrets;
mod settings;
mod value;
mod watch_metrics;
mod watcher;
mod yaml;

pub use changes::{changed_domains, graph_fingerprint};
pub use config::{CONFIG_FILE, Checked, load};
pub use diagnostic::{Diagnostic, Severity};
pub use git_source::SourceConfig;
pub use ignore::IgnoreList;
pub use reloads::NOTIFICATION_ID;
pub use settings::{HomeAssistantConfig, RunArgs, Settings, WatcherConfig};
pub use value::{Mapping, Node, Origin, Secret, SecretSource, Value};
pub use watcher::ConfigWatcher;
