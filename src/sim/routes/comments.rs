//! What is said and done about a case: `/cases/{id}/comments` (read and post) and, on 5.x
//! servers, `/cases/{id}/activities`.

use std::collections::HashMap;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use crate::sim::answer::{data_answer, error, no_case};
use crate::sim::data;
use crate::sim::state::{Shared, lock, read};
use crate::stellar::ApiFlavor;

pub(super) async fn list_comments(
    State(state): State<Shared>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let s = read(&state);
    match s.case(&id) {
        Some(_) => listed(&s.comments, &id),
        None => no_case(&id),
    }
}

pub(super) async fn add_comment(
    State(state): State<Shared>,
    UrlPath(id): UrlPath<String>,
    body: axum::body::Bytes,
) -> Response {
    let mut s = lock(&state);
    if s.case(&id).is_none() {
        return no_case(&id);
    }
    let text = match serde_json::from_slice::<Value>(&body) {
        Ok(v) => match v.get("comment").and_then(Value::as_str) {
            Some(t) if !t.trim().is_empty() => t.to_string(),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "body must be {\"comment\": \"non-empty text\"}",
                );
            }
        },
        Err(_) => return error(StatusCode::BAD_REQUEST, "body must be JSON"),
    };
    let now = crate::now_ms();
    let comment = json!({
        "_id": data::hex_id("comment", s.rng.u64(..)),
        "comment": text,
        "case_id": id,
        "user": s.api_user_id(),
        "created_by": s.api_user,
        "created_at": now,
        "modified_at": now,
    });
    s.comments.entry(id).or_default().push(comment.clone());
    data_answer(&comment)
}

pub(super) async fn list_activities(
    State(state): State<Shared>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let s = read(&state);
    if s.case(&id).is_none() {
        return no_case(&id);
    }
    if s.flavor == ApiFlavor::Legacy {
        return error(StatusCode::NOT_FOUND, "no such route on a 4.3 server");
    }
    listed(&s.activities, &id)
}

/// `{"data": [...]}` of what a case has in `per_case` (none is an empty list).
fn listed(per_case: &HashMap<String, Vec<Value>>, id: &str) -> Response {
    let items = per_case.get(id).map_or(&[][..], Vec::as_slice);
    data_answer(items)
}
