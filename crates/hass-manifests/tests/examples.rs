//! The checked-in examples: rendered output up to date, valid for Kubernetes
//! 1.33 and 1.37, custom resources valid for their CRDs, and no checkov
//! finding without an annotated reason. The validators are the real tools
//! (`pip install -r tests/requirements.txt`); a missing one fails the test
//! with that hint instead of skipping it.

// Helpers outside #[test] fns panic on setup failures too (clippy.toml only
// exempts test fns).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

const EXAMPLES: &[&str] = &["minimal", "homelab", "everything"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn rendered(example: &str) -> Vec<hass_manifests::Manifest> {
    let path = repo().join(format!("examples/{example}.values.yaml"));
    let values = hass_manifests::values::load(&path).unwrap();
    hass_manifests::render(&values).unwrap()
}

/// Renders every example into a fresh temporary folder per example.
fn render_all() -> (tempfile::TempDir, Vec<PathBuf>) {
    // Not a dot-folder (tempfile's default): checkov skips those.
    let dir = tempfile::Builder::new()
        .prefix("hass-manifests-")
        .tempdir()
        .unwrap();
    let mut files = Vec::new();
    for example in EXAMPLES {
        let out = dir.path().join(example);
        let manifests = rendered(example);
        hass_manifests::output::write_dir(&out, &manifests).unwrap();
        files.extend(manifests.iter().map(|m| out.join(m.file_name())));
    }
    (dir, files)
}

fn tool(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}); install it: pip install -r tests/requirements.txt")
        })
}

fn is_custom(path: &Path) -> bool {
    let text = std::fs::read_to_string(path).unwrap();
    ["monitoring.coreos.com/", "cilium.io/"]
        .iter()
        .any(|group| text.contains(&format!("apiVersion: {group}")))
}

#[test]
fn checked_in_manifests_match_a_fresh_render() {
    for example in EXAMPLES {
        let dir = repo().join("manifests").join(example);
        let manifests = rendered(example);
        let mut expected: Vec<(String, String)> = manifests
            .iter()
            .map(|m| {
                (
                    m.file_name(),
                    format!("{}{}", hass_manifests::output::HEADER, m.yaml),
                )
            })
            .collect();
        expected.push((
            "kustomization.yaml".to_owned(),
            hass_manifests::render::kustomization(&manifests),
        ));
        expected.sort();
        let mut actual: Vec<(String, String)> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| {
                let entry = entry.unwrap();
                let name = entry.file_name().to_string_lossy().into_owned();
                (name, std::fs::read_to_string(entry.path()).unwrap())
            })
            .collect();
        actual.sort();
        let names = |list: &[(String, String)]| -> Vec<String> {
            list.iter().map(|(n, _)| n.clone()).collect()
        };
        assert_eq!(
            names(&actual),
            names(&expected),
            "manifests/{example} lists other files than a fresh render; run \
             `cargo run --manifest-path crates/hass-manifests/Cargo.toml -- render -f examples/{example}.values.yaml -o manifests/{example}`"
        );
        for ((name, got), (_, want)) in actual.iter().zip(&expected) {
            assert!(
                got == want,
                "manifests/{example}/{name} differs from a fresh render; re-render it"
            );
        }
    }
}

#[test]
fn every_example_passes_strict_schema_validation_for_1_33_and_1_37() {
    let (_dir, files) = render_all();
    let builtin: Vec<String> = files
        .iter()
        .filter(|f| !is_custom(f))
        .map(|f| f.display().to_string())
        .collect();
    assert!(builtin.len() > 30, "{builtin:?}");
    for version in ["1.33.0", "1.37.0"] {
        let mut args = vec!["--strict", "--kubernetes-version", version];
        args.extend(builtin.iter().map(String::as_str));
        let out = tool("kubernetes-validate", &args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "kubernetes {version}:\n{text}");
        let passed = text.matches(" passed for resource ").count();
        assert_eq!(passed, builtin.len(), "kubernetes {version}:\n{text}");
    }
}

#[test]
fn custom_resources_validate_against_their_crds() {
    let (_dir, files) = render_all();
    let custom: Vec<String> = files
        .iter()
        .filter(|f| is_custom(f))
        .map(|f| f.display().to_string())
        .collect();
    // The CRDs' own schemas (Cilium, prometheus-operator), kept as fixtures.
    let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/crds");
    assert!(crds.is_dir(), "{} is missing", crds.display());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/validate_crds.py");
    let mut args = vec![script.display().to_string(), crds.display().to_string()];
    args.extend(custom.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = tool("python3", &args);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    // ServiceMonitor×2, PrometheusRule, Cilium×4 (homelab); PodMonitor×2,
    // PrometheusRule, Cilium×4 (everything).
    assert!(
        text.contains(&format!(
            "checked {} custom resources, 0 errors",
            custom.len()
        )),
        "{text}"
    );
    for kind in [
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
        "CiliumNetworkPolicy",
    ] {
        assert!(
            custom.iter().any(|f| std::fs::read_to_string(f)
                .unwrap()
                .contains(&format!("kind: {kind}\n"))),
            "no example renders a {kind}"
        );
    }
}

#[test]
fn checkov_finds_nothing_without_an_annotated_reason() {
    let (dir, _files) = render_all();
    for example in EXAMPLES {
        let path = dir.path().join(example);
        let out = tool(
            "checkov",
            &[
                "--framework",
                "kubernetes",
                "--directory",
                &path.display().to_string(),
                "--skip-download",
                "--output",
                "json",
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let report: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{example}: checkov printed no JSON ({e}): {text}"));
        let results = &report["results"];
        let failed = results["failed_checks"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let failures: Vec<String> = failed
            .iter()
            .map(|f| format!("{} {} {}", f["check_id"], f["resource"], f["check_name"]))
            .collect();
        assert!(
            failures.is_empty(),
            "{example}: checkov failures:\n{}",
            failures.join("\n")
        );
        assert!(
            report["summary"]["passed"].as_u64().unwrap_or(0) > 50,
            "{example}: {}",
            report["summary"]
        );
        for skipped in results["skipped_checks"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let reason = skipped["check_result"]["suppress_comment"]
                .as_str()
                .unwrap_or("");
            assert!(
                reason.len() > 20,
                "{example}: {} skipped on {} without a reason",
                skipped["check_id"],
                skipped["resource"]
            );
        }
    }
}
