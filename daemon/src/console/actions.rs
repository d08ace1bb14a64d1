//! What staff do in a conversation (blocking; the server calls these off the async threads).
//! Each action is audited with the staff member as the actor, in the batch of the change it
//! records. An answer is a staff turn ([`Effects::staff_reply`]) committed by `turn::commit`
//! under the customer's lock, with its outbox rows, so the sender delivers it like any reply.

use std::collections::HashMap;
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};

use super::accounts::Role;
use super::ConsoleState;
use crate::audit::{Actor, AuditEvent, Code, ForgetReason, NewEntry, Outcome, StaffName};
use crate::store::crypto::Pseudonym;
use crate::store::customers::BotMode;
use crate::store::{Store, StoreError};
use crate::turn::{self, attention, CommitError, Effects, QueueRows};
use crate::whatsapp::graph::{split_text, MAX_TEXT_CHARS};
use crate::whatsapp::queue::{OutboundKind, OutboxEntry, Queues};

/// The signed-in member acting.
#[derive(Clone, Debug)]
pub struct Staff {
    /// Account name.
    pub name: StaffName,
    /// Role, as the store has it now.
    pub role: Role,
}

impl Staff {
    fn actor(&self) -> Actor {
        Actor::staff(&self.name)
    }
}

/// How an action ended.
#[derive(Debug)]
pub enum Done {
    /// Go on to this console path (a notice in its query).
    Redirect(String),
    /// A file for the browser to save (exports).
    Download {
        /// Suggested file name.
        file_name: String,
        /// The content (JSON).
        bytes: Vec<u8>,
    },
    /// Refused, with an HTTP status and a German message; nothing was changed.
    Refused(u16, &'static str),
}

/// A store or audit failure: answered with 500, nothing personal in it.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The audit log failed.
    #[error("audit log: {0}")]
    Audit(#[from] crate::audit::AuditError),
    /// The turn could not be committed.
    #[error("commit: {0}")]
    Commit(#[from] CommitError),
    /// The export document could not be put together.
    #[error("export: {0}")]
    Export(#[from] crate::admin::ops::OpError),
}

/// WhatsApp's customer service window: free text only this long after the contact's last
/// message.
pub const SERVICE_WINDOW: SignedDuration = SignedDuration::from_hours(24);
/// Longest answer accepted (WhatsApp's text limit; the sender would split longer ones).
const MAX_ANSWER_CHARS: usize = 4096;

/// The approved templates offered when the window is closed: the re-open template and every
/// template with a configured category.
pub fn offered_templates(state: &ConsoleState) -> Vec<String> {
    let cfg = state.admin.config();
    let mut names: Vec<String> = cfg.whatsapp.reopen_template.iter().cloned().collect();
    for name in cfg.whatsapp.template_categories.keys() {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    names
}

/// Runs `action` (`reply`, `template`, `resume`, `pause`, `forget`, `export`) on customer `p`
/// with the submitted `form`.
pub fn run(
    state: &ConsoleState,
    staff: &Staff,
    p: Pseudonym,
    action: &str,
    form: &HashMap<String, String>,
) -> Result<Done, ActionError> {
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    match action {
        "reply" => reply(state, staff, p, field("text")),
        "template" => template(state, staff, p, field("template"), field("params")),
        "resume" => set_mode(state, staff, p, false),
        "pause" => set_mode(state, staff, p, true),
        "forget" => forget(state, staff, p, field("confirm") == "yes", field("reason")),
        "export" => export(state, staff, p),
        _ => Ok(Done::Refused(404, "Diese Aktion gibt es nicht.")),
    }
}

/// The channel's rows of a staff turn: one outbox row per part of the answer, or the template.
struct StaffRows {
    queues: Arc<Queues>,
    template: Option<OutboundKind>,
}

impl QueueRows for StaffRows {
    fn add(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        store: &Store,
        effects: &Effects,
    ) -> crate::store::Result<()> {
        for (i, text) in effects.replies.iter().enumerate() {
            let history: Vec<u64> = effects.reply_rows.get(i).copied().into_iter().collect();
            let kinds = match &self.template {
                Some(kind) => vec![kind.clone()],
                None => split_text(text, MAX_TEXT_CHARS)
                    .into_iter()
                    .map(OutboundKind::Text)
                    .collect(),
            };
            for kind in kinds {
                self.queues.push_outbox(
                    store,
                    batch,
                    &effects.pseudonym,
                    &OutboxEntry {
                        to: effects.address.clone(),
                        kind,
                        created: Timestamp::now(),
                        history: history.clone(),
                    },
                )?;
            }
        }
        Ok(())
    }
}

/// Commits a staff turn and wakes the sender.
fn send(
    state: &ConsoleState,
    staff: &Staff,
    p: Pseudonym,
    text: String,
    template: Option<OutboundKind>,
) -> Result<Done, ActionError> {
    let Some(outbox) = state.admin.outbox() else {
        return Ok(Done::Refused(
            503,
            "WhatsApp ist nicht eingerichtet: es kann nichts gesendet werden.",
        ));
    };
    let kind = Code::new(if template.is_some() {
        "template"
    } else {
        "text"
    });
    let entry = NewEntry::new(staff.actor(), AuditEvent::StaffReply { kind }).about(&p);
    let effects = Effects::staff_reply(p, Timestamp::now(), text, entry);
    let rows = StaffRows {
        queues: outbox.queues.clone(),
        template,
    };
    match turn::commit(&state.admin.store, effects, &rows, Some(&state.admin.audit)) {
        Ok(_) => {}
        Err(CommitError::NotAnswerable(_)) => {
            return Ok(Done::Refused(
                409,
                "Diese Person kann keine Nachrichten bekommen (abgemeldet oder gelöscht).",
            ))
        }
        Err(e) => return Err(e.into()),
    }
    outbox.wake.notify_one();
    Ok(Done::Redirect(format!("/c/{}?done=sent", p.short())))
}

fn window_open(store: &Store, p: &Pseudonym, now: Timestamp) -> Result<bool, StoreError> {
    Ok(store
        .customer_meta(p)?
        .and_then(|m| m.last_inbound)
        .is_some_and(|t| now.duration_since(t) < SERVICE_WINDOW))
}

fn reply(
    state: &ConsoleState,
    staff: &Staff,
    p: Pseudonym,
    text: &str,
) -> Result<Done, ActionError> {
    let text = text.trim();
    if text.is_empty() || text.chars().count() > MAX_ANSWER_CHARS {
        return Ok(Done::Refused(
            400,
            "Die Antwort muss zwischen 1 und 4096 Zeichen lang sein.",
        ));
    }
    if !window_open(&state.admin.store, &p, Timestamp::now())? {
        return Ok(Done::Refused(
            409,
            "Das 24-Stunden-Fenster ist geschlossen: bitte eine freigegebene Vorlage senden.",
        ));
    }
    send(state, staff, p, text.to_string(), None)
}

fn template(
    state: &ConsoleState,
    staff: &Staff,
    p: Pseudonym,
    name: &str,
    params: &str,
) -> Result<Done, ActionError> {
    if !offered_templates(state).iter().any(|t| t == name) {
        return Ok(Done::Refused(400, "Diese Vorlage ist nicht eingerichtet."));
    }
    let params: Vec<String> = params
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if params.len() > 20 || params.iter().any(|p| p.chars().count() > 1024) {
        return Ok(Done::Refused(400, "Zu viele oder zu lange Parameter."));
    }
    let kind = OutboundKind::Template {
        name: name.to_string(),
        language: state.admin.config().whatsapp.template_language.clone(),
        params,
        buttons: Vec::new(),
    };
    send(state, staff, p, format!("[Vorlage {name}]"), Some(kind))
}

/// Pauses the assistant for `p`, or hands the conversation back to it (resume: also the
/// hand-over mark goes).
fn set_mode(
    state: &ConsoleState,
    staff: &Staff,
    p: Pseudonym,
    pause: bool,
) -> Result<Done, ActionError> {
    let store = &state.admin.store;
    let audit = &state.admin.audit;
    let event = if pause {
        AuditEvent::CustomerPause
    } else {
        AuditEvent::CustomerResume
    };
    let entry = NewEntry::new(staff.actor(), event).about(&p);
    let done = store.update_existing(&p, |c, batch, st| {
        if c.meta.mode == BotMode::OptedOut {
            return Ok(None);
        }
        c.meta.mode = if pause {
            BotMode::Paused
        } else {
            BotMode::Active
        };
        if !pause {
            attention::clear(st, batch, &p);
        }
        // The change and its entry commit in one batch.
        audit
            .append_in(batch, entry)
            .map(Some)
            .map_err(|e| StoreError::Format(e.to_string()))
    })?;
    match done {
        None => Ok(Done::Refused(404, "Diese Person gibt es nicht (mehr).")),
        Some((_, None)) => Ok(Done::Refused(
            409,
            "Diese Person hat sich abgemeldet; der Assistent schreibt ihr nicht mehr.",
        )),
        Some((_, Some(pending))) => {
            drop(pending);
            store.activity().touched(&p);
            let done = if pause { "paused" } else { "resumed" };
            Ok(Done::Redirect(format!("/c/{}?done={done}", p.short())))
        }
    }
}

/// An owner-only action by someone else: audited as refused.
fn refuse_non_owner(
    state: &ConsoleState,
    staff: &Staff,
    p: &Pseudonym,
    action: &'static str,
) -> Result<Option<Done>, ActionError> {
    if staff.role.is_owner() {
        return Ok(None);
    }
    state.admin.audit.append(
        NewEntry::new(
            staff.actor(),
            AuditEvent::StaffDenied {
                attempted: Code::new(action),
            },
        )
        .about(p)
        .outcome(Outcome::denied("not_owner")),
    )?;
    Ok(Some(Done::Refused(
        403,
        "Das dürfen nur Inhaber: bitte die Studioleitung fragen.",
    )))
}

fn forget(
    state: &ConsoleState,
    staff: &Staff,
    p: Pseudonym,
    confirmed: bool,
    reason: &str,
) -> Result<Done, ActionError> {
    if let Some(refused) = refuse_non_owner(state, staff, &p, "forget")? {
        return Ok(refused);
    }
    if !confirmed {
        return Ok(Done::Refused(
            400,
            "Bitte das Löschen ausdrücklich bestätigen.",
        ));
    }
    let reason = match reason {
        "dsgvo-request" => ForgetReason::DsgvoRequest,
        "other" => ForgetReason::Other,
        _ => ForgetReason::CustomerRequest,
    };
    let store = &state.admin.store;
    let n = store.forget(&[p], Timestamp::now())?;
    let mut batch = store.batch();
    attention::clear(store, &mut batch, &p);
    state.admin.audit.append_with(
        batch,
        NewEntry::new(
            staff.actor(),
            AuditEvent::CustomerForget {
                reason,
                existed: n > 0,
            },
        )
        .about(&p),
    )?;
    store.activity().touched(&p);
    Ok(Done::Redirect("/?done=forgotten".to_string()))
}

fn export(state: &ConsoleState, staff: &Staff, p: Pseudonym) -> Result<Done, ActionError> {
    if let Some(refused) = refuse_non_owner(state, staff, &p, "export")? {
        return Ok(refused);
    }
    let store = &state.admin.store;
    let Some(c) = store.customer(&p)? else {
        return Ok(Done::Refused(404, "Diese Person gibt es nicht (mehr)."));
    };
    let (doc, counts) = crate::admin::ops::export_document(&state.admin, &c)?;
    // Durable before a single byte leaves.
    state.admin.audit.append(
        NewEntry::new(
            staff.actor(),
            AuditEvent::CustomerExport {
                messages: counts[0],
                bookings: counts[1],
                audit_entries: counts[2],
            },
        )
        .about(&p),
    )?;
    Ok(Done::Download {
        file_name: format!("frontdesk-{}.json", p.short()),
        bytes: serde_json::to_vec_pretty(&doc).expect("export serialises"),
    })
}
