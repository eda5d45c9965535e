//! The contract between a binary and the shared runtime.

use std::future::Future;
use std::path::Path;

use serde::de::DeserializeOwned;

use crate::Fatal;
use crate::config::AdminConfig;
use crate::liveness::Liveness;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::shutdown::Shutdown;

/// Names and defaults that tie a binary to the conventions in docs/design.md.
#[derive(Debug, Clone, Copy)]
pub struct ComponentInfo {
    /// Short name without the `hass-` prefix, e.g. `broker` or `serial-bridge`.
    pub name: &'static str,
    /// The crate version, usually `env!("CARGO_PKG_VERSION")`.
    pub version: &'static str,
    /// Default admin port (9181 broker, 9182 bridge, 9183 watcher, 9184 exporter).
    pub admin_port: u16,
}

impl ComponentInfo {
    /// The binary's name, e.g. `hass-serial-bridge`.
    pub fn binary(&self) -> String {
        format!("hass-{}", self.name)
    }

    /// Prefix of every env var the binary reads, e.g. `HASS_SERIAL_BRIDGE`.
    pub fn env_prefix(&self) -> String {
        format!("HASS_{}", self.name.replace('-', "_").to_ascii_uppercase())
    }

    /// Prefix of every metric the binary exports, e.g. `hass_serial_bridge`.
    pub fn metric_prefix(&self) -> String {
        format!("hass_{}", self.name.replace('-', "_"))
    }
}

/// How a component's async tasks share the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduling {
    /// Up to two worker threads (two are plenty for a sidecar; tokio's
    /// default of one per core would start dozens on a big node).
    Parallel,
    /// One thread that runs woken tasks first come, first served, so what
    /// arrives on two sockets is handled in the order it arrived. (The
    /// multi-thread scheduler runs the task woken last first, to favour
    /// message passing.) Blocking work still goes to the blocking pool.
    InArrivalOrder,
}

/// A long-running binary: parse, prepare, then run until shutdown.
///
/// [`crate::run`] drives the phases so that every binary handles flags, env,
/// config errors, `--check-config`, signals and exit codes the same way.
pub trait Component: Sized + Send + std::fmt::Debug + 'static {
    const INFO: ComponentInfo;

    /// How the runtime schedules the component's tasks.
    const SCHEDULING: Scheduling = Scheduling::Parallel;

    /// The binary's own flags, beside the shared ones in [`crate::cli::CommonArgs`].
    type Args: clap::Args + Send;

    /// The YAML config file's shape; `Default` is what runs with no file.
    /// Deriving `#[serde(deny_unknown_fields)]` is expected.
    type Config: DeserializeOwned + Default + Send;

    /// Checks everything that can be checked without serving: semantic
    /// validation, secrets readable, paths present. `--check-config` stops after
    /// this. Errors here are bad config (exit 2) unless marked otherwise.
    fn prepare(
        args: Self::Args,
        config: Self::Config,
        config_path: Option<&Path>,
    ) -> Result<Self, Fatal>;

    /// The config file's `admin:` section, for configs that have one
    /// ([`crate::config::AdminConfig`]); `--admin-listen` overrides it.
    fn admin_config(config: &Self::Config) -> Option<AdminConfig> {
        let _ = config;
        None
    }

    /// Extra routes for the admin server (e.g. the exporter's `/probe/*`),
    /// merged beside `/healthz`, `/readyz` and `/metrics`. Called once, after
    /// `prepare` and before `run`; share state with `run` through `self`.
    fn admin_routes(&self) -> Option<axum::Router> {
        None
    }

    /// Serves until `ctx.shutdown` is cancelled, then drains and returns.
    fn run(self, ctx: Context) -> impl Future<Output = Result<(), Fatal>> + Send;
}

/// What a running component gets from the runtime.
#[derive(Debug, Clone)]
pub struct Context {
    pub shutdown: Shutdown,
    pub readiness: Readiness,
    pub liveness: Liveness,
    pub metrics: Metrics,
}

impl Context {
    /// A fresh context for `info`'s component, as the runtime builds one;
    /// for tests that drive `Component::run` in-process.
    pub fn new(info: &ComponentInfo) -> Self {
        Self {
            shutdown: Shutdown::new(),
            readiness: Readiness::new(),
            liveness: Liveness::new(),
            metrics: Metrics::new(info),
        }
    }
}
