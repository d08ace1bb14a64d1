//! A scripted [`LanguageModel`] for tests of the conversation logic: it answers with queued
//! replies in order, or with replies computed from the prompt, and records every prompt it got.
//!
//! For tests only (it is compiled always so integration tests and other crates can use it).
//! Unlike the real backends it does not enforce the schema: a test may queue invalid output
//! on purpose to exercise error handling.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::{Generation, LanguageModel, LlmError, Prompt};

type Responder = Box<dyn Fn(&Prompt) -> Result<String, LlmError> + Send + Sync>;

/// See the module doc.
pub struct ScriptedModel {
    replies: Mutex<VecDeque<Result<String, LlmError>>>,
    /// Answers when the queue is empty.
    responder: Option<Responder>,
    prompts: Mutex<Vec<Prompt>>,
}

impl ScriptedModel {
    /// A model that answers with `replies` in order and fails with [`LlmError::Inference`]
    /// once they are used up.
    pub fn new<I, S>(replies: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ScriptedModel {
            replies: Mutex::new(replies.into_iter().map(|r| Ok(r.into())).collect()),
            responder: None,
            prompts: Mutex::new(Vec::new()),
        }
    }

    /// A model that computes every reply from the prompt (after any queued replies).
    pub fn with_responder<F>(responder: F) -> Self
    where
        F: Fn(&Prompt) -> Result<String, LlmError> + Send + Sync + 'static,
    {
        ScriptedModel {
            replies: Mutex::new(VecDeque::new()),
            responder: Some(Box::new(responder)),
            prompts: Mutex::new(Vec::new()),
        }
    }

    /// Queues a reply.
    pub fn push_reply(&self, reply: impl Into<String>) {
        lock(&self.replies).push_back(Ok(reply.into()));
    }

    /// Queues a failure, e.g. [`LlmError::Busy`].
    pub fn push_error(&self, error: LlmError) {
        lock(&self.replies).push_back(Err(error));
    }

    /// Every prompt received so far, oldest first.
    pub fn prompts(&self) -> Vec<Prompt> {
        lock(&self.prompts).clone()
    }

    /// The most recent prompt.
    pub fn last_prompt(&self) -> Option<Prompt> {
        lock(&self.prompts).last().cloned()
    }

    /// Queued replies not yet used.
    pub fn remaining(&self) -> usize {
        lock(&self.replies).len()
    }
}

impl LanguageModel for ScriptedModel {
    fn generate(
        &self,
        prompt: &Prompt,
        _schema: &serde_json::Value,
    ) -> Result<Generation, LlmError> {
        lock(&self.prompts).push(prompt.clone());
        let queued = lock(&self.replies).pop_front();
        let text = match (queued, &self.responder) {
            (Some(reply), _) => reply?,
            (None, Some(responder)) => responder(prompt)?,
            (None, None) => {
                return Err(LlmError::Inference("scripted model: no reply left".into()))
            }
        };
        // Rough token counts (4 bytes a token) so metrics code sees plausible numbers.
        let prompt_chars = prompt.static_system.len()
            + prompt.dynamic_system.len()
            + prompt
                .history
                .iter()
                .map(|m| m.content.len())
                .sum::<usize>();
        let prompt_tokens = (prompt_chars / 4) as u32 + 1;
        Ok(Generation {
            generated_tokens: (text.len() / 4) as u32 + 1,
            text,
            prompt_tokens,
            evaluated_prompt_tokens: prompt_tokens,
        })
    }

    fn describe(&self) -> String {
        "scripted (tests)".into()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{ChatMessage, Role};

    fn prompt(text: &str) -> Prompt {
        Prompt {
            static_system: "persona".into(),
            dynamic_system: String::new(),
            history: vec![ChatMessage {
                role: Role::User,
                content: text.into(),
            }],
        }
    }

    #[test]
    fn replies_in_order_then_fails() {
        let model = ScriptedModel::new([r#"{"reply":"eins"}"#, r#"{"reply":"zwei"}"#]);
        let schema = serde_json::json!({});
        assert_eq!(
            model.generate(&prompt("a"), &schema).unwrap().text,
            r#"{"reply":"eins"}"#
        );
        assert_eq!(model.remaining(), 1);
        assert_eq!(
            model.generate(&prompt("b"), &schema).unwrap().text,
            r#"{"reply":"zwei"}"#
        );
        assert!(matches!(
            model.generate(&prompt("c"), &schema),
            Err(LlmError::Inference(_))
        ));
        let seen: Vec<String> = model
            .prompts()
            .iter()
            .map(|p| p.history[0].content.clone())
            .collect();
        assert_eq!(seen, ["a", "b", "c"]);
    }

    #[test]
    fn responder_sees_the_prompt_and_queued_errors_come_first() {
        let model = ScriptedModel::with_responder(|p| {
            Ok(format!("echo {}", p.history.last().unwrap().content))
        });
        model.push_error(LlmError::Busy);
        let schema = serde_json::json!({});
        assert!(matches!(
            model.generate(&prompt("x"), &schema),
            Err(LlmError::Busy)
        ));
        assert_eq!(
            model.generate(&prompt("hallo"), &schema).unwrap().text,
            "echo hallo"
        );
        assert_eq!(model.last_prompt().unwrap().history[0].content, "hallo");
        assert_eq!(model.describe(), "scripted (tests)");
    }
}
