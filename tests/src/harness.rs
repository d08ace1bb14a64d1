//! Test harness: runs the real `frontdesk` binary as a separate process with a throwaway state
//! directory, development credentials and a configuration pointing at simulators on loopback,
//! and waits for its sd_notify READY (the same protocol systemd uses).

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use frontdesk::sandbox::whatsapp::{
    SIM_APP_SECRET, SIM_GRAPH_VERSION, SIM_PHONE_NUMBER_ID, SIM_TOKEN,
};
use frontdesk::store::crypto::StoreIdentity;

/// The verify token the harness configures.
pub const VERIFY_TOKEN: &str = "harness-verify-token";

/// Path of the `frontdesk` binary built alongside the tests.
pub fn frontdesk_bin() -> PathBuf {
    built_bin("frontdesk")
}

/// What `frontdesk demo` printed for one customer line.
pub struct DemoRun {
    /// Everything it wrote to standard output.
    pub output: String,
    /// The first reply (`studio> …`).
    pub reply: String,
}

/// Runs `frontdesk demo ARGS` from the repository root, types `line` as the customer, ends the
/// input and returns what it printed; panics when it fails or prints no reply.
pub fn run_demo(args: &[&str], line: &str) -> DemoRun {
    use std::io::Write;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut child = Command::new(frontdesk_bin())
        .arg("demo")
        .args(args)
        .current_dir(&repo)
        .env("RUST_LOG", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start frontdesk demo");
    {
        let mut stdin = child.stdin.take().expect("piped stdin");
        writeln!(stdin, "{line}").expect("write to the demo");
        writeln!(stdin).expect("write to the demo");
    }
    let out = child.wait_with_output().expect("the demo's output");
    let output = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "demo failed:\n{output}");
    let reply = output
        .lines()
        .find_map(|l| l.split_once("studio> ").map(|(_, r)| r.to_string()))
        .unwrap_or_else(|| panic!("no reply in the demo output:\n{output}"));
    DemoRun { output, reply }
}

/// Path of a binary of the workspace, built alongside the tests.
fn built_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // Tests run from target/<profile>/deps/, benchmark binaries from target/<profile>/.
    let mut dir = exe.parent().expect("target directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target directory");
    }
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build --release --workspace --bins`)",
        bin.display()
    );
    bin
}

/// Settings of a harness daemon.
#[derive(Clone, Debug)]
pub struct DaemonSpec {
    /// Graph API base URL the daemon sends to (usually the Graph simulator's).
    pub graph_base: String,
    /// Run `frontdesk-fixed` (the engine replaced by this instant reply) instead of the
    /// shipped daemon with its engine.
    pub fixed_reply: Option<String>,
    /// `[conversation] burst_window_ms`: how long the daemon waits for more messages of a contact.
    pub burst_window_ms: u64,
    /// `[webhook] max_body_bytes`: the largest webhook body accepted.
    pub max_body_bytes: usize,
    /// Extra TOML appended to the generated configuration.
    pub extra_toml: String,
    /// Extra keys (and `[whatsapp.…]` tables) of the `[whatsapp]` section.
    pub whatsapp_toml: String,
    /// Extra credential files (name, content).
    pub extra_credentials: Vec<(String, String)>,
    /// Extra keys of the `[console]` section (its listener is always a free loopback port).
    pub console_toml: String,
    /// With `frontdesk-fixed`: the reminder scheduler reads its time (unix seconds) from this
    /// file, so a test moves it by a day without waiting.
    pub clock_file: Option<PathBuf>,
}

impl DaemonSpec {
    /// Defaults for tests: fixed reply `Danke! {ids}`, no burst window, 1 MiB bodies.
    pub fn with_graph(graph_base: String) -> DaemonSpec {
        DaemonSpec {
            graph_base,
            fixed_reply: Some("Danke! {ids}".into()),
            burst_window_ms: 0,
            max_body_bytes: 1024 * 1024,
            extra_toml: String::new(),
            whatsapp_toml: String::new(),
            extra_credentials: Vec::new(),
            console_toml: String::new(),
            clock_file: None,
        }
    }
}

/// A daemon's directory, configuration and (while running) process. The first start binds port
/// 0 and learns the ports from READY=1; restarts bind the same ports again.
pub struct Daemon {
    /// Holds configuration, credentials, state and the admin socket; removed on drop.
    pub dir: tempfile::TempDir,
    /// The generated configuration file.
    pub config: PathBuf,
    /// Where the webhook listens (learnt at the first start).
    pub webhook: SocketAddr,
    /// Where the metrics endpoint listens (learnt at the first start).
    pub metrics: SocketAddr,
    /// Where the staff console listens (learnt at the first start).
    pub console: SocketAddr,
    /// The store identity line, to open the store from the test.
    pub identity: String,
    spec: DaemonSpec,
    child: Option<Child>,
    notify: Option<UnixDatagram>,
}

impl Daemon {
    /// Prepares a state directory and configuration, then starts the daemon.
    pub fn start(spec: DaemonSpec) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("credentials");
        std::fs::create_dir_all(&creds).unwrap();
        let identity = StoreIdentity::generate().to_secret_line().to_string();
        std::fs::write(creds.join("store-identity"), &identity).unwrap();
        // With the newline `echo` leaves: the daemon must not sign with it.
        std::fs::write(
            creds.join("whatsapp-app-secret"),
            format!("{SIM_APP_SECRET}\n"),
        )
        .unwrap();
        std::fs::write(creds.join("whatsapp-token"), SIM_TOKEN).unwrap();
        std::fs::write(creds.join("whatsapp-verify-token"), VERIFY_TOKEN).unwrap();
        for (name, value) in &spec.extra_credentials {
            std::fs::write(creds.join(name), value).unwrap();
        }
        // Port 0: the daemon binds free ports and reports them with READY=1.
        let unbound: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let config = dir.path().join("frontdesk.toml");
        let prompts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../prompts");
        std::fs::write(
            &config,
            format!(
                r#"[service]
state_dir = "{state}"
admin_socket = "{dir}/admin.sock"
credentials_dir = "{creds}"
prompts_dir = "{prompts}"
prompts_override_dir = "{dir}/prompts"
log_level = "warn"

[webhook]
listen = "{webhook}"
max_body_bytes = {max_body}

[metrics]
listen = "{metrics}"

[console]
listen = "{console}"
{console_toml}

[whatsapp]
graph_base = "{graph}"
api_version = "{version}"
phone_number_id = "{pnid}"
send_timeout_secs = 5
{whatsapp}

[conversation]
burst_window_ms = {burst}
{extra}
"#,
                state = dir.path().join("state").display(),
                dir = dir.path().display(),
                creds = creds.display(),
                prompts = prompts.display(),
                webhook = unbound,
                metrics = unbound,
                console = unbound,
                console_toml = spec.console_toml,
                max_body = spec.max_body_bytes,
                graph = spec.graph_base,
                version = SIM_GRAPH_VERSION,
                pnid = SIM_PHONE_NUMBER_ID,
                burst = spec.burst_window_ms,
                extra = spec.extra_toml,
                whatsapp = spec.whatsapp_toml,
            ),
        )
        .unwrap();
        let mut d = Daemon {
            dir,
            config,
            webhook: unbound,
            metrics: unbound,
            console: unbound,
            identity,
            spec,
            child: None,
            notify: None,
        };
        d.restart();
        d
    }

    /// The staff console's base URL (`http://127.0.0.1:PORT`).
    pub fn console_url(&self) -> String {
        format!("http://{}", self.console)
    }

    /// Runs `frontdesk ARGS…` against this daemon's configuration with `stdin` as standard
    /// input; returns the exit status, stdout and stderr.
    pub fn cli(&self, args: &[&str], stdin: &str) -> (i32, String, String) {
        use std::io::Write;
        let mut child = Command::new(frontdesk_bin())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run frontdesk");
        child
            .stdin
            .take()
            .expect("stdin piped")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        let out = child.wait_with_output().expect("frontdesk exits");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The webhook URL.
    pub fn webhook_url(&self) -> String {
        format!("http://{}/webhook", self.webhook)
    }

    /// The store directory (for opening it after the daemon stopped).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("state").join("store")
    }

    /// Starts the daemon process (again) and waits for READY=1.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "daemon already running");
        let sock_path = self.dir.path().join("notify.sock");
        let _ = std::fs::remove_file(&sock_path);
        let sock = UnixDatagram::bind(&sock_path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        let mut cmd = match &self.spec.fixed_reply {
            Some(reply) => {
                let mut cmd = Command::new(built_bin("frontdesk-fixed"));
                cmd.arg("--config")
                    .arg(&self.config)
                    .arg("--reply")
                    .arg(reply);
                if let Some(clock) = &self.spec.clock_file {
                    cmd.arg("--clock-file").arg(clock);
                }
                cmd
            }
            None => {
                let mut cmd = Command::new(frontdesk_bin());
                cmd.arg("--config").arg(&self.config).arg("serve");
                cmd
            }
        };
        let child = cmd
            .env("NOTIFY_SOCKET", &sock_path)
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .spawn()
            .expect("start frontdesk");
        self.child = Some(child);
        self.notify = Some(sock);
        let ready = self.wait_notify("READY=1");
        let addr = |var: &str| -> SocketAddr {
            ready
                .lines()
                .find_map(|l| l.strip_prefix(var))
                .unwrap_or_else(|| panic!("READY=1 without {var}: {ready}"))
                .parse()
                .unwrap()
        };
        let (webhook, metrics, console) = (
            addr("X_FRONTDESK_WEBHOOK="),
            addr("X_FRONTDESK_METRICS="),
            addr("X_FRONTDESK_CONSOLE="),
        );
        if self.webhook.port() == 0 {
            // Later restarts keep these ports, so drivers made before a restart still reach it.
            let text = std::fs::read_to_string(&self.config).unwrap();
            let text = text
                .replacen(
                    "listen = \"127.0.0.1:0\"",
                    &format!("listen = \"{webhook}\""),
                    1,
                )
                .replacen(
                    "listen = \"127.0.0.1:0\"",
                    &format!("listen = \"{metrics}\""),
                    1,
                )
                .replacen(
                    "listen = \"127.0.0.1:0\"",
                    &format!("listen = \"{console}\""),
                    1,
                );
            std::fs::write(&self.config, text).unwrap();
        }
        (self.webhook, self.metrics, self.console) = (webhook, metrics, console);
    }

    /// Waits for the daemon's next sd_notify message containing the line `line`; returns that
    /// whole message (e.g. with its STATUS=).
    pub fn wait_notify(&self, line: &str) -> String {
        let sock = self.notify.as_ref().expect("daemon not started");
        let mut buf = [0u8; 4096];
        loop {
            let n = sock
                .recv(&mut buf)
                .unwrap_or_else(|_| panic!("daemon did not report {line} within 120 s"));
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if msg.lines().any(|l| l == line) {
                return msg;
            }
        }
    }

    /// Sends SIGHUP (what `systemctl reload` does).
    pub fn reload(&self) {
        let pid = self.pid().expect("daemon not running");
        frontdesk::sys::kill(pid, libc::SIGHUP).expect("SIGHUP to the daemon");
    }

    /// SIGKILLs the daemon (no cleanup of any kind).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // The child may have exited already; wait() reaps it either way.
            let _ = frontdesk::sys::kill(c.id(), libc::SIGKILL);
            c.wait().unwrap();
        }
    }

    /// SIGTERMs the daemon and waits for it to exit; returns its exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.child.take().map(|mut c| {
            let _ = frontdesk::sys::kill(c.id(), libc::SIGTERM);
            c.wait().unwrap()
        })
    }

    /// Process id while the daemon runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Opens the daemon's store (the daemon must be stopped).
    pub fn open_store(&self) -> frontdesk::store::Store {
        frontdesk::store::Store::open(
            &self.store_dir(),
            StoreIdentity::parse(&self.identity).unwrap(),
        )
        .unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits up to `within` until the daemon's metrics show `line` (a counter or gauge with its
/// value): the daemon offers no other signal for work it finished without sending anything.
/// On time-out, the metric's current lines are in the panic message.
pub async fn await_metric(daemon: &Daemon, line: &str, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    let name = line.split(['{', ' ']).next().unwrap_or(line).to_string();
    loop {
        let addr = daemon.metrics;
        let (_, text) = tokio::task::spawn_blocking(move || http_get(addr, "/metrics"))
            .await
            .expect("the metrics request task");
        if text.lines().any(|l| l == line) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metric line {line} did not appear; {name} is now:\n{}",
            text.lines()
                .filter(|l| l.starts_with(name.as_str()))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GET over plain HTTP/1.1 on loopback; returns status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
