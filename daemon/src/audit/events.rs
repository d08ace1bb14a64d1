//! What an entry can say: who acted ([`Actor`]), what happened ([`AuditEvent`] and its
//! [`Detail`]s), why ([`Purpose`]), with what result ([`Outcome`], [`Status`], [`Code`]) and about
//! whom ([`ShortPseudonym`]), gathered in a [`NewEntry`] before it is chained.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{AuditError, Hash, Result};
use crate::store::crypto::Pseudonym;

/// The action of checkpoint entries written when old entries are pruned.
pub const CHECKPOINT_ACTION: &str = "audit.checkpoint";

/// A customer pseudonym in its short form (`c-` + 12 hex digits). Only a [`Pseudonym`] (or a
/// stored entry, validated) makes one, so no other text can stand in an entry's subject.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize)]
#[serde(transparent)]
pub struct ShortPseudonym(pub(super) String);

impl ShortPseudonym {
    /// The text, `c-` and 12 hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn valid(s: &str) -> bool {
        s.len() == 14
            && s.starts_with("c-")
            && s[2..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }
}

impl From<&Pseudonym> for ShortPseudonym {
    fn from(p: &Pseudonym) -> Self {
        ShortPseudonym(p.short())
    }
}

impl<'de> Deserialize<'de> for ShortPseudonym {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if ShortPseudonym::valid(&s) {
            Ok(ShortPseudonym(s))
        } else {
            Err(serde::de::Error::custom("not a short pseudonym"))
        }
    }
}

impl fmt::Display for ShortPseudonym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A console account name: 1 to 32 of lowercase ASCII letters, digits, `.`, `_` and `-`,
/// starting with a letter, so a name in the audit log is a login, never free text.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize)]
#[serde(transparent)]
pub struct StaffName(String);

impl StaffName {
    /// The name, when `s` is a valid account name.
    pub fn parse(s: &str) -> Option<StaffName> {
        let ok = (1..=32).contains(&s.len())
            && s.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_' || b == b'-'
            });
        ok.then(|| StaffName(s.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StaffName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for StaffName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        StaffName::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(
                "account names are 1 to 32 lowercase letters, digits, '.', '_' or '-', starting with a letter",
            )
        })
    }
}

/// Who acted.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Actor {
    /// A person at the admin socket or running an offline verb: Unix uid and user name.
    Admin {
        /// Unix user id.
        uid: u32,
        /// User name from the password database (`uid<N>` when there is none).
        name: String,
    },
    /// The daemon on its own (retention, start-up, tunnel).
    System,
    /// A customer, through their WhatsApp messages.
    Customer {
        /// Whose messages they were.
        pseudonym: ShortPseudonym,
    },
    /// The relay (webhook deliveries arriving through the tunnel).
    Relay,
    /// A staff member signed in to the console: their account name (lowercase letters,
    /// digits, `.`, `_`, `-`; set by the admin with `frontdesk staff add`).
    Staff {
        /// The account name.
        name: String,
    },
}

impl Actor {
    /// The staff member with account `name`.
    pub fn staff(name: &StaffName) -> Actor {
        Actor::Staff {
            name: name.as_str().to_string(),
        }
    }

    /// The customer with pseudonym `p`.
    pub fn customer(p: &Pseudonym) -> Actor {
        Actor::Customer {
            pseudonym: p.into(),
        }
    }

    /// The admin running this process (offline verbs).
    pub fn current_user() -> Actor {
        let uid = crate::sys::uid();
        Actor::Admin {
            uid,
            name: user_name(uid).unwrap_or_else(|| format!("uid{uid}")),
        }
    }

    /// `admin:UID:NAME`, `system`, `customer:c-…` or `relay` (journal field, CSV, filters).
    pub fn label(&self) -> String {
        match self {
            Actor::Admin { uid, name } => format!("admin:{uid}:{name}"),
            Actor::System => "system".into(),
            Actor::Customer { pseudonym } => format!("customer:{pseudonym}"),
            Actor::Relay => "relay".into(),
            Actor::Staff { name } => format!("staff:{name}"),
        }
    }

    /// Matches an `--actor` filter: `system`, `relay`, `customer`, `admin`, `staff`, a uid, a
    /// user or staff account name, a short pseudonym or a whole label.
    pub fn matches(&self, filter: &str) -> bool {
        let label = self.label();
        if label == filter {
            return true;
        }
        match self {
            Actor::Admin { uid, name } => {
                filter == "admin" || filter == uid.to_string() || filter == name
            }
            Actor::Customer { pseudonym } => filter == "customer" || filter == pseudonym.as_str(),
            Actor::System => filter == "system",
            Actor::Relay => filter == "relay",
            Actor::Staff { name } => filter == "staff" || filter == name,
        }
    }
}

/// The user name of a uid from the password database.
pub fn user_name(uid: u32) -> Option<String> {
    crate::sys::user_name(uid)
}

/// Why it was done (the legal basis an auditor asks for).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Purpose {
    /// A data-subject request under the GDPR (access, erasure, portability).
    DsgvoRequest,
    /// Staff helping a customer.
    Support,
    /// Booking a trial training.
    Booking,
    /// Deletion by age.
    Retention,
    /// Access control, verification, rejected requests.
    Security,
    /// Running the service.
    Operations,
}

impl Purpose {
    /// The stored name (`dsgvo-request`, `support`, …).
    pub fn code(self) -> &'static str {
        match self {
            Purpose::DsgvoRequest => "dsgvo-request",
            Purpose::Support => "support",
            Purpose::Booking => "booking",
            Purpose::Retention => "retention",
            Purpose::Security => "security",
            Purpose::Operations => "operations",
        }
    }

    /// The purpose with stored name `s`, if there is one.
    pub fn parse(s: &str) -> Option<Purpose> {
        [
            Purpose::DsgvoRequest,
            Purpose::Support,
            Purpose::Booking,
            Purpose::Retention,
            Purpose::Security,
            Purpose::Operations,
        ]
        .into_iter()
        .find(|p| p.code() == s)
    }
}

/// Whether it worked.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The action was done.
    Ok,
    /// The action was refused (access rule, opt-out, …).
    Denied,
    /// The action failed.
    Error,
}

impl Status {
    /// The stored name: `ok`, `denied` or `error`.
    pub fn code(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Denied => "denied",
            Status::Error => "error",
        }
    }
}

/// A reason code: a string literal from the source (`not_admin`, `bad_signature`, …), never
/// runtime text.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Code(&'static str);

impl Code {
    /// Codes are lowercase ASCII letters, digits, `_`, `-` and `.`.
    pub const fn new(code: &'static str) -> Code {
        let b = code.as_bytes();
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            assert!(
                c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-' || c == b'.',
                "audit codes are lowercase ASCII"
            );
            i += 1;
        }
        Code(code)
    }

    /// The code as stored.
    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

/// Outcome of the audited action.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Outcome {
    /// The action was done.
    Ok,
    /// The action was refused, for the reason in the code.
    Denied(Code),
    /// The action failed, for the reason in the code.
    Error(Code),
}

impl Outcome {
    /// Refused for reason `code` (a literal; panics unless lowercase ASCII).
    pub fn denied(code: &'static str) -> Outcome {
        Outcome::Denied(Code::new(code))
    }

    /// Failed for reason `code` (a literal; panics unless lowercase ASCII).
    pub fn error(code: &'static str) -> Outcome {
        Outcome::Error(Code::new(code))
    }
}

/// Why a customer was forgotten. The free text an admin types stays out of the log.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForgetReason {
    /// An erasure request under Art. 17 GDPR.
    DsgvoRequest,
    /// The customer asked informally.
    CustomerRequest,
    /// Anything else (the admin keeps their own note).
    Other,
}

/// What happened. One variant per kind of audited action; the serde name is the stable dotted
/// action name and the fields are the entry's details (counts, flags and codes only).
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "action")]
pub enum AuditEvent {
    /// An admin read one customer's record (`customers show`).
    #[serde(rename = "customer.read")]
    CustomerRead {
        /// Messages shown.
        messages: u64,
    },
    /// An admin listed customers without names.
    #[serde(rename = "customer.list")]
    CustomerList {
        /// Customers listed.
        count: u64,
    },
    /// An admin listed customers with their names (a read of personal data).
    #[serde(rename = "customer.list_names")]
    CustomerListNames {
        /// Customers listed.
        count: u64,
    },
    /// A customer's data left the box as an encrypted export (written before the bytes leave).
    #[serde(rename = "customer.export")]
    CustomerExport {
        /// Messages in the export.
        messages: u64,
        /// Booking rows in the export.
        bookings: u64,
        /// Audit entries about the customer in the export.
        audit_entries: u64,
    },
    /// A customer was forgotten (rows deleted, key crypto-shredded).
    #[serde(rename = "customer.forget")]
    CustomerForget {
        /// Why, as the admin gave it.
        reason: ForgetReason,
        /// There was data to delete.
        existed: bool,
    },
    /// The bot was paused for one customer.
    #[serde(rename = "customer.pause")]
    CustomerPause,
    /// The bot was resumed for one customer.
    #[serde(rename = "customer.resume")]
    CustomerResume,
    /// The conversation was handed over to staff (complaint, cancellation).
    #[serde(rename = "customer.escalate")]
    CustomerEscalate {
        /// Why (`complaint`, `cancellation`, …).
        reason: Code,
    },
    /// The customer opted out of messages.
    #[serde(rename = "customer.opt_out")]
    CustomerOptOut,
    /// WhatsApp announced a new phone number or user id for the customer and their data moved
    /// to it; the entry's subject is the customer after the move.
    #[serde(rename = "customer.moved")]
    CustomerMoved {
        /// What changed: `number` or `user_id`.
        change: Code,
        /// The customer before the move (equal to the subject when only the record changed).
        from: ShortPseudonym,
        /// History rows moved.
        messages: u64,
        /// Booking rows moved.
        bookings: u64,
        /// The new identity had a record already and the two were merged.
        merged: bool,
    },
    /// A booking request started or resumed; MagicLine calls follow.
    ///
    /// `flow`, here and in the other `booking.*` events that have it: `member` when the person's
    /// MagicLine customer id is known at this step (a member, a customer matched by id or e-mail,
    /// or a lead created earlier), `lead` while it is not.
    #[serde(rename = "booking.attempt")]
    BookingAttempt {
        /// `member` or `lead`.
        flow: Code,
    },
    /// A lead (prospect) was created in MagicLine for the person.
    #[serde(rename = "booking.lead_created")]
    BookingLeadCreated {
        /// `member` or `lead`.
        flow: Code,
    },
    /// The person was recognised as an existing MagicLine customer (by id, by e-mail or as the
    /// lead of an earlier request).
    #[serde(rename = "booking.customer_matched")]
    BookingCustomerMatched {
        /// `member` or `lead`.
        flow: Code,
    },
    /// MagicLine holds the booking (possibly awaiting confirmation, see `booking.confirmed`).
    #[serde(rename = "booking.booked")]
    BookingBooked {
        /// `member` or `lead`.
        flow: Code,
        /// MagicLine's id of the booking, when it sent one.
        #[serde(skip_serializing_if = "Option::is_none")]
        booking_id: Option<u64>,
    },
    /// A booking that awaited confirmation was confirmed.
    #[serde(rename = "booking.confirmed")]
    BookingConfirmed {
        /// `member` or `lead`.
        flow: Code,
        /// MagicLine's id of the booking, when it sent one.
        #[serde(skip_serializing_if = "Option::is_none")]
        booking_id: Option<u64>,
    },
    /// The wished slot was not free and alternatives were offered. This is MagicLine's answer,
    /// not a fault, so the outcome is ok.
    #[serde(rename = "booking.slot_taken")]
    BookingSlotTaken {
        /// `member` or `lead`.
        flow: Code,
    },
    /// A booking request failed (reason code in the outcome).
    #[serde(rename = "booking.failed")]
    BookingFailed {
        /// `member` or `lead`.
        flow: Code,
    },
    /// A booking was cancelled in MagicLine.
    #[serde(rename = "booking.canceled")]
    BookingCanceled {
        /// MagicLine's id of the booking, when known.
        #[serde(skip_serializing_if = "Option::is_none")]
        booking_id: Option<u64>,
    },
    /// Cancelling a booking failed (reason code in the outcome).
    #[serde(rename = "booking.cancel_failed")]
    BookingCancelFailed {
        /// MagicLine's id of the booking, when known.
        #[serde(skip_serializing_if = "Option::is_none")]
        booking_id: Option<u64>,
    },
    /// Staff cancelled a booking in MagicLine (learnt from a webhook event or the poll).
    #[serde(rename = "booking.canceled_in_magicline")]
    BookingCanceledInMagicline {
        /// MagicLine's id of the booking.
        #[serde(skip_serializing_if = "Option::is_none")]
        booking_id: Option<u64>,
    },
    /// Staff moved a booking to another time in MagicLine.
    #[serde(rename = "booking.moved_in_magicline")]
    BookingMovedInMagicline {
        /// MagicLine's id of the booking.
        #[serde(skip_serializing_if = "Option::is_none")]
        booking_id: Option<u64>,
    },
    /// The person checked in at the studio for a booked trial.
    #[serde(rename = "booking.checked_in")]
    BookingCheckedIn {
        /// MagicLine's id of the booking.
        #[serde(skip_serializing_if = "Option::is_none")]
        booking_id: Option<u64>,
    },
    /// A booked trial's slot passed without a check-in.
    #[serde(rename = "booking.no_show")]
    BookingNoShow {
        /// MagicLine's id of the booking.
        #[serde(skip_serializing_if = "Option::is_none")]
        booking_id: Option<u64>,
    },
    /// A MagicLine webhook request was rejected (`api_key_missing`, `api_key_wrong`,
    /// `malformed`, `too_large`, …).
    #[serde(rename = "magicline.webhook_rejected")]
    MagiclineWebhookRejected {
        /// Why.
        reason: Code,
    },
    /// A webhook request was rejected (bad signature, too large, malformed …).
    #[serde(rename = "webhook.rejected")]
    WebhookRejected {
        /// Why (`bad_signature`, `too_large`, …).
        reason: Code,
    },
    /// Inbound messages were dropped without an answer or a customer record (`reason`:
    /// `invalid_sender` for an address that is neither a phone number nor a WhatsApp user id).
    #[serde(rename = "message.dropped")]
    MessageDropped {
        /// Why they were dropped.
        reason: Code,
        /// How many were dropped.
        messages: u64,
    },
    /// WhatsApp delivered a message it could not pass on whole (`unsupported_type`
    /// 131051, `media_download` 131052); the contact got the non-text answer.
    #[serde(rename = "message.unreadable")]
    MessageUnreadable {
        /// The error code's meaning.
        reason: Code,
        /// WhatsApp's error code.
        code: i64,
    },
    /// One of the studio's staff numbers wrote to the business number: not handed to the
    /// assistant, nothing stored; `answered` when it got the pointer to the console.
    #[serde(rename = "message.from_staff")]
    MessageFromStaff {
        /// The pointer to the console was sent (at most once a day per number).
        answered: bool,
    },
    /// A queue row could not be opened (damaged bytes or key file) and was moved to the
    /// quarantine; the rest of the queue carries on.
    #[serde(rename = "queue.row_quarantined")]
    QueueRowQuarantined {
        /// The queue (`inbox`, `outbox`).
        queue: Code,
    },
    /// A WhatsApp message was sent (`kind`: text, template, …).
    #[serde(rename = "message.sent")]
    MessageSent {
        /// What was sent (`text`, `template`, …).
        kind: Code,
    },
    /// A WhatsApp message could not be sent (Graph API error code when known).
    #[serde(rename = "message.failed")]
    MessageFailed {
        /// What was to be sent (`text`, `template`, …).
        kind: Code,
        /// The Graph API's error code.
        #[serde(skip_serializing_if = "Option::is_none")]
        api_code: Option<u64>,
    },
    /// A message failed with a Graph error code that has its own handling, at the send call or
    /// later by a `failed` status webhook, and what was done about it.
    #[serde(rename = "message.delivery_failed")]
    MessageDeliveryFailed {
        /// What was to be sent (`text`, `template`).
        kind: Code,
        /// The Graph API's error code.
        #[serde(skip_serializing_if = "Option::is_none")]
        api_code: Option<u64>,
        /// The code's meaning (`window_closed`, `spam_limit`, `template_paused`, …).
        reason: Code,
        /// What was done (`reopen_template`, `retry_later`, `staff_alert`, `slowed_down`, …).
        handling: Code,
        /// Reported by a status webhook after the send call had succeeded.
        delayed: bool,
    },
    /// A staff alert went out on one channel (`whatsapp`: handed to the outbox for each staff
    /// number; `email`: the SMTP server accepted it). Never the name or the address.
    #[serde(rename = "staff.alert_sent")]
    StaffAlertSent {
        /// Why staff were alerted (`complaint`, `booking_failed`, `sender_paused`, …).
        reason: Code,
        /// `whatsapp` or `email`.
        channel: Code,
        /// How many staff numbers or mail recipients.
        recipients: u64,
    },
    /// A scheduled message to a customer (a reminder before a booked trial, a follow-up after
    /// it) went into the outbox, in the write that retired its schedule row.
    #[serde(rename = "reminder.sent")]
    ReminderSent {
        /// What it was (`reminder_early`, `reminder_late`, `thank_you`, `no_show`,
        /// `sign_up_question`).
        kind: Code,
        /// MagicLine's id of the booking it is about.
        booking_id: u64,
    },
    /// A scheduled message was retired without being sent (`reason`: `opted_out`,
    /// `canceled`, `forgotten`, `handed_over`, `paused`, `disabled`, `no_contact`).
    #[serde(rename = "reminder.skipped")]
    ReminderSkipped {
        /// What it was to be.
        kind: Code,
        /// Why it was not sent.
        reason: Code,
    },
    /// The contact tapped a button of a reminder or follow-up (`button`: `confirm`,
    /// `reschedule`, `cancel`); the outcome says whether it was done.
    #[serde(rename = "reminder.tapped")]
    ReminderTapped {
        /// What the button asks for.
        button: Code,
        /// MagicLine's id of the booking it is about.
        booking_id: u64,
    },
    /// A retention run (counts of what it deleted or, in a dry run, would delete).
    #[serde(rename = "retention.purge")]
    RetentionPurge {
        /// Messages past their retention period.
        messages_deleted: u64,
        /// Customers inactive past their retention period, crypto-shredded.
        customers_forgotten: u64,
        /// Remembered WhatsApp message ids (for de-duplication) past their time.
        seen_ids_deleted: u64,
        /// Audit entries past their retention period.
        audit_entries_pruned: u64,
        /// Nothing was deleted; the counts say what would have been.
        dry_run: bool,
    },
    /// Old audit entries were pruned; the chain continues from the last pruned entry.
    #[serde(rename = "audit.checkpoint")]
    AuditCheckpoint {
        /// Sequence number of the last pruned entry.
        last_pruned_seq: u64,
        /// Hash of the last pruned entry, which the next entry chains to.
        last_pruned_hash: Hash,
        /// How many entries were pruned.
        pruned: u64,
    },
    /// The audit log was read (`audit show`).
    #[serde(rename = "audit.read")]
    AuditRead {
        /// Entries shown.
        entries: u64,
    },
    /// The audit log was exported (`format`: jsonl or csv).
    #[serde(rename = "audit.export")]
    AuditExport {
        /// Entries exported.
        entries: u64,
        /// `jsonl` or `csv`.
        format: Code,
    },
    /// The audit chain was verified (`intact` tells the result).
    #[serde(rename = "audit.verify")]
    AuditVerify {
        /// Entries checked (0 when the chain is broken).
        entries: u64,
        /// The chain is unbroken.
        intact: bool,
    },
    /// The lead-funnel statistics were read.
    #[serde(rename = "stats.read")]
    StatsRead,
    /// The service status was read.
    #[serde(rename = "admin.status")]
    AdminStatus,
    /// A caller outside root and the admin group was turned away.
    #[serde(rename = "admin.denied")]
    AdminDenied {
        /// The endpoint asked for (`customers.show`, …).
        endpoint: Code,
    },
    /// A backup of the whole store was written.
    #[serde(rename = "store.backup")]
    StoreBackup {
        /// Records written.
        records: u64,
        /// Size before encryption.
        bytes: u64,
    },
    /// The store was replaced by a backup; `replaced_*` name the head of the log it replaced.
    #[serde(rename = "store.restore")]
    StoreRestore {
        /// Records restored.
        records: u64,
        /// Erasures from the forget ledger applied again after the restore.
        erasures_reapplied: u64,
        /// Sequence number of the replaced log's last entry.
        #[serde(skip_serializing_if = "Option::is_none")]
        replaced_head_seq: Option<u64>,
        /// Hash of the replaced log's last entry.
        #[serde(skip_serializing_if = "Option::is_none")]
        replaced_head_hash: Option<Hash>,
    },
    /// Every data key was re-wrapped to a new store identity.
    #[serde(rename = "store.identity_rotated")]
    IdentityRotated {
        /// Data keys re-wrapped.
        keys: u64,
    },
    /// The configuration was loaded at start.
    #[serde(rename = "config.loaded")]
    ConfigLoaded,
    /// The configuration was reloaded (SIGHUP).
    #[serde(rename = "config.reloaded")]
    ConfigReloaded {
        /// The new configuration was valid and is in use.
        ok: bool,
    },
    /// The service started.
    #[serde(rename = "service.started")]
    ServiceStarted {
        /// The daemon's version.
        version: Code,
    },
    /// The service stopped.
    #[serde(rename = "service.stopped")]
    ServiceStopped,
    /// Someone signed in to the console (the outcome says whether it worked: `denied` with
    /// `wrong_password`, `unknown_account` or `locked`). The actor is the account named.
    #[serde(rename = "staff.login")]
    StaffLogin,
    /// A staff member signed out of the console.
    #[serde(rename = "staff.logout")]
    StaffLogout,
    /// A staff member opened a customer's conversation in the console (a read).
    #[serde(rename = "staff.conversation_opened")]
    ConversationOpened {
        /// Messages shown.
        messages: u64,
    },
    /// A staff member answered a customer from the console (through the outbox, like a reply).
    #[serde(rename = "staff.reply")]
    StaffReply {
        /// `text` inside the 24-hour window, `template` outside it.
        kind: Code,
    },
    /// A staff member's action in the console was refused (role, CSRF token).
    #[serde(rename = "staff.denied")]
    StaffDenied {
        /// What was asked for (`forget`, `export`, `csrf` for a form without its token).
        attempted: Code,
    },
    /// A console account was created, changed or removed through the admin socket.
    #[serde(rename = "staff.account")]
    StaffAccount {
        /// `added`, `password_changed` or `removed`.
        change: Code,
        /// The account.
        account: StaffName,
        /// `owner` or `staff` (the role after the change).
        role: Code,
    },
    /// The tunnel to the relay is up.
    #[serde(rename = "tunnel.connected")]
    TunnelConnected,
    /// The tunnel to the relay was lost.
    #[serde(rename = "tunnel.lost")]
    TunnelLost {
        /// Why the connection ended.
        reason: Code,
    },
    /// The relay refused this box's token.
    #[serde(rename = "tunnel.auth_failed")]
    TunnelAuthFailed,
}

impl AuditEvent {
    /// The purpose an event has unless the caller says otherwise.
    pub fn default_purpose(&self) -> Purpose {
        use AuditEvent::*;
        match self {
            CustomerExport { .. } | CustomerForget { .. } => Purpose::DsgvoRequest,
            CustomerRead { .. }
            | CustomerList { .. }
            | CustomerListNames { .. }
            | CustomerPause
            | CustomerResume
            | CustomerEscalate { .. }
            | CustomerOptOut
            | CustomerMoved { .. }
            | ConversationOpened { .. }
            | StaffReply { .. } => Purpose::Support,
            BookingAttempt { .. }
            | BookingLeadCreated { .. }
            | BookingCustomerMatched { .. }
            | BookingBooked { .. }
            | BookingConfirmed { .. }
            | BookingSlotTaken { .. }
            | BookingFailed { .. }
            | BookingCanceled { .. }
            | BookingCancelFailed { .. }
            | BookingCanceledInMagicline { .. }
            | BookingMovedInMagicline { .. }
            | BookingCheckedIn { .. }
            | BookingNoShow { .. }
            | ReminderSent { .. }
            | ReminderSkipped { .. }
            | ReminderTapped { .. } => Purpose::Booking,
            RetentionPurge { .. } | AuditCheckpoint { .. } => Purpose::Retention,
            WebhookRejected { .. }
            | MagiclineWebhookRejected { .. }
            | MessageDropped { .. }
            | AdminDenied { .. }
            | AuditVerify { .. }
            | AuditRead { .. }
            | AuditExport { .. }
            | IdentityRotated { .. }
            | StaffLogin
            | StaffLogout
            | StaffDenied { .. }
            | StaffAccount { .. }
            | TunnelAuthFailed => Purpose::Security,
            _ => Purpose::Operations,
        }
    }

    /// The action name and the details, as stored.
    pub(super) fn split(&self) -> Result<(String, BTreeMap<String, Detail>)> {
        let value = serde_json::to_value(self).expect("audit events serialise");
        let serde_json::Value::Object(map) = value else {
            unreachable!("internally tagged enums serialise to objects")
        };
        let mut action = String::new();
        let mut details = BTreeMap::new();
        for (k, v) in map {
            if k == "action" {
                action = v.as_str().unwrap_or_default().to_string();
                continue;
            }
            let d = match v {
                serde_json::Value::Bool(b) => Detail::Flag(b),
                serde_json::Value::Number(n) => {
                    Detail::Count(n.as_u64().ok_or_else(|| AuditError::BadDetail(k.clone()))?)
                }
                serde_json::Value::String(s) => Detail::Code(s),
                serde_json::Value::Null => continue,
                _ => return Err(AuditError::BadDetail(k)),
            };
            details.insert(k, d);
        }
        Ok((action, details))
    }

    /// The stable dotted action name (`customer.forget`, …).
    pub fn action(&self) -> String {
        self.split().map(|(a, _)| a).unwrap_or_default()
    }
}

/// One detail value of a stored entry.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Detail {
    /// A number (messages, entries, ids).
    Count(u64),
    /// A yes/no fact.
    Flag(bool),
    /// A code or short name (reason, format, flow).
    Code(String),
}

/// A new entry before it gets its place in the chain.
#[derive(Clone, Debug)]
pub struct NewEntry {
    /// Who acted.
    pub actor: Actor,
    /// What happened.
    pub event: AuditEvent,
    /// The customer it concerns; stored as the short pseudonym.
    pub subject: Option<Pseudonym>,
    /// Why it was done.
    pub purpose: Purpose,
    /// Whether it worked.
    pub outcome: Outcome,
    /// The admin call or webhook it belongs to.
    pub request_id: Option<RequestId>,
}

impl NewEntry {
    /// An entry with the event's default purpose, no subject and outcome ok.
    pub fn new(actor: Actor, event: AuditEvent) -> NewEntry {
        let purpose = event.default_purpose();
        NewEntry {
            actor,
            event,
            subject: None,
            purpose,
            outcome: Outcome::Ok,
            request_id: None,
        }
    }

    /// The customer the action concerns.
    pub fn about(mut self, p: &Pseudonym) -> Self {
        self.subject = Some(*p);
        self
    }

    /// Another purpose than the event's default.
    pub fn purpose(mut self, purpose: Purpose) -> Self {
        self.purpose = purpose;
        self
    }

    /// The outcome, if not ok.
    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }

    /// Ties the entry to the request `id`.
    pub fn request(mut self, id: RequestId) -> Self {
        self.request_id = Some(id);
        self
    }
}

/// A request id (random 64 bits, 16 hex digits) tying an entry to an admin call or a webhook.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RequestId(pub u64);

impl RequestId {
    /// A fresh id for a new request.
    pub fn random() -> RequestId {
        RequestId(rand::random())
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}
