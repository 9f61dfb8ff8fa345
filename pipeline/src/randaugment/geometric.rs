//! Geometric ops: Pillow's `Image.transform(size, AFFINE, matrix, BICUBIC, fillcolor=fill)`
//! and `Image.rotate(deg, BICUBIC, fillcolor=fill)`, replicating `libImaging/Geometry.c`
//! operation for operation in f64, so the output is bit-exact with Pillow on x86-64.
//!
//! For output pixel (x, y) the source point is
//! `xs = a0·(x+0.5) + a1·(y+0.5) + a2`, `ys = a3·(x+0.5) + a4·(y+0.5) + a5`
//! (evaluated as `(a0·xin + a1·yin) + a2`). If `xs ∉ [0, w)` or `ys ∉ [0, h)` the pixel
//! keeps the fill colour. Otherwise, with `x = floor(xs - 0.5)`, `dx = xs - 0.5 - x` (same
//! for y), the 4x4 neighbourhood rows/columns `x-1..x+2` are clamped to the image and
//! interpolated with Pillow's cubic (a = -1): `p1 = v2, p2 = v3 - v1,
//! p3 = 2(v1 - v2) + v3 - v4, p4 = -v1 + v2 - v3 + v4, v = p1 + d(p2 + d(p3 + d·p4))`, first
//! along x for each of the 4 rows (exact integer p's), then along y; the result is clipped
//! to [0, 255] and truncated (not rounded).
//!
//! Rotate builds Pillow's inverse matrix: `angle = -radians(deg mod 360)`,
//! `[round(cos, 15), round(sin, 15), 0, round(-sin, 15), round(cos, 15), 0]`, centre
//! `(w/2, h/2)`; angles of exactly 0 / 180 (and 90 / 270 on square images) take Pillow's
//! lossless transpose paths. cos/sin come from the pure-Rust `libm`; the rounding to 15
//! decimals (as Python's `round`) absorbs any last-ulp difference from glibc's, so the
//! matrix equals Pillow's except when a value sits within an ulp of a 15-digit rounding
//! boundary. Where the C compiler fuses multiply-adds (not done on x86-64 baseline builds
//! of Pillow), Pillow itself can differ from this by one level on rare pixels.

use image::RgbImage;

/// Python's `round(x, 15)` for a float: correctly rounded decimal rounding, read back.
fn round15(x: f64) -> f64 {
    format!("{x:.15}").parse::<f64>().unwrap_or(x)
}

/// Python's float `%` with a positive divisor (result in `[0, d)`, `+0.0` for zero).
fn py_mod(x: f64, d: f64) -> f64 {
    let m = x % d;
    if m == 0.0 {
        0.0
    } else if m < 0.0 {
        m + d
    } else {
        m
    }
}

/// The affine matrix `Image.rotate(deg)` passes to `transform` for a `w`x`h` image, or
/// `None` when Pillow takes a transpose fast path (0, 180, or 90/270 on a square image;
/// see [`rotate`]).
pub fn rotate_matrix(deg: f64, w: u32, h: u32) -> Option<[f64; 6]> {
    let angle = py_mod(deg, 360.0);
    if angle == 0.0 || angle == 180.0 || ((angle == 90.0 || angle == 270.0) && w == h) {
        return None;
    }
    let (cx, cy) = (f64::from(w) / 2.0, f64::from(h) / 2.0);
    let a = -(angle * (std::f64::consts::PI / 180.0));
    let (sin, cos) = (libm::sin(a), libm::cos(a));
    let mut m = [
        round15(cos),
        round15(sin),
        0.0,
        round15(-sin),
        round15(cos),
        0.0,
    ];
    // Python: matrix[2], matrix[5] = transform(-cx, -cy, matrix), then += centre.
    let (x, y, c, f) = (-cx, -cy, m[2], m[5]);
    m[2] = m[0] * x + m[1] * y + c;
    m[5] = m[3] * x + m[4] * y + f;
    m[2] += cx;
    m[5] += cy;
    Some(m)
}

/// `Image.rotate(deg, resample=BICUBIC, fillcolor=fill)` (counter-clockwise, no expand).
pub fn rotate(img: RgbImage, deg: f64, fill: [u8; 3]) -> RgbImage {
    match rotate_matrix(deg, img.width(), img.height()) {
        Some(m) => {
            let out = affine(&img, m, fill);
            crate::transforms::buffers::recycle(img);
            out
        }
        None => {
            let angle = py_mod(deg, 360.0);
            if angle == 180.0 {
                image::imageops::rotate180(&img)
            } else if angle == 90.0 {
                // Pillow's ROTATE_90 is counter-clockwise; image's rotate270 is too.
                image::imageops::rotate270(&img)
            } else if angle == 270.0 {
                image::imageops::rotate90(&img)
            } else {
                img
            }
        }
    }
}

/// Pillow's bicubic interpolation of four samples at fraction `d`.
#[inline(always)]
fn cubic(v1: f64, v2: f64, v3: f64, v4: f64, d: f64) -> f64 {
    let p1 = v2;
    let p2 = -v1 + v3;
    let p3 = 2.0 * (v1 - v2) + v3 - v4;
    let p4 = -v1 + v2 - v3 + v4;
    p1 + d * (p2 + d * (p3 + d * p4))
}

/// `v.floor()` without the libm call baseline x86-64 needs (no SSE4.1 `roundsd`);
/// exact for |v| < 2^52, which sample coordinates always are.
#[inline(always)]
fn floor(v: f64) -> f64 {
    let t = v as i64 as f64;
    if t > v {
        t - 1.0
    } else {
        t
    }
}

/// Pillow's horizontal cubic pass of one source row at columns `cols` (byte offsets of
/// the 4 clamped pixels), for the 3 channels; the p's are exact integers as in C.
#[inline(always)]
fn h_pass(row: &[u8], cols: &[usize; 4], dx: f64) -> [f64; 3] {
    if dx == 0.0 {
        return std::array::from_fn(|b| row[cols[1] + b] as f64);
    }
    std::array::from_fn(|b| {
        let s = |c: usize| row[cols[c] + b] as i32;
        let (v1, v2, v3, v4) = (s(0), s(1), s(2), s(3));
        let p1 = v2 as f64;
        let p2 = (-v1 + v3) as f64;
        let p3 = (2 * (v1 - v2) + v3 - v4) as f64;
        let p4 = (-v1 + v2 - v3 + v4) as f64;
        p1 + dx * (p2 + dx * (p3 + dx * p4))
    })
}

/// Where one output coordinate samples the input along one axis: Pillow's bounds check
/// on the source coordinate `v`, `floor(v - 0.5)`, the fraction and the 4 clamped taps.
#[derive(Clone, Copy, Debug)]
struct Taps {
    inside: bool,
    /// No tap needed clamping: the 4 offsets are `at[0] + k * unit`, k = 0..3.
    interior: bool,
    /// Offsets of the 4 taps (`index * unit`: bytes within a row, or row starts).
    at: [usize; 4],
    d: f64,
}

impl Taps {
    #[inline(always)]
    fn new(v: f64, size: usize, unit: usize) -> Self {
        if !(v >= 0.0 && v < size as f64) {
            return Taps {
                inside: false,
                interior: false,
                at: [0; 4],
                d: 0.0,
            };
        }
        let t = v - 0.5;
        let f = floor(t);
        let i = f as isize - 1;
        let clamp = |k: isize| (i + k).clamp(0, size as isize - 1) as usize * unit;
        Taps {
            inside: true,
            interior: i >= 0 && i + 3 < size as isize,
            at: [clamp(0), clamp(1), clamp(2), clamp(3)],
            d: t - f,
        }
    }
}

/// Pillow's bicubic sample of the 3 channels at the taps `rows` x `cols` (fractions `dy`,
/// `dx`): horizontal pass on each of the 4 rows, then vertical.
#[inline(always)]
fn bicubic_px(src: &[u8], stride: usize, rows: &Taps, cols: &Taps) -> [f64; 3] {
    let (dx, dy) = (cols.d, rows.d);
    let row = |ri: usize| &src[rows.at[ri]..rows.at[ri] + stride];
    // With d == 0 Pillow's cubic is `p1 + 0·(…) = p1` exactly, so a zero fraction needs
    // only the middle sample: shears and translations hit this on one axis.
    if dy == 0.0 {
        h_pass(row(1), &cols.at, dx)
    } else if dx == 0.0 {
        let c = cols.at[1];
        std::array::from_fn(|b| {
            let s = |ri: usize| src[rows.at[ri] + c + b] as f64;
            cubic(s(0), s(1), s(2), s(3), dy)
        })
    } else {
        // 4 rows x 3 channels as 12 independent lanes (vectorizes), each lane exactly
        // Pillow's scalar expression; then the vertical pass.
        let mut p = [[0.0f64; 12]; 4];
        for ri in 0..4 {
            let r = row(ri);
            for b in 0..3 {
                let s = |c: usize| r[cols.at[c] + b] as i32;
                let (v1, v2, v3, v4) = (s(0), s(1), s(2), s(3));
                let k = ri * 3 + b;
                p[0][k] = v2 as f64;
                p[1][k] = (-v1 + v3) as f64;
                p[2][k] = (2 * (v1 - v2) + v3 - v4) as f64;
                p[3][k] = (-v1 + v2 - v3 + v4) as f64;
            }
        }
        let v: [f64; 12] =
            std::array::from_fn(|k| p[0][k] + dx * (p[1][k] + dx * (p[2][k] + dx * p[3][k])));
        std::array::from_fn(|b| cubic(v[b], v[3 + b], v[6 + b], v[9 + b], dy))
    }
}

/// `Image.transform(img.size, AFFINE, a, resample=BICUBIC, fillcolor=fill)`.
/// `a` maps output pixel centres to input coordinates (Pillow's convention).
///
/// When `a[1]` is zero the source x of a pixel does not depend on its row (translations,
/// ShearY), and when `a[3]` is zero the source y does not depend on its column
/// (translations, ShearX): those taps are computed once per column or per row, with the
/// same operations, so the bytes are the same as computing them per pixel.
///
/// On x86-64 CPUs with AVX2, rows that need only one cubic pass (the other axis' fraction
/// is exactly 0: TranslateX/Y, ShearX/Y) go through the byte-lane kernels of
/// [`super::axis_avx2`], and other points whose taps need no clamping through
/// [`super::bicubic_avx2`]; both give the same bytes.
pub fn affine(img: &RgbImage, a: [f64; 6], fill: [u8; 3]) -> RgbImage {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { affine_avx2(img, a, fill) };
    }
    affine_with(img, a, fill, |_, _, _| None)
}

/// [`affine`] with AVX2: whole rows through the 1-D kernels of [`super::axis_avx2`] where
/// one fraction is exactly 0, the AVX2 point sampler for other interior points.
///
/// A row whose source y is the same for every column (`a[3] == 0`) with fraction 0 is a
/// horizontal pass of one source row; otherwise, when `a[1] == 0` and some columns have
/// source-x fraction 0, the row is a vertical pass (per-column source rows). The kernels
/// recompute each pixel's coordinates with the scalar path's operations and hand back to
/// [`pixels`] whatever they cannot do exactly (fill, clamped or irregular taps).
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn affine_avx2(img: &RgbImage, a: [f64; 6], fill: [u8; 3]) -> RgbImage {
    use super::axis_avx2::{h_row, v_row, v_row_uniform, Columns, Plan};
    let fast = |src: &[u8], rows: &Taps, cols: &Taps| {
        if rows.interior && cols.interior {
            // SAFETY: this function only runs on CPUs with AVX2.
            unsafe {
                super::bicubic_avx2::sample_interior(src, rows.at, cols.at[0], cols.d, rows.d)
            }
        } else {
            None
        }
    };
    let mut out = filled(img.width(), img.height(), fill);
    let Some(g) = Grid::new(img, a) else {
        return out;
    };
    let stride = g.stride;
    // Where a1 == 0, each column's source column when its x-fraction is exactly 0.
    let zero_frac_col: Option<Vec<Option<usize>>> = g.x_taps.as_ref().map(|t| {
        t.iter()
            .map(|t| (t.inside && t.d == 0.0).then_some(t.at[1] / 3))
            .collect()
    });
    let columns = Columns::new(&g.col, zero_frac_col.as_deref());
    let vertical = columns.any_vertical();
    let mut plan = Plan::new(&columns);
    // The horizontal plan of rows with a1 == 0 is the same for every row.
    let mut h_planned = false;
    let (mut pending, mut blocks_at) = (Vec::new(), Vec::new());
    let dst: &mut [u8] = out.as_mut();
    for (y, out_row) in dst.chunks_exact_mut(stride).enumerate() {
        let yin = y as f64 + 0.5;
        let (ry, ry2) = (a[1] * yin, a[4] * yin);
        let back = |o: &mut [u8], xs: std::ops::Range<usize>| pixels(&g, y, o, xs, fast);
        if a[3] == 0.0 {
            let t = Taps::new(g.cx2_zero + ry2 + a[5], g.h, stride);
            if !t.inside {
                continue;
            }
            // SAFETY (all three kernels and the plans): this function only runs on CPUs
            // with AVX2.
            if t.d == 0.0 {
                if !h_planned {
                    unsafe { plan.horizontal(&columns, ry, a[2]) };
                    h_planned = a[1] == 0.0;
                }
                let row = &g.src[t.at[1]..t.at[1] + stride];
                unsafe { h_row(row, out_row, &plan, back) };
                continue;
            }
            if vertical {
                unsafe { v_row_uniform(g.src, t.at, t.d, out_row, &columns, back) };
                continue;
            }
        } else if vertical {
            h_planned = false;
            unsafe {
                plan.vertical(&columns, ry2, a[5], g.h);
                v_row(g.src, g.h, out_row, &columns, &plan, back);
            }
            continue;
        }
        // SAFETY: this function only runs on CPUs with AVX2.
        unsafe { general_row(&g, &columns, y, out_row, fast, &mut pending, &mut blocks_at) };
    }
    out
}

/// A block of 4 interior pixels between [`general_row`]'s first two loops: its first
/// pixel, the byte offsets of its pixels' top-left taps, and the x and y fractions (lane
/// k = pixel k).
#[cfg(target_arch = "x86_64")]
type BlockAt = (
    usize,
    [usize; 4],
    std::arch::x86_64::__m256d,
    std::arch::x86_64::__m256d,
);

/// A block of 4 pixels between [`general_row`]'s last two loops: its first pixel, its 4
/// source rows' horizontal passes (`[row][channel]`, pixel lanes) and its y fractions.
#[cfg(target_arch = "x86_64")]
type Pending = (
    usize,
    [[std::arch::x86_64::__m256d; 3]; 4],
    std::arch::x86_64::__m256d,
);

/// Output row `y` of a general affine transform (both axes' fractions vary along the row:
/// Rotate), 4 pixels at a time with AVX2; the same bytes as [`pixels`] over the row.
/// `pending` and `blocks_at` are scratch space, reused from row to row.
///
/// Why by hand: per pixel, [`pixels`] computes both axes' [`Taps`] in scalar code (bounds
/// test, floor, fraction, 4 clamped taps each) and calls the one-pixel sampler (Rotate
/// took about 1.75 ms at 224x224, some 100 cycles a pixel); the compiler does not
/// vectorize that loop (data-dependent taps, early exits). Here, in three loops over the
/// row's blocks of 4 pixels:
/// 1. the coordinates of the 4 pixels in one f64x4 vector; a block whose 4 pixels all
///    have unclamped taps is kept for the next loops, any other block (fill, clamped
///    taps) goes through [`pixels`] as before, and a block entirely outside the source
///    keeps the fill;
/// 2. the 4 source rows' horizontal passes ([`super::bicubic_avx2::h_passes4`]; a block
///    whose reads would run past the buffer's end goes through [`pixels`]);
/// 3. the vertical passes and the stores ([`super::bicubic_avx2::v_passes4`]).
///
/// The last `w mod 4` pixels go through [`pixels`]. Splitting the work into loops keeps
/// each block's chain of dependent operations short within a loop, so the out-of-order
/// core overlaps many blocks; one loop doing all three stages per block was slower
/// (Rotate-only loop, wall time: 945 µs in one loop, 815 µs with the vertical passes
/// split off, 785 µs with the coordinates split off too).
///
/// Exactness: each lane performs the scalar operations in the same order on the same
/// values: `xs = (a0·xin + a1·yin) + a2` from the same per-column product `a0·xin` (where
/// `a1` is ±0, `a1·yin` is the same signed zero as the `a1·0.5` of [`Grid::x_taps`]; the
/// same for `a3`), `t = xs - 0.5`, `floor(t)` (`_mm256_floor_pd` is the exact floor, as
/// the scalar `floor` is for the coordinates of an inside pixel), `d = t - floor(t)`. A
/// lane is interior when `1 <= floor(t) <= size - 3` on both axes, which is the scalar
/// `i >= 0 && i + 3 < size` with `i = floor(t) - 1`; it implies the scalar bounds test
/// `0 <= v < size` (NaN fails every comparison and goes to the scalar path). The taps are
/// then `(i + k)·unit` unclamped, as in [`Taps`].
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn general_row(
    g: &Grid,
    columns: &super::axis_avx2::Columns,
    y: usize,
    out_row: &mut [u8],
    fast: impl Fn(&[u8], &Taps, &Taps) -> Option<[u8; 3]> + Copy,
    pending: &mut Vec<Pending>,
    blocks_at: &mut Vec<BlockAt>,
) {
    use std::arch::x86_64::*;
    let a = g.a;
    let (a0x, a3x) = columns.products();
    let yin = y as f64 + 0.5;
    let (ry, ry2) = (_mm256_set1_pd(a[1] * yin), _mm256_set1_pd(a[4] * yin));
    let (a2, a5) = (_mm256_set1_pd(a[2]), _mm256_set1_pd(a[5]));
    let (w, h) = (_mm256_set1_pd(g.w as f64), _mm256_set1_pd(g.h as f64));
    let (one, half, zero) = (
        _mm256_set1_pd(1.0),
        _mm256_set1_pd(0.5),
        _mm256_setzero_pd(),
    );
    // Interior: floor(t) <= size - 3 (negative for sizes under 3: no lane is interior).
    let (x_last, y_last) = (
        _mm256_set1_pd(g.w as f64 - 3.0),
        _mm256_set1_pd(g.h as f64 - 3.0),
    );
    let blocks = g.w / 4;
    pending.clear();
    blocks_at.clear();
    for blk in 0..blocks {
        let x0 = 4 * blk;
        let (cx, cx2) = (&a0x[x0..x0 + 4], &a3x[x0..x0 + 4]);
        // SAFETY: `cx` and `cx2` hold 4 f64 each; the loads are unaligned.
        let (cx, cx2) = unsafe { (_mm256_loadu_pd(cx.as_ptr()), _mm256_loadu_pd(cx2.as_ptr())) };
        let xs = _mm256_add_pd(_mm256_add_pd(cx, ry), a2);
        let ys = _mm256_add_pd(_mm256_add_pd(cx2, ry2), a5);
        let inside = _mm256_and_pd(
            _mm256_and_pd(
                _mm256_cmp_pd::<_CMP_GE_OQ>(xs, zero),
                _mm256_cmp_pd::<_CMP_LT_OQ>(xs, w),
            ),
            _mm256_and_pd(
                _mm256_cmp_pd::<_CMP_GE_OQ>(ys, zero),
                _mm256_cmp_pd::<_CMP_LT_OQ>(ys, h),
            ),
        );
        if _mm256_movemask_pd(inside) == 0 {
            continue; // all 4 keep the fill
        }
        let (tx, ty) = (_mm256_sub_pd(xs, half), _mm256_sub_pd(ys, half));
        let (fx, fy) = (_mm256_floor_pd(tx), _mm256_floor_pd(ty));
        let interior = _mm256_and_pd(
            _mm256_and_pd(
                _mm256_cmp_pd::<_CMP_GE_OQ>(fx, one),
                _mm256_cmp_pd::<_CMP_LE_OQ>(fx, x_last),
            ),
            _mm256_and_pd(
                _mm256_cmp_pd::<_CMP_GE_OQ>(fy, one),
                _mm256_cmp_pd::<_CMP_LE_OQ>(fy, y_last),
            ),
        );
        if _mm256_movemask_pd(interior) == 0b1111 {
            let (dx, dy) = (_mm256_sub_pd(tx, fx), _mm256_sub_pd(ty, fy));
            // Tap indices `floor - 1`, integers in [0, size - 4]: exact conversions (a
            // size past i32::MAX converts to i32::MIN, a huge offset that the sampler's
            // bounds check turns away).
            let ix = _mm256_cvttpd_epi32(_mm256_sub_pd(fx, one));
            let iy = _mm256_cvttpd_epi32(_mm256_sub_pd(fy, one));
            let (mut ix_a, mut iy_a) = ([0u32; 4], [0u32; 4]);
            // SAFETY: each array holds 4 u32; the stores are unaligned.
            unsafe {
                _mm_storeu_si128(ix_a.as_mut_ptr().cast(), ix);
                _mm_storeu_si128(iy_a.as_mut_ptr().cast(), iy);
            }
            let at = std::array::from_fn(|k| {
                (iy_a[k] as usize)
                    .saturating_mul(g.stride)
                    .saturating_add(ix_a[k] as usize * 3)
            });
            blocks_at.push((x0, at, dx, dy));
            continue;
        }
        pixels(g, y, out_row, x0..x0 + 4, fast);
    }
    for &(x0, at, dx, dy) in blocks_at.iter() {
        // SAFETY: this function only runs on CPUs with AVX2.
        match unsafe { super::bicubic_avx2::h_passes4(g.src, g.stride, at, dx) } {
            Some(rows) => pending.push((x0, rows, dy)),
            None => pixels(g, y, out_row, x0..x0 + 4, fast),
        }
    }
    for (x0, rows, dy) in pending.iter() {
        out_row[3 * x0..3 * x0 + 12].copy_from_slice(&super::bicubic_avx2::v_passes4(rows, *dy));
    }
    pixels(g, y, out_row, 4 * blocks..g.w, fast);
}

/// A `w`x`h` image of colour `fill` (one row written, then copied: `from_pixel` writes
/// pixel by pixel).
fn filled(w: u32, h: u32, fill: [u8; 3]) -> RgbImage {
    let stride = 3 * w as usize;
    // A pooled buffer (`transforms::buffers`): every byte is written here.
    let mut buf = crate::transforms::buffers::take(stride * h as usize);
    if stride > 0 {
        let (first, rest) = buf.split_at_mut(stride.min(stride * h as usize));
        for (b, v) in first.iter_mut().zip(fill.iter().copied().cycle()) {
            *b = v;
        }
        for row in rest.chunks_exact_mut(stride) {
            row.copy_from_slice(first);
        }
    }
    RgbImage::from_raw(w, h, buf).expect("buffer of w·h pixels")
}

/// What the affine loop precomputes for an image and matrix.
struct Grid<'a> {
    src: &'a [u8],
    a: [f64; 6],
    w: usize,
    h: usize,
    stride: usize,
    /// Per-column products a0·xin and a3·xin, computed once (same values as per pixel).
    col: Vec<(f64, f64)>,
    /// With a1 == ±0, the column taps (the same for every row).
    x_taps: Option<Vec<Taps>>,
    /// a3·0.5, standing for a3·xin when a3 == ±0.
    cx2_zero: f64,
}

impl<'a> Grid<'a> {
    /// `None` for an empty image.
    fn new(img: &'a RgbImage, a: [f64; 6]) -> Option<Self> {
        let (w, h) = (img.width() as usize, img.height() as usize);
        if w == 0 || h == 0 {
            return None;
        }
        let col: Vec<(f64, f64)> = (0..w)
            .map(|x| {
                let xin = x as f64 + 0.5;
                (a[0] * xin, a[3] * xin)
            })
            .collect();
        // a1 == ±0: a1·yin is the same signed zero for every row (yin > 0), so row 0's
        // value stands for all rows; likewise a3·xin for a3 == ±0.
        let x_taps = (a[1] == 0.0).then(|| {
            let ry = a[1] * 0.5;
            col.iter()
                .map(|&(cx, _)| Taps::new(cx + ry + a[2], w, 3))
                .collect()
        });
        Some(Grid {
            src: img.as_raw(),
            a,
            w,
            h,
            stride: w * 3,
            col,
            x_taps,
            cx2_zero: a[3] * 0.5,
        })
    }
}

/// The scalar affine loop over the pixels `xs` of output row `y` (`out_row`, the whole
/// row); `fast` may sample a point (clipped bytes) in place of the scalar
/// [`bicubic_px`], and must give the same bytes when it does. Pixels outside the source
/// are left as they are (the fill).
#[inline(always)]
fn pixels(
    g: &Grid,
    y: usize,
    out_row: &mut [u8],
    xs: std::ops::Range<usize>,
    fast: impl Fn(&[u8], &Taps, &Taps) -> Option<[u8; 3]>,
) {
    let a = g.a;
    let yin = y as f64 + 0.5;
    let (ry, ry2) = (a[1] * yin, a[4] * yin);
    let y_taps = (a[3] == 0.0).then(|| Taps::new(g.cx2_zero + ry2 + a[5], g.h, g.stride));
    if y_taps.is_some_and(|t| !t.inside) {
        return;
    }
    let px_out = out_row[xs.start * 3..xs.end * 3].chunks_exact_mut(3);
    for ((x, &(cx, cx2)), px_out) in xs.clone().zip(&g.col[xs]).zip(px_out) {
        let cols = match &g.x_taps {
            Some(t) => t[x],
            None => Taps::new(cx + ry + a[2], g.w, 3),
        };
        if !cols.inside {
            continue;
        }
        let rows = match y_taps {
            Some(t) => t,
            None => Taps::new(cx2 + ry2 + a[5], g.h, g.stride),
        };
        if !rows.inside {
            continue;
        }
        if let Some(px) = fast(g.src, &rows, &cols) {
            px_out.copy_from_slice(&px);
            continue;
        }
        let px = bicubic_px(g.src, g.stride, &rows, &cols);
        for (o, v) in px_out.iter_mut().zip(px) {
            *o = v as u8;
        }
    }
}

/// The affine loop, all pixels through [`pixels`] (`|_, _, _| None`: the scalar form).
#[inline(always)]
fn affine_with(
    img: &RgbImage,
    a: [f64; 6],
    fill: [u8; 3],
    fast: impl Fn(&[u8], &Taps, &Taps) -> Option<[u8; 3]> + Copy,
) -> RgbImage {
    let mut out = filled(img.width(), img.height(), fill);
    let Some(g) = Grid::new(img, a) else {
        return out;
    };
    let dst: &mut [u8] = out.as_mut();
    for (y, out_row) in dst.chunks_exact_mut(g.stride).enumerate() {
        pixels(&g, y, out_row, 0..g.w, fast);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_mod_and_round() {
        assert_eq!(py_mod(-27.0, 360.0), 333.0);
        assert_eq!(py_mod(-0.0, 360.0).to_bits(), 0.0f64.to_bits());
        assert_eq!(py_mod(27.0, 360.0), 27.0);
        assert_eq!(round15(1.0 / 3.0), 0.333333333333333);
        assert_eq!(round15(2.0 / 3.0), 0.666666666666667);
        assert_eq!(round15(-1.0), -1.0);
    }

    /// The per-pixel form of [`affine`]: both axes' taps computed for every pixel.
    fn affine_per_pixel(img: &RgbImage, a: [f64; 6], fill: [u8; 3]) -> RgbImage {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let mut out = filled(img.width(), img.height(), fill);
        let stride = w * 3;
        for y in 0..h {
            for x in 0..w {
                let (xin, yin) = (x as f64 + 0.5, y as f64 + 0.5);
                let cols = Taps::new(a[0] * xin + a[1] * yin + a[2], w, 3);
                let rows = Taps::new(a[3] * xin + a[4] * yin + a[5], h, stride);
                if cols.inside && rows.inside {
                    let px = bicubic_px(img.as_raw(), stride, &rows, &cols);
                    out.put_pixel(x as u32, y as u32, image::Rgb(px.map(|v| v as u8)));
                }
            }
        }
        out
    }

    #[test]
    fn per_row_and_per_column_taps_equal_per_pixel_taps() {
        let img = RgbImage::from_fn(23, 17, |x, y| {
            let v = (x * 37 + y * 91) ^ (x * y * 7);
            image::Rgb([
                (v % 256) as u8,
                ((v / 3) % 256) as u8,
                ((x * 11) % 256) as u8,
            ])
        });
        // Translations, shears (with signed zeros on the other axis), a scale, rotations.
        let cases: [[f64; 6]; 9] = [
            [1.0, 0.0, 3.7, 0.0, 1.0, 0.0],
            [1.0, -0.0, -2.3, 0.0, 1.0, 1.9],
            [1.0, 0.0, 0.0, -0.0, 1.0, -4.41],
            [1.0, 0.27, -3.1, 0.0, 1.0, 0.0],
            [1.0, -0.0, 0.0, -0.19, 1.0, 2.2],
            [0.8, 0.0, 1.5, 0.0, 1.25, -0.7],
            rotate_matrix(17.0, 23, 17).unwrap(),
            rotate_matrix(-29.5, 23, 17).unwrap(),
            [0.9, 0.31, -1.0, -0.27, 1.1, 0.4],
        ];
        for (n, a) in cases.into_iter().enumerate() {
            assert_eq!(
                affine(&img, a, [9, 8, 7]),
                affine_per_pixel(&img, a, [9, 8, 7]),
                "case {n}: {a:?}"
            );
        }
    }

    /// The AVX2 sampler gives the scalar path's bytes: random images (with saturating
    /// overshoot), rotations, shears, scales and fractional translations, including
    /// exact-zero fractions on either axis.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_sampler_equals_scalar() {
        use rand::{Rng, SeedableRng};
        if !std::is_x86_feature_detected!("avx2") {
            eprintln!("no AVX2 on this CPU: nothing to compare");
            return;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for case in 0..60 {
            let (w, h) = (rng.random_range(1..40u32), rng.random_range(1..40u32));
            let img = RgbImage::from_fn(w, h, |_, _| {
                // Mostly extremes, so the cubic overshoots and clips.
                let mut v = || {
                    if rng.random_bool(0.5) {
                        rng.random_range(0..=255u8)
                    } else {
                        [0, 255][rng.random_range(0..2)]
                    }
                };
                image::Rgb([v(), v(), v()])
            });
            let t = |rng: &mut rand_chacha::ChaCha8Rng| {
                if rng.random_bool(0.2) {
                    rng.random_range(-5..5) as f64
                } else {
                    rng.random_range(-6.0..6.0)
                }
            };
            let a = match case % 5 {
                0 => rotate_matrix(rng.random_range(-30.0..30.0), w, h)
                    .unwrap_or([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]),
                1 => [1.0, rng.random_range(-0.3..0.3), t(&mut rng), 0.0, 1.0, 0.0],
                2 => [1.0, 0.0, 0.0, rng.random_range(-0.3..0.3), 1.0, t(&mut rng)],
                3 => [1.0, 0.0, t(&mut rng), 0.0, 1.0, t(&mut rng)],
                _ => [
                    rng.random_range(0.7..1.4),
                    rng.random_range(-0.2..0.2),
                    t(&mut rng),
                    rng.random_range(-0.2..0.2),
                    rng.random_range(0.7..1.4),
                    t(&mut rng),
                ],
            };
            let fill = [1, 2, 3];
            // SAFETY: AVX2 checked above.
            let fast = unsafe { affine_avx2(&img, a, fill) };
            let scalar = affine_with(&img, a, fill, |_, _, _| None);
            assert_eq!(fast, scalar, "case {case}: {w}x{h}, {a:?}");
        }
    }

    /// A `w`x`h` image whose bytes are uniform with probability `p_uniform`, else 0 or 255
    /// (hard edges, so the cubic's overshoot gets clipped).
    #[cfg(target_arch = "x86_64")]
    fn clipping_image(
        rng: &mut rand_chacha::ChaCha8Rng,
        w: u32,
        h: u32,
        p_uniform: f64,
    ) -> RgbImage {
        use rand::Rng;
        RgbImage::from_fn(w, h, |_, _| {
            let mut v = || {
                if rng.random_bool(p_uniform) {
                    rng.random_range(0..=255u8)
                } else {
                    [0, 255][rng.random_range(0..2)]
                }
            };
            image::Rgb([v(), v(), v()])
        })
    }

    /// The 4-pixel general rows ([`general_row`], Rotate's path) give the scalar path's
    /// bytes: random images biased to 0/255 (the cubic clips), odd sizes from 1x1 to
    /// 224x224 and 223x225, rotations at random, small (under 1°), near-90°, near-0 and
    /// exact-90 (non-square) angles, general matrices with exact-zero fractions on either
    /// axis, and random fill colours. `assert_eq!` on the images fails on one byte.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn general_rows_equal_scalar() {
        use rand::{Rng, SeedableRng};
        if !std::is_x86_feature_detected!("avx2") {
            eprintln!("no AVX2 on this CPU: nothing to compare");
            return;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(31);
        let sizes = [
            (1, 1),
            (2, 3),
            (3, 2),
            (4, 4),
            (5, 7),
            (8, 5),
            (37, 23),
            (224, 224),
            (223, 225),
        ];
        for case in 0..240 {
            let (w, h) = if case < 3 * sizes.len() {
                sizes[case % sizes.len()]
            } else {
                (rng.random_range(1..80u32), rng.random_range(1..80u32))
            };
            let img = clipping_image(&mut rng, w, h, 0.5);
            let sign = |rng: &mut rand_chacha::ChaCha8Rng| [1.0, -1.0][rng.random_range(0..2)];
            let deg = match case % 7 {
                0 => rng.random_range(-30.0..30.0),
                1 => sign(&mut rng) * rng.random_range(1e-6..1.0),
                2 => sign(&mut rng) * (90.0 + rng.random_range(-1.0..1.0)),
                3 => [90.0, 270.0, -90.0][rng.random_range(0..3)],
                4 => sign(&mut rng) * rng.random_range(0.0..1e-9),
                5 => rng.random_range(-360.0..360.0),
                _ => f64::NAN,
            };
            let a = if deg.is_nan() {
                let t = |rng: &mut rand_chacha::ChaCha8Rng| -> f64 {
                    if rng.random_bool(0.3) {
                        rng.random_range(-4..4) as f64
                    } else {
                        rng.random_range(-6.0..6.0)
                    }
                };
                [
                    rng.random_range(0.6..1.5),
                    rng.random_range(-0.4..0.4),
                    t(&mut rng),
                    rng.random_range(-0.4..0.4),
                    rng.random_range(0.6..1.5),
                    t(&mut rng),
                ]
            } else {
                match rotate_matrix(deg, w, h) {
                    Some(m) => m,
                    None => continue,
                }
            };
            let fill = [rng.random(), rng.random(), rng.random()];
            let scalar = affine_with(&img, a, fill, |_, _, _| None);
            // SAFETY: AVX2 checked above.
            let fast = unsafe { affine_avx2(&img, a, fill) };
            assert_eq!(
                fast, scalar,
                "case {case}: {w}x{h}, {deg}°, {a:?}, {fill:?}"
            );
            if w * h <= 1500 {
                assert_eq!(
                    scalar,
                    affine_per_pixel(&img, a, fill),
                    "case {case}: {w}x{h}, {deg}°, {a:?}"
                );
            }
        }
    }

    /// The 1-D row kernels (and the whole AVX2 path) give the scalar path's bytes for
    /// translations and shears: random images biased to 0/255 (so the cubic clips),
    /// sizes from 1x1 to 224x224, translations that are tiny, signed zero, integers,
    /// half-integers give or take an ulp, fractional, or move everything outside, and
    /// shears in [-0.3, 0.3] with signed zeros, alone and combined with a translation.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn axis_kernels_equal_scalar() {
        use rand::{Rng, SeedableRng};
        if !std::is_x86_feature_detected!("avx2") {
            eprintln!("no AVX2 on this CPU: nothing to compare");
            return;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(23);
        let sizes = [
            (1, 1),
            (2, 3),
            (3, 2),
            (3, 40),
            (40, 3),
            (2, 2),
            (4, 4),
            (5, 7),
            (224, 224),
            (224, 224),
        ];
        for case in 0..400 {
            let (w, h) = if case < 2 * sizes.len() {
                sizes[case % sizes.len()]
            } else {
                (rng.random_range(1..70u32), rng.random_range(1..70u32))
            };
            let img = clipping_image(&mut rng, w, h, 0.4);
            let size = f64::from(w.max(h));
            let t = |rng: &mut rand_chacha::ChaCha8Rng| -> f64 {
                let k = rng.random_range(-8..8) as f64;
                match rng.random_range(0..12) {
                    0 => 0.0,
                    1 => -0.0,
                    2 => k,
                    3 => [1e-9, -1e-9, 1e-300, -5e-324][rng.random_range(0..4)],
                    4 => k + 0.5,
                    5 => f64::from_bits((k + 0.5).to_bits() + rng.random_range(0..3)),
                    6 => f64::from_bits((k + 0.5).to_bits().wrapping_sub(1)),
                    7 => [size, -size, 1e6, -1e6, size + 2.5][rng.random_range(0..5)],
                    // What TranslateXRel/YRel pass: ±0.45f·size.
                    8 => rng.random_range(-0.45..0.45) * size,
                    _ => rng.random_range(-6.0..6.0),
                }
            };
            let s = |rng: &mut rand_chacha::ChaCha8Rng| -> f64 {
                match rng.random_range(0..8) {
                    0 => 0.0,
                    1 => -0.0,
                    2 => [0.3, -0.3, 0.27, -0.27][rng.random_range(0..4)],
                    _ => rng.random_range(-0.3..0.3),
                }
            };
            let z = |rng: &mut rand_chacha::ChaCha8Rng| [0.0, -0.0][rng.random_range(0..2)];
            let a = match case % 6 {
                0 => [1.0, z(&mut rng), t(&mut rng), z(&mut rng), 1.0, z(&mut rng)],
                1 => [1.0, z(&mut rng), z(&mut rng), z(&mut rng), 1.0, t(&mut rng)],
                2 => [1.0, s(&mut rng), z(&mut rng), z(&mut rng), 1.0, z(&mut rng)],
                3 => [1.0, z(&mut rng), z(&mut rng), s(&mut rng), 1.0, z(&mut rng)],
                4 => [1.0, z(&mut rng), t(&mut rng), z(&mut rng), 1.0, t(&mut rng)],
                _ => {
                    if rng.random_bool(0.5) {
                        [1.0, s(&mut rng), t(&mut rng), 0.0, 1.0, t(&mut rng)]
                    } else {
                        [1.0, 0.0, t(&mut rng), s(&mut rng), 1.0, t(&mut rng)]
                    }
                }
            };
            let fill = [1, 2, 3];
            let scalar = affine_with(&img, a, fill, |_, _, _| None);
            // SAFETY: AVX2 checked above.
            let fast = unsafe { affine_avx2(&img, a, fill) };
            assert_eq!(fast, scalar, "case {case}: {w}x{h}, {a:?}");
            if case % 6 < 4 && w * h <= 400 {
                assert_eq!(
                    scalar,
                    affine_per_pixel(&img, a, fill),
                    "case {case}: {w}x{h}, {a:?}"
                );
            }
        }
    }

    #[test]
    fn identity_affine_is_exact() {
        let img = RgbImage::from_fn(9, 7, |x, y| {
            image::Rgb([(x * 25) as u8, (y * 31) as u8, (x * y) as u8])
        });
        let out = affine(&img, [1.0, 0.0, 0.0, 0.0, 1.0, 0.0], [1, 2, 3]);
        assert_eq!(out, img);
    }

    #[test]
    fn integer_translate_shifts_and_fills() {
        let img = RgbImage::from_fn(6, 4, |x, y| {
            image::Rgb([(x * 40) as u8, (y * 60) as u8, 200])
        });
        // Pillow's matrix maps output -> input: +2 px in x reads from x + 2 (moves content left).
        let out = affine(&img, [1.0, 0.0, 2.0, 0.0, 1.0, 0.0], [1, 2, 3]);
        for y in 0..4 {
            for x in 0..4 {
                assert_eq!(out.get_pixel(x, y), img.get_pixel(x + 2, y));
            }
            for x in 4..6 {
                assert_eq!(out.get_pixel(x, y).0, [1, 2, 3]);
            }
        }
    }

    #[test]
    fn rotate_fast_paths() {
        let img = RgbImage::from_fn(5, 5, |x, y| image::Rgb([(x * 40) as u8, (y * 40) as u8, 0]));
        assert_eq!(rotate(img.clone(), 0.0, [0; 3]), img);
        assert_eq!(rotate(img.clone(), 360.0, [0; 3]), img);
        let r90 = rotate(img.clone(), 90.0, [0; 3]);
        // counter-clockwise: the top-right pixel moves to the top-left
        assert_eq!(r90.get_pixel(0, 0), img.get_pixel(4, 0));
        let r180 = rotate(img.clone(), -180.0, [0; 3]);
        assert_eq!(r180.get_pixel(0, 0), img.get_pixel(4, 4));
        assert!(rotate_matrix(90.0, 6, 5).is_some());
    }
}
