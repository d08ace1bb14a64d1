//! Command-line interface: the clap definitions of every verb and the dispatch to the code that
//! carries them out. Exit codes: 0 success, 1 failure, 2 usage error (clap), 3 the daemon is not
//! reachable, 4 permission denied, 5 verification failed.

mod store_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::config::{self, Config};

/// Exit codes shared by every verb.
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILURE: u8 = 1;
    pub const DAEMON_UNREACHABLE: u8 = 3;
    pub const DENIED: u8 = 4;
    pub const VERIFY_FAILED: u8 = 5;
}

/// frontdesk answers a studio's WhatsApp leads with a local language model, books trial trainings
/// in MagicLine and keeps every customer's data encrypted on the box.
#[derive(Parser, Debug)]
#[command(name = "frontdesk", version, propagate_version = true)]
pub struct Cli {
    /// Configuration file.
    #[arg(long, global = true, env = "FRONTDESK_CONFIG", default_value = config::DEFAULT_PATH)]
    pub config: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon (what frontdesk.service starts).
    Serve {
        /// Load tests only: answer every message with this text instead of the model.
        #[arg(long, hide = true)]
        fixed_reply: Option<String>,
    },
    /// Store maintenance: identities, backups, restores (stop the service first).
    #[command(subcommand)]
    Store(store_cmd::StoreCommand),
    /// Retention (deletion by age).
    #[command(subcommand)]
    Retention(RetentionCommand),
    /// Write man pages for frontdesk and every verb into a directory.
    Man {
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand, Debug)]
pub enum RetentionCommand {
    /// Delete everything that is due now.
    Run {
        /// Only count what would be deleted.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Parses the command line and runs the verb.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("frontdesk: {e:#}");
            ExitCode::from(exit::FAILURE)
        }
    }
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    Ok(Config::load(&cli.config)?)
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    match &cli.command {
        Command::Serve { fixed_reply } => {
            let cfg = load_config(&cli)?;
            let opts = crate::service::ServeOptions {
                fixed_reply: fixed_reply.clone(),
                ..Default::default()
            };
            crate::logging::init(
                &cfg.service.log_level,
                crate::logging::running_under_journald(),
            );
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("frontdesk")
                .build()?;
            rt.block_on(crate::service::serve_with(cfg, opts))?;
            Ok(exit::OK)
        }
        Command::Store(cmd) => store_cmd::run(&cli, cmd),
        Command::Retention(RetentionCommand::Run { dry_run, json }) => {
            let cfg = load_config(&cli)?;
            store_cmd::retention_offline(&cfg, *dry_run, *json)
        }
        Command::Man { out } => {
            std::fs::create_dir_all(out)?;
            write_man_pages(Cli::command(), out)?;
            Ok(exit::OK)
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "frontdesk",
                &mut std::io::stdout(),
            );
            Ok(exit::OK)
        }
    }
}

fn write_man_pages(cmd: clap::Command, dir: &std::path::Path) -> anyhow::Result<()> {
    fn walk(cmd: &clap::Command, prefix: &str, dir: &std::path::Path) -> anyhow::Result<()> {
        let name = if prefix.is_empty() {
            cmd.get_name().to_string()
        } else {
            format!("{prefix}-{}", cmd.get_name())
        };
        let page = cmd
            .clone()
            .name(clap::builder::Str::from(name.clone().leak() as &str));
        let mut buf = Vec::new();
        clap_mangen::Man::new(page).render(&mut buf)?;
        std::fs::write(dir.join(format!("{name}.1")), buf)?;
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            walk(sub, &name, dir)?;
        }
        Ok(())
    }
    let mut cmd = cmd;
    cmd.build();
    walk(&cmd, "", dir)
}
