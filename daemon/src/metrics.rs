//! Prometheus metrics and the health endpoint, served on a loopback-only listener (never through
//! the tunnel). Counters are updated where things happen; queue depths are read at scrape time.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A single `outcome` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// The label's value (`ok`, `bad_signature`, …).
    pub outcome: String,
}

impl Outcome {
    /// The label `outcome=s`.
    pub fn of(s: &str) -> Outcome {
        Outcome { outcome: s.into() }
    }
}

/// A single `category` label (a message's pricing category).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Category {
    /// `service`, `utility`, `marketing` or `authentication`.
    pub category: String,
}

impl Category {
    /// The label `category=s`.
    pub fn of(s: &str) -> Category {
        Category { category: s.into() }
    }
}

/// Labels of `frontdesk_send_failures_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabel {
    /// The error code's meaning (`window_closed`, `spam_limit`, …).
    pub reason: String,
    /// `call` (the send call failed) or `status` (a `failed` status webhook came later).
    pub stage: String,
}

/// Labels of `frontdesk_staff_alerts_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabel {
    /// Why staff were alerted (`complaint`, `booking_failed`, `sender_paused`, …).
    pub kind: String,
    /// `whatsapp` or `email`.
    pub channel: String,
    /// `queued` (handed to the outbox), `sent`, `failed` (tried again later) or `expired`.
    pub outcome: String,
}

/// `frontdesk_staff_alerts_total`.
fn register_staff_alerts(registry: &mut Registry) -> Family<AlertLabel, Counter> {
    let staff_alerts = Family::<AlertLabel, Counter>::default();
    registry.register(
        "staff_alerts",
        "Staff alerts by kind, channel (whatsapp, email) and outcome (queued, sent, failed, expired)",
        staff_alerts.clone(),
    );
    staff_alerts
}

/// `frontdesk_messages_sent_total`, with every pricing category shown at zero until its first
/// message.
fn register_messages_sent(registry: &mut Registry) -> Family<Category, Counter> {
    let messages_sent = Family::<Category, Counter>::default();
    registry.register(
        "messages_sent",
        "Messages the Graph API accepted, by pricing category (service, utility, marketing, authentication)",
        messages_sent.clone(),
    );
    for c in crate::stats::PricingCategory::ALL {
        let _ = messages_sent.get_or_create(&Category::of(c.name()));
    }
    messages_sent
}

/// A single `queue` label (`inbox`, `outbox`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabel {
    /// The queue's name.
    pub queue: String,
}

/// `frontdesk_quarantined_rows_total`, with both queues shown at zero until their first row.
fn register_quarantined(registry: &mut Registry) -> Family<QueueLabel, Counter> {
    let quarantined = Family::<QueueLabel, Counter>::default();
    registry.register(
        "quarantined_rows",
        "Queue rows that could not be opened and were moved to the quarantine, by queue (inbox, outbox)",
        quarantined.clone(),
    );
    for queue in ["inbox", "outbox"] {
        let _ = quarantined.get_or_create(&QueueLabel {
            queue: queue.into(),
        });
    }
    quarantined
}

/// A single `reason` label (what kind of failure stopped a turn).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// `model`, `booking`, `store`, `audit` or `other`.
    pub reason: String,
}

impl Reason {
    /// The label `reason=s`.
    pub fn of(s: &str) -> Reason {
        Reason { reason: s.into() }
    }
}

/// Failed turns: tried again, or handed to staff after the last attempt.
pub struct TurnFailureMetrics {
    /// `frontdesk_turn_retries_total`: failed turns scheduled for another attempt, by reason.
    pub retries: Family<Reason, Counter>,
    /// `frontdesk_turns_given_up_total`: turns that failed on every attempt and were handed to
    /// staff, by the last failure's reason.
    pub given_up: Family<Reason, Counter>,
}

fn register_turn_failures(registry: &mut Registry) -> TurnFailureMetrics {
    let retries = Family::<Reason, Counter>::default();
    registry.register(
        "turn_retries",
        "Failed turns scheduled for another attempt, by reason (model, booking, store, audit, other)",
        retries.clone(),
    );
    let given_up = Family::<Reason, Counter>::default();
    registry.register(
        "turns_given_up",
        "Turns that failed on every attempt; the contact was handed to staff, by the last reason",
        given_up.clone(),
    );
    TurnFailureMetrics { retries, given_up }
}

/// `frontdesk_magicline_events_total`.
fn register_magicline_events(registry: &mut Registry) -> Family<Outcome, Counter> {
    let events = Family::<Outcome, Counter>::default();
    registry.register(
        "magicline_events",
        "MagicLine webhook events and requests by outcome (queued, duplicate, ignored, processed, dropped, retry, api_key_missing, api_key_wrong, malformed, too_large, …)",
        events.clone(),
    );
    events
}

/// `frontdesk_attendance_sweeps_total`.
fn register_attendance_sweeps(registry: &mut Registry) -> Counter {
    let sweeps = Counter::default();
    registry.register(
        "attendance_sweeps",
        "Completed sweeps of the booked trials (no-shows settled; with magicline.events = poll, every trial read)",
        sweeps.clone(),
    );
    sweeps
}

/// Every metric of the daemon.
pub struct Metrics {
    registry: Registry,
    /// `frontdesk_webhook_requests_total`: webhook requests by outcome.
    pub webhook_requests: Family<Outcome, Counter>,
    /// `frontdesk_staff_alerts_total`: staff alerts by kind, channel and outcome.
    pub staff_alerts: Family<AlertLabel, Counter>,
    /// `frontdesk_messages_processed_total`: inbound messages processed, by outcome.
    pub messages_processed: Family<Outcome, Counter>,
    /// `frontdesk_sends_total`: Graph API sends by outcome.
    pub sends: Family<Outcome, Counter>,
    /// `frontdesk_messages_sent_total`: messages the Graph API accepted, by pricing category.
    pub messages_sent: Family<Category, Counter>,
    /// `frontdesk_send_failures_total`: sends that failed with a Graph error, by meaning and stage.
    pub send_failures: Family<FailureLabel, Counter>,
    /// `frontdesk_inbound_errors_total`: inbound messages WhatsApp marked with an error code
    /// (`unsupported_type`, `media_download`), by reason.
    pub inbound_errors: Family<Outcome, Counter>,
    /// `frontdesk_quarantined_rows_total`: unreadable queue rows moved to the quarantine.
    pub quarantined_rows: Family<QueueLabel, Counter>,
    /// `frontdesk_magicline_events_total`: MagicLine webhook requests and events by outcome.
    pub magicline_events: Family<Outcome, Counter>,
    /// `frontdesk_attendance_sweeps_total`: completed sweeps of the booked trials.
    pub attendance_sweeps: Counter,
    /// `frontdesk_sender_slowed`: 1 while the sender slows down after WhatsApp's spam rate limit.
    pub sender_slowed: Gauge,
    /// Failed turns (`frontdesk_turn_retries_total`, `frontdesk_turns_given_up_total`).
    pub turn_failures: TurnFailureMetrics,
    /// `frontdesk_processing_seconds`: from a message's arrival in the inbox to its reply in the
    /// outbox.
    pub processing_seconds: Histogram,
    /// `frontdesk_inbox_depth`: entries waiting in the inbox.
    pub inbox_depth: Gauge,
    /// `frontdesk_outbox_depth`: replies waiting in the outbox.
    pub outbox_depth: Gauge,
    /// `frontdesk_store_cache_bytes`: what the store's block cache holds (bounded by
    /// `store::BLOCK_CACHE_BYTES`).
    pub store_cache_bytes: Gauge,
    /// `frontdesk_sender_paused`: 1 while WhatsApp rejects the access token and nothing is sent.
    pub sender_paused: Gauge,
    /// `frontdesk_llm_queue_depth`: requests waiting for the language model.
    pub llm_queue_depth: Gauge,
    /// `frontdesk_llm_tokens_per_second`: decode speed of the last reply.
    pub llm_tokens_per_second: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// `frontdesk_tunnel_connected`: 1 while the tunnel to the relay is up.
    pub tunnel_connected: Gauge,
    /// Unix seconds of the last completed pipeline turn (dispatcher or sender loop), for the
    /// watchdog and /healthz.
    pub last_heartbeat: AtomicI64,
    /// Unix seconds at which the metrics were created (about when the daemon started).
    pub started: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every metric registered, counters at zero and the heartbeat set to now.
    #[expect(
        clippy::too_many_lines,
        reason = "one registration per metric, read top to bottom like the exposition"
    )]
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("frontdesk");
        let webhook_requests = Family::<Outcome, Counter>::default();
        registry.register(
            "webhook_requests",
            "Webhook requests by outcome (ok, unsigned, bad_signature, malformed, too_large, verify_ok, verify_denied)",
            webhook_requests.clone(),
        );
        let messages_processed = Family::<Outcome, Counter>::default();
        registry.register(
            "messages_processed",
            "Inbound messages processed by outcome (replied, silent, duplicate, fallback, error)",
            messages_processed.clone(),
        );
        let sends = Family::<Outcome, Counter>::default();
        registry.register(
            "sends",
            "Graph API sends by outcome (ok, retry, pair_rate_limited, window_closed, undeliverable, failed)",
            sends.clone(),
        );
        let messages_sent = register_messages_sent(&mut registry);
        let send_failures = Family::<FailureLabel, Counter>::default();
        registry.register(
            "send_failures",
            "Sends that failed with a Graph error code, by reason (window_closed, undeliverable, marketing_limit, spam_limit, template_paused, template_disabled, recipient_id_unsupported, throttled, server_error, failed, …) and stage (call, status)",
            send_failures.clone(),
        );
        let inbound_errors = Family::<Outcome, Counter>::default();
        registry.register(
            "inbound_errors",
            "Inbound messages WhatsApp could not pass on whole, by reason (unsupported_type, media_download, …)",
            inbound_errors.clone(),
        );
        let sender_slowed = Gauge::default();
        registry.register(
            "sender_slowed",
            "1 while the sender slows down after WhatsApp's spam rate limit (131048)",
            sender_slowed.clone(),
        );
        let processing_seconds = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "processing_seconds",
            "Time from a message's arrival in the inbox to its reply in the outbox",
            processing_seconds.clone(),
        );
        let inbox_depth = Gauge::default();
        registry.register(
            "inbox_depth",
            "Entries waiting in the inbox",
            inbox_depth.clone(),
        );
        let outbox_depth = Gauge::default();
        registry.register(
            "outbox_depth",
            "Replies waiting in the outbox",
            outbox_depth.clone(),
        );
        let store_cache_bytes = Gauge::default();
        registry.register(
            "store_cache_bytes",
            "Bytes held by the store's block cache (it fills up to its bound with what was read)",
            store_cache_bytes.clone(),
        );
        let sender_paused = Gauge::default();
        registry.register(
            "sender_paused",
            "1 while WhatsApp rejects the access token and replies wait in the outbox",
            sender_paused.clone(),
        );
        let llm_queue_depth = Gauge::default();
        registry.register(
            "llm_queue_depth",
            "Requests waiting for the language model",
            llm_queue_depth.clone(),
        );
        let llm_tokens_per_second = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "llm_tokens_per_second",
            "Decode speed of the last reply",
            llm_tokens_per_second.clone(),
        );
        let tunnel_connected = Gauge::default();
        registry.register(
            "tunnel_connected",
            "1 while the tunnel to the relay is up",
            tunnel_connected.clone(),
        );
        Metrics {
            // Before `registry` moves into the struct: fields are evaluated in written order.
            quarantined_rows: register_quarantined(&mut registry),
            staff_alerts: register_staff_alerts(&mut registry),
            // Registered before the registry moves into the struct.
            turn_failures: register_turn_failures(&mut registry),
            magicline_events: register_magicline_events(&mut registry),
            attendance_sweeps: register_attendance_sweeps(&mut registry),
            registry,
            webhook_requests,
            messages_processed,
            sends,
            messages_sent,
            send_failures,
            inbound_errors,
            sender_slowed,
            processing_seconds,
            inbox_depth,
            outbox_depth,
            store_cache_bytes,
            sender_paused,
            llm_queue_depth,
            llm_tokens_per_second,
            tunnel_connected,
            last_heartbeat: AtomicI64::new(jiff::Timestamp::now().as_second()),
            started: AtomicU64::new(jiff::Timestamp::now().as_second() as u64),
        }
    }

    /// Records that the pipeline just turned over.
    pub fn heartbeat(&self) {
        self.last_heartbeat
            .store(jiff::Timestamp::now().as_second(), Ordering::Relaxed);
    }

    /// Seconds since the pipeline last turned over.
    pub fn heartbeat_age(&self) -> i64 {
        jiff::Timestamp::now().as_second() - self.last_heartbeat.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown` resolves. `refresh` runs
/// before each scrape (it sets the gauges read from the store).
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    stall_secs: i64,
    refresh: Arc<dyn Fn() + Send + Sync>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::{Response, StatusCode};

    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
            _ = &mut shutdown => return,
        };
        let metrics = metrics.clone();
        let refresh = refresh.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let metrics = metrics.clone();
                    let refresh = refresh.clone();
                    async move {
                        let resp = match req.uri().path() {
                            "/metrics" => {
                                let text = tokio::task::spawn_blocking(move || {
                                    refresh();
                                    metrics.encode()
                                })
                                .await
                                .unwrap_or_default();
                                Response::builder()
                                .header(
                                    "content-type",
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                )
                                .body(Full::new(Bytes::from(text)))
                            }
                            "/healthz" => {
                                let age = metrics.heartbeat_age();
                                let (status, body) = if age <= stall_secs {
                                    (StatusCode::OK, "ok\n".to_string())
                                } else {
                                    (
                                        StatusCode::SERVICE_UNAVAILABLE,
                                        format!("pipeline stalled for {age} s\n"),
                                    )
                                };
                                Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::from(body)))
                            }
                            _ => Response::builder()
                                .status(StatusCode::NOT_FOUND)
                                .body(Full::new(Bytes::from_static(b"not found\n"))),
                        };
                        Ok::<_, std::convert::Infallible>(
                            resp.expect("static response parts are valid"),
                        )
                    }
                });
            let _ = crate::http1::server()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}
