//! `casewarden check`: the config and every rule, then (unless `--offline`) the server.

use clap::Args;

use super::{Cli, Exit, config_path, connect};
use crate::config::{ServerSettings, Settings};
use std::path::Path;

use crate::rules::{Rule, RuleError, RuleSet};
use crate::stellar::{ApiError, Client, Tenant, User};

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
    let (set, footer) = list_rules(&config, &mut problems);
    if !problems.is_empty() {
        return Err(Exit::config_all(&problems, footer).into());
    }
    if !args.offline {
        online(&config, set.as_ref()).await?;
    }
    Ok(0)
}

/// Every server probed, each result printed, and the audit database; the exit code is the
/// worst any of them earned (3 a server unreachable, 2 a config or rule value it refutes).
async fn online(config: &Settings, set: Option<&RuleSet>) -> Result<(), Exit> {
    let mut unknown = Vec::new();
    let mut failed: Vec<(String, Exit)> = Vec::new();
    let servers = config.servers();
    for s in &servers {
        match probe_server(config, s).await {
            Ok(client) => {
                if let Some(set) = set {
                    unknown.extend(names_on_server(set, s, &client).await);
                }
            }
            Err(e) => {
                println!("server {} ({}): FAILED: {e}", s.url, s.instance_name());
                failed.push((s.instance_name().to_string(), e));
            }
        }
    }
    if config.audit.url.is_some()
        && let Err(e) = probe_audit(config).await
    {
        println!("audit log {}: FAILED: {e}", config.audit.location());
        failed.push(("audit log".to_string(), e));
    }
    if let Some(worst) = failed.iter().map(|(_, e)| e.code).max() {
        // What the servers that answered refuted is said too, not lost behind the failure.
        for u in &unknown {
            eprintln!("error: {u}");
        }
        let names: Vec<&str> = failed.iter().map(|(n, _)| n.as_str()).collect();
        let first = &failed[0].1;
        let message = match (failed.len(), servers.len()) {
            (1, 1) => first.to_string(),
            (n, _) => format!("{n} check(s) failed ({}); first: {first}", names.join(", ")),
        };
        return Err(Exit::with(worst, message));
    }
    if !unknown.is_empty() {
        let footer = format!("{} rule value(s) the server does not know", unknown.len());
        return Err(Exit::config_all(&unknown, Some(footer)));
    }
    Ok(())
}

/// The users the rules `assign` by literal and the customers of their `RULE.tenants`, looked
/// up on server `s` (for the rules that run there): each one it does not know, located,
/// with the nearest it does.
async fn names_on_server(set: &RuleSet, s: &ServerSettings, client: &Client) -> Vec<RuleError> {
    let instance = s.instance_name();
    let runs_here = |file: &Path| {
        set.rules
            .iter()
            .find(|r| r.file == file)
            .is_none_or(|r| r.instances.is_empty() || r.instances.iter().any(|i| i == instance))
    };
    let url = &s.url;
    let mut unknown = Vec::new();
    let people: Vec<&RuleError> = set
        .people_refs
        .iter()
        .filter(|r| runs_here(&r.file))
        .collect();
    if !people.is_empty() {
        match client.list_users().await {
            Ok(users) => unknown.extend(
                people
                    .into_iter()
                    .filter_map(|r| unknown_user(r, &users, url)),
            ),
            Err(e) => eprintln!(
                "warning: server {url}: cannot read its users ({e}); the users rules assign to were not checked"
            ),
        }
    }
    let scoped: Vec<_> = set
        .rules
        .iter()
        .filter(|r| !r.tenants.is_empty() && runs_here(&r.file))
        .collect();
    if !scoped.is_empty() {
        match client.list_tenants().await {
            Ok(tenants) => {
                for r in scoped {
                    unknown.extend(
                        r.tenants
                            .iter()
                            .filter_map(|t| unknown_tenant(r, t, &tenants, url)),
                    );
                }
            }
            Err(e) => eprintln!(
                "warning: server {url}: cannot read its customers ({e}); RULE.tenants were not checked"
            ),
        }
    }
    unknown
}

/// `assign(WHO)` naming an email or user id `users` lacks.
fn unknown_user(named: &RuleError, users: &[User], url: &str) -> Option<RuleError> {
    let who = named.message.trim();
    let email = who.contains('@');
    let known = |u: &User| match email {
        true => u
            .email
            .as_deref()
            .is_some_and(|e| e.eq_ignore_ascii_case(who)),
        false => u.id == who,
    };
    if users.iter().any(known) {
        return None;
    }
    let names = users.iter().filter_map(|u| match email {
        true => u.email.as_deref(),
        false => Some(u.id.as_str()),
    });
    let near = crate::rules::nearest(who, names)
        .map(|n| format!(" (did you mean {n:?}?)"))
        .unwrap_or_default();
    let what = if email { "email" } else { "user id" };
    Some(RuleError {
        message: format!(
            "assign({who:?}): server {url} has no user with that {what}{near}; it would fail on every case it matches"
        ),
        ..named.clone()
    })
}

/// A `RULE.tenants` entry that is no customer id on the server: a customer's name is
/// answered with its id.
fn unknown_tenant(rule: &Rule, given: &str, tenants: &[Tenant], url: &str) -> Option<RuleError> {
    if tenants.iter().any(|t| t.id == given) {
        return None;
    }
    let text = std::fs::read_to_string(&rule.file).unwrap_or_default();
    let (line, col) = crate::rules::locate(&text, "tenants");
    let by_name = tenants.iter().find(|t| {
        t.name
            .as_deref()
            .is_some_and(|n| n.eq_ignore_ascii_case(given))
    });
    let hint = match by_name {
        Some(t) => format!(
            "; {given:?} is the name of customer {:?}: give its cust_id",
            t.id
        ),
        None => {
            let near = crate::rules::nearest(given, tenants.iter().map(|t| t.id.as_str()))
                .map(|n| format!(" (did you mean {n:?}?)"))
                .unwrap_or_default();
            let ids: Vec<&str> = tenants.iter().map(|t| t.id.as_str()).take(10).collect();
            format!("{near}; its customers: {}", ids.join(", "))
        }
    };
    Some(RuleError {
        file: rule.file.clone(),
        line,
        col,
        message: format!("RULE.tenants: server {url} has no customer with cust_id {given:?}{hint}"),
        warning: false,
    })
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
    if let Err(e) = config.audit.chain_keys() {
        problems.push(e.to_string());
    }
    if let Err(e) = config.daemon.ui_token() {
        problems.push(e.to_string());
    }
    if let Err(e) = config.notify_targets() {
        problems.push(e.to_string());
    }
    problems
}

/// Lists the rules with their schedules and returns them, or adds their errors to
/// `problems` and returns the line that sums them up.
fn list_rules(config: &Settings, problems: &mut Vec<String>) -> (Option<RuleSet>, Option<String>) {
    let dir = &config.daemon.rules_dir;
    let set = match RuleSet::load_dir_for(dir, &config.rule_names()) {
        Ok(set) => set,
        Err(found) => {
            let (warnings, errors): (Vec<_>, Vec<_>) = found.into_iter().partition(|e| e.warning);
            for w in warnings.iter().cloned() {
                eprintln!(
                    "warning: {}",
                    RuleError {
                        warning: false,
                        ..w
                    }
                );
            }
            problems.extend(errors.iter().map(ToString::to_string));
            let footer = format!(
                "{} rule error(s), {} warning(s) in {}",
                errors.len(),
                warnings.len(),
                dir.display()
            );
            return (None, Some(footer));
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
    (Some(set), None)
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
async fn probe_server(config: &Settings, s: &ServerSettings) -> Result<Client, Exit> {
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
    Ok(client)
}
