//! The sandboxed Rhai engine and the functions rules can call. Change functions record
//! into a per-thread collector, so one shared engine evaluates on many threads at once.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use rhai::{Array, Dynamic, Engine, EvalAltResult, INT, ImmutableString, Map};
use serde_json::Value;

use super::limits::{self, Limits, PrintLog};
use super::view::{CaseView, Fields};
use crate::calendar::Calendar;
use crate::plan::{Change, ChangeKind};
use crate::stellar::model::{PRIORITIES, RESOLUTIONS, STATUSES};
use crate::stellar::object::Object;
use crate::stellar::{
    Directory, Entity, HistoryEntry, entity_of, involved, parse_entity, priority_rank,
};
use crate::text::check_text;

/// What a rule's environment holds besides the case: the clock and who "we" are.
#[derive(Debug, Clone, Default)]
pub struct EvalEnv {
    /// `now()` in ms; None means the real clock.
    pub now_ms: Option<i64>,
    /// History `user` values that are casewarden itself (its API user's id and email);
    /// their `"api": true` entries are not human activity.
    pub own_users: Arc<Vec<String>>,
    pub limits: Limits,
    /// What each rule printed this pass.
    pub prints: Arc<PrintLog>,
    /// The server's users for `user_email`/`user_id`; None when they were not read.
    pub users: Option<Arc<Directory>>,
    /// The config's business calendars by name.
    pub calendars: Arc<HashMap<String, Calendar>>,
    /// `daemon.exempt_tags`: a case carrying one is left alone by every rule.
    pub exempt_tags: Arc<Vec<String>>,
}

struct Collector {
    rule: String,
    now_ms: i64,
    env: EvalEnv,
    /// The case's `/activities`, when they were read.
    activities: Option<Arc<Vec<HistoryEntry>>>,
    /// `last_human_activity` needed the case's activities and they were not read.
    wants_activities: bool,
    changes: Vec<Change>,
}

/// What one evaluation asked for.
#[derive(Debug, Default)]
pub struct Asked {
    pub changes: Vec<Change>,
    /// The rule asked when a person last touched a case whose answer is only in its
    /// `/activities`, which were not read: evaluate again once they are.
    pub wants_activities: bool,
}

thread_local! {
    static CURRENT: RefCell<Option<Collector>> = const { RefCell::new(None) };
    /// When the evaluation on this thread must stop (apart from the collector, as the
    /// engine checks it every few operations).
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Starts collecting for one evaluation on this thread.
pub(super) fn begin(env: &EvalEnv, rule: &str, activities: Option<Arc<Vec<HistoryEntry>>>) {
    DEADLINE.with(|d| d.set(Some(Instant::now() + env.limits.eval_time)));
    CURRENT.with(|c| {
        *c.borrow_mut() = Some(Collector {
            rule: rule.to_string(),
            now_ms: env.now_ms.unwrap_or_else(crate::now_ms),
            env: env.clone(),
            activities,
            wants_activities: false,
            changes: Vec::new(),
        })
    });
}

/// Ends the evaluation and returns what the rule asked for.
pub(super) fn finish() -> Asked {
    DEADLINE.with(|d| d.set(None));
    CURRENT.with(|c| {
        c.borrow_mut()
            .take()
            .map(|c| Asked {
                changes: c.changes,
                wants_activities: c.wants_activities,
            })
            .unwrap_or_default()
    })
}

fn with<T>(f: impl FnOnce(&mut Collector) -> T, fallback: T) -> T {
    CURRENT.with(|c| c.borrow_mut().as_mut().map(f).unwrap_or(fallback))
}

fn now() -> INT {
    with(|c| c.now_ms, crate::now_ms())
}

fn rule_name() -> String {
    with(|c| c.rule.clone(), String::new())
}

fn may_print() -> bool {
    with(
        |c| c.env.prints.allow(&c.rule, c.env.limits.prints_per_pass),
        true,
    )
}

type Res = Result<(), Box<EvalAltResult>>;

/// Records one change, unless the rule has asked as much of this case as it may.
fn record(kind: ChangeKind, reason: &str) -> Res {
    with(
        |c| {
            let l = &c.env.limits;
            check_text("the reason", reason, l.comment_chars, true)?;
            if c.changes.len() >= l.changes_per_case {
                return Err(format!(
                    "stopped: the rule asked more than {} changes of one case (daemon.max_changes_per_rule_case)",
                    l.changes_per_case
                )
                .into());
            }
            if let ChangeKind::Comment(text) = &kind {
                let comments = c
                    .changes
                    .iter()
                    .filter(|ch| matches!(ch.kind, ChangeKind::Comment(_)))
                    .count();
                if comments >= l.comments_per_case {
                    return Err(format!(
                        "stopped: the rule asked more than {} comments on one case (daemon.max_comments_per_rule_case)",
                        l.comments_per_case
                    )
                    .into());
                }
                check_text("comment: the text", text, l.comment_chars, true)?;
            }
            c.changes.push(Change {
                kind,
                reason: reason.to_string(),
            });
            Ok(())
        },
        Ok(()),
    )
}

fn one_of(what: &str, value: &str, allowed: &[&str]) -> Res {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "invalid {what} {value:?}: expected one of {}",
            allowed.join(", ")
        )
        .into())
    }
}

fn non_empty(what: &str, value: &str) -> Res {
    if value.trim().is_empty() {
        Err(format!("{what} must not be empty").into())
    } else {
        Ok(())
    }
}

fn set_priority(p: &str, reason: &str) -> Res {
    one_of("priority", p, &PRIORITIES)?;
    record(ChangeKind::Priority(p.into()), reason)
}

fn set_status(s: &str, reason: &str) -> Res {
    one_of("status", s, &STATUSES)?;
    record(ChangeKind::Status(s.into()), reason)
}

fn resolve(resolution: &str, reason: &str) -> Res {
    one_of("resolution", resolution, &RESOLUTIONS)?;
    record(ChangeKind::Resolve(resolution.into()), reason)
}

fn assign(user: &str, reason: &str) -> Res {
    non_empty("assign: the user", user)?;
    check_text("assign: the user", user, limits::MAX_TAG_CHARS, false)?;
    record(ChangeKind::Assign(user.trim().into()), reason)
}

fn unassign(reason: &str) -> Res {
    record(ChangeKind::Assign(String::new()), reason)
}

type Found = Result<Dynamic, Box<EvalAltResult>>;

/// Looks a user up in the server's users list; () when nobody matches.
fn lookup(what: &str, f: impl FnOnce(&Directory) -> Option<String>) -> Found {
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
    with(
        |c| match c.env.calendars.get(calendar) {
            Some(cal) => Ok(cal.business_ms(ms, c.now_ms) / unit),
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
        Ok(0),
    )
}

fn add_tag(t: &str, reason: &str) -> Res {
    non_empty("add_tag: the tag", t)?;
    check_text("add_tag: the tag", t, limits::MAX_TAG_CHARS, false)?;
    // A tag is exported to spreadsheets by analysts: one that reads as a formula is refused.
    if t.starts_with(['=', '+', '-', '@']) {
        return Err(format!(
            "add_tag: the tag {t:?} starts with {:?}, which a spreadsheet runs as a formula; start it with a letter or digit",
            &t[..1]
        )
        .into());
    }
    record(ChangeKind::AddTag(t.into()), reason)
}

fn remove_tag(t: &str, reason: &str) -> Res {
    non_empty("remove_tag: the tag", t)?;
    check_text("remove_tag: the tag", t, limits::MAX_TAG_CHARS, false)?;
    record(ChangeKind::RemoveTag(t.into()), reason)
}

fn set_description(text: &str, reason: &str) -> Res {
    check_text(
        "set_description: the text",
        text,
        limits::MAX_DESCRIPTION_CHARS,
        true,
    )?;
    record(ChangeKind::Description(text.into()), reason)
}

fn comment(text: &str) -> Res {
    non_empty("comment: the text", text)?;
    record(ChangeKind::Comment(text.into()), "")
}

fn since(ms: INT, unit: INT) -> INT {
    (now() - ms).div_euclid(unit)
}

// Case helpers read the case in place (`&mut`, so Rhai passes a reference, not a copy),
// whether it is still the server's JSON or a map the rule has made of it.

fn has_tag(c: Fields, t: &str) -> bool {
    match c {
        Fields::Json(json) => json
            .get("tags")
            .and_then(Value::as_array)
            .is_some_and(|tags| tags.iter().any(|x| x.as_str() == Some(t))),
        Fields::Map(map) => map
            .get("tags")
            .and_then(|v| v.read_lock::<Array>())
            .is_some_and(|tags| {
                tags.iter().any(|x| {
                    x.read_lock::<ImmutableString>()
                        .is_some_and(|s| s.as_str() == t)
                })
            }),
    }
}

/// A text field of the case's `metadata`.
fn metadata_text(c: &Fields, key: &str) -> Option<String> {
    match c {
        Fields::Json(json) => Some(json.get("metadata")?.get(key)?.as_str()?.to_string()),
        Fields::Map(map) => {
            let meta = map.get("metadata")?.read_lock::<Map>()?;
            let text = meta.get(key)?.read_lock::<ImmutableString>()?;
            Some(text.to_string())
        }
    }
}

fn entity_map(e: Entity) -> Dynamic {
    let mut m = Map::new();
    m.insert("kind".into(), e.kind.into());
    m.insert("name".into(), e.name.into());
    m.insert("ip".into(), e.ip.map_or(Dynamic::UNIT, Dynamic::from));
    Dynamic::from_map(m)
}

fn entity(c: Fields) -> Dynamic {
    let parsed = match &c {
        Fields::Json(json) => entity_of(*json),
        Fields::Map(_) => metadata_text(&c, "entity_id").and_then(|id| parse_entity(&id)),
    };
    parsed.map_or(Dynamic::UNIT, entity_map)
}

fn entities(c: Fields) -> Array {
    let main = metadata_text(&c, "entity_id").and_then(|id| parse_entity(&id));
    let summary = metadata_text(&c, "description_auto").unwrap_or_default();
    main.into_iter()
        .chain(involved(&summary))
        .map(entity_map)
        .collect()
}

/// When a person last touched the case (see [`crate::stellar::last_human_activity`]).
/// When the answer needs the case's activities and they were not read, the recent side:
/// now, so a rule about idle cases never fires on a case a person may have touched.
/// Minutes since the case took its current status: the newest `status` entry of its
/// `history` (4.3), else `modified_at` (a later change of another field makes this an
/// underestimate), else `created_at`.
fn minutes_in_status(c: Fields) -> INT {
    match c {
        Fields::Json(j) => minutes_in_status_of(j),
        Fields::Map(m) => minutes_in_status_of(
            &rhai::serde::from_dynamic::<serde_json::Map<String, Value>>(&Dynamic::from_map(
                m.clone(),
            ))
            .unwrap_or_default(),
        ),
    }
}

fn minutes_in_status_of(raw: &impl Object) -> INT {
    let from_history = raw
        .get("history")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|h| h.get("field").and_then(Value::as_str) == Some("status"))
        .filter_map(|h| h.get("timestamp").and_then(Value::as_i64))
        .max();
    let at = from_history
        .or_else(|| raw.get("modified_at").and_then(Value::as_i64))
        .or_else(|| raw.get("created_at").and_then(Value::as_i64))
        .unwrap_or_else(now);
    since(at, 60_000)
}

fn last_human_activity(c: Fields) -> INT {
    match c {
        Fields::Json(json) => human_activity_of(json),
        Fields::Map(map) => {
            // The rule made its own copy of the case; read the fields that decide.
            let mut raw = serde_json::Map::new();
            for key in ["created_at", "modified_at", "modified_by", "history"] {
                if let Some(v) = map.get(key)
                    && let Ok(v) = rhai::serde::from_dynamic::<Value>(v)
                {
                    raw.insert(key.to_string(), v);
                }
            }
            human_activity_of(&raw)
        }
    }
}

fn human_activity_of(raw: &impl Object) -> INT {
    with(
        |ctx| {
            let at = crate::stellar::last_human_activity(
                raw,
                &ctx.env.own_users,
                ctx.activities.as_deref().map(Vec::as_slice),
            );
            if at.is_none() {
                ctx.wants_activities = true;
            }
            at.unwrap_or(ctx.now_ms)
        },
        crate::now_ms(),
    )
}

/// The engine every rule runs in, with every limit set explicitly (the defaults differ
/// between debug and release builds) and no way out of the sandbox.
pub(super) fn engine() -> Engine {
    let mut e = Engine::new();
    e.set_module_resolver(rhai::module_resolvers::StaticModuleResolver::new());
    e.set_max_operations(500_000)
        .set_max_call_levels(32)
        .set_max_expr_depths(64, 32)
        .set_max_string_size(256 * 1024)
        .set_max_array_size(100_000)
        .set_max_map_size(10_000)
        // Modules come only from `rules_dir/lib`, compiled at load: the resolver is a
        // static one set by the rule set, never the file system.
        .set_max_modules(64)
        .set_max_variables(1_000)
        .set_max_functions(1_000)
        .set_strict_variables(true);
    e.disable_symbol("eval");
    e.on_print(|text| {
        if may_print() {
            tracing::info!(rule = %rule_name(), "print: {}", crate::text::for_terminal(text));
        }
    });
    e.on_debug(|text, _source, pos| {
        if may_print() {
            tracing::debug!(rule = %rule_name(), %pos, "debug: {}", crate::text::for_terminal(text));
        }
    });
    // The wall-clock limit: checked every 64 operations, so it costs next to nothing.
    e.on_progress(|ops| {
        let late =
            ops & 0x3f == 0 && DEADLINE.with(|d| d.get().is_some_and(|d| Instant::now() > d));
        late.then(|| Dynamic::from("time"))
    });

    e.register_fn("set_priority", |p: &str, r: &str| set_priority(p, r))
        .register_fn("set_priority", |p: &str| set_priority(p, ""))
        .register_fn("set_status", |s: &str, r: &str| set_status(s, r))
        .register_fn("set_status", |s: &str| set_status(s, ""))
        .register_fn("resolve", |x: &str, r: &str| resolve(x, r))
        .register_fn("resolve", |x: &str| resolve(x, ""))
        .register_fn("assign", |u: &str, r: &str| assign(u, r))
        .register_fn("assign", |u: &str| assign(u, ""))
        .register_fn("unassign", |r: &str| unassign(r))
        .register_fn("unassign", || unassign(""))
        .register_fn("add_tag", |t: &str, r: &str| add_tag(t, r))
        .register_fn("add_tag", |t: &str| add_tag(t, ""))
        .register_fn("remove_tag", |t: &str, r: &str| remove_tag(t, r))
        .register_fn("remove_tag", |t: &str| remove_tag(t, ""))
        .register_fn("set_description", |d: &str, r: &str| set_description(d, r))
        .register_fn("set_description", |d: &str| set_description(d, ""))
        .register_fn("comment", comment);

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
        });
    e.register_fn("user_email", user_email)
        .register_fn("user_email", |_: ()| Dynamic::UNIT)
        .register_fn("user_id", user_id)
        .register_fn("user_id", |_: ()| Dynamic::UNIT);

    e.register_fn("priority_rank", |p: ImmutableString| priority_rank(&p))
        .register_fn("priority_rank", |_: ()| 0 as INT)
        .register_fn("has_tag", |c: &mut CaseView, t: &str| {
            has_tag(c.fields(), t)
        })
        .register_fn("has_tag", |c: &mut Map, t: &str| has_tag(Fields::Map(c), t))
        .register_fn("entity", |c: &mut CaseView| entity(c.fields()))
        .register_fn("entity", |c: &mut Map| entity(Fields::Map(c)))
        .register_fn("entities", |c: &mut CaseView| entities(c.fields()))
        .register_fn("entities", |c: &mut Map| entities(Fields::Map(c)))
        .register_fn("last_human_activity", |c: &mut CaseView| {
            last_human_activity(c.fields())
        })
        .register_fn("last_human_activity", |c: &mut Map| {
            last_human_activity(Fields::Map(c))
        })
        .register_fn("minutes_in_status", |c: &mut CaseView| {
            minutes_in_status(c.fields())
        })
        .register_fn("minutes_in_status", |c: &mut Map| {
            minutes_in_status(Fields::Map(c))
        })
        .register_fn("in_cidr", super::matching::in_cidr)
        .register_fn("in_cidr", |_: (), _: &str| false)
        .register_fn("matches", super::matching::matches)
        .register_fn("matches", |_: (), _: &str| false);
    super::view::register(&mut e);
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(script: &str, env: &EvalEnv) -> (Result<Dynamic, Box<EvalAltResult>>, Vec<Change>) {
        let e = engine();
        begin(env, "t", None);
        let r = e.eval::<Dynamic>(script);
        (r, finish().changes)
    }

    fn fixed(now: i64) -> EvalEnv {
        EvalEnv {
            now_ms: Some(now),
            own_users: Arc::new(vec!["me".into()]),
            ..EvalEnv::default()
        }
    }

    #[test]
    fn time_helpers_use_the_injected_clock() {
        let (r, _) = run(
            "[now(), hours_since(0), days_since(0), minutes_since(0)]",
            &fixed(2 * 86_400_000),
        );
        let v: Vec<INT> = r.unwrap().into_typed_array().unwrap();
        assert_eq!(v, [2 * 86_400_000, 48, 2, 2880]);
    }

    #[test]
    fn invalid_values_are_errors_not_changes() {
        let (r, changes) = run("set_priority(\"Urgent\", \"why\")", &fixed(0));
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains("invalid priority \"Urgent\""), "{msg}");
        assert!(changes.is_empty());
        let (r, _) = run("resolve(\"Fixed\")", &fixed(0));
        assert!(r.unwrap_err().to_string().contains("False Positive"));
        let (r, changes) = run("add_tag(\"=HYPERLINK(1)\")", &fixed(0));
        assert!(r.unwrap_err().to_string().contains("runs as a formula"));
        assert!(changes.is_empty());
    }

    #[test]
    fn changes_are_collected_with_reasons() {
        let (r, changes) = run(
            "add_tag(\"x\", \"because\"); set_status(\"Escalated\"); comment(\"hi\")",
            &fixed(0),
        );
        assert!(r.is_ok());
        assert_eq!(changes.len(), 3);
        assert_eq!(changes[0].kind, ChangeKind::AddTag("x".into()));
        assert_eq!(changes[0].reason, "because");
        assert_eq!(changes[1].reason, "");
    }

    #[test]
    fn case_helpers() {
        let script = r#"
            let c = #{ tags: ["a", "b"], created_at: 100,
                       metadata: #{ entity_id: "asset,,10.10.30.20" },
                       history: [ #{ field: "tags", timestamp: 500, user: "me", api: true },
                                  #{ field: "status", timestamp: 300, user: "alice" } ] };
            let e = entity(c);
            [has_tag(c, "b"), c.has_tag("z"), e.kind, e.ip, last_human_activity(c),
             priority_rank("High"), priority_rank("nope"), entity(#{})]
        "#;
        let (r, _) = run(script, &fixed(0));
        let v: Vec<Dynamic> = r.unwrap().into_typed_array().unwrap();
        assert!(v[0].as_bool().unwrap());
        assert!(!v[1].as_bool().unwrap());
        assert_eq!(v[2].to_string(), "asset");
        assert_eq!(v[3].to_string(), "10.10.30.20");
        assert_eq!(v[4].as_int().unwrap(), 300);
        assert_eq!(v[5].as_int().unwrap(), 3);
        assert_eq!(v[6].as_int().unwrap(), 0);
        assert!(v[7].is_unit());
    }

    #[test]
    fn sandbox_stops_runaway_scripts() {
        let (r, _) = run("loop {}", &fixed(0));
        assert!(matches!(
            *r.unwrap_err(),
            EvalAltResult::ErrorTooManyOperations(_)
        ));
        let (r, _) = run("fn f(x) { f(x + 1) } f(0)", &fixed(0));
        assert!(r.is_err());
        let (r, _) = run("let s = \"x\"; loop { s += s; }", &fixed(0));
        assert!(matches!(
            *r.unwrap_err(),
            EvalAltResult::ErrorDataTooLarge(..)
        ));
        let (r, _) = run("eval(\"1\")", &fixed(0));
        assert!(r.is_err());
    }
}

#[cfg(test)]
mod reference {
    /// Rhai's own map functions, answered for the case view (see `view.rs`): documented by
    /// Rhai, not by us.
    const MAP_FUNCTIONS: [&str; 22] = [
        "len",
        "is_empty",
        "keys",
        "values",
        "clear",
        "to_json",
        "contains",
        "get",
        "remove",
        "mixin",
        "fill_with",
        "map",
        "filter",
        "drain",
        "retain",
        "set",
        "to_string",
        "to_debug",
        "+",
        "+=",
        "==",
        "!=",
    ];

    #[test]
    fn every_function_a_rule_can_call_is_in_the_reference() {
        let docs =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/rules.md")).unwrap();
        let mut missing = Vec::new();
        for sig in super::engine().gen_fn_signatures(false) {
            let name = sig.split('(').next().unwrap_or_default();
            // `index$get$`, `get$field`: Rhai's names for indexers and property access.
            if MAP_FUNCTIONS.contains(&name) || name.contains('$') {
                continue;
            }
            if !docs.contains(&format!("`{name}(")) && !docs.contains(&format!(".{name}(")) {
                missing.push(name.to_string());
            }
        }
        missing.sort();
        missing.dedup();
        assert!(missing.is_empty(), "not in docs/rules.md: {missing:?}");
    }
}
