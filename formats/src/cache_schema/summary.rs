//! What `deit-pipe cache inspect` prints: coverage, sizes and label agreement.

use std::path::PathBuf;

use super::binding::CacheBinding;
use super::error::{CacheError, Result};
use super::reader::TeacherCache;

/// One epoch of a [`CacheSummary`].
#[derive(Debug, Clone, PartialEq)]
pub struct EpochSummary {
    /// The epoch.
    pub epoch: u32,
    /// Part files present.
    pub files: u32,
    /// Parts the epoch was split into.
    pub part_count: u32,
    /// Slots of the whole epoch.
    pub epoch_slots: u32,
    /// Rows present in all files.
    pub rows: u64,
    /// Bytes of all files.
    pub bytes: u64,
    /// Missing parts, missing or duplicated slots (`None` when complete).
    pub problem: Option<String>,
}

/// A cache at a glance.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSummary {
    /// The cache directory.
    pub dir: PathBuf,
    /// Its binding.
    pub binding: CacheBinding,
    /// Every epoch found, in order.
    pub epochs: Vec<EpochSummary>,
    /// Files left by interrupted writers.
    pub partial_files: Vec<PathBuf>,
    /// Compressed bytes per column over all files (file order).
    pub column_bytes: Vec<(String, u64)>,
}

impl CacheSummary {
    /// Rows in all files.
    pub fn total_rows(&self) -> u64 {
        self.epochs.iter().map(|e| e.rows).sum()
    }

    /// Bytes of all files (data, footers and metadata).
    pub fn total_bytes(&self) -> u64 {
        self.epochs.iter().map(|e| e.bytes).sum()
    }

    /// Bytes on disk per cached view (0 for an empty cache).
    pub fn bytes_per_row(&self) -> f64 {
        let rows = self.total_rows();
        if rows == 0 {
            0.0
        } else {
            self.total_bytes() as f64 / rows as f64
        }
    }

    /// Epochs that cover all their slots exactly once.
    pub fn complete_epochs(&self) -> Vec<u32> {
        self.epochs
            .iter()
            .filter(|e| e.problem.is_none())
            .map(|e| e.epoch)
            .collect()
    }
}

impl std::fmt::Display for CacheSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = &self.binding;
        writeln!(f, "cache {}", self.dir.display())?;
        writeln!(
            f,
            "  teacher {} (weights {}), top-{} of {} classes, seed {}, repeats {}",
            b.teacher_arch, b.teacher_weights_hash, b.top_k, b.num_classes, b.run_seed, b.repeats
        )?;
        writeln!(
            f,
            "  dataset {}, augmentation {}, pipeline {}, format {}",
            b.dataset_fingerprint, b.augment_config_hash, b.pipeline_version, b.format_version
        )?;
        for e in &self.epochs {
            write!(
                f,
                "  epoch {:>5}: {}/{} slots, {} of {} parts, {} bytes",
                e.epoch, e.rows, e.epoch_slots, e.files, e.part_count, e.bytes
            )?;
            match &e.problem {
                Some(p) => writeln!(f, "  PROBLEM: {p}")?,
                None => writeln!(f)?,
            }
        }
        writeln!(
            f,
            "  {} rows, {} bytes, {:.2} bytes per cached view",
            self.total_rows(),
            self.total_bytes(),
            self.bytes_per_row()
        )?;
        let rows = self.total_rows().max(1) as f64;
        let cols: Vec<String> = self
            .column_bytes
            .iter()
            .map(|(n, b)| format!("{n} {:.2}", *b as f64 / rows))
            .collect();
        writeln!(f, "  bytes per view by column: {}", cols.join(", "))?;
        for p in &self.partial_files {
            writeln!(f, "  unfinished file (ignored): {}", p.display())?;
        }
        Ok(())
    }
}

/// How often the teacher's hard label equals the ground-truth label of the sample.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LabelAgreement {
    /// Views read.
    pub views: u64,
    /// Views whose hard label equals the label of `sample`.
    pub hard_eq_label: u64,
    /// Unmixed views (`lam == 1` or `partner == sample`).
    pub unmixed_views: u64,
    /// Unmixed views whose hard label equals the label of `sample` (teacher top-1 accuracy).
    pub unmixed_hard_eq_label: u64,
}

impl TeacherCache {
    /// Coverage and sizes of every epoch found (complete or not).
    pub fn summary(&self) -> CacheSummary {
        let mut column_bytes: Vec<(String, u64)> = Vec::new();
        let mut epochs = Vec::new();
        for e in self.epochs() {
            for f in &e.files {
                for (name, b) in &f.column_bytes {
                    match column_bytes.iter_mut().find(|(n, _)| n == name) {
                        Some(c) => c.1 += b,
                        None => column_bytes.push((name.clone(), *b)),
                    }
                }
            }
            epochs.push(EpochSummary {
                epoch: e.epoch,
                files: e.files.len() as u32,
                part_count: e.files.first().map_or(0, |f| f.header.part.count),
                epoch_slots: e.epoch_slots,
                rows: e.rows(),
                bytes: e.bytes(),
                problem: e.problem.clone(),
            });
        }
        CacheSummary {
            dir: self.dir().to_path_buf(),
            binding: self.binding().clone(),
            epochs,
            partial_files: self.partial_files().to_vec(),
            column_bytes,
        }
    }

    /// Reads a complete epoch and compares hard labels with `labels[sample]` (the caller's
    /// ground truth, indexed by dataset sample).
    pub fn label_agreement(&self, epoch: u32, labels: &[u32]) -> Result<LabelAgreement> {
        let mut a = LabelAgreement::default();
        for row in self.epoch_reader(epoch)? {
            let row = row?;
            let label = *labels
                .get(row.sample as usize)
                .ok_or_else(|| CacheError::InvalidRow {
                    epoch: row.epoch,
                    slot: row.slot,
                    reason: format!(
                        "sample {} has no label ({} labels given)",
                        row.sample,
                        labels.len()
                    ),
                })?;
            let hit = u64::from(row.hard_label == label);
            a.views += 1;
            a.hard_eq_label += hit;
            if row.lam == 1.0 || row.partner == row.sample {
                a.unmixed_views += 1;
                a.unmixed_hard_eq_label += hit;
            }
        }
        Ok(a)
    }
}
