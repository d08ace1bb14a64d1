//! The validate and book calls of one booking request, whichever of MagicLine's three flows it
//! takes: a lead's trial appointment, a member's appointment, or a lead's trial *class*
//! (`magicline.trial_offer_class_id`), and the class dates a lead can book.
//!
//! A class differs from an appointment in ways the booker must not paper over: its dates are
//! listed full or not (the participant counts say which, and booking opens and closes at times
//! of each date), a booking names the class slot rather than times, a full class with room on
//! its waiting list still validates as available and books onto the waiting list, and class
//! bookings are read and cancelled under `/classes/booking`. A waiting-list place is never
//! reported as a trial: the booker gives it back and offers other dates.

use jiff::Zoned;

use super::{BookerError, MagicLineBooker, Record};
use crate::magicline::api::{
    self, BookingStatus, BookingValidationStatus, ClassBookingRequest, ClassSlot, Slot,
};
use crate::magicline::client::{Client, Error as ApiError};

/// What the trial offer has a lead book.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum OfferTarget {
    /// A bookable appointment type (its id).
    Appointment(i64),
    /// A class (its id).
    Class(i64),
}

/// The body of one request's validate and book calls, with the endpoints it goes to.
pub(super) enum BookCall {
    /// An appointment: the trial-offer endpoints for a lead (`trial`), else the member ones.
    Appointment {
        body: api::BookingRequest,
        trial: bool,
    },
    /// A trial class date, ending at `end`.
    Class {
        body: ClassBookingRequest,
        end: Zoned,
    },
}

/// A booking MagicLine made (or holds from an earlier call), whichever flow.
pub(super) struct Made {
    pub booking_id: i64,
    pub status: BookingStatus,
}

impl From<api::Booking> for Made {
    fn from(b: api::Booking) -> Made {
        Made {
            booking_id: b.booking_id,
            status: b.booking_status,
        }
    }
}

impl From<api::ClassBooking> for Made {
    fn from(b: api::ClassBooking) -> Made {
        Made {
            booking_id: b.booking_id,
            status: b.booking_status,
        }
    }
}

impl BookCall {
    /// When the booked slot ends.
    pub(super) fn end(&self) -> &Zoned {
        match self {
            BookCall::Appointment { body, .. } => &body.end_date_time,
            BookCall::Class { end, .. } => end,
        }
    }

    /// The class slot, for a class booking.
    pub(super) fn class_slot_id(&self) -> Option<i64> {
        match self {
            BookCall::Appointment { .. } => None,
            BookCall::Class { body, .. } => Some(body.class_slot_id),
        }
    }

    pub(super) fn validate(&self, client: &Client) -> Result<BookingValidationStatus, ApiError> {
        match self {
            BookCall::Appointment { body, trial: true } => client.validate_trial_booking(body),
            BookCall::Appointment { body, trial: false } => client.validate_booking(body),
            BookCall::Class { body, .. } => client.validate_trial_class_booking(body),
        }
    }

    pub(super) fn book(&self, client: &Client) -> Result<Made, ApiError> {
        match self {
            BookCall::Appointment { body, trial: true } => client.book_trial(body).map(Made::from),
            BookCall::Appointment { body, trial: false } => client.book(body).map(Made::from),
            BookCall::Class { body, .. } => client.book_trial_class(body).map(Made::from),
        }
    }
}

impl MagicLineBooker {
    /// The class leads book, when the trial offer is a class.
    pub(super) fn trial_class(&self) -> Result<Option<i64>, BookerError> {
        Ok(match self.offer()?.target {
            OfferTarget::Class(id) => Some(id),
            OfferTarget::Appointment(_) => None,
        })
    }

    /// Dates of class `class_id` with a free place, open for booking now, on the `days` days
    /// from `from`, as slots.
    pub(super) fn free_class_slots(
        &self,
        class_id: i64,
        from: jiff::civil::Date,
        days: u32,
    ) -> Result<Vec<Slot>, BookerError> {
        let now = (self.cfg.clock)();
        let until = from
            .checked_add(jiff::Span::new().days(i64::from(days.max(1))))
            .unwrap_or(from);
        let dates = self.safe(|| self.client.trial_class_slots(class_id))?;
        Ok(dates
            .into_iter()
            .filter(|d| d.has_place(now))
            .filter(|d| {
                let day = d.start_date_time.date();
                from <= day && day < until
            })
            .map(|d| Slot {
                start_date_time: d.start_date_time,
                end_date_time: d.end_date_time,
                instructors: d.instructors,
            })
            .collect())
    }

    /// The class date starting at `start`, full or not.
    fn class_date_at(
        &self,
        class_id: i64,
        start: &Zoned,
    ) -> Result<Option<ClassSlot>, BookerError> {
        let dates = self.safe(|| self.client.trial_class_slots(class_id))?;
        Ok(dates
            .into_iter()
            .find(|d| d.start_date_time.timestamp() == start.timestamp()))
    }

    /// The class call for the recorded date; `None` when the date is not offered or has no
    /// place free (a waiting-list place is no trial). With `fresh`, the date's places are read
    /// again even when the record already names the slot.
    pub(super) fn class_call(
        &self,
        rec: &Record,
        customer_id: i64,
        class_id: i64,
        fresh: bool,
    ) -> Result<Option<BookCall>, BookerError> {
        if let (false, Some(slot), Some(end)) = (fresh, rec.class_slot_id, &rec.end) {
            return Ok(Some(BookCall::Class {
                body: ClassBookingRequest {
                    customer_id,
                    class_slot_id: slot,
                },
                end: end.clone(),
            }));
        }
        let Some(date) = self.class_date_at(class_id, &rec.start)? else {
            return Ok(None);
        };
        if !date.has_place((self.cfg.clock)()) {
            return Ok(None);
        }
        Ok(Some(BookCall::Class {
            body: ClassBookingRequest {
                customer_id,
                class_slot_id: date.id,
            },
            end: date.end_date_time,
        }))
    }

    /// The customer's booking of the recorded class date, if MagicLine holds one (a
    /// waiting-list place included, so it can be given back).
    pub(super) fn find_class_booking(
        &self,
        customer_id: i64,
        slot: i64,
    ) -> Result<Option<Made>, BookerError> {
        let bookings = self.safe(|| self.client.class_bookings(customer_id))?;
        Ok(bookings
            .into_iter()
            .find(|b| {
                b.class_slot_id == slot
                    && (b.is_active() || b.booking_status == BookingStatus::WaitingList)
            })
            .map(Made::from))
    }

    /// Gives a waiting-list place back. An error leaves the request at its book step, so the
    /// next try finds the place again (see `find_class_booking`) and gives it back then.
    pub(super) fn leave_waiting_list(&self, booking_id: i64) -> Result<(), BookerError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.client.cancel_class_booking(booking_id) {
                Ok(()) | Err(ApiError::Api { status: 404, .. }) => return Ok(()),
                Err(e) if super::retryable(&e) && attempt < self.cfg.attempts => {
                    self.pause(attempt, &e);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{at, request, sim_cfg, Harness};
    use super::super::{BookerConfig, BookingStep, MagicLineBooker};
    use crate::conversation::booking::{Booker, BookingFailure, BookingOutcome};
    use crate::sandbox::magicline::{Fault, SimBookingState, SimClass, SimConfig};

    const CLASS: i64 = 3001;
    const CLASS_BOOK: &str = "/trial-offers/classes/booking/book";
    const APPOINTMENT_BOOK: &str = "/trial-offers/appointments/booking/book";

    fn class_cfg() -> SimConfig {
        SimConfig {
            trial_classes: vec![SimClass::group_ems()],
            ..sim_cfg()
        }
    }

    fn class_booker(h: &Harness, attempts: u32) -> MagicLineBooker {
        h.booker_configured(
            Duration::from_secs(2),
            attempts,
            BookerConfig {
                trial_class_id: Some(CLASS),
                ..BookerConfig::default()
            },
        )
    }

    fn booked_id(outcome: &BookingOutcome) -> (i64, i64) {
        match outcome {
            BookingOutcome::Booked {
                booking_id,
                magicline_customer_id,
                ..
            } => (*booking_id, *magicline_customer_id),
            other => panic!("expected Booked, got {other:?}"),
        }
    }

    #[test]
    fn a_lead_books_a_class_date_through_the_class_endpoints_and_the_outcome_replays() {
        let h = Harness::new(class_cfg());
        let p = h.person("+49 151 0000301");
        let booker = class_booker(&h, 3);
        // Tuesday 18:00, a date of the class.
        let req = request("c-1", p, "klasse@example.org", None, at(1, 18, 0));
        let outcome = booker.book_trial(&req);
        let (booking_id, lead) = booked_id(&outcome);
        let made = h.sim().bookings_of(lead);
        assert_eq!(made.len(), 1);
        assert_eq!(made[0].id, booking_id);
        assert!(made[0].class_slot_id.is_some() && made[0].trial);
        assert_eq!(made[0].state, SimBookingState::Booked);
        assert_eq!(made[0].appointment_id, CLASS);
        assert_eq!(h.sim().request_count(CLASS_BOOK), 1);
        assert_eq!(h.sim().request_count(APPOINTMENT_BOOK), 0);
        // A repeated request replays the outcome without a second book call.
        assert_eq!(booker.book_trial(&req), outcome);
        assert_eq!(h.sim().request_count(CLASS_BOOK), 1);
        // The lead's free dates are the class's dates, its own booked one no longer among them.
        let free = booker.free_slots(&p, &at(1, 8, 0), 10);
        assert!(!free.is_empty());
        assert!(free
            .iter()
            .all(|z| z.time().minute() == 0 && [18, 19, 10].contains(&z.time().hour())));
    }

    #[test]
    fn a_full_date_is_taken_before_any_lead_exists_and_dates_with_a_place_are_offered() {
        let h = Harness::new(class_cfg());
        h.sim().occupy_class(CLASS, &at(1, 18, 0));
        let p = h.person("+49 151 0000302");
        let booker = class_booker(&h, 3);
        let outcome = booker.book_trial(&request("c-2", p, "voll@example.org", None, at(1, 18, 0)));
        let BookingOutcome::SlotTaken { alternatives } = outcome else {
            panic!("expected SlotTaken, got {outcome:?}");
        };
        let offered: Vec<i64> = alternatives
            .iter()
            .map(|z| z.timestamp().as_second())
            .collect();
        assert!(
            offered.contains(&at(1, 19, 0).timestamp().as_second()),
            "{alternatives:?}"
        );
        assert!(!offered.contains(&at(1, 18, 0).timestamp().as_second()));
        assert!(
            h.sim().leads().is_empty(),
            "no lead for a date that cannot be booked"
        );
        // Dates whose booking window has not opened (more than a week ahead) are not offered.
        let free = booker.free_slots(&p, &at(0, 9, 0), 20);
        let week = jiff::SignedDuration::from_hours(24 * 7);
        assert!(free
            .iter()
            .all(|z| z.timestamp() <= at(0, 9, 0).timestamp() + week));
        assert!(free
            .iter()
            .all(|z| z.timestamp() != at(1, 18, 0).timestamp()));
    }

    #[test]
    fn a_waiting_list_place_is_given_back_and_never_told_as_a_trial() {
        let h = Harness::new(class_cfg());
        let p = h.person("+49 151 0000303");
        let booker = class_booker(&h, 2);
        let req = request("c-3", p, "warte@example.org", None, at(2, 19, 0));
        // The first try reaches the book step, whose calls fail before MagicLine acts.
        h.sim().inject_on(CLASS_BOOK, Fault::Status(503), 2);
        let first = booker.book_trial(&req);
        assert_eq!(first, BookingOutcome::Failed(BookingFailure::Unavailable));
        let lead = h.sim().leads()[0].customer_id;
        assert!(h.sim().bookings_of(lead).is_empty());
        // Meanwhile the class fills up; the next try's book call lands on the waiting list
        // and its answer is lost, so the booker finds the place by looking.
        h.sim().occupy_class(CLASS, &at(2, 19, 0));
        h.sim().inject_on(CLASS_BOOK, Fault::MalformedJson, 1);
        let second = booker.book_trial(&req);
        assert!(
            matches!(second, BookingOutcome::SlotTaken { .. }),
            "{second:?}"
        );
        let held = h.sim().bookings_of(lead);
        assert_eq!(held.len(), 1);
        assert_eq!(
            held[0].state,
            SimBookingState::Canceled,
            "waiting-list place given back"
        );
        assert_eq!(
            h.steps("c-3").last(),
            Some(&BookingStep::SlotTaken),
            "{:?}",
            h.steps("c-3")
        );
        assert!(!h.steps("c-3").contains(&BookingStep::Booked));
    }

    #[test]
    fn class_bookings_are_cancelled_and_read_back_through_the_class_endpoints() {
        let h = Harness::new(class_cfg());
        let booker = class_booker(&h, 3);
        let p = h.person("+49 151 0000304");
        let (first, lead) = booked_id(&booker.book_trial(&request(
            "c-4",
            p,
            "storno@example.org",
            None,
            at(3, 18, 0),
        )));
        // The lead cancels in the chat: the class booking goes, through the class endpoint.
        assert_eq!(booker.cancel(&p, first), Ok(()));
        assert_eq!(
            h.sim().bookings_of(lead)[0].state,
            SimBookingState::Canceled
        );
        assert_eq!(h.sim().request_count("/appointments/booking"), 0);
        // A second trial, which staff cancel at the desk: MagicLine says so by a class event,
        // and the record follows from the class booking's state.
        let (second, _) = booked_id(&booker.book_trial(&request(
            "c-5",
            p,
            "storno@example.org",
            None,
            at(4, 19, 0),
        )));
        let event = h.sim().staff_cancel(second).unwrap();
        assert_eq!(event.event_type, "CLASS_BOOKING_CANCELLED");
        assert!(booker.refresh_booking(second).unwrap());
        assert!(booker.recorded_booking(second).unwrap().unwrap().canceled);
        assert!(!booker.refresh_booking(second).unwrap(), "recorded once");
    }

    #[test]
    fn members_need_an_appointment_type_when_the_trial_is_a_class() {
        let h = Harness::new(class_cfg());
        let p = h.person("+49 151 2345 6701");
        let booker = class_booker(&h, 3);
        let outcome = booker.book_trial(&request(
            "c-6",
            p,
            "erika.musterfrau@example.org",
            Some(501),
            at(1, 10, 0),
        ));
        assert_eq!(
            outcome,
            BookingOutcome::Failed(BookingFailure::NotConfigured)
        );
    }

    /// Staff can move a class date itself; its bookings keep naming it. The date's event
    /// moves the trial (its reminders with it), and a sweep that finds the old time passed
    /// reads the date before it would record a no-show.
    #[test]
    fn a_class_date_moved_by_staff_moves_the_trial_and_is_no_no_show() {
        let h = Harness::new(class_cfg());
        let booker = class_booker(&h, 3);
        let book = |phone: &str, id: &str, email: &str, start: jiff::Zoned| {
            let p = h.person(phone);
            let (booking_id, lead) =
                booked_id(&booker.book_trial(&request(id, p, email, None, start)));
            let slot = h.sim().bookings_of(lead)[0].class_slot_id.unwrap();
            (p, booking_id, slot)
        };
        let (a, a_booking, a_slot) = book("+49 151 0000311", "c-11", "a@example.org", at(1, 18, 0));
        let (_, b_booking, b_slot) = book("+49 151 0000312", "c-12", "b@example.org", at(1, 19, 0));

        // Moved with its event: the class id comes with it, the trial follows once.
        let event = h
            .sim()
            .staff_move_class_date(a_slot, &at(1, 20, 0))
            .unwrap();
        assert_eq!(event.event_type, "CLASS_SLOT_UPDATED");
        assert_eq!(event.entity_id, a_slot);
        assert_eq!(event.body()["payload"][0]["content"]["classId"], CLASS);
        assert_eq!(booker.refresh_class_date(a_slot).unwrap(), 1);
        assert_eq!(
            booker.refresh_class_date(a_slot).unwrap(),
            0,
            "recorded once"
        );
        let rec = booker.recorded_booking(a_booking).unwrap().unwrap();
        assert_eq!(rec.start.timestamp(), at(1, 20, 0).timestamp());
        let day = h
            .store()
            .trials_between(at(1, 0, 0).timestamp(), at(2, 0, 0).timestamp())
            .unwrap();
        assert!(day.contains(&(at(1, 20, 0).timestamp(), a)), "{day:?}");
        let moved = h
            .audit
            .events()
            .iter()
            .filter(|e| e.step == BookingStep::MovedInMagicLine)
            .count();
        assert_eq!(moved, 1);
        // A date frontdesk booked nobody on reads nothing.
        let before = h.sim().total_requests();
        assert_eq!(booker.refresh_class_date(99_999).unwrap(), 0);
        assert_eq!(h.sim().total_requests(), before);

        // Moved without an event reaching frontdesk: when the old time has passed, the sweep
        // reads the date and finds it moved, not missed.
        h.sim()
            .staff_move_class_date(b_slot, &at(2, 20, 0))
            .unwrap();
        let swept = booker
            .sweep_attendance(at(1, 21, 0).timestamp(), false)
            .unwrap();
        assert_eq!((swept.moved, swept.no_shows), (1, 0), "{swept:?}");
        let rec = booker.recorded_booking(b_booking).unwrap().unwrap();
        assert_eq!(rec.start.timestamp(), at(2, 20, 0).timestamp());
        assert!(!rec.no_show);
    }
}
