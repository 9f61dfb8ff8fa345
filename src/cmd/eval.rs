//! `deit-pipe eval`: loss, top-1 and top-5 of the class head, the distillation head and
//! their mean for any checkpoint (a run's, or official DeiT / timm weights) on a split.

use anyhow::Result;
use clap::Args as ClapArgs;
use std::path::PathBuf;
use trainer::train::config::{PrecisionMode, TrainConfig};
use trainer::train::eval_job::{evaluate_weights, EvalJob};

use super::model_args::ModelArgs;

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
    /// Model and eval-transform flags.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Recipe whose model and eval transform to use (default: the run's config.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
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
        model: args.model.model.clone(),
        shape: args.model.shape(),
        config,
        crop_pct: args.model.crop_pct,
        interpolation: args.model.interpolation,
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
    let t = &report.transform;
    println!(
        "  eval transform: shorter side to {} ({}, crop_pct {}), centre crop {}",
        t.resize_side(),
        t.filter,
        t.crop_pct,
        t.size
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
