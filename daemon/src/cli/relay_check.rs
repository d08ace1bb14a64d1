//! `frontdesk relay check`: validates the relay's configuration file and its certificate before
//! the relay (or a reload) uses them: the file parses and its values hold, the key belongs to the
//! certificate, the certificate's names cover every box host (a wildcard stands for exactly one
//! left-most label, RFC 6125 §6.4.3), and it is valid now and for the next three weeks. Same
//! report style and exit codes as `frontdesk doctor`.

use std::path::Path;

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

use super::doctor_cmd::{Check, Mark, Report};
use crate::tunnel::RelayConfig;

/// A certificate expiring within this many days is reported (renewal clients renew at 30).
const WARN_DAYS: i64 = 21;

fn check(name: &'static str, mark: Mark, detail: impl Into<String>, hint: Option<&str>) -> Check {
    Check {
        name,
        mark,
        detail: detail.into(),
        hint: hint.map(str::to_owned),
    }
}

/// What `relay check` needs from the end-entity certificate.
struct Leaf {
    dns_names: Vec<String>,
    not_before: i64,
    not_after: i64,
}

fn parse_leaf(der: &CertificateDer<'_>) -> Result<Leaf, String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| format!("not X.509: {e}"))?;
    let dns_names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(name) => Some(name.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(format!("unreadable subjectAltName: {e}")),
    };
    Ok(Leaf {
        dns_names,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// Whether the certificate name `pattern` covers `host` (both lowercase): equal, or `*.rest`
/// where `host` is one label followed by `.rest`. A wildcard needs at least two labels after it
/// and stands for exactly one whole label (`*.example.com` covers `a.example.com`, neither
/// `example.com` nor `a.b.example.com`).
pub(crate) fn name_covers(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim_end_matches('.');
    let host = host.trim_end_matches('.');
    match pattern.strip_prefix("*.") {
        None => !pattern.contains('*') && pattern == host,
        Some(rest) => {
            if rest.contains('*') || !rest.contains('.') {
                return false;
            }
            match host.split_once('.') {
                Some((label, host_rest)) => !label.is_empty() && host_rest == rest,
                None => false,
            }
        }
    }
}

fn date(ts: i64) -> String {
    jiff::Timestamp::from_second(ts)
        .map(|t| t.strftime("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|_| ts.to_string())
}

/// Runs the checks on `path` as of `now` (seconds since the epoch).
pub fn diagnose(path: &Path, now: i64) -> Report {
    let mut report = Report::default();
    let cfg = match RelayConfig::load(path) {
        Ok(cfg) => cfg,
        Err(e) => {
            report.checks.push(check(
                "config",
                Mark::Fail,
                e.to_string(),
                Some("fix the file; /usr/share/frontdesk/relay.toml documents every key"),
            ));
            return report;
        }
    };
    let boxes = cfg.boxes.len();
    report.checks.push(check(
        "config",
        if boxes == 0 { Mark::Warn } else { Mark::Pass },
        format!(
            "{}: public {}, tunnel {}, {boxes} box{}",
            path.display(),
            cfg.public_listen,
            cfg.tunnel_listen,
            if boxes == 1 { "" } else { "es" }
        ),
        (boxes == 0).then_some("add a [[box]] entry per studio box (frontdesk relay new-token)"),
    ));
    check_certificate(&cfg, now, &mut report.checks);
    report
}

fn check_certificate(cfg: &RelayConfig, now: i64, out: &mut Vec<Check>) {
    let chain = match crate::tunnel::proto::load_certs(&cfg.cert_file) {
        Ok(chain) => chain,
        Err(e) => {
            out.push(check(
                "certificate",
                Mark::Fail,
                e.to_string(),
                Some(
                    "cert_file must be the full PEM chain your ACME client writes (fullchain.pem)",
                ),
            ));
            return;
        }
    };
    let parsed = match chain.first() {
        Some(first) => parse_leaf(first),
        None => Err("no certificate".to_owned()),
    };
    let leaf = match parsed {
        Ok(leaf) => leaf,
        Err(e) => {
            out.push(check(
                "certificate",
                Mark::Fail,
                format!("{}: {e}", cfg.cert_file.display()),
                None,
            ));
            return;
        }
    };
    out.push(check(
        "certificate",
        Mark::Pass,
        format!(
            "{}: {} certificate{}, names {}",
            cfg.cert_file.display(),
            chain.len(),
            if chain.len() == 1 { "" } else { "s" },
            if leaf.dns_names.is_empty() {
                "(none)".to_owned()
            } else {
                leaf.dns_names.join(", ")
            }
        ),
        None,
    ));
    out.push(check_key(cfg, chain));
    let uncovered: Vec<&str> = cfg
        .boxes
        .iter()
        .map(|b| b.host.as_str())
        .filter(|host| !leaf.dns_names.iter().any(|n| name_covers(n, host)))
        .collect();
    out.push(if uncovered.is_empty() {
        check(
            "names",
            Mark::Pass,
            format!("every box host is covered ({})", cfg.boxes.len()),
            None,
        )
    } else {
        check(
            "names",
            Mark::Fail,
            format!("not covered: {}", uncovered.join(", ")),
            Some("request a certificate that lists each box host, or a wildcard one label above them"),
        )
    });
    out.push(check_validity(&leaf, now));
}

fn check_key(cfg: &RelayConfig, chain: Vec<CertificateDer<'static>>) -> Check {
    let key = match crate::tunnel::proto::load_key(&cfg.key_file) {
        Ok(key) => key,
        Err(e) => return check("key", Mark::Fail, e.to_string(), None),
    };
    let provider = crate::tunnel::proto::provider();
    let signing = match provider.key_provider.load_private_key(key) {
        Ok(signing) => signing,
        Err(e) => {
            return check(
                "key",
                Mark::Fail,
                format!("{}: {e}", cfg.key_file.display()),
                None,
            )
        }
    };
    match rustls::sign::CertifiedKey::new(chain, signing).keys_match() {
        Ok(()) => check(
            "key",
            Mark::Pass,
            format!("{} belongs to the certificate", cfg.key_file.display()),
            None,
        ),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => check(
            "key",
            Mark::Warn,
            format!("{}: cannot compare with the certificate", cfg.key_file.display()),
            None,
        ),
        Err(e) => check(
            "key",
            Mark::Fail,
            format!("{} does not belong to the certificate: {e}", cfg.key_file.display()),
            Some("point key_file at the key the ACME client wrote with this certificate (privkey.pem)"),
        ),
    }
}

fn check_validity(leaf: &Leaf, now: i64) -> Check {
    if now < leaf.not_before {
        return check(
            "expiry",
            Mark::Fail,
            format!("not valid before {}", date(leaf.not_before)),
            Some("check the server's clock"),
        );
    }
    if now >= leaf.not_after {
        return check(
            "expiry",
            Mark::Fail,
            format!("expired {}", date(leaf.not_after)),
            Some("renew it with your ACME client, then: systemctl reload frontdesk-relay"),
        );
    }
    let days = (leaf.not_after - now) / 86_400;
    let detail = format!("valid until {} ({days} days)", date(leaf.not_after));
    if days < WARN_DAYS {
        check(
            "expiry",
            Mark::Warn,
            detail,
            Some("renewal is overdue: check the ACME client's timer and its reload hook"),
        )
    } else {
        check("expiry", Mark::Pass, detail, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_exactly_one_left_most_label() {
        assert!(name_covers("a.relay.example", "a.relay.example"));
        assert!(name_covers("*.relay.example", "studio-1.relay.example"));
        assert!(!name_covers("*.relay.example", "relay.example"));
        assert!(!name_covers("*.relay.example", "a.b.relay.example"));
        assert!(
            !name_covers("*.example", "a.example"),
            "wildcard over a TLD"
        );
        assert!(!name_covers("a*.relay.example", "ab.relay.example"));
        assert!(!name_covers("*.*.example", "a.b.example"));
        assert!(!name_covers("b.relay.example", "a.relay.example"));
    }

    const DAY: i64 = 86_400;

    /// Writes a relay.toml for `hosts` and a certificate for `names` valid from `from` to `to`
    /// (days relative to 2027-01-01); `other_key` writes a key that is not the certificate's.
    fn setup(
        hosts: &[&str],
        names: &[&str],
        from: i64,
        to: i64,
        other_key: bool,
    ) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let base = rcgen::date_time_ymd(2027, 1, 1);
        params.not_before = base + time_days(from);
        params.not_after = base + time_days(to);
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
        let written = if other_key {
            rcgen::KeyPair::generate().unwrap()
        } else {
            key
        };
        std::fs::write(dir.path().join("key.pem"), written.serialize_pem()).unwrap();
        let mut toml = format!(
            "public_listen = \"0.0.0.0:443\"\ntunnel_listen = \"0.0.0.0:7443\"\n\
             cert_file = \"{d}/cert.pem\"\nkey_file = \"{d}/key.pem\"\n",
            d = dir.path().display()
        );
        for (i, h) in hosts.iter().enumerate() {
            toml.push_str(&format!(
                "[[box]]\nhost = \"{h}\"\ntoken_sha256 = \"{:064x}\"\n",
                i + 1
            ));
        }
        std::fs::write(dir.path().join("relay.toml"), toml).unwrap();
        dir
    }

    fn time_days(days: i64) -> std::time::Duration {
        std::time::Duration::from_secs(u64::try_from(days.abs() * DAY).unwrap())
    }

    fn run(dir: &tempfile::TempDir, now_days: i64) -> Report {
        let base = jiff::Timestamp::from_second(1_798_761_600).unwrap(); // 2027-01-01T00:00Z
        diagnose(
            &dir.path().join("relay.toml"),
            base.as_second() + now_days * DAY,
        )
    }

    fn mark(report: &Report, name: &str) -> Mark {
        report.checks.iter().find(|c| c.name == name).unwrap().mark
    }

    #[test]
    fn a_good_setup_passes_every_check() {
        let dir = setup(
            &["a.relay.example", "b.relay.example"],
            &["*.relay.example"],
            0,
            90,
            false,
        );
        let report = run(&dir, 10);
        for c in &report.checks {
            assert_eq!(c.mark, Mark::Pass, "{c}");
        }
        assert_eq!(report.exit_code(), crate::cli::exit::OK);
    }

    #[test]
    fn expiry_warns_under_21_days_and_fails_outside_validity() {
        let dir = setup(&["a.relay.example"], &["a.relay.example"], 0, 90, false);
        assert_eq!(mark(&run(&dir, 75), "expiry"), Mark::Warn);
        assert_eq!(run(&dir, 75).exit_code(), crate::cli::exit::OK);
        assert_eq!(mark(&run(&dir, 91), "expiry"), Mark::Fail);
        assert_eq!(run(&dir, 91).exit_code(), crate::cli::exit::FAILURE);
        assert_eq!(mark(&run(&dir, -1), "expiry"), Mark::Fail);
    }

    #[test]
    fn uncovered_hosts_and_a_foreign_key_fail() {
        let dir = setup(
            &["a.relay.example", "x.y.relay.example", "other.example"],
            &["*.relay.example"],
            0,
            90,
            true,
        );
        let report = run(&dir, 10);
        let names = report.checks.iter().find(|c| c.name == "names").unwrap();
        assert_eq!(names.mark, Mark::Fail);
        assert!(names.detail.contains("x.y.relay.example"), "{names}");
        assert!(names.detail.contains("other.example"), "{names}");
        assert!(!names.detail.contains("a.relay.example"), "{names}");
        assert_eq!(mark(&report, "key"), Mark::Fail);
        assert_eq!(report.exit_code(), crate::cli::exit::FAILURE);
    }

    #[test]
    fn a_broken_file_fails_config_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("relay.toml"), "public_listen = 5\n").unwrap();
        let report = diagnose(&dir.path().join("relay.toml"), 0);
        assert_eq!(report.checks.len(), 1);
        assert_eq!(mark(&report, "config"), Mark::Fail);
        assert_eq!(report.exit_code(), crate::cli::exit::FAILURE);
    }
}
