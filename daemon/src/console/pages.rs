//! What the console's pages show, read from the store and the audit log (blocking), and the
//! templates that render it (`templates/`, compiled and checked at build time by askama;
//! every value is HTML-escaped). German throughout.

use askama::Template;
use jiff::{tz::TimeZone, SignedDuration, Timestamp};

use super::accounts::Role;
use super::index::{place, InboxIndex, Place};
use crate::audit::{AuditFilter, AuditLog, StaffName};
use crate::store::crypto::Pseudonym;
use crate::store::customers::{BotMode, Customer, CustomerMeta};
use crate::store::messages::Direction;
use crate::store::{ks, Store, StoreError};
use crate::turn::attention::{self, Attention};

/// Hand-overs shown at once; the rest are counted.
const WAITING_SHOWN: usize = 100;
/// Recent conversations shown below the waiting ones.
const RECENT_SHOWN: usize = 30;
/// History rows shown on a conversation page.
const HISTORY_SHOWN: usize = 200;
/// Audit entries shown on a conversation page (the newest).
const AUDIT_SHOWN: usize = 50;
/// WhatsApp's customer service window.
const SERVICE_WINDOW: SignedDuration = SignedDuration::from_hours(24);

/// The signed-in member as the page header shows them.
pub struct UserView {
    /// Account name.
    pub name: String,
    /// Role, in German.
    pub role: &'static str,
    /// The session's CSRF token, for the sign-out form.
    pub csrf: String,
}

impl UserView {
    /// The header of `name` with `role` and the session's `csrf`.
    pub fn new(name: &StaffName, role: Role, csrf: &str) -> UserView {
        UserView {
            name: name.to_string(),
            role: role.label_de(),
            csrf: csrf.to_string(),
        }
    }
}

/// Times as the studio reads them.
fn local(t: Timestamp) -> String {
    t.to_zoned(TimeZone::get("Europe/Berlin").unwrap_or(TimeZone::UTC))
        .strftime("%d.%m.%Y %H:%M")
        .to_string()
}

/// A hand-over reason code in German.
pub fn reason_de(code: &str) -> &'static str {
    match code {
        "complaint" => "Beschwerde",
        "cancellation" => "Absage",
        "contract_question" => "Vertragsfrage",
        "health_question" => "Gesundheitsfrage",
        "person_requested" => "Möchte einen Menschen",
        "member_appointment" => "Termin (Mitglied)",
        "turn_failed" => "Nicht beantwortet",
        "booking_failed" => "Buchung fehlgeschlagen",
        "rescheduled" => "Termin verschoben",
        _ => "Übergeben",
    }
}

/// Why a conversation waits for a person, if it does.
fn waiting_reason(meta: &CustomerMeta, mark: Option<&Attention>) -> Option<&'static str> {
    match (mark, meta.mode) {
        (Some(a), _) => Some(reason_de(&a.reason)),
        (None, BotMode::Escalated) => Some("Übergeben"),
        (None, BotMode::Paused) => Some("Assistent pausiert"),
        (None, _) => None,
    }
}

/// The name staff see: first and last name, else the WhatsApp profile name.
pub fn display_name(c: &Customer) -> String {
    let p = &c.body.profile;
    match (&p.vorname, &p.nachname, &c.body.contact_name) {
        (Some(v), Some(n), _) => format!("{v} {n}"),
        (Some(v), None, _) => v.clone(),
        (None, Some(n), _) => n.clone(),
        (None, None, Some(contact)) => contact.clone(),
        (None, None, None) => "Unbekannt".to_string(),
    }
}

// ---- unread markers ----

const READ_PREFIX: &[u8] = b"console/read/";

fn read_key(p: &Pseudonym, staff: &StaffName) -> Vec<u8> {
    let mut k = READ_PREFIX.to_vec();
    k.extend_from_slice(&p.0);
    k.extend_from_slice(staff.as_str().as_bytes());
    k
}

/// Remembers, in `batch`, that `staff` has read `p`'s conversation up to `upto` (a clear meta
/// row: pseudonym, account name and a time, no personal data of the customer).
pub fn mark_read(
    store: &Store,
    batch: &mut fjall::OwnedWriteBatch,
    p: &Pseudonym,
    staff: &StaffName,
    upto: Timestamp,
) {
    batch.insert(
        &store.keyspaces().meta,
        read_key(p, staff),
        upto.as_nanosecond().to_be_bytes().to_vec(),
    );
}

fn read_upto(store: &Store, p: &Pseudonym, staff: &StaffName) -> Option<Timestamp> {
    let v = store.keyspaces().meta.get(read_key(p, staff)).ok()??;
    let nanos = i128::from_be_bytes(v.as_ref().try_into().ok()?);
    Timestamp::from_nanosecond(nanos).ok()
}

// ---- the inbox ----

/// One conversation in the inbox.
pub struct InboxRow {
    /// Short pseudonym (`c-…`), the conversation's address `/c/<id>`.
    pub id: String,
    /// The name staff see.
    pub name: String,
    /// Why it waits, when it does.
    pub reason: Option<&'static str>,
    /// Status in German.
    pub status: &'static str,
    /// Last contact, local time.
    pub at: String,
    /// Last contact, RFC 3339.
    pub at_iso: String,
    /// The contact wrote since this member last opened it.
    pub unread: bool,
}

/// The inbox: waiting conversations first, then the most recent others.
pub struct InboxList {
    /// Conversations that need a person (newest first, at most [`WAITING_SHOWN`]).
    pub waiting: Vec<InboxRow>,
    /// How many need a person in all.
    pub waiting_total: usize,
    /// The most recent other conversations.
    pub recent: Vec<InboxRow>,
}

impl InboxList {
    /// Rows shown (the count of names read, for the audit entry).
    pub fn shown(&self) -> usize {
        self.waiting.len() + self.recent.len()
    }
}

/// Reads the inbox as `staff` sees it: the rows to show come from `index`; only those rows'
/// sealed bodies, clear headers and marks are read, fresh. A row found out of place (changed
/// by a write the change feed does not carry) is filed anew and left off this page.
pub fn inbox(
    store: &Store,
    index: &InboxIndex,
    staff: &StaffName,
) -> Result<InboxList, StoreError> {
    let chosen = index.select(store, WAITING_SHOWN, RECENT_SHOWN)?;
    let rows = |ids: Vec<Pseudonym>, expected: Place| -> Result<Vec<InboxRow>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for p in ids {
            let c = store.customer(&p)?;
            let mark = attention::get(store, &p)?;
            let Some(c) = c.filter(|c| place(Some(c.meta.mode), mark.as_ref()) == Some(expected))
            else {
                index.refresh(store, &p)?;
                continue;
            };
            let meta = c.meta;
            let unread = match (meta.last_inbound, read_upto(store, &p, staff)) {
                (Some(inbound), Some(read)) => inbound > read,
                (Some(_), None) => true,
                (None, _) => false,
            };
            out.push(InboxRow {
                id: p.short(),
                name: display_name(&c),
                reason: waiting_reason(&meta, mark.as_ref()),
                status: c.status_label(),
                at: local(meta.last_contact),
                at_iso: meta.last_contact.to_string(),
                unread,
            });
        }
        Ok(out)
    };
    Ok(InboxList {
        waiting: rows(chosen.waiting, Place::Waiting)?,
        waiting_total: chosen.waiting_total,
        recent: rows(chosen.recent, Place::Recent)?,
    })
}

/// The inbox page.
#[derive(Template)]
#[template(path = "inbox.html")]
pub struct InboxPage {
    /// Header.
    pub user: Option<UserView>,
    /// Current navigation entry.
    pub nav: &'static str,
    /// The lists.
    pub list: InboxList,
}

/// The inbox's lists alone (live updates).
#[derive(Template)]
#[template(path = "inbox_list.html")]
pub struct InboxFragment {
    /// The lists.
    pub list: InboxList,
}

// ---- one conversation ----

/// One history row.
pub struct MessageView {
    /// `in`, `bot` or `staff` (CSS class).
    pub class: &'static str,
    /// Who wrote it, in German.
    pub who: &'static str,
    /// The text.
    pub text: String,
    /// Local time.
    pub at: String,
    /// RFC 3339.
    pub at_iso: String,
}

/// Everything the conversation page shows.
pub struct ConversationView {
    /// Short pseudonym.
    pub id: String,
    /// The name staff see.
    pub name: String,
    /// Status in German.
    pub status: &'static str,
    /// Why it waits, when it does.
    pub reason: Option<&'static str>,
    /// Escalated or marked: "hand back" is offered.
    pub needs_handback: bool,
    /// The assistant is paused for this contact.
    pub paused: bool,
    /// The contact opted out: nothing can be sent.
    pub opted_out: bool,
    /// The contact wrote within the last 24 hours: free text may be sent.
    pub window_open: bool,
    /// Approved templates to offer outside the window.
    pub templates: Vec<String>,
    /// The history, oldest first.
    pub messages: Vec<MessageView>,
    /// Profile fields that are known (label, value).
    pub profile: Vec<(String, String)>,
    /// Bookings (start, state).
    pub bookings: Vec<(String, String)>,
    /// The newest audit entries about the customer (time, actor, action).
    pub audit: Vec<(String, String, String)>,
    /// Messages read (for the audit entry).
    pub messages_read: u64,
    /// The newest message from the contact (the read marker).
    pub last_inbound: Option<Timestamp>,
}

fn message_view(m: crate::store::messages::Message) -> MessageView {
    let (class, who) = match m.direction {
        Direction::Inbound => ("in", "Kunde"),
        Direction::Outbound => ("bot", "Assistent"),
        Direction::Staff => ("staff", "Studio"),
    };
    MessageView {
        class,
        who,
        text: m.text,
        at: local(m.at),
        at_iso: m.at.to_string(),
    }
}

fn profile_rows(c: &Customer) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    let contact = c.address().unwrap_or_default().to_string();
    rows.push(("WhatsApp".to_string(), contact));
    if let Some(name) = &c.body.contact_name {
        rows.push(("Profilname".to_string(), name.clone()));
    }
    // The profile's fields by their German names, as the engine stores them.
    if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(&c.body.profile) {
        for (k, v) in fields {
            let text = match v {
                serde_json::Value::Null => continue,
                serde_json::Value::String(s) if s.is_empty() => continue,
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            rows.push((k.replace('_', " "), text));
        }
    }
    if let Some(source) = &c.body.lead_source {
        if let Some(headline) = &source.headline {
            rows.push(("Anzeige".to_string(), headline.clone()));
        }
    }
    rows.push(("Erster Kontakt".to_string(), local(c.meta.first_contact)));
    rows
}

/// A booking row's state in German, read from its sealed JSON (the booker's record).
fn booking_state(v: &serde_json::Value) -> String {
    let step = v.get("step").and_then(|s| s.as_str()).unwrap_or("");
    let text = match step {
        "confirmed" => "gebucht",
        "booked" if v.get("confirmation_required") == Some(&serde_json::Value::Bool(true)) => {
            "gebucht, Bestätigung ausstehend"
        }
        "booked" => "gebucht",
        "slot_taken" => "Termin war vergeben",
        "failed" => "fehlgeschlagen",
        "canceled" | "cancelled" => "storniert",
        _ => "in Bearbeitung",
    };
    match v.get("failure").and_then(|f| f.as_str()) {
        Some(f) => format!("{text} ({f})"),
        None => text.to_string(),
    }
}

/// The start of a booking row's sealed JSON.
fn booking_start(record: &serde_json::Value) -> Option<jiff::Zoned> {
    record.get("start")?.as_str()?.parse().ok()
}

fn bookings(store: &Store, p: &Pseudonym) -> Result<Vec<(String, String)>, StoreError> {
    let Some(key) = store.data_key(p)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for g in store.keyspaces().bookings.prefix(p.0) {
        let (k, v) = g.into_inner()?;
        let Ok(plain) = key.open(ks::BOOKINGS, &k, &v) else {
            continue;
        };
        let Ok(record) = serde_json::from_slice::<serde_json::Value>(&plain) else {
            continue;
        };
        let start =
            booking_start(&record).map_or_else(|| "?".to_string(), |z| local(z.timestamp()));
        out.push((start, booking_state(&record)));
    }
    Ok(out)
}

fn audit_rows(audit: &AuditLog, p: &Pseudonym) -> Vec<(String, String, String)> {
    let filter = AuditFilter {
        subject: Some(p.short()),
        ..AuditFilter::default()
    };
    let mut rows = Vec::new();
    let _ = audit.for_each(&filter, |r| {
        let outcome = r.outcome.code();
        let what = if outcome == "ok" {
            r.action.clone()
        } else {
            format!("{} ({outcome})", r.action)
        };
        rows.push((local(r.time), r.actor.label(), what));
        true
    });
    let skip = rows.len().saturating_sub(AUDIT_SHOWN);
    rows.drain(..skip);
    rows.reverse();
    rows
}

/// Reads `p`'s conversation; `None` when there is no such customer.
pub fn conversation(
    store: &Store,
    audit: &AuditLog,
    p: &Pseudonym,
    templates: Vec<String>,
    now: Timestamp,
) -> Result<Option<ConversationView>, StoreError> {
    let Some(c) = store.customer(p)? else {
        return Ok(None);
    };
    let mark = attention::get(store, p)?;
    let history = store.recent_messages(p, HISTORY_SHOWN)?;
    let messages_read = history.len() as u64;
    Ok(Some(ConversationView {
        id: p.short(),
        name: display_name(&c),
        status: c.status_label(),
        reason: waiting_reason(&c.meta, mark.as_ref()),
        needs_handback: c.meta.mode == BotMode::Escalated
            || c.meta.mode == BotMode::Paused
            || mark.is_some(),
        paused: c.meta.mode == BotMode::Paused,
        opted_out: c.meta.mode == BotMode::OptedOut,
        window_open: c
            .meta
            .last_inbound
            .is_some_and(|t| now.duration_since(t) < SERVICE_WINDOW),
        templates,
        messages: history.into_iter().map(message_view).collect(),
        profile: profile_rows(&c),
        bookings: bookings(store, p)?,
        audit: audit_rows(audit, p),
        messages_read,
        last_inbound: c.meta.last_inbound,
    }))
}

/// The conversation page.
#[derive(Template)]
#[template(path = "conversation.html")]
pub struct ConversationPage {
    /// Header.
    pub user: Option<UserView>,
    /// Current navigation entry.
    pub nav: &'static str,
    /// The session's CSRF token for the forms.
    pub user_csrf: String,
    /// Owner actions are offered.
    pub owner: bool,
    /// A note about the last action (`Gesendet.`).
    pub notice: Option<String>,
    /// The conversation.
    pub c: ConversationView,
}

/// The history alone (live updates).
#[derive(Template)]
#[template(path = "history.html")]
pub struct HistoryFragment {
    /// The conversation.
    pub c: ConversationView,
}

// ---- trials ----

/// Days ahead the trials page shows.
const TRIAL_DAYS: i64 = 14;

/// One booked trial.
pub struct TrialRow {
    /// The day, `Mi 03.12.`.
    pub day: String,
    /// The time, `10:00`.
    pub time: String,
    /// The name staff see.
    pub name: String,
    /// The booking's state in German.
    pub state: String,
    /// Short pseudonym (link to the conversation).
    pub id: String,
}

fn weekday_de(day: jiff::civil::Weekday) -> &'static str {
    use jiff::civil::Weekday::*;
    match day {
        Monday => "Mo",
        Tuesday => "Di",
        Wednesday => "Mi",
        Thursday => "Do",
        Friday => "Fr",
        Saturday => "Sa",
        Sunday => "So",
    }
}

/// Trials from the start of today (studio time) to [`TRIAL_DAYS`] ahead, by start time: every
/// bookings row opened with its customer's key.
pub fn trials(store: &Store, now: Timestamp) -> Result<Vec<TrialRow>, StoreError> {
    let tz = TimeZone::get("Europe/Berlin").unwrap_or(TimeZone::UTC);
    let today = now
        .to_zoned(tz.clone())
        .start_of_day()
        .map_err(|e| StoreError::Format(e.to_string()))?
        .timestamp();
    let until = today + SignedDuration::from_hours(24 * TRIAL_DAYS);
    let mut rows: Vec<(Timestamp, TrialRow)> = Vec::new();
    let mut current: Option<(
        Pseudonym,
        Option<std::sync::Arc<crate::store::crypto::DataKey>>,
        String,
    )> = None;
    for g in store.keyspaces().bookings.iter() {
        let (k, v) = g.into_inner()?;
        let Some(p) = Pseudonym::from_key_prefix(&k) else {
            continue;
        };
        if current.as_ref().is_none_or(|(q, _, _)| *q != p) {
            let name = store
                .customer(&p)?
                .map_or_else(|| "Unbekannt".to_string(), |c| display_name(&c));
            current = Some((p, store.data_key(&p)?, name));
        }
        let Some((_, Some(key), name)) = &current else {
            continue;
        };
        let Ok(plain) = key.open(ks::BOOKINGS, &k, &v) else {
            continue;
        };
        let Ok(record) = serde_json::from_slice::<serde_json::Value>(&plain) else {
            continue;
        };
        let Some(start) = booking_start(&record) else {
            continue;
        };
        let at = start.timestamp();
        if at < today || at >= until {
            continue;
        }
        let local = at.to_zoned(tz.clone());
        rows.push((
            at,
            TrialRow {
                day: format!(
                    "{} {}",
                    weekday_de(local.weekday()),
                    local.strftime("%d.%m.")
                ),
                time: local.strftime("%H:%M").to_string(),
                name: name.clone(),
                state: booking_state(&record),
                id: p.short(),
            },
        ));
    }
    rows.sort_by_key(|(at, _)| *at);
    Ok(rows.into_iter().map(|(_, r)| r).collect())
}

/// The trials page.
#[derive(Template)]
#[template(path = "trials.html")]
pub struct TrialsPage {
    /// Header.
    pub user: Option<UserView>,
    /// Current navigation entry.
    pub nav: &'static str,
    /// The trials, by start.
    pub trials: Vec<TrialRow>,
}

/// The sign-in page.
#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    /// Never a header here.
    pub user: Option<UserView>,
    /// Current navigation entry.
    pub nav: &'static str,
    /// The sign-in form's CSRF token (also in its cookie).
    pub csrf: String,
    /// Where to go after signing in (a console path).
    pub next: String,
    /// The name typed before, on a failed attempt.
    pub name: String,
    /// What went wrong.
    pub error: Option<&'static str>,
}

/// An error page.
#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    /// Header, when signed in.
    pub user: Option<UserView>,
    /// Current navigation entry.
    pub nav: &'static str,
    /// Heading.
    pub title: &'static str,
    /// What happened and what to do.
    pub message: &'static str,
}
