//! The dispatcher with the real engine and store against the Graph API simulator: the typing
//! indicator (shown when work on a reply starts, renewed while the model still generates, never
//! for a message that gets no reply) and WhatsApp's notices of a new number or user id.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::{DispatchConfig, Dispatcher};
use crate::audit::AuditLog;
use crate::config::ConversationConfig;
use crate::conversation::booking::Booker;
use crate::conversation::engine::Engine;
use crate::conversation::prompts::{tests as prompt_tests, Prompts};
use crate::llm::{Generation, LanguageModel, LlmError, Prompt};
use crate::metrics::Metrics;
use crate::sandbox::whatsapp::{self as sim, SIM_GRAPH_VERSION, SIM_PHONE_NUMBER_ID, SIM_TOKEN};
use crate::store::crypto::StoreIdentity;
use crate::store::customers::BotMode;
use crate::store::Store;
use crate::whatsapp::graph::GraphClient;
use crate::whatsapp::payload::{Content, InboundMessage};
use crate::whatsapp::queue::{InboxEntry, Queues};

pub(super) const PHONE: &str = "491511234567";
/// One of the studio's staff numbers (`[alerts] whatsapp_recipients`).
const STAFF_NUMBER: &str = "491510000001";
const WAIT: Duration = Duration::from_secs(20);

/// A model that, while armed, blocks in `generate` until the test opens the gate.
#[derive(Default)]
struct GatedModel {
    gate: Mutex<Option<mpsc::Receiver<()>>>,
    calls: AtomicUsize,
}

impl LanguageModel for GatedModel {
    fn generate(&self, _: &Prompt, _: &serde_json::Value) -> Result<Generation, LlmError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(gate) = self.gate.lock().unwrap().take() {
            gate.recv().unwrap();
        }
        Ok(Generation {
            text: r#"{"intent":"none","profil":{},"reply":"Hallo! Ich bin Max, der digitale Assistent (KI) von FitBox.","wunschtermin":null}"#.into(),
            prompt_tokens: 10,
            evaluated_prompt_tokens: 10,
            generated_tokens: 10,
        })
    }
    fn describe(&self) -> String {
        "gated".into()
    }
}

pub(super) struct Fixture {
    _dir: tempfile::TempDir,
    pub(super) store: Arc<Store>,
    pub(super) queues: Arc<Queues>,
    model: Arc<GatedModel>,
    pub(super) dispatcher: Arc<Dispatcher>,
    sim: sim::GraphSim,
    pub(super) audit: Arc<AuditLog>,
    pub(super) metrics: Arc<Metrics>,
}

/// Builds the booker of a fixture over its store.
pub(super) type MakeBooker = Box<dyn FnOnce(Arc<Store>) -> Arc<dyn Booker>>;

async fn fixture() -> Fixture {
    fixture_with(None, None, super::TurnRetry::default()).await
}

/// The dispatcher with the real engine over `model` (else a [`GatedModel`]) and the booker
/// `booker` makes (else none), trying failed turns again by `retry`.
pub(super) async fn fixture_with(
    model: Option<Arc<dyn LanguageModel>>,
    booker: Option<MakeBooker>,
    retry: super::TurnRetry,
) -> Fixture {
    let sim = sim::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), StoreIdentity::generate()).unwrap());
    let queues = Arc::new(Queues::new(&store).unwrap());
    let gated = Arc::new(GatedModel::default());
    let studio = prompt_tests::studio();
    let prompts = Prompts::load_from(&prompt_tests::shipped_dir(), None, &studio).unwrap();
    let engine = Arc::new(Engine::new(
        store.clone(),
        model.unwrap_or_else(|| gated.clone()),
        Arc::new(prompts),
        studio,
        ConversationConfig::default(),
        booker.map(|make| make(store.clone())),
    ));
    let audit = Arc::new(AuditLog::open(store.clone()).unwrap().without_journal());
    let metrics = Arc::new(Metrics::new());
    let reader = GraphClient::new(
        &sim.base_url(),
        SIM_GRAPH_VERSION,
        SIM_PHONE_NUMBER_ID,
        SIM_TOKEN.into(),
        Duration::from_secs(5),
    );
    let dispatcher = Dispatcher::new(
        store.clone(),
        queues.clone(),
        engine,
        Some(audit.clone()),
        Some(reader),
        DispatchConfig {
            burst_window: Duration::from_millis(1),
            max_concurrent: 4,
            // Short, so that the model below is still generating at the renewals.
            typing_refresh: Duration::from_millis(10),
            failures: crate::whatsapp::failures::FailurePolicy {
                reopen_template: None,
                template_language: "de".into(),
            },
            retry,
            staff: Arc::new(crate::whatsapp::staff::StaffNumbers::new(
                &[STAFF_NUMBER.into()],
                "https://desk.example",
            )),
        },
        metrics.clone(),
        Arc::new(Notify::new()),
    );
    Fixture {
        _dir: dir,
        store,
        queues,
        model: gated,
        dispatcher,
        sim,
        audit,
        metrics,
    }
}

impl Fixture {
    /// Puts a message into the inbox, as the webhook does, and hands it to the dispatcher.
    pub(super) fn deliver(&self, id: &str, content: Content) {
        self.deliver_from(PHONE, id, content);
    }

    fn deliver_from(&self, from: &str, id: &str, content: Content) {
        self.deliver_written(from, id, content, 1_780_000_000);
    }

    /// [`Fixture::deliver`] of a message WhatsApp says was written at unix second `timestamp`.
    pub(super) fn deliver_written(&self, from: &str, id: &str, content: Content, timestamp: i64) {
        let m = InboundMessage {
            id: id.into(),
            from: from.into(),
            user_id: None,
            parent_user_id: None,
            timestamp,
            phone_number_id: SIM_PHONE_NUMBER_ID.into(),
            contact_name: None,
            reply_to: None,
            username: None,
            referral: None,
            error_codes: Vec::new(),
            content,
        };
        let p = self.store.pseudonym(from);
        let mut batch = self.store.batch();
        let keys = self
            .queues
            .push_inbox(&self.store, &mut batch, &[(p, InboxEntry::Message(m))])
            .unwrap();
        self.store.commit_durable(batch).unwrap();
        self.dispatcher
            .enqueue(keys.into_iter().map(|k| (k, p)).collect());
    }

    fn set_mode(&self, mode: BotMode) {
        self.store
            .update_existing(&self.store.pseudonym(PHONE), |c, _, _| {
                c.meta.mode = mode;
                Ok(())
            })
            .unwrap()
            .unwrap();
    }

    fn history_len(&self) -> usize {
        self.store
            .recent_messages(&self.store.pseudonym(PHONE), 100)
            .unwrap()
            .len()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_is_renewed_while_the_model_generates_and_absent_without_a_reply() {
    let f = fixture().await;
    let (open, gate) = mpsc::channel();
    *f.model.gate.lock().unwrap() = Some(gate);

    f.deliver("wamid.1", Content::Text("Hallo".into()));
    // The model is blocked until the simulator has seen the indicator twice.
    let marks = f.sim.wait_for_reads(2, WAIT).await.unwrap();
    assert!(marks.iter().all(|m| m.typing && m.message_id == "wamid.1"));
    assert_eq!(f.model.calls.load(Ordering::SeqCst), 1);
    open.send(()).unwrap();
    f.dispatcher.wait_idle().await;
    assert_eq!(
        f.history_len(),
        2,
        "the message and its reply are committed"
    );
    // The renewals ended with the decision: nothing is requested after it.
    let after_reply = f.sim.read_marks().len();

    // A reaction gets no reply and no indicator.
    f.deliver(
        "wamid.2",
        Content::Reaction {
            message_id: "wamid.OUT".into(),
            emoji: Some("👍".into()),
        },
    );
    f.dispatcher.wait_idle().await;
    assert_eq!(f.sim.read_marks().len(), after_reply);

    // Paused and opted-out contacts: recorded, not answered, no indicator.
    f.set_mode(BotMode::Paused);
    f.deliver("wamid.3", Content::Text("Hallo?".into()));
    f.dispatcher.wait_idle().await;
    assert_eq!(f.history_len(), 3);
    f.set_mode(BotMode::OptedOut);
    f.deliver("wamid.4", Content::Text("STOP".into()));
    f.dispatcher.wait_idle().await;
    assert_eq!(f.history_len(), 4);
    f.set_mode(BotMode::Escalated);
    f.deliver("wamid.5", Content::Text("Und nun?".into()));
    f.dispatcher.wait_idle().await;
    assert_eq!(f.history_len(), 5);
    assert_eq!(f.model.calls.load(Ordering::SeqCst), 1);
    assert_eq!(f.sim.read_marks().len(), after_reply);

    // Active again: the indicator comes back with the reply.
    f.set_mode(BotMode::Active);
    f.deliver("wamid.6", Content::Text("Hallo nochmal".into()));
    f.dispatcher.wait_idle().await;
    let marks = f.sim.read_marks();
    assert!(marks.len() > after_reply);
    assert!(marks[after_reply..]
        .iter()
        .all(|m| m.typing && m.message_id == "wamid.6"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notices_of_a_new_number_and_user_id_move_the_customer() {
    const NEW_PHONE: &str = "491519999999";
    let f = fixture().await;
    f.deliver("wamid.1", Content::Text("Hallo".into()));
    f.dispatcher.wait_idle().await;
    let old = f.store.pseudonym(PHONE);
    assert_eq!(f.history_len(), 2);

    // `user_changed_number`, as parsed from the 2026 payload (`from` is the old number).
    f.deliver(
        "wamid.2",
        Content::System {
            kind: "user_changed_number".into(),
            new_wa_id: Some(NEW_PHONE.into()),
            new_user_id: None,
            previous_user_id: None,
        },
    );
    f.dispatcher.wait_idle().await;
    let new = f.store.pseudonym(NEW_PHONE);
    assert!(f.store.customer(&old).unwrap().is_none());
    assert!(f.store.recent_messages(&old, 10).unwrap().is_empty());
    let moved = f.store.customer(&new).unwrap().unwrap();
    assert_eq!(moved.body.phone, NEW_PHONE);
    assert_eq!(f.store.recent_messages(&new, 10).unwrap().len(), 2);
    assert_eq!(
        f.model.calls.load(Ordering::SeqCst),
        1,
        "a notice is never answered"
    );

    // The contact writes from the new number: the same customer, not a new one.
    f.deliver_from(NEW_PHONE, "wamid.3", Content::Text("Ich bins".into()));
    f.dispatcher.wait_idle().await;
    assert_eq!(f.store.recent_messages(&new, 10).unwrap().len(), 4);
    assert_eq!(f.store.customer_metas().count(), 1);

    // `user_changed_user_id` of a contact known by user id only, sent from the old user id.
    f.deliver_from("DE.5150", "wamid.4", Content::Text("Hallo".into()));
    f.dispatcher.wait_idle().await;
    let old_id = f.store.pseudonym("DE.5150");
    assert!(f.store.customer(&old_id).unwrap().is_some());
    f.deliver_from(
        "DE.5150",
        "wamid.5",
        Content::System {
            kind: "user_changed_user_id".into(),
            new_wa_id: None,
            new_user_id: Some("DE.5151".into()),
            previous_user_id: Some("DE.5150".into()),
        },
    );
    f.dispatcher.wait_idle().await;
    assert!(f.store.customer(&old_id).unwrap().is_none());
    assert!(f.store.recent_messages(&old_id, 10).unwrap().is_empty());
    let moved = f
        .store
        .customer(&f.store.pseudonym("DE.5151"))
        .unwrap()
        .unwrap();
    assert_eq!(moved.body.user_id.as_deref(), Some("DE.5151"));
    assert_eq!(
        f.store.recent_messages(&moved.pseudonym, 10).unwrap().len(),
        2
    );
}

/// Wire shapes of every inbound type, read into the parts the engine answers.
mod parts {
    use super::super::*;

    use crate::sandbox::whatsapp::PayloadBuilder;
    use crate::whatsapp::payload::{self, Event, MediaKind};

    fn parsed(payload: &serde_json::Value) -> InboundMessage {
        let events = payload::parse(&serde_json::to_vec(payload).unwrap()).unwrap();
        match events.into_iter().next() {
            Some(Event::Message(m)) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    #[test]
    fn every_inbound_type_becomes_the_part_the_engine_answers_right() {
        let p = PayloadBuilder::default();
        let from = "491701234567";

        let caption = part_of(&parsed(&p.media_with_caption(
            from,
            "wamid.1",
            MediaKind::Image,
            "geht das?",
            1,
        )));
        assert_eq!(
            caption.kind,
            PartKind::Captioned {
                media: "image",
                caption: "geht das?".into()
            }
        );
        let bare = part_of(&parsed(&p.media(from, "wamid.2", MediaKind::Image, 1)));
        assert_eq!(bare.kind, PartKind::NonText("image"));

        let quote = part_of(&parsed(
            &p.quoting(p.text_message(from, "wamid.3", "Ja", 1), "wamid.OURS"),
        ));
        assert_eq!(quote.kind, PartKind::Text("Ja".into()));
        assert_eq!(quote.quoted.as_deref(), Some("wamid.OURS"));

        let welcome = part_of(&parsed(&p.welcome_request(from, "wamid.4", 1)));
        assert_eq!(welcome.kind, PartKind::Welcome);

        // A reply button frontdesk sent comes back with its id, the tap's payload.
        let tap = part_of(&parsed(&p.button_reply(
            from,
            "wamid.41",
            "fd-trial:reschedule:7",
            "Neuer Termin",
            1,
        )));
        assert_eq!(tap.button.as_deref(), Some("fd-trial:reschedule:7"));

        let form = part_of(&parsed(&p.flow_reply(
            from,
            "wamid.5",
            &serde_json::json!({ "vorname": "Alex" }),
            1,
        )));
        assert_eq!(form.kind, PartKind::Text("vorname: Alex".into()));

        let edit = part_of(&parsed(&p.edit(from, "wamid.6", "wamid.3", "Nein", 1)));
        assert_eq!(
            edit.kind,
            PartKind::Edit {
                original: "wamid.3".into(),
                text: Some("Nein".into())
            }
        );
        let revoke = part_of(&parsed(&p.revoke(from, "wamid.7", "wamid.3", 1)));
        assert_eq!(
            revoke.kind,
            PartKind::Revoke {
                original: "wamid.3".into()
            }
        );

        let ad = parsed(&p.from_ad(p.text_message(from, "wamid.8", "Hi", 1), "42", "Gratis"));
        let source = ad.referral.expect("the referral is parsed");
        assert_eq!(source.source_id.as_deref(), Some("42"));
        assert_eq!(source.headline.as_deref(), Some("Gratis"));
        assert!(source.ctwa_clid.is_some());

        let named = PayloadBuilder {
            username: Some("@alex".into()),
            ..PayloadBuilder::default()
        };
        let m = parsed(&named.text_message(from, "wamid.9", "Hi", 1));
        assert_eq!(m.username.as_deref(), Some("@alex"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staff_number_is_no_lead_and_is_pointed_to_the_console_once() {
    let f = fixture().await;
    f.deliver_from(
        STAFF_NUMBER,
        "wamid.s1",
        Content::Text("Ich übernehme".into()),
    );
    f.dispatcher.wait_idle().await;
    f.deliver_from(STAFF_NUMBER, "wamid.s2", Content::Text("Danke".into()));
    f.dispatcher.wait_idle().await;
    let staff = f.store.pseudonym(STAFF_NUMBER);
    // No record, no history, no model call, no funnel count.
    assert!(f.store.customer(&staff).unwrap().is_none());
    assert!(f.store.recent_messages(&staff, 10).unwrap().is_empty());
    assert_eq!(f.model.calls.load(Ordering::SeqCst), 0);
    let report = crate::stats::report(
        &f.store,
        None,
        crate::stats::Period::Day,
        &crate::stats::Rates::default(),
    )
    .unwrap();
    assert_eq!(report.total.new_contacts, 0);
    // One pointer to the console went out (the second message got none).
    let outbox = f.queues.outbox(&f.store).unwrap();
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].entry.to, STAFF_NUMBER);
    let crate::whatsapp::queue::OutboundKind::Text(text) = &outbox[0].entry.kind else {
        panic!("a text, not {:?}", outbox[0].entry.kind);
    };
    assert!(text.contains("https://desk.example"), "{text}");
    // Both are audited about no customer, with no words.
    let filter = crate::audit::AuditFilter {
        action: Some("message.from_staff".into()),
        ..crate::audit::AuditFilter::default()
    };
    let entries = f.audit.query(&filter).unwrap();
    assert_eq!(entries.len(), 2);
    assert!(entries.iter().all(|e| e.subject.is_none()));
}
