//! The mirror: a pass lists only what changed since the last one (a delta by
//! `FROM~modified_at`), runs the rules over every case it holds, and lists everything again
//! when it must (resync interval, a checkpoint in the future, a server that ignores the
//! filter), through the binary against the simulator.

use casewarden::audit::{EventRow, Filter, Outcome};
use serde_json::json;

use crate::common::*;
use crate::faults::GUARD_OFF;

const TAG_HIGH: &str = "const RULE = #{ name: \"tag-high\" };\nfn evaluate(c) { if c.priority == \"High\" && !has_tag(c, \"high\") { add_tag(\"high\", \"high priority\"); } }\n";
const TAG_CRITICAL: &str = "const RULE = #{ name: \"tag-critical\" };\nfn evaluate(c) { if c.priority == \"Critical\" && !has_tag(c, \"crit\") { add_tag(\"crit\", \"critical\"); } }\n";

/// The listing requests the simulator received from `from` on, as query strings.
fn listings_since(sim: &casewarden::sim::Simulator, from: usize) -> Vec<String> {
    sim.state().requests()[from..]
        .iter()
        .filter(|r| r.method == "GET" && r.path == "/connect/api/v1/cases")
        .map(|r| r.query.clone())
        .collect()
}

fn is_delta(query: &str) -> bool {
    query.contains("FROM%7Emodified_at") || query.contains("FROM~modified_at")
}

/// Applied rows of `rule` in the log.
async fn applied(ws: &Workspace, rule: &str) -> Vec<EventRow> {
    ws.audit(Filter::default())
        .await
        .into_iter()
        .filter(|r| r.rule == rule && r.outcome == Outcome::Applied)
        .collect()
}

fn mirror_file(ws: &Workspace) -> std::path::PathBuf {
    ws.dir.path().join("state/audit.mirror.db")
}

/// A workspace whose one rule tags High cases.
fn workspace(sim: &casewarden::sim::Simulator) -> Workspace {
    Workspace::new(
        &sim.url,
        "legacy",
        GUARD_OFF,
        Some(&[("high.rhai", TAG_HIGH)]),
    )
}

/// A person raises the first case of priority `from` to High; its id.
fn raise(sim: &casewarden::sim::Simulator, from: &str) -> String {
    let mut s = sim.state();
    let id = (s.cases.iter())
        .find(|c| c["priority"] == from)
        .map(|c| c["_id"].as_str().unwrap().to_string())
        .unwrap();
    s.human_change(&id, "alice@example.com", "priority", json!("High"));
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_pass_lists_only_what_changed_and_rules_still_see_every_case() {
    let sim = start(sim_options(600)).await;
    let ws = workspace(&sim);
    assert_exit(&ws.run(&["once"]).await, 0);
    let first_bytes = sim.state().bytes_served();
    let first = listings_since(&sim, 0);
    assert!(
        !first.is_empty() && first.iter().all(|q| !is_delta(q)),
        "{first:?}"
    );
    assert!(
        mirror_file(&ws).is_file(),
        "the mirror is kept beside the audit log"
    );
    let tagged_first = applied(&ws, "tag-high").await.len();
    assert!(tagged_first > 50, "{tagged_first}");

    // A person raises one case to High; a new rule tags Critical cases nobody touched.
    let raised = raise(&sim, "Low");
    let critical = (sim.state().cases.iter())
        .filter(|c| c["priority"] == "Critical")
        .count();
    std::fs::write(ws.dir.path().join("rules/critical.rhai"), TAG_CRITICAL).unwrap();
    let before = sim.state().requests().len();
    let out = ws.run(&["once"]).await;
    assert_exit(&out, 0);
    let second = listings_since(&sim, before);
    assert!(
        !second.is_empty() && second.iter().all(|q| is_delta(q)),
        "the second pass listed more than what changed: {second:?}"
    );

    let high = applied(&ws, "tag-high").await;
    assert_eq!(high.len(), tagged_first + 1, "only the raised case is new");
    assert!(high.iter().any(|r| r.case_id == raised));
    // Time-driven (and new) rules run over the whole mirror, not just the delta.
    assert_eq!(applied(&ws, "tag-critical").await.len(), critical);
    assert!(critical > 20, "{critical}");

    // A third pass right after: nothing to do, a delta that leaves out casewarden's own
    // changes (the mirror learned them from the answers), a fraction of the first's bytes.
    let before = sim.state().requests().len();
    let served = sim.state().bytes_served();
    assert_exit(&ws.run(&["once"]).await, 0);
    assert!(listings_since(&sim, before).iter().all(|q| is_delta(q)));
    let bytes = sim.state().bytes_served() - served;
    assert!(
        bytes * 50 <= first_bytes,
        "an unchanged pass downloaded {bytes} bytes, the first {first_bytes}"
    );
    assert_eq!(sim.state().write_requests(), tagged_first + 1 + critical);
}

/// Whether the mirror file holds the case `id`, as the next `once` loads it.
async fn mirrored(ws: &Workspace, id: &str) -> bool {
    let held = ws.loaded_mirror().await;
    (held.cases.after(None, usize::MAX).iter()).any(|l| &*l.at.1 == id)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_case_leaves_the_mirror_at_the_next_full_listing() {
    let sim = start(sim_options(200)).await;
    let ws = workspace(&sim);
    ws.edit_config(
        "retry_base_ms = 20",
        "retry_base_ms = 20\nresync_interval = \"3s\"",
    );
    assert_exit(&ws.run(&["once"]).await, 0);
    let gone = {
        let mut s = sim.state();
        let id = (s.cases.iter())
            .find(|c| c["priority"] == "Medium")
            .map(|c| c["_id"].as_str().unwrap().to_string())
            .unwrap();
        assert!(s.delete_case(&id));
        id
    };
    // A delta cannot know of a deletion: the mirror still holds the case.
    assert_exit(&ws.run(&["once"]).await, 0);
    assert!(mirrored(&ws, &gone).await);
    // After resync_interval a full listing removes it.
    tokio::time::sleep(std::time::Duration::from_millis(3_100)).await;
    let before = sim.state().requests().len();
    let out = ws.run(&["once"]).await;
    assert_exit(&out, 0);
    assert!(
        stderr(&out).contains("resync_interval has passed"),
        "{}",
        stderr(&out)
    );
    assert!(listings_since(&sim, before).iter().all(|q| !is_delta(q)));
    assert!(
        !mirrored(&ws, &gone).await,
        "the deleted case is still mirrored"
    );
    let kept = sim.state().cases[0]["_id"].as_str().unwrap().to_string();
    assert!(mirrored(&ws, &kept).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_checkpoint_in_the_future_falls_back_to_a_full_listing_saying_so() {
    let sim = start(sim_options(100)).await;
    let ws = workspace(&sim);
    assert_exit(&ws.run(&["once"]).await, 0);
    // The clock was wrong when the mirror was written: its checkpoint is a year ahead.
    let db = ws.mirror_db().await;
    let year_ahead = casewarden::now_ms() + 365 * 86_400_000;
    let changed = sqlx::query("UPDATE mirror_sync SET checkpoint_ms = ?")
        .bind(year_ahead)
        .execute(&db)
        .await
        .unwrap();
    assert_eq!(changed.rows_affected(), 1);
    db.close().await;
    // A person's change now would be missed by a delta from a year ahead.
    let raised = raise(&sim, "Medium");
    let before = sim.state().requests().len();
    let out = ws.run(&["once"]).await;
    assert_exit(&out, 0);
    assert!(
        stderr(&out).contains("is in the future by this machine's clock"),
        "{}",
        stderr(&out)
    );
    assert!(listings_since(&sim, before).iter().all(|q| !is_delta(q)));
    assert!(
        (applied(&ws, "tag-high").await.iter()).any(|r| r.case_id == raised),
        "the person's change was missed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_ignores_the_delta_filter_costs_a_full_listing_and_misses_nothing() {
    let mut opts = sim_options(300);
    opts.faults.ignore_filter = Some("FROM~modified_at".into());
    let sim = start(opts).await;
    let ws = workspace(&sim);
    ws.edit_config("retry_base_ms = 20", "retry_base_ms = 20\npage_size = 50");
    assert_exit(&ws.run(&["once"]).await, 0);
    let tagged = applied(&ws, "tag-high").await.len();
    let raised = raise(&sim, "Low");
    let out = ws.run(&["once"]).await;
    assert_exit(&out, 0);
    assert!(
        stderr(&out).contains("ignores the filter"),
        "{}",
        stderr(&out)
    );
    let high = applied(&ws, "tag-high").await;
    assert_eq!(high.len(), tagged + 1);
    assert!(high.iter().any(|r| r.case_id == raised));
}

/// The simulator answers a delta listing from its index by `modified_at`: the same cases,
/// in the same order (ties by position), as a scan of every case, after changes too.
#[tokio::test(flavor = "multi_thread")]
async fn the_simulators_delta_listing_matches_a_scan_of_every_case() {
    let sim = start(sim_options(600)).await;
    let client = casewarden::stellar::Client::new(settings(&sim)).unwrap();
    let delta = |from: i64| {
        vec![
            ("FROM~modified_at".to_string(), from.to_string()),
            ("sort".into(), "modified_at".into()),
            ("order".into(), "asc".into()),
        ]
    };
    let scan = |from: i64| -> Vec<String> {
        let s = sim.state();
        let mut hits: Vec<(i64, usize, String)> = (s.cases.iter().enumerate())
            .filter_map(|(i, c)| {
                let m = c["modified_at"].as_i64().filter(|&m| m >= from)?;
                Some((m, i, c["_id"].as_str()?.to_string()))
            })
            .collect();
        hits.sort();
        hits.into_iter().map(|h| h.2).collect()
    };
    let ids = |cases: Vec<casewarden::stellar::Case>| -> Vec<String> {
        cases.into_iter().map(|c| c.id).collect()
    };
    let median = {
        let mut s = sim.state();
        let mut times: Vec<i64> = (s.cases.iter())
            .filter_map(|c| c["modified_at"].as_i64())
            .collect();
        times.sort();
        let median = times[times.len() / 2];
        // Ties at the bound, and a case whose modified_at no range can match.
        for (i, m) in [(3, json!(median)), (9, json!(median)), (12, json!("soon"))] {
            let mut case = s.cases[i].clone();
            case["modified_at"] = m;
            s.put_case(case);
        }
        median
    };
    let first = ids(list_all(&client, delta(median)).await.unwrap());
    assert!(first.len() > 250, "{}", first.len());
    assert_eq!(first, scan(median));

    // A person's change moves a case to the end of the next delta.
    let moved = sim.state().cases[0]["_id"].as_str().unwrap().to_string();
    (sim.state()).human_change(&moved, "alice@example.com", "status", json!("Resolved"));
    let after = ids(list_all(&client, delta(median)).await.unwrap());
    assert_eq!(after, scan(median));
    assert_eq!(after.last(), Some(&moved));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_case_in_the_mirror_file_has_the_next_pass_list_every_case() {
    let sim = start(sim_options(300)).await;
    // A first pass that changes nothing: the full listing's texts all stay live.
    let quiet = "const RULE = #{ name: \"quiet\" };\nfn evaluate(c) { }\n";
    let ws = Workspace::new(
        &sim.url,
        "legacy",
        GUARD_OFF,
        Some(&[("quiet.rhai", quiet)]),
    );
    assert_exit(&ws.run(&["once"]).await, 0);
    // The full listing wrote one segment: its records (LZ4), then its block. The hash
    // recorded for the block's first text (the oldest case, outside the next delta's
    // overlap) changes: the file still loads (blocks stay packed), that case reads damaged.
    let db = ws.mirror_db().await;
    let (seq, blob): (i64, Vec<u8>) =
        sqlx::query_as("SELECT seq, cases FROM mirror_segments ORDER BY seq LIMIT 1")
            .fetch_one(&db)
            .await
            .unwrap();
    let len = u32::from_le_bytes(blob[..4].try_into().unwrap()) as usize;
    let mut records = lz4_flex::decompress_size_prepended(&blob[4..4 + len]).unwrap();
    // The format byte, 'B', the texts' count, the first one's length, then its hash.
    assert_eq!(&records[..2], &[2, b'B']);
    records[10] ^= 1;
    let records = lz4_flex::compress_prepend_size(&records);
    let mut damaged = (records.len() as u32).to_le_bytes().to_vec();
    damaged.extend_from_slice(&records);
    damaged.extend_from_slice(&blob[4 + len..]);
    sqlx::query("UPDATE mirror_segments SET cases = ? WHERE seq = ?")
        .bind(damaged)
        .bind(seq)
        .execute(&db)
        .await
        .unwrap();
    db.close().await;

    // A new rule has every case evaluated again, the damaged one unpacked.
    std::fs::write(ws.dir.path().join("rules/critical.rhai"), TAG_CRITICAL).unwrap();
    let out = ws.run(&["once"]).await;
    assert_exit(&out, 0);
    let err = stderr(&out);
    assert!(err.contains("a case of the mirror is damaged"), "{err}");
    assert!(err.contains("the next pass lists every case"), "{err}");

    let before = sim.state().requests().len();
    let out = ws.run(&["once"]).await;
    assert_exit(&out, 0);
    let err = stderr(&out);
    assert!(
        err.contains("reason=the mirror held damaged cases"),
        "{err}"
    );
    assert!(listings_since(&sim, before).iter().all(|q| !is_delta(q)));
    assert!(!err.contains("damaged cases;"), "{err}");
    // The file written whole by that listing reads back, every case.
    let held = ws.loaded_mirror().await;
    let bodies = (held.cases.after(None, usize::MAX).into_iter()).map(|l| l.body.clone());
    let opened = casewarden::mirror::Opened::open(bodies.collect());
    assert_eq!(opened.count(), held.cases.len());
    assert!((0..opened.count()).all(|i| opened.text(i).is_ok()));
}
