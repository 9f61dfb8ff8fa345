//! Which model a weights file holds, for `deit-pipe predict` and `deit-pipe eval`, and
//! the eval transform that goes with it.
//!
//! In order of precedence:
//! 1. `--model NAME` (a timm name, or `deit` for free dimensions) with the shape flags
//!    (`--img-size`, `--patch-size`, `--embed-dim`, `--depth`, `--num-heads`,
//!    `--mlp-ratio`, `--num-classes`) overriding the name's dimensions, as
//!    `timm.create_model(name, **kwargs)` does;
//! 2. the saved `config.toml` of the run the weights belong to (`--weights RUN_DIR`, a
//!    checkpoint directory, or a weights file up to three folders below the config), or
//!    a recipe given to `eval --config`: any model `train` makes;
//! 3. bare DeiT weights: the dimensions read from the tensors (`--num-heads` is needed
//!    unless they are a timm preset: heads leave no trace in the weights).
//!
//! The eval transform's default is the run's (its input size and `eval_crop_pct`,
//! bicubic) when there is a run config, else the model's timm pretrained config
//! ([`timm_eval_defaults`]), exactly what `timm.data.resolve_data_config({}, model=m)`
//! returns; `--crop-pct` and `--interpolation` override either.
//!
//! [`check_fit`] compares every tensor with the model before loading and names each
//! misfit with both shapes and the flags (that exist) which would change it.

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use candle_nn::VarMap;
use pipeline::config::AugmentConfig;
use pipeline::transforms::eval::EvalTransform;
use pipeline::transforms::pillow_resize::PilFilter;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::checkpoint::resolve_weights;
use super::config::TrainConfig;
use super::CONFIG_FILE;
use crate::models::{Arch, DeitConfig, ModelSpec};
use crate::weights::read_state_dict;

/// Shape flags of `predict` / `eval` (all optional; `None` keeps the model's value).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShapeFlags {
    /// `--img-size`: input side (DeiT: changes the patch grid, `pos_embed` is resampled).
    pub img_size: Option<usize>,
    /// `--patch-size` (DeiT).
    pub patch_size: Option<usize>,
    /// `--embed-dim` (DeiT).
    pub embed_dim: Option<usize>,
    /// `--depth` (DeiT).
    pub depth: Option<usize>,
    /// `--num-heads` (DeiT).
    pub num_heads: Option<usize>,
    /// `--mlp-ratio` (DeiT).
    pub mlp_ratio: Option<usize>,
    /// `--num-classes`.
    pub num_classes: Option<usize>,
}

impl ShapeFlags {
    /// The DeiT-only flags that are set, by flag name.
    fn deit_flags(&self) -> Vec<&'static str> {
        [
            ("--patch-size", self.patch_size),
            ("--embed-dim", self.embed_dim),
            ("--depth", self.depth),
            ("--num-heads", self.num_heads),
            ("--mlp-ratio", self.mlp_ratio),
        ]
        .into_iter()
        .filter_map(|(n, v)| v.map(|_| n))
        .collect()
    }

    fn check_positive(&self) -> Result<()> {
        for (name, v) in [
            ("--img-size", self.img_size),
            ("--patch-size", self.patch_size),
            ("--embed-dim", self.embed_dim),
            ("--depth", self.depth),
            ("--num-heads", self.num_heads),
            ("--mlp-ratio", self.mlp_ratio),
            ("--num-classes", self.num_classes),
        ] {
            if v == Some(0) {
                bail!("{name} must be positive");
            }
        }
        Ok(())
    }
}

/// What the user asked for.
#[derive(Clone, Debug, Default)]
pub struct ModelQuery {
    /// Weights file, checkpoint directory or run directory.
    pub weights: PathBuf,
    /// `--model`: a timm name or `deit`.
    pub model: Option<String>,
    /// Shape flags.
    pub shape: ShapeFlags,
    /// A recipe standing in for the run's config (`eval --config`).
    pub config: Option<TrainConfig>,
    /// Pick the EMA weights of a checkpoint.
    pub ema: bool,
    /// `--crop-pct`.
    pub crop_pct: Option<f64>,
    /// `--interpolation`.
    pub interpolation: Option<PilFilter>,
}

/// A model ready to build, with its weights and eval transform.
#[derive(Debug)]
pub struct ResolvedModel {
    /// The weights file read.
    pub weights: PathBuf,
    /// Its tensors (f32, CPU, timm names).
    pub tensors: BTreeMap<String, Tensor>,
    /// The model to build.
    pub spec: ModelSpec,
    /// Augmentation config: the run's (or the recipe's), else DeiT's defaults; its
    /// `input_size` is the model's input size and its mean/std normalize the inputs.
    pub augment: AugmentConfig,
    /// The run config (or recipe), when there is one.
    pub run_config: Option<TrainConfig>,
    /// The eval transform (defaults, then `--crop-pct` / `--interpolation`).
    pub eval: EvalTransform,
    /// Where the architecture came from, for messages.
    pub origin: String,
}

/// The run config a weights file belongs to: `config.toml` in its folder or up to three
/// folders above (a run's `checkpoints/NAME/model.safetensors` finds the run's).
pub fn find_run_config(weights: &Path) -> Option<PathBuf> {
    weights
        .ancestors()
        .take(4)
        .map(|d| d.join(CONFIG_FILE))
        .find(|p| p.is_file())
}

/// The eval `(crop_pct, interpolation)` of a model's timm pretrained config (its default
/// tag in timm 1.0.31, as `resolve_data_config({}, model=timm.create_model(name))`
/// returns): DeiT 0.9 (1.0 at 384 px), ResNet-18..152 0.95, RegNetY 0.875 to 0.965, all
/// bicubic. The official DeiT `main.py` evaluates at 0.875 instead (`--crop-pct 0.875`).
/// Our small-image ResNets (`resnet_small`, `resnet_tiny`) have no timm config: our
/// recipes' 0.875.
pub fn timm_eval_defaults(spec: &ModelSpec) -> (f64, PilFilter) {
    let crop = match &spec.arch {
        Arch::Deit(_) => {
            if spec.name.ends_with("_384") {
                1.0
            } else {
                0.9
            }
        }
        Arch::ResNet(c) if c.small_stem => 0.875,
        Arch::ResNet(_) => 0.95,
        Arch::RegNet(_) => match spec.name.as_str() {
            "regnety_002" | "regnety_006" | "regnety_008" => 0.875,
            "regnety_004" | "regnety_016" | "regnety_320" => 0.965,
            _ => 0.95,
        },
    };
    (crop, PilFilter::Bicubic)
}

/// DeiT dimensions read from weights: everything but the number of heads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeitDims {
    /// Input side (patch grid times patch size).
    pub img_size: usize,
    /// Patch side.
    pub patch_size: usize,
    /// Token width.
    pub embed_dim: usize,
    /// Blocks.
    pub depth: usize,
    /// MLP hidden width over the token width.
    pub mlp_ratio: usize,
    /// Whether there is a distillation token.
    pub distilled: bool,
    /// Rows of `head.weight`.
    pub num_classes: usize,
}

impl DeitDims {
    /// The flags that give these dimensions.
    pub fn as_flags(&self) -> String {
        format!(
            "--img-size {} --patch-size {} --embed-dim {} --depth {} --mlp-ratio {} \
             --num-classes {}",
            self.img_size,
            self.patch_size,
            self.embed_dim,
            self.depth,
            self.mlp_ratio,
            self.num_classes
        )
    }

    /// The timm preset heads for a timm width and depth (tiny 3, small 6, base 12).
    fn preset_heads(&self) -> Option<usize> {
        match (self.embed_dim, self.depth, self.mlp_ratio) {
            (192, 12, 4) => Some(3),
            (384, 12, 4) => Some(6),
            (768, 12, 4) => Some(12),
            _ => None,
        }
    }
}

/// Reads DeiT dimensions from weights (`cls_token`, `pos_embed`,
/// `patch_embed.proj.weight`, `blocks.N.mlp.fc1.weight`, `head.weight`, `dist_token`).
/// `None` when the tensors are not a DeiT's (a ConvNet's, or incomplete).
pub fn deit_dims(tensors: &BTreeMap<String, Tensor>) -> Option<DeitDims> {
    let dims = |k: &str| tensors.get(k).map(|t| t.dims().to_vec());
    let cls = dims("cls_token")?;
    let patch = dims("patch_embed.proj.weight")?;
    let pos = dims("pos_embed")?;
    let (&embed_dim, &patch_size, &tokens) = (cls.get(2)?, patch.get(2)?, pos.get(1)?);
    let distilled = tensors.contains_key("dist_token");
    let prefix = if distilled { 2 } else { 1 };
    let grid = (tokens.checked_sub(prefix)? as f64).sqrt().round() as usize;
    if grid * grid + prefix != tokens || embed_dim == 0 {
        return None;
    }
    let depth = tensors
        .keys()
        .filter_map(|k| {
            k.strip_prefix("blocks.")?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .map_or(0, |m| m + 1);
    let hidden = dims("blocks.0.mlp.fc1.weight").and_then(|d| d.first().copied());
    Some(DeitDims {
        img_size: grid * patch_size,
        patch_size,
        embed_dim,
        depth,
        mlp_ratio: hidden.map_or(4, |h| h / embed_dim),
        distilled,
        num_classes: dims("head.weight")
            .and_then(|d| d.first().copied())
            .unwrap_or(1000),
    })
}

/// The class count the weights' head holds (`head.weight` or a ResNet's `fc.weight`,
/// a RegNet's `head.fc.weight`).
fn head_classes(tensors: &BTreeMap<String, Tensor>) -> Option<usize> {
    ["head.weight", "fc.weight", "head.fc.weight"]
        .iter()
        .find_map(|k| tensors.get(*k).map(|t| t.dims()[0]))
}

/// Applies the DeiT shape flags to `spec` (an error for a ConvNet).
fn apply_deit_flags(spec: ModelSpec, shape: &ShapeFlags) -> Result<ModelSpec> {
    let flags = shape.deit_flags();
    let mut spec = spec;
    match &mut spec.arch {
        Arch::Deit(c) => {
            c.patch_size = shape.patch_size.unwrap_or(c.patch_size);
            c.embed_dim = shape.embed_dim.unwrap_or(c.embed_dim);
            c.depth = shape.depth.unwrap_or(c.depth);
            c.num_heads = shape.num_heads.unwrap_or(c.num_heads);
            c.mlp_ratio = shape.mlp_ratio.unwrap_or(c.mlp_ratio);
        }
        _ if !flags.is_empty() => bail!(
            "{}: only DeiT models take these flags, and {} is a ConvNet",
            flags.join(", "),
            spec.name
        ),
        _ => {}
    }
    Ok(spec)
}

fn describe_deit(c: &DeitConfig) -> String {
    format!(
        "img {}, patch {}, dim {}, depth {}, heads {}, mlp ratio {}{}",
        c.img_size,
        c.patch_size,
        c.embed_dim,
        c.depth,
        c.num_heads,
        c.mlp_ratio,
        if c.distilled { ", distilled" } else { "" }
    )
}

/// Resolves what to build for `q` (see the module doc), reading the weights.
pub fn resolve_model(q: &ModelQuery) -> Result<ResolvedModel> {
    q.shape.check_positive()?;
    let weights = resolve_weights(&q.weights, q.ema)?;
    let (run_config, config_origin) = match &q.config {
        Some(c) => (
            Some(c.clone()),
            "the recipe given with --config".to_string(),
        ),
        None => match find_run_config(&weights) {
            Some(p) => (
                Some(TrainConfig::from_file(&p)?),
                format!("the run config {}", p.display()),
            ),
            None => (None, String::new()),
        },
    };
    let tensors = read_state_dict(&weights)?;
    let shape = &q.shape;
    let (spec, origin) = match (&q.model, &run_config) {
        (None, Some(cfg)) => {
            if let Some(f) = shape.deit_flags().first() {
                bail!(
                    "{f}: the model's dimensions come from {config_origin}; give the shape \
                     flags together with --model"
                );
            }
            let classes = shape
                .num_classes
                .or(cfg.model.num_classes)
                .or(head_classes(&tensors))
                .unwrap_or(1000);
            let size = shape.img_size.unwrap_or(cfg.augment.input_size as usize);
            let spec = cfg
                .model
                .spec(classes, size)
                .with_context(|| format!("the model of {config_origin}"))?;
            (spec, config_origin.clone())
        }
        (Some(name), _) if name == "deit" || name == "deit_custom" => {
            let dims = deit_dims(&tensors);
            let need = |v: Option<usize>, flag: &str| {
                v.with_context(|| format!("--model {name} needs {flag} (free DeiT dimensions)"))
            };
            let cfg = DeitConfig {
                img_size: shape.img_size.or(dims.map(|d| d.img_size)).unwrap_or(224),
                patch_size: need(shape.patch_size, "--patch-size")?,
                embed_dim: need(shape.embed_dim, "--embed-dim")?,
                depth: need(shape.depth, "--depth")?,
                num_heads: need(shape.num_heads, "--num-heads")?,
                mlp_ratio: shape.mlp_ratio.unwrap_or(4),
                distilled: dims.is_none_or(|d| d.distilled),
            };
            let classes = shape.num_classes.or(head_classes(&tensors)).unwrap_or(1000);
            (
                ModelSpec::deit(cfg, classes, 0.0),
                format!("--model {name} and the shape flags"),
            )
        }
        (Some(name), _) => {
            let base = apply_deit_flags(ModelSpec::parse(name)?, shape)?;
            let classes = shape
                .num_classes
                .or(head_classes(&tensors))
                .unwrap_or(base.num_classes);
            let size = shape.img_size.unwrap_or_else(|| base.img_size());
            (
                base.with_num_classes(classes).with_img_size(size)?,
                format!("--model {name}"),
            )
        }
        (None, None) => {
            let Some(d) = deit_dims(&tensors) else {
                bail!(
                    "{}: not DeiT weights and not inside a run directory (no {CONFIG_FILE} \
                     next to it or up to three folders above), so the architecture is \
                     unknown; name it with --model (e.g. resnet50, regnety_160)",
                    weights.display()
                );
            };
            let heads = shape.num_heads.or(d.preset_heads()).with_context(|| {
                format!(
                    "{}: DeiT weights of width {}, depth {}, patch {}, {} px are not a timm \
                     preset and the number of attention heads is not stored in weights; \
                     give --num-heads (DeiT uses width / 64, here {})",
                    weights.display(),
                    d.embed_dim,
                    d.depth,
                    d.patch_size,
                    d.img_size,
                    (d.embed_dim / 64).max(1)
                )
            })?;
            let cfg = DeitConfig {
                img_size: shape.img_size.unwrap_or(d.img_size),
                patch_size: shape.patch_size.unwrap_or(d.patch_size),
                embed_dim: shape.embed_dim.unwrap_or(d.embed_dim),
                depth: shape.depth.unwrap_or(d.depth),
                num_heads: heads,
                mlp_ratio: shape.mlp_ratio.unwrap_or(d.mlp_ratio),
                distilled: d.distilled,
            };
            let mut spec = ModelSpec::deit(cfg, shape.num_classes.unwrap_or(d.num_classes), 0.0);
            if let Some(name) = timm_name(&spec) {
                spec.name = name;
            }
            (spec, "the shapes of the weights".to_string())
        }
    };
    if let Arch::Deit(c) = &spec.arch {
        if c.num_heads == 0 || c.embed_dim % c.num_heads != 0 {
            bail!(
                "embed dim {} is not a multiple of the number of heads {} (--num-heads)",
                c.embed_dim,
                c.num_heads
            );
        }
        if c.img_size % c.patch_size != 0 {
            bail!(
                "image size {} is not a multiple of the patch size {} (--img-size, --patch-size)",
                c.img_size,
                c.patch_size
            );
        }
    }
    let size = spec.img_size() as u32;
    let size = shape.img_size.map_or(size, |s| s as u32);
    let (mut augment, mut eval) = match &run_config {
        Some(cfg) => {
            let mut a = cfg.augment.clone();
            if a.input_size != size {
                // The run's crop rule (small-image or not) at the new size.
                a.input_size = size;
            }
            let e = EvalTransform::from_config(&a);
            (a, e)
        }
        None => {
            let (crop_pct, filter) = timm_eval_defaults(&spec);
            let a = AugmentConfig {
                input_size: size,
                ..AugmentConfig::default()
            };
            (
                a,
                EvalTransform {
                    size,
                    crop_pct,
                    filter,
                },
            )
        }
    };
    if let Some(c) = q.crop_pct {
        eval.crop_pct = c;
        augment.eval_crop_pct = c;
    }
    if let Some(f) = q.interpolation {
        eval.filter = f;
    }
    eval.validate().context("--crop-pct")?;
    Ok(ResolvedModel {
        weights,
        tensors,
        spec,
        augment,
        run_config,
        eval,
        origin,
    })
}

/// The timm name of a DeiT spec when it is a timm preset (`deit_tiny_distilled_patch16_224`).
fn timm_name(spec: &ModelSpec) -> Option<String> {
    let Arch::Deit(c) = &spec.arch else {
        return None;
    };
    let size = match (c.embed_dim, c.depth, c.num_heads, c.mlp_ratio) {
        (192, 12, 3, 4) => "tiny",
        (384, 12, 6, 4) => "small",
        (768, 12, 12, 4) => "base",
        _ => return None,
    };
    Some(format!(
        "deit_{size}{}_patch{}_{}",
        if c.distilled { "_distilled" } else { "" },
        c.patch_size,
        c.img_size
    ))
}

/// Checks that `tensors` fit the variables of `varmap` (built for `spec`) before loading:
/// every model tensor present with its shape (a DeiT's `pos_embed` may differ in its
/// square grid only: it is resampled), no tensor the model has no place for. The error
/// names each misfit with both shapes, where the model came from (`origin`) and, for
/// DeiT weights, the shape flags that describe them.
pub fn check_fit(
    varmap: &VarMap,
    spec: &ModelSpec,
    tensors: &BTreeMap<String, Tensor>,
    source: &Path,
    origin: &str,
) -> Result<()> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut problems = Vec::new();
    // Tensors outside the blocks first: they tell the shape (cls_token, pos_embed, ...).
    let order = |n: &&String| (n.starts_with("blocks."), (*n).clone());
    let mut names: Vec<&String> = data.keys().collect();
    names.sort_by_key(order);
    for name in names {
        let want = data[name].as_tensor().dims().to_vec();
        match tensors.get(name.as_str()) {
            None => problems.push(format!("missing tensor {name} (model shape {want:?})")),
            Some(t) if t.dims() == want.as_slice() => {}
            Some(t) if name == "pos_embed" && pos_embed_resamples(spec, t.dims()) => {}
            Some(t) => problems.push(format!(
                "tensor {name}: the weights have shape {:?}, the model expects {want:?}",
                t.dims()
            )),
        }
    }
    let mut extra: Vec<&String> = tensors
        .keys()
        .filter(|k| !data.contains_key(k.as_str()))
        .collect();
    extra.sort_by_key(order);
    for name in extra {
        problems.push(format!(
            "unexpected tensor {name} (shape {:?}) that the model has no place for",
            tensors[name].dims()
        ));
    }
    if problems.is_empty() {
        return Ok(());
    }
    let what = match &spec.arch {
        Arch::Deit(c) => format!("{} ({})", spec.name, describe_deit(c)),
        _ => spec.name.clone(),
    };
    let mut msg = format!(
        "{} does not fit the model {what}, {} classes (from {origin}):",
        source.display(),
        spec.num_classes
    );
    for p in problems.iter().take(12) {
        let _ = write!(msg, "\n  {p}");
    }
    if problems.len() > 12 {
        let _ = write!(msg, "\n  ... {} misfits in all", problems.len());
    }
    match deit_dims(tensors) {
        Some(d) => {
            let _ = write!(
                msg,
                "\nThe weights hold a{} DeiT of {}; name it with --model deit {} --num-heads H, \
                 or with its run directory as --weights.",
                if d.distilled { " distilled" } else { "" },
                describe_dims(&d),
                d.as_flags()
            );
        }
        None => {
            let _ = write!(
                msg,
                "\nName the architecture of the weights with --model (and --num-classes for \
                 another class count), or give their run directory as --weights."
            );
        }
    }
    bail!(msg)
}

fn describe_dims(d: &DeitDims) -> String {
    format!(
        "img {}, patch {}, dim {}, depth {}, mlp ratio {}, {} classes",
        d.img_size, d.patch_size, d.embed_dim, d.depth, d.mlp_ratio, d.num_classes
    )
}

/// Whether a `pos_embed` of shape `dims` can be resampled to `spec`'s grid (what
/// `weights::load_state_dict_into` does): `[1, prefix + g*g, D]`.
fn pos_embed_resamples(spec: &ModelSpec, dims: &[usize]) -> bool {
    let Arch::Deit(c) = &spec.arch else {
        return false;
    };
    let prefix = c.num_prefix_tokens();
    if dims.len() != 3 || dims[0] != 1 || dims[2] != c.embed_dim || dims[1] <= prefix {
        return false;
    }
    let g = ((dims[1] - prefix) as f64).sqrt().round() as usize;
    g * g == dims[1] - prefix
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn deit_tensors(
        dim: usize,
        depth: usize,
        patch: usize,
        grid: usize,
        distilled: bool,
    ) -> BTreeMap<String, Tensor> {
        let z = |s: &[usize]| Tensor::zeros(s, DType::F32, &Device::Cpu).unwrap();
        let mut t = BTreeMap::new();
        let prefix = if distilled { 2 } else { 1 };
        t.insert("cls_token".into(), z(&[1, 1, dim]));
        if distilled {
            t.insert("dist_token".into(), z(&[1, 1, dim]));
        }
        t.insert("pos_embed".into(), z(&[1, prefix + grid * grid, dim]));
        t.insert("patch_embed.proj.weight".into(), z(&[dim, 3, patch, patch]));
        for b in 0..depth {
            t.insert(format!("blocks.{b}.mlp.fc1.weight"), z(&[4 * dim, dim]));
        }
        t.insert("head.weight".into(), z(&[10, dim]));
        t
    }

    #[test]
    fn dims_are_read_from_deit_weights() {
        let d = deit_dims(&deit_tensors(128, 4, 8, 4, true)).unwrap();
        assert_eq!(
            d,
            DeitDims {
                img_size: 32,
                patch_size: 8,
                embed_dim: 128,
                depth: 4,
                mlp_ratio: 4,
                distilled: true,
                num_classes: 10
            }
        );
        assert_eq!(d.preset_heads(), None);
        let mut t = deit_tensors(192, 12, 16, 14, false);
        assert_eq!(deit_dims(&t).unwrap().preset_heads(), Some(3));
        t.remove("cls_token");
        assert_eq!(deit_dims(&t), None);
    }

    #[test]
    fn timm_defaults_follow_the_pretrained_configs() {
        let d = |n: &str| timm_eval_defaults(&ModelSpec::parse(n).unwrap()).0;
        assert_eq!(d("deit_tiny_distilled_patch16_224"), 0.9);
        assert_eq!(d("deit_base_patch16_384"), 1.0);
        assert_eq!(d("resnet50"), 0.95);
        assert_eq!(d("resnet_small"), 0.875);
        assert_eq!(d("regnety_016"), 0.965);
        assert_eq!(d("regnety_160"), 0.95);
        assert_eq!(d("regnety_002"), 0.875);
    }
}
