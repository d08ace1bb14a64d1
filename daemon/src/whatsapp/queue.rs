//! The durable queues of the WhatsApp channel, on the store:
//!
//! - **inbox**: everything a webhook request carried (messages and statuses), written before the
//!   request is answered 200. Key `u64 big-endian sequence`; value a queue row
//!   ([`crate::store::queue_rows`]: the pseudonym in clear in front, so a forget removes a
//!   person's pending entries without opening any, and the entry sealed under that customer's
//!   own data key, so a forget makes every copy of it unreadable at once).
//! - **outbox**: replies waiting to be sent, written in the same durable batch that removes the
//!   inbox entries they answer. Same layout.
//! - **seen**: keyed hashes of processed WhatsApp message ids (`unix seconds` value, for
//!   retention), so a message WhatsApp delivers again — even after a restart — is dropped.
//! - **delivery** rows (in the outbox keyspace under the prefix `d`): one row per state a sent
//!   message reached (`d || hashed id || state`, valued by the time it was recorded), and one
//!   saying how a failure was handled ([`FailureHandling`]). Its state is the furthest of them,
//!   a failure over all. Writers only ever add rows, never read and rewrite one, so statuses
//!   that arrive out of order, in one burst, or while the sender records the send cannot undo
//!   each other. The retention sweep removes them with the seen message ids.
//! - **sent** rows (prefix `s`, keyed by the hashed message id, queue-row layout): what a sent
//!   message was and to whom, kept until WhatsApp reports it delivered or failed, so a `failed`
//!   status arriving after the send call succeeded can be acted on (re-open template, retry);
//!   retention removes one that no status settled with the delivery row of its send.
//! - **deferred** rows (prefix `w`, queue-row layout): replies held back until a not-before time
//!   (the marketing limit, 131049); moved back into the outbox when due, so they never block the
//!   customer's other replies.
//! - **re-open** marks (prefix `r` + pseudonym): when the re-open template was last queued for a
//!   customer, so a closed window leads to one template, not one per reply or per status.
//!
//! Reading: a row whose customer's key is gone (forgotten since it was written) is retired
//! unread and never acted on; a row that cannot be opened is moved to the store's quarantine,
//! counted (`frontdesk_quarantined_rows_total{queue}`), audited (`queue.row_quarantined`) and
//! announced to staff in the journal, and the rest of the queue carries on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::payload::{InboundMessage, StatusUpdate};
use crate::audit::{Actor, AuditEvent, AuditLog, Code, NewEntry};
use crate::metrics::{Metrics, QueueLabel};
use crate::store::crypto::Pseudonym;
use crate::store::queue_rows::{self, Opened};
use crate::store::{ks, Result, Store, StoreError};

/// Prefix of queue rows in the outbox keyspace (delivery rows use `d`).
const QUEUE_PREFIX: u8 = b'q';
const DELIVERY_PREFIX: u8 = crate::store::ks::OUTBOX_DELIVERY_PREFIX;
/// Last key byte of the delivery row saying how a failure was handled (state rows end in the
/// state's own byte, 0 to 4).
const HANDLING_SUFFIX: u8 = 0xff;
const SENT_PREFIX: u8 = crate::store::ks::OUTBOX_SENT_PREFIX;
const DEFERRED_PREFIX: u8 = b'w';
const REOPEN_PREFIX: u8 = b'r';

/// An inbox entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum InboxEntry {
    /// An inbound message to answer.
    Message(InboundMessage),
    /// A delivery status for a message we sent.
    Status(StatusUpdate),
}

/// What the outbox sends.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub enum OutboundKind {
    /// A free-form reply (only inside the 24-hour window).
    Text(String),
    /// An approved message template (allowed outside the 24-hour window).
    Template {
        /// Template name as approved in WhatsApp Manager.
        name: String,
        /// Template language code (`de`, `en_US`).
        language: String,
        /// Body parameters `{{1}}`, `{{2}}`, … in order.
        params: Vec<String>,
        /// Payloads of the template's quick-reply buttons, in the template's button order
        /// (empty for a template without them).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        buttons: Vec<String>,
    },
    /// A free-form reply with reply buttons (an interactive message; only inside the 24-hour
    /// window, like text).
    Buttons {
        /// The message text.
        body: String,
        /// One to three buttons.
        buttons: Vec<ReplyButton>,
    },
}

/// A reply button of an interactive message: WhatsApp sends `id` back when it is tapped.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplyButton {
    /// What a tap sends back (at most 256 characters).
    pub id: String,
    /// The label (at most 20 characters).
    pub title: String,
}

impl OutboundKind {
    /// How the message reads in the contact's history (the model's context, the console): a
    /// reply as written; a template by its name and what frontdesk filled in, since its words
    /// were written by the studio in WhatsApp Manager and are not known here.
    pub fn history_text(&self) -> String {
        match self {
            OutboundKind::Text(t) => t.clone(),
            OutboundKind::Buttons { body, buttons } => {
                let titles: Vec<&str> = buttons.iter().map(|b| b.title.as_str()).collect();
                format!("{body}\n[{}]", titles.join(" | "))
            }
            OutboundKind::Template { name, params, .. } if params.is_empty() => {
                format!("[Vorlage „{name}“]")
            }
            OutboundKind::Template { name, params, .. } => {
                format!("[Vorlage „{name}“: {}]", params.join(" · "))
            }
        }
    }
}

impl std::fmt::Debug for OutboundKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutboundKind::Text(t) => write!(f, "Text({} chars)", t.chars().count()),
            OutboundKind::Buttons { body, buttons } => write!(
                f,
                "Buttons({} chars, {} buttons)",
                body.chars().count(),
                buttons.len()
            ),
            OutboundKind::Template { name, .. } => write!(f, "Template({name})"),
        }
    }
}

/// An outbox entry.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct OutboxEntry {
    /// Recipient address (phone number or WhatsApp user id).
    pub to: String,
    /// What to send.
    pub kind: OutboundKind,
    /// When the entry was queued.
    pub created: Timestamp,
    /// The customer's history rows this message carries (the reply's own row; several after
    /// replies were combined): once sent, WhatsApp's id is recorded on them, so a contact's
    /// quote of the message can be read back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<u64>,
}

impl std::fmt::Debug for OutboxEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OutboxEntry{{to: ***, {:?}}}", self.kind)
    }
}

/// Delivery state of a sent message; only moves forward (sent < delivered < read), except that
/// `Failed` always wins.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeliveryState {
    /// The Graph API accepted the message.
    Accepted,
    /// WhatsApp reported it sent.
    Sent,
    /// Delivered to the recipient's phone.
    Delivered,
    /// The recipient read it.
    Read,
    /// It could not be delivered.
    Failed,
}

/// What was done about a message WhatsApp reported as failed, kept with its delivery state so
/// the record says what happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureHandling {
    /// The reply was replaced by the re-open template (the 24-hour window had closed).
    ReopenTemplate,
    /// The window had closed and the re-open template was already queued for this customer
    /// (or none is configured): the reply was dropped.
    WindowClosedDropped,
    /// WhatsApp cannot deliver to this user: dropped, not sent again.
    Undeliverable,
    /// Held back by the marketing limit: queued again for much later.
    RetryLater,
    /// Queued again to the customer's phone number (the user id could not receive it).
    ResentToPhone,
    /// Dropped and handed to staff.
    StaffAlerted,
    /// Kept for a later attempt while the whole sender slows down (spam rate limit); staff are
    /// alerted.
    SlowedDown,
}

impl FailureHandling {
    fn byte(self) -> u8 {
        match self {
            FailureHandling::ReopenTemplate => 1,
            FailureHandling::WindowClosedDropped => 2,
            FailureHandling::Undeliverable => 3,
            FailureHandling::RetryLater => 4,
            FailureHandling::ResentToPhone => 5,
            FailureHandling::StaffAlerted => 6,
            FailureHandling::SlowedDown => 7,
        }
    }

    fn from_byte(b: u8) -> Option<FailureHandling> {
        Some(match b {
            1 => FailureHandling::ReopenTemplate,
            2 => FailureHandling::WindowClosedDropped,
            3 => FailureHandling::Undeliverable,
            4 => FailureHandling::RetryLater,
            5 => FailureHandling::ResentToPhone,
            6 => FailureHandling::StaffAlerted,
            7 => FailureHandling::SlowedDown,
            _ => return None,
        })
    }
}

/// A reply held back until `not_before`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Deferred {
    /// The reply.
    pub entry: OutboxEntry,
    /// Not sent before this time.
    pub not_before: Timestamp,
}

/// Hands out queue sequence numbers, continuing after the highest one on disk.
pub struct Sequencer {
    next: AtomicU64,
}

impl Sequencer {
    fn after_last(keyspace: &fjall::Keyspace, prefix: &[u8]) -> Result<Sequencer> {
        let next = match keyspace.prefix(prefix).next_back() {
            Some(g) => {
                let k = g.key()?;
                let tail = &k[prefix.len()..];
                u64::from_be_bytes(tail.try_into().map_err(|_| StoreError::Corrupt {
                    keyspace: ks::INBOX,
                    what: "queue key",
                })?) + 1
            }
            None => 0,
        };
        Ok(Sequencer {
            next: AtomicU64::new(next),
        })
    }

    fn take(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }
}

/// Where quarantined rows are reported (the daemon's metrics and audit log).
struct Reporting {
    metrics: Arc<Metrics>,
    audit: Option<Arc<AuditLog>>,
}

/// The queues over one store. Cheap to share.
pub struct Queues {
    inbox_seq: Sequencer,
    outbox_seq: Sequencer,
    deferred_seq: Sequencer,
    reporting: OnceLock<Reporting>,
}

/// A queue row read back.
#[derive(Debug, Clone)]
pub struct Queued<T> {
    /// The row key (for removing or rewriting the row).
    pub key: Vec<u8>,
    /// Whose row it is (stored in clear in front of the sealed entry).
    pub pseudonym: Pseudonym,
    /// The opened entry.
    pub entry: T,
    /// SHA-256 of the stored bytes as read: every rewrite seals afresh (new nonce), so a row
    /// rewritten since it was read no longer matches ([`Queues::stored`]).
    pub fingerprint: [u8; 32],
}

/// An outbox row as it is stored now, compared with how it was read ([`Queues::stored`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Byte for byte as read.
    AsRead,
    /// Rewritten since: what was read is stale.
    Changed,
    /// No longer there.
    Gone,
}

/// What reading one row found.
enum Read<T> {
    Row(Queued<T>),
    /// Retired or quarantined; nothing to act on.
    Gone,
}

fn outbox_key(seq: u64) -> Vec<u8> {
    let mut k = vec![QUEUE_PREFIX];
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The prefix of every delivery row of message `wamid`; a row written before there was one row
/// per state is keyed by it alone (value `time || state || [handling]`).
fn delivery_prefix(store: &Store, wamid: &str) -> Vec<u8> {
    let mut k = vec![DELIVERY_PREFIX];
    k.extend_from_slice(&store.token_hash("wamid", wamid));
    k
}

fn delivery_key(store: &Store, wamid: &str, suffix: u8) -> Vec<u8> {
    let mut k = delivery_prefix(store, wamid);
    k.push(suffix);
    k
}

impl DeliveryState {
    fn from_byte(b: u8) -> Option<DeliveryState> {
        Some(match b {
            0 => DeliveryState::Accepted,
            1 => DeliveryState::Sent,
            2 => DeliveryState::Delivered,
            3 => DeliveryState::Read,
            4 => DeliveryState::Failed,
            _ => return None,
        })
    }
}

/// What the delivery rows of one message say.
#[derive(Default)]
struct DeliveryRecord {
    state: Option<DeliveryState>,
    handling: Option<FailureHandling>,
}

impl DeliveryRecord {
    /// Folds in one more state reached; the order rows are read in does not matter.
    fn reached(&mut self, state: DeliveryState) {
        self.state = self.state.max(Some(state));
    }
}

fn sent_key(store: &Store, wamid: &str) -> Vec<u8> {
    let mut k = vec![SENT_PREFIX];
    k.extend_from_slice(&store.token_hash("wamid", wamid));
    k
}

fn reopen_key(p: &Pseudonym) -> Vec<u8> {
    let mut k = vec![REOPEN_PREFIX];
    k.extend_from_slice(&p.0);
    k
}

/// Seals `entry` as queue row `key` of customer `p` (under their data key).
fn seal_row<T: Serialize>(
    store: &Store,
    keyspace: &str,
    key: &[u8],
    p: &Pseudonym,
    entry: &T,
) -> Result<Vec<u8>> {
    let body = zeroize::Zeroizing::new(serde_json::to_vec(entry).expect("queue entry serialises"));
    store.seal_queue_row(keyspace, key, p, &body)
}

fn fingerprint(value: &[u8]) -> [u8; 32] {
    Sha256::digest(value).into()
}

impl Queues {
    /// The queues over `store`, with sequence numbers continuing after the rows already there.
    pub fn new(store: &Store) -> Result<Queues> {
        Ok(Queues {
            inbox_seq: Sequencer::after_last(&store.keyspaces().inbox, b"")?,
            outbox_seq: Sequencer::after_last(&store.keyspaces().outbox, &[QUEUE_PREFIX])?,
            deferred_seq: Sequencer::after_last(&store.keyspaces().outbox, &[DEFERRED_PREFIX])?,
            reporting: OnceLock::new(),
        })
    }

    /// Counts quarantined rows in `metrics` and audits them in `audit` from now on (without, a
    /// quarantined row is only logged).
    pub fn report_to(&self, metrics: Arc<Metrics>, audit: Option<Arc<AuditLog>>) {
        let _ = self.reporting.set(Reporting { metrics, audit });
    }

    /// Opens the row `key` of `keyspace` (bytes `value`): a row whose customer was forgotten
    /// since is retired, one that cannot be opened is quarantined; both durably.
    fn read<T: for<'de> Deserialize<'de>>(
        &self,
        store: &Store,
        keyspace: &'static str,
        key: &[u8],
        value: &[u8],
    ) -> Result<Read<T>> {
        let opened = store
            .open_queue_row(keyspace, key, value)
            .and_then(|o| match o {
                Opened::Row(p, plain) => serde_json::from_slice(&plain)
                    .map(|entry| Some((p, entry)))
                    .map_err(|_| StoreError::Corrupt {
                        keyspace,
                        what: "queue entry",
                    }),
                Opened::Shredded(_) => Ok(None),
            });
        match opened {
            Ok(Some((p, entry))) => Ok(Read::Row(Queued {
                key: key.to_vec(),
                pseudonym: p,
                entry,
                fingerprint: fingerprint(value),
            })),
            Ok(None) => {
                let p = Pseudonym::from_key_prefix(value);
                info!(customer = ?p, queue = keyspace, "a queue row of a forgotten customer was retired unread");
                let mut batch = store.batch();
                let source = match keyspace {
                    ks::INBOX => &store.keyspaces().inbox,
                    _ => &store.keyspaces().outbox,
                };
                batch.remove(source, key.to_vec());
                store.commit_durable(batch)?;
                Ok(Read::Gone)
            }
            Err(e) if queue_rows::unreadable(&e) => {
                self.quarantine(store, keyspace, key, value, &e)?;
                Ok(Read::Gone)
            }
            Err(e) => Err(e),
        }
    }

    /// Moves an unreadable row to the quarantine; counts, audits and announces it.
    fn quarantine(
        &self,
        store: &Store,
        keyspace: &'static str,
        key: &[u8],
        value: &[u8],
        err: &StoreError,
    ) -> Result<()> {
        store.quarantine_row(keyspace, key, value)?;
        let p = Pseudonym::from_key_prefix(value);
        warn!(customer = ?p, queue = keyspace, error = %err, FRONTDESK_EVENT = "staff.alert", "an unreadable queue row was moved to the quarantine; the rest of the queue carries on");
        let Some(reporting) = self.reporting.get() else {
            return Ok(());
        };
        reporting
            .metrics
            .quarantined_rows
            .get_or_create(&QueueLabel {
                queue: keyspace.into(),
            })
            .inc();
        if let Some(audit) = &reporting.audit {
            let queue = match keyspace {
                ks::INBOX => Code::new("inbox"),
                _ => Code::new("outbox"),
            };
            let mut entry = NewEntry::new(Actor::System, AuditEvent::QueueRowQuarantined { queue });
            if let Some(p) = &p {
                entry = entry.about(p);
            }
            if let Err(e) = audit.append(entry) {
                tracing::error!(error = %e, "auditing a quarantined queue row failed");
            }
        }
        Ok(())
    }

    /// Every row of the outbox keyspace under `prefix` (the outbox proper, the deferred
    /// replies), oldest first.
    fn outbox_rows<T: for<'de> Deserialize<'de>>(
        &self,
        store: &Store,
        prefix: u8,
    ) -> Result<Vec<Queued<T>>> {
        let mut out = Vec::new();
        for g in store.keyspaces().outbox.prefix([prefix]) {
            let (k, v) = g.into_inner()?;
            if let Read::Row(row) = self.read(store, ks::OUTBOX, &k, &v)? {
                out.push(row);
            }
        }
        Ok(out)
    }

    /// Adds inbox rows for `entries` to `batch`; returns their keys in order. A contact without
    /// a data key gets one now, durable before the batch is committed. Call with the entries'
    /// customers locked ([`Store::lock_customers`]) until the batch is committed, so a forget
    /// cannot fall between the key and the rows.
    pub fn push_inbox(
        &self,
        store: &Store,
        batch: &mut fjall::OwnedWriteBatch,
        entries: &[(Pseudonym, InboxEntry)],
    ) -> Result<Vec<Vec<u8>>> {
        entries
            .iter()
            .map(|(p, e)| {
                store.data_key_or_create(p, batch)?;
                let key = self.inbox_seq.take().to_be_bytes().to_vec();
                let v = seal_row(store, ks::INBOX, &key, p, e)?;
                batch.insert(&store.keyspaces().inbox, key.clone(), v);
                Ok(key)
            })
            .collect()
    }

    /// Every inbox row, oldest first.
    pub fn inbox(&self, store: &Store) -> Result<Vec<Queued<InboxEntry>>> {
        let mut out = Vec::new();
        for g in store.keyspaces().inbox.iter() {
            let (k, v) = g.into_inner()?;
            if let Read::Row(row) = self.read(store, ks::INBOX, &k, &v)? {
                out.push(row);
            }
        }
        Ok(out)
    }

    /// Reads one inbox row (`None` when it is gone, or was retired or quarantined now).
    pub fn inbox_entry(&self, store: &Store, key: &[u8]) -> Result<Option<Queued<InboxEntry>>> {
        let Some(v) = store.keyspaces().inbox.get(key)? else {
            return Ok(None);
        };
        Ok(match self.read(store, ks::INBOX, key, &v)? {
            Read::Row(row) => Some(row),
            Read::Gone => None,
        })
    }

    /// Adds the removal of the inbox row at `key` to `batch`.
    pub fn remove_inbox(&self, store: &Store, batch: &mut fjall::OwnedWriteBatch, key: &[u8]) {
        batch.remove(&store.keyspaces().inbox, key.to_vec());
    }

    /// Adds an outbox row to `batch` ([`StoreError::NoDataKey`] when `p` was forgotten).
    pub fn push_outbox(
        &self,
        store: &Store,
        batch: &mut fjall::OwnedWriteBatch,
        p: &Pseudonym,
        entry: &OutboxEntry,
    ) -> Result<Vec<u8>> {
        let key = outbox_key(self.outbox_seq.take());
        let v = seal_row(store, ks::OUTBOX, &key, p, entry)?;
        batch.insert(&store.keyspaces().outbox, key.clone(), v);
        Ok(key)
    }

    /// Every outbox row, oldest first.
    pub fn outbox(&self, store: &Store) -> Result<Vec<Queued<OutboxEntry>>> {
        self.outbox_rows(store, QUEUE_PREFIX)
    }

    /// Whether outbox row `row` is still stored exactly as it was read, or was retired (sent,
    /// dropped, removed by a forget) or rewritten (combined, replaced, moved to a new identity)
    /// since.
    pub fn stored(&self, store: &Store, row: &Queued<OutboxEntry>) -> Result<Stored> {
        Ok(match store.keyspaces().outbox.get(&row.key)? {
            None => Stored::Gone,
            Some(v) if fingerprint(&v) == row.fingerprint => Stored::AsRead,
            Some(_) => Stored::Changed,
        })
    }

    /// Replaces the outbox row at `key` (keeps its place in the order).
    pub fn rewrite_outbox(
        &self,
        store: &Store,
        batch: &mut fjall::OwnedWriteBatch,
        key: &[u8],
        p: &Pseudonym,
        entry: &OutboxEntry,
    ) -> Result<()> {
        let v = seal_row(store, ks::OUTBOX, key, p, entry)?;
        batch.insert(&store.keyspaces().outbox, key.to_vec(), v);
        Ok(())
    }

    /// Adds the removal of the outbox row at `key` to `batch`.
    pub fn remove_outbox(&self, store: &Store, batch: &mut fjall::OwnedWriteBatch, key: &[u8]) {
        batch.remove(&store.keyspaces().outbox, key.to_vec());
    }

    /// Number of rows waiting in the inbox and outbox (approximate, for metrics).
    pub fn depths(&self, store: &Store) -> (usize, usize) {
        let inbox = store.keyspaces().inbox.approximate_len();
        let outbox = store.keyspaces().outbox.prefix([QUEUE_PREFIX]).count();
        (inbox, outbox)
    }

    /// Whether a WhatsApp message id was processed before.
    pub fn seen(&self, store: &Store, wamid: &str) -> Result<bool> {
        Ok(store
            .keyspaces()
            .seen
            .contains_key(store.token_hash("seen", wamid))?)
    }

    /// Marks a WhatsApp message id as processed (in `batch`).
    pub fn mark_seen(
        &self,
        store: &Store,
        batch: &mut fjall::OwnedWriteBatch,
        wamid: &str,
        at: Timestamp,
    ) {
        batch.insert(
            &store.keyspaces().seen,
            store.token_hash("seen", wamid),
            at.as_second().to_be_bytes().to_vec(),
        );
    }

    /// Records (in `batch`) that a sent message reached `state`. Never moves its state
    /// backwards: the state read is the furthest recorded ([`Queues::delivery`]).
    pub fn record_delivery(
        &self,
        store: &Store,
        batch: &mut fjall::OwnedWriteBatch,
        wamid: &str,
        state: DeliveryState,
        at: Timestamp,
    ) {
        batch.insert(
            &store.keyspaces().outbox,
            delivery_key(store, wamid, state as u8),
            at.as_second().to_be_bytes().to_vec(),
        );
    }

    /// Records (in `batch`) that message `wamid` failed and how that was handled.
    pub fn record_failure(
        &self,
        store: &Store,
        batch: &mut fjall::OwnedWriteBatch,
        wamid: &str,
        handling: FailureHandling,
        at: Timestamp,
    ) {
        self.record_delivery(store, batch, wamid, DeliveryState::Failed, at);
        let mut v = at.as_second().to_be_bytes().to_vec();
        v.push(handling.byte());
        batch.insert(
            &store.keyspaces().outbox,
            delivery_key(store, wamid, HANDLING_SUFFIX),
            v,
        );
    }

    /// Reads every delivery row of message `wamid`.
    fn delivery_record(&self, store: &Store, wamid: &str) -> Result<DeliveryRecord> {
        let prefix = delivery_prefix(store, wamid);
        let mut record = DeliveryRecord::default();
        for g in store.keyspaces().outbox.prefix(&prefix) {
            let (k, v) = g.into_inner()?;
            match k.get(prefix.len()).copied() {
                // The single row of the earlier layout.
                None => {
                    if let Some(state) = v.get(8).copied().and_then(DeliveryState::from_byte) {
                        record.reached(state);
                    }
                    if let Some(h) = v.get(9).copied().and_then(FailureHandling::from_byte) {
                        record.handling = Some(h);
                    }
                }
                Some(HANDLING_SUFFIX) => {
                    record.handling = v.get(8).copied().and_then(FailureHandling::from_byte);
                }
                Some(b) => {
                    if let Some(state) = DeliveryState::from_byte(b) {
                        record.reached(state);
                    }
                }
            }
        }
        Ok(record)
    }

    /// How the failure of message `wamid` was handled, if it failed and was handled.
    pub fn delivery_failure(&self, store: &Store, wamid: &str) -> Result<Option<FailureHandling>> {
        Ok(self.delivery_record(store, wamid)?.handling)
    }

    /// Remembers (in `batch`) what was sent as `wamid` and for whom, until a status settles it.
    pub fn record_sent(
        &self,
        store: &Store,
        batch: &mut fjall::OwnedWriteBatch,
        wamid: &str,
        p: &Pseudonym,
        entry: &OutboxEntry,
    ) -> Result<()> {
        let key = sent_key(store, wamid);
        let v = seal_row(store, ks::OUTBOX, &key, p, entry)?;
        batch.insert(&store.keyspaces().outbox, key, v);
        Ok(())
    }

    /// What was sent as `wamid` and for whom, while no status has settled it.
    pub fn sent(&self, store: &Store, wamid: &str) -> Result<Option<(Pseudonym, OutboxEntry)>> {
        let key = sent_key(store, wamid);
        let Some(v) = store.keyspaces().outbox.get(&key)? else {
            return Ok(None);
        };
        Ok(match self.read(store, ks::OUTBOX, &key, &v)? {
            Read::Row(row) => Some((row.pseudonym, row.entry)),
            Read::Gone => None,
        })
    }

    /// Forgets (in `batch`) what was sent as `wamid`: it was delivered, or its failure handled.
    pub fn remove_sent(&self, store: &Store, batch: &mut fjall::OwnedWriteBatch, wamid: &str) {
        batch.remove(&store.keyspaces().outbox, sent_key(store, wamid));
    }

    /// Adds a reply held back until `not_before` to `batch`.
    pub fn push_deferred(
        &self,
        store: &Store,
        batch: &mut fjall::OwnedWriteBatch,
        p: &Pseudonym,
        deferred: &Deferred,
    ) -> Result<()> {
        let mut key = vec![DEFERRED_PREFIX];
        key.extend_from_slice(&self.deferred_seq.take().to_be_bytes());
        let v = seal_row(store, ks::OUTBOX, &key, p, deferred)?;
        batch.insert(&store.keyspaces().outbox, key, v);
        Ok(())
    }

    /// Moves every deferred reply that is due at `now` to the end of the outbox (one durable
    /// write); returns how many moved and when the next one falls due.
    pub fn release_due(&self, store: &Store, now: Timestamp) -> Result<(usize, Option<Timestamp>)> {
        let mut batch = store.batch();
        let mut moved = 0;
        let mut next: Option<Timestamp> = None;
        for row in self.outbox_rows::<Deferred>(store, DEFERRED_PREFIX)? {
            let (p, deferred) = (row.pseudonym, row.entry);
            if deferred.not_before <= now {
                batch.remove(&store.keyspaces().outbox, row.key);
                match self.push_outbox(store, &mut batch, &p, &deferred.entry) {
                    // Forgotten since it was read: removed, not sent.
                    Err(StoreError::NoDataKey) => continue,
                    other => other?,
                };
                moved += 1;
            } else {
                next = Some(next.map_or(deferred.not_before, |n| n.min(deferred.not_before)));
            }
        }
        if moved > 0 {
            store.commit_durable(batch)?;
        }
        Ok((moved, next))
    }

    /// Every deferred reply (for status and tests).
    pub fn deferred(&self, store: &Store) -> Result<Vec<Queued<Deferred>>> {
        self.outbox_rows(store, DEFERRED_PREFIX)
    }

    /// When the re-open template was last queued for customer `p`.
    pub fn reopened_at(&self, store: &Store, p: &Pseudonym) -> Result<Option<Timestamp>> {
        let Some(v) = store.keyspaces().outbox.get(reopen_key(p))? else {
            return Ok(None);
        };
        let secs = v
            .get(crate::store::crypto::PSEUDONYM_LEN..)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(i64::from_be_bytes);
        Ok(secs.and_then(|s| Timestamp::from_second(s).ok()))
    }

    /// Marks (in `batch`) that the re-open template was queued for customer `p` at `at`. The
    /// value starts with the pseudonym, like queue rows, so a forget removes it.
    pub fn mark_reopened(
        &self,
        store: &Store,
        batch: &mut fjall::OwnedWriteBatch,
        p: &Pseudonym,
        at: Timestamp,
    ) {
        let mut v = p.0.to_vec();
        v.extend_from_slice(&at.as_second().to_be_bytes());
        batch.insert(&store.keyspaces().outbox, reopen_key(p), v);
    }

    /// The delivery state of a sent message: the furthest state recorded for it (`Failed`, the
    /// furthest, wins over all).
    pub fn delivery(&self, store: &Store, wamid: &str) -> Result<Option<DeliveryState>> {
        Ok(self.delivery_record(store, wamid)?.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::store::crypto::StoreIdentity;
    use crate::whatsapp::payload::Content;

    fn inbound(id: &str, text: &str) -> InboundMessage {
        InboundMessage {
            id: id.into(),
            from: "491701234567".into(),
            user_id: None,
            parent_user_id: None,
            timestamp: 1_700_000_000,
            phone_number_id: "123".into(),
            contact_name: Some("Dora".into()),
            reply_to: None,
            username: None,
            referral: None,
            error_codes: Vec::new(),
            content: Content::Text(text.into()),
        }
    }

    #[test]
    fn queues_survive_reopen_and_continue_numbering() {
        let dir = tempfile::tempdir().unwrap();
        let id = StoreIdentity::generate();
        let text = id.to_secret_line().to_string();
        let p;
        {
            let store = Store::open(dir.path(), id).unwrap();
            let q = Queues::new(&store).unwrap();
            p = store.pseudonym("491701234567");
            let mut b = store.batch();
            q.push_inbox(
                &store,
                &mut b,
                &[
                    (p, InboxEntry::Message(inbound("wamid.1", "Hallo"))),
                    (p, InboxEntry::Message(inbound("wamid.2", "Hallo nochmal"))),
                ],
            )
            .unwrap();
            q.push_outbox(
                &store,
                &mut b,
                &p,
                &OutboxEntry {
                    to: "491701234567".into(),
                    kind: OutboundKind::Text("Hi!".into()),
                    created: Timestamp::now(),
                    history: Vec::new(),
                },
            )
            .unwrap();
            store.commit_durable(b).unwrap();
        }
        let store = Store::open(dir.path(), StoreIdentity::parse(&text).unwrap()).unwrap();
        let q = Queues::new(&store).unwrap();
        let inbox = q.inbox(&store).unwrap();
        assert_eq!(inbox.len(), 2);
        assert!(matches!(&inbox[0].entry, InboxEntry::Message(m) if m.id == "wamid.1"));
        let mut b = store.batch();
        let keys = q
            .push_inbox(
                &store,
                &mut b,
                &[(p, InboxEntry::Message(inbound("wamid.3", "x")))],
            )
            .unwrap();
        assert_eq!(keys[0], 2u64.to_be_bytes().to_vec());
        store.commit_durable(b).unwrap();
        assert_eq!(q.outbox(&store).unwrap().len(), 1);
        // A forget takes the person's pending queue rows with it.
        store.forget(&[p], Timestamp::now()).unwrap();
        assert!(q.inbox(&store).unwrap().is_empty());
        assert!(q.outbox(&store).unwrap().is_empty());
    }

    fn reply(to: &str, text: &str) -> OutboxEntry {
        OutboxEntry {
            to: to.into(),
            kind: OutboundKind::Text(text.into()),
            created: Timestamp::now(),
            history: Vec::new(),
        }
    }

    /// Every key on disk — the store-wide ones and every customer's — unwrapped.
    fn keys_on_disk(store: &Store) -> Vec<crate::store::crypto::DataKey> {
        let mut out = Vec::new();
        let mut dirs = vec![store.path().join("keys")];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let path = e.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if let Ok(k) = store.identity().unwrap(&std::fs::read(&path).unwrap()) {
                    out.push(k);
                }
            }
        }
        out
    }

    /// Whether any of `keys` opens the sealed part of row `key` of `keyspace`, wherever the
    /// envelope starts.
    fn opens(
        keys: &[crate::store::crypto::DataKey],
        keyspace: &str,
        key: &[u8],
        value: &[u8],
    ) -> bool {
        (16..=17).any(|at| {
            keys.iter()
                .any(|k| k.open(keyspace, key, &value[at..]).is_ok())
        })
    }

    #[test]
    fn a_forgotten_customers_queue_rows_open_with_no_key_left_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreIdentity::generate()).unwrap();
        let q = Queues::new(&store).unwrap();
        let gone = store.pseudonym("491701234567");
        let kept = store.pseudonym("491709876543");
        let mut b = store.batch();
        q.push_inbox(
            &store,
            &mut b,
            &[
                (
                    gone,
                    InboxEntry::Message(inbound("wamid.g1", "Ich heisse Dora")),
                ),
                (kept, InboxEntry::Message(inbound("wamid.k1", "Hallo"))),
            ],
        )
        .unwrap();
        q.push_outbox(&store, &mut b, &gone, &reply("491701234567", "Hallo Dora"))
            .unwrap();
        q.record_sent(
            &store,
            &mut b,
            "wamid.out",
            &gone,
            &reply("491701234567", "Gesendet"),
        )
        .unwrap();
        let later = Deferred {
            entry: reply("491701234567", "Spaeter"),
            not_before: Timestamp::now() + jiff::SignedDuration::from_hours(24),
        };
        q.push_deferred(&store, &mut b, &gone, &later).unwrap();
        q.push_outbox(&store, &mut b, &kept, &reply("491709876543", "Hallo"))
            .unwrap();
        store.commit_durable(b).unwrap();

        // The bytes of every queue row of the customer, as anyone copying the files gets them.
        let mut rows = Vec::new();
        for (name, keyspace) in [
            (ks::INBOX, &store.keyspaces().inbox),
            (ks::OUTBOX, &store.keyspaces().outbox),
        ] {
            for g in keyspace.iter() {
                let (k, v) = g.into_inner().unwrap();
                if v.starts_with(&gone.0) {
                    rows.push((name, k.to_vec(), v.to_vec()));
                }
            }
        }
        assert_eq!(rows.len(), 4, "inbox, outbox, sent and deferred rows");
        let before = keys_on_disk(&store);
        assert!(rows.iter().all(|(n, k, v)| opens(&before, n, k, v)));

        store.forget(&[gone], Timestamp::now()).unwrap();
        let after = keys_on_disk(&store);
        assert!(!after.is_empty());
        for (name, k, v) in &rows {
            assert!(!opens(&after, name, k, v), "a {name} row still opens");
        }
        // The other customer's rows are untouched.
        assert_eq!(q.inbox(&store).unwrap().len(), 1);
        assert_eq!(q.outbox(&store).unwrap()[0].pseudonym, kept);
    }

    #[test]
    fn rows_of_the_previous_layout_are_read_and_drain() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreIdentity::generate()).unwrap();
        let p = store.pseudonym("491701234567");
        let entry = InboxEntry::Message(inbound("wamid.old", "vor dem Update"));
        let inbox_key = 0u64.to_be_bytes();
        let outbox_key = outbox_key(0);
        let mut b = store.batch();
        b.insert(
            &store.keyspaces().inbox,
            inbox_key.to_vec(),
            store.legacy_queue_row(
                ks::INBOX,
                &inbox_key,
                &p,
                &serde_json::to_vec(&entry).unwrap(),
            ),
        );
        let out = reply("491701234567", "Antwort von vorher");
        b.insert(
            &store.keyspaces().outbox,
            outbox_key.clone(),
            store.legacy_queue_row(
                ks::OUTBOX,
                &outbox_key,
                &p,
                &serde_json::to_vec(&out).unwrap(),
            ),
        );
        store.commit_durable(b).unwrap();

        // A contact with no key yet (their first message came before the upgrade) is read.
        let q = Queues::new(&store).unwrap();
        let inbox = q.inbox(&store).unwrap();
        assert_eq!(inbox.len(), 1);
        assert_eq!(inbox[0].entry, entry);
        assert_eq!(q.outbox(&store).unwrap()[0].entry, out);
        assert!(store.quarantined().unwrap().is_empty());
        // New rows of the same queue continue after them.
        let mut b = store.batch();
        let keys = q
            .push_inbox(
                &store,
                &mut b,
                &[(p, InboxEntry::Message(inbound("wamid.new", "x")))],
            )
            .unwrap();
        assert_eq!(keys[0], 1u64.to_be_bytes().to_vec());
    }

    #[test]
    fn an_unreadable_row_is_quarantined_and_the_rest_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreIdentity::generate()).unwrap();
        let q = Queues::new(&store).unwrap();
        let metrics = Arc::new(Metrics::new());
        q.report_to(metrics.clone(), None);
        let (bad, good) = (
            store.pseudonym("491701111111"),
            store.pseudonym("491702222222"),
        );
        let mut b = store.batch();
        let inbox = q
            .push_inbox(
                &store,
                &mut b,
                &[
                    (bad, InboxEntry::Message(inbound("wamid.b", "kaputt"))),
                    (good, InboxEntry::Message(inbound("wamid.g", "heil"))),
                ],
            )
            .unwrap();
        let outbox = q
            .push_outbox(&store, &mut b, &bad, &reply("491701111111", "kaputt"))
            .unwrap();
        q.push_outbox(&store, &mut b, &good, &reply("491702222222", "heil"))
            .unwrap();
        store.commit_durable(b).unwrap();
        // Flip a byte of the sealed part of each bad row.
        for (keyspace, key) in [
            (&store.keyspaces().inbox, &inbox[0]),
            (&store.keyspaces().outbox, &outbox),
        ] {
            let mut v = keyspace.get(key).unwrap().unwrap().to_vec();
            let last = v.len() - 1;
            v[last] ^= 0x55;
            keyspace.insert(key, v).unwrap();
        }

        let read = q.inbox(&store).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].pseudonym, good);
        let sendable = q.outbox(&store).unwrap();
        assert_eq!(sendable.len(), 1);
        assert_eq!(sendable[0].pseudonym, good);
        let counts = store.quarantined().unwrap();
        assert_eq!(counts.get("inbox"), Some(&1));
        assert_eq!(counts.get("outbox"), Some(&1));
        let text = metrics.encode();
        for queue in ["inbox", "outbox"] {
            let line = format!("frontdesk_quarantined_rows_total{{queue=\"{queue}\"}} 1");
            assert!(text.lines().any(|l| l == line), "{line}");
        }
        // Kept raw for an admin; a forget of the customer removes them.
        assert_eq!(store.quarantined_rows().unwrap().len(), 2);
        store.forget(&[bad], Timestamp::now()).unwrap();
        assert!(store.quarantined().unwrap().is_empty());
    }

    #[test]
    fn delivery_state_never_moves_backwards() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreIdentity::generate()).unwrap();
        let q = Queues::new(&store).unwrap();
        let now = Timestamp::now();
        for (state, expect) in [
            (DeliveryState::Accepted, DeliveryState::Accepted),
            (DeliveryState::Read, DeliveryState::Read),
            (DeliveryState::Delivered, DeliveryState::Read),
            (DeliveryState::Failed, DeliveryState::Failed),
            (DeliveryState::Read, DeliveryState::Failed),
        ] {
            let mut b = store.batch();
            q.record_delivery(&store, &mut b, "wamid.x", state, now);
            store.commit_durable(b).unwrap();
            assert_eq!(q.delivery(&store, "wamid.x").unwrap(), Some(expect));
        }
    }

    /// Statuses of one message handled in one burst share a batch, and the sender records the
    /// send while statuses may already be handled: whatever the order of the writes, the
    /// furthest state stands.
    #[test]
    fn delivery_states_written_together_or_late_keep_the_furthest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreIdentity::generate()).unwrap();
        let q = Queues::new(&store).unwrap();
        let now = Timestamp::now();
        let mut b = store.batch();
        for state in [
            DeliveryState::Read,
            DeliveryState::Sent,
            DeliveryState::Delivered,
        ] {
            q.record_delivery(&store, &mut b, "wamid.burst", state, now);
        }
        store.commit_durable(b).unwrap();
        assert_eq!(
            q.delivery(&store, "wamid.burst").unwrap(),
            Some(DeliveryState::Read)
        );
        // The sender's own record of the send, committed after the statuses.
        let mut b = store.batch();
        q.record_delivery(&store, &mut b, "wamid.burst", DeliveryState::Accepted, now);
        store.commit_durable(b).unwrap();
        assert_eq!(
            q.delivery(&store, "wamid.burst").unwrap(),
            Some(DeliveryState::Read)
        );
        // Another message's rows are its own.
        assert_eq!(q.delivery(&store, "wamid.other").unwrap(), None);
    }

    /// Delivery records go with the seen message ids once `seen_ids_days` have passed, and a
    /// send's sealed record with its row; the replies still queued in the same keyspace stay.
    #[test]
    fn retention_removes_old_delivery_records_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreIdentity::generate()).unwrap();
        let q = Queues::new(&store).unwrap();
        let now = Timestamp::now();
        let days = |d: i64| now - jiff::SignedDuration::from_hours(24 * d);
        let mut b = store.batch();
        q.record_delivery(&store, &mut b, "wamid.old", DeliveryState::Read, days(15));
        q.record_failure(
            &store,
            &mut b,
            "wamid.old",
            FailureHandling::Undeliverable,
            days(15),
        );
        q.record_delivery(&store, &mut b, "wamid.new", DeliveryState::Sent, days(13));
        let p = store.pseudonym("491701234567");
        store.data_key_or_create(&p, &mut b).unwrap();
        q.push_outbox(&store, &mut b, &p, &reply("491701234567", "Hi!"))
            .unwrap();
        // Sends that no status settled: one long ago, one recent.
        for (wamid, d) in [("wamid.lost", 15), ("wamid.recent", 13)] {
            q.record_delivery(&store, &mut b, wamid, DeliveryState::Accepted, days(d));
            q.record_sent(
                &store,
                &mut b,
                wamid,
                &p,
                &reply("491701234567", "Bis dann"),
            )
            .unwrap();
        }
        store.commit_durable(b).unwrap();

        let policy = crate::store::retention::RetentionPolicy::default();
        assert_eq!(policy.seen_ids_days, 14);
        let report = store.sweep(&policy, now, false).unwrap();
        assert_eq!(
            report.seen_ids_deleted, 4,
            "two state rows and the handling of one, the send of another"
        );
        assert_eq!(q.delivery(&store, "wamid.old").unwrap(), None);
        // The record of the old send goes with it; the recent one is kept for its status.
        assert!(q.sent(&store, "wamid.lost").unwrap().is_none());
        assert!(q.sent(&store, "wamid.recent").unwrap().is_some());
        assert_eq!(q.delivery_failure(&store, "wamid.old").unwrap(), None);
        assert_eq!(
            q.delivery(&store, "wamid.new").unwrap(),
            Some(DeliveryState::Sent)
        );
        assert_eq!(q.outbox(&store).unwrap().len(), 1);
    }

    /// A store written before there was one row per state keeps its single row readable, and a
    /// later status is folded in with it.
    #[test]
    fn delivery_row_of_the_earlier_layout_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreIdentity::generate()).unwrap();
        let q = Queues::new(&store).unwrap();
        let now = Timestamp::now();
        let mut v = now.as_second().to_be_bytes().to_vec();
        v.push(DeliveryState::Failed as u8);
        v.push(FailureHandling::Undeliverable.byte());
        let mut b = store.batch();
        b.insert(
            &store.keyspaces().outbox,
            delivery_prefix(&store, "wamid.old"),
            v,
        );
        store.commit_durable(b).unwrap();
        let mut b = store.batch();
        q.record_delivery(&store, &mut b, "wamid.old", DeliveryState::Read, now);
        store.commit_durable(b).unwrap();
        assert_eq!(
            q.delivery(&store, "wamid.old").unwrap(),
            Some(DeliveryState::Failed)
        );
        assert_eq!(
            q.delivery_failure(&store, "wamid.old").unwrap(),
            Some(FailureHandling::Undeliverable)
        );
    }
}
