//! `deit-pipe cache inspect`: coverage, sizes and, given the data set, how often the
//! teacher's hard label equals the ground truth.

use anyhow::{Context, Result};
use formats::cache_schema::{verify_file, CacheSummary, LabelAgreement, TeacherCache};
use pipeline::source::RecordSource;
use std::fmt::Write as _;
use std::path::Path;

use crate::run::open_data;

/// What `cache inspect` reports.
#[derive(Debug, Clone)]
pub struct InspectReport {
    /// Coverage, sizes, gaps and duplicates.
    pub summary: CacheSummary,
    /// Per complete epoch, hard label against ground truth (only with a data set).
    pub agreement: Vec<(u32, LabelAgreement)>,
    /// Files whose bytes fail their checksums (or decoding), with the error.
    pub corrupt: Vec<String>,
}

impl InspectReport {
    /// Problems found: incomplete epochs and corrupt files (each printed as a `PROBLEM:`
    /// line); `deit-pipe cache inspect` exits 1 when there is any.
    pub fn problems(&self) -> usize {
        self.summary
            .epochs
            .iter()
            .filter(|e| e.problem.is_some())
            .count()
            + self.corrupt.len()
    }
}

/// Inspects the cache in `dir`; with `data`, also compares hard labels with the labels
/// of the data set (which must be the one the cache is bound to).
pub fn inspect(dir: &Path, data: Option<&Path>) -> Result<InspectReport> {
    let cache = TeacherCache::open_for_inspect(dir)
        .with_context(|| format!("opening the teacher cache {}", dir.display()))?;
    let summary = cache.summary();
    // Every byte of every file against its checksums.
    let mut corrupt = Vec::new();
    let mut bad_epochs = Vec::new();
    for e in cache.epochs() {
        for f in &e.files {
            if let Err(err) = verify_file(&f.path) {
                corrupt.push(err.to_string());
                bad_epochs.push(e.epoch);
            }
        }
    }
    let mut agreement = Vec::new();
    if let Some(data) = data {
        let src = open_data(data)?;
        let fp = src.shards().fingerprint();
        if fp != cache.binding().dataset_fingerprint {
            anyhow::bail!(
                "{} has fingerprint {fp}, the cache was made from {}",
                data.display(),
                cache.binding().dataset_fingerprint
            );
        }
        let labels = (0..src.len())
            .map(|i| src.info(i).map(|r| r.label))
            .collect::<Result<Vec<u32>, _>>()
            .context("reading labels")?;
        for epoch in summary
            .complete_epochs()
            .into_iter()
            .filter(|e| !bad_epochs.contains(e))
        {
            let a = cache
                .label_agreement(epoch, &labels)
                .with_context(|| format!("reading epoch {epoch}"))?;
            agreement.push((epoch, a));
        }
    }
    Ok(InspectReport {
        summary,
        agreement,
        corrupt,
    })
}

fn pct(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        100.0 * num as f64 / den as f64
    }
}

impl std::fmt::Display for InspectReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.summary)?;
        let mut s = String::new();
        for c in &self.corrupt {
            let _ = writeln!(s, "  PROBLEM: {c}");
        }
        if self.corrupt.is_empty() {
            let files: usize = self.summary.epochs.iter().map(|e| e.files as usize).sum();
            let _ = writeln!(
                s,
                "  checksums: all {files} files intact (BLAKE3 of every byte)"
            );
        }
        for (epoch, a) in &self.agreement {
            let _ = writeln!(
                s,
                "  epoch {epoch:>5}: teacher top-1 = label on {:.2}% of {} unmixed views; \
                 hard label != label on {:.2}% of {} views",
                pct(a.unmixed_hard_eq_label, a.unmixed_views),
                a.unmixed_views,
                100.0 - pct(a.hard_eq_label, a.views),
                a.views
            );
        }
        f.write_str(&s)
    }
}
