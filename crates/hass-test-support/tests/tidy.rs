//! Tidy checks over the whole workspace: what rots silently gets a test.
//! Every Rust file says what it is for in its first line; every ignored
//! test says why; every benchmark without the test harness returns at once
//! when run as a test (`cargo test --all-targets` runs it without `--bench`);
//! every port number is written in `hass-runtime`'s `ports.rs` alone.

use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every `.rs` file under `crates/`, fuzz crates and build output aside.
fn rust_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("readable folder") {
            let path = entry.expect("entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if path.is_dir() {
                if !matches!(name, "target" | "node_modules" | "fuzz") {
                    walk(&path, out);
                }
            } else if name.ends_with(".rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&workspace().join("crates"), &mut files);
    assert!(files.len() > 100, "found only {} files", files.len());
    files
}

fn shown(path: &Path) -> String {
    path.strip_prefix(workspace())
        .unwrap_or(path)
        .display()
        .to_string()
}

#[test]
fn every_rust_file_opens_with_a_comment_saying_what_it_is() {
    let bare: Vec<String> = rust_files()
        .into_iter()
        .filter(|path| {
            let text = std::fs::read_to_string(path).expect("utf-8 source");
            let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            !first.starts_with("//")
        })
        .map(|path| shown(&path))
        .collect();
    assert!(
        bare.is_empty(),
        "files without an opening comment: {bare:?}"
    );
}

#[test]
fn every_ignored_test_says_why() {
    let mut bare = Vec::new();
    for path in rust_files() {
        let text = std::fs::read_to_string(&path).expect("utf-8 source");
        for (n, line) in text.lines().enumerate() {
            if line.trim() == "#[ignore]" {
                bare.push(format!("{}:{}", shown(&path), n + 1));
            }
        }
    }
    assert!(bare.is_empty(), "#[ignore] without a reason: {bare:?}");
}

#[test]
fn every_benchmark_without_the_harness_returns_unless_asked_to_bench() {
    let mut benches = 0;
    for entry in std::fs::read_dir(workspace().join("crates")).expect("crates") {
        let krate = entry.expect("entry").path();
        let Ok(manifest) = std::fs::read_to_string(krate.join("Cargo.toml")) else {
            continue;
        };
        for block in manifest.split("[[bench]]").skip(1) {
            let block = block.split("\n[").next().unwrap_or(block);
            if !block.contains("harness = false") {
                continue;
            }
            let name = block
                .lines()
                .find_map(|l| l.trim().strip_prefix("name = "))
                .map(|n| n.trim_matches('"'))
                .expect("a [[bench]] has a name");
            let source = krate.join("benches").join(format!("{name}.rs"));
            let text = std::fs::read_to_string(&source).expect("the bench's source");
            assert!(
                text.contains(r#"any(|a| a == "--bench")"#),
                "{} runs as a test under `cargo test --all-targets`: return unless --bench",
                shown(&source)
            );
            benches += 1;
        }
    }
    assert!(benches >= 3, "found {benches} benches");
}

/// The suite's port numbers, read from `hass-runtime/src/ports.rs`.
fn defined_ports() -> Vec<(String, u16)> {
    let source = std::fs::read_to_string(workspace().join("crates/hass-runtime/src/ports.rs"))
        .expect("ports.rs");
    source
        .lines()
        .filter_map(|line| {
            let (name, value) = line.strip_prefix("pub const ")?.split_once(": u16 = ")?;
            Some((name.to_owned(), value.trim_end_matches(';').parse().ok()?))
        })
        .collect()
}

/// Whether `line` holds `number` as a number of its own (not part of a
/// longer one, a version or an address's other digits).
fn holds_number(line: &str, number: u16) -> bool {
    let text = number.to_string();
    line.match_indices(&text).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        let after = line[at + text.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_digit() || c == '.')
            && !after.is_some_and(|c| c.is_ascii_digit())
    })
}

/// A port is written as a number in `ports.rs` alone: code and messages
/// elsewhere name the constant, so changing a port is one edit. Comments,
/// doc comments and unit tests (from `#[cfg(test)]` on) may show numbers.
#[test]
fn every_port_number_is_written_once() {
    let ports = defined_ports();
    assert!(ports.len() >= 10, "read only {ports:?} from ports.rs");
    let design = std::fs::read_to_string(workspace().join("docs/design.md")).expect("design.md");
    for (name, number) in &ports {
        assert!(
            design.contains(&format!("| `{name}` | {number} |")),
            "docs/design.md's port table lacks `{name}` = {number}"
        );
    }
    let mut written = Vec::new();
    for path in rust_files() {
        let shown_path = shown(&path);
        if !shown_path.contains("/src/") || shown_path.ends_with("hass-runtime/src/ports.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("utf-8 source");
        for (n, line) in text.lines().enumerate() {
            if line.trim() == "#[cfg(test)]" {
                break;
            }
            if line.trim_start().starts_with("//") {
                continue;
            }
            for (name, number) in &ports {
                if holds_number(line, *number) {
                    written.push(format!("{shown_path}:{}: {number} is {name}", n + 1));
                }
            }
        }
    }
    assert!(
        written.is_empty(),
        "port numbers written outside ports.rs (use hass_runtime::ports::*):\n{}",
        written.join("\n")
    );
}

/// hass-config-check is the validator alone: files in, diagnostics out. An
/// async runtime, an HTTP stack, a file watcher or another workspace crate
/// among its dependencies would make the fuzz target and the corpus drive
/// more than the validator.
#[test]
fn the_validator_stays_synchronous() {
    let manifest = std::fs::read_to_string(workspace().join("crates/hass-config-check/Cargo.toml"))
        .expect("hass-config-check's Cargo.toml");
    let dependencies = manifest
        .split("\n[dependencies]\n")
        .nth(1)
        .expect("a [dependencies] table");
    let dependencies = dependencies.split("\n[").next().unwrap_or(dependencies);
    let names: Vec<&str> = dependencies
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split(['=', '.']).next())
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    assert!(names.contains(&"saphyr-parser"), "read {names:?}");
    for name in names {
        assert!(
            !name.starts_with("hass-")
                && ![
                    "tokio",
                    "hyper",
                    "hyper-util",
                    "axum",
                    "notify",
                    "reqwest",
                    "futures-util"
                ]
                .contains(&name),
            "hass-config-check depends on {name}: keep the validator synchronous and on its own"
        );
    }
}
