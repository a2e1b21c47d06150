//! Remembered verdicts: a pass counts a case whose version, rules and clock give the same
//! answers from what the rules made of it before, and still evaluates a case whose time
//! has come, through the binary against the simulator.

use std::collections::HashMap;

use casewarden::audit::{Filter, Outcome};
use casewarden::mirror::Verdict;
use serde_json::json;

use crate::common::*;
use crate::faults::GUARD_OFF;

/// The verdicts the mirror file holds, by case id, as the next `once` loads them.
async fn verdicts(ws: &Workspace) -> HashMap<String, Verdict> {
    let held = ws.loaded_mirror().await;
    (held.cases.after(None, usize::MAX).into_iter())
        .filter_map(|l| Some((l.at.1.to_string(), l.verdict?.clone())))
        .collect()
}

/// A copy of the simulator's first case with `id`, tags, status, priority and times.
fn plant(sim: &casewarden::sim::Simulator, id: &str, tags: &[&str], created_at: i64) {
    let mut s = sim.state();
    let mut case = s.cases[0].clone();
    case["_id"] = json!(id);
    case["ticket_id"] = json!(990_000 + s.cases.len());
    case["tags"] = json!(tags);
    case["status"] = json!("New");
    case["priority"] = json!("Low");
    case["created_at"] = json!(created_at);
    case["modified_at"] = json!(created_at);
    s.put_case(case);
}

const AGING: &str = "const RULE = #{ name: \"aging\" };\nfn evaluate(c) {\n    if has_tag(c, \"aging\") && hours_since(c.created_at) >= 24 { set_priority(\"High\", \"a day old\"); }\n}\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_remembered_case_is_evaluated_again_when_the_hour_its_rule_waits_for_comes() {
    let sim = start(sim_options(100)).await;
    let day = 24 * 3_600_000;
    // One case turns a day old in half an hour, one in a few seconds.
    let far = casewarden::now_ms() - day + 30 * 60_000;
    let near = casewarden::now_ms() - day + 8_000;
    plant(&sim, "aging-far", &["aging"], far);
    plant(&sim, "aging-near", &["aging"], near);
    let ws = Workspace::new(
        &sim.url,
        "legacy",
        &format!("{GUARD_OFF}\n{EVERY_SECOND}"),
        Some(&[("aging.rhai", AGING)]),
    );
    assert_exit(&ws.run(&["once"]).await, 0);
    assert!(
        sim.state().update_calls.is_empty(),
        "nothing is a day old yet"
    );
    let kept = verdicts(&ws).await;
    assert_eq!(
        kept["aging-far"].until,
        far + day,
        "the verdict holds until its 24th hour, not longer"
    );
    assert!(
        !kept.contains_key("aging-near"),
        "a verdict ending within minutes is not worth a write"
    );
    assert!(
        kept.len() > 90,
        "every quiet case is remembered: {}",
        kept.len()
    );

    // The daemon keeps every verdict in memory and passes every second; nobody touches
    // the case; its hour comes.
    let daemon = Daemon::start(&ws, &[]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !sim.state().update_calls.contains_key("aging-near") {
        assert!(
            std::time::Instant::now() < deadline,
            "the rule never fired: {}",
            daemon.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let applied: Vec<_> = (ws.audit(Filter::default()).await.into_iter())
        .filter(|r| r.outcome == Outcome::Applied)
        .collect();
    assert_eq!(applied.len(), 1, "{applied:?}");
    assert_eq!(applied[0].case_id, "aging-near");
    assert!(
        chrono::DateTime::parse_from_rfc3339(&applied[0].recorded_at)
            .unwrap()
            .timestamp_millis()
            >= near + day,
        "not before its time: {:?}",
        applied[0].recorded_at
    );
    assert_eq!(sim.state().case("aging-near").unwrap()["priority"], "High");
}

const RULES: [(&str, &str); 3] = [
    (
        "stale.rhai",
        "const RULE = #{ name: \"stale\", query: #{ status: \"New\" }, exempt_tags: [\"vip\"] };\nfn evaluate(c) { if days_since(c.created_at) >= 3 && priority_rank(c.priority) < 3 { set_priority(\"High\", \"stale\"); } }\n",
    ),
    (
        "dmz.rhai",
        "const RULE = #{ name: \"dmz\" };\nfn evaluate(c) { let e = entity(c); if e != () && e.ip != () && e.ip.starts_with(\"10.10.\") && !has_tag(c, \"dmz\") { add_tag(\"dmz\", \"dmz\"); } }\n",
    ),
    (
        "quiet.rhai",
        "const RULE = #{ name: \"quiet\", query: #{ priority: \"Critical\" } };\nfn evaluate(c) { if c.status == \"Nonexistent\" { set_status(\"Resolved\", \"never\"); } }\n",
    ),
];

/// The counts a `once` prints: cases seen and the per-rule table (without the pass id and
/// the chain head).
fn table(out: &std::process::Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = (text.lines())
        .skip_while(|l| !l.starts_with("pass "))
        .take_while(|l| !l.contains("audit chain head"))
        .map(|l| {
            l.strip_prefix("pass ")
                .map_or(l, |l| l.split_once(": ").unwrap().1)
        })
        .collect();
    assert!(lines.len() > 3, "a pass summary and a table: {text}");
    lines.join("\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pass_counts_remembered_cases_as_the_rules_made_of_them() {
    let sim = start(sim_options(400)).await;
    {
        // A few cases an exemption keeps off the `stale` rule.
        let mut s = sim.state();
        for case in s.cases.iter_mut().filter(|c| c["status"] == "New").take(7) {
            case["tags"] = json!(["vip"]);
        }
    }
    let ws = Workspace::new(&sim.url, "legacy", GUARD_OFF, Some(&RULES));
    let first = ws.run(&["once", "--dry-run"]).await;
    assert_exit(&first, 0);
    let kept = verdicts(&ws).await;
    assert!(
        kept.len() > 250,
        "most cases asked nothing and are remembered: {}",
        kept.len()
    );
    let second = ws.run(&["once", "--dry-run"]).await;
    assert_exit(&second, 0);
    assert_eq!(table(&second), table(&first));
    // Reused, not reached again: a verdict keeps when it was reached.
    let again = verdicts(&ws).await;
    let reused = (kept.iter())
        .filter(|(id, v)| again.get(*id).is_some_and(|a| a.at == v.at))
        .count();
    assert_eq!(reused, kept.len(), "every verdict was reused");
    let log = |out: &std::process::Output| String::from_utf8_lossy(&out.stderr).to_string();
    assert!(log(&first).contains("remembered=0"), "{}", log(&first));
    let said = format!("remembered={}", kept.len());
    assert!(log(&second).contains(&said), "{said}: {}", log(&second));
    assert!(
        table(&first).contains("400 case(s) seen"),
        "{}",
        table(&first)
    );
    let exempt = table(&first)
        .lines()
        .find(|l| l.trim_start().starts_with("stale"))
        .map(|l| l.split_whitespace().nth(2).unwrap().to_string());
    assert!(
        exempt.is_some_and(|n| n.parse::<usize>().unwrap() >= 7),
        "{}",
        table(&first)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_constant_made_of_the_clock_at_load_keeps_every_case_evaluated() {
    let sim = start(sim_options(50)).await;
    let rule = "const RULE = #{ name: \"since-load\" };\nconst LOADED = now();\nfn evaluate(c) { if c.created_at > global::LOADED { add_tag(\"new\", \"after load\"); } }\n";
    let ws = Workspace::new(&sim.url, "legacy", GUARD_OFF, Some(&[("r.rhai", rule)]));
    assert_exit(&ws.run(&["once"]).await, 0);
    assert!(
        verdicts(&ws).await.is_empty(),
        "a verdict would keep the clock of the process that loaded the rules"
    );
}
