//! Home Assistant's recorder database (PostgreSQL): is it up, how big, is the
//! recorder still writing, is purge keeping up.
//!
//! One connection, probed every `interval` with a fixed set of cheap queries
//! (index-only `min`/`max`, catalog sizes), pipelined on the connection, each
//! under `query_timeout`. Results go into a [`Snapshot`] that `/metrics`
//! encodes, so a scrape never touches the database. A timeout or a broken
//! connection marks it down at once and reconnects with capped backoff.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hass_runtime::liveness::Heartbeat;
use hass_runtime::readiness::ReadinessCheck;
use hass_runtime::secret::{ExposeSecret, SecretSource};
use hass_runtime::shutdown::Shutdown;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, NoTls, Socket};
use tracing::{info, warn};

use crate::config::{PostgresConfig, TlsMode};
use crate::pause::pause;
use crate::postgres_tls::{RustlsConnect, TlsHandshakeError};
use hass_runtime::backoff::Backoff;

/// HA's recorder tables (schema 53, HA 2026.11), each a `table` label value.
pub const RECORDER_TABLES: [&str; 13] = [
    "states",
    "states_meta",
    "state_attributes",
    "events",
    "event_types",
    "event_data",
    "statistics",
    "statistics_short_term",
    "statistics_meta",
    "statistics_runs",
    "recorder_runs",
    "schema_changes",
    "migration_changes",
];

/// What the last successful probe found; `None` fields are not exported
/// (a table HA has not created yet is absent, not 0).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub database_size_bytes: Option<i64>,
    pub table_size_bytes: BTreeMap<String, i64>,
    pub last_state_ts: Option<f64>,
    pub oldest_state_ts: Option<f64>,
    pub short_term_statistics_ts: Option<f64>,
    pub statistics_ts: Option<f64>,
    pub schema_version: Option<i64>,
    pub unclean_shutdowns: Option<i64>,
    pub connections: Option<i64>,
    pub max_connections: Option<i64>,
}

/// Encodes the snapshot on each scrape; ages are computed then, so they
/// keep growing truthfully between probes.
#[derive(Debug, Clone, Default)]
struct SnapshotCollector {
    snapshot: Arc<Mutex<Option<Snapshot>>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TableLabels {
    table: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct QueryLabels {
    query: &'static str,
}

fn gauge<N: prometheus_client::encoding::EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: Option<N>,
) -> Result<(), std::fmt::Error> {
    let Some(value) = value else { return Ok(()) };
    let g = ConstGauge::new(value);
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    g.encode(metric)
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = self
            .snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return Ok(());
        };
        let now = hass_runtime::clock::unix_seconds_f64();
        let e = &mut encoder;
        gauge(
            e,
            "postgres_database_size_bytes",
            "Size of the recorder database",
            s.database_size_bytes,
        )?;
        if !s.table_size_bytes.is_empty() {
            let mut metric = e.encode_descriptor(
                "postgres_table_size_bytes",
                "Total size (data, indexes, TOAST) of each recorder table",
                None,
                MetricType::Gauge,
            )?;
            for (table, size) in &s.table_size_bytes {
                let labels = TableLabels {
                    table: table.clone(),
                };
                ConstGauge::new(*size).encode(metric.encode_family(&labels)?)?;
            }
        }
        gauge(
            e,
            "recorder_last_state_timestamp_seconds",
            "Unix time of the newest row in states (max last_updated_ts)",
            s.last_state_ts,
        )?;
        gauge(
            e,
            "recorder_last_state_age_seconds",
            "Seconds since the newest row in states was written",
            s.last_state_ts.map(|t| (now - t).max(0.0)),
        )?;
        gauge(
            e,
            "recorder_oldest_state_timestamp_seconds",
            "Unix time of the oldest row in states (purge health)",
            s.oldest_state_ts,
        )?;
        gauge(
            e,
            "recorder_oldest_state_age_seconds",
            "Age of the oldest row in states; compare with purge_keep_days",
            s.oldest_state_ts.map(|t| (now - t).max(0.0)),
        )?;
        gauge(
            e,
            "recorder_short_term_statistics_last_start_timestamp_seconds",
            "Unix time of the newest 5-minute statistics period",
            s.short_term_statistics_ts,
        )?;
        gauge(
            e,
            "recorder_statistics_last_start_timestamp_seconds",
            "Unix time of the newest hourly statistics period",
            s.statistics_ts,
        )?;
        gauge(
            e,
            "recorder_schema_version",
            "The recorder's schema version (latest row of schema_changes)",
            s.schema_version,
        )?;
        gauge(
            e,
            "recorder_unclean_shutdowns",
            "Recorder runs that ended without a clean shutdown (recorder_runs.closed_incorrect)",
            s.unclean_shutdowns,
        )?;
        gauge(
            e,
            "postgres_connections",
            "Client connections open on the PostgreSQL server",
            s.connections,
        )?;
        gauge(
            e,
            "postgres_max_connections",
            "The server's max_connections",
            s.max_connections,
        )?;
        Ok(())
    }
}

/// Why a connect failed; a fixed set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ConnectLabels {
    reason: &'static str,
}

#[derive(Debug, Clone)]
struct RecorderMetrics {
    up: Gauge,
    tls: Gauge,
    probe_duration: Histogram,
    errors: Family<QueryLabels, Counter>,
    connect_failures: Family<ConnectLabels, Counter>,
    snapshot: SnapshotCollector,
}

/// The recorder database prober.
#[derive(Debug)]
pub struct RecorderProbe {
    pg: tokio_postgres::Config,
    /// `None` for `tls: disable`.
    tls: Option<RustlsConnect>,
    password: Option<SecretSource>,
    interval: Duration,
    query_timeout: Duration,
    connect_timeout: Duration,
    metrics: RecorderMetrics,
}

/// Why a probe cycle ended the connection.
#[derive(Debug)]
enum Fault {
    Timeout(&'static str),
    Closed(String),
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout(query) => write!(f, "query {query} timed out"),
            Self::Closed(e) => write!(f, "connection lost: {e}"),
        }
    }
}

impl RecorderProbe {
    pub fn new(cfg: &PostgresConfig) -> Result<Self, String> {
        let mut pg = match &cfg.connection {
            Some(text) => text
                .parse::<tokio_postgres::Config>()
                .map_err(|e| format!("postgres.connection: {e}"))?,
            None => tokio_postgres::Config::new(),
        };
        if pg.get_password().is_some() {
            return Err(
                "postgres.connection holds a password; secrets never live in the \
                        config file: use postgres.password: { file: ... }"
                    .to_owned(),
            );
        }
        if let Some(host) = &cfg.host {
            pg.host(host);
        }
        if let Some(port) = cfg.port {
            pg.port(port);
        }
        if let Some(user) = &cfg.user {
            pg.user(user);
        }
        if let Some(dbname) = &cfg.dbname {
            pg.dbname(dbname);
        }
        if pg.get_hosts().is_empty() {
            pg.host("127.0.0.1");
        }
        if pg.get_user().is_none() {
            return Err(
                "postgres: no user; set postgres.user or user= in postgres.connection".to_owned(),
            );
        }
        if cfg.tls == TlsMode::Disable && cfg.ca_file.is_some() {
            return Err(
                "postgres.ca_file is set but postgres.tls is `disable`; set tls to \
                 `verify_full` (or remove ca_file)"
                    .to_owned(),
            );
        }
        let tls = RustlsConnect::new(cfg.tls, cfg.ca_file.as_deref())?;
        pg.ssl_mode(match cfg.tls {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => SslMode::Require,
        });
        pg.application_name("hass-exporter");
        pg.connect_timeout(cfg.connect_timeout);
        if let Some(source) = &cfg.password {
            source
                .load()
                .map_err(|e| format!("postgres.password: {e}"))?;
        }
        Ok(Self {
            pg,
            tls,
            password: cfg.password.clone(),
            interval: cfg.interval,
            query_timeout: cfg.query_timeout,
            connect_timeout: cfg.connect_timeout,
            metrics: RecorderMetrics {
                up: Gauge::default(),
                tls: Gauge::default(),
                probe_duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
                errors: Family::default(),
                connect_failures: Family::default(),
                snapshot: SnapshotCollector::default(),
            },
        })
    }

    /// The longest stretch without a heartbeat: a connect, then one
    /// round of pipelined queries.
    pub fn longest_wait(&self) -> Duration {
        self.connect_timeout + self.query_timeout
    }

    pub fn register_metrics(&self, r: &mut Registry) {
        r.register(
            "postgres_up",
            "Whether the recorder database answered the last probe",
            self.metrics.up.clone(),
        );
        r.register(
            "postgres_tls",
            "Whether the connection to the recorder database is encrypted (TLS)",
            self.metrics.tls.clone(),
        );
        r.register(
            "postgres_connect_failures",
            "Connects to the recorder database that failed, by reason (timeout, io, tls, auth, other)",
            self.metrics.connect_failures.clone(),
        );
        r.register(
            "postgres_probe_duration_seconds",
            "Time one probe of the recorder database took (all queries, pipelined)",
            self.metrics.probe_duration.clone(),
        );
        r.register(
            "postgres_query_errors",
            "Recorder queries that failed, by query",
            self.metrics.errors.clone(),
        );
        r.register_collector(Box::new(self.metrics.snapshot.clone()));
    }

    pub async fn run(
        self,
        shutdown: Shutdown,
        heartbeat: Heartbeat,
        check: Option<ReadinessCheck>,
    ) {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut was_up = true;
        loop {
            heartbeat.beat();
            match self.connect().await {
                Ok((client, connection)) => {
                    backoff.reset();
                    let fault = self
                        .probe_until_fault(
                            &client,
                            connection,
                            &shutdown,
                            &heartbeat,
                            check.as_ref(),
                            &mut was_up,
                        )
                        .await;
                    let Some(fault) = fault else { return };
                    self.mark_down(&fault.to_string(), check.as_ref(), &mut was_up);
                    if matches!(fault, Fault::Timeout(_)) {
                        // Free the server from the hung query, best effort.
                        let cancel = client.cancel_token();
                        let limit = self.connect_timeout;
                        let tls = self.tls.as_ref().map(RustlsConnect::for_cancel);
                        tokio::spawn(async move {
                            let _ = match tls {
                                Some(tls) => {
                                    tokio::time::timeout(limit, cancel.cancel_query(tls)).await
                                }
                                None => {
                                    tokio::time::timeout(limit, cancel.cancel_query(NoTls)).await
                                }
                            };
                        });
                    }
                }
                Err((reason, e)) => {
                    self.metrics
                        .connect_failures
                        .get_or_create(&ConnectLabels { reason })
                        .inc();
                    self.mark_down(&e, check.as_ref(), &mut was_up);
                }
            }
            if !pause(backoff.next_delay(), &shutdown, &heartbeat).await {
                return;
            }
        }
    }

    fn mark_down(&self, why: &str, check: Option<&ReadinessCheck>, was_up: &mut bool) {
        if *was_up {
            warn!("recorder database down: {why}");
            *was_up = false;
        } else {
            tracing::debug!("recorder database still down: {why}");
        }
        self.metrics.up.set(0);
        self.metrics.tls.set(0);
        *self
            .metrics
            .snapshot
            .snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        if let Some(check) = check {
            check.set_not_ready(format!("recorder database: {why}"));
        }
    }

    /// A new connection and the task driving it; the error is a `reason`
    /// label and the text to log.
    async fn connect(
        &self,
    ) -> Result<(Client, tokio::task::JoinHandle<()>), (&'static str, String)> {
        let mut pg = self.pg.clone();
        if let Some(source) = &self.password {
            // Read on each connect, so a rotated Secret is picked up.
            let password = source
                .load()
                .map_err(|e| ("password_file", format!("postgres.password: {e}")))?;
            pg.password(password.expose_secret());
        }
        let connected = match &self.tls {
            None => connect_with(&pg, NoTls, self.connect_timeout).await,
            Some(tls) => {
                tls.take_encrypted();
                connect_with(&pg, tls.clone(), self.connect_timeout).await
            }
        }?;
        let encrypted = self.tls.as_ref().is_some_and(RustlsConnect::take_encrypted);
        self.metrics.tls.set(i64::from(encrypted));
        Ok(connected)
    }

    /// Probes every interval until the connection faults (`Some`) or
    /// shutdown (`None`).
    async fn probe_until_fault(
        &self,
        client: &Client,
        mut connection: tokio::task::JoinHandle<()>,
        shutdown: &Shutdown,
        heartbeat: &Heartbeat,
        check: Option<&ReadinessCheck>,
        was_up: &mut bool,
    ) -> Option<Fault> {
        let fault = loop {
            heartbeat.beat();
            let started = Instant::now();
            match self.probe(client).await {
                Ok(snapshot) => {
                    self.metrics
                        .probe_duration
                        .observe(started.elapsed().as_secs_f64());
                    *self
                        .metrics
                        .snapshot
                        .snapshot
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = Some(snapshot);
                    self.metrics.up.set(1);
                    if !*was_up {
                        info!("recorder database up");
                        *was_up = true;
                    }
                    if let Some(check) = check {
                        check.set_ready();
                    }
                }
                Err(fault) => break fault,
            }
            let next = tokio::time::Instant::now() + self.interval;
            loop {
                heartbeat.beat();
                tokio::select! {
                    () = shutdown.cancelled() => {
                        connection.abort();
                        return None;
                    }
                    // The connection ended between probes: the server went away.
                    _ = &mut connection => return Some(Fault::Closed("the server closed the connection".to_owned())),
                    () = tokio::time::sleep_until(next.min(tokio::time::Instant::now() + Duration::from_secs(1))) => {}
                }
                if tokio::time::Instant::now() >= next {
                    break;
                }
            }
        };
        connection.abort();
        Some(fault)
    }

    /// One round of queries, pipelined on the connection.
    async fn probe(&self, client: &Client) -> Result<Snapshot, Fault> {
        let tables: Vec<&str> = RECORDER_TABLES.to_vec();
        let table_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&tables];
        let (size, tables, states, stats, schema, runs, conns) = tokio::join!(
            self.query("database_size", client.query_one("SELECT pg_database_size(current_database())", &[])),
            self.query(
                "table_size",
                client.query(
                    "SELECT t, pg_total_relation_size(to_regclass(t)) FROM unnest($1::text[]) AS t \
                     WHERE to_regclass(t) IS NOT NULL",
                    &table_params,
                )
            ),
            self.query("states", client.query_one("SELECT max(last_updated_ts), min(last_updated_ts) FROM states", &[])),
            self.query(
                "statistics",
                client.query_one(
                    "SELECT (SELECT max(start_ts) FROM statistics_short_term), (SELECT max(start_ts) FROM statistics)",
                    &[]
                )
            ),
            self.query(
                "schema_version",
                client.query_opt("SELECT schema_version::bigint FROM schema_changes ORDER BY change_id DESC LIMIT 1", &[])
            ),
            self.query("recorder_runs", client.query_one("SELECT count(*) FROM recorder_runs WHERE closed_incorrect", &[])),
            self.query(
                "connections",
                client.query_one(
                    "SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'), \
                     current_setting('max_connections')::bigint",
                    &[]
                )
            ),
        );
        let mut s = Snapshot {
            database_size_bytes: size?.and_then(|r| r.try_get(0).ok()),
            ..Snapshot::default()
        };
        for row in tables?.unwrap_or_default() {
            if let (Ok(table), Ok(size)) = (row.try_get::<_, String>(0), row.try_get::<_, i64>(1)) {
                s.table_size_bytes.insert(table, size);
            }
        }
        if let Some(row) = states? {
            s.last_state_ts = row.try_get(0).ok().flatten();
            s.oldest_state_ts = row.try_get(1).ok().flatten();
        }
        if let Some(row) = stats? {
            s.short_term_statistics_ts = row.try_get(0).ok().flatten();
            s.statistics_ts = row.try_get(1).ok().flatten();
        }
        s.schema_version = schema?.flatten().and_then(|r| r.try_get(0).ok());
        s.unclean_shutdowns = runs?.and_then(|r| r.try_get(0).ok());
        if let Some(row) = conns? {
            s.connections = row.try_get(0).ok();
            s.max_connections = row.try_get(1).ok();
        }
        Ok(s)
    }

    /// Runs one query under the timeout. A query error on a live connection
    /// (a table HA has not created yet) is counted and yields `None`; a
    /// timeout or a dead connection is a [`Fault`].
    async fn query<T>(
        &self,
        name: &'static str,
        query: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<Option<T>, Fault> {
        match tokio::time::timeout(self.query_timeout, query).await {
            Err(_) => {
                self.metrics
                    .errors
                    .get_or_create(&QueryLabels { query: name })
                    .inc();
                Err(Fault::Timeout(name))
            }
            Ok(Ok(value)) => Ok(Some(value)),
            Ok(Err(e)) if e.is_closed() || e.as_db_error().is_none() => {
                self.metrics
                    .errors
                    .get_or_create(&QueryLabels { query: name })
                    .inc();
                Err(Fault::Closed(error_text(&e)))
            }
            Ok(Err(e)) => {
                self.metrics
                    .errors
                    .get_or_create(&QueryLabels { query: name })
                    .inc();
                tracing::debug!(query = name, "recorder query failed: {}", error_text(&e));
                Ok(None)
            }
        }
    }
}

/// Connects with `tls` under `timeout` and spawns the connection's task.
async fn connect_with<T>(
    pg: &tokio_postgres::Config,
    tls: T,
    timeout: Duration,
) -> Result<(Client, tokio::task::JoinHandle<()>), (&'static str, String)>
where
    T: MakeTlsConnect<Socket> + Send,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let (client, connection) = tokio::time::timeout(timeout, pg.connect(tls))
        .await
        .map_err(|_| ("timeout", format!("no connection within {timeout:?}")))?
        .map_err(|e| {
            (
                connect_failure_reason(&e),
                format!("cannot connect: {}", error_text(&e)),
            )
        })?;
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((client, task))
}

/// A bounded `reason` label for a failed connect.
fn connect_failure_reason(e: &tokio_postgres::Error) -> &'static str {
    if let Some(db) = e.as_db_error() {
        // Class 28: invalid authorization (a wrong password, or no pg_hba.conf
        // line for this client, e.g. plain text to a hostssl-only server).
        return if db.code().code().starts_with("28") {
            "auth"
        } else {
            "other"
        };
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<TlsHandshakeError>() {
            return "tls";
        }
        if s.is::<std::io::Error>() {
            return "io";
        }
        source = s.source();
    }
    // tokio-postgres's own TLS errors ("server does not support TLS" under
    // `require`) carry no type to match, only this text.
    if e.to_string().contains("TLS") {
        return "tls";
    }
    "other"
}

/// tokio-postgres hides the server's message in the source chain.
fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}
