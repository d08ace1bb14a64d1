//! A tap on a button of a reminder or follow-up ([`crate::turn::tap`]), decided without the
//! model: **confirm** confirms the booking (in MagicLine when it awaits the lead's
//! confirmation), **reschedule** offers free slots (the contact's pick goes through the usual
//! choice among offered slots and is booked as a move: MagicLine allows one trial per lead, so
//! the old booking is cancelled once the new slot is known to be free, then the new one booked),
//! **cancel** cancels it in MagicLine. Each is answered (the texts are `replies.toml`'s `tap_*`)
//! and audited (`reminder.tapped`).

use jiff::Zoned;

use super::{Engine, EngineError, Turn, AWAITING_CONFIRMATION, OFFERED_AT, RESCHEDULE_FROM};
use crate::conversation::booking::{Booker, BookingFailure, CancelOutcome, ConfirmOutcome};
use crate::store::customers::Customer;
use crate::turn::tap::TapAction;
use crate::turn::{AlertKind, StaffAlert};

/// How many free slots a reschedule tap offers.
const OFFERED: usize = 3;

impl Engine {
    /// Answers a tap on `action` of booking `booking_id`; records in `turn` whether it was done.
    pub(super) fn tap(
        &self,
        c: &mut Customer,
        (action, booking_id): (TapAction, i64),
        now: &Zoned,
        turn: &mut Turn,
    ) -> Result<(), EngineError> {
        let persona = self.persona();
        let replies = persona.prompts.replies();
        let Some(booker) = &self.booker else {
            turn.replies
                .push(replies.failure(&BookingFailure::NotConfigured, now));
            turn.tapped = Some((action, booking_id, false));
            return Ok(());
        };
        let firstname = c.body.profile.vorname.clone().unwrap_or_default();
        let done = match action {
            TapAction::Confirm => match booker.confirm_trial(&c.pseudonym, booking_id) {
                ConfirmOutcome::Confirmed { start } => {
                    c.body.conversation.extra.remove(AWAITING_CONFIRMATION);
                    turn.replies.push(replies.booked(&firstname, &start, false));
                    true
                }
                ConfirmOutcome::Expired => {
                    c.body.conversation.extra.remove(AWAITING_CONFIRMATION);
                    c.body.profile.probetraining_datum = None;
                    turn.replies.push(replies.confirmation_expired());
                    false
                }
                ConfirmOutcome::NotFound => {
                    turn.replies.push(replies.tap_gone());
                    false
                }
                ConfirmOutcome::Unavailable => {
                    return Err(EngineError::BookingUnavailable);
                }
            },
            TapAction::Cancel => self.tap_cancel(c, booker.as_ref(), booking_id, now, turn)?,
            TapAction::Reschedule => {
                self.tap_reschedule(c, booker.as_ref(), booking_id, now, turn);
                true
            }
        };
        turn.tapped = Some((action, booking_id, done));
        Ok(())
    }

    fn tap_cancel(
        &self,
        c: &mut Customer,
        booker: &dyn Booker,
        booking_id: i64,
        now: &Zoned,
        turn: &mut Turn,
    ) -> Result<bool, EngineError> {
        let persona = self.persona();
        let replies = persona.prompts.replies();
        let start = booker.booking_start(&c.pseudonym, booking_id);
        match booker.cancel_trial(&c.pseudonym, booking_id) {
            CancelOutcome::Canceled => {
                let extra = &mut c.body.conversation.extra;
                if extra.get(AWAITING_CONFIRMATION).and_then(|v| v.as_i64()) == Some(booking_id) {
                    extra.remove(AWAITING_CONFIRMATION);
                }
                if extra.get(RESCHEDULE_FROM).and_then(|v| v.as_i64()) == Some(booking_id) {
                    extra.remove(RESCHEDULE_FROM);
                }
                c.body.profile.probetraining_datum = None;
                turn.replies.push(replies.tap_canceled(start.as_ref()));
                Ok(true)
            }
            CancelOutcome::Past => {
                turn.replies.push(replies.tap_past());
                Ok(false)
            }
            CancelOutcome::NotFound => {
                turn.replies.push(replies.tap_gone());
                Ok(false)
            }
            CancelOutcome::Unavailable => {
                // Staff cancel it by hand; the contact hears that it is being taken care of.
                turn.alerts.push(StaffAlert {
                    kind: AlertKind::Cancellation,
                    pseudonym: c.pseudonym,
                });
                turn.replies
                    .push(replies.failure(&BookingFailure::Unavailable, now));
                Ok(false)
            }
        }
    }

    fn tap_reschedule(
        &self,
        c: &mut Customer,
        booker: &dyn Booker,
        booking_id: i64,
        now: &Zoned,
        turn: &mut Turn,
    ) {
        let tomorrow = now
            .date()
            .tomorrow()
            .ok()
            .and_then(|d| d.to_zoned(now.time_zone().clone()).ok())
            .unwrap_or_else(|| now.clone());
        let offered = booker.free_slots(&c.pseudonym, &tomorrow, OFFERED);
        let conv = &mut c.body.conversation;
        conv.extra
            .insert(RESCHEDULE_FROM.to_string(), booking_id.into());
        if offered.is_empty() {
            conv.offered_slots.clear();
            conv.extra.remove(OFFERED_AT);
        } else {
            conv.offered_slots = offered.iter().map(Zoned::to_string).collect();
            conv.extra
                .insert(OFFERED_AT.to_string(), now.timestamp().as_second().into());
        }
        turn.replies
            .push(self.persona().prompts.replies().tap_reschedule(&offered));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::audit::AuditEvent;
    use crate::config::ConversationConfig;
    use crate::conversation::booking::BookingOutcome;
    use crate::conversation::prompts::Prompts;
    use crate::llm::{Generation, LanguageModel, LlmError, Prompt};
    use crate::magicline::booking::tests::{at, request, sim_cfg, Harness};
    use crate::magicline::booking::MagicLineBooker;
    use crate::reminders::{Plan, RemindersConfig};
    use crate::sandbox::magicline::{SimBookingState, SimConfig};
    use crate::store::crypto::Pseudonym;
    use crate::store::schedule::ScheduledKind;
    use crate::turn::{Burst, Part, PartKind};

    const PHONE: &str = "4915100000401";

    /// Taps are decided without the model; a call fails the test.
    struct NoModel;

    impl LanguageModel for NoModel {
        fn generate(
            &self,
            _prompt: &Prompt,
            _schema: &serde_json::Value,
        ) -> Result<Generation, LlmError> {
            panic!("a tap or a pick among offered slots is decided without the model")
        }
        fn describe(&self) -> String {
            "none".into()
        }
    }

    struct Setup {
        h: Harness,
        booker: Arc<MagicLineBooker>,
        engine: Engine,
        p: Pseudonym,
    }

    fn setup(sim: SimConfig) -> Setup {
        let h = Harness::new(sim);
        let plan = Plan::from_config(&RemindersConfig::default()).unwrap();
        let booker = Arc::new(h.reminding_booker(plan));
        let studio = crate::conversation::prompts::tests::studio();
        let prompts = Prompts::load_from(
            &crate::conversation::prompts::tests::shipped_dir(),
            None,
            &studio,
        )
        .unwrap();
        let engine = Engine::new(
            h.store().clone(),
            Arc::new(NoModel),
            Arc::new(prompts),
            studio,
            ConversationConfig::default(),
            Some(booker.clone()),
        );
        let p = h
            .store()
            .update_customer(PHONE, at(0, 9, 0).timestamp(), |c, _, _| {
                let profile = &mut c.body.profile;
                profile.vorname = Some("Lena".into());
                profile.nachname = Some("Schmidt".into());
                profile.email = Some("lena@example.org".into());
                c.body.conversation.disclosed_ai = true;
                Ok(())
            })
            .unwrap()
            .0
            .pseudonym;
        Setup {
            h,
            booker,
            engine,
            p,
        }
    }

    impl Setup {
        fn book(&self, start: Zoned) -> (i64, i64, bool) {
            let req = request("r-tap", self.p, "lena@example.org", None, start);
            match self.booker.book_trial(&req) {
                BookingOutcome::Booked {
                    booking_id,
                    magicline_customer_id,
                    confirmation_pending,
                    ..
                } => (booking_id, magicline_customer_id, confirmation_pending),
                other => panic!("not booked: {other:?}"),
            }
        }

        /// The contact sends `text`; with `button`, as the label of the button they tapped.
        fn send(&self, id: &str, text: &str, button: Option<String>) -> Turn {
            let now = at(0, 10, 0);
            let burst = Burst {
                address: PHONE.into(),
                contact_name: None,
                user_id: None,
                parent_user_id: None,
                username: None,
                referral: None,
                parts: vec![Part {
                    id: id.into(),
                    at: now.timestamp(),
                    kind: PartKind::Text(text.into()),
                    quoted: None,
                    button,
                }],
            };
            let mut turn = self.engine.decide_at(&burst, &now).unwrap();
            turn.effects = crate::turn::commit(self.h.store(), turn.effects, &(), None).unwrap();
            turn
        }

        fn tap(&self, action: TapAction, booking_id: i64) -> Turn {
            let label = match action {
                TapAction::Confirm => "Ich komme",
                TapAction::Reschedule => "Anderer Termin",
                TapAction::Cancel => "Absagen",
            };
            self.send("wamid.tap", label, Some(action.payload(booking_id)))
        }

        fn state(&self, lead: i64, booking_id: i64) -> SimBookingState {
            self.h
                .magicline()
                .bookings_of(lead)
                .iter()
                .find(|b| b.id == booking_id)
                .map(|b| b.state)
                .unwrap()
        }

        fn scheduled_for(&self, booking_id: i64) -> Vec<ScheduledKind> {
            self.h
                .store()
                .scheduled_of(&self.p)
                .unwrap()
                .into_iter()
                .filter(|s| s.booking_id == booking_id)
                .map(|s| s.kind)
                .collect()
        }
    }

    fn tapped(turn: &Turn) -> Vec<(String, bool)> {
        turn.effects
            .audit
            .iter()
            .filter_map(|e| match e.event {
                AuditEvent::ReminderTapped { button, .. } => Some((
                    button.as_str().to_string(),
                    e.outcome == crate::audit::Outcome::Ok,
                )),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn confirm_tap_confirms_in_magicline_when_the_booking_waits_for_it() {
        let s = setup(SimConfig {
            require_confirmation: true,
            ..sim_cfg()
        });
        let (id, lead, pending) = s.book(at(2, 18, 0));
        assert!(pending);
        assert_eq!(s.state(lead, id), SimBookingState::AwaitingConfirmation);
        let t = s.tap(TapAction::Confirm, id);
        assert_eq!(s.state(lead, id), SimBookingState::Booked);
        assert_eq!(tapped(&t), vec![("confirm".to_string(), true)]);
        assert_eq!(t.replies.len(), 1);
        assert!(t.replies[0].contains("18:00"), "{:?}", t.replies);
        // Tapped again: still confirmed, answered the same way.
        let again = s.tap(TapAction::Confirm, id);
        assert_eq!(tapped(&again), vec![("confirm".to_string(), true)]);
    }

    #[test]
    fn cancel_tap_cancels_in_magicline_and_ends_the_reminders() {
        let s = setup(sim_cfg());
        let (id, lead, _) = s.book(at(2, 18, 0));
        assert_eq!(s.scheduled_for(id).len(), 3);
        let t = s.tap(TapAction::Cancel, id);
        assert_eq!(s.state(lead, id), SimBookingState::Canceled);
        assert!(s.scheduled_for(id).is_empty());
        assert_eq!(tapped(&t), vec![("cancel".to_string(), true)]);
        assert!(t.replies[0].contains("storniert"), "{:?}", t.replies);
        assert!(t.alerts.is_empty());
        assert_eq!(
            s.h.store()
                .customer(&s.p)
                .unwrap()
                .unwrap()
                .body
                .profile
                .probetraining_datum,
            None
        );
        // A second tap: it stays cancelled, and nothing new is booked.
        let again = s.tap(TapAction::Cancel, id);
        assert_eq!(tapped(&again), vec![("cancel".to_string(), true)]);
        assert_eq!(s.h.magicline().bookings_of(lead).len(), 1);
    }

    #[test]
    fn reschedule_tap_offers_slots_books_the_pick_then_cancels_the_old_booking() {
        let s = setup(sim_cfg());
        let (old, lead, _) = s.book(at(2, 18, 0));
        let t = s.tap(TapAction::Reschedule, old);
        assert_eq!(tapped(&t), vec![("reschedule".to_string(), true)]);
        let offered =
            s.h.store()
                .customer(&s.p)
                .unwrap()
                .unwrap()
                .body
                .conversation
                .offered_slots;
        assert_eq!(offered.len(), 3, "{:?}", t.replies);
        assert!(t.replies[0].contains("1. "), "{:?}", t.replies);
        // Nothing has changed in MagicLine yet.
        assert_eq!(s.state(lead, old), SimBookingState::Booked);

        let t = s.send("wamid.pick", "den zweiten", None);
        let Some(BookingOutcome::Booked {
            booking_id: new,
            start,
            ..
        }) = t.booking.clone()
        else {
            panic!("the pick is booked: {:?} {:?}", t.booking, t.replies);
        };
        assert_eq!(start.to_string(), offered[1]);
        assert_ne!(new, old);
        assert_eq!(s.state(lead, new), SimBookingState::Booked);
        assert_eq!(s.state(lead, old), SimBookingState::Canceled);
        assert!(s.scheduled_for(old).is_empty());
        // The new slot is tomorrow morning: its 24-hour reminder has passed already.
        assert_eq!(
            s.scheduled_for(new),
            vec![ScheduledKind::ReminderLate, ScheduledKind::AfterTrial]
        );
        assert!(
            t.alerts.is_empty(),
            "the move is done, staff need not cancel by hand"
        );
    }
}
