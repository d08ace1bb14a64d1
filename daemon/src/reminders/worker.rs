//! The scheduler's tick: every scheduled message that is due leaves the store's schedule in a
//! durable write that puts its template into the outbox (the sender then sends it like any
//! reply) and appends its `reminder.sent` entry — or, when it must not go out, retires it with a
//! `reminder.skipped` entry. Up to [`WRITE_BATCH`] due messages share one write. A crash
//! before that write repeats it whole; after it, nothing of it is repeated: each message is sent
//! once, across restarts and kills (up to the sender's one documented window).
//!
//! At send time, under the customer's lock, the row is read again (a cancellation or a forget
//! may have removed it since) and the contact and booking are checked: nothing goes to a
//! forgotten contact (their key is gone, the row cannot even be opened), to one who opted out,
//! or about a booking cancelled meanwhile. Nothing goes to a contact staff took over or an admin
//! paused either: an automatic message with buttons would speak for the assistant in a
//! conversation a person now holds (staff see the booking on the console's trials page).
//! The follow-up after the trial is decided here: a thank-you (and, a day later, the sign-up
//! question) when the booking has a check-in, one no-show message offering a new slot when not.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::Notify;
use tracing::{error, info};

use super::plan::german_day_and_time;
use super::{Clock, Plan, RemindersConfig, ScheduledBody};
use crate::audit::{Actor, AuditEvent, AuditLog, Code, NewEntry};
use crate::conversation::prompts::FollowUp;
use crate::magicline::booking::{booking_state, BookingState};
use crate::store::crypto::Pseudonym;
use crate::store::customers::{BotMode, Customer};
use crate::store::messages::{Direction, Message};
use crate::store::schedule::{Due, ScheduledKind, Slot};
use crate::store::Store;
use crate::turn::tap::TapAction;
use crate::whatsapp::queue::{OutboundKind, OutboxEntry, Queues, ReplyButton};

/// How many due rows one read takes; a tick reads until none is left.
const READ_BATCH: usize = 256;
/// Due messages decided and written in one durable write (one fsync, one audit append): a busy
/// minute costs one write, while the customer locks held for it stay few.
const WRITE_BATCH: usize = 64;
/// The longest the timer waits between ticks.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// The first name in a template when the contact never gave one.
const NO_NAME: &str = "du";

/// Where the scheduler reads the follow-up texts it sends as replies inside WhatsApp's
/// 24-hour window (the engine's prompts, replaced on reload).
pub type FollowUpTexts = Arc<dyn Fn() -> Arc<crate::conversation::prompts::Prompts> + Send + Sync>;

/// A follow-up goes as a reply while the contact's last message is at most this old; the hour
/// left of the 24-hour window covers the way through the outbox (a reply that finds the window
/// closed gets the re-open template from the sender).
const REPLY_WINDOW: jiff::SignedDuration = jiff::SignedDuration::from_hours(23);

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
        entry: Box<OutboxEntry>,
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
    texts: Option<FollowUpTexts>,
}

impl Scheduler {
    /// Follow-ups inside the 24-hour window go as replies with these texts (`replies.toml`'s
    /// `nachfass_*`) instead of templates, which WhatsApp charges for.
    pub fn set_follow_up_texts(&mut self, texts: FollowUpTexts) {
        self.texts = Some(texts);
    }

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
            texts: None,
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
            for chunk in due.chunks(WRITE_BATCH) {
                let done = self.handle(chunk, now)?;
                report.sent += done.sent;
                report.skipped += done.skipped;
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

    /// Decides the due messages `due` under their customers' locks and writes them in one
    /// durable batch with their audit entries. A row gone meanwhile (a cancellation, a forget)
    /// is passed over.
    fn handle(&self, due: &[Due], now: Timestamp) -> anyhow::Result<TickReport> {
        let ps: Vec<Pseudonym> = due.iter().map(|d| d.slot.pseudonym).collect();
        let _guards = self.store.lock_customers(&ps);
        let mut batch = self.store.batch();
        let mut entries = Vec::new();
        // Customers whose history grows in this batch, written once at the end: two messages
        // of one contact in a batch must not take the same history row.
        let mut touched: HashMap<Pseudonym, Customer> = HashMap::new();
        let mut report = TickReport::default();
        for d in due {
            if !self.store.still_scheduled(d)? {
                continue;
            }
            let p = d.slot.pseudonym;
            let decision = self.decide(d, now)?;
            self.store.unschedule(&mut batch, &d.slot);
            let booking_id = u64::try_from(d.slot.booking_id).unwrap_or_default();
            let event = match decision {
                Decision::Send {
                    kind,
                    mut entry,
                    then,
                } => {
                    self.record_in_history(&mut touched, &p, &mut entry, now, &mut batch)?;
                    self.queues
                        .push_outbox(&self.store, &mut batch, &p, &entry)?;
                    if let (Some(slot), Some(plain)) = (then, &d.plain) {
                        self.store.schedule(&mut batch, &slot, plain)?;
                    }
                    report.sent += 1;
                    AuditEvent::ReminderSent { kind, booking_id }
                }
                Decision::Skip(reason) => {
                    info!(customer = %p, kind = d.slot.kind.code(), reason = reason.as_str(), "scheduled message not sent");
                    report.skipped += 1;
                    AuditEvent::ReminderSkipped {
                        kind: Code::new(d.slot.kind.code()),
                        reason,
                    }
                }
            };
            entries.push(NewEntry::new(Actor::System, event).about(&p));
        }
        if entries.is_empty() {
            return Ok(report);
        }
        for customer in touched.values() {
            self.store.put_customer(customer, &mut batch)?;
        }
        match &self.audit {
            Some(log) => {
                log.append_many_with(batch, entries)?;
            }
            None => self.store.commit_durable(batch)?,
        }
        Ok(report)
    }

    /// Adds the message to the contact's history in the write that queues it, so the model
    /// and staff see what the contact was sent, and the sender records WhatsApp's id on it (a
    /// quote of the reminder then reads back).
    fn record_in_history(
        &self,
        touched: &mut HashMap<Pseudonym, Customer>,
        p: &Pseudonym,
        entry: &mut OutboxEntry,
        now: Timestamp,
        batch: &mut fjall::OwnedWriteBatch,
    ) -> anyhow::Result<()> {
        let customer = match touched.entry(*p) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => match self.store.customer(p)? {
                Some(c) => v.insert(c),
                None => return Ok(()),
            },
        };
        let msg = Message {
            direction: Direction::Outbound,
            text: entry.kind.history_text(),
            at: now,
            wamid: None,
        };
        let seq = self.store.append_message(customer, &msg, batch)?;
        entry.history.push(seq);
        Ok(())
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
        match customer.meta.mode {
            BotMode::Active => {}
            BotMode::OptedOut => return Ok(Decision::Skip(Code::new("opted_out"))),
            BotMode::Escalated => return Ok(Decision::Skip(Code::new("handed_over"))),
            BotMode::Paused => return Ok(Decision::Skip(Code::new("paused"))),
        }
        let state = booking_state(&self.store, &slot.pseudonym, slot.booking_id)?;
        let Some(state) = state else {
            return Ok(Decision::Skip(Code::new("no_booking")));
        };
        if state.canceled {
            return Ok(Decision::Skip(Code::new("canceled")));
        }
        let Some(to) = customer.address().map(str::to_string) else {
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
                    entry: Box::new(template(&self.cfg.template, vec![name, day, time], buttons)),
                    then: None,
                })
            }
            ScheduledKind::AfterTrial | ScheduledKind::SignUpQuestion => {
                self.follow_up(slot, &customer, &state, now, template)
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
        let which = match (slot.kind, state.checked_in_at) {
            (ScheduledKind::SignUpQuestion, _) => FollowUp::SignUp,
            (_, Some(_)) => FollowUp::Thanks,
            (_, None) => FollowUp::Missed,
        };
        let (code, template_name, buttons) = match which {
            FollowUp::SignUp => ("sign_up_question", &self.cfg.sign_up_template, Vec::new()),
            FollowUp::Thanks => ("thank_you", &self.cfg.thank_you_template, Vec::new()),
            FollowUp::Missed => (
                "no_show",
                &self.cfg.no_show_template,
                vec![TapAction::Reschedule.payload(slot.booking_id)],
            ),
        };
        let mut entry = template(template_name, vec![first_name(customer)], buttons);
        if let Some(reply) = self.as_reply(customer, which, slot.booking_id, now) {
            entry.kind = reply;
        }
        // The sign-up question follows the thank-you.
        let then = match which {
            FollowUp::Thanks => self.plan.as_ref().map(|plan| Slot {
                due: plan.sign_up_due(now),
                kind: ScheduledKind::SignUpQuestion,
                ..slot
            }),
            FollowUp::SignUp | FollowUp::Missed => None,
        };
        Ok(Decision::Send {
            kind: Code::new(code),
            entry: Box::new(entry),
            then,
        })
    }

    /// The follow-up as a reply, when the contact wrote within [`REPLY_WINDOW`] and the texts
    /// are known; `None`: the template goes. The missed-trial message keeps its "new date"
    /// button as a reply button.
    fn as_reply(
        &self,
        customer: &Customer,
        which: FollowUp,
        booking_id: i64,
        now: Timestamp,
    ) -> Option<OutboundKind> {
        let texts = self.texts.as_ref()?;
        let last = customer.meta.last_inbound?;
        if now.duration_since(last) > REPLY_WINDOW {
            return None;
        }
        let name = customer
            .body
            .profile
            .vorname
            .as_deref()
            .unwrap_or("")
            .trim();
        let prompts = texts();
        let body = prompts.replies().follow_up(which, name);
        Some(match which {
            FollowUp::Missed => OutboundKind::Buttons {
                body,
                buttons: vec![ReplyButton {
                    id: TapAction::Reschedule.payload(booking_id),
                    title: prompts.replies().follow_up_button(),
                }],
            },
            FollowUp::Thanks | FollowUp::SignUp => OutboundKind::Text(body),
        })
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};

    use super::*;
    use crate::audit::AuditFilter;
    use crate::conversation::booking::{Booker, BookingOutcome};
    use crate::magicline::booking::tests::{at, monday_nine, request, sim_cfg, Harness};
    use crate::magicline::booking::MagicLineBooker;
    use crate::store::crypto::Pseudonym;

    struct Setup {
        h: Harness,
        booker: MagicLineBooker,
        queues: Arc<Queues>,
        audit: Arc<AuditLog>,
        clock: Arc<AtomicI64>,
        scheduler: Scheduler,
    }

    fn setup(cfg: RemindersConfig) -> Setup {
        let h = Harness::new(sim_cfg());
        let booker = h.reminding_booker(Plan::from_config(&cfg).unwrap());
        let store = h.store().clone();
        let queues = Arc::new(Queues::new(&store).unwrap());
        let audit = Arc::new(AuditLog::open(store.clone()).unwrap().without_journal());
        let clock = Arc::new(AtomicI64::new(monday_nine().as_second()));
        let c = clock.clone();
        let scheduler = Scheduler::new(
            store,
            queues.clone(),
            Some(audit.clone()),
            cfg,
            "de",
            Arc::new(move || Timestamp::from_second(c.load(Ordering::SeqCst)).unwrap()),
            Arc::new(Notify::new()),
        );
        Setup {
            h,
            booker,
            queues,
            audit,
            clock,
            scheduler,
        }
    }

    impl Setup {
        /// Erika (or whoever `phone` is) books a trial at `start`.
        fn book(&self, phone: &str, start: jiff::Zoned) -> (Pseudonym, i64) {
            let p = self
                .h
                .store()
                .update_customer(phone, monday_nine(), |c, _, _| {
                    c.body.profile.vorname = Some("Erika".into());
                    Ok(())
                })
                .unwrap()
                .0
                .pseudonym;
            let mail = format!("{phone}@example.org");
            let req = request(&format!("r-{phone}"), p, &mail, None, start);
            match self.booker.book_trial(&req) {
                BookingOutcome::Booked { booking_id, .. } => (p, booking_id),
                other => panic!("not booked: {other:?}"),
            }
        }

        fn set_clock(&self, t: Timestamp) {
            self.clock.store(t.as_second(), Ordering::SeqCst);
        }

        fn tick(&self) -> TickReport {
            self.scheduler.tick().unwrap()
        }

        /// Every template in the outbox as (recipient, name, params, buttons), in order.
        fn outbox(&self) -> Vec<(String, String, Vec<String>, Vec<String>)> {
            self.queues
                .outbox(self.h.store())
                .unwrap()
                .into_iter()
                .map(|row| match row.entry.kind {
                    OutboundKind::Template {
                        name,
                        params,
                        buttons,
                        ..
                    } => (row.entry.to, name, params, buttons),
                    OutboundKind::Text(_) | OutboundKind::Buttons { .. } => {
                        panic!("only templates are expected here")
                    }
                })
                .collect()
        }

        fn audited(&self, action: &str) -> Vec<crate::audit::AuditRecord> {
            self.audit
                .query(&AuditFilter {
                    action: Some(action.into()),
                    ..AuditFilter::default()
                })
                .unwrap()
        }
    }

    #[test]
    fn each_reminder_goes_out_once_when_due_with_its_buttons() {
        let s = setup(RemindersConfig::default());
        let (p, id) = s.book("4915100000301", at(2, 18, 0));
        assert_eq!(s.h.store().scheduled_of(&p).unwrap().len(), 3);
        assert_eq!(s.tick(), TickReport::default(), "nothing is due yet");

        s.set_clock(at(1, 18, 0).timestamp());
        assert_eq!(s.tick().sent, 1);
        assert_eq!(
            s.tick(),
            TickReport::default(),
            "sent once, retired with it"
        );
        let buttons: Vec<String> = TapAction::REMINDER_BUTTONS
            .iter()
            .map(|a| a.payload(id))
            .collect();
        assert_eq!(
            s.outbox(),
            vec![(
                "4915100000301".to_string(),
                "probetraining_erinnerung".to_string(),
                vec!["Erika".into(), "Mittwoch, 5. Juni".into(), "18:00".into()],
                buttons.clone(),
            )]
        );

        // The reminder is in the contact's history, and its outbox row points at that row.
        let history = s.h.store().recent_messages(&p, 5).unwrap();
        let last = history.last().unwrap();
        assert_eq!(last.direction, Direction::Outbound);
        assert_eq!(
            last.text,
            "[Vorlage „probetraining_erinnerung“: Erika · Mittwoch, 5. Juni · 18:00]"
        );
        let rows = s.queues.outbox(s.h.store()).unwrap();
        assert_eq!(rows[0].entry.history.len(), 1);

        s.set_clock(at(2, 16, 30).timestamp());
        assert_eq!(s.tick().sent, 1);
        assert_eq!(s.tick().sent, 0);
        assert_eq!(s.h.store().recent_messages(&p, 5).unwrap().len(), 2);
        let out = s.outbox();
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].3, buttons);
        let sent = s.audited("reminder.sent");
        assert_eq!(sent.len(), 2);
        assert!(s.audited("reminder.skipped").is_empty());
        // The follow-up is all that is left.
        let left = s.h.store().scheduled_of(&p).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].kind, ScheduledKind::AfterTrial);
    }

    #[test]
    fn a_contact_who_wrote_within_a_day_gets_the_follow_up_as_a_reply_others_the_template() {
        let mut s = setup(RemindersConfig {
            enabled: false,
            ..RemindersConfig::default()
        });
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../prompts");
        let prompts = Arc::new(
            crate::conversation::prompts::Prompts::load_from(
                &dir,
                None,
                &crate::config::StudioConfig::default(),
            )
            .unwrap(),
        );
        s.scheduler
            .set_follow_up_texts(Arc::new(move || prompts.clone()));
        let (came, came_id) = s.book("4915100000331", at(1, 17, 0));
        let (_, missed_id) = s.book("4915100000332", at(1, 18, 0));
        let (wrote, wrote_id) = s.book("4915100000333", at(1, 18, 30));
        s.booker
            .set_checked_in_for_test(&came, came_id, at(1, 16, 55).timestamp())
            .unwrap();
        // Two wrote at noon; the one in between never wrote within the day.
        for p in [came, wrote] {
            s.h.store()
                .update_existing(&p, |c, _, _| {
                    c.meta.last_inbound = Some(at(1, 12, 0).timestamp());
                    Ok(())
                })
                .unwrap();
        }
        s.set_clock(at(1, 20, 0).timestamp());
        assert_eq!(s.tick().sent, 3);
        let rows = s.queues.outbox(s.h.store()).unwrap();
        let of = |to: &str| {
            rows.iter()
                .find(|r| r.entry.to == to)
                .map(|r| r.entry.kind.clone())
                .unwrap()
        };
        match of("4915100000331") {
            OutboundKind::Text(t) => {
                assert!(
                    t.starts_with("Danke, dass du heute beim Probetraining warst, Erika!"),
                    "{t}"
                );
            }
            other => panic!("expected a reply, got {other:?}"),
        }
        match of("4915100000332") {
            OutboundKind::Template { name, buttons, .. } => {
                assert_eq!(name, "probetraining_verpasst");
                assert_eq!(buttons, vec![TapAction::Reschedule.payload(missed_id)]);
            }
            other => panic!("expected the template, got {other:?}"),
        }
        // A missed trial's reply keeps its button, as a reply button.
        assert_eq!(
            of("4915100000333"),
            OutboundKind::Buttons {
                body: "Schade, dass es mit dem Probetraining nicht geklappt hat, Erika. Magst du \
                       einen neuen Termin? Nenn mir einfach einen Tag und eine Uhrzeit. 💪"
                    .into(),
                buttons: vec![ReplyButton {
                    id: TapAction::Reschedule.payload(wrote_id),
                    title: "Neuer Termin".into(),
                }],
            }
        );
        // The sign-up question a day later: the window has closed by then, so the template.
        s.set_clock(at(2, 20, 0).timestamp());
        assert_eq!(s.tick().sent, 1);
        let rows = s.queues.outbox(s.h.store()).unwrap();
        assert!(matches!(
            &rows.last().unwrap().entry.kind,
            OutboundKind::Template { name, .. } if name == "probetraining_mitgliedschaft"
        ));
    }

    #[test]
    fn a_catch_up_tick_writes_both_reminders_of_one_contact_into_separate_history_rows() {
        let s = setup(RemindersConfig::default());
        let (p, _) = s.book("4915100000305", at(2, 18, 0));
        let (q, _) = s.book("4915100000306", at(2, 18, 30));
        // A stop over both reminder times: one tick finds all four due, in one write.
        s.set_clock(at(2, 16, 45).timestamp());
        assert_eq!(
            s.tick(),
            TickReport {
                sent: 4,
                skipped: 0
            }
        );
        for who in [p, q] {
            let history = s.h.store().recent_messages(&who, 5).unwrap();
            assert_eq!(history.len(), 2, "one row per reminder");
        }
        let rows = s.queues.outbox(s.h.store()).unwrap();
        let mut ids: Vec<u64> = rows.iter().flat_map(|r| r.entry.history.clone()).collect();
        assert_eq!(ids.len(), 4);
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 2, "each contact's rows 0 and 1: {ids:?}");
        assert_eq!(s.audited("reminder.sent").len(), 4);
        assert_eq!(s.tick(), TickReport::default());
    }

    #[test]
    fn nothing_goes_to_an_opted_out_held_cancelled_or_forgotten_contact() {
        let s = setup(RemindersConfig::default());
        let (opted_out, _) = s.book("4915100000311", at(2, 18, 0));
        let (cancelled, cancelled_id) = s.book("4915100000312", at(2, 18, 30));
        let (forgotten, _) = s.book("4915100000313", at(2, 19, 0));
        let (kept, _) = s.book("4915100000314", at(2, 19, 30));
        let (handed_over, _) = s.book("4915100000315", at(2, 17, 0));
        let (paused, _) = s.book("4915100000316", at(2, 17, 30));
        for (p, mode) in [
            (opted_out, BotMode::OptedOut),
            (handed_over, BotMode::Escalated),
            (paused, BotMode::Paused),
        ] {
            s.h.store()
                .update_existing(&p, |c, _, _| {
                    c.meta.mode = mode;
                    Ok(())
                })
                .unwrap();
        }
        s.booker.cancel(&cancelled, cancelled_id).unwrap();
        assert!(
            s.h.store().scheduled_of(&cancelled).unwrap().is_empty(),
            "a cancellation removes its messages in the write that records it"
        );
        s.h.store().forget(&[forgotten], Timestamp::now()).unwrap();
        assert!(s.h.store().scheduled_of(&forgotten).unwrap().is_empty());

        // Past every 24-hour reminder.
        s.set_clock(at(1, 20, 0).timestamp());
        let report = s.tick();
        let out = s.outbox();
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].0, "4915100000314");
        assert_eq!((report.sent, report.skipped), (1, 3));
        let mut skipped: Vec<(Option<String>, Option<crate::audit::Detail>)> = s
            .audited("reminder.skipped")
            .into_iter()
            .map(|e| {
                (
                    e.subject.as_ref().map(ToString::to_string),
                    e.details.get("reason").cloned(),
                )
            })
            .collect();
        skipped.sort_by_key(|(who, _)| who.clone());
        let mut expected: Vec<(Option<String>, Option<crate::audit::Detail>)> = [
            (opted_out, "opted_out"),
            (handed_over, "handed_over"),
            (paused, "paused"),
        ]
        .into_iter()
        .map(|(p, why)| {
            (
                Some(p.short()),
                Some(crate::audit::Detail::Code(why.into())),
            )
        })
        .collect();
        expected.sort_by_key(|(who, _)| who.clone());
        assert_eq!(skipped, expected);
        assert_eq!(s.tick(), TickReport::default());
        assert_eq!(s.h.store().scheduled_of(&kept).unwrap().len(), 2);
    }

    #[test]
    fn a_no_show_gets_one_follow_up_and_a_guest_thanks_then_the_sign_up_question() {
        let s = setup(RemindersConfig {
            enabled: false,
            ..RemindersConfig::default()
        });
        let (_, missed_id) = s.book("4915100000321", at(1, 18, 0));
        let (came, came_id) = s.book("4915100000322", at(1, 17, 0));
        s.booker
            .set_checked_in_for_test(&came, came_id, at(1, 16, 55).timestamp())
            .unwrap();

        // The follow-ups are due an hour after the slots' ends (no later than 19:00).
        s.set_clock(at(1, 18, 0).timestamp());
        assert_eq!(s.tick(), TickReport::default());
        s.set_clock(at(1, 20, 0).timestamp());
        assert_eq!(s.tick().sent, 2);
        let out = s.outbox();
        let of = |to: &str| -> Vec<(String, Vec<String>)> {
            out.iter()
                .filter(|(r, ..)| r == to)
                .map(|(_, name, _, buttons)| (name.clone(), buttons.clone()))
                .collect()
        };
        assert_eq!(
            of("4915100000321"),
            vec![(
                "probetraining_verpasst".to_string(),
                vec![TapAction::Reschedule.payload(missed_id)]
            )]
        );
        assert_eq!(
            of("4915100000322"),
            vec![("probetraining_danke".to_string(), vec![])]
        );
        assert_eq!(s.tick(), TickReport::default());

        // The next day: the sign-up question, to the guest only, once.
        s.set_clock(at(2, 20, 0).timestamp());
        assert_eq!(s.tick().sent, 1);
        s.set_clock(at(9, 20, 0).timestamp());
        assert_eq!(s.tick(), TickReport::default());
        let out = s.outbox();
        assert_eq!(out.len(), 3);
        assert_eq!(out[2].0, "4915100000322");
        assert_eq!(out[2].1, "probetraining_mitgliedschaft");
        let kinds: Vec<String> = s
            .audited("reminder.sent")
            .iter()
            .filter_map(|r| match r.details.get("kind") {
                Some(crate::audit::Detail::Code(k)) => Some(k.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(kinds.len(), 3);
        for kind in ["no_show", "thank_you", "sign_up_question"] {
            assert_eq!(kinds.iter().filter(|k| *k == kind).count(), 1, "{kind}");
        }
    }
}
