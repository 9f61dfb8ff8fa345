//! Errors of the augmentation pipeline. Every message names the file, record or field.

use thiserror::Error;

/// A bad augmentation or plan configuration.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// TOML that does not parse (the message names the field and line).
    #[error("augmentation config: {0}")]
    Parse(String),
    /// A value out of range (the message names the field).
    #[error("augmentation config: {0}")]
    Invalid(String),
    /// The config file could not be read.
    #[error("reading {0}: {1}")]
    Io(String, String),
}

/// Errors of plans, views and loaders.
#[derive(Debug, Error)]
pub enum PipelineError {
    /// A configuration problem.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A plan that cannot be built (e.g. a dataset smaller than the rounding unit).
    #[error("epoch plan: {0}")]
    Plan(String),
    /// A record that could not be read or decoded. `location` names shard and record.
    #[error("record {index} ({location}): {message}")]
    Record {
        /// Dataset index of the record.
        index: usize,
        /// Where it lives (shard file and position), as the source describes it.
        location: String,
        /// What went wrong.
        message: String,
    },
    /// Resampling failed (should not happen for valid sizes).
    #[error("resize: {0}")]
    Resize(String),
    /// Bad loader options.
    #[error("loader: {0}")]
    Loader(String),
    /// An I/O error with the path it concerns.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        message: String,
    },
}
