//! Writes one shard (data + index) from already-encoded records. Files are written under
//! temporary names and renamed into place only after an fsync, so a killed job never leaves a
//! partial shard under a final name.

use super::layout::{data_header, index_header, Encoding, IndexEntry, DATA_HEADER_LEN};
use super::manifest::ShardInfo;
use super::FormatError;
use crate::atomic::{rename_synced, temp_path};
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Metadata of one record to append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordMeta {
    /// Class label.
    pub label: u32,
    /// Source width before resize.
    pub orig_width: u32,
    /// Source height before resize.
    pub orig_height: u32,
    /// Stored width.
    pub width: u32,
    /// Stored height.
    pub height: u32,
    /// How the bytes are encoded.
    pub encoding: Encoding,
}

/// File names of shard number `n`: (`shard-NNNNN.bin`, `shard-NNNNN.idx`).
pub fn shard_file_names(n: usize) -> (String, String) {
    (format!("shard-{n:05}.bin"), format!("shard-{n:05}.idx"))
}

/// An open shard being written.
pub struct ShardWriter {
    dir: PathBuf,
    data_name: String,
    index_name: String,
    data_tmp: PathBuf,
    data: BufWriter<File>,
    entries: Vec<IndexEntry>,
    offset: u64,
    hasher: blake3::Hasher,
}

impl ShardWriter {
    /// Start shard number `n` in `dir` (writes `shard-NNNNN.bin.tmp`).
    pub fn create(dir: &Path, n: usize) -> Result<ShardWriter, FormatError> {
        let (data_name, index_name) = shard_file_names(n);
        let data_tmp = temp_path(&dir.join(&data_name));
        let file = File::create(&data_tmp).map_err(|e| FormatError::io(&data_tmp, e))?;
        let mut data = BufWriter::with_capacity(1 << 20, file);
        data.write_all(&data_header(0))
            .map_err(|e| FormatError::io(&data_tmp, e))?;
        Ok(ShardWriter {
            dir: dir.to_path_buf(),
            data_name,
            index_name,
            data_tmp,
            data,
            entries: Vec::new(),
            offset: DATA_HEADER_LEN as u64,
            hasher: blake3::Hasher::new(),
        })
    }

    /// Bytes written so far, header included.
    pub fn data_len(&self) -> u64 {
        self.offset
    }

    /// Records written so far.
    pub fn records(&self) -> usize {
        self.entries.len()
    }

    /// Append one record.
    pub fn push(&mut self, meta: RecordMeta, bytes: &[u8]) -> Result<(), FormatError> {
        let entry = IndexEntry {
            offset: self.offset,
            length: bytes.len() as u64,
            label: meta.label,
            orig_width: meta.orig_width,
            orig_height: meta.orig_height,
            width: meta.width,
            height: meta.height,
            encoding: meta.encoding,
            crc32: crc32fast::hash(bytes),
        };
        // Validate what we are about to promise readers.
        IndexEntry::parse(&entry.to_bytes()).map_err(|msg| {
            FormatError::corrupt(&self.data_tmp, format!("refusing record: {msg}"))
        })?;
        self.data
            .write_all(bytes)
            .map_err(|e| FormatError::io(&self.data_tmp, e))?;
        entry.hash_into(&mut self.hasher, bytes);
        self.offset += bytes.len() as u64;
        self.entries.push(entry);
        Ok(())
    }

    /// Write the header and index, fsync both and rename them into place.
    pub fn finish(self) -> Result<ShardInfo, FormatError> {
        let count = self.entries.len() as u64;
        let mut file = self
            .data
            .into_inner()
            .map_err(|e| FormatError::io(&self.data_tmp, e.into_error()))?;
        let io = |e| FormatError::io(&self.data_tmp, e);
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&data_header(count)).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);

        let mut entries = Vec::with_capacity(self.entries.len() * super::layout::ENTRY_LEN);
        for e in &self.entries {
            entries.extend_from_slice(&e.to_bytes());
        }
        let hash = blake3::hash(&entries);
        let index_path = self.dir.join(&self.index_name);
        let index_tmp = temp_path(&index_path);
        let mut f = File::create(&index_tmp).map_err(|e| FormatError::io(&index_tmp, e))?;
        let io = |e| FormatError::io(&index_tmp, e);
        f.write_all(&index_header(count, self.offset, hash.as_bytes()))
            .map_err(io)?;
        f.write_all(&entries).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);

        rename_synced(&index_tmp, &index_path)?;
        rename_synced(&self.data_tmp, &self.dir.join(&self.data_name))?;
        Ok(ShardInfo {
            data: self.data_name,
            index: self.index_name,
            records: count,
            data_bytes: self.offset,
            digest: self.hasher.finalize().to_hex().to_string(),
        })
    }
}
