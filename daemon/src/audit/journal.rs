//! The journald copy of the audit log: every entry is sent with `SYSLOG_IDENTIFIER=frontdesk-audit`
//! and structured `FRONTDESK_*` fields (the whole entry in `FRONTDESK_AUDIT_ENTRY`), and the
//! verifier reads the last one back to detect a truncated store.
//!
//! journald keeps its own files, outside the store, so someone who rewinds or truncates the
//! store's audit keyspace leaves the journal ahead of it. The unit exempts the service from
//! journald's rate limit (`LogRateLimitIntervalSec=0`), or a burst could drop copies.
//!
//! Any local process can send a message with `SYSLOG_IDENTIFIER=frontdesk-audit`, so the anchor
//! is read only from trusted writers, by fields journald itself sets (`_SYSTEMD_UNIT`, `_UID`):
//! the service under its unit and user, and root (admin verbs that write the log while the
//! service is stopped).

use std::path::Path;

use super::{AuditRecord, Hash, Head};

/// The identifier of audit entries in the journal.
pub const SYSLOG_IDENTIFIER: &str = "frontdesk-audit";
/// The unit the service runs as.
const SERVICE_UNIT: &str = "frontdesk.service";
/// The service's system user (packaging/frontdesk.sysusers).
const SERVICE_USER: &str = "frontdesk";
const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Sends entries to journald when there is one.
pub struct JournalSink {
    enabled: bool,
}

impl JournalSink {
    /// Enabled when the journal socket exists.
    pub fn detect() -> JournalSink {
        JournalSink {
            enabled: Path::new(JOURNAL_SOCKET).exists(),
        }
    }

    /// A sink that sends nothing (no journal, or tests).
    pub fn disabled() -> JournalSink {
        JournalSink { enabled: false }
    }

    /// Sends `rec` with its journal fields; a failure is logged, not returned, since the store copy
    /// is the record.
    pub fn send(&self, rec: &AuditRecord) {
        if !self.enabled {
            return;
        }
        let fields = fields(rec);
        let refs: Vec<&str> = fields.iter().map(String::as_str).collect();
        if let Err(e) = systemd::journal::send(&refs) {
            tracing::warn!(error = %e, seq = rec.seq, "could not send the audit entry to the journal");
        }
    }
}

/// The journal fields of an entry.
pub fn fields(rec: &AuditRecord) -> Vec<String> {
    let priority = match rec.outcome {
        super::Status::Ok => 6,
        super::Status::Denied | super::Status::Error => 4,
    };
    let mut f = vec![
        format!(
            "MESSAGE=audit #{} {} {} by {}{}",
            rec.seq,
            rec.action,
            rec.outcome.code(),
            rec.actor.label(),
            rec.subject
                .as_ref()
                .map(|s| format!(" about {s}"))
                .unwrap_or_default()
        ),
        format!("PRIORITY={priority}"),
        format!("SYSLOG_IDENTIFIER={SYSLOG_IDENTIFIER}"),
        format!("FRONTDESK_AUDIT_SEQ={}", rec.seq),
        format!("FRONTDESK_AUDIT_HASH={}", rec.hash),
        format!("FRONTDESK_AUDIT_PREV={}", rec.prev),
        format!("FRONTDESK_ACTION={}", rec.action),
        format!("FRONTDESK_OUTCOME={}", rec.outcome.code()),
        format!("FRONTDESK_ACTOR={}", rec.actor.label()),
        format!("FRONTDESK_PURPOSE={}", rec.purpose.code()),
        format!(
            "FRONTDESK_AUDIT_ENTRY={}",
            String::from_utf8(rec.to_json()).expect("JSON is UTF-8")
        ),
    ];
    if let Some(r) = &rec.reason {
        f.push(format!("FRONTDESK_REASON={r}"));
    }
    if let Some(s) = &rec.subject {
        f.push(format!("FRONTDESK_SUBJECT={s}"));
    }
    if let Some(r) = &rec.request_id {
        f.push(format!("FRONTDESK_REQUEST_ID={r}"));
    }
    f
}

/// Journal matches for audit entries from trusted writers: every field of a group must match,
/// any group may. Without a service user (a development machine) only root's entries count
/// besides the unit's.
pub fn trusted_writers(service_uid: Option<u32>) -> Vec<Vec<(&'static str, String)>> {
    let ident = ("SYSLOG_IDENTIFIER", SYSLOG_IDENTIFIER.to_string());
    let mut service = vec![ident.clone(), ("_SYSTEMD_UNIT", SERVICE_UNIT.to_string())];
    if let Some(uid) = service_uid {
        service.push(("_UID", uid.to_string()));
    }
    vec![service, vec![ident, ("_UID", "0".to_string())]]
}

/// The sequence number and hash of the last audit entry in the journal, or why it cannot be read.
pub fn last_head() -> Result<Head, String> {
    if !Path::new("/run/systemd/journal").exists() && !Path::new("/var/log/journal").exists() {
        return Err("no systemd journal on this machine".into());
    }
    let mut j = systemd::journal::OpenOptions::default()
        .local_only(true)
        .open()
        .map_err(|e| format!("cannot open the journal: {e}"))?;
    let service_uid = crate::sys::user_uid(SERVICE_USER);
    for (i, group) in trusted_writers(service_uid).iter().enumerate() {
        if i > 0 {
            j.match_or().map_err(|e| format!("journal match: {e}"))?;
        }
        for (field, value) in group {
            j.match_add(field, value.as_str())
                .map_err(|e| format!("journal match: {e}"))?;
        }
    }
    j.seek_tail().map_err(|e| format!("journal seek: {e}"))?;
    let entry = j
        .previous_entry()
        .map_err(|e| format!("journal read: {e}"))?
        .ok_or_else(|| {
            "no audit entries in the journal (is this user in the systemd-journal or adm group?)"
                .to_string()
        })?;
    let seq = entry
        .get("FRONTDESK_AUDIT_SEQ")
        .and_then(|s| s.parse().ok())
        .ok_or("the journal's last audit entry has no sequence number")?;
    let hash = entry
        .get("FRONTDESK_AUDIT_HASH")
        .and_then(|s| Hash::from_hex(s))
        .ok_or("the journal's last audit entry has no hash")?;
    Ok(Head { seq, hash })
}
