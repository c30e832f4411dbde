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
        format!("openai:{}@{}", self.model, crate::redact_url(&self.url))
    }

    fn complete<'a>(&'a self, req: &'a ChatRequest) -> BoxFuture<'a, Result<Completion, LlmError>> {
        Box::pin(with_retries(self.retries, move || self.once(req)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChatMessage, Role};

    /// A base URL may carry credentials; the backend's name and its errors end up in the
    /// status, in logs and in the failure events a node replicates, so neither may hold them.
    #[tokio::test]
    async fn credentials_in_the_base_url_reach_no_name_and_no_error() {
        // Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
        let b = OpenAi::new(
            "http://alice:s3cret@127.0.0.1:9/?key=k3y",
            "m",
            None,
            Duration::from_secs(5),
            0,
            true,
        )
        .unwrap();
        let name = b.name();
        assert!(name.contains("127.0.0.1:9"), "{name}");
        for secret in ["alice", "s3cret", "k3y"] {
            assert!(!name.contains(secret), "{name}");
        }
        let req = ChatRequest::new(vec![ChatMessage::new(Role::User, "hello")]);
        let err = b.complete(&req).await.unwrap_err();
        assert_eq!(err.code(), "connect", "{err}");
        let err = err.to_string();
        assert!(err.contains("127.0.0.1:9"), "{err}");
        for secret in ["alice", "s3cret", "k3y"] {
            assert!(!err.contains(secret), "{err}");
        }
    }

    /// A model server that answers without end (here 5 MiB with no length, then a stalled
    /// connection) is cut at MAX_RESPONSE_BYTES with an error, not read into memory whole.
    #[tokio::test]
    async fn an_endless_answer_is_cut_at_the_bound() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut sock, _) = server.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = sock.read(&mut buf).await;
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                        transfer-encoding: chunked\r\n\r\n";
            sock.write_all(head.as_bytes()).await.unwrap();
            let chunk = vec![b' '; 64 * 1024];
            for _ in 0..80 {
                let frame = format!("{:x}\r\n", chunk.len());
                if sock.write_all(frame.as_bytes()).await.is_err()
                    || sock.write_all(&chunk).await.is_err()
                    || sock.write_all(b"\r\n").await.is_err()
                {
                    return;
                }
            }
            // Never ends: a reader without a bound would wait here for the timeout.
            std::future::pending::<()>().await;
        });
        let b = OpenAi::new(
            &format!("http://{addr}"),
            "m",
            None,
            Duration::from_secs(30),
            0,
            true,
        )
        .unwrap();
        let req = ChatRequest::new(vec![ChatMessage::new(Role::User, "hello")]);
        let err = b.complete(&req).await.unwrap_err();
        assert_eq!(err.code(), "protocol", "{err}");
        assert!(err.to_string().contains("longer than"), "{err}");
    }
}
