//! Reminder scheduler benchmark: a store with 100,000 customers and 10,000 upcoming bookings
//! (each with its two reminders and its follow-up: 30,000 schedule rows), then
//! - one tick with nothing due (what the scheduler does most minutes),
//! - ticks minute by minute through a busy evening, and one tick after an hour's pause (every
//!   message due in that hour at once), each putting its messages into the outbox in durable
//!   writes with their audit entries,
//! - resident memory before and after the ticks.
//!
//! Usage: reminder-bench [--customers N] [--bookings N]   (figures are printed; nothing asserted)

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use frontdesk::audit::AuditLog;
use frontdesk::magicline::booking::seed_booked_for_test;
use frontdesk::reminders::worker::Scheduler;
use frontdesk::reminders::{Plan, RemindersConfig};
use frontdesk::store::crypto::StoreIdentity;
use frontdesk::store::Store;
use frontdesk::whatsapp::queue::Queues;
use jiff::{SignedDuration, Timestamp};

fn phone(i: usize) -> String {
    format!("49170{i:08}")
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The first slot starts 25 hours after `t0`; the others follow evenly over six days, so at
/// `t0` nothing is due and every minute after the first reminder has a few messages.
fn slot_start(t0: Timestamp, i: usize, bookings: usize) -> Timestamp {
    let span = SignedDuration::from_hours(24 * 6).as_secs();
    t0 + SignedDuration::from_hours(25)
        + SignedDuration::from_secs(span * i as i64 / bookings.max(1) as i64)
}

fn populate(store: &Store, customers: usize, bookings: usize, t0: Timestamp) -> anyhow::Result<()> {
    let started = Instant::now();
    store.start_bulk_load();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..2)
            .map(|t| {
                s.spawn(move || -> anyhow::Result<()> {
                    for i in (t..customers).step_by(2) {
                        store.update_customer(&phone(i), t0, |c, _, _| {
                            c.body.profile.vorname = Some(format!("Vorname{i}"));
                            Ok(())
                        })?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("loader panicked"))??;
        }
        Ok(())
    })?;
    let plan = Plan::from_config(&RemindersConfig::default());
    let tz = jiff::tz::TimeZone::get("Europe/Berlin")?;
    // The booked customers are spread over the whole store.
    let stride = (customers / bookings.max(1)).max(1);
    for b in 0..bookings {
        let p = store.pseudonym(&phone((b * stride) % customers));
        let start = slot_start(t0, b, bookings);
        seed_booked_for_test(
            store,
            plan.as_ref(),
            &p,
            (1_000_000 + b as i64, 500_000 + b as i64),
            (
                start.to_zoned(tz.clone()),
                (start + SignedDuration::from_hours(1)).to_zoned(tz.clone()),
            ),
            t0,
        )?;
    }
    store.finish_bulk_load()?;
    println!(
        "populated: {customers} customers, {bookings} bookings, {} schedule rows in {:.1} s",
        store.keyspaces().schedule.approximate_len() / 2,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut customers = 100_000usize;
    let mut bookings = 10_000usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--customers" => customers = args.next().unwrap_or_default().parse()?,
            "--bookings" => bookings = args.next().unwrap_or_default().parse()?,
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let dir = tempfile::tempdir()?;
    let identity = StoreIdentity::generate();
    let identity_text = identity.to_secret_line();
    // Whole minutes, so the minute-by-minute ticks line up.
    let t0 = Timestamp::from_second(Timestamp::now().as_second() / 60 * 60)?;
    {
        let store = Store::open(dir.path(), identity)?;
        populate(&store, customers, bookings, t0)?;
    }

    // A fresh open, as the daemon starts.
    let store = Arc::new(Store::open(
        dir.path(),
        StoreIdentity::parse(&identity_text)?,
    )?);
    let queues = Arc::new(Queues::new(&store)?);
    let audit = Arc::new(AuditLog::open(store.clone())?.without_journal());
    let clock = Arc::new(AtomicI64::new(t0.as_second()));
    let c = clock.clone();
    let scheduler = Scheduler::new(
        store.clone(),
        queues,
        Some(audit),
        RemindersConfig::default(),
        "de",
        Arc::new(move || Timestamp::from_second(c.load(Ordering::SeqCst)).unwrap_or(t0)),
        Arc::new(tokio::sync::Notify::new()),
    );
    let rss_before = rss_kib();

    // Nothing due.
    let mut idle = Vec::new();
    for _ in 0..1_000 {
        let t = Instant::now();
        let r = scheduler.tick()?;
        idle.push(t.elapsed());
        assert_eq!(r.sent + r.skipped, 0, "nothing is due at the start");
    }
    idle.sort();

    // Minute by minute through three hours once reminders are due.
    let first_due = slot_start(t0, 0, bookings) - SignedDuration::from_hours(24);
    let mut busy = Vec::new();
    let mut per_message = Vec::new();
    let mut sent = 0;
    for minute in 0..180 {
        clock.store(
            (first_due + SignedDuration::from_mins(minute)).as_second(),
            Ordering::SeqCst,
        );
        let t = Instant::now();
        let r = scheduler.tick()?;
        let took = t.elapsed();
        busy.push(took);
        if r.sent > 0 {
            per_message.push(took / r.sent as u32);
        }
        sent += r.sent;
    }
    busy.sort();
    per_message.sort();

    // An hour without ticks (a restart, a long stop): one tick catches up.
    clock.store(
        (first_due + SignedDuration::from_mins(180 + 60)).as_second(),
        Ordering::SeqCst,
    );
    let t = Instant::now();
    let catch_up = scheduler.tick()?;
    let catch_up_took = t.elapsed();
    let rss_after = rss_kib();

    println!(
        "idle tick (nothing due, {} schedule rows): median {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        store.keyspaces().schedule.approximate_len() / 2,
        ms(percentile(&idle, 0.5)),
        ms(percentile(&idle, 0.99)),
        ms(idle[idle.len() - 1]),
    );
    println!(
        "busy ticks (180 minutes, {sent} messages): median {:.3} ms, p99 {:.3} ms, max {:.3} ms; per message median {:.3} ms",
        ms(percentile(&busy, 0.5)),
        ms(percentile(&busy, 0.99)),
        ms(busy[busy.len() - 1]),
        per_message.get(per_message.len() / 2).map_or(0.0, |d| ms(*d)),
    );
    println!(
        "catch-up tick after an hour: {} messages in {:.1} ms",
        catch_up.sent + catch_up.skipped,
        ms(catch_up_took)
    );
    println!(
        "RSS: {:.1} MiB before the ticks, {:.1} MiB after ({:+.1} MiB)",
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        (rss_after as f64 - rss_before as f64) / 1024.0
    );
    Ok(())
}
