//! The service life cycle of `frontdesk serve`: start-up order, sd_notify (READY, STATUS,
//! STOPPING, WATCHDOG), the retention timer, signal handling (SIGTERM/SIGINT stop, SIGHUP
//! reload) and graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::secrets::{names, Credentials};
use crate::store::crypto::StoreIdentity;
use crate::store::Store;

/// How often the retention sweeper runs after the start-up run.
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(3600);

/// Sends a notification to systemd when running under it; a no-op elsewhere.
pub fn notify(state: &[(&str, &str)]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = systemd::daemon::notify(state.iter()) {
        warn!(error = %e, "sd_notify failed");
    }
}

fn status(text: &str) {
    info!(status = text, "service status");
    notify(&[("STATUS", text)]);
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`), halved as systemd recommends.
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    Some(Duration::from_micros(usec / 2))
}

/// Opens the store with the identity credential.
pub fn open_store(cfg: &Config, creds: &Credentials) -> anyhow::Result<Store> {
    let identity = creds.require(names::STORE_IDENTITY)?;
    let identity = StoreIdentity::parse(identity.expose_str()?)
        .context("credential store-identity is not an age identity")?;
    Ok(Store::open(&cfg.store_dir(), identity)?)
}

/// Runs the daemon until SIGTERM/SIGINT.
pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    let creds = Credentials::discover(cfg.service.credentials_dir.as_deref());
    status("opening store");
    let store = match creds.get(names::STORE_IDENTITY) {
        Ok(Some(_)) => Arc::new(
            tokio::task::spawn_blocking({
                let cfg = cfg.clone();
                let creds = creds.clone();
                move || open_store(&cfg, &creds)
            })
            .await??,
        ),
        Ok(None) | Err(_) => {
            // Without its identity the store cannot be opened; restarting would not help.
            // Report it and wait instead of crash-looping.
            return wait_unconfigured("store-identity credential missing").await;
        }
    };
    info!(
        path = %store.path().display(),
        customers = store.customer_count(),
        "store open"
    );

    let retention = cfg.retention;
    let sweeper = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RETENTION_INTERVAL);
            loop {
                tick.tick().await;
                let store = store.clone();
                let res = tokio::task::spawn_blocking(move || {
                    store.sweep(&retention, jiff::Timestamp::now(), false)
                })
                .await;
                match res {
                    Ok(Ok(r)) => info!(
                        messages = r.messages_deleted,
                        customers = r.customers_forgotten,
                        seen_ids = r.seen_ids_deleted,
                        "retention run"
                    ),
                    Ok(Err(e)) => error!(error = %e, "retention run failed"),
                    Err(e) => error!(error = %e, "retention task panicked"),
                }
            }
        })
    };

    let watchdog = watchdog_interval().map(|every| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                // Prove the store answers before telling systemd we are alive.
                let store = store.clone();
                let alive = tokio::task::spawn_blocking(move || store.customer_meta(&crate::store::crypto::Pseudonym([0; 16])).is_ok())
                    .await
                    .unwrap_or(false);
                if alive {
                    notify(&[("WATCHDOG", "1")]);
                } else {
                    warn!("watchdog: store not answering, withholding ping");
                }
            }
        })
    });

    notify(&[("READY", "1"), ("STATUS", "running")]);
    info!(
        version = env!("CARGO_PKG_VERSION"),
        FRONTDESK_EVENT = "service.started",
        "frontdesk started"
    );

    wait_for_stop().await;
    notify(&[("STOPPING", "1"), ("STATUS", "stopping")]);
    sweeper.abort();
    if let Some(w) = watchdog {
        w.abort();
    }
    let store_for_close = store.clone();
    tokio::task::spawn_blocking(move || store_for_close.persist()).await??;
    info!("frontdesk stopped");
    Ok(())
}

async fn wait_for_stop() {
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => {
                notify(&[("RELOADING", "1")]);
                info!("reload requested");
                notify(&[("READY", "1")]);
            }
        }
    }
}

async fn wait_unconfigured(what: &str) -> anyhow::Result<()> {
    let text = format!("not configured: {what} (see `frontdesk doctor`)");
    error!("{text}");
    notify(&[("READY", "1"), ("STATUS", &text)]);
    wait_for_stop().await;
    notify(&[("STOPPING", "1")]);
    Ok(())
}
