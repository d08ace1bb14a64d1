//! Group commit: many writers, one fsync.
//!
//! A writer first applies its batch (fjall writes go to the journal's OS buffer), then calls
//! [`GroupCommit::wait_durable`]. The first waiter becomes the leader and fsyncs the journal once;
//! every writer whose batch was applied before that fsync started returns with it. Writers that
//! arrive while a sync is running wait for the next one, which then covers all of them. Under load
//! the number of fsyncs therefore grows with time, not with the number of writers.

use std::sync::{Condvar, Mutex};

#[derive(Default)]
struct State {
    /// Number of batches applied so far (a ticket per batch).
    applied: u64,
    /// Every batch with a ticket ≤ this is durable.
    durable: u64,
    /// A leader is currently inside `sync`.
    syncing: bool,
    /// The last sync failed; waiters covered by it get the error.
    failed_upto: u64,
}

/// Coordinates fsyncs between concurrent writers. See the module doc.
#[derive(Default)]
pub struct GroupCommit {
    state: Mutex<State>,
    cond: Condvar,
}

impl GroupCommit {
    /// Records that a batch has been applied and returns its ticket.
    pub fn applied(&self) -> u64 {
        let mut st = self.state.lock().expect("group commit lock poisoned");
        st.applied += 1;
        st.applied
    }

    /// Blocks until the batch with `ticket` is durable, running `sync` as leader when nobody else is.
    pub fn wait_durable<E>(
        &self,
        ticket: u64,
        mut sync: impl FnMut() -> Result<(), E>,
    ) -> Result<(), GroupCommitError<E>> {
        let mut st = self.state.lock().expect("group commit lock poisoned");
        loop {
            if st.durable >= ticket {
                return Ok(());
            }
            if st.failed_upto >= ticket {
                return Err(GroupCommitError::CoveredByFailedSync);
            }
            if !st.syncing {
                st.syncing = true;
                let target = st.applied;
                drop(st);
                let result = sync();
                st = self.state.lock().expect("group commit lock poisoned");
                st.syncing = false;
                match result {
                    Ok(()) => st.durable = st.durable.max(target),
                    Err(_) => st.failed_upto = st.failed_upto.max(target),
                }
                self.cond.notify_all();
                return result.map_err(GroupCommitError::Sync);
            }
            st = self.cond.wait(st).expect("group commit lock poisoned");
        }
    }
}

/// Why a write could not be made durable.
#[derive(Debug, thiserror::Error)]
pub enum GroupCommitError<E> {
    /// The fsync of this write failed.
    #[error("fsync failed: {0}")]
    Sync(E),
    /// An fsync that covered this write, started by another writer, failed.
    #[error("the fsync that covered this write failed")]
    CoveredByFailedSync,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn every_writer_becomes_durable_and_syncs_are_shared() {
        let gc = Arc::new(GroupCommit::default());
        let syncs = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let gc = gc.clone();
                let syncs = syncs.clone();
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let t = gc.applied();
                        gc.wait_durable(t, || {
                            syncs.fetch_add(1, Ordering::SeqCst);
                            Ok::<_, ()>(())
                        })
                        .unwrap();
                        assert!(gc.state.lock().unwrap().durable >= t);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let st = gc.state.lock().unwrap();
        assert_eq!(st.durable, 3200);
        assert!(syncs.load(Ordering::SeqCst) <= 3200);
    }

    #[test]
    fn failed_sync_reports_error_to_covered_writers() {
        let gc = GroupCommit::default();
        let t = gc.applied();
        assert!(matches!(
            gc.wait_durable(t, || Err::<(), _>("disk full")),
            Err(GroupCommitError::Sync("disk full"))
        ));
        assert!(matches!(
            gc.wait_durable(t, || Ok::<_, &str>(())),
            Err(GroupCommitError::CoveredByFailedSync)
        ));
        let t2 = gc.applied();
        assert!(gc.wait_durable(t2, || Ok::<_, &str>(())).is_ok());
    }
}
