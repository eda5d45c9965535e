//! The exporter's YAML config: which targets to probe, how often, and where
//! their secrets live. Every section is optional; a target without a section
//! is simply not probed.

use std::time::Duration;

use hass_runtime::config::{AdminConfig, duration};
use hass_runtime::secret::SecretSource;
use serde::Deserialize;

/// `exporter.yaml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExporterConfig {
    /// The admin server (`/healthz`, `/readyz`, `/metrics`); `--admin-listen`
    /// wins over it.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Home Assistant's REST API. The issue spells the key `homeassistant`;
    /// both spellings are accepted.
    #[serde(default, alias = "homeassistant")]
    pub home_assistant: Option<HomeAssistantConfig>,
    #[serde(default)]
    pub postgres: Option<PostgresConfig>,
    #[serde(default)]
    pub broker: Option<BrokerConfig>,
    #[serde(default)]
    pub bridges: Vec<BridgeConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HomeAssistantConfig {
    /// Base URL, `http://` only for now (the exporter runs in HA's pod).
    #[serde(default = "default_ha_url")]
    pub url: String,
    /// A long-lived access token. Required: nothing calls `/api/` without one.
    pub token: SecretSource,
    /// How often `GET /api/core/state` is polled.
    #[serde(default = "secs::<10>", with = "duration")]
    pub poll_interval: Duration,
    /// How long one request may take.
    #[serde(default = "secs::<5>", with = "duration")]
    pub timeout: Duration,
    /// `/probe/ha/live` fails once HA's API has not answered for this long
    /// (and no recorder migration is in progress).
    #[serde(default = "secs::<300>", with = "duration")]
    pub live_timeout: Duration,
    /// How often `/api/states` (entity counts) and `/api/config` (version)
    /// are fetched; `/api/states` can be megabytes on a big install.
    #[serde(default = "secs::<60>", with = "duration")]
    pub states_interval: Duration,
    /// The first pause after a 401/403, doubled on each further rejection.
    #[serde(default = "secs::<300>", with = "duration")]
    pub auth_backoff: Duration,
    /// The longest pause after repeated rejections.
    #[serde(default = "secs::<3600>", with = "duration")]
    pub auth_backoff_max: Duration,
    /// Whether the exporter's own `/readyz` waits for HA to be RUNNING.
    #[serde(default)]
    pub required: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// A libpq connection string (`host=db user=hass dbname=hass`) or URL
    /// (`postgresql://hass@db/hass`), without a password. Keys given below
    /// override it.
    #[serde(default)]
    pub connection: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub dbname: Option<String>,
    #[serde(default)]
    pub password: Option<SecretSource>,
    /// Only `disable` for now; TLS to the database is not implemented yet.
    #[serde(default)]
    pub tls: TlsMode,
    #[serde(default = "secs::<30>", with = "duration")]
    pub interval: Duration,
    /// Each query's limit; a scrape never waits on the database at all.
    #[serde(default = "secs::<5>", with = "duration")]
    pub query_timeout: Duration,
    #[serde(default = "secs::<5>", with = "duration")]
    pub connect_timeout: Duration,
    #[serde(default)]
    pub required: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    #[default]
    Disable,
    Prefer,
    Require,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// `host:port` of the MQTT listener.
    pub address: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<SecretSource>,
    /// Defaults to `hass-exporter-<pid>`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// The private topic of the publish→receive round trip.
    #[serde(default = "default_health_topic")]
    pub health_topic: String,
    #[serde(default = "secs::<15>", with = "duration")]
    pub interval: Duration,
    #[serde(default = "secs::<5>", with = "duration")]
    pub timeout: Duration,
    #[serde(default)]
    pub required: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// A short name, the `bridge` label of the bridge's metrics.
    pub name: String,
    /// The bridge's admin base URL, e.g. `http://10.0.0.5:9182`. Never the
    /// device port: opening it would steal the stick from its client.
    pub url: String,
    #[serde(default = "secs::<15>", with = "duration")]
    pub interval: Duration,
    #[serde(default = "secs::<5>", with = "duration")]
    pub timeout: Duration,
    #[serde(default)]
    pub required: bool,
}

fn default_ha_url() -> String {
    "http://127.0.0.1:8123".to_owned()
}

fn default_health_topic() -> String {
    "hass-sidecars/exporter/health".to_owned()
}

const fn secs<const N: u64>() -> Duration {
    Duration::from_secs(N)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hass_runtime::config::parse_yaml;

    #[test]
    fn full_config_parses_with_defaults() {
        let c: ExporterConfig = parse_yaml(
            "homeassistant:\n  token: { file: /run/secrets/ha }\n  live_timeout: 2m\n\
             postgres:\n  connection: host=db user=hass dbname=hass\n  password: { env: PGPASS }\n\
             broker:\n  address: 127.0.0.1:1883\n  username: exporter\n  password: { file: /p }\n\
             bridges:\n  - name: zigbee\n    url: http://10.0.0.5:9182\n",
        )
        .unwrap();
        let ha = c.home_assistant.unwrap();
        assert_eq!(ha.live_timeout, Duration::from_secs(120));
        assert_eq!(ha.poll_interval, Duration::from_secs(10));
        assert_eq!(ha.url, "http://127.0.0.1:8123");
        assert_eq!(c.postgres.unwrap().tls, TlsMode::Disable);
        assert_eq!(c.bridges[0].name, "zigbee");
        assert_eq!(
            c.broker.unwrap().health_topic,
            "hass-sidecars/exporter/health"
        );
    }

    #[test]
    fn token_is_required_and_never_inline() {
        let e =
            parse_yaml::<ExporterConfig>("home_assistant:\n  url: http://ha:8123\n").unwrap_err();
        assert!(e.message.contains("missing field `token`"), "{e}");
        let e = parse_yaml::<ExporterConfig>("home_assistant:\n  token: abc\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("home_assistant.token"), "{e}");
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e =
            parse_yaml::<ExporterConfig>("broker:\n  address: a:1\n  pasword: x\n").unwrap_err();
        assert!(e.message.contains("unknown field `pasword`"), "{e}");
        assert_eq!(e.position, Some((3, 3)));
    }
}
