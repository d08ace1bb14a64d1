//! Crash-test helper: writes messages to a store in a loop and prints the number of every write
//! once it is durable. The crash test kills it with SIGKILL at random moments and checks that
//! every number printed is in the store afterwards.
//!
//! Usage: store-writer STORE_DIR IDENTITY_FILE FIRST_NUMBER

use std::io::Write;

use frontdesk::store::crypto::StoreIdentity;
use frontdesk::store::messages::{Direction, Message};
use frontdesk::store::Store;

/// Messages are spread over this many customers, so writes hit the same and different rows.
pub const CUSTOMERS: u64 = 50;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, identity, first] = &args[..] else {
        anyhow::bail!("usage: store-writer STORE_DIR IDENTITY_FILE FIRST_NUMBER");
    };
    let identity = StoreIdentity::parse(&std::fs::read_to_string(identity)?)?;
    let store = std::sync::Arc::new(Store::open(std::path::Path::new(dir), identity)?);
    let first: u64 = first.parse()?;
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    // Four writer threads, so durable writes share fsyncs as they do in the daemon.
    for t in 0..4u64 {
        let store = store.clone();
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut n = first + t;
            loop {
                let phone = format!("4915{:08}", n % CUSTOMERS);
                let now = jiff::Timestamp::now();
                store
                    .update_customer(&phone, now, |c, batch, s| {
                        s.append_message(
                            c,
                            &Message {
                                direction: Direction::Inbound,
                                text: format!("m{n}"),
                                at: now,
                                wamid: None,
                            },
                            batch,
                        )
                    })
                    .expect("durable write");
                if tx.send(n).is_err() {
                    return;
                }
                n += 4;
            }
        });
    }
    drop(tx);
    let mut out = std::io::stdout().lock();
    for n in rx {
        writeln!(out, "{n}")?;
        out.flush()?;
    }
    Ok(())
}
