//! Bounded retries with exponential backoff for transient backend errors.

use std::{future::Future, time::Duration};

use crate::LlmError;

/// Delay before the first retry; doubles each time.
pub const BACKOFF_BASE: Duration = Duration::from_millis(250);
/// Longest delay between two attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Most retries any backend may be configured with.
pub const MAX_RETRIES: u32 = 5;

/// The delay before retry `n` (0-based).
pub fn backoff(n: u32) -> Duration {
    BACKOFF_BASE
        .saturating_mul(1u32 << n.min(16))
        .min(BACKOFF_MAX)
}

/// Runs `attempt` up to `1 + retries` times (`retries` capped at [`MAX_RETRIES`]), retrying
/// only [`LlmError::transient`] errors; returns the last error.
pub async fn with_retries<T, F, Fut>(retries: u32, mut attempt: F) -> Result<T, LlmError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, LlmError>>,
{
    let retries = retries.min(MAX_RETRIES);
    let mut n = 0;
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if e.transient() && n < retries => {
                tracing::debug!("attempt {} failed ({e}); retrying", n + 1);
                tokio::time::sleep(backoff(n)).await;
                n += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn err(status: u16) -> LlmError {
        LlmError::Status {
            backend: "t".into(),
            status,
            body: String::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_only_and_bounded() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = with_retries(2, || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(err(503)) }
        })
        .await;
        assert_eq!(r, Err(err(503)));
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        calls.store(0, Ordering::SeqCst);
        let r: Result<(), _> = with_retries(2, || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(err(400)) }
        })
        .await;
        assert_eq!(r, Err(err(400)));
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        calls.store(0, Ordering::SeqCst);
        let r = with_retries(3, || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move { if n < 2 { Err(err(429)) } else { Ok(n) } }
        })
        .await;
        assert_eq!(r, Ok(2));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(0), BACKOFF_BASE);
        assert_eq!(backoff(1), BACKOFF_BASE * 2);
        assert_eq!(backoff(30), BACKOFF_MAX);
    }
}
