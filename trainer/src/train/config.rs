//! The training configuration: one TOML file with DeiT's recipe (`main.py` defaults) as
//! the default of every field, plus command-line overrides named as the official DeiT
//! flags (`--lr`, `--batch-size`, `--epochs`, ...) and a generic `--set section.key=value`.
//!
//! Sections: `[model]`, `[data]`, `[optim]`, `[schedule]`, `[augment]` (the pipeline's
//! [`AugmentConfig`]: crop, RandAugment, erasing, Mixup/CutMix, label smoothing),
//! `[plan]` (repeated augmentation), `[distillation]`, `[ema]`, `[run]`.

use crate::models::{Arch, DeitConfig, ModelSpec, Precision};
use anyhow::{bail, Context, Result};
use pipeline::config::{AugmentConfig, MixupMode, PlanConfig};
use pipeline::crop_rule::{apply_mode_defaults, cifar_rule, ExplicitKeys};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The student (or, for teacher training, the ConvNet) to train.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// timm model name (`deit_tiny_distilled_patch16_224`, `resnet18`, ...) or `deit`
    /// with the free dimensions below.
    pub name: String,
    /// Classes; `None` takes the dataset manifest's class count.
    pub num_classes: Option<usize>,
    /// Stochastic depth rate of the last block (`--drop-path`, 0.1).
    pub drop_path: f64,
    /// Patch size for a free DeiT (`name = "deit"`).
    pub patch_size: Option<usize>,
    /// Embedding width for a free DeiT.
    pub embed_dim: Option<usize>,
    /// Number of blocks for a free DeiT.
    pub depth: Option<usize>,
    /// Attention heads for a free DeiT.
    pub num_heads: Option<usize>,
    /// MLP hidden ratio for a free DeiT (4).
    pub mlp_ratio: Option<usize>,
    /// Whether a free DeiT has the distillation token.
    pub distilled: Option<bool>,
    /// Initialize from these weights (safetensors/.pth, timm names) instead of random.
    pub init_weights: Option<PathBuf>,
    /// Load `init_weights` partially (skip missing/mis-shaped tensors, e.g. a new head).
    pub init_partial: bool,
    /// Fine-tune from these weights as DeiT's `main.py --finetune` does: a head whose
    /// class count differs is dropped (kept at its init), the position embedding is
    /// resampled to this model's grid (bicubic, extra tokens kept); see
    /// [`super::mainpy::finetune`]. Not written when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finetune: Option<PathBuf>,
}

/// The first NaN or infinite float in a TOML value (arrays and tables searched).
fn non_finite(v: &toml::Value) -> Option<f64> {
    match v {
        toml::Value::Float(f) if !f.is_finite() => Some(*f),
        toml::Value::Array(a) => a.iter().find_map(non_finite),
        toml::Value::Table(t) => t.values().find_map(non_finite),
        _ => None,
    }
}

impl ModelConfig {
    /// The model to build: the timm name (or, for `name = "deit"`, the free dimensions,
    /// all required) at `img_size` with `num_classes` and this config's drop path.
    pub fn spec(&self, num_classes: usize, img_size: usize) -> Result<ModelSpec> {
        let base = if self.name == "deit" || self.name == "deit_custom" {
            let need = |v: Option<usize>, f: &str| {
                v.with_context(|| format!("model.name = \"deit\" needs model.{f}"))
            };
            ModelSpec::deit(
                DeitConfig {
                    img_size,
                    patch_size: need(self.patch_size, "patch_size")?,
                    embed_dim: need(self.embed_dim, "embed_dim")?,
                    depth: need(self.depth, "depth")?,
                    num_heads: need(self.num_heads, "num_heads")?,
                    mlp_ratio: self.mlp_ratio.unwrap_or(4),
                    distilled: self.distilled.unwrap_or(true),
                },
                num_classes,
                self.drop_path,
            )
        } else {
            if self.patch_size.is_some() || self.embed_dim.is_some() || self.depth.is_some() {
                bail!(
                    "model.name = {:?} fixes its dimensions; free dimensions (patch_size, \
                     embed_dim, depth, ...) need model.name = \"deit\"",
                    self.name
                );
            }
            ModelSpec::parse(&self.name)?
                .with_num_classes(num_classes)
                .with_drop_path(self.drop_path)
        };
        let spec = base.with_img_size(img_size)?;
        spec.check_limits()?;
        if let Arch::Deit(c) = &spec.arch {
            if c.num_heads == 0 || c.embed_dim % c.num_heads != 0 {
                bail!(
                    "model: embed_dim {} is not a multiple of num_heads {}",
                    c.embed_dim,
                    c.num_heads
                );
            }
        }
        Ok(spec)
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            name: "deit_tiny_distilled_patch16_224".into(),
            num_classes: None,
            drop_path: 0.1,
            patch_size: None,
            embed_dim: None,
            depth: None,
            num_heads: None,
            mlp_ratio: None,
            distilled: None,
            init_weights: None,
            init_partial: false,
            finetune: None,
        }
    }
}

/// Batching and loading.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Images per forward/backward pass of each rank (`--batch-size`; main.py's 64).
    pub batch_size: usize,
    /// Micro-batches accumulated per optimizer step; the global batch is
    /// `batch_size * accum_steps * ranks`. Default 1, as main.py (which has no
    /// accumulation); the paper recipes (`configs/deit_*.toml`) reach the paper's 1024 with it.
    pub accum_steps: usize,
    /// Eval batch size (`None`: 1.5x the training batch, as DeiT).
    pub eval_batch_size: Option<usize>,
    /// Decode/augment threads of the loader (0 = all cores).
    pub workers: usize,
    /// Batches prepared ahead of the model.
    pub prefetch: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            batch_size: 64,
            accum_steps: 1,
            eval_batch_size: None,
            workers: 0,
            prefetch: 4,
        }
    }
}

impl DataConfig {
    /// Images per optimizer step.
    pub fn global_batch(&self) -> usize {
        self.batch_size * self.accum_steps
    }
    /// Eval batch size in effect.
    pub fn eval_batch(&self) -> usize {
        self.eval_batch_size
            .unwrap_or((self.batch_size * 3 / 2).max(1))
    }
}

/// AdamW and its regularization.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Base learning rate at a global batch of 512 (`--lr`, 5e-4).
    pub lr: f64,
    /// Use `lr` as is instead of `lr * global_batch / 512` (`--unscale-lr`).
    pub unscale_lr: bool,
    /// Weight decay for >= 2-D weights (`--weight-decay`, 0.05); biases, norms, position
    /// embedding and the class/distillation tokens get none.
    pub weight_decay: f64,
    /// Adam epsilon (`--opt-eps`, 1e-8).
    pub opt_eps: f64,
    /// Adam betas (`--opt-betas`, 0.9 0.999).
    pub opt_betas: [f64; 2],
    /// Clip the global gradient L2 norm to this (`--clip-grad`, none).
    pub clip_grad: Option<f64>,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: 5e-4,
            unscale_lr: false,
            weight_decay: 0.05,
            opt_eps: 1e-8,
            opt_betas: [0.9, 0.999],
            clip_grad: None,
        }
    }
}

/// Per-epoch cosine schedule with linear warmup (timm `CosineLRScheduler`, as DeiT).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// Epochs to train (`--epochs`, 300).
    pub epochs: usize,
    /// Warmup epochs (`--warmup-epochs`, 5).
    pub warmup_epochs: usize,
    /// Learning rate at the start of warmup (`--warmup-lr`, 1e-6).
    pub warmup_lr: f64,
    /// Floor of the cosine (`--min-lr`, 1e-5).
    pub min_lr: f64,
    /// Extra epochs after `epochs`, the lr at the cosine's end (`--cooldown-epochs`, timm
    /// `train.py`'s meaning; `min_lr` from the second one on, as the schedule is stepped
    /// once per epoch after it, as main.py does). 0 here: DeiT's `main.py` parses the
    /// flag (default 10) but its loop runs `--epochs` only. Not written when 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub cooldown_epochs: usize,
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

impl ScheduleConfig {
    /// Epochs the run trains: the cosine's `epochs` plus `cooldown_epochs`.
    pub fn total_epochs(&self) -> usize {
        self.epochs + self.cooldown_epochs
    }
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            epochs: 300,
            warmup_epochs: 5,
            warmup_lr: 1e-6,
            min_lr: 1e-5,
            cooldown_epochs: 0,
        }
    }
}

/// What the distillation head learns from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DistillationType {
    /// No teacher: the base criterion only (both heads, if present, learn from labels).
    None,
    /// CE of the distillation head against the teacher's argmax.
    Hard,
    /// KL of temperature-softened distributions, `tau^2` scaled.
    Soft,
}

impl std::str::FromStr for DistillationType {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(DistillationType::None),
            "hard" => Ok(DistillationType::Hard),
            "soft" => Ok(DistillationType::Soft),
            other => bail!("--distillation-type: '{other}' is not one of none, hard, soft"),
        }
    }
}

/// Distillation settings (DeiT `--distillation-*`, `--teacher-*`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistillConfig {
    /// none | hard | soft (`--distillation-type`, none).
    #[serde(rename = "type")]
    pub kind: DistillationType,
    /// Weight of the distillation term (`--distillation-alpha`, 0.5).
    pub alpha: f64,
    /// Temperature of soft distillation (`--distillation-tau`, 1.0).
    pub tau: f64,
    /// Cached teacher targets (a `deit-pipe teacher-cache` directory).
    pub teacher_targets: Option<PathBuf>,
    /// Teacher weights for online distillation (`--teacher-path`).
    pub teacher: Option<PathBuf>,
    /// Teacher architecture, a timm name (`--teacher-model`, e.g. `regnety_160`).
    pub teacher_arch: Option<String>,
    /// On a view-hash mismatch against the cache: count and go on instead of stopping.
    pub allow_replay_drift: bool,
}

impl Default for DistillConfig {
    fn default() -> Self {
        DistillConfig {
            kind: DistillationType::None,
            alpha: 0.5,
            tau: 1.0,
            teacher_targets: None,
            teacher: None,
            teacher_arch: None,
            allow_replay_drift: false,
        }
    }
}

/// Exponential moving average of the weights (timm `ModelEmaV2`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmaConfig {
    /// Keep an EMA copy and evaluate it each epoch (`--model-ema`; on by default, as
    /// main.py's `--model-ema`, `--no-model-ema` turns it off).
    pub enabled: bool,
    /// Decay per optimizer step (`--model-ema-decay`, 0.99996).
    pub decay: f64,
}

impl Default for EmaConfig {
    fn default() -> Self {
        EmaConfig {
            enabled: true,
            decay: 0.99996,
        }
    }
}

/// Compute precision of the student's forward pass (`[run] precision`, `--precision`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrecisionMode {
    /// bf16 mixed precision for a DeiT on CUDA, f32 otherwise (CPU, ConvNets).
    #[default]
    Auto,
    /// Everything in f32.
    F32,
    /// bf16 mixed precision ([`Precision::Bf16`]); DeiT only (a ConvNet is an error).
    /// On CPU it runs, but slower than f32 (candle widens bf16 products to f32 there).
    Bf16,
}

impl PrecisionMode {
    /// The name written in configs (`auto`, `f32`, `bf16`).
    pub fn as_str(self) -> &'static str {
        match self {
            PrecisionMode::Auto => "auto",
            PrecisionMode::F32 => "f32",
            PrecisionMode::Bf16 => "bf16",
        }
    }

    /// The precision a model of `spec` computes in on `device`: `auto` is bf16 for a DeiT
    /// on CUDA and f32 otherwise; `bf16` for a ConvNet is an error (they compute in f32).
    pub fn resolve(self, spec: &ModelSpec, device: &candle_core::Device) -> Result<Precision> {
        let deit = matches!(spec.arch, Arch::Deit(_));
        match self {
            PrecisionMode::F32 => Ok(Precision::F32),
            PrecisionMode::Auto if deit && device.is_cuda() => Ok(Precision::Bf16),
            PrecisionMode::Auto => Ok(Precision::F32),
            PrecisionMode::Bf16 if !deit => bail!(
                "precision bf16: {} is a ConvNet, and ConvNets compute in f32 only (bf16 \
                 mixed precision is implemented for the DeiT student); use --precision f32 \
                 or auto",
                spec.name
            ),
            PrecisionMode::Bf16 => {
                if device.is_cpu() {
                    tracing::warn!(
                        "precision bf16 on the CPU: candle has no bf16 matrix product there \
                         (it widens to f32), so this is slower than f32; it is meant for \
                         checking the mixed-precision path"
                    );
                }
                Ok(Precision::Bf16)
            }
        }
    }
}

impl std::fmt::Display for PrecisionMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PrecisionMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(PrecisionMode::Auto),
            "f32" => Ok(PrecisionMode::F32),
            "bf16" => Ok(PrecisionMode::Bf16),
            other => bail!("--precision: '{other}' is not one of auto, f32, bf16"),
        }
    }
}

/// Run control.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Seed of every random choice (`--seed`, 0).
    pub seed: u64,
    /// `cpu` or `cuda` (`--device`).
    pub device: String,
    /// Compute precision of the DeiT student's forward passes (training and eval):
    /// `auto` (bf16 mixed precision on CUDA, f32 on CPU), `f32` or `bf16`
    /// (`--precision`). Weights, gradients, AdamW, EMA and checkpoints stay f32.
    /// ConvNets always compute in f32.
    pub precision: PrecisionMode,
    /// Optimizer steps between metrics records (and progress updates).
    pub log_every: usize,
    /// Evaluate on val every this many epochs (and after the last); 0 = never.
    pub eval_every: usize,
    /// Also checkpoint every this many optimizer steps inside an epoch (0 = epoch ends only).
    pub ckpt_every_steps: usize,
    /// Cap on micro-batches per epoch (0 = the whole plan); for quick trials.
    pub max_batches_per_epoch: usize,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            seed: 0,
            device: "cpu".into(),
            precision: PrecisionMode::Auto,
            log_every: 10,
            eval_every: 1,
            ckpt_every_steps: 0,
            max_batches_per_epoch: 0,
        }
    }
}

/// The whole training configuration. `Default` is DeiT-Ti's paper recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Model.
    pub model: ModelConfig,
    /// Batching.
    pub data: DataConfig,
    /// Optimizer.
    pub optim: OptimConfig,
    /// Learning-rate schedule.
    pub schedule: ScheduleConfig,
    /// Augmentation, Mixup/CutMix and label smoothing (pipeline's config).
    pub augment: AugmentConfig,
    /// Epoch plan (repeated augmentation).
    pub plan: PlanConfig,
    /// Distillation.
    pub distillation: DistillConfig,
    /// EMA.
    pub ema: EmaConfig,
    /// Run control.
    pub run: RunConfig,
    /// Which crop keys the TOML, a `--set` or a flag stated (not serialized; decides
    /// whether `main.py`'s CIFAR rule may set the crop, see [`pipeline::crop_rule`]).
    #[serde(skip)]
    pub explicit_keys: ExplicitKeys,
}

/// Command-line overrides, named as the official DeiT `main.py` flags. `None` keeps the
/// config's value.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--model`
    pub model: Option<String>,
    /// `--nb-classes`
    pub nb_classes: Option<usize>,
    /// `--input-size`
    pub input_size: Option<u32>,
    /// `--lr`
    pub lr: Option<f64>,
    /// `--unscale-lr`
    pub unscale_lr: bool,
    /// `--batch-size`
    pub batch_size: Option<usize>,
    /// `--accum-steps`
    pub accum_steps: Option<usize>,
    /// `--epochs`
    pub epochs: Option<usize>,
    /// `--warmup-epochs`
    pub warmup_epochs: Option<usize>,
    /// `--warmup-lr`
    pub warmup_lr: Option<f64>,
    /// `--min-lr`
    pub min_lr: Option<f64>,
    /// `--weight-decay`
    pub weight_decay: Option<f64>,
    /// `--opt-eps`
    pub opt_eps: Option<f64>,
    /// `--clip-grad`
    pub clip_grad: Option<f64>,
    /// `--drop-path`
    pub drop_path: Option<f64>,
    /// `--smoothing`
    pub smoothing: Option<f64>,
    /// `--mixup`
    pub mixup: Option<f64>,
    /// `--cutmix`
    pub cutmix: Option<f64>,
    /// `--mixup-prob`
    pub mixup_prob: Option<f64>,
    /// `--mixup-switch-prob`
    pub mixup_switch_prob: Option<f64>,
    /// `--mixup-mode` (batch, pair, elem)
    pub mixup_mode: Option<String>,
    /// `--reprob`
    pub reprob: Option<f64>,
    /// `--aa`
    pub aa: Option<String>,
    /// `--repeated-aug` (true) / `--no-repeated-aug` (false)
    pub repeated_aug: Option<bool>,
    /// `--distillation-type`
    pub distillation_type: Option<DistillationType>,
    /// `--distillation-alpha`
    pub distillation_alpha: Option<f64>,
    /// `--distillation-tau`
    pub distillation_tau: Option<f64>,
    /// `--teacher-targets`
    pub teacher_targets: Option<PathBuf>,
    /// `--teacher` (DeiT: `--teacher-path`)
    pub teacher: Option<PathBuf>,
    /// `--teacher-arch` (DeiT: `--teacher-model`)
    pub teacher_arch: Option<String>,
    /// `--allow-replay-drift`
    pub allow_replay_drift: bool,
    /// `--model-ema` (true) / `--no-model-ema` (false)
    pub model_ema: Option<bool>,
    /// `--model-ema-decay`
    pub model_ema_decay: Option<f64>,
    /// `--seed`
    pub seed: Option<u64>,
    /// `--device`
    pub device: Option<String>,
    /// `--precision`
    pub precision: Option<PrecisionMode>,
    /// `--opt-betas B1 B2`
    pub opt_betas: Option<[f64; 2]>,
    /// `--cooldown-epochs`
    pub cooldown_epochs: Option<usize>,
    /// `--remode` (pixel, rand, const)
    pub remode: Option<String>,
    /// `--recount`
    pub recount: Option<u32>,
    /// `--train-interpolation` (bicubic, bilinear)
    pub train_interpolation: Option<String>,
    /// `--eval-crop-ratio` (DeiT; timm `--crop-pct`)
    pub eval_crop_ratio: Option<f64>,
    /// `--color-jitter`: checked against the recipe, see
    /// [`super::mainpy::check_color_jitter`] (the augmentation has no colour
    /// jitter of its own).
    pub color_jitter: Option<f64>,
    /// `--finetune PATH`
    pub finetune: Option<PathBuf>,
    /// `--set section.key=value` (TOML value), applied last.
    pub set: Vec<String>,
}

impl TrainConfig {
    /// Parse TOML (every field optional; missing ones take the default) and validate.
    pub fn from_toml(text: &str) -> Result<Self> {
        let table: toml::Table = toml::from_str(text).context("training config")?;
        if let Some(bad) = non_finite(&toml::Value::Table(table.clone())) {
            bail!(
                "training config: {bad} is not a finite number (no field may be NaN or infinite)"
            );
        }
        let explicit_keys = match table.get("augment") {
            Some(toml::Value::Table(augment)) => ExplicitKeys::from_augment_table(augment),
            _ => ExplicitKeys::default(),
        };
        let mut cfg: TrainConfig = toml::from_str(text).context("training config")?;
        cfg.explicit_keys = explicit_keys;
        apply_mode_defaults(&mut cfg.augment, &explicit_keys);
        cfg.normalize();
        cfg.validate()?;
        Ok(cfg)
    }

    /// Read and parse a TOML file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = formats::open::read_text(path, formats::open::CONFIG)
            .with_context(|| format!("reading {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("in {}", path.display()))
    }

    /// The config as TOML (what a run directory's `config.toml` holds).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).context("serializing the training config")
    }

    /// Apply command-line overrides, then validate.
    pub fn apply(&mut self, o: &Overrides) -> Result<()> {
        fn set<T: Clone>(dst: &mut T, v: &Option<T>) {
            if let Some(v) = v {
                *dst = v.clone();
            }
        }
        set(&mut self.model.name, &o.model);
        if o.nb_classes.is_some() {
            self.model.num_classes = o.nb_classes;
        }
        set(&mut self.optim.lr, &o.lr);
        self.optim.unscale_lr |= o.unscale_lr;
        set(&mut self.data.batch_size, &o.batch_size);
        set(&mut self.data.accum_steps, &o.accum_steps);
        set(&mut self.schedule.epochs, &o.epochs);
        set(&mut self.schedule.warmup_epochs, &o.warmup_epochs);
        set(&mut self.schedule.warmup_lr, &o.warmup_lr);
        set(&mut self.schedule.min_lr, &o.min_lr);
        set(&mut self.optim.weight_decay, &o.weight_decay);
        set(&mut self.optim.opt_eps, &o.opt_eps);
        if o.clip_grad.is_some() {
            self.optim.clip_grad = o.clip_grad.filter(|&c| c > 0.0);
        }
        set(&mut self.model.drop_path, &o.drop_path);
        set(&mut self.schedule.cooldown_epochs, &o.cooldown_epochs);
        set(&mut self.optim.opt_betas, &o.opt_betas);
        if o.finetune.is_some() {
            self.model.finetune = o.finetune.clone();
        }
        let timm: [(&str, Option<String>); 13] = [
            ("input-size", o.input_size.map(|v| v.to_string())),
            ("smoothing", o.smoothing.map(|v| v.to_string())),
            ("mixup", o.mixup.map(|v| v.to_string())),
            ("cutmix", o.cutmix.map(|v| v.to_string())),
            ("mixup-prob", o.mixup_prob.map(|v| v.to_string())),
            (
                "mixup-switch-prob",
                o.mixup_switch_prob.map(|v| v.to_string()),
            ),
            ("mixup-mode", o.mixup_mode.clone()),
            ("reprob", o.reprob.map(|v| v.to_string())),
            ("aa", o.aa.clone()),
            ("remode", o.remode.clone()),
            ("recount", o.recount.map(|v| v.to_string())),
            ("train-interpolation", o.train_interpolation.clone()),
            ("eval-crop-ratio", o.eval_crop_ratio.map(|v| v.to_string())),
        ];
        if o.eval_crop_ratio.is_some() {
            self.explicit_keys.eval_crop_pct = true;
        }
        for (key, value) in timm {
            if let Some(v) = value {
                self.augment
                    .set_timm_arg(key, &v)
                    .with_context(|| format!("--{key} {v}"))?;
            }
        }
        match o.repeated_aug {
            Some(true) if self.plan.repeats == 1 => self.plan.repeats = 3,
            Some(false) => self.plan.repeats = 1,
            _ => {}
        }
        set(&mut self.distillation.kind, &o.distillation_type);
        set(&mut self.distillation.alpha, &o.distillation_alpha);
        set(&mut self.distillation.tau, &o.distillation_tau);
        if o.teacher_targets.is_some() {
            self.distillation.teacher_targets = o.teacher_targets.clone();
        }
        if o.teacher.is_some() {
            self.distillation.teacher = o.teacher.clone();
        }
        if o.teacher_arch.is_some() {
            self.distillation.teacher_arch = o.teacher_arch.clone();
        }
        self.distillation.allow_replay_drift |= o.allow_replay_drift;
        set(&mut self.ema.enabled, &o.model_ema);
        set(&mut self.ema.decay, &o.model_ema_decay);
        set(&mut self.run.seed, &o.seed);
        set(&mut self.run.device, &o.device);
        set(&mut self.run.precision, &o.precision);
        for kv in &o.set {
            self.set_path(kv)?;
        }
        // `--input-size` set the size only; main.py's CIFAR rule where neither the config
        // nor a `--set` states the crop, written into the config and logged once.
        if o.input_size.is_some() {
            if let Some(line) = cifar_rule(&mut self.augment, &self.explicit_keys) {
                tracing::info!("{line}");
                self.explicit_keys = ExplicitKeys::ALL;
            }
        }
        self.normalize();
        if let Some(cj) = o.color_jitter {
            super::mainpy::check_color_jitter(cj, &self.augment)?;
        }
        self.validate()
    }

    /// Set one field by its dotted path, `section.key=value` with a TOML value
    /// (`optim.lr=1e-3`, `augment.crop.mode="random_crop_pad"`, `model.depth=6`).
    pub fn set_path(&mut self, assignment: &str) -> Result<()> {
        let (path, raw) = assignment
            .split_once('=')
            .with_context(|| format!("--set '{assignment}': expected section.key=value"))?;
        let path = path.trim();
        let raw = raw.trim();
        // A TOML literal if it parses as one, else a bare string.
        let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.to_string()));
        // JSON has no NaN or infinity: serde_json would turn them into null, which reads
        // as "unset" for an optional field (clip_grad=nan would switch clipping off).
        if let Some(bad) = non_finite(&value) {
            bail!("--set '{assignment}': {bad} is not a finite number");
        }
        let value = serde_json::to_value(value).context("converting the --set value")?;
        let mut root = serde_json::to_value(&*self).context("serializing the config")?;
        let keys: Vec<&str> = path.split('.').collect();
        let (last, parents) = keys
            .split_last()
            .with_context(|| format!("--set '{assignment}': empty key"))?;
        let mut node = &mut root;
        for k in parents {
            node = node
                .get_mut(*k)
                .filter(|v| v.is_object())
                .with_context(|| format!("--set '{assignment}': no config section '{k}'"))?;
        }
        let table = node
            .as_object_mut()
            .with_context(|| format!("--set '{assignment}': '{path}' is not in a section"))?;
        table.insert(last.to_string(), value);
        let mut explicit_keys = self.explicit_keys;
        explicit_keys.mark_set_path(path);
        *self = serde_json::from_value(root).with_context(|| format!("--set '{assignment}'"))?;
        self.explicit_keys = explicit_keys;
        self.normalize();
        Ok(())
    }

    /// Write "off" values that TOML cannot hold as explicit values: RandAugment off is
    /// `auto_augment = "none"` (a missing key would mean DeiT's default policy).
    fn normalize(&mut self) {
        if self.augment.auto_augment.is_none() {
            self.augment.auto_augment = Some("none".into());
        }
        // Batch-mode Mixup: one lam per `data.batch_size` images (timm: per loader batch)
        // unless stated; 0 (unset) in the other modes.
        let mix = &mut self.augment.mix;
        if !self.explicit_keys.mix_batch_size || mix.batch_size == 0 {
            mix.batch_size = match mix.mode {
                MixupMode::Batch => u32::try_from(self.data.batch_size).unwrap_or(u32::MAX),
                _ => 0,
            };
        }
    }

    /// Check ranges and combinations; every message names the field.
    pub fn validate(&self) -> Result<()> {
        self.augment.validate().context("[augment]")?;
        self.plan.validate().context("[plan]")?;
        let d = &self.data;
        if d.batch_size == 0 {
            bail!("data.batch_size must be >= 1");
        }
        if d.accum_steps == 0 {
            bail!("data.accum_steps must be >= 1");
        }
        let o = &self.optim;
        if !(o.lr > 0.0 && o.lr.is_finite()) {
            bail!("optim.lr = {} must be a positive number", o.lr);
        }
        if o.weight_decay.is_nan() || o.weight_decay < 0.0 {
            bail!("optim.weight_decay = {} must be >= 0", o.weight_decay);
        }
        if o.opt_eps.is_nan() || o.opt_eps <= 0.0 {
            bail!("optim.opt_eps = {} must be > 0", o.opt_eps);
        }
        if o.opt_betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            bail!("optim.opt_betas = {:?} must be in [0, 1)", o.opt_betas);
        }
        if let Some(c) = o.clip_grad {
            if c.is_nan() || c <= 0.0 {
                bail!("optim.clip_grad = {c} must be > 0 (omit it to disable clipping)");
            }
        }
        let s = &self.schedule;
        if s.epochs == 0 {
            bail!("schedule.epochs must be >= 1");
        }
        if !(s.warmup_lr >= 0.0 && s.min_lr >= 0.0) {
            bail!("schedule.warmup_lr and schedule.min_lr must be >= 0");
        }
        let m = &self.model;
        if !(0.0..1.0).contains(&m.drop_path) {
            bail!("model.drop_path = {} must be in [0, 1)", m.drop_path);
        }
        if m.finetune.is_some() && m.init_weights.is_some() {
            bail!(
                "model.finetune (--finetune) and model.init_weights both name starting \
                 weights; give one"
            );
        }
        let t = &self.distillation;
        if !(0.0..=1.0).contains(&t.alpha) {
            bail!("distillation.alpha = {} must be in [0, 1]", t.alpha);
        }
        if t.tau.is_nan() || t.tau <= 0.0 {
            bail!("distillation.tau = {} must be > 0", t.tau);
        }
        if t.kind != DistillationType::None {
            match (&t.teacher_targets, &t.teacher) {
                (Some(_), Some(_)) => bail!(
                    "distillation: give either teacher_targets (--teacher-targets) or teacher \
                     (--teacher), not both"
                ),
                (None, None) => bail!(
                    "distillation.type = {:?} needs a teacher: --teacher-targets CACHE or \
                     --teacher WEIGHTS|RUN_DIR [--teacher-arch ARCH]",
                    t.kind
                ),
                _ => {}
            }
        }
        if self.ema.enabled && !(0.0..1.0).contains(&self.ema.decay) {
            bail!("ema.decay = {} must be in [0, 1)", self.ema.decay);
        }
        match self.run.device.as_str() {
            "cpu" | "cuda" => {}
            d if d.starts_with("cuda:") => {}
            d => bail!("run.device = '{d}': expected cpu, cuda or cuda:N"),
        }
        if self.run.log_every == 0 {
            bail!("run.log_every must be >= 1");
        }
        Ok(())
    }

    /// Learning rate after DeiT's linear scaling: `lr * global_batch / 512` unless
    /// `unscale_lr`. As in main.py, only `lr` is scaled (`warmup_lr`, `min_lr` are not).
    pub fn scaled_lr(&self) -> f64 {
        self.scaled_lr_for_world(1)
    }

    /// [`Self::scaled_lr`] for data-parallel training over `world` ranks, each with
    /// `batch_size` images per pass: the global batch is `batch_size * accum_steps *
    /// world`, as in the official DeiT code (`args.batch_size * world_size`).
    pub fn scaled_lr_for_world(&self, world: usize) -> f64 {
        if self.optim.unscale_lr {
            self.optim.lr
        } else {
            crate::schedule::scaled_lr(self.optim.lr, self.data.global_batch() * world.max(1))
        }
    }

    /// The per-epoch learning-rate schedule of this config.
    pub fn schedule(&self) -> crate::schedule::CosineLrSchedule {
        self.schedule_for_world(1)
    }

    /// The per-epoch learning-rate schedule over `world` data-parallel ranks.
    pub fn schedule_for_world(&self, world: usize) -> crate::schedule::CosineLrSchedule {
        crate::schedule::CosineLrSchedule {
            lr: self.scaled_lr_for_world(world),
            epochs: self.schedule.epochs,
            min_lr: self.schedule.min_lr,
            warmup_epochs: self.schedule.warmup_epochs,
            warmup_lr: self.schedule.warmup_lr,
        }
    }

    /// The config with fields that do not change the training recipe (device, compute
    /// precision, logging) set to fixed values; what `--resume` compares. Like the
    /// device, the precision changes rounding, not the recipe (`auto` already differs
    /// between a CPU and a CUDA resume), so a run may continue in another precision.
    pub fn semantic(&self) -> TrainConfig {
        let mut c = self.clone();
        c.run.device = "cpu".into();
        c.run.precision = PrecisionMode::Auto;
        c.run.log_every = 1;
        c.run.ckpt_every_steps = 0;
        c.run.eval_every = 1;
        c.data.workers = 0;
        c.data.prefetch = 0;
        c.data.eval_batch_size = None;
        c
    }

    /// 16-hex-digit hash of [`Self::semantic`] (blake3 of its canonical JSON).
    pub fn hash_hex(&self) -> String {
        let json = serde_json::to_string(&self.semantic()).unwrap_or_default();
        blake3::hash(json.as_bytes()).to_hex()[..16].to_string()
    }

    /// The first field (dotted path) where the semantic configs differ, with both values.
    pub fn first_difference(&self, other: &TrainConfig) -> Option<(String, String, String)> {
        let a = serde_json::to_value(self.semantic()).ok()?;
        let b = serde_json::to_value(other.semantic()).ok()?;
        diff_json("", &a, &b)
    }
}

fn diff_json(
    path: &str,
    a: &serde_json::Value,
    b: &serde_json::Value,
) -> Option<(String, String, String)> {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                diff_json(
                    &p,
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                )
            })
        }
        _ if a == b => None,
        _ => Some((path.to_string(), a.to_string(), b.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_deit_main_py() {
        let c = TrainConfig::default();
        assert_eq!(c.optim.lr, 5e-4);
        assert_eq!(c.optim.weight_decay, 0.05);
        assert_eq!(c.schedule.epochs, 300);
        assert_eq!(c.schedule.warmup_epochs, 5);
        assert_eq!(c.schedule.warmup_lr, 1e-6);
        assert_eq!(c.schedule.min_lr, 1e-5);
        assert_eq!(c.model.drop_path, 0.1);
        assert_eq!(c.distillation.alpha, 0.5);
        assert_eq!(c.distillation.tau, 1.0);
        assert_eq!(c.ema.decay, 0.99996);
        assert!(c.ema.enabled, "main.py: --model-ema is on by default");
        // main.py: --batch-size 64 per GPU, no accumulation.
        assert_eq!((c.data.batch_size, c.data.accum_steps), (64, 1));
        assert_eq!(c.data.global_batch(), 64);
        // 5e-4 * 64 / 512
        assert!((c.scaled_lr() - 6.25e-5).abs() < 1e-18);
        // RASampler: 3 repeats, epochs of floor(N / 256) * 256 samples.
        assert_eq!((c.plan.repeats, c.plan.num_samples_multiple), (3, 256));
        c.validate().unwrap();
    }

    #[test]
    fn toml_partial_roundtrip() {
        let c = TrainConfig::from_toml(
            "[optim]\nlr = 1e-3\n[augment]\ninput_size = 32\n[distillation]\ntype = \"hard\"\nteacher_targets = \"/x\"\n",
        )
        .unwrap();
        assert_eq!(c.optim.lr, 1e-3);
        assert_eq!(c.augment.input_size, 32);
        assert_eq!(c.distillation.kind, DistillationType::Hard);
        assert_eq!(c.schedule.epochs, 300);
        let back = TrainConfig::from_toml(&c.to_toml().unwrap()).unwrap();
        assert_eq!(back, c);
    }

    /// What a run does with its crop: the training crop mode and the eval transform its
    /// loaders build, from the resolved config and from the run's `config.toml` (what
    /// `eval`, `predict` and a resume read back).
    fn ran(cfg: &TrainConfig) -> (pipeline::config::CropMode, f64) {
        let builder = pipeline::view::ViewBuilder::new(&cfg.augment).unwrap();
        let eval = builder.eval_transform();
        assert_eq!(eval.size, cfg.augment.input_size);
        (builder.config().crop.mode, eval.crop_pct)
    }

    #[test]
    fn input_size_never_rewrites_a_stated_crop() {
        use pipeline::config::CropMode::{self, RandomCropPad, RandomResizedCrop};
        let size = |n: u32| Overrides {
            input_size: Some(n),
            ..Overrides::default()
        };
        let resolve = |toml: Option<&str>, o: &Overrides| {
            let mut c = match toml {
                Some(t) => TrainConfig::from_toml(t).unwrap(),
                None => TrainConfig::default(),
            };
            c.apply(o).unwrap();
            c
        };
        let tiny = include_str!("../../../configs/deit_tiny.toml");
        let pad_only = "[augment]\ninput_size = 32\n[augment.crop]\nmode = \"random_crop_pad\"\n";
        let cases: [(Option<&str>, Overrides, CropMode, f64); 5] = [
            // The recipe states random_resized_crop and 0.875: the flag changes the size.
            (Some(tiny), size(32), RandomResizedCrop, 0.875),
            // Flags alone: main.py's CIFAR rule, recorded.
            (None, size(32), RandomCropPad, 1.0),
            // ... unless the eval crop is stated by its flag.
            (
                None,
                Overrides {
                    eval_crop_ratio: Some(0.9),
                    ..size(24)
                },
                RandomCropPad,
                0.9,
            ),
            // A stated random_crop_pad stays at any size, with its whole-image eval.
            (Some(pad_only), size(48), RandomCropPad, 1.0),
            // A --set of the crop mode is stated too.
            (
                None,
                Overrides {
                    set: vec!["augment.crop.mode=\"random_resized_crop\"".into()],
                    ..size(32)
                },
                RandomResizedCrop,
                0.875,
            ),
        ];
        for (i, (toml, o, mode, crop)) in cases.into_iter().enumerate() {
            let c = resolve(toml, &o);
            assert_eq!(c.augment.input_size, o.input_size.unwrap(), "case {i}");
            assert_eq!(
                (c.augment.crop.mode, c.augment.eval_crop_pct),
                (mode, crop),
                "case {i}"
            );
            // The config says what runs ...
            assert_eq!(ran(&c), (mode, crop), "case {i}");
            // ... and so does the run's config.toml, read back.
            let back = TrainConfig::from_toml(&c.to_toml().unwrap()).unwrap();
            assert_eq!(back.augment, c.augment, "case {i}");
            assert_eq!(ran(&back), (mode, crop), "case {i}");
            // Resuming from it with the same flag changes nothing.
            let mut again = back.clone();
            again.apply(&o).unwrap();
            assert_eq!(again.augment, c.augment, "case {i}");
        }
    }

    #[test]
    fn unknown_field_is_named() {
        let e = format!(
            "{:#}",
            TrainConfig::from_toml("[optim]\nlearning_rate = 1\n").unwrap_err()
        );
        assert!(e.contains("learning_rate"), "{e}");
        let e = format!(
            "{:#}",
            TrainConfig::from_toml("[optim]\nlr = -1.0\n").unwrap_err()
        );
        assert!(e.contains("optim.lr"), "{e}");
    }

    #[test]
    fn overrides_use_deit_flag_semantics() {
        let mut c = TrainConfig::default();
        let o = Overrides {
            lr: Some(2e-3),
            batch_size: Some(32),
            accum_steps: Some(1),
            epochs: Some(7),
            smoothing: Some(0.0),
            mixup: Some(0.0),
            cutmix: Some(0.0),
            reprob: Some(0.0),
            aa: Some("none".into()),
            repeated_aug: Some(false),
            clip_grad: Some(1.0),
            model_ema: Some(true),
            set: vec!["model.depth=6".into(), "run.device=\"cpu\"".into()],
            ..Overrides::default()
        };
        c.apply(&o).unwrap();
        assert_eq!(c.optim.lr, 2e-3);
        assert_eq!(c.schedule.epochs, 7);
        assert_eq!(c.augment.mix.label_smoothing, 0.0);
        assert!(!c.augment.mix.enabled());
        assert_eq!(c.augment.erasing.prob, 0.0);
        assert_eq!(c.augment.rand_augment(), None);
        assert_eq!(c.plan.repeats, 1);
        assert_eq!(c.optim.clip_grad, Some(1.0));
        assert!(c.ema.enabled);
        assert_eq!(c.model.depth, Some(6));
        // RandAugment off survives the TOML round trip of a run's config.toml.
        let back = TrainConfig::from_toml(&c.to_toml().unwrap()).unwrap();
        assert_eq!(back.augment.rand_augment(), None);
        assert_eq!(back, c);
        // 2e-3 * 32 / 512
        assert!((c.scaled_lr() - 1.25e-4).abs() < 1e-15);
        let bad = Overrides {
            set: vec!["optim.nope=1".into()],
            ..Overrides::default()
        };
        assert!(c.clone().apply(&bad).is_err());
    }

    #[test]
    fn distillation_needs_a_teacher() {
        let mut c = TrainConfig::default();
        c.distillation.kind = DistillationType::Hard;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("--teacher-targets"), "{e}");
        // The architecture may come from the teacher's run directory, found when the run
        // starts (`checkpoint::model_name_of_run`).
        c.distillation.teacher = Some("runs/teacher".into());
        c.validate().unwrap();
        c.distillation.teacher_arch = Some("resnet18".into());
        c.validate().unwrap();
        c.distillation.teacher_targets = Some("cache".into());
        assert!(c.validate().unwrap_err().to_string().contains("not both"));
    }

    #[test]
    fn precision_is_a_run_field_with_a_flag() {
        let c = TrainConfig::default();
        assert_eq!(c.run.precision, PrecisionMode::Auto);
        let c = TrainConfig::from_toml("[run]\nprecision = \"bf16\"\n").unwrap();
        assert_eq!(c.run.precision, PrecisionMode::Bf16);
        assert!(c.to_toml().unwrap().contains("precision = \"bf16\""));
        let e = format!(
            "{:#}",
            TrainConfig::from_toml("[run]\nprecision = \"fp16\"\n").unwrap_err()
        );
        assert!(e.contains("fp16"), "{e}");
        let mut d = TrainConfig::default();
        d.apply(&Overrides {
            precision: Some("f32".parse().unwrap()),
            ..Overrides::default()
        })
        .unwrap();
        assert_eq!(d.run.precision, PrecisionMode::F32);
        d.set_path("run.precision=bf16").unwrap();
        assert_eq!(d.run.precision, PrecisionMode::Bf16);
        assert!("half".parse::<PrecisionMode>().is_err());
        // Like the device, the precision may change on --resume.
        assert_eq!(d.hash_hex(), TrainConfig::default().hash_hex());
    }

    #[test]
    fn precision_resolves_per_model_and_device() {
        let cpu = candle_core::Device::Cpu;
        let deit = ModelSpec::parse("deit_tiny_distilled_patch16_224").unwrap();
        let resnet = ModelSpec::parse("resnet18").unwrap();
        assert_eq!(
            PrecisionMode::Auto.resolve(&deit, &cpu).unwrap(),
            Precision::F32
        );
        assert_eq!(
            PrecisionMode::Bf16.resolve(&deit, &cpu).unwrap(),
            Precision::Bf16
        );
        assert_eq!(
            PrecisionMode::Auto.resolve(&resnet, &cpu).unwrap(),
            Precision::F32
        );
        let e = PrecisionMode::Bf16
            .resolve(&resnet, &cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("resnet18") && e.contains("f32 only"), "{e}");
    }

    #[test]
    fn semantic_difference_names_field() {
        let a = TrainConfig::default();
        let mut b = a.clone();
        b.run.device = "cuda".into();
        assert_eq!(a.hash_hex(), b.hash_hex());
        b.optim.weight_decay = 0.1;
        let (path, x, y) = a.first_difference(&b).unwrap();
        assert_eq!(path, "optim.weight_decay");
        assert_eq!((x.as_str(), y.as_str()), ("0.05", "0.1"));
        assert_ne!(a.hash_hex(), b.hash_hex());
    }
}
