//! `deit-pipe predict`: classify image files with a DeiT / ResNet / RegNetY checkpoint
//! (a run's, or timm / official DeiT weights), printing the top-5 classes with
//! probabilities, or with `--json` the logits and top-5 per image.
//!
//! Inputs equal timm's `create_transform(**resolve_data_config({}, model=m))` on
//! `Image.open(f).convert("RGB")`: files decode as Pillow does (`ingest::open`:
//! libjpeg-turbo for JPEG), the eval transform resizes with Pillow's filter bit for bit
//! (`transforms::pillow_resize`), crops and normalizes as torchvision. The model and the
//! transform's defaults come from the run's config or the model's timm config
//! (`trainer::train::model_source`). The forward pass is f32 on the chosen `--device`
//! (cpu, cuda or cuda:N); `tools/gpu_check.sh` compares the CUDA logits with the CPU ones.

use anyhow::{bail, Context};
use candle_core::{DType, Tensor};
use candle_nn::{VarBuilder, VarMap};
use pipeline::ingest::open::decode_like_pillow;
use pipeline::transforms::normalize::Normalizer;
use std::path::PathBuf;
use trainer::models::ForwardCtx;
use trainer::train::model_source::{check_fit, resolve_model, ModelQuery};
use trainer::train::run::select_device;
use trainer::weights::{load_state_dict_into, LoadOptions};

use super::model_args::ModelArgs;

/// Pillow's decompression-bomb limit (`Image.MAX_IMAGE_PIXELS * 2`, where it errors).
const MAX_PIXELS: u64 = 2 * 89_478_485;

/// Arguments of `deit-pipe predict`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Weights: .safetensors, a PyTorch .pth / .pt checkpoint (state dict or
    /// {'model': ...}), a checkpoint directory or a run directory (its best checkpoint;
    /// the run's config.toml gives the model and eval transform).
    #[arg(long)]
    pub weights: PathBuf,
    /// Model and eval-transform flags.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Predict with the EMA weights of a checkpoint (a run or checkpoint directory).
    #[arg(long)]
    pub ema: bool,
    /// Class names, one per line, in class-index order.
    #[arg(long)]
    pub classes: Option<PathBuf>,
    /// Print JSON lines: per image the file, the logits and the top-5.
    #[arg(long)]
    pub json: bool,
    /// How many classes to print per image.
    #[arg(long, default_value_t = 5, value_parser = super::positive)]
    pub top: usize,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16, value_parser = super::positive)]
    pub batch: usize,
    /// cpu, cuda or cuda:N (cuda needs a build with --features cuda; see tools/build-cuda.sh).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Image files (JPEG or PNG).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

/// Runs `deit-pipe predict`.
pub fn run(args: Args) -> anyhow::Result<()> {
    // The device first: a CPU-only build refuses `--device cuda` before any other work.
    let device = select_device(&args.device)?;
    let resolved = resolve_model(&ModelQuery {
        weights: args.weights.clone(),
        model: args.model.model.clone(),
        shape: args.model.shape(),
        config: None,
        ema: args.ema,
        crop_pct: args.model.crop_pct,
        interpolation: args.model.interpolation,
    })?;
    let spec = resolved.spec.clone();
    let classes = match &args.classes {
        Some(p) => {
            let text = formats::open::read_text(p, formats::open::CLASS_NAMES)
                .with_context(|| format!("reading class names {}", p.display()))?;
            let names: Vec<String> = text
                .lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect();
            if names.len() != spec.num_classes {
                bail!(
                    "{} lists {} classes but the model has {} (its head's rows; --num-classes \
                     names the model's count)",
                    p.display(),
                    names.len(),
                    spec.num_classes
                );
            }
            Some(names)
        }
        None => None,
    };
    let varmap = VarMap::new();
    let model =
        trainer::models::build(&spec, VarBuilder::from_varmap(&varmap, DType::F32, &device))
            .with_context(|| format!("building model {}", spec.name))?;
    check_fit(
        &varmap,
        &spec,
        &resolved.tensors,
        &resolved.weights,
        &resolved.origin,
    )?;
    load_state_dict_into(
        &varmap,
        &spec,
        &resolved.tensors,
        &LoadOptions::default(),
        &resolved.weights.display().to_string(),
    )?;
    let t = resolved.eval;
    tracing::info!(
        "{} ({}, {} classes, from {}); eval: shorter side to {} ({}, crop_pct {}), centre crop {}",
        resolved.weights.display(),
        spec.name,
        spec.num_classes,
        resolved.origin,
        t.resize_side(),
        t.filter,
        t.crop_pct,
        t.size
    );
    let norm = Normalizer::new(resolved.augment.mean, resolved.augment.std);
    let size = t.size as usize;
    let plane = 3 * size * size;
    let top = args.top.min(spec.num_classes).max(1);
    for chunk in args.images.chunks(args.batch.max(1)) {
        let mut data = vec![0f32; plane * chunk.len()];
        for (path, out) in chunk.iter().zip(data.chunks_mut(plane)) {
            let bytes = formats::open::read_bounded(path, formats::open::IMAGE)
                .with_context(|| format!("reading image {}", path.display()))?;
            let img = decode_like_pillow(&bytes, MAX_PIXELS)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("decoding image {}", path.display()))?;
            t.view(&img, &norm, out)
                .with_context(|| format!("eval transform of {}", path.display()))?;
        }
        let x = Tensor::from_vec(data, (chunk.len(), 3, size, size), &device)?;
        let logits: Vec<Vec<f32>> = model.forward(&x, &ForwardCtx::eval())?.cls.to_vec2()?;
        for (path, row) in chunk.iter().zip(logits) {
            let probs = softmax(&row);
            let mut idx: Vec<usize> = (0..row.len()).collect();
            idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
            let best: Vec<(usize, f32)> = idx[..top].iter().map(|&i| (i, probs[i])).collect();
            let name = |i: usize| -> String {
                classes
                    .as_ref()
                    .map(|c| c[i].clone())
                    .unwrap_or_else(|| format!("class {i}"))
            };
            if args.json {
                let topj: Vec<serde_json::Value> = best
                    .iter()
                    .map(|&(i, p)| serde_json::json!({"index": i, "class": name(i), "prob": p}))
                    .collect();
                let line = serde_json::json!({
                    "file": path.display().to_string(),
                    "logits": row,
                    "top": topj,
                });
                println!("{line}");
            } else {
                // Escaped as `inspect` prints names: a class file's control characters
                // cannot drive the terminal.
                println!("{}", path.display().to_string().escape_debug());
                for (i, p) in best {
                    println!(
                        "  {:>6.2}%  {:>5}  {}",
                        p * 100.0,
                        i,
                        name(i).escape_debug()
                    );
                }
            }
        }
    }
    Ok(())
}

fn softmax(v: &[f32]) -> Vec<f32> {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f64> = v.iter().map(|&x| ((x - max) as f64).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|&x| (x / s) as f32).collect()
}
