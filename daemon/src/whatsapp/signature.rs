//! Webhook authenticity: the `X-Hub-Signature-256` HMAC check Meta puts on every webhook POST, and
//! the constant-time comparison of the verify token used by the GET subscription handshake.
//!
//! The header value is `sha256=` followed by the hex HMAC-SHA256 of the exact raw request body,
//! keyed with the app secret. The check runs over the bytes as received (never over re-serialised
//! JSON) and compares in constant time.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use thiserror::Error;

type HmacSha256 = Hmac<Sha256>;

/// Name of the header Meta signs webhook bodies with.
pub const HEADER: &str = "X-Hub-Signature-256";

const PREFIX: &str = "sha256=";
/// Hex length of a SHA-256 digest.
const HEX_LEN: usize = 64;

/// Why a webhook signature was rejected. Carries no request data, so it is safe to log and audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SignatureError {
    /// No `X-Hub-Signature-256` header.
    #[error("signature header missing")]
    Missing,
    /// Header present but not `sha256=<64 hex digits>`.
    #[error("signature header malformed")]
    Malformed,
    /// Well-formed header whose digest does not match the body (or no app secret is configured).
    #[error("signature mismatch")]
    Mismatch,
}

impl SignatureError {
    /// Short, stable identifier for audit records and metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            SignatureError::Missing => "signature_missing",
            SignatureError::Malformed => "signature_malformed",
            SignatureError::Mismatch => "signature_mismatch",
        }
    }
}

/// Checks `header` (the raw `X-Hub-Signature-256` value, if any) against `raw_body`.
///
/// An empty `app_secret` never verifies: HMAC accepts an empty key, and a signature computed with
/// it would be forgeable by anyone, so a missing secret must fail closed.
pub fn verify(
    app_secret: &[u8],
    raw_body: &[u8],
    header: Option<&str>,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let digest = parse_header(header)?;
    if app_secret.is_empty() {
        return Err(SignatureError::Mismatch);
    }
    let mut mac = new_mac(app_secret);
    mac.update(raw_body);
    // verify_slice compares in constant time.
    mac.verify_slice(&digest)
        .map_err(|_| SignatureError::Mismatch)
}

/// Computes the header value (`sha256=<lowercase hex>`) Meta would send for `body`.
pub fn sign(app_secret: &[u8], body: &[u8]) -> String {
    let mut mac = new_mac(app_secret);
    mac.update(body);
    format!("{PREFIX}{}", hex::encode(mac.finalize().into_bytes()))
}

/// Constant-time comparison of the configured verify token with the one in a subscription request.
/// An empty expected token never matches, so an unconfigured token cannot be "guessed" as empty.
pub fn verify_token_matches(expected: &[u8], given: &[u8]) -> bool {
    // Length is not secret (the comparison of unequal lengths returns early inside `ct_eq`), the
    // content is.
    !expected.is_empty() && bool::from(expected.ct_eq(given))
}

fn new_mac(key: &[u8]) -> HmacSha256 {
    // HMAC is defined for keys of any length; this cannot fail.
    <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length")
}

/// Whether `header` has the form of a signature header (`sha256=` and 64 hex digits), judged
/// without the secret: the relay lets only such POSTs through.
pub fn is_well_formed(header: &str) -> bool {
    parse_header(header).is_ok()
}

fn parse_header(header: &str) -> Result<[u8; 32], SignatureError> {
    let value = header.trim_matches(|c: char| c == ' ' || c == '\t');
    let (scheme, hex_digest) = value
        .split_at_checked(PREFIX.len())
        .ok_or(SignatureError::Malformed)?;
    // Meta sends lowercase; tolerate `SHA256=` from proxies that normalise case.
    if !scheme.eq_ignore_ascii_case(PREFIX) || hex_digest.len() != HEX_LEN {
        return Err(SignatureError::Malformed);
    }
    let mut digest = [0u8; 32];
    hex::decode_to_slice(hex_digest, &mut digest).map_err(|_| SignatureError::Malformed)?;
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn known_vector_from_rfc4231() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let expected = "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        assert_eq!(sign(b"Jefe", b"what do ya want for nothing?"), expected);
        assert_eq!(
            verify(b"Jefe", b"what do ya want for nothing?", Some(expected)),
            Ok(())
        );
    }

    #[test]
    fn sign_then_verify_roundtrip() {
        let body = br#"{"object":"whatsapp_business_account","entry":[]}"#;
        let header = sign(SECRET, body);
        assert!(header.starts_with("sha256="));
        assert_eq!(header.len(), 7 + 64);
        assert!(header[7..]
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)));
        assert_eq!(verify(SECRET, body, Some(&header)), Ok(()));
    }

    #[test]
    fn missing_header() {
        let err = verify(SECRET, b"{}", None).unwrap_err();
        assert_eq!(err, SignatureError::Missing);
        assert_eq!(err.reason(), "signature_missing");
    }

    #[test]
    fn malformed_headers() {
        let good = sign(SECRET, b"{}");
        let cases = [
            String::new(),
            "sha256=".to_string(),
            "sha1=".to_string() + &good[7..],
            good[7..].to_string(),
            good[..good.len() - 1].to_string(),
            format!("{good}0"),
            good.replace('a', "g").replace('b', "z"),
            "sha256=".to_string() + &"é".repeat(32),
        ];
        for case in cases {
            let err = verify(SECRET, b"{}", Some(&case)).unwrap_err();
            assert_eq!(err, SignatureError::Malformed, "case {case:?}");
            assert_eq!(err.reason(), "signature_malformed");
        }
    }

    #[test]
    fn uppercase_hex_and_scheme_are_accepted() {
        let good = sign(SECRET, b"{}");
        let upper = format!("SHA256={}", good[7..].to_ascii_uppercase());
        assert_eq!(verify(SECRET, b"{}", Some(&upper)), Ok(()));
        assert_eq!(verify(SECRET, b"{}", Some(&format!(" {good} "))), Ok(()));
    }

    #[test]
    fn mismatch_on_changed_body_or_secret() {
        let body = br#"{"a":1}"#;
        let header = sign(SECRET, body);
        // Same JSON meaning, different bytes: must not verify.
        assert_eq!(
            verify(SECRET, br#"{"a": 1}"#, Some(&header)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"other secret", body, Some(&header)),
            Err(SignatureError::Mismatch)
        );
        let mut flipped = header.into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        let err = verify(SECRET, body, Some(&flipped)).unwrap_err();
        assert_eq!(err, SignatureError::Mismatch);
        assert_eq!(err.reason(), "signature_mismatch");
    }

    #[test]
    fn empty_secret_fails_closed() {
        let header = sign(b"", b"{}");
        assert_eq!(
            verify(b"", b"{}", Some(&header)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn verify_token_comparison() {
        assert!(verify_token_matches(b"s3cret-token", b"s3cret-token"));
        assert!(!verify_token_matches(b"s3cret-token", b"s3cret-tokem"));
        assert!(!verify_token_matches(b"s3cret-token", b"s3cret-toke"));
        assert!(!verify_token_matches(b"s3cret-token", b""));
        assert!(!verify_token_matches(b"", b""));
    }
}
