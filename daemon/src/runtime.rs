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
    Ok(magicline_booker(cfg, creds, store, audit)?.map(|b| b as Arc<dyn Booker>))
}

/// [`booker`] as the MagicLine booker itself, which also records what MagicLine's webhook
/// events and the attendance sweep report.
pub fn magicline_booker(
    cfg: &Config,
    creds: &Credentials,
    store: Arc<Store>,
    audit: Arc<AuditLog>,
) -> anyhow::Result<Option<Arc<MagicLineBooker>>> {
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
            trial_class_id: cfg.magicline.trial_offer_class_id,
            member_appointment_id: cfg.magicline.member_appointment_id,
            no_show_after: jiff::SignedDuration::from_mins(i64::from(
                cfg.magicline.no_show_after_minutes,
            )),
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
    /// The engine's MagicLine booker, when booking is configured: MagicLine's events go to
    /// the same one, so one person's booking and events are serialised.
    pub booker: Option<Arc<MagicLineBooker>>,
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
    let magicline = magicline_booker(cfg, creds, store.clone(), audit.clone())?;
    let engine = Arc::new(Engine::new(
        store,
        model.clone(),
        prompts,
        cfg.studio.clone(),
        cfg.conversation.clone(),
        magicline.clone().map(|b| b as Arc<dyn Booker>),
    ));
    Ok(Conversation {
        model,
        engine,
        booker: magicline,
    })
}
