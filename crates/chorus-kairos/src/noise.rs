//! Counter-based noise: a standard normal that is a pure function of
//! (event id, token index, pair index). No state advances, so reading the engine never changes
//! the future, and a replay on any machine draws the same numbers.
//!
//! ```text
//! k0, k1 = u64_le(event[0..8]), u64_le(event[8..16])
//! u1 = mix(k0 ^ mix(k1 ^ mix(token ^ mix(pair ^ 0x9E3779B97F4A7C15))))
//! u2 = mix(u1 ^ 0xD1B54A32D192ED03)
//! U1 = ((u1 >> 11) + 1) * 2^-53        in (0, 1]
//! U2 = (u2 >> 11) * 2^-53              in [0, 1)
//! z  = sqrt(-2 ln U1) * cos(2 pi U2)   (Box-Muller; ln and cos from libm)
//! ```
//! `mix` is the SplitMix64 finaliser.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

const P53: f64 = 1.0 / (1u64 << 53) as f64;

/// Most normals a [`NoiseCache`] holds (4 MiB of `f64`): the last ~4 400 tokens of the master
/// profile (119 pairs a token), ~520 of the emissary profile (999).
pub const NOISE_CACHE_VALUES: usize = 1 << 19;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A standard normal draw keyed by (event, token, pair).
pub fn normal(event: &[u8; 32], token: u64, pair: u64) -> f64 {
    let k0 = u64::from_le_bytes(event[0..8].try_into().expect("8 bytes"));
    let k1 = u64::from_le_bytes(event[8..16].try_into().expect("8 bytes"));
    let u1 = mix(k0 ^ mix(k1 ^ mix(token ^ mix(pair ^ 0x9E37_79B9_7F4A_7C15))));
    let u2 = mix(u1 ^ 0xD1B5_4A32_D192_ED03);
    let a = ((u1 >> 11) + 1) as f64 * P53;
    let b = (u2 >> 11) as f64 * P53;
    (-2.0 * libm::log(a)).sqrt() * libm::cos(2.0 * std::f64::consts::PI * b)
}

/// The normals of recently integrated tokens, so that a re-fold (a late event rewinding a few
/// hundred positions, then the same events applied again) does not draw them again. [`normal`]
/// is a pure function of (event bytes 0..16, token, pair): a held value *is* the value, bit for
/// bit, and what the cache holds can never change a state. An engine and its clones (the
/// timeline's checkpoints) share one cache; oldest tokens are dropped first past
/// [`NOISE_CACHE_VALUES`]. Lookups only: no iteration order reaches anything.
#[derive(Default)]
pub struct NoiseCache {
    inner: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    by_token: HashMap<(u128, u64), Arc<[f64]>>,
    oldest_first: VecDeque<(u128, u64)>,
    values: usize,
    /// Normals drawn (not read back) since the cache was made (tests, benches).
    drawn: u64,
}

impl NoiseCache {
    /// `normal(event, token, pair)` for pair in `1..=pairs`, in that order.
    pub fn normals(&self, event: &[u8; 32], token: u64, pairs: usize) -> Arc<[f64]> {
        let key = (
            u128::from_le_bytes(event[..16].try_into().expect("16 bytes")),
            token,
        );
        if let Some(v) = self.lock().by_token.get(&key)
            && v.len() >= pairs
        {
            return v.clone();
        }
        // Drawn outside the lock (clones may step on other threads).
        let v: Arc<[f64]> = (1..=pairs as u64)
            .map(|pair| normal(event, token, pair))
            .collect();
        let mut held = self.lock();
        held.drawn += pairs as u64;
        // A token seen before with a shorter window (fewer pairs) is replaced in place.
        match held.by_token.insert(key, v.clone()) {
            Some(shorter) => held.values -= shorter.len(),
            None => held.oldest_first.push_back(key),
        }
        held.values += v.len();
        while held.values > NOISE_CACHE_VALUES {
            let Some(old) = held.oldest_first.pop_front() else {
                break;
            };
            if let Some(gone) = held.by_token.remove(&old) {
                held.values -= gone.len();
            }
        }
        v
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        // A poisoned lock only means another clone's step panicked mid-insert; the map is
        // still a set of correct values.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Normals held.
    pub fn held_values(&self) -> usize {
        self.lock().values
    }

    /// Normals drawn rather than read back, since the cache was made.
    pub fn drawn(&self) -> u64 {
        self.lock().drawn
    }
}

impl std::fmt::Debug for NoiseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NoiseCache({} values)", self.held_values())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_gives_the_function_bits_and_stays_bounded() {
        let cache = NoiseCache::default();
        let event = [7; 32];
        // 12 000 tokens of up to 149 pairs: past the bound (about 900 000 values), and a token
        // seen again with a longer window.
        for token in 0..12_000u64 {
            // Odd tokens are asked again at once with a longer window: replaced in place.
            let pairs = (token as usize % 150).max(1) + (token as usize % 2) * 7;
            if token % 2 == 1 {
                cache.normals(&event, token % 9_000, pairs - 7);
            }
            let got = cache.normals(&event, token % 9_000, pairs);
            assert!(got.len() >= pairs);
            for (k, v) in got.iter().enumerate().take(pairs) {
                assert_eq!(
                    v.to_bits(),
                    normal(&event, token % 9_000, k as u64 + 1).to_bits()
                );
            }
            let held = cache.lock();
            assert!(held.values <= NOISE_CACHE_VALUES);
            assert_eq!(
                held.values,
                held.by_token.values().map(|v| v.len()).sum::<usize>()
            );
            assert_eq!(held.by_token.len(), held.oldest_first.len());
        }
        assert!(cache.held_values() > NOISE_CACHE_VALUES - 150);
        assert!(cache.drawn() > NOISE_CACHE_VALUES as u64 + 100_000);
        // Only bytes 0..16 of the event key the noise, and so the cache.
        let mut other = event;
        other[20] ^= 1;
        assert_eq!(
            cache.normals(&other, 3, 5)[4].to_bits(),
            normal(&event, 3, 5).to_bits()
        );
    }

    #[test]
    fn moments_look_standard_normal() {
        let n = 200_000u64;
        let (mut s, mut s2) = (0.0, 0.0);
        for i in 0..n {
            let z = normal(&[5; 32], i / 97, i % 97);
            s += z;
            s2 += z * z;
        }
        let mean = s / n as f64;
        let var = s2 / n as f64 - mean * mean;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "var {var}");
    }

    #[test]
    fn keyed_not_stateful() {
        assert_eq!(
            normal(&[1; 32], 3, 4).to_bits(),
            normal(&[1; 32], 3, 4).to_bits()
        );
        assert_ne!(normal(&[1; 32], 3, 4), normal(&[1; 32], 3, 5));
    }
}
