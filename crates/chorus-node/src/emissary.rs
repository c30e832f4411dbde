//! # Emissaries
//!
//! An emissary is a task beside the node actor with a model backend and a persona (the
//! original swarm's `npc_name`, `role`, `backstory`). It follows the live feed; for every
//! `stimulus` event whose election selected it (the replicated dynamic-N rule, the same on
//! every node) it builds the prompt — persona (the stimulus's own persona fields win), the
//! stimulus context and the Master state (coherence, dopamine, cognitive state) — calls its
//! backend, extracts the JSON array of commands, applies the command ward and publishes an
//! `intent` event. The intent is appended when the answer is there, so it is stamped with the
//! heads of *that* moment: a 45 s model call never yields a stale Lamport clock. Failures
//! (timeouts, unparsable answers, everything refused by the ward) are published too, as intents
//! with an `error` and no commands, which the election counts but never elects.
//!
//! Each emissary answers at most [`MAX_IN_FLIGHT`] stimuli at once; a stimulus beyond that is
//! answered at once with a `busy` failure, so a slow model never builds an unbounded backlog.

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chorus_core::{AuthorId, EventId, SignedEvent, event::kind};
use chorus_kairos::body::{Failure, Intent, Registration, Stimulus};
use chorus_llm::{Backend, BackendConfig, ChatMessage, ChatRequest, Role, commands};
use ipld_core::ipld::Ipld;
use prometheus_client::metrics::histogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{Semaphore, broadcast::error::RecvError};

use crate::{handle::NodeHandle, write::WriteError};

/// Stimuli one emissary answers concurrently.
pub const MAX_IN_FLIGHT: usize = 4;
/// Characters of a stimulus context put into a prompt (the rest is cut, marked).
pub const MAX_CONTEXT_CHARS: usize = 2_000;
/// Characters of a failed answer kept in the failure event.
pub const MAX_RAW_IN_FAILURE: usize = 200;
/// Stimuli an emissary keeps waiting for an election that selects it.
pub const MAX_WAITING: usize = 256;
/// How long a stimulus waits for an election that selects this emissary.
pub const RESELECT_WINDOW: Duration = Duration::from_secs(60);
/// Registration retries while the node's writes are still held (write gate).
const REGISTER_ATTEMPTS: u32 = 20;
/// Stimuli seen between two checks that the registration is still in the state (`kairos/3`
/// expires the registrations of an author silent for 64 stimuli; a node that was away, or a
/// light node never asked, registers again within this many stimuli of noticing).
pub const REGISTRATION_CHECK_EVERY: u64 = 16;
/// Characters of a backend's model name or error message kept in an intent.
pub const MAX_NOTE_CHARS: usize = 512;

/// One emissary as configured (`[[emissary]]` in a node's emissary file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmissaryConfig {
    pub name: String,
    #[serde(default = "default_role")]
    pub role: String,
    #[serde(default = "default_backstory")]
    pub backstory: String,
    pub backend: BackendConfig,
    /// 0 = greedy.
    #[serde(default)]
    pub temperature: f32,
    /// Sampling seed; mixed with the stimulus id so every stimulus gets its own draw.
    #[serde(default)]
    pub seed: u64,
}

fn default_role() -> String {
    "Cryptic Being".into()
}
fn default_backstory() -> String {
    "You exist.".into()
}

/// `[[emissary]]` tables of a TOML file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmissaryFile {
    #[serde(default)]
    pub emissary: Vec<EmissaryConfig>,
}

/// Counters of one emissary (`/v1/status`, `/metrics`).
#[derive(Debug)]
pub struct EmissaryStats {
    pub stimuli_seen: AtomicU64,
    pub selected: AtomicU64,
    pub in_flight: AtomicU64,
    pub intents: AtomicU64,
    pub failures: AtomicU64,
    pub refused_commands: AtomicU64,
    pub busy: AtomicU64,
    pub lagged: AtomicU64,
    pub model_ms_total: AtomicU64,
    /// Registrations written after the first (the machine had expired it).
    pub registered_again: AtomicU64,
    /// Each model call's duration (`chorus_emissary_model_seconds`).
    pub model_seconds: Histogram,
}

impl EmissaryStats {
    pub fn new(model_seconds: Histogram) -> Self {
        let zero = AtomicU64::default;
        EmissaryStats {
            stimuli_seen: zero(),
            selected: zero(),
            in_flight: zero(),
            intents: zero(),
            failures: zero(),
            refused_commands: zero(),
            busy: zero(),
            lagged: zero(),
            model_ms_total: zero(),
            registered_again: zero(),
            model_seconds,
        }
    }
}

/// A running emissary as the rest of the node sees it.
#[derive(Clone)]
pub struct EmissaryInfo {
    pub name: String,
    pub backend: String,
    pub stats: Arc<EmissaryStats>,
}

impl EmissaryInfo {
    pub fn json(&self) -> Value {
        let s = &self.stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "name": self.name, "backend": self.backend,
            "stimuli_seen": l(&s.stimuli_seen), "selected": l(&s.selected),
            "in_flight": l(&s.in_flight), "intents": l(&s.intents), "failures": l(&s.failures),
            "refused_commands": l(&s.refused_commands), "busy": l(&s.busy), "lagged": l(&s.lagged),
            "model_ms_total": l(&s.model_ms_total),
            "registered_again": l(&s.registered_again),
        })
    }
}

/// The Master state a prompt carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Mood {
    pub coherence: f64,
    pub dopamine: f64,
    pub cognitive_state: String,
}

impl Mood {
    fn of_state(state: &Value) -> Mood {
        let s = &state["state"];
        Mood {
            coherence: s["coherence"].as_f64().unwrap_or(0.0),
            dopamine: s["dopamine"].as_f64().unwrap_or(0.0),
            cognitive_state: s["cognitive_state"]
                .as_str()
                .unwrap_or("steady")
                .to_string(),
        }
    }
}

/// The chat for one stimulus: the original swarm's system prompt (persona, qualia, the JSON
/// contract) with plain game commands instead of Python, and its user prompt. What the
/// stimulus leaves out or blank comes from the emissary's own configuration.
pub fn prompt(cfg: &EmissaryConfig, stimulus: &Ipld, mood: &Mood) -> Vec<ChatMessage> {
    let s = Stimulus::read(stimulus);
    fn given(v: Option<&str>) -> Option<&str> {
        v.filter(|t| !t.trim().is_empty())
    }
    let given_or =
        |v: &Option<String>, default: &str| given(v.as_deref()).unwrap_or(default).to_string();
    let name = given_or(&s.npc_name, &cfg.name);
    let role = given_or(&s.role, &cfg.role);
    let backstory = given_or(&s.backstory, &cfg.backstory);
    let context = given(s.context.as_deref())
        .or_else(|| given(Some(&s.text)))
        .unwrap_or("");
    let context: String = if context.chars().count() > MAX_CONTEXT_CHARS {
        let cut: String = context.chars().take(MAX_CONTEXT_CHARS).collect();
        format!("{cut} [...]")
    } else {
        context.to_string()
    };
    let system = format!(
        "You are {name}.\nRole: {role}\nBackstory: {backstory}\n\n\
         You are an autonomous being inhabiting a text world (a MUD).\n\
         Your current state:\n- Coherence: {:.4}\n- Dopamine: {:.4}\n- Cognitive state: {}\n\n\
         Act out your persona, influenced by your state.\n\
         Answer with a JSON array of 1 to {} game commands, for example [\"say Greetings!\", \"go north\"].\n\
         Only plain game commands: never Python code. Output only the JSON array.",
        mood.coherence,
        mood.dopamine,
        mood.cognitive_state,
        commands::MAX_COMMANDS,
    );
    let user = format!(
        "[ENVIRONMENT CONTEXT]\n{context}\n\nWhat do you do next? Return only the JSON array."
    );
    // One worked example: small models follow a shown format far better than a described one.
    vec![
        ChatMessage::new(Role::System, system),
        ChatMessage::new(
            Role::User,
            "[ENVIRONMENT CONTEXT]\nA traveller greets you at the door.\n\n\
             What do you do next? Return only the JSON array.",
        ),
        ChatMessage::new(
            Role::Assistant,
            r#"["say Welcome, traveller! Come in out of the rain.", "bow"]"#,
        ),
        ChatMessage::new(Role::User, user),
    ]
}

/// The first `n` characters of `s`: what a backend says (its model's name, its error) is
/// bounded before it goes into an intent, so an intent always fits one event.
fn clip(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// What an answer becomes: the intent to publish (`refused` holds what the ward took out).
pub fn intent_of(
    emissary: &str,
    stimulus: EventId,
    answer: Result<(String, String), chorus_llm::LlmError>,
    model_ms: u64,
) -> Intent {
    let mut intent = Intent {
        re: Some(stimulus),
        emissary: emissary.into(),
        model_ms: Some(model_ms),
        ..Default::default()
    };
    let fail = |code: &str, why: String| {
        Some(Failure {
            code: code.into(),
            error: why,
        })
    };
    match answer {
        Err(e) => intent.failure = fail(e.code(), clip(&e.to_string(), MAX_NOTE_CHARS)),
        Ok((model, text)) => {
            intent.model = Some(clip(&model, MAX_NOTE_CHARS));
            match commands::parse(&text) {
                Err(e) => {
                    let raw: String = text.chars().take(MAX_RAW_IN_FAILURE).collect();
                    intent.failure = fail("unparsable", format!("{e}: {raw:?}"));
                }
                Ok(cmds) => {
                    let (kept, out): (Vec<String>, Vec<String>) = cmds
                        .into_iter()
                        .partition(|c| !chorus_kairos::ward::refused(c));
                    intent.refused = out;
                    if kept.is_empty() {
                        intent.failure = fail(
                            "ward",
                            "every command was refused by the command ward".into(),
                        );
                    } else {
                        intent.text = Some(serde_json::to_string(&kept).unwrap_or_default());
                        intent.commands = Some(kept);
                    }
                }
            }
        }
    }
    intent
}

/// Starts an emissary on `node`; returns what the node reports about it.
/// Starts one emissary; its model calls' durations go into `model_seconds`.
pub fn spawn(
    cfg: EmissaryConfig,
    backend: Arc<dyn Backend>,
    node: NodeHandle,
    model_seconds: Histogram,
) -> EmissaryInfo {
    let info = EmissaryInfo {
        name: cfg.name.clone(),
        backend: backend.name(),
        stats: Arc::new(EmissaryStats::new(model_seconds)),
    };
    let stats = info.stats.clone();
    tokio::spawn(async move {
        if let Err(e) = run(cfg, backend, node, stats).await {
            tracing::warn!("emissary stopped: {e}");
        }
    });
    info
}

async fn run(
    cfg: EmissaryConfig,
    backend: Arc<dyn Backend>,
    node: NodeHandle,
    stats: Arc<EmissaryStats>,
) -> anyhow::Result<()> {
    // Subscribe first: nothing published after registration is missed.
    let mut feed = node.subscribe();
    let mut changes = node.subscribe_elections();
    let author_text = node.status().await?.author.clone();
    let author: AuthorId = author_text
        .parse()
        .map_err(|e| anyhow::anyhow!("the node's author key {author_text:?}: {e}"))?;
    register(&cfg, &node, &author_text).await?;
    let author_text = Arc::new(author_text);
    tracing::info!(emissary = %cfg.name, backend = %backend.name(), "emissary ready");
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let cfg = Arc::new(cfg);
    let mut waiting = Waiting::default();
    loop {
        // The node pushes a stimulus on the feed before the election changes its fold made
        // (same turn, feed first): biased, so a stimulus is always known before its election.
        tokio::select! {
            biased;
            r = feed.recv() => match r {
                Ok(ev) if ev.kind == kind::STIMULUS => {
                    let seen = stats.stimuli_seen.fetch_add(1, Ordering::Relaxed) + 1;
                    waiting.add(ev, Instant::now());
                    if seen.is_multiple_of(REGISTRATION_CHECK_EVERY) {
                        register_again(&cfg, &node, &stats, &author_text);
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => {
                    stats.lagged.fetch_add(n, Ordering::Relaxed);
                    tracing::warn!(emissary = %cfg.name, missed = n, "emissary fell behind the feed");
                }
                Err(RecvError::Closed) => return Ok(()),
            },
            r = changes.recv() => {
                let elections = match r {
                    Ok(e) => vec![e],
                    // Fell behind the pushes: ask once where every election stands.
                    Err(RecvError::Lagged(n)) => {
                        stats.lagged.fetch_add(n, Ordering::Relaxed);
                        node.elections().await?.elections.into_iter().map(Arc::new).collect()
                    }
                    Err(RecvError::Closed) => return Ok(()),
                };
                for e in elections {
                    if !e.selects(&author, &cfg.name) {
                        continue;
                    }
                    if let Some(ev) = waiting.take(&e.stimulus, Instant::now()) {
                        stats.selected.fetch_add(1, Ordering::Relaxed);
                        start_answer(&cfg, &backend, &node, &stats, &slots, ev);
                    }
                }
            }
        }
    }
}

/// Stimuli seen on the feed and not answered yet: each is answered the first time a pushed
/// election selects this emissary. The selection is recomputed on every replica when earlier
/// events arrive late (the intents that set a stimulus's dopamine can come after it), so a
/// stimulus waits for [`RESELECT_WINDOW`]; at most [`MAX_WAITING`] wait (oldest dropped).
#[derive(Default)]
struct Waiting {
    stimuli: VecDeque<(EventId, Arc<SignedEvent>, Instant)>,
}

impl Waiting {
    fn add(&mut self, ev: Arc<SignedEvent>, now: Instant) {
        if self.stimuli.len() == MAX_WAITING {
            self.stimuli.pop_front();
        }
        self.stimuli.push_back((ev.id(), ev, now));
    }

    /// The stimulus `id` if it still waits (it waits no more).
    fn take(&mut self, id: &EventId, now: Instant) -> Option<Arc<SignedEvent>> {
        self.stimuli
            .retain(|(_, _, since)| now.duration_since(*since) < RESELECT_WINDOW);
        let at = self.stimuli.iter().position(|(s, _, _)| s == id)?;
        self.stimuli.remove(at).map(|(_, ev, _)| ev)
    }
}

/// Answers a stimulus in a task of its own, or publishes `busy` when every slot is taken.
fn start_answer(
    cfg: &Arc<EmissaryConfig>,
    backend: &Arc<dyn Backend>,
    node: &NodeHandle,
    stats: &Arc<EmissaryStats>,
    slots: &Arc<Semaphore>,
    ev: Arc<SignedEvent>,
) {
    let (cfg, backend, node, stats) = (cfg.clone(), backend.clone(), node.clone(), stats.clone());
    match slots.clone().try_acquire_owned() {
        Ok(permit) => {
            tokio::spawn(async move {
                stats.in_flight.fetch_add(1, Ordering::Relaxed);
                let r = answer(&cfg, backend.as_ref(), &node, &ev, &stats).await;
                stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                drop(permit);
                if let Err(e) = r {
                    tracing::warn!(emissary = %cfg.name, "answer not published: {e}");
                }
            });
        }
        Err(_) => {
            stats.busy.fetch_add(1, Ordering::Relaxed);
            let busy = chorus_llm::LlmError::Busy {
                backend: backend.name(),
                queued: MAX_IN_FLIGHT,
            };
            let body = intent_of(&cfg.name, ev.id(), Err(busy), 0).to_ipld();
            tokio::spawn(async move {
                publish(&node, &stats, body, false).await;
            });
        }
    }
}

/// Checks in a task of its own that the state still lists the emissary, and registers it
/// again if the machine expired it.
fn register_again(
    cfg: &Arc<EmissaryConfig>,
    node: &NodeHandle,
    stats: &Arc<EmissaryStats>,
    author: &Arc<String>,
) {
    let (cfg, node, stats, author) = (cfg.clone(), node.clone(), stats.clone(), author.clone());
    tokio::spawn(async move {
        match register(&cfg, &node, &author).await {
            Ok(true) => {
                stats.registered_again.fetch_add(1, Ordering::Relaxed);
                tracing::info!(emissary = %cfg.name, "registered again: the timeline had expired the registration");
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(emissary = %cfg.name, "registration check: {e}"),
        }
    });
}

/// Registers the emissary (an `emissary` event) unless the state already lists it; whether it
/// wrote one.
async fn register(cfg: &EmissaryConfig, node: &NodeHandle, author: &str) -> anyhow::Result<bool> {
    let listed = |state: &Value| {
        state["state"]["emissaries"].as_array().is_some_and(|l| {
            l.iter()
                .any(|e| e["author"] == author && e["name"] == cfg.name.as_str())
        })
    };
    for attempt in 0..REGISTER_ATTEMPTS {
        if listed(&node.state().await?) {
            return Ok(false);
        }
        let registration = Registration {
            name: cfg.name.clone(),
            role: Some(cfg.role.clone()),
            backstory: Some(cfg.backstory.clone()),
        };
        match node
            .append(vec![(kind::EMISSARY.into(), registration.to_ipld())])
            .await?
        {
            Ok(_) => return Ok(true),
            Err(e @ WriteError::Refused { .. }) => {
                anyhow::bail!("emissary {:?} cannot register: {e}", cfg.name)
            }
            Err(e) => {
                tracing::info!(emissary = %cfg.name, attempt, "registration not written yet: {e}");
                tokio::time::sleep(chorus_llm::retry::backoff(attempt)).await;
            }
        }
    }
    anyhow::bail!("could not register emissary {:?}", cfg.name)
}

async fn answer(
    cfg: &EmissaryConfig,
    backend: &dyn Backend,
    node: &NodeHandle,
    stimulus: &SignedEvent,
    stats: &EmissaryStats,
) -> anyhow::Result<()> {
    let mood = Mood::of_state(&node.state().await?);
    let mut req = ChatRequest::new(prompt(cfg, &stimulus.body, &mood));
    req.temperature = cfg.temperature;
    // Per-stimulus seed: the same emissary, stimulus and model give the same answer.
    let id = stimulus.id().0;
    req.seed = cfg.seed ^ u64::from_le_bytes(id[..8].try_into().unwrap_or_default());
    let t0 = Instant::now();
    let r = backend.complete(&req).await;
    let took = t0.elapsed();
    let ms = took.as_millis() as u64;
    stats.model_ms_total.fetch_add(ms, Ordering::Relaxed);
    stats.model_seconds.observe(took.as_secs_f64());
    if let Err(e) = &r {
        tracing::warn!(emissary = %cfg.name, "model call failed: {e}");
    }
    let intent = intent_of(&cfg.name, stimulus.id(), r.map(|c| (c.model, c.text)), ms);
    stats
        .refused_commands
        .fetch_add(intent.refused.len() as u64, Ordering::Relaxed);
    let ok = intent.commands.is_some();
    publish(node, stats, intent.to_ipld(), ok).await;
    Ok(())
}

/// Appends an intent (retrying while the node holds writes); counts it.
async fn publish(node: &NodeHandle, stats: &EmissaryStats, body: Ipld, ok: bool) {
    for attempt in 0..REGISTER_ATTEMPTS {
        match node.append(vec![(kind::INTENT.into(), body.clone())]).await {
            Ok(Ok(_)) => {
                if ok {
                    stats.intents.fetch_add(1, Ordering::Relaxed);
                } else {
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
            Ok(Err(e @ WriteError::Refused { .. })) => {
                tracing::error!("intent refused (a bug: intents are bounded): {e}");
                stats.failures.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(Err(e)) => {
                tracing::info!(attempt, "intent not written yet: {e}");
                tokio::time::sleep(chorus_llm::retry::backoff(attempt)).await;
            }
            Err(_) => return,
        }
    }
    tracing::warn!("intent dropped after {REGISTER_ATTEMPTS} refused writes");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> EventId {
        EventId([7; 32])
    }

    fn code(i: &Intent) -> Option<&str> {
        i.failure.as_ref().map(|f| f.code.as_str())
    }

    #[test]
    fn the_ward_strips_the_originals_dangerous_forms() {
        let text = r#"["py import os", "@py self.delete()", "say evennia.search_object", "caller.msg('x')", "say hello", "py", "@py"]"#;
        let intent = intent_of("e", id(), Ok(("m".into(), text.into())), 5);
        assert_eq!(intent.refused.len(), 6);
        assert_eq!(intent.commands, Some(vec!["say hello".to_string()]));
        assert!(chorus_kairos::ward::valid_commands(&intent.to_ipld()).is_some());
    }

    #[test]
    fn an_answer_the_ward_empties_is_a_failure_never_a_candidate() {
        let intent = intent_of(
            "e",
            id(),
            Ok(("m".into(), r#"["py x", "@py y"]"#.into())),
            5,
        );
        assert_eq!(intent.refused.len(), 2);
        assert_eq!(code(&intent), Some("ward"));
        assert!(intent.commands.is_none());
        assert!(chorus_kairos::ward::valid_commands(&intent.to_ipld()).is_none());
    }

    #[test]
    fn unparsable_answers_and_backend_errors_are_failure_events() {
        let intent = intent_of("e", id(), Ok(("m".into(), "I will go north".into())), 5);
        assert_eq!(code(&intent), Some("unparsable"));
        let err = chorus_llm::LlmError::Timeout {
            backend: "b".into(),
            timeout: std::time::Duration::from_secs(45),
        };
        let intent = intent_of("e", id(), Err(err), 45_000);
        assert_eq!(code(&intent), Some("timeout"));
        assert!(chorus_kairos::ward::valid_commands(&intent.to_ipld()).is_none());
    }

    #[test]
    fn the_stimulus_persona_wins_over_the_emissarys_own() {
        let cfg = EmissaryConfig {
            name: "own".into(),
            role: "Own Role".into(),
            backstory: "Own story".into(),
            backend: BackendConfig::Scripted {
                reply: "[]".into(),
                delay_ms: 0,
            },
            temperature: 0.0,
            seed: 0,
        };
        let stimulus = Stimulus {
            npc_name: Some("Mira".into()),
            role: Some(" ".into()),
            context: Some("A door creaks.".into()),
            ..Default::default()
        };
        let mood = Mood {
            coherence: 0.5,
            dopamine: 0.1,
            cognitive_state: "rising".into(),
        };
        let p = prompt(&cfg, &stimulus.to_ipld(), &mood);
        assert!(p[0].content.starts_with("You are Mira.\nRole: Own Role"));
        assert!(p[0].content.contains("Dopamine: 0.1000"));
        assert!(p.last().unwrap().content.contains("A door creaks."));
    }
}
