//! The Cases API client: token handling, retries and the calls of both API flavours. One
//! `Client` is built per process and cloned cheaply.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use super::ApiFlavor;
use super::auth::{self, Credentials};
use super::error::ApiError;
use super::object::CaseObject;
use super::window::Window;
use crate::secret::Secret;

mod call;
mod cases;
mod lists;

pub(super) use call::{Call, data_of, short};

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
    /// Requests in flight at most (the adaptive window's ceiling).
    pub max_in_flight: usize,
    pub max_attempts: u32,
    pub retry_base: Duration,
}

#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    gate: Option<WriteGate>,
}

/// Asked right before every write attempt (first, retry, comment): how long its answer
/// may take (None: no limit beyond the timeout), or why nothing may be sent now.
pub type WriteGate = Arc<dyn Fn(Duration) -> Result<Option<Duration>, String> + Send + Sync>;

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
    timeout: Duration,
    tokens: auth::TokenCache,
    window: Window,
    /// `host:port` of the server, for metrics labels.
    host: String,
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
        let host = reqwest::Url::parse(&base)
            .ok()
            .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?)))
            .unwrap_or_default();
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
                timeout: settings.timeout,
                window: Window::new(settings.max_in_flight),
                host,
            }),
            gate: None,
        })
    }

    /// This client with every write first passed by `gate` (given the request timeout).
    pub fn gated(&self, gate: WriteGate) -> Client {
        Client {
            inner: self.inner.clone(),
            gate: Some(gate),
        }
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

    /// `auto` with no flavour known yet: the one the first of `cases` that shows one carries
    /// (`whose`: where they come from, for the log).
    pub fn learn_flavor<'a>(&self, cases: impl IntoIterator<Item = &'a CaseObject>, whose: &str) {
        if self.known_flavor().is_some() {
            return;
        }
        if let Some(f) = cases.into_iter().find_map(ApiFlavor::of_case) {
            let why = format!("{whose} cases carry `{}`", f.priority_key());
            self.detect_flavor(f, &why);
        }
    }

    /// `auto`: takes `flavor` from `evidence` unless one was already chosen, and logs it.
    pub(in crate::stellar) fn detect_flavor(&self, flavor: ApiFlavor, evidence: &str) {
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

    /// The server's address, as configured (without a trailing slash).
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// The server's host and port (never a path or credentials): what metrics, logs and
    /// notifications name it by.
    pub fn host(&self) -> &str {
        &self.inner.host
    }

    /// The configured API user (None for a per-user Bearer key).
    pub fn user(&self) -> Option<&str> {
        self.inner.user.as_deref()
    }

    /// Requests in flight now, and how many the adaptive window allows.
    pub fn in_flight(&self) -> (usize, usize) {
        self.inner.window.now()
    }

    /// Cases per page of the listing (1..=500).
    pub fn page_size(&self) -> u32 {
        self.inner.page_size
    }

    /// Tokens fetched so far (for metrics and tests).
    pub fn token_renewals(&self) -> u64 {
        self.inner.tokens.renewals()
    }
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
