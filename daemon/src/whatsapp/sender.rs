//! The sender: delivers the outbox through the Graph API.
//!
//! Replies to one customer go out in order, one at a time; different customers are served
//! concurrently. A reply leaves the outbox in the durable write that records its WhatsApp
//! message id, so after a crash it is sent again only if the crash fell between the send and
//! that write — the one window in which a reply can go out twice, and it is one request wide.
//!
//! Errors: throttling (130429, 131064, 80007), server errors and network trouble are retried
//! with full-jitter exponential backoff; the pair rate limit (131056) pauses that customer and
//! combines their waiting replies into one message; the spam rate limit (131048) slows the whole
//! sender down (a pause that doubles per hit, up to an hour) with a staff alert. Everything else
//! is decided by [`super::failures::plan`], as for a failure a status webhook reports later: a
//! closed window (131047) leads to the re-open template once, the marketing limit (131049) to a
//! retry a day later, a paused or disabled template (132015/132016) to a staff alert. Each such
//! failure is counted, audited (`message.delivery_failed`) and logged with the customer's
//! pseudonym and the error code.
//!
//! A sent reply is remembered (sealed, [`Queues::record_sent`]) until a status webhook settles
//! it, so a failure WhatsApp reports after accepting the send can still be handled.
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

use super::failures::{self, FailurePolicy, Plan, Report};
use super::graph::{Disposition, GraphClient, SendError, SentMessage, TemplateEndpoint};
use super::queue::{
    DeliveryState, FailureHandling, OutboundKind, OutboxEntry, Queued, Queues, Stored,
};
use super::templates::{TemplateCategories, TemplateCategory, NOT_A_MARKETING_TEMPLATE};
use crate::alerts::queue::{Alert, Reason};
use crate::audit::AuditLog;
use crate::metrics::{Category, Metrics, Outcome};
use crate::stats::PricingCategory;
use crate::store::crypto::Pseudonym;
use crate::store::Store;

/// Pause after WhatsApp's pair rate limit (about one message per 6 s to one user).
const PAIR_RATE_PAUSE: Duration = Duration::from_secs(6);
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// First pause of the whole sender after the spam rate limit (131048); doubles per further hit.
pub const SPAM_PAUSE: Duration = Duration::from_secs(60);
/// Longest pause after the spam rate limit.
const SPAM_PAUSE_MAX: Duration = Duration::from_secs(3600);
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
    /// First pause after the spam rate limit.
    pub spam_pause: Duration,
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
            spam_pause: SPAM_PAUSE,
            template_categories: TemplateCategories::default(),
        }
    }
}

/// The whole sender's slowdown after the spam rate limit.
#[derive(Default)]
struct Slowdown {
    until: Option<Instant>,
    /// Hits since the last successful send.
    hits: u32,
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
    policy: FailurePolicy,
    audit: Option<Arc<AuditLog>>,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    slowdown: Mutex<Slowdown>,
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
        audit: Option<Arc<AuditLog>>,
        metrics: Arc<Metrics>,
        wake: Arc<Notify>,
    ) -> Arc<Sender> {
        let policy = FailurePolicy {
            reopen_template: cfg.reopen_template.clone(),
            template_language: cfg.template_language.clone(),
        };
        Arc::new(Sender {
            store,
            queues,
            graph: std::sync::RwLock::new((0, graph)),
            paused: tokio::sync::watch::channel(None).0,
            cfg,
            policy,
            audit,
            metrics,
            wake,
            slowdown: Mutex::new(Slowdown::default()),
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
            raise_alert(&self.store, Reason::SenderPaused, None);
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
        if let Some(pause) = self.slowed_for() {
            return Ok(Some(pause));
        }
        let this = self.clone();
        let (rows, next_due) = tokio::task::spawn_blocking(move || {
            // Deferred replies that are due join the outbox first.
            let (_, next_due) = this.queues.release_due(&this.store, Timestamp::now())?;
            Ok::<_, crate::store::StoreError>((this.queues.outbox(&this.store)?, next_due))
        })
        .await??;
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
        let mut earliest: Option<Duration> = next_due.map(|due| {
            Duration::try_from(due.duration_since(Timestamp::now())).unwrap_or(Duration::ZERO)
        });
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

    /// How much longer the spam-limit slowdown lasts, if it does.
    fn slowed_for(&self) -> Option<Duration> {
        let mut slowdown = self.slowdown.lock().expect("sender lock poisoned");
        let until = slowdown.until?;
        let now = Instant::now();
        if until > now {
            return Some(until - now);
        }
        slowdown.until = None;
        self.metrics.sender_slowed.set(0);
        None
    }

    /// The spam rate limit hit `row`: the whole sender pauses (longer per hit until a send
    /// succeeds); the first hit of a series is audited and alerts staff. The row stays.
    fn slow_down(&self, p: &Pseudonym, row: &Queued<OutboxEntry>, err: &SendError) -> GroupResult {
        let (pause, first) = {
            let mut slowdown = self.slowdown.lock().expect("sender lock poisoned");
            slowdown.hits = slowdown.hits.saturating_add(1);
            let pause = self
                .cfg
                .spam_pause
                .saturating_mul(1u32 << (slowdown.hits - 1).min(16))
                .min(SPAM_PAUSE_MAX);
            slowdown.until = Some(Instant::now() + pause);
            (pause, slowdown.hits == 1)
        };
        self.metrics.sender_slowed.set(1);
        self.metrics
            .sends
            .get_or_create(&Outcome::of("spam_limited"))
            .inc();
        let report = Report {
            pseudonym: *p,
            entry: &row.entry,
            code: err.code(),
            delayed: false,
            handling: FailureHandling::SlowedDown,
        };
        if first {
            if let Err(e) = report.commit(&self.store, self.audit.as_deref(), self.store.batch()) {
                error!(customer = %p, error = %e, "auditing the spam rate limit failed");
            }
            report.announce(&self.metrics);
        } else {
            self.count_failure(err);
        }
        warn!(
            pause_secs = pause.as_secs(),
            "spam rate limit: sending slowed down"
        );
        GroupResult::Hold(pause)
    }

    /// Counts a failed call that is retried (no report of its own).
    fn count_failure(&self, err: &SendError) {
        if err.code().is_some() {
            failures::count_failure(&self.metrics, err.code(), false);
        }
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

    /// Where a row of customer `p` queued for `queued` goes now: there, unless the customer has
    /// moved to another identity since (a changed number re-keys their rows, but a row keeps
    /// the address it was queued for, which may now be someone else's): then the record's
    /// current one, its number or else its WhatsApp user id.
    fn current_address(&self, p: &Pseudonym, queued: &str) -> String {
        match self.store.customer(p) {
            Ok(Some(c)) if c.body.phone != queued && c.body.user_id.as_deref() != Some(queued) => {
                c.address().unwrap_or(queued).to_string()
            }
            _ => queued.to_string(),
        }
    }

    /// Sends one customer's replies in order. Blocking.
    fn send_group(&self, p: &Pseudonym, rows: Vec<Queued<OutboxEntry>>) -> GroupResult {
        let mut rows = rows.into_iter().peekable();
        while let Some(row) = rows.next() {
            // The rows were read before this task started; an earlier task for this customer
            // may have sent and retired some of them since, and a reply may have been rewritten
            // (combined, replaced, re-sealed by a move) or removed by a forget. Only one task per
            // customer runs at a time, so a row stored exactly as read has not been sent and is
            // what is to be sent; a changed one makes the whole group be read again.
            match self.queues.stored(&self.store, &row) {
                Ok(Stored::AsRead) => {}
                Ok(Stored::Gone) => continue,
                Ok(Stored::Changed) => return GroupResult::Hold(Duration::ZERO),
                Err(e) => {
                    error!(customer = %p, error = %e, "reading the outbox failed");
                    return GroupResult::Hold(Duration::from_secs(1));
                }
            }
            if self.paused.borrow().is_some() {
                return GroupResult::Hold(Duration::ZERO);
            }
            let (generation, graph) = self.graph.read().expect("sender lock poisoned").clone();
            let to = self.current_address(p, &row.entry.to);
            let (result, category) = match &row.entry.kind {
                OutboundKind::Text(t) => (graph.send_text(&to, t), PricingCategory::Service),
                OutboundKind::Buttons { body, buttons } => (
                    graph.send_buttons(&to, body, buttons),
                    PricingCategory::Service,
                ),
                OutboundKind::Template {
                    name,
                    language,
                    params,
                    buttons,
                } => self.send_template(&graph, p, &to, (name, language), params, buttons),
            };
            match result {
                Ok(sent) => {
                    self.metrics.sends.get_or_create(&Outcome::of("ok")).inc();
                    self.slowdown.lock().expect("sender lock poisoned").hits = 0;
                    if let Err(e) = self.retire_sent(&row, &sent.id, category) {
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
        let disposition = err.disposition();
        let retried = matches!(
            disposition,
            Disposition::RetryLater | Disposition::SpamLimited | Disposition::PairRateLimited
        );
        match disposition {
            Disposition::AuthFailed => self.auth_failed(generation, &err),
            _ if retried && expired(&row.entry, Timestamp::now()) => {
                self.metrics
                    .sends
                    .get_or_create(&Outcome::of("expired"))
                    .inc();
                self.count_failure(&err);
                warn!(customer = %p, code = ?err.code(), reason = "reply_expired", FRONTDESK_EVENT = "staff.alert", "a reply could not be sent for 24 hours: dropped, staff should contact the customer");
                raise_alert(&self.store, Reason::ReplyUndelivered, Some(*p));
                if let Err(e) = self.retire(&row.key) {
                    error!(customer = %p, error = %e, "outbox update failed");
                }
                GroupResult::Hold(Duration::ZERO)
            }
            Disposition::RetryLater => {
                self.metrics
                    .sends
                    .get_or_create(&Outcome::of("retry"))
                    .inc();
                self.count_failure(&err);
                let d = self.backoff(p);
                warn!(customer = %p, error = %err, retry_in_ms = d.as_millis() as u64, "send failed; retrying");
                GroupResult::Hold(d)
            }
            Disposition::SpamLimited => self.slow_down(p, &row, &err),
            Disposition::PairRateLimited => {
                self.metrics
                    .sends
                    .get_or_create(&Outcome::of("pair_rate_limited"))
                    .inc();
                self.count_failure(&err);
                if let Err(e) = self.combine(&row, &rest) {
                    error!(customer = %p, error = %e, "combining replies failed");
                }
                info!(customer = %p, "pair rate limit: pausing and combining replies");
                GroupResult::Hold(PAIR_RATE_PAUSE)
            }
            Disposition::WindowClosed
            | Disposition::Undeliverable
            | Disposition::MarketingLimited
            | Disposition::TemplateUnavailable
            | Disposition::RecipientIdUnsupported
            | Disposition::Permanent => {
                if let Err(e) = self.settle(p, &row, &err, disposition) {
                    error!(customer = %p, error = %e, "outbox update failed");
                }
                GroupResult::Hold(Duration::ZERO)
            }
        }
    }

    /// Carries out [`failures::plan`] for a reply whose send call failed for good: the row is
    /// replaced (re-open template, phone number), deferred or dropped, audited in the same
    /// durable write.
    fn settle(
        &self,
        p: &Pseudonym,
        row: &Queued<OutboxEntry>,
        err: &SendError,
        disposition: Disposition,
    ) -> anyhow::Result<()> {
        // The re-open mark is read and written by the dispatcher too (delayed failures).
        let _guard = self.store.lock_customer(p);
        let now = Timestamp::now();
        let plan = failures::plan(
            &self.store,
            &self.queues,
            &self.policy,
            p,
            &row.entry,
            disposition,
            now,
        )?;
        let mut batch = self.store.batch();
        match &plan {
            Plan::Reopen(template) => {
                self.queues.rewrite_outbox(
                    &self.store,
                    &mut batch,
                    &row.key,
                    &row.pseudonym,
                    template,
                )?;
                self.queues.mark_reopened(&self.store, &mut batch, p, now);
            }
            Plan::Resend(to_phone) => {
                self.queues.rewrite_outbox(
                    &self.store,
                    &mut batch,
                    &row.key,
                    &row.pseudonym,
                    to_phone,
                )?;
            }
            Plan::Defer(deferred) => {
                self.queues.remove_outbox(&self.store, &mut batch, &row.key);
                self.queues
                    .push_deferred(&self.store, &mut batch, &row.pseudonym, deferred)?;
            }
            Plan::Drop(_) | Plan::Alert => {
                self.queues.remove_outbox(&self.store, &mut batch, &row.key);
            }
        }
        self.metrics
            .sends
            .get_or_create(&Outcome::of(match disposition {
                Disposition::WindowClosed => "window_closed",
                Disposition::Undeliverable => "undeliverable",
                Disposition::MarketingLimited => "marketing_limited",
                Disposition::TemplateUnavailable => "template_unavailable",
                Disposition::RecipientIdUnsupported => "recipient_id_unsupported",
                _ => "failed",
            }))
            .inc();
        let report = Report {
            pseudonym: *p,
            entry: &row.entry,
            code: err.code(),
            delayed: false,
            handling: plan.handling(),
        };
        report.commit(&self.store, self.audit.as_deref(), batch)?;
        report.announce(&self.metrics);
        Ok(())
    }

    /// Removes a reply from the outbox, durably.
    fn retire(&self, key: &[u8]) -> crate::store::Result<()> {
        let mut batch = self.store.batch();
        self.queues.remove_outbox(&self.store, &mut batch, key);
        self.store.commit_durable(batch)
    }

    /// Removes a sent reply from the outbox and records its message id and what it was (for a
    /// failure reported later), durably.
    fn retire_sent(
        &self,
        row: &Queued<OutboxEntry>,
        wamid: &str,
        category: PricingCategory,
    ) -> crate::store::Result<()> {
        // The customer's lock, which the dispatcher holds too when a status settles a message:
        // WhatsApp can report a message delivered before this write, and what it was must
        // then not be kept (nothing would remove it again).
        let _guard = self.store.lock_customer(&row.pseudonym);
        let now = Timestamp::now();
        let mut batch = self.store.batch();
        self.queues.remove_outbox(&self.store, &mut batch, &row.key);
        self.queues
            .record_delivery(&self.store, &mut batch, wamid, DeliveryState::Accepted, now);
        let settled = self
            .queues
            .delivery(&self.store, wamid)?
            .is_some_and(|s| s >= DeliveryState::Delivered);
        if !settled {
            match self.queues.record_sent(
                &self.store,
                &mut batch,
                wamid,
                &row.pseudonym,
                &row.entry,
            ) {
                // Forgotten while the reply was on its way: nothing about them is kept.
                Err(crate::store::StoreError::NoDataKey) => {}
                other => other?,
            }
        }
        crate::stats::record_sent(&self.store, &mut batch, category, now)?;
        self.store.commit_durable(batch)
    }

    /// Sends a template through the endpoint its category needs; returns what the message is
    /// billed as. A template Meta refuses on `/marketing_messages` as not marketing (its
    /// category changed back before we heard of it) is sent through `/messages` at once.
    fn send_template(
        &self,
        graph: &GraphClient,
        p: &Pseudonym,
        to: &str,
        (name, language): (&str, &str),
        params: &[String],
        buttons: &[String],
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
                graph.send_template_with_buttons(
                    TemplateEndpoint::Messages,
                    to,
                    name,
                    language,
                    params,
                    buttons,
                ),
                known.category.pricing(),
            );
        }
        match graph.send_template_with_buttons(
            TemplateEndpoint::MarketingMessages,
            to,
            name,
            language,
            params,
            buttons,
        ) {
            Err(e) if e.code() == Some(NOT_A_MARKETING_TEMPLATE) => {
                warn!(customer = %p, template = %name, "WhatsApp refused the template as not marketing; sending it through /messages");
                (
                    graph.send_template_with_buttons(
                        TemplateEndpoint::Messages,
                        to,
                        name,
                        language,
                        params,
                        buttons,
                    ),
                    PricingCategory::Utility,
                )
            }
            result => (result, PricingCategory::Marketing),
        }
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
        )?;
        self.store.commit_durable(batch)
    }
}

/// Raises a staff alert in a write of its own (durable before the sender goes on); a failure
/// leaves the journal line as the only alert.
fn raise_alert(store: &Store, reason: Reason, customer: Option<Pseudonym>) {
    let first_name = customer
        .and_then(|p| store.customer(&p).ok().flatten())
        .and_then(|c| c.body.profile.vorname);
    let alert = Alert {
        reason,
        customer,
        first_name,
        raised: Timestamp::now(),
    };
    if let Err(e) = crate::alerts::queue::raise_now(store, &alert) {
        error!(reason = reason.code(), error = %e, "raising a staff alert failed");
    }
}

/// Whether transient errors have kept `entry` from going out for longer than [`MAX_REPLY_AGE`].
fn expired(entry: &OutboxEntry, now: Timestamp) -> bool {
    now.duration_since(entry.created) > MAX_REPLY_AGE
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::whatsapp::{
        self as sim, SIM_GRAPH_VERSION, SIM_PHONE_NUMBER_ID, SIM_TOKEN,
    };
    use crate::store::crypto::StoreIdentity;

    const GONE: &str = "491701111111";
    const KEPT: &str = "491702222222";

    fn reply(to: &str, text: &str) -> OutboxEntry {
        OutboxEntry {
            to: to.into(),
            kind: OutboundKind::Text(text.into()),
            created: Timestamp::now(),
            history: Vec::new(),
        }
    }

    /// Sends `rows` of customer `p` as one task of the sender does.
    async fn send(
        sender: &Arc<Sender>,
        p: Pseudonym,
        rows: Vec<Queued<OutboxEntry>>,
    ) -> GroupResult {
        let sender = sender.clone();
        tokio::task::spawn_blocking(move || sender.send_group(&p, rows))
            .await
            .unwrap()
    }

    /// A sender on a real store, sending to the Graph API simulator.
    struct Fixture {
        graph: sim::GraphSim,
        store: Arc<Store>,
        queues: Arc<Queues>,
        sender: Arc<Sender>,
        _dir: tempfile::TempDir,
    }

    async fn fixture() -> Fixture {
        let graph = sim::start().await;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), StoreIdentity::generate()).unwrap());
        let queues = Arc::new(Queues::new(&store).unwrap());
        let client = GraphClient::new(
            &graph.base_url(),
            SIM_GRAPH_VERSION,
            SIM_PHONE_NUMBER_ID,
            SIM_TOKEN.into(),
            Duration::from_secs(5),
        );
        let sender = Sender::new(
            store.clone(),
            queues.clone(),
            client,
            SenderConfig::default(),
            None,
            Arc::new(Metrics::new()),
            Arc::new(Notify::new()),
        );
        Fixture {
            graph,
            store,
            queues,
            sender,
            _dir: dir,
        }
    }

    /// A customer known by `phone` with `texts` queued for `to`; their pseudonym and the
    /// outbox as read.
    fn customer_with_replies(
        store: &Store,
        queues: &Queues,
        phone: &str,
        to: &str,
        texts: &[&str],
    ) -> (Pseudonym, Vec<Queued<OutboxEntry>>) {
        let p = store
            .update_customer(phone, Timestamp::now(), |_, _, _| Ok(()))
            .unwrap()
            .0
            .pseudonym;
        let mut batch = store.batch();
        for text in texts {
            queues
                .push_outbox(store, &mut batch, &p, &reply(to, text))
                .unwrap();
        }
        store.commit_durable(batch).unwrap();
        (p, queues.outbox(store).unwrap())
    }

    fn rows_of(rows: &[Queued<OutboxEntry>], p: Pseudonym) -> Vec<Queued<OutboxEntry>> {
        rows.iter().filter(|r| r.pseudonym == p).cloned().collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reply_queued_before_the_number_changed_goes_to_the_new_number() {
        const OLD: &str = "491704444444";
        const NEW: &str = "491705555555";
        let Fixture {
            graph,
            store,
            queues,
            sender,
            _dir,
        } = fixture().await;
        // The customer's record now holds the new number; a reply queued for the old number
        // was re-keyed to them by the move but still names the old one.
        let (p, rows) = customer_with_replies(&store, &queues, NEW, OLD, &["Bis Dienstag!"]);
        assert!(matches!(send(&sender, p, rows).await, GroupResult::Done));
        assert!(graph.texts_to(OLD).is_empty(), "nothing to the old number");
        assert_eq!(graph.texts_to(NEW), vec!["Bis Dienstag!".to_string()]);
    }

    /// WhatsApp can report a message delivered before the sender has recorded the send: then
    /// what it was is not kept (no later status would remove it), and its state stays.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_send_recorded_after_its_delivery_keeps_nothing_of_the_reply() {
        let Fixture {
            store,
            queues,
            sender,
            _dir,
            ..
        } = fixture().await;
        let (_, rows) =
            customer_with_replies(&store, &queues, KEPT, KEPT, &["Bis Dienstag!", "Bis bald!"]);
        let mut batch = store.batch();
        queues.record_delivery(
            &store,
            &mut batch,
            "wamid.fast",
            DeliveryState::Delivered,
            Timestamp::now(),
        );
        store.commit_durable(batch).unwrap();

        sender
            .retire_sent(&rows[0], "wamid.fast", PricingCategory::Service)
            .unwrap();
        sender
            .retire_sent(&rows[1], "wamid.slow", PricingCategory::Service)
            .unwrap();
        assert!(queues.sent(&store, "wamid.fast").unwrap().is_none());
        assert_eq!(
            queues.delivery(&store, "wamid.fast").unwrap(),
            Some(DeliveryState::Delivered)
        );
        // Without a status yet, the reply is kept for a failure reported later.
        assert!(queues.sent(&store, "wamid.slow").unwrap().is_some());
        assert!(queues.outbox(&store).unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rows_forgotten_or_rewritten_after_they_were_read_are_not_sent_as_read() {
        let Fixture {
            graph,
            store,
            queues,
            sender,
            _dir,
        } = fixture().await;
        let mut ps = Vec::new();
        for (phone, text) in [(GONE, "Hallo Dora"), (KEPT, "Alter Text")] {
            let p = store.pseudonym(phone);
            let _guard = store.lock_customer(&p);
            let mut batch = store.batch();
            store.data_key_or_create(&p, &mut batch).unwrap();
            queues
                .push_outbox(&store, &mut batch, &p, &reply(phone, text))
                .unwrap();
            store.commit_durable(batch).unwrap();
            ps.push(p);
        }
        let (gone, kept) = (ps[0], ps[1]);
        // What the sender read before the customer was forgotten and the other's reply was
        // rewritten (as a combination or a replacement does).
        let read = queues.outbox(&store).unwrap();
        assert_eq!(read.len(), 2);
        store.forget(&[gone], Timestamp::now()).unwrap();
        let kept_row = rows_of(&read, kept).remove(0);
        let mut batch = store.batch();
        queues
            .rewrite_outbox(
                &store,
                &mut batch,
                &kept_row.key,
                &kept,
                &reply(KEPT, "Neuer Text"),
            )
            .unwrap();
        store.commit_durable(batch).unwrap();

        assert!(matches!(
            send(&sender, gone, rows_of(&read, gone)).await,
            GroupResult::Done
        ));
        assert!(matches!(
            send(&sender, kept, rows_of(&read, kept)).await,
            GroupResult::Hold(d) if d.is_zero()
        ));
        assert!(graph.sent().is_empty(), "nothing sent as it was read");

        // Read again, the rewritten reply goes out as it is stored now.
        let fresh = queues.outbox(&store).unwrap();
        assert!(matches!(
            send(&sender, kept, fresh).await,
            GroupResult::Done
        ));
        assert!(graph.texts_to(GONE).is_empty());
        assert_eq!(graph.texts_to(KEPT), vec!["Neuer Text".to_string()]);
        assert!(queues.outbox(&store).unwrap().is_empty());
    }
}
