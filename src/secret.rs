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

/// A URL as it may be shown: any password in it replaced by `***` (a URL that does not
/// parse is shown only by its scheme).
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => format!("{}://…", url.split("://").next().unwrap_or("?")),
    }
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
    }

    #[test]
    fn debug_and_display_hide_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "*** ***");
        assert_eq!(s.expose(), "hunter2");
    }
}
