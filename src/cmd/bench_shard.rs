//! `deit-pipe bench shard`: `shard` throughput against a bare decode+resize+encode loop on
//! the same files and thread count (the practical limit). Results go to BENCHMARKS.md.

use anyhow::Context;
use formats::shard::Encoding;
use pipeline::ingest::decode::decode_input;
use pipeline::ingest::encode::{encode_jpeg, encode_raw};
use pipeline::ingest::inputs::scan_root;
use pipeline::ingest::job::{shard_split, JobConfig};
use pipeline::ingest::process::{IngestOptions, DEFAULT_MAX_PIXELS};
use pipeline::ingest::resize::{resize_rgb, target_size, Resizer};
use rayon::prelude::*;
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `deit-pipe bench shard`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// ImageFolder root (e.g. made by tools/make_bench_photos.py); its train/ split is used.
    #[arg(long)]
    pub input: PathBuf,
    /// Shorter-side limit (as in `shard`).
    #[arg(long, default_value_t = 256)]
    pub max_side: u32,
    /// JPEG quality.
    #[arg(long, default_value_t = 90)]
    pub quality: u8,
    /// Restart interval target of JPEG records (as `deit-pipe shard --restart-mcus`).
    #[arg(long, default_value_t = pipeline::ingest::process::DEFAULT_RESTART_MCUS)]
    pub restart_mcus: u32,
    /// Store raw RGB+zstd instead of JPEG.
    #[arg(long)]
    pub raw: bool,
    /// Worker threads for both measurements.
    #[arg(long, default_value_t = 2, value_parser = super::positive)]
    pub threads: usize,
    /// Alternating repetitions of each measurement (the best is reported).
    #[arg(long, default_value_t = 2)]
    pub reps: usize,
}

/// Run the benchmark and print images/s of both and their ratio.
pub fn run(args: Args) -> anyhow::Result<()> {
    let splits =
        scan_root(&args.input).with_context(|| format!("reading {}", args.input.display()))?;
    let split = splits
        .into_iter()
        .next()
        .context("no split found under --input")?;
    let n = split.items.len();
    let ingest = IngestOptions {
        format: if args.raw {
            Encoding::RawRgbZstd
        } else {
            Encoding::Jpeg
        },
        max_side: args.max_side,
        quality: args.quality,
        max_pixels: DEFAULT_MAX_PIXELS,
        restart_mcus: args.restart_mcus,
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build()
        .context("cannot start threads")?;
    let tmp = std::env::temp_dir().join(format!("deit-pipe-bench-shard-{}", std::process::id()));
    let (mut best_bare, mut best_shard) = (0f64, 0f64);
    for rep in 0..args.reps.max(1) {
        // Bare loop: read, decode, resize, encode every file; nothing kept.
        let t = Instant::now();
        let bytes_out: usize = pool.install(|| {
            split
                .items
                .par_iter()
                .map_init(Resizer::new, |resizer, it| {
                    let Ok(b) = std::fs::read(&it.path) else {
                        return 0;
                    };
                    let Ok(d) = decode_input(&b, DEFAULT_MAX_PIXELS) else {
                        return 0;
                    };
                    let (w, h) = target_size(d.rgb.width(), d.rgb.height(), args.max_side);
                    let Ok(img) = resize_rgb(resizer, &d.rgb, w, h) else {
                        return 0;
                    };
                    let out = if args.raw {
                        encode_raw(&img)
                    } else {
                        encode_jpeg(&img, args.quality, args.restart_mcus)
                    };
                    out.map_or(0, |v| v.len())
                })
                .sum()
        });
        let bare = n as f64 / t.elapsed().as_secs_f64();
        // The real job (ordered writer, checksums, fsync, manifest) into a fresh folder.
        let _ = std::fs::remove_dir_all(&tmp);
        let cfg = JobConfig {
            ingest: ingest.clone(),
            shard_bytes: 1 << 30,
            seed: 0,
            threads: args.threads,
            input_kind: "imagefolder".into(),
            abort_after: None,
        };
        let t = Instant::now();
        let outcome = shard_split(&split, &tmp.join("train"), &cfg, &mut |_, _| {})?;
        let shard = n as f64 / t.elapsed().as_secs_f64();
        println!(
            "rep {rep}: bare decode+resize+encode {bare:.1} img/s ({:.1} MiB out); shard {shard:.1} img/s ({} records, {:.1} MiB)",
            bytes_out as f64 / (1 << 20) as f64,
            outcome.manifest.num_records,
            outcome.manifest.total_bytes as f64 / (1 << 20) as f64
        );
        best_bare = best_bare.max(bare);
        best_shard = best_shard.max(shard);
    }
    let _ = std::fs::remove_dir_all(&tmp);
    println!(
        "images {n}, threads {}, max_side {}, format {}: bare {best_bare:.1} img/s, shard {best_shard:.1} img/s, ratio {:.1}%",
        args.threads,
        args.max_side,
        if args.raw { "raw" } else { "jpeg" },
        100.0 * best_shard / best_bare
    );
    Ok(())
}
