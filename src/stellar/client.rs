//! The Cases API client: token handling, retries and the calls of both API flavours. One
//! `Client` is built per process and cloned cheaply.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::header::{AUTHORIZATION, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use serde_json::value::RawValue;
use tracing::Instrument;

use super::ApiFlavor;
use super::auth::{self, Credentials};
use super::error::{ApiError, describe_reqwest, excerpt, redirect};
use super::model::{self, Case, CaseParseError, Comment, Tenant, User};
use super::retry;
use crate::secret::Secret;

/// Largest answer we read; a page of 500 cases with long histories stays far below it.
const MAX_BODY: usize = 64 * 1024 * 1024;
/// Longest wait a `Retry-After` can impose on one attempt.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);
/// The longest backoff between attempts when the server asked for nothing.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Everything needed to build a [`Client`]; `Settings::client_settings_of` makes one from the
/// `[stellar]` section, and tests and the demo build one without a file.
#[derive(Clone)]
pub struct ClientSettings {
    pub url: String,
    /// None: detect the flavour from the server's answers (`api_flavor = "auto"`).
    pub flavor: Option<ApiFlavor>,
    pub credentials: Credentials,
    pub ca_pem: Option<Vec<u8>>,
    pub insecure_skip_tls_verify: bool,
    pub timeout: Duration,
    pub page_size: u32,
    pub max_attempts: u32,
    pub retry_base: Duration,
}

#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    metrics: Option<Arc<crate::metrics::Metrics>>,
    http: reqwest::Client,
    base: String,
    /// The flavour in use: 0 not known yet, else [`flavor_code`].
    flavor: AtomicU8,
    /// Set in the config, so never switched by detection.
    flavor_fixed: bool,
    user: Option<String>,
    page_size: u32,
    max_attempts: u32,
    retry_base: Duration,
    tokens: auth::TokenCache,
}

/// A request, and whether one the server refused with a 5xx may be sent again (updates
/// set absolute values and add/delete tags; a comment posted twice is a duplicate). One
/// that may have reached the server unanswered (a timeout) is sent again only if a read.
pub(super) struct Call<'a> {
    pub method: Method,
    pub path: String,
    pub query: &'a [(String, String)],
    pub body: Option<&'a Value>,
    pub idempotent: bool,
}

impl Client {
    pub fn new(settings: ClientSettings) -> Result<Client, ApiError> {
        Client::with_metrics(settings, None)
    }

    /// A client that counts every answer by status in `metrics`.
    pub fn with_metrics(
        settings: ClientSettings,
        metrics: Option<Arc<crate::metrics::Metrics>>,
    ) -> Result<Client, ApiError> {
        let mut builder = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            // A redirect would turn an update into a GET, or send the key and the update
            // to another host: every 3xx is an error instead.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("casewarden/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &settings.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                ApiError::Setup(format!("stellar.ca_file is not a PEM certificate: {e}"))
            })?;
            if certs.is_empty() {
                return Err(ApiError::Setup(
                    "stellar.ca_file holds no PEM certificate".into(),
                ));
            }
            builder = builder.tls_certs_merge(certs);
        }
        if settings.insecure_skip_tls_verify {
            tracing::warn!(
                "stellar.insecure_skip_tls_verify is set: the server's certificate is NOT verified; use ca_file instead"
            );
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        let http = builder
            .build()
            .map_err(|e| ApiError::Setup(e.to_string()))?;
        let base = settings.url.trim_end_matches('/').to_string();
        Ok(Client {
            inner: Arc::new(Inner {
                metrics,
                tokens: auth::TokenCache::new(settings.credentials.clone(), &base),
                user: settings.credentials.user.clone(),
                http,
                base,
                flavor: AtomicU8::new(settings.flavor.map_or(0, flavor_code)),
                flavor_fixed: settings.flavor.is_some(),
                page_size: settings.page_size.clamp(1, 500),
                max_attempts: settings.max_attempts.max(1),
                retry_base: settings.retry_base,
            }),
        })
    }

    /// The flavour in use: configured, detected, or legacy while nothing showed otherwise.
    pub fn flavor(&self) -> ApiFlavor {
        self.known_flavor().unwrap_or_default()
    }

    /// The configured or detected flavour; None while `auto` has seen nothing to go by.
    pub fn known_flavor(&self) -> Option<ApiFlavor> {
        match self.inner.flavor.load(Ordering::SeqCst) {
            1 => Some(ApiFlavor::Legacy),
            2 => Some(ApiFlavor::V5),
            _ => None,
        }
    }

    /// `auto`: takes `flavor` from `evidence` unless one was already chosen, and logs it.
    pub(super) fn detect_flavor(&self, flavor: ApiFlavor, evidence: &str) {
        if self.inner.flavor_fixed {
            return;
        }
        let code = flavor_code(flavor);
        let before = self.inner.flavor.swap(code, Ordering::SeqCst);
        if before != code {
            tracing::info!(
                api_flavor = flavor.as_str(),
                "stellar.api_flavor auto: using the {} flavour ({evidence})",
                flavor.as_str()
            );
        }
    }

    /// The configured API user (None for a per-user Bearer key).
    /// The server's address, as configured (without a trailing slash).
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    pub fn user(&self) -> Option<&str> {
        self.inner.user.as_deref()
    }

    /// Cases per page of the listing (1..=500).
    pub(super) fn page_size(&self) -> u32 {
        self.inner.page_size
    }

    /// Tokens fetched so far (for metrics and tests).
    pub fn token_renewals(&self) -> u64 {
        self.inner.tokens.renewals()
    }

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
            idempotent: call.is_none_or(|c| c.idempotent),
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

    pub async fn get_case(&self, id: &str) -> Result<Case, ApiError> {
        let what = format!("GET case {id}");
        let data = self
            .call_with(
                Call {
                    method: Method::GET,
                    path: format!("/connect/api/v1/cases/{}", urlencode(id)),
                    query: &[],
                    body: None,
                    idempotent: true,
                },
                decode_data,
            )
            .await?;
        data.into_case(self.known_flavor(), &what)?
            .map_err(|e| ApiError::BadResponse {
                what,
                detail: e.to_string(),
            })
    }

    /// Sends one update. `body` uses `priority`; on v5 servers it is sent as `severity`.
    /// With `api_flavor = "auto"`, an update call the server answers 405 (nothing applied)
    /// is sent once more in the other flavour, which is kept from then on; with a
    /// configured flavour, a 405 is [`ApiError::WrongFlavor`]. `Ok(Err(_))`: the server
    /// accepted the update and answered with JSON that is not a case.
    pub async fn update_case(
        &self,
        id: &str,
        body: &Value,
    ) -> Result<Result<Case, CaseParseError>, ApiError> {
        let flavor = self.flavor();
        match self.update_as(flavor, id, body).await {
            Err(ApiError::Status { status: 405, .. }) if !self.inner.flavor_fixed => {
                self.detect_flavor(
                    flavor.other(),
                    &format!(
                        "the server answered 405 to the {} update call",
                        flavor.as_str()
                    ),
                );
                self.update_as(flavor.other(), id, body).await
            }
            Err(ApiError::Status {
                status: 405, what, ..
            }) => Err(ApiError::WrongFlavor {
                what,
                configured: flavor,
            }),
            other => other,
        }
    }

    async fn update_as(
        &self,
        flavor: ApiFlavor,
        id: &str,
        body: &Value,
    ) -> Result<Result<Case, CaseParseError>, ApiError> {
        let what = format!("update case {id}");
        let (method, path, query, body) = match flavor {
            ApiFlavor::Legacy => (
                Method::POST,
                "/connect/api/v1/cases".to_string(),
                vec![("id".to_string(), id.to_string())],
                body.clone(),
            ),
            ApiFlavor::V5 => {
                let mut b = body.clone();
                if let Some(obj) = b.as_object_mut()
                    && let Some(p) = obj.remove("priority")
                {
                    obj.insert("severity".into(), p);
                }
                (
                    Method::PUT,
                    format!("/connect/api/v1/cases/{}", urlencode(id)),
                    vec![],
                    b,
                )
            }
        };
        let data = self
            .call_with(
                Call {
                    method,
                    path,
                    query: &query,
                    body: Some(&body),
                    idempotent: true,
                },
                decode_data,
            )
            .await?;
        data.into_case(Some(flavor), &what)
    }

    /// A case's change history (5.x: `GET /cases/{id}/activities`), newest or oldest first
    /// as the server sends it.
    pub async fn list_activities(&self, id: &str) -> Result<Vec<model::HistoryEntry>, ApiError> {
        let path = format!("/connect/api/v1/cases/{}/activities", urlencode(id));
        let what = format!("GET {path}");
        let v = self
            .call(Call {
                method: Method::GET,
                path,
                query: &[],
                body: None,
                idempotent: true,
            })
            .await?;
        let data = data_of(v, &what)?;
        // Seen as a bare list, or a list under one key, depending on the server version.
        let items = match &data {
            Value::Array(items) => Some(items),
            Value::Object(obj) => ["activities", "docs", "items", "data"]
                .iter()
                .find_map(|k| obj.get(*k).and_then(Value::as_array)),
            _ => None,
        };
        match items {
            Some(items) => Ok(model::activities_of(items)),
            None => Err(ApiError::BadResponse {
                what,
                detail: format!("data should be a list of activities, got {}", short(&data)),
            }),
        }
    }

    /// Whether the server takes `flavor`'s update call, asked without changing anything:
    /// an empty update of a case id that does not exist. 405 means it does not.
    pub async fn probe_update_route(&self, flavor: ApiFlavor) -> Result<bool, ApiError> {
        const NO_CASE: &str = "000000000000000000000000";
        match self
            .update_as(flavor, NO_CASE, &serde_json::json!({}))
            .await
        {
            Err(ApiError::Status { status: 405, .. }) => Ok(false),
            Err(ApiError::Status { .. }) | Ok(_) => Ok(true),
            Err(e) => Err(e),
        }
    }

    pub async fn add_comment(&self, id: &str, text: &str) -> Result<(), ApiError> {
        let body = serde_json::json!({ "comment": text });
        self.call(Call {
            method: Method::POST,
            path: format!("/connect/api/v1/cases/{}/comments", urlencode(id)),
            query: &[],
            body: Some(&body),
            idempotent: false,
        })
        .await
        .map(|_| ())
    }

    pub async fn list_comments(&self, id: &str) -> Result<Vec<Comment>, ApiError> {
        let path = format!("/connect/api/v1/cases/{}/comments", urlencode(id));
        Ok(typed(
            self.list_of(&path).await?,
            Comment::from_value,
            "comment",
        ))
    }

    /// The server's users; an item without an id is left out.
    pub async fn list_users(&self) -> Result<Vec<User>, ApiError> {
        let items = self.list_of("/connect/api/v1/users").await?;
        Ok(typed(items, User::from_value, "user"))
    }

    /// The server's tenants (customers); an item without a `cust_id` is left out.
    pub async fn list_tenants(&self) -> Result<Vec<Tenant>, ApiError> {
        let items = self.list_of("/connect/api/v1/tenants").await?;
        Ok(typed(items, Tenant::from_value, "tenant"))
    }

    async fn list_of(&self, path: &str) -> Result<Vec<Value>, ApiError> {
        let what = format!("GET {path}");
        let v = self
            .call(Call {
                method: Method::GET,
                path: path.to_string(),
                query: &[],
                body: None,
                idempotent: true,
            })
            .await?;
        match data_of(v, &what)? {
            Value::Array(items) => Ok(items),
            other => Err(ApiError::BadResponse {
                what,
                detail: format!("data should be a list, got {}", short(&other)),
            }),
        }
    }

    /// One API call with the retry policy: connect errors back off with jitter, as do
    /// timeouts and cut-short or non-JSON answers of reads, and 5xx when `idempotent`; 429
    /// waits for Retry-After; a 401 renews the token and retries once; a 3xx is an error.
    /// `retry::decide` says whether; backon counts and sleeps.
    pub(super) async fn call(&self, call: Call<'_>) -> Result<Value, ApiError> {
        self.call_with(call, |body| serde_json::from_slice(body))
            .await
    }

    /// [`Client::call`] with the answer read by `decode`; an answer it refuses counts as
    /// not JSON.
    pub(super) async fn call_with<T>(
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

    /// One attempt of a call: the answer's JSON, or how it failed (with the error to
    /// report if it is not retried, and the wait the server asked for).
    async fn send<T>(
        &self,
        call: &Call<'_>,
        token: &Secret,
        attempt: u32,
        decode: Decode<T>,
    ) -> Result<T, (retry::Failure, ApiError, Option<Duration>)> {
        let inner = &self.inner;
        let what = format!("{} {}", call.method, call.path);
        let mut req = inner
            .http
            .request(call.method.clone(), format!("{}{}", inner.base, call.path))
            .header(AUTHORIZATION, format!("Bearer {}", token.expose()));
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
            let body = excerpt(&String::from_utf8_lossy(&body));
            let status = status.as_u16();
            let error = if attempt > 1 && (status == 429 || status >= 500) {
                ApiError::GaveUp {
                    what,
                    status,
                    attempts: attempt,
                    body,
                }
            } else {
                ApiError::Status { what, status, body }
            };
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

/// Reads an answer's body.
pub(super) type Decode<T> = fn(&[u8]) -> serde_json::Result<T>;

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

/// An answer's `data`: its text when the answer is `{"data": ...}`, else the whole answer
/// parsed, for [`data_of`] to report.
enum Data {
    Text(Box<RawValue>),
    Other(Value),
}

fn decode_data(body: &[u8]) -> serde_json::Result<Data> {
    #[derive(serde::Deserialize)]
    struct Answer {
        data: Box<RawValue>,
    }
    match serde_json::from_slice::<Answer>(body) {
        Ok(a) => Ok(Data::Text(a.data)),
        Err(_) => serde_json::from_slice(body).map(Data::Other),
    }
}

impl Data {
    /// The case the answer holds, read one field at a time; Err: the answer has no `data`;
    /// `Ok(Err(_))`: its `data` is not a case.
    fn into_case(
        self,
        flavor: Option<ApiFlavor>,
        what: &str,
    ) -> Result<Result<Case, CaseParseError>, ApiError> {
        Ok(match self {
            Data::Text(text) => Case::index(&text).and_then(|o| Case::from_object(o, flavor)),
            Data::Other(v) => Case::parse(data_of(v, what)?, flavor),
        })
    }
}

pub(super) fn data_of(v: Value, what: &str) -> Result<Value, ApiError> {
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

/// The items of a list answer that parse as `T`; the others are logged and left out.
fn typed<T>(items: Vec<Value>, parse: fn(&Value) -> Option<T>, what: &str) -> Vec<T> {
    items
        .iter()
        .filter_map(|v| {
            let item = parse(v);
            if item.is_none() {
                tracing::debug!(item = %short(v), "a {what} the server listed lacks the fields casewarden reads; left out");
            }
            item
        })
        .collect()
}

pub(super) fn short(v: &Value) -> String {
    excerpt(&v.to_string())
}

fn urlencode(s: &str) -> String {
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

fn flavor_code(f: ApiFlavor) -> u8 {
    match f {
        ApiFlavor::Legacy => 1,
        ApiFlavor::V5 => 2,
    }
}

/// For tests and the demo: the key used with a configured client, e.g. to grep logs.
pub fn credentials(user: Option<&str>, key: &str) -> Credentials {
    Credentials {
        user: user.map(str::to_string),
        key: Secret::new(key),
    }
}
