//! The real exporter against a stand-in Home Assistant REST API: probes flip
//! with HA's core state, liveness survives outages up to `live_timeout` and
//! migrations beyond it, a rejected token pauses every `/api/` call, a slow
//! HA never slows a scrape, and no request ever reaches `/api/` without the
//! token.

mod common;

use std::time::{Duration, Instant};

use common::{Exporter, percentile, scrape_latencies, value};
use hass_test_support::StandInHa;
use hass_test_support::stand_in_ha::TOKEN;

fn config(ha: &StandInHa, extra: &str) -> String {
    format!(
        "home_assistant:\n  url: {}\n  token: {{ file: {{dir}}/ha-token }}\n  poll_interval: 100ms\n  \
         timeout: 500ms\n  states_interval: 200ms\n{extra}",
        ha.url()
    )
}

/// Every request to `/api/` carried exactly the configured token.
fn assert_api_always_authenticated(ha: &StandInHa, token: &str) {
    let seen = ha.calls();
    assert!(
        seen.iter().any(|s| s.path.starts_with("/api/")),
        "HA was never polled"
    );
    for s in seen.iter().filter(|s| s.path.starts_with("/api")) {
        assert_eq!(
            s.authorization.as_deref(),
            Some(format!("Bearer {token}").as_str()),
            "{} without the token",
            s.path
        );
    }
}

#[test]
fn probes_and_metrics_follow_the_core_state() {
    let ha = StandInHa::start();
    ha.set(|b| b.state = "NOT_RUNNING".into());
    let exporter = Exporter::start(
        &config(&ha, "  live_timeout: 30s\n"),
        &[("ha-token", &format!("{TOKEN}\n"))],
    );

    exporter.wait_metric("core state NOT_RUNNING", Duration::from_secs(5), |m| {
        value(
            m,
            "hass_exporter_ha_core_state",
            &[("state", "NOT_RUNNING")],
        ) == Some(1.0)
    });
    assert_eq!(exporter.status("/probe/ha/ready"), 503);
    // HA's HTTP server answers: started, though not RUNNING yet.
    assert_eq!(exporter.status("/probe/ha/startup"), 200);
    assert_eq!(exporter.status("/probe/ha/live"), 200);

    ha.set(|b| b.state = "STARTING".into());
    exporter.wait_metric("core state STARTING", Duration::from_secs(5), |m| {
        value(m, "hass_exporter_ha_core_state", &[("state", "STARTING")]) == Some(1.0)
    });
    assert_eq!(exporter.status("/probe/ha/ready"), 503);
    assert_eq!(exporter.status("/probe/ha/startup"), 200);

    ha.set(|b| b.state = "RUNNING".into());
    let flip = exporter.wait_status("/probe/ha/ready", 200, Duration::from_secs(5));
    eprintln!("ready flipped to 200 {flip:?} after HA reported RUNNING (poll 100ms)");
    assert!(flip < Duration::from_secs(2), "{flip:?}");
    assert_eq!(exporter.status("/probe/ha/startup"), 200);
    assert_eq!(exporter.status("/probe/ha/live"), 200);

    exporter.wait_metric("entity counts", Duration::from_secs(5), |m| {
        value(m, "hass_exporter_ha_entities", &[("domain", "light")]) == Some(3.0)
    });
    let m = exporter.metrics();
    assert_eq!(value(&m, "hass_exporter_ha_up", &[]), Some(1.0));
    for state in [
        "NOT_RUNNING",
        "STARTING",
        "STOPPING",
        "FINAL_WRITE",
        "STOPPED",
    ] {
        assert_eq!(
            value(&m, "hass_exporter_ha_core_state", &[("state", state)]),
            Some(0.0),
            "{state}"
        );
    }
    assert_eq!(
        value(&m, "hass_exporter_ha_core_state", &[("state", "RUNNING")]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &m,
            "hass_exporter_ha_entities_unavailable",
            &[("domain", "light")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&m, "hass_exporter_ha_entities", &[("domain", "sensor")]),
        Some(2.0)
    );
    assert_eq!(
        value(
            &m,
            "hass_exporter_ha_entities_unavailable",
            &[("domain", "sensor")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &m,
            "hass_exporter_ha_entities_unavailable",
            &[("domain", "sun")]
        ),
        Some(0.0)
    );
    assert_eq!(
        value(&m, "hass_exporter_ha_info", &[("version", "2026.11.0")]),
        Some(1.0)
    );
    // The older shape says nothing about migrations.
    assert_eq!(
        value(&m, "hass_exporter_ha_recorder_migration_in_progress", &[]),
        Some(0.0)
    );
    let latency = value(
        &m,
        "hass_exporter_ha_api_request_duration_seconds_count",
        &[("endpoint", "core_state")],
    );
    assert!(latency.is_some_and(|n| n >= 3.0), "{latency:?}");
    // Bounded labels: the core_state family has exactly the six states.
    let states = m
        .iter()
        .find(|f| f.name == "hass_exporter_ha_core_state")
        .expect("core_state family");
    assert_eq!(states.samples.len(), 6);

    ha.set(|b| b.state = "STOPPING".into());
    exporter.wait_status("/probe/ha/ready", 503, Duration::from_secs(5));

    // /api/states and /api/config are fetched at their own, slower interval.
    let seen = ha.calls();
    let polls = seen.iter().filter(|s| s.path == "/api/core/state").count();
    let states_calls = seen.iter().filter(|s| s.path == "/api/states").count();
    assert!(
        states_calls >= 1 && states_calls < polls,
        "{states_calls} vs {polls}"
    );
    assert_api_always_authenticated(&ha, TOKEN);
}

#[test]
fn ha_down_fails_ready_at_once_and_live_only_after_live_timeout() {
    let mut ha = StandInHa::start();
    let exporter = Exporter::start(&config(&ha, "  live_timeout: 4s\n"), &[("ha-token", TOKEN)]);
    exporter.wait_status("/probe/ha/ready", 200, Duration::from_secs(5));

    let down_at = Instant::now();
    ha.set_down(true);
    let ready_flip = exporter.wait_status("/probe/ha/ready", 503, Duration::from_secs(5));
    eprintln!("ready 503 {ready_flip:?} after HA went down");
    assert!(ready_flip < Duration::from_secs(2), "{ready_flip:?}");
    // Still alive before live_timeout.
    assert!(down_at.elapsed() < Duration::from_millis(3500));
    assert_eq!(exporter.status("/probe/ha/live"), 200);
    exporter.wait_status("/probe/ha/live", 503, Duration::from_secs(8));
    let live_flip = down_at.elapsed();
    eprintln!("live 503 {live_flip:?} after HA went down (live_timeout 4s)");
    // Silence counts from HA's last answer, up to one poll (100 ms) before
    // it went down.
    assert!(live_flip >= Duration::from_millis(3850), "{live_flip:?}");
    assert!(live_flip < Duration::from_secs(6), "{live_flip:?}");
    assert_eq!(exporter.value("hass_exporter_ha_up", &[]), Some(0.0));
    assert!(
        exporter
            .value(
                "hass_exporter_ha_api_request_errors_total",
                &[("endpoint", "core_state"), ("kind", "connect")]
            )
            .is_some_and(|n| n >= 1.0)
    );

    ha.set_down(false);
    let back = exporter.wait_status("/probe/ha/ready", 200, Duration::from_secs(5));
    eprintln!("ready 200 {back:?} after HA came back");
    assert_eq!(exporter.status("/probe/ha/live"), 200);
    assert_api_always_authenticated(&ha, TOKEN);
}

#[test]
fn recorder_migration_blocks_ready_and_keeps_live() {
    let mut ha = StandInHa::start();
    ha.set(|b| b.recorder_state = Some((true, false)));
    let exporter = Exporter::start(&config(&ha, "  live_timeout: 1s\n"), &[("ha-token", TOKEN)]);
    exporter.wait_metric("migration reported", Duration::from_secs(5), |m| {
        value(m, "hass_exporter_ha_recorder_migration_in_progress", &[]) == Some(1.0)
    });
    assert_eq!(
        exporter.value("hass_exporter_ha_recorder_migration_is_live", &[]),
        Some(0.0)
    );
    assert_eq!(
        exporter.status("/probe/ha/ready"),
        503,
        "a blocking migration is not ready"
    );
    assert_eq!(exporter.status("/probe/ha/startup"), 200);

    // A live migration serves meanwhile.
    ha.set(|b| b.recorder_state = Some((true, true)));
    exporter.wait_status("/probe/ha/ready", 200, Duration::from_secs(5));

    // HA busy migrating stops answering: live holds past live_timeout, and
    // a migration never counts against startup either.
    ha.set_down(true);
    exporter.wait_status("/probe/ha/ready", 503, Duration::from_secs(5));
    // Nothing changes for well past live_timeout (1 s).
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        exporter.status("/probe/ha/live"),
        200,
        "migration in progress keeps HA alive"
    );
    assert_eq!(exporter.status("/probe/ha/startup"), 200);

    // Migration done, then silence: now live fails.
    ha.set_down(false);
    ha.set(|b| b.recorder_state = Some((false, false)));
    exporter.wait_metric("migration finished", Duration::from_secs(5), |m| {
        value(m, "hass_exporter_ha_recorder_migration_in_progress", &[]) == Some(0.0)
    });
    ha.set_down(true);
    exporter.wait_status("/probe/ha/live", 503, Duration::from_secs(5));
}

#[test]
fn rejected_token_pauses_api_calls_loudly_and_a_new_token_resumes_at_once() {
    let ha = StandInHa::start();
    let exporter = Exporter::start(
        &config(&ha, "  auth_backoff: 60s\n  live_timeout: 1s\n"),
        &[("ha-token", "a-wrong-token")],
    );
    exporter.wait_metric("auth rejected", Duration::from_secs(5), |m| {
        value(m, "hass_exporter_ha_auth_rejected", &[]) == Some(1.0)
    });
    // Polls every 100 ms would make ~15 calls in 1.5 s; the pause makes none.
    std::thread::sleep(Duration::from_millis(1500));
    let m = exporter.metrics();
    assert_eq!(
        value(&m, "hass_exporter_ha_auth_failures_total", &[]),
        Some(1.0)
    );
    assert_eq!(
        value(&m, "hass_exporter_ha_auth_backoff_seconds", &[]),
        Some(60.0)
    );
    assert_eq!(value(&m, "hass_exporter_ha_up", &[]), Some(0.0));
    let seen = ha.calls();
    let api_calls = seen.iter().filter(|s| s.path.starts_with("/api")).count();
    assert_eq!(api_calls, 1, "{seen:#?}");
    // Unauthenticated pings outside /api/ keep liveness truthful.
    assert!(seen.iter().filter(|s| s.path == "/manifest.json").count() >= 5);
    assert!(
        seen.iter()
            .all(|s| s.path.starts_with("/api") || s.authorization.is_none())
    );
    assert_eq!(exporter.status("/probe/ha/live"), 200, "HA still answers");
    let body = hass_test_support::http::get(exporter.admin, "/probe/ha/ready").unwrap();
    assert_eq!(body.status, 503);
    assert!(body.body.contains("rejected the token"), "{}", body.body);
    let stderr = exporter.process.stderr();
    assert!(stderr.contains("rejected the token"), "{stderr}");
    assert!(
        !stderr.contains("a-wrong-token"),
        "the token leaked into the log"
    );

    // A rotated Secret is picked up without waiting out the pause.
    std::fs::write(exporter.path("ha-token"), TOKEN).unwrap();
    let resumed = exporter.wait_status("/probe/ha/ready", 200, Duration::from_secs(5));
    eprintln!("ready {resumed:?} after the token file changed");
    assert_eq!(
        exporter.value("hass_exporter_ha_auth_rejected", &[]),
        Some(0.0)
    );
    assert_eq!(
        exporter.value("hass_exporter_ha_auth_backoff_seconds", &[]),
        Some(0.0)
    );
}

/// The shipped startupProbe (180 × 10 s) restarts HA if startup fails for
/// 30 minutes; a wrong exporter token must not be able to cause that.
#[test]
fn startup_follows_whether_ha_answers_at_all_even_with_a_rejected_token() {
    let mut ha = StandInHa::start();
    ha.set_down(true);
    let exporter = Exporter::start(
        &config(
            &ha,
            "  auth_backoff: 60s
",
        ),
        &[("ha-token", "a-wrong-token")],
    );
    exporter.wait_metric("connect errors", Duration::from_secs(5), |m| {
        value(
            m,
            "hass_exporter_ha_api_request_errors_total",
            &[("endpoint", "core_state"), ("kind", "connect")],
        )
        .is_some_and(|n| n >= 1.0)
    });
    let body = hass_test_support::http::get(exporter.admin, "/probe/ha/startup").unwrap();
    assert_eq!(body.status, 503, "nothing answers yet");
    assert!(body.body.contains("does not answer"), "{}", body.body);

    ha.set_down(false);
    exporter.wait_metric("auth rejected", Duration::from_secs(5), |m| {
        value(m, "hass_exporter_ha_auth_rejected", &[]) == Some(1.0)
    });
    let body = hass_test_support::http::get(exporter.admin, "/probe/ha/startup").unwrap();
    assert_eq!(body.status, 200, "a 401 proves HA's server is up");
    assert!(body.body.contains("rejected the token"), "{}", body.body);
    assert_eq!(exporter.status("/probe/ha/ready"), 503);

    // The unauthenticated ping during the auth pause notices HA going away.
    ha.set_down(true);
    exporter.wait_status("/probe/ha/startup", 503, Duration::from_secs(5));
    ha.set_down(false);
    exporter.wait_status("/probe/ha/startup", 200, Duration::from_secs(5));
    let api_calls = ha
        .calls()
        .iter()
        .filter(|s| s.path.starts_with("/api"))
        .count();
    assert_eq!(api_calls, 1, "the auth pause holds");
}

#[test]
fn slow_ha_never_slows_a_scrape() {
    let ha = StandInHa::start();
    ha.set(|b| b.delay = Duration::from_secs(3));
    let exporter = Exporter::start(&config(&ha, ""), &[("ha-token", TOKEN)]);
    exporter.wait_metric("timeouts counted", Duration::from_secs(5), |m| {
        value(
            m,
            "hass_exporter_ha_api_request_errors_total",
            &[("endpoint", "core_state"), ("kind", "timeout")],
        )
        .is_some_and(|n| n >= 1.0)
    });
    let latencies = scrape_latencies(exporter.admin, 200);
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    eprintln!("scrape latency with HA answering after 3s (timeout 500ms): p50 {p50:?} p99 {p99:?}");
    assert!(p99 < Duration::from_millis(100), "p99 {p99:?}");
    assert_eq!(exporter.value("hass_exporter_ha_up", &[]), Some(0.0));
    assert_eq!(exporter.status("/probe/ha/ready"), 503);

    ha.set(|b| b.delay = Duration::ZERO);
    exporter.wait_status("/probe/ha/ready", 200, Duration::from_secs(5));
}

#[test]
fn probe_routes_answer_404_without_a_home_assistant_section() {
    let exporter = Exporter::start("bridges: []\n", &[]);
    assert_eq!(exporter.status("/probe/ha/ready"), 404);
    assert_eq!(exporter.status("/readyz"), 200);
}
