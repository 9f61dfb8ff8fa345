//! `deit-pipe train`: train a DeiT student (or a ConvNet teacher) with DeiT's recipe.
//! The config file gives the recipe; flags named as the official DeiT `main.py` flags
//! override single fields; `--set section.key=value` overrides any other field.

use super::view_args::ViewArgs;
use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use std::path::PathBuf;
use trainer::train::config::{DistillationType, Overrides, PrecisionMode, TrainConfig};
use trainer::train::mainpy::{self, ResumeTarget};

/// Arguments of `deit-pipe train`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Recipe (TOML), e.g. configs/deit_tiny.toml. Without it: DeiT-Ti defaults, or the
    /// run directory's config.toml with --resume.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Dataset directory from `deit-pipe shard` (holds train/ and val/).
    #[arg(long)]
    pub data: PathBuf,
    /// Run directory: config.toml, metrics.jsonl, log.txt (main.py's), checkpoints.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue a run. Alone (or naming the --out directory): from the run directory's
    /// last checkpoint. `--resume FILE.pth`: start --out from a checkpoint DeiT's main.py
    /// wrote (output_dir/checkpoint.pth): its weights, AdamW state, EMA and next epoch.
    #[arg(long, value_name = "PATH", num_args = 0..=1)]
    pub resume: Option<Option<PathBuf>>,
    /// Fine-tune from these weights as main.py --finetune: a head whose class count
    /// differs is dropped, the position embedding resampled (bicubic) to this model's
    /// grid. A .pth ({'model': ...}), .safetensors, or a run / checkpoint directory.
    #[arg(long, value_name = "PATH")]
    pub finetune: Option<PathBuf>,
    /// Distillation type: none, hard or soft (DeiT --distillation-type).
    #[arg(long, visible_alias = "distillation-type", value_parser = parse_distill)]
    pub distillation: Option<DistillationType>,
    /// Teacher-cache directory (from `deit-pipe teacher-cache`).
    #[arg(long, conflicts_with = "teacher")]
    pub teacher_targets: Option<PathBuf>,
    /// Teacher for online distillation (DeiT --teacher-path): a weights file, a checkpoint
    /// directory or a `deit-pipe train` run directory (its best checkpoint).
    #[arg(long, visible_alias = "teacher-path")]
    pub teacher: Option<PathBuf>,
    /// Teacher architecture, a timm name (DeiT --teacher-model); default: the model named
    /// in the teacher run's config.toml.
    #[arg(long, visible_alias = "teacher-model")]
    pub teacher_arch: Option<String>,
    /// On a cached view hash that differs from the rebuilt view: count and continue.
    #[arg(long)]
    pub allow_replay_drift: bool,
    /// cpu, cuda or cuda:N (cuda needs a build with --features cuda).
    #[arg(long)]
    pub device: Option<String>,
    /// Compute precision of the DeiT student's forward passes ([run] precision): auto
    /// (bf16 on CUDA, f32 on CPU), f32, or bf16 (mixed precision: bf16 matrix products,
    /// f32 weights, optimizer, LayerNorm, softmax and logits). ConvNets (resnet*, regnety*)
    /// compute in f32 only: bf16 with them is an error, auto gives f32.
    #[arg(long, value_parser = parse_precision)]
    pub precision: Option<PrecisionMode>,
    /// The flags that decide the views (shared with `teacher-cache`).
    #[command(flatten)]
    pub view: ViewArgs,
    /// Model name (timm), e.g. deit_small_distilled_patch16_224 or resnet_small.
    #[arg(long)]
    pub model: Option<String>,
    /// Number of classes (default: the dataset's).
    #[arg(long)]
    pub nb_classes: Option<usize>,
    /// Base learning rate at batch 512 (scaled by global batch / 512).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Use --lr as is, without batch scaling.
    #[arg(long)]
    pub unscale_lr: bool,
    /// Images per forward/backward pass.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step (gradient accumulation).
    #[arg(long)]
    pub accum_steps: Option<usize>,
    /// Epochs.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Warmup epochs.
    #[arg(long)]
    pub warmup_epochs: Option<usize>,
    /// Warmup start learning rate.
    #[arg(long)]
    pub warmup_lr: Option<f64>,
    /// Final learning rate of the cosine.
    #[arg(long)]
    pub min_lr: Option<f64>,
    /// AdamW weight decay.
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// AdamW epsilon.
    #[arg(long)]
    pub opt_eps: Option<f64>,
    /// Optimizer (main.py --opt): adamw, the one implemented; other names are refused.
    #[arg(long, value_name = "NAME")]
    pub opt: Option<String>,
    /// AdamW betas (main.py --opt-betas; default 0.9 0.999).
    #[arg(long, value_name = "BETA", num_args = 2)]
    pub opt_betas: Option<Vec<f64>>,
    /// LR schedule (main.py --sched): cosine (with linear warmup), the one implemented.
    #[arg(long, value_name = "NAME")]
    pub sched: Option<String>,
    /// Extra epochs after --epochs with the lr at the cosine's end, --min-lr (timm
    /// train.py's meaning). Default 0: DeiT's main.py parses this flag (default 10) but
    /// trains --epochs only.
    #[arg(long)]
    pub cooldown_epochs: Option<usize>,
    /// Write TensorBoard event files (scalars) under RUN_DIR/tb.
    #[arg(long)]
    pub tensorboard: bool,
    /// Clip the global gradient norm (0: off).
    #[arg(long)]
    pub clip_grad: Option<f64>,
    /// Stochastic depth rate.
    #[arg(long)]
    pub drop_path: Option<f64>,
    /// Distillation loss weight.
    #[arg(long)]
    pub distillation_alpha: Option<f64>,
    /// Soft distillation temperature.
    #[arg(long)]
    pub distillation_tau: Option<f64>,
    /// Keep an EMA of the weights.
    #[arg(long, conflicts_with = "no_model_ema")]
    pub model_ema: bool,
    /// No EMA.
    #[arg(long)]
    pub no_model_ema: bool,
    /// EMA decay.
    #[arg(long)]
    pub model_ema_decay: Option<f64>,
}

fn parse_distill(s: &str) -> Result<DistillationType, String> {
    s.parse().map_err(|e: anyhow::Error| e.to_string())
}

/// Parses `--precision` (auto, f32, bf16); shared with `deit-pipe eval`.
pub(crate) fn parse_precision(s: &str) -> Result<PrecisionMode, String> {
    s.parse().map_err(|e: anyhow::Error| e.to_string())
}

impl Args {
    /// The overrides these flags carry.
    pub fn overrides(&self) -> Overrides {
        let o = Overrides {
            model: self.model.clone(),
            nb_classes: self.nb_classes,
            lr: self.lr,
            unscale_lr: self.unscale_lr,
            batch_size: self.batch_size,
            accum_steps: self.accum_steps,
            epochs: self.epochs,
            warmup_epochs: self.warmup_epochs,
            warmup_lr: self.warmup_lr,
            min_lr: self.min_lr,
            weight_decay: self.weight_decay,
            opt_eps: self.opt_eps,
            clip_grad: self.clip_grad,
            drop_path: self.drop_path,
            distillation_type: self.distillation,
            distillation_alpha: self.distillation_alpha,
            distillation_tau: self.distillation_tau,
            teacher_targets: self.teacher_targets.clone(),
            teacher: self.teacher.clone(),
            teacher_arch: self.teacher_arch.clone(),
            allow_replay_drift: self.allow_replay_drift,
            model_ema: match (self.model_ema, self.no_model_ema) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
            model_ema_decay: self.model_ema_decay,
            device: self.device.clone(),
            precision: self.precision,
            cooldown_epochs: self.cooldown_epochs,
            finetune: self.finetune.clone(),
            ..Overrides::default()
        };
        self.view.add_to(o)
    }

    /// Whether to continue the --out run from its last checkpoint.
    pub fn resume_run(&self) -> bool {
        matches!(
            mainpy::resume_target(&self.resume, &self.out),
            Ok(ResumeTarget::RunDir)
        )
    }

    /// The resolved config: file (or the run's saved config on resume, or defaults),
    /// then the overrides.
    pub fn resolve_config(&self) -> Result<TrainConfig> {
        let saved = self.out.join(trainer::train::CONFIG_FILE);
        let mut cfg = match (&self.config, self.resume_run() && saved.is_file()) {
            (Some(path), _) => TrainConfig::from_file(path)?,
            (None, true) => TrainConfig::from_file(&saved)
                .with_context(|| format!("the run's saved config {}", saved.display()))?,
            (None, false) => TrainConfig::default(),
        };
        let mut o = self.overrides();
        self.add_mainpy_overrides(&mut o)?;
        cfg.apply(&o)?;
        let set_multiple = self
            .view
            .set
            .iter()
            .any(|s| s.trim_start().starts_with("plan.num_samples_multiple"));
        if self.config.is_none() && !(self.resume_run() && saved.is_file()) && !set_multiple {
            mainpy_sampler(&mut cfg);
        }
        Ok(cfg)
    }

    /// Check `--opt` and `--sched`, and fill the override of `--opt-betas`.
    fn add_mainpy_overrides(&self, o: &mut Overrides) -> Result<()> {
        if let Some(name) = &self.opt {
            mainpy::check_opt(name)?;
        }
        if let Some(name) = &self.sched {
            mainpy::check_sched(name)?;
        }
        if let Some(b) = &self.opt_betas {
            o.opt_betas = Some(mainpy::opt_betas(b)?);
        }
        let target = mainpy::resume_target(&self.resume, &self.out)?;
        mainpy::check_resume_finetune(&target, self.finetune.as_deref())
    }

    /// `--teacher` / `--teacher-targets` given with `--distillation none`, or naming a
    /// path that does not exist, is an error (a teacher only in the config file is a
    /// warning).
    fn check_teacher(&self, cfg: &TrainConfig) -> Result<()> {
        let from_flags = self.teacher.is_some() || self.teacher_targets.is_some();
        mainpy::check_teacher(cfg, from_flags)
    }
}

/// main.py's sampler for a run from flags alone: RASampler (repeated augmentation) rounds
/// an epoch to `floor(N / 256) * 256` samples, but without it (`--no-repeated-aug`) main.py
/// uses a DistributedSampler, which rounds nothing (the loader drops the last partial
/// batch). So with 1 repeat the epoch is every image (`plan.num_samples_multiple = 1`,
/// recorded in the run's config.toml), unless `--set plan.num_samples_multiple` said
/// otherwise.
fn mainpy_sampler(cfg: &mut TrainConfig) {
    if cfg.plan.repeats == 1 {
        cfg.plan.num_samples_multiple = 1;
    }
}

/// Environment variable that makes the process abort right after the given optimizer
/// step (crash tests of `--resume`; never set it otherwise).
pub const ABORT_AT_STEP_ENV: &str = "DEIT_PIPE_ABORT_AT_STEP";

/// Environment variable that makes the process hang (sleep) right after the given
/// optimizer step, like a stuck rank (failure tests of data-parallel jobs; never set it
/// otherwise).
pub const STALL_AT_STEP_ENV: &str = "DEIT_PIPE_STALL_AT_STEP";

/// Environment variable: seconds rank 0 sleeps before every checkpoint write, like a
/// slow network filesystem (tests of the data-parallel waits; never set it otherwise).
pub const SLOW_CHECKPOINT_ENV: &str = "DEIT_PIPE_SLOW_CHECKPOINT_S";

/// Progress bars: one per epoch (img/s, loss, lr, whole-run ETA) and one per evaluation.
struct Bars {
    bar: Option<indicatif::ProgressBar>,
    loss: f64,
    batches: usize,
    /// Whole-run ETA: start of this process's training, batches trained, batches left.
    run: (std::time::Instant, u64, u64),
}

impl trainer::train::TrainProgress for Bars {
    fn epoch_start(&mut self, epoch: usize, epochs: usize, batches: usize, skip: usize) {
        let bar = crate::progress::train_bar(batches as u64, &format!("ep {}/{epochs}", epoch + 1));
        bar.set_position(skip as u64);
        self.run.2 = ((epochs - epoch) * batches - skip) as u64;
        bar.reset_eta();
        self.bar = Some(bar);
        self.loss = 0.0;
        self.batches = 0;
    }
    fn batch(&mut self, images: usize, loss: f64, lr: f64) {
        self.loss += loss;
        self.batches += 1;
        if let Some(b) = &self.bar {
            b.inc(1);
            self.run.1 += 1;
            self.run.2 = self.run.2.saturating_sub(1);
            let eta = crate::progress::run_eta(self.run.0.elapsed(), self.run.1, self.run.2);
            b.set_message(crate::progress::train_message(
                b.position(),
                b.length().unwrap_or(0),
                b.per_sec() * images as f64,
                self.loss / self.batches as f64,
                lr,
                eta,
            ));
        }
    }
    fn eval_start(&mut self, images: usize) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        self.bar = Some(crate::progress::bar(images as u64, "eval", "img"));
    }
    fn eval_batch(&mut self, images: usize) {
        if let Some(b) = &self.bar {
            b.inc(images as u64);
        }
    }
    fn epoch_end(&mut self, r: &trainer::train::metrics::EpochRecord) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        match &r.val {
            Some(v) => tracing::info!(
                "epoch {}: lr {:.3e} train loss {:.4} | val loss {:.4} top-1 {:.2} top-5 {:.2} \
                 (cls {:.2}, dist {}) | {:.0} img/s",
                r.epoch,
                r.lr,
                r.train_loss,
                v.loss,
                v.top1,
                v.top5,
                v.top1_cls,
                v.top1_dist.map_or("-".into(), |d| format!("{d:.2}")),
                r.img_per_s
            ),
            None => tracing::info!(
                "epoch {}: lr {:.3e} train loss {:.4} | {:.0} img/s",
                r.epoch,
                r.lr,
                r.train_loss,
                r.img_per_s
            ),
        }
    }
}

/// Run `deit-pipe train`.
pub fn run(args: Args) -> Result<()> {
    let mut cfg = args.resolve_config()?;
    // One rank, or one of an MPI job (`mpirun -np N deit-pipe train ...`).
    let transport = if cfg.run.device.starts_with("cuda") {
        crate::dist::Transport::Gpu
    } else {
        crate::dist::Transport::Host
    };
    let comm = crate::dist::join(transport)?;
    cfg.run.device = crate::dist::device_for_rank(&cfg.run.device, comm.as_ref());
    let target = mainpy::resume_target(&args.resume, &args.out)?;
    args.check_teacher(&cfg)?;
    super::run_dir::claim(&args.out)?;
    if let Some(id) = super::run_dir::run_id(&args.out) {
        tracing::debug!("run folder {}: run id {id}", args.out.display());
    }
    // One writer per run folder: rank 0 (the only rank that writes it) holds the lock
    // until training ends; every rank learns whether it got it.
    let lock = if comm.is_primary() {
        formats::lock::OutputLock::acquire(&args.out, formats::lock::LOCK_FILE)
            .map(Some)
            .with_context(|| format!("--out {}", args.out.display()))
    } else {
        Ok(None)
    };
    let _lock = trainer::dist::agree_ok(comm.as_ref(), lock, "to lock the run folder")?;
    let mut job =
        trainer::train::TrainJob::new(cfg, &args.data, &args.out, target == ResumeTarget::RunDir);
    if let ResumeTarget::MainPy(p) = target {
        job.start_from = Some(p);
    }
    job.tensorboard = args.tensorboard;
    if let Ok(v) = std::env::var(ABORT_AT_STEP_ENV) {
        job.abort_at_step = Some(
            v.parse()
                .with_context(|| format!("{ABORT_AT_STEP_ENV}={v:?} is not a number"))?,
        );
    }
    if let Ok(v) = std::env::var(STALL_AT_STEP_ENV) {
        job.stall_at_step = Some(
            v.parse()
                .with_context(|| format!("{STALL_AT_STEP_ENV}={v:?} is not a number"))?,
        );
    }
    if let Ok(v) = std::env::var(SLOW_CHECKPOINT_ENV) {
        let s: f64 = v
            .parse()
            .with_context(|| format!("{SLOW_CHECKPOINT_ENV}={v:?} is not a number"))?;
        job.slow_checkpoint = Some(std::time::Duration::from_secs_f64(s.max(0.0)));
    }
    let mut bars = Bars {
        bar: None,
        loss: 0.0,
        batches: 0,
        run: (std::time::Instant::now(), 0, 0),
    };
    let summary = trainer::train::train_with(&job, &mut bars, comm.as_ref())?;
    if !comm.is_primary() {
        return Ok(());
    }
    if let Some(b) = bars.bar.take() {
        b.finish_and_clear();
    }
    println!(
        "trained {} epochs ({} steps) into {}",
        summary.epochs_done,
        summary.global_step,
        args.out.display()
    );
    if let Some(v) = &summary.last_eval {
        println!(
            "last val: loss {:.4} top-1 {:.2}% top-5 {:.2}% (cls head {:.2}%{})",
            v.loss,
            v.top1,
            v.top5,
            v.top1_cls,
            v.top1_dist
                .map_or(String::new(), |d| format!(", dist head {d:.2}%"))
        );
    }
    if let Some(b) = &summary.best {
        println!("best val top-1 {:.2}% at epoch {}", b.top1, b.epoch);
    }
    if summary.replay_drift > 0 {
        println!(
            "warning: {} views differed from the teacher cache (replay drift)",
            summary.replay_drift
        );
    }
    Ok(())
}
