//! `[daemon]`: when passes run and what bounds them, checked, with the live view's token
//! read.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::error::{ConfigError, SecretFileError};
use super::raw::RawDaemon;
use super::secrets::{self, Loaded};
use super::source::Source;
use crate::cron::CronSchedule;
use crate::rules::limits::Limits;
use crate::secret::Secret;

/// The shortest live-view token accepted.
const MIN_TOKEN_CHARS: usize = 16;

#[derive(Debug, Clone)]
pub struct DaemonSettings {
    // The rules: where, when, and what bounds each.
    pub rules_dir: PathBuf,
    /// When passes run, unless a rule names its own schedule.
    pub schedule: CronSchedule,
    /// What one rule may ask of one case.
    pub rule_limits: Limits,
    /// A case carrying one of these tags is left alone by every rule.
    pub exempt_tags: Vec<String>,
    /// Passes in a row a rule may fail on every case before it is disabled.
    pub breaker_passes: u32,

    // What one pass may send.
    /// Plan and record, send nothing.
    pub dry_run: bool,
    /// One comment per updated case naming the rules and reasons.
    pub comment_changes: bool,
    /// The change budget of one pass.
    pub max_changes_per_run: usize,
    /// The blast-radius guard: the share of the listed cases one rule may change, once
    /// it has seen `guard_min_cases`.
    pub max_change_fraction: f64,
    pub guard_min_cases: usize,
    /// A pass still sending after this long stops sending; what it did not send is
    /// recorded as skipped.
    pub pass_timeout_secs: u64,
    /// On SIGTERM, how long in-flight requests may finish.
    pub shutdown_timeout_secs: u64,

    // The HTTP endpoints.
    pub listen: Option<SocketAddr>,
    /// What the listener allows one client: its request headers within this long, and no
    /// more than this long with nothing sent either way; and how many connections at once.
    pub listener: ListenerLimits,
    /// The bearer token the live view and its API at `listen` require.
    ui_token: Loaded<Option<Secret>>,
}

/// The HTTP listener's limits against slow and greedy clients.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ListenerLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl DaemonSettings {
    pub(super) fn build(d: RawDaemon, src: &Source) -> Result<DaemonSettings, ConfigError> {
        check_numbers(&d, src)?;
        let schedule =
            CronSchedule::parse(&d.schedule).map_err(|e| src.invalid("daemon.schedule", e))?;
        let listen = match &d.listen {
            Some(text) => Some(text.parse::<SocketAddr>().map_err(|_| {
                src.invalid(
                    "daemon.listen",
                    format!("{text:?} is not an address like 127.0.0.1:9187"),
                )
            })?),
            None => None,
        };
        let ui_token = d
            .ui_token_file
            .map(|p| token_in(&src.resolve(&p)))
            .transpose()
            .map_err(|e| src.secret_file("daemon.ui_token_file", e));
        Ok(DaemonSettings {
            schedule,
            rules_dir: src.resolve(&d.rules_dir),
            dry_run: d.dry_run,
            max_changes_per_run: d.max_changes_per_run,
            comment_changes: d.comment_changes,
            max_change_fraction: d.max_change_fraction,
            guard_min_cases: d.guard_min_cases,
            breaker_passes: d.breaker_passes,
            shutdown_timeout_secs: d.shutdown_timeout_secs,
            pass_timeout_secs: d.pass_timeout_secs,
            rule_limits: Limits {
                changes_per_case: d.max_changes_per_rule_case,
                comments_per_case: d.max_comments_per_rule_case,
                comment_chars: d.max_comment_chars,
                eval_time: Duration::from_millis(d.rule_timeout_ms),
                prints_per_pass: d.max_prints_per_rule,
            },
            listen,
            listener: ListenerLimits {
                header_timeout: Duration::from_secs(d.header_timeout_secs),
                idle_timeout: Duration::from_secs(d.idle_timeout_secs),
                max_connections: d.max_connections,
            },
            exempt_tags: d.exempt_tags,
            ui_token: Loaded::new(ui_token, None),
        })
    }

    /// The live view's token, if `ui_token_file` is set.
    pub fn ui_token(&self) -> Result<Option<Secret>, ConfigError> {
        self.ui_token.get()
    }
}

/// The ranges.
fn check_numbers(d: &RawDaemon, src: &Source) -> Result<(), ConfigError> {
    if !(d.max_change_fraction > 0.0 && d.max_change_fraction <= 1.0) {
        return Err(src.invalid(
            "daemon.max_change_fraction",
            format!("{} must be in (0, 1]", d.max_change_fraction),
        ));
    }
    let usize_to_u64 = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    for (key, value, max) in [
        (
            "daemon.max_changes_per_rule_case",
            usize_to_u64(d.max_changes_per_rule_case),
            10_000,
        ),
        (
            "daemon.max_comment_chars",
            usize_to_u64(d.max_comment_chars),
            1_000_000,
        ),
        ("daemon.rule_timeout_ms", d.rule_timeout_ms, 600_000),
        ("daemon.pass_timeout_secs", d.pass_timeout_secs, 7 * 86_400),
        ("daemon.header_timeout_secs", d.header_timeout_secs, 3_600),
        ("daemon.idle_timeout_secs", d.idle_timeout_secs, 86_400),
        (
            "daemon.max_connections",
            usize_to_u64(d.max_connections),
            1_000_000,
        ),
        (
            "daemon.shutdown_timeout_secs",
            d.shutdown_timeout_secs,
            86_400,
        ),
    ] {
        if value == 0 || value > max {
            return Err(src.invalid(key, format!("{value} is out of range: 1 to {max}")));
        }
    }
    if d.breaker_passes == 0 {
        return Err(src.invalid("daemon.breaker_passes", "must be at least 1"));
    }
    Ok(())
}

/// A token file: one line, at least 16 characters.
fn token_in(file: &std::path::Path) -> Result<Secret, SecretFileError> {
    let text = secrets::read(file)?;
    let token = text.trim();
    if token.len() < MIN_TOKEN_CHARS {
        return Err(SecretFileError::TooShort {
            file: file.into(),
            min: MIN_TOKEN_CHARS,
        });
    }
    Ok(Secret::new(token))
}
