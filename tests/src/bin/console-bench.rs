//! Staff console benchmark: the real daemon (`frontdesk-fixed`) over a store of 100,000
//! customers of whom 1,000 wait for a person (hand-overs). Prints, over loopback, the time to
//! answer the inbox page and a conversation page (p50, p95), the time from a signed webhook to
//! the browser's live update on the event stream (p50, p95), and the daemon's resident memory
//! before and after the console was used, by phase, and how much of the growth is the store's
//! block cache (`frontdesk_store_cache_bytes`). The daemon's own reads after a start fill that
//! cache to its bound within a minute; the figures are taken once it has settled.
//!
//! Usage: console-bench [--customers N] [--handovers N] [--rounds N] [--phases 1]
//!
//! With `--phases 1` it first times, in this process on the populated store, the reads one
//! inbox page was built from before the console kept an index: the hand-over marks, one pass
//! over every clear header, and the sealed bodies of the rows shown.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use frontdesk::audit::StaffName;
use frontdesk::console::accounts::{self, Role};
use frontdesk::sandbox::whatsapp::{self as sim, PayloadBuilder, WebhookDriver, SIM_APP_SECRET};
use frontdesk::store::customers::BotMode;
use frontdesk::store::messages::{Direction, Message};
use frontdesk::turn::{attention, AlertKind, StaffAlert};
use frontdesk_tests::harness::{http_get, Daemon, DaemonSpec};

const PASSWORD: &str = "bench-password-1";

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn phone(i: usize) -> String {
    format!("49151{i:08}")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The store's block cache in kB, from the daemon's metrics.
fn cache_kb(daemon: &Daemon) -> u64 {
    let (_, text) = http_get(daemon.metrics, "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix("frontdesk_store_cache_bytes "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(0, |b| b / 1024)
}

/// Waits until the started daemon's own work after start (the sweeps over every customer, the
/// store's compactions after the bulk load) has filled its block cache to the bound or left it
/// unchanged for five seconds, so the figures after it are the console's and not the start's.
fn settle(daemon: &Daemon, pid: u32) {
    let bound = frontdesk::store::BLOCK_CACHE_BYTES / 1024;
    let start = Instant::now();
    let (mut last, mut unchanged) = (cache_kb(daemon), 0);
    while unchanged < 5 && last < bound * 99 / 100 && start.elapsed() < Duration::from_secs(300) {
        // A poll of a gauge, not a synchronisation: the daemon says nothing when it is done.
        std::thread::sleep(Duration::from_secs(1));
        let now = cache_kb(daemon);
        unchanged = if now == last { unchanged + 1 } else { 0 };
        last = now;
    }
    println!(
        "settled {:.0} s after start: block cache {:.1} MB, daemon RSS {:.1} MB",
        start.elapsed().as_secs_f64(),
        last as f64 / 1024.0,
        rss_kb(pid) as f64 / 1024.0
    );
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Fills the stopped daemon's store: customers with two messages each, the first
/// `handovers` of them escalated with a hand-over mark, and one owner account.
fn populate(
    daemon: &Daemon,
    customers: usize,
    handovers: usize,
) -> anyhow::Result<(Vec<String>, Vec<frontdesk::store::crypto::Pseudonym>)> {
    let store = daemon.open_store();
    let start = Instant::now();
    store.start_bulk_load();
    let now = jiff::Timestamp::now();
    let mut waiting = Vec::new();
    let mut waiting_pseudonyms = Vec::new();
    for i in 0..customers {
        let at = now - jiff::SignedDuration::from_secs(i as i64);
        let (c, ()) = store.update_customer(&phone(i), at, |c, batch, st| {
            c.body.profile.vorname = Some(format!("Vorname{i}"));
            c.meta.last_inbound = Some(at);
            if i < handovers {
                c.meta.mode = BotMode::Escalated;
            }
            for (direction, text) in [
                (Direction::Inbound, "Hallo, ich möchte ein Probetraining."),
                (Direction::Outbound, "Gern! Wann passt es Ihnen?"),
            ] {
                st.append_message(
                    c,
                    &Message {
                        direction,
                        text: text.into(),
                        at,
                        wamid: None,
                    },
                    batch,
                )?;
            }
            if i < handovers {
                attention::mark(
                    st,
                    batch,
                    &StaffAlert {
                        kind: AlertKind::Complaint,
                        pseudonym: c.pseudonym,
                    },
                    at,
                );
            }
            Ok(())
        })?;
        if i < handovers {
            waiting.push(c.pseudonym.short());
            waiting_pseudonyms.push(c.pseudonym);
        }
    }
    store.finish_bulk_load()?;
    accounts::add(
        &store,
        &StaffName::parse("bench").expect("valid name"),
        Role::Owner,
        PASSWORD,
    )?;
    store.flush()?;
    println!(
        "populate: {customers} customers ({handovers} handed over) in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok((waiting, waiting_pseudonyms))
}

/// One HTTP/1.1 request on a fresh connection; returns status, headers and body.
fn request(addr: SocketAddr, head: &str, body: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("console reachable");
    write!(
        s,
        "{head}\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("request written");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("answer read");
    let (headers, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, headers.to_string(), body.to_string())
}

fn cookie_value(headers: &str, name: &str) -> Option<String> {
    headers.lines().find_map(|l| {
        let v = l.strip_prefix("set-cookie: ")?;
        let v = v.strip_prefix(name)?.strip_prefix('=')?;
        Some(v.split(';').next()?.to_string())
    })
}

fn sign_in(addr: SocketAddr) -> String {
    let (_, headers, page) = request(addr, "GET /login HTTP/1.1", "");
    let login = cookie_value(&headers, "fd_login").expect("login cookie");
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("csrf field")
        .to_string();
    let body = format!("csrf={csrf}&next=%2F&name=bench&password={PASSWORD}");
    let (status, headers, _) = request(
        addr,
        &format!(
            "POST /login HTTP/1.1\r\nCookie: fd_login={login}\r\nContent-Type: application/x-www-form-urlencoded"
        ),
        &body,
    );
    assert_eq!(status, 303, "sign-in failed");
    cookie_value(&headers, "fd_session").expect("session cookie")
}

fn timed_gets(addr: SocketAddr, session: &str, paths: &[String]) -> Vec<Duration> {
    let mut times: Vec<Duration> = paths
        .iter()
        .map(|path| {
            let start = Instant::now();
            let (status, _, _) = request(
                addr,
                &format!("GET {path} HTTP/1.1\r\nCookie: fd_session={session}"),
                "",
            );
            let took = start.elapsed();
            assert_eq!(status, 200, "{path}");
            took
        })
        .collect();
    times.sort();
    times
}

/// Times the phases of the inbox as it was read without an index (see `--phases`).
fn profile_phases(
    daemon: &Daemon,
    waiting: &[frontdesk::store::crypto::Pseudonym],
) -> anyhow::Result<()> {
    let store = daemon.open_store();
    let rss0 = rss_kb(std::process::id());
    for round in 0..3 {
        let start = Instant::now();
        let marks = attention::all(&store)?;
        let t_marks = start.elapsed();
        let start = Instant::now();
        let mut headers = 0usize;
        for item in store.customer_metas() {
            let (_, meta) = item?;
            headers += usize::from(meta.mode != BotMode::OptedOut);
        }
        let t_scan = start.elapsed();
        let start = Instant::now();
        for p in waiting.iter().take(130) {
            store.customer(p)?;
        }
        let t_rows = start.elapsed();
        println!(
            "phases (round {round}): {} marks {:.1} ms, {headers} clear headers {:.1} ms, 130 sealed rows {:.1} ms; RSS +{:.1} MB",
            marks.len(),
            ms(t_marks),
            ms(t_scan),
            ms(t_rows),
            rss_kb(std::process::id()).saturating_sub(rss0) as f64 / 1024.0
        );
    }
    Ok(())
}

/// Prints the daemon's resident memory: `rss` in kB before the console was used and after
/// each phase (sign-in, inbox, conversations, live updates), the block cache before and after.
fn print_memory(rss: &[u64; 5], cache: (u64, u64), rounds: usize) {
    let mb = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1024.0;
    let (before, after) = (rss[0], rss[4]);
    println!(
        "daemon RSS: {:.1} MB before the console was used, {:.1} MB after: +{:.1} MB (goal: extra <= 20 MB)",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        mb(before, after)
    );
    let cache_grown = mb(cache.0, cache.1);
    println!(
        "of that, the store's block cache (bounded at {} MB) {:.1} -> {:.1} MB: +{cache_grown:.1} MB; the rest +{:.1} MB",
        frontdesk::store::BLOCK_CACHE_BYTES / (1024 * 1024),
        cache.0 as f64 / 1024.0,
        cache.1 as f64 / 1024.0,
        mb(before, after) - cache_grown
    );
    println!(
        "daemon RSS growth by phase: sign-in +{:.1} MB, inbox pages +{:.1} MB, conversation pages +{:.1} MB, live updates with {rounds} turns +{:.1} MB",
        mb(rss[0], rss[1]),
        mb(rss[1], rss[2]),
        mb(rss[2], rss[3]),
        mb(rss[3], rss[4])
    );
}

fn main() -> anyhow::Result<()> {
    let customers = arg("--customers", 100_000);
    let handovers = arg("--handovers", 1_000).min(customers);
    let rounds = arg("--rounds", 100).max(2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let graph = sim::start().await;
        let mut daemon = Daemon::start(DaemonSpec::with_graph(graph.base_url()));
        daemon.stop();
        let (waiting, waiting_pseudonyms) = populate(&daemon, customers, handovers)?;
        if arg("--phases", 0) == 1 {
            profile_phases(&daemon, &waiting_pseudonyms)?;
        }
        daemon.restart();
        let pid = daemon.pid().expect("daemon runs");
        let addr = daemon.console;
        settle(&daemon, pid);
        let rss_before = rss_kb(pid);
        let cache_before = cache_kb(&daemon);
        let session = sign_in(addr);
        let rss_signed_in = rss_kb(pid);

        let inbox = timed_gets(addr, &session, &vec!["/".to_string(); rounds]);
        println!(
            "inbox page: p50 {:.1} ms, p95 {:.1} ms (goal p95 <= 50 ms)",
            ms(percentile(&inbox, 0.5)),
            ms(percentile(&inbox, 0.95))
        );
        let rss_inbox = rss_kb(pid);
        let pages: Vec<String> = (0..rounds)
            .map(|i| format!("/c/{}", waiting[(i * 7919) % waiting.len()]))
            .collect();
        let conv = timed_gets(addr, &session, &pages);
        println!(
            "conversation page: p50 {:.1} ms, p95 {:.1} ms (goal p95 <= 50 ms)",
            ms(percentile(&conv, 0.5)),
            ms(percentile(&conv, 0.95))
        );

        let rss_conversations = rss_kb(pid);
        // The live stream: one change event per answered webhook message.
        let mut stream = TcpStream::connect(addr)?;
        write!(
            stream,
            "GET /events HTTP/1.1\r\nHost: {addr}\r\nCookie: fd_session={session}\r\n\r\n"
        )?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut events = BufReader::new(stream);
        let mut line = String::new();
        // Headers and the first `retry:` chunk: the stream is subscribed from here on.
        while !line.starts_with("retry:") {
            line.clear();
            events.read_line(&mut line)?;
        }
        let driver = WebhookDriver::new(&daemon.webhook_url(), SIM_APP_SECRET)?;
        let p = PayloadBuilder::default();
        let ts = jiff::Timestamp::now().as_second();
        let mut live = Vec::new();
        for i in 0..rounds {
            // Contacts the assistant still answers, so each message is a full turn.
            let from = phone(handovers + i);
            let payload = p.text_message(&from, &format!("wamid.bench{i}"), "Hallo", ts + i as i64);
            let start = Instant::now();
            assert!(driver.deliver(&payload).await.delivered());
            loop {
                line.clear();
                events.read_line(&mut line)?;
                if line.starts_with("event: change") {
                    break;
                }
            }
            live.push(start.elapsed());
        }
        live.sort();
        println!(
            "webhook to live update: p50 {:.1} ms, p95 {:.1} ms (goal p95 <= 500 ms)",
            ms(percentile(&live, 0.5)),
            ms(percentile(&live, 0.95))
        );
        print_memory(
            &[
                rss_before,
                rss_signed_in,
                rss_inbox,
                rss_conversations,
                rss_kb(pid),
            ],
            (cache_before, cache_kb(&daemon)),
            rounds,
        );
        daemon.stop();
        anyhow::Ok(())
    })
}
