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

pub const STATUS: &str = "/v1/status";
pub const CUSTOMERS_LIST: &str = "/v1/customers/list";
pub const CUSTOMERS_SHOW: &str = "/v1/customers/show";
pub const CUSTOMERS_EXPORT: &str = "/v1/customers/export";
pub const CUSTOMERS_FORGET: &str = "/v1/customers/forget";
pub const CUSTOMERS_PAUSE: &str = "/v1/customers/pause";
pub const CUSTOMERS_RESUME: &str = "/v1/customers/resume";
pub const AUDIT_SHOW: &str = "/v1/audit/show";
pub const AUDIT_VERIFY: &str = "/v1/audit/verify";
pub const AUDIT_EXPORT: &str = "/v1/audit/export";
pub const RETENTION_RUN: &str = "/v1/retention/run";
pub const STATS: &str = "/v1/stats";
pub const SEND: &str = "/v1/send";

/// The last retention run (kept in the store's meta keyspace).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetentionRun {
    pub at: Timestamp,
    pub store: RetentionReport,
    pub audit: PruneReport,
    pub dry_run: bool,
}

/// `GET /v1/status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusReply {
    pub version: String,
    pub started_at: Timestamp,
    pub uptime_secs: u64,
    pub store_path: String,
    pub store_bytes: u64,
    pub customers: u64,
    pub audit_head: Head,
    pub last_retention: Option<RetentionRun>,
    /// What other parts of the daemon report (model, tunnel, inbox/outbox depth, …).
    pub components: BTreeMap<String, serde_json::Value>,
}

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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CustomerRow {
    pub pseudonym: String,
    pub status: String,
    pub first_contact: Timestamp,
    pub last_contact: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PhoneRequest {
    pub phone: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShownMessage {
    pub direction: String,
    pub at: Timestamp,
    pub text: String,
}

/// `customers show`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CustomerDetail {
    pub pseudonym: String,
    pub status: String,
    pub status_label: String,
    pub phone: String,
    pub contact_name: Option<String>,
    pub first_contact: Timestamp,
    pub last_contact: Timestamp,
    pub last_inbound: Option<Timestamp>,
    pub ever_booked: bool,
    pub profile: serde_json::Value,
    pub messages_total: u64,
    pub recent_messages: Vec<ShownMessage>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExportRequest {
    pub phone: String,
    /// age recipient (`age1…`) the export is encrypted to.
    pub recipient: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ForgetRequest {
    pub phone: String,
    pub reason: ForgetReason,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ForgetReply {
    pub pseudonym: String,
    pub existed: bool,
    pub audit_seq: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModeReply {
    pub pseudonym: String,
    pub mode: String,
}

/// `audit show`: the filter, with the customer given by phone number.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AuditShowRequest {
    #[serde(flatten)]
    pub filter: AuditFilter,
    pub customer_phone: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct VerifyRequest {
    pub expected_head: Option<Head>,
    /// The journal's last audit entry, read by a caller allowed to read the journal.
    pub journal_head: Option<Head>,
    /// Let the daemon read the journal itself (when `journal_head` is absent).
    pub use_journal: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    Jsonl,
    Csv,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditExportRequest {
    pub format: ExportFormat,
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RetentionRequest {
    pub dry_run: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StatsRequest {
    pub since: Option<Date>,
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

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SendReply {
    pub pseudonym: String,
    /// The phone number was not known before.
    pub new_customer: bool,
    pub audit_seq: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
}
