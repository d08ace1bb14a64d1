//! The sender: delivers the outbox through the Graph API.
//!
//! Replies to one customer go out in order, one at a time; different customers are served
//! concurrently. A reply leaves the outbox in the durable write that records its WhatsApp
//! message id, so after a crash it is sent again only if the crash fell between the send and
//! that write — the one window in which a reply can go out twice, and it is one request wide.
//!
//! Errors: throttling, server errors and network trouble are retried with full-jitter
//! exponential backoff; the pair rate limit (131056) pauses that customer and combines their
//! waiting replies into one message; a closed 24-hour window (131047) replaces the reply with
//! the configured template (or drops it); undeliverable and permanent errors drop the reply.
//! Every drop is logged with the customer's pseudonym and the error code.
//!
//! Templates go through the endpoint their category needs (marketing: `/marketing_messages`, see
//! [`super::templates`]). Every message the Graph API accepted is counted by pricing category
//! (`stats`) in the write that retires it, so retries and restarts never count it twice.
//!
//! A rejected access token (expired, revoked, missing permission) pauses the whole sender: the
//! outbox keeps every reply, `frontdesk status`, systemd's `STATUS=`, the `sender_paused` gauge
//! and the journal say why; a restart with the fixed credential, or [`Sender::resume`] (on
//! `systemctl reload`, with the credential read again), starts it once more. A reply still
//! failing after [`MAX_REPLY_AGE`] of retries is not retried forever: it is dropped with a staff
//! alert, so one stuck row cannot block its customer for good.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use rand::Rng;
use tokio::sync::{Notify, Semaphore};
use tracing::{error, info, warn};

use super::graph::{Disposition, GraphClient, SendError, SentMessage, TemplateEndpoint};
use super::queue::{DeliveryState, OutboundKind, OutboxEntry, Queued, Queues};
use super::templates::{TemplateCategories, TemplateCategory, NOT_A_MARKETING_TEMPLATE};
use crate::metrics::{Category, Metrics, Outcome};
use crate::stats::PricingCategory;
use crate::store::crypto::Pseudonym;
use crate::store::Store;

/// Pause after WhatsApp's pair rate limit (about one message per 6 s to one user).
const PAIR_RATE_PAUSE: Duration = Duration::from_secs(6);
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A reply that transient errors kept from going out this long is handed to staff instead.
pub const MAX_REPLY_AGE: jiff::SignedDuration = jiff::SignedDuration::from_hours(24);

/// Sender settings.
#[derive(Clone, Debug)]
pub struct SenderConfig {
    /// Template that reopens a closed 24-hour window; `None` drops such replies.
    pub reopen_template: Option<String>,
    /// Language of `reopen_template`.
    pub template_language: String,
    /// Most customers whose replies are sent at the same time.
    pub max_concurrent: usize,
    /// Base of the retry backoff (shortened in tests).
    pub backoff_base: Duration,
    /// Category of each template: marketing ones go to `/marketing_messages`, and every sent
    /// message is counted at its category.
    pub template_categories: TemplateCategories,
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            reopen_template: None,
            template_language: "de".into(),
            max_concurrent: 8,
            backoff_base: BACKOFF_BASE,
            template_categories: TemplateCategories::default(),
        }
    }
}

#[derive(Default)]
struct Hold {
    until: Option<Instant>,
    attempts: u32,
}

/// See the module doc.
pub struct Sender {
    store: Arc<Store>,
    queues: Arc<Queues>,
    /// Replaced by [`Sender::resume`] with a client carrying the credential read again.
    /// With its generation: a send made with a client replaced since cannot pause the new one.
    graph: std::sync::RwLock<(u64, GraphClient)>,
    /// Why the sender is paused (`None`: it sends); watched by the service for `STATUS=`.
    paused: tokio::sync::watch::Sender<Option<String>>,
    cfg: SenderConfig,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    in_flight: Mutex<HashSet<Pseudonym>>,
    holds: Mutex<HashMap<Pseudonym, Hold>>,
}

enum GroupResult {
    Done,
    Hold(Duration),
}

impl Sender {
    /// A sender over the shared services; it sends nothing until [`Sender::run`].
    pub fn new(
        store: Arc<Store>,
        queues: Arc<Queues>,
        graph: GraphClient,
        cfg: SenderConfig,
        metrics: Arc<Metrics>,
        wake: Arc<Notify>,
    ) -> Arc<Sender> {
        Arc::new(Sender {
            store,
            queues,
            graph: std::sync::RwLock::new((0, graph)),
            paused: tokio::sync::watch::channel(None).0,
            cfg,
            metrics,
            wake,
            in_flight: Mutex::new(HashSet::new()),
            holds: Mutex::new(HashMap::new()),
        })
    }

    /// Runs until `shutdown` resolves; sends in flight are finished first.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let permits = Arc::new(Semaphore::new(self.cfg.max_concurrent.max(1)));
        loop {
            let notified = self.wake.notified();
            let next_hold = match self.dispatch_round(&permits).await {
                Ok(h) => h,
                Err(e) => {
                    error!(error = %e, "reading the outbox failed");
                    Some(Duration::from_secs(1))
                }
            };
            self.metrics.heartbeat();
            let wait = next_hold.unwrap_or(Duration::from_secs(30));
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(wait) => {}
                _ = &mut shutdown => break,
            }
        }
        // Let sends in flight finish so their results are recorded.
        let _ = permits
            .acquire_many(self.cfg.max_concurrent.max(1) as u32)
            .await;
    }

    /// Why the sender is paused, if it is; changes can be awaited.
    pub fn paused(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.paused.subscribe()
    }

    /// Starts sending again after a pause, with `graph` (built from the credential as it is now).
    pub fn resume(&self, graph: GraphClient) {
        {
            let mut current = self.graph.write().expect("sender lock poisoned");
            *current = (current.0 + 1, graph);
        }
        self.metrics.sender_paused.set(0);
        if self.paused.send_replace(None).is_some() {
            info!(
                FRONTDESK_EVENT = "sender.resumed",
                "sender resumed; the outbox is sent again"
            );
        }
        self.wake.notify_one();
    }

    /// A send with client `generation` was refused for its token: pause, unless the client was
    /// replaced meanwhile (then the reply is simply tried again with the new one).
    fn auth_failed(&self, generation: u64, err: &SendError) -> GroupResult {
        self.metrics
            .sends
            .get_or_create(&Outcome::of("auth_failed"))
            .inc();
        // Checked and paused under the client's lock, so a resume cannot fall in between.
        let current = self.graph.read().expect("sender lock poisoned");
        if current.0 == generation {
            self.pause(err.to_string());
        }
        GroupResult::Hold(Duration::ZERO)
    }

    fn pause(&self, reason: String) {
        let already = self.paused.borrow().is_some();
        if !already {
            error!(
                FRONTDESK_EVENT = "sender.paused",
                reason = %reason,
                "WhatsApp rejected the access token: sending paused, replies are kept; fix the \
                 whatsapp-token credential, then `systemctl restart frontdesk`"
            );
        }
        // The gauge first: whoever sees the pause announced finds it in the metrics too.
        self.metrics.sender_paused.set(1);
        self.paused.send_replace(Some(reason));
    }

    /// Starts a task for every customer with replies waiting that is neither in flight nor on
    /// hold; returns when the earliest hold ends.
    async fn dispatch_round(
        self: &Arc<Self>,
        permits: &Arc<Semaphore>,
    ) -> anyhow::Result<Option<Duration>> {
        if self.paused.borrow().is_some() {
            return Ok(None);
        }
        let this = self.clone();
        let rows = tokio::task::spawn_blocking(move || this.queues.outbox(&this.store)).await??;
        let mut groups: Vec<(Pseudonym, Vec<Queued<OutboxEntry>>)> = Vec::new();
        let mut index: HashMap<Pseudonym, usize> = HashMap::new();
        for row in rows {
            match index.get(&row.pseudonym) {
                Some(&i) => groups[i].1.push(row),
                None => {
                    index.insert(row.pseudonym, groups.len());
                    groups.push((row.pseudonym, vec![row]));
                }
            }
        }
        let now = Instant::now();
        let mut earliest: Option<Duration> = None;
        for (p, rows) in groups {
            {
                let holds = self.holds.lock().expect("sender lock poisoned");
                if let Some(until) = holds.get(&p).and_then(|h| h.until) {
                    if until > now {
                        let d = until - now;
                        earliest = Some(earliest.map_or(d, |e| e.min(d)));
                        continue;
                    }
                }
            }
            if !self
                .in_flight
                .lock()
                .expect("sender lock poisoned")
                .insert(p)
            {
                continue;
            }
            let permit = permits.clone().acquire_owned().await?;
            let this = self.clone();
            tokio::spawn(async move {
                let worker = this.clone();
                let result = tokio::task::spawn_blocking(move || worker.send_group(&p, rows)).await;
                {
                    let mut holds = this.holds.lock().expect("sender lock poisoned");
                    match result {
                        Ok(GroupResult::Done) => {
                            holds.remove(&p);
                        }
                        Ok(GroupResult::Hold(d)) => {
                            let h = holds.entry(p).or_default();
                            h.until = Some(Instant::now() + d);
                        }
                        Err(e) => error!(customer = %p, error = %e, "send task panicked"),
                    }
                }
                this.in_flight
                    .lock()
                    .expect("sender lock poisoned")
                    .remove(&p);
                drop(permit);
                this.wake.notify_one();
            });
        }
        Ok(earliest)
    }

    fn backoff(&self, p: &Pseudonym) -> Duration {
        let mut holds = self.holds.lock().expect("sender lock poisoned");
        let h = holds.entry(*p).or_default();
        h.attempts = h.attempts.saturating_add(1);
        let cap = self
            .cfg
            .backoff_base
            .saturating_mul(1u32 << h.attempts.min(16))
            .min(BACKOFF_MAX);
        // Full jitter: anywhere between zero and the capped exponential step.
        let ms = rand::thread_rng().gen_range(0..=cap.as_millis().max(1) as u64);
        Duration::from_millis(ms)
    }

    /// Sends one customer's replies in order. Blocking.
    fn send_group(&self, p: &Pseudonym, rows: Vec<Queued<OutboxEntry>>) -> GroupResult {
        let mut rows = rows.into_iter().peekable();
        while let Some(row) = rows.next() {
            // The rows were read before this task started; an earlier task for this customer
            // may have sent and retired some of them since. Only one task per customer runs at a
            // time, so a row still present now has not been sent.
            match self.store.keyspaces().outbox.contains_key(&row.key) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    error!(customer = %p, error = %e, "reading the outbox failed");
                    return GroupResult::Hold(Duration::from_secs(1));
                }
            }
            if self.paused.borrow().is_some() {
                return GroupResult::Hold(Duration::ZERO);
            }
            let (generation, graph) = self.graph.read().expect("sender lock poisoned").clone();
            let (result, category) = match &row.entry.kind {
                OutboundKind::Text(t) => {
                    (graph.send_text(&row.entry.to, t), PricingCategory::Service)
                }
                OutboundKind::Template {
                    name,
                    language,
                    params,
                } => self.send_template(&graph, p, &row.entry.to, name, language, params),
            };
            match result {
                Ok(sent) => {
                    self.metrics.sends.get_or_create(&Outcome::of("ok")).inc();
                    if let Err(e) = self.retire_sent(&row.key, &sent.id, category) {
                        error!(customer = %p, error = %e, "recording a sent reply failed");
                        return GroupResult::Hold(Duration::from_secs(1));
                    }
                    // After the retirement, on its own: losing it only means a quote of this
                    // reply is not found.
                    if let Err(e) = self.store.tag_sent(p, &row.entry.history, &sent.id) {
                        warn!(customer = %p, error = %e, "recording the sent reply's id in the history failed");
                    }
                    self.metrics
                        .messages_sent
                        .get_or_create(&Category::of(category.name()))
                        .inc();
                }
                Err(err) => return self.handle_error(p, generation, row, rows.collect(), err),
            }
        }
        GroupResult::Done
    }

    /// `generation`: of the client that made the failed call.
    fn handle_error(
        &self,
        p: &Pseudonym,
        generation: u64,
        row: Queued<OutboxEntry>,
        rest: Vec<Queued<OutboxEntry>>,
        err: SendError,
    ) -> GroupResult {
        match err.disposition() {
            Disposition::AuthFailed => self.auth_failed(generation, &err),
            Disposition::RetryLater if expired(&row.entry, Timestamp::now()) => {
                self.metrics
                    .sends
                    .get_or_create(&Outcome::of("expired"))
                    .inc();
                warn!(customer = %p, code = ?err.code(), reason = "reply_expired", FRONTDESK_EVENT = "staff.alert", "a reply could not be sent for 24 hours: dropped, staff should contact the customer");
                if let Err(e) = self.retire(&row.key, None) {
                    error!(customer = %p, error = %e, "outbox update failed");
                }
                GroupResult::Hold(Duration::ZERO)
            }
            Disposition::RetryLater => {
                self.metrics
                    .sends
                    .get_or_create(&Outcome::of("retry"))
                    .inc();
                let d = self.backoff(p);
                warn!(customer = %p, error = %err, retry_in_ms = d.as_millis() as u64, "send failed; retrying");
                GroupResult::Hold(d)
            }
            Disposition::PairRateLimited => {
                self.metrics
                    .sends
                    .get_or_create(&Outcome::of("pair_rate_limited"))
                    .inc();
                if let Err(e) = self.combine(&row, &rest) {
                    error!(customer = %p, error = %e, "combining replies failed");
                }
                info!(customer = %p, "pair rate limit: pausing and combining replies");
                GroupResult::Hold(PAIR_RATE_PAUSE)
            }
            Disposition::WindowClosed => {
                self.metrics
                    .sends
                    .get_or_create(&Outcome::of("window_closed"))
                    .inc();
                let res = match (&self.cfg.reopen_template, &row.entry.kind) {
                    (Some(name), OutboundKind::Text(_)) => {
                        info!(customer = %p, "24-hour window closed: sending the reopen template instead");
                        self.replace_with_template(&row, name)
                    }
                    _ => {
                        warn!(customer = %p, "24-hour window closed and no template configured: reply dropped");
                        self.retire(&row.key, None)
                    }
                };
                if let Err(e) = res {
                    error!(customer = %p, error = %e, "outbox update failed");
                }
                GroupResult::Hold(Duration::ZERO)
            }
            Disposition::Undeliverable | Disposition::Permanent => {
                self.metrics
                    .sends
                    .get_or_create(&Outcome::of(
                        if err.disposition() == Disposition::Undeliverable {
                            "undeliverable"
                        } else {
                            "failed"
                        },
                    ))
                    .inc();
                warn!(customer = %p, code = ?err.code(), "reply cannot be delivered: dropped");
                if let Err(e) = self.retire(&row.key, None) {
                    error!(customer = %p, error = %e, "outbox update failed");
                }
                GroupResult::Hold(Duration::ZERO)
            }
        }
    }

    /// Sends a template through the endpoint its category needs; returns what the message is
    /// billed as. A template Meta refuses on `/marketing_messages` as not marketing (its
    /// category changed back before we heard of it) is sent through `/messages` at once.
    fn send_template(
        &self,
        graph: &GraphClient,
        p: &Pseudonym,
        to: &str,
        name: &str,
        language: &str,
        params: &[String],
    ) -> (Result<SentMessage, SendError>, PricingCategory) {
        let categories = &self.cfg.template_categories;
        let known = categories
            .lookup(&self.store, name, language)
            .unwrap_or_else(|e| {
                warn!(customer = %p, error = %e, "reading a template category failed; using the configured one");
                categories.configured(name)
            });
        if known.category != TemplateCategory::Marketing {
            return (
                graph.send_template(to, name, language, params),
                known.category.pricing(),
            );
        }
        match graph.send_template_to(
            TemplateEndpoint::MarketingMessages,
            to,
            name,
            language,
            params,
        ) {
            Err(e) if e.code() == Some(NOT_A_MARKETING_TEMPLATE) => {
                warn!(customer = %p, template = %name, "WhatsApp refused the template as not marketing; sending it through /messages");
                (
                    graph.send_template(to, name, language, params),
                    PricingCategory::Utility,
                )
            }
            result => (result, PricingCategory::Marketing),
        }
    }

    /// Removes a sent reply from the outbox, records its message id and counts it as a message
    /// of `category`, in one durable write: a message is counted once, however often its send
    /// was retried.
    fn retire_sent(
        &self,
        key: &[u8],
        wamid: &str,
        category: PricingCategory,
    ) -> crate::store::Result<()> {
        let now = Timestamp::now();
        let mut batch = self.store.batch();
        self.queues.remove_outbox(&self.store, &mut batch, key);
        self.queues.record_delivery(
            &self.store,
            &mut batch,
            wamid,
            DeliveryState::Accepted,
            now,
        )?;
        crate::stats::record_sent(&self.store, &mut batch, category, now)?;
        self.store.commit_durable(batch)
    }

    /// Removes a reply from the outbox and records its message id, durably.
    fn retire(&self, key: &[u8], wamid: Option<&str>) -> crate::store::Result<()> {
        let mut batch = self.store.batch();
        self.queues.remove_outbox(&self.store, &mut batch, key);
        if let Some(id) = wamid {
            self.queues.record_delivery(
                &self.store,
                &mut batch,
                id,
                DeliveryState::Accepted,
                Timestamp::now(),
            )?;
        }
        self.store.commit_durable(batch)
    }

    /// Merges a customer's waiting text replies into the first one.
    fn combine(
        &self,
        first: &Queued<OutboxEntry>,
        rest: &[Queued<OutboxEntry>],
    ) -> crate::store::Result<()> {
        let OutboundKind::Text(head) = &first.entry.kind else {
            return Ok(());
        };
        let texts: Vec<&Queued<OutboxEntry>> = rest
            .iter()
            .take_while(|r| matches!(r.entry.kind, OutboundKind::Text(_)))
            .collect();
        if texts.is_empty() {
            return Ok(());
        }
        let mut combined = head.clone();
        let mut history = first.entry.history.clone();
        let mut merged = Vec::new();
        for r in texts {
            if let OutboundKind::Text(t) = &r.entry.kind {
                if combined.chars().count() + t.chars().count() + 2 > super::graph::MAX_TEXT_CHARS {
                    break;
                }
                combined.push_str("\n\n");
                combined.push_str(t);
                history.extend_from_slice(&r.entry.history);
                merged.push(r);
            }
        }
        let mut batch = self.store.batch();
        for r in &merged {
            self.queues.remove_outbox(&self.store, &mut batch, &r.key);
        }
        let sealed_first = OutboxEntry {
            kind: OutboundKind::Text(combined),
            history,
            ..first.entry.clone()
        };
        // Rewrite the first row in place (same key keeps the order).
        self.queues.rewrite_outbox(
            &self.store,
            &mut batch,
            &first.key,
            &first.pseudonym,
            &sealed_first,
        );
        self.store.commit_durable(batch)
    }

    fn replace_with_template(
        &self,
        row: &Queued<OutboxEntry>,
        name: &str,
    ) -> crate::store::Result<()> {
        let mut batch = self.store.batch();
        let entry = OutboxEntry {
            kind: OutboundKind::Template {
                name: name.to_string(),
                language: self.cfg.template_language.clone(),
                params: Vec::new(),
            },
            ..row.entry.clone()
        };
        self.queues
            .rewrite_outbox(&self.store, &mut batch, &row.key, &row.pseudonym, &entry);
        self.store.commit_durable(batch)
    }
}
/// Whether transient errors have kept `entry` from going out for longer than [`MAX_REPLY_AGE`].
fn expired(entry: &OutboxEntry, now: Timestamp) -> bool {
    now.duration_since(entry.created) > MAX_REPLY_AGE
}
