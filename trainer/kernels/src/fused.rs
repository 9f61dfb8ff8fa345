//! Fused CPU kernels (f32, contiguous) with hand-written backward passes:
//! LayerNorm, softmax over the last dimension, and exact GELU.
//!
//! candle's generic graph runs these as 5-10 separate ops each (every one a full
//! pass over memory, several of them single-threaded reductions over broadcast
//! dimensions in backward); here each is one pass forward and one pass backward,
//! parallel over rows with rayon. Other devices or dtypes use the composite
//! tensor-op versions in trainer's `models::layers`. [`set_enabled`] switches them off
//! (tests compare both paths; benchmarks measure both).

// Index loops over several equally long rows read clearer than zipped iterators here.
#![allow(clippy::needless_range_loop)]

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;
use std::cell::Cell;
use std::mem::MaybeUninit;

thread_local! {
    static ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Turns the fused kernels on or off for forward passes run by the calling thread
/// (default: on). Thread-local, so concurrent tests do not affect each other.
pub fn set_enabled(on: bool) {
    ENABLED.with(|e| e.set(on));
}

/// True when `x` can take the fused kernels (CPU, f32, fused kernels enabled).
pub fn enabled(x: &Tensor) -> bool {
    ENABLED.with(|e| e.get()) && x.device().is_cpu() && x.dtype() == DType::F32
}

/// Rows per rayon task: enough work per task to amortize scheduling.
fn rows_per_task(dim: usize) -> usize {
    (16384 / dim.max(1)).max(1)
}

/// The f32 elements of a contiguous CPU tensor (an error naming `what` otherwise).
pub(crate) fn slice_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{what}: input must be contiguous"),
    }
}

/// Largest absolute elementwise difference of two tensors (for the kernels' tests).
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
        .unwrap_or(f32::INFINITY)
}

/// What a fused op's forward keeps for its backward (attention's matrices, the MLP's
/// pre-activation): put by the forward, taken by the backward, so a second backward
/// through the same graph finds nothing and recomputes.
#[derive(Default)]
pub(super) struct Stash(std::sync::Mutex<Option<Vec<f32>>>);

impl Stash {
    /// Keeps `v` (replacing what was kept).
    pub(super) fn put(&self, v: Vec<f32>) {
        // A poisoned lock only means a panic elsewhere; the slot itself is always valid.
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
    }

    /// Takes what was kept, if anything.
    pub(super) fn take(&self) -> Option<Vec<f32>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

// ---------------------------------------------------------------- LayerNorm

struct LayerNormOp {
    eps: f32,
}

/// LayerNorm over the last dimension: `(x - mean) / sqrt(var + eps) * w + b`.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.contiguous()?;
    x.apply_op3(
        &w.contiguous()?,
        &b.contiguous()?,
        LayerNormOp { eps: eps as f32 },
    )
}

crate::simd_variant!(
    /// One row of LayerNorm: `out = (x - mean) * rstd * w + b`, every element of `out`
    /// written (it may start uninitialized).
    fn layer_norm_row(
        x: &[f32],
        w: &[f32],
        b: &[f32],
        out: &mut [MaybeUninit<f32>],
        eps: f32
    ) => layer_norm_row_body
);

/// [`layer_norm_row`]'s work. The mean and variance are 8-lane sums (see [`lanes8`]):
/// summed element by element, each was one serial chain of 192 dependent additions per
/// row, and LayerNorm forward and backward took about 8% of a DeiT-Ti forward (`perf`,
/// 2026-12-05). The output is written once, not zeroed first (zeroing it was most of the
/// 2% `memset` of a DeiT-Ti forward).
#[inline(always)]
fn layer_norm_row_body(x: &[f32], w: &[f32], b: &[f32], out: &mut [MaybeUninit<f32>], eps: f32) {
    let (mean, rstd) = row_mean_rstd(x, eps);
    for (((o, &v), &wj), &bj) in out.iter_mut().zip(x).zip(w).zip(b) {
        o.write((v - mean) * rstd * wj + bj);
    }
}

/// A row's mean and `1 / sqrt(variance + eps)` (both passes of LayerNorm).
#[inline(always)]
fn row_mean_rstd(x: &[f32], eps: f32) -> (f32, f32) {
    let d = x.len() as f32;
    let mean = lanes8(x, 0.0, |a, v| a + v) / d;
    (mean, 1.0 / (lanes8_sq_dev(x, mean) / d + eps).sqrt())
}

/// `sum((v - mean)^2)` over 8 interleaved partial sums, like [`lanes8_dot`] of the
/// centered row with itself.
#[inline(always)]
fn lanes8_sq_dev(v: &[f32], mean: f32) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            let t = c[k] - mean;
            acc[k] += t * t;
        }
    }
    for (k, &x) in rest.iter().enumerate() {
        let t = x - mean;
        acc[k] += t * t;
    }
    acc.into_iter().fold(0.0, |s, v| s + v)
}

crate::simd_variant!(
    /// One row of LayerNorm's backward: `dx` for the row, and the row's terms added into
    /// `dw` and `db`; `xhat` is scratch of the row's length.
    fn layer_norm_bwd_row(
        x: &[f32],
        g: &[f32],
        w: &[f32],
        dx: &mut [f32],
        acc: (&mut [f32], &mut [f32]),
        xhat: &mut [f32],
        eps: f32
    ) => layer_norm_bwd_row_body
);

/// [`layer_norm_bwd_row`]'s work (8-lane sums, as in [`layer_norm_row_body`]).
#[inline(always)]
fn layer_norm_bwd_row_body(
    x: &[f32],
    g: &[f32],
    w: &[f32],
    dx: &mut [f32],
    (dw, db): (&mut [f32], &mut [f32]),
    xhat: &mut [f32],
    eps: f32,
) {
    let d = x.len() as f32;
    let (mean, rstd) = row_mean_rstd(x, eps);
    for (h, &v) in xhat.iter_mut().zip(x) {
        *h = (v - mean) * rstd;
    }
    // dx holds g * w until the last loop.
    for ((o, &gj), &wj) in dx.iter_mut().zip(g).zip(w) {
        *o = gj * wj;
    }
    for (((dwj, dbj), &gj), &h) in dw.iter_mut().zip(db.iter_mut()).zip(g).zip(xhat.iter()) {
        *dwj += gj * h;
        *dbj += gj;
    }
    let mg = lanes8(dx, 0.0, |a, v| a + v) / d;
    let mgx = lanes8_dot(dx, xhat) / d;
    for (o, &h) in dx.iter_mut().zip(xhat.iter()) {
        *o = rstd * (*o - mg - h * mgx);
    }
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice_f32(s1, l1, "layer_norm x")?;
        let w = slice_f32(s2, l2, "layer_norm weight")?;
        let b = slice_f32(s3, l3, "layer_norm bias")?;
        let d = w.len();
        if d == 0 || x.len() % d != 0 {
            candle_core::bail!("layer_norm: {} values do not fill rows of {d}", x.len());
        }
        let mut out: Vec<f32> = Vec::with_capacity(x.len());
        let chunk = rows_per_task(d) * d;
        out.spare_capacity_mut()[..x.len()]
            .par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .for_each(|(o, xi)| {
                for (orow, xrow) in o.chunks_mut(d).zip(xi.chunks(d)) {
                    layer_norm_row(xrow, w, b, orow, self.eps);
                }
            });
        // SAFETY: the rows above cover all `x.len()` elements (whole rows, checked), and
        // `layer_norm_row` writes every element of its row.
        unsafe { out.set_len(x.len()) };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = w.dim(0)?;
        let rows = x.elem_count() / d;
        let g = grad.contiguous()?;
        let all = x.apply_op3_no_bwd(w, &g, &LayerNormBwd { eps: self.eps })?;
        let dx = all.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = all.narrow(0, rows, 1)?.reshape(d)?;
        let db = all.narrow(0, rows + 1, 1)?.reshape(d)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// Backward of LayerNorm: returns `(rows + 2, D)`: dx rows, then dw, then db.
struct LayerNormBwd {
    eps: f32,
}

impl CustomOp3 for LayerNormBwd {
    fn name(&self) -> &'static str {
        "fused-layer-norm-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice_f32(s1, l1, "layer_norm_bwd x")?;
        let w = slice_f32(s2, l2, "layer_norm_bwd weight")?;
        let g = slice_f32(s3, l3, "layer_norm_bwd grad")?;
        let d = w.len();
        let rows = x.len() / d;
        let mut out = vec![0f32; (rows + 2) * d];
        let (dx_all, dwb) = out.split_at_mut(rows * d);
        let chunk = rows_per_task(d) * d;
        let partials: Vec<(Vec<f32>, Vec<f32>)> = dx_all
            .par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk).zip(g.par_chunks(chunk)))
            .map(|(dx, (xi, gi))| {
                let mut dw = vec![0f32; d];
                let mut db = vec![0f32; d];
                let mut xhat = vec![0f32; d];
                for ((dxr, xr), gr) in dx.chunks_mut(d).zip(xi.chunks(d)).zip(gi.chunks(d)) {
                    let acc = (dw.as_mut_slice(), db.as_mut_slice());
                    layer_norm_bwd_row(xr, gr, w, dxr, acc, &mut xhat, self.eps);
                }
                (dw, db)
            })
            .collect();
        let (dw_out, db_out) = dwb.split_at_mut(d);
        for (dw, db) in partials {
            for j in 0..d {
                dw_out[j] += dw[j];
                db_out[j] += db[j];
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, d))))
    }
}

// ---------------------------------------------------------------- softmax

struct SoftmaxOp;

/// Softmax over the last dimension.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(SoftmaxOp)
}

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice_f32(s, l, "softmax x")?;
        let d = l.dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; x.len()];
        let chunk = rows_per_task(d) * d;
        out.par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .for_each(|(o, xi)| {
                for (orow, xrow) in o.chunks_mut(d).zip(xi.chunks(d)) {
                    orow.copy_from_slice(xrow);
                    softmax_row(orow);
                }
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.contiguous()?;
        Ok(Some(res.apply_op2_no_bwd(&g, &SoftmaxBwd)?))
    }
}

crate::simd_variant!(
    /// Softmax of one row, in place: `exp(x - max) / sum`.
    pub(super) fn softmax_row(row: &mut [f32]) => softmax_row_body
);

/// [`softmax_row`]'s work (inlined into each instruction-set variant).
#[inline(always)]
fn softmax_row_body(row: &mut [f32]) {
    let max = lanes8(row, f32::NEG_INFINITY, f32::max);
    // Exponentials first, then their sum: a loop that also summed would stay scalar (the
    // compiler keeps float additions in order).
    for v in row.iter_mut() {
        *v = exp(*v - max);
    }
    let inv = 1.0 / lanes8(row, 0.0, |a, b| a + b);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// Softmax backward of one row, in place: `grad` (dy on entry) becomes
/// `dx = y * (dy - sum(dy * y))`.
pub(super) fn softmax_bwd_row(y: &[f32], grad: &mut [f32]) {
    let dot: f32 = y.iter().zip(grad.iter()).map(|(a, b)| a * b).sum();
    for (g, &yv) in grad.iter_mut().zip(y) {
        *g = yv * (*g - dot);
    }
}

/// dx = y * (dy - sum(dy * y)) per row.
struct SoftmaxBwd;

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "fused-softmax-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = slice_f32(s1, l1, "softmax_bwd y")?;
        let g = slice_f32(s2, l2, "softmax_bwd grad")?;
        let d = l1.dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; y.len()];
        let chunk = rows_per_task(d) * d;
        out.par_chunks_mut(chunk)
            .zip(y.par_chunks(chunk).zip(g.par_chunks(chunk)))
            .for_each(|(o, (yi, gi))| {
                for ((orow, yrow), grow) in o.chunks_mut(d).zip(yi.chunks(d)).zip(gi.chunks(d)) {
                    orow.copy_from_slice(grow);
                    softmax_bwd_row(yrow, orow);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------- exp

/// Reduces `v` with `f` over 8 interleaved partial results (element `i` into lane
/// `i % 8`), then the 8 lanes in order: a fixed order, so the result is deterministic, and
/// 8 independent chains, which the compiler turns into vector operations.
#[inline(always)]
fn lanes8(v: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; 8];
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            acc[k] = f(acc[k], c[k]);
        }
    }
    for (k, &x) in rest.iter().enumerate() {
        acc[k] = f(acc[k], x);
    }
    acc.into_iter().fold(init, f)
}

/// `sum(a[i] * b[i])` over 8 interleaved partial sums, like [`lanes8`].
#[inline(always)]
fn lanes8_dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    for (k, (x, y)) in ra.iter().zip(rb).enumerate() {
        acc[k] += x * y;
    }
    acc.into_iter().fold(0.0, |s, v| s + v)
}

/// `exp` for `f32`, branch-free so the softmax and GELU-backward loops vectorize (glibc's
/// `expf`, one call per element, was 5.2% of a DeiT-Ti forward pass in `perf`,
/// 2026-11-30). Cody-Waite reduction `x = n·ln2 + r` (`n` rounded to nearest through the
/// 1.5·2^23 trick, `ln2` in two parts), Cephes' degree-7 polynomial for `exp(r)` on
/// |r| <= ln2/2, and `2^n` added to the exponent bits. `x` is clamped to
/// [-87, 88.5]: results stay normal floats, so below -87 (true value < 1.7e-38) this returns
/// about 1.6e-38, not a denormal or 0; above 88.5 it returns exp(88.5) ≈ 2.7e38, not
/// infinity; NaN stays NaN. Relative error below 2e-7 over the range (test
/// `fast_exp_is_within_2e7_of_exp`).
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer.
    let x = x.clamp(-87.0, 88.5);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    // The integer n sits in the low mantissa bits of t.
    let ni = t.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    let e = f32::from_bits((y.to_bits() as i32).wrapping_add(ni << 23) as u32);
    // NaN in, NaN out (a select, so the loops still vectorize).
    if x.is_nan() {
        x
    } else {
        e
    }
}

// ---------------------------------------------------------------- GELU

struct GeluOp;

/// Exact GELU `0.5 x (1 + erf(x / sqrt 2))`.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(GeluOp)
}

/// `erf` for `f32` as a rational function: an odd polynomial of degree 13 over an even one
/// of degree 8 in `x` clamped to [-4, 4] (the coefficients of XLA's and Eigen's float
/// `erf`). Branch-free, so the GELU loops vectorize; libm's `erff` (candle's) took 9% of a
/// small DeiT's train step in `perf`. Its error against the exact `erf` is below 5e-7
/// (4.4e-7 near the clamp; test `fast_erf_is_within_5e7_of_erf`), well under the 1e-4 the
/// models are held to.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 - 2.101_024e-6;
    p = p * x2 - 5.692_506_4e-5;
    p = p * x2 - 7.349_906_3e-4;
    p = p * x2 - 2.954_600_2e-3;
    p = p * x2 - 1.609_603_3e-2;
    let mut q = -1.456_607_2e-5_f32;
    q = q * x2 - 2.133_740_6e-4;
    q = q * x2 - 1.682_827e-3;
    q = q * x2 - 7.373_329e-3;
    q = q * x2 - 1.426_474e-2;
    x * p / q
}

crate::simd_variant!(
    /// GELU of a block of `x` into `o`.
    fn gelu_block(o: &mut [f32], x: &[f32]) => gelu_block_body
);
crate::simd_variant!(
    /// GELU of a block in place (the same values as [`gelu_block`]).
    fn gelu_in_place(v: &mut [f32]) => gelu_in_place_body
);
crate::simd_variant!(
    /// GELU's backward of a block: `o = g * (Phi(x) + x * phi(x))`.
    fn gelu_bwd_block(o: &mut [f32], x: &[f32], g: &[f32]) => gelu_bwd_block_body
);

/// Exact GELU of one value (through [`erf`]).
#[inline(always)]
fn gelu_value(v: f32) -> f32 {
    0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2))
}

#[inline(always)]
fn gelu_block_body(o: &mut [f32], x: &[f32]) {
    for (ov, &v) in o.iter_mut().zip(x) {
        *ov = gelu_value(v);
    }
}

#[inline(always)]
fn gelu_in_place_body(v: &mut [f32]) {
    for x in v.iter_mut() {
        *x = gelu_value(*x);
    }
}

/// Values per rayon task in the GELU passes.
const GELU_BLOCK: usize = 16384;

/// GELU of every value of `x`, blocks in parallel.
pub(super) fn gelu_values(x: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(GELU_BLOCK)
        .zip(x.par_chunks(GELU_BLOCK))
        .for_each(|(o, xi)| gelu_block(o, xi));
    out
}

/// GELU of every value of `v` in place, blocks in parallel (the same values as
/// [`gelu_values`]).
pub(super) fn gelu_values_in_place(v: &mut [f32]) {
    v.par_chunks_mut(GELU_BLOCK).for_each(gelu_in_place);
}

#[inline(always)]
fn gelu_bwd_block_body(o: &mut [f32], x: &[f32], g: &[f32]) {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    for ((ov, &v), &gv) in o.iter_mut().zip(x).zip(g) {
        let cdf = 0.5 * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2));
        let pdf = INV_SQRT_2PI * exp(-0.5 * v * v);
        *ov = gv * (cdf + v * pdf);
    }
}

impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "fused-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice_f32(s, l, "gelu x")?;
        Ok((CpuStorage::F32(gelu_values(x)), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.contiguous()?;
        Ok(Some(arg.apply_op2_no_bwd(&g, &GeluBwd)?))
    }
}

/// dx = dy * (Phi(x) + x * phi(x)): `x.apply_op2_no_bwd(&dy, &GeluBwd)`.
pub(super) struct GeluBwd;

impl CustomOp2 for GeluBwd {
    fn name(&self) -> &'static str {
        "fused-gelu-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice_f32(s1, l1, "gelu_bwd x")?;
        let g = slice_f32(s2, l2, "gelu_bwd grad")?;
        if g.len() != x.len() {
            candle_core::bail!("gelu_bwd: gradient of {} values for {}", g.len(), x.len());
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(GELU_BLOCK)
            .zip(x.par_chunks(GELU_BLOCK).zip(g.par_chunks(GELU_BLOCK)))
            .for_each(|(o, (xi, gi))| gelu_bwd_block(o, xi, gi));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------- residual add

/// `x + a * scale[i]` for `x`, `a` `(B, ...)` of one shape, sample `i`'s block scaled by
/// `scale[i]` (stochastic depth's per-sample keep mask, `0` or `1 / keep`).
///
/// Why: as `x + drop_path(a)` this is two graph nodes (a broadcast multiply, then an
/// add), each an activation-sized pass forward, and backward a multiply plus candle's
/// zeroed gradient buffer and add for the product's input: three passes over a `(B, N,
/// D)` tensor per residual branch saved, two branches per block.
pub fn residual_add(x: &Tensor, a: &Tensor, scale: Vec<f32>) -> Result<Tensor> {
    if x.dims() != a.dims() || x.dims().first() != Some(&scale.len()) {
        candle_core::bail!(
            "residual_add: x {:?}, branch {:?}, {} sample scales",
            x.dims(),
            a.dims(),
            scale.len()
        );
    }
    x.contiguous()?
        .apply_op2(&a.contiguous()?, ResidualOp { scale })
}

struct ResidualOp {
    scale: Vec<f32>,
}

/// `out = x + a * scale[sample]` (`x` absent: `out = a * scale[sample]`), samples of
/// `a.len() / scale.len()` values, in parallel.
fn scaled_samples(x: Option<&[f32]>, a: &[f32], scale: &[f32]) -> Vec<f32> {
    let per = (a.len() / scale.len().max(1)).max(1);
    let mut out = x.unwrap_or(a).to_vec();
    out.par_chunks_mut(per)
        .zip(a.par_chunks(per))
        .zip(scale.par_iter())
        .for_each(|((o, ai), &s)| {
            if x.is_some() {
                for (ov, &av) in o.iter_mut().zip(ai) {
                    *ov += av * s;
                }
            } else {
                for ov in o.iter_mut() {
                    *ov *= s;
                }
            }
        });
    out
}

impl CustomOp2 for ResidualOp {
    fn name(&self) -> &'static str {
        "fused-residual-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice_f32(s1, l1, "residual x")?;
        let a = slice_f32(s2, l2, "residual branch")?;
        let out = scaled_samples(Some(x), a, &self.scale);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _a: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?;
        let da = g.apply_op1_no_bwd(&ScaleSamples {
            scale: self.scale.clone(),
        })?;
        Ok((Some(g), Some(da)))
    }
}

/// `g * scale[sample]` (the branch's gradient).
struct ScaleSamples {
    scale: Vec<f32>,
}

impl CustomOp1 for ScaleSamples {
    fn name(&self) -> &'static str {
        "fused-scale-samples"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = slice_f32(s, l, "residual grad")?;
        Ok((
            CpuStorage::F32(scaled_samples(None, g, &self.scale)),
            l.shape().clone(),
        ))
    }
}

// ---------------------------------------------------------------- bias add

struct AddBiasOp;

/// `y + b` with `b` broadcast over the rows of the 2-D `y` (rows, D); the backward
/// sums the gradient over rows in parallel (candle's broadcast backward reduces on
/// one thread).
pub fn add_bias(y: &Tensor, b: &Tensor) -> Result<Tensor> {
    y.contiguous()?.apply_op2(&b.contiguous()?, AddBiasOp)
}

impl CustomOp2 for AddBiasOp {
    fn name(&self) -> &'static str {
        "fused-add-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = slice_f32(s1, l1, "add_bias y")?;
        let b = slice_f32(s2, l2, "add_bias bias")?;
        let d = b.len();
        if d == 0 || y.len() % d != 0 {
            candle_core::bail!("add_bias: {} values do not fill rows of {d}", y.len());
        }
        let mut out = y.to_vec();
        add_to_rows(&mut out, b);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _y: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?;
        let db = g.apply_op1_no_bwd(&ColumnSum { d: b.elem_count() })?;
        Ok((Some(g), Some(db)))
    }
}

/// Adds `b` to every row (of `b.len()` values) of `y` in place, rows in parallel.
pub(super) fn add_to_rows(y: &mut [f32], b: &[f32]) {
    let d = b.len();
    if d == 0 {
        return;
    }
    y.par_chunks_mut(rows_per_task(d) * d).for_each(|o| {
        for row in o.chunks_mut(d) {
            for (v, bv) in row.iter_mut().zip(b) {
                *v += bv;
            }
        }
    });
}

/// Sum of the rows of a contiguous (rows, d) tensor, in parallel (partial sums over
/// fixed row blocks, added in block order: the same result for any thread count).
pub(super) struct ColumnSum {
    /// Row length.
    pub(super) d: usize,
}

impl CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "fused-column-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = slice_f32(s, l, "column_sum")?;
        let d = self.d;
        let chunk = rows_per_task(d) * d * 4;
        let partials: Vec<Vec<f32>> = g
            .par_chunks(chunk)
            .map(|gi| {
                let mut acc = vec![0f32; d];
                for row in gi.chunks(d) {
                    for (a, v) in acc.iter_mut().zip(row) {
                        *a += v;
                    }
                }
                acc
            })
            .collect();
        let mut out = vec![0f32; d];
        for p in partials {
            for (o, v) in out.iter_mut().zip(p) {
                *o += v;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from(d)))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fast_exp_is_within_2e7_of_exp() {
        let mut worst = (0.0f64, 0.0f32);
        for i in -870_000..=885_000 {
            let x = i as f32 * 1e-4;
            let want = (x as f64).exp();
            let rel = ((super::exp(x) as f64 - want) / want).abs();
            if rel > worst.0 {
                worst = (rel, x);
            }
        }
        assert!(
            worst.0 < 2e-7,
            "relative error {} at x = {}",
            worst.0,
            worst.1
        );
        // Below the clamp: a tiny normal float, never NaN, inf or negative.
        for x in [-87.5f32, -100.0, -1e30, f32::NEG_INFINITY] {
            let y = super::exp(x);
            assert!(y > 0.0 && y < 2e-38 && y.is_normal(), "exp({x}) = {y}");
        }
        assert_eq!(super::exp(0.0), 1.0);
        assert!(super::exp(f32::NAN).is_nan());
    }

    #[test]
    fn simd_variants_give_the_same_bits_as_the_baseline_build() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for len in [1usize, 7, 8, 9, 198, 1000] {
            let x: Vec<f32> = (0..len).map(|_| rng.random_range(-30.0..30.0)).collect();
            let g: Vec<f32> = (0..len).map(|_| rng.random_range(-2.0..2.0)).collect();
            let (mut a, mut b) = (x.clone(), x.clone());
            super::softmax_row(&mut a);
            super::softmax_row_body(&mut b);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b), "softmax, {len} values");
            let (mut a, mut b) = (vec![0f32; len], vec![0f32; len]);
            super::gelu_block(&mut a, &x);
            super::gelu_block_body(&mut b, &x);
            assert_eq!(bits(&a), bits(&b), "gelu, {len} values");
            let mut c = x.clone();
            super::gelu_in_place(&mut c);
            assert_eq!(bits(&a), bits(&c), "gelu in place, {len} values");
            super::gelu_bwd_block(&mut a, &x, &g);
            super::gelu_bwd_block_body(&mut b, &x, &g);
            assert_eq!(bits(&a), bits(&b), "gelu backward, {len} values");
            let w: Vec<f32> = (0..len).map(|_| rng.random_range(-2.0..2.0)).collect();
            let mut a = vec![std::mem::MaybeUninit::new(f32::NAN); len];
            let mut b = a.clone();
            super::layer_norm_row(&x, &w, &g, &mut a, 1e-6);
            super::layer_norm_row_body(&x, &w, &g, &mut b, 1e-6);
            // SAFETY: initialized with NaN, then overwritten.
            let (a, b): (Vec<f32>, Vec<f32>) = unsafe {
                (
                    a.iter().map(|v| v.assume_init()).collect(),
                    b.iter().map(|v| v.assume_init()).collect(),
                )
            };
            assert_eq!(bits(&a), bits(&b), "layer norm, {len} values");
            assert!(
                a.iter().all(|v| v.is_finite()),
                "layer norm left an element unwritten"
            );
            let (mut a, mut b) = (a, b);
            let mut acc = [
                vec![0f32; len],
                vec![0f32; len],
                vec![0f32; len],
                vec![0f32; len],
            ];
            let (mut h1, mut h2) = (vec![0f32; len], vec![0f32; len]);
            let [dw1, db1, dw2, db2] = &mut acc;
            super::layer_norm_bwd_row(&x, &g, &w, &mut a, (dw1, db1), &mut h1, 1e-6);
            super::layer_norm_bwd_row_body(&x, &g, &w, &mut b, (dw2, db2), &mut h2, 1e-6);
            assert_eq!(bits(&a), bits(&b), "layer norm backward dx, {len} values");
            assert_eq!(bits(dw1), bits(dw2), "layer norm backward dw, {len} values");
            assert_eq!(bits(db1), bits(db2), "layer norm backward db, {len} values");
        }
    }

    #[test]
    fn fast_erf_is_within_5e7_of_erf() {
        let mut worst = (0.0f64, 0.0f32);
        for i in -80_000..=80_000 {
            let x = i as f32 * 1e-4;
            let err = (f64::from(super::erf(x)) - libm::erf(f64::from(x))).abs();
            if err > worst.0 {
                worst = (err, x);
            }
        }
        assert!(worst.0 < 5e-7, "max |error| {} at x = {}", worst.0, worst.1);
        assert_eq!(super::erf(0.0), 0.0);
        assert_eq!(super::erf(9.0), super::erf(4.0));
        assert!(super::erf(f32::NAN).is_nan());
    }
}
