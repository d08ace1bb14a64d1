//! The "no invented prices or times" check of `frontdesk chat --script`: finds every price
//! ("39,90 €", "49 Euro", "€ 20") and every time of day ("18 Uhr", "18:30", "7–22 Uhr") in a
//! reply and tells which of them appear nowhere the assistant may take them from.
//!
//! Prices may only come from the studio's facts (`[studio]`: offers, trial information, the
//! fixed texts). Times may also come from the contact's own messages (a wished "Dienstag 18 Uhr"
//! may be repeated) and from what the booking answered (the booked slot, the free alternatives).

use std::collections::BTreeSet;
use std::fmt;
use std::sync::LazyLock;

use jiff::Zoned;
use regex::Regex;

use crate::config::StudioConfig;

/// An amount with a currency, in cents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Price(u64);

impl fmt::Display for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 % 100 == 0 {
            write!(f, "{} €", self.0 / 100)
        } else {
            write!(f, "{},{:02} €", self.0 / 100, self.0 % 100)
        }
    }
}

/// A time of day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClockTime {
    hour: u8,
    minute: u8,
}

impl fmt::Display for ClockTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{:02} Uhr", self.hour, self.minute)
    }
}

/// "39,90 €", "39.90€", "1.200 EUR", "49 Euro", "€ 20", "49,-".
static PRICE: LazyLock<Regex> = LazyLock::new(|| {
    let amount = r"\b(?:\d{1,3}(?:\.\d{3})+(?:,\d{1,2})?|\d{1,5}(?:[.,]\d{1,2})?)";
    Regex::new(&format!(
        r"(?i)({amount})\s*(?:€|euro\b|eur\b)|€\s*({amount})|({amount}),[-–]"
    ))
    .expect("a valid pattern")
});

/// "18 Uhr", "18.30 Uhr", "18:30 Uhr", "7–22 Uhr", "17 bis 19 Uhr", "8:00 - 21:00 Uhr".
static UHR: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)\b(\d{1,2})(?:[:.](\d{2}))?\s*(?:(?:–|-|bis)\s*(\d{1,2})(?:[:.](\d{2}))?\s*)?uhr\b",
    )
    .expect("a valid pattern")
});

/// "18:30" without "Uhr" (also both ends of "8:00–21:00").
static COLON: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b(\d{1,2}):(\d{2})\b").expect("a valid pattern"));

/// "um 18", "um 6" in the contact's words.
static UM: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\bum\s+(\d{1,2})\b").expect("a valid pattern"));

/// The prices in a text, in order.
pub fn prices(text: &str) -> Vec<Price> {
    PRICE
        .captures_iter(text)
        .filter_map(|c| cents(c.get(1).or(c.get(2)).or(c.get(3))?.as_str()).map(Price))
        .collect()
}

/// "39,90" and "39.90" are decimals, "1.200" and "1.200,50" have a thousands separator.
fn cents(amount: &str) -> Option<u64> {
    let (whole, fraction) = match amount.rsplit_once([',', '.']) {
        Some((w, f)) if amount.contains(',') || f.len() != 3 => (w.replace('.', ""), f),
        _ => (amount.replace('.', ""), ""),
    };
    let fraction = match fraction.len() {
        0 => 0,
        1 => fraction.parse::<u64>().ok()? * 10,
        _ => fraction.parse::<u64>().ok()?,
    };
    whole
        .parse::<u64>()
        .ok()?
        .checked_mul(100)?
        .checked_add(fraction)
}

fn clock(hour: &str, minute: Option<&str>) -> Option<ClockTime> {
    let hour: u8 = hour.parse().ok()?;
    let minute: u8 = minute.map_or(Some(0), |m| m.parse().ok())?;
    (hour <= 24 && minute < 60).then_some(ClockTime { hour, minute })
}

/// The times of day in a text, in order of the patterns (duplicates possible).
pub fn times(text: &str) -> Vec<ClockTime> {
    let mut out = Vec::new();
    for c in UHR.captures_iter(text) {
        let m = |i: usize| c.get(i).map(|m| m.as_str());
        out.extend(m(1).and_then(|h| clock(h, m(2))));
        out.extend(m(3).and_then(|h| clock(h, m(4))));
    }
    for c in COLON.captures_iter(text) {
        out.extend(clock(&c[1], Some(&c[2])));
    }
    out
}

/// What a reply may name, gathered over one scripted conversation.
#[derive(Debug, Default)]
pub struct Allowed {
    prices: BTreeSet<Price>,
    times: BTreeSet<ClockTime>,
}

impl Allowed {
    /// Everything the studio's facts name.
    pub fn from_studio(studio: &StudioConfig) -> Allowed {
        let mut allowed = Allowed::default();
        let texts = [
            &studio.name,
            &studio.address,
            &studio.phone,
            &studio.website,
            &studio.trial_info,
            &studio.handover_text,
            &studio.non_text_reply,
            &studio.welcome_reply,
            &studio.opt_out_reply,
        ]
        .into_iter()
        .chain(&studio.opening_hours)
        .chain(&studio.offers);
        for text in texts {
            allowed.prices.extend(prices(text));
            allowed.times.extend(times(text));
        }
        allowed
    }

    /// The contact's own words: the times they name may be repeated ("um 6" read as the
    /// booking reads it, 18:00). Their prices are not facts.
    pub fn add_contact_text(&mut self, text: &str, now: &Zoned) {
        self.times.extend(times(text));
        for c in UM.captures_iter(text) {
            self.times.extend(clock(&c[1], None));
        }
        if let Some(t) = crate::conversation::when::parse(text, now).and_then(|w| w.time) {
            self.add_slot_time(t.hour(), t.minute());
        }
    }

    /// A slot the booking named (booked or offered).
    pub fn add_slot(&mut self, start: &Zoned) {
        self.add_slot_time(start.hour(), start.minute());
    }

    fn add_slot_time(&mut self, hour: i8, minute: i8) {
        if let (Ok(hour), Ok(minute)) = (u8::try_from(hour), u8::try_from(minute)) {
            self.times.insert(ClockTime { hour, minute });
        }
    }

    /// The prices and times in `reply` that are not allowed, as people read them.
    pub fn unknown_in(&self, reply: &str) -> Vec<String> {
        let mut out: Vec<String> = prices(reply)
            .into_iter()
            .filter(|p| !self.prices.contains(p))
            .map(|p| p.to_string())
            .collect();
        out.extend(
            times(reply)
                .into_iter()
                .filter(|t| !self.times.contains(t))
                .map(|t| t.to_string()),
        );
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(cents: u64) -> Price {
        Price(cents)
    }

    fn t(hour: u8, minute: u8) -> ClockTime {
        ClockTime { hour, minute }
    }

    #[test]
    fn prices_in_the_ways_people_write_them() {
        assert_eq!(
            prices("Flex 39,90 € im Monat, Basis 29.90€, Premium 59 Euro, Karte € 20, Kurs 15,-"),
            vec![p(3990), p(2990), p(5900), p(2000), p(1500)]
        );
        assert_eq!(prices("Jahresbeitrag 1.200 EUR"), vec![p(120_000)]);
        assert_eq!(prices("2×/Woche, 20 Minuten, 0531 123456"), vec![]);
    }

    #[test]
    fn times_of_day_single_and_ranges_but_not_dates() {
        assert_eq!(times("Dienstag um 18 Uhr"), vec![t(18, 0)]);
        assert_eq!(times("Mo–Fr 7–22 Uhr"), vec![t(7, 0), t(22, 0)]);
        assert_eq!(
            times("Mo–Fr 8:00–21:00"),
            vec![t(8, 0), t(21, 0)],
            "the colon form needs no Uhr"
        );
        assert_eq!(
            times("zwischen 17 bis 19.30 Uhr"),
            vec![t(17, 0), t(19, 30)]
        );
        let booked = times("am Dienstag, 03.03. um 18:30 Uhr");
        assert!(booked.iter().all(|x| *x == t(18, 30)), "{booked:?}");
        assert!(!booked.is_empty());
        assert_eq!(times("rund um die Uhr, 24 Stunden, am 3.3."), vec![]);
    }

    fn studio() -> StudioConfig {
        StudioConfig {
            opening_hours: vec!["Mo–Fr 7–22 Uhr".into(), "Sa 9:00–14:00".into()],
            offers: vec!["Flex-Tarif 39,90 € im Monat".into()],
            trial_info: "20 Minuten, kostenlos".into(),
            ..StudioConfig::default()
        }
    }

    #[test]
    fn a_reply_may_name_the_facts_the_wish_and_the_slot_only() {
        let now: Zoned = "2026-03-02T10:00:00+01:00[Europe/Berlin]".parse().unwrap();
        let mut allowed = Allowed::from_studio(&studio());
        assert!(allowed
            .unknown_in("Flex kostet 39,90 € im Monat, offen bis 22 Uhr, Sa 9–14 Uhr.")
            .is_empty());
        assert_eq!(
            allowed.unknown_in("Nur heute 29,90 € und um 18:30 Uhr frei!"),
            vec!["29,90 €".to_string(), "18:30 Uhr".to_string()]
        );
        allowed.add_contact_text("Geht Dienstag um 6? Bei euch 20 € oder?", &now);
        assert!(allowed.unknown_in("Dienstag um 18 Uhr passt!").is_empty());
        assert!(allowed.unknown_in("Dienstag um 6 Uhr").is_empty());
        assert_eq!(allowed.unknown_in("Ja, 20 €."), vec!["20 €".to_string()]);
        allowed.add_slot(&"2026-03-03T18:30:00+01:00[Europe/Berlin]".parse().unwrap());
        assert!(allowed.unknown_in("Frei wäre 18:30 Uhr").is_empty());
    }
}
