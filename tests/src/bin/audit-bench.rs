//! Audit log benchmark: durable appends per second with 1, 16 and 64 concurrent writers
//! (goal ≥ 5,000/s), and `verify` over 1,000,000 entries (goal ≤ 5 s), on a real store in a
//! temporary directory (pass a directory as the first argument to bench another disk).
//!
//! Run: `cargo run --release -p frontdesk-tests --bin audit-bench`

use std::sync::Arc;
use std::time::{Duration, Instant};

use frontdesk::audit::{Actor, AuditEvent, AuditLog, Code, NewEntry, RequestId, Verification};
use frontdesk::store::crypto::StoreIdentity;
use frontdesk::store::Store;

fn entry(i: u64, store: &Store) -> NewEntry {
    let e = NewEntry::new(
        Actor::Admin {
            uid: 1000,
            name: "bench".into(),
        },
        if i & 1 == 0 {
            AuditEvent::CustomerRead { messages: i % 20 }
        } else {
            AuditEvent::WebhookRejected {
                reason: Code::new("bad_signature"),
            }
        },
    )
    .request(RequestId(i));
    if i & 1 == 0 {
        e.about(&store.pseudonym(&format!("+49151{:07}", i % 1000)))
    } else {
        e
    }
}

fn open(base: &std::path::Path, name: &str) -> anyhow::Result<(Arc<Store>, AuditLog)> {
    let store = Arc::new(Store::open(&base.join(name), StoreIdentity::generate())?);
    let log = AuditLog::open(store.clone())?.without_journal();
    Ok((store, log))
}

fn appends(base: &std::path::Path, writers: u64) -> anyhow::Result<f64> {
    let (store, log) = open(base, &format!("appends-{writers}"))?;
    let budget = Duration::from_secs(3);
    let start = Instant::now();
    let total: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let (log, store) = (&log, &store);
                s.spawn(move || {
                    let mut n = 0u64;
                    while start.elapsed() < budget {
                        log.append(entry(w * 1_000_000 + n, store)).expect("append");
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("writer")).sum()
    });
    let secs = start.elapsed().as_secs_f64();
    let v = log.verify(&Default::default())?;
    anyhow::ensure!(
        matches!(v.verification, Verification::Ok { entries, .. } if entries == total),
        "chain broken after concurrent appends: {v:?}"
    );
    Ok(total as f64 / secs)
}

/// CPU time consumed by the calling thread so far.
fn thread_cpu_secs() -> f64 {
    frontdesk::sys::thread_cpu_nanos() as f64 / 1e9
}

fn main() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let base = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    println!("audit-bench on {}", base.display());
    for writers in [1, 16, 64] {
        let rate = appends(&base, writers)?;
        println!("durable appends, {writers:>2} writers: {rate:>9.0} entries/s (goal >= 5000)");
    }

    let (store, log) = open(&base, "verify")?;
    let fill = Instant::now();
    let n = 1_000_000u64;
    for chunk in 0..(n / 10_000) {
        log.append_many((0..10_000).map(|i| entry(chunk * 10_000 + i, &store)))?;
    }
    println!(
        "filled {n} entries in {:.1} s (batches of 10,000)",
        fill.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let cpu = thread_cpu_secs();
    let report = log.verify(&Default::default())?;
    let secs = t.elapsed().as_secs_f64();
    let cpu = thread_cpu_secs() - cpu;
    anyhow::ensure!(report.is_ok(), "verify failed: {report:?}");
    // On a shared machine the wall time includes waiting for a core; the CPU time does not.
    println!("verify over {n} entries: {secs:.2} s wall, {cpu:.2} s CPU (goal <= 5 s)");
    println!("store size: {} MB", store.disk_space() / 1_000_000);
    Ok(())
}
