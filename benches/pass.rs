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

use casewarden::app::App;
use casewarden::config::Config;
use casewarden::pass::{PassOptions, run_pass};

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
    // The same start-up as `casewarden once`: a config file, then App::build.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("api_key"), "bench-key\n").unwrap();
    let rules_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rules");
    let config = Config::parse(
        &format!(
            "[stellar]\nurl = \"http://127.0.0.1:{port}\"\napi_flavor = \"legacy\"\n\
             user = \"demo@example.com\"\napi_key_file = \"api_key\"\ntimeout_secs = 60\n\
             page_size = 500\nmax_attempts = 3\nretry_base_ms = 100\n\n\
             [daemon]\nrules_dir = {}\nmax_changes_per_run = 50000\npass_timeout_secs = 3600\n\n\
             [audit]\npath = \"audit.db\"\n",
            toml::Value::String(rules_dir.display().to_string())
        ),
        &dir.path().join("casewarden.toml"),
    )
    .unwrap();
    let App { rules: set, ctx } = App::build(&config, None).await.unwrap();
    let client = ctx.client.clone();

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
