//! Business calendars (`[calendars.NAME]` in the config): when a SOC is at work, so rules
//! can count only the hours somebody could have looked at a case.

use std::collections::BTreeSet;

use chrono::{Datelike, Duration, NaiveDate, NaiveTime, TimeZone, Weekday};
use chrono_tz::Tz;
use serde::Deserialize;

/// A calendar as written in the config.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CalendarConfig {
    /// IANA time zone name, e.g. `Europe/Berlin`.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// Work days: `Mon` .. `Sun`.
    #[serde(default = "default_days")]
    pub days: Vec<String>,
    /// Working hours in local time, `HH:MM-HH:MM` (end `24:00` for midnight).
    #[serde(default = "default_hours")]
    pub hours: String,
    /// Days off, `YYYY-MM-DD` in local time.
    #[serde(default)]
    pub holidays: Vec<String>,
}

fn default_timezone() -> String {
    "UTC".into()
}

fn default_days() -> Vec<String> {
    ["Mon", "Tue", "Wed", "Thu", "Fri"]
        .map(String::from)
        .to_vec()
}

fn default_hours() -> String {
    "09:00-17:00".into()
}

/// A checked calendar: what `business_hours_since` counts with.
#[derive(Debug, Clone, PartialEq)]
pub struct Calendar {
    tz: Tz,
    days: [bool; 7],
    /// Minutes after local midnight; `end` may be 1440.
    start: u32,
    end: u32,
    holidays: BTreeSet<NaiveDate>,
}

/// The longest span counted (about ten years): an older timestamp, or 0 for "never",
/// counts as this long ago, so one call never walks more than this many days.
const MAX_DAYS: i64 = 3_660;

impl Calendar {
    /// Checks a configured calendar; the error names the key (`timezone`, `days`, ...).
    pub fn from_config(c: &CalendarConfig) -> Result<Calendar, (&'static str, String)> {
        let tz: Tz = c.timezone.parse().map_err(|_| {
            (
                "timezone",
                format!(
                    "unknown time zone {:?}: use an IANA name like \"Europe/Berlin\" or \"UTC\"",
                    c.timezone
                ),
            )
        })?;
        let mut days = [false; 7];
        for d in &c.days {
            let day: Weekday = d.parse().map_err(|_| {
                (
                    "days",
                    format!("{d:?} is not a day: use Mon, Tue, Wed, Thu, Fri, Sat, Sun"),
                )
            })?;
            days[day.num_days_from_monday() as usize] = true;
        }
        let (start, end) = parse_hours(&c.hours).map_err(|m| ("hours", m))?;
        let holidays = c
            .holidays
            .iter()
            .map(|h| {
                NaiveDate::parse_from_str(h, "%Y-%m-%d")
                    .map_err(|_| ("holidays", format!("{h:?} is not a date YYYY-MM-DD")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Calendar {
            tz,
            days,
            start,
            end,
            holidays,
        })
    }

    /// Working milliseconds between two instants (0 when `to` is not after `from`).
    pub fn business_ms(&self, from_ms: i64, to_ms: i64) -> i64 {
        let from_ms = from_ms.max(to_ms.saturating_sub(MAX_DAYS * 86_400_000));
        if to_ms <= from_ms {
            return 0;
        }
        let (Some(first), Some(last)) = (self.local_date(from_ms), self.local_date(to_ms)) else {
            return 0;
        };
        let mut total = 0;
        let mut day = first;
        while day <= last {
            let working = self.days[day.weekday().num_days_from_monday() as usize]
                && !self.holidays.contains(&day);
            if working {
                let open = self.instant(day, self.start);
                let close = self.instant(day, self.end);
                total += (close.min(to_ms) - open.max(from_ms)).max(0);
            }
            let Some(next) = day.succ_opt() else { break };
            day = next;
        }
        total
    }

    /// Whether `ms` falls in working hours: a working day, not a holiday, between the
    /// opening and closing time.
    pub fn is_open(&self, ms: i64) -> bool {
        let Some(day) = self.local_date(ms) else {
            return false;
        };
        let working = self.days[day.weekday().num_days_from_monday() as usize]
            && !self.holidays.contains(&day);
        working && self.instant(day, self.start) <= ms && ms < self.instant(day, self.end)
    }

    fn local_date(&self, ms: i64) -> Option<NaiveDate> {
        Some(self.tz.timestamp_millis_opt(ms).single()?.date_naive())
    }

    /// The instant of local `minutes` after midnight on `day`; a time skipped by a clock
    /// change counts from the moment the clock jumped to.
    fn instant(&self, day: NaiveDate, minutes: u32) -> i64 {
        let midnight = day.and_time(NaiveTime::MIN);
        let local = midnight + Duration::minutes(i64::from(minutes));
        let mut probe = local;
        for _ in 0..4 {
            if let Some(t) = self.tz.from_local_datetime(&probe).earliest() {
                return t.timestamp_millis();
            }
            probe += Duration::minutes(30);
        }
        local.and_utc().timestamp_millis()
    }
}

/// `09:00-17:00` as minutes after midnight.
fn parse_hours(text: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{text:?} is not a range of hours like \"09:00-17:00\"");
    let (a, b) = text.split_once('-').ok_or_else(bad)?;
    let minutes = |t: &str| -> Result<u32, String> {
        let t = t.trim();
        if t == "24:00" {
            return Ok(1440);
        }
        let time = NaiveTime::parse_from_str(t, "%H:%M").map_err(|_| bad())?;
        Ok(time.signed_duration_since(NaiveTime::MIN).num_minutes() as u32)
    };
    let (start, end) = (minutes(a)?, minutes(b)?);
    if end <= start {
        return Err(format!(
            "{text:?} ends before it starts; a shift across midnight needs two calendars or hours like \"00:00-24:00\""
        ));
    }
    Ok((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cal(tz: &str, hours: &str, holidays: &[&str]) -> Calendar {
        Calendar::from_config(&CalendarConfig {
            timezone: tz.into(),
            days: default_days(),
            hours: hours.into(),
            holidays: holidays.iter().map(|h| h.to_string()).collect(),
        })
        .unwrap()
    }

    fn ms(rfc3339: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis()
    }

    const HOUR: i64 = 3_600_000;

    #[test]
    fn counts_only_working_hours_in_the_zone() {
        let c = cal("Europe/Berlin", "09:00-17:00", &[]);
        // Friday 16:00 Berlin (15:00Z) to Monday 10:00 Berlin (09:00Z): 1 h + 1 h.
        let from = ms("2026-11-20T15:00:00Z");
        let to = ms("2026-11-23T09:00:00Z");
        assert_eq!(c.business_ms(from, to), 2 * HOUR);
        assert_eq!(c.business_ms(to, from), 0);
        // The same span in UTC hours: Friday 15-17 and Monday 9 o'clock exactly: 2 h.
        let utc = cal("UTC", "09:00-17:00", &[]);
        assert_eq!(utc.business_ms(from, to), 2 * HOUR);
    }

    #[test]
    fn holidays_and_weekends_count_nothing() {
        let c = cal("UTC", "09:00-17:00", &["2026-12-25"]);
        let from = ms("2026-12-24T17:00:00Z");
        let to = ms("2026-12-28T09:00:00Z");
        assert_eq!(c.business_ms(from, to), 0);
        let whole_week = c.business_ms(ms("2026-11-23T00:00:00Z"), ms("2026-11-30T00:00:00Z"));
        assert_eq!(whole_week, 5 * 8 * HOUR);
    }

    #[test]
    fn open_only_in_working_hours_of_working_days_in_the_zone() {
        let c = cal("Europe/Berlin", "09:00-17:00", &["2026-12-25"]);
        // Friday 2026-11-20: 08:00Z is 09:00 in Berlin, 16:00Z is 17:00 (closed).
        assert!(c.is_open(ms("2026-11-20T08:00:00Z")));
        assert!(!c.is_open(ms("2026-11-20T07:59:59Z")));
        assert!(c.is_open(ms("2026-11-20T15:59:59Z")));
        assert!(!c.is_open(ms("2026-11-20T16:00:00Z")));
        assert!(!c.is_open(ms("2026-11-21T10:00:00Z")), "a Saturday");
        assert!(!c.is_open(ms("2026-12-25T10:00:00Z")), "a holiday");
    }

    #[test]
    fn a_clock_change_day_counts_real_time() {
        // Berlin moved from 03:00 back to 02:00 on 2026-10-25 (a Sunday); 24 h of work
        // hours that Sunday hold 25 real hours.
        let mut c = cal("Europe/Berlin", "00:00-24:00", &[]);
        c.days = [true; 7];
        let from = ms("2026-10-24T22:00:00Z");
        let to = ms("2026-10-25T23:00:00Z");
        assert_eq!(c.business_ms(from, to), 25 * HOUR);
    }

    #[test]
    fn bad_calendars_name_the_key() {
        let mut c = CalendarConfig {
            timezone: "Mars/Olympus".into(),
            days: default_days(),
            hours: default_hours(),
            holidays: vec![],
        };
        assert_eq!(Calendar::from_config(&c).unwrap_err().0, "timezone");
        c.timezone = "UTC".into();
        c.days = vec!["Funday".into()];
        assert_eq!(Calendar::from_config(&c).unwrap_err().0, "days");
        c.days = default_days();
        c.hours = "17:00-09:00".into();
        assert!(
            Calendar::from_config(&c)
                .unwrap_err()
                .1
                .contains("ends before")
        );
        c.hours = default_hours();
        c.holidays = vec!["25.12.2026".into()];
        assert_eq!(Calendar::from_config(&c).unwrap_err().0, "holidays");
    }

    #[test]
    fn ancient_timestamps_are_bounded() {
        let c = cal("UTC", "09:00-17:00", &[]);
        let now = ms("2026-11-25T12:00:00Z");
        let ten_years = c.business_ms(now - MAX_DAYS * 86_400_000, now);
        assert!(ten_years > 2_000 * 8 * HOUR, "{ten_years}");
        assert_eq!(c.business_ms(0, now), ten_years);
        assert_eq!(c.business_ms(i64::MIN, now), ten_years);
        assert_eq!(c.business_ms(now, i64::MAX), 0);
    }
}
