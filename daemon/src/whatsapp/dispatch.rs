//! The dispatcher: drains the inbox into committed turns.
//!
//! - One customer's messages are handled in arrival order, one burst at a time; different
//!   customers run concurrently up to a bound. Messages of one customer that arrive within the
//!   burst window are one burst, but a burst is closed after [`BURST_CAP_WINDOWS`] windows or
//!   [`MAX_BURST_MESSAGES`] messages, so someone who keeps typing is still answered. A
//!   concurrency permit is taken only once the burst is closed: a contact who is still typing
//!   holds no slot.
//! - Every part of a burst — text, voice note, picture, reaction, system notice — goes to the
//!   engine ([`Decide`]) as one [`Burst`]; the engine decides what each means.
//! - Every inbox row is processed exactly once: the turn's effects, the reply rows, the seen
//!   marks of the message ids and the removal of the inbox rows are committed in one durable
//!   batch ([`crate::turn::commit`] with this module's
//!   [`QueueRows`](crate::turn::QueueRows) implementation). A crash before that commit
//!   leaves the rows in the inbox, and they are processed again at start-up; a crash after it
//!   leaves nothing to redo.
//! - A turn that fails (model, MagicLine, store) is tried again with growing pauses
//!   ([`TurnRetry`]) while the daemon runs; the contact's later messages wait behind it, so
//!   they are answered after it, in order. The engine reads the words against when they were
//!   written, and a booking request is named after the message that asked, so a later attempt
//!   means the same thing and books at most once. After the last attempt the engine records the
//!   messages and hands the contact to staff ([`Decide::give_up`]): nothing is dropped, nothing
//!   answered twice. Each retry is counted (`frontdesk_turn_retries_total{reason}`) and
//!   logged. A stop during a pause leaves the rows in the inbox for the next start.
//! - Messages WhatsApp delivers twice (also across restarts) are dropped by message id; delivery
//!   statuses update the outbox's delivery records. A `failed` status is handled like a failed
//!   send call ([`super::failures::handle_failed_status`]), in its own durable write with the
//!   removal of its inbox row.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fjall::OwnedWriteBatch;
use jiff::Timestamp;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{Notify, Semaphore};
use tracing::{debug, error, warn};

use super::graph::GraphClient;
use super::payload::{Content, DeliveryStatus, InboundMessage, StatusUpdate};
use super::queue::{DeliveryState, InboxEntry, OutboundKind, OutboxEntry, Queued, Queues};
use crate::audit::{Actor, AuditEvent, AuditLog, Code, NewEntry};
use crate::metrics::{Metrics, Outcome, Reason};
use crate::store::crypto::Pseudonym;
use crate::store::{self, Store};
use crate::turn::{
    self, AddressKind, Burst, Decide, Effects, IdentityChange, Part, PartKind, TurnOutcome,
};

/// A burst is closed at the latest this many burst windows after its first message.
pub const BURST_CAP_WINDOWS: u32 = 4;
/// A burst is closed once it holds this many messages.
pub const MAX_BURST_MESSAGES: usize = 20;
/// A `failed` status can overtake the sender's record of the send it is about (the webhook is
/// faster than the write after the send call): one about an unknown message that is younger
/// than this is looked at again after [`STATUS_RECHECK`], instead of being settled as unknown.
const STATUS_OVERTAKE_WINDOW: jiff::SignedDuration = jiff::SignedDuration::from_mins(10);
const STATUS_RECHECK: Duration = Duration::from_secs(1);

/// When a burst of messages from one contact is answered: `window` after the latest message,
/// but no later than [`BURST_CAP_WINDOWS`] windows after the first, so someone who keeps typing
/// still gets an answer.
pub fn burst_deadline(first: Instant, latest: Instant, window: Duration) -> Instant {
    (latest + window).min(first + window * BURST_CAP_WINDOWS)
}

/// The channel's rows of a turn: one outbox row per reply part (to the turn's address), the
/// seen marks and the removal of the burst's inbox rows.
struct Retirement {
    seen: Vec<String>,
    inbox_keys: Vec<Vec<u8>>,
    queues: Arc<Queues>,
}

impl turn::QueueRows for Retirement {
    fn add(
        &self,
        batch: &mut OwnedWriteBatch,
        store: &Store,
        effects: &Effects,
    ) -> store::Result<()> {
        if effects.record.is_none() && !effects.replies.is_empty() {
            // A reply to someone without a record (a staff number): its rows need a key of
            // their own, swept when no row uses it any more.
            store.data_key_or_create(&effects.pseudonym, batch)?;
        }
        for (i, reply) in effects.replies.iter().enumerate() {
            let history: Vec<u64> = effects.reply_rows.get(i).copied().into_iter().collect();
            for part in super::graph::split_text(reply, super::graph::MAX_TEXT_CHARS) {
                self.queues.push_outbox(
                    store,
                    batch,
                    &effects.pseudonym,
                    &OutboxEntry {
                        to: effects.address.clone(),
                        kind: OutboundKind::Text(part),
                        created: Timestamp::now(),
                        history: history.clone(),
                    },
                )?;
            }
        }
        for id in &self.seen {
            self.queues.mark_seen(store, batch, id, effects.at);
        }
        for k in &self.inbox_keys {
            self.queues.remove_inbox(store, batch, k);
        }
        Ok(())
    }
}

/// The engine's view of an inbound message.
fn part_of(m: &InboundMessage) -> Part {
    let kind = match &m.content {
        Content::Reaction { .. } => PartKind::Reaction,
        Content::System { .. } => {
            identity_notice(m).map_or(PartKind::System, PartKind::IdentityChanged)
        }
        Content::Welcome => PartKind::Welcome,
        Content::Edit { original_id, text } => PartKind::Edit {
            original: original_id.clone(),
            text: text.clone(),
        },
        Content::Revoke { original_id } => PartKind::Revoke {
            original: original_id.clone(),
        },
        Content::Media {
            kind,
            caption: Some(caption),
            ..
        } if !caption.trim().is_empty() => PartKind::Captioned {
            media: kind.as_str(),
            caption: caption.clone(),
        },
        content => match content.as_engine_text() {
            Some(text) => PartKind::Text(text.to_string()),
            None => PartKind::NonText(content.kind()),
        },
    };
    Part {
        id: m.id.clone(),
        at: Timestamp::from_second(m.timestamp).unwrap_or_else(|_| Timestamp::now()),
        kind,
        quoted: m.reply_to.clone(),
        button: match &m.content {
            Content::TemplateButton { payload, .. } if !payload.is_empty() => Some(payload.clone()),
            // A reply button of an interactive message frontdesk sent: its id is the payload.
            Content::ButtonReply { id, .. } if !id.is_empty() => Some(id.clone()),
            _ => None,
        },
    }
}

/// The burst of `messages` (non-empty, one contact's, in order): addressed as the last one.
fn burst_of(messages: &[(Vec<u8>, InboundMessage)]) -> Burst {
    let last = &messages.last().expect("non-empty").1;
    Burst {
        address: last.from.clone(),
        contact_name: last.contact_name.clone(),
        // Only worth linking when `from` is the phone number (else it is the user id).
        user_id: last.user_id.clone().filter(|u| *u != last.from),
        parent_user_id: messages
            .iter()
            .rev()
            .find_map(|(_, m)| m.parent_user_id.clone()),
        username: messages.iter().rev().find_map(|(_, m)| m.username.clone()),
        referral: messages
            .iter()
            .rev()
            .find_map(|(_, m)| m.referral.as_deref().cloned()),
        parts: messages.iter().map(|(_, m)| part_of(m)).collect(),
    }
}

/// The new identity a system notice in `m` announces, if it is one that names a valid one.
fn identity_notice(m: &InboundMessage) -> Option<IdentityChange> {
    let Content::System {
        kind,
        new_wa_id,
        new_user_id,
        previous_user_id,
    } = &m.content
    else {
        return None;
    };
    identity_change(
        kind,
        new_wa_id.as_deref(),
        new_user_id.as_deref(),
        previous_user_id.as_deref(),
    )
}

fn identity_change(
    kind: &str,
    new_number: Option<&str>,
    new_user_id: Option<&str>,
    previous_user_id: Option<&str>,
) -> Option<IdentityChange> {
    let user_id = |id: &str| turn::is_valid_address(id) == Some(AddressKind::UserId);
    match (kind, new_number, new_user_id) {
        ("user_changed_number", Some(n), _)
            if turn::is_valid_address(n) == Some(AddressKind::Phone) =>
        {
            Some(IdentityChange::Number(n.to_string()))
        }
        ("user_changed_user_id", _, Some(id)) if user_id(id) => Some(IdentityChange::UserId {
            new: id.to_string(),
            previous: previous_user_id.filter(|p| user_id(p)).map(str::to_string),
        }),
        _ => None,
    }
}

/// How often the typing indicator is requested again while a reply is being prepared: WhatsApp
/// shows it for 25 seconds at most, and a model on a CPU takes longer than that.
pub const TYPING_REFRESH: Duration = Duration::from_secs(20);

/// The channel's side of [`turn::Progress`]: once the engine says a reply follows, the message
/// is marked read with the typing indicator, and again every `refresh` until [`Typing::stop`].
/// Best effort: a failed request is logged and changes nothing else.
struct Typing {
    reader: Option<GraphClient>,
    message_id: String,
    refresh: Duration,
    runtime: Option<tokio::runtime::Handle>,
    task: Mutex<
        Option<(
            tokio::sync::oneshot::Sender<()>,
            tokio::task::JoinHandle<()>,
        )>,
    >,
}

impl turn::Progress for Typing {
    fn replying(&self) {
        let (Some(reader), Some(runtime)) = (self.reader.clone(), self.runtime.as_ref()) else {
            return;
        };
        let mut task = self.task.lock().expect("typing lock poisoned");
        if task.is_some() {
            return;
        }
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel();
        let (id, refresh) = (self.message_id.clone(), self.refresh);
        // The first request is always made (it also marks the message read), even when the
        // reply is ready before the task runs; the renewals only while the turn is undecided.
        let handle = runtime.spawn(async move {
            loop {
                let (reader, id) = (reader.clone(), id.clone());
                let sent = tokio::task::spawn_blocking(move || reader.mark_read(&id, true)).await;
                if let Ok(Err(e)) = sent {
                    debug!(error = %e, "typing indicator failed");
                }
                tokio::select! {
                    _ = &mut stop_rx => return,
                    () = tokio::time::sleep(refresh) => {}
                }
            }
        });
        *task = Some((stop_tx, handle));
    }
}

impl Typing {
    /// Ends the refreshes and waits until no request is in flight. Call from a blocking thread.
    fn stop(&self) {
        let task = self.task.lock().expect("typing lock poisoned").take();
        if let (Some((stop, handle)), Some(runtime)) = (task, self.runtime.as_ref()) {
            let _ = stop.send(());
            let _ = runtime.block_on(handle);
        }
    }
}

/// How a failed turn is tried again: after `first_delay`, doubling up to `max_delay`, at most
/// `attempts` tries in all and no longer than `max_age` after the first failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TurnRetry {
    /// Tries of one turn in all, the first included (at least 1).
    pub attempts: u32,
    /// The pause after the first failure.
    pub first_delay: Duration,
    /// The longest pause.
    pub max_delay: Duration,
    /// No further try once this long has passed since the first failure.
    pub max_age: Duration,
}

impl Default for TurnRetry {
    fn default() -> Self {
        TurnRetry {
            attempts: 5,
            first_delay: Duration::from_secs(10),
            max_delay: Duration::from_secs(300),
            max_age: Duration::from_secs(30 * 60),
        }
    }
}

impl TurnRetry {
    /// The pause after the `failures`-th failure (1-based).
    pub fn delay(&self, failures: u32) -> Duration {
        let doubled = self
            .first_delay
            .saturating_mul(1u32 << failures.saturating_sub(1).min(16));
        doubled.min(self.max_delay)
    }

    /// Whether a turn that failed `failures` times, the first `since` ago, gets another try.
    pub fn again(&self, failures: u32, since: Duration) -> bool {
        failures < self.attempts && since < self.max_age
    }
}

/// Dispatcher settings.
#[derive(Clone, Debug)]
pub struct DispatchConfig {
    /// How long to wait after a customer's message for more before the burst is answered.
    pub burst_window: Duration,
    /// Most customers whose bursts are handled at the same time.
    pub max_concurrent: usize,
    /// Templates for failures that status webhooks report.
    pub failures: super::failures::FailurePolicy,
    /// How often the typing indicator is renewed while a reply is prepared
    /// ([`TYPING_REFRESH`]).
    pub typing_refresh: Duration,
    /// How a failed turn is tried again.
    pub retry: TurnRetry,
    /// The studio's staff numbers, whose messages are not a lead's (`whatsapp::staff`).
    pub staff: Arc<super::staff::StaffNumbers>,
}

/// How processing a burst ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BurstEnd {
    /// Committed, handed over, or left in the inbox after a failure that cannot be helped now.
    Done,
    /// The daemon stops while the burst waits for another try: the customer's rows stay in the
    /// inbox.
    Stopped,
}

#[derive(Default)]
struct CustomerQueue {
    keys: VecDeque<Vec<u8>>,
    /// Arrival of the first message of the open burst.
    first_arrival: Option<Instant>,
    last_arrival: Option<Instant>,
    running: bool,
}

/// See the module doc.
pub struct Dispatcher {
    store: Arc<Store>,
    queues: Arc<Queues>,
    engine: Arc<dyn Decide>,
    audit: Option<Arc<AuditLog>>,
    /// Marks messages read with the typing indicator while a reply is prepared; best effort.
    reader: Option<GraphClient>,
    cfg: DispatchConfig,
    metrics: Arc<Metrics>,
    sender_wake: Arc<Notify>,
    pending: Mutex<HashMap<Pseudonym, CustomerQueue>>,
    /// `failed` statuses (inbox rows) to look at again, see [`STATUS_OVERTAKE_WINDOW`].
    recheck: Mutex<Vec<(Vec<u8>, Pseudonym)>>,
    permits: Arc<Semaphore>,
    idle: Notify,
    /// Set at shutdown: a turn waiting for its next try stops waiting (its rows stay in the
    /// inbox for the next start).
    stopping: AtomicBool,
    stop: Notify,
}

impl Dispatcher {
    /// A dispatcher over the shared services; nothing runs until rows are queued with
    /// [`Dispatcher::enqueue`] or [`Dispatcher::recover`].
    #[expect(
        clippy::too_many_arguments,
        reason = "each is a distinct shared service of the daemon; a struct would only rename them"
    )]
    pub fn new(
        store: Arc<Store>,
        queues: Arc<Queues>,
        engine: Arc<dyn Decide>,
        audit: Option<Arc<AuditLog>>,
        reader: Option<GraphClient>,
        cfg: DispatchConfig,
        metrics: Arc<Metrics>,
        sender_wake: Arc<Notify>,
    ) -> Arc<Dispatcher> {
        Arc::new(Dispatcher {
            permits: Arc::new(Semaphore::new(cfg.max_concurrent.max(1))),
            store,
            queues,
            engine,
            audit,
            reader,
            cfg,
            metrics,
            sender_wake,
            pending: Mutex::new(HashMap::new()),
            recheck: Mutex::new(Vec::new()),
            idle: Notify::new(),
            stopping: AtomicBool::new(false),
            stop: Notify::new(),
        })
    }

    /// Ends the pauses of failed turns waiting for another try (at shutdown): their rows stay
    /// in the inbox and are processed at the next start, with the customer's later ones.
    pub fn stop_retries(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stop.notify_waiters();
    }

    /// Queues everything left in the inbox (at start-up: what was acknowledged before a stop or
    /// crash is processed now).
    pub fn recover(self: &Arc<Self>) -> store::Result<usize> {
        let rows = self.queues.inbox(&self.store)?;
        let n = rows.len();
        self.enqueue(rows.into_iter().map(|q| (q.key, q.pseudonym)).collect());
        Ok(n)
    }

    /// Queues inbox rows (already durable) for processing.
    pub fn enqueue(self: &Arc<Self>, rows: Vec<(Vec<u8>, Pseudonym)>) {
        let now = Instant::now();
        let mut start = Vec::new();
        {
            let mut pending = self.pending.lock().expect("dispatcher lock poisoned");
            for (key, p) in rows {
                let q = pending.entry(p).or_default();
                if q.keys.is_empty() {
                    q.first_arrival = Some(now);
                }
                q.keys.push_back(key);
                q.last_arrival = Some(now);
                if !q.running {
                    q.running = true;
                    start.push(p);
                }
            }
        }
        for p in start {
            let this = self.clone();
            tokio::spawn(async move { this.run_customer(p).await });
        }
    }

    /// Number of customers with work queued or running.
    pub fn busy_customers(&self) -> usize {
        self.pending.lock().expect("dispatcher lock poisoned").len()
    }

    /// Resolves once no customer has work queued or running.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.busy_customers() == 0 {
                return;
            }
            notified.await;
        }
    }

    async fn run_customer(self: Arc<Self>, p: Pseudonym) {
        loop {
            // Wait until the customer has been quiet for the burst window, or the burst is full
            // or has lasted long enough.
            loop {
                let wait = {
                    let pending = self.pending.lock().expect("dispatcher lock poisoned");
                    pending.get(&p).and_then(|q| {
                        let (first, last) = (q.first_arrival?, q.last_arrival?);
                        if q.keys.len() >= MAX_BURST_MESSAGES {
                            return None;
                        }
                        Some(
                            burst_deadline(first, last, self.cfg.burst_window)
                                .saturating_duration_since(Instant::now()),
                        )
                    })
                };
                match wait {
                    Some(d) if !d.is_zero() => tokio::time::sleep(d).await,
                    _ => break,
                }
            }
            let keys: Vec<Vec<u8>> = {
                let mut pending = self.pending.lock().expect("dispatcher lock poisoned");
                let q = pending.get_mut(&p).expect("running customer has a queue");
                q.first_arrival = None;
                let n = q.keys.len().min(MAX_BURST_MESSAGES);
                let keys: Vec<Vec<u8>> = q.keys.drain(..n).collect();
                if !q.keys.is_empty() {
                    // The rest opens the next burst.
                    q.first_arrival = Some(Instant::now());
                }
                keys
            };
            let stopped = !keys.is_empty() && self.run_burst(p, keys).await == BurstEnd::Stopped;
            let mut pending = self.pending.lock().expect("dispatcher lock poisoned");
            let q = pending.get_mut(&p).expect("running customer has a queue");
            if q.keys.is_empty() || stopped {
                pending.remove(&p);
                if pending.is_empty() {
                    self.idle.notify_waiters();
                }
                return;
            }
        }
    }

    /// Processes one burst of `p`, trying a failed turn again after a pause (the customer's later
    /// messages wait meanwhile) and, after the last attempt, giving it up: the engine records it
    /// and hands the contact to staff. The concurrency permit is held only while processing.
    async fn run_burst(self: &Arc<Self>, p: Pseudonym, keys: Vec<Vec<u8>>) -> BurstEnd {
        let keys = Arc::new(keys);
        let retry = self.cfg.retry;
        let mut failures = 0u32;
        let mut first_failure = None;
        loop {
            // Taken after the quiet period: a contact still typing holds no slot.
            let permit = self.permits.clone().acquire_owned().await;
            let (this, k) = (self.clone(), keys.clone());
            let res = tokio::task::spawn_blocking(move || this.process(&k, None)).await;
            drop(permit);
            self.after_processing();
            let e = match res {
                Ok(Ok(())) => return BurstEnd::Done,
                Ok(Err(e)) => e,
                Err(e) => {
                    // The rows stay in the inbox for the next start.
                    error!(customer = %p, error = %e, "processing panicked");
                    return BurstEnd::Done;
                }
            };
            failures += 1;
            let since = *first_failure.get_or_insert_with(Instant::now);
            let reason = turn::failure_kind(&e);
            self.metrics
                .messages_processed
                .get_or_create(&Outcome::of("error"))
                .inc();
            if !retry.again(failures, since.elapsed()) {
                return self.give_up(p, keys, reason, failures).await;
            }
            let delay = retry.delay(failures);
            warn!(customer = %p, attempt = failures, reason, error = %format_args!("{e:#}"), retry_in_ms = delay.as_millis() as u64,
                FRONTDESK_EVENT = "turn.retry", "turn failed; trying again");
            self.metrics
                .turn_failures
                .retries
                .get_or_create(&Reason::of(reason))
                .inc();
            let stop = self.stop.notified();
            if self.stopping.load(Ordering::SeqCst) {
                return BurstEnd::Stopped;
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stop => return BurstEnd::Stopped,
            }
        }
    }

    /// The last attempt of a burst failed: the engine records it and hands the contact over. If
    /// even that cannot be written (the store fails), the rows stay in the inbox for the next
    /// start.
    async fn give_up(
        self: &Arc<Self>,
        p: Pseudonym,
        keys: Arc<Vec<Vec<u8>>>,
        reason: &'static str,
        attempts: u32,
    ) -> BurstEnd {
        error!(customer = %p, attempts, reason, FRONTDESK_EVENT = "turn.given_up",
            "turn failed on every attempt; the contact is handed to staff");
        self.metrics
            .turn_failures
            .given_up
            .get_or_create(&Reason::of(reason))
            .inc();
        let permit = self.permits.clone().acquire_owned().await;
        let this = self.clone();
        let res = tokio::task::spawn_blocking(move || this.process(&keys, Some(reason))).await;
        drop(permit);
        self.after_processing();
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                error!(customer = %p, error = %format_args!("{e:#}"), "handing over a failed turn failed; its messages stay in the inbox");
            }
            Err(e) => error!(customer = %p, error = %e, "processing panicked"),
        }
        BurstEnd::Done
    }

    /// After each processing attempt: the watchdog's heartbeat, the sender woken for new
    /// replies, statuses to look at again.
    fn after_processing(self: &Arc<Self>) {
        self.metrics.heartbeat();
        self.sender_wake.notify_one();
        self.schedule_rechecks();
    }

    /// Queues the `failed` statuses that may have overtaken their send again, a moment later.
    fn schedule_rechecks(self: &Arc<Self>) {
        let rows = std::mem::take(&mut *self.recheck.lock().expect("dispatcher lock poisoned"));
        if rows.is_empty() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(STATUS_RECHECK).await;
            this.enqueue(rows);
        });
    }

    /// Handles a `failed` status (inbox row `key`) in its own durable write; `false` when it is
    /// about a message not recorded yet and young enough to wait for that record (the row then
    /// stays in the inbox). Blocking.
    fn failed_status(&self, key: &[u8], s: &StatusUpdate, now: Timestamp) -> anyhow::Result<bool> {
        let unknown = self.queues.sent(&self.store, &s.message_id)?.is_none()
            && self.queues.delivery(&self.store, &s.message_id)?.is_none();
        let young = Timestamp::from_second(s.timestamp)
            .is_ok_and(|at| now.duration_since(at) < STATUS_OVERTAKE_WINDOW);
        if unknown && young {
            return Ok(false);
        }
        let codes: Vec<i64> = s.errors.iter().map(|e| e.code).collect();
        warn!(?codes, "WhatsApp reports a message as failed");
        let mut batch = self.store.batch();
        self.queues.remove_inbox(&self.store, &mut batch, key);
        let ctx = super::failures::Context {
            store: &self.store,
            queues: &self.queues,
            policy: &self.cfg.failures,
            audit: self.audit.as_deref(),
            metrics: &self.metrics,
        };
        super::failures::handle_failed_status(&ctx, batch, s, now)?;
        Ok(true)
    }

    /// Applies a delivery status (inbox row `key` of customer `p`): its state and the removal of
    /// its row go into `retire` (then `true`); a `failed` one is handled on its own.
    fn status(
        &self,
        key: Vec<u8>,
        p: Pseudonym,
        s: &StatusUpdate,
        retire: &mut OwnedWriteBatch,
        now: Timestamp,
    ) -> anyhow::Result<bool> {
        let store: &Store = &self.store;
        let state = match s.status {
            DeliveryStatus::Sent => Some(DeliveryState::Sent),
            DeliveryStatus::Delivered => Some(DeliveryState::Delivered),
            DeliveryStatus::Read => Some(DeliveryState::Read),
            DeliveryStatus::Failed => Some(DeliveryState::Failed),
            _ => None,
        };
        if state == Some(DeliveryState::Failed) {
            if !self.failed_status(&key, s, now)? {
                self.recheck
                    .lock()
                    .expect("dispatcher lock poisoned")
                    .push((key, p));
            }
            return Ok(false);
        }
        if let Some(state) = state {
            self.queues
                .record_delivery(store, retire, &s.message_id, state, now);
            if state >= DeliveryState::Delivered {
                // Delivered: no failure can follow, what it was is not needed.
                self.queues.remove_sent(store, retire, &s.message_id);
            }
        }
        self.queues.remove_inbox(store, retire, &key);
        Ok(true)
    }

    /// Processes one burst of inbox rows of one customer; `given_up`: the reason its last
    /// attempt failed, when the engine is to hand the contact over instead. Blocking. Repeatable:
    /// rows retired by an earlier attempt are no longer in the inbox and are skipped.
    fn process(&self, keys: &[Vec<u8>], given_up: Option<&'static str>) -> anyhow::Result<()> {
        let store: &Store = &self.store;
        let mut rows: Vec<Queued<InboxEntry>> = Vec::new();
        for k in keys {
            if let Some(row) = self.queues.inbox_entry(store, k)? {
                rows.push(row);
            }
        }
        let now = Timestamp::now();
        let owner = rows.first().map(|r| r.pseudonym);
        let mut retire = self.store.batch();
        let mut retire_only = false;
        let mut messages: Vec<(Vec<u8>, InboundMessage)> = Vec::new();
        let mut seen_in_burst = HashSet::new();
        for row in rows {
            match row.entry {
                InboxEntry::Status(s) => {
                    retire_only |= self.status(row.key, row.pseudonym, &s, &mut retire, now)?;
                }
                InboxEntry::Message(m) => {
                    if self.queues.seen(store, &m.id)? || !seen_in_burst.insert(m.id.clone()) {
                        self.metrics
                            .messages_processed
                            .get_or_create(&Outcome::of("duplicate"))
                            .inc();
                        self.queues.remove_inbox(store, &mut retire, &row.key);
                        retire_only = true;
                    } else {
                        messages.push((row.key, m));
                    }
                }
            }
        }
        if retire_only {
            // The customer's lock, which the sender holds while it records a send: a status
            // that settles a message is either written before that record (which then sees
            // it) or removes it.
            let _guard = owner.map(|p| store.lock_customer(&p));
            store.commit_durable(retire)?;
        }
        // A notice of a new number or user id is a turn of its own, after what the contact wrote
        // under the old identity: that is recorded first, then the customer moves.
        let (notices, words): (Vec<_>, Vec<_>) = messages
            .into_iter()
            .partition(|(_, m)| identity_notice(m).is_some());
        if !words.is_empty() {
            self.turn(&words, given_up)?;
        }
        for notice in notices {
            self.turn(std::slice::from_ref(&notice), given_up)?;
        }
        Ok(())
    }

    /// Counts and audits the error codes WhatsApp attached to messages of a committed turn (an
    /// unsupported message type, media it could not fetch). The contact got the non-text
    /// answer; staff can see in the audit log that something did not come through.
    fn report_inbound_errors(&self, p: Pseudonym, messages: &[(Vec<u8>, InboundMessage)]) {
        for code in messages.iter().flat_map(|(_, m)| &m.error_codes) {
            let reason = super::graph::reason_of_code(*code);
            warn!(customer = %p, code, reason, "WhatsApp could not pass on a message whole");
            self.metrics
                .inbound_errors
                .get_or_create(&Outcome::of(reason))
                .inc();
            if let Some(audit) = &self.audit {
                let entry = NewEntry::new(
                    Actor::System,
                    AuditEvent::MessageUnreadable {
                        reason: Code::new(reason),
                        code: *code,
                    },
                )
                .about(&p);
                if let Err(e) = audit.append(entry) {
                    error!(customer = %p, error = %e, "auditing an unreadable message failed");
                }
            }
        }
    }

    /// Decides (or, `given_up`, gives up) and commits one burst of new messages of one customer.
    /// Blocking.
    fn turn(
        &self,
        messages: &[(Vec<u8>, InboundMessage)],
        given_up: Option<&'static str>,
    ) -> anyhow::Result<()> {
        let store: &Store = &self.store;
        let last = &messages.last().expect("non-empty").1;
        let burst = burst_of(messages);
        let started = Instant::now();
        let typing = Typing {
            reader: self.reader.clone(),
            message_id: last.id.clone(),
            refresh: self.cfg.typing_refresh,
            runtime: tokio::runtime::Handle::try_current().ok(),
            task: Mutex::new(None),
        };
        let decided = match given_up {
            _ if self.cfg.staff.is_staff(&burst.address) => {
                Ok(self
                    .cfg
                    .staff
                    .turn(store.pseudonym(&burst.address), &burst, Timestamp::now()))
            }
            None => self.engine.decide(&burst, &typing),
            Some(reason) => self.engine.give_up(&burst, reason),
        };
        // Stopped before anything is committed: no indicator is requested after the reply.
        typing.stop();
        let effects = decided?;
        let rows = Retirement {
            seen: messages.iter().map(|(_, m)| m.id.clone()).collect(),
            inbox_keys: messages.iter().map(|(k, _)| k.clone()).collect(),
            queues: self.queues.clone(),
        };
        let committed = turn::commit(store, effects, &rows, self.audit.as_deref())?;
        self.report_inbound_errors(committed.pseudonym, messages);
        self.metrics
            .processing_seconds
            .observe(started.elapsed().as_secs_f64());
        let label = match committed.outcome {
            _ if !committed.replies.is_empty() => "replied",
            TurnOutcome::Conversed | TurnOutcome::NonText => "silent",
            other => other.label(),
        };
        self.metrics
            .messages_processed
            .get_or_create(&Outcome::of(label))
            .inc();
        Ok(())
    }
}

#[cfg(test)]
mod retry_tests;
#[cfg(test)]
mod tests;
