//! A blocking JSON client for a node's HTTP API: any status is an answer (4xx and 5xx are
//! data for the tests, not transport errors).

use std::time::Duration;

use serde_json::Value;

/// One node's API at `base` (`127.0.0.1:PORT`, no scheme).
#[derive(Clone)]
pub struct Api {
    base: String,
    agent: ureq::Agent,
}

/// An HTTP answer: its status and its body as JSON (`Value::String` when the body is not JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    fn of(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Answer, String> {
        let mut r = r.map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().map_err(|e| e.to_string())?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Answer { status, body })
    }

    /// The body of a 2xx answer; otherwise `Err("STATUS: BODY")`.
    pub fn success(self) -> Result<Value, String> {
        if (200..300).contains(&self.status) {
            Ok(self.body)
        } else {
            Err(format!("{}: {}", self.status, self.body))
        }
    }
}

impl Api {
    /// A client whose every call gives up after `timeout`.
    pub fn new(base: &str, timeout: Duration) -> Api {
        Api {
            base: base.trim_start_matches("http://").to_string(),
            agent: ureq::Agent::config_builder()
                .timeout_global(Some(timeout))
                .http_status_as_error(false)
                .build()
                .new_agent(),
        }
    }

    /// `host:port`.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.base)
    }

    /// `GET path`, any status; `Err` only when there is no answer.
    pub fn get_answer(&self, path: &str) -> Result<Answer, String> {
        Answer::of(self.agent.get(self.url(path)).call())
    }

    /// `POST path` with a JSON body, any status.
    pub fn post_answer(&self, path: &str, body: &Value) -> Result<Answer, String> {
        Answer::of(
            self.agent
                .post(self.url(path))
                .header("content-type", "application/json")
                .send(body.to_string()),
        )
    }

    /// `POST path` with any bytes as its body (declared `content_type`), any status.
    pub fn post_bytes(
        &self,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<Answer, String> {
        Answer::of(
            self.agent
                .post(self.url(path))
                .header("content-type", content_type)
                .send(body),
        )
    }

    /// `GET path` as JSON; `Err` unless the answer is a success.
    pub fn get(&self, path: &str) -> Result<Value, String> {
        self.get_answer(path)?.success()
    }

    /// `POST path` as JSON; `Err` unless the answer is a success.
    pub fn post(&self, path: &str, body: &Value) -> Result<Value, String> {
        self.post_answer(path, body)?.success()
    }
}
