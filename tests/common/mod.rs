//! Shared helpers: a simulator on a free port, clients and config files pointing at it,
//! and a runner for the real binary.

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;

use casewarden::audit::{AuditStore, EventRow, Filter};
use casewarden::config::ApiFlavor;
use casewarden::sim::{SimOptions, Simulator};
use casewarden::stellar::{Client, ClientSettings, credentials};

pub const USER: &str = "demo@example.com";
pub const KEY: &str = "test-key-Zq9xW2vB7";

pub fn sim_options(cases: usize) -> SimOptions {
    SimOptions {
        cases,
        seed: 42,
        api_key: KEY.into(),
        ..SimOptions::default()
    }
}

pub async fn start(opts: SimOptions) -> Simulator {
    Simulator::start(opts, "127.0.0.1:0".parse().unwrap(), None)
        .await
        .expect("simulator starts")
}

pub fn settings(sim: &Simulator) -> ClientSettings {
    ClientSettings {
        url: sim.url.clone(),
        flavor: Some(ApiFlavor::Legacy),
        credentials: credentials(Some(USER), KEY),
        ca_pem: None,
        insecure_skip_tls_verify: false,
        timeout: Duration::from_secs(5),
        page_size: 100,
        max_in_flight: 16,
        max_attempts: 4,
        retry_base: Duration::from_millis(20),
    }
}

pub fn client(sim: &Simulator) -> Client {
    Client::new(settings(sim)).unwrap()
}

/// A folder with a config (and rules) for the binary.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    /// Config pointing at `url`, with `extra` appended to `[daemon]`; the repo's example
    /// rules are copied in unless `rules` is given.
    pub fn new(
        url: &str,
        flavor: &str,
        daemon_extra: &str,
        rules: Option<&[(&str, &str)]>,
    ) -> Workspace {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("api_key"), format!("{KEY}\n")).unwrap();
        let config = format!(
            "[stellar]\nurl = \"{url}\"\napi_flavor = \"{flavor}\"\nuser = \"{USER}\"\napi_key_file = \"api_key\"\n\
             timeout_secs = 5\nmax_attempts = 3\nretry_base_ms = 20\n\n\
             [daemon]\nrules_dir = \"rules\"\n{daemon_extra}\n\n[audit]\npath = \"state/audit.db\"\n"
        );
        std::fs::write(dir.path().join("casewarden.toml"), config).unwrap();
        let rules_dir = dir.path().join("rules");
        std::fs::create_dir(&rules_dir).unwrap();
        match rules {
            Some(list) => {
                for (name, text) in list {
                    std::fs::write(rules_dir.join(name), text).unwrap();
                }
            }
            None => {
                for entry in std::fs::read_dir(repo().join("rules")).unwrap() {
                    let p = entry.unwrap().path();
                    if p.is_file() {
                        std::fs::copy(&p, rules_dir.join(p.file_name().unwrap())).unwrap();
                    }
                }
            }
        }
        Workspace { dir }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("casewarden.toml")
    }

    /// The mirror of the server the file holds, as the next `once` loads it.
    pub async fn loaded_mirror(&self) -> tokio::sync::OwnedMutexGuard<casewarden::mirror::Held> {
        let db = self.mirror_db().await;
        let (instance,): (String,) = sqlx::query_as("SELECT instance FROM mirror_sync")
            .fetch_one(&db)
            .await
            .unwrap();
        db.close().await;
        let file =
            casewarden::mirror::MirrorFile::open(&self.dir.path().join("state/audit.mirror.db"))
                .await
                .unwrap();
        casewarden::mirror::Mirror::new(Some(file), &instance)
            .lock()
            .await
    }

    /// The mirror's SQLite file beside the audit log, opened as an operator would.
    pub async fn mirror_db(&self) -> sqlx::SqlitePool {
        let file = self.dir.path().join("state/audit.mirror.db");
        sqlx::SqlitePool::connect(&format!("sqlite://{}", file.display()))
            .await
            .unwrap()
    }

    pub fn audit_db(&self) -> PathBuf {
        self.dir.path().join("state/audit.db")
    }

    /// Replaces `from` with `to` in the config file.
    pub fn edit_config(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(self.config()).unwrap();
        assert!(text.contains(from), "{from:?} is not in the config");
        std::fs::write(self.config(), text.replace(from, to)).unwrap();
    }

    /// The audit rows matching `filter`, oldest first.
    pub async fn audit(&self, filter: Filter) -> Vec<EventRow> {
        let store = AuditStore::open(&self.audit_db()).await.unwrap();
        let rows = store
            .query(&filter)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        store.close().await;
        rows
    }

    /// Runs the binary with `--config` set to this workspace's config.
    pub async fn run(&self, args: &[&str]) -> Output {
        let config = self.config();
        let mut full = vec!["--config", config.to_str().unwrap()];
        full.extend_from_slice(args);
        run_bin(&full, &[]).await
    }
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub async fn run_bin(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_casewarden"));
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env_remove("CASEWARDEN_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().await.expect("the binary runs")
}

/// Ids of the simulator's cases whose history holds a change made through the API (of
/// `field`, when given).
pub fn changed_by_api(sim: &Simulator, field: Option<&str>) -> std::collections::HashSet<String> {
    let s = sim.state();
    s.cases
        .iter()
        .map(|c| c["_id"].as_str().unwrap())
        .filter(|id| {
            s.api_changes(id)
                .iter()
                .any(|h| field.is_none_or(|f| h["field"] == f))
        })
        .map(str::to_string)
        .collect()
}

/// The binary exited with `code`; otherwise fail showing everything it printed.
pub fn assert_exit(o: &Output, code: i32) {
    assert_eq!(o.status.code(), Some(code), "{}\n{}", stdout(o), stderr(o));
}

/// The binary exited with `code` and said `message` on stderr.
pub fn assert_fails_with(o: &Output, code: i32, message: &str) {
    assert_eq!(o.status.code(), Some(code), "{}", stderr(o));
    assert!(stderr(o).contains(message), "{}", stderr(o));
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Lists every case through the client, page by page.
pub async fn list_all(
    client: &Client,
    filters: Vec<(String, String)>,
) -> Result<Vec<casewarden::stellar::Case>, casewarden::stellar::ApiError> {
    let mut pager = client.list_cases(filters);
    let mut out = Vec::new();
    while let Some(page) = pager.next_page().await? {
        out.extend(page.cases);
    }
    Ok(out)
}

/// A daemon schedule that runs a pass every second.
pub const EVERY_SECOND: &str = "schedule = \"* * * * * *\"";

/// `casewarden run` as a child process, its log in a file of the workspace.
pub struct Daemon {
    child: tokio::process::Child,
    log: std::path::PathBuf,
}

impl Daemon {
    pub fn start(ws: &Workspace, env: &[(&str, &str)]) -> Daemon {
        let log = ws
            .dir
            .path()
            .join(format!("daemon-{}.log", fastrand::u32(..)));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_casewarden"));
        cmd.args(["--config", ws.config().to_str().unwrap(), "run"])
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Daemon {
            child: cmd.spawn().unwrap(),
            log,
        }
    }

    pub fn pid(&self) -> i64 {
        i64::from(self.child.id().unwrap())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        let pid = self.child.id().unwrap() as i32;
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    pub async fn wait_log(&self, needle: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{needle:?} not logged within {secs}s:\n{}", self.log());
    }

    pub async fn exit_code(mut self, secs: u64) -> i32 {
        tokio::time::timeout(Duration::from_secs(secs), self.child.wait())
            .await
            .expect("the daemon exits in time")
            .unwrap()
            .code()
            .unwrap_or(-1)
    }
}

pub async fn until<F: FnMut() -> bool>(secs: u64, mut f: F) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The rows about cases: without the chained rows of passes' starts and ends.
pub fn changes(rows: Vec<EventRow>) -> Vec<EventRow> {
    rows.into_iter().filter(|r| r.field != "pass").collect()
}
