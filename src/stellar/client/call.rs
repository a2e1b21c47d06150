//! One API call with the retry policy: the token it carries, the attempts and their
//! backoff, renewing a rejected token, and reading the answer within a size cap.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::header::{AUTHORIZATION, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tracing::Instrument;

use super::Client;
use crate::secret::Secret;
use crate::stellar::error::{ApiError, describe_reqwest, excerpt, redirect};
use crate::stellar::retry;
use crate::stellar::window::Answer;

/// Largest answer we read; a page of 500 cases with long histories stays far below it.
const MAX_BODY: usize = 64 * 1024 * 1024;
/// Longest wait a `Retry-After` can impose on one attempt.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);
/// The longest backoff between attempts when the server asked for nothing.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A request. Only a read is sent again after a 5xx or a lost answer: a gateway answers
/// 502/503/504 after the server applied a write, so a write's doubt is settled by reading.
pub(in crate::stellar) struct Call<'a> {
    pub method: Method,
    pub path: String,
    pub query: &'a [(String, String)],
    pub body: Option<&'a Value>,
}

impl Client {
    /// Checks that the key is accepted, fetching a token if none is cached (with the
    /// retries of every other call).
    pub async fn authenticate(&self) -> Result<(), ApiError> {
        let attempts = AtomicU32::new(0);
        (|| async {
            let attempt = attempts.fetch_add(1, Ordering::Relaxed) + 1;
            let a = self.attempt_of(None, attempt, false);
            self.token(a).await.map(drop)
        })
        .retry(self.policy())
        .when(|f: &Failed| f.next == retry::Next::Retry)
        .notify(log_retry)
        .await
        .map_err(|f| f.error.after_attempts(attempts.load(Ordering::Relaxed)))
    }

    /// Backoff between attempts: exponential from `retry_base`, jittered, capped.
    fn policy(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.inner.retry_base)
            .with_max_delay(MAX_BACKOFF)
            .with_max_times(self.inner.max_attempts as usize)
            .with_jitter()
    }

    /// What the retry decision needs to know of attempt number `attempt` of `call`.
    fn attempt_of(&self, call: Option<&Call<'_>>, attempt: u32, renewed: bool) -> retry::Attempt {
        retry::Attempt {
            read: call.is_none_or(|c| c.method == Method::GET),
            last: attempt >= self.inner.max_attempts,
            renewed,
        }
    }

    /// The cached token or a new one; failing on the network, a 429 or a 5xx may be retried,
    /// a refused key may not.
    async fn token(&self, a: retry::Attempt) -> Result<Secret, Failed> {
        self.inner
            .tokens
            .get(&self.inner.http)
            .await
            .map_err(|error| {
                let transient = matches!(error, ApiError::Transport { .. })
                    || error.http_status().is_some_and(|s| s == 429 || s >= 500);
                Failed::new(retry::Failure::Token { transient }, error, None, a)
            })
    }

    /// One API call with the retry policy: connect errors back off with jitter, as do
    /// timeouts, 5xx and cut-short or non-JSON answers of reads; 429
    /// waits for Retry-After; a 401 renews the token and retries once; a 3xx is an error.
    /// `retry::decide` says whether; backon counts and sleeps.
    pub(in crate::stellar) async fn call(&self, call: Call<'_>) -> Result<Value, ApiError> {
        self.call_with(call, |body| serde_json::from_slice(body))
            .await
    }

    /// [`Client::call`] with the answer read by `decode`; an answer it refuses counts as
    /// not JSON.
    pub(in crate::stellar) async fn call_with<T>(
        &self,
        call: Call<'_>,
        decode: Decode<T>,
    ) -> Result<T, ApiError> {
        let attempts = AtomicU32::new(0);
        let renewed = AtomicBool::new(false);
        (|| {
            self.attempt(
                &call,
                attempts.fetch_add(1, Ordering::Relaxed) + 1,
                &renewed,
                decode,
            )
        })
        .retry(self.policy())
        .when(|f: &Failed| f.next == retry::Next::Retry)
        .adjust(|f, wait| wait.map(|w| f.asked.map_or(w, |a| a.min(MAX_RETRY_AFTER))))
        .notify(log_retry)
        .await
        .map_err(|f| f.error)
    }

    /// Attempt number `attempt` of a call, renewing the token once within it when the
    /// server rejects the one it was sent with (expired early or revoked).
    async fn attempt<T>(
        &self,
        call: &Call<'_>,
        attempt: u32,
        renewed: &AtomicBool,
        decode: Decode<T>,
    ) -> Result<T, Failed> {
        loop {
            let a = self.attempt_of(Some(call), attempt, renewed.load(Ordering::Relaxed));
            let token = self.token(a).await?;
            let (failure, error, asked) = match self.send(call, &token, attempt, decode).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let failed = Failed::new(failure, error, asked, a);
            if failed.next != retry::Next::Renew {
                return Err(failed);
            }
            renewed.store(true, Ordering::Relaxed);
            self.inner.tokens.invalidate(&token).await;
        }
    }

    /// How long the answer to `call` may take: the timeout, cut for a write to what the
    /// gate allows; Err when the gate holds the write back.
    fn time_limit(&self, call: &Call<'_>, what: &str) -> Result<Duration, AttemptError> {
        let timeout = self.inner.timeout;
        let Some(gate) = self.gate.as_ref().filter(|_| call.method != Method::GET) else {
            return Ok(timeout);
        };
        match gate(timeout) {
            Ok(left) => Ok(left.map_or(timeout, |l| l.min(timeout))),
            Err(why) => {
                let error = ApiError::Fenced {
                    what: what.to_string(),
                    why,
                };
                tracing::warn!(error = %error, "a write held back");
                Err((retry::Failure::Fenced, error, None))
            }
        }
    }

    /// One attempt of a call in the adaptive window: it waits for room, and its answer
    /// (or strain: 429, 5xx, no answer) widens or narrows the window.
    async fn send<T>(
        &self,
        call: &Call<'_>,
        token: &Secret,
        attempt: u32,
        decode: Decode<T>,
    ) -> Result<T, AttemptError> {
        let inner = &self.inner;
        let slot = inner.window.enter().await;
        if let Some(m) = &inner.metrics {
            m.in_flight(&inner.host, inner.window.now());
        }
        let result = self.exchange(call, token, attempt, decode).await;
        let answer = match &result {
            Err((retry::Failure::Status(s), ..)) if *s == 429 || *s >= 500 => Answer::Strained,
            Err((retry::Failure::Unanswered, ..)) => Answer::Strained,
            _ => Answer::Fine,
        };
        let took = slot.done(answer);
        if let Some(m) = &inner.metrics {
            m.request_took(&inner.host, took, inner.window.now());
        }
        result
    }

    /// One attempt of a call: the answer's JSON, or how it failed (with the error to
    /// report if it is not retried, and the wait the server asked for).
    async fn exchange<T>(
        &self,
        call: &Call<'_>,
        token: &Secret,
        attempt: u32,
        decode: Decode<T>,
    ) -> Result<T, AttemptError> {
        let inner = &self.inner;
        let what = format!("{} {}", call.method, call.path);
        let limit = self.time_limit(call, &what)?;
        let mut req = inner
            .http
            .request(call.method.clone(), format!("{}{}", inner.base, call.path))
            .header(AUTHORIZATION, format!("Bearer {}", token.expose()))
            .timeout(limit);
        if !call.query.is_empty() {
            req = req.query(call.query);
        }
        if let Some(body) = call.body {
            req = req.json(body);
        }
        let span =
            tracing::debug_span!("request", method = %call.method, path = %call.path, attempt);
        let outcome = req.send().instrument(span).await;
        if let Some(m) = &inner.metrics {
            match &outcome {
                Ok(r) => m.api_request(r.status().as_str()),
                Err(_) => m.api_request("error"),
            }
        }
        let transport = |detail: String| ApiError::Transport {
            what: what.clone(),
            detail,
            attempts: attempt,
        };
        let resp = outcome.map_err(|e| {
            let failure = if e.is_connect() {
                retry::Failure::Unsent
            } else {
                retry::Failure::Unanswered
            };
            (failure, transport(describe_reqwest(&e)), None)
        })?;
        let status = resp.status();
        tracing::debug!(status = status.as_u16(), "answer");
        if status.is_redirection() {
            let code = retry::Failure::Status(status.as_u16());
            return Err((code, redirect(&what, &resp), None));
        }
        let asked = (status == StatusCode::TOO_MANY_REQUESTS)
            .then(|| retry_after(&resp))
            .flatten();
        let body = read_capped(resp)
            .await
            .map_err(|detail| (retry::Failure::BadBody, transport(detail), None))?;
        if !status.is_success() {
            let status = status.as_u16();
            let error = refused(what, status, attempt, &body);
            return Err((retry::Failure::Status(status), error, asked));
        }
        decode(&body).map_err(|e| {
            let error = ApiError::BadResponse {
                what,
                detail: format!(
                    "not JSON ({e}): {}",
                    excerpt(&String::from_utf8_lossy(&body))
                ),
            };
            (retry::Failure::BadBody, error, None)
        })
    }
}

/// A non-2xx answer as the error to report: after earlier attempts, one that was retried.
fn refused(what: String, status: u16, attempt: u32, body: &[u8]) -> ApiError {
    let body = excerpt(&String::from_utf8_lossy(body));
    if attempt > 1 && (status == 429 || status >= 500) {
        ApiError::GaveUp {
            what,
            status,
            attempts: attempt,
            body,
        }
    } else {
        ApiError::Status { what, status, body }
    }
}

/// How one attempt failed: the retry decision's input, the error to report if it is not
/// retried, and the wait the server asked for.
type AttemptError = (retry::Failure, ApiError, Option<Duration>);

/// Reads an answer's body.
type Decode<T> = fn(&[u8]) -> serde_json::Result<T>;

/// One failed attempt: how, the error to report if it is not retried, the wait the server
/// asked for, and what the retry policy makes of it.
struct Failed {
    failure: retry::Failure,
    error: ApiError,
    asked: Option<Duration>,
    next: retry::Next,
}

impl Failed {
    fn new(
        failure: retry::Failure,
        error: ApiError,
        asked: Option<Duration>,
        attempt: retry::Attempt,
    ) -> Failed {
        Failed {
            failure,
            error,
            asked,
            next: retry::decide(failure, attempt),
        }
    }
}

fn log_retry(f: &Failed, wait: Duration) {
    let wait_ms = wait.as_millis() as u64;
    if f.failure == retry::Failure::Status(429) {
        tracing::info!(wait_ms, "rate limited (429), waiting");
    } else {
        tracing::debug!(error = %f.error, wait_ms, "retrying");
    }
}

pub(in crate::stellar) fn data_of(v: Value, what: &str) -> Result<Value, ApiError> {
    match v {
        Value::Object(mut obj) => obj.remove("data").ok_or_else(|| ApiError::BadResponse {
            what: what.to_string(),
            detail: "no `data` field in the answer".into(),
        }),
        other => Err(ApiError::BadResponse {
            what: what.to_string(),
            detail: format!("expected a JSON object, got {}", short(&other)),
        }),
    }
}

pub(in crate::stellar) fn short(v: &Value) -> String {
    excerpt(&v.to_string())
}

pub(super) fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    let value = resp.headers().get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

async fn read_capped(mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
    if resp.content_length().is_some_and(|n| n as usize > MAX_BODY) {
        return Err(format!("answer larger than {} MiB", MAX_BODY >> 20));
    }
    // A page of cases is ~600 KB: sized once instead of doubled into place.
    let mut body = Vec::with_capacity(resp.content_length().unwrap_or(0) as usize);
    while let Some(chunk) = resp.chunk().await.map_err(|e| describe_reqwest(&e))? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(format!("answer larger than {} MiB", MAX_BODY >> 20));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
