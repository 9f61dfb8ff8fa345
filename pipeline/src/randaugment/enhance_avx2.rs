//! AVX2 forms of the [`super::enhance`] blends (Color, Contrast, Brightness, Sharpness):
//! 8 bytes per f32 vector instead of one byte at a time.
//!
//! Why by hand: the scalar loops run one byte per iteration (Color's luma needs the three
//! channels of a pixel; Sharpness reads 9 taps a byte) and the compiler did not vectorize
//! them for the baseline x86-64 target (SSE2 has no byte shuffles, and the saturating
//! `f32 as u8` cast does not vectorize well). Here the channels are split and merged with
//! byte shuffles and the cast is an explicit clip plus truncation.
//!
//! Exactness: every value is computed by the same IEEE single-precision operations in the
//! same order as the scalar form, one rounding each (no FMA): the 16.16 fixed-point luma
//! in exact integer arithmetic; `d + f·(v - d)` where `v - d` of two small integers is exact
//! in f32 as in i32; the SMOOTH taps `(a·k1 + b·kc) + c·k1` and `((0.5 + below) + row) +
//! above`. Rust's saturating `f32 as u8` is `max(t, 0)` (MAXPS returns its second operand,
//! 0, for a NaN `t`, as the cast gives 0), then `min(·, 255)`, then truncation. So the bytes
//! equal the scalar path's, which the tests in [`super::enhance`] check on random images.

use std::arch::x86_64::*;

/// `blend(d, v, f)` on 8 f32 lanes of small integers: `d + f·(v - d)`, clipped to
/// [0, 255] and truncated, as i32 lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn blend8(d: __m256, v: __m256, f: __m256) -> __m256i {
    let t = _mm256_add_ps(d, _mm256_mul_ps(f, _mm256_sub_ps(v, d)));
    clip_trunc(t)
}

/// Rust's saturating `f32 as u8` on 8 lanes, as i32 lanes in [0, 255] (NaN gives 0).
#[inline]
#[target_feature(enable = "avx2")]
fn clip_trunc(t: __m256) -> __m256i {
    // The operand order matters: MAXPS returns the second operand (0) when `t` is NaN.
    let t = _mm256_min_ps(_mm256_max_ps(t, _mm256_setzero_ps()), _mm256_set1_ps(255.0));
    _mm256_cvttps_epi32(t)
}

/// The 8 bytes of `b` as f32 lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn bytes8_ps(b: &[u8; 8]) -> __m256 {
    let q = _mm_cvtsi64_si128(i64::from_le_bytes(*b));
    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q))
}

/// The 8 bytes at `s[at..at + 8]` as f32 lanes. Panics if they run past `s` (the callers'
/// loop bounds keep them inside).
#[inline]
#[target_feature(enable = "avx2")]
fn load8_ps(s: &[u8], at: usize) -> __m256 {
    let b: &[u8; 8] = s[at..at + 8].try_into().expect("8 bytes");
    bytes8_ps(b)
}

/// Four vectors of 8 i32 lanes in [0, 255] as 32 bytes, in lane order `a, b, c, d`.
#[inline]
#[target_feature(enable = "avx2")]
fn pack32(a: __m256i, b: __m256i, c: __m256i, d: __m256i) -> __m256i {
    // Within each 128-bit half: ab = [a0-3 b0-3 | a4-7 b4-7], then bytes
    // [a0-3 b0-3 c0-3 d0-3 | a4-7 b4-7 c4-7 d4-7]; the permute restores the order.
    let ab = _mm256_packus_epi32(a, b);
    let cd = _mm256_packus_epi32(c, d);
    let bytes = _mm256_packus_epi16(ab, cd);
    _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// Stores 32 bytes to `out`.
#[inline]
#[target_feature(enable = "avx2")]
fn store32(out: &mut [u8; 32], v: __m256i) {
    // SAFETY: `out` is 32 writable bytes; the store is unaligned.
    unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), v) }
}

/// `px = blend(d, px, f)` for every byte of `buf` with a constant `d` (Contrast,
/// Brightness). Returns the number of leading bytes done (a multiple of 32); the caller
/// does the rest.
#[target_feature(enable = "avx2")]
pub(super) fn blend_const(buf: &mut [u8], d: u8, f: f32) -> usize {
    let vd = _mm256_set1_ps(f32::from(d));
    let vf = _mm256_set1_ps(f);
    let mut chunks = buf.chunks_exact_mut(32);
    let mut done = 0;
    for c in &mut chunks {
        let c: &mut [u8; 32] = c.try_into().expect("32 bytes");
        let r = |k: usize| blend8(vd, load8_ps(c, 8 * k), vf);
        let v = pack32(r(0), r(1), r(2), r(3));
        store32(c, v);
        done += 32;
    }
    done
}

/// Byte shuffle masks that split 8 RGB pixels (24 bytes: `lo` = bytes 0..16, `hi` =
/// bytes 16..24) into their R, G, B bytes (low 8 bytes of the result); -1 gives 0.
const SPLIT: [[i8; 16]; 6] = [
    [0, 3, 6, 9, 12, 15, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1],
    [-1, -1, -1, -1, -1, -1, 2, 5, -1, -1, -1, -1, -1, -1, -1, -1],
    [1, 4, 7, 10, 13, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1],
    [-1, -1, -1, -1, -1, 0, 3, 6, -1, -1, -1, -1, -1, -1, -1, -1],
    [2, 5, 8, 11, 14, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1],
    [-1, -1, -1, -1, -1, 1, 4, 7, -1, -1, -1, -1, -1, -1, -1, -1],
];

#[inline]
#[target_feature(enable = "avx2")]
fn mask(m: &[i8; 16]) -> __m128i {
    // SAFETY: `m` is 16 readable bytes; the load is unaligned.
    unsafe { _mm_loadu_si128(m.as_ptr().cast()) }
}

/// The R, G, B channels of 8 pixels (`px`, 24 bytes) as i32 lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn split_rgb(px: &[u8; 24]) -> [__m256i; 3] {
    // SAFETY: `px` holds 24 bytes: 16 at offset 0 and 8 at offset 16 are readable.
    let lo = unsafe { _mm_loadu_si128(px.as_ptr().cast()) };
    let hi = _mm_cvtsi64_si128(i64::from_le_bytes(px[16..24].try_into().expect("8 bytes")));
    std::array::from_fn(|c| {
        let a = _mm_shuffle_epi8(lo, mask(&SPLIT[2 * c]));
        let b = _mm_shuffle_epi8(hi, mask(&SPLIT[2 * c + 1]));
        _mm256_cvtepu8_epi32(_mm_or_si128(a, b))
    })
}

/// Pillow's `L24` luma `(19595 R + 38470 G + 7471 B + 0x8000) >> 16` on i32 lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn luma8(rgb: &[__m256i; 3]) -> __m256i {
    let r = _mm256_mullo_epi32(rgb[0], _mm256_set1_epi32(19595));
    let g = _mm256_mullo_epi32(rgb[1], _mm256_set1_epi32(38470));
    let b = _mm256_mullo_epi32(rgb[2], _mm256_set1_epi32(7471));
    let s = _mm256_add_epi32(
        _mm256_add_epi32(r, g),
        _mm256_add_epi32(b, _mm256_set1_epi32(0x8000)),
    );
    _mm256_srli_epi32::<16>(s)
}

/// Masks that merge planar bytes `[R0-3 G0-3 B0-3 ....]` (pixels 0-3 in `lo`, 4-7 in `hi`)
/// back into 24 interleaved bytes: out[0..16] = lo·M0 | hi·M1, out[16..24] = hi·M2.
const MERGE: [[i8; 16]; 3] = [
    [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11, -1, -1, -1, -1],
    [-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8, 1],
    [5, 9, 2, 6, 10, 3, 7, 11, -1, -1, -1, -1, -1, -1, -1, -1],
];

/// `ImageEnhance.Color` on the leading whole groups of 8 pixels of `buf` (interleaved
/// RGB); returns the number of bytes done (a multiple of 24).
#[target_feature(enable = "avx2")]
pub(super) fn color(buf: &mut [u8], f: f32) -> usize {
    let vf = _mm256_set1_ps(f);
    let mut chunks = buf.chunks_exact_mut(24);
    let mut done = 0;
    for c in &mut chunks {
        let c: &mut [u8; 24] = c.try_into().expect("24 bytes");
        let rgb = split_rgb(c);
        let l = _mm256_cvtepi32_ps(luma8(&rgb));
        let out = rgb.map(|v| blend8(l, _mm256_cvtepi32_ps(v), vf));
        let rg = _mm256_packus_epi32(out[0], out[1]);
        let b0 = _mm256_packus_epi32(out[2], _mm256_setzero_si256());
        let planar = _mm256_packus_epi16(rg, b0);
        let lo = _mm256_castsi256_si128(planar);
        let hi = _mm256_extracti128_si256::<1>(planar);
        let first = _mm_or_si128(
            _mm_shuffle_epi8(lo, mask(&MERGE[0])),
            _mm_shuffle_epi8(hi, mask(&MERGE[1])),
        );
        let rest = _mm_shuffle_epi8(hi, mask(&MERGE[2]));
        // SAFETY: `c` is 24 writable bytes: 16 at offset 0; unaligned store.
        unsafe { _mm_storeu_si128(c.as_mut_ptr().cast(), first) };
        c[16..24].copy_from_slice(&(_mm_cvtsi128_si64(rest) as u64).to_le_bytes());
        done += 24;
    }
    done
}

/// Sum of Pillow's luma over the leading whole groups of 8 pixels of `buf`, and the
/// number of bytes summed (a multiple of 24).
#[target_feature(enable = "avx2")]
pub(super) fn luma_sum(buf: &[u8]) -> (u64, usize) {
    let mut total = 0u64;
    let mut done = 0;
    // Each i32 lane adds at most 255 per group: flush well before 2^31.
    for block in buf.chunks(24 * (1 << 20)) {
        let mut acc = _mm256_setzero_si256();
        let mut chunks = block.chunks_exact(24);
        for c in &mut chunks {
            let c: &[u8; 24] = c.try_into().expect("24 bytes");
            acc = _mm256_add_epi32(acc, luma8(&split_rgb(c)));
            done += 24;
        }
        let mut lanes = [0u32; 8];
        // SAFETY: `lanes` is 32 writable bytes; unaligned store.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), acc) };
        total += lanes.iter().map(|&v| u64::from(v)).sum::<u64>();
        if !chunks.remainder().is_empty() {
            break;
        }
    }
    (total, done)
}

/// 8 f32 lanes from `s[at..at + 8]`. Panics if they run past `s`.
#[inline]
#[target_feature(enable = "avx2")]
fn load_ps(s: &[f32], at: usize) -> __m256 {
    let s = &s[at..at + 8];
    // SAFETY: `s` holds the 8 floats read; the load is unaligned.
    unsafe { _mm256_loadu_ps(s.as_ptr()) }
}

/// Stores 8 f32 lanes to `s[at..at + 8]`. Panics if they run past `s`.
#[inline]
#[target_feature(enable = "avx2")]
fn store_ps(s: &mut [f32], at: usize, v: __m256) {
    let s = &mut s[at..at + 8];
    // SAFETY: `s` holds the 8 floats written; the store is unaligned.
    unsafe { _mm256_storeu_ps(s.as_mut_ptr(), v) }
}

/// `out[i] = src[i] as f32` for a row.
#[target_feature(enable = "avx2")]
fn row_to_f32(src: &[u8], out: &mut [f32]) {
    let n = src.len().min(out.len());
    let mut i = 0;
    while i + 8 <= n {
        store_ps(out, i, load8_ps(src, i));
        i += 8;
    }
    for k in i..n {
        out[k] = f32::from(src[k]);
    }
}

/// SMOOTH's k1 = 1/13 and k5 = 5/13, divided in f32 as Pillow does.
const K1: f32 = 1.0f32 / 13.0f32;
const K5: f32 = 5.0f32 / 13.0f32;

/// A row's SMOOTH tap `(a·k1 + b·kc) + c·k1` (a, b, c = the row's values at i - 3, i,
/// i + 3) on 8 lanes from `i`.
#[inline]
#[target_feature(enable = "avx2")]
fn tap8(r: &[f32], i: usize, kc: __m256) -> __m256 {
    let k1 = _mm256_set1_ps(K1);
    let a = _mm256_mul_ps(load_ps(r, i - 3), k1);
    let b = _mm256_mul_ps(load_ps(r, i), kc);
    let c = _mm256_mul_ps(load_ps(r, i + 3), k1);
    _mm256_add_ps(_mm256_add_ps(a, b), c)
}

/// [`tap8`] on one byte.
#[inline]
fn tap1(r: &[f32], i: usize, kc: f32) -> f32 {
    r[i - 3] * K1 + r[i] * kc + r[i + 3] * K1
}

/// `t1[i]` = the k1 tap of row `r` for the interior bytes `3..stride - 3`.
#[target_feature(enable = "avx2")]
fn t1_row(r: &[f32], t1: &mut [f32]) {
    let stride = r.len();
    let k1 = _mm256_set1_ps(K1);
    let mut i = 3;
    while i + 8 + 3 <= stride {
        store_ps(t1, i, tap8(r, i, k1));
        i += 8;
    }
    for (k, t) in t1.iter_mut().enumerate().take(stride - 3).skip(i) {
        *t = tap1(r, k, K1);
    }
}

/// `ImageEnhance.Sharpness` in place on an interleaved RGB image of `stride` bytes a row
/// (at least 3 pixels wide and 3 rows high: `buf.len() >= 3 * stride >= 27`).
///
/// A row's k1 tap is the same whether the row is above or below the output row, so it
/// is computed once per row (kept for two rows); rows are converted to f32 once. The
/// output row is written in place: its input values live on in the f32 copy.
#[target_feature(enable = "avx2")]
pub(super) fn sharpness(buf: &mut [u8], stride: usize, f: f32) {
    let h = buf.len() / stride;
    let vf = _mm256_set1_ps(f);
    let (vk1, vk5, half) = (_mm256_set1_ps(K1), _mm256_set1_ps(K5), _mm256_set1_ps(0.5));
    let mut f_row = vec![0f32; stride];
    let mut f_below = vec![0f32; stride];
    // k1 taps of rows y - 1, y, y + 1.
    let mut t1 = [vec![0f32; stride], vec![0f32; stride], vec![0f32; stride]];
    row_to_f32(&buf[..stride], &mut f_below);
    t1_row(&f_below, &mut t1[0]);
    row_to_f32(&buf[stride..2 * stride], &mut f_row);
    t1_row(&f_row, &mut t1[1]);
    for y in 1..h - 1 {
        row_to_f32(&buf[(y + 1) * stride..(y + 2) * stride], &mut f_below);
        let out = &mut buf[y * stride..(y + 1) * stride];
        let [t_above, _, t_below] = &mut t1;
        // ss = ((0.5 + below) + row) + above, then blend(ss as u8, row[i], f).
        let one = |i: usize, t_below: &mut [f32]| {
            let tb = tap8(&f_below, i, vk1);
            store_ps(t_below, i, tb);
            let ss = _mm256_add_ps(half, tb);
            let ss = _mm256_add_ps(ss, tap8(&f_row, i, vk5));
            let ss = _mm256_add_ps(ss, load_ps(t_above, i));
            let d = _mm256_cvtepi32_ps(clip_trunc(ss));
            blend8(d, load_ps(&f_row, i), vf)
        };
        let mut i = 3;
        while i + 32 + 3 <= stride {
            let v = pack32(
                one(i, t_below),
                one(i + 8, t_below),
                one(i + 16, t_below),
                one(i + 24, t_below),
            );
            let o: &mut [u8; 32] = (&mut out[i..i + 32]).try_into().expect("32 bytes");
            store32(o, v);
            i += 32;
        }
        while i + 8 + 3 <= stride {
            let v = one(i, t_below);
            let packed = _mm256_packus_epi16(_mm256_packus_epi32(v, v), _mm256_setzero_si256());
            let lo = _mm256_castsi256_si128(packed);
            let hi = _mm256_extracti128_si256::<1>(packed);
            let eight = _mm_unpacklo_epi32(lo, hi);
            out[i..i + 8].copy_from_slice(&(_mm_cvtsi128_si64(eight) as u64).to_le_bytes());
            i += 8;
        }
        for k in i..stride - 3 {
            let tb = tap1(&f_below, k, K1);
            t_below[k] = tb;
            let mut ss = 0.5f32;
            ss += tb;
            ss += tap1(&f_row, k, K5);
            ss += t_above[k];
            out[k] = super::blend::blend(ss as u8, f_row[k] as u8, f);
        }
        t1.rotate_left(1);
        std::mem::swap(&mut f_row, &mut f_below);
    }
}
