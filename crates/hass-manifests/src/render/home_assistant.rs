//! The Home Assistant pod (a one-replica StatefulSet) with its sidecars —
//! hass-broker, hass-config-watcher, hass-exporter — and what belongs to it:
//! the sidecars' ConfigMaps, the Home Assistant package, Services, the PDB,
//! the ServiceAccount and the Ingress.

use std::collections::BTreeMap;

use hass_runtime::ports;
use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    KeyToPath, PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SecretKeySelector, SecretVolumeSource,
    Service, ServiceAccount, ServicePort, ServiceSpec, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;

use super::Objects;
use super::postgres;
use super::serial_bridge;
use crate::meta::{
    self, Accepted, SERVICE_ROLE, SIDECAR_UID, accept, http_probe, labels, object_meta,
    restricted_security_context, selector, selector_labels, tcp_port,
};
use crate::values::{ExtraVolume, HostNetworkPort, PostgresMode, RunAs, Storage, Values};
use crate::yaml;

pub(crate) const COMPONENT: &str = "home-assistant";
// Kubernetes' ports are i32.
pub(crate) const HA_PORT: i32 = ports::HOME_ASSISTANT as i32;
pub(crate) const MQTT_PORT: i32 = ports::MQTT as i32;
pub(crate) const MQTT_WS_PORT: i32 = ports::MQTT_WS as i32;
pub(crate) const BROKER_ADMIN: i32 = ports::BROKER_ADMIN as i32;
pub(crate) const WATCHER_ADMIN: i32 = ports::WATCHER_ADMIN as i32;
pub(crate) const EXPORTER_ADMIN: i32 = ports::EXPORTER_ADMIN as i32;
pub(crate) const GIT_MIRROR_ADMIN: i32 = ports::GIT_MIRROR_ADMIN as i32;

/// Where the package ConfigMap is mounted: a folder of its own, so the
/// ConfigMap's `..data` swap reaches the watcher and the user's own packages
/// beside it stay untouched. `!include_dir_named` skips the dot-folders.
pub(crate) const PACKAGE_DIR: &str = "/config/packages/hass-sidecars";
/// Where Home Assistant running restricted installs integrations' Python
/// packages: on its PVC, so they survive restarts.
const USER_PACKAGES: &str = "/config/.local";
/// Home Assistant's start when restricted (see `RunAs::Restricted`), in the
/// image's `/bin/sh`. Home Assistant restarts itself (the UI's Restart,
/// `http/config/configure`) by exiting with 100 for its supervisor to start
/// it again, as s6 does in the official image; as PID 1 that exit would
/// restart the container under the kubelet's crash-loop back-off. The loop
/// starts it again in place, and passes SIGTERM on to it.
const RESTRICTED_START: &str = r#"unset UV_SYSTEM_PYTHON
mkdir -p "$(python3 -m site --user-site)" || exit 1
trap 'kill -TERM "$ha" 2>/dev/null' TERM INT
while :; do
  python3 -m homeassistant --config /config &
  ha=$!
  wait "$ha"; code=$?
  while kill -0 "$ha" 2>/dev/null; do wait "$ha"; code=$?; done
  [ "$code" -eq 100 ] || exit "$code"
done
"#;
const PACKAGE_FILE: &str = "hass_sidecars.yaml";
const TOKEN_FILE: &str = "/run/secrets/ha-token/token";
const PG_PASSWORD_FILE: &str = "/run/secrets/postgres/password";
const MQTT_PASSWORD_FILE: &str = "/run/secrets/mqtt-exporter/password";
/// The watcher's own volume: the history repository lives here, outside the
/// read-only `/config`.
pub(crate) const WATCHER_STATE_DIR: &str = "/var/lib/hass-config-watcher";
const HISTORY_REPO: &str = "/var/lib/hass-config-watcher/history.git";
/// The mirror's volume, written by hass-git-mirror, read by the watcher.
const GIT_MIRROR_DIR: &str = "/var/lib/hass-git-mirror";
const GIT_MIRROR_REPO: &str = "/var/lib/hass-git-mirror/repo.git";
const GIT_TOKEN_FILE: &str = "/run/secrets/git-token/token";
const GIT_CA_FILE: &str = "/run/secrets/git-ca/ca.crt";

/// Whether the pod runs hass-git-mirror (and the watcher writes `/config`).
pub(crate) fn git_source(values: &Values) -> bool {
    values.config_watcher.enabled && values.config_watcher.source.enabled
}

/// Whether the watcher writes into `/config`: a Git source's revisions, or
/// local edits put back.
fn watcher_writes_config(values: &Values) -> bool {
    git_source(values) || values.config_watcher.rollback_local_edits
}

/// Where the watcher sees the backup volume (Home Assistant sees it at
/// `/config/backups`).
pub(crate) const WATCHER_BACKUP_DIR: &str = "/backups";

/// Whether the watcher writes config backups: only onto the backup volume.
fn watcher_backups(values: &Values) -> bool {
    values.config_watcher.backups.enabled && values.home_assistant.backup.enabled
}

/// The admin ports of the pod's sidecars, as (port name, port), in pod order.
pub(crate) fn admin_ports(values: &Values) -> Vec<(&'static str, i32)> {
    let mut ports = Vec::new();
    if values.broker.enabled {
        ports.push(("broker-admin", BROKER_ADMIN));
    }
    if values.config_watcher.enabled {
        ports.push(("watcher-admin", WATCHER_ADMIN));
    }
    if git_source(values) {
        ports.push(("mirror-admin", GIT_MIRROR_ADMIN));
    }
    if values.exporter.enabled {
        ports.push(("exporter-admin", EXPORTER_ADMIN));
    }
    ports
}

/// The exporter's truthful probes need its HA section, which needs a token.
/// Whether the package file has anything to say.
pub(crate) fn package_wanted(values: &Values) -> bool {
    let package = &values.home_assistant.package;
    package.enabled
        && ((package.recorder && values.postgres.mode != PostgresMode::Disabled)
            || (package.http && values.ingress.enabled)
            || package.prometheus)
}

fn probes_via_exporter(values: &Values) -> bool {
    values.exporter.enabled && values.home_assistant.token_secret.is_some()
}

pub(crate) fn render(values: &Values, objects: &mut Objects) {
    objects.push(service_account(values));
    for config_map in config_maps(values) {
        objects.push(config_map);
    }
    objects.push(stateful_set(values));
    for service in services(values) {
        objects.push(service);
    }
    if values.pod_disruption_budget.enabled {
        objects.push(pod_disruption_budget(values, &values.name, COMPONENT));
    }
    if values.ingress.enabled {
        objects.push(ingress(values));
    }
}

/// One ServiceAccount for every pod of the instance, without an API token:
/// nothing here talks to the Kubernetes API.
fn service_account(values: &Values) -> ServiceAccount {
    ServiceAccount {
        metadata: object_meta(
            values,
            &values.name,
            labels(values, COMPONENT, "home-assistant"),
        ),
        automount_service_account_token: Some(false),
        ..Default::default()
    }
}

pub(crate) fn pod_disruption_budget(
    values: &Values,
    name: &str,
    component: &str,
) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: object_meta(values, name, labels(values, component, component)),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(
                values.pod_disruption_budget.max_unavailable,
            )),
            selector: Some(selector(selector_labels(values, component))),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Home Assistant's recorder URL, built by Kubernetes from the password
/// Secret (`$(VAR)` expansion), so the only secret the user makes is the
/// password.
fn recorder_env(values: &Values) -> Vec<EnvVar> {
    let pg = &values.postgres;
    if pg.mode == PostgresMode::Disabled
        || !package_wanted(values)
        || !values.home_assistant.package.recorder
    {
        return Vec::new();
    }
    let (host, port) = postgres::address(values);
    vec![
        EnvVar {
            name: "HASS_RECORDER_DB_PASSWORD".to_owned(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: pg.password_secret.name.clone(),
                    key: pg.password_secret.key.clone(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
        EnvVar {
            name: "HASS_RECORDER_DB_URL".to_owned(),
            value: Some(format!(
                "postgresql://{}:$(HASS_RECORDER_DB_PASSWORD)@{host}:{port}/{}",
                pg.user, pg.database
            )),
            ..Default::default()
        },
    ]
}

/// The package file: only what the sidecars need, never the user's config.
pub(crate) fn package_text(values: &Values) -> String {
    let package = &values.home_assistant.package;
    let mut text = String::from(
        "# Generated by hass-manifests: what the hass-sidecars need from Home Assistant.\n\
         # Loaded once configuration.yaml has:\n",
    );
    for line in crate::PACKAGE_INCLUDE.lines() {
        text.push_str(&format!("#   {line}\n"));
    }
    text.push_str(
        "# Turn a section off in the values when your own configuration.yaml\n\
         # already has that key.\n",
    );
    if package.recorder && values.postgres.mode != PostgresMode::Disabled {
        text.push_str(
            "recorder:\n  # postgresql://USER:PASSWORD@HOST:PORT/DB, built by Kubernetes from the password Secret.\n  db_url: !env_var HASS_RECORDER_DB_URL\n",
        );
    }
    if package.http && values.ingress.enabled && http_in_yaml(&values.home_assistant.image.tag) {
        text.push_str("http:\n  use_x_forwarded_for: true\n  trusted_proxies:\n");
        for cidr in &values.ingress.trusted_proxies {
            text.push_str(&format!("    - {cidr}\n"));
        }
    }
    if package.prometheus {
        text.push_str("prometheus:\n  namespace: hass\n");
    }
    text
}

/// Whether the Ingress's HTTP settings reach Home Assistant through the
/// config watcher's `http_settings` (2026.8 and later) rather than the
/// package's `http:`.
pub(crate) fn http_through_watcher(values: &Values) -> bool {
    values.home_assistant.package.http
        && values.ingress.enabled
        && !http_in_yaml(&values.home_assistant.image.tag)
}

/// Whether Home Assistant of image `tag` still reads `http:` from YAML:
/// releases before 2026.8 do; later ones import it into `.storage/http`
/// once and ignore it. A tag that is no `YEAR.MONTH…` version (`stable`,
/// `latest`) is taken as current.
pub(crate) fn http_in_yaml(tag: &str) -> bool {
    let mut parts = tag.split('.');
    let number = |part: Option<&str>| -> Option<u32> {
        let digits: String = part?.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    match (number(parts.next()), number(parts.next())) {
        (Some(year), Some(month)) => (year, month) < (2026, 8),
        _ => false,
    }
}

fn config_map(values: &Values, name: &str, component: &str, file: &str, text: String) -> ConfigMap {
    ConfigMap {
        metadata: object_meta(values, name, labels(values, component, component)),
        data: Some(BTreeMap::from([(file.to_owned(), text)])),
        ..Default::default()
    }
}

/// The config files of the sidecars, and the package.
/// Whether a sidecar `port` listens on 127.0.0.1 only: with `host_network`
/// the pod's addresses are the node's (the LAN, past every policy), so only
/// what `host_network_expose` lists listens there.
fn on_loopback(values: &Values, port: HostNetworkPort) -> bool {
    let ha = &values.home_assistant;
    ha.host_network && !ha.host_network_expose.contains(&port)
}

/// The address a sidecar listens on for `port`.
fn listen(values: &Values, port: HostNetworkPort, number: i32) -> String {
    let host = if on_loopback(values, port) {
        "127.0.0.1"
    } else {
        "0.0.0.0"
    };
    format!("{host}:{number}")
}

/// The `admin:` section of a sidecar's config, when its admin port must
/// leave the default (all addresses) for loopback.
fn admin_section(values: &Values, config: &mut serde_json::Value, port: i32) {
    if on_loopback(values, HostNetworkPort::Admin) {
        config["admin"] = json!({ "listen": format!("127.0.0.1:{port}") });
    }
}

/// The broker's memory budgets as shares of its container's memory limit,
/// so it sheds queued messages and refuses new retained messages and
/// subscriptions before the kernel kills it: queued 40 %, retained 20 %,
/// subscriptions 10 % (a client at most 8 MiB of them, the broker's
/// default), large packets still arriving 10 % (the broker raises it to one
/// packet of `max_packet_size`), the rest for connections and the process.
/// The limit was checked when the values were loaded.
fn broker_budgets(memory_limit: &str) -> serde_json::Value {
    let limit = crate::values::quantity_bytes(memory_limit).unwrap_or(512 << 20);
    let subscriptions = limit / 10;
    json!({
        "memory_budget": limit * 2 / 5,
        "retained_budget": limit / 5,
        "subscription_budget": subscriptions,
        "subscription_budget_per_client": subscriptions.min(8 << 20),
        "partial_packet_budget": limit / 10,
    })
}

fn config_maps(values: &Values) -> Vec<ConfigMap> {
    let mut maps = Vec::new();
    let name = &values.name;
    if package_wanted(values) {
        maps.push(config_map(
            values,
            &format!("{name}-package"),
            COMPONENT,
            PACKAGE_FILE,
            package_text(values),
        ));
    }
    if values.broker.enabled {
        let mut config = json!({
            "listeners": {
                "mqtt": listen(values, HostNetworkPort::Mqtt, MQTT_PORT),
                "ws": values.broker.websockets.then(|| listen(values, HostNetworkPort::MqttWs, MQTT_WS_PORT)),
            },
            "data_dir": "/data",
            "password_file": "/run/secrets/mqtt/passwd",
            "acl_file": "/run/secrets/mqtt/acl",
            "allow_anonymous": false,
            "limits": broker_budgets(&values.broker.resources.memory_limit),
        });
        admin_section(values, &mut config, BROKER_ADMIN);
        maps.push(config_map(
            values,
            &format!("{name}-broker"),
            "broker",
            "broker.yaml",
            yaml_text("hass-broker", &config),
        ));
    }
    if values.config_watcher.enabled {
        let mut ha = json!({ "url": format!("http://127.0.0.1:{HA_PORT}") });
        if values.home_assistant.token_secret.is_some() {
            ha["token"] = json!({ "file": TOKEN_FILE });
        }
        let watcher = &values.config_watcher;
        let mut config = json!({
            "config_dir": "/config",
            "home_assistant": ha,
            "auto_restart": watcher.auto_restart,
        });
        if watcher.history.enabled {
            config["history"] = json!({
                "repo": HISTORY_REPO,
                "include_secrets": watcher.history.include_secrets,
            });
        }
        if watcher_backups(values) {
            config["backup_interval"] = json!(watcher.backups.interval);
            config["backup_dir"] = json!(WATCHER_BACKUP_DIR);
            config["backup_keep"] = json!(watcher.backups.keep);
        }
        if watcher.rollback_local_edits {
            config["rollback_local_edits"] = json!(true);
        }
        if git_source(values) {
            let source = &watcher.source;
            config["source"] = json!({
                "git": format!("file://{GIT_MIRROR_REPO}"),
                "branch": source.branch,
                "path": source.path,
                // Reading the local mirror costs a few file reads.
                "interval": source.interval,
                "rollback": source.rollback,
                "rollback_window": source.rollback_window,
                "allow_force_push": source.allow_force_push,
            });
        }
        if http_through_watcher(values) {
            // Home Assistant 2026.8+ takes these only through its API.
            config["http_settings"] = json!({
                "use_x_forwarded_for": true,
                "trusted_proxies": values.ingress.trusted_proxies,
            });
        }
        admin_section(values, &mut config, WATCHER_ADMIN);
        maps.push(config_map(
            values,
            &format!("{name}-config-watcher"),
            "config-watcher",
            "config-watcher.yaml",
            yaml_text("hass-config-watcher run", &config),
        ));
    }
    if git_source(values) {
        let source = &values.config_watcher.source;
        let mut config = json!({
            "remote": source.git,
            "branch": source.branch,
            "mirror": GIT_MIRROR_REPO,
            "interval": source.interval,
            "username": source.username,
            "allow_plain_http": source.allow_plain_http,
        });
        if source.token_secret.is_some() {
            config["token"] = json!({ "file": GIT_TOKEN_FILE });
        }
        admin_section(values, &mut config, GIT_MIRROR_ADMIN);
        maps.push(config_map(
            values,
            &format!("{name}-git-mirror"),
            "git-mirror",
            "git-mirror.yaml",
            yaml_text("hass-git-mirror", &config),
        ));
    }
    if values.exporter.enabled {
        maps.push(config_map(
            values,
            &format!("{name}-exporter"),
            "exporter",
            "exporter.yaml",
            yaml_text("hass-exporter", &exporter_config(values)),
        ));
    }
    maps
}

fn yaml_text(binary: &str, config: &serde_json::Value) -> String {
    let body = yaml::to_yaml(config).unwrap_or_default();
    format!("# {binary} --config; generated by hass-manifests.\n{body}")
}

fn exporter_config(values: &Values) -> serde_json::Value {
    let mut config = serde_json::Map::new();
    if let Some(_token) = &values.home_assistant.token_secret {
        config.insert(
            "home_assistant".to_owned(),
            json!({ "url": format!("http://127.0.0.1:{HA_PORT}"), "token": { "file": TOKEN_FILE } }),
        );
    }
    if values.postgres.mode != PostgresMode::Disabled {
        let (host, port) = postgres::address(values);
        config.insert(
            "postgres".to_owned(),
            json!({
                "host": host,
                "port": port,
                "user": values.postgres.user,
                "dbname": values.postgres.database,
                "password": { "file": PG_PASSWORD_FILE },
            }),
        );
    }
    if values.broker.enabled && values.broker.exporter_password.is_some() {
        config.insert(
            "broker".to_owned(),
            json!({
                "address": format!("127.0.0.1:{MQTT_PORT}"),
                "username": values.broker.exporter_username,
                "password": { "file": MQTT_PASSWORD_FILE },
            }),
        );
    }
    let bridges: Vec<_> = serial_bridge::node_groups(values)
        .iter()
        .map(|group| {
            json!({
                "name": group.slug,
                "url": format!("http://{}:{}", group.name, serial_bridge::ADMIN_PORT),
            })
        })
        .collect();
    if !bridges.is_empty() {
        config.insert("bridges".to_owned(), serde_json::Value::Array(bridges));
    }
    let mut config = serde_json::Value::Object(config);
    admin_section(values, &mut config, EXPORTER_ADMIN);
    config
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: Some(read_only),
        ..Default::default()
    }
}

fn config_map_volume(name: &str, config_map: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map.to_owned(),
            default_mode: Some(0o444),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A Secret volume with chosen keys, readable by the pod's fsGroup only.
pub(crate) fn secret_volume(name: &str, secret: &str, items: &[(&str, &str)]) -> Volume {
    Volume {
        name: name.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_owned()),
            default_mode: Some(0o440),
            items: Some(
                items
                    .iter()
                    .map(|(key, path)| KeyToPath {
                        key: (*key).to_owned(),
                        path: (*path).to_owned(),
                        ..Default::default()
                    })
                    .collect(),
            ),
            optional: Some(false),
        }),
        ..Default::default()
    }
}

pub(crate) fn claim_template(name: &str, storage: &Storage) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        spec: Some(claim_spec(storage)),
        ..Default::default()
    }
}

pub(crate) fn claim_spec(storage: &Storage) -> PersistentVolumeClaimSpec {
    PersistentVolumeClaimSpec {
        access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
        storage_class_name: storage.storage_class.clone(),
        resources: Some(VolumeResourceRequirements {
            requests: Some(BTreeMap::from([(
                "storage".to_owned(),
                meta::quantity(&storage.size),
            )])),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn extra_volume(
    name: &str,
    extra: &ExtraVolume,
    volumes: &mut Vec<Volume>,
    templates: &mut Vec<PersistentVolumeClaim>,
) {
    match &extra.existing_claim {
        Some(claim) => volumes.push(Volume {
            name: name.to_owned(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.clone(),
                read_only: Some(false),
            }),
            ..Default::default()
        }),
        None => templates.push(claim_template(
            name,
            &Storage {
                size: extra.size.clone(),
                storage_class: extra.storage_class.clone(),
            },
        )),
    }
}

fn sidecar(values: &Values, binary: &str, args: Vec<String>) -> Container {
    Container {
        name: binary.trim_start_matches("hass-").to_owned(),
        image: Some(values.sidecar_images.image(binary).reference()),
        image_pull_policy: Some(values.image_pull_policy.as_str().to_owned()),
        args: Some(args),
        env: Some(vec![EnvVar {
            name: "RUST_LOG".to_owned(),
            value: Some("info".to_owned()),
            ..Default::default()
        }]),
        security_context: Some(restricted_security_context()),
        ..Default::default()
    }
}

fn admin_probes(values: &Values, container: &mut Container, port: i32) {
    container.liveness_probe = Some(admin_probe(values, "/healthz", port, 10, 3));
    container.readiness_probe = Some(admin_probe(values, "/readyz", port, 10, 3));
}

/// A probe of a sidecar's admin port, wherever it listens.
fn admin_probe(values: &Values, path: &str, port: i32, period: i32, failures: i32) -> Probe {
    if on_loopback(values, HostNetworkPort::Admin) {
        meta::loopback_probe(path, port, period, failures)
    } else {
        http_probe(path, port, period, failures)
    }
}

fn home_assistant_probes(values: &Values) -> (Probe, Probe, Probe) {
    let budget = values.home_assistant.startup_budget_seconds;
    let period = 10;
    let startup_failures = (budget + period - 1) / period;
    if probes_via_exporter(values) {
        (
            admin_probe(
                values,
                "/probe/ha/startup",
                EXPORTER_ADMIN,
                period,
                startup_failures,
            ),
            admin_probe(values, "/probe/ha/ready", EXPORTER_ADMIN, period, 3),
            // The exporter already waits `live_timeout` (5 min) of silence.
            admin_probe(values, "/probe/ha/live", EXPORTER_ADMIN, 30, 3),
        )
    } else {
        // No token: `/manifest.json` is served without one and never counts
        // towards an IP ban.
        (
            http_probe("/manifest.json", HA_PORT, period, startup_failures),
            http_probe("/manifest.json", HA_PORT, period, 3),
            http_probe("/manifest.json", HA_PORT, 30, 10),
        )
    }
}

fn home_assistant_container(values: &Values) -> Container {
    let ha = &values.home_assistant;
    let mut env = Vec::new();
    if let Some(tz) = &ha.timezone {
        env.push(EnvVar {
            name: "TZ".to_owned(),
            value: Some(tz.clone()),
            ..Default::default()
        });
    }
    env.extend(recorder_env(values));
    if ha.run_as == RunAs::Restricted {
        env.push(EnvVar {
            name: "PYTHONUSERBASE".to_owned(),
            value: Some(USER_PACKAGES.to_owned()),
            ..Default::default()
        });
    }
    let mut mounts = vec![mount("config", "/config", false)];
    if package_wanted(values) {
        mounts.push(mount("package", PACKAGE_DIR, true));
    }
    if ha.media.enabled {
        mounts.push(mount("media", "/media", false));
    }
    if ha.backup.enabled {
        mounts.push(mount("backup", "/config/backups", false));
    }
    let (startup, readiness, liveness) = home_assistant_probes(values);
    let mut container = Container {
        name: "home-assistant".to_owned(),
        image: Some(ha.image.reference()),
        image_pull_policy: Some(values.image_pull_policy.as_str().to_owned()),
        ports: Some(vec![tcp_port("http", HA_PORT)]),
        env: Some(env),
        resources: Some(meta::resources(
            &ha.resources
                .clone()
                .unwrap_or_else(|| ha.preset.resources()),
        )),
        startup_probe: Some(startup),
        readiness_probe: Some(readiness),
        liveness_probe: Some(liveness),
        ..Default::default()
    };
    match ha.run_as {
        RunAs::Restricted => {
            // The image's s6 init needs root; Home Assistant itself does not.
            // What an integration installs at run time goes to the PVC: the
            // image's UV_SYSTEM_PYTHON would aim uv at the read-only system
            // Python ("Read-only file system"); without it Home Assistant
            // installs into the user site, PYTHONUSERBASE on /config, which
            // Python puts on sys.path only if it exists at start.
            container.command = Some(vec![
                "/bin/sh".to_owned(),
                "-c".to_owned(),
                RESTRICTED_START.to_owned(),
            ]);
            container.security_context = Some(restricted_security_context());
            mounts.push(mount("tmp", "/tmp", false));
        }
        RunAs::Root => {
            let mut sc = restricted_security_context();
            sc.run_as_user = Some(0);
            sc.run_as_group = Some(0);
            sc.run_as_non_root = Some(false);
            sc.read_only_root_filesystem = Some(false);
            if let Some(caps) = sc.capabilities.as_mut() {
                // What s6-overlay's init needs to prepare /run as root.
                caps.add = Some(
                    ["CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"]
                        .map(str::to_owned)
                        .to_vec(),
                );
            }
            container.security_context = Some(sc);
        }
    }
    container.volume_mounts = Some(mounts);
    container
}

/// What the pod's containers add to it: themselves, their volumes, and the
/// claims of the StatefulSet's volume templates, in the order they come.
struct PodParts {
    containers: Vec<Container>,
    volumes: Vec<Volume>,
    templates: Vec<PersistentVolumeClaim>,
}

fn stateful_set(values: &Values) -> StatefulSet {
    let ha = &values.home_assistant;
    let name = &values.name;
    let mut parts = PodParts {
        containers: vec![home_assistant_container(values)],
        volumes: Vec::new(),
        templates: vec![claim_template("config", &ha.config_storage)],
    };
    let mut accepted: Vec<Accepted> = Vec::new();

    if package_wanted(values) {
        parts
            .volumes
            .push(config_map_volume("package", &format!("{name}-package")));
    }
    if ha.media.enabled {
        extra_volume("media", &ha.media, &mut parts.volumes, &mut parts.templates);
    }
    if ha.backup.enabled {
        extra_volume(
            "backup",
            &ha.backup,
            &mut parts.volumes,
            &mut parts.templates,
        );
    }
    if ha.run_as == RunAs::Restricted {
        parts.volumes.push(Volume {
            name: "tmp".to_owned(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(meta::quantity("256Mi")),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    if let Some(token) = &ha.token_secret {
        parts.volumes.push(secret_volume(
            "ha-token",
            &token.name,
            &[(&token.key, "token")],
        ));
    }

    if values.broker.enabled {
        broker_sidecar(values, &mut parts);
    }

    if values.config_watcher.enabled {
        config_watcher_sidecar(values, &mut parts);
    }

    if git_source(values) {
        git_mirror_sidecar(values, &mut parts);
    }

    if values.exporter.enabled {
        exporter_sidecar(values, &mut parts);
    }

    let mut pod_sc = PodSecurityContext {
        fs_group: Some(SIDECAR_UID),
        fs_group_change_policy: Some("OnRootMismatch".to_owned()),
        seccomp_profile: Some(meta::seccomp_runtime_default()),
        ..Default::default()
    };
    if ha.run_as == RunAs::Restricted {
        pod_sc.run_as_user = Some(SIDECAR_UID);
        pod_sc.run_as_group = Some(SIDECAR_UID);
        pod_sc.run_as_non_root = Some(true);
    } else {
        accepted.extend([
            Accepted {
                check: "CKV_K8S_22",
                reason: "run_as root: the official image's s6 init writes to its root filesystem",
            },
            Accepted {
                check: "CKV_K8S_23",
                reason: "run_as root: the official image's s6 init runs as root; the sidecars do not",
            },
            Accepted {
                check: "CKV_K8S_40",
                reason: "run_as root: the official image's s6 init runs as root; the sidecars use UID 65532",
            },
            Accepted {
                check: "CKV_K8S_25",
                reason: "run_as root: s6 init needs CHOWN, DAC_OVERRIDE, FOWNER, SETGID, SETUID; all others dropped",
            },
            Accepted {
                check: "CKV_K8S_37",
                reason: "run_as root: s6 init needs CHOWN, DAC_OVERRIDE, FOWNER, SETGID, SETUID; all others dropped",
            },
        ]);
    }
    if !recorder_env(values).is_empty() {
        accepted.push(Accepted {
            check: "CKV_K8S_35",
            reason: "Home Assistant reads recorder.db_url with !env_var; Kubernetes builds it from the password Secret",
        });
    }
    if ha.host_network {
        accepted.push(Accepted {
            check: "CKV_K8S_19",
            reason: "home_assistant.host_network: mDNS/SSDP discovery and HomeKit need the node's network",
        });
    }

    let pod_labels = labels(values, COMPONENT, "home-assistant");
    let mut metadata = object_meta(values, name, labels(values, COMPONENT, "home-assistant"));
    if let Some(l) = metadata.labels.as_mut() {
        l.insert("app.kubernetes.io/version".to_owned(), ha.image.tag.clone());
    }
    let pod_spec = PodSpec {
        service_account_name: Some(name.clone()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        host_network: Some(ha.host_network),
        dns_policy: Some(
            if ha.host_network {
                "ClusterFirstWithHostNet"
            } else {
                "ClusterFirst"
            }
            .to_owned(),
        ),
        security_context: Some(pod_sc),
        termination_grace_period_seconds: Some(ha.termination_grace_period_seconds),
        containers: parts.containers,
        volumes: Some(parts.volumes),
        ..Default::default()
    };
    accepted.extend(meta::image_findings(values, &meta::pod_images(&pod_spec)));
    accepted.extend(meta::network_policy_findings(values));
    accept(&mut metadata, &accepted);
    StatefulSet {
        metadata,
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            selector: selector(selector_labels(values, COMPONENT)),
            service_name: Some(format!("{name}-admin")),
            // One replica: the old pod is gone before the new one starts,
            // so two instances never share /config (Recreate semantics).
            pod_management_policy: Some("OrderedReady".to_owned()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".to_owned()),
                ..Default::default()
            }),
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Retain".to_owned()),
                    when_scaled: Some("Retain".to_owned()),
                },
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..Default::default()
                }),
                spec: Some(pod_spec),
            },
            volume_claim_templates: Some(parts.templates),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// hass-broker: MQTT, its config, its password and ACL files, its store.
fn broker_sidecar(values: &Values, parts: &mut PodParts) {
    let name = &values.name;
    let mut c = sidecar(
        values,
        "hass-broker",
        vec![
            "--config".to_owned(),
            "/etc/hass-broker/broker.yaml".to_owned(),
        ],
    );
    let mut ports = vec![tcp_port("mqtt", MQTT_PORT)];
    if values.broker.websockets {
        ports.push(tcp_port("mqtt-ws", MQTT_WS_PORT));
    }
    ports.push(tcp_port("broker-admin", BROKER_ADMIN));
    c.ports = Some(ports);
    c.resources = Some(meta::resources(&values.broker.resources));
    admin_probes(values, &mut c, BROKER_ADMIN);
    c.volume_mounts = Some(vec![
        mount("broker-config", "/etc/hass-broker", true),
        mount("broker-data", "/data", false),
        mount("mqtt-auth", "/run/secrets/mqtt", true),
    ]);
    parts.containers.push(c);
    parts.volumes.push(config_map_volume(
        "broker-config",
        &format!("{name}-broker"),
    ));
    parts.volumes.push(secret_volume(
        "mqtt-auth",
        &values.broker.auth_secret,
        &[("passwd", "passwd"), ("acl", "acl")],
    ));
    parts
        .templates
        .push(claim_template("broker-data", &values.broker.storage));
}

/// hass-config-watcher: /config (read-only unless it writes), its history and backups.
fn config_watcher_sidecar(values: &Values, parts: &mut PodParts) {
    let ha = &values.home_assistant;
    let name = &values.name;
    let mut c = sidecar(
        values,
        "hass-config-watcher",
        vec![
            "run".to_owned(),
            "--config".to_owned(),
            "/etc/hass-config-watcher/config-watcher.yaml".to_owned(),
        ],
    );
    c.ports = Some(vec![tcp_port("watcher-admin", WATCHER_ADMIN)]);
    c.resources = Some(meta::resources(&values.config_watcher.resources));
    admin_probes(values, &mut c, WATCHER_ADMIN);
    // It validates `!env_var` exactly as Home Assistant does, so it sees
    // the same variables.
    if let Some(env) = c.env.as_mut() {
        env.extend(recorder_env(values));
    }
    // /config is read-only here unless the watcher follows a Git
    // source or puts back local edits: then it writes files there.
    // History and backups go to volumes of their own either way.
    let mut mounts = vec![
        mount("config-watcher-config", "/etc/hass-config-watcher", true),
        mount("config", "/config", !watcher_writes_config(values)),
    ];
    if git_source(values) {
        mounts.push(mount("git-mirror", GIT_MIRROR_DIR, true));
    }
    if package_wanted(values) {
        mounts.push(mount("package", PACKAGE_DIR, true));
    }
    if watcher_backups(values) {
        mounts.push(mount("backup", WATCHER_BACKUP_DIR, false));
    }
    if values.config_watcher.history.enabled {
        mounts.push(mount("config-history", WATCHER_STATE_DIR, false));
        parts.templates.push(claim_template(
            "config-history",
            &values.config_watcher.history.storage,
        ));
    }
    if ha.token_secret.is_some() {
        mounts.push(mount("ha-token", "/run/secrets/ha-token", true));
    }
    c.volume_mounts = Some(mounts);
    parts.containers.push(c);
    parts.volumes.push(config_map_volume(
        "config-watcher-config",
        &format!("{name}-config-watcher"),
    ));
}

/// hass-git-mirror: the only container with the Git token; never sees /config.
fn git_mirror_sidecar(values: &Values, parts: &mut PodParts) {
    let name = &values.name;
    let source = &values.config_watcher.source;
    let mut c = sidecar(
        values,
        "hass-git-mirror",
        vec![
            "--config".to_owned(),
            "/etc/hass-git-mirror/git-mirror.yaml".to_owned(),
        ],
    );
    c.ports = Some(vec![tcp_port("mirror-admin", GIT_MIRROR_ADMIN)]);
    c.resources = Some(meta::resources(&source.resources));
    admin_probes(values, &mut c, GIT_MIRROR_ADMIN);
    // The only container with the Git token; it never sees /config.
    let mut mounts = vec![
        mount("git-mirror-config", "/etc/hass-git-mirror", true),
        mount("git-mirror", GIT_MIRROR_DIR, false),
    ];
    if let Some(token) = &source.token_secret {
        mounts.push(mount("git-token", "/run/secrets/git-token", true));
        parts.volumes.push(secret_volume(
            "git-token",
            &token.name,
            &[(&token.key, "token")],
        ));
    }
    if let Some(ca) = &source.ca_secret {
        mounts.push(mount("git-ca", "/run/secrets/git-ca", true));
        parts
            .volumes
            .push(secret_volume("git-ca", &ca.name, &[(&ca.key, "ca.crt")]));
        if let Some(env) = c.env.as_mut() {
            env.push(EnvVar {
                name: "SSL_CERT_FILE".to_owned(),
                value: Some(GIT_CA_FILE.to_owned()),
                ..Default::default()
            });
        }
    }
    c.volume_mounts = Some(mounts);
    parts.containers.push(c);
    parts.volumes.push(config_map_volume(
        "git-mirror-config",
        &format!("{name}-git-mirror"),
    ));
    // A configuration repository is kilobytes; the mirror abandons a
    // fetch past 256 MiB, and the kubelet evicts past this.
    parts.volumes.push(Volume {
        name: "git-mirror".to_owned(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(meta::quantity("512Mi")),
            ..Default::default()
        }),
        ..Default::default()
    });
}

/// hass-exporter: the HA token, the recorder's and the broker's passwords.
fn exporter_sidecar(values: &Values, parts: &mut PodParts) {
    let ha = &values.home_assistant;
    let name = &values.name;
    let mut c = sidecar(
        values,
        "hass-exporter",
        vec![
            "--config".to_owned(),
            "/etc/hass-exporter/exporter.yaml".to_owned(),
        ],
    );
    c.ports = Some(vec![tcp_port("exporter-admin", EXPORTER_ADMIN)]);
    c.resources = Some(meta::resources(&values.exporter.resources));
    admin_probes(values, &mut c, EXPORTER_ADMIN);
    let mut mounts = vec![mount("exporter-config", "/etc/hass-exporter", true)];
    if ha.token_secret.is_some() {
        mounts.push(mount("ha-token", "/run/secrets/ha-token", true));
    }
    if values.postgres.mode != PostgresMode::Disabled {
        let secret = &values.postgres.password_secret;
        parts.volumes.push(secret_volume(
            "postgres-password",
            &secret.name,
            &[(&secret.key, "password")],
        ));
        mounts.push(mount("postgres-password", "/run/secrets/postgres", true));
    }
    if let (true, Some(secret)) = (values.broker.enabled, &values.broker.exporter_password) {
        parts.volumes.push(secret_volume(
            "mqtt-exporter",
            &secret.name,
            &[(&secret.key, "password")],
        ));
        mounts.push(mount("mqtt-exporter", "/run/secrets/mqtt-exporter", true));
    }
    c.volume_mounts = Some(mounts);
    parts.containers.push(c);
    parts.volumes.push(config_map_volume(
        "exporter-config",
        &format!("{name}-exporter"),
    ));
}

fn port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port,
        target_port: Some(IntOrString::String(name.to_owned())),
        protocol: Some("TCP".to_owned()),
        ..Default::default()
    }
}

fn services(values: &Values) -> Vec<Service> {
    let name = &values.name;
    let mut services = Vec::new();
    let mut meta = object_meta(values, name, labels(values, COMPONENT, "home-assistant"));
    if !values.home_assistant.service.annotations.is_empty() {
        meta.annotations = Some(values.home_assistant.service.annotations.clone());
    }
    services.push(Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            type_: Some(values.home_assistant.service.r#type.as_str().to_owned()),
            selector: Some(selector_labels(values, COMPONENT)),
            ports: Some(vec![port("http", HA_PORT)]),
            ..Default::default()
        }),
        ..Default::default()
    });
    if values.broker.enabled {
        let mut ports = vec![port("mqtt", MQTT_PORT)];
        if values.broker.websockets {
            ports.push(port("mqtt-ws", MQTT_WS_PORT));
        }
        let mut meta = object_meta(
            values,
            &format!("{name}-mqtt"),
            labels(values, "broker", "hass-broker"),
        );
        if !values.broker.service.annotations.is_empty() {
            meta.annotations = Some(values.broker.service.annotations.clone());
        }
        services.push(Service {
            metadata: meta,
            spec: Some(ServiceSpec {
                type_: Some(values.broker.service.r#type.as_str().to_owned()),
                selector: Some(selector_labels(values, COMPONENT)),
                ports: Some(ports),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    // Headless: the StatefulSet's governing Service and what monitors select.
    let mut admin_labels = labels(values, COMPONENT, "home-assistant");
    admin_labels.insert(SERVICE_ROLE.to_owned(), "admin".to_owned());
    let mut ports: Vec<ServicePort> = admin_ports(values)
        .into_iter()
        .map(|(n, p)| port(n, p))
        .collect();
    ports.push(port("http", HA_PORT));
    services.push(Service {
        metadata: object_meta(values, &format!("{name}-admin"), admin_labels),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            selector: Some(selector_labels(values, COMPONENT)),
            ports: Some(ports),
            publish_not_ready_addresses: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    });
    services
}

fn ingress(values: &Values) -> Ingress {
    let i = &values.ingress;
    let mut meta = object_meta(
        values,
        &values.name,
        labels(values, COMPONENT, "home-assistant"),
    );
    if !i.annotations.is_empty() {
        meta.annotations = Some(i.annotations.clone());
    }
    Ingress {
        metadata: meta,
        spec: Some(IngressSpec {
            ingress_class_name: i.class_name.clone(),
            tls: i.tls_secret.as_ref().map(|secret| {
                vec![IngressTLS {
                    hosts: Some(vec![i.host.clone()]),
                    secret_name: Some(secret.clone()),
                }]
            }),
            rules: Some(vec![IngressRule {
                host: Some(i.host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some("/".to_owned()),
                        path_type: "Prefix".to_owned(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: values.name.clone(),
                                port: Some(ServiceBackendPort {
                                    name: Some("http".to_owned()),
                                    ..Default::default()
                                }),
                            }),
                            ..Default::default()
                        },
                    }],
                }),
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}
