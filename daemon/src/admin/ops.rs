//! The admin operations behind the endpoints: blocking functions over the store and the audit
//! log. Each one writes its audit entry, and where personal data leaves the daemon (show, list
//! with names, export), the entry is durable before the data is returned.

use std::io::Write;

use jiff::Timestamp;
use serde_json::json;

use super::api::*;
use super::peer::Caller;
use super::AdminState;
use crate::audit::{
    AuditError, AuditEvent, AuditFilter, AuditLog, AuditRecord, Code, NewEntry, Outcome, Purpose,
    RequestId, ShortPseudonym, VerifyOptions, VerifyReport, CSV_HEADER,
};
use crate::config::RetentionPolicy;
use crate::store::address::is_valid_address;
use crate::store::crypto::{self, Pseudonym};
use crate::store::customers::{BotMode, Customer, Stage};
use crate::store::{ks, Store, StoreError};

/// Meta key of the last retention run.
pub const META_LAST_RETENTION: &[u8] = b"retention/last";

/// A failed operation: HTTP status and a message without personal data.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct OpError {
    /// HTTP status code of the answer.
    pub status: u16,
    /// What went wrong, without personal data.
    pub message: String,
}

impl OpError {
    /// An error answered with `status` and `message`.
    pub fn new(status: u16, message: impl Into<String>) -> OpError {
        OpError {
            status,
            message: message.into(),
        }
    }

    fn not_found() -> OpError {
        OpError::new(404, "no customer with this phone number or user id")
    }

    fn not_an_address() -> OpError {
        OpError::new(
            400,
            "neither a phone number nor a WhatsApp user id: give the number in international \
             form (+49 151 2345678) or the user id as WhatsApp writes it (DE.1234…)",
        )
    }
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        OpError::new(500, format!("store: {e}"))
    }
}

impl From<AuditError> for OpError {
    fn from(e: AuditError) -> Self {
        OpError::new(500, format!("audit log: {e}"))
    }
}

/// What an operation answers.
pub enum Reply {
    /// A JSON document.
    Json(serde_json::Value),
    /// Bytes with a content type (exports).
    Bytes(Vec<u8>, &'static str),
}

type OpResult = Result<Reply, OpError>;

fn to_json(v: impl serde::Serialize) -> OpResult {
    Ok(Reply::Json(
        serde_json::to_value(v).expect("replies serialise"),
    ))
}

/// The context of one request.
pub struct Ctx<'a> {
    /// The daemon's state.
    pub state: &'a AdminState,
    /// Who is calling (for the access rule and the audit entry).
    pub caller: &'a Caller,
    /// Identifies the request; its audit entries carry it.
    pub request_id: RequestId,
}

impl Ctx<'_> {
    fn entry(&self, event: AuditEvent) -> NewEntry {
        NewEntry::new(self.caller.actor(), event).request(self.request_id)
    }

    fn audit(&self, entry: NewEntry) -> Result<AuditRecord, OpError> {
        Ok(self.state.audit.append(entry)?)
    }

    fn store(&self) -> &Store {
        &self.state.store
    }

    /// Audits a failed lookup and returns 404.
    fn not_found(&self, event: AuditEvent, p: &Pseudonym) -> OpError {
        let _ = self.audit(
            self.entry(event)
                .about(p)
                .outcome(Outcome::error("not_found")),
        );
        OpError::not_found()
    }
}

/// The customer a request names by phone number or WhatsApp user id (a user id linked to a
/// number's customer names that customer).
fn customer_of(ctx: &Ctx, address: &str) -> Result<Pseudonym, OpError> {
    let address = address.trim();
    if is_valid_address(address).is_none() {
        return Err(OpError::not_an_address());
    }
    Ok(ctx.store().pseudonym(address))
}

fn status_code(c: &Customer) -> &'static str {
    status_code_of(c.meta.stage, c.meta.mode)
}

fn status_code_of(stage: Stage, mode: BotMode) -> &'static str {
    match mode {
        BotMode::Active => match stage {
            Stage::NewLead => "new_lead",
            Stage::NameKnown => "name_known",
            Stage::TrialBooked => "trial_booked",
            Stage::Member => "member",
        },
        BotMode::Escalated => "escalated",
        BotMode::Paused => "paused",
        BotMode::OptedOut => "opted_out",
    }
}

const STATUS_CODES: [&str; 6] = [
    "new_lead",
    "name_known",
    "trial_booked",
    "escalated",
    "paused",
    "opted_out",
];

fn display_name(c: &Customer) -> Option<String> {
    let p = &c.body.profile;
    match (&p.vorname, &p.nachname) {
        (Some(v), Some(n)) => Some(format!("{v} {n}")),
        (Some(v), None) => Some(v.clone()),
        (None, Some(n)) => Some(n.clone()),
        (None, None) => c.body.contact_name.clone(),
    }
}

/// `status`: the daemon's figures and the live figures of its components.
pub fn status(ctx: &Ctx) -> OpResult {
    let state = ctx.state;
    ctx.audit(
        ctx.entry(AuditEvent::AdminStatus)
            .purpose(Purpose::Operations),
    )?;
    let last_retention = state
        .store
        .keyspaces()
        .meta
        .get(META_LAST_RETENTION)
        .map_err(StoreError::from)?
        .and_then(|v| serde_json::from_slice(&v).ok());
    let now = Timestamp::now();
    to_json(StatusReply {
        version: env!("CARGO_PKG_VERSION").into(),
        started_at: state.started,
        uptime_secs: now.duration_since(state.started).as_secs().max(0) as u64,
        store_path: state.store.path().display().to_string(),
        store_bytes: state.store.disk_space(),
        customers: state.store.customer_count() as u64,
        audit_head: state.audit.head(),
        last_retention,
        components: state.board.snapshot(),
    })
}

/// `customers list`: customers by status and last contact; reading names is audited first.
pub fn customers_list(ctx: &Ctx, req: ListRequest) -> OpResult {
    if let Some(s) = &req.status {
        if !STATUS_CODES.contains(&s.as_str()) {
            return Err(OpError::new(
                400,
                format!("unknown status; use one of {}", STATUS_CODES.join(", ")),
            ));
        }
    }
    let mut rows = Vec::new();
    for item in ctx.store().customer_metas() {
        let (p, meta) = item?;
        let status = status_code_of(meta.stage, meta.mode);
        if req.status.as_deref().is_some_and(|s| s != status)
            || req.since.is_some_and(|t| meta.last_contact < t)
        {
            continue;
        }
        rows.push((
            p,
            CustomerRow {
                pseudonym: p.short(),
                status: status.into(),
                first_contact: meta.first_contact,
                last_contact: meta.last_contact,
                name: None,
            },
        ));
    }
    let count = rows.len() as u64;
    if req.show_names {
        // Audited before any name is read, let alone returned.
        ctx.audit(ctx.entry(AuditEvent::CustomerListNames { count }))?;
        for (p, row) in &mut rows {
            if let Some(c) = ctx.store().customer(p)? {
                row.name = display_name(&c);
            }
        }
    } else {
        ctx.audit(ctx.entry(AuditEvent::CustomerList { count }))?;
    }
    to_json(rows.into_iter().map(|(_, r)| r).collect::<Vec<_>>())
}

/// `customers show`: one customer's record and last 20 messages, audited as a read.
pub fn customers_show(ctx: &Ctx, req: PhoneRequest) -> OpResult {
    let p = customer_of(ctx, &req.phone)?;
    let Some(c) = ctx.store().customer(&p)? else {
        return Err(ctx.not_found(AuditEvent::CustomerRead { messages: 0 }, &p));
    };
    let recent = ctx.store().recent_messages(&p, 20)?;
    ctx.audit(
        ctx.entry(AuditEvent::CustomerRead {
            messages: recent.len() as u64,
        })
        .about(&p),
    )?;
    to_json(CustomerDetail {
        pseudonym: p.short(),
        status: status_code(&c).into(),
        status_label: c.status_label().into(),
        // A contact known only by WhatsApp user id is shown by that id.
        phone: c.address().unwrap_or_default().to_string(),
        user_id: c.body.user_id.clone(),
        contact_name: c.body.contact_name.clone(),
        username: c.body.username.clone(),
        lead_source: c.body.lead_source.as_ref().map(|s| {
            format!(
                "{} {} \"{}\"",
                s.source_type.as_deref().unwrap_or("?"),
                s.source_id.as_deref().unwrap_or("?"),
                s.headline.as_deref().unwrap_or_default()
            )
        }),
        first_contact: c.meta.first_contact,
        last_contact: c.meta.last_contact,
        last_inbound: c.meta.last_inbound,
        ever_booked: c.meta.ever_booked,
        profile: serde_json::to_value(&c.body.profile).unwrap_or_default(),
        messages_total: c.meta.next_message_seq,
        recent_messages: recent
            .into_iter()
            .map(|m| ShownMessage {
                direction: serde_json::to_value(m.direction)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                at: m.at,
                text: m.text,
            })
            .collect(),
    })
}

/// Opens a bookings row when it is sealed like the other per-customer rows (optionally behind
/// an 8-byte clear timestamp), else returns it as base64.
fn booking_value(key: &crypto::DataKey, k: &[u8], v: &[u8]) -> serde_json::Value {
    use base64::Engine as _;
    for sealed in [v, v.get(8..).unwrap_or_default()] {
        if let Ok(plain) = key.open(ks::BOOKINGS, k, sealed) {
            return serde_json::from_slice(&plain)
                .unwrap_or_else(|_| json!({ "text": String::from_utf8_lossy(&plain) }));
        }
    }
    json!({ "raw_base64": base64::engine::general_purpose::STANDARD.encode(v) })
}

/// Everything about one person, as the JSON document an export holds, with the number of
/// messages, bookings and audit entries in it. The admin CLI and the staff console export this.
pub fn export_document(
    state: &AdminState,
    c: &Customer,
) -> Result<(serde_json::Value, [u64; 3]), OpError> {
    let store = &state.store;
    let p = c.pseudonym;
    let messages: Vec<serde_json::Value> = store
        .all_messages(&p)?
        .map(|m| m.map(|m| serde_json::to_value(m).unwrap_or_default()))
        .collect::<Result<_, _>>()?;
    let mut bookings = Vec::new();
    if let Some(key) = store.data_key(&p)? {
        for g in store.keyspaces().bookings.prefix(p.0) {
            let (k, v) = g.into_inner().map_err(StoreError::from)?;
            bookings.push(json!({
                "key": hex::encode(&k),
                "value": booking_value(&key, &k, &v),
            }));
        }
    }
    let audit = state.audit.query(&AuditFilter {
        subject: Some(p.short()),
        ..AuditFilter::default()
    })?;
    let counts = [
        messages.len() as u64,
        bookings.len() as u64,
        audit.len() as u64,
    ];
    let doc = json!({
        "format": "frontdesk-export-v1",
        "exported_at": Timestamp::now(),
        "pseudonym": p.to_hex(),
        "pseudonym_short": p.short(),
        "status": status_code(c),
        "meta": c.meta,
        "customer": c.body,
        "messages": messages,
        "bookings": bookings,
        "audit": audit,
    });
    Ok((doc, counts))
}

/// `customers export`: the customer's record, messages, bookings and audit entries as one JSON
/// document, encrypted to the request's age recipient. The export is audited before it is returned.
pub fn customers_export(ctx: &Ctx, req: ExportRequest) -> OpResult {
    let recipient =
        crypto::parse_recipient(&req.recipient).map_err(|e| OpError::new(400, e.to_string()))?;
    let p = customer_of(ctx, &req.phone)?;
    let empty = AuditEvent::CustomerExport {
        messages: 0,
        bookings: 0,
        audit_entries: 0,
    };
    let Some(c) = ctx.store().customer(&p)? else {
        return Err(ctx.not_found(empty, &p));
    };
    let (doc, [messages, bookings, audit_entries]) = export_document(ctx.state, &c)?;
    let mut out = Vec::new();
    {
        let mut w = crypto::encrypt_stream(&recipient, &mut out)
            .map_err(|e| OpError::new(500, e.to_string()))?;
        serde_json::to_writer_pretty(&mut w, &doc).map_err(|e| OpError::new(500, e.to_string()))?;
        w.write_all(b"\n")
            .and_then(|_| w.finish().map(|_| ()))
            .map_err(|e| OpError::new(500, e.to_string()))?;
    }
    // Durable before a single byte leaves.
    ctx.audit(
        ctx.entry(AuditEvent::CustomerExport {
            messages,
            bookings,
            audit_entries,
        })
        .about(&p),
    )?;
    Ok(Reply::Bytes(out, "application/octet-stream"))
}

/// `customers forget`: crypto-shreds the customer and audits it, also when nothing was known.
pub fn customers_forget(ctx: &Ctx, req: ForgetRequest) -> OpResult {
    let p = customer_of(ctx, &req.phone)?;
    match ctx.store().forget(&[p], Timestamp::now()) {
        Ok(n) => {
            let rec = ctx.audit(
                ctx.entry(AuditEvent::CustomerForget {
                    reason: req.reason,
                    existed: n > 0,
                })
                .about(&p),
            )?;
            to_json(ForgetReply {
                pseudonym: p.short(),
                existed: n > 0,
                audit_seq: rec.seq,
            })
        }
        Err(e) => {
            let _ = ctx.audit(
                ctx.entry(AuditEvent::CustomerForget {
                    reason: req.reason,
                    existed: false,
                })
                .about(&p)
                .outcome(Outcome::error("store_error")),
            );
            Err(e.into())
        }
    }
}

/// `customers pause` (`pause`) or `customers resume`: sets the bot mode; the change and its audit
/// entry commit together.
pub fn customers_set_mode(ctx: &Ctx, req: PhoneRequest, pause: bool) -> OpResult {
    let p = customer_of(ctx, &req.phone)?;
    let (event, mode) = if pause {
        (AuditEvent::CustomerPause, BotMode::Paused)
    } else {
        (AuditEvent::CustomerResume, BotMode::Active)
    };
    let audit: &AuditLog = &ctx.state.audit;
    let entry = ctx.entry(event.clone()).about(&p);
    let done = ctx.store().update_existing(&p, |c, batch, _| {
        c.meta.mode = mode;
        // The mode change and its entry commit in one batch.
        audit
            .append_in(batch, entry)
            .map_err(|e| StoreError::Format(e.to_string()))
    })?;
    let Some((c, pending)) = done else {
        return Err(ctx.not_found(event, &p));
    };
    drop(pending);
    // The console's inbox moves the conversation.
    ctx.store().activity().touched(&p);
    to_json(ModeReply {
        pseudonym: p.short(),
        mode: status_code(&c).into(),
    })
}

/// `audit show`: the entries matching the filter; the read itself is audited.
pub fn audit_show(ctx: &Ctx, req: AuditShowRequest) -> OpResult {
    let mut filter = req.filter;
    if let Some(phone) = &req.customer_phone {
        filter.subject = Some(ShortPseudonym::from(&customer_of(ctx, phone)?).to_string());
    }
    let records = ctx.state.audit.query(&filter)?;
    ctx.audit(ctx.entry(AuditEvent::AuditRead {
        entries: records.len() as u64,
    }))?;
    to_json(records)
}

/// `audit verify`: checks the chain and audits the result.
pub fn audit_verify(ctx: &Ctx, req: VerifyRequest) -> OpResult {
    let report: VerifyReport = ctx.state.audit.verify(&VerifyOptions {
        expected_head: req.expected_head,
        journal_head: req.journal_head,
        use_journal: req.use_journal,
    })?;
    let (entries, intact) = match &report.verification {
        crate::audit::Verification::Ok { entries, .. } => (*entries, true),
        crate::audit::Verification::Broken { .. } => (0, false),
    };
    ctx.audit(
        ctx.entry(AuditEvent::AuditVerify { entries, intact })
            .outcome(if intact {
                Outcome::Ok
            } else {
                Outcome::error("chain_broken")
            }),
    )?;
    to_json(report)
}

/// `audit export`: the entries in the given time range as JSON lines or CSV.
pub fn audit_export(ctx: &Ctx, req: AuditExportRequest) -> OpResult {
    let filter = AuditFilter {
        since: req.since,
        until: req.until,
        ..AuditFilter::default()
    };
    let mut out = Vec::new();
    if req.format == ExportFormat::Csv {
        out.extend_from_slice(CSV_HEADER.as_bytes());
        out.push(b'\n');
    }
    let n = ctx.state.audit.for_each(&filter, |r| {
        match req.format {
            ExportFormat::Jsonl => out.extend_from_slice(&r.to_json()),
            ExportFormat::Csv => out.extend_from_slice(r.to_csv_line().as_bytes()),
        }
        out.push(b'\n');
        true
    })?;
    let (format, ctype) = match req.format {
        ExportFormat::Jsonl => (Code::new("jsonl"), "application/x-ndjson"),
        ExportFormat::Csv => (Code::new("csv"), "text/csv"),
    };
    ctx.audit(ctx.entry(AuditEvent::AuditExport { entries: n, format }))?;
    Ok(Reply::Bytes(out, ctype))
}

/// One retention run: the store sweep, the audit prune and the audit entry for both; a real run
/// is remembered for `status`. Used by the admin API, the offline CLI and the daemon's timer.
pub fn run_retention(
    store: &Store,
    audit: &AuditLog,
    policy: &RetentionPolicy,
    actor: crate::audit::Actor,
    request_id: Option<RequestId>,
    now: Timestamp,
    dry_run: bool,
) -> Result<RetentionRun, OpError> {
    let entry_base = |event, outcome| {
        let mut e = NewEntry::new(actor.clone(), event).outcome(outcome);
        if let Some(r) = request_id {
            e = e.request(r);
        }
        e
    };
    let swept = store.sweep(policy, now, dry_run);
    let pruned = swept
        .as_ref()
        .ok()
        .map(|_| audit.prune(policy.audit_days, now, actor.clone(), dry_run));
    let (report, prune) = match (swept, pruned) {
        (Ok(r), Some(Ok(p))) => (r, p),
        (swept, pruned) => {
            let failed = AuditEvent::RetentionPurge {
                messages_deleted: 0,
                customers_forgotten: 0,
                seen_ids_deleted: 0,
                audit_entries_pruned: 0,
                dry_run,
            };
            let _ = audit.append(entry_base(failed, Outcome::error("retention_failed")));
            return Err(match (swept, pruned) {
                (Err(e), _) => e.into(),
                (_, Some(Err(e))) => e.into(),
                _ => OpError::new(500, "retention failed"),
            });
        }
    };
    let run = RetentionRun {
        at: now,
        store: report.clone(),
        audit: prune,
        dry_run,
    };
    let mut batch = store.batch();
    if !dry_run {
        batch.insert(
            &store.keyspaces().meta,
            META_LAST_RETENTION,
            serde_json::to_vec(&run).expect("serialises"),
        );
    }
    audit.append_with(
        batch,
        entry_base(
            AuditEvent::RetentionPurge {
                messages_deleted: report.messages_deleted,
                customers_forgotten: report.customers_forgotten,
                seen_ids_deleted: report.seen_ids_deleted,
                audit_entries_pruned: prune.pruned,
                dry_run,
            },
            Outcome::Ok,
        ),
    )?;
    Ok(run)
}

/// `retention run`: [`run_retention`] with the configured policy.
pub fn retention(ctx: &Ctx, req: RetentionRequest) -> OpResult {
    let policy = ctx.state.config().retention;
    let run = run_retention(
        ctx.store(),
        &ctx.state.audit,
        &policy,
        ctx.caller.actor(),
        Some(ctx.request_id),
        Timestamp::now(),
        req.dry_run,
    )?;
    to_json(run)
}

/// `stats`: lead-funnel figures per period, audited as a read of statistics.
pub fn stats(ctx: &Ctx, req: StatsRequest) -> OpResult {
    let rates = ctx.state.config().whatsapp.pricing.rates();
    let report = crate::stats::report(ctx.store(), req.since, req.by, &rates)?;
    ctx.audit(ctx.entry(AuditEvent::StatsRead))?;
    to_json(report)
}

/// WhatsApp allows at most this many body parameters in practice; more is a typo.
const MAX_TEMPLATE_PARAMS: usize = 20;
/// Longest body parameter WhatsApp accepts.
const MAX_PARAM_CHARS: usize = 1024;

fn valid_template_name(s: &str) -> bool {
    (1..=512).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn valid_language(s: &str) -> bool {
    (2..=15).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_')
}

/// Checks a send request; the message never repeats the values (they may be personal data).
fn check_send(req: &SendRequest, language: &str) -> Result<String, OpError> {
    let to = crypto::normalise_phone(&req.phone);
    if !(8..=15).contains(&to.len()) {
        return Err(OpError::new(
            400,
            "not a phone number: give it in international form, e.g. +49 151 2345678",
        ));
    }
    if !valid_template_name(&req.template) {
        return Err(OpError::new(
            400,
            "template names are lowercase letters, digits and underscores, as approved in WhatsApp Manager",
        ));
    }
    if !valid_language(language) {
        return Err(OpError::new(
            400,
            "language must be a WhatsApp language code such as de or en_US",
        ));
    }
    if req.params.len() > MAX_TEMPLATE_PARAMS {
        return Err(OpError::new(
            400,
            format!("at most {MAX_TEMPLATE_PARAMS} template parameters"),
        ));
    }
    if req
        .params
        .iter()
        .any(|p| p.trim().is_empty() || p.chars().count() > MAX_PARAM_CHARS)
    {
        return Err(OpError::new(
            400,
            format!(
                "template parameters must be non-empty and at most {MAX_PARAM_CHARS} characters"
            ),
        ));
    }
    Ok(to)
}

/// Starts a chat with an approved template: the outbound history message, the outbox row and
/// the audit entry commit in one batch, then the sender is woken.
pub fn send(ctx: &Ctx, req: SendRequest) -> OpResult {
    const KIND: Code = Code::new("template");
    let language = req
        .language
        .clone()
        .unwrap_or_else(|| ctx.state.config().whatsapp.template_language.clone());
    let to = check_send(&req, &language)?;
    let p = ctx.store().pseudonym(&to);
    let event = AuditEvent::MessageSent { kind: KIND };
    let Some(outbox) = ctx.state.outbox() else {
        let _ = ctx.audit(
            ctx.entry(event)
                .about(&p)
                .outcome(Outcome::error("whatsapp_not_configured")),
        );
        return Err(OpError::new(
            503,
            "the WhatsApp channel is not running, nothing can be sent (see `frontdesk doctor`)",
        ));
    };
    let known = ctx.store().customer_meta(&p)?;
    if known.is_some_and(|m| m.mode == BotMode::OptedOut) {
        let _ = ctx.audit(
            ctx.entry(event)
                .about(&p)
                .outcome(Outcome::denied("opted_out")),
        );
        return Err(OpError::new(
            409,
            "this customer opted out of messages; nothing was sent",
        ));
    }
    let audit: &AuditLog = &ctx.state.audit;
    let entry = ctx.entry(event).about(&p);
    let now = Timestamp::now();
    let (_, (seq, pending)) = ctx.store().update_customer(&to, now, |c, batch, st| {
        let row = st.append_message(
            c,
            &crate::store::messages::Message {
                direction: crate::store::messages::Direction::Outbound,
                text: format!("[Vorlage {}]", req.template),
                at: now,
                wamid: None,
            },
            batch,
        )?;
        c.meta.last_contact = now;
        outbox.queues.push_outbox(
            st,
            batch,
            &c.pseudonym,
            &crate::whatsapp::queue::OutboxEntry {
                to: to.clone(),
                kind: crate::whatsapp::queue::OutboundKind::Template {
                    name: req.template.clone(),
                    language: language.clone(),
                    params: req.params.clone(),
                    buttons: Vec::new(),
                },
                created: now,
                history: vec![row],
            },
        )?;
        // The queued message and its entry become durable together.
        let pending = audit
            .append_in(batch, entry)
            .map_err(|e| StoreError::Format(e.to_string()))?;
        Ok((pending.record().seq, pending))
    })?;
    drop(pending);
    outbox.wake.notify_one();
    let config = ctx.state.config();
    let category = crate::whatsapp::templates::TemplateCategories::new(
        config.whatsapp.template_categories.clone(),
    )
    .lookup(ctx.store(), &req.template, &language)?;
    let price = config
        .whatsapp
        .pricing
        .rates()
        .micro_eur(category.category.pricing());
    to_json(SendReply {
        pseudonym: p.short(),
        new_customer: known.is_none(),
        audit_seq: seq,
        category: Some(category.category),
        category_source: Some(category.source),
        price_eur: Some(price as f64 / 1_000_000.0),
    })
}
