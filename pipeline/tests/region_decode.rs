//! Region decode in the training path: a view built from a decode of only the crop's
//! region (libjpeg-turbo, `ShardSource::decode_region`) is bit-identical to the view of
//! the fully decoded record, for RandomResizedCrop and RandomCrop+pad, on JPEG shards of
//! every chroma layout; and the loader over such shards is the same at any thread count.

use std::path::Path;
use std::sync::Arc;

use jpeg_encoder::{ColorType, Encoder, SamplingFactor};
use pipeline::config::{AugmentConfig, PlanConfig};
use pipeline::ingest::inputs::scan_root;
use pipeline::ingest::job::{shard_split, JobConfig};
use pipeline::ingest::process::IngestOptions;
use pipeline::loader::{Loader, LoaderOptions};
use pipeline::plan::EpochPlan;
use pipeline::source::{MemorySource, RecordSource, ShardSource};
use pipeline::transforms::crop::CropRect;
use pipeline::view::{build_slot_view, sample_view_from_source, ViewBuilder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const N: usize = 24;

/// An ImageFolder of RGB JPEGs (odd sizes; 4:2:0, 4:2:2, 4:4:4, 4:4:0, progressive,
/// restart markers), sharded as JPEG records stored byte for byte.
fn jpeg_shards(root: &Path) -> ShardSource {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let sizes = [(37, 23), (61, 45), (100, 75), (50, 50), (83, 97), (48, 33)];
    let layouts = [
        (SamplingFactor::R_4_2_0, false, 0),
        (SamplingFactor::R_4_2_2, false, 0),
        (SamplingFactor::R_4_4_4, false, 0),
        (SamplingFactor::R_4_4_0, false, 0),
        (SamplingFactor::R_4_2_0, true, 0),
        (SamplingFactor::R_4_2_0, false, 2),
    ];
    for i in 0..N {
        let (w, h) = sizes[i % sizes.len()];
        let (sampling, progressive, restart) = layouts[(i / 2) % layouts.len()];
        let px: Vec<u8> = (0..w * h * 3)
            .map(|k| {
                let (x, y) = ((k / 3) % w, (k / 3) / w);
                let edge = if (x / 4 + y / 6 + k % 3) % 2 == 0 {
                    30
                } else {
                    190
                };
                (edge + rng.random_range(0..60)) as u8
            })
            .collect();
        let mut bytes = Vec::new();
        let mut enc = Encoder::new(&mut bytes, 90);
        enc.set_sampling_factor(sampling);
        enc.set_progressive(progressive);
        if restart > 0 {
            enc.set_restart_interval(restart);
        }
        enc.encode(&px, w as u16, h as u16, ColorType::Rgb).unwrap();
        let dir = root.join("folder/train").join(format!("c{}", i % 3));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{i:03}.jpg")), &bytes).unwrap();
    }
    let cfg = JobConfig {
        ingest: IngestOptions {
            max_side: 10_000,
            ..IngestOptions::default()
        },
        shard_bytes: 1 << 20,
        seed: 3,
        threads: 2,
        input_kind: "imagefolder".into(),
        abort_after: None,
    };
    for split in scan_root(&root.join("folder")).unwrap() {
        shard_split(&split, &root.join("shards/train"), &cfg, &mut |_, _| {}).unwrap();
    }
    let src = ShardSource::open(&root.join("shards/train")).unwrap();
    assert_eq!(src.len(), N);
    for i in 0..N {
        let r = src.shards().record(i).unwrap();
        assert_eq!(r.encoding, formats::shard::Encoding::Jpeg);
    }
    src
}

/// The same records fully decoded, held in memory (the default, decode-then-crop path).
fn decoded(src: &ShardSource) -> MemorySource {
    let imgs = (0..src.len())
        .map(|i| (src.info(i).unwrap().label, src.decode(i).unwrap()))
        .collect();
    MemorySource::new(imgs, src.num_classes())
}

fn plan_cfg() -> PlanConfig {
    PlanConfig {
        repeats: 3,
        num_samples_multiple: 2,
    }
}

#[test]
fn region_decoded_views_equal_full_decode_views() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = jpeg_shards(tmp.path());
    let full = decoded(&shards);
    let mut tiny = AugmentConfig {
        input_size: 32,
        ..AugmentConfig::default()
    };
    tiny.crop.scale = [0.001, 1.0]; // crops down to 1-2 pixels
    let configs = [
        (
            "rrc",
            AugmentConfig {
                input_size: 32,
                ..AugmentConfig::default()
            },
        ),
        ("rrc tiny crops", tiny),
        ("random crop + pad", AugmentConfig::small_image(24)),
    ];
    for (name, aug) in configs {
        let b = ViewBuilder::new(&aug).unwrap();
        let (mut a, mut c) = (vec![0f32; b.view_len()], vec![0f32; b.view_len()]);
        let (mut partial, mut total) = (0, 0);
        for epoch in 0..10 {
            let plan = EpochPlan::new(9, epoch, N, &plan_cfg()).unwrap();
            for slot in 0..plan.len() {
                let i = plan.sample(slot) as usize;
                let info = shards.info(i).unwrap();
                let seed = plan.slot_seed(slot);
                sample_view_from_source(&shards, &b, i, info, seed, &mut a).unwrap();
                b.sample_view(&full.decode(i).unwrap(), seed, &mut c)
                    .unwrap();
                assert!(a == c, "{name}: epoch {epoch} slot {slot} record {i}");
                let crop = b.crop_for(seed, info.width, info.height).unwrap();
                let region = b.crop_region(crop, info.width, info.height);
                if (region.width, region.height) != (info.width, info.height) {
                    partial += 1;
                }
                total += 1;
            }
            // The mixed views of whole pairs agree too.
            for slot in [0, 1, plan.len() - 1] {
                let x = build_slot_view(&shards, &plan, &b, slot).unwrap();
                let y = build_slot_view(&full, &plan, &b, slot).unwrap();
                assert_eq!(x, y, "{name}: epoch {epoch} slot {slot}");
            }
        }
        assert!(
            total >= 240 && partial > total / 2,
            "{name}: {partial} of {total}"
        );
    }
}

#[test]
fn shard_region_decode_equals_decode_then_crop() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = jpeg_shards(tmp.path());
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for i in 0..N {
        let img = shards.decode(i).unwrap();
        let (w, h) = img.dimensions();
        for _ in 0..40 {
            let (cw, ch) = (rng.random_range(1..=w), rng.random_range(1..=h));
            let rect = CropRect {
                left: rng.random_range(0..=w - cw),
                top: rng.random_range(0..=h - ch),
                width: cw,
                height: ch,
            };
            let want = image::imageops::crop_imm(&img, rect.left, rect.top, cw, ch).to_image();
            assert!(
                shards.decode_region(i, rect).unwrap() == want,
                "record {i} {rect:?}"
            );
        }
        let outside = CropRect {
            left: w - 1,
            top: 0,
            width: 2,
            height: 1,
        };
        let e = shards.decode_region(i, outside).unwrap_err().to_string();
        assert!(
            e.contains("not inside") && e.contains(&format!("record {i}")),
            "{e}"
        );
    }
}

#[test]
fn shard_loader_is_the_same_at_any_thread_count_and_matches_full_decodes() {
    let tmp = tempfile::tempdir().unwrap();
    let src = jpeg_shards(tmp.path());
    let full = decoded(&src);
    let shards: Arc<dyn RecordSource> = Arc::new(src);
    let plan = Arc::new(EpochPlan::new(2, 1, N, &plan_cfg()).unwrap());
    let b = Arc::new(
        ViewBuilder::new(&AugmentConfig {
            input_size: 32,
            ..AugmentConfig::default()
        })
        .unwrap(),
    );
    let hashes = |threads: usize, batch: usize| -> Vec<u64> {
        let opts = LoaderOptions {
            batch_size: batch,
            threads,
            prefetch: 2,
            drop_last: false,
        };
        Loader::train(shards.clone(), plan.clone(), b.clone(), 0, 1, &opts)
            .unwrap()
            .flat_map(|batch| batch.unwrap().view_hash.clone())
            .collect()
    };
    let base = hashes(1, 8);
    assert_eq!(base.len(), plan.len());
    assert_eq!(hashes(2, 8), base);
    assert_eq!(hashes(2, 6), base);
    for (slot, &hash) in base.iter().enumerate() {
        let v = build_slot_view(&full, &plan, &b, slot).unwrap();
        assert_eq!(v.hash, hash, "slot {slot}");
    }
}
