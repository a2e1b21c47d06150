//! `casewarden run`: passes on their cron schedules until SIGTERM/SIGINT, rules reloaded
//! on SIGHUP or when their files change, rules that fail everywhere disabled, and the
//! state told to systemd and Prometheus. Each concern has its room: `schedule`, `watch`,
//! `breaker` (pure), `after` (what follows each pass), `http`, `systemd`; this file starts
//! them and runs the loop.

mod after;
mod breaker;
mod http;
mod leader;
mod notices;
mod schedule;
mod systemd;
mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch as signal_count;
use tokio::task::JoinSet;

use crate::app::App;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::notify::{Delivery, Notifier};
use crate::pass::{self, PassContext, PassOptions, PassStatus};
use crate::rules::RuleSet;
use crate::stellar::ApiError;
use breaker::Breaker;
use schedule::Schedule;
use watch::{WATCH_INTERVAL, Watch};

/// How long the stop notice and what else is queued may take to go out at exit.
const NOTIFY_AT_EXIT: Duration = Duration::from_secs(5);

/// What the loop, the pass tasks and the HTTP endpoints share.
struct Shared {
    config: Settings,
    /// The first server's: the log, `/healthz` and the live view use it.
    ctx: PassContext,
    /// Every server's, in config order; each tick runs a pass on each.
    instances: Vec<PassContext>,
    metrics: Arc<Metrics>,
    notifier: Notifier,
    state: Mutex<State>,
    cancel: Arc<AtomicBool>,
    /// Among replicas sharing a PostgreSQL log, whether this one leads.
    leader: leader::Leadership,
}

/// The daemon's changing state, behind one lock (never held across an await).
struct State {
    rules: RuleSet,
    breaker: Breaker,
    /// Schedules with a pass in flight.
    running: BTreeSet<String>,
    /// Schedule -> status of its last pass.
    last: BTreeMap<String, PassStatus>,
    /// Why the last reload kept the previous rules, until one succeeds.
    reload_error: Option<String>,
    /// When the last pass that got through its work ended.
    last_good: Option<std::time::SystemTime>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Starts the daemon and runs until SIGTERM/SIGINT (a second one stops at once); returns
/// the exit code.
pub async fn run(config: Settings) -> anyhow::Result<u8> {
    // Handlers first: a signal during start-up (reconciliation can take a while) must not
    // kill the process with the default action.
    let stops = count_stop_signals()?;
    run_until(config, nth_stop(stops.clone(), 1), nth_stop(stops, 2)).await
}

/// Counts SIGTERM and SIGINT as they arrive.
fn count_stop_signals() -> std::io::Result<signal_count::Receiver<u32>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, rx) = signal_count::channel(0);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tx.send_modify(|n| *n += 1);
        }
    });
    Ok(rx)
}

async fn nth_stop(mut count: signal_count::Receiver<u32>, n: u32) {
    let _ = count.wait_for(|c| *c >= n).await;
}

/// The daemon until `shutdown` completes: then running passes get the shutdown timeout to
/// finish their in-flight requests, or until `force` completes (exit 130).
pub async fn run_until(
    config: Settings,
    shutdown: impl Future<Output = ()>,
    force: impl Future<Output = ()>,
) -> anyhow::Result<u8> {
    let mut hup = signal(SignalKind::hangup())?;
    let (shared, delivery) = start(config).await?;
    let mut digests = notices::digests(&shared);
    let groups = schedule::groups(&shared.state().rules, &shared.config.daemon.schedule);
    let (mut schedule, mut ticks) = Schedule::start(&groups).await?;
    let mut watch = Watch::new(&shared.config.daemon.rules_dir);
    let mut watch_tick = tokio::time::interval(WATCH_INTERVAL);
    let watchdog = systemd::watchdog_interval();
    let mut pet = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    let mut passes: JoinSet<()> = JoinSet::new();
    let leading = shared
        .ctx
        .audit
        .is_shared()
        .then(|| tokio::spawn(leader::keep(shared.clone())));
    if leading.is_none() {
        shared.metrics.leader.set(1);
    }
    systemd::ready(if leading.is_some() {
        "a replica: leads when it holds the audit log's lease"
    } else {
        "waiting for the first tick"
    });
    let c = &shared.config;
    tracing::info!(
        version = %env!("CARGO_PKG_VERSION"),
        mode = %if c.daemon.dry_run { "dry-run (nothing is sent)" } else { "live" },
        url = %c.stellar.url,
        api_flavor = ?c.stellar.api_flavor,
        detected_flavor = ?shared.ctx.client.known_flavor(),
        audit = %c.audit.location(),
        rules = shared.state().rules.rules.len(),
        "casewarden started"
    );
    announce(&shared).await;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            Some(first) = ticks.recv() => {
                let due = schedule::gather(first, &mut ticks).await;
                start_pass(&shared, due, &mut passes);
            }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading rules");
                watch::reload(&shared, &mut schedule).await;
                watch.reset();
            }
            _ = watch_tick.tick() => if watch.settled_change() {
                tracing::info!("rules folder changed: reloading rules");
                watch::reload(&shared, &mut schedule).await;
            },
            _ = pet.tick(), if watchdog.is_some() => systemd::pet_watchdog(),
            Some(_) = passes.join_next(), if !passes.is_empty() => {}
            _ = &mut shutdown => break,
        }
    }
    systemd::stopping();
    shared.cancel.store(true, Ordering::SeqCst);
    schedule.shutdown().await;
    if let Some(task) = leading {
        task.abort();
    }
    let code = drain(&shared, passes, force).await;
    digests.abort_all();
    shared.notifier.send(notices::stopped(code));
    let done = delivery.finish(NOTIFY_AT_EXIT).await;
    if shared.notifier.is_on() {
        tracing::info!("notifications at exit: {done}");
    }
    Ok(code)
}

/// Tells the notify targets the daemon started; its rules loaded, so a reload that failed
/// before a restart is over.
async fn announce(shared: &Shared) {
    shared.notifier.send(notices::started(shared));
    let reload = [crate::notify::events::reload_key()];
    shared
        .notifier
        .settle(&shared.ctx.audit, Vec::new(), &reload, None)
        .await;
}

/// Everything before the loop: the app, the key checked, earlier changes settled, the
/// HTTP endpoints listening.
async fn start(config: Settings) -> anyhow::Result<(Arc<Shared>, Delivery)> {
    let metrics = Metrics::new();
    let targets = config.notify_targets()?;
    let App {
        rules,
        ctx,
        instances,
    } = App::build(&config, Some(metrics.clone()))
        .await
        .map_err(|e| anyhow::Error::new(e).context("not starting"))?;
    for i in &instances {
        i.mirror.in_memory_only().await;
        match i.client.authenticate().await {
            Err(e @ ApiError::KeyRejected { .. }) if instances.len() == 1 => return Err(e.into()),
            Err(e) => {
                tracing::warn!(instance = %i.instance, error = %e, "the Cases API is not reachable yet; passes will retry on schedule")
            }
            Ok(()) => {}
        }
        // Replicas settle what the previous leader left when they take the lead.
        if !i.audit.is_shared() {
            settle_at_start(i).await;
        }
    }
    let (notifier, delivery) = Notifier::start(targets, metrics.clone());
    // Replicas sharing a PostgreSQL log elect a leader.
    let elected = ctx.audit.is_shared();
    let shared = Arc::new(Shared {
        ctx,
        instances,
        metrics,
        notifier,
        state: Mutex::new(State {
            rules,
            breaker: Breaker::new(config.daemon.breaker_passes),
            running: BTreeSet::new(),
            last: BTreeMap::new(),
            reload_error: None,
            last_good: None,
        }),
        cancel: Arc::new(AtomicBool::new(false)),
        leader: leader::Leadership::new(elected),
        config,
    });
    if let Some(listen) = shared.config.daemon.listen {
        let token = shared.config.daemon.ui_token()?;
        http::serve(shared.clone(), listen, token).await?;
    }
    Ok((shared, delivery))
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

/// Lets running passes finish their in-flight requests (up to the shutdown timeout;
/// `force` exits at once) and closes the audit store; returns the exit code.
async fn drain(shared: &Shared, mut passes: JoinSet<()>, force: impl Future<Output = ()>) -> u8 {
    let timeout = Duration::from_secs(shared.config.daemon.shutdown_timeout_secs);
    tracing::info!(
        running = passes.len(),
        timeout_secs = timeout.as_secs(),
        "stopping: letting in-flight requests finish"
    );
    let drained = async { while passes.join_next().await.is_some() {} };
    tokio::select! {
        _ = tokio::time::timeout(timeout, drained) => {}
        _ = force => {
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
    // A follower's log holds the leader's running passes: not interrupted.
    if shared.leader.may_run() {
        let _ = shared.ctx.audit.mark_interrupted_passes().await;
    }
    shared.leader.resign().await;
    shared.ctx.audit.close().await;
    tracing::info!("stopped");
    0
}

/// Runs one pass for the rules of the due schedules that are not still running.
fn start_pass(shared: &Arc<Shared>, due: BTreeSet<String>, passes: &mut JoinSet<()>) {
    if !shared.leader.may_run() {
        tracing::debug!("a follower: the leader runs the passes");
        return;
    }
    let (set, names, schedules) = {
        let mut state = shared.state();
        let set = state.rules.clone();
        let groups = schedule::groups(&set, &shared.config.daemon.schedule);
        let mut names = Vec::new();
        let mut taken = Vec::new();
        for schedule in due {
            if state.running.contains(&schedule) {
                shared.metrics.ticks_skipped.inc();
                tracing::warn!(%schedule, "tick skipped: the previous pass of this schedule is still running");
                continue;
            }
            let Some(group) = groups.get(&schedule) else {
                continue;
            };
            names.extend(
                group
                    .rules
                    .iter()
                    .filter(|r| !state.breaker.is_disabled(r))
                    .cloned(),
            );
            state.running.insert(schedule.clone());
            taken.push(schedule);
        }
        (set, names, taken)
    };
    if schedules.is_empty() {
        return;
    }

    let shared = shared.clone();
    passes.spawn(async move {
        // One pass per server, one after the other; a server that fails does not stop
        // the others.
        let mut worst: Option<PassStatus> = None;
        for ctx in shared.instances.iter().filter(|_| !names.is_empty()) {
            let started = Instant::now();
            let options = PassOptions {
                only: names.clone(),
                trigger: format!("schedule {}", schedules.join(" + ")),
                cancel: Some(shared.cancel.clone()),
                ..PassOptions::default()
            };
            match pass::run_claimed(ctx, &set, &options, Duration::ZERO).await {
                Ok(report) => {
                    after::pass(&shared, ctx, &set, &report, started.elapsed()).await;
                    if worst.is_none_or(|w| w == PassStatus::Ok || report.status.is_broken()) {
                        worst = Some(report.status);
                    }
                }
                Err(e) => {
                    shared.metrics.ticks_skipped.inc();
                    tracing::warn!(instance = %ctx.instance, error = %e, "tick skipped");
                }
            }
        }
        let mut state = shared.state();
        for s in schedules {
            state.running.remove(&s);
            if let Some(status) = worst {
                state.last.insert(s, status);
            }
        }
    });
}
