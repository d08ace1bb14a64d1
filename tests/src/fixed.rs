//! An instant stand-in for the conversation engine, for load tests and benchmarks of the
//! channel: every burst with text is answered with one fixed text, in which `{ids}` becomes the
//! answered message ids, so a test can tell which messages a reply answers. Bursts without text
//! get the studio's non-text reply. It records history like the engine, through the same commit,
//! and tells the channel that a reply follows exactly when the engine would (typing indicator).
//! A text containing [`HANDOVER_WORD`] is handed over to staff as the engine hands over a
//! complaint: no reply, the contact escalated with the first word of their WhatsApp profile
//! name as first name, a staff alert and its audit entry.

use std::sync::Arc;

use frontdesk::audit::{Actor, AuditEvent, Code, NewEntry};
use frontdesk::store::customers::{BotMode, Customer};
use frontdesk::store::Store;
use frontdesk::turn::{
    is_valid_address, AlertKind, Burst, Decide, Effects, PartKind, Progress, RecordUpdate,
    StaffAlert, TurnOutcome,
};

/// A text containing this is handed over to staff (see the module doc).
pub const HANDOVER_WORD: &str = "#handover";
use jiff::Timestamp;

/// See the module doc.
pub struct FixedReply {
    /// The daemon's store, for pseudonyms and the contact's existing record.
    pub store: Arc<Store>,
    /// The reply; `{ids}` is replaced by the comma-separated ids of the answered text messages.
    pub text: String,
    /// The reply to bursts of only voice notes, pictures and the like.
    pub non_text_reply: String,
}

impl Decide for FixedReply {
    fn decide(&self, burst: &Burst, progress: &dyn Progress) -> anyhow::Result<Effects> {
        let now = Timestamp::now();
        let p = self.store.pseudonym(&burst.address);
        if is_valid_address(&burst.address).is_none() {
            return Ok(Effects::nothing(
                p,
                &burst.address,
                now,
                TurnOutcome::InvalidSender,
            ));
        }
        let inbound = burst.history();
        let text_ids: Vec<&str> = burst
            .parts
            .iter()
            .filter(|part| matches!(&part.kind, PartKind::Text(t) if !t.trim().is_empty()))
            .map(|part| part.id.as_str())
            .collect();
        if inbound.is_empty() {
            return Ok(Effects::nothing(
                p,
                &burst.address,
                now,
                TurnOutcome::Ignored,
            ));
        }
        let existing = self.store.customer(&p)?;
        let mut customer = existing
            .clone()
            .unwrap_or_else(|| Customer::new(p, &burst.address, now));
        let mode_before = customer.meta.mode;
        let outcome = if text_ids.is_empty() {
            TurnOutcome::NonText
        } else {
            TurnOutcome::Conversed
        };
        let mut effects = Effects::nothing(p, &burst.address, now, outcome);
        effects.new_contact = existing.is_none();
        if customer.meta.mode.answers() && burst.texts().iter().any(|t| t.contains(HANDOVER_WORD)) {
            customer.meta.mode = BotMode::Escalated;
            customer.body.profile.vorname = burst
                .contact_name
                .as_deref()
                .and_then(|n| n.split_whitespace().next())
                .map(str::to_string);
            effects.alerts.push(StaffAlert {
                kind: AlertKind::Complaint,
                pseudonym: p,
            });
            effects.audit.push(
                NewEntry::new(
                    Actor::customer(&p),
                    AuditEvent::CustomerEscalate {
                        reason: Code::new("complaint"),
                    },
                )
                .about(&p),
            );
        } else if customer.meta.mode.answers() {
            progress.replying();
            effects.replies.push(if text_ids.is_empty() {
                self.non_text_reply.clone()
            } else {
                self.text.replace("{ids}", &text_ids.join(","))
            });
        }
        effects.record = Some(RecordUpdate {
            mode_before,
            disclosed_before: customer.body.conversation.disclosed_ai,
            customer,
            inbound,
            revoked: Vec::new(),
        });
        Ok(effects)
    }

    /// Only a store failure can fail this stand-in; the burst is then decided as usual.
    fn give_up(&self, burst: &Burst, _reason: &'static str) -> anyhow::Result<Effects> {
        self.decide(burst, &())
    }
}
