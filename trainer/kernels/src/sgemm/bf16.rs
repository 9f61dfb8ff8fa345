//! The bf16 dot-product path of [`super::Kernel::Avx512Bf16`]: a product whose two
//! operands are read as bf16 ([`super::Operand::bf16`]) is packed into panels of bf16
//! *pairs* (two consecutive `k` steps in one 32-bit lane, the layout `vdpbf16ps` reads)
//! and multiplied by a 12x32 kernel whose every instruction does two multiply-adds per
//! lane: twice an f32 FMA's work, on half the bytes.
//!
//! The arithmetic is the bf16 contract of [`crate::precision`]: each operand rounded to
//! the nearest bf16 (ties to even) as it is packed, each product of two bf16 values exact
//! in f32, the sums in f32. What differs from the f32 kernels' run on rounded operands is
//! the order of the f32 sums (`vdpbf16ps` adds a pair's two products to the lane in turn)
//! and that the instruction treats bf16 subnormals (below 1.2e-38) as zero, as oneDNN's
//! bf16 kernels behind torch's CPU autocast do.
//!
//! Why by hand: no maintained Rust crate has a bf16 dot-product GEMM (the `gemm` crate's
//! f16/bf16 paths convert to f32), and the scheme is [`super`]'s, only the packing and
//! the inner step differ.

use super::{blocks, scratch, with_pack_buffers, Dst, Operand, Tile, MC};
use crate::precision::round_bf16;

/// Rows of the register tile.
pub(super) const MR: usize = 12;
/// Columns of the register tile.
pub(super) const NR: usize = 32;

/// Two values rounded to bf16 as one pair: `lo` (step `2t`) in the low half, `hi` (step
/// `2t + 1`) in the high half.
#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    (round_bf16(lo).to_bits() >> 16) | (round_bf16(hi).to_bits() & 0xFFFF_0000)
}

/// One operand as `lanes x kc` (rows of `A` or columns of `B`, by `k` steps): element
/// `(l, p)` of the block at `data[base + l * lane_stride + p * k_stride]`.
#[derive(Clone, Copy)]
struct Block<'a> {
    data: &'a [f32],
    base: usize,
    lane_stride: usize,
    k_stride: usize,
}

impl<'a> Block<'a> {
    /// The `A` block at `(ic, pc)`: lane `l` is row `ic + l`.
    fn of_lhs(lhs: Operand<'a>, ic: usize, pc: usize) -> Block<'a> {
        let (lane_stride, k_stride) = if lhs.trans { (1, lhs.ld) } else { (lhs.ld, 1) };
        Block {
            data: lhs.data,
            base: lhs.at(ic, pc),
            lane_stride,
            k_stride,
        }
    }

    /// The `B` block at `(pc, jc)`: lane `l` is column `jc + l`.
    fn of_rhs(rhs: Operand<'a>, pc: usize, jc: usize) -> Block<'a> {
        let (lane_stride, k_stride) = if rhs.trans { (rhs.ld, 1) } else { (1, rhs.ld) };
        Block {
            data: rhs.data,
            base: rhs.at(pc, jc),
            lane_stride,
            k_stride,
        }
    }
}

/// Packs `lanes x kc` of `block` into `width`-lane panels of pairs: panel `q`, pair
/// `t`, lane `l` at `out[(q * kp + t) * width + l]` (`kp = ceil(kc / 2)`) is
/// `pair(e(q*width + l, 2t), e(q*width + l, 2t + 1))`, zero past `lanes` and past `kc`.
///
/// 16 lanes at a time in 512-bit registers, rounded by `vcvtne2ps2bf16` (to nearest even
/// as [`round_bf16`], but subnormals become zero, which `vdpbf16ps` reads them as anyway):
/// where a lane's steps are contiguous (`A` not transposed, `B` transposed), 32 steps of
/// 16 lanes are rounded and paired, then transposed 16x16; where a step's lanes are
/// contiguous, two steps' rows are rounded and interleaved. Element by element, packing
/// was 31% of a bf16 DeiT-Ti train step (`perf`, EPYC, 2026-12-07).
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL and AVX512-BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")]
unsafe fn pack_pairs(out: &mut [u32], block: Block<'_>, width: usize, lanes: usize, kc: usize) {
    use std::arch::x86_64::*;
    let kp = kc.div_ceil(2);
    let Block {
        data,
        base,
        lane_stride,
        k_stride,
    } = block;
    // Lane `l`, step `p`.
    let at = |l: usize, p: usize| base + l * lane_stride + p * k_stride;
    // The lanes `g..g + n` of one group, as a mask.
    let mask_of = |n: usize| ((1u32 << n) - 1) as __mmask16;
    if k_stride == 1 {
        for (q, panel) in out.chunks_exact_mut(kp * width).enumerate() {
            let l0 = q * width;
            let here = width.min(lanes - l0);
            for g in (0..here).step_by(16) {
                let n = 16.min(here - g);
                let rows: [&[f32]; 16] = std::array::from_fn(|l| {
                    if l < n {
                        &data[at(l0 + g + l, 0)..][..kc]
                    } else {
                        &[]
                    }
                });
                // SAFETY: the CPU has AVX512-BF16 (this function's contract); the rows
                // hold `kc` floats, the panel `kp * width` pairs with `g + n <= width`.
                unsafe { pack_lane_rows(panel, width, g, &rows[..n], kc) };
            }
            for t in 0..kp {
                panel[t * width + here..(t + 1) * width].fill(0);
            }
        }
        return;
    }
    // Each step's lanes are contiguous (`lane_stride == 1`): two steps' rows of lanes
    // make one row of pairs. Step-major, so each stored row is read once, in order (panel
    // by panel, each panel re-read every row one cache line further: 31% of the packing
    // time was spent waiting on those loads).
    debug_assert_eq!(lane_stride, 1);
    // u16 `2l` from step `2t` (lane `l` of the low half), `2l + 1` from `2t + 1`.
    let interleave = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4,
        19, 3, 18, 2, 17, 1, 16, 0,
    );
    let panels = lanes.div_ceil(width);
    assert!(out.len() >= panels * kp * width);
    for t in 0..kp {
        let even = &data[at(0, 2 * t)..][..lanes];
        let odd = if 2 * t + 1 < kc {
            &data[at(0, 2 * t + 1)..][..lanes]
        } else {
            &[]
        };
        for q in 0..panels {
            let l0 = q * width;
            let here = width.min(lanes - l0);
            for g in (0..here).step_by(16) {
                let n = 16.min(here - g);
                let mask = mask_of(n);
                let dst = &mut out[(q * kp + t) * width + g..][..n];
                // SAFETY: the masked loads read `n` floats of each row from lane
                // `l0 + g` (`l0 + g + n <= lanes`, the rows' length), the store writes `n`
                // pairs of `dst`.
                unsafe {
                    let e = _mm512_maskz_loadu_ps(mask, even.as_ptr().add(l0 + g));
                    let o = if odd.is_empty() {
                        _mm512_setzero_ps()
                    } else {
                        _mm512_maskz_loadu_ps(mask, odd.as_ptr().add(l0 + g))
                    };
                    let halves =
                        std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(o, e));
                    let pairs = _mm512_permutexvar_epi16(interleave, halves);
                    _mm512_mask_storeu_epi32(dst.as_mut_ptr().cast(), mask, pairs);
                }
            }
        }
    }
    let last = panels - 1;
    let here = lanes - last * width;
    for t in 0..kp {
        out[(last * kp + t) * width + here..(last * kp + t + 1) * width].fill(0);
    }
}

/// Up to 16 lanes whose steps are contiguous (`rows`, `kc` floats each) into lanes
/// `g..g + rows.len()` of a panel of `width`-lane pair rows: 32 steps of every row
/// rounded and paired (16 pairs a register), then transposed 16x16 so each register is
/// one pair of every lane; the last `kc % 32` steps one by one.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL and AVX512-BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")]
unsafe fn pack_lane_rows(panel: &mut [u32], width: usize, g: usize, rows: &[&[f32]], kc: usize) {
    use std::arch::x86_64::*;
    let n = rows.len();
    assert!(n <= 16 && g + n <= width && rows.iter().all(|r| r.len() >= kc));
    assert!(panel.len() >= kc.div_ceil(2) * width);
    let mask = ((1u32 << n) - 1) as __mmask16;
    let blocks = kc / 32;
    for blk in 0..blocks {
        let mut v = [_mm512_setzero_si512(); 16];
        for (l, row) in rows.iter().enumerate() {
            // SAFETY: the row holds `kc >= 32 * (blk + 1)` floats (asserted).
            unsafe {
                let p = row.as_ptr().add(blk * 32);
                let (lo, hi) = (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)));
                v[l] = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
            }
        }
        let t = transpose_16x16(v);
        for (i, pairs) in t.iter().enumerate() {
            let at = (blk * 16 + i) * width + g;
            // SAFETY: pair `blk * 16 + i < kp` of lanes `g..g + n` is inside the panel
            // (asserted); the mask stores `n` of them.
            unsafe { _mm512_mask_storeu_epi32(panel.as_mut_ptr().add(at).cast(), mask, *pairs) };
        }
    }
    for t in blocks * 16..kc.div_ceil(2) {
        for (l, row) in rows.iter().enumerate() {
            let hi = if 2 * t + 1 < kc { row[2 * t + 1] } else { 0.0 };
            panel[t * width + g + l] = pair(row[2 * t], hi);
        }
    }
}

/// Never called: the kernel is only chosen on x86-64 CPUs with AVX512-BF16.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn pack_pairs(_: &mut [u32], _: Block<'_>, _: usize, _: usize, _: usize) {
    unreachable!("bf16 packing called without AVX512-BF16")
}

/// The 16x16 transpose of 32-bit elements: row `r` of the result is element `r` of every
/// input row. Pairs, then quads within 128-bit lanes, then the 128-bit blocks.
///
/// # Safety
/// The CPU has AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn transpose_16x16(v: [std::arch::x86_64::__m512i; 16]) -> [std::arch::x86_64::__m512i; 16] {
    use std::arch::x86_64::*;
    // Per 128-bit lane `j`: t[2i] = rows 2i, 2i+1 at columns 4j, 4j+1; t[2i+1] at 4j+2, 4j+3.
    let t: [__m512i; 16] = std::array::from_fn(|i| {
        let (x, y) = (v[i & !1], v[i | 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_epi32(x, y)
        } else {
            _mm512_unpackhi_epi32(x, y)
        }
    });
    // u[4g + c], lane `j`: rows 4g..4g+4 of column 4j + c.
    let u: [__m512i; 16] = std::array::from_fn(|i| {
        let (g, c) = (i / 4, i % 4);
        let (x, y) = (t[4 * g + c / 2], t[4 * g + 2 + c / 2]);
        if c % 2 == 0 {
            _mm512_unpacklo_epi64(x, y)
        } else {
            _mm512_unpackhi_epi64(x, y)
        }
    });
    // Column 4j + c gathers block `j` of u[c], u[4 + c], u[8 + c], u[12 + c].
    let mut out = [_mm512_setzero_si512(); 16];
    for c in 0..4 {
        let a = _mm512_shuffle_i32x4::<0x44>(u[c], u[4 + c]);
        let b = _mm512_shuffle_i32x4::<0xEE>(u[c], u[4 + c]);
        let x = _mm512_shuffle_i32x4::<0x44>(u[8 + c], u[12 + c]);
        let d = _mm512_shuffle_i32x4::<0xEE>(u[8 + c], u[12 + c]);
        out[c] = _mm512_shuffle_i32x4::<0x88>(a, x);
        out[4 + c] = _mm512_shuffle_i32x4::<0xDD>(a, x);
        out[8 + c] = _mm512_shuffle_i32x4::<0x88>(b, d);
        out[12 + c] = _mm512_shuffle_i32x4::<0xDD>(b, d);
    }
    out
}

/// [`super::sgemm`] of two bf16 operands on the calling thread.
///
/// # Safety
/// As for [`super::sgemm_on`] with [`super::Kernel::Avx512Bf16`]: the CPU has AVX512-BF16.
pub(super) unsafe fn serial(
    dst: Dst,
    (m, n, k): (usize, usize, usize),
    lhs: Operand<'_>,
    rhs: Operand<'_>,
    scale: f32,
) {
    debug_assert!(k > 0, "`split` writes the zeros of an empty product");
    // No waiting on other threads (`with_pack_buffers`' contract).
    with_pack_buffers(|pa, pb| {
        // `super::KC` is even, so only the last block can end on half a pair.
        for ((jc, nc), (pc, kc)) in blocks(n, k) {
            let kp = kc.div_ceil(2);
            let packed_b = scratch(pb, kp * nc.div_ceil(NR) * NR);
            // SAFETY: the CPU has AVX512-BF16 (the caller's guarantee).
            unsafe { pack_pairs(packed_b, Block::of_rhs(rhs, pc, jc), NR, nc, kc) };
            let mc_max = MC / MR * MR;
            for ic in (0..m).step_by(mc_max) {
                let mc = mc_max.min(m - ic);
                let packed_a = scratch(pa, kp * mc.div_ceil(MR) * MR);
                // SAFETY: as above.
                unsafe { pack_pairs(packed_a, Block::of_lhs(lhs, ic, pc), MR, mc, kc) };
                for jr in (0..nc).step_by(NR) {
                    let b = &packed_b[(jr / NR) * kp * NR..][..kp * NR];
                    for ir in (0..mc).step_by(MR) {
                        let a = &packed_a[(ir / MR) * kp * MR..][..kp * MR];
                        let tile = Tile {
                            // SAFETY: `(ic + ir, jc + jr)` is inside the destination.
                            ptr: unsafe { dst.ptr.add((ic + ir) * dst.ld + jc + jr) },
                            ld: dst.ld,
                            rows: MR.min(mc - ir),
                            cols: NR.min(nc - jr),
                        };
                        // SAFETY: the panels hold `kp` pairs of steps (sliced
                        // above), the tile is inside the destination (the caller's
                        // guarantee), the CPU has AVX512-BF16 (likewise).
                        unsafe { kernel_12x32_bf16(kp, a, b, tile, scale, pc > 0) };
                    }
                }
            }
        }
    });
}

/// `tile (+)= scale * a·b` for one packed 12-row panel of `A` and one 32-column panel of
/// `B`, `kp` pairs of steps deep: per pair, two loads of `B` and twelve broadcasts of `A`
/// feed 24 `vdpbf16ps` into the 24 accumulators of [`super::kernel_12x32`]'s tile, stored
/// the same way.
///
/// # Safety
/// The tile's `rows x cols` elements are valid for reads and writes; the CPU has AVX-512
/// F/BW/VL/DQ and AVX512-BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")]
unsafe fn kernel_12x32_bf16(
    kp: usize,
    a: &[u32],
    b: &[u32],
    tile: Tile,
    scale: f32,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    assert!(a.len() >= kp * MR && b.len() >= kp * NR);
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    // 32 bf16 values, as the instruction reads them (the same bits).
    let bh = |v: __m512i| -> __m512bh {
        // SAFETY: both are 64 bytes of plain bits.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
    };
    let mut c = [[_mm512_setzero_ps(); 2]; MR];
    for t in 0..kp {
        // SAFETY: `t < kp`: inside both panels (asserted).
        unsafe {
            let b0 = bh(_mm512_loadu_si512(bp.add(t * NR).cast()));
            let b1 = bh(_mm512_loadu_si512(bp.add(t * NR + 16).cast()));
            for (r, row) in c.iter_mut().enumerate() {
                let ar = bh(_mm512_set1_epi32(*ap.add(t * MR + r) as i32));
                row[0] = _mm512_dpbf16_ps(row[0], ar, b0);
                row[1] = _mm512_dpbf16_ps(row[1], ar, b1);
            }
        }
    }
    super::store_12x32!(c, tile, scale, accumulate);
}

/// Never called: the kernel is only chosen on x86-64 CPUs with AVX512-BF16.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel_12x32_bf16(_: usize, _: &[u32], _: &[u32], _: Tile, _: f32, _: bool) {
    unreachable!("bf16 kernel called without AVX512-BF16")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_hold_step_2t_low_and_2t_plus_1_high_in_both_layouts() {
        if crate::isa::detected() < crate::isa::Isa::Avx512Bf16 {
            eprintln!("no AVX512-BF16 on this CPU: bf16 packing not tested");
            return;
        }
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        // (lanes, steps, panel width): partial and whole 16-lane groups and 32-step blocks,
        // odd step counts, several panels.
        for (lanes, kc, width) in [
            (5, 7, 8),
            (12, 70, 12),
            (40, 97, 32),
            (30, 64, 32),
            (29, 33, 12),
        ] {
            let values: Vec<f32> = (0..lanes * kc)
                .map(|_| rng.random::<f32>() * 4.0 - 2.0)
                .collect();
            let value = |l: usize, p: usize| values[l * kc + p];
            // Stored both ways, with padding and an offset.
            let (base, ls, ks) = (3, kc + 2, lanes + 1);
            let mut by_lane = vec![f32::NAN; base + lanes * ls];
            let mut by_step = vec![f32::NAN; base + kc * ks];
            for l in 0..lanes {
                for p in 0..kc {
                    by_lane[base + l * ls + p] = value(l, p);
                    by_step[base + p * ks + l] = value(l, p);
                }
            }
            let blocks = [
                Block {
                    data: &by_lane,
                    base,
                    lane_stride: ls,
                    k_stride: 1,
                },
                Block {
                    data: &by_step,
                    base,
                    lane_stride: 1,
                    k_stride: ks,
                },
            ];
            let kp = kc.div_ceil(2);
            let panels = lanes.div_ceil(width);
            for (layout, block) in blocks.into_iter().enumerate() {
                let mut out = vec![u32::MAX; panels * kp * width];
                // SAFETY: the CPU has AVX512-BF16 (checked above).
                unsafe { pack_pairs(&mut out, block, width, lanes, kc) };
                for q in 0..panels {
                    for t in 0..kp {
                        for c in 0..width {
                            let l = q * width + c;
                            let half = |p: usize| {
                                if l < lanes && p < kc {
                                    round_bf16(value(l, p)).to_bits() >> 16
                                } else {
                                    0
                                }
                            };
                            assert_eq!(
                                out[(q * kp + t) * width + c],
                                half(2 * t) | (half(2 * t + 1) << 16),
                                "{lanes}x{kc} width {width} layout {layout}: lane {l} pair {t}"
                            );
                        }
                    }
                }
            }
        }
    }
}
