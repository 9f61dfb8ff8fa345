//! `manifest.json`: what a shard set holds, how it was made, what was skipped, and its
//! dataset fingerprint.

use super::layout::{check_version, Encoding, FORMAT_VERSION};
use super::FormatError;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// File name of the manifest inside a split directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Value of the manifest's `format` field.
pub const FORMAT_NAME: &str = "deit-pipe-shards";

/// Options the shard set was written with (all that affects the stored bytes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardOptions {
    /// How images are stored.
    pub format: Encoding,
    /// Images whose shorter side exceeds this are resized so the shorter side equals it.
    pub max_side: u32,
    /// JPEG quality used when an image is (re-)encoded.
    pub quality: u8,
    /// Target size of one shard data file in bytes.
    pub shard_bytes: u64,
    /// Seed of the write-time shuffle.
    pub seed: u64,
    /// Images with more pixels than this are skipped (decompression-bomb guard).
    pub max_pixels: u64,
    /// Where the file list came from: `imagefolder` or `list`.
    pub input: String,
    /// Target MCUs per restart interval of JPEG records (0: stored JPEGs keep the input's
    /// bytes). Each record's interval is the largest divisor of its MCUs per row that is at
    /// most this, so intervals tile the rows and a crop decodes only the intervals it
    /// covers. Absent in manifests written before this field existed (read as 0).
    #[serde(default)]
    pub restart_mcus: u32,
}

/// One shard: a data file, its index and the digest of its records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// Data file name (in the split directory).
    pub data: String,
    /// Index file name (in the split directory).
    pub index: String,
    /// Records in this shard.
    pub records: u64,
    /// Size of the data file in bytes.
    pub data_bytes: u64,
    /// BLAKE3 (hex) of the shard's records: metadata and bytes, in order.
    pub digest: String,
}

/// An input file that was not stored, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedFile {
    /// Path relative to the input root (or as written in the list file).
    pub path: String,
    /// One-line reason.
    pub reason: String,
}

/// The manifest of one split directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// Format version ([`FORMAT_VERSION`]); newer versions are refused.
    pub format_version: u32,
    /// Split name (`train`, `val`, ...).
    pub split: String,
    /// Class names; a record's label indexes this list.
    pub classes: Vec<String>,
    /// Records stored.
    pub num_records: u64,
    /// Records stored per class (same order as `classes`).
    pub counts_per_class: Vec<u64>,
    /// Sum of record lengths in bytes.
    pub total_bytes: u64,
    /// Options the set was written with.
    pub options: ShardOptions,
    /// Shards in record order.
    pub shards: Vec<ShardInfo>,
    /// Inputs not stored, with reasons.
    pub skipped: Vec<SkippedFile>,
    /// Dataset fingerprint (hex BLAKE3) over classes and every record's label, sizes and bytes.
    pub fingerprint: String,
    /// The program that wrote the set.
    pub writer: String,
}

/// Compute the dataset fingerprint from the class list and the shard digests (hex), in order.
pub fn fingerprint(classes: &[String], shard_digests: &[String]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"deit-pipe dataset fingerprint v1\0");
    h.update(&(classes.len() as u64).to_le_bytes());
    for c in classes {
        h.update(&(c.len() as u64).to_le_bytes());
        h.update(c.as_bytes());
    }
    h.update(&(shard_digests.len() as u64).to_le_bytes());
    for d in shard_digests {
        h.update(d.as_bytes());
    }
    h.finalize().to_hex().to_string()
}

/// Check that `name` can be used as one component of a path under an output folder: not
/// empty, not `.` or `..`, no `/`, `\\` or NUL. `what` names it in the error (e.g.
/// `--split`), so a name like `../x` or `/abs` can never write outside the folder.
pub fn check_path_part(what: &str, name: &str) -> Result<(), String> {
    if is_plain_file_name(name) {
        Ok(())
    } else {
        Err(format!(
            "{what} {:?} cannot be used as a file or folder name (it is empty, `.` or `..`, \
             or holds a path separator or NUL)",
            name
        ))
    }
}

fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\\')
        && !name.contains('\0')
}

impl Manifest {
    /// Parse manifest JSON read from `path`, refusing other formats and versions and checking
    /// that the counts add up.
    pub fn parse(path: &Path, text: &[u8]) -> Result<Manifest, FormatError> {
        let bad = |msg: String| FormatError::Manifest {
            path: path.to_path_buf(),
            msg,
        };
        let value: serde_json::Value =
            serde_json::from_slice(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let format = value.get("format").and_then(|v| v.as_str());
        if format != Some(FORMAT_NAME) {
            return Err(bad(format!(
                "`format` is {format:?}, expected {FORMAT_NAME:?}"
            )));
        }
        let version = value
            .get("format_version")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| bad("missing `format_version`".into()))?;
        check_version(path, u32::try_from(version).unwrap_or(u32::MAX))?;
        let m: Manifest = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
        m.check().map_err(bad)?;
        Ok(m)
    }

    /// Read and parse `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<Manifest, FormatError> {
        let path = dir.join(MANIFEST_FILE);
        let text = crate::open::read_bounded(&path, crate::open::MANIFEST)
            .map_err(|e| FormatError::io(&path, e))?;
        Manifest::parse(&path, &text)
    }

    /// Serialize as pretty JSON (stable field order).
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    fn check(&self) -> Result<(), String> {
        if self.format_version != FORMAT_VERSION {
            return Err(format!("format_version {}", self.format_version));
        }
        if self.counts_per_class.len() != self.classes.len() {
            return Err(format!(
                "{} class counts for {} classes",
                self.counts_per_class.len(),
                self.classes.len()
            ));
        }
        let by_class: u128 = self.counts_per_class.iter().map(|&c| c as u128).sum();
        let by_shard: u128 = self.shards.iter().map(|s| s.records as u128).sum();
        if by_class != self.num_records as u128 || by_shard != self.num_records as u128 {
            return Err(format!(
                "num_records {} but class counts sum to {by_class} and shard records to {by_shard}",
                self.num_records
            ));
        }
        for s in &self.shards {
            if !is_plain_file_name(&s.data) || !is_plain_file_name(&s.index) {
                return Err(format!(
                    "shard file names must be plain names: {:?}",
                    s.data
                ));
            }
        }
        let digests: Vec<String> = self.shards.iter().map(|s| s.digest.clone()).collect();
        if fingerprint(&self.classes, &digests) != self.fingerprint {
            return Err("fingerprint does not match the shard digests".into());
        }
        Ok(())
    }
}
