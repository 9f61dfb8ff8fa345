//! `mix.mode = batch | pair | elem` (timm `Mixup` modes, `--mixup-mode`): exact
//! semantics in the loader's batches (image i mixed with image B-1-i, one lam and CutMix
//! box per batch in batch mode, one per image in elem mode), every choice a function of
//! seed, epoch and slot (the same per slot at any world size and thread count, and
//! replayed by `build_slot_view`), and the mode in the augmentation fingerprint.

use std::collections::HashMap;
use std::sync::Arc;

use image::{Rgb, RgbImage};
use pipeline::config::{AugmentConfig, MixupMode, PlanConfig};
use pipeline::loader::{Batch, Loader, LoaderOptions};
use pipeline::plan::EpochPlan;
use pipeline::source::{MemorySource, RecordSource};
use pipeline::transforms::mix::{MixMode, PairMix};
use pipeline::view::{build_slot_view, ViewBuilder};

fn source(n: u32) -> Arc<dyn RecordSource> {
    let imgs = (0..n)
        .map(|i| {
            let img = RgbImage::from_fn(30 + (i % 3) * 7, 28 + (i % 4) * 5, |x, y| {
                Rgb([
                    ((x * 7 + i * 31) % 256) as u8,
                    ((y * 5 + i * 17) % 256) as u8,
                    ((x * y + i) % 251) as u8,
                ])
            });
            (i % 7, img)
        })
        .collect();
    Arc::new(MemorySource::new(imgs, 7))
}

fn aug(mode: MixupMode, batch: u32) -> AugmentConfig {
    let mut a = AugmentConfig {
        input_size: 16,
        auto_augment: None,
        ..AugmentConfig::default()
    };
    a.mix.mode = mode;
    a.mix.batch_size = if mode == MixupMode::Batch { batch } else { 0 };
    a
}

fn plan(epoch: u64) -> Arc<EpochPlan> {
    let cfg = PlanConfig {
        repeats: 1,
        num_samples_multiple: 2,
    };
    Arc::new(EpochPlan::new(7, epoch, 96, &cfg).unwrap())
}

fn batches(
    a: &AugmentConfig,
    batch: usize,
    rank: usize,
    world: usize,
    threads: usize,
) -> Vec<Batch> {
    let opts = LoaderOptions {
        batch_size: batch,
        threads,
        prefetch: 2,
        drop_last: true,
    };
    let b = Arc::new(ViewBuilder::new(a).unwrap());
    Loader::train(source(96), plan(2), b, rank, world, &opts)
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

/// Every slot's (lam, label_b, view hash) over all ranks' batches.
fn per_slot(a: &AugmentConfig, batch: usize, world: usize) -> HashMap<u32, (f32, u32, u64)> {
    let mut m = HashMap::new();
    for rank in 0..world {
        for b in batches(a, batch, rank, world, 1 + rank % 2) {
            for i in 0..b.len() {
                m.insert(b.slots[i], (b.lam[i], b.label_b[i], b.view_hash[i]));
            }
        }
    }
    m
}

#[test]
fn batch_mode_is_timms_one_lam_and_box_per_batch_flipped_partner() {
    let bsz = 16usize;
    let a = aug(MixupMode::Batch, bsz as u32);
    let p = plan(2);
    let src = source(96);
    let builder = ViewBuilder::new(&a).unwrap();
    let mut lams = Vec::new();
    let mut cut_batches = 0;
    for b in batches(&a, bsz, 0, 1, 2) {
        let n = b.len();
        assert_eq!(n, bsz);
        for i in 0..n {
            let j = n - 1 - i;
            // Image i's partner is image B-1-i.
            assert_eq!(b.slots[i] ^ 1, b.slots[j], "batch {} image {i}", b.index);
            assert_eq!(b.label_b[i], b.label_a[j]);
            // One lam for the whole batch.
            assert_eq!(b.lam[i], b.lam[0]);
            // The loader's image is the replayable view of its slot.
            let v = build_slot_view(src.as_ref(), &p, &builder, b.slots[i] as usize).unwrap();
            assert_eq!((v.hash, v.lam), (b.view_hash[i], b.lam[i]));
            assert_eq!(b.image(i), &v.data[..]);
        }
        // One mode, lam and CutMix box for every pair of the batch.
        let first = b.slots[0] as usize / 2;
        let mix = p.pair_mix(first, &a);
        for i in 0..n / 2 {
            assert_eq!(p.pair_mix(b.slots[i] as usize / 2, &a), mix);
        }
        let PairMix::Shared(m) = mix else {
            panic!("batch mode shares its parameters")
        };
        if m.mode == MixMode::Cutmix {
            assert!(m.cut_box.is_some());
            cut_batches += 1;
        }
        lams.push(b.lam[0]);
    }
    assert_eq!(lams.len(), 96 / bsz);
    // Different batches draw different lams (Beta draws), and CutMix happens.
    lams.dedup();
    assert!(lams.len() > 3, "{lams:?}");
    assert!(cut_batches >= 1 || lams.len() == 96 / bsz);
}

#[test]
fn elem_mode_one_lam_per_image_flipped_partner() {
    let a = aug(MixupMode::Elem, 0);
    let p = plan(2);
    let mut differ = 0;
    for b in batches(&a, 8, 0, 1, 2) {
        let n = b.len();
        for i in 0..n {
            let j = n - 1 - i;
            assert_eq!(b.slots[i] ^ 1, b.slots[j]);
            assert_eq!(b.label_b[i], b.label_a[j]);
            let pair = b.slots[i] as usize / 2;
            let PairMix::PerView(v) = p.pair_mix(pair, &a) else {
                panic!("elem mode draws per view")
            };
            assert_eq!(b.lam[i], v[b.slots[i] as usize & 1].lam);
            if b.lam[i] != b.lam[j] {
                differ += 1;
            }
        }
    }
    assert!(differ > 10, "partners have their own lams ({differ})");
}

#[test]
fn pair_mode_keeps_its_layout_and_lams() {
    let a = aug(MixupMode::Pair, 0);
    let p = plan(2);
    for b in batches(&a, 8, 0, 1, 2) {
        for i in (0..b.len()).step_by(2) {
            assert_eq!(b.slots[i] + 1, b.slots[i + 1]);
            assert_eq!(b.lam[i], b.lam[i + 1]);
            let PairMix::Shared(m) = p.pair_mix(b.slots[i] as usize / 2, &a) else {
                panic!("pair mode shares its parameters")
            };
            assert_eq!(m.lam, b.lam[i]);
        }
    }
}

#[test]
fn every_mode_is_a_function_of_seed_epoch_and_slot() {
    for mode in [MixupMode::Batch, MixupMode::Pair, MixupMode::Elem] {
        // Batch mode: one lam per 16 plan slots, so one per batch on 1 rank of 16 and on
        // 2 ranks of 8 alike.
        let a = aug(mode, 16);
        let one = per_slot(&a, 16, 1);
        assert_eq!(one.len(), 96);
        assert_eq!(per_slot(&a, 8, 2), one, "{mode:?}: 2 ranks of 8");
        assert_eq!(per_slot(&a, 16, 1), one, "{mode:?}: again");
        if mode == MixupMode::Batch {
            // 2 ranks x 8: each rank's batch still has one lam.
            for rank in 0..2 {
                for b in batches(&a, 8, rank, 2, 1) {
                    assert!(b.lam.iter().all(|&l| l == b.lam[0]), "{:?}", b.lam);
                }
            }
        }
    }
}

#[test]
fn mode_is_part_of_the_fingerprint() {
    let hashes: Vec<u64> = [
        aug(MixupMode::Pair, 0),
        aug(MixupMode::Elem, 0),
        aug(MixupMode::Batch, 16),
        aug(MixupMode::Batch, 32),
    ]
    .iter()
    .map(|a| a.hash())
    .collect();
    for i in 0..hashes.len() {
        for j in 0..i {
            assert_ne!(hashes[i], hashes[j], "configs {i} and {j}");
        }
    }
    assert!(aug(MixupMode::Elem, 0)
        .canonical_json()
        .contains("\"mode\":\"elem\""));
    // Batch mode without its group size is refused, not run as another mode.
    let mut unset = aug(MixupMode::Batch, 16);
    unset.mix.batch_size = 0;
    let e = ViewBuilder::new(&unset).err().unwrap().to_string();
    assert!(e.contains("mix.batch_size"), "{e}");
    let mut c = AugmentConfig::default();
    c.set_timm_arg("--mixup-mode", "elem").unwrap();
    assert_eq!(c.mix.mode, MixupMode::Elem);
    assert!(c.set_timm_arg("--mixup-mode", "rows").is_err());
}
