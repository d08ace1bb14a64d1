//! MagicLine's side after a booking, end to end: the real daemon (with the instant stand-in
//! engine) and the MagicLine simulator as the studio's MagicLine. Trials are booked into the
//! daemon's store by the real booker against the simulator while the daemon is stopped; then
//! staff cancel and check people in at the simulated desk, and the simulator posts MagicLine's
//! webhook events to the daemon (or, for a studio without webhooks, the daemon polls).

use std::sync::Arc;
use std::time::Duration;

use frontdesk::audit::{AuditFilter, AuditLog};
use frontdesk::conversation::booking::{BookingOutcome, BookingRequest};
use frontdesk::magicline::booking::{
    BookerConfig, BookingAudit, BookingEvent, MagicLineBooker, RecordedBooking,
};
use frontdesk::magicline::client::Client;
use frontdesk::sandbox::magicline::{self as ml, MagiclineSim, SimConfig};
use frontdesk::sandbox::whatsapp as wa;
use frontdesk::stats::{self, Period, Rates};
use frontdesk::store::Store;
use frontdesk_tests::harness::{await_metric, Daemon, DaemonSpec};
use jiff::{SignedDuration, Timestamp, Zoned};

const WAIT: Duration = Duration::from_secs(60);
const WEBHOOK_KEY: &str = "partner-webhook-key-7f3a";

/// The simulated studio runs three days behind the wall clock, so trials booked "tomorrow"
/// there are already over for the daemon's attendance sweep, and those five days ahead are
/// still to come.
fn sim_config() -> SimConfig {
    SimConfig {
        now: Some(Timestamp::now() - SignedDuration::from_hours(72)),
        ..SimConfig::default()
    }
}

/// A weekday at `hour`:00 in Berlin, at least `days` after the simulator's today.
fn trial_slot(sim: &MagiclineSim, days: i64, hour: i8) -> Zoned {
    let mut day = sim
        .now()
        .date()
        .checked_add(jiff::Span::new().days(days))
        .expect("a date in range");
    while matches!(
        day.weekday(),
        jiff::civil::Weekday::Saturday | jiff::civil::Weekday::Sunday
    ) {
        day = day.tomorrow().expect("a date in range");
    }
    day.at(hour, 0, 0, 0)
        .in_tz("Europe/Berlin")
        .expect("Berlin is in the bundled tz database")
}

fn spec(graph: &wa::GraphSim, sim: &MagiclineSim, events: &str) -> DaemonSpec {
    DaemonSpec {
        extra_toml: format!(
            "\n[magicline]\nbase_url = \"{}\"\nevents = \"{events}\"\npoll_interval_secs = 3600\n",
            sim.base_url()
        ),
        extra_credentials: vec![
            ("magicline-api-key".into(), sim.api_key()),
            ("magicline-webhook-key".into(), format!("{WEBHOOK_KEY}\n")),
        ],
        ..DaemonSpec::with_graph(graph.base_url())
    }
}

/// The seeding booker's steps are not the daemon's: they stay out of its audit log.
struct Unaudited;

impl BookingAudit for Unaudited {
    fn record(&self, _: BookingEvent) {}
}

/// A booker on the stopped daemon's store, on the simulator's clock.
fn booker(daemon: &Daemon, sim: &MagiclineSim) -> (Arc<Store>, MagicLineBooker) {
    booker_with(daemon, sim, BookerConfig::default())
}

/// [`booker`] with the trial offer `cfg` names.
fn booker_with(
    daemon: &Daemon,
    sim: &MagiclineSim,
    cfg: BookerConfig,
) -> (Arc<Store>, MagicLineBooker) {
    let store = Arc::new(daemon.open_store());
    let client = Client::new(&sim.base_url(), sim.api_key(), Duration::from_secs(10))
        .with_clock(Arc::new(sim.clock()));
    let booker = MagicLineBooker::new(
        client,
        store.clone(),
        Arc::new(Unaudited),
        BookerConfig {
            clock: Arc::new(sim.clock()),
            ..cfg
        },
    );
    (store, booker)
}

/// Books one trial per (phone, start) as the engine would; returns (booking id, customer id).
async fn book_trials(
    daemon: &Daemon,
    sim: &MagiclineSim,
    trials: Vec<(&'static str, Zoned)>,
) -> Vec<(i64, i64)> {
    let (store, booker) = booker(daemon, sim);
    tokio::task::spawn_blocking(move || {
        trials
            .into_iter()
            .enumerate()
            .map(|(i, (phone, start))| {
                let p = store
                    .update_customer(phone, Timestamp::now(), |_, _, _| Ok(()))
                    .expect("a customer row")
                    .0
                    .pseudonym;
                let req = BookingRequest {
                    requested_at: Timestamp::now(),
                    request_id: format!("wamid.trial{i}"),
                    pseudonym: p,
                    firstname: "Alex".into(),
                    lastname: "Beispiel".into(),
                    email: format!("trial{i}@example.org"),
                    phone: Some(phone.into()),
                    magicline_customer_id: None,
                    start,
                };
                match booker.book(&req) {
                    BookingOutcome::Booked {
                        booking_id,
                        magicline_customer_id,
                        ..
                    } => (booking_id, magicline_customer_id),
                    other => panic!("trial {i} not booked: {other:?}"),
                }
            })
            .collect()
    })
    .await
    .expect("the booking task")
}

/// What the stopped daemon recorded about these bookings, and its audit entries of `prefix`.
fn recorded(
    daemon: &Daemon,
    sim: &MagiclineSim,
    bookings: &[i64],
    prefix: &str,
) -> (Vec<RecordedBooking>, Vec<String>, stats::FunnelRow) {
    let (store, booker) = booker(daemon, sim);
    let records = bookings
        .iter()
        .map(|id| {
            booker
                .recorded_booking(*id)
                .expect("the booking row reads")
                .expect("a recorded booking")
        })
        .collect();
    let report =
        stats::report(&store, None, Period::Month, &Rates::default()).expect("the funnel report");
    drop(booker);
    let audit = AuditLog::open(store).expect("the audit log opens");
    let lines = audit
        .query(&AuditFilter {
            action: Some(prefix.into()),
            ..Default::default()
        })
        .expect("the audit query")
        .iter()
        .map(|r| r.to_csv_line())
        .collect();
    (records, lines, report.total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn staff_cancellations_and_check_ins_reach_the_booking_once_and_bad_keys_are_refused() {
    let graph = wa::start().await;
    let sim = ml::start(sim_config()).await;
    let mut daemon = Daemon::start(spec(&graph, &sim, "webhook"));
    daemon.stop();
    // Two trials still to come (cancelled, checked in by event), two already over (one
    // missed, one attended without an event reaching frontdesk).
    let trials = book_trials(
        &daemon,
        &sim,
        vec![
            ("491790000101", trial_slot(&sim, 5, 10)),
            ("491790000102", trial_slot(&sim, 5, 11)),
            ("491790000103", trial_slot(&sim, 1, 10)),
            ("491790000104", trial_slot(&sim, 1, 11)),
        ],
    )
    .await;
    let [(cancel, _), (came, came_customer), (missed, _), (quiet, quiet_customer)] =
        trials[..].try_into().unwrap();
    let quiet_visit = trial_slot(&sim, 1, 11).timestamp() - SignedDuration::from_mins(5);
    sim.check_in(quiet_customer, quiet_visit);
    daemon.restart();
    // The sweep at start settles the two trials that are over.
    await_metric(&daemon, "frontdesk_attendance_sweeps_total 1", WAIT).await;

    sim.set_webhook(&format!("{}/magicline", daemon.webhook_url()), WEBHOOK_KEY);
    let canceled = sim.staff_cancel(cancel).unwrap();
    assert_eq!(sim.send(&canceled).await, 200);
    let visit_at = trial_slot(&sim, 5, 11).timestamp() - SignedDuration::from_mins(10);
    let visit = sim.check_in(came_customer, visit_at);
    assert_eq!(sim.send(&visit).await, 200);
    // MagicLine sends again what it thinks failed: the same uuid is taken once.
    assert_eq!(sim.send(&visit).await, 200);
    // A member's visit and someone else's booking are answered and left alone.
    assert_eq!(sim.send(&sim.check_in(501, visit_at)).await, 200);
    // Without the key, or with another, nothing is taken.
    let forged = sim.staff_cancel(came).unwrap();
    assert_eq!(sim.send_with_key(&forged, Some("guessed-key")).await, 401);
    assert_eq!(sim.send_with_key(&forged, None).await, 401);

    for (outcome, n) in [
        ("processed", 2),
        ("duplicate", 1),
        ("ignored", 1),
        ("api_key_wrong", 1),
        ("api_key_missing", 1),
    ] {
        let line = format!("frontdesk_magicline_events_total{{outcome=\"{outcome}\"}} {n}");
        await_metric(&daemon, &line, WAIT).await;
    }
    // Each event's state was read from MagicLine once: the duplicate cost no call.
    assert_eq!(
        sim.request_count(&format!("/appointments/booking/{cancel}")),
        1
    );
    assert_eq!(
        sim.request_count(&format!("/customers/{came_customer}/activities/checkins")),
        1
    );
    assert!(daemon.stop().is_some_and(|s| s.success()));

    let (records, booking_lines, funnel) =
        recorded(&daemon, &sim, &[cancel, came, missed, quiet], "booking.");
    assert!(records[0].canceled, "cancelled at the desk");
    assert_eq!(records[1].checked_in_at, Some(visit_at));
    assert!(
        !records[1].canceled,
        "the forged cancellation was not taken"
    );
    assert!(records[2].no_show && records[2].checked_in_at.is_none());
    assert_eq!(records[3].checked_in_at, Some(quiet_visit));
    assert_eq!((funnel.showed_up, funnel.no_show), (2, 1));
    let count = |action: &str| booking_lines.iter().filter(|l| l.contains(action)).count();
    assert_eq!(count("booking.canceled_in_magicline"), 1);
    assert_eq!(count("booking.checked_in"), 2);
    assert_eq!(count("booking.no_show"), 1);

    let (_, rejected, _) = recorded(&daemon, &sim, &[], "magicline.");
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    assert!(rejected.iter().any(|l| l.contains("api_key_wrong")));
    assert!(rejected.iter().any(|l| l.contains("api_key_missing")));
    for line in booking_lines.iter().chain(&rejected) {
        for secret in [
            WEBHOOK_KEY,
            "guessed-key",
            "49179",
            "Beispiel",
            "@example.org",
        ] {
            assert!(!line.contains(secret), "{secret} in the audit: {line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_webhooks_the_poll_finds_the_same_changes() {
    let graph = wa::start().await;
    let sim = ml::start(sim_config()).await;
    let mut daemon = Daemon::start(spec(&graph, &sim, "poll"));
    daemon.stop();
    let trials = book_trials(
        &daemon,
        &sim,
        vec![
            ("491790000201", trial_slot(&sim, 5, 10)),
            ("491790000202", trial_slot(&sim, 1, 11)),
        ],
    )
    .await;
    let [(cancel, _), (came, came_customer)] = trials[..].try_into().unwrap();
    // Staff cancel a trial still to come; someone came to one that is over. MagicLine would
    // tell nobody.
    sim.staff_cancel(cancel).unwrap();
    let visit_at = trial_slot(&sim, 1, 11).timestamp() - SignedDuration::from_mins(10);
    sim.check_in(came_customer, visit_at);
    daemon.restart();
    await_metric(&daemon, "frontdesk_attendance_sweeps_total 1", WAIT).await;
    // No webhook is served in this mode.
    sim.set_webhook(&format!("{}/magicline", daemon.webhook_url()), WEBHOOK_KEY);
    assert_eq!(sim.send(&sim.check_in(came_customer, visit_at)).await, 404);
    assert!(daemon.stop().is_some_and(|s| s.success()));

    let (records, lines, funnel) = recorded(&daemon, &sim, &[cancel, came], "booking.");
    assert!(records[0].canceled);
    assert_eq!(records[1].checked_in_at, Some(visit_at));
    assert_eq!((funnel.showed_up, funnel.no_show), (1, 0));
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("booking.canceled_in_magicline"))
            .count(),
        1
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("booking.checked_in"))
            .count(),
        1
    );
}

/// Books a trial on the class date at `start` for a new lead, with the stopped daemon's store;
/// MagicLine's booking and customer ids.
async fn book_class_trial(daemon: &Daemon, sim: &MagiclineSim, start: Zoned) -> (i64, i64) {
    let (store, booker) = booker_with(
        daemon,
        sim,
        BookerConfig {
            trial_class_id: Some(3001),
            ..BookerConfig::default()
        },
    );
    let booked = tokio::task::spawn_blocking(move || {
        let p = store
            .update_customer("491790000111", Timestamp::now(), |_, _, _| Ok(()))
            .expect("a customer row")
            .0
            .pseudonym;
        booker.book(&BookingRequest {
            requested_at: Timestamp::now(),
            request_id: "wamid.class".into(),
            pseudonym: p,
            firstname: "Alex".into(),
            lastname: "Beispiel".into(),
            email: "klasse@example.org".into(),
            phone: Some("491790000111".into()),
            magicline_customer_id: None,
            start,
        })
    })
    .await
    .expect("the booking task");
    let BookingOutcome::Booked {
        booking_id,
        magicline_customer_id,
        ..
    } = booked
    else {
        panic!("class trial not booked: {booked:?}");
    };
    (booking_id, magicline_customer_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trial_class_moved_and_cancelled_at_the_desk_arrives_as_class_events() {
    let graph = wa::start().await;
    let sim = ml::start(SimConfig {
        trial_classes: vec![ml::SimClass::group_ems()],
        ..sim_config()
    })
    .await;
    let mut class_spec = spec(&graph, &sim, "webhook");
    class_spec
        .extra_toml
        .push_str("trial_offer_class_id = 3001\n");
    let mut daemon = Daemon::start(class_spec);
    daemon.stop();
    let start = trial_slot(&sim, 5, 18);
    let later = start
        .checked_add(jiff::SignedDuration::from_hours(2))
        .unwrap();
    let (booking_id, magicline_customer_id) = book_class_trial(&daemon, &sim, start).await;
    let slot = sim.bookings_of(magicline_customer_id)[0]
        .class_slot_id
        .expect("a class booking names its date");
    daemon.restart();
    await_metric(&daemon, "frontdesk_attendance_sweeps_total 1", WAIT).await;
    sim.set_webhook(&format!("{}/magicline", daemon.webhook_url()), WEBHOOK_KEY);

    // Staff move the class date itself: MagicLine tells of the date, not of the booking.
    let moved = sim.staff_move_class_date(slot, &later).unwrap();
    assert_eq!(moved.event_type, "CLASS_SLOT_UPDATED");
    assert_eq!(sim.send(&moved).await, 200);
    await_metric(
        &daemon,
        "frontdesk_magicline_events_total{outcome=\"processed\"} 1",
        WAIT,
    )
    .await;
    assert_eq!(sim.request_count(&format!("/classes/3001/slots/{slot}")), 1);

    let canceled = sim.staff_cancel(booking_id).unwrap();
    assert_eq!(canceled.event_type, "CLASS_BOOKING_CANCELLED");
    assert_eq!(sim.send(&canceled).await, 200);
    await_metric(
        &daemon,
        "frontdesk_magicline_events_total{outcome=\"processed\"} 2",
        WAIT,
    )
    .await;
    // The state was read where MagicLine keeps class bookings.
    assert_eq!(
        sim.request_count(&format!("/classes/booking/{booking_id}")),
        2
    );
    assert_eq!(
        sim.request_count(&format!("/appointments/booking/{booking_id}")),
        0
    );
    assert!(daemon.stop().is_some_and(|s| s.success()));
    let (records, lines, _) = recorded(&daemon, &sim, &[booking_id], "booking.");
    assert!(records[0].canceled, "cancelled at the desk");
    assert_eq!(
        records[0].start.timestamp(),
        later.timestamp(),
        "moved before"
    );
    for step in [
        "booking.moved_in_magicline",
        "booking.canceled_in_magicline",
    ] {
        assert_eq!(
            lines.iter().filter(|l| l.contains(step)).count(),
            1,
            "{step}: {lines:?}"
        );
    }
}
