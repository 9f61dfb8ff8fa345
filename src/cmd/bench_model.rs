//! `deit-pipe bench model`: forward and train-step (forward, backward, AdamW)
//! throughput of a model on the CPU or a CUDA device (`--device`), and peak memory.
//! `tools/bench_timm_model.py` times timm on the same configurations (also `--device
//! cuda`, `--amp`); results go to BENCHMARKS.md. `tools/gpu_check.sh` runs both on a GPU.
//!
//! On CUDA the device is synchronized before every timer read (kernels run
//! asynchronously), and peak memory is reported as unavailable: candle keeps no
//! allocator statistics, and the process's resident set says nothing about GPU memory.

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use kernels::fused;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;
use trainer::models::{self, Arch, DeitConfig, ForwardCtx, ModelSpec};
use trainer::train::config::PrecisionMode;
use trainer::train::run::select_device;
use trainer::weights::{self, LoadOptions};

/// Arguments of `deit-pipe bench model`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model: a timm name (`deit_tiny` = deit_tiny_distilled_patch16_224, resnet50, ...),
    /// or `deit_custom` with --patch/--dim/--depth/--heads.
    #[arg(long, default_value = "deit_tiny")]
    pub model: String,
    /// Image side.
    #[arg(long, default_value_t = 224)]
    pub img: usize,
    /// Batch size.
    #[arg(long, default_value_t = 8, value_parser = super::positive)]
    pub batch: usize,
    /// deit_custom: patch size.
    #[arg(long, default_value_t = 16)]
    pub patch: usize,
    /// deit_custom: embedding width.
    #[arg(long, default_value_t = 192)]
    pub dim: usize,
    /// deit_custom: blocks.
    #[arg(long, default_value_t = 12)]
    pub depth: usize,
    /// deit_custom: heads.
    #[arg(long, default_value_t = 3)]
    pub heads: usize,
    /// Classes.
    #[arg(long, default_value_t = 1000)]
    pub num_classes: usize,
    /// Drop-path rate during the train steps (DeiT recipe: 0.1).
    #[arg(long, default_value_t = 0.1)]
    pub drop_path: f64,
    /// Timed iterations of each kind (after 2 warm-up iterations).
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    /// Compute threads (candle's rayon pool and GEMM).
    #[arg(long, default_value_t = 2, value_parser = super::positive)]
    pub threads: usize,
    /// Use candle's composite ops instead of the fused LayerNorm/softmax/GELU kernels.
    #[arg(long)]
    pub no_fused: bool,
    /// Skip the train-step measurement.
    #[arg(long)]
    pub forward_only: bool,
    /// Compute precision (f32, or bf16 mixed precision for a DeiT; auto = f32 on the
    /// CPU). bf16 on the CPU rounds the products' operands in the fused kernels (about
    /// f32's speed); with --no-fused it runs candle's bf16 ops, several times slower.
    #[arg(long, default_value = "f32", value_parser = super::train::parse_precision)]
    pub precision: PrecisionMode,
    /// cpu, cuda or cuda:N (cuda needs a build with --features cuda; see tools/build-cuda.sh).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

fn spec_of(args: &Args) -> anyhow::Result<ModelSpec> {
    let spec = if args.model == "deit_custom" {
        ModelSpec::deit(
            DeitConfig {
                img_size: args.img,
                patch_size: args.patch,
                embed_dim: args.dim,
                depth: args.depth,
                num_heads: args.heads,
                mlp_ratio: 4,
                distilled: true,
            },
            args.num_classes,
            args.drop_path,
        )
    } else {
        ModelSpec::parse(&args.model)?
            .with_num_classes(args.num_classes)
            .with_drop_path(args.drop_path)
            .with_img_size(args.img)?
    };
    Ok(spec)
}

/// Peak resident memory of this process (VmHWM), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Runs `deit-pipe bench model`.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.batch == 0 || args.iters == 0 {
        bail!("--batch and --iters must be positive");
    }
    std::env::set_var("RAYON_NUM_THREADS", args.threads.to_string());
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build_global();
    fused::set_enabled(!args.no_fused);
    let spec = spec_of(&args)?;
    let device = select_device(&args.device)?;
    // Kernels run asynchronously on CUDA: wait for them before reading a timer.
    let sync = |d: &Device| d.synchronize().context("synchronizing the device");
    let (varmap, model, _) = weights::build_model(&spec, None, &LoadOptions::default(), &device, 0)
        .context("building the model")?;
    let params = models::param_count(&varmap);
    let precision = args.precision.resolve(&spec, &device)?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let n = args.batch * 3 * args.img * args.img;
    let data: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    let x = Tensor::from_vec(data, (args.batch, 3, args.img, args.img), &device)?;
    let y: Vec<u32> = (0..args.batch)
        .map(|_| rng.random_range(0..args.num_classes as u32))
        .collect();
    let y = Tensor::from_vec(y, args.batch, &device)?;

    // forward (eval)
    let eval = ForwardCtx::eval().with_precision(precision);
    for _ in 0..2 {
        model.forward(&x, &eval)?.cls.to_dtype(DType::F32)?;
    }
    sync(&device)?;
    let t = Instant::now();
    for _ in 0..args.iters {
        let out = model.forward(&x, &eval)?;
        out.cls.to_vec2::<f32>()?;
    }
    sync(&device)?;
    let fwd = (args.iters * args.batch) as f64 / t.elapsed().as_secs_f64();

    let mut train = None;
    if !args.forward_only {
        // The trainer's optimizer (DeiT's weight-decay groups), as `deit-pipe train` steps.
        let params = models::trainable_vars(&varmap);
        let mut opt =
            trainer::optim::AdamW::new(params.clone(), trainer::optim::AdamWConfig::default())?;
        let mut step = |seed: u64| -> anyhow::Result<()> {
            let out = model.forward(&x, &ForwardCtx::train(seed).with_precision(precision))?;
            let mut loss = candle_nn::loss::cross_entropy(&out.cls, &y)?;
            if let Some(d) = &out.dist {
                loss = ((loss + candle_nn::loss::cross_entropy(d, &y)?)? * 0.5)?;
            }
            let grads = trainer::grads::NamedGrads::from_store(&loss.backward()?, &params);
            opt.step(&grads)?;
            Ok(())
        };
        for s in 0..2 {
            step(s)?;
        }
        sync(&device)?;
        let t = Instant::now();
        for s in 0..args.iters {
            step(100 + s as u64)?;
        }
        sync(&device)?;
        train = Some((args.iters * args.batch) as f64 / t.elapsed().as_secs_f64());
    }
    let shape = match &spec.arch {
        Arch::Deit(c) => format!(
            "img {} patch {} dim {} depth {} heads {}",
            c.img_size, c.patch_size, c.embed_dim, c.depth, c.num_heads
        ),
        _ => format!("img {}", args.img),
    };
    // The fused kernels serve the CPU only (`fused::enabled` checks the device).
    let fused_on = !args.no_fused && device.is_cpu();
    println!(
        "model {} ({shape}), {params} params, batch {}, threads {}, fused {fused_on}, {precision}{}",
        spec.name,
        args.batch,
        args.threads,
        if device.is_cpu() {
            String::new()
        } else {
            format!(", device {}", args.device)
        }
    );
    if device.is_cpu() {
        println!(
            "kernels: {}{}",
            kernels::chosen(),
            if fused_on {
                ""
            } else {
                " (fused kernels off: candle's ops)"
            }
        );
    }
    println!("forward (eval):            {fwd:8.1} img/s");
    if let Some(tr) = train {
        println!("train step (fwd+bwd+AdamW): {tr:8.1} img/s");
    }
    if !device.is_cpu() {
        println!("peak device memory:        unavailable (candle keeps no allocator statistics)");
    } else if let Some(mib) = peak_rss_mib() {
        println!("peak resident memory:      {mib:8.0} MiB");
    }
    Ok(())
}
