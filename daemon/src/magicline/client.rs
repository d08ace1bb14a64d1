//! Blocking client for the MagicLine Open API (v1), one method per endpoint frontdesk uses.
//!
//! Runs on `ureq` and is meant to be called from `tokio::task::spawn_blocking`. Every request
//! carries the `x-api-key` header and `Accept-Language: de`, and is bounded by one end-to-end
//! timeout (connect, send, and reading the whole answer).
//!
//! Retries: read-only and validate calls are retried with full-jitter exponential backoff on
//! 502, 503 and 504. A 429 is never retried: MagicLine then denies every request to that
//! endpoint for the next minute, so the client remembers the block and answers
//! [`Error::RateLimited`] itself, without a request, until the minute (or a longer
//! `Retry-After`) has passed. Calls that change state in MagicLine (lead create, book, confirm,
//! cancel) are never retried here: after a [`Error::Timeout`] or any other error for which
//! [`Error::may_have_been_processed`] is true the caller must first look (e.g. with
//! [`Client::customer_bookings`] or [`Client::search_customers`]) before trying again.
//!
//! The API key is kept out of every `Debug` and `Display` output.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use rand::Rng;
use serde::de::DeserializeOwned;
use serde::Serialize;
use zeroize::Zeroizing;

use super::api::{
    BookableAppointment, Booking, BookingRequest, BookingValidation, BookingValidationStatus,
    Checkin, ClassBooking, ClassBookingRequest, ClassSlot, Confirmation, ConfirmationStatus,
    Customer, CustomerSearch, ErrorBody, LeadCreated, LeadRequest, LeadValidation,
    LeadValidationStatus, Page, Slot, SlotQuery, TrialOfferAppointment, TrialOfferClass,
    TrialOfferConfig,
};

/// Page size asked for on paged lists, and a bound on how many pages are followed.
const SLICE_SIZE: u32 = 100;
const MAX_PAGES: usize = 50;
/// Error bodies and answers are small; anything larger is not MagicLine talking.
const MAX_BODY_BYTES: u64 = 4 * 1024 * 1024;
/// How long MagicLine denies an endpoint after a 429 (its published rate-limit rule).
const RATE_LIMIT_BLOCK: SignedDuration = SignedDuration::from_mins(1);

/// Why a MagicLine call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No complete answer within the timeout. The request may have been processed.
    #[error("MagicLine request timed out (it may still have been processed)")]
    Timeout,
    /// HTTP 429: more than the per-endpoint rate limit.
    #[error("MagicLine rate limit reached (HTTP 429)")]
    RateLimited {
        /// MagicLine's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// HTTP 5xx: MagicLine is down or overloaded.
    #[error("MagicLine unavailable (HTTP {0})")]
    Unavailable(u16),
    /// Any other non-success answer, with MagicLine's error body. `message` is shown only on
    /// request because MagicLine may echo submitted personal data in it.
    #[error("MagicLine API error: HTTP {status}, code {}, trace {}",
        code.as_deref().unwrap_or("-"), trace_id.as_deref().unwrap_or("-"))]
    Api {
        /// The HTTP status.
        status: u16,
        /// MagicLine's error code, e.g. `NOT_AVAILABLE`.
        code: Option<String>,
        /// MagicLine's error text; may contain personal data.
        message: Option<String>,
        /// MagicLine's id of the request, for their support.
        trace_id: Option<String>,
    },
    /// A success status with a body that is not the documented JSON. The request was processed.
    #[error("could not decode MagicLine answer: {0}")]
    Decode(String),
    /// Connection-level failure. `sent` tells whether the request may have left this machine.
    #[error("MagicLine transport error: {message}")]
    Transport {
        /// What the HTTP library reported.
        message: String,
        /// Whether the request may have reached MagicLine.
        sent: bool,
    },
}

impl Error {
    /// Whether MagicLine may have acted on the request although no usable answer came back.
    /// For state-changing calls such an outcome must be checked before the call is repeated.
    pub fn may_have_been_processed(&self) -> bool {
        match self {
            Error::Timeout | Error::Decode(_) => true,
            // A gateway error or internal error can come after the backend committed.
            Error::Unavailable(_) => true,
            Error::Transport { sent, .. } => *sent,
            Error::RateLimited { .. } | Error::Api { .. } => false,
        }
    }

    /// Whether retrying an idempotent request at once may help. Not a 429: the endpoint stays
    /// blocked for the rest of the minute.
    fn transient(&self) -> bool {
        matches!(self, Error::Unavailable(502..=504))
    }

    /// Whether the key lacks the permission (scope) the endpoint needs (HTTP 403).
    pub fn is_forbidden(&self) -> bool {
        matches!(self, Error::Api { status: 403, .. })
    }

    /// The MagicLine error code of an [`Error::Api`], e.g. `NOT_AVAILABLE`.
    pub fn api_code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    fn transport(e: &ureq::Error) -> Error {
        use std::io::ErrorKind;
        match e {
            ureq::Error::Timeout(_) => Error::Timeout,
            ureq::Error::Io(io)
                if matches!(io.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) =>
            {
                Error::Timeout
            }
            ureq::Error::Io(io) if io.kind() == ErrorKind::ConnectionRefused => Error::Transport {
                message: e.to_string(),
                sent: false,
            },
            ureq::Error::HostNotFound
            | ureq::Error::ConnectionFailed
            | ureq::Error::BadUri(_)
            | ureq::Error::Http(_)
            | ureq::Error::InvalidProxyUrl
            | ureq::Error::Tls(_) => Error::Transport {
                message: e.to_string(),
                sent: false,
            },
            _ => Error::Transport {
                message: e.to_string(),
                sent: true,
            },
        }
    }
}

/// Backoff for retried calls: attempt `n` (1-based) waits a uniformly random time in
/// `[0, min(max_delay, base_delay * 2^(n-1))]`, or MagicLine's `Retry-After` when it sends one
/// (capped at `max_delay`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total tries including the first one; 1 disables retries.
    pub max_attempts: u32,
    /// Upper bound of the first wait; doubles with each further try.
    pub base_delay: Duration,
    /// No wait is longer than this, `Retry-After` included.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(after) = retry_after {
            return after.min(self.max_delay);
        }
        let exp = self
            .base_delay
            .saturating_mul(
                1u32.checked_shl(attempt.saturating_sub(1))
                    .unwrap_or(u32::MAX),
            )
            .min(self.max_delay);
        let millis = exp.as_millis().min(u64::MAX as u128) as u64;
        Duration::from_millis(rand::thread_rng().gen_range(0..=millis))
    }
}

/// The API key; never printed.
struct ApiKey(Zeroizing<String>);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Head,
    Post,
    Delete,
}

/// The time the rate-limit blocks are measured with (settable for tests).
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// Whether the client may repeat a call on its own.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Read-only or validate call: repeating it changes nothing in MagicLine.
    Safe,
    /// Changes state in MagicLine: one try, the caller decides after checking.
    Never,
}

/// Blocking MagicLine Open API client. Cheap to share behind an `Arc`; the agent pools
/// connections.
pub struct Client {
    agent: ureq::Agent,
    base_url: String,
    api_key: ApiKey,
    timeout: Duration,
    retry: RetryPolicy,
    clock: Clock,
    /// Endpoints MagicLine answered 429, and until when they are denied.
    blocked: Mutex<HashMap<&'static str, Timestamp>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .finish()
    }
}

impl Client {
    /// `base_url` is the API root including the version, e.g.
    /// `https://<tenant>.open-api.magicline.com/v1`. `timeout` bounds each single try end to end.
    pub fn new(base_url: &str, api_key: String, timeout: Duration) -> Client {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            // MagicLine does not redirect; following one could turn a POST into a GET.
            .max_redirects(0)
            .user_agent(concat!("frontdesk/", env!("CARGO_PKG_VERSION")))
            .build();
        Client {
            agent: ureq::Agent::new_with_config(config),
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key: ApiKey(Zeroizing::new(api_key)),
            timeout,
            retry: RetryPolicy::default(),
            clock: Arc::new(Timestamp::now),
            blocked: Mutex::new(HashMap::new()),
        }
    }

    /// Replaces the clock that rate-limit blocks are measured with.
    pub fn with_clock(mut self, clock: Clock) -> Client {
        self.clock = clock;
        self
    }

    /// `HEAD` on the API root: MagicLine checks the key alone (200, or 401 for a key it does not
    /// accept) without any business logic.
    pub fn check_key(&self) -> Result<(), Error> {
        let _: serde::de::IgnoredAny = self.call(
            "check_key",
            Method::Head,
            "/trial-offers/bookable-trial-offers/appointments/bookable",
            &[],
            None::<&()>,
            Retry::Safe,
        )?;
        Ok(())
    }

    /// Replaces the retry policy used for read-only and validate calls.
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Client {
        self.retry = retry;
        self
    }

    /// The API root requests go to, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    // ---- trial offers (new lead flow) ----

    /// `GET /trial-offers/bookable-trial-offers/appointments/bookable`, all pages.
    pub fn trial_offer_appointments(&self) -> Result<Vec<TrialOfferAppointment>, Error> {
        self.all_pages(
            "trial_offer_appointments",
            "/trial-offers/bookable-trial-offers/appointments/bookable",
        )
    }

    /// `GET /trial-offers/config/{configId}`.
    pub fn trial_offer_config(&self, config_id: i64) -> Result<TrialOfferConfig, Error> {
        self.call(
            "trial_offer_config",
            Method::Get,
            &format!("/trial-offers/config/{config_id}"),
            &[],
            None::<&()>,
            Retry::Safe,
        )
    }

    /// `POST /trial-offers/lead/validate`.
    pub fn validate_lead(&self, request: &LeadRequest) -> Result<LeadValidationStatus, Error> {
        let v: LeadValidation = self.call(
            "validate_lead",
            Method::Post,
            "/trial-offers/lead/validate",
            &[],
            Some(request),
            Retry::Safe,
        )?;
        Ok(v.validation_status)
    }

    /// `POST /trial-offers/lead/create`; returns the new lead's customer id. Never retried: on an
    /// ambiguous failure, search the e-mail with [`Client::search_customers`] first.
    pub fn create_lead(&self, request: &LeadRequest) -> Result<i64, Error> {
        let created: LeadCreated = self.call(
            "create_lead",
            Method::Post,
            "/trial-offers/lead/create",
            &[],
            Some(request),
            Retry::Never,
        )?;
        Ok(created.lead_customer_id)
    }

    /// `GET /trial-offers/bookable-trial-offers/appointments/bookable/{id}/slots`.
    pub fn trial_offer_slots(
        &self,
        bookable_appointment_id: i64,
        query: &SlotQuery,
    ) -> Result<Vec<Slot>, Error> {
        self.call(
            "trial_offer_slots",
            Method::Get,
            &format!(
                "/trial-offers/bookable-trial-offers/appointments/bookable/{bookable_appointment_id}/slots"
            ),
            &slot_query_pairs(query),
            None::<&()>,
            Retry::Safe,
        )
    }

    /// `POST /trial-offers/appointments/booking/validate`.
    pub fn validate_trial_booking(
        &self,
        request: &BookingRequest,
    ) -> Result<BookingValidationStatus, Error> {
        let v: BookingValidation = self.call(
            "validate_trial_booking",
            Method::Post,
            "/trial-offers/appointments/booking/validate",
            &[],
            Some(request),
            Retry::Safe,
        )?;
        Ok(v.validation_status)
    }

    /// `POST /trial-offers/appointments/booking/book`. Never retried: on an ambiguous failure,
    /// look with [`Client::customer_bookings`] first.
    pub fn book_trial(&self, request: &BookingRequest) -> Result<Booking, Error> {
        self.call(
            "book_trial",
            Method::Post,
            "/trial-offers/appointments/booking/book",
            &[],
            Some(request),
            Retry::Never,
        )
    }

    /// `POST /trial-offers/bookings/{bookingId}/confirm`, for bookings answered with
    /// `BOOKED_WITH_CONFIRMATION_REQUIRED`. Never retried.
    pub fn confirm_trial_booking(&self, booking_id: i64) -> Result<ConfirmationStatus, Error> {
        let c: Confirmation = self.call(
            "confirm_trial_booking",
            Method::Post,
            &format!("/trial-offers/bookings/{booking_id}/confirm"),
            &[],
            None::<&()>,
            Retry::Never,
        )?;
        Ok(c.status)
    }

    // ---- trial offers as a class ----

    /// `GET /trial-offers/bookable-trial-offers/classes`, all pages.
    pub fn trial_offer_classes(&self) -> Result<Vec<TrialOfferClass>, Error> {
        self.all_pages(
            "trial_offer_classes",
            "/trial-offers/bookable-trial-offers/classes",
        )
    }

    /// `GET /trial-offers/bookable-trial-offers/classes/{classId}/slots`, all pages: every date
    /// of the class from the day before today to 14 days ahead (MagicLine's fixed range), full
    /// ones included (see [`ClassSlot::has_place`]).
    pub fn trial_class_slots(&self, class_id: i64) -> Result<Vec<ClassSlot>, Error> {
        self.all_pages(
            "trial_class_slots",
            &format!("/trial-offers/bookable-trial-offers/classes/{class_id}/slots"),
        )
    }

    /// `POST /trial-offers/classes/booking/validate`.
    pub fn validate_trial_class_booking(
        &self,
        request: &ClassBookingRequest,
    ) -> Result<BookingValidationStatus, Error> {
        let v: BookingValidation = self.call(
            "validate_trial_class_booking",
            Method::Post,
            "/trial-offers/classes/booking/validate",
            &[],
            Some(request),
            Retry::Safe,
        )?;
        Ok(v.validation_status)
    }

    /// `POST /trial-offers/classes/booking/book`. Never retried: on an ambiguous failure, look
    /// with [`Client::class_bookings`] first. A full class may answer `WAITING_LIST`.
    pub fn book_trial_class(&self, request: &ClassBookingRequest) -> Result<ClassBooking, Error> {
        self.call(
            "book_trial_class",
            Method::Post,
            "/trial-offers/classes/booking/book",
            &[],
            Some(request),
            Retry::Never,
        )
    }

    /// `GET /classes/booking?customerId=`: the customer's class bookings within two weeks
    /// before or after now. This is how a class book call that timed out is checked.
    pub fn class_bookings(&self, customer_id: i64) -> Result<Vec<ClassBooking>, Error> {
        self.call(
            "class_bookings",
            Method::Get,
            "/classes/booking",
            &[("customerId", customer_id.to_string())],
            None::<&()>,
            Retry::Safe,
        )
    }

    /// `GET /classes/booking/{bookingId}`: one class booking as MagicLine holds it now.
    pub fn class_booking(&self, booking_id: i64) -> Result<ClassBooking, Error> {
        self.call(
            "class_booking",
            Method::Get,
            &format!("/classes/booking/{booking_id}"),
            &[],
            None::<&()>,
            Retry::Safe,
        )
    }

    /// `GET /classes/{classId}/slots/{classSlotId}`: one date of a class as it is now (staff
    /// can move a date; its bookings keep naming it).
    pub fn class_slot(&self, class_id: i64, slot_id: i64) -> Result<ClassSlot, Error> {
        self.call(
            "class_slot",
            Method::Get,
            &format!("/classes/{class_id}/slots/{slot_id}"),
            &[],
            None::<&()>,
            Retry::Safe,
        )
    }

    /// `DELETE /classes/booking/{bookingId}`. Not retried automatically.
    pub fn cancel_class_booking(&self, booking_id: i64) -> Result<(), Error> {
        let _: serde::de::IgnoredAny = self.call(
            "cancel_class_booking",
            Method::Delete,
            &format!("/classes/booking/{booking_id}"),
            &[],
            None::<&()>,
            Retry::Never,
        )?;
        Ok(())
    }

    // ---- appointments (registered customer flow) ----

    /// `GET /appointments/bookable`, all pages.
    pub fn bookable_appointments(&self) -> Result<Vec<BookableAppointment>, Error> {
        self.all_pages("bookable_appointments", "/appointments/bookable")
    }

    /// `GET /appointments/bookable/{id}/slots`.
    pub fn appointment_slots(
        &self,
        bookable_appointment_id: i64,
        query: &SlotQuery,
    ) -> Result<Vec<Slot>, Error> {
        self.call(
            "appointment_slots",
            Method::Get,
            &format!("/appointments/bookable/{bookable_appointment_id}/slots"),
            &slot_query_pairs(query),
            None::<&()>,
            Retry::Safe,
        )
    }

    /// `POST /appointments/bookable/validate`.
    pub fn validate_booking(
        &self,
        request: &BookingRequest,
    ) -> Result<BookingValidationStatus, Error> {
        let v: BookingValidation = self.call(
            "validate_booking",
            Method::Post,
            "/appointments/bookable/validate",
            &[],
            Some(request),
            Retry::Safe,
        )?;
        Ok(v.validation_status)
    }

    /// `POST /appointments/booking/book`. Never retried: on an ambiguous failure, look with
    /// [`Client::customer_bookings`] first.
    pub fn book(&self, request: &BookingRequest) -> Result<Booking, Error> {
        self.call(
            "book",
            Method::Post,
            "/appointments/booking/book",
            &[],
            Some(request),
            Retry::Never,
        )
    }

    /// `DELETE /appointments/booking/{bookingId}`. Not retried automatically.
    pub fn cancel_booking(&self, booking_id: i64) -> Result<(), Error> {
        let _: serde::de::IgnoredAny = self.call(
            "cancel_booking",
            Method::Delete,
            &format!("/appointments/booking/{booking_id}"),
            &[],
            None::<&()>,
            Retry::Never,
        )?;
        Ok(())
    }

    /// `GET /appointments/booking?customerId=`: the customer's appointment bookings starting
    /// within two weeks before or after now, trial-offer bookings included. This is how a book
    /// call that timed out is checked.
    pub fn customer_bookings(&self, customer_id: i64) -> Result<Vec<Booking>, Error> {
        self.call(
            "customer_bookings",
            Method::Get,
            "/appointments/booking",
            &[("customerId", customer_id.to_string())],
            None::<&()>,
            Retry::Safe,
        )
    }

    /// `GET /appointments/booking/{bookingId}`: one booking as MagicLine holds it now (status,
    /// times, whose it is).
    pub fn booking(&self, booking_id: i64) -> Result<Booking, Error> {
        self.call(
            "booking",
            Method::Get,
            &format!("/appointments/booking/{booking_id}"),
            &[],
            None::<&()>,
            Retry::Safe,
        )
    }

    /// `GET /customers/{customerId}/activities/checkins` from `from` to `to` (studio days,
    /// inclusive), all slices.
    pub fn checkins(
        &self,
        customer_id: i64,
        from: jiff::civil::Date,
        to: jiff::civil::Date,
    ) -> Result<Vec<Checkin>, Error> {
        let path = format!("/customers/{customer_id}/activities/checkins");
        let mut out = Vec::new();
        let mut offset: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut query = vec![
                ("fromDate", from.to_string()),
                ("toDate", to.to_string()),
                ("sliceSize", SLICE_SIZE.to_string()),
            ];
            if let Some(o) = &offset {
                query.push(("offset", o.clone()));
            }
            let page: Page<Checkin> = self.call(
                "checkins",
                Method::Get,
                &path,
                &query,
                None::<&()>,
                Retry::Safe,
            )?;
            out.extend(page.result);
            match page.offset {
                Some(next) if page.has_next && offset.as_deref() != Some(next.as_str()) => {
                    offset = Some(next)
                }
                _ => break,
            }
        }
        Ok(out)
    }

    // ---- customers ----

    /// `POST /customers/search`. A search changes nothing, so it is retried like a read.
    pub fn search_customers(&self, search: &CustomerSearch) -> Result<Vec<Customer>, Error> {
        self.call(
            "search_customers",
            Method::Post,
            "/customers/search",
            &[],
            Some(search),
            Retry::Safe,
        )
    }

    /// Customers (members and leads) with exactly this e-mail address.
    pub fn find_customers_by_email(&self, email: &str) -> Result<Vec<Customer>, Error> {
        self.search_customers(&CustomerSearch::by_email(email))
    }

    // ---- plumbing ----

    fn all_pages<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        path: &str,
    ) -> Result<Vec<T>, Error> {
        let mut out = Vec::new();
        let mut offset: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut query = vec![("sliceSize", SLICE_SIZE.to_string())];
            if let Some(o) = &offset {
                query.push(("offset", o.clone()));
            }
            let page: Page<T> = self.call(
                endpoint,
                Method::Get,
                path,
                &query,
                None::<&()>,
                Retry::Safe,
            )?;
            out.extend(page.result);
            match page.offset {
                Some(next) if page.has_next && offset.as_deref() != Some(next.as_str()) => {
                    offset = Some(next)
                }
                _ => return Ok(out),
            }
        }
        Ok(out)
    }

    fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&B>,
        retry: Retry,
    ) -> Result<T, Error> {
        let body = match body {
            Some(b) => Some(serde_json::to_vec(b).map_err(|e| Error::Transport {
                message: format!("could not encode request: {e}"),
                sent: false,
            })?),
            None => None,
        };
        let url = format!("{}{}", self.base_url, path);
        let attempts = match retry {
            Retry::Safe => self.retry.max_attempts.max(1),
            Retry::Never => 1,
        };
        let mut attempt = 1;
        loop {
            if let Some(left) = self.blocked_for(endpoint) {
                tracing::debug!(endpoint, "MagicLine endpoint blocked after a 429; not sent");
                return Err(Error::RateLimited {
                    retry_after: Some(left),
                });
            }
            let result = self.once(method, &url, query, body.as_deref());
            if let Err(Error::RateLimited { retry_after }) = &result {
                self.block(endpoint, *retry_after);
            }
            match result {
                Err(e) if attempt < attempts && e.transient() => {
                    let wait = self.retry.delay(attempt, None);
                    tracing::debug!(
                        endpoint,
                        attempt,
                        wait_ms = wait.as_millis() as u64,
                        error = %e,
                        "MagicLine call failed transiently, retrying"
                    );
                    std::thread::sleep(wait);
                    attempt += 1;
                }
                Err(e) => {
                    tracing::debug!(endpoint, attempt, error = %e, "MagicLine call failed");
                    return Err(e);
                }
                Ok(text) => {
                    // An empty success body (e.g. on DELETE) reads as JSON null.
                    let text = if text.trim().is_empty() {
                        "null"
                    } else {
                        text.as_str()
                    };
                    // serde_json's own message can quote values (personal data), so only the
                    // position and kind of the problem are kept.
                    return serde_json::from_str(text).map_err(|e| {
                        Error::Decode(format!(
                            "{endpoint}: {:?} error at line {} column {}",
                            e.classify(),
                            e.line(),
                            e.column()
                        ))
                    });
                }
            }
        }
    }

    /// How long `endpoint` is still denied after a 429, if it is.
    fn blocked_for(&self, endpoint: &'static str) -> Option<Duration> {
        let now = (self.clock)();
        let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        let until = *blocked.get(endpoint)?;
        if until <= now {
            blocked.remove(endpoint);
            return None;
        }
        Duration::try_from(until.duration_since(now)).ok()
    }

    /// Denies `endpoint` for the next minute, or for MagicLine's longer `Retry-After`.
    fn block(&self, endpoint: &'static str, retry_after: Option<Duration>) {
        let now = (self.clock)();
        let wait = retry_after
            .and_then(|d| SignedDuration::try_from(d).ok())
            .map_or(RATE_LIMIT_BLOCK, |d| d.max(RATE_LIMIT_BLOCK));
        let until = now.checked_add(wait).unwrap_or(now);
        self.blocked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(endpoint, until);
    }

    /// One HTTP exchange; returns the body of a 2xx answer.
    fn once(
        &self,
        method: Method,
        url: &str,
        query: &[(&str, String)],
        body: Option<&[u8]>,
    ) -> Result<String, Error> {
        let key: &str = &self.api_key.0;
        let sent = match method {
            Method::Get | Method::Head | Method::Delete => {
                let mut req = match method {
                    Method::Get => self.agent.get(url),
                    Method::Head => self.agent.head(url),
                    _ => self.agent.delete(url),
                };
                req = req
                    .header("x-api-key", key)
                    .header("accept", "application/json")
                    .header("accept-language", "de");
                for (k, v) in query {
                    req = req.query(*k, v);
                }
                req.call()
            }
            Method::Post => {
                let mut req = self
                    .agent
                    .post(url)
                    .header("x-api-key", key)
                    .header("accept", "application/json")
                    .header("accept-language", "de");
                for (k, v) in query {
                    req = req.query(*k, v);
                }
                match body {
                    Some(json) => req.header("content-type", "application/json").send(json),
                    None => req.send_empty(),
                }
            }
        };
        let mut response = sent.map_err(|e| Error::transport(&e))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY_BYTES)
            .read_to_string();
        if (200..300).contains(&status) {
            return text.map_err(|e| match Error::transport(&e) {
                Error::Timeout => Error::Timeout,
                // The status line said success: the request was processed.
                other => Error::Decode(other.to_string()),
            });
        }
        if status == 429 {
            return Err(Error::RateLimited { retry_after });
        }
        if status >= 500 {
            return Err(Error::Unavailable(status));
        }
        let parsed: ErrorBody = text
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        Err(Error::Api {
            status,
            code: parsed.error_code,
            message: parsed.error_message,
            trace_id: parsed.trace_id,
        })
    }
}

fn slot_query_pairs(query: &SlotQuery) -> Vec<(&'static str, String)> {
    let mut pairs = Vec::new();
    if let Some(c) = query.customer_id {
        pairs.push(("customerId", c.to_string()));
    }
    if let Some(d) = query.days_ahead {
        pairs.push(("daysAhead", d.to_string()));
    }
    if let Some(s) = query.window_start {
        pairs.push(("slotWindowStartDate", s.to_string()));
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_jitter_stays_within_the_cap() {
        let p = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(800),
        };
        for attempt in 1..40 {
            let d = p.delay(attempt, None);
            let cap = (100u64 << (attempt - 1).min(20)).min(800);
            assert!(d <= Duration::from_millis(cap), "attempt {attempt}: {d:?}");
        }
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(30))),
            Duration::from_millis(800)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_millis(300))),
            Duration::from_millis(300)
        );
    }

    #[test]
    fn key_never_shows_in_debug() {
        let c = Client::new(
            "https://tenant.open-api.magicline.com/v1/",
            "super-secret-key-123".into(),
            Duration::from_secs(3),
        );
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("super-secret-key-123"));
        assert!(dbg.contains("redacted"));
        assert_eq!(c.base_url(), "https://tenant.open-api.magicline.com/v1");
    }

    #[test]
    fn processed_classification() {
        assert!(Error::Timeout.may_have_been_processed());
        assert!(Error::Decode("x".into()).may_have_been_processed());
        assert!(!Error::RateLimited { retry_after: None }.may_have_been_processed());
        assert!(!Error::Transport {
            message: "refused".into(),
            sent: false
        }
        .may_have_been_processed());
        let api = Error::Api {
            status: 400,
            code: Some("NOT_AVAILABLE".into()),
            message: Some("Max Mustermann max@example.org".into()),
            trace_id: Some("t1".into()),
        };
        assert!(!api.may_have_been_processed());
        assert_eq!(api.api_code(), Some("NOT_AVAILABLE"));
        let shown = api.to_string();
        assert!(shown.contains("NOT_AVAILABLE") && !shown.contains("max@example.org"));
    }
}
