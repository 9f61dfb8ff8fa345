//! The `deit-pipe teacher-cache` job: for every epoch of a range, replay the trainer's
//! plan, build each view exactly as the loader does, run the teacher on it in eval mode
//! and write one Parquet row per slot. A producer thread builds the next batches of views
//! (a bounded queue, as the training loader's) while the teacher runs on the current one.
//!
//! Parts: an epoch's pairs `[0, num_pairs)` are split into `N` contiguous chunks (every
//! pair is covered, unlike the loader's rank split, which drops the remainder); part `i`
//! writes the slots of chunk `i`. Resume: a finished file whose header matches and whose
//! bytes pass their checksums is skipped, an unfinished `.partial` file is redone.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use formats::cache_schema::{
    file_name, parse_file_name, read_file_header, verify_file, CacheBinding, CacheRow, CacheWriter,
    FileHeader, PartSpec, ViewKey,
};
use pipeline::plan::EpochPlan;
use pipeline::source::{RecordSource, ShardSource};
use pipeline::view::{build_pair_into, view_hash, ViewBuilder};
use rayon::prelude::*;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;
use trainer::models::{Classifier, ForwardCtx, ModelSpec};
use trainer::train::config::TrainConfig;
use trainer::train::run::select_device;
use trainer::weights::{build_model, LoadOptions};

use crate::binding::{job_binding, num_classes, weights_hash};

/// Everything one `teacher-cache` invocation needs.
#[derive(Debug, Clone)]
pub struct CacheJob {
    /// The data set: a shard split directory, or a root holding `train/` (as `train --data`).
    pub data: PathBuf,
    /// Teacher weights (safetensors).
    pub teacher_weights: PathBuf,
    /// Teacher architecture, a `ModelSpec` name (e.g. `regnety_160`, `deit_tiny_patch8_32`).
    pub teacher_arch: String,
    /// The training config the student will use (seed, repeats, augmentation, plan).
    pub config: TrainConfig,
    /// Epochs to cache, half-open.
    pub epochs: Range<u32>,
    /// Classes kept per view.
    pub top_k: usize,
    /// Output directory.
    pub out: PathBuf,
    /// Which part of every epoch this job writes.
    pub part: PartSpec,
    /// Views per teacher forward pass (rounded up to an even number).
    pub batch_size: usize,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
}

/// What a job did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobReport {
    /// Epochs whose file was written by this job.
    pub written: Vec<u32>,
    /// Epochs whose finished file already existed (resume).
    pub skipped: Vec<u32>,
    /// Rows written.
    pub rows: u64,
    /// Seconds spent building views (decode, augmentation, mixing, view hashes), on the
    /// producer thread, overlapped with the teacher's forward passes.
    pub views_seconds: f64,
    /// Seconds spent in the teacher's forward pass (input tensor to logits on the host).
    pub forward_seconds: f64,
    /// Seconds spent turning logits into rows (top-K) and writing Parquet.
    pub rows_seconds: f64,
    /// Seconds of the whole job (also loading the teacher and planning).
    pub total_seconds: f64,
}

impl JobReport {
    /// The share of the job's time spent outside the teacher's forward pass: what the
    /// cache costs on top of running the teacher bare on the same batches.
    pub fn overhead(&self) -> f64 {
        if self.total_seconds > 0.0 {
            1.0 - self.forward_seconds / self.total_seconds
        } else {
            0.0
        }
    }
}

/// Progress callbacks of a job.
pub trait JobProgress {
    /// Called once with the number of views the job will compute.
    fn start(&mut self, _total: u64) {}
    /// Called after every batch with the number of views it held.
    fn advance(&mut self, _views: u64) {}
}

/// No progress reporting.
pub struct NoProgress;
impl JobProgress for NoProgress {}

/// Parses an epoch range: `A..B` (half-open), `A..=B` (inclusive) or a single epoch `A`.
pub fn parse_epochs(s: &str) -> Result<Range<u32>> {
    let num = |t: &str| -> Result<u32> {
        t.trim()
            .parse::<u32>()
            .with_context(|| format!("epochs `{s}`: `{t}` is not an epoch number"))
    };
    let r = if let Some((a, b)) = s.split_once("..=") {
        num(a)?..num(b)?.checked_add(1).context("epoch too large")?
    } else if let Some((a, b)) = s.split_once("..") {
        num(a)?..num(b)?
    } else {
        let a = num(s)?;
        a..a.checked_add(1).context("epoch too large")?
    };
    if r.is_empty() {
        bail!("epochs `{s}`: empty range (A..B is half-open, A..=B inclusive)");
    }
    Ok(r)
}

/// The slot range `[start, end)` part `part` of an epoch with `num_pairs` pairs holds.
pub fn part_slots(num_pairs: usize, part: PartSpec) -> Range<usize> {
    let (i, n) = (part.index as usize, part.count as usize);
    let start = num_pairs * (i - 1) / n;
    let end = num_pairs * i / n;
    2 * start..2 * end
}

/// Opens the data set: `dir/train` when it exists, else `dir` itself.
pub fn open_data(dir: &Path) -> Result<ShardSource> {
    let train = dir.join("train");
    let split = if train.is_dir() {
        train
    } else {
        dir.to_path_buf()
    };
    ShardSource::open(&split).with_context(|| format!("opening the data set {}", split.display()))
}

/// The binding a job writes (reads the data set's manifest and hashes the weights).
pub fn binding_of(job: &CacheJob, src: &ShardSource) -> Result<CacheBinding> {
    let classes = num_classes(&job.config, src.num_classes())?;
    let hash = weights_hash(&job.teacher_weights)?;
    let b = job_binding(
        &job.config,
        src.shards().fingerprint(),
        classes,
        &job.teacher_arch,
        &hash,
        job.top_k,
    );
    b.validate().context("cache binding")?;
    Ok(b)
}

/// Refuses an output directory holding finished files of another binding.
pub fn check_existing(out: &Path, binding: &CacheBinding) -> Result<()> {
    let entries = match std::fs::read_dir(out) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", out.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", out.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if parse_file_name(name).is_err() {
            continue;
        }
        let path = entry.path();
        let header = read_file_header(&path)
            .with_context(|| format!("reading the header of {}", path.display()))?;
        header.binding.check_against(binding).with_context(|| {
            format!(
                "{} was made by another teacher/data/config; use another --out",
                path.display()
            )
        })?;
    }
    Ok(())
}

/// Runs the job. Returns what was written and skipped.
pub fn run(job: &CacheJob, progress: &mut dyn JobProgress) -> Result<JobReport> {
    let t0 = Instant::now();
    let cfg = &job.config;
    cfg.validate().context("training config")?;
    if job.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let src = open_data(&job.data)?;
    let binding = binding_of(job, &src)?;
    check_existing(&job.out, &binding)?;
    let builder = ViewBuilder::new(&cfg.augment).context("[augment]")?;
    let seed = cfg.run.seed;

    let mut report = JobReport::default();
    let mut todo = Vec::new();
    let mut total = 0u64;
    for epoch in job.epochs.clone() {
        let plan = EpochPlan::new(seed, u64::from(epoch), src.len(), &cfg.plan)
            .with_context(|| format!("plan of epoch {epoch}"))?;
        let path = job.out.join(file_name(epoch, job.part));
        if path.exists() {
            // A finished file is kept only if every byte passes its checksums.
            let h = verify_file(&path)
                .with_context(|| format!("checking the finished file {}", path.display()))?;
            if h.epoch != epoch || h.part != job.part || h.epoch_slots as usize != plan.len() {
                bail!(
                    "{}: header says epoch {} part {} of {} slots, this job makes epoch {epoch} \
                     part {} of {} slots",
                    path.display(),
                    h.epoch,
                    h.part,
                    h.epoch_slots,
                    job.part,
                    plan.len()
                );
            }
            report.skipped.push(epoch);
            continue;
        }
        let slots = part_slots(plan.num_pairs(), job.part);
        total += slots.len() as u64;
        todo.push((epoch, plan, slots));
    }
    if todo.is_empty() {
        report.total_seconds = t0.elapsed().as_secs_f64();
        return Ok(report);
    }

    let device = select_device(&job.device)?;
    let img = cfg.augment.input_size as usize;
    let spec = ModelSpec::parse(&job.teacher_arch)
        .with_context(|| format!("--teacher-arch {}", job.teacher_arch))?
        .with_num_classes(binding.num_classes as usize)
        .with_img_size(img)?;
    let (_varmap, model, _) = build_model(
        &spec,
        Some(&job.teacher_weights),
        &LoadOptions::default(),
        &device,
        0,
    )
    .with_context(|| format!("loading the teacher {}", job.teacher_weights.display()))?;

    progress.start(total);
    let pairs_per_batch = job.batch_size.div_ceil(2).max(1);
    // A producer thread builds the views of the next batches (at most VIEW_QUEUE ready
    // ahead) while this thread runs the teacher and writes rows: the same batches in the
    // same order as one after the other, so the same rows, bit for bit.
    let size = builder.size() as usize;
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<ReadyViews>>(VIEW_QUEUE);
        let (src, todo, builder) = (&src, &todo, &builder);
        scope.spawn(move || {
            // Every batch of every epoch in the order the rows are written, each batch's
            // pairs made when it is built (an up-front list of all pairs would hold
            // epochs x pairs indices: gigabytes for 300 ImageNet epochs).
            for (epoch, plan, slots) in todo {
                let (first, end) = (slots.start / 2, slots.end / 2);
                for start in (first..end).step_by(pairs_per_batch) {
                    let pairs: Vec<usize> = (start..end.min(start + pairs_per_batch)).collect();
                    let t = Instant::now();
                    let ready =
                        build_views(src, plan, builder, *epoch, &pairs).map(|(keys, data)| {
                            ReadyViews {
                                keys,
                                data,
                                seconds: t.elapsed().as_secs_f64(),
                            }
                        });
                    let failed = ready.is_err();
                    // A closed channel: the consumer stopped (its error is the job's).
                    if tx.send(ready).is_err() || failed {
                        return;
                    }
                }
            }
        });
        let next_views = move || -> Result<ReadyViews> {
            rx.recv()
                .map_err(|_| anyhow::anyhow!("the view builder stopped before the last batch"))?
        };
        for (epoch, plan, slots) in todo {
            let (epoch, plan) = (*epoch, plan);
            let header = FileHeader {
                binding: binding.clone(),
                epoch,
                part: job.part,
                epoch_slots: plan.len() as u32,
                dataset_len: u32::try_from(src.len())
                    .context("data set of more than 2^32 samples")?,
            };
            let mut writer = CacheWriter::create(&job.out, header)?;
            writer.set_class_names(&src.shards().manifest().classes)?;
            for _ in (slots.start / 2..slots.end / 2).step_by(pairs_per_batch) {
                let views = next_views()?;
                report.views_seconds += views.seconds;
                let rows =
                    teacher_rows(model.as_ref(), &device, views, size, job.top_k, &mut report)?;
                let t = Instant::now();
                writer.write_rows(&rows)?;
                report.rows_seconds += t.elapsed().as_secs_f64();
                report.rows += rows.len() as u64;
                progress.advance(rows.len() as u64);
                // The epoch pass reads records in random order: hand the shard pages it
                // touched back after every batch, so RSS does not grow to the set's size.
                src.shards().release_resident();
            }
            writer.finish()?;
            report.written.push(epoch);
        }
        Ok(())
    })?;
    report.total_seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

/// The views of `pairs` (pair indices of `plan`, in order), built in parallel on the
/// current rayon pool exactly as the training loader builds them: their keys (slot order)
/// and their pixels, (2 * pairs.len(), 3, size, size) f32. What `teacher-cache` and the
/// Python package's `TeacherCacheWriter` give the teacher.
pub fn build_views(
    src: &dyn RecordSource,
    plan: &EpochPlan,
    builder: &ViewBuilder,
    epoch: u32,
    pairs: &[usize],
) -> Result<(Vec<ViewKey>, Vec<f32>)> {
    let n = builder.view_len();
    let views: Vec<(Vec<f32>, Vec<f32>, [f32; 2])> = pairs
        .par_iter()
        .map(|&pair| {
            let mut a = vec![0f32; n];
            let mut b = vec![0f32; n];
            let (_, _, lams) = build_pair_into(src, plan, builder, pair, &mut a, &mut b)
                .with_context(|| format!("building the views of epoch {epoch} pair {pair}"))?;
            Ok((a, b, lams))
        })
        .collect::<Result<_>>()?;
    let mut keys = Vec::with_capacity(2 * views.len());
    let mut data = Vec::with_capacity(2 * views.len() * n);
    for (&pair, (a, b, lams)) in pairs.iter().zip(&views) {
        for (slot, v, lam) in [(2 * pair, a, lams[0]), (2 * pair + 1, b, lams[1])] {
            let s = plan.slot(slot);
            keys.push(ViewKey {
                epoch,
                slot: slot as u32,
                sample: s.sample,
                partner: s.partner,
                lam,
                view_hash: view_hash(v),
            });
            data.extend_from_slice(v);
        }
    }
    Ok((keys, data))
}

/// Batches of views the producer thread of [`run`] keeps ready ahead of the teacher.
const VIEW_QUEUE: usize = 2;

/// One batch of views built ahead of the teacher: their keys (slot order), pixels and the
/// seconds building them took.
struct ReadyViews {
    keys: Vec<ViewKey>,
    data: Vec<f32>,
    seconds: f64,
}

/// Runs the teacher on a batch of views and returns their rows, in slot order; adds the
/// time of the forward pass and of the rows to `times`.
fn teacher_rows(
    model: &dyn Classifier,
    device: &Device,
    views: ReadyViews,
    size: usize,
    top_k: usize,
    times: &mut JobReport,
) -> Result<Vec<CacheRow>> {
    let t_forward = Instant::now();
    let images = Tensor::from_vec(views.data, (views.keys.len(), 3, size, size), device)?;
    let logits = model
        .forward(&images, &ForwardCtx::eval())
        .context("teacher forward pass")?
        .cls
        .to_dtype(DType::F32)?
        .to_vec2::<f32>()?;
    times.forward_seconds += t_forward.elapsed().as_secs_f64();
    let t_rows = Instant::now();
    let rows = views
        .keys
        .into_iter()
        .zip(&logits)
        .map(|(key, l)| CacheRow::from_logits(key, l, top_k).map_err(Into::into))
        .collect();
    times.rows_seconds += t_rows.elapsed().as_secs_f64();
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_ranges() {
        assert_eq!(parse_epochs("0..3").unwrap(), 0..3);
        assert_eq!(parse_epochs("2..=4").unwrap(), 2..5);
        assert_eq!(parse_epochs("7").unwrap(), 7..8);
        assert!(parse_epochs("3..3").is_err());
        assert!(parse_epochs("a..3").is_err());
    }

    #[test]
    fn parts_cover_every_pair_once() {
        for pairs in [1usize, 5, 10, 11, 1000] {
            for n in 1..=7u32 {
                let mut next = 0;
                for i in 1..=n {
                    let r = part_slots(pairs, PartSpec::new(i, n).unwrap());
                    assert_eq!(r.start, next);
                    assert!(r.start.is_multiple_of(2) && r.end.is_multiple_of(2));
                    next = r.end;
                }
                assert_eq!(next, 2 * pairs);
            }
        }
    }
}
