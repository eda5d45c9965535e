//! The `hass-config-watcher check` binary: output formats and exit codes.

// Test helpers outside #[test] functions unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn case(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../hass-config-check/tests/corpus")
        .join(name)
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hass-config-watcher"))
        .args(args)
        .output()
        .unwrap()
}

fn check(case_name: &str, extra: &[&str]) -> Output {
    let dir = case(case_name);
    let mut args = vec!["check", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn valid_config_exits_0_silently() {
    let out = check("valid_minimal", &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn warnings_are_printed_but_exit_0() {
    let out = check("include_dir_merge_list", &[]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "automations/two.yaml:1:1: warning: Home Assistant ignores this file: \
         !include_dir_merge_list only merges files that contain a list, this one contains a mapping\n"
    );
}

#[test]
fn errors_exit_1_with_one_line_each() {
    let out = check("include_missing", &[]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 3);
    assert!(stdout.starts_with(
        "configuration.yaml:1:13: error: Unable to read file automations.yaml: file not found\n"
    ));
}

#[test]
fn json_output_lists_every_diagnostic() {
    let out = check("include_missing", &["--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["valid"], false);
    assert_eq!(report["errors"], 3);
    assert_eq!(report["warnings"], 0);
    let first = &report["diagnostics"][0];
    assert_eq!(first["file"], "configuration.yaml");
    assert_eq!(first["line"], 1);
    assert_eq!(first["column"], 13);
    assert_eq!(first["severity"], "error");
    assert_eq!(
        first["message"],
        "Unable to read file automations.yaml: file not found"
    );

    let out = check("valid_minimal", &["--format", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["valid"], true);
    assert_eq!(report["diagnostics"], serde_json::json!([]));
}

#[test]
fn bad_usage_exits_2() {
    assert_eq!(run(&[]).status.code(), Some(2));
    assert_eq!(run(&["frobnicate"]).status.code(), Some(2));
    let dir = case("valid_minimal");
    let dir = dir.to_str().unwrap();
    assert_eq!(
        run(&["check", dir, "--format", "xml"]).status.code(),
        Some(2)
    );
    assert_eq!(run(&["check", dir, "extra"]).status.code(), Some(2));
}

#[test]
fn missing_folder_is_an_error_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let out = run(&["check", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "configuration.yaml:1:1: error: File configuration.yaml not found.\n"
    );
}

/// The README's promise for every flag, subcommands' included: `--format`
/// from `HASS_CONFIG_WATCHER_FORMAT`, and the flag wins over it.
#[test]
fn subcommand_flags_fall_back_to_env() {
    let dir = case("valid_minimal");
    let out = Command::new(env!("CARGO_BIN_EXE_hass-config-watcher"))
        .args(["check", dir.to_str().unwrap()])
        .env("HASS_CONFIG_WATCHER_FORMAT", "json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["valid"], true);

    let out = Command::new(env!("CARGO_BIN_EXE_hass-config-watcher"))
        .args(["check", dir.to_str().unwrap(), "--format", "text"])
        .env("HASS_CONFIG_WATCHER_FORMAT", "json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty(), "text on a valid config is silent");
}
