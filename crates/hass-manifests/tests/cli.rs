//! The binary: `render` to a folder and to stdout, `schema`, `defaults`.

// Helpers outside #[test] fns panic on setup failures too (clippy.toml only
// exempts test fns).
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hass-manifests"))
}

#[test]
fn defaults_file_parses_back_to_the_defaults() {
    let out = bin().arg("defaults").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("# Instance name"), "{text}");
    let values = hass_manifests::values::parse(&text).unwrap();
    assert_eq!(values, hass_manifests::Values::default());
}

#[test]
fn schema_is_json_schema_and_closes_every_object() {
    let out = bin().arg("schema").output().unwrap();
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(schema["additionalProperties"], false);
    assert!(
        schema["properties"]["home_assistant"].is_object(),
        "{schema}"
    );
    let device = &schema["$defs"]["Device"];
    let required: Vec<&str> = device["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(required, ["name", "node", "path"]);
}

#[test]
fn render_writes_a_kustomization_and_stdout_the_same_objects() {
    let dir = tempfile::tempdir().unwrap();
    let values = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/homelab.values.yaml"
    );
    let status = bin()
        .args(["render", "-f", values, "-o"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let kustomization = std::fs::read_to_string(dir.path().join("kustomization.yaml")).unwrap();
    let files: Vec<&str> = kustomization
        .lines()
        .filter_map(|l| l.strip_prefix("  - "))
        .collect();
    assert!(files.contains(&"statefulset-hass.yaml"), "{kustomization}");
    for file in &files {
        assert!(dir.path().join(file).is_file(), "{file}");
    }
    let out = bin()
        .args(["render", "-f", values, "--stdout"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stream = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stream.matches("---\n").count(), files.len());
}

#[test]
fn bad_values_exit_2_with_the_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("values.yaml");
    std::fs::write(&path, "broker:\n  enabeld: true\n").unwrap();
    let out = bin()
        .args(["render", "--stdout", "-f"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("values.yaml:2:3: broker.enabeld: unknown field `enabeld`"),
        "{err}"
    );
}

/// The one block a user adds to configuration.yaml is in the defaults file,
/// and the folder it includes is where the pod mounts the package.
#[test]
fn defaults_file_shows_the_package_include_for_configuration_yaml() {
    let out = bin().arg("defaults").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("#   homeassistant:\n#     packages: !include_dir_named packages\n"),
        "{text}"
    );

    // The defaults need no package (SQLite, no Ingress); with PostgreSQL one is mounted.
    let mut values = hass_manifests::values::parse(&text).unwrap();
    values.postgres.mode = hass_manifests::values::PostgresMode::Internal;
    let ms = hass_manifests::render(&values).unwrap();
    let sts = ms.iter().find(|m| m.kind == "StatefulSet").unwrap();
    let sts: k8s_openapi::api::apps::v1::StatefulSet = serde_saphyr::from_str(&sts.yaml).unwrap();
    let pod = sts.spec.unwrap().template.spec.unwrap();
    let ha = pod
        .containers
        .iter()
        .find(|c| c.name == "home-assistant")
        .unwrap();
    let package = ha
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "package")
        .unwrap();
    // `!include_dir_named packages` is relative to /config and reads one
    // folder level below it.
    let folder = std::path::Path::new(&package.mount_path).parent().unwrap();
    assert_eq!(folder, std::path::Path::new("/config/packages"));
}
