//! Wall-clock time as metrics (`*_timestamp_seconds`) and files record it:
//! seconds since the Unix epoch, 0 for a clock set before 1970.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in whole seconds (file times, tar headers, history records).
pub fn unix_seconds() -> u64 {
    unix_seconds_f64() as u64
}

/// The time `secs` seconds after the epoch, as a file recorded it; `None`
/// past what the platform's clock can hold (a corrupt or hostile file).
pub fn from_unix_seconds(secs: u64) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs))
}

/// Now, in seconds with a fraction (timestamp gauges).
pub fn unix_seconds_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}
