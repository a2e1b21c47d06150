//! `casewarden check` and `casewarden test-rule` through the real binary, on the example
//! rules, the seed's sample case and deliberately broken rules.

use serde_json::Value;

use crate::common::*;

const NOW: &str = "2022-08-20T00:00:00Z";

async fn test_rule(rule: &str, cases: &str, extra: &[&str]) -> (i32, Vec<Value>, String) {
    let rule = repo().join(rule);
    let cases = repo().join(cases);
    let mut args = vec![
        "test-rule",
        rule.to_str().unwrap(),
        cases.to_str().unwrap(),
        "--now",
        NOW,
        "--format",
        "json",
    ];
    args.extend_from_slice(extra);
    let out = run_bin(&args, &[]).await;
    let lines = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (out.status.code().unwrap(), lines, stderr(&out))
}

/// (field, old, new) of each planned change.
type Changes = Vec<(String, String, String)>;

fn changes(v: &Value) -> Changes {
    v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["field"].as_str().unwrap().to_string(),
                c["old"].as_str().unwrap_or("").to_string(),
                c["new"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn owned(list: &[(&str, &str, &str)]) -> Changes {
    list.iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn example_rules_on_the_seed_sample_case() {
    let seed = "tests/fixtures/seed-page.json";
    let expected: [(&str, Changes); 5] = [
        (
            "rules/10-escalate-aged-new.rhai",
            owned(&[
                ("priority", "Medium", "High"),
                ("tags", "", "+auto-escalated"),
            ]),
        ),
        ("rules/20-sla-breach.rhai", vec![]),
        (
            "rules/30-tag-by-entity.rhai",
            owned(&[("tags", "", "+dmz")]),
        ),
        ("rules/40-assign-by-tag.rhai", vec![]),
        ("rules/50-stale-low-resolve.rhai", vec![]),
    ];
    for (rule, want) in expected {
        let (code, out, err) = test_rule(rule, seed, &[]).await;
        assert_eq!(code, 0, "{rule}: {err}");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0]["case_id"], "62fceb4a48be7776c793a02a");
        assert_eq!(changes(&out[0]), want, "{rule}");
    }
    let (_, out, _) = test_rule("rules/10-escalate-aged-new.rhai", seed, &[]).await;
    assert_eq!(
        out[0]["update"],
        serde_json::json!({"priority": "High", "tags": {"add": ["auto-escalated"], "delete": []}})
    );
    assert_eq!(out[0]["changes"][0]["reason"], "New for 58h (over 24h)");
}

#[tokio::test(flavor = "multi_thread")]
async fn example_rules_on_their_own_fixtures() {
    let cases = "tests/fixtures/cases.json";
    let (code, out, err) = test_rule("rules/20-sla-breach.rhai", cases, &[]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        changes(&out[0]),
        owned(&[
            ("tags", "", "+sla-breach"),
            (
                "comment",
                "",
                "SLA breach: this High case has not been acknowledged for 12h (SLA 4h)."
            )
        ])
    );
    assert!(changes(&out[1]).is_empty() && changes(&out[2]).is_empty());

    // The only recent activity on the stale case is casewarden's own: it does not count.
    let (_, out, _) = test_rule(
        "rules/50-stale-low-resolve.rhai",
        cases,
        &["--self-user", "aaaabbbbccccddddeeeeffff00001111"],
    )
    .await;
    let c = changes(&out[1]);
    assert_eq!(
        &c[..2],
        &owned(&[
            ("status", "In Progress", "Resolved"),
            ("resolution", "", "Benign")
        ])[..]
    );
    assert_eq!(c[2].0, "comment");
    let (_, out, _) = test_rule(
        "rules/50-stale-low-resolve.rhai",
        cases,
        &["--self-user", "someone-else"],
    )
    .await;
    assert!(
        changes(&out[1]).is_empty(),
        "a foreign API change is activity"
    );

    let (_, out, _) = test_rule("rules/40-assign-by-tag.rhai", cases, &[]).await;
    assert_eq!(
        changes(&out[2]),
        owned(&[("assignee", "", "soc-phishing@example.com")])
    );
    assert!(changes(&out[0]).is_empty());

    let (_, out, _) = test_rule("rules/30-tag-by-entity.rhai", cases, &[]).await;
    assert!(changes(&out[0]).is_empty());
    assert!(changes(&out[1]).is_empty());
    assert_eq!(
        changes(&out[2]),
        owned(&[("tags", "", "+datacenter"), ("tags", "", "+vpn")])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn test_rule_table_output_is_readable() {
    let rule = repo().join("rules/10-escalate-aged-new.rhai");
    let cases = repo().join("tests/fixtures/seed-page.json");
    let out = run_bin(
        &[
            "test-rule",
            rule.to_str().unwrap(),
            cases.to_str().unwrap(),
            "--now",
            NOW,
        ],
        &[],
    )
    .await;
    let text = stdout(&out);
    assert!(
        text.contains("case 62fceb4a48be7776c793a02a (ticket 67535)"),
        "{text}"
    );
    assert!(text.contains("Medium -> High"), "{text}");
    assert!(text.contains("+auto-escalated"), "{text}");
}

fn write_rules(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn check_lists_every_broken_rule_with_its_location() {
    let ws = Workspace::new(
        "https://stellar.example.com",
        "legacy",
        "",
        Some(&[
            (
                "01-syntax.rhai",
                "const RULE = #{ name: \"a\" };\n\nfn evaluate(c) {\n    let x = ;\n}\n",
            ),
            (
                "02-no-evaluate.rhai",
                "const RULE = #{ name: \"b\" };\nfn judge(c) { }\n",
            ),
            (
                "03-bad-cron.rhai",
                "const RULE = #{\n    name: \"c\",\n    schedule: \"every five minutes\",\n};\nfn evaluate(c) { }\n",
            ),
            (
                "04-good.rhai",
                "const RULE = #{ name: \"d\" };\nfn evaluate(c) { }\n",
            ),
        ]),
    );
    let out = ws.run(&["check"]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 3, "{err}");
    assert!(errors[0].contains("01-syntax.rhai:4:"), "{}", errors[0]);
    assert!(
        errors[1].contains("02-no-evaluate.rhai:2:1") && errors[1].contains("fn evaluate"),
        "{}",
        errors[1]
    );
    assert!(
        errors[2].contains("03-bad-cron.rhai:3:5") && errors[2].contains("6-field cron"),
        "{}",
        errors[2]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_passes_on_the_examples_and_prints_next_runs() {
    let ws = Workspace::new("https://stellar.example.com", "legacy", "", None);
    let out = ws.run(&["check", "--offline"]).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for name in [
        "escalate-aged-new",
        "sla-breach",
        "tag-by-entity",
        "assign-by-tag",
        "stale-low-resolve",
    ] {
        assert!(text.contains(name), "{text}");
    }
    assert!(text.contains("next 20"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_reports_duplicate_names_and_bad_hints() {
    let dir = write_rules(&[
        (
            "a.rhai",
            "const RULE = #{ name: \"same\" };\nfn evaluate(c) { }\n",
        ),
        (
            "b.rhai",
            "const RULE = #{ name: \"same\" };\nfn evaluate(c) { }\n",
        ),
        (
            "c.rhai",
            "const RULE = #{ name: \"q\", query: #{ stauts: \"New\" } };\nfn evaluate(c) { }\n",
        ),
    ]);
    let errors = casewarden::rules::RuleSet::load_dir(dir.path())
        .err()
        .unwrap();
    assert_eq!(errors.len(), 2);
    assert!(errors[0].message.contains("duplicate rule name \"same\""));
    assert!(errors[1].message.contains("unknown filter \"stauts\""));
}

#[tokio::test(flavor = "multi_thread")]
async fn runaway_and_invalid_rules_are_stopped_and_located() {
    let seed = repo().join("tests/fixtures/seed-page.json");
    let cases = [
        (
            "loop.rhai",
            "const RULE = #{ name: \"loop\" };\nfn evaluate(c) {\n    loop { }\n}\n",
            "too many operations",
            "loop.rhai:2:16",
        ),
        (
            "recurse.rhai",
            "const RULE = #{ name: \"deep\" };\nfn f(n) { f(n + 1) }\nfn evaluate(c) { f(0) }\n",
            "nested too deep",
            "recurse.rhai:3:16",
        ),
        (
            "huge.rhai",
            "const RULE = #{ name: \"huge\" };\nfn evaluate(c) {\n    let s = \"x\";\n    loop { s += s; }\n}\n",
            "beyond the sandbox limit",
            "huge.rhai:2:16",
        ),
        (
            "status.rhai",
            "const RULE = #{ name: \"bad-status\" };\nfn evaluate(c) {\n    let s = \"Clo\" + \"sed\";\n    set_status(s, \"done\");\n}\n",
            "invalid status \"Closed\"",
            "status.rhai:4:5",
        ),
        (
            "throw.rhai",
            "const RULE = #{ name: \"thrower\" };\nfn evaluate(c) {\n    throw \"no way\";\n}\n",
            "no way",
            "throw.rhai:3:5",
        ),
    ];
    // Sandbox stops are located at the start of `evaluate` (Rhai keeps no finer position
    // for them across function calls); other errors at the failing call.
    for (file, text, message, location) in cases {
        let dir = write_rules(&[(file, text)]);
        let path = dir.path().join(file);
        let out = run_bin(
            &["test-rule", path.to_str().unwrap(), seed.to_str().unwrap()],
            &[],
        )
        .await;
        let text = stdout(&out);
        assert_eq!(out.status.code(), Some(2), "{file}: {text}");
        assert!(text.contains(message), "{file}: {text}");
        assert!(text.contains("62fceb4a48be7776c793a02a"), "{file}: {text}");
        assert!(text.contains(location), "{file}: wrong position: {text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_case_files_are_clear_errors() {
    let rule = repo().join("rules/10-escalate-aged-new.rhai");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"data\": {\"cases\": [\n  {\"_id\": \"x\", 7}\n]}}").unwrap();
    let out = run_bin(
        &["test-rule", rule.to_str().unwrap(), bad.to_str().unwrap()],
        &[],
    )
    .await;
    assert_fails_with(&out, 2, "bad.json:2:");
    let missing = dir.path().join("missing.json");
    let out = run_bin(
        &[
            "test-rule",
            rule.to_str().unwrap(),
            missing.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert_fails_with(&out, 2, "cannot read case file");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rule_changing_its_argument_does_not_change_what_the_next_rule_sees() {
    let vandal = "const RULE = #{ name: \"vandal\" };\nfn evaluate(c) {\n    c.status = \"Escalated\";\n    c.tags.push(\"fake\");\n    c.metadata.entity_id = \"asset,,1.2.3.4\";\n}\n";
    let witness = "const RULE = #{ name: \"witness\" };\nfn evaluate(c) {\n    comment(`${c.status} ${c.tags.len()} ${entity(c).ip}`);\n}\n";
    let set = casewarden::rules::RuleSet::from_sources(vec![
        ("a.rhai".into(), vandal.to_string()),
        ("b.rhai".into(), witness.to_string()),
    ])
    .unwrap();
    let text = std::fs::read_to_string(repo().join("tests/fixtures/seed-page.json")).unwrap();
    let page: Value = serde_json::from_str(&text).unwrap();
    let case = casewarden::stellar::Case::from_value(page["data"]["cases"][0].clone()).unwrap();
    let results = set.evaluate_case(&set.rules, &case, &casewarden::rules::EvalEnv::default());
    assert_eq!(results.len(), 2);
    assert!(results[0].1.is_ok(), "{:?}", results[0].1);
    let seen = &results[1].1.as_ref().unwrap().changes;
    assert_eq!(
        seen[0].kind,
        casewarden::plan::ChangeKind::Comment("New 1 10.10.30.20".into())
    );
}

/// The common rule bugs of a new author, caught by `check --offline` before they run:
/// each names its file:line:col; errors exit 2, warnings print and exit 0.
#[tokio::test(flavor = "multi_thread")]
async fn check_catches_the_common_rule_mistakes_before_they_run() {
    let mistakes = [
        (
            "typo-fn.rhai",
            "const RULE = #{ name: \"typo-fn\" };\nfn evaluate(c) {\n    add_tagg(\"x\", \"why\");\n}\n",
            "error: ",
            "typo-fn.rhai:3:5: unknown function `add_tagg` (did you mean `add_tag`?)",
        ),
        (
            "arity.rhai",
            "const RULE = #{ name: \"arity\" };\nfn evaluate(c) {\n    set_status(\"New\", \"a\", \"b\");\n}\n",
            "error: ",
            "arity.rhai:3:5: `set_status` takes 1 or 2 argument(s), not 3",
        ),
        (
            "query.rhai",
            "const RULE = #{ name: \"query\", query: #{ status: \"Nwe\" } };\nfn evaluate(c) { add_tag(\"x\"); }\n",
            "error: ",
            "RULE.query: status: \"Nwe\" is not a status (did you mean \"New\"?)",
        ),
        (
            "typo-field.rhai",
            "const RULE = #{ name: \"typo-field\" };\nfn evaluate(c) {\n    if c.asignee == \"\" { add_tag(\"unowned\"); }\n}\n",
            "warning: ",
            "typo-field.rhai:3:10: `c.asignee` is not a field of a Stellar Cyber case (did you mean `assignee`?)",
        ),
        (
            "returns.rhai",
            "const RULE = #{ name: \"returns\" };\nfn evaluate(c) {\n    c.status == \"New\"\n}\n",
            "warning: ",
            "returns.rhai:3:5: `evaluate` returns a value here; it is ignored",
        ),
    ];
    for (file, text, level, expected) in mistakes {
        let ws = Workspace::new(
            "https://stellar.example.com",
            "legacy",
            "",
            Some(&[(file, text)]),
        );
        let out = ws.run(&["check", "--offline"]).await;
        let err = stderr(&out);
        let line = err
            .lines()
            .find(|l| l.contains(expected))
            .unwrap_or_else(|| panic!("{file}: {expected:?} not printed:\n{err}"));
        assert!(line.starts_with(level), "{file}: {line}");
        let code = if level == "error: " { 2 } else { 0 };
        assert_eq!(out.status.code(), Some(code), "{file}:\n{err}");
    }
}

/// `test-rule` decides what a pass decides: a case the rule's query does not select is
/// not evaluated, and the output says which filter left it out.
#[tokio::test(flavor = "multi_thread")]
async fn test_rule_applies_the_rules_query_as_a_pass_does() {
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.json");
    let old = 1_600_000_000_000i64;
    std::fs::write(
        &cases,
        serde_json::json!([
            {"_id": "new-1", "ticket_id": 1, "status": "New", "priority": "Low", "tags": [], "created_at": old},
            {"_id": "done-1", "ticket_id": 2, "status": "Resolved", "priority": "Low", "tags": [], "created_at": old},
        ])
        .to_string(),
    )
    .unwrap();
    let rule = dir.path().join("tag-all.rhai");
    std::fs::write(
        &rule,
        "const RULE = #{ name: \"tag-new\", query: #{ status: \"New\" } };\nfn evaluate(c) { add_tag(\"seen\"); }\n",
    )
    .unwrap();
    let (code, out, err) = test_rule(rule.to_str().unwrap(), cases.to_str().unwrap(), &[]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(changes(&out[0]), owned(&[("tags", "", "+seen")]));
    assert_eq!(out[1]["case_id"], "done-1");
    assert_eq!(
        changes(&out[1]),
        vec![],
        "a Resolved case is not the rule's to change"
    );
    assert_eq!(
        out[1]["excluded"],
        "RULE.query status=New (the case holds \"Resolved\")"
    );
    let table = run_bin(
        &["test-rule", rule.to_str().unwrap(), cases.to_str().unwrap()],
        &[],
    )
    .await;
    let text = stdout(&table);
    assert!(
        text.contains("case done-1 (ticket 2): not selected: RULE.query status=New"),
        "{text}"
    );
    assert!(
        text.contains("1 case(s) selected by the rules' queries, 1 would change; 1 not selected"),
        "{text}"
    );
}

/// Shell completions and man pages come from the same definitions as the commands.
#[tokio::test(flavor = "multi_thread")]
async fn completions_and_man_pages_cover_every_command() {
    let bash = run_bin(&["completions", "bash"], &[]).await;
    assert_exit(&bash, 0);
    let man = run_bin(&["man"], &[]).await;
    assert_exit(&man, 0);
    let (bash, man) = (stdout(&bash), stdout(&man));
    for cmd in [
        "run",
        "once",
        "check",
        "test-rule",
        "audit",
        "simulate",
        "demo",
    ] {
        assert!(bash.contains(cmd), "completions lack {cmd}");
        assert!(
            man.contains(&format!(".TH casewarden-{cmd} 1")),
            "no man page for {cmd}"
        );
    }
    assert!(bash.contains("--dry-run") && man.contains("dry\\-run"));
    let bad = run_bin(&["completions", "tcsh"], &[]).await;
    assert_fails_with(&bad, 2, "invalid value 'tcsh'");
}

/// The matching helpers through a rule: networks, patterns, time in the current status.
#[tokio::test(flavor = "multi_thread")]
async fn rules_match_networks_patterns_and_time_in_status() {
    let dir = tempfile::tempdir().unwrap();
    let now = 1_660_953_600_000i64; // NOW, the --now of `test_rule`
    let cases = dir.path().join("cases.json");
    std::fs::write(
        &cases,
        serde_json::json!([
            {"_id": "a", "status": "In Progress", "name": "Mimikatz on VPN-GW-03", "tags": [],
             "metadata": {"entity_id": "asset,,10.20.3.107"}, "created_at": now - 9_000_000,
             "modified_at": now - 60_000,
             "history": [{"field": "status", "timestamp": now - 7_200_000, "user": "alice"}]},
            {"_id": "b", "status": "In Progress", "name": "port scan", "tags": [],
             "metadata": {"entity_id": "asset,,192.168.1.5"}, "created_at": now - 9_000_000,
             "modified_at": now - 9_000_000},
        ])
        .to_string(),
    )
    .unwrap();
    let rule = dir.path().join("m.rhai");
    std::fs::write(
        &rule,
        r#"const RULE = #{ name: "m" };
fn evaluate(c) {
    if in_cidr(entity(c)?.ip ?? "", "10.20.0.0/16") { add_tag("datacenter"); }
    if matches(c.name, "(?i)mimikatz") { add_tag("credential-theft"); }
    add_tag(`in-status-${minutes_in_status(c)}m`);
}
"#,
    )
    .unwrap();
    let (code, out, err) = test_rule(rule.to_str().unwrap(), cases.to_str().unwrap(), &[]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        changes(&out[0]),
        owned(&[
            ("tags", "", "+datacenter"),
            ("tags", "", "+credential-theft"),
            ("tags", "", "+in-status-120m"),
        ])
    );
    // Never changed since it was opened: in its status since `created_at`.
    assert_eq!(changes(&out[1]), owned(&[("tags", "", "+in-status-150m")]));
}

/// `test-rule --rules-dir`: the whole set on each case, as a pass decides it: queries,
/// the first rule winning a field, no-ops dropped.
#[tokio::test(flavor = "multi_thread")]
async fn test_rule_runs_a_whole_rule_set_as_a_pass_would() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    for (name, text) in [
        (
            "10-high.rhai",
            "const RULE = #{ name: \"high\", query: #{ status: \"New\" } };\nfn evaluate(c) { set_priority(\"High\", \"new\"); }\n",
        ),
        (
            "20-low.rhai",
            "const RULE = #{ name: \"low\" };\nfn evaluate(c) { set_priority(\"Low\", \"everything\"); add_tag(\"seen\"); }\n",
        ),
        (
            "30-off.rhai",
            "const RULE = #{ name: \"off\", enabled: false };\nfn evaluate(c) { add_tag(\"never\"); }\n",
        ),
    ] {
        std::fs::write(rules.join(name), text).unwrap();
    }
    let cases = dir.path().join("cases.json");
    std::fs::write(
        &cases,
        serde_json::json!([
            {"_id": "n", "status": "New", "priority": "Medium", "tags": []},
            {"_id": "r", "status": "Resolved", "priority": "Low", "tags": ["seen"]},
        ])
        .to_string(),
    )
    .unwrap();
    let out = run_bin(
        &[
            "test-rule",
            "--rules-dir",
            rules.to_str().unwrap(),
            cases.to_str().unwrap(),
            "--format",
            "json",
        ],
        &[],
    )
    .await;
    assert_exit(&out, 0);
    let lines: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let decided = |v: &Value| -> Vec<(String, String, Option<String>)> {
        v["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["rule"].as_str().unwrap().to_string(),
                    c["new"].as_str().unwrap().to_string(),
                    c["skipped"].as_str().map(str::to_string),
                )
            })
            .collect()
    };
    assert_eq!(
        decided(&lines[0]),
        vec![
            ("high".into(), "High".into(), None),
            (
                "low".into(),
                "Low".into(),
                Some("conflict with high".into())
            ),
            ("low".into(), "+seen".into(), None),
        ]
    );
    assert_eq!(decided(&lines[1]), vec![], "already Low and tagged: no-ops");
    let both = run_bin(
        &[
            "test-rule",
            "--rules-dir",
            rules.to_str().unwrap(),
            "a.rhai",
            cases.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert_fails_with(&both, 2, "with --rules-dir, give only the case file");
}

/// Mistakes with shared modules and calendars are found by `check`, located: a function a
/// module lacks, a wrong argument count, a module that does not exist (nor a path to one:
/// the sandbox has no file system resolver), a calendar the config does not define.
#[tokio::test(flavor = "multi_thread")]
async fn check_finds_mistakes_with_shared_modules_and_calendars() {
    let mistakes = [
        (
            "import \"soc\" as soc;\nconst RULE = #{ name: \"a\" };\nfn evaluate(c) {\n    if soc::is_vipp(c) { add_tag(\"x\"); }\n}\n",
            "a.rhai:4:13: unknown function `soc::is_vipp` (did you mean `soc::is_vip`?)",
        ),
        (
            "import \"soc\" as soc;\nconst RULE = #{ name: \"a\" };\nfn evaluate(c) {\n    if soc::is_vip() { add_tag(\"x\"); }\n}\n",
            "a.rhai:4:13: `soc::is_vip` takes 1 argument(s), not 0",
        ),
        (
            "import \"socc\" as soc;\nconst RULE = #{ name: \"a\" };\nfn evaluate(c) { }\n",
            "a.rhai:1:8: error while loading: Module not found: socc (shared modules are the files of rules_dir/lib/, imported by file name without .rhai; there: soc)",
        ),
        (
            "import \"/etc/passwd\" as p;\nconst RULE = #{ name: \"a\" };\nfn evaluate(c) { }\n",
            "Module not found: /etc/passwd",
        ),
        (
            "const RULE = #{ name: \"a\" };\nfn evaluate(c) {\n    if business_hours_since(c.created_at, \"sco\") > 4 { add_tag(\"late\"); }\n}\n",
            "a.rhai:3:43: no calendar \"sco\" in the config: define [calendars.sco] (defined: soc)",
        ),
    ];
    for (text, expected) in mistakes {
        let ws = Workspace::new(
            "https://stellar.example.com",
            "legacy",
            "",
            Some(&[("a.rhai", text)]),
        );
        let lib = ws.dir.path().join("rules/lib");
        std::fs::create_dir(&lib).unwrap();
        std::fs::write(
            lib.join("soc.rhai"),
            "export const VIP = \"vip\";\nfn is_vip(c) { c.has_tag(global::VIP) }\n",
        )
        .unwrap();
        let mut config = std::fs::read_to_string(ws.config()).unwrap();
        config.push_str("\n[calendars.soc]\ntimezone = \"Europe/Berlin\"\n");
        std::fs::write(ws.config(), config).unwrap();
        let out = ws.run(&["check", "--offline"]).await;
        let err = stderr(&out);
        assert!(err.contains(expected), "{expected:?} not printed:\n{err}");
        assert_eq!(out.status.code(), Some(2), "{err}");
    }
}

/// `test-rule` with a shared module, the users list (`--users`) and the config's
/// calendars (`--config`): emails both ways, assign by email resolved to the id a pass
/// would send, unassign, business hours in the calendar's zone.
#[tokio::test(flavor = "multi_thread")]
async fn test_rule_takes_users_calendars_and_shared_modules() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(rules.join("lib")).unwrap();
    std::fs::write(
        rules.join("lib/soc.rhai"),
        "export const DESK = \"desk@example.com\";\nfn owner(c) { user_email(c.assignee) }\n",
    )
    .unwrap();
    let rule = rules.join("r.rhai");
    std::fs::write(
        &rule,
        r#"import "soc" as soc;
const RULE = #{ name: "r" };
fn evaluate(c) {
    let hours = business_hours_since(c.created_at, "berlin");
    add_tag(`bh-${hours}`);
    if soc::owner(c) == "bob@example.com" { assign(soc::DESK, "bob is away"); }
    if soc::owner(c) == () { unassign("unknown owner"); }
}
"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("users.json"),
        r#"{"data": [{"user_id": "u-bob", "email": "bob@example.com"}, {"user_id": "u-desk", "email": "Desk@Example.com"}]}"#,
    )
    .unwrap();
    let config = dir.path().join("casewarden.toml");
    std::fs::write(
        &config,
        "[stellar]\nurl = \"https://x.example.com\"\n\n[calendars.berlin]\ntimezone = \"Europe/Berlin\"\nhours = \"09:00-17:00\"\n",
    )
    .unwrap();
    // Friday 2026-11-20 16:00 Berlin (15:00Z); --now Monday 10:00 Berlin: 2 business hours.
    let created = 1_795_186_800_000i64;
    let cases = dir.path().join("cases.json");
    std::fs::write(
        &cases,
        serde_json::json!([
            {"_id": "b", "status": "New", "assignee": "u-bob", "tags": [], "created_at": created},
            {"_id": "g", "status": "New", "assignee": "u-gone", "tags": [], "created_at": created},
        ])
        .to_string(),
    )
    .unwrap();
    let run = |extra: Vec<String>| {
        let mut args: Vec<String> = ["--config", config.to_str().unwrap(), "test-rule"]
            .map(String::from)
            .to_vec();
        args.extend([
            rule.to_str().unwrap().to_string(),
            cases.to_str().unwrap().to_string(),
            "--now".into(),
            "2026-11-23T09:00:00Z".into(),
            "--format".into(),
            "json".into(),
        ]);
        args.extend(extra);
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            run_bin(&refs, &[]).await
        }
    };
    let without = run(vec![]).await;
    assert_eq!(without.status.code(), Some(2));
    assert!(
        stdout(&without).contains("user_email: the server's users list is not available"),
        "{}",
        stdout(&without)
    );
    let users = dir.path().join("users.json");
    let out = run(vec!["--users".into(), users.to_str().unwrap().into()]).await;
    assert_exit(&out, 0);
    let lines: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        changes(&lines[0]),
        owned(&[("tags", "", "+bh-2"), ("assignee", "u-bob", "u-desk")])
    );
    assert_eq!(
        changes(&lines[1]),
        owned(&[("tags", "", "+bh-2"), ("assignee", "u-gone", "")])
    );
}

/// `casewarden test`: the example rules' own tests pass; a broken expectation fails with
/// exit 1, naming what was expected and what happened, also in the JUnit file; a test
/// file that cannot run is exit 2.
#[tokio::test(flavor = "multi_thread")]
async fn rule_tests_pass_on_the_examples_and_fail_on_a_broken_expectation() {
    let rules = repo().join("rules");
    let out = run_bin(&["test", rules.to_str().unwrap()], &[]).await;
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(text.contains(" 0 failed"), "{text}");
    for rule in std::fs::read_dir(&rules).unwrap() {
        let p = rule.unwrap().path();
        if p.extension().is_some_and(|x| x == "rhai") {
            let tests = rules
                .join("tests")
                .join(p.with_extension("toml").file_name().unwrap());
            let t = std::fs::read_to_string(&tests)
                .unwrap_or_else(|_| panic!("{} ships without {}", p.display(), tests.display()));
            assert!(
                t.contains("no_changes = true"),
                "{}: no negative case",
                tests.display()
            );
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("rules");
    std::fs::create_dir_all(copy.join("tests")).unwrap();
    for entry in std::fs::read_dir(&rules).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, copy.join(p.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(
        copy.join("tests/escalate.toml"),
        "rule = \"escalate-aged-new\"\n\n[[test]]\nname = \"expects Critical\"\nnow = \"2026-11-25T12:00:00Z\"\n\
         case = { _id = \"a\", status = \"New\", priority = \"Medium\", tags = [], created_at = \"now-30h\" }\n\
         expect = [{ field = \"priority\", new = \"Critical\" }]\n\n\
         [[test]]\nname = \"holds\"\nnow = \"2026-11-25T12:00:00Z\"\n\
         case = { _id = \"b\", status = \"New\", priority = \"Medium\", tags = [], created_at = \"now-1h\" }\nno_changes = true\n",
    )
    .unwrap();
    let junit = dir.path().join("junit.xml");
    let out = run_bin(
        &[
            "test",
            copy.to_str().unwrap(),
            "--junit",
            junit.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert_exit(&out, 1);
    let text = stdout(&out);
    assert!(
        text.contains("FAIL  ") && text.contains("expects Critical"),
        "{text}"
    );
    assert!(text.contains("expected: priority \"Critical\""), "{text}");
    assert!(
        text.contains("unexpected: priority \"Medium\" -> \"High\" by escalate-aged-new"),
        "{text}"
    );
    assert!(text.contains("ok    ") && text.contains("holds"), "{text}");
    assert!(text.contains("2 test(s), 1 passed, 1 failed"), "{text}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("tests=\"2\" failures=\"1\"") && xml.contains("<failure message="),
        "{xml}"
    );

    for (test, error) in [
        (
            "name = \"no case\"\nnow = \"2026-11-25T12:00:00Z\"\nno_changes = true",
            "give exactly one of `case` and `case_file`",
        ),
        (
            "name = \"no clock\"\ncase = { _id = \"a\" }\nno_changes = true",
            "give `now`",
        ),
        (
            "name = \"typo\"\nnow = \"2026-11-25T12:00:00Z\"\ncase = { _id = \"a\" }\nexpect = [{ field = \"prio\", new = \"High\" }]",
            "unknown field \"prio\"",
        ),
        (
            "name = \"vague\"\nnow = \"2026-11-25T12:00:00Z\"\ncase = { _id = \"a\" }\nexpect = [{ field = \"tags\" }]",
            "exactly one of `new` and `new_contains`",
        ),
        (
            "name = \"broken\"\nnow = \"2026-11-25T12:00:00Z\" oops",
            "escalate.toml: line 3, column",
        ),
    ] {
        std::fs::write(
            copy.join("tests/escalate.toml"),
            format!("[[test]]\n{test}\n"),
        )
        .unwrap();
        let out = run_bin(&["test", copy.to_str().unwrap()], &[]).await;
        assert_exit(&out, 2);
        assert!(stderr(&out).contains(error), "{error}: {}", stderr(&out));
    }
}

/// `test-rule` without --config reads `casewarden.toml` of the current folder, as every
/// other command does: its calendars, for `in_business_hours` and business time.
#[tokio::test(flavor = "multi_thread")]
async fn test_rule_reads_the_default_config_for_calendars_and_business_hours() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("casewarden.toml"),
        "[stellar]\nurl = \"https://x.example.com\"\n\n[calendars.berlin]\ntimezone = \"Europe/Berlin\"\nhours = \"09:00-17:00\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("r.rhai"),
        "const RULE = #{ name: \"r\" };\nfn evaluate(c) {\n    if in_business_hours(\"berlin\") { add_tag(\"open\"); } else { add_tag(\"closed\"); }\n}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("cases.json"),
        r#"[{"_id": "a", "status": "New", "tags": [], "created_at": 0}]"#,
    )
    .unwrap();
    let at = |now: &'static str| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_casewarden"));
        cmd.args([
            "test-rule",
            "r.rhai",
            "cases.json",
            "--format",
            "json",
            "--now",
            now,
        ])
        .current_dir(dir.path())
        .env_remove("CASEWARDEN_CONFIG");
        async move { cmd.output().await.unwrap() }
    };
    // Monday 2026-11-23: 09:00Z is 10:00 in Berlin (open), 17:30Z is 18:30 (closed).
    for (now, tag) in [
        ("2026-11-23T09:00:00Z", "+open"),
        ("2026-11-23T17:30:00Z", "+closed"),
    ] {
        let out = at(now).await;
        assert_exit(&out, 0);
        let line: Value = serde_json::from_str(stdout(&out).lines().next().unwrap()).unwrap();
        assert_eq!(changes(&line), owned(&[("tags", "", tag)]), "at {now}");
    }
}

/// `check` catches what would fail on every case: values the server's vocabulary lacks
/// (offline), a user nobody has and a customer named instead of its id (on the server),
/// each located, with the nearest valid value.
#[tokio::test(flavor = "multi_thread")]
async fn check_catches_values_that_would_fail_on_every_case() {
    let mut opts = sim_options(10);
    opts.flavor = casewarden::config::ApiFlavor::V5;
    let sim = start(opts).await;
    let rule = |body: &str, meta: &str| {
        format!("const RULE = #{{ name: \"r\"{meta} }};\nfn evaluate(c) {{\n    {body}\n}}\n")
    };
    let cases = [
        (
            rule("set_status(\"Closed\");", ""),
            true,
            "set_status(\"Closed\")",
            "New, In Progress, Escalated, Resolved, Cancelled",
        ),
        (
            rule("set_priority(\"Urgent\", \"x\");", ""),
            true,
            "set_priority(\"Urgent\")",
            "Low, Medium, High, Critical",
        ),
        (
            rule("resolve(\"False Positve\");", ""),
            true,
            "did you mean \"False Positive\"?",
            "False Positive, Benign, True Positive",
        ),
        (
            rule("assign(\"nobody@example.com\");", ""),
            false,
            "assign(\"nobody@example.com\")",
            "has no user with that email",
        ),
        (
            rule("add_tag(\"x\");", ", tenants: [\"Acme Corp\"]"),
            false,
            "RULE.tenants",
            "is the name of customer \"3b5cd2d5bd1c4b8a9b8a2f0e1d6c7a10\"",
        ),
    ];
    for (text, offline, names, valid) in cases {
        let ws = Workspace::new(&sim.url, "v5", "", Some(&[("r.rhai", &text)]));
        if offline {
            let out = ws.run(&["check", "--offline"]).await;
            assert_eq!(out.status.code(), Some(2), "{text}\n{}", stderr(&out));
            let err = stderr(&out);
            assert!(
                err.contains("r.rhai:3:") && err.contains(names) && err.contains(valid),
                "{err}"
            );
        }
        let out = ws.run(&["check"]).await;
        assert_eq!(
            out.status.code(),
            Some(2),
            "{text}\n{}{}",
            stdout(&out),
            stderr(&out)
        );
        let err = stderr(&out);
        assert!(err.contains(names) && err.contains(valid), "{err}");
    }
    // Every problem of a file in one run: a bad query value and an unknown field.
    let both = "const RULE = #{ name: \"b\", query: #{ status: \"Nwe\" } };\nfn evaluate(c) {\n    if c.asignee == \"\" { add_tag(\"x\"); }\n}\n";
    let ws = Workspace::new(&sim.url, "v5", "", Some(&[("b.rhai", both)]));
    let out = ws.run(&["check", "--offline"]).await;
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("\"Nwe\" is not a status"), "{err}");
    assert!(
        err.contains("warning: ") && err.contains("b.rhai:3:") && err.contains("c.asignee"),
        "{err}"
    );
    // A good user and customer id pass.
    let good = rule(
        "assign(\"alice@example.com\");",
        ", tenants: [\"3b5cd2d5bd1c4b8a9b8a2f0e1d6c7a10\"]",
    );
    let ws = Workspace::new(&sim.url, "v5", "", Some(&[("r.rhai", &good)]));
    assert_exit(&ws.run(&["check"]).await, 0);
}
