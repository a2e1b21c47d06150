//! The planner, pure and I/O-free: what the rules asked for on each case becomes decisions
//! (planned or skipped, and why) and at most one update body per case (`case`); over the
//! whole pass, the budget, the guard and what casewarden remembers decide what goes
//! (`pass`); `field` names what a decision changes.

mod case;
mod field;
mod pass;
pub mod revert;
pub mod reviewed;

pub use case::{
    CasePlan, Change, ChangeKind, Decision, Memory, RuleChanges, apply, case_holds, current,
    decisions, holds, plan_case, remember, stamp,
};
pub use field::{DecisionId, Field, describe_change, memory_key};
pub use pass::{
    Budgets, CaseFacts, PassPlan, PassPlanner, RuleSettings, TenantLimits, guard_trips,
};
