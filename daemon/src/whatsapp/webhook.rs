//! The webhook endpoint WhatsApp calls (directly, through a reverse proxy, or through the
//! tunnel): `GET /webhook` answers the subscription handshake, `POST /webhook` checks the
//! signature over the exact bytes received, parses, persists every message and status to the
//! inbox in one durable (group-committed) write, and only then answers 200. Template category
//! changes (`template_category_update`) are written to the store in that same write.
//!
//! Rejections: 413 (body over the limit), 401 (signature missing or wrong), 400 (signed but
//! malformed), 403 (wrong verify token), 404 (other paths). Each is counted in metrics and
//! reported to the [`RejectionSink`] (the audit log), at most `audit_per_minute` times a minute
//! so a flood cannot fill the audit log. Events about another business number than the
//! configured one (`metadata.phone_number_id`) are dropped and reported as `foreign_number`;
//! the request is still answered 200, since Meta would only deliver it again.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use tracing::{debug, info, warn};

use super::dispatch::Dispatcher;
use super::payload::{self, Event, TemplateCategoryUpdate};
use super::queue::{InboxEntry, Queues};
use super::signature;
use super::templates;
use crate::http1::text;
use crate::metrics::{Metrics, Outcome};
use crate::secrets::Secret;
use crate::store::crypto::Pseudonym;
use crate::store::Store;

/// Receives rejected requests (reason codes only; never bodies).
pub trait RejectionSink: Send + Sync {
    /// Called for each rejected request with the HTTP status and the reason code.
    fn rejected(&self, status: u16, reason: &'static str);
}

/// A sink that only logs (when no audit log is attached).
pub struct LogRejections;

impl RejectionSink for LogRejections {
    fn rejected(&self, status: u16, reason: &'static str) {
        warn!(status, reason, "webhook request rejected");
    }
}

/// Everything the webhook handler needs.
pub struct WebhookState {
    /// The store the inbox lives in.
    pub store: Arc<Store>,
    /// The inbox the request's events are written to before it is answered.
    pub queues: Arc<Queues>,
    /// Gets the inbox rows once they are durable.
    pub dispatcher: Arc<Dispatcher>,
    /// The Meta app secret, key of the `X-Hub-Signature-256` HMAC over every body.
    pub app_secret: Secret,
    /// The token Meta must send in the subscription handshake (`hub.verify_token`).
    pub verify_token: Secret,
    /// Larger bodies are rejected with 413.
    pub max_body_bytes: usize,
    /// Request counters by outcome.
    pub metrics: Arc<Metrics>,
    /// Where rejected requests are reported.
    pub rejections: Arc<dyn RejectionSink>,
    /// Most rejections reported per minute; the rest are only counted.
    pub audit_per_minute: u32,
    /// The configured business number: events about another number are dropped and reported.
    pub phone_number_id: String,
    /// Messages older than this are dropped as replays (see [`replay_horizon`]).
    pub max_message_age: jiff::SignedDuration,
    limiter: RateWindow,
}

/// How old a message may be and still be taken. A message id is remembered for
/// `seen_ids_days`; a captured signed body replayed after that would be answered as new, so
/// messages older than the memory minus a day of margin are dropped. Meta's own retries stop
/// after 7 days, and `seen_ids_days` is at least 8.
pub fn replay_horizon(seen_ids_days: u32) -> jiff::SignedDuration {
    jiff::SignedDuration::from_hours(24 * i64::from(seen_ids_days.saturating_sub(1).max(1)))
}

impl WebhookState {
    /// The handler's state; the rejection rate limit starts empty.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<Store>,
        queues: Arc<Queues>,
        dispatcher: Arc<Dispatcher>,
        app_secret: Secret,
        verify_token: Secret,
        max_body_bytes: usize,
        metrics: Arc<Metrics>,
        rejections: Arc<dyn RejectionSink>,
        audit_per_minute: u32,
        phone_number_id: String,
        max_message_age: jiff::SignedDuration,
    ) -> Arc<WebhookState> {
        Arc::new(WebhookState {
            store,
            queues,
            dispatcher,
            app_secret,
            verify_token,
            max_body_bytes,
            metrics,
            rejections,
            audit_per_minute,
            phone_number_id,
            max_message_age,
            limiter: RateWindow::default(),
        })
    }

    fn reject(&self, status: StatusCode, reason: &'static str) -> Response<Full<Bytes>> {
        self.metrics
            .webhook_requests
            .get_or_create(&Outcome::of(reason))
            .inc();
        if self.limiter.allow(self.audit_per_minute) {
            self.rejections.rejected(status.as_u16(), reason);
        }
        text(status, reason)
    }
}

/// Fixed one-minute windows: cheap, and enough to cap the audit volume.
#[derive(Default)]
pub(crate) struct RateWindow {
    minute: AtomicU64,
    count: AtomicU32,
}

impl RateWindow {
    /// Whether one more event fits into this minute's `per_minute`.
    pub(crate) fn allow(&self, per_minute: u32) -> bool {
        let now = (jiff::Timestamp::now().as_second() / 60) as u64;
        if self.minute.swap(now, Ordering::Relaxed) != now {
            self.count.store(0, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed) < per_minute
    }
}

/// Handles one request. Generic over the body so it serves HTTP/1 (local listener) and HTTP/2
/// (the tunnel) alike.
pub async fn handle<B>(
    state: Arc<WebhookState>,
    req: Request<B>,
) -> Result<Response<Full<Bytes>>, Infallible>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let path = req.uri().path();
    if path != "/webhook" && path != "/webhook/" {
        return Ok(text(StatusCode::NOT_FOUND, "not found"));
    }
    match *req.method() {
        Method::GET => Ok(verify_subscription(&state, &req)),
        Method::POST => Ok(receive(state, req).await),
        _ => Ok(text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")),
    }
}

fn verify_subscription<B>(state: &WebhookState, req: &Request<B>) -> Response<Full<Bytes>> {
    let query = req.uri().query().unwrap_or("");
    let mut mode = None;
    let mut token = None;
    let mut challenge = None;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "hub.mode" => mode = Some(v.into_owned()),
            "hub.verify_token" => token = Some(v.into_owned()),
            "hub.challenge" => challenge = Some(v.into_owned()),
            _ => {}
        }
    }
    let token_ok = token.as_deref().is_some_and(|t| {
        signature::verify_token_matches(
            state.verify_token.expose_str().unwrap_or("").as_bytes(),
            t.as_bytes(),
        )
    });
    match (mode.as_deref(), challenge) {
        (Some("subscribe"), Some(challenge)) if token_ok => {
            state
                .metrics
                .webhook_requests
                .get_or_create(&Outcome::of("verify_ok"))
                .inc();
            // Meta expects the bare challenge as the body.
            Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "text/plain")
                .body(Full::new(Bytes::from(challenge)))
                .expect("static response parts are valid")
        }
        _ => state.reject(StatusCode::FORBIDDEN, "verify_denied"),
    }
}

async fn receive<B>(state: Arc<WebhookState>, req: Request<B>) -> Response<Full<Bytes>>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let header = req
        .headers()
        .get(signature::HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (parts, body) = req.into_parts();
    let body = match crate::http1::read_body(&parts.headers, body, state.max_body_bytes).await {
        Ok(body) => body,
        Err(refused) => return state.reject(refused.status(), refused.reason()),
    };
    if let Err(e) = signature::verify(state.app_secret.expose(), &body, header.as_deref()) {
        return state.reject(StatusCode::UNAUTHORIZED, e.reason());
    }
    let events = match payload::parse(&body) {
        Ok(ev) => ev,
        Err(e) => return state.reject(StatusCode::BAD_REQUEST, e.reason()),
    };
    let (entries, categories) = inbox_entries(&state, events);
    if !entries.is_empty() || !categories.is_empty() {
        let st = state.clone();
        let persisted = tokio::task::spawn_blocking(move || {
            // Each contact's key is created (when new) and their rows committed under their
            // lock, so a forget cannot fall in between and leave a row under a fresh key.
            let customers: Vec<_> = entries.iter().map(|(p, _)| *p).collect();
            let _guards = st.store.lock_customers(&customers);
            let mut batch = st.store.batch();
            let keys = st.queues.push_inbox(&st.store, &mut batch, &entries)?;
            for update in &categories {
                apply_category_update(&st.store, &mut batch, update);
            }
            st.store.commit_durable(batch).map(|()| {
                keys.into_iter()
                    .zip(entries.iter().map(|(p, _)| *p))
                    .collect::<Vec<_>>()
            })
        })
        .await;
        match persisted {
            Ok(Ok(rows)) => state.dispatcher.enqueue(rows),
            Ok(Err(e)) => {
                // Not acknowledged: WhatsApp retries, nothing is lost.
                warn!(error = %e, "inbox write failed; answering 503");
                state
                    .metrics
                    .webhook_requests
                    .get_or_create(&Outcome::of("store_error"))
                    .inc();
                return text(StatusCode::SERVICE_UNAVAILABLE, "try again");
            }
            Err(e) => {
                warn!(error = %e, "inbox write task failed");
                return text(StatusCode::SERVICE_UNAVAILABLE, "try again");
            }
        }
    }
    state
        .metrics
        .webhook_requests
        .get_or_create(&Outcome::of("ok"))
        .inc();
    text(StatusCode::OK, "ok")
}

/// Adds a template's category change to `batch`, and says what it means.
fn apply_category_update(
    store: &Store,
    batch: &mut fjall::OwnedWriteBatch,
    update: &TemplateCategoryUpdate,
) {
    match templates::record_update(store, batch, update, jiff::Timestamp::now()) {
        templates::UpdateOutcome::Applied(category) => info!(
            template = %update.name,
            language = %update.language,
            previous = update.previous_category.as_deref().unwrap_or("?"),
            category = %category,
            "WhatsApp changed a template's category; sends of it follow the new category"
        ),
        templates::UpdateOutcome::Impending => warn!(
            template = %update.name,
            language = %update.language,
            upcoming = update.correct_category.as_deref().unwrap_or("?"),
            "WhatsApp will change a template's category in about a day"
        ),
        templates::UpdateOutcome::UnknownCategory => warn!(
            template = %update.name,
            category = %update.new_category,
            "WhatsApp reported a template category frontdesk does not know; ignored"
        ),
    }
}

/// The events to keep in the inbox, keyed by pseudonym, and the template category changes
/// (about the business account, not a number: a box's account has only its own templates).
/// Account errors are logged; events about another business number are dropped, counted and
/// reported.
fn inbox_entries(
    state: &WebhookState,
    events: Vec<Event>,
) -> (Vec<(Pseudonym, InboxEntry)>, Vec<TemplateCategoryUpdate>) {
    let mut entries = Vec::new();
    let mut categories = Vec::new();
    let mut foreign = 0usize;
    let mut replayed = 0usize;
    let mut skipped = 0usize;
    let oldest = jiff::Timestamp::now()
        .checked_sub(state.max_message_age)
        .map_or(i64::MIN, |t| t.as_second());
    for ev in events {
        let number = match &ev {
            Event::Message(m) => &m.phone_number_id,
            Event::Status(s) => &s.phone_number_id,
            Event::Error(e) => &e.phone_number_id,
            Event::TemplateCategory(_) | Event::Skipped { .. } => &state.phone_number_id,
        };
        if number != &state.phone_number_id {
            // Signed by our app, but about another business number (an app subscribed to a
            // shared account): never stored or answered from this box.
            foreign += 1;
            continue;
        }
        match ev {
            Event::Message(m) if m.timestamp < oldest => {
                // Older than the memory of seen ids: a replay of a captured body.
                replayed += 1;
            }
            Event::Message(m) => {
                entries.push((state.store.pseudonym(&m.from), InboxEntry::Message(m)))
            }
            Event::Status(s) => {
                let p = state
                    .store
                    .pseudonym_matching(&s.recipient, s.recipient_user_id.as_deref());
                entries.push((p, InboxEntry::Status(s)))
            }
            Event::Error(e) => {
                warn!(code = e.error.code, "WhatsApp reported an account error");
            }
            Event::TemplateCategory(u) => categories.push(u),
            Event::Skipped { reason } => {
                debug!(%reason, "an unreadable message or status skipped; the rest of the post is taken");
                skipped += 1;
            }
        }
    }
    for (count, reason) in [
        (replayed, "replayed_old_message"),
        (foreign, "foreign_number"),
        (skipped, "malformed_item"),
    ] {
        if count == 0 {
            continue;
        }
        state
            .metrics
            .webhook_requests
            .get_or_create(&Outcome::of(reason))
            .inc();
        if state.limiter.allow(state.audit_per_minute) {
            // Answered 200 all the same: Meta would only deliver it again.
            state.rejections.rejected(200, reason);
        }
    }
    (entries, categories)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replay_horizon_stays_behind_the_memory_of_seen_ids() {
        assert_eq!(
            replay_horizon(14),
            jiff::SignedDuration::from_hours(13 * 24)
        );
        // At the smallest allowed memory (8 days) Meta's 7 days of retries still pass.
        assert_eq!(replay_horizon(8), jiff::SignedDuration::from_hours(7 * 24));
    }
}
