//! The stored form of an entry ([`AuditRecord`]): its canonical byte encoding and hash, its JSON
//! and CSV renderings, and the chain's [`Hash`] and [`Head`].

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{Actor, Detail, Purpose, ShortPseudonym, Status};

const DOMAIN_TAG: &[u8] = b"frontdesk-audit-v1\0";

/// A SHA-256 hash of an entry (lowercase hex in JSON and text).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The `prev` of the first entry.
    pub const ZERO: Hash = Hash([0; 32]);

    /// Lowercase hex, the only text form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses lowercase hex only, so that every hash has exactly one text form.
    pub fn from_hex(s: &str) -> Option<Hash> {
        if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        Some(Hash(hex::decode(s).ok()?.try_into().ok()?))
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_hex())
    }
}

impl Serialize for Hash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Hash::from_hex(&s)
            .ok_or_else(|| serde::de::Error::custom("expected 64 lowercase hex digits"))
    }
}

/// The end of the chain: the last sequence number and its hash (`0` and zero for an empty log).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Head {
    /// Sequence number of the last entry.
    pub seq: u64,
    /// Hash of the last entry.
    pub hash: Hash,
}

impl Head {
    pub(super) fn to_bytes(self) -> [u8; 40] {
        let mut b = [0u8; 40];
        b[..8].copy_from_slice(&self.seq.to_be_bytes());
        b[8..].copy_from_slice(&self.hash.0);
        b
    }

    pub(super) fn from_bytes(b: &[u8]) -> Option<Head> {
        if b.len() != 40 {
            return None;
        }
        Some(Head {
            seq: u64::from_be_bytes(b[..8].try_into().ok()?),
            hash: Hash(b[8..].try_into().ok()?),
        })
    }
}

/// `SEQ:HASH`, the form `audit verify --expect-head` takes.
impl fmt::Display for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.seq, self.hash)
    }
}

impl FromStr for Head {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Head, String> {
        let (seq, hash) = s
            .trim()
            .split_once(':')
            .ok_or("expected SEQ:HASH (as printed by `frontdesk audit verify`)")?;
        Ok(Head {
            seq: seq.parse().map_err(|_| "SEQ must be a number")?,
            hash: Hash::from_hex(hash).ok_or("HASH must be 64 lowercase hex digits")?,
        })
    }
}

/// An entry as stored (and exported). See the module doc for its canonical encoding.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// Position in the chain: one more than the previous entry's, starting at 1.
    pub seq: u64,
    /// When the entry was written.
    pub time: Timestamp,
    /// Who acted.
    pub actor: Actor,
    /// The stable dotted action name (`customer.forget`, …).
    pub action: String,
    /// The customer it concerns, by short pseudonym.
    pub subject: Option<ShortPseudonym>,
    /// Why it was done.
    pub purpose: Purpose,
    /// Whether it worked.
    pub outcome: Status,
    /// The outcome's reason code, when it was denied or failed.
    pub reason: Option<String>,
    /// The admin call or webhook it belongs to (16 hex digits).
    pub request_id: Option<String>,
    /// Counts, flags and codes of the event, by name.
    pub details: BTreeMap<String, Detail>,
    /// Hash of the previous entry (zero before the first).
    pub prev: Hash,
    /// SHA-256 of this entry's canonical encoding.
    pub hash: Hash,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

impl AuditRecord {
    /// The canonical bytes the hash covers (module doc, "Canonical encoding").
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(DOMAIN_TAG);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.time.as_second().to_be_bytes());
        out.extend_from_slice(&(self.time.subsec_nanosecond() as u32).to_be_bytes());
        match &self.actor {
            Actor::Admin { uid, name } => {
                put_str(&mut out, "admin");
                out.extend_from_slice(&uid.to_be_bytes());
                put_str(&mut out, name);
            }
            Actor::System => put_str(&mut out, "system"),
            Actor::Customer { pseudonym } => {
                put_str(&mut out, "customer");
                put_str(&mut out, pseudonym.as_str());
            }
            Actor::Relay => put_str(&mut out, "relay"),
            Actor::Staff { name } => {
                put_str(&mut out, "staff");
                put_str(&mut out, name);
            }
        }
        put_str(&mut out, &self.action);
        put_opt_str(&mut out, self.subject.as_ref().map(|s| s.as_str()));
        put_str(&mut out, self.purpose.code());
        put_str(&mut out, self.outcome.code());
        put_opt_str(&mut out, self.reason.as_deref());
        put_opt_str(&mut out, self.request_id.as_deref());
        out.extend_from_slice(&(self.details.len() as u32).to_be_bytes());
        // BTreeMap<String, _> iterates in ascending byte order of the names.
        for (name, value) in &self.details {
            put_str(&mut out, name);
            match value {
                Detail::Count(n) => {
                    out.push(b'u');
                    out.extend_from_slice(&n.to_be_bytes());
                }
                Detail::Flag(b) => {
                    out.push(b'b');
                    out.push(u8::from(*b));
                }
                Detail::Code(s) => {
                    out.push(b's');
                    put_str(&mut out, s);
                }
            }
        }
        out.extend_from_slice(&self.prev.0);
        out
    }

    /// SHA-256 over [`AuditRecord::canonical_bytes`].
    pub fn compute_hash(&self) -> Hash {
        Hash(Sha256::digest(self.canonical_bytes()).into())
    }

    /// The stored JSON form.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("audit records serialise")
    }

    pub(super) fn detail_u64(&self, name: &str) -> Option<u64> {
        match self.details.get(name)? {
            Detail::Count(n) => Some(*n),
            _ => None,
        }
    }

    pub(super) fn detail_hash(&self, name: &str) -> Option<Hash> {
        match self.details.get(name)? {
            Detail::Code(s) => Hash::from_hex(s),
            _ => None,
        }
    }

    /// One CSV line (RFC 4180 quoting), matching [`CSV_HEADER`].
    pub fn to_csv_line(&self) -> String {
        fn q(s: &str) -> String {
            if s.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_string()
            }
        }
        let details = serde_json::to_string(&self.details).expect("details serialise");
        [
            self.seq.to_string(),
            self.time.to_string(),
            self.actor.label(),
            self.action.clone(),
            self.subject
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            self.purpose.code().to_string(),
            self.outcome.code().to_string(),
            self.reason.clone().unwrap_or_default(),
            self.request_id.clone().unwrap_or_default(),
            details,
            self.prev.to_hex(),
            self.hash.to_hex(),
        ]
        .iter()
        .map(|s| q(s))
        .collect::<Vec<_>>()
        .join(",")
    }
}

/// Header line of the CSV export.
pub const CSV_HEADER: &str =
    "seq,time,actor,action,subject,purpose,outcome,reason,request_id,details,prev,hash";
