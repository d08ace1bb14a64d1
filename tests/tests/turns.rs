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
