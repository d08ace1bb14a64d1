//! The admin API: HTTP/1.1 with JSON over the unix socket `/run/frontdesk/admin.sock`, served
//! by hyper. Only root and members of the admin group get in (peer credentials via SO_PEERCRED,
//! supplementary groups included); everyone else gets 403 and an `admin.denied` audit entry.
//! Every request is audited with the caller's uid and user name.
//!
//! Submodules: [`api`] (paths and JSON shapes, shared with the CLI), [`peer`] (caller identity
//! and the access rule), [`request`] (routing and body parsing, pure), [`ops`] (the operations),
//! [`client`] (the CLI's blocking client).
//!
//! `send` needs the WhatsApp outbox: the daemon hands it over with [`AdminState::set_outbox`]
//! once the channel runs; until then `send` answers 503.

pub mod api;
pub mod client;
pub mod ops;
pub mod peer;
pub mod request;
pub mod staff;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use jiff::Timestamp;
use tokio::net::UnixListener;
use tracing::{debug, warn};

use crate::audit::{AuditEvent, AuditLog, Code, NewEntry, Outcome, RequestId};
use crate::config::Config;
use crate::store::Store;
use crate::whatsapp::queue::Queues;
use ops::{Ctx, OpError, Reply};
use peer::Caller;
pub use request::AdminRequest;

/// Largest request body accepted (requests are small JSON documents).
const MAX_REQUEST_BYTES: usize = 64 * 1024;

type StatusSource = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// Live figures owned by other parts of the daemon, shown by `frontdesk status`. Each part
/// registers a source once (e.g. `"model"`, `"tunnel"`, `"inbox_depth"`); `status` calls them.
#[derive(Default)]
pub struct StatusBoard {
    sources: RwLock<BTreeMap<String, StatusSource>>,
}

impl StatusBoard {
    /// Registers (or replaces) the source `name`.
    pub fn set_source(
        &self,
        name: &str,
        f: impl Fn() -> serde_json::Value + Send + Sync + 'static,
    ) {
        self.sources
            .write()
            .expect("status board poisoned")
            .insert(name.to_string(), Arc::new(f));
    }

    /// A fixed value (model description and the like).
    pub fn set_value(&self, name: &str, v: serde_json::Value) {
        self.set_source(name, move || v.clone());
    }

    /// Calls every source and returns their current values by name.
    pub fn snapshot(&self) -> BTreeMap<String, serde_json::Value> {
        let sources: Vec<(String, StatusSource)> = self
            .sources
            .read()
            .expect("status board poisoned")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        sources.into_iter().map(|(k, f)| (k, f())).collect()
    }
}

/// Everything the admin API works with.
pub struct AdminState {
    /// The encrypted customer store.
    pub store: Arc<Store>,
    /// The audit log every request is recorded in.
    pub audit: Arc<AuditLog>,
    config: RwLock<Arc<Config>>,
    admin_gid: RwLock<Option<u32>>,
    /// When the daemon started (for `status`).
    pub started: Timestamp,
    /// Live figures of the other components.
    pub board: StatusBoard,
    outbox: RwLock<Option<OutboxHandle>>,
}

/// The WhatsApp outbox and the wake-up of its sender, for `send`. Absent while the WhatsApp
/// channel is not running.
#[derive(Clone)]
pub struct OutboxHandle {
    /// The WhatsApp queues; `send` pushes to the outbox.
    pub queues: Arc<Queues>,
    /// Wakes the sender once a message is queued.
    pub wake: Arc<tokio::sync::Notify>,
}

impl AdminState {
    /// State over `store`, `audit` and `config`, with the admin group looked up from `config`.
    pub fn new(store: Arc<Store>, audit: Arc<AuditLog>, config: Arc<Config>) -> AdminState {
        let gid = peer::group_gid(&config.service.admin_group);
        AdminState {
            store,
            audit,
            config: RwLock::new(config),
            admin_gid: RwLock::new(gid),
            started: Timestamp::now(),
            board: StatusBoard::default(),
            outbox: RwLock::new(None),
        }
    }

    /// Lets `send` queue messages: `queues` is the channel's outbox, `wake` the sender's
    /// wake-up. Call once the WhatsApp channel runs.
    pub fn set_outbox(&self, queues: Arc<Queues>, wake: Arc<tokio::sync::Notify>) {
        *self.outbox.write().expect("outbox lock poisoned") = Some(OutboxHandle { queues, wake });
    }

    /// The WhatsApp outbox, once the channel runs.
    pub fn outbox(&self) -> Option<OutboxHandle> {
        self.outbox.read().expect("outbox lock poisoned").clone()
    }

    /// The current configuration.
    pub fn config(&self) -> Arc<Config> {
        self.config.read().expect("config lock poisoned").clone()
    }

    /// Replaces the configuration (SIGHUP reload); the admin group is looked up again.
    pub fn set_config(&self, config: Arc<Config>) {
        *self.admin_gid.write().expect("gid lock poisoned") =
            peer::group_gid(&config.service.admin_group);
        *self.config.write().expect("config lock poisoned") = config;
    }

    /// The gid of the configured admin group, if the group exists.
    pub fn admin_gid(&self) -> Option<u32> {
        *self.admin_gid.read().expect("gid lock poisoned")
    }
}

/// Binds the admin socket at `path`: a stale socket is replaced, the mode is 0660 and the group
/// is `group`. When the group does not exist (or cannot be set) the socket stays owner-only and a
/// warning is logged: root still gets in.
pub fn bind_admin_socket(path: &Path, group: &str) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if let Ok(md) = std::fs::symlink_metadata(path) {
        if md.file_type().is_socket() {
            std::fs::remove_file(path)?;
        }
    }
    let listener = UnixListener::bind(path)?;
    let mode = match peer::group_gid(group) {
        Some(gid) => match std::os::unix::fs::chown(path, None, Some(gid)) {
            Ok(()) => 0o660,
            Err(e) => {
                warn!(group, error = %e, "cannot give the admin socket to the admin group; only root can use it");
                0o600
            }
        },
        None => {
            warn!(
                group,
                "admin group does not exist; only root can use the admin socket"
            );
            0o600
        }
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// Serves the admin API on `listener` until `shutdown` completes; open connections finish
/// their current request.
pub async fn serve_admin(
    listener: UnixListener,
    state: Arc<AdminState>,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    warn!(error = %e, "admin socket accept failed");
                    continue;
                }
            },
        };
        let state = state.clone();
        let mut stop_rx = stop_rx.clone();
        conns.spawn(async move {
            let Ok(cred) = stream.peer_cred() else {
                warn!("admin connection without peer credentials; closed");
                return;
            };
            let (uid, gid, pid) = (cred.uid(), cred.gid(), cred.pid());
            let Ok(caller) =
                tokio::task::spawn_blocking(move || Caller::resolve(uid, gid, pid)).await
            else {
                return;
            };
            let caller = Arc::new(caller);
            let svc =
                hyper::service::service_fn(move |req| handle(state.clone(), caller.clone(), req));
            let conn = crate::http1::server().serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        debug!(error = %e, "admin connection ended");
                    }
                }
                _ = stop_rx.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
        // Reap finished connections so the set does not grow.
        while conns.try_join_next().is_some() {}
    }
    let _ = stop_tx.send(true);
    while conns.join_next().await.is_some() {}
}

/// Stable endpoint codes for audit entries.
fn endpoint(method: &Method, path: &str) -> Code {
    let c = match (method, path) {
        (&Method::GET, api::STATUS) => "status",
        (&Method::POST, api::CUSTOMERS_LIST) => "customers.list",
        (&Method::POST, api::CUSTOMERS_SHOW) => "customers.show",
        (&Method::POST, api::CUSTOMERS_EXPORT) => "customers.export",
        (&Method::POST, api::CUSTOMERS_FORGET) => "customers.forget",
        (&Method::POST, api::CUSTOMERS_PAUSE) => "customers.pause",
        (&Method::POST, api::CUSTOMERS_RESUME) => "customers.resume",
        (&Method::POST, api::AUDIT_SHOW) => "audit.show",
        (&Method::POST, api::AUDIT_VERIFY) => "audit.verify",
        (&Method::POST, api::AUDIT_EXPORT) => "audit.export",
        (&Method::POST, api::RETENTION_RUN) => "retention.run",
        (&Method::POST, api::STATS) => "stats",
        (&Method::POST, api::SEND) => "send",
        (&Method::POST, staff::STAFF_ADD) => "staff.add",
        (&Method::POST, staff::STAFF_PASSWD) => "staff.passwd",
        (&Method::POST, staff::STAFF_REMOVE) => "staff.remove",
        (&Method::POST, staff::STAFF_LIST) => "staff.list",
        _ => "unknown",
    };
    Code::new(c)
}

fn json_response(
    status: StatusCode,
    v: &impl serde::Serialize,
    rid: RequestId,
) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-request-id", rid.to_string())
        .body(Full::new(Bytes::from(
            serde_json::to_vec(v).expect("replies serialise"),
        )))
        .expect("valid response")
}

fn error_response(status: u16, message: String, rid: RequestId) -> Response<Full<Bytes>> {
    json_response(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &api::ErrorReply { error: message },
        rid,
    )
}

async fn handle(
    state: Arc<AdminState>,
    caller: Arc<Caller>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let rid = RequestId::random();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let ep = endpoint(&method, &path);

    if !caller.is_authorised(state.admin_gid()) {
        let group = state.config().service.admin_group.clone();
        let entry = NewEntry::new(caller.actor(), AuditEvent::AdminDenied { endpoint: ep })
            .outcome(Outcome::denied("not_admin"))
            .request(rid);
        let audit = state.audit.clone();
        let _ = tokio::task::spawn_blocking(move || audit.append(entry)).await;
        warn!(
            uid = caller.uid,
            endpoint = ep.as_str(),
            "admin request denied"
        );
        return Ok(error_response(
            403,
            format!(
                "permission denied: uid {} is neither root nor a member of group {group}",
                caller.uid
            ),
            rid,
        ));
    }

    let body = match Limited::new(req.into_body(), MAX_REQUEST_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(error_response(413, "request body too large".into(), rid)),
    };
    let result = tokio::task::spawn_blocking(move || {
        let ctx = Ctx {
            state: &state,
            caller: &caller,
            request_id: rid,
        };
        let r = dispatch(&ctx, &method, &path, &body);
        if let Err(e) = &r {
            if e.status == 400 || e.status == 405 {
                // Requests that reached no operation are audited here; operations audit
                // themselves.
                let _ = state.audit.append(
                    NewEntry::new(caller.actor(), AuditEvent::AdminDenied { endpoint: ep })
                        .outcome(Outcome::error("bad_request"))
                        .request(rid),
                );
            }
        }
        r
    })
    .await;
    Ok(match result {
        Ok(Ok(Reply::Json(v))) => json_response(StatusCode::OK, &v, rid),
        Ok(Ok(Reply::Bytes(b, ctype))) => Response::builder()
            .status(StatusCode::OK)
            .header("content-type", ctype)
            .header("x-request-id", rid.to_string())
            .body(Full::new(Bytes::from(b)))
            .expect("valid response"),
        Ok(Err(e)) => error_response(e.status, e.message, rid),
        Err(_) => error_response(500, "internal error".into(), rid),
    })
}

fn dispatch(ctx: &Ctx, method: &Method, path: &str, body: &[u8]) -> Result<Reply, OpError> {
    use AdminRequest as R;
    match AdminRequest::parse(method, path, body)? {
        R::Status => ops::status(ctx),
        R::CustomersList(req) => ops::customers_list(ctx, req),
        R::CustomersShow(req) => ops::customers_show(ctx, req),
        R::CustomersExport(req) => ops::customers_export(ctx, req),
        R::CustomersForget(req) => ops::customers_forget(ctx, req),
        R::CustomersPause(req) => ops::customers_set_mode(ctx, req, true),
        R::CustomersResume(req) => ops::customers_set_mode(ctx, req, false),
        R::AuditShow(req) => ops::audit_show(ctx, req),
        R::AuditVerify(req) => ops::audit_verify(ctx, req),
        R::AuditExport(req) => ops::audit_export(ctx, req),
        R::Retention(req) => ops::retention(ctx, req),
        R::Stats(req) => ops::stats(ctx, req),
        R::Send(req) => ops::send(ctx, req),
        R::StaffAdd(req) => staff::add(ctx, req),
        R::StaffPasswd(req) => staff::passwd(ctx, req),
        R::StaffRemove(req) => staff::remove(ctx, req),
        R::StaffList => staff::list(ctx),
    }
}

/// The admin server on its own runtime thread, bound to `socket`, until dropped. For tests and
/// tools that drive the admin API without a whole daemon.
#[cfg(any(test, feature = "testkit"))]
pub struct AdminServerThread {
    /// The socket the server listens on.
    pub socket: std::path::PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[cfg(any(test, feature = "testkit"))]
impl AdminServerThread {
    /// Binds `socket` (with `group` as its group, when that group exists) and serves `state`.
    pub fn start(state: Arc<AdminState>, socket: &Path, group: &str) -> AdminServerThread {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (path, group) = (socket.to_path_buf(), group.to_string());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("admin server runtime");
            rt.block_on(async move {
                match bind_admin_socket(&path, &group) {
                    Ok(listener) => {
                        let _ = ready_tx.send(Ok(()));
                        serve_admin(listener, state, async {
                            let _ = stopped.await;
                        })
                        .await;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                    }
                }
            });
        });
        ready_rx
            .recv()
            .expect("admin server thread")
            .expect("admin socket binds");
        AdminServerThread {
            socket: socket.to_path_buf(),
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

#[cfg(any(test, feature = "testkit"))]
impl Drop for AdminServerThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
