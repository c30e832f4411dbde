//! The embedded model, for `docs/benchmarks.md`: decode and prompt throughput on one thread,
//! unconstrained and grammar-constrained, side by side in one run (same prompts, alternating).
//!
//! `cargo build --release -p chorus-bench && target/release/llm-bench [ROUNDS] [THREADS]`
//! (the model is fetched from the package registry on first use).

use std::time::Instant;

use anyhow::Result;
use chorus_llm::{BackendConfig, ChatMessage, ChatRequest, Role, build, model};

const PROMPTS: &[(&str, &str)] = &[
    (
        "Mira the innkeeper",
        "A stranger in a wet cloak enters the tavern and asks for a room.",
    ),
    (
        "Old Tomas",
        "Someone knocks over your mug of ale and laughs.",
    ),
    (
        "Sera the bard",
        "The crowd falls silent and waits for a song.",
    ),
    (
        "the city guard",
        "A merchant shouts that his purse was stolen.",
    ),
];

#[derive(Default)]
struct Tally {
    calls: u32,
    prompt_tokens: u64,
    prompt_ms: f64,
    tokens: u64,
    decode_ms: f64,
    wall_ms: f64,
}

impl Tally {
    fn line(&self, what: &str) -> String {
        format!(
            "{what:<13} {:>3} calls · decode {:>6.1} tokens/s ({} tokens) · prompt {:>6.1} tokens/s · {:.0} ms per call",
            self.calls,
            self.tokens as f64 / (self.decode_ms / 1e3),
            self.tokens,
            self.prompt_tokens as f64 / (self.prompt_ms / 1e3),
            self.wall_ms / self.calls as f64,
        )
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(3);
    let threads: u32 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1);
    let path = model::ensure_default()?;
    let t = Instant::now();
    let b = build(&BackendConfig::Embedded {
        model_path: path.display().to_string(),
        threads,
    })?;
    println!(
        "loaded {} in {:.2} s, {threads} thread(s)",
        b.name(),
        t.elapsed().as_secs_f64()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut free, mut constrained) = (Tally::default(), Tally::default());
    for r in 0..rounds {
        for (i, (who, ctx)) in PROMPTS.iter().enumerate() {
            let mut req = ChatRequest::new(vec![
                ChatMessage::new(
                    Role::System,
                    format!("You are {who}. Answer with a JSON array of game commands."),
                ),
                ChatMessage::new(Role::User, ctx.to_string()),
            ]);
            req.temperature = 0.8;
            req.seed = (r * 100 + i) as u64;
            // Alternate which mode goes first, so neither gets a warmer cache.
            let order = if (r + i) % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for grammar in order {
                req.commands = grammar;
                req.max_tokens = if grammar {
                    chorus_llm::commands::MAX_COMMAND_TOKENS
                } else {
                    96
                };
                let t = Instant::now();
                let c = rt.block_on(b.complete(&req))?;
                let tally = if grammar { &mut constrained } else { &mut free };
                tally.calls += 1;
                tally.wall_ms += t.elapsed().as_secs_f64() * 1e3;
                tally.prompt_tokens += c.prompt_tokens.unwrap_or(0) as u64;
                tally.prompt_ms += c.prompt_ms.unwrap_or(0.0);
                tally.tokens += c.completion_tokens.unwrap_or(0) as u64;
                tally.decode_ms += c.decode_ms.unwrap_or(0.0);
                if r == 0 && i == 0 {
                    println!(
                        "sample ({}): {:?}",
                        if grammar { "grammar" } else { "free" },
                        c.text
                    );
                }
            }
        }
    }
    println!("{}", free.line("unconstrained"));
    println!("{}", constrained.line("grammar"));
    let f = free.tokens as f64 / free.decode_ms;
    let g = constrained.tokens as f64 / constrained.decode_ms;
    println!(
        "constrained decoding overhead (per token): {:+.1} %",
        (f / g - 1.0) * 100.0
    );
    Ok(())
}
