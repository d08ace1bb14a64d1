//! Trial offers booked as a class, in the simulator: the class list, its dates with their
//! participant counts, class validation and booking with a waiting list, and the class booking
//! reads and cancellation (`/classes/booking…`), and one date read by its id
//! (`/classes/{classId}/slots/{classSlotId}`), which staff can move.
//!
//! As MagicLine documents it: the date list covers the day before today to 14 days ahead, is
//! paged (`offset`, `sliceSize`) and lists full dates too (the counts say so); booking opens and
//! closes at each date's `earliestBookingDateTime`/`latestBookingDateTime`; a full class with
//! room on its waiting list validates `AVAILABLE` and books as `WAITING_LIST`, which is no place
//! in the class; a booking's answer names the slot, not its times. Class and appointment
//! bookings share one id space (one confirm endpoint serves both).

use jiff::civil::{Time, Weekday};
use jiff::{SignedDuration, Timestamp, ToSpan, Zoned};
use serde_json::{json, Value};

use super::{Answer, SimBooking, SimBookingState, State};
use crate::magicline::api::BookingValidationStatus;
use crate::magicline::datetime;

/// A class a lead can book as trial training.
#[derive(Debug, Clone)]
pub struct SimClass {
    /// The trial offer's configuration id (answered by `GET /trial-offers/config/{id}` with the
    /// studio's lead data and confirmation settings).
    pub config_id: i64,
    /// MagicLine's id of the class.
    pub id: i64,
    /// Name shown in listings.
    pub title: String,
    /// Length of one date.
    pub duration_minutes: i64,
    /// Places per date.
    pub max_participants: u32,
    /// Places on the waiting list per date.
    pub max_waiting_list: u32,
    /// When it takes place each week.
    pub times: Vec<(Weekday, Time)>,
    /// Booking opens this long before a date.
    pub booking_opens: SignedDuration,
    /// Booking closes this long before a date.
    pub booking_closes: SignedDuration,
}

impl SimClass {
    /// A group EMS class twice a weekday evening and on Saturday morning: four places, two on
    /// the waiting list, bookable from a week to an hour before.
    pub fn group_ems() -> SimClass {
        let weekdays = [
            Weekday::Monday,
            Weekday::Tuesday,
            Weekday::Wednesday,
            Weekday::Thursday,
            Weekday::Friday,
        ];
        let mut times: Vec<(Weekday, Time)> = weekdays
            .iter()
            .flat_map(|d| {
                [
                    (*d, Time::constant(18, 0, 0, 0)),
                    (*d, Time::constant(19, 0, 0, 0)),
                ]
            })
            .collect();
        times.push((Weekday::Saturday, Time::constant(10, 0, 0, 0)));
        SimClass {
            config_id: 7,
            id: 3001,
            title: "EMS-Gruppe Probetraining".into(),
            duration_minutes: 45,
            max_participants: 4,
            max_waiting_list: 2,
            times,
            booking_opens: SignedDuration::from_hours(24 * 7),
            booking_closes: SignedDuration::from_hours(1),
        }
    }
}

/// A class date: its class, start and end.
struct ClassDate {
    class: SimClass,
    slot_id: i64,
    start: Zoned,
    end: Zoned,
}

/// First class slot id; ids are given in the order dates are first listed.
const FIRST_SLOT_ID: i64 = 30_001;

impl State {
    pub(super) fn trial_class(&self, id: i64) -> Option<&SimClass> {
        self.cfg.trial_classes.iter().find(|c| c.id == id)
    }

    pub(super) fn is_class_config(&self, config_id: i64) -> bool {
        self.cfg
            .trial_classes
            .iter()
            .any(|c| c.config_id == config_id)
    }

    fn slot_id_for(&mut self, class_id: i64, start: Timestamp) -> i64 {
        let key = (class_id, start.as_second());
        if let Some(id) = self.class_slot_ids.get(&key) {
            return *id;
        }
        let id = FIRST_SLOT_ID + self.class_slots.len() as i64;
        self.class_slot_ids.insert(key, id);
        self.class_slots.insert(id, (class_id, start));
        id
    }

    /// The dates of `class` from the day before today to 14 days ahead, in order.
    fn class_dates(&mut self, class: &SimClass) -> Vec<ClassDate> {
        let today = self.now().to_zoned(self.tz.clone()).date();
        let length = SignedDuration::from_mins(class.duration_minutes.max(1));
        let mut out = Vec::new();
        for offset in -1..=14_i64 {
            let Ok(day) = today.checked_add(offset.days()) else {
                continue;
            };
            for (_, time) in class.times.iter().filter(|(d, _)| *d == day.weekday()) {
                let Ok(start) = day.to_datetime(*time).to_zoned(self.tz.clone()) else {
                    continue;
                };
                let Ok(end) = start.checked_add(length) else {
                    continue;
                };
                let slot_id = self.slot_id_for(class.id, start.timestamp());
                // A date staff moved keeps its id and is listed at its new time.
                let moved = self.class_slots.get(&slot_id).map(|(_, at)| *at);
                let (start, end) = match moved {
                    Some(at) if at != start.timestamp() => {
                        let start = at.to_zoned(self.tz.clone());
                        let Ok(end) = start.checked_add(length) else {
                            continue;
                        };
                        (start, end)
                    }
                    _ => (start, end),
                };
                out.push(ClassDate {
                    class: class.clone(),
                    slot_id,
                    start,
                    end,
                });
            }
        }
        out.sort_by_key(|d| d.start.timestamp());
        out
    }

    /// The date a slot id names, if it was listed and its class still exists.
    fn class_date(&self, slot_id: i64) -> Option<ClassDate> {
        let (class_id, start) = *self.class_slots.get(&slot_id)?;
        let class = self.trial_class(class_id)?.clone();
        let start = start.to_zoned(self.tz.clone());
        let end = start
            .checked_add(SignedDuration::from_mins(class.duration_minutes.max(1)))
            .ok()?;
        Some(ClassDate {
            class,
            slot_id,
            start,
            end,
        })
    }

    fn in_slot(&self, slot_id: i64, state: fn(SimBookingState) -> bool) -> u32 {
        self.bookings
            .iter()
            .filter(|b| b.class_slot_id == Some(slot_id) && state(b.state))
            .count() as u32
    }

    fn class_slot_json(&self, d: &ClassDate) -> Value {
        json!({
            "id": d.slot_id,
            "startDateTime": datetime::format(&d.start),
            "endDateTime": datetime::format(&d.end),
            "classInformation": { "id": d.class.id, "title": d.class.title },
            "instructors": self.instructors_json(&d.start),
            "location": { "id": 1, "name": "Studio" },
            "earliestBookingDateTime": datetime::format(&(d.start.timestamp() - d.class.booking_opens).to_zoned(self.tz.clone())),
            "latestBookingDateTime": datetime::format(&(d.start.timestamp() - d.class.booking_closes).to_zoned(self.tz.clone())),
            "maxParticipants": d.class.max_participants,
            "maxWaitingListParticipants": d.class.max_waiting_list,
            "bookedParticipants": self.in_slot(d.slot_id, SimBookingState::holds),
            "additionalParticipants": 0,
            "waitingListParticipants": self.in_slot(d.slot_id, |s| s == SimBookingState::WaitingList),
        })
    }

    /// `GET /trial-offers/bookable-trial-offers/classes`.
    pub(super) fn trial_classes_page(
        &self,
        query: &std::collections::HashMap<String, String>,
    ) -> Answer {
        let items = self
            .cfg
            .trial_classes
            .iter()
            .map(|c| {
                let item = json!({
                    "trialOfferConfigId": c.config_id,
                    "trialOfferClass": {
                        "id": c.id, "title": c.title, "type": "STUDIO",
                        "duration": c.duration_minutes, "category": "EMS", "bookable": true,
                        "cancelCondition": { "latestCancelTerm": { "value": 2, "unit": "HOUR" } },
                    },
                });
                (c.id, item)
            })
            .collect();
        self.page(items, query)
    }

    /// `GET /trial-offers/bookable-trial-offers/classes/{classId}/slots`.
    pub(super) fn trial_class_slots_page(
        &mut self,
        class_id: i64,
        query: &std::collections::HashMap<String, String>,
    ) -> Answer {
        let Some(class) = self.trial_class(class_id).cloned() else {
            return Answer::error(404, "CLASS_NOT_FOUND", "Kurs nicht gefunden");
        };
        let items = self
            .class_dates(&class)
            .iter()
            .map(|d| (d.slot_id, self.class_slot_json(d)))
            .collect();
        self.page(items, query)
    }

    /// The `customerId` and `classSlotId` of a class validate or book body.
    fn class_request(body: &Value) -> Result<(i64, i64), Answer> {
        let int = |k: &str| body.get(k).and_then(Value::as_i64);
        match (int("customerId"), int("classSlotId")) {
            (Some(c), Some(s)) => Ok((c, s)),
            _ => Err(Answer::error(
                400,
                "INVALID_REQUEST",
                "customerId und classSlotId erforderlich",
            )),
        }
    }

    /// `POST /trial-offers/classes/booking/validate`, as a status (or an HTTP error answer).
    pub(super) fn validate_class(
        &mut self,
        body: &Value,
    ) -> Result<(BookingValidationStatus, i64, i64), Answer> {
        use BookingValidationStatus as S;
        let (customer_id, slot_id) = Self::class_request(body)?;
        let Some(date) = self.class_date(slot_id) else {
            return Err(Answer::error(
                404,
                "CLASS_SLOT_NOT_FOUND",
                "Kurstermin nicht gefunden",
            ));
        };
        let Some(customer) = self.customer(customer_id).cloned() else {
            return Err(Answer::error(
                404,
                "CUSTOMER_NOT_FOUND",
                "Kunde nicht gefunden",
            ));
        };
        if let Some(forced) = self.forced.pop_front() {
            return Ok((forced, customer_id, slot_id));
        }
        let now = self.now();
        let status = if now < date.start.timestamp() - date.class.booking_opens {
            S::DateTimeBeforeEarliestBookingDateTime
        } else if now > date.start.timestamp() - date.class.booking_closes {
            S::DateTimeAfterLatestBookingDateTime
        } else if customer.idle {
            S::CustomerIdle
        } else {
            let own: Vec<&SimBooking> = self
                .bookings
                .iter()
                .filter(|b| b.customer_id == customer_id && b.state.holds())
                .collect();
            let waiting = self.bookings.iter().any(|b| {
                b.customer_id == customer_id
                    && b.class_slot_id == Some(slot_id)
                    && b.state == SimBookingState::WaitingList
            });
            let booked = self.in_slot(slot_id, SimBookingState::holds);
            let queued = self.in_slot(slot_id, |s| s == SimBookingState::WaitingList);
            if waiting || own.iter().any(|b| b.class_slot_id == Some(slot_id)) {
                S::CustomerAlreadyBooked
            } else if own.iter().any(|b| {
                b.start.timestamp() < date.end.timestamp()
                    && date.start.timestamp() < b.end.timestamp()
            }) {
                S::CustomerInOtherBooking
            } else if own.iter().filter(|b| b.trial).count() >= self.cfg.trial_contingent as usize {
                S::NoContingent
            } else if booked >= date.class.max_participants && queued >= date.class.max_waiting_list
            {
                S::NotAvailable
            } else {
                // A full class with room on its waiting list is "available": the booking
                // lands on the waiting list.
                S::Available
            }
        };
        Ok((status, customer_id, slot_id))
    }

    /// `POST /trial-offers/classes/booking/book`.
    pub(super) fn book_class(&mut self, body: &Value) -> Answer {
        let (status, customer_id, slot_id) = match self.validate_class(body) {
            Ok(v) => v,
            Err(answer) => return answer,
        };
        if status != BookingValidationStatus::Available {
            return Answer::error(
                400,
                "error.class.booking.not.possible",
                "Kursbuchung nicht möglich",
            );
        }
        let Some(date) = self.class_date(slot_id) else {
            return Answer::error(404, "CLASS_SLOT_NOT_FOUND", "Kurstermin nicht gefunden");
        };
        let full = self.in_slot(slot_id, SimBookingState::holds) >= date.class.max_participants;
        let confirm = self.cfg.require_confirmation;
        let state = if full {
            SimBookingState::WaitingList
        } else if confirm {
            SimBookingState::AwaitingConfirmation
        } else {
            SimBookingState::Booked
        };
        let id = self.next_booking_id();
        if state == SimBookingState::AwaitingConfirmation {
            let start = date.start.timestamp();
            let deadline = start
                .checked_sub(self.cfg.confirmation_term)
                .unwrap_or(start);
            self.deadlines.insert(id, deadline);
        }
        let booking = SimBooking {
            id,
            customer_id,
            appointment_id: date.class.id,
            class_slot_id: Some(slot_id),
            start: date.start,
            end: date.end,
            state,
            trial: true,
            external: false,
        };
        let body = Self::class_booking_json(&booking);
        self.bookings.push(booking);
        Answer::ok(body)
    }

    pub(super) fn class_booking_json(b: &SimBooking) -> Value {
        let status = match b.state {
            SimBookingState::Booked => "BOOKED",
            SimBookingState::AwaitingConfirmation => "BOOKED_WITH_CONFIRMATION_REQUIRED",
            SimBookingState::WaitingList => "WAITING_LIST",
            SimBookingState::Canceled => "CANCELED",
        };
        json!({
            "bookingId": b.id,
            "bookingStatus": status,
            "classSlotId": b.class_slot_id,
            "classId": b.appointment_id,
            "customerId": b.customer_id,
            "classSlotStatus": "PLANNED",
            "participantStatus": if b.state.holds() { "PARTICIPATING" } else { "NOT_PARTICIPATING" },
        })
    }

    /// `GET /classes/booking?customerId=`: within two weeks before or after now.
    pub(super) fn class_bookings_of(
        &self,
        query: &std::collections::HashMap<String, String>,
    ) -> Answer {
        let Some(customer_id) = query.get("customerId").and_then(|c| c.parse::<i64>().ok()) else {
            return Answer::error(400, "INVALID_PARAMETER", "customerId erforderlich");
        };
        if self.customer(customer_id).is_none() {
            return Answer::error(404, "CUSTOMER_NOT_FOUND", "Kunde nicht gefunden");
        }
        let now = self.now();
        let span = SignedDuration::from_hours(24 * 14);
        let list: Vec<Value> = self
            .bookings
            .iter()
            .filter(|b| b.customer_id == customer_id && b.class_slot_id.is_some())
            .filter(|b| b.start.timestamp().duration_since(now).abs() <= span)
            .map(Self::class_booking_json)
            .collect();
        Answer::ok(Value::Array(list))
    }

    /// `GET /classes/booking/{bookingId}`.
    pub(super) fn class_booking(&self, booking_id: i64) -> Answer {
        match self
            .bookings
            .iter()
            .find(|b| b.id == booking_id && b.class_slot_id.is_some() && !b.external)
        {
            Some(b) => Answer::ok(Self::class_booking_json(b)),
            None => Answer::error(404, "BOOKING_NOT_FOUND", "Buchung nicht gefunden"),
        }
    }

    /// `GET /classes/{classId}/slots/{classSlotId}`: one date of a class as it is now.
    pub(super) fn class_slot(&self, class_id: i64, slot_id: i64) -> Answer {
        match self.class_date(slot_id) {
            Some(d) if d.class.id == class_id => Answer::ok(self.class_slot_json(&d)),
            _ => Answer::error(404, "CLASS_SLOT_NOT_FOUND", "Kurstermin nicht gefunden"),
        }
    }

    /// Moves class date `slot_id` to `start`, with every booking of it; the class's id, or
    /// `None` for a date never listed.
    pub(super) fn move_class_date(&mut self, slot_id: i64, start: Timestamp) -> Option<i64> {
        let (class_id, _) = *self.class_slots.get(&slot_id)?;
        self.class_slots.insert(slot_id, (class_id, start));
        let tz = self.tz.clone();
        for b in self
            .bookings
            .iter_mut()
            .filter(|b| b.class_slot_id == Some(slot_id))
        {
            let length = b.end.timestamp().duration_since(b.start.timestamp());
            b.start = start.to_zoned(tz.clone());
            b.end = (start + length).to_zoned(tz.clone());
        }
        Some(class_id)
    }

    /// `DELETE /classes/booking/{bookingId}`: the place goes to the first on the waiting list.
    pub(super) fn cancel_class(&mut self, booking_id: i64) -> Answer {
        let Some(b) = self
            .bookings
            .iter_mut()
            .find(|b| b.id == booking_id && b.class_slot_id.is_some() && !b.external)
        else {
            return Answer::error(404, "BOOKING_NOT_FOUND", "Buchung nicht gefunden");
        };
        let held = b.state.holds();
        b.state = SimBookingState::Canceled;
        if let (true, Some(slot)) = (held, b.class_slot_id) {
            self.promote_waiting_list(slot);
        }
        Answer::ok(json!({ "success": "true" }))
    }

    /// The first on the waiting list of `slot_id` gets the place that became free.
    pub(super) fn promote_waiting_list(&mut self, slot_id: i64) {
        let Some(date) = self.class_date(slot_id) else {
            return;
        };
        if self.in_slot(slot_id, SimBookingState::holds) >= date.class.max_participants {
            return;
        }
        if let Some(next) = self
            .bookings
            .iter_mut()
            .find(|b| b.class_slot_id == Some(slot_id) && b.state == SimBookingState::WaitingList)
        {
            next.state = SimBookingState::Booked;
        }
    }

    /// Fills every place of the class date starting at `start` with someone else's booking.
    pub(super) fn occupy_class(&mut self, class_id: i64, start: &Zoned) {
        let Some(class) = self.trial_class(class_id).cloned() else {
            return;
        };
        let slot_id = self.slot_id_for(class_id, start.timestamp());
        let start = start.with_time_zone(self.tz.clone());
        let Ok(end) = start.checked_add(class.duration_minutes.minutes()) else {
            return;
        };
        while self.in_slot(slot_id, SimBookingState::holds) < class.max_participants {
            let id = self.next_booking_id();
            self.bookings.push(SimBooking {
                id,
                customer_id: 0,
                appointment_id: class_id,
                class_slot_id: Some(slot_id),
                start: start.clone(),
                end: end.clone(),
                state: SimBookingState::Booked,
                trial: false,
                external: true,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{monday_nine, Harness};
    use super::super::{SimConfig, SimCustomer};
    use super::SimClass;
    use crate::magicline::api::{BookingStatus, BookingValidationStatus as S, ClassBookingRequest};
    use crate::magicline::client::Error;

    const CLASS: i64 = 3001;

    fn customer(id: i64) -> SimCustomer {
        SimCustomer {
            id,
            first_name: format!("Kunde{id}"),
            last_name: "Test".into(),
            email: format!("kunde{id}@example.org"),
            idle: false,
            mobile: None,
        }
    }

    #[test]
    fn class_dates_are_paged_listed_full_or_not_and_booked_as_magicline_documents() {
        let h = Harness::new(SimConfig {
            now: Some(monday_nine()),
            trial_classes: vec![SimClass::group_ems()],
            max_slice_size: 3,
            ..SimConfig::default()
        });
        for id in 601..=607 {
            h.sim().add_customer(customer(id));
        }
        // Sunday (the day before) to 14 days ahead, over several slices, each date once.
        let dates = h.client.trial_class_slots(CLASS).unwrap();
        assert!(
            h.sim()
                .request_count("/trial-offers/bookable-trial-offers/classes/")
                > 1
        );
        let mut ids: Vec<i64> = dates.iter().map(|d| d.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), dates.len());
        // Mon-Fri twice and Saturday once, from Monday the 3rd to Monday the 17th.
        assert_eq!(dates.len(), 2 * 11 + 2);
        let tuesday = dates
            .iter()
            .find(|d| d.start_date_time.date() == jiff::civil::date(2030, 6, 4))
            .unwrap()
            .clone();
        assert!(tuesday.has_place(monday_nine()));
        let far = dates
            .iter()
            .max_by_key(|d| d.start_date_time.timestamp())
            .unwrap();
        assert!(!far.has_place(monday_nine()), "booking opens a week before");
        let validate = |customer_id, class_slot_id| {
            h.client
                .validate_trial_class_booking(&ClassBookingRequest {
                    customer_id,
                    class_slot_id,
                })
                .unwrap()
        };
        let book = |customer_id, class_slot_id| {
            h.client.book_trial_class(&ClassBookingRequest {
                customer_id,
                class_slot_id,
            })
        };
        assert_eq!(
            validate(601, far.id),
            S::DateTimeBeforeEarliestBookingDateTime
        );
        // Four places, then two on the waiting list, then nothing.
        for c in 601..=604 {
            assert_eq!(
                book(c, tuesday.id).unwrap().booking_status,
                BookingStatus::Booked
            );
        }
        let listed = h.client.trial_class_slots(CLASS).unwrap();
        let full = listed.iter().find(|d| d.id == tuesday.id).unwrap();
        assert_eq!(full.booked_participants, Some(4));
        assert!(
            !full.has_place(monday_nine()),
            "a full date is listed, without a place"
        );
        assert_eq!(validate(605, tuesday.id), S::Available);
        let waiting = book(605, tuesday.id).unwrap();
        assert_eq!(waiting.booking_status, BookingStatus::WaitingList);
        assert!(!waiting.is_active());
        assert_eq!(validate(605, tuesday.id), S::CustomerAlreadyBooked);
        assert_eq!(validate(601, tuesday.id), S::CustomerAlreadyBooked);
        book(606, tuesday.id).unwrap();
        assert_eq!(validate(607, tuesday.id), S::NotAvailable);
        // A rejected book call carries a translation key, not a status.
        match book(607, tuesday.id) {
            Err(Error::Api {
                status: 400, code, ..
            }) => {
                assert!(code.is_some_and(|c| c.starts_with("error.")));
            }
            other => panic!("expected 400, got {other:?}"),
        }
        // A place given back goes to the first on the waiting list.
        let first = h.client.class_bookings(601).unwrap()[0].booking_id;
        h.client.cancel_class_booking(first).unwrap();
        let promoted = h.client.class_booking(waiting.booking_id).unwrap();
        assert_eq!(promoted.booking_status, BookingStatus::Booked);
        // Class bookings live under /classes/booking only.
        assert!(matches!(
            h.client.booking(first),
            Err(Error::Api { status: 404, .. })
        ));
        // Booking closes an hour before the date.
        h.sim()
            .set_now(tuesday.start_date_time.timestamp() - jiff::SignedDuration::from_mins(30));
        assert_eq!(
            validate(607, tuesday.id),
            S::DateTimeAfterLatestBookingDateTime
        );
    }

    #[test]
    fn a_date_is_read_by_its_id_and_staff_can_move_it_with_its_bookings() {
        let h = Harness::new(SimConfig {
            now: Some(monday_nine()),
            trial_classes: vec![SimClass::group_ems()],
            ..SimConfig::default()
        });
        h.sim().add_customer(customer(611));
        let dates = h.client.trial_class_slots(CLASS).unwrap();
        let date = dates
            .iter()
            .find(|d| d.start_date_time.date() == jiff::civil::date(2030, 6, 4))
            .unwrap()
            .clone();
        let read = h.client.class_slot(CLASS, date.id).unwrap();
        assert_eq!(read.start_date_time, date.start_date_time);
        assert_eq!(read.end_date_time, date.end_date_time);
        // The path names the class: another class's id, or a date never listed, is not found.
        for (class, slot) in [(CLASS + 1, date.id), (CLASS, 99_999)] {
            assert!(matches!(
                h.client.class_slot(class, slot),
                Err(Error::Api { status: 404, .. })
            ));
        }
        let booked = h
            .client
            .book_trial_class(&crate::magicline::api::ClassBookingRequest {
                customer_id: 611,
                class_slot_id: date.id,
            })
            .unwrap();

        let later = date
            .start_date_time
            .checked_add(jiff::SignedDuration::from_hours(2))
            .unwrap();
        let event = h.sim().staff_move_class_date(date.id, &later).unwrap();
        assert_eq!(event.event_type, "CLASS_SLOT_UPDATED");
        let moved = h.client.class_slot(CLASS, date.id).unwrap();
        assert_eq!(moved.start_date_time.timestamp(), later.timestamp());
        assert_eq!(
            moved.end_date_time.timestamp(),
            later.timestamp() + jiff::SignedDuration::from_mins(45)
        );
        // Listed once, at its new time; the booking still names it.
        let listed: Vec<_> = h
            .client
            .trial_class_slots(CLASS)
            .unwrap()
            .into_iter()
            .filter(|d| d.id == date.id)
            .collect();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].start_date_time.timestamp(), later.timestamp());
        let booking = h.client.class_booking(booked.booking_id).unwrap();
        assert_eq!(booking.class_slot_id, date.id);
        assert!(h.sim().staff_move_class_date(99_999, &later).is_none());
    }
}
