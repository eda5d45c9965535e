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
    let checked = hass_config_watcher::load(case);
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
