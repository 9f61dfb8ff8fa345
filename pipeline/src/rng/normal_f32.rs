//! N(0, 1) in bulk for RandomErasing's pixel mode: Box-Muller in f32, 8 pairs at a time.
//!
//! Why by hand: the f64 Box-Muller through the pure-Rust `libm` (`log`, `sincos`) cost
//! about 100 us per image on average (6% of the training loader, `perf`), and `rand`'s
//! distributions are not used (their algorithms may change between versions, which would
//! change the views). Here `ln` and `sin`/`cos` are short polynomials (Cephes' `logf`,
//! `sinf`, `cosf` coefficients, about 1 ulp on their reduced ranges) over fixed-size
//! arrays, which the compiler vectorizes. Every value is a fixed sequence of IEEE f32
//! operations (Rust never contracts them into FMAs), so the output is the same on every
//! CPU, vectorized or not.
//!
//! Uniforms: each pair takes one `next_u64`: `u1 = (bits 40..64 + 1) / 2^24` in (0, 1],
//! `u2 = bits 8..32 / 2^24` in [0, 1), `r = sqrt(-2 ln u1)`, `(r cos 2πu2, r sin 2πu2)`.
//! Values are bounded by `sqrt(2 ln 2^24)` = 5.77, the tail a 24-bit uniform can reach.

use rand::RngCore;

/// Pairs per block.
const B: usize = 8;

/// `ln x` for `x` in (0, 1] (and any positive normal f32): the exponent split off, the
/// mantissa reduced to [sqrt(1/2), sqrt(2)) (by halving it, exactly, through the exponent
/// bits: no branch, which mispredicted on random input), Cephes' degree-8 polynomial.
#[inline(always)]
fn ln(x: f32) -> f32 {
    let bits = x.to_bits();
    let mbits = (bits & 0x007F_FFFF) | 0x3F80_0000; // mantissa in [1, 2)
    let big = u32::from(mbits > std::f32::consts::SQRT_2.to_bits()); // ordered as floats
    let m = f32::from_bits(mbits - (big << 23)); // halved when above sqrt(2)
    let e = ((bits >> 23) & 0xFF) as i32 - 127 + big as i32;
    let f = m - 1.0;
    let fe = e as f32;
    let z = f * f;
    let mut p = 7.037_683_6e-2f32;
    p = p * f - 1.151_461e-1;
    p = p * f + 1.167_699_9e-1;
    p = p * f - 1.242_014_1e-1;
    p = p * f + 1.424_932_3e-1;
    p = p * f - 1.666_805_8e-1;
    p = p * f + 2.000_071_4e-1;
    p = p * f - 2.499_999_4e-1;
    p = p * f + 3.333_333e-1;
    let mut y = f * z * p;
    y += -2.121_944_4e-4 * fe;
    y += -0.5 * z;
    (f + y) + 0.693_359_4 * fe
}

/// `(sin 2πu, cos 2πu)` for `u = k / 2^24`, `k < 2^24`: the nearest quarter turn `q` split
/// off in integers (exact), Cephes' polynomials on [-π/4, π/4], then the quadrant applied
/// by swapping and sign bits (no branches).
#[inline(always)]
fn sincos_turns(k: u32) -> (f32, f32) {
    let q = (k + (1 << 21)) >> 22; // round(4u), 0..=4
    let t = k as i32 - (q << 22) as i32; // 2^24 (u - q/4), in [-2^21, 2^21)
    let x = t as f32 * (std::f32::consts::TAU / (1u32 << 24) as f32);
    let z = x * x;
    let s = ((-1.951_529_6e-4 * z + 8.332_161e-3) * z - 1.666_665_5e-1) * z * x + x;
    let c = ((2.443_315_7e-5 * z - 1.388_731_6e-3) * z + 4.166_664_6e-2) * z * z - 0.5 * z + 1.0;
    // sin(x + qπ/2), cos(x + qπ/2): odd q swaps sin and cos; q = 2, 3 negate the sine,
    // q = 1, 2 the cosine.
    let swap = 0u32.wrapping_sub(q & 1);
    let (sb, cb) = (s.to_bits(), c.to_bits());
    let sin = (sb & !swap) | (cb & swap);
    let cos = (cb & !swap) | (sb & swap);
    let sin_sign = (q & 2) << 30;
    let cos_sign = ((q + 1) & 2) << 30;
    (
        f32::from_bits(sin ^ sin_sign),
        f32::from_bits(cos ^ cos_sign),
    )
}

/// Fills `out` with N(0, 1) values, pairs `(r cos θ, r sin θ)` in order; a block of 8
/// pairs (8 `next_u64` draws) at a time, the last block's unused values dropped.
pub fn fill_normal_f32(rng: &mut impl RngCore, out: &mut [f32]) {
    const SCALE: f32 = 1.0 / (1u32 << 24) as f32;
    for chunk in out.chunks_mut(2 * B) {
        let mut u1 = [0f32; B];
        let mut k2 = [0u32; B];
        for (a, k) in u1.iter_mut().zip(k2.iter_mut()) {
            let w = rng.next_u64();
            *a = ((w >> 40) as u32 + 1) as f32 * SCALE;
            *k = (w >> 8) as u32 & 0x00FF_FFFF;
        }
        let mut pairs = [0f32; 2 * B];
        for i in 0..B {
            let r = (-2.0 * ln(u1[i])).sqrt();
            let (s, c) = sincos_turns(k2[i]);
            pairs[2 * i] = r * c;
            pairs[2 * i + 1] = r * s;
        }
        chunk.copy_from_slice(&pairs[..chunk.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::rng_from_seed;

    #[test]
    fn ln_is_accurate_on_the_unit_interval() {
        let mut worst = 0f64;
        for k in 1..=(1u32 << 24) / 97 {
            let x = (k * 97) as f32 / (1u32 << 24) as f32;
            let want = f64::from(x).ln();
            let got = f64::from(ln(x));
            let err = (got - want).abs() / want.abs().max(1e-30);
            if want != 0.0 {
                worst = worst.max(err);
            }
        }
        assert_eq!(ln(1.0), 0.0);
        assert!(worst < 3e-7, "worst relative error {worst}");
    }

    #[test]
    fn sincos_is_accurate_over_a_turn() {
        let mut worst = 0f64;
        for k in (0..1u32 << 24)
            .step_by(61)
            .chain([(1 << 24) - 1, 1 << 21, 3 << 21])
        {
            let th = f64::from(k) / f64::from(1u32 << 24) * std::f64::consts::TAU;
            let (s, c) = sincos_turns(k);
            worst = worst
                .max((f64::from(s) - th.sin()).abs())
                .max((f64::from(c) - th.cos()).abs());
        }
        assert!(worst < 3e-7, "worst absolute error {worst}");
    }

    /// Moments, tail mass and the Kolmogorov-Smirnov distance to Φ on 2^20 draws.
    #[test]
    fn values_are_standard_normal() {
        let n = 1 << 20;
        let mut v = vec![0f32; n];
        fill_normal_f32(&mut rng_from_seed(3), &mut v);
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n as f64;
        let var = v
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n as f64;
        let kurt = v
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(4))
            .sum::<f64>()
            / n as f64
            / (var * var);
        assert!(mean.abs() < 0.005, "mean {mean}");
        assert!((var - 1.0).abs() < 0.005, "variance {var}");
        assert!((kurt - 3.0).abs() < 0.03, "kurtosis {kurt}");
        let tail = v.iter().filter(|x| x.abs() > 3.0).count() as f64 / n as f64;
        assert!((tail - 0.0026998).abs() < 0.0004, "P(|x| > 3) = {tail}");
        assert!(v.iter().all(|x| x.abs() <= 5.8));
        let mut s = v.clone();
        s.sort_by(f32::total_cmp);
        let phi = |x: f64| 0.5 * libm::erfc(-x / std::f64::consts::SQRT_2);
        let ks = s
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let f = phi(f64::from(x));
                (f - i as f64 / n as f64)
                    .abs()
                    .max((f - (i + 1) as f64 / n as f64).abs())
            })
            .fold(0f64, f64::max);
        // The 0.1% critical value of the KS statistic is 1.95 / sqrt(n) = 0.0019.
        assert!(ks < 0.0019, "KS distance {ks}");
    }

    #[test]
    fn same_seed_same_values_and_lengths_agree() {
        let mut a = vec![0f32; 37];
        let mut b = vec![0f32; 48];
        fill_normal_f32(&mut rng_from_seed(8), &mut a);
        fill_normal_f32(&mut rng_from_seed(8), &mut b);
        // Both use 3 blocks of 8 draws: the shorter fill is a prefix of the longer.
        assert_eq!(a[..], b[..37]);
        let mut c = vec![0f32; 37];
        fill_normal_f32(&mut rng_from_seed(8), &mut c);
        assert_eq!(a, c);
    }
}
