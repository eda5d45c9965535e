//! End to end with every target at once (stand-in HA, real PostgreSQL, real
//! Mosquitto, stand-in bridge): the whole exposition parses with the
//! reference OpenMetrics parser, scrapes stay fast, and the idle RSS is
//! measured.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Exporter, StandInBridge, percentile, scrape_latencies, value};
use hass_test_support::StandInHa;
use hass_test_support::stand_in_ha::TOKEN;
use hass_test_support::{SpawnedBinary, TempPostgres, free_addr, wait_for};

#[test]
fn every_target_at_once() {
    let ha = StandInHa::start();
    let pg = TempPostgres::start().expect("PostgreSQL");
    pg.psql(include_str!("fixtures/recorder_schema.sql"))
        .expect("psql");
    let bridge = StandInBridge::start(200, "ready\nok device:zigbee\n");
    let mqtt = free_addr();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mosquitto.conf"),
        format!(
            "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\nuser root\n",
            mqtt.port()
        ),
    )
    .unwrap();
    let mut cmd = Command::new("mosquitto");
    cmd.arg("-c").arg(dir.path().join("mosquitto.conf"));
    let _mosquitto = SpawnedBinary::spawn(cmd).expect("mosquitto");
    assert!(
        wait_for(Duration::from_secs(10), || std::net::TcpStream::connect(
            mqtt
        )
        .ok())
        .is_some()
    );

    let exporter = Exporter::start(
        &(format!(
            "homeassistant:\n  url: {}\n  token: {{ file: {{dir}}/ha-token }}\n  required: true\n",
            ha.url()
        ) + &format!(
            "postgres:\n  connection: host=127.0.0.1 port={} user=postgres dbname=postgres\n  required: true\n\
                 broker:\n  address: {mqtt}\n  required: true\n\
                 bridges:\n  - name: node1\n    url: http://{}/\n    required: true\n",
            pg.port(),
            bridge.addr
        )),
        &[("ha-token", TOKEN)],
    );
    exporter.wait_status("/readyz", 200, Duration::from_secs(15));
    let m = exporter.metrics();
    for up in [
        "hass_exporter_ha_up",
        "hass_exporter_postgres_up",
        "hass_exporter_broker_up",
    ] {
        assert_eq!(value(&m, up, &[]), Some(1.0), "{up}");
    }
    assert_eq!(
        value(
            &m,
            "hass_exporter_bridge_device_up",
            &[("device", "zigbee")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &m,
            "hass_exporter_readiness_check",
            &[("check", "bridge:node1")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&m, "hass_exporter_build_info", &[("component", "exporter")]),
        Some(1.0)
    );
    // Every family follows hass_exporter_<thing>.
    for family in &m {
        assert!(family.name.starts_with("hass_exporter_"), "{}", family.name);
    }

    let latencies = scrape_latencies(exporter.admin, 500);
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    eprintln!(
        "scrape latency, all targets up: p50 {p50:?} p99 {p99:?} (debug build, includes the test's HTTP client)"
    );
    assert!(p99 < Duration::from_millis(50), "p99 {p99:?}");

    let status =
        std::fs::read_to_string(format!("/proc/{}/status", exporter.process.pid())).unwrap();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap_or_default()
        .to_owned();
    eprintln!("exporter {rss} with all four targets (debug build)");
}
