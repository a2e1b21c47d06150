//! The server's people and customers: `/users`, `/users/{id}` and `/tenants`.

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use crate::sim::answer::{data_answer, error};
use crate::sim::data::SimUser;
use crate::sim::state::{Shared, read};

pub(super) async fn list_users(State(state): State<Shared>) -> Response {
    let s = read(&state);
    let users: Vec<Value> = s.users.iter().map(user_json).collect();
    data_answer(&users)
}

pub(super) async fn get_user(
    State(state): State<Shared>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let s = read(&state);
    match s.users.iter().find(|u| u.user_id == id) {
        Some(u) => data_answer(&user_json(u)),
        None => error(StatusCode::NOT_FOUND, format!("user {id} not found")),
    }
}

fn user_json(u: &SimUser) -> Value {
    json!({"user_id": u.user_id, "email": u.email, "name": u.name, "roles": ["analyst"]})
}

pub(super) async fn list_tenants(State(state): State<Shared>) -> Response {
    let s = read(&state);
    let tenants: Vec<Value> = s
        .tenants
        .iter()
        .map(|t| json!({"cust_id": t.id, "cust_name": t.name}))
        .collect();
    data_answer(&tenants)
}
