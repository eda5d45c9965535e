//! Backups in Home Assistant's format: round trip, exclusions, retention, and
//! failures that lose nothing.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Fixture, Running, WAIT, binary, eventually, watcher_yaml, write};
use hass_config_watcher::backup::{self, NAME_PREFIX, RestoreLimits};
use hass_test_support::StandInHa;

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
    let count = backup::restore(&written.path, &restored, RestoreLimits::default()).unwrap();
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
    backup::restore(&second.path, &restored, RestoreLimits::default()).unwrap();
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
    let ha = StandInHa::start();
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

/// An entry of a hand-made `homeassistant.tar.gz`.
enum Hostile {
    File(&'static str, Vec<u8>),
    Symlink(&'static str, String),
    HardLink(&'static str, String),
    Fifo(&'static str),
}

/// A backup in Home Assistant's layout whose inner archive holds `entries`,
/// as an attacker would write it.
fn hostile_backup(path: &Path, entries: &[Hostile]) {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    {
        let mut inner = tar::Builder::new(&mut gz);
        for entry in entries {
            let mut header = tar::Header::new_gnu();
            header.set_mode(0o644);
            match entry {
                Hostile::File(name, bytes) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(bytes.len() as u64);
                    inner
                        .append_data(&mut header, name, bytes.as_slice())
                        .unwrap();
                }
                Hostile::Symlink(name, target) | Hostile::HardLink(name, target) => {
                    header.set_entry_type(if matches!(entry, Hostile::Symlink(..)) {
                        tar::EntryType::Symlink
                    } else {
                        tar::EntryType::Link
                    });
                    header.set_size(0);
                    inner.append_link(&mut header, name, target).unwrap();
                }
                Hostile::Fifo(name) => {
                    header.set_entry_type(tar::EntryType::Fifo);
                    header.set_size(0);
                    inner.append_data(&mut header, name, io::empty()).unwrap();
                }
            }
        }
        inner.finish().unwrap();
    }
    let inner = gz.finish().unwrap();
    let json = br#"{"slug":"0badf00d","name":"x","date":"2026-12-06T00:00:00+00:00","type":"partial","folders":["homeassistant"],"compressed":true}"#;
    let mut outer = tar::Builder::new(fs::File::create(path).unwrap());
    for (name, bytes) in [
        ("backup.json", json.as_slice()),
        ("homeassistant.tar.gz", inner.as_slice()),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        outer.append_data(&mut header, name, bytes).unwrap();
    }
    outer.finish().unwrap();
}

/// Each way an archive writes outside its folder, refused before a byte is
/// written: the target holds exactly what it held, and so does the outside.
#[test]
fn a_restore_refuses_links_devices_and_paths_through_links() {
    let fx = Fixture::new();
    let outside = fx.dir.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    write(&outside, "passwd", "root:x:0:0\n");
    let cases: Vec<(&str, Vec<Hostile>, &str)> = vec![
        (
            "absolute symlink, then a file through it",
            vec![
                Hostile::File("data/configuration.yaml", b"{}\n".to_vec()),
                Hostile::Symlink("data/link", outside.display().to_string()),
                Hostile::File("data/link/x.yaml", b"planted\n".to_vec()),
            ],
            "a symbolic link",
        ),
        (
            "relative symlink climbing out",
            vec![
                Hostile::Symlink("data/up", "../../outside".to_owned()),
                Hostile::File("data/up/x.yaml", b"planted\n".to_vec()),
            ],
            "a symbolic link",
        ),
        (
            "hard link to an absolute path",
            vec![Hostile::HardLink(
                "data/secrets.yaml",
                outside.join("passwd").display().to_string(),
            )],
            "a hard link",
        ),
        ("a FIFO", vec![Hostile::Fifo("data/pipe")], "a FIFO"),
    ];
    for (case, entries, says) in cases {
        let path = fx.dir.path().join("hostile.tar");
        hostile_backup(&path, &entries);
        let target = fx.dir.path().join("restored");
        let _ = fs::remove_dir_all(&target);
        fs::create_dir_all(&target).unwrap();
        write(&target, "configuration.yaml", "homeassistant:\n");
        let err = backup::restore(&path, &target, RestoreLimits::default())
            .expect_err(case)
            .to_string();
        assert!(err.contains(says), "{case}: {err}");
        assert_eq!(
            files(&target).keys().collect::<Vec<_>>(),
            [Path::new("configuration.yaml")],
            "{case}: the target changed"
        );
        assert_eq!(
            fs::read_to_string(target.join("configuration.yaml")).unwrap(),
            "homeassistant:\n",
            "{case}"
        );
        assert_eq!(
            files(&outside).keys().collect::<Vec<_>>(),
            [Path::new("passwd")],
            "{case}: written outside"
        );
    }

    // A link already in the target folder is not a way out either.
    let path = fx.dir.path().join("through.tar");
    hostile_backup(
        &path,
        &[Hostile::File("data/packages/x.yaml", b"planted\n".to_vec())],
    );
    let target = fx.dir.path().join("with-link");
    fs::create_dir_all(&target).unwrap();
    std::os::unix::fs::symlink(&outside, target.join("packages")).unwrap();
    let err = backup::restore(&path, &target, RestoreLimits::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("is a link"), "{err}");
    assert!(!outside.join("x.yaml").exists());

    // A file that is a link in the target is replaced, never written through.
    let path = fx.dir.path().join("over.tar");
    hostile_backup(
        &path,
        &[Hostile::File("data/secrets.yaml", b"pw: new\n".to_vec())],
    );
    let target = fx.dir.path().join("file-link");
    fs::create_dir_all(&target).unwrap();
    std::os::unix::fs::symlink(outside.join("passwd"), target.join("secrets.yaml")).unwrap();
    backup::restore(&path, &target, RestoreLimits::default()).unwrap();
    assert_eq!(
        fs::read_to_string(outside.join("passwd")).unwrap(),
        "root:x:0:0\n"
    );
    assert_eq!(
        fs::read_to_string(target.join("secrets.yaml")).unwrap(),
        "pw: new\n"
    );
    assert!(!target.join("secrets.yaml").is_symlink());
}

/// A gzip bomb: 200 MiB of zeros in a backup of a few hundred KiB is refused
/// by the default limit and writes nothing; the operator's flag lets a real
/// large config through.
#[test]
fn a_restore_that_would_write_too_much_is_refused_and_the_limit_is_a_flag() {
    let fx = Fixture::new();
    let path = fx.dir.path().join("bomb.tar");
    hostile_backup(
        &path,
        &[
            Hostile::File("data/configuration.yaml", b"{}\n".to_vec()),
            Hostile::File("data/www/big.bin", vec![0; 200 << 20]),
        ],
    );
    let size = fs::metadata(&path).unwrap().len();
    assert!(size < 1 << 20, "the bomb is {size} bytes");
    let target = fx.dir.path().join("restored");
    let out = binary()
        .args(["restore".as_ref(), path.as_os_str(), target.as_os_str()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("refusing to write more than"), "{stderr}");
    assert!(!target.join("configuration.yaml").exists());

    let out = binary()
        .args(["restore".as_ref(), path.as_os_str(), target.as_os_str()])
        .args(["--max-bytes", &(300u64 << 20).to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fs::metadata(target.join("www/big.bin")).unwrap().len(),
        200 << 20
    );
}

/// Backups hold secrets.yaml and .storage/auth; a ConfigMap-style config
/// (files that are links into `..data`) is backed up as its files, and a link
/// to a file outside the config folder is not backed up at all.
#[test]
fn backups_are_private_and_hold_no_links() {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let fx = Fixture::new();
    let outside = fx.dir.path().join("outside");
    write(&outside, "id_rsa", "PRIVATE KEY\n");
    // What the kubelet's atomic writer makes of a ConfigMap volume.
    write(
        &fx.root,
        "..2026_12_06_00_00_00.1/configuration.yaml",
        "{}\n",
    );
    symlink("..2026_12_06_00_00_00.1", fx.root.join("..data")).unwrap();
    symlink(
        "..data/configuration.yaml",
        fx.root.join("configuration.yaml"),
    )
    .unwrap();
    symlink(outside.join("id_rsa"), fx.root.join("stolen.yaml")).unwrap();
    write(&fx.root, "secrets.yaml", "pw: hunter2\n");

    let out = fx.dir.path().join("out");
    let written = backup::write_backup(&fx.root, &out, 0).unwrap();
    let mode = fs::metadata(&written.path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");

    let restored = fx.dir.path().join("restored");
    backup::restore(&written.path, &restored, RestoreLimits::default()).unwrap();
    assert_eq!(
        files(&restored),
        BTreeMap::from([
            (PathBuf::from("configuration.yaml"), b"{}\n".to_vec()),
            (PathBuf::from("secrets.yaml"), b"pw: hunter2\n".to_vec()),
        ])
    );
}
