//! The command line: clap definitions and the glue that runs each command and turns its
//! result into the exit codes of INTERFACE.md.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use futures::StreamExt;

use crate::audit::report::{Format, Printer, parse_time};
use crate::audit::{AuditStore, ClaimError, Filter, Outcome, Verification};
use crate::config::{ApiFlavor, Config};
use crate::demo::DemoArgs;
use crate::pass::{PassContext, PassOptions, PassSettings};
use crate::plan::{RuleChanges, plan_case};
use crate::report::{print_plans, print_report};
use crate::rules::{EvalEnv, RuleSet, case_arg};
use crate::sim::{Faults, SimOptions, Simulator};
use crate::stellar::{ApiError, Case, Client};

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
    /// Run one pass now and print a summary (exit 0 ok, 1 some change failed, 2 config/rule error)
    Once(OnceArgs),
    /// Validate the config and compile every rule (errors name file:line:col), then probe
    /// the server: token, one page, update flavour (exit 0 ok, 2 config/rule error, 3 server)
    Check(CheckArgs),
    /// Evaluate one rule offline on a case file and print the changes it would make
    TestRule(TestRuleArgs),
    /// Query the audit log, or verify its hash chain (`audit verify`)
    Audit(AuditArgs),
    /// Serve a local Stellar Cyber Cases API simulator
    Simulate(SimulateArgs),
    /// Run the example rules against an in-process simulator and show what they change
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
pub struct OnceArgs {
    /// Plan and record, but send no change to the server
    #[arg(long)]
    pub dry_run: bool,
    /// Only run this rule (repeatable); disabled rules run when named
    #[arg(long = "rule", value_name = "NAME")]
    pub rules: Vec<String>,
    /// How long to wait for another casewarden pass on the same audit store to finish
    /// (one writer at a time); then exit 4 naming it
    #[arg(long, value_name = "SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub wait: u64,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Config and rules only: no key or server needed
    #[arg(long)]
    pub offline: bool,
}

#[derive(Debug, Args)]
pub struct TestRuleArgs {
    /// The rule file (*.rhai)
    pub rule: PathBuf,
    /// A case, an array of cases, or the API's {"data":{"cases":[...]}} answer
    pub cases: PathBuf,
    /// The time rules see as now() (RFC 3339) [default: the real clock]
    #[arg(long, value_name = "RFC3339")]
    pub now: Option<String>,
    /// Output format
    #[arg(long, value_enum, default_value_t = TestFormat::Table)]
    pub format: TestFormat,
    /// casewarden's own API user (id or email): its "api" history entries are not human activity
    #[arg(long = "self-user", value_name = "USER")]
    pub self_users: Vec<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TestFormat {
    Table,
    Json,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub verify: Option<AuditCommand>,
    #[command(flatten)]
    pub query: AuditQuery,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain; exit 0 with the row count and head, 1 naming the first broken row
    Verify {
        /// Fail unless the newest row's hash is this (catches truncation)
        #[arg(long, value_name = "HASH")]
        expect_head: Option<String>,
        /// Audit DB file [default: audit.path from the config]
        #[arg(long, value_name = "PATH")]
        db: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct AuditQuery {
    /// Only this case id
    #[arg(long = "case", value_name = "ID")]
    pub case_id: Option<String>,
    /// Only this ticket number
    #[arg(long)]
    pub ticket: Option<i64>,
    /// Only this rule
    #[arg(long)]
    pub rule: Option<String>,
    /// From this time: RFC 3339 or a duration back from now (30m, 24h, 7d)
    #[arg(long, value_name = "T")]
    pub since: Option<String>,
    /// Up to this time: RFC 3339 or a duration back from now
    #[arg(long, value_name = "T")]
    pub until: Option<String>,
    /// Only rows with this outcome
    #[arg(long, value_enum, value_name = "O")]
    pub outcome: Option<Outcome>,
    /// Only rows of this pass (run_id)
    #[arg(long = "pass", value_name = "RUN_ID")]
    pub run_id: Option<String>,
    /// At most this many rows
    #[arg(long)]
    pub limit: Option<i64>,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Audit DB file [default: audit.path from the config]
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// Number of generated cases
    #[arg(long, default_value_t = 200)]
    pub cases: usize,
    /// Seed for the generated population (same seed, same cases)
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Load cases from a JSON array (or API answer) instead of generating them
    #[arg(long, value_name = "FILE")]
    pub cases_file: Option<PathBuf>,
    /// Update flavour the server speaks
    #[arg(long, value_enum, default_value_t = ApiFlavor::Legacy)]
    pub flavor: ApiFlavor,
    /// API user for Basic auth
    #[arg(long, default_value = "demo@example.com")]
    pub user: String,
    /// API key (Basic with --user, or alone as a Bearer per-user key)
    #[arg(long, default_value = "demo-key")]
    pub api_key: String,
    /// Also accept Basic user:key on every call (the vendor's on-prem sync mode)
    #[arg(long)]
    pub accept_basic: bool,
    /// Lifetime of issued tokens in seconds
    #[arg(long, default_value_t = 600)]
    pub token_ttl: u64,
    /// Serve HTTPS with a self-signed chain; its CA certificate is written here
    #[arg(long, value_name = "PATH")]
    pub tls_cert_out: Option<PathBuf>,
    /// Fault: added latency per request, ms
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Fault: share of API requests answered 503 (0.0-1.0)
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Fault: every Nth API request starts a burst of 429s
    #[arg(long, default_value_t = 0)]
    pub rate_limit_every: u64,
    /// Fault: length of each 429 burst
    #[arg(long, default_value_t = 3)]
    pub rate_limit_burst: u64,
    /// Fault: Retry-After seconds sent with 429
    #[arg(long, default_value_t = 1)]
    pub retry_after: u64,
}

fn config_path(cli: &Cli) -> PathBuf {
    cli.config
        .clone()
        .unwrap_or_else(|| PathBuf::from("casewarden.toml"))
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    Ok(Config::load(&config_path(cli))?)
}

/// Loads the rules folder, printing every error; None when any rule is broken.
fn load_rules(dir: &Path) -> Option<RuleSet> {
    match RuleSet::load_dir(dir) {
        Ok(set) => Some(set),
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            eprintln!("{} rule error(s) in {}", errors.len(), dir.display());
            None
        }
    }
}

/// Runs the parsed command; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    match &cli.command {
        Command::Run => match load_config(&cli) {
            Ok(config) => crate::daemon::run(config).await,
            Err(e) => {
                eprintln!("error: {e:#}");
                Ok(2)
            }
        },
        Command::Once(args) => once(&cli, args).await,
        Command::Check(args) => check(&cli, args).await,
        Command::TestRule(args) => test_rule(args),
        Command::Audit(args) => audit(&cli, args).await,
        Command::Simulate(args) => simulate(args).await,
        Command::Demo(args) => crate::demo::run(args).await,
    }
}

async fn check(cli: &Cli, args: &CheckArgs) -> anyhow::Result<u8> {
    let path = config_path(cli);
    let mut ok = true;
    let config = match Config::load(&path) {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("error: {e}");
            ok = false;
            None
        }
    };
    let Some(config) = config else {
        return Ok(2);
    };
    if !args.offline
        && let Err(e) = config.api_key()
    {
        eprintln!("error: {e}");
        ok = false;
    }
    if let Some(ca) = &config.stellar.ca_file
        && let Err(e) = std::fs::read(ca)
    {
        eprintln!(
            "error: {}: stellar.ca_file {}: {e}",
            path.display(),
            ca.display()
        );
        ok = false;
    }
    if ok {
        println!("config {}: ok", path.display());
    }
    match load_rules(&config.daemon.rules_dir) {
        Some(set) => {
            println!("rules in {}:", config.daemon.rules_dir.display());
            for r in &set.rules {
                let schedule = r.schedule.as_deref().unwrap_or(&config.daemon.schedule);
                let next = crate::rules::next_run(schedule).unwrap_or_default();
                println!(
                    "  {:<24} {:<9} schedule {:<16} next {}  {}",
                    r.name,
                    if r.enabled { "enabled" } else { "disabled" },
                    schedule,
                    next,
                    r.file.display()
                );
            }
        }
        None => ok = false,
    }
    if !ok {
        return Ok(2);
    }
    if args.offline {
        return Ok(0);
    }
    probe_server(&config).await
}

/// `check` online: the key is accepted, a page of cases lists, and which update flavour
/// the server takes (asked with an empty update of a case that does not exist).
async fn probe_server(config: &Config) -> anyhow::Result<u8> {
    let client = match connect(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(2);
        }
    };
    let url = &config.stellar.url;
    let unreachable = |e: ApiError| {
        eprintln!("error: server {url}: {e}");
        Ok(3)
    };
    if let Err(e) = client.authenticate().await {
        return unreachable(e);
    }
    let page = match client.list_cases(Vec::new()).next_page().await {
        Ok(page) => page.unwrap_or_default(),
        Err(e) => return unreachable(e),
    };
    println!(
        "server {url}: key accepted, first page lists {} case(s)",
        page.cases.len()
    );
    let configured = config.stellar.api_flavor.fixed();
    let first = client.flavor();
    let takes = |f: ApiFlavor| {
        let client = client.clone();
        async move { client.probe_update_route(f).await }
    };
    let found = match takes(first).await {
        Ok(true) => first,
        Ok(false) => match takes(first.other()).await {
            Ok(true) => first.other(),
            Ok(false) => {
                eprintln!("error: server {url}: refuses both update calls (HTTP 405)");
                return Ok(3);
            }
            Err(e) => return unreachable(e),
        },
        Err(e) => return unreachable(e),
    };
    match configured {
        Some(c) if c != found => {
            eprintln!(
                "error: {}: stellar.api_flavor is \"{c}\" but the server takes the {found} update call: set stellar.api_flavor = \"{found}\" (or \"auto\")",
                config.source.display()
            );
            return Ok(2);
        }
        Some(c) => println!("api flavour: {c} (configured; the server takes its update call)"),
        None => println!(
            "api flavour: {found} (detected: the server takes its update call; stellar.api_flavor = \"auto\")"
        ),
    }
    Ok(0)
}

fn connect(config: &Config) -> anyhow::Result<Client> {
    let settings = config.client_settings()?;
    Ok(Client::new(settings)?)
}

async fn once(cli: &Cli, args: &OnceArgs) -> anyhow::Result<u8> {
    let config = match load_config(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(2);
        }
    };
    let Some(set) = load_rules(&config.daemon.rules_dir) else {
        return Ok(2);
    };
    for name in &args.rules {
        if !set.rules.iter().any(|r| &r.name == name) {
            let known: Vec<&str> = set.rules.iter().map(|r| r.name.as_str()).collect();
            eprintln!(
                "error: --rule {name:?}: no such rule (known: {})",
                known.join(", ")
            );
            return Ok(2);
        }
    }
    let client = match connect(&config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(2);
        }
    };
    let audit = AuditStore::open_with(
        &config.audit.path,
        Duration::from_secs(config.audit.busy_timeout_secs),
        config.audit.max_size_mb,
    )
    .await?
    .with_head_file(config.audit.head_file.clone());
    if let Err(e) = client.authenticate().await {
        // The server could not be reached or refused the key.
        eprintln!("error: {e}");
        return Ok(3);
    }
    let ctx = PassContext {
        client,
        audit,
        settings: PassSettings::from_config(&config),
    };
    let claimed = crate::pass::run_claimed(
        &ctx,
        &set,
        &PassOptions {
            dry_run: args.dry_run,
            only: args.rules.clone(),
            trigger: "once".into(),
            ..PassOptions::default()
        },
        Duration::from_secs(args.wait),
    )
    .await;
    let report = match claimed {
        Ok(report) => report,
        Err(ClaimError::Held(held)) => {
            eprintln!("error: {held}");
            return Ok(4);
        }
        Err(ClaimError::Audit(e)) => return Err(e.into()),
    };
    print_report(&mut std::io::stdout().lock(), &report)?;
    ctx.audit.close().await;
    Ok(if report.has_failures() { 1 } else { 0 })
}

fn test_rule(args: &TestRuleArgs) -> anyhow::Result<u8> {
    let text = match std::fs::read_to_string(&args.rule) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read rule {}: {e}", args.rule.display());
            return Ok(2);
        }
    };
    let set = match RuleSet::from_sources(vec![(args.rule.clone(), text)]) {
        Ok(s) => s,
        Err(errors) => {
            for e in errors {
                eprintln!("error: {e}");
            }
            return Ok(2);
        }
    };
    let rule = &set.rules[0];
    let raw = match std::fs::read_to_string(&args.cases) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read case file {}: {e}", args.cases.display());
            return Ok(2);
        }
    };
    let json = match crate::stellar::model::parse_lenient(&raw) {
        Ok((v, repaired)) => {
            if repaired {
                eprintln!(
                    "warning: {}: not strict JSON (trailing commas); read without them",
                    args.cases.display()
                );
            }
            v
        }
        Err(e) => {
            eprintln!(
                "error: {}:{}:{}: not valid JSON: {e}",
                args.cases.display(),
                e.line(),
                e.column()
            );
            return Ok(2);
        }
    };
    let items = match crate::stellar::model::cases_in_answer(json) {
        Ok(items) => items,
        Err(e) => {
            eprintln!("error: {}: {e}", args.cases.display());
            return Ok(2);
        }
    };
    let now_ms = match &args.now {
        Some(t) => match chrono::DateTime::parse_from_rfc3339(t) {
            Ok(t) => Some(t.timestamp_millis()),
            Err(e) => {
                eprintln!(
                    "error: --now {t:?}: not an RFC 3339 time ({e}), e.g. 2026-01-31T08:00:00Z"
                );
                return Ok(2);
            }
        },
        None => None,
    };
    let env = EvalEnv {
        now_ms,
        own_users: std::sync::Arc::new(args.self_users.clone()),
        ..EvalEnv::default()
    };
    let mut failed = false;
    let mut out = std::io::stdout().lock();
    if matches!(args.format, TestFormat::Table) {
        writeln!(out, "rule {} ({})", rule.name, rule.file.display())?;
        if items.is_empty() {
            writeln!(out, "  (no case in {})", args.cases.display())?;
        }
    }
    for (n, item) in items.into_iter().enumerate() {
        let case = match Case::from_value(item) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {} case #{}: {e}", args.cases.display(), n + 1);
                failed = true;
                continue;
            }
        };
        let result = set.evaluate(rule, &case, case_arg(&case), &env);
        let (plan, error) = match result {
            Ok(asked) => (
                Some(plan_case(
                    &case,
                    &[RuleChanges {
                        rule: rule.name.clone(),
                        changes: asked.changes,
                    }],
                )),
                None,
            ),
            Err(e) => {
                failed = true;
                (None, Some(e.to_string()))
            }
        };
        match args.format {
            TestFormat::Json => {
                let changes: Vec<serde_json::Value> = plan
                    .iter()
                    .flat_map(|p| &p.decisions)
                    .map(|d| {
                        serde_json::json!({
                            "rule": d.rule, "field": d.field, "old": d.old, "new": d.new,
                            "reason": d.reason, "skipped": d.skipped,
                        })
                    })
                    .collect();
                let body = plan.as_ref().and_then(|p| p.body());
                serde_json::to_writer(
                    &mut out,
                    &serde_json::json!({
                        "case_id": case.id, "ticket_id": case.ticket_id(),
                        "changes": changes, "update": body, "error": error,
                    }),
                )?;
                writeln!(out)?;
            }
            TestFormat::Table => match (&plan, &error) {
                (_, Some(e)) => writeln!(
                    out,
                    "  case {}: ERROR {}",
                    case.id,
                    crate::text::for_terminal(e)
                )?,
                (Some(p), None) if p.decisions.is_empty() => writeln!(
                    out,
                    "  case {} (ticket {}): no changes",
                    case.id,
                    case.ticket_id()
                        .map(|t| t.to_string())
                        .unwrap_or_else(|| "-".into())
                )?,
                (Some(p), None) => print_plans(&mut out, std::slice::from_ref(p))?,
                (None, None) => {}
            },
        }
    }
    Ok(if failed { 2 } else { 0 })
}

async fn open_audit(cli: &Cli, db: &Option<PathBuf>) -> anyhow::Result<AuditStore> {
    let path = match db {
        Some(p) => p.clone(),
        None => load_config(cli)?.audit.path,
    };
    if !path.exists() {
        anyhow::bail!(
            "audit DB {} does not exist (no pass has run with this config yet?)",
            path.display()
        );
    }
    // Reading the log never writes to it: an auditor's copy may be read-only.
    Ok(AuditStore::open_read_only(&path).await?)
}

async fn audit(cli: &Cli, args: &AuditArgs) -> anyhow::Result<u8> {
    if let Some(AuditCommand::Verify { expect_head, db }) = &args.verify {
        let store = open_audit(cli, db).await?;
        let result = store.verify().await?;
        return Ok(match result {
            Verification::Intact { rows, head } => {
                // A head saved earlier is any row of the chain: the log grows after it.
                if let Some(expected) = expect_head
                    && !head.eq_ignore_ascii_case(expected)
                {
                    let Some(seq) = store.seq_of_hash(expected).await? else {
                        println!(
                            "BROKEN: the chain is intact over {rows} row(s) but its head is {head}, not the expected {expected}, and no row has that hash: rows were removed or the log was replaced"
                        );
                        return Ok(1);
                    };
                    let since = rows.saturating_sub(seq as u64);
                    println!(
                        "ok: {rows} row(s), hash chain intact, head {head}; the expected hash is row {seq}, {since} row(s) appended since"
                    );
                    return Ok(0);
                }
                println!("ok: {rows} row(s), hash chain intact, head {head}");
                0
            }
            Verification::BrokenPass { id, problem } => {
                println!("BROKEN: pass {id}: {problem}");
                1
            }
            Verification::Broken {
                seq,
                rows_checked,
                problem,
            } => {
                println!("BROKEN at row {seq} (after {rows_checked} good row(s)): {problem}");
                1
            }
        });
    }
    let q = &args.query;
    let filter = Filter {
        case_id: q.case_id.clone(),
        ticket_id: q.ticket,
        rule: q.rule.clone(),
        since: q
            .since
            .as_deref()
            .map(parse_time)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--since: {e}"))?,
        until: q
            .until
            .as_deref()
            .map(parse_time)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--until: {e}"))?,
        outcome: q.outcome,
        run_id: q.run_id.clone(),
        limit: q.limit,
    };
    let store = open_audit(cli, &q.db).await?;
    let stdout = std::io::stdout();
    let mut printer = Printer::new(q.format, std::io::BufWriter::new(stdout.lock()))?;
    let mut rows = std::pin::pin!(store.query(&filter));
    while let Some(row) = rows.next().await {
        match printer.row(&row?) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(0),
            other => other?,
        }
    }
    printer.finish()?;
    Ok(0)
}

async fn simulate(args: &SimulateArgs) -> anyhow::Result<u8> {
    let opts = SimOptions {
        cases: args.cases,
        seed: args.seed,
        flavor: args.flavor,
        user: args.user.clone(),
        api_key: args.api_key.clone(),
        token_ttl_secs: args.token_ttl,
        cases_file: args.cases_file.clone(),
        accept_basic: args.accept_basic,
        faults: Faults {
            latency_ms: args.latency_ms,
            error_rate: args.error_rate,
            rate_limit_every: args.rate_limit_every,
            rate_limit_burst: args.rate_limit_burst,
            retry_after_secs: args.retry_after,
            ..Faults::default()
        },
    };
    let sim = Simulator::start(opts, args.listen, args.tls_cert_out.as_deref())
        .await
        .context("cannot start the simulator")?;
    let case_count = sim.state().cases.len();
    println!(
        "casewarden simulator: Stellar Cyber Cases API ({} flavour) with {case_count} cases",
        args.flavor.as_str()
    );
    println!("  url:      {}", sim.url);
    println!("  user:     {}", args.user);
    println!(
        "  api key:  {} (simulator credentials; Basic with the user, or Bearer alone)",
        args.api_key
    );
    if let Some(ca) = &args.tls_cert_out {
        println!("  CA cert:  {} (set stellar.ca_file to it)", ca.display());
    }
    println!();
    println!("Point casewarden at it with a casewarden.toml like:");
    println!(
        "  [stellar]\n  url = \"{}\"\n  api_flavor = \"{}\"\n  user = \"{}\"\n  api_key_env = \"CASEWARDEN_API_KEY\"",
        sim.url,
        args.flavor.as_str(),
        args.user
    );
    if let Some(ca) = &args.tls_cert_out {
        println!("  ca_file = \"{}\"", ca.display());
    }
    println!(
        "and `CASEWARDEN_API_KEY={} casewarden once --dry-run`. Ctrl-C stops the simulator.",
        args.api_key
    );
    std::io::stdout().flush()?;
    tokio::select! {
        r = sim.wait() => r?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(0)
}
