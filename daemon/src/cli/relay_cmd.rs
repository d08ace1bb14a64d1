//! `frontdesk relay`: runs the public relay (on a server with a public address) and makes box
//! tokens for it.

use std::path::PathBuf;

use clap::Subcommand;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info};

use super::exit;
use crate::tunnel::{start_relay, RelayConfig, TunnelToken};

/// Default location of the relay's configuration.
pub const DEFAULT_RELAY_CONFIG: &str = "/etc/frontdesk/relay.toml";

#[derive(Subcommand, Debug)]
pub enum RelayCommand {
    /// Run the relay until SIGTERM; SIGHUP reloads the certificate and key.
    Run {
        /// Relay configuration (listeners, certificate, boxes).
        #[arg(long, default_value = DEFAULT_RELAY_CONFIG)]
        relay_config: PathBuf,
    },
    /// Check the configuration file and the certificate (names, expiry, key); exit code 1 when
    /// something would fail.
    Check {
        /// Relay configuration (listeners, certificate, boxes).
        #[arg(long, default_value = DEFAULT_RELAY_CONFIG)]
        relay_config: PathBuf,
    },
    /// Make a token for a new box: the token goes into the box's `tunnel-token` credential, the
    /// hash into the relay's `[[box]]` entry.
    NewToken,
}

pub fn run(cmd: &RelayCommand) -> anyhow::Result<u8> {
    match cmd {
        RelayCommand::Check { relay_config } => {
            let now = jiff::Timestamp::now().as_second();
            let report = super::relay_check::diagnose(relay_config, now);
            for c in &report.checks {
                println!("{c}");
            }
            Ok(report.exit_code())
        }
        RelayCommand::NewToken => {
            let token = TunnelToken::generate();
            println!("token (box credential tunnel-token): {}", token.expose());
            println!(
                "token_sha256 (relay [[box]] entry):  {}",
                token.sha256_hex()
            );
            Ok(exit::OK)
        }
        RelayCommand::Run { relay_config } => {
            crate::logging::init("info", crate::logging::running_under_journald());
            let cfg = RelayConfig::load(relay_config)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("frontdesk-relay")
                .build()?;
            rt.block_on(async move {
                let relay = start_relay(cfg).await?;
                info!(
                    public = %relay.public_addr(),
                    tunnel = %relay.tunnel_addr(),
                    FRONTDESK_EVENT = "relay.started",
                    "relay listening"
                );
                crate::service::notify(&[("READY", "1")]);
                let mut term = signal(SignalKind::terminate())?;
                let mut int = signal(SignalKind::interrupt())?;
                let mut hup = signal(SignalKind::hangup())?;
                loop {
                    tokio::select! {
                        _ = term.recv() => break,
                        _ = int.recv() => break,
                        _ = hup.recv() => match relay.reload() {
                            Ok(()) => info!("certificate reloaded"),
                            Err(e) => error!(error = %e, "certificate reload failed; keeping the old one"),
                        },
                    }
                }
                crate::service::notify(&[("STOPPING", "1")]);
                relay.shutdown().await;
                anyhow::Ok(())
            })?;
            Ok(exit::OK)
        }
    }
}
