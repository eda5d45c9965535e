//! The files of a config folder as files: which of them are configuration
//! (the allowlist the history commits and the Git source writes), reading
//! them without following a link out of the folder, and replacing one
//! atomically without writing through a link.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::ignore::IgnoreList;

/// Folders taken whole, whatever their files are called.
const WHOLE_FOLDERS: &[&str] = &["blueprints", "custom_templates"];
pub(crate) const SECRETS_FILE: &str = "secrets.yaml";
/// Files bigger than this are not configuration; they are left out.
pub(crate) const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;

/// Whether `rel` (a file's path inside the config folder) is configuration:
/// YAML anywhere, everything under `blueprints/` and `custom_templates/`;
/// never a dot-entry or anything under one, and `secrets.yaml` only when
/// asked for.
pub(crate) fn is_allowlisted(rel: &Path, include_secrets: bool) -> bool {
    let mut parts = Vec::new();
    for part in rel.components() {
        let Component::Normal(part) = part else {
            return false;
        };
        let Some(part) = part.to_str() else {
            return false;
        };
        if part.starts_with('.') {
            return false;
        }
        parts.push(part);
    }
    let Some(&name) = parts.last() else {
        return false;
    };
    if name == SECRETS_FILE && !include_secrets {
        return false;
    }
    let whole = parts.len() > 1 && WHOLE_FOLDERS.contains(&parts[0]);
    whole || name.ends_with(".yaml")
}

/// Which files [`read_files`] returns.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Keep {
    /// The allowlist; `gitignore`: the top-level `.gitignore` too.
    Allowlist {
        include_secrets: bool,
        gitignore: bool,
    },
    /// What the validator may read: the allowlist with `secrets.yaml`, and
    /// `*.yml` for the odd `!include`; not media or `custom_components/`.
    Readable,
}

/// The files under `dir` that `keep` selects, by path relative to it, each
/// at most [`MAX_FILE_BYTES`]. Folders are entered only when real, never
/// through a link (Home Assistant's `include_dir_*` rule too); a link to a
/// file is read only when it resolves inside the folder (a ConfigMap's
/// `..data`), so `evil.yaml -> /etc/shadow` is never read.
pub(crate) fn read_files(
    dir: &Path,
    ignore: &IgnoreList,
    keep: Keep,
) -> Result<BTreeMap<PathBuf, Vec<u8>>, String> {
    let root = fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files = BTreeMap::new();
    collect(&root, dir, Path::new(""), ignore, keep, &mut files)?;
    Ok(files)
}

fn collect(
    root: &Path,
    dir: &Path,
    rel: &Path,
    ignore: &IgnoreList,
    keep: Keep,
    files: &mut BTreeMap<PathBuf, Vec<u8>>,
) -> Result<(), String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let name = entry.file_name();
        let Some(name_text) = name.to_str() else {
            continue;
        };
        let rel = rel.join(&name);
        let is_gitignore = rel.as_os_str() == ".gitignore"
            && matches!(
                keep,
                Keep::Allowlist {
                    gitignore: true,
                    ..
                }
            );
        if (name_text.starts_with('.') && !is_gitignore) || ignore.is_ignored(&rel) {
            continue;
        }
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            collect(root, &path, &rel, ignore, keep, files)?;
            continue;
        }
        let wanted = match keep {
            Keep::Allowlist {
                include_secrets, ..
            } => is_gitignore || is_allowlisted(&rel, include_secrets),
            Keep::Readable => is_allowlisted(&rel, true) || name_text.ends_with(".yml"),
        };
        if !wanted {
            continue;
        }
        let path = if kind.is_symlink() {
            match fs::canonicalize(&path) {
                Ok(target) if target.starts_with(root) => target,
                _ => continue,
            }
        } else {
            path
        };
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() && meta.len() <= MAX_FILE_BYTES => {}
            _ => continue,
        }
        match fs::read(&path) {
            Ok(bytes) => {
                files.insert(rel, bytes);
            }
            // Deleted between listing and reading: the next change sees it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
    Ok(())
}

/// What is at `rel` inside `root` now, for comparing before replacing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OnDisk {
    Missing,
    File(Vec<u8>),
    /// A link, a folder, a device, a file too big, or a path through a
    /// link: never replaced.
    Other,
}

/// Reads `rel` inside `root` without following a link anywhere on the way.
pub(crate) fn on_disk(root: &Path, rel: &Path) -> OnDisk {
    let mut path = root.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    for (i, part) in parts.iter().enumerate() {
        let Component::Normal(part) = part else {
            return OnDisk::Other;
        };
        path.push(part);
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return OnDisk::Missing,
            Err(_) => return OnDisk::Other,
        };
        let last = i + 1 == parts.len();
        let fits = if last {
            meta.is_file() && meta.len() <= MAX_FILE_BYTES
        } else {
            meta.is_dir()
        };
        if !fits {
            return OnDisk::Other;
        }
    }
    match fs::read(&path) {
        Ok(bytes) => OnDisk::File(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => OnDisk::Missing,
        Err(_) => OnDisk::Other,
    }
}

/// Replaces (or creates) `rel` inside `root` with `bytes`: written to a
/// new file beside it, synced, renamed over it, the folder synced, so Home
/// Assistant reads the old file or the new one, never half of one. Missing
/// folders are created; a link anywhere on the path is refused.
pub(crate) fn write_atomically(root: &Path, rel: &Path, bytes: &[u8]) -> io::Result<()> {
    let (dir, name) = parent_of(root, rel, true)?;
    let target = dir.join(&name);
    let mode = match fs::symlink_metadata(&target) {
        Ok(meta) if meta.is_file() => meta.permissions().mode() & 0o777,
        Ok(_) => return Err(refused(rel, "is not a regular file")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0o644,
        Err(e) => return Err(e),
    };
    let temp = dir.join(format!(
        ".{}.hass-config-watcher-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = fs::remove_file(&temp);
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, &target)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written?;
    sync_dir(&dir)
}

/// Removes the file `rel` inside `root`, refusing anything but a regular
/// file reached without a link.
pub(crate) fn remove(root: &Path, rel: &Path) -> io::Result<()> {
    let (dir, name) = parent_of(root, rel, false)?;
    let target = dir.join(name);
    match fs::symlink_metadata(&target) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => return Err(refused(rel, "is not a regular file")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    fs::remove_file(&target)?;
    sync_dir(&dir)
}

fn refused(rel: &Path, why: &str) -> io::Error {
    io::Error::other(format!("{}: {why}", rel.display()))
}

/// The parent folder of `rel` inside `root` (created where missing when
/// `create`), and the file name.
fn parent_of(root: &Path, rel: &Path, create: bool) -> io::Result<(PathBuf, std::ffi::OsString)> {
    let mut parts = Vec::new();
    for part in rel.components() {
        match part {
            Component::Normal(part) => parts.push(part.to_os_string()),
            _ => return Err(refused(rel, "is not a plain relative path")),
        }
    }
    let Some(name) = parts.pop() else {
        return Err(refused(rel, "is empty"));
    };
    let mut dir = root.to_path_buf();
    for part in parts {
        dir.push(part);
        match fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(refused(rel, "passes through a link or a file")),
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => fs::create_dir(&dir)?,
            Err(e) => return Err(e),
        }
    }
    Ok((dir, name))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Config-folder paths as a log line or a notification shows them: a file
/// name is the folder's (or a Git push's), so each is escaped and cut.
pub(crate) fn shown_paths(paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .map(|p| hass_runtime::logging::Untrusted(&p.display().to_string()).to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist() {
        for (path, secrets, expected) in [
            ("configuration.yaml", false, true),
            ("packages/lights.yaml", false, true),
            ("secrets.yaml", false, false),
            ("secrets.yaml", true, true),
            ("packages/secrets.yaml", false, false),
            ("blueprints/automation/x.yml", false, true),
            ("custom_templates/macros.jinja", false, true),
            ("custom_templates", false, false),
            ("notes.txt", false, false),
            (".storage/core.config.yaml", false, false),
            ("packages/.hidden.yaml", false, false),
            ("../outside.yaml", false, false),
            ("/etc/passwd.yaml", false, false),
        ] {
            assert_eq!(
                is_allowlisted(Path::new(path), secrets),
                expected,
                "{path} (secrets {secrets})"
            );
        }
    }

    #[test]
    fn writes_replace_files_and_refuse_links() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = dir.path();
        write_atomically(root, Path::new("packages/a.yaml"), b"a: 1\n").unwrap();
        assert_eq!(
            on_disk(root, Path::new("packages/a.yaml")),
            OnDisk::File(b"a: 1\n".to_vec())
        );
        write_atomically(root, Path::new("packages/a.yaml"), b"a: 2\n").unwrap();
        assert_eq!(fs::read(root.join("packages/a.yaml")).unwrap(), b"a: 2\n");

        std::os::unix::fs::symlink(outside.path(), root.join("linked")).unwrap();
        assert!(write_atomically(root, Path::new("linked/b.yaml"), b"x").is_err());
        assert_eq!(on_disk(root, Path::new("linked/b.yaml")), OnDisk::Other);
        std::os::unix::fs::symlink(outside.path().join("c.yaml"), root.join("c.yaml")).unwrap();
        assert!(write_atomically(root, Path::new("c.yaml"), b"x").is_err());
        assert!(remove(root, Path::new("c.yaml")).is_err());
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);

        remove(root, Path::new("packages/a.yaml")).unwrap();
        assert_eq!(on_disk(root, Path::new("packages/a.yaml")), OnDisk::Missing);
        // Nothing left behind but what was asked for.
        let left: Vec<_> = fs::read_dir(root.join("packages")).unwrap().collect();
        assert!(left.is_empty());
    }
}
