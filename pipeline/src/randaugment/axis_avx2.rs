//! AVX2 kernels for affine rows that need only one of Pillow's two cubic passes (see
//! [`super::geometric`]): the other axis' fraction is exactly 0, so Pillow's cubic along
//! that axis returns its middle tap and every output byte is a 1-D cubic of 4 source
//! bytes. TranslateX and ShearX are horizontal passes of one source row (taps 3 bytes
//! apart); TranslateY and ShearY are vertical passes (taps one row apart, per column).
//!
//! The lanes are output BYTES, 8 at a time (two f64x4 halves): channels mix across lanes,
//! which is fine since each byte's computation is independent. A [`Plan`] first gives
//! each byte its pixel's fraction and tap position, computed 4 pixels to a vector with
//! the scalar path's operations (`(a0·xin + a1·yin) + a2` from the same precomputed
//! `a0·xin`, `- 0.5`, floor, `t - floor(t)`) and then spread to the pixel's 3 bytes, so
//! fractions and tap indices are the scalar ones, not an assumed constant step (the
//! rounding of `x + 0.5 + tx` makes them differ in the last bits from column to column).
//! A plan that does not depend on the row (TranslateX) is made once per image.
//!
//! Bytes go in 8-byte chunks over runs of pixels whose taps can be read with plain loads;
//! a run's last chunk ends at the run's end, overlapping its predecessor (rewriting a
//! byte writes the same value):
//! - horizontal: runs of pixels (found 8 at a time in the plan) with the same
//!   `floor(xs - 0.5) - x`, all inside and no tap clamped, so tap k of byte j is byte
//!   `j + 3·(shift - 1 + k)` of the row;
//! - vertical: runs of columns (per image) with x-fraction 0 and the same source column
//!   shift; within them a chunk needs every pixel inside and the lanes'
//!   `floor(ys - 0.5)` within {lo, lo + 1}: the 5 (clamped) rows `lo - 1 ..= lo + 3` are
//!   loaded and each lane takes rows `k + (its floor - lo)` (a blend), which is how
//!   ShearY's per-column rows are read without a gather. When the source rows are the
//!   same for the whole row (TranslateY) the 4 rows are loaded directly.
//!
//! Pixels outside the source keep the fill. Anything else (fill edges, clamped taps,
//! irregular steps, runs under 8 bytes) is handed back to the caller's scalar per-pixel
//! path, pixel range by pixel range.
//!
//! Exactness follows [`super::bicubic_avx2`]: integer p's, then `p1 + d(p2 + d(p3 +
//! d·p4))` with one rounding per multiply and add (no FMA), clip to [0, 255], truncate.
//! `_mm256_floor_pd` equals the scalar floor on every coordinate of an inside pixel.
//!
//! Measured alternatives (instruction counts under callgrind, 224x224): recomputing the
//! coordinates per byte lane inside the chunk loop (no plan) took 1.5-2x the kernel
//! instructions for TranslateX/Y and ShearY; per-chunk key checks instead of runs, 1.8x
//! for TranslateX; runs found pixel by pixel in scalar code doubled the ShearX plan.

use std::arch::x86_64::*;
use std::ops::Range;

/// Plan key of a pixel outside the source on the kernel's axis: it keeps the fill.
const OUTSIDE: i32 = i32::MIN;
/// Plan key (or column shift) of a pixel the kernels leave to the scalar path.
const SCALAR: i32 = i32::MIN + 1;

/// What the kernels need of an image's columns (`w` pixels, `3w` bytes a row).
pub(super) struct Columns {
    w: usize,
    /// Pixels rounded up to a multiple of 4 (the plan's vector width).
    padded: usize,
    /// `a0·(x + 0.5)` per pixel, as the scalar path computes it (padding: finite values).
    a0x: Vec<f64>,
    /// `a3·(x + 0.5)` per pixel.
    a3x: Vec<f64>,
    /// For vertical passes (`a1 == 0`): the maximal pixel runs `x0..x1` whose columns all
    /// have x-fraction 0 and the same source column shift `at[1] / 3 - x` (the run's
    /// value), and between them the runs of other columns (`SCALAR`).
    runs: Vec<(Range<usize>, i32)>,
}

impl Columns {
    /// From the per-column products `(a0·xin, a3·xin)` and, where `a1 == 0`, each
    /// column's source column when its x-fraction is exactly 0 (`None`: not a zero
    /// fraction or outside).
    pub(super) fn new(col: &[(f64, f64)], zero_frac_col: Option<&[Option<usize>]>) -> Self {
        let w = col.len();
        let padded = w.div_ceil(4) * 4;
        let pad = |v: Vec<f64>| -> Vec<f64> {
            let last = *v.last().unwrap_or(&0.0);
            v.into_iter()
                .chain(std::iter::repeat(last))
                .take(padded)
                .collect()
        };
        let shift = |x: usize| match zero_frac_col.and_then(|c| c[x]) {
            Some(c) => i32::try_from(c as i64 - x as i64).unwrap_or(SCALAR),
            None => SCALAR,
        };
        let mut runs: Vec<(Range<usize>, i32)> = Vec::new();
        for x in 0..w {
            match runs.last_mut() {
                Some((xs, s)) if *s == shift(x) => xs.end = x + 1,
                _ => runs.push((x..x + 1, shift(x))),
            }
        }
        Columns {
            w,
            padded,
            a0x: pad(col.iter().map(|c| c.0).collect()),
            a3x: pad(col.iter().map(|c| c.1).collect()),
            runs,
        }
    }

    /// `a0·(x + 0.5)` and `a3·(x + 0.5)` per pixel, padded to a multiple of 4 pixels with
    /// finite values (the scalar path's per-column products).
    pub(super) fn products(&self) -> (&[f64], &[f64]) {
        (&self.a0x, &self.a3x)
    }

    /// Whether some run of columns can take the vertical pass.
    pub(super) fn any_vertical(&self) -> bool {
        self.runs.iter().any(|&(_, s)| s != SCALAR)
    }
}

/// Per output byte of a row: its pixel's key (horizontal: `floor(xs - 0.5) - x`;
/// vertical: `floor(ys - 0.5)`; or `OUTSIDE` / `SCALAR`) and fraction.
pub(super) struct Plan {
    /// Vertical plans: per byte.
    key: Vec<i32>,
    /// Horizontal plans: per pixel.
    key_px: Vec<i32>,
    d: Vec<f64>,
    /// Horizontal plans: the row's maximal pixel runs `x0..x1` of one key.
    runs: Vec<(Range<usize>, i32)>,
}

impl Plan {
    pub(super) fn new(c: &Columns) -> Self {
        Plan {
            key: vec![0; 3 * c.padded],
            // 8 more keys than pixels for `find_runs`' shifted loads.
            key_px: vec![0; c.padded + 8],
            d: vec![0.0; 3 * c.padded],
            runs: Vec::new(),
        }
    }

    /// Plans a horizontal pass: pixel x samples at `xs = (a0·xin + a1yin) + a2`.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn horizontal(&mut self, c: &Columns, a1yin: f64, a2: f64) {
        let (first, last) = (_mm_set1_epi32(1), _mm_set1_epi32(c.w as i32 - 3));
        // SAFETY: AVX2 is enabled in this function.
        unsafe {
            self.fill::<false>(&c.a0x, a1yin, a2, c.w, |x, fl, inside| {
                // No tap clamped: 1 <= floor <= w - 3.
                let clamped = _mm_or_si128(_mm_cmpgt_epi32(first, fl), _mm_cmpgt_epi32(fl, last));
                let x = _mm_add_epi32(_mm_set1_epi32(x as i32), _mm_setr_epi32(0, 1, 2, 3));
                let e = _mm_blendv_epi8(_mm_sub_epi32(fl, x), _mm_set1_epi32(SCALAR), clamped);
                _mm_blendv_epi8(_mm_set1_epi32(OUTSIDE), e, inside)
            })
        }
        // SAFETY: AVX2 is enabled in this function.
        unsafe { self.find_runs(c.w) };
    }

    /// The runs of equal keys among pixels `0..w`: a run ends where pixel `x`'s key
    /// differs from pixel `x - 1`'s, found 8 pixels at a time.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    unsafe fn find_runs(&mut self, w: usize) {
        self.runs.clear();
        let key = &self.key_px[..w + 8];
        let mut x0 = 0;
        for x in (0..w - 1).step_by(8) {
            // SAFETY: `x + 9 <= w + 8`, so both 8-lane loads are within `key`.
            let ne = unsafe {
                let p = key.as_ptr().add(x);
                let eq = _mm256_cmpeq_epi32(
                    _mm256_loadu_si256(p.cast()),
                    _mm256_loadu_si256(p.add(1).cast()),
                );
                !_mm256_movemask_ps(_mm256_castsi256_ps(eq)) as u32 & 0xFF
            };
            // Lane l compares pixels x + l and x + l + 1; only boundaries below w count.
            let mut ne = ne & ((1u32 << (w - 1 - x).min(8)) - 1);
            while ne != 0 {
                let x1 = x + 1 + ne.trailing_zeros() as usize;
                self.runs.push((x0..x1, key[x0]));
                x0 = x1;
                ne &= ne - 1;
            }
        }
        self.runs.push((x0..w, key[x0]));
    }

    /// Plans a vertical pass: pixel x samples rows at `ys = (a3·xin + a4yin) + a5` in a
    /// `h`-row image.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn vertical(&mut self, c: &Columns, a4yin: f64, a5: f64, h: usize) {
        // SAFETY: AVX2 is enabled in this function.
        unsafe {
            self.fill::<true>(&c.a3x, a4yin, a5, h, |_, fl, inside| {
                _mm_blendv_epi8(_mm_set1_epi32(OUTSIDE), fl, inside)
            })
        }
    }

    /// Source coordinates `(pre + r) + k` of 4 pixels at a time, checked against
    /// `[0, size)`: fractions, spread to each pixel's 3 bytes, and `key(x, floor, inside
    /// mask)`, spread likewise with `BYTE_KEYS`, else one a pixel in `key_px`.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn fill<const BYTE_KEYS: bool>(
        &mut self,
        pre: &[f64],
        r: f64,
        k: f64,
        size: usize,
        key: impl Fn(usize, __m128i, __m128i) -> __m128i,
    ) {
        let (vr, vk) = (_mm256_set1_pd(r), _mm256_set1_pd(k));
        let (zero, size, half) = (
            _mm256_setzero_pd(),
            _mm256_set1_pd(size as f64),
            _mm256_set1_pd(0.5),
        );
        let n = pre.len() / 4 * 4;
        assert!(self.key.len() >= 3 * n && self.d.len() >= 3 * n && self.key_px.len() >= n);
        for (x, pre) in (0..).step_by(4).zip(pre.chunks_exact(4)) {
            // SAFETY: a 4-lane load of a 4-element chunk.
            let v = _mm256_add_pd(
                _mm256_add_pd(unsafe { _mm256_loadu_pd(pre.as_ptr()) }, vr),
                vk,
            );
            let inside = _mm256_and_pd(
                _mm256_cmp_pd::<_CMP_GE_OQ>(v, zero),
                _mm256_cmp_pd::<_CMP_LT_OQ>(v, size),
            );
            // 64-bit masks to 32-bit lanes: the low dword of each (all ones or zero).
            let inside = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(
                _mm256_castpd_si256(inside),
                _mm256_setr_epi32(0, 2, 4, 6, 0, 0, 0, 0),
            ));
            let t = _mm256_sub_pd(v, half);
            let f = _mm256_floor_pd(t);
            let d = _mm256_sub_pd(t, f);
            let kv = key(x, _mm256_cvttpd_epi32(f), inside);
            // Pixels p0..p3 to bytes: (p0 p0 p0 p1) (p1 p1 p2 p2) (p2 p3 p3 p3).
            // SAFETY: stores of 4 lanes at 3x, 3x + 4, 3x + 8 (x + 4 <= n), or at x.
            unsafe {
                let pd = self.d.as_mut_ptr().add(3 * x);
                _mm256_storeu_pd(pd, _mm256_permute4x64_pd::<0x40>(d));
                _mm256_storeu_pd(pd.add(4), _mm256_permute4x64_pd::<0xA5>(d));
                _mm256_storeu_pd(pd.add(8), _mm256_permute4x64_pd::<0xFE>(d));
                if BYTE_KEYS {
                    let pk = self.key.as_mut_ptr().add(3 * x);
                    _mm_storeu_si128(pk.cast(), _mm_shuffle_epi32::<0x40>(kv));
                    _mm_storeu_si128(pk.add(4).cast(), _mm_shuffle_epi32::<0xA5>(kv));
                    _mm_storeu_si128(pk.add(8).cast(), _mm_shuffle_epi32::<0xFE>(kv));
                } else {
                    _mm_storeu_si128(self.key_px.as_mut_ptr().add(x).cast(), kv);
                }
            }
        }
    }
}

/// Runs `chunk(at)` on the 8-byte chunks of the `n`-byte run `b0..b1` (n >= 8): every 8
/// bytes, the last one ending at `b1` (overlapping its predecessor, which rewrites the
/// same values).
#[inline(always)]
fn chunks(b0: usize, b1: usize, mut chunk: impl FnMut(usize)) {
    debug_assert!(b1 - b0 >= 8);
    let mut j = b0;
    loop {
        let at = j.min(b1 - 8);
        chunk(at);
        if at == b1 - 8 {
            break;
        }
        j += 8;
    }
}

/// Horizontal pass over output row `out` from source row `row` (both `3w` bytes) with a
/// [`Plan::horizontal`]; `fallback` gets the pixel ranges not done.
///
/// Each run of pixels with the same shift goes in 8-byte chunks, the last one ending at
/// the run's end; runs under 8 bytes go to `fallback`.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn h_row(
    row: &[u8],
    out: &mut [u8],
    plan: &Plan,
    mut fallback: impl FnMut(&mut [u8], Range<usize>),
) {
    let n = out.len();
    assert!(row.len() == n && plan.d.len() >= n);
    for (xs, e) in plan.runs.iter().cloned() {
        let (b0, b1) = (3 * xs.start, 3 * xs.end);
        if e == OUTSIDE {
            continue;
        }
        if e == SCALAR || b1 - b0 < 8 {
            fallback(out, xs);
            continue;
        }
        // The run's pixels have floors e + x in 1..=w-3: their taps, bytes
        // `j + 3(e - 1) + 3k` for k = 0..3 and j in b0..b1, lie in `row`.
        let off = 3 * (e as isize - 1);
        assert!(b0 as isize + off >= 0 && b1 as isize + off + 9 <= n as isize);
        let (src, dst, d) = (row.as_ptr(), out.as_mut_ptr(), plan.d.as_ptr());
        chunks(b0, b1, |at| {
            // SAFETY: `at..at + 8` is within b0..b1, so the 4 tap loads (bytes
            // `at + off + 3k ..+ 8`) are within `row` (asserted above), the fraction
            // loads within `plan.d` and the store within `out` (both at least n long).
            unsafe {
                let p = src.offset(at as isize + off);
                let v = [load8(p), load8(p.add(3)), load8(p.add(6)), load8(p.add(9))];
                let (d_lo, d_hi) = (_mm256_loadu_pd(d.add(at)), _mm256_loadu_pd(d.add(at + 4)));
                _mm_storel_epi64(dst.add(at).cast(), cubic8(v, d_lo, d_hi));
            }
        });
    }
}

/// Vertical pass over output row `out` (`out.len()` bytes a row) of `src` (`h` rows) with
/// a [`Plan::vertical`]; `fallback` gets the pixel ranges not done.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn v_row(
    src: &[u8],
    h: usize,
    out: &mut [u8],
    c: &Columns,
    plan: &Plan,
    mut fallback: impl FnMut(&mut [u8], Range<usize>),
) {
    let stride = out.len();
    assert!(src.len() == h * stride && plan.d.len() >= stride && plan.key.len() >= stride);
    for (xs, s) in c.runs.iter().cloned() {
        let (b0, b1) = (3 * xs.start, 3 * xs.end);
        if s == SCALAR || b1 - b0 < 8 {
            fallback(out, xs);
            continue;
        }
        // The run's source bytes `j + 3s`, j in b0..b1, are within a row: its pixels'
        // source columns are inside.
        let off = 3 * s as isize;
        assert!(b0 as isize + off >= 0 && b1 as isize + off <= stride as isize);
        chunks(b0, b1, |at| {
            // SAFETY: `at..at + 8` is within the run, so within `plan` (at least `stride`
            // long).
            let fl = unsafe { _mm256_loadu_si256(plan.key.as_ptr().add(at).cast()) };
            let f0 = _mm256_extract_epi32::<0>(fl);
            let f7 = _mm256_extract_epi32::<7>(fl);
            let low = f0.min(f7);
            // Inside pixels have floors >= -1; the OUTSIDE sentinel is far below.
            if low < -1 {
                let all_out = _mm256_cmpeq_epi32(fl, _mm256_set1_epi32(OUTSIDE));
                if _mm256_movemask_epi8(all_out) != -1 {
                    fallback(out, at / 3..(at + 7) / 3 + 1);
                }
                return;
            }
            let up = _mm256_cmpeq_epi32(fl, _mm256_set1_epi32(low + 1));
            let ok = _mm256_or_si256(_mm256_cmpeq_epi32(fl, _mm256_set1_epi32(low)), up);
            if _mm256_movemask_epi8(ok) != -1 {
                fallback(out, at / 3..(at + 7) / 3 + 1);
                return;
            }
            let col = (at as isize + off) as usize;
            let r = if low >= 1 && low + 3 < h as i32 {
                let first = (low as usize - 1) * stride + col;
                let rows = &src[first..first + 4 * stride + 8];
                // SAFETY: each load reads 8 bytes of `rows`.
                unsafe {
                    let p = rows.as_ptr();
                    [0, 1, 2, 3, 4].map(|m| load8(p.add(m * stride)))
                }
            } else {
                [0, 1, 2, 3, 4].map(|m| {
                    let r = (low - 1 + m).clamp(0, h as i32 - 1) as usize;
                    // SAFETY: the load reads the 8 bytes of the slice.
                    unsafe { load8(src[r * stride + col..r * stride + col + 8].as_ptr()) }
                })
            };
            // Tap k of a lane whose floor is low + 1 is row k + 1.
            let v = std::array::from_fn(|k| _mm256_blendv_epi8(r[k], r[k + 1], up));
            // SAFETY: as for the keys; the store is within `out`.
            unsafe {
                let d = plan.d.as_ptr().add(at);
                let (d_lo, d_hi) = (_mm256_loadu_pd(d), _mm256_loadu_pd(d.add(4)));
                _mm_storel_epi64(out.as_mut_ptr().add(at).cast(), cubic8(v, d_lo, d_hi));
            }
        });
    }
}

/// Vertical pass where every pixel of the row samples the same source rows (byte offsets
/// `rows`, already clamped) at fraction `dy`; `fallback` gets the pixel ranges not done.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn v_row_uniform(
    src: &[u8],
    rows: [usize; 4],
    dy: f64,
    out: &mut [u8],
    c: &Columns,
    mut fallback: impl FnMut(&mut [u8], Range<usize>),
) {
    let stride = out.len();
    let r: [*const u8; 4] = rows.map(|at| src[at..at + stride].as_ptr());
    let d = _mm256_set1_pd(dy);
    for (xs, s) in c.runs.iter().cloned() {
        let (b0, b1) = (3 * xs.start, 3 * xs.end);
        if s == SCALAR || b1 - b0 < 8 {
            fallback(out, xs);
            continue;
        }
        // As in `v_row`: the run's source bytes are within a row.
        let off = 3 * s as isize;
        assert!(b0 as isize + off >= 0 && b1 as isize + off <= stride as isize);
        let dst = out.as_mut_ptr();
        chunks(b0, b1, |at| {
            // SAFETY: bytes `at + off ..+ 8` of each row (asserted above) and `at..at + 8`
            // of `out`.
            unsafe {
                let v = r.map(|row| load8(row.offset(at as isize + off)));
                _mm_storel_epi64(dst.add(at).cast(), cubic8(v, d, d));
            }
        });
    }
}

/// The 8 bytes at `p` as i32 lanes.
///
/// # Safety
/// `p..p + 8` must be readable.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn load8(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 8 readable bytes; the read is unaligned.
    _mm256_cvtepu8_epi32(unsafe { _mm_loadl_epi64(p.cast()) })
}

/// Pillow's 1-D cubic of the tap lanes `v` (8 bytes) at fractions `d_lo` (lanes 0-3) and
/// `d_hi` (4-7), clipped and truncated; the 8 bytes in the low half.
#[inline]
#[target_feature(enable = "avx2")]
fn cubic8(v: [__m256i; 4], d_lo: __m256d, d_hi: __m256d) -> __m128i {
    let [v1, v2, v3, v4] = v;
    // The p's in integers, as C computes them from the promoted bytes.
    let d12 = _mm256_sub_epi32(v1, v2);
    let p2 = _mm256_sub_epi32(v3, v1);
    let p3 = _mm256_sub_epi32(_mm256_add_epi32(_mm256_add_epi32(d12, d12), v3), v4);
    let p4 = _mm256_add_epi32(_mm256_sub_epi32(_mm256_sub_epi32(v2, v1), v3), v4);
    let half = |p: __m256i, k: bool| {
        _mm256_cvtepi32_pd(if k {
            _mm256_extracti128_si256::<1>(p)
        } else {
            _mm256_castsi256_si128(p)
        })
    };
    let horner = |k: bool, d: __m256d| {
        let t = _mm256_add_pd(half(p3, k), _mm256_mul_pd(d, half(p4, k)));
        let t = _mm256_add_pd(half(p2, k), _mm256_mul_pd(d, t));
        let v = _mm256_add_pd(half(v2, k), _mm256_mul_pd(d, t));
        let c = _mm256_min_pd(_mm256_max_pd(v, _mm256_setzero_pd()), _mm256_set1_pd(255.0));
        _mm256_cvttpd_epi32(c)
    };
    let (lo, hi) = (horner(false, d_lo), horner(true, d_hi));
    // Values are already in [0, 255]: the saturating packs only narrow.
    _mm_packus_epi16(_mm_packs_epi32(lo, hi), _mm_setzero_si128())
}
