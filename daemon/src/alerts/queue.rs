//! The durable alert rows in the `alerts` keyspace. This part belongs to the bottom layer (it
//! imports only `store`), so `turn::commit` and the WhatsApp failure handling can put an alert
//! into the batch of the effect that raises it.
//!
//! Layout (the queue-row layout of the inbox and outbox, `store::queue_rows`): key `stage (1) ||
//! id (16)`, value `pseudonym (16) || sealed alert`. An alert about a customer is sealed under
//! that customer's data key, so a forget shreds it like the rest of their rows (the first name
//! is personal data); an alert about no one (the whole sender paused) carries [`NOBODY`] in
//! front and is sealed under the store's queue key, which opens no one's data. The pseudonym in
//! front lets a forget or a move find a person's alerts without opening any, and it is the one
//! a read alert is about (a move re-seals the row under the new pseudonym).
//!
//! Stages: `r` (raised, not yet handed to any channel) and `m` (an e-mail still to be sent).
//! The id is the time of raising in nanoseconds and 8 random bytes: ordered by time, unique
//! without a counter, and kept from stage to stage, so the e-mail's Message-ID is the same on
//! every attempt.

use std::sync::LazyLock;

use jiff::Timestamp;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::store::crypto::{Pseudonym, PSEUDONYM_LEN};
use crate::store::queue_rows::Opened;
use crate::store::{ks, Result, Store, StoreError};

/// Stage of an alert no channel has taken yet.
pub const RAISED: u8 = b'r';
/// Stage of an alert whose e-mail is still to be sent.
pub const MAIL: u8 = b'm';
/// The pseudonym slot of an alert about no particular customer.
pub const NOBODY: Pseudonym = Pseudonym([0; PSEUDONYM_LEN]);
/// Length of an alert id.
pub const ID_LEN: usize = 16;

static WAKE: LazyLock<Notify> = LazyLock::new(Notify::new);

/// Wakes the alert worker; call once the write that raised an alert is committed.
pub fn committed() {
    WAKE.notify_one();
}

/// What the alert worker waits on.
pub(super) fn wake() -> &'static Notify {
    &WAKE
}

/// Why staff are alerted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Handed over: the contact complained.
    Complaint,
    /// Handed over: the contact wants to cancel an appointment.
    Cancellation,
    /// Handed over: a matter with an existing contract, billing or payment.
    ContractQuestion,
    /// Handed over: a health question beyond the studio's stated facts.
    HealthQuestion,
    /// Handed over: the contact asked for a person.
    PersonRequested,
    /// Handed over: a member wants an appointment.
    MemberAppointment,
    /// Handed over: the contact's messages could not be answered after every attempt.
    TurnFailed,
    /// A booking failed; a person has to follow up.
    BookingFailed,
    /// A booked trial was moved; the old appointment is to be cancelled in MagicLine.
    Rescheduled,
    /// WhatsApp rejected the access token: nothing is sent until it is fixed.
    SenderPaused,
    /// WhatsApp's spam rate limit: sending is slowed down.
    SpamLimited,
    /// A reply could not be delivered and was dropped; staff should contact the customer.
    ReplyUndelivered,
    /// The alert template itself could not be delivered to a staff number (paused, disabled,
    /// rejected): the failure of a staff alert is reported, never the staff member.
    AlertUndelivered,
}

impl Reason {
    /// Every reason (metrics, tests).
    pub const ALL: [Reason; 13] = [
        Reason::Complaint,
        Reason::Cancellation,
        Reason::ContractQuestion,
        Reason::HealthQuestion,
        Reason::PersonRequested,
        Reason::MemberAppointment,
        Reason::TurnFailed,
        Reason::BookingFailed,
        Reason::Rescheduled,
        Reason::SenderPaused,
        Reason::SpamLimited,
        Reason::ReplyUndelivered,
        Reason::AlertUndelivered,
    ];

    /// The stable code (metric label, audit detail, the journal).
    pub fn code(self) -> &'static str {
        match self {
            Reason::Complaint => "complaint",
            Reason::Cancellation => "cancellation",
            Reason::ContractQuestion => "contract_question",
            Reason::HealthQuestion => "health_question",
            Reason::PersonRequested => "person_requested",
            Reason::MemberAppointment => "member_appointment",
            Reason::TurnFailed => "turn_failed",
            Reason::BookingFailed => "booking_failed",
            Reason::Rescheduled => "rescheduled",
            Reason::SenderPaused => "sender_paused",
            Reason::SpamLimited => "spam_limited",
            Reason::ReplyUndelivered => "reply_undelivered",
            Reason::AlertUndelivered => "alert_undelivered",
        }
    }

    /// Whether staff are told by WhatsApp too. Alerts about the WhatsApp sender itself go by
    /// e-mail only: queued behind the trouble they report, they would arrive late or never, and
    /// a failing alert template must not raise another WhatsApp alert.
    pub fn by_whatsapp(self) -> bool {
        !matches!(
            self,
            Reason::SenderPaused
                | Reason::SpamLimited
                | Reason::ReplyUndelivered
                | Reason::AlertUndelivered
        )
    }
}

/// One alert as stored (sealed).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Why.
    pub reason: Reason,
    /// The customer it is about, if any.
    #[serde(
        default,
        with = "pseudonym_hex",
        skip_serializing_if = "Option::is_none"
    )]
    pub customer: Option<Pseudonym>,
    /// The contact's first name when known: the only personal data an alert carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    /// When it was raised.
    pub raised: Timestamp,
}

impl std::fmt::Debug for Alert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alert")
            .field("reason", &self.reason)
            .field("customer", &self.customer)
            .field("first_name", &self.first_name.as_ref().map(|_| "***"))
            .finish()
    }
}

/// A pseudonym inside a sealed alert, in its full hex form.
mod pseudonym_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::store::crypto::Pseudonym;

    pub(super) fn serialize<S: Serializer>(p: &Option<Pseudonym>, s: S) -> Result<S::Ok, S::Error> {
        match p {
            Some(p) => s.serialize_some(&p.to_hex()),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Pseudonym>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| {
                Pseudonym::from_hex(&s).ok_or_else(|| serde::de::Error::custom("not a pseudonym"))
            })
            .transpose()
    }
}

/// An alert row read back.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The alert's id (stable across stages).
    pub id: [u8; ID_LEN],
    /// The stage it is in.
    pub stage: u8,
    /// The alert.
    pub alert: Alert,
}

impl Stored {
    /// The id in hex (the e-mail's Message-ID, logs).
    pub fn id_hex(&self) -> String {
        hex::encode(self.id)
    }
}

/// A fresh id for an alert raised at `at`.
pub fn new_id(at: Timestamp) -> [u8; ID_LEN] {
    let mut id = [0u8; ID_LEN];
    let nanos = u64::try_from(at.as_nanosecond()).unwrap_or(0);
    id[..8].copy_from_slice(&nanos.to_be_bytes());
    rand::thread_rng().fill_bytes(&mut id[8..]);
    id
}

fn row_key(stage: u8, id: &[u8; ID_LEN]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + ID_LEN);
    k.push(stage);
    k.extend_from_slice(id);
    k
}

/// Adds `alert` at `stage` with `id` to `batch`. An alert about a customer who has no data key
/// any more (forgotten meanwhile) is not written: nothing new is kept about them.
pub fn put(
    store: &Store,
    batch: &mut fjall::OwnedWriteBatch,
    stage: u8,
    id: &[u8; ID_LEN],
    alert: &Alert,
) {
    let key = row_key(stage, id);
    let body = zeroize::Zeroizing::new(serde_json::to_vec(alert).expect("alerts serialise"));
    let v = match alert.customer {
        Some(p) => match store.seal_queue_row(ks::ALERTS, &key, &p, &body) {
            Ok(v) => v,
            Err(StoreError::NoDataKey) => {
                tracing::info!(customer = %p, reason = alert.reason.code(), "alert about a forgotten customer not kept");
                return;
            }
            Err(e) => {
                // The key file could not be read: the alert must still reach staff. Sealed
                // under the queue key it is removed by a forget like any alert row.
                tracing::error!(customer = %p, error = %e, "alert sealed under the queue key");
                legacy_row(store, &key, p, &body)
            }
        },
        None => legacy_row(store, &key, NOBODY, &body),
    };
    batch.insert(&store.keyspaces().alerts, key, v);
}

/// `p || body sealed under the queue key` (the layout `store::queue_rows` reads as legacy).
fn legacy_row(store: &Store, key: &[u8], p: Pseudonym, body: &[u8]) -> Vec<u8> {
    let mut v = p.0.to_vec();
    v.extend_from_slice(&store.queue_key().seal(ks::ALERTS, key, body));
    v
}

/// Raises `alert`: adds it to `batch`, which the caller commits with the effect that raised it.
pub fn raise(store: &Store, batch: &mut fjall::OwnedWriteBatch, alert: &Alert) {
    put(store, batch, RAISED, &new_id(alert.raised), alert);
}

/// Raises `alert` in a durable write of its own (an effect that writes nothing else).
pub fn raise_now(store: &Store, alert: &Alert) -> Result<()> {
    let mut batch = store.batch();
    raise(store, &mut batch, alert);
    store.commit_durable(batch)?;
    committed();
    Ok(())
}

/// Adds the removal of the row of `id` at `stage` to `batch`.
pub fn remove(store: &Store, batch: &mut fjall::OwnedWriteBatch, stage: u8, id: &[u8; ID_LEN]) {
    batch.remove(&store.keyspaces().alerts, row_key(stage, id));
}

/// Whether the row of `id` at `stage` is still there.
pub fn contains(store: &Store, stage: u8, id: &[u8; ID_LEN]) -> Result<bool> {
    Ok(store.keyspaces().alerts.contains_key(row_key(stage, id))?)
}

/// Every alert at `stage`, oldest first; about the customer whose pseudonym the row carries.
/// An alert whose customer's key is gone (forgotten since) is skipped; a row that cannot be
/// opened is an error.
pub fn at_stage(store: &Store, stage: u8) -> Result<Vec<Stored>> {
    let corrupt = |what| StoreError::Corrupt {
        keyspace: ks::ALERTS,
        what,
    };
    let mut out = Vec::new();
    for g in store.keyspaces().alerts.prefix([stage]) {
        let (k, v) = g.into_inner()?;
        let id: [u8; ID_LEN] = k
            .get(1..)
            .and_then(|t| t.try_into().ok())
            .ok_or(corrupt("alert key"))?;
        let (p, plain) = match store.open_queue_row(ks::ALERTS, &k, &v)? {
            Opened::Row(p, plain) => (p, plain),
            Opened::Shredded(_) => continue,
        };
        let mut alert: Alert = serde_json::from_slice(&plain).map_err(|_| corrupt("alert"))?;
        alert.customer = (p != NOBODY).then_some(p);
        out.push(Stored { id, stage, alert });
    }
    Ok(out)
}

/// Number of alerts not yet delivered (both stages), for `frontdesk status`.
pub fn pending(store: &Store) -> usize {
    store.keyspaces().alerts.prefix([RAISED]).count()
        + store.keyspaces().alerts.prefix([MAIL]).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::crypto::StoreIdentity;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreIdentity::generate()).unwrap();
        (dir, store)
    }

    /// A customer with a data key, as the webhook leaves one.
    fn customer(store: &Store, phone: &str) -> Pseudonym {
        let p = store.pseudonym(phone);
        let mut batch = store.batch();
        store.data_key_or_create(&p, &mut batch).unwrap();
        store.commit_durable(batch).unwrap();
        p
    }

    #[test]
    fn a_raised_alert_reads_back_and_its_name_is_sealed() {
        let (_dir, store) = store();
        let p = customer(&store, "4915112345678");
        let alert = Alert {
            reason: Reason::Complaint,
            customer: Some(p),
            first_name: Some("Wiebke".into()),
            raised: Timestamp::now(),
        };
        raise_now(&store, &alert).unwrap();
        let rows = at_stage(&store, RAISED).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].alert, alert);
        assert!(at_stage(&store, MAIL).unwrap().is_empty());
        for g in store.keyspaces().alerts.iter() {
            let (_, v) = g.into_inner().unwrap();
            assert_eq!(&v[..PSEUDONYM_LEN], &p.0[..]);
            assert!(!v.windows(6).any(|w| w == b"Wiebke"));
        }
        assert_eq!(pending(&store), 1);
    }

    #[test]
    fn a_forget_removes_the_customers_alerts_and_keeps_the_others() {
        let (_dir, store) = store();
        let p = customer(&store, "4915112345678");
        let about = |customer| Alert {
            reason: Reason::BookingFailed,
            customer,
            first_name: None,
            raised: Timestamp::now(),
        };
        raise_now(&store, &about(Some(p))).unwrap();
        raise_now(&store, &about(None)).unwrap();
        store.forget(&[p], Timestamp::now()).unwrap();
        let rows = at_stage(&store, RAISED).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].alert.customer, None);
    }

    #[test]
    fn ids_are_ordered_by_time_and_unique() {
        let at = Timestamp::now();
        let later = at + jiff::SignedDuration::from_secs(1);
        assert!(new_id(at) < new_id(later));
        assert_ne!(new_id(at), new_id(at));
    }

    #[test]
    fn a_customers_alert_is_shredded_with_their_key_and_follows_a_move() {
        let (_dir, store) = store();
        let p = customer(&store, "4915112345678");
        let alert = Alert {
            reason: Reason::Complaint,
            customer: Some(p),
            first_name: Some("Wiebke".into()),
            raised: Timestamp::now(),
        };
        raise_now(&store, &alert).unwrap();
        // Sealed under the customer's key: the queue key alone does not open it.
        for g in store.keyspaces().alerts.iter() {
            let (k, v) = g.into_inner().unwrap();
            assert_eq!(
                crate::store::queue_rows::layout(&v),
                crate::store::queue_rows::Layout::Customer
            );
            assert!(store
                .queue_key()
                .open(ks::ALERTS, &k, &v[PSEUDONYM_LEN..])
                .is_err());
        }
        // Once the key is gone, nothing new is kept about the customer.
        store.forget(&[p], Timestamp::now()).unwrap();
        raise_now(&store, &alert).unwrap();
        assert_eq!(store.keyspaces().alerts.iter().count(), 0);
    }
}
