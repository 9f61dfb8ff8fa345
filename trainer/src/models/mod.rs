//! Image classifiers in candle, numerically equal to timm: the DeiT student
//! ([`deit`]) and the ConvNet teachers ([`resnet`], [`regnet`]).
//!
//! Every model is built from a [`ModelSpec`] (parsed from a timm model name or given
//! free dimensions) and a [`candle_nn::VarBuilder`]; parameter names are timm's
//! checkpoint keys, so [`crate::weights`] loads official DeiT / timm / torchvision
//! checkpoints and saves files timm loads back.
//!
//! Randomness (stochastic depth) comes only from [`ForwardCtx::seed`], never from
//! candle's RNG.
//!
//! Mixed precision: [`ForwardCtx::precision`] selects the compute precision of the DeiT
//! forward pass ([`Precision::Bf16`]: matrix products in bf16, everything else in f32,
//! f32 logits; see [`deit`]). Parameters always stay f32. ConvNets compute in f32 only.

pub mod deit;
pub mod init;
pub mod layers;
pub mod regnet;
pub mod resnet;
pub mod spec;

pub use init::init_weights;
pub use spec::{Arch, DeitConfig, ModelSpec, RegNetConfig, RegStage, ResNetBlock, ResNetConfig};

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

/// Compute precision of a forward pass (the parameters stay f32 either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// bf16 mixed precision ("AMP"), DeiT only: the matrix products (patch embedding,
    /// every linear layer, the two attention products) take bf16 operands (weights cast
    /// from their f32 values on the fly) with f32 accumulation; LayerNorm, softmax, GELU,
    /// biases, the residual stream and the logits stay f32. Gradients reach the f32
    /// parameters in f32 through the casts.
    Bf16,
}

impl Precision {
    /// The dtype the matrix products take: `F32` or `BF16`.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
        }
    }

    /// The name used in configs and on the command line (`f32`, `bf16`).
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Per-call forward settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ForwardCtx {
    /// Train mode: stochastic depth on, BatchNorm uses batch statistics and updates its
    /// running statistics, a distilled DeiT returns both heads.
    pub train: bool,
    /// Seed of the ChaCha8 stream that draws this call's drop-path masks (use a
    /// different seed per step, e.g. derived from run seed, epoch and step).
    pub seed: u64,
    /// Compute precision ([`Precision::F32`] by default). Only the DeiT honours
    /// [`Precision::Bf16`]; the ConvNets refuse it with an error.
    pub precision: Precision,
    /// Which samples of the global batch this call holds (data-parallel training): the
    /// drop-path masks are drawn for the global batch and this rank keeps its own, so
    /// they do not depend on the number of ranks ([`layers::BatchShard`]).
    pub shard: layers::BatchShard,
}

impl ForwardCtx {
    /// Evaluation context (no randomness used), f32.
    pub fn eval() -> Self {
        Self {
            train: false,
            seed: 0,
            precision: Precision::F32,
            shard: layers::BatchShard::WHOLE,
        }
    }

    /// Training context with the seed of this step's drop-path masks, f32.
    pub fn train(seed: u64) -> Self {
        Self {
            train: true,
            seed,
            precision: Precision::F32,
            shard: layers::BatchShard::WHOLE,
        }
    }

    /// This context computing in `precision`.
    pub fn with_precision(self, precision: Precision) -> Self {
        Self { precision, ..self }
    }

    /// This context for the samples `shard` holds of a global batch.
    pub fn with_shard(self, shard: layers::BatchShard) -> Self {
        Self { shard, ..self }
    }
}

/// Error for a ConvNet asked to compute in anything but f32 (mixed precision is
/// implemented for the DeiT student only).
pub(crate) fn require_f32(ctx: &ForwardCtx, arch: &str) -> Result<()> {
    if ctx.precision != Precision::F32 {
        candle_core::bail!(
            "{arch} computes in f32 only: {} mixed precision is implemented for the DeiT \
             student, not for the ConvNets (use precision f32 or auto)",
            ctx.precision
        );
    }
    Ok(())
}

/// Logits of a forward pass.
#[derive(Debug, Clone)]
pub struct ModelOutput {
    /// Class-token head logits `(B, C)`. In eval mode of a distilled DeiT: the mean of
    /// both heads' logits.
    pub cls: Tensor,
    /// Distillation-token head logits `(B, C)`: only in train mode of a distilled DeiT.
    pub dist: Option<Tensor>,
}

/// A trained or trainable image classifier.
pub trait Classifier: Send + Sync {
    /// Logits for a batch of normalized images `(B, 3, H, W)` (f32).
    fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<ModelOutput>;
    /// Number of output classes.
    fn num_classes(&self) -> usize;
    /// The model's name (timm name, or `deit_custom` for free dimensions).
    fn arch(&self) -> &str;
}

/// Builds the model described by `spec`, taking its parameters from `vb`
/// (a `VarMap`-backed builder for training, or loaded tensors for inference).
pub fn build(spec: &ModelSpec, vb: VarBuilder) -> Result<Box<dyn Classifier>> {
    spec.check_limits()
        .map_err(|e| candle_core::Error::Msg(format!("{e:#}")))?;
    Ok(match &spec.arch {
        Arch::Deit(cfg) => Box::new(deit::Deit::new(spec, cfg, vb)?),
        Arch::ResNet(cfg) => Box::new(resnet::ResNet::new(spec, cfg, vb)?),
        Arch::RegNet(cfg) => Box::new(regnet::RegNet::new(spec, cfg, vb)?),
    })
}

/// True for non-trainable state (BatchNorm running statistics). The optimizer must
/// skip these names; they are still saved and loaded with the weights.
pub fn is_buffer(name: &str) -> bool {
    name.ends_with(".running_mean")
        || name.ends_with(".running_var")
        || name.ends_with(".num_batches_tracked")
}

/// Trainable variables of a `VarMap`, sorted by name (buffers left out).
pub fn trainable_vars(varmap: &candle_nn::VarMap) -> Vec<(String, candle_core::Var)> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut vars: Vec<(String, candle_core::Var)> = data
        .iter()
        .filter(|(name, _)| !is_buffer(name))
        .map(|(name, var)| (name.clone(), var.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// Number of trainable scalar parameters (what timm's `sum(p.numel())` counts).
pub fn param_count(varmap: &candle_nn::VarMap) -> usize {
    trainable_vars(varmap)
        .iter()
        .map(|(_, v)| v.as_tensor().elem_count())
        .sum()
}
