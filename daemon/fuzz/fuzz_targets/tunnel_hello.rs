//! Fuzzes the tunnel's line framing and hello exchange (`tunnel::proto`): what a relay reads
//! from a connecting box, and what a box reads back, before HTTP/2 starts on the same stream.
//!
//! The input is the byte stream. It is read as the relay reads it (`read_line`, `parse_hello`)
//! and as the box reads it (`read_line`, `parse_reply`); the first line is also tried as a token.
//!
//! Properties: nothing panics; `read_line` returns exactly the bytes before the first newline,
//! refuses lines over `MAX_LINE`, and consumes nothing past the newline (the HTTP/2 preface
//! that follows must stay unread); a hello names a token exactly when the line is the protocol
//! word, one space and a token without spaces; every token `TunnelToken::new` accepts fits a
//! hello line, reads back as itself and matches only its own stored hash; a stored hash parses
//! back to the hex it was written as.

#![no_main]

use frontdesk::tunnel::proto::{self, Hello, Reply, MAX_LINE, PROTOCOL};
use frontdesk::tunnel::TunnelToken;
use libfuzzer_sys::fuzz_target;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

/// Reads one line from `input` as the tunnel does; returns the line and what was left unread.
fn read_line(input: &[u8]) -> (Option<String>, &[u8]) {
    let mut rest = input;
    let line = runtime().block_on(proto::read_line(&mut rest));
    (line.ok().map(|l| l.to_string()), rest)
}

fn check_framing(data: &[u8]) -> Option<String> {
    let (line, rest) = read_line(data);
    let newline = data.iter().position(|&b| b == b'\n');
    match (&line, newline) {
        (Some(line), Some(at)) => {
            assert_eq!(line.as_bytes(), &data[..at]);
            assert!(at < MAX_LINE);
            // Not one byte past the newline: HTTP/2 follows on the same stream.
            assert_eq!(rest, &data[at + 1..]);
        }
        (Some(_), None) => panic!("a line without its newline was accepted"),
        (None, Some(at)) => {
            assert!(at >= MAX_LINE || std::str::from_utf8(&data[..at]).is_err());
        }
        (None, None) => {}
    }
    line
}

fn check_hello(line: &str) {
    match proto::parse_hello(line) {
        Hello::Token(token) => {
            assert_eq!(line, format!("{PROTOCOL} {token}"));
            assert!(!token.is_empty() && !token.contains(' '));
        }
        Hello::Unsupported => {
            let word = line.split(' ').next().unwrap_or_default();
            assert!(word.starts_with("FRONTDESK-TUNNEL/") && word != PROTOCOL);
        }
        Hello::Malformed => {}
    }
    match proto::parse_reply(line) {
        Some(Reply::Ok) => assert_eq!(line, "OK"),
        Some(Reply::Err(reason)) => assert_eq!(line, format!("ERR {reason}")),
        None => assert!(line != "OK" && !line.starts_with("ERR ")),
    }
}

fn check_token(text: &str) {
    let Ok(token) = TunnelToken::new(text) else {
        return;
    };
    let hello = proto::hello_line(&token);
    assert!(hello.len() <= MAX_LINE, "a valid token's hello is too long");
    let (line, rest) = read_line(&hello);
    let line = line.expect("a box's own hello reads back");
    assert!(rest.is_empty());
    assert_eq!(proto::parse_hello(&line), Hello::Token(token.expose()));
    let stored = token.sha256_hex();
    let hash = proto::parse_hash(&stored).expect("a stored hash parses");
    assert_eq!(hex_lower(&hash), stored);
    assert!(proto::token_matches(token.expose(), &hash));
    let mut other = token.expose().to_owned();
    other.push('x');
    assert!(!proto::token_matches(&other, &hash));
    assert_eq!(format!("{token:?}"), "***");
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fuzz_target!(|data: &[u8]| {
    if let Some(line) = check_framing(data) {
        check_hello(&line);
        check_token(&line);
        if let Some(hash) = proto::parse_hash(&line) {
            assert_eq!(hex_lower(&hash), line.trim().to_ascii_lowercase());
        }
    } else if let Ok(text) = std::str::from_utf8(data) {
        check_token(text);
    }
});
