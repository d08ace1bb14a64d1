//! HTTPS for a console on the studio's network: the admin's certificate, or a self-signed one
//! in `<state_dir>/console-tls/` (key file mode 0600), generated at install (`frontdesk console
//! certificate`, run by the package with the box's host name and addresses) and again by the
//! daemon when it is missing or does not name the configured address; and the certificate's
//! SHA-256 fingerprint that `frontdesk doctor` prints so staff can check what their browser
//! shows on the first visit.

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

/// The names a generated certificate is for: `localhost` and the loopback addresses, this
/// machine's host name (and its `.local` name), the listener's address unless it is a wildcard,
/// the public URL's host, and `extra` (the package's install step passes the box's addresses),
/// each once.
pub fn names(console: &ConsoleConfig, extra: &[String]) -> Vec<String> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Some(host) = host_name() {
        names.push(format!("{host}.local"));
        names.push(host);
    }
    names.extend(configured_names(console));
    names.extend(extra.iter().map(|n| n.trim().to_ascii_lowercase()));
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| !n.is_empty() && seen.insert(n.clone()));
    names
}

/// The names staff reach the console by, as configured: the listener's address (unless a
/// wildcard) and the public URL's host.
fn configured_names(console: &ConsoleConfig) -> Vec<String> {
    let mut names = Vec::new();
    if !console.listen.ip().is_unspecified() {
        names.push(console.listen.ip().to_string());
    }
    if let Some(host) = console
        .public_url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .map(|authority| match authority.strip_prefix('[') {
            // `[::1]:8443`: an IPv6 address in brackets.
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => authority.split(':').next().unwrap_or_default(),
        })
        .filter(|h| !h.is_empty())
    {
        names.push(host.to_ascii_lowercase());
    }
    names
}

/// This machine's host name (the kernel's), lowercase, if it has one.
fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim().to_ascii_lowercase();
    (!name.is_empty() && name != "localhost").then_some(name)
}

/// Writes a self-signed certificate for `names` and its key (mode 0600), replacing what is
/// there.
pub fn generate(names: &[String], cert: &Path, key: &Path) -> anyhow::Result<()> {
    let generated = rcgen::generate_simple_self_signed(names.to_vec())
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
    Ok(())
}

/// Makes sure a generated certificate exists and covers the configured names: generates one
/// when the files are missing (normally at install), and again when the console was moved to
/// an address or host name the old one does not name (its fingerprint then changes). Returns
/// whether it wrote the files.
pub fn ensure_generated(console: &ConsoleConfig, cert: &Path, key: &Path) -> anyhow::Result<bool> {
    if cert.exists() && key.exists() {
        let missing = uncovered(console, cert)?;
        if missing.is_empty() {
            return Ok(false);
        }
        tracing::warn!(names = ?missing, "the generated console certificate does not name the configured address; generating a new one");
        let kept = covered_names(cert)?;
        generate(&names(console, &kept), cert, key)?;
        return Ok(true);
    }
    generate(&names(console, &[]), cert, key)?;
    Ok(true)
}

/// The configured names (listener's address, public URL's host) the certificate at `cert`
/// does not name.
pub fn uncovered(console: &ConsoleConfig, cert: &Path) -> anyhow::Result<Vec<String>> {
    let covered = covered_names(cert)?;
    Ok(configured_names(console)
        .into_iter()
        // Generated certificates name hosts exactly (no wildcards).
        .filter(|n| !covered.contains(n))
        .collect())
}

/// The DNS names and IP addresses the certificate at `cert` names.
fn covered_names(cert: &Path) -> anyhow::Result<Vec<String>> {
    use x509_parser::extensions::GeneralName;
    let pem = std::fs::read(cert).with_context(|| format!("cannot read {}", cert.display()))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem)
        .map_err(|e| anyhow::anyhow!("{}: not PEM: {e}", cert.display()))?;
    let parsed = pem
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("{}: not X.509: {e}", cert.display()))?;
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return Ok(Vec::new());
    };
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => <[u8; 4]>::try_from(*b)
                    .ok()
                    .map(|a| std::net::IpAddr::from(a).to_string()),
                16 => <[u8; 16]>::try_from(*b)
                    .ok()
                    .map(|a| std::net::IpAddr::from(a).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect())
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
        assert!(uncovered(&console, &cert).unwrap().is_empty());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_certificate_names_the_box_and_is_renewed_when_the_console_moves() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        // At install the console listens on loopback; the box's addresses come as extras.
        let installed = ConsoleConfig::default();
        let extra = ["192.168.1.5".to_string(), "fd00::5".to_string()];
        generate(&names(&installed, &extra), &cert, &key).unwrap();
        let named = covered_names(&cert).unwrap();
        for n in ["localhost", "127.0.0.1", "192.168.1.5", "fd00::5"] {
            assert!(named.contains(&n.to_string()), "{n} not in {named:?}");
        }
        // Moved to an address it names: kept.
        let lan = ConsoleConfig {
            listen: "192.168.1.5:8470".parse().unwrap(),
            public_url: "https://empfang.studio.lan:8470/".into(),
            ..ConsoleConfig::default()
        };
        assert_eq!(uncovered(&lan, &cert).unwrap(), vec!["empfang.studio.lan"]);
        let before = fingerprint(&cert).unwrap();
        // A host name it does not name: generated anew, keeping the names it had.
        assert!(ensure_generated(&lan, &cert, &key).unwrap());
        assert_ne!(fingerprint(&cert).unwrap(), before);
        assert!(uncovered(&lan, &cert).unwrap().is_empty());
        assert!(covered_names(&cert)
            .unwrap()
            .contains(&"fd00::5".to_string()));
    }
}
