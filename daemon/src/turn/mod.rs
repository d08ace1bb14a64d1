//! The turn: the contract between the channel and the conversation engine.
//!
//! A turn starts with a [`Burst`] — every message one contact sent within the burst window,
//! text and non-text parts alike, with WhatsApp's timestamps — and ends with [`Effects`]: what
//! the engine decided, as data. Nothing is written while the engine decides (model and booking
//! calls take seconds); [`commit`] then writes the effects under the customer's lock in one
//! durable batch, together with the rows the channel adds ([`QueueRows`]: outbox rows, seen
//! message ids, removal of the inbox rows).
//!
//! This module depends only on the store, the audit log and the funnel counters, so both the
//! channel (`whatsapp`) and the engine (`conversation`) can use it without knowing each other.

pub mod attention;
mod commit;
pub mod tap;

use jiff::Timestamp;

pub use crate::store::address::{is_valid_address, AddressKind};
pub use crate::store::moves::IdentityChange;
pub use commit::{commit, CommitError, QueueRows, REVOKED_TEXT};

use crate::audit::NewEntry;
use crate::stats::{FunnelEvent, SourceEvent};
use crate::store::crypto::Pseudonym;
use crate::store::customers::{BotMode, Customer, LeadSource};
use crate::store::messages::{Direction, Message};

/// Every message one contact sent within the burst window, in arrival order.
#[derive(Clone, PartialEq)]
pub struct Burst {
    /// Where replies go: the sender's phone number or WhatsApp user id, as the webhook named it.
    /// Not validated yet: the engine decides what to do with an address that is neither.
    pub address: String,
    /// The WhatsApp profile name, when the webhook carried one.
    pub contact_name: Option<String>,
    /// The sender's WhatsApp user id when the message named their phone number too: the engine
    /// keeps it and links it to the customer.
    pub user_id: Option<String>,
    /// The sender's parent user id (`DE.ENT.…`), when the webhook carried one: kept sealed on
    /// the record beside the user id.
    pub parent_user_id: Option<String>,
    /// The sender's WhatsApp `@username`, when the webhook carried one.
    pub username: Option<String>,
    /// The click-to-WhatsApp ad or post the contact came from, when a message of the burst
    /// carried a referral (the last one).
    pub referral: Option<LeadSource>,
    /// The messages, in arrival order.
    pub parts: Vec<Part>,
}

impl Burst {
    /// The newest tap on one of frontdesk's own buttons (reminders, follow-ups): what it asks
    /// for and the booking it is about.
    pub fn tapped(&self) -> Option<(tap::TapAction, i64)> {
        self.parts
            .iter()
            .rev()
            .find_map(|part| part.button.as_deref().and_then(tap::parse))
    }

    /// The contact's own words, trimmed, in order: message texts and media captions. Opt-out
    /// keywords and dates are read from these.
    pub fn texts(&self) -> Vec<&str> {
        self.parts
            .iter()
            .filter_map(|part| match &part.kind {
                PartKind::Text(t) | PartKind::Captioned { caption: t, .. }
                    if !t.trim().is_empty() =>
                {
                    Some(t.trim())
                }
                _ => None,
            })
            .collect()
    }

    /// The new messages as the model reads them, in order: a text as written, a caption with
    /// its media label in front (`[image] geht das?`), so the model knows what it cannot see.
    pub fn model_texts(&self) -> Vec<String> {
        self.parts
            .iter()
            .filter_map(|part| match &part.kind {
                PartKind::Text(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
                PartKind::Captioned { media, caption } if !caption.trim().is_empty() => {
                    Some(format!("[{media}] {}", caption.trim()))
                }
                _ => None,
            })
            .collect()
    }

    /// The newest message the contact wrote words in (text or caption): the one that carried
    /// the final piece of what they asked, and whose time their words are read against.
    pub fn newest_text(&self) -> Option<&Part> {
        self.parts.iter().rev().find(|part| match &part.kind {
            PartKind::Text(t) | PartKind::Captioned { caption: t, .. } => !t.trim().is_empty(),
            _ => false,
        })
    }

    /// The contact's words with the time each message was written, in order.
    pub fn texts_written(&self) -> Vec<(&str, Timestamp)> {
        self.parts
            .iter()
            .filter_map(|part| match &part.kind {
                PartKind::Text(t) | PartKind::Captioned { caption: t, .. }
                    if !t.trim().is_empty() =>
                {
                    Some((t.trim(), part.at))
                }
                _ => None,
            })
            .collect()
    }

    /// The message ids the contact deleted for everyone in this burst.
    pub fn revoked(&self) -> Vec<String> {
        self.parts
            .iter()
            .filter_map(|part| match &part.kind {
                PartKind::Revoke { original } if !original.is_empty() => Some(original.clone()),
                _ => None,
            })
            .collect()
    }

    /// The history rows of everything the contact wrote (texts, `[image] caption`, `[voice]` …
    /// for non-text parts, `[edited] new text` for an edit, `[chat opened]` for a first
    /// opening), in order, with WhatsApp's timestamps. Reactions, revokes (they mark the
    /// deleted row instead) and system notices are not the contact's words and have none.
    pub fn history(&self) -> Vec<Message> {
        self.parts
            .iter()
            .filter_map(|part| {
                let text = match &part.kind {
                    PartKind::Text(t) if !t.trim().is_empty() => t.trim().to_string(),
                    PartKind::Captioned { media, caption } => {
                        format!("[{media}] {}", caption.trim())
                    }
                    PartKind::NonText(label) => format!("[{label}]"),
                    PartKind::Welcome => "[chat opened]".to_string(),
                    PartKind::Edit { text, .. } => match text.as_deref().map(str::trim) {
                        Some(t) if !t.is_empty() => format!("[edited] {t}"),
                        _ => "[edited]".to_string(),
                    },
                    PartKind::Text(_)
                    | PartKind::Revoke { .. }
                    | PartKind::Reaction
                    | PartKind::System
                    | PartKind::IdentityChanged(_) => return None,
                };
                Some(Message {
                    direction: Direction::Inbound,
                    text,
                    at: part.at,
                    wamid: Some(part.id.clone()),
                })
            })
            .collect()
    }
}

impl std::fmt::Debug for Burst {
    // Texts and addresses are personal data: kinds only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kinds: Vec<&str> = self.parts.iter().map(|p| p.kind.label()).collect();
        write!(f, "Burst{kinds:?}")
    }
}

/// One message of a burst.
#[derive(Clone, Debug, PartialEq)]
pub struct Part {
    /// The WhatsApp message id (`wamid.…`).
    pub id: String,
    /// When WhatsApp received the message.
    pub at: Timestamp,
    /// What the message is.
    pub kind: PartKind,
    /// The `wamid.…` of the message this one quotes (a swipe-reply), when it quotes one.
    pub quoted: Option<String>,
    /// The payload of the template's quick-reply button the contact tapped, when this part is
    /// such a tap (its label is the part's text).
    pub button: Option<String>,
}

/// What a message of a burst is, reduced to what the engine acts on.
#[derive(Clone, PartialEq)]
pub enum PartKind {
    /// Text to answer: a message, the title of a button the contact tapped, a submitted form's
    /// answers.
    Text(String),
    /// A picture, video or document with a caption: the caption is answered like text.
    Captioned {
        /// The media's label (`image`, `video`, …).
        media: &'static str,
        /// What the contact wrote under it.
        caption: String,
    },
    /// A voice note, picture, location …: recorded as `[label]`, answered with the friendly
    /// non-text reply when nothing else in the burst is text.
    NonText(&'static str),
    /// The contact opened the chat for the first time without writing: answered with the
    /// greeting (and the AI disclosure).
    Welcome,
    /// The contact edited an earlier message: recorded, never answered.
    Edit {
        /// The edited message's `wamid.…`.
        original: String,
        /// The new text, when the edit carries one.
        text: Option<String>,
    },
    /// The contact deleted an earlier message for everyone: its text is removed from the
    /// history; never answered.
    Revoke {
        /// The deleted message's `wamid.…`.
        original: String,
    },
    /// A reaction to one of our messages: recorded as seen, otherwise ignored.
    Reaction,
    /// A notice from WhatsApp (`user_changed_number`, …), not something the contact wrote:
    /// never answered, never shown to the model.
    System,
    /// WhatsApp's notice that the contact has a new phone number (`user_changed_number`) or user
    /// id (`user_changed_user_id`): never answered; the customer moves to the new identity.
    IdentityChanged(IdentityChange),
}

impl PartKind {
    /// A notice from WhatsApp rather than something the contact wrote.
    pub fn is_notice(&self) -> bool {
        matches!(self, PartKind::System | PartKind::IdentityChanged(_))
    }
}

impl PartKind {
    /// Stable label for logs (never the content).
    pub fn label(&self) -> &'static str {
        match self {
            PartKind::Text(_) => "text",
            PartKind::Captioned { .. } => "captioned",
            PartKind::NonText(kind) => kind,
            PartKind::Welcome => "welcome",
            PartKind::Edit { .. } => "edit",
            PartKind::Revoke { .. } => "revoke",
            PartKind::Reaction => "reaction",
            PartKind::System => "system",
            PartKind::IdentityChanged(_) => "identity_changed",
        }
    }
}

impl std::fmt::Debug for PartKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// Why staff must look at a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertKind {
    /// The contact complained or is unhappy.
    Complaint,
    /// The contact wants to cancel an appointment.
    Cancellation,
    /// A matter with an existing contract: cancellation, billing or payment.
    ContractQuestion,
    /// A health question beyond the studio's stated facts.
    HealthQuestion,
    /// The contact asked to talk to a person.
    PersonRequested,
    /// A member wants an appointment, which staff book (members get no trial).
    MemberAppointment,
    /// A booking could not be made and a person has to follow up.
    BookingFailed,
    /// MagicLine refused the contact's data (e-mail, name) for a booking: the contact is asked to
    /// correct it, and staff see it in case they cannot.
    InvalidCustomerData,
    /// A booked trial was moved to a new slot: staff cancel the old appointment in MagicLine
    /// (the booking interface has no cancellation).
    Rescheduled,
    /// The contact's messages could not be answered (model, MagicLine or store failed on every
    /// attempt): they are in the history, and a person answers.
    TurnFailed,
}

impl AlertKind {
    /// The reason code used in the journal and the audit log.
    pub fn code(self) -> &'static str {
        match self {
            AlertKind::Complaint => "complaint",
            AlertKind::Cancellation => "cancellation",
            AlertKind::ContractQuestion => "contract_question",
            AlertKind::HealthQuestion => "health_question",
            AlertKind::PersonRequested => "person_requested",
            AlertKind::MemberAppointment => "member_appointment",
            AlertKind::BookingFailed => "booking_failed",
            AlertKind::InvalidCustomerData => "invalid_customer_data",
            AlertKind::Rescheduled => "rescheduled",
            AlertKind::TurnFailed => "turn_failed",
        }
    }
}

/// A notice for staff; carries no personal data (they look the customer up by pseudonym).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaffAlert {
    /// Why staff should look.
    pub kind: AlertKind,
    /// The customer, by pseudonym.
    pub pseudonym: Pseudonym,
}

/// How a turn ended, for the `messages_processed` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnOutcome {
    /// The engine handled text (model, booking, opt-out or hand-over).
    Conversed,
    /// Only non-text messages: the friendly non-text reply (or silence for a contact who is not
    /// answered).
    NonText,
    /// Nothing the contact wrote: only reactions.
    Ignored,
    /// Only WhatsApp system notices: never answered.
    System,
    /// Only edits or deletions of earlier messages: recorded, never answered.
    Recorded,
    /// The contact reached the hourly reply limit: recorded, not answered.
    RateLimited,
    /// The sender address is neither a phone number nor a WhatsApp user id: dropped, nothing
    /// stored, nothing answered.
    InvalidSender,
    /// One of the studio's staff numbers: not a lead, nothing stored, at most a pointer to the
    /// console (`whatsapp::staff`).
    FromStaff,
}

impl TurnOutcome {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            TurnOutcome::Conversed => "conversed",
            TurnOutcome::NonText => "non_text",
            TurnOutcome::Ignored => "ignored",
            TurnOutcome::System => "system",
            TurnOutcome::Recorded => "recorded",
            TurnOutcome::RateLimited => "rate_limited",
            TurnOutcome::InvalidSender => "invalid_sender",
            TurnOutcome::FromStaff => "from_staff",
        }
    }
}

/// The customer record as the engine decided it, with what it started from, so [`commit`] can
/// tell the engine's changes from an admin's made meanwhile.
#[derive(Clone, PartialEq)]
pub struct RecordUpdate {
    /// The record after the turn.
    pub customer: Customer,
    /// The bot mode the engine read before deciding.
    pub mode_before: BotMode,
    /// Whether the AI disclosure had been sent before this turn.
    pub disclosed_before: bool,
    /// The contact's messages of this burst, in order, for the history.
    pub inbound: Vec<Message>,
    /// Message ids the contact deleted for everyone: their history rows lose their text.
    pub revoked: Vec<String>,
}

/// Everything one turn changes, decided before anything is written.
#[derive(Clone)]
pub struct Effects {
    /// The contact, by pseudonym.
    pub pseudonym: Pseudonym,
    /// Where replies go (valid whenever `replies` is not empty).
    pub address: String,
    /// The time of the turn (history rows of replies, funnel day, last contact).
    pub at: Timestamp,
    /// The contact was not in the store before this turn.
    pub new_contact: bool,
    /// `None` when the turn stores nothing about the contact (system notices, reactions, an
    /// invalid sender).
    pub record: Option<RecordUpdate>,
    /// Texts to send, in order (usually one; empty means silence).
    pub replies: Vec<String>,
    /// The history sequence numbers of `replies`, in the same order: set by [`commit`] when it
    /// writes them, so the channel can record WhatsApp's id of each sent reply on its row.
    pub reply_rows: Vec<u64>,
    /// Notices for staff.
    pub alerts: Vec<StaffAlert>,
    /// Audit entries, committed with the turn.
    pub audit: Vec<NewEntry>,
    /// Funnel counters the turn moves.
    pub funnel: Vec<FunnelEvent>,
    /// Lead-source counters the turn moves (a contact from an ad, a trial booked by one).
    pub sources: Vec<SourceEvent>,
    /// How the turn ended, for the metric.
    pub outcome: TurnOutcome,
    /// New identities WhatsApp announced for the contact, in order: [`commit`] moves the
    /// customer (`pseudonym`) to each, under the locks of both identities, in the turn's batch.
    pub moves: Vec<IdentityChange>,
    /// The replies are a staff member's answer from the console, not the engine's: [`commit`]
    /// writes them as the studio's history rows ([`Direction::Staff`]) to the customer as they
    /// are under the lock, addressed to the customer's current number or user id.
    pub by_staff: bool,
}

impl Effects {
    /// A turn that changes nothing but what the channel retires (reactions, system notices, a
    /// dropped sender).
    pub fn nothing(
        pseudonym: Pseudonym,
        address: &str,
        at: Timestamp,
        outcome: TurnOutcome,
    ) -> Effects {
        Effects {
            pseudonym,
            address: address.to_string(),
            at,
            new_contact: false,
            record: None,
            replies: Vec::new(),
            reply_rows: Vec::new(),
            alerts: Vec::new(),
            audit: Vec::new(),
            funnel: Vec::new(),
            sources: Vec::new(),
            outcome,
            moves: Vec::new(),
            by_staff: false,
        }
    }

    /// A staff member's answer `text` to customer `pseudonym`, with its audit entry (actor: the
    /// staff member). The address is filled in by [`commit`] from the record.
    pub fn staff_reply(
        pseudonym: Pseudonym,
        at: Timestamp,
        text: String,
        entry: NewEntry,
    ) -> Effects {
        let mut effects = Effects::nothing(pseudonym, "", at, TurnOutcome::Conversed);
        effects.replies.push(text);
        effects.audit.push(entry);
        effects.by_staff = true;
        effects
    }
}

impl std::fmt::Debug for Effects {
    // Reply texts are personal data: counts only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Effects")
            .field("pseudonym", &self.pseudonym)
            .field("new_contact", &self.new_contact)
            .field("record", &self.record.is_some())
            .field("replies", &self.replies.len())
            .field("alerts", &self.alerts)
            .field("audit", &self.audit.len())
            .field("funnel", &self.funnel)
            .field("outcome", &self.outcome)
            .field("moves", &self.moves)
            .field("by_staff", &self.by_staff)
            .finish()
    }
}

/// What the engine tells the channel while it decides a turn, before the effects exist.
pub trait Progress {
    /// A reply will follow, and the work on it (the model call) starts now. Called at most once
    /// per turn, and never for a turn that stays silent (reactions, system notices, paused,
    /// handed-over or opted-out contacts, the hourly limit): the channel shows the typing
    /// indicator from here until the turn is decided.
    fn replying(&self);
}

/// Nobody is watching (unit tests, the terminal chat).
impl Progress for () {
    fn replying(&self) {}
}

/// Decides a turn (the conversation engine in the daemon). Blocking: may call the model and
/// MagicLine. Writes nothing; an error means the burst stays in the inbox and the channel tries
/// it again later.
pub trait Decide: Send + Sync {
    /// The effects of answering `burst` now; `progress` learns when a reply is being prepared.
    /// An error may carry a [`FailureKind`] as context, which names it in the retry metric.
    fn decide(&self, burst: &Burst, progress: &dyn Progress) -> anyhow::Result<Effects>;

    /// The effects of a burst that failed on every attempt (`reason`: its [`FailureKind`]):
    /// what the contact wrote is recorded and, where a reply was due, the contact is handed to
    /// staff with a [`AlertKind::TurnFailed`] alert, without the model or MagicLine.
    fn give_up(&self, burst: &Burst, reason: &'static str) -> anyhow::Result<Effects>;
}

/// What kind of failure stopped a turn (`model`, `booking`, `store`, `audit`, …): attached by
/// the engine to its errors as context, so the channel can name retries without knowing the
/// engine's error type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureKind(pub &'static str);

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "turn failed ({})", self.0)
    }
}

/// The kind of a failed turn's error, as a metric label: the engine's [`FailureKind`], a failed
/// commit's part, else `other`.
pub fn failure_kind(e: &anyhow::Error) -> &'static str {
    if let Some(kind) = e.downcast_ref::<FailureKind>() {
        return kind.0;
    }
    match e.downcast_ref::<CommitError>() {
        Some(CommitError::Store(_)) => "store",
        Some(CommitError::Audit(_)) => "audit",
        // Only a staff answer is refused so; a turn of the contact's never is.
        Some(CommitError::NotAnswerable(_)) => "other",
        None if e.downcast_ref::<crate::store::StoreError>().is_some() => "store",
        None => "other",
    }
}
