//! Outbound side of the WhatsApp Cloud API: a blocking Graph API client (`POST
//! /{version}/{phone_number_id}/messages`) for text, templates and mark-as-read with typing
//! indicator, and `…/marketing_messages` (Meta's Marketing Messages API) for marketing templates, the mapping of Graph errors to a retry [`Disposition`], and [`split_text`] for
//! answers longer than WhatsApp's 4,096-character limit.
//!
//! The client is blocking (ureq) and meant to be called from `spawn_blocking`. It never retries:
//! the persisted outbox owns backoff, so a crash cannot lose or double a retry schedule. The access
//! token is only ever written into the `Authorization` header; it is redacted from `Debug` and
//! never part of an error.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use thiserror::Error;

/// WhatsApp's maximum length of a text message body, in characters.
pub const MAX_TEXT_CHARS: usize = 4096;

/// Graph error bodies are small; anything larger is not one.
const MAX_RESPONSE_BYTES: u64 = 64 * 1024;

/// A message the Graph API accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    /// `wamid.…`; status webhooks refer to it.
    pub id: String,
}

/// What the caller (the outbox) should do after a failed send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Disposition {
    /// Transient: throttling, server trouble, network. Retry with backoff.
    RetryLater,
    /// Too many messages to this one user in a short time (131056). Retry for this user only,
    /// after a pause; other users are unaffected.
    PairRateLimited,
    /// The 24-hour customer-service window is closed (131047): only a template may be sent.
    WindowClosed,
    /// WhatsApp cannot deliver to this user (131026: not on WhatsApp, old app, blocked us, …).
    Undeliverable,
    /// The per-user marketing message limit (131049): Meta held the message back to protect the
    /// user's experience. Retrying soon fails the same way; the outbox tries once more after
    /// [`MARKETING_RETRY_AFTER`], without holding the customer's other replies back.
    MarketingLimited,
    /// The spam rate limit of our business number (131048: too many of our messages were
    /// blocked or reported). The whole sender slows down and staff are alerted.
    SpamLimited,
    /// The template is paused (132015) or disabled (132016) for low quality: no send of it can
    /// succeed until someone edits it in WhatsApp Manager. Staff are alerted; no retry.
    TemplateUnavailable,
    /// The recipient is a business-scoped user id, and this message cannot be sent to one
    /// (131062). Retry to the phone number when it is known, else hand over to staff.
    RecipientIdUnsupported,
    /// The access token is invalid, expired or lacks permission (190, 200–299, HTTP 401/403):
    /// no send can succeed until an operator fixes the credential. Nothing is dropped.
    AuthFailed,
    /// Anything else: retrying the same request will not help.
    Permanent,
}

/// A failed Graph API call. `Display` shows only status and codes (no message text, no numbers).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SendError {
    /// The Graph API answered with an error object.
    #[error("Graph API error code {code}{} (HTTP {status})", subcode.map(|s| format!("/{s}")).unwrap_or_default())]
    Api {
        /// HTTP status of the answer.
        status: u16,
        /// Graph error code (e.g. 131047 for a closed 24-hour window).
        code: i64,
        /// Graph `error_subcode`, when given.
        subcode: Option<i64>,
        /// Graph `type`, e.g. `OAuthException`.
        kind: Option<String>,
        /// Meta's message, e.g. `(#131047) Re-engagement message`.
        message: String,
        /// `error_data.details`, Meta's explanation.
        details: Option<String>,
        /// Meta's hint that the same request may succeed later.
        is_transient: bool,
        /// Meta's trace id, for support requests to Meta.
        fbtrace_id: Option<String>,
    },
    /// An error status without a parseable Graph error body (proxy pages, gateway errors).
    #[error("Graph API answered HTTP {status} without an error object")]
    Http {
        /// HTTP status of the answer.
        status: u16,
    },
    /// The request did not complete within the configured timeout. Meta may still have accepted
    /// the message; a retry can duplicate it, which is the lesser evil than losing an answer.
    #[error("Graph API request timed out")]
    Timeout,
    /// Connection, DNS, TLS or I/O failure before an answer arrived.
    #[error("Graph API transport error: {0}")]
    Transport(String),
    /// A success status whose body is not what the API documents. The request was probably
    /// accepted, so resending it risks a duplicate.
    #[error("unexpected Graph API response: {0}")]
    UnexpectedResponse(&'static str),
    /// Refused locally before sending (empty or over-long text, empty recipient, …).
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
}

/// Graph error codes with a dedicated meaning.
pub mod codes {
    /// Cloud API throughput reached.
    pub const THROUGHPUT: i64 = 130_429;
    /// Generic "Something went wrong"; Meta suggests trying again.
    pub const SOMETHING_WENT_WRONG: i64 = 131_000;
    /// Service temporarily unavailable.
    pub const SERVICE_UNAVAILABLE: i64 = 131_016;
    /// Outside the 24-hour window: re-engagement needs a template.
    pub const REENGAGEMENT: i64 = 131_047;
    /// Message undeliverable to this user.
    pub const UNDELIVERABLE: i64 = 131_026;
    /// Spam rate limit.
    pub const SPAM_RATE_LIMIT: i64 = 131_048;
    /// (Business account, consumer account) pair rate limit.
    pub const PAIR_RATE_LIMIT: i64 = 131_056;
    /// Per-user marketing message limit ("healthy ecosystem engagement").
    pub const MARKETING_LIMIT: i64 = 131_049;
    /// Unsupported message type (inbound `unsupported` messages carry it).
    pub const UNSUPPORTED_MESSAGE_TYPE: i64 = 131_051;
    /// Media download error: a media file a user sent could not be fetched.
    pub const MEDIA_DOWNLOAD: i64 = 131_052;
    /// A business-scoped user id cannot receive this message; the phone number is needed.
    pub const RECIPIENT_ID_UNSUPPORTED: i64 = 131_062;
    /// Throttled: too many requests of one kind in a short time.
    pub const THROTTLED: i64 = 131_064;
    /// The template is paused for low quality.
    pub const TEMPLATE_PAUSED: i64 = 132_015;
    /// The template is disabled for low quality.
    pub const TEMPLATE_DISABLED: i64 = 132_016;
    /// Graph "API Unknown" (possibly a server error).
    pub const API_UNKNOWN: i64 = 1;
    /// Graph "API Service": temporary downtime or overload.
    pub const API_SERVICE: i64 = 2;
    /// Graph app-level call limit.
    pub const API_TOO_MANY_CALLS: i64 = 4;
    /// Graph "API Permission Denied" / missing permission.
    pub const PERMISSION_DENIED: i64 = 10;
    /// Invalid or expired access token.
    pub const ACCESS_TOKEN: i64 = 190;
    /// WhatsApp Business Account rate limit.
    pub const WABA_RATE_LIMIT: i64 = 80_007;
}

impl SendError {
    /// How the outbox should react to this error.
    pub fn disposition(&self) -> Disposition {
        if self.is_auth_failure() {
            return Disposition::AuthFailed;
        }
        match self {
            SendError::Api {
                status,
                code,
                is_transient,
                ..
            } => match disposition_of_code(*code) {
                Some(d) => d,
                None if *is_transient || retryable_status(*status) => Disposition::RetryLater,
                None => Disposition::Permanent,
            },
            SendError::Http { status } if retryable_status(*status) => Disposition::RetryLater,
            SendError::Http { .. } => Disposition::Permanent,
            SendError::Timeout | SendError::Transport(_) => Disposition::RetryLater,
            SendError::UnexpectedResponse(_) | SendError::InvalidRequest(_) => {
                Disposition::Permanent
            }
        }
    }

    /// The access token is invalid, expired or lacks permission: an operator has to act, and
    /// every further send will fail the same way.
    pub fn is_auth_failure(&self) -> bool {
        match self {
            SendError::Api { status, code, .. } => {
                *status == 401
                    || matches!(
                        *code,
                        codes::ACCESS_TOKEN | codes::PERMISSION_DENIED | 200..=299
                    )
            }
            SendError::Http { status } => *status == 401 || *status == 403,
            _ => false,
        }
    }

    /// The Graph error code, if the API sent one.
    pub fn code(&self) -> Option<i64> {
        match self {
            SendError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// How long a reply held back by the per-user marketing limit (131049) waits before its one
/// further attempt. Meta asks not to retry soon; a day lets the user's limit reset.
pub const MARKETING_RETRY_AFTER: jiff::SignedDuration = jiff::SignedDuration::from_hours(24);

/// The disposition a Graph error code has whatever the HTTP status (a code in a `failed` status
/// webhook has none); `None` for codes without a dedicated meaning.
pub fn disposition_of_code(code: i64) -> Option<Disposition> {
    Some(match code {
        codes::ACCESS_TOKEN | codes::PERMISSION_DENIED | 200..=299 => Disposition::AuthFailed,
        codes::PAIR_RATE_LIMIT => Disposition::PairRateLimited,
        codes::REENGAGEMENT => Disposition::WindowClosed,
        codes::UNDELIVERABLE => Disposition::Undeliverable,
        codes::MARKETING_LIMIT => Disposition::MarketingLimited,
        codes::SPAM_RATE_LIMIT => Disposition::SpamLimited,
        codes::TEMPLATE_PAUSED | codes::TEMPLATE_DISABLED => Disposition::TemplateUnavailable,
        codes::RECIPIENT_ID_UNSUPPORTED => Disposition::RecipientIdUnsupported,
        // 131000 is Meta's catch-all; its documented advice is to try again, and the outbox
        // bounds the attempts. 131064 is throttling, like 130429.
        codes::THROUGHPUT
        | codes::THROTTLED
        | codes::SOMETHING_WENT_WRONG
        | codes::SERVICE_UNAVAILABLE
        | codes::API_UNKNOWN
        | codes::API_SERVICE
        | codes::API_TOO_MANY_CALLS
        | codes::WABA_RATE_LIMIT => Disposition::RetryLater,
        // Inbound-side codes and everything else: the same request will not succeed.
        _ => return None,
    })
}

/// The reason code of a Graph error code, for metrics, the audit log and the journal: the same
/// word wherever the failure is reported (`code_<n>` would be personal to nobody, but a word is
/// what an admin searches for).
pub fn reason_of_code(code: i64) -> &'static str {
    match code {
        codes::REENGAGEMENT => "window_closed",
        codes::UNDELIVERABLE => "undeliverable",
        codes::MARKETING_LIMIT => "marketing_limit",
        codes::SPAM_RATE_LIMIT => "spam_limit",
        codes::TEMPLATE_PAUSED => "template_paused",
        codes::TEMPLATE_DISABLED => "template_disabled",
        codes::RECIPIENT_ID_UNSUPPORTED => "recipient_id_unsupported",
        codes::PAIR_RATE_LIMIT => "pair_rate_limited",
        codes::THROUGHPUT
        | codes::THROTTLED
        | codes::API_TOO_MANY_CALLS
        | codes::WABA_RATE_LIMIT => "throttled",
        codes::SOMETHING_WENT_WRONG | codes::API_UNKNOWN | codes::API_SERVICE => "server_error",
        codes::SERVICE_UNAVAILABLE => "service_unavailable",
        codes::UNSUPPORTED_MESSAGE_TYPE => "unsupported_type",
        codes::MEDIA_DOWNLOAD => "media_download",
        codes::ACCESS_TOKEN | codes::PERMISSION_DENIED | 200..=299 => "auth_failed",
        _ => "failed",
    }
}

fn retryable_status(status: u16) -> bool {
    status == 429 || status == 408 || (500..=599).contains(&status)
}

/// Access token wrapper: never printed.
#[derive(Clone)]
struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Blocking client for one business phone number.
#[derive(Debug, Clone)]
pub struct GraphClient {
    agent: ureq::Agent,
    messages_url: String,
    /// Meta wants marketing templates here; it refuses everything else (131055, 100).
    marketing_url: String,
    token: Token,
}

/// Which Graph endpoint a template goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateEndpoint {
    /// `/{phone_number_id}/messages`: utility and authentication templates.
    Messages,
    /// `/{phone_number_id}/marketing_messages`: marketing templates.
    MarketingMessages,
}

impl GraphClient {
    /// `graph_base` is e.g. `https://graph.facebook.com` (or a simulator's base URL), `version`
    /// e.g. `v23.0`. `timeout` bounds each whole call, connect to last body byte.
    pub fn new(
        graph_base: &str,
        version: &str,
        phone_number_id: &str,
        token: String,
        timeout: Duration,
    ) -> Self {
        let mut config = ureq::Agent::config_builder()
            // Error statuses carry the Graph error body we need to classify.
            .http_status_as_error(false)
            // A redirect would carry the bearer token somewhere we did not choose.
            .max_redirects(0)
            .timeout_global(Some(timeout))
            .user_agent(concat!("frontdesk/", env!("CARGO_PKG_VERSION")));
        // Proxies from the environment apply to the real Graph API, but a loopback base (the
        // simulator) must never be sent through one.
        if is_loopback_url(graph_base) {
            config = config.proxy(None);
        }
        let config = config.build();
        let number_url = format!(
            "{}/{}/{}",
            graph_base.trim_end_matches('/'),
            version.trim_matches('/'),
            phone_number_id.trim_matches('/')
        );
        GraphClient {
            agent: ureq::Agent::new_with_config(config),
            messages_url: format!("{number_url}/messages"),
            marketing_url: format!("{number_url}/marketing_messages"),
            token: Token(token),
        }
    }

    /// Sends a plain text message (no link preview). `body` must be 1..=4,096 characters; use
    /// [`split_text`] for longer answers.
    pub fn send_text(&self, to: &str, body: &str) -> Result<SentMessage, SendError> {
        if body.trim().is_empty() {
            return Err(SendError::InvalidRequest("empty text"));
        }
        if body.chars().count() > MAX_TEXT_CHARS {
            return Err(SendError::InvalidRequest(
                "text longer than 4096 characters",
            ));
        }
        let mut request = addressed(to)?;
        request["type"] = json!("text");
        request["text"] = json!({ "preview_url": false, "body": body });
        self.send_message(&request)
    }

    /// Sends a reply with reply buttons (an interactive `button` message). As the Graph API
    /// requires: a body of 1..=1,024 characters, one to three buttons, each title 1..=20
    /// characters and unique, each id 1..=256 characters without surrounding spaces.
    pub fn send_buttons(
        &self,
        to: &str,
        body: &str,
        buttons: &[super::queue::ReplyButton],
    ) -> Result<SentMessage, SendError> {
        check_buttons(body, buttons)?;
        let mut request = addressed(to)?;
        request["type"] = json!("interactive");
        let action: Vec<Value> = buttons
            .iter()
            .map(|b| json!({ "type": "reply", "reply": { "id": b.id, "title": b.title } }))
            .collect();
        request["interactive"] = json!({
            "type": "button",
            "body": { "text": body },
            "action": { "buttons": action },
        });
        self.send_message(&request)
    }

    /// Sends an approved template through `/messages`. `params` fill the body variables `{{1}}`,
    /// `{{2}}`, … in order.
    pub fn send_template(
        &self,
        to: &str,
        name: &str,
        language_code: &str,
        params: &[String],
    ) -> Result<SentMessage, SendError> {
        self.send_template_to(TemplateEndpoint::Messages, to, name, language_code, params)
    }

    /// Sends an approved template through `endpoint`; a marketing template belongs on
    /// [`TemplateEndpoint::MarketingMessages`], which takes the same request body.
    pub fn send_template_to(
        &self,
        endpoint: TemplateEndpoint,
        to: &str,
        name: &str,
        language_code: &str,
        params: &[String],
    ) -> Result<SentMessage, SendError> {
        self.send_template_with_buttons(endpoint, to, name, language_code, params, &[])
    }

    /// Like [`GraphClient::send_template_to`], with the payloads of the template's quick-reply
    /// buttons, in the order the approved template lists its buttons (WhatsApp sends a tapped
    /// button's payload back with the `button` message).
    pub fn send_template_with_buttons(
        &self,
        endpoint: TemplateEndpoint,
        to: &str,
        name: &str,
        language_code: &str,
        params: &[String],
        buttons: &[String],
    ) -> Result<SentMessage, SendError> {
        if name.is_empty() || language_code.is_empty() {
            return Err(SendError::InvalidRequest(
                "template name or language missing",
            ));
        }
        let mut template = json!({ "name": name, "language": { "code": language_code } });
        if !params.is_empty() {
            let parameters: Vec<Value> = params
                .iter()
                .map(|p| json!({ "type": "text", "text": p }))
                .collect();
            template["components"] = json!([{ "type": "body", "parameters": parameters }]);
        }
        if !buttons.is_empty() {
            let mut components = template["components"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for (index, payload) in buttons.iter().enumerate() {
                components.push(json!({
                    "type": "button",
                    "sub_type": "quick_reply",
                    "index": index.to_string(),
                    "parameters": [{ "type": "payload", "payload": payload }],
                }));
            }
            template["components"] = Value::Array(components);
        }
        let mut request = addressed(to)?;
        request["type"] = json!("template");
        request["template"] = template;
        let url = match endpoint {
            TemplateEndpoint::Messages => &self.messages_url,
            TemplateEndpoint::MarketingMessages => &self.marketing_url,
        };
        self.send_message_to(url, &request)
    }

    /// Marks an inbound message (and all earlier ones in the chat) as read; with `typing`, also
    /// shows the typing indicator until we answer or 25 seconds pass.
    pub fn mark_read(&self, message_id: &str, typing: bool) -> Result<(), SendError> {
        if message_id.is_empty() {
            return Err(SendError::InvalidRequest("message id missing"));
        }
        let mut request =
            json!({ "messaging_product": "whatsapp", "status": "read", "message_id": message_id });
        if typing {
            request["typing_indicator"] = json!({ "type": "text" });
        }
        let body = self.post(&request)?;
        match body.get("success").and_then(Value::as_bool) {
            Some(true) => Ok(()),
            _ => Err(SendError::UnexpectedResponse(
                "mark-as-read without success",
            )),
        }
    }

    fn send_message(&self, request: &Value) -> Result<SentMessage, SendError> {
        self.send_message_to(&self.messages_url, request)
    }

    fn send_message_to(&self, url: &str, request: &Value) -> Result<SentMessage, SendError> {
        let body = self.post_to(url, request)?;
        let id = body
            .get("messages")
            .and_then(Value::as_array)
            .and_then(|m| m.first())
            .and_then(|m| m.get("id"))
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .ok_or(SendError::UnexpectedResponse("no message id"))?;
        Ok(SentMessage { id: id.to_owned() })
    }

    /// POSTs one request to `/messages`; returns the parsed body of a 2xx answer, or the
    /// classified error.
    fn post(&self, request: &Value) -> Result<Value, SendError> {
        self.post_to(&self.messages_url, request)
    }

    fn post_to(&self, url: &str, request: &Value) -> Result<Value, SendError> {
        let mut response = self
            .agent
            .post(url)
            .header("Authorization", format!("Bearer {}", self.token.0))
            .send_json(request)
            .map_err(transport_error)?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .lossy_utf8(true)
            .read_to_string();
        if (200..300).contains(&status) {
            let text = text.map_err(|e| match transport_error(e) {
                SendError::Timeout => SendError::Timeout,
                _ => SendError::UnexpectedResponse("unreadable success body"),
            })?;
            return serde_json::from_str(&text)
                .map_err(|_| SendError::UnexpectedResponse("success body is not JSON"));
        }
        Err(text
            .ok()
            .and_then(|t| api_error(status, &t))
            .unwrap_or(SendError::Http { status }))
    }
}

/// Largest body of an interactive message.
const MAX_INTERACTIVE_BODY_CHARS: usize = 1024;
/// Largest title of a reply button.
pub const MAX_BUTTON_TITLE_CHARS: usize = 20;

/// The Graph API's limits of a reply-buttons message, checked before sending.
fn check_buttons(body: &str, buttons: &[super::queue::ReplyButton]) -> Result<(), SendError> {
    let body_chars = body.chars().count();
    if body.trim().is_empty() || body_chars > MAX_INTERACTIVE_BODY_CHARS {
        return Err(SendError::InvalidRequest(
            "interactive body must be 1 to 1024 characters",
        ));
    }
    if buttons.is_empty() || buttons.len() > 3 {
        return Err(SendError::InvalidRequest("one to three reply buttons"));
    }
    for (i, b) in buttons.iter().enumerate() {
        let title = b.title.chars().count();
        if b.title.trim().is_empty() || title > MAX_BUTTON_TITLE_CHARS {
            return Err(SendError::InvalidRequest(
                "button title must be 1 to 20 characters",
            ));
        }
        if b.id.is_empty() || b.id.chars().count() > 256 || b.id.trim() != b.id {
            return Err(SendError::InvalidRequest(
                "button id must be 1 to 256 characters without surrounding spaces",
            ));
        }
        if buttons[..i].iter().any(|o| o.title == b.title) {
            return Err(SendError::InvalidRequest("button titles must be unique"));
        }
    }
    Ok(())
}

/// Base request with the recipient: phone numbers go to `to`, business-scoped user ids (for
/// users who hide their number behind a username) go to `recipient`.
fn addressed(to: &str) -> Result<Value, SendError> {
    let to = to.trim();
    if to.is_empty() {
        return Err(SendError::InvalidRequest("recipient missing"));
    }
    let mut request = json!({ "messaging_product": "whatsapp", "recipient_type": "individual" });
    if is_phone_number(to) {
        request["to"] = json!(to);
    } else {
        request["recipient"] = json!(to);
    }
    Ok(request)
}

fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let host_port = rest.split('/').next().unwrap_or_default();
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.rsplit_once(':').map_or(host_port, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Phone numbers (`wa_id`) are digits, optionally written with a leading `+`; BSUIDs look like
/// `DE.1234…`.
pub fn is_phone_number(address: &str) -> bool {
    let digits = address.strip_prefix('+').unwrap_or(address);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

fn transport_error(err: ureq::Error) -> SendError {
    match err {
        ureq::Error::Timeout(_) => SendError::Timeout,
        ureq::Error::Io(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ) =>
        {
            SendError::Timeout
        }
        // ureq errors name hosts and causes, never request headers, so the token cannot leak.
        other => SendError::Transport(other.to_string()),
    }
}

#[derive(Deserialize)]
struct GraphErrorEnvelope {
    error: GraphError,
}

#[derive(Deserialize)]
struct GraphError {
    #[serde(default)]
    message: String,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    code: Value,
    #[serde(default)]
    error_subcode: Option<i64>,
    #[serde(default)]
    error_data: Option<Value>,
    #[serde(default)]
    is_transient: Option<bool>,
    #[serde(default)]
    fbtrace_id: Option<String>,
}

fn api_error(status: u16, body: &str) -> Option<SendError> {
    let envelope: GraphErrorEnvelope = serde_json::from_str(body).ok()?;
    let e = envelope.error;
    // Some gateways stringify the code.
    let code = e
        .code
        .as_i64()
        .or_else(|| e.code.as_str().and_then(|s| s.parse().ok()))?;
    let details = e
        .error_data
        .as_ref()
        .and_then(|d| d.get("details"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    Some(SendError::Api {
        status,
        code,
        subcode: e.error_subcode,
        kind: e.kind,
        message: e.message,
        details,
        is_transient: e.is_transient.unwrap_or(false),
        fbtrace_id: e.fbtrace_id,
    })
}

/// Splits `text` into chunks of at most `max_chars` characters, preferring paragraph breaks,
/// then line breaks, then sentence ends, then spaces; a single word longer than `max_chars` is
/// cut (never inside a character, and not between a character and a following joiner or
/// variation selector). Chunks are trimmed; blank input gives no chunks.
pub fn split_text(text: &str, max_chars: usize) -> Vec<String> {
    let max_chars = max_chars.max(1);
    let mut chunks = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        // Byte index just past the first `max_chars` characters, or the whole rest.
        let window_end = rest
            .char_indices()
            .nth(max_chars)
            .map_or(rest.len(), |(i, _)| i);
        if window_end == rest.len() {
            chunks.push(rest.to_owned());
            break;
        }
        let cut = best_cut(rest, window_end).unwrap_or_else(|| hard_cut(rest, window_end));
        let (head, tail) = rest.split_at(cut);
        let head = head.trim_end();
        if !head.is_empty() {
            chunks.push(head.to_owned());
        }
        rest = tail.trim_start();
    }
    chunks
}

/// Byte index to cut `rest` at (the chunk ends before it, so at most `window_end`), at the
/// strongest boundary found. The character right after the window counts too: a chunk that fills
/// the window exactly and is followed by a space ends on a word boundary.
fn best_cut(rest: &str, window_end: usize) -> Option<usize> {
    let lookahead = rest[window_end..].chars().next().map_or(0, char::len_utf8);
    let window = &rest[..window_end + lookahead];
    // Cutting very early would produce a tiny chunk and many messages; a weaker boundary late
    // in the window reads better than a strong one at its start.
    let min = window_end / 4;
    let acceptable = |i: &usize| *i > min && *i <= window_end;
    let paragraph = || {
        window
            .rmatch_indices("\n\n")
            .map(|(i, _)| i)
            .find(acceptable)
    };
    let line = || window.rmatch_indices('\n').map(|(i, _)| i).find(acceptable);
    let sentence = || {
        // Cut after the punctuation of a sentence end (punctuation followed by whitespace).
        let mut after: Option<char> = None;
        for (i, c) in window.char_indices().rev() {
            let end = i + c.len_utf8();
            if matches!(c, '.' | '!' | '?' | '…')
                && after.is_some_and(char::is_whitespace)
                && acceptable(&end)
            {
                return Some(end);
            }
            after = Some(c);
        }
        None
    };
    let word = || {
        window
            .char_indices()
            .rev()
            .find(|(i, c)| c.is_whitespace() && *i > 0 && *i <= window_end)
            .map(|(i, _)| i)
    };
    paragraph().or_else(line).or_else(sentence).or_else(word)
}

/// Cut at `end` (a char boundary), moved back so that an emoji or combining sequence stays whole
/// when that is possible within the chunk.
fn hard_cut(text: &str, end: usize) -> usize {
    let mut cut = end;
    loop {
        let next_joins = text[cut..].chars().next().is_some_and(is_joining);
        let prev = text[..cut].char_indices().next_back();
        let prev_is_zwj = prev.is_some_and(|(_, c)| c == '\u{200D}');
        if !next_joins && !prev_is_zwj {
            return cut;
        }
        match prev {
            Some((i, _)) if i > 0 => cut = i,
            _ => return end,
        }
    }
}

fn is_joining(c: char) -> bool {
    matches!(c,
        '\u{200D}'                      // zero width joiner
        | '\u{FE00}'..='\u{FE0F}'       // variation selectors
        | '\u{1F3FB}'..='\u{1F3FF}'     // skin tone modifiers
        | '\u{0300}'..='\u{036F}'       // combining diacritical marks
        | '\u{20D0}'..='\u{20FF}'       // combining marks for symbols (keycaps)
        | '\u{E0020}'..='\u{E007F}'     // tag characters (subdivision flags)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn api(status: u16, code: i64) -> SendError {
        SendError::Api {
            status,
            code,
            subcode: None,
            kind: Some("OAuthException".into()),
            message: String::new(),
            details: None,
            is_transient: false,
            fbtrace_id: None,
        }
    }

    #[test]
    fn dispositions() {
        assert_eq!(
            api(400, 131_056).disposition(),
            Disposition::PairRateLimited
        );
        assert_eq!(api(400, 131_047).disposition(), Disposition::WindowClosed);
        assert_eq!(api(400, 131_026).disposition(), Disposition::Undeliverable);
        assert_eq!(api(400, 130_429).disposition(), Disposition::RetryLater);
        assert_eq!(api(429, 130_429).disposition(), Disposition::RetryLater);
        assert_eq!(api(500, 131_000).disposition(), Disposition::RetryLater);
        assert_eq!(api(400, 131_000).disposition(), Disposition::RetryLater);
        assert_eq!(api(400, 4).disposition(), Disposition::RetryLater);
        assert_eq!(api(503, 100).disposition(), Disposition::RetryLater);
        assert_eq!(api(429, 100).disposition(), Disposition::RetryLater);
        assert_eq!(api(400, 100).disposition(), Disposition::Permanent);
        assert_eq!(api(401, 190).disposition(), Disposition::AuthFailed);
        assert_eq!(api(400, 190).disposition(), Disposition::AuthFailed);
        assert_eq!(api(403, 200).disposition(), Disposition::AuthFailed);
        assert_eq!(api(400, 132_001).disposition(), Disposition::Permanent);
        let mut transient = api(400, 12345);
        if let SendError::Api { is_transient, .. } = &mut transient {
            *is_transient = true;
        }
        assert_eq!(transient.disposition(), Disposition::RetryLater);
        // The specific meaning wins over a retryable HTTP status.
        assert_eq!(
            api(429, 131_056).disposition(),
            Disposition::PairRateLimited
        );
        assert_eq!(api(500, 131_047).disposition(), Disposition::WindowClosed);

        assert_eq!(
            SendError::Http { status: 502 }.disposition(),
            Disposition::RetryLater
        );
        assert_eq!(
            SendError::Http { status: 429 }.disposition(),
            Disposition::RetryLater
        );
        assert_eq!(
            SendError::Http { status: 404 }.disposition(),
            Disposition::Permanent
        );
        assert_eq!(SendError::Timeout.disposition(), Disposition::RetryLater);
        assert_eq!(
            SendError::Transport("connection refused".into()).disposition(),
            Disposition::RetryLater
        );
        assert_eq!(
            SendError::UnexpectedResponse("x").disposition(),
            Disposition::Permanent
        );
        assert_eq!(
            SendError::InvalidRequest("x").disposition(),
            Disposition::Permanent
        );
    }

    #[test]
    fn codes_of_2026_have_their_own_handling() {
        for (code, disposition, reason) in [
            (131_049, Disposition::MarketingLimited, "marketing_limit"),
            (131_048, Disposition::SpamLimited, "spam_limit"),
            (132_015, Disposition::TemplateUnavailable, "template_paused"),
            (
                132_016,
                Disposition::TemplateUnavailable,
                "template_disabled",
            ),
            (
                131_062,
                Disposition::RecipientIdUnsupported,
                "recipient_id_unsupported",
            ),
            (131_064, Disposition::RetryLater, "throttled"),
            (131_047, Disposition::WindowClosed, "window_closed"),
            (131_026, Disposition::Undeliverable, "undeliverable"),
        ] {
            // The meaning holds whatever the HTTP status, and in a status webhook (no status).
            for status in [400, 429, 500] {
                assert_eq!(api(status, code).disposition(), disposition, "{code}");
            }
            assert_eq!(disposition_of_code(code), Some(disposition), "{code}");
            assert_eq!(reason_of_code(code), reason);
        }
        // Inbound-side codes are no reason to retry a send.
        for code in [131_051, 131_052] {
            assert_eq!(disposition_of_code(code), None);
            assert_eq!(api(400, code).disposition(), Disposition::Permanent);
        }
        assert_eq!(reason_of_code(131_051), "unsupported_type");
        assert_eq!(reason_of_code(131_052), "media_download");
        assert_eq!(reason_of_code(131_000), "server_error");
        assert_eq!(reason_of_code(4_242), "failed");
        assert_eq!(disposition_of_code(4_242), None);
    }

    #[test]
    fn auth_failures() {
        assert!(api(401, 190).is_auth_failure());
        assert!(api(400, 10).is_auth_failure());
        assert!(api(403, 200).is_auth_failure());
        assert!(!api(400, 131_047).is_auth_failure());
        assert!(SendError::Http { status: 401 }.is_auth_failure());
        assert!(!SendError::Timeout.is_auth_failure());
    }

    #[test]
    fn graph_error_body_is_parsed() {
        let body = r#"{"error":{"message":"(#131047) Re-engagement message","type":"OAuthException","code":131047,
            "error_data":{"messaging_product":"whatsapp","details":"Message failed to send because more than 24 hours have passed since the customer last replied to this number."},
            "error_subcode":2494010,"fbtrace_id":"Az8or2yhqkZfEZ-_4Qn_Bam"}}"#;
        let err = api_error(400, body).unwrap();
        let SendError::Api {
            status,
            code,
            subcode,
            kind,
            message,
            details,
            fbtrace_id,
            is_transient,
        } = &err
        else {
            panic!("expected Api error")
        };
        assert_eq!((*status, *code, *subcode), (400, 131_047, Some(2_494_010)));
        assert_eq!(kind.as_deref(), Some("OAuthException"));
        assert_eq!(message, "(#131047) Re-engagement message");
        assert!(details.as_deref().unwrap().contains("24 hours"));
        assert_eq!(fbtrace_id.as_deref(), Some("Az8or2yhqkZfEZ-_4Qn_Bam"));
        assert!(!is_transient);
        assert_eq!(
            err.to_string(),
            "Graph API error code 131047/2494010 (HTTP 400)"
        );
        assert_eq!(err.code(), Some(131_047));

        let stringly = api_error(429, r#"{"error":{"message":"x","code":"130429"}}"#).unwrap();
        assert_eq!(stringly.code(), Some(130_429));
        assert!(api_error(502, "<html>Bad Gateway</html>").is_none());
        assert!(api_error(500, r#"{"error":"oops"}"#).is_none());
    }

    #[test]
    fn token_never_in_debug() {
        let client = GraphClient::new(
            "http://127.0.0.1:9",
            "v23.0",
            "106540352242922",
            "EAAG-super-secret-token".into(),
            Duration::from_secs(1),
        );
        let debug = format!("{client:?}");
        assert!(!debug.contains("super-secret"), "{debug}");
        assert!(debug.contains("<redacted>"));
        assert!(debug.contains("http://127.0.0.1:9/v23.0/106540352242922/messages"));
    }

    #[test]
    fn local_validation() {
        let client = GraphClient::new(
            "http://127.0.0.1:9",
            "v23.0",
            "1",
            "t".into(),
            Duration::from_secs(1),
        );
        assert_eq!(
            client.send_text("491511234567", " ").unwrap_err(),
            SendError::InvalidRequest("empty text")
        );
        let long = "a".repeat(MAX_TEXT_CHARS + 1);
        assert_eq!(
            client.send_text("491511234567", &long).unwrap_err(),
            SendError::InvalidRequest("text longer than 4096 characters")
        );
        assert_eq!(
            client.send_text("", "Hallo").unwrap_err(),
            SendError::InvalidRequest("recipient missing")
        );
        assert_eq!(
            client.mark_read("", true).unwrap_err(),
            SendError::InvalidRequest("message id missing")
        );
    }

    #[test]
    fn loopback_detection() {
        assert!(is_loopback_url("http://127.0.0.1:8080"));
        assert!(is_loopback_url("http://localhost:1/"));
        assert!(is_loopback_url("http://[::1]:9000/x"));
        assert!(!is_loopback_url("https://graph.facebook.com"));
        assert!(!is_loopback_url("https://127.0.0.1.example.com"));
    }

    #[test]
    fn phone_numbers_and_bsuids() {
        assert!(is_phone_number("491511234567"));
        assert!(is_phone_number("+491511234567"));
        assert!(!is_phone_number("DE.13491208655302741918"));
        assert!(!is_phone_number("US.ENT.11815799212886844830"));
        assert!(!is_phone_number("+"));
        assert_eq!(addressed("491511234567").unwrap()["to"], "491511234567");
        let bsuid = addressed("DE.1349").unwrap();
        assert_eq!(bsuid["recipient"], "DE.1349");
        assert!(bsuid.get("to").is_none());
    }

    #[test]
    fn split_short_text_is_one_chunk() {
        assert_eq!(split_text("  Hallo!  ", 4096), vec!["Hallo!"]);
        assert!(split_text("   \n ", 4096).is_empty());
        assert!(split_text("", 10).is_empty());
    }

    #[test]
    fn split_prefers_paragraphs_then_sentences_then_words() {
        let para = format!("{}\n\n{}", "a ".repeat(30).trim(), "b ".repeat(30).trim());
        let chunks = split_text(&para, 80);
        assert_eq!(
            chunks,
            vec![
                "a ".repeat(30).trim().to_string(),
                "b ".repeat(30).trim().to_string()
            ]
        );

        let sentences = "Das ist Satz eins. Das ist Satz zwei! Und hier kommt Satz drei?";
        let chunks = split_text(sentences, 40);
        assert_eq!(
            chunks,
            vec![
                "Das ist Satz eins. Das ist Satz zwei!",
                "Und hier kommt Satz drei?"
            ]
        );

        let words = "eins zwei drei vier fünf sechs sieben acht neun zehn";
        let chunks = split_text(words, 12);
        assert!(chunks.iter().all(|c| c.chars().count() <= 12), "{chunks:?}");
        assert_eq!(chunks.join(" "), words);
        assert_eq!(chunks[0], "eins zwei");
    }

    #[test]
    fn split_cuts_long_words_on_char_boundaries() {
        let word = "ä".repeat(10);
        let chunks = split_text(&word, 3);
        assert_eq!(chunks, vec!["äää", "äää", "äää", "ä"]);

        // A family emoji (ZWJ sequence) is not split between its parts when avoidable.
        let family = "\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}";
        let text = format!("xx{family}{family}");
        let chunks = split_text(&text, 6);
        assert_eq!(chunks, vec!["xx", family, family]);
        // Too long to keep whole: still cut on a char boundary, nothing lost.
        let chunks = split_text(&text, 4);
        assert!(chunks.iter().all(|c| c.chars().count() <= 4), "{chunks:?}");
        assert_eq!(chunks.concat(), text);
    }

    #[test]
    fn split_respects_whatsapp_limit() {
        let text = "Lorem ipsum dolor sit amet, consetetur sadipscing elitr. ".repeat(300);
        let chunks = split_text(&text, MAX_TEXT_CHARS);
        assert!(chunks.len() >= 4);
        assert!(chunks.iter().all(|c| c.chars().count() <= MAX_TEXT_CHARS));
        assert!(
            chunks.iter().all(|c| c.ends_with('.')),
            "cut at sentence ends"
        );
    }

    proptest! {
        #[test]
        fn split_never_exceeds_and_keeps_content(text in "[a-zä€ \n.!?\u{200D}\u{FE0F}\u{1F600}]{0,300}", max in 1usize..60) {
            let chunks = split_text(&text, max);
            for c in &chunks {
                prop_assert!(c.chars().count() <= max);
                prop_assert!(!c.trim().is_empty());
            }
            let squash = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
            prop_assert_eq!(squash(&chunks.concat()), squash(&text));
        }
    }
}
