//! Errors from talking to the Cases API, written for the operator who reads them.

/// How many bytes of a server's error body an error carries.
const BODY_EXCERPT: usize = 300;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "the API key was rejected by {url} (HTTP 401 on the access_token call); check stellar.user and the API key (stellar.api_key_file, stellar.api_key_env or the systemd credential api_key, whichever the config uses)"
    )]
    KeyRejected { url: String },
    #[error("{what}: HTTP {status}: {body}")]
    Status {
        what: String,
        status: u16,
        body: String,
    },
    #[error("{what}: {detail} (gave up after {attempts} attempt(s))")]
    Transport {
        what: String,
        detail: String,
        attempts: u32,
    },
    #[error("{what}: HTTP {status} after {attempts} attempt(s): {body}")]
    GaveUp {
        what: String,
        status: u16,
        attempts: u32,
        body: String,
    },
    #[error(
        "{what}: HTTP {status} redirect to {location}: casewarden follows no redirect (check stellar.url: the server may want https:// or another host)"
    )]
    Redirect {
        what: String,
        status: u16,
        location: String,
    },
    #[error("{what}: the server's answer is not what the Cases API sends: {detail}")]
    BadResponse { what: String, detail: String },
    #[error(
        "{what}: HTTP 405: the server does not take the {configured} update call; set stellar.api_flavor = \"{}\" (or \"auto\" to detect it)",
        configured.other().as_str()
    )]
    WrongFlavor {
        what: String,
        configured: super::ApiFlavor,
    },
    #[error("{what}: not sent: {why}")]
    Fenced { what: String, why: String },
    #[error("cannot set up the HTTP client: {0}")]
    Setup(String),
}

impl ApiError {
    /// The error of the last of `n` attempts, saying so (a token fetch does not know how
    /// many attempts its caller made).
    pub fn after_attempts(mut self, n: u32) -> ApiError {
        if let ApiError::Transport { attempts, .. } | ApiError::GaveUp { attempts, .. } = &mut self
        {
            *attempts = n.max(*attempts);
        }
        self
    }

    /// The HTTP status the server answered with, when there was one.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. }
            | ApiError::GaveUp { status, .. }
            | ApiError::Redirect { status, .. } => Some(*status),
            ApiError::KeyRejected { .. } => Some(401),
            ApiError::WrongFlavor { .. } => Some(405),
            _ => None,
        }
    }
}

/// A 3xx answer as an error naming where it pointed.
pub(crate) fn redirect(what: &str, resp: &reqwest::Response) -> ApiError {
    ApiError::Redirect {
        what: what.to_string(),
        status: resp.status().as_u16(),
        location: resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .map_or_else(|| "(no Location)".to_string(), excerpt),
    }
}

/// A body trimmed to a readable excerpt; bodies never contain our credentials, but they
/// can be megabytes of HTML.
pub(crate) fn excerpt(body: &str) -> String {
    let body = body.trim();
    if body.len() <= BODY_EXCERPT {
        return body.to_string();
    }
    let mut end = BODY_EXCERPT;
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &body[..end], body.len())
}

/// reqwest's error with its causes, without the URL's query (never secret here, but long).
pub(super) fn describe_reqwest(e: &reqwest::Error) -> String {
    let mut out = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    if out.contains("corrupt message")
        || out.contains("InvalidContentType")
        || out.contains("wrong version number")
    {
        out.push_str(" (the address does not speak TLS: the server may serve plain http:// here, which casewarden allows only on loopback)");
    } else if out.contains("certificate") || out.contains("UnknownIssuer") {
        out.push_str(" (the server's TLS certificate is not trusted: set stellar.ca_file to its CA in PEM form)");
    }
    out
}
