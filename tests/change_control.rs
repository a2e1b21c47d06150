//! Change control: what a rule edit would change (`diff`), before it is deployed.

use std::collections::BTreeSet;

use serde_json::Value;

use casewarden::audit::Filter;
use casewarden::sim::data::TENANTS;

use crate::common::*;

const LIVE: &str = "const RULE = #{ name: \"heat\", max_change_fraction: 1.0 };\nfn evaluate(c) {\n    if c.priority == \"High\" { add_tag(\"hot\"); }\n    if c.priority == \"Medium\" { add_tag(\"warm\"); }\n}\n";
const CANDIDATE: &str = "const RULE = #{ name: \"heat\", max_change_fraction: 1.0 };\nfn evaluate(c) {\n    if c.priority == \"Critical\" { add_tag(\"hot\"); }\n    if c.priority == \"Medium\" { add_tag(\"mild\"); }\n}\n";

/// A workspace with one rule `raise` doing `body` on the Low cases, and those cases.
fn raising(sim: &casewarden::sim::Simulator, body: &str) -> (Workspace, Vec<String>) {
    let rule = format!(
        "const RULE = #{{ name: \"raise\", max_change_fraction: 1.0, query: #{{ priority: \"Low\" }} }};\nfn evaluate(c) {{ {body} }}\n"
    );
    let ws = Workspace::new(
        &sim.url,
        "legacy",
        "comment_changes = false",
        Some(&[("raise.rhai", rule.as_str())]),
    );
    let low: Vec<String> = sim
        .state()
        .cases
        .iter()
        .filter(|c| c["priority"] == "Low")
        .map(|c| c["_id"].as_str().unwrap().to_string())
        .collect();
    assert!(low.len() >= 2, "the population has Low cases");
    (ws, low)
}

fn ids(rule: &Value, key: &str) -> BTreeSet<String> {
    rule[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["case_id"].as_str().unwrap().to_string())
        .collect()
}

/// The modified rule gains exactly the Critical cases, loses exactly the High ones and
/// changes the Medium ones; nothing is sent; a saved listing gives the same answer.
#[tokio::test(flavor = "multi_thread")]
async fn diff_reports_exactly_what_a_modified_rule_gains_and_loses() {
    let sim = start(sim_options(60)).await;
    let with = |p: &str| -> BTreeSet<String> {
        sim.state()
            .cases
            .iter()
            .filter(|c| c["priority"] == p)
            .map(|c| c["_id"].as_str().unwrap().to_string())
            .collect()
    };
    let (critical, high, medium) = (with("Critical"), with("High"), with("Medium"));
    assert!(!critical.is_empty() && !high.is_empty() && !medium.is_empty());
    let ws = Workspace::new(&sim.url, "legacy", "", Some(&[("heat.rhai", LIVE)]));
    let candidate = ws.dir.path().join("candidate");
    std::fs::create_dir(&candidate).unwrap();
    std::fs::write(candidate.join("heat.rhai"), CANDIDATE).unwrap();
    std::fs::write(
        candidate.join("new.rhai"),
        "const RULE = #{ name: \"fresh\" };\nfn evaluate(c) { if c.priority == \"Low\" { add_tag(\"low\"); } }\n",
    )
    .unwrap();
    std::fs::write(
        candidate.join("all.rhai"),
        "const RULE = #{ name: \"all\" };\nfn evaluate(c) { add_tag(\"everything\"); }\n",
    )
    .unwrap();
    let writes = sim.state().write_requests();
    let out = ws
        .run(&[
            "diff",
            "--rules-dir",
            candidate.to_str().unwrap(),
            "--format",
            "json",
        ])
        .await;
    assert_exit(&out, 0);
    assert_eq!(sim.state().write_requests(), writes, "diff sends nothing");
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["cases"], 60);
    let rule = |name: &str| {
        report["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["rule"] == name)
            .unwrap()
            .clone()
    };
    let heat = rule("heat");
    assert_eq!(heat["status"], "modified");
    assert_eq!(ids(&heat, "gained"), critical);
    assert_eq!(ids(&heat, "lost"), high);
    assert_eq!(ids(&heat, "changed"), medium);
    let changed = &heat["changed"][0];
    assert_eq!(changed["live"], serde_json::json!(["tags +warm"]));
    assert_eq!(changed["candidate"], serde_json::json!(["tags +mild"]));
    assert_eq!(heat["candidate_halted"], Value::Null);
    assert!(
        rule("all")["candidate_halted"]
            .as_str()
            .unwrap()
            .contains("would halt it: it wants to change 60 of 60 cases (limit 25%)"),
        "{}",
        rule("all")
    );
    assert_eq!(rule("fresh")["status"], "added");
    assert_eq!(ids(&rule("fresh"), "gained"), with("Low"));

    // The same on a saved listing, and readable as a table.
    let saved = ws.dir.path().join("cases.json");
    let once = ws
        .run(&["once", "--dry-run", "--save-cases", saved.to_str().unwrap()])
        .await;
    assert_exit(&once, 0);
    assert!(
        stderr(&once).contains("60 listed case(s) saved"),
        "{}",
        stderr(&once)
    );
    let table = ws
        .run(&[
            "diff",
            "--rules-dir",
            candidate.to_str().unwrap(),
            "--cases",
            saved.to_str().unwrap(),
        ])
        .await;
    assert_exit(&table, 0);
    let text = stdout(&table);
    assert!(
        text.contains(&format!(
            "rule heat (modified): {} case(s) gained, {} lost, {} changed",
            critical.len(),
            high.len(),
            medium.len()
        )),
        "{text}"
    );
    assert!(
        text.contains("  ! the blast-radius guard would halt it"),
        "{text}"
    );
    let one = high.iter().next().unwrap();
    assert!(text.contains(&format!("  - case {one} (ticket ")), "{text}");

    // --detailed-exitcode: 2 for this candidate, 0 for one identical to the live rules, 1
    // on an error.
    let detailed = |dir: &std::path::Path| {
        let args = [
            "diff",
            "--detailed-exitcode",
            "--rules-dir",
            dir.to_str().unwrap(),
            "--cases",
            saved.to_str().unwrap(),
        ]
        .map(String::from);
        let ws = &ws;
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            ws.run(&refs).await.status.code()
        }
    };
    assert_eq!(detailed(&candidate).await, Some(2));
    let same = ws.dir.path().join("same");
    std::fs::create_dir(&same).unwrap();
    std::fs::write(same.join("heat.rhai"), LIVE).unwrap();
    assert_eq!(detailed(&same).await, Some(0));
    assert_eq!(detailed(&ws.dir.path().join("nowhere")).await, Some(1));
}

/// A reviewed plan: `once --dry-run --out` writes it and sends nothing (exit 2 with
/// `--detailed-exitcode`: changes pending); after a person changed one case, `apply`
/// applies the rest exactly as planned and skips that one; the plan cannot be applied
/// twice, nor against another server, nor after it expired.
#[tokio::test(flavor = "multi_thread")]
async fn apply_applies_the_reviewed_plan_and_skips_what_a_person_changed_since() {
    let sim = start(sim_options(30)).await;
    let (ws, low) = raising(&sim, "set_priority(\"Medium\", \"reviewed raise\");");
    let plan = ws.dir.path().join("plan.json");
    let out = ws
        .run(&[
            "once",
            "--dry-run",
            "--detailed-exitcode",
            "--out",
            plan.to_str().unwrap(),
        ])
        .await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "changes pending: {}",
        stderr(&out)
    );
    assert_eq!(sim.state().write_requests(), 0);
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&plan).unwrap()).unwrap();
    assert_eq!(written["cases"].as_array().unwrap().len(), low.len());
    assert_eq!(written["server_url"], sim.url.as_str());

    // A person raises one case to High after the review.
    let touched = low[0].clone();
    sim.state().human_change(
        &touched,
        "alice@example.com",
        "priority",
        serde_json::json!("High"),
    );
    let out = ws.run(&["apply", plan.to_str().unwrap()]).await;
    assert_exit(&out, 0);
    {
        let state = sim.state();
        assert_eq!(
            state.case(&touched).unwrap()["priority"],
            "High",
            "left as the person set it"
        );
        for id in &low[1..] {
            assert_eq!(state.case(id).unwrap()["priority"], "Medium", "case {id}");
        }
    }
    let plan_id = written["plan_id"].as_str().unwrap();
    let rows = ws.audit(Filter::default()).await;
    let skipped: Vec<_> = rows
        .iter()
        .filter(|r| r.case_id == touched && r.outcome == "skipped")
        .collect();
    assert_eq!(skipped.len(), 1, "{rows:?}");
    assert!(
        skipped[0].reason.contains("case changed since the plan"),
        "{}",
        skipped[0].reason
    );
    let applied: Vec<_> = rows.iter().filter(|r| r.outcome == "applied").collect();
    assert_eq!(applied.len(), low.len() - 1);
    assert!(
        rows.iter()
            .filter(|r| r.outcome == "planned" && !r.dry_run)
            .all(|r| r.reason.contains(&format!("[plan {plan_id}]")))
    );

    // Not twice; not for another server; not once expired.
    let again = ws.run(&["apply", plan.to_str().unwrap()]).await;
    assert_fails_with(&again, 2, "was already applied by pass");
    let mut other: Value = written.clone();
    other["server_url"] = "https://other.example.com".into();
    let other_file = ws.dir.path().join("other.json");
    std::fs::write(&other_file, other.to_string()).unwrap();
    let out = ws.run(&["apply", other_file.to_str().unwrap()]).await;
    assert_fails_with(&out, 2, "the plan is for https://other.example.com");
    let mut edited = written.clone();
    edited["plan_id"] = "another-id".into();
    edited["cases"][0]["changes"][0]["new"] = "Critical".into();
    let edited_file = ws.dir.path().join("edited.json");
    std::fs::write(&edited_file, edited.to_string()).unwrap();
    let out = ws.run(&["apply", edited_file.to_str().unwrap()]).await;
    assert_fails_with(
        &out,
        2,
        "is not the plan another-id that `once --dry-run --out` wrote",
    );
    let mut old = written.clone();
    old["plan_id"] = "expired-plan".into();
    old["expires_at"] = "2020-01-01T00:00:00.000Z".into();
    let old_file = ws.dir.path().join("old.json");
    std::fs::write(&old_file, old.to_string()).unwrap();
    let out = ws.run(&["apply", old_file.to_str().unwrap()]).await;
    assert_fails_with(&out, 2, "the plan expired at 2020-01-01");
    let none = ws.run(&["once", "--dry-run", "--detailed-exitcode"]).await;
    assert_eq!(none.status.code(), Some(0), "nothing left to change");
}

/// `revert PASS`: every value the pass set is set back, except where a person changed the
/// case since; its comment gets a note instead of a deletion; the revert is a pass of its
/// own (rule `revert:PASS`), refused twice, and can itself be reverted.
#[tokio::test(flavor = "multi_thread")]
async fn revert_restores_what_a_pass_set_and_leaves_what_a_person_changed() {
    let sim = start(sim_options(40)).await;
    let (ws, low) = raising(
        &sim,
        "set_priority(\"Medium\", \"raise\"); add_tag(\"raised\", \"raise\"); comment(\"raised by casewarden\");",
    );
    let out = ws.run(&["once"]).await;
    assert_exit(&out, 0);
    let rows = ws.audit(Filter::default()).await;
    let pass = rows[0].run_id.clone();
    let touched = low[0].clone();
    sim.state().human_change(
        &touched,
        "alice@example.com",
        "priority",
        serde_json::json!("Critical"),
    );

    let out = ws.run(&["revert", &pass, "--operator", "dave"]).await;
    assert_exit(&out, 0);
    {
        let state = sim.state();
        let has = |id: &str, tag: &str| {
            state.case(id).unwrap()["tags"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t == tag)
        };
        for id in &low[1..] {
            assert_eq!(state.case(id).unwrap()["priority"], "Low", "case {id}");
            assert!(!has(id, "raised"), "case {id}");
        }
        assert_eq!(state.case(&touched).unwrap()["priority"], "Critical");
        assert!(
            !has(&touched, "raised"),
            "the tag it still held is taken back"
        );
        for id in &low {
            let notes = state.comments.get(id.as_str()).cloned().unwrap_or_default();
            assert!(
                notes.iter().any(|c| c
                    .to_string()
                    .contains(&format!("casewarden reverted pass {pass}"))),
                "case {id}: {notes:?}"
            );
        }
    }
    let actor = format!("revert:{pass}");
    let reverted = ws
        .audit(Filter {
            rule: Some(actor.clone()),
            ..Filter::default()
        })
        .await;
    let skipped: Vec<_> = reverted.iter().filter(|r| r.outcome == "skipped").collect();
    assert_eq!(skipped.len(), 1, "{reverted:?}");
    assert_eq!(skipped[0].case_id, touched);
    assert!(
        skipped[0].reason.contains("[operator dave]"),
        "{}",
        skipped[0].reason
    );
    assert!(
        skipped[0].reason.contains("the case changed since pass"),
        "{}",
        skipped[0].reason
    );
    assert_eq!(
        reverted.iter().filter(|r| r.outcome == "applied").count(),
        3 * low.len() - 1,
        "priority, tag and note per case, the touched priority left"
    );

    // The rule does not set again what a person reverted.
    assert_exit(&ws.run(&["once"]).await, 0);
    assert_eq!(sim.state().case(&low[1]).unwrap()["priority"], "Low");
    let again = ws.run(&["revert", &pass]).await;
    assert_fails_with(&again, 2, "was already reverted by pass");
    let unknown = ws.run(&["revert", &pass, "--rule", "nope"]).await;
    assert_fails_with(&unknown, 2, "has no rows of a rule \"nope\"");
    // The revert is a pass too: reverting it sets the values back again.
    let revert_pass = reverted[0].run_id.clone();
    let out = ws.run(&["revert", &revert_pass]).await;
    assert_exit(&out, 0);
    assert_eq!(sim.state().case(&low[1]).unwrap()["priority"], "Medium");
}

/// A rule the guard halts: its changes are in the plan marked `halted`; `apply` holds them
/// back unless `--include-halted` (the reviewer's approval) is given.
#[tokio::test(flavor = "multi_thread")]
async fn halted_changes_are_applied_only_when_included() {
    let sim = start(sim_options(40)).await;
    let rule = "const RULE = #{ name: \"greedy\" };\nfn evaluate(c) { add_tag(\"reviewed\", \"approved in review\"); }\n";
    let ws = Workspace::new(
        &sim.url,
        "legacy",
        "comment_changes = false\nguard_min_cases = 10",
        Some(&[("greedy.rhai", rule)]),
    );
    let plan = ws.dir.path().join("plan.json");
    let out = ws
        .run(&["once", "--dry-run", "--out", plan.to_str().unwrap()])
        .await;
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("40 of them halted by the guard"),
        "{}",
        stderr(&out)
    );
    let pending = ws.run(&["once", "--dry-run", "--detailed-exitcode"]).await;
    assert_eq!(
        pending.status.code(),
        Some(2),
        "halted changes are pending review"
    );
    let tagged = || {
        sim.state()
            .cases
            .iter()
            .filter(|c| {
                c["tags"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|t| t == "reviewed")
            })
            .count()
    };
    let held = ws
        .run(&["apply", plan.to_str().unwrap(), "--dry-run"])
        .await;
    // Nothing is left without the reviewer's --include-halted: said, nothing sent or decided.
    assert_fails_with(&held, 2, "40 halted: --include-halted");
    assert_fails_with(
        &ws.run(&["apply", plan.to_str().unwrap()]).await,
        2,
        "nothing sent",
    );
    assert_eq!(tagged(), 0);
    let out = ws
        .run(&["apply", plan.to_str().unwrap(), "--include-halted"])
        .await;
    assert_exit(&out, 0);
    assert_eq!(tagged(), 40, "the reviewed plan went out whole");
}

/// A v5 server with `api_flavor = "auto"`, two rules on its New cases (tag them, assign
/// them to soc-tier2@example.com), a budget of 6, and the plan `once --dry-run --out` wrote.
struct Reviewed {
    sim: casewarden::sim::Simulator,
    ws: Workspace,
    plan: std::path::PathBuf,
    /// What the dry run printed.
    shown: String,
    written: Value,
    new: Vec<String>,
    tier2: String,
}

async fn reviewed() -> Reviewed {
    let mut opts = sim_options(40);
    opts.flavor = casewarden::stellar::ApiFlavor::V5;
    let sim = start(opts).await;
    let tag = "const RULE = #{ name: \"tag-new\", query: #{ status: \"New\" } };\nfn evaluate(c) { add_tag(\"triaged\", \"new case\"); comment(\"triaged\"); }\n";
    let assign = "const RULE = #{ name: \"to-tier2\", query: #{ status: \"New\" } };\nfn evaluate(c) { assign(\"soc-tier2@example.com\", \"queue\"); }\n";
    let ws = Workspace::new(
        &sim.url,
        "auto",
        "max_change_fraction = 1.0\nmax_changes_per_run = 6\ncomment_changes = false",
        Some(&[("10-tag.rhai", tag), ("20-assign.rhai", assign)]),
    );
    let (new, tier2) = new_cases_and_tier2(&sim);
    let plan = ws.dir.path().join("plan.json");
    let out = ws
        .run(&["once", "--dry-run", "--out", plan.to_str().unwrap()])
        .await;
    assert_exit(&out, 0);
    let written = serde_json::from_str(&std::fs::read_to_string(&plan).unwrap()).unwrap();
    Reviewed {
        shown: stdout(&out),
        sim,
        ws,
        plan,
        written,
        new,
        tier2,
    }
}

impl Reviewed {
    async fn apply(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["apply", self.plan.to_str().unwrap()];
        all.extend_from_slice(args);
        self.ws.run(&all).await
    }

    /// The New cases assigned to tier 2 now.
    fn assigned(&self) -> usize {
        let state = self.sim.state();
        self.new
            .iter()
            .filter(|id| state.case(id).unwrap()["assignee"] == self.tier2.as_str())
            .count()
    }

    async fn rows(&self, outcome: casewarden::audit::Outcome) -> Vec<casewarden::audit::EventRow> {
        let all = self
            .ws
            .audit(Filter {
                outcome: Some(outcome),
                ..Filter::default()
            })
            .await;
        all.into_iter().filter(|r| !r.dry_run).collect()
    }
}

/// The reviewed plan holds every pending change (not only the budget's worth) and names
/// customers and people by name and email; so does the dry run's output.
#[tokio::test(flavor = "multi_thread")]
async fn a_plan_holds_every_pending_change_named_for_its_reader() {
    let r = reviewed().await;
    assert!(
        r.shown.contains("soc-tier2@example.com") && !r.shown.contains(&r.tier2),
        "{}",
        r.shown
    );
    let changes = plan_changes(&r.written);
    let to_tier2: Vec<&Value> = changes.iter().filter(|c| c["rule"] == "to-tier2").collect();
    assert_eq!(to_tier2.len(), r.new.len());
    assert_eq!(changes.len(), 3 * r.new.len(), "not the budget's 6");
    assert!(
        to_tier2
            .iter()
            .all(|c| c["new"] == r.tier2.as_str() && c["new_email"] == "soc-tier2@example.com")
    );
    for c in r.written["cases"].as_array().unwrap() {
        let name = TENANTS.iter().find(|(id, _)| c["tenant"] == *id).unwrap().1;
        assert_eq!(c["tenant_name"], name, "{c}");
    }
}

/// `apply` approves part of a plan, takes at most the budget per run and says how many
/// remain, records the operator, speaks v5 first (no legacy call answered 405), and makes
/// each change once over as many runs as it takes.
#[tokio::test(flavor = "multi_thread")]
async fn apply_takes_a_plan_in_approved_parts_within_the_budget() {
    let r = reviewed().await;
    let n = r.new.len();
    let first = r
        .apply(&["--rule", "to-tier2", "--operator", "carol"])
        .await;
    assert_exit(&first, 0);
    let err = stderr(&first);
    // The tags and their comments wait.
    let waiting = format!("{} change(s) not approved", 2 * n);
    assert!(err.contains(&waiting), "{err}");
    let left = format!("{} change(s) remain beyond this run's budget of 6", n - 6);
    assert!(err.contains(&left), "{err}");
    assert_eq!(r.assigned(), 6);
    assert_eq!(r.rows(casewarden::audit::Outcome::Applied).await.len(), 6);
    let intents = r.rows(casewarden::audit::Outcome::Planned).await;
    assert_eq!(intents.len(), 6);
    assert!(
        intents
            .iter()
            .all(|i| i.reason.contains("[operator carol]")),
        "{intents:?}"
    );
    assert!(
        !r.sim.state().requests().iter().any(|q| q.status == 405),
        "apply spoke the legacy call first"
    );
    // Again until the assignments are done, then the tags.
    while r.assigned() < n {
        assert_exit(&r.apply(&["--rule", "to-tier2"]).await, 0);
    }
    let done = r.apply(&["--rule", "to-tier2"]).await;
    assert_fails_with(&done, 2, "nothing of plan");
    let tagged = |id: &String| {
        let state = r.sim.state();
        let tags = state.case(id).unwrap()["tags"].clone();
        tags.as_array().unwrap().iter().any(|t| t == "triaged")
    };
    while !r.new.iter().all(tagged) {
        assert_exit(&r.apply(&[]).await, 0);
    }
    assert_fails_with(&r.apply(&[]).await, 2, "was already applied by pass");
    let applied = r.rows(casewarden::audit::Outcome::Applied).await;
    assert_eq!(applied.len(), 3 * n, "each change applied once");
    let mut per_run: std::collections::HashMap<&str, usize> = Default::default();
    for row in &applied {
        *per_run.entry(&row.run_id).or_default() += 1;
    }
    assert!(
        per_run.values().all(|&k| k <= 6),
        "comments count in the budget: {per_run:?}"
    );
    let bad = r.apply(&["--rule", "nope"]).await;
    assert_fails_with(&bad, 2, "the plan has no changes of a rule \"nope\"");
}

/// The New cases of `sim` and the user id of soc-tier2@example.com.
fn new_cases_and_tier2(sim: &casewarden::sim::Simulator) -> (Vec<String>, String) {
    let state = sim.state();
    let new = state
        .cases
        .iter()
        .filter(|c| c["status"] == "New")
        .map(|c| c["_id"].as_str().unwrap().to_string())
        .collect();
    let tier2 = state
        .users
        .iter()
        .find(|u| u.email == "soc-tier2@example.com")
        .unwrap()
        .user_id
        .clone();
    (new, tier2)
}

/// Every change of a written plan.
fn plan_changes(written: &Value) -> Vec<Value> {
    written["cases"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["changes"].as_array().unwrap().clone())
        .collect()
}

/// `once --dry-run --out` writes the plan before its summary: a reader that stops early
/// (`| head`) cannot leave an empty plan behind.
#[tokio::test(flavor = "multi_thread")]
async fn a_plan_is_written_even_when_the_summarys_reader_stops_early() {
    let sim = start(sim_options(1500)).await;
    let rule = "const RULE = #{ name: \"tag-all\", max_change_fraction: 1.0 };\nfn evaluate(c) { add_tag(\"seen\", \"looked at\"); }\n";
    let ws = Workspace::new(&sim.url, "legacy", "", Some(&[("tag.rhai", rule)]));
    let plan = ws.dir.path().join("plan.json");
    // Far more summary than a pipe holds, so the writer meets a closed pipe.
    let line = format!(
        "{} --config {} once --dry-run --out {} | head -1",
        env!("CARGO_BIN_EXE_casewarden"),
        ws.config().display(),
        plan.display()
    );
    let out = tokio::process::Command::new("sh")
        .args(["-c", &line])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&plan).unwrap()).unwrap();
    assert_eq!(plan_changes(&written).len(), 1500);
    assert_exit(
        &ws.run(&["apply", plan.to_str().unwrap(), "--dry-run"])
            .await,
        0,
    );
}
