//! Training metrics as JSON lines in `RUN_DIR/metrics.jsonl`: one record per logging step
//! and one per epoch. The file is the single source for `deit-pipe report`.
//!
//! On `--resume` the file is cut back to the records at or before the checkpoint's global
//! step, so a killed run that is resumed leaves one clean history (no duplicated steps).

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use super::eval::EvalSummary;

/// File name of the metrics log inside a run directory.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// One logging step: the mean over the optimizer steps since the previous record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Epoch (0-based) the step belongs to.
    pub epoch: usize,
    /// Global optimizer step after this update (1-based).
    pub step: u64,
    /// Learning rate used for the step.
    pub lr: f64,
    /// Total loss (mean over the micro-batches since the last record).
    pub loss: f64,
    /// Base (label) criterion on the class head.
    pub base_loss: f64,
    /// Distillation term on the distillation head, when distillation is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill_loss: Option<f64>,
    /// Global gradient L2 norm before clipping (of the last step in the window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    /// Training throughput over the window, images per second.
    pub img_per_s: f64,
    /// Images seen since the start of the run.
    pub images: u64,
    /// The instruction-set level of the CPU kernels that ran the step (`avx512`, `avx2`,
    /// `scalar`; see `kernels::isa`), absent on a GPU: throughput from hosts with other
    /// kernels is not comparable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isa: Option<String>,
}

/// The end of one epoch: training means and the evaluation on the val split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Global optimizer step at the end of the epoch.
    pub step: u64,
    /// Learning rate of the epoch.
    pub lr: f64,
    /// Mean training loss over the epoch.
    pub train_loss: f64,
    /// Mean training throughput, images per second.
    pub img_per_s: f64,
    /// Wall time of the epoch's training part, seconds.
    pub seconds: f64,
    /// Evaluation of the trained weights on the val split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val: Option<EvalSummary>,
    /// Evaluation of the EMA weights, when EMA is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_ema: Option<EvalSummary>,
    /// The CPU kernels' instruction-set level, as in [`StepRecord::isa`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isa: Option<String>,
}

/// A line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MetricRecord {
    /// A logging step.
    Step(StepRecord),
    /// An epoch summary.
    Epoch(EpochRecord),
}

impl MetricRecord {
    /// Global optimizer step of the record.
    pub fn step(&self) -> u64 {
        match self {
            MetricRecord::Step(s) => s.step,
            MetricRecord::Epoch(e) => e.step,
        }
    }
}

/// Appends records to `RUN_DIR/metrics.jsonl`, one flushed line each.
pub struct MetricsWriter {
    path: PathBuf,
    file: File,
}

impl MetricsWriter {
    /// Start a fresh log (truncating any old one) when `keep_up_to_step` is `None`;
    /// otherwise keep the records with `step <= keep_up_to_step` (resume) and append.
    pub fn open(run_dir: &Path, keep_up_to_step: Option<u64>) -> Result<Self> {
        let path = run_dir.join(METRICS_FILE);
        match keep_up_to_step {
            None => {
                File::create(&path).with_context(|| format!("creating {}", path.display()))?;
            }
            Some(step) if path.exists() => {
                let kept: Vec<MetricRecord> = read_metrics(&path)?
                    .into_iter()
                    .filter(|r| r.step() <= step)
                    .collect();
                let mut text = String::new();
                for r in &kept {
                    text.push_str(&serde_json::to_string(r)?);
                    text.push('\n');
                }
                super::checkpoint::write_atomic(&path, text.as_bytes())?;
            }
            Some(_) => {}
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(MetricsWriter { path, file })
    }

    /// Append one record as a line and flush it.
    pub fn write(&mut self, record: &MetricRecord) -> Result<()> {
        let mut line = serde_json::to_string(record)?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .with_context(|| format!("writing {}", self.path.display()))
    }

    /// Path of the log file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Read every record of a metrics log. A final line cut short by a kill is skipped;
/// any other bad line is an error naming the file and line.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricRecord>> {
    let file =
        formats::open::open_regular(path).with_context(|| format!("opening {}", path.display()))?;
    let lines: Vec<String> = BufReader::new(file)
        .lines()
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", path.display()))?;
    let n = lines.len();
    let mut out = Vec::with_capacity(n);
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<MetricRecord>(line) {
            Ok(r) => out.push(r),
            Err(_) if i + 1 == n => {
                tracing::warn!("{}: skipping a cut-short last line", path.display());
            }
            Err(e) => bail!(
                "{}: line {}: not a metrics record: {e}",
                path.display(),
                i + 1
            ),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(step: u64) -> MetricRecord {
        MetricRecord::Step(StepRecord {
            epoch: 0,
            step,
            lr: 1e-3,
            loss: 2.0,
            base_loss: 2.0,
            distill_loss: None,
            grad_norm: None,
            img_per_s: 10.0,
            images: step * 8,
            isa: None,
        })
    }

    #[test]
    fn resume_cuts_back_to_the_checkpoint_step() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = MetricsWriter::open(tmp.path(), None).unwrap();
        for s in 1..=5 {
            w.write(&step(s)).unwrap();
        }
        drop(w);
        // A kill mid-line leaves a cut-short last line: skipped when reading.
        let path = tmp.path().join(METRICS_FILE);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"kind\":\"step\",\"epo");
        std::fs::write(&path, text).unwrap();
        assert_eq!(read_metrics(&path).unwrap().len(), 5);
        let mut w = MetricsWriter::open(tmp.path(), Some(3)).unwrap();
        w.write(&step(4)).unwrap();
        let steps: Vec<u64> = read_metrics(&path)
            .unwrap()
            .iter()
            .map(|r| r.step())
            .collect();
        assert_eq!(steps, vec![1, 2, 3, 4]);
    }

    #[test]
    fn a_bad_line_in_the_middle_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(METRICS_FILE);
        std::fs::write(&path, "nonsense\n{\"kind\":\"step\"}\n").unwrap();
        let e = read_metrics(&path).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }
}
