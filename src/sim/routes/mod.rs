//! The Cases API routes as a Stellar Cyber server answers them, one file per resource:
//! the case listing, one case and its parts, updates, comments and activities, users and
//! tenants, and the webhook receiver that stands in for other servers.

mod case;
mod comments;
mod directory;
mod hooks;
mod listing;
mod update;

use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::routing::{MethodRouter, get, post};

use super::auth::{access_token, authorized};
use super::faults::faults_and_log;
use super::state::{Shared, read};

/// What the simulator has served so far, for benchmarks run against its process.
async fn stats(
    axum::extract::State(state): axum::extract::State<Shared>,
) -> axum::Json<serde_json::Value> {
    let s = read(&state);
    axum::Json(serde_json::json!({
        "requests": s.requests().len(),
        "bytes": s.bytes_served(),
        "cases": s.cases.len(),
    }))
}

pub(super) fn router(state: Shared) -> Router {
    let auth = from_fn_with_state(state.clone(), authorized);
    // On each route's methods, not on the router: a method a route lacks keeps its 405.
    let api = |methods: MethodRouter<Shared>| methods.route_layer(auth.clone());
    Router::new()
        .route("/connect/api/v1/access_token", post(access_token))
        .route(
            "/connect/api/v1/cases",
            api(get(listing::list_cases).post(update::update_legacy)),
        )
        .route(
            "/connect/api/v1/cases/{id}",
            api(get(case::get_case).put(update::update_v5)),
        )
        .route(
            "/connect/api/v1/cases/{id}/comments",
            api(get(comments::list_comments).post(comments::add_comment)),
        )
        .route(
            "/connect/api/v1/cases/{id}/activities",
            api(get(comments::list_activities)),
        )
        .route(
            "/connect/api/v1/cases/{id}/{part}",
            api(get(case::case_part)),
        )
        .route("/connect/api/v1/users", api(get(directory::list_users)))
        .route("/connect/api/v1/users/{id}", api(get(directory::get_user)))
        .route("/connect/api/v1/tenants", api(get(directory::list_tenants)))
        .layer(from_fn_with_state(state.clone(), faults_and_log))
        // Outside the API's faults: a webhook receiver is another server.
        .route("/hooks/{name}", post(hooks::record_hook))
        .route("/sim/stats", get(stats))
        .with_state(state)
}
