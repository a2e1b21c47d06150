//! `casewarden check`: the config and every rule, then (unless `--offline`) the server.

use clap::Args;

use super::{Cli, config_path, connect, load_rules};
use crate::config::{ApiFlavor, Config};
use crate::stellar::ApiError;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Config and rules only: no key or server needed
    #[arg(long)]
    pub offline: bool,
}

pub(super) async fn run(cli: &Cli, args: &CheckArgs) -> anyhow::Result<u8> {
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
                let next = crate::cron::next_run(schedule).unwrap_or_default();
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
