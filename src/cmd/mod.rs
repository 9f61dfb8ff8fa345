//! One module per subcommand. Each exposes `Args` (clap) and `run(args) -> anyhow::Result<()>`.

pub mod bench_loader;
pub mod bench_model;
pub mod bench_shard;
pub mod cache_inspect;
pub mod eval;
pub mod inspect;
pub mod model_args;
pub mod predict;
pub mod quickstart;
pub mod report;
pub mod run_dir;
pub mod shard;
pub mod synth;
pub mod teacher_cache;
pub mod train;
pub mod train_mainpy;
pub mod view_args;
