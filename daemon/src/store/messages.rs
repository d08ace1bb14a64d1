//! Conversation history: one row per message, key `pseudonym || sequence (u64 big-endian)`, value
//! `unix seconds (i64 big-endian, clear, for retention) || sealed message`. Reading the last n
//! messages is a reverse prefix scan; nothing ever loads a whole history.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::crypto::{Pseudonym, PSEUDONYM_LEN};
use super::{ks, Result, Store, StoreError};

/// Who wrote a message.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// From the contact.
    Inbound,
    /// From the assistant (or staff via `frontdesk send`).
    Outbound,
    /// From a staff member answering in the console: the studio's own words, sent like a
    /// reply (the member's name is in the audit log, not here).
    Staff,
}

impl Direction {
    /// Ours, not the contact's: the assistant's replies and the staff's answers.
    pub fn is_ours(self) -> bool {
        !matches!(self, Direction::Inbound)
    }
}

/// One message of a conversation.
#[derive(Serialize, Deserialize, Clone, PartialEq)]
pub struct Message {
    /// Who wrote it.
    pub direction: Direction,
    /// The message text.
    pub text: String,
    /// When it was received or sent.
    pub at: Timestamp,
    /// WhatsApp message id, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wamid: Option<String>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Message{{{:?}, {} chars, at {}}}",
            self.direction,
            self.text.chars().count(),
            self.at
        )
    }
}

fn row_key(p: &Pseudonym, seq: u64) -> [u8; PSEUDONYM_LEN + 8] {
    let mut k = [0u8; PSEUDONYM_LEN + 8];
    k[..PSEUDONYM_LEN].copy_from_slice(&p.0);
    k[PSEUDONYM_LEN..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The timestamp in front of a message row value.
pub(crate) fn row_time(value: &[u8]) -> Option<Timestamp> {
    let secs = i64::from_be_bytes(value.get(..8)?.try_into().ok()?);
    Timestamp::from_second(secs).ok()
}

impl Store {
    /// Adds a message of customer `c` to `batch` and advances the customer's sequence counter.
    /// Use inside [`Store::update_customer`], which holds the customer's lock and writes the
    /// updated counter in the same batch.
    pub fn append_message(
        &self,
        c: &mut super::customers::Customer,
        msg: &Message,
        batch: &mut fjall::OwnedWriteBatch,
    ) -> Result<u64> {
        let key = self.data_key_or_create(&c.pseudonym, batch)?;
        let seq = c.meta.next_message_seq;
        c.meta.next_message_seq += 1;
        let rk = row_key(&c.pseudonym, seq);
        let body = serde_json::to_vec(msg).expect("message serialises");
        let mut value = msg.at.as_second().to_be_bytes().to_vec();
        value.extend_from_slice(&key.seal(ks::MESSAGES, &rk, &body));
        batch.insert(&self.ks.messages, rk, value);
        Ok(seq)
    }

    /// The last `n` messages of a customer, oldest first.
    pub fn recent_messages(&self, p: &Pseudonym, n: usize) -> Result<Vec<Message>> {
        let Some(key) = self.data_key(p)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(n);
        for g in self.ks.messages.prefix(p.0).rev().take(n) {
            let (k, v) = g.into_inner()?;
            out.push(open_message(&key, &k, &v)?);
        }
        out.reverse();
        Ok(out)
    }

    /// The newest of the last `lookback` messages of a customer with the WhatsApp id `wamid`
    /// (a quoted message), or `None`.
    pub fn find_message(
        &self,
        p: &Pseudonym,
        wamid: &str,
        lookback: usize,
    ) -> Result<Option<Message>> {
        let Some(key) = self.data_key(p)? else {
            return Ok(None);
        };
        for g in self.ks.messages.prefix(p.0).rev().take(lookback) {
            let (k, v) = g.into_inner()?;
            let msg = open_message(&key, &k, &v)?;
            if msg.wamid.as_deref() == Some(wamid) {
                return Ok(Some(msg));
            }
        }
        Ok(None)
    }

    /// Replaces the text of the contact's messages with the given WhatsApp ids (within the last
    /// `lookback`) by `replacement`, in `batch`: a message the contact deleted for everyone keeps
    /// its place and time, not its words. Only inbound rows: a contact cannot delete our words.
    /// Returns how many rows were changed. Use under the customer's lock.
    pub fn redact_messages(
        &self,
        p: &Pseudonym,
        wamids: &[String],
        replacement: &str,
        lookback: usize,
        batch: &mut fjall::OwnedWriteBatch,
    ) -> Result<usize> {
        if wamids.is_empty() {
            return Ok(0);
        }
        let Some(key) = self.data_key(p)? else {
            return Ok(0);
        };
        let mut changed = 0;
        for g in self.ks.messages.prefix(p.0).rev().take(lookback) {
            let (k, v) = g.into_inner()?;
            let mut msg = open_message(&key, &k, &v)?;
            let hit = msg.direction == Direction::Inbound
                && msg.wamid.as_ref().is_some_and(|id| wamids.contains(id))
                && msg.text != replacement;
            if hit {
                msg.text = replacement.to_string();
                let body = serde_json::to_vec(&msg).expect("message serialises");
                let mut value = v[..8].to_vec();
                value.extend_from_slice(&key.seal(ks::MESSAGES, &k, &body));
                batch.insert(&self.ks.messages, k.to_vec(), value);
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// Records `wamid` on our own history rows `seqs` of customer `p` that have none yet: the id
    /// WhatsApp gave the reply once it was sent, so a contact's quote of it can be found
    /// ([`Store::find_message`]). Durable on its own, under the customer's lock; a customer
    /// forgotten meanwhile (no data key) gets nothing written.
    pub fn tag_sent(&self, p: &Pseudonym, seqs: &[u64], wamid: &str) -> Result<usize> {
        if seqs.is_empty() {
            return Ok(0);
        }
        let _guard = self.lock_customer(p);
        let Some(key) = self.data_key(p)? else {
            return Ok(0);
        };
        let mut batch = self.batch();
        let mut changed = 0;
        for seq in seqs {
            let rk = row_key(p, *seq);
            let Some(v) = self.ks.messages.get(rk)? else {
                continue;
            };
            let mut msg = open_message(&key, &rk, &v)?;
            if !msg.direction.is_ours() || msg.wamid.is_some() {
                continue;
            }
            msg.wamid = Some(wamid.to_string());
            let body = serde_json::to_vec(&msg).expect("message serialises");
            let mut value = v[..8].to_vec();
            value.extend_from_slice(&key.seal(ks::MESSAGES, &rk, &body));
            batch.insert(&self.ks.messages, rk, value);
            changed += 1;
        }
        if changed > 0 {
            self.commit_durable(batch)?;
        }
        Ok(changed)
    }

    /// Every message of a customer, oldest first, one at a time (exports).
    pub fn all_messages<'a>(
        &'a self,
        p: &Pseudonym,
    ) -> Result<impl Iterator<Item = Result<Message>> + 'a> {
        let key = self.data_key(p)?;
        Ok(self.ks.messages.prefix(p.0).map(move |g| {
            let (k, v) = g.into_inner()?;
            let key = key.as_ref().ok_or(StoreError::Corrupt {
                keyspace: ks::MESSAGES,
                what: "messages without data key",
            })?;
            open_message(key, &k, &v)
        }))
    }
}

pub(super) fn open_message(key: &super::crypto::DataKey, k: &[u8], v: &[u8]) -> Result<Message> {
    let sealed = v.get(8..).ok_or(StoreError::Corrupt {
        keyspace: ks::MESSAGES,
        what: "value too short",
    })?;
    let plain = key.open(ks::MESSAGES, k, sealed)?;
    serde_json::from_slice(&plain).map_err(|_| StoreError::Corrupt {
        keyspace: ks::MESSAGES,
        what: "sealed message",
    })
}
