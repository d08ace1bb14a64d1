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
//! [`ShortPseudonym`], which can only be built from a [`Pseudonym`]). The event details are
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

pub mod journal;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::store::crypto::Pseudonym;
use crate::store::{Store, StoreError};

/// Meta key of the chain head (`seq` u64 BE || hash 32 bytes).
pub const META_HEAD: &[u8] = b"audit/head";
/// The action of checkpoint entries written when old entries are pruned.
pub const CHECKPOINT_ACTION: &str = "audit.checkpoint";
const DOMAIN_TAG: &[u8] = b"frontdesk-audit-v1\0";
/// Entries deleted per batch while pruning.
const PRUNE_BATCH: usize = 10_000;

/// Errors of the audit log. None carries personal data.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("storage engine: {0}")]
    Engine(#[from] fjall::Error),
    #[error("audit event detail `{0}` is not an unsigned integer, a boolean or a code")]
    BadDetail(String),
    #[error("audit entry {0} is corrupt: {1}")]
    Corrupt(u64, &'static str),
}

pub type Result<T, E = AuditError> = std::result::Result<T, E>;

/// A SHA-256 hash of an entry (lowercase hex in JSON and text).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    pub const ZERO: Hash = Hash([0; 32]);

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses lowercase hex only, so that every hash has exactly one text form.
    pub fn from_hex(s: &str) -> Option<Hash> {
        if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        Some(Hash(hex::decode(s).ok()?.try_into().ok()?))
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_hex())
    }
}

impl Serialize for Hash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Hash::from_hex(&s)
            .ok_or_else(|| serde::de::Error::custom("expected 64 lowercase hex digits"))
    }
}

/// The end of the chain: the last sequence number and its hash (`0` and zero for an empty log).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Head {
    pub seq: u64,
    pub hash: Hash,
}

impl Head {
    fn to_bytes(self) -> [u8; 40] {
        let mut b = [0u8; 40];
        b[..8].copy_from_slice(&self.seq.to_be_bytes());
        b[8..].copy_from_slice(&self.hash.0);
        b
    }

    fn from_bytes(b: &[u8]) -> Option<Head> {
        if b.len() != 40 {
            return None;
        }
        Some(Head {
            seq: u64::from_be_bytes(b[..8].try_into().ok()?),
            hash: Hash(b[8..].try_into().ok()?),
        })
    }
}

/// `SEQ:HASH`, the form `audit verify --expect-head` takes.
impl fmt::Display for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.seq, self.hash)
    }
}

impl FromStr for Head {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Head, String> {
        let (seq, hash) = s
            .trim()
            .split_once(':')
            .ok_or("expected SEQ:HASH (as printed by `frontdesk audit verify`)")?;
        Ok(Head {
            seq: seq.parse().map_err(|_| "SEQ must be a number")?,
            hash: Hash::from_hex(hash).ok_or("HASH must be 64 lowercase hex digits")?,
        })
    }
}

/// A customer pseudonym in its short form (`c-` + 12 hex digits). Only a [`Pseudonym`] (or a
/// stored entry, validated) makes one, so no other text can stand in an entry's subject.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize)]
#[serde(transparent)]
pub struct ShortPseudonym(String);

impl ShortPseudonym {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn valid(s: &str) -> bool {
        s.len() == 14
            && s.starts_with("c-")
            && s[2..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }
}

impl From<&Pseudonym> for ShortPseudonym {
    fn from(p: &Pseudonym) -> Self {
        ShortPseudonym(p.short())
    }
}

impl<'de> Deserialize<'de> for ShortPseudonym {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if ShortPseudonym::valid(&s) {
            Ok(ShortPseudonym(s))
        } else {
            Err(serde::de::Error::custom("not a short pseudonym"))
        }
    }
}

impl fmt::Display for ShortPseudonym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who acted.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Actor {
    /// A person at the admin socket or running an offline verb: Unix uid and user name.
    Admin { uid: u32, name: String },
    /// The daemon on its own (retention, start-up, tunnel).
    System,
    /// A customer, through their WhatsApp messages.
    Customer { pseudonym: ShortPseudonym },
    /// The relay (webhook deliveries arriving through the tunnel).
    Relay,
}

impl Actor {
    pub fn customer(p: &Pseudonym) -> Actor {
        Actor::Customer {
            pseudonym: p.into(),
        }
    }

    /// The admin running this process (offline verbs).
    pub fn current_user() -> Actor {
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        Actor::Admin {
            uid,
            name: user_name(uid).unwrap_or_else(|| format!("uid{uid}")),
        }
    }

    /// `admin:UID:NAME`, `system`, `customer:c-…` or `relay` (journal field, CSV, filters).
    pub fn label(&self) -> String {
        match self {
            Actor::Admin { uid, name } => format!("admin:{uid}:{name}"),
            Actor::System => "system".into(),
            Actor::Customer { pseudonym } => format!("customer:{pseudonym}"),
            Actor::Relay => "relay".into(),
        }
    }

    /// Matches an `--actor` filter: `system`, `relay`, `customer`, `admin`, a uid, a user name,
    /// a short pseudonym or a whole label.
    pub fn matches(&self, filter: &str) -> bool {
        let label = self.label();
        if label == filter {
            return true;
        }
        match self {
            Actor::Admin { uid, name } => {
                filter == "admin" || filter == uid.to_string() || filter == name
            }
            Actor::Customer { pseudonym } => filter == "customer" || filter == pseudonym.as_str(),
            Actor::System => filter == "system",
            Actor::Relay => filter == "relay",
        }
    }
}

/// The user name of a uid from the password database.
pub fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer refers to live, correctly sized storage; the name is copied out
    // before `buf` is dropped.
    let rc =
        unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        return None;
    }
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

/// Why it was done (the legal basis an auditor asks for).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Purpose {
    /// A data-subject request under the GDPR (access, erasure, portability).
    DsgvoRequest,
    /// Staff helping a customer.
    Support,
    /// Booking a trial training.
    Booking,
    /// Deletion by age.
    Retention,
    /// Access control, verification, rejected requests.
    Security,
    /// Running the service.
    Operations,
}

impl Purpose {
    pub fn code(self) -> &'static str {
        match self {
            Purpose::DsgvoRequest => "dsgvo-request",
            Purpose::Support => "support",
            Purpose::Booking => "booking",
            Purpose::Retention => "retention",
            Purpose::Security => "security",
            Purpose::Operations => "operations",
        }
    }

    pub fn parse(s: &str) -> Option<Purpose> {
        [
            Purpose::DsgvoRequest,
            Purpose::Support,
            Purpose::Booking,
            Purpose::Retention,
            Purpose::Security,
            Purpose::Operations,
        ]
        .into_iter()
        .find(|p| p.code() == s)
    }
}

/// Whether it worked.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Denied,
    Error,
}

impl Status {
    pub fn code(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Denied => "denied",
            Status::Error => "error",
        }
    }
}

/// A reason code: a string literal from the source (`not_admin`, `bad_signature`, …), never
/// runtime text.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Code(&'static str);

impl Code {
    /// Codes are lowercase ASCII letters, digits, `_`, `-` and `.`.
    pub const fn new(code: &'static str) -> Code {
        let b = code.as_bytes();
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            assert!(
                c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-' || c == b'.',
                "audit codes are lowercase ASCII"
            );
            i += 1;
        }
        Code(code)
    }

    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

/// Outcome of the audited action.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Outcome {
    Ok,
    Denied(Code),
    Error(Code),
}

impl Outcome {
    pub fn denied(code: &'static str) -> Outcome {
        Outcome::Denied(Code::new(code))
    }

    pub fn error(code: &'static str) -> Outcome {
        Outcome::Error(Code::new(code))
    }
}

/// Why a customer was forgotten. The free text an admin types stays out of the log.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForgetReason {
    /// An erasure request under Art. 17 GDPR.
    DsgvoRequest,
    /// The customer asked informally.
    CustomerRequest,
    /// Anything else (the admin keeps their own note).
    Other,
}

/// What happened. One variant per kind of audited action; the serde name is the stable dotted
/// action name and the fields are the entry's details (counts, flags and codes only).
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "action")]
pub enum AuditEvent {
    /// An admin read one customer's record (`customers show`).
    #[serde(rename = "customer.read")]
    CustomerRead { messages: u64 },
    /// An admin listed customers without names.
    #[serde(rename = "customer.list")]
    CustomerList { count: u64 },
    /// An admin listed customers with their names (a read of personal data).
    #[serde(rename = "customer.list_names")]
    CustomerListNames { count: u64 },
    /// A customer's data left the box as an encrypted export (written before the bytes leave).
    #[serde(rename = "customer.export")]
    CustomerExport {
        messages: u64,
        bookings: u64,
        audit_entries: u64,
    },
    /// A customer was forgotten (rows deleted, key crypto-shredded).
    #[serde(rename = "customer.forget")]
    CustomerForget { reason: ForgetReason, existed: bool },
    /// The bot was paused for one customer.
    #[serde(rename = "customer.pause")]
    CustomerPause,
    /// The bot was resumed for one customer.
    #[serde(rename = "customer.resume")]
    CustomerResume,
    /// The conversation was handed over to staff (complaint, cancellation).
    #[serde(rename = "customer.escalate")]
    CustomerEscalate { reason: Code },
    /// The customer opted out of messages.
    #[serde(rename = "customer.opt_out")]
    CustomerOptOut,
    /// A MagicLine booking call is about to be made (`flow`: `member` or `lead`).
    #[serde(rename = "booking.attempt")]
    BookingAttempt { flow: Code },
    /// MagicLine confirmed a booking.
    #[serde(rename = "booking.booked")]
    BookingBooked {
        flow: Code,
        #[serde(skip_serializing_if = "Option::is_none")]
        booking_id: Option<u64>,
    },
    /// A booking call failed (reason code in the outcome).
    #[serde(rename = "booking.failed")]
    BookingFailed { flow: Code },
    /// A webhook request was rejected (bad signature, too large, malformed …).
    #[serde(rename = "webhook.rejected")]
    WebhookRejected { reason: Code },
    /// Inbound messages were dropped without an answer or a customer record (`reason`:
    /// `invalid_sender` for an address that is neither a phone number nor a WhatsApp user id).
    #[serde(rename = "message.dropped")]
    MessageDropped { reason: Code, messages: u64 },
    /// A WhatsApp message was sent (`kind`: text, template, …).
    #[serde(rename = "message.sent")]
    MessageSent { kind: Code },
    /// A WhatsApp message could not be sent (Graph API error code when known).
    #[serde(rename = "message.failed")]
    MessageFailed {
        kind: Code,
        #[serde(skip_serializing_if = "Option::is_none")]
        api_code: Option<u64>,
    },
    /// A retention run (counts of what it deleted or, in a dry run, would delete).
    #[serde(rename = "retention.purge")]
    RetentionPurge {
        messages_deleted: u64,
        customers_forgotten: u64,
        seen_ids_deleted: u64,
        audit_entries_pruned: u64,
        dry_run: bool,
    },
    /// Old audit entries were pruned; the chain continues from the last pruned entry.
    #[serde(rename = "audit.checkpoint")]
    AuditCheckpoint {
        last_pruned_seq: u64,
        last_pruned_hash: Hash,
        pruned: u64,
    },
    /// The audit log was read (`audit show`).
    #[serde(rename = "audit.read")]
    AuditRead { entries: u64 },
    /// The audit log was exported (`format`: jsonl or csv).
    #[serde(rename = "audit.export")]
    AuditExport { entries: u64, format: Code },
    /// The audit chain was verified (`intact` tells the result).
    #[serde(rename = "audit.verify")]
    AuditVerify { entries: u64, intact: bool },
    /// The lead-funnel statistics were read.
    #[serde(rename = "stats.read")]
    StatsRead,
    /// The service status was read.
    #[serde(rename = "admin.status")]
    AdminStatus,
    /// A caller outside root and the admin group was turned away.
    #[serde(rename = "admin.denied")]
    AdminDenied { endpoint: Code },
    /// A backup of the whole store was written.
    #[serde(rename = "store.backup")]
    StoreBackup { records: u64, bytes: u64 },
    /// The store was replaced by a backup; `replaced_*` name the head of the log it replaced.
    #[serde(rename = "store.restore")]
    StoreRestore {
        records: u64,
        erasures_reapplied: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        replaced_head_seq: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        replaced_head_hash: Option<Hash>,
    },
    /// Every data key was re-wrapped to a new store identity.
    #[serde(rename = "store.identity_rotated")]
    IdentityRotated { keys: u64 },
    /// The configuration was loaded at start.
    #[serde(rename = "config.loaded")]
    ConfigLoaded,
    /// The configuration was reloaded (SIGHUP).
    #[serde(rename = "config.reloaded")]
    ConfigReloaded { ok: bool },
    /// The service started.
    #[serde(rename = "service.started")]
    ServiceStarted { version: Code },
    /// The service stopped.
    #[serde(rename = "service.stopped")]
    ServiceStopped,
    /// The tunnel to the relay is up.
    #[serde(rename = "tunnel.connected")]
    TunnelConnected,
    /// The tunnel to the relay was lost.
    #[serde(rename = "tunnel.lost")]
    TunnelLost { reason: Code },
    /// The relay refused this box's token.
    #[serde(rename = "tunnel.auth_failed")]
    TunnelAuthFailed,
}

impl AuditEvent {
    /// The purpose an event has unless the caller says otherwise.
    pub fn default_purpose(&self) -> Purpose {
        use AuditEvent::*;
        match self {
            CustomerExport { .. } | CustomerForget { .. } => Purpose::DsgvoRequest,
            CustomerRead { .. }
            | CustomerList { .. }
            | CustomerListNames { .. }
            | CustomerPause
            | CustomerResume
            | CustomerEscalate { .. }
            | CustomerOptOut => Purpose::Support,
            BookingAttempt { .. } | BookingBooked { .. } | BookingFailed { .. } => Purpose::Booking,
            RetentionPurge { .. } | AuditCheckpoint { .. } => Purpose::Retention,
            WebhookRejected { .. }
            | MessageDropped { .. }
            | AdminDenied { .. }
            | AuditVerify { .. }
            | AuditRead { .. }
            | AuditExport { .. }
            | IdentityRotated { .. }
            | TunnelAuthFailed => Purpose::Security,
            _ => Purpose::Operations,
        }
    }

    /// The action name and the details, as stored.
    fn split(&self) -> Result<(String, BTreeMap<String, Detail>)> {
        let value = serde_json::to_value(self).expect("audit events serialise");
        let serde_json::Value::Object(map) = value else {
            unreachable!("internally tagged enums serialise to objects")
        };
        let mut action = String::new();
        let mut details = BTreeMap::new();
        for (k, v) in map {
            if k == "action" {
                action = v.as_str().unwrap_or_default().to_string();
                continue;
            }
            let d = match v {
                serde_json::Value::Bool(b) => Detail::Flag(b),
                serde_json::Value::Number(n) => {
                    Detail::Count(n.as_u64().ok_or_else(|| AuditError::BadDetail(k.clone()))?)
                }
                serde_json::Value::String(s) => Detail::Code(s),
                serde_json::Value::Null => continue,
                _ => return Err(AuditError::BadDetail(k)),
            };
            details.insert(k, d);
        }
        Ok((action, details))
    }

    /// The stable dotted action name (`customer.forget`, …).
    pub fn action(&self) -> String {
        self.split().map(|(a, _)| a).unwrap_or_default()
    }
}

/// One detail value of a stored entry.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Detail {
    Count(u64),
    Flag(bool),
    Code(String),
}

/// A new entry before it gets its place in the chain.
#[derive(Clone, Debug)]
pub struct NewEntry {
    pub actor: Actor,
    pub event: AuditEvent,
    pub subject: Option<Pseudonym>,
    pub purpose: Purpose,
    pub outcome: Outcome,
    pub request_id: Option<RequestId>,
}

impl NewEntry {
    /// An entry with the event's default purpose, no subject and outcome ok.
    pub fn new(actor: Actor, event: AuditEvent) -> NewEntry {
        let purpose = event.default_purpose();
        NewEntry {
            actor,
            event,
            subject: None,
            purpose,
            outcome: Outcome::Ok,
            request_id: None,
        }
    }

    /// The customer the action concerns.
    pub fn about(mut self, p: &Pseudonym) -> Self {
        self.subject = Some(*p);
        self
    }

    pub fn purpose(mut self, purpose: Purpose) -> Self {
        self.purpose = purpose;
        self
    }

    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }

    pub fn request(mut self, id: RequestId) -> Self {
        self.request_id = Some(id);
        self
    }
}

/// A request id (random 64 bits, 16 hex digits) tying an entry to an admin call or a webhook.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RequestId(pub u64);

impl RequestId {
    pub fn random() -> RequestId {
        RequestId(rand::random())
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// An entry as stored (and exported). See the module doc for its canonical encoding.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    pub seq: u64,
    pub time: Timestamp,
    pub actor: Actor,
    pub action: String,
    pub subject: Option<ShortPseudonym>,
    pub purpose: Purpose,
    pub outcome: Status,
    pub reason: Option<String>,
    pub request_id: Option<String>,
    pub details: BTreeMap<String, Detail>,
    pub prev: Hash,
    pub hash: Hash,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

impl AuditRecord {
    /// The canonical bytes the hash covers (module doc, "Canonical encoding").
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(DOMAIN_TAG);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.time.as_second().to_be_bytes());
        out.extend_from_slice(&(self.time.subsec_nanosecond() as u32).to_be_bytes());
        match &self.actor {
            Actor::Admin { uid, name } => {
                put_str(&mut out, "admin");
                out.extend_from_slice(&uid.to_be_bytes());
                put_str(&mut out, name);
            }
            Actor::System => put_str(&mut out, "system"),
            Actor::Customer { pseudonym } => {
                put_str(&mut out, "customer");
                put_str(&mut out, pseudonym.as_str());
            }
            Actor::Relay => put_str(&mut out, "relay"),
        }
        put_str(&mut out, &self.action);
        put_opt_str(&mut out, self.subject.as_ref().map(|s| s.as_str()));
        put_str(&mut out, self.purpose.code());
        put_str(&mut out, self.outcome.code());
        put_opt_str(&mut out, self.reason.as_deref());
        put_opt_str(&mut out, self.request_id.as_deref());
        out.extend_from_slice(&(self.details.len() as u32).to_be_bytes());
        // BTreeMap<String, _> iterates in ascending byte order of the names.
        for (name, value) in &self.details {
            put_str(&mut out, name);
            match value {
                Detail::Count(n) => {
                    out.push(b'u');
                    out.extend_from_slice(&n.to_be_bytes());
                }
                Detail::Flag(b) => {
                    out.push(b'b');
                    out.push(u8::from(*b));
                }
                Detail::Code(s) => {
                    out.push(b's');
                    put_str(&mut out, s);
                }
            }
        }
        out.extend_from_slice(&self.prev.0);
        out
    }

    /// SHA-256 over [`AuditRecord::canonical_bytes`].
    pub fn compute_hash(&self) -> Hash {
        Hash(Sha256::digest(self.canonical_bytes()).into())
    }

    /// The stored JSON form.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("audit records serialise")
    }

    fn detail_u64(&self, name: &str) -> Option<u64> {
        match self.details.get(name)? {
            Detail::Count(n) => Some(*n),
            _ => None,
        }
    }

    fn detail_hash(&self, name: &str) -> Option<Hash> {
        match self.details.get(name)? {
            Detail::Code(s) => Hash::from_hex(s),
            _ => None,
        }
    }

    /// One CSV line (RFC 4180 quoting), matching [`CSV_HEADER`].
    pub fn to_csv_line(&self) -> String {
        fn q(s: &str) -> String {
            if s.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_string()
            }
        }
        let details = serde_json::to_string(&self.details).expect("details serialise");
        [
            self.seq.to_string(),
            self.time.to_string(),
            self.actor.label(),
            self.action.clone(),
            self.subject
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            self.purpose.code().to_string(),
            self.outcome.code().to_string(),
            self.reason.clone().unwrap_or_default(),
            self.request_id.clone().unwrap_or_default(),
            details,
            self.prev.to_hex(),
            self.hash.to_hex(),
        ]
        .iter()
        .map(|s| q(s))
        .collect::<Vec<_>>()
        .join(",")
    }
}

/// Header line of the CSV export.
pub const CSV_HEADER: &str =
    "seq,time,actor,action,subject,purpose,outcome,reason,request_id,details,prev,hash";

/// The result of a verification.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Verification {
    /// Every entry checks out; `head` is the last one.
    Ok { entries: u64, head: Head },
    /// The first entry that does not check out, and why.
    Broken { first_bad_seq: u64, reason: String },
}

/// What the tail was compared with beyond the store itself.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(tag = "anchor", rename_all = "snake_case")]
pub enum AnchorCheck {
    /// Compared with a head the verifier was given.
    Given { head: Head },
    /// Compared with the journal's last audit entry.
    Journal { head: Head },
    /// The journal could not be consulted (why); only the store was checked.
    JournalUnavailable { why: String },
}

/// Verification result plus the anchors used.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct VerifyReport {
    pub verification: Verification,
    pub anchors: Vec<AnchorCheck>,
}

impl VerifyReport {
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
    pub since: Option<Timestamp>,
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
    pub fn with_clock(mut self, clock: impl Fn() -> Timestamp + Send + Sync + 'static) -> Self {
        self.clock = Box::new(clock);
        self
    }

    /// Disables the journald copy (tests and benchmarks on machines that have a journal).
    pub fn without_journal(mut self) -> Self {
        self.journal = journal::JournalSink::disabled();
        self
    }

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
        let mut batch = self.store.batch();
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

    /// Verifies the chain in the store and compares its tail with the recorded head, the
    /// journal (when asked and readable) and a given head.
    pub fn verify(&self, opts: &VerifyOptions) -> Result<VerifyReport> {
        let store = &self.store;
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

/// An entry added to a caller's batch; see [`AuditLog::append_in`].
pub struct PendingEntry<'a> {
    log: &'a AuditLog,
    state: Option<MutexGuard<'a, HeadState>>,
    record: AuditRecord,
}

impl PendingEntry<'_> {
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

fn key_seq(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.try_into().ok()?))
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
