//! Reading a binary's YAML config file into its typed config.
//!
//! Errors name the file, the line and column, and the key path, so an operator
//! can fix a ConfigMap without guessing: `broker.yaml:4:9: listeners[0].port: invalid u16`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Why a config file could not be used.
#[derive(Debug)]
pub struct ConfigError {
    pub path: PathBuf,
    /// 1-based line and column, when the problem is inside the file.
    pub position: Option<(u64, u64)>,
    /// Dotted path of the offending key, e.g. `listeners[0].port`.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        f.write_str(": ")?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Reads and deserializes `path`. An empty file (or one with only comments)
/// means "all defaults", like an absent key.
pub fn load_yaml<T: DeserializeOwned + Default>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_owned(),
        position: None,
        key: None,
        message: format!("cannot read config file: {e}"),
    })?;
    parse_yaml(&text).map_err(|mut e| {
        e.path = path.to_owned();
        e
    })
}

/// Deserializes YAML text; the error's `path` is left empty for the caller.
pub fn parse_yaml<T: DeserializeOwned + Default>(text: &str) -> Result<T, ConfigError> {
    if is_blank_yaml(text) {
        return Ok(T::default());
    }
    let mut key = None;
    let result = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            // serde_path_to_error says "." for the root, which names nothing.
            if path != "." {
                key = Some(path);
            }
            e.into_inner()
        })
    });
    result.map_err(|e| {
        let bare = e.without_snippet();
        ConfigError {
            path: PathBuf::new(),
            position: bare.location().map(|l| (l.line(), l.column())),
            key,
            message: strip_position(&bare.to_string()),
        }
    })
}

/// The `admin:` section every binary's config file accepts. The
/// `--admin-listen` flag, or its env var, wins over it: kubelet's probes and
/// the manifests name the port, and a flag is the easiest thing to override.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin server; the component's own port on all
    /// interfaces when absent.
    pub listen: Option<SocketAddr>,
}

/// Serde helpers for durations written as `"10s"`, `"500ms"`, `"1h 30m"`:
/// `#[serde(with = "hass_runtime::config::duration")]`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    /// `10s`, `1m 30s`, `24h`: the one parser and error text for every
    /// config file and flag.
    pub fn parse(text: &str) -> Result<Duration, String> {
        humantime::parse_duration(text)
            .map_err(|e| format!("{text:?} is not a duration like \"10s\": {e}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(de)?;
        parse(&text).map_err(serde::de::Error::custom)
    }
}

/// `Option<Duration>`: a duration as [`duration`] reads it, or `null`.
pub mod optional_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(de)?
            .map(|text| super::duration::parse(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// True when the text holds no YAML node: empty, blank, comments, or `---`.
fn is_blank_yaml(text: &str) -> bool {
    text.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line == "---" || line == "..."
    })
}

/// serde-saphyr puts the position in its messages, as "error: line L column
/// C: msg" or "msg at line L, column C"; we print it as `file:line:col` instead.
fn strip_position(message: &str) -> String {
    let first = message.lines().next().unwrap_or_default();
    let mut text = first.strip_prefix("error: ").unwrap_or(first);
    if let Some((_, tail)) = text
        .strip_prefix("line ")
        .and_then(|after_line| after_line.split_once(": "))
    {
        text = tail;
    }
    if let Some((head, _)) = text.rsplit_once(" at line ") {
        text = head;
    }
    text.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Listener {
        port: u16,
        name: String,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[serde(default)]
        listeners: Vec<Listener>,
        #[serde(default)]
        enabled: bool,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Required {
        data_dir: PathBuf,
    }

    #[test]
    fn unknown_key_names_line_column_and_key() {
        let e = parse_yaml::<Sample>("enabled: true\nlisteners:\n  - port: 1\n    nmae: x\n")
            .unwrap_err();
        assert_eq!(e.position, Some((4, 5)));
        assert!(e.message.contains("unknown field `nmae`"), "{e}");
        assert_eq!(e.key.as_deref(), Some("listeners[0].nmae"));
    }

    #[test]
    fn wrong_type_names_the_key_path() {
        let e = parse_yaml::<Sample>("listeners:\n  - port: 70000\n").unwrap_err();
        assert_eq!(e.position, Some((2, 11)));
        assert_eq!(e.key.as_deref(), Some("listeners[0].port"));
        assert_eq!(e.to_string(), ":2:11: listeners[0].port: invalid u16");
    }

    #[test]
    fn missing_required_value_is_an_error() {
        let e = parse_yaml::<Required>("{}\n").unwrap_err();
        assert!(e.message.contains("missing field `data_dir`"), "{e}");
    }

    #[test]
    fn yaml_syntax_error_has_a_position() {
        let e = parse_yaml::<Sample>("listeners: [\n").unwrap_err();
        assert!(e.position.is_some(), "{e:?}");
    }

    #[test]
    fn blank_and_comment_only_files_mean_defaults() {
        assert_eq!(parse_yaml::<Sample>("").unwrap(), Sample::default());
        assert_eq!(
            parse_yaml::<Sample>("# nothing yet\n\n---\n").unwrap(),
            Sample::default()
        );
    }

    #[test]
    fn missing_file_says_which() {
        let e = load_yaml::<Sample>(Path::new("/nonexistent/broker.yaml")).unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("/nonexistent/broker.yaml: cannot read config file"),
            "{text}"
        );
    }
}
