//! When a booking's messages are due: the reminders a set number of hours before the start,
//! moved earlier out of the quiet hours (a reminder is never dropped for falling into them); the
//! follow-up a set time after the end and the sign-up question a day after it, moved later out
//! of the quiet hours. [`Plan::schedule_booking`] adds them to the batch that records the
//! booking, so a booking is never durable without its messages.

use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use super::{RemindersConfig, ScheduledBody};
use crate::store::crypto::Pseudonym;
use crate::store::schedule::{ScheduledKind, Slot};
use crate::store::{Result, Store};

/// The schedule a booking gets (see the module doc). Built from `[reminders]`.
#[derive(Debug, Clone)]
pub struct Plan {
    before: Vec<SignedDuration>,
    quiet: Option<(Time, Time)>,
    follow_up_after: Option<SignedDuration>,
    sign_up_after: SignedDuration,
    tz: TimeZone,
}

/// Reads `HH:MM`.
pub fn parse_time(s: &str) -> Option<Time> {
    let (h, m) = s.trim().split_once(':')?;
    Time::new(h.parse().ok()?, m.parse().ok()?, 0, 0).ok()
}

impl Plan {
    /// The plan of `[reminders]`; `None` when neither reminders nor follow-ups are on.
    pub fn from_config(cfg: &RemindersConfig) -> Option<Plan> {
        if !cfg.enabled && !cfg.follow_ups {
            return None;
        }
        let quiet = match (
            parse_time(&cfg.quiet_hours_start),
            parse_time(&cfg.quiet_hours_end),
        ) {
            (Some(a), Some(b)) if a != b => Some((a, b)),
            _ => None,
        };
        Some(Plan {
            before: if cfg.enabled {
                cfg.before_hours
                    .iter()
                    .map(|h| SignedDuration::from_hours(i64::from(*h)))
                    .collect()
            } else {
                Vec::new()
            },
            quiet,
            follow_up_after: cfg
                .follow_ups
                .then(|| SignedDuration::from_mins(i64::from(cfg.follow_up_after_minutes))),
            sign_up_after: SignedDuration::from_hours(i64::from(cfg.sign_up_after_hours)),
            tz: crate::conversation::when::berlin_tz(),
        })
    }

    /// Whether `t` falls into the quiet hours.
    fn is_quiet(&self, t: Timestamp) -> bool {
        let Some((from, until)) = self.quiet else {
            return false;
        };
        let local = t.to_zoned(self.tz.clone()).time();
        if from < until {
            local >= from && local < until
        } else {
            local >= from || local < until
        }
    }

    /// `t`, or the last minute before the quiet hours that contain it.
    pub fn earlier_out_of_quiet(&self, t: Timestamp) -> Timestamp {
        let Some((from, _)) = self.quiet else {
            return t;
        };
        if !self.is_quiet(t) {
            return t;
        }
        let local = t.to_zoned(self.tz.clone());
        let day = if local.time() >= from {
            local.date()
        } else {
            local.date().yesterday().unwrap_or(local.date())
        };
        self.at(day, from) - SignedDuration::from_mins(1)
    }

    /// `t`, or the end of the quiet hours that contain it.
    pub fn later_out_of_quiet(&self, t: Timestamp) -> Timestamp {
        let Some((from, until)) = self.quiet else {
            return t;
        };
        if !self.is_quiet(t) {
            return t;
        }
        let local = t.to_zoned(self.tz.clone());
        let day = if from > until && local.time() >= from {
            local.date().tomorrow().unwrap_or(local.date())
        } else {
            local.date()
        };
        self.at(day, until)
    }

    fn at(&self, day: Date, time: Time) -> Timestamp {
        day.to_datetime(time)
            .to_zoned(self.tz.clone())
            .map_or_else(|_| Timestamp::UNIX_EPOCH, |z| z.timestamp())
    }

    /// The messages of a booked slot `start..end`, as `(kind, due)`; reminders whose time has
    /// passed at `now` (a booking made at short notice) are left out, and returned second.
    pub fn for_booking(
        &self,
        start: Timestamp,
        end: Timestamp,
        now: Timestamp,
    ) -> (Vec<(ScheduledKind, Timestamp)>, Vec<ScheduledKind>) {
        let mut due = Vec::new();
        let mut too_late = Vec::new();
        let kinds = [ScheduledKind::ReminderEarly, ScheduledKind::ReminderLate];
        let mut previous: Option<Timestamp> = None;
        for (kind, before) in kinds.into_iter().zip(&self.before) {
            let at = self.earlier_out_of_quiet(start - *before);
            // Moved out of the quiet hours onto (or before) the earlier one: one is enough.
            if at <= now || previous.is_some_and(|p| at <= p) {
                too_late.push(kind);
            } else {
                due.push((kind, at));
                previous = Some(at);
            }
        }
        if let Some(after) = self.follow_up_after {
            due.push((
                ScheduledKind::AfterTrial,
                self.later_out_of_quiet(end + after),
            ));
        }
        (due, too_late)
    }

    /// When the sign-up question after a thank-you sent at `sent` is due.
    pub fn sign_up_due(&self, sent: Timestamp) -> Timestamp {
        self.later_out_of_quiet(sent + self.sign_up_after)
    }

    /// Adds the messages of booking `booking_id` of `p` (slot `start..end`) to `batch`, sealed
    /// under `p`'s key (which must exist). Returns the reminders left out as too late.
    pub fn schedule_booking(
        &self,
        store: &Store,
        batch: &mut fjall::OwnedWriteBatch,
        p: &Pseudonym,
        booking_id: i64,
        (start, end): (Timestamp, Timestamp),
        now: Timestamp,
    ) -> Result<Vec<ScheduledKind>> {
        let (due, too_late) = self.for_booking(start, end, now);
        let body =
            serde_json::to_vec(&ScheduledBody { start, end }).expect("scheduled body serialises");
        for (kind, at) in due {
            let slot = Slot {
                due: at,
                pseudonym: *p,
                kind,
                booking_id,
            };
            store.schedule(batch, &slot, &body)?;
        }
        Ok(too_late)
    }
}

/// A slot's day as a German reader expects it (`Dienstag, 3. März`) and its time (`18:00`),
/// in the studio's time zone.
pub fn german_day_and_time(t: Timestamp) -> (String, String) {
    const DAYS: [&str; 7] = [
        "Montag",
        "Dienstag",
        "Mittwoch",
        "Donnerstag",
        "Freitag",
        "Samstag",
        "Sonntag",
    ];
    const MONTHS: [&str; 12] = [
        "Januar",
        "Februar",
        "März",
        "April",
        "Mai",
        "Juni",
        "Juli",
        "August",
        "September",
        "Oktober",
        "November",
        "Dezember",
    ];
    let z = t.to_zoned(crate::conversation::when::berlin_tz());
    let weekday = DAYS[usize::from(z.weekday().to_monday_zero_offset().unsigned_abs())];
    let month = MONTHS[usize::from(z.month().unsigned_abs()) - 1];
    (
        format!("{weekday}, {}. {month}", z.day()),
        format!("{:02}:{:02}", z.hour(), z.minute()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn berlin(s: &str) -> Timestamp {
        jiff::civil::DateTime::strptime("%Y-%m-%d %H:%M", s)
            .unwrap()
            .to_zoned(crate::conversation::when::berlin_tz())
            .unwrap()
            .timestamp()
    }

    fn plan() -> Plan {
        Plan::from_config(&RemindersConfig::default()).unwrap()
    }

    #[test]
    fn reminders_24_and_2_hours_before_and_a_follow_up_after() {
        let (due, late) = plan().for_booking(
            berlin("2026-03-10 18:00"),
            berlin("2026-03-10 19:00"),
            berlin("2026-03-01 12:00"),
        );
        assert!(late.is_empty());
        assert_eq!(
            due,
            vec![
                (ScheduledKind::ReminderEarly, berlin("2026-03-09 18:00")),
                (ScheduledKind::ReminderLate, berlin("2026-03-10 16:00")),
                (ScheduledKind::AfterTrial, berlin("2026-03-10 20:00")),
            ]
        );
    }

    #[test]
    fn a_reminder_in_the_quiet_hours_goes_out_before_them() {
        // 09:00 trial: the 2-hour reminder would be at 07:00, inside 21:00–08:00.
        let (due, late) = plan().for_booking(
            berlin("2026-03-10 09:00"),
            berlin("2026-03-10 10:00"),
            berlin("2026-03-01 12:00"),
        );
        assert!(late.is_empty());
        assert_eq!(
            due[0],
            (ScheduledKind::ReminderEarly, berlin("2026-03-09 09:00"))
        );
        assert_eq!(
            due[1],
            (ScheduledKind::ReminderLate, berlin("2026-03-09 20:59"))
        );
        // 23:30 after a late slot ending 22:30 → the next morning at 08:00.
        let p = plan();
        assert_eq!(
            p.later_out_of_quiet(berlin("2026-03-10 23:30")),
            berlin("2026-03-11 08:00")
        );
        assert_eq!(
            p.later_out_of_quiet(berlin("2026-03-11 06:00")),
            berlin("2026-03-11 08:00")
        );
        assert_eq!(
            p.sign_up_due(berlin("2026-03-10 20:00")),
            berlin("2026-03-11 20:00")
        );
    }

    #[test]
    fn a_booking_at_short_notice_gets_only_the_reminders_still_ahead() {
        let (due, late) = plan().for_booking(
            berlin("2026-03-10 18:00"),
            berlin("2026-03-10 19:00"),
            berlin("2026-03-10 12:00"),
        );
        assert_eq!(late, vec![ScheduledKind::ReminderEarly]);
        assert_eq!(
            due[0],
            (ScheduledKind::ReminderLate, berlin("2026-03-10 16:00"))
        );
    }

    #[test]
    fn settings_switch_parts_off() {
        let cfg = RemindersConfig {
            follow_ups: false,
            before_hours: vec![48],
            ..RemindersConfig::default()
        };
        let (due, _) = Plan::from_config(&cfg).unwrap().for_booking(
            berlin("2026-03-10 18:00"),
            berlin("2026-03-10 19:00"),
            berlin("2026-03-01 12:00"),
        );
        assert_eq!(
            due,
            vec![(ScheduledKind::ReminderEarly, berlin("2026-03-08 18:00"))]
        );
        let off = RemindersConfig {
            enabled: false,
            follow_ups: false,
            ..RemindersConfig::default()
        };
        assert!(Plan::from_config(&off).is_none());
        assert!(RemindersConfig {
            before_hours: vec![2, 24],
            ..RemindersConfig::default()
        }
        .validate()
        .is_err());
    }

    #[test]
    fn days_read_in_german() {
        assert_eq!(
            german_day_and_time(berlin("2026-03-10 18:00")),
            ("Dienstag, 10. März".to_string(), "18:00".to_string())
        );
    }
}
