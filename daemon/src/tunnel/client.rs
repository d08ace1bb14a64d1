//! The box side of the tunnel: dials the relay, authenticates with its token, then serves HTTP/2
//! (only the service it is given) over that outbound connection, reconnecting with jittered
//! exponential backoff and publishing its [`TunnelState`] for `frontdesk status`.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rand::Rng;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::proto::{self, PemError, Reply, TunnelTimings, TunnelToken};
use crate::config::TunnelConfig;

/// Everything the tunnel client needs besides its token and service.
#[derive(Debug, Clone)]
pub struct TunnelClientConfig {
    /// `host:port` of the relay's tunnel listener.
    pub relay: String,
    /// Name the relay's certificate must carry.
    pub server_name: String,
    /// CA that signed the relay's certificate; `None`: the bundled public roots (webpki-roots).
    pub ca_file: Option<PathBuf>,
    /// Timeouts and keep-alive of a session.
    pub timings: TunnelTimings,
    /// When to dial again after a failure.
    pub backoff: BackoffPolicy,
}

impl TunnelClientConfig {
    /// Production timings and backoff for the `[tunnel]` section.
    pub fn from_config(cfg: &TunnelConfig) -> TunnelClientConfig {
        TunnelClientConfig {
            relay: cfg.relay.clone(),
            server_name: cfg.server_name.clone(),
            ca_file: cfg.ca_file.clone(),
            timings: TunnelTimings::default(),
            backoff: BackoffPolicy::default(),
        }
    }
}

/// Reconnect schedule: "full jitter" exponential backoff, uniformly random in
/// `[0, min(max, initial * 2^n)]` after the n-th consecutive failure, so that many boxes
/// cut off by one relay restart do not return in lockstep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Ceiling of the delay after the first failure.
    pub initial: Duration,
    /// Highest ceiling, however many failures.
    pub max: Duration,
    /// A session that stayed up this long resets the schedule to `initial`.
    pub stable_after: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            stable_after: Duration::from_secs(60),
        }
    }
}

impl BackoffPolicy {
    /// Upper bound of the delay after `failures` consecutive failures (1 = the first).
    pub fn ceiling(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(20);
        self.initial
            .saturating_mul(1u32 << exp)
            .min(self.max)
            .max(Duration::from_millis(1))
    }

    /// A random delay after `failures` consecutive ordinary failures.
    pub fn delay(&self, failures: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(failures);
        Duration::from_nanos(rng.gen_range(0..=ceiling.as_nanos().min(u64::MAX as u128) as u64))
    }

    /// The delay after a refused token or an untrusted certificate: a person has to fix
    /// something, so only an occasional retry at the maximum (jittered in its upper half).
    pub fn fatal_delay(&self, rng: &mut impl Rng) -> Duration {
        let max = self.max.as_nanos().min(u64::MAX as u128) as u64;
        Duration::from_nanos(rng.gen_range(max / 2..=max))
    }
}

/// What the tunnel is doing now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunnelState {
    /// No `[tunnel]` section.
    Disabled,
    /// Dialling; `attempt` counts since the last working session.
    Connecting {
        /// Dial attempts since the last working session, this one included.
        attempt: u32,
    },
    /// Serving; `session` counts the sessions since the daemon started.
    Connected {
        /// When this session was established.
        since: SystemTime,
        /// Sessions since the daemon started, this one included.
        session: u64,
    },
    /// Waiting to retry after an ordinary failure.
    Backoff {
        /// When the next dial starts.
        until: SystemTime,
        /// Consecutive failures the backoff counts (a session that stays up resets them).
        attempt: u32,
        /// Why the last attempt or session failed.
        last_error: String,
    },
    /// The relay refused the token; retried rarely until someone fixes the token or the relay.
    AuthFailed {
        /// When the next dial starts.
        until: SystemTime,
        /// Attempts in a row that failed on the token or on TLS.
        attempts: u32,
    },
    /// The relay's certificate was not trusted (or TLS failed otherwise); retried rarely.
    TlsFailed {
        /// When the next dial starts.
        until: SystemTime,
        /// Attempts in a row that failed on the token or on TLS.
        attempts: u32,
        /// What TLS reported.
        error: String,
    },
    /// Not started: the configuration cannot work (CA file, server name).
    ConfigError {
        /// What is wrong with the configuration.
        error: String,
    },
    /// Shut down.
    Stopped,
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

fn until_now(t: SystemTime) -> String {
    human(t.duration_since(SystemTime::now()).unwrap_or_default())
}

impl fmt::Display for TunnelState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TunnelState::Disabled => f.write_str("disabled"),
            TunnelState::Connecting { attempt } => write!(f, "connecting (attempt {attempt})"),
            TunnelState::Connected { since, session } => {
                let up = SystemTime::now().duration_since(*since).unwrap_or_default();
                write!(f, "connected for {} (session {session})", human(up))
            }
            TunnelState::Backoff {
                until,
                attempt,
                last_error,
            } => write!(
                f,
                "reconnecting in {} (attempt {attempt}): {last_error}",
                until_now(*until)
            ),
            TunnelState::AuthFailed { until, attempts } => write!(
                f,
                "the relay refused this box's token ({attempts} attempts); check the tunnel-token \
                 credential and the relay's [[box]] entry; next try in {}",
                until_now(*until)
            ),
            TunnelState::TlsFailed {
                until,
                attempts,
                error,
            } => write!(
                f,
                "TLS with the relay failed ({attempts} attempts): {error}; check tunnel.server_name \
                 and tunnel.ca_file; next try in {}",
                until_now(*until)
            ),
            TunnelState::ConfigError { error } => write!(f, "not started: {error}"),
            TunnelState::Stopped => f.write_str("stopped"),
        }
    }
}

/// Errors that stop the tunnel client before it dials at all.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The CA file cannot be read or parsed.
    #[error("tunnel.ca_file: {0}")]
    CaFile(#[from] PemError),
    /// rustls refused a certificate of the CA file.
    #[error("tunnel.ca_file: certificate rejected: {0}")]
    BadCa(rustls::Error),
    /// No CA certificate to trust.
    #[error("tunnel.ca_file: no usable CA certificate")]
    NoRoots,
    /// `tunnel.server_name` is neither a DNS name nor an IP address.
    #[error("tunnel.server_name {0:?} is not a valid DNS name or IP address")]
    ServerName(String),
    /// The TLS client configuration could not be built.
    #[error("TLS setup: {0}")]
    Tls(rustls::Error),
}

/// How one dial attempt failed.
#[derive(Debug)]
enum AttemptError {
    /// The relay answered `ERR unauthorized`.
    Auth,
    /// The relay's certificate or the TLS handshake was refused.
    Tls(String),
    /// Anything transient: refused, timed out, reset, unexpected answer.
    Other(String),
}

fn classify_handshake(e: io::Error) -> AttemptError {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => AttemptError::Tls(tls.to_string()),
        None => AttemptError::Other(format!("TLS handshake: {e}")),
    }
}

/// Builds the client TLS config: TLS 1.3 only (both ends are ours), the tunnel ALPN, and the
/// pinned CA if one is configured.
pub(crate) fn client_tls(cfg: &TunnelClientConfig) -> Result<Arc<ClientConfig>, TunnelError> {
    let mut roots = RootCertStore::empty();
    match &cfg.ca_file {
        Some(path) => {
            for cert in proto::load_certs(path)? {
                roots.add(cert).map_err(TunnelError::BadCa)?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    if roots.is_empty() {
        return Err(TunnelError::NoRoots);
    }
    let mut tls = ClientConfig::builder_with_provider(proto::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TunnelError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![proto::ALPN.to_vec()];
    Ok(Arc::new(tls))
}

/// Dials, completes TLS and the hello exchange; returns the stream ready for HTTP/2.
async fn establish(
    cfg: &TunnelClientConfig,
    connector: &TlsConnector,
    server_name: &ServerName<'static>,
    token: &TunnelToken,
) -> Result<TlsStream<TcpStream>, AttemptError> {
    let t = &cfg.timings;
    let tcp = tokio::time::timeout(t.connect_timeout, TcpStream::connect(cfg.relay.as_str()))
        .await
        .map_err(|_| AttemptError::Other("connect timed out".into()))?
        .map_err(|e| AttemptError::Other(format!("connect: {e}")))?;
    // Small request/response frames: Nagle would add a round trip of delay to each.
    let _ = tcp.set_nodelay(true);
    proto::set_tcp_keepalive(&tcp, t.tcp_keepalive);
    let handshake = async {
        let mut tls = connector
            .connect(server_name.clone(), tcp)
            .await
            .map_err(classify_handshake)?;
        let io_err = |e: io::Error| AttemptError::Other(format!("hello: {e}"));
        tls.write_all(&proto::hello_line(token))
            .await
            .map_err(io_err)?;
        tls.flush().await.map_err(io_err)?;
        let line = proto::read_line(&mut tls).await.map_err(io_err)?;
        match proto::parse_reply(&line) {
            Some(Reply::Ok) => Ok(tls),
            Some(Reply::Err(reason)) if reason == proto::ERR_UNAUTHORIZED => {
                Err(AttemptError::Auth)
            }
            Some(Reply::Err(reason)) => Err(AttemptError::Other(format!(
                "relay refused the connection: {reason}"
            ))),
            None => Err(AttemptError::Other(
                "relay sent an unexpected answer".into(),
            )),
        }
    };
    tokio::time::timeout(t.handshake_timeout, handshake)
        .await
        .map_err(|_| AttemptError::Other("TLS handshake or hello timed out".into()))?
}

/// How a served session ended.
enum SessionEnd {
    Shutdown,
    Closed(String),
}

/// Serves HTTP/2 over an established stream until it ends or `shutdown` fires; on shutdown
/// sends GOAWAY and lets in-flight requests finish (bounded by `shutdown_grace`).
async fn serve_session<S, B, F>(
    stream: TlsStream<TcpStream>,
    service: S,
    timings: &TunnelTimings,
    shutdown: &mut std::pin::Pin<&mut F>,
) -> SessionEnd
where
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
    F: Future<Output = ()>,
{
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(timings.ping_interval)
        .keep_alive_timeout(timings.ping_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => SessionEnd::Closed(match res {
            Ok(()) => "the relay closed the connection".into(),
            Err(e) => format!("connection lost: {e}"),
        }),
        () = shutdown.as_mut() => {
            conn.as_mut().graceful_shutdown();
            if tokio::time::timeout(timings.shutdown_grace, conn.as_mut()).await.is_err() {
                tracing::warn!("tunnel: in-flight requests did not finish within the grace period");
            }
            SessionEnd::Shutdown
        }
    }
}

fn wall_after(d: Duration) -> SystemTime {
    SystemTime::now() + d
}

/// Runs the tunnel until `shutdown` completes: dial, authenticate, serve `service` over HTTP/2,
/// and after any loss back off and dial again. Returns an error only for configuration problems
/// found before the first dial (CA file, server name); everything later is retried.
///
/// `state` is updated at every transition; it ends at [`TunnelState::Stopped`].
#[expect(
    clippy::too_many_lines,
    reason = "the reconnect loop with its backoff and state transitions reads as one state machine"
)]
pub async fn run_tunnel<S, B, F>(
    cfg: TunnelClientConfig,
    token: TunnelToken,
    service: S,
    state: watch::Sender<TunnelState>,
    shutdown: F,
) -> Result<(), TunnelError>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
    F: Future<Output = ()>,
{
    let setup = client_tls(&cfg).and_then(|tls| {
        let name = ServerName::try_from(cfg.server_name.clone())
            .map_err(|_| TunnelError::ServerName(cfg.server_name.clone()))?;
        Ok((tls, name))
    });
    let (tls, server_name) = match setup {
        Ok(ok) => ok,
        Err(e) => {
            state.send_replace(TunnelState::ConfigError {
                error: e.to_string(),
            });
            return Err(e);
        }
    };
    let connector = TlsConnector::from(tls);
    tokio::pin!(shutdown);

    let mut failures: u32 = 0;
    let mut fatal_failures: u32 = 0;
    let mut sessions: u64 = 0;
    loop {
        state.send_replace(TunnelState::Connecting {
            attempt: failures + fatal_failures + 1,
        });
        let attempt = tokio::select! {
            () = shutdown.as_mut() => break,
            r = establish(&cfg, &connector, &server_name, &token) => r,
        };
        let delay = match attempt {
            Ok(stream) => {
                sessions += 1;
                fatal_failures = 0;
                let started = Instant::now();
                state.send_replace(TunnelState::Connected {
                    since: SystemTime::now(),
                    session: sessions,
                });
                tracing::info!(relay = %cfg.relay, session = sessions, "tunnel connected");
                let end = serve_session(stream, service.clone(), &cfg.timings, &mut shutdown).await;
                let SessionEnd::Closed(reason) = end else {
                    break;
                };
                if started.elapsed() >= cfg.backoff.stable_after {
                    failures = 0;
                }
                failures += 1;
                tracing::warn!(relay = %cfg.relay, %reason, "tunnel lost");
                let delay = cfg.backoff.delay(failures, &mut rand::thread_rng());
                state.send_replace(TunnelState::Backoff {
                    until: wall_after(delay),
                    attempt: failures,
                    last_error: reason,
                });
                delay
            }
            Err(AttemptError::Auth) => {
                fatal_failures += 1;
                let delay = cfg.backoff.fatal_delay(&mut rand::thread_rng());
                tracing::error!(
                    relay = %cfg.relay,
                    attempts = fatal_failures,
                    "tunnel: the relay refused this box's token; retrying only every {}",
                    human(cfg.backoff.max)
                );
                state.send_replace(TunnelState::AuthFailed {
                    until: wall_after(delay),
                    attempts: fatal_failures,
                });
                delay
            }
            Err(AttemptError::Tls(error)) => {
                fatal_failures += 1;
                let delay = cfg.backoff.fatal_delay(&mut rand::thread_rng());
                tracing::error!(relay = %cfg.relay, attempts = fatal_failures, %error, "tunnel: TLS with the relay failed");
                state.send_replace(TunnelState::TlsFailed {
                    until: wall_after(delay),
                    attempts: fatal_failures,
                    error,
                });
                delay
            }
            Err(AttemptError::Other(error)) => {
                failures += 1;
                let delay = cfg.backoff.delay(failures, &mut rand::thread_rng());
                tracing::debug!(relay = %cfg.relay, attempt = failures, %error, "tunnel connect failed");
                state.send_replace(TunnelState::Backoff {
                    until: wall_after(delay),
                    attempt: failures,
                    last_error: error,
                });
                delay
            }
        };
        tokio::select! {
            () = shutdown.as_mut() => break,
            () = tokio::time::sleep(delay) => {}
        }
    }
    state.send_replace(TunnelState::Stopped);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_max_with_full_jitter() {
        let p = BackoffPolicy::default();
        assert_eq!(p.ceiling(1), Duration::from_secs(1));
        assert_eq!(p.ceiling(2), Duration::from_secs(2));
        assert_eq!(p.ceiling(6), Duration::from_secs(32));
        assert_eq!(p.ceiling(7), Duration::from_secs(60));
        assert_eq!(p.ceiling(1000), Duration::from_secs(60));
        let mut rng = rand::thread_rng();
        let mut below_half = 0;
        for _ in 0..1000 {
            let d = p.delay(7, &mut rng);
            assert!(d <= p.max);
            if d < p.max / 2 {
                below_half += 1;
            }
        }
        // Full jitter spreads over the whole range, not just near the ceiling.
        assert!(below_half > 300, "{below_half}");
    }

    #[test]
    fn fatal_errors_wait_in_the_upper_half_of_max() {
        let p = BackoffPolicy::default();
        let mut rng = rand::thread_rng();
        for _ in 0..1000 {
            let d = p.fatal_delay(&mut rng);
            assert!(d >= p.max / 2 && d <= p.max, "{d:?}");
        }
    }

    #[test]
    fn state_display_is_readable() {
        let s = TunnelState::Backoff {
            until: SystemTime::now() + Duration::from_secs(90),
            attempt: 3,
            last_error: "connect: refused".into(),
        };
        let text = s.to_string();
        assert!(text.starts_with("reconnecting in 1m"), "{text}");
        assert!(text.ends_with("(attempt 3): connect: refused"), "{text}");
        let c = TunnelState::Connected {
            since: SystemTime::now() - Duration::from_secs(3700),
            session: 2,
        };
        assert_eq!(c.to_string(), "connected for 1h01m (session 2)");
        assert!(TunnelState::AuthFailed {
            until: SystemTime::now(),
            attempts: 4
        }
        .to_string()
        .contains("refused this box's token (4 attempts)"));
    }

    #[tokio::test]
    async fn run_tunnel_reports_a_bad_server_name_and_stops() {
        let cfg = TunnelClientConfig {
            relay: "127.0.0.1:1".into(),
            server_name: "not a name".into(),
            ca_file: None,
            timings: TunnelTimings::default(),
            backoff: BackoffPolicy::default(),
        };
        let (tx, rx) = watch::channel(TunnelState::Disabled);
        let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
            Ok::<_, std::convert::Infallible>(Response::new(
                http_body_util::Empty::<bytes::Bytes>::new(),
            ))
        });
        let res = run_tunnel(
            cfg,
            TunnelToken::generate(),
            svc,
            tx,
            std::future::pending(),
        )
        .await;
        assert!(matches!(res, Err(TunnelError::ServerName(_))));
        assert!(rx
            .borrow()
            .to_string()
            .starts_with("not started: tunnel.server_name"));
    }

    #[test]
    fn missing_ca_file_is_a_config_error() {
        let cfg = TunnelClientConfig::from_config(&TunnelConfig {
            relay: "127.0.0.1:1".into(),
            server_name: "relay.example".into(),
            ca_file: Some("/nonexistent/ca.pem".into()),
            credential: "tunnel-token".into(),
        });
        assert!(matches!(client_tls(&cfg), Err(TunnelError::CaFile(_))));
        let no_ca = TunnelClientConfig {
            ca_file: None,
            ..cfg
        };
        assert!(client_tls(&no_ca).is_ok());
    }
}
