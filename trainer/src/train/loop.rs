//! The training loop: DeiT's recipe over the streaming loader, with per-epoch lr,
//! AdamW groups, stochastic depth seeded per step, optional EMA and clipping, gradient
//! accumulation, evaluation each epoch, atomic checkpoints and exact resumption.
//!
//! Determinism: the epoch plan and every view derive from (run seed, epoch, slot), the
//! drop-path masks from (run seed, epoch, micro-batch); the optimizer and EMA state are
//! checkpointed exactly. A checkpoint marks an optimizer-step boundary, so resuming from
//! it replays the same sequence of operations as an uninterrupted run.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use pipeline::loader::{Loader, LoaderOptions};
use pipeline::plan::EpochPlan;
use pipeline::source::{RecordSource, ShardSource};
use pipeline::view::ViewBuilder;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::checkpoint::{
    write_atomic, BestMetric, CheckpointStore, TrainState, EMA_FILE, MODEL_FILE, OPTIMIZER_FILE,
    STATE_VERSION,
};
use super::config::{DistillationType, TrainConfig};
use super::eval::{evaluate_distributed, EvalModel, EvalSummary};
use super::metrics::{EpochRecord, MetricRecord, MetricsWriter, StepRecord};
use super::teacher::{data_binding, TeacherSource};
use super::CONFIG_FILE;
use crate::clip::clip_grad_norm;
use crate::dist::{mean_gradients, mean_variables, sum_scalars, Collective, SingleProcess};
use crate::ema::ModelEma;
use crate::grads::{GradAccumulator, NamedGrads};
use crate::loss::{BaseCriterion, DistillationKind, DistillationLoss, Targets};
use crate::models::{self, Arch, Classifier, ForwardCtx, ModelSpec, Precision};
use crate::optim::{AdamW, AdamWConfig};
use crate::weights::{load_into, save_safetensors, LoadOptions};

/// One training run.
#[derive(Clone, Debug)]
pub struct TrainJob {
    /// The resolved configuration.
    pub config: TrainConfig,
    /// Dataset directory with `train/` and `val/` shards.
    pub data_dir: PathBuf,
    /// Run directory.
    pub run_dir: PathBuf,
    /// Continue from the run directory's last checkpoint.
    pub resume: bool,
    /// Return after this many epochs were finished by this call (checkpoint written), as
    /// if the process had been stopped there; for tests and time-boxed jobs.
    pub stop_after_epochs: Option<usize>,
    /// Return right after this global optimizer step (inside an epoch), with a checkpoint
    /// written there, as if the process had been stopped; for tests.
    pub stop_at_step: Option<u64>,
    /// Abort the process (no clean-up, like a kill) right after this global optimizer
    /// step; for crash tests only.
    pub abort_at_step: Option<u64>,
    /// Stop making progress (sleep) right after this global optimizer step, like a hung
    /// rank of a data-parallel job; for failure tests only.
    pub stall_at_step: Option<u64>,
    /// Sleep this long before every checkpoint write, like a slow network filesystem;
    /// for tests of the data-parallel waits only.
    pub slow_checkpoint: Option<std::time::Duration>,
    /// Start a new run from a DeiT `main.py` checkpoint (`train --resume FILE.pth`):
    /// weights, AdamW state, EMA and next epoch ([`super::mainpy::resume`]).
    pub start_from: Option<PathBuf>,
    /// Also write TensorBoard event files under `RUN_DIR/tb` (`--tensorboard`).
    pub tensorboard: bool,
}

impl TrainJob {
    /// A job with no early stop.
    pub fn new(config: TrainConfig, data_dir: &Path, run_dir: &Path, resume: bool) -> Self {
        TrainJob {
            config,
            data_dir: data_dir.to_path_buf(),
            run_dir: run_dir.to_path_buf(),
            resume,
            stop_after_epochs: None,
            stop_at_step: None,
            abort_at_step: None,
            stall_at_step: None,
            slow_checkpoint: None,
            start_from: None,
            tensorboard: false,
        }
    }
}

/// Progress callbacks (the CLI draws a bar); every method has an empty default.
pub trait TrainProgress {
    /// An epoch starts: `batches` micro-batches, of which the first `skip` are replayed
    /// without training (mid-epoch resume).
    fn epoch_start(&mut self, _epoch: usize, _epochs: usize, _batches: usize, _skip: usize) {}
    /// A micro-batch was trained.
    fn batch(&mut self, _images: usize, _loss: f64, _lr: f64) {}
    /// Evaluation starts over `images` images.
    fn eval_start(&mut self, _images: usize) {}
    /// An eval batch of `images` images is done.
    fn eval_batch(&mut self, _images: usize) {}
    /// An epoch ended (training, evaluation and checkpoint).
    fn epoch_end(&mut self, _record: &EpochRecord) {}
}

/// Progress that shows nothing.
pub struct NoProgress;
impl TrainProgress for NoProgress {}

/// What a finished (or stopped) run reports.
#[derive(Clone, Debug)]
pub struct TrainSummary {
    /// Epochs finished in all (including those before a resume).
    pub epochs_done: usize,
    /// Optimizer steps in all.
    pub global_step: u64,
    /// Last evaluation.
    pub last_eval: Option<EvalSummary>,
    /// Best evaluation.
    pub best: Option<BestMetric>,
    /// Whether `stop_after_epochs` ended the call before the last epoch.
    pub stopped_early: bool,
    /// Views whose cached hash differed (`--allow-replay-drift`).
    pub replay_drift: u64,
    /// The last checkpoint directory.
    pub last_checkpoint: Option<PathBuf>,
}

/// Pick the device: `cpu`, `cuda` or `cuda:N` (CUDA needs the `cuda` feature).
pub fn select_device(name: &str) -> Result<Device> {
    let ordinal = match name {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        other => match other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) => n,
            None => bail!("device '{other}': expected cpu, cuda or cuda:N"),
        },
    };
    if !cfg!(feature = "cuda") {
        bail!(
            "device '{name}': this binary was built without CUDA support; rebuild with \
             `cargo build --release --features cuda` (see tools/build-cuda.sh) or use --device cpu"
        );
    }
    Device::new_cuda(ordinal).with_context(|| format!("opening CUDA device {ordinal}"))
}

/// Seed of the drop-path masks of optimizer step `batch` of `epoch` (counted from the
/// epoch's start; every micro-batch of a step shares it, see `BatchShard::micro_batch`).
pub fn step_seed(run_seed: u64, epoch: usize, batch: usize) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(b"deit-pipe drop-path v1");
    h.update(&run_seed.to_le_bytes());
    h.update(&(epoch as u64).to_le_bytes());
    h.update(&(batch as u64).to_le_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_le_bytes(b)
}

/// Whether a spec is a DeiT with the distillation head.
pub fn is_distilled(spec: &ModelSpec) -> bool {
    matches!(&spec.arch, Arch::Deit(c) if c.distilled)
}

/// The model for evaluation: a distilled DeiT is rebuilt over the same variables with
/// drop path 0, so that its train-mode forward gives both heads without randomness.
pub fn eval_twin(
    spec: &ModelSpec,
    varmap: &VarMap,
    device: &Device,
) -> Result<Option<Box<dyn Classifier>>> {
    if !is_distilled(spec) {
        return Ok(None);
    }
    let twin = spec.clone().with_drop_path(0.0);
    let vb = VarBuilder::from_varmap(varmap, DType::F32, device);
    Ok(Some(
        models::build(&twin, vb).context("building the eval model")?,
    ))
}

fn open_split(data_dir: &Path, split: &str) -> Result<Arc<ShardSource>> {
    let dir = data_dir.join(split);
    let src = ShardSource::open(&dir)
        .with_context(|| format!("opening the {split} split {}", dir.display()))?;
    Ok(Arc::new(src))
}

/// The val split must hold records (a run that evaluates nothing would log 0.00 every
/// epoch) and train's classes, by name and in order.
fn check_eval_split(data_dir: &Path, train: &ShardSource, val: &ShardSource) -> Result<()> {
    if val.len() == 0 {
        bail!(
            "{}: the val split has 0 records, so every evaluation would score nothing;              shard a labelled val split (for ImageNet's flat val/: `shard --val-labels`), or              train without evaluation (--set run.eval_every=0)",
            data_dir.join("val").display()
        );
    }
    let (t, v) = (
        &train.shards().manifest().classes,
        &val.shards().manifest().classes,
    );
    if let Some(diff) = pipeline::ingest::val_labels::class_mismatch("train", t, "val", v) {
        bail!(
            "{}: the val split's class list differs from the train split's ({diff});              re-shard val on train's classes (a val list written after train takes them)",
            data_dir.display()
        );
    }
    Ok(())
}

fn loader_threads(workers: usize) -> usize {
    if workers > 0 {
        workers
    } else {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    }
}

/// Every variable finite (checked before a checkpoint is written).
fn check_finite(varmap: &VarMap) -> Result<()> {
    for (name, var) in models::trainable_vars(varmap) {
        let s = var
            .as_tensor()
            .to_dtype(DType::F32)?
            .abs()?
            .sum_all()?
            .to_scalar::<f32>()?;
        if !s.is_finite() {
            bail!("parameter {name} holds non-finite values");
        }
    }
    Ok(())
}

/// Run (or continue) training in this process alone.
pub fn train(job: &TrainJob, progress: &mut dyn TrainProgress) -> Result<TrainSummary> {
    train_with(job, progress, &SingleProcess)
}

/// Run (or continue) training as one rank of a data-parallel job over `comm`.
///
/// Every rank runs this with the same job. Each reads the same epoch plan, trains on its
/// pairs (`EpochPlan::rank_pairs(rank, world)`) with `batch_size` images per pass, and
/// the ranks average their gradients (one flat all-reduce per optimizer step) before the
/// same AdamW step, so their weights stay identical. The global batch is `batch_size *
/// accum_steps * world` and the learning rate scales with it. Drop-path masks are drawn
/// for the global batch ([`crate::models::layers::BatchShard`]), so `world` ranks with
/// batch `B / world` train the same model as one process with batch `B`, up to the order
/// of float sums. Rank 0 alone writes the config, checkpoints and metrics and reports
/// progress; evaluation is split over the ranks and its counts added. With
/// [`SingleProcess`] this is exactly [`train`].
pub fn train_with(
    job: &TrainJob,
    progress: &mut dyn TrainProgress,
    comm: &dyn Collective,
) -> Result<TrainSummary> {
    let (rank, world) = (comm.rank(), comm.world());
    let primary = comm.is_primary();
    // Every rank trains with rank 0's settings and its --resume decision
    // (`dist_start`); one process keeps its own.
    job.config.validate()?;
    let (cfg_of_job, resume) = super::dist_start::agree_on_config(comm, &job.config, job.resume)?;
    let cfg = &cfg_of_job;
    cfg.validate()?;
    let device = select_device(&cfg.run.device)?;
    let seed = cfg.run.seed;
    let mut no_progress = NoProgress;
    let progress: &mut dyn TrainProgress = if primary { progress } else { &mut no_progress };

    // Data.
    let train_src = open_split(&job.data_dir, "train")?;
    let fingerprint = train_src.shards().fingerprint().to_string();
    let data_classes = train_src.num_classes();
    let num_classes = match cfg.model.num_classes {
        Some(n) if n < data_classes => bail!(
            "model.num_classes = {n} but the dataset {} has {data_classes} classes",
            job.data_dir.display()
        ),
        Some(n) => n,
        None => data_classes,
    };
    let val_src = if cfg.run.eval_every > 0 {
        let v = open_split(&job.data_dir, "val")?;
        check_eval_split(&job.data_dir, &train_src, &v)?;
        Some(v)
    } else {
        None
    };
    let img_size = cfg.augment.input_size as usize;
    let spec = cfg.model.spec(num_classes, img_size)?;
    let kind = cfg.distillation.kind;
    if kind != DistillationType::None && !is_distilled(&spec) {
        bail!(
            "distillation type {kind:?} needs a model with a distillation head; {} has none \
             (use a *_distilled_* DeiT or model.distilled = true)",
            spec.name
        );
    }
    let precision = cfg
        .run
        .precision
        .resolve(&spec, &device)
        .context("[run] precision")?;
    tracing::info!(
        "{} on {}: computing in {precision} (run.precision = {})",
        spec.name,
        cfg.run.device,
        cfg.run.precision
    );
    // The CPU kernels' instruction set, in every metrics record and in config.toml.
    let host = kernels::isa::host();
    let kernels_isa = device.is_cpu().then(|| host.active.name().to_string());
    if device.is_cpu() {
        tracing::info!("host: {}; kernels: {}", host.line(), kernels::chosen());
    }

    // Run directory, config, checkpoints: rank 0 alone reads and writes them; the other
    // ranks learn from it which checkpoint the job continues from (`dist_start`), so
    // they need no access to rank 0's --out.
    let config_path = job.run_dir.join(CONFIG_FILE);
    let mut store = None;
    let found = if primary {
        open_run_dir(job, cfg, resume, world, &fingerprint).map(|(st, ck)| {
            store = Some(st);
            ck
        })
    } else {
        Ok(None)
    };
    let resume_from = super::dist_start::agree_on_start(
        comm,
        &job.run_dir,
        found,
        &cfg.hash_hex(),
        &fingerprint,
    )?;
    if resume_from.is_none() && primary {
        // The host as a comment: the config (and its hash) stay what the user asked for.
        let text = format!("{}\n# written on host: {}\n", cfg.to_toml()?, host.line());
        write_atomic(&config_path, text.as_bytes())?;
    }
    let classes_path = job.run_dir.join(super::CLASSES_FILE);
    if primary && !classes_path.is_file() {
        let names = &train_src.shards().manifest().classes;
        write_atomic(&classes_path, &serde_json::to_vec_pretty(names)?)?;
    }

    // Model, optimizer, EMA.
    let varmap = VarMap::new();
    let model = models::build(&spec, VarBuilder::from_varmap(&varmap, DType::F32, &device))
        .with_context(|| format!("building {}", spec.name))?;
    models::init_weights(&spec, &varmap, seed)?;
    // Rank 0 alone reads the files the weights come from; the others receive them
    // (`dist_start::share_state` below).
    let initial = (|| -> Result<Option<super::mainpy::MainPyCheckpoint>> {
        if !primary || resume_from.is_some() {
            return Ok(None);
        }
        if let Some(p) = &cfg.model.init_weights {
            let opts = LoadOptions {
                partial: cfg.model.init_partial,
            };
            load_into(&varmap, &spec, p, &opts)?;
        }
        if let Some(p) = &cfg.model.finetune {
            super::mainpy::load_finetune(&varmap, &spec, p)?;
        }
        match &job.start_from {
            Some(p) => {
                let ck = super::mainpy::MainPyCheckpoint::read(p)?;
                ck.load_model(&varmap, &spec)?;
                Ok(Some(ck))
            }
            None => Ok(None),
        }
    })();
    let mainpy = crate::dist::agree_ok(comm, initial, "to load the initial weights")?;
    let twin = eval_twin(&spec, &varmap, &device)?;
    let params = models::trainable_vars(&varmap);
    // Variables that are not trained but updated by the forward pass (BatchNorm's
    // running statistics): averaged over the ranks after each step.
    let buffers: Vec<(String, candle_core::Var)> = if world > 1 {
        crate::grads::named_vars(&varmap)?
            .into_iter()
            .filter(|(n, _)| models::is_buffer(n))
            .collect()
    } else {
        Vec::new()
    };
    let sched = cfg.schedule_for_world(world);
    sched.validate()?;
    let mut opt = AdamW::new(
        params.clone(),
        AdamWConfig {
            lr: sched.initial_lr(),
            betas: (cfg.optim.opt_betas[0], cfg.optim.opt_betas[1]),
            eps: cfg.optim.opt_eps,
            weight_decay: cfg.optim.weight_decay,
        },
    )?;
    let mut ema = if cfg.ema.enabled {
        Some(ModelEma::from_varmap(cfg.ema.decay, &varmap)?)
    } else {
        None
    };

    let mut state = TrainState {
        version: STATE_VERSION,
        epoch: 0,
        batch_in_epoch: 0,
        global_step: 0,
        images_seen: 0,
        best: None,
        config_hash: cfg.hash_hex(),
        dataset_fingerprint: fingerprint.clone(),
        epoch_loss_sum: 0.0,
        epoch_batches: 0,
        world_size: world,
    };
    let mut last_checkpoint = resume_from.as_ref().map(|ck| ck.dir.clone());
    let loaded = (|| -> Result<()> {
        match (&resume_from, primary) {
            (Some(ck), true) => {
                load_into(&varmap, &spec, &ck.model_path(), &LoadOptions::default())
                    .with_context(|| format!("resuming from {}", ck.dir.display()))?;
                opt.load(&ck.optimizer_path())?;
                if let Some(e) = ema.as_mut() {
                    *e = ModelEma::load(&ck.ema_path(), &device)?;
                }
                state = ck.state.clone();
                tracing::info!(
                    "resuming {} at epoch {} batch {} (step {})",
                    job.run_dir.display(),
                    state.epoch,
                    state.batch_in_epoch,
                    state.global_step
                );
            }
            // The other ranks take the state with rank 0's weights below.
            (Some(ck), false) => state = ck.state.clone(),
            (None, _) => {}
        }
        if let Some(ck) = &mainpy {
            let (epoch, steps) = ck.restore(&spec, &varmap, &mut opt, ema.as_mut(), &device)?;
            state.epoch = epoch;
            state.global_step = steps;
            tracing::info!(
                "starting from main.py checkpoint {} at epoch {epoch} (step {steps})",
                ck.path.display()
            );
        }
        Ok(())
    })();
    crate::dist::agree_ok(comm, loaded, "to load the checkpoint")?;
    // One start for every rank: rank 0's weights, optimizer moments, EMA and state
    // (epoch, step) are broadcast and every rank checks it holds the same.
    if let Some(digest) =
        super::dist_start::share_state(comm, &varmap, &mut opt, &mut ema, &mut state, &device)?
    {
        tracing::info!(
            "rank {rank} of {world}: starting from state {digest} ({}), the same on every rank",
            last_checkpoint
                .as_ref()
                .map_or("rank 0's initial weights".to_string(), |d| format!(
                    "checkpoint {}",
                    d.display()
                ))
        );
    }
    // Rank 0 alone writes the run's logs.
    let mut metrics = if primary {
        Some(MetricsWriter::open(
            &job.run_dir,
            resume_from.as_ref().map(|c| c.state.global_step),
        )?)
    } else {
        None
    };
    let mut log_txt = if primary {
        Some(super::mainpy::MainPyLog::open(
            &job.run_dir,
            models::param_count(&varmap),
            resume_from.as_ref().map(|c| c.state.epoch),
        )?)
    } else {
        None
    };
    let mut board = match job.tensorboard && primary {
        true => Some(super::tensorboard::TrainBoard::create(&job.run_dir)?),
        false => None,
    };
    if world > 1 {
        tracing::info!(
            "rank {rank} of {world} ({}): global batch {} = {} per pass x {} accumulation x {world} ranks",
            comm.transport(),
            cfg.data.global_batch() * world,
            cfg.data.batch_size,
            cfg.data.accum_steps
        );
    }

    if primary {
        if let Some(line) = mix_batch_note(&cfg.augment.mix, cfg.data.batch_size, world) {
            tracing::warn!("{line}");
        }
    }

    // Teacher.
    let epochs = cfg.schedule.total_epochs();
    let binding = data_binding(&fingerprint, &cfg.augment, seed, &cfg.plan, num_classes);
    let mut teacher = TeacherSource::open(
        &cfg.distillation,
        &binding,
        state.epoch as u32..epochs as u32,
        img_size,
        &device,
    )?;
    // Rank 0 records the teacher (or compares with the record on a resume); the other
    // ranks compare their cache with rank 0's.
    super::teacher::agree_on_teacher(
        comm,
        &job.run_dir,
        teacher.identity().as_ref(),
        resume_from.is_some(),
    )?;
    let criterion = DistillationLoss {
        base: BaseCriterion::for_recipe(cfg.augment.mix.enabled(), cfg.augment.mix.label_smoothing),
        kind: match kind {
            DistillationType::None => DistillationKind::None,
            DistillationType::Hard => DistillationKind::Hard,
            DistillationType::Soft => DistillationKind::Soft,
        },
        alpha: cfg.distillation.alpha,
        tau: cfg.distillation.tau,
    };

    let builder = Arc::new(ViewBuilder::new(&cfg.augment).context("[augment]")?);
    let threads = loader_threads(cfg.data.workers);
    let train_opts = LoaderOptions {
        batch_size: cfg.data.batch_size,
        threads,
        prefetch: cfg.data.prefetch.max(1),
        drop_last: true,
    };
    let eval_opts = LoaderOptions {
        batch_size: cfg.data.eval_batch(),
        threads,
        prefetch: cfg.data.prefetch.max(1),
        drop_last: false,
    };

    let mut last_eval = None;
    let mut epochs_this_call = 0usize;
    let params_ref: &[(String, candle_core::Var)] = &params;
    while state.epoch < epochs {
        let epoch = state.epoch;
        let lr = sched.lr_for_epoch(epoch);
        opt.set_lr(lr);
        let plan = Arc::new(
            EpochPlan::new(seed, epoch as u64, train_src.len(), &cfg.plan)
                .with_context(|| format!("epoch {epoch} plan"))?,
        );
        teacher.start_epoch(epoch, plan.len())?;
        let source: Arc<dyn RecordSource> = train_src.clone();
        let loader = Loader::train(source, plan, builder.clone(), rank, world, &train_opts)
            .context("starting the training loader")?;
        let mut total = loader.num_batches();
        if cfg.run.max_batches_per_epoch > 0 {
            total = total.min(cfg.run.max_batches_per_epoch);
        }
        if total == 0 {
            bail!(
                "epoch {epoch} has no full batch of {} images (dataset of {} images)",
                cfg.data.batch_size,
                train_src.len()
            );
        }
        let skip = state.batch_in_epoch;
        // A resumed position must lie inside the schedule: at most `total` micro-batches
        // into this epoch (`open_run_dir` bounds the epoch).
        if skip > total {
            bail!(
                "the checkpoint's state.json{} is not a position of this schedule: epoch \
                 {epoch} batch {skip}, but an epoch has {total} batches here",
                last_checkpoint
                    .as_ref()
                    .map_or(String::new(), |d| format!(" ({})", d.display()))
            );
        }
        progress.epoch_start(epoch, epochs, total, skip);
        let mut acc = GradAccumulator::new(cfg.data.accum_steps)?;
        let epoch_start = Instant::now();
        let mut epoch_images = 0u64;
        let mut window = Window::new();
        // Seconds this rank spent in collectives this epoch (waiting for the other ranks
        // included), for the log line that says what data parallelism costs.
        let mut comm_seconds = 0f64;
        for (b, batch) in loader.enumerate().take(total) {
            let mut batch = batch.with_context(|| format!("epoch {epoch} batch {b}"))?;
            if b < skip {
                continue;
            }
            let n = batch.len();
            let dense = (criterion.base == BaseCriterion::SoftTarget)
                .then(|| batch.dense_targets(num_classes, cfg.augment.mix.label_smoothing));
            let images = super::batch_images(&mut batch, &device)?;
            let teacher_targets =
                teacher.targets(kind, &batch, &images, cfg.distillation.allow_replay_drift)?;
            let targets_t = match dense {
                Some(d) => Tensor::from_vec(d, (n, num_classes), &device)?,
                None => Tensor::from_vec(batch.label_a.clone(), n, &device)?,
            };
            let targets = match criterion.base {
                BaseCriterion::SoftTarget => Targets::Dense(&targets_t),
                _ => Targets::Labels(&targets_t),
            };
            // Every random choice of the forward pass is drawn for the global batch of the
            // optimizer step (batch x accum x world): one seed per step, and this pass's
            // place in it, so accumulation equals a bigger batch as ranks do.
            let accum = cfg.data.accum_steps.max(1);
            let ctx = ForwardCtx::train(step_seed(seed, epoch, b / accum))
                .with_precision(precision)
                .with_shard(comm.batch_shard().micro_batch(b % accum, accum));
            let out = model
                .forward(&images, &ctx)
                .with_context(|| format!("forward pass, epoch {epoch} batch {b}"))?;
            let loss_teacher = teacher_targets.as_ref().map(|t| t.as_loss_teacher());
            let parts =
                criterion.compute(&out.cls, out.dist.as_ref(), &targets, loss_teacher.as_ref())?;
            // Without a teacher, a distillation head learns from the labels too, so that
            // the eval output (mean of heads) is trained (DeiT would leave it untrained).
            let (total_loss, base_v) = match (&out.dist, kind) {
                (Some(d), DistillationType::None) => {
                    let base2 = criterion.base.loss(d, &targets)?;
                    let t = ((&parts.base + &base2)? * 0.5)?;
                    let v = scalar(&t)?;
                    (t, v)
                }
                _ => (parts.total.clone(), scalar(&parts.base)?),
            };
            let mut loss_v = scalar(&total_loss)?;
            let mut base_v = base_v;
            let mut distill_v = parts.distill.as_ref().map(scalar).transpose()?;
            if world > 1 {
                let t = Instant::now();
                // The global batch's losses (means of the ranks' means: equal shares); a
                // non-finite loss on any rank is non-finite on all, so all stop together.
                let s = sum_scalars(comm, [loss_v, base_v, distill_v.unwrap_or(0.0)])
                    .context("all-reducing the losses")?;
                let w = world as f64;
                loss_v = s[0] / w;
                base_v = s[1] / w;
                distill_v = distill_v.map(|_| s[2] / w);
                comm_seconds += t.elapsed().as_secs_f64();
            }
            let n = n * world;
            if !loss_v.is_finite() {
                bail!(
                    "non-finite loss ({loss_v}) at epoch {epoch}, batch {b}, step {}; training \
                     stopped. The last good checkpoint is left as it was: {}",
                    state.global_step + 1,
                    last_checkpoint
                        .as_ref()
                        .map_or("none yet".to_string(), |p| p.display().to_string())
                );
            }
            let grad_store = total_loss.backward().context("backward pass")?;
            let grads = NamedGrads::from_store(&grad_store, params_ref);
            drop(grad_store);
            acc.add(&grads)?;
            state.images_seen += n as u64;
            epoch_images += n as u64;
            state.epoch_loss_sum += loss_v;
            state.epoch_batches += 1;
            window.add(n, loss_v, base_v, distill_v);
            progress.batch(n, loss_v, lr);
            let last_of_epoch = b + 1 == total;
            if acc.is_complete() || last_of_epoch {
                let mut g = if acc.is_complete() {
                    acc.take()?
                } else {
                    acc.take_partial()?
                };
                if world > 1 {
                    let t = Instant::now();
                    g = mean_gradients(comm, g, params_ref)?;
                    comm_seconds += t.elapsed().as_secs_f64();
                }
                let grad_norm = match cfg.optim.clip_grad {
                    Some(max) => Some(clip_grad_norm(&mut g, max)?),
                    None => None,
                };
                if let Some(gn) = grad_norm.filter(|g| !g.is_finite()) {
                    bail!(
                        "non-finite gradient norm ({gn}) at epoch {epoch}, step {}; training \
                         stopped. The last good checkpoint is left as it was.",
                        state.global_step + 1
                    );
                }
                opt.step(&g)?;
                drop(g);
                if !buffers.is_empty() {
                    let t = Instant::now();
                    mean_variables(comm, &buffers)?;
                    comm_seconds += t.elapsed().as_secs_f64();
                }
                if let Some(e) = ema.as_mut() {
                    e.update_from_varmap(&varmap)?;
                }
                state.global_step += 1;
                state.batch_in_epoch = b + 1;
                if state.global_step.is_multiple_of(cfg.run.log_every as u64) || last_of_epoch {
                    let rec = StepRecord {
                        isa: kernels_isa.clone(),
                        ..window.record(epoch, state.global_step, lr, grad_norm, state.images_seen)
                    };
                    if let Some(b) = board.as_mut() {
                        b.step(&rec)?;
                    }
                    if let Some(m) = metrics.as_mut() {
                        m.write(&MetricRecord::Step(rec))?;
                    }
                }
                if job.abort_at_step == Some(state.global_step) {
                    std::process::abort();
                }
                let stop_here = job.stop_at_step == Some(state.global_step) && !last_of_epoch;
                if (cfg.run.ckpt_every_steps > 0
                    && state
                        .global_step
                        .is_multiple_of(cfg.run.ckpt_every_steps as u64)
                    && !last_of_epoch)
                    || stop_here
                {
                    check_finite(&varmap)?;
                    if let Some(p) = checkpoint_on_primary(comm, job, || {
                        save_checkpoint(store.as_ref(), &state, false, &varmap, &opt, ema.as_ref())
                    })? {
                        last_checkpoint = Some(p);
                    }
                }
                if job.stall_at_step == Some(state.global_step) {
                    tracing::warn!("stalling after step {} (stall hook)", state.global_step);
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(3600));
                    }
                }
                if stop_here {
                    return Ok(TrainSummary {
                        epochs_done: state.epoch,
                        global_step: state.global_step,
                        last_eval,
                        best: state.best.clone(),
                        stopped_early: true,
                        replay_drift: teacher.drift_count(),
                        last_checkpoint,
                    });
                }
            }
        }
        let seconds = epoch_start.elapsed().as_secs_f64();
        if world > 1 {
            tracing::info!(
                "rank {rank}: epoch {epoch} trained in {seconds:.2} s, of which {comm_seconds:.2} s \
                 ({:.1}%) in all-reduces ({}), waiting for the other ranks included",
                100.0 * comm_seconds / seconds.max(1e-9),
                comm.transport()
            );
        }
        let train_loss = state.epoch_loss_sum / state.epoch_batches.max(1) as f64;

        // Evaluation.
        let is_last = epoch + 1 == epochs;
        let due =
            cfg.run.eval_every > 0 && ((epoch + 1).is_multiple_of(cfg.run.eval_every) || is_last);
        let (mut val, mut val_ema) = (None, None);
        if let (true, Some(v)) = (due, &val_src) {
            let eval_model = EvalModel {
                model: twin.as_deref().unwrap_or(model.as_ref()),
                both_heads: twin.is_some(),
                precision,
            };
            progress.eval_start(v.len());
            let s = evaluate_distributed(
                &eval_model,
                v.clone(),
                builder.clone(),
                &eval_opts,
                &device,
                &mut |n| progress.eval_batch(n * world),
                comm,
            )?;
            val = Some(s);
            if let Some(e) = &ema {
                progress.eval_start(v.len());
                let s = eval_ema(
                    e,
                    &spec,
                    precision,
                    &device,
                    v.clone(),
                    builder.clone(),
                    &eval_opts,
                    &mut |n| progress.eval_batch(n * world),
                    comm,
                )?;
                val_ema = Some(s);
            }
        }
        if let Some(v) = &val {
            if !v.loss.is_finite() {
                bail!(
                    "non-finite val loss after epoch {epoch}; training stopped. The last good \
                     checkpoint is left as it was."
                );
            }
        }
        check_finite(&varmap).with_context(|| {
            format!(
                "after epoch {epoch}; training stopped, the last good checkpoint is left as it was"
            )
        })?;
        let record = EpochRecord {
            epoch,
            step: state.global_step,
            lr,
            train_loss,
            img_per_s: epoch_images as f64 / seconds.max(1e-9),
            seconds,
            val: val.clone(),
            val_ema,
            isa: kernels_isa.clone(),
        };
        if let Some(m) = metrics.as_mut() {
            m.write(&MetricRecord::Epoch(record.clone()))?;
        }
        if let Some(l) = log_txt.as_mut() {
            l.write(&record)?;
        }
        if let Some(b) = board.as_mut() {
            b.epoch(&record)?;
        }
        let is_best = match (&val, &state.best) {
            (Some(v), Some(b)) => v.top1 > b.top1,
            (Some(_), None) => true,
            _ => false,
        };
        if is_best {
            if let Some(v) = &val {
                state.best = Some(BestMetric {
                    epoch,
                    top1: v.top1,
                });
            }
        }
        state.epoch = epoch + 1;
        state.batch_in_epoch = 0;
        state.epoch_loss_sum = 0.0;
        state.epoch_batches = 0;
        if let Some(p) = checkpoint_on_primary(comm, job, || {
            save_checkpoint(store.as_ref(), &state, is_best, &varmap, &opt, ema.as_ref())
        })? {
            last_checkpoint = Some(p);
        }
        if val.is_some() {
            last_eval = val;
        }
        progress.epoch_end(&record);
        epochs_this_call += 1;
        if job.stop_after_epochs == Some(epochs_this_call) && state.epoch < epochs {
            return Ok(TrainSummary {
                epochs_done: state.epoch,
                global_step: state.global_step,
                last_eval,
                best: state.best.clone(),
                stopped_early: true,
                replay_drift: teacher.drift_count(),
                last_checkpoint,
            });
        }
    }
    if teacher.drift_count() > 0 {
        tracing::warn!(
            "{} views differed from the teacher cache's (replay drift allowed)",
            teacher.drift_count()
        );
    }
    Ok(TrainSummary {
        epochs_done: state.epoch,
        global_step: state.global_step,
        last_eval,
        best: state.best,
        stopped_early: false,
        replay_drift: teacher.drift_count(),
        last_checkpoint,
    })
}

/// Rank 0's reading of the run folder: creates it, opens its checkpoints and picks the
/// one to continue from (with `--resume`), checking that it belongs to this config, data
/// set and world size.
fn open_run_dir(
    job: &TrainJob,
    cfg: &TrainConfig,
    resume: bool,
    world: usize,
    fingerprint: &str,
) -> Result<(CheckpointStore, Option<super::checkpoint::Checkpoint>)> {
    std::fs::create_dir_all(&job.run_dir)
        .with_context(|| format!("creating {}", job.run_dir.display()))?;
    let store = CheckpointStore::open(&job.run_dir)?;
    let config_path = job.run_dir.join(CONFIG_FILE);
    let last = store.last()?;
    let resume_from = match (resume, last) {
        (false, Some(ck)) => bail!(
            "{} already holds a run (last checkpoint {}); pass --resume to continue it or \
             choose another --out",
            job.run_dir.display(),
            ck.dir.display()
        ),
        (true, None) => {
            tracing::warn!(
                "--resume: {} has no checkpoint yet; starting from the beginning",
                job.run_dir.display()
            );
            None
        }
        (true, Some(ck)) => Some(ck),
        (false, None) => None,
    };
    if let Some(ck) = &resume_from {
        let state_path = ck.dir.join(super::checkpoint::STATE_FILE);
        let epochs = cfg.schedule.total_epochs();
        if ck.state.epoch > epochs {
            bail!(
                "--resume: {} says epoch {}, past the schedule's {epochs} epochs: not a state \
                 this run wrote",
                state_path.display(),
                ck.state.epoch
            );
        }
        // Every file of the checkpoint against the digests written with it.
        ck.verify().context("--resume")?;
        if config_path.is_file() {
            let saved = TrainConfig::from_file(&config_path)?;
            if let Some((field, was, now)) = saved.first_difference(cfg) {
                bail!(
                    "--resume: {field} is {was} in {} but {now} now; resume with the run's settings",
                    config_path.display()
                );
            }
        }
        if ck.state.config_hash != cfg.hash_hex() {
            bail!(
                "--resume: checkpoint {} was written by config {} but this config hashes to {}",
                ck.dir.display(),
                ck.state.config_hash,
                cfg.hash_hex()
            );
        }
        if !ck.state.dataset_fingerprint.is_empty() && ck.state.dataset_fingerprint != fingerprint {
            bail!(
                "--resume: checkpoint {} was trained on dataset {} but {} is {}",
                ck.dir.display(),
                ck.state.dataset_fingerprint,
                job.data_dir.display(),
                fingerprint
            );
        }
        if ck.state.world_size != world {
            bail!(
                "--resume: checkpoint {} was written by a job of {} rank(s) but this job has {world}; \
                 resume with the same number of processes (the global batch, and so the \
                 learning rate and the data order, depend on it)",
                ck.dir.display(),
                ck.state.world_size
            );
        }
    }
    Ok((store, resume_from))
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F32)?.to_scalar::<f32>()? as f64)
}

/// Rank 0 writes a checkpoint (`write`) while the other ranks wait for it in
/// [`Collective::io_barrier`], under the file-I/O limit rather than the hang detector's,
/// so a slow filesystem stops no healthy rank; then every rank learns whether the write
/// succeeded. Returns the checkpoint's folder on rank 0.
fn checkpoint_on_primary(
    comm: &dyn Collective,
    job: &TrainJob,
    write: impl FnOnce() -> Result<PathBuf>,
) -> Result<Option<PathBuf>> {
    let local = if comm.is_primary() {
        if let Some(d) = job.slow_checkpoint {
            std::thread::sleep(d);
        }
        write().map(Some)
    } else {
        Ok(None)
    };
    if comm.world() > 1 {
        comm.io_barrier()
            .context("waiting for rank 0 to write the checkpoint")?;
    }
    crate::dist::agree_ok(comm, local, "to write the checkpoint")
}

fn save_checkpoint(
    store: Option<&CheckpointStore>,
    state: &TrainState,
    is_best: bool,
    varmap: &VarMap,
    opt: &AdamW,
    ema: Option<&ModelEma>,
) -> Result<PathBuf> {
    let store = store.context("only rank 0 writes checkpoints")?;
    store.save(state, is_best, |dir| {
        save_safetensors(varmap, &dir.join(MODEL_FILE))?;
        opt.save(&dir.join(OPTIMIZER_FILE))?;
        if let Some(e) = ema {
            e.save(&dir.join(EMA_FILE))?;
        }
        Ok(())
    })
}

/// Evaluate EMA weights: a model over a fresh VarMap holding them.
#[allow(clippy::too_many_arguments)]
fn eval_ema(
    ema: &ModelEma,
    spec: &ModelSpec,
    precision: Precision,
    device: &Device,
    source: Arc<ShardSource>,
    builder: Arc<ViewBuilder>,
    opts: &LoaderOptions,
    on_batch: &mut dyn FnMut(usize),
    comm: &dyn Collective,
) -> Result<EvalSummary> {
    let varmap = VarMap::new();
    let eval_spec = spec.clone().with_drop_path(0.0);
    let model = models::build(
        &eval_spec,
        VarBuilder::from_varmap(&varmap, DType::F32, device),
    )?;
    crate::weights::load_state_dict_into(
        &varmap,
        &eval_spec,
        ema.tensors(),
        &LoadOptions::default(),
        "the EMA weights",
    )?;
    let m = EvalModel {
        model: model.as_ref(),
        both_heads: is_distilled(spec),
        precision,
    };
    evaluate_distributed(&m, source, builder, opts, device, on_batch, comm)
}

/// Means over the optimizer steps since the last step record.
struct Window {
    start: Instant,
    images: usize,
    batches: usize,
    loss: f64,
    base: f64,
    distill: Option<f64>,
}

impl Window {
    fn new() -> Self {
        Window {
            start: Instant::now(),
            images: 0,
            batches: 0,
            loss: 0.0,
            base: 0.0,
            distill: None,
        }
    }
    fn add(&mut self, images: usize, loss: f64, base: f64, distill: Option<f64>) {
        self.images += images;
        self.batches += 1;
        self.loss += loss;
        self.base += base;
        if let Some(d) = distill {
            *self.distill.get_or_insert(0.0) += d;
        }
    }
    fn record(
        &mut self,
        epoch: usize,
        step: u64,
        lr: f64,
        grad_norm: Option<f64>,
        images: u64,
    ) -> StepRecord {
        let n = self.batches.max(1) as f64;
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        let rec = StepRecord {
            epoch,
            step,
            lr,
            loss: self.loss / n,
            base_loss: self.base / n,
            distill_loss: self.distill.map(|d| d / n),
            grad_norm,
            img_per_s: self.images as f64 / secs,
            images,
            isa: None,
        };
        *self = Window::new();
        rec
    }
}

/// Batch-mode Mixup shares one lam among `mix.batch_size` consecutive plan slots; a
/// rank's pass of `batch` images covers `batch * world` of them (pairs go round-robin to
/// ranks), so it has one lam only when `mix.batch_size` is a multiple of that. The line
/// to log when it is not.
pub fn mix_batch_note(
    mix: &pipeline::config::MixConfig,
    batch: usize,
    world: usize,
) -> Option<String> {
    let per_lam = mix.pairs_per_lam()? as usize * 2;
    let pass = batch * world;
    (!per_lam.is_multiple_of(pass)).then(|| {
        format!(
            "mix.mode = \"batch\" with augment.mix.batch_size = {per_lam}: a pass of {batch} \
             images x {world} ranks covers {pass} plan slots, so a batch may mix with more \
             than one lam; for one lam per batch set augment.mix.batch_size to a multiple \
             of {pass} (in the teacher cache's config too)"
        )
    })
}
