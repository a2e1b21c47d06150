//! `casewarden once`: one pass now, under the audit store's claim, and its summary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;

use super::alerts::Alerts;
use super::exit::unclaimed;
use super::{Cli, Exit, load_config};
use crate::app::App;
use crate::config::Settings;
use crate::pass::{Hook, PageHook, PassContext, PassOptions, PassReport, Work};
use crate::plan::reviewed::{Made, Names, PlanFile, any_pending};
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

/// `--save-cases`: the file the pass's listed pages go to, when asked for.
struct SavedCases(Option<(Arc<Mutex<CaseFile>>, PathBuf)>);

impl SavedCases {
    fn open(path: Option<&Path>) -> Result<SavedCases, Exit> {
        let Some(path) = path else {
            return Ok(SavedCases(None));
        };
        let file = Arc::new(Mutex::new(CaseFile::create(path)?));
        Ok(SavedCases(Some((file, path.to_path_buf()))))
    }

    /// The pass's page hook that writes each page's cases.
    fn hook(&self) -> Option<PageHook> {
        let (file, _) = self.0.as_ref()?;
        let file = file.clone();
        Some(Hook(Arc::new(move |cases: &[Case]| {
            if let Ok(mut f) = file.lock() {
                f.add(cases);
            }
        })))
    }

    /// Closes the list once the pass (and its hook) is done, and says how many were saved.
    fn finish(self) -> Result<(), Exit> {
        let Some((file, path)) = self.0 else {
            return Ok(());
        };
        let file = Arc::try_unwrap(file)
            .ok()
            .and_then(|m| m.into_inner().ok())
            .ok_or_else(|| Exit::config("--save-cases: the pass still holds the file"))?;
        let n = file.finish(&path)?;
        eprintln!("{n} listed case(s) saved to {}", path.display());
        Ok(())
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
    let valid_for = plan_validity(args)?;
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
    check_rules(&set, &args.rules)?;
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
    one_server(&config, &set, &chosen.remove(0), args, valid_for).await
}

/// How long a written plan stays valid (`--expires`); a plan that cannot be written is
/// found before the pass runs.
fn plan_validity(args: &OnceArgs) -> Result<chrono::Duration, Exit> {
    let valid_for = crate::time::parse_duration(&args.expires)
        .map_err(|e| Exit::config(format!("--expires: {e}")))?;
    if valid_for < chrono::Duration::minutes(1) {
        return Err(Exit::config(
            "--expires: a plan must stay valid at least 1m",
        ));
    }
    if let Some(path) = &args.out {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Exit::config(format!("--out {}: {e}", path.display())))?;
    }
    Ok(valid_for)
}

/// Every `--rule` names a loaded rule.
fn check_rules(set: &RuleSet, names: &[String]) -> Result<(), Exit> {
    for name in names {
        if !set.rules.iter().any(|r| &r.name == name) {
            let known: Vec<&str> = set.rules.iter().map(|r| r.name.as_str()).collect();
            return Err(Exit::config(format!(
                "--rule {name:?}: no such rule (known: {})",
                known.join(", ")
            )));
        }
    }
    Ok(())
}

/// The pass on one server, with its progress bar, saved cases and written plan.
async fn one_server(
    config: &Settings,
    set: &RuleSet,
    ctx: &PassContext,
    args: &OnceArgs,
    valid_for: chrono::Duration,
) -> anyhow::Result<u8> {
    tracing::info!(
        version = %env!("CARGO_PKG_VERSION"),
        mode = %if args.dry_run || config.daemon.dry_run { "dry-run (nothing is sent)" } else { "live" },
        url = %ctx.client.base_url(),
        audit = %config.audit.location(),
        rules = set.rules.len(),
        "one pass"
    );
    let alerts = Alerts::start(config)?;
    let (bar, progress) = super::progress::pass_bar();
    let saved = SavedCases::open(args.save_cases.as_deref())?;
    let opts = PassOptions {
        work: work(args),
        only: args.rules.clone(),
        trigger: "once".into(),
        progress: Some(progress),
        on_page: saved.hook(),
        ..PassOptions::default()
    };
    // The server could not be reached or refused the key: recorded, told, exit 3.
    if let Err(e) = ctx.client.authenticate().await {
        bar.finish_and_clear();
        let wait = Duration::from_secs(args.wait);
        let report = crate::pass::record_unreachable(ctx, set, &opts, e, wait).await;
        alerts.after(ctx, &report, true).await;
        alerts.finish(&ctx.audit).await;
        ctx.audit.close().await;
        return Err(Exit::server(report.error.unwrap_or_default()).into());
    }
    let claimed = crate::pass::run_claimed(ctx, set, &opts, Duration::from_secs(args.wait)).await;
    bar.finish_and_clear();
    // The page hook holds the case file until the options go.
    drop(opts);
    let mut report = claimed.map_err(unclaimed)?;
    crate::report::name_people(&ctx.client, &mut report).await;
    // What the pass found goes out whatever happens to its summary and files below.
    alerts.after(ctx, &report, true).await;
    let written = async {
        // The plan first: a reader of the summary that stops early (`| head`) cannot lose it.
        if let Some(path) = &args.out {
            write_plan(ctx, set, &report, path, valid_for).await?;
        }
        print_report(&mut std::io::stdout().lock(), &report)?;
        saved.finish()?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    alerts.finish(&ctx.audit).await;
    ctx.audit.close().await;
    written?;
    if args.detailed_exitcode {
        return Ok(detailed_code(&report));
    }
    Ok(if report.has_failures() { 1 } else { 0 })
}

/// `--detailed-exitcode`: 1 on trouble, else 2 when changes are pending, else 0.
fn detailed_code(report: &PassReport) -> u8 {
    // Changes the guard halted are pending too: a reviewer may apply them.
    let pending = any_pending(&report.plans);
    let trouble =
        report.error.is_some() || report.failed > 0 || report.rules.iter().any(|r| r.errors > 0);
    match (trouble, pending) {
        (true, _) => 1,
        (false, true) => 2,
        (false, false) => 0,
    }
}

/// Writes the plan for review and records its hash in the chained log: `apply` takes
/// only this very file.
async fn write_plan(
    ctx: &PassContext,
    set: &RuleSet,
    report: &PassReport,
    path: &Path,
    valid_for: chrono::Duration,
) -> anyhow::Result<()> {
    let made = Made {
        plan_id: uuid::Uuid::new_v4().to_string(),
        pass_id: &report.run_id,
        server_url: ctx.client.base_url(),
        fingerprint: &set.fingerprint,
        now: chrono::Utc::now(),
        valid_for,
    };
    let names = Names {
        people: report.people.clone(),
        customers: ctx.audit.customer_names().await?,
    };
    let plan = PlanFile::of(&report.plans, made, &names);
    let (text, digest) = plan.to_text().map_err(Exit::config)?;
    std::fs::write(path, &text)
        .map_err(|e| Exit::config(format!("--out {}: {e}", path.display())))?;
    let changes = plan.pending(true);
    let halted = changes - plan.pending(false);
    let reason = format!(
        "plan written to {}: {changes} change(s) on {} case(s), valid until {}",
        path.display(),
        plan.cases.len(),
        plan.expires_at
    );
    let row = crate::audit::row::plan_written(&report.run_id, &plan.plan_id, digest, reason);
    ctx.audit.append(&[row]).await?;
    eprintln!(
        "plan {} written to {}: {changes} change(s) on {} case(s), {halted} of them halted by the guard; valid until {}. Review it, then: casewarden apply {}",
        plan.plan_id,
        path.display(),
        plan.cases.len(),
        plan.expires_at,
        path.display()
    );
    Ok(())
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
    let alerts = Alerts::start(config)?;
    let mut trouble = false;
    for ctx in &servers {
        let mut out = std::io::stdout().lock();
        writeln!(out, "instance {} ({})", ctx.instance, ctx.client.base_url())?;
        tracing::info!(
            version = %env!("CARGO_PKG_VERSION"),
            instance = %ctx.instance,
            url = %ctx.client.base_url(),
            audit = %config.audit.location(),
            rules = set.rules.len(),
            "one pass"
        );
        let opts = PassOptions {
            work: work(args),
            only: args.rules.clone(),
            trigger: format!("once ({})", ctx.instance),
            ..PassOptions::default()
        };
        if let Err(e) = ctx.client.authenticate().await {
            writeln!(out, "  ! not run: {e} (recorded as a failed pass)\n")?;
            drop(out);
            let wait = Duration::from_secs(args.wait);
            let report = crate::pass::record_unreachable(ctx, set, &opts, e, wait).await;
            alerts.after(ctx, &report, true).await;
            trouble = true;
            continue;
        }
        let claimed =
            crate::pass::run_claimed(ctx, set, &opts, Duration::from_secs(args.wait)).await;
        let mut report = claimed.map_err(unclaimed)?;
        crate::report::name_people(&ctx.client, &mut report).await;
        let mut out = std::io::stdout().lock();
        print_report(&mut out, &report)?;
        writeln!(out)?;
        drop(out);
        trouble |= report.has_failures();
        alerts.after(ctx, &report, true).await;
    }
    alerts.finish(&servers[0].audit).await;
    servers[0].audit.close().await;
    Ok(u8::from(trouble))
}
