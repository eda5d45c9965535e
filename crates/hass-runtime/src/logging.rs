//! Log setup: human-readable text by default, one JSON object per line with
//! `--log-format json`, level from `RUST_LOG` (default `info`). Logs go to
//! stderr so that stdout stays free for command output such as `--check-config`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Installs the global subscriber. A malformed `RUST_LOG` falls back to `info`
/// with a warning rather than stopping the process.
pub fn init(format: LogFormat) {
    let (filter, bad_filter) = match EnvFilter::try_from_default_env() {
        Ok(filter) => (filter, None),
        Err(e) => {
            let bad = std::env::var("RUST_LOG")
                .ok()
                .filter(|v| !v.is_empty())
                .map(|v| (v, e.to_string()));
            (EnvFilter::new("info"), bad)
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never in collected logs.
        .with_ansi(std::io::stderr().is_terminal());
    // try_init: a second call (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let Some((value, error)) = bad_filter {
        tracing::warn!(RUST_LOG = %value, %error, "ignoring malformed RUST_LOG; logging at info");
    }
}

/// A string a peer or a file supplied, shown in a log line: control
/// characters (newlines, terminal escapes) come out escaped, so a client id
/// cannot forge a log line, and more than [`Untrusted::MAX_CHARS`] characters
/// are cut, so a 64 KiB name does not become a 64 KiB line.
#[derive(Debug, Clone, Copy)]
pub struct Untrusted<'a>(pub &'a str);

impl Untrusted<'_> {
    pub const MAX_CHARS: usize = 256;
}

impl std::fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        for (i, c) in self.0.chars().enumerate() {
            if i == Self::MAX_CHARS {
                return f.write_str("…");
            }
            if c.is_control() || c == '\u{2028}' || c == '\u{2029}' {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// An error a retry loop meets again and again (a Git host down, a fetch
/// refused): said once while it lasts, not at every attempt, and again
/// once it changes or comes back after a success.
#[derive(Debug, Default)]
pub struct LastingError {
    last: Option<String>,
}

impl LastingError {
    /// Whether `text` is new and should be logged; remembers it.
    pub fn is_new(&mut self, text: &str) -> bool {
        if self.last.as_deref() == Some(text) {
            return false;
        }
        self.last = Some(text.to_owned());
        true
    }

    /// After a success: the next error is new, even the same one.
    pub fn clear(&mut self) {
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::{LastingError, Untrusted};

    #[test]
    fn a_lasting_error_is_new_once_until_it_changes_or_clears() {
        let mut lasting = LastingError::default();
        assert!(lasting.is_new("refused"));
        assert!(!lasting.is_new("refused"));
        assert!(lasting.is_new("timed out"));
        lasting.clear();
        assert!(lasting.is_new("timed out"));
    }

    #[test]
    fn control_characters_are_escaped_and_long_strings_cut() {
        let forged = "sensor\n2026-12-06T00:00:00Z  INFO admin logged in\u{1b}[2J";
        let shown = Untrusted(forged).to_string();
        assert!(
            !shown.contains('\n') && !shown.contains('\u{1b}'),
            "{shown}"
        );
        assert!(shown.contains("sensor\\n2026"), "{shown}");
        assert_eq!(Untrusted("Küche ✓").to_string(), "Küche ✓");
        let long = "x".repeat(10_000);
        assert_eq!(
            Untrusted(&long).to_string().chars().count(),
            Untrusted::MAX_CHARS + 1
        );
    }
}
