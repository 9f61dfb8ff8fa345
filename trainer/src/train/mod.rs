//! The training loop of `deit-pipe train` and its parts: configuration (TOML + DeiT flag
//! overrides), checkpoints, metrics, evaluation and teacher targets.

pub mod checkpoint;
pub mod config;
pub mod eval;
pub mod eval_job;
pub mod metrics;
#[path = "loop.rs"]
pub mod run;
pub mod teacher;

pub use run::{train, NoProgress, TrainJob, TrainProgress, TrainSummary};

/// File name of the resolved config inside a run directory.
pub const CONFIG_FILE: &str = "config.toml";
