//! The booking interface between the conversation engine and MagicLine. The engine decides
//! *that* a trial should be booked and *which* slot; a [`Booker`] carries it out idempotently
//! and reports one of three outcomes, which the engine turns into the reply.

use jiff::Zoned;

use crate::store::crypto::Pseudonym;

/// One booking request. `request_id` is stable across retries and restarts: a booker never books
/// twice for the same id.
#[derive(Clone, PartialEq)]
pub struct BookingRequest {
    /// The engine's id of this booking; the same on every retry.
    pub request_id: String,
    /// The customer, by pseudonym.
    pub pseudonym: Pseudonym,
    /// First name for a new lead.
    pub firstname: String,
    /// Last name for a new lead.
    pub lastname: String,
    /// E-mail address for a new lead; also how an existing one is found.
    pub email: String,
    /// The contact's phone number (digits, international form), when WhatsApp told us; sent
    /// with a new lead and required to book for a person MagicLine already knows by e-mail.
    pub phone: Option<String>,
    /// Known MagicLine customer (or lead) id, if any.
    pub magicline_customer_id: Option<i64>,
    /// When the contact asked (their newest message): a forget after it voids the request, so
    /// its records are not written back under a fresh key.
    pub requested_at: jiff::Timestamp,
    /// Wished start in Europe/Berlin.
    pub start: Zoned,
}

impl std::fmt::Debug for BookingRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "BookingRequest{{{}, {}, start {}}}",
            self.request_id, self.pseudonym, self.start
        )
    }
}

/// Why a booking did not happen (each maps to a German reply in the engine).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BookingFailure {
    /// The wished time is in the past.
    PastStart,
    /// The studio is closed then.
    StudioClosed,
    /// MagicLine rejected the contact data (e.g. e-mail).
    InvalidCustomerData,
    /// The person already has a booking at that time or reached a limit.
    AlreadyBooked,
    /// No trial contingent / booking limit reached.
    LimitReached,
    /// MagicLine could not be reached or answered with an error; staff were alerted.
    Unavailable,
    /// Booking is not configured on this box.
    NotConfigured,
    /// The e-mail belongs to a person MagicLine knows whose phone number is not the contact's:
    /// booking on their account could be booking for someone else, so staff take over.
    OtherPersonsAccount,
}

/// The outcome of a booking request.
#[derive(Debug, Clone, PartialEq)]
pub enum BookingOutcome {
    /// MagicLine holds the booking.
    Booked {
        /// MagicLine's id of the booking.
        booking_id: i64,
        /// When the trial starts (the slot as booked).
        start: Zoned,
        /// MagicLine's id of the person (existing or newly created lead).
        magicline_customer_id: i64,
        /// The trial offer needs the lead's confirmation: the lead is asked, and their yes is
        /// passed on with [`Booker::confirm_trial`]. Unconfirmed, MagicLine drops the booking
        /// when the offer's confirmation term before the start begins.
        confirmation_pending: bool,
    },
    /// The slot is taken; up to three nearby free slots (may be empty).
    SlotTaken {
        /// Nearby free starts to offer instead.
        alternatives: Vec<Zoned>,
    },
    /// No booking; the reason decides the reply.
    Failed(BookingFailure),
}

/// What confirming a booking that awaits the lead's confirmation came to.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfirmOutcome {
    /// Confirmed (also when it already was).
    Confirmed {
        /// When the trial starts.
        start: Zoned,
    },
    /// Too late: the confirmation term had begun and MagicLine dropped the booking.
    Expired,
    /// No booking of this person awaits confirmation under that id.
    NotFound,
    /// MagicLine could not be reached or refused; the lead may say yes again.
    Unavailable,
}

/// What the contact's data is known to be, to recognise them among the studio's members.
#[derive(Clone, PartialEq)]
pub struct ContactData {
    /// The customer, by pseudonym.
    pub pseudonym: Pseudonym,
    /// First name, when known.
    pub firstname: Option<String>,
    /// Last name, when known.
    pub lastname: Option<String>,
    /// E-mail address, when known.
    pub email: Option<String>,
    /// The contact's WhatsApp number (digits, international form): a member is recognised only
    /// when their MagicLine record carries it.
    pub phone: String,
}

impl std::fmt::Debug for ContactData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ContactData{{{}}}", self.pseudonym)
    }
}

/// Whether a contact is one of the studio's members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberLookup {
    /// A MagicLine customer with a current membership and the contact's number.
    Member {
        /// MagicLine's id of the member.
        magicline_customer_id: i64,
    },
    /// No member with this data and number.
    NotMember,
    /// MagicLine could not be asked now; a later change of data asks again.
    Unavailable,
}

/// What cancelling a booking came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// Cancelled (also when it already was).
    Canceled,
    /// The slot has begun or passed: nothing is cancelled.
    Past,
    /// No booking of this person under that id.
    NotFound,
    /// MagicLine could not be reached or refused; the booking stands.
    Unavailable,
}

/// Carries out bookings (implemented on MagicLine; a scripted one in engine tests).
pub trait Booker: Send + Sync {
    /// Books a trial training, or for a request naming a member's MagicLine id an appointment
    /// through the member flow. Blocking; idempotent per `request_id`.
    fn book_trial(&self, req: &BookingRequest) -> BookingOutcome;

    /// Recognises the contact as a member: a MagicLine customer with a current membership found
    /// by e-mail or name whose record carries the contact's number. Bookers without members
    /// keep the default.
    fn find_member(&self, _contact: &ContactData) -> MemberLookup {
        MemberLookup::NotMember
    }

    /// Moves the booking `old_booking_id` to the slot of `req` (a new request): the new slot is
    /// checked first, so the old booking stays when the new one cannot be had.
    fn move_booking(&self, _req: &BookingRequest, _old_booking_id: i64) -> BookingOutcome {
        BookingOutcome::Failed(BookingFailure::NotConfigured)
    }

    /// Cancels a booking of this person. Cancelling twice is harmless.
    fn cancel_booking(&self, _pseudonym: &Pseudonym, _booking_id: i64) -> CancelOutcome {
        CancelOutcome::Unavailable
    }

    /// Confirms a booking that was answered with `confirmation_pending`, after the lead said
    /// yes. Blocking; confirming twice is harmless. Bookers whose bookings never await
    /// confirmation keep the default.
    fn confirm_trial(&self, _pseudonym: &Pseudonym, _booking_id: i64) -> ConfirmOutcome {
        ConfirmOutcome::NotFound
    }

    /// Books `req` in place of booking `old_booking_id` of the same person (a move the contact
    /// asked for): the old one is given up only once the new slot can be had. Blocking;
    /// idempotent per request id. Bookers without a way to move keep the default, a plain
    /// booking.
    fn reschedule_trial(&self, req: &BookingRequest, _old_booking_id: i64) -> BookingOutcome {
        self.book_trial(req)
    }

    /// Cancels a booking of this person that lies ahead (a tap on a reminder's cancel button,
    /// the old booking after a reschedule). Blocking; cancelling twice is harmless.
    fn cancel_trial(&self, _pseudonym: &Pseudonym, _booking_id: i64) -> CancelOutcome {
        CancelOutcome::NotFound
    }

    /// Up to `count` free trial slots from `from` on, to offer a contact who wants another
    /// time. Blocking; empty when none are known.
    fn free_slots(&self, _pseudonym: &Pseudonym, _from: &Zoned, _count: usize) -> Vec<Zoned> {
        Vec::new()
    }

    /// The start of a booking of this person, when it is known.
    fn booking_start(&self, _pseudonym: &Pseudonym, _booking_id: i64) -> Option<Zoned> {
        None
    }
}
