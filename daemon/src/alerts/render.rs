//! What an alert says: the German reason, the link to the conversation on the staff console,
//! the contact's first name when known, and nothing else about the person (no number, no
//! message text). The mail body is a few lines of plain text, so it is formatted here rather
//! than by a template engine; the WhatsApp alert is the approved template with three body
//! parameters.

use super::queue::{Alert, Reason};

/// What staff read for `reason`.
pub fn reason_de(reason: Reason) -> &'static str {
    match reason {
        Reason::Complaint => "Beschwerde: das Gespräch wurde an euch übergeben",
        Reason::Cancellation => "Terminabsage gewünscht: das Gespräch wurde an euch übergeben",
        Reason::ContractQuestion => {
            "Frage zu Vertrag oder Zahlung: das Gespräch wurde an euch übergeben"
        }
        Reason::HealthQuestion => "Gesundheitsfrage: das Gespräch wurde an euch übergeben",
        Reason::PersonRequested => {
            "Wunsch nach einem Menschen: das Gespräch wurde an euch übergeben"
        }
        Reason::MemberAppointment => {
            "Terminwunsch eines Mitglieds: das Gespräch wurde an euch übergeben"
        }
        Reason::TurnFailed => {
            "Nachrichten konnten nicht beantwortet werden: das Gespräch wurde an euch übergeben"
        }
        Reason::BookingFailed => "Buchung fehlgeschlagen: bitte nachfassen",
        Reason::InvalidCustomerData => {
            "Buchung fehlgeschlagen: MagicLine lehnt die Kontaktdaten ab (z. B. die E-Mail-Adresse); \
             der Kontakt wurde gebeten, sie zu korrigieren"
        }
        Reason::Rescheduled => {
            "Probetraining verschoben: bitte den alten Termin in MagicLine stornieren"
        }
        Reason::SenderPaused => {
            "WhatsApp-Versand pausiert: Meta hat den Zugangsschlüssel abgelehnt, Antworten warten"
        }
        Reason::SpamLimited => "WhatsApp-Versand gebremst: Spam-Limit von Meta erreicht",
        Reason::ReplyUndelivered => {
            "Eine Antwort konnte nicht zugestellt werden: bitte Kontakt aufnehmen"
        }
        Reason::AlertUndelivered => {
            "Eine WhatsApp-Benachrichtigung ans Team kam nicht an: bitte die Vorlage in WhatsApp \
             Manager prüfen"
        }
    }
}

/// The link to the conversation, or to the console's start page for an alert about no one.
/// Empty when no console URL is configured.
pub fn link(console_url: &str, alert: &Alert) -> String {
    let base = console_url.trim_end_matches('/');
    if base.is_empty() {
        return String::new();
    }
    match &alert.customer {
        Some(p) => format!("{base}/c/{}", p.to_hex()),
        None => format!("{base}/"),
    }
}

/// The first name as shown, or a dash when unknown. Line breaks and runs of spaces are
/// flattened (a WhatsApp template parameter allows neither, and a mail header must not break).
fn first_name(alert: &Alert) -> String {
    let name = alert
        .first_name
        .as_deref()
        .map(|n| n.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|n| !n.is_empty());
    name.map_or_else(|| "–".to_string(), |n| n.chars().take(40).collect())
}

/// The mail's subject line.
pub fn subject(alert: &Alert) -> String {
    let short = match alert.reason {
        Reason::Complaint
        | Reason::Cancellation
        | Reason::ContractQuestion
        | Reason::HealthQuestion
        | Reason::PersonRequested
        | Reason::MemberAppointment
        | Reason::TurnFailed => "Übergabe",
        Reason::BookingFailed => "Buchung fehlgeschlagen",
        Reason::InvalidCustomerData => "Kontaktdaten abgelehnt",
        Reason::Rescheduled => "Probetraining verschoben",
        Reason::SenderPaused => "WhatsApp-Versand pausiert",
        Reason::SpamLimited => "WhatsApp-Versand gebremst",
        Reason::ReplyUndelivered => "Antwort nicht zugestellt",
        Reason::AlertUndelivered => "WhatsApp-Benachrichtigung nicht zugestellt",
    };
    match alert.customer {
        Some(_) => format!("frontdesk: {short} ({})", first_name(alert)),
        None => format!("frontdesk: {short}"),
    }
}

/// The mail's plain-text body.
pub fn mail_body(alert: &Alert, console_url: &str) -> String {
    let mut body = String::from("Hallo,\n\n");
    body.push_str(reason_de(alert.reason));
    body.push_str(".\n\n");
    if alert.customer.is_some() {
        body.push_str(&format!("Kontakt: {}\n", first_name(alert)));
    }
    let link = link(console_url, alert);
    if !link.is_empty() {
        body.push_str(&format!("Im Staff-Bereich öffnen: {link}\n"));
    }
    body.push_str(&format!(
        "Gemeldet: {}\n\n",
        alert
            .raised
            .to_zoned(jiff::tz::TimeZone::get("Europe/Berlin").unwrap_or(jiff::tz::TimeZone::UTC))
            .strftime("%d.%m.%Y %H:%M")
    ));
    body.push_str(
        "Diese Nachricht enthält bewusst weder Telefonnummer noch Gesprächsinhalt.\n-- \nfrontdesk\n",
    );
    body
}

/// The body parameters of the WhatsApp alert template: `{{1}}` the reason, `{{2}}` the first
/// name (or a dash), `{{3}}` the link (or a dash without a console URL).
pub fn template_params(alert: &Alert, console_url: &str) -> Vec<String> {
    let link = link(console_url, alert);
    vec![
        reason_de(alert.reason).to_string(),
        first_name(alert),
        if link.is_empty() { "–".into() } else { link },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::crypto::Pseudonym;

    fn alert(first_name: Option<&str>) -> Alert {
        Alert {
            reason: Reason::Complaint,
            customer: Some(Pseudonym([7; 16])),
            first_name: first_name.map(str::to_string),
            raised: "2026-03-02T09:15:00Z".parse().unwrap(),
        }
    }

    #[test]
    fn the_mail_links_the_conversation_and_names_only_the_first_name() {
        let a = alert(Some("Wiebke"));
        let body = mail_body(&a, "https://desk.studio.example:8443/");
        assert!(body.contains(&format!(
            "https://desk.studio.example:8443/c/{}",
            "07".repeat(16)
        )));
        assert!(body.contains("Kontakt: Wiebke"));
        assert!(body.contains("Beschwerde"));
        assert!(body.contains("02.03.2026 10:15"), "{body}");
        assert_eq!(subject(&a), "frontdesk: Übergabe (Wiebke)");
    }

    #[test]
    fn an_unknown_name_is_a_dash_and_a_name_cannot_break_lines() {
        assert!(mail_body(&alert(None), "https://d.example").contains("Kontakt: –"));
        let a = alert(Some("Anna\r\nBcc: x@example.org"));
        assert!(!subject(&a).contains('\n'));
        let params = template_params(&a, "https://d.example");
        assert!(params.iter().all(|p| !p.contains('\n')));
        assert_eq!(params[1], "Anna Bcc: x@example.org");
    }

    #[test]
    fn an_alert_about_no_one_links_the_start_page() {
        let a = Alert {
            reason: Reason::SenderPaused,
            customer: None,
            first_name: None,
            raised: jiff::Timestamp::now(),
        };
        assert_eq!(link("https://d.example", &a), "https://d.example/");
        assert!(!mail_body(&a, "https://d.example").contains("Kontakt"));
        assert_eq!(
            template_params(&a, "")[2],
            "–",
            "no console configured: a dash, not an empty parameter"
        );
    }
}
