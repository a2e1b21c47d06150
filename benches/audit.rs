//! Audit log write and export rates. Baseline: the same rows inserted into a plain SQLite
//! table (same pragmas, same batching, no hash chain, no triggers) in the same run. Then
//! `casewarden report` over the whole log (HTML and JSON), against `audit verify` alone,
//! which every report includes.
//!
//! cargo bench --bench audit [-- ROWS]

mod support;

use std::str::FromStr;
use std::time::{Duration, Instant};

use casewarden::audit::{AuditStore, CaseRef, Filter, NewEvent, Outcome, Period};
use casewarden::review::{Review, Source};
use futures::StreamExt;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

const BATCH: usize = 500;

/// Half intents, the rest mostly applied, some failed, some halted by the guard; a case
/// gets several rows.
fn event(n: usize) -> NewEvent {
    let (outcome, reason, error) = match n % 20 {
        0..10 => (Outcome::Planned, "New for 31h (over 24h)", None),
        10..17 => (Outcome::Applied, "", None),
        17 => (
            Outcome::Failed,
            "",
            Some(format!("HTTP 500 from the server ({})", n % 7)),
        ),
        18 => (
            Outcome::Skipped,
            "New for 31h (over 24h) [skipped: blast-radius guard: rule wanted to change 900 of 1000 cases (limit 25%)]",
            None,
        ),
        _ => (
            Outcome::Skipped,
            "[skipped: conflict with sla-breach]",
            None,
        ),
    };
    NewEvent {
        run_id: format!("20261125T000000Z-{:06x}", n / 10_000),
        rule: ["escalate-aged-new", "sla-breach", "tag-by-entity"][n % 3].into(),
        rule_hash: "ab".repeat(32),
        case: CaseRef::Case {
            id: format!("{:032x}", n / 4),
            ticket_id: Some(60_000 + (n / 4) as i64),
            tenant: None,
        },
        field: "priority".into(),
        old: Some("Medium".into()),
        new: Some("High".into()),
        reason: reason.into(),
        dry_run: false,
        outcome,
        error,
        http_status: None,
        planned_seq: None,
    }
}

async fn baseline(path: &std::path::Path, rows: usize) -> Duration {
    let opts = SqliteConnectOptions::from_str("sqlite://")
        .unwrap()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE plain (seq INTEGER PRIMARY KEY, run_id TEXT, recorded_at TEXT, rule TEXT, rule_hash TEXT, case_id TEXT, ticket_id INTEGER, field TEXT, old TEXT, new TEXT, reason TEXT, dry_run INTEGER, outcome TEXT)")
        .execute(&pool).await.unwrap();
    let start = Instant::now();
    for chunk in (0..rows).collect::<Vec<_>>().chunks(BATCH) {
        let mut tx = pool.begin().await.unwrap();
        for &n in chunk {
            let e = event(n);
            sqlx::query("INSERT INTO plain (run_id, recorded_at, rule, rule_hash, case_id, ticket_id, field, old, new, reason, dry_run, outcome) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
                .bind(&e.run_id).bind("2026-11-25T00:00:00.000Z").bind(&e.rule).bind(&e.rule_hash).bind(e.case.id()).bind(e.case.ticket_id())
                .bind(&e.field).bind(&e.old).bind(&e.new).bind(&e.reason).bind(false).bind("planned")
                .execute(&mut *tx).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
    start.elapsed()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let rows: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200_000);
    let dir = tempfile::tempdir().unwrap();
    let base = baseline(&dir.path().join("plain.db"), rows).await;

    let store = AuditStore::open(&dir.path().join("audit.db"))
        .await
        .unwrap();
    let start = Instant::now();
    for chunk in (0..rows).collect::<Vec<_>>().chunks(BATCH) {
        let events: Vec<NewEvent> = chunk.iter().map(|&n| event(n)).collect();
        store.append(&events).await.unwrap();
    }
    let write = start.elapsed();

    let rss_before = support::peak_rss_kb();
    let start = Instant::now();
    let mut out = std::io::sink();
    let mut printer =
        casewarden::audit::export::Printer::new(casewarden::audit::export::Format::Json, &mut out)
            .unwrap();
    let filter = Filter::default();
    let mut stream = std::pin::pin!(store.query(&filter));
    while let Some(row) = stream.next().await {
        printer.row(&row.unwrap()).unwrap();
    }
    let exported = printer.finish().unwrap();
    let export = start.elapsed();
    let rss_after = support::peak_rss_kb();

    let start = Instant::now();
    let verified = store.verify().await.unwrap();
    let verify = start.elapsed();

    let rate = |d: Duration| rows as f64 / d.as_secs_f64();
    println!("audit log, {rows} rows in batches of {BATCH}, synchronous=FULL, WAL:");
    println!("  baseline plain inserts:   {:>9.0} rows/s", rate(base));
    println!(
        "  hash-chained append:      {:>9.0} rows/s   (ratio {:.2} of baseline)",
        rate(write),
        base.as_secs_f64() / write.as_secs_f64()
    );
    println!(
        "  JSON export (streamed):   {:>9.0} rows/s   ({exported} rows; peak RSS {} MiB before, {} MiB after)",
        rate(export),
        rss_before / 1024,
        rss_after / 1024
    );
    println!(
        "  verify (walk the chain):  {:>9.0} rows/s   ({verified:?})",
        rate(verify)
    );

    let source = Source::new(None, Vec::new(), "audit.db".into());
    let start = Instant::now();
    let review = Review::build(&store, &Period::default(), source)
        .await
        .unwrap();
    let html = casewarden::review::render(&review, false);
    let report = start.elapsed();
    let json = serde_json::to_string_pretty(&review).unwrap();
    println!(
        "  report (verify + aggregates + HTML): {:.2} s, {:.2}x verify alone; HTML {:.1} MiB, JSON {:.1} MiB; {} applied, {} failed, {} guard halts",
        report.as_secs_f64(),
        report.as_secs_f64() / verify.as_secs_f64(),
        html.len() as f64 / 1_048_576.0,
        json.len() as f64 / 1_048_576.0,
        review.totals.applied,
        review.totals.failed,
        review.totals.guard_halts
    );
}

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
