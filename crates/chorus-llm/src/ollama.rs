//! Ollama's native chat API: `POST {base}/api/chat` with `stream: false` and `format` set to
//! the command schema.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    Backend, BoxFuture, ChatRequest, Completion, LlmError, commands, post_json, protocol,
    retry::with_retries,
};

pub fn default_base() -> String {
    "http://127.0.0.1:11434".into()
}

pub struct Ollama {
    url: String,
    model: String,
    timeout: Duration,
    retries: u32,
}

impl Ollama {
    pub fn new(base_url: &str, model: &str, timeout: Duration, retries: u32) -> Self {
        Self {
            url: format!("{}/api/chat", base_url.trim_end_matches('/')),
            model: model.into(),
            timeout,
            retries,
        }
    }

    pub fn body(&self, req: &ChatRequest) -> Value {
        let mut body = json!({
            "model": self.model,
            "messages": req.messages,
            "stream": false,
            "options": {
                "temperature": req.temperature,
                "seed": req.seed,
                "num_predict": req.max_tokens,
            },
        });
        if req.commands {
            body["format"] = commands::json_schema();
        }
        body
    }

    async fn once(&self, req: &ChatRequest) -> Result<Completion, LlmError> {
        let name = self.name();
        let v = post_json(&name, &self.url, &[], &self.body(req), self.timeout).await?;
        let text = v["message"]["content"]
            .as_str()
            .ok_or_else(|| protocol(&name, format!("no message.content in {v}")))?;
        Ok(Completion {
            text: text.to_string(),
            model: v["model"].as_str().unwrap_or(&self.model).to_string(),
            prompt_tokens: v["prompt_eval_count"].as_u64().map(|n| n as u32),
            completion_tokens: v["eval_count"].as_u64().map(|n| n as u32),
            prompt_ms: None,
            decode_ms: None,
        })
    }
}

impl Backend for Ollama {
    fn name(&self) -> String {
        format!("ollama:{}@{}", self.model, crate::redact_url(&self.url))
    }

    fn complete<'a>(&'a self, req: &'a ChatRequest) -> BoxFuture<'a, Result<Completion, LlmError>> {
        Box::pin(with_retries(self.retries, move || self.once(req)))
    }
}
