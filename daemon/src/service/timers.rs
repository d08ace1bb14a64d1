//! What runs on a clock: the retention sweep (at start, then hourly), the systemd watchdog, the
//! metrics listener's refresh of the queue gauges, and the reminder scheduler's tick.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::{notify, RETENTION_INTERVAL};
use crate::audit::{Actor, AuditLog};
use crate::config::{Config, RetentionPolicy};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::whatsapp::queue::Queues;

/// Runs retention at start, then every [`RETENTION_INTERVAL`]: the same sweep, prune and audit
/// entry as `frontdesk retention run` ([`crate::admin::ops::run_retention`]).
pub(super) fn retention(
    store: Arc<Store>,
    audit: Arc<AuditLog>,
    retention: RetentionPolicy,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RETENTION_INTERVAL);
        loop {
            tick.tick().await;
            let (store, audit) = (store.clone(), audit.clone());
            let res = tokio::task::spawn_blocking(move || {
                crate::admin::ops::run_retention(
                    &store,
                    &audit,
                    &retention,
                    Actor::System,
                    None,
                    jiff::Timestamp::now(),
                    false,
                )
            })
            .await;
            match res {
                Ok(Ok(r)) => info!(
                    messages = r.store.messages_deleted,
                    customers = r.store.customers_forgotten,
                    seen_ids = r.store.seen_ids_deleted,
                    audit_entries = r.audit.pruned,
                    "retention run"
                ),
                Ok(Err(e)) => error!(error = %e, "retention run failed"),
                Err(e) => error!(error = %e, "retention task panicked"),
            }
        }
    })
}

/// Serves `/metrics` and `/healthz` on `listener` until `stopped`; the queue and cache gauges
/// are read from the store at each scrape.
pub(super) fn serve_metrics(
    listener: tokio::net::TcpListener,
    cfg: &Config,
    store: &Arc<Store>,
    queues: &Arc<Queues>,
    metrics: &Arc<Metrics>,
    stopped: impl std::future::Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    let (store, queues, m) = (store.clone(), queues.clone(), metrics.clone());
    let refresh: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
        let (inbox, outbox) = queues.depths(&store);
        m.inbox_depth.set(inbox as i64);
        m.outbox_depth.set(outbox as i64);
        m.store_cache_bytes
            .set(i64::try_from(store.cache_bytes()).unwrap_or(i64::MAX));
    });
    tokio::spawn(crate::metrics::serve(
        listener,
        metrics.clone(),
        cfg.service.watchdog_stall_secs as i64,
        refresh,
        stopped,
    ))
}

/// Pings systemd's watchdog every `every` while the store answers and the pipeline turns over;
/// the tunnel and long model calls play no part in this.
pub(super) fn watchdog(
    every: Duration,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    stall_secs: u64,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let s = store.clone();
            let store_ok = tokio::task::spawn_blocking(move || s.persist().is_ok())
                .await
                .unwrap_or(false);
            if store_ok && metrics.heartbeat_age() <= stall_secs as i64 {
                notify(&[("WATCHDOG", "1")]);
            } else {
                warn!("watchdog: pipeline not healthy, withholding ping");
            }
        }
    })
}

/// The reminder scheduler ([`crate::reminders::worker`]): reminders before booked trials and
/// follow-ups after them, from the store's schedule into the outbox.
pub(super) fn reminders(
    core: &super::Core,
    opts: &super::ServeOptions,
    engine: Option<Arc<crate::conversation::engine::Engine>>,
    outbox_wake: Arc<tokio::sync::Notify>,
    stopped: impl std::future::Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    let clock = opts
        .clock
        .clone()
        .unwrap_or_else(|| Arc::new(jiff::Timestamp::now));
    let mut scheduler = crate::reminders::worker::Scheduler::new(
        core.store.clone(),
        core.queues.clone(),
        Some(core.audit.clone()),
        core.cfg.reminders.clone(),
        &core.cfg.whatsapp.template_language,
        clock,
        outbox_wake,
    );
    if let Some(tick) = opts.reminder_tick {
        scheduler.set_max_wait(tick);
    }
    if let Some(engine) = engine {
        scheduler.set_follow_up_texts(Arc::new(move || engine.prompts()));
    }
    tokio::spawn(Arc::new(scheduler).run(stopped))
}
