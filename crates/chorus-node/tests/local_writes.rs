//! Every local input path the HTTP API offers — `POST /v1/events` (kinds, texts, JSON bodies,
//! `count`), `POST /v1/members` (ops, keys, roles), the gateway's `/v1/swarm/intent` and the
//! OpenAI-compatible `/v1/chat/completions`
//! — with random inputs around the event bounds, in ASCII and multi-byte UTF-8, against one
//! real node: an input the node takes ends up as events that a peer's decoder accepts, and an
//! input it refuses (4xx) leaves the timeline exactly as it was. (The CLI's offline path,
//! `Replica::append_batch`, has the same property in `chorus-store/tests/local_writes.rs`.)

use std::{path::Path, time::Duration};

use chorus_core::{SignedEvent, genesis::Genesis, limits::MAX_BODY_BYTES};
use chorus_harness::Api;
use chorus_kairos::KairosMachine;
use chorus_node::NodeConfig;
use chorus_store::{Replica, Store, replica::STORE_FILE};
use proptest::prelude::*;
use serde_json::{Value, json};

struct Node {
    api: Api,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Node {
    fn start(dir: &Path) -> Node {
        let replica = Replica::init(
            dir,
            |k| Genesis::new_body("local-writes", k.author(), "kairos/1"),
            KairosMachine,
        )
        .expect("init");
        let addr_file = dir.join("api.addr");
        let cfg = NodeConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            bootstrap: vec![],
            api: Some("127.0.0.1:0".parse().unwrap()),
            light: false,
            api_addr_file: Some(addr_file.clone()),
            api_token: None,
            api_open: false,
            emissaries: vec![],
            heartbeat_ms: None,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                chorus_node::run(replica, cfg, async {
                    let _ = stopped.await;
                })
                .await
                .expect("node runs");
            });
        });
        let mut api = String::new();
        for _ in 0..600 {
            if let Ok(s) = std::fs::read_to_string(&addr_file)
                && s.ends_with('\n')
            {
                api = s.trim().to_string();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!api.is_empty(), "the node's API did not come up");
        Node {
            api: Api::new(&api, Duration::from_secs(60)),
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// (status, JSON answer) of a POST.
    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let a = self.api.post_answer(path, body).expect("the node answers");
        (a.status, a.body)
    }

    /// (event count, heads) of the node's timeline.
    fn timeline(&self) -> (u64, Value) {
        let v = self.api.get("/v1/status").expect("status");
        (v["events"].as_u64().expect("events"), v["heads"].clone())
    }

    fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap();
    }
}

/// Text of about `bytes` bytes in one of three alphabets (1-, 2- and 4-byte characters).
fn text(bytes: usize, alphabet: usize) -> String {
    let c = ["a", "é", "\u{1F600}"][alphabet];
    c.repeat(bytes / c.len())
}

/// Sizes that matter: small, and on either side of each bound a request meets. Small is
/// weighted up: a gateway request is stored only when every field is within its bound, and
/// with equal weights 2 % of runs met no stored chat request at all (the check below).
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => 0usize..64,
        1 => (MAX_BODY_BYTES - 64)..(MAX_BODY_BYTES + 64),
        1 => Just(8 * 1024 - 2),
        1 => Just(8 * 1024 + 4),
        1 => Just(16 * 1024 - 2),
        1 => Just(16 * 1024 + 4),
        1 => Just(100 * 1024),
    ]
}

fn kind() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("stimulus".to_string()),
        Just("Bad Kind!".to_string()),
        Just(String::new()),
        Just("k".repeat(32)),
        Just("k".repeat(33)),
        Just("ké".to_string()),
        "[a-z0-9_-]{1,40}",
    ]
}

#[derive(Debug, Clone)]
enum Input {
    Events {
        kind: String,
        text: Option<(usize, usize)>,
        count: usize,
    },
    Intent {
        fields: [(usize, usize); 4],
    },
    Chat {
        system: (usize, usize),
        user: (usize, usize),
    },
    /// `/v1/members`: an op (good, for another order rule, or made up), a key (32 bytes of hex,
    /// or a wrong length, non-hex, multi-byte text) and a role or none.
    Member {
        op: String,
        key: String,
        role: Option<String>,
    },
}

fn member_key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[0-9a-f]{64}",
        1 => "[0-9a-f]{62}",
        1 => "[0-9a-f]{66}",
        1 => "[0-9a-zA-Z]{64}",
        1 => Just("é".repeat(32)),
        1 => Just(String::new()),
    ]
}

fn input() -> impl Strategy<Value = Input> {
    let field = || (size(), 0usize..3);
    prop_oneof![
        (
            kind(),
            proptest::option::of(field()),
            prop_oneof![1usize..4, Just(100), Just(1000), Just(1001)]
        )
            .prop_map(|(kind, text, count)| Input::Events { kind, text, count }),
        [field(), field(), field(), field()].prop_map(|fields| Input::Intent { fields }),
        (field(), field()).prop_map(|(system, user)| Input::Chat { system, user }),
        (
            prop_oneof![
                Just("add".to_string()),
                Just("remove".to_string()),
                Just("vote-remove".to_string()),
                Just("vote-restore".to_string()),
                "[a-zé-]{0,12}",
            ],
            member_key(),
            proptest::option::of(prop_oneof![
                Just("writer".to_string()),
                Just("anchor".to_string()),
                Just("admin".to_string()),
                Just("Writer".to_string()),
            ]),
        )
            .prop_map(|(op, key, role)| Input::Member { op, key, role }),
    ]
}

fn request(i: &Input) -> (&'static str, Value) {
    match i {
        Input::Events {
            kind,
            text: Some((n, a)),
            count,
        } => (
            "/v1/events",
            json!({"kind": kind, "text": text(*n, *a), "count": count}),
        ),
        Input::Events {
            kind,
            text: None,
            count,
        } => (
            "/v1/events",
            json!({"kind": kind, "body": {"n": [1, 2.5, "x"]}, "count": count}),
        ),
        Input::Intent { fields } => {
            let [a, b, c, d] = fields.map(|(n, al)| text(n, al));
            (
                "/v1/swarm/intent",
                json!({"npc_name": a, "role": b, "backstory": c, "context": d, "timeout_ms": 1}),
            )
        }
        Input::Member { op, key, role } => {
            let mut body = json!({"op": op, "key": key});
            if let Some(r) = role {
                body["role"] = json!(r);
            }
            ("/v1/members", body)
        }
        Input::Chat { system, user } => (
            "/v1/chat/completions",
            json!({
                "messages": [
                    {"role": "system", "content": text(system.0, system.1)},
                    {"role": "user", "content": text(user.0, user.1)},
                ],
                "timeout_ms": 1,
            }),
        ),
    }
}

#[test]
fn what_the_api_stores_a_peer_accepts_and_what_it_refuses_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let outcomes = std::cell::RefCell::new(Vec::<u16>::new());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&input(), |i| {
            let before = node.timeline();
            let (path, body) = request(&i);
            let (status, answer) = node.post(path, &body);
            let after = node.timeline();
            // The gateway's requests ask for a 1 ms election: 504 means the stimulus was
            // stored and no emissary answered (there are none).
            let stored =
                status == 200 || (status == 504 && !matches!(path, "/v1/events" | "/v1/members"));
            prop_assert!(
                stored || (400..500).contains(&status),
                "{path}: unexpected {status}: {answer}"
            );
            if stored {
                prop_assert!(after.0 > before.0, "{path}: {status} but nothing stored");
            } else {
                prop_assert_eq!(
                    &after,
                    &before,
                    "{}: refused ({}) but the timeline changed",
                    path,
                    status
                );
                let why = answer["error"].as_str().unwrap_or_default();
                prop_assert!(!why.is_empty(), "a refusal says why: {answer}");
                if status == 413 {
                    prop_assert!(why.contains("bytes"), "413 names the bound: {why}");
                }
            }
            outcomes.borrow_mut().push(status);
            Ok(())
        })
        .unwrap();
    node.stop();
    let outcomes = outcomes.into_inner();
    // Not vacuous: both sides of the bounds were met.
    for code in [200, 400, 413, 422, 504] {
        assert!(outcomes.contains(&code), "no {code} in {outcomes:?}");
    }

    // Every stored event is one a peer's decoder takes; the store opens and replays.
    let store = Store::open(&dir.path().join(STORE_FILE)).unwrap();
    store.integrity_check().unwrap();
    let mut n = 0;
    for ev in store.ordered_events() {
        let ev = ev.expect("every stored block decodes");
        SignedEvent::decode(ev.bytes()).expect("a peer accepts every stored event");
        n += 1;
    }
    assert!(n > 1);
    drop(store);
    Replica::open(dir.path(), KairosMachine).expect("the store reopens");
}
