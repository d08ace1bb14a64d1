//! The tunnel's wire pieces shared by both ends: the hello exchange that authenticates a box
//! before HTTP/2 starts, token generation and hashing, PEM loading, and the timing knobs both
//! ends use.
//!
//! The exchange, after the TLS handshake (TLS 1.3, ALPN `frontdesk-tunnel/1`):
//!
//! ```text
//! box   -> relay   FRONTDESK-TUNNEL/1 <token>\n
//! relay -> box     OK\n            (then the relay speaks HTTP/2 as the client, the box as the server)
//! relay -> box     ERR <reason>\n  (then the relay closes the connection)
//! ```
//!
//! The token alone identifies the box: the relay keeps only the SHA-256 of each box's token next
//! to the host name it serves, so the box needs nothing but one credential file.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncReadExt};
use zeroize::Zeroizing;

/// First word of the hello line; a new incompatible exchange gets a new number.
pub const PROTOCOL: &str = "FRONTDESK-TUNNEL/1";
/// ALPN protocol id of the tunnel listener, so that a browser or scanner never gets that far.
pub const ALPN: &[u8] = b"frontdesk-tunnel/1";
/// Longest hello or reply line accepted, newline included.
pub const MAX_LINE: usize = 512;
/// Reason the relay gives for an unknown or wrong token (deliberately the same for both).
pub const ERR_UNAUTHORIZED: &str = "unauthorized";
/// Reason the relay gives for a hello it cannot parse.
pub const ERR_PROTOCOL: &str = "protocol";

/// Timeouts and keepalives of a tunnel connection. Both ends send HTTP/2 PINGs, so a link that
/// silently stops forwarding is noticed within `ping_interval + ping_timeout` on either side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelTimings {
    /// TCP connect (box side).
    pub connect_timeout: Duration,
    /// TLS handshake plus hello exchange (both sides).
    pub handshake_timeout: Duration,
    /// HTTP/2 PING interval, also while idle.
    pub ping_interval: Duration,
    /// A PING not answered within this closes the connection.
    pub ping_timeout: Duration,
    /// Kernel TCP keepalive (a second line of defence for idle sockets).
    pub tcp_keepalive: Duration,
    /// How long a graceful shutdown waits for in-flight requests after GOAWAY.
    pub shutdown_grace: Duration,
}

impl Default for TunnelTimings {
    fn default() -> Self {
        TunnelTimings {
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(10),
            ping_timeout: Duration::from_secs(10),
            tcp_keepalive: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// A box's tunnel token. Debug and Display print `***`; the text is zeroized on drop.
#[derive(Clone)]
pub struct TunnelToken(Zeroizing<String>);

/// Why a token cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Nothing but whitespace.
    #[error("the tunnel token is empty")]
    Empty,
    /// Longer than 256 characters.
    #[error("the tunnel token is longer than 256 characters")]
    TooLong,
    /// Contains a space, a control character or non-ASCII text.
    #[error("the tunnel token may only contain visible ASCII characters without spaces")]
    BadCharacter,
}

impl TunnelToken {
    /// Wraps token text (surrounding whitespace, as in credential files, is trimmed).
    pub fn new(text: &str) -> Result<TunnelToken, TokenError> {
        let t = text.trim();
        if t.is_empty() {
            return Err(TokenError::Empty);
        }
        if t.len() > 256 {
            return Err(TokenError::TooLong);
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::BadCharacter);
        }
        Ok(TunnelToken(Zeroizing::new(t.to_owned())))
    }

    /// A fresh random token: 32 bytes from the OS generator, hex encoded.
    pub fn generate() -> TunnelToken {
        let mut raw = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(raw.as_mut());
        TunnelToken(Zeroizing::new(hex::encode(&raw[..])))
    }

    /// The token text, for writing it into a credential file once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// What the relay's configuration stores: the lowercase hex SHA-256 of the token.
    pub fn sha256_hex(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }
}

impl fmt::Debug for TunnelToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for TunnelToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Compares a presented token with a stored hash without an early exit on the first difference.
pub fn token_matches(presented: &str, stored: &[u8; 32]) -> bool {
    let digest = Sha256::digest(presented.as_bytes());
    bool::from(digest.as_slice().ct_eq(stored))
}

/// Parses a stored `token_sha256` value (64 hex digits, surrounding whitespace ignored).
pub fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out).ok()?;
    Some(out)
}

/// The hello line a box sends, newline included.
pub fn hello_line(token: &TunnelToken) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(format!("{PROTOCOL} {}\n", token.expose()).into_bytes())
}

/// What a hello line says.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello<'a> {
    /// This protocol, with the token the box presents (not yet checked).
    Token(&'a str),
    /// Another protocol or version; the box needs a different relay or an update.
    Unsupported,
    /// Anything else.
    Malformed,
}

/// Parses a hello line without its newline (as [`read_line`] returns it).
pub fn parse_hello(line: &str) -> Hello<'_> {
    let mut words = line.split(' ');
    match (words.next(), words.next(), words.next()) {
        (Some(PROTOCOL), Some(token), None) if !token.is_empty() => Hello::Token(token),
        (Some(p), _, _) if p.starts_with("FRONTDESK-TUNNEL/") && p != PROTOCOL => {
            Hello::Unsupported
        }
        _ => Hello::Malformed,
    }
}

/// The relay's answer to a hello.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// `OK`: HTTP/2 follows.
    Ok,
    /// `ERR <reason>`: the relay closes the connection.
    Err(String),
}

/// Parses the relay's answer line without its newline; `None` for anything else.
pub fn parse_reply(line: &str) -> Option<Reply> {
    if line == "OK" {
        Some(Reply::Ok)
    } else {
        line.strip_prefix("ERR ").map(|r| Reply::Err(r.to_owned()))
    }
}

/// Reads one `\n`-terminated line, byte by byte: HTTP/2 frames follow the line on the same
/// stream, and a buffered reader would swallow them. A line longer than [`MAX_LINE`] bytes
/// (newline included), or one that is not UTF-8, is an `InvalidData` error.
pub async fn read_line<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Zeroizing<String>> {
    let mut buf = Zeroizing::new(Vec::with_capacity(128));
    loop {
        let b = r.read_u8().await?;
        if b == b'\n' {
            break;
        }
        if buf.len() + 1 >= MAX_LINE {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
        }
        buf.push(b);
    }
    let text = std::str::from_utf8(&buf)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "line is not UTF-8"))?;
    Ok(Zeroizing::new(text.to_owned()))
}

/// The crypto provider of every TLS config here, named explicitly so that no process-wide
/// default (and no ambiguity between linked providers) is involved.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why certificates or keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// The file cannot be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file's path.
        file: String,
        /// Why reading failed.
        #[source]
        source: io::Error,
    },
    /// The file is not valid PEM.
    #[error("{file}: not valid PEM: {message}")]
    Parse {
        /// The file's path.
        file: String,
        /// What the PEM parser reported.
        message: String,
    },
    /// The file holds no certificate.
    #[error("{file}: contains no certificate")]
    NoCertificate {
        /// The file's path.
        file: String,
    },
}

fn read_pem_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, PemError> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|source| PemError::Read {
            file: path.display().to_string(),
            source,
        })
}

/// All certificates in a PEM file, in file order (leaf first for a chain).
pub(crate) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let bytes = read_pem_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemError::Parse {
            file: path.display().to_string(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate {
            file: path.display().to_string(),
        });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    let bytes = read_pem_file(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| PemError::Parse {
        file: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Turns on kernel keepalive probes on a connected socket; failure only loses that extra check.
pub(crate) fn set_tcp_keepalive(stream: &tokio::net::TcpStream, idle: Duration) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(idle / 3 + Duration::from_secs(1));
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&ka) {
        tracing::debug!(error = %e, "cannot enable TCP keepalive");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trip() {
        let token = TunnelToken::new("abc123").unwrap();
        let line = hello_line(&token);
        let text = std::str::from_utf8(&line).unwrap();
        assert_eq!(text, "FRONTDESK-TUNNEL/1 abc123\n");
        assert_eq!(parse_hello(text.trim_end()), Hello::Token("abc123"));
        assert_eq!(parse_hello("FRONTDESK-TUNNEL/2 abc"), Hello::Unsupported);
        assert_eq!(parse_hello("GET / HTTP/1.1"), Hello::Malformed);
        assert_eq!(parse_hello("FRONTDESK-TUNNEL/1 a b"), Hello::Malformed);
        assert_eq!(parse_hello("FRONTDESK-TUNNEL/1 "), Hello::Malformed);
    }

    #[test]
    fn replies_parse() {
        assert_eq!(parse_reply("OK"), Some(Reply::Ok));
        assert_eq!(
            parse_reply("ERR unauthorized"),
            Some(Reply::Err("unauthorized".into()))
        );
        assert_eq!(parse_reply("HTTP/1.1 400 Bad Request"), None);
    }

    #[test]
    fn token_hash_matches_only_its_token() {
        let token = TunnelToken::generate();
        assert_eq!(token.expose().len(), 64);
        let stored = parse_hash(&token.sha256_hex()).unwrap();
        assert!(token_matches(token.expose(), &stored));
        assert!(!token_matches("something-else", &stored));
        assert_ne!(TunnelToken::generate().expose(), token.expose());
        assert_eq!(format!("{token:?} {token}"), "*** ***");
    }

    #[test]
    fn token_text_is_checked() {
        assert_eq!(TunnelToken::new("  \n").unwrap_err(), TokenError::Empty);
        assert_eq!(
            TunnelToken::new("a b").unwrap_err(),
            TokenError::BadCharacter
        );
        assert_eq!(
            TunnelToken::new(&"x".repeat(300)).unwrap_err(),
            TokenError::TooLong
        );
        assert_eq!(TunnelToken::new(" tok\n").unwrap().expose(), "tok");
    }

    #[tokio::test]
    async fn read_line_stops_at_newline_and_caps_length() {
        let mut input: &[u8] = b"OK\nrest";
        assert_eq!(read_line(&mut input).await.unwrap().as_str(), "OK");
        assert_eq!(input, b"rest");
        let long = vec![b'a'; MAX_LINE + 10];
        let mut input: &[u8] = &long;
        assert!(read_line(&mut input).await.is_err());
        let mut input: &[u8] = b"no newline";
        assert!(read_line(&mut input).await.is_err());
    }
}
