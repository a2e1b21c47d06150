//! One pass end to end through `casewarden once` against the simulator: what the server
//! ends up holding, what the audit log says, and what the summary prints.

use std::collections::HashSet;
use std::time::Duration;

use casewarden::audit::Filter;
use casewarden::sim::Simulator;
use serde_json::{Value, json};

use crate::common::*;

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
const PERSON: &str = "826ef6979788454297c85cbba4a51c08";

/// Cases each example rule should change in a known way, plus cases none should touch.
fn planted() -> Vec<Value> {
    let now = casewarden::now_ms();
    let base = |id: &str, ticket: i64, status: &str, priority: &str| {
        json!({
            "_id": id, "ticket_id": ticket, "name": format!("case {id}"), "status": status,
            "priority": priority, "assignee": PERSON, "tags": [], "created_at": now - 2 * DAY,
            "modified_at": now - 2 * DAY + ticket, "acknowledged": now - 2 * DAY + 60_000, "closed": 0,
            "case_score": 50, "cust_id": "", "metadata": {"entity_id": "asset,,10.30.0.1"},
            "history": [{"field": "created_at", "timestamp": now - 2 * DAY, "user": "System"}],
        })
    };
    let mut esc = base("esc", 1, "New", "Medium");
    esc["created_at"] = json!(now - 30 * HOUR);
    let mut sla = base("sla", 2, "New", "Critical");
    sla["created_at"] = json!(now - 2 * HOUR);
    sla["acknowledged"] = json!(0);
    let mut ent = base("ent", 3, "In Progress", "Medium");
    ent["metadata"] = json!({"entity_id": "asset,,10.10.5.5"});
    let mut asg = base("asg", 4, "In Progress", "Medium");
    asg["assignee"] = json!("");
    asg["tags"] = json!(["pci"]);
    let mut stale = base("stale", 5, "In Progress", "Low");
    stale["created_at"] = json!(now - 90 * DAY);
    stale["case_score"] = json!(5);
    stale["history"] = json!([{"field": "status", "from": "New", "to": "In Progress", "timestamp": now - 60 * DAY, "user": PERSON}]);
    // casewarden itself made the last change: that is not activity.
    stale["modified_by"] = json!(USER);
    let resolved = base("done", 6, "Resolved", "Low");
    let mut young = base("young", 7, "New", "Medium");
    young["created_at"] = json!(now - 2 * HOUR);
    let mut quiet_low = base("quiet", 8, "In Progress", "Low");
    quiet_low["case_score"] = json!(80);
    vec![esc, sla, ent, asg, stale, resolved, young, quiet_low]
}

async fn planted_sim() -> Simulator {
    let sim = start(sim_options(0)).await;
    for c in planted() {
        sim.state().put_case(c);
    }
    sim
}

fn api_changes(sim: &Simulator, id: &str) -> Vec<Value> {
    sim.state().api_changes(id)
}

#[tokio::test(flavor = "multi_thread")]
async fn example_rules_change_exactly_the_cases_they_should_and_a_second_pass_nothing() {
    let sim = planted_sim().await;
    let ws = Workspace::new(&sim.url, "legacy", "", None);
    let out = ws.run(&["once"]).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    {
        let s = sim.state();
        let esc = s.case("esc").unwrap();
        assert_eq!(esc["priority"], "High");
        assert_eq!(esc["tags"], json!(["auto-escalated"]));
        assert_eq!(s.case("sla").unwrap()["tags"], json!(["sla-breach"]));
        assert!(s.comments["sla"].iter().any(|c| {
            c["comment"]
                .as_str()
                .unwrap()
                .contains("SLA breach: this Critical case")
        }));
        assert_eq!(s.case("ent").unwrap()["tags"], json!(["dmz"]));
        let tier2 = s
            .users
            .iter()
            .find(|u| u.email == "soc-tier2@example.com")
            .unwrap()
            .user_id
            .clone();
        assert_eq!(s.case("asg").unwrap()["assignee"], json!(tier2));
        let stale = s.case("stale").unwrap();
        assert_eq!(stale["status"], "Resolved");
        assert!(stale["closed"].as_i64().unwrap() > 0);
        // Every updated case got one comment explaining the change.
        for id in ["esc", "ent", "asg", "stale"] {
            let text = s.comments[id][0]["comment"].as_str().unwrap();
            assert!(
                text.starts_with("casewarden changed this case:"),
                "{id}: {text}"
            );
        }
        let api_user = s.api_user_id().to_string();
        drop(s);
        for id in ["done", "young", "quiet"] {
            assert!(api_changes(&sim, id).is_empty(), "{id} was changed");
        }
        assert!(
            api_changes(&sim, "esc")
                .iter()
                .all(|h| h["user"] == json!(api_user))
        );
    }
    // The summary comments' rows (one per updated case) are written ahead like the changes.
    let (summaries, applied): (Vec<_>, Vec<_>) = ws
        .audit(Filter {
            outcome: Some(casewarden::audit::Outcome::Applied),
            ..Filter::default()
        })
        .await
        .into_iter()
        .partition(|r| r.field == "summary");
    let (planned_summaries, planned): (Vec<_>, Vec<_>) = ws
        .audit(Filter {
            outcome: Some(casewarden::audit::Outcome::Planned),
            ..Filter::default()
        })
        .await
        .into_iter()
        .partition(|r| r.field == "summary");
    let mut summarized: Vec<&str> = summaries.iter().map(|r| r.case_id.as_str()).collect();
    summarized.sort();
    assert_eq!(summarized, ["asg", "ent", "esc", "sla", "stale"]);
    assert_eq!(planned_summaries.len(), 5);
    assert_eq!(applied.len(), planned.len());
    assert_eq!(applied.len(), 8, "{applied:#?}");
    assert!(applied.iter().all(|a| {
        planned
            .iter()
            .any(|p| Some(p.seq) == a.planned_seq && p.seq < a.seq)
    }));
    assert!(text.contains("escalate-aged-new"), "{text}");

    let writes = sim.state().write_requests();
    let out = ws.run(&["once"]).await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        sim.state().write_requests(),
        writes,
        "the second pass changed something: {}",
        stdout(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_sends_nothing_and_prints_the_plan_a_real_run_applies() {
    let sim = planted_sim().await;
    let ws = Workspace::new(&sim.url, "legacy", "", None);
    let out = ws.run(&["once", "--dry-run"]).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(sim.state().write_requests(), 0);
    assert!(
        sim.state()
            .requests()
            .iter()
            .all(|r| r.method == "GET" || r.path.ends_with("/access_token"))
    );
    assert!(text.contains("DRY RUN"), "{text}");
    assert!(
        text.contains("case esc (ticket 1)") && text.contains("Medium -> High"),
        "{text}"
    );
    let planned: HashSet<(String, String, Option<String>)> = ws
        .audit(Filter::default())
        .await
        .into_iter()
        .inspect(|r| assert!(r.dry_run))
        .filter(|r| r.outcome == "planned")
        .map(|r| (r.case_id, r.field, r.new))
        .collect();
    let out = ws.run(&["once"]).await;
    assert_eq!(out.status.code(), Some(0));
    let applied: HashSet<(String, String, Option<String>)> = ws
        .audit(Filter {
            outcome: Some(casewarden::audit::Outcome::Applied),
            ..Filter::default()
        })
        .await
        .into_iter()
        .filter(|r| r.field != "summary")
        .map(|r| (r.case_id, r.field, r.new))
        .collect();
    assert_eq!(planned, applied);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_budget_defers_changes_to_later_passes_oldest_first() {
    let sim = planted_sim().await;
    let ws = Workspace::new(&sim.url, "legacy", "max_changes_per_run = 3", None);
    // One update at a time, so the order of the outcome rows is the order of the plan
    // (with more in flight, whichever answer comes first is recorded first).
    ws.edit_config("timeout_secs = 5", "timeout_secs = 5\nmax_in_flight = 1");
    let out = ws.run(&["once"]).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("change budget"), "{text}");
    let first: Vec<_> = ws
        .audit(Filter {
            outcome: Some(casewarden::audit::Outcome::Applied),
            ..Filter::default()
        })
        .await
        .into_iter()
        .filter(|r| r.field != "summary")
        .collect();
    assert!(!first.is_empty() && first.len() <= 3, "{first:#?}");
    // Oldest modified first: "esc" (ticket 1) has the oldest modified_at.
    assert_eq!(first[0].case_id, "esc");
    let deferred = ws
        .audit(Filter {
            outcome: Some(casewarden::audit::Outcome::Skipped),
            ..Filter::default()
        })
        .await;
    assert!(deferred.iter().any(|r| r.reason.contains("budget")));
    for _ in 0..6 {
        ws.run(&["once"]).await;
    }
    let all: Vec<_> = ws
        .audit(Filter {
            outcome: Some(casewarden::audit::Outcome::Applied),
            ..Filter::default()
        })
        .await
        .into_iter()
        .filter(|r| r.field != "summary")
        .collect();
    assert_eq!(all.len(), 8);
    assert_eq!(sim.state().case("stale").unwrap()["status"], "Resolved");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_halted_rule_takes_nothing_from_the_budget_the_precise_rules_go_ahead() {
    let mut opts = sim_options(100);
    opts.flavor = casewarden::config::ApiFlavor::V5;
    let sim = start(opts).await;
    let everything = "const RULE = #{ name: \"tag-everything\" };\nfn evaluate(c) { add_tag(\"oops\", \"misfire\"); }\n";
    let precise = "const RULE = #{ name: \"every-tenth\" };\nfn evaluate(c) { if c.ticket_id % 10 == 0 { add_tag(\"tenth\", \"precise\"); } }\n";
    let ws = Workspace::new(
        &sim.url,
        "v5",
        "max_changes_per_run = 20\ncomment_changes = false",
        Some(&[
            ("10-everything.rhai", everything),
            ("20-tenth.rhai", precise),
        ]),
    );
    let out = ws.run(&["once"]).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "the halt is trouble: {text}");
    assert!(!text.contains("change budget"), "{text}");
    let tagged = |tag: &str| {
        let s = sim.state();
        s.cases
            .iter()
            .filter(|c| c["tags"].as_array().unwrap().contains(&json!(tag)))
            .count()
    };
    assert_eq!(tagged("oops"), 0);
    assert_eq!(
        tagged("tenth"),
        10,
        "every precise change in the same pass: {text}"
    );
    let line = text.lines().find(|l| l.contains("every-tenth")).unwrap();
    let cols: Vec<&str> = line.split_whitespace().collect();
    // RULE SEEN EXEMPT MATCHED ERRORS APPLIED FAILED SKIPPED DEFERRED guard
    assert_eq!((cols[5], cols[8]), ("10", "0"), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_budget_is_shared_by_the_rules_and_what_waited_goes_first() {
    let sim = start(sim_options(60)).await;
    let greedy = "const RULE = #{ name: \"greedy\" };\nfn evaluate(c) { add_tag(\"g\"); }\n";
    let small = "const RULE = #{ name: \"small\" };\nfn evaluate(c) { if c.ticket_id % 20 == 0 { add_tag(\"s\"); } }\n";
    let ws = Workspace::new(
        &sim.url,
        "legacy",
        "max_changes_per_run = 10\nmax_change_fraction = 1.0\ncomment_changes = false",
        Some(&[("10-greedy.rhai", greedy), ("20-small.rhai", small)]),
    );
    ws.run(&["once"]).await;
    let tagged = |tag: &str| -> HashSet<String> {
        let s = sim.state();
        s.cases
            .iter()
            .filter(|c| c["tags"].as_array().unwrap().contains(&json!(tag)))
            .map(|c| c["_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        tagged("s").len(),
        3,
        "the small rule's three changes fit beside the greedy one's"
    );
    assert_eq!(tagged("g").len(), 7);
    // Rounds over the rules, oldest case first: three turns each, then greedy's four more.
    let oldest: HashSet<String> = {
        let s = sim.state();
        let mut all: Vec<(i64, String)> = s
            .cases
            .iter()
            .map(|c| {
                (
                    c["created_at"].as_i64().unwrap(),
                    c["_id"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        all.sort();
        all.into_iter().take(7).map(|(_, id)| id).collect()
    };
    assert_eq!(tagged("g"), oldest);
    let deferred: HashSet<String> = ws
        .audit(Filter::default())
        .await
        .into_iter()
        .filter(|r| r.reason.contains("deferred to the next pass"))
        .map(|r| r.case_id)
        .collect();
    assert_eq!(deferred.len(), 60 - 7);
    // A new case, older than every deferred one, does not jump the line.
    let mut early = sim.state().cases[0].clone();
    early["_id"] = json!("early");
    early["ticket_id"] = json!(9001);
    early["tags"] = json!([]);
    early["created_at"] = json!(1);
    early["modified_at"] = json!(casewarden::now_ms());
    sim.state().put_case(early);
    ws.run(&["once"]).await;
    assert!(!tagged("g").contains("early"), "what waited goes first");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_blast_radius_guard_halts_a_rule_that_hits_everything() {
    let sim = start(sim_options(60)).await;
    let everything = "const RULE = #{ name: \"tag-everything\" };\nfn evaluate(c) { add_tag(\"oops\", \"misfire\"); }\n";
    let ws = Workspace::new(
        &sim.url,
        "legacy",
        "",
        Some(&[("10-everything.rhai", everything)]),
    );
    let out = ws.run(&["once"]).await;
    let text = stdout(&out);
    // A halted rule is trouble a person should see: the pass is degraded, exit 1.
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("status degraded"), "{text}");
    assert_eq!(sim.state().write_requests(), 0);
    assert!(
        text.contains("HALTED") && text.contains("blast-radius guard halted it"),
        "{text}"
    );
    // Halted again in two more passes: its held-back changes are recorded once, and each
    // pass adds one note with the count.
    for _ in 0..2 {
        assert_eq!(ws.run(&["once"]).await.status.code(), Some(1));
    }
    let rows = ws.audit(Filter::default()).await;
    let halts: Vec<_> = rows
        .iter()
        .filter(|r| r.field == "rule" && r.new.as_deref() == Some("halted"))
        .collect();
    assert_eq!(halts.len(), 3, "{halts:?}");
    assert!(
        halts
            .iter()
            .all(|r| r.old.as_deref() == Some("60")
                && r.reason.contains("wanted to change 60 of 60"))
    );
    let skipped: Vec<_> = changes(rows)
        .into_iter()
        .filter(|r| r.field != "rule")
        .collect();
    assert_eq!(skipped.len(), 60);
    assert!(
        skipped
            .iter()
            .all(|r| r.outcome == "skipped" && r.reason.contains("blast-radius guard"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_updates_are_recorded_and_the_rest_applied() {
    let sim = planted_sim().await;
    sim.state().faults.fail_updates_for.insert("esc".into());
    let ws = Workspace::new(&sim.url, "legacy", "", None);
    let out = ws.run(&["once"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    // A 500 may be a gateway's after the server applied: read, the case still holds the
    // old values, so the changes stay in doubt until settle_after_secs have passed.
    let failed = ws
        .audit(Filter {
            outcome: Some(casewarden::audit::Outcome::Unknown),
            ..Filter::default()
        })
        .await;
    assert_eq!(failed.len(), 2);
    assert!(failed.iter().all(|r| {
        r.case_id == "esc"
            && r.http_status == Some(500)
            && r.error.as_deref().unwrap().contains("HTTP 500")
            && r.error
                .as_deref()
                .unwrap()
                .contains("stellar.settle_after_secs")
    }));
    assert_eq!(sim.state().case("ent").unwrap()["tags"], json!(["dmz"]));
    assert_eq!(sim.state().case("esc").unwrap()["priority"], "Medium");
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_expiring_mid_pass_are_renewed() {
    let mut opts = sim_options(150);
    opts.token_ttl_secs = 1;
    opts.faults.latency_ms = 120;
    let sim = start(opts).await;
    let ws = Workspace::new(&sim.url, "legacy", "max_change_fraction = 1.0", None);
    ws.edit_config("timeout_secs = 5", "timeout_secs = 5\npage_size = 15");
    let out = ws.run(&["once"]).await;
    assert_exit(&out, 0);
    assert!(sim.state().issued_tokens.len() >= 2);
    assert!(
        stdout(&out).contains("150 case(s) seen"),
        "{}",
        stdout(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_case_does_not_stop_the_pass() {
    let sim = planted_sim().await;
    sim.state()
        .put_case(json!({"_id": "broken", "status": "New", "created_at": "last week"}));
    let ws = Workspace::new(&sim.url, "legacy", "", None);
    let out = ws.run(&["once"]).await;
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).contains("1 skipped: not parseable"),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("broken") && stderr(&out).contains("created_at"),
        "{}",
        stderr(&out)
    );
    assert_eq!(sim.state().case("esc").unwrap()["priority"], "High");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_reverting_a_change_wins() {
    let sim = planted_sim().await;
    let ws = Workspace::new(&sim.url, "legacy", "", None);
    ws.run(&["once"]).await;
    assert_eq!(sim.state().case("esc").unwrap()["priority"], "High");
    sim.state()
        .human_change("esc", "alice@example.com", "priority", json!("Medium"));
    // Five passes leave the person's value alone and record the skip once.
    for _ in 0..5 {
        let out = ws.run(&["once"]).await;
        assert_eq!(out.status.code(), Some(0));
    }
    assert_eq!(sim.state().case("esc").unwrap()["priority"], "Medium");
    let skips = || {
        ws.audit(Filter {
            case_id: Some("esc".into()),
            outcome: Some(casewarden::audit::Outcome::Skipped),
            ..Filter::default()
        })
    };
    let skipped = skips().await;
    assert_eq!(skipped.len(), 1);
    // A steady pass records itself and nothing per case.
    let all = ws.audit(Filter::default()).await;
    let last = &all.last().unwrap().run_id;
    let of_last: Vec<_> = all.iter().filter(|r| &r.run_id == last).collect();
    assert!(of_last.iter().all(|r| r.field == "pass"), "{of_last:?}");
    assert!(
        skipped[0].reason.contains("overridden by a person"),
        "{:?}",
        skipped[0]
    );
    // A second override is a new event: recorded, once.
    sim.state()
        .human_change("esc", "bob@example.com", "priority", json!("Low"));
    for _ in 0..2 {
        assert_exit(&ws.run(&["once"]).await, 0);
    }
    let skipped = skips().await;
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(
        skipped[1].reason.contains("the case now holds \"Low\""),
        "{:?}",
        skipped[1]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_change_reaches_the_server_before_its_planned_row() {
    let mut opts = sim_options(300);
    opts.faults.latency_ms = 15;
    let sim = start(opts).await;
    let all =
        "const RULE = #{ name: \"tag-all\" };\nfn evaluate(c) { add_tag(\"seen\", \"test\"); }\n";
    let ws = Workspace::new(
        &sim.url,
        "legacy",
        "max_change_fraction = 1.0\ncomment_changes = false",
        Some(&[("all.rhai", all)]),
    );
    let child = {
        let config = ws.config();
        tokio::process::Command::new(env!("CARGO_BIN_EXE_casewarden"))
            .args(["--config", config.to_str().unwrap(), "once"])
            .output()
    };
    let run = tokio::spawn(child);
    for _ in 0..200 {
        if sim.state().write_requests() >= 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sim.halt();
    let out = run.await.unwrap().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let audit = ws.audit(Filter::default()).await;
    let planned: HashSet<&str> = audit
        .iter()
        .filter(|r| r.outcome == "planned")
        .map(|r| r.case_id.as_str())
        .collect();
    let changed = changed_by_api(&sim, None);
    assert!(
        changed.len() >= 40 && changed.len() < 300,
        "{}",
        changed.len()
    );
    for id in &changed {
        assert!(
            planned.contains(id.as_str()),
            "{id} changed without a planned row"
        );
    }
    // Every planned row got an outcome: applied for what the server did, failed otherwise.
    let settled: HashSet<i64> = audit.iter().filter_map(|r| r.planned_seq).collect();
    assert!(
        audit
            .iter()
            .filter(|r| r.outcome == "planned")
            .all(|r| settled.contains(&r.seq))
    );
    for r in audit.iter().filter(|r| r.outcome == "applied") {
        assert!(
            changed.contains(&r.case_id),
            "{} recorded applied but unchanged",
            r.case_id
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_in_any_output_at_trace_level() {
    let mut opts = sim_options(40);
    opts.token_ttl_secs = 1;
    opts.faults.latency_ms = 100;
    let sim = start(opts).await;
    sim.state().faults.fail_next = 1;
    let ws = Workspace::new(&sim.url, "legacy", "max_change_fraction = 1.0", None);
    ws.edit_config("timeout_secs = 5", "timeout_secs = 5\npage_size = 10");
    let config = ws.config();
    let mut outputs = Vec::new();
    for (args, env) in [
        (vec!["-vv", "once"], vec![]),
        (vec!["once", "--dry-run"], vec![("RUST_LOG", "trace")]),
        (vec!["--log-format", "json", "-vv", "once"], vec![]),
    ] {
        let mut full = vec!["--config", config.to_str().unwrap()];
        full.extend(args);
        let out = run_bin(&full, &env).await;
        outputs.push(format!("{}{}", stdout(&out), stderr(&out)));
    }
    let tokens = sim.state().issued_tokens.clone();
    assert!(tokens.len() >= 2);
    let all = outputs.join("\n");
    assert!(all.len() > 10_000, "trace output is suspiciously short");
    assert!(!all.contains(KEY), "the API key leaked");
    for t in &tokens {
        assert!(!all.contains(t.as_str()), "a JWT leaked");
        let signature = t.rsplit('.').next().unwrap();
        assert!(!all.contains(signature), "a JWT signature leaked");
    }
    assert!(!all.contains(&base64_basic()), "the Basic header leaked");
}

fn base64_basic() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{KEY}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn v5_servers_get_severity_and_resolution() {
    let mut opts = sim_options(0);
    opts.flavor = casewarden::config::ApiFlavor::V5;
    let sim = start(opts).await;
    for mut c in planted() {
        let obj = c.as_object_mut().unwrap();
        let p = obj.remove("priority").unwrap();
        obj.insert("severity".into(), p);
        let s = obj.remove("case_score").unwrap();
        obj.insert("score".into(), s);
        sim.state().put_case(c);
    }
    let ws = Workspace::new(&sim.url, "v5", "", None);
    let out = ws.run(&["once"]).await;
    assert_exit(&out, 0);
    {
        let s = sim.state();
        assert_eq!(s.case("esc").unwrap()["severity"], "High");
        assert!(s.case("esc").unwrap().get("priority").is_none());
    }
    // A person lowering the severity again wins on v5 too.
    sim.state()
        .human_change("esc", "alice@example.com", "severity", json!("Medium"));
    assert_eq!(ws.run(&["once"]).await.status.code(), Some(0));
    let s = sim.state();
    assert_eq!(s.case("esc").unwrap()["severity"], "Medium");
    let stale = s.case("stale").unwrap();
    assert_eq!(
        (stale["status"].as_str(), stale["resolution"].as_str()),
        (Some("Resolved"), Some("Benign"))
    );
    assert!(s.requests().iter().any(|r| r.method == "PUT"));
    assert!(
        !s.requests()
            .iter()
            .any(|r| r.method == "POST" && r.path.ends_with("/cases"))
    );
}

/// On 5.x (no `history`), casewarden's own tag moves `modified_at`: the time in status
/// comes from the case's activities, read only for the cases a rule asks it of.
#[tokio::test(flavor = "multi_thread")]
async fn casewardens_own_writes_do_not_reset_the_time_in_status_on_v5() {
    let mut opts = sim_options(0);
    opts.flavor = casewarden::config::ApiFlavor::V5;
    let sim = start(opts).await;
    let now = casewarden::now_ms();
    let case = |id: &str, ticket: i64, created: i64, history: Value| {
        json!({"_id": id, "ticket_id": ticket, "name": id, "status": "New", "severity": "Medium",
               "tags": [], "created_at": created, "modified_at": created, "score": 40,
               "cust_id": "", "history": history})
    };
    sim.state().put_case(case(
        "aged",
        1,
        now - 5 * DAY,
        json!([{"field": "created_at", "timestamp": now - 5 * DAY, "user": "System"}]),
    ));
    let mut reopened = case(
        "reopened",
        2,
        now - 10 * DAY,
        json!([{"field": "status", "from": "Resolved", "to": "New", "timestamp": now - HOUR, "user": PERSON}]),
    );
    reopened["modified_at"] = json!(now - HOUR);
    reopened["modified_by"] = json!(PERSON);
    sim.state().put_case(reopened);
    let tagger =
        "const RULE = #{ name: \"tagger\" };\nfn evaluate(c) { add_tag(\"triaged\", \"seen\"); }\n";
    let ws = Workspace::new(
        &sim.url,
        "v5",
        "comment_changes = false\nmax_change_fraction = 1.0",
        Some(&[("10-tagger.rhai", tagger)]),
    );
    assert_exit(&ws.run(&["once"]).await, 0);
    assert_eq!(
        sim.state().case("aged").unwrap()["tags"],
        json!(["triaged"])
    );
    let escalate = "const RULE = #{ name: \"escalate\" };\nfn evaluate(c) {\n    if c.status == \"New\" && minutes_in_status(c) >= 4 * 24 * 60 {\n        set_priority(\"High\", `New for ${minutes_in_status(c)} minutes`);\n    }\n}\n";
    std::fs::write(ws.dir.path().join("rules/20-escalate.rhai"), escalate).unwrap();
    let activities = || {
        sim.state()
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/activities"))
            .count()
    };
    let before = activities();
    assert_exit(&ws.run(&["once"]).await, 0);
    let s = sim.state();
    assert_eq!(
        s.case("aged").unwrap()["severity"],
        "High",
        "New for 5 days, tagged by casewarden"
    );
    assert_eq!(
        s.case("reopened").unwrap()["severity"],
        "Medium",
        "New again for an hour"
    );
    drop(s);
    assert_eq!(activities() - before, 2, "read for the two New cases only");
}

/// A value only known at run time that the server refuses fails the rule on every case:
/// logged once per pass, and `status` shows the rule as erroring.
#[tokio::test(flavor = "multi_thread")]
async fn a_runtime_value_the_server_refuses_is_one_error_and_status_shows_it() {
    let sim = start(sim_options(30)).await;
    let bad = "const RULE = #{ name: \"closer\" };\nfn evaluate(c) {\n    let s = \"Clo\" + \"sed\";\n    set_status(s);\n}\n";
    let ok = "const RULE = #{ name: \"ok\" };\nfn evaluate(c) { if c.ticket_id % 10 == 0 { add_tag(\"fine\"); } }\n";
    let ws = Workspace::new(
        &sim.url,
        "legacy",
        "comment_changes = false",
        Some(&[("10-closer.rhai", bad), ("20-ok.rhai", ok)]),
    );
    let out = ws.run(&["once"]).await;
    assert_eq!(out.status.code(), Some(1), "errored: degraded");
    let log = stderr(&out);
    assert_eq!(log.matches("invalid status").count(), 1, "{log}");
    assert!(log.contains("failed on 30 case(s) this pass"), "{log}");
    let status = stdout(&ws.run(&["status"]).await);
    assert!(
        status.contains("ERRORING rule closer: failed on 30 case(s)")
            && status.contains("invalid status"),
        "{status}"
    );
    assert!(!status.contains("rule ok"), "{status}");
}

/// Another API user (a SOAR playbook) setting back what casewarden set is that
/// automation's doing, not a person's: recorded and reported once; with `reapply`
/// casewarden sets it again once, then stops and records the fight.
#[tokio::test(flavor = "multi_thread")]
async fn a_value_another_automation_sets_back_is_reported_once_and_never_fought_over() {
    let mut opts = sim_options(0);
    opts.flavor = casewarden::config::ApiFlavor::V5;
    let sim = start(opts).await;
    let now = casewarden::now_ms();
    for (id, ticket) in [("yielding", 1), ("fighting", 2)] {
        sim.state().put_case(
            json!({"_id": id, "ticket_id": ticket, "name": id, "status": "New",
            "severity": "Medium", "tags": [], "created_at": now - DAY, "modified_at": now - DAY,
            "score": 40, "cust_id": ""}),
        );
    }
    let rule = |name: &str, ticket: i64, extra: &str| {
        format!(
            "const RULE = #{{ name: \"{name}\"{extra} }};\nfn evaluate(c) {{ if c.ticket_id == {ticket} {{ set_priority(\"High\", \"wanted high\"); }} }}\n"
        )
    };
    let ws = Workspace::new(
        &sim.url,
        "v5",
        "comment_changes = false\nmax_change_fraction = 1.0",
        Some(&[
            ("10-yield.rhai", &rule("yield", 1, "")),
            (
                "20-reapply.rhai",
                &rule("reapply", 2, ", on_automation_revert: \"reapply\""),
            ),
        ]),
    );
    let soar = "soar-playbook@example.com";
    let set_back = |id: &str| {
        sim.state()
            .automation_change(id, soar, "severity", json!("Medium"))
    };
    let ours = |id: &str| {
        sim.state()
            .api_changes(id)
            .iter()
            .filter(|a| a["field"] == "severity" && a["user"] != soar)
            .count()
    };
    let notes = |rows: &[casewarden::audit::EventRow], kind: &str| {
        rows.iter()
            .filter(|r| r.field == "rule" && r.new.as_deref() == Some(kind))
            .count()
    };
    assert_exit(&ws.run(&["once"]).await, 0);
    set_back("yielding");
    set_back("fighting");
    let second = stdout(&ws.run(&["once"]).await);
    assert!(
        second.contains(&format!(
            "another automation, API user {soar} (not a person)"
        )),
        "{second}"
    );
    assert_eq!(
        sim.state().case("yielding").unwrap()["severity"],
        "Medium",
        "yielded"
    );
    assert_eq!(
        sim.state().case("fighting").unwrap()["severity"],
        "High",
        "set again"
    );
    let rows = ws.audit(Filter::default()).await;
    let yielded = rows
        .iter()
        .find(|r| r.case_id == "yielding" && r.field == "priority" && r.outcome == "skipped")
        .unwrap();
    assert!(
        yielded
            .reason
            .contains("set back by another automation, not a person")
            && yielded.reason.contains(soar),
        "{}",
        yielded.reason
    );
    set_back("fighting");
    let third = stdout(&ws.run(&["once"]).await);
    assert!(
        third.contains("fight with another automation") && !third.contains("(not a person)"),
        "{third}"
    );
    for _ in 0..2 {
        let again = stdout(&ws.run(&["once"]).await);
        assert!(
            !again.contains("another automation"),
            "reported once: {again}"
        );
    }
    let rows = ws.audit(Filter::default()).await;
    assert_eq!((notes(&rows, "yield"), notes(&rows, "fight")), (1, 1));
    assert_eq!(ours("yielding"), 1);
    assert_eq!(ours("fighting"), 2, "not set a third time");
    assert_eq!(sim.state().case("fighting").unwrap()["severity"], "Medium");
    let status = stdout(&ws.run(&["status"]).await);
    assert!(
        status.contains("automation FIGHT") && status.contains("automation yielded"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn legacy_servers_record_the_resolution_as_not_sent() {
    let sim = planted_sim().await;
    let ws = Workspace::new(&sim.url, "legacy", "", None);
    ws.run(&["once"]).await;
    let rows = ws
        .audit(Filter {
            case_id: Some("stale".into()),
            ..Filter::default()
        })
        .await;
    let resolution: Vec<_> = rows.iter().filter(|r| r.field == "resolution").collect();
    assert_eq!(resolution.len(), 1);
    assert_eq!(resolution[0].outcome, "skipped");
    assert!(resolution[0].reason.contains("no resolution field"));
    assert!(
        rows.iter()
            .any(|r| r.field == "status" && r.outcome == "applied")
    );
}

/// Per-rule settings: a shadow rule (`dry_run: true`) records but never sends while the
/// live rule applies; a rule's own `max_changes` and `max_change_fraction` override the
/// daemon's; the guard counts every listed case, so a precise query is not halted.
#[tokio::test(flavor = "multi_thread")]
async fn rules_run_in_shadow_with_their_own_limits() {
    let sim = start(sim_options(60)).await;
    let critical = sim
        .state()
        .cases
        .iter()
        .filter(|c| c["priority"] == "Critical")
        .count();
    assert!(
        critical > 0 && critical * 4 < 60,
        "{critical} Critical cases"
    );
    let rules = [
        (
            "10-precise.rhai",
            "const RULE = #{ name: \"precise\", query: #{ priority: \"Critical\" } };\nfn evaluate(c) { add_tag(\"p1\", \"critical\"); }\n",
        ),
        (
            "20-shadow.rhai",
            "const RULE = #{ name: \"shadow\", dry_run: true, max_change_fraction: 1.0 };\nfn evaluate(c) { add_tag(\"would-tag\", \"trying it\"); }\n",
        ),
        (
            "30-capped.rhai",
            "const RULE = #{ name: \"capped\", max_changes: 5, max_change_fraction: 1.0 };\nfn evaluate(c) { add_tag(\"batch\", \"five at a time\"); }\n",
        ),
    ];
    let ws = Workspace::new(&sim.url, "legacy", "comment_changes = false", Some(&rules));
    let out = ws.run(&["once"]).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    assert!(!text.contains("HALTED"), "{text}");
    let tagged = |tag: &str| {
        sim.state()
            .cases
            .iter()
            .filter(|c| c["tags"].as_array().unwrap().iter().any(|t| t == tag))
            .count()
    };
    assert_eq!(
        tagged("p1"),
        critical,
        "the precise rule ran on all its cases"
    );
    assert_eq!(tagged("would-tag"), 0, "a shadow rule sends nothing");
    assert_eq!(tagged("batch"), 5, "the rule's own cap");
    let rows = ws.audit(Filter::default()).await;
    let of = |rule: &'static str| rows.iter().filter(move |r| r.rule == rule);
    assert_eq!(of("shadow").count(), 60);
    assert!(of("shadow").all(|r| r.dry_run && r.outcome == "planned"));
    assert!(of("precise").any(|r| !r.dry_run && r.outcome == "applied"));
    assert_eq!(
        of("capped")
            .filter(|r| r.outcome == "skipped" && r.reason.contains("RULE.max_changes"))
            .count(),
        55
    );
}

/// A shadow rule sends nothing, so the budget never defers it: every one of its decisions
/// is a dry-run row, while the live rule's are deferred past the budget.
#[tokio::test(flavor = "multi_thread")]
async fn a_shadow_rule_takes_no_budget_and_its_rows_stay_dry_runs() {
    let sim = start(sim_options(30)).await;
    let rules = [
        (
            "10-live.rhai",
            "const RULE = #{ name: \"live\" };\nfn evaluate(c) { add_tag(\"done\", \"now\"); }\n",
        ),
        (
            "20-shadow.rhai",
            "const RULE = #{ name: \"shadow\", dry_run: true };\nfn evaluate(c) { add_tag(\"would-tag\", \"trying it\"); }\n",
        ),
    ];
    let daemon = "comment_changes = false\nmax_changes_per_run = 10\nmax_change_fraction = 1.0";
    let ws = Workspace::new(&sim.url, "legacy", daemon, Some(&rules));
    assert_exit(&ws.run(&["once"]).await, 0);
    let rows = ws.audit(Filter::default()).await;
    let shadow: Vec<_> = rows.iter().filter(|r| r.rule == "shadow").collect();
    assert_eq!(shadow.len(), 30);
    assert!(
        shadow.iter().all(|r| r.dry_run && r.outcome == "planned"),
        "{shadow:?}"
    );
    let live = |outcome: &str| {
        rows.iter()
            .filter(|r| r.rule == "live" && !r.dry_run && r.outcome == outcome)
            .count()
    };
    assert_eq!((live("applied"), live("skipped")), (10, 20));
}

/// `once --dry-run` every few minutes must not copy the same plan into the log each time:
/// a dry-run plan is recorded again only where it differs from the last dry run of that
/// rule on that case.
#[tokio::test(flavor = "multi_thread")]
async fn repeated_dry_runs_record_only_what_changed() {
    let sim = start(sim_options(60)).await;
    let rule = "const RULE = #{ name: \"tag-new\", query: #{ status: \"New\" }, max_change_fraction: 1.0 };\nfn evaluate(c) { add_tag(\"looked-at\", `seen at ${now()}`); }\n";
    let ws = Workspace::new(&sim.url, "legacy", "", Some(&[("a.rhai", rule)]));
    assert_exit(&ws.run(&["once", "--dry-run"]).await, 0);
    let first = changes(ws.audit(Filter::default()).await);
    assert!(!first.is_empty());
    assert!(first.iter().all(|r| r.dry_run && r.outcome == "planned"));
    let second = ws.run(&["once", "--dry-run"]).await;
    assert_exit(&second, 0);
    assert!(
        stdout(&second).contains("+looked-at"),
        "the plan is still printed"
    );
    assert_eq!(
        changes(ws.audit(Filter::default()).await).len(),
        first.len(),
        "the same plan is not recorded twice, though its reason text changed"
    );
    // One case now carries the tag (nothing left to plan: no row); one case becomes New
    // (a new plan: its row is recorded); the others plan as before (no rows).
    let newly_new = {
        let mut s = sim.state();
        // Edits as a server records them: modified_at moves.
        let now = serde_json::json!(casewarden::now_ms());
        let mut tagged = s.case(&first[0].case_id).unwrap().clone();
        tagged["tags"] = serde_json::json!(["looked-at"]);
        tagged["modified_at"] = now.clone();
        s.put_case(tagged);
        let mut other = s
            .cases
            .iter()
            .find(|c| c["status"] != "New")
            .unwrap()
            .clone();
        other["status"] = serde_json::json!("New");
        other["modified_at"] = now;
        let id = other["_id"].as_str().unwrap().to_string();
        s.put_case(other);
        id
    };
    assert_exit(&ws.run(&["once", "--dry-run"]).await, 0);
    let third = changes(ws.audit(Filter::default()).await);
    let added: Vec<&str> = third[first.len()..]
        .iter()
        .map(|r| r.case_id.as_str())
        .collect();
    assert_eq!(added, [newly_new.as_str()]);
    assert_eq!(passes_of(&ws).await, 3);
}

async fn passes_of(ws: &Workspace) -> usize {
    let store = casewarden::audit::AuditStore::open(&ws.audit_db())
        .await
        .unwrap();
    let n = store.passes().await.unwrap().len();
    store.close().await;
    n
}

/// The people, time and entity helpers and shared modules through a real pass: emails
/// looked up in the server's users list, an unassign the server receives as `""`,
/// business time by the config's calendars, and the audit showing emails beside ids.
#[tokio::test(flavor = "multi_thread")]
async fn rules_use_people_calendars_entities_and_shared_modules() {
    let sim = start(sim_options(80)).await;
    let alice = sim
        .state()
        .users
        .iter()
        .find(|u| u.email == "alice@example.com")
        .unwrap()
        .user_id
        .clone();
    let alices: Vec<String> = sim
        .state()
        .cases
        .iter()
        .filter(|c| c["assignee"] == alice.as_str() && c["status"] != "Resolved")
        .map(|c| c["_id"].as_str().unwrap().to_string())
        .collect();
    assert!(!alices.is_empty(), "the population has cases of alice");
    let rules = [
        (
            "10-leaver.rhai",
            "import \"people\" as people;\nconst RULE = #{ name: \"leaver\", max_change_fraction: 1.0 };\n\
             fn evaluate(c) { if c.status != \"Resolved\" && people::email_of_owner(c) == people::LEAVER { unassign(`${people::LEAVER} left`); } }\n",
        ),
        (
            "20-clock.rhai",
            "const RULE = #{ name: \"clock\", max_change_fraction: 1.0 };\n\
             fn evaluate(c) {\n\
               if business_minutes_since(c.created_at, \"always\") > 0 { add_tag(\"aged\"); }\n\
               if business_hours_since(c.created_at, \"never\") > 0 { add_tag(\"impossible\"); }\n\
               add_tag(`entities-${entities(c).len()}`);\n\
               if user_id(\"nobody@example.com\") != () { add_tag(\"impossible\"); }\n\
             }\n",
        ),
    ];
    let ws = Workspace::new(&sim.url, "legacy", "comment_changes = false", Some(&rules));
    let lib = ws.dir.path().join("rules/lib");
    std::fs::create_dir(&lib).unwrap();
    std::fs::write(
        lib.join("people.rhai"),
        "export const LEAVER = \"alice@example.com\";\nfn email_of_owner(c) { user_email(c.assignee) }\n",
    )
    .unwrap();
    let mut config = std::fs::read_to_string(ws.config()).unwrap();
    config.push_str(
        "\n[calendars.always]\ndays = [\"Mon\", \"Tue\", \"Wed\", \"Thu\", \"Fri\", \"Sat\", \"Sun\"]\nhours = \"00:00-24:00\"\n\n[calendars.never]\ndays = []\n",
    );
    std::fs::write(ws.config(), config).unwrap();

    let check = ws.run(&["check", "--offline"]).await;
    assert_exit(&check, 0);
    let out = ws.run(&["once"]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );

    {
        let state = sim.state();
        for id in &alices {
            let case = state
                .cases
                .iter()
                .find(|c| c["_id"] == id.as_str())
                .unwrap();
            assert_eq!(case["assignee"], "", "case {id} unassigned on the server");
        }
        let tagged = |tag: &str| {
            state
                .cases
                .iter()
                .filter(|c| c["tags"].as_array().unwrap().iter().any(|t| t == tag))
                .count()
        };
        assert_eq!(tagged("impossible"), 0);
        assert_eq!(tagged("aged"), 80, "every case is older than a minute");
        assert_eq!(tagged("entities-1"), 80, "one entity per simulated case");
    }

    let json = ws
        .run(&[
            "audit",
            "--rule",
            "leaver",
            "--outcome",
            "applied",
            "--format",
            "json",
        ])
        .await;
    assert_exit(&json, 0);
    let rows: Vec<Value> = stdout(&json)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), alices.len());
    for r in &rows {
        assert_eq!(r["field"], "assignee");
        assert_eq!(r["old"], alice.as_str());
        assert_eq!(r["old_email"], "alice@example.com");
        assert_eq!(r["new"], "");
    }
    let table = ws.run(&["audit", "--rule", "leaver"]).await;
    assert!(
        stdout(&table).contains("alice@example.com -> (none)"),
        "{}",
        stdout(&table)
    );
}

/// Exemptions: `casewarden-ignore` (daemon.exempt_tags), a snooze still ahead and a rule's
/// own exempt tag (`legal-hold`) keep the rule off those cases (counted as EXEMPT); an expired snooze
/// does not.
#[tokio::test(flavor = "multi_thread")]
async fn exempt_and_snoozed_cases_stay_untouched_while_others_change() {
    let sim = start(sim_options(30)).await;
    let tagged = [
        ("casewarden-ignore", false),
        ("casewarden-snooze:2099-01-01", false),
        ("legal-hold", false),
        ("casewarden-snooze:2001-01-01", true),
    ];
    let ids: Vec<String> = {
        let mut state = sim.state();
        tagged
            .iter()
            .enumerate()
            .map(|(i, (tag, _))| {
                let mut case = state.cases[i].clone();
                case["tags"] = json!([tag]);
                state.put_case(case);
                state.cases[i]["_id"].as_str().unwrap().to_string()
            })
            .collect()
    };
    let rule = "const RULE = #{ name: \"tag-all\", max_change_fraction: 1.0, exempt_tags: [\"legal-hold\"] };\nfn evaluate(c) { add_tag(\"seen\", \"every case\"); }\n";
    let ws = Workspace::new(
        &sim.url,
        "legacy",
        "comment_changes = false",
        Some(&[("a.rhai", rule)]),
    );
    let out = ws.run(&["once"]).await;
    assert_exit(&out, 0);
    let text = stdout(&out);
    let row = text.lines().find(|l| l.contains("tag-all")).unwrap();
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        (cols[1], cols[2], cols[3]),
        ("27", "3", "27"),
        "SEEN EXEMPT MATCHED:\n{text}"
    );
    let state = sim.state();
    for (id, (tag, changes)) in ids.iter().zip(tagged) {
        let case = state.case(id).unwrap();
        let seen = case["tags"].as_array().unwrap().iter().any(|t| t == "seen");
        assert_eq!(seen, changes, "case with {tag}");
    }
    assert_eq!(
        state
            .cases
            .iter()
            .filter(|c| c["tags"].as_array().unwrap().iter().any(|t| t == "seen"))
            .count(),
        27
    );
}

/// A rule that comments the same text on every pass posts it once: the planner remembers
/// casewarden's last comment on the case.
#[tokio::test(flavor = "multi_thread")]
async fn the_same_comment_is_not_posted_twice() {
    let sim = start(sim_options(5)).await;
    let rule = "const RULE = #{ name: \"nag\", max_change_fraction: 1.0 };\nfn evaluate(c) { comment(\"Please acknowledge this case.\"); }\n";
    let ws = Workspace::new(
        &sim.url,
        "legacy",
        "comment_changes = false",
        Some(&[("nag.rhai", rule)]),
    );
    for _ in 0..2 {
        assert_exit(&ws.run(&["once"]).await, 0);
    }
    let state = sim.state();
    for case in &state.cases {
        let id = case["_id"].as_str().unwrap();
        let posted = state
            .comments
            .get(id)
            .map(|c| {
                c.iter()
                    .filter(|c| c.to_string().contains("Please acknowledge"))
                    .count()
            })
            .unwrap_or(0);
        assert_eq!(posted, 1, "case {id}");
    }
}
