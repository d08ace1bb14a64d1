//! Every kind of inbound burst through the real daemon with its real engine (llama.cpp and the
//! small test model): the webhook, the dispatcher, the engine's deterministic branches, the one
//! commit, the sender and the Graph API simulator.

use std::sync::Arc;

use frontdesk::audit::{AuditFilter, AuditLog};
use frontdesk::sandbox::whatsapp::{self as sim, PayloadBuilder, WebhookDriver, SIM_APP_SECRET};
use frontdesk::whatsapp::payload::MediaKind;
use frontdesk::whatsapp::queue::Queues;
use frontdesk_tests::harness::{Daemon, DaemonSpec};

fn test_model() -> std::path::PathBuf {
    std::env::var_os("FRONTDESK_TEST_MODEL")
        .map(Into::into)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voice_notes_system_notices_and_invalid_senders_take_the_engines_branches() {
    let graph = sim::start().await;
    let model = test_model();
    assert!(
        model.is_file(),
        "{} missing: run ./install.sh --dev",
        model.display()
    );
    let mut daemon = Daemon::start(DaemonSpec {
        fixed_reply: None,
        extra_toml: format!(
            "[llm]\nmodel_path = \"{}\"\nchat_template = \"chatml\"\ncontext_size = 4096\nmax_tokens = 120\n",
            model.display()
        ),
        ..DaemonSpec::with_graph(graph.base_url())
    });
    let driver = WebhookDriver::new(&daemon.webhook_url(), SIM_APP_SECRET).unwrap();
    let p = PayloadBuilder::default();
    let ts = jiff::Timestamp::now().as_second();

    // A new contact whose first message is a voice note: the non-text reply, with the AI
    // disclosure in front, and counted as a new contact.
    let voice = "491700000100";
    assert!(driver
        .deliver(&p.media(voice, "wamid.v1", MediaKind::Voice, ts))
        .await
        .delivered());
    // A system notice and a sender that is neither a phone number nor a user id.
    let changed = "491700000101";
    assert!(driver
        .deliver(&p.number_changed(changed, "wamid.s1", "491700000199", ts))
        .await
        .delivered());
    let forged = "../../etc/passwd";
    assert!(driver
        .deliver(&p.text_message(forged, "wamid.f1", "Hallo", ts))
        .await
        .delivered());

    graph
        .wait_for_sent(1, std::time::Duration::from_secs(120))
        .await
        .expect("the voice note was not answered");
    let replies = graph.texts_to(voice);
    assert_eq!(replies.len(), 1, "{replies:?}");
    let lower = replies[0].to_lowercase();
    assert!(
        lower.contains("ki") || lower.contains("digital"),
        "the first reply lacks the AI disclosure: {}",
        replies[0]
    );
    assert!(replies[0].contains("Sprachnachrichten"), "{}", replies[0]);

    // A graceful stop finishes every turn that was acknowledged.
    assert!(daemon.stop().is_some_and(|s| s.success()));
    assert!(
        graph.texts_to(changed).is_empty(),
        "a system notice is never answered"
    );
    assert!(
        graph.texts_to(forged).is_empty(),
        "an invalid sender is never answered"
    );
    assert_eq!(
        graph.sent().len(),
        1,
        "nothing but the voice reply was sent"
    );

    let store = Arc::new(daemon.open_store());
    let queues = Queues::new(&store).unwrap();
    assert!(
        queues.inbox(&store).unwrap().is_empty(),
        "every inbox row was retired"
    );
    for (who, want) in [(voice, true), (changed, false), (forged, false)] {
        let exists = store.customer(&store.pseudonym(who)).unwrap().is_some();
        assert_eq!(exists, want, "customer record of {who}");
    }
    let history = store.recent_messages(&store.pseudonym(voice), 10).unwrap();
    assert_eq!(history.first().map(|m| m.text.as_str()), Some("[voice]"));
    let stats =
        frontdesk::stats::report(&store, None, Default::default(), &Default::default()).unwrap();
    assert_eq!(stats.total.new_contacts, 1);

    let audit = AuditLog::open(store.clone()).unwrap();
    let dropped = audit
        .query(&AuditFilter {
            action: Some("message.dropped".into()),
            ..AuditFilter::default()
        })
        .unwrap();
    assert_eq!(dropped.len(), 1, "the invalid sender is audited once");
    assert!(
        dropped[0].subject.is_none(),
        "no customer subject for a dropped sender"
    );
}

/// The shipped daemon with its engine and the small test model, sending to `graph`.
fn daemon_with_model(graph: &sim::GraphSim) -> Daemon {
    let model = test_model();
    assert!(
        model.is_file(),
        "{} missing: run ./install.sh --dev",
        model.display()
    );
    Daemon::start(DaemonSpec {
        fixed_reply: None,
        extra_toml: format!(
            "[llm]\nmodel_path = \"{}\"\nchat_template = \"chatml\"\ncontext_size = 4096\nmax_tokens = 120\n",
            model.display()
        ),
        ..DaemonSpec::with_graph(graph.base_url())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_caption_ad_quote_edit_and_revoke_through_the_daemon() {
    let graph = sim::start().await;
    let mut daemon = daemon_with_model(&graph);
    let driver = WebhookDriver::new(&daemon.webhook_url(), SIM_APP_SECRET).unwrap();
    let p = PayloadBuilder {
        username: Some("@lena.fit".into()),
        ..PayloadBuilder::default()
    };
    let ts = jiff::Timestamp::now().as_second();
    let wait = std::time::Duration::from_secs(120);

    // Someone opens the chat without writing: the greeting, with the AI disclosure in front.
    let opener = "491700000200";
    assert!(driver
        .deliver(&p.welcome_request(opener, "wamid.w1", ts))
        .await
        .delivered());
    graph.wait_for_sent(1, wait).await.expect("no greeting");
    let greeting = graph.texts_to(opener);
    assert_eq!(greeting.len(), 1, "{greeting:?}");
    assert!(greeting[0].contains("KI"), "{}", greeting[0]);
    assert!(greeting[0].contains("Willkommen"), "{}", greeting[0]);
    assert!(
        !greeting[0].contains("Sprachnachrichten"),
        "{}",
        greeting[0]
    );

    // A picture with a caption, from an ad: the caption is answered like text.
    let lead = "491700000201";
    let pic = p.media_with_caption(
        lead,
        "wamid.c1",
        MediaKind::Image,
        "Geht das auch für Anfänger?",
        ts,
    );
    assert!(driver
        .deliver(&p.from_ad(pic, "120212345678901234", "EMS-Probetraining gratis"))
        .await
        .delivered());
    graph
        .wait_for_sent(2, wait)
        .await
        .expect("caption not answered");
    let first = graph
        .sent()
        .into_iter()
        .find(|s| s.recipient == lead)
        .unwrap();
    assert!(
        !graph.texts_to(lead)[0].contains("Sprachnachrichten"),
        "a caption is no non-text message: {:?}",
        graph.texts_to(lead)
    );

    // The contact edits and deletes the caption message (recorded, never answered), then says
    // yes to our reply by quoting it.
    for payload in [
        p.edit(
            lead,
            "wamid.c2",
            "wamid.c1",
            "Geht das auch für Einsteiger?",
            ts + 1,
        ),
        p.revoke(lead, "wamid.c3", "wamid.c1", ts + 2),
        p.quoting(p.text_message(lead, "wamid.c4", "Ja", ts + 3), &first.id),
    ] {
        assert!(driver.deliver(&payload).await.delivered());
    }
    graph
        .wait_for_sent(3, wait)
        .await
        .expect("the quote was not answered");
    assert_eq!(
        graph.texts_to(lead).len(),
        2,
        "edit and revoke are not answered"
    );

    assert!(daemon.stop().is_some_and(|s| s.success()));
    let store = daemon.open_store();
    let opened = store.recent_messages(&store.pseudonym(opener), 10).unwrap();
    assert_eq!(opened[0].text, "[chat opened]");

    let who = store.pseudonym(lead);
    let customer = store.customer(&who).unwrap().unwrap();
    let source = customer.body.lead_source.expect("the ad is kept");
    assert_eq!(source.source_id.as_deref(), Some("120212345678901234"));
    assert!(source.ctwa_clid.is_some());
    assert_eq!(customer.body.username.as_deref(), Some("@lena.fit"));
    let history = store.recent_messages(&who, 20).unwrap();
    let texts: Vec<&str> = history.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts[0], "[deleted]", "{texts:?}");
    assert!(
        texts.contains(&"[edited] Geht das auch für Einsteiger?"),
        "{texts:?}"
    );
    assert!(texts.iter().all(|t| !t.contains("Anfänger")), "{texts:?}");
    // Our reply carries WhatsApp's id, so the quote could be found.
    assert_eq!(history[1].wamid.as_deref(), Some(first.id.as_str()));

    let stats =
        frontdesk::stats::report(&store, None, Default::default(), &Default::default()).unwrap();
    assert_eq!(stats.total.new_contacts, 2);
    assert_eq!(stats.sources.len(), 1);
    assert_eq!(stats.sources[0].contacts, 1);
    assert_eq!(
        stats.sources[0].headline.as_deref(),
        Some("EMS-Probetraining gratis")
    );
}
