//! Who was just written: a broadcast of the pseudonyms whose conversation changed (a turn was
//! committed, staff answered), so a live view (the console's inbox) can refresh without
//! polling. Carries pseudonyms only; nothing is kept, a listener that falls behind is told so
//! and reloads.

use tokio::sync::broadcast;

use super::crypto::Pseudonym;

/// How many changes a slow listener may lag behind before it is told it missed some.
const BACKLOG: usize = 256;

/// The change feed of one open store.
pub struct Activity {
    feed: broadcast::Sender<Pseudonym>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            feed: broadcast::channel(BACKLOG).0,
        }
    }
}

impl Activity {
    /// Tells the listeners that `p`'s conversation changed (after the write is durable).
    pub fn touched(&self, p: &Pseudonym) {
        // No listener is not an error: nobody is looking.
        let _ = self.feed.send(*p);
    }

    /// A new listener; it sees every change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Pseudonym> {
        self.feed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_sees_each_change_once_in_order() {
        let activity = Activity::default();
        activity.touched(&Pseudonym([9; 16])); // before anyone listens: not seen
        let mut rx = activity.subscribe();
        activity.touched(&Pseudonym([1; 16]));
        activity.touched(&Pseudonym([2; 16]));
        assert_eq!(rx.try_recv().unwrap(), Pseudonym([1; 16]));
        assert_eq!(rx.try_recv().unwrap(), Pseudonym([2; 16]));
        assert!(rx.try_recv().is_err());
    }
}
