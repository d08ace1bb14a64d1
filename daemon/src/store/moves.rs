//! Moving a customer to a new identity: WhatsApp announces that a contact changed their phone
//! number (`user_changed_number`) or their business-scoped user id (`user_changed_user_id`).
//!
//! When the identity that keys the customer changes (the number of a customer keyed by number,
//! the user id of one keyed by user id), every row is re-keyed to the new pseudonym and re-sealed
//! under the new pseudonym's data key — record, history, bookings, the pending queue rows — the
//! user-id links follow, and the old pseudonym keeps nothing: no row, no link, no key file. When the other identity changes (the user id of a customer keyed by number), the record
//! is updated in place and the old user id's link is replaced by the new one.
//!
//! When the new identity already has a record, the two are merged into it rather than one lost:
//! the histories are interleaved by time, every booking row of both is kept, profile fields the
//! moving record lacks are taken from the other, the funnel stage is the further one, and a bot
//! mode other than active (pause, hand-over, opt-out) on either side stands.
//!
//! The caller holds both customers' locks ([`Store::lock_pair`]) and commits the batch; only
//! then is the old key file removed ([`Store::finish_move`]). A crash in between leaves a key
//! file without rows, which the retention sweep removes.

use super::crypto::{normalise_phone, DataKey, Pseudonym, PSEUDONYM_LEN};
use super::customers::{BotMode, Customer, Stage};
use super::messages::Message;
use super::{ks, meta_key, CustomerGuard, Result, Store, StoreError, ALIAS_PREFIX};

/// A new identity WhatsApp announced for a contact.
#[derive(Clone, PartialEq, Eq)]
pub enum IdentityChange {
    /// `user_changed_number`: the contact's new phone number.
    Number(String),
    /// `user_changed_user_id`: the contact's new business-scoped user id, and the previous one
    /// when WhatsApp named it.
    UserId {
        /// The new user id.
        new: String,
        /// The user id it replaces.
        previous: Option<String>,
    },
}

impl IdentityChange {
    /// Stable label for logs and the audit log (never the identity itself).
    pub fn label(&self) -> &'static str {
        match self {
            IdentityChange::Number(_) => "number",
            IdentityChange::UserId { .. } => "user_id",
        }
    }
}

impl std::fmt::Debug for IdentityChange {
    // Numbers and user ids are personal data: the kind only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdentityChange({})", self.label())
    }
}

/// What a move did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoveOutcome {
    /// The customer before the move.
    pub from: Pseudonym,
    /// The customer after the move (equal to `from` when only the record changed).
    pub to: Pseudonym,
    /// History rows now under `to` that came from `from`.
    pub messages: u64,
    /// Booking rows now under `to` that came from `from`.
    pub bookings: u64,
    /// `to` already had a record and the two were merged.
    pub merged: bool,
}

impl MoveOutcome {
    /// The rows changed their pseudonym (else the record was updated in place).
    pub fn rekeyed(&self) -> bool {
        self.from != self.to
    }
}

/// Holds the locks of the two customers of a move.
pub struct PairGuard<'a> {
    _first: CustomerGuard<'a>,
    _second: Option<CustomerGuard<'a>>,
}

impl Store {
    /// Locks two customers in a fixed order (one lock when they share a stripe), so two moves in
    /// opposite directions cannot deadlock.
    pub fn lock_pair(&self, a: &Pseudonym, b: &Pseudonym) -> PairGuard<'_> {
        let (ia, ib) = (self.stripe_of(a), self.stripe_of(b));
        let (first, second) = if ia <= ib { (a, b) } else { (b, a) };
        let first = self.lock_customer(first);
        let second = (ia != ib).then(|| self.lock_customer(second));
        PairGuard {
            _first: first,
            _second: second,
        }
    }

    /// Where `change` takes customer `from`: the new identity's pseudonym when the identity
    /// that keys the customer changes, else `from`. `None` when `from` has no record.
    pub fn move_target(
        &self,
        from: &Pseudonym,
        change: &IdentityChange,
    ) -> Result<Option<Pseudonym>> {
        let Some(c) = self.customer(from)? else {
            return Ok(None);
        };
        let keyed_by_number =
            !c.body.phone.is_empty() && self.pseudonyms.of_address(&c.body.phone) == *from;
        Ok(Some(match change {
            IdentityChange::Number(n) if keyed_by_number => self.pseudonyms.of_address(n),
            IdentityChange::UserId { new, .. } if !keyed_by_number => {
                self.pseudonyms.of_address(new)
            }
            _ => *from,
        }))
    }

    /// Adds the rows of moving customer `from` to `to` (from [`Store::move_target`]) to
    /// `batch`. Call with [`Store::lock_pair`] held; after the batch is durable call
    /// [`Store::finish_move`]. `None` when `from` has no record (never known, or forgotten):
    /// nothing is written.
    pub fn move_customer(
        &self,
        from: &Pseudonym,
        to: &Pseudonym,
        change: &IdentityChange,
        batch: &mut fjall::OwnedWriteBatch,
    ) -> Result<Option<MoveOutcome>> {
        let Some(mut c) = self.customer(from)? else {
            return Ok(None);
        };
        let old_user_id = c.body.user_id.clone();
        match change {
            IdentityChange::Number(n) => c.body.phone = normalise_phone(n),
            IdentityChange::UserId { new, .. } => c.body.user_id = Some(new.clone()),
        }
        // The previous user id no longer names this person.
        if let IdentityChange::UserId { new, previous } = change {
            for old in [previous.as_deref(), old_user_id.as_deref()]
                .into_iter()
                .flatten()
                .filter(|old| *old != new.as_str())
            {
                let own = self.pseudonyms.of_address(old);
                if self.alias_of(&own)?.is_some_and(|p| p == *from) {
                    batch.remove(&self.ks.meta, meta_key(ALIAS_PREFIX, &own));
                }
            }
        }
        if from == to {
            self.put_customer(&c, batch)?;
            if let IdentityChange::UserId { new, .. } = change {
                self.link_user_id(new, from, batch)?;
            }
            return Ok(Some(MoveOutcome {
                from: *from,
                to: *to,
                messages: 0,
                bookings: 0,
                merged: false,
            }));
        }

        let old_key = self.data_key(from)?.ok_or(StoreError::Corrupt {
            keyspace: ks::CUSTOMERS,
            what: "customer without data key",
        })?;
        let existing = self.customer(to)?;
        let merged = existing.is_some();
        let new_key = self.data_key_or_create(to, batch)?;

        // History: re-sealed under the new pseudonym; interleaved by time with a merged record's.
        let mut history = self.take_messages(from, &old_key, batch)?;
        let moved_messages = history.len() as u64;
        if existing.is_some() {
            history.extend(self.take_messages(to, &new_key, batch)?);
            history.sort_by_key(|m| m.at);
        }
        let mut record = match existing {
            Some(target) => merge(c, target),
            None => c,
        };
        record.pseudonym = *to;
        record.meta.next_message_seq = 0;
        for m in &history {
            self.append_message(&mut record, m, batch)?;
        }

        // Bookings: row key `pseudonym || request hash`; the request part stays.
        let mut moved_bookings = 0;
        for g in self.ks.bookings.prefix(from.0) {
            let (k, v) = g.into_inner()?;
            let plain = zeroize::Zeroizing::new(old_key.open(ks::BOOKINGS, &k, &v)?);
            let mut nk = to.0.to_vec();
            nk.extend_from_slice(&k[PSEUDONYM_LEN..]);
            batch.insert(
                &self.ks.bookings,
                nk.clone(),
                new_key.seal(ks::BOOKINGS, &nk, &plain),
            );
            batch.remove(&self.ks.bookings, k);
            moved_bookings += 1;
        }

        self.retag(from, to, &new_key, batch)?;
        batch.remove(&self.ks.meta, meta_key(ALIAS_PREFIX, from));
        batch.remove(&self.ks.customers, from.0);
        self.remove_contact_rows(from, batch)?;
        self.put_customer(&record, batch)?;
        if let (IdentityChange::Number(_), Some(user_id)) = (change, &record.body.user_id) {
            // A user id that had its own record before is linked now that the number moved.
            self.link_user_id(user_id, to, batch)?;
        }
        Ok(Some(MoveOutcome {
            from: *from,
            to: *to,
            messages: moved_messages,
            bookings: moved_bookings,
            merged,
        }))
    }

    /// After a move's batch is durable: the old pseudonym's key file goes, so nothing sealed
    /// under it can be opened any more.
    pub fn finish_move(&self, outcome: &MoveOutcome) -> Result<()> {
        if outcome.rekeyed() {
            self.keys.remove(&outcome.from)?;
            self.forget_cached_key(&outcome.from);
        }
        Ok(())
    }

    /// Pending queue rows and user-id links of `from` now belong to `to` (whose data key is
    /// `to_key`).
    fn retag(
        &self,
        from: &Pseudonym,
        to: &Pseudonym,
        to_key: &DataKey,
        batch: &mut fjall::OwnedWriteBatch,
    ) -> Result<()> {
        // Pending queue rows carry the pseudonym in clear in front, so a forget of the new
        // identity finds them, and are sealed under their customer's key: re-sealed under the
        // new one, as the old key file goes once the move is durable.
        self.reseal_queue_rows(from, to, to_key, batch)?;
        // MagicLine ids and trial times find the customer under the new pseudonym.
        self.retag_external(from, to, batch)?;
        // Scheduled reminders and follow-ups: the same, under the new pseudonym's key.
        self.reschedule_customer(from, to, to_key, batch)?;

        // Links follow the customer; the new identity is a customer key, not a link.
        let own_link = meta_key(ALIAS_PREFIX, to);
        for g in self.ks.meta.prefix(ALIAS_PREFIX) {
            let (k, v) = g.into_inner()?;
            if k.as_ref() == own_link.as_slice() {
                batch.remove(&self.ks.meta, k);
            } else if v.as_ref() == &from.0[..] {
                batch.insert(&self.ks.meta, k, to.0.to_vec());
            }
        }
        Ok(())
    }

    /// Opens every history row of `p` and removes it in `batch`.
    fn take_messages(
        &self,
        p: &Pseudonym,
        key: &DataKey,
        batch: &mut fjall::OwnedWriteBatch,
    ) -> Result<Vec<Message>> {
        let mut out = Vec::new();
        for g in self.ks.messages.prefix(p.0) {
            let (k, v) = g.into_inner()?;
            out.push(super::messages::open_message(key, &k, &v)?);
            batch.remove(&self.ks.messages, k);
        }
        Ok(out)
    }

    pub(super) fn stripe_of(&self, p: &Pseudonym) -> usize {
        u16::from_be_bytes([p.0[0], p.0[1]]) as usize % self.stripes.len()
    }
}

fn stage_rank(s: Stage) -> u8 {
    match s {
        Stage::NewLead => 0,
        Stage::NameKnown => 1,
        Stage::TrialBooked => 2,
        // Knowing the person is a member outranks everything a lead's record says.
        Stage::Member => 3,
    }
}

/// The moving record merged into the record the new identity already had (see the module doc).
fn merge(moving: Customer, target: Customer) -> Customer {
    let mut out = moving;
    let mut profile = serde_json::to_value(&out.body.profile).unwrap_or_default();
    if let (Some(mine), serde_json::Value::Object(theirs)) = (
        profile.as_object_mut(),
        serde_json::to_value(&target.body.profile).unwrap_or_default(),
    ) {
        for (k, v) in theirs {
            mine.entry(k).or_insert(v);
        }
    }
    if let Ok(p) = serde_json::from_value(profile) {
        out.body.profile = p;
    }
    if out.body.contact_name.is_none() {
        out.body.contact_name = target.body.contact_name;
    }
    if out.body.user_id.is_none() {
        out.body.user_id = target.body.user_id;
    }
    out.body.conversation.disclosed_ai |= target.body.conversation.disclosed_ai;
    if stage_rank(target.meta.stage) > stage_rank(out.meta.stage) {
        out.meta.stage = target.meta.stage;
    }
    if out.meta.mode == BotMode::Active {
        out.meta.mode = target.meta.mode;
    }
    out.meta.first_contact = out.meta.first_contact.min(target.meta.first_contact);
    out.meta.last_contact = out.meta.last_contact.max(target.meta.last_contact);
    out.meta.last_inbound = out.meta.last_inbound.max(target.meta.last_inbound);
    out.meta.ever_booked |= target.meta.ever_booked;
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use jiff::Timestamp;

    use super::*;
    use crate::audit::{AuditFilter, AuditLog, Detail};
    use crate::store::crypto::StoreIdentity;
    use crate::store::messages::Direction;
    use crate::turn::{self, Effects, TurnOutcome};

    const OLD_NUMBER: &str = "+49 151 11111111";
    const NEW_NUMBER: &str = "+49 151 22222222";
    const OLD_ID: &str = "DE.111";
    const NEW_ID: &str = "DE.222";

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Arc<Store>,
        audit: AuditLog,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), StoreIdentity::generate()).unwrap());
        let audit = AuditLog::open(store.clone()).unwrap().without_journal();
        Fixture {
            _dir: dir,
            store,
            audit,
        }
    }

    fn at(minute: i64) -> Timestamp {
        Timestamp::from_second(1_780_000_000 + minute * 60).unwrap()
    }

    impl Fixture {
        /// A customer at `address` with a profile, `texts` as history at minutes `0..`, and one
        /// booking row.
        fn customer(&self, address: &str, texts: &[(&str, i64)], booking: &[u8]) -> Pseudonym {
            let (c, ()) = self
                .store
                .update_customer(address, at(0), |c, batch, s| {
                    c.body.profile.vorname = Some("Lena".into());
                    c.meta.stage = Stage::NameKnown;
                    for (text, minute) in texts {
                        let m = Message {
                            direction: Direction::Inbound,
                            text: (*text).into(),
                            at: at(*minute),
                            wamid: None,
                        };
                        s.append_message(c, &m, batch)?;
                    }
                    Ok(())
                })
                .unwrap();
            let p = c.pseudonym;
            let key = self.store.data_key(&p).unwrap().unwrap();
            let mut rk = p.0.to_vec();
            rk.extend_from_slice(&[booking.len() as u8; 16]);
            self.store
                .keyspaces()
                .bookings
                .insert(&rk, key.seal(ks::BOOKINGS, &rk, booking))
                .unwrap();
            p
        }

        /// Commits a notice turn from `address` as the dispatcher does.
        fn notice(&self, from: Pseudonym, address: &str, change: IdentityChange) -> Effects {
            let mut effects = Effects::nothing(from, address, at(100), TurnOutcome::System);
            effects.moves.push(change);
            turn::commit(&self.store, effects, &(), Some(&self.audit)).unwrap()
        }

        fn texts(&self, p: &Pseudonym) -> Vec<String> {
            self.store
                .recent_messages(p, 100)
                .unwrap()
                .into_iter()
                .map(|m| m.text)
                .collect()
        }

        fn bookings(&self, p: &Pseudonym) -> Vec<Vec<u8>> {
            let key = self.store.data_key(p).unwrap();
            self.store
                .keyspaces()
                .bookings
                .prefix(p.0)
                .map(|g| {
                    let (k, v) = g.into_inner().unwrap();
                    key.as_ref()
                        .unwrap()
                        .open(ks::BOOKINGS, &k, &v)
                        .unwrap()
                        .to_vec()
                })
                .collect()
        }

        /// The old pseudonym holds nothing: no record, row, link, queue row or key file.
        fn assert_empty(&self, old: &Pseudonym) {
            let s = &self.store;
            assert!(s.customer(old).unwrap().is_none());
            assert_eq!(s.contact(old).unwrap(), None, "contact row moved");
            assert_eq!(s.keyspaces().messages.prefix(old.0).count(), 0);
            assert_eq!(s.keyspaces().bookings.prefix(old.0).count(), 0);
            assert!(s.data_key(old).unwrap().is_none(), "old key file removed");
            for g in s.keyspaces().meta.prefix(ALIAS_PREFIX) {
                let (k, v) = g.into_inner().unwrap();
                assert_ne!(v.as_ref(), &old.0[..]);
                assert_ne!(k.as_ref(), meta_key(ALIAS_PREFIX, old).as_slice());
            }
            for g in s.keyspaces().outbox.iter() {
                assert_ne!(&g.value().unwrap()[..PSEUDONYM_LEN], &old.0[..]);
            }
        }

        fn moved_entries(&self) -> Vec<crate::audit::AuditRecord> {
            self.audit
                .query(&AuditFilter {
                    action: Some("customer.moved".into()),
                    ..AuditFilter::default()
                })
                .unwrap()
        }
    }

    #[test]
    fn a_new_number_moves_everything_and_the_old_number_finds_nothing() {
        let f = fixture();
        let old = f.customer(OLD_NUMBER, &[("Hallo", 1), ("Ich bin Lena", 2)], b"booked");
        // A user id linked to the number, and a reply waiting in the outbox.
        let mut batch = f.store.batch();
        assert!(f.store.link_user_id(OLD_ID, &old, &mut batch).unwrap());
        let mut queued = old.0.to_vec();
        queued.extend_from_slice(b"sealed reply");
        batch.insert(&f.store.keyspaces().outbox, b"q1".to_vec(), queued);
        f.store.commit_durable(batch).unwrap();

        let done = f.notice(old, OLD_NUMBER, IdentityChange::Number(NEW_NUMBER.into()));
        let new = f.store.pseudonym(NEW_NUMBER);
        assert_eq!(done.pseudonym, new);
        assert!(done.replies.is_empty());

        f.assert_empty(&old);
        assert_eq!(
            f.store.pseudonym(OLD_NUMBER),
            old,
            "the old number resolves to no one"
        );
        let c = f.store.customer(&new).unwrap().unwrap();
        assert_eq!(
            f.store.contact(&new).unwrap(),
            Some(crate::store::contacts::Contact::of(&c.meta))
        );
        assert_eq!(c.body.phone, "4915122222222");
        assert_eq!(c.body.profile.vorname.as_deref(), Some("Lena"));
        assert_eq!(c.meta.stage, Stage::NameKnown);
        assert_eq!(f.texts(&new), ["Hallo", "Ich bin Lena"]);
        assert_eq!(f.bookings(&new), [b"booked".to_vec()]);
        assert_eq!(
            f.store.pseudonym(OLD_ID),
            new,
            "the user id follows the customer"
        );
        let outbox = f.store.keyspaces().outbox.get(b"q1").unwrap().unwrap();
        assert_eq!(&outbox[..PSEUDONYM_LEN], &new.0[..]);

        let entries = f.moved_entries();
        assert_eq!(entries.len(), 1);
        let e = &entries[0];
        assert_eq!(e.subject.as_ref().unwrap().as_str(), new.short());
        assert_eq!(e.details["from"], Detail::Code(old.short()));
        assert_eq!(e.details["change"], Detail::Code("number".into()));
        assert_eq!(e.details["messages"], Detail::Count(2));
        assert_eq!(e.details["bookings"], Detail::Count(1));
        assert_eq!(e.details["merged"], Detail::Flag(false));
        // No clear identifier in the entry.
        let line = serde_json::to_string(e).unwrap();
        assert!(!line.contains("22222222") && !line.contains("11111111"));

        // The notice repeated (a crash before the inbox rows were retired) finds nothing more.
        f.notice(old, OLD_NUMBER, IdentityChange::Number(NEW_NUMBER.into()));
        assert_eq!(f.moved_entries().len(), 1);
        assert_eq!(f.texts(&new).len(), 2);
    }

    #[test]
    fn a_new_user_id_moves_a_customer_known_by_user_id() {
        let f = fixture();
        let old = f.customer(OLD_ID, &[("Hallo", 1)], b"booked");
        assert_eq!(old, f.store.pseudonyms.of_address(OLD_ID));
        f.notice(
            old,
            OLD_ID,
            IdentityChange::UserId {
                new: NEW_ID.into(),
                previous: Some(OLD_ID.into()),
            },
        );
        let new = f.store.pseudonym(NEW_ID);
        f.assert_empty(&old);
        assert_eq!(f.store.pseudonym(OLD_ID), old);
        let c = f.store.customer(&new).unwrap().unwrap();
        assert_eq!(c.body.user_id.as_deref(), Some(NEW_ID));
        assert_eq!(f.texts(&new), ["Hallo"]);
        assert_eq!(f.bookings(&new).len(), 1);
    }

    #[test]
    fn a_new_user_id_of_a_customer_known_by_number_replaces_the_link() {
        let f = fixture();
        let p = f.customer(OLD_NUMBER, &[("Hallo", 1)], b"booked");
        let mut batch = f.store.batch();
        f.store.link_user_id(OLD_ID, &p, &mut batch).unwrap();
        f.store.commit_durable(batch).unwrap();
        assert_eq!(f.store.pseudonym(OLD_ID), p);

        let done = f.notice(
            p,
            OLD_NUMBER,
            IdentityChange::UserId {
                new: NEW_ID.into(),
                previous: Some(OLD_ID.into()),
            },
        );
        assert_eq!(done.pseudonym, p);
        assert_ne!(
            f.store.pseudonym(OLD_ID),
            p,
            "the old user id finds nothing"
        );
        assert!(f
            .store
            .customer(&f.store.pseudonym(OLD_ID))
            .unwrap()
            .is_none());
        assert_eq!(f.store.pseudonym(NEW_ID), p);
        let c = f.store.customer(&p).unwrap().unwrap();
        assert_eq!(c.body.user_id.as_deref(), Some(NEW_ID));
        assert_eq!(f.texts(&p), ["Hallo"]);
        assert_eq!(f.moved_entries().len(), 1);
    }

    #[test]
    fn a_move_onto_a_known_identity_merges_and_keeps_every_booking() {
        let f = fixture();
        let old = f.customer(OLD_NUMBER, &[("alt 1", 1), ("alt 3", 3)], b"old booking");
        let new = f.customer(
            NEW_NUMBER,
            &[("neu 2", 2), ("neu 4", 4)],
            b"new booking two",
        );
        f.store
            .update_existing(&new, |c, _, _| {
                c.body.profile.vorname = None;
                c.body.profile.email = Some("lena@example.de".into());
                c.meta.mode = BotMode::Paused;
                Ok(())
            })
            .unwrap();

        f.notice(old, OLD_NUMBER, IdentityChange::Number(NEW_NUMBER.into()));
        f.assert_empty(&old);
        assert_eq!(f.texts(&new), ["alt 1", "neu 2", "alt 3", "neu 4"]);
        let mut bookings = f.bookings(&new);
        bookings.sort();
        assert_eq!(
            bookings,
            [b"new booking two".to_vec(), b"old booking".to_vec()]
        );
        let c = f.store.customer(&new).unwrap().unwrap();
        assert_eq!(c.body.profile.vorname.as_deref(), Some("Lena"));
        assert_eq!(c.body.profile.email.as_deref(), Some("lena@example.de"));
        assert_eq!(
            c.meta.mode,
            BotMode::Paused,
            "a pause on either side stands"
        );
        assert_eq!(c.meta.next_message_seq, 4);
        assert_eq!(f.moved_entries()[0].details["merged"], Detail::Flag(true));
    }

    #[test]
    fn a_forgotten_customer_is_not_moved_and_nothing_is_written() {
        let f = fixture();
        let old = f.customer(OLD_NUMBER, &[("Hallo", 1)], b"booked");
        f.store.forget(&[old], at(50)).unwrap();
        let done = f.notice(old, OLD_NUMBER, IdentityChange::Number(NEW_NUMBER.into()));
        let new = f.store.pseudonym(NEW_NUMBER);
        assert_eq!(done.pseudonym, old);
        assert!(f.store.customer(&new).unwrap().is_none());
        assert!(
            f.store.data_key(&new).unwrap().is_none(),
            "no key for the new number"
        );
        assert!(f.moved_entries().is_empty());
    }
}
