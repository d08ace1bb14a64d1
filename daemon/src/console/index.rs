//! The inbox's index, in memory: which conversations wait for a person and which are the most
//! recent others, each with its last contact time, so an inbox page reads no more than the
//! rows it shows instead of every customer's clear header.
//!
//! Clear metadata only (pseudonyms and times, see ARCHITECTURE.md), never personal data. Built
//! on first use from the hand-over marks (`turn::attention`) and the contact rows
//! (`store::contacts`: the held conversations, and the newest ones by last contact), so a build
//! reads a few rows per conversation it lists, never every customer; kept current from the
//! store's change feed (`store::activity`): every pseudonym on the feed is read again (its
//! contact row and mark) and filed anew. A feed that lagged, or a recent list worn below what
//! the page shows, makes the next read rebuild it. Memory is bounded: every waiting
//! conversation (they are few: staff work through them) and at most [`RECENT_KEPT`] others.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use jiff::Timestamp;
use tokio::sync::broadcast::{self, error::TryRecvError};

use crate::store::contacts::Contact;
use crate::store::crypto::Pseudonym;
use crate::store::customers::BotMode;
use crate::store::{self, Store};
use crate::turn::attention::{self, Attention};

/// Recent conversations kept: more than a page shows, so that conversations leaving the list
/// (handed over, opted out, forgotten) seldom force a rebuild.
pub const RECENT_KEPT: usize = 256;

/// Where a conversation belongs in the inbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// It needs a person: a hand-over mark, escalated or paused.
    Waiting,
    /// The assistant answers it.
    Recent,
}

/// Where a customer in bot mode `mode` (`None`: no such customer) with hand-over `mark`
/// belongs (`None`: nowhere, forgotten or opted out).
pub fn place(mode: Option<BotMode>, mark: Option<&Attention>) -> Option<Place> {
    match (mode?, mark) {
        (BotMode::OptedOut, _) => None,
        (_, Some(_)) | (BotMode::Escalated | BotMode::Paused, None) => Some(Place::Waiting),
        (BotMode::Active, None) => Some(Place::Recent),
    }
}

/// What one inbox page lists, newest first.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// The newest waiting conversations (at most the limit asked for).
    pub waiting: Vec<Pseudonym>,
    /// How many wait in all.
    pub waiting_total: usize,
    /// The most recent other conversations (at most the limit asked for).
    pub recent: Vec<Pseudonym>,
}

#[derive(Default)]
struct Lists {
    built: bool,
    waiting: HashMap<Pseudonym, Timestamp>,
    recent: BTreeSet<(Timestamp, Pseudonym)>,
    recent_at: HashMap<Pseudonym, Timestamp>,
    /// The last build saw more recent conversations than it kept.
    truncated: bool,
}

impl Lists {
    fn remove(&mut self, p: &Pseudonym) {
        self.waiting.remove(p);
        if let Some(at) = self.recent_at.remove(p) {
            self.recent.remove(&(at, *p));
        }
    }

    fn file(&mut self, p: Pseudonym, at: Timestamp, place: Option<Place>) {
        self.remove(&p);
        match place {
            Some(Place::Waiting) => {
                self.waiting.insert(p, at);
            }
            Some(Place::Recent) => {
                self.recent.insert((at, p));
                self.recent_at.insert(p, at);
                if self.recent.len() > RECENT_KEPT {
                    if let Some((_, dropped)) = self.recent.pop_first() {
                        self.recent_at.remove(&dropped);
                        self.truncated = true;
                    }
                }
            }
            None => {}
        }
    }
}

/// The inbox index of one store (see the module documentation).
pub struct InboxIndex {
    lists: Mutex<Lists>,
    feed: Mutex<broadcast::Receiver<Pseudonym>>,
}

impl InboxIndex {
    /// An index of `store`, empty until first read; it follows the change feed from now on.
    pub fn new(store: &Store) -> InboxIndex {
        InboxIndex {
            lists: Mutex::new(Lists::default()),
            feed: Mutex::new(store.activity().subscribe()),
        }
    }

    /// Files anew every conversation that changed since the last call (a no-op until built).
    pub fn catch_up(&self, store: &Store) -> store::Result<()> {
        let mut feed = self.feed.lock().expect("inbox feed poisoned");
        self.catch_up_locked(store, &mut feed)
    }

    /// [`InboxIndex::catch_up`] with the feed held: catching up and building never overlap, so
    /// a pass over stale headers cannot overwrite a change filed meanwhile.
    fn catch_up_locked(
        &self,
        store: &Store,
        feed: &mut broadcast::Receiver<Pseudonym>,
    ) -> store::Result<()> {
        let mut changed = Vec::new();
        loop {
            match feed.try_recv() {
                Ok(p) => changed.push(p),
                Err(TryRecvError::Lagged(_)) => {
                    self.lists.lock().expect("inbox index poisoned").built = false;
                }
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        for p in changed {
            self.refresh(store, &p)?;
        }
        Ok(())
    }

    /// Files `p` anew from its contact row and mark as they are now.
    pub fn refresh(&self, store: &Store, p: &Pseudonym) -> store::Result<()> {
        if !self.lists.lock().expect("inbox index poisoned").built {
            return Ok(());
        }
        let contact = store.contact(p)?;
        let mark = attention::get(store, p)?;
        let place = place(contact.map(|c| c.mode), mark.as_ref());
        let mut lists = self.lists.lock().expect("inbox index poisoned");
        match (contact, place) {
            (Some(Contact { last_contact, .. }), Some(place)) => {
                lists.file(*p, last_contact, Some(place));
            }
            _ => lists.remove(p),
        }
        Ok(())
    }

    /// Rebuilds from the hand-over marks, the held contacts and the newest contact rows: a
    /// few rows per conversation listed, however many customers the store holds.
    fn build(&self, store: &Store) -> store::Result<()> {
        let mut fresh = Lists {
            built: true,
            ..Lists::default()
        };
        // Every marked or held conversation, however old; none of them is a recent one.
        let mut waiting = HashSet::new();
        for (p, mark) in attention::all(store)? {
            if let Some(c) = store.contact(&p)? {
                fresh.file(p, c.last_contact, place(Some(c.mode), Some(&mark)));
            }
            waiting.insert(p);
        }
        for (p, c) in store.held_contacts()? {
            fresh.file(p, c.last_contact, Some(Place::Waiting));
            waiting.insert(p);
        }
        for item in store.contacts_newest_first() {
            let (p, c) = item?;
            if waiting.contains(&p) {
                continue;
            }
            let place = place(Some(c.mode), None);
            if place == Some(Place::Recent) && fresh.recent.len() == RECENT_KEPT {
                fresh.truncated = true;
                break;
            }
            fresh.file(p, c.last_contact, place);
        }
        *self.lists.lock().expect("inbox index poisoned") = fresh;
        Ok(())
    }

    /// The newest `waiting` waiting and `recent` recent conversations, building the index
    /// first when needed.
    pub fn select(&self, store: &Store, waiting: usize, recent: usize) -> store::Result<Selection> {
        {
            let mut feed = self.feed.lock().expect("inbox feed poisoned");
            self.catch_up_locked(store, &mut feed)?;
            let stale = {
                let lists = self.lists.lock().expect("inbox index poisoned");
                !lists.built || (lists.truncated && lists.recent.len() < recent)
            };
            if stale {
                self.build(store)?;
                // Changes written during the pass are filed again over it.
                self.catch_up_locked(store, &mut feed)?;
            }
        }
        let lists = self.lists.lock().expect("inbox index poisoned");
        let mut all_waiting: Vec<(Timestamp, Pseudonym)> =
            lists.waiting.iter().map(|(p, at)| (*at, *p)).collect();
        all_waiting.sort_unstable_by(|a, b| b.cmp(a));
        Ok(Selection {
            waiting_total: all_waiting.len(),
            waiting: all_waiting
                .into_iter()
                .take(waiting)
                .map(|(_, p)| p)
                .collect(),
            recent: lists
                .recent
                .iter()
                .rev()
                .take(recent)
                .map(|(_, p)| *p)
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use jiff::SignedDuration;

    use super::*;
    use crate::store::crypto::StoreIdentity;
    use crate::store::messages::{Direction, Message};
    use crate::turn::{AlertKind, StaffAlert};

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreIdentity::generate()).unwrap();
        (dir, store)
    }

    /// A message from `phone` `ago` before now, committed and announced as a turn does;
    /// `hand_over` marks the conversation for a person in the same batch.
    fn message(store: &Store, phone: &str, ago: SignedDuration, hand_over: bool) -> Pseudonym {
        let at = Timestamp::now() - ago;
        let (c, ()) = store
            .update_customer(phone, at, |c, batch, st| {
                c.meta.last_contact = at;
                c.meta.last_inbound = Some(at);
                st.append_message(
                    c,
                    &Message {
                        direction: Direction::Inbound,
                        text: "Hallo".into(),
                        at,
                        wamid: None,
                    },
                    batch,
                )?;
                if hand_over {
                    c.meta.mode = BotMode::Escalated;
                    let alert = StaffAlert {
                        kind: AlertKind::Complaint,
                        pseudonym: c.pseudonym,
                    };
                    attention::mark(st, batch, &alert, at);
                }
                Ok(())
            })
            .unwrap();
        store.activity().touched(&c.pseudonym);
        c.pseudonym
    }

    /// Staff hand `p` back to the assistant, as the console's hand-back does.
    fn hand_back(store: &Store, p: &Pseudonym) {
        store
            .update_existing(p, |c, batch, st| {
                c.meta.mode = BotMode::Active;
                attention::clear(st, batch, &c.pseudonym);
                Ok(())
            })
            .unwrap();
        store.activity().touched(p);
    }

    fn select(index: &InboxIndex, store: &Store) -> Selection {
        index.select(store, 10, 10).unwrap()
    }

    #[test]
    fn waiting_first_newest_first_then_the_most_recent() {
        let (_dir, store) = open();
        let index = InboxIndex::new(&store);
        let old = message(
            &store,
            "+491510000001",
            SignedDuration::from_hours(5),
            false,
        );
        let waiting_old = message(&store, "+491510000002", SignedDuration::from_hours(4), true);
        let new = message(
            &store,
            "+491510000003",
            SignedDuration::from_hours(1),
            false,
        );
        let waiting_new = message(&store, "+491510000004", SignedDuration::from_hours(2), true);
        let got = select(&index, &store);
        assert_eq!(got.waiting, vec![waiting_new, waiting_old]);
        assert_eq!(got.waiting_total, 2);
        assert_eq!(got.recent, vec![new, old]);
        let fewer = index.select(&store, 1, 1).unwrap();
        assert_eq!(fewer.waiting, vec![waiting_new]);
        assert_eq!(fewer.waiting_total, 2);
        assert_eq!(fewer.recent, vec![new]);
    }

    #[test]
    fn a_hand_over_a_message_a_hand_back_and_a_forget_each_move_a_conversation() {
        let (_dir, store) = open();
        let index = InboxIndex::new(&store);
        let anna = message(
            &store,
            "+491510000001",
            SignedDuration::from_hours(3),
            false,
        );
        let ben = message(
            &store,
            "+491510000002",
            SignedDuration::from_hours(2),
            false,
        );
        assert_eq!(select(&index, &store).recent, vec![ben, anna]);

        // A new message puts its conversation on top.
        message(&store, "+491510000001", SignedDuration::from_mins(5), false);
        assert_eq!(select(&index, &store).recent, vec![anna, ben]);

        // A hand-over moves it to the waiting ones.
        message(&store, "+491510000002", SignedDuration::from_mins(1), true);
        let got = select(&index, &store);
        assert_eq!((got.waiting, got.recent), (vec![ben], vec![anna]));

        // Handed back, it is a recent one again.
        hand_back(&store, &ben);
        let got = select(&index, &store);
        assert!(got.waiting.is_empty());
        assert_eq!(got.recent, vec![ben, anna]);

        // Forgotten, it is gone.
        store.forget(&[ben], Timestamp::now()).unwrap();
        let got = select(&index, &store);
        assert_eq!(got.recent, vec![anna]);
        assert_eq!(got.waiting_total, 0);
    }

    #[test]
    fn the_index_is_read_not_the_headers_and_a_lagged_feed_rebuilds_it() {
        let (_dir, store) = open();
        let index = InboxIndex::new(&store);
        let anna = message(
            &store,
            "+491510000001",
            SignedDuration::from_hours(3),
            false,
        );
        assert_eq!(select(&index, &store).recent, vec![anna]);
        // Written without a word on the feed: the built index does not see it ...
        let ben = store.pseudonym("+491510000002");
        store
            .update_customer("+491510000002", Timestamp::now(), |_, _, _| Ok(()))
            .unwrap();
        assert_eq!(select(&index, &store).recent, vec![anna]);
        // ... until the feed overflows, which makes the next read build it anew.
        for _ in 0..300 {
            store.activity().touched(&anna);
        }
        assert_eq!(select(&index, &store).recent, vec![ben, anna]);
    }

    #[test]
    fn recent_conversations_kept_are_bounded() {
        let (_dir, store) = open();
        let index = InboxIndex::new(&store);
        let mut newest = Vec::new();
        for i in 0..(RECENT_KEPT + 20) {
            let ago = SignedDuration::from_mins(i64::try_from(i).unwrap());
            newest.push(message(&store, &format!("+49151{i:08}"), ago, false));
        }
        let got = index.select(&store, 0, 3).unwrap();
        assert_eq!(got.recent, newest[..3].to_vec());
        assert_eq!(index.lists.lock().unwrap().recent.len(), RECENT_KEPT);
    }
}
