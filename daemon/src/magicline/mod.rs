//! MagicLine Open API (v1) integration: wire types ([`api`]), the blocking HTTP client used from
//! `spawn_blocking` ([`client`]), MagicLine's zoned date-time format ([`datetime`]) and the
//! idempotent trial booking built on them ([`booking`], with what staff and check-ins change
//! afterwards in `booking::attendance`), the audit entries of its steps ([`audit`]), and
//! MagicLine's webhook: the receiver with its durable queue ([`webhook`]) and the worker that
//! handles the events and sweeps the booked trials ([`events`]).
//!
//! The client only speaks the API. Deciding whether a failed booking call may be repeated, and
//! recording bookings locally, is the job of [`booking`].

pub mod api;
pub mod audit;
pub mod booking;
pub mod client;
pub mod datetime;
pub mod events;
pub mod webhook;
