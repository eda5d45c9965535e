//! The admin HTTP server every binary runs on its own port: `/healthz` for
//! kubelet's liveness probe, `/readyz` for its readiness probe, `/metrics` for
//! Prometheus.

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use crate::liveness::Liveness;
use crate::metrics::{Metrics, OPENMETRICS_CONTENT_TYPE};
use crate::readiness::Readiness;
use crate::{ComponentInfo, Fatal};

/// What the admin endpoints read from.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub readiness: Readiness,
    pub liveness: Liveness,
    pub metrics: Metrics,
}

impl AdminState {
    /// Fresh state for `info`'s component, with the per-check readiness gauge
    /// registered as `hass_<component>_readiness_check{check}`.
    pub fn new(info: &ComponentInfo) -> Self {
        let readiness = Readiness::new();
        let metrics = Metrics::new(info);
        let gauge = readiness.gauge();
        metrics.register(|r| {
            r.register(
                "readiness_check",
                "Whether each named readiness check passes (1) or not (0)",
                gauge,
            );
        });
        Self {
            readiness,
            liveness: Liveness::new(),
            metrics,
        }
    }
}

/// The admin routes; a component may merge routes of its own (the exporter's
/// `/probe/*`) before serving.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Binds the admin address, with an error that says which address and why.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, Fatal> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Fatal::runtime(format!("admin server: cannot listen on {addr}: {e}")))
}

/// Serves `router` until `stop` completes: at most 256 connections at once,
/// 16 from one address, each closed when a request's headers take over 10 s
/// (or it idles that long); refusals counted in
/// `hass_<component>_admin_connections_refused`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    metrics: Metrics,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let limits = crate::http_server::HttpLimits::admin();
    let refused = limits.refused.clone();
    metrics.register(|r| {
        r.register(
            "admin_connections_refused",
            "Admin connections closed on arrival: 256 were open, or 16 from the same address",
            refused,
        );
    });
    crate::http_server::serve(listener, router, limits, stop).await;
}

async fn healthz(State(state): State<AdminState>) -> Response {
    let silent = state.liveness.silent();
    if silent.is_empty() {
        return (StatusCode::OK, "ok\n").into_response();
    }
    let mut body = String::from("wedged\n");
    for s in silent {
        body.push_str(&format!(
            "FAIL {}: silent for {:?} (limit {:?})\n",
            s.name, s.silent_for, s.max_silence
        ));
    }
    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let report = state.readiness.report();
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, report.to_text()).into_response()
}

async fn metrics(State(state): State<AdminState>) -> Response {
    (
        [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
        state.metrics.encode(),
    )
        .into_response()
}
