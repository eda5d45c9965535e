//! History: valid configs become commits holding exactly the allowlisted
//! files; invalid ones never do. Read back with gitoxide (no git binary in
//! the container, and CI installs none).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{Fixture, Running, WAIT, eventually, sample_config, watcher_yaml, write};
use hass_config_watcher::history::{Committed, History};
use hass_test_support::StandInHa;

/// Every file of the commit `HEAD` points to, path → content.
fn head_files(history: &History) -> BTreeMap<String, String> {
    let repo = history.repo().unwrap();
    let tree = repo.head_commit().unwrap().tree().unwrap();
    let mut files = BTreeMap::new();
    walk(&repo, &tree, "", &mut files);
    files
}

fn walk(
    repo: &gix::Repository,
    tree: &gix::Tree<'_>,
    prefix: &str,
    out: &mut BTreeMap<String, String>,
) {
    for entry in tree.iter() {
        let entry = entry.unwrap();
        let name = format!("{prefix}{}", entry.filename());
        let object = repo.find_object(entry.oid()).unwrap();
        if entry.mode().is_tree() {
            walk(repo, &object.into_tree(), &format!("{name}/"), out);
        } else {
            out.insert(name, String::from_utf8(object.data.clone()).unwrap());
        }
    }
}

fn commit_count(history: &History) -> usize {
    let repo = history.repo().unwrap();
    let Ok(head) = repo.head_id() else { return 0 };
    let mut n = 0;
    let mut next = Some(head.detach());
    while let Some(id) = next {
        n += 1;
        next = repo
            .find_commit(id)
            .unwrap()
            .parent_ids()
            .next()
            .map(|p| p.detach());
    }
    n
}

/// A config folder with everything the allowlist must sort out.
fn mixed_config(root: &Path) {
    write(
        root,
        "configuration.yaml",
        "automation: !include automations.yaml\n",
    );
    write(root, "automations.yaml", "[]\n");
    write(root, "packages/lights.yaml", "light: []\n");
    write(
        root,
        "blueprints/automation/me/motion.yaml",
        "blueprint: {}\n",
    );
    write(
        root,
        "custom_templates/tools.jinja",
        "{% macro x() %}{% endmacro %}\n",
    );
    write(root, "secrets.yaml", "pw: hunter2\n");
    write(root, "packages/secrets.yaml", "pw2: hunter3\n");
    write(root, ".storage/core.entity_registry", "{}\n");
    write(root, "home-assistant_v2.db", "SQLite\n");
    write(root, "home-assistant.log", "log\n");
    write(root, "deps/x.yaml", "x: 1\n");
    write(root, "notes.txt", "not config\n");
    write(
        root,
        "..2026_01_01/configuration.yaml",
        "configmap internals\n",
    );
}

#[test]
fn in_place_commit_holds_exactly_the_allowlist() {
    let fx = Fixture::new();
    mixed_config(&fx.root);
    let history = History::open(&fx.root, None, false).unwrap();
    assert!(fx.root.join(".git").is_dir());
    let gitignore = std::fs::read_to_string(fx.root.join(".gitignore")).unwrap();
    assert!(gitignore.contains("secrets.yaml\n"), "{gitignore}");

    assert!(matches!(
        history.commit("first").unwrap(),
        Committed::New(_)
    ));
    let files = head_files(&history);
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            ".gitignore",
            "automations.yaml",
            "blueprints/automation/me/motion.yaml",
            "configuration.yaml",
            "custom_templates/tools.jinja",
            "packages/lights.yaml",
        ]
    );
    // Nothing new: no empty commit.
    assert_eq!(history.commit("again").unwrap(), Committed::Unchanged);
    write(&fx.root, "automations.yaml", "- id: new\n");
    // Churn alone is no change either.
    write(
        &fx.root,
        ".storage/core.entity_registry",
        "{\"changed\": 1}\n",
    );
    assert!(matches!(
        history.commit("second").unwrap(),
        Committed::New(_)
    ));
    assert_eq!(head_files(&history)["automations.yaml"], "- id: new\n");
    assert_eq!(commit_count(&history), 2);
    let repo = history.repo().unwrap();
    let head = repo.head_commit().unwrap();
    assert_eq!(head.message_raw().unwrap(), "second");
    // The index matches HEAD, so `git status` in /config is clean.
    let index = repo.open_index().unwrap();
    let mut indexed: Vec<String> = index
        .entries()
        .iter()
        .map(|e| e.path(&index).to_string())
        .collect();
    indexed.sort();
    assert_eq!(indexed, names);
}

#[test]
fn separate_repository_and_secrets_when_asked() {
    let fx = Fixture::new();
    mixed_config(&fx.root);
    let repo_dir = fx.dir.path().join("history.git");
    let history = History::open(&fx.root, Some(&repo_dir), true).unwrap();
    history.commit("first").unwrap();
    assert!(!fx.root.join(".git").exists());
    assert!(!fx.root.join(".gitignore").exists());
    let files = head_files(&history);
    assert_eq!(files["secrets.yaml"], "pw: hunter2\n");
    assert_eq!(files["packages/secrets.yaml"], "pw2: hunter3\n");
    // The allowlist travels with the history, without the secrets line.
    assert!(!files[".gitignore"].contains("secrets.yaml"));
    // Reopening an existing repository continues its history.
    let again = History::open(&fx.root, Some(&repo_dir), true).unwrap();
    write(&fx.root, "automations.yaml", "- id: b\n");
    again.commit("second").unwrap();
    assert_eq!(commit_count(&again), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_changes_commit_invalid_ones_never() {
    let fx = Fixture::new();
    sample_config(&fx.root);
    write(&fx.root, "secrets.yaml", "pw: hunter2\n");
    let ha = StandInHa::start();
    let repo_dir = fx.dir.path().join("history.git");
    let yaml = watcher_yaml(
        &fx.root,
        &ha.url(),
        &fx.token_file,
        &format!("history:\n  repo: {}\n", repo_dir.display()),
    );
    let watcher = Running::start(&yaml).await;
    let history = History::open(&fx.root, Some(&repo_dir), false).unwrap();
    // The startup state is the first commit.
    assert_eq!(commit_count(&history), 1);

    write(
        &fx.root,
        "input_boolean.yaml",
        "guest_mode:\n  name: Guests\n",
    );
    eventually("a commit for the valid edit", WAIT, || {
        commit_count(&history) == 2
    })
    .await;
    let files = head_files(&history);
    assert_eq!(files["input_boolean.yaml"], "guest_mode:\n  name: Guests\n");
    assert!(!files.contains_key("secrets.yaml"));
    let repo = history.repo().unwrap();
    assert_eq!(
        repo.head_commit().unwrap().message_raw().unwrap(),
        "Valid config; changed: input_boolean"
    );

    // Broken YAML: validated (and refused), never committed.
    write(&fx.root, "input_boolean.yaml", "guest_mode: [unclosed\n");
    eventually("the broken edit is validated", WAIT, || {
        watcher.metric(
            "hass_config_watcher_validation_runs_total",
            &[("result", "invalid")],
        ) >= 1.0
    })
    .await;
    assert_eq!(commit_count(&history), 2);
    assert_eq!(
        watcher.metric(
            "hass_config_watcher_history_commits_total",
            &[("result", "committed")]
        ),
        2.0
    );
    watcher.stop().await;
}

/// A link in the config folder is committed as its file only when that file
/// is in the folder (a ConfigMap's files are links into `..data`); a link to
/// a file outside is not committed, and a dangling `.gitignore` link is left
/// alone instead of being written through.
#[test]
fn links_out_of_the_config_folder_are_neither_committed_nor_written_through() {
    use std::os::unix::fs::symlink;
    let fx = Fixture::new();
    let outside = fx.dir.path().join("outside");
    write(&outside, "shadow.yaml", "root: $6$hash\n");
    write(
        &fx.root,
        "..2026_12_06.1/configuration.yaml",
        "homeassistant:\n",
    );
    symlink("..2026_12_06.1", fx.root.join("..data")).unwrap();
    symlink(
        "..data/configuration.yaml",
        fx.root.join("configuration.yaml"),
    )
    .unwrap();
    symlink(outside.join("shadow.yaml"), fx.root.join("evil.yaml")).unwrap();
    symlink(outside.join("planted"), fx.root.join(".gitignore")).unwrap();

    let history = History::open(&fx.root, None, false).unwrap();
    assert!(
        !outside.join("planted").exists(),
        "written through the link"
    );
    assert!(matches!(
        history.commit("first").unwrap(),
        Committed::New(_)
    ));
    let files = head_files(&history);
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        ["configuration.yaml"],
        "{files:?}"
    );
}
