//! The daemon's HTTP endpoints (`daemon.listen`): `/healthz` for probes, `/metrics` for
//! Prometheus, and the read-only live view: `/` (the report's page from the live log),
//! `/api/passes` and `/api/audit` (paged JSON). The view and its API are served on a
//! loopback address, or anywhere with `daemon.ui_token_file` as a bearer token.

use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures::TryStreamExt;
use serde::Deserialize;

use super::Shared;
use crate::audit::export::parse_time;
use crate::audit::{Filter, Outcome, Period};
use crate::pass::PassStatus;
use crate::review::{Review, Source};
use crate::secret::Secret;

/// The most rows one `/api/audit` or `/api/passes` answer carries.
const MAX_PAGE: i64 = 1_000;

/// Who may see the live view.
#[derive(Clone)]
enum Access {
    Open,
    Token(Arc<Secret>),
    /// Not loopback and no token: only the probes are served.
    Closed,
}

/// Binds `listen` and serves in the background; an address that cannot be bound is a
/// start-up error.
pub async fn serve(
    shared: Arc<Shared>,
    listen: std::net::SocketAddr,
    token: Option<Secret>,
) -> anyhow::Result<()> {
    let loopback = listen.ip().is_loopback();
    let access = match (token, loopback) {
        (Some(t), _) => Access::Token(Arc::new(t)),
        (None, true) => Access::Open,
        (None, false) => {
            tracing::warn!(%listen, "daemon.listen is not a loopback address and daemon.ui_token_file is not set: the live view is not served, only /healthz and /metrics");
            Access::Closed
        }
    };
    let view = axum::Router::new()
        .route("/", get(live_view))
        .route("/api/passes", get(api_passes))
        .route("/api/audit", get(api_audit))
        .with_state(shared.clone())
        .layer(middleware::from_fn_with_state(access.clone(), guard));
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
        )
        .merge(view);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("daemon.listen {listen}: {e}"))?;
    match access {
        Access::Closed => tracing::info!(%listen, "serving /healthz and /metrics"),
        _ => tracing::info!(%listen, "serving /healthz, /metrics and the live view at /"),
    }
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
        "role": shared.leader.role(),
        "lease_epoch": shared.leader.epoch(),
        "reasons": reasons,
        "warnings": warnings,
        "disabled_rules": disabled,
        "last_pass": last,
        "last_good_pass_age_secs": age,
    });
    (code, axum::Json(body))
}

/// Lets a request through to the live view when the access rule allows it.
async fn guard(State(access): State<Access>, request: Request, next: Next) -> Response {
    let denied = |code: StatusCode, why: &str| (code, why.to_string()).into_response();
    match access {
        Access::Open => next.run(request).await,
        Access::Closed => denied(
            StatusCode::FORBIDDEN,
            "the live view needs daemon.ui_token_file when daemon.listen is not a loopback address",
        ),
        Access::Token(token) => {
            let given = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if same(given.as_bytes(), token.expose().as_bytes()) {
                next.run(request).await
            } else {
                denied(
                    StatusCode::UNAUTHORIZED,
                    "send the token of daemon.ui_token_file as Authorization: Bearer TOKEN",
                )
            }
        }
    }
}

/// Compares without stopping at the first difference, so timing tells nothing.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

fn bad_request(e: impl std::fmt::Display) -> Response {
    (StatusCode::BAD_REQUEST, e.to_string()).into_response()
}

fn server_error(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "the live view could not read the audit log");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "cannot read the audit log",
    )
        .into_response()
}

/// `since` and `until` as `casewarden audit` reads them.
fn times(
    since: Option<&str>,
    until: Option<&str>,
) -> Result<(Option<String>, Option<String>), String> {
    let one = |name: &str, v: Option<&str>| {
        v.map(parse_time)
            .transpose()
            .map_err(|e| format!("{name}: {e}"))
    };
    Ok((one("since", since)?, one("until", until)?))
}

#[derive(Debug, Deserialize)]
struct ViewParams {
    since: Option<String>,
    until: Option<String>,
    rule: Option<String>,
}

/// The report's page, from the live log.
async fn live_view(State(shared): State<Arc<Shared>>, Query(p): Query<ViewParams>) -> Response {
    let period = match times(
        Some(p.since.as_deref().unwrap_or("30d")),
        p.until.as_deref(),
    ) {
        Ok((since, until)) => Period {
            since,
            until,
            rule: p.rule,
        },
        Err(e) => return bad_request(e),
    };
    let source = Source {
        server_url: shared.config.stellar.url.clone(),
        audit_db: shared.config.audit.location(),
    };
    match Review::build(&shared.ctx.audit, &period, source).await {
        Ok(review) => Html(crate::review::render(&review, true)).into_response(),
        Err(e) => server_error(e),
    }
}

#[derive(Debug, Deserialize)]
struct PageParams {
    since: Option<String>,
    until: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

fn page(limit: Option<i64>, offset: Option<i64>) -> (i64, i64) {
    (
        limit.unwrap_or(100).clamp(1, MAX_PAGE),
        offset.unwrap_or(0).max(0),
    )
}

/// Passes, newest first: `{passes, next_offset}`.
async fn api_passes(State(shared): State<Arc<Shared>>, Query(p): Query<PageParams>) -> Response {
    let (since, until) = match times(p.since.as_deref(), p.until.as_deref()) {
        Ok(t) => t,
        Err(e) => return bad_request(e),
    };
    let (limit, offset) = page(p.limit, p.offset);
    let period = Period {
        since,
        until,
        rule: None,
    };
    match shared.ctx.audit.passes_in(&period, limit + offset).await {
        Ok(all) => {
            let rows: Vec<_> = all.into_iter().skip(offset as usize).collect();
            let next = (rows.len() as i64 == limit).then_some(offset + limit);
            axum::Json(serde_json::json!({"passes": rows, "next_offset": next})).into_response()
        }
        Err(e) => server_error(e),
    }
}

/// The filters of `casewarden audit`.
#[derive(Debug, Deserialize)]
struct AuditParams {
    case: Option<String>,
    ticket: Option<i64>,
    rule: Option<String>,
    since: Option<String>,
    until: Option<String>,
    outcome: Option<String>,
    pass: Option<String>,
    tenant: Option<String>,
    instance: Option<String>,
    #[serde(default)]
    newest: bool,
    limit: Option<i64>,
    offset: Option<i64>,
}

/// Audit rows, oldest first unless `newest=true`: `{rows, next_offset}`.
async fn api_audit(State(shared): State<Arc<Shared>>, Query(p): Query<AuditParams>) -> Response {
    let (since, until) = match times(p.since.as_deref(), p.until.as_deref()) {
        Ok(t) => t,
        Err(e) => return bad_request(e),
    };
    let outcome = match p.outcome.as_deref().map(str::parse::<Outcome>).transpose() {
        Ok(o) => o,
        Err(e) => return bad_request(format!("outcome: {e}")),
    };
    let (limit, offset) = page(p.limit, p.offset);
    let filter = Filter {
        case_id: p.case,
        ticket_id: p.ticket,
        rule: p.rule,
        since,
        until,
        outcome,
        run_id: p.pass,
        tenant: p.tenant,
        instance: p.instance,
        limit: Some(limit),
        offset: Some(offset),
        newest: p.newest,
    };
    match shared
        .ctx
        .audit
        .query(&filter)
        .try_collect::<Vec<_>>()
        .await
    {
        Ok(rows) => {
            let next = (rows.len() as i64 == limit).then_some(offset + limit);
            axum::Json(serde_json::json!({"rows": rows, "next_offset": next})).into_response()
        }
        Err(e) => server_error(e),
    }
}
