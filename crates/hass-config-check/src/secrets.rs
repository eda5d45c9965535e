//! `!secret`: where Home Assistant looks for a secret, and the `secrets.yaml` files
//! it has read so far.
//!
//! Home Assistant (`Secrets.get` in `homeassistant/util/yaml/loader.py`) looks in the
//! folder of the file that says `!secret`, then in each parent folder while that is
//! still inside the config folder, and takes the first `secrets.yaml` that has the
//! name. The walk is lexical (`Path.parent`, `Path.relative_to`), so it follows the
//! path the file was included by, not where a symlink points.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::value::Mapping;

pub(crate) const SECRETS_FILE: &str = "secrets.yaml";

/// The folders whose `secrets.yaml` may hold a secret for `requester`, nearest first.
pub(crate) fn secret_dirs<'a>(requester: &'a Path, root: &Path) -> Vec<&'a Path> {
    let mut dirs = Vec::new();
    let mut current = requester;
    while let Some(parent) = current.parent() {
        if !parent.starts_with(root) {
            break;
        }
        dirs.push(parent);
        current = parent;
    }
    dirs
}

/// A `secrets.yaml` as Home Assistant ends up seeing it.
#[derive(Debug)]
pub(crate) enum SecretsFile {
    /// The file does not exist: Home Assistant treats it as empty.
    Missing,
    /// The file exists but cannot be used; the reason was reported where it is.
    Invalid,
    Loaded(Mapping),
}

/// Each `secrets.yaml` is read once per load, as Home Assistant caches them.
#[derive(Debug, Default)]
pub(crate) struct SecretsCache {
    files: HashMap<PathBuf, SecretsFile>,
}

impl SecretsCache {
    pub(crate) fn get(&self, path: &Path) -> Option<&SecretsFile> {
        self.files.get(path)
    }

    pub(crate) fn insert(&mut self, path: PathBuf, file: SecretsFile) {
        self.files.insert(path, file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_up_to_the_root_and_no_further() {
        let dirs = secret_dirs(
            Path::new("/config/pkgs/lights/a.yaml"),
            Path::new("/config"),
        );
        assert_eq!(
            dirs,
            [
                Path::new("/config/pkgs/lights"),
                Path::new("/config/pkgs"),
                Path::new("/config")
            ]
        );
        assert!(secret_dirs(Path::new("/elsewhere/a.yaml"), Path::new("/config")).is_empty());
    }
}
