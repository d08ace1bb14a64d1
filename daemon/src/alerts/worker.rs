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
        for mut row in queue::at_stage(&self.store, RAISED)? {
            self.about_staff(&mut row);
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
                self.push_templates(&mut batch, &row)?;
                entry = Some(sent_entry(
                    &row,
                    "whatsapp",
                    alerts.whatsapp_recipients.len(),
                ));
            }
            if self.mailer.is_some() {
                queue::put(&self.store, &mut batch, MAIL, &row.id, &row.alert);
            }
            if !by_whatsapp && self.mailer.is_none() {
                info!(
                    reason = reason.code(),
                    "no staff alert channel configured for this alert; see [alerts]"
                );
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

    /// A dropped message to a staff number is an alert template that failed: it is reported as
    /// such, about no customer (the staff member is not one).
    fn about_staff(&self, row: &mut Stored) {
        let Some(p) = row.alert.customer else { return };
        let staff = self.cfg.alerts.whatsapp_recipients.iter();
        if row.alert.reason == queue::Reason::ReplyUndelivered
            && staff.map(|n| self.store.pseudonym(n)).any(|s| s == p)
        {
            row.alert.reason = queue::Reason::AlertUndelivered;
            row.alert.customer = None;
            row.alert.first_name = None;
        }
    }

    fn push_templates(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        row: &Stored,
    ) -> store::Result<()> {
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
                    buttons: Vec::new(),
                },
                created: Timestamp::now(),
                history: Vec::new(),
            };
            let staff = self.store.pseudonym(number);
            // Outbox rows are sealed under their recipient's own key; a staff number that never
            // wrote to the studio gets one (kept while rows use it, then swept).
            self.store.data_key_or_create(&staff, batch)?;
            self.queues
                .push_outbox(&self.store, batch, &staff, &entry)?;
        }
        Ok(())
    }

    /// Sends every e-mail that is due; returns how long until the next retry is due.
    pub fn send_mail(&self) -> store::Result<Option<Duration>> {
        let Some(mailer) = &self.mailer else {
            return Ok(None);
        };
        let mut next: Option<Duration> = None;
        for row in queue::at_stage(&self.store, MAIL)? {
            let now = Instant::now();
            if let Some(r) = self
                .retries
                .lock()
                .expect("retry lock poisoned")
                .get(&row.id)
            {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::queue::{Alert, Reason};
    use crate::alerts::SmtpSecurity;
    use crate::audit::AuditFilter;
    use crate::store::crypto::StoreIdentity;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Arc<Store>,
        queues: Arc<Queues>,
        audit: Arc<AuditLog>,
        metrics: Arc<Metrics>,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), StoreIdentity::generate()).unwrap());
        let audit = Arc::new(AuditLog::open(store.clone()).unwrap().without_journal());
        Fixture {
            queues: Arc::new(Queues::new(&store).unwrap()),
            store,
            audit,
            metrics: Arc::new(Metrics::new()),
            _dir: dir,
        }
    }

    /// A loopback port nothing listens on.
    fn closed_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn alerts_cfg(mail_port: Option<u16>) -> AlertsConfig {
        let mut cfg = AlertsConfig {
            console_url: "https://desk.studio.example".into(),
            whatsapp_recipients: vec!["4915100000001".into(), "4915100000002".into()],
            whatsapp_template: Some("staff_alert".into()),
            ..AlertsConfig::default()
        };
        if let Some(port) = mail_port {
            cfg.email_to = vec!["desk@studio.example".into()];
            cfg.email_from = "frontdesk@studio.example".into();
            cfg.smtp_host = "127.0.0.1".into();
            cfg.smtp_port = port;
            cfg.smtp_security = SmtpSecurity::None;
            cfg.smtp_timeout_secs = 5;
        }
        cfg
    }

    fn worker(f: &Fixture, cfg: AlertsConfig) -> Arc<AlertWorker> {
        let mailer = cfg.by_email().then(|| {
            Mailer::new(&cfg, &crate::secrets::Credentials::in_dir(f._dir.path())).unwrap()
        });
        AlertWorker::new(
            f.store.clone(),
            f.queues.clone(),
            Some(f.audit.clone()),
            f.metrics.clone(),
            WorkerConfig {
                alerts: cfg,
                template_language: "de".into(),
                retry_base: Duration::from_secs(60),
            },
            mailer,
            Arc::new(Notify::new()),
        )
    }

    /// The pseudonym of `phone` with a data key, as a customer (or a staff number sent an
    /// alert) has one.
    fn keyed(f: &Fixture, phone: &str) -> crate::store::crypto::Pseudonym {
        let p = f.store.pseudonym(phone);
        let mut batch = f.store.batch();
        f.store.data_key_or_create(&p, &mut batch).unwrap();
        f.store.commit_durable(batch).unwrap();
        p
    }

    fn raise(f: &Fixture, reason: Reason, customer: bool) -> Alert {
        let alert = Alert {
            reason,
            customer: customer.then(|| keyed(f, "4917612345678")),
            first_name: customer.then(|| "Wiebke".to_string()),
            raised: Timestamp::now(),
        };
        queue::raise_now(&f.store, &alert).unwrap();
        alert
    }

    fn sent_entries(f: &Fixture) -> Vec<crate::audit::AuditRecord> {
        f.audit
            .query(&AuditFilter {
                action: Some("staff.alert_sent".into()),
                ..AuditFilter::default()
            })
            .unwrap()
    }

    fn counted(f: &Fixture, kind: &str, channel: &str, outcome: &str) -> u64 {
        f.metrics
            .staff_alerts
            .get_or_create(&AlertLabel {
                kind: kind.into(),
                channel: channel.into(),
                outcome: outcome.into(),
            })
            .get()
    }

    #[test]
    fn a_hand_over_reaches_every_staff_number_once_with_the_link() {
        let f = fixture();
        let w = worker(&f, alerts_cfg(Some(closed_port())));
        let alert = raise(&f, Reason::Complaint, true);
        assert_eq!(w.fan_out().unwrap(), 2);
        let outbox = f.queues.outbox(&f.store).unwrap();
        let mut to: Vec<&str> = outbox.iter().map(|r| r.entry.to.as_str()).collect();
        to.sort_unstable();
        assert_eq!(to, ["4915100000001", "4915100000002"]);
        let OutboundKind::Template { name, params, .. } = &outbox[0].entry.kind else {
            panic!("the alert is a template");
        };
        assert_eq!(name, "staff_alert");
        let customer = alert.customer.unwrap();
        assert_eq!(params[1], "Wiebke");
        assert_eq!(
            params[2],
            format!("https://desk.studio.example/c/{}", customer.to_hex())
        );
        assert!(params.iter().all(|p| !p.contains("4917612345678")));
        // The e-mail waits at its own stage; nothing is raised any more.
        assert!(queue::at_stage(&f.store, RAISED).unwrap().is_empty());
        assert_eq!(queue::at_stage(&f.store, MAIL).unwrap().len(), 1);
        // A second pass (or a restart) hands out nothing again.
        assert_eq!(w.fan_out().unwrap(), 0);
        assert_eq!(f.queues.outbox(&f.store).unwrap().len(), 2);
        let entries = sent_entries(&f);
        assert_eq!(entries.len(), 1);
        let json = serde_json::to_string(&entries[0]).unwrap();
        assert!(json.contains("whatsapp") && json.contains("complaint"));
        assert!(!json.contains("Wiebke"));
        assert_eq!(counted(&f, "complaint", "whatsapp", "queued"), 2);
    }

    #[test]
    fn alerts_about_the_sender_go_by_email_only() {
        let f = fixture();
        let w = worker(&f, alerts_cfg(Some(closed_port())));
        raise(&f, Reason::SenderPaused, false);
        assert_eq!(w.fan_out().unwrap(), 0);
        assert!(f.queues.outbox(&f.store).unwrap().is_empty());
        assert_eq!(queue::at_stage(&f.store, MAIL).unwrap().len(), 1);
    }

    #[test]
    fn a_failed_email_stays_and_waits_for_its_retry() {
        let f = fixture();
        let w = worker(&f, alerts_cfg(Some(closed_port())));
        raise(&f, Reason::BookingFailed, true);
        w.fan_out().unwrap();
        let next = w.send_mail().unwrap().expect("a retry is scheduled");
        assert_eq!(next, Duration::from_secs(60));
        assert_eq!(queue::at_stage(&f.store, MAIL).unwrap().len(), 1);
        assert_eq!(counted(&f, "booking_failed", "email", "failed"), 1);
        // Not due yet: no second attempt in the next pass.
        assert!(w.send_mail().unwrap().is_some());
        assert_eq!(counted(&f, "booking_failed", "email", "failed"), 1);
        assert_eq!(sent_entries(&f).len(), 1, "only the whatsapp hand-out");
    }

    #[test]
    fn an_email_failing_for_a_day_is_dropped() {
        let f = fixture();
        let w = worker(&f, alerts_cfg(Some(closed_port())));
        let alert = Alert {
            reason: Reason::Rescheduled,
            customer: None,
            first_name: None,
            raised: Timestamp::now() - SignedDuration::from_hours(25),
        };
        queue::raise_now(&f.store, &alert).unwrap();
        w.fan_out().unwrap();
        assert_eq!(w.send_mail().unwrap(), None);
        assert!(queue::at_stage(&f.store, MAIL).unwrap().is_empty());
        assert_eq!(counted(&f, "rescheduled", "email", "expired"), 1);
    }

    #[test]
    fn an_alert_about_a_forgotten_person_goes_nowhere() {
        let f = fixture();
        let w = worker(&f, alerts_cfg(None));
        let alert = raise(&f, Reason::Complaint, true);
        f.store
            .forget(&[alert.customer.unwrap()], Timestamp::now())
            .unwrap();
        assert_eq!(w.fan_out().unwrap(), 0);
        assert!(f.queues.outbox(&f.store).unwrap().is_empty());
    }

    #[test]
    fn a_failed_alert_template_is_reported_as_such_and_not_as_a_customer() {
        let f = fixture();
        let w = worker(&f, alerts_cfg(Some(closed_port())));
        let staff = keyed(&f, "4915100000001");
        queue::raise_now(
            &f.store,
            &Alert {
                reason: Reason::ReplyUndelivered,
                customer: Some(staff),
                first_name: None,
                raised: Timestamp::now(),
            },
        )
        .unwrap();
        assert_eq!(w.fan_out().unwrap(), 0, "never by WhatsApp");
        let mail = queue::at_stage(&f.store, MAIL).unwrap();
        assert_eq!(mail[0].alert.reason, Reason::AlertUndelivered);
        assert_eq!(mail[0].alert.customer, None);
    }

    #[test]
    fn without_channels_a_raised_alert_is_retired() {
        let f = fixture();
        let w = worker(&f, AlertsConfig::default());
        raise(&f, Reason::Complaint, true);
        assert_eq!(w.fan_out().unwrap(), 0);
        assert_eq!(queue::pending(&f.store), 0);
        assert!(sent_entries(&f).is_empty());
    }
}
