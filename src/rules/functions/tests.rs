//! The rule library's functions run in the engine: changes, clock, case helpers; and
//! every one of them documented in docs/rules.md.

use rhai::{Dynamic, INT};

use crate::plan::ChangeKind;
use crate::rules::engine::engine;
use crate::rules::engine::tests::{fixed, run, run_asking};

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
fn an_evaluation_holds_until_the_clock_it_read_gives_another_answer() {
    let now = 10 * 86_400_000 + 5_000;
    let until = |script: &str| {
        let (r, asked) = run_asking(script, &fixed(now));
        assert!(r.is_ok(), "{script}: {r:?}");
        asked.until
    };
    assert_eq!(until("priority_rank(\"High\")"), i64::MAX, "no clock read");
    // 23 whole hours since `now - 23.5h`: 24 at `now + 0.5h`.
    let created = now - 23 * 3_600_000 - 1_800_000;
    assert_eq!(until(&format!("hours_since({created})")), now + 1_800_000);
    assert_eq!(
        until(&format!("hours_since({created}); days_since({created})")),
        now + 1_800_000,
        "the nearest change wins"
    );
    assert_eq!(until(&format!("minutes_since({now})")), now + 60_000);
    assert_eq!(until("days_since(0)"), 11 * 86_400_000);
    for volatile in ["now()", "print(\"x\")", "user_email(\"u1\")"] {
        // Without a users list `user_email` is the rule's error, but it read it.
        let (_, asked) = run_asking(volatile, &fixed(now));
        assert_eq!(asked.until, now + 1, "{volatile}");
    }
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
    for sig in engine().gen_fn_signatures(false) {
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
