//! Retention: deletes what is due by age, with the clock passed in so tests control it.
//!
//! Rules (days, from `[retention]`): message history older than `history_days`; customers whose
//! last contact is older than `inactive_lead_days` and who never booked are forgotten whole
//! (crypto-shredded); seen message ids, and the delivery records of sent messages, older than
//! `seen_ids_days`. The audit rule lives with the audit log, which prunes itself with a
//! checkpoint.

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use super::messages::row_time;
use super::{ks, Result, Store};

/// Retention periods in days.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionPolicy {
    /// Days after which history messages are deleted.
    pub history_days: u32,
    /// Days after their last contact that customers who never booked are forgotten.
    pub inactive_lead_days: u32,
    /// Days after which seen message ids are deleted (at least 8: WhatsApp retries for 7 days).
    pub seen_ids_days: u32,
    /// Days after which audit entries are pruned behind a checkpoint.
    pub audit_days: u32,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy {
            history_days: 90,
            inactive_lead_days: 180,
            seen_ids_days: 14,
            audit_days: 730,
        }
    }
}

/// What one sweep deleted (or would delete, in a dry run).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RetentionReport {
    /// History messages deleted.
    pub messages_deleted: u64,
    /// Customers forgotten (crypto-shredded).
    pub customers_forgotten: u64,
    /// Seen message ids deleted, with the delivery records of sent messages.
    pub seen_ids_deleted: u64,
    /// Nothing was deleted; the counts say what would have been.
    pub dry_run: bool,
}

fn cutoff(now: Timestamp, days: u32) -> Timestamp {
    now.checked_sub(SignedDuration::from_hours(24 * i64::from(days)))
        .unwrap_or(Timestamp::MIN)
}

impl Store {
    /// Runs every store retention rule once at `now`.
    pub fn sweep(
        &self,
        policy: &RetentionPolicy,
        now: Timestamp,
        dry_run: bool,
    ) -> Result<RetentionReport> {
        let mut report = RetentionReport {
            dry_run,
            ..Default::default()
        };

        // Whole customers first: their messages go with them.
        let lead_cutoff = cutoff(now, policy.inactive_lead_days);
        let mut due = Vec::new();
        for item in self.customer_metas() {
            let (p, meta) = item?;
            if !meta.ever_booked && meta.last_contact < lead_cutoff {
                due.push(p);
            }
        }
        report.customers_forgotten = due.len() as u64;
        if !dry_run {
            self.forget(&due, now)?;
        }

        let history_cutoff = cutoff(now, policy.history_days);
        report.messages_deleted =
            self.delete_older(&self.ks.messages, &[], history_cutoff, dry_run, |_| None)?;
        let seen_cutoff = cutoff(now, policy.seen_ids_days);
        report.seen_ids_deleted =
            self.delete_older(&self.ks.seen, &[], seen_cutoff, dry_run, |_| None)?
                + self.delete_older(
                    &self.ks.outbox,
                    &[ks::OUTBOX_DELIVERY_PREFIX],
                    seen_cutoff,
                    dry_run,
                    sent_record_of_send,
                )?;
        if !dry_run {
            self.remove_orphan_keys()?;
        }
        Ok(report)
    }

    /// Deletes the rows under `prefix` whose value starts with a timestamp older than `before`,
    /// in bounded batches, each with the row `companion` names for it in the same keyspace.
    fn delete_older(
        &self,
        ks: &fjall::Keyspace,
        prefix: &[u8],
        before: Timestamp,
        dry_run: bool,
        companion: fn(&[u8]) -> Option<Vec<u8>>,
    ) -> Result<u64> {
        const BATCH: usize = 1000;
        let mut deleted = 0u64;
        let mut batch = self.batch();
        let mut pending = 0;
        for g in ks.prefix(prefix) {
            let (k, v) = g.into_inner()?;
            if row_time(&v).is_some_and(|t| t < before) {
                deleted += 1;
                if !dry_run {
                    if let Some(other) = companion(&k) {
                        batch.remove(ks, other);
                    }
                    batch.remove(ks, k);
                    pending += 1;
                    if pending == BATCH {
                        self.commit_durable(std::mem::replace(&mut batch, self.batch()))?;
                        pending = 0;
                    }
                }
            }
        }
        if pending > 0 {
            self.commit_durable(batch)?;
        }
        Ok(deleted)
    }
}

/// For the delivery row that records a message's send (state 0, or the single row of the
/// earlier layout): the key of the sealed record of what the message was, kept for a `failed`
/// status. A message that old gets no more handling, and its record must not outlive the
/// retention of everything else about it (a lost status would otherwise keep it until the
/// customer is forgotten).
fn sent_record_of_send(delivery_key: &[u8]) -> Option<Vec<u8>> {
    const HASHED_ID: usize = super::crypto::TOKEN_HASH_LEN;
    let hash = delivery_key.get(1..=HASHED_ID)?;
    let of_send = match delivery_key.len() {
        n if n == 1 + HASHED_ID => true,
        n if n == 2 + HASHED_ID => delivery_key[1 + HASHED_ID] == 0,
        _ => false,
    };
    of_send.then(|| [&[ks::OUTBOX_SENT_PREFIX][..], hash].concat())
}
