//! The WhatsApp channel end to end: the real daemon process, its webhook over TCP, the real
//! store on disk, and the Graph API simulator receiving the replies.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use frontdesk::sandbox::whatsapp::{
    self as sim, DeliveryPolicy, PayloadBuilder, Signing, WebhookDriver, SIM_APP_SECRET,
};
use frontdesk::whatsapp::payload::MediaKind;
use frontdesk::whatsapp::queue::{DeliveryState, FailureHandling, Queues};
use frontdesk_tests::harness::{await_metric, http_get, Daemon, DaemonSpec, VERIFY_TOKEN};

const WAIT: Duration = Duration::from_secs(60);

/// Message ids a fixed reply ("Danke! id,id") answers.
fn answered_ids(text: &str) -> Vec<String> {
    text.strip_prefix("Danke! ")
        .map(|ids| {
            ids.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn all_answered(graph: &sim::GraphSim) -> Vec<String> {
    answered_in(&graph.sent())
}

/// Message ids answered by these sends. Loops that wait for more replies take one snapshot per
/// round and wait for `snapshot.len() + 1`, so a reply arriving between the check and the wait
/// cannot be missed.
fn answered_in(sent: &[sim::SentRecord]) -> Vec<String> {
    sent.iter()
        .filter_map(|r| match &r.message {
            sim::SentMessageKind::Text { body, .. } => Some(answered_ids(body)),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Waits until the simulator has received at least `n` sends.
async fn await_sends(graph: &sim::GraphSim, n: usize) {
    graph
        .wait_for_sent(n, WAIT)
        .await
        .expect("replies did not arrive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario through the webhook contract, read top to bottom"
)]
async fn webhook_contract_inbound_types_statuses_and_duplicates() {
    let graph = sim::start().await;
    let mut daemon = Daemon::start(DaemonSpec {
        max_body_bytes: 16 * 1024,
        ..DaemonSpec::with_graph(graph.base_url())
    });
    let driver = WebhookDriver::new(&daemon.webhook_url(), SIM_APP_SECRET)
        .unwrap()
        .with_policy(DeliveryPolicy::once());
    let p = PayloadBuilder::default();
    let ts = jiff::Timestamp::now().as_second();

    // GET subscription handshake.
    assert_eq!(
        driver.verify_subscription(VERIFY_TOKEN, "12345").await,
        Some((200, "12345".to_string()))
    );
    assert_eq!(
        driver
            .verify_subscription("wrong", "12345")
            .await
            .map(|r| r.0),
        Some(403)
    );
    assert_eq!(http_get(daemon.webhook, "/other").0, 404);

    // Signatures: only the exact bytes signed with the app secret pass.
    let body = p
        .text_message("491700000001", "wamid.sig1", "Hallo", ts)
        .to_string();
    for (signing, want) in [
        (Signing::Missing, 401),
        (Signing::WrongSecret, 401),
        (Signing::Header("sha256=zz".into()), 401),
        (Signing::Header("md5=abc".into()), 401),
    ] {
        assert_eq!(
            driver.deliver_bytes(body.as_bytes(), &signing).await.status,
            Some(want)
        );
    }
    let mut tampered = body.clone().into_bytes();
    let sig = frontdesk::whatsapp::signature::sign(SIM_APP_SECRET.as_bytes(), &tampered);
    let pos = tampered.iter().position(|b| *b == b'H').unwrap();
    tampered[pos] = b'h';
    assert_eq!(
        driver
            .deliver_bytes(&tampered, &Signing::Header(sig))
            .await
            .status,
        Some(401)
    );
    // A signature over re-serialised JSON does not match the bytes on the wire.
    let reserialised =
        serde_json::to_string_pretty(&serde_json::from_str::<serde_json::Value>(&body).unwrap())
            .unwrap();
    let sig =
        frontdesk::whatsapp::signature::sign(SIM_APP_SECRET.as_bytes(), reserialised.as_bytes());
    assert_eq!(
        driver
            .deliver_bytes(body.as_bytes(), &Signing::Header(sig))
            .await
            .status,
        Some(401)
    );
    // Signed but malformed, and too large.
    assert_eq!(
        driver
            .deliver_bytes(b"{not json", &Signing::Valid)
            .await
            .status,
        Some(400)
    );
    let big = format!(
        "{{\"object\":\"whatsapp_business_account\",\"pad\":\"{}\"}}",
        "x".repeat(20_000)
    );
    assert_eq!(
        driver
            .deliver_bytes(big.as_bytes(), &Signing::Valid)
            .await
            .status,
        Some(413)
    );
    assert!(
        graph.sent().is_empty(),
        "rejected requests must not be answered"
    );

    // Every inbound type.
    let phone = "491700000002";
    let deliveries = vec![
        p.text_message(
            phone,
            "wamid.t1",
            "Hallo, was kostet ein Probetraining?",
            ts,
        ),
        p.button_reply(phone, "wamid.t2", "btn-1", "Ja, gerne", ts),
        p.list_reply(phone, "wamid.t3", "row-1", "Dienstag", "abends", ts),
        p.template_button(phone, "wamid.t4", "PAYLOAD", "Termin buchen", ts),
        p.reaction(phone, "wamid.t5", "wamid.t1", Some("👍"), ts),
        p.reaction(phone, "wamid.t6", "wamid.t1", None, ts),
        p.media(phone, "wamid.t7", MediaKind::Voice, ts),
        p.media(phone, "wamid.t8", MediaKind::Image, ts),
        p.location(phone, "wamid.t9", ts),
        p.contacts(phone, "wamid.t10", ts),
        p.unsupported(phone, "wamid.t11", ts),
    ];
    for d in &deliveries {
        assert!(driver.deliver(d).await.delivered());
    }
    // Order marker: everything before it is processed before it (one customer, in order).
    assert!(driver
        .deliver(&p.text_message(phone, "wamid.t12", "Ende", ts))
        .await
        .delivered());
    let texts = loop {
        let n = graph.sent().len();
        let texts = graph.texts_to(phone);
        if texts.iter().any(|t| t.contains("wamid.t12")) {
            break texts;
        }
        await_sends(&graph, n + 1).await;
    };
    let answered: Vec<String> = texts.iter().flat_map(|t| answered_ids(t)).collect();
    for id in ["wamid.t1", "wamid.t2", "wamid.t3", "wamid.t4", "wamid.t12"] {
        assert_eq!(
            answered.iter().filter(|a| *a == id).count(),
            1,
            "{id} answered once"
        );
    }
    for id in ["wamid.t5", "wamid.t6"] {
        assert!(
            !answered.contains(&id.to_string()),
            "reactions get no answer"
        );
    }
    // Non-text messages get the friendly German fallback (one per burst).
    assert!(
        texts.iter().any(|t| t.contains("Sprachnachrichten")),
        "fallback answer missing: {texts:?}"
    );
    assert!(!graph.read_marks().is_empty(), "messages are marked read");

    // Statuses (out of order too, and several in one post, handled together) update the
    // delivery state of our reply; an earlier state never overwrites a later one.
    let reply_id = graph
        .sent()
        .iter()
        .find(|r| matches!(&r.message, sim::SentMessageKind::Text { body, .. } if body.contains("wamid.t1")))
        .unwrap()
        .id
        .clone();
    let failed_reply_id = graph
        .sent()
        .iter()
        .find(|r| matches!(&r.message, sim::SentMessageKind::Text { body, .. } if body.contains("wamid.t12")))
        .unwrap()
        .id
        .clone();
    let read_then_sent = sim::batch(&[
        p.status(&reply_id, phone, "read", ts),
        p.status(&reply_id, phone, "sent", ts),
    ]);
    assert!(driver.deliver(&read_then_sent).await.delivered());
    assert!(driver
        .deliver(&p.status(&reply_id, phone, "delivered", ts))
        .await
        .delivered());
    assert!(driver
        .deliver(&p.status_failed(
            &failed_reply_id,
            phone,
            131026,
            "Message undeliverable",
            "Receiver incapable",
            ts
        ))
        .await
        .delivered());

    // Duplicates across a restart: the same message id again gets no second reply.
    let before = graph.sent().len();
    daemon.stop();
    daemon.restart();
    assert!(driver
        .deliver(&p.text_message(
            phone,
            "wamid.t1",
            "Hallo, was kostet ein Probetraining?",
            ts
        ))
        .await
        .delivered());
    assert!(driver
        .deliver(&p.text_message(phone, "wamid.t13", "Noch da?", ts))
        .await
        .delivered());
    await_sends(&graph, before + 1).await;
    let after: Vec<String> = all_answered(&graph);
    assert_eq!(after.iter().filter(|a| *a == "wamid.t1").count(), 1);
    assert_eq!(after.iter().filter(|a| *a == "wamid.t13").count(), 1);

    daemon.stop();
    let store = daemon.open_store();
    let q = Queues::new(&store).unwrap();
    assert_eq!(
        q.delivery(&store, &reply_id).unwrap(),
        Some(DeliveryState::Read)
    );
    assert_eq!(
        q.delivery(&store, &failed_reply_id).unwrap(),
        Some(DeliveryState::Failed)
    );
    assert!(q.inbox(&store).unwrap().is_empty(), "inbox drained");
    assert!(q.outbox(&store).unwrap().is_empty(), "outbox drained");
    // History holds the conversation, sealed: readable through the store.
    let history = store.recent_messages(&store.pseudonym(phone), 100).unwrap();
    assert!(history
        .iter()
        .any(|m| m.text == "Hallo, was kostet ein Probetraining?"));
    // The unsupported message's error code (131051) is on record for staff.
    let audit = frontdesk::audit::AuditLog::open(std::sync::Arc::new(store)).unwrap();
    let unreadable = audit
        .query(&frontdesk::audit::AuditFilter {
            action: Some("message.unreadable".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(unreadable.len(), 1);
    assert!(unreadable[0].to_csv_line().contains("unsupported_type"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_per_customer_and_concurrency_across_customers() {
    let graph = sim::start().await;
    let daemon = Daemon::start(DaemonSpec::with_graph(graph.base_url()));
    let driver = WebhookDriver::new(&daemon.webhook_url(), SIM_APP_SECRET).unwrap();
    let p = PayloadBuilder::default();
    let ts = jiff::Timestamp::now().as_second();
    let phones: Vec<String> = (0..20).map(|i| format!("4917100000{i:02}")).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for phone in phones.clone() {
        let driver = driver.clone();
        let p = p.clone();
        tasks.spawn(async move {
            for n in 0..5 {
                let id = format!("wamid.{phone}.{n}");
                assert!(driver
                    .deliver(&p.text_message(&phone, &id, &format!("Nachricht {n}"), ts))
                    .await
                    .delivered());
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    loop {
        let sent = graph.sent();
        if answered_in(&sent).len() >= 100 {
            break;
        }
        await_sends(&graph, sent.len() + 1).await;
    }
    for phone in &phones {
        let ids: Vec<String> = graph
            .texts_to(phone)
            .iter()
            .flat_map(|t| answered_ids(t))
            .collect();
        let expected: Vec<String> = (0..5).map(|n| format!("wamid.{phone}.{n}")).collect();
        assert_eq!(
            ids, expected,
            "replies to {phone} answer its messages once each, in order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_message_and_replies_once() {
    let graph = sim::start().await;
    let mut daemon = Daemon::start(DaemonSpec::with_graph(graph.base_url()));
    let url = daemon.webhook_url();
    let driver = WebhookDriver::new(&url, SIM_APP_SECRET)
        .unwrap()
        .with_policy(DeliveryPolicy {
            max_attempts: 200,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(200),
            attempt_timeout: Duration::from_secs(10),
        });
    let p = PayloadBuilder::default();
    let ts = jiff::Timestamp::now().as_second();
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel::<String>();

    // 2,000 messages from 200 phones, 16 senders in parallel, each message retried like Meta
    // retries until it is acknowledged with 200.
    let work: Vec<(String, String)> = (0..2000)
        .map(|i| (format!("4917200{:05}", i % 200), format!("wamid.crash.{i}")))
        .collect();
    let work = std::sync::Arc::new(std::sync::Mutex::new(work.into_iter()));
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let driver = driver.clone();
        let p = p.clone();
        let work = work.clone();
        let ack_tx = ack_tx.clone();
        senders.spawn(async move {
            loop {
                let next = work.lock().unwrap().next();
                let Some((phone, id)) = next else { return };
                let d = driver
                    .deliver(&p.text_message(&phone, &id, "Hallo", ts))
                    .await;
                assert!(d.delivered(), "{id} never acknowledged");
                ack_tx.send(id).unwrap();
            }
        });
    }
    drop(ack_tx);

    let mut acked: HashSet<String> = HashSet::new();
    let mut kills = 0;
    let mut rng_state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next_kill_at = 150usize;
    while let Some(id) = ack_rx.recv().await {
        acked.insert(id);
        if kills < 10 && acked.len() >= next_kill_at {
            daemon.kill();
            kills += 1;
            daemon.restart();
            rng_state ^= rng_state << 13;
            rng_state ^= rng_state >> 7;
            rng_state ^= rng_state << 17;
            next_kill_at = acked.len() + 50 + (rng_state % 120) as usize;
        }
    }
    while let Some(r) = senders.join_next().await {
        r.unwrap();
    }
    assert_eq!(acked.len(), 2000);
    assert_eq!(kills, 10);

    // Every acknowledged message is answered; duplicates only from the documented window
    // (a kill between a send and its record), at most one per reply in flight per kill.
    loop {
        let sent = graph.sent();
        let answered: HashSet<String> = answered_in(&sent).into_iter().collect();
        if acked.is_subset(&answered) {
            break;
        }
        if graph.wait_for_sent(sent.len() + 1, WAIT).await.is_err() {
            let missing: Vec<_> = acked.difference(&answered).cloned().collect();
            daemon.stop();
            let store = daemon.open_store();
            let q = Queues::new(&store).unwrap();
            let seen: Vec<bool> = missing.iter().map(|m| q.seen(&store, m).unwrap()).collect();
            panic!(
                "unanswered: {missing:?}; seen: {seen:?}; inbox {} rows, outbox {} rows",
                q.inbox(&store).unwrap().len(),
                q.outbox(&store).unwrap().len()
            );
        }
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for id in all_answered(&graph) {
        *counts.entry(id).or_default() += 1;
    }
    let duplicated: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
    println!(
        "crash test: 2000 acknowledged, {} answered, {} answered twice after 10 SIGKILLs",
        counts.len(),
        duplicated.len()
    );
    assert!(duplicated.iter().all(|(_, c)| **c == 2));
    assert!(
        duplicated.len() <= kills * 8,
        "more duplicates than sends in flight at the kills"
    );
    daemon.stop();
    let store = daemon.open_store();
    let q = Queues::new(&store).unwrap();
    assert!(q.inbox(&store).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_running_on_a_broken_config_and_applies_a_good_one() {
    let graph = sim::start().await;
    let mut daemon = Daemon::start(DaemonSpec::with_graph(graph.base_url()));
    let good = std::fs::read_to_string(&daemon.config).unwrap();

    // A broken file: the daemon keeps its configuration and says so.
    std::fs::write(&daemon.config, format!("{good}\n[webhook]\nbogus = 1\n")).unwrap();
    daemon.reload();
    daemon.wait_notify("RELOADING=1");
    let msg = daemon.wait_notify("READY=1");
    assert!(msg.contains("reload failed"), "{msg}");
    let driver = WebhookDriver::new(&daemon.webhook_url(), SIM_APP_SECRET).unwrap();
    let ts = jiff::Timestamp::now().as_second();
    assert!(driver
        .deliver(&PayloadBuilder::default().text_message("491790000001", "wamid.r1", "Hallo", ts))
        .await
        .delivered());
    await_sends(&graph, 1).await;

    // A valid change is applied.
    std::fs::write(
        &daemon.config,
        good.replace("log_level = \"warn\"", "log_level = \"error\""),
    )
    .unwrap();
    daemon.reload();
    daemon.wait_notify("RELOADING=1");
    let msg = daemon.wait_notify("READY=1");
    assert!(msg.contains("reloaded"), "{msg}");

    daemon.stop();
    let store = daemon.open_store();
    let reloads: Vec<String> = store
        .keyspaces()
        .audit
        .iter()
        .map(|g| String::from_utf8_lossy(&g.into_inner().unwrap().1).into_owned())
        .filter(|e| e.contains("config.reloaded"))
        .collect();
    assert_eq!(reloads.len(), 2, "{reloads:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_token_pauses_sending_and_keeps_every_reply() {
    let graph = sim::start().await;
    let mut daemon = Daemon::start(DaemonSpec {
        extra_credentials: vec![("whatsapp-token".into(), "an-expired-token".into())],
        ..DaemonSpec::with_graph(graph.base_url())
    });
    let driver = WebhookDriver::new(&daemon.webhook_url(), SIM_APP_SECRET).unwrap();
    let ts = jiff::Timestamp::now().as_second();
    let p = PayloadBuilder::default();
    for (phone, id) in [
        ("491790000011", "wamid.tok1"),
        ("491790000012", "wamid.tok2"),
    ] {
        assert!(driver
            .deliver(&p.text_message(phone, id, "Hallo", ts))
            .await
            .delivered());
    }
    // Graph answers 401 / code 190: the sender pauses and says so to systemd.
    daemon.wait_notify(
        "STATUS=running, SENDING PAUSED: WhatsApp rejected the access token (see journal)",
    );
    assert!(
        graph.sent().is_empty(),
        "nothing was sent with a rejected token"
    );
    let (_, metrics) = http_get(daemon.metrics, "/metrics");
    assert!(
        metrics.lines().any(|l| l == "frontdesk_sender_paused 1"),
        "the pause is a metric"
    );

    // The admin fixes the credential and reloads: every kept reply goes out, once.
    std::fs::write(
        daemon.dir.path().join("credentials/whatsapp-token"),
        frontdesk::sandbox::whatsapp::SIM_TOKEN,
    )
    .unwrap();
    daemon.reload();
    daemon.wait_notify("STATUS=running");
    await_sends(&graph, 2).await;
    let mut answered = all_answered(&graph);
    answered.sort();
    assert_eq!(answered, vec!["wamid.tok1", "wamid.tok2"]);
    assert!(daemon.stop().is_some_and(|s| s.success()));
    let store = daemon.open_store();
    assert_eq!(
        Queues::new(&store).unwrap().depths(&store).1,
        0,
        "the outbox is empty"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_about_another_business_number_are_dropped_and_audited() {
    let graph = sim::start().await;
    let mut daemon = Daemon::start(DaemonSpec::with_graph(graph.base_url()));
    let driver = WebhookDriver::new(&daemon.webhook_url(), SIM_APP_SECRET).unwrap();
    let ts = jiff::Timestamp::now().as_second();
    let foreign = PayloadBuilder::for_number("199999999999999");
    let delivery = driver
        .deliver(&foreign.text_message("491790000021", "wamid.foreign1", "Hallo", ts))
        .await;
    assert_eq!(delivery.status, Some(200), "Meta must not deliver it again");
    // Our own number is served as usual (and marks the end of the test's traffic).
    assert!(driver
        .deliver(&PayloadBuilder::default().text_message("491790000022", "wamid.own1", "Hallo", ts))
        .await
        .delivered());
    await_sends(&graph, 1).await;
    assert!(graph.texts_to("491790000021").is_empty());
    assert!(daemon.stop().is_some_and(|s| s.success()));

    assert_dropped_and_audited(&daemon, "491790000021", "foreign_number");
}

/// Templates go to the endpoint their current category needs (the reopen template here), a
/// `template_category_update` webhook changes that, and every accepted message is counted once
/// at its pricing category.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_categories_route_sends_and_every_message_is_counted() {
    let graph = sim::start().await;
    graph.set_template_category("wieder_da", "UTILITY");
    let mut daemon = Daemon::start(DaemonSpec {
        whatsapp_toml: "reopen_template = \"wieder_da\"\n\
                        [whatsapp.template_categories]\nwieder_da = \"utility\"\n"
            .into(),
        ..DaemonSpec::with_graph(graph.base_url())
    });
    let driver = WebhookDriver::new(&daemon.webhook_url(), SIM_APP_SECRET).unwrap();
    let ts = jiff::Timestamp::now().as_second();
    let p = PayloadBuilder::default();
    // Each customer's window is closed: the reply becomes the reopen template.
    let closed = |phone: &str| graph.inject_for(phone, sim::Fault::WindowClosed, 1);
    let template_endpoints = |graph: &sim::GraphSim| -> Vec<sim::Endpoint> {
        graph
            .sent()
            .iter()
            .filter(|r| matches!(&r.message, sim::SentMessageKind::Template { name, .. } if name == "wieder_da"))
            .map(|r| r.endpoint)
            .collect()
    };

    // Configured as utility: through /messages.
    closed("491790000031");
    assert!(driver
        .deliver(&p.text_message("491790000031", "wamid.cat1", "Hallo", ts))
        .await
        .delivered());
    await_sends(&graph, 1).await;
    assert_eq!(template_endpoints(&graph), [sim::Endpoint::Messages]);

    // WhatsApp recategorises it as marketing and says so: from now on /marketing_messages.
    graph.set_template_category("wieder_da", "MARKETING");
    let update = p.template_category_update(4711, "wieder_da", "de", "UTILITY", "MARKETING");
    assert!(driver.deliver(&update).await.delivered());
    closed("491790000032");
    assert!(driver
        .deliver(&p.text_message("491790000032", "wamid.cat2", "Hallo", ts))
        .await
        .delivered());
    await_sends(&graph, 2).await;
    assert_eq!(
        template_endpoints(&graph),
        [sim::Endpoint::Messages, sim::Endpoint::MarketingMessages]
    );

    // An impending change is only announced; WhatsApp then changes it back without a completed
    // notification reaching us: /marketing_messages refuses it (131055) and the same send goes
    // through /messages.
    let impending =
        p.template_category_impending(4711, "wieder_da", "de", "MARKETING", "UTILITY", ts + 86_400);
    assert!(driver.deliver(&impending).await.delivered());
    graph.set_template_category("wieder_da", "UTILITY");
    closed("491790000033");
    assert!(driver
        .deliver(&p.text_message("491790000033", "wamid.cat3", "Hallo", ts))
        .await
        .delivered());
    await_sends(&graph, 3).await;
    assert_eq!(
        template_endpoints(&graph),
        [
            sim::Endpoint::Messages,
            sim::Endpoint::MarketingMessages,
            sim::Endpoint::Messages
        ]
    );
    assert!(
        graph.requests().iter().any(|r| r.status == 400),
        "the refused marketing send is on the simulator's record"
    );

    // A plain reply inside the window is a service message.
    assert!(driver
        .deliver(&p.text_message("491790000034", "wamid.cat4", "Hallo", ts))
        .await
        .delivered());
    await_sends(&graph, 4).await;
    assert_eq!(graph.texts_to("491790000034").len(), 1);
    let (_, metrics) = http_get(daemon.metrics, "/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l == "frontdesk_messages_sent_total{category=\"authentication\"} 0"),
        "every category is a metric: {metrics}"
    );

    // A graceful stop finishes sends in flight, so every count is on disk.
    assert!(daemon.stop().is_some_and(|s| s.success()));
    let store = daemon.open_store();
    let rates = frontdesk::config::PricingConfig::default().rates();
    let report =
        frontdesk::stats::report(&store, None, frontdesk::stats::Period::Month, &rates).unwrap();
    let m = report.total.messages;
    // The three failed text attempts (window closed) and the refused marketing send are not
    // messages anyone is billed for.
    assert_eq!(
        (m.service, m.utility, m.marketing, m.authentication),
        (1, 2, 1, 0)
    );
    // 3 × 0.0456 (service, utility, utility) + 0.1365 (marketing) = 0.2733 EUR.
    assert_eq!(report.total.cost_micro_eur, 273_300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_old_message_is_dropped_and_audited() {
    let graph = sim::start().await;
    let mut daemon = Daemon::start(DaemonSpec::with_graph(graph.base_url()));
    let driver = WebhookDriver::new(&daemon.webhook_url(), SIM_APP_SECRET).unwrap();
    let now = jiff::Timestamp::now().as_second();
    // Signed correctly, but from before the daemon's memory of seen ids (14 days by default):
    // a captured body sent again.
    let old = now - 20 * 24 * 3600;
    let delivery = driver
        .deliver(&PayloadBuilder::default().text_message(
            "491790000031",
            "wamid.old1",
            "Hallo",
            old,
        ))
        .await;
    assert_eq!(delivery.status, Some(200), "Meta must not deliver it again");
    // A recent one is taken (and marks the end of the test's traffic).
    let retried = now - 3600;
    assert!(driver
        .deliver(&PayloadBuilder::default().text_message(
            "491790000032",
            "wamid.retry1",
            "Hallo",
            retried
        ))
        .await
        .delivered());
    await_sends(&graph, 1).await;
    assert!(graph.texts_to("491790000031").is_empty());
    assert!(daemon.stop().is_some_and(|s| s.success()));

    assert_dropped_and_audited(&daemon, "491790000031", "replayed_old_message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unreadable_message_does_not_cost_the_rest_of_the_post() {
    let graph = sim::start().await;
    let mut daemon = Daemon::start(DaemonSpec::with_graph(graph.base_url()));
    let driver = WebhookDriver::new(&daemon.webhook_url(), SIM_APP_SECRET).unwrap();
    let ts = jiff::Timestamp::now().as_second();
    let mut post =
        PayloadBuilder::default().text_message("491790000041", "wamid.fine", "Hallo", ts);
    // A second message without its id, as a broken or hostile sender might post it.
    post["entry"][0]["changes"][0]["value"]["messages"]
        .as_array_mut()
        .expect("the builder's post has a messages array")
        .push(serde_json::json!({
            "from": "491790000042", "timestamp": ts.to_string(), "type": "text",
            "text": { "body": "Hallo" }
        }));
    let delivery = driver.deliver(&post).await;
    assert_eq!(delivery.status, Some(200), "the readable message is taken");
    await_sends(&graph, 1).await;
    assert_eq!(graph.texts_to("491790000041").len(), 1);
    assert!(daemon.stop().is_some_and(|s| s.success()));
    assert_dropped_and_audited(&daemon, "491790000042", "malformed_item");
}

/// After the daemon stopped: nothing was stored about `phone`, and a `webhook.rejected` entry
/// gives `reason`.
fn assert_dropped_and_audited(daemon: &Daemon, phone: &str, reason: &str) {
    let store = std::sync::Arc::new(daemon.open_store());
    let customer = store
        .customer(&store.pseudonym(phone))
        .expect("the customer row is readable");
    assert!(customer.is_none());
    let audit = frontdesk::audit::AuditLog::open(store).expect("the audit log opens");
    let rejected = audit
        .query(&frontdesk::audit::AuditFilter {
            action: Some("webhook.rejected".into()),
            ..Default::default()
        })
        .expect("the audit log is readable");
    assert!(
        rejected.iter().any(|r| r.to_csv_line().contains(reason)),
        "{reason} is audited"
    );
}

/// The `message.delivery_failed` audit entries of a stopped daemon, as CSV lines.
fn delivery_failures_audited(daemon: &Daemon) -> Vec<String> {
    let store = std::sync::Arc::new(daemon.open_store());
    let audit = frontdesk::audit::AuditLog::open(store).expect("open the audit log");
    audit
        .query(&frontdesk::audit::AuditFilter {
            action: Some("message.delivery_failed".into()),
            ..Default::default()
        })
        .expect("query the audit log")
        .iter()
        .map(|r| r.to_csv_line())
        .collect()
}

fn reopen_spec(graph: &sim::GraphSim) -> DaemonSpec {
    DaemonSpec {
        whatsapp_toml: "reopen_template = \"wieder_da\"".into(),
        ..DaemonSpec::with_graph(graph.base_url())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_closed_reported_later_sends_the_reopen_template_exactly_once() {
    let graph = sim::start().await;
    let mut daemon = Daemon::start(reopen_spec(&graph));
    let driver = WebhookDriver::new(&daemon.webhook_url(), SIM_APP_SECRET).unwrap();
    graph.send_statuses_to(driver.clone());
    let p = PayloadBuilder::default();
    let ts = jiff::Timestamp::now().as_second();
    let phone = "491790000031";

    // The send is accepted; WhatsApp reports 131047 afterwards, by status webhook.
    graph.inject_for(phone, sim::Fault::FailLater(131_047), 1);
    assert!(driver
        .deliver(&p.text_message(phone, "wamid.late1", "Hallo", ts))
        .await
        .delivered());
    let sent = graph.wait_for_sent(2, WAIT).await.unwrap();
    let reply_id = sent[0].id.clone();
    assert_eq!(graph.status_deliveries()[0].message_id, reply_id);
    assert_eq!(
        graph.templates_to(phone),
        vec![("wieder_da".to_string(), "de".to_string(), Vec::new())]
    );

    // Meta delivers the same status again, before and after a restart: no second template.
    // A message of the same contact behind it is processed after it (one customer, in order).
    let again = p.status_failed(&reply_id, phone, 131_047, "Re-engagement message", "x", ts);
    assert!(driver.deliver(&again).await.delivered());
    assert!(driver
        .deliver(&p.text_message(phone, "wamid.late2", "Noch da?", ts))
        .await
        .delivered());
    await_sends(&graph, 3).await;
    daemon.stop();
    daemon.restart();
    assert!(driver.deliver(&again).await.delivered());
    assert!(driver
        .deliver(&p.text_message(phone, "wamid.late3", "Hallo?", ts))
        .await
        .delivered());
    await_sends(&graph, 4).await;
    assert_eq!(graph.templates_to(phone).len(), 1, "one template");
    assert_eq!(
        answered_in(&graph.sent()),
        ["wamid.late1", "wamid.late2", "wamid.late3"]
    );

    assert!(daemon.stop().is_some_and(|s| s.success()));
    let audited = delivery_failures_audited(&daemon);
    {
        let store = daemon.open_store();
        let q = Queues::new(&store).unwrap();
        assert_eq!(
            q.delivery(&store, &reply_id).unwrap(),
            Some(DeliveryState::Failed)
        );
        assert_eq!(
            q.delivery_failure(&store, &reply_id).unwrap(),
            Some(FailureHandling::ReopenTemplate),
            "the delivery record says what happened"
        );
        assert!(q.inbox(&store).unwrap().is_empty(), "inbox drained");
        assert!(q.outbox(&store).unwrap().is_empty(), "outbox drained");
    }
    assert_eq!(audited.len(), 1, "{audited:?}");
    for word in ["131047", "window_closed", "reopen_template"] {
        assert!(audited[0].contains(word), "{audited:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undeliverable_reported_later_is_recorded_and_not_sent_again() {
    let graph = sim::start().await;
    let mut daemon = Daemon::start(reopen_spec(&graph));
    let driver = WebhookDriver::new(&daemon.webhook_url(), SIM_APP_SECRET).unwrap();
    graph.send_statuses_to(driver.clone());
    let phone = "491790000032";
    graph.inject_for(phone, sim::Fault::FailLater(131_026), 1);
    let ts = jiff::Timestamp::now().as_second();
    assert!(driver
        .deliver(&PayloadBuilder::default().text_message(phone, "wamid.und1", "Hallo", ts))
        .await
        .delivered());
    await_metric(
        &daemon,
        "frontdesk_send_failures_total{reason=\"undeliverable\",stage=\"status\"} 1",
        WAIT,
    )
    .await;
    assert!(daemon.stop().is_some_and(|s| s.success()));
    let sent = graph.sent();
    assert_eq!(sent.len(), 1, "not sent again: {sent:?}");
    let store = daemon.open_store();
    let q = Queues::new(&store).unwrap();
    assert_eq!(
        q.delivery(&store, &sent[0].id).unwrap(),
        Some(DeliveryState::Failed)
    );
    assert_eq!(
        q.delivery_failure(&store, &sent[0].id).unwrap(),
        Some(FailureHandling::Undeliverable)
    );
    assert!(q.outbox(&store).unwrap().is_empty());
    assert!(q.deferred(&store).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_template_alerts_without_retry_and_the_spam_limit_slows_down_and_alerts() {
    let graph = sim::start().await;
    let mut daemon = Daemon::start(reopen_spec(&graph));
    let driver = WebhookDriver::new(&daemon.webhook_url(), SIM_APP_SECRET).unwrap();
    let p = PayloadBuilder::default();
    let ts = jiff::Timestamp::now().as_second();

    // The window is closed, and the re-open template is paused for low quality.
    let closed = "491790000033";
    graph.inject_for(closed, sim::Fault::Error(131_047), 1);
    graph.inject_for(closed, sim::Fault::Error(132_015), 1);
    assert!(driver
        .deliver(&p.text_message(closed, "wamid.tp1", "Hallo", ts))
        .await
        .delivered());
    await_metric(
        &daemon,
        "frontdesk_send_failures_total{reason=\"template_paused\",stage=\"call\"} 1",
        WAIT,
    )
    .await;

    // The spam rate limit: the reply is kept, the whole sender slows down.
    let spam = "491790000034";
    graph.inject_for(spam, sim::Fault::Error(131_048), 1);
    assert!(driver
        .deliver(&p.text_message(spam, "wamid.sp1", "Hallo", ts))
        .await
        .delivered());
    await_metric(&daemon, "frontdesk_sender_slowed 1", WAIT).await;
    await_metric(
        &daemon,
        "frontdesk_send_failures_total{reason=\"spam_limit\",stage=\"call\"} 1",
        WAIT,
    )
    .await;
    assert!(daemon.stop().is_some_and(|s| s.success()));

    let to_closed: Vec<(String, u16)> = graph
        .requests()
        .iter()
        .filter(|r| r.recipient.as_deref() == Some(closed))
        .map(|r| (r.kind.clone(), r.status))
        .collect();
    assert_eq!(
        to_closed,
        [("text".to_string(), 400), ("template".to_string(), 400)],
        "the paused template is not retried"
    );
    assert!(graph.sent().is_empty(), "{:?}", graph.sent());
    let audited = delivery_failures_audited(&daemon);
    let paused: Vec<&String> = audited
        .iter()
        .filter(|l| l.contains("template_paused"))
        .collect();
    assert_eq!(paused.len(), 1, "{audited:?}");
    assert!(paused[0].contains("staff_alert"), "{paused:?}");
    let spammed: Vec<&String> = audited
        .iter()
        .filter(|l| l.contains("spam_limit"))
        .collect();
    assert_eq!(spammed.len(), 1, "{audited:?}");
    assert!(spammed[0].contains("slowed_down"), "{spammed:?}");
    let store = daemon.open_store();
    let q = Queues::new(&store).unwrap();
    let kept = q.outbox(&store).unwrap();
    assert_eq!(kept.len(), 1, "the spam-limited reply is kept for later");
    assert_eq!(kept[0].pseudonym, store.pseudonym(spam));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_queue_rows_are_quarantined_and_the_rest_flows() {
    use frontdesk::whatsapp::payload::{Content, InboundMessage};
    use frontdesk::whatsapp::queue::{InboxEntry, OutboundKind, OutboxEntry};
    const WAITING: &str = "491790000021";
    const REPLIED: &str = "491790000022";
    let graph = sim::start().await;
    let mut daemon = Daemon::start(DaemonSpec::with_graph(graph.base_url()));
    daemon.stop();
    {
        // A message waiting in the inbox and a reply waiting in the outbox, both then damaged
        // on disk.
        let store = daemon.open_store();
        let q = Queues::new(&store).unwrap();
        let (waiting, replied) = (store.pseudonym(WAITING), store.pseudonym(REPLIED));
        let message = InboundMessage {
            id: "wamid.q1".into(),
            from: WAITING.into(),
            user_id: None,
            parent_user_id: None,
            timestamp: jiff::Timestamp::now().as_second(),
            phone_number_id: frontdesk::sandbox::whatsapp::SIM_PHONE_NUMBER_ID.into(),
            contact_name: None,
            reply_to: None,
            username: None,
            referral: None,
            error_codes: Vec::new(),
            content: Content::Text("Hallo".into()),
        };
        let mut batch = store.batch();
        let inbox = q
            .push_inbox(
                &store,
                &mut batch,
                &[(waiting, InboxEntry::Message(message))],
            )
            .unwrap();
        store.data_key_or_create(&replied, &mut batch).unwrap();
        let reply = OutboxEntry {
            to: REPLIED.into(),
            kind: OutboundKind::Text("Antwort".into()),
            created: jiff::Timestamp::now(),
            history: Vec::new(),
        };
        let outbox = q.push_outbox(&store, &mut batch, &replied, &reply).unwrap();
        store.commit_durable(batch).unwrap();
        for (keyspace, key) in [
            (&store.keyspaces().inbox, &inbox[0]),
            (&store.keyspaces().outbox, &outbox),
        ] {
            let mut v = keyspace.get(key).unwrap().unwrap().to_vec();
            let last = v.len() - 1;
            v[last] ^= 0x55;
            keyspace.insert(key, v).unwrap();
        }
        store.persist().unwrap();
    }

    // The daemon starts, quarantines both, and another customer is answered.
    daemon.restart();
    let driver = WebhookDriver::new(&daemon.webhook_url(), SIM_APP_SECRET).unwrap();
    let ts = jiff::Timestamp::now().as_second();
    assert!(driver
        .deliver(&PayloadBuilder::default().text_message("491790000023", "wamid.q3", "Hallo", ts))
        .await
        .delivered());
    await_sends(&graph, 1).await;
    assert_eq!(all_answered(&graph), vec!["wamid.q3"]);
    await_metric(
        &daemon,
        r#"frontdesk_quarantined_rows_total{queue="inbox"} 1"#,
        WAIT,
    )
    .await;
    await_metric(
        &daemon,
        r#"frontdesk_quarantined_rows_total{queue="outbox"} 1"#,
        WAIT,
    )
    .await;
    assert!(graph.texts_to(REPLIED).is_empty());
    assert!(daemon.stop().is_some_and(|s| s.success()));

    let store = std::sync::Arc::new(daemon.open_store());
    let counts = store.quarantined().unwrap();
    assert_eq!(counts.get("inbox"), Some(&1));
    assert_eq!(counts.get("outbox"), Some(&1));
    let audit = frontdesk::audit::AuditLog::open(store).unwrap();
    let quarantined = audit
        .query(&frontdesk::audit::AuditFilter {
            action: Some("queue.row_quarantined".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(quarantined.len(), 2);
}
