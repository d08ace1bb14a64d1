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

/// `text` or `template`, for the audit entry.
fn kind_code(entry: &OutboxEntry) -> &'static str {
    match entry.kind {
        OutboundKind::Text(_) => "text",
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
            (Some(name), OutboundKind::Text(_)) => {
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

    /// Commits `batch` with the audit entry (durably), or alone when there is no audit log.
    pub fn commit(
        &self,
        store: &Store,
        audit: Option<&AuditLog>,
        batch: fjall::OwnedWriteBatch,
    ) -> anyhow::Result<()> {
        match audit {
            Some(log) => {
                log.append_with(batch, self.audit_entry())?;
            }
            None => store.commit_durable(batch)?,
        }
        Ok(())
    }

    /// Counts it and says it in the journal; a staff alert for [`FailureHandling::StaffAlerted`].
    pub fn announce(&self, metrics: &Metrics) {
        metrics
            .send_failures
            .get_or_create(&FailureLabel {
                reason: self.reason().into(),
                stage: if self.delayed { "status" } else { "call" }.into(),
            })
            .inc();
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
        )?;
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
            queues.push_outbox(store, &mut batch, &p, template);
            queues.mark_reopened(store, &mut batch, &p, now);
        }
        Plan::Resend(to_phone) => {
            queues.push_outbox(store, &mut batch, &p, to_phone);
        }
        Plan::Defer(deferred) => queues.push_deferred(store, &mut batch, &p, deferred),
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
