//! The access-token cache: one JWT shared by every request, renewed ahead of its expiry,
//! with concurrent callers waiting on a single renewal.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use tokio::sync::Mutex;

use super::error::{ApiError, excerpt, redirect};
use crate::secret::Secret;

/// Used when neither the answer nor the JWT says when the token expires.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);

/// How the key is presented: `Basic user:key` (classic refresh key) or `Bearer key` (5.4+).
#[derive(Clone)]
pub struct Credentials {
    pub user: Option<String>,
    pub key: Secret,
}

impl Credentials {
    fn header(&self) -> String {
        match &self.user {
            Some(user) => {
                let raw = format!("{user}:{}", self.key.expose());
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                )
            }
            None => format!("Bearer {}", self.key.expose()),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Token {
    pub jwt: Secret,
    renew_at: Instant,
}

pub(crate) struct TokenCache {
    credentials: Credentials,
    url: String,
    current: Mutex<Option<Token>>,
    renewals: AtomicU64,
}

impl TokenCache {
    pub fn new(credentials: Credentials, base: &str) -> Self {
        TokenCache {
            credentials,
            url: format!("{base}/connect/api/v1/access_token"),
            current: Mutex::new(None),
            renewals: AtomicU64::new(0),
        }
    }

    /// How many tokens this cache has fetched.
    pub fn renewals(&self) -> u64 {
        self.renewals.load(Ordering::Relaxed)
    }

    /// A valid token, fetching one if there is none or it is due for renewal. Holding the
    /// lock across the fetch is what makes concurrent callers share one renewal.
    pub async fn get(&self, http: &reqwest::Client) -> Result<Secret, ApiError> {
        let mut current = self.current.lock().await;
        if let Some(t) = current.as_ref()
            && Instant::now() < t.renew_at
        {
            return Ok(t.jwt.clone());
        }
        let token = self.fetch(http).await?;
        let jwt = token.jwt.clone();
        *current = Some(token);
        Ok(jwt)
    }

    /// Drops `rejected` so the next `get` renews; a token someone else already replaced
    /// is left alone, so a burst of 401s causes one renewal, not one each.
    pub async fn invalidate(&self, rejected: &Secret) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|t| &t.jwt == rejected) {
            *current = None;
        }
    }

    async fn fetch(&self, http: &reqwest::Client) -> Result<Token, ApiError> {
        let what = format!("POST {}", self.url);
        let resp = http
            .post(&self.url)
            .header(AUTHORIZATION, self.credentials.header())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .send()
            .await
            .map_err(|e| ApiError::Transport {
                what: what.clone(),
                detail: super::error::describe_reqwest(&e),
                attempts: 1,
            })?;
        let status = resp.status();
        if status.is_redirection() {
            return Err(redirect(&what, &resp));
        }
        let body = resp.text().await.unwrap_or_default();
        if status.as_u16() == 401 || status.as_u16() == 403 {
            return Err(ApiError::KeyRejected {
                url: self.url.clone(),
            });
        }
        if !status.is_success() {
            let mut body = excerpt(&body);
            if status.as_u16() == 404 {
                body.push_str(" (no access_token call here: stellar.url should be the server's base URL, like https://stellar.example.com, without a path)");
            }
            return Err(ApiError::Status {
                what,
                status: status.as_u16(),
                body,
            });
        }
        let value: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| ApiError::BadResponse {
                what: what.clone(),
                detail: format!("not JSON ({e})"),
            })?;
        let jwt = value
            .get("access_token")
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ApiError::BadResponse {
                what: what.clone(),
                detail: "no access_token in the answer".into(),
            })?
            .to_string();
        let now_ms = crate::now_ms();
        let exp = value
            .get("exp")
            .and_then(|v| v.as_i64())
            .or_else(|| jwt_exp(&jwt));
        let lifetime = match exp {
            Some(exp) if exp * 1000 > now_ms => Duration::from_millis((exp * 1000 - now_ms) as u64),
            Some(_) => Duration::from_secs(1),
            None => DEFAULT_LIFETIME,
        };
        // Renew a quarter of the lifetime early (at most a minute), so a request never
        // goes out with a token that expires in flight.
        let margin = (lifetime / 4).min(Duration::from_secs(60));
        self.renewals.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            lifetime_secs = lifetime.as_secs(),
            "obtained an access token"
        );
        Ok(Token {
            jwt: Secret::new(jwt),
            renew_at: Instant::now() + lifetime - margin,
        })
    }
}

/// The `exp` claim of a JWT, read without verifying it (only the server can).
fn jwt_exp(jwt: &str) -> Option<i64> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("exp")?.as_i64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_exp_claim() {
        let payload =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"exp":1700000000}"#);
        assert_eq!(jwt_exp(&format!("x.{payload}.y")), Some(1_700_000_000));
        assert_eq!(jwt_exp("not-a-jwt"), None);
    }

    #[test]
    fn header_forms() {
        let key = Secret::new("k");
        let basic = Credentials {
            user: Some("u".into()),
            key: key.clone(),
        }
        .header();
        assert_eq!(basic, "Basic dTpr");
        let bearer = Credentials { user: None, key }.header();
        assert_eq!(bearer, "Bearer k");
    }
}
