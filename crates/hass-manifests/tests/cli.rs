//! The binary: `render` to a folder and to stdout, `schema`, `defaults`.

// Helpers outside #[test] fns panic on setup failures too (clippy.toml only
// exempts test fns).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
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

/// Free-form maps of the values: the only objects open to any key, each
/// with string values (labels, annotations, digests by image name).
const OPEN_MAPS: &[&str] = &[
    "#/$defs/Ingress/properties/annotations",
    "#/$defs/Monitoring/properties/labels",
    "#/$defs/NetworkPolicyValues/properties/mqtt_client_labels",
    "#/$defs/SerialBridge/properties/client_labels",
    "#/$defs/ServiceValues/properties/annotations",
    "#/$defs/SidecarImages/properties/digests",
];

/// Walks one schema and what it contains: struct schemas (with
/// `properties`) go to `closed` or `open`, maps to `maps`.
fn walk_schema(
    root: &serde_json::Value,
    schema: &serde_json::Value,
    path: &str,
    seen: &mut Vec<String>,
    open: &mut Vec<String>,
    maps: &mut Vec<String>,
) {
    let Some(map) = schema.as_object() else {
        return;
    };
    seen.push(path.to_owned());
    if let Some(target) = map.get("$ref").and_then(|r| r.as_str()) {
        let pointer = target.strip_prefix('#').unwrap();
        assert!(
            root.pointer(pointer).is_some(),
            "{path}: $ref {target} resolves to nothing"
        );
    }
    let is_object = map.get("type").is_some_and(|t| {
        t == "object"
            || t.as_array()
                .is_some_and(|list| list.iter().any(|t| t == "object"))
    });
    let additional = map.get("additionalProperties");
    if let Some(properties) = map.get("properties").and_then(|p| p.as_object()) {
        if additional != Some(&serde_json::Value::Bool(false)) {
            open.push(format!("{path} ({additional:?})"));
        }
        for (name, property) in properties {
            walk_schema(
                root,
                property,
                &format!("{path}/properties/{name}"),
                seen,
                open,
                maps,
            );
        }
    } else if is_object {
        // A map: any key, but its values must have a type.
        let values = additional.unwrap_or(&serde_json::Value::Null);
        assert!(
            values.get("type").is_some() || values.get("$ref").is_some(),
            "{path}: a map whose values are untyped: {schema}"
        );
        maps.push(path.to_owned());
    }
    if let Some(values) = additional.filter(|a| a.is_object()) {
        walk_schema(
            root,
            values,
            &format!("{path}/additionalProperties"),
            seen,
            open,
            maps,
        );
    }
    if let Some(items) = map.get("items") {
        walk_schema(root, items, &format!("{path}/items"), seen, open, maps);
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        for (i, sub) in map
            .get(key)
            .and_then(|l| l.as_array())
            .into_iter()
            .flatten()
            .enumerate()
        {
            walk_schema(root, sub, &format!("{path}/{key}/{i}"), seen, open, maps);
        }
    }
    if let Some(defs) = map.get("$defs").and_then(|d| d.as_object()) {
        for (name, def) in defs {
            walk_schema(root, def, &format!("{path}/$defs/{name}"), seen, open, maps);
        }
    }
}

/// Unknown keys are errors (`deny_unknown_fields`), so every struct schema
/// says `additionalProperties: false` and an editor flags a typo as the
/// renderer would. The maps above stay open by design: their keys are the
/// user's (label names, annotation names, image names).
#[test]
fn schema_closes_every_struct_and_types_every_map() {
    let out = bin().arg("schema").output().unwrap();
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    let (mut seen, mut open, mut maps) = (Vec::new(), Vec::new(), Vec::new());
    walk_schema(&schema, &schema, "#", &mut seen, &mut open, &mut maps);
    assert!(
        open.is_empty(),
        "struct schemas that accept unknown keys: {open:#?}"
    );
    maps.sort();
    assert_eq!(maps, OPEN_MAPS);
    // The walk reached every definition, not only the root.
    let defs = schema["$defs"].as_object().unwrap();
    assert!(defs.len() > 25, "{}", defs.len());
    for name in defs.keys() {
        assert!(
            seen.contains(&format!("#/$defs/{name}")),
            "{name} not walked"
        );
    }
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

/// `kustomization.yaml`'s resources and images (name → (newTag, digest)).
type Kustomization = (Vec<String>, BTreeMap<String, (String, Option<String>)>);

fn read_kustomization(dir: &Path) -> Kustomization {
    let text = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    let parsed: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let resources = parsed["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_owned())
        .collect();
    let images = parsed["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|image| {
            (
                image["name"].as_str().unwrap().to_owned(),
                (
                    image["newTag"].as_str().unwrap().to_owned(),
                    image["digest"].as_str().map(str::to_owned),
                ),
            )
        })
        .collect();
    (resources, images)
}

/// Every container's `image:` in the rendered files, split at the tag.
fn images_in_files(dir: &Path, files: &[String]) -> BTreeSet<String> {
    let mut images = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let object: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        images.extend(hass_manifests::images::container_images(&object));
    }
    images
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
    let (files, images) = read_kustomization(dir.path());
    assert!(
        files.contains(&"statefulset-hass.yaml".to_owned()),
        "{files:?}"
    );
    for file in &files {
        assert!(dir.path().join(file).is_file(), "{file}");
    }
    // Every image the files use is listed, with its tag, for Renovate.
    let used = images_in_files(dir.path(), &files);
    let listed: BTreeSet<String> = images
        .iter()
        .map(|(name, (tag, _))| format!("{name}:{tag}"))
        .collect();
    assert_eq!(listed, used);
    assert!(
        used.iter()
            .any(|i| i.starts_with("ghcr.io/hass-sidecars/hass-broker:")),
        "{used:?}"
    );
    let out = bin()
        .args(["render", "-f", values, "--stdout"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stream = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stream.matches("---\n").count(), files.len());
    // Every flag also from HASS_MANIFESTS_<FLAG>, a subcommand's included.
    let out = bin()
        .args(["render"])
        .env("HASS_MANIFESTS_VALUES", values)
        .env("HASS_MANIFESTS_STDOUT", "true")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), stream);
}

const DIGEST_A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const DIGEST_B: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn an_images_lock_pins_every_sidecar_by_digest_and_renders_the_same_twice() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("images.lock");
    let mut text = String::from("# written by images/build --push\n");
    for binary in hass_manifests::values::SIDECAR_BINARIES {
        let digest = if binary == "hass-broker" {
            DIGEST_B
        } else {
            DIGEST_A
        };
        text.push_str(&format!(
            "{binary} 127.0.0.1:5000/hass-sidecars/{binary}:0.2.0@{digest}\n"
        ));
    }
    std::fs::write(&lock, text).unwrap();
    let values = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/everything.values.yaml"
    );
    let render = |out: &str| {
        let status = bin()
            .args(["render", "-f", values, "--images-lock"])
            .arg(&lock)
            .arg("-o")
            .arg(dir.path().join(out))
            .status()
            .unwrap();
        assert!(status.success());
        dir.path().join(out)
    };
    let first = render("first");
    let (files, images) = read_kustomization(&first);
    let used = images_in_files(&first, &files);
    let sidecars: Vec<&String> = used
        .iter()
        .filter(|i| i.contains("/hass-sidecars/"))
        .collect();
    assert_eq!(sidecars.len(), 5, "{used:?}");
    for image in sidecars {
        let (name, digest) = image.split_once(":0.2.0@").unwrap();
        assert!(
            name.starts_with("127.0.0.1:5000/hass-sidecars/hass-"),
            "{image}"
        );
        let expected = if name.ends_with("/hass-broker") {
            DIGEST_B
        } else {
            DIGEST_A
        };
        assert_eq!(digest, expected, "{image}");
        assert_eq!(
            images[name],
            ("0.2.0".to_owned(), Some(expected.to_owned())),
            "{name}"
        );
    }
    let second = render("second");
    for file in files
        .iter()
        .map(String::as_str)
        .chain(["kustomization.yaml"])
    {
        assert_eq!(
            std::fs::read(first.join(file)).unwrap(),
            std::fs::read(second.join(file)).unwrap(),
            "{file}"
        );
    }
}

#[test]
fn a_bad_images_lock_exits_2_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("images.lock");
    std::fs::write(
        &lock,
        format!(
            "hass-broker r/hass-broker:1@{DIGEST_A}\nhass-exporter r/hass-exporter:1@sha256:00\n"
        ),
    )
    .unwrap();
    let out = bin()
        .args(["render", "--stdout", "--images-lock"])
        .arg(&lock)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "images.lock: line 2: hass-exporter: the digest is not sha256:<64 hex digits>"
        ),
        "{stderr}"
    );
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

/// The tree pushed as Flux's OCI artifact and read back with skopeo: the
/// layer holds exactly the files `-o` wrote, the media types are Flux's, and
/// pushing the same tree again gives the same digest.
#[test]
fn render_push_stores_the_tree_as_the_artifact_flux_reads() {
    let registry = hass_test_support::TempRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let values = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/homelab.values.yaml"
    );
    let target = format!("oci://{}/hass-sidecars/manifests:v1", registry.address);
    let push = |out: &str| {
        let output = bin()
            .args(["render", "-f", values, "--push", &target, "-o"])
            .arg(dir.path().join(out))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{stderr}");
        stderr
            .trim()
            .rsplit_once('@')
            .map(|(_, digest)| digest.to_owned())
            .unwrap_or_else(|| panic!("{stderr}"))
    };
    let digest = push("first");
    assert_eq!(digest, registry.digest("hass-sidecars/manifests:v1"));

    let layout = registry.pull_layout("hass-sidecars/manifests:v1");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    assert_eq!(manifest_digest, digest);
    let blob = |digest: &str| hass_test_support::registry::layout_blob(&layout, digest);
    let manifest: serde_json::Value = serde_json::from_slice(&blob(manifest_digest)).unwrap();
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.cncf.flux.config.v1+json"
    );
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(
        layers[0]["mediaType"],
        "application/vnd.cncf.flux.content.v1.tar+gzip"
    );
    let layer = blob(layers[0]["digest"].as_str().unwrap());
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(layer.as_slice()));
    let mut pulled = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().display().to_string();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
        pulled.insert(name, bytes);
    }
    let written: BTreeMap<String, Vec<u8>> = std::fs::read_dir(dir.path().join("first"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    assert_eq!(pulled, written);
    assert!(pulled.contains_key("kustomization.yaml"));

    // Unchanged values: the same artifact, nothing for Flux to apply.
    assert_eq!(push("second"), digest);
}

#[test]
fn render_push_refuses_a_target_without_a_tag() {
    let out = bin()
        .args([
            "render",
            "--push",
            "oci://127.0.0.1:1/hass-sidecars/manifests",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is not oci://REGISTRY/REPOSITORY:TAG"),
        "{stderr}"
    );
}
