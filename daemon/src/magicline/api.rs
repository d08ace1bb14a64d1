//! Wire types of the MagicLine Open API (v1) endpoints frontdesk uses: trial offers (lead flow,
//! as an appointment or as a class), appointments (registered-customer flow), class bookings,
//! customer search and the error body.
//!
//! Field names are camelCase as on the wire. Unknown fields are ignored and unknown enum values map
//! to an `Unknown` variant, so additions on MagicLine's side never break decoding. Optional request
//! fields are omitted rather than sent as `null`.

use jiff::civil::Date;
use jiff::Zoned;
use serde::{Deserialize, Serialize};

use super::datetime::serde_zoned;

/// One slice of a paged list (`result`, `hasNext`, `offset`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    /// The entries of this slice.
    pub result: Vec<T>,
    /// Whether another slice follows.
    #[serde(default)]
    pub has_next: bool,
    /// Cursor for the next slice (the last id of this one).
    #[serde(default)]
    pub offset: Option<String>,
}

/// A bookable appointment type (e.g. "Probetraining", "EMS-Training").
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BookableAppointment {
    /// MagicLine's id, used in the slot, validate and book calls.
    pub id: i64,
    /// Name shown to customers.
    #[serde(default)]
    pub title: Option<String>,
    /// Minutes.
    #[serde(default)]
    pub duration: Option<u32>,
    /// MagicLine's category of the appointment type.
    #[serde(default)]
    pub category: Option<String>,
    /// Free text the studio entered.
    #[serde(default)]
    pub description: Option<String>,
}

/// An entry of `GET /trial-offers/bookable-trial-offers/appointments/bookable`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TrialOfferAppointment {
    /// The trial offer this appointment belongs to (see [`TrialOfferConfig`]).
    pub trial_offer_config_id: i64,
    /// The appointment type a lead books with this offer.
    pub trial_offer_bookable_appointment: BookableAppointment,
}

/// Whether a lead data field must, may or must not be sent.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FieldMode {
    /// The field is not asked for and must not be sent.
    Inactive,
    /// The field may be sent.
    Optional,
    /// The field must be sent.
    Mandatory,
    /// A mode this client does not know.
    #[serde(other)]
    Unknown,
}

/// Which optional lead fields a trial offer asks for.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LeadDataConfig {
    /// MagicLine's id of this configuration.
    #[serde(default)]
    pub trial_offer_lead_data_config_id: Option<i64>,
    /// Whether the lead's gender is asked for.
    pub gender_mode: FieldMode,
    /// Whether the lead's date of birth is asked for.
    pub date_of_birth_mode: FieldMode,
    /// Whether the lead's telephone number is asked for.
    pub telephone_mode: FieldMode,
    /// Whether the lead's postal address is asked for.
    pub address_mode: FieldMode,
}

/// A duration such as "2 WEEK" or "30 MINUTES".
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Term {
    /// How many units.
    pub value: i64,
    /// `MINUTES`, `HOURS`, `DAY`, `WEEK`, `MONTH` or `YEAR`.
    pub unit: String,
}

impl Term {
    /// The term as a calendar span (months and years stay calendar units); `None` for a unit
    /// the spec does not list or a value out of range.
    pub fn span(&self) -> Option<jiff::Span> {
        let v = self.value;
        let span = jiff::Span::new();
        match self.unit.as_str() {
            "MINUTES" => span.try_minutes(v),
            "HOURS" => span.try_hours(v),
            "DAY" => span.try_days(v),
            "WEEK" => span.try_weeks(v),
            "MONTH" => span.try_months(v),
            "YEAR" => span.try_years(v),
            _ => return None,
        }
        .ok()
    }
}

/// `GET /trial-offers/config/{configId}`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TrialOfferConfig {
    /// The trial offer's configuration id.
    pub id: i64,
    /// Name of the trial offer in MagicLine.
    #[serde(default)]
    pub name: Option<String>,
    /// How long a lead must wait before booking this trial offer again.
    #[serde(default)]
    pub prevent_multiple_bookings_term: Option<Term>,
    /// How often one lead may book this trial offer.
    #[serde(default)]
    pub contingent: Option<u32>,
    /// Present when bookings must be confirmed within this term.
    #[serde(default)]
    pub confirmation_of_booking_term: Option<Term>,
    /// Whether leads (not yet customers) may book this trial offer.
    #[serde(default)]
    pub allow_booking_for_leads: Option<bool>,
    /// Which personal data the lead create call asks for.
    pub lead_data_config: LeadDataConfig,
}

/// A person's gender as MagicLine records it.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Gender {
    /// Male.
    Male,
    /// Female.
    Female,
    /// Neither or not stated.
    Unisex,
    /// A value this client does not know.
    #[serde(other)]
    Unknown,
}

/// A language, optionally with a country (`de` / `DE`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Language {
    /// ISO 639-1 code, e.g. `de`.
    pub language_code: String,
    /// ISO 3166-1 alpha-2 code, e.g. `DE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country_code: Option<String>,
}

impl Language {
    /// German as spoken in Germany, the default for studio leads.
    pub fn german() -> Self {
        Language {
            language_code: "de".to_string(),
            country_code: Some("DE".to_string()),
        }
    }
}

/// A postal address.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Address {
    /// Street name, with or without the house number.
    pub street: String,
    /// House number when given separately.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub house_number: Option<String>,
    /// Postal code.
    pub zip_code: String,
    /// City.
    pub city: String,
}

/// Personal data of a new lead. Debug output is redacted so it cannot leak into logs.
#[derive(Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LeadCustomerData {
    /// The lead's id in another system; frontdesk does not set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub third_party_id: Option<String>,
    /// First name.
    pub firstname: String,
    /// Second first name, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub second_firstname: Option<String>,
    /// Last name.
    pub lastname: String,
    /// Second last name, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub second_lastname: Option<String>,
    /// E-mail address; MagicLine identifies leads by it.
    pub email: String,
    /// Sent when the trial offer's [`LeadDataConfig::gender_mode`] asks for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gender: Option<Gender>,
    /// Sent when [`LeadDataConfig::date_of_birth_mode`] asks for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date_of_birth: Option<Date>,
    /// Sent when [`LeadDataConfig::telephone_mode`] asks for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telephone: Option<String>,
    /// Language MagicLine uses to contact the lead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<Language>,
    /// Sent when [`LeadDataConfig::address_mode`] asks for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Address>,
}

impl LeadCustomerData {
    /// A lead with the three mandatory fields and German as language.
    pub fn new(firstname: &str, lastname: &str, email: &str) -> Self {
        LeadCustomerData {
            third_party_id: None,
            firstname: firstname.to_string(),
            second_firstname: None,
            lastname: lastname.to_string(),
            second_lastname: None,
            email: email.to_string(),
            gender: None,
            date_of_birth: None,
            telephone: None,
            language: Some(Language::german()),
            address: None,
        }
    }
}

impl std::fmt::Debug for LeadCustomerData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeadCustomerData")
            .field("has_telephone", &self.telephone.is_some())
            .field("has_address", &self.address.is_some())
            .finish_non_exhaustive()
    }
}

/// Body of `POST /trial-offers/lead/validate` and `/trial-offers/lead/create`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LeadRequest {
    /// The lead's personal data.
    pub lead_customer_data: LeadCustomerData,
    /// The trial offer the lead is for.
    pub trial_offer_config_id: i64,
}

/// Whether a lead can be created from the given data.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LeadValidationStatus {
    /// The lead can be created.
    Possible,
    /// A field is missing or malformed for this trial offer.
    InvalidLeadCustomerData,
    /// A customer with this data (e.g. the e-mail) exists already.
    DuplicateCustomer,
    /// A status this client does not know.
    #[serde(other)]
    Unknown,
}

/// Answer of `POST /trial-offers/lead/validate`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LeadValidation {
    /// The verdict.
    pub validation_status: LeadValidationStatus,
}

/// Answer of `POST /trial-offers/lead/create`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LeadCreated {
    /// The new lead's customer id, used for its bookings.
    pub lead_customer_id: i64,
}

/// A trainer who runs an appointment.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Instructor {
    /// MagicLine's id of the trainer.
    pub id: i64,
    /// First name (personal data of staff).
    #[serde(default)]
    pub first_name: Option<String>,
    /// Last name (personal data of staff).
    #[serde(default)]
    pub last_name: Option<String>,
    /// The name the studio shows to customers.
    #[serde(default)]
    pub public_name: Option<String>,
}

/// A free slot of a bookable appointment.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Slot {
    /// When the slot begins, in the studio's time zone.
    #[serde(with = "serde_zoned")]
    pub start_date_time: Zoned,
    /// When the slot ends.
    #[serde(with = "serde_zoned")]
    pub end_date_time: Zoned,
    /// Trainers available for the slot.
    #[serde(default)]
    pub instructors: Vec<Instructor>,
}

/// The largest `daysAhead` a slot query may ask for; a longer search is several windows.
pub const MAX_DAYS_AHEAD: u32 = 6;

/// Query of the two slot endpoints. All parts are optional on the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotQuery {
    /// Ask for the slots this customer may book (MagicLine checks the customer exists).
    pub customer_id: Option<i64>,
    /// Days from the window start to look ahead, 1 to [`MAX_DAYS_AHEAD`]; MagicLine's default
    /// is 1.
    pub days_ahead: Option<u32>,
    /// First day of the window (`YYYY-MM-DD`); MagicLine defaults to today.
    pub window_start: Option<Date>,
}

impl SlotQuery {
    /// Consecutive queries that together cover `days` days from `from`, each within the
    /// spec's limit of [`MAX_DAYS_AHEAD`] days (at least one day is always asked for).
    pub fn windows(customer_id: Option<i64>, from: Date, days: u32) -> Vec<SlotQuery> {
        let mut out = Vec::new();
        let mut left = days.max(1);
        let mut start = from;
        while left > 0 {
            let n = left.min(MAX_DAYS_AHEAD);
            out.push(SlotQuery {
                customer_id,
                days_ahead: Some(n),
                window_start: Some(start),
            });
            left -= n;
            match start.checked_add(jiff::Span::new().days(i64::from(n))) {
                Ok(next) => start = next,
                Err(_) => break,
            }
        }
        out
    }
}

/// Body of the validate and book calls of both flows.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BookingRequest {
    /// The customer or lead who books.
    pub customer_id: i64,
    /// The appointment type (see [`BookableAppointment::id`]).
    pub bookable_appointment_id: i64,
    /// Start of the slot, exactly as MagicLine offered it.
    #[serde(with = "serde_zoned")]
    pub start_date_time: Zoned,
    /// End of the slot, exactly as MagicLine offered it.
    #[serde(with = "serde_zoned")]
    pub end_date_time: Zoned,
    /// Requested trainers; empty leaves the choice to MagicLine.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instructor_ids: Vec<i64>,
}

impl BookingRequest {
    /// A request for exactly the given slot.
    pub fn for_slot(customer_id: i64, bookable_appointment_id: i64, slot: &Slot) -> Self {
        BookingRequest {
            customer_id,
            bookable_appointment_id,
            start_date_time: slot.start_date_time.clone(),
            end_date_time: slot.end_date_time.clone(),
            instructor_ids: Vec::new(),
        }
    }
}

/// Result of a booking validation. Only `Available` means the book call should succeed.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BookingValidationStatus {
    /// The slot has already begun.
    PastStartDateTime,
    /// The end is not after the start.
    EndDateTimeNotAfterStartDateTime,
    /// Start and end are not one of the appointment's slots.
    PeriodDoesNotMatch,
    /// The customer has another booking at that time.
    CustomerInOtherBooking,
    /// The customer's membership is paused.
    CustomerIdle,
    /// The customer has used up the bookings this trial offer allows.
    NoContingent,
    /// The customer does not meet the appointment's restrictions (e.g. contract or age).
    BookableAppointmentRestrictionsNotFulfilled,
    /// The customer holds as many future bookings as allowed.
    BookingLimitReached,
    /// The slot is too soon (within the minimum notice).
    DateTimeBeforeEarliestBookingDateTime,
    /// The slot is too far ahead.
    DateTimeAfterLatestBookingDateTime,
    /// The studio is closed then.
    StudioClosed,
    /// A room, device or trainer needed is taken.
    ResourceNotAvailable,
    /// The slot is full or otherwise not bookable.
    NotAvailable,
    /// The slot can be booked.
    Available,
    /// The customer already holds a booking of this class slot (class validation only).
    CustomerAlreadyBooked,
    /// The class is shown but cannot be booked online (class validation only).
    DisplayOnly,
    /// A status this client does not know.
    #[serde(other)]
    Unknown,
}

impl BookingValidationStatus {
    /// Every status the API documents, `Unknown` excluded.
    pub const ALL: [BookingValidationStatus; 16] = [
        Self::PastStartDateTime,
        Self::EndDateTimeNotAfterStartDateTime,
        Self::PeriodDoesNotMatch,
        Self::CustomerInOtherBooking,
        Self::CustomerIdle,
        Self::NoContingent,
        Self::BookableAppointmentRestrictionsNotFulfilled,
        Self::BookingLimitReached,
        Self::DateTimeBeforeEarliestBookingDateTime,
        Self::DateTimeAfterLatestBookingDateTime,
        Self::StudioClosed,
        Self::ResourceNotAvailable,
        Self::NotAvailable,
        Self::Available,
        Self::CustomerAlreadyBooked,
        Self::DisplayOnly,
    ];

    /// The wire name, e.g. `NOT_AVAILABLE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PastStartDateTime => "PAST_START_DATE_TIME",
            Self::EndDateTimeNotAfterStartDateTime => "END_DATE_TIME_NOT_AFTER_START_DATE_TIME",
            Self::PeriodDoesNotMatch => "PERIOD_DOES_NOT_MATCH",
            Self::CustomerInOtherBooking => "CUSTOMER_IN_OTHER_BOOKING",
            Self::CustomerIdle => "CUSTOMER_IDLE",
            Self::NoContingent => "NO_CONTINGENT",
            Self::BookableAppointmentRestrictionsNotFulfilled => {
                "BOOKABLE_APPOINTMENT_RESTRICTIONS_NOT_FULFILLED"
            }
            Self::BookingLimitReached => "BOOKING_LIMIT_REACHED",
            Self::DateTimeBeforeEarliestBookingDateTime => {
                "DATE_TIME_BEFORE_EARLIEST_BOOKING_DATE_TIME"
            }
            Self::DateTimeAfterLatestBookingDateTime => "DATE_TIME_AFTER_LATEST_BOOKING_DATE_TIME",
            Self::StudioClosed => "STUDIO_CLOSED",
            Self::ResourceNotAvailable => "RESOURCE_NOT_AVAILABLE",
            Self::NotAvailable => "NOT_AVAILABLE",
            Self::Available => "AVAILABLE",
            Self::CustomerAlreadyBooked => "CUSTOMER_ALREADY_BOOKED",
            Self::DisplayOnly => "DISPLAY_ONLY",
            Self::Unknown => "UNKNOWN",
        }
    }
}

/// Answer of the booking validate calls.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BookingValidation {
    /// The verdict.
    pub validation_status: BookingValidationStatus,
}

/// State of an appointment booking.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BookingStatus {
    /// Booked and confirmed.
    Booked,
    /// Booked, but only kept if confirmed in time (trial offers with a confirmation term).
    BookedWithConfirmationRequired,
    /// On the waiting list of a full class: *not* a place in the class (class bookings only).
    WaitingList,
    /// Cancelled by the customer or the studio.
    Canceled,
    /// A status this client does not know.
    #[serde(other)]
    Unknown,
}

/// State of the appointment itself, regardless of this booking.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AppointmentStatus {
    /// It will take place.
    Planned,
    /// The studio called it off.
    Canceled,
    /// It has taken place.
    Completed,
    /// A status this client does not know.
    #[serde(other)]
    Unknown,
}

/// Whether the customer attended (recorded by the studio).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ParticipantStatus {
    /// Attended.
    Participating,
    /// Did not attend.
    NotParticipating,
    /// Not recorded yet.
    Unset,
    /// A status this client does not know.
    #[serde(other)]
    Unknown,
}

/// An appointment booking (answer of the book calls and entries of `GET /appointments/booking`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Booking {
    /// MagicLine's id of the booking, used to confirm or cancel it.
    pub booking_id: i64,
    /// Booked, awaiting confirmation or cancelled.
    pub booking_status: BookingStatus,
    /// When the appointment begins.
    #[serde(with = "serde_zoned")]
    pub start_date_time: Zoned,
    /// When the appointment ends.
    #[serde(with = "serde_zoned")]
    pub end_date_time: Zoned,
    /// Name of the appointment type.
    #[serde(default)]
    pub title: Option<String>,
    /// Minutes.
    #[serde(default)]
    pub duration: Option<u32>,
    /// MagicLine's category of the appointment type.
    #[serde(default)]
    pub category: Option<String>,
    /// Trainers of the appointment.
    #[serde(default)]
    pub instructors: Vec<Instructor>,
    /// State of the appointment, when MagicLine sends it.
    #[serde(default)]
    pub appointment_status: Option<AppointmentStatus>,
    /// Attendance, when MagicLine sends it.
    #[serde(default)]
    pub participant_status: Option<ParticipantStatus>,
    /// Whose booking it is (`GET /appointments/booking/{bookingId}` names the customer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<i64>,
}

impl Booking {
    /// Whether the booking holds the slot (confirmed or awaiting confirmation).
    pub fn is_active(&self) -> bool {
        matches!(
            self.booking_status,
            BookingStatus::Booked | BookingStatus::BookedWithConfirmationRequired
        ) && self.appointment_status != Some(AppointmentStatus::Canceled)
    }
}

/// Where a class takes place: in the studio or as a stream.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClassType {
    /// In the studio.
    Studio,
    /// Streamed.
    Stream,
    /// A type this client does not know.
    #[serde(other)]
    Unknown,
}

/// A class of the studio's class plan (as a trial offer lists it).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TrialClass {
    /// MagicLine's id of the class, used in the slot calls.
    pub id: i64,
    /// Name shown to customers.
    #[serde(default)]
    pub title: Option<String>,
    /// In the studio or streamed.
    #[serde(default, rename = "type")]
    pub class_type: Option<ClassType>,
    /// Minutes.
    #[serde(default)]
    pub duration: Option<u32>,
    /// MagicLine's category of the class.
    #[serde(default)]
    pub category: Option<String>,
    /// Whether it can be booked online at all.
    #[serde(default = "bookable_by_default")]
    pub bookable: bool,
}

fn bookable_by_default() -> bool {
    true
}

/// An entry of `GET /trial-offers/bookable-trial-offers/classes`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TrialOfferClass {
    /// The trial offer this class belongs to (see [`TrialOfferConfig`]).
    pub trial_offer_config_id: i64,
    /// The class a lead books with this offer.
    pub trial_offer_class: TrialClass,
}

/// Id and title of the class a slot belongs to.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClassInformation {
    /// MagicLine's id of the class.
    pub id: i64,
    /// Name shown to customers.
    #[serde(default)]
    pub title: Option<String>,
}

/// One date of a class (`GET /trial-offers/bookable-trial-offers/classes/{classId}/slots`).
/// Unlike appointment slots, full dates are listed too: whether a place is free is read from
/// the participant counts.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClassSlot {
    /// MagicLine's id of the class slot, used in the validate and book calls.
    pub id: i64,
    /// When the class begins, in the studio's time zone.
    #[serde(with = "serde_zoned")]
    pub start_date_time: Zoned,
    /// When it ends.
    #[serde(with = "serde_zoned")]
    pub end_date_time: Zoned,
    /// The class.
    #[serde(default)]
    pub class_information: Option<ClassInformation>,
    /// Trainers of the date.
    #[serde(default)]
    pub instructors: Vec<Instructor>,
    /// Booking opens then.
    #[serde(default, with = "super::datetime::serde_zoned_opt")]
    pub earliest_booking_date_time: Option<Zoned>,
    /// Booking closes then.
    #[serde(default, with = "super::datetime::serde_zoned_opt")]
    pub latest_booking_date_time: Option<Zoned>,
    /// Places in the class; absent: no limit.
    #[serde(default)]
    pub max_participants: Option<u32>,
    /// Places on the waiting list.
    #[serde(default)]
    pub max_waiting_list_participants: Option<u32>,
    /// Places booked online.
    #[serde(default)]
    pub booked_participants: Option<u32>,
    /// Places staff gave away at the desk.
    #[serde(default)]
    pub additional_participants: u32,
    /// People on the waiting list.
    #[serde(default)]
    pub waiting_list_participants: Option<u32>,
}

impl ClassSlot {
    /// Whether a place in the class (not on its waiting list) is free and booking is open at
    /// `now`.
    pub fn has_place(&self, now: jiff::Timestamp) -> bool {
        let taken = self
            .booked_participants
            .unwrap_or(0)
            .saturating_add(self.additional_participants);
        let room = self.max_participants.is_none_or(|max| taken < max);
        let opened = self
            .earliest_booking_date_time
            .as_ref()
            .is_none_or(|t| t.timestamp() <= now);
        let open = self
            .latest_booking_date_time
            .as_ref()
            .is_none_or(|t| now <= t.timestamp());
        room && opened && open
    }
}

/// Body of the trial class validate and book calls.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClassBookingRequest {
    /// The lead who books.
    pub customer_id: i64,
    /// The class slot (see [`ClassSlot::id`]).
    pub class_slot_id: i64,
}

/// State of the class date itself, regardless of this booking.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClassSlotStatus {
    /// It will take place.
    Planned,
    /// The studio called it off.
    Canceled,
    /// It has taken place.
    Completed,
    /// A status this client does not know.
    #[serde(other)]
    Unknown,
}

/// A class booking (answer of the class book call, `GET /classes/booking` and
/// `GET /classes/booking/{bookingId}`). It names the slot, not its times.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClassBooking {
    /// MagicLine's id of the booking, used to confirm or cancel it.
    pub booking_id: i64,
    /// Booked, awaiting confirmation, on the waiting list or cancelled.
    pub booking_status: BookingStatus,
    /// The class slot booked.
    pub class_slot_id: i64,
    /// The class.
    #[serde(default)]
    pub class_id: Option<i64>,
    /// Whose booking it is.
    #[serde(default)]
    pub customer_id: Option<i64>,
    /// State of the class date.
    #[serde(default)]
    pub class_slot_status: Option<ClassSlotStatus>,
    /// Attendance, when the studio recorded it.
    #[serde(default)]
    pub participant_status: Option<ParticipantStatus>,
}

impl ClassBooking {
    /// Whether the booking holds a place in the class (confirmed or awaiting confirmation; a
    /// waiting-list place does not count).
    pub fn is_active(&self) -> bool {
        matches!(
            self.booking_status,
            BookingStatus::Booked | BookingStatus::BookedWithConfirmationRequired
        ) && self.class_slot_status != Some(ClassSlotStatus::Canceled)
    }
}

/// One visit of a customer at a studio (`GET /customers/{customerId}/activities/checkins`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Checkin {
    /// MagicLine's id of the visit.
    pub checkin_id: i64,
    /// When the customer checked in (ISO-8601 with offset).
    #[serde(default)]
    pub check_in_date_time: Option<jiff::Timestamp>,
    /// When they checked out, if they did.
    #[serde(default)]
    pub check_out_date_time: Option<jiff::Timestamp>,
    /// The studio of the visit.
    #[serde(default)]
    pub studio_id: Option<i64>,
}

/// The body of a MagicLine webhook call. Webhooks only notify: the current state is read from
/// the Open API. Unknown properties are ignored, as MagicLine asks.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WebhookCall {
    /// The entity the event is about; what it is depends on the type (a booking id for the
    /// booking events, a customer id for `CUSTOMER_CHECKIN`).
    pub entity_id: i64,
    /// The event's unique id: a redelivery carries the same.
    pub uuid: String,
    /// The events (currently always one).
    pub payload: Vec<WebhookPayload>,
}

/// One event of a webhook call.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct WebhookPayload {
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    /// `APPOINTMENT_BOOKING_CANCELLED`, `CUSTOMER_CHECKIN`, …
    #[serde(rename = "type")]
    pub event_type: String,
    /// Extra data of some types; a placeholder for most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<serde_json::Value>,
}

/// Outcome of confirming a trial booking.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConfirmationStatus {
    /// The booking is now confirmed.
    Confirmed,
    /// The confirmation term had passed; the booking is gone.
    Expired,
    /// A status this client does not know.
    #[serde(other)]
    Unknown,
}

/// Answer of `POST /trial-offers/bookings/{bookingId}/confirm`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Confirmation {
    /// The outcome.
    pub status: ConfirmationStatus,
}

/// Body of `POST /customers/search`. Only set criteria are sent.
#[derive(Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CustomerSearch {
    /// Match on first name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    /// Match on last name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    /// Match on e-mail address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Match on date of birth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date_of_birth: Option<Date>,
}

impl CustomerSearch {
    /// A search by e-mail address alone (how a lead that may already exist is found).
    pub fn by_email(email: &str) -> Self {
        CustomerSearch {
            email: Some(email.to_string()),
            ..Default::default()
        }
    }
}

impl std::fmt::Debug for CustomerSearch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomerSearch")
            .field("by_first_name", &self.first_name.is_some())
            .field("by_last_name", &self.last_name.is_some())
            .field("by_email", &self.email.is_some())
            .field("by_date_of_birth", &self.date_of_birth.is_some())
            .finish()
    }
}

/// A customer's relationship with the studio.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CustomerStatus {
    /// Has a current membership.
    Member,
    /// A lead or interested person without a membership.
    Prospect,
    /// Had a membership that has ended.
    FormerMember,
    /// A status this client does not know.
    #[serde(other)]
    Unknown,
}

/// A customer as returned by `POST /customers/search` (the subset frontdesk needs).
/// Debug output is redacted so personal data cannot leak into logs.
#[derive(Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Customer {
    /// MagicLine's customer id, used for slots and bookings.
    pub id: i64,
    /// The studio's customer number.
    #[serde(default)]
    pub customer_number: Option<String>,
    /// First name.
    #[serde(default)]
    pub first_name: Option<String>,
    /// Last name.
    #[serde(default)]
    pub last_name: Option<String>,
    /// E-mail address.
    #[serde(default)]
    pub email: Option<String>,
    /// Member, prospect or former member.
    pub status: CustomerStatus,
    /// Language the customer chose, if any.
    #[serde(default)]
    pub preferred_language: Option<Language>,
    /// Private landline, as the studio typed it.
    #[serde(default)]
    pub phone_private: Option<String>,
    /// Private mobile number (where MagicLine keeps a lead's telephone).
    #[serde(default)]
    pub phone_private_mobile: Option<String>,
    /// Business landline.
    #[serde(default)]
    pub phone_business: Option<String>,
    /// Business mobile number.
    #[serde(default)]
    pub phone_business_mobile: Option<String>,
}

impl Customer {
    /// Every phone number on the record, as typed.
    pub fn phones(&self) -> impl Iterator<Item = &str> {
        [
            &self.phone_private_mobile,
            &self.phone_private,
            &self.phone_business_mobile,
            &self.phone_business,
        ]
        .into_iter()
        .filter_map(|p| p.as_deref())
    }
}

impl std::fmt::Debug for Customer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Customer")
            .field("id", &self.id)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// The error body every endpoint uses for 4xx/5xx answers.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// Human-readable text; may echo submitted personal data.
    #[serde(default)]
    pub error_message: Option<String>,
    /// Machine-readable code, e.g. `NOT_AVAILABLE`.
    #[serde(default)]
    pub error_code: Option<String>,
    /// MagicLine's id of the request, for their support.
    #[serde(default)]
    pub trace_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_trial_offer_page_and_ignores_unknown_fields() {
        let json = r#"{"result":[{"trialOfferConfigId":1,"id":7,"extra":true,
            "trialOfferBookableAppointment":{"id":1001,"title":"Probetraining","duration":30,
            "imgUrl":"x"}}],"hasNext":false,"offset":"1001"}"#;
        let page: Page<TrialOfferAppointment> = serde_json::from_str(json).unwrap();
        assert_eq!(page.result.len(), 1);
        assert_eq!(page.result[0].trial_offer_config_id, 1);
        assert_eq!(
            page.result[0].trial_offer_bookable_appointment.duration,
            Some(30)
        );
        assert!(!page.has_next);
    }

    #[test]
    fn slot_windows_stay_within_six_days_and_cover_the_search() {
        let from = jiff::civil::date(2030, 6, 3);
        let w = SlotQuery::windows(Some(7), from, 16);
        let days: Vec<u32> = w.iter().filter_map(|q| q.days_ahead).collect();
        assert_eq!(days, vec![6, 6, 4]);
        let starts: Vec<Date> = w.iter().filter_map(|q| q.window_start).collect();
        assert_eq!(
            starts,
            vec![
                from,
                jiff::civil::date(2030, 6, 9),
                jiff::civil::date(2030, 6, 15)
            ]
        );
        assert!(w.iter().all(|q| q.customer_id == Some(7)));
        assert_eq!(SlotQuery::windows(None, from, 0)[0].days_ahead, Some(1));
        assert_eq!(SlotQuery::windows(None, from, 6).len(), 1);
    }

    #[test]
    fn terms_become_calendar_spans() {
        let t = |value, unit: &str| Term {
            value,
            unit: unit.into(),
        };
        let start =
            super::super::datetime::parse("2030-06-04T10:00:00.000+02:00[Europe/Berlin]").unwrap();
        let before = |term: Term| start.checked_sub(term.span().unwrap()).unwrap();
        assert_eq!(before(t(90, "MINUTES")).hour(), 8);
        assert_eq!(before(t(1, "DAY")).day(), 3);
        assert_eq!(before(t(1, "MONTH")).month(), 5);
        assert!(t(1, "FORTNIGHT").span().is_none());
    }

    #[test]
    fn unknown_enum_values_do_not_break_decoding() {
        let v: BookingValidation =
            serde_json::from_str(r#"{"validationStatus":"SOMETHING_NEW"}"#).unwrap();
        assert_eq!(v.validation_status, BookingValidationStatus::Unknown);
        let c: LeadDataConfig = serde_json::from_str(
            r#"{"genderMode":"OPTIONAL","dateOfBirthMode":"MANDATORY","telephoneMode":"X",
                "addressMode":"INACTIVE"}"#,
        )
        .unwrap();
        assert_eq!(c.date_of_birth_mode, FieldMode::Mandatory);
        assert_eq!(c.telephone_mode, FieldMode::Unknown);
    }

    #[test]
    fn validation_status_names_match_serde() {
        for s in BookingValidationStatus::ALL {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
    }

    #[test]
    fn lead_request_shape() {
        let mut lead = LeadCustomerData::new("Max", "Mustermann", "max@example.org");
        lead.date_of_birth = Some(jiff::civil::date(2000, 10, 10));
        let req = LeadRequest {
            lead_customer_data: lead,
            trial_offer_config_id: 1,
        };
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "leadCustomerData": {
                    "firstname": "Max", "lastname": "Mustermann", "email": "max@example.org",
                    "dateOfBirth": "2000-10-10",
                    "language": {"languageCode": "de", "countryCode": "DE"}
                },
                "trialOfferConfigId": 1
            })
        );
    }

    #[test]
    fn booking_request_uses_magicline_date_times() {
        let start =
            super::super::datetime::parse("2022-06-22T08:00:00.000+02:00[Europe/Berlin]").unwrap();
        let end = start.checked_add(jiff::Span::new().minutes(30)).unwrap();
        let req = BookingRequest {
            customer_id: 203,
            bookable_appointment_id: 20334,
            start_date_time: start,
            end_date_time: end,
            instructor_ids: vec![],
        };
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "customerId": 203, "bookableAppointmentId": 20334,
                "startDateTime": "2022-06-22T08:00:00.000+02:00[Europe/Berlin]",
                "endDateTime": "2022-06-22T08:30:00.000+02:00[Europe/Berlin]"
            })
        );
    }

    #[test]
    fn debug_output_hides_personal_data() {
        let lead = LeadCustomerData::new("Erika", "Musterfrau", "erika@example.org");
        let dbg = format!("{lead:?}");
        assert!(!dbg.contains("Erika") && !dbg.contains("erika@"));
        let search = CustomerSearch::by_email("erika@example.org");
        assert!(!format!("{search:?}").contains("erika"));
        let c: Customer = serde_json::from_str(
            r#"{"id":5,"firstName":"Erika","email":"erika@example.org","status":"PROSPECT"}"#,
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("rika"));
    }
}
