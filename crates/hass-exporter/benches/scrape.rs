//! Scrape latency and memory of a release-built `hass-exporter` with all four
//! targets real or stood in: a PostgreSQL (TempPostgres) holding HA's
//! recorder schema, a Mosquitto, a stand-in Home Assistant REST API and a
//! stand-in serial bridge. Three cases, one exporter: all targets up; the
//! database hung (SIGSTOP, so queries and connects time out); Home Assistant
//! answering after 3 s (past the exporter's 500 ms timeout). Each case
//! scrapes `/metrics` N times spread over 5 s, one new TCP connection per
//! scrape, and reports p50/p99; then the exporter's RSS.
//!
//! Run: `cargo bench -p hass-exporter --bench scrape` (needs Debian's
//! postgresql and mosquitto); `-- N` sets the scrapes per case (default 2000).

// Printing the report is this binary's job.
#![allow(clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Exporter, StandInBridge, percentile, scrape_latencies, value};
use hass_test_support::StandInHa;
use hass_test_support::stand_in_ha::TOKEN;
use hass_test_support::{SpawnedBinary, TempPostgres, free_addr, wait_for};

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs bench
    // binaries too, without it, and must not run a benchmark that asserts
    // nothing as if it were a test.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let scrapes: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2000);
    println!("load average at start: {}", load_average());

    let ha = StandInHa::start();
    let pg = TempPostgres::start().expect("PostgreSQL");
    pg.psql(include_str!("../tests/fixtures/recorder_schema.sql"))
        .expect("psql");
    pg.psql(
        "INSERT INTO schema_changes (schema_version, changed) VALUES (53, now());
         INSERT INTO states (state, last_updated_ts) VALUES ('on', extract(epoch FROM now()));",
    )
    .expect("psql");
    let bridge = StandInBridge::start(200, "ready\nok device:zigbee\nok device:zwave\n");
    let mqtt = free_addr();
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("mosquitto.conf"),
        format!(
            "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\nsys_interval 1\nuser root\n",
            mqtt.port()
        ),
    )
    .expect("mosquitto.conf");
    let mut cmd = Command::new("mosquitto");
    cmd.arg("-c").arg(dir.path().join("mosquitto.conf"));
    let _mosquitto = SpawnedBinary::spawn(cmd).expect("mosquitto");
    wait_for(Duration::from_secs(10), || {
        std::net::TcpStream::connect(mqtt).ok()
    })
    .expect("mosquitto listening");

    // Short intervals, so the hung and slow targets are being hit (and time
    // out) throughout the scrapes, not once.
    let exporter = Exporter::start(
        &format!(
            "home_assistant:\n  url: {}\n  token: {{ file: {{dir}}/ha-token }}\n  poll_interval: 1s\n  \
             timeout: 500ms\n  states_interval: 5s\n  required: true\n\
             postgres:\n  connection: {}\n  interval: 1s\n  query_timeout: 1s\n  connect_timeout: 1s\n  required: true\n\
             broker:\n  address: {mqtt}\n  interval: 1s\n  required: true\n\
             bridges:\n  - name: node1\n    url: http://{}\n    interval: 1s\n    required: true\n",
            ha.url(),
            pg.connection_string(),
            bridge.addr
        ),
        &[("ha-token", TOKEN)],
    );
    exporter.wait_status("/readyz", 200, Duration::from_secs(20));
    let families = exporter.metrics();
    let samples: usize = families.iter().map(|f| f.samples.len()).sum();
    let bytes = hass_test_support::http::get(exporter.admin, "/metrics")
        .map(|r| r.body.len())
        .unwrap_or_default();
    println!(
        "exposition: {} families, {samples} samples, {bytes} bytes",
        families.len()
    );
    // Idle: a few probe rounds with nothing scraping.
    std::thread::sleep(Duration::from_secs(5));
    let idle_rss = rss(&exporter, "VmRSS");

    scrape_latencies(exporter.admin, 50); // warm-up
    report("all targets up", &paced_scrapes(exporter.admin, scrapes));

    pg.pause();
    exporter.wait_metric("database down", Duration::from_secs(10), |m| {
        value(m, "hass_exporter_postgres_up", &[]) == Some(0.0)
    });
    report(
        "database hung (query/connect timeout 1s)",
        &paced_scrapes(exporter.admin, scrapes),
    );
    pg.resume();
    exporter.wait_metric("database back", Duration::from_secs(40), |m| {
        value(m, "hass_exporter_postgres_up", &[]) == Some(1.0)
    });

    ha.set(|b| b.delay = Duration::from_secs(3));
    exporter.wait_metric("HA timing out", Duration::from_secs(10), |m| {
        value(m, "hass_exporter_ha_up", &[]) == Some(0.0)
    });
    report(
        "Home Assistant answering after 3s (timeout 500ms)",
        &paced_scrapes(exporter.admin, scrapes),
    );
    ha.set(|b| b.delay = Duration::ZERO);

    println!(
        "exporter RSS with all four targets: idle {idle_rss}, after the run {}, peak {}",
        rss(&exporter, "VmRSS"),
        rss(&exporter, "VmHWM")
    );
    println!("load average at end: {}", load_average());
}

/// How long each case's scrapes are spread over: several probe rounds, so
/// scrapes land while probes wait on a hung or slow target, time out and
/// reconnect, not only in between.
const CASE_SPAN: Duration = Duration::from_secs(5);

/// `n` scrapes spread evenly over [`CASE_SPAN`]; sorted latencies.
fn paced_scrapes(admin: SocketAddr, n: usize) -> Vec<Duration> {
    let started = Instant::now();
    let step = CASE_SPAN / u32::try_from(n.max(1)).unwrap_or(u32::MAX);
    let mut latencies = Vec::with_capacity(n);
    for i in 0..n {
        let due = started + step * u32::try_from(i).unwrap_or(u32::MAX);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        latencies.extend(scrape_latencies(admin, 1));
    }
    latencies.sort();
    latencies
}

fn report(case: &str, sorted: &[Duration]) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{case}: {} scrapes, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        sorted.len(),
        ms(percentile(sorted, 0.5)),
        ms(percentile(sorted, 0.99)),
        ms(sorted.last().copied().unwrap_or_default()),
    );
}

/// A `/proc/<pid>/status` line such as `VmRSS`, in MiB.
fn rss(exporter: &Exporter, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{}/status", exporter.process.pid()))
        .unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or_else(|| "?".to_owned(), |kb| format!("{:.1} MiB", kb / 1024.0))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
