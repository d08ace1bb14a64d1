//! The service life cycle of `frontdesk serve`: start-up order (store, metrics, WhatsApp
//! channel), sd_notify (READY, STATUS, STOPPING, WATCHDOG), the retention timer, signal
//! handling (SIGTERM/SIGINT stop, SIGHUP reload) and graceful shutdown (stop accepting, finish
//! the turns in progress, let the sender record what it sent, flush the store).

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
use crate::tunnel::{run_tunnel, TunnelClientConfig, TunnelState, TunnelToken};
use crate::whatsapp::dispatch::{DispatchConfig, Dispatcher, FixedResponder, Responder};
use crate::whatsapp::graph::GraphClient;
use crate::whatsapp::queue::Queues;
use crate::whatsapp::sender::{Sender, SenderConfig};
use crate::whatsapp::webhook::{self, RejectionSink, WebhookState};

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

/// Choices that tests, benchmarks and the demo make differently from a production start.
#[derive(Default, Clone)]
pub struct ServeOptions {
    /// Answer every message with this text instead of running the conversation engine (load
    /// tests and benchmarks only).
    pub fixed_reply: Option<String>,
    /// Shorter sender backoff (tests).
    pub sender_backoff: Option<Duration>,
    /// Notified once the daemon is ready (when READY=1 goes to systemd).
    pub ready: Option<Arc<tokio::sync::Notify>>,
}

/// Runs the daemon until SIGTERM/SIGINT.
pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    serve_with(cfg, ServeOptions::default()).await
}

/// [`serve`] with options; stops on SIGTERM/SIGINT, reloads on SIGHUP.
pub async fn serve_with(cfg: Config, opts: ServeOptions) -> anyhow::Result<()> {
    serve_until(cfg, opts, wait_for_stop()).await
}

/// [`serve`] with options, until `shutdown` resolves (the demo runs the daemon in-process).
pub async fn serve_until(
    cfg: Config,
    opts: ServeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
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
    append_audit(
        &audit,
        NewEntry::new(Actor::System, AuditEvent::ConfigLoaded),
    )
    .await;
    append_audit(
        &audit,
        NewEntry::new(
            Actor::System,
            AuditEvent::ServiceStarted {
                version: Code::new(env!("CARGO_PKG_VERSION")),
            },
        ),
    )
    .await;

    // The admin API on the unix socket.
    let admin_state = Arc::new(AdminState::new(
        store.clone(),
        audit.clone(),
        Arc::new(cfg.clone()),
    ));
    let admin = match bind_admin_socket(&cfg.service.admin_socket, &cfg.service.admin_group) {
        Ok(listener) => Some(tokio::spawn(serve_admin(
            listener,
            admin_state.clone(),
            stopped(),
        ))),
        Err(e) => {
            error!(socket = %cfg.service.admin_socket.display(), error = %e, "cannot bind the admin socket; admin verbs are unavailable");
            None
        }
    };

    // Retention at start, then hourly.
    let retention = cfg.retention;
    let sweeper = {
        let store = store.clone();
        let audit = audit.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RETENTION_INTERVAL);
            loop {
                tick.tick().await;
                let store = store.clone();
                let audit = audit.clone();
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
    };

    // Metrics and health, loopback only.
    let metrics_listener = tokio::net::TcpListener::bind(cfg.metrics.listen)
        .await
        .with_context(|| format!("cannot listen on metrics.listen {}", cfg.metrics.listen))?;
    let metrics_task = {
        let store = store.clone();
        let queues = queues.clone();
        let m = metrics.clone();
        let refresh: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            let (inbox, outbox) = queues.depths(&store);
            m.inbox_depth.set(inbox as i64);
            m.outbox_depth.set(outbox as i64);
        });
        tokio::spawn(crate::metrics::serve(
            metrics_listener,
            metrics.clone(),
            cfg.service.watchdog_stall_secs as i64,
            refresh,
            stopped(),
        ))
    };

    // The WhatsApp channel, when its credentials are there.
    let stop_rx_channel = stop_tx.subscribe();
    let (tunnel_state, tunnel_rx) = tokio::sync::watch::channel(TunnelState::Disabled);
    {
        let rx = tunnel_rx.clone();
        admin_state.board.set_source("tunnel", move || {
            serde_json::Value::String(rx.borrow().to_string())
        });
        let (s, q) = (store.clone(), queues.clone());
        admin_state.board.set_source("queues", move || {
            let (inbox, outbox) = q.depths(&s);
            serde_json::json!({ "inbox": inbox, "outbox": outbox })
        });
    }
    let core = Core {
        cfg: cfg.clone(),
        creds: creds.clone(),
        store: store.clone(),
        queues: queues.clone(),
        metrics: metrics.clone(),
        audit: audit.clone(),
        admin: admin_state.clone(),
    };
    let channel = match channel_credentials(&creds, &cfg) {
        Ok(c) => Some(
            start_channel(
                &core,
                &opts,
                c,
                stop_rx_channel.clone(),
                tunnel_state.clone(),
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
    // Registered before READY, so a reload right after start is never the default SIGHUP action.
    let hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let reloader = tokio::spawn(reload_on_sighup(
        hup,
        Arc::new(core),
        channel.as_ref().and_then(|c| c.engine.clone()),
    ));

    let watchdog = watchdog_interval().map(|every| {
        let store = store.clone();
        let metrics = metrics.clone();
        let stall = cfg.service.watchdog_stall_secs as i64;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                // Prove the store answers and the pipeline turns over before telling systemd
                // we are alive; the tunnel and long model calls play no part in this.
                let s = store.clone();
                let store_ok = tokio::task::spawn_blocking(move || s.persist().is_ok())
                    .await
                    .unwrap_or(false);
                if store_ok && metrics.heartbeat_age() <= stall {
                    notify(&[("WATCHDOG", "1")]);
                } else {
                    warn!("watchdog: pipeline not healthy, withholding ping");
                }
            }
        })
    });

    let running = if channel.is_some() {
        "running"
    } else {
        "running (WhatsApp not configured)"
    };
    notify(&[("READY", "1"), ("STATUS", running)]);
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
    if let Some(a) = admin {
        let _ = a.await;
    }
    append_audit(
        &audit,
        NewEntry::new(Actor::System, AuditEvent::ServiceStopped),
    )
    .await;
    let store_for_close = store.clone();
    tokio::task::spawn_blocking(move || store_for_close.flush()).await??;
    drop(store);
    info!("frontdesk stopped");
    Ok(())
}

struct ChannelCredentials {
    app_secret: crate::secrets::Secret,
    verify_token: crate::secrets::Secret,
    token: crate::secrets::Secret,
    tunnel_token: Option<crate::secrets::Secret>,
}

fn channel_credentials(creds: &Credentials, cfg: &Config) -> Result<ChannelCredentials, String> {
    let get = |name: &str| match creds.get(name) {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err(format!("credential {name} missing")),
        Err(e) => Err(e.to_string()),
    };
    if cfg.whatsapp.phone_number_id.is_empty() {
        return Err("whatsapp.phone_number_id not set".into());
    }
    let tunnel_token = match &cfg.tunnel {
        Some(t) => Some(get(&t.credential)?),
        None => None,
    };
    Ok(ChannelCredentials {
        app_secret: get(names::WHATSAPP_APP_SECRET)?,
        verify_token: get(names::WHATSAPP_VERIFY_TOKEN)?,
        token: get(names::WHATSAPP_TOKEN)?,
        tunnel_token,
    })
}

/// The running WhatsApp pipeline.
struct Channel {
    listener_task: tokio::task::JoinHandle<()>,
    sender_task: tokio::task::JoinHandle<()>,
    tunnel_task: Option<tokio::task::JoinHandle<()>>,
    dispatcher: Arc<Dispatcher>,
    engine: Option<Arc<crate::conversation::engine::Engine>>,
}

impl Channel {
    /// Stops taking requests, lets the dispatcher finish what it started, then the sender.
    async fn stop(self) {
        if let Some(t) = self.tunnel_task {
            // GOAWAY to the relay; requests in flight finish.
            let _ = t.await;
        }
        let _ = self.listener_task.await;
        let _ = tokio::time::timeout(Duration::from_secs(20), self.dispatcher.wait_idle()).await;
        let _ = self.sender_task.await;
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

async fn start_channel(
    core: &Core,
    opts: &ServeOptions,
    creds: ChannelCredentials,
    stop: tokio::sync::watch::Receiver<bool>,
    tunnel_state: tokio::sync::watch::Sender<TunnelState>,
) -> anyhow::Result<Channel> {
    let (cfg, store, queues, metrics) = (
        &core.cfg,
        core.store.clone(),
        core.queues.clone(),
        core.metrics.clone(),
    );
    let graph = GraphClient::new(
        &cfg.whatsapp.graph_base,
        &cfg.whatsapp.api_version,
        &cfg.whatsapp.phone_number_id,
        creds.token.expose_str()?.to_string(),
        Duration::from_secs(cfg.whatsapp.send_timeout_secs),
    );
    let mut engine = None;
    let responder: Arc<dyn Responder> = match &opts.fixed_reply {
        Some(text) => Arc::new(FixedResponder {
            store: store.clone(),
            reply: text.clone(),
        }),
        None => {
            let conv =
                crate::runtime::responder(cfg, &core.creds, store.clone(), core.audit.clone())?;
            core.admin
                .board
                .set_value("model", serde_json::Value::String(conv.model.describe()));
            engine = Some(conv.engine);
            conv.responder
        }
    };
    let wake = Arc::new(tokio::sync::Notify::new());
    core.admin.set_outbox(queues.clone(), wake.clone());
    let dispatcher = Dispatcher::new(
        store.clone(),
        queues.clone(),
        responder,
        Some(graph.clone()),
        DispatchConfig {
            burst_window: Duration::from_millis(cfg.conversation.burst_window_ms),
            max_concurrent: cfg.whatsapp.max_concurrent_conversations,
            non_text_reply: cfg.studio.non_text_reply.clone(),
        },
        metrics.clone(),
        wake.clone(),
    );
    let recovered = {
        let d = dispatcher.clone();
        tokio::task::spawn_blocking(move || d.recover()).await??
    };
    if recovered > 0 {
        info!(
            entries = recovered,
            "resuming inbox entries acknowledged before the last stop"
        );
    }
    let mut sender_cfg = SenderConfig {
        reopen_template: cfg.whatsapp.reopen_template.clone(),
        template_language: cfg.whatsapp.template_language.clone(),
        max_concurrent: cfg.whatsapp.max_concurrent_conversations,
        ..SenderConfig::default()
    };
    if let Some(b) = opts.sender_backoff {
        sender_cfg.backoff_base = b;
    }
    let sender = Sender::new(
        store.clone(),
        queues.clone(),
        graph,
        sender_cfg,
        metrics.clone(),
        wake,
    );
    let sender_task = tokio::spawn(sender.run(until_stopped(stop.clone())));

    let state = WebhookState::new(
        store,
        queues,
        dispatcher.clone(),
        creds.app_secret,
        creds.verify_token,
        cfg.webhook.max_body_bytes,
        metrics,
        Arc::new(AuditRejections(core.audit.clone())),
        cfg.webhook.audit_rejections_per_minute,
    );
    let listener = tokio::net::TcpListener::bind(cfg.webhook.listen)
        .await
        .with_context(|| format!("cannot listen on webhook.listen {}", cfg.webhook.listen))?;
    info!(addr = %cfg.webhook.listen, "webhook listening");
    let tunnel_task = match &cfg.tunnel {
        Some(t) => Some(start_tunnel(
            t,
            creds.tunnel_token,
            state.clone(),
            tunnel_state,
            until_stopped(stop.clone()),
        )?),
        None => {
            tunnel_state.send_replace(TunnelState::Disabled);
            None
        }
    };
    let listener_task = tokio::spawn(serve_webhook(listener, state, until_stopped(stop)));
    Ok(Channel {
        listener_task,
        sender_task,
        tunnel_task,
        dispatcher,
        engine,
    })
}

/// Dials out to the relay and serves the webhook (and nothing else) over the tunnel.
fn start_tunnel(
    t: &crate::config::TunnelConfig,
    token: Option<crate::secrets::Secret>,
    state: Arc<WebhookState>,
    tunnel_state: tokio::sync::watch::Sender<TunnelState>,
    stopped: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let token = token.context("tunnel credential missing")?;
    let token = TunnelToken::new(token.expose_str()?)
        .map_err(|e| anyhow::anyhow!("tunnel credential {}: {e}", t.credential))?;
    let svc = hyper::service::service_fn(move |req| webhook::handle(state.clone(), req));
    let cfg = TunnelClientConfig::from_config(t);
    Ok(tokio::spawn(async move {
        if let Err(e) = run_tunnel(cfg, token, svc, tunnel_state, stopped).await {
            error!(error = %e, "tunnel stopped");
        }
    }))
}

/// Rejected webhook requests into the audit log (off the async threads: an append fsyncs).
struct AuditRejections(Arc<AuditLog>);

impl RejectionSink for AuditRejections {
    fn rejected(&self, status: u16, reason: &'static str) {
        warn!(status, reason, "webhook request rejected");
        let audit = self.0.clone();
        let code = Code::new(reason);
        tokio::task::spawn_blocking(move || {
            let entry = NewEntry::new(Actor::Relay, AuditEvent::WebhookRejected { reason: code })
                .outcome(crate::audit::Outcome::Denied(code));
            if let Err(e) = audit.append(entry) {
                error!(error = %e, "audit append failed");
            }
        });
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

/// Accepts webhook connections (HTTP/1.1) until `stopped` resolves.
async fn serve_webhook(
    listener: tokio::net::TcpListener,
    state: Arc<WebhookState>,
    stopped: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stopped);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => { warn!(error = %e, "accept failed"); continue }
            },
            _ = &mut stopped => break,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let svc = hyper::service::service_fn(move |req| webhook::handle(state.clone(), req));
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
}

async fn wait_for_stop() {
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Reloads configuration and prompts on SIGHUP (`systemctl reload`): the new files are
/// validated first; on any error the running configuration stays and the error is reported.
/// Prompts, studio facts and admin settings take effect at once; listener addresses, model and
/// credentials need a restart.
async fn reload_on_sighup(
    mut hup: tokio::signal::unix::Signal,
    core: Arc<Core>,
    engine: Option<Arc<crate::conversation::engine::Engine>>,
) {
    while hup.recv().await.is_some() {
        notify(&[("RELOADING", "1")]);
        let (c, e) = (core.clone(), engine.clone());
        let result = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let cfg = Config::load(&c.cfg.source)?;
            let prompts = crate::conversation::prompts::Prompts::load(&cfg.service, &cfg.studio)?;
            if let Some(engine) = &e {
                engine.reload(Arc::new(prompts), cfg.studio.clone());
            }
            c.admin.set_config(Arc::new(cfg));
            Ok(())
        })
        .await
        .unwrap_or_else(|e| Err(anyhow::anyhow!("reload task failed: {e}")));
        let ok = result.is_ok();
        match &result {
            Ok(()) => info!(
                FRONTDESK_EVENT = "config.reloaded",
                "configuration and prompts reloaded"
            ),
            Err(e) => error!(error = %e, "reload failed; keeping the running configuration"),
        }
        append_audit(
            &core.audit,
            NewEntry::new(Actor::System, AuditEvent::ConfigReloaded { ok }),
        )
        .await;
        let status = if ok {
            "running (reloaded)".to_string()
        } else {
            "running (reload failed, see journal)".to_string()
        };
        notify(&[("READY", "1"), ("STATUS", &status)]);
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
