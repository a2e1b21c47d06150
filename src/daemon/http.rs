//! The daemon's HTTP endpoints (`daemon.listen`): `/healthz` for probes, `/metrics` for
//! Prometheus, and the read-only live view: `/` (the report's page from the live log),
//! `/api/passes` and `/api/audit` (paged JSON). The view and its API are served on a
//! loopback address, or anywhere with `daemon.ui_token_file` as a bearer token.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures::TryStreamExt;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Shared;
use crate::audit::export::parse_time;
use crate::audit::{Filter, Outcome, Period};
use crate::config::ListenerLimits;
use crate::pass::PassStatus;
use crate::review::{Integrity, Review, Source};
use crate::secret::Secret;

/// The most rows one `/api/audit` or `/api/passes` answer carries.
const MAX_PAGE: i64 = 1_000;

/// Pages of the live view built at once; more requests wait their turn.
const PAGE_BUILDS: usize = 4;

/// How far back the live view reaches (`?since=`); `casewarden report` for longer.
const MAX_SINCE_DAYS: i64 = 400;

/// What the live view's handlers share.
struct View {
    shared: Arc<Shared>,
    /// The result of verifying the chain, by the head it was verified at: a page verifies
    /// only when the log grew since.
    verified: tokio::sync::Mutex<Option<(String, Integrity)>>,
    builds: tokio::sync::Semaphore,
}

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
    let limits = shared.config.daemon.listener;
    let loopback = listen.ip().is_loopback();
    let access = match (token, loopback) {
        (Some(t), _) => Access::Token(Arc::new(t)),
        (None, true) => Access::Open,
        (None, false) => {
            tracing::warn!(%listen, "daemon.listen is not a loopback address and daemon.ui_token_file is not set: the live view is not served, only /healthz and /metrics");
            Access::Closed
        }
    };
    let state = Arc::new(View {
        shared: shared.clone(),
        verified: tokio::sync::Mutex::new(None),
        builds: tokio::sync::Semaphore::new(PAGE_BUILDS),
    });
    let view = axum::Router::new()
        .route("/", get(live_view))
        .route("/api/passes", get(api_passes))
        .route("/api/audit", get(api_audit))
        .with_state(state)
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
    tokio::spawn(accept(listener, app, limits));
    Ok(())
}

/// Serves connections, at most `max_connections` at once: past that, new ones wait in the
/// kernel's backlog (nothing is accepted, so no descriptor is spent) until one closes. A
/// client has `header_timeout` to send a request's headers and is dropped after
/// `idle_timeout` with nothing sent either way, so slow or silent clients cannot hold the
/// slots.
async fn accept(listener: tokio::net::TcpListener, app: axum::Router, limits: ListenerLimits) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors or a reset before accept: wait, never spin.
                tracing::warn!(error = %e, "the HTTP listener cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let (stream, quiet) = Watched::new(stream);
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let conn = http.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                () = quiet.until_idle(limits.idle_timeout) => {}
            }
            drop(slot);
        });
    }
}

/// A connection that notes when it last read or wrote anything.
struct Watched {
    inner: tokio::net::TcpStream,
    clock: Clock,
}

/// When a connection last moved data: ms after it was accepted.
#[derive(Clone)]
struct Clock {
    started: tokio::time::Instant,
    last: Arc<AtomicU64>,
}

impl Watched {
    fn new(inner: tokio::net::TcpStream) -> (Watched, Clock) {
        let clock = Clock {
            started: tokio::time::Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        };
        let watched = Watched {
            inner,
            clock: clock.clone(),
        };
        (watched, clock)
    }
}

impl Clock {
    fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    /// Resolves once the connection moved nothing for `idle`.
    async fn until_idle(&self, idle: Duration) {
        loop {
            let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
            let deadline = self.started + last + idle;
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut me.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            me.clock.touch();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let me = self.get_mut();
        let polled = Pin::new(&mut me.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            me.clock.touch();
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
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
async fn live_view(State(view): State<Arc<View>>, Query(p): Query<ViewParams>) -> Response {
    let shared = &view.shared;
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
    let oldest =
        crate::audit::timestamp(chrono::Utc::now() - chrono::Duration::days(MAX_SINCE_DAYS));
    if period.since.as_deref().is_some_and(|s| s < oldest.as_str()) {
        return bad_request(format!(
            "since: the live view reaches back at most {MAX_SINCE_DAYS} days; `casewarden report --since` for longer"
        ));
    }
    let rules = shared
        .state()
        .rules
        .rules
        .iter()
        .map(|r| r.name.clone())
        .collect();
    let source = Source::new(Some(&shared.config), rules, shared.config.audit.location());
    let Ok(_turn) = view.builds.acquire().await else {
        return server_error("the live view is shutting down");
    };
    let store = &shared.ctx.audit;
    let integrity = match verified(&view, store).await {
        Ok(i) => i,
        Err(e) => return server_error(e),
    };
    match Review::build_with(store, &period, source, integrity).await {
        Ok(review) => Html(crate::review::render(&review, true)).into_response(),
        Err(e) => server_error(e),
    }
}

/// What `audit verify` says of the chain, verified again only when its head moved.
async fn verified(
    view: &View,
    store: &crate::audit::AuditStore,
) -> Result<Integrity, crate::audit::AuditError> {
    let mut cached = view.verified.lock().await;
    let (_, head) = store.head().await?;
    if let Some((at, integrity)) = cached.as_ref()
        && *at == head
    {
        return Ok(integrity.clone());
    }
    let integrity = crate::review::integrity(store).await?;
    *cached = Some((head, integrity.clone()));
    Ok(integrity)
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
async fn api_passes(State(view): State<Arc<View>>, Query(p): Query<PageParams>) -> Response {
    let shared = &view.shared;
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
async fn api_audit(State(view): State<Arc<View>>, Query(p): Query<AuditParams>) -> Response {
    let shared = &view.shared;
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
