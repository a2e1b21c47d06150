//! `casewarden status`: the audit log's lease (on replicas, the leader), every configured
//! server (never passed, its last pass, its last error) and the last pass on each server,
//! read from the log without writing to it. Exit 1 when replicas share the log and none
//! leads.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde::Serialize;

use super::Cli;
use crate::audit::{EventRow, Lease, PassRow, RuleErrors};
use crate::config::{DEFAULT_INSTANCE, Settings};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Output format
    #[arg(long, value_enum, default_value_t = StatusFormat::Text)]
    pub format: StatusFormat,
    /// The audit log: a SQLite file or a postgres:// URL [default: audit.url, else
    /// audit.path, from the config]
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StatusFormat {
    Text,
    Json,
}

/// What `status --format json` prints.
#[derive(Debug, Serialize)]
struct Status {
    audit_log: String,
    /// `postgres` (replicas elect a leader) or `sqlite` (one host).
    backend: &'static str,
    /// The lease as the log holds it; `live` says whether it is held now.
    lease: Option<LeaseStatus>,
    /// Every configured server (and any other the log names): its newest pass and the
    /// newest that stopped on an error.
    servers: Vec<ServerStatus>,
    /// The newest pass of each server.
    last_passes: Vec<PassRow>,
    /// The rules that failed on some case in those passes.
    erroring_rules: Vec<RuleErrors>,
    /// The newest values other automations set back (yielded to, or fights), each
    /// recorded once.
    automation_clashes: Vec<EventRow>,
}

/// One server as `status` shows it.
#[derive(Debug, Serialize)]
struct ServerStatus {
    instance: String,
    /// The configured URL (None: the log names a server the config no longer has).
    url: Option<String>,
    /// `never passed`, or the newest pass's status.
    state: String,
    last_pass: Option<String>,
    last_pass_at: Option<String>,
    /// The newest pass that stopped on an error: its id, start and error.
    last_error: Option<PassError>,
}

#[derive(Debug, Serialize)]
struct PassError {
    pass: String,
    at: String,
    error: String,
}

/// Each configured server, then any other the log's passes name.
fn servers(config: Option<&Settings>, last: &[PassRow], errors: &[PassRow]) -> Vec<ServerStatus> {
    let name = |p: &PassRow| {
        p.instance
            .clone()
            .unwrap_or_else(|| DEFAULT_INSTANCE.to_string())
    };
    let mut out: Vec<ServerStatus> = Vec::new();
    let configured = config.map(Settings::servers).unwrap_or_default();
    let named = configured
        .iter()
        .map(|s| (s.instance_name().to_string(), Some(s.url.clone())));
    let seen = last.iter().map(|p| (name(p), None));
    for (instance, url) in named.chain(seen) {
        if out.iter().any(|s| s.instance == instance) {
            continue;
        }
        let pass = last.iter().find(|p| name(p) == instance);
        let error = errors.iter().find(|p| name(p) == instance);
        out.push(ServerStatus {
            state: pass.map_or("never passed".to_string(), |p| p.totals.status.clone()),
            last_pass: pass.map(|p| p.id.clone()),
            last_pass_at: pass.map(|p| p.started_at.clone()),
            last_error: error.map(|p| PassError {
                pass: p.id.clone(),
                at: p.started_at.clone(),
                error: p.totals.error.clone().unwrap_or_default(),
            }),
            instance,
            url,
        });
    }
    out
}

#[derive(Debug, Serialize)]
struct LeaseStatus {
    #[serde(flatten)]
    row: Lease,
    live: bool,
}

/// Before the first pass the log's file does not exist yet: every server never passed.
fn before_any_pass(config: &Settings) -> Status {
    Status {
        audit_log: config.audit.location(),
        backend: "sqlite",
        lease: None,
        servers: servers(Some(config), &[], &[]),
        last_passes: Vec::new(),
        erroring_rules: Vec::new(),
        automation_clashes: Vec::new(),
    }
}

fn print(status: &Status, format: StatusFormat) -> anyhow::Result<()> {
    match format {
        StatusFormat::Json => println!("{}", serde_json::to_string_pretty(status)?),
        StatusFormat::Text => print!("{}", text(status)),
    }
    Ok(())
}

pub(super) async fn run(cli: &Cli, args: &StatusArgs) -> anyhow::Result<u8> {
    let config = super::load_config(cli).ok();
    if let Some(c) = &config
        && args.db.is_none()
        && c.audit.url.is_none()
        && !c.audit.path.exists()
    {
        print(&before_any_pass(c), args.format)?;
        return Ok(0);
    }
    let store = super::audit::open_audit(cli, &args.db).await?;
    let now = crate::time::timestamp(chrono::Utc::now());
    let last_passes = store.last_passes().await?;
    let errors = store.last_errors().await?;
    let ids: Vec<&str> = last_passes.iter().map(|p| p.id.as_str()).collect();
    let status = Status {
        audit_log: store.location(),
        backend: if store.is_shared() {
            "postgres"
        } else {
            "sqlite"
        },
        lease: store.lease().await?.map(|row| LeaseStatus {
            live: !row.released && row.expires_at > now,
            row,
        }),
        erroring_rules: store.rule_errors_in(&ids).await?,
        automation_clashes: store.recent_clashes(10).await?,
        servers: servers(config.as_ref(), &last_passes, &errors),
        last_passes,
    };
    print(&status, args.format)?;
    // For monitoring: replicas with nobody leading. (On one host the claim is held only
    // while a pass runs.)
    let leaderless = status.backend == "postgres" && !status.lease.is_some_and(|l| l.live);
    Ok(u8::from(leaderless))
}

/// A line per server, and its last error under it.
fn servers_text(out: &mut String, servers: &[ServerStatus]) {
    for v in servers {
        let url = v.url.as_deref().unwrap_or("not in the config");
        let at = v.last_pass_at.as_deref().unwrap_or("");
        out.push_str(&format!(
            "server     {} ({url}): {} {at}\n",
            v.instance, v.state
        ));
        if let Some(e) = &v.last_error {
            out.push_str(&format!(
                "  last error {} (pass {}): {}\n",
                e.at,
                e.pass,
                crate::text::for_terminal(&e.error)
            ));
        }
    }
}

fn text(s: &Status) -> String {
    let mut out = format!("audit log  {} ({})\n", s.audit_log, s.backend);
    let who = if s.backend == "postgres" {
        "leader"
    } else {
        "writer"
    };
    match &s.lease {
        None => out.push_str(&format!("{who:<10} none: no pass has run on this log\n")),
        Some(l) => {
            let r = &l.row;
            let state = if l.live {
                format!("expires {}", r.expires_at)
            } else if r.released {
                format!("released at {}: nobody holds it", r.heartbeat_at)
            } else {
                format!("EXPIRED at {}: nobody renews it", r.expires_at)
            };
            let holder = if l.live { who } else { "last" };
            out.push_str(&format!(
                "{holder:<10} pid {} on {} (holder {}), epoch {}\nlease      {state}\n",
                r.pid, r.host, r.holder, r.epoch
            ));
        }
    }
    servers_text(&mut out, &s.servers);
    if s.last_passes.is_empty() {
        out.push_str("last pass  none\n");
    }
    for p in &s.last_passes {
        let t = &p.totals;
        out.push_str(&format!(
            "last pass  {:<10} {} {}{} started {} finished {}: planned {}, applied {}, failed {}, skipped {}\n",
            p.instance.as_deref().unwrap_or(crate::config::DEFAULT_INSTANCE),
            p.id,
            t.status,
            if p.dry_run { " (dry run)" } else { "" },
            p.started_at,
            p.finished_at.as_deref().unwrap_or("-"),
            t.planned,
            t.applied,
            t.failed,
            t.skipped,
        ));
        for e in s.erroring_rules.iter().filter(|e| e.pass == p.id) {
            out.push_str(&format!(
                "  ERRORING rule {}: failed on {} case(s); first: {}\n",
                crate::text::for_terminal(&e.rule),
                e.cases.as_deref().unwrap_or("?"),
                crate::text::for_terminal(e.first_error.as_deref().unwrap_or("-")),
            ));
        }
    }
    for c in &s.automation_clashes {
        let kind = match c.new.as_deref() {
            Some("fight") => "FIGHT",
            _ => "yielded",
        };
        out.push_str(&format!(
            "automation {kind} {} {}: {}\n",
            c.recorded_at,
            c.instance
                .as_deref()
                .unwrap_or(crate::config::DEFAULT_INSTANCE),
            crate::text::for_terminal(&c.reason)
        ));
    }
    out
}
