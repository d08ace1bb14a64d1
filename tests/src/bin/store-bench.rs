//! Store benchmark: 100k customers with 20 messages each, then
//! - open time and resident memory of a fresh process that opens the store and reads from it,
//! - durable append of one message with 1, 16 and 64 concurrent writers (group commit),
//! - read of the last 12 messages.
//!
//! Usage: store-bench [--customers N] [--dir DIR]   (figures are printed; nothing is asserted)

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use frontdesk::store::crypto::StoreIdentity;
use frontdesk::store::messages::{Direction, Message};
use frontdesk::store::Store;
use rand::Rng;

const MESSAGES_PER_CUSTOMER: usize = 20;

fn phone(i: usize) -> String {
    format!("49170{i:08}")
}

fn message(i: usize, at: jiff::Timestamp) -> Message {
    Message {
        direction: if i.is_multiple_of(2) {
            Direction::Inbound
        } else {
            Direction::Outbound
        },
        text: format!(
            "Nachricht {i}: Hallo, ich hätte gern einen Termin für ein Probetraining am Dienstag."
        ),
        at,
        wamid: None,
    }
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn populate(dir: &Path, identity: &str, customers: usize) -> anyhow::Result<()> {
    let store = Store::open(dir, StoreIdentity::parse(identity)?)?;
    if store.customer_count() >= customers {
        return Ok(());
    }
    let start = Instant::now();
    store.start_bulk_load();
    let now = jiff::Timestamp::now();
    let threads = 2;
    std::thread::scope(|s| {
        for t in 0..threads {
            let store = &store;
            s.spawn(move || {
                for i in (t..customers).step_by(threads) {
                    store
                        .update_customer(&phone(i), now, |c, batch, st| {
                            c.body.profile.vorname = Some(format!("Vorname{i}"));
                            c.body.profile.email = Some(format!("kunde{i}@example.org"));
                            for m in 0..MESSAGES_PER_CUSTOMER {
                                st.append_message(c, &message(m, now), batch)?;
                            }
                            Ok(())
                        })
                        .expect("populate");
                }
            });
        }
    });
    store.finish_bulk_load()?;
    println!(
        "populate: {customers} customers x {MESSAGES_PER_CUSTOMER} messages in {:.1} s, {:.0} MB on disk",
        start.elapsed().as_secs_f64(),
        store.disk_space() as f64 / 1e6
    );
    Ok(())
}

/// Runs in a fresh process: open time and memory of a daemon that has just started.
fn open_phase(dir: &Path, identity: &str, customers: usize) -> anyhow::Result<()> {
    let before = rss_kib();
    let start = Instant::now();
    let store = Store::open(dir, StoreIdentity::parse(identity)?)?;
    let open = start.elapsed();
    let mut rng = rand::thread_rng();
    for _ in 0..10_000 {
        let p = store.pseudonym(&phone(rng.gen_range(0..customers)));
        let _ = store.customer(&p)?;
        let _ = store.recent_messages(&p, 12)?;
    }
    println!(
        "open: {:.3} s; RSS after open + 10,000 customer reads: {:.1} MB (peak {:.1} MB, process baseline {:.1} MB)",
        open.as_secs_f64(),
        rss_kib() as f64 / 1024.0,
        hwm_kib() as f64 / 1024.0,
        before as f64 / 1024.0
    );
    Ok(())
}

fn append_phase(
    store: &Arc<Store>,
    label: &str,
    writers: usize,
    per_writer: usize,
    customers: usize,
) {
    let start = Instant::now();
    let mut latencies: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let store = store.clone();
                s.spawn(move || {
                    let mut rng = rand::thread_rng();
                    let mut lat = Vec::with_capacity(per_writer);
                    for _ in 0..per_writer {
                        let i = rng.gen_range(0..customers);
                        let now = jiff::Timestamp::now();
                        let t = Instant::now();
                        store
                            .update_customer(&phone(i), now, |c, batch, st| {
                                st.append_message(c, &message(w, now), batch)
                            })
                            .expect("append");
                        lat.push(t.elapsed());
                    }
                    lat
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("writer thread panicked"))
            .collect()
    });
    let total = start.elapsed();
    latencies.sort();
    println!(
        "durable append ({label}), {writers:>2} writers: {:>6.0} appends/s, p50 {:>6.2} ms, p99 {:>6.2} ms",
        latencies.len() as f64 / total.as_secs_f64(),
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
    );
}

fn read_phase(store: &Store, customers: usize) -> anyhow::Result<()> {
    let mut rng = rand::thread_rng();
    let mut lat = Vec::with_capacity(20_000);
    for _ in 0..20_000 {
        let p = store.pseudonym(&phone(rng.gen_range(0..customers)));
        let t = Instant::now();
        let msgs = store.recent_messages(&p, 12)?;
        lat.push(t.elapsed());
        assert_eq!(msgs.len(), 12);
    }
    lat.sort();
    println!(
        "read last 12 messages: p50 {:.3} ms, p99 {:.3} ms",
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let customers: usize = arg("--customers")
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(100_000);
    if let Some(dir) = arg("--open-phase") {
        let identity = std::fs::read_to_string(arg("--identity").expect("--identity"))?;
        return open_phase(Path::new(&dir), &identity, customers);
    }
    let base: PathBuf = arg("--dir")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("frontdesk-store-bench-{customers}")));
    std::fs::create_dir_all(&base)?;
    let id_file = base.join("identity");
    if !id_file.exists() {
        std::fs::write(
            &id_file,
            StoreIdentity::generate().to_secret_line().as_bytes(),
        )?;
    }
    let identity = std::fs::read_to_string(&id_file)?;
    let dir = base.join("store");
    populate(&dir, &identity, customers)?;

    let status = std::process::Command::new(std::env::current_exe()?)
        .args([
            "--open-phase",
            dir.to_str().context("store path is not UTF-8")?,
            "--identity",
            id_file.to_str().context("identity path is not UTF-8")?,
        ])
        .args(["--customers", &customers.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "open phase failed");

    let store = Arc::new(Store::open(&dir, StoreIdentity::parse(&identity)?)?);
    // Random customers of all 100k (most data keys must be unwrapped first), then a working set
    // of 1,000 recent contacts (keys cached, as in a running studio).
    for writers in [1, 16, 64] {
        append_phase(
            &store,
            "any customer",
            writers,
            (2000 / writers).max(50),
            customers,
        );
    }
    for writers in [1, 16, 64] {
        append_phase(
            &store,
            "active 1,000",
            writers,
            (4000 / writers).max(50),
            customers.min(1000),
        );
    }
    read_phase(&store, customers)?;
    Ok(())
}
