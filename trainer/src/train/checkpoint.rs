//! Checkpoints in a run directory, written atomically, keeping the last and the best.
//!
//! Layout:
//! ```text
//! RUN_DIR/checkpoints/e0003-s000120/   one checkpoint (a directory, renamed into place whole)
//!     model.safetensors                weights with timm key names (loadable by timm)
//!     optimizer.safetensors            AdamW moments and step count
//!     ema.safetensors                  EMA weights (timm names), when EMA is on
//!     state.json                       position in the epoch plan, best metric, config hash
//! RUN_DIR/last.json, RUN_DIR/best.json pointers to checkpoint directories
//! ```
//! Every safetensors file carries the metadata `format: pt` (Hugging Face loaders
//! require it); the optimizer and EMA files name their own layout under
//! `deit_pipe_format` (files from before that tag held it under `format`: still read).
//! A checkpoint is first written to `checkpoints/.tmp-NAME`, every file synced, then the
//! directory is renamed to its final name and only then the pointer is replaced (write to
//! a temporary file, sync, rename). A kill at any moment leaves the previous pointer and
//! its directory intact. Directories no pointer names are removed after each save.
//!
//! There is no random-generator state to store: every random choice in training is a pure
//! function of (run seed, epoch, slot/step), so the position alone resumes exactly.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Version of `state.json`; bumped when its meaning changes.
pub const STATE_VERSION: u32 = 1;
/// File name of the model weights inside a checkpoint directory.
pub const MODEL_FILE: &str = "model.safetensors";
/// File name of the optimizer state inside a checkpoint directory.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// File name of the EMA weights inside a checkpoint directory.
pub const EMA_FILE: &str = "ema.safetensors";
/// File name of the training state inside a checkpoint directory.
pub const STATE_FILE: &str = "state.json";
/// Pointer to the newest checkpoint.
pub const LAST_POINTER: &str = "last.json";
/// Pointer to the checkpoint with the best val top-1.
pub const BEST_POINTER: &str = "best.json";
const CHECKPOINT_DIR: &str = "checkpoints";

/// The best evaluation so far.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BestMetric {
    /// Epoch (0-based) that reached it.
    pub epoch: usize,
    /// Val top-1 (percent) of the model's eval output (mean of heads).
    pub top1: f64,
}

/// Where training stands: enough to continue exactly from here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Format version of this record.
    pub version: u32,
    /// Epoch (0-based) the next micro-batch belongs to.
    pub epoch: usize,
    /// Index of the next micro-batch within that epoch's plan (0 = the epoch's start).
    pub batch_in_epoch: usize,
    /// Optimizer steps taken so far.
    pub global_step: u64,
    /// Training images seen so far.
    pub images_seen: u64,
    /// Best val top-1 so far.
    pub best: Option<BestMetric>,
    /// Hash of the resolved training config that produced this state.
    pub config_hash: String,
    /// Fingerprint of the training shards.
    #[serde(default)]
    pub dataset_fingerprint: String,
    /// Running sums of the current (partial) epoch, so a mid-epoch resume logs the same means.
    #[serde(default)]
    pub epoch_loss_sum: f64,
    /// Micro-batches summed in `epoch_loss_sum`.
    #[serde(default)]
    pub epoch_batches: u64,
    /// Data-parallel ranks that trained it (1: one process; files of one process do not
    /// write the field).
    #[serde(default = "one_rank", skip_serializing_if = "is_one_rank")]
    pub world_size: usize,
}

fn one_rank() -> usize {
    1
}

fn is_one_rank(n: &usize) -> bool {
    *n == 1
}

/// A checkpoint on disk.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// Its directory.
    pub dir: PathBuf,
    /// Its `state.json`.
    pub state: TrainState,
}

impl Checkpoint {
    /// Read a checkpoint directory (its `state.json`).
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(STATE_FILE);
        let text = formats::open::read_text(&path, formats::open::RUN_RECORD)
            .with_context(|| format!("reading {}", path.display()))?;
        let state: TrainState = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a training state", path.display()))?;
        if state.version != STATE_VERSION {
            bail!(
                "{}: state version {} (this build reads {STATE_VERSION})",
                path.display(),
                state.version
            );
        }
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            state,
        })
    }
    /// Path of the model weights.
    pub fn model_path(&self) -> PathBuf {
        self.dir.join(MODEL_FILE)
    }
    /// Path of the optimizer state.
    pub fn optimizer_path(&self) -> PathBuf {
        self.dir.join(OPTIMIZER_FILE)
    }
    /// Path of the EMA weights (may not exist).
    pub fn ema_path(&self) -> PathBuf {
        self.dir.join(EMA_FILE)
    }
}

#[derive(Serialize, Deserialize)]
struct Pointer {
    /// Checkpoint directory relative to the run directory.
    dir: String,
    epoch: usize,
    global_step: u64,
}

/// The checkpoints of one run directory.
pub struct CheckpointStore {
    run_dir: PathBuf,
}

impl CheckpointStore {
    /// Open (creating) `run_dir/checkpoints`, removing half-written `.tmp-*` directories.
    pub fn open(run_dir: &Path) -> Result<Self> {
        let ck = run_dir.join(CHECKPOINT_DIR);
        fs::create_dir_all(&ck).with_context(|| format!("creating {}", ck.display()))?;
        for entry in fs::read_dir(&ck).with_context(|| format!("listing {}", ck.display()))? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                fs::remove_dir_all(entry.path())
                    .with_context(|| format!("removing {}", entry.path().display()))?;
            }
        }
        Ok(CheckpointStore {
            run_dir: run_dir.to_path_buf(),
        })
    }

    /// The run directory.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Write a checkpoint: `write_files` fills the given (temporary) directory with the
    /// weight files; `state.json` is added, the directory renamed into place, then the
    /// `last` pointer (and `best` when `is_best`) replaced. Returns the final directory.
    pub fn save(
        &self,
        state: &TrainState,
        is_best: bool,
        write_files: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<PathBuf> {
        let ck = self.run_dir.join(CHECKPOINT_DIR);
        let name = format!("e{:04}-s{:09}", state.epoch, state.global_step);
        let tmp = ck.join(format!(".tmp-{name}"));
        let dest = ck.join(&name);
        if tmp.exists() {
            fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
        }
        fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        write_files(&tmp)?;
        let json = serde_json::to_string_pretty(state)?;
        write_synced(&tmp.join(STATE_FILE), json.as_bytes())?;
        for entry in fs::read_dir(&tmp)? {
            let p = entry?.path();
            File::open(&p)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("syncing {}", p.display()))?;
        }
        if dest.exists() {
            // Same position saved again (e.g. a re-run after resume): replace it, unless a
            // pointer names it; then keep the old one (it holds the same state).
            let referenced = [LAST_POINTER, BEST_POINTER]
                .iter()
                .filter_map(|p| self.read_pointer(p).ok().flatten())
                .any(|d| d == dest);
            if referenced {
                fs::remove_dir_all(&tmp)?;
                self.point(state, &dest, is_best)?;
                return Ok(dest);
            }
            fs::remove_dir_all(&dest).with_context(|| format!("removing {}", dest.display()))?;
        }
        fs::rename(&tmp, &dest)
            .with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))?;
        sync_dir(&ck)?;
        self.point(state, &dest, is_best)?;
        self.prune()?;
        Ok(dest)
    }

    fn point(&self, state: &TrainState, dest: &Path, is_best: bool) -> Result<()> {
        let rel = dest
            .strip_prefix(&self.run_dir)
            .unwrap_or(dest)
            .to_string_lossy()
            .into_owned();
        let ptr = Pointer {
            dir: rel,
            epoch: state.epoch,
            global_step: state.global_step,
        };
        let json = serde_json::to_string_pretty(&ptr)?;
        write_atomic(&self.run_dir.join(LAST_POINTER), json.as_bytes())?;
        if is_best {
            write_atomic(&self.run_dir.join(BEST_POINTER), json.as_bytes())?;
        }
        Ok(())
    }

    fn read_pointer(&self, name: &str) -> Result<Option<PathBuf>> {
        let path = self.run_dir.join(name);
        if !path.exists() {
            return Ok(None);
        }
        let text = formats::open::read_text(&path, formats::open::RUN_RECORD)
            .with_context(|| format!("reading {}", path.display()))?;
        let ptr: Pointer = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a checkpoint pointer", path.display()))?;
        Ok(Some(self.run_dir.join(ptr.dir)))
    }

    /// Remove checkpoint directories that neither `last` nor `best` names.
    fn prune(&self) -> Result<()> {
        let keep: Vec<PathBuf> = [LAST_POINTER, BEST_POINTER]
            .iter()
            .filter_map(|p| self.read_pointer(p).ok().flatten())
            .collect();
        let ck = self.run_dir.join(CHECKPOINT_DIR);
        for entry in fs::read_dir(&ck)? {
            let p = entry?.path();
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            if p.is_dir()
                && !keep.contains(&p)
                && name.is_some_and(|n| n.starts_with('e') && !n.starts_with(".tmp"))
            {
                fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
            }
        }
        Ok(())
    }

    /// The newest checkpoint, if any.
    pub fn last(&self) -> Result<Option<Checkpoint>> {
        self.read_pointer(LAST_POINTER)?
            .map(|d| Checkpoint::load(&d))
            .transpose()
    }

    /// The best checkpoint, if any.
    pub fn best(&self) -> Result<Option<Checkpoint>> {
        self.read_pointer(BEST_POINTER)?
            .map(|d| Checkpoint::load(&d))
            .transpose()
    }
}

/// Resolve what a user names as weights: a `.safetensors`/`.pth` file as is; a checkpoint
/// directory to its model file; a run directory to its best checkpoint (else its last).
/// `ema` picks the EMA weights of a checkpoint instead.
pub fn resolve_weights(path: &Path, ema: bool) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if !path.exists() {
        bail!("{}: no such weights file or run directory", path.display());
    }
    let file = if ema { EMA_FILE } else { MODEL_FILE };
    if path.join(STATE_FILE).is_file() {
        return Ok(path.join(file));
    }
    let store = CheckpointStore {
        run_dir: path.to_path_buf(),
    };
    let ck = match store.best()? {
        Some(ck) => ck,
        None => store.last()?.with_context(|| {
            format!(
                "{}: neither a weights file, a checkpoint nor a run directory with one",
                path.display()
            )
        })?,
    };
    let p = ck.dir.join(file);
    if !p.is_file() {
        bail!("{}: missing", p.display());
    }
    Ok(p)
}

/// The model name in the config.toml of the run that `weights` belong to (the weights
/// file's checkpoint directory, or up to three levels above it).
pub fn model_name_of_run(weights: &Path) -> Result<String> {
    let Some(config) = weights
        .ancestors()
        .take(4)
        .map(|d| d.join(super::CONFIG_FILE))
        .find(|p| p.is_file())
    else {
        bail!(
            "{}: not inside a deit-pipe run directory, so its architecture is unknown; \
             name it with --teacher-arch",
            weights.display()
        );
    };
    let cfg = super::config::TrainConfig::from_file(&config)?;
    if cfg.model.name == "deit" {
        bail!(
            "{}: the run trained a free-dimension DeiT; name it with --teacher-arch \
             (e.g. deit_tiny_patch8_32)",
            config.display()
        );
    }
    Ok(cfg.model.name)
}

/// Write `bytes` to `path` atomically: a temporary sibling, synced, renamed over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("{}: not a file path", path.display()))?
        .to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    write_synced(&tmp, bytes)?;
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    if let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

fn sync_dir(dir: &Path) -> Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(epoch: usize, step: u64) -> TrainState {
        TrainState {
            version: STATE_VERSION,
            epoch,
            batch_in_epoch: 0,
            global_step: step,
            images_seen: 0,
            best: None,
            config_hash: "h".into(),
            dataset_fingerprint: "f".into(),
            epoch_loss_sum: 0.0,
            epoch_batches: 0,
            world_size: 1,
        }
    }

    fn write_model(dir: &Path, bytes: &[u8]) -> Result<()> {
        std::fs::write(dir.join(MODEL_FILE), bytes)?;
        Ok(())
    }

    #[test]
    fn keeps_last_and_best_and_prunes_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(tmp.path()).unwrap();
        let a = store
            .save(&state(1, 10), true, |d| write_model(d, b"a"))
            .unwrap();
        let b = store
            .save(&state(2, 20), false, |d| write_model(d, b"b"))
            .unwrap();
        let c = store
            .save(&state(3, 30), false, |d| write_model(d, b"c"))
            .unwrap();
        assert!(a.is_dir(), "best is kept");
        assert!(!b.exists(), "neither last nor best: pruned");
        assert_eq!(store.last().unwrap().unwrap().dir, c);
        assert_eq!(store.best().unwrap().unwrap().state.epoch, 1);
        assert_eq!(std::fs::read(c.join(MODEL_FILE)).unwrap(), b"c");
        assert_eq!(
            resolve_weights(tmp.path(), false).unwrap(),
            a.join(MODEL_FILE)
        );
        assert_eq!(resolve_weights(&c, false).unwrap(), c.join(MODEL_FILE));
    }

    #[test]
    fn a_failed_write_leaves_the_previous_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(tmp.path()).unwrap();
        let a = store
            .save(&state(1, 10), true, |d| write_model(d, b"a"))
            .unwrap();
        let err = store
            .save(&state(2, 20), false, |d| {
                write_model(d, b"half")?;
                anyhow::bail!("disk full")
            })
            .unwrap_err();
        assert!(err.to_string().contains("disk full"));
        let last = store.last().unwrap().unwrap();
        assert_eq!(last.dir, a);
        assert_eq!(std::fs::read(last.model_path()).unwrap(), b"a");
        // The half-written directory is cleaned up when the store is opened again.
        let ck = tmp.path().join(CHECKPOINT_DIR);
        let leftovers = |p: &Path| {
            std::fs::read_dir(p)
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .starts_with(".tmp-")
                })
                .count()
        };
        assert_eq!(leftovers(&ck), 1);
        CheckpointStore::open(tmp.path()).unwrap();
        assert_eq!(leftovers(&ck), 0);
    }

    #[test]
    fn bad_state_names_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(STATE_FILE), "{").unwrap();
        let e = format!("{:#}", Checkpoint::load(tmp.path()).unwrap_err());
        assert!(e.contains(STATE_FILE), "{e}");
    }
}
