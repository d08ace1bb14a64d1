//! The customer record: lead-funnel stage, bot mode, the seed's profile fields and the contact's
//! phone number. Row key: the pseudonym. Value: a small clear header (stage, mode, timestamps —
//! what retention and the funnel statistics need without opening anything) followed by the sealed
//! body (phone number, names, profile, conversation state).

use std::collections::BTreeMap;
use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::crypto::Pseudonym;

/// Where a contact stands in the lead funnel (the seed's three statuses).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// "neuer Interessent": first contact, name not known yet.
    #[default]
    NewLead,
    /// "Name bekannt": first name known.
    NameKnown,
    /// "Probetraining gebucht": a trial training is booked.
    TrialBooked,
    /// "Mitglied": an existing member of the studio, never offered a trial.
    Member,
}

impl Stage {
    /// The German label the persona prompt and staff see.
    pub fn label_de(self) -> &'static str {
        match self {
            Stage::NewLead => "neuer Interessent",
            Stage::NameKnown => "Name bekannt",
            Stage::TrialBooked => "Probetraining gebucht",
            Stage::Member => "Mitglied",
        }
    }

    /// The stage from its code (`new_lead`, …) or its German label.
    pub fn parse(s: &str) -> Option<Stage> {
        match s {
            "new_lead" | "neuer Interessent" => Some(Stage::NewLead),
            "name_known" | "Name bekannt" => Some(Stage::NameKnown),
            "trial_booked" | "Probetraining gebucht" => Some(Stage::TrialBooked),
            "member" | "Mitglied" => Some(Stage::Member),
            _ => None,
        }
    }
}

/// Whether the bot answers this contact.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "snake_case")]
pub enum BotMode {
    /// The assistant answers.
    #[default]
    Active,
    /// Handed over to staff (complaint, cancellation, contract question): no bot replies.
    Escalated,
    /// Paused by an admin: no bot replies.
    Paused,
    /// The contact opted out ("STOP"): silence until they write again on their own.
    OptedOut,
}

impl BotMode {
    /// The assistant may answer (only in [`BotMode::Active`]).
    pub fn answers(self) -> bool {
        matches!(self, BotMode::Active)
    }
}

/// The seed's profile fields. Every field is optional; the model fills them over time.
#[derive(Serialize, Deserialize, Clone, Default, PartialEq)]
#[serde(default)]
pub struct Profile {
    /// First name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vorname: Option<String>,
    /// Surname.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nachname: Option<String>,
    /// E-mail address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Age in years.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alter: Option<u8>,
    /// Gender.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub geschlecht: Option<String>,
    /// Where the person lives.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wohnort: Option<String>,
    /// Occupation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beruf: Option<String>,
    /// What the person wants to achieve (lose weight, get fit, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fitness_ziel: Option<String>,
    /// How fit the person says they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fitness_level: Option<String>,
    /// How often the person trains, or wants to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trainingsfrequenz: Option<String>,
    /// Health restrictions the trainer should know about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gesundheitliche_einschraenkungen: Option<String>,
    /// Whether price matters much to the person.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_bewusst: Option<String>,
    /// Whether the person said they are a member of the studio (`ja`/`nein`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mitglied: Option<String>,
    /// When the person can train (days, times of day).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zeitfenster: Option<String>,
    /// How soon the person wants to start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dringlichkeit: Option<String>,
    /// How the person found the studio.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wie_gefunden: Option<String>,
    /// How interested the person seems.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interesse_level: Option<String>,
    /// Date of the booked trial training.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probetraining_datum: Option<String>,
    /// The start the person wished for a trial that is not booked yet (Europe/Berlin, RFC 9557
    /// like `probetraining_datum`); kept across messages so the booking fires once the rest of
    /// the data is there. Set by the engine from the wish, never by the model's profile facts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wunschtermin: Option<String>,
    /// The person's customer id in MagicLine, once known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub magicline_customer_id: Option<i64>,
}

impl fmt::Debug for Profile {
    // Personal data never reaches a log through Debug: only which fields are known.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = serde_json::to_value(self).unwrap_or_default();
        let keys: Vec<&String> = v
            .as_object()
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        write!(f, "Profile{{known: {keys:?}}}")
    }
}

/// Conversation state the engine keeps between messages.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct ConversationState {
    /// The AI disclosure has been given to this contact.
    pub disclosed_ai: bool,
    /// Free slots offered after a taken one, as MagicLine date-time strings, in offered order.
    pub offered_slots: Vec<String>,
    /// Engine-specific extra state (kept opaque here).
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// Clear header of a customer row: no personal data, enough for retention and statistics.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct CustomerMeta {
    /// Where the contact stands in the lead funnel.
    pub stage: Stage,
    /// Whether the bot answers.
    pub mode: BotMode,
    /// First message from or to the contact.
    pub first_contact: Timestamp,
    /// Last message from or to the contact.
    pub last_contact: Timestamp,
    /// Last message *from* the contact (WhatsApp's 24-hour window starts there).
    pub last_inbound: Option<Timestamp>,
    /// A trial was booked at some point (retention keeps booked customers longer).
    pub ever_booked: bool,
    /// Sequence number of the next history row.
    #[serde(default)]
    pub next_message_seq: u64,
    /// A first contact's first message, until the first reply (the assistant's or staff's)
    /// goes out; then the wait is counted in `stats` and this is cleared. Unset on records from
    /// before it was kept, so they are never counted.
    #[serde(default)]
    pub awaiting_first_reply: Option<Timestamp>,
}

/// Where a lead came from: the `referral` of a click-to-WhatsApp ad or post, as WhatsApp sent it.
/// Kept sealed like the rest of the body: the click id and the time of the click are about the
/// person. Only the source's kind and id reach the clear counters (`stats`).
#[derive(Serialize, Deserialize, Clone, Default, PartialEq, Eq)]
#[serde(default)]
pub struct LeadSource {
    /// `ad` or `post`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_type: Option<String>,
    /// The ad's or post's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_id: Option<String>,
    /// Where the ad or post leads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_url: Option<String>,
    /// The ad's headline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headline: Option<String>,
    /// The ad's text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Meta's click id (`ctwa_clid`), for reporting the conversion back to Meta.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ctwa_clid: Option<String>,
    /// `image` or `video`, when the ad showed one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The ad's image or video.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_url: Option<String>,
    /// The video's thumbnail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thumbnail_url: Option<String>,
}

impl fmt::Debug for LeadSource {
    // The click id is about the person: kind and id only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LeadSource{{{:?} {:?}}}",
            self.source_type, self.source_id
        )
    }
}

/// Sealed part of a customer row.
#[derive(Serialize, Deserialize, Clone, Default, PartialEq)]
#[serde(default)]
pub struct CustomerBody {
    /// Normalised phone number (digits, international form): needed to answer. Empty for a
    /// contact known only by WhatsApp user id.
    pub phone: String,
    /// The contact's WhatsApp business-scoped user id (`DE.…`), when they wrote with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The WhatsApp profile name, as sent by WhatsApp.
    pub contact_name: Option<String>,
    /// The contact's parent user id (`DE.ENT.…`), when WhatsApp sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_user_id: Option<String>,
    /// The contact's WhatsApp `@username`, when they have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The click-to-WhatsApp ad or post the contact came from (the latest one they came through).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lead_source: Option<LeadSource>,
    /// What the model learned about the person.
    pub profile: Profile,
    /// Where the conversation stands.
    pub conversation: ConversationState,
}

impl fmt::Debug for CustomerBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CustomerBody{{phone: ***, profile: {:?}}}", self.profile)
    }
}

/// A whole customer as the rest of the daemon sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Customer {
    /// The row key: the pseudonym of the phone number.
    pub pseudonym: Pseudonym,
    /// The clear header.
    pub meta: CustomerMeta,
    /// The sealed body.
    pub body: CustomerBody,
}

impl Customer {
    /// Where the contact is answered now: the phone number, else the WhatsApp user id (a
    /// contact who withheld the number); `None` for a record with neither.
    pub fn address(&self) -> Option<&str> {
        if self.body.phone.is_empty() {
            self.body.user_id.as_deref()
        } else {
            Some(&self.body.phone)
        }
    }

    /// A fresh record for a first contact at `now`; `address` is a phone number or a WhatsApp
    /// user id.
    pub fn new(pseudonym: Pseudonym, address: &str, now: Timestamp) -> Customer {
        let user_id =
            super::address::is_valid_address(address) == Some(super::address::AddressKind::UserId);
        Customer {
            pseudonym,
            meta: CustomerMeta {
                stage: Stage::NewLead,
                mode: BotMode::Active,
                first_contact: now,
                last_contact: now,
                last_inbound: None,
                ever_booked: false,
                next_message_seq: 0,
                awaiting_first_reply: None,
            },
            body: CustomerBody {
                phone: if user_id {
                    String::new()
                } else {
                    super::crypto::normalise_phone(address)
                },
                user_id: user_id.then(|| address.to_string()),
                ..CustomerBody::default()
            },
        }
    }

    /// The label shown as "status" (stage, or the mode when the bot is not answering).
    pub fn status_label(&self) -> &'static str {
        match self.meta.mode {
            BotMode::Active => self.meta.stage.label_de(),
            BotMode::Escalated => "an Mitarbeiter übergeben",
            BotMode::Paused => "pausiert",
            BotMode::OptedOut => "abgemeldet",
        }
    }
}

/// Encodes a row value: `u16 header length || header JSON || sealed body`.
pub(crate) fn encode_row(meta: &CustomerMeta, sealed_body: &[u8]) -> Vec<u8> {
    let header = serde_json::to_vec(meta).expect("meta serialises");
    let mut out = Vec::with_capacity(2 + header.len() + sealed_body.len());
    out.extend_from_slice(&(header.len() as u16).to_be_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(sealed_body);
    out
}

/// Splits a row value into its clear header and the sealed body.
pub(crate) fn decode_row(value: &[u8]) -> Option<(CustomerMeta, &[u8])> {
    let len = u16::from_be_bytes(value.get(..2)?.try_into().ok()?) as usize;
    let header = value.get(2..2 + len)?;
    let meta = serde_json::from_slice(header).ok()?;
    Some((meta, &value[2 + len..]))
}
