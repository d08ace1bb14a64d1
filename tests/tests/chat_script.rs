//! `frontdesk chat --script` and `frontdesk demo` with an OpenAI-compatible model server: the
//! shipped binary, the shipped prompts and the shipped example scripts, with the keyword-rules
//! model (`frontdesk_tests::rules_model`) on loopback in place of a real model.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use frontdesk_tests::harness::{frontdesk_bin, run_demo};
use frontdesk_tests::rules_model;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A configuration with a studio's facts and the repository's prompts.
fn config(dir: &Path) -> PathBuf {
    let path = dir.join("frontdesk.toml");
    std::fs::write(
        &path,
        format!(
            r#"[service]
state_dir = "{dir}/state"
prompts_dir = "{prompts}"
prompts_override_dir = "{dir}/prompts"

[studio]
name = "EMS-Studio Beispiel"
assistant_name = "Max"
address = "Musterstraße 1, 38100 Braunschweig"
opening_hours = ["Mo–Fr 8:00–21:00", "Sa 9:00–14:00"]
offers = ["EMS-Training 1×/Woche: 49 € im Monat", "EMS-Training 2×/Woche: 79 € im Monat"]
trial_info = "20 Minuten EMS mit Trainer, kostenlos – bring Sportsachen mit"
"#,
            dir = dir.display(),
            prompts = repo().join("prompts").display(),
        ),
    )
    .expect("write the configuration");
    path
}

/// Runs the scripts; the scratch stores go to `dir/tmp`.
fn chat_script(dir: &Path, server: &rules_model::RulesServer, scripts: &[&Path]) -> Output {
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).expect("create the temporary directory");
    let mut cmd = Command::new(frontdesk_bin());
    cmd.arg("--config")
        .arg(config(dir))
        .args(["chat", "--openai-url", &server.base_url()])
        .env("TMPDIR", &tmp)
        .env("RUST_LOG", "error");
    for script in scripts {
        cmd.arg("--script").arg(script);
    }
    cmd.output().expect("run frontdesk chat --script")
}

#[test]
fn every_shipped_example_script_passes() {
    let server = rules_model::serve();
    let dir = tempfile::tempdir().unwrap();
    let examples = repo().join("examples/scripts");
    let out = chat_script(dir.path(), &server, &[&examples]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    // What a studio sees (shown with --nocapture).
    println!("{stdout}");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&examples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 7, "{files:?}");
    for file in &files {
        assert!(
            stdout.contains(&format!("({})\n", file.display())),
            "{} did not run:\n{stdout}",
            file.display()
        );
    }
    assert_eq!(stdout.matches("\nPASS ").count(), files.len(), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
    assert!(stdout.ends_with("All 7 scripts passed.\n"), "{stdout}");
    // The scripts' decisions as the engine printed them, not only their verdicts.
    assert_eq!(
        stdout.matches("[booking simulated: ").count(),
        2,
        "{stdout}"
    );
    assert!(stdout.contains("[staff alert: Complaint]"), "{stdout}");
    assert!(
        stdout.contains("[stage: neuer Interessent -> Mitglied]"),
        "{stdout}"
    );
    assert!(
        stdout.contains("[bot mode: Active -> OptedOut]"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Max: Unsere Angebote: EMS-Training 1×/Woche: 49 € im Monat"),
        "{stdout}"
    );
    // Each script had its own scratch store; none is left behind, and the configured state
    // directory was never touched.
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
    assert!(!dir.path().join("state").exists());
}

#[test]
fn a_failed_expectation_is_reported_and_ends_with_status_6() {
    let server = rules_model::serve();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("falsch.toml");
    std::fs::write(
        &script,
        "name = \"Erwartet zu viel\"\n\
         [[turn]]\nsay = \"Hallo!\"\nexpect = { disclosure = true, booked = true }\n\
         [[turn]]\nsay = \"Was kostet das?\"\nexpect = { contains = [\"99 €\"] }\n",
    )
    .unwrap();
    let passing = repo().join("examples/scripts/03-preisfrage.toml");
    let out = chat_script(dir.path(), &server, &[&script, &passing]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(6), "{stdout}");
    assert!(stdout.contains("  ok   AI disclosure\n"), "{stdout}");
    assert!(
        stdout.contains("  FAIL turn 1: booked: it did not happen\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  FAIL turn 2: reply contains \"99 €\": it does not\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("FAIL Erwartet zu viel (2 failed expectations)\n"),
        "{stdout}"
    );
    assert!(stdout.contains("PASS Preisfrage\n"), "{stdout}");
    assert!(stdout.ends_with("1 of 2 scripts failed.\n"), "{stdout}");
}

#[test]
fn a_broken_script_is_refused_before_any_turn_runs() {
    let server = rules_model::serve();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("kaputt.toml");
    std::fs::write(
        &script,
        "[[turn]]\nsay = \"Hallo\"\nexpect = { gebucht = true }\n",
    )
    .unwrap();
    let out = chat_script(dir.path(), &server, &[&script]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("kaputt.toml: not a valid script"),
        "{stderr}"
    );
    assert!(stderr.contains("gebucht"), "{stderr}");
    assert!(out.stdout.is_empty(), "no turn ran");
}

#[test]
fn demo_answers_with_an_openai_compatible_server() {
    let server = rules_model::serve();
    let url = format!("{}/v1", server.base_url());
    let run = run_demo(
        &["--openai-url", &url],
        "Hallo! Was kostet das Training bei euch?",
    );
    let (text, reply) = (run.output, run.reply);
    assert!(
        text.contains(&format!(
            "the model server {} (model default)",
            server.base_url()
        )),
        "{text}"
    );
    // The disclosure and then the server's answer, with the demo studio's offer.
    assert!(reply.contains("(KI)"), "{reply}");
    let rest: String = text
        .lines()
        .skip_while(|l| !l.contains("studio> "))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(rest.contains("49 € im Monat"), "{text}");
}
