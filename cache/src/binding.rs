//! The binding a teacher-cache job writes into every file.

use anyhow::{Context, Result};
use formats::cache_schema::CacheBinding;
use std::io::Read;
use std::path::Path;
use trainer::train::config::TrainConfig;
use trainer::train::teacher::data_binding;

/// Hex blake3 of a weights file's bytes (the `teacher_weights_hash` binding field).
pub fn weights_hash(path: &Path) -> Result<String> {
    let mut f = formats::open::open_regular(path)
        .with_context(|| format!("opening the teacher weights {}", path.display()))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading the teacher weights {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().to_hex().to_string())
}

/// The number of classes a run of `cfg` on a data set of `data_classes` uses (the
/// trainer's rule: `model.num_classes` when set, else the data set's).
pub fn num_classes(cfg: &TrainConfig, data_classes: usize) -> Result<usize> {
    match cfg.model.num_classes {
        Some(n) if n < data_classes => {
            anyhow::bail!("model.num_classes = {n} but the data set has {data_classes} classes")
        }
        Some(n) => Ok(n),
        None => Ok(data_classes),
    }
}

/// The full binding of a cache made from `cfg` on a data set with `fingerprint`, by the
/// teacher `arch` with weights hashing to `weights_hash`, keeping `top_k` classes.
pub fn job_binding(
    cfg: &TrainConfig,
    fingerprint: &str,
    num_classes: usize,
    arch: &str,
    weights_hash: &str,
    top_k: usize,
) -> CacheBinding {
    let mut b = data_binding(
        fingerprint,
        &cfg.augment,
        cfg.run.seed,
        &cfg.plan,
        num_classes,
    );
    b.teacher_arch = arch.to_string();
    b.teacher_weights_hash = weights_hash.to_string();
    b.top_k = top_k as u32;
    b
}
