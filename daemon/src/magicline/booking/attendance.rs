//! What happens to a booked trial on MagicLine's side: staff cancel or move it at the desk,
//! the person checks in at the studio, or the slot passes without them.
//!
//! MagicLine tells frontdesk by webhook (`magicline::events`) or, for studios without
//! webhooks, frontdesk asks (the poll in [`MagicLineBooker::sweep_attendance`]). Either way the
//! current state is read from the Open API (`GET /appointments/booking/{id}`, for a trial class
//! `GET /classes/booking/{id}`, and the customer's check-ins) and written to the sealed booking
//! record under the person's lock, each change once:
//! `canceled` for a booking cancelled in MagicLine, the new start of a moved one,
//! `checked_in_at` for a check-in from [`CHECK_IN_EARLY`] before the start until
//! `no_show_after` after the end, `no_show` when that time passed without one. Each change is
//! audited (`booking.canceled_in_magicline`, `booking.moved_in_magicline`,
//! `booking.checked_in`, `booking.no_show`) and the attendance is counted in the funnel in the
//! same write (`showed_up`, `no_show`). A change that is already recorded writes nothing, so a
//! redelivered event or a repeated poll changes nothing.
//!
//! The person is found through the MagicLine id indexes of the store
//! ([`crate::store::xref`]), never by opening every customer's rows; a booking or customer
//! frontdesk did not book is none of its business and costs no MagicLine call.

use jiff::{SignedDuration, Timestamp, Zoned};

use super::{BookerError, BookingEvent, BookingStep, MagicLineBooker, Record};
use crate::magicline::client::Error as ApiError;
use crate::stats::{self, FunnelEvent};
use crate::store::crypto::Pseudonym;
use crate::store::xref::External;

/// How long before a trial's start a check-in counts for it (people come early to change).
pub const CHECK_IN_EARLY: SignedDuration = SignedDuration::from_hours(2);
/// A trial whose end MagicLine did not send is taken to last this long.
const DEFAULT_LENGTH: SignedDuration = SignedDuration::from_mins(60);
/// How far back the sweep looks for trials whose attendance is not settled.
const SWEEP_LOOKBACK: SignedDuration = SignedDuration::from_hours(24 * 7);
/// How far ahead the poll reads booked trials.
const POLL_AHEAD: SignedDuration = SignedDuration::from_hours(24 * 14);

/// What [`MagicLineBooker::record_check_in`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckInOutcome {
    /// The check-in was recorded on this booking.
    Recorded {
        /// MagicLine's id of the booking.
        booking_id: i64,
    },
    /// The booking it belongs to already has its check-in.
    AlreadyRecorded,
    /// No booked trial of this customer is near the check-in (an ordinary visit), or the
    /// customer is not one frontdesk booked for.
    NoBooking,
}

/// A booking as frontdesk last recorded it (what follow-ups and reports read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedBooking {
    /// The customer.
    pub pseudonym: Pseudonym,
    /// When the trial starts (moved by staff, if they did).
    pub start: Zoned,
    /// Cancelled, by frontdesk or in MagicLine.
    pub canceled: bool,
    /// When the person checked in for it.
    pub checked_in_at: Option<Timestamp>,
    /// The slot passed without a check-in.
    pub no_show: bool,
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attendance {
    /// Booked trials looked at.
    pub trials: usize,
    /// Bookings found cancelled in MagicLine.
    pub canceled: usize,
    /// Bookings found moved to another time.
    pub moved: usize,
    /// Check-ins recorded.
    pub checked_in: usize,
    /// Trials settled as no-shows.
    pub no_shows: usize,
    /// Trials whose MagicLine reads failed (tried again at the next sweep).
    pub failed: usize,
}

impl Record {
    fn end_or_default(&self) -> Timestamp {
        self.end
            .as_ref()
            .map_or_else(|| self.start.timestamp() + DEFAULT_LENGTH, Zoned::timestamp)
    }

    /// Whether a check-in at `at` is one for this booking.
    fn check_in_window_holds(&self, at: Timestamp, after_end: SignedDuration) -> bool {
        let from = self.start.timestamp() - CHECK_IN_EARLY;
        let to = self.end_or_default() + after_end;
        from <= at && at <= to
    }
}

impl MagicLineBooker {
    fn event(&self, p: &Pseudonym, rec: &Record, step: BookingStep) {
        self.audit.record(BookingEvent {
            pseudonym: *p,
            request_id: rec.request_id.clone(),
            step,
            magicline_customer_id: rec.customer_id,
            booking_id: rec.booking_id,
            reason: None,
        });
    }

    /// Records that staff cancelled booking `booking_id` in MagicLine. Returns whether this
    /// changed the record (false: not a booking frontdesk made, or already recorded).
    pub fn record_canceled_in_magicline(&self, booking_id: i64) -> Result<bool, BookerError> {
        self.record_desk_change(booking_id, BookingStep::CanceledInMagicLine, |rec| {
            if rec.canceled {
                return false;
            }
            rec.canceled = true;
            true
        })
    }

    /// Records that staff moved booking `booking_id` in MagicLine to `start`–`end`. Returns
    /// whether this changed the record.
    pub fn record_moved_in_magicline(
        &self,
        booking_id: i64,
        start: &Zoned,
        end: &Zoned,
    ) -> Result<bool, BookerError> {
        self.record_desk_change(booking_id, BookingStep::MovedInMagicLine, |rec| {
            if rec.canceled || rec.start.timestamp() == start.timestamp() {
                return false;
            }
            rec.start = start.clone();
            rec.end = Some(end.clone());
            // A trial moved to later is open again, whatever the old slot said; its reminders
            // and follow-up are scheduled anew for the new time (in the same write).
            rec.no_show = false;
            rec.scheduled = false;
            true
        })
    }

    /// A change staff made at the desk to booking `booking_id`, under its owner's lock: `change`
    /// edits the record and says whether it changed anything; if so, the record is written
    /// without the trial's place at its old start (the attendance sweep's index) and the step
    /// is audited. Returns whether the record changed.
    fn record_desk_change(
        &self,
        booking_id: i64,
        step: BookingStep,
        change: impl FnOnce(&mut Record) -> bool,
    ) -> Result<bool, BookerError> {
        let Some(p) = self
            .store
            .external_owner(External::MagicLineBooking, booking_id)?
        else {
            return Ok(false);
        };
        let _person = self.person_lock(&p);
        let started = Timestamp::now();
        let Some((key, mut rec)) = self.booking_row(&p, booking_id)? else {
            return Ok(false);
        };
        let old_start = rec.start.timestamp();
        if !change(&mut rec) {
            return Ok(false);
        }
        self.save_with(&p, started, &key, &rec, |batch| {
            self.store.unschedule_trial(batch, old_start, &p);
            Ok(())
        })?;
        self.event(&p, &rec, step);
        tracing::info!(customer = %p, booking_id, step = step.code(), "desk change in MagicLine recorded");
        Ok(true)
    }

    /// Records a check-in of MagicLine customer `customer_id` at `at` on the booked trial it
    /// belongs to (from [`CHECK_IN_EARLY`] before the start until `no_show_after` after the
    /// end), and counts the trial as attended.
    pub fn record_check_in(
        &self,
        customer_id: i64,
        at: Timestamp,
    ) -> Result<CheckInOutcome, BookerError> {
        let Some(p) = self
            .store
            .external_owner(External::MagicLineCustomer, customer_id)?
        else {
            return Ok(CheckInOutcome::NoBooking);
        };
        let _person = self.person_lock(&p);
        let started = Timestamp::now();
        let after_end = self.cfg.no_show_after;
        let rows = self.rows_of(&p)?;
        let mut candidates: Vec<_> = rows
            .into_iter()
            .filter(|(_, r)| {
                r.customer_id == Some(customer_id)
                    && r.booking_id.is_some()
                    && matches!(r.step, super::Step::Booked | super::Step::Confirmed)
                    && !r.canceled
                    && r.check_in_window_holds(at, after_end)
            })
            .collect();
        if candidates.iter().any(|(_, r)| r.checked_in_at.is_some()) {
            return Ok(CheckInOutcome::AlreadyRecorded);
        }
        // The booking whose start is nearest the check-in.
        candidates.sort_by_key(|(_, r)| r.start.timestamp().duration_since(at).abs());
        let Some((key, mut rec)) = candidates.into_iter().next() else {
            return Ok(CheckInOutcome::NoBooking);
        };
        let was_no_show = rec.no_show;
        rec.checked_in_at = Some(at);
        rec.no_show = false;
        let start = rec.start.timestamp();
        self.save_with(&p, started, &key, &rec, |batch| {
            self.store.unschedule_trial(batch, start, &p);
            stats::record(&self.store, batch, FunnelEvent::ShowedUp, at)?;
            if was_no_show {
                // Settled as a no-show before the check-in reached frontdesk: the trial's day
                // loses that no-show in the same write.
                stats::record(&self.store, batch, FunnelEvent::LateCheckIn, start)?;
            }
            Ok(())
        })?;
        self.event(&p, &rec, BookingStep::CheckedIn);
        let booking_id = rec.booking_id.unwrap_or_default();
        tracing::info!(customer = %p, booking_id, "check-in for a booked trial recorded");
        Ok(CheckInOutcome::Recorded { booking_id })
    }

    /// Reads booking `booking_id` from MagicLine and records what staff changed (cancelled,
    /// moved). A booking frontdesk did not make is not read. Returns whether anything changed.
    pub fn refresh_booking(&self, booking_id: i64) -> Result<bool, BookerError> {
        let Some(p) = self
            .store
            .external_owner(External::MagicLineBooking, booking_id)?
        else {
            return Ok(false);
        };
        let class = self
            .booking_row(&p, booking_id)?
            .is_some_and(|(_, r)| r.class_slot_id.is_some());
        if class {
            return self.refresh_class_booking(booking_id);
        }
        let Some(booking) = self.read_known(|| self.client.booking(booking_id))? else {
            return Ok(false);
        };
        if !booking.is_active() {
            return self.record_canceled_in_magicline(booking_id);
        }
        self.record_moved_in_magicline(booking_id, &booking.start_date_time, &booking.end_date_time)
    }

    /// [`Booker::refresh_booking`] for a class booking. It names its date, which staff cannot
    /// move it off; but they can cancel the date or move the date itself, and the booking
    /// then names the same date at another time: the date is read as well.
    fn refresh_class_booking(&self, booking_id: i64) -> Result<bool, BookerError> {
        let Some(booking) = self.read_known(|| self.client.class_booking(booking_id))? else {
            return Ok(false);
        };
        if !booking.is_active() {
            return self.record_canceled_in_magicline(booking_id);
        }
        let Some(class_id) = booking.class_id.or(self.cfg.trial_class_id) else {
            return Ok(false);
        };
        let Some(date) =
            self.read_known(|| self.client.class_slot(class_id, booking.class_slot_id))?
        else {
            return Ok(false);
        };
        self.record_moved_in_magicline(booking_id, &date.start_date_time, &date.end_date_time)
    }

    /// Reads something MagicLine may no longer know: `None` on a 404 (nothing to read, nothing
    /// to record).
    fn read_known<T>(
        &self,
        call: impl FnMut() -> Result<T, ApiError>,
    ) -> Result<Option<T>, BookerError> {
        match self.safe(call) {
            Ok(t) => Ok(Some(t)),
            Err(ApiError::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads the bookings frontdesk made for class date `slot_id` (a `CLASS_SLOT_UPDATED` or
    /// `…_CANCELLED` event: staff moved or cancelled the date) and records what changed.
    /// Returns how many bookings changed.
    pub fn refresh_class_date(&self, slot_id: i64) -> Result<usize, BookerError> {
        let mut changed = 0;
        for p in self.store.class_date_owners(slot_id)? {
            let bookings: Vec<i64> = self
                .rows_of(&p)?
                .into_iter()
                .filter(|(_, r)| r.class_slot_id == Some(slot_id) && !r.canceled)
                .filter_map(|(_, r)| r.booking_id)
                .collect();
            for booking_id in bookings {
                changed += usize::from(self.refresh_class_booking(booking_id)?);
            }
        }
        Ok(changed)
    }

    /// Reads the check-ins of MagicLine customer `customer_id` around `around` (the day
    /// before to the day after) and records those that belong to a booked trial. A customer
    /// frontdesk did not book for is not read. Returns how many were recorded.
    pub fn refresh_check_ins(
        &self,
        customer_id: i64,
        around: Timestamp,
    ) -> Result<usize, BookerError> {
        if self
            .store
            .external_owner(External::MagicLineCustomer, customer_id)?
            .is_none()
        {
            return Ok(0);
        }
        let day = SignedDuration::from_hours(24);
        let from = (around - day).to_zoned(jiff::tz::TimeZone::UTC).date();
        let to = (around + day).to_zoned(jiff::tz::TimeZone::UTC).date();
        let visits = self.safe(|| self.client.checkins(customer_id, from, to))?;
        let mut recorded = 0;
        for at in visits.iter().filter_map(|v| v.check_in_date_time) {
            if matches!(
                self.record_check_in(customer_id, at)?,
                CheckInOutcome::Recorded { .. }
            ) {
                recorded += 1;
            }
        }
        Ok(recorded)
    }

    /// Settles the attendance of booked trials at `now`: a trial whose check-in window has
    /// closed is read once more from MagicLine (cancelled or moved meanwhile? checked in after
    /// all?) and otherwise recorded as a no-show. With `poll` (a studio without MagicLine
    /// webhooks) every booked trial of the coming two weeks is read as well, so staff changes
    /// and check-ins are found without events. MagicLine failures leave a trial for the next
    /// sweep.
    pub fn sweep_attendance(&self, now: Timestamp, poll: bool) -> Result<Attendance, BookerError> {
        let mut seen = Attendance::default();
        let until = if poll { now + POLL_AHEAD } else { now };
        for (start, p) in self.store.trials_between(now - SWEEP_LOOKBACK, until)? {
            seen.trials += 1;
            if let Err(e) = self.sweep_one(&p, start, now, poll, &mut seen) {
                seen.failed += 1;
                tracing::warn!(customer = %p, error = %e, "attendance of a trial not read now");
            }
        }
        Ok(seen)
    }

    fn sweep_one(
        &self,
        p: &Pseudonym,
        start: Timestamp,
        now: Timestamp,
        poll: bool,
        seen: &mut Attendance,
    ) -> Result<(), BookerError> {
        let open: Vec<Record> = self
            .rows_of(p)?
            .into_iter()
            .map(|(_, r)| r)
            .filter(|r| r.awaits_attendance() && r.start.timestamp() == start)
            .collect();
        if open.is_empty() {
            // Cancelled, moved or settled since it was scheduled: the entry goes.
            let _person = self.person_lock(p);
            let _guard = self.store.lock_customer(p);
            let mut batch = self.store.batch();
            self.store.unschedule_trial(&mut batch, start, p);
            self.store.commit_durable(batch)?;
            return Ok(());
        }
        for rec in open {
            let (Some(booking_id), Some(customer_id)) = (rec.booking_id, rec.customer_id) else {
                continue;
            };
            let closes = rec.end_or_default() + self.cfg.no_show_after;
            let settle = now >= closes;
            if !(poll || settle) {
                continue;
            }
            if self.refresh_booking(booking_id)? {
                match self.booking_row(p, booking_id)? {
                    Some((_, r)) if r.canceled => seen.canceled += 1,
                    _ => seen.moved += 1,
                }
                continue;
            }
            if now >= start - CHECK_IN_EARLY {
                seen.checked_in += self.refresh_check_ins(customer_id, start)?;
            }
            if settle && self.record_no_show(p, booking_id)? {
                seen.no_shows += 1;
            }
        }
        Ok(())
    }

    /// Records that booking `booking_id`'s slot passed without a check-in, once.
    fn record_no_show(&self, p: &Pseudonym, booking_id: i64) -> Result<bool, BookerError> {
        let _person = self.person_lock(p);
        let started = Timestamp::now();
        let Some((key, mut rec)) = self.booking_row(p, booking_id)? else {
            return Ok(false);
        };
        if !rec.awaits_attendance() {
            return Ok(false);
        }
        rec.no_show = true;
        let start = rec.start.timestamp();
        self.save_with(p, started, &key, &rec, |batch| {
            self.store.unschedule_trial(batch, start, p);
            stats::record(&self.store, batch, FunnelEvent::NoShow, start)
        })?;
        self.event(p, &rec, BookingStep::NoShow);
        tracing::info!(customer = %p, booking_id, "trial passed without a check-in");
        Ok(true)
    }

    /// Booking `booking_id` as recorded, if frontdesk made it.
    pub fn recorded_booking(
        &self,
        booking_id: i64,
    ) -> Result<Option<RecordedBooking>, BookerError> {
        let Some(p) = self
            .store
            .external_owner(External::MagicLineBooking, booking_id)?
        else {
            return Ok(None);
        };
        Ok(self
            .booking_row(&p, booking_id)?
            .map(|(_, r)| RecordedBooking {
                pseudonym: p,
                start: r.start,
                canceled: r.canceled,
                checked_in_at: r.checked_in_at,
                no_show: r.no_show,
            }))
    }

    /// The row of `p` that holds booking `booking_id`.
    fn booking_row(
        &self,
        p: &Pseudonym,
        booking_id: i64,
    ) -> Result<Option<(Vec<u8>, Record)>, BookerError> {
        Ok(self
            .rows_of(p)?
            .into_iter()
            .find(|(_, r)| r.booking_id == Some(booking_id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::magicline::booking::tests::{at, request, sim_cfg, Harness};
    use crate::magicline::booking::MemoryAudit;
    use crate::sandbox::magicline::SimBookingState;
    use crate::stats::{report, Period, Rates};

    fn booked(h: &Harness, phone: &str, id: &str, start: Zoned) -> (Pseudonym, i64, i64) {
        let p = h.person(phone);
        let req = request(id, p, &format!("{id}@example.org"), None, start);
        match h.booker().book(&req) {
            crate::conversation::booking::BookingOutcome::Booked {
                booking_id,
                magicline_customer_id,
                ..
            } => (p, booking_id, magicline_customer_id),
            other => panic!("expected a booking, got {other:?}"),
        }
    }

    fn steps(audit: &MemoryAudit, step: BookingStep) -> usize {
        audit.events().iter().filter(|e| e.step == step).count()
    }

    fn funnel(h: &Harness) -> crate::stats::FunnelRow {
        report(h.store(), None, Period::Month, &Rates::default())
            .unwrap()
            .total
    }

    #[test]
    fn staff_cancel_move_and_check_in_are_recorded_once() {
        let h = Harness::new(sim_cfg());
        let booker = h.booker();
        let (_, cancel_id, _) = booked(&h, "+49 151 0000101", "r-cancel", at(1, 10, 0));
        let (p, move_id, customer) = booked(&h, "+49 151 0000102", "r-move", at(1, 11, 0));

        // Cancelled at the desk: the booking read from MagicLine says so.
        h.sim().staff_cancel(cancel_id).unwrap();
        assert!(booker.refresh_booking(cancel_id).unwrap());
        assert!(!booker.refresh_booking(cancel_id).unwrap(), "recorded once");
        assert!(!booker.record_canceled_in_magicline(cancel_id).unwrap());
        assert_eq!(steps(&h.audit, BookingStep::CanceledInMagicLine), 1);

        // Moved at the desk to the afternoon.
        h.sim().staff_move(move_id, &at(1, 15, 0)).unwrap();
        assert!(booker.refresh_booking(move_id).unwrap());
        assert!(!booker.refresh_booking(move_id).unwrap());
        let (_, rec) = booker.booking_row(&p, move_id).unwrap().unwrap();
        assert_eq!(rec.start.timestamp(), at(1, 15, 0).timestamp());
        // The trial index follows the move.
        let day = h
            .store()
            .trials_between(at(1, 0, 0).timestamp(), at(2, 0, 0).timestamp())
            .unwrap();
        assert_eq!(day, vec![(at(1, 15, 0).timestamp(), p)]);

        // A visit the morning before is not the trial; one at 14:50 is.
        h.sim().check_in(customer, at(1, 9, 0).timestamp());
        assert_eq!(
            booker
                .refresh_check_ins(customer, at(1, 9, 0).timestamp())
                .unwrap(),
            0
        );
        h.sim().check_in(customer, at(1, 14, 50).timestamp());
        assert_eq!(
            booker
                .refresh_check_ins(customer, at(1, 14, 50).timestamp())
                .unwrap(),
            1
        );
        assert_eq!(
            booker
                .refresh_check_ins(customer, at(1, 14, 50).timestamp())
                .unwrap(),
            0
        );
        let (_, rec) = booker.booking_row(&p, move_id).unwrap().unwrap();
        assert_eq!(rec.checked_in_at, Some(at(1, 14, 50).timestamp()));
        assert_eq!(steps(&h.audit, BookingStep::CheckedIn), 1);
        assert_eq!(funnel(&h).showed_up, 1);

        // Someone frontdesk never booked for costs no MagicLine call.
        let before = h.sim().total_requests();
        assert_eq!(
            booker
                .record_check_in(501, at(1, 10, 0).timestamp())
                .unwrap(),
            CheckInOutcome::NoBooking
        );
        assert_eq!(
            booker
                .refresh_check_ins(501, at(1, 10, 0).timestamp())
                .unwrap(),
            0
        );
        assert!(!booker.refresh_booking(99_999).unwrap());
        assert_eq!(h.sim().total_requests(), before);
    }

    #[test]
    fn a_passed_slot_without_check_in_is_one_no_show_and_a_new_booking_is_rebooked() {
        // Two trials per person, so the one who missed can book again.
        let h = Harness::new(crate::sandbox::magicline::SimConfig {
            trial_contingent: 2,
            ..sim_cfg()
        });
        let booker = h.booker();
        let (p, missed, missed_customer) = booked(&h, "+49 151 0000103", "r-missed", at(1, 10, 0));
        let (_, attended, customer) = booked(&h, "+49 151 0000104", "r-came", at(1, 12, 0));

        // Before the window closes nothing is settled (and without polling nothing is read).
        let before = h.sim().total_requests();
        let early = booker
            .sweep_attendance(at(1, 10, 45).timestamp(), false)
            .unwrap();
        assert_eq!((early.no_shows, early.checked_in), (0, 0));
        assert_eq!(h.sim().total_requests(), before);

        h.sim().check_in(customer, at(1, 11, 55).timestamp());
        let evening = at(1, 20, 0).timestamp();
        let swept = booker.sweep_attendance(evening, false).unwrap();
        assert_eq!((swept.no_shows, swept.checked_in, swept.failed), (1, 1, 0));
        let again = booker.sweep_attendance(evening, false).unwrap();
        assert_eq!(
            (again.trials, again.no_shows),
            (0, 0),
            "settled trials leave the index"
        );
        assert_eq!(steps(&h.audit, BookingStep::NoShow), 1);
        let (_, rec) = booker.booking_row(&p, missed).unwrap().unwrap();
        assert!(rec.no_show && rec.checked_in_at.is_none());
        assert!(booker
            .booking_row(&h.person("+49 151 0000104"), attended)
            .unwrap()
            .unwrap()
            .1
            .checked_in_at
            .is_some());
        let row = funnel(&h);
        assert_eq!((row.showed_up, row.no_show, row.rebooked), (1, 1, 0));

        // The one who missed books again: rebooked.
        let again = request("r-again", p, "r-missed@example.org", None, at(3, 10, 0));
        assert!(matches!(
            booker.book(&again),
            crate::conversation::booking::BookingOutcome::Booked { .. }
        ));
        assert_eq!(funnel(&h).rebooked, 1);

        // The missed trial's check-in arrives late after all (MagicLine was unreachable): it
        // counts as attended and no longer as a no-show, once.
        let late = booker
            .record_check_in(missed_customer, at(1, 10, 5).timestamp())
            .unwrap();
        assert_eq!(late, CheckInOutcome::Recorded { booking_id: missed });
        let row = funnel(&h);
        assert_eq!((row.showed_up, row.no_show), (2, 0));
        assert_eq!(
            booker
                .record_check_in(missed_customer, at(1, 10, 5).timestamp())
                .unwrap(),
            CheckInOutcome::AlreadyRecorded
        );
        assert_eq!(funnel(&h).showed_up, 2);
    }

    #[test]
    fn polling_finds_staff_changes_and_check_ins_without_events() {
        let h = Harness::new(sim_cfg());
        let booker = h.booker();
        let (_, gone, _) = booked(&h, "+49 151 0000105", "r-gone", at(1, 10, 0));
        let (p, came, customer) = booked(&h, "+49 151 0000106", "r-poll", at(2, 10, 0));
        h.sim().staff_cancel(gone).unwrap();
        h.sim().check_in(customer, at(2, 9, 50).timestamp());

        let swept = booker
            .sweep_attendance(at(2, 10, 5).timestamp(), true)
            .unwrap();
        assert_eq!(
            (swept.canceled, swept.checked_in, swept.no_shows),
            (1, 1, 0)
        );
        assert_eq!(
            h.sim()
                .bookings()
                .iter()
                .find(|b| b.id == gone)
                .unwrap()
                .state,
            SimBookingState::Canceled
        );
        let (_, rec) = booker.booking_row(&p, came).unwrap().unwrap();
        assert_eq!(rec.checked_in_at, Some(at(2, 9, 50).timestamp()));
        let twice = booker
            .sweep_attendance(at(2, 10, 6).timestamp(), true)
            .unwrap();
        assert_eq!((twice.canceled, twice.checked_in), (0, 0));
    }
}
