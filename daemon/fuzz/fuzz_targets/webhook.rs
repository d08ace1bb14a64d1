//! Fuzzes what the webhook does with the raw bytes of a POST before anything is stored: the
//! `X-Hub-Signature-256` check over the exact body, the parse into events, and the inbox
//! entries' encoding (`serde_json`, as `whatsapp::queue` seals them).
//!
//! Input layout: first byte = length of the signature header candidate, then that many bytes of
//! header, the rest is the body. The whole input is also parsed as a body on its own.
//!
//! Properties: nothing panics; only the body's own signature verifies (never one made for other
//! bytes or with another secret, never anything with an empty secret); the header's form is
//! judged the same by the relay (`is_well_formed`) and by `verify`; every parsed message and
//! status survives the inbox encoding unchanged; the parse keeps the promises of
//! `whatsapp::payload` (required fields present, bounded copies of free text, skips only beside
//! readable events, the one-answer rule of `needs_fallback_answer`).

#![no_main]

use frontdesk::whatsapp::payload::{self, Content, Event, PayloadError};
use frontdesk::whatsapp::queue::InboxEntry;
use frontdesk::whatsapp::signature::{self, SignatureError};
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"fuzz-app-secret";

fn chars(s: &str) -> usize {
    s.chars().count()
}

fn check_message(m: &payload::InboundMessage) {
    assert!(!m.id.is_empty() && !m.from.is_empty());
    if let Some(u) = &m.username {
        assert!(!u.is_empty() && chars(u) <= 64);
    }
    if let Some(name) = &m.contact_name {
        assert!(!name.trim().is_empty());
    }
    if let Some(r) = &m.referral {
        for field in [
            &r.source_type,
            &r.source_id,
            &r.headline,
            &r.body,
            &r.ctwa_clid,
        ] {
            assert!(field
                .as_ref()
                .is_none_or(|f| !f.is_empty() && chars(f) <= 500));
        }
    }
    match &m.content {
        Content::Unsupported(kind) => assert!(chars(kind) <= 64),
        Content::System { kind, .. } => assert!(chars(kind) <= 64),
        Content::FlowReply { text, .. } => assert!(text.lines().count() <= 30),
        _ => {}
    }
    // Exactly one of: answer with the engine, fallback answer, the greeting, or a silent record
    // (reaction, edit, revoke).
    let engine = m.content.as_engine_text().is_some();
    let silent_or_greeted = matches!(
        m.content,
        Content::Reaction { .. } | Content::Edit { .. } | Content::Revoke { .. } | Content::Welcome
    );
    assert_eq!(
        m.content.needs_fallback_answer(),
        !engine && !silent_or_greeted
    );
    if let Some(text) = m.content.as_engine_text() {
        assert!(!text.trim().is_empty());
    }
    let _ = m.content.kind();
}

fn check_inbox_round_trip(entry: InboxEntry) {
    let stored = serde_json::to_vec(&entry).expect("inbox entries serialise");
    let back: InboxEntry = serde_json::from_slice(&stored).expect("inbox entries deserialise");
    assert!(back == entry, "inbox entry changed in its encoding");
}

fn check_parse(body: &[u8]) {
    let events = match payload::parse(body) {
        Ok(events) => events,
        Err(e) => {
            // The reason codes are what audit and metrics see.
            assert!(e.reason().starts_with("payload_"));
            if let PayloadError::UnexpectedObject(object) = &e {
                assert!(chars(object) <= 64);
            }
            return;
        }
    };
    // Whatever parses must survive the event serde roundtrip unchanged.
    let stored = serde_json::to_vec(&events).expect("events serialise");
    let back: Vec<Event> = serde_json::from_slice(&stored).expect("events deserialise");
    assert_eq!(back, events);
    if events.iter().any(|e| matches!(e, Event::Skipped { .. })) {
        assert!(events.iter().any(|e| !matches!(e, Event::Skipped { .. })));
    }
    for event in events {
        match event {
            Event::Message(m) => {
                check_message(&m);
                check_inbox_round_trip(InboxEntry::Message(m));
            }
            Event::Status(s) => {
                assert!(!s.message_id.is_empty() && !s.recipient.is_empty());
                check_inbox_round_trip(InboxEntry::Status(s));
            }
            Event::TemplateCategory(u) => {
                assert!(!u.name.is_empty() && !u.language.is_empty());
                assert!(!u.new_category.is_empty());
            }
            Event::Error(_) | Event::Skipped { .. } => {}
        }
    }
}

fn check_signature(header_bytes: &[u8], body: &[u8]) {
    let header = std::str::from_utf8(header_bytes).ok();
    let good = signature::sign(SECRET, body);
    let verdict = signature::verify(SECRET, body, header);
    if verdict.is_ok() {
        // Only the real signature may verify (modulo the tolerated case and padding).
        let normalised = header.map(|h| h.trim_matches([' ', '\t']).to_ascii_lowercase());
        assert_eq!(normalised.as_deref(), Some(good.as_str()));
    }
    if let Some(h) = header {
        // The relay's early check and the box's check agree on what a signature header is.
        assert_eq!(
            signature::is_well_formed(h),
            verdict != Err(SignatureError::Malformed)
        );
        // An empty secret never verifies, whatever was sent.
        assert!(signature::verify(b"", body, Some(h)).is_err());
    }
    assert!(signature::verify(SECRET, body, Some(&good)).is_ok());
    assert!(signature::verify(b"another-secret", body, Some(&good)).is_err());
    // A signature made for other bytes never verifies this body.
    let other = signature::sign(SECRET, header_bytes);
    assert_eq!(
        signature::verify(SECRET, body, Some(&other)).is_ok(),
        header_bytes == body
    );
}

fuzz_target!(|data: &[u8]| {
    check_parse(data);

    let Some((&len, rest)) = data.split_first() else {
        return;
    };
    let (header, body) = rest.split_at(usize::from(len).min(rest.len()));
    check_signature(header, body);
    check_parse(body);
});
