//! The loader benchmark behind `deit-pipe bench loader`: training-loader throughput (full
//! DeiT train augmentation, Mixup/CutMix included) against a decode-only pass over the
//! same records at the same thread count, plus a single-thread per-stage breakdown.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;

use crate::config::{AugmentConfig, PlanConfig};
use crate::error::PipelineError;
use crate::loader::{Loader, LoaderOptions};
use crate::plan::EpochPlan;
use crate::source::{RecordSource, ShardSource};
use crate::view::{view_hash, StageTimes, ViewBuilder};

/// Benchmark settings.
#[derive(Clone, Debug)]
pub struct LoaderBenchOptions {
    /// Loader (and decode-only) threads.
    pub threads: usize,
    /// Batch size (even).
    pub batch: usize,
    /// At most this many views (0 = one epoch: N slots, repeats 3).
    pub images: usize,
    /// Views timed one by one for the per-stage breakdown.
    pub stage_samples: usize,
    /// Alternating repetitions (the best of each is reported).
    pub reps: usize,
    /// The augmentation.
    pub augment: AugmentConfig,
    /// Read records without the first-read CRC-32 check the training loader does
    /// ([`ShardSource::without_crc_check`]), to measure what the check costs.
    pub no_crc_check: bool,
}

impl Default for LoaderBenchOptions {
    fn default() -> Self {
        LoaderBenchOptions {
            threads: 2,
            batch: 64,
            images: 0,
            stage_samples: 200,
            reps: 2,
            augment: AugmentConfig::default(),
            no_crc_check: false,
        }
    }
}

/// Results: rates in images/s and the per-stage breakdown in microseconds per image.
#[derive(Clone, Debug, Default)]
pub struct LoaderBenchReport {
    /// Best loader rate.
    pub loader_rate: f64,
    /// Best decode-only rate (full decode of each record).
    pub decode_rate: f64,
    /// Best rate of decoding only the regions the training crops read (what the loader
    /// decodes).
    pub region_decode_rate: f64,
    /// Views per run.
    pub views: usize,
    /// (stage, microseconds per image on one thread).
    pub stages: Vec<(String, f64)>,
    /// Human-readable log of every run.
    pub log: String,
}

/// A split directory, or `DIR/train` when it exists.
pub fn split_dir(data: &Path) -> std::path::PathBuf {
    let train = data.join("train");
    if train.is_dir() {
        train
    } else {
        data.to_path_buf()
    }
}

/// Runs the benchmark over the shards in `data` (a split or a root with `train/`).
pub fn run_loader_bench(
    data: &Path,
    o: &LoaderBenchOptions,
) -> Result<LoaderBenchReport, PipelineError> {
    let dir = split_dir(data);
    let source = ShardSource::open(&dir)?;
    let source = Arc::new(if o.no_crc_check {
        source.without_crc_check()
    } else {
        source
    });
    let n = source.len();
    let builder = Arc::new(ViewBuilder::new(&o.augment)?);
    let plan_cfg = PlanConfig {
        repeats: 3,
        num_samples_multiple: 2,
    };
    let plan = Arc::new(EpochPlan::new(0, 0, n, &plan_cfg)?);
    let batch = o.batch.max(2);
    let mut slots = plan.len();
    if o.images > 0 {
        slots = slots.min(o.images);
    }
    slots -= slots % batch;
    if slots == 0 {
        return Err(PipelineError::Loader(format!(
            "{n} records give fewer views than one batch of {batch}"
        )));
    }
    let opts = LoaderOptions {
        batch_size: batch,
        threads: o.threads,
        prefetch: 2,
        drop_last: true,
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(o.threads)
        .build()
        .map_err(|e| PipelineError::Loader(e.to_string()))?;
    let samples: Vec<usize> = plan.samples()[..slots]
        .iter()
        .map(|&s| s as usize)
        .collect();
    // The regions the loader decodes: each slot's crop drawn from the stored size.
    let regions = (0..slots)
        .map(|k| {
            let i = plan.sample(k) as usize;
            let info = source.info(i)?;
            let crop = builder.crop_for(plan.slot_seed(k), info.width, info.height)?;
            Ok((i, builder.crop_region(crop, info.width, info.height)))
        })
        .collect::<Result<Vec<_>, PipelineError>>()?;
    let mut rep = LoaderBenchReport {
        views: slots,
        ..Default::default()
    };
    for r in 0..o.reps.max(1) {
        let t = Instant::now();
        let loader = Loader::train(source.clone(), plan.clone(), builder.clone(), 0, 1, &opts)?;
        let (mut seen, mut xor) = (0usize, 0u64);
        for b in loader {
            let b = b?;
            xor ^= b.view_hash.iter().fold(0, |a, h| a ^ h);
            seen += b.len();
            if seen >= slots {
                break;
            }
        }
        let loader_rate = seen as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        pool.install(|| {
            samples
                .par_iter()
                .try_for_each(|&i| source.decode(i).map(|_| ()))
        })?;
        let decode_rate = samples.len() as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        pool.install(|| {
            regions
                .par_iter()
                .try_for_each(|&(i, rect)| source.decode_region(i, rect).map(|_| ()))
        })?;
        let region_rate = regions.len() as f64 / t.elapsed().as_secs_f64();
        let _ = writeln!(
            rep.log,
            "rep {r}: loader {loader_rate:.1} img/s ({seen} views, xor of view hashes {xor:016x}), decode-only {decode_rate:.1} img/s, region-decode-only {region_rate:.1} img/s"
        );
        rep.loader_rate = rep.loader_rate.max(loader_rate);
        rep.decode_rate = rep.decode_rate.max(decode_rate);
        rep.region_decode_rate = rep.region_decode_rate.max(region_rate);
    }
    rep.stages = stage_breakdown(&source, &plan, &builder, o.stage_samples.min(slots))?;
    Ok(rep)
}

/// Single-thread microseconds per image of each stage over the first `count` slots.
pub fn stage_breakdown(
    source: &ShardSource,
    plan: &EpochPlan,
    builder: &ViewBuilder,
    count: usize,
) -> Result<Vec<(String, f64)>, PipelineError> {
    let count = (count - count % 2).max(2);
    let view_len = builder.view_len();
    let (mut read, mut decode, mut mix, mut hash) = (0u64, 0u64, 0u64, 0u64);
    // The loader's CRC-32 check of each record's first read (none with --no-crc-check).
    let mut crc = 0u64;
    let mut first_read = std::collections::HashSet::new();
    let mut st = StageTimes::default();
    // The loader writes each view straight into its (reused) batch buffer, then hashes it.
    let mut buf = vec![0f32; 2 * view_len];
    let rec_err = |i: usize, e: String| PipelineError::Record {
        index: i,
        location: "shards".into(),
        message: e,
    };
    for pair in 0..count / 2 {
        let (a, b) = buf.split_at_mut(view_len);
        for (k, dst) in [(2 * pair, &mut *a), (2 * pair + 1, &mut *b)] {
            let idx = plan.sample(k) as usize;
            let t = Instant::now();
            let rec = source
                .shards()
                .record(idx)
                .map_err(|e| rec_err(idx, e.to_string()))?;
            let bytes = rec.bytes.to_vec();
            std::hint::black_box(&bytes);
            read += t.elapsed().as_nanos() as u64;
            if source.checks_crc() && first_read.insert(idx) {
                let t = Instant::now();
                source
                    .shards()
                    .verify_record(idx)
                    .map_err(|e| rec_err(idx, e.to_string()))?;
                crc += t.elapsed().as_nanos() as u64;
            }
            // As the loader: the crop from the stored size, then decode only its region.
            let t = Instant::now();
            let seed = plan.slot_seed(k);
            let crop = builder.crop_for(seed, rec.width, rec.height)?;
            let region = builder.crop_region(crop, rec.width, rec.height);
            st.crop_resize += t.elapsed().as_nanos() as u64;
            let t = Instant::now();
            let (img, region) = crate::ingest::decode_record_region_around(&rec, region)
                .map_err(|e| rec_err(idx, e.to_string()))?;
            decode += t.elapsed().as_nanos() as u64;
            builder.sample_view_region(&img, region, crop, seed, dst, &mut st, true)?;
        }
        let t = Instant::now();
        let m = plan.pair_mix(pair, builder.config());
        builder.mix(a, b, &m);
        mix += t.elapsed().as_nanos() as u64;
        let t = Instant::now();
        std::hint::black_box(view_hash(&buf[..view_len]) ^ view_hash(&buf[view_len..]));
        hash += t.elapsed().as_nanos() as u64;
    }
    let us = |ns: u64| ns as f64 / count as f64 / 1e3;
    Ok(vec![
        ("read".into(), us(read)),
        ("CRC-32 (1st read)".into(), us(crc)),
        ("decode (region)".into(), us(decode)),
        ("crop/resize".into(), us(st.crop_resize)),
        ("flip+RandAugment".into(), us(st.randaugment)),
        ("normalize+erase".into(), us(st.normalize_erase)),
        ("mix".into(), us(mix)),
        ("view hash".into(), us(hash)),
    ])
}

impl LoaderBenchReport {
    /// A printable summary.
    pub fn summary(&self, threads: usize, batch: usize) -> String {
        let mut s = self.log.clone();
        let total: f64 = self.stages.iter().map(|x| x.1).sum();
        let _ = writeln!(s, "per-stage, 1 thread (us/img):");
        for (name, us) in &self.stages {
            let _ = writeln!(
                s,
                "  {name:<20} {us:8.1}  {:5.1}%",
                100.0 * us / total.max(1e-9)
            );
        }
        let _ = writeln!(
            s,
            "  {:<20} {total:8.1}  -> {:.0} img/s on one thread",
            "total",
            1e6 / total.max(1e-9)
        );
        let _ = writeln!(
            s,
            "RESULT threads {threads} batch {batch} views {}: loader {:.1} img/s, decode-only {:.1} img/s, loader/decode {:.0}%, region-decode-only {:.1} img/s",
            self.views,
            self.loader_rate,
            self.decode_rate,
            100.0 * self.loader_rate / self.decode_rate.max(1e-9),
            self.region_decode_rate
        );
        s
    }
}
