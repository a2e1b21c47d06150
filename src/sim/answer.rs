//! Answers as the server writes them: `{"error": ...}`, JSON already serialized, `{"data":
//! ...}`, and the hand-made or cut-short answers faults call for.

use std::time::Duration;

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use serde_json::json;

use super::state::RawAnswer;

/// An error answer as the server gives one: `{"error": message}`.
pub(super) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

/// The 404 of a case id the server does not hold.
pub(super) fn no_case(id: &str) -> Response {
    error(StatusCode::NOT_FOUND, format!("case {id} not found"))
}

/// A JSON answer already serialized.
pub(super) fn json_bytes(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `{"data": value}` without copying `value` into a new tree first.
pub(super) fn data_answer<T: serde::Serialize + ?Sized>(value: &T) -> Response {
    #[derive(serde::Serialize)]
    struct Data<'a, T: ?Sized> {
        data: &'a T,
    }
    match serde_json::to_vec(&Data { data: value }) {
        Ok(body) => json_bytes(body),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `{"data": ...}` around JSON already written.
pub(super) fn data_bytes(json: &[u8]) -> Response {
    let mut body = Vec::with_capacity(json.len() + 10);
    body.extend_from_slice(b"{\"data\":");
    body.extend_from_slice(json);
    body.push(b'}');
    json_bytes(body)
}

/// An answer announcing its whole length whose connection drops halfway through.
pub(super) fn truncated(body: Vec<u8>) -> Response {
    let len = body.len();
    let half = body[..len / 2].to_vec();
    let chunks = futures::stream::iter([
        Ok::<_, std::io::Error>(half),
        Err(std::io::Error::other("connection dropped")),
    ]);
    let mut r = Response::new(axum::body::Body::from_stream(chunks));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, header::HeaderValue::from(len));
    r
}

/// A hand-made answer as the response it stands for, dripping its body if asked.
pub(super) fn raw_response(raw: RawAnswer) -> Response {
    let status = StatusCode::from_u16(raw.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = if raw.drip_ms == 0 {
        axum::body::Body::from(raw.body)
    } else {
        let chunks: Vec<Vec<u8>> = raw.body.chunks(1024).map(<[u8]>::to_vec).collect();
        let drip = Duration::from_millis(raw.drip_ms);
        axum::body::Body::from_stream(futures::stream::iter(chunks).then(move |c| async move {
            tokio::time::sleep(drip).await;
            Ok::<_, std::io::Error>(c)
        }))
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(&raw.content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}
