//! AVX2 form of AutoContrast's mapping (see [`super::pointwise::autocontrast`]):
//! `int(i·scale + offset)` clamped to [0, 255], computed per byte in f64 on 4 lanes
//! instead of looked up in a 256-entry table.
//!
//! Why by hand: a table lookup costs about one cycle a byte and does not vectorize (AVX2
//! gathers measured slower still); the arithmetic runs 4 bytes per instruction.
//!
//! Exactness: the LUT entries are `(i as f64 * scale + offset) as i64` clamped: here the
//! same f64 multiply and add (one rounding each, no FMA) on the same `i`, then truncation
//! toward zero (`|i·scale + offset| <= 255·255`, so the i32 conversion is exact) and
//! saturating packs that clamp to [0, 255]. So each byte equals its table entry, which
//! the tests in [`super::pointwise`] check on random images.

use std::arch::x86_64::*;

/// Maps the leading whole groups of 8 pixels of `buf` (interleaved RGB) through
/// `v -> clamp(trunc(v·scale[c] + offset[c]), 0, 255)` for channel `c`; returns the
/// number of bytes done (a multiple of 24).
#[target_feature(enable = "avx2")]
pub(super) fn affine_map(buf: &mut [u8], scale: [f64; 3], offset: [f64; 3]) -> usize {
    // Byte 4g of a 24-byte step belongs to channel g % 3; lane k of a 4-lane group
    // starting at phase p to channel (p + k) % 3.
    let lanes =
        |v: [f64; 3], p: usize| _mm256_setr_pd(v[p % 3], v[(p + 1) % 3], v[(p + 2) % 3], v[p % 3]);
    let sc = [lanes(scale, 0), lanes(scale, 1), lanes(scale, 2)];
    let of = [lanes(offset, 0), lanes(offset, 1), lanes(offset, 2)];
    let mut done = 0;
    for c in buf.chunks_exact_mut(24) {
        let c: &mut [u8; 24] = c.try_into().expect("24 bytes");
        let group = |g: usize| {
            let w = u32::from_le_bytes(c[4 * g..4 * g + 4].try_into().expect("4 bytes"));
            let i = _mm256_cvtepi32_pd(_mm_cvtepu8_epi32(_mm_cvtsi32_si128(w as i32)));
            let t = _mm256_add_pd(_mm256_mul_pd(i, sc[g % 3]), of[g % 3]);
            _mm256_cvttpd_epi32(t)
        };
        // i32 -> i16 (signed saturation keeps the sign) -> u8 (clamps to [0, 255]).
        let w01 = _mm_packs_epi32(group(0), group(1));
        let w23 = _mm_packs_epi32(group(2), group(3));
        let w45 = _mm_packs_epi32(group(4), group(5));
        let b0 = _mm_packus_epi16(w01, w23);
        let b1 = _mm_packus_epi16(w45, w45);
        // SAFETY: `c` is 24 writable bytes: 16 at offset 0; unaligned store.
        unsafe { _mm_storeu_si128(c.as_mut_ptr().cast(), b0) };
        c[16..24].copy_from_slice(&(_mm_cvtsi128_si64(b1) as u64).to_le_bytes());
        done += 24;
    }
    done
}
