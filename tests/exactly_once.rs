//! Exactly once against a server that behaves as real ones do: a listing that trails
//! writes by seconds, a gateway that answers 502 after the server applied, answers later
//! than the client's timeout, and a case whose JSON is not UTF-8.

use casewarden::audit::{EventRow, Filter};
use serde_json::json;

use crate::common::*;
use crate::faults::{GUARD_OFF, TAG_ALL, assert_agreement, set_stellar, tagged_by_api};

const TO_HIGH: &str = "const RULE = #{ name: \"to-high\" };\nfn evaluate(c) { if c.priority != \"High\" { set_priority(\"High\", \"test\"); } }\n";

/// A workspace whose one rule is `rule`, with `stellar` for its timeouts and retries.
fn workspace(sim: &casewarden::sim::Simulator, rule: &str, stellar: &str) -> Workspace {
    let ws = Workspace::new(&sim.url, "legacy", GUARD_OFF, Some(&[("rule.rhai", rule)]));
    set_stellar(&ws, stellar);
    ws
}

/// Rows that settle a planned change (not the planned rows themselves, nor notes).
fn outcomes<'a>(rows: &'a [EventRow], field: &'a str) -> impl Iterator<Item = &'a EventRow> {
    rows.iter()
        .filter(move |r| r.field == field && r.planned_seq.is_some())
}

/// A person sets `n` cases (neither High nor Critical) to Critical just before the pass, so
/// a lagging listing does not show it; returns them, and the others the rule must set High.
fn edit_before_the_pass(sim: &casewarden::sim::Simulator, n: usize) -> (Vec<String>, Vec<String>) {
    let mut s = sim.state();
    let ids: Vec<String> = (s.cases.iter())
        .filter(|c| c["priority"] != "High" && c["priority"] != "Critical")
        .take(n)
        .map(|c| c["_id"].as_str().unwrap().to_string())
        .collect();
    for id in &ids {
        s.human_change(id, "alice@example.com", "priority", json!("Critical"));
    }
    let targets = (s.cases.iter())
        .map(|c| c["_id"].as_str().unwrap().to_string())
        .filter(|id| !ids.contains(id) && s.case(id).unwrap()["priority"] != "High")
        .collect();
    (ids, targets)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lagging_listing_and_502s_after_apply_change_each_case_once_and_overwrite_no_one() {
    let mut opts = sim_options(60);
    opts.faults.list_lag_ms = 5_000;
    opts.faults.apply_then_fail = 0.5;
    let sim = start(opts).await;
    let (edited, targets) = edit_before_the_pass(&sim, 20);
    assert_eq!(edited.len(), 20);
    let ws = workspace(
        &sim,
        TO_HIGH,
        "timeout_secs = 2\nmax_attempts = 3\nretry_base_ms = 20",
    );
    // Three passes while the listing still trails the first one's writes.
    for _ in 0..3 {
        assert_exit(&ws.run(&["once"]).await, 0);
    }
    let rows = ws.audit(Filter::default()).await;
    let changed = changed_by_api(&sim, Some("priority"));
    assert_eq!(changed, targets.iter().cloned().collect());
    let s = sim.state();
    for c in &s.cases {
        let id = c["_id"].as_str().unwrap();
        let calls = s.update_calls.get(id).copied().unwrap_or(0);
        assert!(calls <= 1, "{id} was sent {calls} updates");
        let to_high = (s.api_changes(id).iter())
            .filter(|h| h["field"] == "priority" && h["to"] == "High")
            .count();
        assert!(to_high <= 1, "{id} set High {to_high} times");
        if edited.iter().any(|e| e == id) {
            assert_eq!(
                c["priority"], "Critical",
                "{id}: a person's edit overwritten"
            );
            assert_eq!(calls, 0, "{id}: an update was sent over a person's edit");
        }
    }
    let applied: Vec<&EventRow> = outcomes(&rows, "priority")
        .filter(|r| r.outcome == "applied")
        .collect();
    assert_eq!(applied.len(), changed.len(), "one applied row per change");
    let confirmed = applied
        .iter()
        .filter(|r| r.reason.starts_with("confirmed by read: "))
        .count();
    assert!(
        confirmed > 0 && confirmed < applied.len(),
        "about half settled by a read after a 502: {confirmed} of {}",
        applied.len()
    );
    assert!(
        outcomes(&rows, "priority").all(|r| r.outcome != "failed" && r.outcome != "unknown"),
        "{:?}",
        outcomes(&rows, "priority")
            .filter(|r| r.outcome == "failed" || r.outcome == "unknown")
            .collect::<Vec<_>>()
    );
    let overridden = outcomes(&rows, "priority")
        .filter(|r| {
            r.error
                .as_deref()
                .is_some_and(|e| e.starts_with("overridden: priority is now \"Critical\""))
        })
        .count();
    assert!(overridden >= 20, "{overridden}");
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_later_than_the_timeout_are_confirmed_by_reading_never_failed_or_sent_again() {
    let mut opts = sim_options(30);
    opts.faults.slow_write_answers_ms = 5_000;
    let sim = start(opts).await;
    let ws = workspace(
        &sim,
        TAG_ALL,
        "timeout_secs = 1\nmax_attempts = 3\nretry_base_ms = 20",
    );
    assert_exit(&ws.run(&["once"]).await, 0);
    assert_exit(&ws.run(&["once"]).await, 0);
    let rows = ws.audit(Filter::default()).await;
    assert_agreement(&sim, &rows);
    assert_eq!(tagged_by_api(&sim).len(), 30);
    let applied: Vec<&EventRow> = outcomes(&rows, "tags").collect();
    assert_eq!(applied.len(), 30, "{applied:?}");
    assert!(
        applied
            .iter()
            .all(|r| r.outcome == "applied" && r.reason.starts_with("confirmed by read: ")),
        "{applied:?}"
    );
    assert!(sim.state().update_calls.values().all(|n| *n == 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_case_that_is_not_utf8_is_skipped_with_a_note_and_the_others_are_changed() {
    let mut opts = sim_options(30);
    let sim = start(opts.clone()).await;
    let bad = sim.state().cases[7]["_id"].as_str().unwrap().to_string();
    drop(sim);
    opts.faults.invalid_utf8_case = Some(bad.clone());
    let sim = start(opts).await;
    let ws = Workspace::new(
        &sim.url,
        "legacy",
        GUARD_OFF,
        Some(&[("all.rhai", TAG_ALL)]),
    );
    let out = ws.run(&["once"]).await;
    assert_exit(&out, 0);
    assert!(
        stderr(&out).contains(&bad) && stderr(&out).contains("invalid UTF-8"),
        "{}",
        stderr(&out)
    );
    let tagged = tagged_by_api(&sim);
    assert_eq!(tagged.len(), 29);
    assert!(!tagged.contains(&bad));
    let rows = ws.audit(Filter::default()).await;
    let notes: Vec<&EventRow> = rows.iter().filter(|r| r.field == "case").collect();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(notes[0].case_id, bad);
    assert_eq!(notes[0].rule, "listing");
    assert!(
        notes[0].reason.contains("invalid UTF-8 at byte"),
        "{notes:?}"
    );
}
