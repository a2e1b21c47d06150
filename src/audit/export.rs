//! Printing audit rows for people (table) and programs (JSON lines, CSV), one row at a
//! time so an export of millions of rows never sits in memory.

use std::collections::HashMap;
use std::io::Write;

use super::EventRow;

/// Output format of `casewarden audit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

/// Writes rows in one format; `finish` flushes.
pub struct Printer<W: Write> {
    format: Format,
    sink: Sink<W>,
    rows: u64,
    /// User id -> email, shown beside the ids of assignee rows.
    emails: HashMap<String, String>,
}

enum Sink<W: Write> {
    Plain(W),
    Csv(Box<csv::Writer<W>>),
}

const CSV_HEADER: [&str; 23] = [
    "seq",
    "run_id",
    "recorded_at",
    "rule",
    "rule_hash",
    "case_id",
    "ticket_id",
    "field",
    "old",
    "new",
    "reason",
    "dry_run",
    "outcome",
    "error",
    "http_status",
    "planned_seq",
    "prev_hash",
    "hash",
    "outcome_of",
    "old_email",
    "new_email",
    "tenant",
    "instance",
];

impl<W: Write> Printer<W> {
    pub fn new(format: Format, mut out: W) -> std::io::Result<Printer<W>> {
        let sink = match format {
            Format::Csv => {
                let mut w = csv::Writer::from_writer(out);
                w.write_record(CSV_HEADER)?;
                Sink::Csv(Box::new(w))
            }
            Format::Json => Sink::Plain(out),
            Format::Table => {
                writeln!(
                    out,
                    "{:>6}  {:<24}  {:<23}  {:<22}  {:>8}  {:<11}  {:<34}  {:<13}  NOTE (reason, error: or outcome of #planned row)",
                    "SEQ", "RECORDED (UTC)", "PASS", "RULE", "TICKET", "FIELD", "CHANGE", "OUTCOME"
                )?;
                Sink::Plain(out)
            }
        };
        Ok(Printer {
            format,
            sink,
            rows: 0,
            emails: HashMap::new(),
        })
    }

    /// Shows these emails beside the user ids of assignee rows.
    pub fn with_emails(mut self, emails: HashMap<String, String>) -> Printer<W> {
        self.emails = emails;
        self
    }

    /// The email of an assignee row's old or new user id.
    fn email(&self, r: &EventRow, id: &Option<String>) -> Option<String> {
        if r.field != crate::plan::Field::Assignee.as_str() {
            return None;
        }
        self.emails.get(id.as_deref()?).cloned()
    }

    pub fn row(&mut self, r: &EventRow) -> std::io::Result<()> {
        self.rows += 1;
        let emails = (self.email(r, &r.old), self.email(r, &r.new));
        match (&mut self.sink, self.format) {
            (Sink::Csv(w), _) => csv_record(w, r, emails),
            (Sink::Plain(out), Format::Json) => json_line(out, r, emails),
            (Sink::Plain(out), _) => table_line(out, r, emails),
        }
    }

    /// Flushes and returns how many rows were written.
    pub fn finish(self) -> std::io::Result<u64> {
        match self.sink {
            Sink::Csv(mut w) => w.flush()?,
            Sink::Plain(mut out) => {
                if self.format == Format::Table && self.rows == 0 {
                    writeln!(out, "(no audit rows match)")?;
                }
                out.flush()?;
            }
        }
        Ok(self.rows)
    }
}

/// The emails of an assignee row's old and new user ids, where known.
type Emails = (Option<String>, Option<String>);

/// One CSV record, in [`CSV_HEADER`]'s order.
fn csv_record<W: Write>(
    w: &mut csv::Writer<W>,
    r: &EventRow,
    (old_email, new_email): Emails,
) -> std::io::Result<()> {
    let text = |v: &str| spreadsheet_safe(v);
    let opt = |v: &Option<String>| text(v.as_deref().unwrap_or_default());
    let num = |v: Option<i64>| v.map(|n| n.to_string()).unwrap_or_default();
    w.write_record([
        r.seq.to_string(),
        text(&r.run_id),
        r.recorded_at.clone(),
        text(&r.rule),
        r.rule_hash.clone(),
        text(&r.case_id),
        num(r.ticket_id),
        text(&r.field),
        opt(&r.old),
        opt(&r.new),
        text(&r.reason),
        r.dry_run.to_string(),
        r.outcome.to_string(),
        opt(&r.error),
        num(r.http_status),
        num(r.planned_seq),
        r.prev_hash.clone(),
        r.hash.clone(),
        num(r.planned_seq),
        opt(&old_email),
        opt(&new_email),
        opt(&r.tenant),
        opt(&r.instance),
    ])?;
    Ok(())
}

/// One JSON object on a line: the row's columns, `outcome_of`, and the emails if any.
fn json_line(
    out: &mut impl Write,
    r: &EventRow,
    (old_email, new_email): Emails,
) -> std::io::Result<()> {
    let mut v = serde_json::to_value(r)?;
    // The planned row an outcome row settles, under a name that says so.
    v["outcome_of"] = serde_json::json!(r.planned_seq);
    if old_email.is_some() || new_email.is_some() {
        v["old_email"] = serde_json::json!(old_email);
        v["new_email"] = serde_json::json!(new_email);
    }
    serde_json::to_writer(&mut *out, &v)?;
    writeln!(out)
}

/// One line of the table, emails shown in place of user ids.
fn table_line(
    out: &mut impl Write,
    r: &EventRow,
    (old_email, new_email): Emails,
) -> std::io::Result<()> {
    let when = r.recorded_at.replace('T', " ");
    let shown = |id: &Option<String>, email: Option<String>| email.or(id.clone());
    let change = describe_change(r, shown(&r.old, old_email), shown(&r.new, new_email));
    let outcome = if r.dry_run {
        format!("{} (dry)", r.outcome)
    } else {
        r.outcome.to_string()
    };
    let note = match (&r.error, r.planned_seq) {
        (Some(e), _) => format!("error: {e}"),
        (None, Some(p)) if r.reason.is_empty() => format!("outcome of #{p}"),
        _ => r.reason.clone(),
    };
    writeln!(
        out,
        "{:>6}  {:<24}  {:<23}  {:<22}  {:>8}  {:<11}  {:<34}  {:<13}  {}",
        r.seq,
        clip(&when, 24),
        clip(&r.run_id, 23),
        clip(&r.rule, 22),
        r.ticket_id
            .map(|t| t.to_string())
            .unwrap_or_else(|| "-".into()),
        clip(&r.field, 11),
        clip(&change, 34),
        outcome,
        clip(&note, 100)
    )
}

/// `old -> new` for fields, `+tag`/`-tag` for tags, the text for comments.
fn describe_change(r: &EventRow, old: Option<String>, new: Option<String>) -> String {
    match crate::plan::Field::parse(&r.field) {
        Some(field) => crate::plan::describe_change(field, old.as_deref(), new.as_deref()),
        None => new.unwrap_or_default(),
    }
}

/// A CSV cell a spreadsheet will not run as a formula: text starting with `=`, `+`, `-`,
/// `@`, a tab or a carriage return gets a leading `'` (OWASP's advice), so a tag like
/// `=HYPERLINK(..)` reaches the auditor as text.
fn spreadsheet_safe(v: &str) -> String {
    if v.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{v}")
    } else {
        v.to_string()
    }
}

/// A cell of the table: one line, no raw control characters, at most `width` wide.
fn clip(s: &str, width: usize) -> String {
    let s = crate::text::for_terminal(s).into_owned();
    if s.chars().count() <= width {
        s
    } else {
        let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// `--since`/`--until`: an RFC 3339 time, or a duration back from now like `30m`, `24h`, `7d`.
pub fn parse_time(text: &str) -> Result<String, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(super::timestamp(t.with_timezone(&chrono::Utc)));
    }
    if let Ok(day) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(super::timestamp(
            day.and_time(chrono::NaiveTime::MIN).and_utc(),
        ));
    }
    let ago = crate::time::parse_duration(text).map_err(|e| match e {
        crate::time::DurationError::NotADuration => format!("{text:?} is neither an RFC 3339 time (2026-01-31T08:00:00Z), a date (2026-01-31), nor a duration like 24h or 7d"),
        other => other.to_string(),
    })?;
    Ok(super::timestamp(chrono::Utc::now() - ago))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_durations() {
        assert_eq!(
            parse_time("2026-01-31T08:00:00+01:00").unwrap(),
            "2026-01-31T07:00:00.000Z"
        );
        let t = parse_time("7d").unwrap();
        assert!(t < super::super::timestamp(chrono::Utc::now()));
        assert!(parse_time("yesterday").unwrap_err().contains("RFC 3339"));
        assert!(parse_time("3y").unwrap_err().contains("unknown unit"));
        assert_eq!(
            parse_time("2026-11-25").unwrap(),
            "2026-11-25T00:00:00.000Z"
        );
    }

    #[test]
    fn csv_cells_are_not_formulas() {
        assert_eq!(spreadsheet_safe("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(spreadsheet_safe("+vip"), "'+vip");
        assert_eq!(spreadsheet_safe("@me"), "'@me");
        assert_eq!(spreadsheet_safe("plain, text"), "plain, text");
    }
}
