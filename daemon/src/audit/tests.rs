//! Audit log tests against a real store in a temporary directory.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use jiff::Timestamp;
use sha2::{Digest as _, Sha256};

use super::*;
use crate::store::crypto::StoreIdentity;
use crate::store::customers::BotMode;
use crate::store::Store;

fn open_store(dir: &std::path::Path) -> Arc<Store> {
    Arc::new(Store::open(dir, StoreIdentity::generate()).unwrap())
}

fn log(store: &Arc<Store>) -> AuditLog {
    AuditLog::open(store.clone()).unwrap().without_journal()
}

fn sample_event(i: u64) -> AuditEvent {
    match i % 4 {
        0 => AuditEvent::CustomerRead { messages: i },
        1 => AuditEvent::WebhookRejected {
            reason: Code::new("bad_signature"),
        },
        2 => AuditEvent::RetentionPurge {
            messages_deleted: i,
            customers_forgotten: 1,
            seen_ids_deleted: 2,
            audit_entries_pruned: 0,
            dry_run: false,
        },
        _ => AuditEvent::CustomerPause,
    }
}

/// Appends `n` entries from 16 threads (durable appends share fsyncs).
fn fill(log: &AuditLog, store: &Store, n: u64) {
    let p = store.pseudonym("+49 151 0000000");
    std::thread::scope(|s| {
        for t in 0..16u64 {
            s.spawn(move || {
                let mut i = t;
                while i < n {
                    let mut e = NewEntry::new(
                        Actor::Admin {
                            uid: 1000,
                            name: "anna".into(),
                        },
                        sample_event(i),
                    )
                    .request(RequestId(i));
                    if i % 3 == 0 {
                        e = e.about(&p);
                    }
                    log.append(e).unwrap();
                    i += 16;
                }
            });
        }
    });
}

fn verify(log: &AuditLog) -> Verification {
    log.verify(&VerifyOptions::default()).unwrap().verification
}

fn first_bad(v: &Verification) -> u64 {
    match v {
        Verification::Broken { first_bad_seq, .. } => *first_bad_seq,
        Verification::Ok { .. } => panic!("tampering not detected"),
    }
}

fn raw(store: &Store, seq: u64) -> Vec<u8> {
    store
        .keyspaces()
        .audit
        .get(seq.to_be_bytes())
        .unwrap()
        .unwrap()
        .to_vec()
}

fn put_raw(store: &Store, seq: u64, v: &[u8]) {
    store
        .keyspaces()
        .audit
        .insert(seq.to_be_bytes(), v.to_vec())
        .unwrap();
}

#[test]
fn ten_thousand_entries_verify_and_every_tampering_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let log = log(&store);
    fill(&log, &store, 10_000);
    let head = log.head();
    assert_eq!(head.seq, 10_000);
    assert_eq!(
        verify(&log),
        Verification::Ok {
            entries: 10_000,
            head
        }
    );

    // One changed byte anywhere in an entry names that entry.
    let mut rng_state = 0x2545F4914F6CDD1Du64;
    let mut next = move || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    for _ in 0..200 {
        let seq = 1 + next() % 10_000;
        let original = raw(&store, seq);
        let pos = (next() as usize) % original.len();
        let mut changed = original.clone();
        changed[pos] ^= 1 << (next() % 7);
        put_raw(&store, seq, &changed);
        assert_eq!(first_bad(&verify(&log)), seq, "byte {pos} of entry {seq}");
        put_raw(&store, seq, &original);
    }
    assert!(matches!(verify(&log), Verification::Ok { .. }));

    // A deleted entry in the middle.
    let original = raw(&store, 5_000);
    store
        .keyspaces()
        .audit
        .remove(5_000u64.to_be_bytes())
        .unwrap();
    assert_eq!(first_bad(&verify(&log)), 5_000);
    put_raw(&store, 5_000, &original);

    // Two entries swapped.
    let (a, b) = (raw(&store, 3_000), raw(&store, 3_001));
    put_raw(&store, 3_000, &b);
    put_raw(&store, 3_001, &a);
    assert_eq!(first_bad(&verify(&log)), 3_000);
    put_raw(&store, 3_000, &a);
    put_raw(&store, 3_001, &b);

    // The first entry deleted: nothing covers the gap.
    let first = raw(&store, 1);
    store.keyspaces().audit.remove(1u64.to_be_bytes()).unwrap();
    assert_eq!(first_bad(&verify(&log)), 1);
    put_raw(&store, 1, &first);
    assert!(matches!(verify(&log), Verification::Ok { .. }));
}

#[test]
fn truncated_tail_is_caught_by_the_recorded_and_the_expected_head() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let log = log(&store);
    fill(&log, &store, 100);
    let head = log.head();
    // What an auditor keeps from an earlier verify or export.
    let kept: Head = head.to_string().parse().unwrap();
    assert_eq!(kept, head);

    for seq in 98..=100u64 {
        store.keyspaces().audit.remove(seq.to_be_bytes()).unwrap();
    }
    // The head kept in the store's meta keyspace notices a naive truncation ...
    assert_eq!(first_bad(&verify(&log)), 98);
    // ... and someone who also rewrites it is caught by the head kept outside.
    let h97: AuditRecord = serde_json::from_slice(&raw(&store, 97)).unwrap();
    store
        .keyspaces()
        .meta
        .insert(
            META_HEAD,
            Head {
                seq: 97,
                hash: h97.hash,
            }
            .to_bytes()
            .to_vec(),
        )
        .unwrap();
    assert!(matches!(verify(&log), Verification::Ok { entries: 97, .. }));
    let report = log
        .verify(&VerifyOptions {
            expected_head: Some(kept),
            ..VerifyOptions::default()
        })
        .unwrap();
    assert_eq!(first_bad(&report.verification), 98);
    assert_eq!(report.anchors, vec![AnchorCheck::Given { head: kept }]);

    // An expected head that the store has, but with another hash (rewritten history).
    let fake = Head {
        seq: 50,
        hash: Hash([7; 32]),
    };
    let report = log
        .verify(&VerifyOptions {
            expected_head: Some(fake),
            ..VerifyOptions::default()
        })
        .unwrap();
    assert_eq!(first_bad(&report.verification), 50);
}

#[test]
fn reopened_log_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let head = {
        let store = Arc::new(Store::open(dir.path(), StoreIdentity::generate()).unwrap());
        let id_text = store.identity().to_secret_line().to_string();
        let log = log(&store);
        fill(&log, &store, 40);
        let h = log.head();
        drop(log);
        drop(store);
        (h, id_text)
    };
    let store = Arc::new(Store::open(dir.path(), StoreIdentity::parse(&head.1).unwrap()).unwrap());
    let log = log(&store);
    assert_eq!(log.head(), head.0);
    log.append(NewEntry::new(
        Actor::System,
        AuditEvent::ServiceStarted {
            version: Code::new("0.1.0"),
        },
    ))
    .unwrap();
    assert!(matches!(verify(&log), Verification::Ok { entries: 41, .. }));
}

#[test]
fn pruning_leaves_a_verifiable_chain_that_still_detects_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let day0: Timestamp = "2024-01-01T00:00:00Z".parse().unwrap();
    let now = Arc::new(AtomicI64::new(day0.as_second()));
    let clock = now.clone();
    let log = AuditLog::open(store.clone())
        .unwrap()
        .without_journal()
        .with_clock(move || Timestamp::from_second(clock.load(Ordering::SeqCst)).unwrap());
    // 10 entries per day for 100 days.
    for day in 0..100i64 {
        now.store(day0.as_second() + day * 86_400, Ordering::SeqCst);
        for i in 0..10 {
            log.append(NewEntry::new(Actor::System, sample_event(i)))
                .unwrap();
        }
    }
    let at = Timestamp::from_second(day0.as_second() + 100 * 86_400).unwrap();
    // Dry run counts only.
    let dry = log.prune(30, at, Actor::System, true).unwrap();
    assert_eq!(dry.pruned, 700);
    assert_eq!(log.head().seq, 1000);

    now.store(at.as_second(), Ordering::SeqCst);
    let report = log.prune(30, at, Actor::System, false).unwrap();
    assert_eq!(report.pruned, 700);
    assert_eq!(report.checkpoint_seq, Some(1001));
    assert!(store
        .keyspaces()
        .audit
        .get(700u64.to_be_bytes())
        .unwrap()
        .is_none());
    assert_eq!(
        verify(&log),
        Verification::Ok {
            entries: 301,
            head: log.head()
        }
    );
    let cp: AuditRecord = serde_json::from_slice(&raw(&store, 1001)).unwrap();
    assert_eq!(cp.action, CHECKPOINT_ACTION);
    assert_eq!(cp.details["last_pruned_seq"], Detail::Count(700));

    // Tampering after the prune is still found.
    let original = raw(&store, 850);
    let mut changed = original.clone();
    let pos = changed.len() / 2;
    changed[pos] ^= 2;
    put_raw(&store, 850, &changed);
    assert_eq!(first_bad(&verify(&log)), 850);
    put_raw(&store, 850, &original);

    // Deleting the oldest remaining entry is not covered by the checkpoint.
    let first = raw(&store, 701);
    store
        .keyspaces()
        .audit
        .remove(701u64.to_be_bytes())
        .unwrap();
    assert_eq!(first_bad(&verify(&log)), 701);
    put_raw(&store, 701, &first);

    // A crash between checkpoint and deletion leaves covered entries behind: still valid.
    let dir2 = tempfile::tempdir().unwrap();
    let store2 = open_store(dir2.path());
    let log2 = log_with_entries(&store2, 20);
    let last_old: AuditRecord = serde_json::from_slice(&raw(&store2, 10)).unwrap();
    log2.append(NewEntry::new(
        Actor::System,
        AuditEvent::AuditCheckpoint {
            last_pruned_seq: 10,
            last_pruned_hash: last_old.hash,
            pruned: 10,
        },
    ))
    .unwrap();
    for seq in 1..=5u64 {
        store2.keyspaces().audit.remove(seq.to_be_bytes()).unwrap();
    }
    assert!(matches!(
        verify(&log2),
        Verification::Ok { entries: 16, .. }
    ));

    // A second prune moves the start again and the chain still verifies.
    now.store(at.as_second() + 20 * 86_400, Ordering::SeqCst);
    let at2 = Timestamp::from_second(at.as_second() + 20 * 86_400).unwrap();
    let second = log.prune(30, at2, Actor::System, false).unwrap();
    assert_eq!(second.pruned, 200);
    assert!(matches!(
        verify(&log),
        Verification::Ok { entries: 102, .. }
    ));
}

fn log_with_entries(store: &Arc<Store>, n: u64) -> AuditLog {
    let log = log(store);
    for i in 0..n {
        log.append(NewEntry::new(Actor::Relay, sample_event(i)))
            .unwrap();
    }
    log
}

#[test]
fn append_in_commits_with_the_audited_change_and_leaves_no_gap_when_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let log = log(&store);
    let now = Timestamp::now();
    let (c, ()) = store
        .update_customer("+49 170 1234567", now, |_, _, _| Ok(()))
        .unwrap();
    let p = c.pseudonym;

    let (_, pending) = store
        .update_existing(&p, |c, batch, _| {
            c.meta.mode = BotMode::Paused;
            log.append_in(
                batch,
                NewEntry::new(Actor::System, AuditEvent::CustomerPause).about(&p),
            )
            .map_err(|e| StoreError::Format(e.to_string()))
        })
        .unwrap()
        .unwrap();
    assert_eq!(pending.record().seq, 1);
    drop(pending);
    assert_eq!(log.head().seq, 1);
    assert_eq!(
        store.customer_meta(&p).unwrap().unwrap().mode,
        BotMode::Paused
    );

    // An entry whose batch is never committed does not advance the chain.
    {
        let mut batch = store.batch();
        let pending = log
            .append_in(
                &mut batch,
                NewEntry::new(Actor::System, AuditEvent::CustomerResume),
            )
            .unwrap();
        assert_eq!(pending.record().seq, 2);
        drop(pending);
        drop(batch);
    }
    assert_eq!(log.head().seq, 1);
    let r = log
        .append(NewEntry::new(Actor::System, AuditEvent::CustomerResume).about(&p))
        .unwrap();
    assert_eq!(r.seq, 2);
    assert!(matches!(verify(&log), Verification::Ok { entries: 2, .. }));
}

#[test]
fn canonical_encoding_is_pinned() {
    // Changing this hash means changing the documented format: bump the domain tag instead.
    let rec = AuditRecord {
        seq: 7,
        time: "2026-11-26T10:00:00.5Z".parse().unwrap(),
        actor: Actor::Admin {
            uid: 1000,
            name: "anna".into(),
        },
        action: "customer.forget".into(),
        subject: Some(ShortPseudonym("c-0123456789ab".into())),
        purpose: Purpose::DsgvoRequest,
        outcome: Status::Ok,
        reason: None,
        request_id: Some("00000000000000ff".into()),
        details: [
            ("reason".to_string(), Detail::Code("dsgvo-request".into())),
            ("existed".to_string(), Detail::Flag(true)),
        ]
        .into_iter()
        .collect(),
        prev: Hash([0xab; 32]),
        hash: Hash::ZERO,
    };
    let bytes = rec.canonical_bytes();
    let mut expected = Vec::new();
    expected.extend_from_slice(b"frontdesk-audit-v1\0");
    expected.extend_from_slice(&7u64.to_be_bytes());
    expected.extend_from_slice(&1_795_687_200i64.to_be_bytes());
    expected.extend_from_slice(&500_000_000u32.to_be_bytes());
    expected.extend_from_slice(&5u32.to_be_bytes());
    expected.extend_from_slice(b"admin");
    expected.extend_from_slice(&1000u32.to_be_bytes());
    expected.extend_from_slice(&4u32.to_be_bytes());
    expected.extend_from_slice(b"anna");
    expected.extend_from_slice(&15u32.to_be_bytes());
    expected.extend_from_slice(b"customer.forget");
    expected.push(1);
    expected.extend_from_slice(&14u32.to_be_bytes());
    expected.extend_from_slice(b"c-0123456789ab");
    let mut e2 = expected;
    e2.extend_from_slice(&13u32.to_be_bytes());
    e2.extend_from_slice(b"dsgvo-request");
    e2.extend_from_slice(&2u32.to_be_bytes());
    e2.extend_from_slice(b"ok");
    e2.push(0);
    e2.push(1);
    e2.extend_from_slice(&16u32.to_be_bytes());
    e2.extend_from_slice(b"00000000000000ff");
    e2.extend_from_slice(&2u32.to_be_bytes());
    e2.extend_from_slice(&7u32.to_be_bytes());
    e2.extend_from_slice(b"existed");
    e2.push(b'b');
    e2.push(1);
    e2.extend_from_slice(&6u32.to_be_bytes());
    e2.extend_from_slice(b"reason");
    e2.push(b's');
    e2.extend_from_slice(&13u32.to_be_bytes());
    e2.extend_from_slice(b"dsgvo-request");
    e2.extend_from_slice(&[0xab; 32]);
    assert_eq!(bytes, e2);
    assert_eq!(rec.compute_hash().0, <[u8; 32]>::from(Sha256::digest(&e2)));
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "a table with one row per audit event"
)]
fn every_event_serialises_to_flat_details() {
    let h = Hash([1; 32]);
    let events = vec![
        AuditEvent::CustomerRead { messages: 1 },
        AuditEvent::CustomerList { count: 1 },
        AuditEvent::CustomerListNames { count: 1 },
        AuditEvent::CustomerExport {
            messages: 1,
            bookings: 0,
            audit_entries: 2,
        },
        AuditEvent::CustomerForget {
            reason: ForgetReason::CustomerRequest,
            existed: true,
        },
        AuditEvent::CustomerPause,
        AuditEvent::CustomerResume,
        AuditEvent::CustomerEscalate {
            reason: Code::new("complaint"),
        },
        AuditEvent::CustomerOptOut,
        AuditEvent::BookingAttempt {
            flow: Code::new("lead"),
        },
        AuditEvent::BookingBooked {
            flow: Code::new("member"),
            booking_id: Some(5),
        },
        AuditEvent::BookingLeadCreated {
            flow: Code::new("member"),
        },
        AuditEvent::BookingCustomerMatched {
            flow: Code::new("member"),
        },
        AuditEvent::BookingConfirmed {
            flow: Code::new("member"),
            booking_id: Some(5),
        },
        AuditEvent::BookingSlotTaken {
            flow: Code::new("lead"),
        },
        AuditEvent::BookingFailed {
            flow: Code::new("lead"),
        },
        AuditEvent::BookingCanceled {
            booking_id: Some(5),
        },
        AuditEvent::BookingCancelFailed { booking_id: None },
        AuditEvent::BookingCanceledInMagicline {
            booking_id: Some(5),
        },
        AuditEvent::BookingMovedInMagicline {
            booking_id: Some(5),
        },
        AuditEvent::BookingCheckedIn {
            booking_id: Some(5),
        },
        AuditEvent::BookingNoShow {
            booking_id: Some(5),
        },
        AuditEvent::MagiclineWebhookRejected {
            reason: Code::new("api_key_wrong"),
        },
        AuditEvent::WebhookRejected {
            reason: Code::new("bad_signature"),
        },
        AuditEvent::MessageSent {
            kind: Code::new("text"),
        },
        AuditEvent::MessageFailed {
            kind: Code::new("template"),
            api_code: Some(131047),
        },
        AuditEvent::RetentionPurge {
            messages_deleted: 1,
            customers_forgotten: 2,
            seen_ids_deleted: 3,
            audit_entries_pruned: 4,
            dry_run: true,
        },
        AuditEvent::AuditCheckpoint {
            last_pruned_seq: 1,
            last_pruned_hash: h,
            pruned: 1,
        },
        AuditEvent::AuditRead { entries: 1 },
        AuditEvent::AuditExport {
            entries: 1,
            format: Code::new("jsonl"),
        },
        AuditEvent::AuditVerify {
            entries: 1,
            intact: true,
        },
        AuditEvent::StatsRead,
        AuditEvent::AdminStatus,
        AuditEvent::AdminDenied {
            endpoint: Code::new("customers.forget"),
        },
        AuditEvent::StoreBackup {
            records: 1,
            bytes: 2,
        },
        AuditEvent::StoreRestore {
            records: 1,
            erasures_reapplied: 0,
            replaced_head_seq: Some(3),
            replaced_head_hash: Some(h),
        },
        AuditEvent::IdentityRotated { keys: 3 },
        AuditEvent::ConfigLoaded,
        AuditEvent::ConfigReloaded { ok: true },
        AuditEvent::ServiceStarted {
            version: Code::new("0.1.0"),
        },
        AuditEvent::ServiceStopped,
        AuditEvent::TunnelConnected,
        AuditEvent::TunnelLost {
            reason: Code::new("ping_timeout"),
        },
        AuditEvent::TunnelAuthFailed,
    ];
    let mut actions = std::collections::HashSet::new();
    for e in events {
        let (action, _) = e.split().unwrap();
        assert!(action.contains('.'), "{action}");
        assert!(actions.insert(action));
    }
}

#[test]
fn journal_fields_carry_the_chain_and_no_free_text() {
    let rec = AuditRecord {
        seq: 3,
        time: Timestamp::UNIX_EPOCH,
        actor: Actor::System,
        action: "webhook.rejected".into(),
        subject: None,
        purpose: Purpose::Security,
        outcome: Status::Denied,
        reason: Some("bad_signature".into()),
        request_id: None,
        details: Default::default(),
        prev: Hash::ZERO,
        hash: Hash([9; 32]),
    };
    let f = journal::fields(&rec);
    assert!(f.contains(&"SYSLOG_IDENTIFIER=frontdesk-audit".to_string()));
    assert!(f.contains(&format!("FRONTDESK_AUDIT_HASH={}", Hash([9; 32]))));
    assert!(f.contains(&"FRONTDESK_AUDIT_SEQ=3".to_string()));
    assert!(f.contains(&"FRONTDESK_OUTCOME=denied".to_string()));
    assert!(f.iter().all(|l| l.contains('=')));
}

#[test]
fn the_journal_anchor_trusts_only_the_service_and_root() {
    let groups = journal::trusted_writers(Some(996));
    assert_eq!(groups.len(), 2);
    for g in &groups {
        assert!(g.contains(&("SYSLOG_IDENTIFIER", "frontdesk-audit".to_string())));
        // Every group names a field journald sets itself, which a sender cannot forge.
        assert!(g.iter().any(|(k, _)| k.starts_with('_')));
    }
    assert!(groups[0].contains(&("_SYSTEMD_UNIT", "frontdesk.service".to_string())));
    assert!(groups[0].contains(&("_UID", "996".to_string())));
    assert_eq!(groups[1][1], ("_UID", "0".to_string()));
    // Without a service user the unit alone is required of non-root writers.
    assert_eq!(journal::trusted_writers(None)[0].len(), 2);
}

#[test]
fn stored_form_rejects_foreign_subjects_and_upper_case_hashes() {
    assert!(serde_json::from_str::<ShortPseudonym>("\"+491701234567\"").is_err());
    assert!(serde_json::from_str::<ShortPseudonym>("\"c-0123456789ab\"").is_ok());
    assert!(Hash::from_hex(&"AB".repeat(32)).is_none());
    assert!(Hash::from_hex(&"ab".repeat(32)).is_some());
    assert!("12:xyz".parse::<Head>().is_err());
}
