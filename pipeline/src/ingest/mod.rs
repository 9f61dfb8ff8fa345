//! Ingest: turn input image files into shard records, and shard records back into pixels.
//!
//! - [`decode`]: decode any input (JPEG incl. CMYK and grayscale, PNG incl. alpha and 16-bit)
//!   to 8-bit RGB with a pixel-limit guard; [`decode_record`] decodes a stored record,
//!   [`decode_record_region`] only a rectangle of it.
//! - [`jpeg`]: JPEG records through libjpeg-turbo (full and region decode; the FFI).
//! - [`open`]: image files as Pillow's `Image.open(f).convert("RGB")` gives them (the
//!   pixels timm reads; `predict`'s decoder).
//! - [`policy`]: the one decoder policy (pixels, JPEG scans, PNG chunk bounds) both input
//!   decoders apply before decoding.
//! - [`resize`]: shorter-side resize with antialiasing (Lanczos3 convolution).
//! - [`encode`]: JPEG or zstd-compressed raw RGB.
//! - [`process`]: one input file to one record (the per-image work of `deit-pipe shard`).
//! - [`inputs`]: ImageFolder trees and list files to labelled input lists.
//! - [`job`]: the parallel, resumable sharding job with an ordered writer.
//! - [`synth`]: the procedural data set generator behind `deit-pipe synth`.

pub mod decode;
pub mod encode;
pub mod inputs;
pub mod job;
pub mod jpeg;
pub mod jpeg_tiles;
pub mod matv5;
pub mod open;
pub mod policy;
pub mod process;
pub mod resize;
pub mod synth;
pub mod val_labels;

pub use decode::{
    decode_input, decode_record, decode_record_region, decode_record_region_around, Decoded,
};
pub use process::{process_image, IngestOptions, Processed};

use std::path::PathBuf;

/// Errors of the ingest module.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A stored record could not be decoded.
    #[error("cannot decode record: {0}")]
    Record(String),
    /// An input image could not be used (the reason is listed in the manifest when sharding).
    #[error("{0}")]
    Input(String),
    /// An error of the shard format (names the file).
    #[error(transparent)]
    Format(#[from] formats::shard::FormatError),
    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Bad input layout or list file.
    #[error("{0}")]
    Layout(String),
}

impl IngestError {
    /// Wrap an I/O error with its path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        IngestError::Io {
            path: path.into(),
            source,
        }
    }
}
