//! Alert e-mails over SMTP (lettre): the message built with lettre's builder, sent over
//! STARTTLS or implicit TLS (rustls, certificates checked against the web PKI roots) to any
//! server off this machine; a plain connection only to a server on loopback.
//!
//! SMTP has no idempotency: a crash after the server accepted a mail and before the worker
//! recorded it sends the mail again on restart. Each alert's mail carries a Message-ID made of
//! the alert's id, the same on every attempt, so mail systems and clients that drop duplicate
//! Message-IDs (most do) show it once.

use std::net::IpAddr;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials as SmtpCredentials;
use lettre::{Message, SmtpTransport, Transport};

use super::queue::Stored;
use super::{render, AlertsConfig, SmtpSecurity};
use crate::secrets::names::{SMTP_PASSWORD, SMTP_USERNAME};
use crate::secrets::{Credentials, Secret};

/// Why an alert e-mail was not sent. Shows the SMTP status code, never the server's text (it
/// can echo addresses).
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The configuration or the message could not be turned into a mail.
    #[error("alert e-mail: {0}")]
    Build(&'static str),
    /// The server refused for good (5xx).
    #[error("SMTP server refused the alert e-mail permanently (status {0})")]
    Permanent(String),
    /// The server refused for now (4xx).
    #[error("SMTP server refused the alert e-mail for now (status {0})")]
    Transient(String),
    /// No conversation with the server (connection, TLS, timeout).
    #[error("SMTP connection failed ({0})")]
    Connection(&'static str),
}

/// Whether `host` is this machine (a plain SMTP connection is allowed only there).
pub fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Sends alert e-mails; built once from `[alerts]` and the SMTP credentials.
pub struct Mailer {
    transport: SmtpTransport,
    from: Mailbox,
    to: Vec<Mailbox>,
    console_url: String,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mailer")
    }
}

impl Mailer {
    /// A mailer for `cfg` (which has `email_to` set and was validated), logging in with the
    /// `smtp-username` / `smtp-password` credentials when they exist.
    pub fn new(cfg: &AlertsConfig, creds: &Credentials) -> Result<Mailer, MailError> {
        let login = match (
            cfg_secret(creds, SMTP_USERNAME)?,
            cfg_secret(creds, SMTP_PASSWORD)?,
        ) {
            (Some(user), Some(pass)) => Some(SmtpCredentials::new(
                user.expose_str()
                    .map_err(|_| MailError::Build("smtp-username is not text"))?
                    .to_string(),
                pass.expose_str()
                    .map_err(|_| MailError::Build("smtp-password is not text"))?
                    .to_string(),
            )),
            (None, None) => None,
            _ => {
                return Err(MailError::Build(
                    "set both smtp-username and smtp-password, or neither",
                ))
            }
        };
        Mailer::with_login(cfg, login)
    }

    fn with_login(cfg: &AlertsConfig, login: Option<SmtpCredentials>) -> Result<Mailer, MailError> {
        let host = cfg.smtp_host.as_str();
        let builder = match cfg.smtp_security {
            SmtpSecurity::Starttls => SmtpTransport::starttls_relay(host)
                .map_err(|_| MailError::Build("smtp_host is not a valid host name"))?,
            SmtpSecurity::Tls => SmtpTransport::relay(host)
                .map_err(|_| MailError::Build("smtp_host is not a valid host name"))?,
            SmtpSecurity::None if is_loopback(host) => SmtpTransport::builder_dangerous(host),
            SmtpSecurity::None => {
                return Err(MailError::Build(
                    "plain SMTP is only allowed to a server on this machine",
                ))
            }
        };
        let mut builder = builder
            .port(cfg.smtp_port)
            .timeout(Some(Duration::from_secs(cfg.smtp_timeout_secs)));
        if let Some(login) = login {
            builder = builder.credentials(login);
        }
        let parse = |a: &str| {
            a.parse::<Mailbox>()
                .map_err(|_| MailError::Build("an alert e-mail address is invalid"))
        };
        Ok(Mailer {
            transport: builder.build(),
            from: parse(&cfg.email_from)?,
            to: cfg
                .email_to
                .iter()
                .map(|a| parse(a))
                .collect::<Result<_, _>>()?,
            console_url: cfg.console_url.clone(),
        })
    }

    /// How many addresses each alert goes to.
    pub fn recipients(&self) -> usize {
        self.to.len()
    }

    /// The e-mail for `alert`, with its stable Message-ID.
    pub fn message(&self, alert: &Stored) -> Result<Message, MailError> {
        let mut builder = Message::builder()
            .message_id(Some(message_id(alert, &self.from)))
            .from(self.from.clone())
            .subject(render::subject(&alert.alert))
            .header(ContentType::TEXT_PLAIN);
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        builder
            .body(render::mail_body(&alert.alert, &self.console_url))
            .map_err(|_| MailError::Build("the message could not be built"))
    }

    /// Sends the e-mail for `alert`. Blocking (one SMTP conversation).
    pub fn send(&self, alert: &Stored) -> Result<(), MailError> {
        let message = self.message(alert)?;
        self.transport
            .send(&message)
            .map(|_| ())
            .map_err(|e| classify(&e))
    }

    /// Connects, greets and logs in without sending anything (`frontdesk doctor --smtp`).
    pub fn check(&self) -> Result<(), MailError> {
        match self.transport.test_connection() {
            Ok(true) => Ok(()),
            Ok(false) => Err(MailError::Connection("the server did not answer NOOP")),
            Err(e) => Err(classify(&e)),
        }
    }
}

fn cfg_secret(creds: &Credentials, name: &'static str) -> Result<Option<Secret>, MailError> {
    match creds.get(name) {
        Ok(Some(s)) => s
            .trimmed()
            .map(Some)
            .map_err(|_| MailError::Build("an SMTP credential is not text")),
        Ok(None) => Ok(None),
        Err(_) => Err(MailError::Build("an SMTP credential cannot be read")),
    }
}

/// `<alert-ID@DOMAIN>`: the alert's id and the sender's domain, the same on every attempt.
pub fn message_id(alert: &Stored, from: &Mailbox) -> String {
    format!("<alert-{}@{}>", alert.id_hex(), from.email.domain())
}

fn classify(e: &lettre::transport::smtp::Error) -> MailError {
    let status = || {
        e.status()
            .map_or_else(|| "none".to_string(), |c| c.to_string())
    };
    if e.is_permanent() {
        MailError::Permanent(status())
    } else if e.is_transient() {
        MailError::Transient(status())
    } else if e.is_timeout() {
        MailError::Connection("timeout")
    } else if e.is_tls() {
        MailError::Connection("TLS")
    } else {
        MailError::Connection("no SMTP conversation")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::queue::{self, Alert, Reason};
    use crate::store::crypto::Pseudonym;

    fn cfg(host: &str, port: u16) -> AlertsConfig {
        AlertsConfig {
            console_url: "https://desk.studio.example".into(),
            email_to: vec!["desk@studio.example".into(), "chef@studio.example".into()],
            email_from: "frontdesk@studio.example".into(),
            smtp_host: host.into(),
            smtp_port: port,
            smtp_security: SmtpSecurity::None,
            smtp_timeout_secs: 5,
            ..AlertsConfig::default()
        }
    }

    fn stored() -> Stored {
        let raised = jiff::Timestamp::now();
        Stored {
            id: queue::new_id(raised),
            stage: queue::MAIL,
            alert: Alert {
                reason: Reason::BookingFailed,
                customer: Some(Pseudonym([3; 16])),
                first_name: Some("Jule".into()),
                raised,
            },
        }
    }

    #[test]
    fn the_message_has_a_stable_id_both_recipients_and_the_link() {
        let mailer = Mailer::with_login(&cfg("127.0.0.1", 25), None).unwrap();
        let alert = stored();
        let a = String::from_utf8(mailer.message(&alert).unwrap().formatted()).unwrap();
        let b = String::from_utf8(mailer.message(&alert).unwrap().formatted()).unwrap();
        let id = format!("Message-ID: <alert-{}@studio.example>", alert.id_hex());
        assert!(a.contains(&id), "{a}");
        assert!(b.contains(&id));
        assert!(a.contains("desk@studio.example") && a.contains("chef@studio.example"));
        assert!(a.contains("Content-Type: text/plain; charset=utf-8"), "{a}");
        // The body (encoded for transport) is checked end to end against a real SMTP server.
    }

    #[test]
    fn plain_smtp_off_this_machine_is_refused_even_if_configured() {
        assert!(matches!(
            Mailer::with_login(&cfg("mail.studio.example", 25), None),
            Err(MailError::Build(_))
        ));
        assert!(is_loopback("localhost") && is_loopback("::1") && is_loopback("127.0.0.2"));
        assert!(!is_loopback("10.0.0.1"));
    }

    #[test]
    fn a_server_that_is_not_there_is_a_connection_error() {
        // A port that was bound and released: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mailer = Mailer::with_login(&cfg("127.0.0.1", port), None).unwrap();
        assert!(matches!(
            mailer.send(&stored()),
            Err(MailError::Connection(_))
        ));
    }
}
