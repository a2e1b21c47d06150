//! The mirror: a local copy of each server's cases, kept like an informer's cache. A pass
//! brings it up to date with a delta listing (the cases modified since its checkpoint,
//! minus `list_overlap_secs`) or, on start, every `resync_interval`, when its filters
//! changed or when a delta cannot be trusted, with a full listing; the rules then run over
//! every case it holds, so time-driven rules still fire on cases nobody touched. It decides
//! what to plan, never what to overwrite: each case is read again right before its update.
//!
//! It lives in memory while the process runs; `once` also keeps it in a SQLite file beside
//! the audit log ([`path_beside`]), so the next `once` from cron starts from where the last
//! pass left it. The daemon, which lists every case at its start, keeps it in memory only.

mod block;
mod store;
#[cfg(test)]
mod tests;
mod verdict;

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::stellar::{Case, CaseParseError, HistoryEntry, filter};
use block::Block;
#[cfg(test)]
use block::Unpacker;
pub use block::{Body, Opened};
use store::{CASES_PER_SEGMENT, LoadError, Segment, Write};
pub use store::{MirrorFile, path_beside};
pub use verdict::Verdict;
use verdict::worth_keeping;

/// One server's mirror; clones share it.
#[derive(Clone)]
pub struct Mirror {
    inner: Arc<Mutex<Held>>,
    /// The `/activities` read for a case (5.x), by id, with the `modified_at` they were read
    /// at: read again only when the case changed. Outside `inner`, which a pass holds.
    activities: Arc<std::sync::Mutex<HashMap<String, (i64, Activities)>>>,
}

/// A case's change history as its `/activities` listed it.
pub type Activities = Arc<Vec<HistoryEntry>>;

/// The mirror as a pass holds it, locked for the pass.
pub struct Held {
    file: Option<MirrorFile>,
    instance: String,
    loaded: bool,
    /// Case versions and verdicts written since the cases were last packed anew (the
    /// file's segments and the blocks in memory hold them, live or not).
    records: usize,
    pub sync: Sync,
    pub cases: Cases,
    /// The filters and left-out fields of this process's last sync, for what a pass learns
    /// from its own writes.
    kept: Option<Kept>,
    /// Verdicts reached since the last write of them, for the file.
    verdicts: Segment,
}

/// A sync's filters and the fields it leaves out.
#[derive(Clone)]
struct Kept {
    scope: Vec<(String, String)>,
    unread: Vec<&'static str>,
}

/// Where a mirror's sync stands.
#[derive(Debug, Default, Clone)]
pub struct Sync {
    /// The filters of the full listing that filled it (a rule change that changes them
    /// asks for a new full listing).
    pub scope: String,
    /// The full listing that last saw a case; cases an ended full listing did not see
    /// are gone from the server.
    pub generation: i64,
    /// The newest `modified_at` (the server's clock) merged so far.
    pub checkpoint: Option<i64>,
    /// When the last full listing ended (this machine's clock, epoch ms).
    pub last_full_ms: Option<i64>,
    /// Why the next sync lists every case whatever the checkpoint says, if it must.
    pub relist: Option<String>,
}

/// How a pass lists the server's cases.
#[derive(Debug, Clone, PartialEq)]
pub enum Listing {
    /// Every case; why.
    Full(String),
    /// The cases with `modified_at` at or after this (epoch ms, the server's clock).
    Delta { from: i64 },
}

/// The cases, by id and in `modified_at` order.
#[derive(Default)]
pub struct Cases {
    by_time: BTreeMap<(i64, Arc<str>), Stored>,
    at: HashMap<Arc<str>, i64>,
    /// Cases holding a verdict.
    verdicts: usize,
    /// The customers' ids the verdicts name, one copy each.
    tenants: std::collections::HashSet<Arc<str>>,
}

struct Stored {
    generation: i64,
    /// The case as listed, without the fields no rule reads.
    body: Body,
    /// What the rules made of this version, when they asked nothing of it.
    verdict: Option<Verdict>,
}

/// A case of the mirror as a pass reads it.
pub struct Listed<'a> {
    pub at: &'a Cursor,
    pub body: &'a Body,
    pub verdict: Option<&'a Verdict>,
}

/// Where an iteration over the cases has got to.
pub type Cursor = (i64, Arc<str>);

impl Cases {
    fn put(&mut self, id: Arc<str>, modified_at: i64, generation: i64, body: Body) {
        let mut verdict = None;
        if let Some(old) = self.at.insert(id.clone(), modified_at)
            && let Some(was) = self.by_time.remove(&(old, id.clone()))
        {
            if old == modified_at && was.body.same_text(&body) {
                // The same version listed again (a delta's overlap, a resync) keeps its
                // verdict.
                verdict = was.verdict;
            } else if was.verdict.is_some() {
                self.verdicts -= 1;
            }
        }
        self.by_time.insert(
            (modified_at, id),
            Stored {
                generation,
                body,
                verdict,
            },
        );
    }

    /// Where the case `id` is held: its `modified_at` and shared id, the key of `by_time`.
    fn key(&self, id: &str) -> Option<(i64, Arc<str>)> {
        self.at.get_key_value(id).map(|(id, &m)| (m, id.clone()))
    }

    /// A version read back from the file: a newer one held stays, seen as late as either.
    fn replay(&mut self, id: &str, modified_at: i64, generation: i64, body: Body) {
        match self.key(id) {
            Some((m, id)) if m > modified_at => {
                if let Some(s) = self.by_time.get_mut(&(m, id)) {
                    s.generation = s.generation.max(generation);
                }
            }
            Some((_, id)) => self.put(id, modified_at, generation, body),
            None => self.put(Arc::from(id), modified_at, generation, body),
        }
    }

    fn remove(&mut self, id: &str) -> bool {
        let Some((id, m)) = self.at.remove_entry(id) else {
            return false;
        };
        let Some(was) = self.by_time.remove(&(m, id)) else {
            return false;
        };
        self.verdicts -= usize::from(was.verdict.is_some());
        true
    }

    /// Marks a case as seen by the listing of `generation`.
    fn seen(&mut self, id: &str, generation: i64) {
        if let Some(key) = self.key(id)
            && let Some(s) = self.by_time.get_mut(&key)
        {
            s.generation = generation;
        }
    }

    /// Drops the cases no listing of `generation` or later saw; how many.
    fn sweep(&mut self, generation: i64) -> usize {
        let before = self.at.len();
        let (at, verdicts) = (&mut self.at, &mut self.verdicts);
        self.by_time.retain(|(_, id), s| {
            let keep = s.generation >= generation;
            if !keep {
                at.remove(id);
                *verdicts -= usize::from(s.verdict.is_some());
            }
            keep
        });
        before - self.at.len()
    }

    pub fn len(&self) -> usize {
        self.at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }

    /// Every case, for a segment each `CASES_PER_SEGMENT` of them (their verdicts after
    /// their texts, which then keep their blocks), sharing their text.
    fn segments(&self) -> Vec<Segment> {
        let cases: Vec<_> = self.by_time.iter().collect();
        let segment = |chunk: &[(&Cursor, &Stored)]| {
            let mut segment = Segment::default();
            for ((m, id), s) in chunk {
                segment.put(id.clone(), *m, s.generation, s.body.clone());
            }
            for ((m, id), s) in chunk {
                if let Some(v) = s.verdict.as_ref().filter(|v| worth_keeping(v)) {
                    segment.verdict(id.clone(), *m, v.clone());
                }
            }
            segment
        };
        cases.chunks(CASES_PER_SEGMENT).map(segment).collect()
    }

    /// Packs the texts anew, `CASES_PER_SEGMENT` a block in `modified_at` order, leaving
    /// behind the texts of versions no longer held.
    async fn repack(&mut self) {
        let bodies: Vec<Body> = self.by_time.values().map(|s| s.body.clone()).collect();
        let packed = block::pack(bodies, CASES_PER_SEGMENT, Block::repack).await;
        for (s, body) in self.by_time.values_mut().zip(packed) {
            s.body = body;
        }
    }

    /// Keeps what the rules made of the case's version of `modified_at` (None: its
    /// current one); the case's id and that version's `modified_at`, when it is held.
    fn remember(
        &mut self,
        id: &str,
        modified_at: Option<i64>,
        mut verdict: Verdict,
    ) -> Option<(Arc<str>, i64)> {
        let (m, id) = self.key(id)?;
        if modified_at.is_some_and(|at| at != m) {
            return None;
        }
        verdict.tenant = verdict.tenant.map(|t| self.tenant(&t));
        let s = self.by_time.get_mut(&(m, id.clone()))?;
        self.verdicts += usize::from(s.verdict.is_none());
        s.verdict = Some(verdict);
        Some((id, m))
    }

    /// The one copy of a customer's id the verdicts share.
    fn tenant(&mut self, id: &str) -> Arc<str> {
        if let Some(t) = self.tenants.get(id) {
            return t.clone();
        }
        let t: Arc<str> = Arc::from(id);
        self.tenants.insert(t.clone());
        t
    }

    /// A verdict read back from the file, for the version it is of.
    fn recall(&mut self, id: &str, modified_at: i64, verdict: Verdict) {
        self.remember(id, Some(modified_at), verdict);
    }

    /// The records a file holding only the live cases and their verdicts holds.
    fn live(&self) -> usize {
        self.at.len() + self.verdicts
    }

    /// Up to `n` cases after `after`, oldest `modified_at` first.
    pub fn after(&self, after: Option<&Cursor>, n: usize) -> Vec<Listed<'_>> {
        let from = match after {
            Some(c) => Bound::Excluded(c.clone()),
            None => Bound::Unbounded,
        };
        self.by_time
            .range((from, Bound::Unbounded))
            .take(n)
            .map(|(at, s)| Listed {
                at,
                body: &s.body,
                verdict: s.verdict.as_ref(),
            })
            .collect()
    }
}

impl Mirror {
    /// A server's mirror, kept in `file` when there is one (else in memory only).
    pub fn new(file: Option<MirrorFile>, instance: &str) -> Mirror {
        Mirror {
            inner: Arc::new(Mutex::new(Held {
                file,
                instance: instance.to_string(),
                loaded: false,
                records: 0,
                sync: Sync::default(),
                cases: Cases::default(),
                kept: None,
                verdicts: Segment::default(),
            })),
            activities: Arc::default(),
        }
    }

    /// The activities read for `case` while it was at its current `modified_at`.
    pub fn activities(&self, case: &Case) -> Option<Activities> {
        let held = self.activities.lock().unwrap_or_else(|p| p.into_inner());
        let (at, read) = held.get(&case.id)?;
        (*at == modified_at(case)).then(|| read.clone())
    }

    /// Keeps the activities read for `case`, until it changes.
    pub fn keep_activities(&self, case: &Case, read: Activities) {
        let mut held = self.activities.lock().unwrap_or_else(|p| p.into_inner());
        held.insert(case.id.clone(), (modified_at(case), read));
    }

    /// The mirror for one pass, read from its file the first time.
    pub async fn lock(&self) -> OwnedMutexGuard<Held> {
        let mut held = self.inner.clone().lock_owned().await;
        if !held.loaded {
            held.loaded = true;
            if let Some(file) = &held.file {
                match file.load(&held.instance).await {
                    Ok((sync, cases, records)) => {
                        (held.sync, held.cases, held.records) = (sync, cases, records)
                    }
                    Err(LoadError::Damaged(e)) => {
                        tracing::warn!(file = %file.path.display(), error = %e, "the mirror of the server's cases is damaged; listing every case");
                        // What it held goes, or it would be replayed after the listing's
                        // segments again.
                        let empty = Write::Rewrite(Vec::new());
                        file.write(&held.instance, empty, &Sync::default()).await;
                    }
                    Err(e @ LoadError::Database(_)) => {
                        tracing::warn!(file = %file.path.display(), error = %e, "cannot read the mirror of the server's cases; listing every case and keeping them in memory only");
                        held.file = None;
                    }
                }
            }
        }
        held
    }

    /// Waits until the file holds what this process merged so far.
    pub async fn flush(&self) {
        let file = self.inner.lock().await.file.clone();
        if let Some(file) = file {
            file.flush().await;
        }
    }

    /// The next pass lists every case (a daemon's start, a replica taking the lead).
    pub async fn resync_next(&self) {
        self.inner.lock().await.sync.relist = Some(STARTED.into());
    }

    /// Kept in memory only, from a full listing (a daemon: it lists every case at its start,
    /// so the file would serve only `once` runs, which keep it consistent among themselves).
    pub async fn in_memory_only(&self) {
        let mut held = self.inner.lock().await;
        held.file = None;
        held.loaded = true;
        held.sync.relist = Some(STARTED.into());
    }
}

/// Why a daemon's first pass (or a replica's taking the lead) lists every case.
const STARTED: &str = "casewarden started, or took the lead";

/// The modified time of a case as the server wrote it (0 when it has none).
pub fn modified_at(case: &Case) -> i64 {
    case.modified_at().unwrap_or(0)
}

impl Held {
    /// How this pass lists: a delta from the checkpoint, unless a full listing is due.
    pub fn listing(
        &self,
        scope: &str,
        now_ms: i64,
        overlap: Duration,
        resync_interval: Duration,
    ) -> Listing {
        let overlap = overlap.as_millis() as i64;
        let full = |why: &str| Listing::Full(why.to_string());
        let (checkpoint, last_full) = match (self.sync.checkpoint, self.sync.last_full_ms) {
            (Some(c), Some(l)) => (c, l),
            (Some(_), None) => return full("the last full listing did not finish"),
            _ => return full("no mirror of this server's cases yet"),
        };
        if let Some(why) = &self.sync.relist {
            full(why)
        } else if self.sync.scope != scope {
            full("the rules' filters changed since the mirror was filled")
        } else if checkpoint > now_ms + overlap {
            full(&format!(
                "the mirror's checkpoint ({}) is in the future by this machine's clock (clock skew or a changed clock)",
                crate::time::timestamp(
                    chrono::DateTime::from_timestamp_millis(checkpoint).unwrap_or_default()
                )
            ))
        } else if now_ms - last_full >= resync_interval.as_millis() as i64 {
            full("resync_interval has passed since the last full listing")
        } else {
            Listing::Delta {
                from: checkpoint - overlap,
            }
        }
    }

    /// Remembers what this process's syncs keep, for [`Held::learn`].
    pub fn keep(&mut self, scope: &[(String, String)], unread: &[&'static str]) {
        self.kept = Some(Kept {
            scope: scope.to_vec(),
            unread: unread.to_vec(),
        });
    }

    /// Merges cases as the server showed them after this pass's writes (and reads), so
    /// the next delta may leave out casewarden's own changes; the checkpoint stays.
    pub async fn learn(&mut self, cases: &[Case]) {
        let Some(kept) = self.kept.clone() else {
            return;
        };
        if !cases.is_empty() {
            self.merge(cases, &[], &kept.scope, &kept.unread, None)
                .await;
        }
    }

    /// A full listing is under way (or the last one did not end, so the next pass makes one).
    fn filling(&self) -> bool {
        self.sync.last_full_ms.is_none()
    }

    /// What the rules made of the case's current version, if remembered.
    pub fn verdict(&self, id: &str) -> Option<&Verdict> {
        let key = self.cases.key(id)?;
        self.cases.by_time.get(&key)?.verdict.as_ref()
    }

    /// Keeps what the rules made of a case's current version, in the file at the next
    /// [`Held::save_verdicts`] when it holds for a while.
    pub fn remember(&mut self, id: &str, verdict: Verdict) {
        let for_file = (self.file.is_some() && worth_keeping(&verdict)).then(|| verdict.clone());
        if let Some((id, m)) = self.cases.remember(id, None, verdict)
            && let Some(verdict) = for_file
        {
            self.verdicts.verdict(id, m, verdict);
        }
    }

    /// Writes the verdicts reached since the last call to the file.
    pub async fn save_verdicts(&mut self) {
        let verdicts = std::mem::take(&mut self.verdicts);
        if verdicts.puts > 0 {
            self.write(Write::Append(verdicts)).await;
        }
    }

    /// The next sync (this process's or the next one's) lists every case whatever the
    /// checkpoint says.
    pub async fn list_all_next(&mut self, why: &str) {
        self.sync.relist = Some(why.to_string());
        self.write(Write::Append(Segment::default())).await;
    }

    /// Starts a full listing with `scope`'s filters.
    pub fn begin_full(&mut self, scope: &str) {
        self.sync.generation += 1;
        // Until it ends, the mirror may lack cases of these filters.
        self.sync.last_full_ms = None;
        self.sync.scope = scope.to_string();
    }

    /// Merges one listed page: a case that still matches the mirror's `scope` is stored
    /// (without the `unread` fields), one that does not (or no longer parses) leaves it; a
    /// version older than the one held (a listing that trails writes) only counts as seen.
    /// With `checkpoint`, the checkpoint moves to it (never back) in the same write.
    pub async fn merge(
        &mut self,
        cases: &[Case],
        refused: &[CaseParseError],
        scope: &[(String, String)],
        unread: &[&str],
        checkpoint: Option<i64>,
    ) {
        let (generation, filling) = (self.sync.generation, self.filling());
        let mut stored: Vec<(Arc<str>, i64, String)> = Vec::with_capacity(cases.len());
        let mut segment = Segment::default();
        let mut removes: Vec<&str> = Vec::new();
        for case in cases {
            let m = modified_at(case);
            if self
                .cases
                .at
                .get(case.id.as_str())
                .is_some_and(|&held| held > m)
            {
                self.cases.seen(&case.id, generation);
            } else if filter::recheck(case.raw(), scope) {
                let text = case.raw().project(|k| !unread.contains(&k));
                stored.push((Arc::from(case.id.as_str()), m, text));
            } else {
                removes.push(&case.id);
            }
        }
        removes.extend(refused.iter().filter_map(|e| e.id.as_deref()));
        for id in removes {
            self.cases.remove(id);
            segment.remove(id);
        }
        if let Some(c) = checkpoint {
            self.sync.checkpoint = Some(self.sync.checkpoint.map_or(c, |old| old.max(c)));
        }
        // Packed in the order a pass reads them: a delta's pages and a pass's own writes
        // now, a full listing's (in creation order) at its end, when the file is written.
        stored.sort_unstable_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        let (keys, texts): (Vec<_>, Vec<_>) = stored
            .into_iter()
            .map(|(id, m, text)| ((id, m), text))
            .unzip();
        let bodies = match filling {
            true => texts.into_iter().map(Body::text).collect(),
            false => block::pack(texts, CASES_PER_SEGMENT, Block::pack).await,
        };
        for ((id, m), body) in keys.into_iter().zip(bodies) {
            if !filling {
                segment.put(id.clone(), m, generation, body.clone());
            }
            self.cases.put(id, m, generation, body);
        }
        if !filling {
            self.write(Write::Append(segment)).await;
        }
    }

    /// Ends a full listing: the checkpoint is set to `checkpoint` and, with `sweep`, the
    /// cases it did not see leave the mirror (how many). Its texts are packed and the file
    /// written whole (until then it holds the mirror as it was before the listing).
    pub async fn end_full(&mut self, checkpoint: i64, sweep: bool) -> usize {
        self.sync.checkpoint = Some(checkpoint);
        self.sync.last_full_ms = Some(crate::now_ms());
        self.sync.relist = None;
        let gone = match sweep {
            true => self.cases.sweep(self.sync.generation),
            false => 0,
        };
        self.rewrite().await;
        gone
    }

    /// Packs the texts anew and writes the file whole, with the verdicts.
    async fn rewrite(&mut self) {
        self.cases.repack().await;
        self.verdicts = Segment::default();
        if let Some(file) = self.file.as_ref().filter(|f| !f.failed()) {
            let segments = self.cases.segments();
            file.write(&self.instance, Write::Rewrite(segments), &self.sync)
                .await;
        }
        self.records = self.cases.live();
    }

    /// Queues a write to the file; when most of what the blocks and the file hold is
    /// stale, the texts are packed anew and the file rewritten whole.
    async fn write(&mut self, what: Write) {
        if let Write::Append(segment) = &what {
            self.records += segment.puts;
        }
        if let Some(file) = self.file.as_ref().filter(|f| !f.failed()) {
            file.write(&self.instance, what, &self.sync).await;
        }
        if self.records > 2 * self.cases.live() + CASES_PER_SEGMENT && !self.filling() {
            self.rewrite().await;
        }
    }
}
