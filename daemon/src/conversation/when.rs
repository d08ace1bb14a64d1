//! Deterministic German date/time parser for appointment wishes.
//!
//! Customers (and the LLM, which passes on the wished date "in words") write things like
//! "nächsten Dienstag um 18 Uhr", "morgen abends", "20.1." or "halb sechs". [`parse`] turns such
//! text into a [`When`]: an optional calendar date, an optional wall-clock time and an optional part
//! of the day, all meant in Europe/Berlin. [`choice`] reads which of several offered alternatives a
//! customer picked. Both are pure functions of their input (and `now`), so every answer can be
//! reproduced in a test.
//!
//! Pipeline: tokenizer (lowercase, umlauts folded to `ae`/`oe`/`ue`/`ss`, common ASCII spellings
//! such as "naechsten"/"nachsten" mapped to one form) → masking of numbers that are prices, phone
//! numbers or quantities ("39,90 €", "0171 …", "3x", "25 Jahre") → recognizers that turn token runs
//! into findings → resolution against `now`.
//!
//! Resolution rules, i.e. the decisions a human would otherwise have to guess:
//! - A day and month without year mean the next occurrence, today included: in December "5.1." is
//!   next January. The year is picked first and the date checked afterwards, so a day that does not
//!   exist in that year (31.02., 32.1., 29.02. when the picked year is no leap year) gives no date.
//!   An explicit year is kept even when the date is past; the booking layer rejects past slots.
//! - "am 20." (day of month only) means this month if the day is still ahead, else next month.
//! - A plain weekday and "nächsten"/"kommenden" + weekday mean the next such day *after* today:
//!   "Dienstag" said on a Tuesday is next week's Tuesday (say "heute" for today). "diesen Dienstag"
//!   includes today. "übernächsten Dienstag" is one week after "nächsten Dienstag".
//!   "Dienstag nächste Woche"/"nächste Woche Dienstag" is the Tuesday of the following
//!   Monday-based week; "diese Woche Dienstag" the one of the current week, and no date if that day
//!   is already past. "nächste Woche" without a weekday is too vague for a date.
//! - Explicit dates beat relative days ("heute", "in 3 Tagen"), which beat weekdays; the first time
//!   mentioned wins ("zwischen 17 und 19 Uhr" → 17:00). "in einer Woche" counts from today, or
//!   from the weekday named with it ("Dienstag in einer Woche" = a week after next Tuesday).
//! - Clock hours 1..=7 without a part of day are read as 13..=19, because a studio is rarely booked
//!   at five in the morning and "halb sechs" almost always means 17:30. A leading zero ("06:30") or
//!   a morning word ("7 Uhr morgens", "Dienstag morgen um 7") keeps the morning hour;
//!   "abends"/"nachmittags" move 1..=11 to the afternoon/evening, "mittags" moves 1..=3.
//!   "halb eins" is 12:30.
//! - "morgen" is tomorrow, except after "heute", "am" or a weekday ("heute morgen",
//!   "Dienstag morgen"), where it is the morning. Greetings ("Guten Morgen", "schönen Abend") are
//!   ignored.

use std::ops::Range;

use jiff::civil::{Date, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{Span, Zoned};
use serde::{Deserialize, Serialize};

/// The studio's time zone; every date and time in this module is meant in it.
pub const TZ_NAME: &str = "Europe/Berlin";

/// The Europe/Berlin time zone.
pub fn berlin_tz() -> TimeZone {
    // The tz database is compiled into the binary (`tzdb-bundle-always`), so this cannot fail.
    TimeZone::get(TZ_NAME).expect("bundled tz database contains Europe/Berlin")
}

/// The current instant in Europe/Berlin, the `now` that [`parse`] expects.
pub fn berlin_now() -> Zoned {
    Zoned::now().with_time_zone(berlin_tz())
}

/// A coarse part of the day ("morgen abends", "Dienstag vormittags").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartOfDay {
    /// "früh", "morgens": 06:00–09:00.
    Frueh,
    /// "vormittags": 09:00–12:00.
    Vormittag,
    /// "mittags": 12:00–14:00.
    Mittag,
    /// "nachmittags": 14:00–17:00.
    Nachmittag,
    /// "abends", "nach Feierabend": 17:00–22:00.
    Abend,
}

impl PartOfDay {
    /// Representative hours `[start, end)` in which to look for a slot.
    pub fn hours(self) -> Range<i8> {
        match self {
            PartOfDay::Frueh => 6..9,
            PartOfDay::Vormittag => 9..12,
            PartOfDay::Mittag => 12..14,
            PartOfDay::Nachmittag => 14..17,
            PartOfDay::Abend => 17..22,
        }
    }

    /// The time used when only the part of day is known.
    pub fn default_time(self) -> Time {
        let hour = match self {
            PartOfDay::Frueh => 7,
            PartOfDay::Vormittag => 10,
            PartOfDay::Mittag => 12,
            PartOfDay::Nachmittag => 15,
            PartOfDay::Abend => 18,
        };
        jiff::civil::time(hour, 0, 0, 0)
    }

    /// German adverb as a customer would read it ("abends").
    pub fn label_de(self) -> &'static str {
        match self {
            PartOfDay::Frueh => "früh",
            PartOfDay::Vormittag => "vormittags",
            PartOfDay::Mittag => "mittags",
            PartOfDay::Nachmittag => "nachmittags",
            PartOfDay::Abend => "abends",
        }
    }
}

/// A wished appointment as far as the text says it; at least one field is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct When {
    /// Calendar date in Europe/Berlin.
    pub date: Option<Date>,
    /// Wall-clock time in Europe/Berlin, already resolved to 24 hours.
    pub time: Option<Time>,
    /// Part of the day, if the text named one.
    pub part_of_day: Option<PartOfDay>,
}

impl When {
    /// The concrete start instant, if the wish is concrete enough.
    ///
    /// With a date: the date at the time, or at the part of day's [`PartOfDay::default_time`];
    /// a bare date gives `None` (look for slots over the whole day instead). Without a date: the
    /// next occurrence of the time (or part of day) strictly after `now`, today or tomorrow.
    pub fn start(&self, now: &Zoned) -> Option<Zoned> {
        let clock = self
            .time
            .or_else(|| self.part_of_day.map(PartOfDay::default_time))?;
        let tz = now.time_zone().clone();
        if let Some(date) = self.date {
            return date.to_datetime(clock).to_zoned(tz).ok();
        }
        let today = now.date().to_datetime(clock).to_zoned(tz.clone()).ok()?;
        if today.timestamp() > now.timestamp() {
            return Some(today);
        }
        let tomorrow = now.date().checked_add(Span::new().days(1)).ok()?;
        tomorrow.to_datetime(clock).to_zoned(tz).ok()
    }

    /// German rendering for the customer, e.g. "Dienstag, 20.01. um 18:00 Uhr".
    pub fn describe_de(&self) -> String {
        let mut parts = Vec::new();
        if let Some(date) = self.date {
            parts.push(format!(
                "{}, {:02}.{:02}.",
                weekday_de(date.weekday()),
                date.day(),
                date.month()
            ));
        }
        match (self.time, self.part_of_day) {
            (Some(t), _) => parts.push(format!("um {:02}:{:02} Uhr", t.hour(), t.minute())),
            (None, Some(pod)) => parts.push(pod.label_de().to_string()),
            (None, None) => {}
        }
        parts.join(" ")
    }
}

fn weekday_de(day: Weekday) -> &'static str {
    match day {
        Weekday::Monday => "Montag",
        Weekday::Tuesday => "Dienstag",
        Weekday::Wednesday => "Mittwoch",
        Weekday::Thursday => "Donnerstag",
        Weekday::Friday => "Freitag",
        Weekday::Saturday => "Samstag",
        Weekday::Sunday => "Sonntag",
    }
}

/// Reads a wished date and/or time from German text; `now` must be in Europe/Berlin.
///
/// Returns `None` when the text names no date, time or part of day (or only an impossible date).
pub fn parse(text: &str, now: &Zoned) -> Option<When> {
    let mut toks = tokenize(text);
    mask_non_temporal(&mut toks);
    let cur = Cursor { toks: &toks };
    let today = now.date();
    let mut found = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        match RECOGNIZERS.iter().find_map(|rec| rec(&cur, i, today)) {
            Some(m) => {
                found.extend(m.found);
                i += m.len.max(1);
            }
            None => i += 1,
        }
    }
    resolve(&found, today)
}

/// Which of `n` offered alternatives the customer picked, 0-based.
///
/// Understands ordinals ("der zweite", "die erste", "den letzten", "vorletzte", "die 2."),
/// numbers after a keyword ("Nummer 3", "Option 2", "Nr. 1", "Variante zwei") and a bare number
/// when the message says little else ("2", "die 2 bitte"). `None` when nothing or more than one
/// different alternative is named, or the pick is out of range.
pub fn choice(text: &str, n: usize) -> Option<usize> {
    if n == 0 {
        return None;
    }
    let toks = tokenize(text);
    let cur = Cursor { toks: &toks };
    let only_filler = toks.iter().all(|t| match &t.kind {
        Kind::Word(w) => CHOICE_FILLER.contains(&w.as_str()) || number_word(w).is_some(),
        Kind::Num(_) => true,
        Kind::Punct(c) => matches!(c, '.' | '!' | ',' | ')' | '#'),
    });
    let mut picks: Vec<usize> = Vec::new();
    for (i, tok) in toks.iter().enumerate() {
        let pick = match &tok.kind {
            Kind::Word(w) => choice_word(&cur, i, w, n, only_filler),
            Kind::Num(num) => choice_number(&cur, i, *num, only_filler),
            Kind::Punct(_) => None,
        };
        if let Some(p) = pick {
            if !picks.contains(&p) {
                picks.push(p);
            }
        }
    }
    match picks.as_slice() {
        [one] if (1..=n).contains(one) => Some(one - 1),
        _ => None,
    }
}

/// Words that may surround a bare number in a pick ("die 2 bitte").
const CHOICE_FILLER: &[&str] = &[
    "ich",
    "nehme",
    "nehm",
    "nimm",
    "bitte",
    "gerne",
    "gern",
    "die",
    "der",
    "das",
    "den",
    "dem",
    "ok",
    "okay",
    "ja",
    "dann",
    "lieber",
    "mir",
    "passt",
    "gut",
    "also",
    "hm",
    "hmm",
    "option",
    "nummer",
    "nr",
    "termin",
    "variante",
    "vorschlag",
    "am",
    "besten",
    "super",
    "perfekt",
];

const CHOICE_KEYWORDS: &[&str] = &[
    "nummer",
    "nr",
    "option",
    "variante",
    "vorschlag",
    "alternative",
    "termin",
];

/// 1-based pick named by the word at `i`.
fn choice_word(cur: &Cursor, i: usize, w: &str, n: usize, only_filler: bool) -> Option<usize> {
    if CHOICE_KEYWORDS.contains(&w) {
        // "Nr. 2" and "Option #2" put punctuation between keyword and number.
        let j = if cur.punct(i + 1, '.') || cur.punct(i + 1, '#') {
            i + 2
        } else {
            i + 1
        };
        if let Some(num) = cur.num(j) {
            return Some(num.value as usize);
        }
        return cur.word(j).and_then(number_word).map(|v| v as usize);
    }
    // "das erste Mal", "letzte Woche" are not picks.
    if cur.word_in(i + 1, &["mal", "woche", "monat", "jahr", "tag", "jahren"]) {
        return None;
    }
    if let Some(stem) = strip_inflection(w) {
        match stem {
            "letzt" => return Some(n),
            "vorletzt" => return n.checked_sub(1).filter(|&p| p > 0),
            "mittler" if n % 2 == 1 && n >= 3 => return Some(n / 2 + 1),
            _ => {}
        }
    }
    if let Some(k) = ordinal_word(w) {
        return Some(k as usize);
    }
    if only_filler {
        return number_word(w).filter(|&v| v > 0).map(|v| v as usize);
    }
    None
}

/// 1-based pick named by the number at `i` (keyword-led numbers are read by [`choice_word`]).
fn choice_number(cur: &Cursor, i: usize, num: Num, only_filler: bool) -> Option<usize> {
    if num.len > 2
        || cur
            .prev_word(i)
            .is_some_and(|w| CHOICE_KEYWORDS.contains(&w))
    {
        return None;
    }
    if i >= 2 && cur.punct(i - 1, '.') && cur.word_in(i - 2, &["nr"]) {
        return None;
    }
    // Digits inside "2.12." or "18:30" are dates and times, not picks.
    let joined = |sep: usize, other: usize| {
        [':', '.', ','].iter().any(|c| cur.punct(sep, *c)) && cur.any_num(other)
    };
    if joined(i + 1, i + 2) || (i >= 2 && joined(i - 1, i - 2)) {
        return None;
    }
    let ordinal = (cur.punct(i + 1, '.') || cur.punct(i + 1, ')')) && cur.tight(i + 1);
    if ordinal || only_filler {
        return Some(num.value as usize);
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Tokenizer

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Num {
    value: u32,
    len: usize,
    zero_lead: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Word(String),
    Num(Num),
    Punct(char),
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    /// Whitespace stood directly before this token.
    spaced: bool,
    /// A number that is a price, phone number or quantity, never a date or time.
    masked: bool,
}

fn tokenize(text: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut spaced = false;
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            spaced = true;
            chars.next();
            continue;
        }
        let kind = if c.is_ascii_digit() {
            let mut digits = String::new();
            while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                digits.push(d);
                chars.next();
            }
            Kind::Num(Num {
                value: digits.parse().unwrap_or(u32::MAX),
                len: digits.len(),
                zero_lead: digits.len() > 1 && digits.starts_with('0'),
            })
        } else if c.is_alphabetic() {
            let mut word = String::new();
            while let Some(&d) = chars.peek().filter(|d| d.is_alphabetic()) {
                fold_into(&mut word, d);
                chars.next();
            }
            Kind::Word(canonical(word))
        } else {
            chars.next();
            Kind::Punct(c)
        };
        out.push(Token {
            kind,
            spaced,
            masked: false,
        });
        spaced = false;
    }
    out
}

fn fold_into(out: &mut String, c: char) {
    for l in c.to_lowercase() {
        match l {
            'ä' => out.push_str("ae"),
            'ö' => out.push_str("oe"),
            'ü' => out.push_str("ue"),
            'ß' => out.push_str("ss"),
            other => out.push(other),
        }
    }
}

/// Maps umlaut-less ASCII spellings ("nachsten", "fruh") to the folded form ("naechsten", "frueh").
fn canonical(word: String) -> String {
    let mapped = match word.as_str() {
        "nachste" => "naechste",
        "nachsten" => "naechsten",
        "nachster" => "naechster",
        "ubernachste" => "uebernaechste",
        "ubernachsten" => "uebernaechsten",
        "ubernachster" => "uebernaechster",
        "ubermorgen" => "uebermorgen",
        "fruh" => "frueh",
        "funf" => "fuenf",
        "funfzehn" => "fuenfzehn",
        "zwolf" => "zwoelf",
        "zwolfte" => "zwoelfte",
        "zwolften" => "zwoelften",
        "funfte" => "fuenfte",
        "funften" => "fuenften",
        "marz" => "maerz",
        "schonen" => "schoenen",
        "moglich" => "moeglich",
        "moglichst" => "moeglichst",
        _ => return word,
    };
    mapped.to_string()
}

/// Units and currencies after which a number is a quantity ("3x", "25 Jahre", "39 Euro").
const UNIT_WORDS: &[&str] = &[
    "euro", "eur", "ct", "cent", "prozent", "x", "mal", "kg", "kilo", "km", "cm", "m", "jahre",
    "jahren", "jahr", "monat", "monate", "monaten", "personen", "leute", "min", "minuten",
    "stunden", "std", "sek", "sekunden", "cm", "euros",
];

/// Marks numbers that must never be read as dates or times.
fn mask_non_temporal(toks: &mut [Token]) {
    let cur_kinds: Vec<Kind> = toks.iter().map(|t| t.kind.clone()).collect();
    let is_word = |j: usize, set: &[&str]| matches!(cur_kinds.get(j), Some(Kind::Word(w)) if set.contains(&w.as_str()));
    let is_punct = |j: usize, set: &[char]| matches!(cur_kinds.get(j), Some(Kind::Punct(c)) if set.contains(c));
    let is_num = |j: usize| matches!(cur_kinds.get(j), Some(Kind::Num(_)));
    let tight = |j: usize| toks_spaced(toks, j) == Some(false);
    let mut mask = vec![false; toks.len()];
    for i in 0..toks.len() {
        let Kind::Num(num) = cur_kinds[i] else {
            continue;
        };
        let phone = num.len >= 5 || (num.zero_lead && num.len >= 3);
        let money = is_punct(i + 1, &['€', '$', '%'])
            || (i > 0 && is_punct(i - 1, &['€', '$', '+']))
            || is_word(i + 1, UNIT_WORDS);
        // "39,90" is a decimal; "18,30 Uhr" is a time written with a comma.
        let decimal = is_punct(i + 1, &[','])
            && tight(i + 1)
            && is_num(i + 2)
            && tight(i + 2)
            && !is_word(i + 3, &["uhr", "h"]);
        if phone || money || decimal {
            mask[i] = true;
            if decimal {
                mask[i + 2] = true;
            }
        }
    }
    // Spread masks over runs of numbers that belong together ("+49 171 1234567", "1.000 €").
    loop {
        let mut changed = false;
        for i in 0..toks.len() {
            if !mask[i] {
                continue;
            }
            let mut neighbours = Vec::new();
            if is_num(i + 1) {
                neighbours.push(i + 1);
            }
            if i >= 1 && is_num(i - 1) {
                neighbours.push(i - 1);
            }
            let joins = |sep: usize, far: usize| {
                is_num(far)
                    && (is_punct(sep, &['-', '/', '(', ')'])
                        || (is_punct(sep, &['.', ',']) && tight(sep) && tight(far.max(sep))))
            };
            if joins(i + 1, i + 2) {
                neighbours.push(i + 2);
            }
            if i >= 2 && joins(i - 1, i - 2) && tight(i) {
                neighbours.push(i - 2);
            }
            for j in neighbours {
                if !mask[j] {
                    mask[j] = true;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    for (t, m) in toks.iter_mut().zip(mask) {
        t.masked = m;
    }
}

fn toks_spaced(toks: &[Token], i: usize) -> Option<bool> {
    toks.get(i).map(|t| t.spaced)
}

/// Read-only view over the tokens for the recognizers; masked numbers read as absent.
struct Cursor<'a> {
    toks: &'a [Token],
}

impl<'a> Cursor<'a> {
    fn word(&self, i: usize) -> Option<&'a str> {
        match self.toks.get(i).map(|t| &t.kind) {
            Some(Kind::Word(w)) => Some(w),
            _ => None,
        }
    }

    fn word_in(&self, i: usize, set: &[&str]) -> bool {
        self.word(i).is_some_and(|w| set.contains(&w))
    }

    fn prev_word(&self, i: usize) -> Option<&'a str> {
        i.checked_sub(1).and_then(|j| self.word(j))
    }

    fn num(&self, i: usize) -> Option<Num> {
        match self.toks.get(i) {
            Some(Token {
                kind: Kind::Num(n),
                masked: false,
                ..
            }) => Some(*n),
            _ => None,
        }
    }

    fn any_num(&self, i: usize) -> bool {
        matches!(self.toks.get(i).map(|t| &t.kind), Some(Kind::Num(_)))
    }

    fn punct(&self, i: usize, c: char) -> bool {
        matches!(self.toks.get(i).map(|t| &t.kind), Some(Kind::Punct(p)) if *p == c)
    }

    /// No whitespace before token `i` (and the token exists).
    fn tight(&self, i: usize) -> bool {
        self.toks.get(i).is_some_and(|t| !t.spaced)
    }

    /// A clock hour 0..=24 as digits or a number word, with whether it had a leading zero.
    fn hour(&self, i: usize) -> Option<(i8, bool)> {
        if let Some(n) = self.num(i) {
            return (n.len <= 2 && n.value <= 24).then_some((n.value as i8, n.zero_lead));
        }
        let v = self.word(i).and_then(number_word)?;
        (v <= 24).then_some((v as i8, false))
    }

    /// Two-digit minutes 00..=59.
    fn minutes(&self, i: usize) -> Option<i8> {
        self.num(i)
            .filter(|n| n.len == 2 && n.value <= 59)
            .map(|n| n.value as i8)
    }

    /// A "uhr"/"h" suffix at `i`: how many tokens it takes.
    fn uhr_suffix(&self, i: usize) -> usize {
        usize::from(self.word_in(i, &["uhr", "h"]))
    }
}

// ---------------------------------------------------------------------------------------------
// Words

fn number_word(w: &str) -> Option<u32> {
    const SMALL: [&str; 20] = [
        "null",
        "eins",
        "zwei",
        "drei",
        "vier",
        "fuenf",
        "sechs",
        "sieben",
        "acht",
        "neun",
        "zehn",
        "elf",
        "zwoelf",
        "dreizehn",
        "vierzehn",
        "fuenfzehn",
        "sechzehn",
        "siebzehn",
        "achtzehn",
        "neunzehn",
    ];
    if w == "zwo" {
        return Some(2);
    }
    if let Some(v) = SMALL.iter().position(|s| *s == w) {
        return Some(v as u32);
    }
    let tens = |t: &str| match t {
        "zwanzig" => Some(20),
        "dreissig" => Some(30),
        _ => None,
    };
    if let Some(t) = tens(w) {
        return Some(t);
    }
    let (unit, rest) = w.split_once("und")?;
    let unit = match unit {
        "ein" => 1,
        other => SMALL[2..10].iter().position(|s| *s == other)? as u32 + 2,
    };
    Some(tens(rest)? + unit)
}

/// Strips a German adjective ending ("-e", "-en", "-er", "-es", "-em").
fn strip_inflection(w: &str) -> Option<&str> {
    ["en", "er", "es", "em", "e"]
        .iter()
        .find_map(|end| w.strip_suffix(end))
        .filter(|stem| !stem.is_empty())
}

/// Inflected ordinal words 1..=31 ("ersten", "dritte", "einundzwanzigsten").
fn ordinal_word(w: &str) -> Option<u32> {
    let stem = strip_inflection(w)?;
    let fixed = match stem {
        "erst" => Some(1),
        "zweit" => Some(2),
        "dritt" => Some(3),
        "siebt" | "siebent" => Some(7),
        "acht" => Some(8),
        _ => None,
    };
    if fixed.is_some() {
        return fixed;
    }
    if let Some(base) = stem.strip_suffix("st") {
        if let Some(v) = number_word(base).filter(|v| *v >= 20) {
            return Some(v);
        }
    }
    let base = stem.strip_suffix('t')?;
    number_word(base).filter(|v| (4..=19).contains(v) && *v != 7 && *v != 8)
}

fn month_word(w: &str) -> Option<i8> {
    Some(match w {
        "januar" | "jan" | "jaenner" => 1,
        "februar" | "feb" | "febr" => 2,
        "maerz" | "mrz" => 3,
        "april" | "apr" => 4,
        "mai" => 5,
        "juni" | "jun" => 6,
        "juli" | "jul" => 7,
        "august" | "aug" => 8,
        "september" | "sep" | "sept" => 9,
        "oktober" | "okt" => 10,
        "november" | "nov" => 11,
        "dezember" | "dez" => 12,
        _ => return None,
    })
}

const WEEKDAYS: [(&str, Weekday); 8] = [
    ("montag", Weekday::Monday),
    ("dienstag", Weekday::Tuesday),
    ("mittwoch", Weekday::Wednesday),
    ("donnerstag", Weekday::Thursday),
    ("freitag", Weekday::Friday),
    ("samstag", Weekday::Saturday),
    ("sonnabend", Weekday::Saturday),
    ("sonntag", Weekday::Sunday),
];

const WEEKDAY_ABBREVIATIONS: [(&str, Weekday); 7] = [
    ("mo", Weekday::Monday),
    ("di", Weekday::Tuesday),
    ("mi", Weekday::Wednesday),
    ("do", Weekday::Thursday),
    ("fr", Weekday::Friday),
    ("sa", Weekday::Saturday),
    ("so", Weekday::Sunday),
];

fn pod_word(w: &str) -> Option<PartOfDay> {
    Some(match w {
        "frueh" | "morgens" => PartOfDay::Frueh,
        "vormittag" | "vormittags" => PartOfDay::Vormittag,
        "mittag" | "mittags" => PartOfDay::Mittag,
        "nachmittag" | "nachmittags" => PartOfDay::Nachmittag,
        "abend" | "abends" | "feierabend" => PartOfDay::Abend,
        _ => return None,
    })
}

/// "Guten Morgen" and "schönen Abend noch" are greetings, not wishes.
const GREETINGS: &[&str] = &[
    "guten",
    "gute",
    "schoenen",
    "schoener",
    "netten",
    "angenehmen",
    "erholsamen",
];

/// Words before a bare hour that make it a time ("um 6", "gegen sieben", "ab 18").
const TIME_PREFIXES: &[&str] = &["um", "gegen", "ab", "zwischen", "bis"];

const NEXT_WORDS: &[&str] = &[
    "naechste",
    "naechsten",
    "naechster",
    "kommende",
    "kommenden",
    "kommender",
];
const THIS_WORDS: &[&str] = &["diese", "diesen", "dieser"];
const AFTER_NEXT_WORDS: &[&str] = &["uebernaechste", "uebernaechsten", "uebernaechster"];

// ---------------------------------------------------------------------------------------------
// Recognizers

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Modifier {
    Plain,
    This,
    Next,
    AfterNext,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finding {
    Date(Date),
    /// Date-shaped text naming a day that does not exist.
    BadDate,
    /// Days after today.
    Days(i64),
    /// "in N Wochen": N weeks after today, or after the weekday named with it.
    InWeeks(i64),
    /// Weeks after the current Monday-based week.
    Week(i64),
    Weekday(Weekday, Modifier),
    Time {
        hour: i8,
        minute: i8,
        /// Unambiguous 24-hour reading (hour 0 or >= 13, or a leading zero).
        fixed: bool,
    },
    Pod(PartOfDay),
}

struct Match {
    len: usize,
    found: Vec<Finding>,
}

fn hit(len: usize, found: Vec<Finding>) -> Option<Match> {
    Some(Match { len, found })
}

fn clock(hour: i8, minute: i8, zero_lead: bool) -> Finding {
    Finding::Time {
        hour,
        minute,
        fixed: zero_lead || hour == 0 || hour >= 13,
    }
}

type Recognizer = fn(&Cursor, usize, Date) -> Option<Match>;

/// Tried in order at each token; the first that matches consumes its tokens.
const RECOGNIZERS: &[Recognizer] = &[
    clock_colon,
    clock_dotted_marked,
    iso_date,
    numeric_date,
    month_name_date,
    day_of_month,
    relative_day,
    week,
    weekday,
    clock_words,
    clock_uhr,
    clock_prefixed,
    clock_dotted_bare,
    hour_before_pod,
    part_of_day,
];

/// "18:30", "6:15 Uhr".
fn clock_colon(c: &Cursor, i: usize, _: Date) -> Option<Match> {
    let (h, zero) = c.hour(i).filter(|_| c.num(i).is_some())?;
    if h > 23 || !c.punct(i + 1, ':') {
        return None;
    }
    let m = c.minutes(i + 2)?;
    hit(3 + c.uhr_suffix(i + 3), vec![clock(h, m, zero)])
}

/// "18.30 Uhr", "um 18.30", "18,30 Uhr" (a dotted time that would otherwise look like a date).
fn clock_dotted_marked(c: &Cursor, i: usize, _: Date) -> Option<Match> {
    let (h, zero) = c.hour(i).filter(|_| c.num(i).is_some())?;
    let sep = c.punct(i + 1, '.') || c.punct(i + 1, ',');
    if h > 23 || !sep || !c.tight(i + 1) || !c.tight(i + 2) {
        return None;
    }
    let m = c.minutes(i + 2)?;
    let suffix = c.uhr_suffix(i + 3);
    let prefixed = c.prev_word(i).is_some_and(|w| w == "um" || w == "gegen");
    // "um 10.12." is still a date; "um 10.12" a time.
    let marked = suffix > 0 || (prefixed && !c.punct(i + 3, '.'));
    if !marked {
        return None;
    }
    hit(3 + suffix, vec![clock(h, m, zero)])
}

/// "2026-01-20".
fn iso_date(c: &Cursor, i: usize, _: Date) -> Option<Match> {
    let y = c.num(i).filter(|n| n.len == 4)?;
    let m = c.num(i + 2).filter(|n| n.len <= 2)?;
    let d = c.num(i + 4).filter(|n| n.len <= 2)?;
    if !(c.punct(i + 1, '-') && c.punct(i + 3, '-') && c.tight(i + 2) && c.tight(i + 4)) {
        return None;
    }
    hit(5, vec![exact_date(y.value, m.value, d.value)])
}

/// "20.01.", "20.1.2026", "20.01.26", "10.12" (month 1..=12, else it is no date).
fn numeric_date(c: &Cursor, i: usize, today: Date) -> Option<Match> {
    let d = c.num(i).filter(|n| n.len <= 2)?;
    let m = c
        .num(i + 2)
        .filter(|n| n.len <= 2 && (1..=12).contains(&n.value))?;
    if !(c.punct(i + 1, '.') && c.tight(i + 2)) {
        return None;
    }
    if !(c.punct(i + 3, '.') && c.tight(i + 3)) {
        return hit(3, vec![next_date(today, m.value, d.value)]);
    }
    // A two-digit year must be glued to the dot: "20.1. 18 Uhr" is no year 2018.
    let year = c
        .num(i + 4)
        .filter(|y| y.len == 4 || (y.len == 2 && c.tight(i + 4)))
        .filter(|_| !c.punct(i + 5, ':') && !c.word_in(i + 5, &["uhr", "h"]));
    match year {
        Some(y) => {
            let full = if y.len == 2 { 2000 + y.value } else { y.value };
            hit(5, vec![exact_date(full, m.value, d.value)])
        }
        None => hit(4, vec![next_date(today, m.value, d.value)]),
    }
}

/// "3. Februar", "3 Feb", "3.Feb. 2027", "3ten März", "dritten Dezember".
fn month_name_date(c: &Cursor, i: usize, today: Date) -> Option<Match> {
    let (d, mut j) = if let Some(n) = c.num(i).filter(|n| n.len <= 2) {
        let mut j = i + 1;
        if c.punct(j, '.') || (c.tight(j) && c.word_in(j, &["ten", "ter", "sten", "ster"])) {
            j += 1;
        }
        (n.value, j)
    } else {
        (c.word(i).and_then(ordinal_word)?, i + 1)
    };
    let m = c.word(j).and_then(month_word)?;
    j += 1;
    if c.punct(j, '.') && c.tight(j) {
        j += 1;
    }
    match c.num(j).filter(|n| n.len == 4) {
        Some(y) => hit(j + 1 - i, vec![exact_date(y.value, m as u32, d)]),
        None => hit(j - i, vec![next_date(today, m as u32, d)]),
    }
}

/// "am 20.", "den 3." – a day of this or next month.
fn day_of_month(c: &Cursor, i: usize, today: Date) -> Option<Match> {
    let d = c.num(i).filter(|n| n.len <= 2)?;
    let led = c
        .prev_word(i)
        .is_some_and(|w| ["am", "den", "zum", "vom"].contains(&w));
    let follows_number = c.any_num(i + 2) || c.word(i + 2).and_then(month_word).is_some();
    if !led || !c.punct(i + 1, '.') || follows_number || c.word_in(i + 2, &["uhr", "h"]) {
        return None;
    }
    let in_this_month = d.value >= today.day() as u32;
    let first = today.first_of_month();
    let month_start = if in_this_month {
        first
    } else {
        first.checked_add(Span::new().months(1)).ok()?
    };
    let found = Date::new(
        month_start.year(),
        month_start.month(),
        d.value.min(99) as i8,
    )
    .map(Finding::Date)
    .unwrap_or(Finding::BadDate);
    hit(2, vec![found])
}

/// "heute", "morgen", "übermorgen", "in 3 Tagen", "in einer Woche".
fn relative_day(c: &Cursor, i: usize, _: Date) -> Option<Match> {
    match c.word(i)? {
        "heute" | "heut" => hit(1, vec![Finding::Days(0)]),
        "uebermorgen" => hit(1, vec![Finding::Days(2)]),
        "morgen" => {
            let prev = c.prev_word(i).unwrap_or("");
            let after_weekday = weekday_name(prev).is_some();
            if GREETINGS.contains(&prev) || prev == "jeden" {
                hit(1, vec![])
            } else if ["heute", "heut", "am", "gestern"].contains(&prev) || after_weekday {
                hit(1, vec![Finding::Pod(PartOfDay::Frueh)])
            } else {
                hit(1, vec![Finding::Days(1)])
            }
        }
        "in" => {
            let count = match c.num(i + 1) {
                Some(n) if n.len <= 3 => n.value,
                Some(_) => return None,
                None => {
                    let w = c.word(i + 1)?;
                    if ["ein", "eine", "einem", "einer", "einen", "ner", "nem"].contains(&w) {
                        1
                    } else {
                        number_word(w)?
                    }
                }
            };
            let found = match c.word(i + 2)? {
                "tag" | "tage" | "tagen" => Finding::Days(i64::from(count)),
                "woche" | "wochen" => Finding::InWeeks(i64::from(count)),
                _ => return None,
            };
            hit(3, vec![found])
        }
        _ => None,
    }
}

/// "nächste Woche", "diese Woche", "übernächste Woche".
fn week(c: &Cursor, i: usize, _: Date) -> Option<Match> {
    let w = c.word(i)?;
    if !c.word_in(i + 1, &["woche"]) {
        return None;
    }
    let k = if NEXT_WORDS.contains(&w) {
        1
    } else if THIS_WORDS.contains(&w) {
        0
    } else if AFTER_NEXT_WORDS.contains(&w) {
        2
    } else {
        return None;
    };
    hit(2, vec![Finding::Week(k)])
}

fn weekday_name(w: &str) -> Option<(Weekday, Option<PartOfDay>)> {
    WEEKDAYS.iter().find_map(|(name, day)| {
        let rest = w.strip_prefix(name)?;
        match rest {
            "" | "s" => Some((*day, None)),
            // "Dienstagabend", "Montagmorgen"
            "morgen" => Some((*day, Some(PartOfDay::Frueh))),
            _ => pod_word(rest).map(|pod| (*day, Some(pod))),
        }
    })
}

/// "Dienstag", "nächsten Dienstag", "diesen Freitag", "am Di", "Mittwochabend".
fn weekday(c: &Cursor, i: usize, _: Date) -> Option<Match> {
    let first = c.word(i)?;
    let (modifier, at) = if NEXT_WORDS.contains(&first) {
        (Modifier::Next, i + 1)
    } else if THIS_WORDS.contains(&first) {
        (Modifier::This, i + 1)
    } else if AFTER_NEXT_WORDS.contains(&first) {
        (Modifier::AfterNext, i + 1)
    } else {
        (Modifier::Plain, i)
    };
    let w = c.word(at)?;
    let (day, pod) = match weekday_name(w) {
        Some(found) => found,
        None => {
            let (abbr, day) = WEEKDAY_ABBREVIATIONS.iter().find(|(a, _)| *a == w)?;
            let led = modifier != Modifier::Plain || c.prev_word(at) == Some("am");
            // "so" is mostly the adverb; only "So 3.2." or "am So" make it Sunday.
            let j = if c.punct(at + 1, '.') || c.punct(at + 1, ',') {
                at + 2
            } else {
                at + 1
            };
            let before_date = c.num(j).is_some() && c.punct(j + 1, '.');
            if *abbr == "so" && !led && !before_date {
                return None;
            }
            (*day, None)
        }
    };
    let mut found = vec![Finding::Weekday(day, modifier)];
    found.extend(pod.map(Finding::Pod));
    hit(at + 1 - i, found)
}

/// "halb sechs", "viertel nach 6", "viertel vor sieben", "dreiviertel sieben", "zehn nach sechs",
/// "fünf vor halb sieben".
fn clock_words(c: &Cursor, i: usize, _: Date) -> Option<Match> {
    let before = |h: i8| if h <= 1 { 12 } else { h - 1 };
    let w = c.word(i);
    if w == Some("halb") || w == Some("dreiviertel") {
        let (h, zero) = c.hour(i + 1).filter(|(h, _)| (1..=24).contains(h))?;
        let m = if w == Some("halb") { 30 } else { 45 };
        return hit(2 + c.uhr_suffix(i + 2), vec![clock(before(h), m, zero)]);
    }
    let x = match w {
        Some("viertel") => 15,
        Some(word) => number_word(word)? as i8,
        None => c.num(i).filter(|n| n.len <= 2)?.value as i8,
    };
    if !(1..=29).contains(&x) {
        return None;
    }
    let after = match c.word(i + 1)? {
        "nach" => true,
        "vor" => false,
        _ => return None,
    };
    let half = c.word_in(i + 2, &["halb"]);
    let at = i + 2 + usize::from(half);
    let (h, zero) = c.hour(at).filter(|(h, _)| (1..=24).contains(h))?;
    let (hour, minute) = match (half, after) {
        (false, true) => (h, x),
        (false, false) => (before(h), 60 - x),
        (true, true) => (before(h), 30 + x),
        (true, false) => (before(h), 30 - x),
    };
    if hour > 23 {
        return None;
    }
    hit(
        at + 1 - i + c.uhr_suffix(at + 1),
        vec![clock(hour, minute, zero)],
    )
}

/// "18 Uhr", "sechs Uhr", "18h", "18 Uhr 30", "18h30", "18-19 Uhr", "ein Uhr".
fn clock_uhr(c: &Cursor, i: usize, _: Date) -> Option<Match> {
    let (h, zero) = if c.word(i) == Some("ein") {
        (1, false)
    } else {
        c.hour(i)?
    };
    if h > 23 {
        return None;
    }
    let mut j = i + 1;
    // A range names its start: "18-19 Uhr", "18 bis 19 Uhr".
    if (c.punct(j, '-') || c.word_in(j, &["bis", "und"])) && c.hour(j + 1).is_some() {
        j += 2;
    }
    if c.uhr_suffix(j) == 0 {
        return None;
    }
    j += 1;
    let unit_h = c.word_in(j - 1, &["h"]);
    let minute = c
        .minutes(j)
        .filter(|_| !unit_h || c.tight(j))
        .filter(|_| !c.punct(j + 1, '.'));
    if minute.is_some() {
        j += 1;
    }
    hit(j - i, vec![clock(h, minute.unwrap_or(0), zero)])
}

/// "um 6", "gegen sieben", "ab 18", "zwischen 17 und 19".
fn clock_prefixed(c: &Cursor, i: usize, _: Date) -> Option<Match> {
    if !c.prev_word(i).is_some_and(|w| TIME_PREFIXES.contains(&w)) {
        return None;
    }
    let (h, zero) = c.hour(i)?;
    if h > 23 || c.punct(i + 1, '.') && c.any_num(i + 2) {
        return None;
    }
    let mut len = 1;
    if (c.punct(i + 1, '-') || c.word_in(i + 1, &["bis", "und"])) && c.hour(i + 2).is_some() {
        len = 3;
    }
    hit(len, vec![clock(h, 0, zero)])
}

/// "18.30", "18.00" without a marker: only reached when it cannot be a date.
fn clock_dotted_bare(c: &Cursor, i: usize, _: Date) -> Option<Match> {
    let (h, zero) = c.hour(i).filter(|_| c.num(i).is_some())?;
    if h > 23 || !c.punct(i + 1, '.') || !c.tight(i + 1) || !c.tight(i + 2) {
        return None;
    }
    let m = c.minutes(i + 2)?;
    if c.punct(i + 3, '.') {
        return None;
    }
    hit(3, vec![clock(h, m, zero)])
}

/// "6 abends", "sieben morgens": the hour; the part of day is read on its own.
fn hour_before_pod(c: &Cursor, i: usize, _: Date) -> Option<Match> {
    let (h, zero) = c.hour(i).filter(|(h, _)| (1..=12).contains(h))?;
    c.word(i + 1).and_then(pod_word)?;
    hit(1, vec![clock(h, 0, zero)])
}

/// "abends", "vormittags", "früh", "am Morgen"; not "so früh wie möglich" or greetings.
fn part_of_day(c: &Cursor, i: usize, _: Date) -> Option<Match> {
    let pod = pod_word(c.word(i)?)?;
    let prev = c.prev_word(i).unwrap_or("");
    let not_a_time = GREETINGS.contains(&prev)
        || (pod == PartOfDay::Frueh
            && (["so", "zu", "moeglichst"].contains(&prev) || c.word_in(i + 1, &["wie"])));
    if not_a_time {
        return hit(1, vec![]);
    }
    hit(1, vec![Finding::Pod(pod)])
}

// ---------------------------------------------------------------------------------------------
// Resolution

/// A date with an explicit year; `BadDate` if it does not exist.
fn exact_date(year: u32, month: u32, day: u32) -> Finding {
    let valid = (1..=9999).contains(&year) && month <= 12 && day <= 31;
    valid
        .then(|| Date::new(year as i16, month as i8, day as i8).ok())
        .flatten()
        .map(Finding::Date)
        .unwrap_or(Finding::BadDate)
}

/// Day and month without year: this year if not yet past, else next year; checked in that year.
fn next_date(today: Date, month: u32, day: u32) -> Finding {
    let ahead = (month, day) >= (today.month() as u32, today.day() as u32);
    let year = if ahead {
        today.year()
    } else {
        today.year() + 1
    };
    exact_date(year as u32, month, day)
}

fn add_days(date: Date, days: i64) -> Option<Date> {
    date.checked_add(Span::new().try_days(days).ok()?).ok()
}

fn resolve_date(found: &[Finding], today: Date) -> Option<Date> {
    if let Some(explicit) = found
        .iter()
        .find(|f| matches!(f, Finding::Date(_) | Finding::BadDate))
    {
        return match explicit {
            Finding::Date(d) => Some(*d),
            _ => None,
        };
    }
    if let Some(days) = found.iter().find_map(|f| match f {
        Finding::Days(n) => Some(*n),
        _ => None,
    }) {
        return add_days(today, days);
    }
    let in_weeks = found.iter().find_map(|f| match f {
        Finding::InWeeks(k) => Some(*k),
        _ => None,
    });
    let Some((day, modifier)) = found.iter().find_map(|f| match f {
        Finding::Weekday(d, m) => Some((*d, *m)),
        _ => None,
    }) else {
        return add_days(today, 7 * in_weeks?);
    };
    let week = found.iter().find_map(|f| match f {
        Finding::Week(k) => Some(*k),
        _ => None,
    });
    if let Some(k) = week {
        let monday = add_days(today, -i64::from(today.weekday().to_monday_zero_offset()))?;
        let date = add_days(monday, 7 * k + i64::from(day.to_monday_zero_offset()))?;
        return (date >= today).then_some(date);
    }
    let ahead = i64::from(day.since(today.weekday()));
    let ahead = match modifier {
        Modifier::This => ahead,
        Modifier::Plain | Modifier::Next if ahead == 0 => 7,
        Modifier::Plain | Modifier::Next => ahead,
        Modifier::AfterNext if ahead == 0 => 14,
        Modifier::AfterNext => ahead + 7,
    };
    add_days(today, ahead + 7 * in_weeks.unwrap_or(0))
}

/// Applies the 12-hour rules documented at the top of this module.
fn settle_hour(hour: i8, fixed: bool, pod: Option<PartOfDay>) -> i8 {
    if fixed {
        return hour;
    }
    match pod {
        Some(PartOfDay::Abend | PartOfDay::Nachmittag) if (1..=11).contains(&hour) => hour + 12,
        Some(PartOfDay::Mittag) if (1..=3).contains(&hour) => hour + 12,
        Some(_) => hour,
        None if (1..=7).contains(&hour) => hour + 12,
        None => hour,
    }
}

fn resolve(found: &[Finding], today: Date) -> Option<When> {
    let part_of_day = found.iter().find_map(|f| match f {
        Finding::Pod(p) => Some(*p),
        _ => None,
    });
    let time = found.iter().find_map(|f| match f {
        Finding::Time {
            hour,
            minute,
            fixed,
        } => Time::new(settle_hour(*hour, *fixed, part_of_day), *minute, 0, 0).ok(),
        _ => None,
    });
    let when = When {
        date: resolve_date(found, today),
        time,
        part_of_day,
    };
    (when != When::default()).then_some(when)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    fn berlin(y: i16, m: i8, d: i8, h: i8, min: i8) -> Zoned {
        date(y, m, d)
            .at(h, min, 0, 0)
            .to_zoned(berlin_tz())
            .unwrap()
    }

    /// Thursday, 26 November 2026, 10:00 in Berlin.
    fn now() -> Zoned {
        berlin(2026, 11, 26, 10, 0)
    }

    type Case = (
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
        Option<PartOfDay>,
    );

    use PartOfDay::*;

    #[rustfmt::skip]
    const CASES: &[Case] = &[
        // Numeric dates and rollover.
        ("20.01.", Some("2027-01-20"), None, None),
        ("20.1.2026", Some("2026-01-20"), None, None),
        ("20.01.26", Some("2026-01-20"), None, None),
        ("am 3.2.", Some("2027-02-03"), None, None),
        ("3.12.", Some("2026-12-03"), None, None),
        ("26.11.", Some("2026-11-26"), None, None),
        ("25.11.", Some("2027-11-25"), None, None),
        ("10.12", Some("2026-12-10"), None, None),
        ("am 20.1. um 18 Uhr", Some("2027-01-20"), Some("18:00"), None),
        ("20.1. 18 Uhr", Some("2027-01-20"), Some("18:00"), None),
        ("2026-12-05", Some("2026-12-05"), None, None),
        ("Am 1.12.2026 um 17:30", Some("2026-12-01"), Some("17:30"), None),
        // Month names.
        ("3. Februar", Some("2027-02-03"), None, None),
        ("3 Feb", Some("2027-02-03"), None, None),
        ("am 3.Feb. 2028 abends", Some("2028-02-03"), None, Some(Abend)),
        ("14. März um halb sieben", Some("2027-03-14"), Some("18:30"), None),
        ("14. Maerz", Some("2027-03-14"), None, None),
        ("am dritten Dezember", Some("2026-12-03"), None, None),
        ("5ten Dezember", Some("2026-12-05"), None, None),
        ("am 1. Dezember um 9", Some("2026-12-01"), Some("09:00"), None),
        // Day of month only.
        ("am 28.", Some("2026-11-28"), None, None),
        ("am 3.", Some("2026-12-03"), None, None),
        // Weekdays.
        ("Dienstag", Some("2026-12-01"), None, None),
        ("nächsten Dienstag um 18 Uhr", Some("2026-12-01"), Some("18:00"), None),
        ("naechsten dienstag um 18 uhr", Some("2026-12-01"), Some("18:00"), None),
        ("nachsten Dienstag", Some("2026-12-01"), None, None),
        ("kommenden Freitag", Some("2026-11-27"), None, None),
        ("Donnerstag", Some("2026-12-03"), None, None),
        ("diesen Donnerstag abends", Some("2026-11-26"), None, Some(Abend)),
        ("Dienstag nächste Woche", Some("2026-12-01"), None, None),
        ("nächste Woche Mittwoch", Some("2026-12-02"), None, None),
        ("Freitag nächste Woche um 7", Some("2026-12-04"), Some("19:00"), None),
        ("diese Woche Freitag", Some("2026-11-27"), None, None),
        ("übernächsten Montag", Some("2026-12-07"), None, None),
        ("übernächste Woche Dienstag", Some("2026-12-08"), None, None),
        ("am Di", Some("2026-12-01"), None, None),
        ("Mo 18 Uhr", Some("2026-11-30"), Some("18:00"), None),
        ("Sa. vormittags", Some("2026-11-28"), None, Some(Vormittag)),
        ("am So um 10", Some("2026-11-29"), Some("10:00"), None),
        ("Mittwochabend", Some("2026-12-02"), None, Some(Abend)),
        ("Samstags morgens", Some("2026-11-28"), None, Some(Frueh)),
        ("Dienstag morgen um 7", Some("2026-12-01"), Some("07:00"), Some(Frueh)),
        ("Di., 1.12. um 18 Uhr", Some("2026-12-01"), Some("18:00"), None),
        // Relative days.
        ("heute", Some("2026-11-26"), None, None),
        ("morgen", Some("2026-11-27"), None, None),
        ("morgen abends", Some("2026-11-27"), None, Some(Abend)),
        ("morgen früh", Some("2026-11-27"), None, Some(Frueh)),
        ("morgen frueh um 7", Some("2026-11-27"), Some("07:00"), Some(Frueh)),
        ("übermorgen", Some("2026-11-28"), None, None),
        ("uebermorgen nachmittags", Some("2026-11-28"), None, Some(Nachmittag)),
        ("ubermorgen", Some("2026-11-28"), None, None),
        ("in zwei Tagen", Some("2026-11-28"), None, None),
        ("in 3 Tagen", Some("2026-11-29"), None, None),
        ("in einer Woche", Some("2026-12-03"), None, None),
        ("in 2 Wochen", Some("2026-12-10"), None, None),
        ("Dienstag in einer Woche", Some("2026-12-08"), None, None),
        ("heute Abend um 8", Some("2026-11-26"), Some("20:00"), Some(Abend)),
        ("heute morgen", Some("2026-11-26"), None, Some(Frueh)),
        ("heute Dienstag", Some("2026-11-26"), None, None),
        // Times.
        ("18 Uhr", None, Some("18:00"), None),
        ("18:30", None, Some("18:30"), None),
        ("18.30 Uhr", None, Some("18:30"), None),
        ("18,30 Uhr", None, Some("18:30"), None),
        ("um 18.30", None, Some("18:30"), None),
        ("ab 18.30", None, Some("18:30"), None),
        ("18.00", None, Some("18:00"), None),
        ("18h", None, Some("18:00"), None),
        ("18h30", None, Some("18:30"), None),
        ("18 Uhr 15", None, Some("18:15"), None),
        ("um 6", None, Some("18:00"), None),
        ("um 6 abends", None, Some("18:00"), Some(Abend)),
        ("um sechs abends", None, Some("18:00"), Some(Abend)),
        ("7 Uhr morgens", None, Some("07:00"), Some(Frueh)),
        ("06:30", None, Some("06:30"), None),
        ("6:30", None, Some("18:30"), None),
        ("um 9", None, Some("09:00"), None),
        ("um 12", None, Some("12:00"), None),
        ("um 1 mittags", None, Some("13:00"), Some(Mittag)),
        ("um 10 vormittags", None, Some("10:00"), Some(Vormittag)),
        ("3 nachmittags", None, Some("15:00"), Some(Nachmittag)),
        ("gegen sieben", None, Some("19:00"), None),
        ("sechs Uhr", None, Some("18:00"), None),
        ("zwanzig Uhr", None, Some("20:00"), None),
        ("ein Uhr", None, Some("13:00"), None),
        ("halb sechs", None, Some("17:30"), None),
        ("halb 7", None, Some("18:30"), None),
        ("halb neun", None, Some("08:30"), None),
        ("halb eins", None, Some("12:30"), None),
        ("halb sieben abends", None, Some("18:30"), Some(Abend)),
        ("viertel nach sechs", None, Some("18:15"), None),
        ("viertel vor sieben", None, Some("18:45"), None),
        ("dreiviertel sieben", None, Some("18:45"), None),
        ("zehn nach sechs", None, Some("18:10"), None),
        ("5 vor 9", None, Some("08:55"), None),
        ("5 vor 8", None, Some("19:55"), None),
        ("fünf vor halb sieben", None, Some("18:25"), None),
        ("zwischen 17 und 19 Uhr", None, Some("17:00"), None),
        ("18-19 Uhr", None, Some("18:00"), None),
        ("ab 18 Uhr", None, Some("18:00"), None),
        ("so gegen 18 Uhr", None, Some("18:00"), None),
        ("um 19:00 Uhr", None, Some("19:00"), None),
        // Parts of day.
        ("abends", None, None, Some(Abend)),
        ("nach Feierabend", None, None, Some(Abend)),
        ("vormittags", None, None, Some(Vormittag)),
        ("am Morgen", None, None, Some(Frueh)),
        ("mittags", None, None, Some(Mittag)),
        // Noise around.
        ("Hallo! Ginge es vielleicht nächsten Dienstag so um 18 Uhr? LG", Some("2026-12-01"), Some("18:00"), None),
        ("Guten Morgen, ich hätte gern morgen um 17 Uhr einen Termin", Some("2026-11-27"), Some("17:00"), None),
        ("Kostet 39,90 € im Monat? Dann gern Freitag", Some("2026-11-27"), None, None),
        ("ruf mich an: 0171 1234567, am besten morgen", Some("2026-11-27"), None, None),
        ("+49 171 1234567 Montag 18:30", Some("2026-11-30"), Some("18:30"), None),
        ("Ich bin 25 Jahre alt und kann morgen", Some("2026-11-27"), None, None),
        ("Schönen Abend noch, Dienstag passt", Some("2026-12-01"), None, None),
        ("so früh wie möglich, gerne Mittwoch", Some("2026-12-02"), None, None),
        ("3x pro Woche, Start am Mo", Some("2026-11-30"), None, None),
        ("31.02. um 18 Uhr", None, Some("18:00"), None),
        ("MORGEN UM HALB SECHS", Some("2026-11-27"), Some("17:30"), None),
    ];

    const NONE_CASES: &[&str] = &[
        "",
        "Hallo, was kostet das Probetraining?",
        "Danke, bis dann!",
        "39,90 €",
        "Meine Nummer ist 0171 1234567",
        "Ich mache das so.",
        "Guten Morgen!",
        "Schönen Abend noch",
        "31.02.",
        "Dienstag 31.02.",
        "32.1.",
        "29.02.",
        "30.2.2028",
        "nächste Woche",
        "diese Woche Dienstag",
        "Ich bin 18",
        "3x die Woche",
        "1.000 €",
        "so früh wie möglich",
    ];

    fn check(now: &Zoned, case: &Case) {
        let (text, date, time, pod) = *case;
        let expected = When {
            date: date.map(|d| d.parse().unwrap()),
            time: time.map(|t| t.parse().unwrap()),
            part_of_day: pod,
        };
        let got = parse(text, now);
        assert_eq!(got, Some(expected), "text: {text:?}");
    }

    #[test]
    fn table() {
        let now = now();
        assert_eq!(now.weekday(), Weekday::Thursday);
        for case in CASES {
            check(&now, case);
        }
        assert!(CASES.len() >= 80, "{} cases", CASES.len());
    }

    #[test]
    fn texts_without_date_or_time() {
        let now = now();
        for text in NONE_CASES {
            assert_eq!(parse(text, &now), None, "text: {text:?}");
        }
    }

    #[test]
    fn year_rollover_in_december() {
        let now = berlin(2026, 12, 28, 9, 0); // Monday
        check(&now, &("5.1.", Some("2027-01-05"), None, None));
        check(&now, &("29.12.", Some("2026-12-29"), None, None));
        check(&now, &("27.12.", Some("2027-12-27"), None, None));
        check(&now, &("in einer Woche", Some("2027-01-04"), None, None));
        check(&now, &("Freitag", Some("2027-01-01"), None, None));
        check(
            &now,
            &("nächste Woche Dienstag", Some("2027-01-05"), None, None),
        );
        check(&now, &("am 2.", Some("2027-01-02"), None, None));
        check(&now, &("am 30.", Some("2026-12-30"), None, None));
    }

    #[test]
    fn leap_years() {
        // 2027 is no leap year: 29.02. without year is none, with 2028 (leap) it is next year.
        let late_2027 = berlin(2027, 12, 10, 12, 0);
        check(&late_2027, &("29.02.", Some("2028-02-29"), None, None));
        let early_2027 = berlin(2027, 1, 10, 12, 0);
        assert_eq!(parse("29.02.", &early_2027), None);
        let early_2028 = berlin(2028, 1, 10, 12, 0);
        check(&early_2028, &("29.2.", Some("2028-02-29"), None, None));
        check(&early_2028, &("29.2.2028", Some("2028-02-29"), None, None));
        assert_eq!(parse("29.2.2027", &early_2028), None);
        // In February of a leap year "am 29." is this month.
        let feb_2028 = berlin(2028, 2, 20, 12, 0);
        check(&feb_2028, &("am 29.", Some("2028-02-29"), None, None));
        // ...but in a common year there is no 29 February to point at.
        let feb_2027 = berlin(2027, 2, 20, 12, 0);
        assert_eq!(parse("am 29.", &feb_2027), None);
    }

    #[test]
    fn weekday_said_on_the_same_weekday() {
        let tuesday = berlin(2026, 12, 1, 8, 0);
        check(&tuesday, &("Dienstag", Some("2026-12-08"), None, None));
        check(
            &tuesday,
            &("nächsten Dienstag", Some("2026-12-08"), None, None),
        );
        check(
            &tuesday,
            &("diesen Dienstag", Some("2026-12-01"), None, None),
        );
        check(&tuesday, &("heute", Some("2026-12-01"), None, None));
        check(
            &tuesday,
            &("übernächsten Dienstag", Some("2026-12-15"), None, None),
        );
        check(
            &tuesday,
            &("diese Woche Dienstag", Some("2026-12-01"), None, None),
        );
        // Sunday belongs to the Monday-based week that started six days earlier.
        let sunday = berlin(2026, 11, 29, 8, 0);
        check(
            &sunday,
            &("nächste Woche Montag", Some("2026-11-30"), None, None),
        );
        check(&sunday, &("Montag", Some("2026-11-30"), None, None));
    }

    #[test]
    fn start_instants() {
        let now = now();
        let at = |text: &str| parse(text, &now).unwrap().start(&now);
        assert_eq!(
            at("nächsten Dienstag um 18 Uhr"),
            Some(berlin(2026, 12, 1, 18, 0))
        );
        assert_eq!(at("morgen abends"), Some(berlin(2026, 11, 27, 18, 0)));
        assert_eq!(at("heute vormittags"), Some(berlin(2026, 11, 26, 10, 0)));
        // Time only: still ahead today, or already past and thus tomorrow.
        assert_eq!(at("18 Uhr"), Some(berlin(2026, 11, 26, 18, 0)));
        assert_eq!(at("9 Uhr"), Some(berlin(2026, 11, 27, 9, 0)));
        assert_eq!(at("10:00"), Some(berlin(2026, 11, 27, 10, 0)));
        assert_eq!(at("abends"), Some(berlin(2026, 11, 26, 18, 0)));
        // A bare date is no instant.
        assert_eq!(at("morgen"), None);
        // Summer time: the offset follows the date, not `now`.
        let summer = parse("1.7. um 18 Uhr", &now).unwrap().start(&now).unwrap();
        assert_eq!(summer.offset(), jiff::tz::offset(2));
        assert_eq!(summer.time_zone().iana_name(), Some(TZ_NAME));
    }

    #[test]
    fn german_description() {
        let now = now();
        let d = |text: &str| parse(text, &now).unwrap().describe_de();
        assert_eq!(d("20.1. um 18 Uhr"), "Mittwoch, 20.01. um 18:00 Uhr");
        assert_eq!(
            d("nächsten Dienstag um 18 Uhr"),
            "Dienstag, 01.12. um 18:00 Uhr"
        );
        assert_eq!(d("morgen abends"), "Freitag, 27.11. abends");
        assert_eq!(d("morgen"), "Freitag, 27.11.");
        assert_eq!(d("halb sechs"), "um 17:30 Uhr");
        assert_eq!(d("vormittags"), "vormittags");
    }

    #[test]
    fn serde_round_trip() {
        let when = parse("morgen abends um 7", &now()).unwrap();
        let json = serde_json::to_string(&when).unwrap();
        assert_eq!(
            json,
            r#"{"date":"2026-11-27","time":"19:00:00","part_of_day":"abend"}"#
        );
        let back: When = serde_json::from_str(&json).unwrap();
        assert_eq!(back, when);
    }

    #[test]
    fn berlin_now_is_in_berlin() {
        assert_eq!(berlin_now().time_zone().iana_name(), Some(TZ_NAME));
    }

    #[test]
    fn part_of_day_defaults_lie_in_their_ranges() {
        for pod in [Frueh, Vormittag, Mittag, Nachmittag, Abend] {
            assert!(pod.hours().contains(&pod.default_time().hour()), "{pod:?}");
        }
    }

    #[test]
    fn choices() {
        let cases: &[(&str, usize, Option<usize>)] = &[
            ("der zweite", 3, Some(1)),
            ("Die erste bitte", 3, Some(0)),
            ("den ersten Termin", 2, Some(0)),
            ("Nummer 3", 3, Some(2)),
            ("Nummer 3", 2, None),
            ("Nr. 2", 3, Some(1)),
            ("2", 3, Some(1)),
            ("2!", 3, Some(1)),
            ("die 2 bitte", 3, Some(1)),
            ("die 2.", 3, Some(1)),
            ("2)", 3, Some(1)),
            ("den letzten", 3, Some(2)),
            ("den letzten", 1, Some(0)),
            ("den vorletzten", 3, Some(1)),
            ("Option 2", 2, Some(1)),
            ("Variante zwei", 2, Some(1)),
            ("zwei", 2, Some(1)),
            ("der dritte passt mir gut", 3, Some(2)),
            ("den mittleren", 3, Some(1)),
            ("lieber den zweiten um 18 Uhr", 3, Some(1)),
            ("Ich nehme den Dritten", 3, Some(2)),
            ("der vierte", 3, None),
            ("0", 3, None),
            ("4", 3, None),
            ("der erste oder der zweite", 3, None),
            ("keiner passt", 3, None),
            ("morgen um 18 Uhr", 3, None),
            ("am 2.12.", 3, None),
            ("das erste Mal bei euch", 3, None),
            ("letzte Woche war ich krank", 3, None),
            ("", 3, None),
            ("der erste", 0, None),
            ("die erste, die erste!", 2, Some(0)),
        ];
        for (text, n, expected) in cases {
            assert_eq!(choice(text, *n), *expected, "text: {text:?}, n: {n}");
        }
    }
}
