//! Change control: what a rule edit would change (`diff`), before it is deployed.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::common::*;

const LIVE: &str = "const RULE = #{ name: \"heat\", max_change_fraction: 1.0 };\nfn evaluate(c) {\n    if c.priority == \"High\" { add_tag(\"hot\"); }\n    if c.priority == \"Medium\" { add_tag(\"warm\"); }\n}\n";
const CANDIDATE: &str = "const RULE = #{ name: \"heat\", max_change_fraction: 1.0 };\nfn evaluate(c) {\n    if c.priority == \"Critical\" { add_tag(\"hot\"); }\n    if c.priority == \"Medium\" { add_tag(\"mild\"); }\n}\n";

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
    let one = high.iter().next().unwrap();
    assert!(text.contains(&format!("  - case {one} (ticket ")), "{text}");
}
