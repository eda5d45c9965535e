//! Liveness from heartbeats: `/healthz` fails when a loop that promised to beat
//! every so often has gone silent, i.e. the process is alive but wedged.
//!
//! A runtime so stuck it cannot answer HTTP is caught by the probe's timeout;
//! heartbeats catch the subtler case of one task stuck while the rest serve.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Liveness {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    epoch: Instant,
    beats: Mutex<BTreeMap<String, Arc<BeatState>>>,
}

#[derive(Debug)]
struct BeatState {
    /// Milliseconds since `epoch` at the last beat.
    last_ms: AtomicU64,
    max_silence: Duration,
}

/// A handle a loop calls `beat()` on; clones share the heartbeat.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    state: Arc<BeatState>,
    epoch: Instant,
}

/// A heartbeat that has been silent too long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Silent {
    pub name: String,
    pub silent_for: Duration,
    pub max_silence: Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                epoch: Instant::now(),
                beats: Mutex::new(BTreeMap::new()),
            }),
        }
    }
}

impl Liveness {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a heartbeat that counts as beating now and must beat again
    /// within `max_silence`. Re-registering a name replaces it.
    pub fn register(&self, name: impl Into<String>, max_silence: Duration) -> Heartbeat {
        let state = Arc::new(BeatState {
            last_ms: AtomicU64::new(millis_since(self.inner.epoch)),
            max_silence,
        });
        self.inner
            .beats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.into(), state.clone());
        Heartbeat {
            state,
            epoch: self.inner.epoch,
        }
    }

    /// Every heartbeat that is overdue; empty means alive.
    pub fn silent(&self) -> Vec<Silent> {
        let now = millis_since(self.inner.epoch);
        let beats = self.inner.beats.lock().unwrap_or_else(|p| p.into_inner());
        beats
            .iter()
            .filter_map(|(name, state)| {
                let silent_for = Duration::from_millis(
                    now.saturating_sub(state.last_ms.load(Ordering::Relaxed)),
                );
                (silent_for > state.max_silence).then(|| Silent {
                    name: name.clone(),
                    silent_for,
                    max_silence: state.max_silence,
                })
            })
            .collect()
    }
}

impl Heartbeat {
    pub fn beat(&self) {
        self.state
            .last_ms
            .store(millis_since(self.epoch), Ordering::Relaxed);
    }
}

fn millis_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_heartbeat_is_reported_until_it_beats() {
        let liveness = Liveness::new();
        let beat = liveness.register("serial-loop", Duration::from_millis(20));
        assert!(liveness.silent().is_empty());
        std::thread::sleep(Duration::from_millis(60));
        let silent = liveness.silent();
        assert_eq!(silent.len(), 1);
        assert_eq!(silent[0].name, "serial-loop");
        beat.beat();
        assert!(liveness.silent().is_empty());
    }
}
