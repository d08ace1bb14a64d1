//! The two forms of a contact's address — a phone number or a WhatsApp business-scoped user id
//! (BSUID) — and which strings are neither. Pseudonyms are derived from the typed form, so a
//! BSUID and a phone number made of the same digits are different people.
//!
//! The webhook's signature proves that Meta sent a payload, not that every field in it is sane;
//! an address that is neither form (`../../etc/passwd`, an empty string, a URL) is never stored
//! as a customer and never becomes the recipient of a send.

/// Fewest digits of a phone number WhatsApp can deliver to (short national numbers included).
const MIN_PHONE_DIGITS: usize = 7;
/// E.164 allows at most 15 digits.
const MAX_PHONE_DIGITS: usize = 15;
/// Longest id part of a business-scoped user id (`DE.` followed by up to 128 alphanumerics).
const MAX_USER_ID_CHARS: usize = 128;

/// The form of a valid sender address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressKind {
    /// `wa_id`: digits, optionally written with `+`, spaces or hyphens (as an admin types it).
    Phone,
    /// A business-scoped user id: `CC.id` or, for a parent id, `CC.ENT.id`.
    UserId,
}

/// The form of `address`, or `None` when it is neither a phone number nor a user id.
pub fn is_valid_address(address: &str) -> Option<AddressKind> {
    if is_phone(address) {
        Some(AddressKind::Phone)
    } else if is_user_id(address) {
        Some(AddressKind::UserId)
    } else {
        None
    }
}

fn is_phone(s: &str) -> bool {
    let body = s.strip_prefix('+').unwrap_or(s);
    let mut digits = 0;
    for c in body.chars() {
        match c {
            '0'..='9' => digits += 1,
            ' ' | '-' => {}
            _ => return false,
        }
    }
    body.starts_with(|c: char| c.is_ascii_digit())
        && (MIN_PHONE_DIGITS..=MAX_PHONE_DIGITS).contains(&digits)
}

fn is_user_id(s: &str) -> bool {
    let mut parts = s.split('.');
    let (Some(country), Some(second)) = (parts.next(), parts.next()) else {
        return false;
    };
    let id = match (second, parts.next()) {
        ("ENT", Some(id)) => id,
        (id, None) => id,
        _ => return false,
    };
    parts.next().is_none()
        && country.len() == 2
        && country.bytes().all(|b| b.is_ascii_uppercase())
        && !id.is_empty()
        && id.len() <= MAX_USER_ID_CHARS
        && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_numbers_and_user_ids_pass() {
        for (a, kind) in [
            ("491701234567", AddressKind::Phone),
            ("+49 151 12345678", AddressKind::Phone),
            ("+49-151-12345678", AddressKind::Phone),
            ("DE.1349120865530274", AddressKind::UserId),
            ("US.13491208655302741918", AddressKind::UserId),
            ("DE.ENT.99887766", AddressKind::UserId),
            ("DE.AbC123", AddressKind::UserId),
        ] {
            assert_eq!(is_valid_address(a), Some(kind), "{a}");
        }
        let longest = format!("DE.{}", "a".repeat(MAX_USER_ID_CHARS));
        assert_eq!(is_valid_address(&longest), Some(AddressKind::UserId));
    }

    #[test]
    fn everything_else_is_refused() {
        let too_long = format!("DE.{}", "a".repeat(MAX_USER_ID_CHARS + 1));
        for a in [
            "",
            "../../etc/passwd",
            "4917012345678901234",
            "123456",
            "+",
            "49 170 abc",
            "https://example.com/491701234567",
            "de.123",
            "DEU.123",
            "DE.",
            "DE.ENT.",
            "DE.X.123",
            "DE.12.34",
            "DE.12/34",
            "DE.12 34",
            "- 491701234567",
            too_long.as_str(),
        ] {
            assert_eq!(is_valid_address(a), None, "{a:?}");
        }
    }
}
