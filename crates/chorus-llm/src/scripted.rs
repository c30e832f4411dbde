//! A backend that answers a fixed reply after a fixed delay. For tests whose subject is timing
//! or the election rather than a model (a 45 s "Pi" next to a 2 s "GPU"), and for demos on
//! machines without a model. It is never chosen by default.

use std::time::Duration;

use crate::{Backend, BoxFuture, ChatRequest, Completion, LlmError};

pub struct Scripted {
    reply: String,
    delay: Duration,
}

impl Scripted {
    pub fn new(reply: String, delay: Duration) -> Self {
        Self { reply, delay }
    }
}

impl Backend for Scripted {
    fn name(&self) -> String {
        format!("scripted:{}ms", self.delay.as_millis())
    }

    fn complete<'a>(
        &'a self,
        _req: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<Completion, LlmError>> {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            Ok(Completion {
                text: self.reply.clone(),
                model: "scripted".into(),
                prompt_tokens: None,
                completion_tokens: None,
                prompt_ms: None,
                decode_ms: None,
            })
        })
    }
}
