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
pub mod http;
pub mod pause;
pub mod postgres_tls;
pub mod probes;
pub mod recorder;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use hass_runtime::{Component, ComponentInfo, Context, Fatal};
use tracing::info;

use crate::bridges::{BridgeMetrics, BridgeProbe};
use crate::broker::BrokerProbe;
use crate::config::ExporterConfig;
use crate::home_assistant::{HaProbe, HaShared};
use crate::http::HttpClient;
use crate::recorder::RecorderProbe;

/// Flags of `hass-exporter` beyond the shared ones.
#[derive(Debug, Clone, clap::Args)]
pub struct ExporterArgs {}

/// A probe and whether the exporter's own `/readyz` waits for it.
#[derive(Debug)]
struct Target<P> {
    probe: P,
    required: bool,
}

/// The prepared exporter: every target's config checked, secrets readable.
#[derive(Debug)]
pub struct Exporter {
    client: HttpClient,
    ha: Option<Target<HaProbe>>,
    ha_shared: Option<HaShared>,
    recorder: Option<Target<RecorderProbe>>,
    broker: Option<Target<BrokerProbe>>,
    bridges: Vec<Target<BridgeProbe>>,
    bridge_metrics: BridgeMetrics,
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
        Ok(Self {
            client: HttpClient::new(),
            ha,
            ha_shared,
            recorder,
            broker,
            bridges,
            bridge_metrics: BridgeMetrics::default(),
        })
    }

    /// The `/probe/ha/*` routes beside the shared admin endpoints.
    fn admin_routes(&self) -> Option<axum::Router> {
        Some(probes::router(self.ha_shared.clone()))
    }

    async fn run(self, ctx: Context) -> Result<(), Fatal> {
        let Self {
            client,
            ha,
            ha_shared: _,
            recorder,
            broker,
            bridges,
            bridge_metrics,
        } = self;
        let check = |required: bool, name: &str| required.then(|| ctx.readiness.register(name));
        let mut targets = Vec::new();
        if let Some(Target { probe, required }) = ha {
            ctx.metrics.register(|r| probe.register_metrics(r));
            let beat = ctx
                .liveness
                .register("home_assistant", max_silence(probe.longest_wait()));
            let check = check(required, "home_assistant");
            ctx.shutdown
                .spawn(probe.run(client.clone(), ctx.shutdown.clone(), beat, check));
            targets.push("home_assistant".to_owned());
        }
        if let Some(Target { probe, required }) = recorder {
            ctx.metrics.register(|r| probe.register_metrics(r));
            let beat = ctx
                .liveness
                .register("postgres", max_silence(probe.longest_wait()));
            let check = check(required, "postgres");
            ctx.shutdown
                .spawn(probe.run(ctx.shutdown.clone(), beat, check));
            targets.push("postgres".to_owned());
        }
        if let Some(Target { probe, required }) = broker {
            ctx.metrics.register(|r| probe.register_metrics(r));
            let beat = ctx
                .liveness
                .register("broker", max_silence(probe.longest_wait()));
            let check = check(required, "broker");
            ctx.shutdown
                .spawn(probe.run(ctx.shutdown.clone(), beat, check));
            targets.push("broker".to_owned());
        }
        if !bridges.is_empty() {
            ctx.metrics.register(|r| bridge_metrics.register(r));
        }
        for Target { probe, required } in bridges {
            let name = format!("bridge:{}", probe.name());
            let beat = ctx
                .liveness
                .register(&name, max_silence(probe.longest_wait()));
            let check = check(required, &name);
            ctx.shutdown.spawn(probe.run(
                client.clone(),
                bridge_metrics.clone(),
                ctx.shutdown.clone(),
                beat,
                check,
            ));
            targets.push(name);
        }
        info!(targets = ?targets, "probing");
        ctx.shutdown.cancelled().await;
        Ok(())
    }
}
