//! Sender benchmark: how soon a paused outbox drains once the WhatsApp credential is fixed.
//!
//! The real daemon (engine replaced by an instant fixed reply) starts with a token the Graph
//! simulator rejects; N contacts write, and their replies wait in the paused outbox. Then the
//! credential file is fixed and
//!
//! - the daemon is reloaded (SIGHUP, what `systemctl reload` does): measured from the signal to
//!   the last reply the simulator accepted;
//! - for comparison, a second daemon prepared the same way is stopped and started again with
//!   the fixed credential: measured from the start of the process to the last reply.
//!
//! Prints both absolute times and their ratio (reload ÷ restart).
//!
//! Usage: sender-bench [--replies N]

use std::time::{Duration, Instant};

use frontdesk::sandbox::whatsapp::{self as sim, PayloadBuilder, WebhookDriver, SIM_APP_SECRET};
use frontdesk_tests::harness::{http_get, Daemon, DaemonSpec};

const WAIT: Duration = Duration::from_secs(300);

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A daemon whose sender is paused on a rejected token, with `replies` replies (one per
/// contact) waiting in its outbox.
async fn paused_with_outbox(replies: usize) -> anyhow::Result<(sim::GraphSim, Daemon)> {
    let graph = sim::start().await;
    let daemon = Daemon::start(DaemonSpec {
        extra_credentials: vec![("whatsapp-token".into(), "an-expired-token".into())],
        ..DaemonSpec::with_graph(graph.base_url())
    });
    let driver = WebhookDriver::new(&daemon.webhook_url(), SIM_APP_SECRET)?;
    let p = PayloadBuilder::default();
    let ts = jiff::Timestamp::now().as_second();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..16 {
        let (driver, p) = (driver.clone(), p.clone());
        tasks.spawn(async move {
            for i in (worker..replies).step_by(16) {
                let body = p.text_message(
                    &format!("4917400{i:05}"),
                    &format!("wamid.sb{i}"),
                    "Hallo",
                    ts,
                );
                assert!(driver.deliver(&body).await.delivered(), "webhook delivery");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r?;
    }
    // Every reply is in the outbox (the gauge is read from the store at each scrape).
    let want = format!("frontdesk_outbox_depth {replies}");
    let deadline = Instant::now() + WAIT;
    loop {
        let addr = daemon.metrics;
        let (_, text) = tokio::task::spawn_blocking(move || http_get(addr, "/metrics")).await?;
        if text.lines().any(|l| l == want) && text.lines().any(|l| l == "frontdesk_sender_paused 1")
        {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the outbox did not fill");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::ensure!(
        graph.sent().is_empty(),
        "nothing is sent with a rejected token"
    );
    Ok((graph, daemon))
}

fn fix_token(daemon: &Daemon) -> anyhow::Result<()> {
    std::fs::write(
        daemon.dir.path().join("credentials/whatsapp-token"),
        sim::SIM_TOKEN,
    )?;
    Ok(())
}

async fn drained(graph: &sim::GraphSim, replies: usize) -> anyhow::Result<()> {
    graph
        .wait_for_sent(replies, WAIT)
        .await
        .map_err(|e| anyhow::anyhow!("outbox not drained: {e}"))?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let replies = arg("--replies", 500).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (graph, daemon) = paused_with_outbox(replies).await?;
        fix_token(&daemon)?;
        let start = Instant::now();
        daemon.reload();
        drained(&graph, replies).await?;
        let reload = start.elapsed();
        println!(
            "sender, {replies} paused replies: credential fixed + reload -> outbox drained in {:.3} s ({:.0} replies/s)",
            reload.as_secs_f64(),
            replies as f64 / reload.as_secs_f64()
        );
        drop(daemon);

        let (graph, mut daemon) = paused_with_outbox(replies).await?;
        daemon.stop();
        fix_token(&daemon)?;
        let start = Instant::now();
        daemon.restart();
        drained(&graph, replies).await?;
        let restart = start.elapsed();
        println!(
            "sender, {replies} paused replies: credential fixed + restart -> outbox drained in {:.3} s ({:.0} replies/s)",
            restart.as_secs_f64(),
            replies as f64 / restart.as_secs_f64()
        );
        println!(
            "reload / restart: {:.3} / {:.3} s = {:.3}",
            reload.as_secs_f64(),
            restart.as_secs_f64(),
            reload.as_secs_f64() / restart.as_secs_f64()
        );
        anyhow::Ok(())
    })
}
