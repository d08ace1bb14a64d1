//! The one place a decided turn is written: customer record, history, funnel counters, audit
//! entries and the channel's queue rows in one durable batch, under the customer's lock.

use jiff::Timestamp;
use tracing::warn;

use super::{AlertKind, Effects};
use crate::alerts::queue::{self as alerts, Alert, Reason};
use crate::audit::{Actor, AuditEvent, AuditLog, Code, NewEntry};
use crate::stats;
use crate::store::customers::{Customer, CustomerMeta};
use crate::store::messages::{Direction, Message};
use crate::store::{self, Store};

/// What a deleted message's history row says instead of its text.
pub const REVOKED_TEXT: &str = "[deleted]";
/// How far back in a contact's history a deleted message is looked for (WhatsApp allows
/// deleting for two days).
const REVOKE_LOOKBACK: usize = 200;

/// Rows the channel adds to a turn's batch: the replies' outbox rows, the seen marks of the
/// message ids and the removal of the inbox rows. Called once, under the customer's lock, with
/// the effects as committed (only the replies that survived the merge).
pub trait QueueRows {
    /// Adds the rows to `batch`.
    fn add(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        store: &Store,
        effects: &Effects,
    ) -> store::Result<()>;
}

/// No queue rows (unit tests of the engine, the terminal chat).
impl QueueRows for () {
    fn add(&self, _: &mut fjall::OwnedWriteBatch, _: &Store, _: &Effects) -> store::Result<()> {
        Ok(())
    }
}

/// Whether the person was forgotten after the newest message of this turn was written: then the
/// turn is about data that no longer exists. A forget before that message means they wrote again
/// on their own and are a new contact.
fn forgotten_meanwhile(store: &Store, effects: &Effects) -> store::Result<bool> {
    let Some(newest) = effects
        .record
        .as_ref()
        .and_then(|r| r.inbound.iter().map(|m| m.at).max())
    else {
        return Ok(false);
    };
    Ok(store
        .forgotten_at(&effects.pseudonym)?
        .is_some_and(|forgotten| forgotten >= newest))
}

/// Why a turn could not be committed. Nothing of it was written; the inbox rows stay.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Reading the customer or writing the batch failed.
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    /// Appending the audit entries, and with them the batch, failed.
    #[error("audit log: {0}")]
    Audit(#[from] crate::audit::AuditError),
    /// A staff answer to someone who cannot be answered: no record (never known, or
    /// forgotten), or opted out.
    #[error("the customer cannot be answered: {0}")]
    NotAnswerable(&'static str),
}

/// Writes `effects` and `rows` in one durable batch and returns the effects as committed.
///
/// The record is merged into the customer as it is now, not as the engine read it: when an
/// admin paused or resumed the contact while the model was thinking and the turn itself did not
/// change the mode, the admin's decision stands, and a contact who must not be answered gets no
/// reply (the disclosure then counts as not sent). A WhatsApp user id the record learned is
/// linked to the customer ([`Store::link_user_id`]). The audit entries join the same batch, so a
/// hand-over or opt-out and its audit entry become durable together or not at all.
pub fn commit(
    store: &Store,
    mut effects: Effects,
    rows: &dyn QueueRows,
    audit: Option<&AuditLog>,
) -> Result<Effects, CommitError> {
    if !effects.moves.is_empty() && effects.record.is_none() {
        return commit_moves(store, effects, rows, audit);
    }
    if effects.by_staff {
        return commit_staff(store, effects, rows, audit);
    }
    let p = effects.pseudonym;
    let guard = store.lock_customer(&p);
    let mut batch = store.batch();
    if forgotten_meanwhile(store, &effects)? {
        // Staff forgot this person while the turn was being decided: the forget stands. Only
        // the channel's retirement of the burst is written; nothing is sent.
        tracing::info!(customer = %p, "customer forgotten during the turn; its effects are discarded");
        let discarded = Effects::nothing(p, &effects.address, effects.at, effects.outcome);
        rows.add(&mut batch, store, &discarded)?;
        store.commit_durable(batch)?;
        return Ok(discarded);
    }
    let mut first_name = None;
    if let Some(update) = &effects.record {
        let mut fresh = current_or_new(store, &effects, update)?;
        let mut decided = update.customer.clone();
        let engine_changed_mode = decided.meta.mode != update.mode_before;
        if fresh.meta.mode != update.mode_before && !engine_changed_mode {
            decided.meta.mode = fresh.meta.mode;
            if !decided.meta.mode.answers() {
                effects.replies.clear();
                decided.body.conversation.disclosed_ai = update.disclosed_before;
            }
        }
        // A user id the record did not hold before is linked to this customer.
        let learned_user_id = decided
            .body
            .user_id
            .clone()
            .filter(|id| fresh.body.user_id.as_ref() != Some(id));
        fresh.body = decided.body;
        fresh.meta.stage = decided.meta.stage;
        fresh.meta.mode = decided.meta.mode;
        fresh.meta.ever_booked |= decided.meta.ever_booked;
        fresh.meta.last_contact = effects.at;
        if let Some(last) = update.inbound.last() {
            fresh.meta.last_inbound = Some(last.at.max(fresh.meta.last_inbound.unwrap_or(last.at)));
        }
        for msg in &update.inbound {
            store.append_message(&mut fresh, msg, &mut batch)?;
        }
        // A message deleted for everyone keeps its place in the history, not its words.
        store.redact_messages(
            &p,
            &update.revoked,
            REVOKED_TEXT,
            REVOKE_LOOKBACK,
            &mut batch,
        )?;
        effects.reply_rows.clear();
        for text in &effects.replies {
            let msg = Message {
                direction: Direction::Outbound,
                text: text.clone(),
                at: effects.at,
                wamid: None,
            };
            let seq = store.append_message(&mut fresh, &msg, &mut batch)?;
            effects.reply_rows.push(seq);
        }
        if !effects.replies.is_empty() {
            count_first_reply(store, &mut batch, &mut fresh.meta, effects.at)?;
        }
        first_name.clone_from(&fresh.body.profile.vorname);
        // An opt-out ends what was scheduled for the contact: no reminder, no follow-up.
        if fresh.meta.mode == crate::store::customers::BotMode::OptedOut
            && update.mode_before != crate::store::customers::BotMode::OptedOut
        {
            store.unschedule_customer(&mut batch, &p)?;
        }
        store.put_customer(&fresh, &mut batch)?;
        if let Some(user_id) = &learned_user_id {
            store.link_user_id(user_id, &p, &mut batch)?;
        }
    }
    for event in &effects.funnel {
        stats::record(store, &mut batch, *event, effects.at)?;
    }
    for event in &effects.sources {
        stats::record_source(store, &mut batch, event, effects.at)?;
    }
    for alert in &effects.alerts {
        super::attention::mark(store, &mut batch, alert, effects.at);
    }
    rows.add(&mut batch, store, &effects)?;
    raise_alerts(store, &mut batch, &effects, first_name.as_deref());
    match audit {
        Some(log) if !effects.audit.is_empty() => {
            log.append_many_with(batch, effects.audit.iter().cloned())?;
        }
        _ => store.commit_durable(batch)?,
    }
    drop(guard);
    if effects.record.is_some() {
        store.activity().touched(&p);
    }
    announce_alerts(&effects);
    Ok(effects)
}

/// The customer's record as it is now, or a new one for a first contact, waiting for its first
/// reply since its first message.
fn current_or_new(
    store: &Store,
    effects: &Effects,
    update: &super::RecordUpdate,
) -> Result<Customer, CommitError> {
    Ok(match store.customer(&effects.pseudonym)? {
        Some(c) => c,
        None => {
            let mut c = Customer::new(effects.pseudonym, &effects.address, effects.at);
            c.meta.awaiting_first_reply = update.inbound.iter().map(|m| m.at).min();
            c
        }
    })
}

/// Counts the wait of a first contact whose first reply goes out at `at`, once: the mark is
/// cleared in the same batch.
fn count_first_reply(
    store: &Store,
    batch: &mut fjall::OwnedWriteBatch,
    meta: &mut CustomerMeta,
    at: Timestamp,
) -> Result<(), CommitError> {
    if let Some(since) = meta.awaiting_first_reply.take() {
        stats::record_first_reply(store, batch, at.duration_since(since), at)?;
    }
    Ok(())
}

/// Adds the turn's staff alerts to its batch, so they become durable with the hand-over that
/// raised them; the alert worker delivers them (`crate::alerts`). The contact's first name is
/// the only personal data an alert carries.
fn raise_alerts(
    store: &Store,
    batch: &mut fjall::OwnedWriteBatch,
    effects: &Effects,
    first_name: Option<&str>,
) {
    for alert in &effects.alerts {
        alerts::raise(
            store,
            batch,
            &Alert {
                reason: reason_of(alert.kind),
                customer: Some(alert.pseudonym),
                first_name: first_name.map(str::to_string),
                raised: effects.at,
            },
        );
    }
}

/// After the commit: wakes the alert worker, and says each alert in the journal too (the audit
/// log has them as well; no message content).
fn announce_alerts(effects: &Effects) {
    if !effects.alerts.is_empty() {
        alerts::committed();
    }
    for alert in &effects.alerts {
        warn!(customer = %alert.pseudonym, reason = alert.kind.code(), FRONTDESK_EVENT = "staff.alert", "staff attention needed");
    }
}

/// The alert reason of a turn's staff alert.
fn reason_of(kind: AlertKind) -> Reason {
    match kind {
        AlertKind::Complaint => Reason::Complaint,
        AlertKind::Cancellation => Reason::Cancellation,
        AlertKind::ContractQuestion => Reason::ContractQuestion,
        AlertKind::HealthQuestion => Reason::HealthQuestion,
        AlertKind::PersonRequested => Reason::PersonRequested,
        AlertKind::MemberAppointment => Reason::MemberAppointment,
        AlertKind::TurnFailed => Reason::TurnFailed,
        AlertKind::BookingFailed => Reason::BookingFailed,
        AlertKind::InvalidCustomerData => Reason::InvalidCustomerData,
        AlertKind::Rescheduled => Reason::Rescheduled,
    }
}

/// A staff member's answer ([`Effects::by_staff`]): under the customer's lock, the replies join
/// the customer's history as the studio's rows, the channel's outbox rows and the audit entry
/// in one durable batch. Refused, with nothing written, for a customer without a record or one
/// who opted out.
fn commit_staff(
    store: &Store,
    mut effects: Effects,
    rows: &dyn QueueRows,
    audit: Option<&AuditLog>,
) -> Result<Effects, CommitError> {
    let p = effects.pseudonym;
    let guard = store.lock_customer(&p);
    let Some(mut customer) = store.customer(&p)? else {
        return Err(CommitError::NotAnswerable("no such customer"));
    };
    if customer.meta.mode == crate::store::customers::BotMode::OptedOut {
        return Err(CommitError::NotAnswerable("opted out"));
    }
    // The record's current identity, so an answer follows a customer who moved meanwhile.
    effects.address = customer.address().unwrap_or_default().to_string();
    let mut batch = store.batch();
    effects.reply_rows.clear();
    for text in &effects.replies {
        let msg = Message {
            direction: Direction::Staff,
            text: text.clone(),
            at: effects.at,
            wamid: None,
        };
        let seq = store.append_message(&mut customer, &msg, &mut batch)?;
        effects.reply_rows.push(seq);
    }
    customer.meta.last_contact = effects.at;
    if !effects.replies.is_empty() {
        count_first_reply(store, &mut batch, &mut customer.meta, effects.at)?;
    }
    store.put_customer(&customer, &mut batch)?;
    rows.add(&mut batch, store, &effects)?;
    write(store, batch, effects.audit.clone(), audit)?;
    drop(guard);
    store.activity().touched(&p);
    Ok(effects)
}

/// Carries out the identity moves of a notice turn ([`Effects::moves`]), each under the locks of
/// both identities in one durable batch with its audit entry (`customer.moved`); the channel's
/// rows join the last batch, so a crash before it repeats the turn, and a repeated move finds
/// nothing left under the old identity. A customer without a record — never known, or
/// forgotten — is not moved and nothing is written about them. Returns the effects with the
/// customer as it is after the moves.
fn commit_moves(
    store: &Store,
    mut effects: Effects,
    rows: &dyn QueueRows,
    audit: Option<&AuditLog>,
) -> Result<Effects, CommitError> {
    let moves = std::mem::take(&mut effects.moves);
    let last = moves.len() - 1;
    for (i, change) in moves.iter().enumerate() {
        let from = effects.pseudonym;
        let mut batch = store.batch();
        let mut entries = Vec::new();
        // The target depends on the record; it is read again under the locks, and a record
        // changed in between (a rare race with another writer) is simply retried.
        let mut outcome = None;
        let mut retired = false;
        for _ in 0..3 {
            let Some(to) = store.move_target(&from, change)? else {
                break;
            };
            let _guard = store.lock_pair(&from, &to);
            if store.move_target(&from, change)? != Some(to) {
                continue;
            }
            outcome = store.move_customer(&from, &to, change, &mut batch)?;
            if let Some(done) = &outcome {
                entries.push(
                    NewEntry::new(
                        Actor::System,
                        AuditEvent::CustomerMoved {
                            change: Code::new(change.label()),
                            from: (&done.from).into(),
                            messages: done.messages,
                            bookings: done.bookings,
                            merged: done.merged,
                        },
                    )
                    .about(&done.to),
                );
            }
            if i == last {
                rows.add(&mut batch, store, &effects)?;
                entries.append(&mut effects.audit);
                retired = true;
            }
            write(store, batch, entries, audit)?;
            if let Some(done) = &outcome {
                store.finish_move(done)?;
                tracing::info!(from = %done.from, to = %done.to, change = change.label(), merged = done.merged, "customer moved to a new identity");
                effects.pseudonym = done.to;
            }
            break;
        }
        if outcome.is_none() {
            tracing::info!(customer = %from, change = change.label(), "identity notice for a customer without a record; nothing moved");
        }
        if i == last && !retired {
            let mut batch = store.batch();
            rows.add(&mut batch, store, &effects)?;
            write(store, batch, std::mem::take(&mut effects.audit), audit)?;
        }
    }
    Ok(effects)
}

/// Commits `batch` durably, with `entries` chained into it when there is an audit log.
fn write(
    store: &Store,
    batch: fjall::OwnedWriteBatch,
    entries: Vec<NewEntry>,
    audit: Option<&AuditLog>,
) -> Result<(), CommitError> {
    match audit {
        Some(log) if !entries.is_empty() => {
            log.append_many_with(batch, entries)?;
        }
        _ => store.commit_durable(batch)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::queue::{at_stage, RAISED};
    use crate::store::crypto::StoreIdentity;
    use crate::store::customers::BotMode;
    use crate::turn::{RecordUpdate, StaffAlert, TurnOutcome};

    const PHONE: &str = "491701234567";

    fn hand_over(store: &Store, at: jiff::Timestamp) -> Effects {
        let p = store.pseudonym(PHONE);
        let mut customer = Customer::new(p, PHONE, at);
        customer.body.profile.vorname = Some("Wiebke".into());
        customer.meta.mode = BotMode::Escalated;
        let mut effects = Effects::nothing(p, PHONE, at, TurnOutcome::Conversed);
        effects.record = Some(RecordUpdate {
            customer,
            mode_before: BotMode::Active,
            disclosed_before: false,
            inbound: vec![Message {
                direction: Direction::Inbound,
                text: "Das war schlecht".into(),
                at,
                wamid: Some("wamid.h".into()),
            }],
            revoked: Vec::new(),
        });
        effects.alerts.push(StaffAlert {
            kind: AlertKind::Complaint,
            pseudonym: p,
        });
        effects
    }

    #[test]
    fn a_hand_over_and_its_alert_are_written_together() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreIdentity::generate()).unwrap();
        let at = jiff::Timestamp::now();
        commit(&store, hand_over(&store, at), &(), None).unwrap();
        let raised = at_stage(&store, RAISED).unwrap();
        assert_eq!(raised.len(), 1);
        let alert = &raised[0].alert;
        assert_eq!(alert.reason, Reason::Complaint);
        assert_eq!(alert.customer, Some(store.pseudonym(PHONE)));
        assert_eq!(alert.first_name.as_deref(), Some("Wiebke"));
        assert_eq!(alert.raised, at);
    }

    #[test]
    fn a_turn_discarded_by_a_forget_raises_no_alert() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreIdentity::generate()).unwrap();
        let at = jiff::Timestamp::now();
        let effects = hand_over(&store, at);
        store
            .forget(
                &[effects.pseudonym],
                at + jiff::SignedDuration::from_secs(1),
            )
            .unwrap();
        commit(&store, effects, &(), None).unwrap();
        assert!(at_stage(&store, RAISED).unwrap().is_empty());
    }

    fn first_replies(store: &Store) -> crate::stats::ReplyDelays {
        let report = crate::stats::report(
            store,
            None,
            crate::stats::Period::Day,
            &crate::stats::Rates::default(),
        )
        .unwrap();
        report.total.first_replies
    }

    #[test]
    fn the_wait_for_the_first_reply_is_counted_once_whoever_answers() {
        use crate::stats::ReplyDelay;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreIdentity::generate()).unwrap();
        let at: Timestamp = "2026-12-01T09:00:00Z".parse().unwrap();
        // Handed over at once: no reply yet, nothing counted.
        commit(&store, hand_over(&store, at), &(), None).unwrap();
        assert_eq!(first_replies(&store).total(), 0);
        // Staff answer twenty minutes later: one wait of up to an hour.
        let p = store.pseudonym(PHONE);
        let anna = crate::audit::StaffName::parse("anna").unwrap();
        let entry = || NewEntry::new(Actor::staff(&anna), AuditEvent::StatsRead);
        let later = at + jiff::SignedDuration::from_mins(20);
        commit(
            &store,
            Effects::staff_reply(p, later, "Hallo!".into(), entry()),
            &(),
            None,
        )
        .unwrap();
        let counted = first_replies(&store);
        assert_eq!(counted.total(), 1);
        assert_eq!(counted.get(ReplyDelay::Within1h), 1);
        // A second answer is not a first one.
        let again = later + jiff::SignedDuration::from_mins(1);
        commit(
            &store,
            Effects::staff_reply(p, again, "Noch was".into(), entry()),
            &(),
            None,
        )
        .unwrap();
        assert_eq!(first_replies(&store).total(), 1);
        assert_eq!(
            store
                .customer_meta(&p)
                .unwrap()
                .unwrap()
                .awaiting_first_reply,
            None
        );
    }

    #[test]
    fn the_assistants_answer_in_the_first_turn_counts_as_fast() {
        use crate::stats::ReplyDelay;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreIdentity::generate()).unwrap();
        let at: Timestamp = "2026-12-01T09:00:00Z".parse().unwrap();
        let mut effects = hand_over(&store, at);
        effects.alerts.clear();
        if let Some(update) = effects.record.as_mut() {
            update.customer.meta.mode = BotMode::Active;
        }
        effects.at = at + jiff::SignedDuration::from_secs(4);
        effects
            .replies
            .push("Hallo, ich bin der digitale Assistent.".into());
        commit(&store, effects, &(), None).unwrap();
        let counted = first_replies(&store);
        assert_eq!(counted.total(), 1);
        assert_eq!(counted.get(ReplyDelay::Within1m), 1);
        assert_eq!(
            ReplyDelay::of(jiff::SignedDuration::from_secs(301)),
            ReplyDelay::Within15m
        );
        assert_eq!(
            ReplyDelay::of(jiff::SignedDuration::from_hours(30)),
            ReplyDelay::Later
        );
    }
}
