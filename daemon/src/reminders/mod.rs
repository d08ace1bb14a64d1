//! Messages on a clock around a booked trial: reminders before it (by default 24 and 2 hours
//! before, as approved utility templates with quick-reply buttons to confirm, reschedule or
//! cancel) and follow-ups after it (a thank-you and, the next day, the question whether they
//! want to sign up when the person checked in; one friendly no-show follow-up offering a new slot
//! when not).
//!
//! - [`plan`]: when each message is due (offsets, quiet hours), and the scheduling of a booking's
//!   messages in the batch that records the booking (called by the MagicLine booker);
//! - [`worker`]: the tick that takes due messages from the store's schedule
//!   ([`crate::store::schedule`]) into the outbox, each in one durable write that retires its
//!   schedule row, after checking at send time that the contact is not forgotten, opted out or
//!   cancelled;
//!
//! The buttons' payloads are [`crate::turn::tap`]: the engine reads them back when the contact
//! taps one.

pub mod plan;
pub mod worker;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub use plan::Plan;

/// The time the scheduler and the booker read (the system clock; settable in tests).
pub type Clock = std::sync::Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// `[reminders]`: reminders before a booked trial and follow-ups after it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemindersConfig {
    /// Send reminders before booked trials.
    pub enabled: bool,
    /// How many hours before the trial each reminder goes out (at most two, earliest first).
    pub before_hours: Vec<u32>,
    /// The approved utility template of the reminders. Body: first name, day, time; quick-reply
    /// buttons in this order: confirm, reschedule, cancel.
    pub template: String,
    /// Language of all templates here; empty: `whatsapp.template_language`.
    pub template_language: String,
    /// Start of the quiet hours (studio time, `HH:MM`): nothing is sent from here …
    pub quiet_hours_start: String,
    /// … until here. A reminder that would fall inside is sent earlier, a follow-up later.
    pub quiet_hours_end: String,
    /// Send the follow-ups after the trial.
    pub follow_ups: bool,
    /// Minutes after the end of the trial slot at which the follow-up goes out (time for the
    /// check-in to reach frontdesk).
    pub follow_up_after_minutes: u32,
    /// Hours after the thank-you at which the sign-up question goes out.
    pub sign_up_after_hours: u32,
    /// Template thanking a person who came. Body: first name.
    pub thank_you_template: String,
    /// Template asking whether they want to become a member. Body: first name.
    pub sign_up_template: String,
    /// Template to a person who missed the trial. Body: first name; one quick-reply button:
    /// a new slot.
    pub no_show_template: String,
}

impl Default for RemindersConfig {
    fn default() -> Self {
        RemindersConfig {
            enabled: true,
            before_hours: vec![24, 2],
            template: "probetraining_erinnerung".into(),
            template_language: String::new(),
            quiet_hours_start: "21:00".into(),
            quiet_hours_end: "08:00".into(),
            follow_ups: true,
            follow_up_after_minutes: 60,
            sign_up_after_hours: 24,
            thank_you_template: "probetraining_danke".into(),
            sign_up_template: "probetraining_mitgliedschaft".into(),
            no_show_template: "probetraining_verpasst".into(),
        }
    }
}

impl RemindersConfig {
    /// Checks the section; the error names the key (without `reminders.`) and what is wrong.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.before_hours.len() > 2 {
            return Err(("before_hours", "at most two reminders".into()));
        }
        if self.before_hours.iter().any(|h| *h == 0 || *h > 24 * 14) {
            return Err(("before_hours", "each between 1 and 336 hours".into()));
        }
        if self.before_hours.windows(2).any(|w| w[0] <= w[1]) {
            return Err(("before_hours", "earliest first: [24, 2]".into()));
        }
        plan::parse_time(&self.quiet_hours_start)
            .ok_or(("quiet_hours_start", "must be HH:MM".to_string()))?;
        plan::parse_time(&self.quiet_hours_end)
            .ok_or(("quiet_hours_end", "must be HH:MM".to_string()))?;
        for (key, name, needed) in [
            ("template", &self.template, self.enabled),
            (
                "thank_you_template",
                &self.thank_you_template,
                self.follow_ups,
            ),
            ("sign_up_template", &self.sign_up_template, self.follow_ups),
            ("no_show_template", &self.no_show_template, self.follow_ups),
        ] {
            if needed && name.trim().is_empty() {
                return Err((key, "must name an approved template".into()));
            }
        }
        Ok(())
    }
}

/// What a scheduled message carries, sealed in its schedule row.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScheduledBody {
    /// Start of the booked slot.
    pub start: Timestamp,
    /// Its end.
    pub end: Timestamp,
}
