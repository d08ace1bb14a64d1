//! Secrets: the `Secret` type that never prints its value, and loading of systemd credentials.
//!
//! Secrets arrive as files in `$CREDENTIALS_DIRECTORY` (systemd's `LoadCredential=` /
//! `LoadCredentialEncrypted=`), or, on a development machine, in the directory named by
//! `service.credentials_dir`. They are never read from the TOML configuration.

use std::fmt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// Names of the credentials frontdesk reads.
pub mod names {
    /// The age identity that unwraps the store's keys.
    pub const STORE_IDENTITY: &str = "store-identity";
    /// The Meta app secret that signs webhook requests.
    pub const WHATSAPP_APP_SECRET: &str = "whatsapp-app-secret";
    /// The Graph API access token (a system user's permanent token).
    pub const WHATSAPP_TOKEN: &str = "whatsapp-token";
    /// The token Meta must send when it subscribes the webhook.
    pub const WHATSAPP_VERIFY_TOKEN: &str = "whatsapp-verify-token";
    /// The MagicLine Open API key.
    pub const MAGICLINE_API_KEY: &str = "magicline-api-key";
    /// The key MagicLine sends in `x-api-key` with its webhook calls (optional; without it
    /// the MagicLine webhook is off).
    pub const MAGICLINE_WEBHOOK_KEY: &str = "magicline-webhook-key";
    /// The token this box shows the relay.
    pub const TUNNEL_TOKEN: &str = "tunnel-token";
    /// The user name at the SMTP server that sends staff alert e-mails (optional).
    pub const SMTP_USERNAME: &str = "smtp-username";
    /// The password at the SMTP server (with `smtp-username`).
    pub const SMTP_PASSWORD: &str = "smtp-password";
    /// Every credential name (`frontdesk doctor` checks them all).
    pub const ALL: [&str; 9] = [
        STORE_IDENTITY,
        WHATSAPP_APP_SECRET,
        WHATSAPP_TOKEN,
        WHATSAPP_VERIFY_TOKEN,
        MAGICLINE_API_KEY,
        MAGICLINE_WEBHOOK_KEY,
        TUNNEL_TOKEN,
        SMTP_USERNAME,
        SMTP_PASSWORD,
    ];
}

/// A secret value. Debug and Display print `***`; the bytes are zeroized on drop.
#[derive(Clone)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    /// Wraps `bytes`; they are zeroized when the secret is dropped.
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(Zeroizing::new(bytes))
    }

    /// The raw bytes. Call sites should pass them straight to the consumer.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The same secret without the whitespace around it: credential files are written by hand
    /// or by `echo`, and a trailing newline in, say, the app secret would make every webhook
    /// signature fail.
    pub fn trimmed(&self) -> Result<Secret, CredentialError> {
        Ok(Secret::new(self.expose_str()?.as_bytes().to_vec()))
    }

    /// The value as text (credential files hold text), trimmed of surrounding whitespace.
    pub fn expose_str(&self) -> Result<&str, CredentialError> {
        std::str::from_utf8(&self.0)
            .map(str::trim)
            .map_err(|_| CredentialError::NotText)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Why a credential could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The credential file does not exist.
    #[error("credential {name:?} is missing: expected the file {path} (provide it with systemd-creds, see `frontdesk doctor`)")]
    Missing {
        /// The credential's name.
        name: String,
        /// Where the file was expected.
        path: PathBuf,
    },
    /// Neither `$CREDENTIALS_DIRECTORY` nor `service.credentials_dir` names a directory.
    #[error("no credentials directory: $CREDENTIALS_DIRECTORY is unset and service.credentials_dir is not configured")]
    NoDirectory,
    /// The file exists but cannot be read.
    #[error("credential {name:?} at {path} cannot be read: {source}")]
    Unreadable {
        /// The credential's name.
        name: String,
        /// The credential file.
        path: PathBuf,
        /// Why reading failed.
        #[source]
        source: std::io::Error,
    },
    /// The file holds only whitespace; the credential's name.
    #[error("credential {0:?} is empty")]
    Empty(String),
    /// The value is not UTF-8 text.
    #[error("credential is not valid UTF-8 text")]
    NotText,
}

/// Where credentials are read from.
#[derive(Clone, Debug)]
pub struct Credentials {
    dir: Option<PathBuf>,
}

impl Credentials {
    /// `$CREDENTIALS_DIRECTORY` when set (the service), else `fallback` (development).
    pub fn discover(fallback: Option<&Path>) -> Credentials {
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY")
            .map(PathBuf::from)
            .or_else(|| fallback.map(Path::to_path_buf));
        Credentials { dir }
    }

    /// Credentials from an explicit directory.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Credentials {
        Credentials {
            dir: Some(dir.into()),
        }
    }

    /// The directory credentials are read from, if there is one.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Reads a credential; `Ok(None)` when the file does not exist.
    pub fn get(&self, name: &str) -> Result<Option<Secret>, CredentialError> {
        let dir = self.dir.as_ref().ok_or(CredentialError::NoDirectory)?;
        let path = dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => {
                Err(CredentialError::Empty(name.to_string()))
            }
            Ok(bytes) => Ok(Some(Secret::new(bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CredentialError::Unreadable {
                name: name.to_string(),
                path,
                source,
            }),
        }
    }

    /// Reads a credential that must exist.
    pub fn require(&self, name: &str) -> Result<Secret, CredentialError> {
        self.get(name)?.ok_or_else(|| CredentialError::Missing {
            name: name.to_string(),
            path: self
                .dir
                .as_deref()
                .unwrap_or(Path::new("$CREDENTIALS_DIRECTORY"))
                .join(name),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new(b"hunter2".to_vec());
        assert_eq!(format!("{s:?} {s}"), "*** ***");
        assert_eq!(s.expose_str().unwrap(), "hunter2");
    }

    #[test]
    fn credentials_from_dir() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("whatsapp-token"), "tok\n").unwrap();
        std::fs::write(d.path().join("empty"), "\n").unwrap();
        let c = Credentials::in_dir(d.path());
        assert_eq!(
            c.require("whatsapp-token").unwrap().expose_str().unwrap(),
            "tok"
        );
        assert!(c.get("magicline-api-key").unwrap().is_none());
        let err = c.require("magicline-api-key").unwrap_err().to_string();
        assert!(err.contains("magicline-api-key"), "{err}");
        assert!(matches!(c.get("empty"), Err(CredentialError::Empty(_))));
    }

    #[test]
    fn trimmed_drops_the_newline_echo_leaves() {
        let s = Secret::new(b"app-secret\n".to_vec());
        assert_eq!(s.trimmed().unwrap().expose(), b"app-secret");
        assert!(Secret::new(vec![0xff, 0xfe]).trimmed().is_err());
    }
}
