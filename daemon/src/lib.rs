//! frontdesk: a WhatsApp lead assistant for fitness and EMS studios that runs on the studio's own
//! box. See ARCHITECTURE.md at the repository root for the map of the code.

pub mod cli;
pub mod config;
pub mod conversation;
pub mod llm;
pub mod logging;
pub mod magicline;
pub mod metrics;
pub mod sandbox;
pub mod secrets;
pub mod service;
pub mod store;
pub mod whatsapp;

/// Builds the responder that answers WhatsApp messages from the configuration (the conversation
/// engine on the configured language model).
pub fn conversation_runtime(
    _cfg: &config::Config,
    _store: std::sync::Arc<store::Store>,
    _metrics: &std::sync::Arc<metrics::Metrics>,
) -> anyhow::Result<std::sync::Arc<dyn whatsapp::dispatch::Responder>> {
    anyhow::bail!("the conversation engine is not available in this build")
}
