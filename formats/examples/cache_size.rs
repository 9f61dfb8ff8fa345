//! Measures bytes per cached view on synthetic but realistic teacher outputs and leaves the
//! cache behind for `tools/check_cache_pyarrow.py`.
//!
//! `cargo run --release -p formats --features parquet --example cache_size -- OUT_DIR
//!  [num_classes=1000] [top_k=10] [dataset_len=1281167] [slots=262144] [parts=1] [zstd_level=9]`
//!
//! Plan: the layout of `pipeline::plan::EpochPlan` with 3 repeats (see below), slots
//! paired (2k, 2k+1) as Mixup/CutMix partners sharing lam (half Mixup with a continuous lam, half
//! CutMix with a box-area lam). Logits: N(0, 1.5) noise, the sample's class +9 +- 2, five
//! fixed "confusable" classes per class +4 +- 1.5, and the partner's class boosted by
//! 9 * (1 - lam) on mixed views: a peaked teacher whose top-1 carries most of the mass.

use std::path::PathBuf;

use formats::cache_schema::{
    CacheBinding, CacheRow, CacheWriter, FileHeader, PartSpec, TeacherCache, ViewKey,
    WriterOptions, CACHE_FORMAT_VERSION,
};

struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    fn normal(&mut self) -> f64 {
        (-2.0 * self.unit().ln()).sqrt() * (std::f64::consts::TAU * self.unit()).cos()
    }
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, default: T) -> Result<T, String> {
    match args.get(i) {
        None => Ok(default),
        Some(s) => s
            .parse()
            .map_err(|_| format!("argument {i} `{s}` is not a number")),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let out = PathBuf::from(
        args.get(1)
            .ok_or("usage: cache_size OUT_DIR [C] [K] [N] [slots] [parts] [zstd]")?,
    );
    let c: u32 = arg(&args, 2, 1000)?;
    let k: u32 = arg(&args, 3, 10)?;
    let n: u32 = arg(&args, 4, 1_281_167)?;
    let slots: u32 = arg(&args, 5, 262_144)?;
    let parts: u32 = arg(&args, 6, 1)?;
    let zstd_level: i32 = arg(&args, 7, WriterOptions::default().zstd_level)?;
    let slots = slots & !1;
    let mut rng = Rng(0x5eed);
    // The layout of `pipeline::plan::EpochPlan`: a seeded permutation, every entry
    // repeated 3 times in a row (`stream`), epoch length L = floor(N / 256) * 256, slot 2k
    // = stream[k], slot 2k+1 = stream[k + L/2]; the first `slots` slots are measured.
    let mut perm: Vec<u32> = (0..n).collect();
    for i in (1..perm.len()).rev() {
        perm.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let len = (n as usize / 256 * 256).max(2);
    let slots = slots.min(len as u32);
    let stream = |k: usize| perm[(k / 3) % perm.len()];
    let plan: Vec<u32> = (0..slots as usize / 2)
        .flat_map(|k| [stream(k), stream(k + len / 2)])
        .collect();
    let class_of = |s: u32| (u64::from(s).wrapping_mul(2_654_435_761) % u64::from(c)) as usize;
    let binding = CacheBinding {
        format_version: CACHE_FORMAT_VERSION,
        dataset_fingerprint: "synthetic".into(),
        augment_config_json: "{}".into(),
        augment_config_hash: "synthetic".into(),
        run_seed: 0,
        repeats: 3,
        teacher_arch: "synthetic-peaked".into(),
        teacher_weights_hash: "none".into(),
        top_k: k,
        num_classes: c,
        pipeline_version: "synthetic".into(),
    };
    let mut rows = Vec::with_capacity(slots as usize);
    let mut logits = vec![0f32; c as usize];
    let mut lam = 1.0f32;
    for slot in 0..slots {
        if slot.is_multiple_of(2) {
            lam = if rng.below(2) == 0 {
                // Mixup: a continuous lam (arcsine-shaped like Beta(0.8, 0.8)).
                (std::f64::consts::FRAC_PI_2 * rng.unit()).sin().powi(2) as f32
            } else {
                // CutMix: lam from an integer box on 224 x 224.
                let (w, h) = (rng.below(225), rng.below(225));
                1.0 - (w * h) as f32 / (224.0 * 224.0)
            };
        }
        let sample = plan[slot as usize];
        let partner = plan[(slot ^ 1) as usize];
        for v in logits.iter_mut() {
            *v = (1.5 * rng.normal()) as f32;
        }
        let own = class_of(sample);
        logits[own] += (9.0 + 2.0 * rng.normal()) as f32;
        for j in 1..=5 {
            logits[(own + j * 7) % c as usize] += (4.0 + 1.5 * rng.normal()) as f32;
        }
        let other = class_of(partner);
        logits[other] += 9.0 * (1.0 - lam);
        let key = ViewKey {
            epoch: 0,
            slot,
            sample,
            partner,
            lam,
            view_hash: rng.next_u64(),
        };
        rows.push(CacheRow::from_logits(key, &logits, k as usize)?);
    }
    std::fs::create_dir_all(&out)?;
    for p in 1..=parts {
        let part = if parts == 1 {
            PartSpec::WHOLE
        } else {
            PartSpec::new(p, parts)?
        };
        let header = FileHeader {
            binding: binding.clone(),
            epoch: 0,
            part,
            epoch_slots: slots,
            dataset_len: n,
        };
        let opts = WriterOptions {
            zstd_level,
            ..WriterOptions::default()
        };
        let mut w = CacheWriter::create_with(&out, header, opts)?;
        let mine: Vec<CacheRow> = rows
            .iter()
            .filter(|r| (r.key.slot / 2) % parts == p - 1)
            .cloned()
            .collect();
        w.write_rows(&mine)?;
        w.finish()?;
    }
    let cache = TeacherCache::open(&out, &binding)?;
    cache.require_epochs(0..1)?;
    print!("{}", cache.summary());
    let start = std::time::Instant::now();
    let mut read = 0u64;
    for row in cache.epoch_reader(0)? {
        read += u64::from(row?.slot == read as u32);
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "  streamed {read} rows in slot order in {secs:.3} s ({:.0} rows/s)",
        read as f64 / secs
    );
    Ok(())
}
