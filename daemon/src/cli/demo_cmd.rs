//! `frontdesk demo`: the whole product on one machine, with nothing to configure. It starts the
//! daemon in-process with a throwaway state directory and development credentials, the small
//! model (or an OpenAI-compatible server given with `--openai-url`), and the WhatsApp and
//! MagicLine simulators; every line typed travels the real signed webhook path and the reply
//! comes back through the real sender.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::chat_cmd::OpenAiArgs;
use super::exit;
use crate::config::Config;
use crate::sandbox::magicline::{self as ml_sim, SimConfig};
use crate::sandbox::whatsapp::{
    self as wa_sim, PayloadBuilder, WebhookDriver, SIM_APP_SECRET, SIM_GRAPH_VERSION,
    SIM_PHONE_NUMBER_ID, SIM_TOKEN,
};
use crate::store::crypto::StoreIdentity;

/// The demo customer's WhatsApp number.
const DEMO_PHONE: &str = "4915112345678";
const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Finds the demo model: `--model`, `FRONTDESK_TEST_MODEL`, the set-up's cache, the box's models.
fn find_model(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let candidates: Vec<PathBuf> = explicit
        .map(Path::to_path_buf)
        .into_iter()
        .chain(std::env::var_os("FRONTDESK_TEST_MODEL").map(PathBuf::from))
        .chain([
            PathBuf::from(".cache/models").join(MODEL_FILE),
            PathBuf::from("/var/lib/frontdesk/models").join(MODEL_FILE),
        ])
        .collect();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .with_context(|| {
            format!("no demo model found (looked at {candidates:?}); run ./install.sh --dev or pass --model")
        })
}

fn find_prompts() -> PathBuf {
    ["prompts", "/usr/share/frontdesk/prompts"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("persona.static.txt").is_file())
        .unwrap_or_else(|| PathBuf::from("prompts"))
}

/// The other WhatsApp message types a line can send.
const DEMO_COMMANDS: &str = "Other message types: /welcome (open the chat without writing), \
/image TEXT (a picture with a caption), /ad TEXT (a message from a click-to-WhatsApp ad), \
/quote TEXT (a swipe-reply to the studio's last message), /form (a submitted WhatsApp Flow), \
/edit TEXT (edit your last message), /delete (delete your last message).";

/// The webhook payload for one typed line, and whether WhatsApp's contact expects an answer to
/// it. `last_reply`: the id of the studio's last message; `own`: the id of the contact's last
/// message.
fn demo_payload(
    p: &PayloadBuilder,
    line: &str,
    id: &str,
    ts: i64,
    last_reply: Option<&str>,
    own: Option<&str>,
) -> (serde_json::Value, bool) {
    let (command, rest) = line
        .trim()
        .split_once(' ')
        .map_or((line.trim(), ""), |(c, r)| (c, r.trim()));
    let text = |t: &str| p.text_message(DEMO_PHONE, id, t, ts);
    match (command, own) {
        ("/welcome", _) => (p.welcome_request(DEMO_PHONE, id, ts), true),
        ("/image", _) => (
            p.media_with_caption(
                DEMO_PHONE,
                id,
                crate::whatsapp::payload::MediaKind::Image,
                rest,
                ts,
            ),
            true,
        ),
        ("/ad", _) => (
            p.from_ad(text(rest), "120200000000000001", "Probetraining gratis"),
            true,
        ),
        ("/quote", _) => match last_reply {
            Some(quoted) => (p.quoting(text(rest), quoted), true),
            None => (text(rest), true),
        },
        ("/form", _) => (
            p.flow_reply(
                DEMO_PHONE,
                id,
                &serde_json::json!({ "vorname": "Alex", "nachname": "Beispiel", "email": "alex@example.org" }),
                ts,
            ),
            true,
        ),
        ("/edit", Some(own)) => (p.edit(DEMO_PHONE, id, own, rest, ts), false),
        ("/delete", Some(own)) => (p.revoke(DEMO_PHONE, id, own, ts), false),
        _ => (text(line), true),
    }
}

/// The model the demo answers with.
enum DemoModel {
    /// A GGUF file run by the embedded llama.cpp.
    File(PathBuf),
    /// An OpenAI-compatible server.
    Server(OpenAiArgs),
}

/// Runs the demo; lines come from stdin (a terminal or a pipe).
pub fn run(model: Option<&Path>, server: &OpenAiArgs) -> anyhow::Result<u8> {
    let model = if server.openai_url.is_some() {
        DemoModel::Server(server.clone())
    } else {
        DemoModel::File(find_model(model)?)
    };
    let dir = std::env::temp_dir().join(format!("frontdesk-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run_in(&dir, &model);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[expect(
    clippy::too_many_lines,
    reason = "the demo reads as its script: simulators, configuration, daemon, the chat loop"
)]
fn run_in(dir: &Path, model: &DemoModel) -> anyhow::Result<u8> {
    crate::logging::init("warn", false);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let graph = wa_sim::start().await;
        let magicline = ml_sim::start(SimConfig::default()).await;

        let creds = dir.join("credentials");
        std::fs::create_dir_all(&creds)?;
        std::fs::write(
            creds.join("store-identity"),
            StoreIdentity::generate().to_secret_line().as_bytes(),
        )?;
        std::fs::write(creds.join("whatsapp-app-secret"), SIM_APP_SECRET)?;
        std::fs::write(creds.join("whatsapp-token"), SIM_TOKEN)?;
        std::fs::write(creds.join("whatsapp-verify-token"), "demo-verify-token")?;
        std::fs::write(creds.join("magicline-api-key"), magicline.api_key())?;

        let mut cfg = Config {
            source: dir.join("demo.toml"),
            ..Config::default()
        };
        cfg.service.state_dir = dir.join("state");
        cfg.service.admin_socket = dir.join("admin.sock");
        cfg.service.credentials_dir = Some(creds);
        cfg.service.prompts_dir = find_prompts();
        cfg.service.prompts_override_dir = dir.join("prompts");
        cfg.service.log_level = "warn".into();
        cfg.studio.name = "EMS-Studio Demo".into();
        cfg.studio.address = "Musterstraße 1, 38100 Braunschweig".into();
        cfg.studio.opening_hours = vec!["Mo–Fr 8:00–21:00".into(), "Sa 9:00–14:00".into()];
        cfg.studio.offers = vec!["EMS-Training 1×/Woche: 49 € im Monat".into()];
        cfg.studio.trial_info = "20 Minuten EMS mit Trainer, kostenlos".into();
        // Port 0: the system picks free ports, read back from the bound listeners.
        cfg.webhook.listen = "127.0.0.1:0".parse()?;
        cfg.metrics.listen = "127.0.0.1:0".parse()?;
        cfg.console.listen = "127.0.0.1:0".parse()?;
        let listeners = crate::service::Listeners::bind(&cfg).await?;
        let webhook_url = format!("http://{}/webhook", listeners.webhook.local_addr()?);
        cfg.whatsapp.graph_base = graph.base_url();
        cfg.whatsapp.api_version = SIM_GRAPH_VERSION.into();
        cfg.whatsapp.phone_number_id = SIM_PHONE_NUMBER_ID.into();
        match model {
            DemoModel::File(path) => {
                cfg.llm.model_path.clone_from(path);
                cfg.llm.chat_template = Some("chatml".into());
                cfg.llm.context_size = 4096;
                cfg.llm.max_tokens = 160;
                println!("frontdesk demo: loading the model {} …", path.display());
            }
            DemoModel::Server(server) => {
                // A real model writes longer replies than the small one: room for them.
                server.apply(&mut cfg.llm);
                cfg.llm.max_tokens = 400;
                println!(
                    "frontdesk demo: the model server {} (model {}) answers …",
                    cfg.llm.openai_base_url, cfg.llm.openai_model
                );
            }
        }
        cfg.conversation.burst_window_ms = 0;
        cfg.magicline.base_url = magicline.base_url();
        // The simulated studio sends no webhooks: its bookings are read instead.
        cfg.magicline.events = crate::config::MagicLineEvents::Poll;

        let ready = Arc::new(tokio::sync::Notify::new());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let opts = crate::service::ServeOptions {
            ready: Some(ready.clone()),
            ..Default::default()
        };
        let mut daemon = tokio::spawn(crate::service::run(cfg, listeners, opts, async {
            let _ = stop_rx.await;
        }));
        tokio::select! {
            _ = ready.notified() => {}
            r = &mut daemon => {
                return match r {
                    Ok(Err(e)) => Err(e),
                    _ => Err(anyhow::anyhow!("the daemon stopped during start-up")),
                };
            }
        }
        println!(
            "Ready. You write as the customer +{DEMO_PHONE}; each line goes through the signed \
             webhook, the encrypted store, the model and the Graph API simulator. Empty line or \
             Ctrl-D ends the demo.\n{DEMO_COMMANDS}\n"
        );

        let driver = WebhookDriver::new(&webhook_url, SIM_APP_SECRET)?;
        let payloads = PayloadBuilder::default();
        let (line_tx, mut line_rx) = tokio::sync::mpsc::channel::<String>(1);
        std::thread::spawn(move || {
            let stdin = std::io::stdin();
            for line in stdin.lock().lines().map_while(Result::ok) {
                if line.trim().is_empty() || line_tx.blocking_send(line).is_err() {
                    break;
                }
            }
        });
        let mut n = 0u32;
        let mut answered = 0usize;
        loop {
            print!("du> ");
            std::io::stdout().flush()?;
            let Some(line) = line_rx.recv().await else {
                break;
            };
            n += 1;
            let id = format!("wamid.demo.{n}");
            let ts = jiff::Timestamp::now().as_second();
            let last_reply = graph
                .sent()
                .into_iter()
                .rev()
                .find(|s| s.recipient == DEMO_PHONE)
                .map(|s| s.id);
            let own = (n > 1).then(|| format!("wamid.demo.{}", n - 1));
            let (payload, expects_reply) = demo_payload(
                &payloads,
                &line,
                &id,
                ts,
                last_reply.as_deref(),
                own.as_deref(),
            );
            let delivery = driver.deliver(&payload).await;
            if !delivery.delivered() {
                println!("(webhook answered {:?})", delivery.status);
                continue;
            }
            if !expects_reply {
                println!("(recorded; WhatsApp never answers an edit or a deletion)");
                continue;
            }
            let bookings_before = magicline.bookings().len();
            match graph
                .wait_for_sent(answered + 1, Duration::from_secs(180))
                .await
            {
                Ok(_) => {
                    let texts = graph.texts_to(DEMO_PHONE);
                    for t in &texts[answered.min(texts.len())..] {
                        println!("studio> {t}");
                    }
                    answered = texts.len();
                }
                Err(_) => println!("(no reply: the assistant stays silent here)"),
            }
            if magicline.bookings().len() > bookings_before {
                println!("(MagicLine simulator: trial training booked)");
            }
        }
        let _ = stop_tx.send(());
        // The daemon's graceful stop (turns finished, store flushed, `service.stopped` audited)
        // completes before the state directory is deleted.
        if let Ok(Err(e)) = daemon.await {
            eprintln!("the daemon stopped with an error: {e:#}");
        }
        println!("\nDemo finished; its state directory is deleted.");
        anyhow::Ok(exit::OK)
    })
}
