//! The WhatsApp channel.
//!
//! Wire formats: [`signature`] (webhook signatures), [`payload`] (webhook payloads normalised
//! into events), [`graph`] (the Graph API client). The pipeline: [`webhook`] (HTTP endpoint that
//! persists to the inbox before answering 200) → [`queue`] (durable inbox, outbox, seen ids,
//! delivery states) → [`dispatch`] (inbox → replies in the outbox, exactly once, in order per
//! customer) → [`sender`] (outbox → Graph API, with retries and error handling); [`failures`]
//! decides what a failed message leads to, whether the send call failed or a status webhook
//! reported the failure later. [`templates`] keeps each template's category (endpoint and price)
//! current.
//!
//! Nothing here logs payload content, phone numbers or tokens.

pub mod dispatch;
pub mod failures;
pub mod graph;
pub mod payload;
pub mod queue;
pub mod sender;
pub mod signature;
pub mod staff;
pub mod templates;
pub mod versions;
pub mod webhook;
