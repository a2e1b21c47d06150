//! `casewarden audit` and `audit verify`: reading the log, never writing it.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use futures::StreamExt;

use super::exit::Exit;
use super::{Cli, load_config};
use crate::audit::export::{Format, Printer, parse_time};
use crate::audit::key::ChainKeys;
use crate::audit::{AuditStore, Copied, Filter, GENESIS, Keyed, Outcome, Verification};
use crate::config::Settings;
use crate::secret::Secret;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub verify: Option<AuditCommand>,
    #[command(flatten)]
    pub query: AuditQuery,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the log: every row's hash (a keyed MAC with audit.chain_key_file), the passes
    /// recorded in the chain, and the heads of --heads; exit 0 intact, 1 naming the first
    /// break (or NOT PROVEN: keyed rows whose key was not given)
    Verify {
        /// Fail unless the newest row's hash is this (catches truncation)
        #[arg(long, value_name = "HASH")]
        expect_head: Option<String>,
        /// Check every head recorded in this file (`audit.head_file`: one line per pass,
        /// `... head HASH`) is a row of the chain: rows cut from the end, or a replaced
        /// log, are caught [default: audit.head_file of the config, when set]
        #[arg(long, value_name = "FILE")]
        heads: Option<PathBuf>,
        /// The audit log: a SQLite file or a postgres:// URL [default: audit.url, else
        /// audit.path, from the config]
        #[arg(long, value_name = "PATH")]
        db: Option<PathBuf>,
    },
    /// Show one row (by its seq, the first column of `casewarden audit`) and the text of
    /// the rule file that made it, as the pass ran it, checked against the row's rule hash
    Show {
        /// The row's seq
        #[arg(value_name = "ID")]
        seq: i64,
        /// The audit log: a SQLite file or a postgres:// URL [default: audit.url, else
        /// audit.path, from the config]
        #[arg(long, value_name = "PATH")]
        db: Option<PathBuf>,
    },
    /// Copy a SQLite log into PostgreSQL (for replicas): every row as it is, then both
    /// chains verified to the same head; an interrupted copy resumes. Stop the daemon first
    Migrate {
        /// The PostgreSQL database: postgres://user@host[:port]/db (no password in it)
        #[arg(long, value_name = "URL")]
        to: String,
        /// File holding the PostgreSQL password [default: audit.password_file, the systemd
        /// credential audit_password, PGPASSWORD or ~/.pgpass]
        #[arg(long, value_name = "PATH")]
        password_file: Option<PathBuf>,
        /// The SQLite file to copy [default: audit.path from the config]
        #[arg(long, value_name = "PATH")]
        db: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct AuditQuery {
    /// Only this case id
    #[arg(long = "case", value_name = "ID")]
    pub case_id: Option<String>,
    /// Only this ticket number
    #[arg(long)]
    pub ticket: Option<i64>,
    /// Only this rule
    #[arg(long)]
    pub rule: Option<String>,
    /// From this time: RFC 3339 or a duration back from now (30m, 24h, 7d)
    #[arg(long, value_name = "T")]
    pub since: Option<String>,
    /// Up to this time: RFC 3339 or a duration back from now
    #[arg(long, value_name = "T")]
    pub until: Option<String>,
    /// Only rows with this outcome: planned, applied, failed, skipped, unknown
    #[arg(long, value_name = "O")]
    pub outcome: Option<Outcome>,
    /// Only rows of this pass (run_id)
    #[arg(long = "pass", value_name = "RUN_ID")]
    pub run_id: Option<String>,
    /// Only rows about cases of this customer (its cust_id)
    #[arg(long, value_name = "ID")]
    pub tenant: Option<String>,
    /// Only rows about cases on this server (an `[[instance]]` name, `default` for
    /// `[stellar]`)
    #[arg(long, value_name = "NAME")]
    pub instance: Option<String>,
    /// At most this many rows (the oldest, or with --newest the newest)
    #[arg(long)]
    pub limit: Option<i64>,
    /// Newest rows first
    #[arg(long)]
    pub newest: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// The audit log: a SQLite file or a postgres:// URL [default: audit.url, else
    /// audit.path, from the config]
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,
}

pub(super) async fn open_audit(cli: &Cli, db: &Option<PathBuf>) -> anyhow::Result<AuditStore> {
    let url = |p: &PathBuf| {
        p.to_str()
            .filter(|s| s.starts_with("postgres://") || s.starts_with("postgresql://"))
            .map(str::to_string)
    };
    let (path, url, config) = match db {
        // A log named with --db still takes the config's chain keys, when there is one.
        Some(p) => (p.clone(), url(p), load_config(cli).ok()),
        None => {
            let config = load_config(cli)?;
            (
                config.audit.path.clone(),
                config.audit.url.clone(),
                Some(config),
            )
        }
    };
    if let Some(url) = url {
        crate::config::check_postgres_url(&url).map_err(|e| Exit::config(format!("--db: {e}")))?;
        // A URL given with --db takes the password the config names, if there is one.
        let password = match &config {
            Some(c) => c.audit.password()?,
            None => None,
        };
        return Ok(AuditStore::open_postgres_read_only(
            &url,
            password.as_ref().map(crate::secret::Secret::expose),
        )
        .await?
        .with_chain_keys(chain_keys(config.as_ref())?));
    }
    if !path.exists() {
        anyhow::bail!(
            "audit DB {} does not exist (no pass has run with this config yet?)",
            path.display()
        );
    }
    // Reading the log never writes to it: an auditor's copy may be read-only.
    Ok(AuditStore::open_read_only(&path)
        .await?
        .with_chain_keys(chain_keys(config.as_ref())?))
}

/// The config's chain keys (`audit.chain_key_file`), to verify a keyed chain with.
fn chain_keys(config: Option<&Settings>) -> anyhow::Result<Option<ChainKeys>> {
    let Some(c) = config else {
        return Ok(None);
    };
    Ok(ChainKeys::new(&c.audit.chain_keys().map_err(Exit::config)?))
}

/// `audit migrate`: the SQLite log, held against writers, copied into PostgreSQL.
async fn migrate(
    cli: &Cli,
    to: &str,
    password_file: &Option<PathBuf>,
    db: &Option<PathBuf>,
) -> anyhow::Result<u8> {
    crate::config::check_postgres_url(to).map_err(|e| Exit::config(format!("--to: {e}")))?;
    let (path, password) = migrate_source(cli, password_file, db)?;
    let config = load_config(cli).ok();
    let source = AuditStore::open(&path)
        .await?
        .with_chain_keys(chain_keys(config.as_ref())?);
    // No pass may write the file while it is copied.
    let claim = source
        .claim(std::time::Duration::ZERO)
        .await
        .map_err(|e| anyhow::anyhow!("{e}; stop the daemon before moving its log"))?;
    let target = AuditStore::open_postgres(to, password.as_ref().map(|p| p.expose()))
        .await?
        .with_chain_keys(chain_keys(config.as_ref())?);
    let bar = super::progress::spinner("copying rows");
    let copied = source
        .copy_into(&target, |n| bar.set_message(format!("{n} row(s) copied")))
        .await;
    bar.finish_and_clear();
    claim.release().await;
    print_copied(&copied?, &path, &target.location());
    Ok(0)
}

/// The SQLite file to copy and the PostgreSQL password: the flags', else the config's.
fn migrate_source(
    cli: &Cli,
    password_file: &Option<PathBuf>,
    db: &Option<PathBuf>,
) -> anyhow::Result<(PathBuf, Option<Secret>)> {
    let config = if db.is_none() || password_file.is_none() {
        Some(load_config(cli)?)
    } else {
        None
    };
    let path = match (db, &config) {
        (Some(p), _) => p.clone(),
        (None, Some(c)) => c.audit.path.clone(),
        (None, None) => unreachable!("the config is read when --db is not given"),
    };
    if !path.is_file() {
        return Err(Exit::config(format!("audit DB {} does not exist", path.display())).into());
    }
    let password = match (password_file, &config) {
        (Some(f), _) => Some(
            crate::config::read_password_file(f)
                .map_err(|e| Exit::config(format!("--password-file {e}")))?,
        ),
        (None, Some(c)) => c.audit.password()?,
        (None, None) => None,
    };
    Ok((path, password))
}

fn print_copied(copied: &Copied, path: &Path, target: &str) {
    if copied.continued > 0 {
        println!(
            "nothing to copy: {target} already holds all {} row(s) of {}, and {} row(s) written there since; it verifies ({} row(s))",
            copied.already,
            path.display(),
            copied.continued,
            copied.total
        );
        return;
    }
    println!(
        "copied {} row(s) and {} pass(es) from {} into {target}{}",
        copied.rows,
        copied.passes,
        path.display(),
        if copied.already > 0 {
            format!(" (it held the first {} already)", copied.already)
        } else {
            String::new()
        }
    );
    println!(
        "ok: the PostgreSQL log verifies: {} row(s), head {} (the same head as the file)",
        copied.total, copied.head
    );
    println!(
        "next: set audit.url = \"{target}\" in the config of every replica (audit.path is then unused) and keep the file as evidence"
    );
}

pub(super) async fn run(cli: &Cli, args: &AuditArgs) -> anyhow::Result<u8> {
    match &args.verify {
        Some(AuditCommand::Migrate {
            to,
            password_file,
            db,
        }) => migrate(cli, to, password_file, db).await,
        Some(AuditCommand::Verify {
            expect_head,
            heads,
            db,
        }) => verify(cli, expect_head.as_deref(), heads, db).await,
        Some(AuditCommand::Show { seq, db }) => show(cli, *seq, db).await,
        None => query(cli, &args.query).await,
    }
}

/// `audit verify`: exit 0 when the chain is intact (and holds `--expect-head` and every
/// head of the head file), else 1.
async fn verify(
    cli: &Cli,
    expect_head: Option<&str>,
    heads: &Option<PathBuf>,
    db: &Option<PathBuf>,
) -> anyhow::Result<u8> {
    let store = open_audit(cli, db).await?;
    let heads = match (heads, db) {
        (Some(f), _) => Some(f.clone()),
        (None, None) => load_config(cli)
            .ok()
            .and_then(|c| c.audit.head_file)
            .filter(|f| f.exists()),
        (None, Some(_)) => None,
    };
    Ok(match store.verify().await? {
        Verification::Intact { rows, head, keyed } => {
            if let Some(file) = &heads {
                let code = saved_heads(&store, rows, &head, file).await?;
                if code != 0 || expect_head.is_none() {
                    return Ok(code.max(print_keyed(&keyed)));
                }
            }
            let code = match expect_head {
                // A head saved earlier is any row of the chain: the log grows after it.
                Some(expected) if !head.eq_ignore_ascii_case(expected) => {
                    expected_head(&store, rows, &head, expected).await?
                }
                Some(_) => {
                    println!("ok: {rows} row(s), hash chain intact, head {head}");
                    0
                }
                None => {
                    println!("ok: {rows} row(s), hash chain intact, head {head}");
                    println!(
                        "note: rows cut from the end of the log cannot be detected without a saved head: set audit.head_file (every pass appends its head there; keep it apart from the log) and run `casewarden audit verify --heads FILE`, or keep the head above and pass it with --expect-head next time"
                    );
                    0
                }
            };
            code.max(print_keyed(&keyed))
        }
        Verification::BrokenPass { id, problem } => {
            println!("BROKEN: pass {id}: {problem}");
            1
        }
        Verification::Broken {
            seq,
            rows_checked,
            problem,
        } => {
            println!("BROKEN at row {seq} (after {rows_checked} good row(s)): {problem}");
            1
        }
    })
}

/// Says what the chain's keys proved; 1 when keyed rows could not be checked (no key).
fn print_keyed(keyed: &Keyed) -> u8 {
    match keyed {
        Keyed::No => {
            println!(
                "proved: every row is linked to the one before and unedited since it was hashed; the chain is not keyed, so someone who can write the database could rebuild it (set audit.chain_key_file)"
            );
            0
        }
        Keyed::Proven { from } => {
            println!(
                "proved with the chain key: rows from {from} on were written by a holder of the key, and no row before them was changed since"
            );
            0
        }
        Keyed::Unproven { from, rows, key } => {
            println!(
                "NOT PROVEN: {rows} row(s) from {from} on are keyed with key id {key}, which audit.chain_key_file does not hold: their links were checked, not their content"
            );
            1
        }
    }
}

/// Every head a head file recorded must be a row of the intact chain: a missing one means
/// rows were cut from the end (or the log replaced) after that pass.
async fn saved_heads(store: &AuditStore, rows: u64, head: &str, file: &Path) -> anyhow::Result<u8> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Exit::config(format!("--heads {}: {e}", file.display())))?;
    let mut checked = 0;
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let hash = line.rsplit(' ').next().unwrap_or("").trim();
        let valid = hash.len() == 64 && hash.chars().all(|c| c.is_ascii_hexdigit());
        if !valid {
            return Err(Exit::config(format!(
                "{}:{}: not a head line (`... head HASH`, or a bare 64-hex hash)",
                file.display(),
                n + 1
            ))
            .into());
        }
        if hash == GENESIS {
            continue;
        }
        if store.seq_of_hash(hash).await?.is_none() {
            println!(
                "BROKEN: {}:{} records head {hash}, which is no row of the chain (intact over {rows} row(s), head {head}): rows were cut from the end or the log was replaced after it",
                file.display(),
                n + 1
            );
            return Ok(1);
        }
        checked += 1;
    }
    println!(
        "ok: {rows} row(s), hash chain intact, head {head}; all {checked} head(s) of {} are rows of the chain",
        file.display()
    );
    Ok(0)
}

/// An intact chain whose head is not the expected hash: fine when that hash is an older
/// row, broken when no row has it.
async fn expected_head(
    store: &AuditStore,
    rows: u64,
    head: &str,
    expected: &str,
) -> anyhow::Result<u8> {
    let Some(seq) = store.seq_of_hash(expected).await? else {
        println!(
            "BROKEN: the chain is intact over {rows} row(s) but its head is {head}, not the expected {expected}, and no row has that hash: rows were removed or the log was replaced"
        );
        return Ok(1);
    };
    let since = rows.saturating_sub(seq as u64);
    println!(
        "ok: {rows} row(s), hash chain intact, head {head}; the expected hash is row {seq}, {since} row(s) appended since"
    );
    Ok(0)
}

/// `audit show ID`: the row, then the rule text behind it. Exit 1 when no row has that
/// seq or the kept text no longer hashes to the row's rule hash.
async fn show(cli: &Cli, seq: i64, db: &Option<PathBuf>) -> anyhow::Result<u8> {
    let store = open_audit(cli, db).await?;
    let Some(row) = store.event(seq).await? else {
        eprintln!("error: no row {seq} in the audit log");
        return Ok(1);
    };
    let safe = crate::text::for_terminal;
    let opt = |v: &Option<String>| {
        v.as_deref()
            .map_or("-".to_string(), |t| safe(t).into_owned())
    };
    println!(
        "row {} of pass {}, recorded {}",
        row.seq, row.run_id, row.recorded_at
    );
    println!("  rule      {}", safe(&row.rule));
    println!(
        "  case      {} (ticket {})",
        safe(&row.case_id),
        row.ticket_id.map_or("-".into(), |t| t.to_string())
    );
    println!(
        "  field     {}: {} -> {}",
        safe(&row.field),
        opt(&row.old),
        opt(&row.new)
    );
    println!(
        "  outcome   {}{}",
        row.outcome,
        if row.dry_run { " (dry run)" } else { "" }
    );
    println!("  reason    {}", safe(&row.reason));
    if let Some(e) = &row.error {
        println!("  error     {}", safe(e));
    }
    println!(
        "  rule hash {}",
        if row.rule_hash.is_empty() {
            "-"
        } else {
            &row.rule_hash
        }
    );
    println!();
    let Some(text) = store.rule_text(&row.rule_hash).await? else {
        println!(
            "no rule text is kept for this row: {}",
            if row.rule_hash.is_empty() {
                "it was made by a command or by casewarden itself, not by a rule file"
            } else {
                "the row is older than the log's rule texts (casewarden keeps them since this version)"
            }
        );
        return Ok(0);
    };
    if !text.matches_hash() {
        println!(
            "BROKEN: the rule text kept for hash {} does not hash to it: the text was altered",
            row.rule_hash
        );
        return Ok(1);
    }
    println!(
        "rule text of {} ({}), first run {}; its SHA-256 is the hash in the chained row:",
        safe(&text.rule),
        safe(&text.file),
        text.recorded_at
    );
    println!("{}", "-".repeat(72));
    // Line by line, so only what could rewrite the screen is escaped, not the layout.
    for line in text.text.replace('\t', "    ").lines() {
        println!("{}", safe(line));
    }
    println!("{}", "-".repeat(72));
    Ok(0)
}

/// `audit` with filters: the rows, printed as they stream.
async fn query(cli: &Cli, q: &AuditQuery) -> anyhow::Result<u8> {
    let filter = q.filter()?;
    let store = open_audit(cli, &q.db).await?;
    let stdout = std::io::stdout();
    let mut printer = Printer::new(q.format, std::io::BufWriter::new(stdout.lock()))?
        .with_emails(store.user_emails().await?);
    let mut rows = std::pin::pin!(store.query(&filter));
    while let Some(row) = rows.next().await {
        match printer.row(&row?) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(0),
            other => other?,
        }
    }
    printer.finish()?;
    Ok(0)
}

impl AuditQuery {
    fn filter(&self) -> anyhow::Result<Filter> {
        let time = |flag: &str, t: &Option<String>| {
            t.as_deref()
                .map(parse_time)
                .transpose()
                .map_err(|e| anyhow::anyhow!("{flag}: {e}"))
        };
        Ok(Filter {
            case_id: self.case_id.clone(),
            ticket_id: self.ticket,
            rule: self.rule.clone(),
            since: time("--since", &self.since)?,
            until: time("--until", &self.until)?,
            outcome: self.outcome,
            newest: self.newest,
            run_id: self.run_id.clone(),
            tenant: self.tenant.clone(),
            instance: self.instance.clone(),
            limit: self.limit,
            offset: None,
        })
    }
}
