//! [`CacheWriter`]: writes one cache file (an epoch, or one part of it) through a temporary
//! file that becomes visible under its final name only when complete.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use arrow::datatypes::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::file::metadata::KeyValue;

use super::binding::{file_name, FileHeader, CACHE_FORMAT_VERSION, HEADER_KEY, MAX_EPOCH_SLOTS};
use super::docs::{doc_text, hashes_json, CLASS_NAMES_KEY, DOC_KEY, HASHES_KEY};
use super::error::{CacheError, Result};
use super::integrity::{placeholder, seal, slot_ranges, INTEGRITY_KEY};
use super::schema::{arrow_schema, rows_to_batch, writer_properties};
use super::target::CacheRow;

/// Suffix of a file being written; the reader never opens such files.
pub const PARTIAL_SUFFIX: &str = ".partial";

/// Tuning knobs of the writer (the defaults are what `deit-pipe teacher-cache` uses).
#[derive(Debug, Clone, Copy)]
pub struct WriterOptions {
    /// Rows per Parquet row group (the reader's unit of streaming).
    pub row_group_rows: usize,
    /// zstd compression level.
    pub zstd_level: i32,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            row_group_rows: 65_536,
            zstd_level: 9,
        }
    }
}

/// Writes one cache file. Rows must come in strictly increasing slot order; the file
/// appears under its final name only after [`CacheWriter::finish`] (temp + fsync + rename),
/// so a killed run leaves at most a `*.parquet.partial` file that readers ignore and the
/// next run overwrites.
pub struct CacheWriter {
    header: FileHeader,
    schema: SchemaRef,
    writer: Option<ArrowWriter<BufWriter<File>>>,
    temp_path: PathBuf,
    final_path: PathBuf,
    next_slot: u32,
    rows: u64,
}

impl std::fmt::Debug for CacheWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheWriter")
            .field("final_path", &self.final_path)
            .field("rows", &self.rows)
            .finish()
    }
}

impl CacheWriter {
    /// Starts `dir/epoch-XXXXX[.part-III-of-NNN].parquet` with default options.
    pub fn create(dir: &Path, header: FileHeader) -> Result<CacheWriter> {
        CacheWriter::create_with(dir, header, WriterOptions::default())
    }

    /// Starts a file with explicit options. Refuses a header whose format version is not
    /// [`CACHE_FORMAT_VERSION`], bad K/C, and an existing finished file.
    pub fn create_with(
        dir: &Path,
        header: FileHeader,
        options: WriterOptions,
    ) -> Result<CacheWriter> {
        header.binding.validate()?;
        if header.binding.format_version != CACHE_FORMAT_VERSION {
            return Err(CacheError::InvalidParameter(format!(
                "this writer writes format version {CACHE_FORMAT_VERSION}, header says {}",
                header.binding.format_version
            )));
        }
        if header.epoch_slots == 0 || header.epoch_slots > MAX_EPOCH_SLOTS {
            return Err(CacheError::InvalidParameter(format!(
                "epoch_slots must be in 1..={MAX_EPOCH_SLOTS}"
            )));
        }
        if header.dataset_len == 0 {
            return Err(CacheError::InvalidParameter(
                "dataset_len must be > 0".into(),
            ));
        }
        let name = file_name(header.epoch, header.part);
        let final_path = dir.join(&name);
        if final_path.exists() {
            return Err(CacheError::Exists { path: final_path });
        }
        let temp_path = dir.join(format!("{name}{PARTIAL_SUFFIX}"));
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CacheError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let file = File::create(&temp_path).map_err(io(&temp_path))?;
        let schema = arrow_schema(&header.binding);
        let props = writer_properties(&schema, options.row_group_rows, options.zstd_level)?;
        let mut writer = ArrowWriter::try_new(BufWriter::new(file), schema.clone(), Some(props))
            .map_err(|source| CacheError::Parquet {
                path: temp_path.clone(),
                source,
            })?;
        for (key, value) in [
            (HEADER_KEY, header.to_json()),
            (DOC_KEY, doc_text()),
            (HASHES_KEY, hashes_json()),
            // Replaced by the digests in `finish` (same length, patched in place).
            (INTEGRITY_KEY, placeholder()),
        ] {
            writer.append_key_value_metadata(KeyValue::new(key.to_string(), value));
        }
        Ok(CacheWriter {
            header,
            schema,
            writer: Some(writer),
            temp_path,
            final_path,
            next_slot: 0,
            rows: 0,
        })
    }

    /// Adds a footer key as is (tests only: `testing::write_unchecked_with_footer`).
    pub(crate) fn append_raw_metadata(&mut self, key: &str, value: &str) -> Result<()> {
        let writer = self
            .writer
            .as_mut()
            .ok_or_else(|| CacheError::InvalidParameter("metadata after finish".into()))?;
        writer.append_key_value_metadata(KeyValue::new(key.to_string(), value.to_string()));
        Ok(())
    }

    /// Stores the class names (index = class id) in the footer under
    /// [`CLASS_NAMES_KEY`]; at most `num_classes` names (a model may have more outputs than
    /// the data set has classes).
    pub fn set_class_names(&mut self, names: &[String]) -> Result<()> {
        let c = self.header.binding.num_classes as usize;
        if names.len() > c {
            return Err(CacheError::InvalidParameter(format!(
                "{} class names for {c} classes",
                names.len()
            )));
        }
        let writer = self
            .writer
            .as_mut()
            .ok_or_else(|| CacheError::InvalidParameter("class names after finish".into()))?;
        // A list of strings always serializes.
        let json = serde_json::to_string(names).unwrap_or_default();
        writer.append_key_value_metadata(KeyValue::new(CLASS_NAMES_KEY.to_string(), json));
        Ok(())
    }

    /// The final path the file will have.
    pub fn path(&self) -> &Path {
        &self.final_path
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Appends rows without any check (tests only: [`super::testing::write_unchecked`]).
    pub(crate) fn write_rows_unchecked(&mut self, rows: &[CacheRow]) -> Result<()> {
        let batch = rows_to_batch(&self.schema, &self.header.binding, rows)?;
        let writer = self
            .writer
            .as_mut()
            .ok_or_else(|| CacheError::InvalidParameter("write after finish".into()))?;
        writer.write(&batch).map_err(|source| CacheError::Parquet {
            path: self.temp_path.clone(),
            source,
        })?;
        self.rows += rows.len() as u64;
        Ok(())
    }

    /// Appends rows. Each must belong to this file's epoch, have a slot below the epoch's
    /// slot count and above every slot written before, and pass [`CacheRow::validate`].
    pub fn write_rows(&mut self, rows: &[CacheRow]) -> Result<()> {
        let k = self.header.binding.top_k as usize;
        let c = self.header.binding.num_classes;
        for row in rows {
            let bad = |reason: String| CacheError::InvalidRow {
                epoch: row.key.epoch,
                slot: row.key.slot,
                reason,
            };
            if row.key.epoch != self.header.epoch {
                return Err(bad(format!(
                    "row of epoch {} written to a file of epoch {}",
                    row.key.epoch, self.header.epoch
                )));
            }
            if row.key.slot < self.next_slot {
                return Err(bad(format!(
                    "slots must be strictly increasing: slot {} follows slot {}",
                    row.key.slot,
                    self.next_slot - 1
                )));
            }
            let n = self.header.dataset_len;
            if row.key.sample >= n || row.key.partner >= n {
                return Err(bad(format!(
                    "sample {} / partner {} outside the data set of {n} samples",
                    row.key.sample, row.key.partner
                )));
            }
            if row.key.slot >= self.header.epoch_slots {
                return Err(bad(format!(
                    "slot >= the epoch's slot count {}",
                    self.header.epoch_slots
                )));
            }
            row.validate(k, c)?;
            self.next_slot = row.key.slot + 1;
        }
        if rows.is_empty() {
            return Ok(());
        }
        let batch = rows_to_batch(&self.schema, &self.header.binding, rows)?;
        let writer = self
            .writer
            .as_mut()
            .ok_or_else(|| CacheError::InvalidParameter("write after finish".into()))?;
        writer.write(&batch).map_err(|source| CacheError::Parquet {
            path: self.temp_path.clone(),
            source,
        })?;
        self.rows += rows.len() as u64;
        Ok(())
    }

    /// Closes the file, fsyncs it, renames it to its final name and fsyncs the directory.
    /// Returns the final path.
    pub fn finish(mut self) -> Result<PathBuf> {
        let temp = self.temp_path.clone();
        let pq = |source| CacheError::Parquet {
            path: temp.clone(),
            source,
        };
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CacheError::Io { path, source }
        };
        let writer = self
            .writer
            .take()
            .ok_or_else(|| CacheError::InvalidParameter("finish called twice".into()))?;
        let buf = writer.into_inner().map_err(pq)?;
        let file = buf.into_inner().map_err(|e| CacheError::Io {
            path: temp.clone(),
            source: e.into_error(),
        })?;
        drop(file);
        let file = File::open(&temp).map_err(io(&temp))?;
        let meta = parquet::file::metadata::ParquetMetaDataReader::new()
            .parse_and_finish(&file)
            .map_err(pq)?;
        drop(file);
        let slot_ranges = slot_ranges(&meta);
        let file = seal(&temp, &slot_ranges)?;
        file.sync_all().map_err(io(&temp))?;
        drop(file);
        if self.final_path.exists() {
            // Another writer finished the same file first: keep its file, drop ours.
            let _ = std::fs::remove_file(&temp);
            return Err(CacheError::Exists {
                path: self.final_path.clone(),
            });
        }
        std::fs::rename(&temp, &self.final_path).map_err(io(&self.final_path))?;
        if let Some(dir) = self.final_path.parent() {
            // Make the rename durable; a directory that cannot be opened (some
            // platforms) is not an error of ours.
            if let Ok(d) = File::open(dir) {
                d.sync_all().map_err(io(dir))?;
            }
        }
        Ok(self.final_path.clone())
    }
}

impl Drop for CacheWriter {
    fn drop(&mut self) {
        if self.writer.is_some() {
            // Dropped without finish (error path): the partial file is worthless.
            let _ = std::fs::remove_file(&self.temp_path);
        }
    }
}
