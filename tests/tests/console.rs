//! The staff console in a real browser (headless Chromium over WebDriver) against the real
//! daemon (`frontdesk-fixed`: the shipped daemon with the instant engine, whose `#handover`
//! hands a conversation over like a complaint) and the Graph API simulator. A screenshot of
//! every page goes to `target/console-screenshots/`.

use std::time::Duration;

use fantoccini::{Client, Locator};
use frontdesk::sandbox::whatsapp::{
    self as sim, DeliveryPolicy, PayloadBuilder, WebhookDriver, SIM_APP_SECRET,
};
use frontdesk_tests::browser::Browser;
use frontdesk_tests::harness::{Daemon, DaemonSpec};

const WAIT: Duration = Duration::from_secs(30);
const STAFF_PASSWORD: &str = "ben-front-desk-1";
const OWNER_PASSWORD: &str = "anna-owner-secret";
/// The customer who is handed over.
const CUSTOMER: &str = "4915112345678";

async fn wait_for(c: &Client, xpath: &str) -> fantoccini::elements::Element {
    c.wait()
        .at_most(WAIT)
        .for_element(Locator::XPath(xpath))
        .await
        .unwrap_or_else(|e| panic!("{xpath} did not appear: {e}"))
}

async fn sign_in(b: &Browser, url: &str, name: &str, password: &str) {
    b.client
        .goto(&format!("{url}/login"))
        .await
        .expect("browser step");
    let form = b
        .client
        .form(Locator::Css("form[action='/login']"))
        .await
        .expect("browser step");
    form.set_by_name("name", name).await.expect("browser step");
    form.set_by_name("password", password)
        .await
        .expect("browser step");
    form.submit().await.expect("browser step");
}

/// POSTs a form from inside the page (same origin, the session cookie goes along); returns
/// the HTTP status.
async fn post_from_page(c: &Client, path: &str, fields: &[(&str, &str)]) -> u16 {
    let body: String = form_body(fields);
    let status = c
        .execute_async(
            "const [path, body, done] = arguments;
             fetch(path, { method: 'POST', body: body, redirect: 'manual',
                           headers: { 'content-type': 'application/x-www-form-urlencoded' } })
               .then(r => done(r.status)).catch(e => done(-1));",
            vec![path.into(), body.into()],
        )
        .await
        .expect("browser step");
    status.as_u64().unwrap_or(0) as u16
}

fn form_body(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{k}={}", v.replace(' ', "+")))
        .collect::<Vec<_>>()
        .join("&")
}

async fn csrf_of(c: &Client) -> String {
    c.find(Locator::Css("input[name='csrf']"))
        .await
        .expect("browser step")
        .attr("value")
        .await
        .expect("browser step")
        .expect("browser step")
}

fn audit_actions(daemon: &Daemon, actor: &str) -> Vec<(String, String)> {
    let (rc, out, err) = daemon.cli(&["audit", "show", "--actor", actor, "--json"], "");
    assert_eq!(rc, 0, "audit show failed: {err}");
    let entries: Vec<serde_json::Value> = serde_json::from_str(&out).expect("browser step");
    entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or_default().to_string(),
                e["outcome"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[expect(
    clippy::too_many_lines,
    reason = "one working day at the front desk, read top to bottom"
)]
async fn staff_answer_a_hand_over_in_the_browser() {
    let graph = sim::start().await;
    let mut daemon = Daemon::start(DaemonSpec {
        console_toml: "lockout_after = 3\n".into(),
        ..DaemonSpec::with_graph(graph.base_url())
    });
    let url = daemon.console_url();
    let driver = WebhookDriver::new(&daemon.webhook_url(), SIM_APP_SECRET)
        .unwrap()
        .with_policy(DeliveryPolicy::once());
    let p = PayloadBuilder::default();
    let ts = jiff::Timestamp::now().as_second();

    // The admin creates the accounts through the admin socket.
    for (name, role, password) in [
        ("anna", "owner", OWNER_PASSWORD),
        ("ben", "staff", STAFF_PASSWORD),
    ] {
        let (rc, _, err) = daemon.cli(
            &["staff", "add", name, "--role", role, "--password-stdin"],
            &format!("{password}\n"),
        );
        assert_eq!(rc, 0, "staff add {name}: {err}");
    }
    let (rc, out, _) = daemon.cli(&["staff", "list"], "");
    assert_eq!(rc, 0);
    assert!(
        out.contains("anna") && out.contains("owner") && out.contains("ben"),
        "{out}"
    );
    assert!(!out.contains("argon2"), "a hash was listed: {out}");

    let b = Browser::start().await;
    // Signed out, a conversation link leads to the sign-in page.
    b.client.goto(&format!("{url}/")).await.unwrap();
    wait_for(&b.client, "//h1[contains(., 'Anmelden')]").await;
    b.screenshot("01-login").await;

    sign_in(&b, &url, "ben", STAFF_PASSWORD).await;
    wait_for(&b.client, "//h1[.='Posteingang']").await;
    // Live updates are connected before anything happens.
    wait_for(&b.client, "/html[@data-live='open']").await;
    wait_for(&b.client, "//p[contains(., 'Niemand wartet')]").await;
    b.screenshot("02-inbox-empty").await;

    // A customer complains; the hand-over appears in the open inbox without a reload.
    assert!(driver
        .deliver(&p.text_message(CUSTOMER, "wamid.c1", "Ich bin unzufrieden #handover", ts))
        .await
        .delivered());
    let row = wait_for(
        &b.client,
        "//section[@aria-labelledby='waiting-heading']//li[contains(., 'Beschwerde')]",
    )
    .await;
    assert!(
        row.text().await.unwrap().contains("neu"),
        "unread marker missing"
    );
    b.screenshot("03-inbox-handover").await;
    assert!(
        graph.sent().is_empty(),
        "a handed-over customer got a bot reply"
    );

    // Open it: the history is there, labelled.
    row.find(Locator::Css("a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(
        &b.client,
        "//li[contains(@class,'msg')]//p[contains(., 'unzufrieden')]",
    )
    .await;
    let conv_url = b.client.current_url().await.unwrap();
    let id = conv_url.path().trim_start_matches("/c/").to_string();
    assert!(id.starts_with("c-") && id.len() == 14, "{conv_url}");
    // Staff see no forget button.
    assert!(b.client.find(Locator::Id("forget")).await.is_err());
    b.screenshot("04-conversation").await;

    // Answer as the studio: it reaches the Graph API simulator.
    let answer = "Das tut uns leid! Wir rufen Sie heute noch an.";
    b.client
        .find(Locator::Id("reply-text"))
        .await
        .unwrap()
        .send_keys(answer)
        .await
        .unwrap();
    b.client
        .form(Locator::Css("form.reply"))
        .await
        .unwrap()
        .submit()
        .await
        .unwrap();
    wait_for(&b.client, "//p[@role='status'][contains(., 'Gesendet')]").await;
    graph
        .wait_for_sent(1, WAIT)
        .await
        .expect("the staff answer was not sent");
    assert_eq!(graph.texts_to(CUSTOMER), vec![answer.to_string()]);
    wait_for(
        &b.client,
        "//li[contains(@class,'staff')]//span[.='Studio']",
    )
    .await;
    b.screenshot("05-answered").await;

    // A POST without the CSRF token is refused and changes nothing.
    assert_eq!(
        post_from_page(&b.client, &format!("/c/{id}/pause"), &[]).await,
        403
    );
    assert_eq!(
        post_from_page(&b.client, &format!("/c/{id}/pause"), &[("csrf", "forged")]).await,
        403
    );
    // Staff may not forget, even with a valid token.
    let csrf = csrf_of(&b.client).await;
    assert_eq!(
        post_from_page(
            &b.client,
            &format!("/c/{id}/forget"),
            &[("csrf", &csrf), ("confirm", "yes")]
        )
        .await,
        403
    );
    b.client.goto(conv_url.as_str()).await.unwrap();
    wait_for(&b.client, "//button[@id='pause']").await;

    // Hand back to the assistant: the next message gets the bot's reply again.
    b.client
        .find(Locator::Id("resume"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(
        &b.client,
        "//p[@role='status'][contains(., 'antwortet wieder')]",
    )
    .await;
    b.screenshot("06-handed-back").await;
    assert!(driver
        .deliver(&p.text_message(CUSTOMER, "wamid.c2", "Wann habt ihr offen?", ts + 60))
        .await
        .delivered());
    graph
        .wait_for_sent(2, WAIT)
        .await
        .expect("the bot did not answer after the hand-back");
    assert_eq!(graph.texts_to(CUSTOMER)[1], "Danke! wamid.c2");

    // Sign out; the owner signs in and forgets the customer.
    b.client.goto(&format!("{url}/")).await.unwrap();
    b.client
        .find(Locator::XPath("//button[.='Abmelden']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(&b.client, "//h1[contains(., 'Anmelden')]").await;
    sign_in(&b, &url, "anna", OWNER_PASSWORD).await;
    wait_for(&b.client, "//h1[.='Posteingang']").await;
    b.client.goto(conv_url.as_str()).await.unwrap();
    wait_for(&b.client, "//button[@id='forget']").await;
    b.screenshot("07-owner-conversation").await;
    b.client
        .find(Locator::Id("confirm-forget"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.client
        .find(Locator::Id("forget"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(&b.client, "//p[contains(., 'Noch keine Gespräche')]").await;
    b.client.goto(conv_url.as_str()).await.unwrap();
    wait_for(&b.client, "//h1[.='Nicht gefunden']").await;

    // The trials page (no bookings with the instant engine; its content is unit-tested).
    b.client.goto(&format!("{url}/trials")).await.unwrap();
    wait_for(&b.client, "//h1[.='Probetrainings']").await;
    b.screenshot("09-trials").await;

    // The dashboard draws its charts as inline SVG beside tables of their numbers.
    b.client.goto(&format!("{url}/dashboard")).await.unwrap();
    wait_for(&b.client, "//h1[.='Übersicht']").await;
    wait_for(
        &b.client,
        "//figure//*[local-name()='svg']//*[local-name()='rect']",
    )
    .await;
    wait_for(&b.client, "//table/caption[.='Trichter je Kalenderwoche']").await;
    b.screenshot("10-dashboard").await;

    // Wrong passwords lock the account: then even the right one is refused.
    b.client
        .find(Locator::XPath("//button[.='Abmelden']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(&b.client, "//h1[contains(., 'Anmelden')]").await;
    for _ in 0..3 {
        sign_in(&b, &url, "ben", "not-the-password").await;
        wait_for(&b.client, "//p[@role='alert'][contains(., 'falsch')]").await;
    }
    sign_in(&b, &url, "ben", STAFF_PASSWORD).await;
    wait_for(&b.client, "//p[@role='alert'][contains(., 'gesperrt')]").await;
    b.screenshot("08-locked").await;
    b.close().await;

    // Everything ben did is on record under his name.
    let ben = audit_actions(&daemon, "ben");
    for (action, outcome) in [
        ("staff.login", "ok"),
        ("customer.list_names", "ok"),
        ("staff.conversation_opened", "ok"),
        ("staff.reply", "ok"),
        ("staff.denied", "denied"),
        ("customer.resume", "ok"),
        ("staff.logout", "ok"),
        ("staff.login", "denied"),
    ] {
        assert!(
            ben.iter().any(|(a, o)| a == action && o == outcome),
            "no {action} ({outcome}) by ben in {ben:?}"
        );
    }
    let anna = audit_actions(&daemon, "anna");
    assert!(anna.iter().any(|(a, _)| a == "customer.forget"), "{anna:?}");
    assert!(anna.iter().any(|(a, _)| a == "stats.read"), "{anna:?}");
    daemon.stop();
}
