//! Tunnel benchmark on loopback: the latency a webhook POST gains by going through
//! `frontdesk relay` and the reverse HTTP/2 tunnel instead of reaching the same service directly
//! over HTTPS, the throughput of 64 concurrent requests through one tunnel, and the p99 of a
//! signed delivery while 64 stalled streams and 1,000 idle connections are open, divided by the
//! p99 with none (the relay's resistance to starvation; goal ≤ 2).
//!
//! Usage: `tunnel-bench [sequential-requests] [requests-per-worker]` (defaults 2000 and 200);
//! figures are printed, nothing is asserted.
#![expect(
    clippy::unwrap_used,
    reason = "a benchmark: a panic is its failure report"
)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use frontdesk::tunnel::{
    run_tunnel, start_relay, BoxEntry, RelayConfig, TunnelClientConfig, TunnelState, TunnelTimings,
    TunnelToken,
};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

const HOST: &str = "bench.test";
const WORKERS: usize = 64;
const STALLED_STREAMS: usize = 64;
const IDLE_CONNECTIONS: usize = 1000;
/// Idle connections per loopback source address, below the relay's default per-address cap (64),
/// so that all 1,000 are held: the case of an attacker with many addresses.
const IDLE_PER_ADDRESS: usize = 20;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Writes a CA and a certificate for `relay.test` and [`HOST`] into `dir`.
fn make_pki(dir: &Path) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["relay.test".to_string(), HOST.to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
}

/// Stands in for the webhook: reads the body, answers 200 with a short body.
async fn webhook(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    Ok(Response::new(Full::new(Bytes::from(format!("ok {body}")))))
}

/// The same service served directly over HTTPS (HTTP/1.1), the baseline.
async fn serve_direct(dir: &Path) -> SocketAddr {
    let certs = CertificateDer::pem_file_iter(dir.join("cert.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("key.pem")).unwrap();
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), hyper::service::service_fn(webhook))
                        .await;
                }
            });
        }
    });
    addr
}

fn connector(ca: &Path, alpn: &[u8]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// A TLS connection to `addr` from the loopback address `from`.
async fn tls_from(
    connector: &tokio_rustls::TlsConnector,
    from: std::net::IpAddr,
    addr: SocketAddr,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    connector
        .connect(ServerName::try_from(HOST).unwrap(), tcp)
        .await
        .unwrap()
}

/// One keep-alive HTTPS/1.1 connection.
async fn connect(addr: SocketAddr, ca: &Path) -> SendRequest<Full<Bytes>> {
    let tls = tls_from(
        &connector(ca, b"http/1.1"),
        std::net::Ipv4Addr::LOCALHOST.into(),
        addr,
    )
    .await;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn post(send: &mut SendRequest<Full<Bytes>>, body: &Bytes) -> Duration {
    let started = Instant::now();
    send.ready().await.unwrap();
    let req = Request::post("/webhook")
        .header("host", HOST)
        .header("content-type", "application/json")
        .header(
            frontdesk::whatsapp::signature::HEADER,
            frontdesk::whatsapp::signature::sign(b"bench-app-secret", body),
        )
        .body(Full::new(body.clone()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body().collect().await.unwrap();
    started.elapsed()
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn latencies(addr: SocketAddr, ca: &Path, n: usize, body: &Bytes) -> Vec<Duration> {
    let mut send = connect(addr, ca).await;
    for _ in 0..50 {
        post(&mut send, body).await;
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(post(&mut send, body).await);
    }
    out.sort();
    out
}

/// A request body that announces `len` bytes and never sends one.
struct StalledBody(u64);

impl hyper::body::Body for StalledBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Pending
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.0)
    }
}

/// p99 of sequential signed deliveries with nothing else open, then with 64 stalled streams and
/// 1,000 idle connections open, and their ratio.
async fn starvation(relay: &frontdesk::tunnel::RelayHandle, ca: &Path, n: usize, body: &Bytes) {
    let quiet = latencies(relay.public_addr(), ca, n, body).await;

    let idle_tls = connector(ca, b"h2");
    let mut idle = Vec::with_capacity(IDLE_CONNECTIONS);
    for i in 0..IDLE_CONNECTIONS {
        let octet = u8::try_from(i / IDLE_PER_ADDRESS + 1).unwrap();
        let from = std::net::Ipv4Addr::new(127, 0, 1, octet).into();
        idle.push(tls_from(&idle_tls, from, relay.public_addr()).await);
    }
    let mut stalled = Vec::with_capacity(STALLED_STREAMS);
    let per_connection = 32;
    for c in 0..STALLED_STREAMS / per_connection {
        let from = std::net::Ipv4Addr::new(127, 0, 2, u8::try_from(c + 1).unwrap()).into();
        let tls = tls_from(&idle_tls, from, relay.public_addr()).await;
        let (send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(tls),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        for _ in 0..per_connection {
            let mut send = send.clone();
            stalled.push(tokio::spawn(async move {
                let req = Request::post(format!("https://{HOST}/webhook"))
                    .header("content-length", "1000")
                    .header("x-hub-signature-256", format!("sha256={}", "0".repeat(64)))
                    .body(StalledBody(1000))
                    .unwrap();
                send.send_request(req).await.map(|r| r.status())
            }));
        }
    }
    let mut open = relay.open_requests();
    open.wait_for(|k| *k >= STALLED_STREAMS).await.unwrap();
    let open_connections = relay.public_connections();

    let attacked = latencies(relay.public_addr(), ca, n, body).await;
    let finished = stalled.iter().filter(|s| s.is_finished()).count();
    println!(
        "signed deliveries, n={n}, while {STALLED_STREAMS} stalled streams and {IDLE_CONNECTIONS} idle connections are open \
         ({open_connections} public connections held, {finished} stalled streams ended early):"
    );
    println!(
        "  none open:      p50 {:>9.1?}  p99 {:>9.1?}",
        pct(&quiet, 0.5),
        pct(&quiet, 0.99)
    );
    println!(
        "  under attack:   p50 {:>9.1?}  p99 {:>9.1?}",
        pct(&attacked, 0.5),
        pct(&attacked, 0.99)
    );
    println!(
        "  p99 ratio (goal <= 2): {:.2}",
        pct(&attacked, 0.99).as_secs_f64() / pct(&quiet, 0.99).as_secs_f64()
    );
    for s in stalled {
        s.abort();
    }
    drop(idle);
}

fn main() {
    // 1,000 idle connections hold two descriptors each in this one process (client and relay).
    rlimit::increase_nofile_limit(8192).unwrap();
    let mut args = std::env::args().skip(1);
    let sequential: usize = args.next().map_or(2000, |a| a.parse().expect("a number"));
    let per_worker: usize = args.next().map_or(200, |a| a.parse().expect("a number"));
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(bench(sequential, per_worker));
}

async fn bench(sequential: usize, per_worker: usize) {
    let dir = tempfile::tempdir().unwrap();
    make_pki(dir.path());
    let ca = dir.path().join("ca.pem");
    let token = TunnelToken::generate();
    let relay = start_relay(RelayConfig {
        max_concurrent_per_box: WORKERS,
        // The attack is held for the whole measurement: stalled bodies and idle connections are
        // not timed out before it ends (the worst case; by default they would be after 10 s and
        // 60 s).
        body_timeout_secs: 3600,
        idle_timeout_secs: 3600,
        boxes: vec![BoxEntry {
            host: HOST.into(),
            token_sha256: token.sha256_hex(),
        }],
        ..RelayConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
            dir.path().join("cert.pem"),
            dir.path().join("key.pem"),
        )
    })
    .await
    .unwrap();
    let client_cfg = TunnelClientConfig {
        relay: relay.tunnel_addr().to_string(),
        server_name: "relay.test".into(),
        ca_file: Some(ca.clone()),
        timings: TunnelTimings::default(),
        backoff: Default::default(),
    };
    let (state_tx, mut state) = watch::channel(TunnelState::Disabled);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let tunnel = tokio::spawn(run_tunnel(
        client_cfg,
        token,
        hyper::service::service_fn(webhook),
        state_tx,
        async move {
            let _ = stop_rx.await;
        },
    ));
    state
        .wait_for(|s| matches!(s, TunnelState::Connected { .. }))
        .await
        .unwrap();
    let mut changes = relay.changes();
    while relay.connected_boxes().is_empty() {
        changes.changed().await.unwrap();
    }
    let direct = serve_direct(dir.path()).await;

    // A WhatsApp text message notification is about 1 KiB of JSON.
    let body = Bytes::from(vec![b'x'; 1024]);
    let d = latencies(direct, &ca, sequential, &body).await;
    let t = latencies(relay.public_addr(), &ca, sequential, &body).await;
    println!("sequential POSTs of 1 KiB over one keep-alive HTTPS connection, n={sequential}:");
    println!(
        "  direct HTTPS:        p50 {:>9.1?}  p99 {:>9.1?}",
        pct(&d, 0.5),
        pct(&d, 0.99)
    );
    println!(
        "  relay + tunnel:      p50 {:>9.1?}  p99 {:>9.1?}",
        pct(&t, 0.5),
        pct(&t, 0.99)
    );
    let added = |p| pct(&t, p).saturating_sub(pct(&d, p));
    println!(
        "  added by the tunnel: p50 {:>9.1?}  p99 {:>9.1?}",
        added(0.5),
        added(0.99)
    );

    let mut senders = Vec::with_capacity(WORKERS);
    for _ in 0..WORKERS {
        senders.push(connect(relay.public_addr(), &ca).await);
    }
    let started = Instant::now();
    let mut jobs = Vec::with_capacity(WORKERS);
    for mut send in senders {
        let body = body.clone();
        jobs.push(tokio::spawn(async move {
            for _ in 0..per_worker {
                post(&mut send, &body).await;
            }
        }));
    }
    for j in jobs {
        j.await.unwrap();
    }
    let elapsed = started.elapsed();
    let total = WORKERS * per_worker;
    println!(
        "{WORKERS} concurrent clients through one tunnel: {total} requests in {elapsed:.2?} = {:.0} requests/s",
        total as f64 / elapsed.as_secs_f64()
    );

    starvation(&relay, &ca, sequential, &body).await;

    let _ = stop_tx.send(());
    tunnel.await.unwrap().unwrap();
    relay.shutdown().await;
}
