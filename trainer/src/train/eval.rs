//! Evaluation metrics: cross-entropy loss of the eval output and top-1/top-5 accuracy of
//! the class head, the distillation head and their mean (DeiT's eval output), as in the
//! official `engine.evaluate` (loss = CE of the mean of the heads, no smoothing).

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use pipeline::error::PipelineError;
use pipeline::loader::{Loader, LoaderOptions};
use pipeline::source::{RecordInfo, RecordSource};
use pipeline::view::ViewBuilder;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use crate::dist::Collective;
use crate::models::{Classifier, ForwardCtx, Precision};

/// Evaluation figures over a split. Accuracies are percentages (0-100), as DeiT logs them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalSummary {
    /// Images evaluated.
    pub images: u64,
    /// Mean cross-entropy of the eval output (mean of heads) against the label.
    pub loss: f64,
    /// Top-1 of the class head.
    pub top1_cls: f64,
    /// Top-5 of the class head.
    pub top5_cls: f64,
    /// Top-1 of the distillation head (distilled models only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top1_dist: Option<f64>,
    /// Top-5 of the distillation head (distilled models only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top5_dist: Option<f64>,
    /// Top-1 of the eval output (mean of the heads; the class head alone without one).
    pub top1: f64,
    /// Top-5 of the eval output.
    pub top5: f64,
}

#[derive(Clone, Debug, Default)]
struct HeadCounts {
    top1: u64,
    top5: u64,
}

impl HeadCounts {
    fn add(&mut self, row: &[f32], label: usize) {
        let (t1, t5) = topk_hits(row, label);
        self.top1 += t1 as u64;
        self.top5 += t5 as u64;
    }
}

/// Whether `label` is the argmax of `row` and whether it is among the 5 largest.
/// Ties rank by index (the lower index first), as a stable sort would.
pub fn topk_hits(row: &[f32], label: usize) -> (bool, bool) {
    let Some(&target) = row.get(label) else {
        return (false, false);
    };
    // Rank of the label = number of entries ranked before it.
    let rank = row
        .iter()
        .enumerate()
        .filter(|&(i, &v)| v > target || (v == target && i < label))
        .count();
    (rank == 0, rank < 5)
}

/// Cross-entropy `-log softmax(row)[label]` in f64 (log-sum-exp with max shift).
pub fn cross_entropy(row: &[f32], label: usize) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let lse = row
        .iter()
        .map(|&v| (v as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    lse - row.get(label).map_or(f64::NAN, |&v| v as f64)
}

/// Accumulates eval figures batch by batch.
#[derive(Clone, Debug, Default)]
pub struct EvalAccumulator {
    images: u64,
    loss_sum: f64,
    cls: HeadCounts,
    dist: Option<HeadCounts>,
    mean: HeadCounts,
}

impl EvalAccumulator {
    /// A fresh accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add one batch: `cls` and optional `dist` logits (row-major, `classes` per row) and
    /// the labels. The eval output is the mean of the heads when both exist.
    pub fn add_batch(&mut self, cls: &[f32], dist: Option<&[f32]>, classes: usize, labels: &[u32]) {
        for (i, &label) in labels.iter().enumerate() {
            let label = label as usize;
            let c = &cls[i * classes..(i + 1) * classes];
            self.cls.add(c, label);
            let mean_row: Vec<f32>;
            let out: &[f32] = match dist {
                Some(d) => {
                    let d = &d[i * classes..(i + 1) * classes];
                    self.dist
                        .get_or_insert_with(HeadCounts::default)
                        .add(d, label);
                    mean_row = c.iter().zip(d).map(|(a, b)| (a + b) / 2.0).collect();
                    &mean_row
                }
                None => c,
            };
            self.mean.add(out, label);
            self.loss_sum += cross_entropy(out, label);
            self.images += 1;
        }
    }

    /// The accumulator as numbers that add across ranks: images, loss sum, then the
    /// top-1/top-5 counts of the class head, the distillation head (zeros without one)
    /// and the eval output.
    pub fn to_sums(&self) -> [f64; 9] {
        let d = self.dist.clone().unwrap_or_default();
        [
            self.images as f64,
            self.loss_sum,
            self.cls.top1 as f64,
            self.cls.top5 as f64,
            d.top1 as f64,
            d.top5 as f64,
            self.mean.top1 as f64,
            self.mean.top5 as f64,
            self.dist.is_some() as u8 as f64,
        ]
    }

    /// The accumulator of [`Self::to_sums`] added over ranks (counts are exact in f64
    /// up to 2^53).
    pub fn from_sums(s: &[f64; 9]) -> Self {
        let counts = |a: f64, b: f64| HeadCounts {
            top1: a as u64,
            top5: b as u64,
        };
        EvalAccumulator {
            images: s[0] as u64,
            loss_sum: s[1],
            cls: counts(s[2], s[3]),
            dist: (s[8] > 0.0).then(|| counts(s[4], s[5])),
            mean: counts(s[6], s[7]),
        }
    }

    /// The figures so far.
    pub fn summary(&self) -> EvalSummary {
        let n = self.images.max(1) as f64;
        let pct = |k: u64| 100.0 * k as f64 / n;
        EvalSummary {
            images: self.images,
            loss: self.loss_sum / n,
            top1_cls: pct(self.cls.top1),
            top5_cls: pct(self.cls.top5),
            top1_dist: self.dist.as_ref().map(|d| pct(d.top1)),
            top5_dist: self.dist.as_ref().map(|d| pct(d.top5)),
            top1: pct(self.mean.top1),
            top5: pct(self.mean.top5),
        }
    }
}

/// A model as evaluation runs it.
pub struct EvalModel<'a> {
    /// The classifier.
    pub model: &'a dyn Classifier,
    /// Whether to ask for both heads: a distilled DeiT built with drop path 0 returns the
    /// class and distillation heads separately in train mode, which (no dropout, no
    /// BatchNorm) computes exactly the eval forward pass. Otherwise the eval forward pass
    /// is used and there is one head.
    pub both_heads: bool,
    /// Compute precision of the forward passes (the run's resolved `[run] precision`).
    pub precision: Precision,
}

/// Evaluate `model` on every record of `source` with the eval transform (resize, centre
/// crop, normalize); `on_batch` is called after each batch with its size.
pub fn evaluate(
    model: &EvalModel<'_>,
    source: Arc<dyn RecordSource>,
    builder: Arc<ViewBuilder>,
    opts: &LoaderOptions,
    device: &Device,
    on_batch: &mut dyn FnMut(usize),
) -> Result<EvalSummary> {
    Ok(accumulate(model, source, builder, opts, device, on_batch)?.summary())
}

/// [`evaluate`] split over the ranks of `comm`: rank `r` evaluates records `r, r + world,
/// ...` and the counts and loss sums are added over the ranks, so every rank returns the
/// figures of the whole split (the same counts as one process; the mean loss up to the
/// order of its sum). With one rank this is [`evaluate`].
pub fn evaluate_distributed(
    model: &EvalModel<'_>,
    source: Arc<dyn RecordSource>,
    builder: Arc<ViewBuilder>,
    opts: &LoaderOptions,
    device: &Device,
    on_batch: &mut dyn FnMut(usize),
    comm: &dyn Collective,
) -> Result<EvalSummary> {
    if comm.world() <= 1 {
        return evaluate(model, source, builder, opts, device, on_batch);
    }
    let part: Arc<dyn RecordSource> = Arc::new(RankSubset {
        inner: source,
        rank: comm.rank(),
        world: comm.world(),
    });
    let mut sums = accumulate(model, part, builder, opts, device, on_batch)?.to_sums();
    comm.all_reduce_sum_f64(&mut sums)
        .context("adding the evaluation counts over the ranks")?;
    // Every rank of a world of n reports the head set; n ranks add it n times.
    sums[8] = sums[8].min(1.0);
    Ok(EvalAccumulator::from_sums(&sums).summary())
}

/// The records `rank, rank + world, ...` of a source (one rank's share of an evaluation).
struct RankSubset {
    inner: Arc<dyn RecordSource>,
    rank: usize,
    world: usize,
}

impl RankSubset {
    fn outer(&self, index: usize) -> usize {
        index * self.world + self.rank
    }
}

impl RecordSource for RankSubset {
    fn len(&self) -> usize {
        self.inner
            .len()
            .saturating_sub(self.rank)
            .div_ceil(self.world)
    }
    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }
    fn info(&self, index: usize) -> Result<RecordInfo, PipelineError> {
        self.inner.info(self.outer(index))
    }
    fn decode(&self, index: usize) -> Result<image::RgbImage, PipelineError> {
        self.inner.decode(self.outer(index))
    }
    fn decode_region(
        &self,
        index: usize,
        rect: pipeline::transforms::crop::CropRect,
    ) -> Result<image::RgbImage, PipelineError> {
        self.inner.decode_region(self.outer(index), rect)
    }
    fn decode_region_around(
        &self,
        index: usize,
        rect: pipeline::transforms::crop::CropRect,
    ) -> Result<(image::RgbImage, pipeline::transforms::crop::CropRect), PipelineError> {
        self.inner.decode_region_around(self.outer(index), rect)
    }
}

fn accumulate(
    model: &EvalModel<'_>,
    source: Arc<dyn RecordSource>,
    builder: Arc<ViewBuilder>,
    opts: &LoaderOptions,
    device: &Device,
    on_batch: &mut dyn FnMut(usize),
) -> Result<EvalAccumulator> {
    let classes = model.model.num_classes();
    let loader = Loader::eval(
        source,
        builder,
        &LoaderOptions {
            drop_last: false,
            ..opts.clone()
        },
    )
    .context("starting the eval loader")?;
    let ctx = if model.both_heads {
        ForwardCtx::train(0)
    } else {
        ForwardCtx::eval()
    }
    .with_precision(model.precision);
    let mut acc = EvalAccumulator::new();
    for batch in loader {
        let mut batch = batch.context("eval data")?;
        let n = batch.len();
        if let Some(&bad) = batch.label_a.iter().find(|&&l| l as usize >= classes) {
            anyhow::bail!(
                "record label {bad} is out of range for a model with {classes} classes \
                 (dataset and model class counts differ)"
            );
        }
        let x = super::batch_images(&mut batch, device)?;
        let out = model.model.forward(&x, &ctx).context("eval forward pass")?;
        let to_vec = |t: &Tensor| -> Result<Vec<f32>> {
            Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
        };
        let cls = to_vec(&out.cls)?;
        let dist = out.dist.as_ref().map(to_vec).transpose()?;
        acc.add_batch(&cls, dist.as_deref(), classes, &batch.label_a);
        on_batch(n);
    }
    Ok(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topk_ranks_with_ties_by_index() {
        let row = [0.1, 0.9, 0.5, 0.5, 0.2, 0.3, 0.0];
        assert_eq!(topk_hits(&row, 1), (true, true));
        assert_eq!(topk_hits(&row, 2), (false, true));
        // rank of index 4 (0.2): 0.9, 0.5, 0.5, 0.3 before it -> rank 4 -> in top-5
        assert_eq!(topk_hits(&row, 4), (false, true));
        // index 0 (0.1): five larger -> rank 5 -> out
        assert_eq!(topk_hits(&row, 0), (false, false));
        assert_eq!(topk_hits(&row, 99), (false, false));
    }

    #[test]
    fn cross_entropy_matches_closed_form() {
        // uniform logits over 4 classes: CE = ln 4
        assert!((cross_entropy(&[2.0; 4], 3) - 4f64.ln()).abs() < 1e-12);
        // [0, ln 3]: softmax = [1/4, 3/4]
        let r = [0.0, 3f32.ln()];
        assert!((cross_entropy(&r, 1) - (4.0f64 / 3.0).ln()).abs() < 1e-6);
    }

    #[test]
    fn accumulator_averages_heads() {
        let mut acc = EvalAccumulator::new();
        // 2 images, 3 classes. cls says class 0, dist says class 2; the mean decides.
        let cls = [3.0, 0.0, 0.0, 0.0, 1.0, 0.0];
        let dist = [0.0, 0.0, 1.0, 0.0, 0.0, 5.0];
        acc.add_batch(&cls, Some(&dist), 3, &[0, 2]);
        let s = acc.summary();
        assert_eq!(s.images, 2);
        assert_eq!(s.top1_cls, 50.0);
        assert_eq!(s.top1_dist, Some(50.0));
        // mean rows: [1.5, 0, .5] -> 0 correct; [0, .5, 2.5] -> 2 correct
        assert_eq!(s.top1, 100.0);
        let expect =
            (cross_entropy(&[1.5, 0.0, 0.5], 0) + cross_entropy(&[0.0, 0.5, 2.5], 2)) / 2.0;
        assert!((s.loss - expect).abs() < 1e-12);
    }
}
