//! The hash chain: every row's hash covers the previous row's hash and its own content,
//! sealed pass rows name the chain head they saw, and `verify` walks it all.

use super::db::on_pool;
use super::{AuditError, AuditStore, EventRow, PassRow};
use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::key::{CHAIN, ChainKey, ChainKeys, KEYED};

/// Rows `verify` reads and hashes at a time.
const VERIFY_BATCH: usize = 2_048;

/// The `prev_hash` of the first row.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Feeds what is written straight into the hash, so a row is hashed without building its
/// JSON text first.
struct HashWriter(RowDigest);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What a row's hash is computed with: SHA-256, or HMAC-SHA256 under a chain key.
enum RowDigest {
    Plain(Sha256),
    Keyed(hmac::Hmac<Sha256>),
}

impl RowDigest {
    fn update(&mut self, bytes: &[u8]) {
        use hmac::Mac;
        match self {
            RowDigest::Plain(h) => sha2::Digest::update(h, bytes),
            RowDigest::Keyed(m) => m.update(bytes),
        }
    }

    fn hex(self) -> String {
        use hmac::Mac;
        match self {
            RowDigest::Plain(h) => hex::encode(sha2::Digest::finalize(h)),
            RowDigest::Keyed(m) => hex::encode(m.finalize().into_bytes()),
        }
    }
}

impl EventRow {
    /// SHA-256 of the previous hash and this row's content in a fixed order: the JSON array
    /// of the fields (a tuple prints as the same array).
    pub fn compute_hash(&self) -> String {
        self.hash_with(None)
    }

    /// The row's hash: as [`EventRow::compute_hash`], or under `key` an HMAC-SHA256 of the
    /// same bytes.
    pub fn hash_with(&self, key: Option<&ChainKey>) -> String {
        let canonical = (
            self.seq,
            &self.run_id,
            &self.recorded_at,
            &self.rule,
            &self.rule_hash,
            &self.case_id,
            self.ticket_id,
            &self.field,
            &self.old,
            &self.new,
            &self.reason,
            self.dry_run,
            self.outcome,
            &self.error,
            self.http_status,
            self.planned_seq,
        );
        let mut h = HashWriter(match key {
            Some(k) => RowDigest::Keyed(k.mac()),
            None => RowDigest::Plain(Sha256::new()),
        });
        h.0.update(self.prev_hash.as_bytes());
        h.0.update(b"\n");
        // A row without a tenant hashes as rows did before tenants were recorded, so
        // older logs verify unchanged.
        match (&self.tenant, &self.instance, self.epoch) {
            (None, None, None) => serde_json::to_writer(&mut h, &canonical),
            (Some(tenant), None, None) => serde_json::to_writer(&mut h, &(canonical, tenant)),
            (tenant, Some(instance), None) => {
                serde_json::to_writer(&mut h, &(canonical, tenant, instance))
            }
            (tenant, instance, Some(epoch)) => {
                serde_json::to_writer(&mut h, &(canonical, tenant, instance, epoch))
            }
        }
        .expect("hashing cannot fail");
        h.0.hex()
    }
}

impl PassRow {
    /// SHA-256 of every field of the finished row, in a fixed order.
    pub fn compute_hash(&self) -> String {
        let t = &self.totals;
        let canonical = serde_json::json!([
            self.id,
            self.started_at,
            self.finished_at,
            self.trigger_kind,
            self.rules_fingerprint,
            self.dry_run,
            t.cases_seen,
            t.planned,
            t.applied,
            t.failed,
            t.skipped,
            t.status,
            t.error,
            self.chain_head,
        ]);
        // A pass recorded before servers were hashes as it did then.
        let canonical = match &self.instance {
            None => canonical,
            Some(instance) => serde_json::json!([canonical, instance]),
        };
        hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
    }
}

/// The chained rows of passes' starts and ends ([`super::row::pass_started`],
/// [`super::row::pass_finished`]), gathered while walking the chain.
#[derive(Default)]
struct ChainedPasses {
    /// Pass id -> the row of its start.
    started: std::collections::BTreeMap<String, i64>,
    /// Pass id -> the sealed row's hash its end carries.
    finished: std::collections::HashMap<String, Option<String>>,
    /// When the first chained start was recorded: passes since have one each.
    since: Option<String>,
}

impl ChainedPasses {
    fn see(&mut self, row: &EventRow) {
        if row.field != super::row::PASS {
            return;
        }
        match row.new.as_deref() {
            Some("started") => {
                self.since.get_or_insert_with(|| row.recorded_at.clone());
                self.started.insert(row.run_id.clone(), row.seq);
            }
            Some("finished") => {
                self.finished.insert(row.run_id.clone(), row.old.clone());
            }
            _ => {}
        }
    }

    /// The first pass that does not hold against the walked chain: edited, its head not a
    /// row of the chain (`heads`: the recorded heads no row had), forged, or deleted.
    fn broken_pass(
        &self,
        passes: &[PassRow],
        heads: &std::collections::HashSet<String>,
    ) -> Option<Verification> {
        for p in passes {
            let problem =
                if p.hash.is_some() && p.hash.as_deref() != Some(p.compute_hash().as_str()) {
                    "its row does not match its hash (its totals, status or times were edited)"
                        .to_string()
                } else if p.chain_head.as_ref().is_some_and(|h| heads.contains(h)) {
                    "the chain head it recorded is not a row of the chain (the events were rebuilt)"
                        .into()
                } else if let Some(problem) = self.problem(p) {
                    problem
                } else {
                    continue;
                };
            return Some(Verification::BrokenPass {
                id: p.id.clone(),
                problem,
            });
        }
        let have: std::collections::HashSet<&str> = passes.iter().map(|p| p.id.as_str()).collect();
        let (id, seq) = self
            .started
            .iter()
            .find(|(id, _)| !have.contains(id.as_str()))?;
        Some(Verification::BrokenPass {
            id: id.clone(),
            problem: format!(
                "its row was deleted: the chain records its start (row {seq}) but the passes table has no such pass"
            ),
        })
    }

    /// What is wrong with pass row `p` against the chain: forged (no chained start, though
    /// passes of its time have one), sealed without its chained end, or sealed with other
    /// totals than its end recorded.
    fn problem(&self, p: &PassRow) -> Option<String> {
        let since = self.since.as_deref()?;
        if !self.started.contains_key(&p.id) {
            // A pass recorded before passes were chained has no start row.
            if p.started_at.as_str() < since {
                return None;
            }
            return Some(match p.hash {
                Some(_) => "the chain never recorded its start: the row was inserted outside casewarden".into(),
                None => "marked running, but the chain never recorded its start: the row was inserted outside casewarden (no pass of casewarden's owns it)".into(),
            });
        }
        match (&p.hash, self.finished.get(&p.id)) {
            (Some(_), None) => Some("it is sealed, but the chain never recorded its end: the row was sealed outside casewarden".into()),
            (Some(hash), Some(recorded)) if recorded.as_deref() != Some(hash.as_str()) => Some(
                "its sealed row is not the one the chain recorded at its end (its totals, status or times were edited and its hash recomputed)".into(),
            ),
            (None, Some(_)) => Some("the chain recorded its end, but its row is not sealed: the row was reset outside casewarden".into()),
            _ => None,
        }
    }
}

/// What an intact chain proved of its keyed rows.
#[derive(Debug, Clone, PartialEq)]
pub enum Keyed {
    /// No row is keyed: a plain SHA-256 chain, which anyone who can write the database
    /// could rebuild.
    No,
    /// Rows from `from` on are keyed and were checked with the key: only a holder of the
    /// key wrote them, and nothing before them changed.
    Proven { from: i64 },
    /// Rows from `from` on are keyed with a key not given (its id in `key`): their links
    /// were checked, not their content.
    Unproven { from: i64, rows: u64, key: String },
}

/// The key a row is hashed under, as the walk goes.
#[derive(Clone, Copy)]
enum Under<'k> {
    Plain,
    Key(&'k ChainKey),
    /// A key that was not given.
    Unknown,
}

/// The first row of a batch whose content does not match its hash under its key (rows
/// under a key not given are not checked), hashed in parallel.
fn first_forged(rows: &[EventRow], unders: &[Under<'_>]) -> Option<usize> {
    use rayon::prelude::*;
    rows.par_iter()
        .zip(unders.par_iter())
        .position_first(|(row, under)| match under {
            Under::Plain => row.compute_hash() != row.hash,
            Under::Key(k) => row.hash_with(Some(k)) != row.hash,
            Under::Unknown => false,
        })
}

/// Why a forged row is broken, naming the key it was checked under.
fn forged_problem(row: &EventRow, under: Under<'_>) -> String {
    match under {
        Under::Key(k) => format!(
            "row {}'s content does not match its keyed hash under key id {} (the row was edited, forged or re-linked without the key)",
            row.seq, k.id
        ),
        _ => format!(
            "row {}'s content does not match its hash (the row was edited or forged)",
            row.seq
        ),
    }
}

/// The keys as the walk goes: a "keyed" row switches the key for itself and the rows after
/// it; what the keyed rows proved so far.
struct KeyWalk<'k> {
    keys: Option<&'k ChainKeys>,
    under: Under<'k>,
    keyed: Keyed,
}

impl<'k> KeyWalk<'k> {
    /// The key `row` is hashed under.
    fn step(&mut self, row: &EventRow) -> Under<'k> {
        if row.field == CHAIN && row.new.as_deref() == Some(KEYED) {
            let id = row.old.clone().unwrap_or_default();
            self.under = match self.keys.and_then(|k| k.find(&id)) {
                Some(k) => Under::Key(k),
                None => Under::Unknown,
            };
            self.keyed = match (&self.keyed, self.under) {
                (Keyed::No, Under::Key(_)) => Keyed::Proven { from: row.seq },
                (Keyed::No | Keyed::Proven { .. }, Under::Unknown) => Keyed::Unproven {
                    from: row.seq,
                    rows: 0,
                    key: id,
                },
                (k, _) => k.clone(),
            };
        }
        if let (Under::Unknown, Keyed::Unproven { rows, .. }) = (self.under, &mut self.keyed) {
            *rows += 1;
        }
        self.under
    }
}

/// The result of walking the chain.
#[derive(Debug, Clone, PartialEq)]
pub enum Verification {
    Intact {
        rows: u64,
        head: String,
        keyed: Keyed,
    },
    Broken {
        seq: i64,
        rows_checked: u64,
        problem: String,
    },
    /// The events chain is intact, but a sealed pass row is not.
    BrokenPass { id: String, problem: String },
}

impl AuditStore {
    /// Walks the whole chain in order, recomputing every hash.
    pub async fn verify(&self) -> Result<Verification, AuditError> {
        // Sealed passes name the chain head they saw; each must be a row of the chain.
        let passes: Vec<PassRow> = on_pool!(&self.pool, |pool| {
            sqlx::query_as("SELECT * FROM passes ORDER BY started_at, id")
                .fetch_all(pool)
                .await?
        });
        let mut heads: std::collections::HashSet<String> = passes
            .iter()
            .filter(|p| p.hash.is_some())
            .filter_map(|p| p.chain_head.clone())
            .filter(|h| h != GENESIS)
            .collect();
        let mut chained = ChainedPasses::default();
        // Rows arrive in batches; their hashes are checked in parallel (each row names the
        // hash before it), the links between them in order.
        let mut batches: futures::stream::BoxStream<'_, Vec<Result<EventRow, sqlx::Error>>> =
            on_pool!(&self.pool, |pool| {
                sqlx::query_as("SELECT * FROM events ORDER BY seq")
                    .fetch(pool)
                    .chunks(VERIFY_BATCH)
                    .boxed()
            });
        let mut prev = GENESIS.to_string();
        let mut count = 0u64;
        let mut last_seq = 0i64;
        let keys = self.chain_keys.as_deref();
        let mut walk = KeyWalk {
            keys,
            under: Under::Plain,
            keyed: Keyed::No,
        };
        while let Some(batch) = batches.next().await {
            let rows = batch
                .into_iter()
                .map(|r| Ok(r?))
                .collect::<Result<Vec<EventRow>, AuditError>>()?;
            let unders: Vec<Under<'_>> = rows.iter().map(|row| walk.step(row)).collect();
            let forged = first_forged(&rows, &unders);
            for (i, row) in rows.iter().enumerate() {
                let broken = |problem: String| Verification::Broken {
                    seq: row.seq,
                    rows_checked: count,
                    problem,
                };
                if row.prev_hash != prev {
                    return Ok(broken(format!(
                        "row {} does not follow row {last_seq}: its prev_hash does not match (a row was deleted or inserted before it)",
                        row.seq
                    )));
                }
                if forged == Some(i) {
                    return Ok(broken(forged_problem(row, unders[i])));
                }
                heads.remove(&row.hash);
                chained.see(row);
                prev.clone_from(&row.hash);
                last_seq = row.seq;
                count += 1;
            }
        }
        if let Some(broken) = chained.broken_pass(&passes, &heads) {
            return Ok(broken);
        }
        if keys.is_some() && walk.keyed == Keyed::No {
            return Ok(Verification::Broken {
                seq: last_seq,
                rows_checked: count,
                problem: "audit.chain_key_file is set, but no row of the chain is keyed: the log was never keyed with it (start casewarden once with the key to key it from then on), or its rows were rebuilt without the key".into(),
            });
        }
        Ok(Verification::Intact {
            rows: count,
            head: prev,
            keyed: walk.keyed,
        })
    }

    /// The `seq` of the row whose hash is `hash`, if any.
    pub async fn seq_of_hash(&self, hash: &str) -> Result<Option<i64>, AuditError> {
        Ok(on_pool!(&self.pool, |pool| {
            sqlx::query_scalar("SELECT seq FROM events WHERE hash = $1")
                .bind(hash.to_ascii_lowercase())
                .fetch_optional(pool)
                .await?
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Outcome;

    /// The hash of a row is part of every log ever written: it must never change. The
    /// expected value is SHA-256 of `prev + "\n" + ` the compact JSON array of the fields,
    /// computed independently (Python's json.dumps with ensure_ascii=False).
    #[test]
    fn the_row_hash_is_stable() {
        let row = EventRow {
            seq: 7,
            run_id: "20261125T000000Z-abc".into(),
            recorded_at: "2026-11-25T00:00:00.000Z".into(),
            rule: "sla-breach".into(),
            rule_hash: "ab".repeat(32),
            case_id: "case-1".into(),
            ticket_id: Some(60001),
            field: "tags".into(),
            old: None,
            new: Some("+vip".into()),
            reason: "why: é\n\"quoted\"\u{1b}".into(),
            dry_run: false,
            outcome: Outcome::Applied,
            error: None,
            http_status: Some(200),
            planned_seq: Some(5),
            prev_hash: "11".repeat(32),
            hash: String::new(),
            tenant: None,
            instance: None,
            epoch: None,
        };
        assert_eq!(
            row.compute_hash(),
            "3fbfa9d9ba5eb9f07161b64e322bcc745c3fc0263fe369f52f902dbf0772454f"
        );
        // With a tenant: the array of the fields and the tenant, `[[...], "cust"]`.
        let row = EventRow {
            tenant: Some("7e2f6a0c3d9b4e1f8a5c2b7d0e4f6a21".into()),
            ..row
        };
        assert_eq!(
            row.compute_hash(),
            "845f19f3f09e7b0eaa5660058656be387a8318147f2ceb415caa43215bcddfc2"
        );
        // With an instance: `[[...], tenant or null, "instance"]`.
        let row = EventRow {
            instance: Some("eu".into()),
            ..row
        };
        assert_eq!(
            row.compute_hash(),
            "715f1c83bc9f2d0bef96841383463029a5023974a1e7f2cf777b941e20f16411"
        );
        let row = EventRow {
            tenant: None,
            ..row
        };
        assert_eq!(
            row.compute_hash(),
            "d89b468f19f112cea8729dd2cd7dbad17f0201f50fe6d422e460ba85a3913669"
        );
        // With a lease epoch: `[[...], tenant or null, instance or null, epoch]`.
        let row = EventRow {
            epoch: Some(3),
            ..row
        };
        assert_eq!(
            row.compute_hash(),
            "8533ad23af369b8ee6078744830b27ada13e47ef068a2187f653ae63e2bbb96b"
        );
        let row = EventRow {
            instance: None,
            ..row
        };
        assert_eq!(
            row.compute_hash(),
            "019c283666c0bc13d3b717d247310649f04ed5f519d662f1df72196be25807fa"
        );
    }
}
