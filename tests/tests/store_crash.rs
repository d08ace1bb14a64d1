//! Crash safety of the store: a writer process reports durable writes and is killed with SIGKILL
//! at random moments, 20 times; after each kill the store must open and hold every reported
//! write.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use frontdesk::store::crypto::StoreIdentity;
use frontdesk::store::Store;
use rand::Rng;

const CUSTOMERS: u64 = 50;

#[test]
fn sigkill_never_loses_a_durable_write() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let id_file = dir.path().join("identity");
    let identity = StoreIdentity::generate();
    std::fs::write(&id_file, identity.to_secret_line().as_bytes()).unwrap();

    let mut rng = rand::thread_rng();
    let mut acknowledged: HashSet<u64> = HashSet::new();
    let mut next_first = 0u64;
    for round in 0..20 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_store-writer"))
            .arg(&store_dir)
            .arg(&id_file)
            .arg(next_first.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let kill_after = rng.gen_range(1..400);
        let mut max_seen = next_first;
        for _ in 0..kill_after {
            let n: u64 = lines.next().unwrap().unwrap().parse().unwrap();
            acknowledged.insert(n);
            max_seen = max_seen.max(n);
        }
        frontdesk::sys::kill(child.id(), libc::SIGKILL).unwrap();
        child.wait().unwrap();
        // Numbers reported between our last read and the kill are durable too.
        for line in lines.map_while(Result::ok) {
            if let Ok(n) = line.parse::<u64>() {
                acknowledged.insert(n);
                max_seen = max_seen.max(n);
            }
        }
        next_first = max_seen + 100;

        let store = Store::open(
            &store_dir,
            StoreIdentity::parse(&identity.to_secret_line()).unwrap(),
        )
        .unwrap_or_else(|e| panic!("round {round}: store does not open after SIGKILL: {e}"));
        let mut present = HashSet::new();
        for c in 0..CUSTOMERS {
            let p = store.pseudonym(&format!("4915{c:08}"));
            if let Ok(msgs) = store.all_messages(&p) {
                for m in msgs {
                    let m = m.unwrap();
                    present.insert(m.text[1..].parse::<u64>().unwrap());
                }
            }
        }
        let missing: Vec<_> = acknowledged.difference(&present).take(5).collect();
        assert!(
            missing.is_empty(),
            "round {round}: acknowledged writes missing after SIGKILL: {missing:?}"
        );
    }
    assert!(acknowledged.len() >= 20);
}
