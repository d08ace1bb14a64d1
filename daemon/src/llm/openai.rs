//! The OpenAI-compatible HTTP backend (llama-server, vLLM, ...): `POST /v1/chat/completions`
//! with a strict JSON-schema response format. The server's output is checked again here (it
//! must parse as JSON and match the schema's types, required keys and enums), because not
//! every server enforces the response format.

use std::time::Duration;

use serde_json::{json, Value};

use super::{Generation, LanguageModel, LlmError, Prompt, Role};
use crate::config::LlmConfig;

/// Largest response body accepted.
const MAX_RESPONSE_BYTES: u64 = 4 * 1024 * 1024;

/// Connection and sampling settings.
#[derive(Clone)]
pub struct OpenAiOptions {
    /// Without the `/v1/...` path, e.g. `http://127.0.0.1:8081`.
    pub base_url: String,
    /// Model name sent with each request (servers with one model ignore it).
    pub model: String,
    /// Sent as a bearer token when set.
    pub api_key: Option<String>,
    /// Limit for a whole request, connection to last byte.
    pub timeout: Duration,
    /// Sampling temperature sent to the server.
    pub temperature: f32,
    /// Nucleus sampling threshold sent to the server.
    pub top_p: f32,
    /// Most tokens the server may generate for one reply.
    pub max_tokens: u32,
    /// 0: no seed sent.
    pub seed: u32,
}

impl std::fmt::Debug for OpenAiOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiOptions")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl OpenAiOptions {
    /// Takes the settings from `[llm]`; the API key is passed separately (it is not part of the
    /// configuration file).
    pub fn from_config(cfg: &LlmConfig, api_key: Option<String>) -> Self {
        OpenAiOptions {
            base_url: cfg.openai_base_url.clone(),
            model: cfg.openai_model.clone(),
            api_key,
            timeout: Duration::from_secs(cfg.request_timeout_secs.max(1)),
            temperature: cfg.temperature,
            top_p: cfg.top_p,
            max_tokens: cfg.max_tokens,
            seed: cfg.seed,
        }
    }
}

/// See the module doc.
pub struct OpenAiModel {
    agent: ureq::Agent,
    url: String,
    options: OpenAiOptions,
}

impl OpenAiModel {
    /// Prepares the HTTP client; nothing is contacted until the first request.
    pub fn new(options: OpenAiOptions) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(options.timeout))
            // Error statuses are read and mapped here, not turned into transport errors.
            .http_status_as_error(false)
            .build()
            .into();
        let url = format!(
            "{}/v1/chat/completions",
            options.base_url.trim_end_matches('/')
        );
        OpenAiModel {
            agent,
            url,
            options,
        }
    }

    fn request_body(&self, prompt: &Prompt, schema: &Value) -> Value {
        // Static text first so servers with prompt caching reuse it across requests.
        let system = [prompt.static_system.trim(), prompt.dynamic_system.trim()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("\n\n");
        let mut messages = Vec::with_capacity(prompt.history.len() + 1);
        if !system.is_empty() {
            messages.push(json!({"role": "system", "content": system}));
        }
        for m in &prompt.history {
            let role = match m.role {
                Role::System => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            messages.push(json!({"role": role, "content": m.content}));
        }
        let mut body = json!({
            "model": self.options.model,
            "messages": messages,
            "temperature": self.options.temperature,
            "top_p": self.options.top_p,
            "max_tokens": self.options.max_tokens,
            "stream": false,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "reply", "schema": schema, "strict": true}
            }
        });
        if self.options.seed != 0 {
            body["seed"] = json!(self.options.seed);
        }
        body
    }
}

impl LanguageModel for OpenAiModel {
    fn generate(&self, prompt: &Prompt, schema: &Value) -> Result<Generation, LlmError> {
        let body = self.request_body(prompt, schema);
        let mut request = self.agent.post(&self.url);
        if let Some(key) = &self.options.api_key {
            request = request.header("Authorization", format!("Bearer {key}"));
        }
        let mut response = request
            .send_json(&body)
            .map_err(|e| LlmError::Http(e.to_string()))?;
        let status = response.status().as_u16();
        let reply: Value = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .read_json()
            .map_err(|e| LlmError::Http(format!("status {status}, unreadable body: {e}")))?;
        if !(200..300).contains(&status) {
            // Only the error's type: its message may quote the prompt.
            let kind = reply["error"]["type"]
                .as_str()
                .or(reply["error"]["code"].as_str())
                .unwrap_or("unknown");
            return Err(LlmError::Http(format!("status {status} ({kind})")));
        }
        let choice = &reply["choices"][0];
        let text = choice["message"]["content"]
            .as_str()
            .ok_or_else(|| LlmError::Http("response without choices[0].message.content".into()))?;
        if choice["finish_reason"] == "length" {
            return Err(LlmError::Schema(format!(
                "output cut off at {} tokens",
                self.options.max_tokens
            )));
        }
        let value: Value =
            serde_json::from_str(text).map_err(|e| LlmError::Schema(format!("not JSON: {e}")))?;
        check_schema(&value, schema, "$").map_err(LlmError::Schema)?;

        let usage = &reply["usage"];
        let prompt_tokens = as_u32(&usage["prompt_tokens"]);
        // OpenAI reports cached prompt tokens; llama-server reports the evaluated ones.
        let evaluated = match (
            usage["prompt_tokens_details"]["cached_tokens"].as_u64(),
            reply["timings"]["prompt_n"].as_u64(),
        ) {
            (Some(cached), _) => {
                prompt_tokens.saturating_sub(u32::try_from(cached).unwrap_or(u32::MAX))
            }
            (None, Some(n)) => u32::try_from(n).unwrap_or(u32::MAX),
            (None, None) => prompt_tokens,
        };
        Ok(Generation {
            text: text.to_owned(),
            prompt_tokens,
            evaluated_prompt_tokens: evaluated,
            generated_tokens: as_u32(&usage["completion_tokens"]),
        })
    }

    fn describe(&self) -> String {
        format!(
            "OpenAI-compatible server {} (model {})",
            self.options.base_url, self.options.model
        )
    }
}

fn as_u32(v: &Value) -> u32 {
    v.as_u64().and_then(|n| u32::try_from(n).ok()).unwrap_or(0)
}

/// Checks the parts of JSON Schema that reply schemas use: `type`, `enum`, `required`,
/// `properties`, `additionalProperties: false`, `items`. Errors name the path, never the value.
pub fn check_schema(value: &Value, schema: &Value, path: &str) -> Result<(), String> {
    if let Some(types) = schema.get("type") {
        let allowed: Vec<&str> = match types {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !allowed.is_empty() && !allowed.iter().any(|t| has_type(value, t)) {
            return Err(format!("{path}: expected {}", allowed.join(" or ")));
        }
    }
    if let Some(Value::Array(options)) = schema.get("enum") {
        if !options.contains(value) {
            return Err(format!("{path}: not one of the allowed values"));
        }
    }
    if let Some(obj) = value.as_object() {
        if let Some(Value::Array(required)) = schema.get("required") {
            for key in required.iter().filter_map(Value::as_str) {
                if !obj.contains_key(key) {
                    return Err(format!("{path}: missing required key {key}"));
                }
            }
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        for (key, v) in obj {
            match properties.and_then(|p| p.get(key)) {
                Some(sub) => check_schema(v, sub, &format!("{path}.{key}"))?,
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    return Err(format!("{path}: unexpected key {key}"));
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, v) in array.iter().enumerate() {
            check_schema(v, items, &format!("{path}[{i}]"))?;
        }
    }
    Ok(())
}

fn has_type(value: &Value, t: &str) -> bool {
    match t {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::ChatMessage;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper::{Request, Response};
    use hyper_util::rt::TokioIo;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    /// What the simulated server does with one request.
    enum Canned {
        Reply(u16, Value),
        /// Never answers (for the client timeout).
        Hang,
    }

    /// Path, authorization header and JSON body of each request.
    type Recorded = Arc<Mutex<Vec<(String, Option<String>, Value)>>>;

    struct Server {
        base_url: String,
        requests: Recorded,
    }

    /// A loopback HTTP server answering with `canned` in order; records path, authorization
    /// header and JSON body of each request.
    fn serve(canned: Vec<Canned>) -> Server {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let canned = Arc::new(Mutex::new(VecDeque::from(canned)));
        let recorded = Arc::clone(&requests);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let (canned, recorded) = (Arc::clone(&canned), Arc::clone(&recorded));
                    tokio::spawn(async move {
                        let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                            let (canned, recorded) = (Arc::clone(&canned), Arc::clone(&recorded));
                            async move {
                                let path = req.uri().path().to_owned();
                                let auth = req
                                    .headers()
                                    .get("authorization")
                                    .map(|v| v.to_str().unwrap().to_owned());
                                let body = req.into_body().collect().await?.to_bytes();
                                let json: Value =
                                    serde_json::from_slice(&body).unwrap_or(Value::Null);
                                recorded.lock().unwrap().push((path, auth, json));
                                let next = canned.lock().unwrap().pop_front();
                                match next {
                                    Some(Canned::Reply(status, body)) => Ok::<_, hyper::Error>(
                                        Response::builder()
                                            .status(status)
                                            .header("content-type", "application/json")
                                            .body(Full::new(Bytes::from(body.to_string())))
                                            .unwrap(),
                                    ),
                                    Some(Canned::Hang) | None => std::future::pending().await,
                                }
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        Server { base_url, requests }
    }

    fn options(base_url: &str) -> OpenAiOptions {
        OpenAiOptions {
            base_url: format!("{base_url}/"),
            model: "test-model".into(),
            api_key: Some("sk-test".into()),
            timeout: Duration::from_secs(2),
            temperature: 0.5,
            top_p: 0.9,
            max_tokens: 200,
            seed: 0,
        }
    }

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "reply": {"type": "string"},
                "profil": {"type": "object", "properties": {"vorname": {"type": "string"}}},
                "intent": {"enum": ["none", "book_trial", "question"]},
                "wunschtermin": {"type": ["string", "null"]}
            },
            "required": ["reply", "profil", "intent", "wunschtermin"],
            "additionalProperties": false
        })
    }

    fn prompt() -> Prompt {
        Prompt {
            static_system: "Du bist Lena.".into(),
            dynamic_system: "Heute ist Montag.".into(),
            history: vec![
                ChatMessage {
                    role: Role::User,
                    content: "Hallo".into(),
                },
                ChatMessage {
                    role: Role::Assistant,
                    content: "Hi!".into(),
                },
                ChatMessage {
                    role: Role::User,
                    content: "Probetraining?".into(),
                },
            ],
        }
    }

    fn completion(content: &str, finish: &str) -> Value {
        json!({
            "id": "cmpl-1",
            "object": "chat.completion",
            "choices": [{"index": 0, "finish_reason": finish,
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 120, "completion_tokens": 30,
                      "prompt_tokens_details": {"cached_tokens": 100}}
        })
    }

    const GOOD: &str = r#"{"reply":"Gerne! Wann passt es dir?","profil":{"vorname":"Max"},"intent":"book_trial","wunschtermin":null}"#;

    #[test]
    fn sends_a_strict_schema_request_and_returns_the_reply() {
        let server = serve(vec![Canned::Reply(200, completion(GOOD, "stop"))]);
        let model = OpenAiModel::new(options(&server.base_url));
        let g = model.generate(&prompt(), &schema()).unwrap();
        assert_eq!(g.text, GOOD);
        assert_eq!(
            (
                g.prompt_tokens,
                g.evaluated_prompt_tokens,
                g.generated_tokens
            ),
            (120, 20, 30)
        );

        let requests = server.requests.lock().unwrap();
        let (path, auth, body) = &requests[0];
        assert_eq!(path, "/v1/chat/completions");
        assert_eq!(auth.as_deref(), Some("Bearer sk-test"));
        assert_eq!(body["model"], "test-model");
        assert_eq!(body["max_tokens"], 200);
        assert_eq!(body["temperature"], 0.5);
        assert_eq!(body["response_format"]["type"], "json_schema");
        assert_eq!(body["response_format"]["json_schema"]["strict"], true);
        assert_eq!(body["response_format"]["json_schema"]["schema"], schema());
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 4);
        assert_eq!(
            messages[0],
            json!({"role": "system", "content": "Du bist Lena.\n\nHeute ist Montag."})
        );
        assert_eq!(messages[2], json!({"role": "assistant", "content": "Hi!"}));
        assert_eq!(messages[3]["content"], "Probetraining?");
        assert!(body.get("seed").is_none());
        assert!(model.describe().contains("test-model"));
    }

    #[test]
    fn llama_server_timings_give_the_evaluated_prompt_tokens() {
        let mut reply = completion(GOOD, "stop");
        reply["usage"]
            .as_object_mut()
            .unwrap()
            .remove("prompt_tokens_details");
        reply["timings"] = json!({"prompt_n": 7, "cache_n": 113});
        let server = serve(vec![Canned::Reply(200, reply)]);
        let g = OpenAiModel::new(options(&server.base_url))
            .generate(&prompt(), &schema())
            .unwrap();
        assert_eq!((g.prompt_tokens, g.evaluated_prompt_tokens), (120, 7));
    }

    #[test]
    fn output_that_breaks_the_schema_is_rejected() {
        let cases = [
            "Gerne!",                                                                 // not JSON
            r#"{"reply":"x","profil":{},"intent":"book_trial"}"#,                     // missing key
            r#"{"reply":"x","profil":{},"intent":"dance","wunschtermin":null}"#,      // not in enum
            r#"{"reply":1,"profil":{},"intent":"none","wunschtermin":null}"#,         // wrong type
            r#"{"reply":"x","profil":{},"intent":"none","wunschtermin":null,"x":1}"#, // extra key
        ];
        let server = serve(
            cases
                .iter()
                .map(|c| Canned::Reply(200, completion(c, "stop")))
                .collect(),
        );
        let model = OpenAiModel::new(options(&server.base_url));
        for case in cases {
            let err = model.generate(&prompt(), &schema()).unwrap_err();
            assert!(matches!(err, LlmError::Schema(_)), "{case}: {err:?}");
        }
    }

    #[test]
    fn a_truncated_reply_is_a_schema_error() {
        let server = serve(vec![Canned::Reply(
            200,
            completion(r#"{"reply":"Gern"#, "length"),
        )]);
        let err = OpenAiModel::new(options(&server.base_url))
            .generate(&prompt(), &schema())
            .unwrap_err();
        assert!(matches!(err, LlmError::Schema(_)), "{err:?}");
    }

    #[test]
    fn server_errors_and_timeouts_are_http_errors() {
        let server = serve(vec![
            Canned::Reply(
                500,
                json!({"error": {"type": "server_error", "message": "Hallo from the prompt"}}),
            ),
            Canned::Reply(200, json!({"choices": []})),
            Canned::Hang,
        ]);
        let mut opts = options(&server.base_url);
        opts.timeout = Duration::from_millis(500);
        let model = OpenAiModel::new(opts);
        let err = model.generate(&prompt(), &schema()).unwrap_err();
        match err {
            LlmError::Http(m) => {
                assert!(m.contains("500") && m.contains("server_error"), "{m}");
                assert!(
                    !m.contains("Hallo"),
                    "the server's message is not passed on"
                );
            }
            e => panic!("{e:?}"),
        }
        assert!(matches!(
            model.generate(&prompt(), &schema()),
            Err(LlmError::Http(_))
        ));
        assert!(matches!(
            model.generate(&prompt(), &schema()),
            Err(LlmError::Http(_))
        ));
    }

    #[test]
    fn a_refused_connection_is_an_http_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let model = OpenAiModel::new(options(&format!("http://127.0.0.1:{port}")));
        assert!(matches!(
            model.generate(&prompt(), &schema()),
            Err(LlmError::Http(_))
        ));
    }

    #[test]
    fn options_debug_hides_the_key() {
        let text = format!("{:?}", options("http://127.0.0.1:1"));
        assert!(!text.contains("sk-test"));
    }

    #[test]
    fn schema_check_accepts_valid_values() {
        let v: Value = serde_json::from_str(GOOD).unwrap();
        check_schema(&v, &schema(), "$").unwrap();
        let arr = json!({"type": "array", "items": {"type": "integer"}});
        check_schema(&json!([1, 2]), &arr, "$").unwrap();
        assert!(check_schema(&json!([1, "a"]), &arr, "$")
            .unwrap_err()
            .contains("$[1]"));
    }
}
