//! One module per subcommand. Each exposes `Args` (clap) and `run(args) -> anyhow::Result<()>`.

pub mod bench_loader;
pub mod bench_model;
pub mod bench_shard;
pub mod cache_inspect;
pub mod cache_summary;
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
pub mod view_args;

/// Parses a count that must be at least 1 (`--top`, `--batch`, `--threads`): 0 is refused
/// as a usage error rather than clamped (issue 25).
pub fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}
