//! The conversation engine: decides what one burst of a contact's messages leads to — the
//! reply, the updated customer record, booking calls, staff alerts, audit entries and funnel
//! counters — and returns it as [`Effects`]; it writes nothing itself.
//!
//! [`Engine::decide_at`] runs blocking (model and booking calls) and in this order:
//! 1. An address that is neither a phone number nor a WhatsApp user id is dropped: no record,
//!    no reply, an audit entry (`message.dropped`). Bursts of only reactions or WhatsApp system
//!    notices are never answered; a notice of a new number or user id (`user_changed_number`,
//!    `user_changed_user_id`) becomes an [`Effects::moves`] entry, which the commit carries out.
//! 2. Load the customer (or start a new one). Every text and non-text part goes into the
//!    history with WhatsApp's timestamp; non-text parts as `[voice]`, `[image]` …, a caption as
//!    `[image] caption`, an edit as `[edited] new text`. A revoke (the contact deleted a message
//!    for everyone) replaces the deleted row's text with [`REVOKED_TEXT`]; a message deleted in
//!    its own burst is neither read nor stored. Bursts of only edits and revokes are recorded and
//!    never answered. The WhatsApp `@username` and the click-to-WhatsApp ad the contact came
//!    from are kept in the sealed body; a contact's first message from an ad counts for that ad.
//! 3. Opt-out keywords are checked before anything else, deterministically ([`is_opt_out`]).
//!    An opted-out contact gets [`StudioConfig::opt_out_reply`] once; a further opt-out message
//!    is recorded in silence; any later text that is *not* an opt-out means the contact wrote
//!    again on their own and reactivates the bot (GDPR and WhatsApp policy allow answering
//!    someone who writes to us).
//! 4. Paused and handed-over (escalated) contacts get no reply; their messages are still recorded
//!    so staff see them. An opt-out from them is recorded only: staff are in charge there. A
//!    burst without text (voice note, picture …) gets [`StudioConfig::non_text_reply`]; one with
//!    text too gets the answer and then that reply, so the voice note is not silently lost. A contact
//!    who reached `conversation.max_replies_per_hour` is recorded but not answered (an opt-out
//!    is still confirmed). A burst that only opens the chat (`request_welcome`) gets
//!    [`StudioConfig::welcome_reply`].
//! 5. If free alternatives were offered after a taken slot and the message picks one ("der
//!    zweite", "Mittwoch um 18 Uhr"), that one is booked without asking the model.
//!    A short yes ("Ja, passt") quoting one of our messages that names exactly one offered slot
//!    books that slot.
//! 6. Otherwise the model gets the persona prompt and the last `history_messages` messages (a
//!    caption as `[image] caption`; a quoted message, found in the history by its WhatsApp id,
//!    as a system note right before the new messages, never as the contact's words) and
//!    returns reply, profile facts, intent and wished date. Profile facts are merged
//!    ([`super::reply::merge_profile`]); the stage advances (first name → "Name bekannt").
//! 7. The intent decides: hand-over (complaint, cancellation, contract question → escalated,
//!    staff alert, [`StudioConfig::handover_text`]), opt-out, or the wish: a concrete start
//!    named in this turn (the model's wished date, or the contact's words when the model read a
//!    booking wish) is kept on the profile (`wunschtermin`; a new one replaces it, one in the
//!    past is neither kept nor booked), and the kept wish is booked as soon as first name, last
//!    name and e-mail are known too, whichever came last. A wish that did not book is tried
//!    again only with other data (a corrected e-mail) or, for a taken slot, when the contact's
//!    words name it again; refused contact data raises a staff alert. A lead whose e-mail or
//!    name becomes known is looked up among the studio's members (same number on record); a
//!    recognised member's wish is booked, moved or cancelled through the member flow, never a
//!    trial. The booking's outcome replaces the model's reply with a fixed text from
//!    `replies.toml`.
//! 8. The first reply to a contact always carries the AI disclosure (EU AI Act Art. 50), whatever
//!    produced it (model, fixed text, non-text reply): if the reply does not say so, the
//!    configured sentence is put in front of it.
//! 9. Funnel counters (new contact, name known, trial booked, hand-over, opt-out) and audit
//!    entries (alerts, opt-out) are derived from what changed.
//!
//! The contact's words are read against when they were written, not when they are answered (a
//! retried or late turn): the prompt's date and time, the wished date the model names and the
//! dates in the messages (each message against its own timestamp). The time of the turn itself
//! (reply rows, the hourly limit) is the answer's.
//!
//! MagicLine being unavailable fails the turn like a model error ([`EngineError`]); the channel
//! tries it again and, after its last try, calls [`Engine::give_up_at`], which records the burst
//! and hands the contact to staff without the model or the booker.
//!
//! The booking happens before the commit; the booker is idempotent per request id, which names
//! the message that asked, so a crash or failure between booking and commit only repeats an
//! already-recorded booking. The engine never sends
//! anything: [`Effects::replies`] is what the channel sends once the turn is committed.

use std::sync::Arc;

use jiff::{Timestamp, Zoned};

use super::booking::{
    Booker, BookingFailure, BookingOutcome, BookingRequest, CancelOutcome, ConfirmOutcome,
    ContactData, MemberLookup,
};
use super::prompts::Prompts;
use super::reply::{self, Intent, ModelReply};
use super::when::{self, berlin_tz, When};
use crate::audit::{Actor, AuditEvent, Code, NewEntry};
use crate::config::{ConversationConfig, StudioConfig};
use crate::llm::{ChatMessage, LanguageModel, LlmError, Role};
use crate::stats::{FunnelEvent, SourceEvent, SourceStep};
use crate::store::crypto::Pseudonym;
use crate::store::customers::{BotMode, Customer, Stage};
use crate::store::messages::Direction;
use crate::store::{Store, StoreError};
use crate::turn::{
    is_valid_address, AddressKind, AlertKind, Burst, Decide, Effects, FailureKind, IdentityChange,
    PartKind, Progress, RecordUpdate, StaffAlert, TurnOutcome, REVOKED_TEXT,
};

mod taps;

/// Offered alternatives older than this are no longer read as picks.
const OFFER_TTL_SECS: i64 = 24 * 3600;
/// Key in [`crate::store::customers::ConversationState::extra`]: when alternatives were offered
/// (unix seconds).
const OFFERED_AT: &str = "offered_at";
/// Key in [`crate::store::customers::ConversationState::extra`]: MagicLine's id of a booking that
/// awaits the contact's confirmation (their yes confirms it).
const AWAITING_CONFIRMATION: &str = "awaiting_confirmation";
/// Key in [`crate::store::customers::ConversationState::extra`]: the last booking attempt that
/// did not book (`start`, `data`: a keyed hash of the data it was made with, `outcome`). The
/// remembered wish is not tried again with the same data, except that a taken slot is checked
/// again when the contact names it again.
const LAST_ATTEMPT: &str = "last_booking_attempt";
/// Key in [`crate::store::customers::ConversationState::extra`]: a day the contact wished
/// without a time ("Dienstag"), until a time completes it.
const WISH_DAY: &str = "wish_day";
/// Key in [`crate::store::customers::ConversationState::extra`]: a member's appointment booked
/// here (`booking_id`, `start`), which they can move or cancel.
const MEMBER_APPOINTMENT: &str = "member_appointment";
/// Key in [`crate::store::customers::ConversationState::extra`]: MagicLine's id of the booking
/// the contact asked to move (a reminder's reschedule button); cancelled once a new one stands.
const RESCHEDULE_FROM: &str = "reschedule_from";
/// Contacts whose recent replies are remembered for the hourly limit.
const ANSWERED_CONTACTS: usize = 10_000;
/// Longest stored WhatsApp profile name.
const MAX_CONTACT_NAME_CHARS: usize = 100;
/// How far back in a contact's history a quoted message is looked for.
const QUOTE_LOOKBACK: usize = 200;
/// Longest quoted text given to the model.
const MAX_QUOTE_CHARS: usize = 1000;
/// The words that say yes by themselves; a yes needs one of them.
const YES_WORDS: &[&str] = &[
    "ja", "jo", "jep", "jup", "yes", "gerne", "gern", "passt", "ok", "okay", "genau", "perfekt",
];
/// Words a yes to a quoted offer may consist of ("Ja", "passt, den nehme ich"): with a quote
/// that names exactly one offered slot, that slot is booked.
const AFFIRMATIONS: &[&str] = &[
    "ja", "jo", "jep", "jup", "yes", "gerne", "gern", "passt", "perfekt", "super", "ok", "okay",
    "genau", "top", "klar", "den", "nehme", "ich", "bitte", "der", "das", "nehm", "buchen", "gut",
    "prima", "sehr",
];

/// Token accounting of the model call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GenerationStats {
    /// Tokens of the whole rendered prompt.
    pub prompt_tokens: u32,
    /// Prompt tokens evaluated for this call (the rest came from the cache).
    pub evaluated_prompt_tokens: u32,
    /// Tokens the model generated.
    pub generated_tokens: u32,
}

/// What one call of [`Engine::decide_at`] decided: the [`Effects`] to commit, and how the
/// engine got there (for tests and the log).
#[derive(Clone)]
pub struct Turn {
    /// What to commit; the turn derefs to it.
    pub effects: Effects,
    /// Funnel moves in this turn, in order (NewLead → NameKnown → TrialBooked may both happen).
    pub stage_changes: Vec<(Stage, Stage)>,
    /// Bot mode changes in this turn (hand-over, opt-out, reactivation).
    pub mode_changes: Vec<(BotMode, BotMode)>,
    /// The model's reading of the message, when the model was asked and answered usably.
    pub intent: Option<Intent>,
    /// The booker's answer, when this turn asked for a booking.
    pub booking: Option<BookingOutcome>,
    /// Token counts, when the model was asked.
    pub generated: Option<GenerationStats>,
    /// The newest message's time: when a booking request of this turn was asked.
    asked_at: Timestamp,
    /// The id of the newest message with the contact's words: a booking request of this turn is
    /// named after it.
    asked_by: Option<String>,
    /// A tap on a reminder's or follow-up's button: what, which booking, whether it was done.
    tapped: Option<(crate::turn::tap::TapAction, i64, bool)>,
}

impl Turn {
    fn new(effects: Effects) -> Turn {
        Turn {
            asked_at: effects.at,
            asked_by: None,
            effects,
            stage_changes: Vec::new(),
            mode_changes: Vec::new(),
            intent: None,
            booking: None,
            generated: None,
            tapped: None,
        }
    }
}

impl std::ops::Deref for Turn {
    type Target = Effects;
    fn deref(&self) -> &Effects {
        &self.effects
    }
}

impl std::ops::DerefMut for Turn {
    fn deref_mut(&mut self) -> &mut Effects {
        &mut self.effects
    }
}

impl std::fmt::Debug for Turn {
    // Reply texts are personal data: the effects print counts only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Turn")
            .field("effects", &self.effects)
            .field("stage_changes", &self.stage_changes)
            .field("mode_changes", &self.mode_changes)
            .field("intent", &self.intent)
            .field("booking", &self.booking.as_ref().map(outcome_kind))
            .field("generated", &self.generated)
            .finish()
    }
}

/// Why a message could not be handled. Nothing was committed; the caller may retry later.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Reading the customer's record or history failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The model failed or is overloaded.
    #[error("language model: {0}")]
    Model(#[from] LlmError),
    /// MagicLine could not be reached or answered with an error while booking: the turn is
    /// tried again, and the booking request (same id) resumes where it stopped.
    #[error("booking: MagicLine unavailable")]
    BookingUnavailable,
}

impl EngineError {
    /// The failure's kind for the retry metric ([`FailureKind`]).
    pub fn kind(&self) -> &'static str {
        match self {
            EngineError::Store(_) => "store",
            EngineError::Model(_) => "model",
            EngineError::BookingUnavailable => "booking",
        }
    }
}

/// What a reload replaces together.
struct Persona {
    prompts: Arc<Prompts>,
    studio: StudioConfig,
}

/// The conversation engine. Cheap to share behind an `Arc`; [`Engine::decide_at`] is blocking.
pub struct Engine {
    store: Arc<Store>,
    model: Arc<dyn LanguageModel>,
    /// Prompts and studio facts; replaced as a whole on reload (SIGHUP).
    persona: std::sync::RwLock<Arc<Persona>>,
    conv: ConversationConfig,
    booker: Option<Arc<dyn Booker>>,
    schema: serde_json::Value,
    /// When each recent contact was last answered (the hour's replies), for the per-contact
    /// limit; bounded, so a flood of new senders cannot grow it.
    answered: std::sync::Mutex<lru::LruCache<Pseudonym, std::collections::VecDeque<Timestamp>>>,
}

impl Engine {
    /// An engine over the given store, model and persona. Without a booker a booking wish is
    /// answered as not configured and staff are alerted.
    pub fn new(
        store: Arc<Store>,
        model: Arc<dyn LanguageModel>,
        prompts: Arc<Prompts>,
        studio: StudioConfig,
        conv: ConversationConfig,
        booker: Option<Arc<dyn Booker>>,
    ) -> Engine {
        Engine {
            store,
            model,
            persona: std::sync::RwLock::new(Arc::new(Persona { prompts, studio })),
            conv,
            booker,
            schema: reply::schema(),
            answered: std::sync::Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(ANSWERED_CONTACTS).expect("a non-zero constant"),
            )),
        }
    }

    /// Replaces prompts and studio facts (a reload); turns already running finish with the old
    /// ones.
    pub fn reload(&self, prompts: Arc<Prompts>, studio: StudioConfig) {
        *self.persona.write().expect("persona lock poisoned") =
            Arc::new(Persona { prompts, studio });
    }

    /// The prompts in use (replaced on reload): the reminder scheduler takes its follow-up
    /// texts from them.
    pub fn prompts(&self) -> Arc<Prompts> {
        self.persona().prompts.clone()
    }

    fn persona(&self) -> Arc<Persona> {
        self.persona.read().expect("persona lock poisoned").clone()
    }

    /// The store the engine writes to.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Decides one burst; see the module doc for the steps. `now` is the time of the turn (any
    /// time zone; dates are read in Europe/Berlin). Reads the store, calls the model and the
    /// booker, writes nothing: the caller commits the effects ([`crate::turn::commit`]).
    pub fn decide_at(&self, burst: &Burst, now: &Zoned) -> Result<Turn, EngineError> {
        self.decide_with(burst, now, &())
    }

    /// [`Engine::decide_at`], telling `progress` when a reply will follow, before the model is
    /// called.
    pub fn decide_with(
        &self,
        burst: &Burst,
        now: &Zoned,
        progress: &dyn Progress,
    ) -> Result<Turn, EngineError> {
        self.decide_turn(burst, now, progress, false)
    }

    /// Decides a burst whose turn failed on every attempt (`reason`: the last failure's
    /// [`FailureKind`]): everything is recorded as [`Engine::decide_at`] would, but where a
    /// reply was due the contact is handed to staff ([`AlertKind::TurnFailed`], the hand-over
    /// text, its audit entry) without calling the model or the booker.
    pub fn give_up_at(
        &self,
        burst: &Burst,
        reason: &'static str,
        now: &Zoned,
    ) -> Result<Turn, EngineError> {
        let p = self.store.pseudonym(&burst.address);
        tracing::warn!(customer = %p, reason, "turn failed on every attempt; handing the contact to staff");
        self.decide_turn(burst, now, &(), true)
    }

    /// [`Engine::decide_with`]; `given_up`: hand over instead of answering.
    fn decide_turn(
        &self,
        burst: &Burst,
        now: &Zoned,
        progress: &dyn Progress,
        given_up: bool,
    ) -> Result<Turn, EngineError> {
        let now = now.with_time_zone(berlin_tz());
        let ts = now.timestamp();
        let p = self.store.pseudonym(&burst.address);
        if is_valid_address(&burst.address).is_none() {
            return Ok(invalid_sender(p, burst, ts));
        }
        let revoked = burst.revoked();
        let pruned = without_revoked(burst, &revoked);
        let burst = pruned.as_ref().unwrap_or(burst);
        let (texts, inbound) = (burst.texts(), burst.history());
        if inbound.is_empty() && revoked.is_empty() {
            // Reactions and WhatsApp's system notices: nothing the contact wrote to us.
            let only_system = burst.parts.iter().all(|part| part.kind.is_notice());
            let outcome = if only_system {
                TurnOutcome::System
            } else {
                TurnOutcome::Ignored
            };
            let mut effects = Effects::nothing(p, &burst.address, ts, outcome);
            effects.moves = identity_changes(burst);
            if !effects.moves.is_empty() {
                effects.pseudonym = self.moving_customer(p, &effects.moves)?;
            }
            return Ok(Turn::new(effects));
        }

        let existing = self.store.customer(&p)?;
        if inbound.is_empty() && existing.is_none() {
            // Deletions of messages of someone we hold nothing about.
            return Ok(Turn::new(Effects::nothing(
                p,
                &burst.address,
                ts,
                TurnOutcome::Recorded,
            )));
        }
        let new_contact = existing.is_none();
        let mut c = existing.unwrap_or_else(|| Customer::new(p, &burst.address, ts));
        let mode_before = c.meta.mode;
        let disclosed_before = c.body.conversation.disclosed_ai;
        keep_names(&mut c, burst);
        let asks = Asks::of(burst, &texts);
        let mut effects = Effects::nothing(p, &burst.address, ts, asks.outcome());
        effects.new_contact = new_contact;
        // A message that names both the number and the user id ties them together.
        if let Some(user_id) = burst.user_id.as_deref() {
            if is_valid_address(&burst.address) == Some(AddressKind::Phone)
                && is_valid_address(user_id) == Some(AddressKind::UserId)
            {
                c.body.user_id = Some(user_id.to_string());
            }
        }
        let mut turn = Turn::new(effects);
        turn.asked_at = inbound.iter().map(|m| m.at).max().unwrap_or(ts);
        turn.asked_by = burst.newest_text().map(|part| part.id.clone());
        note_lead_source(&mut c, burst, &mut turn);
        let opt_out = texts.iter().any(|t| is_opt_out(t));
        match c.meta.mode {
            _ if asks == Asks::Nothing => {}
            BotMode::Paused | BotMode::Escalated => {}
            // Someone who opted out is answered again only when they write text on their own.
            BotMode::OptedOut if opt_out || texts.is_empty() => {}
            BotMode::Active if opt_out => self.opt_out(&mut c, &mut turn),
            // Every attempt failed: a person answers what the contact wrote.
            BotMode::OptedOut | BotMode::Active if given_up => {
                self.hand_over(&mut c, AlertKind::TurnFailed, &mut turn)
            }
            BotMode::OptedOut | BotMode::Active if !self.take_reply(p, ts) => {
                tracing::warn!(customer = %p, limit = self.conv.max_replies_per_hour, "hourly reply limit reached; message recorded, not answered");
                turn.effects.outcome = TurnOutcome::RateLimited;
            }
            BotMode::OptedOut | BotMode::Active => {
                progress.replying();
                if c.meta.mode == BotMode::OptedOut {
                    set_mode(&mut c, &mut turn, BotMode::Active);
                }
                // Nothing is answered when it fails: the try does not count against the limit.
                self.answer(asks, &mut c, burst, &texts, &now, &mut turn)
                    .inspect_err(|_| self.return_reply(p, ts))?;
            }
        }
        self.ensure_disclosure(&mut c, &mut turn);
        if let Some(event) = booked_by_source(&c, &turn) {
            turn.effects.sources.push(event);
        }
        turn.effects.funnel = funnel_events(&turn);
        turn.effects.audit = audit_entries(&turn);
        turn.effects.record = Some(RecordUpdate {
            customer: c,
            mode_before,
            disclosed_before,
            inbound,
            revoked,
        });
        tracing::info!(
            customer = %p,
            replies = turn.replies.len(),
            intent = turn.intent.map(Intent::as_str),
            stage_changes = turn.stage_changes.len(),
            booking = turn.booking.as_ref().map(outcome_kind),
            alerts = turn.alerts.len(),
            "conversation turn"
        );
        Ok(turn)
    }

    /// The reply to an active contact: a conversation turn, the non-text reply or the greeting.
    fn answer(
        &self,
        asks: Asks,
        c: &mut Customer,
        burst: &Burst,
        texts: &[&str],
        now: &Zoned,
        turn: &mut Turn,
    ) -> Result<(), EngineError> {
        let studio = &self.persona().studio;
        match asks {
            // A reminder's or follow-up's button: decided without the model.
            Asks::Conversation if burst.tapped().is_some() => {
                if let Some(tapped) = burst.tapped() {
                    self.tap(c, tapped, now, turn)?;
                }
            }
            Asks::Conversation => {
                self.converse(c, burst, texts, now, turn)?;
                // A voice note or picture sent along with text would otherwise go unanswered
                // without the contact knowing; a hand-over already promises a person.
                let unread = burst
                    .parts
                    .iter()
                    .any(|part| matches!(part.kind, PartKind::NonText(_)));
                if unread && c.meta.mode == BotMode::Active {
                    turn.replies.push(studio.non_text_reply.clone());
                }
            }
            Asks::NonTextReply => turn.replies.push(studio.non_text_reply.clone()),
            Asks::Greeting | Asks::Nothing => turn.replies.push(studio.welcome_reply.clone()),
        }
        Ok(())
    }

    /// The customer an identity notice is about: the sender's address, or — when it names no
    /// customer — the previous user id the notice names.
    fn moving_customer(
        &self,
        p: Pseudonym,
        changes: &[IdentityChange],
    ) -> Result<Pseudonym, EngineError> {
        if self.store.customer_meta(&p)?.is_some() {
            return Ok(p);
        }
        for change in changes {
            if let IdentityChange::UserId {
                previous: Some(previous),
                ..
            } = change
            {
                let q = self.store.pseudonym(previous);
                if self.store.customer_meta(&q)?.is_some() {
                    return Ok(q);
                }
            }
        }
        Ok(p)
    }

    /// Whether `p` may get a reply at `now` under the hourly limit; counts it if so.
    fn take_reply(&self, p: Pseudonym, now: Timestamp) -> bool {
        let hour_ago = now - jiff::SignedDuration::from_hours(1);
        let mut answered = self.answered.lock().expect("reply limit lock poisoned");
        let times = answered.get_or_insert_mut(p, std::collections::VecDeque::new);
        while times.front().is_some_and(|t| *t <= hour_ago) {
            times.pop_front();
        }
        if times.len() >= self.conv.max_replies_per_hour as usize {
            return false;
        }
        times.push_back(now);
        true
    }

    /// Gives back a reply counted by [`Engine::take_reply`] at `at` that was not sent.
    fn return_reply(&self, p: Pseudonym, at: Timestamp) {
        let mut answered = self.answered.lock().expect("reply limit lock poisoned");
        if let Some(times) = answered.get_mut(&p) {
            if let Some(i) = times.iter().rposition(|t| *t == at) {
                times.remove(i);
            }
        }
    }

    /// The message the burst's newest quoting text part quotes, from the contact's history:
    /// one of our replies or their own earlier message. `None` when nothing is quoted or the
    /// quoted message is not (or no longer) in the recent history.
    fn quote(&self, c: &Customer, burst: &Burst) -> Result<Option<Quote>, EngineError> {
        let Some(wamid) = burst.parts.iter().rev().find_map(|part| match part.kind {
            PartKind::Text(_) | PartKind::Captioned { .. } => part.quoted.as_deref(),
            _ => None,
        }) else {
            return Ok(None);
        };
        let found = self
            .store
            .find_message(&c.pseudonym, wamid, QUOTE_LOOKBACK)?
            .filter(|m| m.text != REVOKED_TEXT);
        Ok(found.map(|m| Quote {
            ours: m.direction.is_ours(),
            text: cap_chars(&m.text, MAX_QUOTE_CHARS),
        }))
    }

    /// Steps 5–7 of the module doc for an active contact who wrote text (`texts`: the
    /// contact's words in `burst`).
    fn converse(
        &self,
        c: &mut Customer,
        burst: &Burst,
        texts: &[&str],
        now: &Zoned,
        turn: &mut Turn,
    ) -> Result<(), EngineError> {
        let input = ModelInput {
            model_texts: burst.model_texts(),
            quote: self.quote(c, burst)?,
        };
        let joined = texts.join("\n");
        // The contact's words are read against when they wrote them, not when they are
        // answered (a retried or late turn): "morgen" is the day after they wrote it.
        let written = written_at(burst, now);
        expire_offers(c, written.timestamp());
        let quoted_offer = input
            .quote
            .as_ref()
            .filter(|q| q.ours && is_affirmation(&joined))
            .map(|q| q.text.as_str());
        if let Some(slot) = self.picked_offer(c, burst, &joined, quoted_offer, now) {
            return self.book(c, slot, now, turn);
        }
        if is_affirmation(&joined) && self.confirm_booking(c, now, turn) {
            return Ok(());
        }

        let history = self.history(c, &input)?;
        let prompt = self.persona().prompts.render(c, &written, history);
        let generation = match self.model.generate(&prompt, &self.schema) {
            Ok(g) => g,
            Err(e @ (LlmError::PromptTooLong { .. } | LlmError::Schema(_))) => {
                // Deterministic for this prompt: retrying would fail the same way.
                tracing::warn!(customer = %c.pseudonym, error = error_kind(&e), "model failed; sent the fallback reply");
                turn.replies
                    .push(self.persona().prompts.replies().model_error());
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        turn.generated = Some(GenerationStats {
            prompt_tokens: generation.prompt_tokens,
            evaluated_prompt_tokens: generation.evaluated_prompt_tokens,
            generated_tokens: generation.generated_tokens,
        });
        let answer = match reply::parse(&generation.text) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(customer = %c.pseudonym, error = %e, "model output unusable; sent the fallback reply");
                turn.replies
                    .push(self.persona().prompts.replies().model_error());
                return Ok(());
            }
        };
        turn.intent = Some(answer.intent);
        let changed = reply::merge_profile(&mut c.body.profile, &answer.profil);
        if !changed.is_empty() {
            tracing::debug!(customer = %c.pseudonym, fields = ?changed, "profile updated");
        }
        self.recognise_member(c, &changed);
        if c.body.profile.mitglied.as_deref() == Some("ja") {
            set_stage(c, turn, Stage::Member);
        } else if c.meta.stage == Stage::NewLead && c.body.profile.vorname.is_some() {
            set_stage(c, turn, Stage::NameKnown);
        }

        match answer.intent {
            Intent::OptOut => self.opt_out(c, turn),
            Intent::Complaint => self.hand_over(c, AlertKind::Complaint, turn),
            Intent::CancelAppointment if c.meta.stage == Stage::Member => {
                self.cancel_member_appointment(c, turn);
            }
            Intent::CancelAppointment => self.hand_over(c, AlertKind::Cancellation, turn),
            Intent::ContractQuestion => self.hand_over(c, AlertKind::ContractQuestion, turn),
            Intent::HealthQuestion => self.hand_over(c, AlertKind::HealthQuestion, turn),
            Intent::WantsPerson => self.hand_over(c, AlertKind::PersonRequested, turn),
            // Members are never booked into a trial; a member MagicLine does not know to us
            // (they said so, but were not recognised) is booked by staff.
            Intent::BookTrial | Intent::Reschedule
                if c.meta.stage == Stage::Member
                    && c.body.profile.magicline_customer_id.is_none() =>
            {
                self.hand_over(c, AlertKind::MemberAppointment, turn);
            }
            Intent::BookTrial | Intent::Reschedule | Intent::None | Intent::Question => {
                self.pursue_wish(c, answer, burst, now, turn)?;
            }
        }
        Ok(())
    }

    /// Keeps the wish this turn names on the profile (a new one replaces the old; one in the
    /// past is neither kept nor booked) and books the remembered wish as soon as everything
    /// the booking needs is known, whichever came last. A wish that did not book is tried again
    /// only when the data it was tried with changed, or, for a taken slot, when the contact
    /// names it again; so a failure is reported (and alerted) once, not on every message.
    fn pursue_wish(
        &self,
        c: &mut Customer,
        answer: ModelReply,
        burst: &Burst,
        now: &Zoned,
        turn: &mut Turn,
    ) -> Result<(), EngineError> {
        let booking_intent = matches!(answer.intent, Intent::BookTrial | Intent::Reschedule);
        let named = named_wish(c, &answer, burst, now, booking_intent);
        // Past is judged from when the contact wrote, like the words themselves; the booker
        // judges the slot against its own clock.
        let written = written_at(burst, now).timestamp();
        // A booked trial's date said again is no new wish.
        let named = named.filter(|n| {
            c.meta.stage != Stage::TrialBooked
                || booking_intent
                || c.body.profile.probetraining_datum != Some(n.to_string())
        });
        if let Some(start) = &named {
            if start.timestamp() <= written {
                if booking_intent {
                    let persona = self.persona();
                    turn.replies.push(
                        persona
                            .prompts
                            .replies()
                            .failure(&BookingFailure::PastStart, start),
                    );
                } else {
                    turn.replies.push(answer.reply);
                }
                return Ok(());
            }
            c.body.profile.wunschtermin = Some(start.to_string());
        } else if let Some(words) = answer.wunschtermin.as_deref() {
            // A vaguer new wish ("irgendwann nächste Woche") replaces a concrete one, unless it
            // only repeats part of it ("Dienstag").
            if !repeats_kept_wish(c, when::parse(words, &written_at(burst, now))) {
                c.body.profile.wunschtermin = None;
            }
        }
        let Some(wish) = remembered_wish(c, written) else {
            turn.replies.push(answer.reply);
            return Ok(());
        };
        let fire = match c.meta.stage {
            // A recognised member books through the member flow when they ask to; names and
            // e-mail are not needed, MagicLine knows them.
            Stage::Member => {
                c.body.profile.magicline_customer_id.is_some()
                    && booking_intent
                    && (named.is_some() || self.worth_an_attempt(c, &wish, burst, now))
            }
            // Moving a booked trial is asked for, never inferred from the profile.
            Stage::TrialBooked => has_booking_data(c) && booking_intent && named.is_some(),
            Stage::NewLead | Stage::NameKnown => {
                has_booking_data(c) && self.worth_an_attempt(c, &wish, burst, now)
            }
        };
        let moving = (c.meta.stage == Stage::Member && answer.intent == Intent::Reschedule)
            .then(|| member_appointment(c).map(|(id, _)| id))
            .flatten();
        if fire {
            self.book_or_move(c, wish, moving, now, turn)
        } else {
            turn.replies.push(answer.reply);
            Ok(())
        }
    }

    /// Whether the remembered wish should go to the booker: never tried, tried with other data
    /// (a corrected e-mail, name or number), or a taken slot the contact's words name again
    /// (it may have been freed).
    fn worth_an_attempt(&self, c: &Customer, wish: &Zoned, burst: &Burst, now: &Zoned) -> bool {
        let Some(last) = c.body.conversation.extra.get(LAST_ATTEMPT) else {
            return true;
        };
        let field = |k: &str| last.get(k).and_then(|v| v.as_str()).unwrap_or_default();
        if field("start") != wish.to_string() || field("data") != self.booking_data_hash(c) {
            return true;
        }
        field("outcome") == "slot_taken"
            && wish_in_words(burst, now)
                .and_then(|(w, at)| w.start(&at))
                .is_some_and(|asked| asked.timestamp() == wish.timestamp())
    }

    /// A keyed hash of the data a booking request is made with (names, e-mail, number): tells
    /// whether it changed since an attempt failed, without keeping a second copy of it.
    fn booking_data_hash(&self, c: &Customer) -> String {
        let p = &c.body.profile;
        let data = [
            p.vorname.as_deref().unwrap_or_default(),
            p.nachname.as_deref().unwrap_or_default(),
            p.email.as_deref().unwrap_or_default(),
            c.body.phone.as_str(),
        ]
        .join("\u{1f}");
        hex::encode(self.store.token_hash("booking-data", &data))
    }

    /// The last `history_messages` messages including the new ones, oldest first. A quoted
    /// message comes right before the new ones as a note, not as the contact's words.
    fn history(&self, c: &Customer, input: &ModelInput) -> Result<Vec<ChatMessage>, EngineError> {
        let texts = &input.model_texts;
        let n = self.conv.history_messages.max(1);
        let stored = n.saturating_sub(texts.len());
        let mut out: Vec<ChatMessage> = if stored == 0 {
            Vec::new()
        } else {
            self.store
                .recent_messages(&c.pseudonym, stored)?
                .into_iter()
                .map(|m| ChatMessage {
                    role: match m.direction {
                        Direction::Inbound => Role::User,
                        // The studio's staff speak for the studio, as the assistant does.
                        Direction::Outbound | Direction::Staff => Role::Assistant,
                    },
                    content: m.text,
                })
                .collect()
        };
        let excess = (out.len() + texts.len()).saturating_sub(n);
        out.drain(..excess.min(out.len()));
        if let Some(quote) = &input.quote {
            let who = if quote.ours {
                "Der Kunde antwortet auf diese Nachricht von dir"
            } else {
                "Der Kunde bezieht sich auf seine eigene frühere Nachricht"
            };
            out.push(ChatMessage {
                role: Role::System,
                content: format!("{who}: «{}»", quote.text),
            });
        }
        out.extend(texts.iter().map(|t| ChatMessage {
            role: Role::User,
            content: t.clone(),
        }));
        Ok(out)
    }

    /// The offered alternative the message picks, if any (and the booking data is complete).
    /// `quoted_offer`: the text of our message the contact said yes to by quoting it; it picks
    /// a slot when it names exactly one of the offered ones.
    fn picked_offer(
        &self,
        c: &Customer,
        burst: &Burst,
        text: &str,
        quoted_offer: Option<&str>,
        now: &Zoned,
    ) -> Option<Zoned> {
        let offered: Vec<Zoned> = c
            .body
            .conversation
            .offered_slots
            .iter()
            .filter_map(|s| s.parse::<Zoned>().ok())
            .collect();
        if offered.is_empty() || !has_booking_data(c) {
            return None;
        }
        if let Some(quoted) = quoted_offer {
            let named: Vec<&Zoned> = offered
                .iter()
                .filter(|slot| quoted.contains(&super::prompts::describe_start(slot)))
                .collect();
            if let [one] = named.as_slice() {
                return Some((*one).clone());
            }
        }
        if let Some(i) = when::choice(text, offered.len()) {
            return offered.get(i).cloned();
        }
        let (wish, _) = wish_in_words(burst, now)?;
        if wish.date.is_none() && wish.time.is_none() {
            return None;
        }
        let hits: Vec<&Zoned> = offered
            .iter()
            .filter(|slot| {
                let s = slot.with_time_zone(berlin_tz());
                wish.date.is_none_or(|d| d == s.date())
                    && wish
                        .time
                        .is_none_or(|t| t.hour() == s.hour() && t.minute() == s.minute())
            })
            .collect();
        match hits.as_slice() {
            [one] => Some((*one).clone()),
            _ => None,
        }
    }

    /// Calls the booker for `start` and turns the outcome into the reply. MagicLine being
    /// unavailable fails the turn, so it is tried again under the same request id.
    fn book(
        &self,
        c: &mut Customer,
        start: Zoned,
        now: &Zoned,
        turn: &mut Turn,
    ) -> Result<(), EngineError> {
        self.book_or_move(c, start, None, now, turn)
    }

    /// [`Engine::book`]; with `moving`, the booking of that id is moved to `start` instead (a
    /// member's appointment).
    fn book_or_move(
        &self,
        c: &mut Customer,
        start: Zoned,
        moving: Option<i64>,
        now: &Zoned,
        turn: &mut Turn,
    ) -> Result<(), EngineError> {
        let profile = &c.body.profile;
        let asked_by = turn
            .asked_by
            .clone()
            .unwrap_or_else(|| start.timestamp().to_string());
        let req = BookingRequest {
            requested_at: turn.asked_at,
            request_id: self.request_id(&c.pseudonym, &asked_by),
            pseudonym: c.pseudonym,
            firstname: profile.vorname.clone().unwrap_or_default(),
            lastname: profile.nachname.clone().unwrap_or_default(),
            email: profile.email.clone().unwrap_or_default(),
            phone: (!c.body.phone.is_empty()).then(|| c.body.phone.clone()),
            magicline_customer_id: profile.magicline_customer_id,
            start: start.clone(),
        };
        let outcome = match (&self.booker, moving) {
            // A member's appointment moved.
            (Some(b), Some(old)) => b.move_booking(&req, old),
            // A trial, or one moved with a reminder's button.
            _ => self.call_booker(c, &req),
        };
        tracing::info!(customer = %c.pseudonym, request = %req.request_id, outcome = outcome_kind(&outcome), "trial booking");
        if outcome == BookingOutcome::Failed(BookingFailure::Unavailable) {
            return Err(EngineError::BookingUnavailable);
        }
        self.note_attempt(c, &start, &outcome);
        let persona = self.persona();
        let replies = persona.prompts.replies();
        match &outcome {
            BookingOutcome::Booked {
                booking_id,
                start: booked,
                magicline_customer_id,
                confirmation_pending,
            } => {
                c.body.profile.magicline_customer_id = Some(*magicline_customer_id);
                c.meta.ever_booked = true;
                if c.meta.stage == Stage::Member {
                    let appointment = serde_json::json!({
                        "booking_id": booking_id,
                        "start": booked.to_string(),
                    });
                    c.body
                        .conversation
                        .extra
                        .insert(MEMBER_APPOINTMENT.to_string(), appointment);
                    turn.replies
                        .push(replies.member_booked(&req.firstname, booked));
                } else {
                    self.trial_booked(c, booked, *booking_id, *confirmation_pending, turn);
                    turn.replies.push(replies.booked(
                        &req.firstname,
                        booked,
                        *confirmation_pending,
                    ));
                }
            }
            BookingOutcome::SlotTaken { alternatives } => {
                let offered: Vec<Zoned> = alternatives.iter().take(3).cloned().collect();
                if !offered.is_empty() {
                    let conv = &mut c.body.conversation;
                    conv.offered_slots = offered.iter().map(Zoned::to_string).collect();
                    conv.extra
                        .insert(OFFERED_AT.to_string(), now.timestamp().as_second().into());
                }
                turn.replies.push(replies.slot_taken(&start, &offered));
            }
            BookingOutcome::Failed(BookingFailure::OtherPersonsAccount) => {
                self.hand_over(c, AlertKind::BookingFailed, turn);
            }
            BookingOutcome::Failed(failure) => {
                let alert = match failure {
                    // The contact is asked to correct it; staff see it too, in case they cannot.
                    BookingFailure::InvalidCustomerData => Some(AlertKind::InvalidCustomerData),
                    BookingFailure::Unavailable
                    | BookingFailure::NotConfigured
                    | BookingFailure::LimitReached => Some(AlertKind::BookingFailed),
                    _ => None,
                };
                if let Some(kind) = alert {
                    turn.alerts.push(StaffAlert {
                        kind,
                        pseudonym: c.pseudonym,
                    });
                }
                turn.replies.push(replies.failure(failure, &start));
            }
        }
        turn.booking = Some(outcome);
        Ok(())
    }

    /// Keeps what an attempt for `start` came to: a booked wish is done; one that did not book
    /// stays the wish (an offered slot the contact picked, too), with the data it was tried
    /// with, so it is not tried again unchanged. Offers made before are answered either way.
    fn note_attempt(&self, c: &mut Customer, start: &Zoned, outcome: &BookingOutcome) {
        let data = self.booking_data_hash(c);
        let conv = &mut c.body.conversation;
        conv.offered_slots.clear();
        conv.extra.remove(OFFERED_AT);
        if matches!(outcome, BookingOutcome::Booked { .. }) {
            c.body.profile.wunschtermin = None;
            conv.extra.remove(LAST_ATTEMPT);
        } else {
            c.body.profile.wunschtermin = Some(start.to_string());
            let attempt = serde_json::json!({
                "start": start.to_string(),
                "data": data,
                "outcome": outcome_kind(outcome),
            });
            conv.extra.insert(LAST_ATTEMPT.to_string(), attempt);
        }
    }

    /// A booked trial: the profile, the stage, and a staff alert when it moved a booked one.
    fn trial_booked(
        &self,
        c: &mut Customer,
        booked: &Zoned,
        booking_id: i64,
        confirmation_pending: bool,
        turn: &mut Turn,
    ) {
        let previous = c
            .body
            .profile
            .probetraining_datum
            .replace(booked.to_string());
        // A move the contact asked for with a reminder's button: the new booking stands, so
        // the old one is cancelled now (staff only hear when that fails).
        let moved = self.cancel_moved_booking(c, booking_id);
        if c.meta.stage == Stage::TrialBooked
            && !moved
            && previous.is_some_and(|p| p != booked.to_string())
        {
            turn.alerts.push(StaffAlert {
                kind: AlertKind::Rescheduled,
                pseudonym: c.pseudonym,
            });
        }
        if confirmation_pending {
            c.body
                .conversation
                .extra
                .insert(AWAITING_CONFIRMATION.to_string(), booking_id.into());
        }
        if c.meta.stage != Stage::TrialBooked {
            if c.meta.stage == Stage::NewLead {
                set_stage(c, turn, Stage::NameKnown);
            }
            set_stage(c, turn, Stage::TrialBooked);
        }
    }

    /// Recognises a lead as a member once their e-mail or name is known (or changed), or once
    /// they say they are one: MagicLine has a member with that data and the number they write
    /// from. A member is never offered a trial; their appointments go through the member flow.
    fn recognise_member(&self, c: &mut Customer, changed: &[&'static str]) {
        let p = &c.body.profile;
        let unrecognised = match c.meta.stage {
            Stage::NewLead | Stage::NameKnown => true,
            Stage::Member => p.magicline_customer_id.is_none(),
            Stage::TrialBooked => false,
        };
        let asks = unrecognised
            && !c.body.phone.is_empty()
            && changed
                .iter()
                .any(|f| matches!(*f, "email" | "vorname" | "nachname" | "mitglied"))
            && (p.email.is_some() || (p.vorname.is_some() && p.nachname.is_some()));
        let Some(booker) = self.booker.as_ref().filter(|_| asks) else {
            return;
        };
        let contact = ContactData {
            pseudonym: c.pseudonym,
            firstname: p.vorname.clone(),
            lastname: p.nachname.clone(),
            email: p.email.clone(),
            phone: c.body.phone.clone(),
        };
        if let MemberLookup::Member {
            magicline_customer_id,
        } = booker.find_member(&contact)
        {
            c.body.profile.mitglied = Some("ja".into());
            c.body.profile.magicline_customer_id = Some(magicline_customer_id);
        }
    }

    /// A member cancels their appointment booked here: cancelled in MagicLine and confirmed;
    /// one not booked here (or MagicLine unreachable) is handed to staff.
    fn cancel_member_appointment(&self, c: &mut Customer, turn: &mut Turn) {
        let Some((booking_id, start)) = member_appointment(c) else {
            return self.hand_over(c, AlertKind::Cancellation, turn);
        };
        let outcome = self
            .booker
            .as_ref()
            .map_or(CancelOutcome::Unavailable, |b| {
                b.cancel_booking(&c.pseudonym, booking_id)
            });
        tracing::info!(customer = %c.pseudonym, booking_id, outcome = ?outcome, "member appointment cancellation");
        match outcome {
            // Not found: staff cancelled it already.
            CancelOutcome::Canceled | CancelOutcome::NotFound => {
                c.body.conversation.extra.remove(MEMBER_APPOINTMENT);
                let persona = self.persona();
                turn.replies
                    .push(persona.prompts.replies().member_canceled(&start));
            }
            CancelOutcome::Past | CancelOutcome::Unavailable => {
                self.hand_over(c, AlertKind::Cancellation, turn);
            }
        }
    }

    /// Books `req`; a move asked for with a reminder's button goes to the booker as one (MagicLine
    /// allows one trial per lead, so the old booking is given up once the new slot is free).
    fn call_booker(&self, c: &Customer, req: &BookingRequest) -> BookingOutcome {
        let moving = c
            .body
            .conversation
            .extra
            .get(RESCHEDULE_FROM)
            .and_then(|v| v.as_i64());
        match (&self.booker, moving) {
            (Some(b), Some(old)) => b.reschedule_trial(req, old),
            (Some(b), None) => b.book_trial(req),
            (None, _) => BookingOutcome::Failed(BookingFailure::NotConfigured),
        }
    }

    /// After a new booking: makes sure the booking the contact asked to move away from is
    /// cancelled (the booker's move did it already; this also covers a booker that only books).
    /// `true` when the old one is cancelled (or had passed already, a missed trial).
    fn cancel_moved_booking(&self, c: &mut Customer, new_booking_id: i64) -> bool {
        let Some(old) = c
            .body
            .conversation
            .extra
            .remove(RESCHEDULE_FROM)
            .and_then(|v| v.as_i64())
        else {
            return false;
        };
        if old == new_booking_id {
            return false;
        }
        let Some(booker) = &self.booker else {
            return false;
        };
        let outcome = booker.cancel_trial(&c.pseudonym, old);
        tracing::info!(customer = %c.pseudonym, booking_id = old, outcome = ?outcome, "moved trial: old booking");
        matches!(
            outcome,
            super::booking::CancelOutcome::Canceled | super::booking::CancelOutcome::Past
        )
    }

    /// The contact's yes to a booking that awaits their confirmation: confirms it in MagicLine
    /// and answers. `false` when no booking awaits confirmation (the yes means something else).
    fn confirm_booking(&self, c: &mut Customer, now: &Zoned, turn: &mut Turn) -> bool {
        let extra = &mut c.body.conversation.extra;
        let Some(booking_id) = extra.get(AWAITING_CONFIRMATION).and_then(|v| v.as_i64()) else {
            return false;
        };
        let Some(booker) = &self.booker else {
            return false;
        };
        let outcome = booker.confirm_trial(&c.pseudonym, booking_id);
        tracing::info!(customer = %c.pseudonym, booking_id, outcome = ?outcome, "trial confirmation");
        let persona = self.persona();
        let replies = persona.prompts.replies();
        let firstname = c.body.profile.vorname.clone().unwrap_or_default();
        match outcome {
            ConfirmOutcome::Confirmed { start } => {
                extra.remove(AWAITING_CONFIRMATION);
                turn.replies.push(replies.booked(&firstname, &start, false));
            }
            ConfirmOutcome::Expired => {
                extra.remove(AWAITING_CONFIRMATION);
                c.body.profile.probetraining_datum = None;
                turn.replies.push(replies.confirmation_expired());
            }
            ConfirmOutcome::NotFound => {
                extra.remove(AWAITING_CONFIRMATION);
                return false;
            }
            ConfirmOutcome::Unavailable => {
                turn.alerts.push(StaffAlert {
                    kind: AlertKind::BookingFailed,
                    pseudonym: c.pseudonym,
                });
                turn.replies
                    .push(replies.failure(&BookingFailure::Unavailable, now));
            }
        }
        true
    }

    /// The id of the booking request the customer's message `asked_by` (the newest with their
    /// words) makes. A retry of the same turn, after a failure or a restart, asks under the
    /// same id, so the booker resumes or replays it: never a second booking, never another
    /// slot. A later message (corrected data, a slot freed meanwhile) is a new attempt; the
    /// booker keeps one customer from holding two bookings of the same slot.
    fn request_id(&self, p: &Pseudonym, asked_by: &str) -> String {
        let token = format!("{}|{}", p.to_hex(), asked_by);
        format!(
            "trial-{}",
            hex::encode(self.store.token_hash("trial-request", &token))
        )
    }

    fn hand_over(&self, c: &mut Customer, kind: AlertKind, turn: &mut Turn) {
        set_mode(c, turn, BotMode::Escalated);
        turn.alerts.push(StaffAlert {
            kind,
            pseudonym: c.pseudonym,
        });
        turn.replies.clear();
        turn.replies
            .push(self.persona().studio.handover_text.clone());
    }

    fn opt_out(&self, c: &mut Customer, turn: &mut Turn) {
        set_mode(c, turn, BotMode::OptedOut);
        c.body.conversation.offered_slots.clear();
        c.body.conversation.extra.remove(OFFERED_AT);
        turn.replies.clear();
        turn.replies
            .push(self.persona().studio.opt_out_reply.clone());
    }

    /// Step 7 of the module doc. A reply in which the model claims to be human is replaced by
    /// the disclosure sentence, whenever it happens.
    fn ensure_disclosure(&self, c: &mut Customer, turn: &mut Turn) {
        for reply in &mut turn.replies {
            if denies_ai(reply) {
                tracing::warn!(customer = %c.pseudonym, "the model denied being an AI; reply replaced");
                *reply = self.persona().prompts.replies().disclosure();
            }
        }
        if c.body.conversation.disclosed_ai {
            return;
        }
        let Some(first) = turn.replies.first_mut() else {
            return;
        };
        if !mentions_ai(first) {
            *first = format!(
                "{}\n{}",
                self.persona().prompts.replies().disclosure(),
                first
            );
        }
        c.body.conversation.disclosed_ai = true;
    }
}

/// The new messages of a turn as the model gets them.
struct ModelInput {
    /// The contact's words as the model reads them (`[image] caption`).
    model_texts: Vec<String>,
    /// The message the contact quoted, when found.
    quote: Option<Quote>,
}

/// A message the contact quoted.
struct Quote {
    /// One of our replies (else the contact's own message).
    ours: bool,
    /// Its text.
    text: String,
}

/// What a burst asks of the assistant.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Asks {
    /// Text or a caption: a conversation turn.
    Conversation,
    /// Only a voice note, a picture without caption …: the non-text reply.
    NonTextReply,
    /// Only the first opening of the chat: the greeting.
    Greeting,
    /// Only edits and deletions: recorded, never answered.
    Nothing,
}

impl Asks {
    /// How a turn that asks this ends, unless the contact's mode or the limit says otherwise.
    fn outcome(self) -> TurnOutcome {
        match self {
            Asks::Conversation => TurnOutcome::Conversed,
            Asks::NonTextReply | Asks::Greeting => TurnOutcome::NonText,
            Asks::Nothing => TurnOutcome::Recorded,
        }
    }

    fn of(burst: &Burst, texts: &[&str]) -> Asks {
        let has = |f: fn(&PartKind) -> bool| burst.parts.iter().any(|part| f(&part.kind));
        if !texts.is_empty() {
            Asks::Conversation
        } else if has(|k| matches!(k, PartKind::NonText(_))) {
            Asks::NonTextReply
        } else if has(|k| *k == PartKind::Welcome) {
            Asks::Greeting
        } else {
            Asks::Nothing
        }
    }
}

/// `burst` without the messages it also deletes (a message deleted in the burst it came in is
/// neither read nor stored); `None` when it deletes none of its own.
fn without_revoked(burst: &Burst, revoked: &[String]) -> Option<Burst> {
    burst
        .parts
        .iter()
        .any(|part| revoked.contains(&part.id))
        .then(|| Burst {
            parts: burst
                .parts
                .iter()
                .filter(|part| !revoked.contains(&part.id))
                .cloned()
                .collect(),
            ..burst.clone()
        })
}

/// Keeps the WhatsApp profile name, `@username` and parent user id the burst carried.
fn keep_names(c: &mut Customer, burst: &Burst) {
    for (from, to) in [
        (&burst.contact_name, &mut c.body.contact_name),
        (&burst.username, &mut c.body.username),
        (&burst.parent_user_id, &mut c.body.parent_user_id),
    ] {
        if let Some(name) = from.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
            *to = Some(cap_chars(name, MAX_CONTACT_NAME_CHARS));
        }
    }
}

/// The ad's count of a trial booked in this turn by a contact who came through an ad.
fn booked_by_source(c: &Customer, turn: &Turn) -> Option<SourceEvent> {
    let source = c.body.lead_source.as_ref()?;
    turn.stage_changes
        .iter()
        .any(|(_, to)| *to == Stage::TrialBooked)
        .then(|| SourceEvent::new(source, SourceStep::TrialBooked))
}

/// Keeps the ad the contact came through; a contact's first message from an ad counts for it
/// (a second message from the same ad is no new lead).
fn note_lead_source(c: &mut Customer, burst: &Burst, turn: &mut Turn) {
    let Some(source) = &burst.referral else {
        return;
    };
    let known = c
        .body
        .lead_source
        .as_ref()
        .is_some_and(|old| SourceEvent::same_source(old, source));
    if !known {
        turn.effects
            .sources
            .push(SourceEvent::new(source, SourceStep::Contact));
    }
    c.body.lead_source = Some(source.clone());
}

/// Whether a message is only a yes ("Ja", "passt, den nehme ich"): one of [`YES_WORDS`], and
/// every word among [`AFFIRMATIONS`].
fn is_affirmation(text: &str) -> bool {
    let words = words(text);
    !words.is_empty()
        && words.len() <= 6
        && words.iter().any(|w| YES_WORDS.contains(&w.as_str()))
        && words.iter().all(|w| AFFIRMATIONS.contains(&w.as_str()))
}

impl Decide for Engine {
    fn decide(&self, burst: &Burst, progress: &dyn Progress) -> anyhow::Result<Effects> {
        let now = when::berlin_now();
        Ok(self
            .decide_with(burst, &now, progress)
            .map_err(with_kind)?
            .effects)
    }

    fn give_up(&self, burst: &Burst, reason: &'static str) -> anyhow::Result<Effects> {
        let now = when::berlin_now();
        Ok(self
            .give_up_at(burst, reason, &now)
            .map_err(with_kind)?
            .effects)
    }
}

/// The engine's error with its [`FailureKind`] as context, for the channel's retry metric.
fn with_kind(e: EngineError) -> anyhow::Error {
    let kind = FailureKind(e.kind());
    anyhow::Error::new(e).context(kind)
}

/// `at` in the studio's time zone, but never later than `now` (a sender's clock ahead of ours
/// reads as now).
fn written_zoned(at: Timestamp, now: &Zoned) -> Zoned {
    at.min(now.timestamp()).to_zoned(berlin_tz())
}

/// When the contact wrote their newest words in `burst` (else `now`): the "today" the model is
/// told and the wished date it names is read against.
fn written_at(burst: &Burst, now: &Zoned) -> Zoned {
    burst
        .newest_text()
        .map_or_else(|| now.clone(), |part| written_zoned(part.at, now))
}

/// The wish the contact's own words in `burst` name, with the time it is read against. Each
/// message is read against when it was written: all texts together (a day in one message, the
/// hour in the next) when they were written on the same day, else each on its own, the newest
/// that names one.
fn wish_in_words(burst: &Burst, now: &Zoned) -> Option<(When, Zoned)> {
    let written: Vec<(&str, Zoned)> = burst
        .texts_written()
        .into_iter()
        .map(|(text, at)| (text, written_zoned(at, now)))
        .collect();
    let (_, newest) = written.last()?;
    if written.iter().all(|(_, at)| at.date() == newest.date()) {
        let joined: Vec<&str> = written.iter().map(|(text, _)| *text).collect();
        return when::parse(&joined.join("\n"), newest).map(|w| (w, newest.clone()));
    }
    written
        .iter()
        .rev()
        .find_map(|(text, at)| when::parse(text, at).map(|w| (w, at.clone())))
}

/// The new identities WhatsApp announced in the burst, in order.
fn identity_changes(burst: &Burst) -> Vec<IdentityChange> {
    burst
        .parts
        .iter()
        .filter_map(|part| match &part.kind {
            PartKind::IdentityChanged(change) => Some(change.clone()),
            _ => None,
        })
        .collect()
}

/// A burst from an address that is neither a phone number nor a user id: dropped, audited, no
/// record and no reply.
fn invalid_sender(p: Pseudonym, burst: &Burst, ts: Timestamp) -> Turn {
    tracing::warn!(
        parts = burst.parts.len(),
        "message from an address that is neither a phone number nor a WhatsApp user id dropped"
    );
    let mut effects = Effects::nothing(p, &burst.address, ts, TurnOutcome::InvalidSender);
    effects.audit.push(NewEntry::new(
        Actor::System,
        AuditEvent::MessageDropped {
            reason: Code::new("invalid_sender"),
            messages: burst.parts.len() as u64,
        },
    ));
    Turn::new(effects)
}

/// The funnel counters a turn moves.
fn funnel_events(turn: &Turn) -> Vec<FunnelEvent> {
    let mut out = Vec::new();
    if turn.new_contact {
        out.push(FunnelEvent::NewContact);
    }
    for (_, to) in &turn.stage_changes {
        match to {
            Stage::NameKnown => out.push(FunnelEvent::NameKnown),
            Stage::TrialBooked => out.push(FunnelEvent::TrialBooked),
            Stage::NewLead | Stage::Member => {}
        }
    }
    for (_, to) in &turn.mode_changes {
        match to {
            BotMode::Escalated => out.push(FunnelEvent::Handover),
            BotMode::OptedOut => out.push(FunnelEvent::OptOut),
            BotMode::Active | BotMode::Paused => {}
        }
    }
    out
}

/// The audit entries of a turn: staff alerts (hand-overs, failed bookings, moved trials) and
/// opt-outs. Codes and pseudonyms only.
fn audit_entries(turn: &Turn) -> Vec<NewEntry> {
    let p = turn.pseudonym;
    let mut out: Vec<NewEntry> = turn
        .alerts
        .iter()
        .map(|alert| {
            NewEntry::new(
                Actor::customer(&p),
                AuditEvent::CustomerEscalate {
                    reason: Code::new(alert.kind.code()),
                },
            )
            .about(&p)
        })
        .collect();
    if turn
        .mode_changes
        .iter()
        .any(|(_, to)| *to == BotMode::OptedOut)
    {
        out.push(NewEntry::new(Actor::customer(&p), AuditEvent::CustomerOptOut).about(&p));
    }
    if let Some((action, booking_id, done)) = turn.tapped {
        let entry = NewEntry::new(
            Actor::customer(&p),
            AuditEvent::ReminderTapped {
                button: Code::new(action.code()),
                booking_id: u64::try_from(booking_id).unwrap_or_default(),
            },
        )
        .about(&p);
        out.push(if done {
            entry
        } else {
            entry.outcome(crate::audit::Outcome::error("not_done"))
        });
    }
    out
}

fn set_stage(c: &mut Customer, turn: &mut Turn, to: Stage) {
    if c.meta.stage != to {
        turn.stage_changes.push((c.meta.stage, to));
        c.meta.stage = to;
    }
}

fn set_mode(c: &mut Customer, turn: &mut Turn, to: BotMode) {
    if c.meta.mode != to {
        turn.mode_changes.push((c.meta.mode, to));
        c.meta.mode = to;
    }
}

fn has_booking_data(c: &Customer) -> bool {
    let p = &c.body.profile;
    p.vorname.is_some() && p.nachname.is_some() && p.email.is_some()
}

/// The concrete start this turn wishes: the model's wished date in words (read against when
/// the contact wrote, the "today" the model was told), else, when the model read a booking
/// wish, the contact's own words. A wish of only a time ("um 18 Uhr") is on the day wished
/// before (a kept wish's, or a day said alone earlier); one of only a day ("Dienstag") at the
/// kept wish's time; a day alone is remembered until a time comes.
fn named_wish(
    c: &mut Customer,
    answer: &ModelReply,
    burst: &Burst,
    now: &Zoned,
    booking_intent: bool,
) -> Option<Zoned> {
    let written = written_at(burst, now);
    let candidates = [
        answer
            .wunschtermin
            .as_deref()
            .and_then(|w| when::parse(w, &written))
            .map(|w| (w, written.clone())),
        booking_intent.then(|| wish_in_words(burst, now)).flatten(),
    ];
    let kept = c
        .body
        .profile
        .wunschtermin
        .as_deref()
        .and_then(|w| w.parse::<Zoned>().ok())
        .map(|k| k.with_time_zone(berlin_tz()))
        .filter(|k| k.date() >= written.date());
    let extra = &mut c.body.conversation.extra;
    let day_said = extra
        .get(WISH_DAY)
        .and_then(|v| v.as_str())
        .and_then(|d| d.parse::<jiff::civil::Date>().ok())
        .filter(|d| *d >= written.date());
    let mut day_only = None;
    for (mut wish, at) in candidates.into_iter().flatten() {
        let timed = wish.time.is_some() || wish.part_of_day.is_some();
        if wish.date.is_none() && timed {
            wish.date = kept.as_ref().map(Zoned::date).or(day_said);
        } else if wish.date.is_some() && !timed {
            wish.time = kept.as_ref().map(Zoned::time);
        }
        if let Some(start) = wish.start(&at) {
            extra.remove(WISH_DAY);
            return Some(start);
        }
        day_only = day_only.or(wish.date);
    }
    if let Some(day) = day_only {
        extra.insert(WISH_DAY.to_string(), day.to_string().into());
    }
    None
}

/// A member's appointment booked here: its MagicLine id and start.
fn member_appointment(c: &Customer) -> Option<(i64, Zoned)> {
    let a = c.body.conversation.extra.get(MEMBER_APPOINTMENT)?;
    let id = a.get("booking_id")?.as_i64()?;
    let start = a.get("start")?.as_str()?.parse::<Zoned>().ok()?;
    Some((id, start))
}

/// Whether a partial wish ("Dienstag", "18 Uhr") names nothing but what the kept wish says.
fn repeats_kept_wish(c: &Customer, partial: Option<When>) -> bool {
    let kept = c
        .body
        .profile
        .wunschtermin
        .as_deref()
        .and_then(|w| w.parse::<Zoned>().ok())
        .map(|k| k.with_time_zone(berlin_tz()));
    match (partial, kept) {
        (Some(p), Some(k)) => {
            (p.date.is_some() || p.time.is_some())
                && p.date.is_none_or(|d| d == k.date())
                && p.time.is_none_or(|t| t == k.time())
        }
        _ => false,
    }
}

/// The wish kept on the profile, if it is still ahead; one that has passed (or does not read)
/// is dropped.
fn remembered_wish(c: &mut Customer, now: Timestamp) -> Option<Zoned> {
    let profile = &mut c.body.profile;
    let wish = profile
        .wunschtermin
        .as_deref()
        .and_then(|w| w.parse::<Zoned>().ok())
        .filter(|w| w.timestamp() > now);
    if wish.is_none() {
        profile.wunschtermin = None;
    }
    wish
}

fn expire_offers(c: &mut Customer, now: Timestamp) {
    let conv = &mut c.body.conversation;
    if conv.offered_slots.is_empty() {
        return;
    }
    let offered_at = conv.extra.get(OFFERED_AT).and_then(|v| v.as_i64());
    if offered_at.is_none_or(|at| now.as_second() - at > OFFER_TTL_SECS) {
        conv.offered_slots.clear();
        conv.extra.remove(OFFERED_AT);
    }
}

fn outcome_kind(o: &BookingOutcome) -> &'static str {
    match o {
        BookingOutcome::Booked { .. } => "booked",
        BookingOutcome::SlotTaken { .. } => "slot_taken",
        BookingOutcome::Failed(_) => "failed",
    }
}

fn error_kind(e: &LlmError) -> &'static str {
    match e {
        LlmError::Load { .. } => "load",
        LlmError::PromptTooLong { .. } => "prompt_too_long",
        LlmError::Inference(_) => "inference",
        LlmError::Http(_) => "http",
        LlmError::Schema(_) => "schema",
        LlmError::Busy => "busy",
        LlmError::Stopped => "stopped",
    }
}

fn cap_chars(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// Lowercase words of `text` with umlauts folded and everything but letters and digits as
/// separators.
fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .replace('ä', "ae")
        .replace('ö', "oe")
        .replace('ü', "ue")
        .replace('ß', "ss")
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// Commands that are an opt-out on their own.
const OPT_OUT_COMMANDS: &[&str] = &[
    "stop",
    "stopp",
    "abmelden",
    "abmeldung",
    "abbestellen",
    "austragen",
    "unsubscribe",
    "optout",
];

/// Words that may surround an opt-out command without changing its meaning ("bitte abmelden",
/// "ich will mich hier abmelden"). Anything else ("vom Vertrag abmelden") is left to the model.
const OPT_OUT_FILLER: &[&str] = &[
    "bitte",
    "ich",
    "mich",
    "will",
    "moechte",
    "mochte",
    "wuerde",
    "gerne",
    "gern",
    "hier",
    "jetzt",
    "sofort",
    "danke",
    "von",
    "vom",
    "den",
    "dem",
    "diesem",
    "chat",
    "whatsapp",
    "newsletter",
    "nachrichten",
    "opt",
    "out",
    "hallo",
    "hi",
    "ok",
    "okay",
    "alles",
    "und",
];

/// Phrases that are an opt-out anywhere in a message.
const OPT_OUT_PHRASES: &[&[&str]] = &[
    &["keine", "nachrichten", "mehr"],
    &["keine", "whatsapp", "mehr"],
    &["keine", "whatsapps", "mehr"],
    &["keine", "werbung", "mehr"],
    &["nicht", "mehr", "schreiben"],
    &["nicht", "mehr", "anschreiben"],
    &["nicht", "mehr", "kontaktieren"],
    &["schreibt", "mir", "nicht", "mehr"],
    &["schreib", "mir", "nicht", "mehr"],
    &["schreiben", "sie", "mir", "nicht", "mehr"],
    &["lasst", "mich", "in", "ruhe"],
    &["lass", "mich", "in", "ruhe"],
    &["hoert", "auf", "mir", "zu", "schreiben"],
];

/// Whether a message asks to receive no more messages. Deterministic and deliberately narrow:
/// a command word alone or with filler words ("STOP", "Bitte abmelden"), or an unmistakable
/// phrase ("keine Nachrichten mehr"). "Kann ich mich vom Vertrag abmelden?" is not an opt-out;
/// the model reads it as a contract question.
pub fn is_opt_out(text: &str) -> bool {
    let w = words(text);
    if w.is_empty() {
        return false;
    }
    let has_command = w.iter().any(|x| OPT_OUT_COMMANDS.contains(&x.as_str()));
    if has_command
        && w.iter()
            .all(|x| OPT_OUT_COMMANDS.contains(&x.as_str()) || OPT_OUT_FILLER.contains(&x.as_str()))
    {
        return true;
    }
    OPT_OUT_PHRASES.iter().any(|phrase| {
        w.windows(phrase.len())
            .any(|win| win.iter().zip(phrase.iter()).all(|(a, b)| a == b))
    })
}

/// Whether a reply already tells the reader that an AI answers.
pub fn mentions_ai(text: &str) -> bool {
    if denies_ai(text) {
        return false;
    }
    let w = words(text);
    let has = |x: &str| w.iter().any(|y| y == x);
    has("ki")
        || has("bot")
        || has("chatbot")
        || w.iter()
            .any(|y| y.starts_with("ki") && y.ends_with("assistent"))
        || (w.iter().any(|y| y.starts_with("digital"))
            && w.iter().any(|y| y.starts_with("assistent")))
        || text.to_lowercase().contains("künstliche intelligenz")
}

/// First-person claims to be human ("ich bin kein Bot", "ich bin ein echter Mensch").
const DENIALS: &[&[&str]] = &[
    &["bin", "kein", "bot"],
    &["bin", "kein", "chatbot"],
    &["bin", "kein", "roboter"],
    &["bin", "keine", "ki"],
    &["bin", "keine", "maschine"],
    &["bin", "kein", "programm"],
    &["bin", "ein", "mensch"],
    &["bin", "ein", "echter", "mensch"],
    &["bin", "eine", "echte", "person"],
    &["bin", "echt", "kein", "bot"],
    &["bin", "wirklich", "ein", "mensch"],
];

/// Whether a reply claims that a human writes it.
pub fn denies_ai(text: &str) -> bool {
    let w = words(text);
    DENIALS.iter().any(|phrase| {
        w.windows(phrase.len())
            .any(|win| win.iter().zip(phrase.iter()).all(|(a, b)| a == b))
    })
}

#[cfg(test)]
mod wish_tests;

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use serde_json::{json, Value};

    use super::*;
    use crate::llm::{Generation, Prompt};
    use crate::store::crypto::StoreIdentity;
    use crate::store::messages::Message;
    use crate::turn::Part;

    const PHONE: &str = "+49 151 12345678";

    /// A model that answers from a script and remembers every prompt.
    #[derive(Default)]
    pub(super) struct ScriptedModel {
        answers: Mutex<VecDeque<Result<String, LlmError>>>,
        prompts: Mutex<Vec<Prompt>>,
        /// Runs inside `generate` (to change the store while the model "thinks").
        during: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    }

    impl ScriptedModel {
        pub(super) fn push(&self, answer: Value) {
            self.answers
                .lock()
                .unwrap()
                .push_back(Ok(answer.to_string()));
        }
        fn push_raw(&self, answer: Result<String, LlmError>) {
            self.answers.lock().unwrap().push_back(answer);
        }
        fn calls(&self) -> usize {
            self.prompts.lock().unwrap().len()
        }
        pub(super) fn last_prompt(&self) -> Prompt {
            self.prompts.lock().unwrap().last().cloned().unwrap()
        }
    }

    impl LanguageModel for ScriptedModel {
        fn generate(&self, prompt: &Prompt, schema: &Value) -> Result<Generation, LlmError> {
            assert_eq!(schema, &reply::schema());
            self.prompts.lock().unwrap().push(prompt.clone());
            if let Some(f) = self.during.lock().unwrap().take() {
                f();
            }
            let text = self
                .answers
                .lock()
                .unwrap()
                .pop_front()
                .expect("the model was called but no answer is scripted")?;
            Ok(Generation {
                text,
                prompt_tokens: 900,
                evaluated_prompt_tokens: 120,
                generated_tokens: 40,
            })
        }
        fn describe(&self) -> String {
            "scripted".into()
        }
    }

    /// A booker that answers from a script and remembers every request.
    #[derive(Default)]
    struct ScriptedBooker {
        outcomes: Mutex<VecDeque<BookingOutcome>>,
        requests: Mutex<Vec<BookingRequest>>,
        confirm_outcomes: Mutex<VecDeque<ConfirmOutcome>>,
        confirms: Mutex<Vec<(Pseudonym, i64)>>,
        /// The MagicLine id `find_member` answers with (else not a member), and its calls.
        member: Mutex<Option<i64>>,
        member_lookups: Mutex<usize>,
    }

    impl Booker for ScriptedBooker {
        fn book_trial(&self, req: &BookingRequest) -> BookingOutcome {
            self.requests.lock().unwrap().push(req.clone());
            self.outcomes
                .lock()
                .unwrap()
                .pop_front()
                .expect("the booker was called but no outcome is scripted")
        }

        fn find_member(&self, _contact: &ContactData) -> MemberLookup {
            *self.member_lookups.lock().unwrap() += 1;
            match *self.member.lock().unwrap() {
                Some(id) => MemberLookup::Member {
                    magicline_customer_id: id,
                },
                None => MemberLookup::NotMember,
            }
        }

        fn confirm_trial(&self, pseudonym: &Pseudonym, booking_id: i64) -> ConfirmOutcome {
            self.confirms.lock().unwrap().push((*pseudonym, booking_id));
            self.confirm_outcomes
                .lock()
                .unwrap()
                .pop_front()
                .expect("a confirmation was sent but no outcome is scripted")
        }
    }

    pub(super) fn text_part(id: &str, text: &str, now: &Zoned) -> Part {
        Part {
            id: id.into(),
            at: now.timestamp(),
            kind: PartKind::Text(text.into()),
            quoted: None,
            button: None,
        }
    }

    fn part(id: &str, kind: PartKind) -> Part {
        Part {
            id: id.into(),
            at: monday().timestamp(),
            kind,
            quoted: None,
            button: None,
        }
    }

    fn burst(parts: Vec<Part>) -> Burst {
        Burst {
            address: PHONE.into(),
            contact_name: None,
            user_id: None,
            parent_user_id: None,
            username: None,
            referral: None,
            parts,
        }
    }

    pub(super) fn answer(intent: &str, profil: Value, reply: &str, wunsch: Option<&str>) -> Value {
        json!({"intent": intent, "profil": profil, "reply": reply, "wunschtermin": wunsch})
    }

    fn berlin(s: &str) -> Zoned {
        s.parse::<jiff::civil::DateTime>()
            .unwrap()
            .to_zoned(berlin_tz())
            .unwrap()
    }

    /// Monday, 19 January 2026, 10:00 in Berlin.
    fn monday() -> Zoned {
        berlin("2026-01-19T10:00")
    }

    struct Harness {
        _dir: tempfile::TempDir,
        store: Arc<Store>,
        model: Arc<ScriptedModel>,
        booker: Arc<ScriptedBooker>,
        engine: Engine,
    }

    fn harness() -> Harness {
        harness_with(12)
    }

    fn harness_with(history_messages: usize) -> Harness {
        harness_with_conv(ConversationConfig {
            history_messages,
            ..ConversationConfig::default()
        })
    }

    fn harness_with_conv(conv: ConversationConfig) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), StoreIdentity::generate()).unwrap());
        let model = Arc::new(ScriptedModel::default());
        let booker = Arc::new(ScriptedBooker::default());
        let studio = crate::conversation::prompts::tests::studio();
        let prompts = Prompts::load_from(
            &crate::conversation::prompts::tests::shipped_dir(),
            None,
            &studio,
        )
        .unwrap();
        let engine = Engine::new(
            store.clone(),
            model.clone(),
            Arc::new(prompts),
            studio,
            conv,
            Some(booker.clone()),
        );
        Harness {
            _dir: dir,
            store,
            model,
            booker,
            engine,
        }
    }

    impl Harness {
        fn send_at(&self, text: &str, now: &Zoned) -> Turn {
            self.send_many(&[text], now)
        }
        fn send(&self, text: &str) -> Turn {
            self.send_at(text, &monday())
        }
        fn send_many(&self, texts: &[&str], now: &Zoned) -> Turn {
            let parts = texts
                .iter()
                .enumerate()
                .map(|(i, t)| text_part(&format!("wamid.{i}"), t, now))
                .collect();
            self.send_parts(PHONE, parts, now)
        }
        /// Decides and commits a burst (no queue rows), as the dispatcher does.
        fn send_parts(&self, address: &str, parts: Vec<Part>, now: &Zoned) -> Turn {
            let burst = Burst {
                address: address.into(),
                contact_name: Some("Lenchen".into()),
                user_id: None,
                parent_user_id: None,
                username: None,
                referral: None,
                parts,
            };
            let mut turn = self.engine.decide_at(&burst, now).unwrap();
            turn.effects = crate::turn::commit(&self.store, turn.effects, &(), None).unwrap();
            turn
        }
        fn customer(&self) -> Customer {
            self.store
                .customer(&self.store.pseudonym(PHONE))
                .unwrap()
                .unwrap()
        }
        fn history(&self) -> Vec<Message> {
            self.store
                .recent_messages(&self.store.pseudonym(PHONE), 1000)
                .unwrap()
        }
        /// A contact who has told first name, last name and e-mail and already got the disclosure.
        fn known_contact(&self) {
            self.model.push(answer(
                "none",
                json!({"vorname": "Lena", "nachname": "Schmidt", "email": "lena@example.de"}),
                "Hi Lena, ich bin Max, der digitale Assistent (KI) von FitBox! Wann passt es dir?",
                None,
            ));
            self.send("Hi, Lena Schmidt hier, lena@example.de");
        }
    }

    const DISCLOSED: &str =
        "Hey! 👋 Ich bin Max, der digitale Assistent (KI) von FitBox. Wie heißt du?";

    #[test]
    fn stages_move_with_the_profile_and_the_booking() {
        let h = harness();
        h.model.push(answer("none", json!({}), DISCLOSED, None));
        let t = h.send("Hallo!");
        assert!(t.new_contact);
        assert_eq!(t.replies, vec![DISCLOSED.to_string()]);
        assert!(t.stage_changes.is_empty());
        assert_eq!(
            t.generated,
            Some(GenerationStats {
                prompt_tokens: 900,
                evaluated_prompt_tokens: 120,
                generated_tokens: 40
            })
        );
        let c = h.customer();
        assert_eq!(c.meta.stage, Stage::NewLead);
        assert_eq!(c.body.contact_name.as_deref(), Some("Lenchen"));
        assert!(c.body.conversation.disclosed_ai);

        h.model.push(answer(
            "none",
            json!({"vorname": "Lena", "fitness_ziel": "fitter werden"}),
            "Hi Lena! Magst du ein Probetraining machen? 💪",
            None,
        ));
        let t = h.send("Ich bin Lena und will fitter werden");
        assert!(!t.new_contact);
        assert_eq!(t.stage_changes, vec![(Stage::NewLead, Stage::NameKnown)]);
        assert_eq!(
            t.replies,
            vec!["Hi Lena! Magst du ein Probetraining machen? 💪"]
        );
        let c = h.customer();
        assert_eq!(c.meta.stage, Stage::NameKnown);
        assert_eq!(
            c.body.profile.fitness_ziel.as_deref(),
            Some("fitter werden")
        );
        assert!(!c.meta.ever_booked);
        // The rule file follows the stage.
        assert!(h
            .model
            .last_prompt()
            .dynamic_system
            .contains("Status: neuer Interessent"));

        h.model.push(answer(
            "book_trial",
            json!({"nachname": "Schmidt", "email": "lena@example.de"}),
            "Ich schau mal!",
            Some("nächsten Dienstag um 18 Uhr"),
        ));
        let start = berlin("2026-01-20T18:00");
        h.booker
            .outcomes
            .lock()
            .unwrap()
            .push_back(BookingOutcome::Booked {
                booking_id: 77,
                start: start.clone(),
                magicline_customer_id: 4711,
                confirmation_pending: false,
            });
        let t = h.send("Schmidt, lena@example.de – nächsten Dienstag um 18 Uhr?");
        assert_eq!(
            t.stage_changes,
            vec![(Stage::NameKnown, Stage::TrialBooked)]
        );
        assert_eq!(t.replies.len(), 1);
        assert!(
            t.replies[0].contains("Dienstag, 20.01. um 18:00 Uhr"),
            "{}",
            t.replies[0]
        );
        assert!(t.replies[0].contains("Lena"));
        let c = h.customer();
        assert_eq!(c.meta.stage, Stage::TrialBooked);
        assert!(c.meta.ever_booked);
        assert_eq!(c.body.profile.magicline_customer_id, Some(4711));
        assert_eq!(
            c.body.profile.probetraining_datum.as_deref(),
            Some(start.to_string().as_str())
        );
        // Booked customers get the "no selling" rules.
        h.model.push(answer(
            "question",
            json!({}),
            "Bring Sportschuhe mit! 👟",
            None,
        ));
        let t = h.send("Was soll ich mitbringen?");
        assert!(t.stage_changes.is_empty());
        let d = h.model.last_prompt().dynamic_system;
        assert!(d.contains("Status: Probetraining gebucht"));
        assert!(d.contains("gebucht am Dienstag, 20.01. um 18:00 Uhr"));
        assert!(d.contains("Verkauf nichts"));
    }

    #[test]
    fn a_booking_that_needs_confirmation_is_confirmed_only_by_the_leads_yes() {
        let h = harness();
        h.known_contact();
        h.model.push(answer(
            "book_trial",
            json!({}),
            "Moment, ich schau nach.",
            Some("nächsten Dienstag um 18 Uhr"),
        ));
        let start = berlin("2026-01-20T18:00");
        h.booker
            .outcomes
            .lock()
            .unwrap()
            .push_back(BookingOutcome::Booked {
                booking_id: 5,
                start: start.clone(),
                magicline_customer_id: 9,
                confirmation_pending: true,
            });
        let t = h.send("Passt nächster Dienstag um 18 Uhr?");
        assert!(t.replies[0].contains("mit „Ja“"), "{}", t.replies[0]);
        assert!(
            h.booker.confirms.lock().unwrap().is_empty(),
            "frontdesk does not confirm on the lead's behalf"
        );
        // Another question is answered by the model and confirms nothing.
        h.model.push(answer(
            "question",
            json!({}),
            "Bring Sportschuhe mit! 👟",
            None,
        ));
        h.send("Was soll ich mitbringen?");
        assert!(h.booker.confirms.lock().unwrap().is_empty());

        h.booker
            .confirm_outcomes
            .lock()
            .unwrap()
            .push_back(ConfirmOutcome::Confirmed {
                start: start.clone(),
            });
        let t = h.send("Ja");
        assert_eq!(
            *h.booker.confirms.lock().unwrap(),
            vec![(h.store.pseudonym(PHONE), 5)]
        );
        assert!(
            t.replies[0].contains("Dienstag, 20.01. um 18:00 Uhr gebucht"),
            "{}",
            t.replies[0]
        );
        assert!(!h
            .customer()
            .body
            .conversation
            .extra
            .contains_key(AWAITING_CONFIRMATION));

        // Too late: MagicLine dropped the reservation; the lead is asked for another time.
        h.model.push(answer(
            "book_trial",
            json!({}),
            "Moment.",
            Some("nächsten Mittwoch um 18 Uhr"),
        ));
        h.booker
            .outcomes
            .lock()
            .unwrap()
            .push_back(BookingOutcome::Booked {
                booking_id: 6,
                start: berlin("2026-01-21T18:00"),
                magicline_customer_id: 9,
                confirmation_pending: true,
            });
        h.send("Und nächsten Mittwoch um 18 Uhr?");
        h.booker
            .confirm_outcomes
            .lock()
            .unwrap()
            .push_back(ConfirmOutcome::Expired);
        let t = h.send("ja gerne");
        assert!(t.replies[0].contains("verfallen"), "{}", t.replies[0]);
        assert_eq!(h.customer().body.profile.probetraining_datum, None);
    }

    #[test]
    fn booking_calls_the_booker_once_with_the_parsed_start() {
        let h = harness();
        h.known_contact();
        h.model.push(answer(
            "book_trial",
            json!({}),
            "Moment, ich schau nach.",
            Some("nächsten Dienstag um 18 Uhr"),
        ));
        let start = berlin("2026-01-20T18:00");
        h.booker
            .outcomes
            .lock()
            .unwrap()
            .push_back(BookingOutcome::Booked {
                booking_id: 1,
                start: start.clone(),
                magicline_customer_id: 9,
                confirmation_pending: true,
            });
        let t = h.send("Passt nächster Dienstag um 18 Uhr?");
        let reqs = h.booker.requests.lock().unwrap().clone();
        assert_eq!(reqs.len(), 1);
        let r = &reqs[0];
        assert_eq!(r.start, start);
        assert_eq!(r.firstname, "Lena");
        assert_eq!(r.lastname, "Schmidt");
        assert_eq!(r.email, "lena@example.de");
        assert_eq!(r.pseudonym, h.store.pseudonym(PHONE));
        assert!(r.request_id.starts_with("trial-"));
        // Named after the message that asked (the booker's idempotency key): the same on a
        // retry of this turn, another for a later message.
        assert_eq!(
            r.request_id,
            h.engine.request_id(&h.store.pseudonym(PHONE), "wamid.0")
        );
        assert_ne!(
            r.request_id,
            h.engine.request_id(&h.store.pseudonym(PHONE), "wamid.1")
        );
        assert!(
            t.replies[0].contains("bestätige den Termin kurz mit „Ja“"),
            "{}",
            t.replies[0]
        );
        assert!(matches!(t.booking, Some(BookingOutcome::Booked { .. })));
        assert!(t.alerts.is_empty());

        // Moving the booked trial books the new slot and tells staff to cancel the old one.
        h.model.push(answer(
            "reschedule",
            json!({}),
            "Klar!",
            Some("Mittwoch um 19 Uhr"),
        ));
        let moved = berlin("2026-01-21T19:00");
        h.booker
            .outcomes
            .lock()
            .unwrap()
            .push_back(BookingOutcome::Booked {
                booking_id: 2,
                start: moved.clone(),
                magicline_customer_id: 9,
                confirmation_pending: false,
            });
        let t = h.send("Kann ich auf Mittwoch 19 Uhr verschieben?");
        assert_eq!(h.booker.requests.lock().unwrap()[1].start, moved);
        assert_eq!(t.alerts[0].kind, AlertKind::Rescheduled);
        assert!(t.stage_changes.is_empty());
        assert_eq!(
            h.customer().body.profile.probetraining_datum,
            Some(moved.to_string())
        );
    }

    #[test]
    fn the_message_text_is_used_when_the_model_gives_no_date() {
        let h = harness();
        h.known_contact();
        h.model
            .push(answer("book_trial", json!({}), "Ich schau nach.", None));
        h.booker
            .outcomes
            .lock()
            .unwrap()
            .push_back(BookingOutcome::Failed(BookingFailure::StudioClosed));
        let t = h.send("Mittwoch um 7 Uhr morgens");
        let reqs = h.booker.requests.lock().unwrap().clone();
        assert_eq!(reqs[0].start, berlin("2026-01-21T07:00"));
        assert!(t.replies[0].contains("geschlossen"));
        assert!(t.alerts.is_empty());
    }

    #[test]
    fn no_booking_without_email_or_concrete_time() {
        let h = harness();
        h.model.push(answer(
            "book_trial",
            json!({"vorname": "Lena", "nachname": "Schmidt"}),
            "Gern! Wie lautet deine E-Mail-Adresse? 😊",
            Some("nächsten Dienstag um 18 Uhr"),
        ));
        let t = h.send("Lena Schmidt, nächsten Dienstag um 18 Uhr");
        assert!(h.booker.requests.lock().unwrap().is_empty());
        assert!(t.booking.is_none());
        assert!(t.replies[0].ends_with("Wie lautet deine E-Mail-Adresse? 😊"));
        // All data, but only a vague wish: no booking, the model asks.
        h.model.push(answer(
            "book_trial",
            json!({"email": "lena@example.de"}),
            "Welcher Tag und welche Uhrzeit passen dir?",
            Some("nächste Woche"),
        ));
        let t = h.send("lena@example.de, irgendwann nächste Woche");
        assert!(h.booker.requests.lock().unwrap().is_empty());
        assert_eq!(
            t.replies,
            vec!["Welcher Tag und welche Uhrzeit passen dir?"]
        );
    }

    #[test]
    fn taken_slot_offers_alternatives_and_a_pick_books_it() {
        let h = harness();
        h.known_contact();
        h.model.push(answer(
            "book_trial",
            json!({}),
            "Ich schau nach.",
            Some("Dienstag um 18 Uhr"),
        ));
        let alts = vec![
            berlin("2026-01-20T17:00"),
            berlin("2026-01-20T19:00"),
            berlin("2026-01-21T18:00"),
            berlin("2026-01-22T18:00"),
        ];
        h.booker
            .outcomes
            .lock()
            .unwrap()
            .push_back(BookingOutcome::SlotTaken {
                alternatives: alts.clone(),
            });
        let t = h.send("Dienstag um 18 Uhr");
        let text = &t.replies[0];
        assert!(text.contains("1. Dienstag, 20.01. um 17:00 Uhr"), "{text}");
        assert!(text.contains("3. Mittwoch, 21.01. um 18:00 Uhr"), "{text}");
        assert!(
            !text.contains("22.01."),
            "at most three alternatives: {text}"
        );
        let c = h.customer();
        assert_eq!(c.body.conversation.offered_slots.len(), 3);
        assert_eq!(c.meta.stage, Stage::NameKnown);
        // The offer is part of the next prompt.
        let calls = h.model.calls();

        h.booker
            .outcomes
            .lock()
            .unwrap()
            .push_back(BookingOutcome::Booked {
                booking_id: 2,
                start: alts[1].clone(),
                magicline_customer_id: 9,
                confirmation_pending: false,
            });
        let t = h.send("Dann der zweite bitte");
        assert_eq!(h.model.calls(), calls, "a pick needs no model call");
        let reqs = h.booker.requests.lock().unwrap().clone();
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[1].start, alts[1]);
        assert!(t.replies[0].contains("19:00 Uhr"));
        let c = h.customer();
        assert!(c.body.conversation.offered_slots.is_empty());
        assert_eq!(c.meta.stage, Stage::TrialBooked);
    }

    #[test]
    fn a_time_matching_one_offer_picks_it() {
        let h = harness();
        h.known_contact();
        h.model.push(answer(
            "book_trial",
            json!({}),
            "x",
            Some("Dienstag 18 Uhr"),
        ));
        let alts = vec![berlin("2026-01-20T17:00"), berlin("2026-01-21T18:00")];
        h.booker
            .outcomes
            .lock()
            .unwrap()
            .push_back(BookingOutcome::SlotTaken {
                alternatives: alts.clone(),
            });
        h.send("Dienstag 18 Uhr");
        let d = {
            h.model
                .push(answer("none", json!({}), "Welcher passt dir?", None));
            h.send("hmm");
            h.model.last_prompt().dynamic_system
        };
        assert!(
            d.contains("angeboten wurden: 1. Dienstag, 20.01. um 17:00 Uhr"),
            "{d}"
        );
        h.booker
            .outcomes
            .lock()
            .unwrap()
            .push_back(BookingOutcome::Failed(BookingFailure::NotConfigured));
        let t = h.send("Mittwoch passt");
        let reqs = h.booker.requests.lock().unwrap().clone();
        assert_eq!(reqs.last().unwrap().start, alts[1]);
        assert_eq!(t.alerts[0].kind, AlertKind::BookingFailed);
        assert!(t.replies[0].contains("ans Team weiter"));
        // After a day the offer is stale: "1" goes to the model instead.
        h.booker
            .outcomes
            .lock()
            .unwrap()
            .push_back(BookingOutcome::SlotTaken {
                alternatives: alts.clone(),
            });
        h.model.push(answer(
            "book_trial",
            json!({}),
            "x",
            Some("Dienstag 18 Uhr"),
        ));
        h.send("Dienstag 18 Uhr");
        h.model
            .push(answer("none", json!({}), "Was meinst du mit 1?", None));
        let calls = h.model.calls();
        let t = h.send_at("1", &berlin("2026-01-20T11:00"));
        assert_eq!(h.model.calls(), calls + 1);
        assert_eq!(t.replies, vec!["Was meinst du mit 1?"]);
    }

    #[test]
    fn hand_over_escalates_alerts_and_silences() {
        for (intent, kind) in [
            ("complaint", AlertKind::Complaint),
            ("cancel_appointment", AlertKind::Cancellation),
            ("contract_question", AlertKind::ContractQuestion),
            ("health_question", AlertKind::HealthQuestion),
            ("wants_person", AlertKind::PersonRequested),
        ] {
            let h = harness();
            h.known_contact();
            h.model.push(answer(
                intent,
                json!({}),
                "Oh nein, das tut mir leid!",
                None,
            ));
            let t = h.send("Das ist echt ärgerlich mit euch");
            assert_eq!(t.mode_changes, vec![(BotMode::Active, BotMode::Escalated)]);
            assert_eq!(
                t.alerts,
                vec![StaffAlert {
                    kind,
                    pseudonym: h.store.pseudonym(PHONE)
                }]
            );
            assert_eq!(t.replies, vec![StudioConfig::default().handover_text]);
            assert_eq!(h.customer().meta.mode, BotMode::Escalated);
            let calls = h.model.calls();
            let before = h.history().len();
            let t = h.send("Hallo? Meldet sich jemand?");
            assert!(t.replies.is_empty());
            assert!(t.alerts.is_empty());
            assert_eq!(h.model.calls(), calls);
            let hist = h.history();
            assert_eq!(hist.len(), before + 1);
            assert_eq!(hist.last().unwrap().direction, Direction::Inbound);
            // An opt-out from an escalated contact is recorded; staff stay in charge.
            let t = h.send("STOP");
            assert!(t.replies.is_empty());
            assert_eq!(h.customer().meta.mode, BotMode::Escalated);
        }
    }

    #[test]
    fn a_price_question_is_answered_not_handed_over() {
        let h = harness();
        h.known_contact();
        h.model.push(answer(
            "question",
            json!({}),
            "Die Mitgliedschaft kostet 39 € im Monat. Magst du es erst mal testen?",
            None,
        ));
        let t = h.send("Was kostet die Mitgliedschaft?");
        assert!(t.alerts.is_empty(), "{:?}", t.alerts);
        assert!(t.mode_changes.is_empty());
        assert_eq!(h.customer().meta.mode, BotMode::Active);
        assert!(t.replies[0].contains("39 €"));
    }

    #[test]
    fn a_member_is_served_as_a_member_and_never_booked_into_a_trial() {
        let h = harness();
        h.known_contact();
        h.model.push(answer(
            "question",
            json!({"mitglied": "Ja"}),
            "Schön, dass du schon dabei bist! Wie kann ich dir helfen?",
            None,
        ));
        let t = h.send("Ich bin schon Mitglied bei euch");
        assert_eq!(t.stage_changes, vec![(Stage::NameKnown, Stage::Member)]);
        assert_eq!(h.customer().meta.stage, Stage::Member);
        assert!(
            t.funnel.is_empty(),
            "a member is no step in the lead funnel"
        );

        h.model.push(answer(
            "book_trial",
            json!({}),
            "Klar, Dienstag passt!",
            Some("Dienstag 18 Uhr"),
        ));
        let t = h.send("Kann ich Dienstag um 18 Uhr kommen?");
        let prompt = h.model.last_prompt().dynamic_system;
        assert!(prompt.contains("Status: Mitglied"), "{prompt}");
        assert!(prompt.contains("schon Mitglied im Studio"), "{prompt}");
        assert!(
            !prompt.contains("Biete aktiv ein Probetraining an"),
            "{prompt}"
        );
        assert!(t.booking.is_none(), "members get no trial booking");
        assert_eq!(
            t.alerts,
            vec![StaffAlert {
                kind: AlertKind::MemberAppointment,
                pseudonym: h.store.pseudonym(PHONE)
            }]
        );
        assert_eq!(h.customer().meta.mode, BotMode::Escalated);
        assert_eq!(h.customer().meta.stage, Stage::Member);
    }

    #[test]
    fn a_member_by_their_word_is_looked_up_and_their_wish_booked_as_an_appointment() {
        let h = harness();
        h.known_contact();
        assert_eq!(
            *h.booker.member_lookups.lock().unwrap(),
            1,
            "e-mail learned"
        );
        *h.booker.member.lock().unwrap() = Some(77);
        h.model.push(answer(
            "question",
            json!({"mitglied": "Ja"}),
            "Schön, dass du dabei bist!",
            None,
        ));
        h.send("Ich bin schon Mitglied bei euch");
        assert_eq!(*h.booker.member_lookups.lock().unwrap(), 2);
        let c = h.customer();
        assert_eq!(c.meta.stage, Stage::Member);
        assert_eq!(c.body.profile.magicline_customer_id, Some(77));
        let start = berlin("2026-01-20T18:00");
        h.booker
            .outcomes
            .lock()
            .unwrap()
            .push_back(BookingOutcome::Booked {
                booking_id: 5,
                start: start.clone(),
                magicline_customer_id: 77,
                confirmation_pending: false,
            });
        h.model.push(answer(
            "book_trial",
            json!({}),
            "Klar!",
            Some("Dienstag 18 Uhr"),
        ));
        let t = say(
            &h,
            "m-member",
            "Kann ich Dienstag um 18 Uhr kommen?",
            &monday(),
        );
        let reqs = h.booker.requests.lock().unwrap().clone();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].magicline_customer_id, Some(77));
        assert!(t.alerts.is_empty(), "booked, not handed over");
        assert!(t.replies[0].contains("Dein Termin am Dienstag, 20.01. um 18:00 Uhr"));
        assert!(t.stage_changes.is_empty(), "a member stays a member");
        assert_eq!(h.customer().meta.mode, BotMode::Active);
    }

    #[test]
    fn opt_out_confirms_once_then_silence_until_they_write_again() {
        let h = harness();
        h.known_contact();
        let calls = h.model.calls();
        let t = h.send("STOP");
        assert_eq!(
            h.model.calls(),
            calls,
            "opt-out is decided without the model"
        );
        assert_eq!(t.replies, vec![StudioConfig::default().opt_out_reply]);
        assert_eq!(t.mode_changes, vec![(BotMode::Active, BotMode::OptedOut)]);
        assert_eq!(h.customer().meta.mode, BotMode::OptedOut);
        let t = h.send("Stopp!");
        assert!(t.replies.is_empty());
        assert!(t.mode_changes.is_empty());
        // Any later message that is not an opt-out: they wrote again on their own.
        h.model
            .push(answer("question", json!({}), "Klar, frag ruhig! 😊", None));
        let t = h.send("Hallo, ich hab doch noch eine Frage");
        assert_eq!(t.mode_changes, vec![(BotMode::OptedOut, BotMode::Active)]);
        assert_eq!(t.replies, vec!["Klar, frag ruhig! 😊"]);
        assert_eq!(h.customer().meta.mode, BotMode::Active);
        // The model may also recognise an opt-out the keywords miss.
        h.model.push(answer("opt_out", json!({}), "Schade!", None));
        let t = h.send("Ihr nervt, ich will nix mehr von euch hören");
        assert_eq!(t.replies, vec![StudioConfig::default().opt_out_reply]);
        assert_eq!(h.customer().meta.mode, BotMode::OptedOut);
    }

    #[test]
    fn paused_contact_gets_no_reply_but_history_is_kept() {
        let h = harness();
        h.known_contact();
        h.store
            .update_existing(&h.store.pseudonym(PHONE), |c, _, _| {
                c.meta.mode = BotMode::Paused;
                Ok(())
            })
            .unwrap();
        let calls = h.model.calls();
        let t = h.send("Hallo?");
        assert!(t.replies.is_empty());
        assert_eq!(h.model.calls(), calls);
        let hist = h.history();
        assert_eq!(hist.last().unwrap().text, "Hallo?");
        assert_eq!(hist.last().unwrap().wamid.as_deref(), Some("wamid.0"));
        assert_eq!(h.customer().meta.mode, BotMode::Paused);
    }

    #[test]
    fn a_forget_during_the_model_call_stands() {
        let h = harness();
        h.known_contact();
        let p = h.store.pseudonym(PHONE);
        let store = h.store.clone();
        *h.model.during.lock().unwrap() = Some(Box::new(move || {
            store.forget(&[p], Timestamp::now()).unwrap();
        }));
        h.model.push(answer(
            "none",
            json!({"vorname": "Lena", "email": "neu@example.de"}),
            "Hi!",
            None,
        ));
        let t = h.send("Hallo?");
        assert!(
            t.replies.is_empty(),
            "nothing is sent to a forgotten person"
        );
        assert!(t.record.is_none());
        assert!(
            h.store.customer(&p).unwrap().is_none(),
            "the profile is not written back"
        );
        assert!(h.store.recent_messages(&p, 10).unwrap().is_empty());
        assert!(
            h.store.data_key(&p).unwrap().is_none(),
            "no new key was made"
        );

        // Someone forgotten who writes again afterwards is a new contact.
        h.model.push(answer("none", json!({}), DISCLOSED, None));
        // A message written after the forget (WhatsApp's timestamp).
        let later = Timestamp::now() + jiff::SignedDuration::from_hours(1);
        let t = h.send_parts(
            PHONE,
            vec![Part {
                id: "wamid.again".into(),
                at: later,
                kind: PartKind::Text("Hallo, ich bin es wieder".into()),
                quoted: None,
                button: None,
            }],
            &monday(),
        );
        assert!(t.new_contact);
        assert_eq!(t.replies.len(), 1);
        assert!(h.store.customer(&p).unwrap().is_some());
    }

    #[test]
    fn a_flooding_contact_is_recorded_but_answered_only_up_to_the_hourly_limit() {
        let h = harness_with_conv(ConversationConfig {
            max_replies_per_hour: 2,
            ..ConversationConfig::default()
        });
        for i in 0..2 {
            h.model.push(answer("none", json!({}), DISCLOSED, None));
            let t = h.send(&format!("Hallo {i}"));
            assert_eq!(t.replies.len(), 1);
        }
        let t = h.send("Hallo nochmal");
        assert_eq!(t.outcome, TurnOutcome::RateLimited);
        assert!(t.replies.is_empty());
        assert_eq!(
            h.model.calls(),
            2,
            "the limited turn never reaches the model"
        );
        assert_eq!(
            h.history().last().unwrap().text,
            "Hallo nochmal",
            "but staff see it"
        );
        // An opt-out is confirmed whatever the limit.
        let t = h.send("STOP");
        assert_eq!(t.replies.len(), 1);
        // An hour later the contact is answered again.
        h.model.push(answer("none", json!({}), "Hi!", None));
        let later = monday() + jiff::SignedDuration::from_mins(61);
        let t = h.send_at("Hallo, ich bin es wieder", &later);
        assert_eq!(t.replies.len(), 1);
    }

    #[test]
    fn a_user_id_sent_with_the_number_reaches_the_same_customer_later() {
        let h = harness();
        let both = Burst {
            address: "491701234567".into(),
            contact_name: None,
            user_id: Some("DE.1349120865530274".into()),
            parent_user_id: None,
            username: None,
            referral: None,
            parts: vec![part("wamid.b1", PartKind::Text("Hallo".into()))],
        };
        h.model
            .push(answer("none", json!({"vorname": "Lena"}), DISCLOSED, None));
        let t = h.engine.decide_at(&both, &monday()).unwrap();
        crate::turn::commit(&h.store, t.effects, &(), None).unwrap();
        let by_phone = h.store.pseudonym("491701234567");
        assert_eq!(h.store.pseudonym("DE.1349120865530274"), by_phone);

        // The user id alone (the number withheld) is the same customer, answered at the id.
        let alone = Burst {
            address: "DE.1349120865530274".into(),
            user_id: None,
            parts: vec![part("wamid.b2", PartKind::Text("Noch da?".into()))],
            ..both
        };
        h.model.push(answer("none", json!({}), "Ja!", None));
        let t = h.engine.decide_at(&alone, &monday()).unwrap();
        assert!(!t.new_contact);
        assert_eq!(t.address, "DE.1349120865530274");
        crate::turn::commit(&h.store, t.effects, &(), None).unwrap();
        let c = h.store.customer(&by_phone).unwrap().unwrap();
        assert_eq!(c.body.user_id.as_deref(), Some("DE.1349120865530274"));
        assert_eq!(c.body.profile.vorname.as_deref(), Some("Lena"));
        assert_eq!(h.store.recent_messages(&by_phone, 10).unwrap().len(), 4);

        // A forget removes the link with the customer.
        h.store.forget(&[by_phone], Timestamp::now()).unwrap();
        assert_ne!(h.store.pseudonym("DE.1349120865530274"), by_phone);
    }

    #[test]
    fn a_pause_during_the_model_call_wins() {
        let h = harness();
        h.known_contact();
        let store = h.store.clone();
        *h.model.during.lock().unwrap() = Some(Box::new(move || {
            store
                .update_existing(&store.pseudonym(PHONE), |c, _, _| {
                    c.meta.mode = BotMode::Paused;
                    Ok(())
                })
                .unwrap();
        }));
        h.model.push(answer("none", json!({}), "Hi!", None));
        let t = h.send("Hallo?");
        assert!(t.replies.is_empty());
        assert_eq!(h.customer().meta.mode, BotMode::Paused);
        assert_eq!(h.history().last().unwrap().direction, Direction::Inbound);
    }

    #[test]
    fn disclosure_is_added_to_the_first_reply_only() {
        let h = harness();
        h.model.push(answer(
            "none",
            json!({}),
            "Hey, schön dass du schreibst! 😊",
            None,
        ));
        let t = h.send("Hallo");
        assert_eq!(
            t.replies,
            vec!["Hi, ich bin Max, der digitale Assistent (KI) von FitBox Braunschweig. 🤖\nHey, schön dass du schreibst! 😊"]
        );
        assert!(h
            .model
            .last_prompt()
            .dynamic_system
            .contains("erste Nachricht dieses Kontakts"));
        assert!(h.customer().body.conversation.disclosed_ai);
        h.model
            .push(answer("none", json!({}), "Was ist dein Ziel?", None));
        let t = h.send("Ich will trainieren");
        assert_eq!(t.replies, vec!["Was ist dein Ziel?"]);
        assert!(!h
            .model
            .last_prompt()
            .dynamic_system
            .contains("erste Nachricht dieses Kontakts"));
        // Stored history holds what was sent.
        assert!(h.history()[1].text.starts_with("Hi, ich bin Max"));
    }

    #[test]
    fn disclosure_also_precedes_fixed_replies_to_a_new_contact() {
        let h = harness();
        let t = h.send("stop");
        assert_eq!(t.replies.len(), 1);
        assert!(t.replies[0].starts_with("Hi, ich bin Max, der digitale Assistent (KI)"));
        assert!(t.replies[0].ends_with(&StudioConfig::default().opt_out_reply));
        assert!(h.customer().body.conversation.disclosed_ai);
    }

    #[test]
    fn history_window_holds_exactly_the_last_messages() {
        let h = harness();
        for i in 0..7 {
            h.model
                .push(answer("none", json!({}), &format!("KI-Antwort {i}"), None));
            h.send(&format!("Nachricht {i}"));
        }
        assert_eq!(h.history().len(), 14);
        h.model
            .push(answer("none", json!({}), "KI-Antwort 7", None));
        h.send("Nachricht 7");
        let hist = h.model.last_prompt().history;
        assert_eq!(hist.len(), 12);
        // 15 messages existed when the model was asked; the first three are outside the window.
        assert_eq!(hist[0].role, Role::Assistant);
        assert_eq!(hist[0].content, "KI-Antwort 1");
        assert_eq!(hist[1].content, "Nachricht 2");
        assert_eq!(hist[11].role, Role::User);
        assert_eq!(hist[11].content, "Nachricht 7");
        // The window follows the configuration.
        let h = harness_with(3);
        for i in 0..3 {
            h.model
                .push(answer("none", json!({}), &format!("KI {i}"), None));
            h.send(&format!("N {i}"));
        }
        let hist = h.model.last_prompt().history;
        let contents: Vec<&str> = hist.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(contents, vec!["N 1", "KI 1", "N 2"]);
    }

    #[test]
    fn a_burst_is_one_turn_with_every_message_recorded() {
        let h = harness();
        h.model.push(answer("none", json!({}), DISCLOSED, None));
        let t = h.send_many(&["Hi", "  ", "ich bin Lena"], &monday());
        assert_eq!(t.replies.len(), 1);
        assert_eq!(h.model.calls(), 1);
        let hist = h.model.last_prompt().history;
        let contents: Vec<&str> = hist.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(contents, vec!["Hi", "ich bin Lena"]);
        let stored = h.history();
        assert_eq!(stored.len(), 3);
        assert_eq!(stored[1].wamid.as_deref(), Some("wamid.2"));
        assert_eq!(stored[2].direction, Direction::Outbound);
    }

    #[test]
    fn unusable_model_output_sends_the_fallback() {
        let h = harness();
        h.known_contact();
        h.model.push_raw(Ok("Ich bin kein JSON".into()));
        let t = h.send("Hallo?");
        assert_eq!(t.replies.len(), 1);
        assert!(t.replies[0].contains("nochmal schreiben"));
        assert_eq!(t.intent, None);
        // A transient model failure commits nothing; the caller retries the message later.
        let before = h.history().len();
        h.model.push_raw(Err(LlmError::Busy));
        let err = h
            .engine
            .decide_at(
                &burst(vec![part("wamid.x", PartKind::Text("Noch da?".into()))]),
                &monday(),
            )
            .unwrap_err();
        assert!(matches!(err, EngineError::Model(LlmError::Busy)));
        assert_eq!(h.history().len(), before);
    }

    /// Queue rows that write a marker, or fail.
    struct MarkerRows(Result<(), ()>);

    impl crate::turn::QueueRows for MarkerRows {
        fn add(
            &self,
            batch: &mut fjall::OwnedWriteBatch,
            store: &Store,
            effects: &Effects,
        ) -> crate::store::Result<()> {
            self.0
                .map_err(|()| StoreError::Format("outbox full".into()))?;
            batch.insert(
                &store.keyspaces().outbox,
                b"out-1",
                effects.replies.len().to_string().into_bytes(),
            );
            Ok(())
        }
    }

    #[test]
    fn queue_rows_are_part_of_the_same_commit() {
        let h = harness();
        h.model.push(answer("none", json!({}), DISCLOSED, None));
        let b = burst(vec![part("wamid.A", PartKind::Text("Hallo".into()))]);
        let decided = h.engine.decide_at(&b, &monday()).unwrap();
        // Deciding writes nothing.
        let p = h.store.pseudonym(PHONE);
        assert!(h.store.customer(&p).unwrap().is_none());
        let t = crate::turn::commit(&h.store, decided.effects, &MarkerRows(Ok(())), None).unwrap();
        assert_eq!(t.replies.len(), 1);
        assert_eq!(
            h.store.keyspaces().outbox.get(b"out-1").unwrap().as_deref(),
            Some(&b"1"[..])
        );
        assert_eq!(h.history().len(), 2);

        // Failing queue rows abort everything: no customer, no history, no counters.
        let other = Burst {
            address: "+49 160 7654321".into(),
            ..b
        };
        h.model.push(answer("none", json!({}), DISCLOSED, None));
        let decided = h.engine.decide_at(&other, &monday()).unwrap();
        assert!(
            crate::turn::commit(&h.store, decided.effects, &MarkerRows(Err(())), None).is_err()
        );
        let p = h.store.pseudonym("+49 160 7654321");
        assert!(h.store.customer(&p).unwrap().is_none());
        assert!(h.store.recent_messages(&p, 10).unwrap().is_empty());
    }

    fn quoting(id: &str, text: &str, quoted: &str) -> Part {
        Part {
            quoted: Some(quoted.into()),
            button: None,
            ..part(id, PartKind::Text(text.into()))
        }
    }

    /// Records WhatsApp's id of the replies of `t` as the sender does once they are sent.
    fn sent_as(h: &Harness, t: &Turn, wamid: &str) {
        assert_eq!(t.reply_rows.len(), t.replies.len());
        let tagged = h
            .store
            .tag_sent(&h.store.pseudonym(PHONE), &t.reply_rows, wamid)
            .unwrap();
        assert_eq!(tagged, t.replies.len());
    }

    #[test]
    fn a_caption_is_read_as_the_contacts_text() {
        let h = harness();
        h.model.push(answer("question", json!({}), DISCLOSED, None));
        let t = h.send_parts(
            PHONE,
            vec![part(
                "wamid.pic",
                PartKind::Captioned {
                    media: "image",
                    caption: " geht das? ".into(),
                },
            )],
            &monday(),
        );
        assert_eq!(h.model.calls(), 1, "a caption reaches the model");
        assert_eq!(t.outcome, TurnOutcome::Conversed);
        let prompt = h.model.last_prompt();
        let last = prompt.history.last().unwrap();
        assert_eq!(last.role, Role::User);
        assert_eq!(last.content, "[image] geht das?");
        assert_eq!(t.replies, vec![DISCLOSED.to_string()]);
        let non_text = crate::conversation::prompts::tests::studio().non_text_reply;
        assert!(!t.replies[0].contains(&non_text));
        assert_eq!(h.history()[0].text, "[image] geht das?");
        assert_eq!(h.history()[0].wamid.as_deref(), Some("wamid.pic"));
    }

    #[test]
    fn a_quoted_ja_gives_the_model_the_quoted_offer() {
        let h = harness();
        h.model.push(answer(
            "question",
            json!({}),
            "Hi, ich bin Max (KI). Wie wäre Dienstag um 18 Uhr?",
            None,
        ));
        let t = h.send_parts(
            PHONE,
            vec![part("wamid.in1", PartKind::Text("Hallo".into()))],
            &monday(),
        );
        sent_as(&h, &t, "wamid.OFFER1");
        h.model.push(answer(
            "question",
            json!({}),
            "Oder lieber Mittwoch um 10 Uhr?",
            None,
        ));
        let t = h.send_parts(
            PHONE,
            vec![part("wamid.in2", PartKind::Text("Hm".into()))],
            &monday(),
        );
        sent_as(&h, &t, "wamid.OFFER2");

        h.model.push(answer("none", json!({}), "Super!", None));
        h.send_parts(
            PHONE,
            vec![quoting("wamid.in3", "Ja", "wamid.OFFER1")],
            &monday(),
        );
        let history = h.model.last_prompt().history;
        let n = history.len();
        assert_eq!(history[n - 1].role, Role::User);
        assert_eq!(
            history[n - 1].content,
            "Ja",
            "the contact's own words stay theirs"
        );
        assert_eq!(history[n - 2].role, Role::System);
        assert_eq!(
            history[n - 2].content,
            "Der Kunde antwortet auf diese Nachricht von dir: «Hi, ich bin Max (KI). Wie wäre Dienstag um 18 Uhr?»"
        );

        // A quote of the contact's own message is marked as theirs; an unknown id adds nothing.
        h.model.push(answer("none", json!({}), "Ok!", None));
        h.send_parts(
            PHONE,
            vec![quoting("wamid.in4", "Wie gesagt", "wamid.in2")],
            &monday(),
        );
        let history = h.model.last_prompt().history;
        assert_eq!(
            history[history.len() - 2].content,
            "Der Kunde bezieht sich auf seine eigene frühere Nachricht: «Hm»"
        );
        h.model.push(answer("none", json!({}), "Ok!", None));
        h.send_parts(
            PHONE,
            vec![quoting("wamid.in5", "Ja", "wamid.UNKNOWN")],
            &monday(),
        );
        let history = h.model.last_prompt().history;
        assert!(history.iter().all(|m| m.role != Role::System));
    }

    #[test]
    fn a_ja_quoting_one_offered_slot_books_that_slot() {
        let h = harness();
        h.known_contact();
        h.model.push(answer(
            "book_trial",
            json!({}),
            "Ich schau nach.",
            Some("Dienstag um 18 Uhr"),
        ));
        let alts = vec![
            berlin("2026-01-20T17:00"),
            berlin("2026-01-20T19:00"),
            berlin("2026-01-21T18:00"),
        ];
        h.booker
            .outcomes
            .lock()
            .unwrap()
            .push_back(BookingOutcome::SlotTaken {
                alternatives: alts.clone(),
            });
        let list = h.send("Dienstag um 18 Uhr");
        sent_as(&h, &list, "wamid.LIST");
        h.model.push(answer(
            "question",
            json!({}),
            "Soll ich dich für Mittwoch, 21.01. um 18:00 Uhr eintragen?",
            None,
        ));
        let single = h.send("Hm, weiß nicht");
        sent_as(&h, &single, "wamid.SINGLE");

        // "Ja" to the whole list picks nothing by itself: the model reads it with the quote.
        let calls = h.model.calls();
        h.model
            .push(answer("none", json!({}), "Welcher der drei?", None));
        h.send_parts(
            PHONE,
            vec![quoting("wamid.j1", "Ja", "wamid.LIST")],
            &monday(),
        );
        assert_eq!(h.model.calls(), calls + 1);
        assert_eq!(h.booker.requests.lock().unwrap().len(), 1);

        // "Ja, passt" to the message that names one offered slot books that one.
        h.booker
            .outcomes
            .lock()
            .unwrap()
            .push_back(BookingOutcome::Booked {
                booking_id: 3,
                start: alts[2].clone(),
                magicline_customer_id: 9,
                confirmation_pending: false,
            });
        let t = h.send_parts(
            PHONE,
            vec![quoting("wamid.j2", "Ja, passt", "wamid.SINGLE")],
            &monday(),
        );
        assert_eq!(h.model.calls(), calls + 1, "the pick needs no model call");
        let reqs = h.booker.requests.lock().unwrap().clone();
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[1].start, alts[2]);
        assert_eq!(t.booking.as_ref().map(outcome_kind), Some("booked"));
    }

    #[test]
    fn a_no_quoting_an_offer_books_nothing() {
        assert!(is_affirmation("Ja"));
        assert!(is_affirmation("Ja, passt!"));
        assert!(is_affirmation("ok den nehme ich"));
        assert!(!is_affirmation("Nein"));
        assert!(!is_affirmation("Ja, aber lieber Freitag"));
        assert!(!is_affirmation("passt nicht"));
        assert!(!is_affirmation(""));
    }

    #[test]
    fn an_ad_referral_is_kept_on_the_customer_and_counted_by_source() {
        let h = harness();
        let source = crate::store::customers::LeadSource {
            source_type: Some("ad".into()),
            source_id: Some("120212345678901234".into()),
            headline: Some("EMS-Probetraining gratis".into()),
            ctwa_clid: Some("ARAkLkA8rmlFe".into()),
            ..Default::default()
        };
        let from_ad = |id: &str, text: &str| Burst {
            address: PHONE.into(),
            contact_name: None,
            user_id: None,
            parent_user_id: Some("DE.ENT.778899".into()),
            username: Some("@lena.fit".into()),
            referral: Some(source.clone()),
            parts: vec![part(id, PartKind::Text(text.into()))],
        };
        h.model.push(answer("question", json!({}), DISCLOSED, None));
        let t = h
            .engine
            .decide_at(
                &from_ad("wamid.ad1", "Ist das Angebot noch gültig?"),
                &monday(),
            )
            .unwrap();
        assert_eq!(h.model.calls(), 1, "the ad's message reaches the model");
        assert_eq!(
            h.model.last_prompt().history.last().unwrap().content,
            "Ist das Angebot noch gültig?"
        );
        assert_eq!(
            t.sources,
            vec![SourceEvent {
                source_type: "ad".into(),
                source_id: "120212345678901234".into(),
                headline: Some("EMS-Probetraining gratis".into()),
                step: SourceStep::Contact,
            }]
        );
        crate::turn::commit(&h.store, t.effects, &(), None).unwrap();
        let c = h.customer();
        assert_eq!(c.body.lead_source.as_ref(), Some(&source));
        assert_eq!(c.body.username.as_deref(), Some("@lena.fit"));
        assert_eq!(c.body.parent_user_id.as_deref(), Some("DE.ENT.778899"));

        // Another message through the same ad is not another lead.
        h.model.push(answer("none", json!({}), "Ja!", None));
        let t = h
            .engine
            .decide_at(&from_ad("wamid.ad2", "Und wann?"), &monday())
            .unwrap();
        assert!(t.sources.is_empty());
        crate::turn::commit(&h.store, t.effects, &(), None).unwrap();

        let report = crate::stats::report(
            &h.store,
            None,
            crate::stats::Period::Day,
            &crate::stats::Rates::default(),
        )
        .unwrap();
        assert_eq!(
            report.sources,
            vec![crate::stats::SourceRow {
                source_type: "ad".into(),
                source_id: "120212345678901234".into(),
                headline: Some("EMS-Probetraining gratis".into()),
                contacts: 1,
                trial_booked: 0,
            }]
        );
        assert_eq!(report.total.new_contacts, 1);
        // The click id is sealed: no clear stats row holds it.
        for g in h.store.keyspaces().stats.iter() {
            let (k, v) = g.into_inner().unwrap();
            assert!(!String::from_utf8_lossy(&k).contains("ARAk"));
            assert!(!String::from_utf8_lossy(&v).contains("ARAk"));
        }
    }

    #[test]
    fn a_trial_booked_by_an_ad_lead_is_counted_for_the_ad() {
        let h = harness();
        h.known_contact();
        let mut c = h.customer();
        c.body.lead_source = Some(crate::store::customers::LeadSource {
            source_type: Some("ad".into()),
            source_id: Some("777".into()),
            ..Default::default()
        });
        let mut b = h.store.batch();
        h.store.put_customer(&c, &mut b).unwrap();
        h.store.commit_durable(b).unwrap();
        h.model.push(answer(
            "book_trial",
            json!({}),
            "Ich buche.",
            Some("Dienstag um 18 Uhr"),
        ));
        h.booker
            .outcomes
            .lock()
            .unwrap()
            .push_back(BookingOutcome::Booked {
                booking_id: 1,
                start: berlin("2026-01-20T18:00"),
                magicline_customer_id: 9,
                confirmation_pending: false,
            });
        let t = h.send("Dienstag um 18 Uhr");
        assert_eq!(
            t.sources.iter().map(|e| e.step).collect::<Vec<_>>(),
            vec![SourceStep::TrialBooked]
        );
        let report = crate::stats::report(
            &h.store,
            None,
            crate::stats::Period::Day,
            &crate::stats::Rates::default(),
        )
        .unwrap();
        assert_eq!(report.sources[0].source_id, "777");
        assert_eq!(report.sources[0].trial_booked, 1);
    }

    #[test]
    fn a_first_opening_of_the_chat_gets_the_greeting_with_the_disclosure() {
        let h = harness();
        let t = h.send_parts(
            PHONE,
            vec![part("wamid.welcome", PartKind::Welcome)],
            &monday(),
        );
        assert_eq!(h.model.calls(), 0);
        assert_eq!(t.outcome, TurnOutcome::NonText);
        assert!(t.new_contact);
        assert_eq!(t.funnel, vec![FunnelEvent::NewContact]);
        assert_eq!(t.replies.len(), 1);
        let studio = crate::conversation::prompts::tests::studio();
        assert!(mentions_ai(&t.replies[0]), "{}", t.replies[0]);
        assert!(t.replies[0].contains(&studio.welcome_reply));
        assert!(!t.replies[0].contains(&studio.non_text_reply));
        assert_eq!(h.history()[0].text, "[chat opened]");
        assert!(h.customer().body.conversation.disclosed_ai);
    }

    #[test]
    fn edits_and_revokes_are_recorded_never_answered() {
        let h = harness();
        h.model.push(answer("none", json!({}), DISCLOSED, None));
        h.send_parts(
            PHONE,
            vec![part(
                "wamid.secret",
                PartKind::Text("Meine IBAN ist DE02 1203".into()),
            )],
            &monday(),
        );
        let before = h.history().len();

        let t = h.send_parts(
            PHONE,
            vec![part(
                "wamid.e1",
                PartKind::Edit {
                    original: "wamid.secret".into(),
                    text: Some("Meine IBAN ist DE02 1204".into()),
                },
            )],
            &monday(),
        );
        assert_eq!(t.outcome, TurnOutcome::Recorded);
        assert!(t.replies.is_empty());
        assert_eq!(h.model.calls(), 1);
        let history = h.history();
        assert_eq!(history.len(), before + 1);
        assert_eq!(
            history.last().unwrap().text,
            "[edited] Meine IBAN ist DE02 1204"
        );

        let t = h.send_parts(
            PHONE,
            vec![part(
                "wamid.r1",
                PartKind::Revoke {
                    original: "wamid.secret".into(),
                },
            )],
            &monday(),
        );
        assert_eq!(t.outcome, TurnOutcome::Recorded);
        assert!(t.replies.is_empty());
        assert_eq!(h.model.calls(), 1, "never shown to the model");
        let history = h.history();
        assert_eq!(history.len(), before + 1, "a revoke adds no row");
        let revoked = history
            .iter()
            .find(|m| m.wamid.as_deref() == Some("wamid.secret"))
            .unwrap();
        assert_eq!(revoked.text, crate::turn::REVOKED_TEXT);
        assert!(history.iter().all(|m| !m.text.contains("DE02 1203")));

        // Sent and deleted within one burst: neither read, stored nor answered.
        let t = h.send_parts(
            PHONE,
            vec![
                part("wamid.oops", PartKind::Text("Falscher Chat, sorry".into())),
                part(
                    "wamid.r2",
                    PartKind::Revoke {
                        original: "wamid.oops".into(),
                    },
                ),
            ],
            &monday(),
        );
        assert!(h
            .history()
            .iter()
            .all(|m| !m.text.contains("Falscher Chat")));
        assert_eq!(t.outcome, TurnOutcome::Recorded);
        assert!(t.replies.is_empty());
        assert_eq!(h.model.calls(), 1);

        // A revoke from someone we hold nothing about stores nothing.
        let stranger = "+49 160 1111111";
        let t = h.send_parts(
            stranger,
            vec![part(
                "wamid.r3",
                PartKind::Revoke {
                    original: "wamid.x".into(),
                },
            )],
            &monday(),
        );
        assert!(t.record.is_none());
        assert!(h
            .store
            .customer(&h.store.pseudonym(stranger))
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_voice_note_first_gets_the_disclosure_and_counts_as_a_new_contact() {
        let h = harness();
        let t = h.send_parts(
            PHONE,
            vec![part("wamid.v", PartKind::NonText("voice"))],
            &monday(),
        );
        assert_eq!(h.model.calls(), 0, "a voice note never reaches the model");
        assert_eq!(t.outcome, TurnOutcome::NonText);
        assert!(t.new_contact);
        assert_eq!(t.funnel, vec![FunnelEvent::NewContact]);
        assert_eq!(t.replies.len(), 1);
        assert!(mentions_ai(&t.replies[0]), "{}", t.replies[0]);
        assert!(
            t.replies[0].contains(&crate::conversation::prompts::tests::studio().non_text_reply)
        );
        let history = h.history();
        assert_eq!(history.len(), 2);
        assert_eq!(history[0].text, "[voice]");
        assert_eq!(history[0].wamid.as_deref(), Some("wamid.v"));
        assert!(h.customer().body.conversation.disclosed_ai);

        // A second voice note: the plain non-text reply, no second disclosure, no new contact.
        let t = h.send_parts(
            PHONE,
            vec![part("wamid.w", PartKind::NonText("image"))],
            &monday(),
        );
        assert!(!t.new_contact);
        assert!(t.funnel.is_empty());
        assert_eq!(
            t.replies,
            vec![crate::conversation::prompts::tests::studio().non_text_reply]
        );
    }

    #[test]
    fn text_and_voice_in_one_burst_are_one_turn_in_order() {
        let h = harness();
        h.model.push(answer("none", json!({}), DISCLOSED, None));
        let t = h.send_parts(
            PHONE,
            vec![
                part("wamid.1", PartKind::Text("Hallo".into())),
                part("wamid.2", PartKind::NonText("voice")),
                part("wamid.3", PartKind::Reaction),
            ],
            &monday(),
        );
        assert_eq!(t.outcome, TurnOutcome::Conversed);
        assert_eq!(h.model.calls(), 1);
        let texts: Vec<String> = h.history().into_iter().map(|m| m.text).collect();
        let non_text = crate::conversation::prompts::tests::studio().non_text_reply;
        assert_eq!(
            texts,
            vec![
                "Hallo".to_string(),
                "[voice]".into(),
                DISCLOSED.into(),
                non_text.clone()
            ],
            "the voice note is named as unread after the answer"
        );
        assert_eq!(t.replies, vec![DISCLOSED.to_string(), non_text]);
    }

    #[test]
    fn system_notices_and_reactions_are_never_answered_nor_stored() {
        let h = harness();
        for (parts, outcome) in [
            (vec![part("wamid.s", PartKind::System)], TurnOutcome::System),
            (
                vec![part("wamid.r", PartKind::Reaction)],
                TurnOutcome::Ignored,
            ),
            (
                vec![
                    part("wamid.s2", PartKind::System),
                    part("wamid.r2", PartKind::Reaction),
                ],
                TurnOutcome::Ignored,
            ),
        ] {
            let t = h.send_parts(PHONE, parts, &monday());
            assert_eq!(t.outcome, outcome);
            assert!(t.replies.is_empty());
            assert!(t.funnel.is_empty());
            assert!(t.record.is_none());
        }
        assert_eq!(h.model.calls(), 0);
        assert!(h
            .store
            .customer(&h.store.pseudonym(PHONE))
            .unwrap()
            .is_none());
    }

    #[test]
    fn an_invalid_sender_is_dropped_and_audited_but_never_stored() {
        let h = harness();
        for address in ["../../etc/passwd", "", "DE.12/34"] {
            let t = h.send_parts(
                address,
                vec![part("wamid.x", PartKind::Text("Hallo".into()))],
                &monday(),
            );
            assert_eq!(t.outcome, TurnOutcome::InvalidSender);
            assert!(t.replies.is_empty());
            assert!(t.record.is_none());
            assert!(t.funnel.is_empty());
            assert_eq!(t.audit.len(), 1);
            assert_eq!(t.audit[0].event.action(), "message.dropped");
            assert!(t.audit[0].subject.is_none());
            assert!(h
                .store
                .customer(&h.store.pseudonym(address))
                .unwrap()
                .is_none());
        }
        assert_eq!(h.model.calls(), 0);
        assert_eq!(h.store.customer_count(), 0);
    }

    #[test]
    fn hand_over_and_opt_out_carry_their_audit_entries_and_counters() {
        let h = harness();
        h.known_contact();
        h.model
            .push(answer("complaint", json!({}), "Oh nein", None));
        let t = h.send("Das Training war eine Frechheit");
        let actions: Vec<String> = t.audit.iter().map(|e| e.event.action()).collect();
        assert_eq!(actions, vec!["customer.escalate"]);
        assert_eq!(t.funnel, vec![FunnelEvent::Handover]);

        let h = harness();
        h.known_contact();
        let t = h.send("STOP");
        let actions: Vec<String> = t.audit.iter().map(|e| e.event.action()).collect();
        assert_eq!(actions, vec!["customer.opt_out"]);
        assert_eq!(t.funnel, vec![FunnelEvent::OptOut]);
    }

    #[test]
    fn opt_out_keywords() {
        for yes in [
            "STOP",
            "Stopp!",
            "stop.",
            "Bitte abmelden",
            "Ich möchte mich abmelden",
            "abbestellen",
            "Keine Nachrichten mehr bitte",
            "Bitte schreibt mir nicht mehr.",
            "unsubscribe",
            "Lasst mich in Ruhe!",
        ] {
            assert!(is_opt_out(yes), "{yes}");
        }
        for no in [
            "Kann ich mich vom Vertrag abmelden?",
            "Wie kann ich meine Mitgliedschaft abmelden",
            "Stoppuhr",
            "Ich will nicht aufhören zu trainieren",
            "Hallo",
            "",
            "Stop-and-go Training, gibt es das?",
        ] {
            assert!(!is_opt_out(no), "{no}");
        }
    }

    #[test]
    fn disclosure_detection() {
        for yes in [
            "Ich bin Max, der digitale Assistent (KI) von FitBox",
            "Ich bin ein KI-Assistent",
            "Hi! Ich bin die KI von FitBox",
            "Ich bin ein Chatbot",
            "Ich bin ein digitaler Assistent",
            "Ich bin eine künstliche Intelligenz",
        ] {
            assert!(mentions_ai(yes), "{yes}");
        }
        for no in [
            "Hi, ich bin Max vom Team!",
            "Kiste",
            "Bottrop ist schön",
            "Ich bin kein Bot 😄",
        ] {
            assert!(!mentions_ai(no), "{no}");
        }
        assert!(denies_ai("Haha, nein, ich bin ein echter Mensch!"));
        assert!(denies_ai("Ich bin keine KI."));
        assert!(!denies_ai(
            "Bei Vertragsfragen meldet sich ein echter Mensch aus dem Team."
        ));
    }

    #[test]
    fn a_reply_claiming_to_be_human_is_replaced() {
        let h = harness();
        h.known_contact();
        h.model.push(answer(
            "question",
            json!({}),
            "Haha nein, ich bin ein echter Mensch! 😄",
            None,
        ));
        let t = h.send("Bist du ein Bot?");
        assert_eq!(
            t.replies,
            vec!["Hi, ich bin Max, der digitale Assistent (KI) von FitBox Braunschweig. 🤖"]
        );
    }

    /// `text` as the contact wrote it at `written`.
    fn written_part(id: &str, text: &str, written: &Zoned) -> Part {
        text_part(id, text, written)
    }

    #[test]
    fn a_wish_is_read_against_the_day_it_was_written_not_the_day_it_is_answered() {
        let h = harness();
        h.known_contact();
        let written = berlin("2026-01-19T20:00"); // Monday evening
        let answered = berlin("2026-01-20T09:00"); // Tuesday morning (a retry, a late start)
        let tuesday_six = berlin("2026-01-20T18:00");
        let booked = |start: &Zoned| BookingOutcome::Booked {
            booking_id: 1,
            start: start.clone(),
            magicline_customer_id: 9,
            confirmation_pending: false,
        };

        // The model's wished date in words, read against Monday.
        h.model.push(answer(
            "book_trial",
            json!({}),
            "Moment.",
            Some("morgen 18 Uhr"),
        ));
        h.booker
            .outcomes
            .lock()
            .unwrap()
            .push_back(booked(&tuesday_six));
        let burst = burst(vec![written_part(
            "wamid.late",
            "Geht morgen 18 Uhr?",
            &written,
        )]);
        let t = h.engine.decide_at(&burst, &answered).unwrap();
        assert_eq!(h.booker.requests.lock().unwrap()[0].start, tuesday_six);
        assert!(matches!(t.booking, Some(BookingOutcome::Booked { .. })));
        // The model was told the day the contact wrote, not the day of the answer.
        let d = h.model.last_prompt().dynamic_system;
        assert!(d.contains("19.01.2026"), "{d}");
        assert!(!d.contains("20.01.2026"), "{d}");
        // The turn itself happens now: its time is the answer's.
        assert_eq!(t.at, answered.timestamp());

        // Without a date from the model, the contact's own words; each message against its own
        // time when they were written on different days ("morgen" just before midnight).
        h.model
            .push(answer("book_trial", json!({}), "Moment.", None));
        h.booker
            .outcomes
            .lock()
            .unwrap()
            .push_back(booked(&tuesday_six));
        let burst = super::tests::burst(vec![
            written_part("wamid.m1", "morgen 18 Uhr", &berlin("2026-01-19T23:58")),
            written_part("wamid.m2", "geht das?", &berlin("2026-01-20T00:01")),
        ]);
        h.engine.decide_at(&burst, &answered).unwrap();
        assert_eq!(h.booker.requests.lock().unwrap()[1].start, tuesday_six);
    }

    #[test]
    fn magicline_unavailable_fails_the_turn_and_the_retry_asks_under_the_same_request() {
        let h = harness();
        h.known_contact();
        let start = berlin("2026-01-20T18:00");
        let ask = burst(vec![text_part("wamid.ask", "Dienstag 18 Uhr", &monday())]);
        for outcome in [
            BookingOutcome::Failed(BookingFailure::Unavailable),
            BookingOutcome::Booked {
                booking_id: 1,
                start: start.clone(),
                magicline_customer_id: 9,
                confirmation_pending: false,
            },
        ] {
            h.model.push(answer(
                "book_trial",
                json!({}),
                "Moment.",
                Some("Dienstag 18 Uhr"),
            ));
            h.booker.outcomes.lock().unwrap().push_back(outcome);
        }
        let failed = h.engine.decide_at(&ask, &monday()).unwrap_err();
        assert!(
            matches!(failed, EngineError::BookingUnavailable),
            "{failed}"
        );
        assert_eq!(failed.kind(), "booking");
        // Tried again (a minute later): the same request, so the booker resumes it.
        let later = berlin("2026-01-19T10:01");
        let mut t = h.engine.decide_at(&ask, &later).unwrap();
        t.effects = crate::turn::commit(&h.store, t.effects, &(), None).unwrap();
        let reqs = h.booker.requests.lock().unwrap().clone();
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0].request_id, reqs[1].request_id);
        assert_eq!(reqs[0].start, reqs[1].start);
        assert!(
            t.alerts.is_empty(),
            "no staff alert for a booking that went through"
        );
        assert_eq!(h.customer().meta.stage, Stage::TrialBooked);
        // The failed try was never committed: the contact's message is in the history once.
        let asked: Vec<_> = h
            .history()
            .into_iter()
            .filter(|m| m.wamid.as_deref() == Some("wamid.ask"))
            .collect();
        assert_eq!(asked.len(), 1);
    }

    #[test]
    fn a_turn_given_up_is_recorded_and_handed_to_staff_without_the_model() {
        let h = harness();
        h.known_contact();
        let calls = h.model.calls();
        let b = burst(vec![text_part(
            "wamid.lost",
            "Geht morgen 18 Uhr?",
            &monday(),
        )]);
        let mut t = h.engine.give_up_at(&b, "model", &monday()).unwrap();
        assert_eq!(h.model.calls(), calls, "the model is not asked again");
        assert!(h.booker.requests.lock().unwrap().is_empty());
        assert_eq!(t.alerts.len(), 1);
        assert_eq!(t.alerts[0].kind, AlertKind::TurnFailed);
        assert_eq!(t.mode_changes, vec![(BotMode::Active, BotMode::Escalated)]);
        assert_eq!(t.funnel, vec![FunnelEvent::Handover]);
        assert!(matches!(
            &t.audit[0].event,
            AuditEvent::CustomerEscalate { reason } if reason.as_str() == "turn_failed"
        ));
        t.effects = crate::turn::commit(&h.store, t.effects, &(), None).unwrap();
        assert_eq!(
            t.replies,
            vec![crate::conversation::prompts::tests::studio().handover_text]
        );
        assert_eq!(h.customer().meta.mode, BotMode::Escalated);
        let history = h.history();
        let n = history.len();
        assert_eq!(history[n - 2].text, "Geht morgen 18 Uhr?");
        assert_eq!(history[n - 2].wamid.as_deref(), Some("wamid.lost"));
        assert_eq!(history[n - 1].direction, Direction::Outbound);

        // A new contact's first message: the hand-over carries the AI disclosure.
        let b = Burst {
            address: "+49 151 99999999".into(),
            ..burst(vec![text_part("wamid.first", "Hallo", &monday())])
        };
        let t = h.engine.give_up_at(&b, "store", &monday()).unwrap();
        assert!(t.new_contact);
        assert!(mentions_ai(&t.replies[0]), "{}", t.replies[0]);
    }

    /// Sends one message under its own WhatsApp id (each a booking request of its own).
    fn say(h: &Harness, id: &str, text: &str, now: &Zoned) -> Turn {
        h.send_parts(PHONE, vec![text_part(id, text, now)], now)
    }

    /// The first turn: the lead gives her full name, nothing else.
    fn lena_introduces_herself(h: &Harness) {
        h.model.push(answer(
            "none",
            json!({"vorname": "Lena", "nachname": "Schmidt"}),
            "Hi Lena, ich bin Max, der digitale Assistent (KI) von FitBox!",
            None,
        ));
        say(h, "m1", "Hi, Lena Schmidt hier", &monday());
    }

    #[test]
    fn a_date_given_first_and_the_email_last_books() {
        let h = harness();
        lena_introduces_herself(&h);
        // The wish comes before the e-mail: kept, nothing booked yet.
        h.model.push(answer(
            "book_trial",
            json!({}),
            "Gern! Wie lautet deine E-Mail-Adresse?",
            Some("nächsten Dienstag um 18 Uhr"),
        ));
        let t = say(&h, "m2", "Geht nächsten Dienstag um 18 Uhr?", &monday());
        assert_eq!(t.booking, None);
        assert!(h.booker.requests.lock().unwrap().is_empty());
        let start = berlin("2026-01-20T18:00");
        assert_eq!(
            h.customer().body.profile.wunschtermin.as_deref(),
            Some(start.to_string().as_str())
        );
        // The model does not repeat the date when the e-mail comes: the kept wish is booked.
        h.model.push(answer(
            "none",
            json!({"email": "lena@example.de"}),
            "Danke dir!",
            None,
        ));
        h.booker
            .outcomes
            .lock()
            .unwrap()
            .push_back(BookingOutcome::Booked {
                booking_id: 8,
                start: start.clone(),
                magicline_customer_id: 4711,
                confirmation_pending: false,
            });
        let t = say(&h, "m3", "lena@example.de", &monday());
        // The prompt showed the wish as known and asked only for the e-mail.
        let d = h.model.last_prompt().dynamic_system;
        assert!(d.contains("Dienstag, 20.01. um 18:00 Uhr"), "{d}");
        assert!(
            d.contains("Für die Buchung fehlt noch: E-Mail-Adresse\n"),
            "{d}"
        );
        let reqs = h.booker.requests.lock().unwrap().clone();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].start, start);
        assert_eq!(reqs[0].email, "lena@example.de");
        assert_eq!(
            reqs[0].request_id,
            h.engine.request_id(&h.store.pseudonym(PHONE), "m3"),
            "named after the message that completed the data"
        );
        assert!(t.replies[0].contains("gebucht"), "{}", t.replies[0]);
        assert_eq!(
            t.stage_changes,
            vec![(Stage::NameKnown, Stage::TrialBooked)]
        );
        let c = h.customer();
        assert_eq!(c.body.profile.wunschtermin, None, "a booked wish is done");
        assert_eq!(
            c.body.profile.probetraining_datum.as_deref(),
            Some(start.to_string().as_str())
        );
        // A later message books nothing more.
        h.model
            .push(answer("question", json!({}), "Sportschuhe! 👟", None));
        let t = say(&h, "m4", "Was bringe ich mit?", &monday());
        assert_eq!(t.booking, None);
        assert_eq!(h.booker.requests.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_day_first_and_the_hour_later_make_one_wish() {
        let h = harness();
        lena_introduces_herself(&h);
        h.model.push(answer(
            "book_trial",
            json!({}),
            "Gern! Um wie viel Uhr?",
            Some("Dienstag"),
        ));
        say(&h, "m2", "Dienstag wäre gut", &monday());
        assert_eq!(h.customer().body.profile.wunschtermin, None);
        h.model
            .push(answer("book_trial", json!({}), "Notiert!", Some("18 Uhr")));
        say(&h, "m3", "So um 18 Uhr", &monday());
        let tuesday = berlin("2026-01-20T18:00");
        assert_eq!(
            h.customer().body.profile.wunschtermin.as_deref(),
            Some(tuesday.to_string().as_str())
        );
        // A later hour alone moves the kept wish on its day.
        h.model
            .push(answer("book_trial", json!({}), "Notiert!", Some("19 Uhr")));
        say(&h, "m4", "Doch lieber 19 Uhr", &monday());
        let later = berlin("2026-01-20T19:00");
        assert_eq!(
            h.customer().body.profile.wunschtermin.as_deref(),
            Some(later.to_string().as_str())
        );
        h.booker
            .outcomes
            .lock()
            .unwrap()
            .push_back(BookingOutcome::Booked {
                booking_id: 4,
                start: later.clone(),
                magicline_customer_id: 9,
                confirmation_pending: false,
            });
        h.model.push(answer(
            "none",
            json!({"email": "lena@example.de"}),
            "Danke!",
            None,
        ));
        say(&h, "m5", "lena@example.de", &monday());
        let reqs = h.booker.requests.lock().unwrap().clone();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].start, later);
    }

    #[test]
    fn a_new_wish_replaces_the_old_and_a_past_or_passed_one_is_not_booked() {
        let h = harness();
        h.model.push(answer(
            "book_trial",
            json!({"vorname": "Lena"}),
            "Hi Lena, ich bin Max, der digitale Assistent (KI) von FitBox!",
            Some("nächsten Dienstag um 18 Uhr"),
        ));
        say(
            &h,
            "m1",
            "Lena hier, nächsten Dienstag um 18 Uhr?",
            &monday(),
        );
        h.model.push(answer(
            "book_trial",
            json!({}),
            "Notiert!",
            Some("Mittwoch um 19 Uhr"),
        ));
        say(&h, "m2", "Doch lieber Mittwoch um 19 Uhr", &monday());
        let wednesday = berlin("2026-01-21T19:00");
        assert_eq!(
            h.customer().body.profile.wunschtermin.as_deref(),
            Some(wednesday.to_string().as_str())
        );
        // A wish in the past is answered as such, neither kept nor booked.
        h.model.push(answer(
            "book_trial",
            json!({"nachname": "Schmidt", "email": "lena@example.de"}),
            "Klar!",
            Some("am 12.01.2026 um 10 Uhr"),
        ));
        let t = say(
            &h,
            "m3",
            "Schmidt, lena@example.de, 12.01.2026 um 10 Uhr",
            &monday(),
        );
        assert!(t.replies[0].contains("Vergangenheit"), "{}", t.replies[0]);
        assert!(h.booker.requests.lock().unwrap().is_empty());
        assert_eq!(
            h.customer().body.profile.wunschtermin.as_deref(),
            Some(wednesday.to_string().as_str())
        );
        // Once the kept wish has passed it is dropped, not booked.
        let thursday = berlin("2026-01-22T10:00");
        h.model
            .push(answer("none", json!({}), "Wann passt es dir?", None));
        let t = say(&h, "m4", "Hallo?", &thursday);
        assert_eq!(t.booking, None);
        assert!(h.booker.requests.lock().unwrap().is_empty());
        assert_eq!(h.customer().body.profile.wunschtermin, None);
    }

    #[test]
    fn a_failed_wish_is_tried_again_only_with_other_data_or_a_taken_slot_named_again() {
        let h = harness();
        h.known_contact();
        let start = berlin("2026-01-20T18:00");
        let outcomes = |o: BookingOutcome| h.booker.outcomes.lock().unwrap().push_back(o);
        outcomes(BookingOutcome::Failed(BookingFailure::InvalidCustomerData));
        h.model.push(answer(
            "book_trial",
            json!({}),
            "Ich schau nach.",
            Some("nächsten Dienstag um 18 Uhr"),
        ));
        let t = say(&h, "m1", "Nächsten Dienstag um 18 Uhr?", &monday());
        assert_eq!(t.alerts.len(), 1);
        assert_eq!(t.alerts[0].kind, AlertKind::InvalidCustomerData);
        assert!(t.replies[0].contains("E-Mail-Adresse"), "{}", t.replies[0]);
        // Nothing changed: not tried again, no second alert.
        h.model.push(answer(
            "book_trial",
            json!({"email": "lena@example.de"}),
            "Hm.",
            None,
        ));
        let t = say(&h, "m2", "Die Mail stimmt aber: lena@example.de", &monday());
        assert_eq!(t.booking, None);
        assert!(t.alerts.is_empty());
        assert_eq!(h.booker.requests.lock().unwrap().len(), 1);
        // A corrected e-mail is a new attempt for the kept wish.
        outcomes(BookingOutcome::SlotTaken {
            alternatives: Vec::new(),
        });
        h.model.push(answer(
            "none",
            json!({"email": "lena.schmidt@example.de"}),
            "Danke!",
            None,
        ));
        say(&h, "m3", "Oh, lena.schmidt@example.de", &monday());
        let reqs = h.booker.requests.lock().unwrap().clone();
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[1].email, "lena.schmidt@example.de");
        assert_eq!(reqs[1].start, start);
        // The slot was taken: other messages leave it alone …
        h.model
            .push(answer("none", json!({}), "Sag Bescheid!", None));
        say(&h, "m4", "Ich überlege noch", &monday());
        assert_eq!(h.booker.requests.lock().unwrap().len(), 2);
        // … naming it again checks it again.
        outcomes(BookingOutcome::Booked {
            booking_id: 3,
            start: start.clone(),
            magicline_customer_id: 12,
            confirmation_pending: false,
        });
        h.model
            .push(answer("question", json!({}), "Mal sehen.", None));
        let t = say(&h, "m5", "Ist Dienstag um 18 Uhr wieder frei?", &monday());
        assert_eq!(h.booker.requests.lock().unwrap().len(), 3);
        assert!(t.replies[0].contains("gebucht"), "{}", t.replies[0]);
    }
}
