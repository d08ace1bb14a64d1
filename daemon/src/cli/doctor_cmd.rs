//! `frontdesk doctor`: checks an installation end to end and says how to fix what is wrong.
//! One line per check (✓ passed, ✗ failed, – not configured), each failure with a hint; the exit
//! code is 1 when anything failed. Secrets are read to be tried, never printed.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use clap::Args;

use super::exit;
use crate::admin::api::{StatusReply, STATUS};
use crate::admin::client::{AdminClient, ClientError};
use crate::config::{Config, LlmBackend};
use crate::secrets::{names, Credentials, Secret};

/// Timeout of every network check.
const NET_TIMEOUT: Duration = Duration::from_secs(10);

/// `frontdesk doctor`.
#[derive(Args, Debug, Default, Clone)]
pub struct DoctorArgs {
    /// Do not load the model (loading takes seconds and much memory).
    #[arg(long)]
    pub skip_model: bool,
    /// Also connect to the SMTP server of `[alerts]` and log in (sends no mail).
    #[arg(long)]
    pub smtp: bool,
}

/// The result of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    Pass,
    Fail,
    /// Works now, but needs the admin's attention soon (does not fail the run).
    Warn,
    /// Not configured, so not checked.
    Skipped,
}

impl Mark {
    fn symbol(self) -> &'static str {
        match self {
            Mark::Pass => "✓",
            Mark::Fail => "✗",
            Mark::Warn => "!",
            Mark::Skipped => "–",
        }
    }
}

/// One line of the report.
#[derive(Clone, Debug)]
pub struct Check {
    /// Stable name (`config`, `credentials`, `webhook`, …).
    pub name: &'static str,
    pub mark: Mark,
    pub detail: String,
    pub hint: Option<String>,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:<12} {}",
            self.mark.symbol(),
            self.name,
            self.detail
        )?;
        if let Some(h) = &self.hint {
            write!(f, "\n    → {h}")?;
        }
        Ok(())
    }
}

pub(super) fn pass(name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        name,
        mark: Mark::Pass,
        detail: detail.into(),
        hint: None,
    }
}

pub(super) fn fail(
    name: &'static str,
    detail: impl Into<String>,
    hint: impl Into<String>,
) -> Check {
    Check {
        name,
        mark: Mark::Fail,
        detail: detail.into(),
        hint: Some(hint.into()),
    }
}

fn warn(name: &'static str, detail: impl Into<String>, hint: impl Into<String>) -> Check {
    Check {
        name,
        mark: Mark::Warn,
        detail: detail.into(),
        hint: Some(hint.into()),
    }
}

fn skipped(name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        name,
        mark: Mark::Skipped,
        detail: detail.into(),
        hint: None,
    }
}

/// All checks of one run.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    #[cfg(test)]
    fn get(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    pub fn exit_code(&self) -> u8 {
        if self.checks.iter().any(|c| c.mark == Mark::Fail) {
            exit::FAILURE
        } else {
            exit::OK
        }
    }
}

/// Runs every check against the configuration at `cli_config_path` and prints the report.
pub fn run(cli_config_path: &Path, args: &DoctorArgs) -> anyhow::Result<u8> {
    let report = diagnose(cli_config_path, args, None, &mut |c| println!("{c}"));
    Ok(report.exit_code())
}

/// The checks; `credentials` overrides discovery (tests). `each` sees every check as soon as it
/// is done, so slow checks do not hold back the ones before them.
pub fn diagnose(
    path: &Path,
    args: &DoctorArgs,
    credentials: Option<Credentials>,
    each: &mut dyn FnMut(&Check),
) -> Report {
    let mut report = Report::default();
    let mut add = |c: Check| {
        each(&c);
        report.checks.push(c);
    };
    let cfg = match Config::load(path) {
        Ok(cfg) => {
            add(pass("config", format!("{} is valid", path.display())));
            cfg
        }
        Err(e) => {
            add(fail(
                "config",
                e.to_string(),
                format!(
                    "fix {} (see the commented example shipped with frontdesk)",
                    path.display()
                ),
            ));
            return report;
        }
    };
    let creds = credentials
        .unwrap_or_else(|| Credentials::discover(cfg.service.credentials_dir.as_deref()));
    let secrets = Secrets::read(&cfg, &creds);
    add(secrets.check());
    add(check_identity(&secrets));
    add(check_state_dir(&cfg.service.state_dir));
    add(check_model(&cfg, args));
    add(check_prompts(&cfg));
    add(check_webhook(&cfg, &secrets));
    add(check_metrics(cfg.metrics.listen));
    add(check_api_version(&cfg, jiff::Zoned::now().date()));
    add(check_graph(&cfg, &secrets));
    add(check_magicline(&cfg, &secrets));
    add(check_tunnel(&cfg));
    add(check_alerts(&cfg, &creds, args.smtp));
    add(check_console(&cfg));
    report
}

/// The console's address and, over HTTPS, its certificate's fingerprint (staff compare it with
/// what the browser shows on the first visit).
fn check_console(cfg: &Config) -> Check {
    const NAME: &str = "console";
    if !cfg.console.enabled {
        return skipped(NAME, "disabled ([console] enabled = false)");
    }
    let url = cfg.console.url();
    if !cfg.console.https() {
        return pass(
            NAME,
            format!("{url} (plain HTTP, reachable from this machine only)"),
        );
    }
    let (cert, _) = crate::console::tls::files(cfg);
    let generated = cfg.console.tls_certificate.is_none();
    match crate::console::tls::fingerprint(&cert) {
        Ok(fp) if generated => match crate::console::tls::uncovered(&cfg.console, &cert) {
            Ok(missing) if !missing.is_empty() => warn(
                NAME,
                format!(
                    "{url}: the generated certificate does not name {}; the daemon makes a new one at its next start (SHA-256 {fp} then changes)",
                    missing.join(", ")
                ),
                "restart frontdesk, or run frontdesk console certificate --renew, and run doctor again for the new fingerprint",
            ),
            _ => pass(NAME, format!("{url} certificate SHA-256 {fp}")),
        },
        Ok(fp) => pass(NAME, format!("{url} certificate SHA-256 {fp}")),
        Err(_) if generated && !cert.exists() => warn(
            NAME,
            format!("{url}: no certificate yet (the daemon generates one at its start)"),
            "run frontdesk console certificate now to see its fingerprint",
        ),
        Err(e) => fail(
            NAME,
            format!("{url}: certificate {}: {e}", cert.display()),
            "fix console.tls_certificate / console.tls_key, or remove both to use a generated certificate",
        ),
    }
}

/// What the credentials look like: each name with its value, or why there is none.
struct Secrets {
    rows: Vec<(String, Need, Result<Option<Secret>, String>)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    Required,
    Optional,
}

impl Secrets {
    fn read(cfg: &Config, creds: &Credentials) -> Secrets {
        let whatsapp = !cfg.whatsapp.phone_number_id.is_empty();
        let tunnel = cfg.tunnel.as_ref().map(|t| t.credential.clone());
        let mut names_used: Vec<String> = names::ALL.iter().map(|n| n.to_string()).collect();
        if let Some(t) = &tunnel {
            if !names_used.contains(t) {
                names_used.push(t.clone());
            }
        }
        let rows = names_used
            .into_iter()
            .map(|name| {
                let required = name == names::STORE_IDENTITY
                    || (whatsapp && name.starts_with("whatsapp-"))
                    || (name == names::MAGICLINE_API_KEY && !cfg.magicline.base_url.is_empty())
                    || (name == names::MAGICLINE_WEBHOOK_KEY
                        && !cfg.magicline.base_url.is_empty()
                        && cfg.magicline.events == crate::config::MagicLineEvents::Webhook)
                    || tunnel.as_deref() == Some(name.as_str());
                let need = if required {
                    Need::Required
                } else {
                    Need::Optional
                };
                let value = creds.get(&name).map_err(|e| e.to_string());
                (name, need, value)
            })
            .collect();
        Secrets { rows }
    }

    fn get(&self, name: &str) -> Option<&Secret> {
        self.rows
            .iter()
            .find(|(n, _, _)| n == name)
            .and_then(|(_, _, v)| v.as_ref().ok())
            .and_then(Option::as_ref)
    }

    fn check(&self) -> Check {
        let mut problems = Vec::new();
        let mut present = Vec::new();
        for (name, need, value) in &self.rows {
            match value {
                Ok(Some(_)) => present.push(name.as_str()),
                Ok(None) if *need == Need::Required => problems.push(format!("{name} missing")),
                Ok(None) => {}
                // Unreadable or empty: wrong even when optional.
                Err(e) => problems.push(e.clone()),
            }
        }
        if problems.is_empty() {
            pass(
                "credentials",
                format!("present and readable: {}", present.join(", ")),
            )
        } else {
            fail(
                "credentials",
                problems.join("; "),
                "provide each as a systemd credential (systemd-creds encrypt --name=NAME, \
                 LoadCredentialEncrypted= in frontdesk.service), readable by the caller",
            )
        }
    }
}

fn check_identity(secrets: &Secrets) -> Check {
    const NAME: &str = "identity";
    let Some(s) = secrets.get(names::STORE_IDENTITY) else {
        return fail(
            NAME,
            "store-identity credential not available",
            "create one with `frontdesk store init` and install it as the credential store-identity",
        );
    };
    let parsed = s
        .expose_str()
        .map_err(|e| e.to_string())
        .and_then(|t| crate::store::crypto::StoreIdentity::parse(t).map_err(|e| e.to_string()));
    match parsed {
        Ok(_) => pass(NAME, "store identity parses"),
        // The error names the problem, never the key.
        Err(e) => fail(
            NAME,
            format!("store identity does not parse: {e}"),
            "the credential must hold one AGE-SECRET-KEY-1… line (as written by `frontdesk store init`)",
        ),
    }
}

fn check_state_dir(dir: &Path) -> Check {
    use std::os::unix::fs::MetadataExt;
    const NAME: &str = "state dir";
    let md = match std::fs::metadata(dir) {
        Ok(md) if md.is_dir() => md,
        Ok(_) => {
            return fail(
                NAME,
                format!("{} is not a directory", dir.display()),
                "set service.state_dir to a directory",
            )
        }
        Err(e) => {
            return fail(
                NAME,
                format!("{}: {e}", dir.display()),
                format!("mkdir -m 0700 {}", dir.display()),
            )
        }
    };
    let me = crate::sys::euid();
    let mode = md.mode() & 0o777;
    // root runs doctor on behalf of the service user, whose directory it is.
    if md.uid() != me && me != 0 {
        return fail(
            NAME,
            format!(
                "{} is owned by uid {}, not by uid {me}",
                dir.display(),
                md.uid()
            ),
            format!(
                "chown the directory to the service user: chown USER {}",
                dir.display()
            ),
        );
    }
    if mode & 0o077 != 0 {
        return fail(
            NAME,
            format!("{} has mode {mode:04o}: others can read it", dir.display()),
            format!("chmod 0700 {}", dir.display()),
        );
    }
    pass(
        NAME,
        format!("{} (mode {mode:04o}, uid {})", dir.display(), md.uid()),
    )
}

fn check_model(cfg: &Config, args: &DoctorArgs) -> Check {
    const NAME: &str = "model";
    match cfg.llm.backend {
        LlmBackend::Openai => {
            return skipped(
                NAME,
                format!(
                    "OpenAI-compatible server at {} (not checked)",
                    cfg.llm.openai_base_url
                ),
            )
        }
        LlmBackend::Llama => {}
    }
    let path = &cfg.llm.model_path;
    if !path.is_file() {
        return fail(
            NAME,
            format!("model file {} not found", path.display()),
            "download the GGUF model there or point llm.model_path at it",
        );
    }
    if args.skip_model {
        return skipped(NAME, format!("{} exists (loading skipped)", path.display()));
    }
    match crate::llm::from_config(&cfg.llm) {
        Ok(m) => pass(NAME, format!("loads: {}", m.describe())),
        Err(e) => fail(
            NAME,
            e.to_string(),
            "check that the file is a complete GGUF model and that llm.context_size fits the memory",
        ),
    }
}

fn check_prompts(cfg: &Config) -> Check {
    match crate::conversation::prompts::Prompts::load(&cfg.service, &cfg.studio) {
        Ok(_) => pass(
            "prompts",
            format!(
                "load from {} (overrides {})",
                cfg.service.prompts_dir.display(),
                cfg.service.prompts_override_dir.display()
            ),
        ),
        Err(e) => fail(
            "prompts",
            e.to_string(),
            "fix the named file (or remove the override to fall back to the shipped prompt)",
        ),
    }
}

/// A listen address as something to connect to (`0.0.0.0` → loopback).
fn local(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v) if v.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(v) if v.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(NET_TIMEOUT))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(concat!("frontdesk-doctor/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

fn check_webhook(cfg: &Config, secrets: &Secrets) -> Check {
    const NAME: &str = "webhook";
    if cfg.whatsapp.phone_number_id.is_empty() {
        return skipped(NAME, "WhatsApp not configured (whatsapp.phone_number_id)");
    }
    let Some(token) = secrets.get(names::WHATSAPP_VERIFY_TOKEN) else {
        return fail(
            NAME,
            "cannot check without the whatsapp-verify-token credential",
            "install the credential whatsapp-verify-token",
        );
    };
    let Ok(token) = token.expose_str() else {
        return fail(
            NAME,
            "whatsapp-verify-token is not text",
            "store the verify token as plain text",
        );
    };
    let challenge = format!("{:016x}", rand::random::<u64>());
    let addr = local(cfg.webhook.listen);
    let res = agent()
        .get(format!("http://{addr}/webhook"))
        .query("hub.mode", "subscribe")
        .query("hub.verify_token", token)
        .query("hub.challenge", &challenge)
        .call();
    match res {
        Ok(mut r) if r.status() == 200 => {
            let body = r.body_mut().read_to_string().unwrap_or_default();
            if body.trim() == challenge {
                pass(NAME, format!("answers the verification on {addr}"))
            } else {
                fail(
                    NAME,
                    format!("{addr} answered 200 but without the challenge"),
                    "something else listens on webhook.listen; stop it or change the address",
                )
            }
        }
        Ok(r) if r.status() == 403 => fail(
            NAME,
            format!("{addr} refuses the verify token (HTTP 403)"),
            "restart frontdesk after changing the whatsapp-verify-token credential",
        ),
        Ok(r) => fail(
            NAME,
            format!("{addr} answered HTTP {}", r.status().as_u16()),
            "check `journalctl -u frontdesk`",
        ),
        Err(e) => fail(
            NAME,
            format!("nothing answers on {addr} ({})", net_error(&e)),
            "systemctl start frontdesk",
        ),
    }
}

fn check_metrics(listen: SocketAddr) -> Check {
    const NAME: &str = "health";
    let addr = local(listen);
    match agent().get(format!("http://{addr}/healthz")).call() {
        Ok(r) if r.status() == 200 => pass(NAME, format!("/healthz on {addr} answers 200")),
        Ok(r) => fail(
            NAME,
            format!("/healthz on {addr} answered HTTP {}", r.status().as_u16()),
            "the pipeline is stalled; see `journalctl -u frontdesk`",
        ),
        Err(e) => fail(
            NAME,
            format!("nothing answers on {addr} ({})", net_error(&e)),
            "systemctl start frontdesk",
        ),
    }
}

/// A transport error without anything a server sent back.
fn net_error(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Io(io) => io.kind().to_string(),
        ureq::Error::Timeout(_) => "timed out".into(),
        ureq::Error::HostNotFound => "host not found".into(),
        ureq::Error::ConnectionFailed => "connection failed".into(),
        other => other.to_string(),
    }
}

/// The configured Graph API version against Meta's retirement dates: a warning from 60 days
/// before, a failure once it is retired.
fn check_api_version(cfg: &Config, today: jiff::civil::Date) -> Check {
    use crate::whatsapp::versions::{self, VersionStatus};
    const NAME: &str = "api version";
    let v = &cfg.whatsapp.api_version;
    let hint = format!(
        "set whatsapp.api_version = \"{}\" in the configuration, then systemctl restart frontdesk",
        versions::DEFAULT_VERSION
    );
    let detail = versions::warning(v, today).unwrap_or_default();
    match versions::status(v, today) {
        VersionStatus::Supported { expires: Some(d) } => {
            pass(NAME, format!("{v}, served until {d}"))
        }
        VersionStatus::Supported { expires: None } => {
            pass(NAME, format!("{v}, no retirement date announced"))
        }
        VersionStatus::ExpiresSoon { .. } | VersionStatus::Unknown => Check {
            name: NAME,
            mark: Mark::Warn,
            detail,
            hint: Some(hint),
        },
        VersionStatus::Expired { .. } => fail(NAME, detail, hint),
    }
}

fn check_graph(cfg: &Config, secrets: &Secrets) -> Check {
    const NAME: &str = "graph api";
    let w = &cfg.whatsapp;
    if w.phone_number_id.is_empty() {
        return skipped(NAME, "WhatsApp not configured (whatsapp.phone_number_id)");
    }
    let Some(token) = secrets
        .get(names::WHATSAPP_TOKEN)
        .and_then(|t| t.expose_str().ok())
    else {
        return fail(
            NAME,
            "cannot check without the whatsapp-token credential",
            "install the credential whatsapp-token (a system user's permanent token)",
        );
    };
    let base = w.graph_base.trim_end_matches('/');
    let url = format!("{base}/{}/{}", w.api_version, w.phone_number_id);
    let res = agent()
        .get(&url)
        .query("fields", "display_phone_number")
        .header("authorization", &format!("Bearer {token}"))
        .call();
    let mut r = match res {
        Ok(r) => r,
        Err(e) => {
            return fail(
                NAME,
                format!("cannot reach {base} ({})", net_error(&e)),
                "check the network, DNS and whatsapp.graph_base",
            )
        }
    };
    let status = r.status().as_u16();
    let body: serde_json::Value = r.body_mut().read_json().unwrap_or_default();
    let code = body["error"]["code"].as_i64();
    match (status, code) {
        (200, _) => pass(
            NAME,
            format!(
                "token valid; phone number {} ({})",
                w.phone_number_id,
                body["display_phone_number"].as_str().unwrap_or("?")
            ),
        ),
        (401, _) | (_, Some(190)) => fail(
            NAME,
            "token invalid or expired",
            "create a new permanent token for the system user in Meta Business Settings and \
             replace the credential whatsapp-token",
        ),
        _ => fail(
            NAME,
            format!(
                "Graph API answered HTTP {status}{}",
                code.map(|c| format!(" (error code {c})"))
                    .unwrap_or_default()
            ),
            "check whatsapp.phone_number_id and whatsapp.api_version, and the token's permissions \
             (whatsapp_business_messaging)",
        ),
    }
}

fn check_magicline(cfg: &Config, secrets: &Secrets) -> Check {
    use crate::magicline::client::Client;
    const NAME: &str = "magicline";
    let base = &cfg.magicline.base_url;
    if base.is_empty() {
        return skipped(NAME, "booking not configured (magicline.base_url)");
    }
    let Some(key) = secrets
        .get(names::MAGICLINE_API_KEY)
        .and_then(|k| k.expose_str().ok())
    else {
        return fail(
            NAME,
            "cannot check without the magicline-api-key credential",
            "install the credential magicline-api-key",
        );
    };
    let client = Client::new(base, key.trim().to_string(), NET_TIMEOUT);
    super::doctor_magicline::check(cfg, &client)
}

fn check_tunnel(cfg: &Config) -> Check {
    const NAME: &str = "tunnel";
    let Some(t) = &cfg.tunnel else {
        return skipped(NAME, "no [tunnel] configured");
    };
    let answer = AdminClient::new(&cfg.service.admin_socket)
        .get(STATUS)
        .and_then(|a| a.json::<StatusReply>());
    let status = match answer {
        Ok(s) => s,
        Err(ClientError::Unreachable { .. }) => {
            return fail(
                NAME,
                "the daemon is not running",
                "systemctl start frontdesk",
            )
        }
        Err(e) => {
            return fail(
                NAME,
                format!("cannot ask the daemon: {e}"),
                "run doctor as root or as a member of the admin group",
            )
        }
    };
    let state = status
        .components
        .get("tunnel")
        .and_then(|v| v.as_str())
        .unwrap_or("unknown")
        .to_string();
    if state.starts_with("connected") {
        pass(NAME, format!("to {}: {state}", t.relay))
    } else {
        fail(
            NAME,
            format!("to {}: {state}", t.relay),
            "check tunnel.relay, tunnel.server_name, the tunnel credential and the relay's log",
        )
    }
}

/// `[alerts]`: where staff alerts go, the alert template's category, and (with `--smtp`) a
/// login at the SMTP server.
fn check_alerts(cfg: &Config, creds: &Credentials, try_smtp: bool) -> Check {
    const NAME: &str = "staff alerts";
    let a = &cfg.alerts;
    if !a.by_whatsapp() && !a.by_email() {
        return skipped(NAME, "no staff alert recipients ([alerts])");
    }
    let mut ways = Vec::new();
    if a.by_whatsapp() {
        let template = a.whatsapp_template.as_deref().unwrap_or_default();
        ways.push(format!(
            "WhatsApp template {template} to {} number(s)",
            a.whatsapp_recipients.len()
        ));
        if !cfg.whatsapp.template_categories.contains_key(template) {
            return warn(
                NAME,
                format!("template {template} has no category"),
                format!(
                    "add `{template} = \"utility\"` under [whatsapp.template_categories] (as approved in WhatsApp Manager)"
                ),
            );
        }
    }
    if a.by_email() {
        let mailer = match crate::alerts::mail::Mailer::new(a, creds) {
            Ok(m) => m,
            Err(e) => {
                return fail(
                    NAME,
                    e.to_string(),
                    "check [alerts] and the smtp-username / smtp-password credentials",
                )
            }
        };
        let server = format!("{}:{}", a.smtp_host, a.smtp_port);
        if try_smtp {
            if let Err(e) = mailer.check() {
                return fail(
                    NAME,
                    format!("SMTP server {server}: {e}"),
                    "check alerts.smtp_host, smtp_port, smtp_security and the SMTP credentials",
                );
            }
            ways.push(format!("e-mail via {server} (login ok)"));
        } else {
            ways.push(format!(
                "e-mail via {server} (not tried; `frontdesk doctor --smtp` connects)"
            ));
        }
    }
    if a.console_url.is_empty() {
        return warn(
            NAME,
            ways.join("; "),
            "set alerts.console_url so each alert links the conversation",
        );
    }
    pass(NAME, ways.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::magicline::SimConfig;
    use crate::sandbox::whatsapp::{
        SIM_DISPLAY_PHONE_NUMBER, SIM_GRAPH_VERSION, SIM_PHONE_NUMBER_ID, SIM_TOKEN,
    };

    /// A free loopback port nobody listens on (bound, then released).
    fn free_addr() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    struct Setup {
        dir: tempfile::TempDir,
        config: std::path::PathBuf,
        creds: std::path::PathBuf,
    }

    fn setup(graph_base: &str, magicline_base: &str, magicline_key: &str) -> Setup {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
        let creds = dir.path().join("creds");
        std::fs::create_dir(&creds).unwrap();
        let identity = crate::store::crypto::StoreIdentity::generate();
        std::fs::write(
            creds.join(names::STORE_IDENTITY),
            format!("{}\n", &*identity.to_secret_line()),
        )
        .unwrap();
        std::fs::write(creds.join(names::WHATSAPP_TOKEN), SIM_TOKEN).unwrap();
        std::fs::write(creds.join(names::WHATSAPP_APP_SECRET), "s3cr3t-app-value").unwrap();
        std::fs::write(creds.join(names::WHATSAPP_VERIFY_TOKEN), "verify me&=?").unwrap();
        std::fs::write(creds.join(names::MAGICLINE_API_KEY), magicline_key).unwrap();
        std::fs::write(creds.join(names::MAGICLINE_WEBHOOK_KEY), "ml-webhook-key").unwrap();
        let prompts = concat!(env!("CARGO_MANIFEST_DIR"), "/../prompts");
        let text = format!(
            r#"
[service]
state_dir = "{state}"
admin_socket = "{socket}"
credentials_dir = "{creds}"
prompts_dir = "{prompts}"
prompts_override_dir = "{overrides}"

[webhook]
listen = "{webhook}"

[metrics]
listen = "{metrics}"

[whatsapp]
graph_base = "{graph_base}"
api_version = "{SIM_GRAPH_VERSION}"
phone_number_id = "{SIM_PHONE_NUMBER_ID}"

[magicline]
base_url = "{magicline_base}"

[llm]
backend = "llama"
model_path = "{model}"
"#,
            state = state.display(),
            socket = dir.path().join("admin.sock").display(),
            creds = creds.display(),
            overrides = dir.path().join("no-overrides").display(),
            webhook = free_addr(),
            metrics = free_addr(),
            model = dir.path().join("model.gguf").display(),
        );
        std::fs::write(dir.path().join("model.gguf"), b"GGUF").unwrap();
        let config = dir.path().join("frontdesk.toml");
        std::fs::write(&config, text).unwrap();
        Setup { dir, config, creds }
    }

    fn diagnose_quietly(s: &Setup) -> (Report, String) {
        let mut printed = String::new();
        let report = diagnose(
            &s.config,
            &DoctorArgs {
                skip_model: true,
                ..DoctorArgs::default()
            },
            Some(Credentials::in_dir(&s.creds)),
            &mut |c| printed.push_str(&format!("{c}\n")),
        );
        (report, printed)
    }

    #[test]
    fn staff_alerts_are_checked_and_smtp_only_on_request() {
        let s = setup("http://127.0.0.1:9", "", "key");
        let (report, _) = diagnose_quietly(&s);
        assert_eq!(report.get("staff alerts").unwrap().mark, Mark::Skipped);
        let closed = free_addr();
        let mut text = std::fs::read_to_string(&s.config).unwrap();
        text = text.replace(
            "[whatsapp]\n",
            "[whatsapp]\ntemplate_categories = { staff_alert = \"utility\" }\n",
        );
        text.push_str(&format!(
            "\n[alerts]\nconsole_url = \"https://desk.example\"\nwhatsapp_recipients = [\"4915100000001\"]\n\
             whatsapp_template = \"staff_alert\"\nemail_to = [\"desk@studio.example\"]\n\
             email_from = \"fd@studio.example\"\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {}\n\
             smtp_security = \"none\"\nsmtp_timeout_secs = 5\n",
            closed.port()
        ));
        std::fs::write(&s.config, text).unwrap();
        let (report, printed) = diagnose_quietly(&s);
        let c = report.get("staff alerts").unwrap();
        assert_eq!(c.mark, Mark::Pass, "{printed}");
        assert!(c.detail.contains("not tried"), "{c}");
        let mut printed = String::new();
        let report = diagnose(
            &s.config,
            &DoctorArgs {
                skip_model: true,
                smtp: true,
            },
            Some(Credentials::in_dir(&s.creds)),
            &mut |c| printed.push_str(&format!("{c}\n")),
        );
        let c = report.get("staff alerts").unwrap();
        assert_eq!(c.mark, Mark::Fail, "nothing listens there: {printed}");
        assert!(c.detail.contains("SMTP connection failed"), "{c}");
    }

    #[test]
    fn healthy_services_pass_and_a_stopped_daemon_fails() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let graph = rt.block_on(crate::sandbox::whatsapp::start());
        let ml = rt.block_on(crate::sandbox::magicline::start(SimConfig::default()));
        let s = setup(&graph.base_url(), &ml.base_url(), &ml.api_key());
        let (report, printed) = diagnose_quietly(&s);

        for name in [
            "config",
            "credentials",
            "identity",
            "state dir",
            "prompts",
            "graph api",
            "magicline",
        ] {
            let c = report.get(name).unwrap();
            assert_eq!(c.mark, Mark::Pass, "{name}: {printed}");
        }
        assert!(report
            .get("graph api")
            .unwrap()
            .detail
            .contains(SIM_DISPLAY_PHONE_NUMBER));
        assert_eq!(report.get("model").unwrap().mark, Mark::Skipped);
        assert_eq!(report.get("tunnel").unwrap().mark, Mark::Skipped);
        let webhook = report.get("webhook").unwrap();
        assert_eq!(webhook.mark, Mark::Fail, "{printed}");
        assert_eq!(webhook.hint.as_deref(), Some("systemctl start frontdesk"));
        assert_eq!(report.get("health").unwrap().mark, Mark::Fail);
        assert_eq!(report.exit_code(), exit::FAILURE);
        // Nothing secret is printed.
        for secret in [
            SIM_TOKEN,
            "verify me",
            "s3cr3t-app-value",
            &ml.api_key(),
            "AGE-SECRET-KEY",
        ] {
            assert!(!printed.contains(secret), "{secret} printed: {printed}");
        }
        assert!(
            printed.lines().any(|l| l.starts_with("✓ config")),
            "{printed}"
        );
        assert!(
            printed.lines().any(|l| l.starts_with("✗ webhook")),
            "{printed}"
        );
        drop(s.dir);
    }

    #[test]
    fn wrong_tokens_and_unreachable_services_fail() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let graph = rt.block_on(crate::sandbox::whatsapp::GraphSim::start_with_token(
            "another-token",
        ));
        let ml = rt.block_on(crate::sandbox::magicline::start(SimConfig::default()));
        let s = setup(&graph.base_url(), &ml.base_url(), "wrong-key");
        let (report, printed) = diagnose_quietly(&s);
        let g = report.get("graph api").unwrap();
        assert_eq!(g.mark, Mark::Fail, "{printed}");
        assert_eq!(g.detail, "token invalid or expired");
        let m = report.get("magicline").unwrap();
        assert_eq!(m.mark, Mark::Fail, "{printed}");
        assert_eq!(m.detail, "API key rejected");
        assert!(!printed.contains("wrong-key") && !printed.contains(SIM_TOKEN));

        // Nothing listening at the Graph base: a network failure, not a token problem.
        let gone = format!("http://{}", free_addr());
        let s = setup(&gone, &ml.base_url(), &ml.api_key());
        let (report, printed) = diagnose_quietly(&s);
        let g = report.get("graph api").unwrap();
        assert_eq!(g.mark, Mark::Fail, "{printed}");
        assert!(g.detail.starts_with("cannot reach"), "{printed}");
    }

    #[test]
    fn missing_identity_and_open_state_dir_fail_with_hints() {
        use std::os::unix::fs::PermissionsExt;
        let s = setup("http://127.0.0.1:9", "", "");
        std::fs::remove_file(s.creds.join(names::STORE_IDENTITY)).unwrap();
        std::fs::remove_file(s.creds.join(names::MAGICLINE_API_KEY)).unwrap();
        let state = s.dir.path().join("state");
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (report, printed) = diagnose_quietly(&s);
        let c = report.get("credentials").unwrap();
        assert_eq!(c.mark, Mark::Fail, "{printed}");
        assert!(c.detail.contains("store-identity missing"), "{printed}");
        // MagicLine is not configured: its key is optional.
        assert!(!c.detail.contains("magicline"), "{printed}");
        assert_eq!(report.get("magicline").unwrap().mark, Mark::Skipped);
        assert_eq!(report.get("identity").unwrap().mark, Mark::Fail);
        let d = report.get("state dir").unwrap();
        assert_eq!(d.mark, Mark::Fail);
        assert_eq!(
            d.hint.as_deref(),
            Some(format!("chmod 0700 {}", state.display()).as_str())
        );

        // A broken config stops after the first line.
        std::fs::write(&s.config, "[webhook]\nbogus = 1\n").unwrap();
        let (report, _) = diagnose_quietly(&s);
        assert_eq!(report.checks.len(), 1);
        assert_eq!(report.checks[0].mark, Mark::Fail);
    }

    #[test]
    fn api_version_warns_before_retirement_and_fails_after() {
        let mut cfg = Config::default();
        let today = jiff::civil::date(2026, 12, 1);
        let c = check_api_version(&cfg, today);
        assert_eq!(c.mark, Mark::Pass, "{c}");
        cfg.whatsapp.api_version = "v21.0".into();
        let c = check_api_version(&cfg, today);
        assert_eq!(c.mark, Mark::Warn, "{c}");
        assert!(c.detail.contains("2027-01-21"), "{c}");
        let c = check_api_version(&cfg, jiff::civil::date(2027, 1, 21));
        assert_eq!(c.mark, Mark::Fail, "{c}");
        assert!(
            c.hint.as_deref().is_some_and(|h| h.contains("v25.0")),
            "{c}"
        );
        let report = Report {
            checks: vec![check_api_version(&cfg, today)],
        };
        assert_ne!(
            report.exit_code(),
            exit::FAILURE,
            "a warning alone does not fail doctor"
        );
    }

    /// The MagicLine line of a doctor run against `sim`, with `extra` keys in `[magicline]`.
    fn magicline_check(sim: SimConfig, extra: &str) -> Check {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let graph = rt.block_on(crate::sandbox::whatsapp::start());
        let ml = rt.block_on(crate::sandbox::magicline::start(sim));
        let s = setup(&graph.base_url(), &ml.base_url(), &ml.api_key());
        let text = std::fs::read_to_string(&s.config).unwrap();
        let base_line = format!("base_url = \"{}\"", ml.base_url());
        std::fs::write(
            &s.config,
            text.replace(&base_line, &format!("{base_line}\n{extra}")),
        )
        .unwrap();
        let (report, printed) = diagnose_quietly(&s);
        assert!(!printed.contains(&ml.api_key()));
        report.get("magicline").unwrap().clone()
    }

    #[test]
    fn magicline_scopes_and_trial_offers() {
        use crate::magicline::api::FieldMode;
        use crate::sandbox::magicline::{SimAppointment, SimScope};
        let ems = SimAppointment {
            id: 1002,
            title: "Probetraining EMS".into(),
            duration_minutes: 30,
            category: "EMS".into(),
        };
        let two_offers = || SimConfig {
            more_trial_offers: vec![(2, ems.clone())],
            ..SimConfig::default()
        };

        // A 403 is a missing scope, named as such.
        let c = magicline_check(
            SimConfig {
                missing_scopes: vec![SimScope::AppointmentsWrite],
                ..two_offers()
            },
            "",
        );
        assert_eq!(c.mark, Mark::Fail, "{c}");
        assert!(
            c.detail
                .contains("lacks the scope for appointments (write) (HTTP 403)"),
            "{c}"
        );

        // Every offer listed, the configured one marked.
        let c = magicline_check(two_offers(), "trial_offer_appointment_id = 1002");
        assert_eq!(c.mark, Mark::Pass, "{c}");
        assert!(
            c.detail
                .contains("1001  Probetraining (30 min, trial offer 1)"),
            "{c}"
        );
        assert!(
            c.detail.contains(
                "1002  Probetraining EMS (30 min, trial offer 2)  ← magicline.trial_offer_appointment_id"
            ),
            "{c}"
        );

        // Trial classes are listed too; one can be chosen instead of an appointment.
        let with_class = || SimConfig {
            trial_classes: vec![crate::sandbox::magicline::SimClass::group_ems()],
            ..two_offers()
        };
        let c = magicline_check(with_class(), "trial_offer_class_id = 3001");
        assert_eq!(c.mark, Mark::Pass, "{c}");
        assert!(
            c.detail.contains(
                "3001  EMS-Gruppe Probetraining (45 min, class, trial offer 7)  ← magicline.trial_offer_class_id"
            ),
            "{c}"
        );
        assert!(c.detail.contains("members are handed to staff"), "{c}");
        let c = magicline_check(
            SimConfig {
                missing_scopes: vec![SimScope::ClassesRead],
                ..with_class()
            },
            "trial_offer_class_id = 3001",
        );
        assert_eq!(c.mark, Mark::Fail, "{c}");
        assert!(
            c.detail
                .contains("lacks the scope for class bookings (read) (HTTP 403)"),
            "{c}"
        );
        let c = magicline_check(with_class(), "trial_offer_class_id = 3999");
        assert_eq!(c.mark, Mark::Fail, "{c}");
        assert!(
            c.detail
                .contains("none of them is magicline.trial_offer_class_id"),
            "{c}"
        );

        // An id MagicLine does not list, a member type that is not bookable.
        let c = magicline_check(two_offers(), "trial_offer_appointment_id = 4242");
        assert_eq!(c.mark, Mark::Fail, "{c}");
        assert!(c.detail.contains("none of them"), "{c}");
        let c = magicline_check(two_offers(), "member_appointment_id = 4242");
        assert_eq!(c.mark, Mark::Fail, "{c}");
        assert!(c.detail.contains("member_appointment_id 4242"), "{c}");

        // Lead data frontdesk does not collect; the confirmation term is shown.
        let c = magicline_check(
            SimConfig {
                date_of_birth_mode: FieldMode::Mandatory,
                ..SimConfig::default()
            },
            "",
        );
        assert_eq!(c.mark, Mark::Fail, "{c}");
        assert!(c.detail.contains("date of birth"), "{c}");
        let c = magicline_check(
            SimConfig {
                require_confirmation: true,
                ..SimConfig::default()
            },
            "",
        );
        assert_eq!(c.mark, Mark::Pass, "{c}");
        assert!(
            c.detail
                .contains("at the latest 120 MINUTES before the start"),
            "{c}"
        );
    }
}
