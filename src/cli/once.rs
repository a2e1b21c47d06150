//! `casewarden once`: one pass now, under the audit store's claim, and its summary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;

use super::plan_file::PlanFile;
use super::{Cli, Exit, load_config};
use crate::app::App;
use crate::audit::ClaimError;
use crate::config::Settings;
use crate::pass::{Hook, PassContext, PassOptions, Work};
use crate::report::print_report;
use crate::rules::RuleSet;
use crate::stellar::Case;

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
    /// Save the cases the pass listed to FILE (a JSON list), for `casewarden diff --cases`
    /// and `test-rule`
    #[arg(long, value_name = "FILE")]
    pub save_cases: Option<PathBuf>,
    /// Write the plan for review to FILE; `casewarden apply FILE` applies exactly it
    #[arg(long, value_name = "FILE", requires = "dry_run")]
    pub out: Option<PathBuf>,
    /// How long the written plan may be applied: 30m, 24h, 7d
    #[arg(long, value_name = "DURATION", default_value = "24h", requires = "out")]
    pub expires: String,
    /// With --dry-run: exit 0 when nothing would change, 2 when changes are pending, 1 on
    /// an error (as `terraform plan -detailed-exitcode`)
    #[arg(long, requires = "dry_run")]
    pub detailed_exitcode: bool,
    /// Only this server (a `[[instance]]` name, `default` for `[stellar]`); without it a
    /// config with several servers runs a pass on each, one after the other
    #[arg(long, value_name = "NAME")]
    pub instance: Option<String>,
}

/// Writes listed cases as one JSON list, page by page; the first write error is kept.
struct CaseFile {
    out: std::io::BufWriter<std::fs::File>,
    written: usize,
    error: Option<std::io::Error>,
}

impl CaseFile {
    fn create(path: &Path) -> Result<CaseFile, Exit> {
        let file = std::fs::File::create(path)
            .map_err(|e| Exit::config(format!("--save-cases {}: {e}", path.display())))?;
        let mut out = std::io::BufWriter::new(file);
        let error = out.write_all(b"[").err();
        Ok(CaseFile {
            out,
            written: 0,
            error,
        })
    }

    fn add(&mut self, cases: &[Case]) {
        for case in cases {
            if self.error.is_some() {
                return;
            }
            let sep: &[u8] = if self.written == 0 { b"\n" } else { b",\n" };
            let result = self.out.write_all(sep).and_then(|()| {
                serde_json::to_writer(&mut self.out, case.raw()).map_err(Into::into)
            });
            self.written += 1;
            self.error = result.err();
        }
    }

    fn finish(mut self, path: &Path) -> Result<usize, Exit> {
        let result = match self.error.take() {
            Some(e) => Err(e),
            None => self.out.write_all(b"\n]\n").and_then(|()| self.out.flush()),
        };
        result
            .map(|()| self.written)
            .map_err(|e| Exit::config(format!("--save-cases {}: {e}", path.display())))
    }
}

pub(super) async fn run(cli: &Cli, args: &OnceArgs) -> anyhow::Result<u8> {
    let result = pass(cli, args).await;
    // With --detailed-exitcode, 2 means "changes pending": every error is 1.
    match result {
        Err(e) if args.detailed_exitcode => Err(Exit::failed(&e).into()),
        other => other,
    }
}

async fn pass(cli: &Cli, args: &OnceArgs) -> anyhow::Result<u8> {
    let valid_for = crate::time::parse_duration(&args.expires)
        .map_err(|e| Exit::config(format!("--expires: {e}")))?;
    if valid_for < chrono::Duration::minutes(1) {
        return Err(Exit::config("--expires: a plan must stay valid at least 1m").into());
    }
    // A plan that cannot be written is found before the pass runs.
    if let Some(path) = &args.out {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Exit::config(format!("--out {}: {e}", path.display())))?;
    }
    let config = load_config(cli)?;
    let app = App::build(&config, None).await.map_err(Exit::config)?;
    let set = app.rules;
    let names: Vec<&str> = app.instances.iter().map(|i| i.instance.as_str()).collect();
    let mut chosen: Vec<PassContext> = match &args.instance {
        Some(name) => match app.instances.iter().find(|i| &i.instance == name) {
            Some(i) => vec![i.clone()],
            None => {
                return Err(Exit::config(format!(
                    "--instance {name:?}: no such server in the config (servers: {})",
                    names.join(", ")
                ))
                .into());
            }
        },
        None => app.instances.clone(),
    };
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
    if chosen.len() > 1 {
        if args.out.is_some() || args.save_cases.is_some() || args.detailed_exitcode {
            return Err(Exit::config(format!(
                "--out, --save-cases and --detailed-exitcode work on one server: add --instance NAME (servers: {})",
                names.join(", ")
            ))
            .into());
        }
        return every_server(&config, &set, chosen, args).await;
    }
    let ctx = chosen.remove(0);
    tracing::info!(
        version = %env!("CARGO_PKG_VERSION"),
        mode = %if args.dry_run || config.daemon.dry_run { "dry-run (nothing is sent)" } else { "live" },
        url = %ctx.client.base_url(),
        audit = %config.audit_location(),
        rules = set.rules.len(),
        "one pass"
    );
    // The server could not be reached or refused the key.
    ctx.client.authenticate().await.map_err(Exit::server)?;
    let (bar, progress) = super::progress::pass_bar();
    let saved = match &args.save_cases {
        Some(path) => Some(Arc::new(Mutex::new(CaseFile::create(path)?))),
        None => None,
    };
    let on_page = saved.clone().map(|file| {
        Hook(Arc::new(move |cases: &[Case]| {
            if let Ok(mut f) = file.lock() {
                f.add(cases);
            }
        }))
    });
    let claimed = crate::pass::run_claimed(
        &ctx,
        &set,
        &PassOptions {
            work: work(args),
            only: args.rules.clone(),
            trigger: "once".into(),
            progress: Some(progress),
            on_page,
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
    if let (Some(file), Some(path)) = (saved, &args.save_cases) {
        let file = Arc::try_unwrap(file)
            .ok()
            .and_then(|m| m.into_inner().ok())
            .ok_or_else(|| Exit::config("--save-cases: the pass still holds the file"))?;
        let n = file.finish(path)?;
        eprintln!("{n} listed case(s) saved to {}", path.display());
    }
    if let Some(path) = &args.out {
        let plan = PlanFile::of(
            &report.plans,
            &report.run_id,
            ctx.client.base_url(),
            &set.fingerprint,
            valid_for,
        );
        let digest = plan.write(path)?;
        // The file's hash goes into the chained log: `apply` takes only this very file.
        let reason = format!(
            "plan written to {}: {} change(s) on {} case(s), valid until {}",
            path.display(),
            plan.pending(true),
            plan.cases.len(),
            plan.expires_at
        );
        let row = crate::audit::row::plan_written(&report.run_id, &plan.plan_id, digest, reason);
        ctx.audit.append(&[row]).await?;
        eprintln!(
            "plan {} written to {}: {} change(s) on {} case(s), {} of them halted by the guard; valid until {}. Review it, then: casewarden apply {}",
            plan.plan_id,
            path.display(),
            plan.pending(true),
            plan.cases.len(),
            plan.pending(true) - plan.pending(false),
            plan.expires_at,
            path.display()
        );
    }
    ctx.audit.close().await;
    if args.detailed_exitcode {
        // Changes the guard halted are pending too: a reviewer may apply them.
        let pending = report.plans.iter().any(|p| {
            p.decisions.iter().any(|d| {
                d.is_planned()
                    || d.skipped
                        .as_deref()
                        .is_some_and(|s| s.contains(super::plan_file::HALTED))
            })
        });
        let trouble = report.error.is_some()
            || report.failed > 0
            || report.rules.iter().any(|r| r.errors > 0);
        return Ok(match (trouble, pending) {
            (true, _) => 1,
            (false, true) => 2,
            (false, false) => 0,
        });
    }
    Ok(if report.has_failures() { 1 } else { 0 })
}

/// What `once` asks of a pass.
fn work(args: &OnceArgs) -> Work {
    match args.dry_run {
        true => Work::DryRun,
        false => Work::Live,
    }
}

/// A pass on each server in turn; one that cannot be reached or fails does not stop the
/// others. Exit 1 when any pass had trouble.
async fn every_server(
    config: &Settings,
    set: &RuleSet,
    servers: Vec<PassContext>,
    args: &OnceArgs,
) -> anyhow::Result<u8> {
    let mut trouble = false;
    let mut out = std::io::stdout().lock();
    for ctx in &servers {
        writeln!(out, "instance {} ({})", ctx.instance, ctx.client.base_url())?;
        tracing::info!(
            version = %env!("CARGO_PKG_VERSION"),
            instance = %ctx.instance,
            url = %ctx.client.base_url(),
            audit = %config.audit_location(),
            rules = set.rules.len(),
            "one pass"
        );
        if let Err(e) = ctx.client.authenticate().await {
            writeln!(out, "  ! not run: {e}\n")?;
            trouble = true;
            continue;
        }
        let claimed = crate::pass::run_claimed(
            ctx,
            set,
            &PassOptions {
                work: work(args),
                only: args.rules.clone(),
                trigger: format!("once ({})", ctx.instance),
                ..PassOptions::default()
            },
            Duration::from_secs(args.wait),
        )
        .await;
        match claimed {
            Ok(report) => {
                print_report(&mut out, &report)?;
                trouble |= report.has_failures();
            }
            Err(ClaimError::Held(held)) => return Err(Exit::held(held).into()),
            Err(ClaimError::Audit(e)) => return Err(e.into()),
        }
        writeln!(out)?;
    }
    servers[0].audit.close().await;
    Ok(u8::from(trouble))
}
