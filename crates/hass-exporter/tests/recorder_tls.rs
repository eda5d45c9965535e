//! The recorder connection over TLS, against a real PostgreSQL started with
//! `ssl = on` and a certificate the test makes with the openssl CLI: each
//! `postgres.tls` mode connects (or refuses to) the way libpq's `sslmode`
//! would, and the server itself confirms the session is encrypted.

mod common;

use std::time::Duration;

use common::{Exporter, TestCerts, make_certs, value};
use hass_test_support::TempPostgres;
use hass_test_support::postgres::PostgresOptions;

fn tls_server(certs: &TestCerts, hba: Option<&str>) -> TempPostgres {
    TempPostgres::start_with(&PostgresOptions {
        tls: Some((certs.server_cert.clone(), certs.server_key.clone())),
        hba: hba.map(str::to_owned),
    })
    .expect("PostgreSQL with TLS")
}

/// `tls`/`ca_file` lines go in `extra`.
fn config(host: &str, pg: &TempPostgres, extra: &str) -> String {
    format!(
        "postgres:\n  host: {host}\n  port: {}\n  user: postgres\n  dbname: postgres\n  \
         interval: 300ms\n  query_timeout: 1s\n  connect_timeout: 1s\n{extra}",
        pg.port()
    )
}

fn wait_up(exporter: &Exporter) {
    exporter.wait_metric("postgres up", Duration::from_secs(10), |m| {
        value(m, "hass_exporter_postgres_up", &[]) == Some(1.0)
    });
}

/// Waits for evidence the exporter tried and was refused for `reason`,
/// then checks it is down.
fn wait_refused(exporter: &Exporter, reason: &str) {
    exporter.wait_metric(
        &format!("connect refused ({reason})"),
        Duration::from_secs(10),
        |m| {
            value(
                m,
                "hass_exporter_postgres_connect_failures_total",
                &[("reason", reason)],
            )
            .is_some_and(|n| n >= 1.0)
        },
    );
    let m = exporter.metrics();
    assert_eq!(value(&m, "hass_exporter_postgres_up", &[]), Some(0.0));
    assert_eq!(value(&m, "hass_exporter_postgres_tls", &[]), Some(0.0));
    assert!(value(&m, "hass_exporter_postgres_database_size_bytes", &[]).is_none());
}

/// What the server says about the exporter's session: `t` when encrypted.
fn server_sees_ssl(pg: &TempPostgres) -> String {
    pg.psql(
        "SELECT string_agg(ssl::text, ',') FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
         WHERE application_name = 'hass-exporter'",
    )
    .expect("psql")
}

#[test]
fn require_encrypts_and_metrics_flow() {
    let certs = make_certs();
    let pg = tls_server(&certs, None);
    let exporter = Exporter::start(&config("127.0.0.1", &pg, "  tls: require\n"), &[]);
    wait_up(&exporter);
    let m = exporter.metrics();
    assert_eq!(value(&m, "hass_exporter_postgres_tls", &[]), Some(1.0));
    assert!(value(&m, "hass_exporter_postgres_database_size_bytes", &[]).is_some_and(|b| b > 0.0));
    assert_eq!(server_sees_ssl(&pg), "true");
}

#[test]
fn verify_full_checks_the_ca_and_the_host_name() {
    let certs = make_certs();
    let pg = tls_server(&certs, None);
    let ca = certs.ca.display().to_string();
    let other_ca = certs.other_ca.display().to_string();
    let verify_full = |ca: &str| format!("  tls: verify_full\n  ca_file: {ca}\n");

    let right = Exporter::start(&config("127.0.0.1", &pg, &verify_full(&ca)), &[]);
    let wrong_ca = Exporter::start(&config("127.0.0.1", &pg, &verify_full(&other_ca)), &[]);
    // The certificate names 127.0.0.1, not localhost.
    let wrong_name = Exporter::start(&config("localhost", &pg, &verify_full(&ca)), &[]);
    let chain_only = Exporter::start(
        &config(
            "localhost",
            &pg,
            &format!("  tls: verify-ca\n  ca_file: {ca}\n"),
        ),
        &[],
    );

    wait_up(&right);
    assert_eq!(right.value("hass_exporter_postgres_tls", &[]), Some(1.0));
    wait_up(&chain_only);
    assert_eq!(
        chain_only.value("hass_exporter_postgres_tls", &[]),
        Some(1.0)
    );

    wait_refused(&wrong_ca, "tls");
    let log = wrong_ca.process.stderr();
    assert!(
        log.contains("recorder database down") && log.contains("UnknownIssuer"),
        "{log}"
    );
    wait_refused(&wrong_name, "tls");
    let log = wrong_name.process.stderr();
    assert!(log.contains("not valid for name \"localhost\""), "{log}");
    assert_eq!(server_sees_ssl(&pg), "true,true");
}

#[test]
fn prefer_falls_back_to_plain_text_and_require_refuses_a_server_without_tls() {
    let pg = TempPostgres::start().expect("PostgreSQL");
    let prefer = Exporter::start(&config("127.0.0.1", &pg, "  tls: prefer\n"), &[]);
    let require = Exporter::start(&config("127.0.0.1", &pg, "  tls: require\n"), &[]);
    wait_up(&prefer);
    assert_eq!(prefer.value("hass_exporter_postgres_tls", &[]), Some(0.0));
    assert_eq!(server_sees_ssl(&pg), "false");
    wait_refused(&require, "tls");
    let log = require.process.stderr();
    assert!(log.contains("server does not support TLS"), "{log}");
}

#[test]
fn hostssl_only_server_refuses_plain_text() {
    let certs = make_certs();
    let pg = tls_server(&certs, Some("hostssl all all 127.0.0.1/32 trust\n"));
    let plain = Exporter::start(&config("127.0.0.1", &pg, "  tls: disable\n"), &[]);
    let prefer = Exporter::start(&config("127.0.0.1", &pg, "  tls: prefer\n"), &[]);
    wait_refused(&plain, "auth");
    let log = plain.process.stderr();
    assert!(log.contains("no pg_hba.conf entry"), "{log}");
    wait_up(&prefer);
    assert_eq!(prefer.value("hass_exporter_postgres_tls", &[]), Some(1.0));
}

#[test]
fn verify_full_without_a_ca_file_is_a_config_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("exporter.yaml");
    std::fs::write(
        &config,
        "postgres:\n  host: db\n  user: hass\n  tls: verify_full\n",
    )
    .expect("config");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_hass-exporter"));
    cmd.arg("--config").arg(&config).arg("--check-config");
    let (status, _, stderr) = hass_test_support::binary::run(cmd).expect("run");
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("postgres.ca_file"), "{stderr}");
}
