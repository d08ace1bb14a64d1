//! The conversation engine: what the assistant says and decides for one inbound message.
//!
//! [`when`] turns German date/time phrases into slots; [`booking`] is the interface to the
//! booking system.

pub mod booking;
pub mod when;
