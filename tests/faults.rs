//! Faults: a flaky, slow, rate-limiting server, one that goes away, a daemon killed at
//! random moments, and an audit database someone else holds locked. After each, the
//! server's history and the audit log must agree.

use std::collections::HashSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use casewarden::audit::{AuditStore, EventRow, Filter, Verification};
use casewarden::sim::{RedirectFault, Simulator};
use serde_json::json;

use crate::common::*;

pub const TAG_ALL: &str =
    "const RULE = #{ name: \"tag-all\" };\nfn evaluate(c) { add_tag(\"seen\", \"test\"); }\n";
pub const GUARD_OFF: &str =
    "max_change_fraction = 1.0\ncomment_changes = false\nmax_changes_per_run = 100000";

/// Cases whose history holds an API change of the tag the rule adds.
pub fn tagged_by_api(sim: &Simulator) -> HashSet<String> {
    changed_by_api(sim, Some("tags"))
}

/// Every change the server saw has an `applied` row; every `applied` row is a change
/// the server saw; every planned row is settled; no change was applied twice.
pub fn assert_agreement(sim: &Simulator, rows: &[EventRow]) {
    let server = tagged_by_api(sim);
    let applied: HashSet<String> = rows
        .iter()
        .filter(|r| r.outcome == "applied")
        .map(|r| r.case_id.clone())
        .collect();
    let missing: Vec<_> = server.difference(&applied).collect();
    let phantom: Vec<_> = applied.difference(&server).collect();
    assert!(
        missing.is_empty(),
        "changed on the server without an applied row: {missing:?}"
    );
    assert!(
        phantom.is_empty(),
        "applied rows for changes the server never saw: {phantom:?}"
    );
    let settled: HashSet<i64> = rows.iter().filter_map(|r| r.planned_seq).collect();
    for r in rows.iter().filter(|r| r.outcome == "planned" && !r.dry_run) {
        assert!(
            settled.contains(&r.seq),
            "planned row {} has no outcome",
            r.seq
        );
    }
    let state = sim.state();
    for c in state.cases.iter() {
        let id = c["_id"].as_str().unwrap();
        let n = state.api_changes(id).len();
        assert!(n <= 1, "{id} was changed {n} times");
        let logged = rows
            .iter()
            .filter(|r| r.case_id == id && r.outcome == "applied" && r.field != "summary")
            .count();
        assert!(logged <= 1, "{id} is recorded applied {logged} times");
    }
}

pub fn workspace(sim: &Simulator, extra: &str) -> Workspace {
    Workspace::new(
        &sim.url,
        "legacy",
        &format!("{GUARD_OFF}\n{extra}"),
        Some(&[("all.rhai", TAG_ALL)]),
    )
}

/// Replaces the workspace's timeout and retry settings with `extra`.
pub fn set_stellar(ws: &Workspace, extra: &str) {
    ws.edit_config(
        "timeout_secs = 5\nmax_attempts = 3\nretry_base_ms = 20",
        extra,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn flaky_and_slow_server_the_log_and_the_history_agree() {
    let mut opts = sim_options(150);
    opts.faults.error_rate = 0.2;
    let sim = start(opts).await;
    let ws = workspace(&sim, "");
    // A 503 may come from a gateway after the server applied: such an update is sent
    // again only once settle_after_secs (at least 2 x timeout_secs) have passed.
    set_stellar(
        &ws,
        "timeout_secs = 1\nmax_attempts = 2\nretry_base_ms = 10\nsettle_after_secs = 2",
    );
    let out = ws.run(&["once"]).await;
    assert!(
        matches!(out.status.code(), Some(0) | Some(1)),
        "{}",
        stdout(&out)
    );
    assert_agreement(&sim, &ws.audit(Filter::default()).await);

    // Updates are applied but their answers come after the client's timeout: reading the
    // case back must turn those into `applied`, not `failed`.
    sim.state().faults.error_rate = 0.0;
    sim.state().faults.slow_write_answers_ms = 1500;
    let out = ws.run(&["once"]).await;
    assert!(
        matches!(out.status.code(), Some(0) | Some(1)),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("reading the case back shows it was applied"),
        "{}",
        stderr(&out)
    );
    sim.state().faults.slow_write_answers_ms = 0;
    let rows = ws.audit(Filter::default()).await;
    assert_agreement(&sim, &rows);
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let out = ws.run(&["once"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_agreement(&sim, &ws.audit(Filter::default()).await);
    assert_eq!(
        tagged_by_api(&sim).len(),
        150,
        "a clean pass finishes the job"
    );
}

/// A comment is never re-sent (it is not idempotent), so when its answer is lost the
/// case's comments tell whether it landed: `applied` exactly when the server holds it.
#[tokio::test(flavor = "multi_thread")]
async fn a_comment_whose_answer_is_lost_is_checked_not_resent() {
    let sim = start(sim_options(16)).await;
    let rule = "const RULE = #{ name: \"note-all\" };\nfn evaluate(c) { add_tag(\"seen\", \"test\"); comment(\"looked at\"); }\n";
    let ws = Workspace::new(&sim.url, "legacy", GUARD_OFF, Some(&[("note.rhai", rule)]));
    set_stellar(
        &ws,
        "timeout_secs = 1\nmax_attempts = 2\nretry_base_ms = 10",
    );
    sim.state().faults.slow_write_answers_ms = 1500;
    let out = ws.run(&["once"]).await;
    assert_exit(&out, 0);
    assert!(
        stderr(&out).contains("the case's comments show it was posted"),
        "{}",
        stderr(&out)
    );
    let rows = ws.audit(Filter::default()).await;
    let run_id = rows[0].run_id.clone();
    let s = sim.state();
    for case in s.cases.iter() {
        let id = case["_id"].as_str().unwrap();
        let comments = &s.comments[id];
        assert_eq!(comments.len(), 1, "{id}: {comments:?}");
        assert_eq!(
            comments[0]["comment"],
            format!("[note-all] looked at\n\n(casewarden pass {run_id})")
        );
        let outcome = |field: &str| {
            rows.iter()
                .filter(|r| r.case_id == id && r.field == field && r.outcome != "planned")
                .map(|r| r.outcome.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(outcome("comment"), ["applied"], "{id}");
        assert_eq!(outcome("tags"), ["applied"], "{id}");
    }
}

/// After a crash, a planned comment is settled by reading the case's comments: `applied`
/// if this pass's comment is there, `failed` if not.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_before_a_comment_is_reconciled_from_the_case_comments() {
    let sim = start(sim_options(5)).await;
    let noop = "const RULE = #{ name: \"noop\" };\nfn evaluate(c) { }\n";
    let ws = Workspace::new(&sim.url, "legacy", GUARD_OFF, Some(&[("noop.rhai", noop)]));
    let ids: Vec<String> = sim.state().cases[..2]
        .iter()
        .map(|c| c["_id"].as_str().unwrap().to_string())
        .collect();
    std::fs::create_dir(ws.dir.path().join("state")).unwrap();
    let store = AuditStore::open(&ws.audit_db()).await.unwrap();
    let planned = |case_id: &str| casewarden::audit::NewEvent {
        run_id: "20261125T000000Z-crashed".into(),
        rule: "sla-breach".into(),
        rule_hash: "ab".repeat(32),
        case: casewarden::audit::CaseRef::Case {
            id: case_id.into(),
            ticket_id: None,
            tenant: None,
        },
        field: "comment".into(),
        old: None,
        new: Some("SLA breach".into()),
        reason: String::new(),
        dry_run: false,
        outcome: casewarden::audit::Outcome::Planned,
        error: None,
        http_status: None,
        planned_seq: None,
    };
    store
        .append(&[planned(&ids[0]), planned(&ids[1])])
        .await
        .unwrap();
    store.close().await;
    // The first case's comment reached the server before the crash; the second's did not.
    client(&sim)
        .add_comment(
            &ids[0],
            "[sla-breach] SLA breach\n\n(casewarden pass 20261125T000000Z-crashed)",
        )
        .await
        .unwrap();
    let out = ws.run(&["once"]).await;
    assert_exit(&out, 0);
    let rows = ws.audit(Filter::default()).await;
    let settled = |id: &str| {
        rows.iter()
            .find(|r| r.case_id == id && r.planned_seq.is_some())
            .map(|r| (r.outcome.to_string(), r.error.clone()))
            .unwrap()
    };
    assert_eq!(settled(&ids[0]), ("applied".to_string(), None));
    assert_eq!(
        settled(&ids[1]),
        (
            "skipped".to_string(),
            Some(
                "interrupted: the comment is not on the case; the next pass decides again"
                    .to_string()
            )
        )
    );
    assert_eq!(sim.state().comments[&ids[0]].len(), 1, "nothing re-sent");
    assert!(
        !sim.state().comments.contains_key(&ids[1]),
        "nothing re-sent"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_and_short_lived_tokens_are_ridden_out() {
    let mut opts = sim_options(120);
    opts.token_ttl_secs = 1;
    opts.faults.rate_limit_every = 25;
    opts.faults.rate_limit_burst = 2;
    opts.faults.retry_after_secs = 1;
    opts.faults.latency_ms = 10;
    let sim = start(opts).await;
    let ws = workspace(&sim, "");
    set_stellar(
        &ws,
        "timeout_secs = 5\npage_size = 20\nmax_attempts = 4\nretry_base_ms = 10",
    );
    let out = ws.run(&["once"]).await;
    assert_exit(&out, 0);
    {
        let s = sim.state();
        assert!(s.requests().iter().filter(|r| r.status == 429).count() >= 4);
        assert!(s.issued_tokens.len() >= 2);
    }
    assert_eq!(tagged_by_api(&sim).len(), 120);
    assert_agreement(&sim, &ws.audit(Filter::default()).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_goes_away_mid_pass_and_comes_back() {
    let mut opts = sim_options(200);
    opts.faults.latency_ms = 10;
    let sim = start(opts).await;
    let ws = workspace(&sim, "");
    set_stellar(
        &ws,
        "timeout_secs = 2\nmax_in_flight = 2\nmax_attempts = 2\nretry_base_ms = 10\nsettle_after_secs = 4",
    );
    let child = tokio::spawn({
        let config = ws.config();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_casewarden"))
                .args(["--config", config.to_str().unwrap(), "once"])
                .output()
                .await
                .unwrap()
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while sim.state().write_requests() < 30 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sim.state().faults.down = true;
    let out = child.await.unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert_agreement(&sim, &ws.audit(Filter::default()).await);
    sim.state().faults.down = false;
    // An update whose answer was lost as the server went (a slow machine's late answer is
    // one) stays in doubt, never re-sent, until settle_after_secs have passed.
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    let out = ws.run(&["once"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(tagged_by_api(&sim).len(), 200);
    assert_agreement(&sim, &ws.audit(Filter::default()).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_loop_loses_nothing_and_applies_nothing_twice() {
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261125);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut opts = sim_options(300);
    opts.faults.latency_ms = 3;
    let sim = start(opts).await;
    let ws = workspace(&sim, "schedule = \"* * * * * *\"");
    set_stellar(
        &ws,
        "timeout_secs = 5\nmax_in_flight = 4\npage_size = 50\nmax_attempts = 3\nretry_base_ms = 20",
    );
    let mut kills = 0;
    while kills < 20 {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_casewarden"))
            .args(["--config", ws.config().to_str().unwrap(), "run"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let before = sim.state().write_requests();
        let wait = Duration::from_millis(rng.u64(50..1200));
        tokio::time::sleep(wait).await;
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        kills += 1;
        if tagged_by_api(&sim).len() == 300 && sim.state().write_requests() == before {
            break;
        }
    }
    // A last clean start reconciles whatever the final kill left in flight.
    ws.edit_config("schedule = \"* * * * * *\"", "schedule = \"0 0 0 1 1 *\"");
    let out = ws.run(&["once", "--dry-run"]).await;
    assert_eq!(out.status.code(), Some(0), "seed {seed}: {}", stderr(&out));
    let rows = ws.audit(Filter::default()).await;
    assert_agreement(&sim, &rows);
    let store = AuditStore::open(&ws.audit_db()).await.unwrap();
    assert!(
        matches!(store.verify().await.unwrap(), Verification::Intact { .. }),
        "seed {seed}"
    );
    assert!(kills >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_locked_audit_db_means_no_change_is_sent_until_it_is_free() {
    let sim = start(sim_options(20)).await;
    let ws = workspace(&sim, "");
    ws.edit_config(
        "path = \"state/audit.db\"",
        "path = \"state/audit.db\"\nbusy_timeout_secs = 1",
    );
    let out = ws.run(&["once", "--dry-run"]).await;
    assert_eq!(out.status.code(), Some(0));
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect(&format!("sqlite://{}", ws.audit_db().display()))
        .await
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut *conn)
        .await
        .unwrap();
    let out = ws.run(&["once"]).await;
    assert_ne!(out.status.code(), Some(0));
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(text.contains("audit") && text.contains("locked"), "{text}");
    assert_eq!(
        sim.state().write_requests(),
        0,
        "a change went out that could not be recorded"
    );
    sqlx::query("ROLLBACK").execute(&mut *conn).await.unwrap();
    drop(conn);
    pool.close().await;
    let out = ws.run(&["once"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(tagged_by_api(&sim).len(), 20);
    assert_agreement(&sim, &ws.audit(Filter::default()).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_audit_db_means_no_change_is_sent_until_there_is_room() {
    let sim = start(sim_options(5000)).await;
    let ws = workspace(&sim, "");
    ws.edit_config(
        "path = \"state/audit.db\"",
        "path = \"state/audit.db\"\nmax_size_mb = 1",
    );
    let out = ws.run(&["once"]).await;
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("full"), "{text}");
    assert_eq!(
        sim.state().write_requests(),
        0,
        "a change went out that could not be recorded"
    );
    ws.edit_config("max_size_mb = 1", "max_size_mb = 100");
    let out = ws.run(&["once"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(tagged_by_api(&sim).len(), 5000);
    assert_agreement(&sim, &ws.audit(Filter::default()).await);

    // The log fills up while outcomes are being written: sending stops at once, and the
    // next start reconciles what was in flight.
    let sim = start(sim_options(1200)).await;
    let ws = workspace(&sim, "");
    ws.edit_config(
        "path = \"state/audit.db\"",
        "path = \"state/audit.db\"\nmax_size_mb = 1",
    );
    let out = ws.run(&["once"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let sent = sim.state().write_requests();
    assert!(
        sent > 0 && sent < 1200,
        "{sent} updates sent after the log filled up"
    );
    ws.edit_config("max_size_mb = 1", "max_size_mb = 100");
    let out = ws.run(&["once", "--dry-run"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_agreement(&sim, &ws.audit(Filter::default()).await);
}

/// Starts `once` on the workspace's config as a child process.
fn spawn_once(ws: &Workspace, extra: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_casewarden"))
        .args(["--config", ws.config().to_str().unwrap(), "once"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// The 120 slow cases two racing `once` runs share.
pub async fn race_sim() -> Simulator {
    let mut opts = sim_options(120);
    opts.faults.latency_ms = 3;
    start(opts).await
}

/// Starts two `once` runs on `ws` (comments on) `gap` ms apart: one passes, the other
/// passes after it or is refused, and every case got one tag and one comment.
pub async fn race_two_onces(sim: &Simulator, ws: &Workspace, gap: u64) {
    ws.edit_config("comment_changes = false", "comment_changes = true");
    let first = spawn_once(ws, &["--wait", "0"]);
    tokio::time::sleep(Duration::from_millis(gap)).await;
    let second = spawn_once(ws, &["--wait", "0"]);
    let (a, b) = (
        first.wait_with_output().await.unwrap(),
        second.wait_with_output().await.unwrap(),
    );
    let codes = [a.status.code(), b.status.code()];
    assert!(
        codes.contains(&Some(0)),
        "gap {gap}: {codes:?} {}",
        stderr(&b)
    );
    for o in [&a, &b] {
        assert!(
            matches!(o.status.code(), Some(0) | Some(4)),
            "gap {gap}: {}",
            stderr(o)
        );
        if o.status.code() == Some(4) {
            assert!(
                stderr(o).contains("claimed by another casewarden pass"),
                "{}",
                stderr(o)
            );
        }
    }
    assert_eq!(tagged_by_api(sim).len(), 120, "gap {gap}");
    let state = sim.state();
    for (id, comments) in &state.comments {
        assert_eq!(
            comments.len(),
            1,
            "gap {gap}: {id} got {} comments",
            comments.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_once_runs_started_together_apply_each_change_once() {
    for gap in [0u64, 3, 7, 12, 20, 30, 45, 60, 80, 100] {
        let sim = race_sim().await;
        let ws = workspace(&sim, "");
        race_two_onces(&sim, &ws, gap).await;
        assert_agreement(&sim, &ws.audit(Filter::default()).await);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redirects_are_errors_never_successes() {
    let cases = [
        // A same-host 302 on an update would turn it into a GET of the list.
        ("/cases", Some("POST"), 302, "/connect/api/v1/cases", 1),
        // A 307 would re-send the update, or hand the key, to another host.
        (
            "/cases",
            Some("POST"),
            307,
            "https://elsewhere.example.com/x",
            1,
        ),
        (
            "/access_token",
            None,
            307,
            "https://elsewhere.example.com/token",
            3,
        ),
        (
            "/cases",
            Some("GET"),
            307,
            "https://elsewhere.example.com/cases",
            1,
        ),
    ];
    for (suffix, method, status, location, code) in cases {
        let mut opts = sim_options(30);
        opts.faults.redirect = Some(RedirectFault {
            status,
            location: location.into(),
            method: method.map(str::to_string),
            path_suffix: suffix.into(),
        });
        let sim = start(opts).await;
        let ws = workspace(&sim, "");
        let out = ws.run(&["once"]).await;
        let mut text = format!("{}{}", stdout(&out), stderr(&out));
        assert_eq!(out.status.code(), Some(code), "{status} {suffix}: {text}");
        assert!(!text.contains("status ok"), "{text}");
        if method == Some("POST") {
            let rows = ws.audit(Filter::default()).await;
            assert!(rows.iter().all(|r| r.outcome != "applied"), "{rows:#?}");
            text = rows.iter().filter_map(|r| r.error.clone()).collect();
        }
        assert!(text.contains(&format!("redirect to {location}")), "{text}");
        assert!(tagged_by_api(&sim).is_empty());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn late_answers_are_read_back_not_resent_and_cut_bodies_retried() {
    let mut opts = sim_options(40);
    opts.faults.slow_write_answers_ms = 1500;
    opts.faults.truncate_next_lists = 1;
    opts.faults.token_fail_next = 1;
    let sim = start(opts).await;
    let ws = workspace(&sim, "");
    set_stellar(
        &ws,
        "timeout_secs = 1\nmax_attempts = 3\nretry_base_ms = 20\nmax_in_flight = 8",
    );
    let out = ws.run(&["once"]).await;
    assert_exit(&out, 0);
    // One update request per case: none was sent again after its answer came late.
    {
        let state = sim.state();
        assert_eq!(state.update_calls.len(), 40);
        assert!(
            state.update_calls.values().all(|n| *n == 1),
            "{:?}",
            state.update_calls
        );
    }
    assert_agreement(&sim, &ws.audit(Filter::default()).await);
    assert_eq!(tagged_by_api(&sim).len(), 40);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_case_a_person_changed_after_the_listing_is_not_overwritten() {
    let mut opts = sim_options(60);
    opts.faults.edit_before_read = Some((
        "alice@example.com".into(),
        "priority".into(),
        json!("Critical"),
    ));
    let sim = start(opts).await;
    // Only cases listed Low or Medium are changed: the person's Critical is a third value.
    let rule = "const RULE = #{ name: \"to-high\" };\nfn evaluate(c) { if c.priority == \"Low\" || c.priority == \"Medium\" { set_priority(\"High\", \"test\"); } }\n";
    let ws = Workspace::new(&sim.url, "legacy", GUARD_OFF, Some(&[("high.rhai", rule)]));
    assert_exit(&ws.run(&["once"]).await, 0);
    {
        let state = sim.state();
        assert!(
            state
                .cases
                .iter()
                .all(|c| state.api_changes(c["_id"].as_str().unwrap()).is_empty())
        );
        assert!(
            state
                .cases
                .iter()
                .all(|c| c["priority"] == "Critical" || c["priority"] == "High")
        );
    }
    let rows = ws.audit(Filter::default()).await;
    assert!(rows.iter().all(|r| r.outcome != "applied"));
    assert!(rows.iter().any(|r| {
        r.error
            .as_deref()
            .is_some_and(|e| e.contains("overridden: priority is now \"Critical\""))
    }));
    // The next pass sees the person's value, and a person set back is left alone.
    assert_exit(&ws.run(&["once"]).await, 0);
    assert!(
        sim.state()
            .cases
            .iter()
            .all(|c| c["priority"] == "Critical" || c["priority"] == "High")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn each_case_is_read_by_id_right_before_its_update() {
    let sim = start(sim_options(150)).await;
    let ws = workspace(&sim, "");
    set_stellar(&ws, "timeout_secs = 5\nmax_in_flight = 4");
    assert_exit(&ws.run(&["once"]).await, 0);
    assert_agreement(&sim, &ws.audit(Filter::default()).await);
    assert_eq!(tagged_by_api(&sim).len(), 150);
    let state = sim.state();
    assert!(
        state
            .requests()
            .iter()
            .all(|r| !r.query.contains("ticket_id=")),
        "no listing stands in for the read"
    );
    for case in &state.cases {
        let id = case["_id"].as_str().unwrap();
        let at = |method: &str| {
            (state.requests().iter())
                .position(|r| {
                    r.method == method
                        && (r.path.ends_with(id) || r.query.contains(&format!("id={id}")))
                })
                .unwrap_or_else(|| panic!("no {method} for {id}"))
        };
        let (read, update) = (at("GET"), at("POST"));
        assert!(read < update, "{id}: read {read}, update {update}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kill_while_slow_updates_are_in_flight_then_an_immediate_restart_agree() {
    for seed in 0..10u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut opts = sim_options(40);
        // The server is still applying each update for a while after it arrived.
        opts.faults.slow_write_apply_ms = 600;
        let sim = start(opts).await;
        let ws = workspace(&sim, "");
        set_stellar(
            &ws,
            "timeout_secs = 2\nmax_attempts = 2\nretry_base_ms = 20\nmax_in_flight = 8",
        );
        let mut child = spawn_once(&ws, &[]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while sim
            .state()
            .requests()
            .iter()
            .all(|r| r.method != "POST" || !r.path.ends_with("/cases"))
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(0..400))).await;
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        let out = ws.run(&["once"]).await;
        assert!(
            matches!(out.status.code(), Some(0)),
            "seed {seed}: {}",
            stderr(&out)
        );
        // Whatever is still open settles on the next pass.
        let out = ws.run(&["once"]).await;
        assert_exit(&out, 0);
        let rows = ws.audit(Filter::default()).await;
        assert_agreement(&sim, &rows);
        assert_eq!(tagged_by_api(&sim).len(), 40, "seed {seed}");
        let state = sim.state();
        let twice: Vec<_> = state.update_calls.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "seed {seed}: updates sent twice: {twice:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_that_prove_nothing_are_read_back_and_unknown_stays_unknown() {
    // A 200 whose body is not the case: read back, and `applied` where it holds.
    let mut opts = sim_options(20);
    opts.faults.garble_write_answers = true;
    let sim = start(opts).await;
    let ws = workspace(&sim, "");
    assert_exit(&ws.run(&["once"]).await, 0);
    let rows = ws.audit(Filter::default()).await;
    assert_agreement(&sim, &rows);
    assert_eq!(rows.iter().filter(|r| r.outcome == "applied").count(), 20);

    // A lost answer whose read-back fails too: `unknown`, not `failed`; never re-sent while
    // open; settled by a later pass once the case can be read.
    let mut opts = sim_options(20);
    opts.faults.slow_write_answers_ms = 1500;
    opts.faults.fail_reads_after_updates = true;
    let sim = start(opts).await;
    let ws = workspace(&sim, "");
    set_stellar(
        &ws,
        "timeout_secs = 1\nmax_attempts = 2\nretry_base_ms = 20",
    );
    let out = ws.run(&["once"]).await;
    assert_exit(&out, 1);
    let rows = ws.audit(Filter::default()).await;
    assert!(rows.iter().all(|r| r.outcome != "failed"), "{rows:#?}");
    assert!(rows.iter().any(|r| r.outcome == "unknown"));
    sim.state().faults.fail_reads_after_updates = false;
    sim.state().faults.slow_write_answers_ms = 0;
    // Within the settle window the open changes are left alone...
    let out = ws.run(&["once"]).await;
    assert!(
        matches!(out.status.code(), Some(0) | Some(1)),
        "{}",
        stderr(&out)
    );
    assert!(sim.state().update_calls.values().all(|n| *n == 1));
    // ...and after it they are settled from the cases.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_exit(&ws.run(&["once"]).await, 0);
    let rows = ws.audit(Filter::default()).await;
    assert_agreement(&sim, &rows);
    assert!(sim.state().update_calls.values().all(|n| *n == 1));
    let applied = rows.iter().filter(|r| r.outcome == "applied").count();
    assert_eq!(applied, 20, "{rows:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pass_past_its_deadline_stops_sending_and_says_what_it_did_not_send() {
    let mut opts = sim_options(60);
    opts.faults.latency_ms = 150;
    let sim = start(opts).await;
    let ws = workspace(&sim, "pass_timeout_secs = 1");
    set_stellar(
        &ws,
        "timeout_secs = 5\nmax_attempts = 3\nretry_base_ms = 20\nmax_in_flight = 1",
    );
    assert_exit(&ws.run(&["once"]).await, 0);
    let rows = ws.audit(Filter::default()).await;
    assert_agreement(&sim, &rows);
    let late = rows
        .iter()
        .filter(|r| {
            r.error
                .as_deref()
                .is_some_and(|e| e.contains("daemon.pass_timeout_secs"))
        })
        .count();
    assert!(late > 0 && tagged_by_api(&sim).len() + late == 60, "{late}");
}
