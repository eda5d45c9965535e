//! A pause that keeps the probe's heartbeat beating and ends early on
//! shutdown.

use std::time::Duration;

use hass_runtime::liveness::Heartbeat;
use hass_runtime::shutdown::Shutdown;

/// How often a long pause beats the heartbeat; well under any `max_silence`.
const BEAT_EVERY: Duration = Duration::from_secs(1);

/// Sleeps `duration`, beating `heartbeat` along the way. Returns false when
/// shutdown started (the caller should return).
pub async fn pause(duration: Duration, shutdown: &Shutdown, heartbeat: &Heartbeat) -> bool {
    let deadline = tokio::time::Instant::now() + duration;
    loop {
        heartbeat.beat();
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return true;
        }
        let step = (deadline - now).min(BEAT_EVERY);
        if !shutdown.sleep(step).await {
            return false;
        }
    }
}
