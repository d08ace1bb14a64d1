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
use crate::audit::AuditLog;
use crate::metrics::{Metrics, Outcome};
use crate::store::crypto::Pseudonym;
use crate::store::{self, Store};
use crate::turn::{self, Burst, Decide, Effects, Part, PartKind, TurnOutcome};

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
                );
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
        Content::System { .. } => PartKind::System,
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
        username: messages.iter().rev().find_map(|(_, m)| m.username.clone()),
        referral: messages
            .iter()
            .rev()
            .find_map(|(_, m)| m.referral.as_deref().cloned()),
        parts: messages.iter().map(|(_, m)| part_of(m)).collect(),
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
    /// Marks messages read (with typing indicator) when work on them starts; best effort.
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
        if messages.is_empty() {
            return Ok(());
        }

        let last = &messages.last().expect("non-empty").1;
        let burst = burst_of(&messages);
        let answerable = turn::is_valid_address(&burst.address).is_some()
            && burst.parts.iter().any(|part| {
                matches!(
                    part.kind,
                    PartKind::Text(_) | PartKind::Captioned { .. } | PartKind::NonText(_)
                )
            });
        if answerable {
            if let Some(reader) = &self.reader {
                if let Err(e) = reader.mark_read(&last.id, true) {
                    debug!(error = %e, "mark-as-read failed");
                }
            }
        }

        let started = Instant::now();
        let effects = self.engine.decide(&burst)?;
        let rows = Retirement {
            seen: messages.iter().map(|(_, m)| m.id.clone()).collect(),
            inbox_keys: messages.iter().map(|(k, _)| k.clone()).collect(),
            queues: self.queues.clone(),
        };
        let committed = turn::commit(store, effects, &rows, self.audit.as_deref())?;
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
mod tests {
    use super::*;
    use crate::sandbox::whatsapp::PayloadBuilder;
    use crate::whatsapp::payload::{self, Event, MediaKind};

    fn parsed(payload: &serde_json::Value) -> InboundMessage {
        let events = payload::parse(&serde_json::to_vec(payload).unwrap()).unwrap();
        match events.into_iter().next() {
            Some(Event::Message(m)) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    #[test]
    fn every_inbound_type_becomes_the_part_the_engine_answers_right() {
        let p = PayloadBuilder::default();
        let from = "491701234567";

        let caption = part_of(&parsed(&p.media_with_caption(
            from,
            "wamid.1",
            MediaKind::Image,
            "geht das?",
            1,
        )));
        assert_eq!(
            caption.kind,
            PartKind::Captioned {
                media: "image",
                caption: "geht das?".into()
            }
        );
        let bare = part_of(&parsed(&p.media(from, "wamid.2", MediaKind::Image, 1)));
        assert_eq!(bare.kind, PartKind::NonText("image"));

        let quote = part_of(&parsed(
            &p.quoting(p.text_message(from, "wamid.3", "Ja", 1), "wamid.OURS"),
        ));
        assert_eq!(quote.kind, PartKind::Text("Ja".into()));
        assert_eq!(quote.quoted.as_deref(), Some("wamid.OURS"));

        let welcome = part_of(&parsed(&p.welcome_request(from, "wamid.4", 1)));
        assert_eq!(welcome.kind, PartKind::Welcome);

        let form = part_of(&parsed(&p.flow_reply(
            from,
            "wamid.5",
            &serde_json::json!({ "vorname": "Alex" }),
            1,
        )));
        assert_eq!(form.kind, PartKind::Text("vorname: Alex".into()));

        let edit = part_of(&parsed(&p.edit(from, "wamid.6", "wamid.3", "Nein", 1)));
        assert_eq!(
            edit.kind,
            PartKind::Edit {
                original: "wamid.3".into(),
                text: Some("Nein".into())
            }
        );
        let revoke = part_of(&parsed(&p.revoke(from, "wamid.7", "wamid.3", 1)));
        assert_eq!(
            revoke.kind,
            PartKind::Revoke {
                original: "wamid.3".into()
            }
        );

        let ad = parsed(&p.from_ad(p.text_message(from, "wamid.8", "Hi", 1), "42", "Gratis"));
        let source = ad.referral.expect("the referral is parsed");
        assert_eq!(source.source_id.as_deref(), Some("42"));
        assert_eq!(source.headline.as_deref(), Some("Gratis"));
        assert!(source.ctwa_clid.is_some());

        let named = PayloadBuilder {
            username: Some("@alex".into()),
            ..PayloadBuilder::default()
        };
        let m = parsed(&named.text_message(from, "wamid.9", "Hi", 1));
        assert_eq!(m.username.as_deref(), Some("@alex"));
    }
}
