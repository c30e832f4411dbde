//! The engine's inner loop: Hermitian products `<b, a> / N = sum_k conj(b_k) a_k / N` of two
//! 384-dimensional unit-phasor vectors, several pairs at a time, with the same bits on every CPU.
//!
//! # The operation order every kernel keeps
//!
//! ```text
//! for k in 0, 4, 8, …, 380:            (k ascending)
//!     for lane l in 0..4:              (four independent accumulators)
//!         re[l] = re[l] + ((b.re[k+l] * a.re[k+l]) + (b.im[k+l] * a.im[k+l]))
//!         im[l] = im[l] + ((b.re[k+l] * a.im[k+l]) - (b.im[k+l] * a.re[k+l]))
//! result = (((re[0] + re[1]) + (re[2] + re[3])) / 384, ((im[0] + im[1]) + (im[2] + im[3])) / 384)
//! ```
//!
//! Every operation is one IEEE-754 double operation, rounded to nearest: no fused multiply-add
//! (Rust never contracts `a * b + c` on its own, and the kernels below call the separate multiply
//! and add instructions), no reassociation. The four lanes are four registers' lanes in the SIMD
//! kernels (one AVX2 register, two NEON registers), so a SIMD kernel does exactly the scalar
//! kernel's operations on exactly the same operands: the same bits, which the golden timelines
//! (`kairos/1` on x86-64, and aarch64/ARMv7/ARMv6 under qemu) and the tests below check.
//!
//! # Why not AVX-512
//!
//! The four lanes fill half a 512-bit register; putting two pairs in one register needs a
//! shuffle per load, and on this project's bench machine (a 2-core Xeon with AVX-512) such a
//! kernel ran 9 % slower than the AVX2 one (`chorus-bench kairos-tokens`, 2026-12-03).
//!
//! # Why several pairs at a time
//!
//! One pair's accumulators form a chain of dependent additions (96 steps): a core waits for
//! each addition's latency. Independent pairs interleaved in one loop fill that wait, so the
//! kernels take [`BATCH`] pairs per call.

use crate::encoder::DIM;

/// Pairs a kernel call takes at most.
pub const BATCH: usize = 4;

/// One vector of unit phasors, split into real and imaginary parts.
#[derive(Debug, Clone, Copy)]
pub struct Phasors<'a> {
    pub re: &'a [f64; DIM],
    pub im: &'a [f64; DIM],
}

/// One product to compute: `<b, a> / N`.
pub type Pair<'a> = (Phasors<'a>, Phasors<'a>);

/// A way of computing the products. All give the same bits; they differ in speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Plain Rust, one pair after another: the reference, on every architecture.
    Scalar,
    /// x86-64 with AVX2 (detected at run time): four lanes in one 256-bit register.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// aarch64 NEON (always present there): four lanes in two 128-bit registers.
    #[cfg(target_arch = "aarch64")]
    Neon,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub fn best() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            return Kernel::Avx2;
        }
        #[cfg(target_arch = "aarch64")]
        return Kernel::Neon;
        #[allow(unreachable_code)]
        Kernel::Scalar
    }

    /// Every kernel this CPU runs, the reference first.
    pub fn available() -> Vec<Kernel> {
        let mut all = vec![Kernel::Scalar];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            all.push(Kernel::Avx2);
        }
        #[cfg(target_arch = "aarch64")]
        all.push(Kernel::Neon);
        all
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => "avx2",
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => "neon",
        }
    }

    /// `out[p] = <pairs[p].0, pairs[p].1> / N` for every pair (at most [`BATCH`]).
    ///
    /// # Panics
    /// If `pairs` is longer than [`BATCH`] or `out` shorter than `pairs` (callers' bug).
    pub fn products(self, pairs: &[Pair<'_>], out: &mut [(f64, f64)]) {
        assert!(pairs.len() <= BATCH && out.len() >= pairs.len());
        match self {
            Kernel::Scalar => {
                for (o, (b, a)) in out.iter_mut().zip(pairs) {
                    *o = scalar(*b, *a);
                }
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => {
                // A caller may name a kernel the CPU lacks: refuse rather than fault. The check
                // is a load of a cached flag.
                assert!(std::arch::is_x86_feature_detected!("avx2"));
                // Safety: the CPU has AVX2 (checked above).
                unsafe { avx2::products(pairs, out) }
            }

            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => neon::products(pairs, out),
        }
    }
}

/// The reference: one pair, in plain Rust.
pub fn scalar(b: Phasors<'_>, a: Phasors<'_>) -> (f64, f64) {
    let mut re = [0.0f64; 4];
    let mut im = [0.0f64; 4];
    for k in (0..DIM).step_by(4) {
        for l in 0..4 {
            let (ar, ai, br, bi) = (a.re[k + l], a.im[k + l], b.re[k + l], b.im[k + l]);
            re[l] += br * ar + bi * ai;
            im[l] += br * ai - bi * ar;
        }
    }
    finish(re, im)
}

/// The lanes' fixed reduction.
fn finish(re: [f64; 4], im: [f64; 4]) -> (f64, f64) {
    let n = DIM as f64;
    (
        ((re[0] + re[1]) + (re[2] + re[3])) / n,
        ((im[0] + im[1]) + (im[2] + im[3])) / n,
    )
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BATCH, DIM, Pair, finish};

    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn products(pairs: &[Pair<'_>], out: &mut [(f64, f64)]) {
        match pairs.len() {
            BATCH => {
                let r = batch::<BATCH>(pairs.try_into().expect("BATCH pairs"));
                out[..BATCH].copy_from_slice(&r);
            }
            _ => {
                for (o, p) in out.iter_mut().zip(pairs) {
                    *o = batch::<1>(std::slice::from_ref(p).try_into().expect("one pair"))[0];
                }
            }
        }
    }

    /// `N` pairs interleaved, each with its own two accumulators.
    #[target_feature(enable = "avx2")]
    fn batch<const N: usize>(pairs: &[Pair<'_>; N]) -> [(f64, f64); N] {
        let mut re = [_mm256_setzero_pd(); N];
        let mut im = [_mm256_setzero_pd(); N];
        for k in (0..DIM).step_by(4) {
            for p in 0..N {
                let (b, a) = &pairs[p];
                // Safety: k + 4 <= DIM, and every array holds DIM doubles.
                let (ar, ai, br, bi) = unsafe {
                    (
                        _mm256_loadu_pd(a.re.as_ptr().add(k)),
                        _mm256_loadu_pd(a.im.as_ptr().add(k)),
                        _mm256_loadu_pd(b.re.as_ptr().add(k)),
                        _mm256_loadu_pd(b.im.as_ptr().add(k)),
                    )
                };
                let r = _mm256_add_pd(_mm256_mul_pd(br, ar), _mm256_mul_pd(bi, ai));
                re[p] = _mm256_add_pd(re[p], r);
                let i = _mm256_sub_pd(_mm256_mul_pd(br, ai), _mm256_mul_pd(bi, ar));
                im[p] = _mm256_add_pd(im[p], i);
            }
        }
        let mut out = [(0.0, 0.0); N];
        for p in 0..N {
            let (mut r, mut i) = ([0.0f64; 4], [0.0f64; 4]);
            // Safety: each array holds the register's four doubles.
            unsafe {
                _mm256_storeu_pd(r.as_mut_ptr(), re[p]);
                _mm256_storeu_pd(i.as_mut_ptr(), im[p]);
            }
            out[p] = finish(r, i);
        }
        out
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;

    use super::{BATCH, DIM, Pair, finish};

    pub fn products(pairs: &[Pair<'_>], out: &mut [(f64, f64)]) {
        match pairs.len() {
            BATCH => {
                let r = batch::<BATCH>(pairs.try_into().expect("BATCH pairs"));
                out[..BATCH].copy_from_slice(&r);
            }
            _ => {
                for (o, p) in out.iter_mut().zip(pairs) {
                    *o = batch::<1>(std::slice::from_ref(p).try_into().expect("one pair"))[0];
                }
            }
        }
    }

    /// `N` pairs interleaved; lanes 0–1 in the first register of each pair, 2–3 in the second.
    fn batch<const N: usize>(pairs: &[Pair<'_>; N]) -> [(f64, f64); N] {
        // Safety: NEON is part of every aarch64 target Rust supports; each load reads two
        // doubles at k + h <= DIM - 2.
        unsafe {
            let mut re = [[vdupq_n_f64(0.0); 2]; N];
            let mut im = [[vdupq_n_f64(0.0); 2]; N];
            for k in (0..DIM).step_by(4) {
                for p in 0..N {
                    let (b, a) = &pairs[p];
                    for h in 0..2 {
                        let o = k + 2 * h;
                        let ar = vld1q_f64(a.re.as_ptr().add(o));
                        let ai = vld1q_f64(a.im.as_ptr().add(o));
                        let br = vld1q_f64(b.re.as_ptr().add(o));
                        let bi = vld1q_f64(b.im.as_ptr().add(o));
                        let r = vaddq_f64(vmulq_f64(br, ar), vmulq_f64(bi, ai));
                        re[p][h] = vaddq_f64(re[p][h], r);
                        let i = vsubq_f64(vmulq_f64(br, ai), vmulq_f64(bi, ar));
                        im[p][h] = vaddq_f64(im[p][h], i);
                    }
                }
            }
            let mut out = [(0.0, 0.0); N];
            for p in 0..N {
                let lanes = |v: [float64x2_t; 2]| {
                    [
                        vgetq_lane_f64::<0>(v[0]),
                        vgetq_lane_f64::<1>(v[0]),
                        vgetq_lane_f64::<0>(v[1]),
                        vgetq_lane_f64::<1>(v[1]),
                    ]
                };
                out[p] = finish(lanes(re[p]), lanes(im[p]));
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Phasors from a seed: unit vectors at pseudo-random angles, plus a few vectors chosen to
    /// stress rounding (all equal, alternating signs, tiny and huge components).
    fn vector(seed: u64) -> ([f64; DIM], [f64; DIM]) {
        let (mut re, mut im) = ([0.0; DIM], [0.0; DIM]);
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for k in 0..DIM {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let angle = (x >> 11) as f64 / (1u64 << 53) as f64 * std::f64::consts::TAU;
            // Products stay finite and normal (no NaN, whose bits Rust does not pin down).
            let scale = match seed % 4 {
                0 => 1.0,
                1 => 1e-150,
                2 => 1e150,
                _ => {
                    if k % 2 == 0 {
                        1.0
                    } else {
                        -3.0
                    }
                }
            };
            re[k] = libm::cos(angle) * scale;
            im[k] = libm::sin(angle) * scale;
        }
        (re, im)
    }

    #[test]
    fn every_kernel_gives_the_reference_bits() {
        let vectors: Vec<_> = (0..24).map(vector).collect();
        let phasors: Vec<Phasors> = vectors.iter().map(|(re, im)| Phasors { re, im }).collect();
        for kernel in Kernel::available() {
            for start in 0..phasors.len() {
                for len in 1..=BATCH {
                    let pairs: Vec<Pair> = (0..len)
                        .map(|p| (phasors[start], phasors[(start + 7 * p + 1) % phasors.len()]))
                        .collect();
                    let mut out = [(0.0, 0.0); BATCH];
                    kernel.products(&pairs, &mut out);
                    for (p, (b, a)) in pairs.iter().enumerate() {
                        let want = scalar(*b, *a);
                        assert_eq!(
                            (out[p].0.to_bits(), out[p].1.to_bits()),
                            (want.0.to_bits(), want.1.to_bits()),
                            "{} pair {p} of {len} from {start}",
                            kernel.name()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn this_cpu_uses_its_simd_kernel() {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            assert_eq!(Kernel::best(), Kernel::Avx2);
        }
        #[cfg(target_arch = "aarch64")]
        assert_eq!(Kernel::best(), Kernel::Neon);
    }
}
