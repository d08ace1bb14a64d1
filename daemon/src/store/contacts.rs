//! The contact rows: per customer, the last contact time and whether the assistant answers,
//! as small clear rows in the `meta` keyspace beside the customer row, so that whoever lists
//! conversations (the console's inbox index) reads a few rows instead of every customer.
//!
//! Three row families, all clear metadata like the customer row's header (see
//! ARCHITECTURE.md), never personal data:
//! - `contact/<pseudonym hex>` → last contact and bot mode (13 bytes): the current values;
//! - `recent/<last contact><pseudonym>` → nothing: every customer in order of last contact,
//!   so the newest are one reverse range read;
//! - `held/<pseudonym hex>` → nothing: the customers handed over or paused by mode, who wait
//!   for a person however old their last contact is.
//!
//! Invariant: a customer row exists exactly when its contact row does, with the same values,
//! and its `recent/` and `held/` rows agree with that contact row. [`Store::put_customer`]
//! writes them in the customer row's batch, replacing the previous `recent/` row it finds
//! through the contact row; a forget and a move remove them in one batch. Writers of one
//! customer hold its lock, so the contact row read there is the current one. Readers of
//! `recent/` still check each row against the contact row and skip one that disagrees. Stores
//! from before the rows existed get them once, when opened ([`Store::ensure_contact_rows`]),
//! and carry a marker from then on.

use jiff::Timestamp;

use super::crypto::{Pseudonym, PSEUDONYM_LEN};
use super::customers::{BotMode, CustomerMeta};
use super::{ks, meta_key, meta_key_pseudonym, Result, Store, StoreError};

const CONTACT_PREFIX: &[u8] = b"contact/";
const RECENT_PREFIX: &[u8] = b"recent/";
const HELD_PREFIX: &[u8] = b"held/";
/// Bytes of an instant in a `recent/` key: seconds (sign bit flipped, so keys sort by time)
/// and nanoseconds, big-endian.
const INSTANT_LEN: usize = 12;
/// Present once every customer row has its contact rows (new stores from the start).
pub(super) const CONTACT_ROWS_MARKER: &[u8] = b"contact_rows";
/// Customers written per batch when an old store gets its contact rows.
const MIGRATION_BATCH: usize = 4_096;

/// What a contact row holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Contact {
    /// Last message from or to the contact.
    pub last_contact: Timestamp,
    /// Whether the bot answers.
    pub mode: BotMode,
}

fn mode_byte(mode: BotMode) -> u8 {
    match mode {
        BotMode::Active => 0,
        BotMode::Escalated => 1,
        BotMode::Paused => 2,
        BotMode::OptedOut => 3,
    }
}

fn mode_of(byte: u8) -> Option<BotMode> {
    Some(match byte {
        0 => BotMode::Active,
        1 => BotMode::Escalated,
        2 => BotMode::Paused,
        3 => BotMode::OptedOut,
        _ => return None,
    })
}

/// An instant as bytes that sort like the instants.
fn instant_bytes(at: Timestamp) -> [u8; INSTANT_LEN] {
    let mut out = [0u8; INSTANT_LEN];
    let seconds = (at.as_second() as u64) ^ (1 << 63);
    out[..8].copy_from_slice(&seconds.to_be_bytes());
    out[8..].copy_from_slice(&at.subsec_nanosecond().to_be_bytes());
    out
}

fn instant_of(bytes: &[u8]) -> Option<Timestamp> {
    let seconds = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?) ^ (1 << 63);
    let nanos = i32::from_be_bytes(bytes.get(8..INSTANT_LEN)?.try_into().ok()?);
    Timestamp::new(seconds as i64, nanos).ok()
}

/// Whether a customer in `mode` waits for a person whatever their hand-over marks say.
fn held(mode: BotMode) -> bool {
    matches!(mode, BotMode::Escalated | BotMode::Paused)
}

impl Contact {
    /// The contact row of a customer with clear header `meta`.
    pub fn of(meta: &CustomerMeta) -> Contact {
        Contact {
            last_contact: meta.last_contact,
            mode: meta.mode,
        }
    }

    fn encode(self) -> [u8; INSTANT_LEN + 1] {
        let mut out = [0u8; INSTANT_LEN + 1];
        out[..INSTANT_LEN].copy_from_slice(&instant_bytes(self.last_contact));
        out[INSTANT_LEN] = mode_byte(self.mode);
        out
    }

    fn decode(v: &[u8]) -> Option<Contact> {
        if v.len() != INSTANT_LEN + 1 {
            return None;
        }
        Some(Contact {
            last_contact: instant_of(v)?,
            mode: mode_of(v[INSTANT_LEN])?,
        })
    }

    fn recent_key(self, p: &Pseudonym) -> Vec<u8> {
        let mut key = RECENT_PREFIX.to_vec();
        key.extend_from_slice(&instant_bytes(self.last_contact));
        key.extend_from_slice(&p.0);
        key
    }
}

fn corrupt(what: &'static str) -> StoreError {
    StoreError::Corrupt {
        keyspace: ks::META,
        what,
    }
}

impl Store {
    /// Adds `p`'s contact rows for clear header `meta` to `batch`, replacing the current ones.
    /// Call with `p`'s lock held.
    pub(super) fn put_contact_rows(
        &self,
        p: &Pseudonym,
        meta: &CustomerMeta,
        batch: &mut fjall::OwnedWriteBatch,
    ) -> Result<()> {
        let new = Contact::of(meta);
        let old = self.contact(p)?;
        if old == Some(new) {
            return Ok(());
        }
        if old.map(|old| old.last_contact) != Some(new.last_contact) {
            if let Some(old) = old {
                batch.remove(&self.ks.meta, old.recent_key(p));
            }
            batch.insert(&self.ks.meta, new.recent_key(p), Vec::<u8>::new());
        }
        match (old.is_some_and(|old| held(old.mode)), held(new.mode)) {
            (true, false) => batch.remove(&self.ks.meta, meta_key(HELD_PREFIX, p)),
            (false, true) => {
                batch.insert(&self.ks.meta, meta_key(HELD_PREFIX, p), Vec::<u8>::new());
            }
            _ => {}
        }
        batch.insert(
            &self.ks.meta,
            meta_key(CONTACT_PREFIX, p),
            new.encode().to_vec(),
        );
        Ok(())
    }

    /// Adds the removal of `p`'s contact rows to `batch`. Call with `p`'s lock held.
    pub(super) fn remove_contact_rows(
        &self,
        p: &Pseudonym,
        batch: &mut fjall::OwnedWriteBatch,
    ) -> Result<()> {
        if let Some(old) = self.contact(p)? {
            batch.remove(&self.ks.meta, old.recent_key(p));
            batch.remove(&self.ks.meta, meta_key(HELD_PREFIX, p));
            batch.remove(&self.ks.meta, meta_key(CONTACT_PREFIX, p));
        }
        Ok(())
    }

    /// `p`'s contact row (`None`: no such customer).
    pub fn contact(&self, p: &Pseudonym) -> Result<Option<Contact>> {
        match self.ks.meta.get(meta_key(CONTACT_PREFIX, p))? {
            None => Ok(None),
            Some(v) => Contact::decode(&v).map(Some).ok_or(corrupt("contact row")),
        }
    }

    /// Every customer's contact row, in pseudonym order (a pass over all customers).
    #[cfg(test)]
    pub fn contacts(&self) -> impl Iterator<Item = Result<(Pseudonym, Contact)>> + '_ {
        self.ks.meta.prefix(CONTACT_PREFIX).map(|g| {
            let (k, v) = g.into_inner()?;
            let p = meta_key_pseudonym(CONTACT_PREFIX, &k).ok_or(corrupt("contact row key"))?;
            let contact = Contact::decode(&v).ok_or(corrupt("contact row"))?;
            Ok((p, contact))
        })
    }

    /// Customers, the most recent last contact first: read lazily, so taking the first few
    /// reads only their rows.
    pub fn contacts_newest_first(&self) -> impl Iterator<Item = Result<(Pseudonym, Contact)>> + '_ {
        self.ks
            .meta
            .prefix(RECENT_PREFIX)
            .rev()
            .map(|g| {
                let k = g.key()?;
                let rest = &k[RECENT_PREFIX.len()..];
                let at = instant_of(rest).ok_or(corrupt("recent row key"))?;
                let p = rest
                    .get(INSTANT_LEN..)
                    .and_then(Pseudonym::from_key_prefix)
                    .filter(|_| rest.len() == INSTANT_LEN + PSEUDONYM_LEN)
                    .ok_or(corrupt("recent row key"))?;
                // A row the contact row disagrees with is a leftover: not this customer's now.
                Ok(self
                    .contact(&p)?
                    .filter(|c| c.last_contact == at)
                    .map(|c| (p, c)))
            })
            .filter_map(Result::transpose)
    }

    /// The customers handed over or paused by their mode, with their contact rows.
    pub fn held_contacts(&self) -> Result<Vec<(Pseudonym, Contact)>> {
        let mut out = Vec::new();
        for g in self.ks.meta.prefix(HELD_PREFIX) {
            let k = g.key()?;
            let p = meta_key_pseudonym(HELD_PREFIX, &k).ok_or(corrupt("held row key"))?;
            if let Some(c) = self.contact(&p)?.filter(|c| held(c.mode)) {
                out.push((p, c));
            }
        }
        Ok(out)
    }

    /// Gives every customer row its contact rows, once, in a store from before they existed;
    /// returns how many customers got them. Runs at open, before anything else writes.
    pub(super) fn ensure_contact_rows(&self) -> Result<usize> {
        if self.ks.meta.contains_key(CONTACT_ROWS_MARKER)? {
            return Ok(0);
        }
        let mut written = 0;
        let mut batch = self.batch();
        let mut in_batch = 0;
        for item in self.customer_metas() {
            let (p, meta) = item?;
            self.put_contact_rows(&p, &meta, &mut batch)?;
            written += 1;
            in_batch += 1;
            if in_batch == MIGRATION_BATCH {
                self.commit_durable(std::mem::replace(&mut batch, self.batch()))?;
                in_batch = 0;
            }
        }
        // The marker last: a crash before it makes the next open write the rows again (each
        // customer's rows then replace themselves).
        batch.insert(&self.ks.meta, CONTACT_ROWS_MARKER, b"1".to_vec());
        self.commit_durable(batch)?;
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use jiff::SignedDuration;

    use super::*;
    use crate::store::crypto::StoreIdentity;
    use crate::store::tests::identity_pair;

    fn contacts(store: &Store) -> Vec<(Pseudonym, Contact)> {
        store.contacts().collect::<Result<_>>().unwrap()
    }

    fn newest_first(store: &Store) -> Vec<Pseudonym> {
        store
            .contacts_newest_first()
            .map(|item| item.map(|(p, _)| p))
            .collect::<Result<_>>()
            .unwrap()
    }

    fn held_ones(store: &Store) -> Vec<Pseudonym> {
        let held = store.held_contacts().unwrap();
        held.into_iter().map(|(p, _)| p).collect()
    }

    /// Rows of the three families, to see that none is left behind.
    fn row_count(store: &Store) -> usize {
        [CONTACT_PREFIX, RECENT_PREFIX, HELD_PREFIX]
            .into_iter()
            .map(|prefix| store.ks.meta.prefix(prefix).count())
            .sum()
    }

    /// What the customer rows say, read the slow way.
    fn from_customer_rows(store: &Store) -> Vec<(Pseudonym, Contact)> {
        store
            .customer_metas()
            .map(|item| item.map(|(p, meta)| (p, Contact::of(&meta))))
            .collect::<Result<_>>()
            .unwrap()
    }

    #[test]
    fn contact_rows_follow_the_customer_rows_and_an_older_store_gets_them_once() {
        let dir = tempfile::tempdir().unwrap();
        let (id, line) = identity_pair();
        let start: Timestamp = "2026-12-01T09:00:00Z".parse().unwrap();
        let store = Store::open(dir.path(), id).unwrap();
        let mut people = Vec::new();
        for i in 0..5i64 {
            let phone = format!("+4915100000{i:02}");
            let (c, ()) = store
                .update_customer(&phone, start + SignedDuration::from_mins(i), |c, _, _| {
                    if i == 3 {
                        c.meta.mode = BotMode::Escalated;
                    }
                    Ok(())
                })
                .unwrap();
            people.push(c.pseudonym);
        }
        let [p0, p1, p2, p3, p4] = people[..] else {
            unreachable!("five customers")
        };
        assert_eq!(contacts(&store), from_customer_rows(&store));
        assert_eq!(newest_first(&store), [p4, p3, p2, p1, p0]);
        assert_eq!(held_ones(&store), [p3]);

        // A later write moves the last contact (and only that row); a hand-back ends the hold.
        let later = start + SignedDuration::from_hours(2);
        store
            .update_customer("+491510000001", later, |c, _, _| {
                c.meta.last_contact = later;
                Ok(())
            })
            .unwrap();
        store
            .update_customer("+491510000003", start, |c, _, _| {
                c.meta.mode = BotMode::Active;
                Ok(())
            })
            .unwrap();
        assert_eq!(
            store.contact(&p1).unwrap().map(|c| c.last_contact),
            Some(later)
        );
        assert_eq!(newest_first(&store), [p1, p4, p3, p2, p0]);
        assert!(held_ones(&store).is_empty());
        assert_eq!(row_count(&store), 10, "a contact and a recent row each");

        // A forget removes every row.
        store.forget(&[p0], later).unwrap();
        assert_eq!(store.contact(&p0).unwrap(), None);
        assert_eq!(contacts(&store), from_customer_rows(&store));
        assert_eq!(newest_first(&store), [p1, p4, p3, p2]);
        assert_eq!(row_count(&store), 8);
        let expected = contacts(&store);

        // A store from before the rows: no rows, no marker. Opening it writes them once.
        let mut batch = store.batch();
        for (p, _) in &expected {
            store.remove_contact_rows(p, &mut batch).unwrap();
        }
        batch.remove(&store.ks.meta, CONTACT_ROWS_MARKER);
        store.commit_durable(batch).unwrap();
        assert_eq!(row_count(&store), 0);
        drop(store);
        let store = Store::open(dir.path(), StoreIdentity::parse(&line).unwrap()).unwrap();
        assert_eq!(contacts(&store), expected);
        assert_eq!(newest_first(&store), [p1, p4, p3, p2]);
        assert_eq!(store.ensure_contact_rows().unwrap(), 0, "written once only");
    }

    #[test]
    fn a_contact_row_encodes_every_mode_and_instant_exactly_and_instants_sort() {
        let instants = [
            Timestamp::new(-5, 1).expect("valid"),
            Timestamp::UNIX_EPOCH,
            Timestamp::new(0, 1).expect("valid"),
            Timestamp::new(1_767_225_600, 123_456_789).expect("valid"),
        ];
        for pair in instants.windows(2) {
            assert!(instant_bytes(pair[0]) < instant_bytes(pair[1]));
        }
        for mode in [
            BotMode::Active,
            BotMode::Escalated,
            BotMode::Paused,
            BotMode::OptedOut,
        ] {
            for at in instants {
                let c = Contact {
                    last_contact: at,
                    mode,
                };
                assert_eq!(Contact::decode(&c.encode()), Some(c));
            }
        }
        assert_eq!(Contact::decode(&[0; 12]), None);
        let mut bad = Contact {
            last_contact: Timestamp::UNIX_EPOCH,
            mode: BotMode::Active,
        }
        .encode();
        bad[12] = 9;
        assert_eq!(Contact::decode(&bad), None);
    }
}
