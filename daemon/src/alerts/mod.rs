//! Staff alerts: telling the studio's people that a conversation needs them (a hand-over, a
//! failed booking, a moved trial) or that the WhatsApp sender is in trouble (a rejected token,
//! the spam limit, a reply that could not be delivered).
//!
//! An alert is written in the durable batch of the effect that raises it ([`queue`], by
//! `turn::commit` and the WhatsApp failure handling) and delivered by the [`worker`]: to the
//! configured staff numbers by an approved WhatsApp template, through the outbox and sender like
//! any reply (so retries, the pause on a rejected token and the template's category apply), and
//! by e-mail over SMTP ([`mail`]). Each alert carries a link to the conversation on the staff
//! console and no more personal data than the contact's first name and the reason
//! ([`render`]). `[alerts]` in the configuration ([`AlertsConfig`]) says where alerts go.

pub mod mail;
pub mod queue;
pub mod render;
pub mod worker;

use serde::{Deserialize, Serialize};

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS (port 587); the upgrade is required.
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No encryption: only for a server on this machine (a local relay, tests).
    None,
}

/// `[alerts]`: where staff alerts go. Without recipients nothing is sent (alerts stay journal
/// lines and audit entries).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Base URL of the staff console; each alert links `<console_url>/c/<pseudonym>`.
    pub console_url: String,
    /// Staff WhatsApp numbers (international, digits) that get the alert template.
    pub whatsapp_recipients: Vec<String>,
    /// The approved template sent to them; body parameters: reason, first name, link.
    pub whatsapp_template: Option<String>,
    /// The template's language; empty: `whatsapp.template_language`.
    pub whatsapp_template_language: String,
    /// Addresses that get the alert by e-mail; empty: no e-mail.
    pub email_to: Vec<String>,
    /// The sender address of alert e-mails.
    pub email_from: String,
    /// The SMTP server (host name; TLS certificates are checked against it).
    pub smtp_host: String,
    /// Its port (587 with STARTTLS, 465 with TLS).
    pub smtp_port: u16,
    /// `starttls`, `tls`, or `none` (only for a server on this machine).
    pub smtp_security: SmtpSecurity,
    /// Timeout of one SMTP conversation, in seconds.
    pub smtp_timeout_secs: u64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            console_url: String::new(),
            whatsapp_recipients: Vec::new(),
            whatsapp_template: None,
            whatsapp_template_language: String::new(),
            email_to: Vec::new(),
            email_from: String::new(),
            smtp_host: String::new(),
            smtp_port: 587,
            smtp_security: SmtpSecurity::Starttls,
            smtp_timeout_secs: 30,
        }
    }
}

impl AlertsConfig {
    /// Whether alerts go to staff numbers by WhatsApp.
    pub fn by_whatsapp(&self) -> bool {
        !self.whatsapp_recipients.is_empty()
    }

    /// Whether alerts go by e-mail.
    pub fn by_email(&self) -> bool {
        !self.email_to.is_empty()
    }

    /// Checks the section; the error names the key (without `alerts.`) and what is wrong.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if (self.by_whatsapp() || self.by_email()) && !self.console_url.is_empty() {
            let uri: hyper::Uri = self
                .console_url
                .parse()
                .map_err(|_| ("console_url", "must be an http(s) URL".to_string()))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                return Err(("console_url", "must be an http(s) URL with a host".into()));
            }
        }
        for n in &self.whatsapp_recipients {
            if n.len() < 8 || n.len() > 15 || !n.bytes().all(|b| b.is_ascii_digit()) {
                return Err((
                    "whatsapp_recipients",
                    "each is a phone number in international form, digits only (4915112345678)"
                        .into(),
                ));
            }
        }
        if self.by_whatsapp() && self.whatsapp_template.as_deref().unwrap_or("").is_empty() {
            return Err((
                "whatsapp_template",
                "must name the approved alert template when whatsapp_recipients are set".into(),
            ));
        }
        if self.by_email() {
            self.validate_email()?;
        }
        Ok(())
    }

    fn validate_email(&self) -> Result<(), (&'static str, String)> {
        let mailbox = |s: &str| s.parse::<lettre::message::Mailbox>().is_ok();
        if !self.email_to.iter().all(|a| mailbox(a)) {
            return Err(("email_to", "each must be an e-mail address".into()));
        }
        if !mailbox(&self.email_from) {
            return Err((
                "email_from",
                "must be an e-mail address when email_to is set".into(),
            ));
        }
        if self.smtp_host.is_empty() {
            return Err(("smtp_host", "must be set when email_to is set".into()));
        }
        if self.smtp_security == SmtpSecurity::None && !mail::is_loopback(&self.smtp_host) {
            return Err((
                "smtp_security",
                "`none` only for a server on this machine (localhost, 127.0.0.1, ::1): use \
                 `starttls` or `tls`"
                    .into(),
            ));
        }
        if self.smtp_timeout_secs == 0 {
            return Err(("smtp_timeout_secs", "must be at least 1".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail_cfg() -> AlertsConfig {
        AlertsConfig {
            console_url: "https://desk.studio.example:8443".into(),
            email_to: vec!["desk@studio.example".into()],
            email_from: "frontdesk@studio.example".into(),
            smtp_host: "mail.studio.example".into(),
            ..AlertsConfig::default()
        }
    }

    #[test]
    fn plain_smtp_is_refused_off_this_machine() {
        let mut cfg = mail_cfg();
        assert!(cfg.validate().is_ok());
        cfg.smtp_security = SmtpSecurity::None;
        assert_eq!(cfg.validate().unwrap_err().0, "smtp_security");
        cfg.smtp_host = "127.0.0.1".into();
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn whatsapp_recipients_need_a_template_and_digits() {
        let mut cfg = AlertsConfig {
            whatsapp_recipients: vec!["4915112345678".into()],
            ..AlertsConfig::default()
        };
        assert_eq!(cfg.validate().unwrap_err().0, "whatsapp_template");
        cfg.whatsapp_template = Some("staff_alert".into());
        assert!(cfg.validate().is_ok());
        cfg.whatsapp_recipients = vec!["+49 151 123".into()];
        assert_eq!(cfg.validate().unwrap_err().0, "whatsapp_recipients");
    }

    #[test]
    fn addresses_and_urls_are_checked() {
        let mut cfg = mail_cfg();
        cfg.email_to = vec!["not an address".into()];
        assert_eq!(cfg.validate().unwrap_err().0, "email_to");
        let mut cfg = mail_cfg();
        cfg.console_url = "desk.local".into();
        assert_eq!(cfg.validate().unwrap_err().0, "console_url");
    }
}
