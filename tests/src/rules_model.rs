//! A deterministic language model by keyword rules, for the example chat scripts in CI: it
//! reads the conversation as the model gets it (system prompt with the studio's facts, the
//! contact's and the assistant's messages) and answers in the reply schema. It states only what
//! the system prompt's studio facts say, takes names, e-mail and the wished date from the
//! contact's own messages (all of them, as a model reading the history does), and sorts the
//! newest message into an intent by keywords.
//!
//! [`serve`] puts it behind an OpenAI-compatible `/v1/chat/completions` on loopback, so the
//! shipped `frontdesk chat --openai-url` talks to it as to llama-server.

use std::net::SocketAddr;
use std::sync::LazyLock;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use regex::Regex;
use serde_json::{json, Map, Value};

/// The newest contact message and everything they wrote before, oldest first.
struct Conversation<'a> {
    system: &'a str,
    contact: Vec<&'a str>,
}

impl Conversation<'_> {
    fn newest(&self) -> &str {
        self.contact.last().copied().unwrap_or("")
    }
}

static EMAIL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+").expect("a valid pattern"));
static NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i:ich heiße|ich heisse|mein name ist|ich bin)\s+([A-ZÄÖÜ][a-zäöüß]+)(?:\s+([A-ZÄÖÜ][a-zäöüß]+))?")
        .expect("a valid pattern")
});
/// A day and a time in one phrase: "Dienstag um 18 Uhr", "morgen 17:30", "am 5.3. um 18".
static WISH: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)((?:nächsten |kommenden |am )?(?:montag|dienstag|mittwoch|donnerstag|freitag|samstag|sonntag|übermorgen|morgen|heute|\d{1,2}\.\d{1,2}\.)[^,.!?]*?(?:\d{1,2}(?::\d{2})?\s?uhr|\d{1,2}:\d{2}|um \d{1,2}(?:\s?uhr)?))",
    )
    .expect("a valid pattern")
});
/// Words that follow "ich bin" without being a name.
const NOT_NAMES: &[&str] = &["Mitglied", "Kunde", "Kundin", "Neu", "Interessiert"];

fn has(text: &str, words: &[&str]) -> bool {
    let lower = text.to_lowercase();
    words.iter().any(|w| lower.contains(w))
}

/// The lines of a section of the studio facts ("Öffnungszeiten:" followed by "- …" lines, or
/// "Probetraining:" followed by one line); nothing when the facts say "nicht hinterlegt".
fn facts(system: &str, heading: &str) -> Vec<String> {
    let mut lines = system.lines().skip_while(|l| l.trim() != heading).skip(1);
    let mut out = Vec::new();
    for line in lines.by_ref() {
        let line = line.trim();
        match line.strip_prefix("- ") {
            Some(item) => out.push(item.to_string()),
            None if out.is_empty() && !line.is_empty() && !line.ends_with(':') => {
                out.push(line.to_string());
                break;
            }
            None => break,
        }
    }
    out.retain(|l| !l.is_empty() && l != "nicht hinterlegt");
    out
}

fn trial_sentence(system: &str) -> String {
    facts(system, "Probetraining:")
        .first()
        .map(|t| format!(" Zum Probetraining: {t}."))
        .unwrap_or_default()
}

fn answer(intent: &str, profil: Map<String, Value>, reply: String, wish: Option<&str>) -> Value {
    json!({"intent": intent, "profil": profil, "reply": reply, "wunschtermin": wish})
}

/// The model's answer to one request (the reply schema's JSON).
fn decide(c: &Conversation) -> Value {
    let newest = c.newest();
    let offers = facts(c.system, "Angebote und Preise:");
    let hours = facts(c.system, "Öffnungszeiten:");
    let mut profil = Map::new();
    if has(
        newest,
        &[
            "beschwer",
            "unzufrieden",
            "sauer",
            "ärger",
            "frechheit",
            "enttäuscht",
        ],
    ) {
        return answer("complaint", profil, "Das tut mir leid!".into(), None);
    }
    if has(
        newest,
        &["keine nachrichten", "nicht mehr schreiben", "abmelden"],
    ) {
        return answer("opt_out", profil, "Alles klar.".into(), None);
    }
    if has(newest, &["mitglied"]) && !has(newest, &["mitgliedschaft"]) {
        profil.insert("mitglied".into(), json!("ja"));
        let reply = if has(newest, &["offen", "geöffnet", "öffnungszeit"]) && !hours.is_empty() {
            format!(
                "Schön, dass du schon bei uns trainierst! Unsere Öffnungszeiten: {}.",
                hours.join(", ")
            )
        } else {
            "Schön, dass du schon bei uns trainierst! Wobei kann ich dir helfen?".into()
        };
        return answer("question", profil, reply, None);
    }
    let cheapest = offers.first().cloned();
    if has(
        newest,
        &["zu teuer", "kann ich mir nicht leisten", "zu viel geld"],
    ) {
        profil.insert("budget_bewusst".into(), json!("ja"));
        let offer = cheapest
            .map(|o| format!(" Unser Angebot: {o}."))
            .unwrap_or_default();
        return answer(
            "none",
            profil,
            format!(
                "Verstehe ich gut!{offer}{} Magst du es einfach unverbindlich ausprobieren?",
                trial_sentence(c.system)
            ),
            None,
        );
    }
    if has(newest, &["überlegen", "nachdenken", "bin unsicher"]) {
        profil.insert("interesse_level".into(), json!("mittel"));
        return answer(
            "none",
            profil,
            format!(
                "Klar, lass dir ruhig Zeit!{} Sag einfach Bescheid, wenn du einen Termin möchtest.",
                trial_sentence(c.system)
            ),
            None,
        );
    }
    if has(
        newest,
        &["kostet", "preis", "kosten", "tarif", "mitgliedschaft"],
    ) {
        let reply = if offers.is_empty() {
            "Preise habe ich leider nicht hinterlegt – das Team meldet sich gern bei dir.".into()
        } else {
            format!(
                "Unsere Angebote: {}.{} Möchtest du es ausprobieren?",
                offers.join("; "),
                trial_sentence(c.system)
            )
        };
        return answer("question", profil, reply, None);
    }
    if has(newest, &["geöffnet", "öffnungszeit", "offen"]) && !hours.is_empty() {
        let reply = format!("Unsere Öffnungszeiten: {}.", hours.join(", "));
        return answer("question", profil, reply, None);
    }
    booking(c, profil)
}

/// Collects name, e-mail and wished date from everything the contact wrote; asks for what is
/// missing.
fn booking(c: &Conversation, mut profil: Map<String, Value>) -> Value {
    let newest = c.newest();
    let mut first = None;
    let mut email = None;
    for text in &c.contact {
        if let Some(m) = NAME.captures(text) {
            if !NOT_NAMES.contains(&&m[1]) {
                first = Some(m[1].to_string());
                if let Some(last) = m.get(2).filter(|l| !NOT_NAMES.contains(&l.as_str())) {
                    profil.insert("nachname".into(), json!(last.as_str()));
                }
            }
        }
        if let Some(m) = EMAIL.find(text) {
            email = Some(m.as_str().trim_end_matches('.').to_string());
        }
    }
    let wish = c
        .contact
        .iter()
        .rev()
        .find_map(|t| WISH.captures(t).map(|m| m[1].trim().to_string()));
    let asks = has(
        newest,
        &[
            "probetraining",
            "termin",
            "buchen",
            "ausprobieren",
            "vorbeikommen",
        ],
    ) || NAME.is_match(newest)
        || EMAIL.is_match(newest)
        || WISH.is_match(newest);
    let member = c
        .contact
        .iter()
        .any(|t| has(t, &["mitglied"]) && !has(t, &["mitgliedschaft"]));
    if member && !asks {
        // Members are never offered a trial.
        let reply = "Gern! Melde dich einfach, wenn du noch etwas brauchst.".into();
        return answer("none", profil, reply, None);
    }
    if !asks {
        return answer(
            "none",
            profil,
            "Hallo! Wie kann ich dir helfen? Möchtest du ein kostenloses Probetraining ausmachen?"
                .into(),
            None,
        );
    }
    if let Some(first) = &first {
        profil.insert("vorname".into(), json!(first));
    }
    if let Some(email) = &email {
        profil.insert("email".into(), json!(email));
    }
    let reply = if first.is_none() || !profil.contains_key("nachname") {
        "Gern! Wie heißt du mit Vor- und Nachnamen?".to_string()
    } else if email.is_none() {
        format!(
            "Danke, {}! Wie lautet deine E-Mail-Adresse?",
            first.as_deref().unwrap_or("")
        )
    } else if wish.is_none() {
        "Wann passt es dir am besten? Nenn mir einfach Tag und Uhrzeit.".to_string()
    } else {
        "Perfekt, ich trage dich ein!".to_string()
    };
    answer("book_trial", profil, reply, wish.as_deref())
}

/// The answer to one `/v1/chat/completions` body.
pub fn complete(body: &Value) -> Value {
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let system = messages
        .iter()
        .filter(|m| m["role"] == "system")
        .filter_map(|m| m["content"].as_str())
        .next()
        .unwrap_or("");
    let contact = messages
        .iter()
        .filter(|m| m["role"] == "user")
        .filter_map(|m| m["content"].as_str())
        .collect();
    let reply = decide(&Conversation { system, contact });
    json!({
        "object": "chat.completion",
        "model": "rules",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": reply.to_string()}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    })
}

/// The rules model served on loopback; stops when dropped.
pub struct RulesServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RulesServer {
    /// The base URL to pass as `--openai-url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for RulesServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn handle(
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let path = req.uri().path().to_string();
    let body = req.into_body().collect().await?.to_bytes();
    let (status, answer) = match serde_json::from_slice::<Value>(&body) {
        Ok(body) if path == "/v1/chat/completions" => (StatusCode::OK, complete(&body)),
        Ok(_) => (
            StatusCode::NOT_FOUND,
            json!({"error": {"type": "not_found"}}),
        ),
        Err(_) => (
            StatusCode::BAD_REQUEST,
            json!({"error": {"type": "invalid_json"}}),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(answer.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        "content-type",
        "application/json".parse().expect("a valid header"),
    );
    Ok(response)
}

/// Starts the server on 127.0.0.1 with a port the system picks.
pub fn serve() -> RulesServer {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("bound address");
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            loop {
                tokio::select! {
                    _ = &mut stop_rx => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        tokio::spawn(async move {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service_fn(handle))
                                .await;
                        });
                    }
                }
            }
        });
    });
    RulesServer {
        addr,
        stop: Some(stop_tx),
        thread: Some(thread),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYSTEM: &str = "Studio: Test\nÖffnungszeiten:\n- Mo–Fr 8:00–21:00\nAngebote und Preise:\n\
        - EMS 1×/Woche: 49 € im Monat\nProbetraining:\n20 Minuten, kostenlos\n\n# Was du nie tust\n";

    fn ask(contact: &[&str]) -> Value {
        decide(&Conversation {
            system: SYSTEM,
            contact: contact.to_vec(),
        })
    }

    #[test]
    fn facts_come_from_the_system_prompt_only() {
        assert_eq!(facts(SYSTEM, "Öffnungszeiten:"), ["Mo–Fr 8:00–21:00"]);
        assert_eq!(facts(SYSTEM, "Probetraining:"), ["20 Minuten, kostenlos"]);
        let a = ask(&["Was kostet das?"]);
        assert_eq!(a["intent"], "question");
        assert!(a["reply"].as_str().unwrap().contains("49 € im Monat"));
        let none = "Angebote und Preise:\n- nicht hinterlegt\nProbetraining:\n";
        assert!(facts(none, "Angebote und Preise:").is_empty());
    }

    #[test]
    fn the_wish_said_first_is_passed_on_when_the_e_mail_comes_last() {
        let a = ask(&["Geht Dienstag um 18 Uhr ein Probetraining?"]);
        assert_eq!(a["intent"], "book_trial");
        assert_eq!(a["wunschtermin"], "Dienstag um 18 Uhr");
        let a = ask(&[
            "Geht Dienstag um 18 Uhr ein Probetraining?",
            "Ich heiße Jonas Becker",
            "jonas.becker@example.de",
        ]);
        assert_eq!(a["profil"]["vorname"], "Jonas");
        assert_eq!(a["profil"]["nachname"], "Becker");
        assert_eq!(a["profil"]["email"], "jonas.becker@example.de");
        assert_eq!(a["wunschtermin"], "Dienstag um 18 Uhr");
    }

    #[test]
    fn members_complaints_and_objections() {
        let a = ask(&["Ich bin schon Mitglied, wann habt ihr offen?"]);
        assert_eq!(a["profil"]["mitglied"], "ja");
        assert!(a["profil"].get("vorname").is_none());
        assert_eq!(ask(&["Ich will mich beschweren!"])["intent"], "complaint");
        let a = ask(&["Das ist mir zu teuer"]);
        assert_eq!(a["profil"]["budget_bewusst"], "ja");
        assert!(a["reply"].as_str().unwrap().contains("49 €"));
    }
}
