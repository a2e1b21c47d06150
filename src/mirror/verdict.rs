//! What the rules made of a case's version, kept so that a later pass need not evaluate
//! it again.

use std::sync::Arc;

/// What the rules made of a case's version when none of them asked anything of it, failed
/// on it or needed its activities: a pass whose rules, inputs and clock give the same
/// answers counts the case from it instead of reading and evaluating it again. A new
/// version of the case drops it; the file keeps those that hold for a while.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The rule set and what the rules were given besides the case.
    pub key: u64,
    /// When it was reached, and until when the clock the rules read gives the same answers
    /// (ms, this machine's clock).
    pub at: i64,
    pub until: i64,
    pub tenant: Option<Arc<str>>,
    /// Rules by their place in the rule set (a bit each): the ones that were due, the ones
    /// whose query selected the case and looked at it, and the ones an exemption kept off.
    pub due: u64,
    pub seen: u64,
    pub exempt: u64,
}

/// Whether a verdict holds long enough to be worth a write: one that ends within minutes
/// (a rule counting minutes) would be stale before the next `once` from cron reads it.
pub(super) fn worth_keeping(v: &Verdict) -> bool {
    v.until.saturating_sub(v.at) >= 5 * 60_000
}
