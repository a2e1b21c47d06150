use std::path::Path;

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
    let mut unpacker = Unpacker::default();
    (held.cases.after(None, usize::MAX).into_iter())
        .map(|listed| {
            let (m, id) = listed.at;
            let text = unpacker.text(listed.body).expect("unpacks");
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

/// The file as an operator opens it.
async fn file_db(path: &std::path::Path) -> sqlx::SqlitePool {
    sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap()
}

/// A mirror kept in a new file at `path`, filled by a full listing of `cases`.
async fn filled(path: &std::path::Path, cases: &[Case]) -> Mirror {
    let mirror = Mirror::new(Some(MirrorFile::open(path).await.unwrap()), "sim");
    let mut held = mirror.lock().await;
    held.begin_full("[]");
    held.merge(cases, &[], &[], &["event_ids"], None).await;
    let newest = cases.iter().map(modified_at).max().unwrap_or(0);
    held.end_full(newest, true).await;
    drop(held);
    mirror
}

async fn segments(path: &std::path::Path) -> i64 {
    let pool = file_db(path).await;
    let n = sqlx::query_scalar("SELECT count(*) FROM mirror_segments")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    n
}

/// Asserts that one block holds the texts of all the mirror's cases, in memory and as the
/// next process loads its file (one segment).
async fn one_block_one_segment(mirror: &Mirror, held: OwnedMutexGuard<Held>, path: &Path) {
    let in_one = |held: &Held| {
        let listed = held.cases.after(None, usize::MAX);
        listed.iter().all(|l| l.body.in_block_of(listed[0].body))
    };
    assert!(in_one(&held));
    drop(held);
    mirror.flush().await;
    assert_eq!(segments(path).await, 1);
    let file = MirrorFile::open(path).await.unwrap();
    assert!(in_one(&*Mirror::new(Some(file), "sim").lock().await));
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
    // survives the end of the listing, which writes the file whole.
    let body = Block::pack(&[r#"{"_id":"d","status":"Closed"}"#]).remove(0);
    held.cases.put(Arc::from("d"), 50, 0, body);
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
    let all: Vec<Case> = (0..100).map(|i| case(&format!("c{i}"), i, "New")).collect();
    let mirror = filled(&path, &all).await;
    let mut held = mirror.lock().await;
    // Seven pages each change every case: the seventh brings the file to 800 versions of
    // 100 cases, and it is rewritten whole, with that page's versions in it.
    for round in 1..=7 {
        let changed: Vec<Case> = (all.iter())
            .map(|c| case(&c.id, 100 * round + modified_at(c), "New"))
            .collect();
        let newest = changed.iter().map(modified_at).max();
        held.merge(&changed, &[], &[], &["event_ids"], newest).await;
    }
    // In memory too, the texts of versions no longer held went.
    one_block_one_segment(&mirror, held, &path).await;
    let back = loaded(&path).await;
    assert_eq!(back.len(), 100);
    assert!(back.iter().all(|(_, m, _)| *m >= 700), "{back:?}");
}

#[tokio::test]
async fn a_damaged_file_costs_a_full_listing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.mirror.db");
    filled(&path, &[case("a", 1, "New")]).await.flush().await;
    let pool = file_db(&path).await;
    sqlx::query("UPDATE mirror_segments SET cases = x'05000000ff'")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let file = MirrorFile::open(&path).await.unwrap();
    let mirror = Mirror::new(Some(file), "sim");
    let mut held = mirror.lock().await;
    assert!(held.cases.is_empty());
    let listing = held.listing("[]", 2, Duration::ZERO, Duration::from_secs(60));
    assert!(matches!(listing, Listing::Full(_)), "{listing:?}");
    // The listing that follows leaves a file that reads again.
    held.begin_full("[]");
    held.merge(&[case("b", 2, "New")], &[], &[], &["event_ids"], None)
        .await;
    held.end_full(2, true).await;
    drop(held);
    mirror.flush().await;
    assert_eq!(ids(&loaded(&path).await), ["b"]);
}

#[tokio::test]
async fn a_full_listing_cut_short_is_made_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.mirror.db");
    let mirror = filled(&path, &[case("a", 1, "New")]).await;
    let mut held = mirror.lock().await;
    let delta = held.listing("[]", 2, Duration::ZERO, Duration::from_secs(60));
    assert_eq!(delta, Listing::Delta { from: 1 });
    // New filters: a full listing starts, and its process ends after one page.
    held.begin_full("[[\"status\",\"New\"]]");
    held.merge(&[case("b", 2, "New")], &[], &[], &["event_ids"], None)
        .await;
    drop(held);
    mirror.flush().await;

    // The file holds the mirror as it was before that listing, which is made again.
    assert_eq!(ids(&loaded(&path).await), ["a"]);
    let file = MirrorFile::open(&path).await.unwrap();
    let held = Mirror::new(Some(file), "sim").lock().await;
    let listing = held.listing(
        "[[\"status\",\"New\"]]",
        3,
        Duration::ZERO,
        Duration::from_secs(60),
    );
    assert_eq!(
        listing,
        Listing::Full("the rules' filters changed since the mirror was filled".into())
    );
    // A first listing cut short leaves no mirror at all.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.mirror.db");
    let mirror = Mirror::new(Some(MirrorFile::open(&path).await.unwrap()), "sim");
    let mut held = mirror.lock().await;
    held.begin_full("[]");
    held.merge(&[case("b", 2, "New")], &[], &[], &["event_ids"], None)
        .await;
    drop(held);
    mirror.flush().await;
    assert!(loaded(&path).await.is_empty());
}

#[tokio::test]
async fn a_full_listing_is_packed_in_the_order_a_pass_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.mirror.db");
    let mirror = Mirror::new(Some(MirrorFile::open(&path).await.unwrap()), "sim");
    let mut held = mirror.lock().await;
    held.begin_full("[]");
    // Creation order is not `modified_at` order: packed page by page, a pass reading by
    // `modified_at` would unpack a block for every case.
    let pages = [
        [case("a", 40, "New"), case("b", 10, "New")],
        [case("c", 30, "New"), case("d", 20, "New")],
    ];
    for page in &pages {
        held.merge(page, &[], &[], &["event_ids"], None).await;
    }
    held.end_full(40, true).await;
    one_block_one_segment(&mirror, held, &path).await;
    assert_eq!(ids(&loaded(&path).await), ["b", "d", "c", "a"]);
}

#[tokio::test]
async fn the_same_version_listed_again_keeps_its_verdict_a_changed_text_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.mirror.db");
    let mirror = filled(&path, &[case("a", 10, "New"), case("b", 10, "New")]).await;
    let mut held = mirror.lock().await;
    let verdict = Verdict {
        key: 7,
        at: 1,
        until: i64::MAX,
        tenant: None,
        due: 1,
        seen: 1,
        exempt: 0,
    };
    held.remember("a", verdict.clone());
    held.remember("b", verdict);
    held.save_verdicts().await;
    // A delta's overlap lists both again at the same `modified_at`; "b" changed without
    // its time moving.
    let again = [case("a", 10, "New"), case("b", 10, "In Progress")];
    held.merge(&again, &[], &[], &["event_ids"], Some(10)).await;
    assert!(held.verdict("a").is_some_and(|v| v.key == 7));
    assert!(held.verdict("b").is_none());
    drop(held);
    mirror.flush().await;

    let file = MirrorFile::open(&path).await.unwrap();
    let back = Mirror::new(Some(file), "sim").lock().await;
    assert!(back.verdict("a").is_some_and(|v| v.key == 7));
    assert!(back.verdict("b").is_none());
}
