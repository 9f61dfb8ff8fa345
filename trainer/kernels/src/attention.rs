//! Fused multi-head self-attention on the CPU (f32) with a hand-written backward:
//! `softmax(scale · q·kᵀ) · v` for every image and head, read straight out of the qkv
//! projection's output `(B, N, 3D)` (columns `[0, D)` = q, `[D, 2D)` = k, `[2D, 3D)` = v,
//! heads contiguous within each) and written straight into the `(B, N, D)` layout the
//! output projection reads.
//!
//! Why by hand: candle runs attention as copies of q, k and v into per-head blocks, a
//! scale pass, two batched matmuls and a transposing copy of the output, and its backward
//! as the same again plus its gradient bookkeeping. Its batched matmul hands each small
//! per-head product (198x64x198 for DeiT-Ti at 224) to gemm's own threading, where it ran
//! at 61-67 GFLOP/s against torch's 125-141 (`cargo bench -p kernels --bench gemm_shapes`,
//! BENCHMARKS.md). Here the (image, head) pairs run in parallel on rayon's threads, each
//! product single-threaded on strided views of the operands (no copies). In training
//! (`train`, and `qkv` tracks a gradient) the forward keeps the attention matrices (B·H·N·N
//! floats, as PyTorch keeps them) for the backward; an evaluation forward keeps nothing,
//! and a backward that finds nothing kept (a second backward through the same graph)
//! recomputes them.
//!
//! bf16 ([`ProductPrecision::Bf16`]): the four products of the backward and the two of the
//! forward take bf16-rounded operands (qkv, the attention matrix, the output gradient
//! and the scores' gradient), summed in f32; the softmax and its backward stay f32 on
//! the unrounded matrix.
//!
//! Determinism: each output element is computed by one task, in an order that does not
//! depend on scheduling, so results are the same for any thread count.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::conv_gemm::gemm_raw;
use super::fused::{slice_f32, softmax_bwd_row, softmax_row, Stash};
use super::precision::ProductPrecision;

/// Attention over `qkv` `(B, N, 3D)` with `heads` heads (`D` divisible by it) and scale
/// `scale` (timm: `head_dim^-0.5`); returns `(B, N, D)`, heads concatenated. Differentiable
/// in `qkv`. CPU, f32 only (the caller checks, see [`super::fused::enabled`]). `train`:
/// a backward will follow, so keep the attention matrices for it.
pub fn attention(qkv: &Tensor, heads: usize, scale: f64, train: bool) -> Result<Tensor> {
    attention_in(qkv, heads, scale, train, ProductPrecision::F32)
}

/// [`attention`] with its products (forward and backward) in `precision`.
pub fn attention_in(
    qkv: &Tensor,
    heads: usize,
    scale: f64,
    train: bool,
    precision: ProductPrecision,
) -> Result<Tensor> {
    let (_, _, c3) = qkv.dims3()?;
    if heads == 0 || c3 % (3 * heads) != 0 {
        candle_core::bail!("attention: qkv width {c3} is not 3 x heads ({heads}) x head dim");
    }
    qkv.contiguous()?.apply_op1(AttentionOp {
        heads,
        scale: scale as f32,
        keep: train && qkv.track_op(),
        kept: Stash::default(),
        precision,
    })
}

struct AttentionOp {
    heads: usize,
    scale: f32,
    /// Keep the attention matrices for the backward.
    keep: bool,
    /// The forward's attention matrices, pair after pair, taken by the backward.
    kept: Stash,
    /// The products' precision.
    precision: ProductPrecision,
}

/// The sizes of one call and where each (image, head) pair's operands start.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    b: usize,
    n: usize,
    d: usize,
    heads: usize,
    hd: usize,
}

impl Geometry {
    fn new(l: &Layout, heads: usize) -> Result<Self> {
        let (b, n, c3) = l.shape().dims3()?;
        let d = c3 / 3;
        Ok(Geometry {
            b,
            n,
            d,
            heads,
            hd: d / heads.max(1),
        })
    }

    /// Offset of pair `t`'s q block in qkv (k is `d` further, v `2d`); row stride `3d`.
    fn q_at(&self, t: usize) -> usize {
        let (bi, h) = (t / self.heads, t % self.heads);
        bi * self.n * 3 * self.d + h * self.hd
    }

    /// Offset of pair `t`'s block in a `(B, N, D)` tensor; row stride `d`.
    fn o_at(&self, t: usize) -> usize {
        let (bi, h) = (t / self.heads, t % self.heads);
        bi * self.n * self.d + h * self.hd
    }

    fn pairs(&self) -> usize {
        self.b * self.heads
    }
}

/// A raw output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);

// SAFETY: the tasks holding a `SharedOut` write disjoint sets of elements (each (image,
// head) pair its own rows x columns block) and nothing reads the buffer until all are done.
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: the callers pass offsets inside the buffer (block starts of a pair).
        unsafe { self.0.add(offset) }
    }
}

/// `p = softmax(scale · q·kᵀ)` of pair `t` into `p` (`n x n`, row-major), the product in
/// `precision`.
fn probabilities(
    qkv: &[f32],
    g: &Geometry,
    t: usize,
    (scale, precision): (f32, ProductPrecision),
    p: &mut [f32],
) {
    let (n, hd, ld) = (g.n, g.hd, 3 * g.d);
    let q = g.q_at(t);
    // SAFETY: `p` holds the n x n elements written (row stride n), and is borrowed
    // mutably here, so nothing else accesses it.
    unsafe {
        gemm_raw(
            (p.as_mut_ptr(), n),
            (n, n, hd),
            (&qkv[q..], ld, false),
            (&qkv[q + g.d..], ld, true),
            scale,
            false,
            precision,
        )
    };
    for row in p.chunks_exact_mut(n) {
        softmax_row(row);
    }
}

impl CustomOp1 for AttentionOp {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = slice_f32(s, l, "attention qkv")?;
        let g = Geometry::new(l, self.heads)?;
        let len = g.b * g.n * g.d;
        let mut out: Vec<f32> = Vec::with_capacity(len);
        let dst = SharedOut(out.spare_capacity_mut().as_mut_ptr().cast());
        let nn = g.n * g.n;
        // Pair t: its attention matrix into `p`, then `p · v` into its block of `out`.
        let pair = |t: usize, p: &mut [f32]| {
            probabilities(qkv, &g, t, (self.scale, self.precision), p);
            // SAFETY: pair t writes rows [b·n, (b+1)·n) x columns [h·hd, (h+1)·hd) of the
            // (B·N, D) output, which no other pair writes; `out` has capacity for all of
            // them.
            unsafe {
                gemm_raw(
                    (dst.at(g.o_at(t)), g.d),
                    (g.n, g.hd, g.n),
                    (p, g.n, false),
                    (&qkv[g.q_at(t) + 2 * g.d..], 3 * g.d, false),
                    1.0,
                    false,
                    self.precision,
                )
            };
        };
        if self.keep {
            let mut kept = vec![0f32; g.pairs() * nn];
            kept.par_chunks_mut(nn.max(1))
                .enumerate()
                .for_each(|(t, p)| pair(t, p));
            self.kept.put(kept);
        } else {
            (0..g.pairs())
                .into_par_iter()
                .for_each_init(|| vec![0f32; nn], |p, t| pair(t, p));
        }
        // SAFETY: the pairs' blocks tile the (B·N, D) output, so all `len` elements were
        // written above.
        unsafe { out.set_len(len) };
        Ok((CpuStorage::F32(out), Shape::from((g.b, g.n, g.d))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.contiguous()?;
        let kept = self.kept.take();
        Ok(Some(arg.apply_op2_no_bwd(
            &g,
            &AttentionBwd {
                heads: self.heads,
                scale: self.scale,
                kept,
                precision: self.precision,
            },
        )?))
    }
}

/// The gradient in qkv `(B, N, 3D)` from the output gradient `(B, N, D)`.
struct AttentionBwd {
    heads: usize,
    scale: f32,
    /// The forward's attention matrices, if it kept them (else recomputed per pair).
    kept: Option<Vec<f32>>,
    /// The products' precision.
    precision: ProductPrecision,
}

impl CustomOp2 for AttentionBwd {
    fn name(&self) -> &'static str {
        "fused-attention-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let qkv = slice_f32(s1, l1, "attention_bwd qkv")?;
        let dout = slice_f32(s2, l2, "attention_bwd grad")?;
        let g = Geometry::new(l1, self.heads)?;
        if l2.shape().dims() != [g.b, g.n, g.d] {
            candle_core::bail!(
                "attention_bwd: grad {:?} does not match qkv {:?}",
                l2.shape(),
                l1.shape()
            );
        }
        let (n, hd, d) = (g.n, g.hd, g.d);
        let len = qkv.len();
        let mut out: Vec<f32> = Vec::with_capacity(len);
        let dst = SharedOut(out.spare_capacity_mut().as_mut_ptr().cast());
        let kept = self
            .kept
            .as_deref()
            .filter(|k| k.len() == g.pairs() * n * n);
        (0..g.pairs()).into_par_iter().for_each_init(
            || {
                let p = if kept.is_some() { 0 } else { n * n };
                (vec![0f32; p], vec![0f32; n * n])
            },
            |(scratch, ds), t| {
                let (q, o) = (g.q_at(t), g.o_at(t));
                let p: &[f32] = match kept {
                    Some(k) => &k[t * n * n..][..n * n],
                    None => {
                        probabilities(qkv, &g, t, (self.scale, self.precision), scratch);
                        scratch
                    }
                };
                // SAFETY (the four products): pair t writes rows [b·n, (b+1)·n) x columns
                // [h·hd, (h+1)·hd) of each of the three D-wide blocks of the (B·N, 3D)
                // gradient (dq, dk, dv), which no other pair writes; `out` has capacity for
                // all of them. `ds` is this task's own scratch.
                unsafe {
                    // dv = pᵀ · dout
                    gemm_raw(
                        (dst.at(q + 2 * d), 3 * d),
                        (n, hd, n),
                        (p, n, true),
                        (&dout[o..], d, false),
                        1.0,
                        false,
                        self.precision,
                    );
                    // dp = dout · vᵀ
                    gemm_raw(
                        (ds.as_mut_ptr(), n),
                        (n, n, hd),
                        (&dout[o..], d, false),
                        (&qkv[q + 2 * d..], 3 * d, true),
                        1.0,
                        false,
                        self.precision,
                    );
                }
                // ds = softmax backward of dp (the scores' gradient, before the scale).
                for (drow, prow) in ds.chunks_exact_mut(n).zip(p.chunks_exact(n)) {
                    softmax_bwd_row(prow, drow);
                }
                // SAFETY: as above.
                unsafe {
                    // dq = scale · ds · k
                    gemm_raw(
                        (dst.at(q), 3 * d),
                        (n, hd, n),
                        (ds, n, false),
                        (&qkv[q + d..], 3 * d, false),
                        self.scale,
                        false,
                        self.precision,
                    );
                    // dk = scale · dsᵀ · q
                    gemm_raw(
                        (dst.at(q + d), 3 * d),
                        (n, hd, n),
                        (ds, n, true),
                        (&qkv[q..], 3 * d, false),
                        self.scale,
                        false,
                        self.precision,
                    );
                }
            },
        );
        // SAFETY: the pairs' blocks tile all three D-wide column blocks of every row, so
        // all `len` elements were written above.
        unsafe { out.set_len(len) };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::max_abs_diff;
    use candle_core::{DType, Device, Var, D};

    /// candle's composite attention (the path other devices take), for comparison.
    fn composite(qkv: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
        let (b, n, c3) = qkv.dims3()?;
        let (d, hd) = (c3 / 3, c3 / 3 / heads);
        let qkv = qkv
            .reshape((b, n, 3, heads, hd))?
            .permute((2, 0, 3, 1, 4))?;
        let q = (qkv.get(0)?.contiguous()? * scale)?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let a = candle_nn::ops::softmax(&q.matmul(&k.t()?)?, D::Minus1)?;
        a.matmul(&v)?.transpose(1, 2)?.reshape((b, n, d))
    }

    #[test]
    fn bf16_products_round_their_operands_and_stay_near_f32() -> Result<()> {
        use crate::precision::rounded_tensor;
        let (b, n, heads, hd) = (2, 9, 3, 8);
        let dev = Device::Cpu;
        let qkv = Var::from_tensor(&Tensor::randn(0f32, 1.5, (b, n, 3 * heads * hd), &dev)?)?;
        let w = Tensor::randn(0f32, 1.0, (b, n, heads * hd), &dev)?;
        let scale = (hd as f64).powf(-0.5);
        let bf16 = attention_in(qkv.as_tensor(), heads, scale, true, ProductPrecision::Bf16)?;
        // Forward: scale · q·kᵀ on rounded q, k; softmax in f32; the matrix rounded, times
        // the rounded v.
        let r = rounded_tensor(qkv.as_tensor())?.reshape((b, n, 3, heads, hd))?;
        let r = r.permute((2, 0, 3, 1, 4))?;
        let (q, k, v) = (
            r.get(0)?.contiguous()?,
            r.get(1)?.contiguous()?,
            r.get(2)?.contiguous()?,
        );
        let a = candle_nn::ops::softmax(&(q.matmul(&k.t()?)? * scale)?, D::Minus1)?;
        let want = rounded_tensor(&a)?
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, n, heads * hd))?;
        let fwd = max_abs_diff(&bf16, &want);
        assert!(fwd < 1e-5, "forward differs by {fwd}");
        // Backward: within bf16's rounding of the f32 gradient, and not equal to it.
        let f32_out = attention(qkv.as_tensor(), heads, scale, true)?;
        let g32 = (f32_out * &w)?.sum_all()?.backward()?;
        let g16 = (bf16 * &w)?.sum_all()?.backward()?;
        let (a, e) = (g16.get(&qkv).expect("bf16"), g32.get(&qkv).expect("f32"));
        let peak = e.abs()?.max_all()?.to_scalar::<f32>()?;
        let diff = max_abs_diff(a, e);
        assert!(
            diff < 0.02 * peak,
            "bf16 gradient off by {diff} (peak {peak})"
        );
        assert!(
            diff > 0.0,
            "bf16 gradient equals f32's: nothing was rounded"
        );
        Ok(())
    }

    #[test]
    fn equals_composite_attention_forward_and_backward() -> Result<()> {
        // (B, N, heads, head dim): odd sizes, one head, more pairs than threads.
        for (b, n, heads, hd) in [(2, 5, 3, 4), (1, 7, 1, 6), (3, 17, 2, 8), (4, 1, 2, 3)] {
            let dev = Device::Cpu;
            let qkv = Var::from_tensor(&Tensor::randn(0f32, 1.5, (b, n, 3 * heads * hd), &dev)?)?;
            let w = Tensor::randn(0f32, 1.0, (b, n, heads * hd), &dev)?;
            let scale = (hd as f64).powf(-0.5);
            let fused = attention(qkv.as_tensor(), heads, scale, true)?;
            let reference = composite(qkv.as_tensor(), heads, scale)?;
            assert_eq!(fused.dims(), reference.dims());
            let fwd = max_abs_diff(&fused, &reference);
            assert!(
                fwd < 1e-5,
                "forward differs by {fwd} for {:?}",
                (b, n, heads, hd)
            );
            let loss = (fused * &w)?.sum_all()?;
            let g_fused = loss.backward()?;
            // A second backward through the same graph finds the kept matrices taken and
            // recomputes them: the same gradient.
            let again = loss.backward()?;
            let twice = max_abs_diff(
                g_fused.get(&qkv).expect("fused grad"),
                again.get(&qkv).expect("second grad"),
            );
            assert_eq!(twice, 0.0, "recomputed attention gives another gradient");
            let g_ref = (reference * &w)?.sum_all()?.backward()?;
            let (gf, gr) = (
                g_fused.get(&qkv).expect("fused grad"),
                g_ref.get(&qkv).expect("reference grad"),
            );
            let bwd = max_abs_diff(gf, gr);
            assert!(
                bwd < 1e-5,
                "gradient differs by {bwd} for {:?}",
                (b, n, heads, hd)
            );
            assert_eq!(gf.dtype(), DType::F32);
        }
        Ok(())
    }

    #[test]
    fn rejects_a_width_that_heads_do_not_divide() {
        let qkv = Tensor::zeros((1, 2, 9), DType::F32, &Device::Cpu).expect("zeros");
        assert!(attention(&qkv, 2, 1.0, false).is_err());
        assert!(attention(&qkv, 0, 1.0, false).is_err());
    }
}
