//! The durable queues of the WhatsApp channel, on the store:
//!
//! - **inbox**: everything a webhook request carried (messages and statuses), written before the
//!   request is answered 200. Key `u64 big-endian sequence`; value `pseudonym (16) || sealed
//!   entry` (sealed with the store's queue key; the pseudonym in front lets a forget remove a
//!   person's pending entries without opening any).
//! - **outbox**: replies waiting to be sent, written in the same durable batch that removes the
//!   inbox entries they answer. Same layout.
//! - **seen**: keyed hashes of processed WhatsApp message ids (`unix seconds` value, for
//!   retention), so a message WhatsApp delivers again — even after a restart — is dropped.
//! - **delivery** rows (in the outbox keyspace under the prefix `d`): the delivery state of each
//!   sent message, updated by status webhooks, which may arrive out of order, and how a failure
//!   was handled ([`FailureHandling`]).
//! - **sent** rows (prefix `s`, keyed by the hashed message id, queue-row layout): what a sent
//!   message was and to whom, kept until WhatsApp reports it delivered or failed, so a `failed`
//!   status arriving after the send call succeeded can be acted on (re-open template, retry).
//! - **deferred** rows (prefix `w`, queue-row layout): replies held back until a not-before time
//!   (the marketing limit, 131049); moved back into the outbox when due, so they never block the
//!   customer's other replies.
//! - **re-open** marks (prefix `r` + pseudonym): when the re-open template was last queued for a
//!   customer, so a closed window leads to one template, not one per reply or per status.

use std::sync::atomic::{AtomicU64, Ordering};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::payload::{InboundMessage, StatusUpdate};
use crate::store::crypto::{Pseudonym, PSEUDONYM_LEN};
use crate::store::{ks, Result, Store, StoreError};

/// Prefix of queue rows in the outbox keyspace (delivery rows use `d`).
const QUEUE_PREFIX: u8 = b'q';
const DELIVERY_PREFIX: u8 = b'd';
const SENT_PREFIX: u8 = b's';
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
    },
}

impl std::fmt::Debug for OutboundKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutboundKind::Text(t) => write!(f, "Text({} chars)", t.chars().count()),
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

/// The queues over one store. Cheap to share.
pub struct Queues {
    inbox_seq: Sequencer,
    outbox_seq: Sequencer,
    deferred_seq: Sequencer,
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
}

fn outbox_key(seq: u64) -> Vec<u8> {
    let mut k = vec![QUEUE_PREFIX];
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn delivery_key(store: &Store, wamid: &str) -> Vec<u8> {
    let mut k = vec![DELIVERY_PREFIX];
    k.extend_from_slice(&store.token_hash("wamid", wamid));
    k
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

fn seal_row<T: Serialize>(
    store: &Store,
    keyspace: &str,
    key: &[u8],
    p: &Pseudonym,
    entry: &T,
) -> Vec<u8> {
    let body = serde_json::to_vec(entry).expect("queue entry serialises");
    let mut v = p.0.to_vec();
    v.extend_from_slice(&store.queue_key().seal(keyspace, key, &body));
    v
}

/// Every row of the outbox keyspace under `prefix` (the outbox proper, the deferred replies),
/// oldest first.
fn outbox_rows<T: serde::de::DeserializeOwned>(
    store: &Store,
    prefix: u8,
) -> Result<Vec<Queued<T>>> {
    let mut out = Vec::new();
    for g in store.keyspaces().outbox.prefix([prefix]) {
        let (k, v) = g.into_inner()?;
        let (p, entry) = open_row(store, ks::OUTBOX, &k, &v)?;
        out.push(Queued {
            key: k.to_vec(),
            pseudonym: p,
            entry,
        });
    }
    Ok(out)
}

fn open_row<T: for<'de> Deserialize<'de>>(
    store: &Store,
    keyspace: &'static str,
    key: &[u8],
    value: &[u8],
) -> Result<(Pseudonym, T)> {
    let corrupt = StoreError::Corrupt {
        keyspace,
        what: "queue row",
    };
    let p = Pseudonym::from_key_prefix(value).ok_or(corrupt)?;
    let plain = store
        .queue_key()
        .open(keyspace, key, &value[PSEUDONYM_LEN..])?;
    let entry = serde_json::from_slice(&plain).map_err(|_| StoreError::Corrupt {
        keyspace,
        what: "queue entry",
    })?;
    Ok((p, entry))
}

impl Queues {
    /// The queues over `store`, with sequence numbers continuing after the rows already there.
    pub fn new(store: &Store) -> Result<Queues> {
        Ok(Queues {
            inbox_seq: Sequencer::after_last(&store.keyspaces().inbox, b"")?,
            outbox_seq: Sequencer::after_last(&store.keyspaces().outbox, &[QUEUE_PREFIX])?,
            deferred_seq: Sequencer::after_last(&store.keyspaces().outbox, &[DEFERRED_PREFIX])?,
        })
    }

    /// Adds inbox rows for `entries` to `batch`; returns their keys in order.
    pub fn push_inbox(
        &self,
        store: &Store,
        batch: &mut fjall::OwnedWriteBatch,
        entries: &[(Pseudonym, InboxEntry)],
    ) -> Vec<Vec<u8>> {
        entries
            .iter()
            .map(|(p, e)| {
                let key = self.inbox_seq.take().to_be_bytes().to_vec();
                let v = seal_row(store, ks::INBOX, &key, p, e);
                batch.insert(&store.keyspaces().inbox, key.clone(), v);
                key
            })
            .collect()
    }

    /// Every inbox row, oldest first.
    pub fn inbox(&self, store: &Store) -> Result<Vec<Queued<InboxEntry>>> {
        let mut out = Vec::new();
        for g in store.keyspaces().inbox.iter() {
            let (k, v) = g.into_inner()?;
            let (p, entry) = open_row(store, ks::INBOX, &k, &v)?;
            out.push(Queued {
                key: k.to_vec(),
                pseudonym: p,
                entry,
            });
        }
        Ok(out)
    }

    /// Reads one inbox row.
    pub fn inbox_entry(&self, store: &Store, key: &[u8]) -> Result<Option<Queued<InboxEntry>>> {
        let Some(v) = store.keyspaces().inbox.get(key)? else {
            return Ok(None);
        };
        let (p, entry) = open_row(store, ks::INBOX, key, &v)?;
        Ok(Some(Queued {
            key: key.to_vec(),
            pseudonym: p,
            entry,
        }))
    }

    /// Adds the removal of the inbox row at `key` to `batch`.
    pub fn remove_inbox(&self, store: &Store, batch: &mut fjall::OwnedWriteBatch, key: &[u8]) {
        batch.remove(&store.keyspaces().inbox, key.to_vec());
    }

    /// Adds an outbox row to `batch`.
    pub fn push_outbox(
        &self,
        store: &Store,
        batch: &mut fjall::OwnedWriteBatch,
        p: &Pseudonym,
        entry: &OutboxEntry,
    ) -> Vec<u8> {
        let key = outbox_key(self.outbox_seq.take());
        let v = seal_row(store, ks::OUTBOX, &key, p, entry);
        batch.insert(&store.keyspaces().outbox, key.clone(), v);
        key
    }

    /// Every outbox row, oldest first.
    pub fn outbox(&self, store: &Store) -> Result<Vec<Queued<OutboxEntry>>> {
        outbox_rows(store, QUEUE_PREFIX)
    }

    /// Replaces the outbox row at `key` (keeps its place in the order).
    pub fn rewrite_outbox(
        &self,
        store: &Store,
        batch: &mut fjall::OwnedWriteBatch,
        key: &[u8],
        p: &Pseudonym,
        entry: &OutboxEntry,
    ) {
        let v = seal_row(store, ks::OUTBOX, key, p, entry);
        batch.insert(&store.keyspaces().outbox, key.to_vec(), v);
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

    /// Records the delivery state of a sent message (in `batch`), never moving it backwards.
    pub fn record_delivery(
        &self,
        store: &Store,
        batch: &mut fjall::OwnedWriteBatch,
        wamid: &str,
        state: DeliveryState,
        at: Timestamp,
    ) -> Result<DeliveryState> {
        let key = delivery_key(store, wamid);
        let current = self.delivery(store, wamid)?;
        let next = match current {
            Some(c)
                if c == DeliveryState::Failed || (c > state && state != DeliveryState::Failed) =>
            {
                c
            }
            _ => state,
        };
        // Value starts with the time so the seen-ids retention rule can sweep old rows; a
        // failure's handling, once recorded, stays.
        let mut v = at.as_second().to_be_bytes().to_vec();
        v.push(next as u8);
        if let Some(handling) = self.delivery_failure(store, wamid)? {
            v.push(handling.byte());
        }
        batch.insert(&store.keyspaces().outbox, key, v);
        Ok(next)
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
        let mut v = at.as_second().to_be_bytes().to_vec();
        v.push(DeliveryState::Failed as u8);
        v.push(handling.byte());
        batch.insert(&store.keyspaces().outbox, delivery_key(store, wamid), v);
    }

    /// How the failure of message `wamid` was handled, if it failed and was handled.
    pub fn delivery_failure(&self, store: &Store, wamid: &str) -> Result<Option<FailureHandling>> {
        let Some(v) = store.keyspaces().outbox.get(delivery_key(store, wamid))? else {
            return Ok(None);
        };
        Ok(v.get(9).copied().and_then(FailureHandling::from_byte))
    }

    /// Remembers (in `batch`) what was sent as `wamid` and for whom, until a status settles it.
    pub fn record_sent(
        &self,
        store: &Store,
        batch: &mut fjall::OwnedWriteBatch,
        wamid: &str,
        p: &Pseudonym,
        entry: &OutboxEntry,
    ) {
        let key = sent_key(store, wamid);
        let v = seal_row(store, ks::OUTBOX, &key, p, entry);
        batch.insert(&store.keyspaces().outbox, key, v);
    }

    /// What was sent as `wamid` and for whom, while no status has settled it.
    pub fn sent(&self, store: &Store, wamid: &str) -> Result<Option<(Pseudonym, OutboxEntry)>> {
        let key = sent_key(store, wamid);
        let Some(v) = store.keyspaces().outbox.get(&key)? else {
            return Ok(None);
        };
        open_row(store, ks::OUTBOX, &key, &v).map(Some)
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
    ) {
        let mut key = vec![DEFERRED_PREFIX];
        key.extend_from_slice(&self.deferred_seq.take().to_be_bytes());
        let v = seal_row(store, ks::OUTBOX, &key, p, deferred);
        batch.insert(&store.keyspaces().outbox, key, v);
    }

    /// Moves every deferred reply that is due at `now` to the end of the outbox (one durable
    /// write); returns how many moved and when the next one falls due.
    pub fn release_due(&self, store: &Store, now: Timestamp) -> Result<(usize, Option<Timestamp>)> {
        let mut batch = store.batch();
        let mut moved = 0;
        let mut next: Option<Timestamp> = None;
        for g in store.keyspaces().outbox.prefix([DEFERRED_PREFIX]) {
            let (k, v) = g.into_inner()?;
            let (p, deferred): (Pseudonym, Deferred) = open_row(store, ks::OUTBOX, &k, &v)?;
            if deferred.not_before <= now {
                batch.remove(&store.keyspaces().outbox, k.to_vec());
                self.push_outbox(store, &mut batch, &p, &deferred.entry);
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
        outbox_rows(store, DEFERRED_PREFIX)
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

    /// The recorded delivery state of a sent message.
    pub fn delivery(&self, store: &Store, wamid: &str) -> Result<Option<DeliveryState>> {
        let Some(v) = store.keyspaces().outbox.get(delivery_key(store, wamid))? else {
            return Ok(None);
        };
        Ok(match v.get(8) {
            Some(0) => Some(DeliveryState::Accepted),
            Some(1) => Some(DeliveryState::Sent),
            Some(2) => Some(DeliveryState::Delivered),
            Some(3) => Some(DeliveryState::Read),
            Some(4) => Some(DeliveryState::Failed),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
            );
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
            );
            store.commit_durable(b).unwrap();
        }
        let store = Store::open(dir.path(), StoreIdentity::parse(&text).unwrap()).unwrap();
        let q = Queues::new(&store).unwrap();
        let inbox = q.inbox(&store).unwrap();
        assert_eq!(inbox.len(), 2);
        assert!(matches!(&inbox[0].entry, InboxEntry::Message(m) if m.id == "wamid.1"));
        let mut b = store.batch();
        let keys = q.push_inbox(
            &store,
            &mut b,
            &[(p, InboxEntry::Message(inbound("wamid.3", "x")))],
        );
        assert_eq!(keys[0], 2u64.to_be_bytes().to_vec());
        store.commit_durable(b).unwrap();
        assert_eq!(q.outbox(&store).unwrap().len(), 1);
        // A forget takes the person's pending queue rows with it.
        store.forget(&[p], Timestamp::now()).unwrap();
        assert!(q.inbox(&store).unwrap().is_empty());
        assert!(q.outbox(&store).unwrap().is_empty());
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
            assert_eq!(
                q.record_delivery(&store, &mut b, "wamid.x", state, now)
                    .unwrap(),
                expect
            );
            store.commit_durable(b).unwrap();
            assert_eq!(q.delivery(&store, "wamid.x").unwrap(), Some(expect));
        }
    }
}
