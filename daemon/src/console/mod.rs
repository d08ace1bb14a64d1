//! The staff console: a web inbox served by the daemon itself (hyper, same process, same
//! store) for the studio's front desk. German UI, server-rendered HTML, one small script for
//! live updates.
//!
//! - [`config`]: `[console]` (listener, certificate, session and lockout limits).
//! - [`accounts`]: console accounts with argon2id password hashes, in the store; managed by
//!   the admin through the admin socket (`frontdesk staff …`, see `admin::staff`).
//! - [`auth`]: sessions, sign-in throttling and CSRF tokens (in memory).
//! - [`index`]: the inbox's index in memory (pseudonyms and times), kept current from the
//!   store's change feed, so an inbox page reads only the rows it shows.
//! - [`pages`]: what each page shows and its askama templates (`templates/`).
//! - [`dashboard`]: the funnel dashboard, its charts drawn as SVG on the server (plotters).
//! - [`server`]: the listener (plain HTTP on loopback, HTTPS elsewhere, see [`tls`]), routing,
//!   security headers and the live-update stream (server-sent events).
//! - [`actions`]: what staff do: answer (a staff turn committed by `turn::commit`), send a
//!   template, hand back, pause, and (owners) forget and export.
//!
//! Everything a person does here is audited with their account as the actor: sign-ins (failed
//! ones too), every opened conversation, every answer and action. The console is served only
//! on its own listener; the relay's tunnel carries the webhook alone, never the console.

pub mod accounts;
pub mod actions;
pub mod auth;
pub mod config;
pub mod dashboard;
pub mod index;
pub mod pages;
pub mod server;
#[cfg(test)]
mod tests;
pub mod tls;

use std::sync::Arc;

use jiff::SignedDuration;

pub use config::ConsoleConfig;

use crate::admin::AdminState;

/// Everything the console works with.
pub struct ConsoleState {
    /// Store, audit log, configuration and the WhatsApp outbox (shared with the admin API).
    pub admin: Arc<AdminState>,
    /// Signed-in staff.
    pub sessions: auth::Sessions,
    /// Counts of wrong passwords.
    pub throttle: auth::Throttle,
    /// Served over HTTPS: cookies are `Secure` and `__Host-` prefixed.
    pub https: bool,
    /// What the inbox lists (see [`index`]).
    pub inbox: index::InboxIndex,
}

impl ConsoleState {
    /// The console's state with the limits of `[console]`.
    pub fn new(admin: Arc<AdminState>) -> ConsoleState {
        let cfg = admin.config().console.clone();
        let inbox = index::InboxIndex::new(&admin.store);
        ConsoleState {
            inbox,
            admin,
            sessions: auth::Sessions::new(
                SignedDuration::from_mins(i64::from(cfg.session_idle_minutes)),
                SignedDuration::from_hours(i64::from(cfg.session_max_hours)),
            ),
            throttle: auth::Throttle::new(
                cfg.lockout_after,
                SignedDuration::from_mins(i64::from(cfg.lockout_minutes)),
            ),
            https: cfg.https(),
        }
    }
}

/// Starts the console on `listener` (HTTPS with the configured or generated certificate when
/// it is not on loopback) until `stopped` resolves.
pub fn start(
    cfg: &crate::config::Config,
    listener: tokio::net::TcpListener,
    admin: Arc<AdminState>,
    stopped: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let tls = if cfg.console.https() {
        let (cert, key) = tls::files(cfg);
        // The admin's own certificate is used as it is; only a generated one is made anew.
        if cfg.console.tls_certificate.is_none()
            && tls::ensure_generated(&cfg.console, &cert, &key)?
        {
            tracing::info!(certificate = %cert.display(), "generated a self-signed certificate for the console");
        }
        Some(tls::server_config(&cert, &key)?)
    } else {
        None
    };
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, https = tls.is_some(), "console listening");
    }
    let state = Arc::new(ConsoleState::new(admin));
    Ok(tokio::spawn(server::serve(listener, tls, state, stopped)))
}
