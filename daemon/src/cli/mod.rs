//! Command-line interface: the clap definitions of every verb and the dispatch to the code that
//! carries them out. Exit codes: 0 success, 1 failure, 2 usage error (clap), 3 the daemon is not
//! reachable, 4 permission denied, 5 verification failed, 6 an expectation of a chat script
//! failed.

mod admin_cmd;
mod chat_cmd;
mod chat_facts;
mod chat_script;
mod console_cmd;
mod demo_cmd;
mod doctor_cmd;
mod doctor_magicline;
mod relay_check;
mod relay_cmd;
mod send_cmd;
mod staff_cmd;
mod store_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::config::{self, Config};

/// Exit codes shared by every verb.
pub mod exit {
    /// The verb did what was asked.
    pub const OK: u8 = 0;
    /// Any other error (the message says what).
    pub const FAILURE: u8 = 1;
    /// The verb needs the running daemon and its admin socket did not answer.
    pub const DAEMON_UNREACHABLE: u8 = 3;
    /// The daemon refused: the user may not use the admin socket, or the request was denied.
    pub const DENIED: u8 = 4;
    /// `audit verify` found the log altered or incomplete.
    pub const VERIFY_FAILED: u8 = 5;
    /// `chat --script`: an expectation of a script did not hold.
    pub const EXPECTATION_FAILED: u8 = 6;
}

/// frontdesk answers a studio's WhatsApp leads with a local language model, books trial trainings
/// in MagicLine and keeps every customer's data encrypted on the box.
#[derive(Parser, Debug)]
#[command(name = "frontdesk", version, propagate_version = true)]
pub struct Cli {
    /// Configuration file.
    #[arg(long, global = true, env = "FRONTDESK_CONFIG", default_value = config::DEFAULT_PATH)]
    pub config: PathBuf,

    /// The verb to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon (what frontdesk.service starts).
    Serve,
    /// Show the running daemon's state: version, uptime, model, tunnel, queues, store, retention.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Customers: list, show, export, forget, pause and resume the bot (through the daemon).
    #[command(subcommand)]
    Customers(admin_cmd::CustomersCommand),
    /// The audit log: show, verify, export.
    #[command(subcommand)]
    Audit(admin_cmd::AuditCommand),
    /// The lead funnel: new contacts, names known, trials booked, conversion, hand-overs, opt-outs.
    Stats(admin_cmd::StatsArgs),
    /// Check the installation: configuration, credentials, store, model, prompts, the running
    /// daemon, and the WhatsApp, MagicLine and tunnel connections.
    Doctor(doctor_cmd::DoctorArgs),
    /// Start a WhatsApp chat with an approved template (through the daemon; audited).
    Send(send_cmd::SendArgs),
    /// Staff console accounts: add, passwd, remove, list (through the daemon; audited).
    #[command(subcommand)]
    Staff(staff_cmd::StaffCommand),
    /// The staff console's own files: its self-signed certificate.
    #[command(subcommand)]
    Console(console_cmd::ConsoleCommand),
    /// Store maintenance: identities, backups, restores (stop the service first).
    #[command(subcommand)]
    Store(store_cmd::StoreCommand),
    /// Retention (deletion by age).
    #[command(subcommand)]
    Retention(RetentionCommand),
    /// Chat with the assistant in the terminal: the configured prompts and model, a throwaway
    /// store, simulated bookings. Try a persona before going live; with --script, replay written
    /// conversations and check what each message led to.
    Chat(chat_cmd::ChatArgs),
    /// Try the whole product locally: daemon, small model, WhatsApp and MagicLine simulators;
    /// you type as the customer.
    Demo {
        /// GGUF model (default: the test model fetched by ./install.sh --dev).
        #[arg(long, conflicts_with = "openai_url")]
        model: Option<PathBuf>,
        /// The model server to use instead of the small model.
        #[command(flatten)]
        server: chat_cmd::OpenAiArgs,
    },
    /// The public relay the box's tunnel dials into (runs on a server, not on the box).
    #[command(subcommand)]
    Relay(relay_cmd::RelayCommand),
    /// Write man pages for frontdesk and every verb into a directory.
    Man {
        /// Directory the pages are written to.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell the script is for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// What `frontdesk retention` does.
#[derive(Subcommand, Debug)]
pub enum RetentionCommand {
    /// Delete everything that is due now (through the daemon; directly on the store when the
    /// daemon is not running).
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
        Command::Serve => {
            let cfg = load_config(&cli)?;
            let opts = crate::service::ServeOptions::default();
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
        Command::Status { json } => admin_cmd::status(&cli, *json),
        Command::Customers(cmd) => admin_cmd::customers(&cli, cmd),
        Command::Audit(cmd) => admin_cmd::audit(&cli, cmd),
        Command::Stats(args) => admin_cmd::stats(&cli, args),
        Command::Retention(RetentionCommand::Run { dry_run, json }) => {
            admin_cmd::retention(&cli, *dry_run, *json)
        }
        Command::Chat(args) => {
            let cfg = load_config(&cli)?;
            chat_cmd::run(&cfg, args)
        }
        Command::Doctor(args) => doctor_cmd::run(&cli.config, args),
        Command::Send(args) => send_cmd::run(&cli, args),
        Command::Staff(cmd) => staff_cmd::run(&cli, cmd),
        Command::Console(cmd) => console_cmd::run(&cli, cmd),
        Command::Demo { model, server } => demo_cmd::run(model.as_deref(), server),
        Command::Relay(cmd) => relay_cmd::run(cmd),
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
