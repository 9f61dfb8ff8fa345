//! Fused train-mode BatchNorm2d for the CPU (f32), with a hand-written backward.
//!
//! Why by hand: composed from candle ops, train-mode BatchNorm is a mean and a variance
//! over dimensions (0, 2, 3) plus four broadcast ops, and its backward is as many
//! reductions over broadcast dimensions, which candle 0.11 runs single-threaded with
//! strided reads. `perf` on a `resnet_tiny` train step put about a quarter of all cycles
//! there once the convolutions were GEMMs. Here the forward is two passes (statistics,
//! then normalize) and the backward two (per-channel sums, then the input gradient), each
//! parallel over channels or rows with rayon. The statistics are computed once per forward
//! pass and shared by the normalization, the running averages and the backward.
//!
//! Math (N = B*H*W per channel, x^ = (x - mean) * inv, inv = 1/sqrt(var + eps), biased var):
//! y = x^ * w + b; dw = sum(dy * x^); db = sum(dy);
//! dx = w * inv / N * (N * dy - db - x^ * dw).

use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

use super::fused::slice_f32;

/// (batch, channels, pixels per channel plane) of a contiguous `[B, C, H, W]` layout.
fn bchw(l: &Layout, what: &str) -> Result<(usize, usize, usize)> {
    match l.dims() {
        [b, c, h, w] => Ok((*b, *c, h * w)),
        d => candle_core::bail!("{what}: expected [B, C, H, W], got {d:?}"),
    }
}

/// Per-channel (mean, biased variance) of `x [B, C, P]`, accumulated in f64.
fn channel_stats(x: &[f32], b: usize, c: usize, p: usize) -> Vec<(f64, f64)> {
    let n = (b * p) as f64;
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let planes = (0..b).map(|bi| &x[(bi * c + ch) * p..(bi * c + ch + 1) * p]);
            let sum: f64 = planes
                .clone()
                .map(|row| row.iter().map(|&v| f64::from(v)).sum::<f64>())
                .sum();
            let mean = sum / n;
            let sq: f64 = planes
                .map(|row| {
                    row.iter()
                        .map(|&v| (f64::from(v) - mean).powi(2))
                        .sum::<f64>()
                })
                .sum();
            (mean, sq / n)
        })
        .collect()
}

/// `[B, C, H, W]` to `[2, C]` f64: per-channel mean (row 0) and biased variance (row 1).
/// No gradient: it feeds the running statistics.
struct ChannelStats;

impl CustomOp1 for ChannelStats {
    fn name(&self) -> &'static str {
        "bn-channel-stats"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice_f32(s, l, "bn stats")?;
        let (b, c, p) = bchw(l, "bn stats")?;
        let stats = channel_stats(x, b, c, p);
        let mut out: Vec<f64> = stats.iter().map(|s| s.0).collect();
        out.extend(stats.iter().map(|s| s.1));
        Ok((CpuStorage::F64(out), Shape::from((2, c))))
    }
}

/// Per-channel (mean, biased variance) of one batch, computed once per forward pass and
/// shared by the normalization and its backward.
type BatchStats = Arc<[(f64, f64)]>;

/// Train-mode normalization `(x, weight, bias) -> y` with the batch's statistics.
struct BatchNormTrain {
    eps: f64,
    stats: BatchStats,
}

impl CustomOp3 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "fused-batch-norm"
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
        let x = slice_f32(s1, l1, "batch norm x")?;
        let w = slice_f32(s2, l2, "batch norm weight")?;
        let bias = slice_f32(s3, l3, "batch norm bias")?;
        let (_, c, p) = bchw(l1, "batch norm")?;
        if self.stats.len() != c {
            candle_core::bail!(
                "batch norm: {} channel statistics for {c} channels",
                self.stats.len()
            );
        }
        let stats = &self.stats;
        // Per channel: y = x * scale + shift.
        let affine: Vec<(f32, f32)> = stats
            .iter()
            .enumerate()
            .map(|(ch, &(mean, var))| {
                let scale = f64::from(w[ch]) / (var + self.eps).sqrt();
                (scale as f32, (f64::from(bias[ch]) - mean * scale) as f32)
            })
            .collect();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(p.max(1))
            .zip(x.par_chunks(p.max(1)))
            .enumerate()
            .for_each(|(row, (yr, xr))| {
                let (scale, shift) = affine[row % c];
                for (yv, xv) in yr.iter_mut().zip(xr) {
                    *yv = xv * scale + shift;
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (_, c, _, _) = x.dims4()?;
        let n = x.elem_count();
        let g = grad.contiguous()?;
        // One flat result: dx (n values), then dw (c), then db (c).
        let bwd = BatchNormBwd {
            eps: self.eps,
            stats: self.stats.clone(),
        };
        let all = x.apply_op3_no_bwd(&g, &w.contiguous()?, &bwd)?;
        let dx = all.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = all.narrow(0, n, c)?;
        let db = all.narrow(0, n + c, c)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// `(x, dy, weight) -> [dx (flattened), dw, db]`, with the forward pass's statistics.
struct BatchNormBwd {
    eps: f64,
    stats: BatchStats,
}

impl CustomOp3 for BatchNormBwd {
    fn name(&self) -> &'static str {
        "fused-batch-norm-bwd"
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
        let x = slice_f32(s1, l1, "batch norm bwd x")?;
        let dy = slice_f32(s2, l2, "batch norm bwd grad")?;
        let w = slice_f32(s3, l3, "batch norm bwd weight")?;
        let (b, c, p) = bchw(l1, "batch norm bwd")?;
        let n = (b * p) as f64;
        let stats = &self.stats;
        // Per channel: (inv, sum dy, sum dy * x^).
        let sums: Vec<(f64, f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (mean, var) = stats[ch];
                let inv = 1.0 / (var + self.eps).sqrt();
                let (mut sdy, mut sdyx) = (0f64, 0f64);
                for bi in 0..b {
                    let off = (bi * c + ch) * p;
                    for (&xv, &g) in x[off..off + p].iter().zip(&dy[off..off + p]) {
                        sdy += f64::from(g);
                        sdyx += f64::from(g) * (f64::from(xv) - mean) * inv;
                    }
                }
                (inv, sdy, sdyx)
            })
            .collect();
        let mut out = vec![0f32; x.len() + 2 * c];
        let (dx, tail) = out.split_at_mut(x.len());
        dx.par_chunks_mut(p.max(1))
            .zip(x.par_chunks(p.max(1)).zip(dy.par_chunks(p.max(1))))
            .enumerate()
            .for_each(|(row, (dxr, (xr, gr)))| {
                let ch = row % c;
                let (mean, _) = stats[ch];
                let (inv, sdy, sdyx) = sums[ch];
                let k = f64::from(w[ch]) * inv / n;
                for ((d, &xv), &g) in dxr.iter_mut().zip(xr).zip(gr) {
                    let xhat = (f64::from(xv) - mean) * inv;
                    *d = (k * (n * f64::from(g) - sdy - xhat * sdyx)) as f32;
                }
            });
        for ch in 0..c {
            tail[ch] = sums[ch].2 as f32;
            tail[c + ch] = sums[ch].1 as f32;
        }
        Ok((CpuStorage::F32(out), Shape::from(x.len() + 2 * c)))
    }
}

/// Train-mode BatchNorm2d of `x [B, C, H, W]` (CPU, f32): returns the normalized output
/// (differentiable in `x`, `weight` and `bias`) and the batch's `[2, C]` statistics (mean,
/// biased variance; no gradient) for the running averages.
pub fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor)> {
    let x = x.contiguous()?;
    let stats = x.apply_op1_no_bwd(&ChannelStats)?;
    let c = stats.dim(1)?;
    let v = stats.flatten_all()?.to_vec1::<f64>()?;
    let shared: BatchStats = (0..c).map(|ch| (v[ch], v[c + ch])).collect();
    let op = BatchNormTrain { eps, stats: shared };
    let y = x.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)?;
    Ok((y, stats.to_dtype(DType::F32)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::max_abs_diff;
    use candle_core::{Device, Var};

    /// The fused op equals train-mode BatchNorm written with candle ops (forward, batch
    /// statistics, and the gradients of input, weight and bias).
    #[test]
    fn matches_the_composite_batch_norm() {
        let dev = Device::Cpu;
        let eps = 1e-5;
        for (b, c, h, w) in [(4, 3, 5, 6), (2, 8, 4, 4), (1, 2, 1, 7)] {
            let x =
                Var::from_tensor(&Tensor::randn(0.5f32, 2.0, (b, c, h, w), &dev).unwrap()).unwrap();
            let wt = Var::from_tensor(&Tensor::randn(1f32, 0.3, c, &dev).unwrap()).unwrap();
            let bs = Var::from_tensor(&Tensor::randn(0f32, 0.3, c, &dev).unwrap()).unwrap();
            let up = Tensor::randn(0f32, 1.0, (b, c, h, w), &dev).unwrap();

            let (y, stats) =
                batch_norm_train(x.as_tensor(), wt.as_tensor(), bs.as_tensor(), eps).unwrap();
            let shape = (1, c, 1, 1);
            let mean = x.as_tensor().mean_keepdim((0, 2, 3)).unwrap();
            let xc = x.as_tensor().broadcast_sub(&mean).unwrap();
            let var = xc.sqr().unwrap().mean_keepdim((0, 2, 3)).unwrap();
            let inv = (var.clone() + eps)
                .unwrap()
                .sqrt()
                .unwrap()
                .recip()
                .unwrap();
            let reference = xc
                .broadcast_mul(&inv)
                .unwrap()
                .broadcast_mul(&wt.as_tensor().reshape(shape).unwrap())
                .unwrap()
                .broadcast_add(&bs.as_tensor().reshape(shape).unwrap())
                .unwrap();
            assert!(
                max_abs_diff(&y, &reference) < 1e-5,
                "forward {b}x{c}x{h}x{w}"
            );
            assert!(max_abs_diff(&stats.get(0).unwrap(), &mean.flatten_all().unwrap()) < 1e-5);
            assert!(max_abs_diff(&stats.get(1).unwrap(), &var.flatten_all().unwrap()) < 1e-4);

            let gf = (y * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let gr = (reference * &up)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for (v, what) in [(&x, "input"), (&wt, "weight"), (&bs, "bias")] {
                let d = max_abs_diff(gf.get(v).unwrap(), gr.get(v).unwrap());
                assert!(d < 1e-4, "{what} gradient {b}x{c}x{h}x{w}: {d}");
            }
        }
    }
}
