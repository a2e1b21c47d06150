//! Cron expressions as the scheduler reads them: 6 fields, seconds first, UTC.

use std::fmt;

/// Checks a 6-field cron expression (seconds first), as the scheduler will read it.
fn validate(expr: &str) -> Result<croner::Cron, String> {
    if expr.split_whitespace().count() != 6 {
        return Err(format!(
            "{expr:?} is not a 6-field cron expression (sec min hour day month weekday), e.g. \"0 */5 * * * *\""
        ));
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .build()
        .parse(expr)
        .map_err(|e| format!("{expr:?} is not a valid cron expression: {e}"))
}

/// A checked cron expression kept with its text: the scheduler and the logs take the
/// text as written.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    text: String,
    cron: croner::Cron,
}

impl CronSchedule {
    /// Checks `text` once; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<CronSchedule, String> {
        Ok(CronSchedule {
            text: text.to_string(),
            cron: validate(text)?,
        })
    }

    /// The parsed schedule.
    pub fn cron(&self) -> &croner::Cron {
        &self.cron
    }

    /// When it fires next (UTC, RFC 3339), for `check` and the daemon's start log.
    pub fn next_run(&self) -> Option<String> {
        use chrono::Timelike;
        let now = chrono::Utc::now().with_nanosecond(0)?;
        let next = self.cron.find_next_occurrence(&now, false).ok()?;
        Some(crate::time::timestamp(next))
    }
}

impl fmt::Display for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.text)
    }
}
