//! The encrypted store: one fjall database under the state directory.
//!
//! Owns the keyspaces, the store identity and the keys derived from it, the per-customer data keys
//! (wrapped with age, unwrapped into a bounded cache), durable writes with group commit, and the
//! per-customer write serialisation that prevents lost updates. Personal data is sealed
//! ([`crypto`]) before it reaches fjall; row keys carry pseudonyms, never phone numbers.
//!
//! On disk, the store directory holds `db/` (fjall) and `keys/` (the wrapped keys, see
//! [`keydir`] for why they are files and not a keyspace).
//!
//! Submodules: [`crypto`] (sealing and pseudonyms), [`keydir`] (wrapped keys), [`commit`] (group
//! commit), [`customers`] (record types), [`messages`] (history rows), [`moves`] (a customer to a
//! new number or user id), [`queue_rows`] (the sealed layout of queue rows, the quarantine),
//! [`contacts`] (each customer's last contact and bot mode as small clear rows, for listing
//! conversations without reading customer rows), [`retention`] (the sweeper), [`backup`]
//! (backup, restore, identity rotation), [`xref`] (MagicLine ids and trial start times to the
//! customer), [`schedule`] (messages due at a set time: reminders and follow-ups, indexed by
//! due time).

pub mod activity;
pub mod address;
pub mod backup;
pub mod commit;
pub mod contacts;
pub mod crypto;
pub mod customers;
pub mod keydir;
pub mod ledger;
pub mod messages;
pub mod moves;
pub mod queue_rows;
pub mod retention;
pub mod schedule;
pub mod xref;

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use jiff::Timestamp;
use lru::LruCache;

use commit::{GroupCommit, GroupCommitError};
use crypto::{CryptoError, DataKey, Pseudonym, Pseudonymizer, StoreIdentity};
use customers::{Customer, CustomerBody, CustomerMeta};

/// Schema version written by this build. A store with a newer version is refused.
pub const SCHEMA_VERSION: u32 = 1;

/// Names of the keyspaces. They are also part of every sealed value's associated data.
pub mod ks {
    /// Customer rows: clear header and sealed body, keyed by pseudonym.
    pub const CUSTOMERS: &str = "customers";
    /// Conversation history, keyed by pseudonym and sequence number.
    pub const MESSAGES: &str = "messages";
    /// Incoming WhatsApp webhook contents waiting to be processed.
    pub const INBOX: &str = "inbox";
    /// Replies waiting to be sent, and the delivery state of sent messages.
    pub const OUTBOX: &str = "outbox";
    /// Keyed hashes of processed WhatsApp message ids, to drop redelivered ones.
    pub const SEEN: &str = "seen";
    /// First key byte of the outbox rows that record how far a sent message got (see
    /// `crate::whatsapp::queue`); their values start with the time, and retention removes them
    /// with the seen message ids.
    pub const OUTBOX_DELIVERY_PREFIX: u8 = b'd';
    /// First key byte of the outbox rows that keep what a sent message was, for a `failed`
    /// status; retention removes one with the delivery row of its send.
    pub const OUTBOX_SENT_PREFIX: u8 = b's';
    /// MagicLine booking requests and their state, per customer.
    pub const BOOKINGS: &str = "bookings";
    /// The audit log's entries.
    pub const AUDIT: &str = "audit";
    /// Lead-funnel counters per studio day.
    pub const STATS: &str = "stats";
    /// Schema version, store recipient, chain head and other store-wide values.
    pub const META: &str = "meta";
    /// Staff alerts waiting to be delivered (queue-row layout, see `crate::alerts::queue`).
    pub const ALERTS: &str = "alerts";
    /// Messages due at a set time, keyed by due time (see `crate::store::schedule`).
    pub const SCHEDULE: &str = "schedule";
    /// Every keyspace name, in the order of [`Keyspaces::all`](super::Keyspaces::all).
    pub const ALL: [&str; 11] = [
        CUSTOMERS, MESSAGES, INBOX, OUTBOX, SEEN, BOOKINGS, AUDIT, STATS, META, ALERTS, SCHEDULE,
    ];
}

const META_SCHEMA: &[u8] = b"schema_version";
const META_RECIPIENT: &[u8] = b"recipient";
const PSEUDONYM_KEY: &str = "pseudonym";
const QUEUE_KEY: &str = "queue";
const LEDGER_PREFIX: &[u8] = b"forgotten/";
/// Meta rows linking a WhatsApp user id's pseudonym to the customer it belongs to.
const ALIAS_PREFIX: &[u8] = b"alias/";

/// Bound of the store's block cache (data, index and filter blocks read from disk).
pub const BLOCK_CACHE_BYTES: u64 = 32 * 1024 * 1024;
/// How many unwrapped customer keys stay in memory (about 100 bytes each): unwrapping costs an
/// X25519 operation, far more than the rest of a message turn.
const KEY_CACHE_CAPACITY: usize = 65_536;
/// Per-customer writers are serialised through this many striped locks.
const LOCK_STRIPES: usize = 256;

/// Errors of the store. Messages name what failed and never contain personal data.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened.
    #[error("store at {path}: {source}")]
    Open {
        /// The store directory.
        path: PathBuf,
        /// What the storage engine reported.
        #[source]
        source: fjall::Error,
    },
    /// Another process holds the store's lock.
    #[error("store at {0} is locked by another process (is the frontdesk service running? stop it or use the admin socket)")]
    Locked(PathBuf),
    /// The store was written by a newer frontdesk.
    #[error("store at {path} has schema version {found}, this frontdesk understands up to {supported}: upgrade frontdesk")]
    SchemaTooNew {
        /// The store directory.
        path: PathBuf,
        /// The schema version the store has.
        found: u32,
        /// The newest schema version this build reads.
        supported: u32,
    },
    /// The store identity's recipient is not the one the store was created for.
    #[error("the store identity does not belong to the store at {0} (its recipient differs): check the store-identity credential")]
    WrongIdentity(PathBuf),
    /// The storage engine failed.
    #[error("storage engine: {0}")]
    Engine(#[from] fjall::Error),
    /// Sealing or opening failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// A row does not have the expected layout.
    #[error("corrupt {keyspace} row: {what}")]
    Corrupt {
        /// The keyspace of the row.
        keyspace: &'static str,
        /// What is wrong with it.
        what: &'static str,
    },
    /// A write could not be made durable (its fsync failed).
    #[error("could not make the write durable: {0}")]
    Durability(String),
    /// Reading or writing a file failed (key directory, backups).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A backup or a stored document is malformed, or a caller's step inside a write failed.
    #[error("{0}")]
    Format(String),
    /// The forget ledger file cannot be read or written.
    #[error(transparent)]
    Ledger(#[from] ledger::LedgerError),
    /// A row was to be sealed for a customer who has no data key: they were forgotten.
    #[error("the customer has no data key (forgotten); nothing is written about them")]
    NoDataKey,
}

/// Results of the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Handles to every keyspace.
#[derive(Clone)]
pub struct Keyspaces {
    /// See [`ks::CUSTOMERS`].
    pub customers: Keyspace,
    /// See [`ks::MESSAGES`].
    pub messages: Keyspace,
    /// See [`ks::INBOX`].
    pub inbox: Keyspace,
    /// See [`ks::OUTBOX`].
    pub outbox: Keyspace,
    /// See [`ks::SEEN`].
    pub seen: Keyspace,
    /// See [`ks::BOOKINGS`].
    pub bookings: Keyspace,
    /// See [`ks::AUDIT`].
    pub audit: Keyspace,
    /// See [`ks::STATS`].
    pub stats: Keyspace,
    /// See [`ks::META`].
    pub meta: Keyspace,
    /// See [`ks::ALERTS`].
    pub alerts: Keyspace,
    /// See [`ks::SCHEDULE`].
    pub schedule: Keyspace,
}

impl Keyspaces {
    fn open(db: &Database) -> Result<Keyspaces> {
        let open = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default);
        Ok(Keyspaces {
            customers: open(ks::CUSTOMERS)?,
            messages: open(ks::MESSAGES)?,
            inbox: open(ks::INBOX)?,
            outbox: open(ks::OUTBOX)?,
            seen: open(ks::SEEN)?,
            bookings: open(ks::BOOKINGS)?,
            audit: open(ks::AUDIT)?,
            stats: open(ks::STATS)?,
            meta: open(ks::META)?,
            alerts: open(ks::ALERTS)?,
            schedule: open(ks::SCHEDULE)?,
        })
    }

    /// Every keyspace with its name, in a fixed order (backups rely on it).
    pub fn all(&self) -> [(&'static str, &Keyspace); 11] {
        [
            (ks::CUSTOMERS, &self.customers),
            (ks::MESSAGES, &self.messages),
            (ks::INBOX, &self.inbox),
            (ks::OUTBOX, &self.outbox),
            (ks::SEEN, &self.seen),
            (ks::BOOKINGS, &self.bookings),
            (ks::AUDIT, &self.audit),
            (ks::STATS, &self.stats),
            (ks::META, &self.meta),
            (ks::ALERTS, &self.alerts),
            (ks::SCHEDULE, &self.schedule),
        ]
    }
}

/// The open store. Cheap to share behind an `Arc`; all methods are blocking (call them from
/// `spawn_blocking` in async code).
pub struct Store {
    path: PathBuf,
    db: Database,
    ks: Keyspaces,
    keys: keydir::KeyDir,
    /// Bulk loading: writes are not fsynced one by one (see [`Store::start_bulk_load`]).
    bulk_load: std::sync::atomic::AtomicBool,
    identity: Arc<StoreIdentity>,
    pseudonyms: Pseudonymizer,
    queue_key: DataKey,
    commit: GroupCommit,
    key_cache: Mutex<LruCache<Pseudonym, Arc<DataKey>>>,
    stripes: Vec<Mutex<()>>,
    /// The forget ledger file beside the store (see [`ledger`]); set by
    /// [`Store::keep_ledger_at`] for the daemon's store, absent for scratch stores.
    ledger: Option<ledger::LedgerFile>,
    /// Who was just written (see [`activity`]).
    activity: activity::Activity,
}

/// Holding this guard serialises all writers of one customer (see [`Store::lock_customer`]).
pub struct CustomerGuard<'a> {
    _guard: MutexGuard<'a, ()>,
}

impl Store {
    /// Opens (or creates) the store in `dir` with the store identity.
    pub fn open(dir: &Path, identity: StoreIdentity) -> Result<Store> {
        std::fs::create_dir_all(dir)?;
        let keys = keydir::KeyDir::open(&dir.join("keys"))?;
        let db = Database::builder(dir.join("db"))
            .cache_size(BLOCK_CACHE_BYTES)
            // Bounds what a start after a crash replays (and the memory that replay takes).
            .max_journaling_size(64 * 1024 * 1024)
            .manual_journal_persist(true)
            .open()
            .map_err(|e| match e {
                fjall::Error::Locked => StoreError::Locked(dir.to_path_buf()),
                source => StoreError::Open {
                    path: dir.to_path_buf(),
                    source,
                },
            })?;
        let ks = Keyspaces::open(&db)?;
        // fjall's lock is held from here: no other process writes keys while this sweeps.
        let swept = keys.remove_temporaries()?;
        if swept > 0 {
            tracing::info!(files = swept, "removed key files of interrupted writes");
        }
        let identity = Arc::new(identity);
        let (pseudonym_key, queue_key) = match ks.meta.get(META_SCHEMA)? {
            None => Self::initialise(&db, &ks, &keys, &identity)?,
            Some(v) => {
                let found =
                    u32::from_be_bytes(v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                        keyspace: ks::META,
                        what: "schema version",
                    })?);
                if found > SCHEMA_VERSION {
                    return Err(StoreError::SchemaTooNew {
                        path: dir.to_path_buf(),
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
                let unwrap = |name: &str| -> Result<DataKey> {
                    let wrapped = keys.get_named(name)?.ok_or(StoreError::Corrupt {
                        keyspace: ks::META,
                        what: "missing wrapped store key",
                    })?;
                    identity
                        .unwrap(&wrapped)
                        .map_err(|_| StoreError::WrongIdentity(dir.to_path_buf()))
                };
                (unwrap(PSEUDONYM_KEY)?, unwrap(QUEUE_KEY)?)
            }
        };
        let store = Store {
            path: dir.to_path_buf(),
            db,
            ks,
            keys,
            bulk_load: std::sync::atomic::AtomicBool::new(false),
            identity,
            pseudonyms: Pseudonymizer::new(pseudonym_key),
            queue_key,
            commit: GroupCommit::default(),
            key_cache: Mutex::new(LruCache::new(
                NonZeroUsize::new(KEY_CACHE_CAPACITY).expect("non-zero"),
            )),
            stripes: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            ledger: None,
            activity: activity::Activity::default(),
        };
        let written = store.ensure_contact_rows()?;
        if written > 0 {
            tracing::info!(
                customers = written,
                "wrote the contact rows of an older store"
            );
        }
        Ok(store)
    }

    /// The feed of customers whose conversation just changed (the console's live updates).
    pub fn activity(&self) -> &activity::Activity {
        &self.activity
    }

    /// Keeps the forget ledger also in the file at `path` (outside the store directory, so it
    /// outlives the store): every later erasure is appended there before any row is deleted.
    /// Erasures the store knows and the file lacks (a store from before the file existed) are
    /// appended now.
    pub fn keep_ledger_at(&mut self, path: &Path) -> Result<()> {
        let file = ledger::LedgerFile::at(path);
        let known = file.read()?.unwrap_or_default();
        let missing: Vec<(Pseudonym, Timestamp)> = self
            .forget_ledger()?
            .into_iter()
            .filter(|(p, _)| !known.contains_key(p))
            .collect();
        file.append(&missing)?;
        self.ledger = Some(file);
        Ok(())
    }

    fn initialise(
        db: &Database,
        ks: &Keyspaces,
        keys: &keydir::KeyDir,
        identity: &StoreIdentity,
    ) -> Result<(DataKey, DataKey)> {
        let pseudonym_key = DataKey::generate();
        let queue_key = DataKey::generate();
        // Keys first: a crash before the schema row leaves a store that initialises again.
        keys.put_named(PSEUDONYM_KEY, &identity.wrap(&pseudonym_key)?)?;
        keys.put_named(QUEUE_KEY, &identity.wrap(&queue_key)?)?;
        let mut batch = db.batch();
        batch.insert(&ks.meta, META_SCHEMA, SCHEMA_VERSION.to_be_bytes().to_vec());
        // A new store has no customer rows, so every one it gets has its contact row.
        batch.insert(&ks.meta, contacts::CONTACT_ROWS_MARKER, b"1".to_vec());
        batch.insert(
            &ks.meta,
            META_RECIPIENT,
            identity.recipient().to_string().into_bytes(),
        );
        batch.commit()?;
        db.persist(PersistMode::SyncAll)?;
        Ok((pseudonym_key, queue_key))
    }

    /// The store directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Handles to every keyspace.
    pub fn keyspaces(&self) -> &Keyspaces {
        &self.ks
    }

    /// The fjall database (batches, snapshots, persistence).
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The identity that unwraps the store's keys.
    pub fn identity(&self) -> &StoreIdentity {
        &self.identity
    }

    /// The pseudonym of a contact address (phone number or WhatsApp user id) in this store. A
    /// user id that once arrived together with a phone number resolves to that number's
    /// customer ([`Store::link_user_id`]).
    pub fn pseudonym(&self, address: &str) -> Pseudonym {
        let own = self.pseudonyms.of_address(address);
        if address::is_valid_address(address) == Some(address::AddressKind::UserId) {
            match self.alias_of(&own) {
                Ok(Some(linked)) => return linked,
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "reading a user id link failed"),
            }
        }
        own
    }

    /// The customer an event about `address` concerns when WhatsApp also named the contact's
    /// user id (a delivery status's `recipient_id` and `recipient_user_id`): the address's
    /// customer, else the user id's when only that one is known (a contact who wrote without
    /// their number), else the address's pseudonym.
    pub fn pseudonym_matching(&self, address: &str, user_id: Option<&str>) -> Pseudonym {
        let own = self.pseudonym(address);
        let Some(user_id) = user_id.filter(|u| *u != address) else {
            return own;
        };
        let known = |p: &Pseudonym| self.ks.customers.contains_key(p.0).unwrap_or(false);
        if known(&own) {
            return own;
        }
        let by_user_id = self.pseudonym(user_id);
        if known(&by_user_id) {
            by_user_id
        } else {
            own
        }
    }

    /// The pseudonym a user id's own pseudonym is linked to, if any.
    fn alias_of(&self, own: &Pseudonym) -> Result<Option<Pseudonym>> {
        let Some(v) = self.ks.meta.get(meta_key(ALIAS_PREFIX, own))? else {
            return Ok(None);
        };
        let bytes: [u8; crypto::PSEUDONYM_LEN] =
            v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                keyspace: ks::META,
                what: "user id link",
            })?;
        Ok(Some(Pseudonym(bytes)))
    }

    /// Links WhatsApp user id `user_id` to customer `to` in `batch` (a message carried both the
    /// number and the user id), so a later message with the user id alone reaches the same
    /// customer. Does nothing when the user id already has a customer of its own or a link.
    pub fn link_user_id(
        &self,
        user_id: &str,
        to: &Pseudonym,
        batch: &mut fjall::OwnedWriteBatch,
    ) -> Result<bool> {
        let own = self.pseudonyms.of_address(user_id);
        if own == *to
            || address::is_valid_address(user_id) != Some(address::AddressKind::UserId)
            || self.alias_of(&own)?.is_some()
            || self.ks.customers.contains_key(own.0)?
        {
            return Ok(false);
        }
        batch.insert(&self.ks.meta, meta_key(ALIAS_PREFIX, &own), to.0.to_vec());
        Ok(true)
    }

    /// A keyed 16-byte hash for non-phone identifiers (message ids).
    pub fn token_hash(&self, domain: &str, token: &str) -> [u8; crypto::TOKEN_HASH_LEN] {
        self.pseudonyms.of_token(domain, token)
    }

    /// The store-wide queue key: seals staff alert rows, and opens queue rows of the layout
    /// before they were sealed per customer ([`queue_rows`]).
    pub fn queue_key(&self) -> &DataKey {
        &self.queue_key
    }

    /// Total size of the database on disk in bytes.
    pub fn disk_space(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }

    /// Bytes the block cache holds now: it fills with whatever was read, up to
    /// [`BLOCK_CACHE_BYTES`], and is most of the daemon's resident memory once warm.
    pub fn cache_bytes(&self) -> u64 {
        self.db.cache_size()
    }

    /// Serialises writers of one customer; hold it across read-modify-write of that customer.
    pub fn lock_customer(&self, p: &Pseudonym) -> CustomerGuard<'_> {
        let idx = u16::from_be_bytes([p.0[0], p.0[1]]) as usize % self.stripes.len();
        CustomerGuard {
            _guard: self.stripes[idx].lock().expect("stripe lock poisoned"),
        }
    }

    /// Applies a batch and returns once it is durable (fsynced), sharing the fsync with every
    /// concurrent writer.
    pub fn commit_durable(&self, batch: fjall::OwnedWriteBatch) -> Result<()> {
        batch.commit()?;
        if self.bulk_load.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let ticket = self.commit.applied();
        self.wait_durable(ticket)
    }

    /// Waits until every batch applied before `ticket` was issued is durable.
    fn wait_durable(&self, ticket: u64) -> Result<()> {
        self.commit
            .wait_durable(ticket, || self.db.persist(PersistMode::SyncData))
            .map_err(|e| match e {
                GroupCommitError::Sync(e) => StoreError::Durability(e.to_string()),
                GroupCommitError::CoveredByFailedSync => {
                    StoreError::Durability("covered by a failed fsync".into())
                }
            })
    }

    /// Makes everything written so far durable.
    pub fn persist(&self) -> Result<()> {
        let ticket = self.commit.applied();
        self.wait_durable(ticket)
    }

    /// Locks several customers at once (the webhook's write of one post), stripes in ascending
    /// order like [`Store::lock_pair`], so no two writers can deadlock.
    pub fn lock_customers(&self, ps: &[Pseudonym]) -> Vec<CustomerGuard<'_>> {
        let mut stripes: Vec<usize> = ps.iter().map(|p| self.stripe_of(p)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        stripes
            .into_iter()
            .map(|i| CustomerGuard {
                _guard: self.stripes[i].lock().expect("stripe lock poisoned"),
            })
            .collect()
    }

    /// A new write batch.
    pub fn batch(&self) -> fjall::OwnedWriteBatch {
        self.db.batch()
    }

    /// The data key of a customer, if one exists (from the cache or unwrapped from disk).
    pub fn data_key(&self, p: &Pseudonym) -> Result<Option<Arc<DataKey>>> {
        if let Some(k) = self.key_cache.lock().expect("key cache poisoned").get(p) {
            return Ok(Some(k.clone()));
        }
        let Some(wrapped) = self.keys.get(p)? else {
            return Ok(None);
        };
        let key = Arc::new(
            self.identity
                .unwrap(&wrapped)
                .map_err(|_| StoreError::WrongIdentity(self.path.clone()))?,
        );
        self.key_cache
            .lock()
            .expect("key cache poisoned")
            .put(*p, key.clone());
        Ok(Some(key))
    }

    /// The data key of a customer, creating a new wrapped key file when none exists. The key is
    /// durable before any row sealed with it is written, so no row is ever unreadable after a
    /// crash; a key file left without rows by a crash is removed by the retention sweep. Call
    /// with the customer's lock held.
    pub fn data_key_or_create(
        &self,
        p: &Pseudonym,
        _batch: &mut fjall::OwnedWriteBatch,
    ) -> Result<Arc<DataKey>> {
        if let Some(k) = self.data_key(p)? {
            return Ok(k);
        }
        let key = Arc::new(DataKey::generate());
        let durable = !self.bulk_load.load(std::sync::atomic::Ordering::Relaxed);
        self.keys.put(p, &self.identity.wrap(&key)?, durable)?;
        self.key_cache
            .lock()
            .expect("key cache poisoned")
            .put(*p, key.clone());
        Ok(key)
    }

    /// Bulk loading (benchmarks, imports): writes and new key files are not fsynced one by one,
    /// so nothing written is durable until [`Store::finish_bulk_load`] returns.
    pub fn start_bulk_load(&self) {
        self.bulk_load
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Makes every key file and row written during a bulk load durable.
    pub fn finish_bulk_load(&self) -> Result<()> {
        self.keys.sync_all()?;
        self.bulk_load
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.persist()
    }

    fn forget_cached_key(&self, p: &Pseudonym) {
        self.key_cache.lock().expect("key cache poisoned").pop(p);
    }

    /// Reads a customer by pseudonym.
    pub fn customer(&self, p: &Pseudonym) -> Result<Option<Customer>> {
        let Some(value) = self.ks.customers.get(p.0)? else {
            return Ok(None);
        };
        let (meta, sealed) = customers::decode_row(&value).ok_or(StoreError::Corrupt {
            keyspace: ks::CUSTOMERS,
            what: "row header",
        })?;
        let key = self.data_key(p)?.ok_or(StoreError::Corrupt {
            keyspace: ks::CUSTOMERS,
            what: "customer without data key",
        })?;
        let plain = key.open(ks::CUSTOMERS, &p.0, sealed)?;
        let body: CustomerBody =
            serde_json::from_slice(&plain).map_err(|_| StoreError::Corrupt {
                keyspace: ks::CUSTOMERS,
                what: "sealed body",
            })?;
        Ok(Some(Customer {
            pseudonym: *p,
            meta,
            body,
        }))
    }

    /// Reads only the clear header of a customer (no key needed).
    pub fn customer_meta(&self, p: &Pseudonym) -> Result<Option<CustomerMeta>> {
        Ok(self
            .ks
            .customers
            .get(p.0)?
            .and_then(|v| customers::decode_row(&v).map(|(m, _)| m)))
    }

    /// Adds the sealed customer row to `batch` (creating the data key when needed).
    pub fn put_customer(&self, c: &Customer, batch: &mut fjall::OwnedWriteBatch) -> Result<()> {
        let key = self.data_key_or_create(&c.pseudonym, batch)?;
        let body = serde_json::to_vec(&c.body).expect("customer body serialises");
        let sealed = key.seal(ks::CUSTOMERS, &c.pseudonym.0, &body);
        batch.insert(
            &self.ks.customers,
            c.pseudonym.0,
            customers::encode_row(&c.meta, &sealed),
        );
        self.put_contact_rows(&c.pseudonym, &c.meta, batch)?;
        Ok(())
    }

    /// Read-modify-write of one customer, durable on return. `f` gets the current record (or a
    /// new one created from `phone` when absent) and may change it; the change and any extra rows
    /// `f` adds to the batch are committed together. No lost updates: writers of the same
    /// customer are serialised.
    pub fn update_customer<T>(
        &self,
        phone: &str,
        now: Timestamp,
        f: impl FnOnce(&mut Customer, &mut fjall::OwnedWriteBatch, &Self) -> Result<T>,
    ) -> Result<(Customer, T)> {
        let p = self.pseudonym(phone);
        let _guard = self.lock_customer(&p);
        let mut c = match self.customer(&p)? {
            Some(c) => c,
            None => Customer::new(p, phone, now),
        };
        let mut batch = self.batch();
        let out = f(&mut c, &mut batch, self)?;
        self.put_customer(&c, &mut batch)?;
        self.commit_durable(batch)?;
        Ok((c, out))
    }

    /// Like [`Store::update_customer`] for an existing customer known by pseudonym.
    pub fn update_existing<T>(
        &self,
        p: &Pseudonym,
        f: impl FnOnce(&mut Customer, &mut fjall::OwnedWriteBatch, &Self) -> Result<T>,
    ) -> Result<Option<(Customer, T)>> {
        let _guard = self.lock_customer(p);
        let Some(mut c) = self.customer(p)? else {
            return Ok(None);
        };
        let mut batch = self.batch();
        let out = f(&mut c, &mut batch, self)?;
        self.put_customer(&c, &mut batch)?;
        self.commit_durable(batch)?;
        Ok(Some((c, out)))
    }

    /// Iterates the clear headers of all customers, one at a time (never loads all of them).
    pub fn customer_metas(&self) -> impl Iterator<Item = Result<(Pseudonym, CustomerMeta)>> + '_ {
        self.ks.customers.iter().map(|g| {
            let (k, v) = g.into_inner()?;
            let p = Pseudonym::from_key_prefix(&k).ok_or(StoreError::Corrupt {
                keyspace: ks::CUSTOMERS,
                what: "row key",
            })?;
            let (meta, _) = customers::decode_row(&v).ok_or(StoreError::Corrupt {
                keyspace: ks::CUSTOMERS,
                what: "row header",
            })?;
            Ok((p, meta))
        })
    }

    /// Number of customers (approximate for large stores).
    pub fn customer_count(&self) -> usize {
        self.ks.customers.approximate_len()
    }

    /// Forgets customers: deletes every row about them, records them in the forget ledger, and
    /// deletes their wrapped data keys, which makes every copy of their sealed rows unreadable —
    /// in fjall's tables and journal as in any backup (crypto-shredding). Returns how many of
    /// them existed.
    pub fn forget(&self, pseudonyms: &[Pseudonym], now: Timestamp) -> Result<usize> {
        let entries: Vec<(Pseudonym, Timestamp)> = pseudonyms.iter().map(|p| (*p, now)).collect();
        self.forget_as_of(&entries)
    }

    /// [`Store::forget`] with each customer's own erasure time (a restore re-applies erasures
    /// with the times they were made).
    pub fn forget_as_of(&self, entries: &[(Pseudonym, Timestamp)]) -> Result<usize> {
        // The ledger file first: should anything below fail or the process die, the erasure is
        // still on record outside the store and a restore re-applies it.
        if let Some(file) = &self.ledger {
            file.append(entries)?;
        }
        let mut forgotten = 0;
        for (p, now) in entries {
            let (p, now) = (p, *now);
            let _guard = self.lock_customer(p);
            let mut batch = self.batch();
            let existed = self.keys.contains(p) || self.ks.customers.contains_key(p.0)?;
            batch.remove(&self.ks.customers, p.0);
            self.remove_contact_rows(p, &mut batch)?;
            for ks in [&self.ks.messages, &self.ks.bookings] {
                for g in ks.prefix(p.0) {
                    batch.remove(ks, g.key()?);
                }
            }
            // Queue rows are sealed under the key unlinked below: gone from the keyspaces here,
            // unreadable everywhere else (journal, tables, backups) once the key is.
            self.remove_queue_rows(p, &mut batch)?;
            // MagicLine ids and trial times that found this customer.
            self.remove_external(p, &mut batch)?;
            // Scheduled reminders and follow-ups: sealed the same way.
            self.unschedule_customer(&mut batch, p)?;
            // Links of user ids to this customer, and this pseudonym's own link.
            let own_link = meta_key(ALIAS_PREFIX, p);
            for g in self.ks.meta.prefix(ALIAS_PREFIX) {
                let (k, v) = g.into_inner()?;
                if v.as_ref() == &p.0[..] || k.as_ref() == own_link.as_slice() {
                    batch.remove(&self.ks.meta, k);
                }
            }
            batch.insert(
                &self.ks.meta,
                meta_key(LEDGER_PREFIX, p),
                now.to_string().into_bytes(),
            );
            // Rows and ledger first: should the process die before the key is gone, the ledger
            // still names the customer and the next sweep removes the key.
            self.commit_durable(batch)?;
            self.keys.remove(p)?;
            self.forget_cached_key(p);
            // Live views drop the conversation.
            self.activity.touched(p);
            if existed {
                forgotten += 1;
            }
        }
        Ok(forgotten)
    }

    /// Removes key files that no row uses any more: left by a crash between a forget's row
    /// deletion and its key deletion, or between a new key and its first row. A key whose
    /// customer has booking or queue rows but no customer row yet is kept. Returns the count.
    pub fn remove_orphan_keys(&self) -> Result<u64> {
        let mut removed = 0;
        let candidates: Vec<Pseudonym> = self.keys.pseudonyms().collect::<Result<_, _>>()?;
        for p in candidates {
            let _guard = self.lock_customer(&p);
            // History rows are written in the same batch as their customer row; booking rows are
            // not: the booker records a new lead's booking before the turn that asked for it
            // writes the customer row. A key with booking rows is in use.
            // Queue rows neither: the webhook creates a new contact's key for their first inbox
            // row, before any turn has written a customer row.
            let in_use = self.ks.customers.contains_key(p.0)?
                || self.ks.bookings.prefix(p.0).next().is_some()
                || self.has_queue_rows(&p)?
                || self.has_scheduled(&p)?;
            if !in_use {
                self.keys.remove(&p)?;
                self.forget_cached_key(&p);
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Flushes every memtable to tables, so the next open has no journal to replay. Called when
    /// the store is dropped; a crash skips it and the next open replays the journal instead.
    /// Waits at most `FLUSH_WAIT` for the flushes (the data is durable either way).
    pub fn flush(&self) -> Result<()> {
        const FLUSH_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
        self.db.persist(PersistMode::SyncAll)?;
        if !self.path.exists() {
            return Ok(());
        }
        for (_, k) in self.ks.all() {
            k.rotate_memtable()?;
        }
        let deadline = std::time::Instant::now() + FLUSH_WAIT;
        while self.db.outstanding_flushes() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Ok(())
    }

    /// When `p` was last forgotten, from the forget ledger. Read under the customer's lock, it
    /// tells a write that was decided before a forget from one about a person who wrote again.
    pub fn forgotten_at(&self, p: &Pseudonym) -> Result<Option<Timestamp>> {
        Ok(self
            .ks
            .meta
            .get(meta_key(LEDGER_PREFIX, p))?
            .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok()))
    }

    /// Every erasure this store knows: its own ledger rows and the ledger file it keeps.
    pub fn forget_erasures(&self) -> Result<ledger::Erasures> {
        let mut all = match &self.ledger {
            Some(file) => file.read()?.unwrap_or_default(),
            None => ledger::Erasures::new(),
        };
        for (p, at) in self.forget_ledger()? {
            ledger::merge(&mut all, p, at);
        }
        Ok(all)
    }

    /// The erasures recorded in the store's own ledger rows.
    pub fn forget_ledger(&self) -> Result<ledger::Erasures> {
        let mut out = ledger::Erasures::new();
        for g in self.ks.meta.prefix(LEDGER_PREFIX) {
            let (k, v) = g.into_inner()?;
            let at = std::str::from_utf8(&v).ok().and_then(|t| t.parse().ok());
            if let (Some(p), Some(at)) = (meta_key_pseudonym(LEDGER_PREFIX, &k), at) {
                out.insert(p, at);
            }
        }
        Ok(out)
    }
}

/// The pseudonym of a [`meta_key`] with `prefix` (`None`: not such a key).
fn meta_key_pseudonym(prefix: &[u8], key: &[u8]) -> Option<Pseudonym> {
    let hex = std::str::from_utf8(key.strip_prefix(prefix)?).ok()?;
    Pseudonym::from_hex(hex)
}

/// A meta row about one pseudonym: `prefix` followed by the pseudonym in hex.
fn meta_key(prefix: &[u8], p: &Pseudonym) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(p.to_hex().as_bytes());
    key
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!(error = %e, "flushing the store at close failed; the next start replays the journal");
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
