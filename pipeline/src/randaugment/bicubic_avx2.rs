//! AVX2 form of Pillow's bicubic sample (see [`super::geometric`]) for points whose 4x4
//! taps need no clamping: the 3 channels of a pixel run as the lanes of one vector
//! (a 4th lane, the next byte, is computed along and dropped).
//!
//! Why by hand: the scalar form spends most of its time gathering 48 bytes one by one
//! into lanes (about 550 instructions a pixel; Rotate took 2.8 ms at 224x224, the most
//! expensive RandAugment op). Here a row's 4 taps are 4 widening loads. The compiler did
//! not find this itself: rewrites of the scalar code in plain Rust, compiled for AVX2,
//! measured slower.
//!
//! [`h_passes4`] and [`v_passes4`] sample 4 pixels at once with the pixels in the lanes
//! (one vector per channel), for Rotate's rows (`geometric::general_row`).
//!
//! Exactness: every value is computed by the same IEEE operations in the same order as
//! the scalar form: the integer p's exactly, then `p1 + d(p2 + d(p3 + d·p4))` with one
//! rounding per multiply and per add (no FMA), `-a + b` as `b - a` (the same operation in
//! IEEE arithmetic), `2·t` as `t + t` (exact either way). So the bytes equal the scalar
//! path's, which the tests check over random images, matrices and fractions.

use std::arch::x86_64::*;

/// Pillow's bicubic sample where all 4 rows (byte offsets `rows`) and the 4 columns from
/// byte `col0` lie inside the image, with fractions `dx`, `dy`; the clipped, truncated
/// channel bytes. `None` when a row's 13-byte window (4 pixels and the byte the 4th lane
/// reads) runs past `src`; the caller then takes the scalar path.
///
/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn sample_interior(
    src: &[u8],
    rows: [usize; 4],
    col0: usize,
    dx: f64,
    dy: f64,
) -> Option<[u8; 3]> {
    let window = |r: usize| -> Option<*const u8> {
        let at = rows[r].checked_add(col0)?;
        src.get(at..at.checked_add(13)?).map(<[u8]>::as_ptr)
    };
    let vdx = _mm256_set1_pd(dx);
    let v = if dy == 0.0 {
        // Pillow's cubic at d = 0 is `p1 + 0·(…)`, which is p1: the middle row alone.
        // SAFETY: `window` checked the 13 bytes the row pass reads.
        unsafe { row_pass(window(1)?, vdx, dx == 0.0) }
    } else {
        let (r0, r1, r2, r3) = (window(0)?, window(1)?, window(2)?, window(3)?);
        let flat = dx == 0.0;
        // SAFETY: as above, for each row.
        let (h0, h1, h2, h3) = unsafe {
            (
                row_pass(r0, vdx, flat),
                row_pass(r1, vdx, flat),
                row_pass(r2, vdx, flat),
                row_pass(r3, vdx, flat),
            )
        };
        cubic(h0, h1, h2, h3, _mm256_set1_pd(dy))
    };
    Some(to_bytes(v))
}

/// The 4 bytes at `p` as i32 lanes.
///
/// # Safety
/// `p..p + 4` must be readable.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn load4(p: *const u8) -> __m128i {
    // SAFETY: the caller guarantees 4 readable bytes; the read is unaligned.
    let word = unsafe { std::ptr::read_unaligned(p.cast::<i32>()) };
    _mm_cvtepu8_epi32(_mm_cvtsi32_si128(word))
}

/// Pillow's horizontal pass over the 4 pixels at `p` (taps at bytes 0, 3, 6, 9), channels
/// in lanes; with `flat` (dx = 0) the middle tap's samples, as the scalar path returns.
///
/// # Safety
/// `p..p + 13` must be readable.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn row_pass(p: *const u8, dx: __m256d, flat: bool) -> __m256d {
    // SAFETY: the 4 loads read within `p..p + 13`, which the caller guarantees.
    let (v1, v2, v3, v4) = unsafe { (load4(p), load4(p.add(3)), load4(p.add(6)), load4(p.add(9))) };
    if flat {
        return _mm256_cvtepi32_pd(v2);
    }
    // The p's in integers, as C computes them from the promoted bytes.
    let d12 = _mm_sub_epi32(v1, v2);
    let p2 = _mm_sub_epi32(v3, v1);
    let p3 = _mm_sub_epi32(_mm_add_epi32(_mm_add_epi32(d12, d12), v3), v4);
    let p4 = _mm_add_epi32(_mm_sub_epi32(_mm_sub_epi32(v2, v1), v3), v4);
    horner(
        _mm256_cvtepi32_pd(v2),
        _mm256_cvtepi32_pd(p2),
        _mm256_cvtepi32_pd(p3),
        _mm256_cvtepi32_pd(p4),
        dx,
    )
}

/// `p1 + d·(p2 + d·(p3 + d·p4))`, one rounding per operation.
#[inline]
#[target_feature(enable = "avx2")]
fn horner(p1: __m256d, p2: __m256d, p3: __m256d, p4: __m256d, d: __m256d) -> __m256d {
    let t = _mm256_add_pd(p3, _mm256_mul_pd(d, p4));
    let t = _mm256_add_pd(p2, _mm256_mul_pd(d, t));
    _mm256_add_pd(p1, _mm256_mul_pd(d, t))
}

/// Pillow's cubic of four f64 lane vectors (the vertical pass), in the scalar order:
/// `p2 = -v1 + v3`, `p3 = 2(v1 - v2) + v3 - v4`, `p4 = -v1 + v2 - v3 + v4`.
#[inline]
#[target_feature(enable = "avx2")]
fn cubic(v1: __m256d, v2: __m256d, v3: __m256d, v4: __m256d, d: __m256d) -> __m256d {
    let p2 = _mm256_sub_pd(v3, v1);
    let t = _mm256_sub_pd(v1, v2);
    let p3 = _mm256_sub_pd(_mm256_add_pd(_mm256_add_pd(t, t), v3), v4);
    let p4 = _mm256_add_pd(_mm256_sub_pd(_mm256_sub_pd(v2, v1), v3), v4);
    horner(v2, p2, p3, p4, d)
}

/// Clip to [0, 255] and truncate (Rust's `as u8` on f64, Pillow's clip then cast); the
/// first 3 lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn to_bytes(v: __m256d) -> [u8; 3] {
    let c = _mm256_min_pd(_mm256_max_pd(v, _mm256_setzero_pd()), _mm256_set1_pd(255.0));
    let i = _mm256_cvttpd_epi32(c);
    [
        _mm_cvtsi128_si32(i) as u8,
        _mm_extract_epi32::<1>(i) as u8,
        _mm_extract_epi32::<2>(i) as u8,
    ]
}

/// Clip to [0, 255] and truncate, as [`to_bytes`], leaving the 4 lanes as i32.
#[inline]
#[target_feature(enable = "avx2")]
fn to_i32(v: __m256d) -> __m128i {
    let c = _mm256_min_pd(_mm256_max_pd(v, _mm256_setzero_pd()), _mm256_set1_pd(255.0));
    _mm256_cvttpd_epi32(c)
}

/// The horizontal passes of 4 output pixels whose 4x4 taps need no clamping (pixel k's
/// top-left tap at byte `at[k]`, rows `stride` bytes apart, x fraction in lane k of
/// `dx`): `[row][channel]`, each an f64x4 with lane k = pixel k. `None` when a pixel's
/// last row read (16 bytes from `at[k] + 3·stride`) runs past `src`; the caller then
/// takes the scalar path. [`v_passes4`] finishes the samples.
///
/// Why by hand, and why pixel lanes: this is Rotate's inner loop (every pixel needs both
/// cubic passes), which the compiler does not vectorize (see the module doc). With the
/// pixels in the lanes, every f64 lane carries a useful value (the one-pixel form has 3
/// channels in 4 lanes), the fractions come straight from the coordinate vectors, and
/// one bounds check covers 16 row reads. The horizontal and vertical passes are separate
/// functions so the caller can run them as separate loops over a row's blocks (see
/// `geometric::general_row`).
///
/// Exactness: lane (pixel k, channel c) computes [`sample_interior`]'s horizontal pass:
/// the same integer p's from the same bytes, converted exactly, then `p1 + d(p2 + d(p3 +
/// d·p4))` with one rounding per multiply and add (no FMA); only the lane arrangement
/// differs, which is data movement. The one-pixel form's `dx == 0` shortcut (return the
/// middle tap) is not taken; the full form gives the same value there: `p1 + 0·(…)` adds
/// a signed zero (the bracket is finite) to p1, a converted byte, never -0, and
/// `x + ±0 = x` for such x.
///
/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn h_passes4(
    src: &[u8],
    stride: usize,
    at: [usize; 4],
    dx: __m256d,
) -> Option<[[__m256d; 3]; 4]> {
    // Each row reads 16 bytes from `at[k] + r·stride`; the highest is `at[k] + 3·stride + 15`.
    let last = at[0].max(at[1]).max(at[2]).max(at[3]);
    if last.saturating_add(stride.saturating_mul(3).saturating_add(16)) > src.len() {
        return None;
    }
    let base = src.as_ptr();
    // SAFETY (the 4 row passes): `at[k] + 3·stride + 16 <= src.len()` (checked above),
    // so each of the 16-byte loads at `at[k] + r·stride` (r = 0..3) lies inside `src`.
    let row = |r: usize| unsafe {
        let p = [
            base.add(at[0] + r * stride),
            base.add(at[1] + r * stride),
            base.add(at[2] + r * stride),
            base.add(at[3] + r * stride),
        ];
        row_pass_lanes(p, dx)
    };
    Some([row(0), row(1), row(2), row(3)])
}

/// The vertical passes of the 4 pixels of [`h_passes4`] (`h[row][channel]`, y fraction in
/// lane k of `dy`): the 4 pixels' clipped, truncated bytes in pixel order.
///
/// Exactness: per lane, [`cubic`] and the clip and truncation of [`to_bytes`], as the
/// one-pixel form. Its `dy == 0` shortcut (the middle row's horizontal result) is not
/// taken; the full form gives the same value: `v2 + 0·(…)` with `v2 = byte + product`,
/// which is never -0 (a sum is -0 only when both terms are), so adding ±0 leaves it.
/// The saturating packs change nothing (the lanes are in [0, 255] after the clip).
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn v_passes4(h: &[[__m256d; 3]; 4], dy: __m256d) -> [u8; 12] {
    let c0 = to_i32(cubic(h[0][0], h[1][0], h[2][0], h[3][0], dy));
    let c1 = to_i32(cubic(h[0][1], h[1][1], h[2][1], h[3][1], dy));
    let c2 = to_i32(cubic(h[0][2], h[1][2], h[2][2], h[3][2], dy));
    // Bytes [c0 of pixels 0-3, c1 of 0-3, c2 of 0-3, c2 again], then pixel order.
    let b = _mm_packus_epi16(_mm_packs_epi32(c0, c1), _mm_packs_epi32(c2, c2));
    let b = _mm_shuffle_epi8(
        b,
        _mm_setr_epi8(0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11, -1, -1, -1, -1),
    );
    let mut bytes = [0u8; 16];
    // SAFETY: `bytes` has 16 bytes; the store is unaligned.
    unsafe { _mm_storeu_si128(bytes.as_mut_ptr().cast(), b) };
    let mut out = [0u8; 12];
    out.copy_from_slice(&bytes[..12]);
    out
}

/// Horizontal pass of one source row for 4 pixels (row windows at `p[k]`), fractions `dx`
/// per pixel lane: channels 0, 1, 2 as f64x4 vectors with lane k = pixel k.
///
/// # Safety
/// `p[k]..p[k] + 16` must be readable for each k.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn row_pass_lanes(p: [*const u8; 4], dx: __m256d) -> [__m256d; 3] {
    // SAFETY: the caller guarantees 16 readable bytes at each p[k]; unaligned loads.
    let (q0, q1, q2, q3) = unsafe {
        (
            _mm_loadu_si128(p[0].cast()),
            _mm_loadu_si128(p[1].cast()),
            _mm_loadu_si128(p[2].cast()),
            _mm_loadu_si128(p[3].cast()),
        )
    };
    // Transpose: byte j of pixel k to byte 4j + k (j = 0..11: tap j / 3, channel j % 3).
    let a = _mm_unpacklo_epi8(q0, q1);
    let b = _mm_unpacklo_epi8(q2, q3);
    let c = _mm_unpackhi_epi8(q0, q1);
    let d = _mm_unpackhi_epi8(q2, q3);
    let e = _mm_unpacklo_epi16(a, b); // j 0..3
    let f = _mm_unpackhi_epi16(a, b); // j 4..7
    let g = _mm_unpacklo_epi16(c, d); // j 8..11
                                      // Tap t: bytes [channel 0 of pixels 0-3, channel 1, channel 2, -].
    let t = [
        e,
        _mm_alignr_epi8::<12>(f, e),
        _mm_alignr_epi8::<8>(g, f),
        _mm_srli_si128::<4>(g),
    ];
    // Channels 0 and 1 as 8 i32 lanes, channel 2 as 4.
    let w = |x: __m128i| _mm256_cvtepu8_epi32(x);
    let n = |x: __m128i| _mm_cvtepu8_epi32(_mm_srli_si128::<8>(x));
    let (v1, v2, v3, v4) = (w(t[0]), w(t[1]), w(t[2]), w(t[3]));
    let (u1, u2, u3, u4) = (n(t[0]), n(t[1]), n(t[2]), n(t[3]));
    // The p's in integers, as C computes them from the promoted bytes.
    let d12 = _mm256_sub_epi32(v1, v2);
    let p2 = _mm256_sub_epi32(v3, v1);
    let p3 = _mm256_sub_epi32(_mm256_add_epi32(_mm256_add_epi32(d12, d12), v3), v4);
    let p4 = _mm256_add_epi32(_mm256_sub_epi32(_mm256_sub_epi32(v2, v1), v3), v4);
    let e12 = _mm_sub_epi32(u1, u2);
    let q2 = _mm_sub_epi32(u3, u1);
    let q3 = _mm_sub_epi32(_mm_add_epi32(_mm_add_epi32(e12, e12), u3), u4);
    let q4 = _mm_add_epi32(_mm_sub_epi32(_mm_sub_epi32(u2, u1), u3), u4);
    let lo = |x: __m256i| _mm256_cvtepi32_pd(_mm256_castsi256_si128(x));
    let hi = |x: __m256i| _mm256_cvtepi32_pd(_mm256_extracti128_si256::<1>(x));
    [
        horner(lo(v2), lo(p2), lo(p3), lo(p4), dx),
        horner(hi(v2), hi(p2), hi(p3), hi(p4), dx),
        horner(
            _mm256_cvtepi32_pd(u2),
            _mm256_cvtepi32_pd(q2),
            _mm256_cvtepi32_pd(q3),
            _mm256_cvtepi32_pd(q4),
            dx,
        ),
    ]
}
