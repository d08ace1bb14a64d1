//! The key directory: one small file per customer holding that customer's data key, wrapped with
//! age to the store identity (`keys/<first two hex digits>/<pseudonym hex>`).
//!
//! Data keys deliberately live beside fjall rather than in it: fjall's journal keeps every write
//! until the journal file reaches 64 MB and offers no way to rotate it early, so a key deleted
//! from a keyspace would stay readable in the journal for a long time. A file can be unlinked at
//! once, which is what crypto-shredding needs: after `remove`, no file holds the key, and every
//! sealed row of that customer — in fjall's tables, its journal or any old backup — is noise.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::crypto::Pseudonym;

/// A directory of wrapped per-customer keys. See the module doc.
pub struct KeyDir {
    root: PathBuf,
}

impl KeyDir {
    /// Opens (creating with mode 0700) the key directory at `root`.
    pub fn open(root: &Path) -> std::io::Result<KeyDir> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)?;
        Ok(KeyDir {
            root: root.to_path_buf(),
        })
    }

    fn path(&self, p: &Pseudonym) -> PathBuf {
        let hex = p.to_hex();
        self.root.join(&hex[..2]).join(hex)
    }

    /// The wrapped key of `p`, if present.
    pub fn get(&self, p: &Pseudonym) -> std::io::Result<Option<Vec<u8>>> {
        match fs::read(self.path(p)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether `p` has a wrapped key (false once the customer is forgotten).
    pub fn contains(&self, p: &Pseudonym) -> bool {
        self.path(p).exists()
    }

    /// Writes (or replaces) the wrapped key of `p` atomically. With `durable`, the file and its
    /// directory are fsynced before returning; bulk writers pass `false` and call
    /// [`KeyDir::sync_all`] once at the end.
    pub fn put(&self, p: &Pseudonym, wrapped: &[u8], durable: bool) -> std::io::Result<()> {
        let path = self.path(p);
        let dir = path.parent().expect("key path has a parent");
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
            if durable {
                File::open(&self.root)?.sync_all()?;
            }
        }
        let tmp = path.with_extension("tmp");
        {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(wrapped)?;
            if durable {
                f.sync_all()?;
            }
        }
        fs::rename(&tmp, &path)?;
        if durable {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Deletes the wrapped key of `p` durably. Returns whether it existed.
    pub fn remove(&self, p: &Pseudonym) -> std::io::Result<bool> {
        let path = self.path(p);
        // A write interrupted between its temporary file and the rename leaves a copy of the key
        // there; a forget must not leave it behind.
        remove_if_present(&path.with_extension("tmp"))?;
        match fs::remove_file(&path) {
            Ok(()) => {
                File::open(path.parent().expect("key path has a parent"))?.sync_all()?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes temporary files of interrupted key writes (a crash or power cut between writing
    /// `<pseudonym>.tmp` and renaming it, e.g. during an identity rotation). Each may hold a
    /// copy of a key, which crypto-shredding cannot allow. Run when the store opens, before any
    /// writer starts. Returns how many were removed.
    pub fn remove_temporaries(&self) -> std::io::Result<u64> {
        let mut removed = 0;
        let mut dirs = vec![self.root.clone()];
        for e in fs::read_dir(&self.root)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                dirs.push(e.path());
            }
        }
        for dir in dirs {
            let mut here = 0;
            for e in fs::read_dir(&dir)? {
                let path = e?.path();
                if path.extension().is_some_and(|x| x == "tmp") && path.is_file() {
                    fs::remove_file(&path)?;
                    here += 1;
                }
            }
            if here > 0 {
                File::open(&dir)?.sync_all()?;
                removed += here;
            }
        }
        Ok(removed)
    }

    /// A store-wide key kept at the top of the directory (`<name>.age`).
    pub fn get_named(&self, name: &str) -> std::io::Result<Option<Vec<u8>>> {
        match fs::read(self.root.join(format!("{name}.age"))) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes a store-wide key durably and atomically.
    pub fn put_named(&self, name: &str, wrapped: &[u8]) -> std::io::Result<()> {
        write_atomic(&self.root.join(format!("{name}.age")), wrapped)
    }

    /// Every pseudonym with a key, one directory at a time.
    pub fn pseudonyms(&self) -> impl Iterator<Item = std::io::Result<Pseudonym>> + '_ {
        let shards = fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .filter(|e| e.as_ref().map_or(true, |e| e.path().is_dir()));
        shards.flat_map(|shard| {
            let entries: Vec<std::io::Result<Pseudonym>> = match shard {
                Err(e) => vec![Err(e)],
                Ok(shard) => match fs::read_dir(shard.path()) {
                    Err(e) => vec![Err(e)],
                    Ok(rd) => rd
                        .filter_map(|e| match e {
                            Err(e) => Some(Err(e)),
                            Ok(e) => Pseudonym::from_hex(&e.file_name().to_string_lossy()).map(Ok),
                        })
                        .collect(),
                },
            };
            entries
        })
    }

    /// Flushes every key file written without `durable` (one `syncfs` of the file system).
    pub fn sync_all(&self) -> std::io::Result<()> {
        let dir = File::open(&self.root)?;
        crate::sys::syncfs(&dir)
    }
}

/// Replaces the file at `path` with `bytes` (mode 0600) atomically and durably: a temporary
/// `<name>.tmp` beside it, fsynced, renamed over it, and the directory fsynced.
pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    super::ledger::sync_parent(path)
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_remove_list() {
        let d = tempfile::tempdir().unwrap();
        let kd = KeyDir::open(&d.path().join("keys")).unwrap();
        let a = Pseudonym([1; 16]);
        let b = Pseudonym([2; 16]);
        kd.put(&a, b"wrapped-a", true).unwrap();
        kd.put(&b, b"wrapped-b", false).unwrap();
        kd.sync_all().unwrap();
        assert_eq!(kd.get(&a).unwrap().unwrap(), b"wrapped-a");
        let mut all: Vec<_> = kd.pseudonyms().map(Result::unwrap).collect();
        all.sort();
        assert_eq!(all, vec![a, b]);
        assert!(kd.remove(&a).unwrap());
        assert!(!kd.remove(&a).unwrap());
        assert!(kd.get(&a).unwrap().is_none());
        kd.put(&b, b"rewrapped", true).unwrap();
        kd.put_named("queue", b"store key").unwrap();
        assert_eq!(kd.get_named("queue").unwrap().unwrap(), b"store key");
        assert_eq!(kd.pseudonyms().count(), 1);
        assert_eq!(kd.get(&b).unwrap().unwrap(), b"rewrapped");
    }

    #[test]
    fn interrupted_writes_leave_no_key_copy() {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyDir::open(dir.path()).unwrap();
        let p = Pseudonym([7; crate::store::crypto::PSEUDONYM_LEN]);
        keys.put(&p, b"wrapped-key", true).unwrap();
        // What a crash between write and rename leaves: the temporary file beside the key, and
        // one of a store-wide key at the top.
        let tmp = keys.path(&p).with_extension("tmp");
        fs::write(&tmp, b"wrapped-key-new").unwrap();
        fs::write(dir.path().join("queue.tmp"), b"x").unwrap();
        assert_eq!(keys.remove_temporaries().unwrap(), 2);
        assert!(!tmp.exists());
        assert_eq!(keys.get(&p).unwrap().as_deref(), Some(&b"wrapped-key"[..]));
        // And a forget removes a temporary copy too.
        fs::write(&tmp, b"wrapped-key-new").unwrap();
        assert!(keys.remove(&p).unwrap());
        assert!(!tmp.exists());
        assert_eq!(keys.pseudonyms().count(), 0);
    }
}
