//! Wire types of the MagicLine Open API (v1) endpoints frontdesk uses: trial offers (lead flow),
//! appointments (registered-customer flow), customer search and the error body.
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
    pub result: Vec<T>,
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
    pub id: i64,
    #[serde(default)]
    pub title: Option<String>,
    /// Minutes.
    #[serde(default)]
    pub duration: Option<u32>,
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

/// An entry of `GET /trial-offers/bookable-trial-offers/appointments/bookable`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TrialOfferAppointment {
    pub trial_offer_config_id: i64,
    pub trial_offer_bookable_appointment: BookableAppointment,
}

/// Whether a lead data field must, may or must not be sent.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FieldMode {
    Inactive,
    Optional,
    Mandatory,
    #[serde(other)]
    Unknown,
}

/// Which optional lead fields a trial offer asks for.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LeadDataConfig {
    #[serde(default)]
    pub trial_offer_lead_data_config_id: Option<i64>,
    pub gender_mode: FieldMode,
    pub date_of_birth_mode: FieldMode,
    pub telephone_mode: FieldMode,
    pub address_mode: FieldMode,
}

/// A duration such as "2 WEEK" or "30 MINUTES".
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Term {
    pub value: i64,
    /// `MINUTES`, `HOURS`, `DAY`, `WEEK`, `MONTH` or `YEAR`.
    pub unit: String,
}

/// `GET /trial-offers/config/{configId}`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TrialOfferConfig {
    pub id: i64,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub prevent_multiple_bookings_term: Option<Term>,
    /// How often one lead may book this trial offer.
    #[serde(default)]
    pub contingent: Option<u32>,
    /// Present when bookings must be confirmed within this term.
    #[serde(default)]
    pub confirmation_of_booking_term: Option<Term>,
    #[serde(default)]
    pub allow_booking_for_leads: Option<bool>,
    pub lead_data_config: LeadDataConfig,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Gender {
    Male,
    Female,
    Unisex,
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Language {
    pub language_code: String,
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

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Address {
    pub street: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub house_number: Option<String>,
    pub zip_code: String,
    pub city: String,
}

/// Personal data of a new lead. Debug output is redacted so it cannot leak into logs.
#[derive(Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LeadCustomerData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub third_party_id: Option<String>,
    pub firstname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub second_firstname: Option<String>,
    pub lastname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub second_lastname: Option<String>,
    pub email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gender: Option<Gender>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date_of_birth: Option<Date>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telephone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<Language>,
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
    pub lead_customer_data: LeadCustomerData,
    pub trial_offer_config_id: i64,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LeadValidationStatus {
    Possible,
    InvalidLeadCustomerData,
    DuplicateCustomer,
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LeadValidation {
    pub validation_status: LeadValidationStatus,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LeadCreated {
    pub lead_customer_id: i64,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Instructor {
    pub id: i64,
    #[serde(default)]
    pub first_name: Option<String>,
    #[serde(default)]
    pub last_name: Option<String>,
    #[serde(default)]
    pub public_name: Option<String>,
}

/// A free slot of a bookable appointment.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Slot {
    #[serde(with = "serde_zoned")]
    pub start_date_time: Zoned,
    #[serde(with = "serde_zoned")]
    pub end_date_time: Zoned,
    #[serde(default)]
    pub instructors: Vec<Instructor>,
}

/// Query of the two slot endpoints. All parts are optional on the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotQuery {
    pub customer_id: Option<i64>,
    pub days_ahead: Option<u32>,
    /// First day of the window (`YYYY-MM-DD`); MagicLine defaults to today.
    pub window_start: Option<Date>,
}

/// Body of the validate and book calls of both flows.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BookingRequest {
    pub customer_id: i64,
    pub bookable_appointment_id: i64,
    #[serde(with = "serde_zoned")]
    pub start_date_time: Zoned,
    #[serde(with = "serde_zoned")]
    pub end_date_time: Zoned,
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
    PastStartDateTime,
    EndDateTimeNotAfterStartDateTime,
    PeriodDoesNotMatch,
    CustomerInOtherBooking,
    CustomerIdle,
    NoContingent,
    BookableAppointmentRestrictionsNotFulfilled,
    BookingLimitReached,
    DateTimeBeforeEarliestBookingDateTime,
    DateTimeAfterLatestBookingDateTime,
    StudioClosed,
    ResourceNotAvailable,
    NotAvailable,
    Available,
    #[serde(other)]
    Unknown,
}

impl BookingValidationStatus {
    /// Every status the API documents, `Unknown` excluded.
    pub const ALL: [BookingValidationStatus; 14] = [
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
            Self::Unknown => "UNKNOWN",
        }
    }

    /// Whether another nearby slot might work (the slot is taken or outside bookable times), as
    /// opposed to a problem with the customer (contingent, limit, idle, other booking).
    pub fn slot_specific(self) -> bool {
        matches!(
            self,
            Self::NotAvailable
                | Self::ResourceNotAvailable
                | Self::StudioClosed
                | Self::PastStartDateTime
                | Self::PeriodDoesNotMatch
                | Self::DateTimeBeforeEarliestBookingDateTime
                | Self::DateTimeAfterLatestBookingDateTime
                | Self::CustomerInOtherBooking
        )
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BookingValidation {
    pub validation_status: BookingValidationStatus,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BookingStatus {
    Booked,
    BookedWithConfirmationRequired,
    Canceled,
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AppointmentStatus {
    Planned,
    Canceled,
    Completed,
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ParticipantStatus {
    Participating,
    NotParticipating,
    Unset,
    #[serde(other)]
    Unknown,
}

/// An appointment booking (answer of the book calls and entries of `GET /appointments/booking`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Booking {
    pub booking_id: i64,
    pub booking_status: BookingStatus,
    #[serde(with = "serde_zoned")]
    pub start_date_time: Zoned,
    #[serde(with = "serde_zoned")]
    pub end_date_time: Zoned,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub duration: Option<u32>,
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub instructors: Vec<Instructor>,
    #[serde(default)]
    pub appointment_status: Option<AppointmentStatus>,
    #[serde(default)]
    pub participant_status: Option<ParticipantStatus>,
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

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConfirmationStatus {
    Confirmed,
    Expired,
    #[serde(other)]
    Unknown,
}

/// Answer of `POST /trial-offers/bookings/{bookingId}/confirm`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Confirmation {
    pub status: ConfirmationStatus,
}

/// Body of `POST /customers/search`. Only set criteria are sent.
#[derive(Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CustomerSearch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date_of_birth: Option<Date>,
}

impl CustomerSearch {
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

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CustomerStatus {
    Member,
    Prospect,
    FormerMember,
    #[serde(other)]
    Unknown,
}

/// A customer as returned by `POST /customers/search` (the subset frontdesk needs).
/// Debug output is redacted so personal data cannot leak into logs.
#[derive(Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Customer {
    pub id: i64,
    #[serde(default)]
    pub customer_number: Option<String>,
    #[serde(default)]
    pub first_name: Option<String>,
    #[serde(default)]
    pub last_name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    pub status: CustomerStatus,
    #[serde(default)]
    pub preferred_language: Option<Language>,
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
    #[serde(default)]
    pub error_message: Option<String>,
    #[serde(default)]
    pub error_code: Option<String>,
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
