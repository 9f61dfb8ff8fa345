//! A loader reuses the batch buffers an earlier loader's dropped batches gave back to
//! `pipeline::batch_pool::BATCH_POOL`, and the stale contents change nothing: the views
//! are the same. Its own test binary (one test), so no other test shares the pool.

use std::collections::HashSet;
use std::sync::Arc;

use image::{Rgb, RgbImage};
use pipeline::batch_pool::BATCH_POOL;
use pipeline::config::{AugmentConfig, PlanConfig};
use pipeline::loader::{Batch, Loader, LoaderOptions};
use pipeline::plan::EpochPlan;
use pipeline::source::MemorySource;
use pipeline::view::ViewBuilder;

/// (buffer address, view hashes) of every batch of one epoch-0 loader; with `hold`, all
/// batches stay alive until the loader is done (so each has its own buffer), else each is
/// dropped as soon as it arrives.
fn run(
    src: &Arc<MemorySource>,
    plan: &Arc<EpochPlan>,
    builder: &Arc<ViewBuilder>,
    hold: bool,
) -> Vec<(usize, Vec<u64>)> {
    let opts = LoaderOptions {
        batch_size: 8,
        threads: 2,
        prefetch: 2,
        drop_last: true,
    };
    let loader = Loader::train(src.clone(), plan.clone(), builder.clone(), 0, 1, &opts).unwrap();
    let summary = |b: &Batch| (b.images.as_ptr() as usize, b.view_hash.clone());
    if hold {
        let batches: Vec<Batch> = loader.map(Result::unwrap).collect();
        batches.iter().map(summary).collect()
    } else {
        loader.map(|b| summary(&b.unwrap())).collect()
    }
}

#[test]
fn a_second_loader_reuses_the_first_ones_buffers_with_the_same_views() {
    let imgs = (0..72u32)
        .map(|i| {
            let img = RgbImage::from_fn(40 + i % 7, 30 + i % 5, |x, y| {
                Rgb([(x * 9 + i) as u8, (y * 3 + i * 5) as u8, (x ^ y) as u8])
            });
            (i % 4, img)
        })
        .collect();
    let src = Arc::new(MemorySource::new(imgs, 4));
    let aug = AugmentConfig {
        input_size: 24,
        ..AugmentConfig::default()
    };
    let builder = Arc::new(ViewBuilder::new(&aug).unwrap());
    let plan_cfg = PlanConfig {
        repeats: 3,
        num_samples_multiple: 2,
    };
    let plan = Arc::new(EpochPlan::new(0, 0, 72, &plan_cfg).unwrap());
    assert!(BATCH_POOL.is_empty());
    // The first loader's 9 batches are alive at once: 9 buffers, of which the pool keeps
    // 6 when they are dropped; the second loader has at most prefetch + 3 = 5 batches
    // alive at a time, so it needs no new buffer.
    assert_eq!(plan.len() / 8, 9, "the epoch has 9 full batches of 8");
    let first = run(&src, &plan, &builder, true);
    assert_eq!(first.len(), 9);
    let first_buffers: HashSet<usize> = first.iter().map(|b| b.0).collect();
    assert_eq!(first_buffers.len(), 9);
    assert_eq!(
        BATCH_POOL.len(),
        6,
        "dropped batches gave their buffers back"
    );
    let second = run(&src, &plan, &builder, false);
    assert!(
        second.iter().all(|b| first_buffers.contains(&b.0)),
        "every batch of the second loader reused a buffer of the first"
    );
    let hashes = |r: &[(usize, Vec<u64>)]| r.iter().map(|b| b.1.clone()).collect::<Vec<_>>();
    assert_eq!(
        hashes(&first),
        hashes(&second),
        "stale buffers change no view"
    );
}
