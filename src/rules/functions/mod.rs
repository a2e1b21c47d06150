//! The functions rules call besides Rhai's own, registered on the engine: the change
//! functions (`changes`), time and people helpers (here), and the case helpers (`case`).

mod case;
mod changes;
#[cfg(test)]
mod tests;

use rhai::{Dynamic, Engine, EvalAltResult, INT, ImmutableString, Map, Variant};

use super::collector::{now, since, volatile, with};
use super::matching;
use super::view::{CaseView, Fields};
use crate::stellar::{Directory, priority_rank};
use changes::Res;

/// Registers every function of the rule library (docs/rules.md) on `e`.
pub(super) fn register(e: &mut Engine) {
    register_changes(e);
    register_time_and_people(e);
    register_case_helpers(e);
}

fn register_changes(e: &mut Engine) {
    for (name, change) in [
        (
            "set_priority",
            changes::set_priority as fn(&str, &str) -> Res,
        ),
        ("set_status", changes::set_status),
        ("resolve", changes::resolve),
        ("assign", changes::assign),
    ] {
        with_or_without_reason(e, name, change);
    }
    e.register_fn("unassign", |r: &str| changes::unassign(r))
        .register_fn("unassign", || changes::unassign(""));
    for (name, change) in [
        ("add_tag", changes::add_tag as fn(&str, &str) -> Res),
        ("remove_tag", changes::remove_tag),
        ("set_description", changes::set_description),
    ] {
        with_or_without_reason(e, name, change);
    }
    e.register_fn("comment", changes::comment);
}

/// `name(value, reason)`, and `name(value)` with no reason.
fn with_or_without_reason(e: &mut Engine, name: &str, change: fn(&str, &str) -> Res) {
    e.register_fn(name, move |v: &str, r: &str| change(v, r))
        .register_fn(name, move |v: &str| change(v, ""));
}

fn register_time_and_people(e: &mut Engine) {
    // Rhai's own clock, tracked like ours (an `Instant` its `elapsed` reads later).
    e.register_fn("timestamp", || {
        volatile();
        std::time::Instant::now()
    });
    e.register_fn("now", now)
        .register_fn("minutes_since", |ms: INT| since(ms, 60_000))
        .register_fn("hours_since", |ms: INT| since(ms, 3_600_000))
        .register_fn("days_since", |ms: INT| since(ms, 86_400_000))
        .register_fn("minutes_since", |ms: rhai::FLOAT| since(ms as INT, 60_000))
        .register_fn("hours_since", |ms: rhai::FLOAT| since(ms as INT, 3_600_000))
        .register_fn("days_since", |ms: rhai::FLOAT| since(ms as INT, 86_400_000))
        .register_fn("business_hours_since", |ms: INT, cal: &str| {
            business_since(ms, cal, 3_600_000)
        })
        .register_fn("business_minutes_since", |ms: INT, cal: &str| {
            business_since(ms, cal, 60_000)
        })
        .register_fn("in_business_hours", in_business_hours);
    e.register_fn("user_email", user_email)
        .register_fn("user_email", |_: ()| Dynamic::UNIT)
        .register_fn("user_id", user_id)
        .register_fn("user_id", |_: ()| Dynamic::UNIT);
}

/// The case helpers take the view rules get and a map a rule made of it; `priority_rank`,
/// `in_cidr` and `matches` also take () (a field the case lacks).
fn register_case_helpers(e: &mut Engine) {
    e.register_fn("priority_rank", |p: ImmutableString| priority_rank(&p))
        .register_fn("priority_rank", |_: ()| 0 as INT)
        .register_fn("has_tag", |c: &mut CaseView, t: &str| {
            case::has_tag(c.fields(), t)
        })
        .register_fn("has_tag", |c: &mut Map, t: &str| {
            case::has_tag(Fields::Map(c), t)
        });
    on_case(e, "entity", case::entity);
    on_case(e, "entities", case::entities);
    on_case(e, "last_human_activity", case::last_human_activity);
    on_case(e, "minutes_in_status", case::minutes_in_status);
    e.register_fn("in_cidr", matching::in_cidr)
        .register_fn("in_cidr", |_: (), _: &str| false)
        .register_fn("matches", matching::matches)
        .register_fn("matches", |_: (), _: &str| false);
}

/// `name(c)` on the view rules get and on a map a rule made of it.
fn on_case<T: Variant + Clone>(e: &mut Engine, name: &str, helper: fn(Fields) -> T) {
    e.register_fn(name, move |c: &mut CaseView| helper(c.fields()))
        .register_fn(name, move |c: &mut Map| helper(Fields::Map(c)));
}

type Found = Result<Dynamic, Box<EvalAltResult>>;

/// Looks a user up in the server's users list; () when nobody matches.
fn lookup(what: &str, f: impl FnOnce(&Directory) -> Option<String>) -> Found {
    volatile();
    with(
        |c| {
            match &c.env.users {
            Some(users) => Ok(f(users).map_or(Dynamic::UNIT, Dynamic::from)),
            None => Err(format!(
                "{what}: the server's users list is not available (it could not be read this pass; test-rule takes it with --users FILE)"
            )
            .into()),
        }
        },
        Ok(Dynamic::UNIT),
    )
}

fn user_email(id: &str) -> Found {
    lookup("user_email", |u| u.email_of(id).map(str::to_string))
}

fn user_id(email: &str) -> Found {
    lookup("user_id", |u| u.id_of(email).map(str::to_string))
}

/// Working time since `ms` by the named calendar of the config, in `unit` ms.
fn business_since(ms: INT, calendar: &str, unit: INT) -> Result<INT, Box<EvalAltResult>> {
    on_calendar(calendar, |cal, now| cal.business_ms(ms, now) / unit, 0)
}

/// Whether the evaluation's now is in the calendar's working hours.
fn in_business_hours(calendar: &str) -> Result<bool, Box<EvalAltResult>> {
    on_calendar(calendar, |cal, now| cal.is_open(now), false)
}

/// `f` on the named calendar of the config and the evaluation's now; an unknown name is
/// the rule's error, naming the calendars there are.
fn on_calendar<T>(
    calendar: &str,
    f: impl FnOnce(&crate::calendar::Calendar, INT) -> T,
    outside: T,
) -> Result<T, Box<EvalAltResult>> {
    volatile();
    with(
        |c| match c.env.calendars.get(calendar) {
            Some(cal) => Ok(f(cal, c.now_ms)),
            None => {
                let mut names: Vec<&str> = c.env.calendars.keys().map(String::as_str).collect();
                names.sort_unstable();
                Err(format!(
                    "no calendar {calendar:?} in the config ([calendars.{calendar}]); defined: {}",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                )
                .into())
            }
        },
        Ok(outside),
    )
}
