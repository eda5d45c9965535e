//! Test harness for hass-sidecars: the real parts tests run against. Free
//! ports, a throwaway PostgreSQL, socat pty pairs standing in for a USB stick,
//! spawned binaries probed over their admin port, and Python's OpenMetrics
//! parser for checking `/metrics` the way Prometheus reads it, and a real
//! Home Assistant in a cached root filesystem, an OCI registry, and a
//! real Mosquitto.
//!
//! Everything here fails loudly with a message saying what to install; a test
//! never skips because a tool is missing.

pub mod binary;
pub mod git;
pub mod home_assistant;
pub mod http;
pub mod mosquitto;
pub mod openmetrics;
pub mod paho;
pub mod ports;
pub mod postgres;
pub mod pty;
pub mod registry;
pub mod stand_in_ha;

pub use binary::{Restartable, SpawnedBinary};
pub use git::GitRemote;
pub use mosquitto::Mosquitto;
pub use ports::{free_addr, free_port};
pub use postgres::TempPostgres;
pub use pty::PtyPair;
pub use registry::TempRegistry;
pub use stand_in_ha::StandInHa;

use std::time::{Duration, Instant};

/// Polls `check` every 20 ms until it returns `Some`, or `None` after `timeout`.
pub fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
