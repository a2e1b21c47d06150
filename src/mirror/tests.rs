use serde_json::json;

use super::*;

fn case(id: &str, modified_at: i64, status: &str) -> Case {
    Case::from_value(
        json!({"_id": id, "status": status, "modified_at": modified_at,
        "event_ids": ["e1", "e2"]}),
    )
    .expect("a case")
}

/// The mirror of `file` as the next process loads it: (id, modified_at, status) by time.
async fn loaded(path: &std::path::Path) -> Vec<(String, i64, String)> {
    let file = MirrorFile::open(path).await.expect("opens");
    let held = Mirror::new(Some(file), "sim").lock().await;
    (held.cases.after(None, usize::MAX).into_iter())
        .map(|((m, id), text)| {
            let v: serde_json::Value = serde_json::from_str(text).expect("JSON");
            assert!(
                v.get("event_ids").is_none(),
                "an unread field was kept: {v}"
            );
            (
                id.to_string(),
                *m,
                v["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

async fn segments(path: &std::path::Path) -> i64 {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let n = sqlx::query_scalar("SELECT count(*) FROM mirror_segments")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    n
}

fn ids(cases: &[(String, i64, String)]) -> Vec<&str> {
    cases.iter().map(|c| c.0.as_str()).collect()
}

#[tokio::test]
async fn a_file_replays_to_what_the_process_held() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.mirror.db");
    let unread = ["event_ids"];
    let mirror = Mirror::new(Some(MirrorFile::open(&path).await.unwrap()), "sim");
    let mut held = mirror.lock().await;
    held.begin_full("[]");
    let page = [
        case("a", 10, "New"),
        case("b", 20, "New"),
        case("c", 30, "New"),
    ];
    held.merge(&page, &[], &[], &unread, None).await;
    // A listing that trails a write this process learned: the newer version stays, and
    // survives the end of the listing, which deletes every segment before it.
    held.cases.put(
        Arc::from("d"),
        50,
        0,
        r#"{"_id":"d","status":"Closed"}"#.into(),
    );
    held.merge(&[case("d", 40, "New")], &[], &[], &unread, None)
        .await;
    held.end_full(45, true).await;
    // A delta: one case changed, one left the scope, one is new.
    let scope = [("status".to_string(), "New".to_string())];
    let delta = [
        case("b", 60, "Resolved"),
        case("a", 61, "New"),
        case("e", 62, "New"),
    ];
    held.merge(&delta, &[], &scope, &unread, Some(62)).await;
    drop(held);
    mirror.flush().await;

    let back = loaded(&path).await;
    assert_eq!(ids(&back), ["c", "d", "a", "e"]);
    assert_eq!(back[1], ("d".into(), 50, "Closed".into()));
    let file = MirrorFile::open(&path).await.unwrap();
    let again = Mirror::new(Some(file), "sim").lock().await;
    assert_eq!(again.sync.checkpoint, Some(62));
    assert_eq!(again.sync.generation, 1);
}

#[tokio::test]
async fn a_file_of_mostly_stale_versions_is_rewritten_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.mirror.db");
    let mirror = Mirror::new(Some(MirrorFile::open(&path).await.unwrap()), "sim");
    let mut held = mirror.lock().await;
    held.begin_full("[]");
    let all: Vec<Case> = (0..100).map(|i| case(&format!("c{i}"), i, "New")).collect();
    held.merge(&all, &[], &[], &["event_ids"], None).await;
    held.end_full(100, true).await;
    // Each pass changes every case one at a time: 1,200 versions for 100 cases.
    for round in 1..=12 {
        for c in &all {
            let m = 100 * round + modified_at(c);
            let changed = [case(&c.id, m, "New")];
            held.merge(&changed, &[], &[], &["event_ids"], Some(m))
                .await;
        }
    }
    drop(held);
    mirror.flush().await;
    let rows = segments(&path).await;
    assert!(rows < 700, "{rows} segments for 100 cases");
    let back = loaded(&path).await;
    assert_eq!(back.len(), 100);
    assert!(back.iter().all(|(_, m, _)| *m >= 1200), "{back:?}");
}

#[tokio::test]
async fn a_damaged_file_costs_a_full_listing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.mirror.db");
    let mirror = Mirror::new(Some(MirrorFile::open(&path).await.unwrap()), "sim");
    let mut held = mirror.lock().await;
    held.begin_full("[]");
    held.merge(&[case("a", 1, "New")], &[], &[], &[], None)
        .await;
    held.end_full(1, true).await;
    drop(held);
    mirror.flush().await;
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::query("UPDATE mirror_segments SET cases = x'05000000ff'")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let file = MirrorFile::open(&path).await.unwrap();
    let held = Mirror::new(Some(file), "sim").lock().await;
    assert!(held.cases.is_empty());
    let listing = held.listing("[]", 2, Duration::ZERO, Duration::from_secs(60));
    assert!(matches!(listing, Listing::Full(_)), "{listing:?}");
}
