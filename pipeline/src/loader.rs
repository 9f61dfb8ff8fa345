//! The streaming loader: decodes and augments on its own rayon pool (never the global
//! one, which candle uses), assembles batches in slot order into reused buffers, and
//! prefetches up to `prefetch` batches through a bounded channel. Two batches are built
//! at a time, so at most (prefetch + 3) batches are alive at once (the channel, the two
//! being built, the one the consumer holds). Batch buffers come from the process-wide
//! [`crate::batch_pool::BATCH_POOL`] and go back to it when a batch is dropped, so the next
//! loader (the next epoch) reuses them. Errors (a bad record names its shard and index)
//! come through the iterator and end it; dropping the loader stops the workers and joins
//! the thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError};
use rayon::prelude::*;

use crate::batch_pool::BATCH_POOL;
use crate::config::MixupMode;
use crate::error::PipelineError;
use crate::plan::EpochPlan;
use crate::source::RecordSource;
use crate::transforms::mix::mixed_target;
use crate::view::{build_pair_into, view_hash, ViewBuilder};

/// Loader settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoaderOptions {
    /// Images per batch (even for training: pairs never straddle batches).
    pub batch_size: usize,
    /// Worker threads of the loader's own pool.
    pub threads: usize,
    /// Finished batches queued ahead of the consumer.
    pub prefetch: usize,
    /// Drop the last partial batch (training default, as DeiT).
    pub drop_last: bool,
}

impl Default for LoaderOptions {
    fn default() -> Self {
        LoaderOptions {
            batch_size: 64,
            threads: 2,
            prefetch: 2,
            drop_last: true,
        }
    }
}

impl LoaderOptions {
    fn validate(&self, train: bool) -> Result<(), PipelineError> {
        if self.batch_size == 0 || (train && !self.batch_size.is_multiple_of(2)) {
            return Err(PipelineError::Loader(format!(
                "batch_size = {} must be {}",
                self.batch_size,
                if train {
                    "even and > 0 (pairs stay together)"
                } else {
                    "> 0"
                }
            )));
        }
        if self.threads == 0 || self.threads > 512 {
            return Err(PipelineError::Loader(format!(
                "threads = {} out of 1..=512",
                self.threads
            )));
        }
        if self.prefetch == 0 {
            return Err(PipelineError::Loader("prefetch must be >= 1".into()));
        }
        Ok(())
    }
}

/// One batch: images with their labels, lams, ids and view hashes. A training batch holds
/// whole pairs: in slot order in `mix.mode = "pair"`, else pair j at positions j and
/// n-1-j (timm's partner of image i is image n-1-i).
#[derive(Debug)]
pub struct Batch {
    /// Epoch of the slots (0 for eval).
    pub epoch: u64,
    /// Index of this batch in the loader's sequence.
    pub index: usize,
    /// Side of each image.
    pub size: u32,
    /// Images, shape (N, 3, size, size), f32, normalized (and erased, mixed in training).
    pub images: Vec<f32>,
    /// Slot of each image (dataset index for eval).
    pub slots: Vec<u32>,
    /// Dataset index of each image.
    pub samples: Vec<u32>,
    /// Each image's own label.
    pub label_a: Vec<u32>,
    /// The partner's label (= `label_a` when not mixed).
    pub label_b: Vec<u32>,
    /// Weight of `label_a` (1 when not mixed).
    pub lam: Vec<f32>,
    /// [`view_hash`] of each image.
    pub view_hash: Vec<u64>,
}

impl Batch {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Shape of `images`: `[N, 3, size, size]`.
    pub fn shape(&self) -> [usize; 4] {
        let s = self.size as usize;
        [self.len(), 3, s, s]
    }

    /// Image `i` as a 3 x size x size slice.
    pub fn image(&self, i: usize) -> &[f32] {
        let n = 3 * (self.size as usize).pow(2);
        &self.images[i * n..(i + 1) * n]
    }

    /// Dense targets (N x num_classes, row-major): smoothed one-hots mixed by lam,
    /// exactly timm's `mixup_target`.
    pub fn dense_targets(&self, num_classes: usize, smoothing: f64) -> Vec<f32> {
        let mut out = vec![0f32; self.len() * num_classes];
        if num_classes == 0 {
            return out;
        }
        for (i, row) in out.chunks_exact_mut(num_classes).enumerate() {
            mixed_target(
                self.label_a[i],
                self.label_b[i],
                self.lam[i],
                smoothing,
                row,
            );
        }
        out
    }

    /// Takes the image buffer out (the batch then holds an empty one).
    pub fn take_images(&mut self) -> Vec<f32> {
        std::mem::take(&mut self.images)
    }
}

impl Drop for Batch {
    /// Hands the image buffer (unless taken out) back to the batch pool.
    fn drop(&mut self) {
        BATCH_POOL.give(std::mem::take(&mut self.images));
    }
}

type Item = Result<Batch, PipelineError>;

/// What [`Loader::next_timeout`] found.
#[derive(Debug)]
pub enum Next {
    /// The next batch (or the error that ends the stream).
    Ready(Result<Batch, PipelineError>),
    /// Nothing yet within the timeout: the workers are still building it.
    Waiting,
    /// The stream has ended.
    Finished,
}

/// (slot, sample, label, lam, view hash) of one finished view.
type SlotRow = (u32, u32, u32, f32, u64);

/// Iterator over batches produced by a background thread with its own rayon pool.
pub struct Loader {
    rx: Option<Receiver<Item>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    num_batches: usize,
}

impl Loader {
    /// The training loader of rank `rank` of `world` over an epoch plan.
    pub fn train(
        source: Arc<dyn RecordSource>,
        plan: Arc<EpochPlan>,
        builder: Arc<ViewBuilder>,
        rank: usize,
        world: usize,
        opts: &LoaderOptions,
    ) -> Result<Loader, PipelineError> {
        opts.validate(true)?;
        if plan.dataset_len() != source.len() {
            return Err(PipelineError::Loader(format!(
                "plan is for {} images but the source has {}",
                plan.dataset_len(),
                source.len()
            )));
        }
        let pairs = Arc::new(plan.rank_pairs(rank, world)?);
        let pairs_per_batch = opts.batch_size / 2;
        let num_batches = if opts.drop_last {
            pairs.len() / pairs_per_batch
        } else {
            pairs.len().div_ceil(pairs_per_batch)
        };
        let view_len = builder.view_len();
        let size = builder.size();
        let epoch = plan.epoch();
        // Pair mode keeps a pair's views side by side (2j, 2j+1); batch and elem modes
        // lay them out as timm mixes a batch: image i with image n-1-i.
        let flip_layout = builder.config().mix.mode != MixupMode::Pair;
        let make = move |b: usize, stop: &AtomicBool| -> Item {
            let start = b * pairs_per_batch;
            let end = (start + pairs_per_batch).min(pairs.len());
            let my_pairs = &pairs[start..end];
            let n = 2 * my_pairs.len();
            let mut buf = BATCH_POOL.take(n * view_len);
            let build = |a: &mut [f32], bb: &mut [f32], pair: usize| {
                if stop.load(Ordering::Relaxed) {
                    return Err(PipelineError::Loader("stopped".into()));
                }
                let (ia, ib, [la, lb]) =
                    build_pair_into(source.as_ref(), &plan, &builder, pair, a, bb)?;
                let (ha, hb) = (view_hash(a), view_hash(bb));
                let (sa, sb) = (2 * pair, 2 * pair + 1);
                Ok([
                    (sa as u32, plan.sample(sa), ia.label, la, ha),
                    (sb as u32, plan.sample(sb), ib.label, lb, hb),
                ])
            };
            let results: Vec<Result<[SlotRow; 2], PipelineError>> = if flip_layout {
                // timm's batch and elem modes: pair j at positions j and n-1-j.
                let (lo, hi) = buf.split_at_mut(n / 2 * view_len);
                lo.par_chunks_mut(view_len)
                    .zip(hi.par_chunks_mut(view_len).rev())
                    .zip(my_pairs.par_iter())
                    .map(|((a, bb), &pair)| build(a, bb, pair))
                    .collect()
            } else {
                buf.par_chunks_mut(2 * view_len)
                    .zip(my_pairs.par_iter())
                    .map(|(chunk, &pair)| {
                        let (a, bb) = chunk.split_at_mut(view_len);
                        build(a, bb, pair)
                    })
                    .collect()
            };
            let mut batch = Batch {
                epoch,
                index: b,
                size,
                images: buf,
                slots: Vec::with_capacity(n),
                samples: Vec::with_capacity(n),
                label_a: Vec::with_capacity(n),
                label_b: Vec::with_capacity(n),
                lam: Vec::with_capacity(n),
                view_hash: Vec::with_capacity(n),
            };
            let rows: Vec<[SlotRow; 2]> = results.into_iter().collect::<Result<_, _>>()?;
            // Image i's (row, partner's row), in the buffer's order.
            let order: Vec<(SlotRow, SlotRow)> = if flip_layout {
                let first = rows.iter().map(|&[x, y]| (x, y));
                first
                    .chain(rows.iter().rev().map(|&[x, y]| (y, x)))
                    .collect()
            } else {
                rows.iter().flat_map(|&[x, y]| [(x, y), (y, x)]).collect()
            };
            for (me, other) in order {
                batch.slots.push(me.0);
                batch.samples.push(me.1);
                batch.label_a.push(me.2);
                batch.label_b.push(other.2);
                batch.lam.push(me.3);
                batch.view_hash.push(me.4);
            }
            Ok(batch)
        };
        Self::spawn(num_batches, opts, make)
    }

    /// The eval loader: every record of `source` in order, eval transform, no mixing
    /// (`slots` = dataset indices, `lam` = 1, `label_b` = `label_a`). Keeps the last
    /// partial batch unless `drop_last`.
    pub fn eval(
        source: Arc<dyn RecordSource>,
        builder: Arc<ViewBuilder>,
        opts: &LoaderOptions,
    ) -> Result<Loader, PipelineError> {
        opts.validate(false)?;
        let total = source.len();
        let bs = opts.batch_size;
        let num_batches = if opts.drop_last {
            total / bs
        } else {
            total.div_ceil(bs)
        };
        let view_len = builder.view_len();
        let size = builder.size();
        let make = move |b: usize, stop: &AtomicBool| -> Item {
            let start = b * bs;
            let end = (start + bs).min(total);
            let n = end - start;
            let mut buf = BATCH_POOL.take(n * view_len);
            let results: Vec<Result<(u32, u64), PipelineError>> = buf
                .par_chunks_mut(view_len)
                .zip((start..end).into_par_iter())
                .map(|(out, i)| {
                    if stop.load(Ordering::Relaxed) {
                        return Err(PipelineError::Loader("stopped".into()));
                    }
                    let info = source.info(i)?;
                    let img = source.decode(i)?;
                    builder
                        .eval_transform()
                        .view(&img, builder.normalizer(), out)
                        .map_err(|e| PipelineError::Record {
                            index: i,
                            location: "eval transform".into(),
                            message: e.to_string(),
                        })?;
                    Ok((info.label, view_hash(out)))
                })
                .collect();
            let mut batch = Batch {
                epoch: 0,
                index: b,
                size,
                images: buf,
                slots: (start as u32..end as u32).collect(),
                samples: (start as u32..end as u32).collect(),
                label_a: Vec::with_capacity(n),
                label_b: Vec::with_capacity(n),
                lam: vec![1.0; n],
                view_hash: Vec::with_capacity(n),
            };
            for r in results {
                let (label, h) = r?;
                batch.label_a.push(label);
                batch.label_b.push(label);
                batch.view_hash.push(h);
            }
            Ok(batch)
        };
        Self::spawn(num_batches, opts, make)
    }

    fn spawn(
        num_batches: usize,
        opts: &LoaderOptions,
        make: impl Fn(usize, &AtomicBool) -> Item + Send + Sync + 'static,
    ) -> Result<Loader, PipelineError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(opts.threads)
            .thread_name(|i| format!("deit-loader-{i}"))
            .build()
            .map_err(|e| PipelineError::Loader(format!("cannot start the worker pool: {e}")))?;
        let (tx, rx) = bounded::<Item>(opts.prefetch);
        let stop = Arc::new(AtomicBool::new(false));
        let stop_w = stop.clone();
        let handle = std::thread::Builder::new()
            .name("deit-loader".into())
            .spawn(move || {
                // Two batches are built at once (`rayon::join`): their pairs share the
                // pool, so a thread that finishes its part of one batch early works on the
                // other instead of idling at the batch's end. Delivery stays in order.
                let mut b = 0;
                while b < num_batches {
                    if stop_w.load(Ordering::Relaxed) {
                        return;
                    }
                    let two = b + 1 < num_batches;
                    let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        pool.install(|| {
                            if two {
                                let (x, y) =
                                    rayon::join(|| make(b, &stop_w), || make(b + 1, &stop_w));
                                vec![x, y]
                            } else {
                                vec![make(b, &stop_w)]
                            }
                        })
                    }))
                    .unwrap_or_else(|_| {
                        let which = if two {
                            format!("batch {b} or {}", b + 1)
                        } else {
                            format!("batch {b}")
                        };
                        vec![Err(PipelineError::Loader(format!(
                            "a worker panicked in {which}"
                        )))]
                    });
                    for item in built {
                        let failed = item.is_err();
                        if stop_w.load(Ordering::Relaxed) || tx.send(item).is_err() || failed {
                            return;
                        }
                    }
                    b += if two { 2 } else { 1 };
                }
            })
            .map_err(|e| PipelineError::Loader(format!("cannot start the loader thread: {e}")))?;
        Ok(Loader {
            rx: Some(rx),
            stop,
            handle: Some(handle),
            num_batches,
        })
    }

    /// Number of batches this loader yields when nothing fails.
    pub fn num_batches(&self) -> usize {
        self.num_batches
    }

    /// Waits at most `timeout` for the next batch, so that a caller can do other work
    /// between waits (the Python package checks for Ctrl-C there).
    pub fn next_timeout(&mut self, timeout: Duration) -> Next {
        let Some(rx) = self.rx.as_ref() else {
            return Next::Finished;
        };
        match rx.recv_timeout(timeout) {
            Ok(item) => Next::Ready(item),
            Err(RecvTimeoutError::Timeout) => Next::Waiting,
            Err(RecvTimeoutError::Disconnected) => Next::Finished,
        }
    }
}

impl Iterator for Loader {
    type Item = Result<Batch, PipelineError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receiver unblocks a producer waiting to send.
        self.rx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
