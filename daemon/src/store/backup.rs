//! Backup, restore and identity rotation.
//!
//! A backup is one consistent fjall snapshot of every keyspace, streamed record by record into an
//! age-encrypted file (values stay sealed inside; the age layer adds confidentiality and integrity
//! for the file as a whole, including truncation). A restore replays the records into a fresh
//! directory, re-applies every erasure it is given (the forget ledger file kept beside the
//! store, see [`super::ledger`], and any copies the admin passes) together with the ledger of
//! the store it replaces, so a backup taken before an erasure never brings that person back,
//! and then swaps the directories durably.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use fjall::{PersistMode, Readable};

use super::crypto::{self, CryptoError, StoreIdentity};
use super::ledger::{self, Erasures};
use super::{ks, Result, Store, StoreError, SCHEMA_VERSION};

const MAGIC: &[u8] = b"FRONTDESK-BACKUP\n";
const FORMAT_VERSION: u32 = 1;
const END: u8 = 0xFF;
/// Record tags for the key directory (keyspaces use their index in `Keyspaces::all`).
const TAG_CUSTOMER_KEY: u8 = 0xFE;
const TAG_STORE_KEY: u8 = 0xFD;
const STORE_KEY_NAMES: [&str; 2] = [super::PSEUDONYM_KEY, super::QUEUE_KEY];

/// Counts of a finished backup or restore.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct BackupSummary {
    /// Records written or read: the store keys, the customer keys and every row.
    pub records: u64,
    /// Bytes of the records' keys and values, before framing and encryption.
    pub bytes: u64,
    /// Erasures from the ledger re-applied after a restore.
    pub erasures_reapplied: u64,
}

impl Store {
    /// Writes a consistent snapshot of the whole store, age-encrypted to `recipient`, to `out`.
    pub fn backup_to(
        &self,
        recipient: &age::x25519::Recipient,
        out: impl Write,
    ) -> Result<BackupSummary> {
        let snapshot = self.db.snapshot();
        let mut w = crypto::encrypt_stream(recipient, BufWriter::new(out))?;
        let mut summary = BackupSummary::default();
        w.write_all(MAGIC)?;
        w.write_all(&FORMAT_VERSION.to_be_bytes())?;
        w.write_all(&SCHEMA_VERSION.to_be_bytes())?;
        let mut record = |tag: u8, k: &[u8], v: &[u8]| -> std::io::Result<()> {
            w.write_all(&[tag])?;
            w.write_all(&(k.len() as u32).to_be_bytes())?;
            w.write_all(k)?;
            w.write_all(&(v.len() as u32).to_be_bytes())?;
            w.write_all(v)?;
            summary.records += 1;
            summary.bytes += (k.len() + v.len()) as u64;
            Ok(())
        };
        for name in STORE_KEY_NAMES {
            let v = self.keys.get_named(name)?.ok_or(StoreError::Corrupt {
                keyspace: ks::META,
                what: "missing wrapped store key",
            })?;
            record(TAG_STORE_KEY, name.as_bytes(), &v)?;
        }
        // Keys are read before the rows they open: a customer created during the backup has
        // rows only if its key was already on disk, so every backed-up row can be opened.
        for p in self.keys.pseudonyms() {
            let p = p?;
            if let Some(v) = self.keys.get(&p)? {
                record(TAG_CUSTOMER_KEY, &p.0, &v)?;
            }
        }
        for (idx, (_, keyspace)) in self.ks.all().into_iter().enumerate() {
            for g in snapshot.iter(keyspace) {
                let (k, v) = g.into_inner()?;
                record(idx as u8, &k, &v)?;
            }
        }
        w.write_all(&[END])?;
        let mut inner = w.finish()?;
        inner.flush()?;
        Ok(summary)
    }

    /// Re-wraps every data key (and the store's own keys) to `new_recipient`. Each key file is
    /// replaced atomically, so no copy wrapped to the old identity stays behind. The caller
    /// installs the new identity as the `store-identity` credential; from then on the old one
    /// opens nothing.
    pub fn rotate_identity(&self, new_recipient: &age::x25519::Recipient) -> Result<u64> {
        let rewrap = |wrapped: &[u8]| -> Result<Vec<u8>> {
            let key = self
                .identity
                .unwrap(wrapped)
                .map_err(|_| StoreError::WrongIdentity(self.path.clone()))?;
            Ok(crypto::wrap_to(new_recipient, &key)?)
        };
        let mut count = 0u64;
        let all: Vec<_> = self.keys.pseudonyms().collect::<std::io::Result<_>>()?;
        for p in all {
            let _guard = self.lock_customer(&p);
            if let Some(v) = self.keys.get(&p)? {
                self.keys.put(&p, &rewrap(&v)?, true)?;
                count += 1;
            }
        }
        for name in STORE_KEY_NAMES {
            let v = self.keys.get_named(name)?.ok_or(StoreError::Corrupt {
                keyspace: ks::META,
                what: "missing wrapped store key",
            })?;
            self.keys.put_named(name, &rewrap(&v)?)?;
        }
        let mut batch = self.batch();
        batch.insert(
            &self.ks.meta,
            super::META_RECIPIENT,
            new_recipient.to_string().into_bytes(),
        );
        self.commit_durable(batch)?;
        Ok(count)
    }
}

/// Restores the backup `file` (decrypted with `backup_identity`) into `state_dir`, which is
/// replaced. `store_identity` must be the identity the backed-up store was sealed to.
///
/// Re-applied afterwards: `erasures` (the ledger file and its copies, read by the caller) and
/// the ledger of the store currently in `state_dir`, if there is one. A customer whose first
/// contact in the backup is later than their erasure wrote again after being forgotten and is
/// kept. Deciding whether a restore without any ledger is acceptable is the caller's job.
pub fn restore(
    file: &Path,
    backup_identity: &age::x25519::Identity,
    state_dir: &Path,
    store_identity_text: &str,
    erasures: &Erasures,
) -> Result<BackupSummary> {
    // The ledger of the store being replaced (if there is one) must survive the restore.
    let mut ledger = erasures.clone();
    let occupied = std::fs::read_dir(state_dir).is_ok_and(|mut d| d.next().is_some());
    if occupied {
        let current = Store::open(state_dir, StoreIdentity::parse(store_identity_text)?)?;
        for (p, at) in current.forget_ledger()? {
            ledger::merge(&mut ledger, p, at);
        }
    }

    let staging = sibling(state_dir, "restore-staging");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    let mut summary = BackupSummary::default();
    {
        let reader = crypto::decrypt_stream(backup_identity, BufReader::new(File::open(file)?))
            .map_err(|e| match e {
                CryptoError::WrongIdentity => {
                    StoreError::Format("the backup identity cannot decrypt this backup".into())
                }
                other => other.into(),
            })?;
        let mut r = BufReader::new(reader);
        let mut magic = [0u8; MAGIC.len()];
        r.read_exact(&mut magic)?;
        if magic != MAGIC {
            return Err(StoreError::Format("not a frontdesk backup".into()));
        }
        let format = read_u32(&mut r)?;
        let schema = read_u32(&mut r)?;
        if format != FORMAT_VERSION || schema > SCHEMA_VERSION {
            return Err(StoreError::Format(format!(
                "backup format {format} / schema {schema} is newer than this frontdesk"
            )));
        }
        let db = fjall::Database::builder(staging.join("db")).open()?;
        let keyspaces = super::Keyspaces::open(&db)?;
        let keys = super::keydir::KeyDir::open(&staging.join("keys"))?;
        let all = keyspaces.all();
        let mut batch = db.batch();
        let mut pending = 0;
        loop {
            let mut tag = [0u8; 1];
            r.read_exact(&mut tag)?;
            if tag[0] == END {
                break;
            }
            let k = read_blob(&mut r)?;
            let v = read_blob(&mut r)?;
            summary.records += 1;
            summary.bytes += (k.len() + v.len()) as u64;
            match tag[0] {
                TAG_STORE_KEY => {
                    let name = std::str::from_utf8(&k)
                        .ok()
                        .filter(|n| STORE_KEY_NAMES.contains(n))
                        .ok_or_else(|| StoreError::Format("unknown store key in backup".into()))?;
                    keys.put_named(name, &v)?;
                    continue;
                }
                TAG_CUSTOMER_KEY => {
                    let p = super::crypto::Pseudonym::from_key_prefix(&k)
                        .ok_or_else(|| StoreError::Format("bad key record in backup".into()))?;
                    keys.put(&p, &v, false)?;
                    continue;
                }
                _ => {}
            }
            let (_, keyspace) = all
                .get(tag[0] as usize)
                .ok_or_else(|| StoreError::Format("unknown keyspace in backup".into()))?;
            batch.insert(keyspace, k, v);
            pending += 1;
            if pending == 10_000 {
                std::mem::replace(&mut batch, db.batch()).commit()?;
                pending = 0;
            }
        }
        batch.commit()?;
        db.persist(PersistMode::SyncAll)?;
        keys.sync_all()?;
    }
    {
        let restored = Store::open(&staging, StoreIdentity::parse(store_identity_text)?)?;
        summary.erasures_reapplied = reapply(&restored, &ledger)?;
        restored.persist()?;
    }
    swap_in(&staging, state_dir)?;
    Ok(summary)
}

/// Re-applies `ledger` to a restored store, each erasure with its own time; a customer whose
/// first contact is later than their erasure wrote again afterwards and is kept.
fn reapply(restored: &Store, ledger: &Erasures) -> Result<u64> {
    let mut to_forget = Vec::new();
    for (p, at) in ledger {
        let came_back = restored
            .customer_meta(p)?
            .is_some_and(|m| m.first_contact > *at);
        if !came_back {
            to_forget.push((*p, *at));
        }
    }
    Ok(restored.forget_as_of(&to_forget)? as u64)
}

/// Puts the restored `staging` directory in place of `state_dir`. Each rename is made durable
/// before the next step, so a power cut leaves either the old store or the restored one in
/// place, never neither.
fn swap_in(staging: &Path, state_dir: &Path) -> Result<()> {
    if state_dir.exists() {
        let old = sibling(state_dir, "replaced");
        if old.exists() {
            std::fs::remove_dir_all(&old)?;
        }
        std::fs::rename(state_dir, &old)?;
        std::fs::rename(staging, state_dir)?;
        ledger::sync_parent(state_dir)?;
        std::fs::remove_dir_all(&old)?;
    } else {
        std::fs::rename(staging, state_dir)?;
        ledger::sync_parent(state_dir)?;
    }
    Ok(())
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "store".into());
    dir.with_file_name(format!(".{name}.{suffix}"))
}

fn read_u32(r: &mut impl Read) -> Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_blob(r: &mut impl Read) -> Result<Vec<u8>> {
    let len = read_u32(r)? as usize;
    if len > 64 * 1024 * 1024 {
        return Err(StoreError::Format("record too large".into()));
    }
    let mut v = vec![0u8; len];
    r.read_exact(&mut v)?;
    Ok(v)
}
