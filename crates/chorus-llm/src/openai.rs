//! OpenAI-compatible chat completions: `POST {base}/v1/chat/completions` (llama.cpp's
//! llama-server, vLLM, Ollama's `/v1`, cloud providers).

use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    Backend, BoxFuture, ChatRequest, Completion, LlmError, commands, key_from_env, post_json,
    protocol, retry::with_retries,
};

pub struct OpenAi {
    url: String,
    model: String,
    key_env: Option<String>,
    timeout: Duration,
    retries: u32,
    json_schema: bool,
}

impl OpenAi {
    pub fn new(
        base_url: &str,
        model: &str,
        key_env: Option<&str>,
        timeout: Duration,
        retries: u32,
        json_schema: bool,
    ) -> Result<Self, LlmError> {
        let base = base_url.trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base);
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(protocol(
                "openai",
                format!("base_url {base_url:?} is not an http(s) URL"),
            ));
        }
        Ok(Self {
            url: format!("{base}/v1/chat/completions"),
            model: model.into(),
            key_env: key_env.map(str::to_string),
            timeout,
            retries,
            json_schema,
        })
    }

    /// The request body (public for tests and for logging what was sent).
    pub fn body(&self, req: &ChatRequest) -> Value {
        let mut body = json!({
            "model": if self.model.is_empty() { "default" } else { &self.model },
            "messages": req.messages,
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
            "seed": req.seed,
            "stream": false,
        });
        if req.commands && self.json_schema {
            body["response_format"] = json!({
                "type": "json_schema",
                "json_schema": {"name": "commands", "schema": commands::json_schema()},
            });
        }
        body
    }

    async fn once(&self, req: &ChatRequest) -> Result<Completion, LlmError> {
        let name = self.name();
        let mut headers = vec![];
        if let Some(var) = &self.key_env {
            headers.push((
                "authorization",
                format!("Bearer {}", key_from_env(&name, var)?),
            ));
        }
        let v = post_json(&name, &self.url, &headers, &self.body(req), self.timeout).await?;
        let text = v["choices"][0]["message"]["content"]
            .as_str()
            .ok_or_else(|| protocol(&name, format!("no choices[0].message.content in {v}")))?;
        Ok(Completion {
            text: text.to_string(),
            model: v["model"].as_str().unwrap_or(&self.model).to_string(),
            prompt_tokens: v["usage"]["prompt_tokens"].as_u64().map(|n| n as u32),
            completion_tokens: v["usage"]["completion_tokens"].as_u64().map(|n| n as u32),
            prompt_ms: None,
            decode_ms: None,
        })
    }
}

impl Backend for OpenAi {
    fn name(&self) -> String {
        format!("openai:{}@{}", self.model, self.url)
    }

    fn complete<'a>(&'a self, req: &'a ChatRequest) -> BoxFuture<'a, Result<Completion, LlmError>> {
        Box::pin(with_retries(self.retries, move || self.once(req)))
    }
}
