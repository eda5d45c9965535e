//! The config watcher sidecar keeps git history and writes backups to the
//! backup volume, with `/config` read-only: the rendered watcher config is
//! read with the watcher's own config type, and every path it writes to must
//! be on a writable, persistent mount of the watcher container.

// Helpers outside #[test] fns panic on setup failures too (clippy.toml only
// exempts test fns).
#![allow(clippy::unwrap_used)]

use std::path::Path;

use hass_config_watcher::WatcherConfig;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, VolumeMount};

struct Rendered {
    values: hass_manifests::Values,
    sts: StatefulSet,
    /// `config-watcher.yaml` of the watcher's ConfigMap.
    config_text: String,
}

fn render(values: hass_manifests::Values) -> Rendered {
    let ms = hass_manifests::render(&values).unwrap();
    let find = |kind: &str, name: &str| {
        ms.iter()
            .find(|m| m.kind == kind && m.name == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    let sts: StatefulSet = serde_saphyr::from_str(&find("StatefulSet", &values.name).yaml).unwrap();
    let cm: ConfigMap =
        serde_saphyr::from_str(&find("ConfigMap", &format!("{}-config-watcher", values.name)).yaml)
            .unwrap();
    let config_text = cm.data.unwrap()["config-watcher.yaml"].clone();
    Rendered {
        values,
        sts,
        config_text,
    }
}

fn example(name: &str) -> Rendered {
    let path = format!(
        "{}/../../examples/{name}.values.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    render(hass_manifests::values::load(Path::new(&path)).unwrap())
}

fn from_text(text: &str) -> Rendered {
    render(hass_manifests::values::parse(text).unwrap())
}

impl Rendered {
    fn container(&self, name: &str) -> &Container {
        let pod = self
            .sts
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap();
        pod.containers
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no container {name}"))
    }

    fn watcher(&self) -> &Container {
        self.container("config-watcher")
    }

    /// The config as the watcher binary reads it.
    fn watcher_config(&self) -> WatcherConfig {
        hass_runtime::config::parse_yaml(&self.config_text)
            .unwrap_or_else(|e| panic!("the watcher rejects its config: {e}\n{}", self.config_text))
    }

    fn claim_templates(&self) -> Vec<String> {
        self.sts
            .spec
            .as_ref()
            .unwrap()
            .volume_claim_templates
            .iter()
            .flatten()
            .map(|t| t.metadata.name.clone().unwrap())
            .collect()
    }

    /// The deepest mount of `container` holding `path`.
    fn mount_holding<'a>(&self, container: &'a Container, path: &Path) -> &'a VolumeMount {
        container
            .volume_mounts
            .iter()
            .flatten()
            .filter(|m| path.starts_with(&m.mount_path))
            .max_by_key(|m| m.mount_path.len())
            .unwrap_or_else(|| {
                panic!(
                    "nothing of {} is mounted at {}",
                    container.name,
                    path.display()
                )
            })
    }

    /// Asserts `path` is on a writable mount of the watcher whose volume is a
    /// claim of the StatefulSet (it survives restarts); returns the volume.
    fn assert_writable_and_persistent(&self, path: &Path) -> String {
        let m = self.mount_holding(self.watcher(), path);
        assert_eq!(
            m.read_only,
            Some(false),
            "{} is on {} which is read-only in the watcher",
            path.display(),
            m.mount_path
        );
        assert!(
            self.claim_templates().contains(&m.name),
            "{} is on volume {}, which is not persistent: {:?}",
            path.display(),
            m.name,
            self.claim_templates()
        );
        m.name.clone()
    }
}

#[test]
fn history_and_backups_go_to_writable_persistent_volumes_with_config_read_only() {
    for name in ["homelab", "everything"] {
        let r = example(name);
        assert!(r.values.home_assistant.backup.enabled, "{name}");
        let config = r.watcher_config();

        let config_mount = r.mount_holding(r.watcher(), Path::new("/config/configuration.yaml"));
        assert_eq!(config_mount.mount_path, "/config");
        // Writable only for a Git source's revisions.
        let source = r.values.config_watcher.source.enabled;
        assert_eq!(config_mount.read_only, Some(!source), "{name}");

        // History: a repository outside /config, on a volume of its own.
        let history = config
            .history
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: history is off:\n{}", r.config_text));
        let repo = history.repo.as_ref().unwrap_or_else(|| {
            panic!(
                "{name}: history would write /config/.git:\n{}",
                r.config_text
            )
        });
        assert!(!repo.starts_with("/config"), "{name}: {}", repo.display());
        let history_volume = r.assert_writable_and_persistent(repo);
        assert_eq!(
            history.include_secrets,
            r.values.config_watcher.history.include_secrets
        );

        // Backups: on the volume Home Assistant lists backups from.
        let backup_dir = config
            .backup_dir
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: no backup_dir:\n{}", r.config_text));
        let backup_volume = r.assert_writable_and_persistent(backup_dir);
        assert_ne!(backup_volume, history_volume);
        let ha_backups = r.mount_holding(
            r.container("home-assistant"),
            Path::new("/config/backups/x.tar"),
        );
        assert_eq!(ha_backups.mount_path, "/config/backups", "{name}");
        assert_eq!(ha_backups.name, backup_volume, "{name}");
        let interval = config
            .backup_interval
            .unwrap_or_else(|| panic!("{name}: backups only on demand:\n{}", r.config_text));
        let want = hass_runtime::config::duration::deserialize(serde_json::Value::String(
            r.values.config_watcher.backups.interval.clone(),
        ))
        .unwrap();
        assert_eq!(interval, want, "{name}");
        assert_eq!(
            config.backup_keep, r.values.config_watcher.backups.keep as usize,
            "{name}"
        );
    }
}

#[test]
fn the_watcher_writes_nowhere_once_history_and_backups_are_off() {
    let r = from_text(
        "home_assistant:\n  backup:\n    enabled: true\n\
         config_watcher:\n  history:\n    enabled: false\n  backups:\n    enabled: false\n",
    );
    let config = r.watcher_config();
    assert!(config.history.is_none(), "{}", r.config_text);
    assert!(config.backup_interval.is_none(), "{}", r.config_text);
    assert!(config.backup_dir.is_none(), "{}", r.config_text);
    assert!(!r.claim_templates().contains(&"config-history".to_owned()));
    for m in r.watcher().volume_mounts.iter().flatten() {
        assert_eq!(m.read_only, Some(true), "{} is writable", m.mount_path);
    }
}

#[test]
fn without_a_backup_volume_history_stays_on_and_no_backup_is_scheduled() {
    // The defaults: no backup volume, so the watcher has nowhere to put backups.
    let r = from_text("");
    let config = r.watcher_config();
    let repo = config.history.as_ref().unwrap().repo.clone().unwrap();
    r.assert_writable_and_persistent(&repo);
    assert!(config.backup_interval.is_none(), "{}", r.config_text);
    assert!(config.backup_dir.is_none(), "{}", r.config_text);
    assert!(
        r.watcher()
            .volume_mounts
            .iter()
            .flatten()
            .all(|m| m.name != "backup")
    );
}

#[test]
fn a_backup_interval_the_watcher_cannot_parse_is_a_values_error() {
    let err = hass_manifests::values::parse("config_watcher:\n  backups:\n    interval: daily\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("config_watcher.backups.interval"), "{err}");
    assert!(err.contains("daily"), "{err}");
}

/// With a Git source the pod runs hass-git-mirror: it alone holds the Git
/// token and writes the mirror; the watcher reads the mirror, never the
/// token, and writes /config; each reads its config with its own type.
#[test]
fn a_git_source_adds_the_mirror_and_makes_config_writable_for_the_watcher_only() {
    let r = from_text(
        "config_watcher:\n  source:\n    enabled: true\n    git: https://git.example.com/me/ha-config.git\n\
         \x20   path: home-assistant\n    token_secret: { name: ha-config-git, key: token }\n",
    );
    let config = r.watcher_config();
    let source = config
        .source
        .as_ref()
        .unwrap_or_else(|| panic!("no source:\n{}", r.config_text));
    assert_eq!(source.git, "file:///var/lib/hass-git-mirror/repo.git");
    assert_eq!(source.path, Path::new("home-assistant"));
    assert!(source.rollback);

    let watcher = r.watcher();
    let config_mount = r.mount_holding(watcher, Path::new("/config/configuration.yaml"));
    assert_eq!(config_mount.read_only, Some(false));
    let repo = r.mount_holding(watcher, Path::new("/var/lib/hass-git-mirror/repo.git"));
    assert_eq!(
        (repo.name.as_str(), repo.read_only),
        ("git-mirror", Some(true))
    );
    let mounts = |c: &Container| -> Vec<String> {
        c.volume_mounts
            .iter()
            .flatten()
            .map(|m| m.name.clone())
            .collect()
    };
    assert!(!mounts(watcher).contains(&"git-token".to_owned()));

    let mirror = r.container("git-mirror");
    assert!(mounts(mirror).contains(&"git-token".to_owned()));
    assert!(
        !mounts(mirror).contains(&"config".to_owned()),
        "the mirror never sees /config"
    );
    let written = r.mount_holding(mirror, Path::new("/var/lib/hass-git-mirror/repo.git"));
    assert_eq!(
        (written.name.as_str(), written.read_only),
        ("git-mirror", Some(false))
    );

    let ms = hass_manifests::render(&r.values).unwrap();
    let cm = ms
        .iter()
        .find(|m| m.kind == "ConfigMap" && m.name == format!("{}-git-mirror", r.values.name))
        .unwrap();
    let cm: ConfigMap = serde_saphyr::from_str(&cm.yaml).unwrap();
    let text = cm.data.unwrap()["git-mirror.yaml"].clone();
    let mirror_config: hass_git_mirror::MirrorConfig = hass_runtime::config::parse_yaml(&text)
        .unwrap_or_else(|e| panic!("the mirror rejects its config: {e}\n{text}"));
    assert_eq!(
        mirror_config.remote,
        "https://git.example.com/me/ha-config.git"
    );
    assert_eq!(
        mirror_config.mirror,
        Path::new("/var/lib/hass-git-mirror/repo.git")
    );
    assert!(mirror_config.token.is_some(), "{text}");
}

#[test]
fn without_a_git_source_config_stays_read_only_and_there_is_no_mirror() {
    let r = example("homelab");
    let config_mount = r.mount_holding(r.watcher(), Path::new("/config/configuration.yaml"));
    assert_eq!(config_mount.read_only, Some(true));
    let pod = r.sts.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert!(!pod.containers.iter().any(|c| c.name == "git-mirror"));
}

#[test]
fn putting_back_local_edits_makes_config_writable_for_the_watcher() {
    let r = from_text(
        "home_assistant:\n  token_secret: { name: ha-token, key: token }\n\
         config_watcher:\n  rollback_local_edits: true\n",
    );
    assert!(r.watcher_config().rollback_local_edits, "{}", r.config_text);
    let config_mount = r.mount_holding(r.watcher(), Path::new("/config/configuration.yaml"));
    assert_eq!(config_mount.read_only, Some(false));
    let pod = r.sts.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert!(!pod.containers.iter().any(|c| c.name == "git-mirror"));
}
