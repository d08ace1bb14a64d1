//! `frontdesk chat`: a terminal conversation with the real engine, the configured prompts and
//! the configured model, so a studio can try its persona before going live.
//!
//! It never touches the real store: the conversation lives in a scratch store under the system's
//! temporary directory, sealed with a store identity that exists only in memory, and the
//! directory is removed at exit. (Should the process be killed, what remains is unreadable
//! without that identity.) Bookings are simulated; MagicLine is never called.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use super::exit;
use crate::config::Config;
use crate::conversation::booking::{Booker, BookingOutcome, BookingRequest};
use crate::conversation::engine::{Engine, Turn};
use crate::conversation::prompts::{describe_start, Prompts};
use crate::conversation::when::berlin_now;
use crate::store::crypto::StoreIdentity;
use crate::store::Store;
use crate::turn::{Burst, Part, PartKind};

/// The phone number used when none is given (a number no one has).
const DEFAULT_PHONE: &str = "+49 000 0000000";

/// Runs the chat on stdin/stdout until end of input or `/quit`.
pub fn run(cfg: &Config, phone: Option<String>) -> anyhow::Result<u8> {
    let prompts = Prompts::load(&cfg.service, &cfg.studio)?;
    let model = crate::llm::from_config(&cfg.llm).context("cannot load the language model")?;
    let scratch = ScratchDir::create()?;
    let store = Arc::new(
        Store::open(scratch.path(), StoreIdentity::generate())
            .context("cannot open the scratch store")?,
    );
    let description = model.describe();
    let engine = Engine::new(
        store,
        model,
        Arc::new(prompts),
        cfg.studio.clone(),
        cfg.conversation.clone(),
        Some(Arc::new(SimulatedBooker)),
    );
    let phone = phone.unwrap_or_else(|| DEFAULT_PHONE.to_string());
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "Chatting with {} ({description}). Nothing is kept; bookings are simulated. \
             End with /quit or Ctrl-D.",
            cfg.studio.assistant_name
        );
    }
    let stdin = std::io::stdin();
    chat_loop(
        &engine,
        &phone,
        &cfg.studio.assistant_name,
        stdin.lock(),
        std::io::stdout().lock(),
        interactive,
    )?;
    drop(engine);
    Ok(exit::OK)
}

/// One inbound message per input line; prints the replies and what the engine decided.
pub fn chat_loop(
    engine: &Engine,
    phone: &str,
    assistant_name: &str,
    input: impl BufRead,
    mut out: impl Write,
    interactive: bool,
) -> anyhow::Result<()> {
    let prompt = || {
        if interactive {
            eprint!("> ");
        }
    };
    prompt();
    let mut n = 0u64;
    for line in input.lines() {
        let line = line?;
        let text = line.trim();
        if matches!(text, "/quit" | "/exit") {
            break;
        }
        if text.is_empty() {
            prompt();
            continue;
        }
        n += 1;
        let now = berlin_now();
        let burst = Burst {
            address: phone.to_string(),
            contact_name: None,
            user_id: None,
            parent_user_id: None,
            username: None,
            referral: None,
            parts: vec![Part {
                id: format!("chat.{n}"),
                at: now.timestamp(),
                kind: PartKind::Text(text.to_string()),
                quoted: None,
                button: None,
            }],
        };
        let decided = engine.decide_at(&burst, &now).map_err(anyhow::Error::from);
        let committed = decided.and_then(|mut turn| {
            turn.effects = crate::turn::commit(engine.store(), turn.effects, &(), None)?;
            Ok(turn)
        });
        match committed {
            Ok(turn) => print_turn(&mut out, assistant_name, &turn)?,
            Err(e) => writeln!(out, "[error: {e}]")?,
        }
        out.flush()?;
        prompt();
    }
    Ok(())
}

fn print_turn(out: &mut impl Write, name: &str, turn: &Turn) -> std::io::Result<()> {
    for reply in &turn.replies {
        writeln!(out, "{name}: {reply}")?;
    }
    if turn.replies.is_empty() {
        writeln!(out, "[no reply]")?;
    }
    if let Some(intent) = turn.intent {
        writeln!(out, "[intent: {}]", intent.as_str())?;
    }
    for (from, to) in &turn.stage_changes {
        writeln!(out, "[stage: {} -> {}]", from.label_de(), to.label_de())?;
    }
    for (from, to) in &turn.mode_changes {
        writeln!(out, "[bot mode: {from:?} -> {to:?}]")?;
    }
    for alert in &turn.alerts {
        writeln!(out, "[staff alert: {:?}]", alert.kind)?;
    }
    match &turn.booking {
        Some(BookingOutcome::Booked { start, .. }) => {
            writeln!(out, "[booking simulated: {}]", describe_start(start))?
        }
        Some(other) => writeln!(out, "[booking: {other:?}]")?,
        None => {}
    }
    Ok(())
}

/// Books nothing and reports success, so the whole conversation can be tried.
struct SimulatedBooker;

impl Booker for SimulatedBooker {
    fn book_trial(&self, req: &BookingRequest) -> BookingOutcome {
        BookingOutcome::Booked {
            booking_id: 0,
            start: req.start.clone(),
            magicline_customer_id: 0,
            confirmation_pending: false,
        }
    }
}

/// A private directory under the temporary directory, removed on drop.
struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    fn create() -> anyhow::Result<ScratchDir> {
        use std::os::unix::fs::DirBuilderExt;
        let name = format!("frontdesk-chat-{}", hex::encode(rand::random::<[u8; 8]>()));
        let path = std::env::temp_dir().join(name);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(ScratchDir { path })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConversationConfig;
    use crate::llm::{Generation, LanguageModel, LlmError, Prompt};

    /// Greets, then books whatever the user asks for.
    struct EchoModel;

    impl LanguageModel for EchoModel {
        fn generate(&self, prompt: &Prompt, _: &serde_json::Value) -> Result<Generation, LlmError> {
            let last = &prompt.history.last().unwrap().content;
            let text = if last.contains("buchen") {
                serde_json::json!({"intent": "book_trial",
                    "profil": {"vorname": "Lena", "nachname": "Schmidt", "email": "lena@example.de"},
                    "reply": "Mach ich!", "wunschtermin": "morgen um 18 Uhr"})
            } else {
                serde_json::json!({"intent": "none", "profil": {},
                    "reply": "Hi! Ich bin Max, der digitale Assistent (KI).", "wunschtermin": null})
            };
            Ok(Generation {
                text: text.to_string(),
                prompt_tokens: 1,
                evaluated_prompt_tokens: 1,
                generated_tokens: 1,
            })
        }
        fn describe(&self) -> String {
            "echo".into()
        }
    }

    #[test]
    fn chat_prints_replies_and_decisions_and_stops_at_quit() {
        let scratch = ScratchDir::create().unwrap();
        let kept = scratch.path().to_path_buf();
        assert!(kept.is_dir());
        let store = Arc::new(Store::open(scratch.path(), StoreIdentity::generate()).unwrap());
        let studio = crate::conversation::prompts::tests::studio();
        let prompts = Prompts::load_from(
            &crate::conversation::prompts::tests::shipped_dir(),
            None,
            &studio,
        )
        .unwrap();
        let engine = Engine::new(
            store,
            Arc::new(EchoModel),
            Arc::new(prompts),
            studio,
            ConversationConfig::default(),
            Some(Arc::new(SimulatedBooker)),
        );
        let input = "Hallo\n\nIch will buchen\n/quit\nHallo nochmal\n";
        let mut out = Vec::new();
        chat_loop(
            &engine,
            DEFAULT_PHONE,
            "Max",
            input.as_bytes(),
            &mut out,
            false,
        )
        .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert_eq!(out.matches("Max: ").count(), 2, "{out}");
        assert!(
            out.starts_with("Max: Hi! Ich bin Max, der digitale Assistent (KI).\n[intent: none]\n")
        );
        assert!(
            out.contains("[stage: neuer Interessent -> Name bekannt]"),
            "{out}"
        );
        assert!(
            out.contains("[stage: Name bekannt -> Probetraining gebucht]"),
            "{out}"
        );
        assert!(out.contains("[booking simulated: "), "{out}");
        assert!(out.contains("um 18:00 Uhr]"), "{out}");
        drop(engine);
        drop(scratch);
        assert!(!kept.exists(), "the scratch store is removed");
    }
}
