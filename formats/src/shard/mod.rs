//! Record shards: the on-disk dataset format written by `deit-pipe shard`.
//!
//! A dataset directory holds one directory per split (`train/`, `val/`). A split directory
//! holds `manifest.json`, and per shard a data file `shard-NNNNN.bin` (records back to back)
//! and an index `shard-NNNNN.idx` (one fixed-size entry per record: offset, length, label,
//! original and stored size, encoding, CRC-32). See `docs/ARCHITECTURE.md` for the layout.

mod error;
pub mod journal;
pub mod layout;
pub mod manifest;
mod reader;
pub mod writer;

pub use error::FormatError;
pub use layout::{Encoding, IndexEntry, FORMAT_VERSION};
pub use manifest::{
    check_path_part, fingerprint, Manifest, ShardInfo, ShardOptions, SkippedFile, MANIFEST_FILE,
};
pub use reader::{RecordRef, ShardSet, VerifyReport};
pub use writer::{RecordMeta, ShardWriter};
