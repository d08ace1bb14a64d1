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
/// credentials need a restart.
pub(super) async fn reload_on_sighup(
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
