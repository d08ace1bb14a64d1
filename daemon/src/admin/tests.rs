//! Admin API tests: the real server on a temporary socket with a real store, driven by the
//! CLI's client; and a property test that audit entries never carry the personal data of the
//! people they are about.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use jiff::Timestamp;
use proptest::prelude::*;

use super::api::*;
use super::client::{AdminClient, ClientError};
use super::*;
use crate::audit::{AuditRecord, ForgetReason, Hash, Verification, VerifyReport};
use crate::store::crypto::StoreIdentity;
use crate::store::customers::BotMode;
use crate::store::messages::{Direction, Message};

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    state: Arc<AdminState>,
    identity_text: String,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let id = StoreIdentity::generate();
    let identity_text = id.to_secret_line().to_string();
    let store = Arc::new(Store::open(&dir.path().join("store"), id).unwrap());
    let audit = Arc::new(AuditLog::open(store.clone()).unwrap().without_journal());
    let state = Arc::new(AdminState::new(
        store.clone(),
        audit,
        Arc::new(Config::default()),
    ));
    Fixture {
        _dir: dir,
        store,
        state,
        identity_text,
    }
}

struct Person {
    phone: String,
    first: String,
    last: String,
    email: String,
    text: String,
}

fn add_person(store: &Store, p: &Person) {
    let now = Timestamp::now();
    store
        .update_customer(&p.phone, now, |c, batch, s| {
            c.body.profile.vorname = Some(p.first.clone());
            c.body.profile.nachname = Some(p.last.clone());
            c.body.profile.email = Some(p.email.clone());
            c.body.contact_name = Some(format!("{} {}", p.first, p.last));
            s.append_message(
                c,
                &Message {
                    direction: Direction::Inbound,
                    text: p.text.clone(),
                    at: now,
                    wamid: None,
                },
                batch,
            )?;
            Ok(())
        })
        .unwrap();
}

fn anna() -> Person {
    Person {
        phone: "+49 151 2345678".into(),
        first: "Annalena".into(),
        last: "Schmidtbauer".into(),
        email: "annalena.schmidtbauer@example.org".into(),
        text: "Ich moechte gern ein Probetraining machen".into(),
    }
}

fn bernd() -> Person {
    Person {
        phone: "+49 170 9876543".into(),
        first: "Berndolf".into(),
        last: "Kowalczykow".into(),
        email: "berndolf@example.net".into(),
        text: "Was kostet die Mitgliedschaft im Monat".into(),
    }
}

fn root() -> Caller {
    Caller {
        uid: 0,
        gid: 0,
        pid: None,
        name: "root".into(),
        groups: vec![0],
    }
}

/// The admin server on a temporary socket.
struct Server {
    inner: crate::admin::AdminServerThread,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(state: Arc<AdminState>) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let inner = crate::admin::AdminServerThread::start(
            state,
            &dir.path().join("admin.sock"),
            "no-such-group-frontdesk",
        );
        Server { inner, _dir: dir }
    }
}

fn audit_entries(store: &Store) -> Vec<AuditRecord> {
    store
        .keyspaces()
        .audit
        .iter()
        .map(|g| serde_json::from_slice(&g.into_inner().unwrap().1).unwrap())
        .collect()
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario through every endpoint, read top to bottom"
)]
fn every_endpoint_end_to_end_over_the_socket() {
    let f = fixture();
    add_person(&f.store, &anna());
    add_person(&f.store, &bernd());
    crate::stats::record_now(
        &f.store,
        crate::stats::FunnelEvent::NewContact,
        Timestamp::now(),
    )
    .unwrap();
    f.state
        .board
        .set_value("model", serde_json::json!("SmolLM2-135M (test)"));
    let server = Server::start(f.state.clone());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&server.inner.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    // The group does not exist: owner only.
    assert_eq!(mode, 0o600);
    let c = AdminClient::new(&server.inner.socket);

    let s: StatusReply = c.get(STATUS).unwrap().json().unwrap();
    assert_eq!(s.customers, 2);
    assert_eq!(s.components["model"], "SmolLM2-135M (test)");
    assert!(s.last_retention.is_none());

    let rows: Vec<CustomerRow> = c
        .post(CUSTOMERS_LIST, &ListRequest::default())
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.name.is_none()));
    let named: Vec<CustomerRow> = c
        .post(
            CUSTOMERS_LIST,
            &ListRequest {
                show_names: true,
                ..Default::default()
            },
        )
        .unwrap()
        .json()
        .unwrap();
    assert!(named
        .iter()
        .any(|r| r.name.as_deref() == Some("Annalena Schmidtbauer")));
    let filtered: Vec<CustomerRow> = c
        .post(
            CUSTOMERS_LIST,
            &ListRequest {
                status: Some("paused".into()),
                ..Default::default()
            },
        )
        .unwrap()
        .json()
        .unwrap();
    assert!(filtered.is_empty());

    let d: CustomerDetail = c
        .post(
            CUSTOMERS_SHOW,
            &PhoneRequest {
                phone: anna().phone,
            },
        )
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(d.profile["email"], anna().email);
    assert_eq!(d.recent_messages[0].text, anna().text);

    // Pause and resume change the mode, each with its entry.
    let m: ModeReply = c
        .post(
            CUSTOMERS_PAUSE,
            &PhoneRequest {
                phone: anna().phone,
            },
        )
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(m.mode, "paused");
    let pa = f.store.pseudonym(&anna().phone);
    assert_eq!(
        f.store.customer_meta(&pa).unwrap().unwrap().mode,
        BotMode::Paused
    );
    c.post(
        CUSTOMERS_RESUME,
        &PhoneRequest {
            phone: anna().phone,
        },
    )
    .unwrap();
    assert_eq!(
        f.store.customer_meta(&pa).unwrap().unwrap().mode,
        BotMode::Active
    );

    // Unknown customer: 404, audited; neither a number nor a user id: 400.
    for (phone, status) in [
        ("+49 151 0000000", 404),
        ("DE.0000000", 404),
        ("+49 1", 400),
        ("../etc/passwd", 400),
    ] {
        let err = c
            .post(
                CUSTOMERS_SHOW,
                &PhoneRequest {
                    phone: phone.into(),
                },
            )
            .err()
            .unwrap();
        assert!(
            matches!(err, ClientError::Failed { status: s, .. } if s == status),
            "{phone}: {err}"
        );
    }

    // Export: decrypts with the recipient's identity; holds Anna and nothing of Bernd.
    let recipient_id = StoreIdentity::generate();
    let bytes = c
        .post(
            CUSTOMERS_EXPORT,
            &ExportRequest {
                phone: anna().phone,
                recipient: recipient_id.recipient().to_string(),
            },
        )
        .unwrap()
        .body;
    let mut plain = String::new();
    crate::store::crypto::decrypt_stream(recipient_id.age_identity(), &bytes[..])
        .unwrap()
        .read_to_string(&mut plain)
        .unwrap();
    let (a, b) = (anna(), bernd());
    for needle in [a.email.as_str(), &a.text, &a.first, "491512345678"] {
        assert!(plain.contains(needle), "export lacks {needle}");
    }
    for needle in [b.email.as_str(), &b.text, &b.first, "491709876543"] {
        assert!(!plain.contains(needle), "export holds {needle}");
    }
    let doc: serde_json::Value = serde_json::from_str(&plain).unwrap();
    assert!(doc["audit"].as_array().unwrap().len() >= 3);
    let entries = audit_entries(&f.store);
    let export_entry = entries
        .iter()
        .find(|e| e.action == "customer.export")
        .unwrap();
    assert_eq!(export_entry.subject.as_ref().unwrap().as_str(), pa.short());

    // Audit show by customer phone, verify, export.
    let about_anna: Vec<AuditRecord> = c
        .post(
            AUDIT_SHOW,
            &AuditShowRequest {
                customer_phone: Some(anna().phone),
                ..Default::default()
            },
        )
        .unwrap()
        .json()
        .unwrap();
    assert!(about_anna
        .iter()
        .all(|r| r.subject.as_ref().unwrap().as_str() == pa.short()));
    assert!(about_anna.iter().any(|r| r.action == "customer.pause"));
    let v: VerifyReport = c
        .post(AUDIT_VERIFY, &VerifyRequest::default())
        .unwrap()
        .json()
        .unwrap();
    assert!(v.is_ok(), "{v:?}");
    let jsonl = c
        .post(
            AUDIT_EXPORT,
            &AuditExportRequest {
                format: ExportFormat::Jsonl,
                since: None,
                until: None,
            },
        )
        .unwrap()
        .body;
    let lines: Vec<AuditRecord> = String::from_utf8(jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 10);
    let csv = c
        .post(
            AUDIT_EXPORT,
            &AuditExportRequest {
                format: ExportFormat::Csv,
                since: None,
                until: None,
            },
        )
        .unwrap()
        .body;
    assert!(String::from_utf8(csv)
        .unwrap()
        .starts_with(crate::audit::CSV_HEADER));

    // Forget: gone from the store, recorded with the caller.
    let r: ForgetReply = c
        .post(
            CUSTOMERS_FORGET,
            &ForgetRequest {
                phone: anna().phone,
                reason: ForgetReason::DsgvoRequest,
            },
        )
        .unwrap()
        .json()
        .unwrap();
    assert!(r.existed);
    assert!(f.store.customer(&pa).unwrap().is_none());
    let forget = audit_entries(&f.store)
        .into_iter()
        .find(|e| e.action == "customer.forget")
        .unwrap();
    assert_eq!(r.audit_seq, forget.seq);
    assert!(
        matches!(forget.actor, crate::audit::Actor::Admin { uid, .. } if uid == crate::sys::uid())
    );

    // Retention and stats.
    let run: RetentionRun = c
        .post(RETENTION_RUN, &RetentionRequest { dry_run: false })
        .unwrap()
        .json()
        .unwrap();
    assert!(!run.dry_run);
    let s: StatusReply = c.get(STATUS).unwrap().json().unwrap();
    assert!(s.last_retention.is_some());
    let report: crate::stats::FunnelReport = c
        .post(STATS, &StatsRequest::default())
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(report.total.new_contacts, 1);

    // Bad bodies are refused (and audited), unknown paths too.
    let err = c
        .post(CUSTOMERS_SHOW, &serde_json::json!({"nope": 1}))
        .err()
        .unwrap();
    assert!(
        matches!(err, ClientError::Failed { status: 400, .. }),
        "{err}"
    );
    let err = c.post("/v1/nothing", &serde_json::json!({})).err().unwrap();
    assert!(
        matches!(err, ClientError::Failed { status: 405, .. }),
        "{err}"
    );

    // Every request so far left an entry, and the chain is intact.
    let entries = audit_entries(&f.store);
    assert!(entries.iter().any(|e| e.action == "admin.status"));
    assert!(entries.iter().any(|e| e.action == "customer.list_names"));
    assert!(entries.iter().any(|e| e.action == "retention.purge"));
    assert!(entries.iter().any(|e| e.action == "stats.read"));
    assert!(entries
        .iter()
        .any(|e| e.reason.as_deref() == Some("bad_request")));
    assert!(matches!(
        f.state
            .audit
            .verify(&Default::default())
            .unwrap()
            .verification,
        Verification::Ok { .. }
    ));
    drop(server);
    let _ = f.identity_text;
}

#[test]
fn unreachable_socket_is_reported_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let c = AdminClient::new(&dir.path().join("missing.sock"));
    assert!(matches!(
        c.get(STATUS),
        Err(ClientError::Unreachable { .. })
    ));
}

/// Every file byte under `dir`, concatenated per file.
fn files_contain(dir: &Path, needle: &[u8]) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else if let Ok(bytes) = std::fs::read(e.path()) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    return true;
                }
            }
        }
    }
    false
}

#[test]
fn forget_leaves_no_readable_trace_in_the_store_files() {
    let f = fixture();
    add_person(&f.store, &anna());
    let ctx = ops::Ctx {
        state: &f.state,
        caller: &root(),
        request_id: crate::audit::RequestId(1),
    };
    ops::customers_forget(
        &ctx,
        ForgetRequest {
            phone: anna().phone,
            reason: ForgetReason::CustomerRequest,
        },
    )
    .unwrap();
    f.store.persist().unwrap();
    let root_dir = f.store.path();
    for needle in [
        anna().email,
        anna().first,
        anna().text,
        "491512345678".into(),
    ] {
        assert!(
            !files_contain(root_dir, needle.as_bytes()),
            "{needle} left on disk"
        );
    }
}

/// An entry's JSON without the fields that are random or derived hex (hashes, request id,
/// pseudonym), which could contain a digit run by chance.
fn scrubbed(r: &AuditRecord) -> String {
    let mut r = r.clone();
    r.prev = Hash::ZERO;
    r.hash = Hash::ZERO;
    r.request_id = None;
    r.subject = None;
    if let crate::audit::Actor::Customer { .. } = r.actor {
        r.actor = crate::audit::Actor::System;
    }
    let mut all = String::from_utf8(r.to_json()).unwrap();
    all.push_str(&crate::audit::journal::fields(&r).join("\n"));
    all
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, .. ProptestConfig::default() })]

    #[test]
    fn audit_entries_never_hold_the_personal_data_involved(
        phone_tail in "[0-9]{8}",
        first in "[A-Z][a-z]{6,10}",
        last in "[A-Z][a-z]{6,10}",
        email_user in "[a-z]{6,10}",
        text in "[A-Za-z]{6,10}( [A-Za-z]{3,8}){2,5}",
    ) {
        let f = fixture();
        let person = Person {
            phone: format!("+49 15{phone_tail}"),
            first: first.clone(),
            last: last.clone(),
            email: format!("{email_user}@example.org"),
            text: text.clone(),
        };
        add_person(&f.store, &person);
        let caller = root();
        let ctx = ops::Ctx { state: &f.state, caller: &caller, request_id: crate::audit::RequestId(7) };
        let phone = || PhoneRequest { phone: person.phone.clone() };
        let recipient = StoreIdentity::generate().recipient().to_string();
        ops::customers_list(&ctx, ListRequest { show_names: true, ..Default::default() }).unwrap();
        ops::customers_show(&ctx, phone()).unwrap();
        ops::customers_set_mode(&ctx, phone(), true).unwrap();
        ops::customers_set_mode(&ctx, phone(), false).unwrap();
        ops::customers_export(&ctx, ExportRequest { phone: person.phone.clone(), recipient }).unwrap();
        ops::audit_show(&ctx, AuditShowRequest { customer_phone: Some(person.phone.clone()), ..Default::default() }).unwrap();
        ops::customers_forget(&ctx, ForgetRequest { phone: person.phone.clone(), reason: ForgetReason::Other }).unwrap();
        ops::customers_show(&ctx, phone()).err().unwrap();

        let digits = format!("4915{phone_tail}");
        let needles = [digits.as_str(), phone_tail.as_str(), &first, &last, &person.email, &email_user, &text];
        let entries = audit_entries(&f.store);
        prop_assert!(entries.len() >= 8);
        for e in &entries {
            let s = scrubbed(e);
            for n in needles {
                prop_assert!(!s.contains(n), "entry {} holds {n:?}: {s}", e.seq);
            }
        }
    }
}

fn json_of(reply: ops::Reply) -> serde_json::Value {
    match reply {
        ops::Reply::Json(v) => v,
        ops::Reply::Bytes(..) => panic!("expected JSON"),
    }
}

#[test]
fn customers_show_export_and_forget_accept_a_user_id() {
    let f = fixture();
    let only_id = Person {
        phone: "DE.5551234".into(),
        ..bernd()
    };
    add_person(&f.store, &only_id);
    add_person(&f.store, &anna());
    let pa = f.store.pseudonym(&anna().phone);
    let mut batch = f.store.batch();
    assert!(f.store.link_user_id("DE.777", &pa, &mut batch).unwrap());
    f.store.commit_durable(batch).unwrap();

    let caller = root();
    let ctx = ops::Ctx {
        state: &f.state,
        caller: &caller,
        request_id: crate::audit::RequestId(9),
    };
    let show = |phone: &str| {
        ops::customers_show(
            &ctx,
            PhoneRequest {
                phone: phone.into(),
            },
        )
        .map(json_of)
    };
    let d = show("DE.5551234").unwrap();
    assert_eq!(d["phone"], "DE.5551234");
    assert_eq!(d["user_id"], "DE.5551234");
    // A user id linked to a number names that number's customer.
    assert_eq!(show("DE.777").unwrap()["pseudonym"], pa.short());
    let recipient = StoreIdentity::generate().recipient().to_string();
    assert!(ops::customers_export(
        &ctx,
        ExportRequest {
            phone: "DE.777".into(),
            recipient,
        },
    )
    .is_ok());

    let forgotten = json_of(
        ops::customers_forget(
            &ctx,
            ForgetRequest {
                phone: "DE.777".into(),
                reason: ForgetReason::Other,
            },
        )
        .unwrap(),
    );
    assert_eq!(forgotten["existed"], true);
    assert!(f.store.customer(&pa).unwrap().is_none());
    assert_eq!(show(&anna().phone).err().unwrap().status, 404);
    assert_eq!(show("DE.777").err().unwrap().status, 404);
    let forgotten = json_of(
        ops::customers_forget(
            &ctx,
            ForgetRequest {
                phone: "DE.5551234".into(),
                reason: ForgetReason::Other,
            },
        )
        .unwrap(),
    );
    assert_eq!(forgotten["existed"], true);
    assert_eq!(show("DE.5551234").err().unwrap().status, 404);
    assert_eq!(show("DE.55.1").err().unwrap().status, 400);
}
