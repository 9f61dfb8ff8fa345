//! `deit-pipe eval`: evaluate any weights file on a split: a run's checkpoint (its
//! config.toml gives model and eval transform), or foreign timm/official DeiT weights
//! (model named with `--model` and the shape flags, or read from the DeiT tensor
//! shapes), resolved by [`super::model_source`]; the eval transform is Pillow's.

use anyhow::{bail, Context, Result};
use pipeline::source::{RecordSource, ShardSource};
use pipeline::view::ViewBuilder;
use std::path::PathBuf;
use std::sync::Arc;

use super::config::{PrecisionMode, TrainConfig};
use super::eval::{evaluate, EvalModel, EvalSummary};
use super::model_source::{check_fit, resolve_model, ModelQuery, ResolvedModel, ShapeFlags};
use super::run::{eval_twin, select_device};
use crate::weights::{load_state_dict_into, LoadOptions};
use candle_core::DType;
use candle_nn::{VarBuilder, VarMap};
use pipeline::loader::LoaderOptions;
use pipeline::transforms::eval::EvalTransform;
use pipeline::transforms::pillow_resize::PilFilter;

/// What to evaluate.
#[derive(Clone, Debug, Default)]
pub struct EvalJob {
    /// Weights file, checkpoint directory or run directory.
    pub weights: PathBuf,
    /// Dataset directory (holds `split/`).
    pub data_dir: PathBuf,
    /// Split to evaluate (`val`).
    pub split: String,
    /// Model name (timm, or `deit` with the shape flags); default: the run's config,
    /// else read from DeiT weights (see [`super::model_source`]).
    pub model: Option<String>,
    /// Shape flags (`--img-size`, `--patch-size`, ... `--num-classes`).
    pub shape: ShapeFlags,
    /// Config giving the model and eval transform; default: the run's config.toml.
    pub config: Option<TrainConfig>,
    /// Eval crop fraction; default: the run config's, else the model's timm config.
    pub crop_pct: Option<f64>,
    /// Resize filter; default: bicubic (the run's, and every timm config we build).
    pub interpolation: Option<PilFilter>,
    /// Batch size (default 128).
    pub batch_size: Option<usize>,
    /// Evaluate the EMA weights of a checkpoint.
    pub ema: bool,
    /// Device name.
    pub device: String,
    /// Compute precision of the forward passes; default: the run config's
    /// `[run] precision`, else `auto` (bf16 mixed precision for a DeiT on CUDA, f32
    /// otherwise). ConvNets compute in f32 only.
    pub precision: Option<PrecisionMode>,
}

/// The result with what was evaluated.
#[derive(Clone, Debug)]
pub struct EvalReport {
    /// The weights file read.
    pub weights: PathBuf,
    /// The model name.
    pub model: String,
    /// The precision the forward passes computed in.
    pub precision: crate::models::Precision,
    /// The eval transform used.
    pub transform: EvalTransform,
    /// The figures.
    pub summary: EvalSummary,
}

/// Evaluate weights on a split.
pub fn evaluate_weights(job: &EvalJob, on_batch: &mut dyn FnMut(usize)) -> Result<EvalReport> {
    let device = select_device(&job.device)?;
    let resolved = resolve_model(&ModelQuery {
        weights: job.weights.clone(),
        model: job.model.clone(),
        shape: job.shape.clone(),
        config: job.config.clone(),
        ema: job.ema,
        crop_pct: job.crop_pct,
        interpolation: job.interpolation,
    })?;
    let split = if job.split.is_empty() {
        "val"
    } else {
        &job.split
    };
    let split_dir = job.data_dir.join(split);
    let source = Arc::new(
        ShardSource::open(&split_dir)
            .with_context(|| format!("opening {}", split_dir.display()))?,
    );
    let ResolvedModel {
        weights,
        tensors,
        spec,
        augment,
        run_config,
        eval,
        origin,
    } = resolved;
    augment.validate().context("eval transform")?;
    check_split_classes(&source, &split_dir, &job.data_dir, split, &weights)?;
    if source.num_classes() > spec.num_classes {
        bail!(
            "{} has {} classes but the model {} predicts {}",
            split_dir.display(),
            source.num_classes(),
            spec.name,
            spec.num_classes
        );
    }
    let spec = spec.with_drop_path(0.0);
    let run_precision = run_config
        .as_ref()
        .map(|c| c.run.precision)
        .unwrap_or_default();
    let precision = job
        .precision
        .unwrap_or(run_precision)
        .resolve(&spec, &device)
        .context("precision")?;
    let varmap = VarMap::new();
    let model = crate::models::build(&spec, VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
    check_fit(&varmap, &spec, &tensors, &weights, &origin)?;
    load_state_dict_into(
        &varmap,
        &spec,
        &tensors,
        &LoadOptions::default(),
        &weights.display().to_string(),
    )?;
    let twin = eval_twin(&spec, &varmap, &device)?;
    let m = EvalModel {
        model: twin.as_deref().unwrap_or(model.as_ref()),
        both_heads: twin.is_some(),
        precision,
    };
    let builder = Arc::new(ViewBuilder::new(&augment)?.with_eval_transform(eval)?);
    let opts = LoaderOptions {
        batch_size: job.batch_size.unwrap_or(128),
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        prefetch: 2,
        drop_last: false,
    };
    let summary = evaluate(&m, source, builder, &opts, &device, on_batch)?;
    Ok(EvalReport {
        weights,
        model: spec.name.clone(),
        precision,
        transform: eval,
        summary,
    })
}

/// A split to score must hold records, and its class names must be those the model was
/// trained on: the run's `classes.json` when the weights belong to a run, else the data
/// set's own train split (by name and order, not only their number).
fn check_split_classes(
    source: &ShardSource,
    split_dir: &std::path::Path,
    data_dir: &std::path::Path,
    split: &str,
    weights: &std::path::Path,
) -> Result<()> {
    if source.len() == 0 {
        bail!(
            "{}: the split has 0 records; there is nothing to score (for ImageNet's flat \
             val/, shard it with `shard --val-labels`)",
            split_dir.display()
        );
    }
    let got = &source.shards().manifest().classes;
    let run_classes = super::model_source::find_run_config(weights)
        .and_then(|c| c.parent().map(|d| d.join(super::CLASSES_FILE)))
        .filter(|p| p.is_file());
    let (want, what): (Vec<String>, String) = if let Some(p) = run_classes {
        let bytes = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
        let v: Vec<String> = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: not a JSON list of class names", p.display()))?;
        (v, format!("the run's classes ({})", p.display()))
    } else {
        let train_dir = data_dir.join("train");
        if split == "train" || !train_dir.join(formats::shard::MANIFEST_FILE).is_file() {
            return Ok(());
        }
        let m = formats::shard::Manifest::read(&train_dir)
            .with_context(|| format!("reading {}", train_dir.display()))?;
        (
            m.classes,
            format!("the train split ({})", train_dir.display()),
        )
    };
    if let Some(diff) = pipeline::ingest::val_labels::class_mismatch(&what, &want, split, got) {
        bail!(
            "{}: its classes are not the model's, so its labels would be scored against \
             other classes: {diff}",
            split_dir.display()
        );
    }
    Ok(())
}
