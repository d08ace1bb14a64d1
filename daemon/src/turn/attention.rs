//! Which conversations wait for a person: one clear row per customer in the `meta` keyspace
//! (`attention/` + pseudonym) holding the latest [`AlertKind`] code and its time, written in
//! the batch of the turn that raised the alert and removed when staff hand the conversation
//! back to the assistant. Codes and pseudonyms only: no personal data. A row of a customer
//! forgotten since is ignored by readers (the record is gone).

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::StaffAlert;
use crate::store::crypto::{Pseudonym, PSEUDONYM_LEN};
use crate::store::{self, Store};

const PREFIX: &[u8] = b"attention/";

/// Why a conversation waits for a person, and since when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attention {
    /// The alert's reason code (`complaint`, `booking_failed`, …).
    pub reason: String,
    /// When the alert was raised.
    pub at: Timestamp,
}

fn key(p: &Pseudonym) -> Vec<u8> {
    let mut k = PREFIX.to_vec();
    k.extend_from_slice(&p.0);
    k
}

/// Marks `alert`'s customer as waiting for a person, in `batch`.
pub fn mark(store: &Store, batch: &mut fjall::OwnedWriteBatch, alert: &StaffAlert, at: Timestamp) {
    let value = Attention {
        reason: alert.kind.code().to_string(),
        at,
    };
    batch.insert(
        &store.keyspaces().meta,
        key(&alert.pseudonym),
        serde_json::to_vec(&value).expect("attention serialises"),
    );
}

/// Removes `p`'s mark, in `batch` (staff took care of it).
pub fn clear(store: &Store, batch: &mut fjall::OwnedWriteBatch, p: &Pseudonym) {
    batch.remove(&store.keyspaces().meta, key(p));
}

/// `p`'s mark, if there is one.
pub fn get(store: &Store, p: &Pseudonym) -> store::Result<Option<Attention>> {
    Ok(store
        .keyspaces()
        .meta
        .get(key(p))?
        .and_then(|v| serde_json::from_slice(&v).ok()))
}

/// Every marked customer with the mark.
pub fn all(store: &Store) -> store::Result<Vec<(Pseudonym, Attention)>> {
    let mut out = Vec::new();
    for g in store.keyspaces().meta.prefix(PREFIX) {
        let (k, v) = g.into_inner()?;
        let Some(p) = k
            .get(PREFIX.len()..)
            .filter(|rest| rest.len() == PSEUDONYM_LEN)
            .and_then(Pseudonym::from_key_prefix)
        else {
            continue;
        };
        if let Ok(a) = serde_json::from_slice(&v) {
            out.push((p, a));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::crypto::StoreIdentity;
    use crate::turn::AlertKind;

    #[test]
    fn a_mark_is_listed_until_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreIdentity::generate()).unwrap();
        let p = store.pseudonym("+491511234567");
        let at = Timestamp::from_second(1_700_000_000).unwrap();
        let mut batch = store.batch();
        let alert = StaffAlert {
            kind: AlertKind::BookingFailed,
            pseudonym: p,
        };
        mark(&store, &mut batch, &alert, at);
        store.commit_durable(batch).unwrap();
        let expected = Attention {
            reason: "booking_failed".into(),
            at,
        };
        assert_eq!(get(&store, &p).unwrap(), Some(expected.clone()));
        assert_eq!(all(&store).unwrap(), vec![(p, expected)]);
        let mut batch = store.batch();
        clear(&store, &mut batch, &p);
        store.commit_durable(batch).unwrap();
        assert_eq!(get(&store, &p).unwrap(), None);
        assert!(all(&store).unwrap().is_empty());
    }
}
