//! The `deit-pipe` command line: shard datasets, cache teacher targets, train and
//! evaluate DeiT students. Each subcommand lives in its own module under `cmd/`.
//!
//! Its one job is to wire the crates together: parse flags (named as DeiT's `main.py`
//! names them), resolve configs, start the processes of a data-parallel job, draw
//! progress, print results and turn every error into one clear line (no user input may
//! print a backtrace). It must not hold the algorithms: records and cache files belong
//! to `formats`, decoding and augmentation to `pipeline`, models and training to
//! `trainer`, teacher runs to `cache`; a subcommand turns its flags into their inputs and
//! their results into output.

mod alloc;
mod boundary;
mod cmd;
mod compute_threads;
mod dist;
#[cfg(test)]
mod flag_names;
mod progress;

use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOCATOR: boundary::Guarded = boundary::Guarded;

/// Train data-efficient image transformers (DeiT) by distillation from an offline teacher cache.
#[derive(Parser, Debug)]
#[command(name = "deit-pipe", version, about, long_about = None)]
struct Cli {
    /// Turn off progress bars (logs still go to stderr; see RUST_LOG).
    #[arg(long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run everything end to end on generated data: synth, shard, teacher, cache, 3 students, table.
    Quickstart(cmd::quickstart::Args),
    // Each variant names its module in `cmd/`; add new ones one line at a time.
    /// Write a procedural, learnable ImageFolder data set (train/ and val/).
    Synth(cmd::synth::Args),
    /// Turn an ImageFolder tree or list file into record shards with index and manifest.
    Shard(cmd::shard::Args),
    /// Summarize a shard data set; --verify checksums; --dump records as images.
    Inspect(cmd::inspect::Args),
    /// Benchmarks: `bench loader` (training loader vs decode-only, per-stage breakdown),
    /// `bench model` (model forward / train-step images/s).
    Bench(cmd::bench_loader::BenchArgs),
    /// Classify image files with a DeiT / ResNet / RegNetY checkpoint: top-5 per image.
    Predict(cmd::predict::Args),
    /// Train a DeiT student (or a ConvNet teacher) with DeiT's recipe; resumable.
    Train(Box<cmd::train::Args>),
    /// Evaluate weights (a run's checkpoint or official DeiT/timm weights) on a split.
    Eval(cmd::eval::Args),
    /// Draw a run's loss, accuracy and lr curves to a PNG and print a summary table.
    Report(cmd::report::Args),
    /// Run the teacher once per view of the trainer's epoch plans; write top-K targets as Parquet.
    TeacherCache(Box<cmd::teacher_cache::Args>),
    /// Teacher caches: `cache inspect` (coverage, bytes per view, label agreement).
    Cache(cmd::cache_inspect::CacheArgs),
}

fn main() {
    alloc::tune_allocator();
    boundary::install_panic_hook();
    compute_threads::limit_candle_elementwise_pool();
    let cli = Cli::parse();
    progress::init(cli.quiet);
    init_logging();
    if let Err(msg) = kernels::isa::env_cap() {
        eprintln!("error: {msg}");
        std::process::exit(2);
    }
    let result: anyhow::Result<()> = boundary::catch(|| match cli.command {
        Command::Synth(args) => cmd::synth::run(args),
        Command::Quickstart(args) => cmd::quickstart::run(args),
        Command::Shard(args) => cmd::shard::run(args),
        Command::Inspect(args) => cmd::inspect::run(args),
        Command::Bench(args) => cmd::bench_loader::run(args),
        Command::Predict(args) => cmd::predict::run(args),
        Command::Train(args) => cmd::train::run(*args),
        Command::Eval(args) => cmd::eval::run(args),
        Command::Report(args) => cmd::report::run(args),
        Command::TeacherCache(args) => cmd::teacher_cache::run(*args),
        Command::Cache(args) => cmd::cache_inspect::run(args),
    });
    if let Err(err) = result {
        // One-line cause first, then the chain for context.
        eprintln!("error: {err}");
        for cause in err.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        std::process::exit(1);
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(progress::LogWriter::default)
        .with_target(false)
        .with_ansi(progress::stderr_colour())
        .compact()
        .init();
}
