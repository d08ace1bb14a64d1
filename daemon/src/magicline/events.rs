//! The worker behind the MagicLine webhook ([`super::webhook`]) and the attendance sweep.
//!
//! It takes the queued events oldest first and lets the booker read the current state from
//! the Open API and record what changed ([`MagicLineBooker::refresh_booking`] for booking
//! events, [`MagicLineBooker::refresh_check_ins`] for check-ins); an event leaves the queue
//! only once it was handled, so a crash or a MagicLine outage delays it and loses nothing (the
//! booker writes nothing twice). While MagicLine is unavailable or has blocked the endpoint
//! for the minute, the queue waits with a growing pause; an answer that will not change by
//! asking again (a 4xx such as a missing scope) drops the event with a warning.
//!
//! Every `interval` it also sweeps the booked trials ([`MagicLineBooker::sweep_attendance`]):
//! settles no-shows, and, for a studio without MagicLine webhooks (`[magicline] events =
//! "poll"`), reads every upcoming and just-past trial's booking and check-ins instead of
//! waiting for events. Old event uuids are forgotten at the same time.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::booking::{BookerError, MagicLineBooker};
use super::client::Error as ApiError;
use super::webhook::{self, EventKind, QueuedEvent};
use crate::metrics::{Metrics, Outcome};
use crate::store::Store;

/// The first pause after MagicLine could not be reached; doubled up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(15);
const RETRY_MAX: Duration = Duration::from_secs(600);

/// What the worker needs.
pub struct EventWorker {
    /// Where the queue lives.
    pub store: Arc<Store>,
    /// Reads MagicLine and records the changes (shared with the engine, so one person's
    /// booking and their events never write over each other).
    pub booker: Arc<MagicLineBooker>,
    /// Notified by the webhook when it queued events.
    pub wake: Arc<tokio::sync::Notify>,
    /// Read every trial's state each sweep (no webhooks) rather than only settling no-shows.
    pub poll: bool,
    /// Time between sweeps.
    pub interval: Duration,
    /// Event counters.
    pub metrics: Arc<Metrics>,
}

/// How one event went.
enum Handled {
    Done,
    /// MagicLine will not answer differently if asked again: the event is dropped.
    Dropped,
    /// Try again later (MagicLine unavailable, rate-limited, the store failed).
    Later,
}

impl EventWorker {
    /// Runs until `stopped` resolves: drains the queue whenever woken and sweeps every
    /// `interval` (the first sweep at once).
    pub async fn run(self, stopped: impl std::future::Future<Output = ()>) {
        tokio::pin!(stopped);
        let this = Arc::new(self);
        let mut next_sweep = tokio::time::Instant::now();
        let mut retry = RETRY_FIRST;
        loop {
            let drained = {
                let w = this.clone();
                tokio::task::spawn_blocking(move || w.drain())
                    .await
                    .unwrap_or(false)
            };
            let wait_events = if drained {
                retry = RETRY_FIRST;
                None
            } else {
                let pause = retry;
                retry = (retry * 2).min(RETRY_MAX);
                Some(tokio::time::Instant::now() + pause)
            };
            if tokio::time::Instant::now() >= next_sweep {
                let w = this.clone();
                let _ = tokio::task::spawn_blocking(move || w.sweep()).await;
                next_sweep = tokio::time::Instant::now() + this.interval;
            }
            let until = wait_events.map_or(next_sweep, |t| t.min(next_sweep));
            tokio::select! {
                _ = &mut stopped => break,
                _ = this.wake.notified(), if wait_events.is_none() => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    fn count(&self, outcome: &str) {
        self.metrics
            .magicline_events
            .get_or_create(&Outcome::of(outcome))
            .inc();
    }

    /// Handles the queued events in order; false when one must wait (the rest wait behind it).
    fn drain(&self) -> bool {
        let rows = match webhook::queued(&self.store) {
            Ok(rows) => rows,
            Err(e) => {
                warn!(error = %e, "MagicLine event queue unreadable");
                return false;
            }
        };
        for (key, event) in rows {
            let handled = match &event {
                Some(event) => self.handle(event),
                None => {
                    warn!("a MagicLine event row does not open; removed");
                    Handled::Dropped
                }
            };
            match handled {
                Handled::Later => {
                    self.count("retry");
                    return false;
                }
                Handled::Done => self.count("processed"),
                Handled::Dropped => self.count("dropped"),
            }
            if let Err(e) = webhook::remove(&self.store, &key) {
                warn!(error = %e, "a handled MagicLine event stays queued");
                return false;
            }
        }
        true
    }

    fn handle(&self, event: &QueuedEvent) -> Handled {
        let result = match event.kind {
            // The booking's record says which endpoint holds its state.
            EventKind::AppointmentBooking | EventKind::ClassBooking => {
                self.booker.refresh_booking(event.entity_id).map(|_| ())
            }
            EventKind::ClassDate => self.booker.refresh_class_date(event.entity_id).map(|_| ()),
            EventKind::CustomerCheckin => {
                let at = jiff::Timestamp::from_millisecond(event.timestamp_ms)
                    .unwrap_or_else(|_| jiff::Timestamp::now());
                self.booker
                    .refresh_check_ins(event.entity_id, at)
                    .map(|_| ())
            }
        };
        match result {
            Ok(()) => Handled::Done,
            Err(BookerError::MagicLine(e)) if permanent(&e) => {
                warn!(kind = ?event.kind, error = %e, "MagicLine refused to read an event's state; event dropped");
                Handled::Dropped
            }
            Err(BookerError::Forgotten) => Handled::Dropped,
            Err(e) => {
                warn!(kind = ?event.kind, error = %e, "MagicLine event not handled now; tried again later");
                Handled::Later
            }
        }
    }

    fn sweep(&self) {
        let now = jiff::Timestamp::now();
        match self.booker.sweep_attendance(now, self.poll) {
            Ok(a) if a.canceled + a.moved + a.checked_in + a.no_shows + a.failed > 0 => info!(
                trials = a.trials,
                canceled = a.canceled,
                moved = a.moved,
                checked_in = a.checked_in,
                no_shows = a.no_shows,
                failed = a.failed,
                "attendance of booked trials swept"
            ),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "attendance sweep failed"),
        }
        self.metrics.attendance_sweeps.inc();
        if let Err(e) = webhook::prune_seen(&self.store, now) {
            warn!(error = %e, "old MagicLine event ids not pruned");
        }
    }
}

/// A 4xx other than 429: asking again gets the same answer.
fn permanent(e: &ApiError) -> bool {
    matches!(e, ApiError::Api { status, .. } if (400..500).contains(status) && *status != 429)
}
