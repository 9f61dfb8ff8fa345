//! `deit-pipe bench loader`: training-loader images/s vs decode-only on the same shards,
//! with a per-stage breakdown (`pipeline::bench`). Results go to BENCHMARKS.md.

use std::path::PathBuf;

use pipeline::bench::{run_loader_bench, LoaderBenchOptions};
use pipeline::config::AugmentConfig;

/// `deit-pipe bench ...`: benchmarks.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Which benchmark.
    #[command(subcommand)]
    pub which: Which,
}

/// The benchmarks of the `bench` group.
#[derive(clap::Subcommand, Debug)]
pub enum Which {
    /// Training loader images/s vs decode-only, with a per-stage breakdown.
    Loader(Args),
    /// DeiT / ConvNet forward and train-step images/s, peak memory.
    Model(super::bench_model::Args),
    /// `shard` images/s against a bare decode+resize+encode loop on the same files.
    Shard(super::bench_shard::Args),
}

/// Arguments of `deit-pipe bench loader`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Shard directory: a split directory, or a data set root with a train/ split.
    #[arg(long)]
    pub data: PathBuf,
    /// Loader worker threads (and decode-only threads).
    #[arg(long, default_value_t = 2, value_parser = super::positive)]
    pub threads: usize,
    /// Batch size (even).
    #[arg(long, default_value_t = 64, value_parser = super::positive)]
    pub batch: usize,
    /// Use at most this many views (0 = one epoch: N views, 3 per image).
    #[arg(long, default_value_t = 0)]
    pub images: usize,
    /// Views timed one by one for the per-stage breakdown.
    #[arg(long, default_value_t = 200)]
    pub stage_samples: usize,
    /// Alternating repetitions of loader and decode-only runs (the best is reported).
    #[arg(long, default_value_t = 2)]
    pub reps: usize,
    /// Augmentation config (TOML); default: DeiT.
    #[arg(long)]
    pub augment: Option<PathBuf>,
    /// Skip the CRC-32 check of each record's first read (on by default, as in `train`):
    /// for measuring its cost only.
    #[arg(long)]
    pub no_crc_check: bool,
}

/// Runs one benchmark of the group.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    // Every bench names the host first: figures from other CPUs are not comparable.
    println!("host: {}", kernels::isa::host().line());
    match args.which {
        Which::Loader(a) => {
            let augment = match &a.augment {
                Some(p) => AugmentConfig::from_toml_file(p)?,
                None => AugmentConfig::default(),
            };
            let o = LoaderBenchOptions {
                threads: a.threads,
                batch: a.batch,
                images: a.images,
                stage_samples: a.stage_samples,
                reps: a.reps,
                augment,
                no_crc_check: a.no_crc_check,
            };
            let report = run_loader_bench(&a.data, &o)?;
            print!("{}", report.summary(a.threads, a.batch));
            Ok(())
        }
        Which::Model(a) => super::bench_model::run(a),
        Which::Shard(a) => super::bench_shard::run(a),
    }
}
