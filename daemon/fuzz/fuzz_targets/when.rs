//! Fuzzes the German date parser and the choice among offered slots
//! (`conversation::when::{parse, choice}`), which read customers' own words.
//!
//! Input layout: four bytes = seconds after 2000-01-01 for `now` (so `now` ranges over
//! 2000–2136, DST changes and year ends included), one byte = the number of offered slots for
//! `choice`, the rest is the message (invalid UTF-8 replaced, as text from WhatsApp never is).
//!
//! Properties: nothing panics; a wish names at least one of date, time and part of day, renders
//! in German, serialises and reads back unchanged; a wish without a date starts after `now` and
//! within two days; a pick is one of the offered slots; both functions ignore ASCII case (the
//! tokenizer lowercases).

#![no_main]

use frontdesk::conversation::when::{self, When};
use jiff::{SignedDuration, Timestamp};
use libfuzzer_sys::fuzz_target;

const Y2000: i64 = 946_684_800;

fn check_wish(w: &When, now: &jiff::Zoned) {
    assert!(*w != When::default(), "an empty wish");
    assert!(!w.describe_de().is_empty());
    let stored = serde_json::to_string(w).expect("a wish serialises");
    let back: When = serde_json::from_str(&stored).expect("a wish deserialises");
    assert_eq!(&back, w);
    if let Some(start) = w.start(now) {
        if w.date.is_none() {
            assert!(start.timestamp() > now.timestamp());
            let ahead = start.timestamp().duration_since(now.timestamp());
            assert!(ahead <= SignedDuration::from_hours(48), "{ahead:?} ahead");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let seconds = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
    let offered = usize::from(data[4] % 12);
    let text = String::from_utf8_lossy(&data[5..]);
    let now = Timestamp::from_second(Y2000 + i64::from(seconds))
        .expect("within jiff's range")
        .to_zoned(when::berlin_tz());

    let wish = when::parse(&text, &now);
    if let Some(w) = &wish {
        check_wish(w, &now);
    }
    assert_eq!(when::parse(&text.to_ascii_uppercase(), &now), wish);

    let pick = when::choice(&text, offered);
    if let Some(p) = pick {
        assert!(p < offered, "pick {p} of {offered}");
    }
    assert_eq!(when::choice(&text.to_ascii_uppercase(), offered), pick);
});
