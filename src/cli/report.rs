//! `casewarden report`: the audit review as one self-contained HTML file, or JSON.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};

use super::{Cli, Exit, config_path};
use crate::audit::Period;
use crate::audit::export::parse_time;
use crate::config::Settings;
use crate::review::{Review, Source};

#[derive(Debug, Args)]
#[command(after_help = "casewarden report --since 30d --out report.html
casewarden report --since 2026-11-01 --until 2026-12-01 --format json > november.json")]
pub struct ReportArgs {
    /// From this time: RFC 3339, a date (2026-11-01) or a duration back from now (30d)
    #[arg(long, value_name = "T", default_value = "30d")]
    pub since: String,
    /// Up to this time [default: now]
    #[arg(long, value_name = "T")]
    pub until: Option<String>,
    /// Only this rule
    #[arg(long)]
    pub rule: Option<String>,
    /// Write here instead of stdout
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// html: a page for people (opens offline); json: the same numbers for scripts
    #[arg(long, value_enum, default_value_t = ReportFormat::Html)]
    pub format: ReportFormat,
    /// The audit log: a SQLite file or a postgres:// URL [default: audit.url, else
    /// audit.path, from the config]
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Html,
    Json,
}

pub(super) async fn run(cli: &Cli, args: &ReportArgs) -> anyhow::Result<u8> {
    let period = period_of(args)?;
    let store = super::audit::open_audit(cli, &args.db).await?;
    // The config names the servers and rules to list: a report from a copied log needs none.
    let config = Settings::load(&config_path(cli)).ok();
    let source = Source::new(
        config.as_ref(),
        configured_rules(config.as_ref()),
        store.location(),
    );
    let progress = super::progress::spinner("reading the audit log");
    let review = Review::build(&store, &period, source).await?;
    progress.finish_and_clear();
    let text = match args.format {
        ReportFormat::Html => crate::review::render(&review, false),
        ReportFormat::Json => serde_json::to_string_pretty(&review)?,
    };
    // A reader that stopped early (`| head`) ends the command as done.
    if !write_out(args.out.as_deref(), &text, &review)? {
        return Ok(0);
    }
    Ok(if review.integrity.intact { 0 } else { 1 })
}

/// The rules of the config's rules folder, each listed by the report (none when they
/// cannot be loaded: the report then lists the rules its rows name).
fn configured_rules(config: Option<&Settings>) -> Vec<String> {
    let Some(c) = config else {
        return Vec::new();
    };
    match crate::rules::RuleSet::load_dir_for(&c.daemon.rules_dir, &c.rule_names()) {
        Ok(set) => set.rules.iter().map(|r| r.name.clone()).collect(),
        Err(errors) => {
            tracing::warn!(
                errors = errors.len(),
                "the rules do not load: the report lists only the rules its rows name"
            );
            Vec::new()
        }
    }
}

/// The period `--since`, `--until` and `--rule` name.
fn period_of(args: &ReportArgs) -> Result<Period, Exit> {
    let time =
        |flag: &str, t: &str| parse_time(t).map_err(|e| Exit::config(format!("{flag}: {e}")));
    let period = Period {
        since: Some(time("--since", &args.since)?),
        until: args
            .until
            .as_deref()
            .map(|t| time("--until", t))
            .transpose()?,
        rule: args.rule.clone(),
    };
    if let (Some(since), Some(until)) = (&period.since, &period.until)
        && since > until
    {
        return Err(Exit::config(format!(
            "--since {since} is after --until {until}"
        )));
    }
    Ok(period)
}

/// The report to `--out` (and a line saying so), else to stdout; false when stdout's
/// reader went away.
fn write_out(out: Option<&Path>, text: &str, review: &Review) -> anyhow::Result<bool> {
    let Some(path) = out else {
        let mut out = std::io::stdout().lock();
        return match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            other => Ok(other.map(|()| true)?),
        };
    };
    std::fs::write(path, text)
        .map_err(|e| Exit::config(format!("cannot write {}: {e}", path.display())))?;
    eprintln!(
        "report written to {} ({} rule(s), {} pass(es), audit log {})",
        path.display(),
        review.rules.len(),
        review.passes_total,
        if review.integrity.intact {
            "intact"
        } else {
            "BROKEN"
        }
    );
    Ok(true)
}
