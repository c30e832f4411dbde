//! SplitMix64: the simulator's only source of randomness. Every stream is derived from the run's
//! seed and a stream name, so adding a node or a fault does not shift another stream's draws.

use sha2::{Digest, Sha256};

#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// The stream `name` of the run seeded with `seed`.
    pub fn stream(seed: u64, name: &str) -> Rng {
        let mut h = Sha256::new();
        h.update(seed.to_le_bytes());
        h.update(name.as_bytes());
        let d = h.finalize();
        Rng(u64::from_le_bytes(d[..8].try_into().expect("8 bytes")))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// True with probability `p` (0..=1), decided in integer parts per million.
    pub fn chance(&mut self, p: f64) -> bool {
        let ppm = (p.clamp(0.0, 1.0) * 1_000_000.0) as u64;
        self.below(1_000_000) < ppm
    }
    /// `base` ± `pct` percent, never below 0.
    pub fn jitter(&mut self, base: u64, pct: u64) -> u64 {
        if pct == 0 || base == 0 {
            return base;
        }
        let span = base * pct / 100;
        base - span + self.below(2 * span + 1)
    }
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i as u64 + 1) as usize);
        }
    }
}
