//! Read-only access to a shard set: memory-mapped data files, O(1) record lookup through the
//! index, checksum verification. Every offset read from disk is checked before use, so
//! truncated or corrupted files give errors, never panics or out-of-bounds reads.
//!
//! Opening also checks what the manifest says against the index (records per class) and,
//! through [`ShardSet::open_split`], against the folder (the split name). Index entries
//! whose stored size exceeds the set's pixel limit are refused before anything is
//! allocated for them, and [`ShardSet::record_checked`] verifies each record's CRC-32 the
//! first time it is read through this `ShardSet`.
//!
//! The data files are memory-mapped: a shard file truncated by another process *while* it
//! is mapped makes the next read of a page past the new end raise SIGBUS, which kills the
//! process (the kernel's behaviour for any mapped file; no reader can turn it into an
//! error without giving up the map). Shard files are written once and renamed into place;
//! do not truncate or rewrite them while a job reads them. A file truncated *before* it is
//! opened is an error naming the file.

use super::layout::{
    parse_data_header, parse_index_header, Encoding, IndexEntry, DATA_HEADER_LEN, ENTRY_LEN,
    INDEX_HEADER_LEN, MAX_PIXELS_CAP,
};
use super::manifest::{fingerprint, Manifest};
use super::FormatError;
use memmap2::Mmap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// One record, borrowed from the memory map (no copy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// Class label (index into `Manifest::classes`).
    pub label: u32,
    /// Width of the source image before any resize.
    pub orig_width: u32,
    /// Height of the source image before any resize.
    pub orig_height: u32,
    /// Width of the stored image.
    pub width: u32,
    /// Height of the stored image.
    pub height: u32,
    /// How `bytes` encode the pixels.
    pub encoding: Encoding,
    /// The stored bytes (a JPEG file or a zstd frame of RGB8 pixels).
    pub bytes: &'a [u8],
}

struct OpenShard {
    data_path: PathBuf,
    data: Mmap,
    index: Mmap,
}

/// Bytes a sequential pass ([`ShardSet::verify_all`]) reads before it hands the data
/// pages behind it back to the kernel.
pub const RELEASE_EVERY_BYTES: usize = 32 << 20;

impl OpenShard {
    /// Drops this process's resident pages of bytes `range` of the data file
    /// (`madvise(MADV_DONTNEED)`), so they stop counting in its RSS; a later read faults
    /// them in again, from the page cache or the disk. Best effort: an error only leaves
    /// the pages resident.
    fn release(&self, range: std::ops::Range<usize>) {
        let end = range.end.min(self.data.len());
        if range.start >= end {
            return;
        }
        #[cfg(unix)]
        // SAFETY: the map is a read-only shared map of a file that is never modified in
        // place (see `map_file`): after MADV_DONTNEED a read of a dropped page faults in
        // the same bytes from the file, so any slice borrowed from the map, even one being
        // read by another thread, keeps its contents.
        let _ = unsafe {
            self.data.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                range.start,
                end - range.start,
            )
        };
    }
}

/// An opened split directory (e.g. `SHARDS/train`).
pub struct ShardSet {
    dir: PathBuf,
    manifest: Manifest,
    shards: Vec<OpenShard>,
    /// Global index of each shard's first record; `starts.len() == shards.len()`.
    starts: Vec<usize>,
    len: usize,
    /// Largest stored pixel count accepted: the manifest's `max_pixels`, at most
    /// [`MAX_PIXELS_CAP`].
    pixel_limit: u64,
    /// One bit per record: set once its CRC-32 was checked by [`ShardSet::record_checked`].
    checked: Vec<AtomicU64>,
}

/// The outcome of [`ShardSet::verify_all`].
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Records whose checksum or index entry is bad, one error each (names file and record).
    pub bad_records: Vec<FormatError>,
    /// Shards whose recomputed content digest differs from the manifest.
    pub bad_shards: Vec<String>,
    /// Fingerprint recomputed from the data.
    pub recomputed_fingerprint: String,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.bad_records.is_empty() && self.bad_shards.is_empty()
    }
}

fn map_file(path: &Path, min_len: usize) -> Result<Mmap, FormatError> {
    let file = crate::open::open_regular(path).map_err(|e| FormatError::io(path, e))?;
    let len = file.metadata().map_err(|e| FormatError::io(path, e))?.len();
    if len < min_len as u64 {
        return Err(FormatError::corrupt(
            path,
            format!("file is {len} bytes, shorter than its {min_len}-byte header (truncated)"),
        ));
    }
    // SAFETY: the map is read-only. Shard files are written once (temp + rename) and never
    // modified in place; truncating a file while it is mapped is outside the contract: the
    // kernel then raises SIGBUS on the next access past the new end, which ends the process
    // (documented in the module doc and in README.md's data section).
    unsafe { Mmap::map(&file) }.map_err(|e| FormatError::io(path, e))
}

/// Add the labels of one index (its first record is global record `first`) to
/// `per_class`; a label outside the class list is an error naming the record.
fn count_labels(
    index: &[u8],
    index_path: &Path,
    first: usize,
    per_class: &mut [u64],
) -> Result<(), FormatError> {
    let entries = index.get(INDEX_HEADER_LEN..).unwrap_or(&[]);
    for (k, e) in entries.chunks_exact(ENTRY_LEN).enumerate() {
        let mut b = [0u8; 4];
        b.copy_from_slice(&e[16..20]);
        let label = u32::from_le_bytes(b);
        match per_class.get_mut(label as usize) {
            Some(n) => *n += 1,
            None => {
                return Err(FormatError::BadRecord {
                    path: index_path.to_path_buf(),
                    index: first + k,
                    msg: format!("label {label} but the set has {} classes", per_class.len()),
                })
            }
        }
    }
    Ok(())
}

impl ShardSet {
    /// Open a split directory: read the manifest, map every shard and check headers, sizes,
    /// index hashes and the records per class against it. Does not compare the manifest's
    /// `split` with the folder name (see [`ShardSet::open_split`]).
    pub fn open(split_dir: &Path) -> Result<ShardSet, FormatError> {
        let manifest = Manifest::read(split_dir)?;
        let mut shards = Vec::with_capacity(manifest.shards.len());
        let mut starts = Vec::with_capacity(manifest.shards.len());
        let mut len: usize = 0;
        let mut per_class = vec![0u64; manifest.classes.len()];
        for info in &manifest.shards {
            let data_path = split_dir.join(&info.data);
            let index_path = split_dir.join(&info.index);
            let data = map_file(&data_path, DATA_HEADER_LEN)?;
            let index = map_file(&index_path, INDEX_HEADER_LEN)?;
            if data.len() as u64 != info.data_bytes {
                return Err(FormatError::corrupt(
                    &data_path,
                    format!(
                        "file is {} bytes, the manifest says {} (truncated or damaged)",
                        data.len(),
                        info.data_bytes
                    ),
                ));
            }
            let dh = parse_data_header(&data_path, &data)?;
            let ih = parse_index_header(&index_path, &index)?;
            if dh.count != info.records || ih.count != info.records {
                return Err(FormatError::corrupt(
                    &index_path,
                    format!(
                        "record counts disagree: manifest {}, data header {}, index {}",
                        info.records, dh.count, ih.count
                    ),
                ));
            }
            if ih.data_len != data.len() as u64 {
                return Err(FormatError::corrupt(
                    &index_path,
                    format!(
                        "index describes a data file of {} bytes, {} is {}",
                        ih.data_len,
                        info.data,
                        data.len()
                    ),
                ));
            }
            let hash = blake3::hash(&index[INDEX_HEADER_LEN..]);
            if hash.as_bytes() != &ih.entries_hash {
                return Err(FormatError::corrupt(
                    &index_path,
                    "index entries do not match their hash (damaged index)",
                ));
            }
            let records = usize::try_from(info.records)
                .map_err(|_| FormatError::corrupt(&index_path, "too many records"))?;
            count_labels(&index, &index_path, len, &mut per_class)?;
            starts.push(len);
            len = len
                .checked_add(records)
                .ok_or_else(|| FormatError::corrupt(&index_path, "too many records"))?;
            shards.push(OpenShard {
                data_path,
                data,
                index,
            });
        }
        if let Some((c, (&said, &found))) = manifest
            .counts_per_class
            .iter()
            .zip(&per_class)
            .enumerate()
            .find(|(_, (a, b))| a != b)
        {
            return Err(FormatError::Manifest {
                path: split_dir.join(super::MANIFEST_FILE),
                msg: format!(
                    "counts_per_class[{c}] (class {:?}) is {said} but the index holds {found} \
                     records of that class",
                    manifest.classes[c]
                ),
            });
        }
        let pixel_limit = manifest.options.max_pixels.min(MAX_PIXELS_CAP);
        Ok(ShardSet {
            dir: split_dir.to_path_buf(),
            manifest,
            shards,
            starts,
            len,
            pixel_limit,
            checked: (0..len.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// [`ShardSet::open`], and refuse a manifest whose `split` is not the folder's name (a
    /// `val/manifest.json` copied into `train/`, or split folders swapped). Every command
    /// opens shard sets this way.
    pub fn open_split(split_dir: &Path) -> Result<ShardSet, FormatError> {
        let set = ShardSet::open(split_dir)?;
        let name = match split_dir.file_name() {
            Some(n) => Some(n.to_os_string()),
            None => std::fs::canonicalize(split_dir)
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_os_string())),
        };
        let name = name.map(|n| n.to_string_lossy().into_owned());
        if name.as_deref() != Some(set.manifest.split.as_str()) {
            return Err(FormatError::Manifest {
                path: split_dir.join(super::MANIFEST_FILE),
                msg: format!(
                    "`split` is {:?} but the folder is named {:?}: the manifest belongs to \
                     another split (rename the folder back or re-create the shards)",
                    set.manifest.split,
                    name.unwrap_or_default()
                ),
            });
        }
        Ok(set)
    }

    /// The largest stored pixel count this set accepts (its manifest's `max_pixels`, at
    /// most [`MAX_PIXELS_CAP`]).
    pub fn pixel_limit(&self) -> u64 {
        self.pixel_limit
    }

    /// The split directory this set was opened from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the set holds no records.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.manifest.classes.len()
    }

    /// The dataset fingerprint (hex).
    pub fn fingerprint(&self) -> &str {
        &self.manifest.fingerprint
    }

    /// Number of shards.
    pub fn num_shards(&self) -> usize {
        self.shards.len()
    }

    fn locate(&self, i: usize) -> Result<(usize, usize), FormatError> {
        if i >= self.len {
            return Err(FormatError::OutOfRange {
                index: i,
                len: self.len,
            });
        }
        // Last shard whose start is <= i; empty shards are skipped by this search.
        let s = self.starts.partition_point(|&start| start <= i) - 1;
        Ok((s, i - self.starts[s]))
    }

    /// The index entry of record `i`, checked against the data file and class list.
    pub fn entry(&self, i: usize) -> Result<IndexEntry, FormatError> {
        let (s, local) = self.locate(i)?;
        let shard = &self.shards[s];
        let bad = |msg: String| FormatError::BadRecord {
            path: shard.data_path.clone(),
            index: i,
            msg,
        };
        let at = INDEX_HEADER_LEN + local * ENTRY_LEN;
        let raw = shard
            .index
            .get(at..at + ENTRY_LEN)
            .ok_or_else(|| bad("index entry past the end of the index".into()))?;
        let e = IndexEntry::parse(raw).map_err(&bad)?;
        let end = e.offset.checked_add(e.length);
        if e.offset < DATA_HEADER_LEN as u64 || end.is_none_or(|end| end > shard.data.len() as u64)
        {
            return Err(bad(format!(
                "bytes {}..+{} lie outside the data file of {} bytes",
                e.offset,
                e.length,
                shard.data.len()
            )));
        }
        let pixels = u64::from(e.width) * u64::from(e.height);
        if pixels > self.pixel_limit {
            return Err(bad(format!(
                "stored size {}x{} = {pixels} pixels exceeds the set's limit of {} \
                 (manifest options.max_pixels, at most {MAX_PIXELS_CAP})",
                e.width, e.height, self.pixel_limit
            )));
        }
        if e.label as usize >= self.manifest.classes.len() {
            return Err(bad(format!(
                "label {} but the set has {} classes",
                e.label,
                self.manifest.classes.len()
            )));
        }
        Ok(e)
    }

    fn bytes_of(&self, i: usize, e: &IndexEntry) -> &[u8] {
        // `entry` checked the range against this shard's map.
        let (s, _) = self.locate(i).unwrap_or((0, 0));
        let data = &self.shards[s].data;
        data.get(e.offset as usize..(e.offset + e.length) as usize)
            .unwrap_or(&[])
    }

    /// Record `i` in O(1) (one index lookup, no copy). Does not verify the checksum.
    pub fn record(&self, i: usize) -> Result<RecordRef<'_>, FormatError> {
        let e = self.entry(i)?;
        Ok(RecordRef {
            label: e.label,
            orig_width: e.orig_width,
            orig_height: e.orig_height,
            width: e.width,
            height: e.height,
            encoding: e.encoding,
            bytes: self.bytes_of(i, &e),
        })
    }

    /// Record `i`, after checking its CRC-32 against the index.
    pub fn verify_record(&self, i: usize) -> Result<RecordRef<'_>, FormatError> {
        let e = self.entry(i)?;
        let bytes = self.bytes_of(i, &e);
        let crc = crc32fast::hash(bytes);
        if crc != e.crc32 {
            let (s, _) = self.locate(i)?;
            return Err(FormatError::BadRecord {
                path: self.shards[s].data_path.clone(),
                index: i,
                msg: format!("checksum mismatch (index {:08x}, data {crc:08x})", e.crc32),
            });
        }
        Ok(RecordRef {
            label: e.label,
            orig_width: e.orig_width,
            orig_height: e.orig_height,
            width: e.width,
            height: e.height,
            encoding: e.encoding,
            bytes,
        })
    }

    /// Record `i`, its CRC-32 checked the first time it is read through this set (later
    /// reads skip the check: one bit per record remembers it). What the training loader
    /// reads, so a damaged payload is an error naming the file and record, never pixels.
    pub fn record_checked(&self, i: usize) -> Result<RecordRef<'_>, FormatError> {
        let (word, bit) = (i / 64, 1u64 << (i % 64));
        let done = self
            .checked
            .get(word)
            .is_some_and(|w| w.load(Ordering::Relaxed) & bit != 0);
        if done {
            return self.record(i);
        }
        let r = self.verify_record(i)?;
        if let Some(w) = self.checked.get(word) {
            w.fetch_or(bit, Ordering::Relaxed);
        }
        Ok(r)
    }

    /// Drops the resident pages of every mapped data file from this process's RSS
    /// (`madvise(MADV_DONTNEED)`; later reads fault them in again from the page cache or
    /// the disk). For jobs that read records in random order (the teacher cache's epoch
    /// pass) and must keep their RSS bounded.
    pub fn release_resident(&self) {
        for shard in &self.shards {
            shard.release(0..shard.data.len());
        }
    }

    /// Re-check every record's checksum and recompute every shard digest and the fingerprint.
    /// `progress` is called with the number of records checked so far. A sequential pass:
    /// the data pages behind it are handed back every [`RELEASE_EVERY_BYTES`], so its RSS
    /// stays bounded whatever the size of the set.
    pub fn verify_all(&self, mut progress: impl FnMut(usize)) -> VerifyReport {
        let mut report = VerifyReport::default();
        let mut digests = Vec::with_capacity(self.shards.len());
        for (s, info) in self.manifest.shards.iter().enumerate() {
            let start = self.starts[s];
            let mut hasher = blake3::Hasher::new();
            let mut released = 0usize;
            for i in start..start + info.records as usize {
                match self.verify_record(i) {
                    Ok(_) => {}
                    Err(err) => report.bad_records.push(err),
                }
                // Hash whatever the index points at, so the digest reflects the data as it is.
                if let Ok(e) = self.entry(i) {
                    e.hash_into(&mut hasher, self.bytes_of(i, &e));
                    let end = (e.offset + e.length) as usize;
                    if end >= released + RELEASE_EVERY_BYTES {
                        self.shards[s].release(released..end);
                        released = end;
                    }
                }
                progress(i + 1);
            }
            self.shards[s].release(0..self.shards[s].data.len());
            let digest = hasher.finalize().to_hex().to_string();
            if digest != info.digest {
                report.bad_shards.push(format!(
                    "{}: content digest {digest} differs from the manifest's {}",
                    self.shards[s].data_path.display(),
                    info.digest
                ));
            }
            digests.push(digest);
        }
        report.recomputed_fingerprint = fingerprint(&self.manifest.classes, &digests);
        report
    }
}
