//! Exactly once against a server that behaves as real ones do: a listing that trails
//! writes by seconds, a gateway that answers 502 after the server applied, answers later
//! than the client's timeout, and a case whose JSON is not UTF-8.

use casewarden::audit::{EventRow, Filter};
use serde_json::json;

use crate::common::*;
use crate::faults::{GUARD_OFF, TAG_ALL, assert_agreement, set_stellar, tagged_by_api};

/// Raises Low and Medium cases to High; a Critical one (a person's edit below) is left
/// alone once casewarden sees it, so an edit is overwritten only if a stale view is trusted.
const TO_HIGH: &str = "const RULE = #{ name: \"to-high\" };\nfn evaluate(c) { if c.priority == \"Low\" || c.priority == \"Medium\" { set_priority(\"High\", \"test\"); } }\n";

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
        .filter(|c| c["priority"] == "Low" || c["priority"] == "Medium")
        .map(|c| c["_id"].as_str().unwrap().to_string())
        .filter(|id| !ids.contains(id))
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

/// Killed while updates and their summary comments are on the wire (each write takes
/// 300 ms to land), then run again at once: every case ends with its tag and exactly one
/// summary comment, and every summary row is settled.
#[tokio::test(flavor = "multi_thread")]
async fn a_kill_while_comments_are_posted_leaves_each_changed_case_exactly_one_comment() {
    for seed in 0..6u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut opts = sim_options(40);
        opts.faults.slow_write_apply_ms = 300;
        let sim = start(opts).await;
        let daemon = "max_change_fraction = 1.0\nmax_changes_per_run = 100000";
        let ws = Workspace::new(&sim.url, "legacy", daemon, Some(&[("all.rhai", TAG_ALL)]));
        set_stellar(
            &ws,
            "timeout_secs = 2\nmax_attempts = 2\nretry_base_ms = 20",
        );
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_casewarden"))
            .args(["--config", ws.config().to_str().unwrap(), "once"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let posting = |sim: &casewarden::sim::Simulator| {
            (sim.state().requests().iter())
                .any(|r| r.method == "POST" && r.path.ends_with("/comments"))
        };
        assert!(
            until(15, || posting(&sim)).await,
            "seed {seed}: no comment posted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(rng.u64(0..300))).await;
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        for _ in 0..2 {
            let out = ws.run(&["once"]).await;
            assert_exit(&out, 0);
        }
        let rows = ws.audit(Filter::default()).await;
        assert_agreement(&sim, &rows);
        assert_eq!(tagged_by_api(&sim).len(), 40, "seed {seed}");
        let s = sim.state();
        for c in &s.cases {
            let id = c["_id"].as_str().unwrap();
            let comments = s.comments.get(id).map_or(0, Vec::len);
            assert_eq!(comments, 1, "seed {seed}: {id} has {comments} comments");
            let text = s.comments[id][0]["comment"].as_str().unwrap();
            assert!(text.starts_with("casewarden changed this case:"), "{text}");
            let summaries = (rows.iter())
                .filter(|r| r.case_id == id && r.field == "summary" && r.outcome == "applied")
                .count();
            assert_eq!(summaries, 1, "seed {seed}: {id}");
        }
    }
}

/// A `planned` row of pass `run` as a crash left it: written, never settled.
fn planted_row(
    run: &str,
    case_id: &str,
    rule: &str,
    field: &str,
    new: Option<&str>,
) -> casewarden::audit::NewEvent {
    casewarden::audit::NewEvent {
        run_id: run.into(),
        rule: rule.into(),
        rule_hash: String::new(),
        case: casewarden::audit::CaseRef::Case {
            id: case_id.into(),
            ticket_id: None,
            tenant: None,
        },
        field: field.into(),
        old: None,
        new: new.map(str::to_string),
        reason: "because".into(),
        dry_run: false,
        outcome: casewarden::audit::Outcome::Planned,
        error: None,
        http_status: None,
        planned_seq: None,
    }
}

/// Summary rows a crash left open: posted from the pass's applied changes when the case's
/// comments do not hold it, not posted again when they do, and not posted (a row says
/// why) when none of the pass's changes was applied.
#[tokio::test(flavor = "multi_thread")]
async fn a_summary_comment_a_crash_left_open_is_posted_only_if_absent() {
    let sim = start(sim_options(5)).await;
    let noop = "const RULE = #{ name: \"noop\" };\nfn evaluate(c) { }\n";
    let ws = Workspace::new(&sim.url, "legacy", GUARD_OFF, Some(&[("noop.rhai", noop)]));
    let ids: Vec<String> = sim.state().cases[..3]
        .iter()
        .map(|c| c["_id"].as_str().unwrap().to_string())
        .collect();
    let run = "20261125T000000Z-crashed";
    std::fs::create_dir(ws.dir.path().join("state")).unwrap();
    let store = casewarden::audit::AuditStore::open(&ws.audit_db())
        .await
        .unwrap();
    let mut planted = Vec::new();
    for id in &ids {
        planted.push(planted_row(run, id, "tagger", "tags", Some("+seen")));
        planted.push(planted_row(run, id, "casewarden", "summary", None));
    }
    store.append(&planted).await.unwrap();
    store.close().await;
    // Before the crash: cases 0 and 1 were tagged, and case 1's comment was posted.
    let client = client(&sim);
    for id in &ids[..2] {
        let tag = json!({"tags": {"add": ["seen"], "delete": []}});
        client.update_case(id, &tag).await.unwrap().unwrap();
    }
    let posted = format!("casewarden changed this case:\n- tags: +seen\n\n(casewarden pass {run})");
    client.add_comment(&ids[1], &posted).await.unwrap();

    assert_exit(&ws.run(&["once"]).await, 0);
    let rows = ws.audit(Filter::default()).await;
    let summary = |id: &str| {
        (rows.iter())
            .find(|r| r.case_id == id && r.field == "summary" && r.planned_seq.is_some())
            .map(|r| (r.outcome, r.error.clone(), r.reason.clone()))
            .unwrap()
    };
    let s = sim.state();
    let texts = |id: &str| -> Vec<String> {
        s.comments
            .get(id)
            .map(|c| {
                c.iter()
                    .map(|c| c["comment"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    // Case 0: tagged, its comment lost: posted now, from the applied change.
    let (outcome, _, reason) = summary(&ids[0]);
    assert_eq!(outcome, "applied");
    assert!(reason.starts_with("posted after the pass"), "{reason}");
    let zero = texts(&ids[0]);
    assert_eq!(zero.len(), 1, "{zero:?}");
    assert!(
        zero[0].starts_with("casewarden changed this case:\n- tags: +seen (rule tagger) — because")
            && zero[0].ends_with(&format!("(casewarden pass {run})")),
        "{zero:?}"
    );
    // Case 1: the comment is there: applied, not posted again.
    assert_eq!(summary(&ids[1]).0, "applied");
    assert_eq!(texts(&ids[1]).len(), 1);
    // Case 2: the change never went out: no comment, and the row says why.
    let (outcome, error, _) = summary(&ids[2]);
    assert_eq!(outcome, "skipped");
    assert!(error.unwrap().contains("none of the pass's changes"));
    assert!(texts(&ids[2]).is_empty());
}

/// All of a real server's ways at once: a listing 5 s behind, half the updates answered
/// 502 after they were applied, every write answered after 5 s against a 1 s timeout, a
/// person's edits just before the pass, and a case that is not UTF-8.
#[tokio::test(flavor = "multi_thread")]
async fn all_real_server_faults_at_once_change_each_case_once_and_overwrite_no_one() {
    let mut opts = sim_options(40);
    let bad = start(opts.clone()).await.state().cases[3]["_id"]
        .as_str()
        .unwrap()
        .to_string();
    opts.faults.list_lag_ms = 5_000;
    opts.faults.apply_then_fail = 0.5;
    opts.faults.slow_write_answers_ms = 5_000;
    opts.faults.invalid_utf8_case = Some(bad.clone());
    let sim = start(opts).await;
    let (edited, targets) = edit_before_the_pass(&sim, 10);
    let ws = workspace(
        &sim,
        TO_HIGH,
        "timeout_secs = 1\nmax_attempts = 3\nretry_base_ms = 20",
    );
    for _ in 0..2 {
        assert_exit(&ws.run(&["once"]).await, 0);
    }
    let rows = ws.audit(Filter::default()).await;
    let changed = changed_by_api(&sim, Some("priority"));
    let expected: std::collections::HashSet<String> =
        targets.into_iter().filter(|id| *id != bad).collect();
    assert_eq!(changed, expected, "each target changed; the bad case never");
    let s = sim.state();
    assert!(
        s.update_calls.values().all(|n| *n == 1),
        "{:?}",
        s.update_calls
    );
    for id in &edited {
        assert_eq!(
            s.case(id).unwrap()["priority"],
            "Critical",
            "{id} overwritten"
        );
    }
    assert!(
        outcomes(&rows, "priority").all(|r| r.outcome == "applied" || r.outcome == "skipped"),
        "no failed or unknown row: {rows:?}"
    );
    assert!(
        rows.iter()
            .any(|r| r.field == "case" && r.case_id == bad && r.reason.contains("invalid UTF-8")),
        "the bad case is named"
    );
}
