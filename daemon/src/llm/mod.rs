//! Language models behind one trait.
//!
//! [`LanguageModel::generate`] is blocking: callers run it on a blocking thread. Every
//! implementation returns text that parses as JSON matching the schema it was given (the
//! embedded backend constrains sampling with a grammar; the HTTP backend asks the server for a
//! JSON-schema response format and re-checks it).

#[cfg(feature = "llama")]
pub mod llama;
pub mod openai;

use serde::{Deserialize, Serialize};

/// Who wrote a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions from the studio (persona, facts, rules).
    System,
    /// The customer.
    User,
    /// The bot's earlier replies.
    Assistant,
}

/// One message of the chat given to the model.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who wrote it.
    pub role: Role,
    /// The message text (personal data: never logged).
    pub content: String,
}

impl std::fmt::Debug for ChatMessage {
    // Message text is personal data: never in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ChatMessage({:?}, {} chars)",
            self.role,
            self.content.len()
        )
    }
}

/// A request to the model.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// The part of the system prompt that is the same for every request (persona, studio
    /// facts, rules). It comes first so its KV cache can be computed once and reused.
    pub static_system: String,
    /// The per-request part of the system prompt (date, customer, profile, status rules).
    pub dynamic_system: String,
    /// The last messages of the conversation, oldest first; the newest user message is last.
    pub history: Vec<ChatMessage>,
}

/// What the model produced, with token accounting for metrics and tests.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// JSON text matching the requested schema.
    pub text: String,
    /// Tokens of the whole rendered prompt.
    pub prompt_tokens: u32,
    /// Prompt tokens actually evaluated for this request (the rest came from the cache).
    pub evaluated_prompt_tokens: u32,
    /// Tokens the model generated for the reply.
    pub generated_tokens: u32,
}

/// Model failures.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The model (or the llama.cpp backend) could not be loaded.
    #[error("model file {path}: {message}")]
    Load {
        /// The model file; empty when the backend itself failed.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The rendered prompt is longer than the context window.
    #[error("prompt does not fit the context ({tokens} tokens, context {context})")]
    PromptTooLong {
        /// Tokens of the rendered prompt.
        tokens: usize,
        /// Tokens the context holds.
        context: usize,
    },
    /// The embedded backend failed while running (worker thread, grammar, decoding).
    #[error("inference failed: {0}")]
    Inference(String),
    /// The HTTP model server could not be reached or answered with an error.
    #[error("model server: {0}")]
    Http(String),
    /// The output is not complete JSON matching the schema (e.g. the token limit cut it off).
    #[error("model output does not match the reply schema: {0}")]
    Schema(String),
    /// Too many requests are waiting; the caller should retry later.
    #[error("the model queue is full")]
    Busy,
    /// The inference worker thread has ended; no further requests are served.
    #[error("the model worker has stopped")]
    Stopped,
}

/// A language model. See the module doc.
pub trait LanguageModel: Send + Sync {
    /// Generates a reply constrained to `schema` (a JSON Schema object).
    fn generate(&self, prompt: &Prompt, schema: &serde_json::Value)
        -> Result<Generation, LlmError>;

    /// A short description for status output and logs (backend and model file name).
    fn describe(&self) -> String;
}

/// Builds the configured backend. The embedded model is loaded (and warmed up) before this
/// returns.
pub fn from_config(
    cfg: &crate::config::LlmConfig,
) -> Result<std::sync::Arc<dyn LanguageModel>, LlmError> {
    match cfg.backend {
        #[cfg(feature = "llama")]
        crate::config::LlmBackend::Llama => Ok(std::sync::Arc::new(llama::EmbeddedLlama::load(
            llama::LlamaOptions::from_config(cfg),
            None,
        )?)),
        #[cfg(not(feature = "llama"))]
        crate::config::LlmBackend::Llama => Err(LlmError::Load {
            path: String::new(),
            message: "this build has no embedded llama.cpp backend (feature `llama`)".into(),
        }),
        crate::config::LlmBackend::Openai => Ok(std::sync::Arc::new(openai::OpenAiModel::new(
            openai::OpenAiOptions::from_config(cfg, None),
        ))),
    }
}
