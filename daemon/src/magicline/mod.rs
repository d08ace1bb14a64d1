//! MagicLine Open API (v1) integration: wire types ([`api`]), the blocking HTTP client used from
//! `spawn_blocking` ([`client`]) and MagicLine's zoned date-time format ([`datetime`]).
//!
//! This layer only speaks the API. Deciding whether a failed booking call may be repeated, and
//! recording bookings locally, is the job of the booking logic built on top of it.

pub mod api;
pub mod client;
pub mod datetime;
