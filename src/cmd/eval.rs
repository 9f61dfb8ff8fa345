//! `deit-pipe eval`: loss, top-1 and top-5 of the class head, the distillation head and
//! their mean for any checkpoint (a run's, or official DeiT / timm weights) on a split.

use anyhow::Result;
use clap::Args as ClapArgs;
use std::path::PathBuf;
use trainer::train::config::{PrecisionMode, TrainConfig};
use trainer::train::eval_job::{evaluate_weights, EvalJob};

/// Arguments of `deit-pipe eval`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Weights: a .safetensors/.pth file, a checkpoint directory or a run directory (best).
    #[arg(long)]
    pub weights: PathBuf,
    /// Dataset directory from `deit-pipe shard`.
    #[arg(long)]
    pub data: PathBuf,
    /// Split to evaluate.
    #[arg(long, default_value = "val")]
    pub split: String,
    /// Model name (timm), e.g. deit_tiny_distilled_patch16_224 (default: the run's config,
    /// else inferred from DeiT weights).
    #[arg(long)]
    pub model: Option<String>,
    /// Recipe whose eval transform to use (default: the run's config.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Input size.
    #[arg(long)]
    pub input_size: Option<u32>,
    /// Eval crop fraction (resize to size / crop_pct, centre crop).
    #[arg(long, alias = "eval-crop-ratio")]
    pub crop_pct: Option<f64>,
    /// Batch size.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Evaluate the checkpoint's EMA weights.
    #[arg(long)]
    pub ema: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute precision of the DeiT's forward passes: auto (bf16 on CUDA, f32 on CPU),
    /// f32 or bf16 (default: the run's [run] precision, else auto). ConvNets compute in
    /// f32 only (bf16 with them is an error).
    #[arg(long, value_parser = super::train::parse_precision)]
    pub precision: Option<PrecisionMode>,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Run `deit-pipe eval`.
pub fn run(args: Args) -> Result<()> {
    let config = args
        .config
        .as_deref()
        .map(TrainConfig::from_file)
        .transpose()?;
    let job = EvalJob {
        weights: args.weights.clone(),
        data_dir: args.data.clone(),
        split: args.split.clone(),
        model: args.model.clone(),
        config,
        input_size: args.input_size,
        crop_pct: args.crop_pct,
        batch_size: args.batch_size,
        ema: args.ema,
        device: args.device.clone(),
        precision: args.precision,
    };
    // The split's size for the bar (errors surface in evaluate_weights with context).
    let total = formats::shard::ShardSet::open(&args.data.join(&args.split))
        .map(|s| s.len() as u64)
        .unwrap_or(0);
    let bar = crate::progress::bar(total, "eval", "img");
    let report = evaluate_weights(&job, &mut |n| bar.inc(n as u64))?;
    bar.finish_and_clear();
    let s = &report.summary;
    if args.json {
        println!("{}", serde_json::to_string_pretty(s)?);
        return Ok(());
    }
    println!(
        "{} ({}, {}) on {} images",
        report.weights.display(),
        report.model,
        report.precision,
        s.images
    );
    println!("  loss {:.4}", s.loss);
    println!(
        "  top-1 {:.2}%  top-5 {:.2}%  (mean of heads)",
        s.top1, s.top5
    );
    println!(
        "  cls head   top-1 {:.2}%  top-5 {:.2}%",
        s.top1_cls, s.top5_cls
    );
    if let (Some(t1), Some(t5)) = (s.top1_dist, s.top5_dist) {
        println!("  dist head  top-1 {t1:.2}%  top-5 {t5:.2}%");
    }
    Ok(())
}
