//! Assembles the conversation runtime from the configuration — language model, prompts,
//! MagicLine booker (its steps go to the audit log), engine.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tracing::{info, warn};

use crate::audit::AuditLog;
use crate::config::Config;
use crate::conversation::booking::Booker;
use crate::conversation::engine::Engine;
use crate::conversation::prompts::Prompts;
use crate::llm::LanguageModel;
use crate::magicline::audit::AuditBookings;
use crate::magicline::booking::{BookerConfig, MagicLineBooker};
use crate::secrets::{names, Credentials};
use crate::store::Store;

/// Builds the MagicLine booker when `[magicline]` and its credential are configured.
pub fn booker(
    cfg: &Config,
    creds: &Credentials,
    store: Arc<Store>,
    audit: Arc<AuditLog>,
) -> anyhow::Result<Option<Arc<dyn Booker>>> {
    if cfg.magicline.base_url.is_empty() {
        return Ok(None);
    }
    let Some(key) = creds.get(names::MAGICLINE_API_KEY)? else {
        warn!("magicline.base_url is set but the magicline-api-key credential is missing: booking disabled");
        return Ok(None);
    };
    let client = crate::magicline::client::Client::new(
        &cfg.magicline.base_url,
        key.expose_str()?.to_string(),
        Duration::from_secs(cfg.magicline.timeout_secs),
    );
    let booker = MagicLineBooker::new(
        client,
        store,
        Arc::new(AuditBookings(audit)),
        BookerConfig {
            alternatives_days: cfg.magicline.days_ahead,
            trial_appointment_id: cfg.magicline.trial_offer_appointment_id,
            member_appointment_id: cfg.magicline.member_appointment_id,
            reminders: crate::reminders::Plan::from_config(&cfg.reminders),
            ..BookerConfig::default()
        },
    );
    Ok(Some(Arc::new(booker)))
}

/// The assembled conversation runtime.
pub struct Conversation {
    /// The loaded model, shared with the engine; its description goes into the status output.
    pub model: Arc<dyn LanguageModel>,
    /// What the dispatcher calls; kept for reloads of prompts and studio facts.
    pub engine: Arc<Engine>,
}

/// Builds the engine: loads prompts (a broken template fails here, at start) and the model
/// (loaded once).
pub fn conversation(
    cfg: &Config,
    creds: &Credentials,
    store: Arc<Store>,
    audit: Arc<AuditLog>,
) -> anyhow::Result<Conversation> {
    let prompts =
        Arc::new(Prompts::load(&cfg.service, &cfg.studio).context("cannot load the prompts")?);
    let model = crate::llm::from_config(&cfg.llm).context("cannot load the language model")?;
    info!(model = %model.describe(), "language model ready");
    let booker = booker(cfg, creds, store.clone(), audit.clone())?;
    let engine = Arc::new(Engine::new(
        store,
        model.clone(),
        prompts,
        cfg.studio.clone(),
        cfg.conversation.clone(),
        booker,
    ));
    Ok(Conversation { model, engine })
}
