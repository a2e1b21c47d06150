//! The audit log: round trips, filters and formats through `casewarden audit`, the
//! append-only triggers, tamper detection by `audit verify`, and bad database files.

use std::path::Path;

use casewarden::audit::{AuditStore, CaseRef, Filter, NewEvent, Outcome, Verification};
use futures::StreamExt;
use sqlx::sqlite::SqlitePoolOptions;

use crate::common::*;

fn event(n: usize, outcome: Outcome) -> NewEvent {
    NewEvent {
        run_id: format!("run-{}", n % 3),
        rule: if n.is_multiple_of(2) {
            "even-rule".into()
        } else {
            "odd-rule".into()
        },
        rule_hash: "ab".repeat(32),
        case: CaseRef::Case {
            id: format!("case-{n}"),
            ticket_id: Some(1000 + n as i64),
            // Rows with and without a customer: both kinds chain and verify.
            tenant: (n % 4 != 3).then(|| format!("cust-{}", n % 2)),
        },
        field: "priority".into(),
        old: Some("Low".into()),
        new: Some("High".into()),
        reason: format!("reason {n}, with a comma"),
        dry_run: n.is_multiple_of(5),
        outcome,
        error: (outcome == Outcome::Failed).then(|| "HTTP 500: boom".to_string()),
        http_status: (outcome == Outcome::Failed).then_some(500),
        planned_seq: None,
    }
}

async fn store_with(rows: usize) -> (tempfile::TempDir, AuditStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = AuditStore::open(&dir.path().join("nested/dir/audit.db"))
        .await
        .unwrap();
    let events: Vec<NewEvent> = (0..rows)
        .map(|n| {
            event(
                n,
                if n % 4 == 3 {
                    Outcome::Failed
                } else {
                    Outcome::Applied
                },
            )
        })
        .collect();
    store.append(&events).await.unwrap();
    (dir, store)
}

/// A rule that tags every case.
const TAGGER: &str = "const RULE = #{ name: \"tagger\" };\nfn evaluate(c) { add_tag(\"seen\"); }\n";

/// A workspace whose only rule, `tagger.rhai`, is `rule`: no comments, no guard.
fn tagging(sim: &casewarden::sim::Simulator, rule: &str) -> Workspace {
    Workspace::new(
        &sim.url,
        "legacy",
        "comment_changes = false\nmax_change_fraction = 1.0",
        Some(&[("tagger.rhai", rule)]),
    )
}

async fn raw_pool(path: &Path) -> sqlx::SqlitePool {
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap()
}

async fn exec(pool: &sqlx::SqlitePool, sql: &'static str) -> Result<(), sqlx::Error> {
    sqlx::query(sql).execute(pool).await.map(|_| ())
}

async fn verify_cli(db: &Path, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["audit", "verify", "--db", db.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = run_bin(&args, &[]).await;
    (out.status.code().unwrap(), stdout(&out))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_field_round_trips() {
    let (_dir, store) = store_with(0).await;
    let mut e = event(3, Outcome::Failed);
    e.planned_seq = None;
    let seqs = store.append(std::slice::from_ref(&e)).await.unwrap();
    let mut outcome = event(3, Outcome::Applied);
    outcome.planned_seq = Some(seqs[0]);
    store.append(&[outcome]).await.unwrap();
    let rows: Vec<_> = store
        .query(&Filter::default())
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), 2);
    let r = &rows[0];
    assert_eq!(
        (r.run_id.as_str(), r.rule.as_str(), r.case_id.as_str()),
        ("run-0", "odd-rule", "case-3")
    );
    assert_eq!(
        (
            r.ticket_id,
            r.field.as_str(),
            r.old.as_deref(),
            r.new.as_deref()
        ),
        (Some(1003), "priority", Some("Low"), Some("High"))
    );
    assert_eq!(
        (r.reason.as_str(), r.dry_run, r.outcome.as_str()),
        ("reason 3, with a comma", false, "failed")
    );
    assert_eq!(
        (r.error.as_deref(), r.http_status, r.rule_hash.len()),
        (Some("HTTP 500: boom"), Some(500), 64)
    );
    assert_eq!(rows[1].planned_seq, Some(rows[0].seq));
    assert_eq!(rows[1].prev_hash, rows[0].hash);
    assert!(chrono::DateTime::parse_from_rfc3339(&r.recorded_at).is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_command_filters_and_formats() {
    let (dir, store) = store_with(40).await;
    store.close().await;
    let db = dir.path().join("nested/dir/audit.db");
    let db = db.to_str().unwrap();
    let out = run_bin(
        &[
            "audit",
            "--db",
            db,
            "--rule",
            "odd-rule",
            "--outcome",
            "failed",
            "--format",
            "json",
        ],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 10);
    for l in &lines {
        for key in [
            "run_id",
            "recorded_at",
            "rule",
            "case_id",
            "ticket_id",
            "field",
            "old",
            "new",
            "reason",
            "dry_run",
            "outcome",
            "error",
        ] {
            assert!(l.get(key).is_some(), "missing {key}");
        }
        assert_eq!(l["rule"], "odd-rule");
        assert_eq!(l["outcome"], "failed");
        assert!(l["dry_run"].is_boolean());
    }
    let out = run_bin(
        &["audit", "--db", db, "--case", "case-7", "--format", "csv"],
        &[],
    )
    .await;
    let text = stdout(&out);
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), 1);
    assert_eq!(&records[0][10], "reason 7, with a comma");
    let out = run_bin(
        &["audit", "--db", db, "--ticket", "1004", "--pass", "run-1"],
        &[],
    )
    .await;
    let text = stdout(&out);
    assert!(
        text.contains("RULE") && text.contains("Low -> High") && text.contains("1004"),
        "{text}"
    );
    let out = run_bin(
        &[
            "audit", "--db", db, "--since", "1h", "--limit", "5", "--format", "json",
        ],
        &[],
    )
    .await;
    assert_eq!(stdout(&out).lines().count(), 5);
    let out = run_bin(
        &["audit", "--db", db, "--until", "2020-01-01T00:00:00Z"],
        &[],
    )
    .await;
    assert!(stdout(&out).contains("(no audit rows match)"));
    let out = run_bin(&["audit", "--db", db, "--since", "last tuesday"], &[]).await;
    assert_fails_with(&out, 2, "--since");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_export_streams_every_row() {
    let (dir, store) = store_with(0).await;
    for chunk in 0..10 {
        let events: Vec<NewEvent> = (0..2000)
            .map(|n| event(chunk * 2000 + n, Outcome::Applied))
            .collect();
        store.append(&events).await.unwrap();
    }
    store.close().await;
    let db = dir.path().join("nested/dir/audit.db");
    let out = run_bin(
        &["audit", "--db", db.to_str().unwrap(), "--format", "json"],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out).lines().count(), 20_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn updates_and_deletes_are_refused() {
    let (dir, store) = store_with(3).await;
    let pool = raw_pool(&dir.path().join("nested/dir/audit.db")).await;
    let err = exec(&pool, "UPDATE events SET reason = 'edited' WHERE seq = 2")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    let err = exec(&pool, "DELETE FROM events WHERE seq = 1")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    assert!(matches!(
        store.verify().await.unwrap(),
        Verification::Intact { rows: 3, .. }
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_finds_an_edited_row() {
    let (dir, _store) = store_with(10).await;
    let db = dir.path().join("nested/dir/audit.db");
    let (code, text) = verify_cli(&db, &[]).await;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("ok: 10 row(s)"), "{text}");
    let pool = raw_pool(&db).await;
    exec(&pool, "DROP TRIGGER events_no_update").await.unwrap();
    exec(&pool, "UPDATE events SET new = 'Critical' WHERE seq = 6")
        .await
        .unwrap();
    let (code, text) = verify_cli(&db, &[]).await;
    assert_eq!(code, 1);
    assert!(
        text.contains("BROKEN at row 6") && text.contains("edited"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_finds_a_deleted_middle_row() {
    let (dir, _store) = store_with(10).await;
    let db = dir.path().join("nested/dir/audit.db");
    let pool = raw_pool(&db).await;
    exec(&pool, "DROP TRIGGER events_no_delete").await.unwrap();
    exec(&pool, "DELETE FROM events WHERE seq = 4")
        .await
        .unwrap();
    let (code, text) = verify_cli(&db, &[]).await;
    assert_eq!(code, 1);
    assert!(
        text.contains("BROKEN at row 5") && text.contains("deleted or inserted"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_finds_a_forged_row() {
    let (dir, _store) = store_with(10).await;
    let db = dir.path().join("nested/dir/audit.db");
    let pool = raw_pool(&db).await;
    exec(&pool, "DROP TRIGGER events_no_update").await.unwrap();
    // A row slipped in between 3 and 4, copying row 3's hash to look chained.
    exec(&pool, "INSERT INTO events (seq, run_id, recorded_at, rule, rule_hash, case_id, field, reason, dry_run, outcome, prev_hash, hash) \
                 SELECT 1000, run_id, recorded_at, rule, rule_hash, 'forged', field, 'forged', 0, 'applied', hash, hash FROM events WHERE seq = 3").await.unwrap();
    exec(&pool, "UPDATE events SET seq = 35 WHERE seq = 1000")
        .await
        .unwrap_or(());
    let (code, text) = verify_cli(&db, &[]).await;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("BROKEN"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn expect_head_catches_truncation() {
    let (dir, store) = store_with(10).await;
    let (_, head) = store.head().await.unwrap();
    let db = dir.path().join("nested/dir/audit.db");
    let (code, _) = verify_cli(&db, &["--expect-head", &head]).await;
    assert_eq!(code, 0);
    let pool = raw_pool(&db).await;
    exec(&pool, "DROP TRIGGER events_no_delete").await.unwrap();
    exec(&pool, "DELETE FROM events WHERE seq >= 9")
        .await
        .unwrap();
    let (code, text) = verify_cli(&db, &[]).await;
    assert_eq!(code, 0, "a truncated chain is still a valid chain: {text}");
    let (code, text) = verify_cli(&db, &["--expect-head", &head]).await;
    assert_eq!(code, 1);
    assert!(text.contains("not the expected"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_that_is_not_sqlite_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let junk = "this is my shopping list, not a database\n".repeat(200);
    std::fs::write(&path, &junk).unwrap();
    let err = AuditStore::open(&path).await.err().unwrap().to_string();
    assert!(err.contains("not an SQLite database"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), junk);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_newer_schema_is_refused() {
    let (dir, store) = store_with(2).await;
    store.close().await;
    let db = dir.path().join("nested/dir/audit.db");
    let pool = raw_pool(&db).await;
    exec(&pool, "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (9999, 'future', 1, x'00', 0)").await.unwrap();
    pool.close().await;
    let err = AuditStore::open(&db).await.err().unwrap().to_string();
    assert!(
        err.contains("newer casewarden") && err.contains("9999"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reader_and_a_writer_work_at_once() {
    let (dir, store) = store_with(100).await;
    let db = dir.path().join("nested/dir/audit.db");
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for round in 0..40 {
                let events: Vec<NewEvent> = (0..50)
                    .map(|n| event(round * 50 + n, Outcome::Planned))
                    .collect();
                store.append(&events).await.unwrap();
            }
        })
    };
    for _ in 0..5 {
        let out = run_bin(
            &["audit", "--db", db.to_str().unwrap(), "--format", "json"],
            &[],
        )
        .await;
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(stdout(&out).lines().count() >= 100);
    }
    writer.await.unwrap();
    assert_eq!(
        store.verify().await.unwrap(),
        Verification::Intact {
            rows: 2100,
            head: store.head().await.unwrap().1,
            keyed: casewarden::audit::Keyed::No,
        }
    );
}

/// What an auditor reads: the newest rows on request, the settled planned row under a
/// plain name, the pass in the table, and CSV cells no spreadsheet runs as formulas.
#[tokio::test(flavor = "multi_thread")]
async fn audit_output_is_readable_and_safe_for_spreadsheets() {
    let (dir, store) = store_with(10).await;
    let planned = store
        .append(&[NewEvent {
            field: "tags".into(),
            old: None,
            new: Some("+=HYPERLINK(\"http://evil\")".into()),
            outcome: Outcome::Planned,
            ..event(10, Outcome::Planned)
        }])
        .await
        .unwrap()[0];
    store
        .append(&[NewEvent {
            planned_seq: Some(planned),
            reason: String::new(),
            ..event(11, Outcome::Applied)
        }])
        .await
        .unwrap();
    store.close().await;
    let db = dir.path().join("nested/dir/audit.db");
    let db = db.to_str().unwrap();
    let newest = run_bin(
        &[
            "audit", "--db", db, "--newest", "--limit", "2", "--format", "json",
        ],
        &[],
    )
    .await;
    let rows: Vec<serde_json::Value> = stdout(&newest)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0]["seq"].as_i64(), rows[1]["seq"].as_i64()),
        (Some(12), Some(11))
    );
    assert_eq!(rows[0]["outcome_of"], planned, "{}", rows[0]);
    assert!(rows[1]["outcome_of"].is_null());
    let csv_out = run_bin(
        &["audit", "--db", db, "--case", "case-10", "--format", "csv"],
        &[],
    )
    .await;
    let csv_text = stdout(&csv_out);
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    let record = reader.records().next().unwrap().unwrap();
    assert_eq!(&record[9], "'+=HYPERLINK(\"http://evil\")");
    let table = run_bin(&["audit", "--db", db, "--since", "2020-01-01"], &[]).await;
    let text = stdout(&table);
    assert!(text.contains("PASS") && text.contains("run-1"), "{text}");
    assert!(text.contains(&format!("outcome of #{planned}")), "{text}");
}

/// `audit show ID` prints the text of the rule file as the pass that made the change ran
/// it, after the file was edited, checked against the chained row's rule hash.
#[tokio::test(flavor = "multi_thread")]
async fn audit_show_gives_the_rule_text_behind_a_change_made_before_an_edit() {
    let sim = start(sim_options(5)).await;
    let v1 = "// version one\nconst RULE = #{ name: \"tagger\" };\nfn evaluate(c) { add_tag(\"first\", \"v1\"); }\n";
    let ws = tagging(&sim, v1);
    assert_exit(&ws.run(&["once"]).await, 0);
    let v2 = v1
        .replace("version one", "version two")
        .replace("first", "second");
    std::fs::write(ws.dir.path().join("rules/tagger.rhai"), v2).unwrap();
    assert_exit(&ws.run(&["once"]).await, 0);
    let rows = ws.audit(Filter::default()).await;
    let applied = |tag: &str| {
        rows.iter()
            .find(|r| r.outcome == "applied" && r.new.as_deref() == Some(tag))
            .unwrap()
            .seq
            .to_string()
    };
    let old = ws.run(&["audit", "show", &applied("+first")]).await;
    assert_exit(&old, 0);
    let text = stdout(&old);
    assert!(
        text.contains("// version one") && !text.contains("version two"),
        "{text}"
    );
    assert!(
        text.contains("its SHA-256 is the hash in the chained row"),
        "{text}"
    );
    let new = stdout(&ws.run(&["audit", "show", &applied("+second")]).await);
    assert!(new.contains("// version two"), "{new}");
    // Each distinct text once, and which one each pass ran.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", ws.audit_db().display()))
        .await
        .unwrap();
    let texts: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM rule_texts")
        .fetch_one(&pool)
        .await
        .unwrap();
    let passes: i64 = sqlx::query_scalar("SELECT COUNT(DISTINCT pass_id) FROM pass_rules")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!((texts, passes), (2, 2));
    let gone = ws.run(&["audit", "show", "999999"]).await;
    assert_fails_with(&gone, 1, "no row 999999");
}

/// Rows cut from the end leave an intact, shorter chain: `verify` says it cannot see that
/// without a saved head, and with the head file every pass appends to, it does.
#[tokio::test(flavor = "multi_thread")]
async fn verify_catches_rows_cut_from_the_end_with_the_head_file() {
    let sim = start(sim_options(5)).await;
    let ws = tagging(&sim, TAGGER);
    let out = ws.run(&["audit", "verify"]).await;
    assert!(!out.status.success(), "no log yet");
    assert_exit(&ws.run(&["once"]).await, 0);
    let bare = stdout(&ws.run(&["audit", "verify"]).await);
    assert!(
        bare.contains("rows cut from the end of the log cannot be detected without a saved head"),
        "{bare}"
    );
    ws.edit_config(
        "path = \"state/audit.db\"",
        "path = \"state/audit.db\"\nhead_file = \"heads.txt\"",
    );
    assert_exit(&ws.run(&["once"]).await, 0);
    let first = sim.state().cases[0]["_id"].as_str().unwrap().to_string();
    sim.state()
        .human_change(&first, "alice@example.com", "tags", serde_json::json!([]));
    assert_exit(&ws.run(&["once"]).await, 0);
    let out = ws.run(&["audit", "verify"]).await;
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("all 2 head(s) of"),
        "{}",
        stdout(&out)
    );
    // Cut the last pass's rows: the chain left is intact, the head file is not fooled.
    let pool = raw_pool(&ws.audit_db()).await;
    exec(&pool, "DROP TRIGGER events_no_delete").await.unwrap();
    exec(&pool, "DROP TRIGGER passes_no_delete").await.unwrap();
    let last: String = sqlx::query_scalar("SELECT run_id FROM events ORDER BY seq DESC LIMIT 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    for table in [
        "DELETE FROM events WHERE run_id = $1",
        "DELETE FROM passes WHERE id = $1",
    ] {
        sqlx::query(table).bind(&last).execute(&pool).await.unwrap();
    }
    let out = ws.run(&["audit", "verify"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("heads.txt:2 records head"),
        "{}",
        stdout(&out)
    );
    let heads = ws.dir.path().join("heads.txt");
    let explicit = ws
        .run(&[
            "audit",
            "verify",
            "--db",
            ws.audit_db().to_str().unwrap(),
            "--heads",
            heads.to_str().unwrap(),
        ])
        .await;
    assert_eq!(explicit.status.code(), Some(1));
}

/// Passes are in the chain: a pass row inserted, deleted, or edited with its hash
/// recomputed makes `verify` exit 1 naming the pass; a forged `running` pass is not
/// settled by the next `once`.
#[tokio::test(flavor = "multi_thread")]
async fn verify_catches_forged_deleted_and_edited_passes() {
    let sim = start(sim_options(5)).await;
    let ws = tagging(&sim, TAGGER);
    assert_exit(&ws.run(&["once"]).await, 0);
    assert_exit(&ws.run(&["once"]).await, 0);
    assert_exit(&ws.run(&["audit", "verify"]).await, 0);
    let copy = |name: &str| {
        let to = ws.dir.path().join(name);
        std::fs::copy(ws.audit_db(), &to).unwrap();
        to
    };
    let verify = |db: std::path::PathBuf| {
        let ws = &ws;
        async move {
            let out = ws
                .run(&["audit", "verify", "--db", db.to_str().unwrap()])
                .await;
            (out.status.code(), stdout(&out))
        }
    };
    let passes = {
        let store = AuditStore::open(&ws.audit_db()).await.unwrap();
        let p = store.passes().await.unwrap();
        store.close().await;
        p
    };
    let first = passes[0].clone();

    // Edited totals, the row's hash recomputed: the chained end still holds the old one.
    let db = copy("edited.db");
    let pool = raw_pool(&db).await;
    exec(&pool, "DROP TRIGGER passes_sealed").await.unwrap();
    let mut edited = first.clone();
    edited.totals.applied += 100;
    let hash = edited.compute_hash();
    sqlx::query("UPDATE passes SET applied = $1, hash = $2 WHERE id = $3")
        .bind(edited.totals.applied)
        .bind(&hash)
        .bind(&first.id)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let (code, text) = verify(db).await;
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!("BROKEN: pass {}", first.id)) && text.contains("edited"),
        "{text}"
    );

    // A deleted pass: its chained start is left behind.
    let db = copy("deleted.db");
    let pool = raw_pool(&db).await;
    exec(&pool, "DROP TRIGGER passes_no_delete").await.unwrap();
    sqlx::query("DELETE FROM passes WHERE id = $1")
        .bind(&first.id)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let (code, text) = verify(db).await;
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!("BROKEN: pass {}", first.id)) && text.contains("deleted"),
        "{text}"
    );

    // A forged pass, sealed with a correct hash, and a forged running one.
    for (name, sealed) in [("forged.db", true), ("running.db", false)] {
        let db = copy(name);
        let pool = raw_pool(&db).await;
        let mut forged = passes[1].clone();
        forged.id = "20991231T000000Z-f0f0f0".into();
        forged.started_at = "2099-12-31T00:00:00.000Z".into();
        forged.finished_at = sealed.then(|| forged.started_at.clone());
        forged.totals = casewarden::audit::PassTotals {
            cases_seen: 1,
            planned: 1,
            applied: 1,
            status: if sealed { "ok" } else { "running" }.into(),
            ..Default::default()
        };
        let hash = sealed.then(|| forged.compute_hash());
        sqlx::query(
            "INSERT INTO passes (id, started_at, finished_at, trigger_kind, rules_fingerprint, dry_run, cases_seen, planned, applied, failed, skipped, status, error, chain_head, hash, instance) \
             VALUES ($1, $2, $3, $4, $5, $6, 1, 1, 1, 0, 0, $7, NULL, $8, $9, $10)",
        )
        .bind(&forged.id)
        .bind(&forged.started_at)
        .bind(&forged.finished_at)
        .bind(&forged.trigger_kind)
        .bind(&forged.rules_fingerprint)
        .bind(false)
        .bind(if sealed { "ok" } else { "running" })
        .bind(sealed.then_some(forged.chain_head.clone()).flatten())
        .bind(&hash)
        .bind(&forged.instance)
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
        let (code, text) = verify(db.clone()).await;
        assert_eq!(code, Some(1), "{name}: {text}");
        assert!(
            text.contains("BROKEN: pass 20991231T000000Z-f0f0f0")
                && text.contains("never recorded its start"),
            "{text}"
        );
        if !sealed {
            // The next `once` on that log leaves it for verify to flag.
            std::fs::copy(&db, ws.audit_db()).unwrap();
            let out = ws.run(&["once"]).await;
            assert!(
                stderr(&out).contains("was never started by casewarden"),
                "{}",
                stderr(&out)
            );
            let (code, _) = verify(ws.audit_db()).await;
            assert_eq!(code, Some(1));
        }
    }
}

/// A keyed chain: with `audit.chain_key_file`, rows are HMACs under the key, so a row
/// appended with a correctly recomputed plain hash is caught; `verify` says what it proved,
/// and without the key says it could not prove the keyed rows; a writer without the key
/// is refused; a rotation is a chained row and both keys verify their rows. The key is
/// never printed.
#[tokio::test(flavor = "multi_thread")]
async fn a_keyed_chain_cannot_be_extended_without_the_key() {
    let sim = start(sim_options(5)).await;
    let ws = tagging(&sim, TAGGER);
    let key = "k3y-0f-the-chain-7f9a2c41d8e6b05a93c1";
    std::fs::write(ws.dir.path().join("chain_key"), format!("{key}\n")).unwrap();
    let keyed = "path = \"state/audit.db\"\nchain_key_file = \"chain_key\"";
    ws.edit_config("path = \"state/audit.db\"", keyed);
    let once = ws.run(&["once"]).await;
    assert_exit(&once, 0);
    let out = ws.run(&["audit", "verify"]).await;
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("proved with the chain key"),
        "{}",
        stdout(&out)
    );
    for o in [&once, &out] {
        assert!(!stdout(o).contains(key) && !stderr(o).contains(key));
    }
    let rows = ws.audit(Filter::default()).await;
    assert_eq!(
        rows[0].field, "chain",
        "keyed from the first row: {:?}",
        rows[0]
    );

    // Someone with write access but not the key appends a row, hash recomputed.
    let forged = ws.dir.path().join("forged.db");
    std::fs::copy(ws.audit_db(), &forged).unwrap();
    let last = rows.last().unwrap().clone();
    let mut row = last.clone();
    row.seq += 1;
    row.reason = "forged".into();
    row.prev_hash = last.hash.clone();
    row.hash = row.compute_hash();
    let pool = raw_pool(&forged).await;
    sqlx::query("INSERT INTO events (seq, run_id, recorded_at, rule, rule_hash, case_id, field, old, new, reason, dry_run, outcome, prev_hash, hash, instance) \
                 SELECT $1, run_id, recorded_at, rule, rule_hash, case_id, field, old, new, $2, dry_run, outcome, $3, $4, instance FROM events WHERE seq = $5")
        .bind(row.seq)
        .bind(&row.reason)
        .bind(&row.prev_hash)
        .bind(&row.hash)
        .bind(last.seq)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let out = ws
        .run(&["audit", "verify", "--db", forged.to_str().unwrap()])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains(&format!("BROKEN at row {}", row.seq))
            && stdout(&out).contains("keyed hash"),
        "{}",
        stdout(&out)
    );

    // Without the key: the keyed rows are not proven, and no writer may go on.
    ws.edit_config(keyed, "path = \"state/audit.db\"");
    let out = ws.run(&["audit", "verify"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("NOT PROVEN"), "{}", stdout(&out));
    let refused = ws.run(&["once"]).await;
    assert_fails_with(&refused, 2, "chain is keyed");

    // A rotation: the new key first, the old one after it.
    let new = "n3w-k3y-0f-the-chain-5d1e8a07c2b94f6e1a";
    std::fs::write(ws.dir.path().join("chain_key"), format!("{new}\n{key}\n")).unwrap();
    ws.edit_config("path = \"state/audit.db\"", keyed);
    let first = sim.state().cases[0]["_id"].as_str().unwrap().to_string();
    sim.state()
        .human_change(&first, "alice@example.com", "tags", serde_json::json!([]));
    assert_exit(&ws.run(&["once"]).await, 0);
    let out = ws.run(&["audit", "verify"]).await;
    assert_exit(&out, 0);
    let rows = ws.audit(Filter::default()).await;
    let markers: Vec<_> = rows.iter().filter(|r| r.field == "chain").collect();
    assert_eq!(markers.len(), 2);
    assert!(
        markers[1].reason.contains("chain key changed"),
        "{}",
        markers[1].reason
    );
}
