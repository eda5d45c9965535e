//! `hass-suite`: the newcomer's entry point, running the whole hass-sidecars
//! suite on one machine with embedded defaults.
//!
//! It starts the other binaries (found beside its own executable) as child
//! processes, the way one Home Assistant pod runs them: hass-broker with a
//! generated user, hass-config-watcher on a demo config folder, hass-exporter
//! probing the others, and hass-serial-bridge on a virtual stick (a socat pty
//! pair) when no real one is configured. Its own `/readyz` is ready when every
//! child's is; a child that dies is reported and restarted with backoff;
//! SIGTERM or Ctrl-C stops every child with SIGTERM and waits for it.

mod banner;
mod leftover;
mod recorder_db;
mod setup;
mod supervise;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hass_runtime::ports;
use hass_runtime::secret::{SecretSource, SecretString};
use hass_runtime::{Component, ComponentInfo, Context, Fatal};
use serde::Deserialize;
use tracing::{info, warn};

pub use supervise::ChildSpec;

/// The suite's YAML config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SuiteConfig {
    /// The suite's own admin server; without it, `listen_host` port 9180
    /// (loopback by default, like every part); `--admin-listen` wins.
    pub admin: hass_runtime::config::AdminConfig,
    /// Where the suite keeps its state: the demo `/config` tree, broker data,
    /// the generated MQTT password, the children's configs and logs.
    pub data_dir: PathBuf,
    pub home_assistant: HomeAssistant,
    /// The address every part listens on. Loopback keeps the suite private to
    /// this machine; `0.0.0.0` opens it to the network.
    pub listen_host: IpAddr,
    pub ports: Ports,
    /// The MQTT user the suite creates; its password is generated once and
    /// kept in `<data_dir>/mqtt-password`.
    pub mqtt_user: String,
    /// A real Zigbee/Z-Wave stick (`/dev/serial/by-id/...`). Without one the
    /// bridge serves a virtual stick made with socat.
    pub serial_device: Option<PathBuf>,
    /// A PostgreSQL for Home Assistant's recorder, kept in
    /// `<data_dir>/postgres`: `auto` runs one when PostgreSQL is installed.
    pub recorder_database: RecorderDatabase,
}

/// Whether the suite runs a recorder database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecorderDatabase {
    /// When `initdb` and `postgres` are found (PATH or Debian's folders).
    #[default]
    Auto,
    Off,
}

impl Default for SuiteConfig {
    fn default() -> Self {
        Self {
            admin: hass_runtime::config::AdminConfig::default(),
            data_dir: PathBuf::from("hass-sidecars-data"),
            home_assistant: HomeAssistant::default(),
            listen_host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            ports: Ports::default(),
            mqtt_user: "hass".to_owned(),
            serial_device: None,
            recorder_database: RecorderDatabase::Auto,
        }
    }
}

/// Every port the suite's children listen on; the defaults are docs/design.md's.
/// The suite's own admin port is `--admin-listen` (9180).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ports {
    pub mqtt: u16,
    pub mqtt_ws: u16,
    pub serial: u16,
    pub broker_admin: u16,
    pub bridge_admin: u16,
    pub watcher_admin: u16,
    pub exporter_admin: u16,
    pub postgres: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Self {
            mqtt: ports::MQTT,
            mqtt_ws: ports::MQTT_WS,
            serial: ports::SERIAL_DEVICE,
            broker_admin: ports::BROKER_ADMIN,
            bridge_admin: ports::BRIDGE_ADMIN,
            watcher_admin: ports::WATCHER_ADMIN,
            exporter_admin: ports::EXPORTER_ADMIN,
            postgres: ports::POSTGRES,
        }
    }
}

/// The Home Assistant instance the suite's parts talk to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HomeAssistant {
    pub url: String,
    /// A long-lived access token; without one nothing calls HA's API (the
    /// watcher only validates, the exporter does not probe HA).
    pub token: Option<SecretSource>,
}

impl Default for HomeAssistant {
    fn default() -> Self {
        Self {
            url: format!("http://127.0.0.1:{}", hass_runtime::ports::HOME_ASSISTANT),
            token: None,
        }
    }
}

/// Flags of `hass-suite` beyond the shared ones.
#[derive(Debug, Clone, clap::Args)]
pub struct SuiteArgs {}

/// The prepared suite: config checked, token readable.
#[derive(Debug)]
pub struct Suite {
    config: SuiteConfig,
    /// The token's source with relative file paths made absolute, as the
    /// children get it.
    ha_token: Option<SecretSource>,
    /// The token itself, read once to fail early; never used or printed.
    _ha_token_value: Option<SecretString>,
}

impl Suite {
    fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.config.listen_host, port)
    }

    /// Where a client on this machine reaches `port`: loopback when the suite
    /// listens on every interface.
    fn client_addr(&self, port: u16) -> SocketAddr {
        let host = if self.config.listen_host.is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            self.config.listen_host
        };
        SocketAddr::new(host, port)
    }
}

impl Component for Suite {
    const INFO: ComponentInfo = ComponentInfo {
        name: "suite",
        version: env!("CARGO_PKG_VERSION"),
        admin_port: ports::SUITE_ADMIN,
    };
    type Args = SuiteArgs;
    type Config = SuiteConfig;

    fn admin_config(config: &SuiteConfig) -> Option<hass_runtime::config::AdminConfig> {
        Some(hass_runtime::config::AdminConfig {
            listen: config.admin.listen.or(Some(SocketAddr::new(
                config.listen_host,
                Self::INFO.admin_port,
            ))),
        })
    }

    fn prepare(_args: SuiteArgs, config: SuiteConfig, _path: Option<&Path>) -> Result<Self, Fatal> {
        if !config.home_assistant.url.starts_with("http://") {
            return Err(Fatal::config(format!(
                "home_assistant.url: {:?} is not an http:// URL (the suite's parts reach Home Assistant without TLS)",
                config.home_assistant.url
            )));
        }
        if config.mqtt_user.is_empty() || config.mqtt_user.contains([':', ' ']) {
            return Err(Fatal::config(format!(
                "mqtt_user: {:?} must be non-empty, without `:` or spaces",
                config.mqtt_user
            )));
        }
        let ha_token = config
            .home_assistant
            .token
            .as_ref()
            .map(|source| {
                let value = source
                    .load()
                    .map_err(|e| Fatal::config(format!("home_assistant.token: {e}")))?;
                let source = match source {
                    SecretSource::File(path) => SecretSource::File(
                        std::path::absolute(path).unwrap_or_else(|_| path.clone()),
                    ),
                    SecretSource::Env(name) => SecretSource::Env(name.clone()),
                };
                Ok::<_, Fatal>((source, value))
            })
            .transpose()?;
        let (ha_token, value) = ha_token.unzip();
        Ok(Self {
            config,
            ha_token,
            _ha_token_value: value,
        })
    }

    async fn run(self, ctx: Context) -> Result<(), Fatal> {
        // Registered before anything can await: /readyz with no checks yet
        // would say ready.
        let data_dir_check = ctx.readiness.register("data_dir");
        for name in ["broker", "config-watcher", "exporter"] {
            ctx.readiness.register(format!("child:{name}"));
        }
        let layout = setup::prepare_data_dir(&self.config.data_dir, &self.config.mqtt_user)
            .map_err(Fatal::runtime)?;
        data_dir_check.set_ready();
        let bin_dir = supervise::own_dir().map_err(Fatal::runtime)?;

        // The stick: a real device, or a socat pty pair standing in for one.
        let mut virtual_stick = None;
        let stick = match &self.config.serial_device {
            Some(device) => Some(banner::Stick::Real(device.clone())),
            None => match setup::VirtualStick::start(&layout.root.join("stick")).await {
                Ok(pair) => {
                    let stick = banner::Stick::Virtual {
                        device: pair.device(),
                        peer: pair.peer(),
                    };
                    virtual_stick = Some(pair);
                    Some(stick)
                }
                Err(e) => {
                    warn!("serial bridge skipped: {e}");
                    None
                }
            },
        };

        let database = match self.config.recorder_database {
            RecorderDatabase::Off => Err(recorder_db::Skipped("recorder_database: off".to_owned())),
            RecorderDatabase::Auto => {
                let (layout, listen, client) = (
                    layout.clone(),
                    self.addr(self.config.ports.postgres),
                    self.client_addr(self.config.ports.postgres),
                );
                // initdb takes a second or two on first use.
                tokio::task::spawn_blocking(move || recorder_db::prepare(&layout, listen, client))
                    .await
                    .unwrap_or_else(|e| Err(recorder_db::Skipped(e.to_string())))
            }
        };
        if let Err(skipped) = &database {
            warn!("recorder database skipped: {}", skipped.0);
        }

        let specs = setup::child_specs(
            &self,
            &layout,
            &bin_dir,
            stick.as_ref(),
            database.as_ref().ok(),
        )?;
        let mut supervisors = Vec::new();
        for spec in specs.iter().cloned() {
            let check = ctx.readiness.register(format!("child:{}", spec.name));
            supervisors.push(tokio::spawn(supervise::supervise(
                spec,
                check,
                ctx.shutdown.clone(),
            )));
        }

        // The banner, once everything is ready (or after 30 s, saying what is not).
        let readiness = ctx.readiness.clone();
        let text = banner::render(&self, &layout, stick.as_ref(), database.as_ref(), &specs);
        let shutdown = ctx.shutdown.clone();
        let banner_task = tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                let report = readiness.report();
                if report.ready || tokio::time::Instant::now() >= deadline {
                    if !report.ready {
                        warn!(
                            "not every part is ready after 30 s; see /readyz and the logs:\n{}",
                            report.to_text()
                        );
                    }
                    banner::print(&text);
                    return;
                }
                if !shutdown.sleep(Duration::from_millis(100)).await {
                    return;
                }
            }
        });

        info!(
            data_dir = %layout.root.display(),
            children = specs.len(),
            "suite running; stop with Ctrl-C"
        );
        ctx.shutdown.cancelled().await;
        banner_task.abort();
        for supervisor in supervisors {
            let _ = supervisor.await;
        }
        if let Some(pair) = virtual_stick {
            pair.stop().await;
        }
        info!("every child stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The suite's own admin port follows `listen_host` like every part:
    /// loopback by default (it was 0.0.0.0 while every part was private).
    #[test]
    fn the_admin_port_listens_where_the_parts_do() {
        let listen = |config: &SuiteConfig| Suite::admin_config(config).and_then(|a| a.listen);
        let default = SuiteConfig::default();
        assert_eq!(
            listen(&default),
            Some(SocketAddr::from(([127, 0, 0, 1], ports::SUITE_ADMIN)))
        );
        let open: SuiteConfig = hass_runtime::config::parse_yaml("listen_host: 0.0.0.0\n").unwrap();
        assert_eq!(listen(&open), Some(SocketAddr::from(([0, 0, 0, 0], 9180))));
        let own: SuiteConfig =
            hass_runtime::config::parse_yaml("admin: { listen: 127.0.0.1:9999 }\n").unwrap();
        assert_eq!(listen(&own), Some(SocketAddr::from(([127, 0, 0, 1], 9999))));
    }
}
