//! The daemon's HTTP endpoints (`daemon.listen`): `/healthz` for probes, `/metrics` for
//! Prometheus.

use std::sync::Arc;

use axum::http::{StatusCode, header};
use axum::routing::get;

use super::Shared;

/// Binds `listen` and serves in the background; an address that cannot be bound is a
/// start-up error.
pub async fn serve(shared: Arc<Shared>, listen: &str) -> anyhow::Result<()> {
    let app = axum::Router::new()
        .route(
            "/healthz",
            get({
                let shared = shared.clone();
                move || async move { health(&shared).await }
            }),
        )
        .route(
            "/metrics",
            get(move || async move {
                let text = shared.metrics.render(shared.ctx.client.token_renewals());
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
            }),
        );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("daemon.listen {listen}: {e}"))?;
    tracing::info!(%listen, "serving /healthz and /metrics");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the metrics server stopped");
        }
    });
    Ok(())
}

/// 200 while a token can be had and no schedule's last pass broke, else 503 with reasons.
async fn health(shared: &Shared) -> (StatusCode, axum::Json<serde_json::Value>) {
    let mut reasons = Vec::new();
    if let Err(e) = shared.ctx.client.authenticate().await {
        reasons.push(format!("token: {e}"));
    }
    let last = shared.state().last.clone();
    for (schedule, status) in &last {
        if status.is_broken() {
            reasons.push(format!("last pass of {schedule:?} ended {status}"));
        }
    }
    let code = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if reasons.is_empty() { "ok" } else { "unhealthy" },
        "reasons": reasons,
        "last_pass": last,
    });
    (code, axum::Json(body))
}
