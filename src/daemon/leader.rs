//! Replicas sharing a PostgreSQL log elect one leader: the daemon holding the log's lease
//! runs the passes, the others wait and try to take the lease every
//! `audit.lease_retry_secs`. A new leader settles what the old one left open before its
//! first pass; a leader whose lease ran out (paused, cut off from the database) or was
//! taken over steps down and sends nothing more. A daemon on a SQLite file is alone and
//! always runs its passes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;

use super::Shared;
use crate::audit::{Claim, ClaimError, Fence};
use crate::pass;

/// What this daemon is among the processes sharing its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// On a SQLite file: no replicas.
    Single,
    Leader,
    Follower,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Single => "single",
            Role::Leader => "leader",
            Role::Follower => "follower",
        })
    }
}

/// The lease this daemon holds while it leads.
pub(super) struct Leadership {
    elected: bool,
    claim: tokio::sync::Mutex<Option<Claim>>,
    fence: std::sync::Mutex<Option<Fence>>,
    /// Set once the open changes of the previous leader are settled.
    settled: AtomicBool,
}

impl Leadership {
    /// `elected`: the log is shared (PostgreSQL), so a leader is elected.
    pub(super) fn new(elected: bool) -> Leadership {
        Leadership {
            elected,
            claim: tokio::sync::Mutex::new(None),
            fence: std::sync::Mutex::new(None),
            settled: AtomicBool::new(false),
        }
    }

    fn fence(&self) -> Option<Fence> {
        self.fence.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(super) fn role(&self) -> Role {
        if !self.elected {
            return Role::Single;
        }
        match self.fence() {
            Some(f) if !f.is_lost() && self.settled.load(Ordering::SeqCst) => Role::Leader,
            _ => Role::Follower,
        }
    }

    /// The epoch this daemon leads with, if it leads.
    pub(super) fn epoch(&self) -> Option<i64> {
        self.fence().filter(|f| !f.is_lost()).map(|f| f.epoch)
    }

    /// Whether passes may run here.
    pub(super) fn may_run(&self) -> bool {
        self.role() != Role::Follower
    }

    /// Gives the lease back (at shutdown): a follower takes over without waiting for it
    /// to run out.
    pub(super) async fn resign(&self) {
        let fence = self.fence.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(claim) = self.claim.lock().await.take() {
            claim.release().await;
            if let Some(f) = fence.filter(|f| !f.is_lost()) {
                tracing::info!(
                    epoch = f.epoch,
                    "gave the audit log's lease back: a follower takes over"
                );
            }
        }
    }
}

/// Keeps trying to lead, and steps down when the lease is lost; runs until aborted.
pub(super) async fn keep(shared: Arc<Shared>) {
    let retry = Duration::from_secs(shared.config.audit.lease_retry_secs);
    let me = &shared.leader;
    // The leader this follower last told about, so it says so once per leader.
    let mut last_seen: Option<(String, i64)> = None;
    loop {
        match me.fence().map(|f| f.is_lost()) {
            Some(false) => {}
            Some(true) => {
                tracing::error!(
                    epoch = me.fence().map(|f| f.epoch),
                    "lost the audit log's lease (it ran out or another replica took it): now a follower; nothing more is sent from here"
                );
                me.settled.store(false, Ordering::SeqCst);
                me.resign().await;
                // What its passes ended with is the new leader's to report now.
                shared.state().last.clear();
                report(&shared);
            }
            None => match shared.ctx.audit.claim(Duration::ZERO).await {
                Ok(claim) => lead(&shared, claim).await,
                Err(ClaimError::Held(held)) => {
                    let holder = held.holder.as_ref().map(|l| (l.holder.clone(), l.epoch));
                    if holder != last_seen {
                        tracing::info!(
                            leader = %held.holder.as_ref().map(ToString::to_string).unwrap_or_else(|| "unknown".into()),
                            epoch = holder.as_ref().map(|h| h.1),
                            "a follower: another replica leads; this one takes over if its lease runs out"
                        );
                        last_seen = holder;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take the audit log's lease; trying again")
                }
            },
        }
        tokio::time::sleep(retry).await;
    }
}

/// Takes the lead: settles what the previous leader left open on every server, then lets
/// passes run, the first of each server with a full listing.
async fn lead(shared: &Shared, claim: Claim) {
    let me = &shared.leader;
    let fence = claim.fence().clone();
    tracing::info!(
        epoch = fence.epoch,
        previous = %claim.previous.as_ref().map(ToString::to_string).unwrap_or_else(|| "none".into()),
        "took the audit log's lease: this replica leads"
    );
    *me.fence.lock().unwrap_or_else(|p| p.into_inner()) = Some(fence);
    let previous = claim.previous.clone();
    *me.claim.lock().await = Some(claim);
    for ctx in &shared.instances {
        // The last leader's changes carry casewarden's own user, which deltas leave out:
        // only a full listing shows this replica what it did.
        ctx.mirror.resync_next().await;
        if let Err(e) = pass::reconcile(ctx, previous.as_ref()).await {
            tracing::error!(instance = %ctx.instance, error = %e, "cannot settle the changes of the previous leader; they stay open and are not re-sent");
        }
    }
    me.settled.store(true, Ordering::SeqCst);
    report(shared);
}

/// The role in the metrics.
fn report(shared: &Shared) {
    let me = &shared.leader;
    shared
        .metrics
        .leader
        .set(i64::from(me.role() != Role::Follower));
    shared.metrics.lease_epoch.set(me.epoch().unwrap_or(0));
}
