//! Named tensors + string metadata in one safetensors file, written atomically
//! (temporary file in the same folder, then rename), for optimizer and EMA state.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};

/// The metadata key and value Hugging Face loaders require of a safetensors file
/// (`transformers` refuses a file without `"format": "pt"`).
pub const HF_FORMAT: (&str, &str) = ("format", "pt");

/// Writes `tensors` and `metadata` to `path` atomically: a crash leaves either the old
/// file or the new one, never a torn file. `metadata` gets `"format": "pt"` (see
/// [`HF_FORMAT`]) unless it sets `format` itself.
pub fn write_atomic(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    mut metadata: HashMap<String, String>,
) -> Result<()> {
    metadata
        .entry(HF_FORMAT.0.to_string())
        .or_insert_with(|| HF_FORMAT.1.to_string());
    let mut host = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t
            .to_device(&Device::Cpu)
            .and_then(|t| t.contiguous())
            .with_context(|| format!("moving {name} to the CPU for {}", path.display()))?;
        host.push((name.clone(), t));
    }
    let bytes = safetensors::serialize(host, Some(metadata))
        .with_context(|| format!("serializing {}", path.display()))?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    let file_name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp", file_name.to_string_lossy()));
    {
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(&bytes)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

/// Reads every tensor of a safetensors file onto `device`, with its metadata.
pub fn read(
    path: &Path,
    device: &Device,
) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let bytes = formats::open::read_bounded(path, formats::open::WEIGHTS)
        .with_context(|| format!("reading {}", path.display()))?;
    // our own check first: duplicate JSON keys and bad byte ranges refused, by name
    let metadata: HashMap<String, String> =
        formats::weights::check_safetensors_header(&bytes, &path.display().to_string())?
            .into_iter()
            .collect();
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .with_context(|| format!("loading the tensors of {}", path.display()))?;
    Ok((tensors, metadata))
}
