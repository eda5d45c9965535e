//! The Git source against a real repository: a bare repository that the
//! `git` command line commits and pushes to, and the watcher following its
//! branch into a config folder, with the stand-in Home Assistant receiving
//! the reloads. Each step waits for the watcher's count of revisions.

// Test helpers unwrap: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::{Fixture, Running, WAIT, automation, eventually, watcher_yaml, write};
use hass_test_support::GitRemote;
use hass_test_support::StandInHa;

const CONFIGURATION: &str = "homeassistant:\n  name: Home\nautomation: !include automations.yaml\nscript: !include scripts.yaml\ninput_boolean: !include input_boolean.yaml\n";

/// The sample config, as files for [`GitRemote::push`].
fn sample() -> Vec<(&'static str, Option<&'static str>)> {
    vec![
        ("configuration.yaml", Some(CONFIGURATION)),
        (
            "automations.yaml",
            Some("- id: first\n  alias: first\n  trigger: []\n  action: []\n"),
        ),
        ("scripts.yaml", Some("hello:\n  sequence: []\n")),
        ("input_boolean.yaml", Some("guest_mode:\n  name: Guest\n")),
    ]
}

/// Every file in the config folder but the watcher's own state.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            if rel.starts_with(".hass-config-watcher") {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.insert(rel, fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

struct Setup {
    fx: Fixture,
    repo: GitRemote,
    ha: StandInHa,
    w: Running,
}

impl Setup {
    /// A repository holding the sample config under `ha/`, the config folder
    /// holding `local`, and a watcher following `main` that has applied the
    /// first revision.
    /// `top`: more top-level YAML lines; `more`: more `source:` keys.
    async fn start(local: &[(&str, &str)], top: &str, more: &str) -> Self {
        let fx = Fixture::new();
        let repo = GitRemote::new(fx.dir.path(), "ha");
        repo.push(&sample(), "the sample config");
        for (rel, text) in local {
            write(&fx.root, rel, text);
        }
        let ha = StandInHa::start();
        let source = format!(
            "{top}source:\n  git: file://{}\n  path: ha\n  interval: 50ms\n{more}",
            repo.remote.display()
        );
        let w = Running::start(&watcher_yaml(&fx.root, &ha.url(), &fx.token_file, &source)).await;
        let setup = Self { fx, repo, ha, w };
        setup.wait_for("applied", 1).await;
        // The folder starts out invalid (empty, or without
        // configuration.yaml): the first valid run is of the revision.
        eventually("the watcher validated the revision", WAIT, || {
            setup.w.metric(
                "hass_config_watcher_validation_runs_total",
                &[("result", "valid")],
            ) >= 1.0
        })
        .await;
        setup
    }

    fn revisions(&self, result: &str) -> f64 {
        self.w.metric(
            "hass_config_watcher_source_revisions_total",
            &[("result", result)],
        )
    }

    async fn wait_for(&self, result: &str, n: u32) {
        eventually(&format!("{n} revisions {result}"), WAIT, || {
            self.revisions(result) >= f64::from(n)
        })
        .await;
    }

    fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.fx.root.join(rel)).unwrap()
    }

    /// The first notification that names `commit`: raised just after the
    /// count the tests wait for, so waited for in turn.
    async fn notification_about(&self, commit: &str) -> String {
        let mut found = None;
        eventually(&format!("a notification naming {commit}"), WAIT, || {
            found = self
                .notifications()
                .into_iter()
                .find(|n| n.contains(commit));
            found.is_some()
        })
        .await;
        found.unwrap()
    }

    /// The bodies of the notifications raised so far.
    fn notifications(&self) -> Vec<String> {
        self.ha
            .calls()
            .into_iter()
            .filter(|c| c.path == "/api/services/persistent_notification/create")
            .map(|c| c.body)
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_revision_is_written_then_reloaded() {
    // First sync into an empty folder: every file comes from Git.
    let s = Setup::start(&[], "", "").await;
    assert_eq!(s.read("configuration.yaml"), CONFIGURATION);
    assert_eq!(s.read("input_boolean.yaml"), "guest_mode:\n  name: Guest\n");
    let state = fs::read_to_string(s.fx.root.join(".hass-config-watcher/git-source")).unwrap();
    assert_eq!(state.trim(), format!("applied {}", s.repo.head()));

    let pushed = Instant::now();
    s.repo.push(
        &[("input_boolean.yaml", Some("guest_mode:\n  name: Guests\n"))],
        "rename the guest switch",
    );
    eventually("input_boolean.reload", WAIT, || {
        s.ha.count("input_boolean/reload") == 1
    })
    .await;
    eprintln!("push to reload call: {:?}", pushed.elapsed());
    assert_eq!(
        s.read("input_boolean.yaml"),
        "guest_mode:\n  name: Guests\n"
    );
    assert_eq!(s.revisions("applied"), 2.0);
    // Only the domain that changed.
    assert_eq!(s.ha.reloads(), ["input_boolean/reload"]);

    // A file deleted in Git, untouched in the folder, is deleted there.
    let config = CONFIGURATION.replace("script: !include scripts.yaml\n", "");
    s.repo.push(
        &[
            ("configuration.yaml", Some(&config)),
            ("scripts.yaml", None),
        ],
        "no scripts",
    );
    s.wait_for("applied", 3).await;
    assert!(!s.fx.root.join("scripts.yaml").exists());
    assert!(
        s.w.metric(
            "hass_config_watcher_source_last_applied_timestamp_seconds",
            &[]
        ) > 1.7e9
    );
    s.ha.assert_all_authorized();
    s.w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_revision_is_never_written() {
    let s = Setup::start(&[], "", "").await;
    let before = snapshot(&s.fx.root);
    let bad = s.repo.push(
        &[
            (
                "input_boolean.yaml",
                Some("guest_mode:\n  name: [unclosed\n"),
            ),
            (
                "scripts.yaml",
                Some("hello:\n  sequence: []\nbye:\n  sequence: []\n"),
            ),
        ],
        "a typo",
    );
    s.wait_for("refused", 1).await;
    assert_eq!(
        snapshot(&s.fx.root),
        before,
        "nothing of the revision is written"
    );
    let note = s.notification_about(&bad).await;
    assert!(note.contains("`input_boolean.yaml:3:1: error: "), "{note}");

    // Refused once, not at every poll; the fix is applied.
    s.repo.push(
        &[("input_boolean.yaml", Some("guest_mode:\n  name: Guests\n"))],
        "the fix",
    );
    s.wait_for("applied", 2).await;
    assert_eq!(s.revisions("refused"), 1.0);
    assert_eq!(
        s.read("input_boolean.yaml"),
        "guest_mode:\n  name: Guests\n"
    );
    assert_eq!(
        s.read("scripts.yaml"),
        "hello:\n  sequence: []\nbye:\n  sequence: []\n"
    );
    eventually("the notification dismissed", WAIT, || {
        s.ha.count("persistent_notification/dismiss") >= 1
    })
    .await;
    s.w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_made_in_home_assistant_is_kept() {
    // The folder already has an automation made in the UI: the first sync
    // keeps it and writes the rest.
    let ui = automation("made_in_the_ui");
    let s = Setup::start(&[("automations.yaml", &ui)], "", "").await;
    assert_eq!(s.read("automations.yaml"), ui);
    assert_eq!(s.read("configuration.yaml"), CONFIGURATION);
    assert_eq!(
        s.w.metric("hass_config_watcher_source_conflicts_total", &[]),
        1.0
    );

    // Git changes the automations and the scripts; the folder's automations
    // stay, the scripts are written.
    let both = s.repo.push(
        &[
            ("automations.yaml", Some(&automation("from_git"))),
            (
                "scripts.yaml",
                Some("hello:\n  sequence: []\nbye:\n  sequence: []\n"),
            ),
        ],
        "two changes",
    );
    s.wait_for("applied", 2).await;
    assert_eq!(s.read("automations.yaml"), ui);
    assert!(s.read("scripts.yaml").contains("bye:"));
    assert_eq!(
        s.w.metric("hass_config_watcher_source_conflicts_total", &[]),
        2.0
    );
    let note = s.notification_about(&both).await;
    assert!(note.contains("automations.yaml"), "{note}");
    s.w.stop().await;
}

/// Pushes `files`, waits for the refusal, checks that the folder is as it
/// was, then pushes the applied tree back and waits for that to apply.
/// Returns the notification about it.
async fn refused(s: &Setup, files: &[(&str, Option<&str>)], what: &str, n: u32) -> String {
    let before = snapshot(&s.fx.root);
    let started = Instant::now();
    let commit = s.repo.push(files, what);
    s.wait_for("refused", n).await;
    let took = started.elapsed();
    assert_eq!(snapshot(&s.fx.root), before, "{what}: nothing written");
    let note = s.notification_about(&commit).await;
    eprintln!("{what}: refused {took:?} after the push: {note}");
    note
}

async fn back_to_sample(s: &Setup, applied: u32) {
    let _ = fs::remove_file(s.repo.path("passwd.yaml"));
    let _ = fs::remove_file(s.repo.path("huge.yaml"));
    s.repo.push(&sample(), "back");
    s.wait_for("applied", applied).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_revisions_write_nothing() {
    let s = Setup::start(&[], "", "").await;
    refused(
        &s,
        &[("configuration.yaml", None)],
        "no configuration.yaml",
        1,
    )
    .await;
    back_to_sample(&s, 2).await;

    let huge = format!("# {}\n", "x".repeat(9 * 1024 * 1024));
    refused(&s, &[("huge.yaml", Some(&huge))], "a 9 MiB file", 2).await;
    back_to_sample(&s, 3).await;

    std::os::unix::fs::symlink("/etc/passwd", s.repo.path("passwd.yaml")).unwrap();
    refused(&s, &[], "a link to /etc/passwd", 3).await;
    assert!(!s.fx.root.join("passwd.yaml").exists());
    back_to_sample(&s, 4).await;

    // A force-push: the branch rewritten to a tip that does not descend from
    // the revision applied.
    let applied = s.repo.head();
    s.repo.git(&["reset", "-q", "--hard", "HEAD~3"]);
    let note = refused(
        &s,
        &[(
            "input_boolean.yaml",
            Some("guest_mode:\n  name: Rewritten\n"),
        )],
        "a force-push",
        4,
    )
    .await;
    assert!(note.contains(&applied), "{note}");
    // Nothing was reloaded for any of them, and the folder is the sample.
    assert!(s.ha.reloads().is_empty(), "{:?}", s.ha.reloads());
    assert_eq!(s.read("input_boolean.yaml"), "guest_mode:\n  name: Guest\n");
    s.w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_repository_is_reported_until_it_appears() {
    let fx = Fixture::new();
    write(
        &fx.root,
        "configuration.yaml",
        "homeassistant:\n  name: Home\n",
    );
    let before = snapshot(&fx.root);
    let ha = StandInHa::start();
    let missing = fx.dir.path().join("remote.git");
    let source = format!(
        "source:\n  git: {}\n  path: ha\n  interval: 50ms\n",
        missing.display()
    );
    let w = Running::start(&watcher_yaml(&fx.root, &ha.url(), &fx.token_file, &source)).await;
    let failed = || {
        w.metric(
            "hass_config_watcher_source_revisions_total",
            &[("result", "failed")],
        )
    };
    eventually("two failed polls", WAIT, || failed() >= 2.0).await;
    assert_eq!(snapshot(&fx.root), before);

    let repo = GitRemote::new(fx.dir.path(), "ha");
    repo.push(&sample(), "the sample config");
    eventually("applied once the repository is there", WAIT, || {
        w.metric(
            "hass_config_watcher_source_revisions_total",
            &[("result", "applied")],
        ) == 1.0
    })
    .await;
    assert_eq!(
        fs::read_to_string(fx.root.join("configuration.yaml")).unwrap(),
        CONFIGURATION
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_home_assistant_rejects_is_rolled_back() {
    let s = Setup::start(&[], "", "").await;
    let good = s.read("input_boolean.yaml");
    // Valid YAML that Home Assistant's own check rejects: it warns about
    // the domain, so the reload is refused and the revision rolled back.
    s.ha.set(|b| {
        b.check_config_warnings = Some(
            "Invalid config for 'input_boolean' at input_boolean.yaml, line 2: expected str"
                .to_owned(),
        )
    });
    let pushed = Instant::now();
    let bad = s.repo.push(
        &[
            ("input_boolean.yaml", Some("guest_mode:\n  name: [1, 2]\n")),
            (
                "scripts.yaml",
                Some("hello:\n  sequence: []\nbye:\n  sequence: []\n"),
            ),
        ],
        "a schema error",
    );
    s.wait_for("rolled_back", 1).await;
    eprintln!("push to rolled back: {:?}", pushed.elapsed());
    s.ha.set(|b| b.check_config_warnings = None);
    assert_eq!(s.read("input_boolean.yaml"), good);
    assert_eq!(s.read("scripts.yaml"), "hello:\n  sequence: []\n");
    let note = s.notification_about(&bad).await;
    assert!(note.contains("rolled back"), "{note}");
    // Home Assistant gets the old files back: reloaded as they were.
    eventually("the rolled-back files reloaded", WAIT, || {
        s.ha.count("input_boolean/reload") >= 1
    })
    .await;
    assert_eq!(s.revisions("applied"), 2.0);

    // The rolled-back revision is not applied again; the next one is.
    s.repo.push(
        &[("input_boolean.yaml", Some("guest_mode:\n  name: Guests\n"))],
        "the fix",
    );
    s.wait_for("applied", 3).await;
    assert_eq!(
        s.read("input_boolean.yaml"),
        "guest_mode:\n  name: Guests\n"
    );
    assert!(s.read("scripts.yaml").contains("bye:"));
    assert_eq!(s.revisions("rolled_back"), 1.0);
    s.w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_after_which_home_assistant_does_not_come_back_is_rolled_back() {
    // The folder already holds what Git has: the first sync writes nothing,
    // so no restart (and no watch of it) is under way when Home Assistant
    // stops saying RUNNING below.
    let local: Vec<(&str, &str)> = sample()
        .into_iter()
        .map(|(rel, text)| (rel, text.unwrap()))
        .collect();
    let s = Setup::start(&local, "auto_restart: true\n", "  rollback_window: 1s\n").await;
    // `mqtt:` has no reload service: the change needs a restart, after
    // which Home Assistant never says RUNNING.
    let restarts = s.ha.count("homeassistant/restart");
    s.ha.set(|b| b.state = "NOT_RUNNING".into());
    let config = format!("{CONFIGURATION}mqtt:\n  sensor: []\n");
    let mqtt = s
        .repo
        .push(&[("configuration.yaml", Some(&config))], "mqtt");
    s.wait_for("rolled_back", 1).await;
    assert_eq!(s.ha.count("homeassistant/restart"), restarts + 1);
    assert_eq!(s.read("configuration.yaml"), CONFIGURATION);
    let note = s.notification_about(&mqtt).await;
    assert!(note.contains("not RUNNING within 1s"), "{note}");
    s.w.stop().await;
}
