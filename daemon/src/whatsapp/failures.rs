//! What a failed message means and what is done about it: one decision ([`plan`]) for a send
//! call the Graph API refused and for a `failed` status webhook that arrives after the call
//! succeeded (Meta reports 131047, 131026, 131049 and 131000 mostly that way).
//!
//! - 131047 (window closed): a text reply is replaced by the re-open template, at most once per
//!   customer in [`REOPEN_INTERVAL`]; further replies of that closed window are dropped.
//! - 131026 (undeliverable): dropped, never sent again.
//! - 131049 (marketing limit): queued again for [`MARKETING_RETRY_AFTER`] later, as a deferred row
//!   that holds none of the customer's other replies back; a reply already that old is handed
//!   to staff instead.
//! - 131062 (user id cannot receive it): sent again to the customer's phone number when the
//!   record has one, else handed to staff.
//! - 132015 / 132016 (template paused / disabled), and every other failure reported by a status
//!   webhook: dropped and handed to staff.
//!
//! A delayed failure is handled in one durable write with the removal of its status row from
//! the inbox and of the record of what was sent ([`Queues::sent`]): a crash before that write
//! handles it again from scratch, a crash after it (or the same status delivered twice) finds no
//! record and does nothing, so a failure never queues a second template or a second retry.

use jiff::{SignedDuration, Timestamp};
use tracing::{info, warn};

use super::graph::{self, Disposition, MARKETING_RETRY_AFTER};
use super::payload::StatusUpdate;
use super::queue::{Deferred, FailureHandling, OutboundKind, OutboxEntry, Queues};
use crate::alerts::queue::{self as alerts, Alert, Reason};
use crate::audit::{Actor, AuditEvent, AuditLog, Code, NewEntry, Outcome};
use crate::metrics::{FailureLabel, Metrics};
use crate::store::crypto::Pseudonym;
use crate::store::{self, Store};

/// The re-open template goes to one customer at most once in this interval: every reply of a
/// closed window fails the same way, and one invitation to write back is enough.
pub const REOPEN_INTERVAL: SignedDuration = SignedDuration::from_hours(24);

/// What the failure handling needs from the configuration.
#[derive(Clone, Debug, Default)]
pub struct FailurePolicy {
    /// Template that reopens a closed 24-hour window; `None`: such replies are handed to staff.
    pub reopen_template: Option<String>,
    /// Language of `reopen_template`.
    pub template_language: String,
}

/// What is done about one failed message.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Send the re-open template instead (this entry) and mark the customer as re-opened.
    Reopen(OutboxEntry),
    /// Send this entry (the same message to the phone number) instead.
    Resend(OutboxEntry),
    /// Queue it again, not before the given time.
    Defer(Deferred),
    /// Drop it; handled as said, staff not needed.
    Drop(FailureHandling),
    /// Drop it and alert staff.
    Alert,
}

/// Counts a failed send in `frontdesk_send_failures_total`: by the code's meaning, and by
/// whether the call failed or a status webhook reported it later.
pub fn count_failure(metrics: &Metrics, code: Option<i64>, delayed: bool) {
    metrics
        .send_failures
        .get_or_create(&FailureLabel {
            reason: code.map_or("failed", graph::reason_of_code).into(),
            stage: if delayed { "status" } else { "call" }.into(),
        })
        .inc();
}

impl Plan {
    /// The handling recorded with the delivery state.
    pub fn handling(&self) -> FailureHandling {
        match self {
            Plan::Reopen(_) => FailureHandling::ReopenTemplate,
            Plan::Resend(_) => FailureHandling::ResentToPhone,
            Plan::Defer(_) => FailureHandling::RetryLater,
            Plan::Drop(h) => *h,
            Plan::Alert => FailureHandling::StaffAlerted,
        }
    }
}

/// The audit and journal word for a handling.
pub fn handling_code(h: FailureHandling) -> &'static str {
    match h {
        FailureHandling::ReopenTemplate => "reopen_template",
        FailureHandling::WindowClosedDropped => "dropped",
        FailureHandling::Undeliverable => "dropped_undeliverable",
        FailureHandling::RetryLater => "retry_later",
        FailureHandling::ResentToPhone => "resent_to_phone",
        FailureHandling::StaffAlerted => "staff_alert",
        FailureHandling::SlowedDown => "slowed_down",
    }
}

/// `text`, `buttons` or `template`, for the audit entry.
fn kind_code(entry: &OutboxEntry) -> &'static str {
    match entry.kind {
        OutboundKind::Text(_) => "text",
        OutboundKind::Buttons { .. } => "buttons",
        OutboundKind::Template { .. } => "template",
    }
}

/// Decides what to do about `entry` (of customer `p`), which failed with `disposition`. For the
/// dispositions the sender retries itself (throttling, pair rate limit, spam limit, token) this
/// is the answer for a failure that can no longer be retried: staff are alerted.
pub fn plan(
    store: &Store,
    queues: &Queues,
    policy: &FailurePolicy,
    p: &Pseudonym,
    entry: &OutboxEntry,
    disposition: Disposition,
    now: Timestamp,
) -> store::Result<Plan> {
    Ok(match disposition {
        Disposition::WindowClosed => match (&policy.reopen_template, &entry.kind) {
            (Some(name), OutboundKind::Text(_) | OutboundKind::Buttons { .. }) => {
                let recently = queues
                    .reopened_at(store, p)?
                    .is_some_and(|at| now.duration_since(at) < REOPEN_INTERVAL);
                if recently {
                    Plan::Drop(FailureHandling::WindowClosedDropped)
                } else {
                    Plan::Reopen(OutboxEntry {
                        kind: OutboundKind::Template {
                            name: name.clone(),
                            language: policy.template_language.clone(),
                            params: Vec::new(),
                            buttons: Vec::new(),
                        },
                        ..entry.clone()
                    })
                }
            }
            // No template to send, or the template itself met a closed window.
            _ => Plan::Alert,
        },
        Disposition::Undeliverable => Plan::Drop(FailureHandling::Undeliverable),
        Disposition::MarketingLimited
            if now.duration_since(entry.created) < MARKETING_RETRY_AFTER =>
        {
            Plan::Defer(Deferred {
                entry: entry.clone(),
                not_before: now + MARKETING_RETRY_AFTER,
            })
        }
        Disposition::RecipientIdUnsupported if !graph::is_phone_number(&entry.to) => {
            match store.customer(p)? {
                Some(c) if graph::is_phone_number(&c.body.phone) => Plan::Resend(OutboxEntry {
                    to: c.body.phone.clone(),
                    ..entry.clone()
                }),
                _ => Plan::Alert,
            }
        }
        _ => Plan::Alert,
    })
}

/// One failure as reported: to the audit log (in the batch of its handling), the metric and,
/// after the commit, the journal.
pub struct Report<'a> {
    /// Whose message it was.
    pub pseudonym: Pseudonym,
    /// What was to be sent.
    pub entry: &'a OutboxEntry,
    /// The Graph error code.
    pub code: Option<i64>,
    /// Whether a status webhook reported it (else the send call failed).
    pub delayed: bool,
    /// What was done.
    pub handling: FailureHandling,
}

impl Report<'_> {
    /// The reason word of the error code.
    pub fn reason(&self) -> &'static str {
        self.code.map_or("failed", graph::reason_of_code)
    }

    /// The audit entry.
    pub fn audit_entry(&self) -> NewEntry {
        NewEntry::new(
            Actor::System,
            AuditEvent::MessageDeliveryFailed {
                kind: Code::new(kind_code(self.entry)),
                api_code: self.code.and_then(|c| u64::try_from(c).ok()),
                reason: Code::new(self.reason()),
                handling: Code::new(handling_code(self.handling)),
                delayed: self.delayed,
            },
        )
        .about(&self.pseudonym)
        .outcome(Outcome::Error(Code::new(self.reason())))
    }

    /// The staff alert this failure raises, if any: a dropped reply (about its customer, with
    /// their first name) or the spam limit (about the whole sender).
    fn staff_alert(&self, store: &Store) -> Option<Alert> {
        let (reason, customer) = match self.handling {
            FailureHandling::StaffAlerted => (Reason::ReplyUndelivered, Some(self.pseudonym)),
            FailureHandling::SlowedDown => (Reason::SpamLimited, None),
            _ => return None,
        };
        let first_name = customer
            .and_then(|p| store.customer(&p).ok().flatten())
            .and_then(|c| c.body.profile.vorname);
        Some(Alert {
            reason,
            customer,
            first_name,
            raised: Timestamp::now(),
        })
    }

    /// Commits `batch` with the audit entry and the staff alert it raises (durably), or without
    /// the entry when there is no audit log.
    pub fn commit(
        &self,
        store: &Store,
        audit: Option<&AuditLog>,
        mut batch: fjall::OwnedWriteBatch,
    ) -> anyhow::Result<()> {
        let alert = self.staff_alert(store);
        if let Some(alert) = &alert {
            alerts::raise(store, &mut batch, alert);
        }
        match audit {
            Some(log) => {
                log.append_with(batch, self.audit_entry())?;
            }
            None => store.commit_durable(batch)?,
        }
        if alert.is_some() {
            alerts::committed();
        }
        Ok(())
    }

    /// Counts it and says it in the journal; a staff alert for [`FailureHandling::StaffAlerted`].
    pub fn announce(&self, metrics: &Metrics) {
        count_failure(metrics, self.code, self.delayed);
        let customer = &self.pseudonym;
        let reason = self.reason();
        let handling = handling_code(self.handling);
        if self.handling == FailureHandling::StaffAlerted {
            warn!(%customer, code = ?self.code, reason, delayed = self.delayed, FRONTDESK_EVENT = "staff.alert", "a reply could not be delivered: dropped, staff should contact the customer");
        } else if self.handling == FailureHandling::SlowedDown {
            warn!(%customer, code = ?self.code, reason, FRONTDESK_EVENT = "staff.alert", "WhatsApp's spam rate limit: sending slowed down; check the number's quality rating in WhatsApp Manager");
        } else {
            info!(%customer, code = ?self.code, reason, handling, delayed = self.delayed, "a reply failed");
        }
    }
}

/// The services the handling of a delayed failure uses.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    /// The store.
    pub store: &'a Store,
    /// Its queues.
    pub queues: &'a Queues,
    /// Template settings.
    pub policy: &'a FailurePolicy,
    /// Where the failure is audited.
    pub audit: Option<&'a AuditLog>,
    /// Where it is counted.
    pub metrics: &'a Metrics,
}

/// Handles a `failed` status webhook (see the module doc) in `batch`, which also removes its
/// inbox row; commits it with the audit entry. Returns the report when there was something to
/// handle (a message this daemon sent and has not settled yet).
pub fn handle_failed_status(
    ctx: &Context<'_>,
    mut batch: fjall::OwnedWriteBatch,
    status: &StatusUpdate,
    now: Timestamp,
) -> anyhow::Result<Option<FailureHandling>> {
    let Context {
        store,
        queues,
        policy,
        audit,
        metrics,
    } = *ctx;
    let Some((p, entry)) = queues.sent(store, &status.message_id)? else {
        // Settled before (a duplicate status, or handled before a restart), or not ours.
        queues.record_delivery(
            store,
            &mut batch,
            &status.message_id,
            super::queue::DeliveryState::Failed,
            now,
        );
        store.commit_durable(batch)?;
        return Ok(None);
    };
    // The customer's lock: the re-open mark is read and written by the sender too.
    let _guard = store.lock_customer(&p);
    let code = status.errors.first().map(|e| e.code);
    let disposition = code
        .and_then(graph::disposition_of_code)
        .unwrap_or(Disposition::Permanent);
    let plan = plan(store, queues, policy, &p, &entry, disposition, now)?;
    match &plan {
        Plan::Reopen(template) => {
            queues.push_outbox(store, &mut batch, &p, template)?;
            queues.mark_reopened(store, &mut batch, &p, now);
        }
        Plan::Resend(to_phone) => {
            queues.push_outbox(store, &mut batch, &p, to_phone)?;
        }
        Plan::Defer(deferred) => queues.push_deferred(store, &mut batch, &p, deferred)?,
        Plan::Drop(_) | Plan::Alert => {}
    }
    queues.record_failure(store, &mut batch, &status.message_id, plan.handling(), now);
    queues.remove_sent(store, &mut batch, &status.message_id);
    let report = Report {
        pseudonym: p,
        entry: &entry,
        code,
        delayed: true,
        handling: plan.handling(),
    };
    report.commit(store, audit, batch)?;
    report.announce(metrics);
    Ok(Some(plan.handling()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::crypto::StoreIdentity;
    use crate::store::customers::Customer;
    use crate::whatsapp::payload::{ApiErrorInfo, DeliveryStatus};
    use crate::whatsapp::queue::DeliveryState;

    const PHONE: &str = "491701234567";
    const USER_ID: &str = "DE.1349120865530274";

    fn policy() -> FailurePolicy {
        FailurePolicy {
            reopen_template: Some("reopen".into()),
            template_language: "de".into(),
        }
    }

    fn text(to: &str, created: Timestamp) -> OutboxEntry {
        OutboxEntry {
            to: to.into(),
            kind: OutboundKind::Text("Gern, Dienstag 18 Uhr?".into()),
            created,
            history: Vec::new(),
        }
    }

    fn failed(wamid: &str, code: i64) -> StatusUpdate {
        StatusUpdate {
            message_id: wamid.into(),
            recipient: PHONE.into(),
            recipient_user_id: None,
            status: DeliveryStatus::Failed,
            timestamp: Timestamp::now().as_second(),
            phone_number_id: "1".into(),
            errors: vec![ApiErrorInfo {
                code,
                title: "t".into(),
                message: "m".into(),
                details: None,
            }],
        }
    }

    /// Records `entry` as sent under `wamid`, as the sender does after a successful call.
    fn sent(store: &Store, q: &Queues, wamid: &str, p: &Pseudonym, entry: &OutboxEntry) {
        let mut b = store.batch();
        // The customer's key, as the webhook made it for the message the reply answered.
        store.data_key_or_create(p, &mut b).unwrap();
        q.record_delivery(
            store,
            &mut b,
            wamid,
            DeliveryState::Accepted,
            Timestamp::now(),
        );
        q.record_sent(store, &mut b, wamid, p, entry).unwrap();
        store.commit_durable(b).unwrap();
    }

    fn handle(store: &Store, q: &Queues, status: &StatusUpdate) -> Option<FailureHandling> {
        let metrics = Metrics::new();
        let policy = policy();
        let ctx = Context {
            store,
            queues: q,
            policy: &policy,
            audit: None,
            metrics: &metrics,
        };
        handle_failed_status(&ctx, store.batch(), status, Timestamp::now()).unwrap()
    }

    #[test]
    fn plans_for_each_disposition() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreIdentity::generate()).unwrap();
        let q = Queues::new(&store).unwrap();
        let p = store.pseudonym(PHONE);
        let now = Timestamp::now();
        let entry = text(PHONE, now);
        let plan_for =
            |d: Disposition, e: &OutboxEntry| plan(&store, &q, &policy(), &p, e, d, now).unwrap();

        let Plan::Reopen(template) = plan_for(Disposition::WindowClosed, &entry) else {
            panic!("a closed window leads to the re-open template");
        };
        assert_eq!(template.to, PHONE);
        assert!(
            matches!(&template.kind, OutboundKind::Template { name, language, .. } if name == "reopen" && language == "de")
        );
        // The template itself meeting a closed window, or no template configured: staff.
        assert_eq!(plan_for(Disposition::WindowClosed, &template), Plan::Alert);
        let no_template = FailurePolicy::default();
        assert_eq!(
            plan(
                &store,
                &q,
                &no_template,
                &p,
                &entry,
                Disposition::WindowClosed,
                now
            )
            .unwrap(),
            Plan::Alert
        );
        // Once re-opened, further replies of the closed window are dropped, for a day.
        let mut b = store.batch();
        q.mark_reopened(&store, &mut b, &p, now);
        store.commit_durable(b).unwrap();
        assert_eq!(
            plan_for(Disposition::WindowClosed, &entry),
            Plan::Drop(FailureHandling::WindowClosedDropped)
        );
        assert!(matches!(
            plan(
                &store,
                &q,
                &policy(),
                &p,
                &entry,
                Disposition::WindowClosed,
                now + REOPEN_INTERVAL + SignedDuration::from_secs(1)
            )
            .unwrap(),
            Plan::Reopen(_)
        ));

        assert_eq!(
            plan_for(Disposition::Undeliverable, &entry),
            Plan::Drop(FailureHandling::Undeliverable)
        );
        let Plan::Defer(deferred) = plan_for(Disposition::MarketingLimited, &entry) else {
            panic!("the marketing limit defers");
        };
        assert_eq!(deferred.not_before, now + MARKETING_RETRY_AFTER);
        assert_eq!(deferred.entry, entry);
        // A reply that already waited a day is not deferred again.
        let old = text(PHONE, now - MARKETING_RETRY_AFTER);
        assert_eq!(plan_for(Disposition::MarketingLimited, &old), Plan::Alert);
        assert_eq!(
            plan_for(Disposition::TemplateUnavailable, &template),
            Plan::Alert
        );
        assert_eq!(plan_for(Disposition::Permanent, &entry), Plan::Alert);
        assert_eq!(plan_for(Disposition::RetryLater, &entry), Plan::Alert);

        // 131062: to the phone number when the record has one, else staff.
        let by_id = text(USER_ID, now);
        assert_eq!(
            plan_for(Disposition::RecipientIdUnsupported, &by_id),
            Plan::Alert
        );
        let mut b = store.batch();
        store
            .put_customer(&Customer::new(p, PHONE, now), &mut b)
            .unwrap();
        store.commit_durable(b).unwrap();
        assert_eq!(
            plan_for(Disposition::RecipientIdUnsupported, &by_id),
            Plan::Resend(text(PHONE, now))
        );
        // Already to the phone number: nothing to switch to.
        assert_eq!(
            plan_for(Disposition::RecipientIdUnsupported, &entry),
            Plan::Alert
        );
    }

    #[test]
    fn a_delayed_window_closed_sends_the_template_once_also_after_reopening_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let id = StoreIdentity::generate();
        let line = id.to_secret_line().to_string();
        let p;
        {
            let store = Store::open(dir.path(), id).unwrap();
            let q = Queues::new(&store).unwrap();
            p = store.pseudonym(PHONE);
            let now = Timestamp::now();
            // One answer split in two parts: both fail, one template.
            sent(&store, &q, "wamid.a", &p, &text(PHONE, now));
            sent(&store, &q, "wamid.b", &p, &text(PHONE, now));
            assert_eq!(
                handle(&store, &q, &failed("wamid.a", 131_047)),
                Some(FailureHandling::ReopenTemplate)
            );
            assert_eq!(
                handle(&store, &q, &failed("wamid.b", 131_047)),
                Some(FailureHandling::WindowClosedDropped)
            );
            // The same status again: already settled.
            assert_eq!(handle(&store, &q, &failed("wamid.a", 131_047)), None);
            let outbox = q.outbox(&store).unwrap();
            assert_eq!(outbox.len(), 1);
            assert!(matches!(
                outbox[0].entry.kind,
                OutboundKind::Template { .. }
            ));
            assert_eq!(
                q.delivery_failure(&store, "wamid.a").unwrap(),
                Some(FailureHandling::ReopenTemplate)
            );
            assert_eq!(
                q.delivery(&store, "wamid.a").unwrap(),
                Some(DeliveryState::Failed)
            );
        }
        // After a restart the status delivered once more changes nothing.
        let store = Store::open(dir.path(), StoreIdentity::parse(&line).unwrap()).unwrap();
        let q = Queues::new(&store).unwrap();
        assert_eq!(handle(&store, &q, &failed("wamid.a", 131_047)), None);
        assert_eq!(q.outbox(&store).unwrap().len(), 1);
        // A later `read` keeps the recorded handling.
        let mut b = store.batch();
        q.record_delivery(
            &store,
            &mut b,
            "wamid.a",
            DeliveryState::Read,
            Timestamp::now(),
        );
        store.commit_durable(b).unwrap();
        assert_eq!(
            q.delivery_failure(&store, "wamid.a").unwrap(),
            Some(FailureHandling::ReopenTemplate)
        );
        // A forget takes the sent records and the re-open mark with it.
        sent(&store, &q, "wamid.c", &p, &text(PHONE, Timestamp::now()));
        store.forget(&[p], Timestamp::now()).unwrap();
        assert!(q.sent(&store, "wamid.c").unwrap().is_none());
        assert!(q.reopened_at(&store, &p).unwrap().is_none());
    }

    #[test]
    fn a_dropped_reply_raises_a_staff_alert_with_the_first_name() {
        use crate::alerts::queue::{at_stage, Reason, RAISED};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreIdentity::generate()).unwrap();
        let q = Queues::new(&store).unwrap();
        let p = store.pseudonym(PHONE);
        let mut c = Customer::new(p, PHONE, Timestamp::now());
        c.body.profile.vorname = Some("Wiebke".into());
        let mut b = store.batch();
        store.put_customer(&c, &mut b).unwrap();
        store.commit_durable(b).unwrap();
        sent(&store, &q, "wamid.a", &p, &text(PHONE, Timestamp::now()));
        sent(&store, &q, "wamid.b", &p, &text(PHONE, Timestamp::now()));
        assert_eq!(
            handle(&store, &q, &failed("wamid.a", 131_000)),
            Some(FailureHandling::StaffAlerted)
        );
        assert_eq!(
            handle(&store, &q, &failed("wamid.b", 131_026)),
            Some(FailureHandling::Undeliverable)
        );
        let raised = at_stage(&store, RAISED).unwrap();
        assert_eq!(raised.len(), 1, "only the failure staff must act on");
        assert_eq!(raised[0].alert.reason, Reason::ReplyUndelivered);
        assert_eq!(raised[0].alert.customer, Some(p));
        assert_eq!(raised[0].alert.first_name.as_deref(), Some("Wiebke"));
    }

    #[test]
    fn delayed_failures_by_code() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreIdentity::generate()).unwrap();
        let q = Queues::new(&store).unwrap();
        let p = store.pseudonym(PHONE);
        let now = Timestamp::now();
        for (wamid, code, want) in [
            ("wamid.u", 131_026, FailureHandling::Undeliverable),
            ("wamid.m", 131_049, FailureHandling::RetryLater),
            ("wamid.x", 131_000, FailureHandling::StaffAlerted),
            ("wamid.p", 132_015, FailureHandling::StaffAlerted),
            ("wamid.s", 131_048, FailureHandling::StaffAlerted),
        ] {
            sent(&store, &q, wamid, &p, &text(PHONE, now));
            assert_eq!(
                handle(&store, &q, &failed(wamid, code)),
                Some(want),
                "{code}"
            );
            assert_eq!(q.delivery_failure(&store, wamid).unwrap(), Some(want));
            assert!(q.sent(&store, wamid).unwrap().is_none(), "settled");
        }
        // Only the marketing limit queued something: a deferred row, not an outbox row.
        assert!(q.outbox(&store).unwrap().is_empty());
        let deferred = q.deferred(&store).unwrap();
        assert_eq!(deferred.len(), 1);
        assert!(deferred[0].entry.not_before >= now + MARKETING_RETRY_AFTER);
        // Not due yet, then due: it moves to the outbox once.
        assert_eq!(q.release_due(&store, now).unwrap().0, 0);
        let (moved, next) = q
            .release_due(
                &store,
                now + MARKETING_RETRY_AFTER + SignedDuration::from_mins(1),
            )
            .unwrap();
        assert_eq!((moved, next), (1, None));
        assert!(q.deferred(&store).unwrap().is_empty());
        assert_eq!(q.outbox(&store).unwrap().len(), 1);
    }
}
