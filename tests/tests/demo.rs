//! `frontdesk demo` end to end with the real llama.cpp and the small test model: lines typed as
//! the customer go through the signed webhook, the store, the engine and the model, and the
//! reply comes back through the Graph API simulator.

use std::io::Write;
use std::process::{Command, Stdio};

use frontdesk_tests::harness::frontdesk_bin;

#[test]
fn demo_answers_through_the_whole_pipeline_and_discloses_the_ai() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut child = Command::new(frontdesk_bin())
        .arg("demo")
        .current_dir(&repo)
        .env("RUST_LOG", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start frontdesk demo");
    {
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "Hallo! Was ist ein Probetraining?").unwrap();
        writeln!(stdin).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{text}");
    let reply = text
        .lines()
        .find_map(|l| l.split_once("studio> ").map(|(_, r)| r.to_string()))
        .unwrap_or_else(|| panic!("no reply in the demo output:\n{text}"));
    // The first reply to a new contact says that the assistant is an AI (EU AI Act Art. 50),
    // whatever the model wrote.
    let lower = reply.to_lowercase();
    assert!(
        lower.contains("ki") || lower.contains("digital"),
        "first reply lacks the AI disclosure: {reply}"
    );
    assert!(text.contains("state directory is deleted"));
}
