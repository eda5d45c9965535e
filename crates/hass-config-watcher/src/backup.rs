//! Backups in Home Assistant's own format, so its UI lists them and can
//! restore them: an uncompressed outer tar `<slug>.tar` holding
//! `./backup.json` (slug, name, date, type `partial`, folders
//! `["homeassistant"]`, `homeassistant.version`, `compressed`) and
//! `./homeassistant.tar.gz`, the config folder under `data/` — the layout of
//! Home Assistant 2024.3's core backup manager (`components/backup/manager.py`),
//! read there, not copied. Unlike Home Assistant's, the database, logs and
//! caches are left out: this is a config backup, taken often.
//!
//! A backup is written to a hidden `.partial` file and renamed into place
//! only when complete and synced, so a full disk leaves the earlier backups
//! and no half-written one; retention runs only after a success, and only
//! ever deletes backups this tool wrote (by their name).

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};

use crate::ignore::IgnoreList;

/// Every backup this tool writes is named so; retention deletes no other.
pub const NAME_PREFIX: &str = "hass-config-watcher ";
const METADATA: &str = "./backup.json";
const CORE_ARCHIVE: &str = "./homeassistant.tar.gz";
/// The folder inside `homeassistant.tar.gz` that holds the config folder.
const DATA: &str = "data";

/// Left out of backups: Home Assistant's own `EXCLUDE_FROM_BACKUP`, plus the
/// database and its journals, caches, and the history repository.
const EXCLUDED: &[&str] = &[
    "__pycache__/",
    ".DS_Store",
    "OZW_Log.txt",
    "*.log",
    "*.log.*",
    "*.db",
    "*.db-journal",
    "*.db-wal",
    "*.db-shm",
    "/backups/",
    "/deps/",
    "/tts/",
    "/.cache/",
    "/.git/",
];

/// A backup failed; nothing of it is left on disk.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BackupError(String);

fn fail(what: impl std::fmt::Display, e: impl std::fmt::Display) -> BackupError {
    BackupError(format!("{what}: {e}"))
}

/// `backup.json`, with the fields Home Assistant reads.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackupMetadata {
    pub slug: String,
    pub name: String,
    pub date: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub folders: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub homeassistant: Option<CoreVersion>,
    pub compressed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CoreVersion {
    pub version: String,
}

/// A backup written.
#[derive(Debug, Clone)]
pub struct Written {
    pub path: PathBuf,
    pub size: u64,
    pub metadata: BackupMetadata,
    /// Older backups retention deleted.
    pub deleted: Vec<PathBuf>,
}

/// Writes a backup of `config_dir` into `output` (created if missing), then
/// keeps the newest `keep` of this tool's backups there (0: keep all).
pub fn write_backup(config_dir: &Path, output: &Path, keep: usize) -> Result<Written, BackupError> {
    fs::create_dir_all(output)
        .map_err(|e| fail(format!("backup folder {}", output.display()), e))?;
    let date = iso_date(SystemTime::now());
    let name = format!("{NAME_PREFIX}{}", &date[..19].replace('T', " "));
    let metadata = BackupMetadata {
        slug: slug(&date, &name),
        name,
        date,
        kind: "partial".to_owned(),
        folders: vec!["homeassistant".to_owned()],
        homeassistant: fs::read_to_string(config_dir.join(".HA_VERSION"))
            .ok()
            .map(|v| CoreVersion {
                version: v.trim().to_owned(),
            })
            .filter(|v| !v.version.is_empty()),
        compressed: true,
    };
    let path = output.join(format!("{}.tar", metadata.slug));
    let partial = output.join(format!(".{}.tar.partial", metadata.slug));
    let result = write_archive(config_dir, output, &partial, &metadata).and_then(|()| {
        fs::rename(&partial, &path).map_err(|e| fail(path.display(), e))?;
        // The rename itself must survive a crash.
        File::open(output)
            .and_then(|d| d.sync_all())
            .map_err(|e| fail(output.display(), e))
    });
    if let Err(e) = result {
        let _ = fs::remove_file(&partial);
        return Err(BackupError(format!(
            "backup of {} into {} failed, earlier backups untouched: {e}",
            config_dir.display(),
            output.display()
        )));
    }
    let size = fs::metadata(&path).map(|m| m.len()).unwrap_or_default();
    let deleted = if keep > 0 {
        prune(output, keep)?
    } else {
        Vec::new()
    };
    Ok(Written {
        path,
        size,
        metadata,
        deleted,
    })
}

fn write_archive(
    config_dir: &Path,
    output: &Path,
    partial: &Path,
    metadata: &BackupMetadata,
) -> Result<(), BackupError> {
    let out = |e: io::Error| fail(partial.display(), e);
    // The inner archive goes to an unnamed temp file beside the backup: the
    // outer tar needs its size before its bytes.
    let mut inner = tempfile::tempfile_in(output).map_err(|e| fail(output.display(), e))?;
    {
        let gz = GzEncoder::new(BufWriter::new(&mut inner), Compression::default());
        let mut tar = tar::Builder::new(gz);
        tar.follow_symlinks(false);
        let excluded = IgnoreList::only(EXCLUDED).map_err(|e| fail("exclusions", e))?;
        let skip = fs::canonicalize(output).ok();
        tar.append_dir(DATA, config_dir)
            .map_err(|e| fail(config_dir.display(), e))?;
        add_folder(
            &mut tar,
            config_dir,
            Path::new(""),
            &excluded,
            skip.as_deref(),
        )?;
        let gz = tar.into_inner().map_err(out)?;
        gz.finish().map_err(out)?.flush().map_err(out)?;
    }
    let inner_size = inner.stream_position().map_err(out)?;
    inner.rewind().map_err(out)?;

    let file = File::create(partial).map_err(out)?;
    let mut tar = tar::Builder::new(BufWriter::new(file));
    let json = serde_json::to_vec(metadata).map_err(|e| fail("backup.json", e))?;
    let mtime = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    tar.append(
        &outer_header(METADATA, json.len() as u64, mtime),
        json.as_slice(),
    )
    .map_err(out)?;
    tar.append(
        &outer_header(CORE_ARCHIVE, inner_size, mtime),
        BufReader::new(inner),
    )
    .map_err(out)?;
    let writer = tar.into_inner().map_err(out)?;
    let file = writer.into_inner().map_err(|e| out(e.into_error()))?;
    file.sync_all().map_err(out)
}

/// A header named exactly `name`, `./` kept as Home Assistant writes it
/// (the tar crate's `set_path` would drop it).
fn outer_header(name: &str, size: u64, mtime: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_mtime(mtime);
    header.set_size(size);
    if let Some(ustar) = header.as_ustar_mut() {
        ustar.name[..name.len()].copy_from_slice(name.as_bytes());
    }
    header.set_cksum();
    header
}

/// Adds `dir`'s entries, sorted, as `data/<rel>/…`.
fn add_folder<W: Write>(
    tar: &mut tar::Builder<W>,
    dir: &Path,
    rel: &Path,
    excluded: &IgnoreList,
    skip: Option<&Path>,
) -> Result<(), BackupError> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(|e| fail(dir.display(), e))?
        .filter_map(Result::ok)
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let rel = rel.join(entry.file_name());
        if excluded.is_ignored(&rel) {
            continue;
        }
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let name = Path::new(DATA).join(&rel);
        if kind.is_dir() {
            // The backup folder itself, when it sits inside the config folder
            // under another name.
            if skip.is_some_and(|s| fs::canonicalize(&path).is_ok_and(|p| p == s)) {
                continue;
            }
            tar.append_dir(&name, &path)
                .map_err(|e| fail(path.display(), e))?;
            add_folder(tar, &path, &rel, excluded, skip)?;
        } else {
            match tar.append_path_with_name(&path, &name) {
                Ok(()) => {}
                // Home Assistant replaces its files by renames all day; one
                // gone since the listing is simply not in this backup.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(fail(format!("adding {}", path.display()), e)),
            }
        }
    }
    Ok(())
}

/// This tool's backups in `output`, oldest first.
pub fn list(output: &Path) -> Result<Vec<(PathBuf, BackupMetadata)>, BackupError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(output).map_err(|e| fail(output.display(), e))? {
        let Ok(entry) = entry else { continue };
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "tar") {
            continue;
        }
        if let Ok(metadata) = read_metadata(&path)
            && metadata.name.starts_with(NAME_PREFIX)
        {
            found.push((path, metadata));
        }
    }
    // Dates are all UTC with the same precision: text order is time order.
    found.sort_by(|a, b| (&a.1.date, &a.0).cmp(&(&b.1.date, &b.0)));
    Ok(found)
}

/// Deletes all but the newest `keep` of this tool's backups.
fn prune(output: &Path, keep: usize) -> Result<Vec<PathBuf>, BackupError> {
    let found = list(output)?;
    let excess = found.len().saturating_sub(keep);
    let mut deleted = Vec::new();
    for (path, _) in found.into_iter().take(excess) {
        fs::remove_file(&path).map_err(|e| fail(path.display(), e))?;
        deleted.push(path);
    }
    Ok(deleted)
}

/// Reads `backup.json` from a backup.
pub fn read_metadata(backup: &Path) -> Result<BackupMetadata, BackupError> {
    let file = File::open(backup).map_err(|e| fail(backup.display(), e))?;
    let mut archive = tar::Archive::new(BufReader::new(file));
    for entry in archive.entries().map_err(|e| fail(backup.display(), e))? {
        let entry = entry.map_err(|e| fail(backup.display(), e))?;
        if is_named(&entry, METADATA) {
            return serde_json::from_reader(entry)
                .map_err(|e| fail(format!("{}: backup.json", backup.display()), e));
        }
    }
    Err(BackupError(format!(
        "{}: no backup.json: not a Home Assistant backup",
        backup.display()
    )))
}

fn is_named<R: Read>(entry: &tar::Entry<'_, R>, name: &str) -> bool {
    entry
        .path()
        .is_ok_and(|p| p == Path::new(name) || p == Path::new(name.trim_start_matches("./")))
}

/// Restores the config folder of `backup` into `dir` (created if missing):
/// every file of the backup is written, files not in it are left alone.
/// Returns the number of files written.
pub fn restore(backup: &Path, dir: &Path) -> Result<usize, BackupError> {
    let file = File::open(backup).map_err(|e| fail(backup.display(), e))?;
    let mut archive = tar::Archive::new(BufReader::new(file));
    fs::create_dir_all(dir).map_err(|e| fail(dir.display(), e))?;
    for entry in archive.entries().map_err(|e| fail(backup.display(), e))? {
        let entry = entry.map_err(|e| fail(backup.display(), e))?;
        if !is_named(&entry, CORE_ARCHIVE) {
            continue;
        }
        let mut inner = tar::Archive::new(GzDecoder::new(entry));
        let mut files = 0;
        let what = || format!("{}: homeassistant.tar.gz", backup.display());
        for entry in inner.entries().map_err(|e| fail(what(), e))? {
            let mut entry = entry.map_err(|e| fail(what(), e))?;
            let path = entry.path().map_err(|e| fail(what(), e))?.into_owned();
            let Ok(rel) = path.strip_prefix(DATA) else {
                continue;
            };
            // Nothing may land outside `dir`.
            if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
                return Err(BackupError(format!(
                    "{}: refusing the unsafe path {}",
                    what(),
                    path.display()
                )));
            }
            if rel.as_os_str().is_empty() {
                continue;
            }
            let target = dir.join(rel);
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent).map_err(|e| fail(parent.display(), e))?;
            }
            if entry.header().entry_type().is_file() {
                files += 1;
            }
            entry
                .unpack(&target)
                .map_err(|e| fail(target.display(), e))?;
        }
        return Ok(files);
    }
    Err(BackupError(format!(
        "{}: no homeassistant.tar.gz: not a Home Assistant core backup",
        backup.display()
    )))
}

/// Home Assistant's `isoformat()` of an aware UTC time, microseconds included.
fn iso_date(time: SystemTime) -> String {
    let text = humantime::format_rfc3339_micros(time).to_string();
    format!("{}+00:00", text.trim_end_matches('Z'))
}

/// Home Assistant's slug: the first 8 hex digits of SHA-1 of
/// `"{date} - {name}"`, lowercased.
fn slug(date: &str, name: &str) -> String {
    let mut hasher = gix::hash::hasher(gix::hash::Kind::Sha1);
    hasher.update(format!("{date} - {name}").to_lowercase().as_bytes());
    match hasher.try_finalize() {
        Ok(id) => id.to_hex_with_len(8).to_string(),
        // Only a SHA-1 collision attack trips this; any unique name does.
        Err(_) => format!("{:08x}", fastrand::u32(..)),
    }
}
