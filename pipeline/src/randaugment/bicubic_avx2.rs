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
