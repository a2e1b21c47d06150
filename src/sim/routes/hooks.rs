//! `/hooks/{name}`: a webhook receiver standing in for Slack or a ticketing system, so
//! notifications can be checked.

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::sim::state::{Shared, Webhook, lock};

/// Records a webhook; answers as `faults.hook_status` and `hook_delay_ms` say.
pub(super) async fn record_hook(
    State(state): State<Shared>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let header = |h: &str| {
        headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (status, delay) = {
        let mut s = lock(&state);
        s.webhooks.push(Webhook {
            name,
            event: header("x-casewarden-event"),
            signature: header("x-casewarden-signature"),
            timestamp: header("x-casewarden-timestamp"),
            body: body.to_vec(),
            at: std::time::Instant::now(),
        });
        (s.faults.hook_status, s.faults.hook_delay_ms)
    };
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    let status = status
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::OK);
    (status, "").into_response()
}
