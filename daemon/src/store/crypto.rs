//! Sealing of personal data: per-customer data keys, the AEAD envelope every stored value travels in,
//! age wrapping of data keys to the store identity, and the keyed pseudonym that replaces phone
//! numbers in row keys, logs and the audit log.
//!
//! Envelope layout: `version (1) || nonce (24) || XChaCha20-Poly1305 ciphertext+tag`. The associated
//! data is `keyspace || 0x00 || row key`, so a value copied to another row, keyspace or customer
//! fails to open instead of silently decrypting into the wrong place.

use std::fmt;
use std::io::{Read, Write};
use std::str::FromStr;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

const ENVELOPE_VERSION: u8 = 1;
const NONCE_LEN: usize = 24;

/// Failures of sealing, opening or key handling. None of them carries key material or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// Opening failed: wrong key, wrong row, or the bytes were changed.
    #[error("sealed value is damaged or belongs to another row (authentication failed)")]
    OpenFailed,
    /// The envelope's format version is not one this build reads.
    #[error("sealed value has an unknown format version {0}")]
    UnknownVersion(u8),
    /// Shorter than the version byte, nonce and tag.
    #[error("sealed value is truncated")]
    Truncated,
    /// The store identity did not wrap this key.
    #[error("the store identity cannot unwrap this key: wrong identity for this store?")]
    WrongIdentity,
    /// age encryption failed (wrapping a key, a backup, an export).
    #[error("age encryption failed: {0}")]
    Wrap(String),
    /// The text is not an age X25519 identity (`AGE-SECRET-KEY-1…`).
    #[error("invalid age identity: {0}")]
    BadIdentity(String),
    /// The text is not an age X25519 recipient (`age1…`).
    #[error("invalid age recipient: {0}")]
    BadRecipient(String),
}

/// A 256-bit symmetric key (a customer's data key, the queue key or the pseudonym key).
/// Zeroized on drop; Debug never prints it.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DataKey([u8; 32]);

impl DataKey {
    /// Draws a fresh key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut k);
        DataKey(k)
    }

    fn from_slice(bytes: &[u8]) -> Option<Self> {
        let arr: [u8; 32] = bytes.try_into().ok()?;
        Some(DataKey(arr))
    }

    /// Seals `plaintext` for the row `row_key` of `keyspace`.
    pub fn seal(&self, keyspace: &str, row_key: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let cipher = XChaCha20Poly1305::new((&self.0).into());
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = associated_data(keyspace, row_key);
        let ct = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        out.push(ENVELOPE_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Opens a value sealed by [`DataKey::seal`] for the same keyspace and row key.
    pub fn open(
        &self,
        keyspace: &str,
        row_key: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let (&version, rest) = sealed.split_first().ok_or(CryptoError::Truncated)?;
        if version != ENVELOPE_VERSION {
            return Err(CryptoError::UnknownVersion(version));
        }
        if rest.len() < NONCE_LEN + 16 {
            return Err(CryptoError::Truncated);
        }
        let (nonce, ct) = rest.split_at(NONCE_LEN);
        let cipher = XChaCha20Poly1305::new((&self.0).into());
        let aad = associated_data(keyspace, row_key);
        cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::OpenFailed)
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(***)")
    }
}

fn associated_data(keyspace: &str, row_key: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(keyspace.len() + 1 + row_key.len());
    aad.extend_from_slice(keyspace.as_bytes());
    aad.push(0);
    aad.extend_from_slice(row_key);
    aad
}

/// The store's age X25519 identity (from the `store-identity` credential). It unwraps data keys;
/// its public half wraps new ones.
pub struct StoreIdentity {
    identity: age::x25519::Identity,
}

impl StoreIdentity {
    /// Parses an `AGE-SECRET-KEY-1…` line; comment lines (`#`) and blank lines are skipped, as in
    /// files written by `age-keygen`.
    pub fn parse(text: &str) -> Result<Self, CryptoError> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or_else(|| CryptoError::BadIdentity("no identity line found".into()))?;
        let identity = age::x25519::Identity::from_str(line)
            .map_err(|_| CryptoError::BadIdentity("not an AGE-SECRET-KEY-1 identity".into()))?;
        Ok(StoreIdentity { identity })
    }

    /// Generates a new identity (for `frontdesk store new-identity` and tests).
    pub fn generate() -> Self {
        StoreIdentity {
            identity: age::x25519::Identity::generate(),
        }
    }

    /// The secret identity line, for writing into a credential file.
    pub fn to_secret_line(&self) -> Zeroizing<String> {
        use age::secrecy::ExposeSecret;
        Zeroizing::new(self.identity.to_string().expose_secret().to_string())
    }

    /// The public recipient (`age1…`).
    pub fn recipient(&self) -> age::x25519::Recipient {
        self.identity.to_public()
    }

    /// Wraps a data key to this identity's recipient.
    pub fn wrap(&self, key: &DataKey) -> Result<Vec<u8>, CryptoError> {
        wrap_to(&self.recipient(), key)
    }

    /// Unwraps a data key wrapped by [`StoreIdentity::wrap`] (or [`wrap_to`] this recipient).
    pub fn unwrap(&self, wrapped: &[u8]) -> Result<DataKey, CryptoError> {
        let plain = Zeroizing::new(
            age::decrypt(&self.identity, wrapped).map_err(|_| CryptoError::WrongIdentity)?,
        );
        DataKey::from_slice(&plain).ok_or(CryptoError::WrongIdentity)
    }

    pub(crate) fn age_identity(&self) -> &age::x25519::Identity {
        &self.identity
    }
}

impl fmt::Debug for StoreIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreIdentity({})", self.recipient())
    }
}

/// Wraps a data key to an arbitrary recipient (used when rotating the store identity).
pub fn wrap_to(recipient: &age::x25519::Recipient, key: &DataKey) -> Result<Vec<u8>, CryptoError> {
    age::encrypt(recipient, &key.0).map_err(|e| CryptoError::Wrap(e.to_string()))
}

/// Parses an age X25519 recipient (`age1…`).
pub fn parse_recipient(text: &str) -> Result<age::x25519::Recipient, CryptoError> {
    age::x25519::Recipient::from_str(text.trim())
        .map_err(|e| CryptoError::BadRecipient(e.to_string()))
}

/// Streams `reader` into `writer` age-encrypted to `recipient` (exports and backups).
pub fn encrypt_stream(
    recipient: &age::x25519::Recipient,
    writer: impl Write,
) -> Result<age::stream::StreamWriter<impl Write>, CryptoError> {
    let enc = age::Encryptor::with_recipients(std::iter::once(recipient as &dyn age::Recipient))
        .map_err(|e| CryptoError::Wrap(e.to_string()))?;
    enc.wrap_output(writer)
        .map_err(|e| CryptoError::Wrap(e.to_string()))
}

/// Opens an age-encrypted stream with `identity` (restores).
pub fn decrypt_stream<R: Read>(
    identity: &age::x25519::Identity,
    reader: R,
) -> Result<impl Read, CryptoError> {
    let dec = age::Decryptor::new(reader).map_err(|_| CryptoError::WrongIdentity)?;
    dec.decrypt(std::iter::once(identity as &dyn age::Identity))
        .map_err(|_| CryptoError::WrongIdentity)
}

/// Length of the pseudonym used in row keys.
pub const PSEUDONYM_LEN: usize = 16;
/// Length of a keyed hash of an identifier ([`Pseudonymizer::of_token`]), as it appears in keys.
pub const TOKEN_HASH_LEN: usize = 16;

/// A customer's pseudonym: a keyed hash of the normalised phone number. Row keys start with it;
/// its short hex form (`c-` + 12 hex digits) names the customer in logs and the audit log.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pseudonym(pub [u8; PSEUDONYM_LEN]);

impl Pseudonym {
    /// Rebuilds a pseudonym from the first bytes of a row key.
    pub fn from_key_prefix(key: &[u8]) -> Option<Self> {
        key.get(..PSEUDONYM_LEN)
            .map(|p| Pseudonym(p.try_into().expect("length checked")))
    }

    /// The short form shown to people: `c-` and the first 6 bytes in hex.
    pub fn short(&self) -> String {
        format!("c-{}", hex::encode(&self.0[..6]))
    }

    /// The full hex form (used in the forget ledger and exports).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses the full hex form.
    pub fn from_hex(s: &str) -> Option<Self> {
        let bytes = hex::decode(s).ok()?;
        Pseudonym::from_key_prefix(&bytes).filter(|_| bytes.len() == PSEUDONYM_LEN)
    }
}

impl fmt::Display for Pseudonym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.short())
    }
}

impl fmt::Debug for Pseudonym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pseudonym({})", self.short())
    }
}

/// Derives pseudonyms from phone numbers with a store-wide secret key (HMAC-SHA256), so that the
/// same number always maps to the same rows but the mapping cannot be reversed without the key.
pub struct Pseudonymizer {
    key: DataKey,
}

impl Pseudonymizer {
    /// A pseudonymizer with the store's pseudonym key.
    pub fn new(key: DataKey) -> Self {
        Pseudonymizer { key }
    }

    /// The pseudonym of a contact address: a WhatsApp user id exactly as written (its own
    /// domain), otherwise a phone number in any common notation (`+49 151 …`, `0049151…`,
    /// `49151…`).
    pub fn of_address(&self, address: &str) -> Pseudonym {
        if super::address::is_valid_address(address) == Some(super::address::AddressKind::UserId) {
            return self.of_domain(b"frontdesk/bsuid/v1\0", address.as_bytes());
        }
        self.of_domain(b"frontdesk/phone/v1\0", normalise_phone(address).as_bytes())
    }

    fn of_domain(&self, domain: &[u8], value: &[u8]) -> Pseudonym {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key.0)
            .expect("HMAC accepts keys of any length");
        mac.update(domain);
        mac.update(value);
        let out = mac.finalize().into_bytes();
        Pseudonym(out[..PSEUDONYM_LEN].try_into().expect("digest is 32 bytes"))
    }

    /// A keyed hash of an arbitrary identifier (WhatsApp message ids in the seen keyspace).
    pub fn of_token(&self, domain: &str, token: &str) -> [u8; TOKEN_HASH_LEN] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key.0)
            .expect("HMAC accepts keys of any length");
        mac.update(domain.as_bytes());
        mac.update(b"\0");
        mac.update(token.as_bytes());
        mac.finalize().into_bytes()[..TOKEN_HASH_LEN]
            .try_into()
            .expect("digest is 32 bytes")
    }
}

/// Digits only, international form without `+` or `00` (WhatsApp's `wa_id` form).
pub fn normalise_phone(phone: &str) -> String {
    let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
    digits
        .strip_prefix("00")
        .map(str::to_string)
        .unwrap_or(digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trip_and_binding() {
        let k = DataKey::generate();
        let sealed = k.seal("customers", b"row-1", b"Anna Schmidt");
        assert_eq!(
            &*k.open("customers", b"row-1", &sealed).unwrap(),
            b"Anna Schmidt"
        );
        assert!(matches!(
            k.open("customers", b"row-2", &sealed),
            Err(CryptoError::OpenFailed)
        ));
        assert!(matches!(
            k.open("messages", b"row-1", &sealed),
            Err(CryptoError::OpenFailed)
        ));
        let other = DataKey::generate();
        assert!(other.open("customers", b"row-1", &sealed).is_err());
        assert!(matches!(
            k.open("customers", b"row-1", &sealed[..10]),
            Err(CryptoError::Truncated)
        ));
    }

    #[test]
    fn wrap_and_wrong_identity() {
        let id = StoreIdentity::generate();
        let k = DataKey::generate();
        let wrapped = id.wrap(&k).unwrap();
        assert_eq!(id.unwrap(&wrapped).unwrap().0, k.0);
        let other = StoreIdentity::generate();
        assert!(matches!(
            other.unwrap(&wrapped),
            Err(CryptoError::WrongIdentity)
        ));
    }

    #[test]
    fn identity_parse_skips_comments() {
        let id = StoreIdentity::generate();
        let text = format!(
            "# created: now\n# public key: {}\n{}\n",
            id.recipient(),
            *id.to_secret_line()
        );
        let parsed = StoreIdentity::parse(&text).unwrap();
        assert_eq!(parsed.recipient().to_string(), id.recipient().to_string());
        assert!(StoreIdentity::parse("# nothing\n").is_err());
        assert!(format!("{id:?}").starts_with("StoreIdentity(age1"));
    }

    #[test]
    fn pseudonyms_are_stable_across_notations() {
        let p = Pseudonymizer::new(DataKey::generate());
        let a = p.of_address("+49 151 2345678");
        assert_eq!(a, p.of_address("0049 151 2345678"));
        assert_eq!(a, p.of_address("491512345678"));
        assert_ne!(a, p.of_address("491512345679"));
        assert!(a.short().starts_with("c-") && a.short().len() == 14);
        assert_eq!(Pseudonym::from_hex(&a.to_hex()), Some(a));
        let q = Pseudonymizer::new(DataKey::generate());
        assert_ne!(a, q.of_address("+49 151 2345678"));
    }

    #[test]
    fn user_ids_are_never_folded_into_digits() {
        let p = Pseudonymizer::new(DataKey::generate());
        let ids = [
            p.of_address("491701234567"),
            p.of_address("DE.491701234567"),
            p.of_address("US.491701234567"),
            p.of_address("DE.ENT.491701234567"),
            p.of_address("DE.AB12"),
            p.of_address("DE.XY12"),
            p.of_address("DE.ab12"),
        ];
        for (i, a) in ids.iter().enumerate() {
            for b in &ids[i + 1..] {
                assert_ne!(a, b, "two identities share a pseudonym");
            }
        }
        // The same user id is always the same person.
        assert_eq!(ids[1], p.of_address("DE.491701234567"));
    }
}
