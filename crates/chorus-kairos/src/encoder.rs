//! Phase encoders: text → 384 angles. The default is the original system's SHA-256 fallback,
//! reproduced bit for bit (golden vectors in `shared/fixtures/phase_encoder_sha256.json`).
//!
//! The engine's window stores an encoder *key* per token (32 bytes) rather than 384 complex
//! numbers; the angles are a pure function of the key, so a checkpoint of a 120-entry window is
//! ~4 KB instead of ~740 KB, and the phasors are recomputed when a checkpoint is restored.

use sha2::{Digest, Sha256};

/// Number of angles per text.
pub const DIM: usize = 384;

/// A phase encoder. Its id (with version) is recorded in the genesis, so a replay can never
/// silently switch encoders.
pub trait PhaseEncoder: Send + Sync {
    fn id(&self) -> &'static str;
    /// The 32-byte key the angles derive from.
    fn key(&self, text: &str) -> [u8; 32];
    /// The angles of a key, in radians.
    fn angles(&self, key: &[u8; 32]) -> [f64; DIM];
}

/// The original's fallback: `h = SHA-256(utf8(text))`;
/// `angle_i = (((u32be(h[i%28..i%28+4]) + i*104729) mod 10^6) / 10^6) * 2 * pi - pi`,
/// evaluated left to right in IEEE-754 double (no transcendental function involved).
#[derive(Debug, Clone, Copy, Default)]
pub struct Sha256Encoder;

impl PhaseEncoder for Sha256Encoder {
    fn id(&self) -> &'static str {
        "sha256-fallback/1"
    }

    fn key(&self, text: &str) -> [u8; 32] {
        Sha256::digest(text.as_bytes()).into()
    }

    fn angles(&self, h: &[u8; 32]) -> [f64; DIM] {
        let mut out = [0.0; DIM];
        for (i, a) in out.iter_mut().enumerate() {
            let off = i % 28;
            let val = u32::from_be_bytes([h[off], h[off + 1], h[off + 2], h[off + 3]]) as u64;
            let q = (val + i as u64 * 104_729) % 1_000_000;
            *a = q as f64 / 1_000_000.0 * 2.0 * std::f64::consts::PI - std::f64::consts::PI;
        }
        out
    }
}

/// Unit phasors of a key: `(cos a_k, sin a_k)` through `libm`, so every architecture gets the
/// same bits.
pub fn phasors(encoder: &dyn PhaseEncoder, key: &[u8; 32]) -> ([f64; DIM], [f64; DIM]) {
    let angles = encoder.angles(key);
    let mut re = [0.0; DIM];
    let mut im = [0.0; DIM];
    for k in 0..DIM {
        re[k] = libm::cos(angles[k]);
        im[k] = libm::sin(angles[k]);
    }
    (re, im)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_vectors_are_bit_exact() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/phase_encoder_sha256.json"
        );
        let text = std::fs::read_to_string(path).expect("fixture present");
        let fixture: serde_json::Value = serde_json::from_str(&text).unwrap();
        let cases = fixture["cases"].as_array().unwrap();
        assert!(cases.len() >= 6);
        for case in cases {
            let input = case["text"].as_str().unwrap();
            let want: Vec<f64> = case["angles"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let got = Sha256Encoder.angles(&Sha256Encoder.key(input));
            assert_eq!(want.len(), DIM);
            for (k, (w, g)) in want.iter().zip(got.iter()).enumerate() {
                assert_eq!(w.to_bits(), g.to_bits(), "{input:?} angle {k}: {w} vs {g}");
            }
        }
    }
}
