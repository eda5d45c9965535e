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
