//! [`TeacherCache`]: opens a cache directory, checks every file's binding and every epoch's
//! coverage, and streams an epoch's rows in slot order ([`EpochReader`]).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use arrow::array::AsArray;
use arrow::datatypes::UInt32Type;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;

use super::binding::{
    parse_file_name, CacheBinding, FileHeader, PartSpec, CACHE_FORMAT_VERSION, HEADER_KEY,
    MAX_EPOCH_SLOTS,
};
use super::col;
use super::docs::CLASS_NAMES_KEY;
use super::error::{CacheError, Result};
use super::guard::guarded;
use super::integrity::{
    check_footer, check_slots, check_slots_in, check_whole, slot_ranges, FooterCheck,
    VerifiedFooter,
};
use super::schema::{arrow_schema, batch_to_targets};
use super::target::CachedTarget;
use super::writer::PARTIAL_SUFFIX;

/// Rows decoded at a time per part file while streaming.
const READ_BATCH_ROWS: usize = 8192;

/// One finished cache file found in the directory.
#[derive(Debug, Clone)]
pub struct CacheFile {
    /// Its path.
    pub path: PathBuf,
    /// Its metadata.
    pub header: FileHeader,
    /// Rows it holds.
    pub rows: u64,
    /// File size in bytes.
    pub bytes: u64,
    /// Compressed bytes per top-level column (file order), summed over row groups.
    pub column_bytes: Vec<(String, u64)>,
}

/// The files of one epoch and whether together they cover its slots exactly once.
#[derive(Debug, Clone)]
pub struct CacheEpoch {
    /// The epoch.
    pub epoch: u32,
    /// Its files, by part number.
    pub files: Vec<CacheFile>,
    /// Slot count of the whole epoch (from the first file's header).
    pub epoch_slots: u32,
    /// `None` when the files cover every slot exactly once; otherwise what is wrong,
    /// naming parts, slots and files.
    pub problem: Option<String>,
}

impl CacheEpoch {
    /// Rows in all files of the epoch.
    pub fn rows(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum()
    }

    /// Bytes of all files of the epoch.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

/// An opened cache directory. Opening reads each file's footer and slot column (not the
/// targets); reading an epoch streams it.
#[derive(Debug, Clone)]
pub struct TeacherCache {
    dir: PathBuf,
    binding: CacheBinding,
    epochs: BTreeMap<u32, CacheEpoch>,
    partial_files: Vec<PathBuf>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError {
    let path = path.to_path_buf();
    move |source| CacheError::Io { path, source }
}

fn pq_err(path: &Path) -> impl FnOnce(parquet::errors::ParquetError) -> CacheError {
    let path = path.to_path_buf();
    move |source| CacheError::Parquet { path, source }
}

fn meta_err(path: &Path, reason: impl Into<String>) -> CacheError {
    CacheError::Metadata {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn file_display(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// The [`FileHeader`] stored in a builder's footer.
fn header_of<R: parquet::file::reader::ChunkReader>(
    path: &Path,
    builder: &ParquetRecordBatchReaderBuilder<R>,
) -> Result<FileHeader> {
    let json = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|e| e.key == HEADER_KEY))
        .and_then(|e| e.value.clone())
        .ok_or_else(|| meta_err(path, format!("footer key `{HEADER_KEY}` missing")))?;
    let header = FileHeader::from_json(&json)
        .map_err(|e| meta_err(path, format!("footer key `{HEADER_KEY}`: {e}")))?;
    let names = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|e| e.key == CLASS_NAMES_KEY))
        .map(|e| e.value.clone().unwrap_or_default());
    if let Some(names) = names {
        check_class_names(&names, header.binding.num_classes).map_err(|reason| {
            meta_err(path, format!("footer key `{CLASS_NAMES_KEY}`: {reason}"))
        })?;
    }
    Ok(header)
}

/// The footer's class names (optional; the writer stores the data set's): a JSON list of
/// 1 to C strings (C = `num_classes` of the binding: a model may have more outputs than
/// the data set has classes).
fn check_class_names(json: &str, num_classes: u32) -> std::result::Result<(), String> {
    let names: Vec<String> =
        serde_json::from_str(json).map_err(|e| format!("not a JSON list of strings: {e}"))?;
    if names.is_empty() || names.len() > num_classes as usize {
        return Err(format!(
            "{} class names for a cache of {num_classes} classes (1 to {num_classes} expected)",
            names.len()
        ));
    }
    Ok(())
}

/// Refuses a header of another format version.
fn check_version(path: &Path, header: &FileHeader) -> Result<()> {
    if header.binding.format_version != CACHE_FORMAT_VERSION {
        return Err(CacheError::OldFormat {
            path: path.to_path_buf(),
            found: header.binding.format_version,
            expected: CACHE_FORMAT_VERSION,
        });
    }
    Ok(())
}

/// A file without checksums: an older format (said so, by version) or not a cache file.
fn no_checksum<R: parquet::file::reader::ChunkReader + 'static>(
    path: &Path,
    reader: R,
) -> CacheError {
    let header = guarded(path, "the footer", || {
        let b = ParquetRecordBatchReaderBuilder::try_new(reader).map_err(pq_err(path))?;
        header_of(path, &b)
    });
    match header {
        Ok(h) if h.binding.format_version != CACHE_FORMAT_VERSION => CacheError::OldFormat {
            path: path.to_path_buf(),
            found: h.binding.format_version,
            expected: CACHE_FORMAT_VERSION,
        },
        Ok(_) => CacheError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("footer key `{}` missing", super::integrity::INTEGRITY_KEY),
        },
        Err(e) => e,
    }
}

/// Opens one cache file: checks its footer checksum (before the decoder sees it), then
/// builds its Parquet reader and reads its [`FileHeader`].
fn open_file(
    path: &Path,
) -> Result<(
    ParquetRecordBatchReaderBuilder<File>,
    FileHeader,
    VerifiedFooter,
)> {
    let mut file = crate::open::open_regular(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    let footer = match check_footer(path, &mut file, len)? {
        FooterCheck::Ok(f) => f,
        FooterCheck::NoChecksum => return Err(no_checksum(path, file)),
    };
    let (builder, header) = guarded(path, "the footer", || {
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(pq_err(path))?;
        let header = header_of(path, &builder)?;
        Ok((builder, header))
    })?;
    check_version(path, &header)?;
    Ok((builder, header, footer))
}

/// Reads the metadata of one cache file (e.g. to decide whether a finished file of a
/// resumed run can be kept). Checks the footer's checksum, not the data's
/// ([`verify_file`] checks every byte).
pub fn read_file_header(path: &Path) -> Result<FileHeader> {
    open_file(path).map(|(_, h, _)| h)
}

/// Reads a whole file into memory and checks every byte against its checksums; returns
/// the verified bytes and header.
fn read_verified(path: &Path) -> Result<(bytes::Bytes, FileHeader)> {
    let data = crate::open::read_bounded(path, crate::open::CACHE_EPOCH).map_err(io_err(path))?;
    let footer = match check_whole(path, &data)? {
        FooterCheck::Ok(f) => f,
        FooterCheck::NoChecksum => return Err(no_checksum(path, bytes::Bytes::from(data))),
    };
    let data = bytes::Bytes::from(data);
    let (header, slot_ranges) = guarded(path, "the footer", || {
        let b = ParquetRecordBatchReaderBuilder::try_new(data.clone()).map_err(pq_err(path))?;
        Ok((header_of(path, &b)?, slot_ranges(b.metadata())))
    })?;
    check_version(path, &header)?;
    // The slot digest too, so that every stored digest is checked.
    check_slots_in(path, &data, &slot_ranges, &footer)?;
    Ok((data, header))
}

/// Checks every byte of one cache file against the BLAKE3 digests in its footer (and its
/// format version), then decodes every row and checks it against the schema's rules
/// (ids < C, lam in [0, 1], sample/partner < `dataset_len`, finite logits, ...); returns its
/// header. `deit-pipe cache inspect` runs it on every file, a resumed `teacher-cache` on
/// every finished file it keeps. (The trainer checks the same as it streams an epoch.)
pub fn verify_file(path: &Path) -> Result<FileHeader> {
    let (data, header) = read_verified(path)?;
    let reader = guarded(path, "the footer", || {
        ParquetRecordBatchReaderBuilder::try_new(data)
            .and_then(|b| b.with_batch_size(READ_BATCH_ROWS).build())
            .map_err(pq_err(path))
    })?;
    let mut part = PartStream {
        path: path.to_path_buf(),
        reader,
        buf: Vec::new().into_iter(),
        row: 0,
        returned: 0,
        dataset_len: header.dataset_len,
    };
    while part.next_row(&header.binding)?.is_some() {}
    Ok(header)
}

/// Opens a file, checks its footer checksum, name, header and schema (not its binding).
fn scan_file(path: &Path, name_epoch: u32, name_part: PartSpec) -> Result<CacheFile> {
    let (builder, header, _) = open_file(path)?;
    if (header.epoch, header.part) != (name_epoch, name_part) {
        return Err(meta_err(
            path,
            format!(
                "the name says epoch {name_epoch} part {name_part}, the footer says epoch {} part {}",
                header.epoch, header.part
            ),
        ));
    }
    header
        .binding
        .validate()
        .map_err(|e| meta_err(path, e.to_string()))?;
    let expected = arrow_schema(&header.binding);
    let found = builder.schema();
    let same = found.fields().len() == expected.fields().len()
        && found
            .fields()
            .iter()
            .zip(expected.fields())
            .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
    if !same {
        return Err(meta_err(
            path,
            format!("schema {found:?} is not the cache schema for K/C in the footer"),
        ));
    }
    let meta = builder.metadata();
    let rows = meta.file_metadata().num_rows();
    let rows = u64::try_from(rows).map_err(|_| meta_err(path, format!("{rows} rows")))?;
    let mut column_bytes: Vec<(String, u64)> = expected
        .fields()
        .iter()
        .map(|f| (f.name().clone(), 0))
        .collect();
    for rg in meta.row_groups() {
        for c in rg.columns() {
            let root = c.column_path().parts()[0].as_str();
            if let Some(e) = column_bytes.iter_mut().find(|(n, _)| n == root) {
                e.1 += u64::try_from(c.compressed_size()).unwrap_or(0);
            }
        }
    }
    let bytes = std::fs::metadata(path).map_err(io_err(path))?.len();
    Ok(CacheFile {
        path: path.to_path_buf(),
        header,
        rows,
        bytes,
        column_bytes,
    })
}

/// Reads a file's slot column and marks its slots in `owner` (index of the file per slot).
/// Returns problems found (duplicates across files, out-of-range or unordered slots).
fn mark_slots(
    files: &[CacheFile],
    index: usize,
    owner: &mut [u32],
    problems: &mut Vec<String>,
    duplicates: &mut u64,
) -> Result<()> {
    let f = &files[index];
    let (builder, _, footer) = open_file(&f.path)?;
    let slot_ranges = guarded(&f.path, "the footer", || {
        Ok(slot_ranges(builder.metadata()))
    })?;
    let mut file = crate::open::open_regular(&f.path).map_err(io_err(&f.path))?;
    check_slots(&f.path, &mut file, &slot_ranges, &footer)?;
    let slot_idx = builder
        .schema()
        .index_of(col::SLOT)
        .map_err(|e| meta_err(&f.path, e.to_string()))?;
    let all: Vec<u32> = guarded(&f.path, "the slot column", || {
        let mask = ProjectionMask::roots(builder.parquet_schema(), [slot_idx]);
        let reader = builder
            .with_projection(mask)
            .with_batch_size(65_536)
            .build()
            .map_err(pq_err(&f.path))?;
        let mut all = Vec::new();
        for batch in reader {
            let batch = batch.map_err(|source| CacheError::Arrow {
                path: f.path.clone(),
                source,
            })?;
            let slots = batch
                .column(0)
                .as_primitive_opt::<UInt32Type>()
                .ok_or_else(|| meta_err(&f.path, "slot column is not UInt32"))?;
            all.extend_from_slice(slots.values());
        }
        Ok(all)
    })?;
    let mut prev: Option<u32> = None;
    let name = file_display(&f.path);
    for &s in &all {
        if prev.is_some_and(|p| s <= p) {
            problems.push(format!(
                "{name}: slot {s} follows slot {} (slots must strictly increase)",
                prev.unwrap_or(0)
            ));
            return Ok(());
        }
        prev = Some(s);
        let Some(o) = owner.get_mut(s as usize) else {
            problems.push(format!(
                "{name}: slot {s} >= the epoch's slot count {}",
                owner.len()
            ));
            return Ok(());
        };
        if *o != u32::MAX {
            *duplicates += 1;
            if *duplicates <= 5 {
                problems.push(format!(
                    "slot {s} is in both {} and {name}",
                    file_display(&files[*o as usize].path)
                ));
            }
        } else {
            *o = index as u32;
        }
    }
    Ok(())
}

/// Formats a sorted list of numbers as ranges: `3, 7..=9` (first `max` ranges).
fn ranges(values: &[u32], max: usize) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    let mut count = 0;
    while i < values.len() {
        let start = values[i];
        let mut end = start;
        while i + 1 < values.len() && values[i + 1] == end + 1 {
            i += 1;
            end += 1;
        }
        i += 1;
        count += 1;
        if out.len() < max {
            out.push(if start == end {
                start.to_string()
            } else {
                format!("{start}..={end}")
            });
        }
    }
    if count > max {
        out.push("...".into());
    }
    out.join(", ")
}

/// Checks that an epoch's files form one complete set and cover every slot exactly once.
fn check_epoch(files: &[CacheFile]) -> Result<Option<String>> {
    let first = &files[0];
    let mut problems = Vec::new();
    for f in &files[1..] {
        if f.header.part.count != first.header.part.count {
            problems.push(format!(
                "{} is one of {} parts but {} is one of {}",
                file_display(&first.path),
                first.header.part.count,
                file_display(&f.path),
                f.header.part.count
            ));
        }
        if f.header.epoch_slots != first.header.epoch_slots {
            problems.push(format!(
                "{} says the epoch has {} slots but {} says {}",
                file_display(&first.path),
                first.header.epoch_slots,
                file_display(&f.path),
                f.header.epoch_slots
            ));
        }
    }
    if first.header.epoch_slots > MAX_EPOCH_SLOTS {
        problems.push(format!(
            "{} says the epoch has {} slots, more than the {MAX_EPOCH_SLOTS} a cache may have",
            file_display(&first.path),
            first.header.epoch_slots
        ));
    }
    if !problems.is_empty() {
        return Ok(Some(problems.join("; ")));
    }
    let n = first.header.part.count;
    let present: Vec<u32> = files.iter().map(|f| f.header.part.index).collect();
    let missing: Vec<u32> = (1..=n).filter(|i| !present.contains(i)).collect();
    if !missing.is_empty() {
        problems.push(format!("parts {} of {n} missing", ranges(&missing, 10)));
    }
    let mut owner = vec![u32::MAX; first.header.epoch_slots as usize];
    let mut duplicates = 0u64;
    for i in 0..files.len() {
        mark_slots(files, i, &mut owner, &mut problems, &mut duplicates)?;
    }
    if duplicates > 5 {
        problems.push(format!("{duplicates} duplicated slots in all"));
    }
    let gaps: Vec<u32> = owner
        .iter()
        .enumerate()
        .filter(|(_, o)| **o == u32::MAX)
        .map(|(s, _)| s as u32)
        .collect();
    if !gaps.is_empty() {
        problems.push(format!(
            "slots missing: {} ({} of {} in all)",
            ranges(&gaps, 10),
            gaps.len(),
            owner.len()
        ));
    }
    Ok((!problems.is_empty()).then(|| problems.join("; ")))
}

/// What the bindings of a cache's files are checked against.
#[derive(Clone, Copy)]
enum Expect<'a> {
    /// Every field of every file equals this binding.
    All(&'a CacheBinding),
    /// Every file's binding equals the first file's.
    Nothing,
    /// Data fields equal `data`'s; teacher fields equal the first file's (and
    /// `teacher_arch`, when given).
    Data {
        data: &'a CacheBinding,
        teacher_arch: Option<&'a str>,
    },
}

/// The binding fields a cache takes from its teacher, not from the run's data/config.
const TEACHER_FIELDS: [&str; 3] = ["teacher_arch", "teacher_weights_hash", "top_k"];

/// A file whose binding differs from the first file's: names both files and values.
fn mixed(path: &Path, first: &Path, e: CacheError) -> CacheError {
    match e {
        CacheError::BindingMismatch {
            field,
            cached,
            expected,
        } => CacheError::MixedBindings {
            first: first.to_path_buf(),
            first_value: expected,
            path: path.to_path_buf(),
            value: cached,
            field,
        },
        other => other.in_file(path),
    }
}

impl Expect<'_> {
    /// `b` with the teacher fields of `teacher` (the first file's binding).
    fn data_with_teacher(data: &CacheBinding, teacher: &CacheBinding) -> CacheBinding {
        let mut e = data.clone();
        e.teacher_arch = teacher.teacher_arch.clone();
        e.teacher_weights_hash = teacher.teacher_weights_hash.clone();
        e.top_k = teacher.top_k;
        e
    }

    /// Checks the first file's binding `b`.
    fn check_first(&self, path: &Path, b: &CacheBinding) -> Result<()> {
        match *self {
            Expect::All(e) => b.check_against(e).map_err(|e| e.in_file(path)),
            Expect::Nothing => Ok(()),
            Expect::Data { data, teacher_arch } => {
                if let Some(arch) = teacher_arch {
                    if arch != b.teacher_arch {
                        return Err(CacheError::BindingMismatch {
                            field: "teacher_arch",
                            cached: format!("{:?}", b.teacher_arch),
                            expected: format!("{arch:?} (--teacher-arch)"),
                        }
                        .in_file(path));
                    }
                }
                b.check_against(&Self::data_with_teacher(data, b))
                    .map_err(|e| e.in_file(path))
            }
        }
    }

    /// Checks a later file's binding `b`; `reference` is the first file's (for `All`, the
    /// expected binding), `first` its path.
    fn check(
        &self,
        path: &Path,
        b: &CacheBinding,
        first: &Path,
        reference: &CacheBinding,
    ) -> Result<()> {
        match *self {
            Expect::All(e) => b.check_against(e).map_err(|e| e.in_file(path)),
            Expect::Nothing => b
                .check_against(reference)
                .map_err(|e| mixed(path, first, e)),
            Expect::Data { data, .. } => {
                match b.check_against(&Self::data_with_teacher(data, reference)) {
                    Err(CacheError::BindingMismatch { field, .. })
                        if TEACHER_FIELDS.contains(&field) =>
                    {
                        b.check_against(reference)
                            .map_err(|e| mixed(path, first, e))
                    }
                    r => r.map_err(|e| e.in_file(path)),
                }
            }
        }
    }
}

impl TeacherCache {
    /// Opens `dir`, checking every file's binding against `expected` (the first
    /// difference is an error naming the file, the field and both values), every file's
    /// schema, and each epoch's coverage. Truncated or corrupt files are errors naming the
    /// file. Epochs with missing parts or missing/duplicated slots open, but are refused by
    /// [`TeacherCache::require_epochs`] and [`TeacherCache::epoch_reader`].
    pub fn open(dir: &Path, expected: &CacheBinding) -> Result<TeacherCache> {
        TeacherCache::open_inner(dir, Expect::All(expected))
    }

    /// Opens `dir` for inspection: all files must share one binding. A file that differs
    /// from the first file (by name) is an error naming both files, the field and both
    /// values.
    pub fn open_for_inspect(dir: &Path) -> Result<TeacherCache> {
        TeacherCache::open_inner(dir, Expect::Nothing)
    }

    /// Opens `dir` for a training run: the data fields of every file's binding
    /// (everything but `teacher_arch`, `teacher_weights_hash` and `top_k`) must equal
    /// `data`'s, an error naming the file, the field, the cached and the expected value;
    /// the teacher fields come from the cache, must be the same in every file (an error
    /// names both files) and, when `teacher_arch` is given, name that architecture.
    pub fn open_for_run(
        dir: &Path,
        data: &CacheBinding,
        teacher_arch: Option<&str>,
    ) -> Result<TeacherCache> {
        TeacherCache::open_inner(dir, Expect::Data { data, teacher_arch })
    }

    fn open_inner(dir: &Path, expect: Expect<'_>) -> Result<TeacherCache> {
        let mut names = Vec::new();
        let mut partial_files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(PARTIAL_SUFFIX) {
                partial_files.push(entry.path());
            } else if name.ends_with(".parquet") {
                names.push(name);
            }
        }
        names.sort();
        partial_files.sort();
        let mut binding: Option<CacheBinding> = None;
        let mut first: Option<PathBuf> = None;
        let mut by_epoch: BTreeMap<u32, Vec<CacheFile>> = BTreeMap::new();
        for name in &names {
            let path = dir.join(name);
            let (epoch, part) =
                parse_file_name(name).map_err(|reason| CacheError::BadFileName {
                    path: path.clone(),
                    reason,
                })?;
            let file = scan_file(&path, epoch, part)?;
            let b = &file.header.binding;
            match (&first, &binding) {
                (Some(first), Some(reference)) => expect.check(&path, b, first, reference)?,
                _ => {
                    expect.check_first(&path, b)?;
                    binding = Some(match expect {
                        Expect::All(e) => e.clone(),
                        _ => b.clone(),
                    });
                    first = Some(path.clone());
                }
            }
            by_epoch.entry(epoch).or_default().push(file);
        }
        let binding =
            binding
                .filter(|_| !by_epoch.is_empty())
                .ok_or_else(|| CacheError::Empty {
                    dir: dir.to_path_buf(),
                })?;
        let mut epochs = BTreeMap::new();
        for (epoch, mut files) in by_epoch {
            files.sort_by_key(|f| f.header.part);
            let problem = check_epoch(&files)?;
            epochs.insert(
                epoch,
                CacheEpoch {
                    epoch,
                    epoch_slots: files[0].header.epoch_slots,
                    files,
                    problem,
                },
            );
        }
        Ok(TeacherCache {
            dir: dir.to_path_buf(),
            binding,
            epochs,
            partial_files,
        })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The binding every file carries.
    pub fn binding(&self) -> &CacheBinding {
        &self.binding
    }

    /// All epochs found, complete or not.
    pub fn epochs(&self) -> impl Iterator<Item = &CacheEpoch> {
        self.epochs.values()
    }

    /// One epoch, if any file of it exists.
    pub fn epoch(&self, epoch: u32) -> Option<&CacheEpoch> {
        self.epochs.get(&epoch)
    }

    /// `*.parquet.partial` files left by interrupted writers (ignored by reading).
    pub fn partial_files(&self) -> &[PathBuf] {
        &self.partial_files
    }

    /// Errors unless every epoch in `epochs` is present and complete; the error lists all
    /// missing epochs, or the first incomplete one with its problem.
    pub fn require_epochs(&self, epochs: Range<u32>) -> Result<()> {
        let missing: Vec<u32> = epochs
            .clone()
            .filter(|e| !self.epochs.contains_key(e))
            .collect();
        if !missing.is_empty() {
            return Err(CacheError::MissingEpochs {
                dir: self.dir.clone(),
                missing: ranges(&missing, 20),
            });
        }
        for e in epochs {
            self.complete_epoch(e)?;
        }
        Ok(())
    }

    fn complete_epoch(&self, epoch: u32) -> Result<&CacheEpoch> {
        let e = self
            .epochs
            .get(&epoch)
            .ok_or_else(|| CacheError::MissingEpochs {
                dir: self.dir.clone(),
                missing: epoch.to_string(),
            })?;
        match &e.problem {
            Some(p) => Err(CacheError::EpochIncomplete {
                epoch,
                problem: p.clone(),
            }),
            None => Ok(e),
        }
    }

    /// Streams a complete epoch's rows in slot order, merging its parts. Each part file is
    /// read into memory and checked against its BLAKE3 digests first (a damaged file is an
    /// error naming it before any of its rows is returned); memory holds the epoch's files
    /// plus one decoded batch per part.
    pub fn epoch_reader(&self, epoch: u32) -> Result<EpochReader> {
        let e = self.complete_epoch(epoch)?;
        let mut parts = Vec::with_capacity(e.files.len());
        let mut heap = BinaryHeap::new();
        for f in &e.files {
            // Every byte is checked before the decoder sees it, and the checked bytes are
            // the ones decoded.
            let (data, header) = read_verified(&f.path)?;
            if header != f.header {
                return Err(meta_err(
                    &f.path,
                    "the file changed since the cache was opened",
                ));
            }
            let reader = guarded(&f.path, "the footer", || {
                ParquetRecordBatchReaderBuilder::try_new(data)
                    .and_then(|b| b.with_batch_size(READ_BATCH_ROWS).build())
                    .map_err(pq_err(&f.path))
            })?;
            let mut part = PartStream {
                path: f.path.clone(),
                reader,
                buf: Vec::new().into_iter(),
                row: 0,
                returned: 0,
                dataset_len: header.dataset_len,
            };
            if let Some(row) = part.next_row(&self.binding)? {
                heap.push(Reverse((row.slot, parts.len())));
                parts.push((part, Some(row)));
            } else {
                parts.push((part, None));
            }
        }
        Ok(EpochReader {
            epoch,
            epoch_slots: e.epoch_slots,
            binding: self.binding.clone(),
            parts,
            heap,
            next_slot: 0,
            failed: false,
            last_origin: None,
        })
    }
}

struct PartStream {
    path: PathBuf,
    reader: ParquetRecordBatchReader,
    buf: std::vec::IntoIter<CachedTarget>,
    /// Rows of the file decoded so far (the next batch's first row).
    row: usize,
    /// Rows of the file handed out so far.
    returned: usize,
    /// Samples of the data set (bound of `sample` and `partner`).
    dataset_len: u32,
}

impl PartStream {
    fn next_row(&mut self, binding: &CacheBinding) -> Result<Option<CachedTarget>> {
        loop {
            if let Some(row) = self.buf.next() {
                return Ok(Some(row));
            }
            let path = &self.path;
            let reader = &mut self.reader;
            let what = format!("the rows from {}", self.row);
            let Some(batch) = guarded(path, &what, || Ok(reader.next()))? else {
                return Ok(None);
            };
            let batch = batch.map_err(|source| CacheError::Arrow {
                path: self.path.clone(),
                source,
            })?;
            let rows = batch_to_targets(&batch, binding, self.dataset_len, self.row).map_err(
                |reason| CacheError::BadData {
                    path: self.path.clone(),
                    reason,
                },
            )?;
            self.row += rows.len();
            self.buf = rows.into_iter();
        }
    }
}

/// Rows of one epoch in slot order ([`TeacherCache::epoch_reader`]). Yields an error (and
/// then stops) if a file turns out corrupt or the rows do not run 0, 1, 2, ... exactly.
pub struct EpochReader {
    epoch: u32,
    epoch_slots: u32,
    binding: CacheBinding,
    parts: Vec<(PartStream, Option<CachedTarget>)>,
    heap: BinaryHeap<Reverse<(u32, usize)>>,
    next_slot: u32,
    failed: bool,
    /// File and row (0-based, within the file) of the row returned last.
    last_origin: Option<(PathBuf, usize)>,
}

impl EpochReader {
    /// The epoch being read.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Slot count of the epoch (= number of rows this reader yields).
    pub fn epoch_slots(&self) -> u32 {
        self.epoch_slots
    }

    /// The file and row (0-based, within that file) of the row returned last, for
    /// messages about a row's values.
    pub fn last_row_origin(&self) -> Option<(&Path, usize)> {
        self.last_origin.as_ref().map(|(p, r)| (p.as_path(), *r))
    }

    fn step(&mut self) -> Result<Option<CachedTarget>> {
        let Some(Reverse((slot, i))) = self.heap.pop() else {
            if self.next_slot != self.epoch_slots {
                return Err(CacheError::EpochIncomplete {
                    epoch: self.epoch,
                    problem: format!(
                        "rows end at slot {} of {}",
                        self.next_slot, self.epoch_slots
                    ),
                });
            }
            return Ok(None);
        };
        let (part, head) = &mut self.parts[i];
        let row = head.take();
        let next = part.next_row(&self.binding)?;
        if let Some(n) = &next {
            self.heap.push(Reverse((n.slot, i)));
        }
        *head = next;
        let path = part.path.clone();
        let row = row.ok_or_else(|| meta_err(&path, "reader lost its place"))?;
        self.last_origin = Some((path.clone(), part.returned));
        part.returned += 1;
        if slot != self.next_slot || row.epoch != self.epoch {
            return Err(CacheError::EpochIncomplete {
                epoch: self.epoch,
                problem: format!(
                    "{}: expected epoch {} slot {}, found epoch {} slot {}",
                    file_display(&path),
                    self.epoch,
                    self.next_slot,
                    row.epoch,
                    slot
                ),
            });
        }
        self.next_slot += 1;
        Ok(Some(row))
    }
}

impl Iterator for EpochReader {
    type Item = Result<CachedTarget>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let r = self.step();
        if r.is_err() {
            self.failed = true;
        }
        r.transpose()
    }
}
