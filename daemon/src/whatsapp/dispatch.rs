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
//! - Messages WhatsApp delivers twice (also across restarts) are dropped by message id; delivery
//!   statuses update the outbox's delivery records. A `failed` status is handled like a failed
//!   send call ([`super::failures::handle_failed_status`]), in its own durable write with the
//!   removal of its inbox row.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fjall::OwnedWriteBatch;
use jiff::Timestamp;
use tokio::sync::{Notify, Semaphore};
use tracing::{debug, error, warn};

use super::graph::GraphClient;
use super::payload::{Content, DeliveryStatus, InboundMessage, StatusUpdate};
use super::queue::{DeliveryState, InboxEntry, OutboundKind, OutboxEntry, Queued, Queues};
use crate::audit::{Actor, AuditEvent, AuditLog, Code, NewEntry};
use crate::metrics::{Metrics, Outcome};
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

/// The new identity a system notice announces, when it names a valid one.
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
        })
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
            // Taken after the quiet period: a contact still typing holds no slot.
            let permit = self.permits.clone().acquire_owned().await;
            if !keys.is_empty() {
                let this = self.clone();
                let res = tokio::task::spawn_blocking(move || this.process(&keys)).await;
                match res {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        // The rows stay in the inbox; they are retried at the next start-up or
                        // when the customer writes again.
                        error!(customer = %p, error = %e, "processing failed");
                        self.metrics
                            .messages_processed
                            .get_or_create(&Outcome::of("error"))
                            .inc();
                    }
                    Err(e) => error!(customer = %p, error = %e, "processing panicked"),
                }
                self.metrics.heartbeat();
                self.sender_wake.notify_one();
                self.schedule_rechecks();
            }
            drop(permit);
            let mut pending = self.pending.lock().expect("dispatcher lock poisoned");
            let q = pending.get_mut(&p).expect("running customer has a queue");
            if q.keys.is_empty() {
                pending.remove(&p);
                if pending.is_empty() {
                    self.idle.notify_waiters();
                }
                return;
            }
        }
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
                .record_delivery(store, retire, &s.message_id, state, now)?;
            if state >= DeliveryState::Delivered {
                // Delivered: no failure can follow, what it was is not needed.
                self.queues.remove_sent(store, retire, &s.message_id);
            }
        }
        self.queues.remove_inbox(store, retire, &key);
        Ok(true)
    }

    /// Processes one burst of inbox rows of one customer. Blocking.
    fn process(&self, keys: &[Vec<u8>]) -> anyhow::Result<()> {
        let store: &Store = &self.store;
        let mut rows: Vec<Queued<InboxEntry>> = Vec::new();
        for k in keys {
            if let Some(row) = self.queues.inbox_entry(store, k)? {
                rows.push(row);
            }
        }
        let now = Timestamp::now();
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
            store.commit_durable(retire)?;
        }
        // A notice of a new number or user id is a turn of its own, after what the contact wrote
        // under the old identity: that is recorded first, then the customer moves.
        let (notices, words): (Vec<_>, Vec<_>) = messages
            .into_iter()
            .partition(|(_, m)| identity_notice(m).is_some());
        if !words.is_empty() {
            self.turn(&words)?;
        }
        for notice in notices {
            self.turn(std::slice::from_ref(&notice))?;
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

    /// Decides and commits one burst of new messages of one customer. Blocking.
    fn turn(&self, messages: &[(Vec<u8>, InboundMessage)]) -> anyhow::Result<()> {
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
        let decided = self.engine.decide(&burst, &typing);
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
mod tests;
