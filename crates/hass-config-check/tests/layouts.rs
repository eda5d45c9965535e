//! Config trees that need symlinks or special files, built in a temporary folder
//! (the corpus is committed to git, which should not carry symlinks), and checks on
//! the resolved value tree.

// Test helpers outside #[test] functions unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use hass_config_check::{Checked, Value, load};

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn lines(checked: &Checked) -> Vec<String> {
    checked
        .diagnostics
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// Kubernetes mounts a ConfigMap as `..<timestamp>/` holding the files, a `..data`
/// symlink to it, and one symlink per file through `..data`. Home Assistant opens
/// the visible names and resolves includes next to them; dot-entries are invisible
/// to `!include_dir_*`.
#[test]
fn configmap_layout_loads_through_data_symlinks() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "..2024_05_01_10_00_00.123/configuration.yaml",
        "automation: !include automations.yaml\nscript: !include_dir_merge_named scripts\nhttp:\n  api_password: !secret pw\n",
    );
    write(
        root,
        "..2024_05_01_10_00_00.123/automations.yaml",
        "- id: a\n",
    );
    write(
        root,
        "..2024_05_01_10_00_00.123/secrets.yaml",
        "pw: hunter2\n",
    );
    symlink("..2024_05_01_10_00_00.123", root.join("..data")).unwrap();
    for name in ["configuration.yaml", "automations.yaml", "secrets.yaml"] {
        symlink(format!("..data/{name}"), root.join(name)).unwrap();
    }
    // A second ConfigMap mounted as the scripts folder.
    write(
        root,
        "scripts/..2024_05_01/morning.yaml",
        "morning:\n  sequence: []\n",
    );
    symlink("..2024_05_01", root.join("scripts/..data")).unwrap();
    symlink("..data/morning.yaml", root.join("scripts/morning.yaml")).unwrap();

    let checked = load(root);
    assert_eq!(lines(&checked), Vec::<String>::new());
    let config = checked.config.unwrap();
    assert!(
        matches!(&config.get("automation").unwrap().value, Value::Seq(items) if items.len() == 1)
    );
    let scripts = config.get("script").unwrap().value.as_map().unwrap();
    assert_eq!(scripts.len(), 1);
    assert!(scripts.get("morning").is_some());
    // Files are named as Home Assistant opens them: through the visible symlinks.
    assert!(checked.files.contains(&root.join("configuration.yaml")));
    assert!(checked.files.contains(&root.join("scripts/morning.yaml")));
}

#[test]
fn configmap_swap_is_seen_on_the_next_load() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "..v1/configuration.yaml", "http: {}\n");
    write(root, "..v2/configuration.yaml", "http: [broken\n");
    symlink("..v1", root.join("..data")).unwrap();
    symlink("..data/configuration.yaml", root.join("configuration.yaml")).unwrap();
    assert!(!load(root).has_errors());
    // Kubernetes swaps by renaming a new symlink over `..data`.
    symlink("..v2", root.join("..data_tmp")).unwrap();
    fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    assert_eq!(
        lines(&load(root)),
        ["configuration.yaml:2:1: error: while parsing a flow sequence, expected ',' or ']'"]
    );
}

/// `os.walk` lists a symlinked folder but does not descend into it.
#[test]
fn include_dir_does_not_follow_directory_symlinks() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "configuration.yaml",
        "automation: !include_dir_merge_list automations\n",
    );
    write(root, "automations/a.yaml", "- id: a\n");
    write(root, "elsewhere/b.yaml", "- id: b\n");
    symlink("../elsewhere", root.join("automations/linked")).unwrap();
    symlink(".", root.join("automations/loop")).unwrap();
    let checked = load(root);
    assert_eq!(
        lines(&checked),
        [
            "configuration.yaml:1:13: warning: automations/linked is a symlink to a directory; Home Assistant's !include_dir_merge_list does not follow it",
            "configuration.yaml:1:13: warning: automations/loop is a symlink to a directory; Home Assistant's !include_dir_merge_list does not follow it",
        ]
    );
    let config = checked.config.unwrap();
    assert!(
        matches!(&config.get("automation").unwrap().value, Value::Seq(items) if items.len() == 1)
    );
}

#[test]
fn broken_and_looping_symlinks_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "configuration.yaml",
        "automation: !include_dir_list automations\nscript: !include loop_a.yaml\n",
    );
    fs::create_dir_all(root.join("automations")).unwrap();
    symlink("missing.yaml", root.join("automations/dangling.yaml")).unwrap();
    symlink("loop_b.yaml", root.join("loop_a.yaml")).unwrap();
    symlink("loop_a.yaml", root.join("loop_b.yaml")).unwrap();
    let checked = load(root);
    let lines = lines(&checked);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(
        lines[0],
        "configuration.yaml:1:13: error: Unable to read file automations/dangling.yaml: file not found"
    );
    assert!(
        lines[1].starts_with("configuration.yaml:2:9: error: Unable to read file loop_a.yaml: "),
        "{}",
        lines[1]
    );
}

#[test]
fn a_fifo_is_refused_instead_of_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "configuration.yaml",
        "automation: !include pipe.yaml\n",
    );
    let made = std::process::Command::new("mkfifo")
        .arg(root.join("pipe.yaml"))
        .status();
    if !made.is_ok_and(|s| s.success()) {
        // No mkfifo on this system: nothing to check.
        return;
    }
    assert_eq!(
        lines(&load(root)),
        ["configuration.yaml:1:13: error: Unable to read file pipe.yaml: not a regular file"]
    );
}

#[test]
fn secret_values_never_show_in_debug_or_diagnostics() {
    let case = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/include_deep");
    let checked = load(&case);
    let debug = format!("{checked:?}");
    for secret in ["from-l2", "admin", "from-root"] {
        assert!(!debug.contains(secret), "{secret} leaked into Debug output");
    }
    assert!(debug.contains("Secret(!secret deep_password)"));
    let config = checked.config.unwrap();
    // The nearest secrets.yaml wins: l1/l2/secrets.yaml over the root one.
    let rest = &config.get("rest").unwrap().value;
    let Value::Seq(items) = rest else {
        panic!("rest is {rest:?}")
    };
    let entry = items[0].value.as_map().unwrap();
    let Value::Secret(password) = &entry.get("password").unwrap().value else {
        panic!("not a secret")
    };
    assert_eq!(password.expose(), &Value::Str("from-l2".into()));
}

#[test]
fn yaml_1_1_values_resolve_like_pyyaml() {
    let case = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/yaml11_scalars");
    let config = load(&case).config.unwrap();
    let porch = config.get("input_boolean").unwrap().value.as_map().unwrap();
    let initial = |name: &str| {
        porch
            .get(name)
            .unwrap()
            .value
            .as_map()
            .unwrap()
            .get("initial")
            .unwrap()
            .value
            .clone()
    };
    assert_eq!(initial("porch"), Value::Bool(true));
    assert_eq!(initial("garage"), Value::Bool(false));
    let core = config.get("homeassistant").unwrap().value.as_map().unwrap();
    assert_eq!(core.get("elevation").unwrap().value, Value::Int(10));
    let custom = core.get("customize").unwrap().value.as_map().unwrap();
    let x = custom.get("sensor.x").unwrap().value.as_map().unwrap();
    assert_eq!(x.get("offset").unwrap().value, Value::Int(90));
    assert_eq!(x.get("ratio").unwrap().value, Value::Str("1e3".into()));
    assert_eq!(
        x.get("start").unwrap().value,
        Value::Timestamp("2024-01-31".into())
    );
}

#[test]
fn packages_merge_into_the_resolved_config() {
    let case = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/packages_merge");
    let config = load(&case).config.unwrap();
    let ids = |domain: &str| -> Vec<String> {
        let Value::Seq(items) = &config.get(domain).unwrap().value else {
            panic!("{domain} is not a list")
        };
        items
            .iter()
            .map(|i| {
                let map = i.value.as_map().unwrap();
                map.get("id")
                    .or(map.get("platform"))
                    .unwrap()
                    .value
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    // Packages in file-name order (garden, kitchen) after the main config.
    assert_eq!(ids("automation"), ["main", "garden", "kitchen"]);
    assert_eq!(ids("sensor"), ["time_date", "template"]);
    let booleans = config.get("input_boolean").unwrap().value.as_map().unwrap();
    assert_eq!(booleans.len(), 2);
    // `script:` was empty in the main config: `value or {}`, then merged.
    let scripts = config.get("script").unwrap().value.as_map().unwrap();
    assert!(scripts.get("kitchen_off").is_some());
    // A custom integration with a list is merged as a list.
    assert!(
        matches!(&config.get("my_custom_integration").unwrap().value, Value::Seq(items) if items.len() == 1)
    );
}

#[test]
fn comparing_domains_ignores_positions_and_key_order() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "configuration.yaml",
        "http:\n  a: 1\n  b: [x]\nlight: []\n",
    );
    let one = load(dir.path()).config.unwrap();
    write(
        dir.path(),
        "configuration.yaml",
        "# moved\nlight: []\n\nhttp: {b: [x], a: 1}\n",
    );
    let two = load(dir.path()).config.unwrap();
    assert_eq!(one.get("http"), two.get("http"));
    write(
        dir.path(),
        "configuration.yaml",
        "light: []\nhttp: {b: [y], a: 1}\n",
    );
    let three = load(dir.path()).config.unwrap();
    assert_ne!(one.get("http"), three.get("http"));
    assert_eq!(one.get("light"), three.get("light"));
}

#[test]
fn arbitrary_bytes_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let samples: [&[u8]; 8] = [
        b"\xff\xfe\x00\x01",
        b"a: [\n",
        b"? - a\n  - b\n: c\n",
        b"&a x: *a\n",
        b"a: !include\n",
        b"\t- a\n",
        b"a: 'b\n\n",
        b"%YAML 1.1\n%YAML 1.1\n---\na: 1\n",
    ];
    for sample in samples {
        fs::write(dir.path().join("configuration.yaml"), sample).unwrap();
        let checked = load(dir.path());
        assert!(
            checked.has_errors() || checked.config.is_some(),
            "{sample:?}"
        );
    }
}
