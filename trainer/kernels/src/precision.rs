//! The precision of the CPU kernels' matrix products: f32, or bf16 mixed precision.
//!
//! bf16 here is torch CPU autocast's contract for a product: both operands rounded to
//! bf16 (round to nearest even), the products of bf16 values summed in f32. A bf16 value
//! is an f32 with the low 16 bits of its mantissa zero, so an operand rounded to bf16 and
//! kept in an f32 buffer feeds the f32 kernels unchanged, and their FMAs compute each
//! product of two bf16 values exactly (8 + 8 significant bits fit in f32's 24) and
//! accumulate in f32: the same arithmetic as a bf16 dot-product instruction
//! (`vdpbf16ps`, AMX `tdpbf16ps`), up to the order of the f32 sums. The products' outputs
//! stay f32 (autocast rounds them to bf16 for storage); everything else (normalizations,
//! softmax, GELU, residuals, biases) is f32 either way.
//!
//! The GEMM rounds as it packs ([`super::sgemm::Operand::bf16`]): no operand is copied.
//! On a CPU with AVX512-BF16 ([`super::isa::Isa::Avx512Bf16`]) the packed panels hold
//! bf16 pairs and `vdpbf16ps` multiplies them, two multiply-adds per lane and instruction;
//! elsewhere the panels hold rounded f32s for the f32 kernels, and bf16 runs at about
//! f32's speed.

use rayon::prelude::*;
use std::borrow::Cow;

/// The precision of a product's operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum ProductPrecision {
    /// f32 operands, f32 sums.
    #[default]
    F32,
    /// Operands rounded to bf16, f32 sums.
    Bf16,
}

/// `x` rounded to the nearest bf16 (ties to even), as an f32; NaN stays NaN, infinities
/// and values that round past the largest bf16 become infinities: the same values as
/// `half::bf16::from_f32` (candle's and torch's cast; the test compares them).
///
/// Why not `half`'s conversion itself: it branches per element and does not vectorize; in
/// the GEMM's rounding of packed panels it took 5.6% of a bf16 DeiT-Ti train step against
/// 2.9% for this form (`perf`, Xeon-2, 2026-12-07).
#[inline(always)]
pub fn round_bf16(x: f32) -> f32 {
    let bits = x.to_bits();
    if x.is_nan() {
        // Keep it a (quiet) NaN whatever its payload's low bits.
        return f32::from_bits((bits | 0x0040_0000) & 0xFFFF_0000);
    }
    let lsb = (bits >> 16) & 1;
    f32::from_bits(bits.wrapping_add(0x7FFF + lsb) & 0xFFFF_0000)
}

/// Elements per parallel task of [`round_slice`] (below it one thread does all).
const CHUNK: usize = 1 << 16;

/// Rounds every element of `v` to bf16 in place (see [`round_bf16`]), large slices split
/// over rayon's threads.
pub fn round_slice(v: &mut [f32]) {
    if v.len() > CHUNK {
        v.par_chunks_mut(CHUNK).for_each(round_slice_serial);
    } else {
        round_slice_serial(v);
    }
}

crate::simd_variant!(
    /// [`round_slice`] on the calling thread only (the GEMM rounds its packed panels with
    /// it), compiled for the host's SIMD level.
    pub fn round_slice_serial(v: &mut [f32]) => round_slice_body
);

/// The body of [`round_slice_serial`].
#[inline(always)]
fn round_slice_body(v: &mut [f32]) {
    v.iter_mut().for_each(|x| *x = round_bf16(*x));
}

/// `v` as a product reads it in `precision`: itself for f32, a rounded copy for bf16.
pub fn operand(v: &[f32], precision: ProductPrecision) -> Cow<'_, [f32]> {
    match precision {
        ProductPrecision::F32 => Cow::Borrowed(v),
        ProductPrecision::Bf16 => {
            let mut copy = v.to_vec();
            round_slice(&mut copy);
            Cow::Owned(copy)
        }
    }
}

/// `t` (an f32 CPU tensor) with every element rounded to bf16, as a new leaf tensor.
#[cfg(test)]
pub(crate) fn rounded_tensor(t: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
    let v = t.flatten_all()?.to_vec1::<f32>()?;
    let r = operand(&v, ProductPrecision::Bf16).into_owned();
    candle_core::Tensor::from_vec(r, t.shape(), t.device())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference: the nearest bf16 by exhaustive comparison of the two neighbours.
    fn nearest(x: f32) -> f32 {
        let down = f32::from_bits(x.to_bits() & 0xFFFF_0000);
        let up = f32::from_bits((x.to_bits() & 0xFFFF_0000) + 0x1_0000);
        let (dd, du) = ((x as f64 - down as f64).abs(), (up as f64 - x as f64).abs());
        if dd < du || (dd == du && (down.to_bits() >> 16) & 1 == 0) {
            down
        } else {
            up
        }
    }

    #[test]
    fn rounds_to_nearest_even_like_torch() {
        // Exact bf16 values stay; halfway cases go to the even neighbour.
        assert_eq!(round_bf16(1.0), 1.0);
        assert_eq!(round_bf16(f32::from_bits(0x3F80_8000)), 1.0); // tie, 1.0 is even
        assert_eq!(
            round_bf16(f32::from_bits(0x3F81_8000)).to_bits(),
            0x3F82_0000 // tie, odd below: up
        );
        assert_eq!(
            round_bf16(f32::from_bits(0x3F80_8001)).to_bits(),
            0x3F81_0000
        );
        assert_eq!(round_bf16(-2.5), -2.5);
        assert_eq!(round_bf16(f32::INFINITY), f32::INFINITY);
        assert_eq!(round_bf16(f32::MAX), f32::INFINITY);
        assert!(round_bf16(f32::NAN).is_nan());
        assert!(round_bf16(f32::from_bits(0x7F80_0001)).is_nan());
        let mut x = 0x3000_0000u32;
        while x < 0x5000_0000 {
            let v = f32::from_bits(x);
            assert_eq!(round_bf16(v), nearest(v), "{v:e}");
            assert_eq!(round_bf16(-v), -nearest(v), "-{v:e}");
            for y in [v, -v] {
                assert_eq!(
                    round_bf16(y),
                    half::bf16::from_f32(y).to_f32(),
                    "half, {y:e}"
                );
            }
            x += 0x1235;
        }
    }

    #[test]
    fn operand_copies_only_for_bf16() {
        let v: Vec<f32> = (0..CHUNK * 2 + 5).map(|i| (i as f32).sin() * 3.1).collect();
        assert!(matches!(
            operand(&v, ProductPrecision::F32),
            Cow::Borrowed(_)
        ));
        let r = operand(&v, ProductPrecision::Bf16);
        assert!(r.iter().zip(&v).all(|(a, b)| *a == round_bf16(*b)));
        assert!(r.iter().all(|a| a.to_bits() & 0xFFFF == 0));
        let mut w = v.clone();
        round_slice(&mut w);
        assert_eq!(&w[..], &r[..]);
        let mut w = v.clone();
        round_slice_serial(&mut w);
        assert_eq!(&w[..], &r[..]);
    }
}
