//! The Cases API routes as a Stellar Cyber server answers them: tokens, listing with
//! filters and paging, both update flavours with their validation, comments, users,
//! activities, tenants.

use std::sync::Arc;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::data::{self, SimUser};
use super::faults::{error, faults_and_log, raw_response, truncated};
use super::state::{Shared, SimState, lock};
use crate::stellar::ApiFlavor;
use crate::stellar::model::{PRIORITIES, RESOLUTIONS, STATUSES};

pub(super) fn router(state: Shared) -> Router {
    Router::new()
        .route("/connect/api/v1/access_token", post(access_token))
        .route("/connect/api/v1/cases", get(list_cases).post(update_legacy))
        .route("/connect/api/v1/cases/{id}", get(get_case).put(update_v5))
        .route(
            "/connect/api/v1/cases/{id}/comments",
            get(list_comments).post(add_comment),
        )
        .route(
            "/connect/api/v1/cases/{id}/activities",
            get(list_activities),
        )
        .route("/connect/api/v1/cases/{id}/{part}", get(case_part))
        .route("/connect/api/v1/users", get(list_users))
        .route("/connect/api/v1/users/{id}", get(get_user))
        .route("/connect/api/v1/tenants", get(list_tenants))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            faults_and_log,
        ))
        // Outside the API's faults: a webhook receiver is another server.
        .route("/hooks/{name}", axum::routing::post(record_hook))
        .with_state(state)
}

/// Records a webhook; answers as `faults.hook_status` and `hook_delay_ms` say.
async fn record_hook(
    State(state): State<Shared>,
    axum::extract::Path(name): axum::extract::Path<String>,
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
        s.webhooks.push(super::state::Webhook {
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

pub(super) async fn access_token(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let mut s = lock(&state);
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let ok = if let Some(b) = auth.strip_prefix("Basic ") {
        basic_ok(&s, b)
    } else if let Some(key) = auth.strip_prefix("Bearer ") {
        key.trim() == s.api_key
    } else {
        false
    };
    if !ok {
        return error(StatusCode::UNAUTHORIZED, "invalid credentials");
    }
    let exp_ms = crate::now_ms() + s.token_ttl_secs as i64 * 1000;
    let exp = exp_ms / 1000;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let n = s.issued_tokens.len();
    let jwt = format!(
        "{}.{}.{}",
        b64.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        b64.encode(
            json!({"sub": s.api_user, "exp": exp, "jti": n, "nonce": s.rng.u64(..)}).to_string()
        ),
        b64.encode(s.rng.u64(..).to_be_bytes())
    );
    s.tokens.insert(jwt.clone(), exp_ms);
    s.issued_tokens.push(jwt.clone());
    Json(json!({"access_token": jwt, "exp": exp})).into_response()
}

/// The answer for a caller who is not authorized or asks for a case that does not exist.
pub(super) fn refuse(s: &SimState, headers: &HeaderMap, id: &str) -> Option<Response> {
    if let Err(msg) = authorize(s, headers) {
        return Some(error(StatusCode::UNAUTHORIZED, msg));
    }
    s.case(id)
        .is_none()
        .then(|| error(StatusCode::NOT_FOUND, format!("case {id} not found")))
}

/// Whether `Basic base64(user:key)` carries the simulator's credentials.
pub(super) fn basic_ok(s: &SimState, encoded: &str) -> bool {
    base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|raw| String::from_utf8(raw).ok())
        .is_some_and(|pair| pair == format!("{}:{}", s.api_user, s.api_key))
}

/// Checks the Bearer JWT (or, with `accept_basic`, Basic credentials); `Err` is the
/// message of the 401 to send.
pub(super) fn authorize(s: &SimState, headers: &HeaderMap) -> Result<(), &'static str> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if s.accept_basic
        && let Some(b) = auth.strip_prefix("Basic ")
    {
        return if basic_ok(s, b) {
            Ok(())
        } else {
            Err("invalid credentials")
        };
    }
    let token = auth.strip_prefix("Bearer ").unwrap_or("");
    match s.tokens.get(token) {
        Some(&exp_ms) if exp_ms > crate::now_ms() => Ok(()),
        Some(_) => Err("token expired"),
        None => Err("invalid token"),
    }
}

pub(super) fn field_str<'a>(case: &'a Value, key: &str) -> &'a str {
    case.get(key).and_then(Value::as_str).unwrap_or("")
}

pub(super) fn priority_key(flavor: ApiFlavor) -> &'static str {
    match flavor {
        ApiFlavor::Legacy => "priority",
        ApiFlavor::V5 => "severity",
    }
}

pub(super) async fn list_cases(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let mut s = lock(&state);
    if let Err(msg) = authorize(&s, &headers) {
        return error(StatusCode::UNAUTHORIZED, msg);
    }
    if let Some(raw) = s.faults.list_answer.clone() {
        return raw_response(raw);
    }
    let mut limit = 100usize;
    let mut skip = 0usize;
    let mut sort: Option<String> = None;
    let mut desc = false;
    let mut filters = Vec::new();
    for (k, v) in &params {
        match k.as_str() {
            "limit" => match v.parse::<usize>() {
                Ok(n) => limit = n.min(500),
                Err(_) => {
                    return error(StatusCode::BAD_REQUEST, format!("limit: not a number: {v}"));
                }
            },
            "skip" => match v.parse::<usize>() {
                Ok(n) => skip = n,
                Err(_) => {
                    return error(StatusCode::BAD_REQUEST, format!("skip: not a number: {v}"));
                }
            },
            "sort" => sort = Some(v.clone()),
            "order" => desc = v.eq_ignore_ascii_case("desc"),
            key if s.faults.refuse_filter.as_deref() == Some(key) => {
                return error(StatusCode::BAD_REQUEST, format!("unknown filter: {key}"));
            }
            _ => filters.push((k.clone(), v.clone())),
        }
    }
    // A person's edit lands before the first read of a case, by ticket number too.
    if let Some((who, field, value)) = s.faults.edit_before_read.clone()
        && let Some((_, tickets)) = filters.iter().find(|(k, _)| k == "ticket_id")
    {
        let read: Vec<String> = s
            .cases
            .iter()
            .filter_map(Value::as_object)
            .filter(|c| crate::stellar::filter::matches(*c, "ticket_id", tickets))
            .filter_map(|c| Some(c.get("_id")?.as_str()?.to_string()))
            .collect();
        for id in read {
            if s.edited.insert(id.clone()) {
                s.human_change(&id, &who, &field, value.clone());
            }
        }
    }
    // Paging re-runs the same query with a growing `skip`; filtering and sorting a large
    // population once per query (until a case changes) keeps big listings linear.
    let query_key = format!("{filters:?} {sort:?} {desc}");
    let cached = s
        .list_cache
        .as_ref()
        .filter(|(k, v, _)| *k == query_key && *v == s.version)
        .map(|(_, _, hits)| hits.clone());
    let tickets: Option<Vec<i64>> = match filters.as_slice() {
        [(k, list)] if k == "ticket_id" && sort.is_none() => {
            list.split(',').map(|t| t.trim().parse().ok()).collect()
        }
        _ => None,
    };
    let hits = match cached {
        Some(hits) => hits,
        None if let Some(tickets) = tickets => Arc::new(s.by_tickets(&tickets)),
        // The whole population in its own order: nothing to compute or remember.
        None if filters.is_empty() && sort.is_none() => Arc::new((0..s.cases.len()).collect()),
        None => {
            let mut hits: Vec<usize> = (0..s.cases.len())
                .filter(|&i| {
                    filters.iter().all(|(k, v)| {
                        s.cases[i]
                            .as_object()
                            .is_some_and(|o| crate::stellar::filter::matches(o, k, v))
                    })
                })
                .collect();
            if let Some(key) = &sort {
                hits.sort_by(|&a, &b| {
                    let (a, b) = (&s.cases[a], &s.cases[b]);
                    let ord = match (
                        a.get(key).and_then(Value::as_f64),
                        b.get(key).and_then(Value::as_f64),
                    ) {
                        (Some(x), Some(y)) => x.total_cmp(&y),
                        _ => field_str(a, key).cmp(field_str(b, key)),
                    };
                    if desc { ord.reverse() } else { ord }
                });
            }
            let hits = Arc::new(hits);
            s.list_cache = Some((query_key, s.version, hits.clone()));
            hits
        }
    };
    // Written straight to bytes: a page of 500 cases is ~600 KB, and building it as a
    // `Value` first would copy every case once more while the state is locked.
    let mut body = Vec::with_capacity(limit.min(hits.len()) * 1400 + 64);
    body.extend_from_slice(b"{\"data\":{\"cases\":[");
    for (n, &i) in hits.iter().skip(skip).take(limit).enumerate() {
        if n > 0 {
            body.push(b',');
        }
        serde_json::to_writer(&mut body, &s.cases[i]).expect("a Value serializes");
    }
    body.extend_from_slice(format!("],\"total\":{}}}}}", hits.len()).as_bytes());
    if s.faults.truncate_next_lists > 0 {
        s.faults.truncate_next_lists -= 1;
        return truncated(body);
    }
    json_bytes(body)
}

/// A JSON answer already serialized.
pub(super) fn json_bytes(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `{"data": value}` without copying `value` into a new tree first.
pub(super) fn data_answer(value: &Value) -> Response {
    #[derive(serde::Serialize)]
    struct Data<'a> {
        data: &'a Value,
    }
    json_bytes(serde_json::to_vec(&Data { data: value }).expect("a Value serializes"))
}

pub(super) async fn get_case(
    State(state): State<Shared>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let mut s = lock(&state);
    if let Err(msg) = authorize(&s, &headers) {
        return error(StatusCode::UNAUTHORIZED, msg);
    }
    if s.faults.fail_reads_after_updates && s.update_calls.contains_key(&id) {
        return error(StatusCode::SERVICE_UNAVAILABLE, "injected fault");
    }
    if let Some((who, field, value)) = s.faults.edit_before_read.clone()
        && s.case(&id).is_some()
        && s.edited.insert(id.clone())
    {
        s.human_change(&id, &who, &field, value);
    }
    match s.case(&id) {
        Some(c) => data_answer(c),
        None => error(StatusCode::NOT_FOUND, format!("case {id} not found")),
    }
}

#[derive(serde::Deserialize)]
pub(super) struct IdQuery {
    pub(super) id: Option<String>,
}

pub(super) async fn update_legacy(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<IdQuery>,
    body: axum::body::Bytes,
) -> Response {
    let Some(id) = q.id else {
        return error(StatusCode::BAD_REQUEST, "missing ?id=<case_id>");
    };
    update(&state, &headers, &id, &body, ApiFlavor::Legacy)
}

pub(super) async fn update_v5(
    State(state): State<Shared>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    body: axum::body::Bytes,
) -> Response {
    update(&state, &headers, &id, &body, ApiFlavor::V5)
}

pub(super) fn update(
    state: &Shared,
    headers: &HeaderMap,
    id: &str,
    body: &[u8],
    route: ApiFlavor,
) -> Response {
    let mut s = lock(state);
    if let Err(msg) = authorize(&s, headers) {
        return error(StatusCode::UNAUTHORIZED, msg);
    }
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
        return error(StatusCode::NOT_FOUND, format!("case {id} not found"));
    };
    let body: Map<String, Value> = match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => m,
        _ => return error(StatusCode::BAD_REQUEST, "body must be a JSON object"),
    };
    let changes = match validate_update(&s, &body) {
        Ok(c) => c,
        Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
    };
    let api_user_id = s.api_user_id().to_string();
    let api_user_name = s.users[0].name.clone();
    // 4.3 servers name the modifier by login, 5.x by user id.
    let modifier = match s.flavor {
        ApiFlavor::Legacy => s.api_user.clone(),
        ApiFlavor::V5 => api_user_id.clone(),
    };
    s.version += 1;
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
    if s.faults.garble_write_answers {
        return (StatusCode::OK, "<html>OK</html>").into_response();
    }
    data_answer(&s.cases[idx])
}

pub(super) async fn list_comments(
    State(state): State<Shared>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let s = lock(&state);
    if let Some(r) = refuse(&s, &headers, &id) {
        return r;
    }
    let comments = s.comments.get(&id).cloned().unwrap_or_default();
    Json(json!({"data": comments})).into_response()
}

pub(super) async fn add_comment(
    State(state): State<Shared>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    body: axum::body::Bytes,
) -> Response {
    let mut s = lock(&state);
    if let Some(r) = refuse(&s, &headers, &id) {
        return r;
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
    Json(json!({"data": comment})).into_response()
}

pub(super) async fn list_users(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let s = lock(&state);
    if let Err(msg) = authorize(&s, &headers) {
        return error(StatusCode::UNAUTHORIZED, msg);
    }
    let users: Vec<Value> = s.users.iter().map(user_json).collect();
    Json(json!({"data": users})).into_response()
}

pub(super) async fn list_activities(
    State(state): State<Shared>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let s = lock(&state);
    if let Some(r) = refuse(&s, &headers, &id) {
        return r;
    }
    if s.flavor == ApiFlavor::Legacy {
        return error(StatusCode::NOT_FOUND, "no such route on a 4.3 server");
    }
    let activities = s.activities.get(&id).cloned().unwrap_or_default();
    Json(json!({"data": activities})).into_response()
}

/// The other per-case reads of 5.x servers, answered with small well-formed bodies.
pub(super) async fn case_part(
    State(state): State<Shared>,
    headers: HeaderMap,
    UrlPath((id, part)): UrlPath<(String, String)>,
) -> Response {
    let s = lock(&state);
    if let Err(msg) = authorize(&s, &headers) {
        return error(StatusCode::UNAUTHORIZED, msg);
    }
    let Some(case) = s.case(&id) else {
        return error(StatusCode::NOT_FOUND, format!("case {id} not found"));
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
        "scores" => {
            json!({"score": case.get("score").or_else(|| case.get("case_score")).cloned().unwrap_or(Value::Null)})
        }
        "alerts" => json!({"docs": [], "total": 0}),
        _ => return error(StatusCode::NOT_FOUND, format!("no route {part} for a case")),
    };
    Json(json!({"data": data})).into_response()
}

pub(super) async fn get_user(
    State(state): State<Shared>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let s = lock(&state);
    if let Err(msg) = authorize(&s, &headers) {
        return error(StatusCode::UNAUTHORIZED, msg);
    }
    match s.users.iter().find(|u| u.user_id == id) {
        Some(u) => Json(json!({"data": user_json(u)})).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("user {id} not found")),
    }
}

pub(super) fn user_json(u: &SimUser) -> Value {
    json!({"user_id": u.user_id, "email": u.email, "name": u.name, "roles": ["analyst"]})
}

pub(super) async fn list_tenants(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let s = lock(&state);
    if let Err(msg) = authorize(&s, &headers) {
        return error(StatusCode::UNAUTHORIZED, msg);
    }
    let tenants: Vec<Value> = s
        .tenants
        .iter()
        .map(|t| json!({"cust_id": t.id, "cust_name": t.name}))
        .collect();
    Json(json!({"data": tenants})).into_response()
}

/// The tag list after `{"add": [...], "delete": [...]}`, keeping the existing order.
pub(super) fn apply_tags(current: &Value, ops: &Value) -> Value {
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

/// The (field, new value) pairs an update body asks for, or the 400 message.
/// `value` as one of the `allowed` names of `what`, or the 400 message.
pub(super) fn one_of<'a>(
    value: &'a Value,
    what: &str,
    allowed: &[&str],
) -> Result<&'a str, String> {
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
pub(super) fn tag_list(tags: &Value, key: &str) -> Result<Vec<String>, String> {
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

pub(super) fn validate_update(
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
                out.push((
                    "priority_num".to_string(),
                    json!(crate::stellar::priority_rank(v)),
                ));
            }
            "resolution" if s.flavor == ApiFlavor::V5 => {
                let v = one_of(value, "resolution", &RESOLUTIONS)?;
                if body.get("status").and_then(Value::as_str) != Some("Resolved") {
                    return Err("resolution is only accepted with status Resolved".into());
                }
                out.push(("resolution".to_string(), json!(v)));
            }
            "assignee" => {
                let v = value.as_str().ok_or("assignee must be a string")?;
                // As real servers show an unassigned case: `"assignee": ""`.
                if v.is_empty() {
                    out.push(("assignee".to_string(), json!("")));
                    continue;
                }
                let user = s
                    .users
                    .iter()
                    .find(|u| u.user_id == v || u.email.eq_ignore_ascii_case(v))
                    .ok_or_else(|| format!("unknown assignee {v:?}"))?;
                out.push(("assignee".to_string(), json!(user.user_id)));
            }
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
