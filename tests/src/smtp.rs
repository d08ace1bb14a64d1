//! A real SMTP server on loopback for the staff alert tests: `tests/smtp_sink.py` (aiosmtpd
//! from PyPI, installed by `./install.sh --dev` into `.cache/smtp-venv`) as a child process.
//! Each accepted message lands as a file the test reads back.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// The Python with aiosmtpd: `FRONTDESK_TEST_PYTHON`, else the development virtual environment.
fn python() -> PathBuf {
    std::env::var_os("FRONTDESK_TEST_PYTHON")
        .map(Into::into)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/smtp-venv/bin/python3")
        })
}

/// One received e-mail.
#[derive(Debug, Clone)]
pub struct Mail {
    /// As received, with `X-Envelope-From` / `X-Envelope-To` in front.
    pub raw: String,
    /// The text body, decoded from its transfer encoding.
    pub body: String,
}

/// The running SMTP server; stopped (its standard input closed, then killed) on drop.
pub struct SmtpSink {
    /// The port it listens on at 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
    stdin: Option<ChildStdin>,
}

impl SmtpSink {
    /// Starts the server; it refuses the first `fail` messages with 451.
    pub fn start(fail: u32) -> SmtpSink {
        let python = python();
        assert!(
            python.exists(),
            "{} is missing: run ./install.sh --dev (it installs aiosmtpd) or set FRONTDESK_TEST_PYTHON",
            python.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("smtp_sink.py");
        let mut child = Command::new(python)
            .arg(script)
            .arg("--dir")
            .arg(dir.path())
            .arg("--fail")
            .arg(fail.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the SMTP server");
        let stdin = child.stdin.take();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let port = first
            .trim()
            .strip_prefix("PORT ")
            .unwrap_or_else(|| panic!("the SMTP server did not start: {first:?}"))
            .parse()
            .unwrap();
        SmtpSink {
            port,
            dir,
            child,
            stdin,
        }
    }

    /// The messages received so far, in order.
    pub fn messages(&self) -> Vec<Mail> {
        let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| {
                let path = e.ok()?.path();
                let n = path
                    .file_name()?
                    .to_str()?
                    .strip_suffix(".eml")?
                    .parse()
                    .ok()?;
                Some((n, path))
            })
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|(_, p)| Mail {
                raw: std::fs::read_to_string(&p).unwrap(),
                body: std::fs::read_to_string(p.with_extension("txt")).unwrap(),
            })
            .collect()
    }

    /// Waits until at least `n` messages arrived (at most `within`); returns them all.
    pub fn wait_for(&self, n: usize, within: Duration) -> Vec<Mail> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.messages();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{n} e-mails expected, {} arrived",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
