//! One case: `GET /cases/{id}` and the other per-case reads of 5.x servers (summary,
//! observables, scores, alerts).

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use crate::sim::answer::{data_answer, data_bytes, error, no_case};
use crate::sim::state::{Shared, SimState, lock, read};

pub(super) async fn get_case(
    State(state): State<Shared>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    {
        let s = read(&state);
        if s.faults.fail_reads_after_updates && s.update_calls.contains_key(&id) {
            return error(StatusCode::SERVICE_UNAVAILABLE, "injected fault");
        }
        if s.faults.edit_before_read.is_none() {
            return case_answer(&s, &id);
        }
    }
    let mut s = lock(&state);
    if let Some((who, field, value)) = s.faults.edit_before_read.clone()
        && s.case(&id).is_some()
        && s.edited.insert(id.clone())
    {
        s.human_change(&id, &who, &field, value);
    }
    case_answer(&s, &id)
}

fn case_answer(s: &SimState, id: &str) -> Response {
    match s.index.get(id).copied() {
        Some(i) => data_bytes(&s.served(i)),
        None => no_case(id),
    }
}

/// The other per-case reads of 5.x servers, answered with small well-formed bodies.
pub(super) async fn case_part(
    State(state): State<Shared>,
    UrlPath((id, part)): UrlPath<(String, String)>,
) -> Response {
    let s = read(&state);
    let Some(case) = s.case(&id) else {
        return no_case(&id);
    };
    let data = match part.as_str() {
        "summary" => json!(format!(
            "Observed {} alert(s)\nInvolved 1 entity: {}",
            case.get("size").and_then(Value::as_i64).unwrap_or(0),
            case.pointer("/metadata/entity_id")
                .and_then(Value::as_str)
                .unwrap_or("")
        )),
        "observables" => json!({"observables": [], "total": 0}),
        // A list of scores with when each was given, as the vendor's own clients read it.
        "scores" => json!([{
            "score": case.get("score").or_else(|| case.get("case_score")).cloned().unwrap_or(Value::Null),
            "timestamp": case.get("modified_at").or_else(|| case.get("created_at")).cloned().unwrap_or(Value::Null),
        }]),
        "alerts" => json!({"docs": [], "total": 0}),
        _ => return error(StatusCode::NOT_FOUND, format!("no route {part} for a case")),
    };
    data_answer(&data)
}
