//! The component: fetch at start and every `interval` until shutdown.
//!
//! Readiness is the mirror folder being usable, never the remote being
//! reachable: the mirror runs in Home Assistant's pod, and a Git host's
//! outage must not take Home Assistant out of its Service. Fetch failures
//! are `hass_git_mirror_fetches_total{result="failed"}` and the log.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use hass_runtime::logging::Untrusted;
use hass_runtime::{Component, ComponentInfo, Context, Fatal};
use tracing::{error, info};

use crate::config::{MirrorArgs, MirrorConfig};
use crate::fetch::{Fetch, Fetched};
use crate::metrics::{FetchResult, MirrorMetrics};

/// The prepared mirror: config checked, token readable.
#[derive(Debug)]
pub struct GitMirror {
    config: MirrorConfig,
}

impl Component for GitMirror {
    const INFO: ComponentInfo = ComponentInfo {
        name: "git-mirror",
        version: env!("CARGO_PKG_VERSION"),
        admin_port: hass_runtime::ports::GIT_MIRROR_ADMIN,
    };
    type Args = MirrorArgs;
    type Config = MirrorConfig;

    fn admin_config(config: &MirrorConfig) -> Option<hass_runtime::config::AdminConfig> {
        Some(config.admin)
    }

    fn prepare(
        args: MirrorArgs,
        config: MirrorConfig,
        _path: Option<&Path>,
    ) -> Result<Self, Fatal> {
        Ok(Self {
            config: config.checked(args)?,
        })
    }

    async fn run(self, ctx: Context) -> Result<(), Fatal> {
        let config = Arc::new(self.config);
        let metrics = MirrorMetrics::register(&ctx.metrics);
        ctx.readiness.register("mirror").set_ready();
        let heartbeat = ctx
            .liveness
            .register("fetch-loop", config.interval + config.timeout * 2);
        let stop = Arc::new(AtomicBool::new(false));
        info!(remote = %config.remote, branch = %config.branch, mirror = %config.mirror.display(), "mirroring");
        let mut lasting = hass_runtime::logging::LastingError::default();
        loop {
            heartbeat.beat();
            let started = Instant::now();
            let (c, s) = (config.clone(), stop.clone());
            let mut fetch = tokio::task::spawn_blocking(move || fetch_once(&c, &s));
            let fetched = tokio::select! {
                joined = &mut fetch => joined,
                () = ctx.shutdown.cancelled() => {
                    stop.store(true, Ordering::Relaxed);
                    let _ = fetch.await;
                    return Ok(());
                }
            };
            metrics.duration.observe(started.elapsed().as_secs_f64());
            match fetched {
                Ok(Ok(fetched)) => {
                    metrics
                        .last_success
                        .set(hass_runtime::clock::unix_seconds_f64());
                    lasting.clear();
                    match fetched {
                        Fetched::Updated { from, to } => {
                            metrics.count(FetchResult::Updated);
                            let from = from.map(|f| f.to_string()).unwrap_or_default();
                            info!(%from, %to, took = ?started.elapsed(), "branch updated");
                        }
                        Fetched::Unchanged(_) => metrics.count(FetchResult::Unchanged),
                    }
                }
                Ok(Err(e)) => {
                    metrics.count(FetchResult::Failed);
                    let text = e.to_string();
                    if lasting.is_new(&text) {
                        error!("fetch failed: {}", Untrusted(&text));
                    }
                }
                Err(e) => {
                    metrics.count(FetchResult::Failed);
                    error!("the fetch task failed: {e}");
                }
            }
            if !ctx.shutdown.sleep(config.interval).await {
                return Ok(());
            }
        }
    }
}

fn fetch_once(
    config: &MirrorConfig,
    stop: &AtomicBool,
) -> Result<Fetched, crate::fetch::FetchError> {
    // Read again for each fetch, so a rotated Secret is picked up.
    let token = match &config.token {
        Some(source) => Some(
            source
                .load()
                .map_err(|e| crate::fetch::FetchError(format!("token: {e}")))?,
        ),
        None => None,
    };
    Fetch {
        remote: &config.remote,
        branch: &config.branch,
        mirror: &config.mirror,
        username: &config.username,
        token,
        timeout: config.timeout,
        max_bytes: config.max_mib.saturating_mul(1024 * 1024),
        shutdown: stop,
    }
    .run()
}
