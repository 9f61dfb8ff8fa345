//! 2-D convolution as im2col + GEMM on the CPU, differentiable.
//!
//! Why by hand: candle 0.11's CPU `conv2d` backward runs `conv_transpose2d` and a `conv2d`
//! whose kernel is the whole output map, both as direct loops. `perf` on a `resnet_tiny`
//! train step (32 px, batch 32) put about 75% of the cycles in those loops and 5% in GEMM;
//! the step ran at 29 img/s against PyTorch's ~285 img/s on the same machine. Here the
//! only hand-written parts are the im2col gather and its adjoint (col2im, a scatter-add);
//! the products are candle matmuls, so their gradients are candle's own.
//!
//! Layout: `x [B, C, H, W]` becomes `cols [C*k*k, B*Ho*Wo]`: row `c*k*k + i*k + j` holds,
//! for every output pixel of the batch, the input pixel under kernel tap `(i, j)` of
//! channel `c` (zero over the padding). One GEMM `weight [O, C*k*k] x cols` gives
//! `[O, B*Ho*Wo]`, copied into NCHW. One large GEMM (forward and both backward products)
//! keeps the GEMM busy on both cores; a batched product per image measured 30.9 against
//! 49.1 img/s forward on `resnet_small`. Rows of this layout are runs of input rows, so
//! the gather is a row copy (stride 1) and its adjoint a row add; the earlier layout (one
//! row per output pixel) gathered element by element and took 48% of a `resnet_tiny`
//! forward, twice the GEMM (`perf`, batch 128).
//!
//! The whole convolution is one candle op with a hand-written backward
//! (`dW = G cols^T`, `dcols = W^T G`, col2im), so its output is a contiguous NCHW tensor
//! and the graph holds one node per convolution. Built from candle ops (im2col, matmul,
//! reshape, permute), the backward summed gradients through permuted views, which candle
//! adds element by element (`perf`: 26% of a `resnet_tiny` train step in such adds).
//! Grouped convolutions (RegNet) run one such product per group, the groups in parallel.
//! Other devices and dtypes use candle's `conv2d`.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::fused::slice_f32;
use super::precision::ProductPrecision;

/// Geometry of one convolution (square kernel, equal stride and padding on both axes).
#[derive(Clone, Copy, Debug)]
struct Geometry {
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
    ho: usize,
    wo: usize,
}

impl Geometry {
    fn new(
        (b, c, h, w): (usize, usize, usize, usize),
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Result<Self> {
        if h + 2 * pad < k || w + 2 * pad < k || stride == 0 {
            candle_core::bail!(
                "conv2d: kernel {k} does not fit a {h}x{w} input with padding {pad}"
            );
        }
        Ok(Self {
            b,
            c,
            h,
            w,
            k,
            stride,
            pad,
            ho: (h + 2 * pad - k) / stride + 1,
            wo: (w + 2 * pad - k) / stride + 1,
        })
    }

    /// Output pixels of the batch: the length of one row of the columns.
    fn pixels(&self) -> usize {
        self.b * self.ho * self.wo
    }

    /// For kernel offset `i` (rows) and output row `oh`: the input row, if inside.
    fn in_row(&self, oh: usize, i: usize) -> Option<usize> {
        (oh * self.stride + i)
            .checked_sub(self.pad)
            .filter(|&r| r < self.h)
    }

    /// For kernel offset `j` (columns): the output columns `ow0..ow1` whose input column
    /// `ow*stride + j - pad` is inside the image (the rest read the zero padding).
    fn valid_cols(&self, j: usize) -> (usize, usize) {
        let s = self.stride;
        // ow*s + j >= pad  <=>  ow >= ceil((pad - j) / s)
        let ow0 = self.pad.saturating_sub(j).div_ceil(s).min(self.wo);
        // ow*s + j - pad <= w - 1  <=>  ow <= (w - 1 + pad - j) / s
        let ow1 = match (self.w - 1 + self.pad).checked_sub(j) {
            Some(v) => (v / s + 1).min(self.wo),
            None => 0,
        };
        (ow0, ow1.max(ow0))
    }

    /// Fills row `r = c*k*k + i*k + j` of the columns from `x [B, C, H, W]`. `row` must be
    /// zeroed: padding entries are left as they are.
    fn gather_row(&self, r: usize, x: &[f32], row: &mut [f32]) {
        let (k, s, (hw, howo)) = (self.k, self.stride, (self.h * self.w, self.ho * self.wo));
        let (c, i, j) = (r / (k * k), (r / k) % k, r % k);
        let (ow0, ow1) = self.valid_cols(j);
        if ow0 == ow1 {
            return;
        }
        // Input column of output column ow0 (>= 0 by construction of ow0).
        let iw0 = ow0 * s + j - self.pad;
        for b in 0..self.b {
            let plane = &x[(b * self.c + c) * hw..(b * self.c + c + 1) * hw];
            let out = &mut row[b * howo..(b + 1) * howo];
            for oh in 0..self.ho {
                let Some(ih) = self.in_row(oh, i) else {
                    continue;
                };
                let src = &plane[ih * self.w..(ih + 1) * self.w];
                let dst = &mut out[oh * self.wo + ow0..oh * self.wo + ow1];
                if s == 1 {
                    dst.copy_from_slice(&src[iw0..iw0 + dst.len()]);
                } else {
                    for (d, v) in dst.iter_mut().zip(src[iw0..].iter().step_by(s)) {
                        *d = *v;
                    }
                }
            }
        }
    }

    /// The adjoint of [`Self::gather_row`] summed over the kernel taps of channel `c` for
    /// image `b`: adds every column entry of that plane back onto its input pixel.
    fn scatter_plane(&self, b: usize, c: usize, cols: &[f32], plane: &mut [f32]) {
        let (k, s, n, howo) = (self.k, self.stride, self.pixels(), self.ho * self.wo);
        for i in 0..k {
            for j in 0..k {
                let (ow0, ow1) = self.valid_cols(j);
                if ow0 == ow1 {
                    continue;
                }
                let iw0 = ow0 * s + j - self.pad;
                let r = (c * k + i) * k + j;
                let row = &cols[r * n + b * howo..r * n + (b + 1) * howo];
                for oh in 0..self.ho {
                    let Some(ih) = self.in_row(oh, i) else {
                        continue;
                    };
                    let dst = &mut plane[ih * self.w..(ih + 1) * self.w];
                    let src = &row[oh * self.wo + ow0..oh * self.wo + ow1];
                    if s == 1 {
                        for (d, v) in dst[iw0..iw0 + src.len()].iter_mut().zip(src) {
                            *d += v;
                        }
                    } else {
                        for (d, v) in dst[iw0..].iter_mut().step_by(s).zip(src) {
                            *d += v;
                        }
                    }
                }
            }
        }
    }
}

/// `[C*k*k, B*Ho*Wo]` columns back to `[B, C, H, W]`, summing overlaps (the adjoint of
/// [`im2col`]).
fn col2im(g: &Geometry, cols: &[f32]) -> Vec<f32> {
    let hw = g.h * g.w;
    let mut x = vec![0f32; g.b * g.c * hw];
    x.par_chunks_mut(hw.max(1))
        .enumerate()
        .for_each(|(p, plane)| g.scatter_plane(p / g.c, p % g.c, cols, plane));
    x
}

/// True when [`conv2d`] takes the im2col path for `x` (CPU, f32).
pub fn supported(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// `conv2d(x [B, C, H, W], weight [O, C/groups, k, k])` with equal stride and padding on
/// both axes, no dilation: im2col + one batched GEMM, differentiable in `x` and `weight`.
/// Falls back to candle's `conv2d` off the CPU or for non-f32 tensors.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: usize,
    groups: usize,
) -> Result<Tensor> {
    if !supported(x) {
        return x.conv2d(weight, padding, stride, 1, groups);
    }
    let (b, c, h, w) = x.dims4()?;
    let (o, cg, kh, kw) = weight.dims4()?;
    if kh != kw || groups == 0 || c != cg * groups || o % groups != 0 {
        candle_core::bail!(
            "conv2d: weight {:?} does not fit input {:?} with {groups} groups",
            weight.dims(),
            x.dims()
        );
    }
    let g = Geometry::new((b, c, h, w), kh, stride, padding)?;
    x.contiguous()?.apply_op2(
        &weight.contiguous()?,
        ConvOp(ConvSpec { g, out: o, groups }),
    )
}

/// `scale * (lhs x rhs)` written row-major as `[m, n]` at `dst` (row `i` starts at
/// `dst + i * dst_ld`), for row-major `f32` operands with the given leading dimensions:
/// every one of the `m * n` elements is written, none is read. `lhs_t` / `rhs_t` read that
/// operand transposed: element `(i, j)` at `j * ld + i` instead of `i * ld + j`.
/// `parallel`: split the product over rayon's threads (`gemm` splits the output, so the
/// result does not depend on scheduling), else compute it on the calling thread.
/// `precision`: bf16 reads both operands rounded to bf16 (our GEMM rounds as it packs; the
/// `gemm` crate gets rounded copies of the elements it reads).
///
/// # Safety
/// `dst` must be valid for writes of the `m` rows of `n` `f32`s at stride `dst_ld >= n`,
/// and nothing else may access those elements during the call.
pub(super) unsafe fn gemm_raw(
    (dst, dst_ld): (*mut f32, usize),
    (m, n, k): (usize, usize, usize),
    (lhs, lhs_ld, lhs_t): (&[f32], usize, bool),
    (rhs, rhs_ld, rhs_t): (&[f32], usize, bool),
    scale: f32,
    parallel: bool,
    precision: ProductPrecision,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst_ld >= n, "gemm: destination rows overlap");
    if k == 0 {
        for i in 0..m {
            // SAFETY: row `i` of the destination is valid for `n` f32 writes (the caller's
            // guarantee); all-zero bytes are 0.0.
            unsafe { std::ptr::write_bytes(dst.add(i * dst_ld), 0, n) };
        }
        return;
    }
    let last = |rows: usize, cols: usize, ld: usize, t: bool| {
        if t {
            (cols - 1) * ld + rows - 1
        } else {
            (rows - 1) * ld + cols - 1
        }
    };
    // The bounds gemm will read, checked once (it does no checks of its own).
    assert!(lhs.len() > last(m, k, lhs_ld, lhs_t), "gemm: lhs too small");
    assert!(rhs.len() > last(k, n, rhs_ld, rhs_t), "gemm: rhs too small");
    let bf16 = precision == ProductPrecision::Bf16;
    if super::sgemm::available() {
        let operand = |data, ld, trans| super::sgemm::Operand {
            data,
            ld,
            trans,
            bf16,
        };
        // SAFETY: the operands hold every element read (asserted above), the destination
        // is the caller's guarantee, and the CPU has AVX2 and FMA (checked).
        unsafe {
            super::sgemm::sgemm(
                (dst, dst_ld),
                (m, n, k),
                operand(lhs, lhs_ld, lhs_t),
                operand(rhs, rhs_ld, rhs_t),
                scale,
                parallel,
            )
        };
        return;
    }
    let strides = |ld: usize, t: bool| -> (isize, isize) {
        // (column stride, row stride)
        if t {
            (ld as isize, 1)
        } else {
            (1, ld as isize)
        }
    };
    // bf16 on the `gemm` crate: rounded copies of exactly the elements it reads.
    let lhs = super::precision::operand(&lhs[..=last(m, k, lhs_ld, lhs_t)], precision);
    let rhs = super::precision::operand(&rhs[..=last(k, n, rhs_ld, rhs_t)], precision);
    let (lhs_cs, lhs_rs) = strides(lhs_ld, lhs_t);
    let (rhs_cs, rhs_rs) = strides(rhs_ld, rhs_t);
    let threads = rayon::current_num_threads();
    let parallelism = if parallel && threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the reads stay inside `lhs` and `rhs` (their largest offsets with these
    // strides are asserted above); the writes cover exactly the `m` rows of `n` elements
    // at stride `dst_ld` from `dst` (the caller's guarantee). With `read_dst = false`
    // gemm stores `scale * (lhs x rhs)` into every element without reading it.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_ld as isize,
            false,
            lhs.as_ptr(),
            lhs_cs,
            lhs_rs,
            rhs.as_ptr(),
            rhs_cs,
            rhs_rs,
            0.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// One operand of [`gemm_groups`]: the whole buffer, its leading dimension, whether it is
/// read transposed, and the distance between consecutive groups' blocks.
type GroupOperand<'a> = (&'a [f32], usize, bool, usize);

/// `groups` independent products `lhs_g x rhs_g`, each `[m, n]`, stacked in group order
/// into one `[groups * m, n]` buffer; block `g` of an operand starts at `g * block`. One
/// group: a single product split over rayon's threads. Several: the groups run in
/// parallel, each product on one thread (the same values: each output element is one
/// product's, summed in the same order either way). The buffer is not zeroed first (that
/// cost up to a tenth of a convolution): every element is written by one product.
fn gemm_groups(
    groups: usize,
    dims: (usize, usize, usize),
    (lhs, lhs_ld, lhs_t, lhs_block): GroupOperand<'_>,
    (rhs, rhs_ld, rhs_t, rhs_block): GroupOperand<'_>,
) -> Vec<f32> {
    let (m, n, _) = dims;
    let len = groups * m * n;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let spare = &mut out.spare_capacity_mut()[..len];
    if groups == 1 {
        // SAFETY: `spare` holds the `m * n` elements the product writes.
        unsafe {
            gemm_raw(
                (spare.as_mut_ptr().cast(), n),
                dims,
                (lhs, lhs_ld, lhs_t),
                (rhs, rhs_ld, rhs_t),
                1.0,
                true,
                ProductPrecision::F32,
            )
        };
    } else {
        spare
            .par_chunks_mut((m * n).max(1))
            .enumerate()
            .for_each(|(g, dst)| {
                // SAFETY: `dst` is group g's `m * n` elements of the buffer.
                unsafe {
                    gemm_raw(
                        (dst.as_mut_ptr().cast(), n),
                        dims,
                        (&lhs[g * lhs_block..], lhs_ld, lhs_t),
                        (&rhs[g * rhs_block..], rhs_ld, rhs_t),
                        1.0,
                        false,
                        ProductPrecision::F32,
                    )
                }
            });
    }
    // SAFETY: every one of the `len` elements was written above (`gemm_raw` writes all of
    // its `m * n`, and the groups' blocks tile the buffer).
    unsafe { out.set_len(len) };
    out
}

/// `[O, B*P]` (one row per channel) to `[B, O, P]` (NCHW), `P = Ho*Wo`.
fn rows_to_nchw(rows: &[f32], b: usize, o: usize, p: usize) -> Vec<f32> {
    let mut out = vec![0f32; b * o * p];
    out.par_chunks_mut(p.max(1))
        .enumerate()
        .for_each(|(q, dst)| {
            let (bi, oi) = (q / o, q % o);
            dst.copy_from_slice(&rows[oi * b * p + bi * p..oi * b * p + (bi + 1) * p]);
        });
    out
}

/// `[B, O, P]` (NCHW) to `[O, B*P]`, the inverse of [`rows_to_nchw`].
fn nchw_to_rows(x: &[f32], b: usize, o: usize, p: usize) -> Vec<f32> {
    let mut out = vec![0f32; b * o * p];
    out.par_chunks_mut((b * p).max(1))
        .enumerate()
        .for_each(|(oi, dst)| {
            for bi in 0..b {
                dst[bi * p..(bi + 1) * p]
                    .copy_from_slice(&x[(bi * o + oi) * p..(bi * o + oi + 1) * p]);
            }
        });
    out
}

/// The gathered columns `[C*k*k, B*Ho*Wo]` of `x`.
fn im2col(g: &Geometry, x: &[f32]) -> Vec<f32> {
    let n = g.pixels();
    let mut cols = vec![0f32; g.c * g.k * g.k * n];
    cols.par_chunks_mut(n.max(1))
        .enumerate()
        .for_each(|(r, row)| g.gather_row(r, x, row));
    cols
}

/// `conv2d(x [B, C, H, W], weight [O, C/groups, k, k]) -> [B, O, Ho, Wo]`, contiguous,
/// with a hand-written backward. Group `i` is the rows `i*O/groups..` of the weight and of
/// the output, and the rows of channels `i*C/groups..` of the columns: one product each.
struct ConvOp(ConvSpec);

impl CustomOp2 for ConvOp {
    fn name(&self) -> &'static str {
        "conv2d-im2col"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let ConvSpec { g, out: o, groups } = self.0;
        let x = slice_f32(xs, xl, "conv2d input")?;
        let w = slice_f32(ws, wl, "conv2d weight")?;
        let (n, p) = (g.pixels(), g.ho * g.wo);
        let (og, cgkk) = self.0.group_dims();
        let cols = im2col(&g, x);
        let rows = gemm_groups(
            groups,
            (og, n, cgkk),
            (w, cgkk, false, og * cgkk),
            (&cols, n, false, cgkk * n),
        );
        Ok((
            CpuStorage::F32(rows_to_nchw(&rows, g.b, o, p)),
            Shape::from((g.b, o, g.ho, g.wo)),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let op = self.0;
        // G as [O, B*Ho*Wo], once for both products.
        let gt = grad.contiguous()?.apply_op1_no_bwd(&GradRows(op))?;
        let dx = gt.apply_op2_no_bwd(w, &ConvGradInput(op))?;
        let dw = gt.apply_op2_no_bwd(x, &ConvGradWeight(op))?;
        Ok((Some(dx), Some(dw)))
    }
}

/// `grad [B, O, Ho, Wo]` to `G [O, B*Ho*Wo]`, the layout of both gradient products.
struct GradRows(ConvSpec);

impl CustomOp1 for GradRows {
    fn name(&self) -> &'static str {
        "conv2d-im2col-grad-rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let ConvSpec { g, out: o, .. } = self.0;
        let grad = slice_f32(s, l, "conv2d gradient")?;
        let p = g.ho * g.wo;
        Ok((
            CpuStorage::F32(nchw_to_rows(grad, g.b, o, p)),
            Shape::from((o, g.pixels())),
        ))
    }
}

/// One convolution: its geometry, output channels and groups (the forward op and the
/// three backward ops each hold one).
#[derive(Clone, Copy)]
struct ConvSpec {
    g: Geometry,
    out: usize,
    groups: usize,
}

impl ConvSpec {
    /// (output channels, columns rows `C/groups * k * k`) of one group.
    fn group_dims(&self) -> (usize, usize) {
        (
            self.out / self.groups,
            self.g.c / self.groups * self.g.k * self.g.k,
        )
    }
}

/// `(G [O, B*Ho*Wo], weight) -> dx [B, C, H, W]`: `dcols = W^T G`, then col2im.
struct ConvGradInput(ConvSpec);

impl CustomOp2 for ConvGradInput {
    fn name(&self) -> &'static str {
        "conv2d-im2col-grad-input"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.0.g;
        let gt = slice_f32(gs, gl, "conv2d gradient")?;
        let w = slice_f32(ws, wl, "conv2d weight")?;
        let n = g.pixels();
        let (og, cgkk) = self.0.group_dims();
        // Per group: W_g^T [C/groups*k*k, O/groups] x G_g [O/groups, N], stacked into the
        // columns' row order.
        let dcols = gemm_groups(
            self.0.groups,
            (cgkk, n, og),
            (w, cgkk, true, og * cgkk),
            (gt, n, false, og * n),
        );
        Ok((
            CpuStorage::F32(col2im(&g, &dcols)),
            Shape::from((g.b, g.c, g.h, g.w)),
        ))
    }
}

/// `(G [O, B*Ho*Wo], x) -> dW [O, C, k, k]`: `G cols^T`.
struct ConvGradWeight(ConvSpec);

impl CustomOp2 for ConvGradWeight {
    fn name(&self) -> &'static str {
        "conv2d-im2col-grad-weight"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        xs: &CpuStorage,
        xl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let ConvSpec { g, out: o, groups } = self.0;
        let gt = slice_f32(gs, gl, "conv2d gradient")?;
        let x = slice_f32(xs, xl, "conv2d input")?;
        let n = g.pixels();
        let (og, cgkk) = self.0.group_dims();
        // Gathered again rather than kept from the forward pass: the columns are k*k
        // times the input and would stay alive for every convolution until the backward.
        let cols = im2col(&g, x);
        // Per group: G_g [O/groups, N] x cols_g^T [N, C/groups*k*k].
        let dw = gemm_groups(
            groups,
            (og, cgkk, n),
            (gt, n, false, og * n),
            (&cols, n, true, cgkk * n),
        );
        Ok((
            CpuStorage::F32(dw),
            Shape::from((o, g.c / groups, g.k, g.k)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::max_abs_diff;
    use candle_core::{Device, Var};

    /// Forward and both gradients equal candle's direct `conv2d` (the reference) for
    /// kernels, strides, paddings, groups and odd sizes the models use.
    #[test]
    fn matches_candle_conv2d_forward_and_gradients() {
        let dev = Device::Cpu;
        // (batch, in, out, h, w, k, stride, pad, groups)
        let cases = [
            (2, 3, 8, 9, 7, 3, 1, 1, 1),
            (3, 4, 6, 8, 8, 3, 2, 1, 1),
            (2, 3, 5, 15, 11, 7, 2, 3, 1),
            (2, 6, 4, 7, 9, 1, 1, 0, 1),
            (2, 6, 4, 7, 9, 1, 2, 0, 1),
            (2, 8, 8, 6, 6, 3, 1, 1, 4),
            (1, 4, 8, 5, 5, 3, 2, 1, 2),
            // RegNet-like: several channels per group, stride 2; depthwise.
            (2, 12, 12, 9, 9, 3, 2, 1, 3),
            (2, 6, 6, 5, 7, 3, 1, 1, 6),
            // Inputs smaller than the window, padding wider than half the window, stride 3
            // (sizes where (h + 2p - k) divides by 3: candle's own conv2d backward, the
            // reference here, fails otherwise).
            (2, 3, 4, 2, 3, 3, 1, 1, 1),
            (1, 2, 3, 4, 5, 3, 1, 2, 1),
            (2, 3, 4, 7, 10, 5, 3, 2, 1),
        ];
        for (n, (b, ci, co, h, w, k, s, p, g)) in cases.into_iter().enumerate() {
            let x = Var::from_tensor(
                &Tensor::randn(0f32, 1.0, (b, ci, h, w), &dev)
                    .unwrap()
                    .affine(1.0, n as f64 * 0.01)
                    .unwrap(),
            )
            .unwrap();
            let wt = Var::from_tensor(&Tensor::randn(0f32, 1.0, (co, ci / g, k, k), &dev).unwrap())
                .unwrap();
            // A fixed random upstream gradient, so every output element matters.
            let up = Tensor::randn(
                0f32,
                1.0,
                (b, co, (h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1),
                &dev,
            )
            .unwrap();
            let ours = conv2d(x.as_tensor(), wt.as_tensor(), s, p, g).unwrap();
            let theirs = x.as_tensor().conv2d(wt.as_tensor(), p, s, 1, g).unwrap();
            assert_eq!(ours.dims(), theirs.dims(), "case {n}");
            assert!(max_abs_diff(&ours, &theirs) < 1e-4, "forward, case {n}");
            let go = (ours * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let gt = (theirs * &up)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for (var, what) in [(&x, "input"), (&wt, "weight")] {
                let a = go.get(var).unwrap();
                let r = gt.get(var).unwrap();
                assert!(max_abs_diff(a, r) < 1e-3, "{what} gradient, case {n}");
            }
        }
    }

    #[test]
    fn rejects_a_weight_that_does_not_fit() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 3, 8, 8), DType::F32, &dev).unwrap();
        let w = Tensor::zeros((4, 2, 3, 3), DType::F32, &dev).unwrap();
        let err = conv2d(&x, &w, 1, 1, 1).unwrap_err().to_string();
        assert!(err.contains("does not fit"), "{err}");
    }
}
