//! Who may call the simulated server: the token route, and the layer that lets every other
//! API call through only with a valid token (or, with `accept_basic`, Basic credentials).

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::json;

use super::answer::error;
use super::state::{Shared, SimState, lock, read};

/// `POST /access_token`: a JWT for Basic credentials or the API key as a Bearer token.
pub(super) async fn access_token(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let mut s = lock(&state);
    let auth = authorization(&headers);
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

/// The layer over every API route but the token's: the call goes on only when authorized,
/// else it gets the server's 401. It runs inside the fault layer, as a real server checks
/// the token only for a request that reached it.
pub(super) async fn authorized(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let verdict = authorize(&read(&state), req.headers());
    match verdict {
        Ok(()) => next.run(req).await,
        Err(msg) => error(StatusCode::UNAUTHORIZED, msg),
    }
}

fn authorization(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Whether `Basic base64(user:key)` carries the simulator's credentials.
fn basic_ok(s: &SimState, encoded: &str) -> bool {
    base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|raw| String::from_utf8(raw).ok())
        .is_some_and(|pair| pair == format!("{}:{}", s.api_user, s.api_key))
}

/// Checks the Bearer JWT (or, with `accept_basic`, Basic credentials); `Err` is the
/// message of the 401 to send.
fn authorize(s: &SimState, headers: &HeaderMap) -> Result<(), &'static str> {
    let auth = authorization(headers);
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
