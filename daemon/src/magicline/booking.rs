//! Trial bookings in MagicLine: [`MagicLineBooker`] carries out the engine's booking requests
//! ([`Booker`]) on top of the blocking [`Client`], idempotently per request and resumable after a
//! timeout or a restart.
//!
//! Flows:
//! - A person MagicLine already knows (an id from the profile that MagicLine confirms, a lead an
//!   earlier request of this person created, or a match by e-mail after `DUPLICATE_CUSTOMER`
//!   whose record carries the contact's phone number; an e-mail whose records do not is someone
//!   else's account, and staff take over):
//!   validate → book. Members use the appointment endpoints, leads (prospects) the trial-offer
//!   endpoints, because the plain book endpoint lets leads book twice.
//! - A new person: the wished slot is first checked in the trial slot list, so no lead is created
//!   for a slot that cannot be booked; then lead validate → lead create → validate → book.
//! - Members: [`Booker::find_member`] searches by e-mail, else by first and last name, and
//!   accepts only a customer with a current membership whose record carries the contact's
//!   number; the engine then books with that id (the member flow above, the appointment type
//!   `magicline.member_appointment_id`), moves ([`MagicLineBooker::reschedule`]) and cancels.
//!
//! The trial offer is the one `magicline.trial_offer_appointment_id` names (the first MagicLine
//! lists when unset); its configuration (`GET /trial-offers/config/{id}`) says which lead fields
//! are mandatory and whether bookings must be confirmed. A booking MagicLine answers
//! `BOOKED_WITH_CONFIRMATION_REQUIRED` is *not* confirmed here: the lead confirms it in the chat
//! and the engine then calls [`Booker::confirm_trial`]. MagicLine measures the confirmation term
//! back from the start, so a slot starting within the term cannot be confirmed in time; such
//! slots are neither booked nor offered as alternatives.
//!
//! MagicLine's answers are read only as its spec documents them: validation statuses come from
//! the validate calls. A rejected lead create or book call is followed by the validate call,
//! whose status decides; its `errorCode` (a translation key) is never read as a status. After a
//! 429 the endpoint is left alone for the rest of the minute (the client keeps the block).
//! Slot lists are asked for in windows of at most six days (`daysAhead` ≤ 6).
//!
//! Every request has a row in the bookings keyspace, written durably before the first MagicLine
//! call and after every step (see [`Step`]): row key = pseudonym (16 bytes) + keyed hash of the
//! request id (16 bytes); the value is sealed with the customer's data key. A request that comes
//! back (engine retry, restart) returns the recorded outcome when it is final, or resumes from
//! the recorded step. Before a state-changing call is repeated whose earlier try may have been
//! processed (a timeout, a lost or garbled answer), MagicLine is asked first: the customer's
//! bookings before a book call, a search by e-mail before a lead create. So one request never
//! books twice and one person never gets a second lead.
//!
//! Every step and outcome is reported to a [`BookingAudit`] with the pseudonym and MagicLine ids,
//! never with personal data.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use jiff::{Timestamp, ToSpan, Zoned};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::api::{
    BookingStatus, BookingValidationStatus, ConfirmationStatus, Customer, CustomerSearch,
    CustomerStatus, FieldMode, LeadCustomerData, LeadRequest, LeadValidationStatus, Slot,
    SlotQuery,
};
use super::client::{Client, Error as ApiError};
use super::datetime;
use crate::conversation::booking::{
    Booker, BookingFailure, BookingOutcome, BookingRequest, CancelOutcome, ConfirmOutcome,
    ContactData, MemberLookup,
};
use crate::store::crypto::Pseudonym;
use crate::store::xref::External;
use crate::store::{ks, Store, StoreError};

mod attendance;
mod calls;
pub use attendance::{Attendance, CheckInOutcome, RecordedBooking};
use calls::{BookCall, Made, OfferTarget};

/// The steps and outcomes of a booking the booker reports (see [`BookingAudit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BookingStep {
    /// A booking request started or resumed.
    Attempt,
    /// A lead was created in MagicLine for the person.
    LeadCreated,
    /// The person was recognised as an existing MagicLine customer (id, e-mail match or a lead of
    /// an earlier request).
    CustomerMatched,
    /// MagicLine holds the booking (possibly awaiting confirmation).
    Booked,
    /// A booking awaiting confirmation was confirmed.
    Confirmed,
    /// The wished slot is not free; alternatives were offered.
    SlotTaken,
    /// The request failed (`reason` says why); `unavailable` and `not_configured` can be resumed.
    Failed,
    /// A booking was cancelled.
    Canceled,
    /// Cancelling a booking failed.
    CancelFailed,
    /// Staff cancelled the booking in MagicLine (a webhook event or the poll said so).
    CanceledInMagicLine,
    /// Staff moved the booking to another time in MagicLine.
    MovedInMagicLine,
    /// The person checked in at the studio for the booking.
    CheckedIn,
    /// The booking's slot passed without a check-in.
    NoShow,
}

impl BookingStep {
    /// The stable dotted name of the step (`booking.attempt`, …), as in the audit log.
    pub fn code(self) -> &'static str {
        match self {
            BookingStep::Attempt => "booking.attempt",
            BookingStep::LeadCreated => "booking.lead_created",
            BookingStep::CustomerMatched => "booking.customer_matched",
            BookingStep::Booked => "booking.booked",
            BookingStep::Confirmed => "booking.confirmed",
            BookingStep::SlotTaken => "booking.slot_taken",
            BookingStep::Failed => "booking.failed",
            BookingStep::Canceled => "booking.canceled",
            BookingStep::CancelFailed => "booking.cancel_failed",
            BookingStep::CanceledInMagicLine => "booking.canceled_in_magicline",
            BookingStep::MovedInMagicLine => "booking.moved_in_magicline",
            BookingStep::CheckedIn => "booking.checked_in",
            BookingStep::NoShow => "booking.no_show",
        }
    }
}

/// One auditable booking step. Holds no personal data: the pseudonym, the engine's request id
/// and MagicLine ids only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookingEvent {
    /// The customer, by pseudonym.
    pub pseudonym: Pseudonym,
    /// The engine's id of the booking request.
    pub request_id: String,
    /// What happened.
    pub step: BookingStep,
    /// MagicLine's id of the person, once known.
    pub magicline_customer_id: Option<i64>,
    /// MagicLine's id of the booking, once there is one.
    pub booking_id: Option<i64>,
    /// Machine-readable reason of failures (`slot_taken`, `past_start`, `unavailable`, ...).
    pub reason: Option<&'static str>,
}

/// Where booking events go (the audit log in the service, a [`MemoryAudit`] in tests).
pub trait BookingAudit: Send + Sync {
    /// Records one event. Nothing is returned: a failed record must not change the booking.
    fn record(&self, event: BookingEvent);
}

/// Keeps events in memory (unit tests of the booker).
#[cfg(test)]
#[derive(Debug, Default)]
pub struct MemoryAudit {
    events: Mutex<Vec<BookingEvent>>,
}

#[cfg(test)]
impl MemoryAudit {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// All events recorded so far, in order.
    pub fn events(&self) -> Vec<BookingEvent> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Events of one request, in order.
    pub fn events_of(&self, request_id: &str) -> Vec<BookingEvent> {
        self.events()
            .into_iter()
            .filter(|e| e.request_id == request_id)
            .collect()
    }
}

#[cfg(test)]
impl BookingAudit for MemoryAudit {
    fn record(&self, event: BookingEvent) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event);
    }
}

/// Tuning of the booker.
#[derive(Clone)]
pub struct BookerConfig {
    /// Tries per MagicLine call made by the booker, the first included. Applies on top of the
    /// client's own retries for reads; state-changing calls are repeated only after checking.
    pub attempts: u32,
    /// Full-jitter backoff between tries: attempt n waits up to `min(max, base * 2^(n-1))`.
    pub backoff_base: Duration,
    /// Longest wait between tries.
    pub backoff_max: Duration,
    /// How many days after the wished one are searched for alternatives (asked for in windows
    /// of at most six days).
    pub alternatives_days: u32,
    /// Appointment type booked for members; `None` books the trial offer's appointment type.
    pub member_appointment_id: Option<i64>,
    /// The bookable trial offer appointment leads book; `None` takes the first MagicLine lists.
    pub trial_appointment_id: Option<i64>,
    /// The bookable trial offer *class* leads book instead of an appointment.
    pub trial_class_id: Option<i64>,
    /// The time a wished start is compared with (settable for tests and the demo).
    pub clock: Arc<dyn Fn() -> Timestamp + Send + Sync>,
    /// How long after a trial's end a check-in still counts for it; past that, without one,
    /// the trial is a no-show (see [`attendance`]).
    pub no_show_after: jiff::SignedDuration,
    /// Reminders and follow-ups scheduled with each booking (`[reminders]`); `None`: none.
    pub reminders: Option<crate::reminders::Plan>,
}

impl Default for BookerConfig {
    fn default() -> Self {
        BookerConfig {
            attempts: 3,
            backoff_base: Duration::from_millis(250),
            backoff_max: Duration::from_secs(3),
            alternatives_days: 7,
            member_appointment_id: None,
            trial_appointment_id: None,
            trial_class_id: None,
            clock: Arc::new(Timestamp::now),
            no_show_after: jiff::SignedDuration::from_mins(60),
            reminders: None,
        }
    }
}

impl std::fmt::Debug for BookerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BookerConfig")
            .field("attempts", &self.attempts)
            .field("backoff_base", &self.backoff_base)
            .field("backoff_max", &self.backoff_max)
            .field("alternatives_days", &self.alternatives_days)
            .field("member_appointment_id", &self.member_appointment_id)
            .field("trial_appointment_id", &self.trial_appointment_id)
            .field("trial_class_id", &self.trial_class_id)
            .finish_non_exhaustive()
    }
}

/// Why a step could not be completed now. None of these is a final answer: the request can be
/// repeated with the same id and resumes where it stopped.
#[derive(Debug, thiserror::Error)]
pub enum BookerError {
    /// Reading or writing the booking record failed.
    #[error("booking record: {0}")]
    Store(#[from] StoreError),
    /// The booking record does not decode or lacks a field its step requires.
    #[error("booking record could not be decoded")]
    Corrupt,
    /// A MagicLine call failed; the request may be repeated.
    #[error(transparent)]
    MagicLine(#[from] ApiError),
    /// MagicLine lists no trial offer with a bookable appointment (or not the configured one),
    /// or the offer asks for lead data frontdesk does not collect.
    #[error("MagicLine offers no bookable trial appointment frontdesk can book")]
    NoTrialOffer,
    /// MagicLine answered something the flow does not allow (e.g. an unknown status).
    #[error("unexpected MagicLine answer: {0}")]
    Unexpected(&'static str),
    /// The customer was forgotten after asking; nothing is recorded for them any more.
    #[error("the customer was forgotten meanwhile")]
    Forgotten,
}

/// Why a cancellation did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CancelError {
    /// MagicLine knows no booking with this id.
    #[error("MagicLine knows no such booking")]
    NotFound,
    /// MagicLine could not be reached or refused.
    #[error("MagicLine could not be reached or refused the cancellation")]
    Unavailable,
}

/// Progress of one request as recorded in the bookings keyspace.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Step {
    /// Recorded, nothing sent yet.
    Requested,
    /// A lead create is about to be or was sent; its answer may be lost.
    LeadCreateCalled,
    /// The MagicLine customer (member or lead) is known.
    CustomerKnown,
    /// MagicLine said the slot is bookable.
    Validated,
    /// A book call is about to be or was sent; its answer may be lost.
    BookCalled,
    /// MagicLine holds the booking; confirmation may still be outstanding.
    Booked,
    Confirmed,
    SlotTaken,
    Failed,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Kind {
    /// A lead (prospect): trial-offer endpoints.
    Lead,
    /// A member: appointment endpoints.
    Member,
}

/// Final failures as recorded (more detailed than the engine's [`BookingFailure`]).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Failure {
    PastStart,
    StudioClosed,
    InvalidCustomerData,
    AlreadyBooked,
    LimitReached,
    CustomerIdle,
    NotBookable,
    ConfirmationExpired,
    /// The e-mail is a MagicLine customer's whose phone numbers are not the contact's.
    OtherPersonsAccount,
    /// The trial offer requires a telephone number and the contact wrote from a WhatsApp user
    /// id without one: staff take over.
    PhoneRequired,
}

impl Failure {
    fn public(self) -> BookingFailure {
        match self {
            Failure::PastStart => BookingFailure::PastStart,
            Failure::StudioClosed => BookingFailure::StudioClosed,
            Failure::InvalidCustomerData => BookingFailure::InvalidCustomerData,
            Failure::AlreadyBooked => BookingFailure::AlreadyBooked,
            Failure::LimitReached => BookingFailure::LimitReached,
            Failure::OtherPersonsAccount => BookingFailure::OtherPersonsAccount,
            // Staff must look at these; the engine tells the customer so.
            Failure::CustomerIdle
            | Failure::NotBookable
            | Failure::ConfirmationExpired
            | Failure::PhoneRequired => BookingFailure::Unavailable,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Failure::PastStart => "past_start",
            Failure::StudioClosed => "studio_closed",
            Failure::InvalidCustomerData => "invalid_customer_data",
            Failure::AlreadyBooked => "already_booked",
            Failure::LimitReached => "limit_reached",
            Failure::CustomerIdle => "customer_idle",
            Failure::NotBookable => "not_bookable",
            Failure::ConfirmationExpired => "confirmation_expired",
            Failure::OtherPersonsAccount => "other_persons_account",
            Failure::PhoneRequired => "phone_required",
        }
    }
}

/// The sealed value of a bookings row.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Record {
    request_id: String,
    step: Step,
    #[serde(with = "datetime::serde_zoned")]
    start: Zoned,
    #[serde(default, with = "datetime::serde_zoned_opt")]
    end: Option<Zoned>,
    #[serde(default)]
    customer_id: Option<i64>,
    #[serde(default)]
    kind: Option<Kind>,
    /// The lead was created by this request.
    #[serde(default)]
    lead_created: bool,
    #[serde(default)]
    booking_id: Option<i64>,
    /// The class slot, when the trial is a class date (its booking is a class booking).
    #[serde(default)]
    class_slot_id: Option<i64>,
    #[serde(default)]
    confirmation_required: bool,
    #[serde(default)]
    failure: Option<Failure>,
    /// Alternatives offered with `SlotTaken`, in MagicLine's date-time form.
    #[serde(default)]
    alternatives: Vec<String>,
    #[serde(default)]
    canceled: bool,
    /// When the person checked in for this booking (a MagicLine check-in inside its window,
    /// see [`attendance`]).
    #[serde(default)]
    checked_in_at: Option<Timestamp>,
    /// The slot passed without a check-in (counted once as a no-show).
    #[serde(default)]
    no_show: bool,
    /// The booking's reminders and follow-up were scheduled (in the write that recorded it).
    #[serde(default)]
    scheduled: bool,
    updated_at: Timestamp,
}

impl Record {
    fn new(req: &BookingRequest, now: Timestamp) -> Record {
        Record {
            request_id: req.request_id.clone(),
            step: Step::Requested,
            start: req.start.clone(),
            end: None,
            customer_id: None,
            kind: None,
            lead_created: false,
            booking_id: None,
            class_slot_id: None,
            confirmation_required: false,
            failure: None,
            alternatives: Vec::new(),
            canceled: false,
            checked_in_at: None,
            no_show: false,
            scheduled: false,
            updated_at: now,
        }
    }

    /// The outcome when the request is finished (nothing left to do in MagicLine until the lead
    /// confirms a booking that needs it).
    fn final_outcome(&self) -> Option<BookingOutcome> {
        match self.step {
            Step::Booked | Step::Confirmed => self.booked_outcome(),
            Step::SlotTaken => Some(BookingOutcome::SlotTaken {
                alternatives: self
                    .alternatives
                    .iter()
                    .filter_map(|s| datetime::parse(s).ok())
                    .collect(),
            }),
            Step::Failed => self.failure.map(|f| BookingOutcome::Failed(f.public())),
            _ => None,
        }
    }

    /// The booking is held in MagicLine and its attendance is not settled yet.
    fn awaits_attendance(&self) -> bool {
        matches!(self.step, Step::Booked | Step::Confirmed)
            && self.booking_id.is_some()
            && !self.canceled
            && !self.no_show
            && self.checked_in_at.is_none()
    }

    fn booked_outcome(&self) -> Option<BookingOutcome> {
        Some(BookingOutcome::Booked {
            booking_id: self.booking_id?,
            start: self.start.clone(),
            magicline_customer_id: self.customer_id?,
            confirmation_pending: self.confirmation_required && self.step != Step::Confirmed,
        })
    }
}

/// The trial offer leads book (looked up once, with its configuration).
#[derive(Clone, Copy, Debug)]
struct TrialOffer {
    config_id: i64,
    target: OfferTarget,
    duration_minutes: Option<u32>,
    /// Bookings must be confirmed at the latest this long before the start.
    confirmation_term: Option<jiff::Span>,
    /// The offer requires a telephone number with the lead.
    telephone_mandatory: bool,
}

/// What a booking validation means for the request.
enum Verdict {
    Proceed,
    SlotTaken,
    Fail(Failure),
}

fn verdict(status: BookingValidationStatus) -> Verdict {
    use BookingValidationStatus as S;
    match status {
        S::Available => Verdict::Proceed,
        S::NotAvailable
        | S::ResourceNotAvailable
        | S::PeriodDoesNotMatch
        | S::DateTimeBeforeEarliestBookingDateTime
        | S::DateTimeAfterLatestBookingDateTime => Verdict::SlotTaken,
        S::PastStartDateTime => Verdict::Fail(Failure::PastStart),
        S::StudioClosed => Verdict::Fail(Failure::StudioClosed),
        S::CustomerInOtherBooking | S::CustomerAlreadyBooked => {
            Verdict::Fail(Failure::AlreadyBooked)
        }
        S::NoContingent | S::BookingLimitReached => Verdict::Fail(Failure::LimitReached),
        S::CustomerIdle => Verdict::Fail(Failure::CustomerIdle),
        S::BookableAppointmentRestrictionsNotFulfilled
        | S::DisplayOnly
        | S::EndDateTimeNotAfterStartDateTime
        | S::Unknown => Verdict::Fail(Failure::NotBookable),
    }
}

/// Whether MagicLine rejected a state-changing call for its content (nothing was done): the
/// validate call then says why. Not a missing key or scope, which no validation explains.
fn rejected(e: &ApiError) -> bool {
    matches!(e, ApiError::Api { status, .. } if (400..500).contains(status) && !matches!(status, 401 | 403))
}

/// Failures worth another try of a call that is safe to repeat (or has been checked). Not a
/// 429: MagicLine denies the endpoint for the rest of the minute.
fn retryable(e: &ApiError) -> bool {
    matches!(
        e,
        ApiError::Timeout
            | ApiError::Unavailable(_)
            | ApiError::Decode(_)
            | ApiError::Transport { .. }
    )
}

fn kind_of(c: &Customer) -> Kind {
    match c.status {
        CustomerStatus::Prospect => Kind::Lead,
        _ => Kind::Member,
    }
}

/// Members first (they have the richer relationship), then the oldest record.
fn pick_customer<'a>(hits: impl IntoIterator<Item = &'a Customer>) -> Option<&'a Customer> {
    hits.into_iter()
        .min_by_key(|c| (c.status == CustomerStatus::Prospect, c.id))
}

/// Country code assumed for a number staff typed in national form (`0151 …`): frontdesk serves
/// studios in Germany; a number from elsewhere is typed with its `+` or `00` prefix.
const NATIONAL_COUNTRY_CODE: &str = "49";

/// Whether a phone number as the studio typed it in MagicLine (`+49 151 …`, `0049…`,
/// `0151/…`) is `contact`, a WhatsApp number (digits, international form).
fn same_phone(typed: &str, contact: &str) -> bool {
    let digits: String = typed.chars().filter(char::is_ascii_digit).collect();
    let international = if typed.trim_start().starts_with('+') {
        digits
    } else if let Some(rest) = digits.strip_prefix("00") {
        rest.to_string()
    } else if let Some(rest) = digits.strip_prefix('0') {
        format!("{NATIONAL_COUNTRY_CODE}{rest}")
    } else {
        digits
    };
    international.len() >= 7 && international == contact
}

/// Whether [`MagicLineBooker::adopt_by_email`] continued as an existing customer.
#[derive(Debug, PartialEq, Eq)]
enum Adopted {
    Yes,
    SomeoneElses,
    Nobody,
}

/// What a search by e-mail found for a booking request.
enum ByEmail<'a> {
    /// A customer with that e-mail and the contact's phone number.
    Theirs(&'a Customer),
    /// Customers with that e-mail, none with the contact's phone number (or the contact's
    /// number is not known): booking there could be booking on someone else's account.
    SomeoneElses,
    /// Nobody has that e-mail.
    Nobody,
}

fn match_by_email<'a>(hits: &'a [Customer], phone: Option<&str>) -> ByEmail<'a> {
    let theirs = hits
        .iter()
        .filter(|c| phone.is_some_and(|p| c.phones().any(|typed| same_phone(typed, p))));
    match pick_customer(theirs) {
        Some(c) => ByEmail::Theirs(c),
        None if hits.is_empty() => ByEmail::Nobody,
        None => ByEmail::SomeoneElses,
    }
}

const PERSON_STRIPES: usize = 256;
const REQUEST_HASH_DOMAIN: &str = "booking-request";

/// Books trial trainings in MagicLine. Blocking; call it from a blocking thread.
pub struct MagicLineBooker {
    client: Client,
    store: Arc<Store>,
    audit: Arc<dyn BookingAudit>,
    cfg: BookerConfig,
    offer: Mutex<Option<TrialOffer>>,
    /// Serialises the requests of one person, so two of them never race to create a lead.
    persons: Vec<Mutex<()>>,
}

impl std::fmt::Debug for MagicLineBooker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MagicLineBooker")
            .field("client", &self.client)
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Booker for MagicLineBooker {
    fn book_trial(&self, req: &BookingRequest) -> BookingOutcome {
        self.book(req)
    }

    fn confirm_trial(&self, pseudonym: &Pseudonym, booking_id: i64) -> ConfirmOutcome {
        self.confirm(pseudonym, booking_id)
    }

    fn find_member(&self, contact: &ContactData) -> MemberLookup {
        match self.member_of(contact) {
            Ok(Some(id)) => {
                tracing::info!(customer = %contact.pseudonym, magicline_customer = id,
                    "contact recognised as a member by their number");
                MemberLookup::Member {
                    magicline_customer_id: id,
                }
            }
            Ok(None) => MemberLookup::NotMember,
            Err(e) => {
                tracing::warn!(customer = %contact.pseudonym, error = %e, "member lookup failed");
                MemberLookup::Unavailable
            }
        }
    }

    fn move_booking(&self, req: &BookingRequest, old_booking_id: i64) -> BookingOutcome {
        self.reschedule(req, old_booking_id)
    }

    fn cancel_booking(&self, pseudonym: &Pseudonym, booking_id: i64) -> CancelOutcome {
        match self.cancel(pseudonym, booking_id) {
            Ok(()) => CancelOutcome::Canceled,
            Err(CancelError::NotFound) => CancelOutcome::NotFound,
            Err(CancelError::Unavailable) => CancelOutcome::Unavailable,
        }
    }

    fn reschedule_trial(&self, req: &BookingRequest, old_booking_id: i64) -> BookingOutcome {
        // A missed trial (its slot has passed) is not cancelled: the new one is a new booking.
        match self.booking_start(&req.pseudonym, old_booking_id) {
            Some(start) if start.timestamp() > (self.cfg.clock)() => {
                self.reschedule(req, old_booking_id)
            }
            _ => self.book(req),
        }
    }

    fn cancel_trial(&self, pseudonym: &Pseudonym, booking_id: i64) -> CancelOutcome {
        let _person = self.person_lock(pseudonym);
        let rec = match self.rows_of(pseudonym) {
            Ok(rows) => rows
                .into_iter()
                .map(|(_, r)| r)
                .find(|r| r.booking_id == Some(booking_id)),
            Err(e) => {
                tracing::warn!(customer = %pseudonym, error = %e, "booking rows unreadable");
                return CancelOutcome::Unavailable;
            }
        };
        let Some(rec) = rec else {
            return CancelOutcome::NotFound;
        };
        if rec.start.timestamp() <= (self.cfg.clock)() {
            return CancelOutcome::Past;
        }
        if rec.canceled {
            return CancelOutcome::Canceled;
        }
        match self.cancel_locked(pseudonym, booking_id) {
            Ok(()) => CancelOutcome::Canceled,
            Err(CancelError::NotFound) => CancelOutcome::NotFound,
            Err(CancelError::Unavailable) => CancelOutcome::Unavailable,
        }
    }

    fn free_slots(&self, pseudonym: &Pseudonym, from: &Zoned, count: usize) -> Vec<Zoned> {
        let known = self.rows_of(pseudonym).ok().and_then(|rows| {
            rows.into_iter()
                .filter_map(|(_, r)| Some((r.customer_id?, r.kind?)))
                .next_back()
        });
        let kind = known.map_or(Kind::Lead, |(_, kind)| kind);
        let now = (self.cfg.clock)().max(from.timestamp());
        let days = self.cfg.alternatives_days.clamp(1, 6);
        let slots = match self.slots(kind, known.map(|(id, _)| id), from.date(), days) {
            Ok(slots) => slots,
            Err(e) => {
                tracing::warn!(customer = %pseudonym, error = %e, "free slots not readable");
                return Vec::new();
            }
        };
        let mut free: Vec<Zoned> = slots
            .into_iter()
            .map(|s| s.start_date_time)
            .filter(|start| start.timestamp() > now)
            .filter(|start| !self.too_late_to_confirm(start, kind).unwrap_or(true))
            .collect();
        free.sort_by_key(Zoned::timestamp);
        free.dedup_by_key(|z| z.timestamp());
        free.truncate(count);
        free
    }

    fn booking_start(&self, pseudonym: &Pseudonym, booking_id: i64) -> Option<Zoned> {
        self.rows_of(pseudonym)
            .ok()?
            .into_iter()
            .find(|(_, r)| r.booking_id == Some(booking_id) && !r.canceled)
            .map(|(_, r)| r.start)
    }
}

impl MagicLineBooker {
    /// The trial offer is looked up on the first request and kept.
    pub fn new(
        client: Client,
        store: Arc<Store>,
        audit: Arc<dyn BookingAudit>,
        cfg: BookerConfig,
    ) -> Self {
        MagicLineBooker {
            client,
            store,
            audit,
            cfg,
            offer: Mutex::new(None),
            persons: (0..PERSON_STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    /// Books (or resumes booking) the trial training of `req`; idempotent per `req.request_id`.
    /// A request id stays bound to its first wished start: choosing an alternative is a new
    /// request.
    pub fn book(&self, req: &BookingRequest) -> BookingOutcome {
        let _person = self.person_lock(&req.pseudonym);
        self.book_locked(req)
    }

    /// Cancels a booking of this person. Cancelling twice leaves it cancelled, so a cancel whose
    /// answer was lost is simply sent again.
    pub fn cancel(&self, pseudonym: &Pseudonym, booking_id: i64) -> Result<(), CancelError> {
        let _person = self.person_lock(pseudonym);
        self.cancel_locked(pseudonym, booking_id)
    }

    /// Moves a booking to the slot of `req` (a new request id): the new slot is checked first so
    /// the old booking is kept when the new one cannot be had; then the old booking is cancelled
    /// and the new one booked. A reschedule that already got past the cancellation resumes as a
    /// plain booking request.
    pub fn reschedule(&self, req: &BookingRequest, old_booking_id: i64) -> BookingOutcome {
        let _person = self.person_lock(&req.pseudonym);
        let key = self.row_key(&req.pseudonym, &req.request_id);
        match self.load(&req.pseudonym, &key) {
            Ok(Some(_)) => return self.book_locked(req),
            Ok(None) => {}
            Err(e) => return self.not_now(req, None, &e),
        }
        let old = match self.rows_of(&req.pseudonym) {
            Ok(rows) => rows
                .into_iter()
                .map(|(_, r)| r)
                .find(|r| r.booking_id == Some(old_booking_id)),
            Err(e) => return self.not_now(req, None, &e),
        };
        let customer = old.as_ref().and_then(|r| Some((r.customer_id?, r.kind?)));
        let mut req = req.clone();
        if let Some((id, kind)) = customer {
            req.magicline_customer_id = Some(id);
            let mut probe = Record::new(&req, (self.cfg.clock)());
            probe.customer_id = Some(id);
            probe.kind = Some(kind);
            match self.slot_is_free(&probe, kind) {
                Ok(true) => {}
                Ok(false) => {
                    let alternatives = self.alternatives(&probe, kind).unwrap_or_default();
                    self.emit(
                        &req,
                        BookingStep::SlotTaken,
                        Some(id),
                        None,
                        Some("slot_taken"),
                    );
                    return BookingOutcome::SlotTaken { alternatives };
                }
                Err(e) => return self.not_now(&req, Some(id), &e),
            }
        }
        match self.cancel_locked(&req.pseudonym, old_booking_id) {
            Ok(()) | Err(CancelError::NotFound) => {}
            Err(CancelError::Unavailable) => {
                return BookingOutcome::Failed(BookingFailure::Unavailable)
            }
        }
        self.book_locked(&req)
    }

    fn person_lock(&self, p: &Pseudonym) -> MutexGuard<'_, ()> {
        let idx = u16::from_be_bytes([p.0[2], p.0[3]]) as usize % self.persons.len();
        self.persons[idx].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn book_locked(&self, req: &BookingRequest) -> BookingOutcome {
        let key = self.row_key(&req.pseudonym, &req.request_id);
        let (key, mut rec) = match self.load(&req.pseudonym, &key) {
            Ok(Some(rec)) => (key, rec),
            Ok(None) => match self.same_slot(req) {
                Ok(Some(earlier)) => earlier,
                Ok(None) => {
                    let rec = Record::new(req, (self.cfg.clock)());
                    if let Err(e) = self.save(&req.pseudonym, req.requested_at, &key, &rec) {
                        return self.not_now(req, None, &e);
                    }
                    (key, rec)
                }
                Err(e) => return self.not_now(req, None, &e),
            },
            Err(e) => return self.not_now(req, None, &e),
        };
        if rec.start.timestamp() != req.start.timestamp() {
            // The id binds the first wished start; a new choice must come with a new id.
            tracing::warn!(customer = %req.pseudonym, request = %req.request_id,
                "booking request repeated with another start; keeping the recorded one");
        }
        if let Some(outcome) = rec.final_outcome() {
            return outcome;
        }
        self.emit(
            req,
            BookingStep::Attempt,
            rec.customer_id,
            rec.booking_id,
            None,
        );
        // A step found in the record (not reached in this call) may have sent its call already.
        let mut sess = Session {
            check_create: true,
            check_book: true,
        };
        match self.drive(req, &key, &mut rec, &mut sess) {
            Ok(outcome) => outcome,
            Err(e) => self.not_now(req, rec.customer_id, &e),
        }
    }

    /// An earlier request of this person for the same start that booked or may still book (not
    /// failed, not taken, not cancelled), with its row key: a new request for that slot (a later
    /// message) continues it, so one customer never holds two bookings of one slot, while a
    /// slot that failed or was taken can be asked for again.
    fn same_slot(&self, req: &BookingRequest) -> Result<Option<(Vec<u8>, Record)>, BookerError> {
        Ok(self.rows_of(&req.pseudonym)?.into_iter().find(|(_, r)| {
            r.start.timestamp() == req.start.timestamp()
                && !r.canceled
                && !matches!(r.step, Step::Failed | Step::SlotTaken)
        }))
    }

    /// Reports a step that could not be completed now; the record keeps the last safe step.
    fn not_now(
        &self,
        req: &BookingRequest,
        customer_id: Option<i64>,
        e: &BookerError,
    ) -> BookingOutcome {
        let (failure, reason) = match e {
            BookerError::NoTrialOffer => (BookingFailure::NotConfigured, "not_configured"),
            BookerError::Forgotten => (BookingFailure::Unavailable, "forgotten"),
            BookerError::MagicLine(e) if e.is_forbidden() => {
                (BookingFailure::NotConfigured, "scope_missing")
            }
            BookerError::MagicLine(ApiError::RateLimited { .. }) => {
                (BookingFailure::Unavailable, "rate_limited")
            }
            _ => (BookingFailure::Unavailable, "unavailable"),
        };
        tracing::warn!(customer = %req.pseudonym, request = %req.request_id, error = %e,
            "booking could not be completed now");
        self.emit(req, BookingStep::Failed, customer_id, None, Some(reason));
        BookingOutcome::Failed(failure)
    }

    fn drive(
        &self,
        req: &BookingRequest,
        key: &[u8],
        rec: &mut Record,
        sess: &mut Session,
    ) -> Result<BookingOutcome, BookerError> {
        loop {
            let done = match rec.step {
                Step::Requested => self.step_requested(req, key, rec, sess)?,
                Step::LeadCreateCalled => self.step_create_lead(req, key, rec, sess)?,
                Step::CustomerKnown | Step::Validated => self.step_validate(req, key, rec, sess)?,
                Step::BookCalled => Some(self.step_book(req, key, rec, sess)?),
                Step::Booked | Step::Confirmed | Step::SlotTaken | Step::Failed => {
                    Some(rec.final_outcome().ok_or(BookerError::Corrupt)?)
                }
            };
            if let Some(outcome) = done {
                return Ok(outcome);
            }
        }
    }

    fn step_requested(
        &self,
        req: &BookingRequest,
        key: &[u8],
        rec: &mut Record,
        sess: &mut Session,
    ) -> Result<Option<BookingOutcome>, BookerError> {
        if rec.start.timestamp() <= (self.cfg.clock)() {
            return self.fail(req, key, rec, Failure::PastStart).map(Some);
        }
        let offer = self.offer()?;
        if let Some((id, kind)) = self.known_customer(req, key)? {
            self.adopt(req, key, rec, id, kind)?;
            return Ok(None);
        }
        // A new person: no lead for a slot that cannot be booked (or confirmed) anyway.
        if self.too_late_to_confirm(&rec.start, Kind::Lead)?
            || !self.slot_is_free(rec, Kind::Lead)?
        {
            return self.slot_taken(req, key, rec, Kind::Lead).map(Some);
        }
        if offer.telephone_mandatory && req.phone.is_none() {
            return self.fail(req, key, rec, Failure::PhoneRequired).map(Some);
        }
        self.lead_verdict(req, key, rec, sess, &offer)
    }

    /// Lead validation and what its status means for the request.
    fn lead_verdict(
        &self,
        req: &BookingRequest,
        key: &[u8],
        rec: &mut Record,
        sess: &mut Session,
        offer: &TrialOffer,
    ) -> Result<Option<BookingOutcome>, BookerError> {
        let lead = lead_request(req, offer);
        match self.safe(|| self.client.validate_lead(&lead))? {
            LeadValidationStatus::Possible => {
                rec.step = Step::LeadCreateCalled;
                self.save(&req.pseudonym, req.requested_at, key, rec)?;
                sess.check_create = false;
                Ok(None)
            }
            LeadValidationStatus::InvalidLeadCustomerData => self
                .fail(req, key, rec, Failure::InvalidCustomerData)
                .map(Some),
            LeadValidationStatus::DuplicateCustomer => self.adopt_duplicate(req, key, rec),
            LeadValidationStatus::Unknown => {
                Err(BookerError::Unexpected("unknown lead validation status"))
            }
        }
    }

    fn step_create_lead(
        &self,
        req: &BookingRequest,
        key: &[u8],
        rec: &mut Record,
        sess: &mut Session,
    ) -> Result<Option<BookingOutcome>, BookerError> {
        let offer = self.offer()?;
        let lead = lead_request(req, &offer);
        let mut attempt = 0;
        loop {
            attempt += 1;
            // An earlier create may have been processed although its answer never arrived.
            if sess.check_create && self.adopt_by_email(req, key, rec)? == Adopted::Yes {
                return Ok(None);
            }
            match self.client.create_lead(&lead) {
                Ok(id) => {
                    rec.customer_id = Some(id);
                    rec.kind = Some(Kind::Lead);
                    rec.lead_created = true;
                    rec.step = Step::CustomerKnown;
                    self.save(&req.pseudonym, req.requested_at, key, rec)?;
                    self.emit(req, BookingStep::LeadCreated, Some(id), None, None);
                    return Ok(None);
                }
                // Rejected: the lead validation says why (someone created the lead meanwhile,
                // or the data no longer passes). A lead it still calls possible is not retried.
                Err(e) if rejected(&e) => {
                    return match self.lead_verdict(req, key, rec, sess, &offer)? {
                        None if rec.step == Step::LeadCreateCalled => Err(BookerError::Unexpected(
                            "lead create rejected although valid",
                        )),
                        next => Ok(next),
                    };
                }
                Err(e) if retryable(&e) && attempt < self.cfg.attempts => {
                    sess.check_create |= e.may_have_been_processed();
                    self.pause(attempt, &e);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn step_validate(
        &self,
        req: &BookingRequest,
        key: &[u8],
        rec: &mut Record,
        sess: &mut Session,
    ) -> Result<Option<BookingOutcome>, BookerError> {
        let (customer_id, kind) = customer_of(rec)?;
        if self.too_late_to_confirm(&rec.start, kind)? {
            return self.slot_taken(req, key, rec, kind).map(Some);
        }
        let Some(booking) = self.booking_request(rec, kind, true)? else {
            return self.slot_taken(req, key, rec, kind).map(Some);
        };
        let status = self.safe(|| booking.validate(&self.client))?;
        match verdict(status) {
            Verdict::Proceed => {
                rec.end = Some(booking.end().clone());
                rec.class_slot_id = booking.class_slot_id();
                rec.step = Step::Validated;
                self.save(&req.pseudonym, req.requested_at, key, rec)?;
                // The book call follows at once; the record must say so before it leaves.
                rec.step = Step::BookCalled;
                self.save(&req.pseudonym, req.requested_at, key, rec)?;
                sess.check_book = false;
                tracing::debug!(customer = %req.pseudonym, magicline_customer = customer_id,
                    "slot validated, booking");
                Ok(None)
            }
            Verdict::SlotTaken => self.slot_taken(req, key, rec, kind).map(Some),
            Verdict::Fail(f) => self.fail(req, key, rec, f).map(Some),
        }
    }

    fn step_book(
        &self,
        req: &BookingRequest,
        key: &[u8],
        rec: &mut Record,
        sess: &mut Session,
    ) -> Result<BookingOutcome, BookerError> {
        let (_, kind) = customer_of(rec)?;
        let Some(booking) = self.booking_request(rec, kind, false)? else {
            return Err(BookerError::Unexpected("booked slot has no end"));
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            if sess.check_book {
                if let Some(found) = self.find_booking(rec)? {
                    tracing::info!(customer = %req.pseudonym, booking_id = found.booking_id,
                        "an earlier book call did book");
                    return self.booked(req, key, rec, &found, kind);
                }
            }
            match booking.book(&self.client) {
                Ok(made) => return self.booked(req, key, rec, &made, kind),
                Err(e) => {
                    if rejected(&e) {
                        // Rejected, so nothing was booked by this call; the validation says why.
                        let status = self.safe(|| booking.validate(&self.client))?;
                        return match verdict(status) {
                            Verdict::Proceed => {
                                Err(BookerError::Unexpected("book rejected as available"))
                            }
                            Verdict::SlotTaken => self.slot_taken(req, key, rec, kind),
                            Verdict::Fail(f) => self.fail(req, key, rec, f),
                        };
                    }
                    sess.check_book |= e.may_have_been_processed();
                    if !retryable(&e) || attempt >= self.cfg.attempts {
                        return Err(e.into());
                    }
                    self.pause(attempt, &e);
                }
            }
        }
    }

    /// Confirms a booking of this person that awaits confirmation, after the lead said yes.
    /// Confirming twice is harmless, so a confirmation whose answer was lost is sent again.
    pub fn confirm(&self, p: &Pseudonym, booking_id: i64) -> ConfirmOutcome {
        let _person = self.person_lock(p);
        let row = match self.rows_of(p) {
            Ok(rows) => rows
                .into_iter()
                .find(|(_, r)| r.booking_id == Some(booking_id) && r.kind == Some(Kind::Lead)),
            Err(e) => {
                tracing::warn!(customer = %p, error = %e, "booking rows unreadable");
                return ConfirmOutcome::Unavailable;
            }
        };
        let Some((key, mut rec)) = row else {
            return ConfirmOutcome::NotFound;
        };
        if rec.step == Step::Confirmed || (rec.step == Step::Booked && !rec.confirmation_required) {
            return ConfirmOutcome::Confirmed { start: rec.start };
        }
        if rec.step != Step::Booked || rec.canceled {
            return ConfirmOutcome::NotFound;
        }
        let req = self.stored_request(p, &rec);
        match self.confirm_call(&req, &key, &mut rec, booking_id) {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::warn!(customer = %p, booking_id, error = %e, "booking not confirmed");
                ConfirmOutcome::Unavailable
            }
        }
    }

    fn confirm_call(
        &self,
        req: &BookingRequest,
        key: &[u8],
        rec: &mut Record,
        booking_id: i64,
    ) -> Result<ConfirmOutcome, BookerError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.client.confirm_trial_booking(booking_id) {
                Ok(ConfirmationStatus::Confirmed) => {
                    rec.step = Step::Confirmed;
                    self.save(&req.pseudonym, req.requested_at, key, rec)?;
                    self.emit(
                        req,
                        BookingStep::Confirmed,
                        rec.customer_id,
                        Some(booking_id),
                        None,
                    );
                    return Ok(ConfirmOutcome::Confirmed {
                        start: rec.start.clone(),
                    });
                }
                Ok(ConfirmationStatus::Expired) => {
                    rec.canceled = true;
                    self.fail(req, key, rec, Failure::ConfirmationExpired)?;
                    return Ok(ConfirmOutcome::Expired);
                }
                Ok(ConfirmationStatus::Unknown) => {
                    return Err(BookerError::Unexpected("unknown confirmation status"))
                }
                Err(e) if retryable(&e) && attempt < self.cfg.attempts => self.pause(attempt, &e),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// A request standing for a recorded booking (for steps the lead starts later, such as the
    /// confirmation): the records it writes count from now.
    fn stored_request(&self, p: &Pseudonym, rec: &Record) -> BookingRequest {
        BookingRequest {
            request_id: rec.request_id.clone(),
            pseudonym: *p,
            firstname: String::new(),
            lastname: String::new(),
            email: String::new(),
            phone: None,
            magicline_customer_id: rec.customer_id,
            requested_at: (self.cfg.clock)(),
            start: rec.start.clone(),
        }
    }

    // ---- transitions ----

    fn adopt(
        &self,
        req: &BookingRequest,
        key: &[u8],
        rec: &mut Record,
        id: i64,
        kind: Kind,
    ) -> Result<(), BookerError> {
        rec.customer_id = Some(id);
        rec.kind = Some(kind);
        rec.step = Step::CustomerKnown;
        self.save(&req.pseudonym, req.requested_at, key, rec)?;
        self.emit(req, BookingStep::CustomerMatched, Some(id), None, None);
        Ok(())
    }

    /// Continues with the customer MagicLine has under this e-mail, if any.
    /// Continues as the MagicLine customer with the request's e-mail, but only when their record
    /// carries the contact's phone number. Returns the failure when the e-mail is someone else's,
    /// `Ok(None)` once adopted, and `Err` when nobody has the e-mail.
    fn adopt_by_email(
        &self,
        req: &BookingRequest,
        key: &[u8],
        rec: &mut Record,
    ) -> Result<Adopted, BookerError> {
        let hits = self.safe(|| self.client.find_customers_by_email(&req.email))?;
        match match_by_email(&hits, req.phone.as_deref()) {
            ByEmail::Theirs(c) => {
                self.adopt(req, key, rec, c.id, kind_of(c))?;
                Ok(Adopted::Yes)
            }
            ByEmail::SomeoneElses => Ok(Adopted::SomeoneElses),
            ByEmail::Nobody => Ok(Adopted::Nobody),
        }
    }

    /// [`Self::adopt_by_email`] after MagicLine said `DUPLICATE_CUSTOMER`: someone has the
    /// e-mail, so finding nobody is an inconsistency.
    fn adopt_duplicate(
        &self,
        req: &BookingRequest,
        key: &[u8],
        rec: &mut Record,
    ) -> Result<Option<BookingOutcome>, BookerError> {
        match self.adopt_by_email(req, key, rec)? {
            Adopted::Yes => Ok(None),
            Adopted::SomeoneElses => self
                .fail(req, key, rec, Failure::OtherPersonsAccount)
                .map(Some),
            Adopted::Nobody => Err(BookerError::Unexpected(
                "duplicate customer not found by e-mail",
            )),
        }
    }

    fn booked(
        &self,
        req: &BookingRequest,
        key: &[u8],
        rec: &mut Record,
        made: &Made,
        kind: Kind,
    ) -> Result<BookingOutcome, BookerError> {
        if made.status == BookingStatus::WaitingList {
            // The class filled up between validation and booking: a waiting-list place is no
            // trial, so it is given back and other dates are offered.
            tracing::info!(customer = %req.pseudonym, booking_id = made.booking_id,
                "class full, the booking landed on the waiting list; giving it back");
            self.leave_waiting_list(made.booking_id)?;
            return self.slot_taken(req, key, rec, kind);
        }
        rec.booking_id = Some(made.booking_id);
        rec.confirmation_required = made.status == BookingStatus::BookedWithConfirmationRequired;
        rec.step = Step::Booked;
        // A trial booked after an earlier one was cancelled or missed counts as rebooked.
        let rebooked = self.rows_of(&req.pseudonym)?.iter().any(|(k, r)| {
            k.as_slice() != key && r.booking_id.is_some() && (r.canceled || r.no_show)
        });
        let at = (self.cfg.clock)();
        self.save_with(&req.pseudonym, req.requested_at, key, rec, |batch| {
            if rebooked {
                crate::stats::record(&self.store, batch, crate::stats::FunnelEvent::Rebooked, at)?;
            }
            Ok(())
        })?;
        self.emit(
            req,
            BookingStep::Booked,
            rec.customer_id,
            Some(made.booking_id),
            None,
        );
        tracing::info!(customer = %req.pseudonym, booking_id = made.booking_id,
            magicline_customer = rec.customer_id, confirmation_required = rec.confirmation_required,
            "trial training booked");
        // A booking that needs confirmation waits for the lead's yes (see `confirm`).
        rec.final_outcome().ok_or(BookerError::Corrupt)
    }

    fn slot_taken(
        &self,
        req: &BookingRequest,
        key: &[u8],
        rec: &mut Record,
        kind: Kind,
    ) -> Result<BookingOutcome, BookerError> {
        // Without alternatives the answer is still clear; the engine asks for another time.
        let alternatives = self.alternatives(rec, kind).unwrap_or_else(|e| {
            tracing::warn!(customer = %req.pseudonym, error = %e, "no alternatives fetched");
            Vec::new()
        });
        rec.alternatives = alternatives.iter().map(datetime::format).collect();
        rec.step = Step::SlotTaken;
        self.save(&req.pseudonym, req.requested_at, key, rec)?;
        self.emit(
            req,
            BookingStep::SlotTaken,
            rec.customer_id,
            None,
            Some("slot_taken"),
        );
        Ok(BookingOutcome::SlotTaken { alternatives })
    }

    fn fail(
        &self,
        req: &BookingRequest,
        key: &[u8],
        rec: &mut Record,
        failure: Failure,
    ) -> Result<BookingOutcome, BookerError> {
        rec.failure = Some(failure);
        rec.step = Step::Failed;
        self.save(&req.pseudonym, req.requested_at, key, rec)?;
        self.emit(
            req,
            BookingStep::Failed,
            rec.customer_id,
            rec.booking_id,
            Some(failure.reason()),
        );
        tracing::info!(customer = %req.pseudonym, reason = failure.reason(), "booking failed");
        Ok(BookingOutcome::Failed(failure.public()))
    }

    fn cancel_locked(&self, p: &Pseudonym, booking_id: i64) -> Result<(), CancelError> {
        let started = jiff::Timestamp::now();
        let row = match self.rows_of(p) {
            Ok(rows) => rows
                .into_iter()
                .find(|(_, r)| r.booking_id == Some(booking_id)),
            Err(e) => {
                tracing::warn!(customer = %p, error = %e, "booking rows unreadable");
                None
            }
        };
        let request_id = row
            .as_ref()
            .map(|(_, r)| r.request_id.clone())
            .unwrap_or_default();
        let customer_id = row.as_ref().and_then(|(_, r)| r.customer_id);
        let class = row.as_ref().is_some_and(|(_, r)| r.class_slot_id.is_some());
        let event = |step, reason| BookingEvent {
            pseudonym: *p,
            request_id: request_id.clone(),
            step,
            magicline_customer_id: customer_id,
            booking_id: Some(booking_id),
            reason,
        };
        let mut attempt = 0;
        let mut maybe_done = false;
        loop {
            attempt += 1;
            let result = if class {
                self.client.cancel_class_booking(booking_id)
            } else {
                self.client.cancel_booking(booking_id)
            };
            match result {
                Ok(()) => break,
                // An earlier try that went through may make the booking unknown now.
                Err(ApiError::Api { status: 404, .. }) if maybe_done => break,
                Err(ApiError::Api { status: 404, .. }) => {
                    self.audit
                        .record(event(BookingStep::CancelFailed, Some("not_found")));
                    return Err(CancelError::NotFound);
                }
                Err(e) if retryable(&e) && attempt < self.cfg.attempts => {
                    maybe_done |= e.may_have_been_processed();
                    self.pause(attempt, &e);
                }
                Err(e) => {
                    tracing::warn!(customer = %p, booking_id, error = %e, "cancel failed");
                    self.audit
                        .record(event(BookingStep::CancelFailed, Some("unavailable")));
                    return Err(CancelError::Unavailable);
                }
            }
        }
        if let Some((key, mut rec)) = row {
            rec.canceled = true;
            if let Err(e) = self.save(p, started, &key, &rec) {
                tracing::warn!(customer = %p, error = %e, "cancellation not recorded locally");
            }
        }
        self.audit.record(event(BookingStep::Canceled, None));
        tracing::info!(customer = %p, booking_id, "booking cancelled");
        Ok(())
    }

    // ---- MagicLine lookups ----

    fn offer(&self) -> Result<TrialOffer, BookerError> {
        if let Some(o) = *self.offer.lock().unwrap_or_else(|e| e.into_inner()) {
            return Ok(o);
        }
        let (config_id, target, duration_minutes) = self.chosen_offer()?;
        let config = self.safe(|| self.client.trial_offer_config(config_id))?;
        let lead_data = &config.lead_data_config;
        // frontdesk asks leads for name, e-mail and (through WhatsApp) the number only.
        if [
            lead_data.gender_mode,
            lead_data.date_of_birth_mode,
            lead_data.address_mode,
        ]
        .contains(&FieldMode::Mandatory)
        {
            tracing::warn!(
                config_id = config.id,
                "the trial offer requires gender, date of birth or address, which frontdesk does not collect"
            );
            return Err(BookerError::NoTrialOffer);
        }
        let offer = TrialOffer {
            config_id,
            target,
            duration_minutes,
            confirmation_term: config
                .confirmation_of_booking_term
                .as_ref()
                .and_then(super::api::Term::span),
            telephone_mandatory: lead_data.telephone_mode == FieldMode::Mandatory,
        };
        *self.offer.lock().unwrap_or_else(|e| e.into_inner()) = Some(offer);
        Ok(offer)
    }

    /// The configured trial offer as MagicLine lists it: its configuration id, what a lead
    /// books, and the length of a trial.
    fn chosen_offer(&self) -> Result<(i64, OfferTarget, Option<u32>), BookerError> {
        if let Some(id) = self.cfg.trial_class_id {
            let list = self.safe(|| self.client.trial_offer_classes())?;
            let chosen = list
                .iter()
                .find(|o| o.trial_offer_class.id == id && o.trial_offer_class.bookable)
                .ok_or(BookerError::NoTrialOffer)?;
            return Ok((
                chosen.trial_offer_config_id,
                OfferTarget::Class(id),
                chosen.trial_offer_class.duration,
            ));
        }
        let list = self.safe(|| self.client.trial_offer_appointments())?;
        let chosen = match self.cfg.trial_appointment_id {
            Some(id) => list
                .iter()
                .find(|o| o.trial_offer_bookable_appointment.id == id),
            None => {
                if list.len() > 1 {
                    tracing::warn!(offers = list.len(),
                        "several bookable trial offers and magicline.trial_offer_appointment_id unset; taking the first");
                }
                list.first()
            }
        };
        let chosen = chosen.ok_or(BookerError::NoTrialOffer)?;
        Ok((
            chosen.trial_offer_config_id,
            OfferTarget::Appointment(chosen.trial_offer_bookable_appointment.id),
            chosen.trial_offer_bookable_appointment.duration,
        ))
    }

    /// The appointment type a booking of `kind` books: the trial offer's for leads, the
    /// configured member type (else the trial offer's) for members. A trial offer that is a
    /// class has none, so members then need `magicline.member_appointment_id`.
    fn appointment_id(&self, kind: Kind) -> Result<i64, BookerError> {
        let trial = match self.offer()?.target {
            OfferTarget::Appointment(id) => Some(id),
            OfferTarget::Class(_) => None,
        };
        match kind {
            Kind::Lead => trial.ok_or(BookerError::Unexpected("the trial offer is a class")),
            Kind::Member => self
                .cfg
                .member_appointment_id
                .or(trial)
                .ok_or(BookerError::NoTrialOffer),
        }
    }

    /// The member this contact is: found by e-mail, else by first and last name, with a
    /// current membership and the contact's number on record (a namesake or a shared e-mail
    /// with another number is not them).
    fn member_of(&self, contact: &ContactData) -> Result<Option<i64>, BookerError> {
        let searches = [
            contact.email.as_deref().map(CustomerSearch::by_email),
            match (&contact.firstname, &contact.lastname) {
                (Some(first), Some(last)) => Some(CustomerSearch {
                    first_name: Some(first.clone()),
                    last_name: Some(last.clone()),
                    ..CustomerSearch::default()
                }),
                _ => None,
            },
        ];
        for search in searches.into_iter().flatten() {
            let hits = self.safe(|| self.client.search_customers(&search))?;
            let member = hits.iter().find(|c| {
                c.status == CustomerStatus::Member
                    && c.phones().any(|typed| same_phone(typed, &contact.phone))
            });
            if let Some(m) = member {
                return Ok(Some(m.id));
            }
        }
        Ok(None)
    }

    /// A customer MagicLine already has for this person: one an earlier request learned, or
    /// the id the engine knows, when MagicLine confirms it.
    fn known_customer(
        &self,
        req: &BookingRequest,
        key: &[u8],
    ) -> Result<Option<(i64, Kind)>, BookerError> {
        let learned = self
            .rows_of(&req.pseudonym)?
            .into_iter()
            .filter(|(k, _)| k.as_slice() != key)
            .filter_map(|(_, r)| Some((r.customer_id?, r.kind?, r.lead_created)))
            .max_by_key(|(_, _, created)| *created);
        if let Some((id, kind, _)) = learned {
            return Ok(Some((id, kind)));
        }
        let Some(id) = req.magicline_customer_id else {
            return Ok(None);
        };
        // A member recognised by name may not have told their e-mail.
        if !req.email.is_empty() {
            let hits = self.safe(|| self.client.find_customers_by_email(&req.email))?;
            if let Some(c) = hits.iter().find(|c| c.id == id) {
                return Ok(Some((id, kind_of(c))));
            }
        }
        // The e-mail may have changed in MagicLine; the id still counts if MagicLine knows it.
        match self.safe(|| self.client.customer_bookings(id)) {
            Ok(_) => Ok(Some((id, Kind::Member))),
            Err(ApiError::Api { status: 404, .. }) => {
                tracing::info!(customer = %req.pseudonym, magicline_customer = id,
                    "MagicLine does not know the stored customer id; booking as a new lead");
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Free slots of the kind's appointment type around `from`'s day.
    fn slots(
        &self,
        kind: Kind,
        customer_id: Option<i64>,
        from: jiff::civil::Date,
        days: u32,
    ) -> Result<Vec<Slot>, BookerError> {
        if kind == Kind::Lead {
            if let Some(class_id) = self.trial_class()? {
                return self.free_class_slots(class_id, from, days);
            }
        }
        let appointment = self.appointment_id(kind)?;
        let mut out = Vec::new();
        for query in SlotQuery::windows(customer_id, from, days) {
            out.extend(self.safe(|| match kind {
                Kind::Lead => self.client.trial_offer_slots(appointment, &query),
                Kind::Member => self.client.appointment_slots(appointment, &query),
            })?);
        }
        Ok(out)
    }

    /// Whether a trial booking starting at `start` could no longer be confirmed in time: the
    /// offer's confirmation term (counted back from the start) has begun. Members' bookings
    /// need no confirmation.
    fn too_late_to_confirm(&self, start: &Zoned, kind: Kind) -> Result<bool, BookerError> {
        if kind != Kind::Lead {
            return Ok(false);
        }
        let Some(term) = self.offer()?.confirmation_term else {
            return Ok(false);
        };
        Ok(start
            .checked_sub(term)
            .map_or(true, |deadline| deadline.timestamp() <= (self.cfg.clock)()))
    }

    fn slot_is_free(&self, rec: &Record, kind: Kind) -> Result<bool, BookerError> {
        let slots = self.slots(kind, rec.customer_id, rec.start.date(), 1)?;
        Ok(slots
            .iter()
            .any(|s| s.start_date_time.timestamp() == rec.start.timestamp()))
    }

    /// Up to three free slots nearest to the wished start (the slot list only holds times
    /// within opening hours), in chronological order.
    fn alternatives(&self, rec: &Record, kind: Kind) -> Result<Vec<Zoned>, BookerError> {
        let now = (self.cfg.clock)();
        let today = now.to_zoned(rec.start.time_zone().clone()).date();
        let day_before = rec.start.date().yesterday().unwrap_or(rec.start.date());
        let from = day_before.max(today);
        let days = self.cfg.alternatives_days + 2;
        let wished = rec.start.timestamp();
        let mut free: Vec<Zoned> = Vec::new();
        for s in self.slots(kind, rec.customer_id, from, days)? {
            let start = s.start_date_time;
            if start.timestamp() != wished
                && start.timestamp() > now
                && !self.too_late_to_confirm(&start, kind)?
            {
                free.push(start);
            }
        }
        free.sort_by_key(|s| (s.timestamp().duration_since(wished).abs(), s.timestamp()));
        free.truncate(3);
        free.sort_by_key(|s| s.timestamp());
        Ok(free)
    }

    /// The validate/book call for the recorded slot; `None` when the slot's end cannot be
    /// determined because it is not offered, or a class date has no place free (`fresh`: read
    /// the class date's places again, see [`MagicLineBooker::class_call`]).
    fn booking_request(
        &self,
        rec: &Record,
        kind: Kind,
        fresh: bool,
    ) -> Result<Option<BookCall>, BookerError> {
        let (customer_id, _) = customer_of(rec)?;
        if kind == Kind::Lead {
            if let Some(class_id) = self.trial_class()? {
                return self.class_call(rec, customer_id, class_id, fresh);
            }
        }
        let appointment = self.appointment_id(kind)?;
        let end = match &rec.end {
            Some(end) => end.clone(),
            None => {
                let offer = self.offer()?;
                match offer.duration_minutes {
                    Some(minutes) if offer.target == OfferTarget::Appointment(appointment) => rec
                        .start
                        .checked_add(i64::from(minutes).minutes())
                        .map_err(|_| BookerError::Unexpected("slot end out of range"))?,
                    _ => {
                        let slots = self.slots(kind, Some(customer_id), rec.start.date(), 1)?;
                        match slots
                            .into_iter()
                            .find(|s| s.start_date_time.timestamp() == rec.start.timestamp())
                        {
                            Some(s) => s.end_date_time,
                            None => return Ok(None),
                        }
                    }
                }
            }
        };
        Ok(Some(BookCall::Appointment {
            body: super::api::BookingRequest {
                customer_id,
                bookable_appointment_id: appointment,
                start_date_time: rec.start.clone(),
                end_date_time: end,
                instructor_ids: Vec::new(),
            },
            trial: kind == Kind::Lead,
        }))
    }

    /// The customer's active booking of the recorded slot, if MagicLine has one.
    fn find_booking(&self, rec: &Record) -> Result<Option<Made>, BookerError> {
        let (customer_id, _) = customer_of(rec)?;
        if let Some(slot) = rec.class_slot_id {
            return self.find_class_booking(customer_id, slot);
        }
        let bookings = self.safe(|| self.client.customer_bookings(customer_id))?;
        Ok(bookings
            .into_iter()
            .find(|b| {
                b.is_active()
                    && b.start_date_time.timestamp() == rec.start.timestamp()
                    && rec
                        .end
                        .as_ref()
                        .is_none_or(|end| b.end_date_time.timestamp() == end.timestamp())
            })
            .map(Made::from))
    }

    /// Runs a call that changes nothing in MagicLine, repeating it on transient failures.
    fn safe<T>(&self, mut call: impl FnMut() -> Result<T, ApiError>) -> Result<T, ApiError> {
        let mut attempt = 1;
        loop {
            match call() {
                Ok(v) => return Ok(v),
                Err(e) if retryable(&e) && attempt < self.cfg.attempts => {
                    self.pause(attempt, &e);
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn pause(&self, attempt: u32, e: &ApiError) {
        let cap = self
            .cfg
            .backoff_base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.cfg.backoff_max);
        let wait = match e {
            ApiError::RateLimited {
                retry_after: Some(after),
            } => (*after).min(self.cfg.backoff_max),
            _ => {
                let millis = cap.as_millis().min(u128::from(u64::MAX)) as u64;
                Duration::from_millis(rand::thread_rng().gen_range(0..=millis))
            }
        };
        std::thread::sleep(wait);
    }

    fn emit(
        &self,
        req: &BookingRequest,
        step: BookingStep,
        magicline_customer_id: Option<i64>,
        booking_id: Option<i64>,
        reason: Option<&'static str>,
    ) {
        self.audit.record(BookingEvent {
            pseudonym: req.pseudonym,
            request_id: req.request_id.clone(),
            step,
            magicline_customer_id,
            booking_id,
            reason,
        });
    }

    // ---- the bookings keyspace ----

    fn row_key(&self, p: &Pseudonym, request_id: &str) -> Vec<u8> {
        let mut key = p.0.to_vec();
        key.extend_from_slice(&self.store.token_hash(REQUEST_HASH_DOMAIN, request_id));
        key
    }

    fn load(&self, p: &Pseudonym, key: &[u8]) -> Result<Option<Record>, BookerError> {
        let Some(sealed) = self
            .store
            .keyspaces()
            .bookings
            .get(key)
            .map_err(StoreError::from)?
        else {
            return Ok(None);
        };
        self.open(p, key, &sealed).map(Some)
    }

    fn open(&self, p: &Pseudonym, key: &[u8], sealed: &[u8]) -> Result<Record, BookerError> {
        let data_key = self.store.data_key(p)?.ok_or(BookerError::Corrupt)?;
        let plain = data_key
            .open(ks::BOOKINGS, key, sealed)
            .map_err(StoreError::from)?;
        serde_json::from_slice(&plain).map_err(|_| BookerError::Corrupt)
    }

    /// Every booking row of a person (a handful at most).
    fn rows_of(&self, p: &Pseudonym) -> Result<Vec<(Vec<u8>, Record)>, BookerError> {
        let mut out = Vec::new();
        for guard in self.store.keyspaces().bookings.prefix(p.0) {
            let (k, v) = guard.into_inner().map_err(StoreError::from)?;
            match self.open(p, &k, &v) {
                Ok(rec) => out.push((k.to_vec(), rec)),
                Err(e) => {
                    tracing::warn!(customer = %p, error = %e, "skipping unreadable booking row")
                }
            }
        }
        Ok(out)
    }

    /// Writes the record durably (fsynced) before returning.
    /// Writes a booking record, unless the customer was forgotten at or after `asked_at` (the
    /// forget stands: no record and no fresh key for them).
    fn save(
        &self,
        p: &Pseudonym,
        asked_at: jiff::Timestamp,
        key: &[u8],
        rec: &Record,
    ) -> Result<(), BookerError> {
        self.save_with(p, asked_at, key, rec, |_| Ok(()))
    }

    /// [`MagicLineBooker::save`] with further rows `extra` adds to the same batch. The batch
    /// also links MagicLine's customer and booking ids to the person and schedules a held
    /// booking by its start ([`crate::store::xref`]), so webhook events and the attendance
    /// sweep find it without a scan.
    fn save_with(
        &self,
        p: &Pseudonym,
        asked_at: jiff::Timestamp,
        key: &[u8],
        rec: &Record,
        extra: impl FnOnce(&mut fjall::OwnedWriteBatch) -> Result<(), StoreError>,
    ) -> Result<(), BookerError> {
        let mut rec = rec.clone();
        rec.updated_at = (self.cfg.clock)();
        let _guard = self.store.lock_customer(p);
        if self.store.forgotten_at(p)?.is_some_and(|f| f >= asked_at) {
            return Err(BookerError::Forgotten);
        }
        let mut batch = self.store.batch();
        let data_key = self.store.data_key_or_create(p, &mut batch)?;
        self.schedule_messages(p, &mut rec, &mut batch)?;
        let plain =
            zeroize::Zeroizing::new(serde_json::to_vec(&rec).expect("booking record serialises"));
        let sealed = data_key.seal(ks::BOOKINGS, key, &plain);
        batch.insert(&self.store.keyspaces().bookings, key.to_vec(), sealed);
        if let Some(id) = rec.customer_id {
            self.store
                .link_external(&mut batch, External::MagicLineCustomer, id, p);
        }
        if let Some(id) = rec.booking_id {
            self.store
                .link_external(&mut batch, External::MagicLineBooking, id, p);
            if let Some(slot) = rec.class_slot_id {
                self.store.link_class_date(&mut batch, slot, p);
            }
            if rec.awaits_attendance() {
                self.store
                    .schedule_trial(&mut batch, rec.start.timestamp(), p);
            }
        }
        extra(&mut batch)?;
        self.store.commit_durable(batch)?;
        Ok(())
    }
}

impl MagicLineBooker {
    /// Schedules a new booking's reminders and follow-up, or removes a cancelled one's, in the
    /// batch that records it: a booking is never durable without its messages, nor a
    /// cancellation with them.
    fn schedule_messages(
        &self,
        p: &Pseudonym,
        rec: &mut Record,
        batch: &mut fjall::OwnedWriteBatch,
    ) -> Result<(), BookerError> {
        let Some(id) = rec.booking_id else {
            return Ok(());
        };
        if rec.canceled {
            self.store.unschedule_booking(batch, p, id)?;
            return Ok(());
        }
        let Some(plan) = &self.cfg.reminders else {
            return Ok(());
        };
        if rec.scheduled || !matches!(rec.step, Step::Booked | Step::Confirmed) {
            return Ok(());
        }
        // A booking moved (by staff in MagicLine) is scheduled anew: its old times go.
        self.store.unschedule_booking(batch, p, id)?;
        let start = rec.start.timestamp();
        let end = rec.end.as_ref().map_or_else(
            || start + jiff::SignedDuration::from_hours(1),
            Zoned::timestamp,
        );
        let too_late =
            plan.schedule_booking(&self.store, batch, p, id, (start, end), (self.cfg.clock)())?;
        for kind in too_late {
            tracing::info!(customer = %p, booking_id = id, kind = kind.code(), "booked at short notice: this reminder's time has passed, it is not sent");
        }
        rec.scheduled = true;
        Ok(())
    }
}

#[cfg(any(test, feature = "testkit"))]
impl MagicLineBooker {
    /// Records that the person checked in for booking `booking_id` at `at`, as MagicLine's
    /// check-in events will (tests of what follows a trial).
    pub fn set_checked_in_for_test(
        &self,
        p: &Pseudonym,
        booking_id: i64,
        at: Timestamp,
    ) -> Result<(), BookerError> {
        let _person = self.person_lock(p);
        let (key, mut rec) = self
            .rows_of(p)?
            .into_iter()
            .find(|(_, r)| r.booking_id == Some(booking_id))
            .ok_or(BookerError::Corrupt)?;
        rec.checked_in_at = Some(at);
        self.save(p, at, &key, &rec)
    }
}

/// Records a trial that MagicLine booked for `p` (booking `booking_id`, slot `start..end`, the
/// lead `customer_id`), with the reminders and follow-up `plan` gives it, in one durable write,
/// without calling MagicLine: benchmarks and tests that need many bookings. The customer's key
/// must exist.
#[cfg(any(test, feature = "testkit"))]
pub fn seed_booked_for_test(
    store: &Store,
    plan: Option<&crate::reminders::Plan>,
    p: &Pseudonym,
    (booking_id, customer_id): (i64, i64),
    (start, end): (Zoned, Zoned),
    now: Timestamp,
) -> crate::store::Result<()> {
    let request_id = format!("seed-{booking_id}");
    let mut rec = Record::new(
        &BookingRequest {
            request_id: request_id.clone(),
            pseudonym: *p,
            firstname: String::new(),
            lastname: String::new(),
            email: String::new(),
            phone: None,
            magicline_customer_id: Some(customer_id),
            requested_at: now,
            start,
        },
        now,
    );
    rec.step = Step::Booked;
    rec.end = Some(end.clone());
    rec.customer_id = Some(customer_id);
    rec.kind = Some(Kind::Lead);
    rec.booking_id = Some(booking_id);
    let mut batch = store.batch();
    if let Some(plan) = plan {
        plan.schedule_booking(
            store,
            &mut batch,
            p,
            booking_id,
            (rec.start.timestamp(), end.timestamp()),
            now,
        )?;
        rec.scheduled = true;
    }
    let mut key = p.0.to_vec();
    key.extend_from_slice(&store.token_hash(REQUEST_HASH_DOMAIN, &request_id));
    let data_key = store.data_key(p)?.ok_or(StoreError::NoDataKey)?;
    let plain = serde_json::to_vec(&rec).expect("booking record serialises");
    batch.insert(
        &store.keyspaces().bookings,
        key.clone(),
        data_key.seal(ks::BOOKINGS, &key, &plain),
    );
    store.commit_durable(batch)
}

/// What the reminder scheduler reads of a booking when a message about it is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookingState {
    /// Cancelled (by the contact, by staff in MagicLine, or rescheduled away).
    pub canceled: bool,
    /// When the person checked in for it, if they did.
    pub checked_in_at: Option<Timestamp>,
    /// MagicLine waits for the lead to confirm it.
    pub confirmation_pending: bool,
}

/// The state of booking `booking_id` of `p`, read from its sealed row (`None`: no such row).
pub fn booking_state(
    store: &Store,
    p: &Pseudonym,
    booking_id: i64,
) -> crate::store::Result<Option<BookingState>> {
    let Some(data_key) = store.data_key(p)? else {
        return Ok(None);
    };
    for guard in store.keyspaces().bookings.prefix(p.0) {
        let (k, v) = guard.into_inner()?;
        let Ok(plain) = data_key.open(ks::BOOKINGS, &k, &v) else {
            continue;
        };
        let Ok(rec) = serde_json::from_slice::<Record>(&plain) else {
            continue;
        };
        if rec.booking_id == Some(booking_id) {
            return Ok(Some(BookingState {
                canceled: rec.canceled,
                checked_in_at: rec.checked_in_at,
                confirmation_pending: rec.confirmation_required && rec.step != Step::Confirmed,
            }));
        }
    }
    Ok(None)
}

/// Per-call knowledge that is not recorded: whether a state-changing call of this call's own
/// making may have been processed without an answer.
struct Session {
    check_create: bool,
    check_book: bool,
}

fn customer_of(rec: &Record) -> Result<(i64, Kind), BookerError> {
    match (rec.customer_id, rec.kind) {
        (Some(id), Some(kind)) => Ok((id, kind)),
        _ => Err(BookerError::Corrupt),
    }
}

fn lead_request(req: &BookingRequest, offer: &TrialOffer) -> LeadRequest {
    LeadRequest {
        lead_customer_data: LeadCustomerData {
            // Always sent when known: MagicLine keeps it on the lead, which is how a later
            // request recognises the lead as this contact's.
            telephone: req.phone.as_ref().map(|p| format!("+{p}")),
            ..LeadCustomerData::new(&req.firstname, &req.lastname, &req.email)
        },
        trial_offer_config_id: offer.config_id,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

    use jiff::civil::date;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;
    use crate::magicline::client::RetryPolicy;
    use crate::sandbox::magicline::{
        start, Fault, MagiclineSim, SimAppointment, SimBookingState, SimConfig, SimCustomer,
    };
    use crate::store::crypto::StoreIdentity;

    const BERLIN: &str = "Europe/Berlin";
    const TRIAL: i64 = 1001;
    const ERIKA: i64 = 501;
    const JONAS: i64 = 502;
    const ERIKA_MAIL: &str = "erika.musterfrau@example.org";
    const JONAS_MAIL: &str = "jonas.beispiel@example.org";
    const TRIAL_BOOK: &str = "/trial-offers/appointments/booking/book";
    const TRIAL_VALIDATE: &str = "/trial-offers/appointments/booking/validate";
    const LEAD_CREATE: &str = "/trial-offers/lead/create";
    const MEMBER_BOOK: &str = "/appointments/booking/book";

    /// A simulator on its own runtime and a real store on disk; bookers block on test threads.
    /// Shared with the audit mapping tests.
    pub(crate) struct Harness {
        rt: tokio::runtime::Runtime,
        sim: Option<MagiclineSim>,
        store: Arc<Store>,
        pub(crate) audit: Arc<MemoryAudit>,
        /// Seconds the clients' clock (for rate-limit blocks) is ahead of Monday 09:00.
        client_clock: Arc<AtomicI64>,
        _dir: tempfile::TempDir,
    }

    impl Harness {
        pub(crate) fn new(cfg: SimConfig) -> Harness {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let sim = rt.block_on(start(cfg));
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(Store::open(dir.path(), StoreIdentity::generate()).unwrap());
            Harness {
                rt,
                sim: Some(sim),
                store,
                audit: Arc::new(MemoryAudit::new()),
                client_clock: Arc::new(AtomicI64::new(0)),
                _dir: dir,
            }
        }

        /// Moves the simulator's and the clients' clocks `secs` past Monday 09:00.
        fn advance_to(&self, secs: i64) {
            self.client_clock.store(secs, Ordering::SeqCst);
            self.sim()
                .set_now(monday_nine() + jiff::SignedDuration::from_secs(secs));
        }

        pub(crate) fn sim(&self) -> &MagiclineSim {
            self.sim.as_ref().unwrap()
        }

        /// The store the bookers write to (an engine in tests shares it).
        pub(crate) fn store(&self) -> &Arc<Store> {
            &self.store
        }

        fn client(&self, timeout: Duration) -> Client {
            let offset = self.client_clock.clone();
            Client::new(&self.sim().base_url(), self.sim().api_key(), timeout)
                .with_retry_policy(RetryPolicy {
                    max_attempts: 3,
                    base_delay: Duration::from_millis(1),
                    max_delay: Duration::from_millis(5),
                })
                .with_clock(Arc::new(move || {
                    monday_nine() + jiff::SignedDuration::from_secs(offset.load(Ordering::SeqCst))
                }))
        }

        fn booker_with(&self, timeout: Duration, attempts: u32) -> MagicLineBooker {
            self.booker_configured(timeout, attempts, BookerConfig::default())
        }

        pub(crate) fn booker_configured(
            &self,
            timeout: Duration,
            attempts: u32,
            cfg: BookerConfig,
        ) -> MagicLineBooker {
            MagicLineBooker::new(
                self.client(timeout),
                self.store.clone(),
                self.audit.clone(),
                BookerConfig {
                    attempts,
                    backoff_base: Duration::from_millis(2),
                    backoff_max: Duration::from_millis(20),
                    clock: Arc::new(monday_nine),
                    ..cfg
                },
            )
        }

        pub(crate) fn booker(&self) -> MagicLineBooker {
            self.booker_with(Duration::from_secs(2), 3)
        }

        /// A booker that schedules reminders and follow-ups by `plan`.
        pub(crate) fn reminding_booker(&self, plan: crate::reminders::Plan) -> MagicLineBooker {
            self.booker_configured(
                Duration::from_secs(2),
                3,
                BookerConfig {
                    reminders: Some(plan),
                    ..BookerConfig::default()
                },
            )
        }

        /// The MagicLine simulator.
        pub(crate) fn magicline(&self) -> &MagiclineSim {
            self.sim()
        }

        /// A customer row in the store (the engine always has one before booking).
        pub(crate) fn person(&self, phone: &str) -> Pseudonym {
            self.store
                .update_customer(phone, monday_nine(), |_, _, _| Ok(()))
                .unwrap()
                .0
                .pseudonym
        }

        pub(crate) fn steps(&self, request_id: &str) -> Vec<BookingStep> {
            self.audit
                .events_of(request_id)
                .into_iter()
                .map(|e| e.step)
                .collect()
        }
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            if let Some(sim) = self.sim.take() {
                self.rt.block_on(sim.shutdown());
            }
        }
    }

    /// Monday 2030-06-03 09:00 in Berlin: the simulator's and the booker's clock.
    pub(crate) fn monday_nine() -> Timestamp {
        date(2030, 6, 3)
            .at(9, 0, 0, 0)
            .in_tz(BERLIN)
            .unwrap()
            .timestamp()
    }

    pub(crate) fn sim_cfg() -> SimConfig {
        SimConfig {
            now: Some(monday_nine()),
            ..SimConfig::default()
        }
    }

    /// Berlin wall-clock time `days` after Monday 2030-06-03.
    pub(crate) fn at(days: i64, hour: i8, minute: i8) -> Zoned {
        date(2030, 6, 3)
            .checked_add(days.days())
            .unwrap()
            .at(hour, minute, 0, 0)
            .in_tz(BERLIN)
            .unwrap()
    }

    pub(crate) fn request(
        id: &str,
        p: Pseudonym,
        email: &str,
        magicline_customer_id: Option<i64>,
        start: Zoned,
    ) -> BookingRequest {
        BookingRequest {
            requested_at: jiff::Timestamp::now(),
            request_id: id.to_string(),
            pseudonym: p,
            firstname: "Max".into(),
            lastname: "Mustermann".into(),
            email: email.to_string(),
            phone: None,
            magicline_customer_id,
            start,
        }
    }

    fn booked(outcome: &BookingOutcome) -> (i64, i64, bool) {
        match outcome {
            BookingOutcome::Booked {
                booking_id,
                magicline_customer_id,
                confirmation_pending,
                ..
            } => (*booking_id, *magicline_customer_id, *confirmation_pending),
            other => panic!("expected Booked, got {other:?}"),
        }
    }

    #[test]
    fn a_forget_after_asking_leaves_no_booking_record_and_no_key() {
        let h = Harness::new(sim_cfg());
        let p = h.person("+49 151 0000009");
        let mut req = request("r-forgotten", p, "weg@example.org", None, at(1, 10, 0));
        req.requested_at = jiff::Timestamp::now() - jiff::SignedDuration::from_mins(5);
        // Staff forget the person after they asked, before the booker writes anything.
        h.store.forget(&[p], jiff::Timestamp::now()).unwrap();
        let outcome = h.booker().book_trial(&req);
        assert!(matches!(outcome, BookingOutcome::Failed(_)), "{outcome:?}");
        assert!(h.store.data_key(&p).unwrap().is_none(), "no fresh key");
        assert_eq!(
            h.store.keyspaces().bookings.prefix(p.0).count(),
            0,
            "no booking record"
        );
        let last = h.audit.events_of("r-forgotten").pop().unwrap();
        assert_eq!(
            (last.step, last.reason),
            (BookingStep::Failed, Some("forgotten"))
        );
    }

    #[test]
    fn new_lead_is_booked_end_to_end_and_the_outcome_replays() {
        let h = Harness::new(sim_cfg());
        let p = h.person("+49 151 0000001");
        let req = request("r-1", p, "max@example.org", None, at(1, 10, 0));
        let booker = h.booker();
        let outcome = booker.book_trial(&req);
        let (booking_id, lead_id, pending) = booked(&outcome);
        assert!(!pending);
        let BookingOutcome::Booked { start, .. } = &outcome else {
            unreachable!()
        };
        assert_eq!(start.timestamp(), at(1, 10, 0).timestamp());

        let leads = h.sim().leads();
        assert_eq!(leads.len(), 1);
        assert_eq!(
            (leads[0].customer_id, leads[0].email.as_str()),
            (lead_id, "max@example.org")
        );
        let made = h.sim().bookings_of(lead_id);
        assert_eq!(made.len(), 1);
        assert_eq!(made[0].id, booking_id);
        assert!(made[0].trial);
        assert_eq!(made[0].state, SimBookingState::Booked);
        assert_eq!(
            h.steps("r-1"),
            vec![
                BookingStep::Attempt,
                BookingStep::LeadCreated,
                BookingStep::Booked
            ]
        );
        let booked_event = h.audit.events_of("r-1").pop().unwrap();
        assert_eq!(booked_event.pseudonym, p);
        assert_eq!(booked_event.magicline_customer_id, Some(lead_id));
        assert_eq!(booked_event.booking_id, Some(booking_id));

        // The same request again, from this booker and from a fresh one: no MagicLine call.
        let calls = h.sim().total_requests();
        assert_eq!(booker.book_trial(&req), outcome);
        drop(booker);
        assert_eq!(h.booker().book_trial(&req), outcome);
        assert_eq!(h.sim().total_requests(), calls);
        assert_eq!(h.sim().book_calls(lead_id), 1);

        // The row is keyed by pseudonym and hashed request id and its value is sealed.
        let rows: Vec<(Vec<u8>, Vec<u8>)> = h
            .store
            .keyspaces()
            .bookings
            .iter()
            .map(|g| {
                let (k, v) = g.into_inner().unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].0.len(), 32);
        assert_eq!(&rows[0].0[..16], &p.0);
        let value = &rows[0].1;
        for needle in [&b"r-1"[..], b"request_id", b"booked", b"2030-06-04"] {
            assert!(!value.windows(needle.len()).any(|w| w == needle));
        }
    }

    #[test]
    fn registered_member_books_through_the_appointment_endpoints() {
        let h = Harness::new(sim_cfg());
        let p = h.person("+49 151 0000002");
        let req = request("r-erika", p, ERIKA_MAIL, Some(ERIKA), at(1, 11, 0));
        let (booking_id, customer, _) = booked(&h.booker().book_trial(&req));
        assert_eq!(customer, ERIKA);
        let made = h.sim().bookings_of(ERIKA);
        assert_eq!(made.len(), 1);
        assert_eq!(made[0].id, booking_id);
        assert!(!made[0].trial);
        assert!(h.sim().leads().is_empty());
        assert_eq!(h.sim().request_count("/trial-offers/lead"), 0);
        assert_eq!(h.sim().request_count(MEMBER_BOOK), 1);
        assert_eq!(
            h.steps("r-erika"),
            vec![
                BookingStep::Attempt,
                BookingStep::CustomerMatched,
                BookingStep::Booked
            ]
        );
    }

    #[test]
    fn duplicate_customer_continues_as_the_registered_customer() {
        let h = Harness::new(sim_cfg());
        let p = h.person("+49 151 0000003");
        // The engine does not know Jonas's MagicLine id; lead validation recognises the e-mail,
        // and his record carries the number he writes from.
        let req = BookingRequest {
            phone: Some("491609876502".into()),
            ..request("r-jonas", p, JONAS_MAIL, None, at(2, 9, 0))
        };
        let (_, customer, _) = booked(&h.booker().book_trial(&req));
        assert_eq!(customer, JONAS);
        assert!(h.sim().leads().is_empty());
        assert_eq!(h.sim().request_count("/trial-offers/lead/validate"), 1);
        assert_eq!(h.sim().request_count(LEAD_CREATE), 0);
        assert_eq!(h.sim().bookings_of(JONAS).len(), 1);
    }

    #[test]
    fn someone_elses_email_is_not_booked_on_their_account() {
        let h = Harness::new(sim_cfg());
        let p = h.person("+49 151 0000099");
        // Jonas's e-mail, typed by someone writing from another number (or from a user id
        // without a number): MagicLine says DUPLICATE_CUSTOMER, the phone does not match.
        for (id, phone) in [("r-foreign", Some("491510000099")), ("r-nophone", None)] {
            let req = BookingRequest {
                phone: phone.map(str::to_string),
                ..request(id, p, JONAS_MAIL, None, at(2, 9, 0))
            };
            assert_eq!(
                h.booker().book_trial(&req),
                BookingOutcome::Failed(BookingFailure::OtherPersonsAccount)
            );
            assert_eq!(h.steps(id).last(), Some(&BookingStep::Failed));
        }
        assert!(h.sim().bookings_of(JONAS).is_empty());
        assert!(h.sim().leads().is_empty());
    }

    #[test]
    fn studio_phone_formats_match_the_whatsapp_number() {
        for typed in [
            "+49 151 2345 6701",
            "0049 151 23456701",
            "0151/23456701",
            "491512345 6701",
        ] {
            assert!(same_phone(typed, "4915123456701"), "{typed}");
        }
        for typed in ["+43 151 23456701", "0151 2345670", "", "+49"] {
            assert!(!same_phone(typed, "4915123456701"), "{typed}");
        }
    }

    #[test]
    fn a_new_lead_carries_the_contacts_number() {
        let h = Harness::new(sim_cfg());
        let p = h.person("+49 151 0000098");
        let req = BookingRequest {
            phone: Some("491510000098".into()),
            ..request("r-tel", p, "tel@example.org", None, at(2, 10, 0))
        };
        booked(&h.booker().book_trial(&req));
        assert_eq!(
            h.sim().leads()[0].telephone.as_deref(),
            Some("+491510000098")
        );
    }

    #[test]
    fn a_stored_id_magicline_does_not_know_books_as_new_lead() {
        let h = Harness::new(sim_cfg());
        let p = h.person("+49 151 0000004");
        let req = request("r-x", p, "neu@example.org", Some(987_654), at(1, 12, 0));
        let (_, customer, _) = booked(&h.booker().book_trial(&req));
        assert_ne!(customer, 987_654);
        assert_eq!(h.sim().leads().len(), 1);
        assert_eq!(h.sim().leads()[0].customer_id, customer);
    }

    #[test]
    fn validation_statuses_become_outcomes() {
        use BookingValidationStatus as S;
        let h = Harness::new(sim_cfg());
        let booker = h.booker();
        let p = h.person("+49 151 0000005");
        let cases = [
            (
                S::PastStartDateTime,
                BookingFailure::PastStart,
                "past_start",
            ),
            (
                S::StudioClosed,
                BookingFailure::StudioClosed,
                "studio_closed",
            ),
            (
                S::CustomerInOtherBooking,
                BookingFailure::AlreadyBooked,
                "already_booked",
            ),
            (
                S::NoContingent,
                BookingFailure::LimitReached,
                "limit_reached",
            ),
            (
                S::BookingLimitReached,
                BookingFailure::LimitReached,
                "limit_reached",
            ),
            (
                S::CustomerIdle,
                BookingFailure::Unavailable,
                "customer_idle",
            ),
            (
                S::BookableAppointmentRestrictionsNotFulfilled,
                BookingFailure::Unavailable,
                "not_bookable",
            ),
        ];
        for (i, (status, failure, reason)) in cases.into_iter().enumerate() {
            let id = format!("r-status-{i}");
            h.sim().force_validation_status(status, 1);
            let req = request(&id, p, ERIKA_MAIL, Some(ERIKA), at(1, 14, 0));
            let outcome = booker.book_trial(&req);
            assert_eq!(outcome, BookingOutcome::Failed(failure), "{status:?}");
            let last = h.audit.events_of(&id).pop().unwrap();
            assert_eq!(
                (last.step, last.reason),
                (BookingStep::Failed, Some(reason))
            );
            // Final: asking again changes nothing and calls nothing.
            let calls = h.sim().total_requests();
            assert_eq!(booker.book_trial(&req), outcome);
            assert_eq!(h.sim().total_requests(), calls);
        }
        for (i, status) in [
            S::NotAvailable,
            S::ResourceNotAvailable,
            S::PeriodDoesNotMatch,
        ]
        .into_iter()
        .enumerate()
        {
            let id = format!("r-taken-{i}");
            h.sim().force_validation_status(status, 1);
            let req = request(&id, p, ERIKA_MAIL, Some(ERIKA), at(1, 14, 0));
            match booker.book_trial(&req) {
                BookingOutcome::SlotTaken { alternatives } => assert_eq!(alternatives.len(), 3),
                other => panic!("{status:?}: {other:?}"),
            }
        }
        assert!(h.sim().bookings_of(ERIKA).is_empty());

        // Checked locally, before MagicLine is asked at all.
        let calls = h.sim().total_requests();
        let past = request("r-past", p, ERIKA_MAIL, Some(ERIKA), at(-1, 10, 0));
        assert_eq!(
            booker.book_trial(&past),
            BookingOutcome::Failed(BookingFailure::PastStart)
        );
        assert_eq!(h.sim().total_requests(), calls);

        // Contact data MagicLine refuses: no lead, no booking.
        let q = h.person("+49 151 0000006");
        let bad = request("r-bad", q, "keine-mail", None, at(1, 15, 0));
        assert_eq!(
            booker.book_trial(&bad),
            BookingOutcome::Failed(BookingFailure::InvalidCustomerData)
        );
        assert!(h.sim().leads().is_empty());
    }

    #[test]
    fn taken_slot_offers_the_nearest_free_ones_without_creating_a_lead() {
        let h = Harness::new(sim_cfg());
        let booker = h.booker();
        h.sim().occupy_slot(TRIAL, &at(1, 18, 0));
        let p = h.person("+49 151 0000007");
        let req = request("r-18", p, "anna@example.org", None, at(1, 18, 0));
        let BookingOutcome::SlotTaken { alternatives } = booker.book_trial(&req) else {
            panic!("expected SlotTaken");
        };
        let times: Vec<String> = alternatives.iter().map(datetime::format).collect();
        assert_eq!(
            times,
            vec![
                "2030-06-04T17:00:00.000+02:00[Europe/Berlin]",
                "2030-06-04T17:30:00.000+02:00[Europe/Berlin]",
                "2030-06-04T18:30:00.000+02:00[Europe/Berlin]",
            ]
        );
        assert!(
            h.sim().leads().is_empty(),
            "no lead for a slot that is taken"
        );
        assert_eq!(h.sim().request_count("/trial-offers/lead"), 0);
        assert_eq!(
            h.audit.events_of("r-18").pop().unwrap().reason,
            Some("slot_taken")
        );

        // The customer picks the second one: a new request.
        let choice = request(
            "r-17-30",
            p,
            "anna@example.org",
            None,
            alternatives[1].clone(),
        );
        let (_, lead, _) = booked(&booker.book_trial(&choice));
        let made = h.sim().bookings_of(lead);
        assert_eq!(made.len(), 1);
        assert_eq!(made[0].start.timestamp(), at(1, 17, 30).timestamp());

        // Near closing time only earlier slots and the next morning remain.
        let q = h.person("+49 151 0000015");
        let late = request("r-late", q, "ben@example.org", None, at(1, 20, 30));
        h.sim().occupy_slot(TRIAL, &at(1, 20, 30));
        let BookingOutcome::SlotTaken { alternatives } = booker.book_trial(&late) else {
            panic!("expected SlotTaken");
        };
        assert_eq!(alternatives.len(), 3);
        assert!(alternatives
            .iter()
            .all(|a| a.time() >= jiff::civil::time(8, 0, 0, 0)
                && a.time() < jiff::civil::time(21, 0, 0, 0)));
    }

    #[test]
    fn slot_taken_between_validation_and_booking() {
        let h = Harness::new(sim_cfg());
        h.sim().occupy_slot(TRIAL, &at(2, 10, 0));
        h.sim()
            .force_validation_status(BookingValidationStatus::Available, 1);
        let p = h.person("+49 151 0000008");
        let req = request("r-race", p, ERIKA_MAIL, Some(ERIKA), at(2, 10, 0));
        match h.booker().book_trial(&req) {
            BookingOutcome::SlotTaken { alternatives } => assert_eq!(alternatives.len(), 3),
            other => panic!("{other:?}"),
        }
        assert!(h.sim().bookings_of(ERIKA).is_empty());
        assert_eq!(h.sim().book_calls(ERIKA), 1);
        // The rejection was explained by the validate call, not read from its error code.
        assert_eq!(h.sim().request_count("/appointments/bookable/validate"), 2);
    }

    #[test]
    fn a_booking_that_needs_confirmation_waits_for_the_leads_yes() {
        let h = Harness::new(SimConfig {
            require_confirmation: true,
            ..sim_cfg()
        });
        let booker = h.booker();
        let p = h.person("+49 151 0000009");
        let req = request("r-c1", p, "conf@example.org", None, at(1, 10, 0));
        let (booking_id, lead, pending) = booked(&booker.book_trial(&req));
        assert!(pending);
        assert_eq!(
            h.sim().bookings_of(lead)[0].state,
            SimBookingState::AwaitingConfirmation
        );
        assert_eq!(h.sim().request_count("/trial-offers/bookings"), 0);
        assert!(!h.steps("r-c1").contains(&BookingStep::Confirmed));
        // Asked again (a retried turn, a restart), nothing is confirmed on the lead's behalf.
        let calls = h.sim().total_requests();
        assert_eq!(h.booker().book_trial(&req), booker.book_trial(&req));
        assert_eq!(h.sim().total_requests(), calls);

        // The lead says yes: confirmed; MagicLine unreachable at first, then it goes through.
        h.sim()
            .inject_on("/trial-offers/bookings", Fault::Status(503), 50);
        assert_eq!(booker.confirm(&p, booking_id), ConfirmOutcome::Unavailable);
        h.sim().clear_faults();
        assert_eq!(
            booker.confirm(&p, booking_id),
            ConfirmOutcome::Confirmed {
                start: at(1, 10, 0)
            }
        );
        assert_eq!(h.sim().bookings_of(lead)[0].state, SimBookingState::Booked);
        assert!(h.steps("r-c1").contains(&BookingStep::Confirmed));
        // Twice is harmless and asks MagicLine nothing.
        let calls = h.sim().total_requests();
        assert!(matches!(
            booker.confirm(&p, booking_id),
            ConfirmOutcome::Confirmed { .. }
        ));
        assert_eq!(h.sim().total_requests(), calls);
        assert!(!booked(&booker.book_trial(&req)).2);
        // Only the person's own bookings.
        let other = h.person("+49 151 0000099");
        assert_eq!(booker.confirm(&other, booking_id), ConfirmOutcome::NotFound);

        // A yes after the term before the start has begun comes too late.
        let q = h.person("+49 151 0000010");
        let req = request("r-c2", q, "conf2@example.org", None, at(1, 11, 0));
        let (second, lead2, pending) = booked(&booker.book_trial(&req));
        assert!(pending);
        h.advance_to(24 * 3600 + 30 * 60); // Tuesday 09:30, 90 minutes before the start
        assert_eq!(booker.confirm(&q, second), ConfirmOutcome::Expired);
        assert_eq!(
            h.sim().bookings_of(lead2)[0].state,
            SimBookingState::Canceled
        );
        assert_eq!(
            h.audit.events_of("r-c2").pop().unwrap().reason,
            Some("confirmation_expired")
        );
    }

    #[test]
    fn slots_inside_the_confirmation_term_are_neither_booked_nor_offered() {
        let h = Harness::new(SimConfig {
            require_confirmation: true,
            ..sim_cfg()
        });
        let p = h.person("+49 151 0000016");
        // Monday 10:30 is bookable (an hour's notice) but the 2-hour term before it has begun.
        let req = request("r-soon", p, "soon@example.org", None, at(0, 10, 30));
        let BookingOutcome::SlotTaken { alternatives } = h.booker().book_trial(&req) else {
            panic!("expected SlotTaken");
        };
        assert_eq!(alternatives.len(), 3);
        assert!(
            alternatives
                .iter()
                .all(|a| a.timestamp() > at(0, 11, 0).timestamp()),
            "{alternatives:?}"
        );
        assert!(h.sim().leads().is_empty());
        assert_eq!(h.sim().request_count(TRIAL_BOOK), 0);
    }

    #[test]
    fn late_or_garbled_answers_to_book_book_exactly_once() {
        let h = Harness::new(sim_cfg());
        let booker = h.booker_with(Duration::from_secs(1), 3);
        let faults = [
            (TRIAL_BOOK, Fault::LateAnswer(Duration::from_secs(3))),
            (TRIAL_BOOK, Fault::MalformedJson),
            (TRIAL_BOOK, Fault::SlowBody(Duration::from_secs(3))),
            (TRIAL_BOOK, Fault::Status(500)),
        ];
        for (i, (path, fault)) in faults.into_iter().enumerate() {
            let p = h.person(&format!("+49 151 10000{i:02}"));
            let email = format!("late{i}@example.org");
            h.sim().inject_on(path, fault.clone(), 1);
            let req = request(
                &format!("r-late-{i}"),
                p,
                &email,
                None,
                at(1, 10 + i as i8, 0),
            );
            let (booking_id, lead, _) = booked(&booker.book_trial(&req));
            let made = h.sim().bookings_of(lead);
            assert_eq!(made.len(), 1, "{fault:?}");
            assert_eq!(made[0].id, booking_id);
            // Processed faults are found by looking; rejected ones are simply sent again.
            let expected_calls = match fault {
                Fault::Status(_) => 2,
                _ => 1,
            };
            assert_eq!(h.sim().book_calls(lead), expected_calls, "{fault:?}");
        }

        // The member flow behaves the same.
        let p = h.person("+49 151 2000000");
        h.sim()
            .inject_on(MEMBER_BOOK, Fault::LateAnswer(Duration::from_secs(3)), 1);
        let req = request("r-late-member", p, ERIKA_MAIL, Some(ERIKA), at(3, 10, 0));
        booked(&booker.book_trial(&req));
        assert_eq!(h.sim().bookings_of(ERIKA).len(), 1);
        assert_eq!(h.sim().book_calls(ERIKA), 1);
    }

    #[test]
    fn a_429_is_not_retried_inside_its_minute() {
        let h = Harness::new(sim_cfg());
        let booker = h.booker();
        let p = h.person("+49 151 0000017");
        let req = request("r-429", p, "limit@example.org", None, at(1, 10, 0));
        h.sim()
            .inject_on("/trial-offers/lead/validate", Fault::Status(429), 1);
        assert_eq!(
            booker.book_trial(&req),
            BookingOutcome::Failed(BookingFailure::Unavailable)
        );
        assert_eq!(
            h.audit.events_of("r-429").pop().unwrap().reason,
            Some("rate_limited")
        );
        // Asked again inside the minute: the endpoint is not called again.
        assert_eq!(
            booker.book_trial(&req),
            BookingOutcome::Failed(BookingFailure::Unavailable)
        );
        assert_eq!(h.sim().request_count("/trial-offers/lead/validate"), 1);
        // After the minute the same request books.
        h.advance_to(61);
        booked(&booker.book_trial(&req));
        assert_eq!(h.sim().request_count("/trial-offers/lead/validate"), 2);
    }

    #[test]
    fn alternatives_are_searched_in_windows_of_at_most_six_days() {
        let h = Harness::new(sim_cfg());
        // The shipped search of 16 days: the next free slots are nine days ahead, beyond the
        // first six-day window.
        let booker = h.booker_configured(
            Duration::from_secs(2),
            3,
            BookerConfig {
                alternatives_days: 16,
                ..BookerConfig::default()
            },
        );
        for day in 0..=8 {
            for half_hour in 16..42 {
                h.sim().occupy_slot(
                    TRIAL,
                    &at(day, (half_hour / 2) as i8, (half_hour % 2 * 30) as i8),
                );
            }
        }
        let p = h.person("+49 151 0000018");
        let req = request("r-far", p, "far@example.org", None, at(1, 18, 0));
        let BookingOutcome::SlotTaken { alternatives } = booker.book_trial(&req) else {
            panic!("expected SlotTaken");
        };
        let days: Vec<jiff::civil::Date> = alternatives.iter().map(Zoned::date).collect();
        assert_eq!(days, vec![date(2030, 6, 12); 3], "{alternatives:?}");
        assert_eq!(h.sim().request_count(SLOTS), 1 + 3);
    }

    #[test]
    fn the_configured_trial_offer_is_booked_and_its_mandatory_telephone_respected() {
        let second = SimAppointment {
            id: 1002,
            title: "Probetraining EMS".into(),
            duration_minutes: 30,
            category: "EMS".into(),
        };
        let h = Harness::new(SimConfig {
            more_trial_offers: vec![(2, second)],
            telephone_mode: crate::magicline::api::FieldMode::Mandatory,
            ..sim_cfg()
        });
        let booker = h.booker_configured(
            Duration::from_secs(2),
            3,
            BookerConfig {
                trial_appointment_id: Some(1002),
                ..BookerConfig::default()
            },
        );
        let p = h.person("+49 151 0000019");
        let without_phone = request("r-nophone", p, "ems@example.org", None, at(1, 10, 0));
        assert_eq!(
            booker.book_trial(&without_phone),
            BookingOutcome::Failed(BookingFailure::Unavailable)
        );
        assert_eq!(
            h.audit.events_of("r-nophone").pop().unwrap().reason,
            Some("phone_required")
        );
        assert!(h.sim().leads().is_empty());
        let req = BookingRequest {
            phone: Some("491510000019".into()),
            ..request("r-ems", p, "ems@example.org", None, at(1, 10, 0))
        };
        let (booking_id, lead, _) = booked(&booker.book_trial(&req));
        assert_eq!(h.sim().leads()[0].trial_offer_config_id, 2);
        let made = h.sim().bookings_of(lead);
        assert_eq!((made[0].id, made[0].appointment_id), (booking_id, 1002));

        // A configured offer MagicLine does not list: not configured, staff are told.
        let wrong = h.booker_configured(
            Duration::from_secs(2),
            3,
            BookerConfig {
                trial_appointment_id: Some(4242),
                ..BookerConfig::default()
            },
        );
        let q = h.person("+49 151 0000020");
        assert_eq!(
            wrong.book_trial(&request("r-wrong", q, "x@example.org", None, at(1, 11, 0))),
            BookingOutcome::Failed(BookingFailure::NotConfigured)
        );
    }

    #[test]
    fn lost_lead_create_answer_is_found_by_email() {
        let h = Harness::new(sim_cfg());
        let booker = h.booker_with(Duration::from_secs(1), 3);
        for (i, fault) in [
            Fault::LateAnswer(Duration::from_secs(3)),
            Fault::MalformedJson,
            Fault::Status(500),
        ]
        .into_iter()
        .enumerate()
        {
            let p = h.person(&format!("+49 151 30000{i:02}"));
            let email = format!("lost{i}@example.org");
            h.sim().inject_on(LEAD_CREATE, fault.clone(), 1);
            // The lead carries the contact's number, which is how the lost create's lead is
            // recognised as theirs.
            let req = BookingRequest {
                phone: Some(format!("4915130000{i:02}")),
                ..request(
                    &format!("r-lost-{i}"),
                    p,
                    &email,
                    None,
                    at(2, 10 + i as i8, 0),
                )
            };
            let (_, lead, _) = booked(&booker.book_trial(&req));
            let leads: Vec<_> = h
                .sim()
                .leads()
                .into_iter()
                .filter(|l| l.email == email)
                .collect();
            assert_eq!(leads.len(), 1, "{fault:?}");
            assert_eq!(leads[0].customer_id, lead);
        }
    }

    #[test]
    fn restart_after_lead_created_resumes_without_a_second_lead() {
        let h = Harness::new(sim_cfg());
        let p = h.person("+49 151 0000011");
        let req = request("r-restart", p, "restart@example.org", None, at(1, 16, 0));
        h.sim().inject_on(TRIAL_VALIDATE, Fault::Status(500), 100);
        let first = h.booker();
        assert_eq!(
            first.book_trial(&req),
            BookingOutcome::Failed(BookingFailure::Unavailable)
        );
        assert_eq!(h.sim().leads().len(), 1);
        let last = h.audit.events_of("r-restart").pop().unwrap();
        assert_eq!(
            (last.step, last.reason),
            (BookingStep::Failed, Some("unavailable"))
        );
        drop(first);

        h.sim().clear_faults();
        let second = h.booker();
        let (_, lead, _) = booked(&second.book_trial(&req));
        assert_eq!(h.sim().leads().len(), 1);
        assert_eq!(h.sim().leads()[0].customer_id, lead);
        assert_eq!(h.sim().request_count(LEAD_CREATE), 1);
        assert_eq!(
            h.steps("r-restart"),
            vec![
                BookingStep::Attempt,
                BookingStep::LeadCreated,
                BookingStep::Failed,
                BookingStep::Attempt,
                BookingStep::Booked
            ]
        );
    }

    #[test]
    fn a_later_request_of_the_same_person_reuses_the_lead() {
        let h = Harness::new(sim_cfg());
        let booker = h.booker();
        let p = h.person("+49 151 0000012");
        h.sim().inject_on(TRIAL_VALIDATE, Fault::Status(500), 100);
        let a = request("r-a", p, "again@example.org", None, at(1, 9, 0));
        assert_eq!(
            booker.book_trial(&a),
            BookingOutcome::Failed(BookingFailure::Unavailable)
        );
        h.sim().clear_faults();
        // The engine gives up on the first request and asks for another time.
        let b = request("r-b", p, "again@example.org", None, at(1, 13, 0));
        let (_, lead, _) = booked(&booker.book_trial(&b));
        assert_eq!(h.sim().leads().len(), 1);
        assert_eq!(h.sim().leads()[0].customer_id, lead);
        assert_eq!(h.sim().request_count("/trial-offers/lead/validate"), 1);
    }

    #[test]
    fn a_later_request_for_the_same_slot_continues_the_earlier_one_unless_it_failed() {
        let h = Harness::new(sim_cfg());
        let booker = h.booker();
        let p = h.person("+49 151 0000019");
        let slot = at(1, 15, 0);
        let asked = |id: &str| request(id, p, ERIKA_MAIL, Some(ERIKA), slot.clone());
        // A request that failed does not stand in the way of a later message asking again.
        h.sim()
            .force_validation_status(BookingValidationStatus::CustomerInOtherBooking, 1);
        assert_eq!(
            booker.book_trial(&asked("msg-1")),
            BookingOutcome::Failed(BookingFailure::AlreadyBooked)
        );
        let second = booker.book_trial(&asked("msg-2"));
        let (booking_id, _, _) = booked(&second);
        // A further message for the booked slot is no second booking: it continues that one.
        assert_eq!(booker.book_trial(&asked("msg-3")), second);
        let made = h.sim().bookings_of(ERIKA);
        assert_eq!(made.len(), 1);
        assert_eq!(made[0].id, booking_id);
        assert_eq!(h.sim().book_calls(ERIKA), 1);
    }

    #[test]
    fn restart_after_the_book_call_looks_before_booking_again() {
        let h = Harness::new(sim_cfg());
        let p = h.person("+49 151 0000013");
        let req = request("r-bc", p, "bc@example.org", None, at(1, 15, 0));
        // One try only: the late answer leaves the record at "book called".
        h.sim()
            .inject_on(TRIAL_BOOK, Fault::LateAnswer(Duration::from_secs(3)), 1);
        let first = h.booker_with(Duration::from_secs(1), 1);
        assert_eq!(
            first.book_trial(&req),
            BookingOutcome::Failed(BookingFailure::Unavailable)
        );
        drop(first);
        let lead = h.sim().leads()[0].customer_id;
        assert_eq!(h.sim().bookings_of(lead).len(), 1);

        let (booking_id, customer, _) = booked(&h.booker().book_trial(&req));
        assert_eq!(customer, lead);
        assert_eq!(booking_id, h.sim().bookings_of(lead)[0].id);
        assert_eq!(h.sim().book_calls(lead), 1);
    }

    #[test]
    fn cancel_and_reschedule() {
        let h = Harness::new(sim_cfg());
        let booker = h.booker();
        let p = h.person("+49 151 0000014");
        let first = request("r-first", p, "move@example.org", None, at(1, 10, 0));
        let (old_id, lead, _) = booked(&booker.book_trial(&first));

        // The new slot is taken: the old booking stays.
        h.sim().occupy_slot(TRIAL, &at(1, 12, 0));
        let taken = request("r-move-1", p, "move@example.org", Some(lead), at(1, 12, 0));
        assert!(matches!(
            booker.reschedule(&taken, old_id),
            BookingOutcome::SlotTaken { .. }
        ));
        assert_eq!(h.sim().bookings_of(lead)[0].state, SimBookingState::Booked);

        let moved = request("r-move-2", p, "move@example.org", Some(lead), at(1, 11, 0));
        let (new_id, customer, _) = booked(&booker.reschedule(&moved, old_id));
        assert_eq!(customer, lead);
        let made = h.sim().bookings_of(lead);
        assert_eq!(made.len(), 2);
        let state = |id| made.iter().find(|b| b.id == id).unwrap().state;
        assert_eq!(state(old_id), SimBookingState::Canceled);
        assert_eq!(state(new_id), SimBookingState::Booked);
        assert_eq!(h.sim().leads().len(), 1);
        // Asked again, the reschedule replays.
        assert_eq!(booked(&booker.reschedule(&moved, old_id)).0, new_id);
        assert_eq!(h.sim().bookings_of(lead).len(), 2);

        assert_eq!(booker.cancel(&p, new_id), Ok(()));
        assert!(h
            .sim()
            .bookings_of(lead)
            .iter()
            .all(|b| b.state == SimBookingState::Canceled));
        assert_eq!(booker.cancel(&p, 99_999), Err(CancelError::NotFound));
        let canceled: Vec<_> = h
            .audit
            .events()
            .into_iter()
            .filter(|e| e.step == BookingStep::Canceled)
            .collect();
        assert_eq!(canceled.len(), 2);
        assert_eq!(canceled[1].booking_id, Some(new_id));
        assert_eq!(canceled[1].request_id, "r-move-2");
    }

    /// How one soak conversation reaches MagicLine.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Who {
        NewLead,
        /// A new lead wishing a slot that is full.
        Contested,
        /// A member whose MagicLine id the engine knows.
        Member,
        /// A member the engine does not know as such (found by e-mail).
        KnownByEmail,
    }

    struct Conversation {
        who: Who,
        req: BookingRequest,
        member_id: Option<i64>,
        fault: Option<(&'static str, Fault)>,
    }

    const SLOTS: &str = "/trial-offers/bookable-trial-offers/appointments/bookable/1001/slots";

    #[test]
    #[expect(
        clippy::too_many_lines,
        reason = "one soak scenario with its fault plan and its checks in one place"
    )]
    fn soak_conversations_with_injected_faults() {
        const N: usize = 1000;
        const WORKERS: usize = 8;
        let who = |i: usize| match i % 20 {
            0..=12 => Who::NewLead,
            13 => Who::Contested,
            14..=16 => Who::Member,
            _ => Who::KnownByEmail,
        };
        let member_id = |i: usize| 600_000 + i as i64;
        let mut cfg = SimConfig {
            slot_capacity: 5,
            require_confirmation: true,
            ..sim_cfg()
        };
        for i in (0..N).filter(|i| matches!(who(*i), Who::Member | Who::KnownByEmail)) {
            cfg.customers.push(SimCustomer {
                id: member_id(i),
                first_name: "Mitglied".into(),
                last_name: format!("Nr{i}"),
                email: format!("member{i}@example.org"),
                idle: false,
                mobile: Some(format!("+49 152 {i:07}")),
            });
        }
        let h = Harness::new(cfg);

        // Slots of the next 13 days (customer bookings are listed two weeks ahead).
        let client = h.client(Duration::from_secs(5));
        let all: Vec<Zoned> = SlotQuery::windows(None, date(2030, 6, 4), 13)
            .iter()
            .flat_map(|q| client.trial_offer_slots(TRIAL, q).unwrap())
            .map(|s| s.start_date_time)
            .collect();
        let contested: Vec<Zoned> = all.iter().step_by(25).take(10).cloned().collect();
        for slot in &contested {
            h.sim().occupy_slot(TRIAL, slot);
        }
        let open: Vec<Zoned> = all
            .iter()
            .filter(|s| !contested.contains(s))
            .cloned()
            .collect();
        assert!(
            open.len() * 5 >= N,
            "enough capacity for every conversation"
        );

        let mut rng = StdRng::seed_from_u64(20300603);
        let mut next_open = 0;
        let mut injected: HashMap<String, usize> = HashMap::new();
        let plan: Vec<Conversation> = (0..N)
            .map(|i| {
                let w = who(i);
                let start = if w == Who::Contested {
                    contested[i % contested.len()].clone()
                } else {
                    next_open += 1;
                    open[(next_open - 1) % open.len()].clone()
                };
                let (email, known_id) = match w {
                    Who::NewLead | Who::Contested => (format!("lead{i}@example.org"), None),
                    Who::Member => (format!("member{i}@example.org"), Some(member_id(i))),
                    Who::KnownByEmail => (format!("member{i}@example.org"), None),
                };
                let paths: &[&'static str] = match w {
                    Who::NewLead => &[
                        SLOTS,
                        "/trial-offers/lead/validate",
                        LEAD_CREATE,
                        TRIAL_VALIDATE,
                        TRIAL_BOOK,
                        "/trial-offers/bookings",
                    ],
                    Who::Contested => &[SLOTS],
                    Who::Member => &[
                        "/customers/search",
                        "/appointments/bookable/validate",
                        MEMBER_BOOK,
                    ],
                    Who::KnownByEmail => &[
                        SLOTS,
                        "/trial-offers/lead/validate",
                        "/customers/search",
                        "/appointments/bookable/validate",
                        MEMBER_BOOK,
                    ],
                };
                let fault = rng.gen_bool(0.2).then(|| {
                    let path = paths[rng.gen_range(0..paths.len())];
                    let fault = match rng.gen_range(0..5) {
                        0 => Fault::Status(500),
                        1 => Fault::Status(503),
                        2 => Fault::Status(502),
                        3 => Fault::LateAnswer(Duration::from_millis(1500)),
                        _ => Fault::MalformedJson,
                    };
                    let name = match &fault {
                        Fault::Status(s) => format!("HTTP {s}"),
                        Fault::LateAnswer(_) => "late answer".into(),
                        Fault::MalformedJson => "malformed JSON".into(),
                        Fault::SlowBody(_) => "slow body".into(),
                    };
                    *injected.entry(name).or_default() += 1;
                    (path, fault)
                });
                Conversation {
                    who: w,
                    req: request(
                        &format!("soak-{i}"),
                        Pseudonym([0; 16]),
                        &email,
                        known_id,
                        start,
                    ),
                    member_id: matches!(w, Who::Member | Who::KnownByEmail).then(|| member_id(i)),
                    fault,
                }
            })
            .collect();
        let mut plan = plan;
        for (i, c) in plan.iter_mut().enumerate() {
            c.req.pseudonym = h.person(&format!("+49 152 {i:07}"));
            c.req.phone = Some(format!("49152{i:07}"));
        }

        let booker = h.booker_with(Duration::from_secs(1), 4);
        let outcomes: Vec<Mutex<Option<BookingOutcome>>> =
            (0..N).map(|_| Mutex::new(None)).collect();
        let next = AtomicUsize::new(0);
        let started = std::time::Instant::now();
        std::thread::scope(|s| {
            for _ in 0..WORKERS {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(c) = plan.get(i) else { break };
                    if let Some((path, fault)) = &c.fault {
                        h.sim().inject_on(path, fault.clone(), 1);
                    }
                    *outcomes[i].lock().unwrap() = Some(booker.book_trial(&c.req));
                });
            }
        });
        let first_pass = started.elapsed();
        h.sim().clear_faults();
        let outcomes: Vec<BookingOutcome> = outcomes
            .into_iter()
            .map(|o| o.into_inner().unwrap().unwrap())
            .collect();
        let unfinished =
            |o: &BookingOutcome| matches!(o, BookingOutcome::Failed(BookingFailure::Unavailable));
        let resumed: Vec<usize> = (0..N).filter(|i| unfinished(&outcomes[*i])).collect();
        let mut outcomes = outcomes;
        for &i in &resumed {
            outcomes[i] = booker.book_trial(&plan[i].req);
        }
        // Every lead says yes to the trial that awaits their confirmation.
        for (c, o) in plan.iter().zip(outcomes.iter_mut()) {
            if let BookingOutcome::Booked {
                booking_id,
                confirmation_pending: true,
                ..
            } = o
            {
                assert!(matches!(
                    booker.confirm(&c.req.pseudonym, *booking_id),
                    ConfirmOutcome::Confirmed { .. }
                ));
                *o = booker.book_trial(&c.req);
            }
        }
        let total = started.elapsed();

        // Every request ended as planned.
        let leads = h.sim().leads();
        let lead_by_email: HashMap<&str, i64> = leads
            .iter()
            .map(|l| (l.email.as_str(), l.customer_id))
            .collect();
        let mut booked_count = 0;
        let mut taken_count = 0;
        for (i, (c, o)) in plan.iter().zip(&outcomes).enumerate() {
            match c.who {
                Who::Contested => {
                    let BookingOutcome::SlotTaken { alternatives } = o else {
                        panic!("conversation {i} ({:?}): {o:?}", c.who);
                    };
                    assert_eq!(alternatives.len(), 3, "conversation {i}");
                    taken_count += 1;
                }
                _ => {
                    let (_, customer, pending) = booked(o);
                    assert!(!pending, "conversation {i}");
                    let expected = c
                        .member_id
                        .unwrap_or_else(|| lead_by_email[c.req.email.as_str()]);
                    assert_eq!(customer, expected, "conversation {i}");
                    booked_count += 1;
                }
            }
        }

        // 0 double bookings, 0 duplicate leads, no lead for members or contested slots.
        let mut per_customer: HashMap<i64, usize> = HashMap::new();
        for b in h.sim().bookings().iter().filter(|b| !b.external) {
            *per_customer.entry(b.customer_id).or_default() += 1;
            assert_ne!(b.state, SimBookingState::Canceled);
        }
        assert!(per_customer.values().all(|n| *n == 1), "double booking");
        assert_eq!(per_customer.len(), booked_count);
        let mut per_email: HashMap<&str, usize> = HashMap::new();
        for l in &leads {
            *per_email.entry(l.email.as_str()).or_default() += 1;
        }
        assert!(per_email.values().all(|n| *n == 1), "duplicate lead");
        let new_leads = plan.iter().filter(|c| c.who == Who::NewLead).count();
        assert_eq!(leads.len(), new_leads);
        assert!(h
            .sim()
            .bookings()
            .iter()
            .filter(|b| b.trial && !b.external)
            .all(|b| b.state == SimBookingState::Booked));

        // Every request audited, ending in its final event.
        for (c, o) in plan.iter().zip(&outcomes) {
            let events = h.audit.events_of(&c.req.request_id);
            assert_eq!(events.first().map(|e| e.step), Some(BookingStep::Attempt));
            let last = events.last().unwrap();
            match o {
                BookingOutcome::Booked { booking_id, .. } => {
                    let booked_event = events
                        .iter()
                        .rev()
                        .find(|e| e.step == BookingStep::Booked)
                        .expect("booked event");
                    assert_eq!(booked_event.booking_id, Some(*booking_id));
                    assert!(matches!(
                        last.step,
                        BookingStep::Booked | BookingStep::Confirmed
                    ));
                }
                BookingOutcome::SlotTaken { .. } => assert_eq!(last.step, BookingStep::SlotTaken),
                BookingOutcome::Failed(_) => assert_eq!(last.step, BookingStep::Failed),
            }
            assert!(events.iter().all(|e| e.pseudonym == c.req.pseudonym));
        }

        let faults: usize = injected.values().sum();
        let book_calls: usize = per_customer.keys().map(|c| h.sim().book_calls(*c)).sum();
        eprintln!(
            "booking soak: {N} conversations ({booked_count} booked, {taken_count} slot taken), \
             {faults} faults injected {injected:?}, {} resumed after the first pass, \
             {book_calls} book calls for {booked_count} bookings, {} MagicLine requests, \
             first pass {first_pass:.1?}, total {total:.1?}",
            resumed.len(),
            h.sim().total_requests(),
        );
    }
}
