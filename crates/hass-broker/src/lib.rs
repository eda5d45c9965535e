//! `hass-broker`: an MQTT 3.1.1 and 5 broker for Home Assistant's pod,
//! replacing the Mosquitto sidecar.
//!
//! Packets are parsed and encoded by rumqttd's codecs ([`codec`]); sessions,
//! routing, retained messages and durability are this crate's own
//! ([`router`], [`store`]), because Home Assistant's discovery depends on
//! every retained message reaching every new subscriber and surviving a
//! restart. ARCHITECTURE.md explains the split.

pub mod acl;
pub mod auth;
pub mod auth_gate;
pub mod codec;
pub mod config;
pub mod connection;
pub mod inspect;
pub mod listener;
pub mod message;
pub mod metrics;
pub mod mosquitto_db;
pub mod operator_view;
pub mod policy;
pub mod properties;
pub mod retained;
pub mod router;
pub mod session;
pub mod store;
pub mod subscription_index;
pub mod sys;
pub mod tls;
pub mod topic;
pub mod topic_alias;
pub mod websocket;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hass_runtime::readiness::ReadinessCheck;
use hass_runtime::{Component, ComponentInfo, Context, Fatal, Scheduling};
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::auth::AccessPolicy;
use crate::config::{BrokerConfig, FsyncPolicy};
use crate::connection::ConnectionContext;
use crate::metrics::{BrokerMetrics, StateCollector};
use crate::operator_view::OperatorView;
use crate::policy::PolicySource;
use crate::router::{Limits, Router};
use crate::store::{Durability, Store, StoreStats};
use crate::tls::{CurrentTls, TlsFiles};

/// Flags of `hass-broker` beyond the shared ones.
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerArgs {}

/// The prepared broker: config checked, password and ACL files read.
#[derive(Debug)]
pub struct Broker {
    config: BrokerConfig,
    policy_source: PolicySource,
    policy: AccessPolicy,
    /// Loaded when a TLS listener is configured.
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// The operator's view, unless `operator_view.enabled: false`.
    operator_view: Option<Arc<OperatorView>>,
}

impl Component for Broker {
    // Packets are applied in the order they arrive across connections, as
    // Mosquitto does: a SUBSCRIBE sent before another client's PUBLISH is in
    // place for it. Store writes and password hashing have threads of their
    // own, so one thread for the connections is not what limits throughput
    // (BENCHMARKS.md).
    const SCHEDULING: Scheduling = Scheduling::InArrivalOrder;
    const INFO: ComponentInfo = ComponentInfo {
        name: "broker",
        version: env!("CARGO_PKG_VERSION"),
        admin_port: hass_runtime::ports::BROKER_ADMIN,
    };
    type Args = BrokerArgs;
    type Config = BrokerConfig;

    fn admin_config(config: &BrokerConfig) -> Option<hass_runtime::config::AdminConfig> {
        Some(config.admin)
    }

    fn prepare(
        _args: BrokerArgs,
        config: BrokerConfig,
        _path: Option<&Path>,
    ) -> Result<Self, Fatal> {
        let policy_source = PolicySource {
            password_file: config.password_file.clone(),
            acl_file: config.acl_file.clone(),
            allow_anonymous: config.allow_anonymous,
        };
        let policy = policy_source.load().map_err(Fatal::config)?;
        if config.password_file.is_none() && !config.allow_anonymous {
            warn!("no password_file and allow_anonymous is false: every client will be refused");
        }
        let tls_listeners = config.listeners.mqtts.is_some() || config.listeners.wss.is_some();
        let tls = match (&config.tls, tls_listeners) {
            (Some(tls), true) => Some(
                TlsFiles {
                    cert_file: tls.cert_file.clone(),
                    key_file: tls.key_file.clone(),
                }
                .load()
                .map_err(|e| Fatal::config(format!("tls: {e}")))?,
            ),
            (None, true) => {
                return Err(Fatal::config(
                    "listeners.mqtts/wss need tls.cert_file and tls.key_file",
                ));
            }
            (_, false) => None,
        };
        if config.limits.max_keepalive == Some(0) {
            return Err(Fatal::config(
                "limits.max_keepalive must be at least 1 second (null: no limit)",
            ));
        }
        if config.limits.max_packet_size < 1024 {
            return Err(Fatal::config(
                "limits.max_packet_size must be at least 1024 bytes",
            ));
        }
        let operator_view = if config.operator_view.enabled {
            let token = config
                .operator_view
                .token
                .as_ref()
                .map(|source| source.load())
                .transpose()
                .map_err(|e| Fatal::config(format!("operator_view.token: {e}")))?;
            Some(Arc::new(OperatorView::new(
                config.operator_view.payloads,
                token.as_ref(),
            )))
        } else {
            None
        };
        Ok(Self {
            config,
            policy_source,
            policy,
            tls,
            operator_view,
        })
    }

    /// `/`, `/api/clients`, `/api/sessions`, `/api/retained`.
    fn admin_routes(&self) -> Option<axum::Router> {
        self.operator_view.clone().map(operator_view::routes)
    }

    async fn run(self, ctx: Context) -> Result<(), Fatal> {
        // Every check is registered before any is set, so /readyz cannot
        // pass between the store opening and the listener binding.
        let store_check = ctx.readiness.register("store");
        let listener_checks = ListenerChecks::register(&self.config, &ctx);
        let metrics = BrokerMetrics::default();
        let (store, recovered, stats) = open_store(&self.config, &metrics).await?;
        store_check.set_ready();

        let limits = Limits {
            max_queued_messages: self.config.limits.max_queued_messages,
            memory_budget: self.config.limits.memory_budget,
            max_inflight: self.config.limits.max_inflight,
            slow_consumer: self.config.limits.slow_consumer,
            client_id_takeover: self.config.client_id_takeover,
            max_replay_messages: self.config.limits.max_replay_messages,
            subscription_budget_per_client: self.config.limits.subscription_budget_per_client,
            subscription_budget: self.config.limits.subscription_budget,
            retained_budget: self.config.limits.retained_budget,
            max_persistent_sessions_per_user: self.config.limits.max_persistent_sessions_per_user,
        };
        let committed = store.committed();
        let router = Arc::new(Router::new(limits, Some((store.clone(), recovered))));
        ctx.metrics.register(|registry| {
            metrics.register(registry);
            registry.register_with_unit(
                "store_commit_duration",
                "Time per store commit, fsync included (what a held-back PUBACK waits)",
                prometheus_client::registry::Unit::Seconds,
                stats.commit_seconds.clone(),
            );
            registry.register_collector(Box::new(StateCollector {
                router: router.clone(),
                store: Some(stats.clone()),
            }));
            if let Some(view) = &self.operator_view {
                registry.register(
                    "operator_view_unauthorized",
                    "Requests to the operator view refused for a missing or wrong token",
                    view.unauthorized.clone(),
                );
            }
        });
        if let Some(view) = &self.operator_view {
            view.attach(router.clone());
        }

        let mut conn_ctx = ConnectionContext::new(
            router.clone(),
            self.policy,
            &self.config.limits,
            Some(committed),
        );
        conn_ctx.metrics = metrics;
        let conn_ctx = Arc::new(conn_ctx);
        let connections = TaskTracker::new();
        serve_listeners(
            &self.config,
            self.tls.clone(),
            &ctx,
            &conn_ctx,
            &connections,
            listener_checks,
        )
        .await?;
        ctx.shutdown
            .spawn(expiry_loop(router.clone(), ctx.shutdown.clone()));
        if let Some(interval) = self.config.sys_interval {
            ctx.shutdown.spawn(sys::publish_loop(
                router.clone(),
                conn_ctx.metrics.clone(),
                Self::INFO.version,
                interval,
                ctx.shutdown.clone(),
            ));
        }
        ctx.shutdown.spawn(policy::reload_on_change(
            self.policy_source,
            conn_ctx.clone(),
            self.config.policy_reload_interval,
            ctx.shutdown.clone(),
        ));

        ctx.shutdown.cancelled().await;
        // Stop accepting (the accept loop watches the same signal), tell
        // clients we are going, wait for them, then make the store durable.
        router.close_all();
        connections.close();
        connections.wait().await;
        tokio::task::spawn_blocking(move || store.close())
            .await
            .map_err(|e| Fatal::runtime(format!("store close: {e}")))?;
        info!("broker stopped; store flushed");
        Ok(())
    }
}

/// The readiness check of each configured listener, registered with the
/// store's before any is set.
struct ListenerChecks {
    mqtt: Option<ReadinessCheck>,
    ws: Option<ReadinessCheck>,
    mqtts: Option<ReadinessCheck>,
    wss: Option<ReadinessCheck>,
}

impl ListenerChecks {
    fn register(config: &BrokerConfig, ctx: &Context) -> Self {
        let check = |addr: Option<std::net::SocketAddr>, name: &str| {
            addr.map(|_| ctx.readiness.register(name))
        };
        let listeners = &config.listeners;
        Self {
            mqtt: check(listeners.mqtt, "listener:mqtt"),
            ws: check(listeners.ws, "listener:ws"),
            mqtts: check(listeners.mqtts, "listener:mqtts"),
            wss: check(listeners.wss, "listener:wss"),
        }
    }
}

/// Opens the store (on the blocking pool: redb reads the whole file) and
/// brings in a `mosquitto.db` when asked to.
async fn open_store(
    config: &BrokerConfig,
    metrics: &BrokerMetrics,
) -> Result<(Store, store::Recovered, Arc<StoreStats>), Fatal> {
    let durability = match config.fsync {
        FsyncPolicy::Always => Durability::Always,
        FsyncPolicy::Periodic => Durability::Periodic(config.fsync_interval),
    };
    let stats = Arc::new(StoreStats::default());
    let data_dir = config.data_dir.clone();
    let started = std::time::Instant::now();
    let opened = tokio::task::spawn_blocking({
        let stats = stats.clone();
        move || Store::open(&data_dir, durability, stats)
    })
    .await
    .map_err(|e| Fatal::runtime(format!("store: {e}")))?;
    let (store, mut recovered) = opened.map_err(Fatal::runtime)?;
    info!(
        retained = recovered.retained.len(),
        sessions = recovered.sessions.len(),
        queued = recovered.queued.len(),
        corrupt = recovered.corrupt,
        elapsed = ?started.elapsed(),
        path = %store.path().display(),
        "store restored"
    );
    if let Some(path) = &config.import_mosquitto_db {
        import_mosquitto_db(path, &store, &mut recovered, metrics);
    }
    Ok((store, recovered, stats))
}

/// Binds every configured listener and starts serving it; each one's
/// readiness check passes once it is bound.
async fn serve_listeners(
    config: &BrokerConfig,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    ctx: &Context,
    conn_ctx: &Arc<ConnectionContext>,
    connections: &TaskTracker,
    checks: ListenerChecks,
) -> Result<(), Fatal> {
    // The HTTP part of a WebSocket connection comes before CONNECT: it is
    // capped and timed like a handshake.
    let websocket_limits = hass_runtime::http_server::HttpLimits {
        max_connections: config.limits.max_handshakes,
        max_connections_per_address: config.limits.max_handshakes_per_address,
        header_read_timeout: config.limits.connect_timeout,
        refused: conn_ctx
            .metrics
            .connections_refused
            .get_or_create(&"max_websocket_upgrades".into())
            .clone(),
    };
    if let Some(addr) = config.listeners.mqtt {
        let listener = listener::bind(addr, "mqtt").await?;
        if let Some(check) = &checks.mqtt {
            check.set_ready();
        }
        info!(address = %bound(&listener, addr), "MQTT listener up");
        ctx.shutdown.spawn(listener::accept_loop(
            listener,
            conn_ctx.clone(),
            connections.clone(),
            ctx.shutdown.clone(),
        ));
    }
    if let (Some(server_config), Some(tls_config)) = (tls, config.tls.clone()) {
        let current = CurrentTls::new(server_config);
        ctx.shutdown.spawn(tls::reload_on_change(
            TlsFiles {
                cert_file: tls_config.cert_file,
                key_file: tls_config.key_file,
            },
            current.clone(),
            conn_ctx.clone(),
            tls_config.reload_interval,
            ctx.shutdown.clone(),
        ));
        if let Some(addr) = config.listeners.mqtts {
            let listener = listener::bind(addr, "mqtts").await?;
            let local = bound(&listener, addr);
            let (tx, rx) = tokio::sync::mpsc::channel(64);
            ctx.shutdown.spawn(tls::accept_handshakes(
                listener,
                current.clone(),
                conn_ctx.clone(),
                tx,
                connections.clone(),
                ctx.shutdown.clone(),
            ));
            ctx.shutdown
                .spawn(tls::serve_mqtts(rx, conn_ctx.clone(), connections.clone()));
            if let Some(check) = &checks.mqtts {
                check.set_ready();
            }
            info!(address = %local, "MQTT over TLS listener up");
        }
        if let Some(addr) = config.listeners.wss {
            let listener = listener::bind(addr, "wss").await?;
            let local = listener
                .local_addr()
                .map_err(|e| Fatal::runtime(e.to_string()))?;
            let (tx, rx) = tokio::sync::mpsc::channel(64);
            ctx.shutdown.spawn(tls::accept_handshakes(
                listener,
                current,
                conn_ctx.clone(),
                tx,
                connections.clone(),
                ctx.shutdown.clone(),
            ));
            let stop = ctx.shutdown.clone();
            ctx.shutdown.spawn(websocket::serve(
                tls::HandshakenListener { ready: rx, local },
                conn_ctx.clone(),
                connections.clone(),
                websocket_limits.clone(),
                async move { stop.cancelled().await },
            ));
            if let Some(check) = &checks.wss {
                check.set_ready();
            }
            info!(address = %local, "MQTT over secure WebSocket listener up");
        }
    }
    if let Some(addr) = config.listeners.ws {
        let listener = listener::bind(addr, "ws").await?;
        if let Some(check) = &checks.ws {
            check.set_ready();
        }
        info!(address = %bound(&listener, addr), "MQTT over WebSocket listener up (paths /mqtt and /)");
        let stop = ctx.shutdown.clone();
        ctx.shutdown.spawn(websocket::serve(
            listener,
            conn_ctx.clone(),
            connections.clone(),
            websocket_limits.clone(),
            async move { stop.cancelled().await },
        ));
    }
    Ok(())
}

async fn expiry_loop(router: Arc<Router>, shutdown: hass_runtime::shutdown::Shutdown) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                router.expire(SystemTime::now());
                router.check_keepalives(std::time::Instant::now());
            }
            _ = shutdown.cancelled() => return,
        }
    }
}

/// The address a listener is bound to: with port 0 in the config the
/// kernel's choice, which the log says (tests and operators read it there).
fn bound(
    listener: &tokio::net::TcpListener,
    configured: std::net::SocketAddr,
) -> std::net::SocketAddr {
    listener.local_addr().unwrap_or(configured)
}

/// The one-shot import `import_mosquitto_db` asks for. A file that cannot
/// be read or parsed is logged and counted, and the broker starts without
/// it: the next start tries again.
fn import_mosquitto_db(
    path: &Path,
    store: &Store,
    recovered: &mut store::Recovered,
    metrics: &BrokerMetrics,
) {
    match mosquitto_db::import(path, store, recovered) {
        Ok(None) => {}
        Ok(Some(done)) => {
            metrics.mosquitto_imports.get_or_create(&"ok".into()).inc();
            info!(
                path = %path.display(),
                retained = done.retained,
                sessions = done.sessions,
                subscriptions = done.subscriptions,
                already_here = done.kept,
                queued_not_imported = done.queued_skipped,
                "imported mosquitto.db"
            );
        }
        Err(e) => {
            metrics
                .mosquitto_imports
                .get_or_create(&"failed".into())
                .inc();
            warn!("mosquitto.db not imported: {e}");
        }
    }
}
