//! What a cache is bound to ([`CacheBinding`]) and what one file holds ([`FileHeader`]).
//!
//! Both travel in the Parquet footer's key-value metadata under [`HEADER_KEY`] as JSON,
//! so pyarrow, pandas and DuckDB users can read them too.

use serde::{Deserialize, Serialize};

use super::error::{CacheError, Result};

/// Version of the on-disk layout described in `docs/ARCHITECTURE.md` ("Teacher cache").
/// Bump it on any change of columns, encodings or metadata meaning. Version 2 added the
/// BLAKE3 checksums of every byte (footer key `deit_pipe.integrity`), `dataset_len` in the
/// file header and the footer's own documentation; version 1 files are refused with a
/// message to re-run `teacher-cache`.
pub const CACHE_FORMAT_VERSION: u32 = 2;

/// Most slots an epoch may have (2^28, a 1 GiB coverage map when opening): a header
/// claiming more is refused before anything is allocated for it.
pub const MAX_EPOCH_SLOTS: u32 = 1 << 28;

/// Key of the footer key-value entry that holds the [`FileHeader`] JSON.
pub const HEADER_KEY: &str = "deit_pipe.teacher_cache";

/// Everything a cache depends on. A trainer refuses a cache whose binding differs from the
/// one it computes from its own data, config and teacher ([`CacheBinding::check_against`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheBinding {
    /// On-disk layout version ([`CACHE_FORMAT_VERSION`] for files this code writes).
    pub format_version: u32,
    /// Fingerprint of the training shards (`formats::shard` manifest fingerprint).
    pub dataset_fingerprint: String,
    /// Canonical JSON of the augmentation config (`pipeline::config::AugmentConfig::canonical_json`).
    pub augment_config_json: String,
    /// Hash of the canonical augmentation JSON (`AugmentConfig::hash`).
    pub augment_config_hash: String,
    /// Run seed that the epoch plans and views derive from.
    pub run_seed: u64,
    /// Repeated-augmentation count of the plan.
    pub repeats: u32,
    /// Teacher architecture name (e.g. `regnety_160`).
    pub teacher_arch: String,
    /// Hash of the teacher weights file.
    pub teacher_weights_hash: String,
    /// Number of logits kept per view (K).
    pub top_k: u32,
    /// Number of classes of the teacher's output (C).
    pub num_classes: u32,
    /// Version of the pipeline's plan/view algorithms (a change means other views).
    pub pipeline_version: String,
}

impl CacheBinding {
    /// Compares every field, in declaration order; the first difference becomes
    /// [`CacheError::BindingMismatch`] naming the field, the cached and the expected value.
    pub fn check_against(&self, expected: &CacheBinding) -> Result<()> {
        fn cmp<T: PartialEq + std::fmt::Debug>(
            field: &'static str,
            cached: &T,
            expected: &T,
        ) -> Result<()> {
            if cached == expected {
                Ok(())
            } else {
                Err(CacheError::BindingMismatch {
                    field,
                    cached: format!("{cached:?}"),
                    expected: format!("{expected:?}"),
                })
            }
        }
        let (c, e) = (self, expected);
        cmp("format_version", &c.format_version, &e.format_version)?;
        cmp(
            "dataset_fingerprint",
            &c.dataset_fingerprint,
            &e.dataset_fingerprint,
        )?;
        cmp(
            "augment_config_hash",
            &c.augment_config_hash,
            &e.augment_config_hash,
        )?;
        cmp(
            "augment_config_json",
            &c.augment_config_json,
            &e.augment_config_json,
        )?;
        cmp("run_seed", &c.run_seed, &e.run_seed)?;
        cmp("repeats", &c.repeats, &e.repeats)?;
        cmp("teacher_arch", &c.teacher_arch, &e.teacher_arch)?;
        cmp(
            "teacher_weights_hash",
            &c.teacher_weights_hash,
            &e.teacher_weights_hash,
        )?;
        cmp("top_k", &c.top_k, &e.top_k)?;
        cmp("num_classes", &c.num_classes, &e.num_classes)?;
        cmp("pipeline_version", &c.pipeline_version, &e.pipeline_version)?;
        Ok(())
    }

    /// Checks that K and C describe a cache: `1 <= top_k <= num_classes`.
    pub fn validate(&self) -> Result<()> {
        if self.top_k == 0 || self.top_k > self.num_classes {
            return Err(CacheError::InvalidParameter(format!(
                "top_k must be in 1..={} (num_classes), got {}",
                self.num_classes, self.top_k
            )));
        }
        Ok(())
    }
}

/// Which share of an epoch's slots a file holds: part `index` of `count`, 1-based
/// (`--part 3/8`). A whole epoch in one file is part 1 of 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PartSpec {
    /// 1-based part number, `1..=count`.
    pub index: u32,
    /// Number of parts the epoch is split into.
    pub count: u32,
}

impl PartSpec {
    /// The whole epoch in one file.
    pub const WHOLE: PartSpec = PartSpec { index: 1, count: 1 };

    /// Part `index` of `count` (1-based); errors unless `1 <= index <= count <= 999`.
    pub fn new(index: u32, count: u32) -> Result<PartSpec> {
        if count == 0 || count > 999 || index == 0 || index > count {
            return Err(CacheError::InvalidParameter(format!(
                "part {index}/{count}: need 1 <= i <= N <= 999"
            )));
        }
        Ok(PartSpec { index, count })
    }

    /// Parses `i/N` as given on the command line.
    pub fn parse(s: &str) -> Result<PartSpec> {
        let bad = || CacheError::InvalidParameter(format!("part `{s}`: expected i/N, e.g. 3/8"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let i = i.trim().parse().map_err(|_| bad())?;
        let n = n.trim().parse().map_err(|_| bad())?;
        PartSpec::new(i, n)
    }
}

impl std::fmt::Display for PartSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The metadata of one cache file: the cache binding plus where the file sits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHeader {
    /// The binding shared by every file of the cache.
    pub binding: CacheBinding,
    /// The epoch this file holds rows of.
    pub epoch: u32,
    /// Which part of the epoch.
    pub part: PartSpec,
    /// Number of slots of the whole epoch (all parts together).
    pub epoch_slots: u32,
    /// Number of samples of the data set: every `sample` and `partner` is below it.
    /// (Absent from version 1 files, which are refused anyway.)
    #[serde(default)]
    pub dataset_len: u32,
}

impl FileHeader {
    /// The JSON stored under [`HEADER_KEY`].
    pub fn to_json(&self) -> String {
        // A struct of strings and integers always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses the JSON stored under [`HEADER_KEY`].
    pub fn from_json(json: &str) -> std::result::Result<FileHeader, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }
}

/// The file name of one epoch (part): `epoch-00012.parquet` or
/// `epoch-00012.part-003-of-008.parquet`.
pub fn file_name(epoch: u32, part: PartSpec) -> String {
    if part == PartSpec::WHOLE {
        format!("epoch-{epoch:05}.parquet")
    } else {
        format!(
            "epoch-{epoch:05}.part-{:03}-of-{:03}.parquet",
            part.index, part.count
        )
    }
}

/// Parses a cache file name back into (epoch, part); `Err` says what is wrong.
pub fn parse_file_name(name: &str) -> std::result::Result<(u32, PartSpec), String> {
    let stem = name
        .strip_suffix(".parquet")
        .ok_or("does not end in .parquet")?;
    let rest = stem
        .strip_prefix("epoch-")
        .ok_or("does not start with epoch-")?;
    let (epoch_s, part) = match rest.split_once('.') {
        None => (rest, PartSpec::WHOLE),
        Some((e, p)) => {
            let p = p
                .strip_prefix("part-")
                .ok_or("expected .part-III-of-NNN after the epoch")?;
            let (i, n) = p.split_once("-of-").ok_or("expected part-III-of-NNN")?;
            if i.len() != 3 || n.len() != 3 {
                return Err("part numbers must have 3 digits".into());
            }
            let i = i.parse().map_err(|_| "part number is not a number")?;
            let n = n.parse().map_err(|_| "part count is not a number")?;
            let part = PartSpec::new(i, n).map_err(|e| e.to_string())?;
            if part == PartSpec::WHOLE {
                return Err("part 1 of 1 is written as epoch-XXXXX.parquet".into());
            }
            (e, part)
        }
    };
    if epoch_s.len() < 5 || !epoch_s.bytes().all(|b| b.is_ascii_digit()) {
        return Err("epoch must have at least 5 digits".into());
    }
    let epoch: u32 = epoch_s.parse().map_err(|_| "epoch out of range")?;
    if file_name(epoch, part) != name {
        return Err("not in canonical form".into());
    }
    Ok((epoch, part))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (e, p) in [(0, PartSpec::WHOLE), (12, PartSpec { index: 3, count: 8 })] {
            assert_eq!(parse_file_name(&file_name(e, p)), Ok((e, p)));
        }
        assert_eq!(file_name(12, PartSpec::WHOLE), "epoch-00012.parquet");
        assert_eq!(
            file_name(12, PartSpec { index: 3, count: 8 }),
            "epoch-00012.part-003-of-008.parquet"
        );
        assert!(parse_file_name("epoch-12.parquet").is_err());
        assert!(parse_file_name("epoch-00012.part-009-of-008.parquet").is_err());
        assert!(parse_file_name("epoch-00012.part-001-of-001.parquet").is_err());
        assert!(parse_file_name("epoch-00012.parquet.partial").is_err());
    }

    #[test]
    fn part_parse() {
        assert_eq!(
            PartSpec::parse("3/8").ok(),
            Some(PartSpec { index: 3, count: 8 })
        );
        assert!(PartSpec::parse("0/8").is_err());
        assert!(PartSpec::parse("9/8").is_err());
        assert!(PartSpec::parse("3").is_err());
    }
}
