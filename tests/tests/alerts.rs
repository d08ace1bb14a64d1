//! Staff alerts end to end: the real daemon (with the instant stand-in engine, which hands a
//! complaint over like the engine), the Graph API simulator as WhatsApp, and a real SMTP server
//! on loopback (aiosmtpd) as the studio's mail server.

use std::time::Duration;

use frontdesk::sandbox::whatsapp::{self as sim, PayloadBuilder, WebhookDriver, SIM_APP_SECRET};
use frontdesk_tests::fixed::HANDOVER_WORD;
use frontdesk_tests::harness::{await_metric, Daemon, DaemonSpec};
use frontdesk_tests::smtp::SmtpSink;

const WAIT: Duration = Duration::from_secs(60);
const STAFF: &str = "4915100000042";
const CONSOLE: &str = "https://desk.studio.example:8443";

fn alerts_toml(smtp_port: u16) -> String {
    format!(
        r#"
[alerts]
console_url = "{CONSOLE}"
whatsapp_recipients = ["{STAFF}"]
whatsapp_template = "staff_alert"
email_to = ["desk@studio.example"]
email_from = "frontdesk@studio.example"
smtp_host = "127.0.0.1"
smtp_port = {smtp_port}
smtp_security = "none"
smtp_timeout_secs = 10
"#
    )
}

/// The alert templates the simulator accepted for the staff number.
fn staff_templates(graph: &sim::GraphSim) -> Vec<Vec<String>> {
    graph
        .sent()
        .into_iter()
        .filter(|r| r.recipient == STAFF)
        .filter_map(|r| match r.message {
            sim::SentMessageKind::Template { name, params, .. } if name == "staff_alert" => {
                Some(params)
            }
            _ => None,
        })
        .collect()
}

/// Waits until the simulator accepted `n` staff alert templates.
async fn await_staff_templates(graph: &sim::GraphSim, n: usize) -> Vec<Vec<String>> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let seen = graph.sent().len();
        let got = staff_templates(graph);
        if got.len() >= n {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} staff alerts expected, {} arrived",
            got.len()
        );
        let _ = graph
            .wait_for_sent(seen + 1, Duration::from_millis(500))
            .await;
    }
}

/// The `staff.alert_sent` entries of a stopped daemon, as CSV lines.
fn alerts_audited(daemon: &Daemon) -> Vec<String> {
    let store = std::sync::Arc::new(daemon.open_store());
    let audit = frontdesk::audit::AuditLog::open(store).expect("open the audit log");
    audit
        .query(&frontdesk::audit::AuditFilter {
            action: Some("staff.alert_sent".into()),
            ..Default::default()
        })
        .expect("query the audit log")
        .iter()
        .map(|r| r.to_csv_line())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_over_alerts_staff_by_whatsapp_and_email_once_across_a_sigkill() {
    let smtp = SmtpSink::start(0);
    let graph = sim::start().await;
    let mut daemon = Daemon::start(DaemonSpec {
        extra_toml: alerts_toml(smtp.port),
        ..DaemonSpec::with_graph(graph.base_url())
    });
    let driver = WebhookDriver::new(&daemon.webhook_url(), SIM_APP_SECRET).unwrap();
    let p = PayloadBuilder::default();
    let ts = jiff::Timestamp::now().as_second();
    let first = "491790000071";
    let complaint = format!("{HANDOVER_WORD}: das Handtuch war nass");
    let started = std::time::Instant::now();
    assert!(driver
        .deliver(&p.text_message(first, "wamid.al1", &complaint, ts))
        .await
        .delivered());

    // WhatsApp: the approved template to the staff number, with reason, first name and link.
    let templates = await_staff_templates(&graph, 1).await;
    let to_whatsapp = started.elapsed();
    let pseudonym = {
        // The pseudonym is the store's; read it through the link rather than the store, which
        // the running daemon holds.
        let link = &templates[0][2];
        assert!(link.starts_with(&format!("{CONSOLE}/c/")), "{link}");
        link.rsplit('/').next().unwrap().to_string()
    };
    assert_eq!(templates[0][1], "Alex", "the first name only");
    assert!(templates[0][0].contains("Beschwerde"));

    // E-mail: the hand-over with the link and without the number or the surname.
    let mails = smtp.wait_for(1, WAIT);
    println!(
        "hand-over to staff: WhatsApp template after {} ms, e-mail after {} ms",
        to_whatsapp.as_millis(),
        started.elapsed().as_millis()
    );
    let mail = &mails[0];
    assert!(mail.raw.contains("X-Envelope-To: desk@studio.example"));
    assert!(
        mail.body.contains(&format!("{CONSOLE}/c/{pseudonym}")),
        "{}",
        mail.body
    );
    assert!(mail.body.contains("Kontakt: Alex"), "{}", mail.body);
    for leak in [first, "Beispiel", "Handtuch"] {
        assert!(!mail.raw.contains(leak), "{leak} in the mail: {}", mail.raw);
        assert!(!mail.body.contains(leak), "{leak} in the mail body");
    }
    let message_id = mail
        .raw
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("message-id:"))
        .expect("a Message-ID")
        .to_string();
    assert!(message_id.contains("@studio.example>"), "{message_id}");

    // Both channels recorded, the template retired from the outbox: then SIGKILL.
    await_metric(
        &daemon,
        "frontdesk_staff_alerts_total{kind=\"complaint\",channel=\"email\",outcome=\"sent\"} 1",
        WAIT,
    )
    .await;
    await_metric(&daemon, "frontdesk_outbox_depth 0", WAIT).await;
    daemon.kill();
    daemon.restart();

    // A second hand-over after the restart: its alerts come after anything the restart could
    // have sent again, so once they are here, a repeat of the first would be too.
    let second = "491790000072";
    assert!(driver
        .deliver(&p.text_message(second, "wamid.al2", &complaint, ts))
        .await
        .delivered());
    let templates = await_staff_templates(&graph, 2).await;
    let mails = smtp.wait_for(2, WAIT);
    await_metric(
        &daemon,
        "frontdesk_staff_alerts_total{kind=\"complaint\",channel=\"email\",outcome=\"sent\"} 1",
        WAIT,
    )
    .await;
    await_metric(&daemon, "frontdesk_outbox_depth 0", WAIT).await;
    assert!(daemon.stop().is_some_and(|s| s.success()));
    assert_eq!(
        templates.len(),
        2,
        "one template per hand-over: {templates:?}"
    );
    assert_ne!(
        templates[0][2], templates[1][2],
        "each links its own conversation"
    );
    assert_eq!(smtp.messages().len(), 2, "one e-mail per hand-over");
    assert_ne!(mails[0].raw, mails[1].raw);

    let audited = alerts_audited(&daemon);
    assert_eq!(
        audited.len(),
        4,
        "whatsapp and email per alert: {audited:?}"
    );
    assert!(audited.iter().all(|l| l.contains("complaint")));
    assert!(audited
        .iter()
        .all(|l| !l.contains(first) && !l.contains("Alex")));
    let store = daemon.open_store();
    assert_eq!(frontdesk::alerts::queue::pending(&store), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_sender_is_emailed_and_the_worker_retries_after_an_smtp_failure() {
    // The mail server refuses the first attempt (451); the worker tries again.
    let smtp = SmtpSink::start(1);
    let graph = sim::start().await;
    let mut daemon = Daemon::start(DaemonSpec {
        extra_credentials: vec![("whatsapp-token".into(), "an-expired-token".into())],
        extra_toml: alerts_toml(smtp.port),
        ..DaemonSpec::with_graph(graph.base_url())
    });
    let driver = WebhookDriver::new(&daemon.webhook_url(), SIM_APP_SECRET).unwrap();
    let p = PayloadBuilder::default();
    let ts = jiff::Timestamp::now().as_second();
    assert!(driver
        .deliver(&p.text_message("491790000073", "wamid.al3", "Hallo", ts))
        .await
        .delivered());
    daemon.wait_notify(
        "STATUS=running, SENDING PAUSED: WhatsApp rejected the access token (see journal)",
    );
    await_metric(&daemon, "frontdesk_staff_alerts_total{kind=\"sender_paused\",channel=\"email\",outcome=\"failed\"} 1", WAIT)
    .await;
    let mails = smtp.wait_for(1, WAIT);
    await_metric(
        &daemon,
        "frontdesk_staff_alerts_total{kind=\"sender_paused\",channel=\"email\",outcome=\"sent\"} 1",
        WAIT,
    )
    .await;
    assert!(mails[0].body.contains("pausiert"), "{}", mails[0].body);
    assert!(mails[0].body.contains(&format!("{CONSOLE}/")));
    assert!(daemon.stop().is_some_and(|s| s.success()));
    assert_eq!(smtp.messages().len(), 1, "sent once after the retry");
    // About the sender itself: by e-mail only, never queued behind the paused sender.
    assert!(staff_templates(&graph).is_empty());
    let audited = alerts_audited(&daemon);
    assert_eq!(audited.len(), 1, "{audited:?}");
    assert!(audited[0].contains("sender_paused") && audited[0].contains("email"));
}
