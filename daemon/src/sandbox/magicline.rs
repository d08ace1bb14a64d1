//! MagicLine Open API simulator: an HTTP/1.1 server on 127.0.0.1 that speaks the endpoints
//! frontdesk uses with MagicLine's paths, headers, JSON shapes, date-time format and error body.
//!
//! It keeps a seeded studio in memory: opening hours, bookable appointment types with a slot grid
//! and a capacity per slot, members, leads created through the API and bookings. Validation
//! follows the documented statuses (past start, outside opening hours, off-grid period, customer
//! already booked at that time, trial contingent, booking limit, slot full, ...). A fixed clock can
//! be set so tests do not depend on the wall clock.
//!
//! It holds the client to the published limits: `daysAhead` of a slot query must be 1–6 (a
//! longer search is several windows), a booking that needs confirmation must be confirmed at the
//! latest the trial offer's confirmation term *before its start* (later it expires and frees the
//! slot), after a 429 every request to that endpoint is denied for the next minute (and counted),
//! a key without the scope an endpoint needs gets 403, and rejected calls answer the documented
//! error body, whose `errorCode` is a translation key, never a validation status. `HEAD` on any
//! path checks the key alone (200 or 401), as MagicLine documents.
//!
//! Faults are injected at run time through [`MagiclineSim`]: the next N requests (optionally only
//! those whose path starts with a prefix) answer with an error status, malformed JSON, a body that
//! stalls halfway, or a late answer. Malformed, stalled and late answers are produced *after* the
//! request was carried out, which is exactly the case where a client must check before retrying.
//!
//! Staff at the desk are simulated too ([`MagiclineSim::staff_cancel`],
//! [`MagiclineSim::staff_move`], [`MagiclineSim::check_in`]): each changes the studio's state
//! and returns the webhook event MagicLine would send, which [`MagiclineSim::send`] posts to the
//! configured URL with the configured `x-api-key`, in MagicLine's notify-only body shape
//! (`{entityId, uuid, payload: [{timestamp, type, content}]}`; the entity is the booking for
//! booking events, the customer for `CUSTOMER_CHECKIN`) under MagicLine's 5-second timeout. The
//! state behind an event is read as MagicLine documents it: `GET /appointments/booking/{id}` and
//! `GET /customers/{id}/activities/checkins` (`fromDate`/`toDate` at most 365 days apart).
//!
//! Trial offers that are a class ([`SimClass`], the class endpoints and their waiting list) are
//! simulated in `classes`.
//!
//! Used by tests and `frontdesk demo`; never by `frontdesk serve`.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use jiff::civil::{Date, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan, Zoned};
use rand::Rng;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use crate::magicline::api::{BookingValidationStatus, FieldMode};
use crate::magicline::datetime;

mod classes;
pub use classes::SimClass;

/// A bookable appointment type of the simulated studio.
#[derive(Debug, Clone)]
pub struct SimAppointment {
    /// Id used in the API paths.
    pub id: i64,
    /// Name shown in listings.
    pub title: String,
    /// Length of one slot; slots start on this grid from opening time.
    pub duration_minutes: i64,
    /// Category shown in listings.
    pub category: String,
}

/// Opening hours of one weekday (`close` is exclusive for slot ends beyond it).
#[derive(Debug, Clone)]
pub struct OpeningHours {
    /// The day these hours apply to.
    pub weekday: Weekday,
    /// First possible slot start.
    pub open: Time,
    /// Latest slot end.
    pub close: Time,
}

/// A registered customer seeded into the studio.
#[derive(Debug, Clone)]
pub struct SimCustomer {
    /// MagicLine customer id.
    pub id: i64,
    /// First name.
    pub first_name: String,
    /// Last name.
    pub last_name: String,
    /// E-mail address; searches match it case-insensitively.
    pub email: String,
    /// Idle (paused membership): bookings validate as `CUSTOMER_IDLE`.
    pub idle: bool,
    /// Mobile number as the studio typed it (`phonePrivateMobile`), in any format staff use.
    pub mobile: Option<String>,
}

/// A trainer slots and bookings name.
#[derive(Debug, Clone)]
pub struct SimInstructor {
    /// MagicLine id of the trainer.
    pub id: i64,
    /// First name.
    pub first_name: String,
    /// Last name.
    pub last_name: String,
}

/// Studio, catalogue and behaviour of the simulator.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The only accepted `x-api-key`; anything else gets 401.
    pub api_key: String,
    /// IANA zone of the studio; all date-times are answered in it.
    pub time_zone: String,
    /// Id of the one trial offer the studio has.
    pub trial_offer_config_id: i64,
    /// The appointment type offered as trial training (bookable through both flows).
    pub trial_appointment: SimAppointment,
    /// Further trial offers (configuration id and appointment type), listed after the first;
    /// they share its lead data and confirmation settings.
    pub more_trial_offers: Vec<(i64, SimAppointment)>,
    /// Appointment types for registered customers (the trial type is listed as well).
    pub member_appointments: Vec<SimAppointment>,
    /// Trial offers booked as a class ([`SimClass`]); none by default.
    pub trial_classes: Vec<SimClass>,
    /// Days not listed are closed.
    pub opening_hours: Vec<OpeningHours>,
    /// Parallel bookings per slot and appointment type.
    pub slot_capacity: u32,
    /// Earliest bookable start relative to now.
    pub min_notice: SignedDuration,
    /// Latest bookable start relative to now, in days.
    pub max_days_ahead: i64,
    /// `daysAhead` when a slot query does not give it (MagicLine: 1).
    pub default_days_ahead: i64,
    /// Trial bookings one customer may hold.
    pub trial_contingent: u32,
    /// Upcoming bookings one customer may hold through the member flow.
    pub booking_limit: u32,
    /// Trial bookings answer `BOOKED_WITH_CONFIRMATION_REQUIRED` and need the confirm call.
    pub require_confirmation: bool,
    /// A booking awaiting confirmation must be confirmed at the latest this long before its
    /// start; then it expires and frees the slot.
    pub confirmation_term: SignedDuration,
    /// Whether lead creation asks for the gender.
    pub gender_mode: FieldMode,
    /// Whether lead creation asks for the date of birth.
    pub date_of_birth_mode: FieldMode,
    /// Whether lead creation asks for the telephone number.
    pub telephone_mode: FieldMode,
    /// Whether lead creation asks for the address.
    pub address_mode: FieldMode,
    /// Registered customers present from the start.
    pub customers: Vec<SimCustomer>,
    /// Trainers assigned to slots in turn; may be empty.
    pub instructors: Vec<SimInstructor>,
    /// Largest `sliceSize` honoured on paged lists.
    pub max_slice_size: usize,
    /// Fixed clock; `None` uses the system clock.
    pub now: Option<Timestamp>,
    /// Requests per minute and endpoint before 429 (MagicLine: 1,000); `None` = unlimited.
    pub rate_limit_per_minute: Option<u32>,
    /// Scopes the API key lacks: the endpoints that need one answer 403.
    pub missing_scopes: Vec<SimScope>,
}

/// A permission of an Open API key, as the studio grants it to an integration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimScope {
    /// Trial offers, their configuration and slots.
    TrialOffersRead,
    /// Lead creation, trial bookings and their confirmation.
    TrialOffersWrite,
    /// Bookable appointments, their slots and the customer's bookings.
    BookableAppointmentsRead,
    /// Validating, booking and cancelling appointments.
    AppointmentsWrite,
    /// Customer search.
    CustomersRead,
    /// Class bookings of a customer.
    ClassesRead,
    /// Cancelling class bookings.
    ClassesWrite,
}

impl Default for SimConfig {
    fn default() -> Self {
        let trial = SimAppointment {
            id: 1001,
            title: "Probetraining".into(),
            duration_minutes: 30,
            category: "EMS".into(),
        };
        let mut hours: Vec<OpeningHours> = [
            Weekday::Monday,
            Weekday::Tuesday,
            Weekday::Wednesday,
            Weekday::Thursday,
            Weekday::Friday,
        ]
        .into_iter()
        .map(|weekday| OpeningHours {
            weekday,
            open: Time::constant(8, 0, 0, 0),
            close: Time::constant(21, 0, 0, 0),
        })
        .collect();
        hours.push(OpeningHours {
            weekday: Weekday::Saturday,
            open: Time::constant(9, 0, 0, 0),
            close: Time::constant(14, 0, 0, 0),
        });
        SimConfig {
            api_key: "sim-magicline-key".into(),
            time_zone: "Europe/Berlin".into(),
            trial_offer_config_id: 1,
            trial_appointment: trial.clone(),
            more_trial_offers: Vec::new(),
            member_appointments: vec![
                trial,
                SimAppointment {
                    id: 2001,
                    title: "EMS-Training".into(),
                    duration_minutes: 30,
                    category: "EMS".into(),
                },
                SimAppointment {
                    id: 2002,
                    title: "Personal Training".into(),
                    duration_minutes: 60,
                    category: "Fitness".into(),
                },
            ],
            trial_classes: Vec::new(),
            opening_hours: hours,
            slot_capacity: 1,
            min_notice: SignedDuration::from_hours(1),
            max_days_ahead: 28,
            default_days_ahead: 1,
            trial_contingent: 1,
            booking_limit: 3,
            require_confirmation: false,
            confirmation_term: SignedDuration::from_hours(2),
            gender_mode: FieldMode::Optional,
            date_of_birth_mode: FieldMode::Inactive,
            telephone_mode: FieldMode::Optional,
            address_mode: FieldMode::Inactive,
            customers: vec![
                SimCustomer {
                    id: 501,
                    first_name: "Erika".into(),
                    last_name: "Musterfrau".into(),
                    email: "erika.musterfrau@example.org".into(),
                    idle: false,
                    mobile: Some("0151 2345 6701".into()),
                },
                SimCustomer {
                    id: 502,
                    first_name: "Jonas".into(),
                    last_name: "Beispiel".into(),
                    email: "jonas.beispiel@example.org".into(),
                    idle: false,
                    mobile: Some("+49 160 9876502".into()),
                },
            ],
            instructors: vec![
                SimInstructor {
                    id: 101,
                    first_name: "Anna".into(),
                    last_name: "Trainer".into(),
                },
                SimInstructor {
                    id: 102,
                    first_name: "Ben".into(),
                    last_name: "Coach".into(),
                },
            ],
            max_slice_size: 50,
            now: None,
            rate_limit_per_minute: None,
            missing_scopes: Vec::new(),
        }
    }
}

/// What an injected fault does to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer this status with a MagicLine error body without carrying out the request
    /// (503 overload, 500, 429 rate limit, ...).
    Status(u16),
    /// Carry out the request, then answer 200 with a truncated JSON body.
    MalformedJson,
    /// Carry out the request, send the status line and half of the body, stall this long, then
    /// send the rest.
    SlowBody(Duration),
    /// Carry out the request (e.g. make the booking), then wait this long before answering at
    /// all: the client times out although the request succeeded.
    LateAnswer(Duration),
}

/// State of a booking in the simulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimBookingState {
    /// Held and confirmed.
    Booked,
    /// Held, waiting for the confirm call.
    AwaitingConfirmation,
    /// On the waiting list of a full class: no place yet (class bookings only).
    WaitingList,
    /// Cancelled; frees the slot.
    Canceled,
}

impl SimBookingState {
    /// Whether the booking holds its place (a waiting-list entry does not).
    fn holds(self) -> bool {
        matches!(
            self,
            SimBookingState::Booked | SimBookingState::AwaitingConfirmation
        )
    }
}

/// A booking as the simulator holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimBooking {
    /// Booking id.
    pub id: i64,
    /// Who booked; 0 for bookings made by `occupy_slot`.
    pub customer_id: i64,
    /// The appointment type, or the class of a class booking.
    pub appointment_id: i64,
    /// The class slot of a class booking; `None` for appointment bookings.
    pub class_slot_id: Option<i64>,
    /// Start in the studio's zone.
    pub start: Zoned,
    /// End in the studio's zone.
    pub end: Zoned,
    /// Booked, awaiting confirmation or cancelled.
    pub state: SimBookingState,
    /// Booked through the trial-offer endpoints.
    pub trial: bool,
    /// Made by `occupy_slot` (someone outside the test).
    pub external: bool,
}

/// A webhook event as MagicLine sends it (notify-only: the state is read by API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimEvent {
    /// The event's unique id; a redelivery carries the same.
    pub uuid: String,
    /// The booking id (booking events), the class slot id (class date events) or the
    /// customer id (`CUSTOMER_CHECKIN`).
    pub entity_id: i64,
    /// `APPOINTMENT_BOOKING_CANCELLED`, `APPOINTMENT_BOOKING_UPDATED`, `CUSTOMER_CHECKIN`, …
    pub event_type: &'static str,
    /// When it happened, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The event's `content`: the class id for the class date events, else nothing.
    pub content: Value,
}

impl SimEvent {
    fn new(entity_id: i64, event_type: &'static str, at: Timestamp) -> SimEvent {
        let bytes: [u8; 16] = rand::thread_rng().gen();
        let h = hex::encode(bytes);
        SimEvent {
            // Version-4 layout; only uniqueness matters.
            uuid: format!(
                "{}-{}-4{}-a{}-{}",
                &h[0..8],
                &h[8..12],
                &h[13..16],
                &h[17..20],
                &h[20..32]
            ),
            entity_id,
            event_type,
            timestamp_ms: at.as_millisecond(),
            content: json!({}),
        }
    }

    /// The JSON body MagicLine posts.
    pub fn body(&self) -> Value {
        json!({
            "entityId": self.entity_id,
            "uuid": self.uuid,
            "payload": [{
                "timestamp": self.timestamp_ms,
                "type": self.event_type,
                "content": self.content,
            }],
        })
    }
}

/// One webhook delivery the simulator made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimDelivery {
    /// What was sent.
    pub event: SimEvent,
    /// The receiver's HTTP status; 0 when no answer came within MagicLine's 5 seconds.
    pub status: u16,
}

/// MagicLine waits this long for a webhook receiver's answer.
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// A lead created through `POST /trial-offers/lead/create`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimLead {
    /// The customer id the lead got.
    pub customer_id: i64,
    /// First name as sent.
    pub firstname: String,
    /// Last name as sent.
    pub lastname: String,
    /// E-mail address as sent.
    pub email: String,
    /// Telephone number, when sent.
    pub telephone: Option<String>,
    /// The trial offer the lead was created for.
    pub trial_offer_config_id: i64,
}

/// Handle of a running simulator. Dropping it stops the server as well.
pub struct MagiclineSim {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Binds 127.0.0.1 on a free port and serves until [`MagiclineSim::shutdown`].
///
/// # Panics
/// If no loopback port can be bound.
pub async fn start(cfg: SimConfig) -> MagiclineSim {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("bind 127.0.0.1 for the MagicLine simulator");
    let addr = listener
        .local_addr()
        .expect("local address of bound socket");
    let shared = Arc::new(Shared {
        state: Mutex::new(State::new(cfg)),
    });
    let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
    let server_shared = Arc::clone(&shared);
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                _ = &mut stop_rx => break,
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let shared = Arc::clone(&server_shared);
                    connections.spawn(async move {
                        let service = service_fn(move |req| {
                            let shared = Arc::clone(&shared);
                            async move { Ok::<_, Infallible>(handle(shared, req).await) }
                        });
                        // Client disconnects (e.g. after a timeout) end the connection; nothing to do.
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        // Late answers may still be sleeping; they are abandoned, not awaited.
        connections.shutdown().await;
    });
    MagiclineSim {
        addr,
        shared,
        stop: Some(stop_tx),
        task: Some(task),
    }
}

impl MagiclineSim {
    /// API root including `/v1`, e.g. `http://127.0.0.1:41234/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The socket address the simulator listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The key the simulator accepts.
    pub fn api_key(&self) -> String {
        self.state().cfg.api_key.clone()
    }

    /// Stops accepting, drops open connections and waits for the server task.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shared)
    }

    // ---- fault injection and behaviour ----

    /// The next `times` requests (any path) get `fault`.
    #[cfg(any(test, feature = "testkit"))]
    pub fn inject(&self, fault: Fault, times: usize) {
        self.push_fault(None, fault, times);
    }

    /// The next `times` requests whose path (after `/v1`) starts with `path_prefix` get `fault`,
    /// e.g. `"/trial-offers/appointments/booking/book"`.
    #[cfg(any(test, feature = "testkit"))]
    pub fn inject_on(&self, path_prefix: &str, fault: Fault, times: usize) {
        self.push_fault(Some(path_prefix.to_string()), fault, times);
    }

    #[cfg(any(test, feature = "testkit"))]
    fn push_fault(&self, prefix: Option<String>, fault: Fault, times: usize) {
        if times > 0 {
            self.state().faults.push(FaultRule {
                prefix,
                fault,
                remaining: times,
            });
        }
    }

    /// Removes all pending faults and forced statuses.
    #[cfg(any(test, feature = "testkit"))]
    pub fn clear_faults(&self) {
        let mut st = self.state();
        st.faults.clear();
        st.forced.clear();
    }

    /// The next `times` booking validations (validate or book, either flow) answer `status`
    /// regardless of the calendar.
    pub fn force_validation_status(&self, status: BookingValidationStatus, times: usize) {
        let mut st = self.state();
        for _ in 0..times {
            st.forced.push_back(status);
        }
    }

    /// Whether trial bookings from now on need the confirm call.
    pub fn set_require_confirmation(&self, on: bool) {
        self.state().cfg.require_confirmation = on;
    }

    /// Fixes the simulator's clock.
    pub fn set_now(&self, now: Timestamp) {
        self.state().cfg.now = Some(now);
    }

    /// The simulator's clock as a function, for clients whose rate-limit blocks should follow
    /// it (tests set the clock instead of waiting).
    pub fn clock(&self) -> impl Fn() -> Timestamp + Send + Sync + 'static {
        let shared = Arc::clone(&self.shared);
        move || lock(&shared).now()
    }

    /// The simulator's current time in the studio's zone.
    pub fn now(&self) -> Zoned {
        let st = self.state();
        st.now().to_zoned(st.tz.clone())
    }

    /// The studio's time zone.
    pub fn time_zone(&self) -> TimeZone {
        self.state().tz.clone()
    }

    /// Fills the slot starting at `start` up to its capacity with bookings of someone else.
    pub fn occupy_slot(&self, appointment_id: i64, start: &Zoned) {
        let mut st = self.state();
        let Some(appt) = st.appointment(appointment_id).cloned() else {
            return;
        };
        let start = start.with_time_zone(st.tz.clone());
        let end = start
            .checked_add(appt.duration_minutes.minutes())
            .expect("slot end in range");
        while st.active_in_slot(appointment_id, &start, &end) < st.cfg.slot_capacity as usize {
            let id = st.next_booking_id();
            st.bookings.push(SimBooking {
                id,
                customer_id: 0,
                appointment_id,
                start: start.clone(),
                end: end.clone(),
                state: SimBookingState::Booked,
                class_slot_id: None,
                trial: false,
                external: true,
            });
        }
    }

    /// Fills every place of the trial class `class_id`'s date at `start` with bookings of
    /// someone else (its waiting list stays open).
    pub fn occupy_class(&self, class_id: i64, start: &Zoned) {
        self.state().occupy_class(class_id, start);
    }

    /// Cancels the bookings of someone else in the slot starting at `start` (staff cancelled
    /// them), so it is free again.
    pub fn free_slot(&self, appointment_id: i64, start: &Zoned) {
        let mut st = self.state();
        for b in st.bookings.iter_mut().filter(|b| {
            b.external
                && b.appointment_id == appointment_id
                && b.start.timestamp() == start.timestamp()
        }) {
            b.state = SimBookingState::Canceled;
        }
    }

    /// Makes MagicLine's own check of lead data refuse this e-mail address: its validation
    /// rules are not published, so a test names an address that passes frontdesk's check but
    /// not MagicLine's. The lead validation then answers `INVALID_LEAD_CUSTOMER_DATA` and a
    /// lead create is rejected, as the spec documents.
    pub fn reject_email(&self, email: &str) {
        self.state()
            .rejected_emails
            .push(email.to_ascii_lowercase());
    }

    /// Adds a registered customer.
    pub fn add_customer(&self, customer: SimCustomer) {
        let mut st = self.state();
        st.customers.push(CustomerRec::member(&customer));
        st.next_customer_id = st.next_customer_id.max(customer.id + 1);
    }

    // ---- inspection ----

    // ---- staff at the desk, and the webhook events that tell of it ----

    /// Staff cancel booking `booking_id` at the desk. The event MagicLine sends about it, or
    /// `None` for an unknown booking.
    pub fn staff_cancel(&self, booking_id: i64) -> Option<SimEvent> {
        let mut st = self.state();
        let now = st.now();
        let b = st.bookings.iter_mut().find(|b| b.id == booking_id)?;
        b.state = SimBookingState::Canceled;
        let event_type = match b.class_slot_id {
            Some(slot) => {
                st.promote_waiting_list(slot);
                "CLASS_BOOKING_CANCELLED"
            }
            None => "APPOINTMENT_BOOKING_CANCELLED",
        };
        Some(SimEvent::new(booking_id, event_type, now))
    }

    /// Staff move booking `booking_id` to `start` (same length) at the desk.
    pub fn staff_move(&self, booking_id: i64, start: &Zoned) -> Option<SimEvent> {
        let mut st = self.state();
        let now = st.now();
        let tz = st.tz.clone();
        let b = st.bookings.iter_mut().find(|b| b.id == booking_id)?;
        let length = b.end.timestamp().duration_since(b.start.timestamp());
        b.start = start.with_time_zone(tz.clone());
        b.end = (start.timestamp() + length).to_zoned(tz);
        Some(SimEvent::new(
            booking_id,
            "APPOINTMENT_BOOKING_UPDATED",
            now,
        ))
    }

    /// Staff move the class date `slot_id` to `start` (same length): every booking of it moves
    /// with it, and MagicLine tells of the date, not of each booking (`CLASS_SLOT_UPDATED`,
    /// the class id in its content). `None` for a date never listed.
    pub fn staff_move_class_date(&self, slot_id: i64, start: &Zoned) -> Option<SimEvent> {
        let mut st = self.state();
        let now = st.now();
        let class_id = st.move_class_date(slot_id, start.timestamp())?;
        let mut event = SimEvent::new(slot_id, "CLASS_SLOT_UPDATED", now);
        event.content = json!({ "classId": class_id });
        Some(event)
    }

    /// Customer `customer_id` checks in at the studio at `at`.
    pub fn check_in(&self, customer_id: i64, at: Timestamp) -> SimEvent {
        let mut st = self.state();
        let id = 1_001 + st.checkins.len() as i64;
        st.checkins.push((customer_id, id, at));
        SimEvent::new(customer_id, "CUSTOMER_CHECKIN", at)
    }

    /// Webhook events go to `url` with `api_key` in `x-api-key` (MagicLine's registration of
    /// the integration's endpoint).
    pub fn set_webhook(&self, url: &str, api_key: &str) {
        self.state().webhook = Some((url.to_string(), api_key.to_string()));
    }

    /// Posts `event` to the configured webhook URL with the configured key, and returns the
    /// receiver's status (0: no answer within [`WEBHOOK_TIMEOUT`] or no URL configured).
    pub async fn send(&self, event: &SimEvent) -> u16 {
        let key = self.state().webhook.as_ref().map(|(_, k)| k.clone());
        self.send_with_key(event, key.as_deref()).await
    }

    /// Like [`MagiclineSim::send`] with another key, or none (what a stranger would post).
    pub async fn send_with_key(&self, event: &SimEvent, api_key: Option<&str>) -> u16 {
        let Some(url) = self.state().webhook.as_ref().map(|(u, _)| u.clone()) else {
            return 0;
        };
        let body = serde_json::to_vec(&event.body()).unwrap_or_default();
        let key = api_key.map(str::to_string);
        let status = tokio::task::spawn_blocking(move || {
            let config = ureq::Agent::config_builder()
                .timeout_global(Some(WEBHOOK_TIMEOUT))
                .http_status_as_error(false)
                .build();
            let agent = ureq::Agent::new_with_config(config);
            let mut req = agent.post(&url).header("content-type", "application/json");
            if let Some(k) = &key {
                req = req.header("x-api-key", k);
            }
            req.send(&body[..]).map_or(0, |r| r.status().as_u16())
        })
        .await
        .unwrap_or(0);
        self.state().deliveries.push(SimDelivery {
            event: event.clone(),
            status,
        });
        status
    }

    /// Every webhook delivery made, in order.
    pub fn deliveries(&self) -> Vec<SimDelivery> {
        self.state().deliveries.clone()
    }

    /// All bookings (including canceled and external ones) in creation order.
    pub fn bookings(&self) -> Vec<SimBooking> {
        self.state().bookings.clone()
    }

    /// Bookings of one customer.
    pub fn bookings_of(&self, customer_id: i64) -> Vec<SimBooking> {
        self.state()
            .bookings
            .iter()
            .filter(|b| b.customer_id == customer_id)
            .cloned()
            .collect()
    }

    /// Leads created through the API.
    pub fn leads(&self) -> Vec<SimLead> {
        self.state().leads.clone()
    }

    /// Book calls (either flow, faulted ones included) that named this customer.
    pub fn book_calls(&self, customer_id: i64) -> usize {
        self.state()
            .book_calls
            .get(&customer_id)
            .copied()
            .unwrap_or(0)
    }

    /// Requests received whose path (after `/v1`) starts with `path_prefix`.
    pub fn request_count(&self, path_prefix: &str) -> usize {
        self.state()
            .requests
            .iter()
            .filter(|(p, _)| p.starts_with(path_prefix))
            .map(|(_, n)| n)
            .sum()
    }

    /// Requests received in total (authorised or not).
    pub fn total_requests(&self) -> usize {
        self.state().requests.values().sum()
    }
}

impl Drop for MagiclineSim {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// State

struct Shared {
    state: Mutex<State>,
}

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    // A panicking handler must not take the whole simulator down with it.
    shared.state.lock().unwrap_or_else(|e| e.into_inner())
}

struct FaultRule {
    prefix: Option<String>,
    fault: Fault,
    remaining: usize,
}

#[derive(Debug, Clone)]
struct CustomerRec {
    id: i64,
    first_name: String,
    last_name: String,
    email: String,
    prospect: bool,
    idle: bool,
    mobile: Option<String>,
}

impl CustomerRec {
    fn member(c: &SimCustomer) -> Self {
        CustomerRec {
            id: c.id,
            first_name: c.first_name.clone(),
            last_name: c.last_name.clone(),
            email: c.email.clone(),
            prospect: false,
            idle: c.idle,
            mobile: c.mobile.clone(),
        }
    }
}

struct State {
    cfg: SimConfig,
    tz: TimeZone,
    customers: Vec<CustomerRec>,
    leads: Vec<SimLead>,
    bookings: Vec<SimBooking>,
    /// Confirmation deadlines of bookings awaiting confirmation.
    deadlines: HashMap<i64, Timestamp>,
    next_customer_id: i64,
    next_booking: i64,
    faults: Vec<FaultRule>,
    forced: VecDeque<BookingValidationStatus>,
    book_calls: HashMap<i64, usize>,
    /// Requests per path (after `/v1`).
    requests: HashMap<String, usize>,
    /// E-mail addresses (lowercase) MagicLine's lead check refuses ([`MagiclineSim::reject_email`]).
    rejected_emails: Vec<String>,
    /// Per endpoint: start of the current minute and requests in it.
    rate_windows: HashMap<&'static str, (Timestamp, u32)>,
    /// Per endpoint: denied with 429 until then (a minute after the limit was exceeded).
    blocked_until: HashMap<&'static str, Timestamp>,
    /// Studio visits: customer id, visit id, check-in time.
    checkins: Vec<(i64, i64, Timestamp)>,
    /// Where webhook events go, and the key sent with them.
    webhook: Option<(String, String)>,
    deliveries: Vec<SimDelivery>,
    /// Ids given to class dates: (class id, start second) → slot id, and back.
    class_slot_ids: HashMap<(i64, i64), i64>,
    class_slots: HashMap<i64, (i64, Timestamp)>,
}

impl State {
    fn new(cfg: SimConfig) -> Self {
        let tz =
            TimeZone::get(&cfg.time_zone).expect("simulator time zone must be a known IANA name");
        let customers: Vec<CustomerRec> = cfg.customers.iter().map(CustomerRec::member).collect();
        let next_customer_id = customers
            .iter()
            .map(|c| c.id + 1)
            .max()
            .unwrap_or(1)
            .max(10_001);
        State {
            tz,
            customers,
            leads: Vec::new(),
            bookings: Vec::new(),
            deadlines: HashMap::new(),
            next_customer_id,
            next_booking: 70_001,
            faults: Vec::new(),
            forced: VecDeque::new(),
            book_calls: HashMap::new(),
            requests: HashMap::new(),
            rejected_emails: Vec::new(),
            rate_windows: HashMap::new(),
            blocked_until: HashMap::new(),
            checkins: Vec::new(),
            webhook: None,
            deliveries: Vec::new(),
            class_slot_ids: HashMap::new(),
            class_slots: HashMap::new(),
            cfg,
        }
    }

    fn now(&self) -> Timestamp {
        self.cfg.now.unwrap_or_else(Timestamp::now)
    }

    fn next_booking_id(&mut self) -> i64 {
        let id = self.next_booking;
        self.next_booking += 1;
        id
    }

    fn new_customer_id(&mut self) -> i64 {
        let id = self.next_customer_id;
        self.next_customer_id += 1;
        id
    }

    fn appointment(&self, id: i64) -> Option<&SimAppointment> {
        if self.cfg.trial_appointment.id == id {
            return Some(&self.cfg.trial_appointment);
        }
        if let Some((_, a)) = self.cfg.more_trial_offers.iter().find(|(_, a)| a.id == id) {
            return Some(a);
        }
        self.cfg.member_appointments.iter().find(|a| a.id == id)
    }

    fn is_trial_appointment(&self, id: i64) -> bool {
        self.cfg.trial_appointment.id == id
            || self.cfg.more_trial_offers.iter().any(|(_, a)| a.id == id)
    }

    fn is_trial_config(&self, id: i64) -> bool {
        self.cfg.trial_offer_config_id == id
            || self.cfg.more_trial_offers.iter().any(|(c, _)| *c == id)
            || self.is_class_config(id)
    }

    fn customer(&self, id: i64) -> Option<&CustomerRec> {
        self.customers.iter().find(|c| c.id == id)
    }

    fn take_fault(&mut self, path: &str) -> Option<Fault> {
        let idx = self.faults.iter().position(|r| {
            r.remaining > 0 && r.prefix.as_deref().is_none_or(|p| path.starts_with(p))
        })?;
        let rule = &mut self.faults[idx];
        rule.remaining -= 1;
        let fault = rule.fault.clone();
        if rule.remaining == 0 {
            self.faults.remove(idx);
        }
        Some(fault)
    }

    /// Whether this request to `route` is denied with 429: inside a blocked minute, or the one
    /// that exceeds the limit (which blocks the endpoint for the next minute).
    fn rate_limited(&mut self, route: &'static str) -> bool {
        let now = self.now();
        if self
            .blocked_until
            .get(route)
            .is_some_and(|until| now < *until)
        {
            return true;
        }
        let Some(limit) = self.cfg.rate_limit_per_minute else {
            return false;
        };
        let window = self.rate_windows.entry(route).or_insert((now, 0));
        if now.duration_since(window.0) >= SignedDuration::from_mins(1) {
            *window = (now, 0);
        }
        window.1 += 1;
        if window.1 > limit {
            self.block_minute(route);
            return true;
        }
        false
    }

    /// Denies every request to `route` for the next minute, as MagicLine does after a 429.
    fn block_minute(&mut self, route: &'static str) {
        let now = self.now();
        let until = now.checked_add(SignedDuration::from_mins(1)).unwrap_or(now);
        self.blocked_until.insert(route, until);
        self.rate_windows.remove(route);
    }

    /// Bookings whose confirmation term has begun unconfirmed are cancelled (the slot is free).
    /// The deadline is kept, so a late confirm call answers `EXPIRED`.
    fn expire_unconfirmed(&mut self) {
        let now = self.now();
        for b in &mut self.bookings {
            if b.state == SimBookingState::AwaitingConfirmation
                && self.deadlines.get(&b.id).is_some_and(|d| now > *d)
            {
                b.state = SimBookingState::Canceled;
            }
        }
    }

    fn opening(&self, weekday: Weekday) -> Option<&OpeningHours> {
        self.cfg.opening_hours.iter().find(|h| h.weekday == weekday)
    }

    fn active_in_slot(&self, appointment_id: i64, start: &Zoned, end: &Zoned) -> usize {
        self.bookings
            .iter()
            .filter(|b| {
                b.appointment_id == appointment_id
                    && b.class_slot_id.is_none()
                    && b.state.holds()
                    && b.start.timestamp() < end.timestamp()
                    && start.timestamp() < b.end.timestamp()
            })
            .count()
    }

    /// Free slots of an appointment type in `[window_start, window_start + days)`.
    fn free_slots(
        &self,
        appt: &SimAppointment,
        window_start: Date,
        days: i64,
    ) -> Vec<(Zoned, Zoned)> {
        let now = self.now();
        let earliest = now.checked_add(self.cfg.min_notice).unwrap_or(now);
        let latest = now
            .checked_add(SignedDuration::from_hours(24 * self.cfg.max_days_ahead))
            .unwrap_or(now);
        let step = SignedDuration::from_mins(appt.duration_minutes.max(1));
        let mut out = Vec::new();
        for offset in 0..days.clamp(0, 366) {
            let Ok(day) = window_start.checked_add(offset.days()) else {
                break;
            };
            let Some(hours) = self.opening(day.weekday()) else {
                continue;
            };
            let Ok(mut start) = day.to_datetime(hours.open).to_zoned(self.tz.clone()) else {
                continue;
            };
            let Ok(close) = day.to_datetime(hours.close).to_zoned(self.tz.clone()) else {
                continue;
            };
            loop {
                let Ok(end) = start.checked_add(step) else {
                    break;
                };
                if end.timestamp() > close.timestamp() {
                    break;
                }
                if start.timestamp() >= earliest
                    && start.timestamp() <= latest
                    && self.active_in_slot(appt.id, &start, &end) < self.cfg.slot_capacity as usize
                {
                    out.push((start.clone(), end.clone()));
                }
                start = end;
            }
        }
        out
    }

    fn instructor_for(&self, start: &Zoned) -> Option<&SimInstructor> {
        if self.cfg.instructors.is_empty() {
            return None;
        }
        let idx =
            (start.timestamp().as_second() / 1800).rem_euclid(self.cfg.instructors.len() as i64);
        self.cfg.instructors.get(idx as usize)
    }

    fn instructors_json(&self, start: &Zoned) -> Value {
        match self.instructor_for(start) {
            Some(i) => json!([{
                "id": i.id, "firstName": i.first_name, "lastName": i.last_name,
                "publicName": i.first_name
            }]),
            None => json!([]),
        }
    }

    fn booking_json(&self, b: &SimBooking) -> Value {
        let appt = self.appointment(b.appointment_id);
        let (booking_status, appointment_status) = match b.state {
            SimBookingState::Booked => ("BOOKED", "PLANNED"),
            SimBookingState::AwaitingConfirmation => {
                ("BOOKED_WITH_CONFIRMATION_REQUIRED", "PLANNED")
            }
            SimBookingState::Canceled | SimBookingState::WaitingList => ("CANCELED", "CANCELED"),
        };
        json!({
            "bookingId": b.id,
            "bookingStatus": booking_status,
            "startDateTime": datetime::format(&b.start),
            "endDateTime": datetime::format(&b.end),
            "title": appt.map(|a| a.title.clone()),
            "duration": appt.map(|a| a.duration_minutes),
            "category": appt.map(|a| a.category.clone()),
            "instructors": self.instructors_json(&b.start),
            "appointmentStatus": appointment_status,
            "participantStatus": if b.state == SimBookingState::Canceled { "NOT_PARTICIPATING" } else { "PARTICIPATING" },
        })
    }

    /// Booking validation as MagicLine documents it; `Err` is an HTTP error answer.
    fn validate_booking(
        &mut self,
        req: &BookingReq,
        trial: bool,
    ) -> Result<BookingValidationStatus, Answer> {
        use BookingValidationStatus as S;
        let Some(appt) = self.appointment(req.appointment_id).cloned() else {
            return Err(Answer::error(
                404,
                "BOOKABLE_APPOINTMENT_NOT_FOUND",
                "Buchbarer Termin nicht gefunden",
            ));
        };
        if trial && !self.is_trial_appointment(appt.id) {
            return Err(Answer::error(
                404,
                "BOOKABLE_APPOINTMENT_NOT_FOUND",
                "Kein Probetraining-Termin",
            ));
        }
        let Some(customer) = self.customer(req.customer_id).cloned() else {
            return Err(Answer::error(
                404,
                "CUSTOMER_NOT_FOUND",
                "Kunde nicht gefunden",
            ));
        };
        if let Some(forced) = self.forced.pop_front() {
            return Ok(forced);
        }
        let now = self.now();
        let start = req.start.with_time_zone(self.tz.clone());
        let end = req.end.with_time_zone(self.tz.clone());
        if end.timestamp() <= start.timestamp() {
            return Ok(S::EndDateTimeNotAfterStartDateTime);
        }
        if start.timestamp() < now {
            return Ok(S::PastStartDateTime);
        }
        if start.timestamp() < now.checked_add(self.cfg.min_notice).unwrap_or(now) {
            return Ok(S::DateTimeBeforeEarliestBookingDateTime);
        }
        let latest = now
            .checked_add(SignedDuration::from_hours(24 * self.cfg.max_days_ahead))
            .unwrap_or(now);
        if start.timestamp() > latest {
            return Ok(S::DateTimeAfterLatestBookingDateTime);
        }
        let Some(hours) = self.opening(start.date().weekday()).cloned() else {
            return Ok(S::StudioClosed);
        };
        if start.date() != end.date() || start.time() < hours.open || end.time() > hours.close {
            return Ok(S::StudioClosed);
        }
        let from_open = start.time().duration_since(hours.open);
        let length = end.timestamp().duration_since(start.timestamp());
        let step = SignedDuration::from_mins(appt.duration_minutes.max(1));
        if length != step
            || from_open.as_secs() % step.as_secs() != 0
            || from_open.subsec_nanos() != 0
        {
            return Ok(S::PeriodDoesNotMatch);
        }
        if customer.idle {
            return Ok(S::CustomerIdle);
        }
        let own: Vec<&SimBooking> = self
            .bookings
            .iter()
            .filter(|b| b.customer_id == customer.id && b.state.holds())
            .collect();
        if own
            .iter()
            .any(|b| b.start.timestamp() < end.timestamp() && start.timestamp() < b.end.timestamp())
        {
            return Ok(S::CustomerInOtherBooking);
        }
        if trial {
            if own.iter().filter(|b| b.trial).count() >= self.cfg.trial_contingent as usize {
                return Ok(S::NoContingent);
            }
        } else if own.iter().filter(|b| b.start.timestamp() >= now).count()
            >= self.cfg.booking_limit as usize
        {
            return Ok(S::BookingLimitReached);
        }
        if self.active_in_slot(appt.id, &start, &end) >= self.cfg.slot_capacity as usize {
            return Ok(S::NotAvailable);
        }
        Ok(S::Available)
    }

    fn book(&mut self, req: &BookingReq, trial: bool) -> Answer {
        match self.validate_booking(req, trial) {
            Err(answer) => answer,
            Ok(BookingValidationStatus::Available) => {
                let id = self.next_booking_id();
                let confirm = trial && self.cfg.require_confirmation;
                let booking = SimBooking {
                    id,
                    customer_id: req.customer_id,
                    appointment_id: req.appointment_id,
                    start: req.start.with_time_zone(self.tz.clone()),
                    end: req.end.with_time_zone(self.tz.clone()),
                    state: if confirm {
                        SimBookingState::AwaitingConfirmation
                    } else {
                        SimBookingState::Booked
                    },
                    class_slot_id: None,
                    trial,
                    external: false,
                };
                if confirm {
                    // The term is measured back from the start, not forward from the booking.
                    let start = booking.start.timestamp();
                    let deadline = start
                        .checked_sub(self.cfg.confirmation_term)
                        .unwrap_or(start);
                    self.deadlines.insert(id, deadline);
                }
                let body = self.booking_json(&booking);
                self.bookings.push(booking);
                Answer::ok(body)
            }
            // The spec documents validation statuses only on the validate calls; a rejected book
            // call carries a translation key, which clients must not read as a status.
            Ok(_) => Answer::error(
                400,
                "error.appointment.booking.not.possible",
                "Buchung nicht möglich",
            ),
        }
    }

    fn lead_status(&self, body: &Value) -> Result<&'static str, Answer> {
        let config_id = body.get("trialOfferConfigId").and_then(Value::as_i64);
        if !config_id.is_some_and(|id| self.is_trial_config(id)) {
            return Err(Answer::error(
                404,
                "TRIAL_OFFER_CONFIG_NOT_FOUND",
                "Probeangebot nicht gefunden",
            ));
        }
        let Some(lead) = body.get("leadCustomerData").filter(|v| v.is_object()) else {
            return Ok("INVALID_LEAD_CUSTOMER_DATA");
        };
        let text = |k: &str| {
            lead.get(k)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
        };
        let (Some(_), Some(_), Some(email)) = (text("firstname"), text("lastname"), text("email"))
        else {
            return Ok("INVALID_LEAD_CUSTOMER_DATA");
        };
        if !plausible_email(email) || self.rejected_emails.contains(&email.to_ascii_lowercase()) {
            return Ok("INVALID_LEAD_CUSTOMER_DATA");
        }
        let present = |k: &str| lead.get(k).is_some_and(|v| !v.is_null());
        let mandatory = [
            (self.cfg.gender_mode, "gender"),
            (self.cfg.date_of_birth_mode, "dateOfBirth"),
            (self.cfg.telephone_mode, "telephone"),
            (self.cfg.address_mode, "address"),
        ];
        if mandatory
            .iter()
            .any(|(mode, key)| *mode == FieldMode::Mandatory && !present(key))
        {
            return Ok("INVALID_LEAD_CUSTOMER_DATA");
        }
        if let Some(g) = lead.get("gender").filter(|v| !v.is_null()) {
            if !matches!(g.as_str(), Some("MALE" | "FEMALE" | "UNISEX")) {
                return Ok("INVALID_LEAD_CUSTOMER_DATA");
            }
        }
        if let Some(d) = lead.get("dateOfBirth").filter(|v| !v.is_null()) {
            if d.as_str().and_then(|s| s.parse::<Date>().ok()).is_none() {
                return Ok("INVALID_LEAD_CUSTOMER_DATA");
            }
        }
        if let Some(a) = lead.get("address").filter(|v| !v.is_null()) {
            let ok = ["street", "zipCode", "city"].iter().all(|k| {
                a.get(*k)
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.trim().is_empty())
            });
            if !ok {
                return Ok("INVALID_LEAD_CUSTOMER_DATA");
            }
        }
        if self
            .customers
            .iter()
            .any(|c| c.email.eq_ignore_ascii_case(email))
        {
            return Ok("DUPLICATE_CUSTOMER");
        }
        Ok("POSSIBLE")
    }

    fn create_lead(&mut self, body: &Value) -> Answer {
        match self.lead_status(body) {
            Err(a) => a,
            Ok("POSSIBLE") => {
                let lead = &body["leadCustomerData"];
                let s = |k: &str| {
                    lead.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .trim()
                        .to_string()
                };
                let id = self.new_customer_id();
                self.customers.push(CustomerRec {
                    id,
                    first_name: s("firstname"),
                    last_name: s("lastname"),
                    email: s("email"),
                    prospect: true,
                    idle: false,
                    // MagicLine keeps a lead's telephone as its private mobile number.
                    mobile: lead
                        .get("telephone")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                });
                self.leads.push(SimLead {
                    customer_id: id,
                    firstname: s("firstname"),
                    lastname: s("lastname"),
                    email: s("email"),
                    telephone: lead
                        .get("telephone")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    trial_offer_config_id: body["trialOfferConfigId"].as_i64().unwrap_or(0),
                });
                Answer::ok(json!({ "leadCustomerId": id }))
            }
            Ok(_) => Answer::error(
                400,
                "error.lead.customer.creation.not.possible",
                "Lead kann nicht angelegt werden",
            ),
        }
    }

    fn confirm(&mut self, booking_id: i64) -> Answer {
        let now = self.now();
        let deadline = self.deadlines.get(&booking_id).copied();
        let Some(b) = self
            .bookings
            .iter_mut()
            .find(|b| b.id == booking_id && b.trial)
        else {
            return Answer::error(404, "BOOKING_NOT_FOUND", "Buchung nicht gefunden");
        };
        let status = match b.state {
            SimBookingState::Booked => "CONFIRMED",
            SimBookingState::WaitingList => {
                return Answer::error(
                    400,
                    "error.booking.waiting.list",
                    "Buchung steht auf der Warteliste",
                )
            }
            SimBookingState::Canceled if deadline.is_some_and(|d| now > d) => "EXPIRED",
            SimBookingState::Canceled => {
                return Answer::error(400, "error.booking.canceled", "Buchung wurde storniert")
            }
            SimBookingState::AwaitingConfirmation => {
                if deadline.is_some_and(|d| now > d) {
                    b.state = SimBookingState::Canceled;
                    "EXPIRED"
                } else {
                    b.state = SimBookingState::Booked;
                    "CONFIRMED"
                }
            }
        };
        Answer::ok(json!({ "status": status }))
    }

    fn customer_json(c: &CustomerRec) -> Value {
        json!({
            "id": c.id,
            "customerNumber": format!("1-{}", c.id),
            "firstName": c.first_name,
            "lastName": c.last_name,
            "email": c.email,
            "phonePrivateMobile": c.mobile,
            "status": if c.prospect { "PROSPECT" } else { "MEMBER" },
            "accessRefusal": false,
            "preferredLanguage": { "languageCode": "de", "countryCode": "DE" },
        })
    }

    fn search(&self, body: &Value) -> Answer {
        let field = |k: &str| {
            body.get(k)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
        };
        let (email, first, last) = (field("email"), field("firstName"), field("lastName"));
        if email.is_none() && first.is_none() && last.is_none() {
            return Answer::error(
                400,
                "SEARCH_CRITERIA_MISSING",
                "Mindestens ein Suchkriterium angeben",
            );
        }
        let starts =
            |value: &str, prefix: &str| value.to_lowercase().starts_with(&prefix.to_lowercase());
        let hits: Vec<Value> = self
            .customers
            .iter()
            .filter(|c| email.is_none_or(|e| c.email.eq_ignore_ascii_case(e)))
            .filter(|c| first.is_none_or(|f| starts(&c.first_name, f)))
            .filter(|c| last.is_none_or(|l| starts(&c.last_name, l)))
            .map(Self::customer_json)
            .collect();
        Answer::ok(Value::Array(hits))
    }

    fn page(&self, items: Vec<(i64, Value)>, query: &HashMap<String, String>) -> Answer {
        let after: Option<i64> = query.get("offset").and_then(|o| o.parse().ok());
        let size = query
            .get("sliceSize")
            .and_then(|s| s.parse::<usize>().ok())
            .unwrap_or(self.cfg.max_slice_size)
            .clamp(1, self.cfg.max_slice_size.max(1));
        let mut items = items;
        items.sort_by_key(|(id, _)| *id);
        let rest: Vec<(i64, Value)> = items
            .into_iter()
            .filter(|(id, _)| after.is_none_or(|a| *id > a))
            .collect();
        let has_next = rest.len() > size;
        let slice: Vec<(i64, Value)> = rest.into_iter().take(size).collect();
        let offset = slice
            .last()
            .map(|(id, _)| id.to_string())
            .or_else(|| query.get("offset").cloned())
            .unwrap_or_default();
        Answer::ok(json!({
            "result": slice.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
            "hasNext": has_next,
            "offset": offset,
        }))
    }

    /// A customer's visits from `fromDate` to `toDate` (studio days, inclusive; default the
    /// month up to today; at most 365 days apart), paged.
    fn checkins_page(&self, customer_id: i64, query: &HashMap<String, String>) -> Answer {
        if self.customer(customer_id).is_none() {
            return Answer::error(404, "CUSTOMER_NOT_FOUND", "Kunde nicht gefunden");
        }
        let today = self.now().to_zoned(self.tz.clone()).date();
        let day = |key: &str, default: Date| match query.get(key) {
            Some(v) => v.parse::<Date>().map_err(|_| ()),
            None => Ok(default),
        };
        let month_ago = today.checked_sub(1.month()).unwrap_or(today);
        let (Ok(from), Ok(to)) = (day("fromDate", month_ago), day("toDate", today)) else {
            return Answer::error(400, "INVALID_PARAMETER", "Ungültiges Datum");
        };
        if to < from || from.until(to).map_or(true, |span| span.get_days() > 365) {
            return Answer::error(400, "INVALID_DATE_RANGE", "Zeitraum ungültig");
        }
        let items = self
            .checkins
            .iter()
            .filter(|(c, _, at)| {
                let d = at.to_zoned(self.tz.clone()).date();
                *c == customer_id && from <= d && d <= to
            })
            .map(|(_, id, at)| {
                let zoned = at.to_zoned(self.tz.clone());
                (
                    *id,
                    json!({
                        "checkinId": id,
                        "checkInDateTime": zoned.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string(),
                        "studioId": 1,
                        "studioName": "Simulated studio",
                    }),
                )
            })
            .collect();
        self.page(items, query)
    }

    fn appointment_json(a: &SimAppointment) -> Value {
        json!({
            "id": a.id, "title": a.title, "duration": a.duration_minutes,
            "category": a.category, "description": format!("{} im Studio", a.title),
        })
    }

    fn slots(&self, appt_id: i64, trial: bool, query: &HashMap<String, String>) -> Answer {
        let appt = match self.appointment(appt_id) {
            Some(a) if !trial || self.is_trial_appointment(a.id) => a.clone(),
            _ => {
                return Answer::error(
                    404,
                    "BOOKABLE_APPOINTMENT_NOT_FOUND",
                    "Buchbarer Termin nicht gefunden",
                )
            }
        };
        if let Some(c) = query.get("customerId") {
            match c.parse::<i64>() {
                Ok(id) if self.customer(id).is_some() => {}
                Ok(_) => return Answer::error(404, "CUSTOMER_NOT_FOUND", "Kunde nicht gefunden"),
                Err(_) => return Answer::error(400, "INVALID_PARAMETER", "customerId ungültig"),
            }
        }
        let days = match query.get("daysAhead").map(|d| d.parse::<i64>()) {
            None => self.cfg.default_days_ahead,
            Some(Ok(d)) if (1..=MAX_DAYS_AHEAD).contains(&d) => d,
            Some(_) => {
                return Answer::invalid("daysAhead", "daysAhead muss zwischen 1 und 6 liegen")
            }
        };
        let today = self.now().to_zoned(self.tz.clone()).date();
        let window_start = match query.get("slotWindowStartDate") {
            None => today,
            Some(s) => match s
                .parse::<Date>()
                .ok()
                .or_else(|| datetime::parse(s).ok().map(|z| z.date()))
            {
                Some(d) => d,
                None => {
                    return Answer::error(400, "INVALID_PARAMETER", "slotWindowStartDate ungültig")
                }
            },
        };
        let slots: Vec<Value> = self
            .free_slots(&appt, window_start, days)
            .into_iter()
            .map(|(s, e)| {
                json!({
                    "startDateTime": datetime::format(&s),
                    "endDateTime": datetime::format(&e),
                    "instructors": self.instructors_json(&s),
                })
            })
            .collect();
        Answer::ok(Value::Array(slots))
    }
}

/// Largest `daysAhead` a slot query may ask for.
pub const MAX_DAYS_AHEAD: i64 = 6;

fn plausible_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !email.chars().any(char::is_whitespace)
}

struct BookingReq {
    customer_id: i64,
    appointment_id: i64,
    start: Zoned,
    end: Zoned,
}

impl BookingReq {
    fn parse(body: &Value) -> Result<BookingReq, Answer> {
        let int = |k: &str| body.get(k).and_then(Value::as_i64);
        let time = |k: &str| body.get(k).and_then(Value::as_str).map(datetime::parse);
        let (Some(customer_id), Some(appointment_id)) =
            (int("customerId"), int("bookableAppointmentId"))
        else {
            return Err(Answer::error(
                400,
                "INVALID_REQUEST",
                "customerId und bookableAppointmentId erforderlich",
            ));
        };
        match (time("startDateTime"), time("endDateTime")) {
            (Some(Ok(start)), Some(Ok(end))) => Ok(BookingReq {
                customer_id,
                appointment_id,
                start,
                end,
            }),
            _ => Err(Answer::error(
                400,
                "INVALID_DATE_TIME",
                "startDateTime/endDateTime ungültig",
            )),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP

type SimBody = BoxBody<Bytes, Infallible>;

/// A response before fault post-processing.
struct Answer {
    status: u16,
    body: Value,
}

impl Answer {
    fn ok(body: Value) -> Answer {
        Answer { status: 200, body }
    }

    /// 400 for a request parameter that breaks the spec, naming it in `reference`.
    fn invalid(reference: &str, message: &str) -> Answer {
        let mut a = Answer::error(400, "error.validation.failed", message);
        a.body["reference"] = Value::String(reference.to_string());
        a
    }

    fn error(status: u16, code: &str, message: &str) -> Answer {
        let trace: u64 = rand::thread_rng().gen();
        Answer {
            status,
            body: json!({
                "errorMessage": message,
                "errorCode": code,
                "traceId": format!("{trace:016x}"),
            }),
        }
    }
}

fn respond(status: u16, body: SimBody) -> Response<SimBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn full(bytes: Vec<u8>) -> SimBody {
    Full::new(Bytes::from(bytes)).boxed()
}

/// A body that sends its first part at once and the rest after a pause.
struct StalledBody {
    head: Option<Bytes>,
    pause: Pin<Box<tokio::time::Sleep>>,
    tail: Option<Bytes>,
}

impl Body for StalledBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(head) = self.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        if self.tail.is_none() {
            return Poll::Ready(None);
        }
        match self.pause.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => Poll::Ready(self.tail.take().map(|t| Ok(Frame::data(t)))),
        }
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<SimBody> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query().unwrap_or(""));
    let key_ok = {
        let st = lock(&shared);
        req.headers()
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|k| k == st.cfg.api_key)
    };
    let body_bytes = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let api_path = path.strip_prefix("/v1").unwrap_or("").to_string();

    let (answer, fault) = {
        let mut st = lock(&shared);
        *st.requests.entry(api_path.clone()).or_default() += 1;
        let body: Option<Value> = serde_json::from_slice(&body_bytes).ok();
        if method == Method::POST && api_path.ends_with("/booking/book") {
            if let Some(c) = body
                .as_ref()
                .and_then(|b| b.get("customerId"))
                .and_then(Value::as_i64)
            {
                *st.book_calls.entry(c).or_default() += 1;
            }
        }
        if method == Method::HEAD {
            // HEAD checks the key only: no business logic, no lookup of the resource.
            let status = if key_ok { 200 } else { 401 };
            return respond(status, full(Vec::new()));
        }
        if !key_ok {
            (
                Answer::error(401, "UNAUTHORIZED", "Ungültiger API-Schlüssel"),
                None,
            )
        } else {
            match st.take_fault(&api_path) {
                Some(Fault::Status(code)) => {
                    if code == 429 {
                        // An injected 429 blocks the endpoint like a real one.
                        let segments: Vec<&str> = api_path.trim_matches('/').split('/').collect();
                        st.block_minute(route_name(&method, &segments));
                    }
                    (fault_status_answer(code), None)
                }
                other => (route(&mut st, &method, &api_path, &query, body), other),
            }
        }
    };

    let bytes = serde_json::to_vec(&answer.body).unwrap_or_default();
    match fault {
        Some(Fault::MalformedJson) => {
            let cut = bytes.len() / 2;
            respond(200, full(bytes[..cut].to_vec()))
        }
        Some(Fault::SlowBody(pause)) => {
            let cut = bytes.len() / 2;
            let body = StalledBody {
                head: Some(Bytes::copy_from_slice(&bytes[..cut])),
                pause: Box::pin(tokio::time::sleep(pause)),
                tail: Some(Bytes::copy_from_slice(&bytes[cut..])),
            };
            respond(answer.status, body.boxed())
        }
        Some(Fault::LateAnswer(delay)) => {
            tokio::time::sleep(delay).await;
            respond(answer.status, full(bytes))
        }
        Some(Fault::Status(_)) | None => respond(answer.status, full(bytes)),
    }
}

fn fault_status_answer(code: u16) -> Answer {
    match code {
        429 => too_many_requests(),
        503 => Answer::error(
            503,
            "SERVICE_UNAVAILABLE",
            "Dienst vorübergehend nicht verfügbar",
        ),
        c if c >= 500 => Answer::error(c, "INTERNAL_SERVER_ERROR", "Interner Fehler"),
        c => Answer::error(c, "INJECTED_ERROR", "Fehler"),
    }
}

fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Some((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Dispatches one authorised request to the endpoint logic.
#[expect(
    clippy::too_many_lines,
    reason = "the simulated API as one table of method and path to endpoint, read like the spec"
)]
fn route(
    st: &mut State,
    method: &Method,
    path: &str,
    query: &HashMap<String, String>,
    body: Option<Value>,
) -> Answer {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let route_name: &'static str = route_name(method, &segments);
    if route_name == "unknown" {
        return Answer::error(404, "NOT_FOUND", "Unbekannter Endpunkt");
    }
    if st.rate_limited(route_name) {
        return too_many_requests();
    }
    if route_scope(route_name).is_some_and(|scope| st.cfg.missing_scopes.contains(&scope)) {
        return Answer::error(
            403,
            "error.permission.denied",
            "Keine Berechtigung für diese Ressource",
        );
    }
    st.expire_unconfirmed();
    let needs_body = *method == Method::POST && !route_name.ends_with("confirm");
    let body = match body {
        Some(b) => b,
        None if needs_body => {
            return Answer::error(400, "INVALID_REQUEST", "Ungültiger JSON-Body");
        }
        None => Value::Null,
    };
    let id_at = |i: usize| segments.get(i).and_then(|s| s.parse::<i64>().ok());
    match route_name {
        "trial.appointments" => {
            let offers = std::iter::once((st.cfg.trial_offer_config_id, &st.cfg.trial_appointment))
                .chain(st.cfg.more_trial_offers.iter().map(|(c, a)| (*c, a)));
            let items = offers
                .map(|(config_id, t)| {
                    let item = json!({
                        "id": config_id,
                        "trialOfferConfigId": config_id,
                        "trialOfferBookableAppointment": State::appointment_json(t),
                    });
                    (t.id, item)
                })
                .collect();
            st.page(items, query)
        }
        "trial.slots" => match id_at(4) {
            Some(id) => st.slots(id, true, query),
            None => Answer::error(400, "INVALID_PARAMETER", "Ungültige ID"),
        },
        "trial.config" => match id_at(2) {
            Some(id) if st.is_trial_config(id) => {
                let c = &st.cfg;
                Answer::ok(json!({
                    "id": id,
                    "name": "Probetraining",
                    "preventMultipleBookingsTerm": { "value": 6, "unit": "MONTH" },
                    "contingent": c.trial_contingent,
                    "confirmationOfBookingTerm": if c.require_confirmation {
                        json!({ "value": c.confirmation_term.as_secs() / 60, "unit": "MINUTES" })
                    } else { Value::Null },
                    "allowBookingForLeads": true,
                    "leadDataConfig": {
                        "trialOfferLeadDataConfigId": 1,
                        "genderMode": c.gender_mode,
                        "dateOfBirthMode": c.date_of_birth_mode,
                        "telephoneMode": c.telephone_mode,
                        "addressMode": c.address_mode,
                    }
                }))
            }
            _ => Answer::error(
                404,
                "TRIAL_OFFER_CONFIG_NOT_FOUND",
                "Probeangebot nicht gefunden",
            ),
        },
        "trial.lead.validate" => match st.lead_status(&body) {
            Ok(status) => Answer::ok(json!({ "validationStatus": status })),
            Err(a) => a,
        },
        "trial.lead.create" => st.create_lead(&body),
        "trial.booking.validate" | "appointments.validate" => {
            let trial = route_name.starts_with("trial");
            match BookingReq::parse(&body).and_then(|r| st.validate_booking(&r, trial)) {
                Ok(status) => Answer::ok(json!({ "validationStatus": status.as_str() })),
                Err(a) => a,
            }
        }
        "trial.booking.book" | "appointments.book" => {
            let trial = route_name.starts_with("trial");
            match BookingReq::parse(&body) {
                Ok(r) => st.book(&r, trial),
                Err(a) => a,
            }
        }
        "trial.confirm" => match id_at(2) {
            Some(id) => st.confirm(id),
            None => Answer::error(400, "INVALID_PARAMETER", "Ungültige ID"),
        },
        "appointments.bookable" => {
            let items = st
                .cfg
                .member_appointments
                .iter()
                .map(|a| (a.id, State::appointment_json(a)))
                .collect();
            st.page(items, query)
        }
        "appointments.slots" => match id_at(2) {
            Some(id) => st.slots(id, false, query),
            None => Answer::error(400, "INVALID_PARAMETER", "Ungültige ID"),
        },
        "appointments.bookings" => {
            let Some(customer_id) = query.get("customerId").and_then(|c| c.parse::<i64>().ok())
            else {
                return Answer::error(400, "INVALID_PARAMETER", "customerId erforderlich");
            };
            if st.customer(customer_id).is_none() {
                return Answer::error(404, "CUSTOMER_NOT_FOUND", "Kunde nicht gefunden");
            }
            let now = st.now();
            let span = SignedDuration::from_hours(24 * 14);
            let from = now.checked_sub(span).unwrap_or(now);
            let to = now.checked_add(span).unwrap_or(now);
            let list: Vec<Value> = st
                .bookings
                .iter()
                .filter(|b| b.customer_id == customer_id && b.class_slot_id.is_none())
                .filter(|b| b.start.timestamp() >= from && b.start.timestamp() <= to)
                .map(|b| st.booking_json(b))
                .collect();
            Answer::ok(Value::Array(list))
        }
        "appointments.booking" => {
            let Some(id) = id_at(2) else {
                return Answer::error(400, "INVALID_PARAMETER", "Ungültige ID");
            };
            match st
                .bookings
                .iter()
                .find(|b| b.id == id && !b.external && b.class_slot_id.is_none())
            {
                Some(b) => {
                    let mut v = st.booking_json(b);
                    v["customerId"] = json!(b.customer_id);
                    Answer::ok(v)
                }
                None => Answer::error(404, "BOOKING_NOT_FOUND", "Buchung nicht gefunden"),
            }
        }
        "customers.checkins" => match id_at(1) {
            Some(id) => st.checkins_page(id, query),
            None => Answer::error(400, "INVALID_PARAMETER", "Ungültige ID"),
        },
        "appointments.cancel" => {
            let Some(id) = id_at(2) else {
                return Answer::error(400, "INVALID_PARAMETER", "Ungültige ID");
            };
            match st
                .bookings
                .iter_mut()
                .find(|b| b.id == id && !b.external && b.class_slot_id.is_none())
            {
                Some(b) => {
                    b.state = SimBookingState::Canceled;
                    Answer::ok(json!({ "success": "true" }))
                }
                None => Answer::error(404, "BOOKING_NOT_FOUND", "Buchung nicht gefunden"),
            }
        }
        "customers.search" => st.search(&body),
        "trial.classes" => st.trial_classes_page(query),
        "trial.class.slots" => match id_at(3) {
            Some(id) => st.trial_class_slots_page(id, query),
            None => Answer::error(400, "INVALID_PARAMETER", "Ungültige ID"),
        },
        "trial.class.validate" => match st.validate_class(&body) {
            Ok((status, _, _)) => Answer::ok(json!({ "validationStatus": status.as_str() })),
            Err(a) => a,
        },
        "trial.class.book" => st.book_class(&body),
        "classes.bookings" => st.class_bookings_of(query),
        "classes.slot" => match (id_at(1), id_at(3)) {
            (Some(class_id), Some(slot_id)) => st.class_slot(class_id, slot_id),
            _ => Answer::error(400, "INVALID_PARAMETER", "Ungültige ID"),
        },
        "classes.booking" | "classes.cancel" => match id_at(2) {
            Some(id) if route_name == "classes.booking" => st.class_booking(id),
            Some(id) => st.cancel_class(id),
            None => Answer::error(400, "INVALID_PARAMETER", "Ungültige ID"),
        },
        _ => Answer::error(404, "NOT_FOUND", "Unbekannter Endpunkt"),
    }
}

fn too_many_requests() -> Answer {
    Answer::error(429, "error.rate.limit.exceeded", "Zu viele Anfragen")
}

/// The scope the key needs for an endpoint.
fn route_scope(route: &str) -> Option<SimScope> {
    Some(match route {
        "trial.appointments" | "trial.slots" | "trial.config" | "trial.classes"
        | "trial.class.slots" => SimScope::TrialOffersRead,
        "trial.lead.validate"
        | "trial.lead.create"
        | "trial.booking.validate"
        | "trial.booking.book"
        | "trial.class.validate"
        | "trial.class.book"
        | "trial.confirm" => SimScope::TrialOffersWrite,
        "classes.bookings" | "classes.booking" | "classes.slot" => SimScope::ClassesRead,
        "classes.cancel" => SimScope::ClassesWrite,
        "appointments.bookable"
        | "appointments.slots"
        | "appointments.bookings"
        | "appointments.booking" => SimScope::BookableAppointmentsRead,
        "appointments.validate" | "appointments.book" | "appointments.cancel" => {
            SimScope::AppointmentsWrite
        }
        "customers.search" | "customers.checkins" => SimScope::CustomersRead,
        _ => return None,
    })
}

/// Endpoint name of a request (also the key of its rate-limit window).
fn route_name(method: &Method, s: &[&str]) -> &'static str {
    let m = method.as_str();
    match (m, s) {
        ("GET", ["trial-offers", "bookable-trial-offers", "appointments", "bookable"]) => {
            "trial.appointments"
        }
        (
            "GET",
            ["trial-offers", "bookable-trial-offers", "appointments", "bookable", _, "slots"],
        ) => "trial.slots",
        ("GET", ["trial-offers", "config", _]) => "trial.config",
        ("POST", ["trial-offers", "lead", "validate"]) => "trial.lead.validate",
        ("POST", ["trial-offers", "lead", "create"]) => "trial.lead.create",
        ("POST", ["trial-offers", "appointments", "booking", "validate"]) => {
            "trial.booking.validate"
        }
        ("POST", ["trial-offers", "appointments", "booking", "book"]) => "trial.booking.book",
        ("POST", ["trial-offers", "bookings", _, "confirm"]) => "trial.confirm",
        ("GET", ["appointments", "bookable"]) => "appointments.bookable",
        ("GET", ["appointments", "bookable", _, "slots"]) => "appointments.slots",
        ("POST", ["appointments", "bookable", "validate"]) => "appointments.validate",
        ("POST", ["appointments", "booking", "book"]) => "appointments.book",
        ("GET", ["appointments", "booking"]) => "appointments.bookings",
        ("GET", ["appointments", "booking", _]) => "appointments.booking",
        ("GET", ["customers", _, "activities", "checkins"]) => "customers.checkins",
        ("DELETE", ["appointments", "booking", _]) => "appointments.cancel",
        ("POST", ["customers", "search"]) => "customers.search",
        ("GET", ["trial-offers", "bookable-trial-offers", "classes"]) => "trial.classes",
        ("GET", ["trial-offers", "bookable-trial-offers", "classes", _, "slots"]) => {
            "trial.class.slots"
        }
        ("POST", ["trial-offers", "classes", "booking", "validate"]) => "trial.class.validate",
        ("POST", ["trial-offers", "classes", "booking", "book"]) => "trial.class.book",
        ("GET", ["classes", "booking"]) => "classes.bookings",
        ("GET", ["classes", "booking", _]) => "classes.booking",
        ("GET", ["classes", _, "slots", _]) => "classes.slot",
        ("DELETE", ["classes", "booking", _]) => "classes.cancel",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::magicline::api::{
        BookingRequest, BookingStatus, BookingValidationStatus as S, ConfirmationStatus,
        CustomerStatus, LeadCustomerData, LeadRequest, LeadValidationStatus, SlotQuery,
    };
    use crate::magicline::client::{Client, Error, RetryPolicy};
    use jiff::civil::date;

    const BERLIN: &str = "Europe/Berlin";

    /// A running simulator on its own runtime; the client blocks on the test thread.
    pub(super) struct Harness {
        rt: tokio::runtime::Runtime,
        sim: Option<MagiclineSim>,
        pub(super) client: Client,
    }

    impl Harness {
        pub(super) fn new(cfg: SimConfig) -> Harness {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let sim = rt.block_on(start(cfg));
            let client = client_for(&sim, Duration::from_secs(10));
            Harness {
                rt,
                sim: Some(sim),
                client,
            }
        }

        pub(super) fn sim(&self) -> &MagiclineSim {
            self.sim.as_ref().unwrap()
        }
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            if let Some(sim) = self.sim.take() {
                self.rt.block_on(sim.shutdown());
            }
        }
    }

    fn client_for(sim: &MagiclineSim, timeout: Duration) -> Client {
        Client::new(&sim.base_url(), sim.api_key(), timeout)
            .with_retry_policy(RetryPolicy {
                max_attempts: 4,
                base_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(5),
            })
            .with_clock(Arc::new(sim.clock()))
    }

    /// Monday 2030-06-03 09:00 in Berlin.
    pub(super) fn monday_nine() -> Timestamp {
        date(2030, 6, 3)
            .at(9, 0, 0, 0)
            .in_tz(BERLIN)
            .unwrap()
            .timestamp()
    }

    fn cfg() -> SimConfig {
        SimConfig {
            now: Some(monday_nine()),
            ..SimConfig::default()
        }
    }

    /// Berlin wall-clock time `days` after Monday 2030-06-03.
    fn at(days: i64, hour: i8, minute: i8) -> Zoned {
        date(2030, 6, 3)
            .checked_add(days.days())
            .unwrap()
            .at(hour, minute, 0, 0)
            .in_tz(BERLIN)
            .unwrap()
    }

    fn req(customer: i64, appointment: i64, start: Zoned, minutes: i64) -> BookingRequest {
        let end = start.checked_add(minutes.minutes()).unwrap();
        BookingRequest {
            customer_id: customer,
            bookable_appointment_id: appointment,
            start_date_time: start,
            end_date_time: end,
            instructor_ids: vec![],
        }
    }

    fn lead(first: &str, email: &str) -> LeadRequest {
        LeadRequest {
            lead_customer_data: LeadCustomerData::new(first, "Mustermann", email),
            trial_offer_config_id: 1,
        }
    }

    const ERIKA: i64 = 501;
    const JONAS: i64 = 502;
    const EMS: i64 = 2001;
    const PT: i64 = 2002;
    const TRIAL: i64 = 1001;

    #[test]
    fn trial_lead_flow_end_to_end() {
        let h = Harness::new(cfg());
        let c = &h.client;
        let offers = c.trial_offer_appointments().unwrap();
        assert_eq!(offers.len(), 1);
        assert_eq!(offers[0].trial_offer_config_id, 1);
        let appt = &offers[0].trial_offer_bookable_appointment;
        assert_eq!((appt.id, appt.duration), (TRIAL, Some(30)));

        let config = c.trial_offer_config(1).unwrap();
        assert_eq!(config.lead_data_config.telephone_mode, FieldMode::Optional);
        assert_eq!(
            config.lead_data_config.date_of_birth_mode,
            FieldMode::Inactive
        );
        assert_eq!(config.contingent, Some(1));

        let request = lead("Max", "max.mustermann@example.org");
        assert_eq!(
            c.validate_lead(&request).unwrap(),
            LeadValidationStatus::Possible
        );
        let lead_id = c.create_lead(&request).unwrap();
        let leads = h.sim().leads();
        assert_eq!(leads.len(), 1);
        assert_eq!(leads[0].customer_id, lead_id);
        assert_eq!(leads[0].email, "max.mustermann@example.org");

        let query = SlotQuery {
            customer_id: Some(lead_id),
            days_ahead: Some(1),
            window_start: Some(date(2030, 6, 3)),
        };
        let slots = c.trial_offer_slots(TRIAL, &query).unwrap();
        // Monday 10:00 (one hour notice) to the last 30-minute slot before 21:00.
        assert_eq!(slots.len(), 22);
        assert_eq!(
            datetime::format(&slots[0].start_date_time),
            "2030-06-03T10:00:00.000+02:00[Europe/Berlin]"
        );
        assert_eq!(
            datetime::format(&slots[21].end_date_time),
            "2030-06-03T21:00:00.000+02:00[Europe/Berlin]"
        );
        assert!(!slots[0].instructors.is_empty());

        let booking_req = BookingRequest::for_slot(lead_id, TRIAL, &slots[0]);
        assert_eq!(
            c.validate_trial_booking(&booking_req).unwrap(),
            S::Available
        );
        let booking = c.book_trial(&booking_req).unwrap();
        assert_eq!(booking.booking_status, BookingStatus::Booked);
        assert_eq!(
            datetime::format(&booking.start_date_time),
            datetime::format(&slots[0].start_date_time)
        );

        let listed = c.customer_bookings(lead_id).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].booking_id, booking.booking_id);
        assert!(listed[0].is_active());

        let after = c.trial_offer_slots(TRIAL, &query).unwrap();
        assert_eq!(after.len(), 21);
        assert!(after
            .iter()
            .all(|s| s.start_date_time.timestamp() != slots[0].start_date_time.timestamp()));
        assert_eq!(
            c.validate_trial_booking(&booking_req).unwrap(),
            S::CustomerInOtherBooking
        );
    }

    #[test]
    fn registered_customer_flow_end_to_end() {
        let h = Harness::new(cfg());
        let c = &h.client;
        let found = c
            .find_customers_by_email("ERIKA.Musterfrau@example.org")
            .unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].id, found[0].status),
            (ERIKA, CustomerStatus::Member)
        );
        assert!(c
            .find_customers_by_email("nobody@example.org")
            .unwrap()
            .is_empty());

        let types = c.bookable_appointments().unwrap();
        let ids: Vec<i64> = types.iter().map(|a| a.id).collect();
        assert_eq!(ids, vec![TRIAL, EMS, PT]);

        let query = SlotQuery {
            customer_id: Some(ERIKA),
            days_ahead: Some(1),
            window_start: Some(date(2030, 6, 4)),
        };
        let slots = c.appointment_slots(PT, &query).unwrap();
        assert_eq!(slots.len(), 13, "Tuesday 08:00..21:00 in hours");
        assert_eq!(
            slots[0].start_date_time.time(),
            jiff::civil::time(8, 0, 0, 0)
        );

        let r = BookingRequest::for_slot(ERIKA, PT, &slots[0]);
        assert_eq!(c.validate_booking(&r).unwrap(), S::Available);
        let booking = c.book(&r).unwrap();
        assert_eq!(booking.booking_status, BookingStatus::Booked);
        assert_eq!(booking.duration, Some(60));
        assert_eq!(c.appointment_slots(PT, &query).unwrap().len(), 12);

        c.cancel_booking(booking.booking_id).unwrap();
        let listed = c.customer_bookings(ERIKA).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].booking_status, BookingStatus::Canceled);
        assert!(!listed[0].is_active());
        assert_eq!(c.appointment_slots(PT, &query).unwrap().len(), 13);
        assert_eq!(h.sim().book_calls(ERIKA), 1);
    }

    #[test]
    fn desk_changes_are_read_as_documented_and_announced_in_magiclines_shape() {
        let h = Harness::new(cfg());
        let c = &h.client;
        let r = BookingRequest::for_slot(
            ERIKA,
            PT,
            &c.appointment_slots(
                PT,
                &SlotQuery {
                    customer_id: Some(ERIKA),
                    days_ahead: Some(1),
                    window_start: Some(date(2030, 6, 4)),
                },
            )
            .unwrap()[0],
        );
        let made = c.book(&r).unwrap();

        // One booking read by id names its customer.
        let read = c.booking(made.booking_id).unwrap();
        assert_eq!((read.customer_id, read.is_active()), (Some(ERIKA), true));
        assert!(matches!(
            c.booking(99_999),
            Err(Error::Api { status: 404, .. })
        ));

        // Moved and cancelled at the desk: the events name the booking, the reads the change.
        let moved = h.sim().staff_move(made.booking_id, &at(1, 15, 0)).unwrap();
        assert_eq!(
            (moved.event_type, moved.entity_id),
            ("APPOINTMENT_BOOKING_UPDATED", made.booking_id)
        );
        let read = c.booking(made.booking_id).unwrap();
        assert_eq!(read.start_date_time.timestamp(), at(1, 15, 0).timestamp());
        assert_eq!(read.duration, Some(60));
        assert_eq!(read.end_date_time.timestamp(), at(1, 16, 0).timestamp());
        let canceled = h.sim().staff_cancel(made.booking_id).unwrap();
        assert_eq!(canceled.event_type, "APPOINTMENT_BOOKING_CANCELLED");
        assert_ne!(canceled.uuid, moved.uuid);
        assert_eq!(
            c.booking(made.booking_id).unwrap().booking_status,
            BookingStatus::Canceled
        );

        // A check-in is announced by customer; the visits are read by studio day.
        let visit = h.sim().check_in(ERIKA, at(1, 14, 55).timestamp());
        assert_eq!(
            (visit.event_type, visit.entity_id),
            ("CUSTOMER_CHECKIN", ERIKA)
        );
        assert_eq!(
            visit.timestamp_ms,
            at(1, 14, 55).timestamp().as_millisecond()
        );
        let body = visit.body();
        let mut keys: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort();
        assert_eq!(keys, ["entityId", "payload", "uuid"]);
        assert_eq!(body["payload"][0]["type"], "CUSTOMER_CHECKIN");
        assert!(body["payload"][0]["timestamp"].is_i64());
        let visits = c
            .checkins(ERIKA, date(2030, 6, 4), date(2030, 6, 4))
            .unwrap();
        assert_eq!(visits.len(), 1);
        assert_eq!(
            visits[0].check_in_date_time,
            Some(at(1, 14, 55).timestamp())
        );
        assert!(c
            .checkins(ERIKA, date(2030, 6, 5), date(2030, 6, 6))
            .unwrap()
            .is_empty());
        // More than 365 days is refused, as documented.
        assert!(matches!(
            c.checkins(ERIKA, date(2029, 1, 1), date(2030, 6, 4)),
            Err(Error::Api { status: 400, .. })
        ));
    }

    #[test]
    fn saturday_hours_and_closed_sunday() {
        let h = Harness::new(cfg());
        let saturday = SlotQuery {
            days_ahead: Some(2),
            window_start: Some(date(2030, 6, 8)),
            ..Default::default()
        };
        let slots = h.client.appointment_slots(EMS, &saturday).unwrap();
        // Saturday 09:00-14:00 in 30-minute slots, nothing on Sunday.
        assert_eq!(slots.len(), 10);
        assert!(slots
            .iter()
            .all(|s| s.start_date_time.date() == date(2030, 6, 8)));
    }

    #[test]
    fn lead_validation_statuses() {
        let h = Harness::new(cfg());
        let c = &h.client;
        assert_eq!(
            c.validate_lead(&lead("Max", "max-at-example")).unwrap(),
            LeadValidationStatus::InvalidLeadCustomerData
        );
        assert_eq!(
            c.validate_lead(&lead(" ", "max@example.org")).unwrap(),
            LeadValidationStatus::InvalidLeadCustomerData
        );
        let dup = lead("Erika", "Erika.Musterfrau@EXAMPLE.org");
        assert_eq!(
            c.validate_lead(&dup).unwrap(),
            LeadValidationStatus::DuplicateCustomer
        );
        let err = c.create_lead(&dup).unwrap_err();
        assert!(matches!(err, Error::Api { status: 400, .. }), "{err:?}");
        // A failed create names a translation key, not a validation status (the spec gives
        // statuses only on the validate call).
        assert_eq!(
            err.api_code(),
            Some("error.lead.customer.creation.not.possible")
        );
        assert!(h.sim().leads().is_empty());

        // A lead created earlier (e.g. by a create call whose answer was lost) is found again.
        let first = lead("Lena", "lena@example.org");
        let id = c.create_lead(&first).unwrap();
        assert_eq!(
            c.validate_lead(&first).unwrap(),
            LeadValidationStatus::DuplicateCustomer
        );
        let found = c.find_customers_by_email("lena@example.org").unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].id, found[0].status),
            (id, CustomerStatus::Prospect)
        );

        let mut unknown_offer = lead("Tom", "tom@example.org");
        unknown_offer.trial_offer_config_id = 99;
        let err = c.validate_lead(&unknown_offer).unwrap_err();
        assert!(matches!(err, Error::Api { status: 404, .. }), "{err:?}");
        assert!(matches!(
            c.trial_offer_config(99).unwrap_err(),
            Error::Api { status: 404, .. }
        ));
    }

    #[test]
    fn mandatory_lead_fields_follow_the_config() {
        let h = Harness::new(SimConfig {
            telephone_mode: FieldMode::Mandatory,
            ..cfg()
        });
        let c = &h.client;
        assert_eq!(
            c.trial_offer_config(1)
                .unwrap()
                .lead_data_config
                .telephone_mode,
            FieldMode::Mandatory
        );
        let mut request = lead("Max", "max@example.org");
        assert_eq!(
            c.validate_lead(&request).unwrap(),
            LeadValidationStatus::InvalidLeadCustomerData
        );
        request.lead_customer_data.telephone = Some("+49 151 00000000".into());
        assert_eq!(
            c.validate_lead(&request).unwrap(),
            LeadValidationStatus::Possible
        );
    }

    #[test]
    fn booking_validation_statuses_from_the_calendar() {
        let h = Harness::new(cfg());
        let c = &h.client;
        let check = |r: BookingRequest, expected: S| {
            assert_eq!(c.validate_booking(&r).unwrap(), expected, "{r:?}");
        };
        check(req(ERIKA, EMS, at(1, 10, 0), 30), S::Available);
        check(req(ERIKA, EMS, at(0, 8, 0), 30), S::PastStartDateTime);
        check(
            req(ERIKA, EMS, at(0, 9, 30), 30),
            S::DateTimeBeforeEarliestBookingDateTime,
        );
        check(
            req(ERIKA, EMS, at(42, 10, 0), 30),
            S::DateTimeAfterLatestBookingDateTime,
        );
        check(req(ERIKA, EMS, at(6, 10, 0), 30), S::StudioClosed);
        check(req(ERIKA, EMS, at(5, 14, 0), 30), S::StudioClosed);
        check(req(ERIKA, EMS, at(1, 20, 45), 30), S::StudioClosed);
        check(req(ERIKA, EMS, at(1, 10, 10), 30), S::PeriodDoesNotMatch);
        check(req(ERIKA, EMS, at(1, 10, 0), 60), S::PeriodDoesNotMatch);
        check(
            req(ERIKA, EMS, at(1, 10, 0), 0),
            S::EndDateTimeNotAfterStartDateTime,
        );

        h.sim().occupy_slot(EMS, &at(1, 11, 0));
        check(req(ERIKA, EMS, at(1, 11, 0), 30), S::NotAvailable);

        c.book(&req(ERIKA, EMS, at(1, 12, 0), 30)).unwrap();
        check(req(ERIKA, PT, at(1, 12, 0), 60), S::CustomerInOtherBooking);

        for (hour, minute) in [(10, 0), (10, 30), (11, 0)] {
            c.book(&req(JONAS, EMS, at(2, hour, minute), 30)).unwrap();
        }
        check(req(JONAS, EMS, at(2, 12, 0), 30), S::BookingLimitReached);

        h.sim().add_customer(SimCustomer {
            id: 600,
            first_name: "Ida".into(),
            last_name: "Pause".into(),
            email: "ida@example.org".into(),
            idle: true,
            mobile: None,
        });
        check(req(600, EMS, at(1, 10, 0), 30), S::CustomerIdle);

        let lead_id = c.create_lead(&lead("Max", "max@example.org")).unwrap();
        c.book_trial(&req(lead_id, TRIAL, at(3, 10, 0), 30))
            .unwrap();
        assert_eq!(
            c.validate_trial_booking(&req(lead_id, TRIAL, at(3, 11, 0), 30))
                .unwrap(),
            S::NoContingent
        );

        let err = c
            .validate_booking(&req(99_999, EMS, at(1, 10, 0), 30))
            .unwrap_err();
        assert!(matches!(err, Error::Api { status: 404, .. }), "{err:?}");
        let err = c
            .validate_trial_booking(&req(lead_id, EMS, at(1, 10, 0), 30))
            .unwrap_err();
        assert_eq!(err.api_code(), Some("BOOKABLE_APPOINTMENT_NOT_FOUND"));
    }

    #[test]
    fn every_documented_validation_status_reaches_the_caller() {
        let h = Harness::new(cfg());
        for status in S::ALL {
            h.sim().force_validation_status(status, 2);
            let r = req(ERIKA, TRIAL, at(1, 10, 0), 30);
            assert_eq!(h.client.validate_booking(&r).unwrap(), status);
            assert_eq!(h.client.validate_trial_booking(&r).unwrap(), status);
        }
    }

    #[test]
    fn booking_a_slot_taken_after_validation_is_an_api_error() {
        let h = Harness::new(cfg());
        let r = req(ERIKA, EMS, at(1, 10, 0), 30);
        assert_eq!(h.client.validate_booking(&r).unwrap(), S::Available);
        h.sim().occupy_slot(EMS, &at(1, 10, 0));
        let err = h.client.book(&r).unwrap_err();
        assert!(matches!(err, Error::Api { status: 400, .. }), "{err:?}");
        assert_eq!(
            err.api_code(),
            Some("error.appointment.booking.not.possible")
        );
        assert!(!err.may_have_been_processed());
        assert!(h.sim().bookings_of(ERIKA).is_empty());
    }

    #[test]
    fn reads_and_validations_retry_on_503_but_a_429_waits_out_the_minute() {
        let h = Harness::new(cfg());
        let c = &h.client;
        let path = "/appointments/bookable/2001/slots";
        h.sim().inject_on(path, Fault::Status(503), 2);
        let slots = c.appointment_slots(EMS, &SlotQuery::default()).unwrap();
        assert!(!slots.is_empty());
        assert_eq!(h.sim().request_count(path), 3);

        h.sim()
            .inject_on("/appointments/bookable/validate", Fault::Status(503), 2);
        let r = req(ERIKA, EMS, at(1, 10, 0), 30);
        assert_eq!(c.validate_booking(&r).unwrap(), S::Available);
        assert_eq!(h.sim().request_count("/appointments/bookable/validate"), 3);

        // A 429 blocks the endpoint for the next minute: no retry, and later calls inside the
        // minute are answered by the client without a request.
        let validate = "/trial-offers/lead/validate";
        h.sim().inject_on(validate, Fault::Status(429), 1);
        for _ in 0..3 {
            assert!(matches!(
                c.validate_lead(&lead("Max", "max@example.org")),
                Err(Error::RateLimited { .. })
            ));
        }
        assert_eq!(h.sim().request_count(validate), 1);
        // Another endpoint has its own counter.
        h.sim()
            .inject_on("/customers/search", Fault::Status(503), 1);
        assert_eq!(
            c.find_customers_by_email("jonas.beispiel@example.org")
                .unwrap()
                .len(),
            1
        );
        assert_eq!(h.sim().request_count("/customers/search"), 2);
    }

    #[test]
    fn retries_are_bounded_and_only_for_transient_statuses() {
        let h = Harness::new(cfg());
        let c = &h.client;
        h.sim()
            .inject_on("/trial-offers/config", Fault::Status(503), 10);
        assert!(matches!(
            c.trial_offer_config(1),
            Err(Error::Unavailable(503))
        ));
        assert_eq!(h.sim().request_count("/trial-offers/config"), 4);
        h.sim().clear_faults();

        h.sim()
            .inject_on("/appointments/bookable", Fault::Status(429), 10);
        assert!(matches!(
            c.bookable_appointments(),
            Err(Error::RateLimited { .. })
        ));
        assert_eq!(h.sim().request_count("/appointments/bookable"), 1);
        h.sim().clear_faults();

        // 500 is a server bug, not overload: not retried.
        h.sim()
            .inject_on("/appointments/booking", Fault::Status(500), 1);
        assert!(matches!(
            c.customer_bookings(ERIKA),
            Err(Error::Unavailable(500))
        ));
        assert_eq!(h.sim().request_count("/appointments/booking"), 1);
    }

    #[test]
    fn state_changing_calls_are_never_retried() {
        let h = Harness::new(cfg());
        let c = &h.client;
        let sim = h.sim();

        sim.inject_on("/appointments/booking/book", Fault::Status(503), 5);
        let err = c.book(&req(ERIKA, EMS, at(1, 10, 0), 30)).unwrap_err();
        assert!(matches!(err, Error::Unavailable(503)), "{err:?}");
        assert_eq!(sim.request_count("/appointments/booking/book"), 1);
        assert_eq!(sim.book_calls(ERIKA), 1);
        assert!(sim.bookings_of(ERIKA).is_empty());
        sim.clear_faults();

        sim.inject_on("/trial-offers/lead/create", Fault::Status(429), 5);
        let err = c.create_lead(&lead("Max", "max@example.org")).unwrap_err();
        assert!(matches!(err, Error::RateLimited { .. }), "{err:?}");
        assert_eq!(sim.request_count("/trial-offers/lead/create"), 1);
        assert!(sim.leads().is_empty());
        sim.clear_faults();
        // The endpoint is blocked for the minute after a 429.
        sim.set_now(at(0, 9, 1).timestamp());

        let lead_id = c.create_lead(&lead("Max", "max@example.org")).unwrap();
        sim.inject_on(
            "/trial-offers/appointments/booking/book",
            Fault::Status(503),
            5,
        );
        assert!(c
            .book_trial(&req(lead_id, TRIAL, at(1, 10, 0), 30))
            .is_err());
        assert_eq!(
            sim.request_count("/trial-offers/appointments/booking/book"),
            1
        );
        sim.clear_faults();

        sim.set_require_confirmation(true);
        let booking = c
            .book_trial(&req(lead_id, TRIAL, at(1, 10, 0), 30))
            .unwrap();
        sim.inject_on("/trial-offers/bookings", Fault::Status(503), 5);
        assert!(c.confirm_trial_booking(booking.booking_id).is_err());
        assert_eq!(sim.request_count("/trial-offers/bookings"), 1);
        sim.clear_faults();

        sim.inject(Fault::Status(503), 5);
        assert!(c.cancel_booking(booking.booking_id).is_err());
        let cancel_path = format!("/appointments/booking/{}", booking.booking_id);
        assert_eq!(sim.request_count(&cancel_path), 1);
    }

    #[test]
    fn late_answer_to_book_is_a_timeout_and_the_booking_can_be_found() {
        let h = Harness::new(cfg());
        let impatient = client_for(h.sim(), Duration::from_secs(3));
        let lead_id = h
            .client
            .create_lead(&lead("Max", "max@example.org"))
            .unwrap();
        let slots = h
            .client
            .trial_offer_slots(TRIAL, &SlotQuery::default())
            .unwrap();
        let r = BookingRequest::for_slot(lead_id, TRIAL, &slots[0]);

        h.sim().inject_on(
            "/trial-offers/appointments/booking/book",
            Fault::LateAnswer(Duration::from_secs(60)),
            1,
        );
        let err = impatient.book_trial(&r).unwrap_err();
        assert!(matches!(err, Error::Timeout), "{err:?}");
        assert!(err.may_have_been_processed());
        assert_eq!(h.sim().book_calls(lead_id), 1);

        let made = h.sim().bookings_of(lead_id);
        assert_eq!(made.len(), 1);
        assert_eq!(made[0].state, SimBookingState::Booked);

        // What a caller does before retrying: look for the booking.
        let listed = impatient.customer_bookings(lead_id).unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].is_active());
        assert_eq!(listed[0].booking_id, made[0].id);
        assert_eq!(
            listed[0].start_date_time.timestamp(),
            r.start_date_time.timestamp()
        );
    }

    #[test]
    fn late_answer_to_member_book_behaves_the_same() {
        let h = Harness::new(cfg());
        let impatient = client_for(h.sim(), Duration::from_secs(3));
        h.sim().inject_on(
            "/appointments/booking/book",
            Fault::LateAnswer(Duration::from_secs(60)),
            1,
        );
        let r = req(JONAS, EMS, at(1, 10, 0), 30);
        assert!(matches!(impatient.book(&r), Err(Error::Timeout)));
        let listed = impatient.customer_bookings(JONAS).unwrap();
        assert_eq!(listed.iter().filter(|b| b.is_active()).count(), 1);
    }

    #[test]
    fn stalled_body_is_a_timeout_and_is_not_retried() {
        let h = Harness::new(cfg());
        let impatient = client_for(h.sim(), Duration::from_secs(3));
        let path = "/appointments/bookable/2001/slots";
        h.sim()
            .inject_on(path, Fault::SlowBody(Duration::from_secs(60)), 1);
        let err = impatient
            .appointment_slots(EMS, &SlotQuery::default())
            .unwrap_err();
        assert!(matches!(err, Error::Timeout), "{err:?}");
        assert_eq!(h.sim().request_count(path), 1);
        // The next call uses a fresh connection and works.
        assert!(!impatient
            .appointment_slots(EMS, &SlotQuery::default())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn malformed_answer_after_booking_is_a_decode_error() {
        let h = Harness::new(cfg());
        h.sim()
            .inject_on("/appointments/booking/book", Fault::MalformedJson, 1);
        let err = h
            .client
            .book(&req(ERIKA, EMS, at(1, 10, 0), 30))
            .unwrap_err();
        assert!(matches!(err, Error::Decode(_)), "{err:?}");
        assert!(err.may_have_been_processed());
        assert_eq!(h.sim().bookings_of(ERIKA).len(), 1);

        h.sim()
            .inject_on("/appointments/bookable", Fault::MalformedJson, 1);
        assert!(matches!(
            h.client.bookable_appointments(),
            Err(Error::Decode(_))
        ));
    }

    #[test]
    fn confirmation_flow() {
        let h = Harness::new(SimConfig {
            require_confirmation: true,
            ..cfg()
        });
        let c = &h.client;
        assert!(c
            .trial_offer_config(1)
            .unwrap()
            .confirmation_of_booking_term
            .is_some());

        let a = c.create_lead(&lead("Anna", "anna@example.org")).unwrap();
        let booking = c.book_trial(&req(a, TRIAL, at(1, 10, 0), 30)).unwrap();
        assert_eq!(
            booking.booking_status,
            BookingStatus::BookedWithConfirmationRequired
        );
        let listed = c.customer_bookings(a).unwrap();
        assert_eq!(
            listed[0].booking_status,
            BookingStatus::BookedWithConfirmationRequired
        );
        assert!(listed[0].is_active());
        assert_eq!(
            c.confirm_trial_booking(booking.booking_id).unwrap(),
            ConfirmationStatus::Confirmed
        );
        assert_eq!(
            c.customer_bookings(a).unwrap()[0].booking_status,
            BookingStatus::Booked
        );
        // Confirming twice is harmless.
        assert_eq!(
            c.confirm_trial_booking(booking.booking_id).unwrap(),
            ConfirmationStatus::Confirmed
        );

        // The term (2 hours) is measured back from the start: a booking days ahead can still
        // be confirmed a day later, but not within two hours of its start.
        let b = c.create_lead(&lead("Bert", "bert@example.org")).unwrap();
        let later = c.book_trial(&req(b, TRIAL, at(3, 10, 0), 30)).unwrap();
        h.sim().set_now(at(2, 10, 0).timestamp());
        let d = c.create_lead(&lead("Dora", "dora@example.org")).unwrap();
        let short = c.book_trial(&req(d, TRIAL, at(2, 12, 0), 30)).unwrap();
        h.sim().set_now(at(3, 7, 59).timestamp());
        assert_eq!(
            c.customer_bookings(d).unwrap()[0].booking_status,
            BookingStatus::Canceled,
            "unconfirmed inside its term: expired and the slot freed"
        );
        assert_eq!(
            c.confirm_trial_booking(short.booking_id).unwrap(),
            ConfirmationStatus::Expired
        );
        assert_eq!(
            c.confirm_trial_booking(later.booking_id).unwrap(),
            ConfirmationStatus::Confirmed
        );
        let e = c.create_lead(&lead("Emil", "emil@example.org")).unwrap();
        let missed = c.book_trial(&req(e, TRIAL, at(3, 11, 0), 30)).unwrap();
        h.sim().set_now(at(3, 9, 1).timestamp());
        assert_eq!(
            c.confirm_trial_booking(missed.booking_id).unwrap(),
            ConfirmationStatus::Expired
        );
        assert_eq!(h.sim().bookings_of(e)[0].state, SimBookingState::Canceled);
        assert_eq!(h.sim().bookings_of(b)[0].state, SimBookingState::Booked);

        let err = c.confirm_trial_booking(123).unwrap_err();
        assert!(matches!(err, Error::Api { status: 404, .. }), "{err:?}");
    }

    #[test]
    fn wrong_api_key_is_rejected_and_never_echoed() {
        let h = Harness::new(cfg());
        let wrong = Client::new(
            &h.sim().base_url(),
            "wrong-key-4711".into(),
            Duration::from_secs(10),
        );
        let err = wrong.trial_offer_config(1).unwrap_err();
        assert!(matches!(err, Error::Api { status: 401, .. }), "{err:?}");
        for shown in [format!("{err}"), format!("{err:?}"), format!("{wrong:?}")] {
            assert!(!shown.contains("wrong-key-4711"), "{shown}");
        }
        assert!(!format!("{:?}", h.client).contains(&h.sim().api_key()));
    }

    #[test]
    fn paged_lists_are_followed() {
        let mut config = cfg();
        config.max_slice_size = 2;
        config.member_appointments = (0..5)
            .map(|i| SimAppointment {
                id: 3000 + i,
                title: format!("Kurs {i}"),
                duration_minutes: 30,
                category: "Kurs".into(),
            })
            .collect();
        let h = Harness::new(config);
        let ids: Vec<i64> = h
            .client
            .bookable_appointments()
            .unwrap()
            .iter()
            .map(|a| a.id)
            .collect();
        assert_eq!(ids, vec![3000, 3001, 3002, 3003, 3004]);
        assert_eq!(h.sim().request_count("/appointments/bookable"), 3);
    }

    #[test]
    fn simulated_rate_limit_answers_429_for_the_whole_next_minute() {
        let h = Harness::new(SimConfig {
            rate_limit_per_minute: Some(2),
            ..cfg()
        });
        assert!(h.client.trial_offer_config(1).is_ok());
        assert!(h.client.trial_offer_config(1).is_ok());
        assert!(matches!(
            h.client.trial_offer_config(1),
            Err(Error::RateLimited { .. })
        ));
        // Another endpoint has its own window.
        assert!(h.client.bookable_appointments().is_ok());
        // The client does not ask again inside the minute; clients that do are denied (and
        // counted) until the minute is over.
        assert!(matches!(
            h.client.trial_offer_config(1),
            Err(Error::RateLimited { .. })
        ));
        assert_eq!(h.sim().request_count("/trial-offers/config"), 3);
        for _ in 0..3 {
            let impatient = client_for(h.sim(), Duration::from_secs(10));
            assert!(matches!(
                impatient.trial_offer_config(1),
                Err(Error::RateLimited { .. })
            ));
        }
        assert_eq!(h.sim().request_count("/trial-offers/config"), 6);
        h.sim().set_now(at(0, 9, 1).timestamp());
        assert!(h.client.trial_offer_config(1).is_ok());
    }

    #[test]
    fn days_ahead_outside_one_to_six_is_rejected_with_the_error_body() {
        let h = Harness::new(cfg());
        let q = |days| SlotQuery {
            customer_id: None,
            days_ahead: Some(days),
            window_start: Some(date(2030, 6, 4)),
        };
        for days in [0, 7, 16] {
            let err = h.client.trial_offer_slots(TRIAL, &q(days)).unwrap_err();
            assert!(
                matches!(err, Error::Api { status: 400, .. }),
                "{days}: {err:?}"
            );
        }
        let six = h.client.trial_offer_slots(TRIAL, &q(6)).unwrap();
        // Tuesday to Sunday: four weekdays of 26 slots and Saturday's 10.
        assert_eq!(six.len(), 4 * 26 + 10);
        let default = h
            .client
            .appointment_slots(EMS, &SlotQuery::default())
            .unwrap();
        assert!(default
            .iter()
            .all(|s| s.start_date_time.date() == date(2030, 6, 3)));

        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut resp = agent
            .get(&format!(
                "{}/trial-offers/bookable-trial-offers/appointments/bookable/{TRIAL}/slots",
                h.sim().base_url()
            ))
            .header("x-api-key", &h.sim().api_key())
            .query("daysAhead", "16")
            .call()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400);
        let raw: Value = resp.body_mut().read_json().unwrap();
        assert!(raw["errorMessage"].is_string() && raw["traceId"].is_string());
        assert_eq!(raw["reference"], "daysAhead");
    }

    #[test]
    fn key_check_and_missing_scopes() {
        let h = Harness::new(SimConfig {
            missing_scopes: vec![SimScope::AppointmentsWrite],
            ..cfg()
        });
        assert!(h.client.check_key().is_ok());
        let wrong = Client::new(
            &h.sim().base_url(),
            "wrong-key".into(),
            Duration::from_secs(10),
        );
        assert!(matches!(
            wrong.check_key(),
            Err(Error::Api { status: 401, .. })
        ));
        let err = h
            .client
            .validate_booking(&req(ERIKA, EMS, at(1, 10, 0), 30))
            .unwrap_err();
        assert!(err.is_forbidden(), "{err:?}");
        assert!(h.client.bookable_appointments().is_ok());
    }

    /// Checks the wire shapes with raw HTTP, independent of the client's types.
    #[test]
    fn raw_wire_shapes() {
        let h = Harness::new(cfg());
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let base = h.sim().base_url();
        let key = h.sim().api_key();

        let mut resp = agent
            .get(&format!("{base}/appointments/bookable/2001/slots"))
            .header("x-api-key", &key)
            .query("daysAhead", "1")
            .query("slotWindowStartDate", "2030-06-04")
            .call()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(
            resp.headers().get("content-type").unwrap(),
            "application/json"
        );
        let v: Value = resp.body_mut().read_json().unwrap();
        let first = v.as_array().unwrap()[0].as_object().unwrap();
        let mut keys: Vec<&str> = first.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["endDateTime", "instructors", "startDateTime"]);
        assert_eq!(
            first["startDateTime"],
            "2030-06-04T08:00:00.000+02:00[Europe/Berlin]"
        );
        assert!(first["instructors"][0]["firstName"].is_string());

        let mut resp = agent
            .post(&format!("{base}/trial-offers/lead/validate"))
            .send_json(json!({}))
            .unwrap();
        assert_eq!(resp.status().as_u16(), 401);
        let v: Value = resp.body_mut().read_json().unwrap();
        assert!(v["errorMessage"].is_string() && v["traceId"].is_string());
        assert_eq!(v["errorCode"], "UNAUTHORIZED");

        let resp = agent
            .get(&format!("{base}/nope"))
            .header("x-api-key", &key)
            .call()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 404);

        let resp = agent
            .post(&format!("{base}/appointments/booking/book"))
            .header("x-api-key", &key)
            .header("content-type", "application/json")
            .send("{not json")
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400);

        let mut resp = agent
            .post(&format!("{base}/appointments/bookable/validate"))
            .header("x-api-key", &key)
            .send_json(json!({
                "customerId": ERIKA, "bookableAppointmentId": EMS,
                "startDateTime": "2030-06-04T10:00:00.000+02:00[Europe/Berlin]",
                "endDateTime": "2030-06-04T10:30:00.000+02:00[Europe/Berlin]"
            }))
            .unwrap();
        let v: Value = resp.body_mut().read_json().unwrap();
        assert_eq!(v, json!({ "validationStatus": "AVAILABLE" }));
        assert_eq!(h.sim().total_requests(), 5);
    }

    #[test]
    fn query_decoding() {
        let q = parse_query("a=1&slotWindowStartDate=2030-06-04&x=%5BEurope%2FBerlin%5D&e");
        assert_eq!(q["a"], "1");
        assert_eq!(q["x"], "[Europe/Berlin]");
        assert_eq!(q["e"], "");
        assert!(percent_decode("%zz").is_none());
        assert!(percent_decode("%4").is_none());
    }
}
