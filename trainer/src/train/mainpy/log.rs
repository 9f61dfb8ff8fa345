//! `RUN_DIR/log.txt`: one flat JSON dict per epoch with the keys and order DeiT's
//! `main.py` writes (`json.dumps(log_stats)`), so scripts that read its `log.txt` read
//! ours:
//! ```text
//! {"train_lr": 0.0005, "train_loss": 6.91, "test_loss": 6.85, "test_acc1": 0.12, "test_acc5": 0.6, "epoch": 0, "n_parameters": 5717416}
//! ```
//! `test_*` are the evaluation of the trained weights (eval output: the mean of the two
//! heads for a distilled DeiT, as main.py's `evaluate`), accuracies in percent; an epoch
//! without evaluation has no `test_*` keys. `n_parameters` counts trainable scalars (as
//! `sum(p.numel() for p in model.parameters() if p.requires_grad)`).
//! On `--resume` the file is cut back to the epochs before the checkpoint's.

use anyhow::{Context, Result};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::train::metrics::EpochRecord;

/// File name of the main.py-style log inside a run directory.
pub const LOG_TXT: &str = "log.txt";

/// One line as Python's `json.dumps` writes a dict (`", "` and `": "` separators).
pub fn line(r: &EpochRecord, n_parameters: usize) -> String {
    let num = |v: f64| serde_json::to_string(&v).unwrap_or_else(|_| "NaN".into());
    let mut fields = vec![("train_lr", num(r.lr)), ("train_loss", num(r.train_loss))];
    if let Some(v) = &r.val {
        fields.extend([
            ("test_loss", num(v.loss)),
            ("test_acc1", num(v.top1)),
            ("test_acc5", num(v.top5)),
        ]);
    }
    fields.push(("epoch", r.epoch.to_string()));
    fields.push(("n_parameters", n_parameters.to_string()));
    let body: Vec<String> = fields
        .into_iter()
        .map(|(k, v)| format!("\"{k}\": {v}"))
        .collect();
    format!("{{{}}}", body.join(", "))
}

/// Appends one line per epoch to `RUN_DIR/log.txt`.
pub struct MainPyLog {
    path: PathBuf,
    file: File,
    n_parameters: usize,
}

impl MainPyLog {
    /// Start a fresh log when `keep_before_epoch` is `None`; otherwise keep the lines of
    /// epochs before it (resume) and append.
    pub fn open(
        run_dir: &Path,
        n_parameters: usize,
        keep_before_epoch: Option<usize>,
    ) -> Result<Self> {
        let path = run_dir.join(LOG_TXT);
        match keep_before_epoch {
            None => {
                File::create(&path).with_context(|| format!("creating {}", path.display()))?;
            }
            Some(epoch) if path.exists() => {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let mut kept = String::new();
                for l in text.lines() {
                    let e = serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v.get("epoch").and_then(|e| e.as_u64()));
                    // A line cut short by a kill has no epoch: dropped with the later ones.
                    if e.is_some_and(|e| (e as usize) < epoch) {
                        kept.push_str(l);
                        kept.push('\n');
                    }
                }
                crate::train::checkpoint::write_atomic(&path, kept.as_bytes())?;
            }
            Some(_) => {}
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(MainPyLog {
            path,
            file,
            n_parameters,
        })
    }

    /// Append the line of one epoch and flush it.
    pub fn write(&mut self, r: &EpochRecord) -> Result<()> {
        let mut l = line(r, self.n_parameters);
        l.push('\n');
        self.file
            .write_all(l.as_bytes())
            .and_then(|_| self.file.flush())
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::eval::EvalSummary;

    fn record(epoch: usize, val: Option<EvalSummary>) -> EpochRecord {
        EpochRecord {
            epoch,
            step: 10,
            lr: 5e-4,
            train_loss: 2.5,
            img_per_s: 100.0,
            seconds: 1.0,
            val,
            val_ema: None,
            isa: None,
        }
    }

    #[test]
    fn keys_and_order_are_main_py_s_and_resume_cuts_back() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = MainPyLog::open(tmp.path(), 1234, None).unwrap();
        log.write(&record(0, None)).unwrap();
        log.write(&record(1, None)).unwrap();
        log.write(&record(2, None)).unwrap();
        drop(log);
        let text = std::fs::read_to_string(tmp.path().join(LOG_TXT)).unwrap();
        assert_eq!(
            text.lines().next().unwrap(),
            "{\"train_lr\": 0.0005, \"train_loss\": 2.5, \"epoch\": 0, \"n_parameters\": 1234}"
        );
        let mut log = MainPyLog::open(tmp.path(), 1234, Some(2)).unwrap();
        log.write(&record(2, None)).unwrap();
        let text = std::fs::read_to_string(tmp.path().join(LOG_TXT)).unwrap();
        let epochs: Vec<u64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["epoch"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(epochs, vec![0, 1, 2]);
    }
}
