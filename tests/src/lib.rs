//! End-to-end tests and benchmarks of frontdesk: the harness that runs the real daemon
//! ([`harness`]), a real SMTP server for the alert tests ([`smtp`]) and a keyword-rules model
//! behind an OpenAI-compatible server for the chat scripts ([`rules_model`]); the tests live in
//! `tests/`, the benchmark binaries in `src/bin/`.
#![expect(
    clippy::unwrap_used,
    reason = "test support: a panic is the failing test's report"
)]

pub mod browser;
pub mod fixed;
pub mod harness;
pub mod rules_model;
pub mod smtp;
