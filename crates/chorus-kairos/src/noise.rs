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

const P53: f64 = 1.0 / (1u64 << 53) as f64;

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

#[cfg(test)]
mod tests {
    use super::*;

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
