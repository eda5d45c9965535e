//! `broker.yaml`: the broker's config file, with defaults that are safe for a
//! Home Assistant pod (no anonymous access, fsync before acknowledging).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use hass_runtime::config::AdminConfig;
use hass_runtime::ports;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// The admin server (`/healthz`, `/readyz`, `/metrics`); `--admin-listen`
    /// wins over it.
    pub admin: AdminConfig,
    pub listeners: Listeners,
    /// Where retained messages and persistent sessions are kept (a PVC).
    pub data_dir: PathBuf,
    /// `always` (default): fsync each group commit before acknowledging.
    /// `periodic`: fsync every `fsync_interval`; a crash can lose that much.
    pub fsync: FsyncPolicy,
    #[serde(with = "hass_runtime::config::duration")]
    pub fsync_interval: Duration,
    /// Mosquitto `password_file` (made with `mosquitto_passwd`).
    pub password_file: Option<PathBuf>,
    /// Mosquitto `acl_file`; without one every client may use every topic.
    pub acl_file: Option<PathBuf>,
    /// Admit clients without a username. Off unless asked for.
    pub allow_anonymous: bool,
    /// Who may connect with a client id whose session another user made:
    /// `same_user` (default: anyone else gets CONNACK 0x85 / rc 2 and the
    /// session is untouched) or `any_user` (Mosquitto's way: a takeover).
    pub client_id_takeover: crate::router::ClientIdTakeover,
    /// How often the password and ACL files are checked for changes.
    #[serde(with = "hass_runtime::config::duration")]
    pub policy_reload_interval: Duration,
    pub limits: LimitsConfig,
    /// How often the `$SYS/broker/...` topics are refreshed; `null` turns
    /// them off.
    #[serde(with = "hass_runtime::config::optional_duration")]
    pub sys_interval: Option<Duration>,
    /// Certificate for the `mqtts` and `wss` listeners.
    pub tls: Option<TlsConfig>,
    /// Who is connected and what is retained, on the admin port.
    pub operator_view: OperatorViewConfig,
    /// A `mosquitto.db` (Mosquitto 1.6/2.0 persistence) to take retained
    /// messages and persistent sessions from, once: on the first start with
    /// it set, into a store that never imported one. What the store already
    /// holds (a topic, a client id) is kept. Messages queued for sessions
    /// are not taken.
    pub import_mosquitto_db: Option<PathBuf>,
}

/// The operator's view: `/` (a page) and `/api/clients`, `/api/sessions`,
/// `/api/retained` on the admin port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OperatorViewConfig {
    /// Serve it (default); `false` leaves the admin port to probes and metrics.
    pub enabled: bool,
    /// Show retained payloads. Off by default: payloads can hold secrets.
    pub payloads: bool,
    /// A token every request to the view must carry, as
    /// `Authorization: Bearer` or as the password of HTTP Basic (what a
    /// browser asks for): `{file: PATH}` or `{env: NAME}`. Without one the
    /// view is as open as `/metrics`; the generated NetworkPolicy admits
    /// only the monitoring namespace to the admin port.
    pub token: Option<hass_runtime::secret::SecretSource>,
}

impl Default for OperatorViewConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            payloads: false,
            token: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain (a cert-manager Secret's `tls.crt`).
    pub cert_file: PathBuf,
    /// PEM private key (`tls.key`).
    pub key_file: PathBuf,
    /// How often the files are checked for a rotated certificate.
    #[serde(
        with = "hass_runtime::config::duration",
        default = "default_tls_reload"
    )]
    pub reload_interval: Duration,
}

fn default_tls_reload() -> Duration {
    Duration::from_secs(10)
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            admin: AdminConfig::default(),
            listeners: Listeners::default(),
            data_dir: PathBuf::from("hass-broker-data"),
            fsync: FsyncPolicy::Always,
            fsync_interval: Duration::from_secs(1),
            password_file: None,
            acl_file: None,
            allow_anonymous: false,
            client_id_takeover: crate::router::ClientIdTakeover::SameUser,
            policy_reload_interval: Duration::from_secs(2),
            limits: LimitsConfig::default(),
            tls: None,
            sys_interval: Some(Duration::from_secs(10)),
            operator_view: OperatorViewConfig::default(),
            import_mosquitto_db: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    Always,
    Periodic,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listeners {
    /// MQTT 3.1.1 and 5 over TCP; `null` turns it off.
    pub mqtt: Option<SocketAddr>,
    /// MQTT over WebSockets (paths `/mqtt` and `/`); `null` turns it off.
    pub ws: Option<SocketAddr>,
    /// MQTT over TLS (usually 8883); needs `tls`. Off by default.
    pub mqtts: Option<SocketAddr>,
    /// MQTT over WebSockets over TLS (usually 8884); needs `tls`. Off by default.
    pub wss: Option<SocketAddr>,
}

impl Default for Listeners {
    fn default() -> Self {
        Self {
            mqtt: Some(SocketAddr::from(([0, 0, 0, 0], ports::MQTT))),
            ws: Some(SocketAddr::from(([0, 0, 0, 0], ports::MQTT_WS))),
            mqtts: None,
            wss: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest packet accepted, in bytes. Zigbee2MQTT's `bridge/devices`
    /// runs to megabytes on big networks.
    pub max_packet_size: usize,
    /// Messages queued per session before one is dropped (QoS 0 first, then
    /// as `slow_consumer` says). Retained messages sent on subscribe do not
    /// count. Default 1 000, Mosquitto's: under a sustained flood each
    /// delivered message waits behind at most that many (BENCHMARKS.md);
    /// raise it for a persistent session that must outlast a long absence.
    pub max_queued_messages: usize,
    /// Bytes queued across all sessions; over it, the largest queue sheds
    /// its oldest messages (retained replays excepted).
    pub memory_budget: usize,
    /// QoS 1/2 messages in flight per client.
    pub max_inflight: u16,
    /// QoS 1/2 PUBLISHes an MQTT 5 client may have unacknowledged (told as
    /// Receive Maximum); one over it is disconnected (0x93). Default 65 535,
    /// the protocol's own: MQTT.js (Zigbee2MQTT's client) publishes without
    /// waiting for a lower one, and would be cut off.
    pub receive_maximum: u16,
    /// Which message a full queue loses: `drop_oldest` (default),
    /// `drop_newest` (Mosquitto's way) or `disconnect` (drop the new one and
    /// disconnect the client).
    pub slow_consumer: crate::router::SlowConsumer,
    /// How long a new connection may take to send CONNECT.
    #[serde(with = "hass_runtime::config::duration")]
    pub connect_timeout: Duration,
    /// How long a write to a client may wait for the client to read before
    /// the connection is closed (`hass_broker_write_timeouts_total`): a client
    /// that stops reading cannot hold its queue forever.
    #[serde(with = "hass_runtime::config::duration")]
    pub write_timeout: Duration,
    /// Retained messages queued for one session on its SUBSCRIBEs and not
    /// yet sent. Over it the client is disconnected and they are dropped;
    /// Home Assistant's start replays each retained discovery message once.
    pub max_replay_messages: usize,
    /// Largest CONNECT accepted, in bytes. It is read before the client has
    /// logged in, and a real one (client id, will, credentials) needs a few
    /// hundred bytes.
    pub max_connect_size: usize,
    /// Connections open at once, from accept to close.
    pub max_connections: usize,
    /// Connections open at once from one source address (a NAT or a
    /// Kubernetes Service without `externalTrafficPolicy: Local` makes many
    /// devices one address).
    pub max_connections_per_address: usize,
    /// Connections that have not yet sent a complete CONNECT, in all: with
    /// `max_connect_size`, what unauthenticated peers can make the broker hold.
    pub max_handshakes: usize,
    /// The same, from one source address. A TCP connection over either cap
    /// waits, unread, up to `connect_timeout` for a slot (a burst of devices
    /// behind one NAT address gets in a cap's worth at a time); a WebSocket
    /// upgrade over it is refused.
    pub max_handshakes_per_address: usize,
    /// The longest Keep Alive a client may use, seconds (Mosquitto's
    /// `max_keepalive`); `null` (default): any. An MQTT 5 client asking for
    /// more, or for none, is told this one as Server Keep Alive; an MQTT
    /// 3.1.1 client asking for more is refused (rc 2, identifier rejected,
    /// as Mosquitto does), since 3.1.1 cannot be told. A 3.1.1 client asking
    /// for none keeps none.
    pub max_keepalive: Option<u16>,
    /// Topic aliases an MQTT 5 client may set (told in CONNACK), and the
    /// most the broker assigns on what it sends to a client that allows
    /// them (Mosquitto's `max_topic_alias`, which is only the former).
    pub max_topic_alias: u16,
    /// Bytes one client's subscriptions may cost, counted as
    /// `subscription_index::cost` counts them: an upper bound on what the
    /// broker holds for them (each level of a filter is a node of the
    /// routing tree). A new filter over it is refused (SUBACK 0x97 Quota
    /// exceeded; MQTT 3.1.1: 0x80) and the client's others stand. Default
    /// 8 MiB: ~10 000 filters shaped like Home Assistant's.
    pub subscription_budget_per_client: usize,
    /// Bytes all clients' subscriptions may cost, offline persistent
    /// sessions included; over it, new filters are refused the same way.
    pub subscription_budget: usize,
    /// Bytes retained messages may hold (topic, payload and ~100 bytes
    /// each). A retained PUBLISH that would take them past it is delivered
    /// to subscribers but not kept, and the topic's older retained message
    /// is dropped (no subscriber is told a stale value); a replacement no
    /// larger than the message it replaces and a deletion always go
    /// through. Default 128 MiB.
    pub retained_budget: usize,
    /// Persistent sessions (MQTT 3.1.1 `clean_session = false`, MQTT 5 a
    /// Session Expiry Interval), online or not, one user may hold; anonymous
    /// clients count as one user. A CONNECT that would make one more is
    /// refused (CONNACK 0x97 Quota exceeded; MQTT 3.1.1: rc 3, server
    /// unavailable); coming back to a session held already always works.
    /// Default 1 000: an offline session is ~700 bytes.
    pub max_persistent_sessions_per_user: usize,
    /// Bytes that packets over 64 KiB may hold, in all, while they are
    /// still arriving: each client may send up to `max_packet_size`, and
    /// thousands may connect. A client in the middle of one when the rest
    /// are at the budget is disconnected (MQTT 5: 0x97 Quota exceeded) and
    /// counted in `hass_broker_partial_packet_budget_disconnects_total`. At
    /// least `max_packet_size` and one read. Default 64 MiB.
    pub partial_packet_budget: usize,
}

impl LimitsConfig {
    pub fn admission(&self) -> hass_runtime::admission::AdmissionLimits {
        hass_runtime::admission::AdmissionLimits {
            max_connections: self.max_connections,
            max_connections_per_address: self.max_connections_per_address,
            max_handshakes: self.max_handshakes,
            max_handshakes_per_address: self.max_handshakes_per_address,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        // The router's own defaults, written once there.
        let router = crate::router::Limits::default();
        Self {
            max_packet_size: 8 * 1024 * 1024,
            max_queued_messages: router.max_queued_messages,
            memory_budget: router.memory_budget,
            max_inflight: router.max_inflight,
            slow_consumer: router.slow_consumer,
            connect_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(60),
            max_replay_messages: router.max_replay_messages,
            subscription_budget_per_client: router.subscription_budget_per_client,
            subscription_budget: router.subscription_budget,
            retained_budget: router.retained_budget,
            max_persistent_sessions_per_user: router.max_persistent_sessions_per_user,
            partial_packet_budget: 64 * 1024 * 1024,
            max_connect_size: 64 * 1024,
            max_connections: 10_000,
            max_connections_per_address: 1_000,
            max_handshakes: 1_024,
            max_handshakes_per_address: 32,
            max_keepalive: None,
            max_topic_alias: 64,
            receive_maximum: u16::MAX,
        }
    }
}
