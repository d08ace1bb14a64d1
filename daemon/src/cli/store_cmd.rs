//! `frontdesk store …` and offline `retention run`: verbs that open the store directly and
//! therefore need the service to be stopped (fjall's lock refuses a second opener).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use super::{exit, Cli};
use crate::audit::{Actor, AuditEvent, AuditLog, NewEntry};
use crate::config::Config;
use crate::secrets::{names, Credentials};
use crate::store::crypto::{self, StoreIdentity};
use crate::store::Store;

/// The audit log of a store opened by an offline verb (the daemon is stopped, so this process
/// is the only writer).
fn audit_log(store: Store) -> anyhow::Result<(std::sync::Arc<Store>, AuditLog)> {
    let store = std::sync::Arc::new(store);
    let log = AuditLog::open(store.clone())?;
    Ok((store, log))
}

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Print a new age identity (one AGE-SECRET-KEY-1… line; the public key goes to stderr).
    NewIdentity,
    /// Show the store's path, size, customer count and recipient.
    Info,
    /// Write a consistent, age-encrypted backup of the whole store.
    Backup {
        /// Output file.
        #[arg(long)]
        to: PathBuf,
        /// age recipient (age1…) the backup is encrypted to.
        #[arg(long)]
        recipient: String,
    },
    /// Replace the store with a backup; erasures made since the backup are re-applied.
    Restore {
        /// Backup file.
        #[arg(long)]
        from: PathBuf,
        /// File with the age identity that decrypts the backup.
        #[arg(long)]
        identity: PathBuf,
    },
    /// Re-wrap every data key to a new store identity.
    RotateIdentity {
        /// File with the new identity; install it as the store-identity credential afterwards.
        #[arg(long)]
        new_identity: PathBuf,
    },
}

fn credentials(cfg: &Config) -> Credentials {
    Credentials::discover(cfg.service.credentials_dir.as_deref())
}

fn read_identity_file(path: &PathBuf) -> anyhow::Result<StoreIdentity> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read identity file {}", path.display()))?;
    Ok(StoreIdentity::parse(&text)?)
}

pub fn run(cli: &Cli, cmd: &StoreCommand) -> anyhow::Result<u8> {
    if let StoreCommand::NewIdentity = cmd {
        // Exactly one line on stdout, so scripts can pipe it into `systemd-creds encrypt`;
        // the public half goes to stderr for the admin.
        let id = StoreIdentity::generate();
        eprintln!("# public key: {}", id.recipient());
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", *id.to_secret_line())?;
        return Ok(exit::OK);
    }
    let cfg = Config::load(&cli.config)?;
    let creds = credentials(&cfg);
    match cmd {
        StoreCommand::NewIdentity => unreachable!("handled above"),
        StoreCommand::Info => {
            let store = crate::service::open_store(&cfg, &creds)?;
            println!("path: {}", store.path().display());
            println!("recipient: {}", store.identity().recipient());
            println!("customers: {}", store.customer_count());
            println!("disk bytes: {}", store.disk_space());
            println!("forgotten (ledger): {}", store.forget_ledger()?.len());
        }
        StoreCommand::Backup { to, recipient } => {
            let recipient = crypto::parse_recipient(recipient)?;
            let (store, audit) = audit_log(crate::service::open_store(&cfg, &creds)?)?;
            let file = create_private(to)?;
            let summary = store.backup_to(&recipient, file)?;
            // The backup holds (sealed) personal data and leaves the store: recorded once it
            // exists; the entry itself is not in this backup.
            audit.append(NewEntry::new(
                Actor::current_user(),
                AuditEvent::StoreBackup {
                    records: summary.records,
                    bytes: summary.bytes,
                },
            ))?;
            println!(
                "backup written to {}: {} records, {} bytes before encryption",
                to.display(),
                summary.records,
                summary.bytes
            );
        }
        StoreCommand::Restore { from, identity } => {
            let backup_identity = read_identity_file(identity)?;
            let store_identity = creds.require(names::STORE_IDENTITY)?;
            // The head of the log being replaced goes into the restored log's entry, so the
            // history a restore discards stays on record.
            let replaced_head = match crate::service::open_store(&cfg, &creds) {
                Ok(current) => Some(audit_log(current)?.1.head()),
                Err(_) => None,
            };
            let summary = crate::store::backup::restore(
                from,
                backup_identity.age_identity(),
                &cfg.store_dir(),
                store_identity.expose_str()?,
                jiff::Timestamp::now(),
            )?;
            let (_, audit) = audit_log(crate::service::open_store(&cfg, &creds)?)?;
            audit.append(NewEntry::new(
                Actor::current_user(),
                AuditEvent::StoreRestore {
                    records: summary.records,
                    erasures_reapplied: summary.erasures_reapplied,
                    replaced_head_seq: replaced_head.map(|h| h.seq),
                    replaced_head_hash: replaced_head.map(|h| h.hash),
                },
            ))?;
            println!(
                "restored {} records; re-applied {} erasures from the forget ledger",
                summary.records, summary.erasures_reapplied
            );
        }
        StoreCommand::RotateIdentity { new_identity } => {
            let new = read_identity_file(new_identity)?;
            let (store, audit) = audit_log(crate::service::open_store(&cfg, &creds)?)?;
            let n = store.rotate_identity(&new.recipient())?;
            audit.append(NewEntry::new(
                Actor::current_user(),
                AuditEvent::IdentityRotated { keys: n },
            ))?;
            println!(
                "re-wrapped {n} customer keys to {}; now install {} as the store-identity credential",
                new.recipient(),
                new_identity.display()
            );
        }
    }
    Ok(exit::OK)
}

/// Creates a file only its owner can read (backups and exports).
pub(crate) fn create_private(path: &PathBuf) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

pub fn retention_offline(cfg: &Config, dry_run: bool, json: bool) -> anyhow::Result<u8> {
    let (store, audit) = audit_log(crate::service::open_store(cfg, &credentials(cfg))?)?;
    let run = crate::admin::ops::run_retention(
        &store,
        &audit,
        &cfg.retention,
        Actor::current_user(),
        None,
        jiff::Timestamp::now(),
        dry_run,
    )?;
    if json {
        println!("{}", serde_json::to_string(&run)?);
    } else {
        super::admin_cmd::print_retention(&run);
    }
    Ok(exit::OK)
}
