//! WhatsApp test doubles that speak Meta's real wire formats over loopback:
//!
//! * [`GraphSim`]: a Graph API simulator for `POST /{version}/{phone_number_id}/messages` with
//!   bearer-token check, Meta-shaped answers and errors, a record of every text, template and
//!   read mark, and fault injection (throttling, pair rate limit, closed window, undeliverable,
//!   any Graph error code, server errors, slow answers) per recipient or for all sends. Like
//!   Meta, it can also accept a send and fail it later: a signed `failed` status webhook then
//!   goes to the webhook set with [`GraphSim::send_statuses_to`]. It also serves
//!   `…/marketing_messages` (Meta's Marketing Messages API), which takes only templates whose
//!   category is marketing ([`GraphSim::set_template_category`]), and records which endpoint
//!   each send used.
//! * [`WebhookDriver`]: plays Meta's webhook delivery against our webhook endpoint: builds
//!   Meta-shaped payloads ([`PayloadBuilder`]), signs them with the app secret, POSTs them and
//!   retries answers other than 200 with bounded backoff, as Meta does (with short delays).
//!
//! Used by tests and `frontdesk demo`; never by `frontdesk serve`.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde_json::{json, Value};
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::whatsapp::payload::MediaKind;
use crate::whatsapp::signature;

/// Access token the simulator accepts when started with [`start`].
pub const SIM_TOKEN: &str = "sandbox-graph-token";
/// App secret the sandbox signs webhooks with by default.
pub const SIM_APP_SECRET: &str = "sandbox-app-secret";
/// Graph API version the sandbox uses.
pub const SIM_GRAPH_VERSION: &str = crate::whatsapp::versions::DEFAULT_VERSION;
/// Business phone number id of the simulated number.
pub const SIM_PHONE_NUMBER_ID: &str = "100000000000001";
/// Display number of the simulated business number.
pub const SIM_DISPLAY_PHONE_NUMBER: &str = "4930123456789";
/// WhatsApp Business Account id of the simulated business.
pub const SIM_WABA_ID: &str = "200000000000002";

const MAX_REQUEST_BYTES: usize = 1024 * 1024;
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
const MAX_TEXT_CHARS: usize = 4096;

// ================================================================================================
// Graph API simulator
// ================================================================================================

/// A failure the simulator answers a send with, instead of accepting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 429 with Graph code 80007 (account rate limit).
    TooManyRequests,
    /// HTTP 400, code 130429: Cloud API throughput reached.
    Throughput,
    /// HTTP 400, code 131056: (business, consumer) pair rate limit.
    PairRateLimit,
    /// HTTP 400, code 131047: more than 24 hours since the user last wrote.
    WindowClosed,
    /// HTTP 400, code 131026: message undeliverable.
    Undeliverable,
    /// HTTP 500, code 1 with `is_transient`.
    ServerError,
    /// HTTP 502 with an HTML body, as a gateway in front of Graph would answer.
    BadGateway,
    /// Answers normally, but only after this delay. The send is recorded even if the client gave
    /// up waiting, like a real request that timed out on our side but reached Meta.
    Slow(Duration),
    /// HTTP 400 with this Graph error code and Meta's title and details for it.
    Error(i64),
    /// Accepts the send (200 and a `wamid`), then delivers a `failed` status webhook with this
    /// error code, as Meta reports 131047, 131026, 131049 and 131000 after accepting a send.
    /// Needs [`GraphSim::send_statuses_to`].
    FailLater(i64),
}

/// Meta's title and details of a Graph error code, as in its error-code reference.
fn meta_error_text(code: i64) -> (&'static str, &'static str) {
    match code {
        131_000 => ("Something went wrong", "Message failed to send due to an unknown error."),
        131_026 => ("Message undeliverable", "Message Undeliverable."),
        131_047 => (
            "Re-engagement message",
            "Message failed to send because more than 24 hours have passed since the customer last replied to this number.",
        ),
        131_048 => (
            "Spam rate limit hit",
            "Message failed to send because there are restrictions on how many messages can be sent from this phone number. This may be because too many previous messages were blocked or flagged as spam.",
        ),
        131_049 => (
            "This message was not delivered to maintain healthy ecosystem engagement.",
            "In order to maintain a healthy ecosystem engagement, the message failed to be delivered.",
        ),
        131_051 => ("Unsupported message type", "Message type is not currently supported."),
        131_052 => ("Media download error", "Unable to download the media sent by the user."),
        131_056 => (
            "(Business Account, Consumer Account) pair rate limit hit",
            "Message failed to send because there were too many messages sent from this phone number to the same phone number in a short period of time.",
        ),
        131_062 => (
            "Business-scoped user ID recipient not supported",
            "This message type cannot be sent to a business-scoped user ID; use the phone number.",
        ),
        131_064 => ("Throttled", "Too many requests of this kind in a short time; try again later."),
        132_015 => (
            "Template is Paused",
            "Template is paused due to low quality so it cannot be sent in a template message.",
        ),
        132_016 => (
            "Template is Disabled",
            "Template has been paused too many times due to low quality and is now permanently disabled.",
        ),
        _ => ("Something went wrong", "Message failed to send."),
    }
}

/// A `failed` status webhook the simulator delivered (or tried to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusDelivery {
    /// The `wamid.` of the failed send.
    pub message_id: String,
    /// The error code it carried.
    pub code: i64,
    /// The webhook's answer; `None` when none came.
    pub answer: Option<u16>,
}

/// The endpoint a send was posted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/{version}/{phone_number_id}/messages`.
    Messages,
    /// `/{version}/{phone_number_id}/marketing_messages`: marketing templates only.
    MarketingMessages,
}

/// One accepted send.
#[derive(Debug, Clone, PartialEq)]
pub struct SentRecord {
    /// The `wamid.` id the simulator answered with.
    pub id: String,
    /// The endpoint it was posted to.
    pub endpoint: Endpoint,
    /// Graph API version from the request path (e.g. `v21.0`).
    pub version: String,
    /// Business phone number id from the request path.
    pub phone_number_id: String,
    /// `to` (phone number) or `recipient` (BSUID) of the request.
    pub recipient: String,
    /// What was sent.
    pub message: SentMessageKind,
}

/// What was sent.
#[derive(Debug, Clone, PartialEq)]
pub enum SentMessageKind {
    /// A text message.
    Text {
        /// The message text.
        body: String,
        /// Whether a link preview was requested.
        preview_url: bool,
    },
    /// A template message.
    Template {
        /// Template name.
        name: String,
        /// Language code of the template, e.g. `de`.
        language: String,
        /// Body parameters as text, in order.
        params: Vec<String>,
        /// Payloads of the quick-reply buttons, by button index.
        buttons: Vec<String>,
    },
    /// A reply-buttons message (`interactive` of type `button`), checked against the Graph
    /// API's limits.
    Buttons {
        /// The message text.
        body: String,
        /// (id, title) of each button, in order.
        buttons: Vec<(String, String)>,
    },
    /// Any other message type, with its full request body.
    Other {
        /// The message `type`.
        kind: String,
        /// The whole request body.
        request: Value,
    },
}

/// One mark-as-read request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadMark {
    /// The `wamid.` id marked as read.
    pub message_id: String,
    /// Whether a typing indicator was requested with it.
    pub typing: bool,
}

/// Log line for every request the simulator answered, faults and rejections included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLog {
    /// `text`, `template`, `read`, another message type, or `invalid`.
    pub kind: String,
    /// The recipient, when the request named one.
    pub recipient: Option<String>,
    /// HTTP status answered.
    pub status: u16,
}

/// [`GraphSim::wait_for_sent`] or [`GraphSim::wait_for_reads`] gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("timed out waiting for {wanted} records (have {have})")]
pub struct WaitTimeout {
    /// Records waited for.
    pub wanted: usize,
    /// Records there were when the wait ended.
    pub have: usize,
}

#[derive(Default)]
struct SimState {
    sent: Vec<SentRecord>,
    reads: Vec<ReadMark>,
    log: Vec<RequestLog>,
    global_faults: VecDeque<Fault>,
    recipient_faults: HashMap<String, VecDeque<Fault>>,
    /// Template name → Meta's category (`MARKETING`, `UTILITY`, `AUTHENTICATION`).
    template_categories: HashMap<String, String>,
    /// The approved templates by name and language; while empty, any template is accepted.
    approved: HashMap<(String, String), ApprovedTemplate>,
    status_deliveries: Vec<StatusDelivery>,
}

struct Shared {
    token: String,
    /// Where `failed` statuses of [`Fault::FailLater`] go.
    status_webhook: Mutex<Option<WebhookDriver>>,
    state: Mutex<SimState>,
    changed: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, SimState> {
        // A panicking test thread must not hide the records from the others.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What an approved template takes: WhatsApp refuses a send that names another template or
/// language (132001), fills a different number of body variables (132000) or one with empty
/// text (131008), or sets the payload
/// of a button the template does not have or that is not a quick reply (131009).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApprovedTemplate {
    /// Number of body variables (`{{1}}` …).
    pub body_params: usize,
    /// Number of quick-reply buttons (indices `0..n`).
    pub quick_replies: usize,
}

/// A running Graph API simulator on `127.0.0.1`. Stops when dropped.
pub struct GraphSim {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

/// Starts a simulator that accepts [`SIM_TOKEN`].
pub async fn start() -> GraphSim {
    GraphSim::start_with_token(SIM_TOKEN).await
}

impl GraphSim {
    /// Starts a simulator that accepts `token` as bearer token.
    pub async fn start_with_token(token: &str) -> GraphSim {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind 127.0.0.1:0 for the Graph simulator");
        let addr = listener
            .local_addr()
            .expect("local address of a bound listener");
        let shared = Arc::new(Shared {
            token: token.to_owned(),
            state: Mutex::default(),
            status_webhook: Mutex::default(),
            changed: Notify::new(),
        });
        let server = tokio::spawn(serve(listener, Arc::clone(&shared)));
        GraphSim {
            addr,
            shared,
            server,
        }
    }

    /// Stops the server and waits until it is gone (dropping it stops it too, without waiting).
    pub async fn shutdown(mut self) {
        self.server.abort();
        let _ = (&mut self.server).await;
    }

    /// `http://127.0.0.1:<port>`, to be used as the Graph base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The socket address the simulator listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bearer token the simulator accepts.
    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// Approves template `name` in `language` with its shape; from the first approval on, the
    /// simulator holds every template send to the approved ones, as WhatsApp does.
    pub fn approve_template(&self, name: &str, language: &str, shape: ApprovedTemplate) {
        self.shared
            .lock()
            .approved
            .insert((name.to_owned(), language.to_owned()), shape);
    }

    /// The next `times` sends (to anyone) answer with `fault`. Mark-as-read requests are never
    /// faulted, so injected faults hit exactly the sends a test expects.
    #[cfg(any(test, feature = "testkit"))]
    pub fn inject(&self, fault: Fault, times: usize) {
        self.shared
            .lock()
            .global_faults
            .extend(std::iter::repeat_n(fault, times));
    }

    /// The next `times` sends to `recipient` answer with `fault`; checked before global faults.
    #[cfg(any(test, feature = "testkit"))]
    pub fn inject_for(&self, recipient: &str, fault: Fault, times: usize) {
        self.shared
            .lock()
            .recipient_faults
            .entry(recipient.to_owned())
            .or_default()
            .extend(std::iter::repeat_n(fault, times));
    }

    /// Delivers the `failed` statuses of [`Fault::FailLater`] sends through `driver` (the
    /// daemon's webhook, signed with its app secret).
    pub fn send_statuses_to(&self, driver: WebhookDriver) {
        *self
            .shared
            .status_webhook
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(driver);
    }

    /// Every `failed` status webhook delivered so far, in order.
    pub fn status_deliveries(&self) -> Vec<StatusDelivery> {
        self.shared.lock().status_deliveries.clone()
    }

    /// Waits until at least `count` `failed` status webhooks were delivered; returns them.
    pub async fn wait_for_status_deliveries(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<StatusDelivery>, WaitTimeout> {
        self.wait_until(
            timeout,
            count,
            |s| (s.status_deliveries.len() >= count).then(|| s.status_deliveries.clone()),
            |s| s.status_deliveries.len(),
        )
        .await
    }

    /// Waits until at least `count` requests were answered (faults included); returns the log.
    pub async fn wait_for_requests(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<RequestLog>, WaitTimeout> {
        self.wait_until(
            timeout,
            count,
            |s| (s.log.len() >= count).then(|| s.log.clone()),
            |s| s.log.len(),
        )
        .await
    }

    /// Drops all faults not yet used.
    #[cfg(any(test, feature = "testkit"))]
    pub fn clear_faults(&self) {
        let mut state = self.shared.lock();
        state.global_faults.clear();
        state.recipient_faults.clear();
    }

    /// Sets the category of template `name` as Meta's template API would report it
    /// (`MARKETING`, `UTILITY`, `AUTHENTICATION`): only `MARKETING` templates are accepted on
    /// `/marketing_messages`. To tell the daemon, deliver
    /// [`PayloadBuilder::template_category_update`].
    pub fn set_template_category(&self, name: &str, category: &str) {
        self.shared
            .lock()
            .template_categories
            .insert(name.to_owned(), category.to_ascii_uppercase());
    }

    /// Every accepted send, in order.
    pub fn sent(&self) -> Vec<SentRecord> {
        self.shared.lock().sent.clone()
    }

    /// Bodies of the texts accepted for `recipient`, in order.
    pub fn texts_to(&self, recipient: &str) -> Vec<String> {
        self.shared
            .lock()
            .sent
            .iter()
            .filter(|r| r.recipient == recipient)
            .filter_map(|r| match &r.message {
                SentMessageKind::Text { body, .. } => Some(body.clone()),
                _ => None,
            })
            .collect()
    }

    /// Templates accepted for `recipient` as `(name, language, params)`, in order.
    pub fn templates_to(&self, recipient: &str) -> Vec<(String, String, Vec<String>)> {
        self.shared
            .lock()
            .sent
            .iter()
            .filter(|r| r.recipient == recipient)
            .filter_map(|r| match &r.message {
                SentMessageKind::Template {
                    name,
                    language,
                    params,
                    ..
                } => Some((name.clone(), language.clone(), params.clone())),
                _ => None,
            })
            .collect()
    }

    /// Every accepted mark-as-read, in order.
    pub fn read_marks(&self) -> Vec<ReadMark> {
        self.shared.lock().reads.clone()
    }

    /// Every answered request, faults and rejections included, in order.
    pub fn requests(&self) -> Vec<RequestLog> {
        self.shared.lock().log.clone()
    }

    /// Forgets records, log and faults.
    pub fn reset(&self) {
        *self.shared.lock() = SimState::default();
    }

    /// Waits until at least `count` sends were accepted; returns all of them.
    pub async fn wait_for_sent(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<SentRecord>, WaitTimeout> {
        self.wait_until(
            timeout,
            count,
            |s| (s.sent.len() >= count).then(|| s.sent.clone()),
            |s| s.sent.len(),
        )
        .await
    }

    /// Waits until at least `count` read marks were accepted; returns all of them.
    pub async fn wait_for_reads(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<ReadMark>, WaitTimeout> {
        self.wait_until(
            timeout,
            count,
            |s| (s.reads.len() >= count).then(|| s.reads.clone()),
            |s| s.reads.len(),
        )
        .await
    }

    async fn wait_until<T>(
        &self,
        timeout: Duration,
        wanted: usize,
        ready: impl Fn(&SimState) -> Option<T>,
        have: impl Fn(&SimState) -> usize,
    ) -> Result<T, WaitTimeout> {
        let wait = async {
            loop {
                // Register interest before checking, so a change between check and wait is seen.
                let notified = self.shared.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if let Some(value) = ready(&self.shared.lock()) {
                    return value;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| WaitTimeout {
                wanted,
                have: have(&self.shared.lock()),
            })
    }
}

impl Drop for GraphSim {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every open connection.
        self.server.abort();
    }
}

impl std::fmt::Debug for GraphSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphSim")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            // Reap finished connections so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let shared = Arc::clone(&shared);
        connections.spawn(async move {
            let service = service_fn(move |req| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(handle(&shared, req).await) }
            });
            // Connection errors (client went away mid-request) are expected with timeouts.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A parsed, valid request to the messages endpoint.
enum GraphRequest {
    Read(ReadMark),
    Send {
        recipient: String,
        message: SentMessageKind,
    },
}

impl GraphRequest {
    fn kind(&self) -> String {
        match self {
            GraphRequest::Read(_) => "read".into(),
            GraphRequest::Send {
                message: SentMessageKind::Text { .. },
                ..
            } => "text".into(),
            GraphRequest::Send {
                message: SentMessageKind::Template { .. },
                ..
            } => "template".into(),
            GraphRequest::Send {
                message: SentMessageKind::Buttons { .. },
                ..
            } => "interactive".into(),
            GraphRequest::Send {
                message: SentMessageKind::Other { kind, .. },
                ..
            } => kind.clone(),
        }
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "the Graph API contract checks in request order (size, auth, version, number, body), as Meta applies them"
)]
async fn handle(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_REQUEST_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return reject(
                shared,
                413,
                graph_error(100, "(#100) Request body too large", None),
            )
        }
    };
    if parts.method == Method::GET {
        if let Some(phone_number_id) = phone_number_path(parts.uri.path()) {
            if !bearer_ok(shared, &parts.headers) {
                return reject(shared, 401, invalid_token());
            }
            return json_response(
                200,
                &json!({
                    "display_phone_number": SIM_DISPLAY_PHONE_NUMBER,
                    "id": phone_number_id,
                }),
            );
        }
    }
    let Some((version, phone_number_id, endpoint)) = messages_path(parts.uri.path()) else {
        return reject(
            shared,
            400,
            graph_error(
                100,
                "Unsupported request - method type or path not supported",
                None,
            ),
        );
    };
    if parts.method != Method::POST {
        return reject(
            shared,
            400,
            graph_error(100, "Unsupported get request", None),
        );
    }
    if !bearer_ok(shared, &parts.headers) {
        return reject(shared, 401, invalid_token());
    }
    let request = match serde_json::from_slice::<Value>(&body)
        .map_err(|_| "(#100) Invalid JSON body")
        .and_then(|v| parse_request(&v))
    {
        Ok(request) => request,
        Err(message) => {
            // The code Meta answers is the one the message names: `(#100)` for a missing or
            // malformed parameter, `(#131009)` for a value outside the limits.
            let code = message
                .strip_prefix("(#")
                .and_then(|m| m.split(')').next())
                .and_then(|c| c.parse().ok())
                .unwrap_or(100);
            return reject(
                shared,
                400,
                graph_error(code, message, Some("Invalid parameter")),
            );
        }
    };
    if let Err((status, refusal)) = approved_template(shared, &request) {
        return reject(shared, status, refusal);
    }
    if endpoint == Endpoint::MarketingMessages {
        if let Err(refusal) = marketing_only(shared, &request) {
            return reject(shared, 400, refusal);
        }
    }
    let kind = request.kind();
    match request {
        GraphRequest::Read(mark) => {
            let mut state = shared.lock();
            state.reads.push(mark);
            state.log.push(RequestLog {
                kind,
                recipient: None,
                status: 200,
            });
            drop(state);
            shared.changed.notify_waiters();
            json_response(200, &json!({ "success": true }))
        }
        GraphRequest::Send { recipient, message } => {
            let fault = take_fault(&mut shared.lock(), &recipient);
            let mut fail_later = None;
            match fault {
                Some(Fault::Slow(delay)) => tokio::time::sleep(delay).await,
                Some(Fault::FailLater(code)) => fail_later = Some(code),
                Some(fault) => {
                    let response = fault_response(fault);
                    let status = response.status().as_u16();
                    shared.lock().log.push(RequestLog {
                        kind,
                        recipient: Some(recipient),
                        status,
                    });
                    shared.changed.notify_waiters();
                    return response;
                }
                None => {}
            }
            let id = wamid();
            if let Some(code) = fail_later {
                spawn_failed_status(shared, &id, &recipient, code);
            }
            let answer = accepted(&recipient, &id, &message);
            let mut state = shared.lock();
            state.sent.push(SentRecord {
                id,
                endpoint,
                version: version.to_owned(),
                phone_number_id: phone_number_id.to_owned(),
                recipient: recipient.clone(),
                message,
            });
            state.log.push(RequestLog {
                kind,
                recipient: Some(recipient),
                status: 200,
            });
            drop(state);
            shared.changed.notify_waiters();
            json_response(200, &answer)
        }
    }
}

/// A template send against the approved templates (none approved: anything goes).
fn approved_template(shared: &Shared, request: &GraphRequest) -> Result<(), (u16, Value)> {
    let GraphRequest::Send {
        message:
            SentMessageKind::Template {
                name,
                language,
                params,
                buttons,
            },
        ..
    } = request
    else {
        return Ok(());
    };
    let state = shared.lock();
    if state.approved.is_empty() {
        return Ok(());
    }
    let Some(shape) = state.approved.get(&(name.clone(), language.clone())) else {
        return Err((
            404,
            graph_error(
                132_001,
                "(#132001) Template name does not exist in the translation",
                Some("template name does not exist in the translation"),
            ),
        ));
    };
    if params.len() != shape.body_params {
        return Err((
            400,
            graph_error(
                132_000,
                "(#132000) Number of parameters does not match the expected number of params",
                Some("body: number of localizable_params does not match the expected number of params"),
            ),
        ));
    }
    if params.iter().any(|p| p.trim().is_empty()) {
        return Err((
            400,
            graph_error(
                131_008,
                "(#131008) Required parameter is missing",
                Some("body: a parameter's text is empty"),
            ),
        ));
    }
    if buttons.len() > shape.quick_replies {
        return Err((
            400,
            graph_error(
                131_009,
                "(#131009) Parameter value is not valid",
                Some("Button at index is not a quick reply button of the template"),
            ),
        ));
    }
    Ok(())
}

/// The Marketing Messages API's contract: it sends templates only (anything else: code 100,
/// "Message must be a template message."), and only marketing templates (a utility or
/// authentication template: code 131055, "Method not allowed"), as Meta's partners document it.
fn marketing_only(shared: &Shared, request: &GraphRequest) -> Result<(), Value> {
    let GraphRequest::Send {
        message: SentMessageKind::Template { name, .. },
        ..
    } = request
    else {
        return Err(graph_error(
            100,
            "(#100) Invalid parameter",
            Some("Message must be a template message."),
        ));
    };
    match shared
        .lock()
        .template_categories
        .get(name)
        .map(String::as_str)
    {
        Some("MARKETING") => Ok(()),
        _ => Err(graph_error(
            131_055,
            "(#131055) Method not allowed",
            Some("Only marketing templates can be sent with the Marketing Messages API."),
        )),
    }
}

fn reject(shared: &Shared, status: u16, body: Value) -> Response<Full<Bytes>> {
    shared.lock().log.push(RequestLog {
        kind: "invalid".into(),
        recipient: None,
        status,
    });
    json_response(status, &body)
}

fn bearer_ok(shared: &Shared, headers: &hyper::HeaderMap) -> bool {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t == shared.token)
}

fn invalid_token() -> Value {
    graph_error(
        190,
        "Invalid OAuth access token - Cannot parse access token",
        None,
    )
}

fn graph_version_ok(version: &str) -> bool {
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    version
        .strip_prefix('v')
        .and_then(|v| v.split_once('.'))
        .is_some_and(|(major, minor)| numeric(major) && numeric(minor))
}

/// `/{version}/{phone_number_id}`: the phone number node (a read, e.g. `?fields=…`).
fn phone_number_path(path: &str) -> Option<&str> {
    let mut segments = path.strip_prefix('/')?.split('/');
    let (version, phone_number_id) = (segments.next()?, segments.next()?);
    let numeric =
        !phone_number_id.is_empty() && phone_number_id.bytes().all(|b| b.is_ascii_digit());
    (segments.next().is_none() && graph_version_ok(version) && numeric).then_some(phone_number_id)
}

/// `/{version}/{phone_number_id}/messages` or `…/marketing_messages`, with `version` like
/// `v23.0`.
fn messages_path(path: &str) -> Option<(&str, &str, Endpoint)> {
    let mut segments = path.strip_prefix('/')?.split('/');
    let (version, phone_number_id, leaf) = (segments.next()?, segments.next()?, segments.next()?);
    let endpoint = match leaf {
        "messages" => Endpoint::Messages,
        "marketing_messages" => Endpoint::MarketingMessages,
        _ => return None,
    };
    if segments.next().is_some() {
        return None;
    }
    let (major, minor) = version.strip_prefix('v')?.split_once('.')?;
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (numeric(major) && numeric(minor) && numeric(phone_number_id)).then_some((
        version,
        phone_number_id,
        endpoint,
    ))
}

fn parse_request(v: &Value) -> Result<GraphRequest, &'static str> {
    if v.get("messaging_product").and_then(Value::as_str) != Some("whatsapp") {
        return Err("(#100) The parameter messaging_product is required.");
    }
    if let Some(status) = v.get("status") {
        if status.as_str() != Some("read") {
            return Err("(#100) Param status must be one of {READ}");
        }
        let message_id = v
            .get("message_id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .ok_or("(#100) The parameter message_id is required.")?;
        let typing = match v.get("typing_indicator") {
            None => false,
            Some(t) if t.get("type").and_then(Value::as_str) == Some("text") => true,
            Some(_) => return Err("(#100) Param typing_indicator['type'] must be one of {TEXT}"),
        };
        return Ok(GraphRequest::Read(ReadMark {
            message_id: message_id.to_owned(),
            typing,
        }));
    }
    // `to` wins over `recipient`, as in the real API.
    let recipient = ["to", "recipient"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_str).filter(|s| !s.is_empty()))
        .ok_or("(#100) The parameter to is required.")?
        .to_owned();
    let kind = v.get("type").and_then(Value::as_str).unwrap_or("text");
    let message = match kind {
        "text" => {
            let text = v
                .get("text")
                .ok_or("(#100) The parameter text is required.")?;
            let body = text
                .get("body")
                .and_then(Value::as_str)
                .filter(|b| !b.trim().is_empty())
                .ok_or("(#100) The parameter text['body'] is required.")?;
            if body.chars().count() > MAX_TEXT_CHARS {
                return Err("(#100) Param text['body'] must be at most 4096 characters long.");
            }
            let preview_url = text
                .get("preview_url")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            SentMessageKind::Text {
                body: body.to_owned(),
                preview_url,
            }
        }
        "template" => template_message(v)?,
        "interactive"
            if v.get("interactive")
                .and_then(|i| i.get("type"))
                .and_then(Value::as_str)
                == Some("button") =>
        {
            reply_buttons(&v["interactive"])?
        }
        other => SentMessageKind::Other {
            kind: other.to_owned(),
            request: v.clone(),
        },
    };
    Ok(GraphRequest::Send { recipient, message })
}

/// A `template` message: name, language, body parameters and quick-reply payloads.
fn template_message(v: &Value) -> Result<SentMessageKind, &'static str> {
    let template = v
        .get("template")
        .ok_or("(#100) The parameter template is required.")?;
    let name = template
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or("(#100) The parameter template['name'] is required.")?;
    let language = template
        .get("language")
        .and_then(|l| l.get("code"))
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
        .ok_or("(#100) The parameter template['language'] is required.")?;
    let params = template
        .get("components")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| c.get("type").and_then(Value::as_str) == Some("body"))
        .flat_map(|c| {
            c.get("parameters")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .map(|p| {
            p.get("text")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    let buttons = quick_reply_payloads(template)?;
    Ok(SentMessageKind::Template {
        name: name.to_owned(),
        language: language.to_owned(),
        params,
        buttons,
    })
}

/// An `interactive` object of type `button`, held to the Graph API's limits: a body text of
/// 1..=1,024 characters, one to three `reply` buttons with unique titles of 1..=20 characters
/// and ids of 1..=256 characters without surrounding spaces.
fn reply_buttons(interactive: &Value) -> Result<SentMessageKind, &'static str> {
    let body = interactive
        .get("body")
        .and_then(|b| b.get("text"))
        .and_then(Value::as_str)
        .filter(|t| !t.trim().is_empty())
        .ok_or("(#100) The parameter interactive['body']['text'] is required.")?;
    if body.chars().count() > 1024 {
        return Err(
            "(#100) Param interactive['body']['text'] must be at most 1024 characters long.",
        );
    }
    let list = interactive
        .get("action")
        .and_then(|a| a.get("buttons"))
        .and_then(Value::as_array)
        .ok_or("(#100) The parameter interactive['action']['buttons'] is required.")?;
    if list.is_empty() || list.len() > 3 {
        return Err("(#131009) Parameter value is not valid: buttons must have 1 to 3 items");
    }
    let mut buttons: Vec<(String, String)> = Vec::new();
    for b in list {
        if b.get("type").and_then(Value::as_str) != Some("reply") {
            return Err("(#100) Param interactive['action']['buttons'][*]['type'] must be reply");
        }
        let reply = b.get("reply");
        let field = |k: &str| reply.and_then(|r| r.get(k)).and_then(Value::as_str);
        let (Some(id), Some(title)) = (field("id"), field("title")) else {
            return Err("(#100) The parameters reply['id'] and reply['title'] are required.");
        };
        if title.trim().is_empty() || title.chars().count() > 20 {
            return Err("(#131009) Parameter value is not valid: button title length invalid");
        }
        if id.is_empty() || id.chars().count() > 256 || id.trim() != id {
            return Err("(#131009) Parameter value is not valid: button id invalid");
        }
        if buttons.iter().any(|(_, t)| t == title) {
            return Err("(#131009) Parameter value is not valid: button titles must be unique");
        }
        buttons.push((id.to_owned(), title.to_owned()));
    }
    Ok(SentMessageKind::Buttons {
        body: body.to_owned(),
        buttons,
    })
}

/// The payloads of a template's `button` components, by index: each must be a quick reply with
/// an index (`"0"` …) and one non-empty `payload` parameter of at most 256 characters, indices
/// given once and without gaps.
fn quick_reply_payloads(template: &Value) -> Result<Vec<String>, &'static str> {
    let mut by_index = std::collections::BTreeMap::new();
    let components = template.get("components").and_then(Value::as_array);
    for c in components.into_iter().flatten() {
        if c.get("type").and_then(Value::as_str) != Some("button") {
            continue;
        }
        if c.get("sub_type").and_then(Value::as_str) != Some("quick_reply") {
            return Err("(#100) Param template['components'][*]['sub_type'] must be quick_reply for a payload");
        }
        let index: usize = c
            .get("index")
            .and_then(Value::as_str)
            .and_then(|i| i.parse().ok())
            .filter(|i| *i < 10)
            .ok_or("(#100) The parameter template['components'][*]['index'] is required.")?;
        let payload = c
            .get("parameters")
            .and_then(Value::as_array)
            .and_then(|ps| ps.first())
            .filter(|p| p.get("type").and_then(Value::as_str) == Some("payload"))
            .and_then(|p| p.get("payload"))
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty() && p.chars().count() <= 256)
            .ok_or(
                "(#100) Param template['components'][*]['parameters'][0]['payload'] is invalid.",
            )?;
        if by_index.insert(index, payload.to_owned()).is_some() {
            return Err("(#100) Duplicate button index in template['components']");
        }
    }
    if by_index.keys().enumerate().any(|(i, k)| i != *k) {
        return Err("(#100) Button indices in template['components'] must start at 0 without gaps");
    }
    Ok(by_index.into_values().collect())
}

/// Delivers a `failed` status for `id` to the configured webhook, after the send was answered
/// (the task runs once this handler returns), like Meta's asynchronous statuses.
fn spawn_failed_status(shared: &Arc<Shared>, id: &str, recipient: &str, code: i64) {
    let Some(driver) = shared
        .status_webhook
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
    else {
        return;
    };
    let (title, details) = meta_error_text(code);
    let ts = jiff::Timestamp::now().as_second();
    let mut payload =
        PayloadBuilder::default().status_failed(id, recipient, code, title, details, ts);
    if !crate::whatsapp::graph::is_phone_number(recipient) {
        // A user-id recipient comes back as `recipient_user_id`.
        let status = &mut payload["entry"][0]["changes"][0]["value"]["statuses"][0];
        if let Some(obj) = status.as_object_mut() {
            obj.remove("recipient_id");
            obj.insert("recipient_user_id".into(), json!(recipient));
        }
    }
    let id = id.to_owned();
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let delivery = driver.deliver(&payload).await;
        shared.lock().status_deliveries.push(StatusDelivery {
            message_id: id,
            code,
            answer: delivery.status,
        });
        shared.changed.notify_waiters();
    });
}

fn take_fault(state: &mut SimState, recipient: &str) -> Option<Fault> {
    if let Some(queue) = state.recipient_faults.get_mut(recipient) {
        if let Some(fault) = queue.pop_front() {
            return Some(fault);
        }
    }
    state.global_faults.pop_front()
}

fn fault_response(fault: Fault) -> Response<Full<Bytes>> {
    let (status, code, message, details) = match fault {
        Fault::TooManyRequests => (429, 80_007, "(#80007) Rate limit issues", "Rate limit hit for the WhatsApp Business Account."),
        Fault::Throughput => (400, 130_429, "(#130429) Rate limit hit", "Cloud API message throughput has been reached."),
        Fault::PairRateLimit => (
            400,
            131_056,
            "(#131056) (Business Account, Consumer Account) pair rate limit hit",
            "Message failed to send because there were too many messages sent from this phone number to the same phone number in a short period of time.",
        ),
        Fault::WindowClosed => (
            400,
            131_047,
            "(#131047) Re-engagement message",
            "Message failed to send because more than 24 hours have passed since the customer last replied to this number.",
        ),
        Fault::Undeliverable => (400, 131_026, "(#131026) Message undeliverable", "Message Undeliverable."),
        Fault::Error(code) => {
            let (title, details) = meta_error_text(code);
            let message = format!("(#{code}) {title}");
            return json_response(400, &graph_error(code, &message, Some(details)));
        }
        Fault::ServerError => {
            let mut body = graph_error(1, "An unknown error has occurred.", None);
            body["error"]["is_transient"] = json!(true);
            return json_response(500, &body);
        }
        Fault::BadGateway => {
            return Response::builder()
                .status(StatusCode::BAD_GATEWAY)
                .header(CONTENT_TYPE, "text/html")
                .body(Full::new(Bytes::from_static(b"<html><body>502 Bad Gateway</body></html>")))
                .expect("static response parts are valid");
        }
        Fault::Slow(_) | Fault::FailLater(_) => {
            unreachable!("slow and later-failing sends are answered normally")
        }
    };
    json_response(status, &graph_error(code, message, Some(details)))
}

fn graph_error(code: i64, message: &str, details: Option<&str>) -> Value {
    let mut error = json!({
        "message": message,
        "type": "OAuthException",
        "code": code,
        "fbtrace_id": random_alnum(23),
    });
    if let Some(details) = details {
        error["error_data"] = json!({ "messaging_product": "whatsapp", "details": details });
    }
    json!({ "error": error })
}

fn accepted(recipient: &str, id: &str, message: &SentMessageKind) -> Value {
    let contact = if crate::whatsapp::graph::is_phone_number(recipient) {
        json!({ "input": recipient, "wa_id": recipient.trim_start_matches('+') })
    } else {
        json!({ "input": recipient, "user_id": recipient })
    };
    let mut sent = json!({ "id": id });
    if matches!(message, SentMessageKind::Template { .. }) {
        sent["message_status"] = json!("accepted");
    }
    json!({ "messaging_product": "whatsapp", "contacts": [contact], "messages": [sent] })
}

fn json_response(status: u16, body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json; charset=UTF-8")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("JSON response parts are valid")
}

fn wamid() -> String {
    format!("wamid.HBgM{}", random_alnum(40))
}

fn random_alnum(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

fn random_digits(len: usize) -> String {
    (0..len)
        .map(|_| char::from(b'0' + rand::thread_rng().gen_range(0..10u8)))
        .collect()
}

// ================================================================================================
// Webhook payloads
// ================================================================================================

/// Builds Meta-shaped `messages` webhook payloads for one business number.
#[derive(Debug, Clone)]
pub struct PayloadBuilder {
    /// WhatsApp Business Account id put into `entry[].id`.
    pub waba_id: String,
    /// Business phone number id put into `metadata`.
    pub phone_number_id: String,
    /// Display number put into `metadata`.
    pub display_phone_number: String,
    /// Profile name put into `contacts[]` for inbound messages; `None` leaves `contacts` out.
    pub contact_name: Option<String>,
    /// `@username` put into `contacts[].profile` beside the name, when set.
    pub username: Option<String>,
}

impl Default for PayloadBuilder {
    fn default() -> Self {
        PayloadBuilder {
            waba_id: SIM_WABA_ID.to_owned(),
            phone_number_id: SIM_PHONE_NUMBER_ID.to_owned(),
            display_phone_number: SIM_DISPLAY_PHONE_NUMBER.to_owned(),
            contact_name: Some("Alex Beispiel".to_owned()),
            username: None,
        }
    }
}

/// A text message webhook for the simulated business number.
pub fn text_message(from: &str, id: &str, body: &str, timestamp: i64) -> Value {
    PayloadBuilder::default().text_message(from, id, body, timestamp)
}

/// Merges several payloads into one delivery (Meta batches updates the same way).
pub fn batch(payloads: &[Value]) -> Value {
    let entries: Vec<Value> = payloads
        .iter()
        .flat_map(|p| {
            p.get("entry")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    json!({ "object": "whatsapp_business_account", "entry": entries })
}

impl PayloadBuilder {
    /// Payloads about another business number than the simulated one.
    pub fn for_number(phone_number_id: &str) -> Self {
        PayloadBuilder {
            phone_number_id: phone_number_id.to_owned(),
            ..Self::default()
        }
    }

    /// An inbound message of any `type`, with `object` as the type-specific object.
    pub fn message(
        &self,
        from: &str,
        id: &str,
        timestamp: i64,
        kind: &str,
        object: Value,
    ) -> Value {
        let mut message =
            json!({ "from": from, "id": id, "timestamp": timestamp.to_string(), "type": kind });
        message[kind] = object;
        self.messages_value(from, message)
    }

    /// An inbound text message.
    pub fn text_message(&self, from: &str, id: &str, body: &str, timestamp: i64) -> Value {
        self.message(from, id, timestamp, "text", json!({ "body": body }))
    }

    /// An inbound text message from a contact who withholds their phone number: the sender is
    /// only `from_user_id` (their business-scoped user id), here and in `contacts`.
    pub fn text_message_from_user_id(
        &self,
        user_id: &str,
        id: &str,
        body: &str,
        timestamp: i64,
    ) -> Value {
        let message = json!({
            "from_user_id": user_id, "id": id, "timestamp": timestamp.to_string(), "type": "text",
            "text": { "body": body }
        });
        let mut value = json!({ "messaging_product": "whatsapp", "metadata": self.metadata(), "messages": [message] });
        if let Some(name) = &self.contact_name {
            value["contacts"] = json!([{ "profile": { "name": name }, "user_id": user_id }]);
        }
        self.envelope(value)
    }

    /// A tap on a reply button of an interactive message.
    pub fn button_reply(
        &self,
        from: &str,
        id: &str,
        button_id: &str,
        title: &str,
        timestamp: i64,
    ) -> Value {
        let object =
            json!({ "type": "button_reply", "button_reply": { "id": button_id, "title": title } });
        self.message(from, id, timestamp, "interactive", object)
    }

    /// A pick from the list of an interactive message.
    pub fn list_reply(
        &self,
        from: &str,
        id: &str,
        row_id: &str,
        title: &str,
        description: &str,
        timestamp: i64,
    ) -> Value {
        let object = json!({ "type": "list_reply", "list_reply": { "id": row_id, "title": title, "description": description } });
        self.message(from, id, timestamp, "interactive", object)
    }

    /// A tap on a quick-reply button of a template message.
    pub fn template_button(
        &self,
        from: &str,
        id: &str,
        payload: &str,
        text: &str,
        timestamp: i64,
    ) -> Value {
        self.message(
            from,
            id,
            timestamp,
            "button",
            json!({ "payload": payload, "text": text }),
        )
    }

    /// A reaction to `message_id`; `emoji: None` is a removed reaction (no `emoji` field).
    pub fn reaction(
        &self,
        from: &str,
        id: &str,
        message_id: &str,
        emoji: Option<&str>,
        timestamp: i64,
    ) -> Value {
        let mut object = json!({ "message_id": message_id });
        if let Some(emoji) = emoji {
            object["emoji"] = json!(emoji);
        }
        self.message(from, id, timestamp, "reaction", object)
    }

    /// A media message; voice notes are `audio` with `voice: true`, as Meta sends them.
    pub fn media(&self, from: &str, id: &str, kind: MediaKind, timestamp: i64) -> Value {
        let (wire, mime) = match kind {
            MediaKind::Audio | MediaKind::Voice => ("audio", "audio/ogg; codecs=opus"),
            MediaKind::Image => ("image", "image/jpeg"),
            MediaKind::Video => ("video", "video/mp4"),
            MediaKind::Document => ("document", "application/pdf"),
            MediaKind::Sticker => ("sticker", "image/webp"),
        };
        let mut object =
            json!({ "mime_type": mime, "sha256": random_alnum(43), "id": "1234567890123456" });
        if matches!(kind, MediaKind::Audio | MediaKind::Voice) {
            object["voice"] = json!(kind == MediaKind::Voice);
        }
        if kind == MediaKind::Document {
            object["filename"] = json!("dokument.pdf");
        }
        self.message(from, id, timestamp, wire, object)
    }

    /// A picture, video or document with a caption.
    pub fn media_with_caption(
        &self,
        from: &str,
        id: &str,
        kind: MediaKind,
        caption: &str,
        timestamp: i64,
    ) -> Value {
        let mut payload = self.media(from, id, kind, timestamp);
        let wire = payload["entry"][0]["changes"][0]["value"]["messages"][0]["type"]
            .as_str()
            .unwrap_or("image")
            .to_owned();
        payload["entry"][0]["changes"][0]["value"]["messages"][0][wire.as_str()]["caption"] =
            json!(caption);
        payload
    }

    /// `payload`'s message as a swipe-reply quoting `quoted_id` (`context`, as WhatsApp sends
    /// it for a quote of one of our messages).
    pub fn quoting(&self, mut payload: Value, quoted_id: &str) -> Value {
        payload["entry"][0]["changes"][0]["value"]["messages"][0]["context"] =
            json!({ "from": self.display_phone_number, "id": quoted_id });
        payload
    }

    /// `payload`'s message as sent from a click-to-WhatsApp ad (`referral`, every field Meta
    /// documents for an image ad).
    pub fn from_ad(&self, mut payload: Value, source_id: &str, headline: &str) -> Value {
        payload["entry"][0]["changes"][0]["value"]["messages"][0]["referral"] = json!({
            "source_url": format!("https://fb.me/{source_id}"),
            "source_id": source_id,
            "source_type": "ad",
            "headline": headline,
            "body": "Jetzt kostenloses Probetraining sichern!",
            "media_type": "image",
            "image_url": "https://scontent.xx.fbcdn.net/ad.jpg",
            "ctwa_clid": format!("ARA{}", random_alnum(40)),
            "welcome_message": { "text": "Hallo! Wie können wir helfen?" }
        });
        payload
    }

    /// A first opening of the chat without a message (`request_welcome`).
    pub fn welcome_request(&self, from: &str, id: &str, timestamp: i64) -> Value {
        let message = json!({
            "from": from, "id": id, "timestamp": timestamp.to_string(), "type": "request_welcome"
        });
        self.messages_value(from, message)
    }

    /// A submitted WhatsApp Flow: `answers` (a JSON object) sent as the `response_json` string.
    pub fn flow_reply(&self, from: &str, id: &str, answers: &Value, timestamp: i64) -> Value {
        let mut response = answers.clone();
        response["flow_token"] = json!(random_alnum(16));
        let object = json!({
            "type": "nfm_reply",
            "nfm_reply": { "name": "flow", "body": "Sent", "response_json": response.to_string() }
        });
        self.message(from, id, timestamp, "interactive", object)
    }

    /// The contact edited their message `original_id` to `text` (Coexistence numbers).
    pub fn edit(
        &self,
        from: &str,
        id: &str,
        original_id: &str,
        text: &str,
        timestamp: i64,
    ) -> Value {
        let object = json!({
            "original_message_id": original_id,
            "message": { "type": "text", "text": { "body": text } }
        });
        self.message(from, id, timestamp, "edit", object)
    }

    /// The contact deleted their message `original_id` for everyone (Coexistence numbers).
    pub fn revoke(&self, from: &str, id: &str, original_id: &str, timestamp: i64) -> Value {
        let object = json!({ "original_message_id": original_id });
        self.message(from, id, timestamp, "revoke", object)
    }

    /// A shared location (a fixed place in Berlin).
    pub fn location(&self, from: &str, id: &str, timestamp: i64) -> Value {
        let object = json!({ "latitude": 52.520008, "longitude": 13.404954, "name": "Studio", "address": "Musterstraße 1, Berlin" });
        self.message(from, id, timestamp, "location", object)
    }

    /// A shared contact card (a fixed sample person).
    pub fn contacts(&self, from: &str, id: &str, timestamp: i64) -> Value {
        let mut message = json!({ "from": from, "id": id, "timestamp": timestamp.to_string(), "type": "contacts" });
        message["contacts"] = json!([{
            "name": { "formatted_name": "Max Mustermann", "first_name": "Max", "last_name": "Mustermann" },
            "phones": [{ "phone": "+49 151 00000000", "type": "CELL", "wa_id": "4915100000000" }]
        }]);
        self.messages_value(from, message)
    }

    /// A message type WhatsApp does not support on the Cloud API (e.g. a poll).
    pub fn unsupported(&self, from: &str, id: &str, timestamp: i64) -> Value {
        let message = json!({
            "from": from, "id": id, "timestamp": timestamp.to_string(), "type": "unsupported",
            "errors": [{
                "code": 131051, "title": "Message type unknown", "message": "Message type unknown",
                "error_data": { "details": "Message type is currently not supported." }
            }],
            "unsupported": { "type": "poll" }
        });
        self.messages_value(from, message)
    }

    /// The `user_changed_number` system message in its form before 2026-08-11 (`new_wa_id`).
    pub fn number_changed(&self, from: &str, id: &str, new_wa_id: &str, timestamp: i64) -> Value {
        let object = json!({
            "body": "User changed their number", "new_wa_id": new_wa_id, "type": "user_changed_number"
        });
        self.message(from, id, timestamp, "system", object)
    }

    /// The `user_changed_number` system message as sent since 2026-08-11: `from` is the old
    /// number, `system.wa_id` the new one, and no `contacts` array.
    pub fn number_changed_2026(
        &self,
        from: &str,
        id: &str,
        new_wa_id: &str,
        timestamp: i64,
    ) -> Value {
        let message = json!({
            "from": from, "id": id, "timestamp": timestamp.to_string(), "type": "system",
            "system": {
                "body": "User changed from their old number to a new one",
                "wa_id": new_wa_id, "type": "user_changed_number"
            }
        });
        self.envelope(json!({ "messaging_product": "whatsapp", "metadata": self.metadata(), "messages": [message] }))
    }

    /// The `user_changed_user_id` system message (since 2026-08-11): the new user id and parent
    /// user id in `system`, the previous ones beside them, no `contacts` array. `from` is the
    /// sender's number, or their previous user id when the number is withheld.
    pub fn user_id_changed(
        &self,
        from: &str,
        id: &str,
        previous_user_id: &str,
        new_user_id: &str,
        timestamp: i64,
    ) -> Value {
        let country = new_user_id.split('.').next().unwrap_or("US");
        let mut message = json!({
            "from": from, "id": id, "timestamp": timestamp.to_string(), "type": "system",
            "system": {
                "body": "User changed their user id", "type": "user_changed_user_id",
                "user_id": new_user_id, "parent_user_id": format!("{country}.ENT.{}", random_digits(12)),
                "previous_user_id": previous_user_id,
                "previous_parent_user_id": format!("{country}.ENT.{}", random_digits(12))
            }
        });
        if from == previous_user_id {
            message["from_user_id"] = json!(previous_user_id);
        }
        self.envelope(json!({ "messaging_product": "whatsapp", "metadata": self.metadata(), "messages": [message] }))
    }

    /// A status update (`sent`, `delivered`, `read`, …) for a message we sent.
    pub fn status(&self, message_id: &str, recipient: &str, status: &str, timestamp: i64) -> Value {
        let mut entry = json!({
            "id": message_id, "status": status, "timestamp": timestamp.to_string(), "recipient_id": recipient
        });
        if status == "sent" || status == "delivered" {
            entry["pricing"] = json!({ "billable": false, "pricing_model": "PMP", "category": "service", "type": "free_customer_service" });
        }
        self.statuses_value(entry)
    }

    /// A `failed` status carrying one error.
    pub fn status_failed(
        &self,
        message_id: &str,
        recipient: &str,
        code: i64,
        title: &str,
        details: &str,
        timestamp: i64,
    ) -> Value {
        let entry = json!({
            "id": message_id, "status": "failed", "timestamp": timestamp.to_string(), "recipient_id": recipient,
            "errors": [{
                "code": code, "title": title, "message": title,
                "error_data": { "details": details },
                "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"
            }]
        });
        self.statuses_value(entry)
    }

    /// An account-level error (`value.errors[]`).
    pub fn account_error(&self, code: i64, title: &str, details: &str) -> Value {
        let value = json!({
            "messaging_product": "whatsapp",
            "metadata": self.metadata(),
            "errors": [{ "code": code, "title": title, "message": title, "error_data": { "details": details } }]
        });
        self.envelope(value)
    }

    /// A completed `template_category_update`: Meta changed the category of a template
    /// (categories in Meta's spelling, `UTILITY`, `MARKETING`).
    pub fn template_category_update(
        &self,
        template_id: u64,
        name: &str,
        language: &str,
        previous: &str,
        new: &str,
    ) -> Value {
        self.account_change(
            "template_category_update",
            json!({
                "message_template_id": template_id,
                "message_template_name": name,
                "message_template_language": language,
                "previous_category": previous,
                "new_category": new,
            }),
        )
    }

    /// An impending `template_category_update`: Meta will change the category (to `correct`)
    /// at `at` (Unix seconds); `current` is still in force.
    pub fn template_category_impending(
        &self,
        template_id: u64,
        name: &str,
        language: &str,
        current: &str,
        correct: &str,
        at: i64,
    ) -> Value {
        self.account_change(
            "template_category_update",
            json!({
                "message_template_id": template_id,
                "message_template_name": name,
                "message_template_language": language,
                "correct_category": correct,
                "new_category": current,
                "category_update_timestamp": at,
            }),
        )
    }

    /// A change of a business-account field (no number metadata), as Meta sends them.
    fn account_change(&self, field: &str, value: Value) -> Value {
        json!({
            "object": "whatsapp_business_account",
            "entry": [{
                "id": self.waba_id,
                "time": jiff::Timestamp::now().as_second(),
                "changes": [{ "value": value, "field": field }]
            }]
        })
    }

    fn messages_value(&self, from: &str, message: Value) -> Value {
        let mut value = json!({ "messaging_product": "whatsapp", "metadata": self.metadata(), "messages": [message] });
        if let Some(name) = &self.contact_name {
            value["contacts"] = json!([{ "profile": { "name": name }, "wa_id": from }]);
            if let Some(username) = &self.username {
                value["contacts"][0]["profile"]["username"] = json!(username);
            }
        }
        self.envelope(value)
    }

    fn statuses_value(&self, status: Value) -> Value {
        self.envelope(json!({ "messaging_product": "whatsapp", "metadata": self.metadata(), "statuses": [status] }))
    }

    fn metadata(&self) -> Value {
        json!({ "display_phone_number": self.display_phone_number, "phone_number_id": self.phone_number_id })
    }

    fn envelope(&self, value: Value) -> Value {
        json!({
            "object": "whatsapp_business_account",
            "entry": [{ "id": self.waba_id, "changes": [{ "value": value, "field": "messages" }] }]
        })
    }
}

// ================================================================================================
// Webhook driver
// ================================================================================================

/// How persistently the driver delivers, like Meta's retries but with test-sized delays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryPolicy {
    /// Attempts in total, at least 1.
    pub max_attempts: u32,
    /// Delay before the second attempt; doubles per attempt.
    pub initial_backoff: Duration,
    /// Longest delay between attempts.
    pub max_backoff: Duration,
    /// Limit for one attempt (connect, send, answer).
    pub attempt_timeout: Duration,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        DeliveryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(500),
            attempt_timeout: Duration::from_secs(10),
        }
    }
}

impl DeliveryPolicy {
    /// One attempt, no retries (for asserting a single answer).
    pub fn once() -> Self {
        DeliveryPolicy {
            max_attempts: 1,
            ..Self::default()
        }
    }

    fn backoff(&self, failed_attempts: u32) -> Duration {
        let factor = 2u32.saturating_pow(failed_attempts.saturating_sub(1));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// How the driver signs a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signing {
    /// Correct `X-Hub-Signature-256` for the driver's app secret.
    Valid,
    /// No signature header.
    Missing,
    /// Signed with a different secret.
    WrongSecret,
    /// This exact header value.
    Header(String),
}

/// Outcome of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Status of the last answer; `None` if no attempt got one.
    pub status: Option<u16>,
    /// Attempts made, 1..=max_attempts.
    pub attempts: u32,
    /// Body of the last answer.
    pub body: Bytes,
}

impl Delivery {
    /// Whether the endpoint accepted it (Meta only counts 200 as success).
    pub fn delivered(&self) -> bool {
        self.status == Some(200)
    }
}

/// The webhook URL cannot be used by the driver.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DriverError {
    /// The URL does not parse, is not `http://` or has no explicit port.
    #[error("webhook URL is not a valid http:// URL with host and port")]
    BadUrl,
}

/// Delivers signed webhooks to one endpoint, like Meta does.
#[derive(Clone)]
pub struct WebhookDriver {
    authority: String,
    path_and_query: String,
    app_secret: Vec<u8>,
    policy: DeliveryPolicy,
}

impl std::fmt::Debug for WebhookDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookDriver")
            .field("authority", &self.authority)
            .field("path", &self.path_and_query)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

struct Answer {
    status: u16,
    body: Bytes,
}

impl WebhookDriver {
    /// `url` is the webhook endpoint, e.g. `http://127.0.0.1:8080/webhook` (plain HTTP: the
    /// driver only talks to loopback test servers).
    pub fn new(url: &str, app_secret: impl Into<Vec<u8>>) -> Result<Self, DriverError> {
        let uri: Uri = url.parse().map_err(|_| DriverError::BadUrl)?;
        if uri.scheme_str() != Some("http") {
            return Err(DriverError::BadUrl);
        }
        let authority = uri
            .authority()
            .filter(|a| a.port_u16().is_some())
            .ok_or(DriverError::BadUrl)?
            .to_string();
        let path_and_query = uri
            .path_and_query()
            .map_or("/".to_owned(), |p| p.to_string());
        Ok(WebhookDriver {
            authority,
            path_and_query,
            app_secret: app_secret.into(),
            policy: DeliveryPolicy::default(),
        })
    }

    /// Replaces the retry policy.
    pub fn with_policy(mut self, policy: DeliveryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Serialises, signs and delivers `payload`, retrying answers other than 200.
    pub async fn deliver(&self, payload: &Value) -> Delivery {
        self.deliver_bytes(payload.to_string().as_bytes(), &Signing::Valid)
            .await
    }

    /// Delivers exact bytes with the chosen signing, retrying answers other than 200.
    pub async fn deliver_bytes(&self, body: &[u8], signing: &Signing) -> Delivery {
        let header = match signing {
            Signing::Valid => Some(signature::sign(&self.app_secret, body)),
            Signing::Missing => None,
            Signing::WrongSecret => {
                let mut other = self.app_secret.clone();
                other.extend_from_slice(b"-wrong");
                Some(signature::sign(&other, body))
            }
            Signing::Header(value) => Some(value.clone()),
        };
        let body = Bytes::copy_from_slice(body);
        let max_attempts = self.policy.max_attempts.max(1);
        let mut last = Delivery {
            status: None,
            attempts: 0,
            body: Bytes::new(),
        };
        for attempt in 1..=max_attempts {
            if attempt > 1 {
                tokio::time::sleep(self.policy.backoff(attempt - 1)).await;
            }
            let request = self.post_request(body.clone(), header.as_deref());
            let answer =
                tokio::time::timeout(self.policy.attempt_timeout, self.exchange(request)).await;
            last.attempts = attempt;
            if let Ok(Some(answer)) = answer {
                last.status = Some(answer.status);
                last.body = answer.body;
                if answer.status == 200 {
                    break;
                }
            }
        }
        last
    }

    /// Performs the GET subscription handshake Meta does when a webhook URL is configured.
    /// Returns the status and body (the echoed challenge on success); `None` without an answer.
    pub async fn verify_subscription(
        &self,
        verify_token: &str,
        challenge: &str,
    ) -> Option<(u16, String)> {
        let separator = if self.path_and_query.contains('?') {
            '&'
        } else {
            '?'
        };
        let target = format!(
            "{}{separator}hub.mode=subscribe&hub.verify_token={}&hub.challenge={}",
            self.path_and_query,
            percent_encode(verify_token),
            percent_encode(challenge)
        );
        let request = Request::builder()
            .method(Method::GET)
            .uri(target)
            .header(HOST, &self.authority)
            .header(
                USER_AGENT,
                "facebookplatform/1.0 (+http://developers.facebook.com)",
            )
            .body(Full::new(Bytes::new()))
            .ok()?;
        let answer = tokio::time::timeout(self.policy.attempt_timeout, self.exchange(request))
            .await
            .ok()??;
        Some((
            answer.status,
            String::from_utf8_lossy(&answer.body).into_owned(),
        ))
    }

    fn post_request(&self, body: Bytes, signature_header: Option<&str>) -> Request<Full<Bytes>> {
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(self.path_and_query.as_str())
            .header(HOST, &self.authority)
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, "facebookexternalua");
        if let Some(value) = signature_header {
            builder = builder.header(signature::HEADER, value);
        }
        builder
            .body(Full::new(body))
            .expect("webhook request parts are valid")
    }

    /// One request on a fresh connection; `None` on any transport failure.
    async fn exchange(&self, request: Request<Full<Bytes>>) -> Option<Answer> {
        let stream = TcpStream::connect(&self.authority).await.ok()?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        let connection = tokio::spawn(connection);
        let response = sender.send_request(request).await.ok();
        let answer = match response {
            Some(response) => {
                let status = response.status().as_u16();
                let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                    .collect()
                    .await
                    .ok()?
                    .to_bytes();
                Some(Answer { status, body })
            }
            None => None,
        };
        connection.abort();
        answer
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::whatsapp::graph::{Disposition, GraphClient, SendError, SentMessage};
    use crate::whatsapp::payload::{self, Content, DeliveryStatus, Event};
    use std::sync::atomic::{AtomicUsize, Ordering};

    const TO: &str = "491511234567";
    const WAIT: Duration = Duration::from_secs(10);

    fn client(sim: &GraphSim, token: &str, timeout: Duration) -> GraphClient {
        GraphClient::new(
            &sim.base_url(),
            SIM_GRAPH_VERSION,
            SIM_PHONE_NUMBER_ID,
            token.to_owned(),
            timeout,
        )
    }

    async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        tokio::task::spawn_blocking(f)
            .await
            .expect("blocking task panicked")
    }

    /// Posts each body to its URL with the simulator's token, as a client without frontdesk's
    /// own checks would; the HTTP status and Graph error code of each answer.
    async fn post_raw(sim: &GraphSim, requests: Vec<(String, Value)>) -> Vec<(u16, Option<i64>)> {
        let token = sim.token().to_owned();
        blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .proxy(None)
                .build()
                .into();
            requests
                .into_iter()
                .map(|(url, body)| {
                    let mut r = agent
                        .post(&url)
                        .header("Authorization", format!("Bearer {token}"))
                        .send_json(body)
                        .unwrap();
                    let status = r.status().as_u16();
                    let json: Value = r.body_mut().read_json().unwrap();
                    (status, json["error"]["code"].as_i64())
                })
                .collect()
        })
        .await
    }

    #[tokio::test]
    async fn sends_text_and_records_it() {
        let sim = start().await;
        let c = client(&sim, SIM_TOKEN, WAIT);
        let sent: SentMessage =
            blocking(move || c.send_text(TO, "Hallo! Ich bin der KI-Assistent des Studios."))
                .await
                .unwrap();
        assert!(sent.id.starts_with("wamid."), "{}", sent.id);
        let records = sim.sent();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].id, sent.id);
        assert_eq!(records[0].recipient, TO);
        assert_eq!(records[0].version, SIM_GRAPH_VERSION);
        assert_eq!(records[0].phone_number_id, SIM_PHONE_NUMBER_ID);
        assert_eq!(
            records[0].message,
            SentMessageKind::Text {
                body: "Hallo! Ich bin der KI-Assistent des Studios.".into(),
                preview_url: false
            }
        );
        assert_eq!(
            sim.texts_to(TO),
            vec!["Hallo! Ich bin der KI-Assistent des Studios."]
        );
        assert!(sim.texts_to("49000").is_empty());
    }

    #[tokio::test]
    async fn bsuid_recipient_is_sent_as_recipient() {
        let sim = start().await;
        let c = client(&sim, SIM_TOKEN, WAIT);
        blocking(move || c.send_text("DE.13491208655302741918", "Hi"))
            .await
            .unwrap();
        assert_eq!(sim.texts_to("DE.13491208655302741918"), vec!["Hi"]);
    }

    #[tokio::test]
    async fn long_answer_is_split_and_sent_in_order() {
        let sim = start().await;
        let c = client(&sim, SIM_TOKEN, WAIT);
        let long = "Unser Probetraining ist kostenlos und dauert etwa eine Stunde. ".repeat(150);
        let chunks =
            crate::whatsapp::graph::split_text(&long, crate::whatsapp::graph::MAX_TEXT_CHARS);
        assert!(chunks.len() > 1);
        let expected = chunks.clone();
        blocking(move || {
            for chunk in &chunks {
                c.send_text(TO, chunk).unwrap();
            }
        })
        .await;
        let texts = sim.texts_to(TO);
        assert_eq!(texts, expected);
        assert!(texts.iter().all(|t| t.chars().count() <= 4096));
    }

    #[tokio::test]
    async fn mark_read_with_and_without_typing() {
        let sim = start().await;
        let c = client(&sim, SIM_TOKEN, WAIT);
        blocking(move || {
            c.mark_read("wamid.IN1", true).unwrap();
            c.mark_read("wamid.IN2", false).unwrap();
        })
        .await;
        assert_eq!(
            sim.read_marks(),
            vec![
                ReadMark {
                    message_id: "wamid.IN1".into(),
                    typing: true
                },
                ReadMark {
                    message_id: "wamid.IN2".into(),
                    typing: false
                }
            ]
        );
        assert!(sim.sent().is_empty());
    }

    #[tokio::test]
    async fn sends_template_with_params() {
        let sim = start().await;
        let c = client(&sim, SIM_TOKEN, WAIT);
        let sent = blocking(move || {
            c.send_template(
                TO,
                "probetraining_erinnerung",
                "de",
                &["Alex".into(), "Di, 18:00".into()],
            )
        })
        .await
        .unwrap();
        assert!(sent.id.starts_with("wamid."));
        assert_eq!(
            sim.templates_to(TO),
            vec![(
                "probetraining_erinnerung".into(),
                "de".into(),
                vec!["Alex".into(), "Di, 18:00".into()]
            )]
        );
        let c = client(&sim, SIM_TOKEN, WAIT);
        blocking(move || c.send_template(TO, "hello_world", "en_US", &[]))
            .await
            .unwrap();
        assert_eq!(
            sim.templates_to(TO)[1],
            ("hello_world".into(), "en_US".into(), vec![])
        );
    }

    #[tokio::test]
    async fn wrong_token_is_rejected_with_meta_error() {
        let sim = start().await;
        let c = client(&sim, "not-the-token", WAIT);
        let err = blocking(move || c.send_text(TO, "Hallo"))
            .await
            .unwrap_err();
        let SendError::Api { status, code, .. } = &err else {
            panic!("expected Api error, got {err:?}")
        };
        assert_eq!((*status, *code), (401, 190));
        assert!(err.is_auth_failure());
        assert_eq!(err.disposition(), Disposition::AuthFailed);
        assert!(!format!("{err:?}").contains("not-the-token"));
        assert!(!err.to_string().contains("not-the-token"));
        assert!(sim.sent().is_empty());
        assert_eq!(
            sim.requests(),
            vec![RequestLog {
                kind: "invalid".into(),
                recipient: None,
                status: 401
            }]
        );
    }

    #[tokio::test]
    async fn each_fault_maps_to_its_disposition() {
        let sim = start().await;
        let cases = [
            (
                Fault::TooManyRequests,
                Disposition::RetryLater,
                Some(80_007),
                429,
            ),
            (
                Fault::Throughput,
                Disposition::RetryLater,
                Some(130_429),
                400,
            ),
            (
                Fault::PairRateLimit,
                Disposition::PairRateLimited,
                Some(131_056),
                400,
            ),
            (
                Fault::WindowClosed,
                Disposition::WindowClosed,
                Some(131_047),
                400,
            ),
            (
                Fault::Undeliverable,
                Disposition::Undeliverable,
                Some(131_026),
                400,
            ),
            (Fault::ServerError, Disposition::RetryLater, Some(1), 500),
            (Fault::BadGateway, Disposition::RetryLater, None, 502),
        ];
        for (fault, disposition, code, status) in cases {
            sim.inject(fault, 1);
            let c = client(&sim, SIM_TOKEN, WAIT);
            let err = blocking(move || c.send_text(TO, "Hallo"))
                .await
                .unwrap_err();
            assert_eq!(err.disposition(), disposition, "{fault:?}: {err:?}");
            assert_eq!(err.code(), code, "{fault:?}");
            match &err {
                SendError::Api { status: s, .. } | SendError::Http { status: s } => {
                    assert_eq!(*s, status)
                }
                other => panic!("{fault:?}: unexpected {other:?}"),
            }
        }
        assert!(sim.sent().is_empty(), "faulted sends are not recorded");
        // The fault queue is used up: the next send goes through.
        let c = client(&sim, SIM_TOKEN, WAIT);
        blocking(move || c.send_text(TO, "Hallo")).await.unwrap();
        assert_eq!(sim.texts_to(TO).len(), 1);
        let statuses: Vec<u16> = sim.requests().iter().map(|r| r.status).collect();
        assert_eq!(statuses, [429, 400, 400, 400, 400, 500, 502, 200]);
    }

    #[tokio::test]
    async fn reply_buttons_are_sent_within_the_graph_apis_limits() {
        use crate::whatsapp::queue::ReplyButton;
        let sim = start().await;
        let button = |id: &str, title: &str| ReplyButton {
            id: id.into(),
            title: title.into(),
        };
        let c = client(&sim, SIM_TOKEN, WAIT);
        blocking(move || {
            c.send_buttons(
                TO,
                "Magst du einen neuen Termin?",
                &[button("fd-trial:reschedule:7", "Neuer Termin")],
            )
        })
        .await
        .unwrap();
        let sent = sim.sent();
        assert_eq!(sent.len(), 1);
        assert_eq!(
            sent[0].message,
            SentMessageKind::Buttons {
                body: "Magst du einen neuen Termin?".into(),
                buttons: vec![("fd-trial:reschedule:7".into(), "Neuer Termin".into())],
            }
        );
        // What the Graph API refuses is refused before a request leaves.
        for buttons in [
            vec![],
            vec![
                button("a", "1"),
                button("b", "2"),
                button("c", "3"),
                button("d", "4"),
            ],
            vec![button("a", "Einundzwanzig Zeichen")],
            vec![button(" a", "Ja")],
            vec![button("a", "Ja"), button("b", "Ja")],
        ] {
            let c = client(&sim, SIM_TOKEN, WAIT);
            let err = blocking(move || c.send_buttons(TO, "Text", &buttons))
                .await
                .unwrap_err();
            assert!(matches!(err, SendError::InvalidRequest(_)), "{err:?}");
        }
        assert_eq!(
            sim.requests().len(),
            1,
            "no refused request reached the API"
        );
    }

    #[tokio::test]
    async fn window_closed_error_carries_meta_details() {
        let sim = start().await;
        sim.inject(Fault::WindowClosed, 1);
        let c = client(&sim, SIM_TOKEN, WAIT);
        let err = blocking(move || c.send_text(TO, "Hallo"))
            .await
            .unwrap_err();
        let SendError::Api {
            kind,
            message,
            details,
            fbtrace_id,
            ..
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!(kind.as_deref(), Some("OAuthException"));
        assert_eq!(message, "(#131047) Re-engagement message");
        assert!(details.as_deref().unwrap().contains("24 hours"));
        assert!(fbtrace_id.is_some());
    }

    #[tokio::test]
    async fn recipient_faults_only_hit_that_recipient_and_n_times() {
        let sim = start().await;
        sim.inject_for(TO, Fault::PairRateLimit, 2);
        let c = client(&sim, SIM_TOKEN, WAIT);
        let results = blocking(move || {
            let other = c.send_text("491700000000", "an andere");
            let first = c.send_text(TO, "eins");
            let second = c.send_text(TO, "zwei");
            let third = c.send_text(TO, "drei");
            (other, first, second, third)
        })
        .await;
        assert!(results.0.is_ok());
        assert_eq!(
            results.1.unwrap_err().disposition(),
            Disposition::PairRateLimited
        );
        assert_eq!(
            results.2.unwrap_err().disposition(),
            Disposition::PairRateLimited
        );
        assert!(results.3.is_ok());
        assert_eq!(sim.texts_to(TO), vec!["drei"]);
        assert_eq!(sim.texts_to("491700000000"), vec!["an andere"]);
    }

    #[tokio::test]
    async fn read_marks_do_not_consume_send_faults() {
        let sim = start().await;
        sim.inject(Fault::ServerError, 1);
        let c = client(&sim, SIM_TOKEN, WAIT);
        let (read, send) =
            blocking(move || (c.mark_read("wamid.IN", true), c.send_text(TO, "x"))).await;
        assert!(read.is_ok());
        assert_eq!(send.unwrap_err().disposition(), Disposition::RetryLater);
    }

    #[tokio::test]
    async fn slow_answer_times_out_as_retry_later() {
        let sim = start().await;
        sim.inject(Fault::Slow(Duration::from_secs(5)), 1);
        let c = client(&sim, SIM_TOKEN, Duration::from_millis(200));
        let err = blocking(move || c.send_text(TO, "Hallo"))
            .await
            .unwrap_err();
        assert_eq!(err, SendError::Timeout);
        assert_eq!(err.disposition(), Disposition::RetryLater);
    }

    #[tokio::test]
    async fn slow_answer_within_timeout_succeeds() {
        let sim = start().await;
        sim.inject(Fault::Slow(Duration::from_millis(50)), 1);
        let c = client(&sim, SIM_TOKEN, WAIT);
        let sent = blocking(move || c.send_text(TO, "Hallo")).await.unwrap();
        assert_eq!(sim.sent()[0].id, sent.id);
    }

    #[tokio::test]
    async fn connection_refused_is_transport_retry_later() {
        let sim = start().await;
        let base = sim.base_url();
        sim.shutdown().await;
        // Nothing listens there any more once the simulator is gone.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let free = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        for url in [free, base] {
            let c = GraphClient::new(
                &url,
                SIM_GRAPH_VERSION,
                SIM_PHONE_NUMBER_ID,
                SIM_TOKEN.into(),
                WAIT,
            );
            let err = blocking(move || c.send_text(TO, "Hallo"))
                .await
                .unwrap_err();
            assert_eq!(err.disposition(), Disposition::RetryLater, "{err:?}");
            assert!(!err.to_string().contains(SIM_TOKEN));
        }
    }

    #[tokio::test]
    async fn simulator_validates_requests_like_meta() {
        let sim = start().await;
        let url = format!(
            "{}/{SIM_GRAPH_VERSION}/{SIM_PHONE_NUMBER_ID}/messages",
            sim.base_url()
        );
        let bad_path = format!(
            "{}/{SIM_GRAPH_VERSION}/not-a-number/messages",
            sim.base_url()
        );
        let at = |url: &String, body: Value| (url.clone(), body);
        let answers = post_raw(
            &sim,
            vec![
                at(&url, json!({ "to": TO, "type": "text", "text": { "body": "x" } })),
                at(&url, json!({ "messaging_product": "whatsapp", "type": "text", "text": { "body": "x" } })),
                at(&url, json!({ "messaging_product": "whatsapp", "to": TO, "type": "text", "text": { "body": "" } })),
                at(&url, json!({ "messaging_product": "whatsapp", "to": TO, "type": "text", "text": { "body": "x".repeat(4097) } })),
                at(&url, json!({ "messaging_product": "whatsapp", "status": "read" })),
                at(&url, json!({ "messaging_product": "whatsapp", "to": TO, "type": "template", "template": { "name": "x" } })),
                at(&bad_path, json!({ "messaging_product": "whatsapp", "to": TO, "type": "text", "text": { "body": "x" } })),
            ],
        )
        .await;
        assert!(
            answers.iter().all(|a| *a == (400, Some(100))),
            "{answers:?}"
        );
        assert!(sim.sent().is_empty());
        assert!(sim.read_marks().is_empty());
    }

    #[tokio::test]
    async fn simulator_holds_reply_buttons_to_the_graph_apis_limits() {
        let sim = start().await;
        let url = format!(
            "{}/{SIM_GRAPH_VERSION}/{SIM_PHONE_NUMBER_ID}/messages",
            sim.base_url()
        );
        let buttons = |list: Value| {
            json!({
                "messaging_product": "whatsapp", "to": TO, "type": "interactive",
                "interactive": { "type": "button", "body": { "text": "Neuer Termin?" },
                                 "action": { "buttons": list } }
            })
        };
        let reply = |id: &str, title: &str| json!({ "type": "reply", "reply": { "id": id, "title": title } });
        let requests = vec![
            // No body text; no buttons at all: missing parameters.
            (
                json!({ "messaging_product": "whatsapp", "to": TO, "type": "interactive",
                     "interactive": { "type": "button", "action": { "buttons": [reply("a", "Ja")] } } }),
                100,
            ),
            (
                json!({ "messaging_product": "whatsapp", "to": TO, "type": "interactive",
                     "interactive": { "type": "button", "body": { "text": "x" } } }),
                100,
            ),
            // Values outside the limits.
            (buttons(json!([])), 131_009),
            (
                buttons(json!([
                    reply("a", "1"),
                    reply("b", "2"),
                    reply("c", "3"),
                    reply("d", "4")
                ])),
                131_009,
            ),
            (
                buttons(json!([reply("a", "Einundzwanzig Zeichen")])),
                131_009,
            ),
            (buttons(json!([reply(" a", "Ja")])), 131_009),
            (
                buttons(json!([reply("a", "Ja"), reply("b", "Ja")])),
                131_009,
            ),
        ];
        let expected: Vec<(u16, Option<i64>)> = requests
            .iter()
            .map(|(_, code)| (400, Some(*code)))
            .collect();
        let answers = post_raw(
            &sim,
            requests
                .into_iter()
                .map(|(body, _)| (url.clone(), body))
                .collect(),
        )
        .await;
        assert_eq!(answers, expected);
        assert!(sim.sent().is_empty());
    }

    #[tokio::test]
    async fn approved_templates_hold_names_parameters_and_buttons() {
        use crate::whatsapp::graph::TemplateEndpoint;
        let sim = start().await;
        let shape = ApprovedTemplate {
            body_params: 2,
            quick_replies: 3,
        };
        sim.approve_template("probetraining_erinnerung", "de", shape);
        let c = client(&sim, SIM_TOKEN, WAIT);
        let answers = blocking(move || {
            let send = |name: &str, lang: &str, params: &[&str], buttons: &[&str]| {
                let params: Vec<String> = params.iter().map(|p| p.to_string()).collect();
                let buttons: Vec<String> = buttons.iter().map(|p| p.to_string()).collect();
                c.send_template_with_buttons(
                    TemplateEndpoint::Messages,
                    TO,
                    name,
                    lang,
                    &params,
                    &buttons,
                )
                .err()
                .and_then(|e| e.code())
            };
            vec![
                send(
                    "probetraining_erinnerung",
                    "de",
                    &["Erika", "18:00"],
                    &["a", "b", "c"],
                ),
                send("probetraining_erinnerung", "de", &["Erika", "18:00"], &[]),
                send("probetraining_erinnerng", "de", &["Erika", "18:00"], &[]),
                send("probetraining_erinnerung", "en", &["Erika", "18:00"], &[]),
                send("probetraining_erinnerung", "de", &["Erika"], &[]),
                send("probetraining_erinnerung", "de", &["Erika", " "], &[]),
                send(
                    "probetraining_erinnerung",
                    "de",
                    &["Erika", "18:00"],
                    &["a", "b", "c", "d"],
                ),
            ]
        })
        .await;
        assert_eq!(
            answers,
            [
                None,
                None,
                Some(132_001),
                Some(132_001),
                Some(132_000),
                Some(131_008),
                Some(131_009)
            ]
        );
        let sent = sim.sent();
        assert_eq!(sent.len(), 2);
        let SentMessageKind::Template { buttons, .. } = &sent[0].message else {
            panic!("a template");
        };
        assert_eq!(buttons, &["a", "b", "c"]);
    }

    #[tokio::test]
    async fn marketing_messages_takes_only_marketing_templates() {
        use crate::whatsapp::graph::TemplateEndpoint;
        let sim = start().await;
        sim.set_template_category("sommer_angebot", "MARKETING");
        sim.set_template_category("probetraining_erinnerung", "UTILITY");
        let c = client(&sim, SIM_TOKEN, WAIT);
        let (marketing, utility, plain) = blocking(move || {
            (
                c.send_template_to(
                    TemplateEndpoint::MarketingMessages,
                    TO,
                    "sommer_angebot",
                    "de",
                    &[],
                ),
                c.send_template_to(
                    TemplateEndpoint::MarketingMessages,
                    TO,
                    "probetraining_erinnerung",
                    "de",
                    &[],
                ),
                c.send_template(TO, "probetraining_erinnerung", "de", &[]),
            )
        })
        .await;
        assert!(marketing.unwrap().id.starts_with("wamid."));
        let refused = utility.unwrap_err();
        assert_eq!(refused.code(), Some(131_055), "{refused:?}");
        assert_eq!(refused.disposition(), Disposition::Permanent);
        plain.unwrap();
        let endpoints: Vec<(Endpoint, String)> = sim
            .sent()
            .into_iter()
            .map(|r| match r.message {
                SentMessageKind::Template { name, .. } => (r.endpoint, name),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            endpoints,
            [
                (Endpoint::MarketingMessages, "sommer_angebot".to_string()),
                (Endpoint::Messages, "probetraining_erinnerung".to_string()),
            ]
        );

        // Free-form messages and read marks have no place on the Marketing Messages API.
        let url = format!(
            "{}/{SIM_GRAPH_VERSION}/{SIM_PHONE_NUMBER_ID}/marketing_messages",
            sim.base_url()
        );
        let answers = post_raw(
            &sim,
            vec![
                (url.clone(), json!({ "messaging_product": "whatsapp", "to": TO, "type": "text", "text": { "body": "x" } })),
                (url.clone(), json!({ "messaging_product": "whatsapp", "status": "read", "message_id": "wamid.X" })),
                // A template the account does not have as marketing.
                (url, json!({ "messaging_product": "whatsapp", "to": TO, "type": "template", "template": { "name": "unbekannt", "language": { "code": "de" } } })),
            ],
        )
        .await;
        assert_eq!(
            answers,
            [(400, Some(100)), (400, Some(100)), (400, Some(131_055))]
        );
        assert_eq!(sim.sent().len(), 2);
    }

    #[test]
    fn template_category_payloads_parse_as_meta_sends_them() {
        use crate::whatsapp::payload::{parse, Event};
        let b = PayloadBuilder::default();
        let done = b.template_category_update(42, "angebot", "de", "UTILITY", "MARKETING");
        assert_eq!(done["entry"][0]["id"], SIM_WABA_ID);
        let soon = b.template_category_impending(42, "angebot", "de", "UTILITY", "MARKETING", 9);
        let events = parse(&serde_json::to_vec(&batch(&[done, soon])).unwrap()).unwrap();
        let [Event::TemplateCategory(done), Event::TemplateCategory(soon)] = events.as_slice()
        else {
            panic!("{events:?}")
        };
        assert_eq!(done.previous_category.as_deref(), Some("UTILITY"));
        assert_eq!(done.new_category, "MARKETING");
        assert_eq!(soon.correct_category.as_deref(), Some("MARKETING"));
        assert_eq!(soon.new_category, "UTILITY");
    }

    #[tokio::test]
    async fn wait_for_sent_sees_later_sends_and_times_out() {
        let sim = start().await;
        let c = client(&sim, SIM_TOKEN, WAIT);
        let sender = tokio::task::spawn_blocking(move || {
            c.send_text(TO, "eins").unwrap();
            c.send_text(TO, "zwei").unwrap();
        });
        let records = sim.wait_for_sent(2, WAIT).await.unwrap();
        assert_eq!(records.len(), 2);
        sender.await.unwrap();
        let err = sim
            .wait_for_sent(3, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(err, WaitTimeout { wanted: 3, have: 2 });
        sim.reset();
        assert!(sim.sent().is_empty());
        assert!(sim.requests().is_empty());
    }

    // ---- webhook driver ------------------------------------------------------------------------

    /// A minimal webhook endpoint: verifies the signature with `signature::verify`, parses with
    /// `payload::parse`, and answers the scripted statuses before answering 200.
    type Received = Arc<Mutex<Vec<(Result<(), signature::SignatureError>, Vec<u8>)>>>;

    struct Receiver {
        url: String,
        bodies: Received,
        hits: Arc<AtomicUsize>,
        _task: tokio::task::JoinHandle<()>,
    }

    async fn receiver(secret: &'static [u8], fail_first: usize, fail_status: u16) -> Receiver {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let url = format!("http://{}/webhook", listener.local_addr().unwrap());
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let hits = Arc::new(AtomicUsize::new(0));
        let (b, h) = (Arc::clone(&bodies), Arc::clone(&hits));
        let task = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (b, h) = (Arc::clone(&b), Arc::clone(&h));
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (b, h) = (Arc::clone(&b), Arc::clone(&h));
                        async move {
                            let (parts, body) = req.into_parts();
                            if parts.method == Method::GET {
                                let query = parts.uri.query().unwrap_or_default().to_owned();
                                let ok = query.contains("hub.mode=subscribe")
                                    && query.contains("hub.verify_token=t%20k%26n");
                                let challenge = query
                                    .split('&')
                                    .find_map(|kv| kv.strip_prefix("hub.challenge="))
                                    .unwrap_or_default()
                                    .to_owned();
                                let status = if ok { 200 } else { 403 };
                                return Ok::<_, Infallible>(
                                    Response::builder()
                                        .status(status)
                                        .body(Full::new(Bytes::from(challenge)))
                                        .unwrap(),
                                );
                            }
                            let header = parts
                                .headers
                                .get(signature::HEADER)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned);
                            let raw = body.collect().await.unwrap().to_bytes();
                            let verdict = signature::verify(secret, &raw, header.as_deref());
                            let n = h.fetch_add(1, Ordering::SeqCst);
                            b.lock().unwrap().push((verdict, raw.to_vec()));
                            let status = if verdict.is_err() {
                                401
                            } else if n < fail_first {
                                fail_status
                            } else {
                                200
                            };
                            Ok(Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::new()))
                                .unwrap())
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver {
            url,
            bodies,
            hits,
            _task: task,
        }
    }

    fn fast_policy(max_attempts: u32) -> DeliveryPolicy {
        DeliveryPolicy {
            max_attempts,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            attempt_timeout: WAIT,
        }
    }

    #[tokio::test]
    async fn error_codes_answer_in_meta_shape_and_keep_their_meaning() {
        let sim = start().await;
        for (code, disposition) in [
            (131_048, Disposition::SpamLimited),
            (131_049, Disposition::MarketingLimited),
            (132_015, Disposition::TemplateUnavailable),
            (132_016, Disposition::TemplateUnavailable),
            (131_062, Disposition::RecipientIdUnsupported),
            (131_064, Disposition::RetryLater),
        ] {
            sim.inject(Fault::Error(code), 1);
            let c = client(&sim, SIM_TOKEN, WAIT);
            let err = blocking(move || c.send_text(TO, "Hallo"))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Some(code));
            assert_eq!(err.disposition(), disposition, "{code}");
            let SendError::Api {
                status, details, ..
            } = &err
            else {
                panic!("{err:?}")
            };
            assert_eq!(*status, 400);
            assert!(details.as_deref().is_some_and(|d| !d.is_empty()));
        }
        assert!(sim.sent().is_empty());
    }

    #[tokio::test]
    async fn a_send_failed_later_is_accepted_then_reported_by_signed_status_webhook() {
        let rx = receiver(SIM_APP_SECRET.as_bytes(), 0, 500).await;
        let sim = start().await;
        sim.send_statuses_to(
            WebhookDriver::new(&rx.url, SIM_APP_SECRET)
                .unwrap()
                .with_policy(fast_policy(3)),
        );
        for (to, fault) in [
            (TO, Fault::FailLater(131_047)),
            ("DE.1349", Fault::FailLater(131_049)),
        ] {
            sim.inject_for(to, fault, 1);
        }
        let c = client(&sim, SIM_TOKEN, WAIT);
        let first = blocking(move || c.send_text(TO, "Hallo")).await.unwrap();
        let c = client(&sim, SIM_TOKEN, WAIT);
        let second = blocking(move || c.send_text("DE.1349", "Hallo"))
            .await
            .unwrap();
        // Accepted like any send, with its wamid.
        assert_eq!(sim.sent().len(), 2);
        let deliveries = sim.wait_for_status_deliveries(2, WAIT).await.unwrap();
        assert!(deliveries.iter().all(|d| d.answer == Some(200)));
        let bodies = rx.bodies.lock().unwrap();
        assert_eq!(bodies.len(), 2);
        let mut seen = Vec::new();
        for (signature, body) in bodies.iter() {
            assert_eq!(*signature, Ok(()), "signed with the app secret");
            let events = payload::parse(body).unwrap();
            let [Event::Status(s)] = events.as_slice() else {
                panic!("{events:?}")
            };
            assert_eq!(s.status, DeliveryStatus::Failed);
            let [e] = s.errors.as_slice() else {
                panic!("{s:?}")
            };
            assert!(!e.title.is_empty() && e.details.is_some());
            seen.push((s.message_id.clone(), s.recipient.clone(), e.code));
        }
        seen.sort();
        let mut want = vec![
            (first.id, TO.to_string(), 131_047),
            (second.id, "DE.1349".to_string(), 131_049),
        ];
        want.sort();
        assert_eq!(seen, want);
    }

    #[tokio::test]
    async fn driver_signature_verifies_and_payload_parses() {
        let rx = receiver(SIM_APP_SECRET.as_bytes(), 0, 500).await;
        let driver = WebhookDriver::new(&rx.url, SIM_APP_SECRET)
            .unwrap()
            .with_policy(fast_policy(3));
        let delivery = driver
            .deliver(&text_message(
                TO,
                "wamid.IN1",
                "Hallo, habt ihr heute offen?",
                1_750_000_000,
            ))
            .await;
        assert!(delivery.delivered());
        assert_eq!(delivery.attempts, 1);
        let bodies = rx.bodies.lock().unwrap();
        assert_eq!(bodies.len(), 1);
        assert_eq!(bodies[0].0, Ok(()));
        let events = payload::parse(&bodies[0].1).unwrap();
        let [Event::Message(m)] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert_eq!(m.id, "wamid.IN1");
        assert_eq!(m.from, TO);
        assert_eq!(m.timestamp, 1_750_000_000);
        assert_eq!(m.phone_number_id, SIM_PHONE_NUMBER_ID);
        assert_eq!(m.contact_name.as_deref(), Some("Alex Beispiel"));
        assert_eq!(
            m.content.as_engine_text(),
            Some("Hallo, habt ihr heute offen?")
        );
    }

    #[tokio::test]
    async fn driver_retries_until_200_and_counts_attempts() {
        let rx = receiver(SIM_APP_SECRET.as_bytes(), 2, 503).await;
        let driver = WebhookDriver::new(&rx.url, SIM_APP_SECRET)
            .unwrap()
            .with_policy(fast_policy(5));
        let delivery = driver.deliver(&text_message(TO, "wamid.IN2", "x", 1)).await;
        assert_eq!(delivery.status, Some(200));
        assert_eq!(delivery.attempts, 3);
        assert_eq!(rx.hits.load(Ordering::SeqCst), 3);
        // Every retry carries the identical signed body.
        let bodies = rx.bodies.lock().unwrap();
        assert!(bodies.iter().all(|(v, b)| v.is_ok() && *b == bodies[0].1));
    }

    #[tokio::test]
    async fn driver_gives_up_after_max_attempts() {
        let rx = receiver(SIM_APP_SECRET.as_bytes(), usize::MAX, 500).await;
        let driver = WebhookDriver::new(&rx.url, SIM_APP_SECRET)
            .unwrap()
            .with_policy(fast_policy(4));
        let delivery = driver.deliver(&text_message(TO, "wamid.IN3", "x", 1)).await;
        assert_eq!(delivery.status, Some(500));
        assert_eq!(delivery.attempts, 4);
        assert!(!delivery.delivered());
        assert_eq!(rx.hits.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn driver_bad_signatures_are_rejected_by_verify() {
        let rx = receiver(SIM_APP_SECRET.as_bytes(), 0, 500).await;
        let driver = WebhookDriver::new(&rx.url, SIM_APP_SECRET)
            .unwrap()
            .with_policy(DeliveryPolicy::once());
        let body = text_message(TO, "wamid.IN4", "x", 1).to_string();
        for signing in [
            Signing::Missing,
            Signing::WrongSecret,
            Signing::Header("sha256=xyz".into()),
        ] {
            let delivery = driver.deliver_bytes(body.as_bytes(), &signing).await;
            assert_eq!(
                (delivery.status, delivery.attempts),
                (Some(401), 1),
                "{signing:?}"
            );
        }
        let verdicts: Vec<_> = rx.bodies.lock().unwrap().iter().map(|(v, _)| *v).collect();
        assert_eq!(
            verdicts,
            vec![
                Err(signature::SignatureError::Missing),
                Err(signature::SignatureError::Mismatch),
                Err(signature::SignatureError::Malformed)
            ]
        );
    }

    #[tokio::test]
    async fn driver_without_listener_reports_no_status() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/webhook", listener.local_addr().unwrap());
        drop(listener);
        let driver = WebhookDriver::new(&url, SIM_APP_SECRET)
            .unwrap()
            .with_policy(fast_policy(2));
        let delivery = driver.deliver(&text_message(TO, "wamid.IN5", "x", 1)).await;
        assert_eq!((delivery.status, delivery.attempts), (None, 2));
    }

    #[tokio::test]
    async fn driver_subscription_handshake() {
        let rx = receiver(SIM_APP_SECRET.as_bytes(), 0, 500).await;
        let driver = WebhookDriver::new(&rx.url, SIM_APP_SECRET).unwrap();
        assert_eq!(
            driver.verify_subscription("t k&n", "1158201444").await,
            Some((200, "1158201444".into()))
        );
        assert_eq!(
            driver
                .verify_subscription("wrong", "1158201444")
                .await
                .map(|a| a.0),
            Some(403)
        );
    }

    #[test]
    fn driver_rejects_non_http_urls() {
        assert_eq!(
            WebhookDriver::new("https://127.0.0.1:1/x", "s").unwrap_err(),
            DriverError::BadUrl
        );
        assert_eq!(
            WebhookDriver::new("http://127.0.0.1/x", "s").unwrap_err(),
            DriverError::BadUrl
        );
        assert_eq!(
            WebhookDriver::new("not a url", "s").unwrap_err(),
            DriverError::BadUrl
        );
        assert!(WebhookDriver::new("http://127.0.0.1:8080", "s").is_ok());
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = DeliveryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            attempt_timeout: WAIT,
        };
        let delays: Vec<u128> = (1..=5).map(|n| p.backoff(n).as_millis()).collect();
        assert_eq!(delays, [10, 20, 40, 50, 50]);
    }

    #[test]
    #[expect(
        clippy::too_many_lines,
        reason = "a table with one row per payload kind"
    )]
    fn every_built_payload_parses_to_the_expected_content() {
        let b = PayloadBuilder::default();
        let cases: Vec<(Value, Content)> = vec![
            (
                b.text_message(TO, "wamid.1", "Hi", 1),
                Content::Text("Hi".into()),
            ),
            (
                b.button_reply(TO, "wamid.2", "yes", "Ja", 1),
                Content::ButtonReply {
                    id: "yes".into(),
                    title: "Ja".into(),
                },
            ),
            (
                b.list_reply(TO, "wamid.3", "r1", "Yoga", "Di 19 Uhr", 1),
                Content::ListReply {
                    id: "r1".into(),
                    title: "Yoga".into(),
                    description: Some("Di 19 Uhr".into()),
                },
            ),
            (
                b.template_button(TO, "wamid.4", "BOOK", "Termin buchen", 1),
                Content::TemplateButton {
                    payload: "BOOK".into(),
                    text: "Termin buchen".into(),
                },
            ),
            (
                b.reaction(TO, "wamid.5", "wamid.OUT", Some("\u{2764}\u{FE0F}"), 1),
                Content::Reaction {
                    message_id: "wamid.OUT".into(),
                    emoji: Some("\u{2764}\u{FE0F}".into()),
                },
            ),
            (
                b.reaction(TO, "wamid.6", "wamid.OUT", None, 1),
                Content::Reaction {
                    message_id: "wamid.OUT".into(),
                    emoji: None,
                },
            ),
            (b.location(TO, "wamid.7", 1), Content::Location),
            (b.contacts(TO, "wamid.8", 1), Content::Contacts { count: 1 }),
            (
                b.unsupported(TO, "wamid.9", 1),
                Content::Unsupported("unsupported".into()),
            ),
            (
                b.number_changed(TO, "wamid.10", "491700000001", 1),
                Content::System {
                    kind: "user_changed_number".into(),
                    new_wa_id: Some("491700000001".into()),
                    new_user_id: None,
                    previous_user_id: None,
                },
            ),
            (
                b.number_changed_2026(TO, "wamid.11", "491700000002", 1),
                Content::System {
                    kind: "user_changed_number".into(),
                    new_wa_id: Some("491700000002".into()),
                    new_user_id: None,
                    previous_user_id: None,
                },
            ),
            (
                b.user_id_changed("DE.77", "wamid.12", "DE.77", "DE.88", 1),
                Content::System {
                    kind: "user_changed_user_id".into(),
                    new_wa_id: None,
                    new_user_id: Some("DE.88".into()),
                    previous_user_id: Some("DE.77".into()),
                },
            ),
        ];
        for (value, expected) in cases {
            let events = payload::parse(value.to_string().as_bytes()).unwrap();
            let [Event::Message(m)] = events.as_slice() else {
                panic!("{events:?}")
            };
            assert_eq!(m.content, expected);
        }
        for kind in [
            MediaKind::Audio,
            MediaKind::Voice,
            MediaKind::Image,
            MediaKind::Video,
            MediaKind::Document,
            MediaKind::Sticker,
        ] {
            let events =
                payload::parse(b.media(TO, "wamid.m", kind, 1).to_string().as_bytes()).unwrap();
            let [Event::Message(m)] = events.as_slice() else {
                panic!("{events:?}")
            };
            assert!(
                matches!(m.content, Content::Media { kind: k, .. } if k == kind),
                "{kind:?}: {:?}",
                m.content
            );
        }

        let statuses = batch(&[
            b.status("wamid.OUT", TO, "delivered", 2),
            b.status("wamid.OUT", TO, "read", 3),
            b.status_failed(
                "wamid.OUT2",
                TO,
                131_047,
                "Re-engagement message",
                "24 hours passed",
                4,
            ),
            b.account_error(131_000, "Something went wrong", "Unknown"),
        ]);
        let events = payload::parse(statuses.to_string().as_bytes()).unwrap();
        assert_eq!(events.len(), 4);
        let Event::Status(read) = &events[1] else {
            panic!()
        };
        assert_eq!(read.status, DeliveryStatus::Read);
        let Event::Status(failed) = &events[2] else {
            panic!()
        };
        assert_eq!(failed.status, DeliveryStatus::Failed);
        assert_eq!(failed.errors[0].code, 131_047);
        assert!(matches!(&events[3], Event::Error(e) if e.error.code == 131_000));
    }
}
