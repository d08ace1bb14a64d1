//! HTTPS for a console on the studio's network: the admin's certificate, or a self-signed one
//! the daemon generates once in `<state_dir>/console-tls/` (key file mode 0600), and the
//! certificate's SHA-256 fingerprint that `frontdesk doctor` prints so staff can check what
//! their browser shows on the first visit.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use sha2::{Digest, Sha256};

use super::ConsoleConfig;
use crate::config::Config;

/// The certificate and key files the console uses: the configured ones, else the generated
/// pair's paths.
pub fn files(cfg: &Config) -> (PathBuf, PathBuf) {
    match (&cfg.console.tls_certificate, &cfg.console.tls_key) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        _ => {
            let dir = cfg.service.state_dir.join("console-tls");
            (dir.join("cert.pem"), dir.join("key.pem"))
        }
    }
}

/// Generates a self-signed certificate for the console's address (and `localhost`) unless the
/// files exist; returns whether it wrote them.
pub fn ensure_generated(console: &ConsoleConfig, cert: &Path, key: &Path) -> anyhow::Result<bool> {
    if cert.exists() && key.exists() {
        return Ok(false);
    }
    let mut names = vec!["localhost".to_string(), console.listen.ip().to_string()];
    if let Some(host) = console
        .public_url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split(['/', ':']).next())
        .filter(|h| !h.is_empty())
    {
        names.push(host.to_string());
    }
    let generated = rcgen::generate_simple_self_signed(names)
        .context("cannot generate the console's certificate")?;
    if let Some(dir) = key.parent() {
        std::fs::create_dir_all(dir)?;
    }
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(key)
            .with_context(|| format!("cannot write {}", key.display()))?;
        f.write_all(generated.key_pair.serialize_pem().as_bytes())?;
        f.sync_all()?;
    }
    std::fs::write(cert, generated.cert.pem())
        .with_context(|| format!("cannot write {}", cert.display()))?;
    Ok(true)
}

/// The TLS server configuration of the console (HTTP/1.1 only).
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs = crate::tunnel::proto::load_certs(cert)?;
    let key = crate::tunnel::proto::load_key(key)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(crate::tunnel::proto::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the console's certificate and key do not match")?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

/// SHA-256 of the first certificate in `cert` (DER), as colon-separated hex pairs.
pub fn fingerprint(cert: &Path) -> anyhow::Result<String> {
    let certs = crate::tunnel::proto::load_certs(cert)?;
    let first = certs.first().context("no certificate in the file")?;
    let digest = Sha256::digest(first.as_ref());
    Ok(digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_certificate_is_kept_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c/cert.pem"), dir.path().join("c/key.pem"));
        let console = ConsoleConfig {
            listen: "192.168.1.5:8470".parse().unwrap(),
            ..ConsoleConfig::default()
        };
        assert!(ensure_generated(&console, &cert, &key).unwrap());
        let first = fingerprint(&cert).unwrap();
        assert_eq!(first.len(), 32 * 3 - 1);
        // A second start keeps the pair, so the fingerprint staff checked stays valid.
        assert!(!ensure_generated(&console, &cert, &key).unwrap());
        assert_eq!(fingerprint(&cert).unwrap(), first);
        server_config(&cert, &key).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
