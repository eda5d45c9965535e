//! What changed between two valid configs, per top-level domain, and a
//! fingerprint of the files a config was read from.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use crate::packages::domain_key;
use crate::value::{KeyId, Mapping, Node, Value};

/// The core domain; its `packages:` key is merged into the other domains, so it
/// is left out when comparing `homeassistant:` itself.
pub const CORE: &str = "homeassistant";

/// The domains whose resolved config differs between `old` and `new`, packages
/// included (they are merged into the domains before this sees them). Keys such
/// as `automation manual:` belong to their domain (`automation`). Positions do
/// not count: moving a block between files changes nothing Home Assistant sees.
pub fn changed_domains(old: &Mapping, new: &Mapping) -> BTreeSet<String> {
    let old = by_domain(old);
    let new = by_domain(new);
    old.keys()
        .chain(new.keys())
        .filter(|domain| old.get(*domain) != new.get(*domain))
        .cloned()
        .collect()
}

/// The config of each domain: its top-level keys (`automation`, `automation
/// manual`) and their values.
fn by_domain(config: &Mapping) -> BTreeMap<String, BTreeMap<String, Node>> {
    let mut domains: BTreeMap<String, BTreeMap<String, Node>> = BTreeMap::new();
    for (key, value) in config.iter() {
        let text = key.value.key_text();
        let domain = domain_key(&key.value).unwrap_or(&text).to_owned();
        let mut value = value.clone();
        if domain == CORE
            && let Value::Map(core) = &mut value.value
        {
            core.remove(&KeyId::Str("packages".to_owned()));
        }
        domains.entry(domain).or_default().insert(text, value);
    }
    domains
}

/// A fingerprint of the include graph as it is on disk now: the content of
/// every file the loader read (and of `configuration.yaml`, which it may have
/// failed to read), and the entries of every folder an `!include_dir_*` listed.
/// Equal fingerprints mean a new load would read the same bytes.
pub fn graph_fingerprint(root: &Path, files: &[PathBuf], dirs: &[PathBuf]) -> u64 {
    let mut hasher = DefaultHasher::new();
    let mut files: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let config_file = root.join(crate::CONFIG_FILE);
    files.push(&config_file);
    files.sort();
    files.dedup();
    for file in files {
        file.hash(&mut hasher);
        match fs::read(file) {
            Ok(bytes) => bytes.hash(&mut hasher),
            Err(e) => e.kind().to_string().hash(&mut hasher),
        }
    }
    let mut dirs: Vec<&PathBuf> = dirs.iter().collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        dir.hash(&mut hasher);
        let mut names: Vec<(std::ffi::OsString, bool)> = fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| (e.file_name(), e.file_type().is_ok_and(|t| t.is_dir())))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names.hash(&mut hasher);
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    // Test helpers unwrap: a failure is a test failure.
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn config(files: &[(&str, &str)]) -> Mapping {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
        let checked = crate::load(dir.path());
        assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
        checked.config.unwrap()
    }

    fn names(set: BTreeSet<String>) -> Vec<String> {
        set.into_iter().collect()
    }

    #[test]
    fn only_the_domain_that_changed() {
        let old = config(&[(
            "configuration.yaml",
            "automation: []\nscript:\n  a:\n    sequence: []\nhomeassistant:\n  name: Home\n",
        )]);
        let new = config(&[(
            "configuration.yaml",
            "automation: []\nscript:\n  a:\n    sequence: [{delay: 1}]\nhomeassistant:\n  name: Home\n",
        )]);
        assert_eq!(names(changed_domains(&old, &new)), ["script"]);
        assert!(changed_domains(&old, &old).is_empty());
    }

    #[test]
    fn moving_config_between_files_is_no_change() {
        let old = config(&[(
            "configuration.yaml",
            "script:\n  a:\n    sequence: []\nsensor: []\n",
        )]);
        let new = config(&[
            (
                "configuration.yaml",
                "sensor: []\n\n\nscript: !include scripts.yaml\n",
            ),
            ("scripts.yaml", "a:\n  sequence: []\n"),
        ]);
        assert!(changed_domains(&old, &new).is_empty());
    }

    #[test]
    fn packages_count_for_their_domain_not_for_the_core() {
        let old = config(&[
            (
                "configuration.yaml",
                "homeassistant:\n  packages: !include_dir_named packages\nautomation: []\n",
            ),
            (
                "packages/p.yaml",
                "automation:\n  - id: a\ninput_boolean:\n  x: {}\n",
            ),
        ]);
        let new = config(&[
            (
                "configuration.yaml",
                "homeassistant:\n  packages: !include_dir_named packages\nautomation: []\n",
            ),
            (
                "packages/p.yaml",
                "automation:\n  - id: b\ninput_boolean:\n  x: {}\n",
            ),
        ]);
        assert_eq!(names(changed_domains(&old, &new)), ["automation"]);
    }

    #[test]
    fn added_removed_and_labelled_keys() {
        let old = config(&[("configuration.yaml", "automation: []\n")]);
        let new = config(&[(
            "configuration.yaml",
            "automation: []\nautomation manual:\n  - id: m\nscene: []\n",
        )]);
        assert_eq!(names(changed_domains(&old, &new)), ["automation", "scene"]);
        assert_eq!(names(changed_domains(&new, &old)), ["automation", "scene"]);
    }

    #[test]
    fn secrets_changes_count() {
        let old = config(&[
            ("configuration.yaml", "mqtt:\n  password: !secret pw\n"),
            ("secrets.yaml", "pw: one\n"),
        ]);
        let new = config(&[
            ("configuration.yaml", "mqtt:\n  password: !secret pw\n"),
            ("secrets.yaml", "pw: two\n"),
        ]);
        assert_eq!(names(changed_domains(&old, &new)), ["mqtt"]);
    }

    #[test]
    fn fingerprint_follows_content_and_listings() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(root.join("configuration.yaml"), "a: !include_dir_list d\n").unwrap();
        fs::create_dir(root.join("d")).unwrap();
        fs::write(root.join("d/x.yaml"), "1\n").unwrap();
        let checked = crate::load(root);
        let print = || graph_fingerprint(root, &checked.files, &checked.dirs);
        let first = print();
        assert_eq!(first, print());
        fs::write(root.join("d/x.yaml"), "2\n").unwrap();
        let second = print();
        assert_ne!(first, second);
        fs::write(root.join("d/y.yaml"), "3\n").unwrap();
        assert_ne!(second, print());
    }
}
