//! The remembered wish, the rescue of failed bookings and members, with the real booker
//! against the MagicLine simulator: a corrected e-mail books the kept wish, a taken slot that
//! was freed is booked when the contact asks for it again, refused contact data raises exactly
//! one staff alert through the durable alert queue, and a member recognised by their number
//! books, moves and cancels appointments through the member flow.

use std::sync::Arc;
use std::time::Duration;

use jiff::Zoned;
use serde_json::json;

use super::tests::{answer, text_part, ScriptedModel};
use super::{Engine, Turn};
use crate::alerts::queue::{self as alert_queue, Reason};
use crate::config::ConversationConfig;
use crate::conversation::booking::BookingOutcome;
use crate::conversation::prompts::Prompts;
use crate::conversation::when::berlin_tz;
use crate::magicline::booking::tests::{at, monday_nine, sim_cfg, Harness as BookerHarness};
use crate::magicline::booking::BookerConfig;
use crate::sandbox::magicline::SimBookingState;
use crate::store::customers::{Customer, Stage};
use crate::turn::{AlertKind, Burst};

const PHONE: &str = "+49 151 24681357";
/// The trial appointment of the simulator's default studio.
const TRIAL_APPOINTMENT: i64 = 1001;
/// A member appointment type of the simulator's default studio.
const EMS_APPOINTMENT: i64 = 2001;
/// Jonas, a member of the simulator's default studio, and the number on his record.
const JONAS: i64 = 502;
const JONAS_PHONE: &str = "+49 160 9876502";

/// The engine with a scripted model and the real booker on the simulator; all on Monday
/// 2030-06-03 09:00, the booker's and the simulator's clock.
struct Setup {
    ml: BookerHarness,
    model: Arc<ScriptedModel>,
    engine: Engine,
    phone: &'static str,
}

impl Setup {
    fn new() -> Setup {
        Setup::writing_from(PHONE)
    }

    /// The contact writes from `phone`; members book the EMS appointment type.
    fn writing_from(phone: &'static str) -> Setup {
        let ml = BookerHarness::new(sim_cfg());
        let booker = ml.booker_configured(
            Duration::from_secs(2),
            3,
            BookerConfig {
                member_appointment_id: Some(EMS_APPOINTMENT),
                ..BookerConfig::default()
            },
        );
        let model = Arc::new(ScriptedModel::default());
        let studio = crate::conversation::prompts::tests::studio();
        let prompts = Prompts::load_from(
            &crate::conversation::prompts::tests::shipped_dir(),
            None,
            &studio,
        )
        .unwrap();
        let engine = Engine::new(
            ml.store().clone(),
            model.clone(),
            Arc::new(prompts),
            studio,
            ConversationConfig::default(),
            Some(Arc::new(booker)),
        );
        Setup {
            ml,
            model,
            engine,
            phone,
        }
    }

    fn now() -> Zoned {
        monday_nine().to_zoned(berlin_tz())
    }

    /// Decides and commits one message under its own WhatsApp id.
    fn say(&self, id: &str, text: &str) -> Turn {
        let now = Setup::now();
        let burst = Burst {
            address: self.phone.into(),
            contact_name: None,
            user_id: None,
            parent_user_id: None,
            username: None,
            referral: None,
            parts: vec![text_part(id, text, &now)],
        };
        let mut turn = self.engine.decide_at(&burst, &now).unwrap();
        turn.effects = crate::turn::commit(self.ml.store(), turn.effects, &(), None).unwrap();
        turn
    }

    fn customer(&self) -> Customer {
        let store = self.ml.store();
        store
            .customer(&store.pseudonym(self.phone))
            .unwrap()
            .unwrap()
    }

    /// The staff alerts raised and not yet taken by the alert worker.
    fn raised_alerts(&self) -> Vec<alert_queue::Alert> {
        alert_queue::at_stage(self.ml.store(), alert_queue::RAISED)
            .unwrap()
            .into_iter()
            .map(|row| row.alert)
            .collect()
    }

    /// The contact introduces themselves with name and e-mail.
    fn introduce(&self, email: &str) {
        self.model.push(answer(
            "none",
            json!({"vorname": "Lena", "nachname": "Schmidt", "email": email}),
            "Hi Lena, ich bin Max, der digitale Assistent (KI) von FitBox! Wann passt es dir?",
            None,
        ));
        self.say("m-intro", &format!("Hi, Lena Schmidt, {email}"));
    }
}

fn is_booked(t: &Turn) -> bool {
    matches!(t.booking, Some(BookingOutcome::Booked { .. }))
}

#[test]
fn a_corrected_email_rescues_a_failed_booking_and_the_refusal_alerts_once() {
    let s = Setup::new();
    // Passes frontdesk's e-mail check, but MagicLine's own check refuses it.
    s.ml.sim().reject_email("lena.schmidt@example.con");
    s.introduce("lena.schmidt@example.con");
    s.model.push(answer(
        "book_trial",
        json!({}),
        "Ich schau nach!",
        Some("morgen um 15 Uhr"),
    ));
    let t = s.say("m-wish", "Geht morgen um 15 Uhr?");
    assert!(
        matches!(t.booking, Some(BookingOutcome::Failed(_))),
        "{:?}",
        t.booking
    );
    assert!(t.replies[0].contains("E-Mail-Adresse"), "{}", t.replies[0]);
    assert_eq!(t.alerts.len(), 1);
    assert_eq!(t.alerts[0].kind, AlertKind::InvalidCustomerData);
    let validations = s.ml.sim().request_count("/trial-offers/lead/validate");
    assert!(s.ml.sim().leads().is_empty());

    // The same data again (and a question) is not sent to MagicLine again.
    s.model.push(answer(
        "book_trial",
        json!({"email": "lena.schmidt@example.con"}),
        "Hm, ich prüfe das.",
        None,
    ));
    let t = s.say("m-same", "Die stimmt aber: lena.schmidt@example.con");
    assert_eq!(t.booking, None);
    s.model.push(answer(
        "question",
        json!({}),
        "Bring Sportschuhe mit!",
        None,
    ));
    s.say("m-question", "Was soll ich mitbringen?");
    assert_eq!(
        s.ml.sim().request_count("/trial-offers/lead/validate"),
        validations
    );

    // The corrected e-mail books the kept wish, although the model does not repeat it.
    s.model.push(answer(
        "none",
        json!({"email": "lena.schmidt@example.com"}),
        "Danke!",
        None,
    ));
    let t = s.say("m-fixed", "Sorry, vertippt: lena.schmidt@example.com");
    assert!(is_booked(&t), "{:?}", t.booking);
    assert!(t.replies[0].contains("gebucht"), "{}", t.replies[0]);
    let leads = s.ml.sim().leads();
    assert_eq!(leads.len(), 1);
    assert_eq!(leads[0].email, "lena.schmidt@example.com");
    let bookings = s.ml.sim().bookings_of(leads[0].customer_id);
    assert_eq!(bookings.len(), 1);
    assert_eq!(bookings[0].start.timestamp(), at(1, 15, 0).timestamp());
    assert_eq!(s.customer().meta.stage, Stage::TrialBooked);

    // Exactly one staff alert, in the durable queue, with the first name and the reason only.
    let alerts = s.raised_alerts();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].reason, Reason::InvalidCustomerData);
    assert_eq!(alerts[0].first_name.as_deref(), Some("Lena"));
}

#[test]
fn a_taken_slot_that_was_freed_is_booked_when_asked_for_again() {
    let s = Setup::new();
    let slot = at(1, 15, 0);
    s.ml.sim().occupy_slot(TRIAL_APPOINTMENT, &slot);
    s.introduce("lena@example.org");
    s.model.push(answer(
        "book_trial",
        json!({}),
        "Ich schau nach!",
        Some("morgen um 15 Uhr"),
    ));
    let t = s.say("m-wish", "Morgen um 15 Uhr?");
    assert!(
        matches!(t.booking, Some(BookingOutcome::SlotTaken { .. })),
        "{:?}",
        t.booking
    );
    // Another message does not ask MagicLine again.
    let requests = s.ml.sim().total_requests();
    s.model
        .push(answer("none", json!({}), "Sag Bescheid!", None));
    let t = s.say("m-think", "Ich überlege noch");
    assert_eq!(t.booking, None);
    assert_eq!(s.ml.sim().total_requests(), requests);

    // Staff free the slot; the contact asks for it again: checked again, not replayed.
    s.ml.sim().free_slot(TRIAL_APPOINTMENT, &slot);
    s.model.push(answer(
        "book_trial",
        json!({}),
        "Ich schau nochmal!",
        Some("morgen um 15 Uhr"),
    ));
    let t = s.say("m-again", "Ist morgen um 15 Uhr inzwischen frei?");
    assert!(is_booked(&t), "{:?}", t.booking);
    let lead = s.ml.sim().leads()[0].customer_id;
    let bookings = s.ml.sim().bookings_of(lead);
    assert_eq!(bookings.len(), 1);
    assert_eq!(bookings[0].start.timestamp(), slot.timestamp());
    assert_eq!(s.ml.sim().book_calls(lead), 1);
    assert!(s.raised_alerts().is_empty());
}

#[test]
fn a_member_is_recognised_by_their_number_and_books_moves_and_cancels_an_appointment() {
    let s = Setup::writing_from(JONAS_PHONE);
    s.model.push(answer(
        "none",
        json!({"vorname": "Jonas", "nachname": "Beispiel", "email": "jonas.beispiel@example.org"}),
        "Hi Jonas, ich bin Max, der digitale Assistent (KI) von FitBox!",
        None,
    ));
    let t = s.say(
        "m-hi",
        "Hi, Jonas Beispiel hier, jonas.beispiel@example.org",
    );
    assert_eq!(t.booking, None, "a member is never booked into a trial");
    let c = s.customer();
    assert_eq!(c.meta.stage, Stage::Member);
    assert_eq!(c.body.profile.magicline_customer_id, Some(JONAS));
    assert_eq!(c.body.profile.mitglied.as_deref(), Some("ja"));

    // The member's wish is booked through the member flow: no lead, no trial.
    s.model.push(answer(
        "book_trial",
        json!({}),
        "Schau ich nach!",
        Some("morgen um 15 Uhr"),
    ));
    let t = s.say("m-book", "Kann ich morgen um 15 Uhr zum EMS kommen?");
    let d = s.model.last_prompt().dynamic_system;
    assert!(d.contains("Status: Mitglied"), "{d}");
    assert!(d.contains("Biete nie ein Probetraining an"), "{d}");
    assert!(is_booked(&t), "{:?}", t.booking);
    assert!(t.replies[0].contains("Dein Termin am"), "{}", t.replies[0]);
    assert!(!t.replies[0].contains("Probetraining"), "{}", t.replies[0]);
    assert!(s.ml.sim().leads().is_empty());
    assert_eq!(s.ml.sim().request_count("/trial-offers/lead"), 0);
    let made = s.ml.sim().bookings_of(JONAS);
    assert_eq!(made.len(), 1);
    assert!(!made[0].trial);
    assert_eq!(made[0].appointment_id, EMS_APPOINTMENT);
    assert_eq!(made[0].start.timestamp(), at(1, 15, 0).timestamp());
    assert_eq!(s.customer().meta.stage, Stage::Member);

    // Moved: the new slot is booked and the old one cancelled in MagicLine.
    s.model.push(answer(
        "reschedule",
        json!({}),
        "Klar!",
        Some("übermorgen um 16 Uhr"),
    ));
    let t = s.say("m-move", "Geht stattdessen übermorgen um 16 Uhr?");
    assert!(is_booked(&t), "{:?}", t.booking);
    let made = s.ml.sim().bookings_of(JONAS);
    assert_eq!(made.len(), 2);
    assert_eq!(made[0].state, SimBookingState::Canceled);
    assert_eq!(made[1].state, SimBookingState::Booked);
    assert_eq!(made[1].start.timestamp(), at(2, 16, 0).timestamp());

    // Cancelled in MagicLine and confirmed, without handing over.
    s.model
        .push(answer("cancel_appointment", json!({}), "Schade!", None));
    let t = s.say("m-cancel", "Ich muss den Termin leider absagen");
    assert!(t.replies[0].contains("abgesagt"), "{}", t.replies[0]);
    assert!(t.alerts.is_empty());
    assert_eq!(
        s.ml.sim().bookings_of(JONAS)[1].state,
        SimBookingState::Canceled
    );
    assert!(s.customer().meta.mode.answers());
}

#[test]
fn a_namesake_with_another_number_is_no_member() {
    let s = Setup::new();
    s.model.push(answer(
        "none",
        json!({"vorname": "Jonas", "nachname": "Beispiel", "email": "jonas.beispiel@example.org"}),
        "Hi Jonas, ich bin Max, der digitale Assistent (KI) von FitBox!",
        None,
    ));
    s.say(
        "m-hi",
        "Hi, Jonas Beispiel hier, jonas.beispiel@example.org",
    );
    let c = s.customer();
    assert_eq!(c.meta.stage, Stage::NameKnown);
    assert_eq!(c.body.profile.magicline_customer_id, None);
}
