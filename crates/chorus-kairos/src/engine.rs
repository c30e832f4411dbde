//! The phase engine: a window of unit-phasor vectors on a token clock, the temporal resonance
//! `T_tau`, coherence `|T_tau|^2`, the collapse latch and the recovery variable.
//!
//! Port of the original `core/engine.py` with its bugs fixed (see `docs/design/kairos.md`):
//! logical time only (`dt = 1/f` per token), noise from a counter-based PRNG keyed by
//! (event id, token index, pair index) instead of a stateful RNG that reads advanced, a real
//! Wiener increment `dW ~ N(0, dt)`, no collapse from a window holding a single pair, and reads
//! that never mutate. Every transcendental function goes through `libm`.

use std::{collections::VecDeque, f64::consts::PI, sync::Arc};

use crate::{
    encoder::{DIM, PhaseEncoder, phasors},
    hermitian::{BATCH, Kernel, Phasors},
    noise,
};

/// Engine constants of one profile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    pub name: &'static str,
    /// History window (entries).
    pub window: usize,
    /// Lag tau, seconds of logical time.
    pub tau: f64,
    /// Spectral weight omega, rad/s.
    pub omega: f64,
    /// Collapse threshold I_c.
    pub threshold: f64,
    /// Token frequency f, Hz (dt = 1/f).
    pub frequency: f64,
    /// Noise sigma.
    pub sigma: f64,
    /// Kuramoto coupling K.
    pub coupling: f64,
}

impl Profile {
    /// The Master (kairos-loop) profile: window 120, tau 60 s, omega 2pi, I_c 0.95.
    pub const MASTER: Profile = Profile {
        name: "master",
        window: 120,
        tau: 60.0,
        omega: 2.0 * PI,
        threshold: 0.95,
        frequency: 20.0,
        sigma: 0.005,
        coupling: 1.0,
    };
    /// The Emissary profile: window 1000, tau 0.01 s, omega 2pi*10.
    pub const EMISSARY: Profile = Profile {
        name: "emissary",
        window: 1000,
        tau: 0.01,
        omega: 2.0 * PI * 10.0,
        threshold: 0.95,
        frequency: 20.0,
        sigma: 0.005,
        coupling: 1.0,
    };

    pub fn by_name(name: &str) -> Option<Profile> {
        [Profile::MASTER, Profile::EMISSARY]
            .into_iter()
            .find(|p| p.name == name)
    }

    pub fn dt(&self) -> f64 {
        1.0 / self.frequency
    }

    /// Lag in entries: `max(1, round_half_even(tau * f))` (Python's `round`).
    pub fn lag(&self) -> usize {
        let x = self.tau * self.frequency;
        let r = libm::rint(x); // rint rounds half to even in the default rounding mode
        (r as usize).max(1)
    }
}

/// One window entry: the encoder key of a token and its phasors (derived, not serialised).
#[derive(Debug)]
pub struct Entry {
    pub key: [u8; 32],
    re: [f64; DIM],
    im: [f64; DIM],
    /// `|mean(phi)|`: the order parameter of this vector, used when it is the delayed one.
    order: f64,
}

impl Entry {
    pub fn new(encoder: &dyn PhaseEncoder, key: [u8; 32]) -> Entry {
        let (re, im) = phasors(encoder, &key);
        let (mut sr, mut si) = (0.0, 0.0);
        for k in 0..DIM {
            sr += re[k];
            si += im[k];
        }
        let (mr, mi) = (sr / DIM as f64, si / DIM as f64);
        Entry {
            key,
            re,
            im,
            order: (mr * mr + mi * mi).sqrt(),
        }
    }

    fn phasors(&self) -> Phasors<'_> {
        Phasors {
            re: &self.re,
            im: &self.im,
        }
    }

    /// Argument of the mean phasor (the "eigen-phase" of the text).
    pub fn mean_phase(&self) -> f64 {
        let (mut sr, mut si) = (0.0, 0.0);
        for k in 0..DIM {
            sr += self.re[k];
            si += self.im[k];
        }
        libm::atan2(si, sr)
    }
}

/// The engine state. Cloning is cheap (entries are shared).
#[derive(Debug, Clone)]
pub struct Engine {
    pub profile: Profile,
    pub window: VecDeque<Arc<Entry>>,
    /// Tokens integrated since genesis (the token clock: t = steps * dt).
    pub steps: u64,
    pub collapsed: bool,
    /// Step at which the latch first fired.
    pub collapse_step: Option<u64>,
    /// Number of steps on which a collapse fired.
    pub collapses: u64,
    pub recovery: f64,
    /// Coherence and T_tau of the latest step.
    pub coherence: f64,
    pub t_tau: (f64, f64),
    /// `e^{i omega i dt}` for i < window, via libm, computed once per profile.
    carousel: Arc<Vec<(f64, f64)>>,
    /// How the Hermitian products are computed (same bits whichever; not part of the state).
    kernel: Kernel,
    /// Recent tokens' noise, shared with the clones (same bits held or not; not part of the
    /// state): a re-fold after a late event draws none of it again.
    noise: Arc<noise::NoiseCache>,
}

/// Result of one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub coherence: f64,
    /// Whether a collapse fired on this step (coherence >= I_c with at least two pairs).
    pub fired: bool,
}

/// Noise key of one step: the event being applied and the token's index inside it.
#[derive(Debug, Clone, Copy)]
pub struct NoiseKey {
    pub event: [u8; 32],
    pub token: u64,
}

impl Engine {
    pub fn new(profile: Profile) -> Engine {
        let dt = profile.dt();
        let carousel = (0..profile.window)
            .map(|i| {
                let x = profile.omega * (i as f64 * dt);
                (libm::cos(x), libm::sin(x))
            })
            .collect();
        Engine {
            profile,
            window: VecDeque::with_capacity(profile.window),
            steps: 0,
            collapsed: false,
            collapse_step: None,
            collapses: 0,
            recovery: 0.0,
            coherence: 0.0,
            t_tau: (0.0, 0.0),
            carousel: Arc::new(carousel),
            kernel: Kernel::best(),
            noise: Arc::default(),
        }
    }

    /// The window entry of `key`: shared with an entry of the window holding the same key (a
    /// word seen in the last `window` tokens), else computed (768 `libm` calls, about as long
    /// as a step). Phasors are a pure function of the key, so sharing changes no bit.
    pub fn entry(&self, encoder: &dyn PhaseEncoder, key: [u8; 32]) -> Arc<Entry> {
        match self.window.iter().rev().find(|e| e.key == key) {
            Some(e) => e.clone(),
            None => Arc::new(Entry::new(encoder, key)),
        }
    }

    /// Shares `other`'s noise memo (a restored checkpoint takes over the state it replaces:
    /// the re-fold reads back what was drawn). Values of a pure function only: no bit changes.
    pub fn share_noise(&mut self, other: &Engine) {
        self.noise = other.noise.clone();
    }

    /// The same engine computing its products with `kernel` (benches and tests compare them).
    pub fn with_kernel(mut self, kernel: Kernel) -> Engine {
        self.kernel = kernel;
        self
    }

    /// Integrates one token: push its phasors, recompute T_tau with fresh, keyed noise, check the
    /// collapse, update the recovery variable.
    pub fn temporalize(&mut self, entry: Arc<Entry>, noise_key: NoiseKey) -> Step {
        if self.window.len() == self.profile.window {
            self.window.pop_front();
        }
        self.window.push_back(entry);
        self.steps += 1;
        let t = self.compute_t_tau(noise_key);
        self.t_tau = t;
        let coherence = (t.0 * t.0 + t.1 * t.1).min(1.0);
        self.coherence = coherence;
        // A single pair gives |T| = 1 by construction (the original's trivial collapse): only a
        // window with at least two pairs can fire.
        let fired = self.window.len() >= 3 && coherence >= self.profile.threshold;
        if fired {
            self.collapses += 1;
            if !self.collapsed {
                self.collapsed = true;
                self.collapse_step = Some(self.steps);
            }
        }
        if self.collapsed {
            self.recovery += 0.1 * (coherence - 0.5 * self.recovery);
        }
        Step { coherence, fired }
    }

    /// `T_tau` over the current window. Pairs `(i, j = max(0, i - L))` for i in 1..n.
    fn compute_t_tau(&self, key: NoiseKey) -> (f64, f64) {
        let n = self.window.len();
        if n < 2 {
            return (0.0, 0.0);
        }
        let p = &self.profile;
        let dt = p.dt();
        let lag = p.lag();
        let mu = -0.5 * self.recovery;
        let sqrt_dt = dt.sqrt();
        let (mut tr, mut ti, mut d) = (0.0, 0.0, 0.0);
        let mut products = [(0.0, 0.0); BATCH];
        let normals = self.noise.normals(&key.event, key.token, n - 1);
        for i in 1..n {
            let j = i.saturating_sub(lag);
            let b = &self.window[j];
            // The products of pairs i.. i + BATCH - 1, computed together when i starts a batch.
            let slot = (i - 1) % BATCH;
            if slot == 0 {
                let pairs: [_; BATCH] = std::array::from_fn(|s| {
                    let i = (i + s).min(n - 1);
                    let j = i.saturating_sub(lag);
                    (self.window[j].phasors(), self.window[i].phasors())
                });
                let len = BATCH.min(n - i);
                self.kernel.products(&pairs[..len], &mut products);
            }
            let (br, bi) = products[slot];
            // mean_k sin(arg a_k - arg b_k) == Im(<b, a>/N) for unit phasors.
            let c = p.coupling * b.order * bi;
            let m0 = (br * br + bi * bi).sqrt();
            let (mut sr, mut si) = if m0 > 0.0 {
                let f = (m0 + c) / m0;
                (br * f, bi * f)
            } else {
                (br, bi)
            };
            let m = (sr * sr + si * si).sqrt();
            if m > 0.0 {
                sr /= m;
                si /= m;
                let dw = normals[i - 1] * sqrt_dt; // noise::normal(event, token, i)
                let g = 1.0 + (mu * dt + p.sigma * dw);
                sr *= g;
                si *= g;
                let m2 = (sr * sr + si * si).sqrt();
                if m2 > 1.0 {
                    sr /= m2;
                    si /= m2;
                }
            }
            let (er, ei) = self.carousel[i];
            tr += (sr * er - si * ei) * dt;
            ti += (sr * ei + si * er) * dt;
            d += dt;
        }
        (tr / d, ti / d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoder::Sha256Encoder;

    fn entry(t: &str) -> Arc<Entry> {
        Arc::new(Entry::new(&Sha256Encoder, Sha256Encoder.key(t)))
    }

    #[test]
    fn master_lag_is_1200_and_emissary_lag_is_1() {
        assert_eq!(Profile::MASTER.lag(), 1200);
        assert_eq!(Profile::EMISSARY.lag(), 1);
    }

    #[test]
    fn first_input_never_collapses() {
        for t in ["a", "hello", "", "x y"] {
            let mut e = Engine::new(Profile::MASTER);
            let s = e.temporalize(
                entry(t),
                NoiseKey {
                    event: [0; 32],
                    token: 0,
                },
            );
            assert!(!s.fired && !e.collapsed);
            assert_eq!(s.coherence, 0.0);
        }
    }

    #[test]
    fn same_inputs_same_bits() {
        let run = || {
            let mut e = Engine::new(Profile::MASTER);
            for (i, t) in "the we is becoming one and many"
                .split_whitespace()
                .enumerate()
            {
                e.temporalize(
                    entry(t),
                    NoiseKey {
                        event: [3; 32],
                        token: i as u64,
                    },
                );
            }
            (
                e.coherence.to_bits(),
                e.t_tau.0.to_bits(),
                e.t_tau.1.to_bits(),
            )
        };
        assert_eq!(run(), run());
    }

    /// A re-fold from a checkpoint clone (the window full) reads its noise back: it draws only
    /// the late token's 119 normals, and every step has a fresh engine's bits.
    #[test]
    fn a_refold_from_a_clone_reuses_the_noise_and_steps_to_a_fresh_engines_bits() {
        // Tokens of 40 events, 10 each; a late event's token goes in after event 15 (the
        // window, 120 tokens, is full by then: every step has 119 pairs).
        let tokens: Vec<(String, NoiseKey)> = (0..400usize)
            .map(|k| {
                let key = NoiseKey {
                    event: [(k / 10) as u8; 32],
                    token: k as u64 % 10,
                };
                (format!("w{}", k * 7 % 53), key)
            })
            .collect();
        let late = (
            "late".to_string(),
            NoiseKey {
                event: [200; 32],
                token: 3,
            },
        );
        let run = |e: &mut Engine, steps: &[(String, NoiseKey)]| -> Vec<[u64; 4]> {
            steps
                .iter()
                .map(|(w, key)| {
                    e.temporalize(entry(w), *key);
                    [e.coherence, e.t_tau.0, e.t_tau.1, e.recovery].map(f64::to_bits)
                })
                .collect()
        };
        let mut first = Engine::new(Profile::MASTER);
        run(&mut first, &tokens[..150]);
        let checkpoint = first.clone();
        let before_late = run(&mut first, &tokens[150..]);
        // The re-fold: the late token first, then the same 250 tokens again.
        let mut again = vec![late.clone()];
        again.extend(tokens[150..].iter().cloned());
        let mut fresh = Engine::new(Profile::MASTER);
        run(&mut fresh, &tokens[..150]);
        let want = run(&mut fresh, &again);
        // From the clone (an in-memory checkpoint), and from an engine with its own memo that
        // takes the first one's over (a checkpoint decoded from bytes, `Machine::carry_over`).
        let mut restored = Engine::new(Profile::MASTER);
        run(&mut restored, &tokens[..150]);
        restored.share_noise(&first);
        // The first re-fold draws the late token's 119 normals and nothing else; the second
        // finds even those.
        for (mut e, draws) in [(checkpoint, 119), (restored, 0)] {
            let drawn = e.noise.drawn();
            assert_eq!(run(&mut e, &again), want);
            assert_eq!(e.noise.drawn() - drawn, draws, "normals drawn again");
        }
        // Not vacuous: the late token moved every later step's bits.
        assert_ne!(want[1..], before_late[..]);
    }

    /// Both profiles (master pairs every entry with the oldest, emissary with its neighbour),
    /// past a full window, with every kernel this CPU has: every step's bits are those of the
    /// engine before the kernels (one pair at a time in plain Rust, commit 6b1a6b3), whose
    /// trace digests are written below. The golden timelines cover master only.
    #[test]
    fn every_kernel_steps_to_the_bits_of_the_engine_before_the_kernels() {
        use sha2::{Digest, Sha256};
        let before = [
            (
                Profile::MASTER,
                "485a3945c216adcc94c04e92315c7d6b665743b4f39eec34d5cdbfb7990e1c7e",
            ),
            (
                Profile::EMISSARY,
                "da02497f53e9ae57c24f58d026c2a1e0d51fa1a7eb5c1386787feeda832ec08a",
            ),
        ];
        for (profile, want) in before {
            for kernel in Kernel::available() {
                let mut e = Engine::new(profile).with_kernel(kernel);
                let mut h = Sha256::new();
                for i in 0..1_100usize {
                    e.temporalize(
                        entry(&format!("w{}", i * 7 % 131)),
                        NoiseKey {
                            event: [9; 32],
                            token: i as u64,
                        },
                    );
                    for x in [e.coherence, e.t_tau.0, e.t_tau.1, e.recovery] {
                        h.update(x.to_bits().to_le_bytes());
                    }
                }
                let got: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
                assert_eq!(
                    got,
                    want,
                    "{} with the {} kernel",
                    profile.name,
                    kernel.name()
                );
            }
        }
    }
}
