//! End-to-end tests of the relay and the tunnel client on loopback: real listeners, real TLS with
//! certificates made for the test, real HTTP/2 in both directions.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;

use super::*;

/// The app secret the test's webhook deliveries are signed with.
const TEST_APP_SECRET: &[u8] = b"relay-test-app-secret";

/// Upper bound for anything a test waits for; reaching it fails the test instead of hanging.
const PATIENCE: Duration = Duration::from_secs(30);

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A CA and a server certificate for the relay's names, written to a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    ca_file: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
}

fn make_ca() -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "frontdesk test CA");
    (params.self_signed(&key).unwrap(), key)
}

fn make_leaf(ca: &rcgen::Certificate, ca_key: &rcgen::KeyPair) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let names = ["relay.test", "a.test", "b.test"]
        .map(String::from)
        .to_vec();
    let cert = rcgen::CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, ca, ca_key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let (ca, ca_key) = make_ca();
        let (cert, key) = make_leaf(&ca, &ca_key);
        let pki = Pki {
            ca_file: dir.path().join("ca.pem"),
            cert_file: dir.path().join("cert.pem"),
            key_file: dir.path().join("key.pem"),
            dir,
        };
        std::fs::write(&pki.ca_file, ca.pem()).unwrap();
        std::fs::write(&pki.cert_file, cert).unwrap();
        std::fs::write(&pki.key_file, key).unwrap();
        pki
    }

    fn root_store(ca_file: &std::path::Path) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        for c in proto::load_certs(ca_file).unwrap() {
            roots.add(c).unwrap();
        }
        roots
    }
}

fn test_timings() -> TunnelTimings {
    TunnelTimings {
        connect_timeout: Duration::from_secs(5),
        handshake_timeout: Duration::from_secs(5),
        ping_interval: Duration::from_secs(1),
        ping_timeout: Duration::from_secs(1),
        tcp_keepalive: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(5),
    }
}

fn fast_backoff() -> BackoffPolicy {
    BackoffPolicy {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(400),
        stable_after: Duration::from_millis(200),
    }
}

struct TestBox {
    name: &'static str,
    token: TunnelToken,
}

fn relay_config(pki: &Pki, boxes: &[(&str, &TunnelToken)], tunnel: SocketAddr) -> RelayConfig {
    RelayConfig {
        max_body_bytes: 8 * 1024,
        max_concurrent_per_box: 8,
        request_timeout_secs: 20,
        boxes: boxes
            .iter()
            .map(|(host, token)| BoxEntry {
                host: host.to_string(),
                token_sha256: token.sha256_hex(),
            })
            .collect(),
        timings: test_timings(),
        ..RelayConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            tunnel,
            pki.cert_file.clone(),
            pki.key_file.clone(),
        )
    }
}

fn client_config(pki: &Pki, relay: SocketAddr) -> TunnelClientConfig {
    TunnelClientConfig {
        relay: relay.to_string(),
        server_name: "relay.test".into(),
        ca_file: Some(pki.ca_file.clone()),
        timings: test_timings(),
        backoff: fast_backoff(),
    }
}

/// What a box's service saw.
#[derive(Default)]
struct Seen {
    requests: AtomicUsize,
    authorities: Mutex<Vec<String>>,
    targets: Mutex<Vec<String>>,
    forwarded_proto: Mutex<Vec<String>>,
}

/// Answers `<name>:<request body>`; optionally holds each answer until `gate` is notified.
fn echo_service(
    name: &'static str,
    seen: Arc<Seen>,
    gate: Option<(Arc<Notify>, Arc<Notify>)>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send,
> + Clone
       + Send
       + 'static {
    hyper::service::service_fn(move |req: Request<Incoming>| {
        let seen = seen.clone();
        let gate = gate.clone();
        async move {
            seen.requests.fetch_add(1, Ordering::SeqCst);
            seen.authorities.lock().unwrap().push(
                req.uri()
                    .authority()
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
            );
            seen.targets.lock().unwrap().push(
                req.uri()
                    .path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
            );
            if let Some(v) = req.headers().get("x-forwarded-proto") {
                seen.forwarded_proto
                    .lock()
                    .unwrap()
                    .push(v.to_str().unwrap().to_owned());
            }
            let body = req.into_body().collect().await.unwrap().to_bytes();
            if let Some((arrived, release)) = gate {
                arrived.notify_one();
                release.notified().await;
            }
            let mut out = format!("{name}:").into_bytes();
            out.extend_from_slice(&body);
            Ok(Response::new(Full::new(Bytes::from(out))))
        }
    })
}

/// A running tunnel client.
struct Client {
    state: watch::Receiver<TunnelState>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), TunnelError>>,
    seen: Arc<Seen>,
}

fn spawn_client_with<S>(
    cfg: TunnelClientConfig,
    token: TunnelToken,
    service: S,
    seen: Arc<Seen>,
) -> Client
where
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<Full<Bytes>>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let (state_tx, state) = watch::channel(TunnelState::Disabled);
    let (stop, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(run_tunnel(cfg, token, service, state_tx, async move {
        let _ = stop_rx.await;
    }));
    Client {
        state,
        stop: Some(stop),
        task,
        seen,
    }
}

fn spawn_client(cfg: TunnelClientConfig, b: &TestBox) -> Client {
    let seen = Arc::new(Seen::default());
    let svc = echo_service(b.name, seen.clone(), None);
    spawn_client_with(cfg, b.token.clone(), svc, seen)
}

impl Client {
    async fn wait_state(
        &mut self,
        what: &str,
        pred: impl FnMut(&TunnelState) -> bool,
    ) -> TunnelState {
        within(what, self.state.wait_for(pred))
            .await
            .unwrap()
            .clone()
    }

    async fn stop(mut self) -> TunnelState {
        let _ = self.stop.take().unwrap().send(());
        within("client stop", &mut self.task)
            .await
            .unwrap()
            .unwrap();
        let s = self.state.borrow().clone();
        s
    }
}

fn session(s: &TunnelState) -> Option<u64> {
    match s {
        TunnelState::Connected { session, .. } => Some(*session),
        _ => None,
    }
}

async fn wait_relay(relay: &RelayHandle, what: &str, pred: impl Fn(&[String]) -> bool) {
    let mut changes = relay.changes();
    within(what, async {
        loop {
            if pred(&relay.connected_boxes()) {
                return;
            }
            changes.changed().await.unwrap();
        }
    })
    .await
}

async fn wait_box(relay: &RelayHandle, host: &str) {
    wait_relay(relay, host, |b| b.iter().any(|h| h == host)).await
}

/// An HTTPS client for the relay's public side.
#[derive(Clone)]
struct Public {
    addr: SocketAddr,
    tls: tokio_rustls::TlsConnector,
}

impl Public {
    fn new(addr: SocketAddr, ca_file: &std::path::Path) -> Public {
        let mut cfg = rustls::ClientConfig::builder_with_provider(proto::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(Pki::root_store(ca_file))
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Public {
            addr,
            tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
        }
    }

    async fn try_send(
        &self,
        method: &str,
        host: &str,
        target: &str,
        body: Vec<u8>,
    ) -> std::io::Result<(StatusCode, Bytes)> {
        let tcp = TcpStream::connect(self.addr).await?;
        let tls = self
            .tls
            .connect(ServerName::try_from(host.to_owned()).unwrap(), tcp)
            .await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(target)
            .header("host", host)
            .header(
                crate::whatsapp::signature::HEADER,
                crate::whatsapp::signature::sign(TEST_APP_SECRET, &body),
            )
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = send
            .send_request(req)
            .await
            .map_err(std::io::Error::other)?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        Ok((status, body))
    }

    async fn post(&self, host: &str, target: &str, body: &str) -> (StatusCode, String) {
        let (status, body) = within(
            "public request",
            self.try_send("POST", host, target, body.as_bytes().to_vec()),
        )
        .await
        .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }
}

fn new_box(name: &'static str) -> TestBox {
    TestBox {
        name,
        token: TunnelToken::generate(),
    }
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_travel_through_the_tunnel_and_only_webhooks_do() {
    // Shows the access log with --nocapture.
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let pki = Pki::new();
    let a = new_box("A");
    let relay = start_relay(relay_config(&pki, &[("a.test", &a.token)], any_port()))
        .await
        .unwrap();
    let public = Public::new(relay.public_addr(), &pki.ca_file);

    // Before the box has ever connected: 503, which WhatsApp retries.
    let (status, _) = public.post("a.test", "/webhook", "early").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    let mut client = spawn_client(client_config(&pki, relay.tunnel_addr()), &a);
    client
        .wait_state("connected", |s| session(s).is_some())
        .await;
    wait_box(&relay, "a.test").await;

    for i in 0..5 {
        let (status, body) = public
            .post("a.test", "/webhook", &format!("hello {i}"))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, format!("A:hello {i}"));
    }
    let (status, body) = public
        .post(
            "a.test",
            "/webhook/whatsapp?hub.mode=subscribe&hub.challenge=7",
            "x",
        )
        .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "A:x"));
    assert_eq!(
        client.seen.targets.lock().unwrap().last().unwrap(),
        "/webhook/whatsapp?hub.mode=subscribe&hub.challenge=7"
    );
    assert!(client
        .seen
        .forwarded_proto
        .lock()
        .unwrap()
        .iter()
        .all(|p| p == "https"));

    // Nothing but /webhook… travels, and unknown hosts are not routed anywhere.
    let before = client.seen.requests.load(Ordering::SeqCst);
    for target in ["/", "/metrics", "/admin/status", "/webhooks"] {
        let (status, _) = public.post("a.test", target, "x").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{target}");
    }
    let (status, _) = public.post("b.test", "/webhook", "x").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Too large a body is refused by the relay itself.
    let (status, _) = public
        .post("a.test", "/webhook", &"x".repeat(9 * 1024))
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(client.seen.requests.load(Ordering::SeqCst), before);

    // Box gone: 503 again.
    assert_eq!(client.stop().await, TunnelState::Stopped);
    wait_relay(&relay, "box gone", |b| b.is_empty()).await;
    let (status, body) = public.post("a.test", "/webhook", "late").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    relay.shutdown().await;
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn box_reconnects_after_each_of_20_relay_restarts() {
    let pki = Pki::new();
    let a = new_box("A");
    let mut relay = start_relay(relay_config(&pki, &[("a.test", &a.token)], any_port()))
        .await
        .unwrap();
    let tunnel_addr = relay.tunnel_addr();
    let mut client = spawn_client(client_config(&pki, tunnel_addr), &a);
    let mut last = client
        .wait_state("first session", |s| session(s).is_some())
        .await;
    wait_box(&relay, "a.test").await;

    let mut times = Vec::new();
    for round in 0..20 {
        // Kill the relay: listeners and every connection go away at once.
        relay.shutdown().await;
        let prev = session(&last).unwrap();
        client
            .wait_state("box notices the loss", |s| session(s).is_none())
            .await;
        let mut cfg = relay_config(&pki, &[("a.test", &a.token)], tunnel_addr);
        cfg.public_listen = any_port();
        let restarted = Instant::now();
        relay = start_relay(cfg).await.unwrap();
        last = client
            .wait_state("reconnect", |s| session(s).is_some_and(|n| n > prev))
            .await;
        wait_box(&relay, "a.test").await;
        times.push(restarted.elapsed());
        let public = Public::new(relay.public_addr(), &pki.ca_file);
        let (status, body) = public
            .post("a.test", "/webhook", &format!("r{round}"))
            .await;
        assert_eq!((status, body), (StatusCode::OK, format!("A:r{round}")));
    }
    assert_eq!(session(&last), Some(21));
    times.sort();
    println!(
        "reconnect after relay restart (n={}): p50 {:?}, p99 {:?}, max {:?}",
        times.len(),
        percentile(&times, 0.50),
        percentile(&times, 0.99),
        times.last().unwrap()
    );
    client.stop().await;
    relay.shutdown().await;
}

/// A TCP proxy whose existing connections can be frozen: bytes stop flowing but nothing is
/// closed, like a NAT box that silently dropped its mapping.
struct FreezingProxy {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    freeze_below: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl FreezingProxy {
    async fn start(upstream: SocketAddr) -> FreezingProxy {
        let listener = TcpListener::bind(any_port()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let freeze_below = Arc::new(AtomicU64::new(0));
        let (acc, fb) = (accepted.clone(), freeze_below.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let (down, _) = listener.accept().await.unwrap();
                let id = acc.fetch_add(1, Ordering::SeqCst);
                let up = TcpStream::connect(upstream).await.unwrap();
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                conns.spawn(pump(dr, uw, id, fb.clone()));
                conns.spawn(pump(ur, dw, id, fb.clone()));
            }
        });
        FreezingProxy {
            addr,
            accepted,
            freeze_below,
            task,
        }
    }

    /// Freezes every connection accepted so far.
    fn freeze_existing(&self) {
        self.freeze_below
            .store(self.accepted.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

impl Drop for FreezingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    id: u64,
    freeze_below: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if id < freeze_below.load(Ordering::SeqCst) {
            // Hold both sockets open forever without passing anything on.
            let _keep = (from, to);
            std::future::pending::<()>().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silently_dead_link_is_found_by_ping_and_replaced() {
    let pki = Pki::new();
    let a = new_box("A");
    let relay = start_relay(relay_config(&pki, &[("a.test", &a.token)], any_port()))
        .await
        .unwrap();
    let proxy = FreezingProxy::start(relay.tunnel_addr()).await;
    let public = Public::new(relay.public_addr(), &pki.ca_file);
    let mut client = spawn_client(client_config(&pki, proxy.addr), &a);
    client
        .wait_state("connected", |s| session(s) == Some(1))
        .await;
    wait_box(&relay, "a.test").await;
    assert_eq!(
        public.post("a.test", "/webhook", "1").await.0,
        StatusCode::OK
    );

    proxy.freeze_existing();
    let frozen = Instant::now();
    let lost = client
        .wait_state("ping timeout", |s| session(s).is_none())
        .await;
    let detected = frozen.elapsed();
    match &lost {
        TunnelState::Backoff { last_error, .. } => {
            assert!(last_error.contains("connection lost"), "{last_error}")
        }
        other => panic!("unexpected state {other:?}"),
    }
    client
        .wait_state("new session", |s| session(s) == Some(2))
        .await;
    let replaced = frozen.elapsed();
    // The relay registers the new connection (replacing the dead one if it has not noticed yet).
    let mut changes = relay.changes();
    within("relay forwards again", async {
        loop {
            let (status, body) = public.post("a.test", "/webhook", "2").await;
            if status == StatusCode::OK {
                assert_eq!(body, "A:2");
                return;
            }
            changes.changed().await.unwrap();
        }
    })
    .await;
    assert_eq!(proxy.accepted.load(Ordering::SeqCst), 2);
    println!("frozen link: noticed by the box after {detected:?}, new session after {replaced:?}");
    client.stop().await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_is_refused_and_retried_only_at_max_backoff() {
    let pki = Pki::new();
    let a = new_box("A");
    let relay = start_relay(relay_config(&pki, &[("a.test", &a.token)], any_port()))
        .await
        .unwrap();
    let intruder = TestBox {
        name: "X",
        token: TunnelToken::generate(),
    };
    let cfg = client_config(&pki, relay.tunnel_addr());
    let max = cfg.backoff.max;
    let started = Instant::now();
    let mut client = spawn_client(cfg, &intruder);
    let failed = client
        .wait_state(
            "third refusal",
            |s| matches!(s, TunnelState::AuthFailed { attempts, .. } if *attempts >= 3),
        )
        .await;
    assert!(
        failed.to_string().contains("refused this box's token"),
        "{failed}"
    );
    client.stop().await;
    let dials = relay.tunnel_accepts();
    let elapsed = started.elapsed();
    // Refusals are retried no sooner than max/2 apart, so in `elapsed` there is room for at most
    // 1 + elapsed/(max/2) dials; an ordinary backoff (20 ms, 40 ms, …) would have dialled more.
    let allowed = 1 + (elapsed.as_nanos() / (max / 2).as_nanos()) as u64;
    assert!(dials >= 3, "{dials}");
    assert!(dials <= allowed.min(4), "{dials} dials in {elapsed:?}");
    assert!(relay.connected_boxes().is_empty());
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_relay_certificate_is_a_tls_failure() {
    let pki = Pki::new();
    let other = Pki::new();
    let a = new_box("A");
    let relay = start_relay(relay_config(&pki, &[("a.test", &a.token)], any_port()))
        .await
        .unwrap();
    let mut cfg = client_config(&pki, relay.tunnel_addr());
    cfg.ca_file = Some(other.ca_file.clone());
    let mut client = spawn_client(cfg, &a);
    let s = client
        .wait_state("TLS failure", |s| {
            matches!(s, TunnelState::TlsFailed { attempts: 1, .. })
        })
        .await;
    assert!(s.to_string().contains("certificate"), "{s}");
    client.stop().await;
    assert!(relay.connected_boxes().is_empty());
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_connection_of_a_box_replaces_the_first() {
    let pki = Pki::new();
    let a = new_box("A");
    let relay = start_relay(relay_config(&pki, &[("a.test", &a.token)], any_port()))
        .await
        .unwrap();
    let public = Public::new(relay.public_addr(), &pki.ca_file);

    // The first instance waits an hour before any retry, so it stays out once replaced.
    let mut slow = client_config(&pki, relay.tunnel_addr());
    slow.backoff = BackoffPolicy {
        initial: Duration::from_secs(3600),
        max: Duration::from_secs(3600),
        stable_after: Duration::from_secs(3600),
    };
    let seen1 = Arc::new(Seen::default());
    let mut first = spawn_client_with(
        slow,
        a.token.clone(),
        echo_service("one", seen1.clone(), None),
        seen1,
    );
    first
        .wait_state("first connected", |s| session(s).is_some())
        .await;
    wait_box(&relay, "a.test").await;
    assert_eq!(public.post("a.test", "/webhook", "x").await.1, "one:x");

    let seen2 = Arc::new(Seen::default());
    let mut second = spawn_client_with(
        client_config(&pki, relay.tunnel_addr()),
        a.token.clone(),
        echo_service("two", seen2.clone(), None),
        seen2,
    );
    second
        .wait_state("second connected", |s| session(s).is_some())
        .await;
    // The relay closed the first connection when the second registered.
    first
        .wait_state("first dropped", |s| {
            matches!(s, TunnelState::Backoff { .. })
        })
        .await;
    for _ in 0..3 {
        assert_eq!(public.post("a.test", "/webhook", "y").await.1, "two:y");
    }
    assert_eq!(first.seen.requests.load(Ordering::SeqCst), 1);
    assert_eq!(relay.connected_boxes(), vec!["a.test".to_string()]);
    first.stop().await;
    second.stop().await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_box_never_receives_another_boxs_traffic() {
    let pki = Pki::new();
    let a = new_box("A");
    let b = new_box("B");
    let mut cfg = relay_config(
        &pki,
        &[("a.test", &a.token), ("b.test", &b.token)],
        any_port(),
    );
    cfg.max_concurrent_per_box = 64;
    // All 40 callers come from 127.0.0.1 at once.
    cfg.max_pending_handshakes_per_address = 64;
    let relay = start_relay(cfg).await.unwrap();
    let public = Public::new(relay.public_addr(), &pki.ca_file);
    let mut ca = spawn_client(client_config(&pki, relay.tunnel_addr()), &a);
    let mut cb = spawn_client(client_config(&pki, relay.tunnel_addr()), &b);
    ca.wait_state("a", |s| session(s).is_some()).await;
    cb.wait_state("b", |s| session(s).is_some()).await;
    wait_relay(&relay, "both", |h| h.len() == 2).await;

    let mut jobs = Vec::new();
    for i in 0..40 {
        let public = public.clone();
        let host = if i % 2 == 0 { "a.test" } else { "b.test" };
        jobs.push(tokio::spawn(async move {
            (host, public.post(host, "/webhook", &i.to_string()).await)
        }));
    }
    for job in jobs {
        let (host, (status, body)) = job.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        let expected = if host == "a.test" { "A:" } else { "B:" };
        assert!(body.starts_with(expected), "{host} got {body}");
    }
    assert_eq!(ca.seen.requests.load(Ordering::SeqCst), 20);
    assert_eq!(cb.seen.requests.load(Ordering::SeqCst), 20);
    assert!(ca
        .seen
        .authorities
        .lock()
        .unwrap()
        .iter()
        .all(|h| h == "a.test"));
    assert!(cb
        .seen
        .authorities
        .lock()
        .unwrap()
        .iter()
        .all(|h| h == "b.test"));
    ca.stop().await;
    cb.stop().await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_box_concurrency_limit_and_graceful_shutdown() {
    let pki = Pki::new();
    let a = new_box("A");
    let mut cfg = relay_config(&pki, &[("a.test", &a.token)], any_port());
    cfg.max_concurrent_per_box = 2;
    let relay = start_relay(cfg).await.unwrap();
    let public = Public::new(relay.public_addr(), &pki.ca_file);
    let arrived = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let seen = Arc::new(Seen::default());
    let svc = echo_service("A", seen.clone(), Some((arrived.clone(), release.clone())));
    let mut client = spawn_client_with(
        client_config(&pki, relay.tunnel_addr()),
        a.token.clone(),
        svc,
        seen,
    );
    client
        .wait_state("connected", |s| session(s).is_some())
        .await;
    wait_box(&relay, "a.test").await;

    let mut held = Vec::new();
    for i in 0..2 {
        let public = public.clone();
        held.push(tokio::spawn(async move {
            public.post("a.test", "/webhook", &format!("held{i}")).await
        }));
        within("request reaches the box", arrived.notified()).await;
    }
    // Both slots are taken: the third is turned away without reaching the box.
    let (status, body) = public.post("a.test", "/webhook", "third").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(client.seen.requests.load(Ordering::SeqCst), 2);

    // Shut the box down while two requests are in flight: GOAWAY, then they still finish.
    let stop = client.stop.take().unwrap();
    let _ = stop.send(());
    let mut state = client.state.clone();
    // The box is still serving its in-flight requests, so it has not stopped yet.
    assert_ne!(*state.borrow(), TunnelState::Stopped);
    release.notify_one();
    release.notify_one();
    for (i, h) in held.into_iter().enumerate() {
        let (status, body) = within("held answer", h).await.unwrap();
        assert_eq!((status, body), (StatusCode::OK, format!("A:held{i}")));
    }
    within("stopped", state.wait_for(|s| *s == TunnelState::Stopped))
        .await
        .unwrap();
    within("client task", client.task).await.unwrap().unwrap();
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_reload_takes_effect_for_new_connections() {
    let pki = Pki::new();
    let relay = start_relay(relay_config(&pki, &[], any_port()))
        .await
        .unwrap();
    let old_ca = Public::new(relay.public_addr(), &pki.ca_file);
    assert_eq!(
        old_ca.post("a.test", "/webhook", "x").await.0,
        StatusCode::NOT_FOUND
    );

    // A broken file leaves the old certificate in place.
    std::fs::write(&pki.key_file, "not a key").unwrap();
    assert!(relay.reload().is_err());
    assert_eq!(
        old_ca.post("a.test", "/webhook", "x").await.0,
        StatusCode::NOT_FOUND
    );

    let (ca2, ca2_key) = make_ca();
    let (cert, key) = make_leaf(&ca2, &ca2_key);
    std::fs::write(&pki.cert_file, cert).unwrap();
    std::fs::write(&pki.key_file, key).unwrap();
    let ca2_file = pki.dir.path().join("ca2.pem");
    std::fs::write(&ca2_file, ca2.pem()).unwrap();
    relay.reload().unwrap();
    let new_ca = Public::new(relay.public_addr(), &ca2_file);
    assert_eq!(
        new_ca.post("a.test", "/webhook", "x").await.0,
        StatusCode::NOT_FOUND
    );
    assert!(old_ca
        .try_send("POST", "a.test", "/webhook", Vec::new())
        .await
        .is_err());
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_refuses_garbage_on_the_tunnel_port() {
    let pki = Pki::new();
    let a = new_box("A");
    let relay = start_relay(relay_config(&pki, &[("a.test", &a.token)], any_port()))
        .await
        .unwrap();
    // A raw TLS client that sends an HTTP request instead of a hello gets ERR and a close.
    let mut cfg = rustls::ClientConfig::builder_with_provider(proto::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(Pki::root_store(&pki.ca_file))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![proto::ALPN.to_vec()];
    let tcp = TcpStream::connect(relay.tunnel_addr()).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("relay.test").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let line = within("reply", proto::read_line(&mut tls)).await.unwrap();
    assert_eq!(line.as_str(), "ERR protocol");
    assert!(relay.connected_boxes().is_empty());
    relay.shutdown().await;
}

/// A TCP connection to `addr` from the loopback address `from` (any of 127.0.0.0/8), so that one
/// test can play several client addresses.
async fn tcp_from(from: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from.parse().unwrap(), 0))?;
    socket.connect(addr).await
}

fn public_tls(ca_file: &std::path::Path, alpn: &[u8]) -> tokio_rustls::TlsConnector {
    let mut cfg = rustls::ClientConfig::builder_with_provider(proto::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(Pki::root_store(ca_file))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// Opens TLS connections from `from` that then send nothing, `attempts` of them one after the
/// other; returns the ones the relay accepted (the others failed their handshake).
async fn idle_connections(
    relay: &RelayHandle,
    ca_file: &std::path::Path,
    from: &str,
    attempts: usize,
) -> Vec<tokio_rustls::client::TlsStream<TcpStream>> {
    let tls = public_tls(ca_file, b"h2");
    let mut held = Vec::new();
    for _ in 0..attempts {
        let Ok(tcp) = tcp_from(from, relay.public_addr()).await else {
            continue;
        };
        let name = ServerName::try_from("a.test").unwrap();
        if let Ok(conn) = within("TLS handshake", tls.connect(name, tcp)).await {
            held.push(conn);
        }
    }
    held
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

/// Opens one HTTP/2 connection from `from` and starts `streams` signed-looking POSTs on it that
/// announce 1000 bytes of body and send none; returns the tasks that yield each final status.
async fn stalled_streams(
    relay: &RelayHandle,
    ca_file: &std::path::Path,
    from: &str,
    streams: usize,
) -> Vec<JoinHandle<StatusCode>> {
    let tcp = tcp_from(from, relay.public_addr()).await.unwrap();
    let tls = public_tls(ca_file, b"h2")
        .connect(ServerName::try_from("a.test").unwrap(), tcp)
        .await
        .unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let sig = format!("sha256={}", "0".repeat(64));
    (0..streams)
        .map(|_| {
            let mut send = send.clone();
            let sig = sig.clone();
            tokio::spawn(async move {
                let req = Request::post("https://a.test/webhook")
                    .header("content-length", "1000")
                    .header("x-hub-signature-256", sig)
                    .body(StalledBody(1000))
                    .unwrap();
                match send.send_request(req).await {
                    Ok(resp) => resp.status(),
                    // The relay reset the stream: as good as an answer for the caller.
                    Err(_) => StatusCode::BAD_REQUEST,
                }
            })
        })
        .collect()
}

async fn wait_open_requests(relay: &RelayHandle, n: usize) {
    let mut open = relay.open_requests();
    within("requests open at the relay", open.wait_for(|k| *k >= n))
        .await
        .unwrap();
}

/// 64 stalled streams and a flood of idle connections (scaled down by configuration: the caps
/// are small so that the test holds few descriptors) leave a signed delivery unharmed: the
/// stalled streams take no place of the box, idle connections past the per-address cap are
/// refused at accept, and the stalled streams end with 408.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_delivery_passes_stalled_streams_and_idle_connections() {
    let pki = Pki::new();
    let a = new_box("A");
    let mut cfg = relay_config(&pki, &[("a.test", &a.token)], any_port());
    cfg.max_concurrent_per_box = 4;
    cfg.body_timeout_secs = 10;
    cfg.max_connections = 64;
    cfg.max_connections_per_address = 16;
    cfg.max_streams_per_connection = 32;
    cfg.idle_timeout_secs = 600;
    let relay = start_relay(cfg).await.unwrap();
    let mut client = spawn_client(client_config(&pki, relay.tunnel_addr()), &a);
    client
        .wait_state("connected", |s| session(s).is_some())
        .await;
    wait_box(&relay, "a.test").await;

    // 100 idle connections from one address: the first 16 are held, the rest refused.
    let idle = idle_connections(&relay, &pki.ca_file, "127.0.0.3", 100).await;
    assert_eq!(idle.len(), 16, "idle connections past the per-address cap");
    let more = idle_connections(&relay, &pki.ca_file, "127.0.0.4", 16).await;
    assert_eq!(more.len(), 16);
    assert_eq!(relay.public_connections(), 32);

    // 64 streams, 16 times the box's 4 places, all waiting for bodies that never come.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        stalled.extend(stalled_streams(&relay, &pki.ca_file, "127.0.0.2", 32).await);
    }
    wait_open_requests(&relay, 64).await;

    // WhatsApp, from its own address, still gets its delivery through.
    let public = Public::new(relay.public_addr(), &pki.ca_file);
    let (status, body) = public.post("a.test", "/webhook", "hallo").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "A:hallo"));
    assert_eq!(client.seen.requests.load(Ordering::SeqCst), 1);

    // The stalled streams never reached the box and end with 408.
    for s in stalled {
        assert_eq!(
            within("stalled stream", s).await.unwrap(),
            StatusCode::REQUEST_TIMEOUT
        );
    }
    assert_eq!(client.seen.requests.load(Ordering::SeqCst), 1);
    drop((idle, more));
    client.stop().await;
    relay.shutdown().await;
}

/// The global cap holds whatever the addresses: a connection past it is refused at accept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_global_cap_are_refused() {
    let pki = Pki::new();
    let a = new_box("A");
    let mut cfg = relay_config(&pki, &[("a.test", &a.token)], any_port());
    cfg.max_connections = 6;
    cfg.max_connections_per_address = 4;
    let relay = start_relay(cfg).await.unwrap();
    let first = idle_connections(&relay, &pki.ca_file, "127.0.0.5", 4).await;
    let second = idle_connections(&relay, &pki.ca_file, "127.0.0.6", 4).await;
    assert_eq!((first.len(), second.len()), (4, 2));
    let third = idle_connections(&relay, &pki.ca_file, "127.0.0.7", 1).await;
    assert!(third.is_empty());
    assert_eq!(relay.public_connections(), 6);
    relay.shutdown().await;
}

/// An idle public connection is closed by the relay after `idle_timeout_secs`, which gives its
/// place back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_public_connections_are_closed() {
    let pki = Pki::new();
    let a = new_box("A");
    let mut cfg = relay_config(&pki, &[("a.test", &a.token)], any_port());
    cfg.idle_timeout_secs = 1;
    let relay = start_relay(cfg).await.unwrap();
    let mut idle = idle_connections(&relay, &pki.ca_file, "127.0.0.8", 1).await;
    let mut conn = idle.pop().unwrap();
    // The client never sends a byte after TLS; the relay closes: read to the end.
    let mut sink = Vec::new();
    within(
        "the relay closing the idle connection",
        conn.read_to_end(&mut sink),
    )
    .await
    .ok();
    assert_eq!(relay.public_connections(), 0);
    relay.shutdown().await;
}

/// Requests that are not WhatsApp's are answered by the relay and never reach the box: a POST
/// without a well-formed `X-Hub-Signature-256` (401), a GET that is not the subscription
/// handshake (403). The handshake itself passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_posts_and_bare_gets_stop_at_the_relay() {
    let pki = Pki::new();
    let a = new_box("A");
    let relay = start_relay(relay_config(&pki, &[("a.test", &a.token)], any_port()))
        .await
        .unwrap();
    let mut client = spawn_client(client_config(&pki, relay.tunnel_addr()), &a);
    client
        .wait_state("connected", |s| session(s).is_some())
        .await;
    wait_box(&relay, "a.test").await;
    let tls = public_tls(&pki.ca_file, b"http/1.1");
    let send = |req: Request<Full<Bytes>>| {
        let tls = tls.clone();
        let addr = relay.public_addr();
        async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let conn = tls
                .connect(ServerName::try_from("a.test").unwrap(), tcp)
                .await
                .unwrap();
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(conn))
                .await
                .unwrap();
            tokio::spawn(conn);
            within("answer", send.send_request(req))
                .await
                .unwrap()
                .status()
        }
    };
    let post = |sig: Option<&str>| {
        let mut req = Request::post("/webhook").header("host", "a.test");
        if let Some(sig) = sig {
            req = req.header("x-hub-signature-256", sig);
        }
        req.body(Full::new(Bytes::from_static(b"{}"))).unwrap()
    };
    assert_eq!(send(post(None)).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        send(post(Some("sha256=abc"))).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(post(Some("sha1=0000"))).await,
        StatusCode::UNAUTHORIZED
    );
    let get = |target: &str| {
        Request::get(target)
            .header("host", "a.test")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    assert_eq!(send(get("/webhook")).await, StatusCode::FORBIDDEN);
    assert_eq!(
        send(get("/webhook?hub.mode=subscribe")).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(client.seen.requests.load(Ordering::SeqCst), 0);
    assert_eq!(
        send(get(
            "/webhook?hub.mode=subscribe&hub.verify_token=t&hub.challenge=42"
        ))
        .await,
        StatusCode::OK
    );
    assert_eq!(
        send(post(Some(&format!("sha256={}", "ab".repeat(32))))).await,
        StatusCode::OK
    );
    assert_eq!(client.seen.requests.load(Ordering::SeqCst), 2);
    // MagicLine's calls carry a key instead of a signature; without one they stop here too.
    let magicline = |key: Option<&str>| {
        let mut req = Request::post("/webhook/magicline").header("host", "a.test");
        if let Some(key) = key {
            req = req.header("x-api-key", key);
        }
        req.body(Full::new(Bytes::from_static(b"{}"))).unwrap()
    };
    assert_eq!(send(magicline(None)).await, StatusCode::UNAUTHORIZED);
    assert_eq!(send(magicline(Some(""))).await, StatusCode::UNAUTHORIZED);
    assert_eq!(client.seen.requests.load(Ordering::SeqCst), 2);
    assert_eq!(send(magicline(Some("partner-key-1"))).await, StatusCode::OK);
    assert_eq!(client.seen.requests.load(Ordering::SeqCst), 3);
    client.stop().await;
    relay.shutdown().await;
}

/// Silent sockets on the tunnel port from one address fill only that address's handshake
/// places: the next one from there is closed at once, and a box from another address connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_on_the_tunnel_port_do_not_keep_a_box_out() {
    let pki = Pki::new();
    let a = new_box("A");
    let mut cfg = relay_config(&pki, &[("a.test", &a.token)], any_port());
    cfg.max_pending_handshakes = 8;
    cfg.max_pending_handshakes_per_address = 4;
    cfg.handshake_timeout_secs = 600;
    cfg.timings.handshake_timeout = Duration::from_secs(600);
    let relay = start_relay(cfg).await.unwrap();
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(tcp_from("127.0.0.9", relay.tunnel_addr()).await.unwrap());
    }
    // The fifth from the same address is closed by the relay without a byte.
    let mut fifth = tcp_from("127.0.0.9", relay.tunnel_addr()).await.unwrap();
    let mut buf = [0u8; 1];
    let read = within("the relay closing the fifth socket", fifth.read(&mut buf)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // The box (from 127.0.0.1) still gets in while the silent sockets are held.
    let mut client = spawn_client(client_config(&pki, relay.tunnel_addr()), &a);
    client
        .wait_state("connected", |s| session(s).is_some())
        .await;
    wait_box(&relay, "a.test").await;
    drop(silent);
    client.stop().await;
    relay.shutdown().await;
}
