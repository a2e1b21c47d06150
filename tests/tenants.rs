//! Customers (tenants) on one server: rules scoped to tenants, `c.tenant` and
//! `c.tenant_name`, audit rows carrying the tenant, `audit --tenant`.

use std::collections::{HashMap, HashSet};

use casewarden::audit::Filter;
use casewarden::sim::data::TENANTS;
use serde_json::Value;

use crate::common::*;

/// A rule tagging every New case of `tenants` with `tag`.
fn scoped(name: &str, tenants: &[&str], tag: &str) -> String {
    let list: Vec<String> = tenants.iter().map(|t| format!("{t:?}")).collect();
    format!(
        "const RULE = #{{ name: {name:?}, query: #{{ status: \"New\" }}, tenants: [{}] }};\n\
         fn evaluate(c) {{ add_tag({tag:?}, `customer ${{c.tenant}}`); }}\n",
        list.join(", ")
    )
}

/// The tenant of every case the simulator holds.
fn tenant_of(sim: &casewarden::sim::Simulator) -> HashMap<String, String> {
    sim.state()
        .cases
        .iter()
        .map(|c| {
            (
                c["_id"].as_str().unwrap().to_string(),
                c["cust_id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The New cases of the customers `wanted` accepts (by `cust_id`).
fn new_cases(sim: &casewarden::sim::Simulator, wanted: &dyn Fn(&str) -> bool) -> HashSet<String> {
    sim.state()
        .cases
        .iter()
        .filter(|c| c["status"] == "New" && wanted(c["cust_id"].as_str().unwrap()))
        .map(|c| c["_id"].as_str().unwrap().to_string())
        .collect()
}

fn tagged(sim: &casewarden::sim::Simulator, tag: &str) -> HashSet<String> {
    sim.state()
        .cases
        .iter()
        .filter(|c| c["tags"].as_array().unwrap().iter().any(|t| t == tag))
        .map(|c| c["_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn rules_change_only_the_tenants_they_are_scoped_to_and_rows_say_whose_case() {
    let sim = start(sim_options(600)).await;
    let (t1, t2, t3) = (TENANTS[0].0, TENANTS[1].0, TENANTS[2].0);
    let named = "const RULE = #{ name: \"by-name\", query: #{ status: \"New\" } };\n\
                 fn evaluate(c) { if c.tenant_name != () { add_tag(`for ${c.tenant_name}`); } }\n";
    let ws = Workspace::new(
        &sim.url,
        "legacy",
        "max_change_fraction = 1.0\ncomment_changes = false\nmax_changes_per_run = 100000",
        Some(&[
            ("10-first.rhai", &scoped("first-only", &[t1], "first")),
            ("20-others.rhai", &scoped("the-others", &[t2, t3], "others")),
            ("30-named.rhai", named),
        ]),
    );
    let new_before = new_cases(&sim, &|_| true);
    let out = ws.run(&["once"]).await;
    assert_exit(&out, 0);
    let tenant = tenant_of(&sim);
    let first = tagged(&sim, "first");
    let others = tagged(&sim, "others");
    assert!(!first.is_empty() && !others.is_empty());
    assert!(
        first.iter().all(|id| tenant[id] == t1),
        "a case of another customer got `first`"
    );
    assert!(
        others.iter().all(|id| tenant[id] != t1),
        "a case of the first customer got `others`"
    );
    let new_of = |wanted: &dyn Fn(&str) -> bool| -> HashSet<String> {
        new_before
            .iter()
            .filter(|id| wanted(&tenant[*id]))
            .cloned()
            .collect()
    };
    assert_eq!(
        first,
        new_of(&|t| t == t1),
        "every New case of the first customer"
    );
    assert_eq!(others, new_of(&|t| t != t1));
    // 4.3 cases carry only `cust_id`: the name comes from /tenants, read once.
    for (id, name) in TENANTS {
        let with_name = tagged(&sim, &format!("for {name}"));
        assert_eq!(with_name, new_of(&|t| t == id), "{name}");
    }
    let tenant_reads = sim
        .state()
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/tenants"))
        .count();
    assert_eq!(tenant_reads, 1);

    // Every row names the case's customer; `audit --tenant` returns exactly its rows.
    let rows = ws.audit(Filter::default()).await;
    let case_rows: Vec<_> = rows
        .iter()
        .filter(|r| tenant.contains_key(&r.case_id))
        .collect();
    assert!(
        case_rows
            .iter()
            .all(|r| r.tenant.as_deref() == Some(tenant[&r.case_id].as_str()))
    );
    let db = ws.audit_db();
    let (applied, cases) = applied_rows(&db, "--tenant", t1).await;
    assert!(applied.iter().all(|r| r["tenant"] == t1));
    assert_eq!(
        cases,
        new_of(&|t| t == t1),
        "the first customer's changed cases, no others"
    );
    let verify = run_bin(&["audit", "verify", "--db", db.to_str().unwrap()], &[]).await;
    assert_exit(&verify, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_tenant_scope_is_refused_with_where_it_is() {
    let sim = start(sim_options(5)).await;
    let bad = "const RULE = #{ name: \"bad\", query: #{ tenantid: \"a\" }, tenants: [\"a\"] };\nfn evaluate(c) {}\n";
    let ws = Workspace::new(&sim.url, "legacy", "", Some(&[("bad.rhai", bad)]));
    let out = ws.run(&["check", "--offline"]).await;
    let err = format!("{}{}", stderr(&out), stdout(&out));
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("bad.rhai:1:") && err.contains("RULE.tenants"),
        "{err}"
    );
    let bad = "const RULE = #{ name: \"bad\", tenants: \"a\" };\nfn evaluate(c) {}\n";
    std::fs::write(ws.dir.path().join("rules/bad.rhai"), bad).unwrap();
    let out = ws.run(&["check", "--offline"]).await;
    let err = format!("{}{}", stderr(&out), stdout(&out));
    assert!(err.contains("RULE.tenants must be a list"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_simulator_spreads_cases_over_the_tenants_it_is_given() {
    let mut opts = sim_options(300);
    opts.tenants = 7;
    let sim = start(opts).await;
    let client = client(&sim);
    let tenants = client.list_tenants().await.unwrap();
    assert_eq!(tenants.len(), 7);
    let all = list_all(&client, vec![]).await.unwrap();
    let used: HashSet<&str> = all.iter().filter_map(|c| c.tenant()).collect();
    assert_eq!(used.len(), 7, "every customer has cases");
    let one = &tenants[3].id;
    let theirs = list_all(&client, vec![("tenantid".into(), one.clone())])
        .await
        .unwrap();
    assert!(!theirs.is_empty());
    assert!(theirs.iter().all(|c| c.tenant() == Some(one.as_str())));
    assert_eq!(
        theirs.len(),
        all.iter()
            .filter(|c| c.tenant() == Some(one.as_str()))
            .count()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rule_over_its_guard_in_one_tenant_is_halted_there_and_applied_in_the_others() {
    let sim = start(sim_options(900)).await;
    let t1 = TENANTS[0].0;
    // All New cases of the first customer (about 30% of its cases), and the New Critical
    // ones of the others (a few percent): about 12% of all cases, under the 25% guard. No
    // query: the guard measures against every case listed.
    let rule = format!(
        "const RULE = #{{ name: \"lopsided\" }};\n\
         fn evaluate(c) {{ if c.status == \"New\" && (c.tenant == {t1:?} || c.priority == \"Critical\") {{ add_tag(\"looked-at\"); }} }}\n"
    );
    let ws = Workspace::new(
        &sim.url,
        "legacy",
        "comment_changes = false\nmax_changes_per_run = 100000",
        Some(&[("10-lopsided.rhai", &rule)]),
    );
    let wanted: Vec<(String, String)> = sim
        .state()
        .cases
        .iter()
        .filter(|c| c["status"] == "New" && (c["cust_id"] == t1 || c["priority"] == "Critical"))
        .map(|c| {
            (
                c["_id"].as_str().unwrap().to_string(),
                c["cust_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let out = ws.run(&["once"]).await;
    let text = stdout(&out);
    assert_exit(&out, 1);
    assert!(text.contains("HALTED for 1 customer(s)"), "{text}");
    assert!(text.contains(&format!("customer {t1}")), "{text}");
    let got = tagged(&sim, "looked-at");
    let (in_t1, others): (Vec<_>, Vec<_>) = wanted.iter().partition(|(_, t)| t == t1);
    // The summary counts per customer: (applied, failed, skipped).
    let row = |t: &str| -> Vec<usize> {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(t))
            .unwrap_or_else(|| panic!("{t}: {text}"));
        line.split_whitespace()
            .skip(1)
            .map(|n| n.parse().unwrap())
            .collect()
    };
    assert_eq!(row(t1), vec![0, 0, in_t1.len()]);
    let applied: usize = TENANTS[1..].iter().map(|(t, _)| row(t)[0]).sum();
    assert_eq!(applied, others.len());
    // The report counts the same per customer.
    let db = ws.audit_db();
    let out = run_bin(
        &["report", "--format", "json", "--db", db.to_str().unwrap()],
        &[],
    )
    .await;
    assert_exit(&out, 0);
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let customers = report["tenants"].as_array().unwrap();
    let of = |t: &str| {
        customers
            .iter()
            .find(|c| c["name"] == t)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(
        (of(t1)["applied"].as_u64(), of(t1)["skipped"].as_u64()),
        (Some(0), Some(in_t1.len() as u64))
    );
    let reported: u64 = TENANTS[1..]
        .iter()
        .filter_map(|(t, _)| of(t)["applied"].as_u64())
        .sum();
    assert_eq!(reported, others.len() as u64);
    // Halts for one customer count as guard halts.
    let lopsided = report["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == "lopsided")
        .unwrap();
    assert_eq!(lopsided["guard_halts"], 1, "{lopsided}");
    assert!(!in_t1.is_empty() && !others.is_empty());
    assert!(
        in_t1.iter().all(|(id, _)| !got.contains(id)),
        "the halted customer was changed"
    );
    let expected: HashSet<String> = others.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(got, expected, "the other customers' cases were changed");
    let skipped = ws
        .audit(Filter {
            tenant: Some(t1.to_string()),
            ..Filter::default()
        })
        .await;
    // The customer's halt is one note of the pass, with its count; its changes are rows.
    let (notes, skipped): (Vec<_>, Vec<_>) = skipped.into_iter().partition(|r| r.field == "rule");
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(notes[0].new.as_deref(), Some("halted"));
    assert_eq!(notes[0].old, Some(in_t1.len().to_string()));
    assert_eq!(skipped.len(), in_t1.len());
    assert!(skipped.iter().all(|r| {
        r.outcome.as_str() == "skipped"
            && r.reason
                .contains(&format!("blast-radius guard for customer {t1}"))
    }));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_customers_own_budget_and_guard_from_the_config_apply_to_its_cases_only() {
    let sim = start(sim_options(900)).await;
    let (t1, t2, t3) = (TENANTS[0].0, TENANTS[1].0, TENANTS[2].0);
    let rule = "const RULE = #{ name: \"all-new\" };\n\
                fn evaluate(c) { if c.status == \"New\" { add_tag(\"seen\"); } }\n";
    let ws = Workspace::new(
        &sim.url,
        "legacy",
        &format!(
            "comment_changes = false\nmax_changes_per_run = 100000\nmax_change_fraction = 1.0\n\n\
             [tenants.\"{t2}\"]\nmax_changes_per_run = 5\n\n\
             [tenants.\"{t3}\"]\nmax_change_fraction = 0.1\n"
        ),
        Some(&[("10-all-new.rhai", rule)]),
    );
    let new_of = |t: &str| new_cases(&sim, &|x| x == t);
    let (new1, new2, new3) = (new_of(t1), new_of(t2), new_of(t3));
    assert!(new2.len() > 5 && !new3.is_empty());
    let out = ws.run(&["once"]).await;
    let text = stdout(&out);
    assert_exit(&out, 1);
    let got = tagged(&sim, "seen");
    assert!(
        new1.is_subset(&got),
        "the customer without limits got every change"
    );
    assert_eq!(got.intersection(&new2).count(), 5, "its own budget of 5");
    assert!(
        got.is_disjoint(&new3),
        "its own stricter guard halted the rule for it"
    );
    assert!(text.contains(&format!("customer {t3}")), "{text}");
    let deferred = ws
        .audit(Filter {
            tenant: Some(t2.to_string()),
            outcome: Some(casewarden::audit::Outcome::Skipped),
            ..Filter::default()
        })
        .await;
    assert_eq!(deferred.len(), new2.len() - 5);
    assert!(
        deferred
            .iter()
            .all(|r| r.reason.contains("max_changes_per_run")),
        "{:?}",
        deferred[0].reason
    );
    // A bad limit names its key.
    ws.edit_config("max_change_fraction = 0.1", "max_change_fraction = 1.5");
    let out = ws.run(&["check", "--offline"]).await;
    let err = format!("{}{}", stderr(&out), stdout(&out));
    assert!(
        err.contains(&format!("tenants.{t3}.max_change_fraction")),
        "{err}"
    );
}

/// The rows `audit --FLAG VALUE --outcome applied --format json` prints, and their cases.
async fn applied_rows(
    db: &std::path::Path,
    flag: &str,
    value: &str,
) -> (Vec<Value>, HashSet<String>) {
    let db = db.to_str().unwrap();
    let args = [
        "audit",
        "--db",
        db,
        flag,
        value,
        "--outcome",
        "applied",
        "--format",
        "json",
    ];
    let out = run_bin(&args, &[]).await;
    assert_exit(&out, 0);
    let rows: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let cases = rows
        .iter()
        .map(|r| r["case_id"].as_str().unwrap().to_string())
        .collect();
    (rows, cases)
}

/// A config with one `[[instance]]` per (name, url, tenants).
fn instances_config(ws: &Workspace, servers: &[(&str, &str, &[&str])]) {
    let mut text = String::new();
    for (name, url, tenants) in servers {
        let list: Vec<String> = tenants.iter().map(|t| format!("{t:?}")).collect();
        text.push_str(&format!(
            "[[instance]]\nname = {name:?}\nurl = {url:?}\napi_flavor = \"legacy\"\nuser = {USER:?}\n\
             api_key_file = \"api_key\"\ntimeout_secs = 5\nmax_attempts = 1\nretry_base_ms = 20\n\
             tenants = [{}]\n\n",
            list.join(", ")
        ));
    }
    text.push_str(
        "[daemon]\nrules_dir = \"rules\"\nmax_change_fraction = 1.0\ncomment_changes = false\n\
         max_changes_per_run = 100000\n\n[audit]\npath = \"state/audit.db\"\n",
    );
    std::fs::write(ws.config(), text).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn two_servers_in_one_pass_each_rule_changes_only_its_servers_and_customers() {
    let (eu, us) = (start(sim_options(500)).await, start(sim_options(400)).await);
    let (t1, t2, t3) = (TENANTS[0].0, TENANTS[1].0, TENANTS[2].0);
    let eu_rule = "const RULE = #{ name: \"eu-only\", instances: [\"eu\"] };\n\
                   fn evaluate(c) { if c.status == \"New\" { add_tag(\"eu-only\"); } }\n";
    let ws = Workspace::new(
        &eu.url,
        "legacy",
        "",
        Some(&[
            ("10-eu.rhai", eu_rule),
            ("20-t3.rhai", &scoped("third-customer", &[t3], "t3")),
        ]),
    );
    let dead = format!("http://127.0.0.1:{}", free_port());
    instances_config(
        &ws,
        &[
            ("eu", &eu.url, &[t1, t2]),
            ("us", &us.url, &[]),
            ("down", &dead, &[]),
        ],
    );
    let eu_expected = new_cases(&eu, &|t| t == t1 || t == t2);
    let us_expected = new_cases(&us, &|t| t == t3);
    let out = ws.run(&["once"]).await;
    let text = stdout(&out);
    // The server that is down fails its pass; the others run.
    assert_exit(&out, 1);
    assert!(
        text.contains("instance down") && text.contains("not run"),
        "{text}"
    );
    assert_eq!(
        tagged(&eu, "eu-only"),
        eu_expected,
        "eu: its customers' New cases"
    );
    assert!(
        tagged(&eu, "t3").is_empty(),
        "eu is limited to two customers"
    );
    assert!(tagged(&us, "eu-only").is_empty(), "a rule for eu only");
    assert_eq!(tagged(&us, "t3"), us_expected);
    assert!(changed_by_api(&eu, None) == eu_expected && changed_by_api(&us, None) == us_expected);
    // Rows say which server; `audit --instance` returns exactly that server's changes.
    let db = ws.audit_db();
    for (name, expected) in [("eu", &eu_expected), ("us", &us_expected)] {
        let (rows, cases) = applied_rows(&db, "--instance", name).await;
        assert!(rows.iter().all(|r| r["instance"] == name));
        assert_eq!(&cases, expected, "{name}");
    }
    let verify = run_bin(&["audit", "verify", "--db", db.to_str().unwrap()], &[]).await;
    assert_exit(&verify, 0);
    // The report counts the same per server.
    let out = run_bin(
        &["report", "--format", "json", "--db", db.to_str().unwrap()],
        &[],
    )
    .await;
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let servers: HashMap<String, u64> = report["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["name"].as_str().unwrap().to_string(),
                g["applied"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected: HashMap<String, u64> = [
        ("eu".to_string(), eu_expected.len() as u64),
        ("us".to_string(), us_expected.len() as u64),
    ]
    .into();
    assert_eq!(servers, expected);
    // One server at a time on request; a second pass changes nothing more.
    let out = ws.run(&["once", "--instance", "us"]).await;
    assert_exit(&out, 0);
    assert_eq!(changed_by_api(&us, None), us_expected);
    let out = ws.run(&["once", "--instance", "nope"]).await;
    assert!(
        stderr(&out).contains("no such server") && stderr(&out).contains("eu, us, down"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn instance_names_are_checked_in_the_config_and_in_rules() {
    let sim = start(sim_options(5)).await;
    let rule = "const RULE = #{ name: \"r\", instances: [\"mars\"] };\nfn evaluate(c) {}\n";
    let ws = Workspace::new(&sim.url, "legacy", "", Some(&[("r.rhai", rule)]));
    instances_config(&ws, &[("eu", &sim.url, &[])]);
    let out = ws.run(&["check", "--offline"]).await;
    let err = format!("{}{}", stderr(&out), stdout(&out));
    assert_ne!(out.status.code(), Some(0));
    assert!(
        err.contains("r.rhai:1:")
            && err.contains(": RULE.instances: no server named \"mars\"")
            && err.contains("(servers: eu)"),
        "{err}"
    );
    let out = ws.run(&["once"]).await;
    assert_exit(&out, 2);
    let rules = ws.dir.path().join("rules");
    let out = ws
        .run(&[
            "diff",
            "--rules-dir",
            rules.to_str().unwrap(),
            "--instance",
            "nope",
        ])
        .await;
    assert!(stderr(&out).contains("(servers: eu)"), "{}", stderr(&out));
    instances_config(&ws, &[("eu", &sim.url, &[]), ("eu", &sim.url, &[])]);
    let out = ws.run(&["check", "--offline"]).await;
    let err = format!("{}{}", stderr(&out), stdout(&out));
    assert!(
        err.contains("instance.eu.name") && err.contains("two servers are named"),
        "{err}"
    );
    std::fs::write(ws.config(), "[daemon]\nrules_dir = \"rules\"\n").unwrap();
    let out = ws.run(&["check", "--offline"]).await;
    let err = format!("{}{}", stderr(&out), stdout(&out));
    assert!(err.contains("no server"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reviewed_plan_for_the_second_server_is_applied_there() {
    let (eu, us) = (start(sim_options(60)).await, start(sim_options(60)).await);
    let rule = "const RULE = #{ name: \"all-new\" };\n\
                fn evaluate(c) { if c.status == \"New\" { add_tag(\"seen\"); } }\n";
    let ws = Workspace::new(&eu.url, "legacy", "", Some(&[("10-all-new.rhai", rule)]));
    instances_config(&ws, &[("eu", &eu.url, &[]), ("us", &us.url, &[])]);
    let plan = ws.dir.path().join("plan.json");
    let out = ws
        .run(&[
            "once",
            "--instance",
            "us",
            "--dry-run",
            "--out",
            plan.to_str().unwrap(),
        ])
        .await;
    assert_exit(&out, 0);
    let out = ws.run(&["apply", plan.to_str().unwrap()]).await;
    assert_exit(&out, 0);
    let wanted = new_cases(&us, &|_| true);
    assert!(!wanted.is_empty());
    assert_eq!(tagged(&us, "seen"), wanted);
    assert!(
        changed_by_api(&eu, None).is_empty(),
        "nothing sent to the other server"
    );
    let rows = ws
        .audit(Filter {
            instance: Some("us".into()),
            outcome: Some(casewarden::audit::Outcome::Applied),
            ..Filter::default()
        })
        .await;
    assert_eq!(rows.len(), wanted.len());
    // Its revert goes to the server the pass ran on.
    let out = ws.run(&["revert", &rows[0].run_id]).await;
    assert_exit(&out, 0);
    assert!(tagged(&us, "seen").is_empty(), "{}", stdout(&out));
    assert!(changed_by_api(&eu, None).is_empty());
}

/// `check` probes every server and prints each result, exiting by the worst; `status`
/// lists every configured server: one never run, one whose last pass failed with its
/// error, one fine.
#[tokio::test(flavor = "multi_thread")]
async fn check_and_status_leave_no_server_out() {
    let (eu, spare) = (start(sim_options(20)).await, start(sim_options(5)).await);
    let rule = "const RULE = #{ name: \"r\" };\nfn evaluate(c) {}\n";
    let ws = Workspace::new(&eu.url, "legacy", "", Some(&[("r.rhai", rule)]));
    let dead = format!("http://127.0.0.1:{}", free_port());
    instances_config(
        &ws,
        &[
            ("eu", &eu.url, &[]),
            ("down", &dead, &[]),
            ("spare", &spare.url, &[]),
        ],
    );
    // Before any pass there is no log yet: every server never passed.
    let before = ws.run(&["status"]).await;
    assert_exit(&before, 0);
    assert_eq!(
        stdout(&before).matches("never passed").count(),
        3,
        "{}",
        stdout(&before)
    );
    let out = ws.run(&["check"]).await;
    let text = stdout(&out);
    assert_exit(&out, 3);
    assert!(
        text.contains(&format!("server {}: key accepted", eu.url))
            && text.contains(&format!("server {}: key accepted", spare.url))
            && text.contains(&format!("server {dead} (down): FAILED")),
        "{text}"
    );
    assert!(stderr(&out).contains("down"), "{}", stderr(&out));

    assert_exit(&ws.run(&["once", "--instance", "eu"]).await, 0);
    let out = ws.run(&["once", "--instance", "down"]).await;
    assert_exit(&out, 3);
    let out = ws.run(&["status"]).await;
    let text = stdout(&out);
    assert_exit(&out, 0);
    assert!(
        text.contains(&format!("server     eu ({}): ok", eu.url)),
        "{text}"
    );
    assert!(
        text.contains(&format!("server     spare ({}): never passed", spare.url)),
        "{text}"
    );
    assert!(
        text.contains(&format!("server     down ({dead}): error"))
            && text.contains("  last error "),
        "{text}"
    );
    let out = ws.run(&["status", "--format", "json"]).await;
    let status: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let servers = status["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 3, "{servers:?}");
    let down = servers.iter().find(|s| s["instance"] == "down").unwrap();
    assert!(
        down["last_error"]["error"].as_str().unwrap().len() > 10,
        "{down}"
    );
    assert!(
        servers
            .iter()
            .any(|s| s["instance"] == "spare" && s["state"] == "never passed")
    );
}

/// The report's numbers add up: over rules, customers, passes and servers the sums equal the
/// totals, for each outcome; every configured rule is listed (one that never changed
/// anything too), customers by name, and a section per server with its failed passes and
/// their errors.
#[tokio::test(flavor = "multi_thread")]
async fn the_reports_numbers_reconcile_over_rules_customers_passes_and_servers() {
    let (_eu, us, ws) = three_servers_four_rules().await;
    assert_exit(&ws.run(&["once", "--dry-run"]).await, 1);
    assert_exit(&ws.run(&["once"]).await, 1);
    let out = ws.run(&["report", "--format", "json"]).await;
    assert_exit(&out, 0);
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_sums_equal_totals(&report);
    let totals = &report["totals"];
    for key in ["applied", "skipped", "dry_run_planned"] {
        assert!(totals[key].as_i64().unwrap() > 0, "{key}: {totals}");
    }
    assert!(totals["unknown"].as_i64().unwrap() + totals["failed"].as_i64().unwrap() > 0);
    let rules: Vec<&str> = report["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules, ["never", "third-customer", "to-high", "to-low"]);
    let never = &report["rules"][0];
    assert_eq!(
        (never["applied"].as_i64(), never["skipped"].as_i64()),
        (Some(0), Some(0))
    );
    for t in report["tenants"].as_array().unwrap() {
        let id = t["name"].as_str().unwrap();
        let name = TENANTS.iter().find(|(i, _)| *i == id).unwrap().1;
        assert_eq!(t["cust_name"], name, "{t}");
    }
    let servers = report["servers"].as_array().unwrap();
    let names: Vec<&str> = servers
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["eu", "us", "down"]);
    assert_eq!(servers[1]["url"], us.url.as_str());
    let down = &servers[2]["failed_passes"];
    assert_eq!(down.as_array().unwrap().len(), 2, "{down}");
    assert!(
        down[0]["error"].as_str().unwrap().contains("127.0.0.1"),
        "{down}"
    );
    assert!(!servers[0]["failed_passes"].as_array().unwrap().is_empty());
    let sources: Vec<&str> = report["source"]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(sources, ["eu", "us", "down"]);
    let html = ws.run(&["report"]).await;
    let page = stdout(&html);
    for name in [
        "Server eu",
        "Server us",
        "Server down",
        TENANTS[0].1,
        "never",
    ] {
        assert!(page.contains(name), "{name} not in the page");
    }
}

/// Each outcome's count summed over the report's rules, customers, passes (with the ones
/// not listed) and servers equals its total.
fn assert_sums_equal_totals(report: &Value) {
    let sum = |list: &str, key: &str| -> i64 {
        report[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g[key].as_i64().unwrap())
            .sum()
    };
    for key in ["applied", "failed", "unknown", "skipped", "dry_run_planned"] {
        let total = report["totals"][key].as_i64().unwrap();
        for list in ["rules", "tenants", "passes", "instances", "servers"] {
            let rest = match list {
                "passes" => report["passes_not_listed"][key].as_i64().unwrap(),
                _ => 0,
            };
            assert_eq!(sum(list, key) + rest, total, "{key} summed over {list}");
        }
    }
}

/// Two servers (one of whose updates of a New case fails) and one that is down; rules
/// that change, conflict, act for one customer, and never change anything.
async fn three_servers_four_rules() -> (
    casewarden::sim::Simulator,
    casewarden::sim::Simulator,
    Workspace,
) {
    let (eu, us) = (start(sim_options(300)).await, start(sim_options(200)).await);
    let failing = eu
        .state()
        .cases
        .iter()
        .find(|c| c["status"] == "New")
        .map(|c| c["_id"].as_str().unwrap().to_string())
        .unwrap();
    eu.state().faults.fail_updates_for.insert(failing);
    let high = "const RULE = #{ name: \"to-high\", query: #{ status: \"New\" } };\nfn evaluate(c) { set_priority(\"High\", \"new\"); }\n";
    let low = "const RULE = #{ name: \"to-low\", query: #{ status: \"New\" } };\nfn evaluate(c) { set_priority(\"Low\", \"new\"); }\n";
    let never = "const RULE = #{ name: \"never\" };\nfn evaluate(c) { if c.ticket_id < 0 { add_tag(\"x\", \"never\"); } }\n";
    let ws = Workspace::new(
        &eu.url,
        "legacy",
        "",
        Some(&[
            ("10-high.rhai", high),
            ("20-low.rhai", low),
            (
                "30-t3.rhai",
                &scoped("third-customer", &[TENANTS[2].0], "t3"),
            ),
            ("40-never.rhai", never),
        ]),
    );
    let dead = format!("http://127.0.0.1:{}", free_port());
    instances_config(
        &ws,
        &[
            ("eu", &eu.url, &[]),
            ("us", &us.url, &[]),
            ("down", &dead, &[]),
        ],
    );
    (eu, us, ws)
}
