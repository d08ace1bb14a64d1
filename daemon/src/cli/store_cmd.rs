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
use crate::store::ledger::{self, Erasures, LedgerFile};
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
    /// Replace the store with a backup; erasures made since the backup are re-applied from the
    /// forget ledger.
    Restore {
        /// Backup file.
        #[arg(long)]
        from: PathBuf,
        /// File with the age identity that decrypts the backup.
        #[arg(long)]
        identity: PathBuf,
        /// A copy of the forget ledger to re-apply as well (the newest `<backup>.forget-ledger`
        /// or another copy kept off the box); may be given several times.
        #[arg(long)]
        ledger: Vec<PathBuf>,
        /// Restore even though no forget ledger exists: everyone forgotten since the backup
        /// comes back. Only for a box whose ledger is truly lost.
        #[arg(long)]
        without_ledger: bool,
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
            // The newest ledger travels with every backup: restoring an older backup with the
            // newest backup's ledger keeps every erasure made in between.
            let copy = ledger_copy_path(to);
            LedgerFile::at(&copy).replace(&store.forget_erasures()?)?;
            println!(
                "backup written to {}: {} records, {} bytes before encryption",
                to.display(),
                summary.records,
                summary.bytes
            );
            println!(
                "forget ledger copied to {}: keep it with the backup, and pass the newest copy \
                 to `store restore --ledger` when the box's own ledger is lost",
                copy.display()
            );
        }
        StoreCommand::Restore {
            from,
            identity,
            ledger,
            without_ledger,
        } => {
            let backup_identity = read_identity_file(identity)?;
            let store_identity = creds.require(names::STORE_IDENTITY)?;
            let erasures = known_erasures(&cfg, ledger, *without_ledger)?;
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
                &erasures,
            )?;
            // The file keeps every erasure it was given, also those of copies passed in.
            LedgerFile::at(&cfg.ledger_file()).replace(&erasures)?;
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

/// Where `store backup` puts the ledger copy of a backup file.
fn ledger_copy_path(backup: &std::path::Path) -> PathBuf {
    let mut name = backup.as_os_str().to_owned();
    name.push(".forget-ledger");
    PathBuf::from(name)
}

/// Every erasure a restore must re-apply: the ledger file beside the store and the copies given.
/// Refuses when there is none of them and no store to read a ledger from, unless the admin said
/// `--without-ledger`: restoring onto an empty box would otherwise silently undo erasures.
fn known_erasures(
    cfg: &Config,
    copies: &[PathBuf],
    without_ledger: bool,
) -> anyhow::Result<Erasures> {
    let file = LedgerFile::at(&cfg.ledger_file());
    let own = file.read()?;
    let mut all = own.clone().unwrap_or_default();
    for copy in copies {
        let entries = LedgerFile::at(copy)
            .read()?
            .with_context(|| format!("forget ledger copy {} does not exist", copy.display()))?;
        for (p, at) in entries {
            ledger::merge(&mut all, p, at);
        }
    }
    let store_present = std::fs::read_dir(cfg.store_dir()).is_ok_and(|mut d| d.next().is_some());
    if own.is_none() && copies.is_empty() && !store_present && !without_ledger {
        anyhow::bail!(
            "no forget ledger at {} and no store to read one from: restoring now would bring back \
             everyone forgotten since the backup was taken. Pass --ledger with the newest copy \
             (every backup has one beside it, <backup>.forget-ledger), or --without-ledger if \
             it is truly lost",
            cfg.ledger_file().display()
        );
    }
    Ok(all)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config_in(dir: &std::path::Path) -> Config {
        let mut cfg = Config::default();
        cfg.service.state_dir = dir.to_path_buf();
        cfg
    }

    fn entry(n: u8, at: &str) -> String {
        format!(
            "{} {at}\n",
            format!("{n:02x}").repeat(crate::store::crypto::PSEUDONYM_LEN)
        )
    }

    #[test]
    fn a_restore_onto_an_empty_box_without_a_ledger_is_refused_unless_told() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config_in(dir.path());
        let err = known_erasures(&cfg, &[], false).unwrap_err();
        assert!(err.to_string().contains("--without-ledger"), "{err}");
        assert!(known_erasures(&cfg, &[], true).unwrap().is_empty());
    }

    #[test]
    fn the_ledger_file_and_given_copies_are_merged() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config_in(dir.path());
        std::fs::write(cfg.ledger_file(), entry(1, "2026-11-01T10:00:00Z")).unwrap();
        let copy = dir.path().join("backup.age.forget-ledger");
        std::fs::write(
            &copy,
            entry(1, "2026-10-01T10:00:00Z") + &entry(2, "2026-11-03T10:00:00Z"),
        )
        .unwrap();
        let all = known_erasures(&cfg, &[copy], false).unwrap();
        assert_eq!(all.len(), 2);
        // A copy alone (the box's own file is lost) is enough.
        std::fs::remove_file(cfg.ledger_file()).unwrap();
        let missing = dir.path().join("nope");
        assert!(known_erasures(&cfg, &[missing], false).is_err());
    }

    #[test]
    fn a_backup_ledger_copy_sits_beside_the_backup() {
        assert_eq!(
            ledger_copy_path(std::path::Path::new("/srv/b/2026-12-01.age")),
            PathBuf::from("/srv/b/2026-12-01.age.forget-ledger")
        );
    }
}
