//! Console accounts: one row per account in the `meta` keyspace (`staff/` + name) holding the
//! role and the argon2id hash of the password (PHC string). A password hash is not customer
//! data, but it never leaves this module: listings, logs and errors name the account only.

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Argon2, PasswordVerifier};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::audit::StaffName;
use crate::store::{self, Store};

const PREFIX: &[u8] = b"staff/";
/// Shorter passwords are refused.
pub const MIN_PASSWORD_CHARS: usize = 10;
/// Longer passwords are refused (argon2 would hash them, but nobody types that much).
const MAX_PASSWORD_CHARS: usize = 256;

/// What an account may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads and answers conversations, hands them back, pauses the assistant.
    Staff,
    /// Everything staff may, and forgets or exports customers.
    Owner,
}

impl Role {
    /// `owner` or `staff`.
    pub fn code(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Staff => "staff",
        }
    }

    /// The German name shown in the console.
    pub fn label_de(self) -> &'static str {
        match self {
            Role::Owner => "Inhaber",
            Role::Staff => "Mitarbeiter",
        }
    }

    /// May forget and export customers and change settings.
    pub fn is_owner(self) -> bool {
        self == Role::Owner
    }
}

/// A stored account.
#[derive(Clone, Serialize, Deserialize)]
pub struct Account {
    /// The account name (also the audit log's actor).
    pub name: StaffName,
    /// What it may do.
    pub role: Role,
    /// argon2id hash of the password, PHC string.
    hash: String,
    /// When the account was created.
    pub created: Timestamp,
    /// When the password was last set.
    pub password_changed: Timestamp,
}

impl std::fmt::Debug for Account {
    // The hash stays out of every log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// What can go wrong with an account change.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// `staff add` for a name that exists.
    #[error("an account with this name exists already")]
    Exists,
    /// A change of an account that does not exist.
    #[error("no account with this name")]
    NotFound,
    /// The password is too short or too long.
    #[error(
        "the password must have between {MIN_PASSWORD_CHARS} and {MAX_PASSWORD_CHARS} characters"
    )]
    WeakPassword,
    /// Removing the last owner would leave nobody who can forget customers.
    #[error("this is the last owner account: add another owner first")]
    LastOwner,
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
}

fn key(name: &StaffName) -> Vec<u8> {
    let mut k = PREFIX.to_vec();
    k.extend_from_slice(name.as_str().as_bytes());
    k
}

fn hash_password(password: &str) -> Result<String, AccountError> {
    let chars = password.chars().count();
    if !(MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&chars) {
        return Err(AccountError::WeakPassword);
    }
    let salt = SaltString::generate(&mut OsRng);
    let hashed = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string());
    crate::sys::release_free_heap();
    Ok(hashed.map_err(|e| store::StoreError::Format(format!("password hash: {e}")))?)
}

fn put(store: &Store, account: &Account) -> Result<(), AccountError> {
    let mut batch = store.batch();
    batch.insert(
        &store.keyspaces().meta,
        key(&account.name),
        serde_json::to_vec(account).expect("accounts serialise"),
    );
    store.commit_durable(batch)?;
    Ok(())
}

/// The account `name`, if it exists.
pub fn get(store: &Store, name: &StaffName) -> store::Result<Option<Account>> {
    Ok(store
        .keyspaces()
        .meta
        .get(key(name))?
        .and_then(|v| serde_json::from_slice(&v).ok()))
}

/// Every account, by name.
pub fn list(store: &Store) -> store::Result<Vec<Account>> {
    let mut out = Vec::new();
    for g in store.keyspaces().meta.prefix(PREFIX) {
        let (_, v) = g.into_inner()?;
        if let Ok(a) = serde_json::from_slice::<Account>(&v) {
            out.push(a);
        }
    }
    Ok(out)
}

/// Creates account `name` with `role` and `password`.
pub fn add(
    store: &Store,
    name: &StaffName,
    role: Role,
    password: &str,
) -> Result<(), AccountError> {
    if get(store, name)?.is_some() {
        return Err(AccountError::Exists);
    }
    let now = Timestamp::now();
    put(
        store,
        &Account {
            name: name.clone(),
            role,
            hash: hash_password(password)?,
            created: now,
            password_changed: now,
        },
    )
}

/// Sets a new password (and, when given, a new role) for account `name`.
pub fn update(
    store: &Store,
    name: &StaffName,
    password: Option<&str>,
    role: Option<Role>,
) -> Result<Account, AccountError> {
    let mut account = get(store, name)?.ok_or(AccountError::NotFound)?;
    if let Some(password) = password {
        account.hash = hash_password(password)?;
        account.password_changed = Timestamp::now();
    }
    if let Some(role) = role {
        if account.role.is_owner() && !role.is_owner() && owners(store)? <= 1 {
            return Err(AccountError::LastOwner);
        }
        account.role = role;
    }
    put(store, &account)?;
    Ok(account)
}

fn owners(store: &Store) -> store::Result<usize> {
    Ok(list(store)?.iter().filter(|a| a.role.is_owner()).count())
}

/// Removes account `name`; returns its role. The last owner stays.
pub fn remove(store: &Store, name: &StaffName) -> Result<Role, AccountError> {
    let account = get(store, name)?.ok_or(AccountError::NotFound)?;
    if account.role.is_owner() && owners(store)? <= 1 {
        return Err(AccountError::LastOwner);
    }
    let mut batch = store.batch();
    batch.remove(&store.keyspaces().meta, key(name));
    store.commit_durable(batch)?;
    Ok(account.role)
}

/// A hash of no password, verified when the account does not exist, so a wrong name takes as
/// long as a wrong password and does not tell which accounts exist.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(b"no account has this password", &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

/// Whether `password` is `account`'s (blocking: argon2id takes tens of milliseconds). With no
/// account, a decoy hash is checked and the answer is no.
pub fn verify(account: Option<&Account>, password: &str) -> bool {
    let hash: &str = match account {
        Some(a) => &a.hash,
        None => decoy_hash(),
    };
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let ok = Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok();
    // The work area is freed; without this the daemon would keep its pages resident.
    crate::sys::release_free_heap();
    ok && account.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::crypto::StoreIdentity;

    fn name(s: &str) -> StaffName {
        StaffName::parse(s).unwrap()
    }

    #[test]
    fn accounts_are_added_checked_changed_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreIdentity::generate()).unwrap();
        add(&store, &name("anna"), Role::Owner, "correct horse battery").unwrap();
        add(&store, &name("ben"), Role::Staff, "another good one").unwrap();
        assert!(matches!(
            add(&store, &name("ben"), Role::Staff, "another good one"),
            Err(AccountError::Exists)
        ));
        assert!(matches!(
            add(&store, &name("carl"), Role::Staff, "short"),
            Err(AccountError::WeakPassword)
        ));
        let anna = get(&store, &name("anna")).unwrap();
        assert!(verify(anna.as_ref(), "correct horse battery"));
        assert!(!verify(anna.as_ref(), "correct horse battery!"));
        assert!(!verify(None, "correct horse battery"));
        // The hash is a real argon2id PHC string, and never in Debug output.
        assert!(anna.as_ref().unwrap().hash.starts_with("$argon2id$"));
        assert!(!format!("{anna:?}").contains("argon2"));

        update(&store, &name("ben"), Some("a new password"), None).unwrap();
        let ben = get(&store, &name("ben")).unwrap();
        assert!(verify(ben.as_ref(), "a new password"));
        assert!(!verify(ben.as_ref(), "another good one"));

        assert!(matches!(
            remove(&store, &name("anna")),
            Err(AccountError::LastOwner)
        ));
        assert!(matches!(
            update(&store, &name("anna"), None, Some(Role::Staff)),
            Err(AccountError::LastOwner)
        ));
        assert_eq!(remove(&store, &name("ben")).unwrap(), Role::Staff);
        assert!(get(&store, &name("ben")).unwrap().is_none());
        let names: Vec<String> = list(&store)
            .unwrap()
            .into_iter()
            .map(|a| a.name.to_string())
            .collect();
        assert_eq!(names, ["anna"]);
    }

    #[test]
    fn account_names_are_logins_not_free_text() {
        for ok in ["anna", "b.schmidt", "front-desk_2"] {
            assert!(StaffName::parse(ok).is_some(), "{ok}");
        }
        for bad in [
            "",
            "Anna",
            "2anna",
            "anna schmidt",
            "anna@studio",
            &"a".repeat(33),
        ] {
            assert!(StaffName::parse(bad).is_none(), "{bad}");
        }
    }
}
