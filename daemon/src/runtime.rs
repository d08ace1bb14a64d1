//! Assembles the conversation runtime from the configuration — language model, prompts,
//! MagicLine booker, engine — and adapts it to the dispatcher: each turn's funnel moves are
//! counted in the same durable write as the turn, and hand-overs, opt-outs and booking calls are
//! written to the audit log.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tracing::{info, warn};

use crate::audit::{Actor, AuditEvent, AuditLog, Code, NewEntry};
use crate::config::Config;
use crate::conversation::booking::Booker;
use crate::conversation::engine::{AlertKind, Engine, Inbound as EngineInbound, Turn};
use crate::conversation::prompts::Prompts;
use crate::llm::LanguageModel;
use crate::magicline::audit::AuditBookings;
use crate::magicline::booking::{BookerConfig, MagicLineBooker};
use crate::secrets::{names, Credentials};
use crate::stats::{self, FunnelEvent};
use crate::store::customers::{BotMode, Stage};
use crate::store::Store;
use crate::whatsapp::dispatch::{Finish, Inbound, Responder};

/// The engine behind the dispatcher's [`Responder`] interface.
pub struct EngineResponder {
    engine: Arc<Engine>,
    audit: Arc<AuditLog>,
}

impl Responder for EngineResponder {
    fn respond(&self, inbound: &Inbound, finish: &mut Finish<'_>) -> anyhow::Result<()> {
        let now = jiff::Timestamp::now().in_tz(crate::conversation::when::TZ_NAME)?;
        let at = now.timestamp();
        let req = EngineInbound {
            phone: inbound.phone.clone(),
            contact_name: inbound.contact_name.clone(),
            texts: inbound.texts.clone(),
            wamids: inbound.wamids.clone(),
        };
        let turn = self
            .engine
            .handle(&req, &now, &mut |batch, store, turn: &Turn| {
                for event in funnel_events(turn) {
                    stats::record(store, batch, event, at)?;
                }
                finish(batch, store, &turn.pseudonym, &turn.replies)
            })?;
        for alert in &turn.alerts {
            let reason = match alert.kind {
                AlertKind::Complaint => "complaint",
                AlertKind::Cancellation => "cancellation",
                AlertKind::ContractQuestion => "contract_question",
                AlertKind::BookingFailed => "booking_failed",
                AlertKind::Rescheduled => "rescheduled",
            };
            // Staff see alerts in the journal and in the audit log (no message content).
            warn!(customer = %alert.pseudonym, reason, FRONTDESK_EVENT = "staff.alert", "staff attention needed");
            let entry = NewEntry::new(
                Actor::customer(&alert.pseudonym),
                AuditEvent::CustomerEscalate {
                    reason: Code::new(reason),
                },
            )
            .about(&alert.pseudonym);
            if let Err(e) = self.audit.append(entry) {
                warn!(error = %e, "audit append failed");
            }
        }
        if turn
            .mode_changes
            .iter()
            .any(|(_, to)| *to == BotMode::OptedOut)
        {
            let entry = NewEntry::new(Actor::customer(&turn.pseudonym), AuditEvent::CustomerOptOut)
                .about(&turn.pseudonym);
            if let Err(e) = self.audit.append(entry) {
                warn!(error = %e, "audit append failed");
            }
        }
        Ok(())
    }
}

/// The funnel counters a turn moves.
fn funnel_events(turn: &Turn) -> Vec<FunnelEvent> {
    let mut out = Vec::new();
    if turn.new_contact {
        out.push(FunnelEvent::NewContact);
    }
    for (_, to) in &turn.stage_changes {
        match to {
            Stage::NameKnown => out.push(FunnelEvent::NameKnown),
            Stage::TrialBooked => out.push(FunnelEvent::TrialBooked),
            Stage::NewLead => {}
        }
    }
    for (_, to) in &turn.mode_changes {
        match to {
            BotMode::Escalated => out.push(FunnelEvent::Handover),
            BotMode::OptedOut => out.push(FunnelEvent::OptOut),
            _ => {}
        }
    }
    out
}

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
            ..BookerConfig::default()
        },
    );
    Ok(Some(Arc::new(booker)))
}

/// The assembled conversation runtime.
pub struct Conversation {
    /// What the dispatcher calls.
    pub responder: Arc<dyn Responder>,
    pub model: Arc<dyn LanguageModel>,
    /// For reloads of prompts and studio facts.
    pub engine: Arc<Engine>,
}

/// Builds the engine-backed responder: loads prompts (a broken template fails here, at start)
/// and the model (loaded once).
pub fn responder(
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
    Ok(Conversation {
        responder: Arc::new(EngineResponder {
            engine: engine.clone(),
            audit,
        }),
        model,
        engine,
    })
}
