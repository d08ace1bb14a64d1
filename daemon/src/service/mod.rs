//! The service life cycle of `frontdesk serve`: [`run`] reads in start-up order (store, audit
//! log, admin socket, retention, metrics, WhatsApp channel, reload, watchdog), sd_notify (READY,
//! STATUS, STOPPING, WATCHDOG), signals (SIGTERM/SIGINT stop, SIGHUP reload) and the graceful
//! stop (stop accepting, finish the turns in progress, let the sender record what it sent, flush
//! the store). The channel (`channel`), the timers (`timers`) and the reload (`reload`) have
//! modules of their own.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::admin::{bind_admin_socket, serve_admin, AdminState};
use crate::audit::{Actor, AuditEvent, AuditLog, Code, NewEntry};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::secrets::{names, Credentials};
use crate::store::crypto::StoreIdentity;
use crate::store::Store;
use crate::tunnel::TunnelState;
use crate::turn::Decide;
use crate::whatsapp::queue::Queues;

mod channel;
mod reload;
mod timers;

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
    let mut store = Store::open(&cfg.store_dir(), identity)?;
    store.keep_ledger_at(&cfg.ledger_file())?;
    Ok(store)
}

/// Builds a replacement for the conversation engine from the open store.
pub type EngineFactory = Arc<dyn Fn(Arc<Store>) -> Arc<dyn Decide> + Send + Sync>;

/// Choices that tests, benchmarks and the demo make differently from a production start.
#[derive(Default, Clone)]
pub struct ServeOptions {
    /// Decides turns instead of the conversation engine (load tests and benchmarks replace the
    /// model with an instant answer); built once the store is open.
    pub engine: Option<EngineFactory>,
    /// Shorter sender backoff (tests).
    pub sender_backoff: Option<Duration>,
    /// Notified once the daemon is ready (when READY=1 goes to systemd).
    pub ready: Option<Arc<tokio::sync::Notify>>,
    /// The time the reminder scheduler reads (tests move it); `None`: the system clock.
    pub clock: Option<crate::reminders::Clock>,
    /// Longest wait between two ticks of the reminder scheduler (tests shorten it, as their
    /// clock jumps); `None`: [`crate::reminders::worker::MAX_WAIT`].
    pub reminder_tick: Option<Duration>,
}

/// The sockets the daemon serves on, bound by the caller: `serve` binds the configured
/// addresses; tests and the demo bind port 0 and read the address back, with no window in which
/// another process could take the port.
pub struct Listeners {
    /// The webhook (plain HTTP/1.1, behind the tunnel or a local reverse proxy).
    pub webhook: tokio::net::TcpListener,
    /// `/metrics` and `/healthz`, loopback.
    pub metrics: tokio::net::TcpListener,
    /// The staff console (`[console]`), when enabled.
    pub console: Option<tokio::net::TcpListener>,
}

impl Listeners {
    /// Binds `webhook.listen`, `metrics.listen` and `console.listen` from the configuration.
    pub async fn bind(cfg: &Config) -> anyhow::Result<Listeners> {
        let webhook = tokio::net::TcpListener::bind(cfg.webhook.listen)
            .await
            .with_context(|| format!("cannot listen on webhook.listen {}", cfg.webhook.listen))?;
        let metrics = tokio::net::TcpListener::bind(cfg.metrics.listen)
            .await
            .with_context(|| format!("cannot listen on metrics.listen {}", cfg.metrics.listen))?;
        let console = if cfg.console.enabled {
            Some(
                tokio::net::TcpListener::bind(cfg.console.listen)
                    .await
                    .with_context(|| {
                        format!("cannot listen on console.listen {}", cfg.console.listen)
                    })?,
            )
        } else {
            None
        };
        Ok(Listeners {
            webhook,
            metrics,
            console,
        })
    }
}

/// Runs the daemon until SIGTERM/SIGINT.
pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    serve_with(cfg, ServeOptions::default()).await
}

/// [`serve`] with options: binds the configured listeners, stops on SIGTERM/SIGINT, reloads on
/// SIGHUP.
pub async fn serve_with(cfg: Config, opts: ServeOptions) -> anyhow::Result<()> {
    let listeners = Listeners::bind(&cfg).await?;
    run(cfg, listeners, opts, wait_for_stop()).await
}

/// The daemon, in start-up order, until `shutdown` resolves: store, audit log, admin socket,
/// retention timer, metrics, the WhatsApp channel, reload handler and watchdog; READY; then the
/// graceful stop in reverse.
#[expect(
    clippy::too_many_lines,
    reason = "the daemon's start-up order is the point of this function: read top to bottom it is the life cycle"
)]
pub async fn run(
    cfg: Config,
    listeners: Listeners,
    opts: ServeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let webhook_addr = listeners.webhook.local_addr()?.to_string();
    let metrics_addr = listeners.metrics.local_addr()?.to_string();
    let console_addr = match &listeners.console {
        Some(l) => l.local_addr()?.to_string(),
        None => String::new(),
    };
    let creds = Credentials::discover(cfg.service.credentials_dir.as_deref());
    status("opening store");
    let Some(store) = open_store_blocking(&cfg, &creds).await? else {
        // Without its identity the store cannot be opened; restarting would not help.
        return wait_unconfigured("store-identity credential missing").await;
    };
    info!(path = %store.path().display(), customers = store.customer_count(), "store open");
    let metrics = Arc::new(Metrics::new());
    let queues = Arc::new(Queues::new(&store)?);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || until_stopped(stop_rx.clone());

    let audit = Arc::new(
        tokio::task::spawn_blocking({
            let store = store.clone();
            move || AuditLog::open(store)
        })
        .await??,
    );
    // Unreadable queue rows found from now on are counted and audited.
    queues.report_to(metrics.clone(), Some(audit.clone()));
    append_audit(
        &audit,
        NewEntry::new(Actor::System, AuditEvent::ConfigLoaded),
    )
    .await;
    let version = Code::new(env!("CARGO_PKG_VERSION"));
    append_audit(
        &audit,
        NewEntry::new(Actor::System, AuditEvent::ServiceStarted { version }),
    )
    .await;

    let admin_state = Arc::new(AdminState::new(
        store.clone(),
        audit.clone(),
        Arc::new(cfg.clone()),
    ));
    let admin = start_admin(&cfg, admin_state.clone(), stopped());
    let sweeper = timers::retention(store.clone(), audit.clone(), cfg.retention);
    let metrics_task = timers::serve_metrics(
        listeners.metrics,
        &cfg,
        &store,
        &queues,
        &metrics,
        stopped(),
    );

    let (tunnel_state, tunnel_rx) = tokio::sync::watch::channel(TunnelState::Disabled);
    admin_state.board.set_source("tunnel", move || {
        serde_json::Value::String(tunnel_rx.borrow().to_string())
    });
    let (s, q) = (store.clone(), queues.clone());
    admin_state.board.set_source("queues", move || {
        let (inbox, outbox) = q.depths(&s);
        serde_json::json!({ "inbox": inbox, "outbox": outbox })
    });
    let s = store.clone();
    admin_state.board.set_source("quarantined", move || {
        let text = match s.quarantined() {
            Ok(counts) if counts.is_empty() => "none".to_string(),
            Ok(counts) => counts
                .iter()
                .map(|(queue, n)| format!("{queue} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            Err(e) => format!("unknown ({e})"),
        };
        serde_json::Value::String(text)
    });
    let core = Arc::new(Core {
        cfg: cfg.clone(),
        creds: creds.clone(),
        store: store.clone(),
        queues,
        metrics: metrics.clone(),
        audit: audit.clone(),
        admin: admin_state,
    });
    let channel = match channel::credentials(&creds, &cfg) {
        Ok(c) => Some(
            channel::start(
                &core,
                &opts,
                listeners.webhook,
                c,
                stop_tx.subscribe(),
                tunnel_state,
            )
            .await?,
        ),
        Err(missing) => {
            status(&format!(
                "not configured: {missing} (see `frontdesk doctor`)"
            ));
            None
        }
    };
    let console = match listeners.console {
        Some(listener) => Some(crate::console::start(
            &cfg,
            listener,
            core.admin.clone(),
            stopped(),
        )?),
        None => None,
    };
    // Registered before READY, so a reload right after start is never the default SIGHUP action.
    let hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let engine = channel.as_ref().and_then(|c| c.engine.clone());
    let sender = channel.as_ref().map(|c| c.sender.clone());
    let reloader = tokio::spawn(reload::reload_on_sighup(hup, core.clone(), engine, sender));
    let watchdog = watchdog_interval().map(|every| {
        timers::watchdog(
            every,
            store.clone(),
            metrics,
            cfg.service.watchdog_stall_secs,
        )
    });

    let running = if channel.is_some() {
        "running"
    } else {
        "running (WhatsApp not configured)"
    };
    // The bound addresses too (systemd ignores variables it does not know): a supervisor that
    // configured port 0 learns the ports without racing for them.
    notify(&[
        ("READY", "1"),
        ("STATUS", running),
        ("X_FRONTDESK_WEBHOOK", &webhook_addr),
        ("X_FRONTDESK_METRICS", &metrics_addr),
        ("X_FRONTDESK_CONSOLE", &console_addr),
    ]);
    if let Some(r) = &opts.ready {
        r.notify_one();
    }
    info!(
        version = env!("CARGO_PKG_VERSION"),
        FRONTDESK_EVENT = "service.started",
        "frontdesk started"
    );

    shutdown.await;
    reloader.abort();
    notify(&[("STOPPING", "1"), ("STATUS", "stopping")]);
    let _ = stop_tx.send(true);
    sweeper.abort();
    if let Some(w) = watchdog {
        w.abort();
    }
    if let Some(ch) = channel {
        ch.stop().await;
    }
    let _ = metrics_task.await;
    if let Some(c) = console {
        let _ = c.await;
    }
    if let Some(a) = admin {
        let _ = a.await;
    }
    append_audit(
        &audit,
        NewEntry::new(Actor::System, AuditEvent::ServiceStopped),
    )
    .await;
    drop(core);
    tokio::task::spawn_blocking(move || store.flush()).await??;
    info!("frontdesk stopped");
    Ok(())
}

/// Opens the store off the async threads; `None` when the identity credential is missing.
async fn open_store_blocking(
    cfg: &Config,
    creds: &Credentials,
) -> anyhow::Result<Option<Arc<Store>>> {
    match creds.get(names::STORE_IDENTITY) {
        Ok(Some(_)) => {}
        Ok(None) | Err(_) => return Ok(None),
    }
    let (cfg, creds) = (cfg.clone(), creds.clone());
    let store = tokio::task::spawn_blocking(move || open_store(&cfg, &creds)).await??;
    Ok(Some(Arc::new(store)))
}

/// The admin API on its unix socket; a socket that cannot be bound is reported, not fatal (the
/// service still answers customers).
fn start_admin(
    cfg: &Config,
    state: Arc<AdminState>,
    stopped: impl std::future::Future<Output = ()> + Send + 'static,
) -> Option<tokio::task::JoinHandle<()>> {
    match bind_admin_socket(&cfg.service.admin_socket, &cfg.service.admin_group) {
        Ok(listener) => Some(tokio::spawn(serve_admin(listener, state, stopped))),
        Err(e) => {
            error!(socket = %cfg.service.admin_socket.display(), error = %e, "cannot bind the admin socket; admin verbs are unavailable");
            None
        }
    }
}

/// Appends an audit entry from async code; a failure is logged (the service keeps running).
pub async fn append_audit(audit: &Arc<AuditLog>, entry: NewEntry) {
    let audit = audit.clone();
    match tokio::task::spawn_blocking(move || audit.append(entry)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => error!(error = %e, "audit append failed"),
        Err(e) => error!(error = %e, "audit task panicked"),
    }
}

/// Resolves once the stop flag is set.
async fn until_stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn wait_for_stop() {
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// What every part of the running daemon shares.
struct Core {
    cfg: Config,
    creds: Credentials,
    store: Arc<Store>,
    queues: Arc<Queues>,
    metrics: Arc<Metrics>,
    audit: Arc<AuditLog>,
    admin: Arc<AdminState>,
}

async fn wait_unconfigured(what: &str) -> anyhow::Result<()> {
    let text = format!("not configured: {what} (see `frontdesk doctor`)");
    error!("{text}");
    notify(&[("READY", "1"), ("STATUS", &text)]);
    wait_for_stop().await;
    notify(&[("STOPPING", "1")]);
    Ok(())
}
