//! Who is signed in to the console: sessions, sign-in throttling and CSRF tokens. All in
//! memory: a restart of the daemon signs everyone out and forgets the counters of wrong
//! passwords.
//!
//! - A session is a random 256-bit token in an HttpOnly, SameSite=Strict cookie (Secure over
//!   HTTPS); the server keeps only its SHA-256, so a memory dump holds no usable cookie. It
//!   ends after the idle timeout or the absolute timeout, whichever comes first, at sign-out,
//!   or when its account is removed.
//! - Every session has its own CSRF token; every state-changing request carries it in the form
//!   and is refused without it (compared in constant time). The sign-in form has a token of
//!   its own, bound to a short-lived cookie (double submit).
//! - Wrong passwords are counted per account and per client address; `lockout_after` in a row
//!   locks the account for `lockout_minutes`, four times as many lock the address (a front-desk
//!   PC shared by several people may mistype more often than one person).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use base64::Engine as _;
use jiff::{SignedDuration, Timestamp};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::accounts::Role;
use crate::audit::StaffName;

/// A fresh random token, URL-safe base64 of 32 bytes.
pub fn random_token() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// Whether `given` is `expected`, in constant time (CSRF tokens).
pub fn tokens_match(given: &str, expected: &str) -> bool {
    !expected.is_empty() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// One signed-in staff member.
#[derive(Clone, Debug)]
pub struct Session {
    /// The account.
    pub name: StaffName,
    /// Its role at sign-in (checked again against the store on every request).
    pub role: Role,
    /// The CSRF token of this session.
    pub csrf: String,
    created: Timestamp,
    last_seen: Timestamp,
}

impl Session {
    /// When the member signed in.
    pub fn created(&self) -> Timestamp {
        self.created
    }
}

/// The open sessions.
pub struct Sessions {
    by_digest: Mutex<HashMap<[u8; 32], Session>>,
    idle: SignedDuration,
    absolute: SignedDuration,
}

impl Sessions {
    /// Sessions that end after `idle` without a request or `absolute` after sign-in.
    pub fn new(idle: SignedDuration, absolute: SignedDuration) -> Sessions {
        Sessions {
            by_digest: Mutex::new(HashMap::new()),
            idle,
            absolute,
        }
    }

    /// Opens a session for `name`; returns the cookie token (only the caller ever sees it).
    pub fn open(&self, name: &StaffName, role: Role, now: Timestamp) -> String {
        let token = random_token();
        let session = Session {
            name: name.clone(),
            role,
            csrf: random_token(),
            created: now,
            last_seen: now,
        };
        let mut map = self.by_digest.lock().expect("sessions poisoned");
        // Expired sessions are dropped whenever someone signs in, so the map stays small.
        let (idle, absolute) = (self.idle, self.absolute);
        map.retain(|_, s| alive(s, now, idle, absolute));
        map.insert(digest(&token), session);
        token
    }

    /// The session of cookie `token`, when it is alive; the request counts as activity.
    pub fn get(&self, token: &str, now: Timestamp) -> Option<Session> {
        let mut map = self.by_digest.lock().expect("sessions poisoned");
        let key = digest(token);
        let session = map.get_mut(&key)?;
        if !alive(session, now, self.idle, self.absolute) {
            map.remove(&key);
            return None;
        }
        session.last_seen = now;
        Some(session.clone())
    }

    /// Ends the session of cookie `token` (sign-out).
    pub fn close(&self, token: &str) {
        self.by_digest
            .lock()
            .expect("sessions poisoned")
            .remove(&digest(token));
    }

    /// Ends every session of account `name` (removed, or its role changed).
    pub fn close_account(&self, name: &StaffName) {
        self.by_digest
            .lock()
            .expect("sessions poisoned")
            .retain(|_, s| &s.name != name);
    }
}

fn alive(s: &Session, now: Timestamp, idle: SignedDuration, absolute: SignedDuration) -> bool {
    now.duration_since(s.last_seen) < idle && now.duration_since(s.created) < absolute
}

/// Counts of wrong passwords in a row, per account and per client address.
pub struct Throttle {
    failures: Mutex<HashMap<ThrottleKey, Failures>>,
    after: u32,
    lock_for: SignedDuration,
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum ThrottleKey {
    Account(String),
    Address(IpAddr),
}

#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    locked_until: Option<Timestamp>,
}

/// Addresses may fail this many times as often as one account.
const ADDRESS_FACTOR: u32 = 4;

impl Throttle {
    /// Locks an account after `after` wrong passwords in a row (an address after four times
    /// as many), for `lock_for`.
    pub fn new(after: u32, lock_for: SignedDuration) -> Throttle {
        Throttle {
            failures: Mutex::new(HashMap::new()),
            after,
            lock_for,
        }
    }

    /// Whether account `name` or `address` is locked now (then the password is not even
    /// checked).
    pub fn locked(&self, name: &str, address: IpAddr, now: Timestamp) -> bool {
        let map = self.failures.lock().expect("throttle poisoned");
        [
            ThrottleKey::Account(name.to_string()),
            ThrottleKey::Address(address),
        ]
        .iter()
        .any(|k| {
            map.get(k)
                .and_then(|f| f.locked_until)
                .is_some_and(|until| now < until)
        })
    }

    /// Counts a wrong password; returns whether this one locked the account or the address.
    pub fn failed(&self, name: &str, address: IpAddr, now: Timestamp) -> bool {
        let mut map = self.failures.lock().expect("throttle poisoned");
        let mut locked = false;
        for (key, limit) in [
            (ThrottleKey::Account(name.to_string()), self.after),
            (
                ThrottleKey::Address(address),
                self.after.saturating_mul(ADDRESS_FACTOR),
            ),
        ] {
            let f = map.entry(key).or_insert(Failures {
                count: 0,
                locked_until: None,
            });
            if f.locked_until.is_some_and(|until| now >= until) {
                // A lock that ran out starts the count afresh.
                *f = Failures {
                    count: 0,
                    locked_until: None,
                };
            }
            f.count += 1;
            if f.count >= limit && f.locked_until.is_none() {
                f.locked_until = Some(now + self.lock_for);
                locked = true;
            }
        }
        locked
    }

    /// A correct password: the account's count starts afresh (the address keeps its count, so
    /// one known password does not reset guessing at others).
    pub fn succeeded(&self, name: &str) {
        self.failures
            .lock()
            .expect("throttle poisoned")
            .remove(&ThrottleKey::Account(name.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn anna() -> StaffName {
        StaffName::parse("anna").unwrap()
    }

    #[test]
    fn a_session_ends_when_idle_or_too_old() {
        let sessions = Sessions::new(SignedDuration::from_mins(30), SignedDuration::from_hours(2));
        let token = sessions.open(&anna(), Role::Staff, t(0));
        // Activity keeps it alive past the idle timeout ...
        for minute in [20, 40, 60, 80, 100] {
            assert!(sessions.get(&token, t(minute * 60)).is_some(), "{minute}");
        }
        // ... but not past the absolute one.
        assert!(sessions.get(&token, t(2 * 3600)).is_none());

        let idle = sessions.open(&anna(), Role::Staff, t(0));
        assert!(sessions.get(&idle, t(31 * 60)).is_none());
        assert!(sessions.get("not a token", t(0)).is_none());
    }

    #[test]
    fn sign_out_and_account_removal_end_sessions() {
        let sessions = Sessions::new(SignedDuration::from_mins(30), SignedDuration::from_hours(2));
        let a = sessions.open(&anna(), Role::Owner, t(0));
        let b = sessions.open(&anna(), Role::Owner, t(0));
        let ben = sessions.open(&StaffName::parse("ben").unwrap(), Role::Staff, t(0));
        let session = sessions.get(&a, t(1)).unwrap();
        assert_eq!(session.name, anna());
        assert_ne!(session.csrf, sessions.get(&b, t(1)).unwrap().csrf);
        sessions.close(&a);
        assert!(sessions.get(&a, t(2)).is_none());
        assert!(sessions.get(&b, t(2)).is_some());
        sessions.close_account(&anna());
        assert!(sessions.get(&b, t(3)).is_none());
        assert!(sessions.get(&ben, t(3)).is_some());
    }

    #[test]
    fn wrong_passwords_lock_the_account_then_the_lock_runs_out() {
        let throttle = Throttle::new(3, SignedDuration::from_mins(15));
        let ip: IpAddr = "192.168.1.20".parse().unwrap();
        assert!(!throttle.failed("anna", ip, t(0)));
        assert!(!throttle.failed("anna", ip, t(1)));
        assert!(!throttle.locked("anna", ip, t(2)));
        assert!(throttle.failed("anna", ip, t(2)));
        assert!(throttle.locked("anna", ip, t(3)));
        // Another account from the same address is not locked yet.
        assert!(!throttle.locked("ben", ip, t(3)));
        assert!(!throttle.locked("anna", ip, t(2 + 15 * 60)));
        // After the lock, one more wrong password does not lock again at once.
        assert!(!throttle.failed("anna", ip, t(2 + 15 * 60)));
    }

    #[test]
    fn many_accounts_from_one_address_lock_the_address() {
        let throttle = Throttle::new(2, SignedDuration::from_mins(15));
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        for i in 0..8 {
            // Each name fails once: no account reaches its limit.
            throttle.failed(&format!("user{i}"), ip, t(i));
        }
        assert!(throttle.locked("someone", ip, t(9)));
        let other: IpAddr = "10.0.0.8".parse().unwrap();
        assert!(!throttle.locked("someone", other, t(9)));
    }

    #[test]
    fn a_correct_password_resets_the_account_count() {
        let throttle = Throttle::new(2, SignedDuration::from_mins(15));
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        throttle.failed("anna", ip, t(0));
        throttle.succeeded("anna");
        assert!(!throttle.failed("anna", ip, t(1)));
    }

    #[test]
    fn csrf_tokens_compare_exactly() {
        let token = random_token();
        assert_eq!(token.len(), 43);
        assert!(tokens_match(&token, &token));
        assert!(!tokens_match("", &token));
        assert!(!tokens_match(&token[1..], &token));
        assert!(!tokens_match("", ""));
        assert_ne!(random_token(), token);
    }
}
