//! The admin API's paths and JSON shapes, shared by the server and the CLI client.
//!
//! Every call is a `POST` with a JSON body (phone numbers travel in bodies, never in paths or
//! query strings), except `GET /v1/status`. Errors are `{"error": "..."}` with 400, 403 (the
//! message says "permission denied"), 404 or 500.

use std::collections::BTreeMap;

use jiff::civil::Date;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::audit::{AuditFilter, ForgetReason, Head, PruneReport};
use crate::stats::Period;
use crate::store::retention::RetentionReport;

/// `frontdesk status`: version, uptime, store and audit figures (the only `GET`).
pub const STATUS: &str = "/v1/status";
/// `customers list`: one row per customer, optionally filtered and with names.
pub const CUSTOMERS_LIST: &str = "/v1/customers/list";
/// `customers show`: one customer's record and recent messages.
pub const CUSTOMERS_SHOW: &str = "/v1/customers/show";
/// `customers export`: everything about one person, age-encrypted to a recipient.
pub const CUSTOMERS_EXPORT: &str = "/v1/customers/export";
/// `customers forget`: crypto-shreds one customer's data.
pub const CUSTOMERS_FORGET: &str = "/v1/customers/forget";
/// `customers pause`: the bot stops answering this customer; staff take over.
pub const CUSTOMERS_PAUSE: &str = "/v1/customers/pause";
/// `customers resume`: the bot answers this customer again.
pub const CUSTOMERS_RESUME: &str = "/v1/customers/resume";
/// `audit show`: audit entries matching a filter.
pub const AUDIT_SHOW: &str = "/v1/audit/show";
/// `audit verify`: checks the hash chain against the expected and journal heads.
pub const AUDIT_VERIFY: &str = "/v1/audit/verify";
/// `audit export`: the audit log as JSON lines or CSV.
pub const AUDIT_EXPORT: &str = "/v1/audit/export";
/// `retention run`: the store sweep and the audit prune, or a dry run of both.
pub const RETENTION_RUN: &str = "/v1/retention/run";
/// `stats`: lead-funnel figures per day, week or month.
pub const STATS: &str = "/v1/stats";
/// `send`: starts a chat with an approved message template.
pub const SEND: &str = "/v1/send";

/// The last retention run (kept in the store's meta keyspace).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetentionRun {
    /// When the run happened.
    pub at: Timestamp,
    /// What the store sweep deleted (or would have).
    pub store: RetentionReport,
    /// What the audit prune removed (or would have).
    pub audit: PruneReport,
    /// Nothing was deleted; the figures show what a real run would delete.
    pub dry_run: bool,
}

/// `GET /v1/status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusReply {
    /// The daemon's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// When this daemon process started.
    pub started_at: Timestamp,
    /// Seconds since `started_at`.
    pub uptime_secs: u64,
    /// Directory of the encrypted store.
    pub store_path: String,
    /// Disk space the store takes.
    pub store_bytes: u64,
    /// Number of customers in the store.
    pub customers: u64,
    /// The audit log's last entry (sequence number and hash).
    pub audit_head: Head,
    /// The last real retention run, if there was one.
    pub last_retention: Option<RetentionRun>,
    /// What other parts of the daemon report (model, tunnel, inbox/outbox depth, …).
    pub components: BTreeMap<String, serde_json::Value>,
}

/// `customers list`: which customers to list.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ListRequest {
    /// Status code: new_lead, name_known, trial_booked, escalated, paused, opted_out.
    pub status: Option<String>,
    /// Only customers whose last contact is at or after this time.
    pub since: Option<Timestamp>,
    /// Include names (audited as a read of personal data).
    pub show_names: bool,
}

/// One line of `customers list`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CustomerRow {
    /// Short pseudonym (the phone number never appears in a list).
    pub pseudonym: String,
    /// Status code, as in [`ListRequest::status`].
    pub status: String,
    /// First message from or to this customer.
    pub first_contact: Timestamp,
    /// Last message from or to this customer.
    pub last_contact: Timestamp,
    /// Display name; only with `show_names`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A request about one customer, given by phone number or WhatsApp user id.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PhoneRequest {
    /// Phone number in any notation, or WhatsApp business-scoped user id (`DE.…`).
    pub phone: String,
}

/// One message of a customer's history, as `customers show` prints it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShownMessage {
    /// `inbound` or `outbound`.
    pub direction: String,
    /// When the message was received or sent.
    pub at: Timestamp,
    /// The message text.
    pub text: String,
}

/// `customers show`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CustomerDetail {
    /// Short pseudonym.
    pub pseudonym: String,
    /// Status code, as in [`ListRequest::status`].
    pub status: String,
    /// The status in words, for people.
    pub status_label: String,
    /// Phone number in normalised form (the user id for a contact known only by it).
    pub phone: String,
    /// The contact's WhatsApp business-scoped user id, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The name the customer's WhatsApp profile shows.
    pub contact_name: Option<String>,
    /// The customer's WhatsApp `@username`, when they use one.
    #[serde(default)]
    pub username: Option<String>,
    /// The click-to-WhatsApp ad or post the customer came from: `type id "headline"`.
    #[serde(default)]
    pub lead_source: Option<String>,
    /// First message from or to this customer.
    pub first_contact: Timestamp,
    /// Last message from or to this customer.
    pub last_contact: Timestamp,
    /// Last message from the customer (opens WhatsApp's 24-hour window).
    pub last_inbound: Option<Timestamp>,
    /// A trial training was booked at least once.
    pub ever_booked: bool,
    /// The profile the model filled in (name, goals, preferred times, …).
    pub profile: serde_json::Value,
    /// Messages ever stored for this customer, including deleted ones.
    pub messages_total: u64,
    /// The most recent messages, oldest first.
    pub recent_messages: Vec<ShownMessage>,
}

/// `customers export`: whom to export and to whom to encrypt it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExportRequest {
    /// Phone number in any notation, or WhatsApp user id.
    pub phone: String,
    /// age recipient (`age1…`) the export is encrypted to.
    pub recipient: String,
}

/// `customers forget`: whom to forget and why (the reason goes into the audit log).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ForgetRequest {
    /// Phone number in any notation, or WhatsApp user id.
    pub phone: String,
    /// Why the data is deleted (recorded in the audit log).
    pub reason: ForgetReason,
}

/// What `customers forget` did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ForgetReply {
    /// Short pseudonym of the forgotten customer.
    pub pseudonym: String,
    /// There was data to delete (false: the number was not known).
    pub existed: bool,
    /// Sequence number of the audit entry that records the deletion.
    pub audit_seq: u64,
}

/// What `customers pause` or `customers resume` left the customer in.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModeReply {
    /// Short pseudonym.
    pub pseudonym: String,
    /// The status code after the change (`paused`, or the stage when resumed).
    pub mode: String,
}

/// `audit show`: the filter, with the customer given by phone number.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AuditShowRequest {
    /// Which entries to show.
    #[serde(flatten)]
    pub filter: AuditFilter,
    /// Only entries about the customer with this phone number.
    pub customer_phone: Option<String>,
}

/// `audit verify`: what to compare the chain's end with.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct VerifyRequest {
    /// A head the caller kept earlier (e.g. the last line of an earlier `audit export`).
    pub expected_head: Option<Head>,
    /// The journal's last audit entry, read by a caller allowed to read the journal.
    pub journal_head: Option<Head>,
    /// Let the daemon read the journal itself (when `journal_head` is absent).
    pub use_journal: bool,
}

/// Format of `audit export`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated values with a header line.
    Csv,
}

/// `audit export`: format and time range.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditExportRequest {
    /// JSON lines or CSV.
    pub format: ExportFormat,
    /// Only entries at or after this time.
    pub since: Option<Timestamp>,
    /// Only entries before this time.
    pub until: Option<Timestamp>,
}

/// `retention run`: a real run or a dry run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RetentionRequest {
    /// Report what would be deleted without deleting anything.
    pub dry_run: bool,
}

/// `stats`: from when and in which periods.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StatsRequest {
    /// First studio day counted (inclusive); absent: from the oldest figures on.
    pub since: Option<Date>,
    /// Whether the figures are grouped by day, week or month.
    pub by: Period,
}

/// `send`: start a chat with an approved message template (queued for the daemon's sender).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SendRequest {
    /// Phone number in any notation.
    pub phone: String,
    /// Name of a template approved in WhatsApp Manager.
    pub template: String,
    /// Template language (`de`, `en_US`); absent: `whatsapp.template_language`.
    #[serde(default)]
    pub language: Option<String>,
    /// Body parameters `{{1}}`, `{{2}}`, … in order.
    #[serde(default)]
    pub params: Vec<String>,
}

/// What `send` queued.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SendReply {
    /// Short pseudonym of the recipient.
    pub pseudonym: String,
    /// The phone number was not known before.
    pub new_customer: bool,
    /// Sequence number of the audit entry that records the message.
    pub audit_seq: u64,
    /// Meta's category of the template as frontdesk knows it; a marketing template goes
    /// through `/marketing_messages` and is billed at the marketing rate.
    #[serde(default)]
    pub category: Option<crate::whatsapp::templates::TemplateCategory>,
    /// Where the category came from (webhook, configuration, or assumed).
    #[serde(default)]
    pub category_source: Option<crate::whatsapp::templates::CategorySource>,
    /// The configured price of one message of that category, in EUR.
    #[serde(default)]
    pub price_eur: Option<f64>,
}

/// The body of every error answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorReply {
    /// What went wrong, without personal data.
    pub error: String,
}
