//! `casewarden simulate`: the Cases API simulator, until Ctrl-C.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::config::ApiFlavor;
use crate::sim::{Faults, SimOptions, Simulator};

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
    /// Customers (tenants) to spread the generated cases over, each with a `cust_id` and
    /// a name, listed by `/tenants` and selectable with the `tenantid` filter
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    pub tenants: u16,
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
    #[arg(long, default_value_t = 0.0, value_parser = rate)]
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
    /// Fault: listings serve each case as it was this many ms ago (a search index trailing
    /// writes); reading one case by id is current
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub list_lag_ms: u64,
    /// Fault: share of updates applied, then answered 502 by a "gateway" (0.0-1.0)
    #[arg(long, default_value_t = 0.0, value_name = "RATE", value_parser = rate)]
    pub apply_then_fail: f64,
    /// Fault: writes are applied, then their answer is held back this many ms (beyond a
    /// client's timeout, a late answer)
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub slow_write_answers_ms: u64,
    /// Fault: listings serve the case with this id with a byte of invalid UTF-8
    #[arg(long, value_name = "CASE_ID")]
    pub invalid_utf8_case: Option<String>,
}

/// A share from 0.0 to 1.0.
fn rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a share from 0.0 to 1.0")),
    }
}

pub(super) async fn run(args: &SimulateArgs) -> anyhow::Result<u8> {
    let sim = Simulator::start(options(args), args.listen, args.tls_cert_out.as_deref())
        .await
        .context("cannot start the simulator")?;
    print_banner(args, &sim.url, sim.state().cases.len());
    std::io::stdout().flush()?;
    tokio::select! {
        r = sim.wait() => r?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(0)
}

fn options(args: &SimulateArgs) -> SimOptions {
    SimOptions {
        cases: args.cases,
        seed: args.seed,
        flavor: args.flavor,
        user: args.user.clone(),
        api_key: args.api_key.clone(),
        token_ttl_secs: args.token_ttl,
        cases_file: args.cases_file.clone(),
        accept_basic: args.accept_basic,
        tenants: usize::from(args.tenants),
        faults: Faults {
            latency_ms: args.latency_ms,
            error_rate: args.error_rate,
            rate_limit_every: args.rate_limit_every,
            rate_limit_burst: args.rate_limit_burst,
            retry_after_secs: args.retry_after,
            list_lag_ms: args.list_lag_ms,
            apply_then_fail: args.apply_then_fail,
            slow_write_answers_ms: args.slow_write_answers_ms,
            invalid_utf8_case: args.invalid_utf8_case.clone(),
            ..Faults::default()
        },
    }
}

/// Where the simulator listens, its credentials, and a config that points at it.
fn print_banner(args: &SimulateArgs, url: &str, case_count: usize) {
    println!(
        "casewarden simulator: Stellar Cyber Cases API ({} flavour) with {case_count} cases",
        args.flavor.as_str()
    );
    println!("  url:      {url}");
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
        "  [stellar]\n  url = \"{url}\"\n  api_flavor = \"{}\"\n  user = \"{}\"\n  api_key_env = \"CASEWARDEN_API_KEY\"",
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
}
