//! `deit-pipe predict`: classify image files with a DeiT / ResNet / RegNetY checkpoint
//! (timm or official DeiT weights), through the eval transform of `pipeline`
//! (shorter side to int(size / 0.875) bicubic, centre crop, normalize), printing the
//! top-5 classes with probabilities, or with `--json` the logits and top-5 per image.
//! The forward pass is f32 on the chosen `--device` (cpu, cuda or cuda:N);
//! `tools/gpu_check.sh` compares the CUDA logits with the CPU ones.

use anyhow::{bail, Context};
use candle_core::Tensor;
use pipeline::config::AugmentConfig;
use pipeline::transforms::eval::eval_view;
use pipeline::transforms::normalize::Normalizer;
use std::path::PathBuf;
use trainer::models::{ForwardCtx, ModelSpec};
use trainer::train::run::select_device;
use trainer::weights::{self, LoadOptions};

/// Arguments of `deit-pipe predict`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Weights: .safetensors, or a PyTorch .pth / .pt checkpoint (state dict or {'model': ...}).
    #[arg(long)]
    pub weights: PathBuf,
    /// timm model name (deit_tiny_distilled_patch16_224, deit_small_patch16_224, resnet18,
    /// resnet50, regnety_016, regnety_160, resnet_small, ...).
    #[arg(long)]
    pub model: String,
    /// Number of classes of the checkpoint (default: 1000; 10 for resnet_small).
    #[arg(long)]
    pub num_classes: Option<usize>,
    /// Input image size (default: the model's, 224 for the ImageNet models).
    #[arg(long)]
    pub img_size: Option<usize>,
    /// Class names, one per line, in class-index order.
    #[arg(long)]
    pub classes: Option<PathBuf>,
    /// Print JSON lines: per image the file, the logits and the top-5.
    #[arg(long)]
    pub json: bool,
    /// How many classes to print per image.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// cpu, cuda or cuda:N (cuda needs a build with --features cuda; see tools/build-cuda.sh).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Image files.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

/// Runs `deit-pipe predict`.
pub fn run(args: Args) -> anyhow::Result<()> {
    // The device first: a CPU-only build refuses `--device cuda` before any other work.
    let device = select_device(&args.device)?;
    let mut spec = ModelSpec::parse(&args.model)?;
    if let Some(c) = args.num_classes {
        if c == 0 {
            bail!("--num-classes must be positive");
        }
        spec = spec.with_num_classes(c);
    }
    if let Some(s) = args.img_size {
        spec = spec.with_img_size(s)?;
    }
    let classes = match &args.classes {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading class names {}", p.display()))?;
            let names: Vec<String> = text
                .lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect();
            if names.len() != spec.num_classes {
                bail!(
                    "{} lists {} classes but the model has {} (set --num-classes)",
                    p.display(),
                    names.len(),
                    spec.num_classes
                );
            }
            Some(names)
        }
        None => None,
    };
    let (_vm, model, _) = weights::build_model(
        &spec,
        Some(&args.weights),
        &LoadOptions::default(),
        &device,
        0,
    )
    .with_context(|| format!("loading {} into {}", args.weights.display(), spec.name))?;
    let size = spec.img_size() as u32;
    let cfg = if size <= 32 {
        AugmentConfig::small_image(size)
    } else {
        AugmentConfig {
            input_size: size,
            ..AugmentConfig::default()
        }
    };
    let norm = Normalizer::new(cfg.mean, cfg.std);
    let plane = 3 * (size * size) as usize;
    let top = args.top.min(spec.num_classes).max(1);
    for chunk in args.images.chunks(args.batch.max(1)) {
        let mut data = vec![0f32; plane * chunk.len()];
        for (path, out) in chunk.iter().zip(data.chunks_mut(plane)) {
            let img = image::open(path)
                .with_context(|| format!("decoding image {}", path.display()))?
                .into_rgb8();
            eval_view(&img, &cfg, &norm, out)
                .with_context(|| format!("eval transform of {}", path.display()))?;
        }
        let x = Tensor::from_vec(
            data,
            (chunk.len(), 3, size as usize, size as usize),
            &device,
        )?;
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
                println!("{}", path.display());
                for (i, p) in best {
                    println!("  {:>6.2}%  {:>5}  {}", p * 100.0, i, name(i));
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
