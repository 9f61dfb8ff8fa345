//! `cargo bench -p pipeline --bench loader -- --photos DIR --shards DIR [--threads N]
//! [--batch B] [--images N]`: the same measurement as `deit-pipe bench loader`, without
//! building the trainer. `--photos` (an ImageFolder root, e.g. from
//! tools/make_bench_photos.py) is sharded into `--shards` first when that holds no shards
//! yet (JPEG, max side 512, quality 90: the 500x375 photos are stored as they are).

use std::path::PathBuf;

use pipeline::bench::{run_loader_bench, split_dir, LoaderBenchOptions};
use pipeline::ingest::inputs::scan_root;
use pipeline::ingest::job::{shard_split, JobConfig};
use pipeline::ingest::process::IngestOptions;

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
    let num =
        |k: &str, d: usize| get(k).map_or(Ok(d), |v| v.parse().map_err(|_| format!("{k} {v}")));
    let Some(shards) = get("--shards").map(PathBuf::from) else {
        println!("usage: cargo bench -p pipeline --bench loader -- --shards DIR [--photos DIR] [--threads N] [--batch B]");
        return Ok(());
    };
    if let Some(photos) = get("--photos").map(PathBuf::from) {
        let splits = scan_root(&photos).map_err(|e| e.to_string())?;
        for split in &splits {
            let cfg = JobConfig {
                ingest: IngestOptions::default(),
                shard_bytes: 1 << 30,
                seed: 0,
                threads: 2,
                input_kind: "imagefolder".into(),
                abort_after: None,
            };
            shard_split(split, &shards.join(&split.name), &cfg, &mut |_, _| {})
                .map_err(|e| e.to_string())?;
        }
    }
    let o = LoaderBenchOptions {
        threads: num("--threads", 2)?,
        batch: num("--batch", 64)?,
        images: num("--images", 0)?,
        stage_samples: num("--stage-samples", 200)?,
        reps: num("--reps", 2)?,
        ..LoaderBenchOptions::default()
    };
    println!("shards: {}", split_dir(&shards).display());
    let report = run_loader_bench(&shards, &o).map_err(|e| e.to_string())?;
    print!("{}", report.summary(o.threads, o.batch));
    Ok(())
}
