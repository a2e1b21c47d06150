//! One pass of the example rules over N simulated cases (the simulator runs as a separate
//! process, so the RSS below is casewarden's alone). Baseline: a plain listing of the same
//! cases through the client, in the same run.
//!
//! cargo bench --bench pass -- 100000 [RULE...]   (N defaults to 10000; RULEs default to
//! every example rule)

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use casewarden::audit::AuditStore;
use casewarden::config::ApiFlavor;
use casewarden::pass::{PassContext, PassOptions, PassSettings, run_pass};
use casewarden::rules::RuleSet;
use casewarden::stellar::{Client, ClientSettings, credentials};

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let cases: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(10_000);
    let only: Vec<String> = args
        .iter()
        .filter(|a| a.parse::<usize>().is_err())
        .cloned()
        .collect();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut sim = Command::new(env!("CARGO_BIN_EXE_casewarden"))
        .args([
            "simulate",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--cases",
            &cases.to_string(),
            "--seed",
            "7",
            "--api-key",
            "bench-key",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("the simulator starts");
    let ready = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            ready.elapsed() < Duration::from_secs(300),
            "simulator did not come up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = Client::new(ClientSettings {
        url: format!("http://127.0.0.1:{port}"),
        flavor: Some(ApiFlavor::Legacy),
        credentials: credentials(Some("demo@example.com"), "bench-key"),
        ca_pem: None,
        insecure_skip_tls_verify: false,
        timeout: Duration::from_secs(60),
        page_size: 500,
        max_attempts: 3,
        retry_base: Duration::from_millis(100),
    })
    .unwrap();

    let start = Instant::now();
    let mut pager = client.list_cases(vec![
        ("sort".into(), "modified_at".into()),
        ("order".into(), "asc".into()),
    ]);
    let mut listed = 0;
    while let Some(page) = pager.next_page().await.unwrap() {
        listed += page.cases.len();
    }
    let list_time = start.elapsed();
    let rss_listing = support::peak_rss_kb();

    let dir = tempfile::tempdir().unwrap();
    let ctx = PassContext {
        client,
        audit: AuditStore::open(&dir.path().join("audit.db"))
            .await
            .unwrap(),
        settings: PassSettings {
            dry_run: false,
            max_changes: 50_000,
            comment_changes: true,
            max_change_fraction: 0.25,
            guard_min_cases: 40,
            max_in_flight: 8,
            settle_after: casewarden::pass::settle_after(Duration::from_secs(60)),
            pass_timeout: Duration::from_secs(3600),
            limits: Default::default(),
        },
    };
    let set = RuleSet::load_dir(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rules")).unwrap();
    let start = Instant::now();
    let report = run_pass(
        &ctx,
        &set,
        &PassOptions {
            trigger: "bench".into(),
            only: only.clone(),
            ..PassOptions::default()
        },
    )
    .await;
    let pass_time = start.elapsed();
    let changed = report.plans.iter().filter(|p| p.has_work()).count();
    let _ = sim.kill();
    let _ = sim.wait();

    let rules = if only.is_empty() {
        "all example rules".to_string()
    } else {
        only.join(", ")
    };
    println!(
        "one pass, {cases} simulated cases, {rules}, page size 500, max_in_flight 8, budget 50000:"
    );
    println!(
        "  baseline listing only:  {:>8.2} s  ({listed} cases; peak RSS {} MiB)",
        list_time.as_secs_f64(),
        rss_listing / 1024
    );
    println!(
        "  full pass:              {:>8.2} s  ({} seen, {changed} cases changed = {:.1}%, {} changes applied, {} failed, {} deferred; status {})",
        pass_time.as_secs_f64(),
        report.cases_seen,
        100.0 * changed as f64 / report.cases_seen.max(1) as f64,
        report.applied,
        report.failed,
        report.deferred_changes,
        report.status
    );
    println!(
        "  ratio pass/listing:     {:>8.2}",
        pass_time.as_secs_f64() / list_time.as_secs_f64()
    );
    println!(
        "  peak RSS after pass:    {:>8} MiB",
        support::peak_rss_kb() / 1024
    );
}

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
