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
use std::time::SystemTime;

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
    // Python packages installed at run time (hass-manifests' restricted
    // Home Assistant keeps them here): reinstalled on demand, like /deps/.
    "/.local/",
    "/tts/",
    "/.cache/",
    "/.git/",
    // Kubernetes' ConfigMap internals (`..data`, `..2026_12_06_…`): the
    // files they hold are backed up under the names the config uses.
    "/..*",
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
        let walk = Walk {
            excluded,
            skip: fs::canonicalize(output).ok(),
            root: fs::canonicalize(config_dir).map_err(|e| fail(config_dir.display(), e))?,
        };
        tar.append_dir(DATA, config_dir)
            .map_err(|e| fail(config_dir.display(), e))?;
        add_folder(&mut tar, config_dir, Path::new(""), &walk)?;
        let gz = tar.into_inner().map_err(out)?;
        gz.finish().map_err(out)?.flush().map_err(out)?;
    }
    let inner_size = inner.stream_position().map_err(out)?;
    inner.rewind().map_err(out)?;

    // Backups hold secrets.yaml and .storage/auth: readable by the owner only.
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(partial)
            .map_err(out)?
    };
    let mut tar = tar::Builder::new(BufWriter::new(file));
    let json = serde_json::to_vec(metadata).map_err(|e| fail("backup.json", e))?;
    let mtime = hass_runtime::clock::unix_seconds();
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

/// What a backup walks over and what it leaves out.
struct Walk {
    excluded: IgnoreList,
    /// The backup folder, when it sits inside the config folder.
    skip: Option<PathBuf>,
    /// The config folder, resolved: links are followed only to files in it.
    root: PathBuf,
}

/// Adds `dir`'s entries, sorted, as `data/<rel>/…`: folders and regular files;
/// a link as the file it points to when that is a regular file inside the
/// config folder (a ConfigMap's files are links into its `..data`), any other
/// link, FIFO or socket not at all, so a restore never meets one.
fn add_folder<W: Write>(
    tar: &mut tar::Builder<W>,
    dir: &Path,
    rel: &Path,
    walk: &Walk,
) -> Result<(), BackupError> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(|e| fail(dir.display(), e))?
        .filter_map(Result::ok)
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let rel = rel.join(entry.file_name());
        if walk.excluded.is_ignored(&rel) {
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
            if walk
                .skip
                .as_ref()
                .is_some_and(|s| fs::canonicalize(&path).is_ok_and(|p| &p == s))
            {
                continue;
            }
            tar.append_dir(&name, &path)
                .map_err(|e| fail(path.display(), e))?;
            add_folder(tar, &path, &rel, walk)?;
        } else {
            let source = if kind.is_file() {
                path.clone()
            } else if kind.is_symlink()
                && let Ok(target) = fs::canonicalize(&path)
                && target.starts_with(&walk.root)
                && target.is_file()
            {
                target
            } else {
                continue;
            };
            let added = {
                use std::os::unix::fs::OpenOptionsExt;
                // Swapped for a link or a FIFO since the look: not followed,
                // not waited on.
                fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                    .open(&source)
                    .and_then(|mut f| tar.append_file(&name, &mut f))
            };
            match added {
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

/// What a restore may write: a compressed archive of a few hundred KiB can
/// expand to gigabytes, and a restore runs against the volume Home Assistant
/// lives on.
#[derive(Debug, Clone, Copy, Default)]
pub struct RestoreLimits {
    /// Bytes of file content in all; `None`: [`RestoreLimits::for_backup`]'s.
    pub max_bytes: Option<u64>,
}

impl RestoreLimits {
    /// Without a set limit: 64 times the backup's own size, at least 64 MiB.
    /// A real config compresses 2-20 times (YAML, JSON, images not at all);
    /// a gzip bomb, a thousand times.
    pub fn for_backup(self, backup_size: u64) -> u64 {
        self.max_bytes
            .unwrap_or_else(|| backup_size.saturating_mul(64).max(64 << 20))
    }
}

/// An entry of `homeassistant.tar.gz` that a restore writes.
enum Planned {
    Dir(PathBuf),
    File { rel: PathBuf, mode: u32 },
}

/// Restores the config folder of `backup` into `dir` (created if missing):
/// every file of the backup is written, files not in it are left alone.
/// Returns the number of files written.
///
/// The whole archive is checked before anything is written: only regular
/// files and folders (Home Assistant's config has no use for links, and a
/// link entry is how an archive writes outside its folder), only plain
/// relative paths, no path through a link already in `dir`, and no more
/// than the limit's bytes. Each file is written beside its target and
/// renamed over it, so a link at the target is replaced, never followed.
pub fn restore(backup: &Path, dir: &Path, limits: RestoreLimits) -> Result<usize, BackupError> {
    let size = fs::metadata(backup)
        .map_err(|e| fail(backup.display(), e))?
        .len();
    let max_bytes = limits.for_backup(size);
    let what = || format!("{}: homeassistant.tar.gz", backup.display());
    let plan = with_core_archive(backup, |inner| plan_restore(inner, max_bytes))?
        .map_err(|e| BackupError(format!("{}: {e}", what())))?;
    fs::create_dir_all(dir).map_err(|e| fail(dir.display(), e))?;
    for entry in &plan {
        let rel = match entry {
            Planned::Dir(rel) | Planned::File { rel, .. } => rel,
        };
        refuse_links_on_the_way(dir, rel)?;
    }
    with_core_archive(backup, |inner| write_planned(inner, dir, &plan))?
}

/// Runs `f` on the inner archive of `backup`.
fn with_core_archive<T>(
    backup: &Path,
    f: impl FnOnce(&mut tar::Archive<GzDecoder<tar::Entry<'_, BufReader<File>>>>) -> T,
) -> Result<T, BackupError> {
    let file = File::open(backup).map_err(|e| fail(backup.display(), e))?;
    let mut archive = tar::Archive::new(BufReader::new(file));
    for entry in archive.entries().map_err(|e| fail(backup.display(), e))? {
        let entry = entry.map_err(|e| fail(backup.display(), e))?;
        if is_named(&entry, CORE_ARCHIVE) {
            return Ok(f(&mut tar::Archive::new(GzDecoder::new(entry))));
        }
    }
    Err(BackupError(format!(
        "{}: no homeassistant.tar.gz: not a Home Assistant core backup",
        backup.display()
    )))
}

/// The first pass: every entry checked, nothing written.
fn plan_restore<R: Read>(
    inner: &mut tar::Archive<R>,
    max_bytes: u64,
) -> Result<Vec<Planned>, String> {
    let mut plan = Vec::new();
    let mut bytes = 0u64;
    for entry in inner.entries().map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        let path = entry.path().map_err(|e| e.to_string())?.into_owned();
        let Ok(rel) = path.strip_prefix(DATA) else {
            continue;
        };
        // Nothing may land outside `dir`.
        if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(format!("refusing the unsafe path {}", path.display()));
        }
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            if !rel.as_os_str().is_empty() {
                plan.push(Planned::Dir(rel.to_path_buf()));
            }
        } else if kind.is_file() {
            bytes = bytes.saturating_add(entry.size());
            if bytes > max_bytes {
                return Err(format!(
                    "refusing to write more than {max_bytes} bytes (at {})",
                    path.display()
                ));
            }
            // No setuid, setgid or sticky bits, and nothing writable by others.
            let mode = entry.header().mode().unwrap_or(0o644) & 0o755;
            plan.push(Planned::File {
                rel: rel.to_path_buf(),
                mode,
            });
        } else {
            return Err(format!(
                "refusing {} ({}): a backup of a config folder holds only files and folders",
                path.display(),
                entry_kind(kind)
            ));
        }
    }
    Ok(plan)
}

fn entry_kind(kind: tar::EntryType) -> &'static str {
    match kind {
        tar::EntryType::Symlink => "a symbolic link",
        tar::EntryType::Link => "a hard link",
        tar::EntryType::Char | tar::EntryType::Block => "a device",
        tar::EntryType::Fifo => "a FIFO",
        _ => "an entry of another type",
    }
}

/// Refuses `rel` when a folder on its way inside `dir` is a link: writing
/// through it would land outside `dir`.
fn refuse_links_on_the_way(dir: &Path, rel: &Path) -> Result<(), BackupError> {
    let mut at = dir.to_path_buf();
    let parents = rel.parent().map(Path::components).into_iter().flatten();
    for part in parents {
        at.push(part);
        match fs::symlink_metadata(&at) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(BackupError(format!(
                    "refusing to restore {}: {} is a link",
                    rel.display(),
                    at.display()
                )));
            }
            Ok(meta) if !meta.is_dir() => {
                return Err(BackupError(format!(
                    "refusing to restore {}: {} is not a folder",
                    rel.display(),
                    at.display()
                )));
            }
            Ok(_) => {}
            // Missing: created as a plain folder below.
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

/// The second pass: the same archive, entry by entry against the plan.
fn write_planned<R: Read>(
    inner: &mut tar::Archive<R>,
    dir: &Path,
    plan: &[Planned],
) -> Result<usize, BackupError> {
    let changed = || BackupError("the backup changed while it was restored".to_owned());
    let mut planned = plan.iter();
    let mut files = 0;
    for entry in inner
        .entries()
        .map_err(|e| fail("homeassistant.tar.gz", e))?
    {
        let mut entry = entry.map_err(|e| fail("homeassistant.tar.gz", e))?;
        let kind = entry.header().entry_type();
        let in_data = entry.path().is_ok_and(|p| {
            p.strip_prefix(DATA)
                .is_ok_and(|r| !r.as_os_str().is_empty())
        });
        if !in_data || !(kind.is_dir() || kind.is_file()) {
            continue;
        }
        match planned.next().ok_or_else(changed)? {
            Planned::Dir(rel) => {
                let target = dir.join(rel);
                fs::create_dir_all(&target).map_err(|e| fail(target.display(), e))?;
            }
            Planned::File { rel, mode } => {
                let target = dir.join(rel);
                if let Some(parent) = target.parent() {
                    fs::create_dir_all(parent).map_err(|e| fail(parent.display(), e))?;
                }
                write_replacing(&mut entry, &target, *mode)
                    .map_err(|e| fail(target.display(), e))?;
                files += 1;
            }
        }
    }
    Ok(files)
}

/// Writes `content` to a new file beside `target`, then renames it over
/// `target`: whatever `target` was (a link included) is replaced.
fn write_replacing(content: &mut impl Read, target: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let parent = target.parent().unwrap_or(Path::new("."));
    let mut temp = tempfile::Builder::new()
        .prefix(".restore-")
        .tempfile_in(parent)?;
    io::copy(content, temp.as_file_mut())?;
    temp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))?;
    temp.persist(target).map_err(|e| e.error)?;
    Ok(())
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
