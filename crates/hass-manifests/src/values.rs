//! The values file: everything a user says about their install, with defaults
//! that render a working, locked-down Home Assistant pod on their own.
//!
//! Keys are snake_case like every other hass-sidecars YAML file. Unknown keys
//! are errors (`deny_unknown_fields`), reported with file, line and key path by
//! `hass_runtime::config::parse_yaml`. The doc comments here are the schema's
//! descriptions and the comments of `hass-manifests defaults`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The whole values file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Values {
    /// Instance name: the prefix of every object's name and the
    /// `app.kubernetes.io/instance` label. A DNS label, at most 30 characters.
    pub name: String,
    /// Namespace of every object (the namespace itself is not created).
    pub namespace: String,
    /// `imagePullPolicy` of every container.
    pub image_pull_policy: PullPolicy,
    /// Images of the hass-sidecars binaries: `<registry>/hass-<binary>:<tag>`.
    pub sidecar_images: SidecarImages,
    pub home_assistant: HomeAssistant,
    pub broker: Broker,
    pub config_watcher: ConfigWatcher,
    pub exporter: Exporter,
    pub serial_bridge: SerialBridge,
    pub postgres: Postgres,
    pub network_policy: NetworkPolicyValues,
    pub monitoring: Monitoring,
    pub ingress: Ingress,
    /// PodDisruptionBudgets for Home Assistant and PostgreSQL.
    pub pod_disruption_budget: PodDisruptionBudgetValues,
}

impl Default for Values {
    fn default() -> Self {
        Self {
            name: "home-assistant".to_owned(),
            namespace: "home-assistant".to_owned(),
            image_pull_policy: PullPolicy::IfNotPresent,
            sidecar_images: SidecarImages::default(),
            home_assistant: HomeAssistant::default(),
            broker: Broker::default(),
            config_watcher: ConfigWatcher::default(),
            exporter: Exporter::default(),
            serial_bridge: SerialBridge::default(),
            postgres: Postgres::default(),
            network_policy: NetworkPolicyValues::default(),
            monitoring: Monitoring::default(),
            ingress: Ingress::default(),
            pod_disruption_budget: PodDisruptionBudgetValues::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// A container image pinned by tag, and optionally by digest too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Image {
    pub repository: String,
    pub tag: String,
    /// `sha256:...`; when set the reference is `repository:tag@digest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

impl Image {
    fn new(repository: &str, tag: &str) -> Self {
        Self {
            repository: repository.to_owned(),
            tag: tag.to_owned(),
            digest: None,
        }
    }

    /// The `image:` reference.
    pub fn reference(&self) -> String {
        match &self.digest {
            Some(digest) => format!("{}:{}@{digest}", self.repository, self.tag),
            None => format!("{}:{}", self.repository, self.tag),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SidecarImages {
    /// Registry and path, without the image name.
    pub registry: String,
    pub tag: String,
    /// Digests per binary (`hass-broker: sha256:...`), to pin by digest.
    pub digests: BTreeMap<String, String>,
}

impl Default for SidecarImages {
    fn default() -> Self {
        Self {
            registry: "ghcr.io/hass-sidecars".to_owned(),
            tag: "0.1.0".to_owned(),
            digests: BTreeMap::new(),
        }
    }
}

/// The hass-sidecars binaries that have an image.
pub const SIDECAR_BINARIES: [&str; 6] = [
    "hass-broker",
    "hass-serial-bridge",
    "hass-config-watcher",
    "hass-git-mirror",
    "hass-exporter",
    "hass-manifests",
];

impl SidecarImages {
    /// The image of one binary, e.g. `hass-broker`.
    pub fn image(&self, binary: &str) -> Image {
        Image {
            repository: format!("{}/{binary}", self.registry.trim_end_matches('/')),
            tag: self.tag.clone(),
            digest: self.digests.get(binary).cloned(),
        }
    }
}

/// A reference to one key of an existing Secret: never the value itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretKey {
    pub name: String,
    pub key: String,
}

impl SecretKey {
    fn new(name: &str, key: &str) -> Self {
        Self {
            name: name.to_owned(),
            key: key.to_owned(),
        }
    }
}

/// A PersistentVolumeClaim's size and class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    /// A Kubernetes quantity, e.g. `5Gi`.
    pub size: String,
    /// Omitted: the cluster's default StorageClass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
}

impl Storage {
    fn new(size: &str) -> Self {
        Self {
            size: size.to_owned(),
            storage_class: None,
        }
    }
}

/// An extra volume: a new claim of `size`, or an existing claim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ExtraVolume {
    pub enabled: bool,
    pub size: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    /// Use this PersistentVolumeClaim instead of creating one (e.g. an NFS share).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub existing_claim: Option<String>,
}

impl ExtraVolume {
    fn off(size: &str) -> Self {
        Self {
            enabled: false,
            size: size.to_owned(),
            storage_class: None,
            existing_claim: None,
        }
    }
}

impl Default for ExtraVolume {
    fn default() -> Self {
        Self::off("10Gi")
    }
}

/// CPU and memory requests and limits (Kubernetes quantities).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    pub cpu_request: String,
    pub memory_request: String,
    pub cpu_limit: String,
    pub memory_limit: String,
}

impl Resources {
    pub fn new(
        cpu_request: &str,
        memory_request: &str,
        cpu_limit: &str,
        memory_limit: &str,
    ) -> Self {
        Self {
            cpu_request: cpu_request.to_owned(),
            memory_request: memory_request.to_owned(),
            cpu_limit: cpu_limit.to_owned(),
            memory_limit: memory_limit.to_owned(),
        }
    }
}

/// Home Assistant's size class: the table is on `home_assistant.preset`
/// A sidecar port `home_assistant.host_network_expose` may open to the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HostNetworkPort {
    Mqtt,
    MqttWs,
    Admin,
}

/// (tests/resources.rs checks the render against it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// Up to ~200 entities, a Raspberry Pi class node.
    Small,
    /// Up to ~1000 entities with a few cameras.
    Medium,
    /// Thousands of entities, heavy automations.
    Large,
}

impl Preset {
    pub fn resources(self) -> Resources {
        match self {
            Self::Small => Resources::new("100m", "384Mi", "1", "1Gi"),
            Self::Medium => Resources::new("250m", "768Mi", "2", "2Gi"),
            Self::Large => Resources::new("500m", "1536Mi", "4", "4Gi"),
        }
    }
}

/// How the Home Assistant container runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunAs {
    /// `python3 -m homeassistant` as UID 65532 with a read-only root
    /// filesystem and no capabilities. Python packages that integrations
    /// install at run time (custom integrations' requirements) go to
    /// `/config/.local` on the config PVC instead of the image's read-only
    /// system Python, where the official image would put them. Home
    /// Assistant's own restarts happen inside the container, as under the
    /// official image's s6, not as container restarts.
    Restricted,
    /// The image's own init as root (capabilities still dropped except what
    /// s6-overlay needs). Accepted checkov findings are annotated on the object.
    Root,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HomeAssistant {
    /// The official image, pinned by tag.
    pub image: Image,
    pub run_as: RunAs,
    /// Requests and limits of the Home Assistant container by home size
    /// (CPU, memory); `resources` overrides the preset as a whole.
    ///
    /// | preset | home                                     | requests     | limits |
    /// |--------|------------------------------------------|--------------|--------|
    /// | small  | up to ~200 entities, Raspberry Pi class  | 100m, 384Mi  | 1, 1Gi |
    /// | medium | up to ~1000 entities, a few cameras      | 250m, 768Mi  | 2, 2Gi |
    /// | large  | thousands of entities, heavy automations | 500m, 1536Mi | 4, 4Gi |
    pub preset: Preset,
    /// Requests and limits of the Home Assistant container; set, they
    /// replace the preset's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Share the node's network (mDNS/SSDP discovery, HomeKit). Sets
    /// `dnsPolicy: ClusterFirstWithHostNet`; NetworkPolicies do not apply
    /// then, so the sidecars listen on 127.0.0.1 only unless
    /// `host_network_expose` opens a port to the node's addresses.
    pub host_network: bool,
    /// With `host_network`: the sidecar ports that listen on the node's
    /// addresses (and so on the LAN, past every policy): `mqtt`, `mqtt_ws`
    /// (clients in other pods or on the LAN), `admin` (Prometheus scrapes).
    /// Kubelet probes the rest on 127.0.0.1.
    pub host_network_expose: Vec<HostNetworkPort>,
    /// `TZ` of the container, e.g. `Europe/Berlin`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// The `/config` volume.
    pub config_storage: Storage,
    /// Mounted at `/media`.
    pub media: ExtraVolume,
    /// Mounted at `/config/backups` (Home Assistant's own backups) and at
    /// `/backups` in the config watcher.
    pub backup: ExtraVolume,
    /// A long-lived access token (create it after onboarding). With it the
    /// probes go through the exporter's truthful `/probe/ha/*` endpoints and
    /// the config watcher reloads what changed; without it the probes fetch
    /// `/manifest.json` and the watcher only validates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_secret: Option<SecretKey>,
    /// How long Home Assistant may take to start (a recorder migration can
    /// take many minutes) before the startup probe gives up.
    pub startup_budget_seconds: i32,
    /// `terminationGracePeriodSeconds` of the pod.
    pub termination_grace_period_seconds: i64,
    /// The package file delivered as a ConfigMap.
    pub package: Package,
    pub service: ServiceValues,
}

impl Default for HomeAssistant {
    fn default() -> Self {
        Self {
            image: Image::new("ghcr.io/home-assistant/home-assistant", "2026.11.0"),
            run_as: RunAs::Restricted,
            preset: Preset::Small,
            resources: None,
            host_network: false,
            host_network_expose: Vec::new(),
            timezone: None,
            config_storage: Storage::new("5Gi"),
            media: ExtraVolume::off("50Gi"),
            backup: ExtraVolume::off("20Gi"),
            token_secret: None,
            startup_budget_seconds: 900,
            termination_grace_period_seconds: 60,
            package: Package::default(),
            service: ServiceValues::default(),
        }
    }
}

/// Home Assistant configuration the sidecars need, as a package file at
/// `/config/packages/hass-sidecars/hass_sidecars.yaml`. Add once to
/// `configuration.yaml`: `homeassistant: { packages: !include_dir_named packages }`.
/// Turn a section off when your own `configuration.yaml` already has that key
/// (a package cannot merge into it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Package {
    pub enabled: bool,
    /// `recorder.db_url` from the PostgreSQL password Secret.
    pub recorder: bool,
    /// `use_x_forwarded_for` and `trusted_proxies` for the Ingress. Before
    /// Home Assistant 2026.8 (from the image tag; a tag that is no version
    /// counts as current) they go into the package's `http:`. Since 2026.8
    /// Home Assistant takes HTTP settings only through its WebSocket API, so
    /// the config watcher applies them (`http_settings`): stored as pending,
    /// Home Assistant restarts on trial, the watcher checks that it answers
    /// and promotes them; settings that fail the check are not promoted and
    /// Home Assistant returns to its previous ones within five minutes.
    /// Needs `config_watcher.enabled` and `home_assistant.token_secret`.
    pub http: bool,
    /// `prometheus:`, Home Assistant's own `/api/prometheus` endpoint.
    pub prometheus: bool,
}

impl Default for Package {
    fn default() -> Self {
        Self {
            enabled: true,
            recorder: true,
            http: true,
            prometheus: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceValues {
    pub r#type: ServiceType,
    pub annotations: BTreeMap<String, String>,
}

impl Default for ServiceValues {
    fn default() -> Self {
        Self {
            r#type: ServiceType::ClusterIP,
            annotations: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ServiceType {
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

/// hass-broker, the MQTT broker, as a sidecar of the Home Assistant pod.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Broker {
    pub enabled: bool,
    /// Retained messages and persistent sessions (`data_dir`).
    pub storage: Storage,
    /// Secret with Mosquitto-format `passwd` (from `mosquitto_passwd`) and
    /// `acl` keys, mounted as `password_file` and `acl_file`.
    pub auth_secret: String,
    /// MQTT over WebSockets on 1884.
    pub websockets: bool,
    /// The exporter's MQTT round trip logs in as this user…
    pub exporter_username: String,
    /// …with this password (plain text, in its own Secret key). Omitted: the
    /// exporter does not probe the broker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exporter_password: Option<SecretKey>,
    /// `memory_limit` also sets the broker's memory budgets (queued 40 %,
    /// retained 20 %, subscriptions 10 %, large packets still arriving
    /// 10 % of it), so it sheds and refuses before the kernel kills it; at
    /// least 64Mi.
    pub resources: Resources,
    /// The `<name>-mqtt` Service (LoadBalancer for devices on the LAN).
    pub service: ServiceValues,
}

impl Default for Broker {
    fn default() -> Self {
        Self {
            enabled: true,
            storage: Storage::new("1Gi"),
            auth_secret: "mqtt-auth".to_owned(),
            websockets: true,
            exporter_username: "hass-exporter".to_owned(),
            exporter_password: None,
            resources: Resources::new("20m", "64Mi", "500m", "512Mi"),
            service: ServiceValues::default(),
        }
    }
}

/// hass-config-watcher: validates `/config` on every change and reloads what changed.
/// It mounts `/config` read-only (its history and backups go to volumes of
/// their own), unless `source` is enabled: then it writes the revisions it
/// validated into `/config`, and reads-write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigWatcher {
    pub enabled: bool,
    /// Restart Home Assistant when a change needs it (after its own check).
    pub auto_restart: bool,
    pub history: ConfigHistory,
    pub backups: ConfigBackups,
    pub source: ConfigSource,
    /// Put back a local edit Home Assistant does not take (a failed reload,
    /// its check refusing it, no RUNNING after a restart). It rewrites the
    /// editor's file, so it is off unless asked for; `/config` is then
    /// writable for the watcher. Needs `home_assistant.token_secret`; a Git
    /// source rolls back its own revisions instead.
    pub rollback_local_edits: bool,
    pub resources: Resources,
}

/// The config follows a branch of a Git repository: hass-git-mirror (a
/// container of its own in the pod, the only one holding the Git token)
/// mirrors the branch; the watcher validates each new revision and writes it
/// into `/config` only when valid, keeps edits made in Home Assistant's UI,
/// and rolls a revision back when Home Assistant does not take it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigSource {
    pub enabled: bool,
    /// The repository, `https://…` (`http://` with `allow_plain_http`).
    pub git: String,
    pub branch: String,
    /// The folder in the repository that holds `configuration.yaml`.
    pub path: String,
    /// How often the remote is fetched.
    pub interval: String,
    /// A token for HTTP basic auth (a GitHub fine-grained token with read
    /// access to contents, a Gitea or GitLab access token).
    pub token_secret: Option<SecretKey>,
    /// The user name sent with the token: GitHub takes any, Gitea wants the
    /// account's, GitLab `oauth2` for its tokens.
    pub username: String,
    /// The CA certificates (PEM) the Git host's certificate is verified
    /// against, for a server with a private CA; absent: the public roots
    /// in the image.
    pub ca_secret: Option<SecretKey>,
    /// Put back a revision Home Assistant does not take (a failed reload,
    /// its check refusing it, no RUNNING within the window of a restart).
    pub rollback: bool,
    pub rollback_window: String,
    /// Apply a tip that does not descend from the revision applied last.
    pub allow_force_push: bool,
    /// Fetch over plain HTTP (a Git server inside the cluster).
    pub allow_plain_http: bool,
    /// hass-git-mirror's container.
    pub resources: Resources,
}

impl Default for ConfigSource {
    fn default() -> Self {
        Self {
            enabled: false,
            git: String::new(),
            branch: "main".to_owned(),
            path: String::new(),
            interval: "60s".to_owned(),
            token_secret: None,
            username: "git".to_owned(),
            ca_secret: None,
            rollback: true,
            rollback_window: "2m".to_owned(),
            allow_force_push: false,
            allow_plain_http: false,
            resources: Resources::new("5m", "16Mi", "500m", "128Mi"),
        }
    }
}

impl Default for ConfigWatcher {
    fn default() -> Self {
        Self {
            enabled: true,
            auto_restart: false,
            history: ConfigHistory::default(),
            backups: ConfigBackups::default(),
            source: ConfigSource::default(),
            rollback_local_edits: false,
            resources: Resources::new("10m", "32Mi", "500m", "256Mi"),
        }
    }
}

/// Every valid config committed to a bare git repository on a volume of its
/// own (`/var/lib/hass-config-watcher/history.git`), not to `/config/.git`:
/// `/config` stays read-only in the watcher, and Home Assistant's own
/// backups do not carry the repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigHistory {
    pub enabled: bool,
    /// Commit `secrets.yaml` too. Off: it never enters the repository.
    pub include_secrets: bool,
    /// The repository's volume, a claim of the StatefulSet. Kubernetes does
    /// not change an existing StatefulSet's claims: to add or drop this one
    /// later, `kubectl delete statefulset NAME --cascade=orphan`, then apply.
    pub storage: Storage,
}

impl Default for ConfigHistory {
    fn default() -> Self {
        Self {
            enabled: true,
            include_secrets: false,
            storage: Storage::new("1Gi"),
        }
    }
}

/// Config backups in Home Assistant's own format, written to the backup
/// volume (`home_assistant.backup`), where Home Assistant's UI lists and
/// restores them. Nothing is written while that volume is off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigBackups {
    pub enabled: bool,
    /// How often: `24h`, `12h`, `30m`.
    pub interval: String,
    /// Backups of the watcher kept, oldest deleted first; 0 keeps all. Home
    /// Assistant's own backups on the same volume are never deleted.
    pub keep: u32,
}

impl Default for ConfigBackups {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: "24h".to_owned(),
            keep: 7,
        }
    }
}

/// hass-exporter: probes and metrics for Home Assistant, PostgreSQL, the
/// broker and the bridges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Exporter {
    pub enabled: bool,
    pub resources: Resources,
}

impl Default for Exporter {
    fn default() -> Self {
        Self {
            enabled: true,
            resources: Resources::new("10m", "32Mi", "200m", "128Mi"),
        }
    }
}

/// How the bridge container reaches the serial device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeviceAccess {
    /// Request an extended resource from a device plugin (e.g.
    /// generic-device-plugin's `squat.ai/serial`); the container stays
    /// unprivileged.
    DevicePlugin,
    /// A privileged bridge container with the host's `/dev`. Only the bridge,
    /// never the Home Assistant pod.
    Privileged,
}

/// hass-serial-bridge: one DaemonSet per node that holds sticks, one Service
/// per device (`<name>-<device>.<namespace>.svc:<port>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SerialBridge {
    pub enabled: bool,
    pub device_access: DeviceAccess,
    /// Extended resource requested per device with `device_plugin` access.
    pub device_plugin_resource: String,
    /// The device nodes' group (`dialout` is 20 on Debian/Ubuntu/Armbian).
    pub device_group: i64,
    pub devices: Vec<Device>,
    /// Labels that let another pod of the same namespace (Zigbee2MQTT, Z-Wave
    /// JS) reach the device ports, which have no authentication; the Home
    /// Assistant pod may always (ZHA). Empty: no other client.
    pub client_labels: BTreeMap<String, String>,
    pub resources: Resources,
}

impl Default for SerialBridge {
    fn default() -> Self {
        Self {
            enabled: false,
            device_access: DeviceAccess::DevicePlugin,
            device_plugin_resource: "squat.ai/serial".to_owned(),
            device_group: 20,
            devices: Vec::new(),
            client_labels: BTreeMap::from([(
                "hass-sidecars.io/serial-client".to_owned(),
                "true".to_owned(),
            )]),
            resources: Resources::new("10m", "16Mi", "200m", "64Mi"),
        }
    }
}

/// One stick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// A DNS label: the Service is `<name>-<device name>`.
    pub name: String,
    /// The node the stick is plugged into (`kubernetes.io/hostname`).
    pub node: String,
    /// Prefer `/dev/serial/by-id/...`, which survives replugging.
    pub path: String,
    /// TCP port of this device on the bridge and its Service.
    #[serde(default = "default_device_port")]
    pub port: u16,
    /// A second port speaking RFC 2217 (Telnet COM-PORT-OPTION), on the
    /// bridge and the Service: clients such as pyserial's `rfc2217://` and
    /// firmware flashers set the baud rate and DTR/RTS themselves. Off
    /// unless set; the same clients as `port`, one at a time across both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rfc2217_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baud: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_control: Option<FlowControl>,
    /// Announce the stick on mDNS, so ZHA discovers it. mDNS needs the
    /// node's network: this node's bridge runs with host networking, its
    /// ports open to the node's networks, and its NetworkPolicy no longer
    /// holds. Useful with `home_assistant.host_network`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zeroconf: Option<Zeroconf>,
}

/// A device's mDNS announcement.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Zeroconf {
    /// The Zigbee radio's type (what ZHA's discovery needs); absent, the
    /// bridge guesses it from the stick's USB identity, and a stick it
    /// cannot place is announced as a plain `_serial-bridge._tcp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub radio_type: Option<RadioType>,
}

/// zigpy's radio types, as ZHA's discovery names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RadioType {
    Ezsp,
    Znp,
    Deconz,
    Zigate,
    Xbee,
}

fn default_device_port() -> u16 {
    hass_runtime::ports::SERIAL_DEVICE
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FlowControl {
    None,
    RtsCts,
    XonXoff,
}

impl FlowControl {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::RtsCts => "rts_cts",
            Self::XonXoff => "xon_xoff",
        }
    }
}

/// Where Home Assistant's recorder database lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PostgresMode {
    /// No PostgreSQL: Home Assistant keeps its SQLite file in `/config`.
    Disabled,
    /// A PostgreSQL StatefulSet rendered here.
    Internal,
    /// An existing server at `external.host`.
    External,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Postgres {
    pub mode: PostgresMode,
    pub image: Image,
    pub storage: Storage,
    pub database: String,
    pub user: String,
    /// The password, shared by the server, Home Assistant's `db_url`, the
    /// exporter and the backup job. It goes into a URL unescaped: use letters
    /// and digits only (`openssl rand -hex 24`).
    pub password_secret: SecretKey,
    pub external: ExternalPostgres,
    pub resources: Resources,
    pub backup: PostgresBackup,
}

impl Default for Postgres {
    fn default() -> Self {
        Self {
            mode: PostgresMode::Disabled,
            image: Image::new("docker.io/library/postgres", "17.6-bookworm"),
            storage: Storage::new("10Gi"),
            database: "homeassistant".to_owned(),
            user: "homeassistant".to_owned(),
            password_secret: SecretKey::new("postgres", "password"),
            external: ExternalPostgres::default(),
            resources: Resources::new("100m", "256Mi", "1", "1Gi"),
            backup: PostgresBackup::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ExternalPostgres {
    pub host: String,
    pub port: u16,
    /// CIDRs the server is in, for the egress NetworkPolicy of the backup job.
    pub cidrs: Vec<String>,
    /// Size of the server's data volume (a quantity, e.g. `50Gi`): with it
    /// the PrometheusRule warns when the database passes 90% of it (kubelet
    /// cannot see an external server's volume). Absent: no such alert.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_size: Option<String>,
}

impl Default for ExternalPostgres {
    fn default() -> Self {
        Self {
            host: String::new(),
            port: hass_runtime::ports::POSTGRES,
            cidrs: Vec::new(),
            volume_size: None,
        }
    }
}

/// Bytes of a Kubernetes quantity without a fraction: `50Gi`, `500M`, `1024`.
pub fn quantity_bytes(text: &str) -> Option<u64> {
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let number: u64 = text[..digits].parse().ok()?;
    let unit: u64 = match &text[digits..] {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return None,
    };
    number.checked_mul(unit)
}

/// A `pg_dump` CronJob writing custom-format dumps to its own volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresBackup {
    pub enabled: bool,
    /// Cron schedule, in the controller's time zone unless `time_zone` is set.
    pub schedule: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// Dumps kept; older ones are deleted after each successful dump.
    pub keep: u32,
    pub storage: Storage,
}

impl Default for PostgresBackup {
    fn default() -> Self {
        Self {
            enabled: false,
            schedule: "30 3 * * *".to_owned(),
            time_zone: None,
            keep: 7,
            storage: Storage::new("10Gi"),
        }
    }
}

/// Least-privilege ingress rules per port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkPolicyValues {
    /// `networking.k8s.io/v1` NetworkPolicies.
    pub kubernetes: bool,
    /// `cilium.io/v2` CiliumNetworkPolicies (may be on together with `kubernetes`).
    pub cilium: bool,
    /// Namespace of Prometheus: the only one that may reach admin ports.
    pub monitoring_namespace: String,
    /// Namespace of the ingress controller, when an Ingress is on.
    pub ingress_namespace: String,
    /// Who may reach Home Assistant's 8123 without an Ingress: CIDRs, e.g.
    /// the LAN. Empty: only the ingress controller (or nobody).
    pub home_assistant_from_cidrs: Vec<String>,
    /// Labels of pods (any namespace) that may use MQTT.
    pub mqtt_client_labels: BTreeMap<String, String>,
    /// CIDRs that may use MQTT (devices on the LAN through a LoadBalancer).
    pub mqtt_from_cidrs: Vec<String>,
}

impl Default for NetworkPolicyValues {
    fn default() -> Self {
        Self {
            kubernetes: true,
            cilium: false,
            monitoring_namespace: "monitoring".to_owned(),
            ingress_namespace: "ingress-nginx".to_owned(),
            home_assistant_from_cidrs: Vec::new(),
            mqtt_client_labels: BTreeMap::from([(
                "hass-sidecars.io/mqtt-client".to_owned(),
                "true".to_owned(),
            )]),
            mqtt_from_cidrs: Vec::new(),
        }
    }
}

/// How Prometheus Operator finds the admin ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScrapeVia {
    None,
    ServiceMonitor,
    PodMonitor,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Monitoring {
    pub scrape: ScrapeVia,
    /// A PrometheusRule with the exporter's recommended alerts.
    pub prometheus_rule: bool,
    /// Labels your Prometheus selects monitors and rules by (e.g. `release: kube-prometheus-stack`).
    pub labels: BTreeMap<String, String>,
    pub interval: String,
    /// Scrape Home Assistant's own `/api/prometheus` with this token (needs
    /// `home_assistant.package.prometheus`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub home_assistant_token_secret: Option<SecretKey>,
}

impl Default for Monitoring {
    fn default() -> Self {
        Self {
            scrape: ScrapeVia::None,
            prometheus_rule: false,
            labels: BTreeMap::new(),
            interval: "30s".to_owned(),
            home_assistant_token_secret: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Ingress {
    pub enabled: bool,
    pub host: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// A Secret with the certificate (e.g. from cert-manager).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_secret: Option<String>,
    pub annotations: BTreeMap<String, String>,
    /// Home Assistant's `http.trusted_proxies`: the ingress controller's pod CIDRs.
    pub trusted_proxies: Vec<String>,
}

impl Default for Ingress {
    fn default() -> Self {
        Self {
            enabled: false,
            host: "home-assistant.example.com".to_owned(),
            class_name: None,
            tls_secret: None,
            annotations: BTreeMap::new(),
            trusted_proxies: vec!["10.0.0.0/8".to_owned()],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PodDisruptionBudgetValues {
    pub enabled: bool,
    /// 1 lets a node drain evict the single pod; 0 makes drains wait for you.
    pub max_unavailable: i32,
}

impl Default for PodDisruptionBudgetValues {
    fn default() -> Self {
        Self {
            enabled: true,
            max_unavailable: 1,
        }
    }
}

/// Why values that parsed cannot be rendered.
#[derive(Debug, thiserror::Error)]
pub enum ValuesError {
    #[error(transparent)]
    Parse(#[from] hass_runtime::config::ConfigError),
    /// A check after parsing failed; `position` is the offending key's (or,
    /// when it was left out, its parent's) line and column.
    #[error("{file}{}: {key}: {message}", position.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
    Invalid {
        file: String,
        position: Option<(u64, u64)>,
        key: String,
        message: String,
    },
}

/// Reads and checks a values file.
pub fn load(path: &Path) -> Result<Values, ValuesError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ValuesError::Parse(hass_runtime::config::ConfigError {
            path: path.to_owned(),
            position: None,
            key: None,
            message: format!("cannot read values file: {e}"),
        })
    })?;
    checked(&text, &path.display().to_string()).map_err(|e| match e {
        ValuesError::Parse(mut e) => {
            e.path = path.to_owned();
            ValuesError::Parse(e)
        }
        invalid => invalid,
    })
}

/// Parses values from text (tests, `--stdin`-like uses).
pub fn parse(text: &str) -> Result<Values, ValuesError> {
    checked(text, "<values>")
}

fn checked(text: &str, file: &str) -> Result<Values, ValuesError> {
    let values: Values = hass_runtime::config::parse_yaml(text)?;
    values
        .check()
        .map_err(|(key, message)| ValuesError::Invalid {
            file: file.to_owned(),
            position: hass_runtime::positions::KeyPositions::of(text).find(&key),
            key,
            message,
        })?;
    Ok(values)
}

/// Suffixes of other objects' names (`<name>-admin`, `<name>-mqtt`, …): a
/// device Service named like them would overwrite them.
const RESERVED_DEVICE_NAMES: &[&str] = &[
    "admin",
    "mqtt",
    "postgres",
    "pg-dump",
    "package",
    "broker",
    "exporter",
    "config-watcher",
];

fn is_dns_label(text: &str, max: usize) -> bool {
    !text.is_empty()
        && text.len() <= max
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !text.starts_with('-')
        && !text.ends_with('-')
        && text.starts_with(|c: char| c.is_ascii_lowercase())
}

impl Values {
    /// What serde cannot check: names that become object names, ports that
    /// must not collide, settings that need each other. Errors are
    /// `(key path, message)`.
    pub fn check(&self) -> Result<(), (String, String)> {
        let err = |key: &str, message: String| Err((key.to_owned(), message));
        if !is_dns_label(&self.name, 30) {
            return err(
                "name",
                format!(
                    "{:?} must be a DNS label of at most 30 characters (a-z, 0-9, -)",
                    self.name
                ),
            );
        }
        if !is_dns_label(&self.namespace, 63) {
            return err(
                "namespace",
                format!("{:?} must be a DNS label", self.namespace),
            );
        }
        let digests = self
            .sidecar_images
            .digests
            .iter()
            .map(|(binary, digest)| (format!("sidecar_images.digests.{binary}"), Some(digest)));
        let digests = digests.chain([
            (
                "home_assistant.image.digest".to_owned(),
                self.home_assistant.image.digest.as_ref(),
            ),
            (
                "postgres.image.digest".to_owned(),
                self.postgres.image.digest.as_ref(),
            ),
        ]);
        for (key, digest) in digests {
            if let Some(digest) = digest.filter(|d| !crate::images::is_digest(d)) {
                return err(
                    &key,
                    format!("{digest:?} is not a digest: sha256:<64 lowercase hex digits>"),
                );
            }
        }
        if let Some(binary) = self
            .sidecar_images
            .digests
            .keys()
            .find(|b| !SIDECAR_BINARIES.contains(&b.as_str()))
        {
            return err(
                &format!("sidecar_images.digests.{binary}"),
                format!(
                    "is not an image of the suite ({})",
                    SIDECAR_BINARIES.join(", ")
                ),
            );
        }
        if self.home_assistant.startup_budget_seconds < 60 {
            return err(
                "home_assistant.startup_budget_seconds",
                "must be at least 60: Home Assistant's startup often takes minutes".to_owned(),
            );
        }
        if self.postgres.mode == PostgresMode::External && self.postgres.external.host.is_empty() {
            return err(
                "postgres.external.host",
                "is required with `mode: external`".to_owned(),
            );
        }
        if let Some(size) = &self.postgres.external.volume_size
            && quantity_bytes(size).is_none_or(|b| b == 0)
        {
            return err(
                "postgres.external.volume_size",
                format!("{size:?} is not a size like 50Gi"),
            );
        }
        if self.broker.enabled
            && quantity_bytes(&self.broker.resources.memory_limit).is_none_or(|b| b < 64 << 20)
        {
            return err(
                "broker.resources.memory_limit",
                format!(
                    "{:?} is not a size of at least 64Mi like 512Mi (the broker's memory \
                     budgets are set from it)",
                    self.broker.resources.memory_limit
                ),
            );
        }
        if self.postgres.backup.enabled && self.postgres.mode == PostgresMode::Disabled {
            return err(
                "postgres.backup.enabled",
                "needs `postgres.mode: internal` or `external`".to_owned(),
            );
        }
        if self.postgres.backup.keep == 0 {
            return err(
                "postgres.backup.keep",
                "must keep at least one dump".to_owned(),
            );
        }
        let ha = &self.home_assistant;
        if ha.host_network
            && self.monitoring.scrape != ScrapeVia::None
            && !ha.host_network_expose.contains(&HostNetworkPort::Admin)
        {
            return err(
                "home_assistant.host_network_expose",
                "must list `admin` for monitoring.scrape: with host_network the admin ports \
                 listen on 127.0.0.1 only, where Prometheus cannot scrape them"
                    .to_owned(),
            );
        }
        // Written into Home Assistant's YAML: anything but an address or a
        // network (a newline, a `: `) would be YAML of its own; and Home
        // Assistant refuses a network with host bits set.
        for (i, proxy) in self.ingress.trusted_proxies.iter().enumerate() {
            if let Err(e) = hass_runtime::ip_network::ip_network(proxy) {
                return err(
                    &format!("ingress.trusted_proxies[{i}]"),
                    format!("must be an IP address or a network like 10.0.0.0/8: {e}"),
                );
            }
        }
        if self.config_watcher.rollback_local_edits {
            if self.config_watcher.source.enabled {
                return err(
                    "config_watcher.rollback_local_edits",
                    "the Git source rolls back its own revisions (`source.rollback`); turn one off"
                        .to_owned(),
                );
            }
            if self.home_assistant.token_secret.is_none() {
                return err(
                    "config_watcher.rollback_local_edits",
                    "needs `home_assistant.token_secret`, to see what Home Assistant makes of an edit"
                        .to_owned(),
                );
            }
        }
        let source = &self.config_watcher.source;
        if source.enabled {
            if !self.config_watcher.enabled {
                return err(
                    "config_watcher.source.enabled",
                    "needs `config_watcher.enabled`: the watcher validates and writes each revision"
                        .to_owned(),
                );
            }
            let scheme_ok = source.git.starts_with("https://")
                || (source.allow_plain_http && source.git.starts_with("http://"));
            if !scheme_ok {
                return err(
                    "config_watcher.source.git",
                    "must be an https:// URL (http:// needs `allow_plain_http`)".to_owned(),
                );
            }
            let authority = source.git.split('/').nth(2).unwrap_or_default();
            if authority.is_empty() || authority.contains('@') {
                return err(
                    "config_watcher.source.git",
                    "needs a host and no credentials: put the token in a Secret and name it in `token_secret`"
                        .to_owned(),
                );
            }
            for (key, value) in [
                ("interval", &source.interval),
                ("rollback_window", &source.rollback_window),
            ] {
                match hass_runtime::config::duration::deserialize(serde_json::Value::String(
                    value.clone(),
                )) {
                    Ok(d) if d.is_zero() => {
                        return err(
                            &format!("config_watcher.source.{key}"),
                            "must be more than 0s".to_owned(),
                        );
                    }
                    Ok(_) => {}
                    Err(e) => return err(&format!("config_watcher.source.{key}"), e.to_string()),
                }
            }
        }
        let backups = &self.config_watcher.backups;
        // The watcher's own duration parser, so what passes here starts there.
        match hass_runtime::config::duration::deserialize(serde_json::Value::String(
            backups.interval.clone(),
        )) {
            Ok(interval) if interval.is_zero() => {
                return err(
                    "config_watcher.backups.interval",
                    "must be more than 0s".to_owned(),
                );
            }
            Ok(_) => {}
            Err(e) => return err("config_watcher.backups.interval", e.to_string()),
        }
        // They are added to the monitors' and rule's own labels; ours name the
        // objects and select pods, so a user label must not replace one.
        if let Some(key) = self
            .monitoring
            .labels
            .keys()
            .find(|key| key.starts_with("app.kubernetes.io/"))
        {
            return err(
                "monitoring.labels",
                format!(
                    "{key:?} is set by hass-manifests; pick a label your Prometheus selects by, e.g. `release`"
                ),
            );
        }
        if self.ingress.enabled && self.ingress.host.is_empty() {
            return err("ingress.host", "is required with an Ingress".to_owned());
        }
        if crate::render::home_assistant::http_through_watcher(self)
            && (!self.config_watcher.enabled || self.home_assistant.token_secret.is_none())
        {
            return err(
                "home_assistant.package.http",
                format!(
                    "Home Assistant {} takes trusted_proxies only through its API: needs \
                     `config_watcher.enabled` and `home_assistant.token_secret` to apply them \
                     (or set `home_assistant.package.http: false` and set them in its UI)",
                    self.home_assistant.image.tag
                ),
            );
        }
        if self.monitoring.home_assistant_token_secret.is_some()
            && !self.home_assistant.package.prometheus
        {
            return err(
                "monitoring.home_assistant_token_secret",
                "needs `home_assistant.package.prometheus: true` (Home Assistant serves no metrics otherwise)"
                    .to_owned(),
            );
        }
        let bridge = &self.serial_bridge;
        if bridge.enabled && bridge.devices.is_empty() {
            return err(
                "serial_bridge.devices",
                "the bridge is enabled but lists no device".to_owned(),
            );
        }
        let mut names = BTreeSet::new();
        let mut ports = BTreeSet::new();
        for (i, device) in bridge.devices.iter().enumerate() {
            let key = format!("serial_bridge.devices[{i}]");
            // `<name>-<device>` is a Service name: a DNS label of at most 63.
            if !is_dns_label(&device.name, 63 - self.name.len() - 1) {
                return err(
                    &format!("{key}.name"),
                    format!(
                        "{:?} must be a DNS label (a-z, 0-9, -) of at most {} characters",
                        device.name,
                        63 - self.name.len() - 1
                    ),
                );
            }
            if RESERVED_DEVICE_NAMES.contains(&device.name.as_str()) {
                return err(
                    &format!("{key}.name"),
                    format!(
                        "{:?} would collide with another object's name; reserved: {}",
                        device.name,
                        RESERVED_DEVICE_NAMES.join(", ")
                    ),
                );
            }
            if !names.insert(device.name.as_str()) {
                return err(
                    &format!("{key}.name"),
                    format!("{:?} is used by another device", device.name),
                );
            }
            if device.node.is_empty() {
                return err(&format!("{key}.node"), "must name a node".to_owned());
            }
            if !device.path.starts_with("/dev/") {
                return err(
                    &format!("{key}.path"),
                    format!("{:?} is not under /dev/", device.path),
                );
            }
            if !ports.insert((device.node.as_str(), device.port)) {
                return err(
                    &format!("{key}.port"),
                    format!(
                        "{} is used by another device on node {}",
                        device.port, device.node
                    ),
                );
            }
            if device.port == hass_runtime::ports::BRIDGE_ADMIN {
                return err(
                    &format!("{key}.port"),
                    format!(
                        "{} is the bridge's admin port",
                        hass_runtime::ports::BRIDGE_ADMIN
                    ),
                );
            }
            if let Some(rfc2217) = device.rfc2217_port
                && (rfc2217 == 0
                    || rfc2217 == hass_runtime::ports::BRIDGE_ADMIN
                    || !ports.insert((device.node.as_str(), rfc2217)))
            {
                return err(
                    &format!("{key}.rfc2217_port"),
                    format!(
                        "{rfc2217} is zero, the admin port, or used by another port on node {}",
                        device.node
                    ),
                );
            }
        }
        Ok(())
    }
}
