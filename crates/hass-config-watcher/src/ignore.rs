//! Which paths under the config folder are churn, not configuration: Home
//! Assistant writes its state (`.storage/`), database and logs there all day,
//! and none of it is ever read by the YAML loader.

use std::path::{Component, Path};

/// Home Assistant's own writes, ignored always.
pub(crate) const BUILT_IN: &[&str] = &[
    "/.storage/",
    "/.cloud/",
    // The watcher's own state (the Git source's applied revision).
    "/.hass-config-watcher/",
    "/deps/",
    "/tts/",
    "/backups/",
    ".git/",
    "__pycache__/",
    "/home-assistant_v2.db*",
    "/home-assistant.log*",
    "/.ha_run.lock",
    "*.log",
    // SQLite files of integrations (ZHA's zigbee.db) and their journals.
    "*.db",
    "*.db-journal",
    "*.db-wal",
    "*.db-shm",
];

/// A set of patterns, gitignore-like but simpler: a pattern is one or more path
/// parts, `*` matches within a part, `?` one character. A pattern starting with
/// `/` or holding an inner `/` is anchored at the config folder; otherwise it
/// matches at any depth. A matched folder ignores everything inside it; a
/// trailing `/` is for the reader only.
#[derive(Debug, Clone)]
pub struct IgnoreList {
    patterns: Vec<Pattern>,
}

#[derive(Debug, Clone)]
struct Pattern {
    parts: Vec<String>,
    anchored: bool,
}

impl IgnoreList {
    /// The built-in patterns plus `extra`.
    pub fn new(extra: &[String]) -> Result<Self, String> {
        let patterns = BUILT_IN
            .iter()
            .copied()
            .chain(extra.iter().map(String::as_str))
            .map(Pattern::parse)
            .collect::<Result<_, _>>()?;
        Ok(Self { patterns })
    }

    /// Exactly `patterns`, without the built-in ones.
    pub(crate) fn only(patterns: &[&str]) -> Result<Self, String> {
        let patterns = patterns
            .iter()
            .copied()
            .map(Pattern::parse)
            .collect::<Result<_, _>>()?;
        Ok(Self { patterns })
    }

    /// Whether `relative` (a path inside the config folder) is ignored.
    pub fn is_ignored(&self, relative: &Path) -> bool {
        let parts: Vec<&str> = relative
            .components()
            .filter_map(|c| match c {
                Component::Normal(part) => part.to_str(),
                _ => None,
            })
            .collect();
        self.patterns.iter().any(|p| p.matches(&parts))
    }
}

impl Pattern {
    fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim_end_matches('/');
        let anchored = trimmed.starts_with('/') || trimmed.trim_start_matches('/').contains('/');
        let parts: Vec<String> = trimmed
            .split('/')
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        if parts.is_empty() {
            return Err(format!("{text:?} matches nothing"));
        }
        if parts.iter().any(|p| p == "." || p == "..") {
            return Err(format!("{text:?}: `.` and `..` are not allowed"));
        }
        Ok(Self { parts, anchored })
    }

    /// True when the pattern matches the path or one of the folders it is in.
    fn matches(&self, path: &[&str]) -> bool {
        let n = self.parts.len();
        if path.len() < n {
            return false;
        }
        let starts = if self.anchored {
            0..1
        } else {
            0..path.len() - n + 1
        };
        starts.into_iter().any(|start| {
            self.parts
                .iter()
                .zip(&path[start..start + n])
                .all(|(pattern, part)| glob(pattern.as_bytes(), part.as_bytes()))
        })
    }
}

/// `*` and `?` matching of one path part.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|i| glob(rest, &text[i..])),
        Some((b'?', rest)) => !text.is_empty() && glob(rest, &text[1..]),
        Some((c, rest)) => text.first() == Some(c) && glob(rest, &text[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ignored(list: &IgnoreList, path: &str) -> bool {
        list.is_ignored(Path::new(path))
    }

    #[test]
    fn home_assistant_churn_is_ignored() {
        let list = IgnoreList::new(&[]).unwrap();
        for path in [
            ".storage/core.restore_state",
            ".storage",
            "home-assistant_v2.db",
            "home-assistant_v2.db-wal",
            "home-assistant.log",
            "home-assistant.log.1",
            "home-assistant.log.fault",
            "deps/lib/python3.12/x.py",
            "tts/abc.mp3",
            "backups/x.tar",
            "custom_components/foo/__pycache__/a.pyc",
            ".cloud/x",
            ".git/index",
            "zigbee.db",
            "packages/.git/HEAD",
        ] {
            assert!(ignored(&list, path), "{path}");
        }
        for path in [
            "configuration.yaml",
            "automations.yaml",
            "packages/storage/x.yaml",
            "..data",
            "..2026_01_01_00_00_00.1/configuration.yaml",
            "custom_components/foo/__init__.py",
            "www/deps/x.js",
            "secrets.yaml",
        ] {
            assert!(!ignored(&list, path), "{path}");
        }
    }

    #[test]
    fn extra_patterns() {
        let list = IgnoreList::new(&[
            "www/".to_owned(),
            "/media/cam?.jpg".to_owned(),
            "a/b*".to_owned(),
        ])
        .unwrap();
        assert!(ignored(&list, "www/x.js"));
        assert!(ignored(&list, "packages/www/x.js"));
        assert!(ignored(&list, "media/cam1.jpg"));
        assert!(!ignored(&list, "sub/media/cam1.jpg"));
        assert!(ignored(&list, "a/bc/d"));
        assert!(!ignored(&list, "x/a/bc"));
        assert!(IgnoreList::new(&["/".to_owned()]).is_err());
        assert!(IgnoreList::new(&["../x".to_owned()]).is_err());
    }
}
