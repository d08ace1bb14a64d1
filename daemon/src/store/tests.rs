//! Store tests against the real fjall database in temporary directories.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};

use super::crypto::StoreIdentity;
use super::customers::{BotMode, Stage};
use super::messages::{Direction, Message};
use super::retention::RetentionPolicy;
use super::*;

pub(crate) fn identity_pair() -> (StoreIdentity, String) {
    let id = StoreIdentity::generate();
    let text = id.to_secret_line().to_string();
    (id, text)
}

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn msg(dir: Direction, text: &str, at: Timestamp) -> Message {
    Message {
        direction: dir,
        text: text.into(),
        at,
        wamid: None,
    }
}

/// Every byte of every file under `dir`.
fn all_file_bytes(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

fn count_hits(dir: &Path, needles: &[Vec<u8>]) -> usize {
    let ac = aho_corasick::AhoCorasick::new(needles).unwrap();
    all_file_bytes(dir)
        .iter()
        .map(|(_, bytes)| ac.find_iter(bytes).count())
        .sum()
}

#[test]
fn customer_and_messages_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (id, text) = identity_pair();
    let now = t("2026-11-26T10:00:00Z");
    {
        let store = Store::open(dir.path(), id).unwrap();
        let (c, seq) = store
            .update_customer("+49 151 1111111", now, |c, batch, s| {
                c.body.profile.vorname = Some("Anna".into());
                c.body.profile.email = Some("anna@example.org".into());
                c.body.profile.alter = Some(31);
                c.body.contact_name = Some("Anna S.".into());
                c.meta.stage = Stage::NameKnown;
                s.append_message(c, &msg(Direction::Inbound, "Hallo!", now), batch)
            })
            .unwrap();
        assert_eq!(seq, 0);
        assert_eq!(c.body.phone, "491511111111");
        for i in 1..20 {
            store
                .update_customer("+49 151 1111111", now, |c, batch, s| {
                    s.append_message(
                        c,
                        &msg(Direction::Outbound, &format!("Antwort {i}"), now),
                        batch,
                    )
                })
                .unwrap();
        }
    }
    let store = Store::open(dir.path(), StoreIdentity::parse(&text).unwrap()).unwrap();
    let p = store.pseudonym("00491511111111");
    let c = store.customer(&p).unwrap().unwrap();
    assert_eq!(c.body.profile.vorname.as_deref(), Some("Anna"));
    assert_eq!(c.body.profile.alter, Some(31));
    assert_eq!(c.meta.stage, Stage::NameKnown);
    assert_eq!(c.meta.mode, BotMode::Active);
    let recent = store.recent_messages(&p, 12).unwrap();
    assert_eq!(recent.len(), 12);
    assert_eq!(recent[0].text, "Antwort 8");
    assert_eq!(recent[11].text, "Antwort 19");
    let all: Vec<_> = store
        .all_messages(&p)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(all.len(), 20);
    assert_eq!(all[0].text, "Hallo!");
    assert_eq!(store.customer_metas().count(), 1);
}

#[test]
fn value_moved_to_another_row_fails_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreIdentity::generate()).unwrap();
    let now = Timestamp::now();
    let (a, _) = store.update_customer("491", now, |_, _, _| Ok(())).unwrap();
    let (b, _) = store.update_customer("492", now, |_, _, _| Ok(())).unwrap();
    let value_a = store.ks.customers.get(a.pseudonym.0).unwrap().unwrap();
    store.ks.customers.insert(b.pseudonym.0, value_a).unwrap();
    let err = store.customer(&b.pseudonym).unwrap_err();
    assert!(
        matches!(err, StoreError::Crypto(CryptoError::OpenFailed)),
        "{err}"
    );
    // Same row key but another customer's key: also refused.
    let wrapped_b = store.keys.get(&b.pseudonym).unwrap().unwrap();
    store.keys.put(&a.pseudonym, &wrapped_b, true).unwrap();
    store.forget_cached_key(&a.pseudonym);
    assert!(store.customer(&a.pseudonym).is_err());
}

#[test]
fn wrong_identity_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path(), StoreIdentity::generate()).unwrap());
    let err = Store::open(dir.path(), StoreIdentity::generate())
        .err()
        .expect("must fail");
    assert!(matches!(err, StoreError::WrongIdentity(_)));
    assert!(err.to_string().contains("store-identity"), "{err}");
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (id, text) = identity_pair();
    {
        let store = Store::open(dir.path(), id).unwrap();
        store
            .ks
            .meta
            .insert(META_SCHEMA, (SCHEMA_VERSION + 1).to_be_bytes().to_vec())
            .unwrap();
        store.persist().unwrap();
    }
    let err = Store::open(dir.path(), StoreIdentity::parse(&text).unwrap())
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::SchemaTooNew { .. }), "{err}");
}

#[test]
fn a_second_opener_is_told_the_store_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let (id, text) = identity_pair();
    let _store = Store::open(dir.path(), id).unwrap();
    let err = Store::open(dir.path(), StoreIdentity::parse(&text).unwrap())
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::Locked(_)), "{err}");
}

#[test]
fn no_personal_data_in_any_file() {
    let dir = tempfile::tempdir().unwrap();
    let now = t("2026-11-26T10:00:00Z");
    let mut needles: Vec<Vec<u8>> = Vec::new();
    {
        let store = Store::open(dir.path(), StoreIdentity::generate()).unwrap();
        for i in 0..1000u32 {
            let phone = format!("+49 170 {:07}", 3_000_000 + i);
            let name = format!("Vorname{i:04}x");
            let email = format!("kunde{i:04}@beispiel-studio.de");
            let text = format!("Ich moechte gern ein Probetraining, Nachricht {i:04}");
            store
                .update_customer(&phone, now, |c, batch, s| {
                    c.body.profile.vorname = Some(name.clone());
                    c.body.profile.email = Some(email.clone());
                    s.append_message(c, &msg(Direction::Inbound, &text, now), batch)
                })
                .unwrap();
            needles.push(crate::store::crypto::normalise_phone(&phone).into_bytes());
            needles.push(name.into_bytes());
            needles.push(email.into_bytes());
            needles.push(text.into_bytes());
        }
        // A control value written without sealing: proves the search sees through fjall's files.
        store
            .ks
            .stats
            .insert("control", "Klartext-Kontrollwert")
            .unwrap();
        store.persist().unwrap();
        for (_, k) in store.ks.all() {
            k.rotate_memtable_and_wait().unwrap();
        }
    }
    assert!(count_hits(dir.path(), &[b"Klartext-Kontrollwert".to_vec()]) > 0);
    assert_eq!(count_hits(dir.path(), &needles), 0);
}

#[test]
fn forget_shreds_the_key_and_survives_restore_of_an_older_backup() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("store");
    let backup_file = dir.path().join("backup.age");
    let backup_id = StoreIdentity::generate();
    let (id, text) = identity_pair();
    let now = t("2026-11-26T10:00:00Z");
    let (gone, kept, wrapped);
    {
        let store = Store::open(&state, id).unwrap();
        let (a, _) = store
            .update_customer("4915100000001", now, |c, b, s| {
                c.body.profile.vorname = Some("Berta".into());
                s.append_message(c, &msg(Direction::Inbound, "Hi", now), b)
            })
            .unwrap();
        let (b, _) = store
            .update_customer("4915100000002", now, |c, _, _| {
                c.body.profile.vorname = Some("Carl".into());
                Ok(())
            })
            .unwrap();
        gone = a.pseudonym;
        kept = b.pseudonym;
        store
            .backup_to(
                &backup_id.recipient(),
                std::fs::File::create(&backup_file).unwrap(),
            )
            .unwrap();
        wrapped = store.keys.get(&gone).unwrap().unwrap();
        assert!(count_hits(&state, std::slice::from_ref(&wrapped)) > 0);

        assert_eq!(store.forget(&[gone], now).unwrap(), 1);
        assert!(store.customer(&gone).unwrap().is_none());
        assert!(store.recent_messages(&gone, 12).unwrap().is_empty());
    }
    for (path, bytes) in all_file_bytes(&state) {
        let hits = aho_corasick::AhoCorasick::new([&wrapped])
            .unwrap()
            .find_iter(&bytes)
            .count();
        assert_eq!(hits, 0, "wrapped key still in {}", path.display());
    }
    {
        let store = Store::open(&state, StoreIdentity::parse(&text).unwrap()).unwrap();
        assert!(store.customer(&gone).unwrap().is_none());
        assert!(store.customer(&kept).unwrap().is_some());
        assert_eq!(store.forget_ledger().unwrap().len(), 1);
    }
    let summary = backup::restore(
        &backup_file,
        backup_id.age_identity(),
        &state,
        &text,
        &ledger::Erasures::new(),
    )
    .unwrap();
    assert_eq!(summary.erasures_reapplied, 1);
    let store = Store::open(&state, StoreIdentity::parse(&text).unwrap()).unwrap();
    assert!(store.customer(&gone).unwrap().is_none());
    assert_eq!(
        store
            .customer(&kept)
            .unwrap()
            .unwrap()
            .body
            .profile
            .vorname
            .as_deref(),
        Some("Carl")
    );
    drop(store);
    assert_eq!(count_hits(&state, std::slice::from_ref(&wrapped)), 0);
}

/// A store that keeps its ledger file beside it, as the daemon's does.
fn open_with_ledger(state: &Path, text: &str) -> Store {
    let mut store = Store::open(state, StoreIdentity::parse(text).unwrap()).unwrap();
    store
        .keep_ledger_at(&state.with_file_name(ledger::LEDGER_FILE))
        .unwrap();
    store
}

#[test]
fn restore_into_an_empty_directory_keeps_erasures_from_the_ledger_file() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("store");
    let backup_file = dir.path().join("backup.age");
    let backup_id = StoreIdentity::generate();
    let (_, text) = identity_pair();
    let now = t("2026-11-26T10:00:00Z");
    let (gone, kept);
    {
        let store = open_with_ledger(&state, &text);
        gone = store
            .update_customer("4915100000001", now, |c, _, _| {
                c.body.profile.vorname = Some("Berta".into());
                Ok(())
            })
            .unwrap()
            .0
            .pseudonym;
        kept = store
            .update_customer("4915100000002", now, |_, _, _| Ok(()))
            .unwrap()
            .0
            .pseudonym;
        store
            .backup_to(
                &backup_id.recipient(),
                std::fs::File::create(&backup_file).unwrap(),
            )
            .unwrap();
        store
            .forget(&[gone], now + SignedDuration::from_hours(1))
            .unwrap();
    }
    // The store is lost (a corrupt disk, a replacement box with only the state directory's
    // ledger copied over): the ledger file is all that knows about the erasure.
    std::fs::remove_dir_all(&state).unwrap();
    let erasures = ledger::LedgerFile::at(&state.with_file_name(ledger::LEDGER_FILE))
        .read()
        .unwrap()
        .expect("the ledger file survives the store");
    assert_eq!(erasures.len(), 1);

    // Without it the erasure would be undone...
    let scratch = dir.path().join("scratch");
    backup::restore(
        &backup_file,
        backup_id.age_identity(),
        &scratch,
        &text,
        &ledger::Erasures::new(),
    )
    .unwrap();
    let revived = Store::open(&scratch, StoreIdentity::parse(&text).unwrap()).unwrap();
    assert!(revived.customer(&gone).unwrap().is_some());
    drop(revived);

    // ...with it, it stays.
    let summary = backup::restore(
        &backup_file,
        backup_id.age_identity(),
        &state,
        &text,
        &erasures,
    )
    .unwrap();
    assert_eq!(summary.erasures_reapplied, 1);
    let store = open_with_ledger(&state, &text);
    assert!(store.customer(&gone).unwrap().is_none());
    assert!(store.keys.get(&gone).unwrap().is_none());
    assert!(store.customer(&kept).unwrap().is_some());
    // The restored store carries the erasure with its original time.
    assert_eq!(
        store.forgotten_at(&gone).unwrap(),
        Some(now + SignedDuration::from_hours(1))
    );
}

#[test]
fn restore_keeps_a_customer_who_wrote_again_after_being_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("store");
    let backup_file = dir.path().join("backup.age");
    let backup_id = StoreIdentity::generate();
    let (_, text) = identity_pair();
    let t0 = t("2026-11-26T10:00:00Z");
    let back;
    {
        let store = open_with_ledger(&state, &text);
        let p = store
            .update_customer("4915100000003", t0, |_, _, _| Ok(()))
            .unwrap()
            .0
            .pseudonym;
        store
            .forget(&[p], t0 + SignedDuration::from_hours(1))
            .unwrap();
        back = store
            .update_customer(
                "4915100000003",
                t0 + SignedDuration::from_hours(2),
                |c, _, _| {
                    c.body.profile.vorname = Some("Dora".into());
                    Ok(())
                },
            )
            .unwrap()
            .0
            .pseudonym;
        assert_eq!(back, p);
        store
            .backup_to(
                &backup_id.recipient(),
                std::fs::File::create(&backup_file).unwrap(),
            )
            .unwrap();
    }
    let erasures = ledger::LedgerFile::at(&state.with_file_name(ledger::LEDGER_FILE))
        .read()
        .unwrap()
        .unwrap();
    std::fs::remove_dir_all(&state).unwrap();
    let summary = backup::restore(
        &backup_file,
        backup_id.age_identity(),
        &state,
        &text,
        &erasures,
    )
    .unwrap();
    assert_eq!(summary.erasures_reapplied, 0);
    let store = Store::open(&state, StoreIdentity::parse(&text).unwrap()).unwrap();
    let c = store
        .customer(&back)
        .unwrap()
        .expect("wrote again after the erasure");
    assert_eq!(c.body.profile.vorname.as_deref(), Some("Dora"));
}

#[test]
fn an_existing_stores_erasures_reach_a_new_ledger_file() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("store");
    let (id, text) = identity_pair();
    let now = t("2026-11-26T10:00:00Z");
    let p;
    {
        let store = Store::open(&state, id).unwrap();
        p = store
            .update_customer("4915100000004", now, |_, _, _| Ok(()))
            .unwrap()
            .0
            .pseudonym;
        store.forget(&[p], now).unwrap();
    }
    let file = state.with_file_name(ledger::LEDGER_FILE);
    assert!(!file.exists());
    drop(open_with_ledger(&state, &text));
    let read = ledger::LedgerFile::at(&file).read().unwrap().unwrap();
    assert_eq!(read.get(&p), Some(&now));
}

#[test]
fn restore_refuses_the_wrong_backup_identity() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("store");
    let file = dir.path().join("b.age");
    let (id, text) = identity_pair();
    let backup_id = StoreIdentity::generate();
    {
        let store = Store::open(&state, id).unwrap();
        store
            .backup_to(
                &backup_id.recipient(),
                std::fs::File::create(&file).unwrap(),
            )
            .unwrap();
    }
    let err = backup::restore(
        &file,
        StoreIdentity::generate().age_identity(),
        &state,
        &text,
        &ledger::Erasures::new(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("backup identity"), "{err}");
    // The store is untouched.
    assert!(Store::open(&state, StoreIdentity::parse(&text).unwrap()).is_ok());
}

#[test]
fn rotate_identity_rewraps_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let (id, _) = identity_pair();
    let (new_id, new_text) = identity_pair();
    let now = Timestamp::now();
    {
        let store = Store::open(dir.path(), id).unwrap();
        for i in 0..10 {
            store
                .update_customer(&format!("49160{i}"), now, |c, _, _| {
                    c.body.profile.vorname = Some(format!("N{i}"));
                    Ok(())
                })
                .unwrap();
        }
        assert_eq!(store.rotate_identity(&new_id.recipient()).unwrap(), 10);
    }
    let store = Store::open(dir.path(), StoreIdentity::parse(&new_text).unwrap()).unwrap();
    let c = store.customer(&store.pseudonym("491603")).unwrap().unwrap();
    assert_eq!(c.body.profile.vorname.as_deref(), Some("N3"));
}

#[test]
fn retention_deletes_exactly_what_is_due() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreIdentity::generate()).unwrap();
    let policy = RetentionPolicy::default();
    let now = t("2026-11-26T10:00:00Z");
    let days = |d: i64| now.checked_sub(SignedDuration::from_hours(24 * d)).unwrap();

    // Inactive lead, never booked, last contact 181 days ago: forgotten whole.
    store
        .update_customer("491701", days(181), |c, b, s| {
            s.append_message(c, &msg(Direction::Inbound, "alt", days(181)), b)
        })
        .unwrap();
    // Booked customer, equally old: kept (its old messages go by the history rule).
    store
        .update_customer("491702", days(181), |c, b, s| {
            c.meta.ever_booked = true;
            c.meta.stage = Stage::TrialBooked;
            s.append_message(c, &msg(Direction::Inbound, "alt", days(181)), b)
        })
        .unwrap();
    // Active lead with one message 91 days old and one 89 days old.
    store
        .update_customer("491703", days(1), |c, b, s| {
            s.append_message(c, &msg(Direction::Inbound, "91", days(91)), b)?;
            s.append_message(c, &msg(Direction::Inbound, "89", days(89)), b)
        })
        .unwrap();
    // Lead at 179 days: kept.
    store
        .update_customer("491704", days(179), |_, _, _| Ok(()))
        .unwrap();
    // Seen ids at 15 and 13 days.
    for (id, d) in [("wamid.old", 15), ("wamid.new", 13)] {
        store
            .ks
            .seen
            .insert(
                store.token_hash("seen", id),
                days(d).as_second().to_be_bytes().to_vec(),
            )
            .unwrap();
    }

    let dry = store.sweep(&policy, now, true).unwrap();
    assert_eq!(
        (
            dry.customers_forgotten,
            dry.messages_deleted,
            dry.seen_ids_deleted
        ),
        (1, 3, 1)
    );
    assert!(store
        .customer(&store.pseudonym("491701"))
        .unwrap()
        .is_some());

    let report = store.sweep(&policy, now, false).unwrap();
    assert_eq!(report.customers_forgotten, 1);
    // 491702's 181-day message and 491703's 91-day message (491701's went with the customer).
    assert_eq!(report.messages_deleted, 2);
    assert_eq!(report.seen_ids_deleted, 1);
    assert!(store
        .customer(&store.pseudonym("491701"))
        .unwrap()
        .is_none());
    assert!(store
        .customer(&store.pseudonym("491702"))
        .unwrap()
        .is_some());
    assert!(store
        .customer(&store.pseudonym("491704"))
        .unwrap()
        .is_some());
    let left: Vec<_> = store
        .recent_messages(&store.pseudonym("491703"), 12)
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(left, vec!["89".to_string()]);
    assert!(store
        .ks
        .seen
        .contains_key(store.token_hash("seen", "wamid.new"))
        .unwrap());
    assert!(!store
        .ks
        .seen
        .contains_key(store.token_hash("seen", "wamid.old"))
        .unwrap());

    // A second run finds nothing more.
    let again = store.sweep(&policy, now, false).unwrap();
    assert_eq!(
        (
            again.customers_forgotten,
            again.messages_deleted,
            again.seen_ids_deleted
        ),
        (0, 0, 0)
    );
}

#[test]
fn concurrent_updates_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), StoreIdentity::generate()).unwrap());
    let now = Timestamp::now();
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            std::thread::spawn(move || {
                for _ in 0..50 {
                    // Half the threads share one customer, the others have their own.
                    let phone = if i % 2 == 0 {
                        "4917000".to_string()
                    } else {
                        format!("49171{i}")
                    };
                    store
                        .update_customer(&phone, now, |c, b, s| {
                            let n = c
                                .body
                                .conversation
                                .extra
                                .get("n")
                                .and_then(|v| v.as_u64())
                                .unwrap_or(0);
                            c.body.conversation.extra.insert("n".into(), (n + 1).into());
                            s.append_message(c, &msg(Direction::Inbound, "x", now), b)
                        })
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let shared = store
        .customer(&store.pseudonym("4917000"))
        .unwrap()
        .unwrap();
    assert_eq!(shared.body.conversation.extra["n"], 400);
    assert_eq!(store.all_messages(&shared.pseudonym).unwrap().count(), 400);
    for i in (1..16).step_by(2) {
        let c = store
            .customer(&store.pseudonym(&format!("49171{i}")))
            .unwrap()
            .unwrap();
        assert_eq!(c.body.conversation.extra["n"], 50);
    }
    let seqs: HashSet<_> = store
        .ks
        .messages
        .prefix(shared.pseudonym.0)
        .map(|g| g.key().unwrap().to_vec())
        .collect();
    assert_eq!(seqs.len(), 400);
}

#[test]
fn statuses_match_a_customer_known_only_by_user_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreIdentity::generate()).unwrap();
    let now = Timestamp::now();
    let (by_id, _) = store
        .update_customer("DE.4242", now, |_, _, _| Ok(()))
        .unwrap();
    let (by_number, _) = store
        .update_customer("+49 151 3333333", now, |_, _, _| Ok(()))
        .unwrap();
    // The number is unknown, the user id is a customer: the status is theirs.
    assert_eq!(
        store.pseudonym_matching("4915144444444", Some("DE.4242")),
        by_id.pseudonym
    );
    // A known number wins; without a user id the number alone counts.
    assert_eq!(
        store.pseudonym_matching("+49 151 3333333", Some("DE.4242")),
        by_number.pseudonym
    );
    assert_eq!(
        store.pseudonym_matching("4915144444444", None),
        store.pseudonym("4915144444444")
    );
    assert_eq!(
        store.pseudonym_matching("4915144444444", Some("DE.9")),
        store.pseudonym("4915144444444")
    );
    // A status with only the user id.
    assert_eq!(
        store.pseudonym_matching("DE.4242", Some("DE.4242")),
        by_id.pseudonym
    );
}

#[test]
fn the_orphan_sweep_keeps_the_key_of_a_booking_made_before_the_customer_row() {
    let dir = tempfile::tempdir().unwrap();
    let (id, _) = identity_pair();
    let store = Store::open(dir.path(), id).unwrap();
    // What the booker does for a new lead: the booking row is sealed and written while the
    // turn that asked for it has not written the customer row yet.
    let p = store.pseudonym("4915100000077");
    let row_key = [&p.0[..], &[9u8; 16][..]].concat();
    {
        let _guard = store.lock_customer(&p);
        let mut batch = store.batch();
        let key = store.data_key_or_create(&p, &mut batch).unwrap();
        let sealed = key.seal(ks::BOOKINGS, &row_key, b"{\"step\":\"booked\"}");
        batch.insert(&store.ks.bookings, row_key.clone(), sealed);
        store.commit_durable(batch).unwrap();
    }
    // A key with neither a customer row nor booking rows is an orphan.
    let lone = store.pseudonym("4915100000078");
    {
        let _guard = store.lock_customer(&lone);
        let mut batch = store.batch();
        store.data_key_or_create(&lone, &mut batch).unwrap();
    }
    assert_eq!(store.remove_orphan_keys().unwrap(), 1);
    assert!(store.keys.get(&lone).unwrap().is_none());
    let key = store
        .data_key(&p)
        .unwrap()
        .expect("the booking's key is kept");
    let sealed = store.ks.bookings.get(&row_key).unwrap().unwrap();
    assert_eq!(
        key.open(ks::BOOKINGS, &row_key, &sealed)
            .unwrap()
            .as_slice(),
        b"{\"step\":\"booked\"}"
    );
}
