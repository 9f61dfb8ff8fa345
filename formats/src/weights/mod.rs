//! Weight files read into named host arrays: `.safetensors` and PyTorch `.pth` / `.pt` /
//! `.bin` checkpoints (a bare state dict or `{'model': ...}` / `{'state_dict': ...}` as
//! the official DeiT files hold). Every tensor comes out as f32 with its timm name and
//! shape ([`RawTensor`]); nothing in a pickle is executed, every size is checked against
//! the bytes the file holds, and a damaged or hostile file is an error naming it (fuzzed
//! in `tests/weights_fuzz.rs`). Turning the arrays into tensors is the trainer's job.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;

pub mod pickle;
pub mod pth;
mod raw;
mod st;

pub use pth::RawTensor;

/// What a weights file held: its tensors as host arrays, and what was ignored in it.
#[derive(Debug, Clone, Default)]
pub struct WeightsFile {
    /// Every tensor as f32, keyed by timm names (each [`RawTensor::name`] is its key).
    pub tensors: BTreeMap<String, RawTensor>,
    /// Entries that were not read, one line each with the reason: non-tensor entries of
    /// the state dict, and any global the pickle names that is not one of torch's
    /// tensor-rebuild functions (never imported, never called).
    pub ignored: Vec<String>,
}

/// The first bytes of a zip archive (the format of `torch.save` since torch 1.6).
const ZIP_MAGIC: &[u8] = b"PK\x03\x04";

/// Reads a weights file: `.safetensors`, or a PyTorch checkpoint (the zip archive of
/// torch 1.6 and later, or the legacy pickle stream of older versions; a bare state dict
/// or `{'model': ...}` / `{'state_dict': ...}`). The format is told by the file's first
/// bytes (a `.safetensors` name is always read as safetensors). Nothing in a pickle is
/// executed; tensors with NaN or infinite values are refused, naming the tensor.
pub fn read_weights(path: &Path) -> Result<WeightsFile> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("weights file {} cannot be read", path.display()))?;
    if !meta.is_file() {
        bail!("weights file {} is not a regular file", path.display());
    }
    let bytes = crate::open::read_bounded(path, crate::open::WEIGHTS)
        .with_context(|| format!("reading weights file {}", path.display()))?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    read_weights_bytes(&bytes, &path.display().to_string(), ext == "safetensors")
}

/// [`read_weights`] on bytes in memory; `file` names them in errors. `safetensors`
/// forces that format; otherwise it is told by the first bytes. `module.` prefixes of
/// DataParallel checkpoints are stripped, `num_batches_tracked` counters dropped. Never
/// panics, whatever the bytes (fuzzed in `tests/weights_fuzz.rs`).
pub fn read_weights_bytes(bytes: &[u8], file: &str, safetensors: bool) -> Result<WeightsFile> {
    let (raw, ignored) =
        if safetensors || (!bytes.starts_with(ZIP_MAGIC) && looks_safetensors(bytes)) {
            (st::read(bytes, file)?, Vec::new())
        } else if bytes.starts_with(ZIP_MAGIC) {
            let e = pth::read_zip(bytes, file)?;
            (e.tensors, e.ignored)
        } else if bytes.first() == Some(&0x80) {
            let e = pth::read_legacy(bytes, file)?;
            (e.tensors, e.ignored)
        } else if bytes.len() > 262 && &bytes[257..262] == b"ustar" {
            bail!("{file}: a tar-format checkpoint of torch < 0.1.10, which is not read");
        } else {
            bail!(
                "{file} is neither a safetensors file nor a PyTorch checkpoint (a zip archive or \
             a legacy pickle stream)"
            );
        };
    let mut tensors = BTreeMap::new();
    for t in raw {
        let Some(name) = state_dict_key(&t.name) else {
            continue;
        };
        let name = name.to_string();
        if let Some(i) = t.data.iter().position(|v| !v.is_finite()) {
            bail!(
                "{file}: tensor {name} holds a non-finite value ({} at element {i}): refused",
                t.data[i]
            );
        }
        let tensor = RawTensor {
            name: name.clone(),
            shape: t.shape,
            data: t.data,
        };
        if tensors.insert(name.clone(), tensor).is_some() {
            bail!("{file}: tensor {name} appears twice (with and without a `module.` prefix)");
        }
    }
    if tensors.is_empty() {
        bail!("{file}: no tensors found");
    }
    Ok(WeightsFile { tensors, ignored })
}

/// The name a state-dict entry is loaded under, or `None` for an entry that is skipped:
/// DDP's `module.` prefix is dropped, and BatchNorm's `num_batches_tracked` counters (which
/// no model here keeps) are skipped. One rule for weight files and main.py checkpoints.
pub fn state_dict_key(name: &str) -> Option<&str> {
    let name = name.strip_prefix("module.").unwrap_or(name);
    (!name.ends_with("num_batches_tracked")).then_some(name)
}

/// Whether `bytes` start like a safetensors file (a plausible header length, then `{`).
fn looks_safetensors(bytes: &[u8]) -> bool {
    if bytes.len() < 9 {
        return false;
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(n) <= (bytes.len() - 8) as u64 && bytes[8] == b'{'
}

/// Checks the header of a safetensors file held in `bytes` (length against the file,
/// JSON without duplicate keys, every tensor's byte range) and returns its
/// `__metadata__`; `file` names it in errors. For readers that hand the bytes to
/// candle afterwards.
pub fn check_safetensors_header(bytes: &[u8], file: &str) -> Result<BTreeMap<String, String>> {
    Ok(st::check_header(bytes, file)?.metadata)
}
