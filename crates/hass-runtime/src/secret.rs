//! Secrets (passwords, tokens) from files or env vars, never from flags or the
//! config file itself, held in a type that never prints its value.
//!
//! In YAML a secret is a reference: `{ file: /run/secrets/ha-token }` (a
//! mounted Kubernetes Secret) or `{ env: HA_TOKEN }`.

use std::fmt;
use std::path::{Path, PathBuf};

pub use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// Where a secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file holding the secret; one trailing newline is ignored.
    File(PathBuf),
    /// An environment variable holding the secret.
    Env(String),
}

/// What a secret looks like in YAML, for errors.
const SHAPE: &str = "a reference `{ file: PATH }` or `{ env: NAME }`";

/// By hand, not derived: serde's own errors quote the value they refused
/// (`unknown variant \`hunter2\``), and a value written where a reference
/// belongs is most likely the secret itself. These errors never show it.
impl<'de> Deserialize<'de> for SecretSource {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        de.deserialize_any(SourceVisitor)
    }
}

struct SourceVisitor;

impl SourceVisitor {
    fn not_a_reference<E: serde::de::Error>(what: &str) -> Result<SecretSource, E> {
        Err(E::custom(format!(
            "expected {SHAPE}, found {what} (not shown: it may be the secret itself; \
             put it in a file or an env var and name that here)"
        )))
    }
}

impl<'de> serde::de::Visitor<'de> for SourceVisitor {
    type Value = SecretSource;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(SHAPE)
    }

    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<SecretSource, E> {
        Self::not_a_reference("a string")
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<SecretSource, E> {
        Self::not_a_reference("a boolean")
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<SecretSource, E> {
        Self::not_a_reference("a number")
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<SecretSource, E> {
        Self::not_a_reference("a number")
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<SecretSource, E> {
        Self::not_a_reference("a number")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<SecretSource, E> {
        Self::not_a_reference("nothing")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<SecretSource, A::Error> {
        Self::not_a_reference("a list")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<SecretSource, A::Error> {
        use serde::de::Error;
        let Some(key) = map.next_key::<String>()? else {
            return Self::not_a_reference("an empty mapping");
        };
        let source = match key.as_str() {
            "file" => SecretSource::File(map.next_value()?),
            "env" => SecretSource::Env(map.next_value()?),
            _ => return Self::not_a_reference("another key"),
        };
        if map.next_key::<serde::de::IgnoredAny>()?.is_some() {
            return Err(A::Error::custom(format!(
                "expected {SHAPE}, with one key only"
            )));
        }
        Ok(source)
    }
}

impl SecretSource {
    pub fn load(&self) -> Result<SecretString, SecretError> {
        match self {
            Self::File(path) => read_file(path),
            Self::Env(name) => from_env(name),
        }
    }
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "file {}", path.display()),
            Self::Env(name) => write!(f, "env var {name}"),
        }
    }
}

/// Why a secret could not be read. Says where it looked, never what it found.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read secret file {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("secret file {} is not UTF-8 text", path.display())]
    NotText { path: PathBuf },
    #[error("secret file {} is empty", path.display())]
    EmptyFile { path: PathBuf },
    #[error("secret env var {name} is not set")]
    EnvMissing { name: String },
    #[error("secret env var {name} is empty or not UTF-8")]
    EnvUnusable { name: String },
}

/// Reads a secret file such as a mounted Kubernetes Secret key. Tools that
/// write these (`echo`, `kubectl create secret --from-file`) often leave one
/// trailing newline; it is not part of the secret.
pub fn read_file(path: &Path) -> Result<SecretString, SecretError> {
    let bytes = std::fs::read(path).map_err(|source| SecretError::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|_| SecretError::NotText {
        path: path.to_owned(),
    })?;
    let value = strip_one_newline(&text);
    if value.is_empty() {
        return Err(SecretError::EmptyFile {
            path: path.to_owned(),
        });
    }
    Ok(SecretString::from(value))
}

/// Reads a secret from an environment variable.
pub fn from_env(name: &str) -> Result<SecretString, SecretError> {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => Ok(SecretString::from(value)),
        Ok(_) | Err(std::env::VarError::NotUnicode(_)) => Err(SecretError::EnvUnusable {
            name: name.to_owned(),
        }),
        Err(std::env::VarError::NotPresent) => Err(SecretError::EnvMissing {
            name: name.to_owned(),
        }),
    }
}

fn strip_one_newline(text: &str) -> &str {
    text.strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Deserialize)]
    struct Holder {
        #[serde(default)]
        token: Option<SecretSource>,
    }

    /// A secret written inline, where a reference belongs, is refused
    /// without being quoted (serde's derived error said ``unknown variant
    /// `hunter2` ``).
    #[test]
    fn an_inline_secret_is_refused_without_being_echoed() {
        for inline in ["token: hunter2", "token: [hunter2]", "token: {hunter2: x}"] {
            let e = crate::config::parse_yaml::<Holder>(inline)
                .unwrap_err()
                .to_string();
            assert!(!e.contains("hunter2"), "{e}");
            assert!(e.contains("token"), "{e}");
        }
        let ok: Holder = crate::config::parse_yaml("token: { file: /run/secrets/t }").unwrap();
        assert_eq!(ok.token, Some(SecretSource::File("/run/secrets/t".into())));
        let ok: Holder = crate::config::parse_yaml("token: { env: HA_TOKEN }").unwrap();
        assert_eq!(ok.token, Some(SecretSource::Env("HA_TOKEN".into())));
        let two = crate::config::parse_yaml::<Holder>("token: { env: A, file: /b }");
        assert!(two.is_err());
    }

    #[test]
    fn file_secret_drops_one_trailing_newline_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cr3t\n\n").unwrap();
        let secret = read_file(&path).unwrap();
        assert_eq!(secret.expose_secret(), "s3cr3t\n");
    }

    #[test]
    fn debug_never_shows_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "hunter2-topsecret").unwrap();
        let secret = SecretSource::File(path).load().unwrap();
        let debug = format!("{secret:?} {:#?}", Some(&secret));
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("REDACTED"), "{debug}");
    }

    #[test]
    fn unreadable_file_names_the_path() {
        let e = read_file(Path::new("/nonexistent/ha-token")).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("/nonexistent/ha-token"), "{text}");
        assert!(text.contains("No such file"), "{text}");
    }

    #[test]
    fn empty_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(
            read_file(&path),
            Err(SecretError::EmptyFile { .. })
        ));
    }

    #[test]
    fn missing_env_var_names_it() {
        let e = from_env("HASS_RUNTIME_TEST_SURELY_UNSET").unwrap_err();
        assert_eq!(
            e.to_string(),
            "secret env var HASS_RUNTIME_TEST_SURELY_UNSET is not set"
        );
    }

    #[test]
    fn yaml_reference_forms() {
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Holder {
            token: Option<SecretSource>,
        }
        let h: Holder = crate::config::parse_yaml("token: { file: /run/secrets/t }\n").unwrap();
        assert_eq!(h.token, Some(SecretSource::File("/run/secrets/t".into())));
        let h: Holder = crate::config::parse_yaml("token:\n  env: HA_TOKEN\n").unwrap();
        assert_eq!(h.token, Some(SecretSource::Env("HA_TOKEN".into())));
        // An inline value is refused: secrets never live in the config file.
        assert!(crate::config::parse_yaml::<Holder>("token: hunter2\n").is_err());
    }
}
