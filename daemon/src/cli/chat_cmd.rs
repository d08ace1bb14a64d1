//! `frontdesk chat`: a terminal conversation with the real engine, the configured prompts and
//! the configured model, so a studio can try its persona before going live.
//!
//! It never touches the real store: the conversation lives in a scratch store under the system's
//! temporary directory, sealed with a store identity that exists only in memory, and the
//! directory is removed at exit. (Should the process be killed, what remains is unreadable
//! without that identity.) Bookings are simulated; MagicLine is never called.
//!
//! `--script` replays written conversations instead of reading the terminal (`chat_script`);
//! `--openai-url` puts an OpenAI-compatible server in place of the configured model, here and in
//! `frontdesk demo`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use super::exit;
use crate::config::{Config, LlmBackend, LlmConfig};
use crate::conversation::booking::{Booker, BookingOutcome, BookingRequest};
use crate::conversation::engine::{Engine, Turn};
use crate::conversation::prompts::{describe_start, Prompts};
use crate::conversation::when::berlin_now;
use crate::store::crypto::StoreIdentity;
use crate::store::Store;
use crate::turn::{Burst, Part, PartKind};

/// The phone number used when none is given (a number no one has).
pub(super) const DEFAULT_PHONE: &str = "+49 000 0000000";

/// The environment variable an OpenAI-compatible server's API key is read from (never a
/// command-line argument, which other users of the machine could read).
pub const OPENAI_API_KEY_ENV: &str = "FRONTDESK_OPENAI_API_KEY";

/// What `frontdesk chat` takes.
#[derive(clap::Args, Debug)]
pub struct ChatArgs {
    /// Phone number the conversation is filed under (any number; nothing is sent).
    #[arg(long)]
    pub phone: Option<String>,
    /// Replay scripted conversations instead of reading the terminal: a TOML script or a
    /// directory of them (repeatable). Each turn is checked against its expectations; the exit
    /// status is 6 when one fails. The format is described in
    /// /usr/share/doc/frontdesk/operations.md; examples are in
    /// /usr/share/doc/frontdesk/examples/scripts/.
    #[arg(long, value_name = "FILE|DIR")]
    pub script: Vec<PathBuf>,
    /// The model to use instead of the configured one.
    #[command(flatten)]
    pub model: OpenAiArgs,
}

/// An OpenAI-compatible model server in place of the configured model (`chat`, `demo`).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct OpenAiArgs {
    /// Use the OpenAI-compatible server at this address as the model (llama-server, Ollama,
    /// vLLM), e.g. http://127.0.0.1:8081 or http://127.0.0.1:11434/v1 for Ollama. For `chat`,
    /// an API key, if the server needs one, is read from $FRONTDESK_OPENAI_API_KEY.
    #[arg(long, value_name = "URL", value_parser = parse_openai_url)]
    pub openai_url: Option<String>,
    /// The model name sent to that server (Ollama: the pulled model, e.g. qwen2.5:7b-instruct;
    /// llama-server ignores it).
    #[arg(long, value_name = "NAME", requires = "openai_url")]
    pub openai_model: Option<String>,
}

impl OpenAiArgs {
    /// Puts the server in place of the configured backend; `false` when none was given.
    pub fn apply(&self, llm: &mut LlmConfig) -> bool {
        let Some(url) = &self.openai_url else {
            return false;
        };
        llm.backend = LlmBackend::Openai;
        llm.openai_base_url.clone_from(url);
        if let Some(model) = &self.openai_model {
            llm.openai_model.clone_from(model);
        }
        true
    }
}

/// An http(s) address, plain http only on loopback (as `[llm] openai_base_url`); a trailing
/// `/v1` (as Ollama and vLLM document their base URL) is dropped, because the backend adds
/// `/v1/chat/completions` itself.
fn parse_openai_url(s: &str) -> Result<String, String> {
    let url = s.trim().trim_end_matches('/');
    let url = url.strip_suffix("/v1").unwrap_or(url);
    crate::config::check_service_url(url).map_err(|why| format!("{s:?} {why}"))?;
    Ok(url.to_string())
}

/// The configured model, or the OpenAI-compatible server of `args`.
pub fn model(
    cfg: &Config,
    args: &OpenAiArgs,
) -> anyhow::Result<Arc<dyn crate::llm::LanguageModel>> {
    let mut llm = cfg.llm.clone();
    if args.apply(&mut llm) {
        let options = crate::llm::openai::OpenAiOptions::from_config(
            &llm,
            std::env::var(OPENAI_API_KEY_ENV)
                .ok()
                .filter(|k| !k.is_empty()),
        );
        return Ok(Arc::new(crate::llm::openai::OpenAiModel::new(options)));
    }
    crate::llm::from_config(&llm).context("cannot load the language model")
}

/// Runs the chat on stdin/stdout until end of input or `/quit`, or replays the scripts.
pub fn run(cfg: &Config, args: &ChatArgs) -> anyhow::Result<u8> {
    let prompts = Prompts::load(&cfg.service, &cfg.studio)?;
    // Scripts are read before the model is loaded: a mistake in one is reported at once.
    let scripts = if args.script.is_empty() {
        None
    } else {
        Some(super::chat_script::load(&args.script)?)
    };
    let model = model(cfg, &args.model)?;
    if let Some(scripts) = scripts {
        let prompts = Arc::new(prompts);
        let mut out = std::io::stdout().lock();
        writeln!(out, "Model: {}\n", model.describe())?;
        let summary = super::chat_script::run_all(cfg, &prompts, &model, &scripts, &mut out)?;
        let total = summary.passed + summary.failed;
        if summary.failed == 0 {
            writeln!(out, "All {total} scripts passed.")?;
            return Ok(exit::OK);
        }
        writeln!(out, "{} of {total} scripts failed.", summary.failed)?;
        return Ok(exit::EXPECTATION_FAILED);
    }
    let phone = args.phone.clone();
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

/// Prints the replies of a turn and what the engine decided.
pub(super) fn print_turn(out: &mut impl Write, name: &str, turn: &Turn) -> std::io::Result<()> {
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
pub(super) struct SimulatedBooker;

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
pub(super) struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    pub(super) fn create() -> anyhow::Result<ScratchDir> {
        use std::os::unix::fs::DirBuilderExt;
        let name = format!("frontdesk-chat-{}", hex::encode(rand::random::<[u8; 8]>()));
        let path = std::env::temp_dir().join(name);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(ScratchDir { path })
    }

    pub(super) fn path(&self) -> &Path {
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

    fn parse(args: &[&str]) -> Result<crate::cli::Cli, clap::Error> {
        use clap::Parser;
        crate::cli::Cli::try_parse_from(std::iter::once("frontdesk").chain(args.iter().copied()))
    }

    #[test]
    fn chat_and_demo_take_an_openai_compatible_server() {
        let cli = parse(&[
            "chat",
            "--script",
            "a.toml",
            "--script",
            "dir",
            "--openai-url",
            "http://127.0.0.1:11434/v1/",
            "--openai-model",
            "qwen2.5:7b-instruct",
        ])
        .unwrap();
        let crate::cli::Command::Chat(args) = cli.command else {
            panic!("not chat: {cli:?}")
        };
        assert_eq!(args.script, [PathBuf::from("a.toml"), PathBuf::from("dir")]);
        let mut llm = LlmConfig::default();
        assert!(args.model.apply(&mut llm));
        assert_eq!(llm.backend, LlmBackend::Openai);
        assert_eq!(
            llm.openai_base_url, "http://127.0.0.1:11434",
            "/v1 is added per request"
        );
        assert_eq!(llm.openai_model, "qwen2.5:7b-instruct");

        let cli = parse(&["demo", "--openai-url", "https://models.example.org"]).unwrap();
        let crate::cli::Command::Demo { model, server } = cli.command else {
            panic!("not demo: {cli:?}")
        };
        assert_eq!(model, None);
        let mut llm = LlmConfig::default();
        assert!(server.apply(&mut llm));
        assert_eq!(llm.openai_base_url, "https://models.example.org");
        assert_eq!(
            llm.openai_model, "default",
            "the configured name when none is given"
        );

        let mut llm = LlmConfig::default();
        assert!(!OpenAiArgs::default().apply(&mut llm), "without a URL");
        assert_eq!(llm.backend, LlmBackend::Llama);
    }

    #[test]
    fn bad_model_server_arguments_are_refused_with_the_reason() {
        for (args, message) in [
            (
                &["chat", "--openai-url", "http://192.168.1.20:8081"][..],
                "plain http:// is only accepted for 127.0.0.1",
            ),
            (
                &["chat", "--openai-url", "ftp://127.0.0.1"][..],
                "must be an http(s) URL",
            ),
            (
                &["chat", "--openai-model", "llama3"][..],
                "--openai-url <URL>",
            ),
            (
                &[
                    "demo",
                    "--model",
                    "x.gguf",
                    "--openai-url",
                    "http://127.0.0.1:8081",
                ][..],
                "cannot be used with",
            ),
        ] {
            let err = parse(args).unwrap_err().to_string();
            assert!(err.contains(message), "{args:?}: {err}");
        }
    }
}
