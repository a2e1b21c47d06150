//! A string that must never reach a log line, an error message or a panic.

use std::fmt;

/// An API key or JWT. `Debug` and `Display` print `***`; only [`Secret::expose`] gives the
/// value, so every place that reads it is easy to find.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for the one place that puts it into a request header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Query parameters of a URL that carry a secret (libpq's `password`, `sslpassword`).
pub fn is_secret_param(name: &str) -> bool {
    name.to_ascii_lowercase().contains("password")
}

/// `url` with whatever comes before an `@` in its authority replaced by `***`, parsed or
/// not (a URL that does not parse may still carry a key).
pub fn mask_userinfo(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (format!("{s}://"), r),
        None => (String::new(), url),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// A URL as it may be shown: a password in it, as user info or as a `password` query
/// parameter, replaced by `***`. Text that does not parse as a URL is not shown at all.
pub fn redact_url(url: &str) -> String {
    let Ok(mut u) = url::Url::parse(url) else {
        return "(a value that is not a URL)".into();
    };
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    if u.query_pairs().any(|(k, _)| is_secret_param(&k)) {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if is_secret_param(&k) {
                    "***".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_their_password() {
        assert_eq!(
            redact_url("postgres://cw:hunter2@db.example.com:5432/audit"),
            "postgres://cw:***@db.example.com:5432/audit"
        );
        assert_eq!(
            redact_url("postgres://cw@db.example.com/audit"),
            "postgres://cw@db.example.com/audit"
        );
        assert!(!redact_url("postgres://cw:hun ter2@[bad").contains("hun"));
        assert_eq!(
            redact_url("postgres://cw@db/audit?sslmode=require&password=hunter2"),
            "postgres://cw@db/audit?sslmode=require&password=***"
        );
    }

    #[test]
    fn debug_and_display_hide_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "*** ***");
        assert_eq!(s.expose(), "hunter2");
    }
}
