//! `casewarden once`: one pass now, under the audit store's claim, and its summary.

use std::time::Duration;

use clap::Args;

use super::{Cli, Exit, load_config};
use crate::app::App;
use crate::audit::ClaimError;
use crate::pass::PassOptions;
use crate::report::print_report;

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

pub(super) async fn run(cli: &Cli, args: &OnceArgs) -> anyhow::Result<u8> {
    let config = load_config(cli)?;
    let app = App::build(&config, None).await.map_err(Exit::config)?;
    let (set, ctx) = (app.rules, app.ctx);
    for name in &args.rules {
        if !set.rules.iter().any(|r| &r.name == name) {
            let known: Vec<&str> = set.rules.iter().map(|r| r.name.as_str()).collect();
            return Err(Exit::config(format!(
                "--rule {name:?}: no such rule (known: {})",
                known.join(", ")
            ))
            .into());
        }
    }
    tracing::info!(
        version = %env!("CARGO_PKG_VERSION"),
        mode = %if args.dry_run || config.daemon.dry_run { "dry-run (nothing is sent)" } else { "live" },
        url = %config.stellar.url,
        audit = %config.audit.path.display(),
        rules = set.rules.len(),
        "one pass"
    );
    // The server could not be reached or refused the key.
    ctx.client.authenticate().await.map_err(Exit::server)?;
    let (bar, progress) = super::progress::pass_bar();
    let claimed = crate::pass::run_claimed(
        &ctx,
        &set,
        &PassOptions {
            dry_run: args.dry_run,
            only: args.rules.clone(),
            trigger: "once".into(),
            progress: Some(progress),
            ..PassOptions::default()
        },
        Duration::from_secs(args.wait),
    )
    .await;
    bar.finish_and_clear();
    let report = match claimed {
        Ok(report) => report,
        Err(ClaimError::Held(held)) => return Err(Exit::held(held).into()),
        Err(ClaimError::Audit(e)) => return Err(e.into()),
    };
    print_report(&mut std::io::stdout().lock(), &report)?;
    ctx.audit.close().await;
    Ok(if report.has_failures() { 1 } else { 0 })
}
