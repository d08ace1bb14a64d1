//! Fuzzes the untrusted inputs of the webhook: body parsing and the signature check.
//!
//! Input layout: first byte = length of the signature header candidate, then that many bytes of
//! header, the rest is the body. The whole input is also parsed as a body on its own.

#![no_main]

use frontdesk::whatsapp::{payload, signature};
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"fuzz-app-secret";

fn check_parse(body: &[u8]) {
    if let Ok(events) = payload::parse(body) {
        // Whatever parses must survive the inbox's serde roundtrip unchanged.
        let stored = serde_json::to_vec(&events).expect("events serialise");
        let back: Vec<payload::Event> = serde_json::from_slice(&stored).expect("events deserialise");
        assert_eq!(back, events);
        for event in &events {
            if let payload::Event::Message(m) = event {
                // Exactly one of: answer with the engine, fallback answer, the greeting, or a
                // silent record (reaction, edit, revoke).
                let engine = m.content.as_engine_text().is_some();
                let silent_or_greeted = matches!(
                    m.content,
                    payload::Content::Reaction { .. }
                        | payload::Content::Edit { .. }
                        | payload::Content::Revoke { .. }
                        | payload::Content::Welcome
                );
                assert_eq!(m.content.needs_fallback_answer(), !engine && !silent_or_greeted);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check_parse(data);

    let Some((&len, rest)) = data.split_first() else {
        return;
    };
    let (header, body) = rest.split_at(usize::from(len).min(rest.len()));
    let header = std::str::from_utf8(header).ok();
    let good = signature::sign(SECRET, body);
    if signature::verify(SECRET, body, header).is_ok() {
        // Only the real signature may verify (modulo the tolerated case and padding).
        let normalised = header.map(|h| h.trim_matches([' ', '\t']).to_ascii_lowercase());
        assert_eq!(normalised.as_deref(), Some(good.as_str()));
    }
    assert!(signature::verify(SECRET, body, Some(&good)).is_ok());
    assert!(signature::verify(b"another-secret", body, Some(&good)).is_err());
    check_parse(body);
});
