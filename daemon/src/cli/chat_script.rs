//! `frontdesk chat --script`: replays written conversations against the real engine, the
//! configured prompts and model, and checks what each turn came to (booked, handed over, member
//! recognised, opted out, AI disclosure, no price or time beyond the studio's facts, words the
//! reply must or must not contain). Each script runs in its own scratch store with simulated
//! bookings, like the interactive chat.
//!
//! A script is a TOML file (see docs/operations.md, "Try your prompts before going live"):
//!
//! ```toml
//! name = "Lead bucht sofort"
//! now = "2026-03-02T10:00:00+01:00[Europe/Berlin]"   # optional: a fixed clock
//!
//! [[turn]]
//! say = "Hallo, ich möchte ein Probetraining machen"
//! expect = { disclosure = true, booked = false }
//!
//! [[turn]]
//! say = "Lena Schmidt, lena@example.de, Dienstag um 18 Uhr"
//! expect = { booked = true, contains = ["gebucht"] }
//! ```
//!
//! Each turn is one WhatsApp message, one minute after the one before.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use jiff::Zoned;
use serde::Deserialize;

use super::chat_cmd::{print_turn, ScratchDir, SimulatedBooker};
use super::chat_facts::Allowed;
use crate::config::Config;
use crate::conversation::booking::BookingOutcome;
use crate::conversation::engine::{mentions_ai, Engine, Turn};
use crate::conversation::prompts::Prompts;
use crate::conversation::reply::Intent;
use crate::conversation::when::{berlin_now, berlin_tz};
use crate::llm::LanguageModel;
use crate::store::crypto::StoreIdentity;
use crate::store::customers::{BotMode, Customer, Stage};
use crate::store::Store;
use crate::turn::{Burst, Part, PartKind};

/// One scripted conversation, as written in its file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Script {
    /// What the script tries; the file name when left out.
    pub name: Option<String>,
    /// The time of the first message: `2026-03-02T10:00:00+01:00[Europe/Berlin]` or a plain
    /// `2026-03-02T10:00` (read in Europe/Berlin). Left out: now.
    pub now: Option<String>,
    /// The contact's phone number (nothing is sent to it).
    pub phone: Option<String>,
    /// The contact's WhatsApp profile name.
    pub contact_name: Option<String>,
    /// The contact's messages, in order.
    #[serde(rename = "turn", default)]
    pub turns: Vec<ScriptTurn>,
}

/// One message of the contact and what its answer must show.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptTurn {
    /// What the contact writes.
    pub say: String,
    /// What must hold after this message; nothing is checked when left out, except that no
    /// price or time beyond the facts is named.
    #[serde(default)]
    pub expect: Expect,
}

/// The expectations of one turn. A field that is left out is not checked.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// A reply is sent (`false`: the assistant stays silent).
    pub reply: Option<bool>,
    /// This message led to a booking (`false`: it did not).
    pub booked: Option<bool>,
    /// This message handed the conversation to staff (hand-over or staff alert).
    pub handed_over: Option<bool>,
    /// After this message the contact is served as a member.
    pub member: Option<bool>,
    /// After this message the contact has opted out.
    pub opted_out: Option<bool>,
    /// A reply of this turn says that an AI answers.
    pub disclosure: Option<bool>,
    /// The model read the message as this intent (`question`, `book_trial`, `complaint` …).
    pub intent: Option<String>,
    /// Every price and time in the replies is one of the studio's facts, the contact's own
    /// words or a slot the booking named. On unless set to `false`.
    pub facts_only: Option<bool>,
    /// Words the replies must contain (case does not matter).
    #[serde(default)]
    pub contains: Vec<String>,
    /// Words the replies must not contain (case does not matter).
    #[serde(default)]
    pub not_contains: Vec<String>,
}

/// A script read from its file, checked and ready to run.
#[derive(Debug)]
pub struct LoadedScript {
    /// The file it came from.
    pub path: PathBuf,
    /// What it tries.
    pub name: String,
    /// When the first message is written.
    pub start: Option<Zoned>,
    /// What it says.
    pub script: Script,
}

/// Reads the scripts: each path is a TOML file or a directory whose `*.toml` files are read in
/// name order.
pub fn load(paths: &[PathBuf]) -> anyhow::Result<Vec<LoadedScript>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<_, _>>()
                .with_context(|| format!("cannot read {}", path.display()))?;
            found.retain(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file());
            found.sort();
            anyhow::ensure!(
                !found.is_empty(),
                "{}: no *.toml scripts in this directory",
                path.display()
            );
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    files.iter().map(|p| load_file(p)).collect()
}

fn load_file(path: &Path) -> anyhow::Result<LoadedScript> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let script: Script =
        toml::from_str(&text).with_context(|| format!("{}: not a valid script", path.display()))?;
    let file = path.display();
    anyhow::ensure!(
        !script.turns.is_empty(),
        "{file}: the script has no [[turn]]"
    );
    for (i, turn) in script.turns.iter().enumerate() {
        anyhow::ensure!(
            !turn.say.trim().is_empty(),
            "{file}: turn {} says nothing",
            i + 1
        );
        if let Some(intent) = &turn.expect.intent {
            anyhow::ensure!(
                Intent::parse(intent).is_some(),
                "{file}: turn {}: unknown intent {intent:?} (one of {})",
                i + 1,
                Intent::ALL.map(Intent::as_str).join(", ")
            );
        }
    }
    let start = script
        .now
        .as_deref()
        .map(|s| parse_now(s).with_context(|| format!("{file}: now = {s:?}")))
        .transpose()?;
    let name = script.name.clone().unwrap_or_else(|| {
        path.file_stem()
            .map_or_else(|| file.to_string(), |s| s.to_string_lossy().into_owned())
    });
    Ok(LoadedScript {
        path: path.to_path_buf(),
        name,
        start,
        script,
    })
}

/// A zoned date-time, or a civil one meant in Europe/Berlin.
fn parse_now(s: &str) -> anyhow::Result<Zoned> {
    if let Ok(z) = s.parse::<Zoned>() {
        return Ok(z.with_time_zone(berlin_tz()));
    }
    let civil: jiff::civil::DateTime = s
        .parse()
        .context("expected e.g. 2026-03-02T10:00 or 2026-03-02T10:00:00+01:00[Europe/Berlin]")?;
    Ok(civil.to_zoned(berlin_tz())?)
}

/// What the scripts came to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Scripts whose every expectation held.
    pub passed: usize,
    /// Scripts with at least one failed expectation or failed turn.
    pub failed: usize,
}

/// Runs every script, printing each turn and each expectation to `out`.
pub fn run_all(
    cfg: &Config,
    prompts: &Arc<Prompts>,
    model: &Arc<dyn LanguageModel>,
    scripts: &[LoadedScript],
    out: &mut impl Write,
) -> anyhow::Result<Summary> {
    let mut summary = Summary::default();
    for script in scripts {
        let scratch = ScratchDir::create()?;
        let store = Arc::new(
            Store::open(scratch.path(), StoreIdentity::generate())
                .context("cannot open the scratch store")?,
        );
        let engine = Engine::new(
            store,
            model.clone(),
            prompts.clone(),
            cfg.studio.clone(),
            cfg.conversation.clone(),
            Some(Arc::new(SimulatedBooker)),
        );
        let failures = run_one(&engine, cfg, &prompts.replies().model_error(), script, out)?;
        if failures == 0 {
            summary.passed += 1;
            writeln!(out, "PASS {}\n", script.name)?;
        } else {
            summary.failed += 1;
            writeln!(
                out,
                "FAIL {} ({failures} failed expectation{})\n",
                script.name,
                if failures == 1 { "" } else { "s" }
            )?;
        }
    }
    Ok(summary)
}

/// Runs one script; returns the number of failed expectations (a failed turn, and a turn whose
/// model output could not be used, count as one).
fn run_one(
    engine: &Engine,
    cfg: &Config,
    model_error: &str,
    loaded: &LoadedScript,
    out: &mut impl Write,
) -> anyhow::Result<usize> {
    writeln!(out, "== {} ({})", loaded.name, loaded.path.display())?;
    let start = loaded.start.clone().unwrap_or_else(berlin_now);
    let phone = loaded
        .script
        .phone
        .clone()
        .unwrap_or_else(|| super::chat_cmd::DEFAULT_PHONE.to_string());
    let name = &cfg.studio.assistant_name;
    let mut allowed = Allowed::from_studio(&cfg.studio);
    let mut failures = 0;
    for (i, turn) in loaded.script.turns.iter().enumerate() {
        let minutes = i64::try_from(i).unwrap_or(i64::MAX);
        let now = start
            .checked_add(jiff::Span::new().try_minutes(minutes)?)
            .context("the script runs past the end of time")?;
        writeln!(out, "du: {}", turn.say)?;
        let burst = Burst {
            address: phone.clone(),
            contact_name: loaded.script.contact_name.clone(),
            user_id: None,
            parent_user_id: None,
            username: None,
            referral: None,
            parts: vec![Part {
                id: format!("script.{}", i + 1),
                at: now.timestamp(),
                kind: PartKind::Text(turn.say.clone()),
                quoted: None,
                button: None,
            }],
        };
        allowed.add_contact_text(&turn.say, &now);
        let decided = engine.decide_at(&burst, &now).map_err(anyhow::Error::from);
        let committed = decided.and_then(|mut t| {
            t.effects = crate::turn::commit(engine.store(), t.effects, &(), None)?;
            Ok(t)
        });
        let t = match committed {
            Ok(t) => t,
            Err(e) => {
                writeln!(out, "  FAIL turn {}: the turn failed: {e:#}", i + 1)?;
                failures += 1;
                continue;
            }
        };
        print_turn(out, name, &t)?;
        match &t.booking {
            Some(BookingOutcome::Booked { start, .. }) => allowed.add_slot(start),
            Some(BookingOutcome::SlotTaken { alternatives }) => {
                alternatives.iter().for_each(|a| allowed.add_slot(a));
            }
            _ => {}
        }
        let customer = engine.store().customer(&t.effects.pseudonym)?;
        let mut results = check(&turn.expect, &t, customer.as_ref(), &allowed);
        if t.replies.iter().any(|r| r.contains(model_error)) {
            results.push((
                "usable model output".to_string(),
                Err("the model's output could not be used; the fallback reply was sent".into()),
            ));
        }
        for (what, result) in results {
            match result {
                Ok(()) => writeln!(out, "  ok   {what}")?,
                Err(why) => {
                    failures += 1;
                    writeln!(out, "  FAIL turn {}: {what}: {why}", i + 1)?;
                }
            }
        }
    }
    Ok(failures)
}

/// Each expectation that is set, with whether it held (and why not).
fn check(
    expect: &Expect,
    t: &Turn,
    customer: Option<&Customer>,
    allowed: &Allowed,
) -> Vec<(String, Result<(), String>)> {
    let mut results = Vec::new();
    let mut flag = |what: &str, expected: Option<bool>, actual: bool| {
        if let Some(expected) = expected {
            let label = if expected {
                what.to_string()
            } else {
                format!("not {what}")
            };
            let result = if expected == actual {
                Ok(())
            } else if expected {
                Err("it did not happen".to_string())
            } else {
                Err("it happened".to_string())
            };
            results.push((label, result));
        }
    };
    let mode = customer.map(|c| c.meta.mode);
    flag("replied", expect.reply, !t.replies.is_empty());
    flag(
        "booked",
        expect.booked,
        matches!(t.booking, Some(BookingOutcome::Booked { .. })),
    );
    flag(
        "handed over",
        expect.handed_over,
        !t.alerts.is_empty()
            || t.mode_changes
                .iter()
                .any(|(_, to)| *to == BotMode::Escalated),
    );
    flag(
        "member recognised",
        expect.member,
        customer.is_some_and(|c| c.meta.stage == Stage::Member),
    );
    flag(
        "opted out",
        expect.opted_out,
        mode == Some(BotMode::OptedOut),
    );
    flag(
        "AI disclosure",
        expect.disclosure,
        t.replies.iter().any(|r| mentions_ai(r)),
    );
    if let Some(intent) = &expect.intent {
        let actual = t
            .intent
            .map_or("(none: the model was not asked)", Intent::as_str);
        results.push((
            format!("intent {intent}"),
            if actual == intent {
                Ok(())
            } else {
                Err(format!("the model read it as {actual}"))
            },
        ));
    }
    let replies = t.replies.join("\n");
    let lower = replies.to_lowercase();
    for word in &expect.contains {
        results.push((
            format!("reply contains {word:?}"),
            if lower.contains(&word.to_lowercase()) {
                Ok(())
            } else {
                Err("it does not".to_string())
            },
        ));
    }
    for word in &expect.not_contains {
        results.push((
            format!("reply does not contain {word:?}"),
            if lower.contains(&word.to_lowercase()) {
                Err("it does".to_string())
            } else {
                Ok(())
            },
        ));
    }
    if expect.facts_only.unwrap_or(true) {
        let unknown = allowed.unknown_in(&replies);
        results.push((
            "no price or time beyond the studio's facts".to_string(),
            if unknown.is_empty() {
                Ok(())
            } else {
                Err(format!("not in the facts: {}", unknown.join(", ")))
            },
        ));
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn scripts_load_from_files_and_directories_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "b.toml",
            "now = \"2026-03-02T10:00\"\n[[turn]]\nsay = \"Hallo\"\nexpect = { disclosure = true }\n",
        );
        write(
            dir.path(),
            "a.toml",
            "name = \"Erst\"\n[[turn]]\nsay = \"Was kostet das?\"\n[turn.expect]\nintent = \"question\"\ncontains = [\"€\"]\n",
        );
        write(dir.path(), "notes.txt", "not a script");
        let scripts = load(&[dir.path().to_path_buf()]).unwrap();
        let names: Vec<&str> = scripts.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["Erst", "b"]);
        assert_eq!(scripts[0].script.turns[0].expect.contains, ["€"]);
        assert_eq!(
            scripts[1].start.as_ref().unwrap().to_string(),
            "2026-03-02T10:00:00+01:00[Europe/Berlin]"
        );
        assert_eq!(scripts[1].script.turns[0].expect.disclosure, Some(true));
    }

    #[test]
    fn mistakes_in_a_script_are_named_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "[[turn]]\nsay = \"Hallo\"\nexpect = { bookd = true }\n",
                "bookd",
            ),
            (
                "[[turn]]\nsay = \"Hallo\"\nexpect = { intent = \"kaufen\" }\n",
                "unknown intent \"kaufen\"",
            ),
            (
                "now = \"nächsten Montag\"\n[[turn]]\nsay = \"Hallo\"\n",
                "now = \"nächsten Montag\"",
            ),
            ("name = \"leer\"\n", "has no [[turn]]"),
            ("[[turn]]\nsay = \"  \"\n", "turn 1 says nothing"),
        ];
        for (i, (text, message)) in cases.iter().enumerate() {
            let path = write(dir.path(), &format!("case{i}.toml"), text);
            let err = format!("{:#}", load(&[path]).unwrap_err());
            assert!(err.contains(&format!("case{i}.toml")), "{err}");
            assert!(err.contains(message), "{err}");
        }
        let empty = tempfile::tempdir().unwrap();
        let err = load(&[empty.path().to_path_buf()]).unwrap_err().to_string();
        assert!(err.contains("no *.toml scripts"), "{err}");
    }

    /// Answers every message with one fixed reply.
    struct Says(&'static str);

    impl crate::llm::LanguageModel for Says {
        fn generate(
            &self,
            _: &crate::llm::Prompt,
            _: &serde_json::Value,
        ) -> Result<crate::llm::Generation, crate::llm::LlmError> {
            let text = serde_json::json!({"intent": "question", "profil": {},
                "reply": self.0, "wunschtermin": null});
            Ok(crate::llm::Generation {
                text: text.to_string(),
                prompt_tokens: 1,
                evaluated_prompt_tokens: 1,
                generated_tokens: 1,
            })
        }
        fn describe(&self) -> String {
            "says".into()
        }
    }

    fn run_with(model: &'static str, script: &str) -> (Summary, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "script.toml", script);
        let scripts = load(&[path]).unwrap();
        let mut cfg = Config::default();
        cfg.studio.offers = vec!["Flex-Tarif 39,90 € im Monat".into()];
        cfg.studio.opening_hours = vec!["Mo–Fr 8:00–21:00".into()];
        let prompts = Arc::new(
            Prompts::load_from(
                &crate::conversation::prompts::tests::shipped_dir(),
                None,
                &cfg.studio,
            )
            .unwrap(),
        );
        let model: Arc<dyn LanguageModel> = Arc::new(Says(model));
        let mut out = Vec::new();
        let summary = run_all(&cfg, &prompts, &model, &scripts, &mut out).unwrap();
        (summary, String::from_utf8(out).unwrap())
    }

    #[test]
    fn unusable_model_output_fails_the_turn() {
        let (summary, out) = run_with("", "[[turn]]\nsay = \"Hallo\"\n");
        assert_eq!(
            summary,
            Summary {
                passed: 0,
                failed: 1
            },
            "{out}"
        );
        assert!(
            out.contains(
                "  FAIL turn 1: usable model output: the model's output could not be used"
            ),
            "{out}"
        );
    }

    const PRICE_QUESTION: &str =
        "now = \"2026-03-02T10:00\"\n[[turn]]\nsay = \"Was kostet das?\"\n\
        expect = { disclosure = true, handed_over = false, contains = [\"39,90\"] }\n\
        [[turn]]\nsay = \"Und wann habt ihr offen?\"\nexpect = { disclosure = false }\n";

    #[test]
    fn a_script_whose_expectations_hold_passes() {
        let (summary, out) = run_with(
            "Flex kostet 39,90 € im Monat, offen bis 21:00 Uhr.",
            PRICE_QUESTION,
        );
        assert_eq!(
            summary,
            Summary {
                passed: 1,
                failed: 0
            },
            "{out}"
        );
        assert!(out.contains("du: Was kostet das?\n"), "{out}");
        assert!(
            out.contains("Max: Hi, ich bin Max, der digitale Assistent (KI)"),
            "{out}"
        );
        assert!(out.contains("  ok   AI disclosure\n"), "{out}");
        assert!(
            out.contains("  ok   not AI disclosure\n"),
            "the second reply: {out}"
        );
        assert!(out.contains("  ok   reply contains \"39,90\"\n"), "{out}");
        assert!(out.contains("PASS script\n"), "{out}");
    }

    #[test]
    fn an_invented_price_and_a_missing_booking_fail_with_the_reason() {
        let (summary, out) = run_with(
            "Nur heute 19,99 € statt 39,90 €, komm um 6:30 Uhr!",
            "[[turn]]\nsay = \"Was kostet das?\"\nexpect = { booked = true, not_contains = [\"heute\"] }\n",
        );
        assert_eq!(
            summary,
            Summary {
                passed: 0,
                failed: 1
            },
            "{out}"
        );
        assert!(
            out.contains("  FAIL turn 1: booked: it did not happen\n"),
            "{out}"
        );
        assert!(
            out.contains("  FAIL turn 1: reply does not contain \"heute\": it does\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "  FAIL turn 1: no price or time beyond the studio's facts: \
                 not in the facts: 19,99 €, 6:30 Uhr\n"
            ),
            "{out}"
        );
        assert!(out.contains("FAIL script (3 failed expectations)"), "{out}");
    }
}
