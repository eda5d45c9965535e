//! Wakes the device task when its device may have appeared: inotify on the
//! folders it can appear in, plus a short poll for what inotify misses
//! (folders that do not exist yet, sysfs, bind mounts).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::Notify;
use tokio::time::{Interval, MissedTickBehavior};

/// How often to look even without an event.
const POLL: Duration = Duration::from_millis(250);

#[derive(Debug)]
pub struct DeviceWatcher {
    changed: Arc<Notify>,
    poll: Interval,
    // Kept alive for its inotify watches; `None` when none could be set.
    _watcher: Option<notify::RecommendedWatcher>,
}

impl DeviceWatcher {
    /// Watches the nearest existing folder of each of `dirs`.
    pub fn new(dirs: &[PathBuf]) -> Self {
        let changed = Arc::new(Notify::new());
        let notify = changed.clone();
        let watcher = notify::recommended_watcher(move |_event: notify::Result<notify::Event>| {
            // Any event is worth a look; a stored permit coalesces bursts.
            notify.notify_one();
        });
        let watcher = watcher.ok().map(|mut watcher| {
            for dir in dirs {
                if let Some(existing) = nearest_existing(dir) {
                    // A folder we cannot watch is still covered by the poll.
                    let _ = watcher.watch(existing, RecursiveMode::NonRecursive);
                }
            }
            watcher
        });
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            changed,
            poll,
            _watcher: watcher,
        }
    }

    /// Completes on the next folder event or poll tick.
    pub async fn changed(&mut self) {
        tokio::select! {
            _ = self.changed.notified() => {}
            _ = self.poll.tick() => {}
        }
    }
}

fn nearest_existing(dir: &Path) -> Option<&Path> {
    dir.ancestors().find(|d| d.is_dir())
}
