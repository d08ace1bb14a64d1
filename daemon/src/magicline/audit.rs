//! Maps booking steps to audit entries: every [`BookingStep`] the booker reports becomes the
//! `booking.*` audit event of the same name ([`audit_entry`]), and [`AuditBookings`] appends
//! them to the audit log.
//!
//! The entry names the customer by pseudonym only and keeps MagicLine's booking id; MagicLine's
//! customer id decides the `flow` detail but is not stored. The booker's own request id is not
//! carried either (audit request ids are the admin's and the webhook's).

use std::sync::Arc;

use tracing::warn;

use super::booking::{BookingAudit, BookingEvent, BookingStep};
use crate::audit::{Actor, AuditEvent, AuditLog, Code, NewEntry, Outcome};

/// Booking events into the audit log.
pub struct AuditBookings(pub Arc<AuditLog>);

impl BookingAudit for AuditBookings {
    fn record(&self, ev: BookingEvent) {
        if let Err(e) = self.0.append(audit_entry(&ev)) {
            warn!(error = %e, "audit append failed");
        }
    }
}

/// The audit entry of one booking step: actor `system`, about the customer, purpose `booking`.
///
/// `flow` is `member` when MagicLine's customer id for the person is known at this step and
/// `lead` while it is not. A taken slot is MagicLine's answer, not a fault, so it is recorded
/// with outcome ok; failures carry the step's reason code as an error.
pub fn audit_entry(ev: &BookingEvent) -> NewEntry {
    let flow = Code::new(if ev.magicline_customer_id.is_some() {
        "member"
    } else {
        "lead"
    });
    let booking_id = ev.booking_id.map(|b| b as u64);
    let failed = Outcome::error(ev.reason.unwrap_or("failed"));
    // No catch-all: a new step does not compile until it is given its own entry here.
    let (event, outcome) = match ev.step {
        BookingStep::Attempt => (AuditEvent::BookingAttempt { flow }, Outcome::Ok),
        BookingStep::LeadCreated => (AuditEvent::BookingLeadCreated { flow }, Outcome::Ok),
        BookingStep::CustomerMatched => (AuditEvent::BookingCustomerMatched { flow }, Outcome::Ok),
        BookingStep::Booked => (AuditEvent::BookingBooked { flow, booking_id }, Outcome::Ok),
        BookingStep::Confirmed => (
            AuditEvent::BookingConfirmed { flow, booking_id },
            Outcome::Ok,
        ),
        BookingStep::SlotTaken => (AuditEvent::BookingSlotTaken { flow }, Outcome::Ok),
        BookingStep::Failed => (AuditEvent::BookingFailed { flow }, failed),
        BookingStep::Canceled => (AuditEvent::BookingCanceled { booking_id }, Outcome::Ok),
        BookingStep::CancelFailed => (AuditEvent::BookingCancelFailed { booking_id }, failed),
        BookingStep::CanceledInMagicLine => (
            AuditEvent::BookingCanceledInMagicline { booking_id },
            Outcome::Ok,
        ),
        BookingStep::MovedInMagicLine => (
            AuditEvent::BookingMovedInMagicline { booking_id },
            Outcome::Ok,
        ),
        BookingStep::CheckedIn => (AuditEvent::BookingCheckedIn { booking_id }, Outcome::Ok),
        BookingStep::NoShow => (AuditEvent::BookingNoShow { booking_id }, Outcome::Ok),
    };
    NewEntry::new(Actor::System, event)
        .about(&ev.pseudonym)
        .outcome(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Purpose;
    use crate::magicline::booking::tests::{at, request, sim_cfg, Harness};
    use crate::store::crypto::Pseudonym;

    /// Every step, walked through an exhaustive match: a new step does not compile until it is
    /// chained in here, and then the table below must say what it records.
    fn all_steps() -> Vec<BookingStep> {
        use BookingStep::*;
        let mut all = Vec::new();
        let mut next = Some(Attempt);
        while let Some(step) = next {
            all.push(step);
            next = match step {
                Attempt => Some(LeadCreated),
                LeadCreated => Some(CustomerMatched),
                CustomerMatched => Some(Booked),
                Booked => Some(Confirmed),
                Confirmed => Some(SlotTaken),
                SlotTaken => Some(Failed),
                Failed => Some(Canceled),
                Canceled => Some(CancelFailed),
                CancelFailed => Some(CanceledInMagicLine),
                CanceledInMagicLine => Some(MovedInMagicLine),
                MovedInMagicLine => Some(CheckedIn),
                CheckedIn => Some(NoShow),
                NoShow => None,
            };
        }
        all
    }

    /// What a step records: action, outcome, whether it has a `flow` and a booking id.
    struct Row {
        action: &'static str,
        outcome: Outcome,
        has_flow: bool,
        has_booking_id: bool,
    }

    fn expected(step: BookingStep, reason: &'static str) -> Row {
        let row = |action, outcome, has_flow, has_booking_id| Row {
            action,
            outcome,
            has_flow,
            has_booking_id,
        };
        match step {
            BookingStep::Attempt => row("booking.attempt", Outcome::Ok, true, false),
            BookingStep::LeadCreated => row("booking.lead_created", Outcome::Ok, true, false),
            BookingStep::CustomerMatched => {
                row("booking.customer_matched", Outcome::Ok, true, false)
            }
            BookingStep::Booked => row("booking.booked", Outcome::Ok, true, true),
            BookingStep::Confirmed => row("booking.confirmed", Outcome::Ok, true, true),
            BookingStep::SlotTaken => row("booking.slot_taken", Outcome::Ok, true, false),
            BookingStep::Failed => row("booking.failed", Outcome::error(reason), true, false),
            BookingStep::Canceled => row("booking.canceled", Outcome::Ok, false, true),
            BookingStep::CancelFailed => {
                row("booking.cancel_failed", Outcome::error(reason), false, true)
            }
            BookingStep::CanceledInMagicLine => {
                row("booking.canceled_in_magicline", Outcome::Ok, false, true)
            }
            BookingStep::MovedInMagicLine => {
                row("booking.moved_in_magicline", Outcome::Ok, false, true)
            }
            BookingStep::CheckedIn => row("booking.checked_in", Outcome::Ok, false, true),
            BookingStep::NoShow => row("booking.no_show", Outcome::Ok, false, true),
        }
    }

    fn event(
        step: BookingStep,
        customer: Option<i64>,
        reason: Option<&'static str>,
    ) -> BookingEvent {
        BookingEvent {
            pseudonym: Pseudonym([7; 16]),
            request_id: "r-1".into(),
            step,
            magicline_customer_id: customer,
            booking_id: Some(42),
            reason,
        }
    }

    /// The entry's details as JSON (`flow`, `booking_id`).
    fn details(entry: &NewEntry) -> serde_json::Value {
        serde_json::to_value(&entry.event).unwrap()
    }

    #[test]
    fn every_step_has_its_own_entry() {
        let steps = all_steps();
        assert_eq!(steps.len(), 13);
        let mut actions = std::collections::HashSet::new();
        for step in steps {
            let reason = "unavailable";
            let want = expected(step, reason);
            for (customer, flow) in [(Some(501), "member"), (None, "lead")] {
                let entry = audit_entry(&event(step, customer, Some(reason)));
                let d = details(&entry);
                assert_eq!(entry.event.action(), want.action, "{step:?}");
                assert_eq!(entry.event.action(), step.code(), "{step:?}");
                assert_eq!(entry.purpose, Purpose::Booking, "{step:?}");
                assert_eq!(entry.outcome, want.outcome, "{step:?}");
                assert_eq!(entry.actor, Actor::System, "{step:?}");
                assert_eq!(entry.subject, Some(Pseudonym([7; 16])), "{step:?}");
                let want_flow = want.has_flow.then_some(flow);
                assert_eq!(d["flow"].as_str(), want_flow, "{step:?}");
                let want_id = want.has_booking_id.then_some(42);
                assert_eq!(d["booking_id"].as_u64(), want_id, "{step:?}");
            }
            assert!(actions.insert(want.action), "{step:?} shares its action");
        }
    }

    #[test]
    fn failures_without_a_reason_still_say_failed() {
        for step in [BookingStep::Failed, BookingStep::CancelFailed] {
            let entry = audit_entry(&event(step, None, None));
            assert_eq!(entry.outcome, Outcome::error("failed"));
        }
    }

    #[test]
    fn a_new_lead_booking_is_audited_step_by_step() {
        let h = Harness::new(sim_cfg());
        let p = h.person("+49 151 0000001");
        let req = request("r-audit", p, "max@example.org", None, at(1, 10, 0));
        h.booker().book(&req);
        let entries: Vec<NewEntry> = h
            .audit
            .events_of("r-audit")
            .iter()
            .map(audit_entry)
            .collect();
        let actions: Vec<String> = entries.iter().map(|e| e.event.action()).collect();
        assert_eq!(
            actions,
            ["booking.attempt", "booking.lead_created", "booking.booked"]
        );
        assert!(entries.iter().all(|e| e.outcome == Outcome::Ok));
        assert!(entries.iter().all(|e| e.subject == Some(p)));
        let flows: Vec<_> = entries
            .iter()
            .map(|e| details(e)["flow"].as_str().map(str::to_string))
            .collect();
        // No MagicLine id before the lead exists; the lead's id afterwards.
        assert_eq!(
            flows,
            [
                Some("lead".into()),
                Some("member".into()),
                Some("member".into())
            ]
        );
    }
}
