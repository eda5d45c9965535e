//! Capped exponential backoff, and a pause that keeps the probe's heartbeat
//! beating and ends early on shutdown.

use std::time::Duration;

use hass_runtime::liveness::Heartbeat;
use hass_runtime::shutdown::Shutdown;

/// Doubles from `base` up to `cap`; `reset` after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap: cap.max(base),
            next: base,
        }
    }

    /// The pause to take now; the one after it is twice as long, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.cap);
        delay
    }

    pub fn reset(&mut self) {
        self.next = self.base;
    }
}

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
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(step) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
        let delays: Vec<u64> = (0..5).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 5, 5]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }
}
