//! A real browser for tests of the staff console: Debian's `chromium`, headless, driven over
//! WebDriver by `chromedriver` (both from `./install.sh --dev`), through fantoccini. The
//! driver listens on a loopback port and is killed when the [`Browser`] is dropped.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use fantoccini::{Client, ClientBuilder};

/// A headless Chromium session and its chromedriver process.
pub struct Browser {
    /// The WebDriver client.
    pub client: Client,
    driver: Option<Child>,
    shots: PathBuf,
    /// A fresh profile per session, so no state carries over between tests.
    _profile: tempfile::TempDir,
}

/// Where screenshots go: `target/console-screenshots/` of the workspace build.
pub fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/
    let target = exe
        .ancestors()
        .nth(3)
        .expect("test executable under target/<profile>/deps")
        .to_path_buf();
    target.join("console-screenshots")
}

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a headless Chromium session.
    pub async fn start() -> Browser {
        let port = {
            // The kernel picks a free port; chromedriver binds it right after.
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            l.local_addr().expect("bound").port()
        };
        let mut driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is missing: run ./install.sh --dev (Debian's chromium-driver)");
        // chromedriver says on stdout when it listens.
        let stdout = driver.stdout.take().expect("stdout piped");
        let mut lines = BufReader::new(stdout).lines();
        loop {
            let line = lines
                .next()
                .expect("chromedriver exited before it started")
                .expect("chromedriver output");
            if line.contains("started successfully") {
                break;
            }
        }
        // Keep reading its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let profile = tempfile::tempdir().expect("browser profile directory");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,1000",
                    "--lang=de-DE",
                    // Nothing but the console on loopback: no updates, sync or prefetching,
                    // which a closed network refuses and a test must not wait for.
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-quic",
                    "--no-first-run",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a WebDriver session in headless chromium");
        let shots = screenshot_dir();
        std::fs::create_dir_all(&shots).expect("screenshot directory");
        Browser {
            client,
            driver: Some(driver),
            shots,
            _profile: profile,
        }
    }

    /// Saves a PNG of the page as `<name>.png` in [`screenshot_dir`].
    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::write(self.shots.join(format!("{name}.png")), png).expect("write screenshot");
    }

    /// Ends the session and the driver.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        if let Some(mut driver) = self.driver.take() {
            let _ = frontdesk::sys::kill(driver.id(), libc::SIGTERM);
            let _ = driver.wait();
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(mut driver) = self.driver.take() {
            let _ = frontdesk::sys::kill(driver.id(), libc::SIGKILL);
            let _ = driver.wait();
        }
    }
}
