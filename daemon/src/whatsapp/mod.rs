//! WhatsApp Cloud API layer: webhook signature checks ([`signature`]), webhook payload parsing
//! into normalised events ([`payload`]) and the Graph API sender ([`graph`]).
//!
//! The webhook HTTP server and the dispatcher live elsewhere; this module only knows Meta's wire
//! formats. Nothing here logs payload content, phone numbers or tokens.

pub mod graph;
pub mod payload;
pub mod signature;
