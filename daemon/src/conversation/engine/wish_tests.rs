//! The remembered wish and the rescue of failed bookings with the real booker against the
//! MagicLine simulator: a corrected e-mail books the kept wish, a taken slot that was freed is
//! booked when the contact asks for it again, and refused contact data raises exactly one
//! staff alert through the durable alert queue.

use std::sync::Arc;

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
use crate::store::customers::{Customer, Stage};
use crate::turn::{AlertKind, Burst};

const PHONE: &str = "+49 151 24681357";
/// The trial appointment of the simulator's default studio.
const TRIAL_APPOINTMENT: i64 = 1001;

/// The engine with a scripted model and the real booker on the simulator; all on Monday
/// 2030-06-03 09:00, the booker's and the simulator's clock.
struct Setup {
    ml: BookerHarness,
    model: Arc<ScriptedModel>,
    engine: Engine,
}

impl Setup {
    fn new() -> Setup {
        let ml = BookerHarness::new(sim_cfg());
        let model = Arc::new(ScriptedModel::default());
        let studio = crate::conversation::prompts::tests::studio();
        let prompts = Prompts::load_from(
            &crate::conversation::prompts::tests::shipped_dir(),
            None,
            &studio,
        )
        .unwrap();
        let engine = Engine::new(
            ml.store(),
            model.clone(),
            Arc::new(prompts),
            studio,
            ConversationConfig::default(),
            Some(Arc::new(ml.booker())),
        );
        Setup { ml, model, engine }
    }

    fn now() -> Zoned {
        monday_nine().to_zoned(berlin_tz())
    }

    /// Decides and commits one message under its own WhatsApp id.
    fn say(&self, id: &str, text: &str) -> Turn {
        let now = Setup::now();
        let burst = Burst {
            address: PHONE.into(),
            contact_name: None,
            user_id: None,
            parent_user_id: None,
            username: None,
            referral: None,
            parts: vec![text_part(id, text, &now)],
        };
        let mut turn = self.engine.decide_at(&burst, &now).unwrap();
        turn.effects = crate::turn::commit(&self.ml.store(), turn.effects, &(), None).unwrap();
        turn
    }

    fn customer(&self) -> Customer {
        let store = self.ml.store();
        store.customer(&store.pseudonym(PHONE)).unwrap().unwrap()
    }

    /// The staff alerts raised and not yet taken by the alert worker.
    fn raised_alerts(&self) -> Vec<alert_queue::Alert> {
        alert_queue::at_stage(&self.ml.store(), alert_queue::RAISED)
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
