//! Faults the simulator can be switched into (latency, outages, 5xx and 429 bursts, early
//! token expiry, cut-short or redirected answers), injected by a middleware that also
//! records every request.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use super::answer::error;
use super::state::{RedirectFault, SeenRequest, Shared, SimState, lock, read};

/// Injects latency, outages, 5xx and 429 bursts, and records every request.
pub(super) async fn faults_and_log(
    State(state): State<Shared>,
    req: Request,
    next: Next,
) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let arrived = std::time::Instant::now();
    let latency = read(&state).faults.latency_ms;
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let (injected, apply_delay) = {
        let s = read(&state);
        if may_answer(&s) {
            drop(s);
            let mut s = lock(&state);
            let injected = injected(&mut s, &method, &path);
            (injected, s.faults.slow_write_apply_ms)
        } else {
            if !path.ends_with("/access_token") {
                s.api_requests.fetch_add(1, Ordering::Relaxed);
            }
            (None, s.faults.slow_write_apply_ms)
        }
    };
    let is_write = (method == "POST" || method == "PUT") && !path.ends_with("/access_token");
    let resp = match injected {
        Some(r) => r,
        // Detached, so the write lands even if the client gives up (or dies) meanwhile.
        None if is_write && apply_delay > 0 => tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(apply_delay)).await;
            next.run(req).await
        })
        .await
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        None => next.run(req).await,
    };
    // Logged before a held-back answer, which a client that gives up never waits for.
    let slow = {
        let s = read(&state);
        let bytes = axum::body::HttpBody::size_hint(resp.body()).exact();
        let seen = SeenRequest {
            method,
            path,
            query,
            status: resp.status().as_u16(),
            arrived,
            at: std::time::Instant::now(),
        };
        s.log(seen, bytes.unwrap_or(0));
        s.faults.slow_write_answers_ms
    };
    if slow > 0 && is_write {
        tokio::time::sleep(Duration::from_millis(slow)).await;
    }
    resp
}

/// Whether a fault may answer instead of the route (or count down): only then does a
/// request take the state's lock exclusively. Every fault `injected` acts on is listed.
fn may_answer(s: &SimState) -> bool {
    let f = &s.faults;
    f.redirect.is_some()
        || f.down
        || f.token_fail_next > 0
        || f.rate_limit_every > 0
        || f.throttle_next > 0
        || f.fail_next > 0
        || f.error_rate > 0.0
        || s.burst_left > 0
}

/// The answer a fault gives instead of the route's, if one does: a redirect, an outage, a
/// token service failure, or (for every call but the token's) an API fault.
fn injected(s: &mut SimState, method: &str, path: &str) -> Option<Response> {
    let is_token = path.ends_with("/access_token");
    let redirect = s.faults.redirect.clone().filter(|r| {
        path.ends_with(&r.path_suffix) && r.method.as_ref().is_none_or(|m| *m == method)
    });
    if let Some(r) = redirect {
        Some(redirected(&r))
    } else if s.faults.down {
        Some(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "service unavailable",
        ))
    } else if is_token && s.faults.token_fail_next > 0 {
        s.faults.token_fail_next -= 1;
        Some(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "token service unavailable",
        ))
    } else if is_token {
        None
    } else {
        api_fault(s)
    }
}

/// The 3xx a redirect fault answers with (a bad `Location` is left out).
fn redirected(r: &RedirectFault) -> Response {
    let mut resp = Response::new(axum::body::Body::empty());
    *resp.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::FOUND);
    if let Ok(v) = header::HeaderValue::from_str(&r.location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// Counts an API call and answers it with a 429 of a burst or an injected 5xx when due.
fn api_fault(s: &mut SimState) -> Option<Response> {
    let calls = s.api_requests.fetch_add(1, Ordering::Relaxed) + 1;
    let every = s.faults.rate_limit_every;
    if every > 0 && calls.is_multiple_of(every) {
        s.burst_left = s.faults.rate_limit_burst.max(1);
    }
    if s.faults.throttle_next > 0 {
        s.faults.throttle_next -= 1;
        s.burst_left += 1;
    }
    if s.burst_left > 0 {
        s.burst_left -= 1;
        let mut r = error(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded");
        r.headers_mut().insert(
            header::RETRY_AFTER,
            header::HeaderValue::from(s.faults.retry_after_secs),
        );
        Some(r)
    } else if s.faults.fail_next > 0 {
        s.faults.fail_next -= 1;
        Some(error(StatusCode::SERVICE_UNAVAILABLE, "injected fault"))
    } else if s.faults.error_rate > 0.0 && s.rng.f64() < s.faults.error_rate {
        Some(error(StatusCode::SERVICE_UNAVAILABLE, "injected fault"))
    } else {
        None
    }
}
