//! Checkpoints in a run directory, written atomically, keeping the last and the best.
//!
//! Layout:
//! ```text
//! RUN_DIR/checkpoints/e0003-s000120/   one checkpoint (a directory, renamed into place whole)
//!     model.safetensors                weights with timm key names (loadable by timm)
//!     optimizer.safetensors            AdamW moments and step count
//!     ema.safetensors                  EMA weights (timm names), when EMA is on
//!     state.json                       position in the epoch plan, best metric, config hash
//!     digests.json                     BLAKE3 of every other file of the checkpoint
//! RUN_DIR/last.json, RUN_DIR/best.json pointers to checkpoint directories
//! ```
//! `digests.json` is checked whenever a checkpoint is used: `--resume` checks every file,
//! `eval`/`predict`/`--teacher`/`--finetune` the weights file they read; a file whose
//! digest differs is refused, naming it. Checkpoints written before digests existed have
//! no `digests.json`: they are used with a warning saying they could not be checked.
//! A pointer's `dir` must be `checkpoints/NAME` (relative, no `..`, not a link): a pointer
//! that leads out of the run folder is refused. `state.json`'s position is bounded by the
//! schedule when training resumes (`train::loop`).
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
/// BLAKE3 digests of a checkpoint's files.
pub const DIGESTS_FILE: &str = "digests.json";
/// `format` of [`DIGESTS_FILE`].
const DIGESTS_FORMAT: &str = "deit-pipe-checkpoint-digests/blake3";
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

/// What [`DIGESTS_FILE`] holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Digests {
    format: String,
    /// File name -> BLAKE3 (hex) of its bytes.
    files: std::collections::BTreeMap<String, String>,
}

/// BLAKE3 (hex) of a regular file's bytes.
pub fn file_digest(path: &Path) -> Result<String> {
    let mut f =
        formats::open::open_regular(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = blake3::Hasher::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(h.finalize().to_hex().to_string())
}

/// The digests recorded in checkpoint directory `dir` (`None`: a checkpoint from before
/// digests).
fn read_digests(dir: &Path) -> Result<Option<Digests>> {
    let path = dir.join(DIGESTS_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text = formats::open::read_text(&path, formats::open::RUN_RECORD)
        .with_context(|| format!("reading {}", path.display()))?;
    let d: Digests = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a checkpoint digest record", path.display()))?;
    if d.format != DIGESTS_FORMAT {
        bail!(
            "{}: format {:?}, expected {DIGESTS_FORMAT:?}",
            path.display(),
            d.format
        );
    }
    Ok(Some(d))
}

/// Checks file `name` of checkpoint directory `dir` against its recorded digest. A
/// checkpoint without digests (written before them) passes with a warning.
pub fn verify_checkpoint_file(dir: &Path, name: &str) -> Result<()> {
    let path = dir.join(name);
    let Some(d) = read_digests(dir)? else {
        tracing::warn!(
            "{}: checkpoint written before digests ({DIGESTS_FILE} missing); {name} is used \
             without an integrity check",
            dir.display()
        );
        return Ok(());
    };
    let Some(want) = d.files.get(name) else {
        bail!(
            "{}: no digest recorded for it in {}; refusing a file the checkpoint did not hold",
            path.display(),
            dir.join(DIGESTS_FILE).display()
        );
    };
    let got = file_digest(&path)?;
    if got != *want {
        bail!(
            "{}: BLAKE3 {got} differs from {want} recorded in {} when the checkpoint was \
             written: the file is damaged or was changed; refusing it",
            path.display(),
            dir.join(DIGESTS_FILE).display()
        );
    }
    Ok(())
}

impl Checkpoint {
    /// Checks every file the checkpoint's digests name (what `--resume` reads). A
    /// checkpoint without digests passes with a warning.
    pub fn verify(&self) -> Result<()> {
        let Some(d) = read_digests(&self.dir)? else {
            tracing::warn!(
                "{}: checkpoint written before digests ({DIGESTS_FILE} missing): resumed \
                 without an integrity check",
                self.dir.display()
            );
            return Ok(());
        };
        for name in [STATE_FILE, MODEL_FILE, OPTIMIZER_FILE] {
            if !d.files.contains_key(name) {
                bail!(
                    "{}: names no digest for {name}",
                    self.dir.join(DIGESTS_FILE).display()
                );
            }
        }
        if self.ema_path().exists() && !d.files.contains_key(EMA_FILE) {
            bail!(
                "{}: names no digest for {EMA_FILE}",
                self.dir.join(DIGESTS_FILE).display()
            );
        }
        for name in d.files.keys() {
            verify_checkpoint_file(&self.dir, name)?;
        }
        Ok(())
    }

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
        let mut files = std::collections::BTreeMap::new();
        for entry in fs::read_dir(&tmp)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != DIGESTS_FILE && entry.file_type()?.is_file() {
                files.insert(name, file_digest(&entry.path())?);
            }
        }
        let digests = Digests {
            format: DIGESTS_FORMAT.to_string(),
            files,
        };
        write_synced(
            &tmp.join(DIGESTS_FILE),
            serde_json::to_string_pretty(&digests)?.as_bytes(),
        )?;
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
        let rel = Path::new(&ptr.dir);
        let parts: Vec<_> = rel.components().collect();
        let confined = matches!(
            parts.as_slice(),
            [std::path::Component::Normal(a), std::path::Component::Normal(_)]
                if *a == CHECKPOINT_DIR
        );
        if !confined {
            bail!(
                "{}: dir {:?} is not a checkpoint folder of this run ({CHECKPOINT_DIR}/NAME, \
                 relative, without `..`); refusing to follow it out of {}",
                path.display(),
                ptr.dir,
                self.run_dir.display()
            );
        }
        let dir = self.run_dir.join(rel);
        if fs::symlink_metadata(&dir).is_ok_and(|m| m.file_type().is_symlink()) {
            bail!(
                "{}: {} is a symbolic link; a checkpoint folder of the run must be a folder",
                path.display(),
                dir.display()
            );
        }
        Ok(Some(dir))
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
    let p = resolve_weights_unchecked(path, ema)?;
    // Weights inside a checkpoint folder are checked against its digests.
    if let (Some(dir), Some(name)) = (p.parent(), p.file_name()) {
        if dir.join(STATE_FILE).is_file() || dir.join(DIGESTS_FILE).exists() {
            verify_checkpoint_file(dir, &name.to_string_lossy())?;
        }
    }
    Ok(p)
}

fn resolve_weights_unchecked(path: &Path, ema: bool) -> Result<PathBuf> {
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

    /// Issue 25: a flipped bit in a checkpoint's weights was resumed and evaluated silently.
    #[test]
    fn a_changed_checkpoint_file_is_refused_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(tmp.path()).unwrap();
        let dir = store
            .save(&state(1, 10), true, |d| {
                write_model(d, b"weights")?;
                std::fs::write(d.join(OPTIMIZER_FILE), b"moments")?;
                Ok(())
            })
            .unwrap();
        let ck = store.last().unwrap().unwrap();
        ck.verify().unwrap();
        assert_eq!(
            resolve_weights(tmp.path(), false).unwrap(),
            dir.join(MODEL_FILE)
        );
        // One bit of the weights flipped.
        std::fs::write(dir.join(MODEL_FILE), b"weightt").unwrap();
        let e = format!("{:#}", ck.verify().unwrap_err());
        assert!(
            e.contains(&dir.join(MODEL_FILE).display().to_string()),
            "{e}"
        );
        assert!(e.contains("differs"), "{e}");
        for p in [tmp.path().to_path_buf(), dir.clone(), dir.join(MODEL_FILE)] {
            let e = format!("{:#}", resolve_weights(&p, false).unwrap_err());
            assert!(e.contains(MODEL_FILE) && e.contains("differs"), "{e}");
        }
        // The optimizer state is checked on resume too.
        std::fs::write(dir.join(MODEL_FILE), b"weights").unwrap();
        ck.verify().unwrap();
        std::fs::write(dir.join(OPTIMIZER_FILE), b"moment$").unwrap();
        let e = format!("{:#}", ck.verify().unwrap_err());
        assert!(e.contains(OPTIMIZER_FILE), "{e}");
        // A checkpoint from before digests is accepted (with a warning).
        std::fs::remove_file(dir.join(DIGESTS_FILE)).unwrap();
        ck.verify().unwrap();
        resolve_weights(tmp.path(), false).unwrap();
    }

    /// Issue 25: a pointer naming a folder outside the run was followed.
    #[test]
    fn pointers_stay_inside_the_run() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run");
        let store = CheckpointStore::open(&run).unwrap();
        store
            .save(&state(1, 10), true, |d| write_model(d, b"a"))
            .unwrap();
        // Another run's checkpoint, outside this one.
        let other = CheckpointStore::open(&tmp.path().join("other")).unwrap();
        let outside = other
            .save(&state(2, 20), true, |d| write_model(d, b"b"))
            .unwrap();
        let rel_out = format!(
            "../other/checkpoints/{}",
            outside.file_name().unwrap().to_string_lossy()
        );
        for dir in [
            outside.display().to_string(),
            rel_out,
            "checkpoints/../../other".into(),
            "checkpoints".into(),
        ] {
            let json = serde_json::json!({"dir": dir, "epoch": 2, "global_step": 20});
            std::fs::write(run.join(LAST_POINTER), json.to_string()).unwrap();
            let e = format!("{:#}", store.last().unwrap_err());
            assert!(
                e.contains(LAST_POINTER) && e.contains("not a checkpoint folder"),
                "{dir}: {e}"
            );
        }
        // A checkpoint entry that is a link to the outside is refused too.
        std::os::unix::fs::symlink(&outside, run.join("checkpoints/e0009-s000000090")).unwrap();
        let json = serde_json::json!({"dir": "checkpoints/e0009-s000000090", "epoch": 9, "global_step": 90});
        std::fs::write(run.join(LAST_POINTER), json.to_string()).unwrap();
        let e = format!("{:#}", store.last().unwrap_err());
        assert!(e.contains("symbolic link"), "{e}");
    }

    #[test]
    fn bad_state_names_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join(STATE_FILE), "{").unwrap();
        let e = format!("{:#}", Checkpoint::load(tmp.path()).unwrap_err());
        assert!(e.contains(STATE_FILE), "{e}");
    }
}
