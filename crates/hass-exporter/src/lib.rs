//! `hass-exporter`: truthful health for Home Assistant and what it depends
//! on, for kubelet (`/probe/ha/*`) and Prometheus (`/metrics`), on admin
//! port 9184.
//!
//! Each target (HA's REST API, the recorder database, the MQTT broker, each
//! serial bridge) is probed by its own task on its own interval with its own
//! timeout and reconnect backoff. Tasks write metrics and the probe view as
//! they learn things; scrapes and probes only read those, so a slow or hung
//! target never slows `/metrics` down.

pub mod bridges;
pub mod broker;
pub mod config;
pub mod home_assistant;
pub mod pause;
pub mod postgres_tls;
pub mod probes;
pub mod recorder;

use std::collections::BTreeSet;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use hass_runtime::liveness::Heartbeat;
use hass_runtime::readiness::ReadinessCheck;
use hass_runtime::shutdown::Shutdown;
use hass_runtime::{Component, ComponentInfo, Context, Fatal};
use prometheus_client::registry::Registry;
use tracing::info;

use crate::bridges::{BridgeMetrics, BridgeProbe};
use crate::broker::BrokerProbe;
use crate::config::ExporterConfig;
use crate::home_assistant::{HaProbe, HaShared};
use crate::recorder::RecorderProbe;
use hass_runtime::http_client::HttpClient;

/// Flags of `hass-exporter` beyond the shared ones.
#[derive(Debug, Clone, clap::Args)]
pub struct ExporterArgs {}

/// A probe and whether the exporter's own `/readyz` waits for it.
#[derive(Debug)]
struct Target<P> {
    probe: P,
    required: bool,
}

/// What `run` hands every probe loop beside its own config.
#[derive(Debug, Clone)]
struct Shared {
    client: HttpClient,
    bridge_metrics: BridgeMetrics,
}

/// A future a probe loop runs as, until shutdown.
type ProbeLoop = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One thing the exporter probes: its name (in `/healthz` and `/readyz`),
/// its metrics, how long its loop may go between heartbeats, and the loop.
trait Probe: Send {
    fn name(&self) -> String;
    fn required(&self) -> bool;
    fn longest_wait(&self) -> Duration;
    /// Registers the metrics only this target writes.
    fn register_metrics(&self, registry: &mut Registry);
    fn start(
        self: Box<Self>,
        shared: &Shared,
        shutdown: Shutdown,
        beat: Heartbeat,
        check: Option<ReadinessCheck>,
    ) -> ProbeLoop;
}

/// `Probe` for `Target<$probe>`: its name from `$target`, and its loop
/// started from `$probe` with what it needs of `$shared`.
macro_rules! probe_target {
    (
        $probe:ty,
        name: |$target:ident| $name:expr,
        register: |$registering:ident, $registry:ident| $register:expr,
        start: |$running:ident, $shared:ident, $shutdown:ident, $beat:ident, $check:ident| $run:expr $(,)?
    ) => {
        impl Probe for Target<$probe> {
            fn name(&self) -> String {
                let $target = &self.probe;
                $name
            }
            fn required(&self) -> bool {
                self.required
            }
            fn longest_wait(&self) -> Duration {
                self.probe.longest_wait()
            }
            fn register_metrics(&self, $registry: &mut Registry) {
                let $registering = &self.probe;
                $register
            }
            fn start(
                self: Box<Self>,
                $shared: &Shared,
                $shutdown: Shutdown,
                $beat: Heartbeat,
                $check: Option<ReadinessCheck>,
            ) -> ProbeLoop {
                let $running = self.probe;
                Box::pin($run)
            }
        }
    };
}

probe_target!(
    HaProbe,
    name: |_probe| "home_assistant".to_owned(),
    register: |probe, registry| probe.register_metrics(registry),
    start: |probe, shared, shutdown, beat, check| {
        probe.run(shared.client.clone(), shutdown, beat, check)
    },
);
probe_target!(
    RecorderProbe,
    name: |_probe| "postgres".to_owned(),
    register: |probe, registry| probe.register_metrics(registry),
    start: |probe, _shared, shutdown, beat, check| probe.run(shutdown, beat, check),
);
probe_target!(
    BrokerProbe,
    name: |_probe| "broker".to_owned(),
    register: |probe, registry| probe.register_metrics(registry),
    start: |probe, _shared, shutdown, beat, check| probe.run(shutdown, beat, check),
);
// Bridges share one set of metric families, registered once by `run`.
probe_target!(
    BridgeProbe,
    name: |probe| format!("bridge:{}", probe.name()),
    register: |_probe, _registry| {},
    start: |probe, shared, shutdown, beat, check| {
        probe.run(
            shared.client.clone(),
            shared.bridge_metrics.clone(),
            shutdown,
            beat,
            check,
        )
    },
);

/// The prepared exporter: every target's config checked, secrets readable.
pub struct Exporter {
    shared: Shared,
    ha_shared: Option<HaShared>,
    targets: Vec<Box<dyn Probe>>,
    has_bridges: bool,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.targets.iter().map(|t| t.name()).collect();
        f.debug_struct("Exporter").field("targets", &names).finish()
    }
}

/// How long a probe loop may go without a heartbeat before `/healthz` calls
/// the exporter wedged: loops beat at least every second while they wait,
/// so silence is the longest chain of timeouts between waits, plus margin.
fn max_silence(timeouts: Duration) -> Duration {
    timeouts + Duration::from_secs(30)
}

impl Component for Exporter {
    const INFO: ComponentInfo = ComponentInfo {
        name: "exporter",
        version: env!("CARGO_PKG_VERSION"),
        admin_port: hass_runtime::ports::EXPORTER_ADMIN,
    };
    type Args = ExporterArgs;
    type Config = ExporterConfig;

    fn admin_config(config: &ExporterConfig) -> Option<hass_runtime::config::AdminConfig> {
        Some(config.admin)
    }

    fn prepare(
        _args: ExporterArgs,
        config: ExporterConfig,
        _path: Option<&Path>,
    ) -> Result<Self, Fatal> {
        let ha = config
            .home_assistant
            .as_ref()
            .map(|cfg| {
                // Checked here so --check-config catches an unreadable token.
                cfg.token
                    .load()
                    .map_err(|e| format!("home_assistant.token: {e}"))?;
                HaProbe::new(cfg).map(|probe| Target {
                    probe,
                    required: cfg.required,
                })
            })
            .transpose()
            .map_err(Fatal::config)?;
        let recorder = config
            .postgres
            .as_ref()
            .map(|cfg| {
                RecorderProbe::new(cfg).map(|probe| Target {
                    probe,
                    required: cfg.required,
                })
            })
            .transpose()
            .map_err(Fatal::config)?;
        let broker = config
            .broker
            .as_ref()
            .map(|cfg| {
                BrokerProbe::new(cfg).map(|probe| Target {
                    probe,
                    required: cfg.required,
                })
            })
            .transpose()
            .map_err(Fatal::config)?;
        let mut names = BTreeSet::new();
        let mut bridges = Vec::new();
        for (i, cfg) in config.bridges.iter().enumerate() {
            if !names.insert(cfg.name.clone()) {
                return Err(Fatal::config(format!(
                    "bridges[{i}].name: {:?} is used twice; names are metric labels and must be unique",
                    cfg.name
                )));
            }
            let probe = BridgeProbe::new(cfg, i).map_err(Fatal::config)?;
            bridges.push(Target {
                probe,
                required: cfg.required,
            });
        }
        let ha_shared = ha.as_ref().map(|t| t.probe.shared());
        let has_bridges = !bridges.is_empty();
        let mut targets: Vec<Box<dyn Probe>> = Vec::new();
        targets.extend(ha.map(|t| Box::new(t) as Box<dyn Probe>));
        targets.extend(recorder.map(|t| Box::new(t) as Box<dyn Probe>));
        targets.extend(broker.map(|t| Box::new(t) as Box<dyn Probe>));
        targets.extend(bridges.into_iter().map(|t| Box::new(t) as Box<dyn Probe>));
        Ok(Self {
            shared: Shared {
                client: HttpClient::default(),
                bridge_metrics: BridgeMetrics::default(),
            },
            ha_shared,
            targets,
            has_bridges,
        })
    }

    /// The `/probe/ha/*` routes beside the shared admin endpoints.
    fn admin_routes(&self) -> Option<axum::Router> {
        Some(probes::router(self.ha_shared.clone()))
    }

    async fn run(self, ctx: Context) -> Result<(), Fatal> {
        let Self {
            shared,
            ha_shared: _,
            targets,
            has_bridges,
        } = self;
        if has_bridges {
            ctx.metrics.register(|r| shared.bridge_metrics.register(r));
        }
        let mut names = Vec::with_capacity(targets.len());
        for target in targets {
            let name = target.name();
            ctx.metrics.register(|r| target.register_metrics(r));
            let beat = ctx
                .liveness
                .register(&name, max_silence(target.longest_wait()));
            let check = target.required().then(|| ctx.readiness.register(&name));
            ctx.shutdown
                .spawn(target.start(&shared, ctx.shutdown.clone(), beat, check));
            names.push(name);
        }
        info!(targets = ?names, "probing");
        ctx.shutdown.cancelled().await;
        Ok(())
    }
}
