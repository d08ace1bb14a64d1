//! The date-time format of the MagicLine Open API.
//!
//! MagicLine writes instants as an RFC 3339 date-time with millisecond precision, followed by the
//! IANA time zone in brackets (RFC 9557 / Java `ZonedDateTime` style):
//! `2022-06-22T08:00:00.000+02:00[Europe/Berlin]`. A plain RFC 3339 parser rejects the zone suffix,
//! and dropping the zone would lose the studio's wall-clock rules (DST), so this module maps the form
//! to and from [`jiff::Zoned`].
//!
//! Parsing is strict about consistency (an offset that contradicts the named zone is an error) but
//! tolerant about precision (missing or longer fractions are accepted). A value without the bracketed
//! zone is accepted as a fixed-offset instant because some fields are documented as plain ISO-8601.
//! Formatting always produces exactly the MagicLine form with three fractional digits.

use jiff::fmt::temporal::{DateTimeParser, DateTimePrinter};
use jiff::tz::{OffsetConflict, TimeZone};
use jiff::{Timestamp, Zoned};

/// A MagicLine date-time could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("invalid MagicLine date-time: {reason}")]
pub struct ParseError {
    reason: String,
}

static PARSER: DateTimeParser = DateTimeParser::new().offset_conflict(OffsetConflict::Reject);
static PRINTER: DateTimePrinter = DateTimePrinter::new().precision(Some(3));

/// Parses `2022-06-22T08:00:00.000+02:00[Europe/Berlin]`.
pub fn parse(input: &str) -> Result<Zoned, ParseError> {
    let input = input.trim();
    if input.ends_with(']') {
        return PARSER.parse_zoned(input).map_err(|e| ParseError {
            reason: e.to_string(),
        });
    }
    // Fallback for values without the zone annotation: keep the instant and its offset.
    let ts: Timestamp = PARSER.parse_timestamp(input).map_err(|e| ParseError {
        reason: e.to_string(),
    })?;
    let offset = jiff::fmt::temporal::Pieces::parse(input)
        .ok()
        .and_then(|p| p.to_numeric_offset())
        .ok_or_else(|| ParseError {
            reason: "missing UTC offset".to_string(),
        })?;
    // RFC 3339 offsets are hours and minutes; one with seconds would print rounded and name
    // another instant when read back.
    if offset.seconds() % 60 != 0 {
        return Err(ParseError {
            reason: "UTC offset with seconds".to_string(),
        });
    }
    Ok(ts.to_zoned(TimeZone::fixed(offset)))
}

/// Formats as `2022-06-22T08:00:00.000+02:00[Europe/Berlin]`.
pub fn format(value: &Zoned) -> String {
    PRINTER.zoned_to_string(value)
}

/// Serde adapter: `#[serde(with = "crate::magicline::datetime::serde_zoned")]`.
pub mod serde_zoned {
    use jiff::Zoned;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the MagicLine form (see [`super::format`]).
    pub fn serialize<S: Serializer>(value: &Zoned, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format(value))
    }

    /// Reads the MagicLine form, or a plain RFC 3339 date-time (see [`super::parse`]).
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Zoned, D::Error> {
        let raw = String::deserialize(deserializer)?;
        super::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// Serde adapter for optional fields:
/// `#[serde(default, with = "crate::magicline::datetime::serde_zoned_opt")]`.
pub mod serde_zoned_opt {
    use jiff::Zoned;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the MagicLine form, or `null` for `None`.
    pub fn serialize<S: Serializer>(
        value: &Option<Zoned>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => serializer.serialize_str(&super::format(v)),
            None => serializer.serialize_none(),
        }
    }

    /// Reads a date-time like [`super::serde_zoned`]; `null` and an empty string are `None`.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Zoned>, D::Error> {
        match Option::<String>::deserialize(deserializer)? {
            Some(raw) if !raw.trim().is_empty() => super::parse(&raw)
                .map(Some)
                .map_err(serde::de::Error::custom),
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    const SAMPLE: &str = "2022-06-22T08:00:00.000+02:00[Europe/Berlin]";

    #[test]
    fn an_offset_with_seconds_is_refused_not_rounded() {
        // Found by the `magicline_response` fuzz target: printed, the offset lost its seconds.
        assert!(parse("2022-06-22T00-09:00:10,0001022").is_err());
        assert!(parse("2022-06-22T00:00:00-09:00:10").is_err());
        let z = parse("2022-06-22T00:00:00-09:00").unwrap();
        assert_eq!(parse(&format(&z)).unwrap().timestamp(), z.timestamp());
    }

    #[test]
    fn parses_the_documented_example() {
        let z = parse(SAMPLE).unwrap();
        assert_eq!(z.time_zone().iana_name(), Some("Europe/Berlin"));
        assert_eq!(z.datetime(), date(2022, 6, 22).at(8, 0, 0, 0));
        assert_eq!(z.offset().seconds(), 2 * 3600);
        assert_eq!(z.timestamp().as_second(), 1_655_877_600);
    }

    #[test]
    fn formats_exactly_the_documented_form() {
        let z = date(2022, 6, 22)
            .at(8, 0, 0, 0)
            .in_tz("Europe/Berlin")
            .unwrap();
        assert_eq!(format(&z), SAMPLE);
        let winter = date(2024, 12, 2)
            .at(17, 30, 5, 123_456_789)
            .in_tz("Europe/Berlin")
            .unwrap();
        assert_eq!(
            format(&winter),
            "2024-12-02T17:30:05.123+01:00[Europe/Berlin]"
        );
    }

    #[test]
    fn round_trips() {
        for s in [
            SAMPLE,
            "2024-03-31T01:30:00.000+01:00[Europe/Berlin]",
            "2024-03-31T03:30:00.000+02:00[Europe/Berlin]",
            "2024-10-27T02:30:00.000+02:00[Europe/Berlin]",
            "2024-10-27T02:30:00.000+01:00[Europe/Berlin]",
            "2023-01-15T23:59:59.999-05:00[America/New_York]",
            "2023-01-15T12:00:00.000+00:00[UTC]",
        ] {
            let z = parse(s).unwrap();
            assert_eq!(format(&z), s, "round trip of {s}");
        }
    }

    #[test]
    fn ambiguous_fall_back_hour_keeps_the_written_offset() {
        let first = parse("2024-10-27T02:30:00.000+02:00[Europe/Berlin]").unwrap();
        let second = parse("2024-10-27T02:30:00.000+01:00[Europe/Berlin]").unwrap();
        assert_eq!(
            second.timestamp().as_second() - first.timestamp().as_second(),
            3600
        );
    }

    #[test]
    fn rejects_offset_that_contradicts_the_zone() {
        assert!(parse("2022-06-22T08:00:00.000+01:00[Europe/Berlin]").is_err());
    }

    #[test]
    fn rejects_garbage_and_unknown_zones() {
        for s in [
            "",
            "tomorrow",
            "2022-06-22",
            "2022-06-22T08:00:00.000",
            "2022-06-22T08:00:00.000+02:00[Mars/Olympus]",
            "2022-13-22T08:00:00.000+02:00[Europe/Berlin]",
        ] {
            assert!(parse(s).is_err(), "{s:?} must not parse");
        }
    }

    #[test]
    fn accepts_missing_fraction_and_plain_offsets() {
        let z = parse("2022-06-22T08:00:00+02:00[Europe/Berlin]").unwrap();
        assert_eq!(format(&z), SAMPLE);
        let fixed = parse("2022-06-22T08:00:00.000+02:00").unwrap();
        assert_eq!(fixed.timestamp(), z.timestamp());
        assert_eq!(fixed.offset().seconds(), 7200);
        let utc = parse("2022-06-22T06:00:00Z").unwrap();
        assert_eq!(utc.timestamp(), z.timestamp());
    }

    #[test]
    fn serde_adapters() {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct W {
            #[serde(with = "serde_zoned")]
            at: Zoned,
            #[serde(default, with = "serde_zoned_opt")]
            maybe: Option<Zoned>,
        }
        let w: W = serde_json::from_str(&format!(r#"{{"at":"{SAMPLE}"}}"#)).unwrap();
        assert!(w.maybe.is_none());
        let json = serde_json::to_string(&w).unwrap();
        assert_eq!(json, format!(r#"{{"at":"{SAMPLE}","maybe":null}}"#));
        assert!(serde_json::from_str::<W>(r#"{"at":"2022-06-22T08:00:00"}"#).is_err());
    }
}
