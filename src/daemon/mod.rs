//! `casewarden run`: schedules passes with cron, reloads rules on SIGHUP or when their
//! files change, disables rules that fail everywhere, stops cleanly on SIGTERM, and talks
//! to systemd (READY, STATUS, WATCHDOG) and Prometheus.

mod breaker;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sd_notify::NotifyState;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_cron_scheduler::{Job, JobScheduler};

use crate::app::App;
use crate::audit::{NewEvent, Outcome};
use crate::config::Config;
use crate::metrics::{ChangeLabels, Metrics, StatusLabel};
use crate::pass::{self, PassContext, PassOptions, PassReport, PassStatus};
use crate::rules::RuleSet;
use crate::stellar::ApiError;
use breaker::Breaker;

/// How often the rules folder is checked for changes; a change is acted on once it has
/// been stable for one interval, so an editor's save-in-steps causes one reload.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);
/// Ticks arriving this close together share one fetch.
const TICK_GATHER: Duration = Duration::from_millis(200);

/// State shared by the coordinator, the pass tasks and the HTTP endpoints.
struct Shared {
    config: Config,
    ctx: PassContext,
    metrics: Arc<Metrics>,
    rules: Mutex<RuleSet>,
    breaker: Mutex<Breaker>,
    /// Schedules with a pass in flight.
    running: Mutex<BTreeSet<String>>,
    /// Schedule -> status of its last pass.
    last: Mutex<BTreeMap<String, PassStatus>>,
    cancel: Arc<AtomicBool>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// The schedule of each rule (its own or the daemon's), grouped.
fn schedules(set: &RuleSet, default: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in set.rules.iter().filter(|r| r.enabled) {
        let s = r.schedule.clone().unwrap_or_else(|| default.to_string());
        out.entry(s).or_default().push(r.name.clone());
    }
    out
}

fn log_next_runs(groups: &BTreeMap<String, Vec<String>>) {
    for (schedule, rules) in groups {
        let next = crate::cron::next_run(schedule).unwrap_or_default();
        tracing::info!(%schedule, next_run = %next, rules = %rules.join(", "), "schedule");
    }
}

/// A cheap fingerprint of the rules folder: names, sizes and modification times.
fn dir_state(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "rhai"))
        .map(|e| {
            let meta = e.metadata().ok();
            (
                e.path(),
                meta.as_ref().map_or(0, |m| m.len()),
                meta.and_then(|m| m.modified().ok()),
            )
        })
        .collect();
    out.sort();
    out
}

/// Starts the daemon and runs until SIGTERM/SIGINT; returns the exit code.
pub async fn run(config: Config) -> anyhow::Result<u8> {
    // Handlers first: a signal during start-up (reconciliation can take a while) must not
    // kill the process with the default action.
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let metrics = Metrics::new();
    let App { rules: set, ctx } = App::build(&config, Some(metrics.clone()))
        .await
        .map_err(|e| anyhow::Error::new(e).context("not starting"))?;
    match ctx.client.authenticate().await {
        Err(e @ ApiError::KeyRejected { .. }) => return Err(e.into()),
        Err(e) => {
            tracing::warn!(error = %e, "the Cases API is not reachable yet; passes will retry on schedule")
        }
        Ok(()) => {}
    }
    settle_at_start(&ctx).await;
    let shared = Arc::new(Shared {
        ctx,
        metrics,
        rules: Mutex::new(set),
        breaker: Mutex::new(Breaker::new(config.daemon.breaker_passes)),
        running: Mutex::new(BTreeSet::new()),
        last: Mutex::new(BTreeMap::new()),
        cancel: Arc::new(AtomicBool::new(false)),
        config,
    });
    if let Some(listen) = shared.config.daemon.listen.clone() {
        serve_http(shared.clone(), &listen).await?;
    }

    let (tick_tx, mut tick_rx) = mpsc::channel::<String>(64);
    let mut scheduler = JobScheduler::new().await?;
    let mut jobs = Vec::new();
    let groups = schedules(&lock(&shared.rules), &shared.config.daemon.schedule);
    add_jobs(&scheduler, &groups, &tick_tx, &mut jobs).await?;
    log_next_runs(&groups);
    scheduler.start().await?;

    let mut watch = tokio::time::interval(WATCH_INTERVAL);
    let watchdog = sd_notify::watchdog_enabled();
    let mut pet = tokio::time::interval(watchdog.map_or(Duration::from_secs(3600), |d| d / 2));
    let mut seen_dir = dir_state(&shared.config.daemon.rules_dir);
    let mut pending_dir: Option<Vec<_>> = None;
    let mut passes: JoinSet<()> = JoinSet::new();

    notify(&[
        NotifyState::Ready,
        NotifyState::Status("waiting for the first tick"),
    ]);
    tracing::info!(
        rules = lock(&shared.rules).rules.len(),
        "casewarden started"
    );
    loop {
        tokio::select! {
            Some(schedule) = tick_rx.recv() => {
                let mut due = BTreeSet::from([schedule]);
                let gather = tokio::time::sleep(TICK_GATHER);
                tokio::pin!(gather);
                loop {
                    tokio::select! {
                        Some(more) = tick_rx.recv() => { due.insert(more); }
                        _ = &mut gather => break,
                    }
                }
                start_pass(&shared, due, &mut passes);
            }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading rules");
                reload(&shared, &scheduler, &tick_tx, &mut jobs).await;
                seen_dir = dir_state(&shared.config.daemon.rules_dir);
            }
            _ = watch.tick() => {
                let now = dir_state(&shared.config.daemon.rules_dir);
                if now == seen_dir {
                    pending_dir = None;
                } else if pending_dir.as_ref() == Some(&now) {
                    tracing::info!("rules folder changed: reloading rules");
                    reload(&shared, &scheduler, &tick_tx, &mut jobs).await;
                    seen_dir = now;
                    pending_dir = None;
                } else {
                    pending_dir = Some(now);
                }
            }
            _ = pet.tick(), if watchdog.is_some() => notify(&[NotifyState::Watchdog]),
            Some(_) = passes.join_next(), if !passes.is_empty() => {}
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }

    notify(&[NotifyState::Stopping]);
    shared.cancel.store(true, Ordering::SeqCst);
    let _ = scheduler.shutdown().await;
    Ok(drain(&shared, passes, &mut term, &mut int).await)
}

/// Settles what an earlier process left before saying READY, when no pass of another
/// process holds the audit store (else the first pass here does it).
async fn settle_at_start(ctx: &PassContext) {
    match ctx.audit.claim(Duration::ZERO).await {
        Ok(claim) => {
            if let Err(e) = pass::reconcile(ctx, claim.previous.as_ref()).await {
                tracing::error!(error = %e, "cannot settle the changes of an earlier pass; they stay open and are not re-sent");
            }
            claim.release().await;
        }
        Err(e) => tracing::warn!(error = %e, "not settling earlier changes at start"),
    }
}

/// Lets running passes finish their in-flight requests (up to the shutdown timeout; a
/// second signal exits at once) and closes the audit store; returns the exit code.
async fn drain(
    shared: &Shared,
    mut passes: JoinSet<()>,
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
) -> u8 {
    let timeout = Duration::from_secs(shared.config.daemon.shutdown_timeout_secs);
    tracing::info!(
        running = passes.len(),
        timeout_secs = timeout.as_secs(),
        "stopping: letting in-flight requests finish"
    );
    let drained = async { while passes.join_next().await.is_some() {} };
    tokio::select! {
        _ = tokio::time::timeout(timeout, drained) => {}
        _ = term.recv() => {
            tracing::warn!("second signal: exiting now; the next start reconciles what was in flight");
            return 130;
        }
        _ = int.recv() => {
            tracing::warn!("second signal: exiting now; the next start reconciles what was in flight");
            return 130;
        }
    }
    if !passes.is_empty() {
        tracing::warn!(
            "shutdown timeout reached with a pass still running; the next start reconciles it"
        );
        passes.abort_all();
    }
    let _ = shared.ctx.audit.mark_interrupted_passes().await;
    shared.ctx.audit.close().await;
    tracing::info!("stopped");
    0
}

async fn add_jobs(
    scheduler: &JobScheduler,
    groups: &BTreeMap<String, Vec<String>>,
    tx: &mpsc::Sender<String>,
    jobs: &mut Vec<uuid::Uuid>,
) -> anyhow::Result<()> {
    for schedule in groups.keys() {
        let tx = tx.clone();
        let name = schedule.clone();
        let job = Job::new_async(schedule.as_str(), move |_, _| {
            let tx = tx.clone();
            let name = name.clone();
            Box::pin(async move {
                let _ = tx.send(name).await;
            })
        })?;
        jobs.push(scheduler.add(job).await?);
    }
    Ok(())
}

/// Runs one pass for the rules of the due schedules that are not still running.
fn start_pass(shared: &Arc<Shared>, due: BTreeSet<String>, passes: &mut JoinSet<()>) {
    let (set, names, schedules) = {
        let set = lock(&shared.rules).clone();
        let groups = schedules(&set, &shared.config.daemon.schedule);
        let breaker = lock(&shared.breaker);
        let mut running = lock(&shared.running);
        let mut names = Vec::new();
        let mut taken = Vec::new();
        for schedule in due {
            if running.contains(&schedule) {
                shared.metrics.ticks_skipped.inc();
                tracing::warn!(%schedule, "tick skipped: the previous pass of this schedule is still running");
                continue;
            }
            let Some(rules) = groups.get(&schedule) else {
                continue;
            };
            names.extend(rules.iter().filter(|r| !breaker.is_disabled(r)).cloned());
            running.insert(schedule.clone());
            taken.push(schedule);
        }
        (set, names, taken)
    };
    if schedules.is_empty() {
        return;
    }
    let shared = shared.clone();
    passes.spawn(async move {
        let started = Instant::now();
        let report = if names.is_empty() {
            None
        } else {
            let claimed = pass::run_claimed(
                &shared.ctx,
                &set,
                &PassOptions {
                    only: names,
                    trigger: format!("schedule {}", schedules.join(" + ")),
                    cancel: Some(shared.cancel.clone()),
                    ..PassOptions::default()
                },
                Duration::ZERO,
            )
            .await;
            match claimed {
                Ok(report) => Some(report),
                Err(e) => {
                    shared.metrics.ticks_skipped.inc();
                    tracing::warn!(error = %e, "tick skipped");
                    None
                }
            }
        };
        if let Some(report) = &report {
            after_pass(&shared, &set, report, started.elapsed()).await;
        }
        let mut running = lock(&shared.running);
        let mut last = lock(&shared.last);
        for s in schedules {
            running.remove(&s);
            if let Some(r) = &report {
                last.insert(s, r.status);
            }
        }
    });
}

/// Metrics, systemd status and the circuit breaker after a pass.
async fn after_pass(shared: &Shared, set: &RuleSet, report: &PassReport, took: Duration) {
    let m = &shared.metrics;
    m.passes
        .get_or_create(&StatusLabel {
            status: report.status.to_string(),
        })
        .inc();
    m.pass_duration.observe(took.as_secs_f64());
    for s in &report.rules {
        for (outcome, n) in [
            ("applied", s.applied),
            ("failed", s.failed),
            ("skipped", s.skipped),
            ("deferred", s.deferred),
        ] {
            if n > 0 {
                m.changes
                    .get_or_create(&ChangeLabels {
                        rule: s.name.clone(),
                        outcome: outcome.into(),
                    })
                    .inc_by(n as u64);
            }
        }
    }
    notify(&[NotifyState::Status(&format!(
        "last pass {}: {}, {} cases, {} applied, {} failed",
        report.run_id, report.status, report.cases_seen, report.applied, report.failed
    ))]);
    let limit = shared.config.daemon.breaker_passes;
    let newly_disabled = lock(&shared.breaker).record(&report.rules, |name| {
        set.rules
            .iter()
            .find(|r| r.name == name)
            .map(|r| r.source_hash.clone())
    });
    for name in newly_disabled {
        let Some(rule) = set.rules.iter().find(|r| r.name == name) else {
            continue;
        };
        // Recorded first, then announced: whoever reads the log line finds the row.
        let event = NewEvent {
            run_id: report.run_id.clone(),
            rule: name.clone(),
            rule_hash: rule.source_hash.clone(),
            case_id: "-".into(),
            field: "rule".into(),
            new: Some("disabled".into()),
            reason: format!(
                "circuit breaker: failed on every case it saw in {limit} consecutive passes; disabled until {} changes",
                rule.file.display()
            ),
            outcome: Some(Outcome::Skipped),
            ..NewEvent::default()
        };
        if let Err(e) = shared.ctx.audit.append(&[event]).await {
            tracing::error!(error = %e, "cannot record the disabled rule in the audit log");
        }
        tracing::error!(rule = %name, file = %rule.file.display(), passes = limit, "CIRCUIT BREAKER: rule failed on every case for {limit} passes in a row; disabled until its file changes");
    }
    m.rules_disabled
        .set(lock(&shared.breaker).disabled_count() as i64);
}

/// Reloads the rules folder atomically: all rules compile, or the old set stays.
async fn reload(
    shared: &Arc<Shared>,
    scheduler: &JobScheduler,
    tx: &mpsc::Sender<String>,
    jobs: &mut Vec<uuid::Uuid>,
) {
    notify(&[NotifyState::Reloading]);
    match RuleSet::load_dir(&shared.config.daemon.rules_dir) {
        Err(errors) => {
            for e in &errors {
                tracing::error!("rule error: {e}");
            }
            tracing::error!(
                errors = errors.len(),
                "rules NOT reloaded: the previous set keeps running"
            );
        }
        Ok(set) => {
            {
                let current: Vec<(String, String)> = set
                    .rules
                    .iter()
                    .map(|r| (r.name.clone(), r.source_hash.clone()))
                    .collect();
                let mut breaker = lock(&shared.breaker);
                for name in breaker.reloaded(&current) {
                    tracing::info!(rule = %name, "rule file changed: re-enabling the rule the circuit breaker disabled");
                }
                shared
                    .metrics
                    .rules_disabled
                    .set(breaker.disabled_count() as i64);
            }
            let groups = schedules(&set, &shared.config.daemon.schedule);
            for id in jobs.drain(..) {
                let _ = scheduler.remove(&id).await;
            }
            if let Err(e) = add_jobs(scheduler, &groups, tx, jobs).await {
                tracing::error!(error = %e, "cannot schedule the reloaded rules");
            }
            log_next_runs(&groups);
            tracing::info!(rules = set.rules.len(), fingerprint = %set.fingerprint, "rules reloaded");
            *lock(&shared.rules) = set;
        }
    }
    notify(&[NotifyState::Ready]);
}

async fn serve_http(shared: Arc<Shared>, listen: &str) -> anyhow::Result<()> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/healthz",
            get({
                let shared = shared.clone();
                move || async move {
                    let mut reasons = Vec::new();
                    if let Err(e) = shared.ctx.client.authenticate().await {
                        reasons.push(format!("token: {e}"));
                    }
                    let last = lock(&shared.last).clone();
                    for (schedule, status) in &last {
                        if status.is_broken() {
                            reasons.push(format!("last pass of {schedule:?} ended {status}"));
                        }
                    }
                    let code = if reasons.is_empty() {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    let body = serde_json::json!({
                        "status": if reasons.is_empty() { "ok" } else { "unhealthy" },
                        "reasons": reasons,
                        "last_pass": last,
                    });
                    (code, axum::Json(body))
                }
            }),
        )
        .route(
            "/metrics",
            get(move || async move {
                let text = shared.metrics.render(shared.ctx.client.token_renewals());
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    text,
                )
            }),
        );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("daemon.listen {listen}: {e}"))?;
    tracing::info!(%listen, "serving /healthz and /metrics");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the metrics server stopped");
        }
    });
    Ok(())
}
