//! The exporter's YAML config: which targets to probe, how often, and where
//! their secrets live. Every section is optional; a target without a section
//! is simply not probed.

use std::path::PathBuf;
use std::time::Duration;

use hass_runtime::config::{AdminConfig, duration};
use hass_runtime::secret::{ExposeSecret, SecretSource};
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
    /// libpq's `sslmode`: `disable`, `prefer`, `require`, `verify_ca`,
    /// `verify_full` (`verify-ca`/`verify-full` are accepted too).
    #[serde(default)]
    pub tls: TlsMode,
    /// PEM file with the CA that signed the server's certificate; needed by
    /// `verify_ca`/`verify_full`, and makes `prefer`/`require` check the
    /// chain as libpq does with a root certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
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
    /// TLS when the server offers it, plain text otherwise.
    Prefer,
    /// TLS or no connection; the certificate is not checked without a CA.
    Require,
    /// TLS with a certificate signed by `ca_file`.
    #[serde(alias = "verify-ca")]
    VerifyCa,
    /// TLS with a certificate signed by `ca_file` that names the host.
    #[serde(alias = "verify-full")]
    VerifyFull,
}

impl TlsMode {
    /// The config spelling, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify_ca",
            Self::VerifyFull => "verify_full",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// `host:port` of the MQTT listener.
    pub address: String,
    /// Inline (`username: exporter`) or, like the password, from a file or
    /// env var (`username: { file: /run/secrets/mqtt/username }`).
    #[serde(default)]
    pub username: Option<Username>,
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

/// The broker username. A username is not secret to Mosquitto, so inline
/// text is accepted; a Kubernetes Secret usually holds both, so a file or
/// env var reference is too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Username {
    Inline(String),
    Reference(SecretSource),
}

impl Username {
    /// The username now (a file is re-read on each call, so a rotated
    /// Secret is picked up on the next connect).
    pub fn load(&self) -> Result<String, String> {
        match self {
            Self::Inline(name) => Ok(name.clone()),
            Self::Reference(source) => source
                .load()
                .map(|s| s.expose_secret().to_owned())
                .map_err(|e| e.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for Username {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct UsernameVisitor;
        impl<'de> serde::de::Visitor<'de> for UsernameVisitor {
            type Value = Username;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a username, or { file: PATH } / { env: NAME }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Username, E> {
                Ok(Username::Inline(v.to_owned()))
            }
            // `username: 1000` is a name too.
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Username, E> {
                Ok(Username::Inline(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Username, E> {
                Ok(Username::Inline(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Username, A::Error> {
                SecretSource::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(Username::Reference)
            }
        }
        deserializer.deserialize_any(UsernameVisitor)
    }
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
    format!("http://127.0.0.1:{}", hass_runtime::ports::HOME_ASSISTANT)
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
    fn broker_username_inline_or_from_a_file() {
        let c: ExporterConfig =
            parse_yaml("broker:\n  address: a:1\n  username: exporter\n").unwrap();
        assert_eq!(
            c.broker.unwrap().username,
            Some(Username::Inline("exporter".to_owned()))
        );
        let c: ExporterConfig = parse_yaml(
            "broker:\n  address: a:1\n  username: { file: /run/secrets/mqtt/username }\n",
        )
        .unwrap();
        assert_eq!(
            c.broker.unwrap().username,
            Some(Username::Reference(SecretSource::File(
                "/run/secrets/mqtt/username".into()
            )))
        );
        let e = parse_yaml::<ExporterConfig>("broker:\n  address: a:1\n  username: { fil: /u }\n")
            .unwrap_err();
        assert!(e.message.contains("fil"), "{e}");
    }

    #[test]
    fn tls_modes_take_libpq_spellings_too() {
        let c: ExporterConfig = parse_yaml(
            "postgres:\n  host: db\n  user: u\n  tls: verify-full\n  ca_file: /ca.pem\n",
        )
        .unwrap();
        let pg = c.postgres.unwrap();
        assert_eq!(pg.tls, TlsMode::VerifyFull);
        assert_eq!(pg.ca_file.as_deref(), Some(std::path::Path::new("/ca.pem")));
        let c: ExporterConfig =
            parse_yaml("postgres:\n  host: db\n  user: u\n  tls: verify_ca\n").unwrap();
        assert_eq!(c.postgres.unwrap().tls, TlsMode::VerifyCa);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e =
            parse_yaml::<ExporterConfig>("broker:\n  address: a:1\n  pasword: x\n").unwrap_err();
        assert!(e.message.contains("unknown field `pasword`"), "{e}");
        assert_eq!(e.position, Some((3, 3)));
    }
}
