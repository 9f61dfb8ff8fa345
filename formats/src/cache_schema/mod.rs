//! The teacher cache on disk: Parquet files of top-K teacher logits, one row per
//! (epoch, slot), bound by fingerprints to the data, augmentation and teacher that made them.
//!
//! - [`CacheBinding`] / [`FileHeader`]: what a file is bound to, stored in the footer.
//! - [`CacheRow::from_logits`]: the stored form of one teacher answer (top-K ids, f16
//!   top-1 logit, f16 gaps, f16 `lse - top1`); [`CachedTarget`] is the decoded form and
//!   [`soft_distribution`] rebuilds the softmax at any temperature.
//! - [`CacheWriter`]: one file per epoch (part), temp + fsync + rename.
//! - [`TeacherCache`]: opens a directory, checks bindings and coverage, streams an epoch
//!   ([`EpochReader`]) and summarizes it ([`CacheSummary`]).
//!
//! - Every byte of a file is covered by BLAKE3 digests in its footer (`integrity`), checked
//!   before the Parquet decoder sees the bytes; a panic inside the decoder is caught at the
//!   file boundary (`guard`) and reported as a corrupt file.
//! - The footer documents itself (`docs`): column descriptions, the probability formula,
//!   what each hash is, the class names.
//!
//! Layout and encodings: `docs/ARCHITECTURE.md`, "Teacher cache".

mod binding;
pub mod col;
mod docs;
mod error;
mod guard;
mod integrity;
mod reader;
mod schema;
mod summary;
mod target;
#[doc(hidden)]
pub mod testing;
mod writer;

pub use binding::{
    file_name, parse_file_name, CacheBinding, FileHeader, PartSpec, CACHE_FORMAT_VERSION,
    HEADER_KEY, MAX_EPOCH_SLOTS,
};
pub use docs::{column_description, CLASS_NAMES_KEY, DESCRIPTION_KEY, DOC_KEY, HASHES_KEY};
pub use error::{CacheError, Result};
pub use integrity::INTEGRITY_KEY;
pub use reader::{read_file_header, verify_file, CacheEpoch, CacheFile, EpochReader, TeacherCache};
pub use schema::{arrow_schema, IdWidth};
pub use summary::{CacheSummary, EpochSummary, LabelAgreement};
pub use target::{soft_distribution, CacheRow, CachedTarget, ViewKey};
pub use writer::{CacheWriter, WriterOptions, PARTIAL_SUFFIX};
