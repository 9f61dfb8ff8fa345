//! Differentiable building blocks. candle's fused `softmax_last_dim` and `LayerNorm`
//! drop gradients silently (see PLATFORM.md), so everything here either is written
//! with differentiable tensor ops, or is a fused CPU kernel with its own backward
//! ([`kernels::fused`]).

use candle_core::{DType, Module, Result, Tensor, Var, D};
use candle_nn::VarBuilder;
use kernels::precision::ProductPrecision;
use kernels::{conv_gemm, fused, fused_bn, linear_op};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Fully connected layer `y = x W^T + b`, weight `[out, in]` (timm / PyTorch layout).
/// Inputs of any rank are flattened to 2-D for one GEMM (no broadcast of the weight).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Loads `weight` `[out, in]` and `bias` `[out]` under `vb`.
    pub fn new(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }
}

impl Linear {
    /// The weight `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// `x W^T + b` with the product computed in `compute` (F32 or BF16) and the result
    /// in the parameters' dtype (f32). With `compute` = F32 and an f32 `x` this is exactly
    /// the f32 layer. With BF16, `x` and the weight are cast to bf16 (the cast is
    /// differentiable, so the weight's gradient reaches the f32 variable in f32), the
    /// product accumulates in f32 (cuBLAS `COMPUTE_32F`; candle's CPU backend widens bf16
    /// products to f32) and is rounded to bf16, then cast up and the f32 bias added: the
    /// bias gradient is summed over all rows in f32 (candle's CPU sum over rows would
    /// accumulate in bf16). On the CPU's fused kernels ([`fused_products`]) the tensors
    /// stay f32 and the kernel rounds the operands of each product (forward and backward)
    /// to bf16, summing in f32; the product's output is not rounded.
    pub fn forward_in(&self, x: &Tensor, compute: DType) -> Result<Tensor> {
        if let Some(p) = fused_products(x, &self.weight, compute) {
            // One graph node, no reshapes (CPU, f32 tensors).
            return linear_op::linear_in(x, &self.weight, self.bias.as_ref(), p);
        }
        let dims = x.dims().to_vec();
        let in_dim = *dims.last().unwrap_or(&0);
        let rows = x.elem_count() / in_dim.max(1);
        let x2 = x.reshape((rows, in_dim))?;
        let y = matmul_bias_in(&x2, &self.weight, self.bias.as_ref(), compute)?;
        let mut out_dims = dims;
        let last = out_dims.len() - 1;
        out_dims[last] = self.weight.dim(0)?;
        y.reshape(out_dims)
    }
}

impl Linear {
    /// `gelu(x W^T + b)` (exact GELU, in f32), products in `compute`: one fused op on the
    /// CPU in f32 (see [`linear_op::linear_gelu`]; `train` lets it keep the pre-activation
    /// for the backward), else the layer then [`gelu`].
    pub fn forward_gelu_in(&self, x: &Tensor, compute: DType, train: bool) -> Result<Tensor> {
        if let (Some(p), Some(b)) = (fused_products(x, &self.weight, compute), self.bias.as_ref()) {
            return linear_op::linear_gelu_in(x, &self.weight, b, train, p);
        }
        gelu(&self.forward_in(x, compute)?)
    }
}

impl Module for Linear {
    /// The product in `x`'s dtype (f32 for f32 inputs); the output has `x`'s dtype.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_in(x, x.dtype())?.to_dtype(x.dtype())
    }
}

/// `x W^T + b` for a 2-D `x` `(rows, in)` and `w` `[out, in]`, with the product in
/// `compute` and the result in `w`'s dtype (see [`Linear::forward_in`]).
pub fn matmul_bias_in(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    compute: DType,
) -> Result<Tensor> {
    if let Some(p) = fused_products(x, w, compute) {
        // One graph node on our GEMM (CPU, f32 tensors), as in `Linear::forward_in`.
        return linear_op::linear_in(x, w, b, p);
    }
    let y = x
        .to_dtype(compute)?
        .matmul(&w.to_dtype(compute)?.t()?)?
        .to_dtype(w.dtype())?;
    match b {
        Some(b) => add_bias(&y, b),
        None => Ok(y),
    }
}

/// The precision the fused CPU kernels compute a product of `x` and the f32 parameter
/// `w` in, for products in `compute` (F32 or BF16); `None` when they cannot (another
/// device or dtype, the kernels switched off, or f16).
pub fn fused_products(x: &Tensor, w: &Tensor, compute: DType) -> Option<ProductPrecision> {
    if w.dtype() != DType::F32 || !fused::enabled(x) {
        return None;
    }
    match compute {
        DType::F32 => Some(ProductPrecision::F32),
        DType::BF16 => Some(ProductPrecision::Bf16),
        _ => None,
    }
}

/// Whether `dtype` is a half-precision float (bf16 or f16) that normalizations and
/// softmax widen to f32.
fn is_half(dtype: DType) -> bool {
    matches!(dtype, DType::BF16 | DType::F16)
}

/// `y + b` for a 2-D `y` (rows, D) and `b` (D), differentiable (fused on CPU).
pub fn add_bias(y: &Tensor, b: &Tensor) -> Result<Tensor> {
    if fused::enabled(y) {
        fused::add_bias(y, b)
    } else {
        y.broadcast_add(b)
    }
}

/// LayerNorm over the last dimension with a differentiable forward (fused CPU kernel
/// with hand-written backward, or plain tensor ops on other devices).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Loads `weight` and `bias` `[dim]` under `vb`.
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            bias: vb.get(dim, "bias")?,
            eps,
        })
    }
}

impl Module for LayerNorm {
    /// Normalizes in f32: a bf16/f16 `x` is widened, normalized and narrowed back
    /// (as torch autocast does), so the statistics never round to 8 mantissa bits.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if is_half(x.dtype()) {
            return self.forward(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype());
        }
        if fused::enabled(x) {
            fused::layer_norm(x, &self.weight, &self.bias, self.eps)
        } else {
            layer_norm_composite(x, &self.weight, &self.bias, self.eps)
        }
    }
}

/// LayerNorm written with differentiable tensor ops (reference path).
pub fn layer_norm_composite(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    xn.broadcast_mul(w)?.broadcast_add(b)
}

/// Softmax over the last dimension, differentiable. A bf16/f16 `x` is computed in f32
/// and the result narrowed back to its dtype.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if is_half(x.dtype()) {
        return softmax_last_dim(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype());
    }
    if fused::enabled(x) {
        fused::softmax_last_dim(x)
    } else {
        candle_nn::ops::softmax(x, D::Minus1)
    }
}

/// Exact (erf) GELU, differentiable.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if fused::enabled(x) {
        fused::gelu(x)
    } else {
        x.gelu_erf()
    }
}

/// Which part of a global batch this process holds, for drawing stochastic-depth masks
/// that do not depend on how a batch is split across data-parallel ranks.
///
/// With `world` ranks, the loader gives rank `r` the pairs `k` with `k % world == r`
/// (`EpochPlan::rank_pairs`), so local sample `i` (pair `i / 2`, member `i % 2`) is sample
/// `2 * ((i / 2) * world + r) + i % 2` of the batch one process would have built from the
/// same pairs with `world` times the batch size. `BatchShard::WHOLE` (rank 0 of 1) is the
/// single-process case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchShard {
    /// This process's rank.
    pub rank: usize,
    /// Number of ranks sharing each global batch.
    pub world: usize,
    /// Which micro-batch of the optimizer step this pass is (`0..accum`).
    pub micro: usize,
    /// Micro-batches per optimizer step (gradient accumulation; 1 = none).
    pub accum: usize,
}

impl BatchShard {
    /// The whole batch (one process).
    pub const WHOLE: BatchShard = BatchShard {
        rank: 0,
        world: 1,
        micro: 0,
        accum: 1,
    };

    /// The same ranks, for micro-batch `micro` of `accum` of an optimizer step: with
    /// accumulation the global batch is `batch x accum x world`, and micro-batch `m` of a
    /// rank holds its pairs `m * batch / 2 ..` of the step.
    pub fn micro_batch(self, micro: usize, accum: usize) -> Self {
        BatchShard {
            micro,
            accum: accum.max(1),
            ..self
        }
    }

    /// Position in the global batch of local sample `i` (micro-batch 0).
    pub fn global_index(&self, i: usize) -> usize {
        2 * ((i / 2) * self.world + self.rank) + i % 2
    }

    /// Position in the global batch (`b x world x accum` samples) of sample `i` of a
    /// local micro-batch of `b` samples.
    pub fn global_index_in(&self, i: usize, b: usize) -> usize {
        2 * (((self.micro * b) / 2 + i / 2) * self.world + self.rank) + i % 2
    }
}

impl Default for BatchShard {
    fn default() -> Self {
        Self::WHOLE
    }
}

/// The random stream of one forward pass's stochastic-depth masks: a ChaCha8 stream
/// that draws one uniform per sample of the *global* batch for every residual branch,
/// of which this process keeps its own samples' draws ([`BatchShard`]). One process
/// (`BatchShard::WHOLE`) draws exactly what it always did; `world` ranks together draw
/// the same masks as one process with the whole batch.
pub struct DropPathRng {
    rng: ChaCha8Rng,
    shard: BatchShard,
}

impl DropPathRng {
    /// The stream of a forward pass seeded by `seed`, for the samples of `shard`.
    pub fn new(seed: u64, shard: BatchShard) -> Self {
        use rand::SeedableRng;
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            shard,
        }
    }

    /// Per-sample factors of a local batch of `b` for one residual branch with drop
    /// probability `p` (see [`drop_path_scales`]).
    pub fn scales(&mut self, b: usize, p: f64) -> Vec<f32> {
        let whole = self.shard.world.max(1) * self.shard.accum.max(1);
        if whole <= 1 {
            return drop_path_scales(b, p, &mut self.rng);
        }
        let global = drop_path_scales(b * whole, p, &mut self.rng);
        (0..b)
            .map(|i| global[self.shard.global_index_in(i, b)])
            .collect()
    }
}

/// Stochastic depth: drops whole samples of a residual branch with probability `p`
/// and scales kept ones by `1 / (1 - p)` (timm `drop_path`, `scale_by_keep`).
/// `x` is `(B, ...)`; the mask is drawn from `rng`, one uniform per sample.
pub fn drop_path(x: &Tensor, p: f64, rng: &mut DropPathRng) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let b = x.dim(0)?;
    let mask = rng.scales(b, p);
    let mut shape = vec![b];
    shape.extend(std::iter::repeat_n(1, x.rank() - 1));
    let mask = Tensor::from_vec(mask, shape, x.device())?.to_dtype(x.dtype())?;
    x.broadcast_mul(&mask)
}

/// Stochastic depth's per-sample factors for a batch of `b`: `0` (dropped, probability
/// `p`) or `1 / (1 - p)`, one uniform draw from `rng` per sample, in sample order.
pub fn drop_path_scales(b: usize, p: f64, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let keep = 1.0 - p;
    (0..b)
        .map(|_| {
            if rng.random::<f64>() < keep {
                (1.0 / keep) as f32
            } else {
                0.0
            }
        })
        .collect()
}

/// `x + drop_path(a, p)`: the residual connection of a transformer block (one fused node
/// on the CPU in f32, see [`fused::residual_add`]; the same draws from `rng`).
pub fn residual_drop_path(x: &Tensor, a: &Tensor, p: f64, rng: &mut DropPathRng) -> Result<Tensor> {
    if p > 0.0 && fused::enabled(x) && a.dtype() == DType::F32 {
        let scale = rng.scales(x.dim(0)?, p);
        return fused::residual_add(x, a, scale);
    }
    x + drop_path(a, p, rng)?
}

/// 2-D convolution without bias (ResNet / RegNet convs), weight `[out, in/groups, k, k]`.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
    groups: usize,
}

impl Conv2d {
    /// Loads `weight` (and `bias` when asked) under `vb`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        in_ch: usize,
        out_ch: usize,
        k: usize,
        stride: usize,
        padding: usize,
        groups: usize,
        bias: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let weight = vb.get((out_ch, in_ch / groups, k, k), "weight")?;
        let bias = if bias {
            Some(vb.get(out_ch, "bias")?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            stride,
            padding,
            groups,
        })
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = if fused::enabled(x) {
            conv_gemm::conv2d(x, &self.weight, self.stride, self.padding, self.groups)?
        } else {
            self.forward_composite(x)?
        };
        match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?),
            None => Ok(y),
        }
    }
}

impl Conv2d {
    /// The convolution through candle's own ops (any device; the CPU reference for
    /// [`conv_gemm`]).
    fn forward_composite(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, kh, kw) = self.weight.dims4()?;
        if kh == 1 && kw == 1 && self.groups == 1 && self.padding == 0 {
            // 1x1 convolution as one GEMM over channels.
            let x = if self.stride > 1 {
                subsample(x, self.stride)?
            } else {
                x.clone()
            };
            let (b, c, h, w) = x.dims4()?;
            let o = self.weight.dim(0)?;
            let xr = x.permute((0, 2, 3, 1))?.reshape((b * h * w, c))?;
            let wr = self.weight.reshape((o, c))?;
            xr.matmul(&wr.t()?)?
                .reshape((b, h, w, o))?
                .permute((0, 3, 1, 2))
        } else {
            x.conv2d(&self.weight, self.padding, self.stride, 1, self.groups)
        }
    }
}

/// Takes every `s`-th row and column starting at 0 (`x[:, :, ::s, ::s]`), differentiable.
fn subsample(x: &Tensor, s: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let ho = h.div_ceil(s);
    let wo = w.div_ceil(s);
    let x = x.pad_with_zeros(2, 0, ho * s - h)?;
    let x = x.pad_with_zeros(3, 0, wo * s - w)?;
    x.reshape((b, c, ho, s, wo, s))?
        .narrow(3, 0, 1)?
        .narrow(5, 0, 1)?
        .reshape((b, c, ho, wo))
}

/// BatchNorm2d (eps 1e-5, momentum 0.1) with PyTorch semantics: train mode normalizes
/// with the batch statistics (biased variance) and updates the running statistics
/// (unbiased variance); eval mode uses the running statistics.
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    eps: f64,
    momentum: f64,
}

impl BatchNorm2d {
    /// Loads `weight`, `bias`, `running_mean`, `running_var` `[ch]` under `vb`.
    pub fn new(ch: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(ch, "weight", candle_nn::Init::Const(1.0))?;
        let bias = vb.get_with_hints(ch, "bias", candle_nn::Init::Const(0.0))?;
        let rm = vb.get_with_hints(ch, "running_mean", candle_nn::Init::Const(0.0))?;
        let rv = vb.get_with_hints(ch, "running_var", candle_nn::Init::Const(1.0))?;
        // From a VarMap these share storage with the map's variables, so the running
        // statistics updated in train mode are what gets saved.
        Ok(Self {
            weight,
            bias,
            running_mean: Var::from_tensor(&rm)?,
            running_var: Var::from_tensor(&rv)?,
            eps: 1e-5,
            momentum: 0.1,
        })
    }

    /// Normalizes `x` `(B, C, H, W)`.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let c = x.dim(1)?;
        let shape = (1, c, 1, 1);
        if train {
            let n = x.elem_count() / c;
            let (y, mean, var) = if fused::enabled(x) {
                let (y, stats) = fused_bn::batch_norm_train(x, &self.weight, &self.bias, self.eps)?;
                (y, stats.get(0)?, stats.get(1)?)
            } else {
                let mean = x.mean_keepdim((0, 2, 3))?;
                let xc = x.broadcast_sub(&mean)?;
                let var = xc.sqr()?.mean_keepdim((0, 2, 3))?;
                let inv = (var.clone() + self.eps)?.sqrt()?.recip()?;
                let scale = inv.broadcast_mul(&self.weight.reshape(shape)?)?;
                let y = xc
                    .broadcast_mul(&scale)?
                    .broadcast_add(&self.bias.reshape(shape)?)?;
                (y, mean, var)
            };
            // running stats (no gradient)
            let m = self.momentum;
            let unbiased = if n > 1 {
                n as f64 / (n - 1) as f64
            } else {
                1.0
            };
            let new_mean = ((self.running_mean.as_tensor() * (1.0 - m))?
                + (mean.detach().flatten_all()? * m)?)?;
            let new_var = ((self.running_var.as_tensor() * (1.0 - m))?
                + (var.detach().flatten_all()? * (m * unbiased))?)?;
            self.running_mean.set(&new_mean.to_dtype(DType::F32)?)?;
            self.running_var.set(&new_var.to_dtype(DType::F32)?)?;
            Ok(y)
        } else {
            let inv = (self.running_var.as_tensor() + self.eps)?.sqrt()?.recip()?;
            let scale = (inv * &self.weight)?;
            let shift = (&self.bias - (self.running_mean.as_tensor() * &scale)?)?;
            x.broadcast_mul(&scale.reshape(shape)?)?
                .broadcast_add(&shift.reshape(shape)?)
        }
    }
}

/// Max pool 3x3, stride 2, padding 1 (the ResNet stem) on non-negative inputs
/// (it follows a ReLU, so zero padding equals PyTorch's -inf padding).
/// Written as the maximum of 9 strided views so it is differentiable.
pub fn max_pool_3x3_s2(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let ho = (h - 1) / 2 + 1;
    let wo = (w - 1) / 2 + 1;
    let xp = x.pad_with_zeros(2, 1, 2)?.pad_with_zeros(3, 1, 2)?;
    let mut out: Option<Tensor> = None;
    for dy in 0..3 {
        let rows = xp
            .narrow(2, dy, 2 * ho)?
            .reshape((b, c, ho, 2, w + 3))?
            .narrow(3, 0, 1)?
            .reshape((b, c, ho, w + 3))?;
        for dx in 0..3 {
            let v = rows
                .narrow(3, dx, 2 * wo)?
                .reshape((b, c, ho, wo, 2))?
                .narrow(4, 0, 1)?
                .reshape((b, c, ho, wo))?;
            out = Some(match out {
                None => v,
                Some(o) => o.maximum(&v)?,
            });
        }
    }
    out.ok_or_else(|| candle_core::Error::Msg("empty max pool".into()))
}

/// Global average pool `(B, C, H, W) -> (B, C)`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    x.mean((2, 3))
}
