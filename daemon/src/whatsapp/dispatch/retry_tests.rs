//! Failed turns in the running dispatcher, with the real engine and store: tried again after a
//! pause with the contact's later messages waiting behind, read against when they were written,
//! booked once in the MagicLine simulator under the same request, and handed to staff with
//! their messages kept after the last attempt.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;

use super::tests::{fixture_with, Fixture, MakeBooker, PHONE};
use super::TurnRetry;
use crate::audit::AuditFilter;
use crate::conversation::booking::Booker;
use crate::llm::{Generation, LanguageModel, LlmError, Prompt};
use crate::magicline::booking::{BookerConfig, MagicLineBooker, MemoryAudit};
use crate::magicline::client::{Client, RetryPolicy};
use crate::metrics::Reason;
use crate::sandbox::magicline::{self as ml, Fault, SimConfig};
use crate::store::customers::{BotMode, Stage};
use crate::store::messages::{Direction, Message};
use crate::whatsapp::payload::Content;

const WAIT: Duration = Duration::from_secs(30);
const TRIAL_BOOK: &str = "/trial-offers/appointments/booking/book";
const CUSTOMER_BOOKINGS: &str = "/appointments/booking";

/// A model that answers from a script, one entry per call (an `Err` fails that call, an empty
/// script fails every further call), and runs `hook` with the call's number (0-based) first.
struct ScriptedModel {
    answers: Mutex<VecDeque<Result<String, LlmError>>>,
    prompts: Mutex<Vec<Prompt>>,
    hook: Box<dyn Fn(usize) + Send + Sync>,
}

impl ScriptedModel {
    fn new(
        answers: Vec<Result<String, LlmError>>,
        hook: impl Fn(usize) + Send + Sync + 'static,
    ) -> Arc<ScriptedModel> {
        Arc::new(ScriptedModel {
            answers: Mutex::new(answers.into()),
            prompts: Mutex::new(Vec::new()),
            hook: Box::new(hook),
        })
    }

    fn prompts(&self) -> Vec<Prompt> {
        self.prompts.lock().unwrap().clone()
    }
}

impl LanguageModel for ScriptedModel {
    fn generate(&self, prompt: &Prompt, _: &serde_json::Value) -> Result<Generation, LlmError> {
        let n = {
            let mut prompts = self.prompts.lock().unwrap();
            prompts.push(prompt.clone());
            prompts.len() - 1
        };
        (self.hook)(n);
        let text = self
            .answers
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Err(LlmError::Busy))?;
        Ok(Generation {
            text,
            prompt_tokens: 10,
            evaluated_prompt_tokens: 10,
            generated_tokens: 10,
        })
    }
    fn describe(&self) -> String {
        "scripted".into()
    }
}

fn reply(text: &str) -> Result<String, LlmError> {
    Ok(
        serde_json::json!({"intent": "none", "profil": {}, "reply": text, "wunschtermin": null})
            .to_string(),
    )
}

/// Quick retries for tests: the pauses are the system's own, the tests wait for idleness.
fn quick(attempts: u32) -> TurnRetry {
    TurnRetry {
        attempts,
        first_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(50),
        max_age: Duration::from_secs(600),
    }
}

fn history(f: &Fixture) -> Vec<Message> {
    f.store
        .recent_messages(&f.store.pseudonym(PHONE), 100)
        .unwrap()
}

async fn idle(f: &Fixture) {
    tokio::time::timeout(WAIT, f.dispatcher.wait_idle())
        .await
        .expect("the dispatcher settles");
}

fn counter(
    family: &prometheus_client::metrics::family::Family<
        Reason,
        prometheus_client::metrics::counter::Counter,
    >,
    reason: &str,
) -> u64 {
    family.get_or_create(&Reason::of(reason)).get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_turn_is_tried_again_and_answered_once_before_later_messages() {
    let (called_tx, called_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = Mutex::new(go_rx);
    let model = ScriptedModel::new(
        vec![
            Err(LlmError::Busy),
            reply("Hallo Lena! Ich bin Max, der digitale Assistent (KI) von FitBox."),
            reply("Wir haben täglich ab 7 Uhr offen."),
        ],
        move |n| {
            if n == 0 {
                // The first try fails only once the contact's next message is queued.
                called_tx.send(()).unwrap();
                go_rx.lock().unwrap().recv().unwrap();
            }
        },
    );
    let f = fixture_with(Some(model.clone()), None, quick(3)).await;
    f.deliver("wamid.1", Content::Text("Hallo, ich bin Lena".into()));
    tokio::task::spawn_blocking(move || called_rx.recv_timeout(WAIT).unwrap())
        .await
        .unwrap();
    f.deliver("wamid.2", Content::Text("Wann habt ihr offen?".into()));
    go_tx.send(()).unwrap();
    idle(&f).await;

    // Retried without a restart, answered once, before the later message.
    let h = history(&f);
    let seen: Vec<(Direction, Option<&str>)> = h
        .iter()
        .map(|m| (m.direction, m.wamid.as_deref()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (Direction::Inbound, Some("wamid.1")),
            (Direction::Outbound, None),
            (Direction::Inbound, Some("wamid.2")),
            (Direction::Outbound, None),
        ]
    );
    assert!(h[1].text.contains("Hallo Lena"), "{}", h[1].text);
    assert!(h[3].text.contains("7 Uhr"), "{}", h[3].text);
    let prompts = model.prompts();
    assert_eq!(prompts.len(), 3);
    // The retry is the same turn: the first message alone, not merged with the later one.
    let last_user = |p: &Prompt| p.history.last().unwrap().content.clone();
    assert_eq!(last_user(&prompts[1]), "Hallo, ich bin Lena");
    assert!(!prompts[1]
        .history
        .iter()
        .any(|m| m.content.contains("offen")));
    assert_eq!(last_user(&prompts[2]), "Wann habt ihr offen?");
    assert_eq!(f.queues.outbox(&f.store).unwrap().len(), 2);
    assert!(f.queues.inbox(&f.store).unwrap().is_empty());
    assert_eq!(counter(&f.metrics.turn_failures.retries, "model"), 1);
    assert_eq!(counter(&f.metrics.turn_failures.given_up, "model"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_last_attempt_the_contact_is_handed_over_with_the_messages_kept() {
    let model = ScriptedModel::new(Vec::new(), |_| {});
    let f = fixture_with(Some(model.clone()), None, quick(2)).await;
    f.deliver(
        "wamid.1",
        Content::Text("Hallo, geht morgen 18 Uhr?".into()),
    );
    idle(&f).await;

    assert_eq!(model.prompts().len(), 2, "two attempts, no more");
    let p = f.store.pseudonym(PHONE);
    let customer = f.store.customer(&p).unwrap().unwrap();
    assert_eq!(customer.meta.mode, BotMode::Escalated);
    let h = history(&f);
    assert_eq!(h.len(), 2);
    assert_eq!(h[0].text, "Hallo, geht morgen 18 Uhr?");
    assert_eq!(h[0].wamid.as_deref(), Some("wamid.1"));
    // The hand-over reply, with the AI disclosure of a first reply.
    assert_eq!(h[1].direction, Direction::Outbound);
    assert!(h[1].text.contains("Team"), "{}", h[1].text);
    assert_eq!(f.queues.outbox(&f.store).unwrap().len(), 1);
    assert!(f.queues.inbox(&f.store).unwrap().is_empty());
    let escalations = f
        .audit
        .query(&AuditFilter {
            action: Some("customer.escalate".into()),
            ..AuditFilter::default()
        })
        .unwrap();
    assert_eq!(escalations.len(), 1);
    assert!(
        format!("{:?}", escalations[0].details).contains("turn_failed"),
        "{:?}",
        escalations[0].details
    );
    assert_eq!(counter(&f.metrics.turn_failures.retries, "model"), 1);
    assert_eq!(counter(&f.metrics.turn_failures.given_up, "model"), 1);

    // Staff have it now: a later message is recorded, never answered by the model.
    f.deliver("wamid.2", Content::Text("Hallo?".into()));
    idle(&f).await;
    assert_eq!(history(&f).len(), 3);
    assert_eq!(model.prompts().len(), 2);
    assert_eq!(f.queues.outbox(&f.store).unwrap().len(), 1);
}

/// Monday, 19 January 2026, 10:00 in Berlin.
fn monday_ten() -> Timestamp {
    "2026-01-19T09:00:00Z".parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_booking_retried_after_a_magicline_failure_books_once_under_the_same_request() {
    let sim = Arc::new(
        ml::start(SimConfig {
            now: Some(monday_ten()),
            ..SimConfig::default()
        })
        .await,
    );
    let booked_before_retry = Arc::new(AtomicUsize::new(usize::MAX));
    let book_answer = serde_json::json!({
        "intent": "book_trial",
        "profil": {"vorname": "Lena", "nachname": "Schmidt", "email": "lena@example.de"},
        "reply": "Moment, ich schaue nach.",
        "wunschtermin": "morgen 18 Uhr",
    })
    .to_string();
    let (hook_sim, seen) = (sim.clone(), booked_before_retry.clone());
    let model = ScriptedModel::new(vec![Ok(book_answer.clone()), Ok(book_answer)], move |n| {
        if n == 0 {
            // MagicLine books but its answer is late, and the check of the customer's
            // bookings fails: the booker cannot know, and the turn fails.
            hook_sim.inject_on(TRIAL_BOOK, Fault::LateAnswer(Duration::from_secs(2)), 1);
            hook_sim.inject_on(CUSTOMER_BOOKINGS, Fault::Status(503), 1000);
        } else {
            seen.store(hook_sim.bookings().len(), Ordering::SeqCst);
            hook_sim.clear_faults();
        }
    });
    let audit = Arc::new(MemoryAudit::new());
    let (booker_sim, booker_audit) = (sim.clone(), audit.clone());
    let make: MakeBooker = Box::new(move |store| {
        let client = Client::new(
            &booker_sim.base_url(),
            booker_sim.api_key(),
            Duration::from_millis(500),
        )
        .with_retry_policy(RetryPolicy {
            max_attempts: 2,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
        });
        let booker: Arc<dyn Booker> = Arc::new(MagicLineBooker::new(
            client,
            store,
            booker_audit,
            BookerConfig {
                attempts: 2,
                backoff_base: Duration::from_millis(1),
                backoff_max: Duration::from_millis(5),
                clock: Arc::new(monday_ten),
                ..BookerConfig::default()
            },
        ));
        booker
    });
    let f = fixture_with(Some(model.clone()), Some(make), quick(3)).await;
    // Written on Monday morning, answered today: "morgen" is Tuesday, 20 January.
    f.deliver_written(
        PHONE,
        "wamid.ask",
        Content::Text("Hi, Lena Schmidt, lena@example.de – geht morgen 18 Uhr?".into()),
        monday_ten().as_second(),
    );
    idle(&f).await;

    assert_eq!(model.prompts().len(), 2, "one failed try, one retry");
    assert_eq!(
        booked_before_retry.load(Ordering::SeqCst),
        1,
        "the failed try had booked"
    );
    let bookings = sim.bookings();
    assert_eq!(bookings.len(), 1, "booked once");
    assert_eq!(sim.request_count(TRIAL_BOOK), 1, "one book call");
    let start = bookings[0]
        .start
        .with_time_zone(crate::conversation::when::berlin_tz());
    assert_eq!(start.date(), jiff::civil::date(2026, 1, 20));
    assert_eq!((start.hour(), start.minute()), (18, 0));
    // Both tries were the same request.
    let events = audit.events();
    let ids: std::collections::BTreeSet<&str> =
        events.iter().map(|e| e.request_id.as_str()).collect();
    assert_eq!(ids.len(), 1, "{events:?}");
    let p = f.store.pseudonym(PHONE);
    assert_eq!(
        f.store.customer(&p).unwrap().unwrap().meta.stage,
        Stage::TrialBooked
    );
    let h = history(&f);
    assert_eq!(h.len(), 2, "the message and one reply");
    assert!(h[1].text.contains("20.01."), "{}", h[1].text);
    assert_eq!(counter(&f.metrics.turn_failures.retries, "booking"), 1);
}
