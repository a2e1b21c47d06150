//! Time as the Cases API and the audit log write it.

/// Milliseconds since the Unix epoch, the unit the Cases API uses for every timestamp.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Timestamps in the log: RFC 3339, UTC, milliseconds; they sort as text.
pub fn timestamp(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// What is wrong with a duration like `30m`, `24h` or `7d`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("not a duration like 30m, 24h or 7d")]
    NotADuration,
    #[error("{0:?}: unknown unit {1:?}; use s, m, h, d or w")]
    Unit(String, String),
    #[error("{0:?} is too long; at most 100 years (36500d)")]
    TooLong(String),
}

/// A duration like `30m`, `24h`, `7d` or `2w`, at most 100 years.
pub fn parse_duration(text: &str) -> Result<chrono::Duration, DurationError> {
    let (num, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: i64 = num.parse().map_err(|_| DurationError::NotADuration)?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(DurationError::Unit(text.into(), unit.into())),
    };
    const MAX_SECS: i64 = 36_500 * 86_400;
    let secs = n
        .checked_mul(unit_secs)
        .filter(|s| *s <= MAX_SECS)
        .ok_or_else(|| DurationError::TooLong(text.into()))?;
    Ok(chrono::Duration::seconds(secs))
}

/// This machine's name, as leases and notifications name it.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}
