//! The real exporter against a real PostgreSQL holding Home Assistant's
//! recorder schema (`fixtures/recorder_schema.sql`: schema 53, written by
//! `tools/recorder_schema.py` from Home Assistant 2026.11.0's own SQLAlchemy
//! models for the PostgreSQL dialect), filled with rows of known timestamps.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Exporter, percentile, scrape_latencies, value};
use hass_test_support::TempPostgres;

const SCHEMA: &str = include_str!("fixtures/recorder_schema.sql");

const NEWEST_STATE: f64 = 1_700_003_600.25;
const OLDEST_STATE: f64 = 1_700_000_000.5;
const SHORT_TERM_STATS: f64 = 1_700_003_300.0;
const LONG_TERM_STATS: f64 = 1_699_999_200.0;

const TABLES: [&str; 13] = [
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

fn recorder_database() -> TempPostgres {
    let pg = TempPostgres::start().expect("PostgreSQL");
    pg.psql(SCHEMA).expect("psql");
    pg.psql(
        &format!(
            "INSERT INTO schema_changes (schema_version, changed) VALUES (52, now() - interval '1 day'), (53, now());
             INSERT INTO recorder_runs (start, \"end\", closed_incorrect, created) VALUES
               (now() - interval '3 days', now() - interval '2 days', false, now()),
               (now() - interval '2 days', NULL, true, now()),
               (now() - interval '1 day', NULL, false, now());
             INSERT INTO states_meta (entity_id) VALUES ('sensor.temp'), ('light.kitchen');
             INSERT INTO state_attributes (hash, shared_attrs) VALUES (1, '{{}}');
             INSERT INTO states (state, last_updated_ts, last_changed_ts, metadata_id, attributes_id) VALUES
               ('20.0', {OLDEST_STATE}, {OLDEST_STATE}, 1, 1),
               ('on', 1700001000, 1700001000, 2, 1),
               ('21.5', {NEWEST_STATE}, {NEWEST_STATE}, 1, 1);
             INSERT INTO statistics_meta (statistic_id, source, has_mean, has_sum, mean_type) VALUES ('sensor.temp', 'recorder', true, false, 1);
             INSERT INTO statistics_short_term (metadata_id, start_ts, created_ts, mean) VALUES
               (1, {SHORT_TERM_STATS} - 300, {SHORT_TERM_STATS}, 20.5), (1, {SHORT_TERM_STATS}, {SHORT_TERM_STATS}, 21.0);
             INSERT INTO statistics (metadata_id, start_ts, created_ts, mean) VALUES (1, {LONG_TERM_STATS}, {LONG_TERM_STATS}, 20.7);"
        ),
    )
    .expect("psql");
    pg
}

fn config(pg: &TempPostgres, extra: &str) -> String {
    format!(
        "postgres:\n  host: 127.0.0.1\n  port: {}\n  user: postgres\n  dbname: postgres\n  \
         password: {{ file: {{dir}}/pg-password }}\n  interval: 300ms\n  query_timeout: 1s\n  \
         connect_timeout: 1s\n{extra}",
        pg.port()
    )
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

#[test]
fn recorder_metrics_from_the_real_schema() {
    let pg = recorder_database();
    let exporter = Exporter::start(
        &config(&pg, ""),
        &[("pg-password", "unused-with-trust-auth\n")],
    );
    exporter.wait_metric("postgres up", Duration::from_secs(10), |m| {
        value(m, "hass_exporter_postgres_up", &[]) == Some(1.0)
    });
    let m = exporter.metrics();
    let get = |name: &str| value(&m, name, &[]).unwrap_or_else(|| panic!("{name} missing"));
    assert_eq!(
        get("hass_exporter_recorder_last_state_timestamp_seconds"),
        NEWEST_STATE
    );
    assert_eq!(
        get("hass_exporter_recorder_oldest_state_timestamp_seconds"),
        OLDEST_STATE
    );
    let age = get("hass_exporter_recorder_last_state_age_seconds");
    assert!((age - (now() - NEWEST_STATE)).abs() < 60.0, "{age}");
    let oldest_age = get("hass_exporter_recorder_oldest_state_age_seconds");
    assert!(
        (oldest_age - (now() - OLDEST_STATE)).abs() < 60.0,
        "{oldest_age}"
    );
    assert_eq!(
        get("hass_exporter_recorder_short_term_statistics_last_start_timestamp_seconds"),
        SHORT_TERM_STATS
    );
    assert_eq!(
        get("hass_exporter_recorder_statistics_last_start_timestamp_seconds"),
        LONG_TERM_STATS
    );
    assert_eq!(get("hass_exporter_recorder_schema_version"), 53.0);
    assert_eq!(get("hass_exporter_recorder_unclean_shutdowns"), 1.0);
    assert!(get("hass_exporter_postgres_database_size_bytes") > 1_000_000.0);
    let connections = get("hass_exporter_postgres_connections");
    assert!(connections >= 1.0, "{connections}");
    assert_eq!(get("hass_exporter_postgres_max_connections"), 100.0);
    let sizes = m
        .iter()
        .find(|f| f.name == "hass_exporter_postgres_table_size_bytes")
        .expect("table sizes");
    assert_eq!(sizes.samples.len(), TABLES.len(), "{sizes:#?}");
    for table in TABLES {
        let size = value(
            &m,
            "hass_exporter_postgres_table_size_bytes",
            &[("table", table)],
        )
        .unwrap_or_else(|| panic!("{table} size missing"));
        // Every table has at least its primary key index page.
        assert!(size >= 8192.0, "{table}: {size}");
    }

    // A new row moves "last written" on the next probe.
    pg.psql("INSERT INTO states (state, last_updated_ts) VALUES ('22.0', 1700007200.75)")
        .expect("psql");
    exporter.wait_metric("newer state row", Duration::from_secs(5), |m| {
        value(
            m,
            "hass_exporter_recorder_last_state_timestamp_seconds",
            &[],
        ) == Some(1_700_007_200.75)
    });

    // A row written now: the age alert's input reads (near) zero after the
    // next probe, and keeps growing between probes.
    let written = now();
    pg.psql(
        "INSERT INTO states (state, last_updated_ts) VALUES ('22.5', extract(epoch FROM clock_timestamp()))",
    )
    .expect("psql");
    exporter.wait_metric("fresh state row", Duration::from_secs(5), |m| {
        value(
            m,
            "hass_exporter_recorder_last_state_timestamp_seconds",
            &[],
        )
        .is_some_and(|t| t >= written - 1.0)
    });
    let age = exporter
        .value("hass_exporter_recorder_last_state_age_seconds", &[])
        .expect("age");
    assert!(
        (0.0..5.0).contains(&age),
        "seconds since the last write: {age}"
    );
    let last = exporter
        .value("hass_exporter_recorder_last_state_timestamp_seconds", &[])
        .expect("timestamp");
    assert!((last - written).abs() < 5.0, "{last} vs {written}");
}

#[test]
fn missing_recorder_tables_are_absent_not_zero() {
    // A fresh database before HA's first start: up, but no recorder values.
    let pg = TempPostgres::start().expect("PostgreSQL");
    let exporter = Exporter::start(&config(&pg, ""), &[("pg-password", "x")]);
    exporter.wait_metric("postgres up", Duration::from_secs(10), |m| {
        value(m, "hass_exporter_postgres_up", &[]) == Some(1.0)
    });
    let m = exporter.metrics();
    assert!(
        value(
            &m,
            "hass_exporter_recorder_last_state_timestamp_seconds",
            &[]
        )
        .is_none()
    );
    assert!(value(&m, "hass_exporter_recorder_schema_version", &[]).is_none());
    assert!(value(&m, "hass_exporter_postgres_database_size_bytes", &[]).is_some());
    assert!(
        value(
            &m,
            "hass_exporter_postgres_query_errors_total",
            &[("query", "states")]
        )
        .is_some_and(|n| n >= 1.0)
    );
}

#[test]
fn database_killed_goes_down_within_an_interval_and_recovers_after_restart() {
    let mut pg = recorder_database();
    let exporter = Exporter::start(&config(&pg, "  required: true\n"), &[("pg-password", "x")]);
    exporter.wait_status("/readyz", 200, Duration::from_secs(10));

    // TempPostgres runs with fsync and synchronous_commit off; a checkpoint
    // makes the fixture survive the kill as committed data would.
    pg.psql("CHECKPOINT").expect("psql");
    pg.kill();
    let down = exporter.wait_metric("postgres down", Duration::from_secs(5), |m| {
        value(m, "hass_exporter_postgres_up", &[]) == Some(0.0)
    });
    eprintln!("postgres_up 0 {down:?} after the server was killed (interval 300ms)");
    assert!(down < Duration::from_millis(1500), "{down:?}");
    assert_eq!(exporter.status("/readyz"), 503, "postgres is required");
    // Stale recorder values are dropped with the connection.
    assert!(
        exporter
            .value("hass_exporter_recorder_last_state_timestamp_seconds", &[])
            .is_none()
    );
    let latencies = scrape_latencies(exporter.admin, 50);
    eprintln!(
        "scrape latency with the database down: p99 {:?}",
        percentile(&latencies, 0.99)
    );
    assert!(percentile(&latencies, 0.99) < Duration::from_millis(100));

    pg.restart().unwrap_or_else(|e| panic!("{e}\n{}", pg.log()));
    let up = exporter.wait_metric("postgres back", Duration::from_secs(40), |m| {
        value(m, "hass_exporter_postgres_up", &[]) == Some(1.0)
    });
    eprintln!("postgres_up 1 {up:?} after the restart");
    assert_eq!(
        exporter.value("hass_exporter_recorder_last_state_timestamp_seconds", &[]),
        Some(NEWEST_STATE)
    );
    exporter.wait_status("/readyz", 200, Duration::from_secs(5));
}

/// Between probes the exporter sits on an idle connection; a server that
/// goes away closes it, and that alone marks the database down, without
/// waiting for the next probe (30 s by default).
#[test]
fn database_killed_is_down_at_once_with_the_default_interval() {
    let mut pg = recorder_database();
    let exporter = Exporter::start(
        &format!(
            "postgres:\n  host: 127.0.0.1\n  port: {}\n  user: postgres\n  dbname: postgres\n",
            pg.port()
        ),
        &[],
    );
    exporter.wait_metric("postgres up", Duration::from_secs(10), |m| {
        value(m, "hass_exporter_postgres_up", &[]) == Some(1.0)
    });
    // Let the first probe's queries finish, so the kill lands between probes.
    std::thread::sleep(Duration::from_millis(500));
    pg.kill();
    let down = exporter.wait_metric("postgres down", Duration::from_secs(10), |m| {
        value(m, "hass_exporter_postgres_up", &[]) == Some(0.0)
    });
    eprintln!("postgres_up 0 {down:?} after the server was killed (interval 30s)");
    assert!(down < Duration::from_secs(2), "{down:?}");
    let log = exporter.process.stderr();
    assert!(log.contains("recorder database down"), "{log}");

    // And it reconnects on its own backoff, not at the next 30 s probe.
    pg.restart().unwrap_or_else(|e| panic!("{e}\n{}", pg.log()));
    let up = exporter.wait_metric("postgres back", Duration::from_secs(20), |m| {
        value(m, "hass_exporter_postgres_up", &[]) == Some(1.0)
    });
    eprintln!("postgres_up 1 {up:?} after the restart");
}

#[test]
fn hung_database_never_slows_a_scrape_and_is_down_after_the_query_timeout() {
    let pg = recorder_database();
    let exporter = Exporter::start(&config(&pg, ""), &[("pg-password", "x")]);
    exporter.wait_metric("postgres up", Duration::from_secs(10), |m| {
        value(m, "hass_exporter_postgres_up", &[]) == Some(1.0)
    });

    pg.pause();
    let down = exporter.wait_metric("postgres down while hung", Duration::from_secs(5), |m| {
        value(m, "hass_exporter_postgres_up", &[]) == Some(0.0)
    });
    eprintln!("postgres_up 0 {down:?} after the server hung (interval 300ms, query_timeout 1s)");
    assert!(down < Duration::from_millis(2500), "{down:?}");
    let latencies = scrape_latencies(exporter.admin, 200);
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    eprintln!("scrape latency with the database hung: p50 {p50:?} p99 {p99:?}");
    assert!(p99 < Duration::from_millis(100), "p99 {p99:?}");
    // The hung query was counted (and the connection dropped, not waited on).
    assert!(
        exporter
            .value("hass_exporter_postgres_query_errors_total", &[])
            .is_some_and(|n| n >= 1.0)
    );

    pg.resume();
    let up = exporter.wait_metric("postgres back", Duration::from_secs(40), |m| {
        value(m, "hass_exporter_postgres_up", &[]) == Some(1.0)
    });
    eprintln!("postgres_up 1 {up:?} after the server resumed");
}
