//! Webhook load benchmark: the real daemon with the engine replaced by an instant fixed reply,
//! 64 concurrent signed senders over loopback. Runs twice in one process, each time against a
//! fresh daemon: once with senders known by phone number only, once with half of them writing
//! without their number (WhatsApp user id only). Prints, for each, acknowledged requests per
//! second, the acknowledgement latency (p50, p99) and whether every message got exactly one
//! reply, then the ratio of the two rates.
//!
//! Usage: webhook-bench [--senders N] [--messages N] [--rounds N]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use frontdesk::sandbox::whatsapp::{self as sim, PayloadBuilder, SIM_APP_SECRET};
use frontdesk::whatsapp::signature;
use frontdesk_tests::harness::{Daemon, DaemonSpec};
use http_body_util::Full;
use hyper::Request;

/// Distinct contacts the messages come from.
const CONTACTS: usize = 1000;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Which senders write without their phone number.
#[derive(Clone, Copy)]
enum Senders {
    PhoneOnly,
    HalfUserIdOnly,
}

impl Senders {
    fn label(self) -> &'static str {
        match self {
            Senders::PhoneOnly => "phone numbers only",
            Senders::HalfUserIdOnly => "half user id only",
        }
    }
}

/// One run against a fresh daemon; returns acknowledged requests per second.
async fn run(senders: usize, messages: usize, kind: Senders) -> anyhow::Result<f64> {
    let graph = sim::start().await;
    let daemon = Daemon::start(DaemonSpec::with_graph(graph.base_url()));
    let addr = daemon.webhook;
    let p = PayloadBuilder::default();
    let ts = jiff::Timestamp::now().as_second();
    // Pre-sign every body so the load generator measures the daemon, not itself.
    let bodies: Arc<Vec<(Bytes, String)>> = Arc::new(
        (0..messages)
            .map(|i| {
                let contact = i % CONTACTS;
                let id = format!("wamid.bench.{i}");
                let body = match kind {
                    Senders::HalfUserIdOnly if contact % 2 == 1 => p.text_message_from_user_id(
                        &format!("DE.9173{contact:08}"),
                        &id,
                        "Hallo",
                        ts,
                    ),
                    _ => p.text_message(&format!("4917300{contact:05}"), &id, "Hallo", ts),
                }
                .to_string();
                let sig = signature::sign(SIM_APP_SECRET.as_bytes(), body.as_bytes());
                (Bytes::from(body), sig)
            })
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..senders {
        let bodies = bodies.clone();
        let next = next.clone();
        tasks.spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr)
                .await
                .expect("connect to the webhook");
            stream.set_nodelay(true).expect("set TCP_NODELAY");
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .expect("HTTP/1 handshake");
            tokio::spawn(conn);
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((body, sig)) = bodies.get(i) else {
                    break;
                };
                let req = Request::post("/webhook")
                    .header("host", addr.to_string())
                    .header("content-type", "application/json")
                    .header(signature::HEADER, sig)
                    .body(Full::new(body.clone()))
                    .expect("request");
                let t = Instant::now();
                let resp = send.send_request(req).await.expect("send a webhook");
                assert_eq!(resp.status(), 200);
                latencies.push(t.elapsed());
            }
            latencies
        });
    }
    let mut latencies: Vec<Duration> = Vec::new();
    while let Some(r) = tasks.join_next().await {
        latencies.extend(r.expect("sender task panicked"));
    }
    let elapsed = start.elapsed();
    latencies.sort();
    let pct = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    let rate = latencies.len() as f64 / elapsed.as_secs_f64();
    println!(
        "webhook, {senders} signed senders, {}: {} acknowledged in {:.2} s = {rate:.0} req/s; ack latency p50 {:.2} ms, p99 {:.2} ms",
        kind.label(),
        latencies.len(),
        elapsed.as_secs_f64(),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
    );
    check_replies(&graph, messages).await;
    drop(daemon);
    Ok(rate)
}

/// Waits until every acknowledged message is answered and prints whether exactly once.
async fn check_replies(graph: &sim::GraphSim, messages: usize) {
    // Every acknowledged message is answered exactly once.
    let drained = Instant::now();
    loop {
        let sent = graph.sent();
        let mut counts: HashMap<String, usize> = HashMap::new();
        let mut to_user_ids = 0;
        for r in &sent {
            if let sim::SentMessageKind::Text { body, .. } = &r.message {
                if r.recipient.starts_with("DE.") {
                    to_user_ids += 1;
                }
                for id in body.trim_start_matches("Danke! ").split(',') {
                    *counts.entry(id.to_string()).or_default() += 1;
                }
            }
        }
        if counts.len() >= messages {
            let once = counts.values().filter(|c| **c == 1).count();
            println!(
                "replies: {} of {messages} messages answered, {:.1} % exactly once, {to_user_ids} replies to user ids; all replies sent {:.2} s after the last acknowledgement",
                counts.len(),
                100.0 * once as f64 / messages as f64,
                drained.elapsed().as_secs_f64()
            );
            break;
        }
        let _ = graph
            .wait_for_sent(sent.len() + 1, Duration::from_secs(60))
            .await;
    }
}

/// The middle value (of an odd count; the upper middle otherwise).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let senders = arg("--senders", 64);
    let messages = arg("--messages", 20_000);
    let rounds = arg("--rounds", 3).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (mut phone, mut half) = (Vec::new(), Vec::new());
        // Alternating, so that a slow phase of the machine does not favour one of the two.
        for _ in 0..rounds {
            phone.push(run(senders, messages, Senders::PhoneOnly).await?);
            half.push(run(senders, messages, Senders::HalfUserIdOnly).await?);
        }
        let (phone, half) = (median(phone), median(half));
        println!(
            "half user id only / phone numbers only: {half:.0} / {phone:.0} req/s = {:.3} (goal >= 0.95)",
            half / phone
        );
        anyhow::Ok(())
    })
}
