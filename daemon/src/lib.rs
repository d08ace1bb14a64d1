//! frontdesk: a WhatsApp lead assistant for fitness and EMS studios that runs on the studio's own
//! box. See ARCHITECTURE.md at the repository root for the map of the code.

pub mod admin;
pub mod alerts;
pub mod audit;
pub mod cli;
pub mod config;
pub mod console;
pub mod conversation;
pub mod http1;
pub mod llm;
pub mod logging;
pub mod magicline;
pub mod metrics;
pub mod reminders;
pub mod runtime;
pub mod sandbox;
pub mod secrets;
pub mod service;
pub mod stats;
pub mod store;
pub mod sys;
pub mod tunnel;
pub mod turn;
pub mod whatsapp;
