//! Errors of the teacher cache: every variant names the file, epoch, slot or field at fault.

use std::path::PathBuf;

/// Everything that can go wrong writing, opening or reading a teacher cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// An operating-system error on a named path.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The Parquet layer refused the file: it is truncated, corrupt or not Parquet.
    #[error("{path}: truncated or corrupt Parquet file: {source}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: parquet::errors::ParquetError,
    },
    /// The file fails its checksums, or the decoder failed on it: it was damaged (or
    /// edited) after it was written.
    #[error(
        "{path}: truncated or corrupt Parquet file: {reason} (delete it and re-run \
         `deit-pipe teacher-cache` for its epoch)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The file was written in another cache format version.
    #[error(
        "{path}: teacher-cache format version {found}, this deit-pipe reads version {expected}; \
         re-run `deit-pipe teacher-cache` to rebuild the cache"
    )]
    OldFormat {
        /// The file.
        path: PathBuf,
        /// The version in its footer.
        found: u32,
        /// The version this build reads ([`super::CACHE_FORMAT_VERSION`]).
        expected: u32,
    },
    /// A row of the file holds a value outside its column's rules (ids >= classes, lam
    /// outside [0, 1], NaN logits, sample/partner outside the data set, ...).
    #[error("{path}: bad teacher-cache data: {reason}")]
    BadData {
        /// The file.
        path: PathBuf,
        /// The row (0-based, in the file), its epoch and slot, the column and the value.
        reason: String,
    },
    /// Arrow refused a batch (a schema or type problem inside a file).
    #[error("{path}: bad Arrow data: {source}")]
    Arrow {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: arrow::error::ArrowError,
    },
    /// One binding field differs from what the caller expects.
    #[error("binding field `{field}` differs: cache has {cached}, expected {expected}")]
    BindingMismatch {
        /// The field name, as in [`super::CacheBinding`].
        field: &'static str,
        /// The value stored in the cache.
        cached: String,
        /// The value the caller expects.
        expected: String,
    },
    /// Two files of one cache carry different bindings (no reference says which is right).
    #[error(
        "binding field `{field}` differs between files: {first} has {first_value}, {path} has \
         {value} (all files of one cache share one binding)"
    )]
    MixedBindings {
        /// The first file (by name).
        first: PathBuf,
        /// Its value.
        first_value: String,
        /// The file that differs from it.
        path: PathBuf,
        /// Its value.
        value: String,
        /// The field name.
        field: &'static str,
    },
    /// An error about one file (wraps the detail).
    #[error("{path}: {source}")]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: Box<CacheError>,
    },
    /// The file metadata or schema is missing, unreadable or inconsistent.
    #[error("{path}: bad teacher-cache metadata: {reason}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A `*.parquet` file in the cache directory whose name is not a cache file name.
    #[error("{path}: not a teacher-cache file name ({reason})")]
    BadFileName {
        /// The file.
        path: PathBuf,
        /// What is wrong with the name.
        reason: String,
    },
    /// The directory holds no cache file at all.
    #[error("{dir}: no teacher-cache files (epoch-XXXXX[.part-III-of-NNN].parquet)")]
    Empty {
        /// The directory.
        dir: PathBuf,
    },
    /// Epochs the caller needs are not in the cache.
    #[error("{dir}: the cache lacks epochs {missing}")]
    MissingEpochs {
        /// The cache directory.
        dir: PathBuf,
        /// The missing epochs, as ranges (`3, 7..=9`).
        missing: String,
    },
    /// An epoch is present but unusable: parts missing, slots missing or duplicated.
    #[error("epoch {epoch}: {problem}")]
    EpochIncomplete {
        /// The epoch.
        epoch: u32,
        /// What is wrong, naming slots and files.
        problem: String,
    },
    /// A row handed to the writer (or built from logits) breaks the schema's rules.
    #[error("epoch {epoch} slot {slot}: {reason}")]
    InvalidRow {
        /// The row's epoch.
        epoch: u32,
        /// The row's slot.
        slot: u32,
        /// What is wrong.
        reason: String,
    },
    /// Arguments that cannot describe a cache (K = 0, K > classes, part 0 of N, ...).
    #[error("invalid teacher-cache parameter: {0}")]
    InvalidParameter(String),
    /// The writer refuses to replace a finished file.
    #[error("{path}: already exists (a finished cache file is never overwritten)")]
    Exists {
        /// The file.
        path: PathBuf,
    },
}

impl CacheError {
    /// Wraps `self` with the file it concerns (no double wrapping).
    pub fn in_file(self, path: &std::path::Path) -> CacheError {
        match self {
            e @ (CacheError::Io { .. }
            | CacheError::Parquet { .. }
            | CacheError::Arrow { .. }
            | CacheError::Corrupt { .. }
            | CacheError::OldFormat { .. }
            | CacheError::BadData { .. }
            | CacheError::MixedBindings { .. }
            | CacheError::InFile { .. }
            | CacheError::Metadata { .. }
            | CacheError::BadFileName { .. }) => e,
            other => CacheError::InFile {
                path: path.to_path_buf(),
                source: Box::new(other),
            },
        }
    }
}

/// Shorthand used throughout the module.
pub type Result<T, E = CacheError> = std::result::Result<T, E>;
