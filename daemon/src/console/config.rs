//! `[console]`: where the staff console listens, its certificate, and the limits of its
//! sessions and sign-in attempts.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[console]`: the staff console served by the daemon.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Serve the console at all.
    pub enabled: bool,
    /// Address of the console. A loopback address serves plain HTTP; any other address serves
    /// HTTPS only, with the certificate below.
    pub listen: SocketAddr,
    /// PEM certificate (chain) for HTTPS; absent: the daemon generates a self-signed one in
    /// `<state_dir>/console-tls/` on the first start that needs it (`frontdesk doctor` prints
    /// its fingerprint).
    pub tls_certificate: Option<PathBuf>,
    /// PEM private key of `tls_certificate`.
    pub tls_key: Option<PathBuf>,
    /// The address staff type into the browser (shown by `frontdesk doctor` and used in
    /// staff alerts' links), e.g. `https://frontdesk.studio.lan:8470`; empty: derived from
    /// `listen`.
    pub public_url: String,
    /// A session ends after this many minutes without a request.
    pub session_idle_minutes: u32,
    /// A session ends this many hours after sign-in, whatever happens.
    pub session_max_hours: u32,
    /// Wrong passwords in a row before an account (and, after four times as many, an address)
    /// is locked.
    pub lockout_after: u32,
    /// How long a lock lasts.
    pub lockout_minutes: u32,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            enabled: true,
            listen: "127.0.0.1:8470".parse().expect("valid address"),
            tls_certificate: None,
            tls_key: None,
            public_url: String::new(),
            session_idle_minutes: 30,
            session_max_hours: 12,
            lockout_after: 5,
            lockout_minutes: 15,
        }
    }
}

impl ConsoleConfig {
    /// Whether the console serves HTTPS (any address but loopback).
    pub fn https(&self) -> bool {
        !self.listen.ip().is_loopback()
    }

    /// The address staff open: `public_url`, or one made of `listen`.
    pub fn url(&self) -> String {
        if !self.public_url.is_empty() {
            return self.public_url.trim_end_matches('/').to_string();
        }
        let scheme = if self.https() { "https" } else { "http" };
        format!("{scheme}://{}", self.listen)
    }

    /// Checks the values; the error names the key and says what is wrong.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if self.tls_certificate.is_some() != self.tls_key.is_some() {
            return Err((
                "console.tls_certificate",
                "give both tls_certificate and tls_key, or neither",
            ));
        }
        if self.session_idle_minutes == 0 || self.session_idle_minutes > 24 * 60 {
            return Err(("console.session_idle_minutes", "must be between 1 and 1440"));
        }
        if self.session_max_hours == 0 || self.session_max_hours > 7 * 24 {
            return Err(("console.session_max_hours", "must be between 1 and 168"));
        }
        if self.lockout_after == 0 || self.lockout_after > 100 {
            return Err(("console.lockout_after", "must be between 1 and 100"));
        }
        if self.lockout_minutes == 0 {
            return Err(("console.lockout_minutes", "must be at least 1"));
        }
        let url = &self.public_url;
        if !(url.is_empty() || url.starts_with("https://") || url.starts_with("http://")) {
            return Err(("console.public_url", "must start with https:// or http://"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_plain_http_and_anything_else_https() {
        let mut c = ConsoleConfig::default();
        assert!(!c.https());
        assert_eq!(c.url(), "http://127.0.0.1:8470");
        c.listen = "192.168.1.5:8470".parse().unwrap();
        assert!(c.https());
        assert_eq!(c.url(), "https://192.168.1.5:8470");
        c.public_url = "https://desk.studio.lan/".into();
        assert_eq!(c.url(), "https://desk.studio.lan");
    }

    #[test]
    fn a_certificate_without_its_key_is_refused() {
        let c = ConsoleConfig {
            tls_certificate: Some("/etc/frontdesk/console.crt".into()),
            ..ConsoleConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "console.tls_certificate");
        assert!(ConsoleConfig::default().validate().is_ok());
    }
}
