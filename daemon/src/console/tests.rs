//! The console's actions and pages against the real store and audit log: answers as staff
//! turns, the 24-hour window, roles, hand-back, and the inbox's order and unread markers.

use std::collections::HashMap;
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};

use super::accounts::Role;
use super::actions::{self, Done, Staff};
use super::{pages, ConsoleState};
use crate::admin::AdminState;
use crate::audit::{AuditFilter, AuditLog, StaffName};
use crate::config::Config;
use crate::store::crypto::{Pseudonym, StoreIdentity};
use crate::store::customers::BotMode;
use crate::store::messages::Direction;
use crate::store::Store;
use crate::turn::{attention, AlertKind, StaffAlert};
use crate::whatsapp::queue::{OutboundKind, Queues};

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    queues: Arc<Queues>,
    state: ConsoleState,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("test setup");
    let store = Arc::new(Store::open(dir.path(), StoreIdentity::generate()).expect("test setup"));
    let audit = Arc::new(
        AuditLog::open(store.clone())
            .expect("test setup")
            .without_journal(),
    );
    let mut cfg = Config::default();
    cfg.whatsapp.reopen_template = Some("reopen_chat".into());
    let admin = Arc::new(AdminState::new(store.clone(), audit, Arc::new(cfg)));
    let queues = Arc::new(Queues::new(&store).expect("test setup"));
    admin.set_outbox(queues.clone(), Arc::new(tokio::sync::Notify::new()));
    Fixture {
        _dir: dir,
        store,
        queues,
        state: ConsoleState::new(admin),
    }
}

fn staff(name: &str, role: Role) -> Staff {
    Staff {
        name: StaffName::parse(name).expect("test setup"),
        role,
    }
}

/// A customer who last wrote `ago` before now, in `mode`.
fn customer(f: &Fixture, phone: &str, ago: SignedDuration, mode: BotMode) -> Pseudonym {
    let at = Timestamp::now() - ago;
    let (c, ()) = f
        .store
        .update_customer(phone, at, |c, batch, st| {
            c.meta.mode = mode;
            c.meta.last_inbound = Some(at);
            c.body.contact_name = Some(format!("Kundin {phone}"));
            st.append_message(
                c,
                &crate::store::messages::Message {
                    direction: Direction::Inbound,
                    text: "Hallo".into(),
                    at,
                    wamid: None,
                },
                batch,
            )?;
            Ok(())
        })
        .expect("test setup");
    c.pseudonym
}

fn form(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

fn actions_by(f: &Fixture, actor: &str) -> Vec<(String, String)> {
    f.state
        .admin
        .audit
        .query(&AuditFilter {
            actor: Some(actor.into()),
            ..AuditFilter::default()
        })
        .expect("test setup")
        .into_iter()
        .map(|r| (r.action, r.outcome.code().to_string()))
        .collect()
}

#[test]
fn a_staff_answer_is_committed_like_a_reply_and_audited() {
    let f = fixture();
    let p = customer(
        &f,
        "+491511111111",
        SignedDuration::from_mins(5),
        BotMode::Escalated,
    );
    let mut live = f.store.activity().subscribe();
    let done = actions::run(
        &f.state,
        &staff("ben", Role::Staff),
        p,
        "reply",
        &form(&[("text", "  Wir rufen Sie an.  ")]),
    )
    .unwrap();
    assert!(
        matches!(done, Done::Redirect(ref to) if to.contains("done=sent")),
        "{done:?}"
    );
    let history = f.store.recent_messages(&p, 5).unwrap();
    let last = history.last().unwrap();
    assert_eq!(last.direction, Direction::Staff);
    assert_eq!(last.text, "Wir rufen Sie an.");
    let outbox = f.queues.outbox(&f.store).unwrap();
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].pseudonym, p);
    assert_eq!(outbox[0].entry.to, "491511111111");
    assert!(matches!(&outbox[0].entry.kind, OutboundKind::Text(t) if t == "Wir rufen Sie an."));
    assert_eq!(outbox[0].entry.history.len(), 1);
    // The hand-over stands: an answer does not give the conversation back to the assistant.
    assert_eq!(
        f.store.customer_meta(&p).unwrap().unwrap().mode,
        BotMode::Escalated
    );
    assert_eq!(live.try_recv().unwrap(), p);
    assert!(actions_by(&f, "ben").contains(&("staff.reply".into(), "ok".into())));
}

#[test]
fn after_24_hours_only_a_configured_template_goes_out() {
    let f = fixture();
    let p = customer(
        &f,
        "+491512222222",
        SignedDuration::from_hours(30),
        BotMode::Active,
    );
    let ben = staff("ben", Role::Staff);
    let refused = actions::run(&f.state, &ben, p, "reply", &form(&[("text", "Hallo")])).unwrap();
    assert!(matches!(refused, Done::Refused(409, _)), "{refused:?}");
    let unknown = actions::run(
        &f.state,
        &ben,
        p,
        "template",
        &form(&[("template", "anything_else")]),
    )
    .unwrap();
    assert!(matches!(unknown, Done::Refused(400, _)), "{unknown:?}");
    assert!(f.queues.outbox(&f.store).unwrap().is_empty());

    let sent = actions::run(
        &f.state,
        &ben,
        p,
        "template",
        &form(&[("template", "reopen_chat"), ("params", "Anna\n")]),
    )
    .unwrap();
    assert!(matches!(sent, Done::Redirect(_)), "{sent:?}");
    let outbox = f.queues.outbox(&f.store).unwrap();
    assert_eq!(outbox.len(), 1);
    match &outbox[0].entry.kind {
        OutboundKind::Template { name, params, .. } => {
            assert_eq!(name, "reopen_chat");
            assert_eq!(params, &vec!["Anna".to_string()]);
        }
        other => panic!("not a template: {other:?}"),
    }
    let last = f.store.recent_messages(&p, 1).unwrap();
    assert_eq!(last[0].text, "[Vorlage reopen_chat]");
}

#[test]
fn only_owners_forget_and_export() {
    let f = fixture();
    let p = customer(
        &f,
        "+491513333333",
        SignedDuration::from_mins(1),
        BotMode::Active,
    );
    let confirm = form(&[("confirm", "yes")]);
    for action in ["forget", "export"] {
        let refused =
            actions::run(&f.state, &staff("ben", Role::Staff), p, action, &confirm).unwrap();
        assert!(
            matches!(refused, Done::Refused(403, _)),
            "{action}: {refused:?}"
        );
    }
    assert!(f.store.customer(&p).unwrap().is_some());
    let denied: Vec<_> = actions_by(&f, "ben")
        .into_iter()
        .filter(|(a, o)| a == "staff.denied" && o == "denied")
        .collect();
    assert_eq!(denied.len(), 2);

    let anna = staff("anna", Role::Owner);
    let export = actions::run(&f.state, &anna, p, "export", &confirm).unwrap();
    let Done::Download { bytes, .. } = export else {
        panic!("no download: {export:?}")
    };
    let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(doc["messages"][0]["text"], "Hallo");
    // An unconfirmed forget does nothing.
    let unconfirmed = actions::run(&f.state, &anna, p, "forget", &form(&[])).unwrap();
    assert!(matches!(unconfirmed, Done::Refused(400, _)));
    let forgot = actions::run(&f.state, &anna, p, "forget", &confirm).unwrap();
    assert!(matches!(forgot, Done::Redirect(_)), "{forgot:?}");
    assert!(f.store.customer(&p).unwrap().is_none());
    let by_anna = actions_by(&f, "anna");
    assert!(by_anna.contains(&("customer.export".into(), "ok".into())));
    assert!(by_anna.contains(&("customer.forget".into(), "ok".into())));
    // Nothing can be sent to a forgotten person.
    let after = actions::run(&f.state, &anna, p, "reply", &form(&[("text", "Hallo")])).unwrap();
    assert!(matches!(after, Done::Refused(409, _)), "{after:?}");
}

#[test]
fn handing_back_ends_the_hand_over_and_its_mark() {
    let f = fixture();
    let p = customer(
        &f,
        "+491514444444",
        SignedDuration::from_mins(1),
        BotMode::Escalated,
    );
    let mut batch = f.store.batch();
    attention::mark(
        &f.store,
        &mut batch,
        &StaffAlert {
            kind: AlertKind::Complaint,
            pseudonym: p,
        },
        Timestamp::now(),
    );
    f.store.commit_durable(batch).unwrap();
    let ben = staff("ben", Role::Staff);
    let done = actions::run(&f.state, &ben, p, "resume", &form(&[])).unwrap();
    assert!(matches!(done, Done::Redirect(_)), "{done:?}");
    assert_eq!(
        f.store.customer_meta(&p).unwrap().unwrap().mode,
        BotMode::Active
    );
    assert!(attention::get(&f.store, &p).unwrap().is_none());
    actions::run(&f.state, &ben, p, "pause", &form(&[])).unwrap();
    assert_eq!(
        f.store.customer_meta(&p).unwrap().unwrap().mode,
        BotMode::Paused
    );
    let by_ben = actions_by(&f, "ben");
    assert!(by_ben.contains(&("customer.resume".into(), "ok".into())));
    assert!(by_ben.contains(&("customer.pause".into(), "ok".into())));
}

#[test]
fn the_inbox_puts_waiting_conversations_first_and_marks_unread_ones() {
    let f = fixture();
    let recent = customer(
        &f,
        "+491515555555",
        SignedDuration::from_mins(1),
        BotMode::Active,
    );
    let handed_over = customer(
        &f,
        "+491516666666",
        SignedDuration::from_hours(3),
        BotMode::Escalated,
    );
    let paused = customer(
        &f,
        "+491517777777",
        SignedDuration::from_hours(5),
        BotMode::Paused,
    );
    let failed = customer(
        &f,
        "+491518888888",
        SignedDuration::from_hours(4),
        BotMode::Active,
    );
    let _gone = customer(
        &f,
        "+491519999999",
        SignedDuration::from_mins(2),
        BotMode::OptedOut,
    );
    let mut batch = f.store.batch();
    attention::mark(
        &f.store,
        &mut batch,
        &StaffAlert {
            kind: AlertKind::BookingFailed,
            pseudonym: failed,
        },
        Timestamp::now(),
    );
    f.store.commit_durable(batch).unwrap();
    let ben = StaffName::parse("ben").unwrap();

    let list = pages::inbox(&f.store, &f.state.inbox, &ben).unwrap();
    let ids = |rows: &[pages::InboxRow]| rows.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
    assert_eq!(
        ids(&list.waiting),
        vec![handed_over.short(), failed.short(), paused.short()]
    );
    assert_eq!(list.waiting_total, 3);
    let reasons: Vec<_> = list.waiting.iter().map(|r| r.reason).collect();
    assert_eq!(
        reasons,
        vec![
            Some("Übergeben"),
            Some("Buchung fehlgeschlagen"),
            Some("Assistent pausiert")
        ]
    );
    // Opted-out contacts are not offered.
    assert_eq!(ids(&list.recent), vec![recent.short()]);
    assert!(list.waiting.iter().all(|r| r.unread));

    // Opening the conversation marks it read for this member only.
    let mut batch = f.store.batch();
    let upto = f
        .store
        .customer_meta(&handed_over)
        .unwrap()
        .unwrap()
        .last_inbound
        .unwrap();
    pages::mark_read(&f.store, &mut batch, &handed_over, &ben, upto);
    f.store.commit_durable(batch).unwrap();
    let list = pages::inbox(&f.store, &f.state.inbox, &ben).unwrap();
    assert!(!list.waiting[0].unread);
    assert!(list.waiting[1].unread);
    let anna = StaffName::parse("anna").unwrap();
    assert!(
        pages::inbox(&f.store, &f.state.inbox, &anna)
            .unwrap()
            .waiting[0]
            .unread
    );
}

#[test]
fn pages_render_escaped_german_html() {
    use askama::Template;
    let f = fixture();
    let p = customer(
        &f,
        "+491510000000",
        SignedDuration::from_mins(1),
        BotMode::Escalated,
    );
    f.store
        .update_existing(&p, |c, _, _| {
            c.body.contact_name = Some("<script>alert(1)</script>".into());
            Ok(())
        })
        .unwrap();
    let view = pages::conversation(
        &f.store,
        &f.state.admin.audit,
        &p,
        vec!["reopen_chat".into()],
        Timestamp::now(),
    )
    .unwrap()
    .unwrap();
    assert!(view.window_open);
    assert!(view.needs_handback);
    let html = pages::ConversationPage {
        user: Some(pages::UserView::new(
            &StaffName::parse("ben").unwrap(),
            Role::Staff,
            "tok",
        )),
        nav: "inbox",
        user_csrf: "tok".into(),
        owner: false,
        notice: None,
        c: view,
    }
    .render()
    .unwrap();
    assert!(!html.contains("<script>alert"), "not escaped");
    assert!(html.contains("&#60;script&#62;") || html.contains("&lt;script&gt;"));
    assert!(html.contains("<html lang=\"de\">"));
    assert!(html.contains("An den Assistenten zurückgeben"));
    // Staff get no forget button; every form carries the CSRF token.
    assert!(!html.contains("id=\"forget\""));
    let forms = html.matches("<form method=\"post\"").count();
    assert_eq!(html.matches("name=\"csrf\" value=\"tok\"").count(), forms);
}

#[test]
fn the_trials_page_lists_coming_bookings_with_their_state() {
    use crate::store::ks;
    let f = fixture();
    let p = customer(
        &f,
        "+491512121212",
        SignedDuration::from_mins(1),
        BotMode::Active,
    );
    f.store
        .update_existing(&p, |c, _, _| {
            c.body.profile.vorname = Some("Lena".into());
            Ok(())
        })
        .unwrap();
    let key = f.store.data_key(&p).unwrap().unwrap();
    let tz = jiff::tz::TimeZone::get("Europe/Berlin").unwrap();
    let tomorrow = (Timestamp::now() + SignedDuration::from_hours(24)).to_zoned(tz.clone());
    let yesterday = (Timestamp::now() - SignedDuration::from_hours(48)).to_zoned(tz);
    let mut batch = f.store.batch();
    // Rows as the booker writes them: the customer's key, sealed JSON with the step.
    for (i, (start, step)) in [(tomorrow.clone(), "booked"), (yesterday, "confirmed")]
        .into_iter()
        .enumerate()
    {
        let mut row_key = p.0.to_vec();
        row_key.extend_from_slice(&[i as u8; 16]);
        let record = serde_json::json!({
            "request_id": format!("r{i}"),
            "step": step,
            "start": start.to_string(),
            "confirmation_required": true,
        });
        let sealed = key.seal(
            ks::BOOKINGS,
            &row_key,
            &serde_json::to_vec(&record).unwrap(),
        );
        batch.insert(&f.store.keyspaces().bookings, row_key, sealed);
    }
    f.store.commit_durable(batch).unwrap();
    let trials = pages::trials(&f.store, Timestamp::now()).unwrap();
    assert_eq!(trials.len(), 1, "only the coming trial");
    assert_eq!(trials[0].name, "Lena");
    assert_eq!(trials[0].state, "gebucht, Bestätigung ausstehend");
    assert_eq!(trials[0].time, tomorrow.strftime("%H:%M").to_string());
    assert_eq!(trials[0].id, p.short());
}
