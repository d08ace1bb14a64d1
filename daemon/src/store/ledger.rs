//! The forget ledger file: every erasure, kept *beside* the store rather than in it.
//!
//! The store keeps its own copy of the ledger (meta rows `forgotten/<pseudonym>`), but that copy
//! is lost with the store: restoring a backup onto a replacement box, or after deleting a
//! corrupt store, would otherwise bring back everyone forgotten since the backup was taken. The
//! file lives in the state directory next to `store/`, is appended and fsynced *before* the
//! store deletes anything, is copied next to every backup, and is what `frontdesk store restore`
//! re-applies.
//!
//! Format: one line per erasure, `<pseudonym hex> <RFC 3339 time>`. A pseudonym is a keyed hash
//! of the phone number or user id; without the store's pseudonym key it names nobody.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use jiff::Timestamp;

use super::crypto::Pseudonym;

/// File name of the ledger inside the state directory.
pub const LEDGER_FILE: &str = "forget-ledger";

/// A ledger file that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// Reading or writing the file failed.
    #[error("forget ledger {path}: {source}")]
    Io {
        /// The ledger file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// A line is not `<pseudonym hex> <time>`.
    #[error("forget ledger {path}, line {line}: not a ledger entry")]
    Malformed {
        /// The ledger file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
}

/// Erasures by pseudonym, each with the earliest time it was forgotten (a pseudonym forgotten
/// twice keeps the first time: data written between the two erasures was erased too).
pub type Erasures = BTreeMap<Pseudonym, Timestamp>;

/// The append-only ledger file of one state directory. See the module doc.
pub struct LedgerFile {
    path: PathBuf,
    /// Serialises appends of concurrent forgets, so lines never interleave.
    append: Mutex<()>,
}

impl LedgerFile {
    /// The ledger at `path` (created on the first append).
    pub fn at(path: &Path) -> LedgerFile {
        LedgerFile {
            path: path.to_path_buf(),
            append: Mutex::new(()),
        }
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> LedgerError {
        LedgerError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Appends erasures and fsyncs the file (and, when it was just created, its directory)
    /// before returning.
    pub fn append(&self, entries: &[(Pseudonym, Timestamp)]) -> Result<(), LedgerError> {
        if entries.is_empty() {
            return Ok(());
        }
        let _guard = self.append.lock().unwrap_or_else(|p| p.into_inner());
        let created = !self.path.exists();
        let text = render(entries.iter().map(|(p, at)| (p, at)));
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)
            .map_err(|e| self.io(e))?;
        f.write_all(text.as_bytes()).map_err(|e| self.io(e))?;
        f.sync_all().map_err(|e| self.io(e))?;
        if created {
            sync_parent(&self.path).map_err(|e| self.io(e))?;
        }
        Ok(())
    }

    /// Every erasure in the file; an absent file is `None`.
    pub fn read(&self) -> Result<Option<Erasures>, LedgerError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(e)),
        };
        let mut out = Erasures::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let malformed = || LedgerError::Malformed {
                path: self.path.clone(),
                line: i + 1,
            };
            let (hex, at) = line.split_once(' ').ok_or_else(malformed)?;
            let p = Pseudonym::from_hex(hex).ok_or_else(malformed)?;
            let at: Timestamp = at.trim().parse().map_err(|_| malformed())?;
            merge(&mut out, p, at);
        }
        Ok(Some(out))
    }

    /// Replaces the file with exactly `entries`, atomically and durably.
    pub fn replace(&self, entries: &Erasures) -> Result<(), LedgerError> {
        let _guard = self.append.lock().unwrap_or_else(|p| p.into_inner());
        super::keydir::write_atomic(&self.path, render(entries).as_bytes()).map_err(|e| self.io(e))
    }
}

/// The file's lines for `entries`.
fn render<'a>(entries: impl IntoIterator<Item = (&'a Pseudonym, &'a Timestamp)>) -> String {
    entries
        .into_iter()
        .map(|(p, at)| format!("{} {at}\n", p.to_hex()))
        .collect()
}

/// Adds an erasure, keeping the earliest time for a pseudonym.
pub fn merge(into: &mut Erasures, p: Pseudonym, at: Timestamp) {
    into.entry(p)
        .and_modify(|t| *t = (*t).min(at))
        .or_insert(at);
}

/// fsyncs the directory holding `path`, so a create or rename in it survives a power cut.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: u8) -> Pseudonym {
        Pseudonym::from_hex(&format!("{n:02x}").repeat(crate::store::crypto::PSEUDONYM_LEN))
            .expect("valid hex")
    }

    #[test]
    fn appends_read_back_with_the_earliest_time() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = LedgerFile::at(&dir.path().join(LEDGER_FILE));
        assert!(ledger.read().unwrap().is_none());
        let t1: Timestamp = "2026-11-01T10:00:00Z".parse().unwrap();
        let t2: Timestamp = "2026-11-02T10:00:00Z".parse().unwrap();
        ledger.append(&[(p(1), t2), (p(2), t1)]).unwrap();
        ledger.append(&[(p(1), t1)]).unwrap();
        let read = ledger.read().unwrap().unwrap();
        assert_eq!(read.len(), 2);
        assert_eq!(read[&p(1)], t1);
        assert_eq!(read[&p(2)], t1);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &fs::metadata(ledger.path()).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_damaged_line_is_an_error_with_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LEDGER_FILE);
        let good = format!("{} 2026-11-01T10:00:00Z\n", p(1).to_hex());
        fs::write(&path, format!("{good}garbage\n")).unwrap();
        match LedgerFile::at(&path).read() {
            Err(LedgerError::Malformed { line, .. }) => assert_eq!(line, 2),
            other => panic!("expected a malformed line, got {other:?}"),
        }
    }

    #[test]
    fn replace_writes_exactly_the_entries() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = LedgerFile::at(&dir.path().join(LEDGER_FILE));
        ledger
            .append(&[(p(3), "2026-11-01T10:00:00Z".parse().unwrap())])
            .unwrap();
        let mut all = Erasures::new();
        merge(&mut all, p(4), "2026-11-05T10:00:00Z".parse().unwrap());
        ledger.replace(&all).unwrap();
        assert_eq!(ledger.read().unwrap().unwrap(), all);
        assert!(!dir.path().join("forget-ledger.tmp").exists());
    }
}
