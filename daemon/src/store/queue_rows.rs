//! The sealed layout of queue rows — the rows of the channel's queues that carry a customer's
//! words or address (inbox entries, outbox replies, the record of a sent reply, deferred
//! replies; staff alerts use the same layout, see `alerts::queue`) — and the quarantine for rows that cannot be read.
//!
//! Layout: `pseudonym (16) || 0x02 || envelope`, the envelope sealed under the customer's own
//! data key, the one a forget unlinks, with the usual associated data `keyspace || 0 || row key`.
//! The pseudonym in clear lets a forget or a move find a person's rows without opening any; the
//! key makes every copy of them noise once the customer is forgotten, in fjall's journal and
//! tables as in any backup. A queue row's key file exists before the row is written (the webhook
//! creates it under the customer's lock, [`Store::data_key_or_create`]), so a row whose key is
//! gone belongs to a customer forgotten (or moved away) since: [`Opened::Shredded`].
//!
//! Rows written before queue rows were sealed per customer have the layout `pseudonym ||
//! envelope` under the store-wide queue key (the envelope's first byte, its version, is 0x01).
//! They are still read, so what was acknowledged before an upgrade is answered and sent, and
//! they drain as the queues do; nothing writes them any more, and a move re-seals them under the
//! customer's key.
//!
//! Other rows may start with a pseudonym too (the outbox's re-open marks, `pseudonym || time`);
//! they are shorter than any sealed row and [`layout`] tells them apart.
//!
//! Quarantine: a queue row that cannot be opened (damaged bytes, a damaged key file) is moved,
//! raw, to a `quarantine/<keyspace>/<row key hex>` row in `meta` ([`Store::quarantine_row`]), so
//! one bad row costs only itself; an admin can look at it, and a forget of its customer removes
//! it with the rest.

use std::collections::BTreeMap;

use zeroize::Zeroizing;

use super::crypto::{DataKey, Pseudonym, PSEUDONYM_LEN};
use super::{ks, Result, Store, StoreError};

/// The byte after the pseudonym of a row sealed under the customer's data key.
const CUSTOMER_SEALED: u8 = 2;
/// The first byte of the envelope of a row sealed under the queue key (its version byte).
const LEGACY_ENVELOPE: u8 = 1;
/// Version byte, nonce and tag: the shortest envelope.
const MIN_ENVELOPE: usize = 1 + 24 + 16;
/// Prefix of quarantined rows in `meta`.
const QUARANTINE_PREFIX: &[u8] = b"quarantine/";

/// What a row of a queue keyspace is, judged by its bytes alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Sealed under its customer's data key.
    Customer,
    /// Sealed under the store-wide queue key (written before the upgrade).
    Legacy,
    /// Not a sealed queue row (a re-open mark, or bytes too short to be sealed).
    Other,
}

/// The layout of a queue keyspace's row `value`.
pub fn layout(value: &[u8]) -> Layout {
    match value.get(PSEUDONYM_LEN) {
        Some(&CUSTOMER_SEALED) if value.len() >= PSEUDONYM_LEN + 1 + MIN_ENVELOPE => {
            Layout::Customer
        }
        Some(&LEGACY_ENVELOPE) if value.len() >= PSEUDONYM_LEN + MIN_ENVELOPE => Layout::Legacy,
        _ => Layout::Other,
    }
}

/// A queue row opened.
pub enum Opened {
    /// The row's customer and its plaintext.
    Row(Pseudonym, Zeroizing<Vec<u8>>),
    /// The customer's data key is gone: they were forgotten (or moved away) after the row was
    /// written, and nothing can read it any more. The row is to be retired, never acted on.
    Shredded(Pseudonym),
}

/// A row in the quarantine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantinedRow {
    /// The queue keyspace it came from (`inbox`, `outbox`).
    pub keyspace: String,
    /// Its key there.
    pub row_key: Vec<u8>,
    /// Its bytes, unchanged (sealed, or damaged beyond opening).
    pub value: Vec<u8>,
}

/// Whether `e` means the row itself cannot be read (quarantine it), rather than the store
/// failing (try again later).
pub fn unreadable(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Crypto(_) | StoreError::Corrupt { .. } | StoreError::WrongIdentity(_)
    )
}

fn quarantine_key(keyspace: &str, row_key: &[u8]) -> Vec<u8> {
    let mut k = QUARANTINE_PREFIX.to_vec();
    k.extend_from_slice(keyspace.as_bytes());
    k.push(b'/');
    k.extend_from_slice(hex::encode(row_key).as_bytes());
    k
}

impl Store {
    /// Seals `plain` as queue row `row_key` of `keyspace` for customer `p`, under `p`'s data key.
    /// [`StoreError::NoDataKey`] when `p` has none: they were forgotten, and nothing new is
    /// written about them (only the webhook, under the customer's lock, creates a key for a
    /// queue row).
    pub fn seal_queue_row(
        &self,
        keyspace: &str,
        row_key: &[u8],
        p: &Pseudonym,
        plain: &[u8],
    ) -> Result<Vec<u8>> {
        let key = self.data_key(p)?.ok_or(StoreError::NoDataKey)?;
        Ok(seal_with(&key, keyspace, row_key, p, plain))
    }

    /// Opens queue row `row_key` of `keyspace` (either layout).
    pub fn open_queue_row(
        &self,
        keyspace: &'static str,
        row_key: &[u8],
        value: &[u8],
    ) -> Result<Opened> {
        let corrupt = StoreError::Corrupt {
            keyspace,
            what: "queue row",
        };
        let p = Pseudonym::from_key_prefix(value).ok_or(corrupt)?;
        match layout(value) {
            Layout::Customer => match self.data_key(&p)? {
                Some(key) => {
                    let plain = key.open(keyspace, row_key, &value[PSEUDONYM_LEN + 1..])?;
                    Ok(Opened::Row(p, plain))
                }
                None => Ok(Opened::Shredded(p)),
            },
            Layout::Legacy => {
                let plain = self
                    .queue_key
                    .open(keyspace, row_key, &value[PSEUDONYM_LEN..])?;
                Ok(Opened::Row(p, plain))
            }
            Layout::Other => Err(StoreError::Corrupt {
                keyspace,
                what: "queue row layout",
            }),
        }
    }

    /// Whether any inbox or outbox row carries `p` in front (the orphan-key sweep keeps the key
    /// of a contact whose first message waits in the inbox). Scans the queues, which are short.
    pub(super) fn has_queue_rows(&self, p: &Pseudonym) -> Result<bool> {
        for keyspace in [&self.ks.inbox, &self.ks.outbox, &self.ks.alerts] {
            for g in keyspace.iter() {
                let (_, v) = g.into_inner()?;
                if v.get(..PSEUDONYM_LEN) == Some(&p.0[..]) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Adds the removal of every queue and quarantined row of `p` to `batch` (a forget).
    pub(super) fn remove_queue_rows(
        &self,
        p: &Pseudonym,
        batch: &mut fjall::OwnedWriteBatch,
    ) -> Result<()> {
        for keyspace in [&self.ks.inbox, &self.ks.outbox] {
            for g in keyspace.iter() {
                let (k, v) = g.into_inner()?;
                if v.get(..PSEUDONYM_LEN) == Some(&p.0[..]) {
                    batch.remove(keyspace, k);
                }
            }
        }
        // Staff alert rows about the customer (pseudonym in front).
        for g in self.ks.alerts.iter() {
            let (k, v) = g.into_inner()?;
            if v.get(..PSEUDONYM_LEN) == Some(&p.0[..]) {
                batch.remove(&self.ks.alerts, k);
            }
        }
        for g in self.ks.meta.prefix(QUARANTINE_PREFIX) {
            let (k, v) = g.into_inner()?;
            if v.get(..PSEUDONYM_LEN) == Some(&p.0[..]) {
                batch.remove(&self.ks.meta, k);
            }
        }
        Ok(())
    }

    /// Moves `from`'s queue rows to `to` in `batch` (a move): each sealed row is opened with
    /// `from`'s key (or the queue key) and sealed again under `to_key` with `to` in front; other
    /// rows starting with `from` get `to` in front. A row that cannot be opened is left for the
    /// reader to quarantine (it is as unreadable under either pseudonym).
    pub(super) fn reseal_queue_rows(
        &self,
        from: &Pseudonym,
        to: &Pseudonym,
        to_key: &DataKey,
        batch: &mut fjall::OwnedWriteBatch,
    ) -> Result<u64> {
        let mut moved = 0;
        // Staff alert rows share the layout; the alert is about whoever is in front.
        for (name, keyspace) in [
            (ks::INBOX, &self.ks.inbox),
            (ks::OUTBOX, &self.ks.outbox),
            (ks::ALERTS, &self.ks.alerts),
        ] {
            for g in keyspace.iter() {
                let (k, v) = g.into_inner()?;
                if v.get(..PSEUDONYM_LEN) != Some(&from.0[..]) {
                    continue;
                }
                let nv = match layout(&v) {
                    Layout::Other => {
                        let mut nv = v.to_vec();
                        nv[..PSEUDONYM_LEN].copy_from_slice(&to.0);
                        nv
                    }
                    Layout::Customer | Layout::Legacy => match self.open_queue_row(name, &k, &v) {
                        Ok(Opened::Row(_, plain)) => seal_with(to_key, name, &k, to, &plain),
                        Ok(Opened::Shredded(_)) => continue,
                        Err(e) if unreadable(&e) => continue,
                        Err(e) => return Err(e),
                    },
                };
                batch.insert(keyspace, k, nv);
                moved += 1;
            }
        }
        Ok(moved)
    }

    /// Moves the unreadable row `row_key` of queue keyspace `keyspace` (`inbox` or `outbox`),
    /// whose bytes are `value`, to the quarantine, durably.
    pub fn quarantine_row(
        &self,
        keyspace: &'static str,
        row_key: &[u8],
        value: &[u8],
    ) -> Result<()> {
        let source = match keyspace {
            ks::INBOX => &self.ks.inbox,
            ks::OUTBOX => &self.ks.outbox,
            _ => {
                return Err(StoreError::Format(format!(
                    "{keyspace} is not a queue keyspace"
                )))
            }
        };
        let mut batch = self.batch();
        batch.insert(
            &self.ks.meta,
            quarantine_key(keyspace, row_key),
            value.to_vec(),
        );
        batch.remove(source, row_key.to_vec());
        self.commit_durable(batch)
    }

    /// How many rows each queue keyspace has in quarantine (keyspaces without any are absent).
    pub fn quarantined(&self) -> Result<BTreeMap<String, u64>> {
        let mut out = BTreeMap::new();
        for g in self.ks.meta.prefix(QUARANTINE_PREFIX) {
            let k = g.key()?;
            let rest = &k[QUARANTINE_PREFIX.len()..];
            let name = rest.split(|b| *b == b'/').next().unwrap_or_default();
            *out.entry(String::from_utf8_lossy(name).into_owned())
                .or_insert(0) += 1;
        }
        Ok(out)
    }

    /// Every quarantined row, as it was.
    pub fn quarantined_rows(&self) -> Result<Vec<QuarantinedRow>> {
        let mut out = Vec::new();
        for g in self.ks.meta.prefix(QUARANTINE_PREFIX) {
            let (k, v) = g.into_inner()?;
            let rest = std::str::from_utf8(&k[QUARANTINE_PREFIX.len()..]).unwrap_or_default();
            if let Some((name, hex_key)) = rest.split_once('/') {
                let row_key = hex::decode(hex_key).unwrap_or_default();
                out.push(QuarantinedRow {
                    keyspace: name.to_string(),
                    row_key,
                    value: v.to_vec(),
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
impl Store {
    /// A queue row in the layout of the previous version (sealed under the queue key).
    pub(crate) fn legacy_queue_row(
        &self,
        keyspace: &str,
        row_key: &[u8],
        p: &Pseudonym,
        plain: &[u8],
    ) -> Vec<u8> {
        let mut v = p.0.to_vec();
        v.extend_from_slice(&self.queue_key.seal(keyspace, row_key, plain));
        v
    }
}

/// Seals `plain` in the queue-row layout under `key`.
pub(super) fn seal_with(
    key: &DataKey,
    keyspace: &str,
    row_key: &[u8],
    p: &Pseudonym,
    plain: &[u8],
) -> Vec<u8> {
    let mut v = Vec::with_capacity(PSEUDONYM_LEN + 1 + MIN_ENVELOPE + plain.len());
    v.extend_from_slice(&p.0);
    v.push(CUSTOMER_SEALED);
    v.extend_from_slice(&key.seal(keyspace, row_key, plain));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_told_apart_by_their_bytes() {
        let p = Pseudonym([7; PSEUDONYM_LEN]);
        let key = DataKey::generate();
        let sealed = seal_with(&key, ks::OUTBOX, b"q1", &p, b"{}");
        assert_eq!(layout(&sealed), Layout::Customer);
        let mut legacy = p.0.to_vec();
        legacy.extend_from_slice(&key.seal(ks::OUTBOX, b"q1", b"{}"));
        assert_eq!(layout(&legacy), Layout::Legacy);
        // A re-open mark: pseudonym and a time.
        let mut mark = p.0.to_vec();
        mark.extend_from_slice(&1_780_000_000i64.to_be_bytes());
        assert_eq!(layout(&mark), Layout::Other);
        assert_eq!(layout(&sealed[..PSEUDONYM_LEN + 5]), Layout::Other);
    }

    #[test]
    fn a_move_reseals_rows_of_either_layout_under_the_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Store::open(dir.path(), crate::store::crypto::StoreIdentity::generate()).unwrap();
        let (from, to) = (
            store.pseudonym("4915100000001"),
            store.pseudonym("4915100000002"),
        );
        let mut batch = store.batch();
        store.data_key_or_create(&from, &mut batch).unwrap();
        let to_key = store.data_key_or_create(&to, &mut batch).unwrap();
        let new = store
            .seal_queue_row(ks::INBOX, b"k1", &from, b"new")
            .unwrap();
        let old = store.legacy_queue_row(ks::OUTBOX, b"k2", &from, b"old");
        let mut mark = from.0.to_vec();
        mark.extend_from_slice(&1_780_000_000i64.to_be_bytes());
        batch.insert(&store.ks.inbox, b"k1".to_vec(), new);
        batch.insert(&store.ks.outbox, b"k2".to_vec(), old);
        batch.insert(&store.ks.outbox, b"r1".to_vec(), mark);
        store.commit_durable(batch).unwrap();

        let mut batch = store.batch();
        assert_eq!(
            store
                .reseal_queue_rows(&from, &to, &to_key, &mut batch)
                .unwrap(),
            3
        );
        store.commit_durable(batch).unwrap();
        for (name, keyspace, key, plain) in [
            (ks::INBOX, &store.ks.inbox, &b"k1"[..], &b"new"[..]),
            (ks::OUTBOX, &store.ks.outbox, &b"k2"[..], &b"old"[..]),
        ] {
            let v = keyspace.get(key).unwrap().unwrap();
            assert_eq!(
                layout(&v),
                Layout::Customer,
                "{name} row sealed per customer"
            );
            let Opened::Row(p, opened) = store.open_queue_row(name, key, &v).unwrap() else {
                panic!("the moved row opens");
            };
            assert_eq!((p, opened.as_slice()), (to, plain));
        }
        let mark = store.ks.outbox.get(b"r1").unwrap().unwrap();
        assert_eq!(&mark[..PSEUDONYM_LEN], &to.0[..]);
        assert_eq!(layout(&mark), Layout::Other);
    }
}
