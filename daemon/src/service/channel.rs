//! The WhatsApp channel of the running daemon: the engine (or its replacement), dispatcher,
//! sender, webhook listener and tunnel, started together when the channel's credentials are
//! there and stopped in order (stop taking requests, finish the turns, let the sender record
//! what it sent). MagicLine's webhook (`/webhook/magicline`) shares the listener and the
//! tunnel, and its event worker runs beside the sender when booking is configured.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tracing::{error, info, warn};

use super::{until_stopped, Core, ServeOptions};
use crate::audit::{Actor, AuditEvent, AuditLog, Code, NewEntry};
use crate::config::Config;
use crate::secrets::{names, Credentials};
use crate::tunnel::{run_tunnel, TunnelClientConfig, TunnelState, TunnelToken};
use crate::turn::Decide;
use crate::whatsapp::dispatch::{DispatchConfig, Dispatcher};
use crate::whatsapp::graph::GraphClient;
use crate::whatsapp::sender::{Sender, SenderConfig};
use crate::whatsapp::templates::TemplateCategories;
use crate::whatsapp::webhook::{self, RejectionSink, WebhookState};

pub(super) struct ChannelCredentials {
    app_secret: crate::secrets::Secret,
    verify_token: crate::secrets::Secret,
    token: crate::secrets::Secret,
    tunnel_token: Option<crate::secrets::Secret>,
}

pub(super) fn credentials(creds: &Credentials, cfg: &Config) -> Result<ChannelCredentials, String> {
    let get = |name: &str| match creds.get(name) {
        Ok(Some(s)) => s.trimmed().map_err(|e| format!("credential {name}: {e}")),
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
pub(super) struct Channel {
    listener_task: tokio::task::JoinHandle<()>,
    magicline_task: Option<tokio::task::JoinHandle<()>>,
    sender_task: tokio::task::JoinHandle<()>,
    alerts_task: tokio::task::JoinHandle<()>,
    reminders_task: tokio::task::JoinHandle<()>,
    tunnel_task: Option<tokio::task::JoinHandle<()>>,
    dispatcher: Arc<Dispatcher>,
    pub(super) engine: Option<Arc<crate::conversation::engine::Engine>>,
    /// Resumed on reload after a rejected access token.
    pub(super) sender: Arc<Sender>,
}

impl Channel {
    /// Stops taking requests, lets the dispatcher finish what it started, then the sender.
    pub(super) async fn stop(self) {
        if let Some(t) = self.tunnel_task {
            // GOAWAY to the relay; requests in flight finish.
            let _ = t.await;
        }
        let _ = self.listener_task.await;
        // A failed turn waiting for its next try is left in the inbox for the next start.
        self.dispatcher.stop_retries();
        let _ = tokio::time::timeout(Duration::from_secs(20), self.dispatcher.wait_idle()).await;
        let _ = self.sender_task.await;
        let _ = self.alerts_task.await;
        if let Some(t) = self.magicline_task {
            let _ = t.await;
        }
        let _ = self.reminders_task.await;
    }
}

/// The webhook listener's routes: WhatsApp's `/webhook`, and MagicLine's
/// [`crate::magicline::webhook::PATH`] when its webhook is on.
#[derive(Clone)]
struct Routes {
    whatsapp: Arc<WebhookState>,
    magicline: Option<Arc<crate::magicline::webhook::MagicLineWebhook>>,
}

async fn route<B>(
    routes: Routes,
    req: hyper::Request<B>,
) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, std::convert::Infallible>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match &routes.magicline {
        Some(ml) if req.uri().path() == crate::magicline::webhook::PATH => {
            crate::magicline::webhook::handle(ml.clone(), req).await
        }
        _ => webhook::handle(routes.whatsapp, req).await,
    }
}

/// MagicLine's webhook and its event worker, when booking is configured: the booker is the
/// engine's (or, with a stand-in engine, one of its own).
fn start_magicline(
    core: &Core,
    booker: Option<Arc<crate::magicline::booking::MagicLineBooker>>,
    stopped: impl std::future::Future<Output = ()> + Send + 'static,
) -> (
    Option<Arc<crate::magicline::webhook::MagicLineWebhook>>,
    Option<tokio::task::JoinHandle<()>>,
) {
    use crate::config::MagicLineEvents;
    let Some(booker) = booker else {
        return (None, None);
    };
    let cfg = &core.cfg;
    let wake = Arc::new(tokio::sync::Notify::new());
    let hook = match cfg.magicline.events {
        MagicLineEvents::Poll => None,
        MagicLineEvents::Webhook => match core.creds.get(names::MAGICLINE_WEBHOOK_KEY) {
            Ok(Some(key)) => match key.trimmed() {
                Ok(key) => {
                    let audit = core.audit.clone();
                    let rejected = Arc::new(move |_status: u16, reason: &'static str| {
                        let audit = audit.clone();
                        let code = Code::new(reason);
                        tokio::task::spawn_blocking(move || {
                            let entry = NewEntry::new(
                                Actor::Relay,
                                AuditEvent::MagiclineWebhookRejected { reason: code },
                            )
                            .outcome(crate::audit::Outcome::Denied(code));
                            if let Err(e) = audit.append(entry) {
                                error!(error = %e, "audit append failed");
                            }
                        });
                    });
                    Some(crate::magicline::webhook::MagicLineWebhook::new(
                        core.store.clone(),
                        key,
                        cfg.webhook.max_body_bytes,
                        core.metrics.clone(),
                        rejected,
                        cfg.webhook.audit_rejections_per_minute,
                        wake.clone(),
                    ))
                }
                Err(e) => {
                    error!(error = %e, "credential magicline-webhook-key unreadable; MagicLine webhook off");
                    None
                }
            },
            Ok(None) => {
                warn!("magicline.events = \"webhook\" but the magicline-webhook-key credential is missing: MagicLine webhook off, only no-shows are settled");
                None
            }
            Err(e) => {
                error!(error = %e, "credential magicline-webhook-key unreadable; MagicLine webhook off");
                None
            }
        },
    };
    let worker = crate::magicline::events::EventWorker {
        store: core.store.clone(),
        booker,
        wake,
        poll: cfg.magicline.events == MagicLineEvents::Poll,
        interval: Duration::from_secs(cfg.magicline.poll_interval_secs),
        metrics: core.metrics.clone(),
    };
    (hook, Some(tokio::spawn(worker.run(stopped))))
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

/// Accepts webhook connections (HTTP/1.1) until `stopped` resolves.
async fn serve_webhook(
    listener: tokio::net::TcpListener,
    state: Routes,
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
        let svc = hyper::service::service_fn(move |req| route(state.clone(), req));
        let conn =
            crate::http1::server().serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
}

#[expect(
    clippy::too_many_lines,
    reason = "the channel starts in dependency order (engine, dispatcher, sender, webhook, tunnel); each step uses the ones before"
)]
pub(super) async fn start(
    core: &Core,
    opts: &ServeOptions,
    listener: tokio::net::TcpListener,
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
    let graph = graph_client(cfg, &creds.token)?;
    // The Graph API version's retirement, in `frontdesk status` (read at each call, so a box
    // running for months still warns in time) and in the journal at start.
    let version = cfg.whatsapp.api_version.clone();
    if let Some(w) = crate::whatsapp::versions::warning(&version, jiff::Zoned::now().date()) {
        warn!("{w}");
    }
    core.admin.board.set_source("graph api", move || {
        let today = jiff::Zoned::now().date();
        let text = crate::whatsapp::versions::warning(&version, today)
            .unwrap_or_else(|| format!("{version} (supported)"));
        serde_json::Value::String(text)
    });
    let mut engine = None;
    let (decider, magicline): (Arc<dyn Decide>, _) = match &opts.engine {
        Some(factory) => (
            factory(store.clone()),
            crate::runtime::magicline_booker(cfg, &core.creds, store.clone(), core.audit.clone())?,
        ),
        None => {
            let conv =
                crate::runtime::conversation(cfg, &core.creds, store.clone(), core.audit.clone())?;
            core.admin
                .board
                .set_value("model", serde_json::Value::String(conv.model.describe()));
            engine = Some(conv.engine.clone());
            (conv.engine as Arc<dyn Decide>, conv.booker)
        }
    };
    let (magicline_hook, magicline_task) =
        start_magicline(core, magicline, until_stopped(stop.clone()));
    let wake = Arc::new(tokio::sync::Notify::new());
    core.admin.set_outbox(queues.clone(), wake.clone());
    let dispatcher = Dispatcher::new(
        store.clone(),
        queues.clone(),
        decider,
        Some(core.audit.clone()),
        Some(graph.clone()),
        DispatchConfig {
            burst_window: Duration::from_millis(cfg.conversation.burst_window_ms),
            max_concurrent: cfg.whatsapp.max_concurrent_conversations,
            failures: crate::whatsapp::failures::FailurePolicy {
                reopen_template: cfg.whatsapp.reopen_template.clone(),
                template_language: cfg.whatsapp.template_language.clone(),
            },
            typing_refresh: crate::whatsapp::dispatch::TYPING_REFRESH,
            retry: crate::whatsapp::dispatch::TurnRetry {
                attempts: cfg.conversation.turn_attempts,
                first_delay: Duration::from_secs(cfg.conversation.turn_retry_delay_secs),
                ..crate::whatsapp::dispatch::TurnRetry::default()
            },
            staff: Arc::new(crate::whatsapp::staff::StaffNumbers::new(
                &cfg.alerts.whatsapp_recipients,
                &cfg.alerts.console_url,
            )),
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
        template_categories: TemplateCategories::new(cfg.whatsapp.template_categories.clone()),
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
        Some(core.audit.clone()),
        metrics.clone(),
        wake.clone(),
    );
    let sender_task = tokio::spawn(sender.clone().run(until_stopped(stop.clone())));
    let alerts_task = start_alerts(core, wake.clone(), until_stopped(stop.clone()));
    let reminders_task = super::timers::reminders(
        core,
        opts,
        engine.clone(),
        wake.clone(),
        until_stopped(stop.clone()),
    );
    report_sender_pauses(&sender, &core.admin);

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
        cfg.whatsapp.phone_number_id.clone(),
        webhook::replay_horizon(cfg.retention.seen_ids_days),
    );
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, magicline = magicline_hook.is_some(), "webhook listening");
    }
    let routes = Routes {
        whatsapp: state,
        magicline: magicline_hook,
    };
    let tunnel_task = match &cfg.tunnel {
        Some(t) => Some(start_tunnel(
            t,
            creds.tunnel_token,
            routes.clone(),
            tunnel_state,
            until_stopped(stop.clone()),
        )?),
        None => {
            tunnel_state.send_replace(TunnelState::Disabled);
            None
        }
    };
    let listener_task = tokio::spawn(serve_webhook(listener, routes, until_stopped(stop)));
    Ok(Channel {
        listener_task,
        magicline_task,
        sender_task,
        alerts_task,
        reminders_task,
        tunnel_task,
        dispatcher,
        engine,
        sender,
    })
}

/// The staff alert worker ([`crate::alerts::worker`]); without a working mailer it still hands
/// alerts to WhatsApp, and says in the journal why e-mail is off.
fn start_alerts(
    core: &Core,
    outbox_wake: Arc<tokio::sync::Notify>,
    stopped: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let cfg = &core.cfg;
    let store = core.store.clone();
    core.admin.board.set_source(
        "staff alerts",
        move || serde_json::json!({ "waiting": crate::alerts::queue::pending(&store) }),
    );
    let mailer = if cfg.alerts.by_email() {
        match crate::alerts::mail::Mailer::new(&cfg.alerts, &core.creds) {
            Ok(m) => Some(m),
            Err(e) => {
                error!(error = %e, "staff alert e-mail is off; see `frontdesk doctor`");
                None
            }
        }
    } else {
        None
    };
    let worker = crate::alerts::worker::AlertWorker::new(
        core.store.clone(),
        core.queues.clone(),
        Some(core.audit.clone()),
        core.metrics.clone(),
        crate::alerts::worker::WorkerConfig {
            alerts: cfg.alerts.clone(),
            template_language: cfg.whatsapp.template_language.clone(),
            retry_base: crate::alerts::worker::RETRY_BASE,
        },
        mailer,
        outbox_wake,
    );
    tokio::spawn(worker.run(stopped))
}

/// The Graph API client for the configured number with `token`.
pub(super) fn graph_client(
    cfg: &Config,
    token: &crate::secrets::Secret,
) -> anyhow::Result<GraphClient> {
    Ok(GraphClient::new(
        &cfg.whatsapp.graph_base,
        &cfg.whatsapp.api_version,
        &cfg.whatsapp.phone_number_id,
        token.expose_str()?.to_string(),
        Duration::from_secs(cfg.whatsapp.send_timeout_secs),
    ))
}

/// A paused sender shows in `frontdesk status` and in systemd's `STATUS=` until it resumes.
fn report_sender_pauses(sender: &Arc<Sender>, admin: &Arc<crate::admin::AdminState>) {
    let board = sender.paused();
    admin.board.set_source("sender", move || {
        serde_json::Value::String(match board.borrow().as_deref() {
            Some(reason) => format!(
                "PAUSED: WhatsApp rejected the access token ({reason}); replies wait in the \
                 outbox. Fix the whatsapp-token credential, then systemctl restart frontdesk"
            ),
            None => "sending".into(),
        })
    });
    let mut changes = sender.paused();
    tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            let text = match changes.borrow_and_update().as_deref() {
                Some(_) => {
                    "running, SENDING PAUSED: WhatsApp rejected the access token (see journal)"
                        .to_string()
                }
                None => "running".to_string(),
            };
            super::notify(&[("STATUS", &text)]);
        }
    });
}

/// Dials out to the relay and serves the webhooks (and nothing else) over the tunnel.
fn start_tunnel(
    t: &crate::config::TunnelConfig,
    token: Option<crate::secrets::Secret>,
    state: Routes,
    tunnel_state: tokio::sync::watch::Sender<TunnelState>,
    stopped: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let token = token.context("tunnel credential missing")?;
    let token = TunnelToken::new(token.expose_str()?)
        .map_err(|e| anyhow::anyhow!("tunnel credential {}: {e}", t.credential))?;
    let svc = hyper::service::service_fn(move |req| route(state.clone(), req));
    let cfg = TunnelClientConfig::from_config(t);
    Ok(tokio::spawn(async move {
        if let Err(e) = run_tunnel(cfg, token, svc, tunnel_state, stopped).await {
            error!(error = %e, "tunnel stopped");
        }
    }))
}
