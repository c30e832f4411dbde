//! The embedded model: a GGUF run in-process by llama.cpp (through `llama-cpp-2`), one worker
//! thread per model file, shared by every emissary of the process.
//!
//! Why llama-cpp-2 and not candle: it runs the shipped Q4_1 file unchanged at ≈ 58 tokens/s
//! decode on one thread (candle: 5–10 without requantizing), and llama.cpp's GBNF grammar
//! sampler gives constrained decoding for free; see docs/benchmarks.md.
//!
//! Command requests are sampled through [`commands::GBNF`], so the text is always a complete
//! JSON array of strings (the grammar's bounds fit in [`commands::MAX_COMMAND_TOKENS`]).
//! Temperature 0 is greedy; otherwise `temp` + `dist(seed)`: the same seed, prompt and build
//! give the same text.

use std::{
    collections::BTreeMap,
    num::NonZeroU32,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock, mpsc},
    time::{Duration, Instant},
};

use llama_cpp_2::{
    context::{LlamaContext, params::LlamaContextParams},
    llama_backend::LlamaBackend,
    llama_batch::LlamaBatch,
    model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel, params::LlamaModelParams},
    sampling::LlamaSampler,
    token::{LlamaToken, data::LlamaTokenData, data_array::LlamaTokenDataArray},
};
use tokio::sync::oneshot;

use crate::{Backend, BoxFuture, ChatRequest, Completion, LlmError, commands};

/// Context window of the embedded model (prompt + answer).
pub const CONTEXT_TOKENS: u32 = 2048;
/// Requests waiting for the worker before callers get [`LlmError::Busy`].
pub const MAX_QUEUED: usize = 32;
/// How long a caller waits for its answer (queue + generation).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(300);

struct Job {
    req: ChatRequest,
    reply: oneshot::Sender<Result<Completion, LlmError>>,
}

/// A handle to the worker of one model file.
pub struct Embedded {
    name: String,
    jobs: mpsc::SyncSender<Job>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

fn backend() -> Result<&'static LlamaBackend, LlmError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            let mut b = LlamaBackend::init().map_err(|e| e.to_string())?;
            b.void_logs();
            Ok(b)
        })
        .as_ref()
        .map_err(|why| model_err(why.clone()))
}

fn model_err(why: impl Into<String>) -> LlmError {
    LlmError::Model {
        backend: "embedded".into(),
        why: why.into(),
    }
}

impl Embedded {
    /// The worker for `path` (started on first use; later calls share it).
    pub fn load(path: &Path, threads: u32) -> Result<Embedded, LlmError> {
        static WORKERS: OnceLock<Mutex<BTreeMap<PathBuf, Embedded>>> = OnceLock::new();
        let mut workers = WORKERS
            .get_or_init(Default::default)
            .lock()
            .map_err(|_| model_err("worker registry poisoned"))?;
        if let Some(w) = workers.get(path) {
            return Ok(w.clone_handle());
        }
        if !path.exists() {
            return Err(model_err(format!(
                "{} not found: run `chorus model fetch` (gets it from the package registry)",
                path.display()
            )));
        }
        let backend = backend()?;
        let (jobs, rx) = mpsc::sync_channel::<Job>(MAX_QUEUED);
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let p = path.to_path_buf();
        let threads = threads.max(1) as i32;
        std::thread::Builder::new()
            .name("chorus-llm".into())
            .spawn(move || worker(backend, &p, threads, rx, ready_tx))
            .map_err(|e| model_err(e.to_string()))?;
        ready_rx
            .recv()
            .map_err(|_| model_err("the model worker stopped while loading"))??;
        let w = Embedded {
            name: format!(
                "embedded:{}",
                path.file_name().unwrap_or_default().to_string_lossy()
            ),
            jobs,
            queued: Default::default(),
        };
        workers.insert(path.to_path_buf(), w.clone_handle());
        Ok(w)
    }

    fn clone_handle(&self) -> Embedded {
        Embedded {
            name: self.name.clone(),
            jobs: self.jobs.clone(),
            queued: self.queued.clone(),
        }
    }
}

impl Backend for Embedded {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn complete<'a>(&'a self, req: &'a ChatRequest) -> BoxFuture<'a, Result<Completion, LlmError>> {
        Box::pin(async move {
            use std::sync::atomic::Ordering;
            let (reply, rx) = oneshot::channel();
            let job = Job {
                req: req.clone(),
                reply,
            };
            if self.jobs.try_send(job).is_err() {
                return Err(LlmError::Busy {
                    backend: self.name.clone(),
                    queued: MAX_QUEUED,
                });
            }
            self.queued.fetch_add(1, Ordering::Relaxed);
            let r = tokio::time::timeout(CALL_TIMEOUT, rx).await;
            self.queued.fetch_sub(1, Ordering::Relaxed);
            match r {
                Err(_) => Err(LlmError::Timeout {
                    backend: self.name.clone(),
                    timeout: CALL_TIMEOUT,
                }),
                Ok(Err(_)) => Err(model_err("the model worker stopped")),
                Ok(Ok(r)) => r,
            }
        })
    }
}

fn worker(
    backend: &'static LlamaBackend,
    path: &Path,
    threads: i32,
    jobs: mpsc::Receiver<Job>,
    ready: mpsc::SyncSender<Result<(), LlmError>>,
) {
    let loaded = (|| {
        let model = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default())
            .map_err(|e| model_err(format!("loading {}: {e}", path.display())))?;
        let template = model
            .chat_template(None)
            .map_err(|e| model_err(format!("no chat template in the GGUF: {e}")))?;
        Ok::<_, LlmError>((model, template))
    })();
    let (model, template) = match loaded {
        Ok(m) => m,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(CONTEXT_TOKENS))
        .with_n_batch(CONTEXT_TOKENS)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let mut ctx = match model.new_context(backend, params) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(model_err(format!("context: {e}"))));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let name = path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .to_string();
    for job in jobs {
        let r = generate(&model, &template, &mut ctx, &job.req, &name);
        let _ = job.reply.send(r);
    }
}

/// One completion on the worker thread.
pub fn generate(
    model: &LlamaModel,
    template: &LlamaChatTemplate,
    ctx: &mut LlamaContext<'_>,
    req: &ChatRequest,
    name: &str,
) -> Result<Completion, LlmError> {
    let t0 = Instant::now();
    ctx.clear_kv_cache();
    let msgs = req
        .messages
        .iter()
        .map(|m| LlamaChatMessage::new(m.role.as_str().into(), m.content.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| model_err(format!("message: {e}")))?;
    let prompt = model
        .apply_chat_template(template, &msgs, true)
        .map_err(|e| model_err(format!("chat template: {e}")))?;
    let vocab = model.vocab();
    let tokens = vocab.tokenize(prompt.as_bytes(), vocab.should_add_bos(), true);
    let budget = CONTEXT_TOKENS.saturating_sub(req.max_tokens) as usize;
    if tokens.is_empty() || tokens.len() > budget {
        return Err(model_err(format!(
            "prompt of {} tokens does not fit ({budget} available)",
            tokens.len()
        )));
    }
    let mut batch = LlamaBatch::new(CONTEXT_TOKENS as usize, 1);
    let last = tokens.len() - 1;
    for (i, t) in tokens.iter().enumerate() {
        batch
            .add(*t, i as i32, &[0], i == last)
            .map_err(|e| model_err(format!("batch: {e}")))?;
    }
    ctx.decode(&mut batch)
        .map_err(|e| model_err(format!("decode: {e}")))?;
    let prompt_done = Instant::now();
    let free = if req.temperature <= 0.0 {
        vec![LlamaSampler::greedy()]
    } else {
        vec![
            LlamaSampler::temp(req.temperature),
            LlamaSampler::dist((req.seed ^ (req.seed >> 32)) as u32),
        ]
    };
    let grammar = if req.commands {
        Some(
            LlamaSampler::grammar(model, commands::GBNF, "root")
                .map_err(|e| model_err(format!("grammar: {e}")))?,
        )
    } else {
        None
    };
    let mut sampler = Sampling {
        free: LlamaSampler::chain_simple(free),
        grammar,
        candidates: LlamaTokenDataArray::new(Vec::new(), false),
        rejected: 0,
    };
    let mut out = Vec::new();
    let mut pos = tokens.len() as i32;
    let mut generated = 0u32;
    while generated < req.max_tokens {
        let tok = sampler.sample(ctx, batch.n_tokens() - 1)?;
        if vocab.is_eog(tok) {
            break;
        }
        out.extend(vocab.token_to_piece(tok, false, None));
        generated += 1;
        batch.clear();
        batch
            .add(tok, pos, &[0], true)
            .map_err(|e| model_err(format!("batch: {e}")))?;
        pos += 1;
        ctx.decode(&mut batch)
            .map_err(|e| model_err(format!("decode: {e}")))?;
    }
    tracing::debug!(
        generated,
        grammar_rejections = sampler.rejected,
        "embedded completion"
    );
    let end = Instant::now();
    Ok(Completion {
        text: String::from_utf8_lossy(&out).into_owned(),
        model: name.to_string(),
        prompt_tokens: Some(tokens.len() as u32),
        completion_tokens: Some(generated),
        prompt_ms: Some((prompt_done - t0).as_secs_f64() * 1e3),
        decode_ms: Some((end - prompt_done).as_secs_f64() * 1e3),
    })
}

/// Token sampling with an optional grammar, checked the cheap way round (llama.cpp's own
/// `common_sampler` does the same): sample from the free chain first, then ask the grammar
/// about that one token; only when it is refused, mask the whole vocabulary with the grammar
/// and sample again.
///
/// Masking the vocabulary costs a grammar walk for each of its 49 152 entries at every step,
/// which took +72 % per token; a one-token check is nearly free, and refusals are the minority.
/// The result has exactly the distribution of "grammar, then free chain": greedy picks the best
/// allowed token either way, and a refused random draw is redrawn from the masked distribution
/// (rejection sampling), so every output still matches the grammar and the same seed still gives
/// the same text.
struct Sampling {
    free: LlamaSampler,
    grammar: Option<LlamaSampler>,
    /// Reused between steps: one vocabulary-sized buffer per completion.
    candidates: LlamaTokenDataArray,
    /// Steps where the free choice was refused and the vocabulary had to be masked.
    rejected: u32,
}

impl Sampling {
    fn sample(&mut self, ctx: &LlamaContext<'_>, idx: i32) -> Result<LlamaToken, LlmError> {
        load_logits(&mut self.candidates, ctx, idx);
        self.free.apply(&mut self.candidates);
        let first = self
            .candidates
            .selected_token()
            .ok_or_else(|| model_err("sampler selected no token"))?;
        let Some(grammar) = self.grammar.as_mut() else {
            self.free.accept(first);
            return Ok(first);
        };
        let mut probe = LlamaTokenDataArray::new(vec![LlamaTokenData::new(first, 0.0, 0.0)], false);
        grammar.apply(&mut probe);
        let chosen = if probe.data[0].logit().is_finite() {
            first
        } else {
            self.rejected += 1;
            load_logits(&mut self.candidates, ctx, idx);
            grammar.apply(&mut self.candidates);
            self.free.apply(&mut self.candidates);
            self.candidates
                .selected_token()
                .ok_or_else(|| model_err("the grammar allows no token here"))?
        };
        grammar.accept(chosen);
        self.free.accept(chosen);
        Ok(chosen)
    }
}

/// Fills `c` with the raw logits of output `idx`, nothing selected.
fn load_logits(c: &mut LlamaTokenDataArray, ctx: &LlamaContext<'_>, idx: i32) {
    c.data.clear();
    c.data.extend(
        ctx.get_logits_ith(idx)
            .iter()
            .enumerate()
            .map(|(i, &logit)| LlamaTokenData::new(LlamaToken::new(i as i32), logit, 0.0)),
    );
    c.selected = None;
    c.sorted = false;
}
