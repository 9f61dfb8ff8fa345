//! The pure-Rust core of the Python package (no PyO3 here, so `cargo test --workspace`
//! exercises it without Python): a loader that yields exactly what `deit-pipe train`
//! consumes, and a teacher-cache writer that hands the exact views of `train` to a
//! user's teacher and writes what `deit-pipe teacher-cache` writes.
//!
//! Nothing is re-implemented: batches come from `pipeline::loader::Loader` (train and
//! eval), built with the trainer's own plan (`EpochPlan::new(seed, epoch, N, &cfg.plan)`),
//! rank split (`rank_pairs`), targets (`Batch::dense_targets` with the config's label
//! smoothing) and cache check (`trainer::train::teacher::TeacherSource`, the same view-hash
//! comparison `train` makes). The writer builds views with `cache::run::build_views` and
//! binds its files with `cache::binding::job_binding`, the functions `teacher-cache` uses.

use std::collections::VecDeque;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use formats::cache_schema::{
    file_name, verify_file, CacheBinding, CacheRow, CacheWriter, CachedTarget, FileHeader,
    PartSpec, ViewKey,
};
use pipeline::loader::{Batch, Loader, LoaderOptions, Next};
use pipeline::plan::EpochPlan;
use pipeline::source::{RecordSource, ShardSource};
use pipeline::view::ViewBuilder;
use trainer::train::config::{DistillationType, TrainConfig};
use trainer::train::teacher::{data_binding, TeacherSource};

/// Which split a loader reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// `DATA/train`: the training views (crop, flip, RandAugment, erasing, Mixup/CutMix).
    Train,
    /// `DATA/val`: the eval transform, every record in order.
    Val,
}

impl Split {
    /// Parses `"train"` or `"val"`.
    pub fn parse(s: &str) -> Result<Split> {
        match s {
            "train" => Ok(Split::Train),
            "val" => Ok(Split::Val),
            other => bail!("split = {other:?}: expected \"train\" or \"val\""),
        }
    }

    fn dir(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
        }
    }
}

/// Reads a training config (TOML, the file `deit-pipe train --config` takes).
pub fn read_config(path: &Path) -> Result<TrainConfig> {
    TrainConfig::from_file(path).with_context(|| format!("config {}", path.display()))
}

/// Everything a [`LoaderCore`] needs.
#[derive(Clone, Debug)]
pub struct LoaderSpec {
    /// The shard root (holding `train/` and `val/`, as `train --data`).
    pub data: PathBuf,
    /// Which split.
    pub split: Split,
    /// The training config (its `[augment]`, `[plan]`, `run.seed`, `data.batch_size`).
    pub config: TrainConfig,
    /// Images per batch per rank (`None`: the config's `data.batch_size`).
    pub batch_size: Option<usize>,
    /// Run seed (`None`: the config's `run.seed`).
    pub seed: Option<u64>,
    /// A teacher cache to read targets from (train split only).
    pub teacher_cache: Option<PathBuf>,
    /// This process's rank.
    pub rank: usize,
    /// Number of ranks.
    pub world: usize,
    /// Loader worker threads.
    pub threads: usize,
    /// Batches built ahead of the consumer.
    pub prefetch: usize,
    /// Drop the last partial batch (`None`: true for train, as `train`; false for val).
    pub drop_last: Option<bool>,
    /// Count cached views whose hash differs instead of refusing them (`--allow-replay-drift`).
    pub allow_replay_drift: bool,
}

/// An opened loader: the split, the view builder and the run's binding.
pub struct LoaderCore {
    source: Arc<ShardSource>,
    builder: Arc<ViewBuilder>,
    split: Split,
    seed: u64,
    cfg: TrainConfig,
    num_classes: usize,
    binding: CacheBinding,
    teacher_cache: Option<PathBuf>,
    rank: usize,
    world: usize,
    opts: LoaderOptions,
    allow_drift: bool,
}

impl LoaderCore {
    /// Opens the split and checks the settings (the same rules as `train`).
    pub fn open(spec: LoaderSpec) -> Result<LoaderCore> {
        let mut cfg = spec.config;
        if let Some(s) = spec.seed {
            cfg.run.seed = s;
        }
        if let Some(b) = spec.batch_size {
            cfg.data.batch_size = b;
        }
        cfg.validate().context("training config")?;
        let dir = spec.data.join(spec.split.dir());
        if !dir.is_dir() {
            bail!(
                "{} is not a directory: the shard root must hold {}/ (deit-pipe shard --out)",
                dir.display(),
                spec.split.dir()
            );
        }
        let source = Arc::new(ShardSource::open(&dir).with_context(|| {
            format!("opening the {} split {}", spec.split.dir(), dir.display())
        })?);
        if spec.world == 0 || spec.rank >= spec.world {
            bail!(
                "rank {} of world {}: need 0 <= rank < world",
                spec.rank,
                spec.world
            );
        }
        if spec.teacher_cache.is_some() && spec.split == Split::Val {
            bail!("teacher_cache is for split=\"train\" (the cache holds training views)");
        }
        // The trainer's rules for the class count and the binding (train/loop.rs).
        let data_classes = source.num_classes();
        let num_classes = cache::binding::num_classes(&cfg, data_classes)?;
        let binding = data_binding(
            source.shards().fingerprint(),
            &cfg.augment,
            cfg.run.seed,
            &cfg.plan,
            num_classes,
        );
        let builder = Arc::new(ViewBuilder::new(&cfg.augment).context("[augment]")?);
        let train = spec.split == Split::Train;
        let opts = LoaderOptions {
            batch_size: cfg.data.batch_size,
            threads: spec.threads,
            prefetch: spec.prefetch,
            drop_last: spec.drop_last.unwrap_or(train),
        };
        Ok(LoaderCore {
            source,
            builder,
            split: spec.split,
            seed: cfg.run.seed,
            cfg,
            num_classes,
            binding,
            teacher_cache: spec.teacher_cache,
            rank: spec.rank,
            world: spec.world,
            opts,
            allow_drift: spec.allow_replay_drift,
        })
    }

    /// Records in the split.
    pub fn dataset_len(&self) -> usize {
        self.source.len()
    }

    /// Classes of the targets (the config's `model.num_classes`, else the data set's).
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// The class names of the split's manifest.
    pub fn class_names(&self) -> &[String] {
        &self.source.shards().manifest().classes
    }

    /// Side of the images.
    pub fn image_size(&self) -> usize {
        self.builder.size() as usize
    }

    /// Images per batch.
    pub fn batch_size(&self) -> usize {
        self.opts.batch_size
    }

    /// Whether this is the train split.
    pub fn is_train(&self) -> bool {
        self.split == Split::Train
    }

    /// The binding a teacher cache of this run must have (teacher fields empty).
    pub fn binding(&self) -> &CacheBinding {
        &self.binding
    }

    fn plan(&self, epoch: u64) -> Result<EpochPlan> {
        EpochPlan::new(self.seed, epoch, self.source.len(), &self.cfg.plan)
            .with_context(|| format!("epoch {epoch} plan"))
    }

    /// Batches of `epoch` this rank yields (what `train` iterates).
    pub fn num_batches(&self, epoch: u64) -> Result<usize> {
        let bs = self.opts.batch_size;
        match self.split {
            Split::Train => {
                let pairs = self.plan(epoch)?.rank_pairs(self.rank, self.world)?.len();
                let per = bs / 2;
                Ok(if self.opts.drop_last {
                    pairs / per.max(1)
                } else {
                    pairs.div_ceil(per.max(1))
                })
            }
            Split::Val => {
                let n = self.source.len();
                Ok(if self.opts.drop_last {
                    n / bs
                } else {
                    n.div_ceil(bs)
                })
            }
        }
    }

    /// Starts the batches of `epoch` (the epoch is ignored for val).
    pub fn epoch(&self, epoch: u64) -> Result<EpochStream> {
        let source: Arc<dyn RecordSource> = self.source.clone();
        let (loader, teacher) = match self.split {
            Split::Train => {
                let plan = Arc::new(self.plan(epoch)?);
                let teacher = match &self.teacher_cache {
                    None => None,
                    Some(dir) => {
                        let mut d = self.cfg.distillation.clone();
                        if d.kind == DistillationType::None {
                            d.kind = DistillationType::Hard;
                        }
                        d.teacher_targets = Some(dir.clone());
                        d.teacher = None;
                        let e = u32::try_from(epoch).context("epoch beyond 2^32")?;
                        let mut t = TeacherSource::open(
                            &d,
                            &self.binding,
                            e..e + 1,
                            self.image_size(),
                            &candle_core_cpu(),
                        )?;
                        t.start_epoch(epoch as usize, plan.len())?;
                        Some(t)
                    }
                };
                let loader = Loader::train(
                    source,
                    plan,
                    self.builder.clone(),
                    self.rank,
                    self.world,
                    &self.opts,
                )
                .context("starting the training loader")?;
                (loader, teacher)
            }
            Split::Val => (
                Loader::eval(source, self.builder.clone(), &self.opts)
                    .context("starting the eval loader")?,
                None,
            ),
        };
        Ok(EpochStream {
            loader,
            teacher,
            num_classes: self.num_classes,
            smoothing: if self.split == Split::Train {
                self.cfg.augment.mix.label_smoothing
            } else {
                0.0
            },
            allow_drift: self.allow_drift,
        })
    }
}

/// A cache is read on the host (the device only matters for an online teacher).
fn candle_core_cpu() -> candle_core::Device {
    candle_core::Device::Cpu
}

/// One batch as the Python side receives it.
pub struct OutBatch {
    /// The loader's batch (images, slots, samples, labels, lam, view hashes).
    pub batch: Batch,
    /// Mixed, smoothed targets (N x num_classes), `Batch::dense_targets` as `train` uses.
    pub targets: Vec<f32>,
    /// Cached teacher rows of the batch's slots (checked against the view hashes).
    pub teacher: Option<Vec<CachedTarget>>,
}

/// What [`EpochStream::next_timeout`] found.
pub enum Step {
    /// A batch.
    Batch(Box<OutBatch>),
    /// Not ready within the timeout.
    Waiting,
    /// The epoch is over.
    Done,
}

/// The batches of one epoch.
pub struct EpochStream {
    loader: Loader,
    teacher: Option<TeacherSource>,
    num_classes: usize,
    smoothing: f64,
    allow_drift: bool,
}

impl EpochStream {
    /// Batches this stream yields when nothing fails.
    pub fn num_batches(&self) -> usize {
        self.loader.num_batches()
    }

    /// Waits at most `timeout` for the next batch.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Step> {
        let batch = match self.loader.next_timeout(timeout) {
            Next::Waiting => return Ok(Step::Waiting),
            Next::Finished => return Ok(Step::Done),
            Next::Ready(b) => b?,
        };
        let targets = batch.dense_targets(self.num_classes, self.smoothing);
        let teacher = match self.teacher.as_mut() {
            Some(t) => t.cached_rows(&batch, self.allow_drift)?,
            None => None,
        };
        Ok(Step::Batch(Box::new(OutBatch {
            batch,
            targets,
            teacher,
        })))
    }

    /// Blocks until the next batch (`None` at the end).
    pub fn next_blocking(&mut self) -> Result<Option<OutBatch>> {
        loop {
            match self.next_timeout(Duration::from_secs(3600))? {
                Step::Batch(b) => return Ok(Some(*b)),
                Step::Waiting => continue,
                Step::Done => return Ok(None),
            }
        }
    }

    /// Views whose cached hash differed (with `allow_replay_drift`).
    pub fn drift_count(&self) -> u64 {
        self.teacher.as_ref().map_or(0, |t| t.drift_count())
    }
}

/// Splits a teacher id `"ARCH [WEIGHTS-ID]"` into the binding's `teacher_arch` (first
/// word) and `teacher_weights_hash` (the rest, e.g. `sha256:...`; `"unspecified"` when
/// absent).
pub fn split_teacher_id(id: &str) -> Result<(String, String)> {
    let id = id.trim();
    if id.is_empty() {
        bail!(
            "teacher_id is empty: name the teacher, e.g. \"regnety_160 sha256:<weights digest>\""
        );
    }
    Ok(match id.split_once(char::is_whitespace) {
        Some((a, rest)) => (a.to_string(), rest.trim().to_string()),
        None => (id.to_string(), "unspecified".to_string()),
    })
}

/// Everything a [`WriterCore`] needs.
#[derive(Clone, Debug)]
pub struct WriterSpec {
    /// Output directory (the cache).
    pub out: PathBuf,
    /// The data set: a shard root holding `train/`, or a split directory.
    pub shards: PathBuf,
    /// The student's training config.
    pub config: TrainConfig,
    /// Run seed (`None`: the config's `run.seed`).
    pub seed: Option<u64>,
    /// Epochs to cache, in order.
    pub epochs: Vec<u32>,
    /// Classes kept per view.
    pub top_k: usize,
    /// The teacher's identity, recorded in the binding (see [`split_teacher_id`]).
    pub teacher_id: String,
    /// `(i, n)`: part i (1-based) of n of every epoch, as `teacher-cache --part i/n`.
    pub part: (u32, u32),
    /// Views per batch handed to the teacher (rounded up to even).
    pub batch_size: usize,
    /// Threads building views.
    pub threads: usize,
}

/// A batch of views waiting for the teacher's logits.
pub struct Views {
    /// Epoch of the views.
    pub epoch: u32,
    /// Their keys, in slot order.
    pub keys: Vec<ViewKey>,
    /// Each view's own label (from the shards).
    pub labels: Vec<u32>,
    /// Pixels, (keys.len(), 3, size, size) f32, normalized as the trainer's input.
    pub images: Vec<f32>,
    /// Side of the images.
    pub size: usize,
}

struct OpenEpoch {
    epoch: u32,
    plan: EpochPlan,
    writer: CacheWriter,
    pairs: Range<usize>,
}

/// Writes a teacher cache from logits computed outside (by a PyTorch teacher).
pub struct WriterCore {
    src: ShardSource,
    builder: ViewBuilder,
    binding: CacheBinding,
    seed: u64,
    cfg: TrainConfig,
    out: PathBuf,
    part: PartSpec,
    top_k: usize,
    pairs_per_batch: usize,
    pool: rayon::ThreadPool,
    todo: VecDeque<u32>,
    open: Option<OpenEpoch>,
    pending: Option<Vec<ViewKey>>,
    written: Vec<PathBuf>,
    skipped: Vec<u32>,
    /// This part's writer lock on `out`, as `teacher-cache` takes it: held from `open`
    /// until a successful `finish` (or until the writer is dropped).
    lock: Option<formats::lock::OutputLock>,
}

impl WriterCore {
    /// Opens the data set, computes the binding and refuses an output directory that holds
    /// files of another binding (as `teacher-cache`). Epochs whose finished file exists
    /// and passes its checksums are skipped (resume).
    pub fn open(spec: WriterSpec) -> Result<WriterCore> {
        let mut cfg = spec.config;
        if let Some(s) = spec.seed {
            cfg.run.seed = s;
        }
        cfg.validate().context("training config")?;
        if spec.batch_size == 0 {
            bail!("batch_size must be at least 1");
        }
        if spec.threads == 0 {
            bail!("threads must be at least 1");
        }
        if spec.epochs.is_empty() {
            bail!("epochs is empty");
        }
        let part = PartSpec::new(spec.part.0, spec.part.1).context("part")?;
        let lock = formats::lock::OutputLock::acquire(
            &spec.out,
            &formats::lock::cache_part_lock_name(part.index, part.count),
        )
        .with_context(|| format!("cache {} (part {part})", spec.out.display()))?;
        let src = cache::run::open_data(&spec.shards)?;
        let classes = cache::binding::num_classes(&cfg, src.num_classes())?;
        let (arch, weights) = split_teacher_id(&spec.teacher_id)?;
        let binding = cache::binding::job_binding(
            &cfg,
            src.shards().fingerprint(),
            classes,
            &arch,
            &weights,
            spec.top_k,
        );
        binding.validate().context("cache binding")?;
        cache::run::check_existing(&spec.out, &binding)?;
        let builder = ViewBuilder::new(&cfg.augment).context("[augment]")?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(spec.threads)
            .thread_name(|i| format!("deit-cache-views-{i}"))
            .build()
            .context("starting the view threads")?;
        let mut todo = VecDeque::new();
        let mut skipped = Vec::new();
        for &epoch in &spec.epochs {
            let path = spec.out.join(file_name(epoch, part));
            if path.exists() {
                let h = verify_file(&path)
                    .with_context(|| format!("checking the finished file {}", path.display()))?;
                if h.epoch != epoch || h.part != part {
                    bail!(
                        "{}: header says epoch {} part {}, expected epoch {epoch} part {part}",
                        path.display(),
                        h.epoch,
                        h.part
                    );
                }
                skipped.push(epoch);
            } else {
                todo.push_back(epoch);
            }
        }
        Ok(WriterCore {
            src,
            builder,
            binding,
            seed: cfg.run.seed,
            cfg,
            out: spec.out,
            part,
            top_k: spec.top_k,
            pairs_per_batch: spec.batch_size.div_ceil(2).max(1),
            pool,
            todo,
            open: None,
            pending: None,
            written: Vec::new(),
            skipped,
            lock: Some(lock),
        })
    }

    /// The binding written into every file.
    pub fn binding(&self) -> &CacheBinding {
        &self.binding
    }

    /// Epochs skipped because their finished file was already there.
    pub fn skipped(&self) -> &[u32] {
        &self.skipped
    }

    /// Files finished so far.
    pub fn written(&self) -> &[PathBuf] {
        &self.written
    }

    /// Views still to hand out (this part, all remaining epochs, the open one included).
    pub fn remaining_views(&self) -> Result<usize> {
        let mut n = self.open.as_ref().map_or(0, |o| 2 * o.pairs.len());
        for &e in &self.todo {
            let plan = EpochPlan::new(self.seed, u64::from(e), self.src.len(), &self.cfg.plan)?;
            n += cache::run::part_slots(plan.num_pairs(), self.part).len();
        }
        Ok(n)
    }

    fn open_next_epoch(&mut self) -> Result<bool> {
        let Some(epoch) = self.todo.pop_front() else {
            return Ok(false);
        };
        let plan = EpochPlan::new(self.seed, u64::from(epoch), self.src.len(), &self.cfg.plan)
            .with_context(|| format!("plan of epoch {epoch}"))?;
        let slots = cache::run::part_slots(plan.num_pairs(), self.part);
        let header = FileHeader {
            binding: self.binding.clone(),
            epoch,
            part: self.part,
            epoch_slots: plan.len() as u32,
            dataset_len: u32::try_from(self.src.len())
                .context("data set of more than 2^32 samples")?,
        };
        std::fs::create_dir_all(&self.out)
            .with_context(|| format!("creating {}", self.out.display()))?;
        let mut writer = CacheWriter::create(&self.out, header)?;
        writer.set_class_names(&self.src.shards().manifest().classes)?;
        self.open = Some(OpenEpoch {
            epoch,
            plan,
            writer,
            pairs: slots.start / 2..slots.end / 2,
        });
        Ok(true)
    }

    fn close_if_done(&mut self) -> Result<()> {
        if self.open.as_ref().is_some_and(|o| o.pairs.is_empty()) {
            if let Some(o) = self.open.take() {
                let path = o.writer.finish()?;
                self.written.push(path);
            }
        }
        Ok(())
    }

    /// The next views, in the order `train` sees them within this part (`None` when every
    /// epoch is done). The previous views must have been [`put`](Self::put) first.
    pub fn next_views(&mut self) -> Result<Option<Views>> {
        if let Some(p) = &self.pending {
            let k = &p[0];
            bail!(
                "the views of epoch {} slots {}..{} have no logits yet: call put(views, logits) \
                 before taking the next views",
                k.epoch,
                k.slot,
                k.slot as usize + p.len()
            );
        }
        self.close_if_done()?;
        if self.open.is_none() && !self.open_next_epoch()? {
            return Ok(None);
        }
        let o = self.open.as_mut().context("no open epoch")?;
        let start = o.pairs.start;
        let end = (start + self.pairs_per_batch).min(o.pairs.end);
        let pairs: Vec<usize> = (start..end).collect();
        let (src, builder, plan, epoch) = (&self.src, &self.builder, &o.plan, o.epoch);
        let (keys, images) = self
            .pool
            .install(|| cache::run::build_views(src, plan, builder, epoch, &pairs))?;
        o.pairs.start = end;
        let labels = keys
            .iter()
            .map(|k| self.src.info(k.sample as usize).map(|i| i.label))
            .collect::<std::result::Result<Vec<u32>, _>>()?;
        self.pending = Some(keys.clone());
        Ok(Some(Views {
            epoch,
            keys,
            labels,
            images,
            size: self.builder.size() as usize,
        }))
    }

    /// Stores the teacher's logits (`rows` x `classes`, row-major) of the pending views
    /// starting at (`epoch`, `first_slot`): the top-K and hard label of each row, as
    /// `teacher-cache` computes them. Finishes the epoch's file after its last views.
    pub fn put(
        &mut self,
        epoch: u32,
        first_slot: u32,
        logits: &[f32],
        rows: usize,
        classes: usize,
    ) -> Result<()> {
        let Some(keys) = self.pending.as_ref() else {
            bail!("put: no views are waiting for logits (each views batch is put once)");
        };
        let (e, s) = (keys[0].epoch, keys[0].slot);
        if (e, s) != (epoch, first_slot) {
            bail!(
                "put: these views are epoch {epoch} slot {first_slot}, but the views waiting \
                 for logits are epoch {e} slot {s} (put each views batch right after taking it)"
            );
        }
        if rows != keys.len() {
            bail!(
                "put: logits have {rows} rows for {} views (epoch {e} slot {s})",
                keys.len()
            );
        }
        if classes != self.binding.num_classes as usize {
            bail!(
                "put: logits have {classes} classes, the data set/config has {} \
                 (set model.num_classes in the config to the teacher's class count)",
                self.binding.num_classes
            );
        }
        if logits.len() != rows * classes {
            bail!(
                "put: {} logits for a {rows} x {classes} array",
                logits.len()
            );
        }
        let out: Vec<CacheRow> = keys
            .iter()
            .zip(logits.chunks_exact(classes))
            .map(|(k, l)| {
                CacheRow::from_logits(*k, l, self.top_k)
                    .with_context(|| format!("put: logits of epoch {} slot {}", k.epoch, k.slot))
            })
            .collect::<Result<_>>()?;
        let o = self.open.as_mut().context("no open epoch")?;
        o.writer.write_rows(&out)?;
        self.pending = None;
        self.close_if_done()
    }

    /// Finishes: every view must have been put. Returns the files written by this writer.
    pub fn finish(&mut self) -> Result<Vec<PathBuf>> {
        if let Some(p) = &self.pending {
            bail!(
                "finish: the views of epoch {} slot {} have no logits (put them first)",
                p[0].epoch,
                p[0].slot
            );
        }
        self.close_if_done()?;
        let left = self.remaining_views()?;
        if left > 0 {
            let epochs: Vec<u32> = self
                .open
                .iter()
                .map(|o| o.epoch)
                .chain(self.todo.iter().copied())
                .collect();
            bail!(
                "finish: {left} views of epochs {epochs:?} were not written yet (iterate the \
                 writer to the end; finished epochs are kept and a new writer resumes)"
            );
        }
        self.lock = None;
        Ok(self.written.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use formats::cache_schema::TeacherCache;
    use pipeline::ingest::synth::{write_sharded, SynthConfig};
    use std::collections::HashMap;

    const CLASSES: usize = 4;

    fn config() -> TrainConfig {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/small_image.toml");
        read_config(&p).expect("small_image.toml")
    }

    fn shards(dir: &Path) -> PathBuf {
        let cfg = SynthConfig {
            classes: CLASSES,
            train_per_class: 10,
            val_per_class: 3,
            seed: 5,
        };
        write_sharded(dir, &cfg, 40).expect("synth shards")
    }

    /// A deterministic fake teacher: class (slot * 7 + epoch) % C wins.
    fn fake_logits(k: &ViewKey) -> Vec<f32> {
        let win = (k.slot as usize * 7 + k.epoch as usize) % CLASSES;
        (0..CLASSES)
            .map(|c| if c == win { 3.0 } else { c as f32 * 0.25 })
            .collect()
    }

    fn writer(out: &Path, data: &Path, teacher: &str) -> Result<WriterCore> {
        WriterCore::open(WriterSpec {
            out: out.to_path_buf(),
            shards: data.to_path_buf(),
            config: config(),
            seed: Some(0),
            epochs: vec![0, 1],
            top_k: 2,
            teacher_id: teacher.into(),
            part: (1, 1),
            batch_size: 6,
            threads: 2,
        })
    }

    fn loader(data: &Path, cache: Option<&Path>, seed: u64) -> Result<LoaderCore> {
        LoaderCore::open(LoaderSpec {
            data: data.to_path_buf(),
            split: Split::Train,
            config: config(),
            batch_size: Some(8),
            seed: Some(seed),
            teacher_cache: cache.map(Path::to_path_buf),
            rank: 0,
            world: 1,
            threads: 2,
            prefetch: 2,
            drop_last: None,
            allow_replay_drift: false,
        })
    }

    #[test]
    fn cache_written_here_is_read_by_the_trainers_reader_and_the_loader() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = shards(tmp.path());
        let cache = tmp.path().join("cache");
        let mut w = writer(&cache, &data, "fake sha256:00ff").expect("writer");
        let mut seen: HashMap<(u32, u32), (u64, u32, usize)> = HashMap::new();
        let total = w.remaining_views().expect("count");
        let mut n = 0;
        while let Some(v) = w.next_views().expect("views") {
            assert_eq!(v.images.len(), v.keys.len() * 3 * v.size * v.size);
            let mut logits = Vec::new();
            for (i, k) in v.keys.iter().enumerate() {
                let l = fake_logits(k);
                let arg = (0..CLASSES)
                    .max_by(|&a, &b| l[a].total_cmp(&l[b]))
                    .expect("classes");
                // The key's hash is the hash of the pixels handed out.
                let px =
                    &v.images[i * v.images.len() / v.keys.len()..][..v.images.len() / v.keys.len()];
                assert_eq!(pipeline::view::view_hash(px), k.view_hash);
                seen.insert((k.epoch, k.slot), (k.view_hash, k.sample, arg));
                logits.extend(l);
            }
            n += v.keys.len();
            w.put(v.epoch, v.keys[0].slot, &logits, v.keys.len(), CLASSES)
                .expect("put");
        }
        assert_eq!(n, total);
        assert_eq!(w.finish().expect("finish").len(), 2);

        // The trainer's reader accepts it for this run and records our teacher.
        let l = loader(&data, Some(&cache), 0).expect("loader");
        let c = TeacherCache::open_for_run(&cache, l.binding(), Some("fake")).expect("open");
        assert_eq!(c.binding().teacher_weights_hash, "sha256:00ff");
        c.require_epochs(0..2).expect("epochs");

        // Every loader row matches the view given to the teacher and gets its answer.
        for epoch in 0..2u64 {
            let mut s = l.epoch(epoch).expect("epoch");
            let mut batches = 0;
            while let Some(b) = s.next_blocking().expect("batch") {
                batches += 1;
                let rows = b.teacher.expect("teacher rows");
                for i in 0..b.batch.len() {
                    let (h, sample, arg) = seen[&(epoch as u32, b.batch.slots[i])];
                    assert_eq!(b.batch.view_hash[i], h);
                    assert_eq!(b.batch.samples[i], sample);
                    assert_eq!(rows[i].hard_label as usize, arg);
                    assert_eq!(pipeline::view::view_hash(b.batch.image(i)), h);
                }
                assert_eq!(b.targets.len(), b.batch.len() * CLASSES);
            }
            assert_eq!(batches, l.num_batches(epoch).expect("len"));
            assert!(batches > 0);
        }

        // Another seed is another run: the cache is refused, naming the field.
        let other = loader(&data, Some(&cache), 1).expect("loader");
        let e = format!("{:#}", other.epoch(0).err().expect("refused"));
        assert!(e.contains("run_seed"), "{e}");
        // A second writer of another teacher into the same directory is refused; the
        // same teacher resumes with nothing to do.
        let e = format!(
            "{:#}",
            writer(&cache, &data, "other").err().expect("refused")
        );
        assert!(e.contains("teacher_arch"), "{e}");
        let mut again = writer(&cache, &data, "fake sha256:00ff").expect("resume");
        assert_eq!(again.skipped(), &[0, 1]);
        assert!(again.next_views().expect("none").is_none());
    }

    #[test]
    fn writer_refuses_out_of_protocol_calls() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = shards(tmp.path());
        let mut w = writer(&tmp.path().join("c"), &data, "t").expect("writer");
        let e = format!("{:#}", w.put(0, 0, &[], 0, CLASSES).expect_err("no views"));
        assert!(e.contains("no views"), "{e}");
        let v = w.next_views().expect("views").expect("some");
        assert!(w.next_views().is_err(), "views before put");
        let n = v.keys.len();
        let zeros = vec![0f32; n * (CLASSES + 1)];
        assert!(w.put(0, 0, &zeros, n, CLASSES + 1).is_err(), "class count");
        assert!(
            w.put(0, 2, &zeros[..n * CLASSES], n, CLASSES).is_err(),
            "other slot"
        );
        w.put(0, 0, &zeros[..n * CLASSES], n, CLASSES).expect("put");
        let e = format!("{:#}", w.finish().expect_err("unfinished"));
        assert!(e.contains("not written"), "{e}");
        assert!(split_teacher_id("  ").is_err());
        assert_eq!(
            split_teacher_id("regnety_160 sha256:ab").expect("id"),
            ("regnety_160".into(), "sha256:ab".into())
        );
    }
}
