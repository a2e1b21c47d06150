//! `casewarden run` as a child process against the simulator: scheduling, skipped
//! ticks, reloads, the circuit breaker, signals, crash recovery, HTTP endpoints, systemd.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use casewarden::audit::{AuditStore, EventRow, Filter, Verification};

use crate::common::*;

const TAG_ALL: &str =
    "const RULE = #{ name: \"tag-all\" };\nfn evaluate(c) { add_tag(\"seen\", \"test\"); }\n";

async fn passes(ws: &Workspace) -> Vec<casewarden::audit::PassRow> {
    if !ws.audit_db().exists() {
        return Vec::new();
    }
    let store = AuditStore::open(&ws.audit_db()).await.unwrap();
    let p = store.passes().await.unwrap();
    store.close().await;
    p
}

async fn wait_passes(ws: &Workspace, n: usize, secs: u64) -> Vec<casewarden::audit::PassRow> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let p = passes(ws).await;
        if p.iter().filter(|p| p.finished_at.is_some()).count() >= n || Instant::now() > deadline {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `/healthz` of a daemon on `port`: status code and body.
async fn healthz(port: u16) -> (u16, serde_json::Value) {
    let r = reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn metrics_text(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn passes_run_on_schedule_and_the_endpoints_answer() {
    let sim = start(sim_options(50)).await;
    let port = free_port();
    let ws = Workspace::new(
        &sim.url,
        "legacy",
        &format!("{EVERY_SECOND}\nlisten = \"127.0.0.1:{port}\""),
        None,
    );
    let d = Daemon::start(&ws, &[]);
    let done = wait_passes(&ws, 2, 15).await;
    assert!(done.len() >= 2, "{}", d.log());
    assert!(
        d.log().contains("next_run="),
        "next run times are logged at start"
    );
    let (code, body) = healthz(port).await;
    assert_eq!(code, 200);
    assert_eq!(body["status"], "ok");
    let metrics = metrics_text(port).await;
    let http = reqwest::Client::new();
    for name in [
        "casewarden_passes_total{status=\"ok\"}",
        "casewarden_api_requests_total{status=\"200\"}",
        "casewarden_pass_duration_seconds_count",
        "casewarden_token_renewals_total",
        "casewarden_rules_disabled",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    let value = |name: &str| -> f64 {
        let line = (metrics.lines()).find(|l| l.starts_with(name));
        let line = line.unwrap_or_else(|| panic!("{name} missing:\n{metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    // Two passes or more over the 50 cases: from the second on, the cases nobody changed
    // are counted from their verdicts.
    let seen = value("casewarden_cases_seen_total ");
    let remembered = value("casewarden_cases_remembered_total ");
    assert!(seen >= 100.0, "{metrics}");
    assert!(remembered > 0.0 && remembered <= seen - 50.0, "{metrics}");
    // Requests in flight, the adaptive window and latency, by server (host:port only).
    let server = format!("server=\"{}\"", sim.addr);
    let window = |text: &str| -> f64 {
        let line = (text.lines())
            .find(|l| l.starts_with("casewarden_api_window{") && l.contains(&server))
            .unwrap_or_else(|| panic!("no window for {server}:\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(
        window(&metrics),
        48.0,
        "a server that answers keeps the full window"
    );
    for name in [
        "casewarden_api_in_flight{",
        "casewarden_api_request_duration_seconds_count{",
    ] {
        assert!(
            (metrics.lines()).any(|l| l.starts_with(name) && l.contains(&server)),
            "{name} missing:\n{metrics}"
        );
    }
    // The daemon listed every case at its start, then only what changed.
    let listings: Vec<String> = (sim.state().requests().iter())
        .filter(|r| r.method == "GET" && r.path == "/connect/api/v1/cases")
        .map(|r| r.query.clone())
        .collect();
    assert!(!listings[0].contains("modified_at"), "{listings:?}");
    assert!(
        listings.iter().any(|q| q.contains("FROM%7Emodified_at")),
        "{listings:?}"
    );
    // ... from memory: the mirror file beside the log is for `once`.
    let db = ws.mirror_db().await;
    let (rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM mirror_segments")
        .fetch_one(&db)
        .await
        .unwrap();
    db.close().await;
    assert_eq!(rows, 0, "the daemon wrote its mirror to the file");
    // A burst of 503s narrows the window.
    sim.state().faults.fail_next = 10;
    let deadline = Instant::now() + Duration::from_secs(15);
    while window(&metrics_text(port).await) >= 48.0 {
        assert!(
            Instant::now() < deadline,
            "the window never narrowed: {}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The server goes away: the token check and the failing passes make it unhealthy.
    sim.state().faults.down = true;
    sim.state().expire_tokens();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut status = 0;
    while Instant::now() < deadline && status != 503 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        status = http
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .map_or(0, |r| r.status().as_u16());
    }
    assert_eq!(status, 503, "{}", d.log());
    d.signal(libc::SIGTERM);
    assert_eq!(d.exit_code(20).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_server_makes_ticks_skip_instead_of_overlap() {
    let mut opts = sim_options(30);
    opts.faults.latency_ms = 700;
    let sim = start(opts).await;
    let ws = Workspace::new(&sim.url, "legacy", EVERY_SECOND, None);
    let d = Daemon::start(&ws, &[]);
    d.wait_log("tick skipped", 20).await;
    let done = wait_passes(&ws, 2, 20).await;
    d.signal(libc::SIGTERM);
    assert_eq!(d.exit_code(30).await, 0);
    let mut finished: Vec<_> = done.iter().filter(|p| p.finished_at.is_some()).collect();
    finished.sort_by(|a, b| a.started_at.cmp(&b.started_at));
    for pair in finished.windows(2) {
        assert!(
            pair[1].started_at >= *pair[0].finished_at.as_ref().unwrap(),
            "passes overlapped: {pair:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_keeps_the_old_rules_on_errors_and_switches_on_a_fixed_set() {
    let sim = start(sim_options(30)).await;
    let good =
        "const RULE = #{ name: \"first\", schedule: \"* * * * * *\" };\nfn evaluate(c) { }\n";
    let ws = Workspace::new(
        &sim.url,
        "legacy",
        "schedule = \"0 0 0 1 1 *\"\nmax_change_fraction = 1.0",
        Some(&[("a.rhai", good)]),
    );
    let d = Daemon::start(&ws, &[]);
    d.wait_log("casewarden started", 15).await;
    let rules = ws.dir.path().join("rules");
    std::fs::write(
        rules.join("b.rhai"),
        "const RULE = #{ name: \"second\" };\nfn evaluate(c) { let = ; }\n",
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    d.wait_log("rules NOT reloaded", 10).await;
    assert!(d.log().contains("b.rhai:2:"), "{}", d.log());
    std::fs::write(rules.join("b.rhai"), "const RULE = #{ name: \"second\", schedule: \"* * * * * *\" };\nfn evaluate(c) { add_tag(\"second-was-here\"); }\n").unwrap();
    d.signal(libc::SIGHUP);
    d.wait_log("rules reloaded", 10).await;
    assert!(
        until(15, || sim.state().cases.iter().all(|c| c["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "second-was-here")))
        .await,
        "{}",
        d.log()
    );
    d.signal(libc::SIGTERM);
    assert_eq!(d.exit_code(20).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_rule_file_is_reloaded_without_a_signal() {
    let sim = start(sim_options(10)).await;
    let ws = Workspace::new(
        &sim.url,
        "legacy",
        "schedule = \"0 0 0 1 1 *\"",
        Some(&[(
            "a.rhai",
            "const RULE = #{ name: \"a\" };\nfn evaluate(c) { }\n",
        )]),
    );
    let d = Daemon::start(&ws, &[]);
    d.wait_log("casewarden started", 15).await;
    std::fs::write(
        ws.dir.path().join("rules/a.rhai"),
        "const RULE = #{ name: \"a2\" };\nfn evaluate(c) { }\n",
    )
    .unwrap();
    d.wait_log("rules folder changed", 15).await;
    d.wait_log("rules reloaded", 5).await;
    d.signal(libc::SIGTERM);
    assert_eq!(d.exit_code(20).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_circuit_breaker_disables_a_rule_failing_everywhere_until_its_file_changes() {
    let sim = start(sim_options(10)).await;
    let broken = "const RULE = #{ name: \"thrower\" };\nfn evaluate(c) { throw \"always\"; }\n";
    let port = free_port();
    let ws = Workspace::new(
        &sim.url,
        "legacy",
        &format!("{EVERY_SECOND}\nbreaker_passes = 2\nlisten = \"127.0.0.1:{port}\""),
        Some(&[("a.rhai", broken)]),
    );
    let d = Daemon::start(&ws, &[]);
    d.wait_log("CIRCUIT BREAKER", 20).await;
    // Working, but a person should look: 200 with the disabled rule named.
    let (code, body) = healthz(port).await;
    assert_eq!(code, 200);
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(
        body["disabled_rules"],
        serde_json::json!(["thrower"]),
        "{body}"
    );
    assert!(body["last_good_pass_age_secs"].is_u64(), "{body}");
    let metrics = metrics_text(port).await;
    assert!(
        metrics.contains("casewarden_rule_errors_total{rule=\"thrower\"} ")
            && metrics.contains("casewarden_last_success_timestamp_seconds "),
        "{metrics}"
    );
    assert!(
        d.log().contains("version=") && d.log().contains("mode=live") && d.log().contains("audit="),
        "the start line names version, mode and audit path:\n{}",
        d.log()
    );
    let rows = ws.audit(Filter::default()).await;
    assert!(
        rows.iter().any(|r| r.rule == "thrower"
            && r.field == "rule"
            && r.new.as_deref() == Some("disabled"))
    );
    std::fs::write(
        ws.dir.path().join("rules/a.rhai"),
        broken.replace("always", "still"),
    )
    .unwrap();
    d.wait_log("re-enabling", 15).await;
    d.signal(libc::SIGTERM);
    assert_eq!(d.exit_code(20).await, 0);
}

/// A daemon in the middle of a long pass that tags every case, two updates at a time.
async fn daemon_mid_pass() -> (casewarden::sim::Simulator, Workspace, Daemon) {
    let mut opts = sim_options(200);
    opts.faults.latency_ms = 40;
    let sim = start(opts).await;
    let ws = Workspace::new(
        &sim.url,
        "legacy",
        &format!("{EVERY_SECOND}\nmax_change_fraction = 1.0\ncomment_changes = false"),
        Some(&[("all.rhai", TAG_ALL)]),
    );
    ws.edit_config("timeout_secs = 5", "timeout_secs = 5\nmax_in_flight = 2");
    let d = Daemon::start(&ws, &[]);
    assert!(
        until(20, || sim.state().write_requests() >= 10).await,
        "{}",
        d.log()
    );
    (sim, ws, d)
}

fn settled(rows: &[EventRow]) -> bool {
    let done: HashSet<i64> = rows.iter().filter_map(|r| r.planned_seq).collect();
    rows.iter()
        .filter(|r| r.outcome == "planned" && !r.dry_run)
        .all(|r| done.contains(&r.seq))
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_mid_pass_exits_cleanly_with_every_planned_row_settled() {
    let (sim, ws, d) = daemon_mid_pass().await;
    let t = Instant::now();
    d.signal(libc::SIGTERM);
    assert_eq!(d.exit_code(35).await, 0);
    assert!(t.elapsed() < Duration::from_secs(30));
    let rows = ws.audit(Filter::default()).await;
    assert!(settled(&rows), "a planned row has no outcome");
    // What shutdown kept from being sent is skipped, not failed: a deploy is not a failure.
    let unsent: Vec<&EventRow> = rows
        .iter()
        .filter(|r| {
            r.error
                .as_deref()
                .is_some_and(|e| e.contains("shutting down"))
        })
        .collect();
    assert!(!unsent.is_empty(), "the pass had changes left to send");
    assert!(unsent.iter().all(|r| r.outcome == "skipped"), "{unsent:?}");
    assert!(rows.iter().all(|r| r.outcome != "failed"), "nothing failed");
    let writes = sim.state().write_requests();
    assert!(writes < 200, "the pass was not cut short ({writes} writes)");
    let p = passes(&ws).await;
    assert!(p.iter().any(|p| p.totals.status == "interrupted"), "{p:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_pass_then_restart_reconciles_honestly() {
    let (sim, ws, d) = daemon_mid_pass().await;
    d.signal(libc::SIGKILL);
    assert_ne!(d.exit_code(10).await, 0);
    let before = ws.audit(Filter::default()).await;
    assert!(
        !settled(&before),
        "the kill left nothing in flight; the test proves nothing"
    );
    sim.state().faults.latency_ms = 0;
    // Restart with a schedule that will not fire, so only reconciliation touches the log.
    ws.edit_config(EVERY_SECOND, "schedule = \"0 0 0 1 1 *\"");
    let d = Daemon::start(&ws, &[]);
    d.wait_log("reconciled changes left planned", 20).await;
    d.signal(libc::SIGTERM);
    assert_eq!(d.exit_code(30).await, 0);
    let rows = ws.audit(Filter::default()).await;
    assert!(settled(&rows));
    // Honest: a reconciled `applied` is a case that holds the tag; one that does not is
    // `skipped` (left planned: the next pass decides again) or `failed` (sent, not taken).
    let reconciled: Vec<&EventRow> = rows
        .iter()
        .filter(|r| r.reason.starts_with("reconciled"))
        .collect();
    assert!(!reconciled.is_empty());
    for r in reconciled {
        let holds = sim.state().case(&r.case_id).unwrap()["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "seen");
        match r.outcome.as_str() {
            "applied" => assert!(holds, "{} recorded applied but lacks the tag", r.case_id),
            "failed" | "skipped" => assert!(
                !holds,
                "{} recorded {} but holds the tag",
                r.case_id, r.outcome
            ),
            other => panic!("unexpected outcome {other}"),
        }
    }
    // Every change the server holds has an applied row.
    let applied: HashSet<&str> = rows
        .iter()
        .filter(|r| r.outcome == "applied")
        .map(|r| r.case_id.as_str())
        .collect();
    for c in sim
        .state()
        .cases
        .iter()
        .filter(|c| c["tags"].as_array().unwrap().iter().any(|t| t == "seen"))
    {
        assert!(applied.contains(c["_id"].as_str().unwrap()));
    }
    let store = AuditStore::open(&ws.audit_db()).await.unwrap();
    assert!(matches!(
        store.verify().await.unwrap(),
        Verification::Intact { .. }
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn systemd_notifications_reach_the_notify_socket() {
    let sim = start(sim_options(10)).await;
    let ws = Workspace::new(&sim.url, "legacy", EVERY_SECOND, None);
    let socket_path = ws.dir.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
    let d = Daemon::start(
        &ws,
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    let mut got = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = vec![0u8; 4096];
    while Instant::now() < deadline
        && !(got.contains("READY=1")
            && got.contains("STATUS=last pass")
            && got.contains("WATCHDOG=1"))
    {
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(500), socket.recv(&mut buf)).await
        {
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
            got.push('\n');
        }
    }
    d.signal(libc::SIGTERM);
    let code = d.exit_code(20).await;
    assert!(got.contains("READY=1"), "{got}");
    assert!(got.contains("STATUS=last pass"), "{got}");
    assert!(got.contains("WATCHDOG=1"), "{got}");
    assert_eq!(code, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_rules_refuse_to_start_with_the_full_list() {
    let ws = Workspace::new(
        "http://127.0.0.1:9",
        "legacy",
        "",
        Some(&[
            ("a.rhai", "fn evaluate(c) { }\n"),
            ("b.rhai", "const RULE = #{ name: \"b\" };\n"),
        ]),
    );
    let out = ws.run(&["run"]).await;
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("a.rhai:1:1") && err.contains("b.rhai:1:1") && err.contains("2 rule error(s)"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_systemd_unit_verifies() {
    let Ok(probe) = tokio::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .await
    else {
        eprintln!("systemd-analyze is not installed here; the unit was not verified");
        return;
    };
    assert!(probe.status.success());
    let unit = std::fs::read_to_string(repo().join("systemd/casewarden.service")).unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("LoadCredential=api_key"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("casewarden.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/local/bin/casewarden",
            env!("CARGO_BIN_EXE_casewarden"),
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out).trim(), "", "systemd-analyze has remarks");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_once_beside_a_running_daemon_and_a_second_daemon_change_nothing_twice() {
    let (sim, ws, d) = daemon_mid_pass().await;
    // `once` while the daemon's pass holds the audit store: it names the holder, exit 4.
    let out = ws.run(&["once", "--wait", "0"]).await;
    assert_fails_with(&out, 4, "claimed by another casewarden pass: pid");
    // A second daemon on the same store skips its ticks while the first one's pass runs.
    let second = Daemon::start(&ws, &[]);
    second.wait_log("tick skipped", 20).await;
    second.signal(libc::SIGTERM);
    assert_eq!(second.exit_code(35).await, 0);
    assert!(
        until(60, || sim.state().write_requests() >= 200).await,
        "{}",
        d.log()
    );
    d.signal(libc::SIGTERM);
    assert_eq!(d.exit_code(35).await, 0);
    let rows = ws.audit(Filter::default()).await;
    assert!(settled(&rows));
    let state = sim.state();
    let twice: Vec<_> = state.update_calls.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "updates sent twice: {twice:?}");
    let applied = rows.iter().filter(|r| r.outcome == "applied").count();
    assert_eq!(applied, 200);
}

/// The daemon loop in this process (`daemon::run_until`), stopped by a future the test
/// completes: passes run on schedule, every case is changed once, and it exits 0 with
/// its passes finished.
#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_loop_runs_in_process_until_its_shutdown_future_completes() {
    let sim = start(sim_options(40)).await;
    let ws = Workspace::new(
        &sim.url,
        "legacy",
        &format!("{EVERY_SECOND}\nmax_change_fraction = 1.0"),
        Some(&[("tag.rhai", TAG_ALL)]),
    );
    let config = casewarden::config::Settings::load(&ws.config()).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(casewarden::daemon::run_until(
        config,
        async {
            let _ = stopped.await;
        },
        std::future::pending(),
    ));
    let done = wait_passes(&ws, 2, 20).await;
    assert!(done.iter().filter(|p| p.finished_at.is_some()).count() >= 2);
    stop.send(()).unwrap();
    let code = tokio::time::timeout(Duration::from_secs(30), daemon)
        .await
        .expect("the loop stops once its shutdown future completes")
        .unwrap()
        .unwrap();
    assert_eq!(code, 0);
    assert_eq!(changed_by_api(&sim, Some("tags")).len(), 40);
    let applied: Vec<_> = ws
        .audit(Filter {
            outcome: Some(casewarden::audit::Outcome::Applied),
            ..Filter::default()
        })
        .await
        .into_iter()
        .filter(|r| r.field != "summary")
        .collect();
    assert_eq!(
        applied.len(),
        40,
        "each case tagged once, by the first pass"
    );
    assert!(
        passes(&ws).await.iter().all(|p| p.finished_at.is_some()),
        "no pass left open"
    );
}

/// Lets this process (and the daemon it starts) hold as many descriptors as the hard limit
/// allows: the test opens hundreds of connections.
fn raise_descriptor_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max.min(8192);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The listener against hostile clients: 400 slow-loris connections held while `/healthz`
/// answers and passes keep their cadence; the held ones are closed after
/// `header_timeout_secs`; 200 concurrent page loads all answer 200 (the chain verified once
/// per head); `since` is capped.
#[tokio::test(flavor = "multi_thread")]
async fn the_listener_survives_hostile_clients_and_passes_keep_running() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    raise_descriptor_limit();
    let sim = start(sim_options(20)).await;
    let port = free_port();
    let ws = Workspace::new(
        &sim.url,
        "legacy",
        // Every other second: room for a pass on a busy two-core machine.
        &format!(
            "schedule = \"*/2 * * * * *\"\nlisten = \"127.0.0.1:{port}\"\nheader_timeout_secs = 3"
        ),
        Some(&[("tag.rhai", TAG_ALL)]),
    );
    let d = Daemon::start(&ws, &[]);
    assert!(!wait_passes(&ws, 1, 15).await.is_empty(), "{}", d.log());
    let mut held = Vec::new();
    for _ in 0..400 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        held.push(s);
    }
    let before = wait_passes(&ws, 0, 0).await.len();
    let probe = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let health = probe
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .expect("/healthz answers within 3 s while 400 slow clients are held");
    assert_eq!(health.status(), 200);
    let during = wait_passes(&ws, before + 2, 30).await;
    assert!(
        during.len() >= before + 2,
        "passes keep running: {}",
        d.log()
    );
    // The slow clients are cut off once their headers are late.
    let mut buf = [0u8; 256];
    let cut = tokio::time::timeout(Duration::from_secs(15), held[0].read(&mut buf)).await;
    assert!(
        matches!(cut, Ok(Ok(_)) | Ok(Err(_))),
        "a slow client is closed"
    );
    drop(held);
    let http = reqwest::Client::new();
    let loads = (0..200).map(|_| {
        let http = http.clone();
        async move {
            let r = http
                .get(format!("http://127.0.0.1:{port}/?since=30d"))
                .send()
                .await;
            r.map(|r| r.status().as_u16()).map_err(|e| e.to_string())
        }
    });
    let codes = futures::future::join_all(loads).await;
    assert!(codes.iter().all(|c| c == &Ok(200)), "{codes:?}");
    let far = http
        .get(format!("http://127.0.0.1:{port}/?since=36500d"))
        .send()
        .await
        .unwrap();
    assert_eq!(far.status(), 400);
    assert!(!d.log().contains("tick skipped"), "{}", d.log());
    d.signal(libc::SIGTERM);
    assert_eq!(d.exit_code(20).await, 0);
}
