//! Fuzzes the decoding of MagicLine's answers: the body of every response type the client reads
//! (`magicline::api`), the error body, and MagicLine's date-time form (`magicline::datetime`).
//!
//! Input layout: first byte = which response type (modulo their number), the rest is the body.
//! The body is also tried as a date-time string.
//!
//! Properties: nothing panics; a decoded answer, encoded again and decoded, is the same answer
//! in the same encoding (the first encoding may normalise: unknown enum values become
//! `UNKNOWN`, fractions of a second are cut to milliseconds); a date-time printed in MagicLine's
//! form parses back to what it printed; the helper methods on decoded values do not panic.

#![no_main]

use frontdesk::magicline::api::{
    BookableAppointment, Booking, BookingValidation, Confirmation, Customer, ErrorBody,
    LeadCreated, LeadValidation, Page, Slot, TrialOfferAppointment, TrialOfferConfig,
};
use frontdesk::magicline::datetime;
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Decodes `body` as the client does (an empty body reads as `null`), then checks that the
/// encoding is stable after one round; returns the decoded value.
fn stable<T: DeserializeOwned + Serialize>(body: &[u8]) -> Option<T> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"null"
    } else {
        body
    };
    let first: T = serde_json::from_slice(body).ok()?;
    let once = serde_json::to_string(&first).expect("decoded answers encode");
    let again: T = serde_json::from_str(&once).expect("an encoded answer decodes");
    let twice = serde_json::to_string(&again).expect("decoded answers encode");
    assert_eq!(once, twice, "encoding not stable");
    Some(first)
}

fn check_booking(b: &Booking) {
    let _ = b.is_active();
}

fn check_datetime(text: &str) {
    let Ok(z) = datetime::parse(text) else {
        return;
    };
    let printed = datetime::format(&z);
    let back = datetime::parse(&printed).expect("a printed date-time parses");
    assert_eq!(datetime::format(&back), printed);
    assert_eq!(back.time_zone(), z.time_zone());
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    match selector % 13 {
        0 => {
            let _ = stable::<Page<TrialOfferAppointment>>(body);
        }
        1 => {
            let _ = stable::<TrialOfferConfig>(body);
        }
        2 => {
            let _ = stable::<LeadValidation>(body);
        }
        3 => {
            let _ = stable::<LeadCreated>(body);
        }
        4 => {
            let _ = stable::<Vec<Slot>>(body);
        }
        5 => {
            if let Some(v) = stable::<BookingValidation>(body) {
                let _ = v.validation_status.as_str();
            }
        }
        6 => {
            if let Some(b) = stable::<Booking>(body) {
                check_booking(&b);
            }
        }
        7 => {
            let _ = stable::<Confirmation>(body);
        }
        8 => {
            let _ = stable::<Page<BookableAppointment>>(body);
        }
        9 => {
            if let Some(bookings) = stable::<Vec<Booking>>(body) {
                bookings.iter().for_each(check_booking);
            }
        }
        10 => {
            if let Some(customers) = stable::<Vec<Customer>>(body) {
                for c in &customers {
                    assert!(c.phones().count() <= 4);
                    // Debug shows no personal data: only id and status.
                    let shown = format!("{c:?}");
                    assert!(!shown.contains("phone") && !shown.contains("email"));
                }
            }
        }
        11 => {
            let _ = stable::<ErrorBody>(body);
        }
        _ => {}
    }
    if let Ok(text) = std::str::from_utf8(body) {
        check_datetime(text);
    }
});
