//! Runs every config tree under `tests/corpus/<case>/` through the loader and compares
//! its diagnostics with `<case>/expected.txt`: `#` lines there say which Home
//! Assistant rule the case pins down, every other line is one expected diagnostic.
//!
//! After a deliberate change, `UPDATE_EXPECT=1 cargo test --test corpus` rewrites the
//! diagnostic lines (keeping the comments); review the diff like any other change.

// Test helpers outside #[test] functions unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};

fn cases() -> Vec<PathBuf> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut cases: Vec<PathBuf> = fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    cases
}

fn rendered(case: &Path) -> Vec<String> {
    let checked = hass_config_check::load(case);
    // `config` is there exactly when nothing is an error.
    assert_eq!(
        checked.config.is_some(),
        !checked.has_errors(),
        "{}",
        case.display()
    );
    checked
        .diagnostics
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn corpus_matches_expected_diagnostics() {
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut failures = Vec::new();
    for case in cases() {
        let expected_path = case.join("expected.txt");
        let expected_text = fs::read_to_string(&expected_path).unwrap_or_default();
        let comments: Vec<&str> = expected_text
            .lines()
            .filter(|l| l.starts_with('#'))
            .collect();
        let expected: Vec<&str> = expected_text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .collect();
        let actual = rendered(&case);
        if update {
            let mut text: String = comments.iter().map(|c| format!("{c}\n")).collect();
            text.extend(actual.iter().map(|l| format!("{l}\n")));
            fs::write(&expected_path, text).unwrap();
        } else if actual != expected {
            failures.push(format!(
                "{}:\n  expected:\n    {}\n  actual:\n    {}",
                case.file_name().unwrap().to_string_lossy(),
                expected.join("\n    "),
                actual.join("\n    ")
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

#[test]
fn every_case_has_an_expected_file() {
    for case in cases() {
        assert!(
            case.join("expected.txt").is_file(),
            "{} has no expected.txt",
            case.display()
        );
    }
}

/// A 300 KB string aliased 1 000 times would be 300 MB of copies: refused by
/// the expanded-bytes limit before it is copied, where a count of values let
/// it through (a 1 MB string aliased 600 times took 677 MB).
#[test]
fn a_long_string_aliased_many_times_is_refused_before_it_is_copied() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = format!("long: &s \"{}\"\ncopies:\n", "x".repeat(300_000));
    text.push_str(&"  - *s\n".repeat(1000));
    fs::write(dir.path().join("configuration.yaml"), text).unwrap();
    let checked = hass_config_check::load(dir.path());
    let errors: Vec<String> = checked
        .diagnostics
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("with its aliases expanded")),
        "{errors:?}"
    );
}

/// A large config with no aliases at all (110 000 automations, 32 MB) loads:
/// the limit is on bytes built, not on how many values a real config has
/// (a count of values refused such a file as "aliases of aliases").
#[test]
fn a_large_config_without_aliases_loads() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("configuration.yaml"),
        "automation: !include automations.yaml\n",
    )
    .unwrap();
    let mut automations = String::with_capacity(31 << 20);
    for i in 0..110_000 {
        automations.push_str(&format!(
            "- id: \"{i}\"\n  alias: Light {i} follows motion\n  triggers:\n    - trigger: state\n      entity_id: binary_sensor.motion_{i}\n      to: \"on\"\n  actions:\n    - action: light.turn_on\n      target:\n        entity_id: light.room_{i}\n      data:\n        brightness_pct: 80\n        transition: 2\n"
        ));
    }
    assert!(automations.len() > 30 << 20, "{}", automations.len());
    fs::write(dir.path().join("automations.yaml"), automations).unwrap();
    let checked = hass_config_check::load(dir.path());
    let errors: Vec<String> = checked
        .diagnostics
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(!checked.has_errors(), "{errors:?}");
}

/// A diagnostic names where and what kind, never what a file holds: an
/// `!include` of the watcher's own token file under `packages:` was quoted
/// whole in the error (and so in the log and Home Assistant's notification).
#[test]
fn diagnostics_never_quote_file_content() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("ha-token");
    fs::write(&token, "eyJhbGciOiJIUzI1NiJ9.token-content\n").unwrap();
    let config = dir.path().join("config");
    fs::create_dir(&config).unwrap();
    fs::write(
        config.join("configuration.yaml"),
        format!(
            "homeassistant:\n  packages:\n    stolen: !include {}\n",
            token.display()
        ),
    )
    .unwrap();
    let checked = hass_config_check::load(&config);
    let errors: Vec<String> = checked
        .diagnostics
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(checked.has_errors(), "{errors:?}");
    assert!(
        errors.iter().all(|e| !e.contains("token-content")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("got a string")),
        "{errors:?}"
    );
}

/// Where this validator's verdict differs from Home Assistant 2026.11's own
/// `check_config`, case by case, and why. Every other case must agree:
/// valid for both, or invalid for both.
const VERDICTS_THAT_DIFFER: &[(&str, &str)] = &[
    (
        "alias_bomb",
        "PyYAML shares aliased objects, we copy them: refused past 256 MiB expanded (deliberate)",
    ),
    (
        "blueprints",
        "check_config does not read blueprints; Home Assistant fails these when it loads them",
    ),
    (
        "deep_nesting",
        "2026.11 on Python 3.14 loads up to 327 nested flow lists (2024.3.3 on 3.11 failed at 300); \
         saphyr's scanner counts flow levels in a u8 and stops at 256",
    ),
    (
        "empty_configuration",
        "check_config itself crashes on an empty configuration.yaml (as in 2024.3.3); Home Assistant starts fine",
    ),
];

/// The corpus against Home Assistant 2026.11's own `check_config`, run in
/// the root filesystem of the real-HA harness: each case's verdict agrees
/// with ours, or is listed above with its reason.
#[test]
fn corpus_verdicts_agree_with_home_assistant_2026_11() {
    let cases = cases();
    let verdicts: Vec<(String, bool, bool)> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .chunks(cases.len().div_ceil(4))
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|case| {
                            let name = case.file_name().unwrap().to_string_lossy().into_owned();
                            let theirs = hass_test_support::home_assistant::check_config(case)
                                .unwrap_or_else(|e| panic!("{name}: {e}"));
                            let ours = !hass_config_check::load(case).has_errors();
                            (name, ours, theirs.valid())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let differing: Vec<&str> = verdicts
        .iter()
        .filter(|(_, ours, theirs)| ours != theirs)
        .map(|(name, _, _)| name.as_str())
        .collect();
    let listed: Vec<&str> = VERDICTS_THAT_DIFFER.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        differing, listed,
        "verdicts (case, ours valid, Home Assistant 2026.11 valid): {verdicts:?}"
    );
}
