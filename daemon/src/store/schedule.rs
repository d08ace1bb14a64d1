//! The durable schedule: messages to a customer that are due at a set time (reminders before a
//! booked trial, follow-ups after it), in the `schedule` keyspace.
//!
//! Two rows per scheduled message:
//!
//! - the **due row** `b'd' || due (u64 big-endian unix seconds) || pseudonym (16) || kind (1) ||
//!   booking id (i64 big-endian)`, valued as a queue row ([`super::queue_rows`]: the pseudonym
//!   in clear in front, the rest sealed under the customer's own data key). Sorted by due time,
//!   so a tick reads exactly the rows that are due, one range read, never a scan over customers
//!   or bookings;
//! - the **customer row** `b'c' || pseudonym || due || kind || booking id`, empty: a forget, a
//!   move or the cancellation of one booking finds a customer's rows with one prefix read.
//!
//! The row key names the due time, the customer by pseudonym, what kind of message and the
//! MagicLine booking id; the value holds what the message needs (the slot, sealed). A forget
//! removes both rows, and unlinking the key makes every copy of the sealed part unreadable.
//! Retiring a due row happens in the same durable batch that puts its message into the outbox
//! (the caller adds both to one batch), so it is sent exactly once, across restarts and kills.

use jiff::Timestamp;

use super::crypto::{Pseudonym, PSEUDONYM_LEN};
use super::queue_rows::Opened;
use super::{ks, Result, Store, StoreError};

const DUE_PREFIX: u8 = b'd';
const CUSTOMER_PREFIX: u8 = b'c';
/// Length of the part after the prefix byte of a due row's key.
const DUE_KEY_LEN: usize = 8 + PSEUDONYM_LEN + 1 + 8;

/// What a scheduled message is. The byte is part of the row key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScheduledKind {
    /// The first reminder before a trial (by default 24 hours before).
    ReminderEarly,
    /// The second reminder before a trial (by default 2 hours before).
    ReminderLate,
    /// After the trial's end: a thank-you when the person checked in, a no-show follow-up when
    /// not (decided when it is due).
    AfterTrial,
    /// The day after a trial the person came to: whether they want to sign up.
    SignUpQuestion,
}

impl ScheduledKind {
    /// Every kind.
    pub const ALL: [ScheduledKind; 4] = [
        ScheduledKind::ReminderEarly,
        ScheduledKind::ReminderLate,
        ScheduledKind::AfterTrial,
        ScheduledKind::SignUpQuestion,
    ];

    fn byte(self) -> u8 {
        match self {
            ScheduledKind::ReminderEarly => 1,
            ScheduledKind::ReminderLate => 2,
            ScheduledKind::AfterTrial => 3,
            ScheduledKind::SignUpQuestion => 4,
        }
    }

    fn from_byte(b: u8) -> Option<ScheduledKind> {
        ScheduledKind::ALL.into_iter().find(|k| k.byte() == b)
    }

    /// Stable name for logs, metrics and the audit log.
    pub fn code(self) -> &'static str {
        match self {
            ScheduledKind::ReminderEarly => "reminder_early",
            ScheduledKind::ReminderLate => "reminder_late",
            ScheduledKind::AfterTrial => "after_trial",
            ScheduledKind::SignUpQuestion => "sign_up_question",
        }
    }
}

/// The clear part of a scheduled message: everything its row key says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// When it is due.
    pub due: Timestamp,
    /// Whose it is.
    pub pseudonym: Pseudonym,
    /// What it is.
    pub kind: ScheduledKind,
    /// The MagicLine booking it is about.
    pub booking_id: i64,
}

impl Slot {
    /// The due row's key.
    pub fn key(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(1 + DUE_KEY_LEN);
        k.push(DUE_PREFIX);
        k.extend_from_slice(&due_secs(self.due).to_be_bytes());
        k.extend_from_slice(&self.pseudonym.0);
        k.push(self.kind.byte());
        k.extend_from_slice(&self.booking_id.to_be_bytes());
        k
    }

    /// The customer row's key.
    fn customer_key(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(1 + DUE_KEY_LEN);
        k.push(CUSTOMER_PREFIX);
        k.extend_from_slice(&self.pseudonym.0);
        k.extend_from_slice(&due_secs(self.due).to_be_bytes());
        k.push(self.kind.byte());
        k.extend_from_slice(&self.booking_id.to_be_bytes());
        k
    }

    /// Reads a due row's key.
    pub fn from_key(key: &[u8]) -> Option<Slot> {
        let rest = key.strip_prefix(&[DUE_PREFIX])?;
        if rest.len() != DUE_KEY_LEN {
            return None;
        }
        let due = u64::from_be_bytes(rest[..8].try_into().ok()?);
        let pseudonym = Pseudonym::from_key_prefix(&rest[8..])?;
        let kind = ScheduledKind::from_byte(rest[8 + PSEUDONYM_LEN])?;
        let booking_id = i64::from_be_bytes(rest[8 + PSEUDONYM_LEN + 1..].try_into().ok()?);
        Some(Slot {
            due: Timestamp::from_second(i64::try_from(due).ok()?).ok()?,
            pseudonym,
            kind,
            booking_id,
        })
    }

    /// Reads a customer row's key.
    fn from_customer_key(key: &[u8]) -> Option<Slot> {
        let rest = key.strip_prefix(&[CUSTOMER_PREFIX])?;
        if rest.len() != DUE_KEY_LEN {
            return None;
        }
        let mut due_key = vec![DUE_PREFIX];
        due_key.extend_from_slice(&rest[PSEUDONYM_LEN..PSEUDONYM_LEN + 8]);
        due_key.extend_from_slice(&rest[..PSEUDONYM_LEN]);
        due_key.extend_from_slice(&rest[PSEUDONYM_LEN + 8..]);
        Slot::from_key(&due_key)
    }
}

/// Unix seconds, never negative (a time before 1970 is due at once).
fn due_secs(t: Timestamp) -> u64 {
    u64::try_from(t.as_second()).unwrap_or(0)
}

/// A scheduled message that is due, opened.
pub struct Due {
    /// Its clear part.
    pub slot: Slot,
    /// What the scheduler sealed with it; `None` when the customer was forgotten since (the row
    /// is to be retired unread).
    pub plain: Option<zeroize::Zeroizing<Vec<u8>>>,
    /// The stored bytes as read: the row is acted on only if it is still stored so.
    pub value: Vec<u8>,
}

impl std::fmt::Debug for Due {
    // The opened part is about the person: its length only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Due{{{:?}, {} bytes}}",
            self.slot,
            self.plain.as_ref().map_or(0, |p| p.len())
        )
    }
}

impl Store {
    /// Adds a scheduled message to `batch`: `plain` is sealed under the customer's key
    /// ([`StoreError::NoDataKey`] when they have none: forgotten). Scheduling the same slot
    /// again replaces it.
    pub fn schedule(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        slot: &Slot,
        plain: &[u8],
    ) -> Result<()> {
        let key = slot.key();
        let value = self.seal_queue_row(ks::SCHEDULE, &key, &slot.pseudonym, plain)?;
        batch.insert(&self.ks.schedule, key, value);
        batch.insert(&self.ks.schedule, slot.customer_key(), Vec::new());
        Ok(())
    }

    /// Adds the removal of one scheduled message to `batch`.
    pub fn unschedule(&self, batch: &mut fjall::OwnedWriteBatch, slot: &Slot) {
        batch.remove(&self.ks.schedule, slot.key());
        batch.remove(&self.ks.schedule, slot.customer_key());
    }

    /// The customer's scheduled messages (all bookings), by due time.
    pub fn scheduled_of(&self, p: &Pseudonym) -> Result<Vec<Slot>> {
        let mut prefix = vec![CUSTOMER_PREFIX];
        prefix.extend_from_slice(&p.0);
        let mut out = Vec::new();
        for g in self.ks.schedule.prefix(prefix) {
            let k = g.key()?;
            out.push(Slot::from_customer_key(&k).ok_or(StoreError::Corrupt {
                keyspace: ks::SCHEDULE,
                what: "customer row key",
            })?);
        }
        Ok(out)
    }

    /// Adds the removal of every scheduled message of booking `booking_id` of `p` to `batch`
    /// (a cancellation); returns how many there were.
    pub fn unschedule_booking(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        p: &Pseudonym,
        booking_id: i64,
    ) -> Result<usize> {
        let slots: Vec<Slot> = self
            .scheduled_of(p)?
            .into_iter()
            .filter(|s| s.booking_id == booking_id)
            .collect();
        for s in &slots {
            self.unschedule(batch, s);
        }
        Ok(slots.len())
    }

    /// Adds the removal of every scheduled message of `p` to `batch` (a forget, an opt-out).
    pub fn unschedule_customer(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        p: &Pseudonym,
    ) -> Result<()> {
        for s in self.scheduled_of(p)? {
            self.unschedule(batch, &s);
        }
        Ok(())
    }

    /// Whether `p` has any scheduled message (its key is in use).
    pub(super) fn has_scheduled(&self, p: &Pseudonym) -> Result<bool> {
        let mut prefix = vec![CUSTOMER_PREFIX];
        prefix.extend_from_slice(&p.0);
        Ok(self.ks.schedule.prefix(prefix).next().is_some())
    }

    /// Up to `limit` scheduled messages due at or before `now`, earliest first: one range read
    /// over the due rows, however many customers and bookings the store holds.
    pub fn due(&self, now: Timestamp, limit: usize) -> Result<Vec<Due>> {
        let mut end = vec![DUE_PREFIX];
        end.extend_from_slice(&due_secs(now).to_be_bytes());
        end.extend_from_slice(&[0xff; DUE_KEY_LEN - 8]);
        let mut out = Vec::new();
        for g in self.ks.schedule.range(vec![DUE_PREFIX]..=end).take(limit) {
            let (k, v) = g.into_inner()?;
            let slot = Slot::from_key(&k).ok_or(StoreError::Corrupt {
                keyspace: ks::SCHEDULE,
                what: "due row key",
            })?;
            let plain = match self.open_queue_row(ks::SCHEDULE, &k, &v)? {
                Opened::Row(p, plain) if p == slot.pseudonym => Some(plain),
                Opened::Row(..) => {
                    return Err(StoreError::Corrupt {
                        keyspace: ks::SCHEDULE,
                        what: "due row of another customer",
                    })
                }
                Opened::Shredded(_) => None,
            };
            out.push(Due {
                slot,
                plain,
                value: v.to_vec(),
            });
        }
        Ok(out)
    }

    /// When the earliest scheduled message is due, if any is.
    pub fn next_due(&self) -> Result<Option<Timestamp>> {
        match self.ks.schedule.prefix([DUE_PREFIX]).next() {
            Some(g) => Ok(Slot::from_key(&g.key()?).map(|s| s.due)),
            None => Ok(None),
        }
    }

    /// Whether the due row of `due` is still stored exactly as it was read (not retired,
    /// replaced or forgotten since).
    pub fn still_scheduled(&self, due: &Due) -> Result<bool> {
        Ok(self
            .ks
            .schedule
            .get(due.slot.key())?
            .is_some_and(|v| v.as_ref() == due.value.as_slice()))
    }

    /// Moves `from`'s scheduled messages to `to` in `batch` (a move), re-sealed under `to_key`.
    pub(super) fn reschedule_customer(
        &self,
        from: &Pseudonym,
        to: &Pseudonym,
        to_key: &super::crypto::DataKey,
        batch: &mut fjall::OwnedWriteBatch,
    ) -> Result<u64> {
        let mut moved = 0;
        for s in self.scheduled_of(from)? {
            let key = s.key();
            let Some(v) = self.ks.schedule.get(&key)? else {
                continue;
            };
            self.unschedule(batch, &s);
            let Ok(Opened::Row(_, plain)) = self.open_queue_row(ks::SCHEDULE, &key, &v) else {
                continue;
            };
            let new = Slot {
                pseudonym: *to,
                ..s
            };
            let new_key = new.key();
            let sealed = super::queue_rows::seal_with(to_key, ks::SCHEDULE, &new_key, to, &plain);
            batch.insert(&self.ks.schedule, new_key, sealed);
            batch.insert(&self.ks.schedule, new.customer_key(), Vec::new());
            moved += 1;
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::crypto::StoreIdentity;

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreIdentity::generate()).unwrap();
        (dir, store)
    }

    fn slot(store: &Store, who: &str, due: i64, kind: ScheduledKind, booking: i64) -> Slot {
        Slot {
            due: Timestamp::from_second(due).unwrap(),
            pseudonym: store.pseudonym(who),
            kind,
            booking_id: booking,
        }
    }

    fn put(store: &Store, s: &Slot, plain: &[u8]) {
        let mut batch = store.batch();
        store.data_key_or_create(&s.pseudonym, &mut batch).unwrap();
        store.schedule(&mut batch, s, plain).unwrap();
        store.commit_durable(batch).unwrap();
    }

    #[test]
    fn keys_round_trip_and_sort_by_due_time() {
        let (_d, store) = open();
        let a = slot(
            &store,
            "4915100000001",
            2_000_000_000,
            ScheduledKind::ReminderLate,
            7,
        );
        assert_eq!(Slot::from_key(&a.key()), Some(a));
        assert_eq!(Slot::from_customer_key(&a.customer_key()), Some(a));
        let b = slot(
            &store,
            "4915100000000",
            2_000_000_001,
            ScheduledKind::ReminderEarly,
            1,
        );
        assert!(a.key() < b.key(), "earlier due sorts first whoever it is");
    }

    #[test]
    fn a_tick_reads_only_what_is_due_and_opens_it() {
        let (_d, store) = open();
        let early = slot(
            &store,
            "4915100000001",
            1_000,
            ScheduledKind::ReminderEarly,
            1,
        );
        let late = slot(
            &store,
            "4915100000002",
            2_000,
            ScheduledKind::ReminderLate,
            2,
        );
        put(&store, &late, b"late");
        put(&store, &early, b"early");
        assert_eq!(store.next_due().unwrap(), Some(early.due));
        assert!(store
            .due(Timestamp::from_second(999).unwrap(), 10)
            .unwrap()
            .is_empty());
        let due = store
            .due(Timestamp::from_second(1_500).unwrap(), 10)
            .unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].slot, early);
        assert_eq!(
            due[0].plain.as_deref().map(Vec::as_slice),
            Some(&b"early"[..])
        );
        assert!(store.still_scheduled(&due[0]).unwrap());
        let mut batch = store.batch();
        store.unschedule(&mut batch, &due[0].slot);
        store.commit_durable(batch).unwrap();
        assert!(!store.still_scheduled(&due[0]).unwrap());
        let all = store
            .due(Timestamp::from_second(5_000).unwrap(), 10)
            .unwrap();
        assert_eq!(all.iter().map(|d| d.slot).collect::<Vec<_>>(), vec![late]);
        assert_eq!(store.scheduled_of(&early.pseudonym).unwrap(), vec![]);
    }

    #[test]
    fn the_personal_part_is_sealed_and_a_forget_removes_and_shreds_it() {
        let (_d, store) = open();
        let s = slot(&store, "4915100000001", 1_000, ScheduledKind::AfterTrial, 9);
        let other = slot(
            &store,
            "4915100000002",
            1_000,
            ScheduledKind::AfterTrial,
            10,
        );
        put(&store, &s, b"Dienstag 18:00 secret-slot");
        put(&store, &other, b"other");
        let raw = store.ks.schedule.get(s.key()).unwrap().unwrap();
        assert!(!raw.windows(11).any(|w| w == b"secret-slot"));
        // A copy of the sealed row, as a backup or fjall's journal would keep it.
        let copy = raw.to_vec();
        store.forget(&[s.pseudonym], Timestamp::now()).unwrap();
        assert!(store.scheduled_of(&s.pseudonym).unwrap().is_empty());
        assert!(store.ks.schedule.get(s.key()).unwrap().is_none());
        assert!(matches!(
            store.open_queue_row(ks::SCHEDULE, &s.key(), &copy).unwrap(),
            Opened::Shredded(_)
        ));
        let left = store
            .due(Timestamp::from_second(2_000).unwrap(), 10)
            .unwrap();
        assert_eq!(left.iter().map(|d| d.slot).collect::<Vec<_>>(), vec![other]);
    }

    #[test]
    fn a_cancellation_removes_only_that_bookings_messages() {
        let (_d, store) = open();
        let a1 = slot(
            &store,
            "4915100000001",
            1_000,
            ScheduledKind::ReminderEarly,
            1,
        );
        let a2 = slot(
            &store,
            "4915100000001",
            1_100,
            ScheduledKind::ReminderLate,
            1,
        );
        let b = slot(
            &store,
            "4915100000001",
            1_200,
            ScheduledKind::ReminderLate,
            2,
        );
        for s in [&a1, &a2, &b] {
            put(&store, s, b"x");
        }
        let mut batch = store.batch();
        assert_eq!(
            store
                .unschedule_booking(&mut batch, &a1.pseudonym, 1)
                .unwrap(),
            2
        );
        store.commit_durable(batch).unwrap();
        assert_eq!(store.scheduled_of(&a1.pseudonym).unwrap(), vec![b]);
    }

    #[test]
    fn a_key_with_scheduled_messages_is_no_orphan() {
        let (_d, store) = open();
        let s = slot(
            &store,
            "4915100000001",
            1_000,
            ScheduledKind::ReminderEarly,
            1,
        );
        put(&store, &s, b"x");
        assert_eq!(store.remove_orphan_keys().unwrap(), 0);
        assert!(store.data_key(&s.pseudonym).unwrap().is_some());
    }
}
