//! Errors of the shard format: every variant names the file, and the record where one is involved.

use std::path::PathBuf;

/// An error reading or writing a shard set. Messages name the file (and record index where
/// one is involved) so a user can find the bad data.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The manifest is missing fields, is not valid JSON or contradicts itself.
    #[error("{path}: bad manifest: {msg}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// The shard set was written by a newer or unknown version of the format.
    #[error(
        "{path}: shard format version {found} is not supported (this build reads version {supported}); \
         re-create the shards with this version of deit-pipe or upgrade deit-pipe"
    )]
    UnsupportedVersion {
        /// The file that carries the version.
        path: PathBuf,
        /// The version found in the file.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// A shard or index file is truncated or its header or contents are inconsistent.
    #[error("{path}: corrupt shard file: {msg}")]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// One record is damaged (bad index entry or checksum mismatch).
    #[error("{path}: record {index}: {msg}")]
    BadRecord {
        /// The shard data file holding the record.
        path: PathBuf,
        /// The record's index in the shard set (global, 0-based).
        index: usize,
        /// What is wrong.
        msg: String,
    },
    /// A record index past the end of the set.
    #[error("record {index} out of range: the shard set holds {len} records")]
    OutOfRange {
        /// The requested index.
        index: usize,
        /// The number of records in the set.
        len: usize,
    },
    /// A resume journal that does not belong to this job or cannot be parsed.
    #[error("{path}: {msg}")]
    Journal {
        /// The journal file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
}

impl FormatError {
    /// Wrap an I/O error with the file it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FormatError::Io {
            path: path.into(),
            source,
        }
    }

    /// A corrupt-file error for `path`.
    pub fn corrupt(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        FormatError::Corrupt {
            path: path.into(),
            msg: msg.into(),
        }
    }
}
