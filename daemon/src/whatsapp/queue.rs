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
//!   sent message, updated by status webhooks, which may arrive out of order.

use std::sync::atomic::{AtomicU64, Ordering};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::payload::{InboundMessage, StatusUpdate};
use crate::store::crypto::{Pseudonym, PSEUDONYM_LEN};
use crate::store::{ks, Result, Store, StoreError};

/// Prefix of queue rows in the outbox keyspace (delivery rows use `d`).
const QUEUE_PREFIX: u8 = b'q';
const DELIVERY_PREFIX: u8 = b'd';

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
        let mut out = Vec::new();
        for g in store.keyspaces().outbox.prefix([QUEUE_PREFIX]) {
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
        // Value starts with the time so the seen-ids retention rule can sweep old rows.
        let mut v = at.as_second().to_be_bytes().to_vec();
        v.push(next as u8);
        batch.insert(&store.keyspaces().outbox, key, v);
        Ok(next)
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
            timestamp: 1_700_000_000,
            phone_number_id: "123".into(),
            contact_name: Some("Dora".into()),
            reply_to: None,
            username: None,
            referral: None,
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
