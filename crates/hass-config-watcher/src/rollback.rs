//! Watching Home Assistant after a change, for the rollbacks: the applier's
//! verdicts (planned, reloaded, restarting, failed) for a window, and
//! RUNNING again after a restart. The Git source rolls its revisions back
//! on what this says; so does the watch loop for local edits, when asked.

use std::collections::BTreeSet;
use std::time::Duration;

use hass_runtime::shutdown::Shutdown;
use tokio::sync::broadcast;

use crate::ha_api::HaApi;
use crate::reloads::Verdict;

/// How Home Assistant took a change, watched for `window` after it was
/// written, through the applier's verdicts.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Health {
    Healthy,
    Unhealthy(String),
    ShuttingDown,
}

pub(crate) async fn watch_over(
    window: Duration,
    verdicts: &mut broadcast::Receiver<Verdict>,
    api: &HaApi,
    shutdown: &Shutdown,
) -> Health {
    let deadline = tokio::time::Instant::now() + window;
    let mut expected: Option<BTreeSet<String>> = None;
    let mut restart_needed = false;
    loop {
        let verdict = tokio::select! {
            () = shutdown.cancelled() => return Health::ShuttingDown,
            // Nothing failed within the window.
            () = tokio::time::sleep_until(deadline) => return Health::Healthy,
            verdict = verdicts.recv() => verdict,
        };
        match verdict {
            Ok(Verdict::Planned { reloads, restart }) => {
                restart_needed |= restart;
                expected.get_or_insert_default().extend(reloads);
            }
            Ok(Verdict::Reloaded(domain)) => {
                if let Some(expected) = &mut expected {
                    expected.remove(&domain);
                }
            }
            Ok(Verdict::Restarting) => return running_by(deadline, window, api, shutdown).await,
            Ok(Verdict::Failed { why }) => return Health::Unhealthy(why),
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return Health::ShuttingDown,
        }
        // Every reload it caused succeeded, and no restart waits.
        if expected.as_ref().is_some_and(BTreeSet::is_empty) && !restart_needed {
            return Health::Healthy;
        }
    }
}

/// After a restart: RUNNING again by `deadline`, or unhealthy.
async fn running_by(
    deadline: tokio::time::Instant,
    window: Duration,
    api: &HaApi,
    shutdown: &Shutdown,
) -> Health {
    loop {
        match tokio::time::timeout_at(deadline, api.running()).await {
            Ok(Ok(true)) => return Health::Healthy,
            Ok(Err(crate::ha_api::ApiError::ShuttingDown)) => return Health::ShuttingDown,
            Ok(_) => {}
            Err(_) => break,
        }
        tokio::select! {
            () = shutdown.cancelled() => return Health::ShuttingDown,
            () = tokio::time::sleep_until(deadline) => break,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    Health::Unhealthy(format!(
        "Home Assistant was not RUNNING within {} of the restart",
        humantime::format_duration(window)
    ))
}
