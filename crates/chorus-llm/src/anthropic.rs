//! Anthropic messages: `POST {base}/v1/messages` with `x-api-key` and `anthropic-version`.
//! System messages go to the top-level `system` field; the command contract is stated in the
//! prompt (the API has no JSON-schema output mode for a bare array) and checked on return.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    Backend, BoxFuture, ChatRequest, Completion, LlmError, Role, key_from_env, post_json, protocol,
    retry::with_retries,
};

/// The API version header this client speaks.
pub const API_VERSION: &str = "2023-06-01";

pub fn default_base() -> String {
    "https://api.anthropic.com".into()
}
pub fn default_key_env() -> String {
    "ANTHROPIC_API_KEY".into()
}

pub struct Anthropic {
    url: String,
    model: String,
    key_env: String,
    timeout: Duration,
    retries: u32,
}

impl Anthropic {
    pub fn new(
        base_url: &str,
        model: &str,
        key_env: &str,
        timeout: Duration,
        retries: u32,
    ) -> Result<Self, LlmError> {
        if model.is_empty() {
            return Err(protocol("anthropic", "a model name is required"));
        }
        Ok(Self {
            url: format!("{}/v1/messages", base_url.trim_end_matches('/')),
            model: model.into(),
            key_env: key_env.into(),
            timeout,
            retries,
        })
    }

    pub fn body(&self, req: &ChatRequest) -> Value {
        let system: Vec<&str> = req
            .messages
            .iter()
            .filter(|m| m.role == Role::System)
            .map(|m| m.content.as_str())
            .collect();
        let messages: Vec<Value> = req
            .messages
            .iter()
            .filter(|m| m.role != Role::System)
            .map(|m| json!({"role": m.role.as_str(), "content": m.content}))
            .collect();
        let mut body = json!({
            "model": self.model,
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
            "messages": messages,
        });
        if !system.is_empty() {
            body["system"] = json!(system.join("\n\n"));
        }
        body
    }

    async fn once(&self, req: &ChatRequest) -> Result<Completion, LlmError> {
        let name = self.name();
        let headers = [
            ("x-api-key", key_from_env(&name, &self.key_env)?),
            ("anthropic-version", API_VERSION.to_string()),
        ];
        let v = post_json(&name, &self.url, &headers, &self.body(req), self.timeout).await?;
        let text: String = v["content"]
            .as_array()
            .ok_or_else(|| protocol(&name, format!("no content in {v}")))?
            .iter()
            .filter(|b| b["type"] == "text")
            .filter_map(|b| b["text"].as_str())
            .collect();
        Ok(Completion {
            text,
            model: v["model"].as_str().unwrap_or(&self.model).to_string(),
            prompt_tokens: v["usage"]["input_tokens"].as_u64().map(|n| n as u32),
            completion_tokens: v["usage"]["output_tokens"].as_u64().map(|n| n as u32),
            prompt_ms: None,
            decode_ms: None,
        })
    }
}

impl Backend for Anthropic {
    fn name(&self) -> String {
        format!("anthropic:{}", self.model)
    }

    fn complete<'a>(&'a self, req: &'a ChatRequest) -> BoxFuture<'a, Result<Completion, LlmError>> {
        Box::pin(with_retries(self.retries, move || self.once(req)))
    }
}
