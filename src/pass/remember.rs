//! Remembered verdicts: a case whose version, rules, inputs and clock give the rules the
//! same answers as at an earlier pass (of this process, or of one before it through the
//! mirror's file) is counted from what they made of it then, without reading or evaluating
//! it again. Only what rules that asked nothing, failed nowhere and needed no activities
//! made of a case is kept (see [`Verdict`]), so every case a rule wants something of is
//! evaluated afresh.

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::run::Run;
use crate::mirror::Verdict;
use crate::rules::{EvalEnv, SNOOZE_PREFIX};
use crate::stellar::{ApiFlavor, Case};

/// What a pass needs to reuse and keep verdicts.
pub(super) struct Recall {
    /// The rule set and the rules' inputs besides the case and the clock.
    key: u64,
    /// The place in the rule set of each due rule, in the pass's order.
    places: Vec<u32>,
    /// Those places as bits.
    due: u64,
}

/// An evaluated case the rules asked nothing of, failed nowhere on and read no activities
/// for: what a verdict remembers of it.
pub(super) struct Quiet<'a> {
    pub case: &'a Case,
    /// Until when the clock the rules read gives them the same answers.
    pub until: i64,
    pub seen_by: &'a [usize],
    pub exempt_from: &'a [usize],
}

/// A case counted from its verdict.
pub(super) struct Known {
    pub tenant: Option<Arc<str>>,
    /// Due rules (places in the pass's rules) that looked at the case, and that an
    /// exemption kept off it.
    pub seen_by: Vec<usize>,
    pub exempt_from: Vec<usize>,
}

impl Recall {
    /// None when verdicts cannot be used this pass: more rules than bits, a page hook
    /// (`--save-cases`) that must see every case, or constants made of the clock when the
    /// rules were loaded.
    pub fn new(
        run: &Run<'_>,
        env: &EvalEnv,
        tenant_names: &HashMap<String, String>,
        flavor: Option<ApiFlavor>,
    ) -> Option<Recall> {
        if run.opts.on_page.is_some() || run.set.rules.len() > 64 || run.set.clock_at_load {
            return None;
        }
        let places = (run.rules.iter())
            .map(|r| (run.set.rules.iter()).position(|s| Arc::ptr_eq(s, r)))
            .map(|p| p.map(|p| p as u32))
            .collect::<Option<Vec<u32>>>()?;
        let mut names: Vec<_> = tenant_names.iter().collect();
        names.sort_unstable();
        // The limits a rule can catch running into (`try { ... } catch`) count too. SHA-256,
        // not std's hasher, whose output may change with the compiler that built casewarden.
        let l = &env.limits;
        let inputs = format!(
            "{}\0{names:?}\0{flavor:?}\0{:?}\0{:?}\0{:?}\0{} {} {}",
            run.set.fingerprint,
            env.own_users,
            env.exempt_tags,
            run.ctx.tenants,
            l.changes_per_case,
            l.comments_per_case,
            l.comment_chars
        );
        let digest = Sha256::digest(inputs.as_bytes());
        Some(Recall {
            key: u64::from_le_bytes(digest[..8].try_into().expect("8 bytes")),
            due: places.iter().fold(0, |bits, p| bits | 1 << p),
            places,
        })
    }

    /// The case as its verdict counts it, when the verdict still holds at `now` for every
    /// due rule.
    pub fn reuse(&self, v: &Verdict, now: i64) -> Option<Known> {
        let holds = v.key == self.key && v.at <= now && now < v.until;
        if !holds || self.due & !v.due != 0 {
            return None;
        }
        let of = |bits: u64| {
            (self.places.iter().enumerate())
                .filter(|(_, p)| bits & 1 << **p != 0)
                .map(|(i, _)| i)
                .collect()
        };
        Some(Known {
            tenant: v.tenant.clone(),
            seen_by: of(v.seen),
            exempt_from: of(v.exempt),
        })
    }

    /// The verdict to keep for a quiet case, reached `at` (after its evaluation), unless a
    /// snooze date decides for the rules; with what the verdict `before` it (of the same
    /// version) says of rules not due this pass, while it holds.
    pub fn verdict(&self, q: &Quiet<'_>, at: i64, before: Option<&Verdict>) -> Option<Verdict> {
        let snoozed = q.case.tags().any(|t| t.starts_with(SNOOZE_PREFIX));
        if snoozed || q.until <= at {
            return None;
        }
        let bits = |rules: &[usize]| rules.iter().fold(0, |b, &i| b | 1 << self.places[i]);
        let mut v = Verdict {
            key: self.key,
            at,
            until: q.until,
            tenant: q.case.tenant().map(Arc::from),
            due: self.due,
            seen: bits(q.seen_by),
            exempt: bits(q.exempt_from),
        };
        // A pass of some rules (their own schedules, `--rule`) keeps what the verdict
        // before it says of the others.
        if let Some(b) = before.filter(|b| b.key == self.key && b.at <= at && at < b.until) {
            let others = b.due & !self.due;
            v.due |= b.due;
            v.seen |= b.seen & others;
            v.exempt |= b.exempt & others;
            v.until = v.until.min(b.until);
        }
        Some(v)
    }
}
