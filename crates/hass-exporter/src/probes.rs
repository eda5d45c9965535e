//! `/probe/ha/{ready,live,startup}` on the admin port: kubelet's probes for
//! the Home Assistant container, answered from the poller's last view, so a
//! probe never waits on HA itself.

use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::home_assistant::{HaShared, Verdict};

/// The probe routes; without a `home_assistant` section they answer 404.
pub fn router(ha: Option<HaShared>) -> Router {
    Router::new()
        .route("/probe/ha/ready", get(ready))
        .route("/probe/ha/live", get(live))
        .route("/probe/ha/startup", get(startup))
        .with_state(ha)
}

async fn ready(State(ha): State<Option<HaShared>>) -> Response {
    answer(ha.map(|ha| ha.view().ready()))
}

async fn startup(State(ha): State<Option<HaShared>>) -> Response {
    answer(ha.map(|ha| ha.view().startup()))
}

async fn live(State(ha): State<Option<HaShared>>) -> Response {
    answer(ha.map(|ha| ha.view().live(Instant::now(), ha.live_timeout)))
}

fn answer(verdict: Option<Verdict>) -> Response {
    match verdict {
        None => (
            StatusCode::NOT_FOUND,
            "home_assistant is not configured in the exporter's config\n",
        )
            .into_response(),
        Some(v) if v.ok => (StatusCode::OK, format!("ok: {}\n", v.reason)).into_response(),
        Some(v) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("FAIL: {}\n", v.reason),
        )
            .into_response(),
    }
}
