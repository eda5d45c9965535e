//! Capped exponential backoff: how every component paces its retries; with
//! jitter where many clients restarted together must not retry together.

use std::time::Duration;

/// Doubles from `base` up to `cap`; `reset` after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempts: u32,
    jitter: bool,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap: cap.max(base),
            attempts: 0,
            jitter: false,
        }
    }

    /// Each pause scaled by a random factor in [0.5, 1], for clients of a
    /// shared server (Home Assistant restarting under every sidecar).
    pub fn with_jitter(mut self) -> Self {
        self.jitter = true;
        self
    }

    /// The pause to take now; the one after it is up to twice as long.
    pub fn next_delay(&mut self) -> Duration {
        // 2^20 times any sane base is past any sane cap.
        let exponent = self.attempts.min(20);
        self.attempts = self.attempts.saturating_add(1);
        let full = self.base.saturating_mul(1 << exponent).min(self.cap);
        if self.jitter {
            full.mul_f64(0.5 + fastrand::f64() / 2.0)
        } else {
            full
        }
    }

    /// Pauses taken since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    pub fn reset(&mut self) {
        self.attempts = 0;
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

    #[test]
    fn jitter_keeps_each_pause_between_half_and_all_of_it() {
        let ms = Duration::from_millis;
        for _ in 0..100 {
            let mut b = Backoff::new(ms(100), Duration::from_secs(2)).with_jitter();
            let delays: Vec<Duration> = (0..40).map(|_| b.next_delay()).collect();
            let within = |d: Duration, full: Duration| d >= full / 2 && d <= full;
            assert!(within(delays[0], ms(100)), "{delays:?}");
            assert!(within(delays[3], ms(800)), "{delays:?}");
            assert!(within(delays[39], ms(2000)), "{delays:?}");
            assert_eq!(b.attempts(), 40);
            b.reset();
            assert!(within(b.next_delay(), ms(100)));
        }
    }
}
