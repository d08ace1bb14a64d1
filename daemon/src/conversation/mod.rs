//! The conversation engine: what the assistant says and decides for one inbound message.
//!
//! [`engine`] runs a turn; [`prompts`] loads and renders the prompt files; [`reply`] is the
//! model's output schema and the profile merge rules; [`when`] turns German date/time phrases
//! into slots; [`booking`] is the interface to the booking system.

pub mod booking;
pub mod engine;
pub mod prompts;
pub mod reply;
pub mod when;
