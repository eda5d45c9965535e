//! Backups in Home Assistant's format: round trip, exclusions, retention, and
//! failures that lose nothing.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Fixture, Running, StandInHa, WAIT, eventually, watcher_yaml, write};
use hass_config_watcher::backup::{self, NAME_PREFIX};

/// Every regular file under `dir`, relative path → bytes.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.insert(
                    path.strip_prefix(root).unwrap().to_path_buf(),
                    fs::read(&path).unwrap(),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn typical_config(root: &Path) {
    write(
        root,
        "configuration.yaml",
        "automation: !include automations.yaml\n",
    );
    write(root, "automations.yaml", "- id: a\n  alias: ä ✓\n");
    write(root, "secrets.yaml", "pw: hunter2\n");
    write(root, ".storage/core.entity_registry", "{\"data\": {}}\n");
    write(root, ".HA_VERSION", "2024.3.3\n");
    write(root, "blueprints/automation/x.yaml", "blueprint: {}\n");
    // Binary content survives too.
    fs::write(root.join("www.bin"), (0..=255u8).collect::<Vec<_>>()).unwrap();
    // Excluded: database, logs, caches.
    write(root, "home-assistant_v2.db", "SQLite format 3\n");
    write(root, "home-assistant_v2.db-wal", "wal\n");
    write(root, "home-assistant.log", "log\n");
    write(root, "home-assistant.log.1", "old log\n");
    write(root, "custom_components/x/__pycache__/a.pyc", "pyc\n");
    write(root, "deps/lib.py", "dep\n");
    write(root, "tts/hello.mp3", "mp3\n");
    write(root, "backups/old.tar", "an older backup\n");
}

const EXCLUDED: &[&str] = &[
    "home-assistant_v2.db",
    "home-assistant_v2.db-wal",
    "home-assistant.log",
    "home-assistant.log.1",
    "custom_components/x/__pycache__/a.pyc",
    "deps/lib.py",
    "tts/hello.mp3",
    "backups/old.tar",
];

#[test]
fn backup_restore_round_trip() {
    let fx = Fixture::new();
    typical_config(&fx.root);
    let out = fx.dir.path().join("out");
    let written = backup::write_backup(&fx.root, &out, 7).unwrap();
    let meta = &written.metadata;
    assert_eq!(written.path, out.join(format!("{}.tar", meta.slug)));
    assert_eq!(meta.slug.len(), 8);
    assert_eq!(meta.kind, "partial");
    assert_eq!(meta.folders, ["homeassistant"]);
    assert_eq!(meta.homeassistant.as_ref().unwrap().version, "2024.3.3");
    assert!(meta.date.ends_with("+00:00"), "{}", meta.date);
    assert_eq!(backup::read_metadata(&written.path).unwrap(), *meta);

    // The layout Home Assistant reads: `./backup.json` and
    // `./homeassistant.tar.gz` with everything under `data/`.
    let mut outer = tar::Archive::new(fs::File::open(&written.path).unwrap());
    let mut names = Vec::new();
    let mut inner_names = Vec::new();
    for entry in outer.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
        if name == "./homeassistant.tar.gz" {
            let mut gz = Vec::new();
            entry.read_to_end(&mut gz).unwrap();
            let mut inner = tar::Archive::new(flate2::read::GzDecoder::new(gz.as_slice()));
            for e in inner.entries().unwrap() {
                inner_names.push(e.unwrap().path().unwrap().display().to_string());
            }
        }
        names.push(name);
    }
    assert_eq!(names, ["./backup.json", "./homeassistant.tar.gz"]);
    assert_eq!(inner_names[0], "data");
    assert!(
        inner_names
            .iter()
            .all(|n| n == "data" || n.starts_with("data/"))
    );

    let restored = fx.dir.path().join("restored");
    let count = backup::restore(&written.path, &restored).unwrap();
    let mut expected = files(&fx.root);
    for path in EXCLUDED {
        assert!(expected.remove(Path::new(path)).is_some(), "{path}");
    }
    let got = files(&restored);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    assert_eq!(got, expected, "restored bytes differ");
    assert_eq!(count, expected.len());
    for path in EXCLUDED {
        assert!(!restored.join(path).exists(), "{path} was backed up");
    }
}

#[test]
fn backup_inside_the_config_folder_skips_itself() {
    let fx = Fixture::new();
    write(&fx.root, "configuration.yaml", "{}\n");
    let out = fx.root.join("my-backups");
    backup::write_backup(&fx.root, &out, 0).unwrap();
    let second = backup::write_backup(&fx.root, &out, 0).unwrap();
    let restored = fx.dir.path().join("restored");
    backup::restore(&second.path, &restored).unwrap();
    assert_eq!(files(&restored).len(), 1, "{:?}", files(&restored).keys());
}

#[test]
fn retention_deletes_exactly_the_oldest() {
    let fx = Fixture::new();
    write(&fx.root, "configuration.yaml", "{}\n");
    let out = fx.dir.path().join("out");
    let mut paths = Vec::new();
    for _ in 0..4 {
        paths.push(backup::write_backup(&fx.root, &out, 0).unwrap().path);
    }
    // Home Assistant's own backup in the same folder: never ours to delete.
    write(&out, "abcdef12.tar", "");
    let ha_backup = out.join("abcdef12.tar");
    {
        let mut tar = tar::Builder::new(fs::File::create(&ha_backup).unwrap());
        let json = br#"{"slug":"abcdef12","name":"Core 2024.3.3","date":"2000-01-01T00:00:00+00:00","type":"partial","folders":["homeassistant"],"compressed":true}"#;
        let mut header = tar::Header::new_gnu();
        header.set_size(json.len() as u64);
        header.set_mode(0o644);
        tar.append_data(&mut header, "backup.json", &json[..])
            .unwrap();
        tar.finish().unwrap();
    }
    let newest = backup::write_backup(&fx.root, &out, 3).unwrap();
    assert_eq!(newest.deleted, paths[..2]);
    let left: Vec<PathBuf> = backup::list(&out)
        .unwrap()
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(
        left,
        [paths[2].clone(), paths[3].clone(), newest.path.clone()]
    );
    assert!(ha_backup.exists());
    assert!(left.iter().all(|p| {
        backup::read_metadata(p)
            .unwrap()
            .name
            .starts_with(NAME_PREFIX)
    }));
}

/// An output folder that cannot take a backup: a 64 KiB tmpfs when we may
/// mount one (a full disk), else a read-only folder (not root), else a path
/// under a regular file (root without mount rights). Returns a guard that
/// unmounts.
struct Unwritable {
    dir: PathBuf,
    mounted: bool,
    kind: &'static str,
}

impl Unwritable {
    fn new(base: &Path, seed_backup: impl Fn(&Path)) -> Self {
        let dir = base.join("full");
        fs::create_dir(&dir).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if mounted {
            seed_backup(&dir);
            return Self {
                dir,
                mounted,
                kind: "full tmpfs",
            };
        }
        seed_backup(&dir);
        let mut perms = fs::metadata(&dir).unwrap().permissions();
        perms.set_readonly(true);
        fs::set_permissions(&dir, perms).unwrap();
        if fs::write(dir.join("probe"), "x").is_err() {
            return Self {
                dir,
                mounted,
                kind: "read-only folder",
            };
        }
        let _ = fs::remove_file(dir.join("probe"));
        let file = base.join("a-file");
        fs::write(&file, "").unwrap();
        Self {
            dir: file.join("out"),
            mounted,
            kind: "path under a file",
        }
    }
}

impl Drop for Unwritable {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.dir).status();
        }
    }
}

#[test]
fn a_full_or_unwritable_output_fails_clearly_and_loses_nothing() {
    let fx = Fixture::new();
    write(&fx.root, "configuration.yaml", "{}\n");
    // 200 KiB that gzip cannot shrink: more than the tmpfs holds.
    let noise: Vec<u8> = (0..200 * 1024).map(|_| fastrand::u8(..)).collect();
    fs::write(fx.root.join("noise.bin"), &noise).unwrap();
    let small = fx.dir.path().join("small");
    write(&small, "configuration.yaml", "{}\n");
    let target = Unwritable::new(fx.dir.path(), |dir| {
        backup::write_backup(&small, dir, 0).unwrap();
    });
    let before: Vec<_> = fs::read_dir(&target.dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    let err = backup::write_backup(&fx.root, &target.dir, 1)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("earlier backups untouched"),
        "{}: {err}",
        target.kind
    );
    assert!(err.contains(&target.dir.display().to_string()), "{err}");
    let after: Vec<_> = fs::read_dir(&target.dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    // The earlier backup is still there and whole; no partial file is left.
    assert_eq!(before, after, "{}", target.kind);
    for path in &after {
        backup::read_metadata(path).unwrap();
    }
    eprintln!("unwritable output simulated with a {}: {err}", target.kind);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_backups_and_their_metrics() {
    let fx = Fixture::new();
    write(&fx.root, "configuration.yaml", "automation: []\n");
    let ha = StandInHa::start().await;
    let out = fx.dir.path().join("out");
    let yaml = watcher_yaml(
        &fx.root,
        &ha.url(),
        &fx.token_file,
        &format!(
            "backup_interval: 300ms\nbackup_dir: {}\nbackup_keep: 2\n",
            out.display()
        ),
    );
    let watcher = Running::start(&yaml).await;
    let written = |w: &Running| {
        w.metric(
            "hass_config_watcher_backups_total",
            &[("result", "written")],
        )
    };
    eventually("three scheduled backups", WAIT, || written(&watcher) >= 3.0).await;
    // Retention keeps two.
    assert_eq!(backup::list(&out).unwrap().len(), 2);
    assert!(watcher.metric("hass_config_watcher_last_backup_size_bytes", &[]) > 0.0);
    watcher.stop().await;

    // A backup folder that cannot be written: counted as failed.
    let file = fx.dir.path().join("not-a-folder");
    fs::write(&file, "").unwrap();
    let yaml = watcher_yaml(
        &fx.root,
        &ha.url(),
        &fx.token_file,
        &format!(
            "backup_interval: 200ms\nbackup_dir: {}\n",
            file.join("out").display()
        ),
    );
    let watcher = Running::start(&yaml).await;
    eventually("a failed backup is counted", WAIT, || {
        watcher.metric("hass_config_watcher_backups_total", &[("result", "failed")]) >= 1.0
    })
    .await;
    assert_eq!(written(&watcher), 0.0);
    watcher.stop().await;
}
