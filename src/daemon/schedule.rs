//! When passes run: one tokio-cron-scheduler job per distinct schedule, each sending its
//! schedule's name as a tick; ticks arriving together share one pass.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_cron_scheduler::{Job, JobScheduler};

use crate::cron::CronSchedule;
use crate::rules::RuleSet;

/// Ticks arriving this close together share one fetch.
const TICK_GATHER: Duration = Duration::from_millis(200);

/// Schedule (as written) -> it and the enabled rules that run on it (their own schedule
/// or the daemon's).
pub type Groups = BTreeMap<String, Group>;

/// The rules of one schedule.
pub struct Group {
    pub cron: CronSchedule,
    pub rules: Vec<String>,
}

pub fn groups(set: &RuleSet, default: &CronSchedule) -> Groups {
    let mut out = Groups::new();
    for r in set.enabled() {
        let cron = r.schedule.as_ref().unwrap_or(default);
        out.entry(cron.to_string())
            .or_insert_with(|| Group {
                cron: cron.clone(),
                rules: Vec::new(),
            })
            .rules
            .push(r.name.clone());
    }
    out
}

/// The running cron jobs, replaced as a whole when the rules change.
pub struct Schedule {
    scheduler: JobScheduler,
    jobs: Vec<uuid::Uuid>,
    tx: mpsc::Sender<String>,
}

impl Schedule {
    /// Starts a job per schedule of `groups`; ticks arrive on the receiver.
    pub async fn start(groups: &Groups) -> anyhow::Result<(Schedule, mpsc::Receiver<String>)> {
        let (tx, rx) = mpsc::channel(64);
        let mut schedule = Schedule {
            scheduler: JobScheduler::new().await?,
            jobs: Vec::new(),
            tx,
        };
        schedule.add(groups).await?;
        schedule.scheduler.start().await?;
        Ok((schedule, rx))
    }

    /// Replaces every job by one per schedule of `groups`.
    pub async fn replace(&mut self, groups: &Groups) -> anyhow::Result<()> {
        for id in self.jobs.drain(..) {
            let _ = self.scheduler.remove(&id).await;
        }
        self.add(groups).await
    }

    pub async fn shutdown(mut self) {
        let _ = self.scheduler.shutdown().await;
    }

    async fn add(&mut self, groups: &Groups) -> anyhow::Result<()> {
        for schedule in groups.keys() {
            let tx = self.tx.clone();
            let name = schedule.clone();
            let job = Job::new_async(schedule.as_str(), move |_, _| {
                let tx = tx.clone();
                let name = name.clone();
                Box::pin(async move {
                    let _ = tx.send(name).await;
                })
            })?;
            self.jobs.push(self.scheduler.add(job).await?);
        }
        log_next_runs(groups);
        Ok(())
    }
}

fn log_next_runs(groups: &Groups) {
    for (schedule, group) in groups {
        let next = group.cron.next_run().unwrap_or_default();
        let rules = group.rules.join(", ");
        tracing::info!(%schedule, next_run = %next, %rules, "schedule");
    }
}

/// `first` and the ticks that follow it within the gathering window.
pub async fn gather(first: String, ticks: &mut mpsc::Receiver<String>) -> BTreeSet<String> {
    let mut due = BTreeSet::from([first]);
    let window = tokio::time::sleep(TICK_GATHER);
    tokio::pin!(window);
    loop {
        tokio::select! {
            Some(more) = ticks.recv() => { due.insert(more); }
            _ = &mut window => return due,
        }
    }
}
