//! `frontdesk relay`: the public half of the tunnel. It terminates public HTTPS, accepts boxes on
//! a second TLS listener (authenticated by token hash), and forwards `https://<box host>/webhook…`
//! to the box that serves that host, as an HTTP/2 request over the box's own outbound connection.
//! Nothing else is forwarded. It owns the relay's configuration file format ([`RelayConfig`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ServerConfig;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use super::limits::{Refused, Slot, Slots};
use super::proto::{self, Hello, PemError, TunnelTimings};
use crate::whatsapp::signature;

/// The relay's configuration file (TOML). It holds no secret that could impersonate a box: only
/// the SHA-256 of each box's token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// Public HTTPS listener (WhatsApp's webhook calls arrive here), e.g. `0.0.0.0:443`.
    pub public_listen: SocketAddr,
    /// Listener the boxes dial, e.g. `0.0.0.0:7443`.
    pub tunnel_listen: SocketAddr,
    /// PEM certificate chain, covering every box host name and the name boxes dial.
    pub cert_file: PathBuf,
    /// PEM private key of `cert_file`.
    pub key_file: PathBuf,
    /// Larger request bodies get 413; larger box answers 502.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// More concurrent requests for one box get 503.
    #[serde(default = "default_max_concurrent_per_box")]
    pub max_concurrent_per_box: usize,
    /// A box that takes longer to answer gets its caller a 504.
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,
    /// A request body not fully received within this gets 408. The body is read before the
    /// request takes one of its box's `max_concurrent_per_box` places, so a caller that
    /// announces a body and never sends it holds nothing a real delivery needs.
    #[serde(default = "default_body_timeout_secs")]
    pub body_timeout_secs: u64,
    /// Public connections open at once (in TLS or established); more are closed at accept.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Public connections open at once from one client address (IPv6: one /64).
    #[serde(default = "default_max_connections_per_address")]
    pub max_connections_per_address: usize,
    /// Connections still in their TLS handshake (tunnel: TLS and hello), per listener.
    #[serde(default = "default_max_pending_handshakes")]
    pub max_pending_handshakes: usize,
    /// Connections still in their handshake from one client address, per listener.
    #[serde(default = "default_max_pending_handshakes_per_address")]
    pub max_pending_handshakes_per_address: usize,
    /// A connection that has not finished its TLS handshake (tunnel: and its hello) within this
    /// is closed.
    #[serde(default = "default_handshake_timeout_secs")]
    pub handshake_timeout_secs: u64,
    /// A public connection without an open request for this long is closed (HTTP/2: GOAWAY).
    #[serde(default = "default_idle_timeout_secs")]
    pub idle_timeout_secs: u64,
    /// HTTP/2 PING interval on public connections; a peer that does not answer within the same
    /// time is dropped.
    #[serde(default = "default_keepalive_secs")]
    pub keepalive_secs: u64,
    /// HTTP/2 streams one public connection may have open at once.
    #[serde(default = "default_max_streams_per_connection")]
    pub max_streams_per_connection: u32,
    /// One entry per box.
    #[serde(default, rename = "box")]
    pub boxes: Vec<BoxEntry>,
    /// Tunnel timeouts and PINGs (not part of the file).
    #[serde(skip)]
    pub timings: TunnelTimings,
}

/// `[[box]]`: one box and the public host name it serves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoxEntry {
    /// Public host name, e.g. `studio-mitte.relay.example.com`.
    pub host: String,
    /// Lowercase hex SHA-256 of the box's tunnel token (`frontdesk relay` prints it when it
    /// generates a token).
    pub token_sha256: String,
}

fn default_max_body_bytes() -> usize {
    // WhatsApp webhook payloads are a few KiB; media arrive by reference, not inline.
    1024 * 1024
}
fn default_max_concurrent_per_box() -> usize {
    32
}
fn default_request_timeout_secs() -> u64 {
    30
}
fn default_body_timeout_secs() -> u64 {
    // A few KiB from Meta's data centres arrive in milliseconds.
    10
}
fn default_max_connections() -> usize {
    // Well below the unit's LimitNOFILE, leaving room for the boxes' tunnels.
    4096
}
fn default_max_connections_per_address() -> usize {
    // Meta multiplexes deliveries over few connections per sending host.
    64
}
fn default_max_pending_handshakes() -> usize {
    256
}
fn default_max_pending_handshakes_per_address() -> usize {
    32
}
fn default_handshake_timeout_secs() -> u64 {
    10
}
fn default_idle_timeout_secs() -> u64 {
    60
}
fn default_keepalive_secs() -> u64 {
    30
}
fn default_max_streams_per_connection() -> u32 {
    32
}

/// A relay problem: configuration, TLS material, or a listener that cannot bind.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The configuration file cannot be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The configuration file.
        file: PathBuf,
        /// Why reading failed.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML of the expected shape.
    #[error("{file}: {message}")]
    Parse {
        /// The configuration file.
        file: PathBuf,
        /// What the TOML parser reported.
        message: String,
    },
    /// A setting has a value the relay cannot work with.
    #[error("relay config: key `{key}`: {message}")]
    Invalid {
        /// The setting's name.
        key: String,
        /// What is wrong with its value.
        message: String,
    },
    /// The certificate chain or key file cannot be loaded.
    #[error(transparent)]
    Pem(#[from] PemError),
    /// rustls refused the certificate or the key.
    #[error("TLS certificate/key: {0}")]
    Tls(#[from] rustls::Error),
    /// A listener cannot bind its address.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address to listen on.
        addr: SocketAddr,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> RelayError {
    RelayError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// Whether `host` is a plausible lowercase DNS name (what `Host` headers are matched against).
fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

impl RelayConfig {
    /// A configuration with every limit at its default and no boxes.
    pub fn new(
        public_listen: SocketAddr,
        tunnel_listen: SocketAddr,
        cert_file: PathBuf,
        key_file: PathBuf,
    ) -> RelayConfig {
        RelayConfig {
            public_listen,
            tunnel_listen,
            cert_file,
            key_file,
            max_body_bytes: default_max_body_bytes(),
            max_concurrent_per_box: default_max_concurrent_per_box(),
            request_timeout_secs: default_request_timeout_secs(),
            body_timeout_secs: default_body_timeout_secs(),
            max_connections: default_max_connections(),
            max_connections_per_address: default_max_connections_per_address(),
            max_pending_handshakes: default_max_pending_handshakes(),
            max_pending_handshakes_per_address: default_max_pending_handshakes_per_address(),
            handshake_timeout_secs: default_handshake_timeout_secs(),
            idle_timeout_secs: default_idle_timeout_secs(),
            keepalive_secs: default_keepalive_secs(),
            max_streams_per_connection: default_max_streams_per_connection(),
            boxes: Vec::new(),
            timings: TunnelTimings::default(),
        }
    }

    /// Loads and validates a relay configuration file.
    pub fn load(path: &Path) -> Result<RelayConfig, RelayError> {
        let text = std::fs::read_to_string(path).map_err(|source| RelayError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        RelayConfig::parse(&text, path)
    }

    /// Parses and validates configuration text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<RelayConfig, RelayError> {
        let cfg: RelayConfig = toml::from_str(text).map_err(|e| RelayError::Parse {
            file: path.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', " | "),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values serde cannot: host names, hashes, limits, duplicates.
    pub fn validate(&self) -> Result<(), RelayError> {
        // Port 0 (any free port) on both is fine: the kernel hands out two different ones.
        if self.public_listen == self.tunnel_listen && self.public_listen.port() != 0 {
            return Err(invalid("tunnel_listen", "must differ from public_listen"));
        }
        if self.max_body_bytes < 1024 {
            return Err(invalid("max_body_bytes", "must be at least 1024"));
        }
        if self.max_concurrent_per_box == 0 {
            return Err(invalid("max_concurrent_per_box", "must be at least 1"));
        }
        for (key, value) in [
            ("request_timeout_secs", self.request_timeout_secs),
            ("body_timeout_secs", self.body_timeout_secs),
            ("handshake_timeout_secs", self.handshake_timeout_secs),
            ("idle_timeout_secs", self.idle_timeout_secs),
            ("keepalive_secs", self.keepalive_secs),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
            if value > 3600 {
                return Err(invalid(key, "must be at most 3600 (one hour)"));
            }
        }
        for (key, value) in [
            ("max_connections", self.max_connections),
            (
                "max_connections_per_address",
                self.max_connections_per_address,
            ),
            ("max_pending_handshakes", self.max_pending_handshakes),
            (
                "max_pending_handshakes_per_address",
                self.max_pending_handshakes_per_address,
            ),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if self.max_connections_per_address > self.max_connections {
            return Err(invalid(
                "max_connections_per_address",
                "must not exceed max_connections",
            ));
        }
        if self.max_pending_handshakes_per_address > self.max_pending_handshakes {
            return Err(invalid(
                "max_pending_handshakes_per_address",
                "must not exceed max_pending_handshakes",
            ));
        }
        if self.max_streams_per_connection == 0 {
            return Err(invalid("max_streams_per_connection", "must be at least 1"));
        }
        let mut hosts = std::collections::HashSet::new();
        let mut hashes = std::collections::HashSet::new();
        for (i, b) in self.boxes.iter().enumerate() {
            if !valid_host(&b.host) {
                return Err(invalid(
                    format!("box[{i}].host"),
                    "must be a lowercase DNS name",
                ));
            }
            if !hosts.insert(b.host.as_str()) {
                return Err(invalid(format!("box[{i}].host"), "appears twice"));
            }
            let Some(hash) = proto::parse_hash(&b.token_sha256) else {
                return Err(invalid(
                    format!("box[{i}].token_sha256"),
                    "must be 64 hex digits (the SHA-256 of the token, not the token)",
                ));
            };
            // The token alone identifies a box, so two boxes may not share one.
            if !hashes.insert(hash) {
                return Err(invalid(
                    format!("box[{i}].token_sha256"),
                    "is used by another box",
                ));
            }
        }
        Ok(())
    }
}

/// Builds the TLS config of one listener from the configured PEM files.
fn server_tls(
    cfg: &RelayConfig,
    alpn: &[&[u8]],
    tls13_only: bool,
) -> Result<Arc<ServerConfig>, RelayError> {
    let certs = proto::load_certs(&cfg.cert_file)?;
    let key = proto::load_key(&cfg.key_file)?;
    let builder = ServerConfig::builder_with_provider(proto::provider());
    let builder = if tls13_only {
        builder.with_protocol_versions(&[&rustls::version::TLS13])?
    } else {
        builder.with_safe_default_protocol_versions()?
    };
    let mut tls = builder.with_no_client_auth().with_single_cert(certs, key)?;
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(tls))
}

struct TlsConfigs {
    public: Arc<ServerConfig>,
    tunnel: Arc<ServerConfig>,
}

fn load_tls(cfg: &RelayConfig) -> Result<TlsConfigs, RelayError> {
    Ok(TlsConfigs {
        public: server_tls(cfg, &[b"h2", b"http/1.1"], false)?,
        tunnel: server_tls(cfg, &[proto::ALPN], true)?,
    })
}

/// A box's live tunnel.
struct Live {
    generation: u64,
    sender: SendRequest<Full<Bytes>>,
    /// Dropping it ends the connection task (replacement or shutdown).
    _kill: oneshot::Sender<()>,
}

struct Known {
    host: String,
    token_hash: [u8; 32],
    limit: Arc<Semaphore>,
}

struct Shared {
    cfg: RelayConfig,
    boxes: Vec<Known>,
    by_host: HashMap<String, usize>,
    live: Mutex<HashMap<String, Live>>,
    tls: RwLock<TlsConfigs>,
    next_generation: AtomicU64,
    /// Counts accepted tunnel connections (authenticated or not); lets tests and metrics see
    /// how often boxes dial.
    tunnel_accepts: AtomicU64,
    /// Bumped at every box registration and deregistration.
    changes: watch::Sender<u64>,
    /// Public requests being handled now (body read, waiting for the box, answering).
    open_requests: InFlight,
    /// Every public connection, from accept to close.
    public_conns: Arc<Slots>,
    /// Public connections still in their TLS handshake.
    public_handshakes: Arc<Slots>,
    /// Tunnel connections still in TLS or hello. The cap per address keeps silent sockets from
    /// one address from taking the places of boxes that reconnect.
    tunnel_handshakes: Arc<Slots>,
}

impl Shared {
    fn find_by_token(&self, token: &str) -> Option<usize> {
        // Every entry is compared, so the time taken does not depend on which entry matched.
        let mut found = None;
        for (i, b) in self.boxes.iter().enumerate() {
            if proto::token_matches(token, &b.token_hash) {
                found = Some(i);
            }
        }
        found
    }

    /// The box's TLS and hello get the shorter of the tunnel timing and the file's deadline.
    fn tunnel_handshake_timeout(&self) -> Duration {
        self.cfg
            .timings
            .handshake_timeout
            .min(Duration::from_secs(self.cfg.handshake_timeout_secs))
    }

    fn bump(&self) {
        self.changes.send_modify(|n| *n += 1);
    }
}

/// A running relay. Dropping it stops the listeners and closes every connection.
pub struct RelayHandle {
    shared: Arc<Shared>,
    public_addr: SocketAddr,
    tunnel_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

/// Binds both listeners and starts serving. Returns once both are bound.
pub async fn start_relay(cfg: RelayConfig) -> Result<RelayHandle, RelayError> {
    cfg.validate()?;
    let tls = load_tls(&cfg)?;
    let public = TcpListener::bind(cfg.public_listen)
        .await
        .map_err(|source| RelayError::Bind {
            addr: cfg.public_listen,
            source,
        })?;
    let tunnel = TcpListener::bind(cfg.tunnel_listen)
        .await
        .map_err(|source| RelayError::Bind {
            addr: cfg.tunnel_listen,
            source,
        })?;
    let local = |l: &TcpListener, addr| {
        l.local_addr()
            .map_err(|source| RelayError::Bind { addr, source })
    };
    let public_addr = local(&public, cfg.public_listen)?;
    let tunnel_addr = local(&tunnel, cfg.tunnel_listen)?;
    let boxes: Vec<Known> = cfg
        .boxes
        .iter()
        .map(|b| Known {
            host: b.host.clone(),
            token_hash: proto::parse_hash(&b.token_sha256).expect("validated"),
            limit: Arc::new(Semaphore::new(cfg.max_concurrent_per_box)),
        })
        .collect();
    let by_host = boxes
        .iter()
        .enumerate()
        .map(|(i, b)| (b.host.clone(), i))
        .collect();
    let shared = Arc::new(Shared {
        boxes,
        by_host,
        live: Mutex::new(HashMap::new()),
        tls: RwLock::new(tls),
        next_generation: AtomicU64::new(1),
        tunnel_accepts: AtomicU64::new(0),
        changes: watch::channel(0).0,
        open_requests: InFlight::new(),
        public_conns: Slots::new(cfg.max_connections, cfg.max_connections_per_address),
        public_handshakes: Slots::new(
            cfg.max_pending_handshakes,
            cfg.max_pending_handshakes_per_address,
        ),
        tunnel_handshakes: Slots::new(
            cfg.max_pending_handshakes,
            cfg.max_pending_handshakes_per_address,
        ),
        cfg,
    });
    tracing::info!(public = %public_addr, tunnel = %tunnel_addr, boxes = shared.boxes.len(), "relay listening");
    let tasks = vec![
        tokio::spawn(accept_public(shared.clone(), public)),
        tokio::spawn(accept_tunnels(shared.clone(), tunnel)),
    ];
    Ok(RelayHandle {
        shared,
        public_addr,
        tunnel_addr,
        tasks,
    })
}

impl RelayHandle {
    /// Address of the public HTTPS listener (useful when configured with port 0).
    pub fn public_addr(&self) -> SocketAddr {
        self.public_addr
    }

    /// Address of the tunnel listener.
    pub fn tunnel_addr(&self) -> SocketAddr {
        self.tunnel_addr
    }

    /// Re-reads the certificate and key files (on SIGHUP). New connections use them; existing
    /// ones keep theirs. On error the old certificate stays in use.
    pub fn reload(&self) -> Result<(), RelayError> {
        let fresh = load_tls(&self.shared.cfg)?;
        *self.shared.tls.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        tracing::info!("relay: certificate reloaded");
        Ok(())
    }

    /// Host names of the boxes connected now.
    pub fn connected_boxes(&self) -> Vec<String> {
        let mut hosts: Vec<String> = lock(&self.shared.live).keys().cloned().collect();
        hosts.sort();
        hosts
    }

    /// Public connections open now (in TLS or established).
    pub fn public_connections(&self) -> usize {
        self.shared.public_conns.in_use()
    }

    /// The number of public requests being handled now; changes as they begin and end.
    pub fn open_requests(&self) -> watch::Receiver<usize> {
        self.shared.open_requests.0.subscribe()
    }

    /// How many connections the tunnel listener has accepted.
    pub fn tunnel_accepts(&self) -> u64 {
        self.shared.tunnel_accepts.load(Ordering::Relaxed)
    }

    /// A receiver that changes whenever a box registers or goes away.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    /// Stops both listeners and closes every public and tunnel connection; returns once the
    /// listening sockets are closed (so the ports can be bound again at once).
    pub async fn shutdown(mut self) {
        self.stop_all();
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }

    fn stop_all(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        lock(&self.shared.live).clear();
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Accepts public connections. The connection tasks live in a JoinSet owned by this task, so
/// aborting it closes them all. A connection over a cap is closed at once, before TLS.
async fn accept_public(shared: Arc<Shared>, listener: TcpListener) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => match take_public_slots(&shared, peer) {
                    Ok((conn, handshake)) => {
                        conns.spawn(serve_public(shared.clone(), tcp, peer, conn, handshake));
                    }
                    Err(refused) => {
                        tracing::debug!(%peer, ?refused, "relay: public connection over a cap; closed");
                    }
                },
                Err(e) => {
                    // Out of descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "relay: public accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Both places a new public connection needs: one among all connections, one among those in
/// their handshake.
fn take_public_slots(shared: &Shared, peer: SocketAddr) -> Result<(Slot, Slot), Refused> {
    let conn = shared.public_conns.try_take(peer.ip())?;
    let handshake = shared.public_handshakes.try_take(peer.ip())?;
    Ok((conn, handshake))
}

/// Counts the requests a public connection has open now; its idle timer runs while none is.
#[derive(Clone)]
struct InFlight(Arc<watch::Sender<usize>>);

/// Held while a request is being handled.
struct InFlightGuard(Arc<watch::Sender<usize>>);

impl InFlight {
    fn new() -> InFlight {
        InFlight(Arc::new(watch::channel(0).0))
    }

    fn enter(&self) -> InFlightGuard {
        self.0.send_modify(|n| *n += 1);
        InFlightGuard(self.0.clone())
    }

    /// Returns once no request has been open for `idle`.
    async fn idle_for(&self, idle: Duration) {
        let mut rx = self.0.subscribe();
        loop {
            if rx.wait_for(|n| *n == 0).await.is_err() {
                return;
            }
            rx.borrow_and_update();
            tokio::select! {
                _ = tokio::time::sleep(idle) => {
                    if *rx.borrow() == 0 {
                        return;
                    }
                }
                // A request began (or began and ended): the quiet period starts over.
                _ = rx.changed() => {}
            }
        }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

async fn serve_public(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    conn_slot: Slot,
    handshake_slot: Slot,
) {
    let _ = tcp.set_nodelay(true);
    let acceptor = TlsAcceptor::from(
        shared
            .tls
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .public
            .clone(),
    );
    let handshake_timeout = Duration::from_secs(shared.cfg.handshake_timeout_secs);
    let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "relay: public TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "relay: public TLS handshake timed out");
            return;
        }
    };
    drop(handshake_slot);
    let idle = Duration::from_secs(shared.cfg.idle_timeout_secs);
    let keepalive = Duration::from_secs(shared.cfg.keepalive_secs);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(handshake_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(shared.cfg.max_streams_per_connection)
        .keep_alive_interval(keepalive)
        .keep_alive_timeout(keepalive);
    let in_flight = InFlight::new();
    let counter = in_flight.clone();
    let svc = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        let guard = counter.enter();
        let all = shared.open_requests.enter();
        async move {
            let resp = handle_public(&shared, req, peer).await;
            drop((guard, all));
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = builder.serve_connection(TokioIo::new(tls), svc);
    tokio::pin!(conn);
    let mut closing = false;
    let result = loop {
        tokio::select! {
            res = conn.as_mut() => break res,
            // An idle connection holds a descriptor and a place under the caps: give both back.
            // HTTP/2 sends GOAWAY; HTTP/1.1 closes between requests.
            _ = in_flight.idle_for(idle), if !closing => {
                tracing::debug!(%peer, "relay: idle public connection closed");
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    };
    // The place is given back before the socket closes, so a client that sees the close can
    // count on the place being free.
    drop(conn_slot);
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "relay: public connection ended with an error");
    }
}

/// Accepts box connections; each is authenticated and registered in its own task.
async fn accept_tunnels(shared: Arc<Shared>, listener: TcpListener) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    shared.tunnel_accepts.fetch_add(1, Ordering::Relaxed);
                    match shared.tunnel_handshakes.try_take(peer.ip()) {
                        Ok(slot) => {
                            conns.spawn(serve_tunnel(shared.clone(), tcp, peer, slot));
                        }
                        Err(refused) => tracing::warn!(%peer, ?refused, "relay: too many pending tunnel handshakes; connection dropped"),
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "relay: tunnel accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve_tunnel(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr, handshake_slot: Slot) {
    let timings = shared.cfg.timings.clone();
    let handshake_timeout = shared.tunnel_handshake_timeout();
    let _ = tcp.set_nodelay(true);
    proto::set_tcp_keepalive(&tcp, timings.tcp_keepalive);
    let acceptor = TlsAcceptor::from(
        shared
            .tls
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .tunnel
            .clone(),
    );
    let handshake = async {
        let mut tls = acceptor
            .accept(tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let line = proto::read_line(&mut tls)
            .await
            .map_err(|e| format!("hello: {e}"))?;
        let verdict = match proto::parse_hello(&line) {
            Hello::Token(token) => shared.find_by_token(token).ok_or(proto::ERR_UNAUTHORIZED),
            Hello::Unsupported => Err("unsupported-protocol"),
            Hello::Malformed => Err(proto::ERR_PROTOCOL),
        };
        match verdict {
            Ok(index) => {
                tls.write_all(b"OK\n")
                    .await
                    .map_err(|e| format!("reply: {e}"))?;
                tls.flush().await.map_err(|e| format!("reply: {e}"))?;
                Ok((tls, index))
            }
            Err(reason) => {
                let _ = tls.write_all(format!("ERR {reason}\n").as_bytes()).await;
                let _ = tls.shutdown().await;
                Err(format!("refused: {reason}"))
            }
        }
    };
    let (tls, index) = match tokio::time::timeout(handshake_timeout, handshake).await {
        Ok(Ok(ok)) => ok,
        Ok(Err(reason)) => {
            tracing::warn!(%peer, %reason, "relay: tunnel connection rejected");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, "relay: tunnel handshake timed out");
            return;
        }
    };
    drop(handshake_slot);
    let host = shared.boxes[index].host.clone();

    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(timings.ping_interval)
        .keep_alive_timeout(timings.ping_timeout)
        .keep_alive_while_idle(true);
    let (sender, conn) = match builder.handshake(TokioIo::new(tls)).await {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(%peer, %host, error = %e, "relay: HTTP/2 handshake with box failed");
            return;
        }
    };
    let generation = shared.next_generation.fetch_add(1, Ordering::Relaxed);
    let (kill_tx, kill_rx) = oneshot::channel();
    let replaced = lock(&shared.live).insert(
        host.clone(),
        Live {
            generation,
            sender,
            _kill: kill_tx,
        },
    );
    if replaced.is_some() {
        tracing::warn!(%host, "relay: box connected again; replacing its previous connection");
    }
    // Dropping the old entry (its SendRequest and kill switch) closes the old connection now.
    drop(replaced);
    shared.bump();
    tracing::info!(%peer, %host, "relay: box connected");

    let reason = tokio::select! {
        res = conn => match res {
            Ok(()) => "closed".to_owned(),
            Err(e) => e.to_string(),
        },
        _ = kill_rx => "replaced or relay stopping".to_owned(),
    };
    {
        let mut live = lock(&shared.live);
        if live.get(&host).is_some_and(|l| l.generation == generation) {
            live.remove(&host);
        }
    }
    shared.bump();
    tracing::info!(%peer, %host, %reason, "relay: box disconnected");
}

/// Headers that describe one hop, never forwarded (HTTP/2 forbids most of them anyway).
fn hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::TE
        || name == header::HOST
        || name == header::PROXY_AUTHORIZATION
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if !hop_by_hop(name) {
            to.append(name.clone(), value.clone());
        }
    }
}

/// The request's host name: `:authority` for HTTP/2, `Host` for HTTP/1.1, without port,
/// lowercased.
fn request_host(req: &Request<Incoming>) -> Option<String> {
    let raw = match req.uri().authority() {
        Some(a) => a.host().to_owned(),
        None => {
            let h = req.headers().get(header::HOST)?.to_str().ok()?;
            match h.rsplit_once(':') {
                Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name.to_owned(),
                _ => h.to_owned(),
            }
        }
    };
    let host = raw.trim_end_matches('.').to_ascii_lowercase();
    valid_host(&host).then_some(host)
}

/// Only `/webhook` and paths below it travel through the tunnel.
fn is_webhook_path(path: &str) -> bool {
    path == "/webhook" || path.starts_with("/webhook/")
}

/// The path for the access log: query keys stay, their values (which may be tokens, such as
/// `hub.verify_token`) are dropped; long paths are cut.
fn loggable_path(path: &str, query: Option<&str>) -> String {
    let mut out: String = path.chars().take(200).collect();
    if let Some(q) = query {
        out.push('?');
        let keys: Vec<&str> = q
            .split('&')
            .map(|pair| pair.split('=').next().unwrap_or(""))
            .take(20)
            .collect();
        out.push_str(&keys.join("=&"));
        out.push('=');
    }
    out
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    resp
}

/// Lets through only what WhatsApp sends, judged by form alone (the relay holds no app secret):
/// a POST carries `X-Hub-Signature-256: sha256=<64 hex digits>`; a GET is the subscription
/// handshake with `hub.mode`, `hub.verify_token` and `hub.challenge`. MagicLine's webhook calls
/// are POSTs to `/webhook/magicline` with an `x-api-key` header of a key's form (1 to 256
/// visible ASCII characters). Anything else is answered here, before its body is read and
/// without troubling the box; the box still checks the HMAC, the verify token and the key.
/// Returns the refusal, or `None` for a request that may go on.
fn refuse_unless_whatsapp(req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    if req.method() == Method::POST && req.uri().path() == crate::magicline::webhook::PATH {
        let well_formed = req
            .headers()
            .get(crate::magicline::webhook::KEY_HEADER)
            .is_some_and(|v| {
                let b = v.as_bytes();
                (1..=256).contains(&b.len()) && b.iter().all(|c| c.is_ascii_graphic())
            });
        if !well_formed {
            return Some(plain(StatusCode::UNAUTHORIZED, "api key missing\n"));
        }
        return None;
    }
    if req.method() == Method::POST {
        let well_formed = req
            .headers()
            .get(signature::HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(signature::is_well_formed);
        if !well_formed {
            return Some(plain(StatusCode::UNAUTHORIZED, "signature missing\n"));
        }
        return None;
    }
    let query = req.uri().query().unwrap_or("");
    let has = |key: &str| {
        query
            .split('&')
            .any(|pair| pair.split('=').next() == Some(key))
    };
    if has("hub.mode") && has("hub.verify_token") && has("hub.challenge") {
        None
    } else {
        Some(plain(
            StatusCode::FORBIDDEN,
            "not a subscription handshake\n",
        ))
    }
}

async fn handle_public(
    shared: &Shared,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let method = req.method().clone();
    let host = request_host(&req);
    let path = loggable_path(req.uri().path(), req.uri().query());
    let resp = route(shared, req, host.as_deref(), peer).await;
    tracing::info!(
        target: "frontdesk::relay::access",
        %method,
        host = %host.as_deref().unwrap_or("-"),
        %path,
        status = resp.status().as_u16(),
        duration_ms = started.elapsed().as_millis() as u64,
        "request"
    );
    resp
}

async fn route(
    shared: &Shared,
    req: Request<Incoming>,
    host: Option<&str>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let Some(index) = host.and_then(|h| shared.by_host.get(h).copied()) else {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    };
    if !is_webhook_path(req.uri().path()) {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    }
    if req.method() != Method::GET && req.method() != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    if let Some(refusal) = refuse_unless_whatsapp(&req) {
        return refusal;
    }
    let known = &shared.boxes[index];
    let max = shared.cfg.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return plain(StatusCode::PAYLOAD_TOO_LARGE, "payload too large\n");
    }
    // The whole body is read before the request takes one of its box's places: a caller that
    // announces a body and sends it slowly, or never, then costs a stream and a timer, not a
    // place that a real delivery would need.
    let body_timeout = Duration::from_secs(shared.cfg.body_timeout_secs);
    let (parts, body) = req.into_parts();
    let body = match tokio::time::timeout(body_timeout, Limited::new(body, max).collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return plain(StatusCode::PAYLOAD_TOO_LARGE, "payload too large\n");
        }
        Ok(Err(_)) => return plain(StatusCode::BAD_REQUEST, "bad request body\n"),
        Err(_) => return plain(StatusCode::REQUEST_TIMEOUT, "request body too slow\n"),
    };
    if parts.method == Method::GET && !body.is_empty() {
        return plain(StatusCode::BAD_REQUEST, "unexpected body\n");
    }
    let Some(sender) = lock(&shared.live)
        .get(&known.host)
        .map(|l| l.sender.clone())
    else {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "box not connected\n");
    };
    let Ok(_permit) = known.limit.clone().try_acquire_owned() else {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "box busy\n");
    };
    let timeout = Duration::from_secs(shared.cfg.request_timeout_secs);

    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let uri = match format!("https://{}{}", known.host, path_and_query).parse::<hyper::Uri>() {
        Ok(uri) => uri,
        Err(_) => return plain(StatusCode::BAD_REQUEST, "bad request target\n"),
    };
    let mut out = Request::new(Full::new(body));
    *out.method_mut() = parts.method;
    *out.uri_mut() = uri;
    copy_headers(&parts.headers, out.headers_mut());
    if let Ok(v) = HeaderValue::from_str(&peer.ip().to_string()) {
        out.headers_mut().insert("x-forwarded-for", v);
    }
    out.headers_mut()
        .insert("x-forwarded-proto", HeaderValue::from_static("https"));

    let mut sender = sender;
    let exchange = async {
        let resp = sender.send_request(out).await.map_err(|e| {
            tracing::debug!(host = %known.host, error = %e, "relay: forwarding failed");
        })?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, max).collect().await.map_err(|e| {
            tracing::debug!(host = %known.host, error = %e, "relay: box answer unreadable or too large");
        })?;
        Ok::<_, ()>((parts, body.to_bytes()))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok((parts, body))) => {
            let mut resp = Response::new(Full::new(body));
            *resp.status_mut() = parts.status;
            copy_headers(&parts.headers, resp.headers_mut());
            resp.headers_mut().remove(header::CONTENT_LENGTH);
            resp
        }
        // The box went away mid-request: WhatsApp will retry, as for a box that is away.
        Ok(Err(())) => plain(StatusCode::BAD_GATEWAY, "box connection failed\n"),
        Err(_) => plain(StatusCode::GATEWAY_TIMEOUT, "box did not answer in time\n"),
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn parse(text: &str) -> Result<RelayConfig, RelayError> {
        RelayConfig::parse(text, Path::new("relay.toml"))
    }

    const BASE: &str = r#"
public_listen = "0.0.0.0:443"
tunnel_listen = "0.0.0.0:7443"
cert_file = "/etc/frontdesk-relay/cert.pem"
key_file = "/etc/frontdesk-relay/key.pem"
"#;

    #[test]
    fn config_parses_with_defaults_and_boxes() {
        let cfg = parse(&format!(
            "{BASE}\n[[box]]\nhost = \"studio-a.relay.example\"\ntoken_sha256 = \"{HASH}\"\n"
        ))
        .unwrap();
        assert_eq!(cfg.boxes.len(), 1);
        assert_eq!(cfg.max_body_bytes, 1024 * 1024);
        assert_eq!(cfg.max_concurrent_per_box, 32);
        assert_eq!(cfg.boxes[0].host, "studio-a.relay.example");
    }

    #[test]
    fn shipped_example_is_valid_and_lists_every_default() {
        let text = include_str!("../../../packaging/relay.toml");
        let cfg = parse(&format!(
            "{text}\n[[box]]\nhost = \"studio-a.relay.example\"\ntoken_sha256 = \"{HASH}\"\n"
        ))
        .unwrap();
        let defaults = RelayConfig::new(
            cfg.public_listen,
            cfg.tunnel_listen,
            cfg.cert_file.clone(),
            cfg.key_file.clone(),
        );
        // Debug shows every field: a default changed in the code must change in the example too.
        let shown = |c: &RelayConfig| {
            let mut c = c.clone();
            c.boxes.clear();
            format!("{c:?}")
        };
        assert_eq!(shown(&cfg), shown(&defaults));
        for key in [
            "max_body_bytes",
            "max_concurrent_per_box",
            "request_timeout_secs",
            "body_timeout_secs",
            "max_connections",
            "max_connections_per_address",
            "max_pending_handshakes",
            "max_pending_handshakes_per_address",
            "handshake_timeout_secs",
            "idle_timeout_secs",
            "keepalive_secs",
            "max_streams_per_connection",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(&format!("{key} = "))),
                "{key} is not in packaging/relay.toml"
            );
        }
    }

    #[test]
    fn config_rejects_mistakes() {
        let unknown = parse(&format!("{BASE}\nmax_bodybytes = 5\n")).unwrap_err();
        assert!(unknown.to_string().contains("max_bodybytes"), "{unknown}");
        let raw_token = parse(&format!(
            "{BASE}\n[[box]]\nhost = \"a.example\"\ntoken_sha256 = \"my-secret-token\"\n"
        ))
        .unwrap_err();
        assert!(
            raw_token.to_string().contains("box[0].token_sha256"),
            "{raw_token}"
        );
        let upper = parse(&format!(
            "{BASE}\n[[box]]\nhost = \"A.example\"\ntoken_sha256 = \"{HASH}\"\n"
        ))
        .unwrap_err();
        assert!(upper.to_string().contains("box[0].host"), "{upper}");
        let twice = parse(&format!(
            "{BASE}\n[[box]]\nhost = \"a.example\"\ntoken_sha256 = \"{HASH}\"\n\
             [[box]]\nhost = \"b.example\"\ntoken_sha256 = \"{HASH}\"\n"
        ))
        .unwrap_err();
        assert!(twice.to_string().contains("used by another box"), "{twice}");
        let small = parse(&format!("{BASE}\nmax_body_bytes = 10\n")).unwrap_err();
        assert!(small.to_string().contains("max_body_bytes"), "{small}");
        let zero = parse(&format!("{BASE}\nbody_timeout_secs = 0\n")).unwrap_err();
        assert!(zero.to_string().contains("body_timeout_secs"), "{zero}");
        let inverted = parse(&format!(
            "{BASE}\nmax_connections = 10\nmax_connections_per_address = 11\n"
        ))
        .unwrap_err();
        assert!(
            inverted.to_string().contains("max_connections_per_address"),
            "{inverted}"
        );
    }

    #[test]
    fn access_log_path_drops_query_values() {
        assert_eq!(
            loggable_path(
                "/webhook",
                Some("hub.mode=subscribe&hub.verify_token=s3cret&hub.challenge=42")
            ),
            "/webhook?hub.mode=&hub.verify_token=&hub.challenge="
        );
        assert_eq!(loggable_path("/webhook", None), "/webhook");
    }

    #[test]
    fn only_webhook_paths_are_forwarded() {
        assert!(is_webhook_path("/webhook"));
        assert!(is_webhook_path("/webhook/whatsapp"));
        assert!(!is_webhook_path("/webhooks"));
        assert!(!is_webhook_path("/metrics"));
        assert!(!is_webhook_path("/admin/webhook"));
    }

    #[test]
    fn host_names_are_validated() {
        assert!(valid_host("studio-1.relay.example"));
        assert!(!valid_host("Studio.example"));
        assert!(!valid_host("a..b"));
        assert!(!valid_host("-a.example"));
        assert!(!valid_host("a b"));
    }
}
