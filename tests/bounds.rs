//! Bounded rules and an audit log an auditor can trust: greedy, flooding and burning rules
//! are stopped within their limits; the budget is fair; old heads verify; a read-only copy
//! verifies as an unprivileged user; edited passes are caught; no control character reaches
//! the terminal raw; no input makes the binary panic.

use std::os::unix::fs::PermissionsExt;
use std::str::FromStr;

use casewarden::audit::Filter;
use serde_json::json;

use crate::common::*;

const GUARD_OFF: &str = "max_change_fraction = 1.0\ncomment_changes = false";

fn db_size(ws: &Workspace) -> u64 {
    ["", "-wal"]
        .iter()
        .map(|s| {
            let mut p = ws.audit_db().into_os_string();
            p.push(s);
            std::fs::metadata(p).map_or(0, |m| m.len())
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_case_larger_than_the_budget_does_not_stop_the_others() {
    let sim = start(sim_options(30)).await;
    let greedy = sim.state().cases[0]["ticket_id"].as_i64().unwrap();
    let rule = format!(
        "const RULE = #{{ name: \"greedy\" }};\nfn evaluate(c) {{\n    if c.ticket_id == {greedy} {{ for i in 0..8 {{ add_tag(`g${{i}}`); }} }} else {{ add_tag(\"one\"); }}\n}}\n"
    );
    let ws = Workspace::new(
        &sim.url,
        "legacy",
        &format!("{GUARD_OFF}\nmax_changes_per_run = 5"),
        Some(&[("greedy.rhai", &rule)]),
    );
    assert_exit(&ws.run(&["once"]).await, 0);
    let tagged = |tag: &str| {
        sim.state()
            .cases
            .iter()
            .filter(|c| c["tags"].as_array().unwrap().contains(&json!(tag)))
            .count()
    };
    assert_eq!(tagged("one"), 5, "the budget went to the cases that fit");
    assert_eq!(tagged("g0"), 0);
    let rows = ws.audit(Filter::default()).await;
    assert!(
        rows.iter()
            .any(|r| r.reason.contains("more than the whole budget of 5"))
    );
    // Every later pass goes on with the rest; the greedy case never blocks them.
    for _ in 0..6 {
        assert_exit(&ws.run(&["once"]).await, 0);
    }
    assert_eq!(tagged("one"), 29);
}

#[tokio::test(flavor = "multi_thread")]
async fn flooding_burning_and_printing_rules_are_stopped_within_their_limits() {
    let sim = start(sim_options(5)).await;
    let flood = "const RULE = #{ name: \"flood\" };\nfn evaluate(c) {\n    let big = \"x\";\n    big.pad(1000, 'x');\n    for i in 0..100000 { comment(big); }\n}\n";
    let tags = "const RULE = #{ name: \"tags\" };\nfn evaluate(c) {\n    for i in 0..100000 { add_tag(`t${i}`); }\n}\n";
    let burn = "const RULE = #{ name: \"burn\" };\nfn evaluate(c) {\n    let s = \"\";\n    s.pad(65536, 'a');\n    for i in 0..60000 { let parts = s.split(\"b\"); }\n}\n";
    let noisy = "const RULE = #{ name: \"noisy\" };\nfn evaluate(c) {\n    for i in 0..1000 { print(`line ${i}`); }\n}\n";
    let ok = "const RULE = #{ name: \"ok\" };\nfn evaluate(c) { add_tag(\"fine\"); }\n";
    let ws = Workspace::new(
        &sim.url,
        "legacy",
        &format!("{GUARD_OFF}\nrule_timeout_ms = 300"),
        Some(&[
            ("1-flood.rhai", flood),
            ("2-tags.rhai", tags),
            ("3-burn.rhai", burn),
            ("4-noisy.rhai", noisy),
            ("5-ok.rhai", ok),
        ]),
    );
    let out = ws.run(&["once"]).await;
    let log = stderr(&out);
    assert!(
        log.contains("1-flood.rhai:5:") && log.contains("daemon.max_comments_per_rule_case"),
        "{log}"
    );
    assert!(
        log.contains("2-tags.rhai:3:") && log.contains("daemon.max_changes_per_rule_case"),
        "{log}"
    );
    assert!(
        log.contains("3-burn.rhai") && log.contains("daemon.rule_timeout_ms"),
        "{log}"
    );
    let printed = log.matches("print: line").count();
    assert_eq!(printed, 50, "{log}");
    assert!(
        log.contains("rule=noisy") && log.contains("dropped=4950"),
        "{log}"
    );
    // The other rule went on, and the log stayed small.
    let fine = sim
        .state()
        .cases
        .iter()
        .filter(|c| c["tags"].as_array().unwrap().contains(&json!("fine")))
        .count();
    assert_eq!(fine, 5);
    assert!(db_size(&ws) < 2 * 1024 * 1024, "{} bytes", db_size(&ws));
}

/// The chain head `audit verify` prints.
fn head_of(out: &std::process::Output) -> String {
    let text = stdout(out);
    text.split("head ")
        .nth(1)
        .unwrap()
        .trim()
        .split(';')
        .next()
        .unwrap()
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_saved_head_verifies_as_the_log_grows_and_heads_go_to_a_second_place() {
    let sim = start(sim_options(20)).await;
    let ws = Workspace::new(&sim.url, "legacy", GUARD_OFF, None);
    let text = std::fs::read_to_string(ws.config()).unwrap();
    std::fs::write(
        ws.config(),
        text.replace("[audit]\n", "[audit]\nhead_file = \"heads.log\"\n"),
    )
    .unwrap();
    assert_exit(&ws.run(&["once"]).await, 0);
    let first = ws.run(&["audit", "verify"]).await;
    assert_exit(&first, 0);
    let old_head = head_of(&first);
    // A case filed now for an alert 30 h old (a server stamps modified_at when it files it).
    let now = casewarden::now_ms();
    sim.state().put_case(json!({"_id": "new", "status": "New", "priority": "Low", "tags": [],
        "created_at": now - 30 * 3_600_000, "modified_at": now,
        "history": [{"field": "status", "from": "", "to": "New", "timestamp": now - 30 * 3_600_000, "user": "System"}]}));
    assert_exit(&ws.run(&["once"]).await, 0);
    let out = ws
        .run(&["audit", "verify", "--expect-head", &old_head])
        .await;
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("row(s) appended since"),
        "{}",
        stdout(&out)
    );
    let out = ws
        .run(&["audit", "verify", "--expect-head", &"ab".repeat(32)])
        .await;
    assert_exit(&out, 1);
    // Each pass appended its head; the newest is the log's head.
    let heads = std::fs::read_to_string(ws.dir.path().join("heads.log")).unwrap();
    assert_eq!(heads.lines().count(), 2, "{heads}");
    let now = head_of(&ws.run(&["audit", "verify"]).await);
    assert!(heads.lines().last().unwrap().ends_with(&now), "{heads}");
    assert!(heads.contains(&old_head));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_copy_verifies_as_an_unprivileged_user_and_is_never_written() {
    let sim = start(sim_options(20)).await;
    let ws = Workspace::new(&sim.url, "legacy", GUARD_OFF, None);
    assert_exit(&ws.run(&["once"]).await, 0);
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let evidence = dir.path().join("evidence");
    std::fs::create_dir(&evidence).unwrap();
    let copy = evidence.join("audit.db");
    std::fs::copy(ws.audit_db(), &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o444)).unwrap();
    std::fs::set_permissions(&evidence, std::fs::Permissions::from_mode(0o555)).unwrap();
    let out = tokio::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_casewarden"))
        .args(["audit", "verify", "--db", copy.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert_exit(&out, 0);
    assert!(stdout(&out).starts_with("ok: "), "{}", stdout(&out));
    let files: Vec<_> = std::fs::read_dir(&evidence).unwrap().collect();
    assert_eq!(files.len(), 1, "verify left files beside the copy");
}

async fn raw_pool(ws: &Workspace) -> sqlx::SqlitePool {
    let opts = sqlx::sqlite::SqliteConnectOptions::from_str("sqlite://")
        .unwrap()
        .filename(ws.audit_db());
    sqlx::SqlitePool::connect_with(opts).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn edited_passes_and_replaced_rows_are_caught() {
    let sim = start(sim_options(20)).await;
    let ws = Workspace::new(&sim.url, "legacy", GUARD_OFF, None);
    assert_exit(&ws.run(&["once"]).await, 0);
    let pool = raw_pool(&ws).await;
    // The triggers refuse a replace as they refuse an update or a delete.
    let replace = sqlx::query("INSERT OR REPLACE INTO events SELECT * FROM events WHERE seq = 1")
        .execute(&pool)
        .await;
    assert!(replace.unwrap_err().to_string().contains("append-only"));
    let edit = sqlx::query("UPDATE passes SET applied = applied + 100")
        .execute(&pool)
        .await;
    assert!(edit.unwrap_err().to_string().contains("append-only"));
    // Someone who drops the trigger and edits a total is caught by verify.
    sqlx::query("DROP TRIGGER passes_sealed")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE passes SET applied = applied + 100")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let out = ws.run(&["audit", "verify"]).await;
    assert_exit(&out, 1);
    assert!(stdout(&out).contains("BROKEN: pass"), "{}", stdout(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn control_characters_never_reach_the_terminal_raw() {
    let sim = start(sim_options(0)).await;
    sim.state().put_case(json!({"_id": "evil", "ticket_id": 1, "status": "New", "priority": "Low",
        "tags": [], "created_at": 1, "modified_at": 1, "description": "\r\u{1b}[2Kall good\u{202e}"}));
    let rule = "const RULE = #{ name: \"describe\" };\nfn evaluate(c) { set_description(\"checked\", `was: ${c.description}`.sub_string(0, 4)); }\n";
    let bad_tag =
        "const RULE = #{ name: \"bad-tag\" };\nfn evaluate(c) { add_tag(\"vip\\u202e\"); }\n";
    let ws = Workspace::new(
        &sim.url,
        "legacy",
        GUARD_OFF,
        Some(&[("a.rhai", rule), ("b.rhai", bad_tag)]),
    );
    // The bad tag is a rule error on that case: the pass is degraded (exit 1).
    let dry = ws.run(&["once", "--dry-run"]).await;
    assert_exit(&dry, 1);
    let out = ws.run(&["once"]).await;
    let table = ws.run(&["audit"]).await;
    for o in [&dry, &out, &table] {
        let all = format!("{}{}", stdout(o), stderr(o));
        assert!(
            !all.contains('\u{1b}') && !all.contains('\r') && !all.contains('\u{202e}'),
            "{all:?}"
        );
    }
    assert!(stdout(&table).contains("\\u{1b}[2K"), "{}", stdout(&table));
    assert!(stderr(&out).contains("U+202E"), "{}", stderr(&out));
    assert!(
        !sim.state().case("evil").unwrap()["tags"]
            .to_string()
            .contains('\u{202e}')
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_input_makes_the_binary_panic() {
    let sim = start(sim_options(5)).await;
    let ws = Workspace::new(&sim.url, "legacy", GUARD_OFF, None);
    assert_exit(&ws.run(&["once"]).await, 0);
    let rule = repo().join("rules/10-escalate-aged-new.rhai");
    let case = repo().join("tests/fixtures/cases.json");
    let runs: Vec<Vec<&str>> = vec![
        vec!["audit", "--since", "999999999999999d"],
        vec!["audit", "--since", "99999999999999999999999d"],
        vec!["audit", "--until", "-5d"],
        vec!["audit", "--since", "9999-12-31"],
        vec!["audit", "--limit", "-1"],
        vec!["audit", "--ticket", "-9223372036854775808"],
        vec!["once", "--wait", "99999999999999"],
        vec![
            "test-rule",
            rule.to_str().unwrap(),
            case.to_str().unwrap(),
            "--now",
            "9999-12-31T23:59:59Z",
        ],
        vec![
            "test-rule",
            rule.to_str().unwrap(),
            case.to_str().unwrap(),
            "--now",
            "0000-01-01T00:00:00Z",
        ],
    ];
    for args in runs {
        let out = ws.run(&args).await;
        assert!(
            matches!(out.status.code(), Some(0..=4)),
            "{args:?}: {:?}\n{}",
            out.status,
            stderr(&out)
        );
        assert!(
            !stderr(&out).contains("panicked"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    for (key, value) in [
        ("timeout_secs = 5", "timeout_secs = 99999999999"),
        (
            "[daemon]",
            "[daemon]\npass_timeout_secs = 18446744073709551615",
        ),
        (
            "[daemon]",
            "[daemon]\nrule_timeout_ms = 18446744073709551615",
        ),
    ] {
        let text = std::fs::read_to_string(ws.config()).unwrap();
        std::fs::write(ws.config(), text.replacen(key, value, 1)).unwrap();
        let out = ws.run(&["check", "--offline"]).await;
        assert_fails_with(&out, 2, "out of range");
        std::fs::write(ws.config(), text).unwrap();
    }
}
