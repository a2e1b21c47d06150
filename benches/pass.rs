//! One pass of casewarden against a hand-written async Python peer (`benches/peer/peer.py`,
//! asyncio + aiohttp, installed by this bench into `target/bench-venv` when missing), on
//! the same simulated population, alternately, in one run. Both apply the five rules of
//! `benches/peer/rules` (the peer mirrors them in Python); comments off.
//!
//! cargo bench --bench pass -- [CASES] [--rounds N] [--only casewarden|peer]
//!     [--instances K] [--tenants T] [--latency-ms MS]   (K simulators sharing the cases, as K `[[instance]]`
//!     blocks of one config, each with T customers; the peer only knows one server)
//!     [--against BINARY]   (an earlier build of casewarden, run alternately with this one
//!     on the same simulators and config, to measure a change)
//!
//! Each run gets a freshly started simulator (`casewarden simulate --cases N --seed 7`) so
//! both see the same cases, and makes three passes on it: the first, one right after it with
//! nothing changed by anyone else (casewarden keeps its mirror between the `once` processes;
//! the peer has none; casewarden evaluates again the cases its first pass changed), and a
//! settled one after that (casewarden counts every case from its remembered verdict). Printed per pass: wall time, the client's CPU seconds and peak RSS (from
//! wait4), the simulator's CPU seconds during the pass (/proc), the requests and bytes the
//! simulator served (`/sim/stats`), and how many cases it saw changed; then the medians and
//! their ratios.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "bench-key";
const USER: &str = "demo@example.com";

#[derive(Clone, Copy, PartialEq)]
enum Who {
    Casewarden,
    /// The binary given with `--against`.
    Earlier,
    Peer,
}

impl Who {
    fn name(self) -> &'static str {
        match self {
            Who::Casewarden => "casewarden once",
            Who::Earlier => "earlier build",
            Who::Peer => "async Python peer",
        }
    }
}

/// How the cases are served: over how many simulators (config instances), each with how
/// many customers. The peer talks to the first simulator only.
#[derive(Clone, Copy)]
struct Shape {
    instances: usize,
    tenants: usize,
    /// The simulator's answer latency (`simulate --latency-ms`), as a real server's.
    latency_ms: u64,
}

struct Run {
    wall: f64,
    cpu: f64,
    rss_mib: f64,
    sim_cpu: f64,
    changed: u64,
    requests: f64,
    mib: f64,
}

/// The passes of a run: the first, one right after it (casewarden evaluates again the cases
/// its first pass changed), and one after that (nothing changed since the one before).
#[derive(Clone, Copy, PartialEq)]
enum Pass {
    First,
    Unchanged,
    Settled,
}

impl Pass {
    const ALL: [Pass; 3] = [Pass::First, Pass::Unchanged, Pass::Settled];

    fn name(self) -> &'static str {
        match self {
            Pass::First => "first",
            Pass::Unchanged => "unchanged",
            Pass::Settled => "settled",
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let cases: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(100_000);
    let rounds: usize = value("--rounds").and_then(|r| r.parse().ok()).unwrap_or(3);
    let shape = Shape {
        instances: value("--instances")
            .and_then(|r| r.parse().ok())
            .unwrap_or(1)
            .max(1),
        tenants: value("--tenants")
            .and_then(|r| r.parse().ok())
            .unwrap_or(3)
            .max(1),
        latency_ms: value("--latency-ms")
            .and_then(|r| r.parse().ok())
            .unwrap_or(0),
    };
    let earlier = value("--against").map(PathBuf::from);
    let mut who: Vec<Who> = match value("--only").as_deref() {
        Some("casewarden") => vec![Who::Casewarden],
        Some("peer") => vec![Who::Peer],
        _ => vec![Who::Casewarden, Who::Peer],
    };
    if earlier.is_some() {
        who.insert(1, Who::Earlier);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = who.contains(&Who::Peer).then(|| venv(&root));
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("api_key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();

    println!(
        "one pass over {cases} simulated cases (seed 7) on {} simulator(s) with {} customers each, {} ms latency, 5 rules (benches/peer/rules), comments off, page size 500, {rounds} round(s)",
        shape.instances, shape.tenants, shape.latency_ms
    );
    let mut runs: Vec<(Who, Pass, Run)> = Vec::new();
    for round in 1..=rounds {
        for &w in &who {
            let binary = match w {
                Who::Earlier => earlier.clone(),
                _ => None,
            };
            let passes = one_run(
                w,
                cases,
                shape,
                &root,
                python.as_deref(),
                binary,
                dir.path(),
            );
            for (pass, run) in Pass::ALL.into_iter().zip(passes) {
                println!(
                    "  round {round} {:<18} {:<9} wall {:>7.2} s  client CPU {:>6.2} s  peak RSS {:>5.0} MiB  simulator CPU {:>6.2} s  requests {:>7}  {:>8.2} MiB  cases changed {}",
                    w.name(),
                    pass.name(),
                    run.wall,
                    run.cpu,
                    run.rss_mib,
                    run.sim_cpu,
                    run.requests,
                    run.mib,
                    run.changed
                );
                runs.push((w, pass, run));
            }
        }
    }
    let median = |w: Who, p: Pass, f: fn(&Run) -> f64| {
        let mut v: Vec<f64> = runs
            .iter()
            .filter(|(x, q, _)| *x == w && *q == p)
            .map(|(_, _, r)| f(r))
            .collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for pass in Pass::ALL {
        println!(
            "\n{} pass, medians | wall | client CPU | simulator CPU | client CPU / simulator CPU | peak RSS | requests | MiB served",
            pass.name()
        );
        for &w in &who {
            println!(
                "{} | {:.2} s | {:.2} s | {:.2} s | {:.2} | {:.0} MiB | {:.0} | {:.2}",
                w.name(),
                median(w, pass, |r| r.wall),
                median(w, pass, |r| r.cpu),
                median(w, pass, |r| r.sim_cpu),
                median(w, pass, |r| r.cpu) / median(w, pass, |r| r.sim_cpu).max(0.01),
                median(w, pass, |r| r.rss_mib),
                median(w, pass, |r| r.requests),
                median(w, pass, |r| r.mib),
            );
        }
        for other in [Who::Peer, Who::Earlier] {
            if who.contains(&other) && who.contains(&Who::Casewarden) {
                println!(
                    "{} / casewarden: wall {:.2}x, client CPU {:.2}x, simulator CPU {:.2}x, MiB {:.2}x",
                    other.name(),
                    median(other, pass, |r| r.wall) / median(Who::Casewarden, pass, |r| r.wall),
                    median(other, pass, |r| r.cpu) / median(Who::Casewarden, pass, |r| r.cpu),
                    median(other, pass, |r| r.sim_cpu)
                        / median(Who::Casewarden, pass, |r| r.sim_cpu).max(0.01),
                    median(other, pass, |r| r.mib) / median(Who::Casewarden, pass, |r| r.mib),
                );
            }
        }
    }
    if who.contains(&Who::Casewarden) {
        println!(
            "casewarden unchanged / first pass: MiB served {:.4}x, wall {:.2}x",
            median(Who::Casewarden, Pass::Unchanged, |r| r.mib)
                / median(Who::Casewarden, Pass::First, |r| r.mib),
            median(Who::Casewarden, Pass::Unchanged, |r| r.wall)
                / median(Who::Casewarden, Pass::First, |r| r.wall),
        );
    }
}

/// The peer's interpreter: `target/bench-venv` with aiohttp, made when missing.
fn venv(root: &Path) -> PathBuf {
    let dir = root.join("target/bench-venv");
    let python = dir.join("bin/python");
    let ready = |p: &Path| {
        Command::new(p)
            .args(["-c", "import aiohttp"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ready(&python) {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&dir)
            .status()
            .expect("python3 runs");
        assert!(made.success(), "python3 -m venv failed");
        let pip = Command::new(dir.join("bin/pip"))
            .args(["install", "--quiet", "aiohttp"])
            .status()
            .expect("pip runs");
        assert!(pip.success(), "pip install aiohttp failed");
    }
    python
}

/// Starts a simulator with `cases` cases over `tenants` customers; returns it and its URL.
fn simulator(cases: usize, shape: Shape, seed: usize) -> (Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sim = Command::new(env!("CARGO_BIN_EXE_casewarden"))
        .args([
            "simulate",
            "--quiet",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args(["--cases", &cases.to_string(), "--seed", &seed.to_string()])
        .args(["--tenants", &shape.tenants.to_string(), "--api-key", KEY])
        .args(["--latency-ms", &shape.latency_ms.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .expect("the simulator starts");
    let ready = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            ready.elapsed() < Duration::from_secs(600),
            "simulator did not come up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (sim, format!("http://127.0.0.1:{port}"))
}

/// One run of `who` against fresh simulators: `shape.instances` of them sharing the cases.
/// `binary`: the casewarden to run instead of this build's.
fn one_run(
    who: Who,
    cases: usize,
    shape: Shape,
    root: &Path,
    python: Option<&Path>,
    binary: Option<PathBuf>,
    dir: &Path,
) -> [Run; 3] {
    let mut sims: Vec<(Child, String)> = (0..shape.instances)
        .map(|i| simulator(cases / shape.instances, shape, 7 + i))
        .collect();
    let url = sims[0].1.clone();
    let mut command = match who {
        Who::Casewarden | Who::Earlier => {
            for file in ["audit.db", "audit.mirror.db"] {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(dir.join(format!("{file}{suffix}")));
                }
            }
            let servers: String = sims
                .iter()
                .enumerate()
                .map(|(i, (_, url))| {
                    format!(
                        "[[instance]]\nname = \"sim{i}\"\nurl = \"{url}\"\napi_flavor = \"legacy\"\nuser = \"{USER}\"\n\
                         api_key_file = \"api_key\"\npage_size = 500\ntimeout_secs = 120\n\n"
                    )
                })
                .collect();
            let config = dir.join("casewarden.toml");
            std::fs::write(
                &config,
                format!(
                    "{servers}[daemon]\nrules_dir = {}\nmax_changes_per_run = 10000000\n\
                     max_change_fraction = 1.0\ncomment_changes = false\npass_timeout_secs = 3600\n\n\
                     [audit]\npath = \"audit.db\"\n",
                    toml::Value::String(root.join("benches/peer/rules").display().to_string())
                ),
            )
            .unwrap();
            let mut c = Command::new(
                binary.unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_casewarden"))),
            );
            c.args(["once", "--quiet", "--config"])
                .arg(&config)
                .current_dir(dir);
            c
        }
        Who::Peer => {
            let mut c = Command::new(python.expect("the peer's venv"));
            c.arg(root.join("benches/peer/peer.py"))
                .args([&url, USER, KEY]);
            c
        }
    };
    let passes = Pass::ALL.map(|_| {
        let stats_before = sims.iter().map(|(_, url)| served(url)).fold((0, 0), add);
        let mut client = command
            .stdout(Stdio::null())
            .spawn()
            .expect("the client starts");
        let sim_before: f64 = sims.iter().map(|(s, _)| cpu_seconds(s.id())).sum();
        let start = Instant::now();
        let (ok, cpu, rss_kib) = wait_with_usage(&mut client);
        let wall = start.elapsed().as_secs_f64();
        let sim_cpu = sims.iter().map(|(s, _)| cpu_seconds(s.id())).sum::<f64>() - sim_before;
        assert!(ok, "{} failed", who.name());
        let stats_after = sims.iter().map(|(_, url)| served(url)).fold((0, 0), add);
        Run {
            wall,
            cpu,
            rss_mib: rss_kib as f64 / 1024.0,
            sim_cpu,
            changed: sims.iter().map(|(_, url)| changed_cases(url)).sum(),
            requests: (stats_after.0 - stats_before.0) as f64,
            mib: (stats_after.1 - stats_before.1) as f64 / (1024.0 * 1024.0),
        }
    });
    for (sim, _) in &mut sims {
        let _ = sim.kill();
        let _ = sim.wait();
    }
    passes
}

fn add(a: (u64, u64), b: (u64, u64)) -> (u64, u64) {
    (a.0 + b.0, a.1 + b.1)
}

/// Requests and bytes the simulator at `url` has served so far.
fn served(url: &str) -> (u64, u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let stats: serde_json::Value = reqwest::get(format!("{url}/sim/stats"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (
            stats["requests"].as_u64().unwrap_or(0),
            stats["bytes"].as_u64().unwrap_or(0),
        )
    })
}

/// (exited 0, user + system CPU seconds, peak RSS KiB) of a finished child.
fn wait_with_usage(child: &mut Child) -> (bool, f64, i64) {
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    let got = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(got, pid, "wait4");
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    (
        ok,
        secs(usage.ru_utime) + secs(usage.ru_stime),
        usage.ru_maxrss,
    )
}

/// A running process's user + system CPU seconds so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|x| x.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// How many cases the simulator shows modified by the API user (the changes either client
/// made), asked with a one-case listing.
fn changed_cases(url: &str) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        let token: serde_json::Value = http
            .post(format!("{url}/connect/api/v1/access_token"))
            .basic_auth(USER, Some(KEY))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let answer: serde_json::Value = http
            .get(format!("{url}/connect/api/v1/cases"))
            .query(&[("limit", "1"), ("modified_by", USER)])
            .bearer_auth(token["access_token"].as_str().unwrap_or_default())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer["data"]["total"].as_u64().unwrap_or(0)
    })
}
