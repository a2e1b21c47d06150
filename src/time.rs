//! Time as the Cases API and the audit log write it.

/// Milliseconds since the Unix epoch, the unit the Cases API uses for every timestamp.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Timestamps in the log: RFC 3339, UTC, milliseconds; they sort as text.
pub fn timestamp(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
