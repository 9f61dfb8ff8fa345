//! `cargo bench -p pipeline --bench jpeg_decoders -- --shards DIR [--reps N]`: the figures
//! behind the JPEG decoder choice. One thread, every JPEG record of the split: the image
//! crate's decoder (zune-jpeg) full, libjpeg-turbo full (`decode_record`), and
//! libjpeg-turbo decoding only the region of each record's DeiT RandomResizedCrop
//! (`decode_record_region`, crops drawn as the loader draws them). Microseconds per
//! image, best of `--reps` passes.

use std::io::Cursor;
use std::path::PathBuf;
use std::time::Instant;

use formats::shard::Encoding;
use image::{ImageFormat, ImageReader};
use pipeline::bench::split_dir;
use pipeline::config::{AugmentConfig, PlanConfig};
use pipeline::ingest::{decode_record, decode_record_region};
use pipeline::plan::EpochPlan;
use pipeline::source::ShardSource;
use pipeline::view::ViewBuilder;

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let get = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let Some(shards) = get("--shards").map(PathBuf::from) else {
        println!("usage: cargo bench -p pipeline --bench jpeg_decoders -- --shards DIR [--reps N]");
        return Ok(());
    };
    let reps: usize = get("--reps").map_or(Ok(3), |v| v.parse().map_err(|_| "--reps"))?;
    let src = ShardSource::open(&split_dir(&shards)).map_err(|e| e.to_string())?;
    let set = src.shards();
    let builder = ViewBuilder::new(&AugmentConfig::default()).map_err(|e| e.to_string())?;
    let plan_cfg = PlanConfig {
        repeats: 1,
        num_samples_multiple: 2,
    };
    let plan = EpochPlan::new(0, 0, set.len(), &plan_cfg).map_err(|e| e.to_string())?;
    // (record, its crop region) for one epoch's slots, JPEG records only.
    let mut jobs = Vec::new();
    let mut area = 0.0;
    for slot in 0..plan.len() {
        let i = plan.sample(slot) as usize;
        let r = set.record(i).map_err(|e| e.to_string())?;
        if r.encoding != Encoding::Jpeg {
            continue;
        }
        let crop = builder
            .crop_for(plan.slot_seed(slot), r.width, r.height)
            .map_err(|e| e.to_string())?;
        let region = builder.crop_region(crop, r.width, r.height);
        area += f64::from(region.width * region.height) / f64::from(r.width * r.height);
        jobs.push((i, region));
    }
    if jobs.is_empty() {
        return Err("no JPEG records".into());
    }
    let n = jobs.len() as f64;
    println!(
        "{} JPEG records, mean crop area {:.1}% of the image",
        jobs.len(),
        100.0 * area / n
    );
    let mut best = [f64::MAX; 3];
    for _ in 0..reps.max(1) {
        for (k, slot) in best.iter_mut().enumerate() {
            let t = Instant::now();
            for &(i, region) in &jobs {
                let r = set.record(i).map_err(|e| e.to_string())?;
                let px = match k {
                    0 => {
                        let reader =
                            ImageReader::with_format(Cursor::new(r.bytes), ImageFormat::Jpeg);
                        reader.decode().map_err(|e| e.to_string())?.into_rgb8()
                    }
                    1 => decode_record(&r).map_err(|e| e.to_string())?,
                    _ => decode_record_region(&r, region).map_err(|e| e.to_string())?,
                };
                std::hint::black_box(px);
            }
            *slot = slot.min(t.elapsed().as_secs_f64() * 1e6 / n);
        }
    }
    for (name, us) in [
        "image crate (zune-jpeg), full",
        "libjpeg-turbo 2.1, full",
        "libjpeg-turbo 2.1, RRC region",
    ]
    .iter()
    .zip(best)
    {
        println!("  {name:<32} {us:8.1} us/img  ({:.0} img/s)", 1e6 / us);
    }
    Ok(())
}
