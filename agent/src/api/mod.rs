//! HTTP: `/healthz`, `/metrics`, `/status`, `/incidents`. Read-only, served from the last
//! published status; no handler touches a watched filesystem or waits on the engine (an
//! evidence bundle is read from the state directory on a blocking thread, one at a time,
//! under a timeout). With a budget table,
//! `/healthz` answers 503 only while the host holds an out-of-service lease.

pub mod client;
mod incidents;
pub mod server;

use std::sync::Arc;

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::net::TcpListener;

use crate::{publish::shared::Shared, publish::status::Unhealthy};

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/incidents", get(incidents::list))
        .route("/incidents/{id}", get(incidents::one))
        .with_state(shared)
}

async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    let s = shared.status();
    let failed: Vec<_> = s.failed_critical().collect();
    if failed.is_empty() {
        return (StatusCode::OK, "ok\n").into_response();
    }
    if let Some(held) = shared.healthz_hold() {
        // The budget holds this host in service: a load balancer must not replace it.
        let body = serde_json::json!({ "healthy": false, "out_of_service": false, "held": held, "failed": failed });
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
    }
    let body = serde_json::to_string(&Unhealthy {
        healthy: false,
        failed,
    })
    .unwrap_or_else(|_| "{\"healthy\":false}".into());
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.encode(),
    )
        .into_response()
}

/// The engine's status with the remediation report (incidents, step results) beside it.
#[derive(serde::Serialize)]
struct FullStatus<'a> {
    #[serde(flatten)]
    status: &'a crate::publish::status::Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    remediation: Option<&'a serde_json::Value>,
}

async fn status(State(shared): State<Arc<Shared>>) -> Response {
    let s = shared.status();
    let r = shared.remediation();
    let full = FullStatus {
        status: &s,
        remediation: r.as_deref(),
    };
    match serde_json::to_string_pretty(&full) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Serves until `shutdown` resolves, within [`crate::api::server::Limits::default`].
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::api::server::serve(
        listener,
        router(shared),
        crate::api::server::Limits::default(),
        shutdown,
    )
    .await
}
