//! The mirror's file: a SQLite database beside the audit log. Each merged page of a delta
//! (and each pass's own writes) is one segment (its cases as records, and their texts as
//! the blocks the mirror holds in memory) written with the sync row in one transaction, so
//! a crash leaves cases and checkpoint in step; a row per case cost more than the rest of a
//! first pass's listing. One task encodes and writes them, in order, while the pass goes
//! on; a pass waits for it only at its end. Loading replays the segments in order, keeping
//! the blocks packed. The verdicts a pass reached (see `Verdict`) are one segment more,
//! applied on load to the versions they are of. A full listing writes the file whole when
//! it ends (until then the file holds the mirror as it was before it), as does a mirror
//! whose segments hold more than twice its cases and verdicts. One process writes at a
//! time: the passes that write it hold the audit log's claim.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::TryStreamExt;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};
use tokio::sync::{mpsc, oneshot};

use super::block::{Block, Body};
use super::{Cases, Sync, Verdict};

/// The open file, shared by every server's mirror.
#[derive(Clone, Debug)]
pub struct MirrorFile {
    pool: SqlitePool,
    pub path: PathBuf,
    jobs: mpsc::Sender<Job>,
    /// A write failed: the file is left for the rest of the process.
    failed: Arc<AtomicBool>,
}

/// Why a server's mirror cannot be read from the file.
#[derive(Debug, thiserror::Error)]
pub(super) enum LoadError {
    #[error("{0}")]
    Database(String),
    /// What the file holds cannot be read: it is cleared for a full listing.
    #[error("{0}")]
    Damaged(String),
}

enum Job {
    Write {
        instance: String,
        what: Write,
        sync: Sync,
    },
    Flush(oneshot::Sender<()>),
}

/// Writes a pass may run ahead of the writer by (a page's segment each, while it lists).
const QUEUED: usize = 8;

#[derive(sqlx::FromRow)]
struct SyncRow {
    scope: String,
    generation: i64,
    checkpoint_ms: Option<i64>,
    last_full_ms: Option<i64>,
    relist: Option<String>,
}

/// Cases per segment when the mirror is rewritten whole (the largest page a server lists).
pub(super) const CASES_PER_SEGMENT: usize = 500;

/// The records of one segment, in order; encoded off the pass's thread: the records
/// LZ4-compressed (their size first), that block's length (u32 LE) before it, then the
/// blocks of the texts, each its length (u32 LE) and its bytes. The records: a format
/// byte, then per record its kind; for a block of texts, their count (u32 LE) and each
/// one's length (u32 LE) and XXH3 hash (u64 LE), its puts following; for a put the
/// generation and `modified_at` (i64 LE) and the id (a u32 LE length and UTF-8); for a
/// removal the id; for a verdict `modified_at`, key, at, until, due, seen, exempt (64 bits
/// LE each), the id and the tenant (a byte 1 and its text, or 0).
#[derive(Default)]
pub(super) struct Segment {
    records: Vec<Record>,
    /// Case versions and verdicts stored (removals not counted).
    pub puts: usize,
    /// The encoded bytes, once [`Segment::compress`]ed.
    bytes: Vec<u8>,
}

enum Record {
    /// id, `modified_at`, the full listing that last saw it, the text: shared with the
    /// mirror, not copied.
    Put(Arc<str>, i64, i64, Body),
    Remove(Box<str>),
    /// id, `modified_at` of the version it is of, what the rules made of it.
    Verdict(Arc<str>, i64, Verdict),
}

/// The layout above, should it ever change.
const FORMAT: u8 = 2;
const BLOCK: u8 = b'B';
const PUT: u8 = b'P';
const REMOVE: u8 = b'R';
const VERDICT: u8 = b'V';

impl Segment {
    /// A case's version: `id`, `modified_at`, the full listing that last saw it, its text.
    pub fn put(&mut self, id: Arc<str>, modified_at: i64, generation: i64, body: Body) {
        self.records
            .push(Record::Put(id, modified_at, generation, body));
        self.puts += 1;
    }

    /// The case left the mirror.
    pub fn remove(&mut self, id: &str) {
        self.records.push(Record::Remove(id.into()));
    }

    /// What the rules made of the case's version of `modified_at`.
    pub fn verdict(&mut self, id: Arc<str>, modified_at: i64, verdict: Verdict) {
        self.records.push(Record::Verdict(id, modified_at, verdict));
        self.puts += 1;
    }

    /// Encoded for the file: a run of puts that is a whole block in order (a merged page)
    /// keeps that block's bytes; other runs are packed anew. Err: a text cannot be read
    /// (the write fails whole, leaving the file as it was).
    fn compress(&mut self) -> Result<(), String> {
        if self.records.is_empty() {
            return Ok(());
        }
        let mut index = vec![FORMAT];
        let mut blocks: Vec<Arc<Block>> = Vec::new();
        let records = std::mem::take(&mut self.records);
        for run in records.chunk_by(|a, b| matches!((a, b), (Record::Put(..), Record::Put(..)))) {
            let Record::Put(..) = run[0] else {
                run.iter().for_each(|r| encode(&mut index, r));
                continue;
            };
            let puts = run.chunk_by(|a, b| match (a, b) {
                (Record::Put(_, _, _, a), Record::Put(_, _, _, b)) => a.in_block_of(b),
                _ => false,
            });
            for puts in puts {
                let bodies: Vec<&Body> = (puts.iter())
                    .filter_map(|r| match r {
                        Record::Put(_, _, _, body) => Some(body),
                        _ => None,
                    })
                    .collect();
                let block = Block::holding(&bodies).ok_or("a case of the mirror is damaged")?;
                index.push(BLOCK);
                put_u32(&mut index, block.len());
                for (len, hash) in block.texts() {
                    index.extend_from_slice(&len.to_le_bytes());
                    index.extend_from_slice(&hash.to_le_bytes());
                }
                puts.iter().for_each(|r| encode(&mut index, r));
                blocks.push(block);
            }
        }
        let index = lz4_flex::compress_prepend_size(&index);
        let mut out = Vec::with_capacity(
            index.len() + 4 + blocks.iter().map(|b| b.packed().len() + 4).sum::<usize>(),
        );
        put_u32(&mut out, index.len());
        out.extend_from_slice(&index);
        for block in &blocks {
            put_u32(&mut out, block.packed().len());
            out.extend_from_slice(block.packed());
        }
        self.bytes = out;
        Ok(())
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Replays a stored segment's records onto `cases`, its blocks kept packed; how many
    /// case versions and verdicts it stored. Err: why the segment cannot be read.
    fn replay(stored: &[u8], cases: &mut Cases) -> Result<usize, String> {
        let mut blob = Reader { bytes: stored };
        let index = blob.bytes()?;
        // LZ4 expands at most 255-fold: a larger size is damage, not worth allocating.
        let size = index
            .first_chunk::<4>()
            .map(|s| u32::from_le_bytes(*s) as usize);
        if size.is_none_or(|size| size > index.len().saturating_mul(255)) {
            return Err("a segment's size is damaged".into());
        }
        let index = lz4_flex::decompress_size_prepended(index)
            .map_err(|e| format!("a segment does not decompress ({e})"))?;
        let mut read = Reader { bytes: &index };
        match read.take(1) {
            Some([FORMAT]) => {}
            other => return Err(format!("a segment of an unknown format {other:?}")),
        }
        let mut texts = Vec::new().into_iter();
        let mut puts = 0;
        while let Some(kind) = read.take(1) {
            match kind[0] {
                BLOCK => {
                    if texts.len() > 0 {
                        return Err("a block holds more texts than puts".into());
                    }
                    let count = read.length()?;
                    let stored =
                        (0..count).map(|_| Ok((read.length()? as u32, read.number()? as u64)));
                    let stored = stored.collect::<Result<Vec<_>, String>>()?;
                    texts = Block::stored(blob.bytes()?, &stored)?.into_iter();
                }
                PUT => {
                    let generation = read.number()?;
                    let modified_at = read.number()?;
                    let id = read.text()?;
                    let body = texts.next().ok_or("a put without its text")?;
                    cases.replay(id, modified_at, generation, body);
                    puts += 1;
                }
                REMOVE => {
                    cases.remove(read.text()?);
                }
                VERDICT => {
                    let modified_at = read.number()?;
                    let [key, at, until, due, seen, exempt] = [(); 6].map(|_| read.number());
                    let id = read.text()?;
                    let tenant = match read.take(1) {
                        Some([0]) => None,
                        Some([1]) => Some(cases.tenant(read.text()?)),
                        _ => return Err("a verdict's tenant is damaged".into()),
                    };
                    let verdict = Verdict {
                        key: key? as u64,
                        at: at?,
                        until: until?,
                        tenant,
                        due: due? as u64,
                        seen: seen? as u64,
                        exempt: exempt? as u64,
                    };
                    cases.recall(id, modified_at, verdict);
                    puts += 1;
                }
                other => return Err(format!("a record of unknown kind {other}")),
            }
        }
        if texts.len() > 0 {
            return Err("a block holds more texts than puts".into());
        }
        Ok(puts)
    }
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    let n = u32::try_from(n).expect("a segment is under 4 GiB");
    out.extend_from_slice(&n.to_le_bytes());
}

/// A record's fields (a put's text is in its block).
fn encode(out: &mut Vec<u8>, record: &Record) {
    let text = |out: &mut Vec<u8>, text: &str| {
        put_u32(out, text.len());
        out.extend_from_slice(text.as_bytes());
    };
    match record {
        Record::Put(id, modified_at, generation, _) => {
            out.push(PUT);
            out.extend_from_slice(&generation.to_le_bytes());
            out.extend_from_slice(&modified_at.to_le_bytes());
            text(out, id);
        }
        Record::Remove(id) => {
            out.push(REMOVE);
            text(out, id);
        }
        Record::Verdict(id, modified_at, v) => {
            out.push(VERDICT);
            for n in [*modified_at, v.key as i64, v.at, v.until] {
                out.extend_from_slice(&n.to_le_bytes());
            }
            for bits in [v.due, v.seen, v.exempt] {
                out.extend_from_slice(&bits.to_le_bytes());
            }
            text(out, id);
            match &v.tenant {
                Some(t) => {
                    out.push(1);
                    text(out, t);
                }
                None => out.push(0),
            }
        }
    }
}

/// Reads a segment's fields in order.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.bytes.split_at_checked(n)?;
        self.bytes = rest;
        Some(head)
    }

    fn number(&mut self) -> Result<i64, String> {
        let b = self.take(8).ok_or("a record is cut short")?;
        Ok(i64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    fn length(&mut self) -> Result<usize, String> {
        let len = self.take(4).ok_or("a record is cut short")?;
        Ok(u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize)
    }

    /// Bytes that have their length before them.
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = self.length()?;
        self.take(len)
            .ok_or_else(|| "a record is cut short".to_string())
    }

    fn text(&mut self) -> Result<&'a str, String> {
        let text = self.bytes()?;
        std::str::from_utf8(text).map_err(|_| "a record is not UTF-8".to_string())
    }
}

/// What a transaction does besides recording the sync.
pub(super) enum Write {
    /// Appends a segment (when it holds any record).
    Append(Segment),
    /// The mirror rewritten whole: these segments replace all the server's others.
    Rewrite(Vec<Segment>),
}

impl Write {
    fn compress(&mut self) -> Result<(), String> {
        match self {
            Write::Append(segment) => segment.compress(),
            Write::Rewrite(segments) => segments.iter_mut().try_for_each(Segment::compress),
        }
    }
}

impl MirrorFile {
    /// Opens (creating) the file; Err: why, for a warning (the mirror then lives in memory).
    pub async fn open(path: &Path) -> Result<MirrorFile, String> {
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(|e| e.to_string())?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // A cache: a power loss may lose the last pages, never split a page from its
            // checkpoint.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(std::time::Duration::from_secs(10));
        // One writer at a time holds the mirror anyway.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(|e| crate::audit::db_message(&e))?;
        sqlx::migrate!("./migrations/mirror")
            .run(&pool)
            .await
            .map_err(|e| e.to_string())?;
        let (jobs, queue) = mpsc::channel(QUEUED);
        let failed = Arc::new(AtomicBool::new(false));
        let file = Written {
            pool: pool.clone(),
            path: path.to_path_buf(),
            failed: failed.clone(),
        };
        tokio::spawn(file.writer(queue));
        Ok(MirrorFile {
            pool,
            path: path.to_path_buf(),
            jobs,
            failed,
        })
    }

    /// A write failed: nothing more is written this process.
    pub(super) fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Queues a write: `what`, and `sync` in the same transaction.
    pub(super) async fn write(&self, instance: &str, what: Write, sync: &Sync) {
        let job = Job::Write {
            instance: instance.to_string(),
            what,
            sync: sync.clone(),
        };
        // The writer only stops when every handle on the file is dropped.
        let _ = self.jobs.send(job).await;
    }

    /// Waits until every write queued so far is done (or given up).
    pub async fn flush(&self) {
        let (done, written) = oneshot::channel();
        if self.jobs.send(Job::Flush(done)).await.is_ok() {
            let _ = written.await;
        }
    }

    /// A server's mirror as the file holds it (empty when it holds none), and how many case
    /// versions and verdicts its segments hold. Err: why it cannot be read.
    pub(super) async fn load(&self, instance: &str) -> Result<(Sync, Cases, usize), LoadError> {
        let db = |e: sqlx::Error| LoadError::Database(crate::audit::db_message(&e));
        let sync: Option<SyncRow> = sqlx::query_as(
            "SELECT scope, generation, checkpoint_ms, last_full_ms, relist FROM mirror_sync WHERE instance = ?",
        )
        .bind(instance)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        let Some(sync) = sync else {
            return Ok((Sync::default(), Cases::default(), 0));
        };
        let mut rows = sqlx::query_scalar::<_, Vec<u8>>(
            "SELECT cases FROM mirror_segments WHERE instance = ? ORDER BY seq",
        )
        .bind(instance)
        .fetch(&self.pool);
        let (mut cases, mut records) = (Cases::default(), 0);
        while let Some(stored) = rows.try_next().await.map_err(db)? {
            records += Segment::replay(&stored, &mut cases).map_err(LoadError::Damaged)?;
        }
        drop(rows);
        let sync = Sync {
            scope: sync.scope,
            generation: sync.generation,
            checkpoint: sync.checkpoint_ms,
            last_full_ms: sync.last_full_ms,
            relist: sync.relist,
        };
        Ok((sync, cases, records))
    }
}

/// What the writer task needs.
struct Written {
    pool: SqlitePool,
    path: PathBuf,
    failed: Arc<AtomicBool>,
}

impl Written {
    /// Writes the queued jobs in order, compressing off the async threads; a file that
    /// cannot be written is left for the rest of the process (the mirror stays in memory,
    /// and the file's checkpoint where it was).
    async fn writer(self, mut jobs: mpsc::Receiver<Job>) {
        while let Some(job) = jobs.recv().await {
            let (instance, mut what, sync) = match job {
                Job::Flush(done) => {
                    let _ = done.send(());
                    continue;
                }
                _ if self.failed.load(Ordering::Relaxed) => continue,
                Job::Write {
                    instance,
                    what,
                    sync,
                } => (instance, what, sync),
            };
            let compressed = tokio::task::spawn_blocking(move || what.compress().map(|()| what));
            let done = match compressed.await {
                Ok(Ok(what)) => write(&self.pool, &instance, what, &sync)
                    .await
                    .map_err(|e| crate::audit::db_message(&e)),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = done {
                tracing::warn!(file = %self.path.display(), error = %e, "cannot write the mirror of the server's cases; it is kept in memory only until casewarden restarts");
                self.failed.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// Does `what` and records `sync` in one transaction.
async fn write(
    pool: &SqlitePool,
    instance: &str,
    what: Write,
    sync: &Sync,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    match what {
        Write::Append(segment) => append(&mut tx, instance, sync.generation, &segment).await?,
        Write::Rewrite(segments) => {
            sqlx::query("DELETE FROM mirror_segments WHERE instance = ?")
                .bind(instance)
                .execute(&mut *tx)
                .await?;
            for segment in &segments {
                append(&mut tx, instance, sync.generation, segment).await?;
            }
        }
    }
    sqlx::query(
        "INSERT INTO mirror_sync (instance, scope, generation, checkpoint_ms, last_full_ms, relist) \
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (instance) DO UPDATE SET scope = excluded.scope, \
             generation = excluded.generation, checkpoint_ms = excluded.checkpoint_ms, \
             last_full_ms = excluded.last_full_ms, relist = excluded.relist",
    )
    .bind(instance)
    .bind(&sync.scope)
    .bind(sync.generation)
    .bind(sync.checkpoint)
    .bind(sync.last_full_ms)
    .bind(&sync.relist)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

async fn append(
    tx: &mut Transaction<'_, Sqlite>,
    instance: &str,
    generation: i64,
    segment: &Segment,
) -> Result<(), sqlx::Error> {
    if segment.is_empty() {
        return Ok(());
    }
    sqlx::query("INSERT INTO mirror_segments (instance, generation, cases) VALUES (?, ?, ?)")
        .bind(instance)
        .bind(generation)
        .bind(&segment.bytes)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Where the mirror of the audit log at `audit` is kept: `audit.db` -> `audit.mirror.db`.
pub fn path_beside(audit: &Path) -> PathBuf {
    audit.with_extension("mirror.db")
}
