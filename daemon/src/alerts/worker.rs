//! The alert worker: takes raised alerts to their channels and sends the e-mails.
//!
//! 1. **Fan-out.** A raised alert leaves the `r` stage in one durable write that puts the
//!    WhatsApp alert template into the outbox for every staff number (the sender delivers it
//!    like any reply: retries, the pause on a rejected token, the template's category), puts
//!    the alert at the `m` stage when e-mail is configured, and appends `staff.alert_sent`
//!    (channel `whatsapp`). A crash before that write repeats it whole; after it, nothing of it
//!    is repeated, so each staff number gets the template once (up to the sender's one
//!    documented window).
//! 2. **E-mail.** Each `m` alert is sent over SMTP, then removed in one durable write with its
//!    `staff.alert_sent` entry (channel `email`). A failure keeps the row and tries again with
//!    exponential backoff (up to [`RETRY_MAX`]); an alert still unsent after [`GIVE_UP_AFTER`]
//!    is dropped with an error in the journal. A crash between the server's acceptance and the
//!    write sends the mail again on restart, with the same Message-ID ([`super::mail`]).
//!
//! Both steps take the customer's lock and look at the row again first, so an alert about a
//! person forgotten meanwhile goes nowhere.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use tokio::sync::Notify;
use tracing::{error, info, warn};

use super::mail::{MailError, Mailer};
use super::queue::{self, Stored, ID_LEN, MAIL, RAISED};
use super::{render, AlertsConfig};
use crate::audit::{Actor, AuditEvent, AuditLog, Code, NewEntry};
use crate::metrics::{AlertLabel, Metrics};
use crate::store::{self, Store};
use crate::whatsapp::queue::{OutboundKind, OutboxEntry, Queues};

/// First wait after a failed e-mail; doubles per failure.
pub const RETRY_BASE: Duration = Duration::from_secs(5);
/// Longest wait between two attempts of one e-mail.
pub const RETRY_MAX: Duration = Duration::from_secs(900);
/// An e-mail not sent this long after its alert was raised is dropped.
pub const GIVE_UP_AFTER: SignedDuration = SignedDuration::from_hours(24);
/// How often the worker looks for alerts when nobody wakes it.
const IDLE_POLL: Duration = Duration::from_secs(30);

/// What the worker needs from the configuration.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// `[alerts]`.
    pub alerts: AlertsConfig,
    /// Language of the alert template.
    pub template_language: String,
    /// First wait after a failed e-mail (shortened in tests).
    pub retry_base: Duration,
}

#[derive(Debug)]
struct Retry {
    attempts: u32,
    next: Instant,
}

/// See the module doc.
pub struct AlertWorker {
    store: Arc<Store>,
    queues: Arc<Queues>,
    audit: Option<Arc<AuditLog>>,
    metrics: Arc<Metrics>,
    cfg: WorkerConfig,
    mailer: Option<Mailer>,
    /// Wakes the sender after alert templates joined the outbox.
    outbox_wake: Arc<Notify>,
    retries: Mutex<HashMap<[u8; ID_LEN], Retry>>,
}

impl AlertWorker {
    /// A worker over the shared services; `mailer` is `None` without e-mail recipients.
    pub fn new(
        store: Arc<Store>,
        queues: Arc<Queues>,
        audit: Option<Arc<AuditLog>>,
        metrics: Arc<Metrics>,
        cfg: WorkerConfig,
        mailer: Option<Mailer>,
        outbox_wake: Arc<Notify>,
    ) -> Arc<AlertWorker> {
        Arc::new(AlertWorker {
            store,
            queues,
            audit,
            metrics,
            cfg,
            mailer,
            outbox_wake,
            retries: Mutex::new(HashMap::new()),
        })
    }

    /// Runs until `shutdown` resolves; an e-mail in flight is finished first.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let notified = queue::wake().notified();
            let this = self.clone();
            let next = match tokio::task::spawn_blocking(move || this.round()).await {
                Ok(next) => next,
                Err(e) => {
                    error!(error = %e, "alert worker task panicked");
                    Some(Duration::from_secs(1))
                }
            };
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(next.unwrap_or(IDLE_POLL).min(IDLE_POLL)) => {}
                _ = &mut shutdown => break,
            }
        }
    }

    /// One pass: fans out every raised alert, then sends the e-mails that are due. Returns how
    /// long until the next retry is due, if one is waiting. Blocking.
    pub fn round(&self) -> Option<Duration> {
        match self.fan_out() {
            Ok(n) if n > 0 => self.outbox_wake.notify_one(),
            Ok(_) => {}
            Err(e) => {
                error!(error = %e, "handing staff alerts to their channels failed");
                return Some(Duration::from_secs(1));
            }
        }
        match self.send_mail() {
            Ok(next) => next,
            Err(e) => {
                error!(error = %e, "reading the alert e-mails failed");
                Some(Duration::from_secs(1))
            }
        }
    }

    fn count(&self, reason: queue::Reason, channel: &str, outcome: &str, by: u64) {
        self.metrics
            .staff_alerts
            .get_or_create(&AlertLabel {
                kind: reason.code().into(),
                channel: channel.into(),
                outcome: outcome.into(),
            })
            .inc_by(by);
    }

    fn commit(&self, batch: fjall::OwnedWriteBatch, entry: Option<NewEntry>) -> anyhow::Result<()> {
        match (&self.audit, entry) {
            (Some(log), Some(entry)) => {
                log.append_with(batch, entry)?;
            }
            _ => self.store.commit_durable(batch)?,
        }
        Ok(())
    }

    /// Takes every raised alert to its channels (see the module doc); returns how many alert
    /// templates joined the outbox.
    pub fn fan_out(&self) -> anyhow::Result<usize> {
        let alerts = &self.cfg.alerts;
        let mut queued = 0;
        for row in queue::at_stage(&self.store, RAISED)? {
            let reason = row.alert.reason;
            let _guard = row.alert.customer.map(|p| self.store.lock_customer(&p));
            if !queue::contains(&self.store, RAISED, &row.id)? {
                continue;
            }
            let mut batch = self.store.batch();
            queue::remove(&self.store, &mut batch, RAISED, &row.id);
            let by_whatsapp = reason.by_whatsapp() && alerts.by_whatsapp();
            let mut entry = None;
            if by_whatsapp {
                self.push_templates(&mut batch, &row);
                entry = Some(sent_entry(&row, "whatsapp", alerts.whatsapp_recipients.len()));
            }
            if self.mailer.is_some() {
                queue::put(&self.store, &mut batch, MAIL, &row.id, &row.alert);
            }
            if !by_whatsapp && self.mailer.is_none() {
                info!(reason = reason.code(), "no staff alert channel configured for this alert; see [alerts]");
            }
            self.commit(batch, entry)?;
            if by_whatsapp {
                let n = alerts.whatsapp_recipients.len();
                self.count(reason, "whatsapp", "queued", n as u64);
                queued += n;
            }
        }
        Ok(queued)
    }

    fn push_templates(&self, batch: &mut fjall::OwnedWriteBatch, row: &Stored) {
        let alerts = &self.cfg.alerts;
        let name = alerts.whatsapp_template.clone().unwrap_or_default();
        let language = if alerts.whatsapp_template_language.is_empty() {
            self.cfg.template_language.clone()
        } else {
            alerts.whatsapp_template_language.clone()
        };
        let params = render::template_params(&row.alert, &alerts.console_url);
        for number in &alerts.whatsapp_recipients {
            let entry = OutboxEntry {
                to: number.clone(),
                kind: OutboundKind::Template {
                    name: name.clone(),
                    language: language.clone(),
                    params: params.clone(),
                },
                created: Timestamp::now(),
                history: Vec::new(),
            };
            let staff = self.store.pseudonym(number);
            self.queues.push_outbox(&self.store, batch, &staff, &entry);
        }
    }

    /// Sends every e-mail that is due; returns how long until the next retry is due.
    pub fn send_mail(&self) -> store::Result<Option<Duration>> {
        let Some(mailer) = &self.mailer else {
            return Ok(None);
        };
        let mut next: Option<Duration> = None;
        for row in queue::at_stage(&self.store, MAIL)? {
            let now = Instant::now();
            if let Some(r) = self.retries.lock().expect("retry lock poisoned").get(&row.id) {
                if r.next > now {
                    let wait = r.next - now;
                    next = Some(next.map_or(wait, |n| n.min(wait)));
                    continue;
                }
            }
            match mailer.send(&row) {
                Ok(()) => self.mail_sent(&row, mailer.recipients()),
                Err(e) => {
                    if let Some(wait) = self.mail_failed(&row, &e) {
                        next = Some(next.map_or(wait, |n| n.min(wait)));
                    }
                }
            }
        }
        Ok(next)
    }

    fn mail_sent(&self, row: &Stored, recipients: usize) {
        self.retries
            .lock()
            .expect("retry lock poisoned")
            .remove(&row.id);
        let _guard = row.alert.customer.map(|p| self.store.lock_customer(&p));
        let mut batch = self.store.batch();
        queue::remove(&self.store, &mut batch, MAIL, &row.id);
        let entry = sent_entry(row, "email", recipients);
        if let Err(e) = self.commit(batch, Some(entry)) {
            // The mail went out; should the process stop before this is retried, it goes out
            // again with the same Message-ID.
            error!(alert = %row.id_hex(), error = %e, "recording a sent alert e-mail failed");
        }
        self.count(row.alert.reason, "email", "sent", 1);
        info!(alert = %row.id_hex(), reason = row.alert.reason.code(), FRONTDESK_EVENT = "staff.alert_sent", "staff alert e-mailed");
    }

    /// Schedules the next attempt; `None` when the alert was given up.
    fn mail_failed(&self, row: &Stored, e: &MailError) -> Option<Duration> {
        let age = Timestamp::now().duration_since(row.alert.raised);
        if age > GIVE_UP_AFTER {
            self.retries
                .lock()
                .expect("retry lock poisoned")
                .remove(&row.id);
            let _guard = row.alert.customer.map(|p| self.store.lock_customer(&p));
            let mut batch = self.store.batch();
            queue::remove(&self.store, &mut batch, MAIL, &row.id);
            if let Err(e) = self.store.commit_durable(batch) {
                error!(error = %e, "dropping an expired alert e-mail failed");
            }
            self.count(row.alert.reason, "email", "expired", 1);
            error!(alert = %row.id_hex(), reason = row.alert.reason.code(), error = %e, "a staff alert e-mail could not be sent for 24 hours and was dropped; check [alerts] and `frontdesk doctor --smtp`");
            return None;
        }
        self.count(row.alert.reason, "email", "failed", 1);
        let mut retries = self.retries.lock().expect("retry lock poisoned");
        let r = retries.entry(row.id).or_insert(Retry {
            attempts: 0,
            next: Instant::now(),
        });
        r.attempts = r.attempts.saturating_add(1);
        let wait = self
            .cfg
            .retry_base
            .saturating_mul(1u32 << (r.attempts - 1).min(16))
            .min(RETRY_MAX);
        r.next = Instant::now() + wait;
        warn!(alert = %row.id_hex(), error = %e, attempt = r.attempts, retry_in_secs = wait.as_secs(), "staff alert e-mail failed; trying again");
        Some(wait)
    }
}

/// The `staff.alert_sent` entry (reason, channel, count; the customer as subject).
fn sent_entry(row: &Stored, channel: &'static str, recipients: usize) -> NewEntry {
    let entry = NewEntry::new(
        Actor::System,
        AuditEvent::StaffAlertSent {
            reason: Code::new(row.alert.reason.code()),
            channel: Code::new(channel),
            recipients: recipients as u64,
        },
    );
    match &row.alert.customer {
        Some(p) => entry.about(p),
        None => entry,
    }
}
