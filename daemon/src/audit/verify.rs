//! Verification of the chain: walking the stored entries ([`verify_chain`]), comparing the tail
//! with heads known from elsewhere ([`AuditLog::verify`]) and the report ([`VerifyReport`],
//! [`Verification`], [`AnchorCheck`]).

use serde::{Deserialize, Serialize};

use super::log::key_seq;
use super::{journal, AuditError, AuditLog, AuditRecord, Hash, Head, Result};
use super::{CHECKPOINT_ACTION, META_HEAD};

/// The result of a verification.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Verification {
    /// Every entry checks out; `head` is the last one.
    Ok {
        /// Entries checked.
        entries: u64,
        /// The last entry.
        head: Head,
    },
    /// The first entry that does not check out, and why.
    Broken {
        /// Sequence number of the first bad entry (or where the missing part starts).
        first_bad_seq: u64,
        /// What is wrong, in words.
        reason: String,
    },
}

/// What the tail was compared with beyond the store itself.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(tag = "anchor", rename_all = "snake_case")]
pub enum AnchorCheck {
    /// Compared with a head the verifier was given.
    Given {
        /// The head given to the verifier.
        head: Head,
    },
    /// Compared with the journal's last audit entry.
    Journal {
        /// The head of the journal's last audit entry.
        head: Head,
    },
    /// The journal could not be consulted (why); only the store was checked.
    JournalUnavailable {
        /// Why the journal could not be read.
        why: String,
    },
}

/// Verification result plus the anchors used.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct VerifyReport {
    /// The chain walk, with the comparisons with the anchors folded in.
    pub verification: Verification,
    /// The heads from outside the store that were consulted, and a journal that could not be.
    pub anchors: Vec<AnchorCheck>,
}

impl VerifyReport {
    /// The chain checks out and its tail agrees with every anchor.
    pub fn is_ok(&self) -> bool {
        matches!(self.verification, Verification::Ok { .. })
    }
}

/// Options of [`AuditLog::verify`].
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// A head known from outside the store (an earlier export, a note).
    pub expected_head: Option<Head>,
    /// The journal's last audit entry, read by someone allowed to read the journal.
    pub journal_head: Option<Head>,
    /// Read the journal's last audit entry here (when `journal_head` is absent).
    pub use_journal: bool,
}

impl AuditLog {
    /// Verifies the chain in the store and compares its tail with the recorded head, the
    /// journal (when asked and readable) and a given head.
    pub fn verify(&self, opts: &VerifyOptions) -> Result<VerifyReport> {
        let store = self.store();
        let meta_head = store
            .keyspaces()
            .meta
            .get(META_HEAD)?
            .and_then(|v| Head::from_bytes(&v));
        let ks = store.keyspaces().audit.clone();
        let lookup = |seq: u64| -> Option<AuditRecord> {
            let v = ks.get(seq.to_be_bytes()).ok()??;
            serde_json::from_slice(&v).ok()
        };
        let iter = store.keyspaces().audit.iter().map(|g| {
            g.into_inner()
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(AuditError::from)
        });
        let mut verification = verify_chain(iter, &lookup)?;
        let mut anchors = Vec::new();
        let check = |verification: &mut Verification, head: Head, what: &str| {
            if let Verification::Ok { head: tail, .. } = *verification {
                if let Some(broken) = compare_anchor(tail, head, what, &lookup) {
                    *verification = broken;
                }
            }
        };
        if let Some(h) = meta_head {
            check(&mut verification, h, "the head recorded in the store");
        } else if let Verification::Ok { entries, .. } = verification {
            if entries > 0 {
                verification = Verification::Broken {
                    first_bad_seq: 1,
                    reason: "the store's record of the chain head is missing".into(),
                };
            }
        }
        let journal = match opts.journal_head {
            Some(h) => Some(Ok(h)),
            None => opts.use_journal.then(journal::last_head),
        };
        if let Some(journal) = journal {
            match journal {
                Ok(h) => {
                    check(&mut verification, h, "the journal's last audit entry");
                    anchors.push(AnchorCheck::Journal { head: h });
                }
                Err(why) => anchors.push(AnchorCheck::JournalUnavailable { why }),
            }
        }
        if let Some(h) = opts.expected_head {
            check(&mut verification, h, "the expected head");
            anchors.push(AnchorCheck::Given { head: h });
        }
        Ok(VerifyReport {
            verification,
            anchors,
        })
    }
}

fn broken(seq: u64, reason: impl Into<String>) -> Verification {
    Verification::Broken {
        first_bad_seq: seq,
        reason: reason.into(),
    }
}

/// Compares a verified tail with a head known from elsewhere.
fn compare_anchor(
    tail: Head,
    anchor: Head,
    what: &str,
    lookup: &dyn Fn(u64) -> Option<AuditRecord>,
) -> Option<Verification> {
    if anchor.seq == 0 {
        return None;
    }
    if anchor.seq > tail.seq {
        return Some(broken(
            tail.seq + 1,
            format!(
                "truncated: the log ends at {} but {what} is entry {}",
                tail.seq, anchor.seq
            ),
        ));
    }
    match lookup(anchor.seq) {
        Some(r) if r.hash == anchor.hash => None,
        Some(_) => Some(broken(
            anchor.seq,
            format!("entry {} differs from {what}", anchor.seq),
        )),
        // Pruned since: nothing left to compare with.
        None => None,
    }
}

/// Verifies a sequence of raw `(key, value)` rows in key order (see the module doc).
/// `lookup` reads one already-walked entry by sequence number.
pub fn verify_chain(
    rows: impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>>,
    lookup: &dyn Fn(u64) -> Option<AuditRecord>,
) -> Result<Verification> {
    let mut entries = 0u64;
    let mut prev: Option<Head> = None;
    let mut start: Option<(u64, Hash)> = None;
    // The checkpoint that covers the most pruned entries.
    let mut checkpoint: Option<(u64, Hash)> = None;
    for row in rows {
        let (k, v) = row?;
        let expected_seq = prev.map(|p| p.seq + 1);
        let Some(seq) = key_seq(&k) else {
            return Ok(broken(
                expected_seq.unwrap_or(1),
                "a row key is not a sequence number",
            ));
        };
        if let Some(e) = expected_seq {
            if seq != e {
                return Ok(broken(e, format!("entry {e} is missing (deleted)")));
            }
        }
        let Ok(rec) = serde_json::from_slice::<AuditRecord>(&v) else {
            return Ok(broken(seq, "entry does not parse (changed)"));
        };
        if rec.to_json() != v {
            return Ok(broken(seq, "entry is not in its canonical form (changed)"));
        }
        if rec.seq != seq {
            return Ok(broken(
                seq,
                format!(
                    "entry stored under {seq} says it is {} (moved or reordered)",
                    rec.seq
                ),
            ));
        }
        if rec.compute_hash() != rec.hash {
            return Ok(broken(seq, "hash does not match the content (changed)"));
        }
        match prev {
            Some(p) if rec.prev != p.hash => {
                return Ok(broken(seq, "does not link to the previous entry's hash"));
            }
            Some(_) => {}
            None if seq == 1 => {
                if rec.prev != Hash::ZERO {
                    return Ok(broken(1, "the first entry must link to the zero hash"));
                }
            }
            None => start = Some((seq, rec.prev)),
        }
        if rec.action == CHECKPOINT_ACTION {
            let (Some(ls), Some(lh)) = (
                rec.detail_u64("last_pruned_seq"),
                rec.detail_hash("last_pruned_hash"),
            ) else {
                return Ok(broken(seq, "checkpoint without last_pruned_seq/hash"));
            };
            if checkpoint.is_none_or(|(s, _)| ls > s) {
                checkpoint = Some((ls, lh));
            }
        }
        entries += 1;
        prev = Some(Head {
            seq,
            hash: rec.hash,
        });
    }
    if let Some((first, first_prev)) = start {
        match checkpoint {
            None => {
                return Ok(broken(
                    1,
                    format!("entries before {first} are missing and no checkpoint covers them"),
                ))
            }
            Some((last, _)) if last + 1 < first => {
                return Ok(broken(
                    last + 1,
                    format!(
                        "entry {} is missing (the checkpoint pruned up to {last})",
                        last + 1
                    ),
                ))
            }
            Some((last, hash)) if last + 1 == first => {
                if hash != first_prev {
                    return Ok(broken(first, "does not continue from the checkpoint"));
                }
            }
            Some((last, hash)) => {
                // Pruning stopped between checkpoint and deletion: the entry is still here.
                if lookup(last).is_none_or(|r| r.hash != hash) {
                    return Ok(broken(last, "differs from the checkpoint's record of it"));
                }
            }
        }
    }
    Ok(Verification::Ok {
        entries,
        head: prev.unwrap_or_default(),
    })
}
