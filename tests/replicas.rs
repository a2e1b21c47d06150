//! Replicas on PostgreSQL: the log in PostgreSQL, one leader, failover after SIGKILL,
//! a paused leader fenced, and a SQLite log moved over. Each test gets its own database
//! on the server named by `CASEWARDEN_TEST_PG` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); without one they print SKIPPED and pass,
//! unless `CASEWARDEN_REQUIRE_PG` is set (CI sets it).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use casewarden::audit::{AuditStore, EventRow, Filter, LeaseTimes, Verification};
use casewarden::sim::Simulator;
use futures::StreamExt;
use sqlx::AssertSqlSafe;

use crate::common::*;
use crate::faults::{
    TAG_ALL, assert_agreement, race_sim, race_two_onces, set_stellar, tagged_by_api, workspace,
};

/// A database of its own on the test server, dropped at the end.
struct TestDb {
    admin: String,
    name: String,
    url: String,
}

impl TestDb {
    async fn create(test: &str) -> Option<TestDb> {
        let admin = std::env::var("CASEWARDEN_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(3))
            .connect(&admin)
            .await;
        let pool = match pool {
            Ok(p) => p,
            Err(e) if std::env::var_os("CASEWARDEN_REQUIRE_PG").is_none() => {
                eprintln!(
                    "SKIPPED {test}: no PostgreSQL reachable at {admin} ({e}); set CASEWARDEN_TEST_PG to a server's URL to run it"
                );
                return None;
            }
            Err(e) => panic!("CASEWARDEN_REQUIRE_PG is set but {admin} is not reachable: {e}"),
        };
        let name = format!("casewarden_test_{}", fastrand::u64(..));
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        let mut url = url::Url::parse(&admin).unwrap();
        url.set_path(&name);
        Some(TestDb {
            admin,
            name,
            url: url.to_string(),
        })
    }

    async fn store(&self) -> AuditStore {
        AuditStore::open_postgres(&self.url, None).await.unwrap()
    }

    async fn rows(&self) -> Vec<EventRow> {
        let store = self.store().await;
        let rows = store
            .query(&Filter::default())
            .map(Result::unwrap)
            .collect()
            .await;
        store.close().await;
        rows
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    let pool = sqlx::PgPool::connect(&admin).await?;
                    sqlx::query(AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&pool)
                    .await
                })
        })
        .join();
        if !matches!(dropped, Ok(Ok(_))) {
            eprintln!("could not drop the test database {}", self.name);
        }
    }
}

/// The tag-everything workspace with its log in `db`, short leases so failover is quick.
fn replica_workspace(sim: &Simulator, db: &TestDb, daemon: &str) -> Workspace {
    let ws = workspace(sim, daemon);
    ws.edit_config(
        "path = \"state/audit.db\"",
        &format!(
            "url = \"{}\"\nlease_secs = 2\nlease_renew_secs = 1\nlease_retry_secs = 1",
            db.url
        ),
    );
    set_stellar(
        &ws,
        "timeout_secs = 2\nmax_in_flight = 2\npage_size = 50\nmax_attempts = 3\nretry_base_ms = 20",
    );
    ws
}

/// A slow server with `cases` cases, each needing one tag.
async fn slow_sim(cases: usize) -> Simulator {
    let mut opts = sim_options(cases);
    opts.faults.latency_ms = 3;
    start(opts).await
}

/// Waits until `f` gives Some, polling the log.
async fn wait_for<T>(secs: u64, what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {secs}s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The live lease's holder pid and epoch, and whether a pass it started is running.
async fn leader(store: &AuditStore) -> Option<(i64, i64, bool)> {
    let lease = store.lease().await.unwrap()?;
    let now = casewarden::audit::timestamp(chrono::Utc::now());
    if lease.released || lease.expires_at <= now {
        return None;
    }
    let running = store
        .passes()
        .await
        .unwrap()
        .iter()
        .any(|p| p.totals.status == "running" && p.started_at >= lease.started_at);
    Some((lease.pid, lease.epoch, running))
}

/// A daemon leading on its own database over a slow server of 2000 cases, once it has
/// sent some of its changes.
struct Leading {
    db: TestDb,
    sim: Simulator,
    ws: Workspace,
    a: Daemon,
    store: AuditStore,
    epoch: i64,
    cases: usize,
}

/// Starts a [`Leading`] daemon; None without a PostgreSQL server to test on.
async fn leading(test: &str) -> Option<Leading> {
    let db = TestDb::create(test).await?;
    let cases = 2000;
    let sim = slow_sim(cases).await;
    let ws = replica_workspace(&sim, &db, EVERY_SECOND);
    let a = Daemon::start(&ws, &[]);
    let store = db.store().await;
    let epoch = wait_for(30, "the leader sending", async || {
        leader(&store)
            .await
            .filter(|_| tagged_by_api(&sim).len() > 50)
            .map(|(_, epoch, _)| epoch)
    })
    .await;
    Some(Leading {
        db,
        sim,
        ws,
        a,
        store,
        epoch,
        cases,
    })
}

/// Takes the lease from a leader paused at `epoch`, once it has run out.
async fn take_over(store: &AuditStore, epoch: i64) -> casewarden::audit::Claim {
    let other = store.clone().with_lease_times(LeaseTimes {
        ttl: Duration::from_secs(30),
        renew: Duration::from_secs(1),
    });
    let claim = other.claim(Duration::from_secs(10)).await.unwrap();
    assert_eq!(claim.fence().epoch, epoch + 1);
    claim
}

fn assert_intact(v: Verification) -> u64 {
    match v {
        Verification::Intact { rows, .. } => rows,
        other => panic!("the chain does not verify: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_in_postgresql_records_verifies_and_refuses_edits_like_the_file() {
    let Some(db) = TestDb::create("postgres log").await else {
        return;
    };
    let sim = start(sim_options(120)).await;
    let ws = replica_workspace(&sim, &db, "");
    let out = ws.run(&["once"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(tagged_by_api(&sim).len(), 120);
    let rows = db.rows().await;
    assert_agreement(&sim, &rows);
    assert!(
        rows.iter().all(|r| r.epoch == Some(1)),
        "every row carries the lease epoch"
    );

    let out = ws.run(&["audit", "verify"]).await;
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains(&format!("ok: {} row(s)", rows.len())),
        "{}",
        stdout(&out)
    );
    let out = ws
        .run(&["audit", "--outcome", "applied", "--format", "csv"])
        .await;
    assert_eq!(stdout(&out).lines().count(), 121, "{}", stdout(&out));
    // Nobody leads once the pass gave the lease back: exit 1, for monitoring.
    let out = ws.run(&["status"]).await;
    let text = stdout(&out);
    assert_exit(&out, 1);
    assert!(
        text.contains("(postgres)") && text.contains("epoch 1"),
        "{text}"
    );
    assert!(
        text.contains("released at") && text.contains("last pass  default"),
        "{text}"
    );

    // Append-only in PostgreSQL too, whoever connects.
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    for sql in [
        "UPDATE events SET rule = 'x' WHERE seq = 1",
        "DELETE FROM events WHERE seq = 1",
        "TRUNCATE events CASCADE",
        "DELETE FROM passes",
    ] {
        let e = sqlx::query(sql).execute(&pool).await.unwrap_err();
        assert!(e.to_string().contains("append-only"), "{sql}: {e}");
    }
    pool.close().await;

    // A password in the URL, as user info or as a parameter, is refused before anything
    // connects, and never shown.
    let config = std::fs::read_to_string(ws.config()).unwrap();
    let base = url::Url::parse(&db.url).unwrap();
    let mut with_user = base.clone();
    with_user.set_password(Some("hunter2-secret")).unwrap();
    for url in [
        with_user.to_string(),
        format!("{base}?password=hunter2-secret"),
    ] {
        std::fs::write(ws.config(), config.replace(&db.url, &url)).unwrap();
        let out = ws.run(&["check", "--offline"]).await;
        assert_exit(&out, 2);
        let text = stderr(&out);
        assert!(
            text.contains("audit.url") && text.contains("password_file"),
            "{text}"
        );
        assert!(!text.contains("hunter2-secret"), "{text}");
        let out = ws.run(&["status", "--db", &url]).await;
        assert_exit(&out, 2);
        assert!(!stderr(&out).contains("hunter2-secret"), "{}", stderr(&out));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_once_runs_on_one_postgresql_log_apply_each_change_once() {
    for gap in [0u64, 5, 20, 60] {
        let Some(db) = TestDb::create("two once runs").await else {
            return;
        };
        let sim = race_sim().await;
        let ws = replica_workspace(&sim, &db, "");
        race_two_onces(&sim, &ws, gap).await;
        assert_agreement(&sim, &db.rows().await);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_replica_leads_and_once_by_hand_waits_for_it() {
    let Some(db) = TestDb::create("one leader").await else {
        return;
    };
    let sim = slow_sim(600).await;
    let port = free_port();
    let ws = replica_workspace(
        &sim,
        &db,
        &format!("{EVERY_SECOND}\nlisten = \"127.0.0.1:{port}\""),
    );
    // The second replica's config differs only in not serving HTTP.
    let ws_b = replica_workspace(&sim, &db, EVERY_SECOND);
    let a = Daemon::start(&ws, &[]);
    let b = Daemon::start(&ws_b, &[]);
    let store = db.store().await;
    let (pid, epoch, _) = wait_for(20, "a leader", async || leader(&store).await).await;
    let (leading, following) = if pid == a.pid() { (&a, &b) } else { (&b, &a) };
    assert_eq!(pid, leading.pid());
    leading.wait_log("this replica leads", 10).await;

    // A hand-run pass never runs beside the leader.
    let out = ws.run(&["once"]).await;
    assert_fails_with(&out, 4, "claimed by another casewarden pass");

    // Only the leader runs passes, and the endpoints say which one leads.
    let health: serde_json::Value = reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let a_leads = pid == a.pid();
    assert_eq!(
        health["role"],
        if a_leads { "leader" } else { "follower" },
        "{health}"
    );
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!("casewarden_leader {}", i64::from(a_leads))),
        "{metrics}"
    );
    assert!(
        until(60, || tagged_by_api(&sim).len() == 600).await,
        "the leader tags every case"
    );
    assert!(
        !following.log().contains("this replica leads"),
        "{}",
        following.log()
    );
    let (_, still, _) = leader(&store).await.unwrap();
    assert_eq!(still, epoch, "the lease stayed with one leader");
    let out = ws.run(&["status"]).await;
    assert!(
        stdout(&out).contains(&format!("leader     pid {pid} ")),
        "{}",
        stdout(&out)
    );
    a.signal(libc::SIGTERM);
    b.signal(libc::SIGTERM);
    assert_eq!(a.exit_code(20).await, 0);
    assert_eq!(b.exit_code(20).await, 0);
    assert_agreement(&sim, &db.rows().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_leader_killed_mid_pass_ten_times_loses_nothing_and_applies_nothing_twice() {
    let Some(db) = TestDb::create("failover").await else {
        return;
    };
    let seed: u64 = std::env::var("FAILOVER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261203);
    let mut rng = fastrand::Rng::with_seed(seed);
    let cases = 2000;
    let sim = slow_sim(cases).await;
    let ws = replica_workspace(&sim, &db, EVERY_SECOND);
    let store = db.store().await;
    let mut daemons = vec![Daemon::start(&ws, &[]), Daemon::start(&ws, &[])];
    let mut failovers = Vec::new();
    for kill in 0..10 {
        let (pid, epoch) = wait_for(60, "a leader with a pass running", async || {
            leader(&store)
                .await
                .filter(|(pid, _, running)| *running && daemons.iter().any(|d| d.pid() == *pid))
                .map(|(pid, epoch, _)| (pid, epoch))
        })
        .await;
        tokio::time::sleep(Duration::from_millis(rng.u64(50..1500))).await;
        let i = daemons.iter().position(|d| d.pid() == pid).unwrap();
        let victim = daemons.remove(i);
        victim.signal(libc::SIGKILL);
        let killed = Instant::now();
        victim.exit_code(5).await;
        let taken = wait_for(20, "a new leader", async || {
            store
                .lease()
                .await
                .unwrap()
                .filter(|l| l.epoch > epoch && !l.released)
        })
        .await;
        let took = killed.elapsed();
        assert_ne!(taken.pid, pid, "seed {seed}, kill {kill}");
        // Within the lease (2 s) after its last renewal, plus one retry interval (1 s).
        assert!(
            took <= Duration::from_millis(4_000),
            "seed {seed}, kill {kill}: failover took {took:?}"
        );
        failovers.push(took);
        daemons.push(Daemon::start(&ws, &[]));
    }
    for d in &daemons {
        // A replacement just spawned may not have its signal handlers yet.
        d.wait_log("casewarden started", 20).await;
        d.signal(libc::SIGTERM);
    }
    for d in daemons {
        assert_eq!(d.exit_code(30).await, 0);
    }
    // A last hand-run pass settles anything left open and finishes the work.
    let out = ws.run(&["once"]).await;
    assert_eq!(out.status.code(), Some(0), "seed {seed}: {}", stderr(&out));
    assert_eq!(tagged_by_api(&sim).len(), cases, "seed {seed}");
    let rows = db.rows().await;
    assert_agreement(&sim, &rows);
    assert_intact(store.verify().await.unwrap());
    let passes = store.passes().await.unwrap();
    let lost = passes
        .iter()
        .filter(|p| p.totals.status == "interrupted")
        .count();
    let epochs: HashSet<i64> = rows.iter().filter_map(|r| r.epoch).collect();
    let ms: Vec<u128> = failovers.iter().map(Duration::as_millis).collect();
    eprintln!(
        "failover (seed {seed}): takeover after SIGKILL in {ms:?} ms (max {} ms); {lost} of {} passes interrupted; rows written under {} epochs",
        ms.iter().max().unwrap(),
        passes.len(),
        epochs.len()
    );
    assert!(lost >= 1, "a leader was killed mid pass");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_paused_past_its_lease_sends_nothing_more() {
    let Some(Leading {
        db,
        sim,
        ws,
        a,
        store,
        epoch,
        cases,
    }) = leading("paused leader").await
    else {
        return;
    };
    a.signal(libc::SIGSTOP);
    // Another holder takes the lease once it has run out (2 s).
    let claim = take_over(&store, epoch).await;
    // What was on the wire when it froze has landed by now.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let sent = sim.state().write_requests();
    a.signal(libc::SIGCONT);
    a.wait_log("lost the audit log's lease", 10).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        sim.state().write_requests(),
        sent,
        "the paused leader sent requests after it lost its lease"
    );
    let taken_at = store.lease().await.unwrap().unwrap().started_at;
    let after: Vec<EventRow> = db
        .rows()
        .await
        .into_iter()
        .filter(|r| r.epoch == Some(epoch) && r.recorded_at >= taken_at)
        .collect();
    assert!(
        after.is_empty(),
        "rows written under the lost epoch: {after:?}"
    );
    // Given the lease back, it leads again under a new epoch and finishes the work.
    claim.release().await;
    assert!(
        until(60, || tagged_by_api(&sim).len() == cases).await,
        "{}",
        a.log()
    );
    a.signal(libc::SIGTERM);
    assert_eq!(a.exit_code(30).await, 0);
    let out = ws.run(&["once"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_agreement(&sim, &db.rows().await);
    assert_intact(store.verify().await.unwrap());
}

/// Retries waiting on `Retry-After` when the leader froze come due after another took
/// over: the fence, checked right before every attempt, keeps each of them unsent.
#[tokio::test(flavor = "multi_thread")]
async fn a_leader_paused_with_retries_pending_sends_none_of_them_after_its_lease() {
    paused_with_requests_pending("paused leader, retries pending", |f, on| {
        f.retry_after_secs = 6;
        f.throttle_next = if on { 1_000_000 } else { 0 };
    })
    .await;
}

/// Writes answered 503 are settled by reads (retried with backoff), never re-sent: a
/// leader frozen with those pending sends no write after its lease either.
#[tokio::test(flavor = "multi_thread")]
async fn a_leader_paused_with_503s_pending_sends_nothing_after_its_lease() {
    paused_with_requests_pending("paused leader, 503s pending", |f, on| {
        f.fail_next = if on { 1_000_000 } else { 0 };
    })
    .await;
}

/// Freezes a leader while `fault` (switched on) makes its requests wait, lets another take
/// the lease, switches the fault off and resumes it: no write may go out after.
async fn paused_with_requests_pending(test: &str, fault: fn(&mut casewarden::sim::Faults, bool)) {
    // Bound, not `_`: the database and the workspace live until the test ends.
    let Some(Leading {
        db: _db,
        sim,
        ws: _ws,
        a,
        store,
        epoch,
        ..
    }) = leading(test).await
    else {
        return;
    };
    fault(&mut sim.state().faults, true);
    // Every request in flight meets the fault and waits to be sent (or read) again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.signal(libc::SIGSTOP);
    let claim = take_over(&store, epoch).await;
    fault(&mut sim.state().faults, false);
    let sent = sim.state().write_requests();
    a.signal(libc::SIGCONT);
    // Whatever was waiting (Retry-After: 6, backoffs) comes due within this.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        sim.state().write_requests(),
        sent,
        "a write went out after the lease was lost: {}",
        a.log()
    );
    claim.release().await;
    a.signal(libc::SIGTERM);
    a.exit_code(30).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_migrate_moves_a_sqlite_log_into_postgresql_with_its_chain() {
    let Some(db) = TestDb::create("migrate").await else {
        return;
    };
    let sim = start(sim_options(80)).await;
    let ws = workspace(&sim, "");
    assert_exit(&ws.run(&["once"]).await, 0);
    let verified = stdout(&ws.run(&["audit", "verify"]).await);
    let head = verified.split("head ").nth(1).unwrap();
    let head = head.split_whitespace().next().unwrap().to_string();
    let file_rows = ws.audit(Filter::default()).await;

    let out = ws.run(&["audit", "migrate", "--to", &db.url]).await;
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(
        text.contains(&format!("copied {} row(s)", file_rows.len())),
        "{text}"
    );
    assert!(text.contains(&format!("head {head}")), "{text}");
    assert_eq!(db.rows().await, file_rows, "every row as it was");
    // Again: nothing more to copy, and the copy still verifies.
    let out = ws.run(&["audit", "migrate", "--to", &db.url]).await;
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("copied 0 row(s)"), "{}", stdout(&out));

    // The replicas go on from there: the chain continues from the file's head.
    ws.edit_config(
        "path = \"state/audit.db\"",
        &format!("url = \"{}\"", db.url),
    );
    std::fs::write(
        ws.dir.path().join("rules/two.rhai"),
        TAG_ALL
            .replace("tag-all", "tag-two")
            .replace("\"seen\"", "\"seen-two\""),
    )
    .unwrap();
    assert_exit(&ws.run(&["once"]).await, 0);
    // The rule texts moved with the rows.
    let first = file_rows.iter().find(|r| r.rule == "tag-all").unwrap().seq;
    let shown = ws.run(&["audit", "show", &first.to_string()]).await;
    assert_exit(&shown, 0);
    assert!(stdout(&shown).contains("\"tag-all\""), "{}", stdout(&shown));
    let rows = db.rows().await;
    assert!(rows.len() > file_rows.len());
    assert_eq!(rows[file_rows.len()].prev_hash, head);
    let before = file_rows.iter().filter_map(|r| r.epoch).max().unwrap();
    assert!(
        rows[file_rows.len()..]
            .iter()
            .all(|r| r.epoch > Some(before)),
        "epochs keep growing across the move"
    );
    assert_exit(&ws.run(&["audit", "verify"]).await, 0);
    // Moving the file again finds its log continued there: nothing to copy.
    let out = ws
        .run(&[
            "audit",
            "migrate",
            "--to",
            &db.url,
            "--db",
            ws.audit_db().to_str().unwrap(),
        ])
        .await;
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("nothing to copy") && stdout(&out).contains("written there since"),
        "{}",
        stdout(&out)
    );

    // A different log in the target is never mixed in.
    let other = workspace(&sim, "");
    assert_exit(&other.run(&["once"]).await, 0);
    let out = other.run(&["audit", "migrate", "--to", &db.url]).await;
    assert_fails_with(&out, 2, "already holds a different log");
}
