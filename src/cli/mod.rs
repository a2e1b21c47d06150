//! The command line: clap definitions and the glue that runs each command and turns its
//! result into the exit codes of INTERFACE.md.

mod alerts;
mod apply;
mod audit;
mod check;
mod completions;
mod demo;
mod diff;
mod exit;
mod exits;
mod once;
mod progress;
mod report;
mod revert;
mod run;
mod simulate;
mod status;
mod test;
mod test_rule;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

pub use apply::ApplyArgs;
pub use audit::{AuditArgs, AuditCommand, AuditQuery};
pub use check::CheckArgs;
pub use completions::CompletionsArgs;
pub use demo::DemoArgs;
pub use diff::{DiffArgs, DiffFormat};
pub use exit::{Exit, code_of};
pub use exits::command;
pub use once::OnceArgs;
pub use report::{ReportArgs, ReportFormat};
pub use revert::RevertArgs;
pub use simulate::SimulateArgs;
pub use test::TestArgs;
pub use test_rule::{TestFormat, TestRuleArgs};

use crate::config::Settings;
use crate::stellar::Client;

#[derive(Debug, Parser)]
#[command(
    name = "casewarden",
    version,
    about = "Keeps Stellar Cyber cases clean: runs Rhai rules against the Cases API and audits every change.",
    after_help = "Start with `casewarden demo`, then `casewarden simulate` and `casewarden once --dry-run`."
)]
pub struct Cli {
    /// Config file [default: $CASEWARDEN_CONFIG, then ./casewarden.toml]
    #[arg(long, global = true, env = "CASEWARDEN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log line format (logs go to stderr)
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// More logging: -v debug, -vv trace (RUST_LOG overrides)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only warnings and errors
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: passes on schedule until SIGTERM/SIGINT; SIGHUP reloads rules
    Run,
    /// Run one pass now and print a summary (exit 0 ok, 1 some change failed or a rule was
    /// halted or errored, 2 config/rule error, 3 server unreachable or key refused, 4 another
    /// pass holds the audit store)
    Once(OnceArgs),
    /// Validate the config and compile every rule (errors name file:line:col), then probe
    /// the server: token, one page, update flavour (exit 0 ok, 2 config/rule error, 3 server)
    Check(CheckArgs),
    /// Evaluate one rule offline on a case file and print the changes it would make
    TestRule(TestRuleArgs),
    /// Apply exactly a reviewed plan (from `once --dry-run --out`), skipping changes whose
    /// case changed since
    Apply(ApplyArgs),
    /// Undo a pass's applied changes where the case still holds what it wrote
    Revert(RevertArgs),
    /// What candidate rules would decide differently from the live ones, no writes
    Diff(DiffArgs),
    /// Run the rule tests in RULES_DIR/tests/*.toml (exit 1 on a failed expectation)
    Test(TestArgs),
    /// Query the audit log, or verify its hash chain (`audit verify`)
    Audit(AuditArgs),
    /// Serve a local Stellar Cyber Cases API simulator
    Simulate(SimulateArgs),
    /// Run the example rules against an in-process simulator and show what they change
    Demo(DemoArgs),
    /// Write the audit review: one self-contained HTML page (or JSON) with changes per rule
    /// and day, guard halts, breaker trips, passes, failures and case timelines
    Report(ReportArgs),
    /// Who leads the replicas sharing the audit log (holder, epoch, lease expiry) and the
    /// last pass on each server; reads the log only (exit 1: replicas and nobody leads)
    Status(status::StatusArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell) to stdout
    Completions(CompletionsArgs),
    /// Print the man pages (roff) of casewarden and its commands to stdout
    Man,
}

fn config_path(cli: &Cli) -> PathBuf {
    cli.config
        .clone()
        .unwrap_or_else(|| PathBuf::from("casewarden.toml"))
}

fn load_config(cli: &Cli) -> Result<Settings, Exit> {
    Settings::load(&config_path(cli)).map_err(Exit::config)
}

/// Runs the parsed command; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    match &cli.command {
        Command::Run => run::run(&cli).await,
        Command::Once(args) => once::run(&cli, args).await,
        Command::Check(args) => check::run(&cli, args).await,
        Command::Apply(args) => apply::run(&cli, args).await,
        Command::Diff(args) => diff::run(&cli, args).await,
        Command::Revert(args) => revert::run(&cli, args).await,
        Command::Test(args) => test::run(&cli, args),
        Command::TestRule(args) => test_rule::run(args, cli.config.as_deref()),
        Command::Audit(args) => audit::run(&cli, args).await,
        Command::Simulate(args) => simulate::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Report(args) => report::run(&cli, args).await,
        Command::Status(args) => status::run(&cli, args).await,
        Command::Completions(args) => completions::completions(args),
        Command::Man => completions::man(),
    }
}

/// `--now T` in ms since the epoch; None when not given.
fn now_arg(t: Option<&str>) -> Result<Option<i64>, Exit> {
    let Some(t) = t else {
        return Ok(None);
    };
    let at = chrono::DateTime::parse_from_rfc3339(t).map_err(|e| {
        Exit::config(format!(
            "--now {t:?}: not an RFC 3339 time ({e}), e.g. 2026-01-31T08:00:00Z"
        ))
    })?;
    Ok(Some(at.timestamp_millis()))
}

/// A client of one of the config's servers.
fn connect(server: &crate::config::ServerSettings) -> Result<Client, Exit> {
    let settings = server
        .client_settings()
        .map_err(|e| Exit::config(format!("{e:#}")))?;
    Client::new(settings).map_err(Exit::config)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
