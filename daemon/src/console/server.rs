//! The console's HTTP side: the listener (plain HTTP/1.1 on loopback, HTTPS anywhere else),
//! routing, sign-in and sign-out, the session cookie, CSRF checks, security headers and the
//! live-update stream (server-sent events naming the conversation that changed).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use askama::Template;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use jiff::Timestamp;
use tracing::{debug, error, warn};

use super::accounts::{self, Role};
use super::actions::{self, Done, Staff};
use super::auth::tokens_match;
use super::pages::{self, UserView};
use super::ConsoleState;
use crate::audit::{Actor, AuditEvent, NewEntry, Outcome, StaffName};
use crate::store::crypto::Pseudonym;
use crate::store::Store;

type Body = BoxBody<Bytes, Infallible>;

/// Largest form accepted (an answer is at most 4096 characters).
const MAX_FORM_BYTES: usize = 64 * 1024;
/// How often an idle live-update stream says it is alive (proxies close silent ones).
const KEEPALIVE: Duration = Duration::from_secs(20);
/// A TLS handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The Content-Security-Policy of every answer: only this origin's script and style, no
/// inline code, no frames, forms only to the console itself.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const CSS: &str = include_str!("static/console.css");
const JS: &str = include_str!("static/console.js");

/// The server's shared state: the console and the stop signal for live streams.
struct App {
    state: Arc<ConsoleState>,
    stop: tokio::sync::watch::Receiver<bool>,
}

/// Serves the console on `listener` (with `tls`, HTTPS) until `stopped` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: Arc<ConsoleState>,
    stopped: impl Future<Output = ()>,
) {
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let app = Arc::new(App { state, stop });
    tokio::spawn(keep_inbox_index(app.clone()));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(stopped);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => { warn!(error = %e, "console accept failed"); continue }
            },
            _ = &mut stopped => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let ip = peer.ip();
        let svc = hyper::service::service_fn(move |req| handle(app.clone(), ip, req));
        match &acceptor {
            None => {
                let conn = crate::http1::server()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let graceful_conn = graceful.watcher();
                tokio::spawn(async move {
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            debug!(error = %e, "console TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let conn = crate::http1::server()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc);
                    let _ = graceful_conn.watch(conn).await;
                });
            }
        }
    }
    // Live streams end first, so the graceful stop does not wait for them.
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
}

async fn handle(
    app: Arc<App>,
    peer: IpAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let https = app.state.https;
    let mut resp = route(app, peer, req).await;
    let h = resp.headers_mut();
    let set = |h: &mut hyper::HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, hyper::header::HeaderValue::from_static(v));
    };
    set(h, "content-security-policy", CSP);
    set(h, "x-content-type-options", "nosniff");
    set(h, "x-frame-options", "DENY");
    set(h, "referrer-policy", "no-referrer");
    set(h, "cross-origin-opener-policy", "same-origin");
    if !h.contains_key("cache-control") {
        set(h, "cache-control", "no-store");
    }
    if https {
        set(h, "strict-transport-security", "max-age=31536000");
    }
    Ok(resp)
}

// ---- responses ----

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

fn html(status: StatusCode, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/html; charset=utf-8")
        .body(full(body))
        .expect("valid response")
}

fn redirect(location: &str, cookies: &[String]) -> Response<Body> {
    let mut b = Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header("location", location);
    for c in cookies {
        b = b.header("set-cookie", c);
    }
    b.body(full(Bytes::new())).expect("valid response")
}

fn render(t: &impl Template) -> String {
    t.render().unwrap_or_else(|e| {
        error!(error = %e, "console template failed");
        "Interner Fehler".to_string()
    })
}

fn error_page(
    status: u16,
    user: Option<UserView>,
    title: &'static str,
    message: &'static str,
) -> Response<Body> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    html(
        status,
        render(&pages::ErrorPage {
            user,
            nav: "",
            title,
            message,
        }),
    )
}

fn internal_error(e: impl std::fmt::Display) -> Response<Body> {
    error!(error = %e, "console request failed");
    error_page(
        500,
        None,
        "Interner Fehler",
        "Das hat nicht geklappt. Bitte erneut versuchen; das Journal des Servers nennt den Grund.",
    )
}

fn static_file(body: &'static str, ctype: &'static str) -> Response<Body> {
    Response::builder()
        .header("content-type", ctype)
        .header("cache-control", "private, max-age=3600")
        .body(full(body))
        .expect("valid response")
}

// ---- cookies and forms ----

fn session_cookie_name(https: bool) -> &'static str {
    // `__Host-` binds the cookie to this origin exactly; browsers accept it only when Secure.
    if https {
        "__Host-fd_session"
    } else {
        "fd_session"
    }
}

const LOGIN_COOKIE: &str = "fd_login";

fn cookie<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers()
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn set_cookie(name: &str, value: &str, path: &str, https: bool, max_age: Option<u32>) -> String {
    let mut c = format!("{name}={value}; Path={path}; HttpOnly; SameSite=Strict");
    if https {
        c.push_str("; Secure");
    }
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    c
}

async fn read_form(req: Request<Incoming>) -> Option<HashMap<String, String>> {
    let body = Limited::new(req.into_body(), MAX_FORM_BYTES)
        .collect()
        .await
        .ok()?
        .to_bytes();
    Some(form_urlencoded::parse(&body).into_owned().collect())
}

fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Where to go after signing in: a console path the sign-in came from, never another site.
fn safe_next(next: &str) -> &str {
    let ok = next.starts_with('/')
        && !next.starts_with("//")
        && next
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'/' || b == b'-' || b == b'_');
    if ok {
        next
    } else {
        "/"
    }
}

/// The customer of a console path segment: `c-` and 12 hex digits (the short pseudonym, as
/// in alerts and the audit log) or the full 32 hex digits.
pub fn resolve(store: &Store, id: &str) -> Option<Pseudonym> {
    if let Some(full) = Pseudonym::from_hex(id) {
        return Some(full);
    }
    let digits = id.strip_prefix("c-").filter(|h| {
        h.len() == 12
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })?;
    let prefix = hex::decode(digits).ok()?;
    let mut found = None;
    for g in store.keyspaces().customers.prefix(prefix) {
        let (key, _) = g.into_inner().ok()?;
        let p = Pseudonym::from_key_prefix(&key)?;
        if found.is_some_and(|f| f != p) {
            // Two customers share the short form (one in 2^48): only the full form is exact.
            return None;
        }
        found = Some(p);
    }
    found
}

// ---- routing ----

/// A signed-in request's member and session.
struct Signed {
    staff: Staff,
    csrf: String,
    token: String,
}

impl Signed {
    fn view(&self) -> UserView {
        UserView::new(&self.staff.name, self.staff.role, &self.csrf)
    }
}

/// The live session of the request, with the account's current role; a session whose
/// account was removed meanwhile is closed.
fn signed_in(app: &App, req: &Request<Incoming>) -> Option<Signed> {
    let token = cookie(req, session_cookie_name(app.state.https))?;
    let session = app.state.sessions.get(token, Timestamp::now())?;
    // A point read of one small meta row.
    let account = accounts::get(&app.state.admin.store, &session.name).ok()?;
    let Some(account) = account else {
        app.state.sessions.close_account(&session.name);
        return None;
    };
    if account.password_changed > session.created() {
        // A new password ends the sessions opened with the old one.
        app.state.sessions.close(token);
        return None;
    }
    Some(Signed {
        staff: Staff {
            name: account.name,
            role: account.role,
        },
        csrf: session.csrf,
        token: token.to_string(),
    })
}

async fn route(app: Arc<App>, peer: IpAddr, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    match (&method, path.as_str()) {
        (&Method::GET, "/static/console.css") => {
            return static_file(CSS, "text/css; charset=utf-8")
        }
        (&Method::GET, "/static/console.js") => {
            return static_file(JS, "text/javascript; charset=utf-8")
        }
        // Browsers ask for an icon on every page; there is none, and it must not lead to the
        // sign-in page (that would give the sign-in form a new token behind its back).
        (&Method::GET, "/favicon.ico") => {
            return Response::builder()
                .status(StatusCode::NOT_FOUND)
                .header("cache-control", "private, max-age=86400")
                .body(full(Bytes::new()))
                .expect("valid response")
        }
        (&Method::GET, "/login") => return login_page(&app, &req, &query),
        (&Method::POST, "/login") => return login(app, peer, req).await,
        _ => {}
    }
    let Some(signed) = signed_in(&app, &req) else {
        return if method == Method::GET {
            let next = format!(
                "/login?next={}",
                form_urlencoded::byte_serialize(path.as_bytes()).collect::<String>()
            );
            redirect(&next, &[])
        } else {
            error_page(403, None, "Nicht angemeldet", "Bitte zuerst anmelden.")
        };
    };
    let segments: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(str::to_string)
        .collect();
    if method == Method::POST {
        let Some(form) = read_form(req).await else {
            return error_page(
                413,
                Some(signed.view()),
                "Zu groß",
                "Die Eingabe ist zu groß.",
            );
        };
        if !tokens_match(
            form.get("csrf").map(String::as_str).unwrap_or_default(),
            &signed.csrf,
        ) {
            return csrf_refused(&app, &signed).await;
        }
        return post(app, signed, &segments, form).await;
    }
    if method != Method::GET {
        return error_page(
            405,
            Some(signed.view()),
            "Nicht erlaubt",
            "Diese Anfrage gibt es nicht.",
        );
    }
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    match seg.as_slice() {
        [""] => inbox(app, signed, false, &query).await,
        ["inbox", "list"] => inbox(app, signed, true, &query).await,
        ["events"] => events(&app),
        ["trials"] => trials(app, signed).await,
        ["dashboard"] => dashboard(app, signed, &query).await,
        ["c", id] => conversation(app, signed, id.to_string(), false, &query).await,
        ["c", id, "history"] => conversation(app, signed, id.to_string(), true, &query).await,
        _ => error_page(
            404,
            Some(signed.view()),
            "Nicht gefunden",
            "Diese Seite gibt es nicht.",
        ),
    }
}

async fn csrf_refused(app: &App, signed: &Signed) -> Response<Body> {
    let entry = NewEntry::new(
        Actor::staff(&signed.staff.name),
        AuditEvent::StaffDenied {
            attempted: crate::audit::Code::new("csrf"),
        },
    )
    .outcome(Outcome::denied("csrf_token"));
    crate::service::append_audit(&app.state.admin.audit, entry).await;
    warn!(staff = %signed.staff.name, "console request without a valid CSRF token refused");
    error_page(
        403,
        Some(signed.view()),
        "Abgelehnt",
        "Die Anfrage kam nicht aus diesem Formular. Bitte die Seite neu laden und erneut versuchen.",
    )
}

async fn post(
    app: Arc<App>,
    signed: Signed,
    segments: &[String],
    form: HashMap<String, String>,
) -> Response<Body> {
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    match seg.as_slice() {
        ["logout"] => logout(&app, &signed).await,
        ["c", id, action] => {
            let (id, action) = (id.to_string(), action.to_string());
            let view = signed.view();
            let state = app.state.clone();
            let staff = signed.staff.clone();
            let done = tokio::task::spawn_blocking(move || {
                let Some(p) = resolve(&state.admin.store, &id) else {
                    return Ok(Done::Refused(404, "Diese Person gibt es nicht (mehr)."));
                };
                actions::run(&state, &staff, p, &action, &form)
            })
            .await;
            match done {
                Ok(Ok(Done::Redirect(to))) => redirect(&to, &[]),
                Ok(Ok(Done::Download { file_name, bytes })) => Response::builder()
                    .header("content-type", "application/json")
                    .header(
                        "content-disposition",
                        format!("attachment; filename=\"{file_name}\""),
                    )
                    .body(full(bytes))
                    .expect("valid response"),
                Ok(Ok(Done::Refused(status, message))) => {
                    error_page(status, Some(view), "Nicht möglich", message)
                }
                Ok(Err(e)) => internal_error(e),
                Err(e) => internal_error(e),
            }
        }
        _ => error_page(
            404,
            Some(signed.view()),
            "Nicht gefunden",
            "Diese Aktion gibt es nicht.",
        ),
    }
}

// ---- sign-in and sign-out ----

fn login_page(app: &App, req: &Request<Incoming>, query: &str) -> Response<Body> {
    if signed_in(app, req).is_some() {
        return redirect("/", &[]);
    }
    let next = query_param(query, "next").unwrap_or_default();
    let token = login_token(cookie(req, LOGIN_COOKIE));
    login_form(app, &token, safe_next(&next), "", None, StatusCode::OK)
}

/// The sign-in form's token: the one the browser holds already (so two open sign-in pages
/// both work), else a new one.
fn login_token(held: Option<&str>) -> String {
    match held {
        Some(t)
            if t.len() == 43
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            t.to_string()
        }
        _ => super::auth::random_token(),
    }
}

fn login_form(
    app: &App,
    csrf: &str,
    next: &str,
    name: &str,
    error: Option<&'static str>,
    status: StatusCode,
) -> Response<Body> {
    let csrf = csrf.to_string();
    let page = pages::LoginPage {
        user: None,
        nav: "",
        csrf: csrf.clone(),
        next: next.to_string(),
        name: name.to_string(),
        error,
    };
    let mut resp = html(status, render(&page));
    let c = set_cookie(LOGIN_COOKIE, &csrf, "/login", app.state.https, Some(3600));
    if let Ok(v) = c.parse() {
        resp.headers_mut().insert("set-cookie", v);
    }
    resp
}

async fn login(app: Arc<App>, peer: IpAddr, req: Request<Incoming>) -> Response<Body> {
    let cookie_token = cookie(&req, LOGIN_COOKIE).unwrap_or_default().to_string();
    let form_token = login_token(Some(&cookie_token));
    let Some(form) = read_form(req).await else {
        return error_page(413, None, "Zu groß", "Die Eingabe ist zu groß.");
    };
    let field = |k: &str| form.get(k).cloned().unwrap_or_default();
    let (typed, password, next) = (field("name"), field("password"), field("next"));
    let next = safe_next(&next).to_string();
    if !tokens_match(&field("csrf"), &cookie_token) {
        warn!("console sign-in without a valid CSRF token refused");
        return login_form(
            &app,
            &form_token,
            &next,
            "",
            Some("Die Anmeldung ist abgelaufen. Bitte erneut versuchen."),
            StatusCode::FORBIDDEN,
        );
    }
    let typed = typed.trim().to_lowercase();
    let now = Timestamp::now();
    let name = StaffName::parse(&typed);
    let state = app.state.clone();
    if state.throttle.locked(&typed, peer, now) {
        if let Some(name) = &name {
            let entry = NewEntry::new(Actor::staff(name), AuditEvent::StaffLogin)
                .outcome(Outcome::denied("locked"));
            crate::service::append_audit(&state.admin.audit, entry).await;
        }
        warn!("console sign-in refused: too many wrong passwords");
        return login_form(
            &app,
            &form_token,
            &next,
            &typed,
            Some("Zu viele Fehlversuche: die Anmeldung ist vorübergehend gesperrt. Bitte später erneut versuchen."),
            StatusCode::TOO_MANY_REQUESTS,
        );
    }
    let checked = {
        let state = state.clone();
        let name = name.clone();
        tokio::task::spawn_blocking(move || {
            let account = match &name {
                Some(n) => accounts::get(&state.admin.store, n).ok().flatten(),
                None => None,
            };
            let ok = accounts::verify(account.as_ref(), &password);
            (account.map(|a| a.role), ok)
        })
        .await
    };
    let Ok((role, ok)) = checked else {
        return internal_error("password check failed");
    };
    match (name, role, ok) {
        (Some(name), Some(role), true) => {
            state.throttle.succeeded(&typed);
            let token = state.sessions.open(&name, role, now);
            crate::service::append_audit(
                &state.admin.audit,
                NewEntry::new(Actor::staff(&name), AuditEvent::StaffLogin),
            )
            .await;
            let https = state.https;
            let cookies = [
                set_cookie(session_cookie_name(https), &token, "/", https, None),
                set_cookie(LOGIN_COOKIE, "", "/login", https, Some(0)),
            ];
            redirect(&next, &cookies)
        }
        (name, role, _) => {
            let locked = state.throttle.failed(&typed, peer, now);
            // Only an existing account's name reaches the log; anything else typed there
            // may be a mistyped password or a person's name.
            let entry = match (&name, role) {
                (Some(n), Some(_)) => {
                    NewEntry::new(Actor::staff(n), AuditEvent::StaffLogin).outcome(Outcome::denied(
                        if locked { "locked" } else { "wrong_password" },
                    ))
                }
                _ => NewEntry::new(Actor::System, AuditEvent::StaffLogin)
                    .outcome(Outcome::denied("unknown_account")),
            };
            crate::service::append_audit(&state.admin.audit, entry).await;
            login_form(
                &app,
                &form_token,
                &next,
                &typed,
                Some("Benutzername oder Passwort ist falsch."),
                StatusCode::UNAUTHORIZED,
            )
        }
    }
}

async fn logout(app: &App, signed: &Signed) -> Response<Body> {
    app.state.sessions.close(&signed.token);
    crate::service::append_audit(
        &app.state.admin.audit,
        NewEntry::new(Actor::staff(&signed.staff.name), AuditEvent::StaffLogout),
    )
    .await;
    let https = app.state.https;
    redirect(
        "/login",
        &[set_cookie(
            session_cookie_name(https),
            "",
            "/",
            https,
            Some(0),
        )],
    )
}

// ---- pages ----

fn notice(query: &str) -> Option<String> {
    let text = match query_param(query, "done")?.as_str() {
        "sent" => "Gesendet.",
        "resumed" => "Der Assistent antwortet wieder.",
        "paused" => "Der Assistent ist für diese Person pausiert.",
        "forgotten" => "Die Daten wurden gelöscht.",
        _ => return None,
    };
    Some(text.to_string())
}

async fn inbox(app: Arc<App>, signed: Signed, fragment: bool, _query: &str) -> Response<Body> {
    let state = app.state.clone();
    let name = signed.staff.name.clone();
    let view = signed.view();
    let result = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        let list = pages::inbox(&state.admin.store, &state.inbox, &name)?;
        // Names are personal data: their reading is on record before they are shown.
        state.admin.audit.append(NewEntry::new(
            Actor::staff(&name),
            AuditEvent::CustomerListNames {
                count: list.shown() as u64,
            },
        ))?;
        Ok(if fragment {
            render(&pages::InboxFragment { list })
        } else {
            render(&pages::InboxPage {
                user: Some(view),
                nav: "inbox",
                list,
            })
        })
    })
    .await;
    match result {
        Ok(Ok(body)) => html(StatusCode::OK, body),
        Ok(Err(e)) => internal_error(e),
        Err(e) => internal_error(e),
    }
}

async fn conversation(
    app: Arc<App>,
    signed: Signed,
    id: String,
    fragment: bool,
    query: &str,
) -> Response<Body> {
    let state = app.state.clone();
    let (name, role) = (signed.staff.name.clone(), signed.staff.role);
    let view = signed.view();
    let csrf = signed.csrf.clone();
    let notice = notice(query);
    let result = tokio::task::spawn_blocking(move || -> anyhow::Result<Option<String>> {
        let store = &state.admin.store;
        let Some(p) = resolve(store, &id) else {
            return Ok(None);
        };
        let templates = actions::offered_templates(&state);
        let Some(c) =
            pages::conversation(store, &state.admin.audit, &p, templates, Timestamp::now())?
        else {
            return Ok(None);
        };
        let mut batch = store.batch();
        if let Some(upto) = c.last_inbound {
            pages::mark_read(store, &mut batch, &p, &name, upto);
        }
        // On record (with the read marker) before any of it is shown.
        state.admin.audit.append_with(
            batch,
            NewEntry::new(
                Actor::staff(&name),
                AuditEvent::ConversationOpened {
                    messages: c.messages_read,
                },
            )
            .about(&p),
        )?;
        Ok(Some(if fragment {
            render(&pages::HistoryFragment { c })
        } else {
            render(&pages::ConversationPage {
                user: Some(view),
                nav: "inbox",
                user_csrf: csrf,
                owner: role == Role::Owner,
                notice,
                c,
            })
        }))
    })
    .await;
    match result {
        Ok(Ok(Some(body))) => html(StatusCode::OK, body),
        Ok(Ok(None)) => error_page(
            404,
            Some(signed.view()),
            "Nicht gefunden",
            "Dieses Gespräch gibt es nicht (mehr).",
        ),
        Ok(Err(e)) => internal_error(e),
        Err(e) => internal_error(e),
    }
}

async fn trials(app: Arc<App>, signed: Signed) -> Response<Body> {
    let state = app.state.clone();
    let name = signed.staff.name.clone();
    let view = signed.view();
    let result = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        let trials = pages::trials(&state.admin.store, Timestamp::now())?;
        // Names are personal data: their reading is on record before they are shown.
        state.admin.audit.append(NewEntry::new(
            Actor::staff(&name),
            AuditEvent::CustomerListNames {
                count: trials.len() as u64,
            },
        ))?;
        Ok(render(&pages::TrialsPage {
            user: Some(view),
            nav: "trials",
            trials,
        }))
    })
    .await;
    match result {
        Ok(Ok(body)) => html(StatusCode::OK, body),
        Ok(Err(e)) => internal_error(e),
        Err(e) => internal_error(e),
    }
}

async fn dashboard(app: Arc<App>, signed: Signed, query: &str) -> Response<Body> {
    let state = app.state.clone();
    let name = signed.staff.name.clone();
    let view = signed.view();
    let weeks = super::dashboard::weeks_param(query);
    let result = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        let rates = state.admin.config().whatsapp.pricing.rates();
        let d = super::dashboard::read(
            &state.admin.store,
            &state.admin.audit,
            &rates,
            weeks,
            Timestamp::now(),
        )?;
        // Counters only, no personal data; audited like `frontdesk stats`.
        state
            .admin
            .audit
            .append(NewEntry::new(Actor::staff(&name), AuditEvent::StatsRead))?;
        Ok(render(&super::dashboard::DashboardPage {
            user: Some(view),
            nav: "dashboard",
            d,
        }))
    })
    .await;
    match result {
        Ok(Ok(body)) => html(StatusCode::OK, body),
        Ok(Err(e)) => internal_error(e),
        Err(e) => internal_error(e),
    }
}

// ---- live updates ----

/// Builds the inbox index at start and files every change as it is written, so that an inbox
/// page finds it ready (see [`super::index`]).
async fn keep_inbox_index(app: Arc<App>) {
    let mut feed = app.state.admin.store.activity().subscribe();
    let mut stop = app.stop.clone();
    let mut build = true;
    loop {
        let state = app.state.clone();
        let done = tokio::task::spawn_blocking(move || {
            if build {
                state.inbox.select(&state.admin.store, 0, 0).map(|_| ())
            } else {
                state.inbox.catch_up(&state.admin.store)
            }
        })
        .await;
        if let Ok(Err(e)) = done {
            warn!(error = %e, "inbox index not kept current");
        }
        build = false;
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            got = feed.recv() => match got {
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
        }
    }
}

/// The body of a live-update stream: chunks handed over by the task that watches the store.
struct EventStream(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for EventStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

/// `GET /events`: one `change` event per conversation that changed, its data the short
/// pseudonym (`*` when some were missed); a comment every [`KEEPALIVE`].
fn events(app: &App) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let mut feed = app.state.admin.store.activity().subscribe();
    let mut stop = app.stop.clone();
    tokio::spawn(async move {
        if tx
            .send(Bytes::from_static(b"retry: 2000\n\n"))
            .await
            .is_err()
        {
            return;
        }
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.tick().await;
        loop {
            let chunk = tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                _ = keepalive.tick() => Bytes::from_static(b": alive\n\n"),
                got = feed.recv() => match got {
                    Ok(p) => Bytes::from(format!("event: change\ndata: {}\n\n", p.short())),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        Bytes::from_static(b"event: change\ndata: *\n\n")
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
            };
            if tx.send(chunk).await.is_err() {
                break;
            }
        }
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-store")
        .body(EventStream(rx).boxed())
        .expect("valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_console_paths_follow_a_sign_in() {
        assert_eq!(safe_next("/c/c-0123456789ab"), "/c/c-0123456789ab");
        assert_eq!(safe_next("/"), "/");
        for bad in [
            "//evil.example",
            "https://evil.example",
            "/c/x?y",
            "",
            "javascript:x",
        ] {
            assert_eq!(safe_next(bad), "/", "{bad}");
        }
    }

    #[test]
    fn cookies_are_strict_and_secure_over_https() {
        let c = set_cookie("__Host-fd_session", "t", "/", true, None);
        assert_eq!(
            c,
            "__Host-fd_session=t; Path=/; HttpOnly; SameSite=Strict; Secure"
        );
        let c = set_cookie("fd_login", "", "/login", false, Some(0));
        assert_eq!(
            c,
            "fd_login=; Path=/login; HttpOnly; SameSite=Strict; Max-Age=0"
        );
    }

    #[test]
    fn a_short_pseudonym_finds_its_customer() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Store::open(dir.path(), crate::store::crypto::StoreIdentity::generate()).unwrap();
        let now = Timestamp::now();
        let (c, ()) = store
            .update_customer("+491511234567", now, |_, _, _| Ok(()))
            .unwrap();
        let p = c.pseudonym;
        assert_eq!(resolve(&store, &p.short()), Some(p));
        assert_eq!(resolve(&store, &p.to_hex()), Some(p));
        assert_eq!(resolve(&store, "c-000000000000"), None);
        assert_eq!(resolve(&store, "c-XYZ"), None);
        assert_eq!(resolve(&store, "../etc"), None);
    }
}
