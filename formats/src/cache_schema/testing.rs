//! Helpers for tests and fuzzing only (hidden from the docs): they make files that the
//! writer never writes, to check that the reader refuses them or survives them.

use std::path::{Path, PathBuf};

use super::binding::FileHeader;
use super::error::{CacheError, Result};
use super::guard::guarded;
use super::target::CacheRow;
use super::writer::{CacheWriter, WriterOptions};

/// The checksum placeholder the writer stores before sealing.
pub fn placeholder() -> String {
    super::integrity::placeholder()
}

/// Recomputes the checksums of a (possibly damaged or hand-made) file that holds the
/// checksum key, so that it passes the checks and its bytes reach the decoder. `Err` when
/// the file's footer cannot be parsed or holds no checksum key.
pub fn reseal(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let meta = guarded(path, "the footer", || {
        parquet::file::metadata::ParquetMetaDataReader::new()
            .parse_and_finish(&bytes::Bytes::from(bytes.clone()))
            .map_err(|source| CacheError::Parquet {
                path: path.to_path_buf(),
                source,
            })
    })?;
    let slot_ranges = guarded(path, "the footer", || {
        Ok(super::integrity::slot_ranges(&meta))
    })?;
    super::integrity::reset_placeholder(path, bytes)?;
    super::integrity::seal(path, &slot_ranges).map(drop)
}

/// Writes a file of `rows` without checking them (out-of-range values included), sealed
/// like any other file. Returns its path.
pub fn write_unchecked(dir: &Path, header: FileHeader, rows: &[CacheRow]) -> Result<PathBuf> {
    let mut w = CacheWriter::create_with(dir, header, WriterOptions::default())?;
    w.write_rows_unchecked(rows)?;
    w.finish()
}

/// As [`write_unchecked`], with extra footer keys stored as given (e.g. class names that
/// are not JSON), sealed like any other file. Returns its path.
pub fn write_unchecked_with_footer(
    dir: &Path,
    header: FileHeader,
    rows: &[CacheRow],
    footer: &[(&str, &str)],
) -> Result<PathBuf> {
    let mut w = CacheWriter::create_with(dir, header, WriterOptions::default())?;
    for (k, v) in footer {
        w.append_raw_metadata(k, v)?;
    }
    w.write_rows_unchecked(rows)?;
    w.finish()
}
