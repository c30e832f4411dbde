//! # chorus-llm
//!
//! Model backends for Chorus emissaries behind one trait, [`Backend`]:
//!
//! | kind        | protocol                                   | module        |
//! |-------------|--------------------------------------------|---------------|
//! | `openai`    | `POST {base}/v1/chat/completions`          | [`openai`]    |
//! | `ollama`    | `POST {base}/api/chat` (Ollama native)     | [`ollama`]    |
//! | `anthropic` | `POST {base}/v1/messages`                  | [`anthropic`] |
//! | `embedded`  | SmolLM2-135M in-process (llama.cpp), GBNF  | `embedded`    |
//! | `scripted`  | a fixed reply after a delay (tests, demos) | [`scripted`]  |
//!
//! Every backend answers a [`ChatRequest`] with a [`Completion`] or a typed [`LlmError`]; the
//! HTTP ones share one client with a per-backend timeout and bounded retries with backoff
//! ([`retry`]). What an emissary needs from the text — a JSON array of command strings — is
//! extracted and checked by [`commands::parse`]; the embedded model is constrained by a grammar
//! so its output always parses ([`commands::GBNF`]).

pub mod anthropic;
pub mod commands;
#[cfg(feature = "embedded")]
pub mod embedded;
pub mod model;
pub mod ollama;
pub mod openai;
pub mod retry;
pub mod scripted;

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};

/// Who speaks in a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// One completion request.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    /// Upper bound on generated tokens.
    pub max_tokens: u32,
    /// 0 = greedy.
    pub temperature: f32,
    /// Sampling seed (the embedded model and servers that accept one).
    pub seed: u64,
    /// Ask for a JSON array of command strings (grammar, JSON schema or `format`, as the
    /// backend supports).
    pub commands: bool,
}

impl ChatRequest {
    pub fn new(messages: Vec<ChatMessage>) -> Self {
        Self {
            messages,
            max_tokens: commands::MAX_COMMAND_TOKENS,
            temperature: 0.0,
            seed: 0,
            commands: true,
        }
    }
}

/// What a backend answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub text: String,
    /// The model that answered, as the backend names it.
    pub model: String,
    pub prompt_tokens: Option<u32>,
    pub completion_tokens: Option<u32>,
    /// Time spent on the prompt and on generating, where the backend measures them (the
    /// embedded model does).
    pub prompt_ms: Option<f64>,
    pub decode_ms: Option<f64>,
}

/// Why a backend gave no completion.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum LlmError {
    #[error("{backend}: no answer within {timeout:?}")]
    Timeout { backend: String, timeout: Duration },
    #[error("{backend}: cannot reach {url}: {why}")]
    Connect {
        backend: String,
        url: String,
        why: String,
    },
    #[error("{backend}: HTTP {status}: {body}")]
    Status {
        backend: String,
        status: u16,
        body: String,
    },
    #[error("{backend}: unexpected answer: {why}")]
    Protocol { backend: String, why: String },
    #[error("{backend}: the API key variable {var} is not set")]
    MissingKey { backend: String, var: String },
    #[error("{backend}: model: {why}")]
    Model { backend: String, why: String },
    #[error("{backend}: busy ({queued} requests queued)")]
    Busy { backend: String, queued: usize },
}

impl LlmError {
    /// Worth another try: timeouts, connection failures, 429 and 5xx.
    pub fn transient(&self) -> bool {
        match self {
            LlmError::Timeout { .. } | LlmError::Connect { .. } | LlmError::Busy { .. } => true,
            LlmError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
    /// A short machine-readable code (metrics, failure events).
    pub fn code(&self) -> &'static str {
        match self {
            LlmError::Timeout { .. } => "timeout",
            LlmError::Connect { .. } => "connect",
            LlmError::Status { .. } => "status",
            LlmError::Protocol { .. } => "protocol",
            LlmError::MissingKey { .. } => "missing_key",
            LlmError::Model { .. } => "model",
            LlmError::Busy { .. } => "busy",
        }
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A model backend.
pub trait Backend: Send + Sync {
    /// A name for logs and events (`openai:qwen2@http://…`).
    fn name(&self) -> String;
    fn complete<'a>(&'a self, req: &'a ChatRequest) -> BoxFuture<'a, Result<Completion, LlmError>>;
}

/// Default per-call timeout of HTTP backends: a Pi-class model takes 45 s.
pub const DEFAULT_TIMEOUT_MS: u64 = 120_000;
/// Default retries after the first attempt (transient errors only).
pub const DEFAULT_RETRIES: u32 = 2;

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}
fn default_retries() -> u32 {
    DEFAULT_RETRIES
}
fn yes() -> bool {
    true
}

/// A backend as configured (TOML/JSON, `kind` selects). API keys are never in the config: only
/// the name of the environment variable that holds one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BackendConfig {
    /// OpenAI-compatible chat completions (llama-server, vLLM, Ollama's `/v1`, cloud APIs).
    Openai {
        /// e.g. `http://127.0.0.1:8080` (the `/v1/chat/completions` path is appended).
        base_url: String,
        #[serde(default)]
        model: String,
        /// Environment variable holding the bearer token, if the server wants one.
        #[serde(default)]
        api_key_env: Option<String>,
        #[serde(default = "default_timeout_ms")]
        timeout_ms: u64,
        #[serde(default = "default_retries")]
        retries: u32,
        /// Send `response_format` with a JSON schema for command requests (llama-server and
        /// vLLM honour it; turn off for servers that reject array roots).
        #[serde(default = "yes")]
        json_schema: bool,
    },
    /// Ollama's native API.
    Ollama {
        #[serde(default = "ollama::default_base")]
        base_url: String,
        model: String,
        #[serde(default = "default_timeout_ms")]
        timeout_ms: u64,
        #[serde(default = "default_retries")]
        retries: u32,
    },
    /// Anthropic messages.
    Anthropic {
        #[serde(default = "anthropic::default_base")]
        base_url: String,
        model: String,
        #[serde(default = "anthropic::default_key_env")]
        api_key_env: String,
        #[serde(default = "default_timeout_ms")]
        timeout_ms: u64,
        #[serde(default = "default_retries")]
        retries: u32,
    },
    /// The embedded model, run in this process. `model_path` empty: the default SmolLM2 file
    /// (fetched by `chorus model fetch`).
    Embedded {
        #[serde(default)]
        model_path: String,
        #[serde(default = "model::default_threads")]
        threads: u32,
    },
    /// Answers a fixed reply after `delay_ms`: for tests of timing and election that must not
    /// depend on a model, and for demos without one. Never the default.
    Scripted {
        reply: String,
        #[serde(default)]
        delay_ms: u64,
    },
}

/// Builds a backend from its configuration.
pub fn build(cfg: &BackendConfig) -> Result<Arc<dyn Backend>, LlmError> {
    Ok(match cfg {
        BackendConfig::Openai {
            base_url,
            model,
            api_key_env,
            timeout_ms,
            retries,
            json_schema,
        } => Arc::new(openai::OpenAi::new(
            base_url,
            model,
            api_key_env.as_deref(),
            Duration::from_millis(*timeout_ms),
            *retries,
            *json_schema,
        )?),
        BackendConfig::Ollama {
            base_url,
            model,
            timeout_ms,
            retries,
        } => Arc::new(ollama::Ollama::new(
            base_url,
            model,
            Duration::from_millis(*timeout_ms),
            *retries,
        )),
        BackendConfig::Anthropic {
            base_url,
            model,
            api_key_env,
            timeout_ms,
            retries,
        } => Arc::new(anthropic::Anthropic::new(
            base_url,
            model,
            api_key_env,
            Duration::from_millis(*timeout_ms),
            *retries,
        )?),
        #[cfg(feature = "embedded")]
        BackendConfig::Embedded {
            model_path,
            threads,
        } => {
            let path = if model_path.is_empty() {
                model::default_path()
            } else {
                model_path.into()
            };
            Arc::new(embedded::Embedded::load(&path, *threads)?)
        }
        #[cfg(not(feature = "embedded"))]
        BackendConfig::Embedded { .. } => {
            return Err(LlmError::Model {
                backend: "embedded".into(),
                why: "this build has no embedded model (feature `embedded` is off)".into(),
            });
        }
        BackendConfig::Scripted { reply, delay_ms } => Arc::new(scripted::Scripted::new(
            reply.clone(),
            Duration::from_millis(*delay_ms),
        )),
    })
}

/// The HTTP client the HTTP backends share (no overall timeout here: each backend puts its
/// own around the whole call).
pub(crate) fn http_client() -> reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .pool_max_idle_per_host(4)
                .build()
                .unwrap_or_default()
        })
        .clone()
}

/// `url` without what may carry a secret (a user name and password, the query, the fragment):
/// the form a URL takes in names, errors, logs and the failure events a node replicates.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => "(a URL that does not parse)".into(),
    }
}

/// Most bytes read of a model server's answer. A chat completion is a few KiB; a server that
/// streams without end (or a hostile one) is cut here rather than filling the node's memory.
pub const MAX_RESPONSE_BYTES: usize = 4 << 20;

/// Reads a response body, refusing one longer than [`MAX_RESPONSE_BYTES`] as soon as it
/// passes the bound (without waiting for the rest).
async fn read_capped(
    backend: &str,
    url: &str,
    mut resp: reqwest::Response,
) -> Result<String, LlmError> {
    let too_long = || LlmError::Protocol {
        backend: backend.into(),
        why: format!("the answer is longer than {MAX_RESPONSE_BYTES} bytes"),
    };
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
    {
        return Err(too_long());
    }
    let mut body = Vec::new();
    loop {
        let chunk = resp.chunk().await.map_err(|e| LlmError::Connect {
            backend: backend.into(),
            url: redact_url(url),
            why: e.without_url().to_string(),
        })?;
        let Some(chunk) = chunk else { break };
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(too_long());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// One JSON POST with the backend's timeout; maps transport and status failures to
/// [`LlmError`].
pub(crate) async fn post_json(
    backend: &str,
    url: &str,
    headers: &[(&str, String)],
    body: &serde_json::Value,
    timeout: Duration,
) -> Result<serde_json::Value, LlmError> {
    let mut rq = http_client().post(url).json(body);
    for (k, v) in headers {
        rq = rq.header(*k, v);
    }
    let call = async {
        let resp = rq.send().await.map_err(|e| LlmError::Connect {
            backend: backend.into(),
            url: redact_url(url),
            why: e.without_url().to_string(),
        })?;
        let status = resp.status();
        let text = read_capped(backend, url, resp).await?;
        if !status.is_success() {
            return Err(LlmError::Status {
                backend: backend.into(),
                status: status.as_u16(),
                body: text.chars().take(500).collect(),
            });
        }
        serde_json::from_str(&text).map_err(|e| LlmError::Protocol {
            backend: backend.into(),
            why: format!(
                "not JSON ({e}): {}",
                text.chars().take(200).collect::<String>()
            ),
        })
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| LlmError::Timeout {
            backend: backend.into(),
            timeout,
        })?
}

/// Reads an API key from the environment variable the config names.
pub(crate) fn key_from_env(backend: &str, var: &str) -> Result<String, LlmError> {
    std::env::var(var)
        .ok()
        .filter(|k| !k.is_empty())
        .ok_or_else(|| LlmError::MissingKey {
            backend: backend.into(),
            var: var.into(),
        })
}

pub(crate) fn protocol(backend: &str, why: impl Into<String>) -> LlmError {
    LlmError::Protocol {
        backend: backend.into(),
        why: why.into(),
    }
}
