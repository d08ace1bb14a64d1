//! `systemctl reload` (SIGHUP): re-reads the configuration and prompts, validates them, and
//! applies prompts, studio facts and admin settings at once; on any error the running
//! configuration stays.

use std::sync::Arc;

use tracing::{error, info};

use super::{append_audit, notify, Core};
use crate::audit::{Actor, AuditEvent, NewEntry};
use crate::config::Config;

/// Reloads configuration and prompts on SIGHUP (`systemctl reload`): the new files are
/// validated first; on any error the running configuration stays and the error is reported.
/// Prompts, studio facts and admin settings take effect at once; listener addresses, model and
/// credentials need a restart. A sender paused by a rejected access token resumes with the
/// token as it can be read now (a fixed plain credential file; systemd's encrypted credentials
/// are fixed for the service's life, so there `systemctl restart` is the fix).
pub(super) async fn reload_on_sighup(
    mut hup: tokio::signal::unix::Signal,
    core: Arc<Core>,
    engine: Option<Arc<crate::conversation::engine::Engine>>,
    sender: Option<Arc<crate::whatsapp::sender::Sender>>,
) {
    while hup.recv().await.is_some() {
        notify(&[("RELOADING", "1")]);
        let (c, e, s) = (core.clone(), engine.clone(), sender.clone());
        let result = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let cfg = Config::load(&c.cfg.source)?;
            let prompts = crate::conversation::prompts::Prompts::load(&cfg.service, &cfg.studio)?;
            if let Some(engine) = &e {
                engine.reload(Arc::new(prompts), cfg.studio.clone());
            }
            c.admin.set_config(Arc::new(cfg));
            if let Some(sender) = &s {
                let creds =
                    crate::secrets::Credentials::discover(c.cfg.service.credentials_dir.as_deref());
                let token = creds.require(crate::secrets::names::WHATSAPP_TOKEN)?;
                sender.resume(super::channel::graph_client(&c.cfg, &token)?);
            }
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
