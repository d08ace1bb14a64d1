//! The dispatcher: drains the inbox into replies in the outbox.
//!
//! - Every inbox row is processed exactly once: the reply rows, the seen marks of the message
//!   ids and the removal of the inbox rows are committed in the same durable batch as the
//!   customer's updated record and history (the [`Responder`] receives a `finish` callback that
//!   adds them). A crash before that commit leaves the rows in the inbox, and they are processed
//!   again at start-up; a crash after it leaves nothing to redo.
//! - Messages WhatsApp delivers twice (also across restarts) are dropped by message id.
//! - One customer's messages are handled in arrival order, one burst at a time; different
//!   customers run concurrently up to a bound. Messages of one customer that arrive within the
//!   burst window are answered together.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fjall::OwnedWriteBatch;
use jiff::Timestamp;
use tokio::sync::{Notify, Semaphore};
use tracing::{debug, error, warn};

use super::graph::GraphClient;
use super::payload::{Content, InboundMessage};
use super::queue::{DeliveryState, InboxEntry, OutboundKind, OutboxEntry, Queued, Queues};
use crate::metrics::{Metrics, Outcome};
use crate::store::crypto::Pseudonym;
use crate::store::messages::{Direction, Message};
use crate::store::{self, Store};

/// One burst of messages from one contact, handed to the responder.
#[derive(Clone)]
pub struct Inbound {
    /// Address to answer (phone number or WhatsApp user id).
    pub phone: String,
    pub contact_name: Option<String>,
    /// The texts, in order (several when messages arrived within the burst window).
    pub texts: Vec<String>,
    pub wamids: Vec<String>,
    pub received: Timestamp,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Inbound{{{} texts, {:?}}}",
            self.texts.len(),
            self.wamids
        )
    }
}

/// The callback a responder calls inside its final durable write: it adds the reply rows and
/// retires the inbox rows in the same batch.
pub type Finish<'a> =
    dyn FnMut(&mut OwnedWriteBatch, &Store, &Pseudonym, &[String]) -> store::Result<()> + 'a;

/// Produces the replies to a burst (the conversation engine in the daemon; a fixed reply in
/// load tests). Blocking.
pub trait Responder: Send + Sync {
    /// Handles `inbound`, and calls `finish` exactly once with the replies (possibly none) inside
    /// the durable write that records the turn.
    fn respond(&self, inbound: &Inbound, finish: &mut Finish<'_>) -> anyhow::Result<()>;
}

/// Answers every message with the same text (load tests and benchmarks: the engine replaced by
/// an instant reply), recording the turn in the customer's history like the engine does. The
/// placeholder `{ids}` in the text is replaced by the answered message ids, so a test can tell
/// which messages a reply answers.
pub struct FixedResponder {
    pub store: Arc<Store>,
    pub reply: String,
}

impl Responder for FixedResponder {
    fn respond(&self, inbound: &Inbound, finish: &mut Finish<'_>) -> anyhow::Result<()> {
        let reply = self.reply.replace("{ids}", &inbound.wamids.join(","));
        record_turn(&self.store, inbound, Some(&reply), finish)
    }
}

/// Records a turn with a fixed reply (or silence) through the store: the inbound texts and the
/// reply go into the history, `finish` adds the queue rows.
pub fn record_turn(
    store_ref: &Store,
    inbound: &Inbound,
    reply: Option<&str>,
    finish: &mut Finish<'_>,
) -> anyhow::Result<()> {
    let now = Timestamp::now();
    store_ref.update_customer(&inbound.phone, now, |c, batch, st| {
        c.meta.last_contact = now;
        c.meta.last_inbound = Some(inbound.received);
        if c.body.contact_name.is_none() {
            c.body.contact_name = inbound.contact_name.clone();
        }
        for (text, id) in inbound.texts.iter().zip(&inbound.wamids) {
            st.append_message(
                c,
                &Message {
                    direction: Direction::Inbound,
                    text: text.clone(),
                    at: inbound.received,
                    wamid: Some(id.clone()),
                },
                batch,
            )?;
        }
        let answers = reply.is_some() && c.meta.mode.answers();
        let replies: Vec<String> = if answers {
            let r = reply.unwrap_or_default().to_string();
            st.append_message(
                c,
                &Message {
                    direction: Direction::Outbound,
                    text: r.clone(),
                    at: now,
                    wamid: None,
                },
                batch,
            )?;
            vec![r]
        } else {
            Vec::new()
        };
        finish(batch, st, &c.pseudonym, &replies)
    })?;
    Ok(())
}

/// Dispatcher settings.
#[derive(Clone, Debug)]
pub struct DispatchConfig {
    pub burst_window: Duration,
    pub max_concurrent: usize,
    /// Answer to voice messages, pictures and other non-text messages.
    pub non_text_reply: String,
}

#[derive(Default)]
struct CustomerQueue {
    keys: VecDeque<Vec<u8>>,
    last_arrival: Option<Instant>,
    running: bool,
}

/// See the module doc.
pub struct Dispatcher {
    store: Arc<Store>,
    queues: Arc<Queues>,
    responder: Arc<dyn Responder>,
    /// Marks messages read (with typing indicator) when work on them starts; best effort.
    reader: Option<GraphClient>,
    cfg: DispatchConfig,
    metrics: Arc<Metrics>,
    sender_wake: Arc<Notify>,
    pending: Mutex<HashMap<Pseudonym, CustomerQueue>>,
    permits: Arc<Semaphore>,
    idle: Notify,
}

impl Dispatcher {
    pub fn new(
        store: Arc<Store>,
        queues: Arc<Queues>,
        responder: Arc<dyn Responder>,
        reader: Option<GraphClient>,
        cfg: DispatchConfig,
        metrics: Arc<Metrics>,
        sender_wake: Arc<Notify>,
    ) -> Arc<Dispatcher> {
        Arc::new(Dispatcher {
            permits: Arc::new(Semaphore::new(cfg.max_concurrent.max(1))),
            store,
            queues,
            responder,
            reader,
            cfg,
            metrics,
            sender_wake,
            pending: Mutex::new(HashMap::new()),
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
        let _permit = self.permits.clone().acquire_owned().await;
        loop {
            // Wait until the customer has been quiet for the burst window.
            loop {
                let wait = {
                    let pending = self.pending.lock().expect("dispatcher lock poisoned");
                    let last = pending.get(&p).and_then(|q| q.last_arrival);
                    last.map(|t| {
                        (t + self.cfg.burst_window).saturating_duration_since(Instant::now())
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
                q.keys.drain(..).collect()
            };
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
            }
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
        let mut seen_in_burst = std::collections::HashSet::new();
        for row in rows {
            match row.entry {
                InboxEntry::Status(s) => {
                    let state = match s.status {
                        super::payload::DeliveryStatus::Sent => Some(DeliveryState::Sent),
                        super::payload::DeliveryStatus::Delivered => Some(DeliveryState::Delivered),
                        super::payload::DeliveryStatus::Read => Some(DeliveryState::Read),
                        super::payload::DeliveryStatus::Failed => Some(DeliveryState::Failed),
                        _ => None,
                    };
                    if let Some(state) = state {
                        self.queues.record_delivery(
                            store,
                            &mut retire,
                            &s.message_id,
                            state,
                            now,
                        )?;
                        if state == DeliveryState::Failed {
                            let codes: Vec<i64> = s.errors.iter().map(|e| e.code).collect();
                            warn!(customer = %row.pseudonym, ?codes, "WhatsApp reports a message as failed");
                        }
                    }
                    self.queues.remove_inbox(store, &mut retire, &row.key);
                    retire_only = true;
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

        // Reactions are recorded as seen and otherwise ignored.
        let (reactions, messages): (Vec<_>, Vec<_>) = messages
            .into_iter()
            .partition(|(_, m)| matches!(m.content, Content::Reaction { .. }));
        if !reactions.is_empty() {
            let mut b = store.batch();
            for (k, m) in &reactions {
                self.queues.mark_seen(store, &mut b, &m.id, now);
                self.queues.remove_inbox(store, &mut b, k);
            }
            store.commit_durable(b)?;
            self.metrics
                .messages_processed
                .get_or_create(&Outcome::of("silent"))
                .inc_by(reactions.len() as u64);
        }
        if messages.is_empty() {
            return Ok(());
        }

        let last = &messages.last().expect("non-empty").1;
        if let Some(reader) = &self.reader {
            if let Err(e) = reader.mark_read(&last.id, true) {
                debug!(error = %e, "mark-as-read failed");
            }
        }
        let received = Timestamp::from_second(last.timestamp).unwrap_or(now);
        let texts: Vec<String> = messages
            .iter()
            .filter_map(|(_, m)| m.content.as_engine_text().map(str::to_string))
            .collect();
        let inbound = Inbound {
            phone: last.from.clone(),
            contact_name: last.contact_name.clone(),
            wamids: messages
                .iter()
                .filter(|(_, m)| m.content.as_engine_text().is_some())
                .map(|(_, m)| m.id.clone())
                .collect(),
            texts,
            received,
        };
        let all_ids: Vec<String> = messages.iter().map(|(_, m)| m.id.clone()).collect();
        let all_keys: Vec<Vec<u8>> = messages.iter().map(|(k, _)| k.clone()).collect();
        let to = last.from.clone();
        let queues = self.queues.clone();
        let mut finished = false;
        let mut replied = 0usize;
        let mut finish = |batch: &mut OwnedWriteBatch,
                          st: &Store,
                          p: &Pseudonym,
                          replies: &[String]|
         -> store::Result<()> {
            for r in replies {
                for part in super::graph::split_text(r, super::graph::MAX_TEXT_CHARS) {
                    queues.push_outbox(
                        st,
                        batch,
                        p,
                        &OutboxEntry {
                            to: to.clone(),
                            kind: OutboundKind::Text(part),
                            created: Timestamp::now(),
                        },
                    );
                }
            }
            for id in &all_ids {
                queues.mark_seen(st, batch, id, now);
            }
            for k in &all_keys {
                queues.remove_inbox(st, batch, k);
            }
            finished = true;
            replied = replies.len();
            Ok(())
        };

        let started = Instant::now();
        if inbound.texts.is_empty() {
            // Only voice notes, pictures, locations …: the configured friendly answer.
            record_turn(
                store,
                &inbound_for_fallback(&inbound, &messages),
                Some(&self.cfg.non_text_reply),
                &mut finish,
            )?;
            self.metrics
                .messages_processed
                .get_or_create(&Outcome::of("fallback"))
                .inc();
        } else {
            self.responder.respond(&inbound, &mut finish)?;
        }
        anyhow::ensure!(finished, "the responder did not record the turn");
        self.metrics
            .processing_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .messages_processed
            .get_or_create(&Outcome::of(if replied > 0 { "replied" } else { "silent" }))
            .inc();
        Ok(())
    }
}

/// For a burst of non-text messages: record placeholders (the media itself is never stored).
fn inbound_for_fallback(inbound: &Inbound, messages: &[(Vec<u8>, InboundMessage)]) -> Inbound {
    Inbound {
        texts: messages
            .iter()
            .map(|(_, m)| format!("[{}]", m.content.kind()))
            .collect(),
        wamids: messages.iter().map(|(_, m)| m.id.clone()).collect(),
        ..inbound.clone()
    }
}
