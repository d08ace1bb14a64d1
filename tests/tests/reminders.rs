//! Reminders end to end: the real daemon (`frontdesk-fixed`, whose scheduler reads its time from
//! a file the test moves), the store seeded with booked trials, the Graph API simulator holding
//! the sends to the approved templates, and SIGKILLs at random moments while reminders go out.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use frontdesk::audit::{AuditFilter, AuditLog, Detail};
use frontdesk::magicline::booking::seed_booked_for_test;
use frontdesk::reminders::{Plan, RemindersConfig};
use frontdesk::sandbox::whatsapp::{self as sim, ApprovedTemplate};
use frontdesk::store::customers::BotMode;
use frontdesk_tests::harness::{Daemon, DaemonSpec};
use jiff::{SignedDuration, Timestamp};
use rand::Rng;

const WAIT: Duration = Duration::from_secs(60);
const BOOKINGS: usize = 30;
/// Customer 0 opts out and customer 1 is forgotten before anything is due.
const OPTED_OUT: usize = 0;
const FORGOTTEN: usize = 1;
const REMINDER: &str = "probetraining_erinnerung";

fn phone(i: usize) -> String {
    format!("49151000005{i:02}")
}

/// Moves the daemon's scheduler clock (written whole: a reader never sees half a number).
fn set_clock(file: &Path, t: Timestamp) {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, t.as_second().to_string()).expect("write the clock file");
    std::fs::rename(&tmp, file).expect("replace the clock file");
}

/// Reminder templates the simulator accepted, per recipient.
fn reminders_to(graph: &sim::GraphSim) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in graph.sent() {
        if let sim::SentMessageKind::Template { name, buttons, .. } = &r.message {
            if name == REMINDER {
                assert_eq!(buttons.len(), 3, "confirm, reschedule, cancel");
                *out.entry(r.recipient.clone()).or_insert(0) += 1;
            }
        }
    }
    out
}

/// SIGKILLs the daemon once the simulator has accepted a random number (1 to `spread`) of
/// further sends, then starts it again.
async fn kill_at_random_moment(daemon: &mut Daemon, graph: &sim::GraphSim, spread: usize) {
    let already = graph.sent().len();
    let at = already + rand::thread_rng().gen_range(1..=spread);
    graph
        .wait_for_sent(at, WAIT)
        .await
        .expect("reminders go out before the kill");
    daemon.kill();
    daemon.restart();
}

/// Waits until every customer in `to` got at least one reminder template, `rounds` in all.
async fn await_reminders(graph: &sim::GraphSim, to: &[String], rounds: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = reminders_to(graph);
        if to
            .iter()
            .all(|p| got.get(p).copied().unwrap_or(0) >= rounds)
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every reminder went out: {got:?}"
        );
        graph
            .wait_for_sent(graph.sent().len() + 1, Duration::from_millis(200))
            .await
            .ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_reminder_goes_out_once_across_sigkills_and_never_after_opt_out_or_forget() {
    let graph = sim::start().await;
    graph.approve_template(
        REMINDER,
        "de",
        ApprovedTemplate {
            body_params: 3,
            quick_replies: 3,
        },
    );
    let clock_dir = tempfile::tempdir().unwrap();
    let clock = clock_dir.path().join("clock");
    // Whole minutes after now: nothing is due at the start.
    let t0 = Timestamp::from_second(Timestamp::now().as_second() / 60 * 60).unwrap();
    set_clock(&clock, t0);
    let mut daemon = Daemon::start(DaemonSpec {
        clock_file: Some(clock.clone()),
        // Follow-ups are another test's; here only the reminders.
        extra_toml: "[reminders]\nfollow_ups = false\n".into(),
        ..DaemonSpec::with_graph(graph.base_url())
    });
    daemon.stop();

    seed(&daemon, t0);
    daemon.restart();
    let eligible: Vec<String> = (0..BOOKINGS)
        .filter(|i| *i != OPTED_OUT && *i != FORGOTTEN)
        .map(phone)
        .collect();

    // The 24-hour reminders: every one due at once, two kills while they go out.
    set_clock(&clock, t0 + SignedDuration::from_hours(3));
    kill_at_random_moment(&mut daemon, &graph, 8).await;
    kill_at_random_moment(&mut daemon, &graph, 8).await;
    await_reminders(&graph, &eligible, 1).await;

    // The 2-hour reminders, one kill while they go out.
    set_clock(&clock, t0 + SignedDuration::from_hours(25));
    kill_at_random_moment(&mut daemon, &graph, 12).await;
    await_reminders(&graph, &eligible, 2).await;
    daemon.stop();

    assert_sent_once(&daemon, &graph, &eligible);
}

/// Booked trials, one every two minutes from t0 + 26 h: the 24-hour reminders fall between
/// t0 + 2 h and t0 + 3 h, the 2-hour ones between t0 + 24 h and t0 + 25 h. Customer
/// [`OPTED_OUT`] has opted out, [`FORGOTTEN`] is forgotten. The daemon must be stopped.
fn seed(daemon: &Daemon, t0: Timestamp) {
    let store = daemon.open_store();
    let cfg = RemindersConfig {
        follow_ups: false,
        quiet_hours_start: "00:00".into(),
        quiet_hours_end: "00:00".into(),
        ..RemindersConfig::default()
    };
    let plan = Plan::from_config(&cfg);
    let tz = jiff::tz::TimeZone::get("Europe/Berlin").expect("store and audit log readable");
    for i in 0..BOOKINGS {
        let (c, _) = store
            .update_customer(&phone(i), t0, |c, _, _| {
                c.body.profile.vorname = Some(format!("Kundin{i}"));
                if i == OPTED_OUT {
                    c.meta.mode = BotMode::OptedOut;
                }
                Ok(())
            })
            .expect("store and audit log readable");
        let start = t0 + SignedDuration::from_hours(26) + SignedDuration::from_mins(2 * i as i64);
        seed_booked_for_test(
            &store,
            plan.as_ref(),
            &c.pseudonym,
            (7_000 + i as i64, 9_000 + i as i64),
            (
                start.to_zoned(tz.clone()),
                (start + SignedDuration::from_hours(1)).to_zoned(tz.clone()),
            ),
            t0,
        )
        .expect("store and audit log readable");
        assert_eq!(
            store
                .scheduled_of(&c.pseudonym)
                .expect("store and audit log readable")
                .len(),
            2
        );
    }
    let forgotten = store.pseudonym(&phone(FORGOTTEN));
    store
        .forget(&[forgotten], t0)
        .expect("store and audit log readable");
}

/// What went out: nothing to the opted-out or the forgotten contact; every other reminder
/// handed to the outbox exactly once (one `reminder.sent` per customer and reminder, written
/// with the retirement of its schedule row); the sends differ from that only by the sender's
/// documented window.
fn assert_sent_once(daemon: &Daemon, graph: &sim::GraphSim, eligible: &[String]) {
    let got = reminders_to(graph);
    assert!(
        !got.contains_key(&phone(OPTED_OUT)),
        "no reminder after an opt-out"
    );
    assert!(
        !got.contains_key(&phone(FORGOTTEN)),
        "no reminder after a forget"
    );
    // The scheduler hands each reminder to the outbox exactly once: one `reminder.sent` per
    // customer and reminder, written with the retirement of its schedule row.
    let store = std::sync::Arc::new(daemon.open_store());
    let log = AuditLog::open(store.clone())
        .expect("store and audit log readable")
        .without_journal();
    let sent = log
        .query(&AuditFilter {
            action: Some("reminder.sent".into()),
            ..AuditFilter::default()
        })
        .expect("store and audit log readable");
    let mut per: BTreeMap<(String, String), usize> = BTreeMap::new();
    for r in &sent {
        let kind = match r.details.get("kind") {
            Some(Detail::Code(k)) => k.clone(),
            other => panic!("reminder.sent without kind: {other:?}"),
        };
        let subject = r
            .subject
            .as_ref()
            .map(ToString::to_string)
            .expect("store and audit log readable");
        *per.entry((subject, kind)).or_insert(0) += 1;
    }
    assert_eq!(per.len(), eligible.len() * 2, "{per:?}");
    assert!(per.values().all(|n| *n == 1), "{per:?}");
    let skipped = log
        .query(&AuditFilter {
            action: Some("reminder.skipped".into()),
            ..AuditFilter::default()
        })
        .expect("store and audit log readable");
    assert_eq!(skipped.len(), 2, "the opted-out contact's two reminders");
    // WhatsApp has no idempotency key: a kill between a send and its record sends that one
    // again (the sender's documented window), at most one per customer in flight per kill.
    let total: usize = got.values().sum();
    assert!(total >= eligible.len() * 2);
    assert!(total - eligible.len() * 2 <= 3 * 8, "{got:?}");
    for i in 0..BOOKINGS {
        assert!(store
            .scheduled_of(&store.pseudonym(&phone(i)))
            .expect("store and audit log readable")
            .is_empty());
    }
}
