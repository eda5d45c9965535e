//! Rolling back local edits Home Assistant does not take
//! (`rollback_local_edits`, off by default: it rewrites someone's edit).
//!
//! The allowlisted files as Home Assistant last took them are kept in
//! memory. A valid edit that changes what Home Assistant sees is watched
//! like a Git revision ([`crate::rollback`]); when Home Assistant does not
//! take it, each file that differs from that last good state, and is still
//! as the edit left it, is put back. Without it, a file Home Assistant
//! rejects stays on disk and is what it loads at its next restart.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hass_runtime::logging::Untrusted;
use hass_runtime::shutdown::Shutdown;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tracing::error;

use crate::config_files::{self, Keep, OnDisk};
use crate::ha_api::HaApi;
use crate::ignore::IgnoreList;
use crate::reloads::Verdict;
use crate::rollback::{Health, watch_over};
use crate::watch_metrics::WatchMetrics;

const NOTIFICATION_ID: &str = "hass_config_watcher_rollback";
/// secrets.yaml included: an edit of it can break a domain too. Kept in
/// memory only.
const KEEP: Keep = Keep::Allowlist {
    include_secrets: true,
    gitignore: false,
};

type Files = BTreeMap<PathBuf, Vec<u8>>;

/// The last good state and the watch in progress.
pub(crate) struct LocalRollback {
    root: PathBuf,
    ignore: IgnoreList,
    window: Duration,
    api: HaApi,
    metrics: WatchMetrics,
    shutdown: Shutdown,
    good: Arc<Mutex<Files>>,
    watching: Option<JoinHandle<()>>,
}

impl LocalRollback {
    pub(crate) fn new(
        root: PathBuf,
        ignore: IgnoreList,
        window: Duration,
        api: HaApi,
        metrics: WatchMetrics,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            root,
            ignore,
            window,
            api,
            metrics,
            shutdown,
            good: Arc::default(),
            watching: None,
        }
    }

    /// The folder now is what Home Assistant runs: at startup, and after a
    /// valid change it does not see (a comment).
    pub(crate) async fn take_as_good(&mut self) {
        if self.watching.as_ref().is_some_and(|w| !w.is_finished()) {
            // The edit being watched decides.
            return;
        }
        if let Some(files) = self.read().await {
            *lock(&self.good) = files;
        }
    }

    /// A change is being applied; `verdicts` was subscribed before it was
    /// sent. A later change replaces this watch: it is compared with the
    /// same last good state, so it covers both.
    pub(crate) async fn watch(&mut self, mut verdicts: broadcast::Receiver<Verdict>) {
        if let Some(previous) = self.watching.take() {
            previous.abort();
        }
        let Some(now) = self.read().await else {
            return;
        };
        let (root, window, api) = (self.root.clone(), self.window, self.api.clone());
        let (metrics, shutdown, good) = (
            self.metrics.clone(),
            self.shutdown.clone(),
            self.good.clone(),
        );
        self.watching = Some(tokio::spawn(async move {
            match watch_over(window, &mut verdicts, &api, &shutdown).await {
                Health::Healthy => *lock(&good) = now,
                Health::ShuttingDown => {}
                Health::Unhealthy(why) => {
                    let before = lock(&good).clone();
                    let restored =
                        tokio::task::spawn_blocking(move || restore(&root, &before, &now)).await;
                    report(restored, &why, &api, &metrics).await;
                }
            }
        }));
    }

    async fn read(&self) -> Option<Files> {
        let (root, ignore) = (self.root.clone(), self.ignore.clone());
        let read =
            tokio::task::spawn_blocking(move || config_files::read_files(&root, &ignore, KEEP))
                .await;
        match read {
            Ok(Ok(files)) => Some(files),
            Ok(Err(e)) => {
                error!("rollback: cannot read the config folder: {e}");
                None
            }
            Err(e) => {
                error!("rollback: the read task failed: {e}");
                None
            }
        }
    }
}

fn lock(good: &Mutex<Files>) -> std::sync::MutexGuard<'_, Files> {
    good.lock().unwrap_or_else(|p| p.into_inner())
}

/// Puts back each file that differs between `good` and `now` and is still
/// as `now` has it; returns those put back.
fn restore(root: &std::path::Path, good: &Files, now: &Files) -> Result<Vec<PathBuf>, String> {
    let paths: BTreeSet<&PathBuf> = good.keys().chain(now.keys()).collect();
    let mut restored = Vec::new();
    for rel in paths {
        let (was, is) = (good.get(rel), now.get(rel));
        if was == is {
            continue;
        }
        let left = match is {
            Some(bytes) => OnDisk::File(bytes.clone()),
            None => OnDisk::Missing,
        };
        if config_files::on_disk(root, rel) != left {
            // Edited again since: that edit is watched in turn.
            continue;
        }
        match was {
            Some(bytes) => config_files::write_atomically(root, rel, bytes),
            None => config_files::remove(root, rel),
        }
        .map_err(|e| format!("{}: {e}", rel.display()))?;
        restored.push(rel.clone());
    }
    Ok(restored)
}

async fn report(
    restored: Result<Result<Vec<PathBuf>, String>, tokio::task::JoinError>,
    why: &str,
    api: &HaApi,
    metrics: &WatchMetrics,
) {
    let why = Untrusted(why).to_string();
    let message = match restored {
        Ok(Ok(files)) => {
            metrics.local_rollbacks.inc();
            let shown = crate::config_files::shown_paths(&files);
            error!(restored = ?shown, "rollback: a local edit put back: {why}");
            format!(
                "A change to the config folder was put back because Home Assistant did not take it: {why}. Restored as Home Assistant last ran them: {}.",
                shown.join(", ")
            )
        }
        Ok(Err(e)) => {
            error!("rollback: a local edit failed ({why}) and could not be put back: {e}");
            format!(
                "A change to the config folder failed ({why}), and putting it back failed too: {e}."
            )
        }
        Err(e) => {
            error!("rollback: the restore task failed: {e}");
            return;
        }
    };
    api.notify(NOTIFICATION_ID, "Config change rolled back", &message)
        .await;
}
