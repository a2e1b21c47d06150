//! The daemon's HTTP endpoints (`daemon.listen`): `/healthz` for probes, `/metrics` for
//! Prometheus.

use std::sync::Arc;

use axum::http::{StatusCode, header};
use axum::routing::get;

use super::Shared;
use crate::pass::PassStatus;

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

/// `unhealthy` (503) when no token can be had or a schedule's last pass broke;
/// `degraded` (200: casewarden is working, a person should look) when the breaker has
/// disabled a rule, the last reload failed or a last pass was degraded; else `ok`.
async fn health(shared: &Shared) -> (StatusCode, axum::Json<serde_json::Value>) {
    let mut reasons = Vec::new();
    let mut warnings = Vec::new();
    if let Err(e) = shared.ctx.client.authenticate().await {
        reasons.push(format!("token: {e}"));
    }
    let (last, disabled, reload_error, last_good) = {
        let state = shared.state();
        (
            state.last.clone(),
            state.breaker.disabled(),
            state.reload_error.clone(),
            state.last_good,
        )
    };
    for (schedule, status) in &last {
        if status.is_broken() {
            reasons.push(format!("last pass of {schedule:?} ended {status}"));
        } else if *status == PassStatus::Degraded {
            warnings.push(format!(
                "last pass of {schedule:?} was degraded: a rule was halted by the guard or failed on some case (see the log)"
            ));
        }
    }
    for rule in &disabled {
        warnings.push(format!(
            "rule {rule:?} is disabled by the circuit breaker until its file changes"
        ));
    }
    warnings.extend(reload_error);
    let (code, status) = match (reasons.is_empty(), warnings.is_empty()) {
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "unhealthy"),
        (true, false) => (StatusCode::OK, "degraded"),
        (true, true) => (StatusCode::OK, "ok"),
    };
    let age = last_good
        .and_then(|t| t.elapsed().ok())
        .map(|d| d.as_secs());
    let body = serde_json::json!({
        "status": status,
        "reasons": reasons,
        "warnings": warnings,
        "disabled_rules": disabled,
        "last_pass": last,
        "last_good_pass_age_secs": age,
    });
    (code, axum::Json(body))
}
