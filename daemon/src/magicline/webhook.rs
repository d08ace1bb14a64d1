//! The endpoint MagicLine's webhooks call, `POST /webhook/magicline` on the daemon's webhook
//! listener (so also through the tunnel): it checks the `x-api-key` header against the
//! `magicline-webhook-key` credential (the key MagicLine's partner team hands out with the
//! integration, compared in constant time), reads the notify-only body
//! (`{entityId, uuid, payload: [{timestamp, type, content}]}`), and keeps the events that may
//! concern a trial frontdesk booked in a durable queue before it answers 200. MagicLine waits
//! 5 seconds and asks that nothing be fetched from the Open API while the call is open: the
//! work (reading the booking or the check-ins, recording what changed) is done afterwards by
//! [`super::events`]. Acknowledged means stored; a failed write answers 503 and MagicLine sends
//! again later.
//!
//! Which events are kept: the booking events (`APPOINTMENT_BOOKING_CREATED`, `…_UPDATED`,
//! `…_CANCELLED`, and `CLASS_BOOKING_*` for trial classes) about a booking frontdesk made, the
//! class date events (`CLASS_SLOT_UPDATED`, `…_CANCELLED`) about a date frontdesk booked a lead
//! on, and `CUSTOMER_CHECKIN` of a customer frontdesk booked for, all found through the store's
//! keyed id index without opening anything. Every other type and every other entity is answered 200
//! and counted as `ignored`. An event whose `uuid` was queued before is answered 200 and not
//! queued again (`duplicate`), so it is processed once.
//!
//! Rejections: 401 (key missing or wrong), 405, 413 (over `webhook.max_body_bytes`), 408 (body
//! too slow), 400 (not MagicLine's body). Each is counted and audited
//! (`magicline.webhook_rejected` with the reason), at most `audit_per_minute` times a minute.
//! The key is never logged.
//!
//! Queue rows live in `meta` under `magicline-event/` (receipt time, sequence), sealed under the
//! store's queue key: MagicLine's ids are not on disk in clear. The uuids of queued events are
//! kept as keyed hashes under `magicline-seen/` for [`SEEN_DAYS`].

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tracing::{debug, warn};

use super::api::WebhookCall;
use crate::http1::{read_body, text};
use crate::metrics::{Metrics, Outcome};
use crate::secrets::Secret;
use crate::store::xref::External;
use crate::store::{ks, Store, StoreError};
use crate::whatsapp::webhook::RateWindow;

/// The path MagicLine is configured to call.
pub const PATH: &str = "/webhook/magicline";
/// The header MagicLine sends its webhook key in.
pub const KEY_HEADER: &str = "x-api-key";
/// How long the uuids of queued events are remembered. MagicLine redelivers a failed call
/// three times, ten minutes apart.
pub const SEEN_DAYS: i64 = 7;

const EVENT_PREFIX: &[u8] = b"magicline-event/";
const SEEN_PREFIX: &[u8] = b"magicline-seen/";
const SEEN_DOMAIN: &str = "magicline-event-uuid";

/// What an event is about, as far as frontdesk is concerned.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// An appointment booking was created, moved or cancelled (`entityId` is the booking).
    AppointmentBooking,
    /// A class booking was created, changed or cancelled (`entityId` is the booking): trial
    /// classes (`magicline.trial_offer_class_id`).
    ClassBooking,
    /// A customer checked in at the studio (`entityId` is the customer).
    CustomerCheckin,
    /// Staff moved or cancelled a class date (`entityId` is the class slot): its bookings
    /// keep naming it, and no booking event is sent for them.
    ClassDate,
}

impl EventKind {
    /// The kind of a MagicLine event type frontdesk acts on.
    pub fn of(event_type: &str) -> Option<EventKind> {
        match event_type {
            "APPOINTMENT_BOOKING_CREATED"
            | "APPOINTMENT_BOOKING_UPDATED"
            | "APPOINTMENT_BOOKING_CANCELLED" => Some(EventKind::AppointmentBooking),
            "CLASS_BOOKING_CREATED" | "CLASS_BOOKING_UPDATED" | "CLASS_BOOKING_CANCELLED" => {
                Some(EventKind::ClassBooking)
            }
            "CUSTOMER_CHECKIN" => Some(EventKind::CustomerCheckin),
            "CLASS_SLOT_UPDATED" | "CLASS_SLOT_CANCELLED" => Some(EventKind::ClassDate),
            _ => None,
        }
    }
}

/// One queued event (sealed in its row).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct QueuedEvent {
    /// MagicLine's event id.
    pub uuid: String,
    /// The booking or customer id.
    pub entity_id: i64,
    /// What it is about.
    pub kind: EventKind,
    /// When it happened (MagicLine's timestamp), milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

/// Everything the endpoint needs.
pub struct MagicLineWebhook {
    store: Arc<Store>,
    api_key: Secret,
    max_body_bytes: usize,
    metrics: Arc<Metrics>,
    rejected: Arc<dyn Fn(u16, &'static str) + Send + Sync>,
    audit_per_minute: u32,
    limiter: RateWindow,
    /// Wakes the worker when events were queued.
    wake: Arc<tokio::sync::Notify>,
    /// Serialises the duplicate check with the write, so two deliveries of one event at once
    /// are queued once.
    queueing: Mutex<()>,
    sequence: AtomicU64,
}

impl MagicLineWebhook {
    /// The endpoint's state. `rejected` reports a rejected request (status, reason code).
    pub fn new(
        store: Arc<Store>,
        api_key: Secret,
        max_body_bytes: usize,
        metrics: Arc<Metrics>,
        rejected: Arc<dyn Fn(u16, &'static str) + Send + Sync>,
        audit_per_minute: u32,
        wake: Arc<tokio::sync::Notify>,
    ) -> Arc<MagicLineWebhook> {
        Arc::new(MagicLineWebhook {
            store,
            api_key,
            max_body_bytes,
            metrics,
            rejected,
            audit_per_minute,
            limiter: RateWindow::default(),
            wake,
            queueing: Mutex::new(()),
            sequence: AtomicU64::new(0),
        })
    }

    fn count(&self, outcome: &str) {
        self.metrics
            .magicline_events
            .get_or_create(&Outcome::of(outcome))
            .inc();
    }

    fn reject(&self, status: StatusCode, reason: &'static str) -> Response<Full<Bytes>> {
        self.count(reason);
        warn!(
            status = status.as_u16(),
            reason, "MagicLine webhook request rejected"
        );
        if self.limiter.allow(self.audit_per_minute) {
            (self.rejected)(status.as_u16(), reason);
        }
        text(status, reason)
    }

    fn key_matches(&self, given: &[u8]) -> bool {
        let expected = self.api_key.expose();
        // An empty key never matches; the length is not secret, the content is.
        !expected.is_empty() && bool::from(expected.ct_eq(given))
    }
}

/// Handles one request to [`PATH`] (HTTP/1 locally, HTTP/2 through the tunnel).
pub async fn handle<B>(
    state: Arc<MagicLineWebhook>,
    req: Request<B>,
) -> Result<Response<Full<Bytes>>, Infallible>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if req.method() != Method::POST {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"));
    }
    // The key first: a stranger's body is not even read.
    let key_ok = match req.headers().get(KEY_HEADER) {
        None => return Ok(state.reject(StatusCode::UNAUTHORIZED, "api_key_missing")),
        Some(v) => state.key_matches(v.as_bytes()),
    };
    if !key_ok {
        return Ok(state.reject(StatusCode::UNAUTHORIZED, "api_key_wrong"));
    }
    let (parts, body) = req.into_parts();
    let body = match read_body(&parts.headers, body, state.max_body_bytes).await {
        Ok(body) => body,
        Err(refused) => return Ok(state.reject(refused.status(), refused.reason())),
    };
    let call: WebhookCall = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            // serde's text could quote the body; only where it went wrong is kept.
            debug!(
                line = e.line(),
                column = e.column(),
                "MagicLine webhook body unreadable"
            );
            return Ok(state.reject(StatusCode::BAD_REQUEST, "malformed"));
        }
    };
    if call.uuid.is_empty() || call.uuid.len() > 64 || call.payload.is_empty() {
        return Ok(state.reject(StatusCode::BAD_REQUEST, "malformed"));
    }
    let st = state.clone();
    let stored = tokio::task::spawn_blocking(move || st.queue(&call)).await;
    Ok(match stored {
        Ok(Ok(outcome)) => {
            state.count(outcome);
            if outcome == "queued" {
                state.wake.notify_one();
            }
            text(StatusCode::OK, "ok")
        }
        Ok(Err(e)) => {
            // Not acknowledged: MagicLine sends it again later, nothing is lost.
            warn!(error = %e, "MagicLine event not stored; answering 503");
            state.count("store_error");
            text(StatusCode::SERVICE_UNAVAILABLE, "try again")
        }
        Err(e) => {
            warn!(error = %e, "MagicLine event write task failed");
            text(StatusCode::SERVICE_UNAVAILABLE, "try again")
        }
    })
}

impl MagicLineWebhook {
    /// Queues the events of `call` that concern frontdesk, durably; says what became of it
    /// (`queued`, `duplicate`, `ignored`).
    fn queue(&self, call: &WebhookCall) -> Result<&'static str, StoreError> {
        let mut events = Vec::new();
        for item in &call.payload {
            let Some(kind) = EventKind::of(&item.event_type) else {
                continue;
            };
            let ours = match kind {
                EventKind::AppointmentBooking | EventKind::ClassBooking => self
                    .store
                    .external_owner(External::MagicLineBooking, call.entity_id)?
                    .is_some(),
                EventKind::CustomerCheckin => self
                    .store
                    .external_owner(External::MagicLineCustomer, call.entity_id)?
                    .is_some(),
                EventKind::ClassDate => !self.store.class_date_owners(call.entity_id)?.is_empty(),
            };
            if !ours {
                continue;
            }
            events.push(QueuedEvent {
                uuid: call.uuid.clone(),
                entity_id: call.entity_id,
                kind,
                timestamp_ms: item.timestamp,
            });
        }
        if events.is_empty() {
            return Ok("ignored");
        }
        let seen_key = seen_key(&self.store, &call.uuid);
        let _one_at_a_time = self.queueing.lock().unwrap_or_else(|e| e.into_inner());
        if self.store.keyspaces().meta.contains_key(&seen_key)? {
            return Ok("duplicate");
        }
        let now = jiff::Timestamp::now();
        let mut batch = self.store.batch();
        for event in &events {
            let seq = self.sequence.fetch_add(1, Ordering::Relaxed);
            let key = event_key(now, seq);
            let plain = zeroize::Zeroizing::new(
                serde_json::to_vec(event).expect("queued events serialise"),
            );
            let sealed = self.store.queue_key().seal(ks::META, &key, &plain);
            batch.insert(&self.store.keyspaces().meta, key, sealed);
        }
        batch.insert(
            &self.store.keyspaces().meta,
            seen_key,
            now.as_second().to_string().into_bytes(),
        );
        self.store.commit_durable(batch)?;
        Ok("queued")
    }
}

fn seen_key(store: &Store, uuid: &str) -> Vec<u8> {
    let mut key = SEEN_PREFIX.to_vec();
    key.extend_from_slice(hex::encode(store.token_hash(SEEN_DOMAIN, uuid)).as_bytes());
    key
}

fn event_key(at: jiff::Timestamp, seq: u64) -> Vec<u8> {
    let mut key = EVENT_PREFIX.to_vec();
    let micros = at.as_microsecond().max(0);
    key.extend_from_slice(format!("{micros:020}-{seq:010}").as_bytes());
    key
}

/// A queue row: its key, and the event (`None` when the row does not open).
pub type QueuedRow = (Vec<u8>, Option<QueuedEvent>);

/// The queued events, oldest first, with their row keys. A row that does not open comes with
/// `None`, so the caller can remove it.
pub fn queued(store: &Store) -> Result<Vec<QueuedRow>, StoreError> {
    let mut out = Vec::new();
    for g in store.keyspaces().meta.prefix(EVENT_PREFIX) {
        let (k, v) = g.into_inner()?;
        let event = store
            .queue_key()
            .open(ks::META, &k, &v)
            .ok()
            .and_then(|plain| serde_json::from_slice(&plain).ok());
        out.push((k.to_vec(), event));
    }
    Ok(out)
}

/// Removes a processed (or unreadable) event's row, durably.
pub fn remove(store: &Store, key: &[u8]) -> Result<(), StoreError> {
    let mut batch = store.batch();
    batch.remove(&store.keyspaces().meta, key.to_vec());
    store.commit_durable(batch)
}

/// Forgets the uuids of events queued more than [`SEEN_DAYS`] before `now`; returns how many.
pub fn prune_seen(store: &Store, now: jiff::Timestamp) -> Result<usize, StoreError> {
    let oldest = now.as_second() - SEEN_DAYS * 24 * 3600;
    let mut batch = store.batch();
    let mut pruned = 0;
    for g in store.keyspaces().meta.prefix(SEEN_PREFIX) {
        let (k, v) = g.into_inner()?;
        let at = std::str::from_utf8(&v)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .unwrap_or(0);
        if at < oldest {
            batch.remove(&store.keyspaces().meta, k);
            pruned += 1;
        }
    }
    if pruned > 0 {
        store.commit_durable(batch)?;
    }
    Ok(pruned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::crypto::StoreIdentity;

    fn call(uuid: &str, entity: i64, event_type: &str) -> WebhookCall {
        serde_json::from_value(serde_json::json!({
            "entityId": entity,
            "uuid": uuid,
            "payload": [{"timestamp": 1_642_779_144_176_i64, "type": event_type, "content": {}}],
            "futureField": true,
        }))
        .unwrap()
    }

    #[test]
    fn only_events_about_frontdesks_bookings_are_queued_once_and_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), StoreIdentity::generate()).unwrap());
        let p = store.pseudonym("491510000007");
        let mut batch = store.batch();
        store.link_external(&mut batch, External::MagicLineBooking, 70_001, &p);
        store.link_external(&mut batch, External::MagicLineCustomer, 10_001, &p);
        store.link_class_date(&mut batch, 30_001, &p);
        store.commit_durable(batch).unwrap();
        let hook = MagicLineWebhook::new(
            store.clone(),
            Secret::new(b"k".to_vec()),
            1024,
            Arc::new(Metrics::new()),
            Arc::new(|_, _| {}),
            10,
            Arc::new(tokio::sync::Notify::new()),
        );
        let cancel = call(
            "6b1e3a5c-0000-4000-a000-000000000001",
            70_001,
            "APPOINTMENT_BOOKING_CANCELLED",
        );
        assert_eq!(hook.queue(&cancel).unwrap(), "queued");
        assert_eq!(hook.queue(&cancel).unwrap(), "duplicate");
        let checkin = call(
            "6b1e3a5c-0000-4000-a000-000000000002",
            10_001,
            "CUSTOMER_CHECKIN",
        );
        assert_eq!(hook.queue(&checkin).unwrap(), "queued");
        let class = call(
            "6b1e3a5c-0000-4000-a000-000000000007",
            70_001,
            "CLASS_BOOKING_CANCELLED",
        );
        assert_eq!(hook.queue(&class).unwrap(), "queued");
        let date_moved = call(
            "6b1e3a5c-0000-4000-a000-000000000008",
            30_001,
            "CLASS_SLOT_UPDATED",
        );
        assert_eq!(hook.queue(&date_moved).unwrap(), "queued");
        // Someone else's booking, class booking and class date, a member's visit, another type.
        for (n, entity, t) in [
            (3, 70_002, "APPOINTMENT_BOOKING_UPDATED"),
            (4, 501, "CUSTOMER_CHECKIN"),
            (5, 70_002, "CLASS_BOOKING_CANCELLED"),
            (6, 10_001, "CUSTOMER_CREATED"),
            (9, 30_002, "CLASS_SLOT_CANCELLED"),
        ] {
            let c = call(
                &format!("6b1e3a5c-0000-4000-a000-00000000000{n}"),
                entity,
                t,
            );
            assert_eq!(hook.queue(&c).unwrap(), "ignored", "{t}");
        }
        let rows = queued(&store).unwrap();
        let events: Vec<QueuedEvent> = rows.iter().map(|(_, e)| e.clone().unwrap()).collect();
        assert_eq!(events.len(), 4);
        assert_eq!(
            (events[0].entity_id, events[0].kind),
            (70_001, EventKind::AppointmentBooking)
        );
        assert_eq!(
            (events[1].entity_id, events[1].kind),
            (10_001, EventKind::CustomerCheckin)
        );
        assert_eq!(
            (events[2].entity_id, events[2].kind),
            (70_001, EventKind::ClassBooking)
        );
        assert_eq!(
            (events[3].entity_id, events[3].kind),
            (30_001, EventKind::ClassDate)
        );
        // Sealed: neither the ids nor the uuid are readable in the row.
        for g in store.keyspaces().meta.prefix(EVENT_PREFIX) {
            let (k, v) = g.into_inner().unwrap();
            let all = [k.as_ref(), v.as_ref()].concat();
            let text = String::from_utf8_lossy(&all);
            assert!(!text.contains("70001") && !text.contains("6b1e3a5c"));
        }
        remove(&store, &rows[0].0).unwrap();
        assert_eq!(queued(&store).unwrap().len(), 3);
        // The uuid stays known until the memory passes.
        assert_eq!(prune_seen(&store, jiff::Timestamp::now()).unwrap(), 0);
        let later = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * (SEEN_DAYS + 1));
        assert_eq!(prune_seen(&store, later).unwrap(), 4);
        assert_eq!(hook.queue(&cancel).unwrap(), "queued");
    }
}
