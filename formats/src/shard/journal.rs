//! The resume journal of a sharding job (`journal.jsonl` in the split directory).
//!
//! Line 1 names the job (a key over inputs and options); each further line records one
//! finished shard: its [`ShardInfo`], the position in the shuffled input list where it ends,
//! its per-class counts and the inputs skipped before that position. A line is appended
//! (and fsynced) only after the shard's files are renamed into place. A torn last line from
//! a crash is dropped, as are entries whose files are missing or damaged; the job then
//! redoes only what is not in the journal.

use super::layout::{parse_data_header, parse_index_header, DATA_HEADER_LEN, INDEX_HEADER_LEN};
use super::manifest::{ShardInfo, SkippedFile};
use super::FormatError;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// File name of the journal inside a split directory.
pub const JOURNAL_FILE: &str = "journal.jsonl";

/// One finished shard as recorded in the journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// The finished shard.
    pub shard: ShardInfo,
    /// Position in the shuffled input list just past this shard's last input.
    pub input_end: u64,
    /// Records per class in this shard.
    pub counts: Vec<u64>,
    /// Inputs skipped since the previous shard ended.
    pub skipped: Vec<SkippedFile>,
}

#[derive(Serialize, Deserialize)]
struct Header {
    job: String,
}

/// An open journal, ready for appends.
pub struct Journal {
    path: PathBuf,
    file: File,
}

/// Check that a finished shard's files exist and agree with `info` (sizes, headers, index
/// hash). Reads the index and the data header, not the record bytes.
pub fn check_shard_files(dir: &Path, info: &ShardInfo) -> Result<(), FormatError> {
    let data_path = dir.join(&info.data);
    let index_path = dir.join(&info.index);
    let len = std::fs::metadata(&data_path)
        .map_err(|e| FormatError::io(&data_path, e))?
        .len();
    if len != info.data_bytes {
        return Err(FormatError::corrupt(
            &data_path,
            format!("{len} bytes, expected {}", info.data_bytes),
        ));
    }
    let mut head = [0u8; DATA_HEADER_LEN];
    crate::open::open_regular(&data_path)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(|e| FormatError::io(&data_path, e))?;
    let dh = parse_data_header(&data_path, &head)?;
    let index = crate::open::read_bounded(&index_path, crate::open::SHARD_INDEX)
        .map_err(|e| FormatError::io(&index_path, e))?;
    let ih = parse_index_header(&index_path, &index)?;
    if dh.count != info.records || ih.count != info.records || ih.data_len != len {
        return Err(FormatError::corrupt(
            &index_path,
            "does not match the journal",
        ));
    }
    if blake3::hash(&index[INDEX_HEADER_LEN..]).as_bytes() != &ih.entries_hash {
        return Err(FormatError::corrupt(&index_path, "damaged index"));
    }
    Ok(())
}

impl Journal {
    /// Open the journal of `dir` for job `job` (creating it if absent) and return the finished
    /// shards it records, in order. A journal of another job is an error.
    pub fn open(dir: &Path, job: &str) -> Result<(Journal, Vec<JournalEntry>), FormatError> {
        let path = dir.join(JOURNAL_FILE);
        let err = |msg: String| FormatError::Journal {
            path: path.clone(),
            msg,
        };
        let mut entries = Vec::new();
        let mut good_len: u64 = 0;
        let existing = match crate::open::read_bounded(&path, crate::open::SHARD_INDEX) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(FormatError::io(&path, e)),
        };
        let mut header_ok = false;
        if let Some(bytes) = existing {
            let mut pos = 0usize;
            for line in bytes.split_inclusive(|&b| b == b'\n') {
                if !line.ends_with(b"\n") {
                    break; // torn write: ignore
                }
                if !header_ok {
                    let h: Header = serde_json::from_slice(line)
                        .map_err(|e| err(format!("unreadable journal header: {e}")))?;
                    if h.job != job {
                        return Err(err(
                            "an unfinished job with other inputs or options wrote this directory; \
                             rerun with the same inputs and options, or delete the directory to start over"
                                .into(),
                        ));
                    }
                    header_ok = true;
                } else {
                    let Ok(e) = serde_json::from_slice::<JournalEntry>(line) else {
                        break;
                    };
                    if check_shard_files(dir, &e.shard).is_err() {
                        break;
                    }
                    entries.push(e);
                }
                pos += line.len();
                good_len = pos as u64;
            }
        }
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| FormatError::io(&path, e))?;
        let io = |e| FormatError::io(&path, e);
        file.set_len(good_len).map_err(io)?;
        use std::io::Seek;
        file.seek(std::io::SeekFrom::End(0)).map_err(io)?;
        if !header_ok {
            let mut line =
                serde_json::to_vec(&Header { job: job.into() }).map_err(|e| err(e.to_string()))?;
            line.push(b'\n');
            file.write_all(&line).map_err(io)?;
        }
        file.sync_all().map_err(io)?;
        Ok((Journal { path, file }, entries))
    }

    /// Append a finished shard and fsync.
    pub fn append(&mut self, entry: &JournalEntry) -> Result<(), FormatError> {
        let mut line = serde_json::to_vec(entry).map_err(|e| FormatError::Journal {
            path: self.path.clone(),
            msg: e.to_string(),
        })?;
        line.push(b'\n');
        let io = |e| FormatError::io(&self.path, e);
        self.file.write_all(&line).map_err(io)?;
        self.file.sync_data().map_err(io)
    }

    /// Delete the journal (after the manifest is in place).
    pub fn remove(self) -> Result<(), FormatError> {
        drop(self.file);
        std::fs::remove_file(&self.path).map_err(|e| FormatError::io(&self.path, e))
    }
}
