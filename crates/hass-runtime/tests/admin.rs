//! The admin server over real HTTP, as kubelet and Prometheus use it.

use std::time::Duration;

use hass_runtime::ComponentInfo;
use hass_runtime::admin::{self, AdminState};
use hass_test_support::{http, openmetrics};
use prometheus_client::metrics::counter::Counter;

const INFO: ComponentInfo = ComponentInfo {
    name: "serial-bridge",
    version: "1.2.3",
    admin_port: 9182,
};

struct Admin {
    addr: std::net::SocketAddr,
    state: AdminState,
}

async fn start_admin() -> Admin {
    let state = AdminState::new(&INFO);
    let any_port = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let listener = admin::bind(any_port).await.expect("bind admin");
    let addr = listener.local_addr().expect("bound address");
    tokio::spawn(admin::serve(
        listener,
        admin::router(state.clone()),
        state.metrics.clone(),
        std::future::pending(),
    ));
    Admin { addr, state }
}

/// Runs a blocking HTTP GET off the async runtime.
async fn get(addr: std::net::SocketAddr, path: &'static str) -> http::Reply {
    tokio::task::spawn_blocking(move || http::get(addr, path))
        .await
        .expect("GET task")
        .expect("an HTTP answer")
}

#[tokio::test]
async fn readyz_follows_registered_checks() {
    let admin = start_admin().await;
    let device = admin.state.readiness.register("device:zigbee");

    let reply = get(admin.addr, "/readyz").await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(
        reply.body.contains("FAIL device:zigbee: starting"),
        "{}",
        reply.body
    );

    device.set_ready();
    let reply = get(admin.addr, "/readyz").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body.contains("ok device:zigbee"), "{}", reply.body);

    device.set_not_ready("unplugged: /dev/ttyUSB0 vanished");
    let reply = get(admin.addr, "/readyz").await;
    assert_eq!(reply.status, 503);
    assert!(
        reply.body.contains("unplugged: /dev/ttyUSB0 vanished"),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn readyz_fails_while_draining() {
    let admin = start_admin().await;
    admin.state.readiness.register("listener").set_ready();
    assert_eq!(get(admin.addr, "/readyz").await.status, 200);
    admin.state.readiness.set_draining();
    assert_eq!(get(admin.addr, "/readyz").await.status, 503);
}

#[tokio::test]
async fn healthz_fails_when_a_heartbeat_goes_silent() {
    let admin = start_admin().await;
    let beat = admin
        .state
        .liveness
        .register("serial-loop", Duration::from_millis(50));
    assert_eq!(get(admin.addr, "/healthz").await.status, 200);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let reply = get(admin.addr, "/healthz").await;
    assert_eq!(reply.status, 503);
    assert!(reply.body.contains("FAIL serial-loop"), "{}", reply.body);
    beat.beat();
    assert_eq!(get(admin.addr, "/healthz").await.status, 200);
}

#[tokio::test]
async fn metrics_parse_as_openmetrics_with_build_info() {
    let admin = start_admin().await;
    let reconnects = Counter::<u64>::default();
    let registered = reconnects.clone();
    admin.state.metrics.register(|r| {
        r.register("reconnects", "Times a device was reopened", registered);
    });
    reconnects.inc_by(3);
    admin.state.readiness.register("device:zigbee").set_ready();

    let reply = get(admin.addr, "/metrics").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.content_type.as_deref(),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let families = openmetrics::parse(&reply.body).unwrap();

    let build = openmetrics::find(&families, "hass_serial_bridge_build").expect("build info");
    assert_eq!(build.kind, "info");
    let sample = &build.samples[0];
    assert_eq!(sample.name, "hass_serial_bridge_build_info");
    assert_eq!(sample.labels["version"], "1.2.3");
    assert_eq!(sample.labels["component"], "serial-bridge");
    assert_eq!(sample.value, 1.0);

    let checks = openmetrics::find(&families, "hass_serial_bridge_readiness_check").expect("gauge");
    assert_eq!(checks.kind, "gauge");
    let zigbee = checks
        .samples
        .iter()
        .find(|s| s.labels.get("check").map(String::as_str) == Some("device:zigbee"))
        .expect("one series per registered check");
    assert_eq!(zigbee.value, 1.0);

    let counter = openmetrics::find(&families, "hass_serial_bridge_reconnects").expect("counter");
    assert_eq!(counter.kind, "counter");
    assert_eq!(
        counter.samples[0].name,
        "hass_serial_bridge_reconnects_total"
    );
    assert_eq!(counter.samples[0].value, 3.0);
}

#[tokio::test]
async fn the_openmetrics_parser_rejects_a_broken_exposition() {
    // Guards the check above: the parser must not accept anything it is fed.
    let err = openmetrics::parse("hass_x_total 1\n").unwrap_err();
    assert!(err.contains("rejected"), "{err}");
}
