//! The planner, pure and I/O-free: what the rules asked for on each case becomes decisions
//! (planned or skipped, and why) and at most one update body per case (`case`); over the
//! whole pass, the budget, the guard and what casewarden remembers decide what goes
//! (`pass`), with human override from casewarden's `memory`; `field` names what a
//! decision changes. `reviewed` is the plan file a person approves before `apply`, and
//! `revert` the inverse of a pass's applied changes.

mod case;
mod field;
mod memory;
mod pass;
pub mod revert;
pub mod reviewed;

pub use case::{
    CasePlan, Change, ChangeKind, Decision, FieldNow, RuleChanges, case_holds, decisions,
    field_now, holds, plan_case, resolve_emails,
};
pub use field::{DecisionId, Field, describe_change, describe_value, memory_key};
pub use memory::{Clash, ClashOutcome, Memory, current, remember, sets_back};
pub use pass::{
    Budgets, CaseClash, CaseFacts, DEFERRED, HALTED, PassPlan, PassPlanner, RuleSettings,
    TenantLimits, guard_trips,
};
