//! Webhook payloads of the WhatsApp Cloud API: the serde shape of the `messages` webhook envelope
//! and its normalisation into [`Event`]s (inbound messages, delivery statuses, account errors).
//!
//! Meta adds fields and message types without notice, so parsing is lenient about everything it
//! does not need: unknown fields are ignored, unknown message types become
//! [`Content::Unsupported`], changes of other webhook fields are skipped. It is strict only about
//! what a message cannot be handled without (its id, its sender, its timestamp) and about the
//! envelope itself. Error values never quote payload content, because payloads carry phone numbers
//! and message text.
//!
//! Since 2026 a sender may hide their phone number behind a username; such messages carry only a
//! business-scoped user id (BSUID, `from_user_id`). [`InboundMessage::from`] is then the BSUID,
//! which the Graph API accepts as a `recipient` (see `graph`). Their `@username`, when the contact
//! entry carries one, is kept in [`InboundMessage::username`].
//!
//! A message from a click-to-WhatsApp ad carries `referral` (the ad's id, headline, click id …),
//! kept as [`InboundMessage::referral`]. Coexistence numbers (the WhatsApp Business app and the
//! Cloud API on one number) also receive `edit` and `revoke` messages about earlier ones.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;

pub use crate::store::customers::LeadSource;

/// The `object` value of every WhatsApp Business Account webhook.
pub const OBJECT_WHATSAPP: &str = "whatsapp_business_account";
/// The webhook field that carries messages, statuses and errors.
pub const FIELD_MESSAGES: &str = "messages";
/// The webhook field that announces a template's change of category.
pub const FIELD_TEMPLATE_CATEGORY: &str = "template_category_update";

/// Why a webhook body could not be turned into events. Never contains payload content.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PayloadError {
    /// Not JSON, or JSON of the wrong shape at envelope level.
    #[error("invalid webhook JSON ({category} at line {line}, column {column})")]
    Json {
        /// `io`, `syntax`, `data` or `eof`, as serde_json classifies the error.
        category: &'static str,
        /// Line of the error in the body.
        line: usize,
        /// Column of the error in the body.
        column: usize,
    },
    /// Valid JSON, but `object` is not `whatsapp_business_account`.
    #[error("unexpected webhook object {0:?}")]
    UnexpectedObject(String),
    /// A message or status lacks a field it cannot be handled without.
    #[error("malformed webhook: {0}")]
    Malformed(&'static str),
}

impl PayloadError {
    /// Short, stable identifier for audit records and metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            PayloadError::Json { .. } => "payload_json",
            PayloadError::UnexpectedObject(_) => "payload_object",
            PayloadError::Malformed(_) => "payload_malformed",
        }
    }

    fn from_json(err: &serde_json::Error) -> Self {
        // Only the category and position: serde_json's message may quote payload strings.
        let category = match err.classify() {
            serde_json::error::Category::Io => "io",
            serde_json::error::Category::Syntax => "syntax",
            serde_json::error::Category::Data => "data",
            serde_json::error::Category::Eof => "eof",
        };
        PayloadError::Json {
            category,
            line: err.line(),
            column: err.column(),
        }
    }
}

/// One thing a webhook told us, in payload order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A message a user sent.
    Message(InboundMessage),
    /// A delivery status of a message we sent.
    Status(StatusUpdate),
    /// An error about the business account or app (`value.errors[]`), not tied to a message.
    Error(WebhookError),
    /// A template's category changes or will change (`template_category_update`).
    TemplateCategory(TemplateCategoryUpdate),
    /// A message or status of this post that could not be read (its reason, never its content).
    /// Only produced beside readable events: a post with nothing readable is an error, and Meta
    /// would otherwise send a post with one bad message again and again for days.
    Skipped {
        /// Why, as in [`PayloadError::Malformed`].
        reason: String,
    },
}

/// A `template_category_update` webhook value. Meta sends two kinds: an impending change, about
/// a day ahead (`correct_category` set, `new_category` still the current category), and a
/// completed change (`previous_category` and `new_category`). Categories are Meta's spelling
/// (`MARKETING`, `UTILITY`, `AUTHENTICATION`), kept as sent so a future category parses too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateCategoryUpdate {
    /// `message_template_id` (a number on the wire), as text.
    pub template_id: Option<String>,
    /// `message_template_name`.
    pub name: String,
    /// `message_template_language` (`de`, `en_US`).
    pub language: String,
    /// `previous_category`: only in a completed change.
    pub previous_category: Option<String>,
    /// `new_category`: the new category, or in an impending change the current one.
    pub new_category: String,
    /// `correct_category`: only in an impending change, the category it will get.
    pub correct_category: Option<String>,
}

/// A message a WhatsApp user sent to the business number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboundMessage {
    /// `wamid.…`; unique per message, the key for deduplication and mark-as-read.
    pub id: String,
    /// Address to reply to: the sender's phone number (`wa_id`), or their BSUID when the phone
    /// number is withheld.
    pub from: String,
    /// The sender's business-scoped user id, when Meta sent one.
    #[serde(default)]
    pub user_id: Option<String>,
    /// The sender's parent user id (`DE.ENT.…`, shared across a business portfolio's numbers),
    /// when Meta sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_user_id: Option<String>,
    /// Unix seconds at which WhatsApp received the message.
    pub timestamp: i64,
    /// The business phone number id the message was sent to.
    pub phone_number_id: String,
    /// The sender's WhatsApp profile name, if the payload carried one.
    #[serde(default)]
    pub contact_name: Option<String>,
    /// Id of the message this one replies to (quoted reply, button tap on a message).
    #[serde(default)]
    pub reply_to: Option<String>,
    /// The sender's WhatsApp `@username`, when the contact entry carried one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The click-to-WhatsApp ad or post the contact came from (`referral`), when present
    /// (boxed: most messages have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referral: Option<Box<LeadSource>>,
    /// Error codes WhatsApp attached to the message (`errors[].code`): 131051 on an
    /// `unsupported` message, 131052 when its media could not be fetched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub error_codes: Vec<i64>,
    /// What the message contains.
    pub content: Content,
}

/// What an inbound message contains, reduced to what the assistant can act on.
///
/// Location and shared contacts keep no coordinates or vCards: the assistant only answers them
/// with a fallback, and personal data it does not use is not stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Content {
    /// A plain text message: its body.
    Text(String),
    /// Tap on a reply button of an interactive message.
    ButtonReply {
        /// The button id set when the message was sent.
        id: String,
        /// The button label the user saw.
        title: String,
    },
    /// Choice from an interactive list message.
    ListReply {
        /// The row id set when the list was sent.
        id: String,
        /// The row title the user saw.
        title: String,
        /// The row description, if the row had one.
        description: Option<String>,
    },
    /// Tap on a quick-reply button of a template message.
    TemplateButton {
        /// The payload set in the template.
        payload: String,
        /// The button label the user saw.
        text: String,
    },
    /// A reaction to one of our messages; `emoji` is `None` when the user removed it.
    Reaction {
        /// The `wamid.…` of the message reacted to.
        message_id: String,
        /// The emoji, or `None` when the reaction was removed.
        emoji: Option<String>,
    },
    /// An image, audio file, voice note, video, document or sticker.
    Media {
        /// Which kind of media.
        kind: MediaKind,
        /// The caption the user wrote, if any.
        caption: Option<String>,
        /// The file's MIME type as WhatsApp reports it.
        mime_type: Option<String>,
        /// The Graph API id of the media file.
        media_id: Option<String>,
    },
    /// A shared location (coordinates are not kept).
    Location,
    /// Shared contact cards (the cards are not kept).
    Contacts {
        /// How many contacts were shared.
        count: usize,
    },
    /// The contact opened the chat for the first time (`request_welcome`); nothing was written.
    Welcome,
    /// A WhatsApp Flow was submitted (`interactive.nfm_reply`): the form's answers as text lines.
    FlowReply {
        /// The flow's name (`flow`, or what the business set), when given.
        name: Option<String>,
        /// The answers, one `field: value` line each, sorted by field name.
        text: String,
    },
    /// The contact edited an earlier message (Coexistence numbers only).
    Edit {
        /// The `wamid.…` of the edited message.
        original_id: String,
        /// The new text (text body or caption), when the edit carries one.
        text: Option<String>,
    },
    /// The contact deleted an earlier message for everyone (Coexistence numbers only).
    Revoke {
        /// The `wamid.…` of the deleted message.
        original_id: String,
    },
    /// A message type this module does not model (`order`, `unsupported`, new types,
    /// interactive replies other than button/list/flow, …). Holds the type name.
    Unsupported(String),
    /// A system notice, e.g. `user_changed_number` (then `new_wa_id` is the new number) or
    /// `user_changed_user_id` (then `new_user_id` is the new business-scoped user id). The
    /// notice's parent user ids are not read: a customer is keyed by their own user id, and the
    /// parent id is taken from their next message ([`InboundMessage::parent_user_id`]).
    System {
        /// The notice type (`user_changed_number`, …).
        kind: String,
        /// The sender's new number after `user_changed_number` (`system.wa_id`, formerly
        /// `system.new_wa_id`).
        new_wa_id: Option<String>,
        /// The sender's new user id after `user_changed_user_id` (`system.user_id`).
        #[serde(default)]
        new_user_id: Option<String>,
        /// The user id it replaces (`system.previous_user_id`).
        #[serde(default)]
        previous_user_id: Option<String>,
    },
}

/// Kind of a media message. Voice notes arrive as `audio` with `voice: true`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaKind {
    /// An audio file.
    Audio,
    /// A voice note (`audio` with `voice: true`).
    Voice,
    /// A picture.
    Image,
    /// A video.
    Video,
    /// A document (PDF and the like).
    Document,
    /// A sticker.
    Sticker,
}

impl MediaKind {
    /// The lowercase name used in logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            MediaKind::Audio => "audio",
            MediaKind::Voice => "voice",
            MediaKind::Image => "image",
            MediaKind::Video => "video",
            MediaKind::Document => "document",
            MediaKind::Sticker => "sticker",
        }
    }
}

impl Content {
    /// Text the assistant should answer: the message text, what the user tapped (button or
    /// list title, template button text, else its payload), a media caption or a submitted
    /// form's answers. `None` for everything else and for blank text.
    pub fn as_engine_text(&self) -> Option<&str> {
        let text = match self {
            Content::Text(body) => body.as_str(),
            Content::Media {
                caption: Some(caption),
                ..
            } => caption.as_str(),
            Content::FlowReply { text, .. } => text.as_str(),
            Content::ButtonReply { title, .. } | Content::ListReply { title, .. } => title.as_str(),
            Content::TemplateButton { payload, text } => {
                if text.trim().is_empty() {
                    payload.as_str()
                } else {
                    text.as_str()
                }
            }
            _ => return None,
        };
        (!text.trim().is_empty()).then_some(text)
    }

    /// Whether the message deserves the friendly "I can only read text" answer: it is neither
    /// something to answer with the engine nor a reaction, edit or revoke (recorded silently)
    /// nor the opening of a chat (answered with the greeting).
    pub fn needs_fallback_answer(&self) -> bool {
        !matches!(
            self,
            Content::Reaction { .. }
                | Content::Edit { .. }
                | Content::Revoke { .. }
                | Content::Welcome
        ) && self.as_engine_text().is_none()
    }

    /// Stable type label for logs and metrics (never the content itself).
    pub fn kind(&self) -> &'static str {
        match self {
            Content::Text(_) => "text",
            Content::ButtonReply { .. } => "button_reply",
            Content::ListReply { .. } => "list_reply",
            Content::TemplateButton { .. } => "template_button",
            Content::Reaction { .. } => "reaction",
            Content::Media { kind, .. } => kind.as_str(),
            Content::Location => "location",
            Content::Contacts { .. } => "contacts",
            Content::Welcome => "request_welcome",
            Content::FlowReply { .. } => "flow_reply",
            Content::Edit { .. } => "edit",
            Content::Revoke { .. } => "revoke",
            Content::Unsupported(_) => "unsupported",
            Content::System { .. } => "system",
        }
    }
}

/// Delivery state of a message we sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Accepted by WhatsApp's servers.
    Sent,
    /// Delivered to the recipient's phone.
    Delivered,
    /// May arrive without a preceding `Delivered` (read implies delivered).
    Read,
    /// Could not be delivered; see [`StatusUpdate::errors`].
    Failed,
    /// Statuses this module does not model (`played`, `deleted`, future values).
    Other(String),
}

impl DeliveryStatus {
    fn parse(s: &str) -> Self {
        match s {
            "sent" => DeliveryStatus::Sent,
            "delivered" => DeliveryStatus::Delivered,
            "read" => DeliveryStatus::Read,
            "failed" => DeliveryStatus::Failed,
            other => DeliveryStatus::Other(truncate(other, 32)),
        }
    }
}

/// A status webhook for a message we sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusUpdate {
    /// The `wamid.…` the Graph API returned when we sent the message.
    pub message_id: String,
    /// The recipient's phone number, or their BSUID when the number is withheld.
    pub recipient: String,
    /// The recipient's business-scoped user id, when Meta sent one.
    #[serde(default)]
    pub recipient_user_id: Option<String>,
    /// The new delivery state.
    pub status: DeliveryStatus,
    /// Unix seconds of the status change.
    pub timestamp: i64,
    /// The business phone number id the message was sent from.
    pub phone_number_id: String,
    /// Why the message failed (usually only on `Failed`).
    #[serde(default)]
    pub errors: Vec<ApiErrorInfo>,
}

/// An error object as it appears in webhooks (`code`, `title`, `message`, `error_data.details`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorInfo {
    /// Graph API error code.
    pub code: i64,
    /// Short error title.
    pub title: String,
    /// Error message.
    pub message: String,
    /// Further details (`error_data.details`), when given.
    #[serde(default)]
    pub details: Option<String>,
}

/// An account-level error webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookError {
    /// The business phone number id the error concerns.
    pub phone_number_id: String,
    /// The error itself.
    pub error: ApiErrorInfo,
}

// ---- wire shapes -------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(default)]
    object: Option<String>,
    #[serde(default)]
    entry: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
struct Entry {
    #[serde(default)]
    changes: Vec<Change>,
}

#[derive(Debug, Deserialize)]
struct Change {
    #[serde(default)]
    field: Option<String>,
    #[serde(default)]
    value: Value,
}

#[derive(Debug, Default, Deserialize)]
struct ChangeValue {
    #[serde(default)]
    metadata: Option<Metadata>,
    #[serde(default)]
    contacts: Vec<Value>,
    #[serde(default)]
    messages: Vec<Value>,
    #[serde(default)]
    statuses: Vec<Value>,
    #[serde(default)]
    errors: Vec<Value>,
}

#[derive(Debug, Deserialize)]
struct Metadata {
    #[serde(default)]
    phone_number_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawContact {
    #[serde(default)]
    wa_id: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    parent_user_id: Option<String>,
    #[serde(default)]
    profile: Option<RawProfile>,
}

#[derive(Debug, Deserialize)]
struct RawProfile {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    username: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawMessage {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    from_user_id: Option<String>,
    #[serde(default)]
    from_parent_user_id: Option<String>,
    #[serde(default)]
    timestamp: Option<Timestamp>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    context: Option<RawContext>,
    #[serde(default)]
    referral: Option<Value>,
    #[serde(default)]
    errors: Vec<Value>,
    /// Type-specific objects (`text`, `image`, `interactive`, …), read by [`content_of`].
    #[serde(flatten)]
    rest: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
struct RawContext {
    #[serde(default)]
    id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawStatus {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    timestamp: Option<Timestamp>,
    #[serde(default)]
    recipient_id: Option<String>,
    #[serde(default)]
    recipient_user_id: Option<String>,
    #[serde(default)]
    errors: Vec<Value>,
}

/// Meta sends Unix seconds as decimal strings; accept numbers too.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Timestamp {
    Text(String),
    Number(i64),
}

impl Timestamp {
    fn seconds(&self) -> Option<i64> {
        match self {
            Timestamp::Text(s) => s.trim().parse().ok(),
            Timestamp::Number(n) => Some(*n),
        }
    }
}

// ---- parsing -----------------------------------------------------------------------------------

/// Parses a webhook body into events, in payload order. Changes of fields other than
/// `messages` produce no events.
pub fn parse(body: &[u8]) -> Result<Vec<Event>, PayloadError> {
    let envelope: Envelope =
        serde_json::from_slice(body).map_err(|e| PayloadError::from_json(&e))?;
    match envelope.object.as_deref() {
        Some(OBJECT_WHATSAPP) => {}
        Some(other) => return Err(PayloadError::UnexpectedObject(truncate(other, 64))),
        None => return Err(PayloadError::Malformed("object missing")),
    }
    let mut events = Vec::new();
    let mut first_skip = None;
    for change in envelope.entry.iter().flat_map(|e| &e.changes) {
        if change.field.as_deref() == Some(FIELD_TEMPLATE_CATEGORY) {
            events.push(Event::TemplateCategory(template_category(&change.value)?));
            continue;
        }
        if change.field.as_deref() != Some(FIELD_MESSAGES) {
            continue;
        }
        let value = ChangeValue::deserialize(&change.value)
            .map_err(|_| PayloadError::Malformed("change value"))?;
        parse_change(value, &mut events, &mut first_skip)?;
    }
    let readable = events.iter().any(|e| !matches!(e, Event::Skipped { .. }));
    match first_skip {
        Some(e) if !readable => Err(e),
        _ => Ok(events),
    }
}

fn template_category(value: &Value) -> Result<TemplateCategoryUpdate, PayloadError> {
    let text = |name: &str| {
        value.get(name).and_then(|v| match v {
            Value::String(s) => Some(truncate(s.trim(), 512)),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
    };
    let malformed = PayloadError::Malformed("template category update");
    Ok(TemplateCategoryUpdate {
        template_id: text("message_template_id"),
        name: text("message_template_name")
            .filter(|s| !s.is_empty())
            .ok_or(malformed.clone())?,
        language: text("message_template_language")
            .filter(|s| !s.is_empty())
            .ok_or(malformed.clone())?,
        previous_category: text("previous_category"),
        new_category: text("new_category")
            .filter(|s| !s.is_empty())
            .ok_or(malformed)?,
        correct_category: text("correct_category"),
    })
}

/// Adds the events of one `messages` change to `events`. An unreadable message or status becomes
/// an [`Event::Skipped`]; the first such error is kept in `first_skip`.
fn parse_change(
    value: ChangeValue,
    events: &mut Vec<Event>,
    first_skip: &mut Option<PayloadError>,
) -> Result<(), PayloadError> {
    let phone_number_id = value
        .metadata
        .and_then(|m| m.phone_number_id)
        .unwrap_or_default();
    let contacts: Vec<RawContact> = value
        .contacts
        .iter()
        .filter_map(|c| RawContact::deserialize(c).ok())
        .collect();

    // One unreadable item does not cost the others: they are taken, it is reported.
    let mut skipped = |e: PayloadError| {
        let reason = match &e {
            PayloadError::Malformed(reason) => (*reason).to_string(),
            other => other.reason().to_string(),
        };
        first_skip.get_or_insert(e);
        Event::Skipped { reason }
    };
    for raw in &value.messages {
        let event = RawMessage::deserialize(raw)
            .map_err(|_| PayloadError::Malformed("message shape"))
            .and_then(|msg| inbound_message(msg, &phone_number_id, &contacts))
            .map_or_else(&mut skipped, Event::Message);
        events.push(event);
    }
    for raw in &value.statuses {
        let event = RawStatus::deserialize(raw)
            .map_err(|_| PayloadError::Malformed("status shape"))
            .and_then(|st| status_update(st, &phone_number_id))
            .map_or_else(&mut skipped, Event::Status);
        events.push(event);
    }
    for raw in &value.errors {
        let error = error_info(raw).ok_or(PayloadError::Malformed("error shape"))?;
        events.push(Event::Error(WebhookError {
            phone_number_id: phone_number_id.clone(),
            error,
        }));
    }
    Ok(())
}

fn inbound_message(
    msg: RawMessage,
    phone_number_id: &str,
    contacts: &[RawContact],
) -> Result<InboundMessage, PayloadError> {
    let id = non_empty(msg.id).ok_or(PayloadError::Malformed("message id missing"))?;
    let user_id = non_empty(msg.from_user_id);
    let phone = non_empty(msg.from);
    let from = phone
        .clone()
        .or_else(|| user_id.clone())
        .ok_or(PayloadError::Malformed("message sender missing"))?;
    let timestamp = msg
        .timestamp
        .as_ref()
        .and_then(Timestamp::seconds)
        .ok_or(PayloadError::Malformed("message timestamp missing"))?;
    let contact = contact_for(contacts, phone.as_deref(), user_id.as_deref());
    let parent_user_id = non_empty(msg.from_parent_user_id)
        .or_else(|| contact.and_then(|c| c.parent_user_id.clone()))
        .filter(|p| crate::store::address::is_valid_address(p).is_some());
    let profile = contact.and_then(|c| c.profile.as_ref());
    let contact_name = profile
        .and_then(|p| p.name.clone())
        .filter(|n| !n.trim().is_empty());
    let username = profile
        .and_then(|p| p.username.as_deref())
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| truncate(n, MAX_USERNAME_CHARS));
    let kind = msg.kind.as_deref().unwrap_or("unknown");
    let content = content_of(kind, &msg.rest);
    let referral = msg.referral.as_ref().and_then(lead_source).map(Box::new);
    let error_codes = msg
        .errors
        .iter()
        .filter_map(error_info)
        .map(|e| e.code)
        .collect();
    Ok(InboundMessage {
        id,
        from,
        user_id,
        timestamp,
        phone_number_id: phone_number_id.to_owned(),
        contact_name,
        reply_to: msg.context.and_then(|c| non_empty(c.id)),
        username,
        referral,
        parent_user_id,
        error_codes,
        content,
    })
}

/// Longest kept `@username` (WhatsApp allows far fewer characters; this bounds a bad payload).
const MAX_USERNAME_CHARS: usize = 64;
/// Longest kept referral text field (headline, body, URLs).
const MAX_REFERRAL_CHARS: usize = 500;
/// Longest kept answer of a submitted form, and most answers kept.
const MAX_FLOW_VALUE_CHARS: usize = 500;
const MAX_FLOW_FIELDS: usize = 30;

/// The ad or post a click-to-WhatsApp message came from; `None` when the object names nothing.
fn lead_source(v: &Value) -> Option<LeadSource> {
    let field = |name: &str| {
        str_at(v, name)
            .map(|s| truncate(s.trim(), MAX_REFERRAL_CHARS))
            .filter(|s| !s.is_empty())
    };
    let source = LeadSource {
        source_type: field("source_type"),
        source_id: field("source_id"),
        source_url: field("source_url"),
        headline: field("headline"),
        body: field("body"),
        ctwa_clid: field("ctwa_clid"),
        media_type: field("media_type"),
        media_url: field("image_url").or_else(|| field("video_url")),
        thumbnail_url: field("thumbnail_url"),
    };
    (source != LeadSource::default()).then_some(source)
}

/// The contact entry describing the sender; with a single entry (the normal case) that one.
fn contact_for<'a>(
    contacts: &'a [RawContact],
    phone: Option<&str>,
    user_id: Option<&str>,
) -> Option<&'a RawContact> {
    contacts
        .iter()
        .find(|c| {
            (phone.is_some() && c.wa_id.as_deref() == phone)
                || (user_id.is_some() && c.user_id.as_deref() == user_id)
        })
        .or(if contacts.len() == 1 {
            contacts.first()
        } else {
            None
        })
}

fn content_of(kind: &str, rest: &Map<String, Value>) -> Content {
    let obj = rest.get(kind);
    let field = |name: &str| obj.and_then(|o| str_at(o, name));
    match kind {
        "text" => Content::Text(field("body").unwrap_or_default()),
        "interactive" => interactive(obj),
        "button" => Content::TemplateButton {
            payload: field("payload").unwrap_or_default(),
            text: field("text").unwrap_or_default(),
        },
        "reaction" => Content::Reaction {
            message_id: field("message_id").unwrap_or_default(),
            emoji: field("emoji").filter(|e| !e.is_empty()),
        },
        "audio" | "voice" | "image" | "video" | "document" | "sticker" => {
            let voice = obj.and_then(|o| o.get("voice")).and_then(Value::as_bool) == Some(true);
            let kind = match kind {
                "audio" if voice => MediaKind::Voice,
                "audio" => MediaKind::Audio,
                "voice" => MediaKind::Voice,
                "image" => MediaKind::Image,
                "video" => MediaKind::Video,
                "document" => MediaKind::Document,
                _ => MediaKind::Sticker,
            };
            Content::Media {
                kind,
                caption: field("caption").filter(|c| !c.trim().is_empty()),
                mime_type: field("mime_type"),
                media_id: field("id"),
            }
        }
        "location" => Content::Location,
        "contacts" => Content::Contacts {
            count: rest
                .get("contacts")
                .and_then(Value::as_array)
                .map_or(0, Vec::len),
        },
        "request_welcome" => Content::Welcome,
        "edit" => {
            let original_id = field("original_message_id").unwrap_or_default();
            // The new version is a message object of its own (`text` or media with caption).
            let edited = obj.and_then(|o| o.get("message"));
            let text = edited.and_then(|m| {
                let kind = str_at(m, "type")?;
                let inner = m.as_object()?;
                content_of(&kind, inner).as_engine_text().map(str::to_owned)
            });
            Content::Edit { original_id, text }
        }
        "revoke" => Content::Revoke {
            original_id: field("original_message_id").unwrap_or_default(),
        },
        "system" => Content::System {
            kind: field("type")
                .map(|t| truncate(&t, 64))
                .unwrap_or_else(|| "unknown".to_owned()),
            new_wa_id: field("new_wa_id").or_else(|| field("wa_id")),
            new_user_id: field("user_id"),
            previous_user_id: field("previous_user_id"),
        },
        other => Content::Unsupported(truncate(other, 64)),
    }
}

fn interactive(obj: Option<&Value>) -> Content {
    let Some(obj) = obj else {
        return Content::Unsupported("interactive".to_owned());
    };
    let sub = str_at(obj, "type").unwrap_or_default();
    let reply = obj.get(sub.as_str());
    let field = |name: &str| reply.and_then(|r| str_at(r, name));
    match sub.as_str() {
        "button_reply" => Content::ButtonReply {
            id: field("id").unwrap_or_default(),
            title: field("title").unwrap_or_default(),
        },
        "list_reply" => Content::ListReply {
            id: field("id").unwrap_or_default(),
            title: field("title").unwrap_or_default(),
            description: field("description").filter(|d| !d.is_empty()),
        },
        "nfm_reply" => flow_reply(reply),
        other => Content::Unsupported(truncate(&format!("interactive.{other}"), 64)),
    }
}

/// A submitted WhatsApp Flow: `response_json` is a JSON object *in a string*; its answers become
/// `field: value` lines (the `flow_token` is ours, not an answer). A form whose JSON does not
/// parse keeps its `body` text, so nothing the contact sent is silently dropped.
fn flow_reply(reply: Option<&Value>) -> Content {
    let name = reply
        .and_then(|r| str_at(r, "name"))
        .filter(|n| !n.trim().is_empty());
    let answers: Option<Map<String, Value>> = reply
        .and_then(|r| str_at(r, "response_json"))
        .and_then(|j| serde_json::from_str(&j).ok());
    let mut lines: Vec<String> = answers
        .iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != "flow_token")
        .filter_map(|(k, v)| {
            let value = match v {
                Value::String(s) => s.trim().to_owned(),
                Value::Null => return None,
                Value::Array(items) => items
                    .iter()
                    .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                    .collect::<Vec<_>>()
                    .join(", "),
                other => other.to_string(),
            };
            (!value.is_empty()).then(|| {
                format!(
                    "{}: {}",
                    truncate(k, 64),
                    truncate(&value, MAX_FLOW_VALUE_CHARS)
                )
            })
        })
        .take(MAX_FLOW_FIELDS)
        .collect();
    if lines.is_empty() {
        if let Some(body) = reply
            .and_then(|r| str_at(r, "body"))
            .filter(|b| !b.trim().is_empty())
        {
            lines.push(truncate(body.trim(), MAX_FLOW_VALUE_CHARS));
        }
    }
    Content::FlowReply {
        name,
        text: lines.join("\n"),
    }
}

fn status_update(st: RawStatus, phone_number_id: &str) -> Result<StatusUpdate, PayloadError> {
    let message_id =
        non_empty(st.id).ok_or(PayloadError::Malformed("status message id missing"))?;
    let recipient_user_id = non_empty(st.recipient_user_id);
    let recipient = non_empty(st.recipient_id)
        .or_else(|| recipient_user_id.clone())
        .ok_or(PayloadError::Malformed("status recipient missing"))?;
    let status = st
        .status
        .as_deref()
        .map(DeliveryStatus::parse)
        .ok_or(PayloadError::Malformed("status missing"))?;
    let timestamp = st
        .timestamp
        .as_ref()
        .and_then(Timestamp::seconds)
        .ok_or(PayloadError::Malformed("status timestamp missing"))?;
    let errors = st.errors.iter().filter_map(error_info).collect();
    Ok(StatusUpdate {
        message_id,
        recipient,
        recipient_user_id,
        status,
        timestamp,
        phone_number_id: phone_number_id.to_owned(),
        errors,
    })
}

fn error_info(v: &Value) -> Option<ApiErrorInfo> {
    let code = v.get("code")?;
    let code = code
        .as_i64()
        .or_else(|| code.as_str().and_then(|s| s.parse().ok()))?;
    let title = str_at(v, "title").unwrap_or_default();
    let message = str_at(v, "message").unwrap_or_else(|| title.clone());
    let details = v.get("error_data").and_then(|d| str_at(d, "details"));
    Some(ApiErrorInfo {
        code,
        title,
        message,
        details,
    })
}

fn str_at(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PNID: &str = "106540352242922";

    fn envelope(value: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "object": "whatsapp_business_account",
            "entry": [{
                "id": "102290129340398",
                "changes": [{ "field": "messages", "value": value }]
            }]
        }))
        .unwrap()
    }

    fn message_value(message: Value) -> Value {
        json!({
            "messaging_product": "whatsapp",
            "metadata": { "display_phone_number": "15550783881", "phone_number_id": PNID },
            "contacts": [{ "profile": { "name": "Sheena Nelson" }, "wa_id": "16505551234" }],
            "messages": [message]
        })
    }

    fn only_message(message: Value) -> InboundMessage {
        let events = parse(&envelope(message_value(message))).unwrap();
        assert_eq!(events.len(), 1);
        match events.into_iter().next().unwrap() {
            Event::Message(m) => m,
            other => panic!("expected message, got {other:?}"),
        }
    }

    fn only_status(status: Value) -> StatusUpdate {
        let value = json!({
            "messaging_product": "whatsapp",
            "metadata": { "display_phone_number": "15550783881", "phone_number_id": PNID },
            "statuses": [status]
        });
        let events = parse(&envelope(value)).unwrap();
        assert_eq!(events.len(), 1);
        match events.into_iter().next().unwrap() {
            Event::Status(s) => s,
            other => panic!("expected status, got {other:?}"),
        }
    }

    #[test]
    fn text_message() {
        let m = only_message(json!({
            "from": "16505551234",
            "id": "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQUFERjg0NDEzNDdFODU3MUMxMAA=",
            "timestamp": "1749416383",
            "type": "text",
            "text": { "body": "Hallo, was kostet ein Probetraining?" }
        }));
        assert_eq!(
            m.id,
            "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQUFERjg0NDEzNDdFODU3MUMxMAA="
        );
        assert_eq!(m.from, "16505551234");
        assert_eq!(m.user_id, None);
        assert_eq!(m.timestamp, 1_749_416_383);
        assert_eq!(m.phone_number_id, PNID);
        assert_eq!(m.contact_name.as_deref(), Some("Sheena Nelson"));
        assert_eq!(m.reply_to, None);
        assert_eq!(
            m.content,
            Content::Text("Hallo, was kostet ein Probetraining?".into())
        );
        assert_eq!(
            m.content.as_engine_text(),
            Some("Hallo, was kostet ein Probetraining?")
        );
        assert!(!m.content.needs_fallback_answer());
        assert_eq!(m.content.kind(), "text");
    }

    #[test]
    fn text_with_context_numeric_timestamp_and_unknown_fields() {
        let m = only_message(json!({
            "from": "16505551234",
            "from_user_id": "US.13491208655302741918",
            "from_logical_id": "95000398405635",
            "id": "wamid.B",
            "timestamp": 1749416383,
            "type": "text",
            "text": { "body": "Ja", "future_flag": true },
            "context": { "from": "15550783881", "id": "wamid.ORIGINAL", "forwarded": false },
            "brand_new_field": { "nested": [1, 2, 3] }
        }));
        assert_eq!(m.timestamp, 1_749_416_383);
        assert_eq!(m.user_id.as_deref(), Some("US.13491208655302741918"));
        assert_eq!(m.from, "16505551234");
        assert_eq!(m.reply_to.as_deref(), Some("wamid.ORIGINAL"));
        assert_eq!(m.content.as_engine_text(), Some("Ja"));
    }

    #[test]
    fn username_sender_without_phone_number_replies_to_bsuid() {
        let value = json!({
            "messaging_product": "whatsapp",
            "metadata": { "display_phone_number": "15550783881", "phone_number_id": PNID },
            "contacts": [
                { "profile": { "name": "Other" }, "user_id": "US.1" },
                { "profile": { "name": "Jo", "username": "@jo" }, "user_id": "DE.99887766",
                  "parent_user_id": "DE.ENT.4455" }
            ],
            "messages": [{
                "from_user_id": "DE.99887766",
                "id": "wamid.U",
                "timestamp": "1749416383",
                "type": "text",
                "text": { "body": "Hi" }
            }]
        });
        let events = parse(&envelope(value)).unwrap();
        let Event::Message(m) = &events[0] else {
            panic!("expected message")
        };
        assert_eq!(m.from, "DE.99887766");
        assert_eq!(m.user_id.as_deref(), Some("DE.99887766"));
        assert_eq!(m.contact_name.as_deref(), Some("Jo"));
        assert_eq!(m.username.as_deref(), Some("@jo"));
        // The parent id from the contact entry; one that is no user id is not kept.
        assert_eq!(m.parent_user_id.as_deref(), Some("DE.ENT.4455"));
        let odd = only_message(json!({
            "from": "16505551234", "from_parent_user_id": "not an id", "id": "wamid.P",
            "timestamp": "1749416383", "type": "text", "text": { "body": "Hi" }
        }));
        assert_eq!(odd.parent_user_id, None);
    }

    #[test]
    fn interactive_button_and_list_replies() {
        let m = only_message(json!({
            "from": "16505551234", "id": "wamid.I1", "timestamp": "1749416383",
            "context": { "from": "15550783881", "id": "wamid.ASK" },
            "type": "interactive",
            "interactive": { "type": "button_reply", "button_reply": { "id": "slot-1", "title": "Morgen 18 Uhr" } }
        }));
        assert_eq!(
            m.content,
            Content::ButtonReply {
                id: "slot-1".into(),
                title: "Morgen 18 Uhr".into()
            }
        );
        assert_eq!(m.content.as_engine_text(), Some("Morgen 18 Uhr"));
        assert!(!m.content.needs_fallback_answer());

        let m = only_message(json!({
            "from": "16505551234", "id": "wamid.I2", "timestamp": "1749416383",
            "type": "interactive",
            "interactive": {
                "type": "list_reply",
                "list_reply": { "id": "course-yoga", "title": "Yoga", "description": "Dienstags 19 Uhr" }
            }
        }));
        assert_eq!(
            m.content,
            Content::ListReply {
                id: "course-yoga".into(),
                title: "Yoga".into(),
                description: Some("Dienstags 19 Uhr".into())
            }
        );
        assert_eq!(m.content.as_engine_text(), Some("Yoga"));

        let m = only_message(json!({
            "from": "16505551234", "id": "wamid.I3", "timestamp": "1749416383",
            "type": "interactive",
            "interactive": { "type": "call_permission_reply", "call_permission_reply": { "response": "accept" } }
        }));
        assert_eq!(
            m.content,
            Content::Unsupported("interactive.call_permission_reply".into())
        );
        assert!(m.content.needs_fallback_answer());
    }

    #[test]
    fn flow_reply_answers_are_read_as_text_fields() {
        let m = only_message(json!({
            "context": { "from": "15550783881", "id": "wamid.FLOWSENT" },
            "from": "16505551234", "id": "wamid.F1", "timestamp": "1749416383",
            "type": "interactive",
            "interactive": {
                "type": "nfm_reply",
                "nfm_reply": {
                    "name": "flow",
                    "body": "Sent",
                    "response_json": "{\"flow_token\": \"AQAAAAACS5FpgQ_cAAAAAD0QI3s.\", \"vorname\": \"Lena\", \"email\": \"lena@example.org\", \"ziele\": [\"abnehmen\", \"ruecken\"], \"alter\": 34, \"notiz\": null}"
                }
            }
        }));
        let Content::FlowReply { name, text } = &m.content else {
            panic!("expected a flow reply, got {:?}", m.content)
        };
        assert_eq!(name.as_deref(), Some("flow"));
        assert_eq!(
            text,
            "alter: 34\nemail: lena@example.org\nvorname: Lena\nziele: abnehmen, ruecken"
        );
        assert!(!text.contains("flow_token") && !text.contains("AQAAAA"));
        assert_eq!(m.content.as_engine_text(), Some(text.as_str()));
        assert!(!m.content.needs_fallback_answer());
        assert_eq!(m.content.kind(), "flow_reply");
        assert_eq!(m.reply_to.as_deref(), Some("wamid.FLOWSENT"));

        // A form whose JSON does not parse still says what the contact sent.
        let m = only_message(json!({
            "from": "16505551234", "id": "wamid.F2", "timestamp": "1749416383",
            "type": "interactive",
            "interactive": { "type": "nfm_reply", "nfm_reply": { "response_json": "{not json", "body": "Termin: Montag" } }
        }));
        assert_eq!(m.content.as_engine_text(), Some("Termin: Montag"));
        // Nothing at all: the fallback answer, as for any message without text.
        let m = only_message(json!({
            "from": "16505551234", "id": "wamid.F3", "timestamp": "1749416383",
            "type": "interactive",
            "interactive": { "type": "nfm_reply", "nfm_reply": { "response_json": "{\"flow_token\": \"x\"}" } }
        }));
        assert_eq!(m.content.as_engine_text(), None);
        assert!(m.content.needs_fallback_answer());
    }

    #[test]
    fn request_welcome_is_a_welcome_not_a_fallback() {
        let m = only_message(json!({
            "from": "16505551234", "id": "wamid.W", "timestamp": "1749416383", "type": "request_welcome"
        }));
        assert_eq!(m.content, Content::Welcome);
        assert_eq!(m.content.as_engine_text(), None);
        assert!(!m.content.needs_fallback_answer());
        assert_eq!(m.content.kind(), "request_welcome");
    }

    #[test]
    fn edit_and_revoke_name_the_original_message() {
        let m = only_message(json!({
            "from": "16505551234", "id": "wamid.E1", "timestamp": "1749416383", "type": "edit",
            "edit": {
                "original_message_id": "wamid.ORIG",
                "message": {
                    "context": { "id": "wamid.QUOTED" },
                    "type": "text",
                    "text": { "body": "Doch lieber Dienstag" }
                }
            }
        }));
        assert_eq!(
            m.content,
            Content::Edit {
                original_id: "wamid.ORIG".into(),
                text: Some("Doch lieber Dienstag".into())
            }
        );
        assert!(!m.content.needs_fallback_answer());
        assert_eq!(m.content.as_engine_text(), None);

        let m = only_message(json!({
            "from": "16505551234", "id": "wamid.E2", "timestamp": "1749416383", "type": "edit",
            "edit": {
                "original_message_id": "wamid.PIC",
                "message": { "type": "image", "image": { "id": "1", "mime_type": "image/jpeg", "caption": "Neuer Text" } }
            }
        }));
        assert_eq!(
            m.content,
            Content::Edit {
                original_id: "wamid.PIC".into(),
                text: Some("Neuer Text".into())
            }
        );

        let m = only_message(json!({
            "from": "16505551234", "id": "wamid.R", "timestamp": "1749416383", "type": "revoke",
            "revoke": { "original_message_id": "wamid.ORIG" }
        }));
        assert_eq!(
            m.content,
            Content::Revoke {
                original_id: "wamid.ORIG".into()
            }
        );
        assert!(!m.content.needs_fallback_answer());
        assert_eq!(m.content.kind(), "revoke");
    }

    #[test]
    fn click_to_whatsapp_referral_is_kept() {
        let m = only_message(json!({
            "from": "16505551234", "id": "wamid.AD", "timestamp": "1749416383",
            "type": "text", "text": { "body": "Hallo, ich interessiere mich für ein Probetraining" },
            "referral": {
                "source_url": "https://fb.me/2YxLq0iAB",
                "source_id": "120212345678901234",
                "source_type": "ad",
                "body": "Jetzt 4 Wochen testen",
                "headline": "EMS-Probetraining gratis",
                "media_type": "video",
                "video_url": "https://video.xx.fbcdn.net/ad.mp4",
                "thumbnail_url": "https://scontent.xx.fbcdn.net/thumb.jpg",
                "ctwa_clid": "ARAkLkA8rmlFeiCktEJQ-QTwRiyYHAFDLMNDBH0CD3qpjd0HR4irJ6LEkR7JwFF4XvnO2E4Nx0-eM-GABDLOPaOdRMv-_zfUQ2a",
                "welcome_message": { "text": "Hi! Wie können wir helfen?" }
            }
        }));
        assert_eq!(
            m.referral.as_deref(),
            Some(&LeadSource {
                source_type: Some("ad".into()),
                source_id: Some("120212345678901234".into()),
                source_url: Some("https://fb.me/2YxLq0iAB".into()),
                headline: Some("EMS-Probetraining gratis".into()),
                body: Some("Jetzt 4 Wochen testen".into()),
                ctwa_clid: Some("ARAkLkA8rmlFeiCktEJQ-QTwRiyYHAFDLMNDBH0CD3qpjd0HR4irJ6LEkR7JwFF4XvnO2E4Nx0-eM-GABDLOPaOdRMv-_zfUQ2a".into()),
                media_type: Some("video".into()),
                media_url: Some("https://video.xx.fbcdn.net/ad.mp4".into()),
                thumbnail_url: Some("https://scontent.xx.fbcdn.net/thumb.jpg".into()),
            })
        );
        // The message itself is answered as usual.
        assert_eq!(
            m.content.as_engine_text(),
            Some("Hallo, ich interessiere mich für ein Probetraining")
        );
        // Debug output never shows the click id.
        assert!(!format!("{m:?}").contains("ARAkLk"));

        // An empty or malformed referral is no lead source.
        let m = only_message(json!({
            "from": "16505551234", "id": "wamid.AD2", "timestamp": "1749416383",
            "type": "text", "text": { "body": "Hi" }, "referral": { "source_type": "" }
        }));
        assert_eq!(m.referral, None);
        let m = only_message(json!({
            "from": "16505551234", "id": "wamid.AD3", "timestamp": "1749416383",
            "type": "text", "text": { "body": "Hi" }, "referral": "not an object"
        }));
        assert_eq!(m.referral, None);
    }

    #[test]
    fn template_quick_reply_button() {
        let m = only_message(json!({
            "context": { "from": "15550783881", "id": "wamid.TEMPLATE" },
            "from": "16505551234", "id": "wamid.T", "timestamp": "1749416383",
            "type": "button",
            "button": { "payload": "BOOK_TRIAL", "text": "Ja, gerne" }
        }));
        assert_eq!(
            m.content,
            Content::TemplateButton {
                payload: "BOOK_TRIAL".into(),
                text: "Ja, gerne".into()
            }
        );
        assert_eq!(m.content.as_engine_text(), Some("Ja, gerne"));

        let m = only_message(json!({
            "from": "16505551234", "id": "wamid.T2", "timestamp": "1749416383",
            "type": "button", "button": { "payload": "BOOK_TRIAL", "text": "" }
        }));
        assert_eq!(m.content.as_engine_text(), Some("BOOK_TRIAL"));
    }

    #[test]
    fn reaction_and_removed_reaction() {
        let m = only_message(json!({
            "from": "16505551234", "id": "wamid.R1", "timestamp": "1749416383",
            "type": "reaction",
            "reaction": { "message_id": "wamid.OURS", "emoji": "\u{1F44D}" }
        }));
        assert_eq!(
            m.content,
            Content::Reaction {
                message_id: "wamid.OURS".into(),
                emoji: Some("\u{1F44D}".into())
            }
        );
        assert_eq!(m.content.as_engine_text(), None);
        assert!(!m.content.needs_fallback_answer());

        let m = only_message(json!({
            "from": "16505551234", "id": "wamid.R2", "timestamp": "1749416383",
            "type": "reaction",
            "reaction": { "message_id": "wamid.OURS" }
        }));
        assert_eq!(
            m.content,
            Content::Reaction {
                message_id: "wamid.OURS".into(),
                emoji: None
            }
        );
        assert!(!m.content.needs_fallback_answer());
    }

    #[test]
    fn media_messages_of_every_kind() {
        let cases = [
            (
                "image",
                json!({ "caption": "Mein Trainingsplan", "mime_type": "image/jpeg", "sha256": "abc", "id": "1003383421387256" }),
                MediaKind::Image,
            ),
            (
                "video",
                json!({ "mime_type": "video/mp4", "sha256": "abc", "id": "2" }),
                MediaKind::Video,
            ),
            (
                "document",
                json!({ "filename": "vertrag.pdf", "mime_type": "application/pdf", "sha256": "abc", "id": "3" }),
                MediaKind::Document,
            ),
            (
                "sticker",
                json!({ "mime_type": "image/webp", "sha256": "abc", "id": "4", "animated": false }),
                MediaKind::Sticker,
            ),
            (
                "audio",
                json!({ "mime_type": "audio/ogg; codecs=opus", "sha256": "abc", "id": "5", "voice": false }),
                MediaKind::Audio,
            ),
            (
                "audio",
                json!({ "mime_type": "audio/ogg; codecs=opus", "sha256": "abc", "id": "6", "voice": true }),
                MediaKind::Voice,
            ),
        ];
        for (kind, obj, expected) in cases {
            let m = only_message(json!({
                "from": "16505551234", "id": "wamid.M", "timestamp": "1749416383", "type": kind, kind: obj
            }));
            let Content::Media {
                kind: got,
                media_id,
                mime_type,
                ..
            } = &m.content
            else {
                panic!("expected media for {kind}, got {:?}", m.content)
            };
            assert_eq!(*got, expected);
            assert!(media_id.is_some());
            assert!(mime_type.is_some());
            if kind == "image" {
                // The first case carries a caption: that is text to answer.
                assert_eq!(m.content.as_engine_text(), Some("Mein Trainingsplan"));
                assert!(!m.content.needs_fallback_answer());
            } else {
                assert!(m.content.needs_fallback_answer(), "{kind}");
                assert_eq!(m.content.as_engine_text(), None);
            }
        }
        let m = only_message(json!({
            "from": "16505551234", "id": "wamid.M", "timestamp": "1749416383", "type": "image",
            "image": { "caption": "Mein Trainingsplan", "id": "1" }
        }));
        assert!(
            matches!(&m.content, Content::Media { caption: Some(c), .. } if c == "Mein Trainingsplan")
        );
        assert_eq!(m.content.kind(), "image");
        assert_eq!(m.content.as_engine_text(), Some("Mein Trainingsplan"));
        // A blank caption is no text.
        let m = only_message(json!({
            "from": "16505551234", "id": "wamid.M", "timestamp": "1749416383", "type": "image",
            "image": { "caption": "  ", "id": "1" }
        }));
        assert!(m.content.needs_fallback_answer());
    }

    #[test]
    fn location_contacts_system_and_unknown_types() {
        let m = only_message(json!({
            "from": "16505551234", "id": "wamid.L", "timestamp": "1749416383", "type": "location",
            "location": { "latitude": 52.52, "longitude": 13.405, "name": "Studio", "address": "Hauptstr. 1" }
        }));
        assert_eq!(m.content, Content::Location);
        assert!(m.content.needs_fallback_answer());

        let m = only_message(json!({
            "from": "16505551234", "id": "wamid.C", "timestamp": "1749416383", "type": "contacts",
            "contacts": [
                { "name": { "formatted_name": "Max Muster", "first_name": "Max" }, "phones": [{ "phone": "+49 151 000", "type": "CELL" }] },
                { "name": { "formatted_name": "Erika" } }
            ]
        }));
        assert_eq!(m.content, Content::Contacts { count: 2 });
        assert!(m.content.needs_fallback_answer());

        let m = only_message(json!({
            "from": "16505551234", "id": "wamid.S", "timestamp": "1749416383", "type": "system",
            "system": { "body": "User A changed from 1650 to 1651", "new_wa_id": "16505550000", "type": "user_changed_number" }
        }));
        assert_eq!(
            m.content,
            Content::System {
                kind: "user_changed_number".into(),
                new_wa_id: Some("16505550000".into()),
                new_user_id: None,
                previous_user_id: None,
            }
        );
        assert!(m.content.needs_fallback_answer());

        // Since 2026-08-11: the new ids in `system`, the previous ones beside them, no contacts.
        let m = only_message(json!({
            "from": "16505551234", "from_user_id": "US.111", "id": "wamid.S2", "timestamp": "1749416383",
            "type": "system",
            "system": {
                "body": "User A changed their user id", "type": "user_changed_user_id",
                "user_id": "US.222", "parent_user_id": "US.ENT.9",
                "previous_user_id": "US.111", "previous_parent_user_id": "US.ENT.8"
            }
        }));
        assert_eq!(
            m.content,
            Content::System {
                kind: "user_changed_user_id".into(),
                new_wa_id: None,
                new_user_id: Some("US.222".into()),
                previous_user_id: Some("US.111".into()),
            }
        );
        let m = only_message(json!({
            "from": "16505551234", "id": "wamid.S3", "timestamp": "1749416383", "type": "system",
            "system": { "body": "changed", "wa_id": "16505550000", "type": "user_changed_number" }
        }));
        assert!(
            matches!(m.content, Content::System { new_wa_id: Some(ref n), .. } if n == "16505550000")
        );

        let m = only_message(json!({
            "from": "16505551234", "id": "wamid.U", "timestamp": "1749416383", "type": "unsupported",
            "errors": [{ "code": 131051, "title": "Message type unknown", "message": "Message type unknown",
                         "error_data": { "details": "Message type is currently not supported." } }],
            "unsupported": { "type": "poll" }
        }));
        assert_eq!(m.content, Content::Unsupported("unsupported".into()));
        assert!(m.content.needs_fallback_answer());
        // The error code travels with the message, to be counted and audited.
        assert_eq!(m.error_codes, vec![131051]);

        let m = only_message(json!({
            "from": "16505551234", "id": "wamid.O", "timestamp": "1749416383", "type": "order",
            "order": { "catalog_id": "1", "product_items": [] }
        }));
        assert_eq!(m.content, Content::Unsupported("order".into()));

        let m = only_message(
            json!({ "from": "16505551234", "id": "wamid.X", "timestamp": "1749416383" }),
        );
        assert_eq!(m.content, Content::Unsupported("unknown".into()));
    }

    #[test]
    fn blank_text_needs_fallback() {
        let m = only_message(json!({
            "from": "16505551234", "id": "wamid.E", "timestamp": "1749416383", "type": "text", "text": { "body": "  " }
        }));
        assert_eq!(m.content.as_engine_text(), None);
        assert!(m.content.needs_fallback_answer());
    }

    #[test]
    fn statuses_sent_delivered_read() {
        let s = only_status(json!({
            "id": "wamid.OUT1", "status": "sent", "timestamp": "1750263773", "recipient_id": "16505551234",
            "conversation": { "id": "CONV", "expiration_timestamp": "1750350180", "origin": { "type": "service" } },
            "pricing": { "billable": false, "pricing_model": "PMP", "category": "service", "type": "free_customer_service" }
        }));
        assert_eq!(s.message_id, "wamid.OUT1");
        assert_eq!(s.recipient, "16505551234");
        assert_eq!(s.status, DeliveryStatus::Sent);
        assert_eq!(s.timestamp, 1_750_263_773);
        assert_eq!(s.phone_number_id, PNID);
        assert!(s.errors.is_empty());

        let s = only_status(
            json!({ "id": "wamid.OUT1", "status": "delivered", "timestamp": "1750263774", "recipient_id": "16505551234" }),
        );
        assert_eq!(s.status, DeliveryStatus::Delivered);

        // Read without a preceding delivered is normal (read implies delivered).
        let s = only_status(
            json!({ "id": "wamid.OUT2", "status": "read", "timestamp": "1750263775", "recipient_id": "16505551234" }),
        );
        assert_eq!(s.status, DeliveryStatus::Read);

        let s = only_status(
            json!({ "id": "wamid.OUT3", "status": "played", "timestamp": "1750263776", "recipient_id": "16505551234" }),
        );
        assert_eq!(s.status, DeliveryStatus::Other("played".into()));

        let s = only_status(json!({
            "id": "wamid.OUT4", "status": "delivered", "timestamp": "1750263777", "recipient_user_id": "DE.99887766"
        }));
        assert_eq!(s.recipient, "DE.99887766");
        assert_eq!(s.recipient_user_id.as_deref(), Some("DE.99887766"));
    }

    #[test]
    fn status_failed_with_errors() {
        let s = only_status(json!({
            "id": "wamid.OUT5", "status": "failed", "timestamp": "1750263778", "recipient_id": "16505551234",
            "errors": [{
                "code": 131047, "title": "Re-engagement message", "message": "Re-engagement message",
                "error_data": { "details": "Message failed to send because more than 24 hours have passed since the customer last replied to this number." },
                "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"
            }, {
                "code": "131026", "title": "Message undeliverable"
            }]
        }));
        assert_eq!(s.status, DeliveryStatus::Failed);
        assert_eq!(s.errors.len(), 2);
        assert_eq!(s.errors[0].code, 131047);
        assert_eq!(s.errors[0].title, "Re-engagement message");
        assert!(s.errors[0].details.as_deref().unwrap().contains("24 hours"));
        assert_eq!(s.errors[1].code, 131026);
        assert_eq!(s.errors[1].message, "Message undeliverable");
        assert_eq!(s.errors[1].details, None);
    }

    #[test]
    fn account_level_errors() {
        let value = json!({
            "messaging_product": "whatsapp",
            "metadata": { "display_phone_number": "15550783881", "phone_number_id": PNID },
            "errors": [{ "code": 131000, "title": "Something went wrong", "message": "Something went wrong",
                         "error_data": { "details": "Unknown error" } }]
        });
        let events = parse(&envelope(value)).unwrap();
        assert_eq!(
            events,
            vec![Event::Error(WebhookError {
                phone_number_id: PNID.into(),
                error: ApiErrorInfo {
                    code: 131000,
                    title: "Something went wrong".into(),
                    message: "Something went wrong".into(),
                    details: Some("Unknown error".into()),
                },
            })]
        );
    }

    #[test]
    fn several_entries_and_changes_keep_order_and_skip_other_fields() {
        let body = json!({
            "object": "whatsapp_business_account",
            "unknown_top_level": 1,
            "entry": [
                { "id": "1", "time": 1, "changes": [
                    { "field": "messages", "value": message_value(json!({ "from": "1", "id": "wamid.A", "timestamp": "1", "type": "text", "text": { "body": "a" } })) },
                    { "field": "message_template_status_update", "value": { "event": "APPROVED", "message_template_id": 1 } },
                    { "field": "account_update", "value": "not even an object" }
                ]},
                { "id": "2", "changes": [
                    { "field": "messages", "value": {
                        "messaging_product": "whatsapp",
                        "metadata": { "display_phone_number": "1", "phone_number_id": "other" },
                        "statuses": [{ "id": "wamid.S", "status": "read", "timestamp": "2", "recipient_id": "1" }],
                        "messages": [{ "from": "2", "id": "wamid.B", "timestamp": "3", "type": "text", "text": { "body": "b" } }]
                    }}
                ]}
            ]
        });
        let events = parse(&serde_json::to_vec(&body).unwrap()).unwrap();
        let ids: Vec<&str> = events
            .iter()
            .map(|e| match e {
                Event::Message(m) => m.id.as_str(),
                Event::Status(s) => s.message_id.as_str(),
                Event::Error(_) => "error",
                Event::TemplateCategory(_) => "category",
                Event::Skipped { .. } => "skipped",
            })
            .collect();
        assert_eq!(ids, ["wamid.A", "wamid.B", "wamid.S"]);
        let Event::Message(b) = &events[1] else {
            panic!()
        };
        assert_eq!(b.phone_number_id, "other");
        // Two contacts-less messages: no name guessed from another change's contacts.
        assert_eq!(b.contact_name, None);
    }

    #[test]
    fn template_category_updates_completed_and_impending() {
        // Shapes as Meta documents them for `template_category_update`.
        let body = json!({
            "object": "whatsapp_business_account",
            "entry": [{ "id": "200000000000002", "time": 1_760_000_000, "changes": [
                { "field": "template_category_update", "value": {
                    "message_template_id": 1_234_567,
                    "message_template_name": "probetraining_erinnerung",
                    "message_template_language": "de",
                    "previous_category": "UTILITY",
                    "new_category": "MARKETING"
                }},
                { "field": "template_category_update", "value": {
                    "message_template_id": 7,
                    "message_template_name": "angebot",
                    "message_template_language": "de",
                    "correct_category": "MARKETING",
                    "new_category": "UTILITY",
                    "category_update_timestamp": 1_760_086_400
                }}
            ]}]
        });
        let events = parse(&serde_json::to_vec(&body).unwrap()).unwrap();
        let [Event::TemplateCategory(done), Event::TemplateCategory(soon)] = events.as_slice()
        else {
            panic!("{events:?}")
        };
        assert_eq!(done.template_id.as_deref(), Some("1234567"));
        assert_eq!(done.name, "probetraining_erinnerung");
        assert_eq!(done.language, "de");
        assert_eq!(done.previous_category.as_deref(), Some("UTILITY"));
        assert_eq!(done.new_category, "MARKETING");
        assert_eq!(done.correct_category, None);
        assert_eq!(soon.correct_category.as_deref(), Some("MARKETING"));
        assert_eq!(soon.previous_category, None);

        let nameless = json!({ "object": "whatsapp_business_account", "entry": [{ "changes": [
            { "field": "template_category_update", "value": { "new_category": "MARKETING" } }
        ]}]});
        assert_eq!(
            parse(&serde_json::to_vec(&nameless).unwrap()).unwrap_err(),
            PayloadError::Malformed("template category update")
        );
    }

    #[test]
    fn empty_envelope_gives_no_events() {
        assert_eq!(
            parse(br#"{"object":"whatsapp_business_account","entry":[]}"#).unwrap(),
            vec![]
        );
        assert_eq!(
            parse(br#"{"object":"whatsapp_business_account"}"#).unwrap(),
            vec![]
        );
    }

    #[test]
    fn non_whatsapp_object_is_rejected() {
        let err = parse(br#"{"object":"page","entry":[{"id":"1","messaging":[]}]}"#).unwrap_err();
        assert_eq!(err, PayloadError::UnexpectedObject("page".into()));
        assert_eq!(err.reason(), "payload_object");
        assert_eq!(
            parse(br#"{"entry":[]}"#).unwrap_err(),
            PayloadError::Malformed("object missing")
        );
    }

    #[test]
    fn invalid_json_errors_do_not_quote_content() {
        for body in [
            &b"not json"[..],
            b"",
            b"{\"object\":",
            b"[1,2]",
            b"{\"object\":\"whatsapp_business_account\",\"entry\":\"Geheimer Text\"}",
        ] {
            let err = parse(body).unwrap_err();
            assert_eq!(err.reason(), "payload_json", "{err}");
            assert!(!err.to_string().contains("Geheim"));
        }
        let err = parse(&envelope(message_value(
            json!({ "from": 49151, "id": "wamid.Z", "timestamp": "1", "type": "text" }),
        )))
        .unwrap_err();
        assert_eq!(err, PayloadError::Malformed("message shape"));
        assert!(!err.to_string().contains("49151"));
    }

    #[test]
    fn one_unreadable_message_does_not_cost_the_others() {
        let body = envelope(json!({
            "messaging_product": "whatsapp",
            "metadata": { "display_phone_number": "15550783881", "phone_number_id": PNID },
            "messages": [
                { "from": "16505551234", "id": "wamid.GOOD", "timestamp": "1749416383",
                  "type": "text", "text": { "body": "Hallo" } },
                { "from": "16505551234", "timestamp": "1749416383", "type": "text",
                  "text": { "body": "Geheimer Text" } }
            ]
        }));
        let events = parse(&body).unwrap();
        assert_eq!(events.len(), 2);
        assert!(matches!(&events[0], Event::Message(m) if m.id == "wamid.GOOD"));
        assert_eq!(
            events[1],
            Event::Skipped {
                reason: "message id missing".into()
            }
        );
    }

    #[test]
    fn messages_missing_required_fields_are_malformed() {
        let cases = [
            (
                json!({ "from": "1", "timestamp": "1", "type": "text" }),
                "message id missing",
            ),
            (
                json!({ "id": "wamid.1", "timestamp": "1", "type": "text" }),
                "message sender missing",
            ),
            (
                json!({ "from": "1", "id": "wamid.1", "type": "text" }),
                "message timestamp missing",
            ),
            (
                json!({ "from": "1", "id": "wamid.1", "timestamp": "soon", "type": "text" }),
                "message timestamp missing",
            ),
        ];
        for (message, reason) in cases {
            assert_eq!(
                parse(&envelope(message_value(message))).unwrap_err(),
                PayloadError::Malformed(reason)
            );
        }
        let value = json!({ "metadata": { "phone_number_id": PNID }, "statuses": [{ "id": "wamid.1", "timestamp": "1", "recipient_id": "1" }] });
        assert_eq!(
            parse(&envelope(value)).unwrap_err(),
            PayloadError::Malformed("status missing")
        );
    }

    #[test]
    fn events_roundtrip_through_serde() {
        let m = only_message(json!({
            "from": "16505551234", "id": "wamid.RT", "timestamp": "1749416383", "type": "reaction",
            "reaction": { "message_id": "wamid.OURS" }
        }));
        let events = vec![
            Event::Message(m),
            Event::Message(InboundMessage {
                id: "wamid.X".into(),
                from: "1".into(),
                user_id: None,
                parent_user_id: None,
                timestamp: 1,
                phone_number_id: PNID.into(),
                contact_name: None,
                reply_to: Some("wamid.Q".into()),
                username: Some("@alex".into()),
                referral: Some(Box::new(LeadSource {
                    source_type: Some("ad".into()),
                    source_id: Some("1".into()),
                    ..LeadSource::default()
                })),
                error_codes: Vec::new(),
                content: Content::Media {
                    kind: MediaKind::Voice,
                    caption: None,
                    mime_type: Some("audio/ogg".into()),
                    media_id: Some("9".into()),
                },
            }),
            Event::Status(StatusUpdate {
                message_id: "wamid.Y".into(),
                recipient: "1".into(),
                recipient_user_id: None,
                status: DeliveryStatus::Other("played".into()),
                timestamp: 2,
                phone_number_id: PNID.into(),
                errors: vec![ApiErrorInfo {
                    code: 1,
                    title: "t".into(),
                    message: "m".into(),
                    details: None,
                }],
            }),
        ];
        let json = serde_json::to_string(&events).unwrap();
        let back: Vec<Event> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, events);
    }
}
