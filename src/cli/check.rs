//! `casewarden check`: the config and every rule, then (unless `--offline`) the server.

use clap::Args;

use super::{Cli, Exit, config_path, connect};
use crate::config::{ServerSettings, Settings};
use crate::rules::RuleSet;
use crate::stellar::ApiError;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Config and rules only: no key or server needed
    #[arg(long)]
    pub offline: bool,
}

pub(super) async fn run(cli: &Cli, args: &CheckArgs) -> anyhow::Result<u8> {
    let path = config_path(cli);
    let config = Settings::load(&path).map_err(Exit::config)?;
    // Every problem of the config and the rules, found together.
    let mut problems = config_problems(&config, args.offline);
    if problems.is_empty() {
        println!("config {}: ok", path.display());
    }
    let footer = list_rules(&config, &mut problems);
    if !problems.is_empty() {
        return Err(Exit::config_all(&problems, footer).into());
    }
    if !args.offline {
        for s in config.servers() {
            probe_server(&config, s).await?;
        }
        if config.audit.url.is_some() {
            probe_audit(&config).await?;
        }
    }
    Ok(0)
}

/// What the config refers to that cannot be read: keys (unless offline), CA files, the
/// UI token, notification targets.
fn config_problems(config: &Settings, offline: bool) -> Vec<String> {
    let mut problems = Vec::new();
    for s in config.servers() {
        if !offline && let Err(e) = s.api_key() {
            problems.push(e.to_string());
        }
        if let Err(e) = s.ca_pem() {
            problems.push(e.to_string());
        }
    }
    if let Err(e) = config.daemon.ui_token() {
        problems.push(e.to_string());
    }
    if let Err(e) = config.notify_targets() {
        problems.push(e.to_string());
    }
    problems
}

/// Lists the rules with their schedules, or adds their errors to `problems` and returns
/// the line that sums them up.
fn list_rules(config: &Settings, problems: &mut Vec<String>) -> Option<String> {
    let dir = &config.daemon.rules_dir;
    let set = match RuleSet::load_dir_for(dir, &config.rule_names()) {
        Ok(set) => set,
        Err(errors) => {
            problems.extend(errors.iter().map(ToString::to_string));
            return Some(format!(
                "{} rule error(s) in {}",
                errors.len(),
                dir.display()
            ));
        }
    };
    for w in &set.warnings {
        eprintln!("warning: {w}");
    }
    println!("rules in {}:", dir.display());
    for r in &set.rules {
        let schedule = r.schedule.as_ref().unwrap_or(&config.daemon.schedule);
        let next = schedule.next_run().unwrap_or_default();
        println!(
            "  {:<24} {:<9} schedule {:<16} next {}  {}",
            r.name,
            if r.enabled { "enabled" } else { "disabled" },
            schedule,
            next,
            r.file.display()
        );
    }
    None
}

/// `check` online with the log in PostgreSQL: it answers, with this password, and who
/// holds the lease. Reads only.
async fn probe_audit(config: &Settings) -> Result<(), Exit> {
    let url = config.audit.url.as_deref().unwrap_or_default();
    let password = config.audit.password().map_err(Exit::config)?;
    let store = crate::audit::AuditStore::open_postgres_read_only(
        url,
        password.as_ref().map(crate::secret::Secret::expose),
    )
    .await;
    let lease = match store {
        Ok(store) => store.lease().await,
        Err(e) => Err(e),
    };
    match lease {
        Ok(Some(l)) => println!(
            "audit log {}: reachable; lease epoch {} last held by pid {} on {}",
            config.audit.location(),
            l.epoch,
            l.pid,
            l.host
        ),
        Ok(None) => println!(
            "audit log {}: reachable; no replica has led yet",
            config.audit.location()
        ),
        // Not created yet: the first daemon creates the tables.
        Err(crate::audit::AuditError::NoLog { .. }) => {
            println!(
                "audit log {}: reachable; its tables are created when the first replica starts",
                config.audit.location()
            )
        }
        Err(e) => return Err(Exit::config(format!("audit.url: {e}"))),
    }
    Ok(())
}

/// `check` online: the key is accepted, a page of cases lists, and which update flavour
/// the server takes (asked with an empty update of a case that does not exist).
async fn probe_server(config: &Settings, s: &ServerSettings) -> Result<(), Exit> {
    let client = connect(s)?;
    let url = &s.url;
    let unreachable = |e: ApiError| Exit::server(format!("server {url}: {e}"));
    client.authenticate().await.map_err(unreachable)?;
    let page = client
        .list_cases(Vec::new())
        .next_page()
        .await
        .map_err(unreachable)?
        .unwrap_or_default();
    println!(
        "server {url}: key accepted, first page lists {} case(s)",
        page.cases.len()
    );
    let configured = s.api_flavor.fixed();
    let flavor_key = s.key("api_flavor");
    let first = client.flavor();
    let found = if client
        .probe_update_route(first)
        .await
        .map_err(unreachable)?
    {
        first
    } else if client
        .probe_update_route(first.other())
        .await
        .map_err(unreachable)?
    {
        first.other()
    } else {
        return Err(Exit::server(format!(
            "server {url}: refuses both update calls (HTTP 405)"
        )));
    };
    match configured {
        Some(c) if c != found => {
            return Err(Exit::config(format!(
                "{}: {flavor_key} is \"{c}\" but the server takes the {found} update call: set {flavor_key} = \"{found}\" (or \"auto\")",
                config.source.display()
            )));
        }
        Some(c) => println!("api flavour: {c} (configured; the server takes its update call)"),
        None => println!(
            "api flavour: {found} (detected: the server takes its update call; {flavor_key} = \"auto\")"
        ),
    }
    Ok(())
}
