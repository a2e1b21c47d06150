//! The update call in both flavours (4.3: `POST /cases?id=`, 5.x: `PUT /cases/{id}`): a
//! server of one flavour answers the other's call with 405; bodies are validated as real
//! servers do, and every change is recorded as the API user's.

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::sim::answer::{data_bytes, error, no_case};
use crate::sim::state::{Shared, SimState, lock};
use crate::stellar::model::{PRIORITIES, RESOLUTIONS, STATUSES};
use crate::stellar::{ApiFlavor, priority_rank};

#[derive(serde::Deserialize)]
pub(super) struct IdQuery {
    id: Option<String>,
}

pub(super) async fn update_legacy(
    State(state): State<Shared>,
    Query(q): Query<IdQuery>,
    body: axum::body::Bytes,
) -> Response {
    let Some(id) = q.id else {
        return error(StatusCode::BAD_REQUEST, "missing ?id=<case_id>");
    };
    update(&state, &id, &body, ApiFlavor::Legacy)
}

pub(super) async fn update_v5(
    State(state): State<Shared>,
    UrlPath(id): UrlPath<String>,
    body: axum::body::Bytes,
) -> Response {
    update(&state, &id, &body, ApiFlavor::V5)
}

fn update(state: &Shared, id: &str, body: &[u8], route: ApiFlavor) -> Response {
    let mut s = lock(state);
    *s.update_calls.entry(id.to_string()).or_default() += 1;
    if route != s.flavor {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "this server speaks the {} update flavour",
                s.flavor.as_str()
            ),
        );
    }
    if s.faults.fail_updates_for.contains(id) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
    }
    let Some(&idx) = s.index.get(id) else {
        return no_case(id);
    };
    let body: Map<String, Value> = match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => m,
        _ => return error(StatusCode::BAD_REQUEST, "body must be a JSON object"),
    };
    let changes = match validate_update(&s, &body) {
        Ok(c) => c,
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
    };
    apply(&mut s, id, idx, changes);
    if s.faults.garble_write_answers {
        return (StatusCode::OK, "<html>OK</html>").into_response();
    }
    let rate = s.faults.apply_then_fail;
    if rate > 0.0 && s.rng.f64() < rate {
        return gateway_error();
    }
    data_bytes(&s.served(idx))
}

/// What a load balancer answers when the server behind it took too long: the update was
/// applied all the same.
fn gateway_error() -> Response {
    let page = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";
    (
        StatusCode::BAD_GATEWAY,
        [(axum::http::header::CONTENT_TYPE, "text/html")],
        page,
    )
        .into_response()
}

/// Makes `changes` to the case at `idx` as the API user: what differs is set and recorded
/// with `"api": true`, and the case's modifier, time and version move on regardless.
fn apply(s: &mut SimState, id: &str, idx: usize, changes: Vec<(String, Value)>) {
    let api_user_id = s.api_user_id().to_string();
    let api_user_name = s.users[0].name.clone();
    // 4.3 servers name the modifier by login, 5.x by user id.
    let modifier = match s.flavor {
        ApiFlavor::Legacy => s.api_user.clone(),
        ApiFlavor::V5 => api_user_id.clone(),
    };
    s.remember(idx);
    let now = crate::now_ms();
    let case = s.cases[idx].as_object_mut().expect("cases are objects");
    let mut entries = Vec::new();
    for (field, to) in changes {
        let from = case.get(&field).cloned().unwrap_or(Value::Null);
        let to = if field == "tags" {
            apply_tags(&from, &to)
        } else {
            to
        };
        if from == to {
            continue;
        }
        if field == "status" && matches!(to.as_str(), Some("Resolved" | "Cancelled")) {
            case.insert("closed".into(), json!(now));
        }
        case.insert(field.clone(), to.clone());
        entries.push(json!({"api": true, "field": field, "from": from, "to": to, "timestamp": now, "user": api_user_id}));
    }
    case.insert("modified_at".into(), json!(now));
    case.insert("modified_by".into(), json!(modifier));
    let version = case.get("version").and_then(Value::as_i64).unwrap_or(0) + 1;
    case.insert("version".into(), json!(version));
    for entry in entries {
        s.record_change(id, entry, &api_user_name);
    }
}

/// The tag list after `{"add": [...], "delete": [...]}`, keeping the existing order.
fn apply_tags(current: &Value, ops: &Value) -> Value {
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect()
    };
    let delete = strings(ops.get("delete"));
    let mut tags: Vec<String> = strings(Some(current))
        .into_iter()
        .filter(|t| !delete.contains(t))
        .collect();
    for t in strings(ops.get("add")) {
        if !tags.contains(&t) {
            tags.push(t);
        }
    }
    json!(tags)
}

/// `value` as one of the `allowed` names of `what`, or the 400 message.
fn one_of<'a>(value: &'a Value, what: &str, allowed: &[&str]) -> Result<&'a str, String> {
    value
        .as_str()
        .filter(|v| allowed.contains(v))
        .ok_or_else(|| {
            format!(
                "invalid {what} {value}: expected one of {}",
                allowed.join(", ")
            )
        })
}

/// `tags.add` or `tags.delete` of an update: a list of strings, absent meaning none.
fn tag_list(tags: &Value, key: &str) -> Result<Vec<String>, String> {
    match tags.get(key) {
        None => Ok(vec![]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| {
                t.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("tags.{key} must hold strings"))
            })
            .collect(),
        Some(_) => Err(format!("tags.{key} must be a list")),
    }
}

/// The user id an update's `assignee` (an id or an email) names; `""` unassigns, as real
/// servers show an unassigned case.
fn assignee(s: &SimState, value: &Value) -> Result<Value, String> {
    let v = value.as_str().ok_or("assignee must be a string")?;
    if v.is_empty() {
        return Ok(json!(""));
    }
    let user = s
        .users
        .iter()
        .find(|u| u.user_id == v || u.email.eq_ignore_ascii_case(v))
        .ok_or_else(|| format!("unknown assignee {v:?}"))?;
    Ok(json!(user.user_id))
}

fn priority_key(flavor: ApiFlavor) -> &'static str {
    match flavor {
        ApiFlavor::Legacy => "priority",
        ApiFlavor::V5 => "severity",
    }
}

/// The (field, new value) pairs an update body asks for, or the 400 message.
fn validate_update(
    s: &SimState,
    body: &Map<String, Value>,
) -> Result<Vec<(String, Value)>, String> {
    let pkey = priority_key(s.flavor);
    let mut out = Vec::new();
    for (key, value) in body {
        match key.as_str() {
            "status" => {
                let v = one_of(value, "status", &STATUSES)?;
                out.push(("status".to_string(), json!(v)));
            }
            k if k == pkey => {
                let v = one_of(value, pkey, &PRIORITIES)?;
                out.push((pkey.to_string(), json!(v)));
                out.push(("priority_num".to_string(), json!(priority_rank(v))));
            }
            "resolution" if s.flavor == ApiFlavor::V5 => {
                let v = one_of(value, "resolution", &RESOLUTIONS)?;
                if body.get("status").and_then(Value::as_str) != Some("Resolved") {
                    return Err("resolution is only accepted with status Resolved".into());
                }
                out.push(("resolution".to_string(), json!(v)));
            }
            "assignee" => out.push(("assignee".to_string(), assignee(s, value)?)),
            "update_alerts" => {
                let closing = matches!(
                    body.get("status").and_then(Value::as_str),
                    Some("Resolved" | "Cancelled")
                );
                if !value.is_boolean() || !closing {
                    return Err(
                        "update_alerts must be a boolean, sent with status Resolved or Cancelled"
                            .into(),
                    );
                }
            }
            "description" => {
                let v = value.as_str().ok_or("description must be a string")?;
                out.push(("description".to_string(), json!(v)));
            }
            "tags" => {
                if !value.is_object() {
                    return Err("tags must be {\"add\": [...], \"delete\": [...]}".into());
                }
                let (add, delete) = (tag_list(value, "add")?, tag_list(value, "delete")?);
                out.push(("tags".to_string(), json!({"add": add, "delete": delete})));
            }
            other => {
                return Err(format!(
                    "unknown field {other:?} for the {} flavour",
                    s.flavor.as_str()
                ));
            }
        }
    }
    if out.is_empty() {
        return Err(
            "at least one of priority, status, assignee, tags or description is required".into(),
        );
    }
    Ok(out)
}
