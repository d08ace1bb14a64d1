//! The audit log of one store ([`AuditLog`]): appending entries to the chain and keeping its
//! head, pruning old entries behind a checkpoint, and querying entries through an
//! [`AuditFilter`].

use std::sync::{Arc, Mutex, MutexGuard};

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{
    journal, Actor, AuditError, AuditEvent, AuditRecord, Hash, Head, NewEntry, Outcome, Result,
    ShortPseudonym, Status,
};
use crate::store::Store;

/// Meta key of the chain head (`seq` u64 BE || hash 32 bytes).
pub const META_HEAD: &[u8] = b"audit/head";
/// Entries deleted per batch while pruning.
const PRUNE_BATCH: usize = 10_000;

/// What a prune did.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct PruneReport {
    /// Entries deleted (or due, in a dry run).
    pub pruned: u64,
    /// Sequence number of the checkpoint entry written.
    pub checkpoint_seq: Option<u64>,
}

/// Filter of [`AuditLog::query`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AuditFilter {
    /// Only entries at or after this time.
    pub since: Option<Timestamp>,
    /// Only entries before this time.
    pub until: Option<Timestamp>,
    /// See [`Actor::matches`].
    pub actor: Option<String>,
    /// Short pseudonym (`c-…`).
    pub subject: Option<String>,
    /// Exact action or a prefix ending in `.` (`customer.`).
    pub action: Option<String>,
    /// At most this many entries (the newest when `newest_first`).
    pub limit: Option<usize>,
}

impl AuditFilter {
    /// Whether `r` passes every part of the filter that is set.
    pub fn matches(&self, r: &AuditRecord) -> bool {
        self.since.is_none_or(|t| r.time >= t)
            && self.until.is_none_or(|t| r.time < t)
            && self.actor.as_deref().is_none_or(|a| r.actor.matches(a))
            && self
                .subject
                .as_deref()
                .is_none_or(|s| r.subject.as_ref().is_some_and(|x| x.as_str() == s))
            && self
                .action
                .as_deref()
                .is_none_or(|a| r.action == a || (a.ends_with('.') && r.action.starts_with(a)))
    }
}

struct HeadState {
    head: Head,
    last_time: Timestamp,
}

type Clock = Box<dyn Fn() -> Timestamp + Send + Sync>;

/// The audit log of one store. Appends are serialised by an internal lock on the chain head;
/// all methods block (call them from `spawn_blocking` in async code).
pub struct AuditLog {
    store: Arc<Store>,
    state: Mutex<HeadState>,
    prune_lock: Mutex<()>,
    journal: journal::JournalSink,
    clock: Clock,
}

impl AuditLog {
    /// Opens the log of `store`, finding the head from the last stored entry.
    pub fn open(store: Arc<Store>) -> Result<AuditLog> {
        let mut head = Head::default();
        let mut last_time = Timestamp::UNIX_EPOCH;
        if let Some(g) = store.keyspaces().audit.last_key_value() {
            let (k, v) = g.into_inner()?;
            let seq = key_seq(&k).ok_or(AuditError::Corrupt(0, "key is not a sequence number"))?;
            match serde_json::from_slice::<AuditRecord>(&v) {
                Ok(r) => {
                    head = Head { seq, hash: r.hash };
                    last_time = r.time;
                }
                Err(_) => {
                    // A damaged tail must not stop the service; the chain continues from a hash of
                    // the raw bytes and `verify` names the damaged entry.
                    tracing::error!(
                        seq,
                        "last audit entry does not parse; run `frontdesk audit verify`"
                    );
                    head = Head {
                        seq,
                        hash: Hash(Sha256::digest(&v).into()),
                    };
                }
            }
        }
        Ok(AuditLog {
            store,
            state: Mutex::new(HeadState { head, last_time }),
            prune_lock: Mutex::new(()),
            journal: journal::JournalSink::detect(),
            clock: Box::new(Timestamp::now),
        })
    }

    /// Replaces the clock (tests; the log keeps time monotonic regardless).
    #[cfg(test)]
    pub fn with_clock(mut self, clock: impl Fn() -> Timestamp + Send + Sync + 'static) -> Self {
        self.clock = Box::new(clock);
        self
    }

    /// Disables the journald copy (tests and benchmarks on machines that have a journal).
    #[cfg(any(test, feature = "testkit"))]
    pub fn without_journal(mut self) -> Self {
        self.journal = journal::JournalSink::disabled();
        self
    }

    /// The store the log lives in.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    fn lock(&self) -> MutexGuard<'_, HeadState> {
        self.state.lock().expect("audit head lock poisoned")
    }

    /// The current head (last sequence number and hash).
    pub fn head(&self) -> Head {
        self.lock().head
    }

    /// Builds the record that follows `st` and adds it (and the new head) to `batch`.
    fn chain(
        &self,
        st: &HeadState,
        entry: NewEntry,
        batch: &mut fjall::OwnedWriteBatch,
    ) -> Result<AuditRecord> {
        let (action, details) = entry.event.split()?;
        let time = (self.clock)().max(st.last_time);
        let (outcome, reason) = match entry.outcome {
            Outcome::Ok => (Status::Ok, None),
            Outcome::Denied(c) => (Status::Denied, Some(c.as_str().to_string())),
            Outcome::Error(c) => (Status::Error, Some(c.as_str().to_string())),
        };
        let mut rec = AuditRecord {
            seq: st.head.seq + 1,
            time,
            actor: entry.actor,
            action,
            subject: entry.subject.as_ref().map(ShortPseudonym::from),
            purpose: entry.purpose,
            outcome,
            reason,
            request_id: entry.request_id.map(|r| r.to_string()),
            details,
            prev: st.head.hash,
            hash: Hash::ZERO,
        };
        rec.hash = rec.compute_hash();
        let ks = self.store.keyspaces();
        batch.insert(&ks.audit, rec.seq.to_be_bytes(), rec.to_json());
        batch.insert(
            &ks.meta,
            META_HEAD,
            Head {
                seq: rec.seq,
                hash: rec.hash,
            }
            .to_bytes()
            .to_vec(),
        );
        Ok(rec)
    }

    fn advance(st: &mut HeadState, rec: &AuditRecord) {
        st.head = Head {
            seq: rec.seq,
            hash: rec.hash,
        };
        st.last_time = rec.time;
    }

    /// Appends an entry; durable (and sent to the journal) when this returns.
    pub fn append(&self, entry: NewEntry) -> Result<AuditRecord> {
        self.append_with(self.store.batch(), entry)
    }

    /// Appends an entry in the same batch as the caller's writes: the audited change and its
    /// entry become durable together, or neither does.
    pub fn append_with(
        &self,
        mut batch: fjall::OwnedWriteBatch,
        entry: NewEntry,
    ) -> Result<AuditRecord> {
        let rec = {
            let mut st = self.lock();
            let rec = self.chain(&st, entry, &mut batch)?;
            // Applied under the lock so entries reach the keyspace in sequence order; the fsync
            // below is shared with every concurrent writer (group commit).
            batch.commit()?;
            Self::advance(&mut st, &rec);
            rec
        };
        self.store.persist()?;
        self.journal.send(&rec);
        Ok(rec)
    }

    /// Appends several entries in one batch and one fsync (imports, benchmarks); returns the
    /// new head.
    pub fn append_many(&self, entries: impl IntoIterator<Item = NewEntry>) -> Result<Head> {
        self.append_many_with(self.store.batch(), entries)
    }

    /// Appends several entries in the same batch as the caller's writes and commits it durably:
    /// the audited change and its entries become durable together, or none of them does.
    pub fn append_many_with(
        &self,
        mut batch: fjall::OwnedWriteBatch,
        entries: impl IntoIterator<Item = NewEntry>,
    ) -> Result<Head> {
        let mut records = Vec::new();
        let head = {
            let mut st = self.lock();
            let mut next = HeadState {
                head: st.head,
                last_time: st.last_time,
            };
            for entry in entries {
                let rec = self.chain(&next, entry, &mut batch)?;
                Self::advance(&mut next, &rec);
                records.push(rec);
            }
            batch.commit()?;
            *st = next;
            st.head
        };
        self.store.persist()?;
        for rec in &records {
            self.journal.send(rec);
        }
        Ok(head)
    }

    /// Adds an entry to a batch the caller commits later, e.g. inside
    /// [`Store::update_existing`]. The returned guard holds the chain head until it is dropped:
    /// commit the batch durably first (`commit_durable`), then drop the guard. On drop the guard
    /// checks whether the entry reached the keyspace; only then does the chain advance, so a
    /// batch that was never committed leaves no gap.
    pub fn append_in(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        entry: NewEntry,
    ) -> Result<PendingEntry<'_>> {
        let st = self.lock();
        let rec = self.chain(&st, entry, batch)?;
        Ok(PendingEntry {
            log: self,
            state: Some(st),
            record: rec,
        })
    }

    /// Deletes entries older than `days` days before `now`, after appending a checkpoint entry
    /// that records the last pruned entry (so verification starts from it). In a dry run, only
    /// counts.
    pub fn prune(
        &self,
        days: u32,
        now: Timestamp,
        actor: Actor,
        dry_run: bool,
    ) -> Result<PruneReport> {
        let _only_one = self.prune_lock.lock().expect("prune lock poisoned");
        let cutoff = now
            .checked_sub(SignedDuration::from_hours(24 * i64::from(days)))
            .unwrap_or(Timestamp::MIN);
        let ks = &self.store.keyspaces().audit;
        // Times never decrease along the chain, so the old entries are a prefix.
        let mut first: Option<u64> = None;
        let mut last: Option<(u64, Hash)> = None;
        for g in ks.iter() {
            let (k, v) = g.into_inner()?;
            let seq = key_seq(&k).ok_or(AuditError::Corrupt(0, "key is not a sequence number"))?;
            let rec: AuditRecord = serde_json::from_slice(&v)
                .map_err(|_| AuditError::Corrupt(seq, "does not parse"))?;
            if rec.time >= cutoff {
                break;
            }
            first.get_or_insert(seq);
            last = Some((seq, rec.hash));
        }
        let (Some(first), Some((last_seq, last_hash))) = (first, last) else {
            return Ok(PruneReport::default());
        };
        let pruned = last_seq - first + 1;
        if dry_run {
            return Ok(PruneReport {
                pruned,
                checkpoint_seq: None,
            });
        }
        // Checkpoint first: a crash before the deletion leaves entries the checkpoint already
        // covers, which verifies; the other order would leave a chain without its anchor.
        let cp = self.append(NewEntry::new(
            actor,
            AuditEvent::AuditCheckpoint {
                last_pruned_seq: last_seq,
                last_pruned_hash: last_hash,
                pruned,
            },
        ))?;
        let mut batch = self.store.batch();
        let mut pending = 0;
        for seq in first..=last_seq {
            batch.remove(ks, seq.to_be_bytes());
            pending += 1;
            if pending == PRUNE_BATCH {
                self.store
                    .commit_durable(std::mem::replace(&mut batch, self.store.batch()))?;
                pending = 0;
            }
        }
        if pending > 0 {
            self.store.commit_durable(batch)?;
        }
        Ok(PruneReport {
            pruned,
            checkpoint_seq: Some(cp.seq),
        })
    }

    /// Entries matching `filter`, oldest first.
    pub fn query(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>> {
        let mut out = Vec::new();
        self.for_each(filter, |r| {
            out.push(r);
            true
        })?;
        Ok(out)
    }

    /// Calls `f` for every entry matching `filter`, oldest first, until it returns false. Entries
    /// that do not parse are skipped (`verify` reports them).
    pub fn for_each(
        &self,
        filter: &AuditFilter,
        mut f: impl FnMut(AuditRecord) -> bool,
    ) -> Result<u64> {
        let mut n = 0u64;
        for g in self.store.keyspaces().audit.iter() {
            let (_, v) = g.into_inner()?;
            let Ok(rec) = serde_json::from_slice::<AuditRecord>(&v) else {
                continue;
            };
            if filter.until.is_some_and(|u| rec.time >= u) {
                break;
            }
            if filter.matches(&rec) {
                n += 1;
                if !f(rec) || filter.limit.is_some_and(|l| n as usize >= l) {
                    break;
                }
            }
        }
        Ok(n)
    }
}

/// An entry added to a caller's batch; see [`AuditLog::append_in`].
pub struct PendingEntry<'a> {
    log: &'a AuditLog,
    state: Option<MutexGuard<'a, HeadState>>,
    record: AuditRecord,
}

impl PendingEntry<'_> {
    /// The entry as it will be stored once the batch commits.
    pub fn record(&self) -> &AuditRecord {
        &self.record
    }
}

impl Drop for PendingEntry<'_> {
    fn drop(&mut self) {
        let Some(mut st) = self.state.take() else {
            return;
        };
        let stored = self
            .log
            .store
            .keyspaces()
            .audit
            .get(self.record.seq.to_be_bytes())
            .ok()
            .flatten();
        if stored.is_some_and(|v| v[..] == self.record.to_json()[..]) {
            AuditLog::advance(&mut st, &self.record);
            drop(st);
            self.log.journal.send(&self.record);
        }
    }
}

pub(super) fn key_seq(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.try_into().ok()?))
}
