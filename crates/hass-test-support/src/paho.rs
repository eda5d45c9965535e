//! paho-mqtt, the client Home Assistant uses, as the tests drive it: one
//! script (`clients/paho_client.py`) whose subcommands each do one thing a
//! real client does and print one JSON object saying what it saw.

use std::path::PathBuf;

/// The script, for tests that pass it their own flags.
pub fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/paho_client.py")
}
