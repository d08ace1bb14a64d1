//! The audit log: an append-only, hash-chained record of every access to personal data, every
//! booking call, rejected webhook, retention run, key and configuration change and admin call.
//!
//! Owns the entry types ([`AuditEvent`], [`Actor`], [`Purpose`], [`Outcome`]), the stored form
//! ([`AuditRecord`]), its canonical encoding and hash, appending ([`AuditLog::append`] and the
//! batch-sharing variants), verification ([`AuditLog::verify`]), pruning with checkpoints
//! ([`AuditLog::prune`]) and the journald copy ([`journal`]).
//!
//! # No personal data by construction
//!
//! An entry names a customer only by the short form of their pseudonym (`c-` + 12 hex digits,
//! [`ShortPseudonym`], which can only be built from a
//! [`Pseudonym`](crate::store::crypto::Pseudonym)). The event details are
//! unsigned integers, booleans and codes; the write-side types hold codes as `&'static str`, so
//! only string literals from the source code can end up in an entry, never runtime text such as a
//! phone number, a name, an e-mail address or a message. The only free-form string is an admin's
//! Unix user name. Entries are therefore stored in clear text.
//!
//! # Storage
//!
//! Keyspace `audit`, key = sequence number (u64 big-endian), value = the JSON form of
//! [`AuditRecord`] exactly as `serde_json` writes it (compact, fields in declaration order).
//! The chain head (`seq || hash`, 40 bytes) is also kept under `audit/head` in the `meta`
//! keyspace, written in the same batch as each entry: it catches a tail truncated by hand inside
//! the store, though not by someone who rewrites both (the journal copy and an externally kept
//! head catch that).
//!
//! # Canonical encoding (version 1)
//!
//! The hash of an entry is `SHA-256(canonical bytes)`; the bytes are, in this order:
//!
//! | field | encoding |
//! |---|---|
//! | domain tag | the 19 bytes `frontdesk-audit-v1` followed by one `0x00` byte |
//! | seq | u64 big-endian |
//! | time | i64 big-endian Unix seconds, then u32 big-endian nanoseconds (0..=999,999,999) |
//! | actor | `str(kind)`; then for `admin`: u32 BE uid, `str(name)`; for `customer`: `str(pseudonym)`; nothing for `system` and `relay` |
//! | action | `str(action)` |
//! | subject | `0x00` when absent, else `0x01` and `str(pseudonym)` |
//! | purpose | `str(purpose)` |
//! | outcome | `str(status)`, then `0x00` when there is no reason, else `0x01` and `str(reason)` |
//! | request id | `0x00` when absent, else `0x01` and `str(request_id)` |
//! | details | u32 BE count, then per detail in ascending byte order of the names: `str(name)`, then `u` (0x75) and u64 BE, or `b` (0x62) and one byte 0/1, or `s` (0x73) and `str(value)` |
//! | prev | the 32 raw bytes of the previous entry's hash (32 zero bytes before the first entry) |
//!
//! `str(x)` is the u32 big-endian byte length of the UTF-8 text followed by the text. The
//! strings are exactly the JSON field values (`kind`, `status` and the other codes as stored).
//! `hash` and `prev` are stored as lowercase hex.
//!
//! # Verification
//!
//! Entries are read in key order. Each must parse, be byte-identical to its own re-serialisation
//! (so no byte can change without changing the parsed entry), sit under the key of its own
//! sequence number, follow its predecessor's sequence number without a gap, carry the hash of
//! its canonical encoding and point with `prev` at its predecessor's hash. The first entry is
//! sequence 1 with a zero `prev`, or else a later `audit.checkpoint` entry (written when old
//! entries are pruned) records the sequence number and hash of the last pruned entry, and the
//! chain must continue exactly there. Finally the tail is compared with the head kept in `meta`,
//! with the journal's last audit entry where the journal is readable, and with a head the
//! verifier is given (`frontdesk audit verify --expect-head SEQ:HASH`, e.g. the last line of an
//! earlier `audit export`): a store whose tail lies before a known head was truncated.

mod events;
pub mod journal;
mod log;
mod record;
#[cfg(test)]
mod tests;
mod verify;

use crate::store::StoreError;

pub use events::{
    user_name, Actor, AuditEvent, Code, Detail, ForgetReason, NewEntry, Outcome, Purpose,
    RequestId, ShortPseudonym, StaffName, Status, CHECKPOINT_ACTION,
};
pub use log::{AuditFilter, AuditLog, PendingEntry, PruneReport, META_HEAD};
pub use record::{AuditRecord, Hash, Head, CSV_HEADER};
pub use verify::{verify_chain, AnchorCheck, Verification, VerifyOptions, VerifyReport};

/// Errors of the audit log. None carries personal data.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The storage engine failed.
    #[error("storage engine: {0}")]
    Engine(#[from] fjall::Error),
    /// An event field is not a count, a flag or a code (a bug in the event type).
    #[error("audit event detail `{0}` is not an unsigned integer, a boolean or a code")]
    BadDetail(String),
    /// A stored entry does not parse or is inconsistent: its sequence number and what is wrong.
    #[error("audit entry {0} is corrupt: {1}")]
    Corrupt(u64, &'static str),
}

/// Results of the audit log.
pub type Result<T, E = AuditError> = std::result::Result<T, E>;
