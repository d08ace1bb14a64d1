//! Indexes that find a customer from outside: MagicLine's customer and booking ids to the
//! pseudonym, and its class dates to the customers booked on them (`xref/` rows), and the
//! customers with a booked trial by its start time (`trials/` rows), both in the `meta`
//! keyspace.
//!
//! A MagicLine webhook names a customer or booking by MagicLine's id only; finding the
//! customer by opening every booking row would be a scan over all customers. An `xref/` row
//! is keyed by a keyed hash of the id (under the store's pseudonym key, so the id itself is
//! not on disk) and holds the pseudonym. A `trials/` row is keyed by the start second and the
//! pseudonym and holds nothing: the booked trials of a time window are one range read, which
//! the attendance sweep and the polling fallback need. Neither holds personal data; a forget
//! removes the customer's rows, and a move to a new identity re-points them.

use jiff::Timestamp;

use super::crypto::{Pseudonym, PSEUDONYM_LEN};
use super::{ks, Result, Store, StoreError};

const XREF_PREFIX: &[u8] = b"xref/";
const TRIALS_PREFIX: &[u8] = b"trials/";
/// Digits of the start second in a `trials/` key (zero-padded, so keys sort by time).
const SECOND_DIGITS: usize = 12;

/// What kind of outside id an `xref/` row maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum External {
    /// A MagicLine customer (member or lead) id.
    MagicLineCustomer,
    /// A MagicLine appointment or class booking id.
    MagicLineBooking,
}

/// Domain of the keyed hash of a class date id in its `xref/` rows (one per customer booked
/// on it: a group class has several).
const CLASS_DATE_DOMAIN: &str = "xref-magicline-class-slot";

impl External {
    fn domain(self) -> &'static str {
        match self {
            External::MagicLineCustomer => "xref-magicline-customer",
            External::MagicLineBooking => "xref-magicline-booking",
        }
    }
}

impl Store {
    fn xref_key(&self, kind: External, id: i64) -> Vec<u8> {
        let mut key = XREF_PREFIX.to_vec();
        key.extend_from_slice(
            hex::encode(self.token_hash(kind.domain(), &id.to_string())).as_bytes(),
        );
        key
    }

    /// Records in `batch` that the outside id `id` belongs to customer `p`.
    pub fn link_external(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        kind: External,
        id: i64,
        p: &Pseudonym,
    ) {
        batch.insert(&self.ks.meta, self.xref_key(kind, id), p.0.to_vec());
    }

    /// The customer the outside id belongs to, if frontdesk knows it.
    pub fn external_owner(&self, kind: External, id: i64) -> Result<Option<Pseudonym>> {
        let Some(v) = self.ks.meta.get(self.xref_key(kind, id))? else {
            return Ok(None);
        };
        let bytes: [u8; PSEUDONYM_LEN] =
            v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                keyspace: ks::META,
                what: "external id link",
            })?;
        Ok(Some(Pseudonym(bytes)))
    }

    fn class_date_prefix(&self, slot_id: i64) -> Vec<u8> {
        let mut key = XREF_PREFIX.to_vec();
        key.extend_from_slice(
            hex::encode(self.token_hash(CLASS_DATE_DOMAIN, &slot_id.to_string())).as_bytes(),
        );
        key.push(b'/');
        key
    }

    /// Records in `batch` that customer `p` is booked on MagicLine class date `slot_id`.
    pub fn link_class_date(&self, batch: &mut fjall::OwnedWriteBatch, slot_id: i64, p: &Pseudonym) {
        let mut key = self.class_date_prefix(slot_id);
        key.extend_from_slice(p.to_hex().as_bytes());
        batch.insert(&self.ks.meta, key, p.0.to_vec());
    }

    /// The customers frontdesk booked on MagicLine class date `slot_id`.
    pub fn class_date_owners(&self, slot_id: i64) -> Result<Vec<Pseudonym>> {
        let mut out = Vec::new();
        for g in self.ks.meta.prefix(self.class_date_prefix(slot_id)) {
            let (_, v) = g.into_inner()?;
            let bytes: [u8; PSEUDONYM_LEN] =
                v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    keyspace: ks::META,
                    what: "class date link",
                })?;
            let p = Pseudonym(bytes);
            // A move re-points the row's value; the key keeps the old pseudonym.
            if !out.contains(&p) {
                out.push(p);
            }
        }
        Ok(out)
    }

    fn trial_key(start: Timestamp, p: &Pseudonym) -> Vec<u8> {
        let second = start.as_second().max(0);
        let mut key = TRIALS_PREFIX.to_vec();
        key.extend_from_slice(format!("{second:0SECOND_DIGITS$}/").as_bytes());
        key.extend_from_slice(p.to_hex().as_bytes());
        key
    }

    /// Records in `batch` that customer `p` has a booked trial starting at `start`.
    pub fn schedule_trial(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        start: Timestamp,
        p: &Pseudonym,
    ) {
        batch.insert(&self.ks.meta, Self::trial_key(start, p), Vec::<u8>::new());
    }

    /// Removes in `batch` the entry of `p`'s trial at `start`.
    pub fn unschedule_trial(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        start: Timestamp,
        p: &Pseudonym,
    ) {
        batch.remove(&self.ks.meta, Self::trial_key(start, p));
    }

    /// The customers with a trial starting in `[from, to)`, by start time.
    pub fn trials_between(
        &self,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<(Timestamp, Pseudonym)>> {
        let mut out = Vec::new();
        let (lo, hi) = (
            Self::trial_key(from, &Pseudonym([0; PSEUDONYM_LEN])),
            Self::trial_key(to, &Pseudonym([0; PSEUDONYM_LEN])),
        );
        for g in self.ks.meta.range(lo..hi) {
            let (k, _) = g.into_inner()?;
            if let Some(entry) = parse_trial_key(&k) {
                out.push(entry);
            }
        }
        Ok(out)
    }

    /// Removes `p`'s index rows in `batch` (a forget).
    pub(super) fn remove_external(
        &self,
        p: &Pseudonym,
        batch: &mut fjall::OwnedWriteBatch,
    ) -> Result<()> {
        for g in self.ks.meta.prefix(XREF_PREFIX) {
            let (k, v) = g.into_inner()?;
            if v.as_ref() == &p.0[..] {
                batch.remove(&self.ks.meta, k);
            }
        }
        for g in self.ks.meta.prefix(TRIALS_PREFIX) {
            let (k, _) = g.into_inner()?;
            if parse_trial_key(&k).is_some_and(|(_, owner)| owner == *p) {
                batch.remove(&self.ks.meta, k);
            }
        }
        Ok(())
    }

    /// Points `from`'s index rows at `to` in `batch` (a move to a new identity).
    pub(super) fn retag_external(
        &self,
        from: &Pseudonym,
        to: &Pseudonym,
        batch: &mut fjall::OwnedWriteBatch,
    ) -> Result<()> {
        for g in self.ks.meta.prefix(XREF_PREFIX) {
            let (k, v) = g.into_inner()?;
            if v.as_ref() == &from.0[..] {
                batch.insert(&self.ks.meta, k, to.0.to_vec());
            }
        }
        for g in self.ks.meta.prefix(TRIALS_PREFIX) {
            let (k, _) = g.into_inner()?;
            if let Some((start, owner)) = parse_trial_key(&k) {
                if owner == *from {
                    batch.remove(&self.ks.meta, k);
                    self.schedule_trial(batch, start, to);
                }
            }
        }
        Ok(())
    }
}

fn parse_trial_key(k: &[u8]) -> Option<(Timestamp, Pseudonym)> {
    let rest = std::str::from_utf8(k.strip_prefix(TRIALS_PREFIX)?).ok()?;
    let (second, hex) = rest.split_once('/')?;
    let start = Timestamp::from_second(second.parse().ok()?).ok()?;
    Some((start, Pseudonym::from_hex(hex)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::crypto::StoreIdentity;

    #[test]
    fn links_and_trials_are_found_forgotten_and_moved() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreIdentity::generate()).unwrap();
        let (a, b) = (
            store.pseudonym("491510000001"),
            store.pseudonym("491510000002"),
        );
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let mut batch = store.batch();
        store.link_external(&mut batch, External::MagicLineCustomer, 10_001, &a);
        store.link_external(&mut batch, External::MagicLineBooking, 70_001, &a);
        store.schedule_trial(&mut batch, t("2026-12-07T17:00:00Z"), &a);
        store.schedule_trial(&mut batch, t("2026-12-08T17:00:00Z"), &b);
        // Two leads on one class date.
        store.link_class_date(&mut batch, 30_001, &a);
        store.link_class_date(&mut batch, 30_001, &b);
        store.commit_durable(batch).unwrap();
        let mut on_date = store.class_date_owners(30_001).unwrap();
        on_date.sort_by_key(|p| p.0);
        let mut want = vec![a, b];
        want.sort_by_key(|p| p.0);
        assert_eq!(on_date, want);
        assert!(store.class_date_owners(30_002).unwrap().is_empty());

        assert_eq!(
            store
                .external_owner(External::MagicLineCustomer, 10_001)
                .unwrap(),
            Some(a)
        );
        // Customer and booking ids are separate domains.
        assert_eq!(
            store
                .external_owner(External::MagicLineBooking, 10_001)
                .unwrap(),
            None
        );
        // The id itself is not in the key.
        for g in store.keyspaces().meta.prefix(XREF_PREFIX) {
            let k = g.key().unwrap();
            assert!(!String::from_utf8_lossy(&k).contains("10001"));
        }
        let window = store
            .trials_between(t("2026-12-07T00:00:00Z"), t("2026-12-08T17:00:00Z"))
            .unwrap();
        assert_eq!(window, vec![(t("2026-12-07T17:00:00Z"), a)]);

        // A move re-points every row of the customer.
        let c = store.pseudonym("491510000003");
        let mut batch = store.batch();
        store.retag_external(&a, &c, &mut batch).unwrap();
        store.commit_durable(batch).unwrap();
        assert_eq!(
            store
                .external_owner(External::MagicLineBooking, 70_001)
                .unwrap(),
            Some(c)
        );
        let all = store
            .trials_between(t("2026-01-01T00:00:00Z"), t("2027-01-01T00:00:00Z"))
            .unwrap();
        assert_eq!(all.len(), 2);
        assert!(all.contains(&(t("2026-12-07T17:00:00Z"), c)));
        assert!(store.class_date_owners(30_001).unwrap().contains(&c));
        assert!(!store.class_date_owners(30_001).unwrap().contains(&a));

        // A forget removes them; the other customer's stay.
        store.forget(&[c], Timestamp::now()).unwrap();
        assert_eq!(
            store
                .external_owner(External::MagicLineCustomer, 10_001)
                .unwrap(),
            None
        );
        let all = store
            .trials_between(t("2026-01-01T00:00:00Z"), t("2027-01-01T00:00:00Z"))
            .unwrap();
        assert_eq!(all, vec![(t("2026-12-08T17:00:00Z"), b)]);
        assert_eq!(store.class_date_owners(30_001).unwrap(), vec![b]);
    }
}
