//! `hass-suite`: the newcomer's entry point, running the hass-sidecars suite
//! on one machine with embedded defaults.
//!
//! For now it prepares the suite's data directory and serves the shared admin
//! endpoints on port 9180; the broker, bridge, watcher and exporter join it as
//! they land.

use std::path::{Path, PathBuf};

use hass_runtime::secret::{SecretSource, SecretString};
use hass_runtime::{Component, ComponentInfo, Context, Fatal};
use serde::Deserialize;
use tracing::info;

/// The suite's YAML config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SuiteConfig {
    /// Where the suite keeps its state: the demo `/config` tree, broker data.
    pub data_dir: PathBuf,
    pub home_assistant: HomeAssistant,
}

impl Default for SuiteConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("hass-sidecars-data"),
            home_assistant: HomeAssistant::default(),
        }
    }
}

/// The Home Assistant instance the suite's parts talk to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HomeAssistant {
    pub url: String,
    /// A long-lived access token; without one nothing calls HA's API.
    pub token: Option<SecretSource>,
}

impl Default for HomeAssistant {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".to_owned(),
            token: None,
        }
    }
}

/// Flags of `hass-suite` beyond the shared ones.
#[derive(Debug, Clone, clap::Args)]
pub struct SuiteArgs {}

/// The prepared suite: config checked, token read.
#[derive(Debug)]
pub struct Suite {
    data_dir: PathBuf,
    ha_url: String,
    ha_token: Option<SecretString>,
}

impl Component for Suite {
    const INFO: ComponentInfo = ComponentInfo {
        name: "suite",
        version: env!("CARGO_PKG_VERSION"),
        admin_port: 9180,
    };
    type Args = SuiteArgs;
    type Config = SuiteConfig;

    fn prepare(_args: SuiteArgs, config: SuiteConfig, _path: Option<&Path>) -> Result<Self, Fatal> {
        if !config.home_assistant.url.starts_with("http://")
            && !config.home_assistant.url.starts_with("https://")
        {
            return Err(Fatal::config(format!(
                "home_assistant.url: {:?} is not an http:// or https:// URL",
                config.home_assistant.url
            )));
        }
        let ha_token = config
            .home_assistant
            .token
            .as_ref()
            .map(|source| {
                source
                    .load()
                    .map_err(|e| Fatal::config(format!("home_assistant.token: {e}")))
            })
            .transpose()?;
        Ok(Self {
            data_dir: config.data_dir,
            ha_url: config.home_assistant.url,
            ha_token,
        })
    }

    async fn run(self, ctx: Context) -> Result<(), Fatal> {
        let data_dir_check = ctx.readiness.register("data_dir");
        let prepared = std::fs::create_dir_all(&self.data_dir)
            .map_err(|e| format!("cannot create {}: {e}", self.data_dir.display()));
        data_dir_check.set_from(&prepared);
        info!(
            data_dir = %self.data_dir.display(),
            home_assistant = %self.ha_url,
            ha_token = if self.ha_token.is_some() { "set" } else { "none" },
            "suite running; stop with Ctrl-C"
        );
        ctx.shutdown.cancelled().await;
        Ok(())
    }
}
