//! The scheduler's tick: every scheduled message that is due leaves the store's schedule in one
//! durable write that puts its template into the outbox (the sender then sends it like any
//! reply) and appends its `reminder.sent` entry — or, when it must not go out, retires it with a
//! `reminder.skipped` entry. A crash before that write repeats it whole; after it, nothing of it
//! is repeated: each message is sent once, across restarts and kills (up to the sender's one
//! documented window).
//!
//! At send time, under the customer's lock, the row is read again (a cancellation or a forget
//! may have removed it since) and the contact and booking are checked: nothing goes to a
//! forgotten contact (their key is gone, the row cannot even be opened), to one who opted out,
//! or about a booking cancelled meanwhile. Follow-ups go only to contacts the assistant answers.
//! The follow-up after the trial is decided here: a thank-you (and, a day later, the sign-up
//! question) when the booking has a check-in, one no-show message offering a new slot when not.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::Notify;
use tracing::{error, info};

use super::plan::german_day_and_time;
use super::tap::TapAction;
use super::{Clock, Plan, RemindersConfig, ScheduledBody};
use crate::audit::{Actor, AuditEvent, AuditLog, Code, NewEntry};
use crate::magicline::booking::{booking_state, BookingState};
use crate::store::customers::{BotMode, Customer};
use crate::store::schedule::{Due, ScheduledKind, Slot};
use crate::store::Store;
use crate::whatsapp::queue::{OutboundKind, OutboxEntry, Queues};

/// How many due rows one read takes; a tick reads until none is left.
const READ_BATCH: usize = 256;
/// The longest the timer waits between ticks.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// The first name in a template when the contact never gave one.
const NO_NAME: &str = "du";

/// What one tick did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TickReport {
    /// Messages put into the outbox.
    pub sent: usize,
    /// Messages retired without being sent.
    pub skipped: usize,
}

/// What a due message comes to.
enum Decision {
    Send {
        kind: Code,
        entry: OutboxEntry,
        /// A message it schedules in turn (the sign-up question after the thank-you).
        then: Option<Slot>,
    },
    Skip(Code),
}

/// See the module doc.
pub struct Scheduler {
    store: Arc<Store>,
    queues: Arc<Queues>,
    audit: Option<Arc<AuditLog>>,
    cfg: RemindersConfig,
    plan: Option<Plan>,
    language: String,
    clock: Clock,
    outbox_wake: Arc<Notify>,
    max_wait: Duration,
}

impl Scheduler {
    /// Ticks at least this often (tests whose clock jumps shorten it).
    pub fn set_max_wait(&mut self, max_wait: Duration) {
        self.max_wait = max_wait;
    }

    /// A scheduler over the shared services; `default_language` is `whatsapp.template_language`.
    pub fn new(
        store: Arc<Store>,
        queues: Arc<Queues>,
        audit: Option<Arc<AuditLog>>,
        cfg: RemindersConfig,
        default_language: &str,
        clock: Clock,
        outbox_wake: Arc<Notify>,
    ) -> Scheduler {
        let language = if cfg.template_language.is_empty() {
            default_language.to_string()
        } else {
            cfg.template_language.clone()
        };
        Scheduler {
            store,
            queues,
            audit,
            plan: Plan::from_config(&cfg),
            cfg,
            language,
            clock,
            outbox_wake,
            max_wait: MAX_WAIT,
        }
    }

    /// Ticks until `shutdown` resolves: at once, then when the next message is due, at the
    /// latest after [`MAX_WAIT`] (messages scheduled meanwhile, a clock moved in tests).
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let this = self.clone();
            let wait = match tokio::task::spawn_blocking(move || this.tick_and_wait()).await {
                Ok(wait) => wait,
                Err(e) => {
                    error!(error = %e, "reminder scheduler task panicked");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = &mut shutdown => break,
            }
        }
    }

    fn tick_and_wait(&self) -> Duration {
        match self.tick() {
            Ok(r) if r.sent + r.skipped > 0 => {
                info!(sent = r.sent, skipped = r.skipped, "scheduled messages due");
            }
            Ok(_) => {}
            Err(e) => {
                error!(error = %e, "the reminder scheduler's tick failed");
                return Duration::from_secs(5);
            }
        }
        let now = (self.clock)();
        match self.store.next_due() {
            Ok(Some(next)) => Duration::try_from(next.duration_since(now))
                .unwrap_or(Duration::ZERO)
                .clamp(Duration::from_millis(200).min(self.max_wait), self.max_wait),
            _ => self.max_wait,
        }
    }

    /// Takes every message due now into the outbox (or retires it). Blocking.
    pub fn tick(&self) -> anyhow::Result<TickReport> {
        let now = (self.clock)();
        let mut report = TickReport::default();
        loop {
            let due = self.store.due(now, READ_BATCH)?;
            let n = due.len();
            for d in due {
                match self.handle(&d, now)? {
                    Some(true) => report.sent += 1,
                    Some(false) => report.skipped += 1,
                    None => {}
                }
            }
            if n < READ_BATCH {
                break;
            }
        }
        if report.sent > 0 {
            self.outbox_wake.notify_one();
        }
        Ok(report)
    }

    /// `Some(true)`: sent, `Some(false)`: skipped, `None`: gone meanwhile.
    fn handle(&self, due: &Due, now: Timestamp) -> anyhow::Result<Option<bool>> {
        let p = due.slot.pseudonym;
        let _guard = self.store.lock_customer(&p);
        if !self.store.still_scheduled(due)? {
            return Ok(None);
        }
        let decision = self.decide(due, now)?;
        let mut batch = self.store.batch();
        self.store.unschedule(&mut batch, &due.slot);
        let booking_id = u64::try_from(due.slot.booking_id).unwrap_or_default();
        let (event, sent) = match decision {
            Decision::Send { kind, entry, then } => {
                self.queues
                    .push_outbox(&self.store, &mut batch, &p, &entry)?;
                if let (Some(slot), Some(plain)) = (then, &due.plain) {
                    self.store.schedule(&mut batch, &slot, plain)?;
                }
                (AuditEvent::ReminderSent { kind, booking_id }, true)
            }
            Decision::Skip(reason) => {
                info!(customer = %p, kind = due.slot.kind.code(), reason = reason.as_str(), "scheduled message not sent");
                (
                    AuditEvent::ReminderSkipped {
                        kind: Code::new(due.slot.kind.code()),
                        reason,
                    },
                    false,
                )
            }
        };
        let entry = NewEntry::new(Actor::System, event).about(&p);
        match &self.audit {
            Some(log) => {
                log.append_with(batch, entry)?;
            }
            None => self.store.commit_durable(batch)?,
        }
        Ok(Some(sent))
    }

    fn decide(&self, due: &Due, now: Timestamp) -> anyhow::Result<Decision> {
        let slot = due.slot;
        let Some(plain) = &due.plain else {
            return Ok(Decision::Skip(Code::new("forgotten")));
        };
        let Ok(body) = serde_json::from_slice::<ScheduledBody>(plain) else {
            return Ok(Decision::Skip(Code::new("unreadable")));
        };
        let Some(customer) = self.store.customer(&slot.pseudonym)? else {
            return Ok(Decision::Skip(Code::new("no_contact")));
        };
        if customer.meta.mode == BotMode::OptedOut {
            return Ok(Decision::Skip(Code::new("opted_out")));
        }
        let state = booking_state(&self.store, &slot.pseudonym, slot.booking_id)?;
        let Some(state) = state else {
            return Ok(Decision::Skip(Code::new("no_booking")));
        };
        if state.canceled {
            return Ok(Decision::Skip(Code::new("canceled")));
        }
        let Some(to) = address(&customer) else {
            return Ok(Decision::Skip(Code::new("no_contact")));
        };
        let name = first_name(&customer);
        let template = |name: &str, params: Vec<String>, buttons: Vec<String>| OutboxEntry {
            to: to.clone(),
            kind: OutboundKind::Template {
                name: name.to_string(),
                language: self.language.clone(),
                params,
                buttons,
            },
            created: now,
            history: Vec::new(),
        };
        match slot.kind {
            ScheduledKind::ReminderEarly | ScheduledKind::ReminderLate => {
                if !self.cfg.enabled {
                    return Ok(Decision::Skip(Code::new("disabled")));
                }
                if body.start <= now {
                    return Ok(Decision::Skip(Code::new("past_start")));
                }
                let (day, time) = german_day_and_time(body.start);
                let buttons = TapAction::REMINDER_BUTTONS
                    .iter()
                    .map(|a| a.payload(slot.booking_id))
                    .collect();
                Ok(Decision::Send {
                    kind: Code::new(slot.kind.code()),
                    entry: template(&self.cfg.template, vec![name, day, time], buttons),
                    then: None,
                })
            }
            ScheduledKind::AfterTrial | ScheduledKind::SignUpQuestion => {
                self.follow_up(slot, &customer, &state, now, |n, p, b| template(n, p, b))
            }
        }
    }

    fn follow_up(
        &self,
        slot: Slot,
        customer: &Customer,
        state: &BookingState,
        now: Timestamp,
        template: impl Fn(&str, Vec<String>, Vec<String>) -> OutboxEntry,
    ) -> anyhow::Result<Decision> {
        if !self.cfg.follow_ups {
            return Ok(Decision::Skip(Code::new("disabled")));
        }
        if !customer.meta.mode.answers() {
            return Ok(Decision::Skip(Code::new("not_answered")));
        }
        let name = first_name(customer);
        Ok(match (slot.kind, state.checked_in_at) {
            (ScheduledKind::SignUpQuestion, _) => Decision::Send {
                kind: Code::new("sign_up_question"),
                entry: template(&self.cfg.sign_up_template, vec![name], Vec::new()),
                then: None,
            },
            (_, Some(_)) => Decision::Send {
                kind: Code::new("thank_you"),
                entry: template(&self.cfg.thank_you_template, vec![name], Vec::new()),
                then: self.plan.as_ref().map(|plan| Slot {
                    due: plan.sign_up_due(now),
                    kind: ScheduledKind::SignUpQuestion,
                    ..slot
                }),
            },
            (_, None) => Decision::Send {
                kind: Code::new("no_show"),
                entry: template(
                    &self.cfg.no_show_template,
                    vec![name],
                    vec![TapAction::Reschedule.payload(slot.booking_id)],
                ),
                then: None,
            },
        })
    }
}

/// Where the contact is answered: the phone number, else the WhatsApp user id.
fn address(c: &Customer) -> Option<String> {
    if c.body.phone.is_empty() {
        c.body.user_id.clone()
    } else {
        Some(c.body.phone.clone())
    }
}

fn first_name(c: &Customer) -> String {
    c.body
        .profile
        .vorname
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .unwrap_or(NO_NAME)
        .to_string()
}
