//! Weights I/O with timm key names: turn the `.safetensors` and PyTorch `.pth` / `.pt` /
//! `.bin` checkpoints that `formats::weights` reads (a bare state dict or
//! `{'model': ...}` / `{'state_dict': ...}` as the official DeiT files hold) into
//! tensors, check them against the model (a missing, extra
//! or mis-shaped tensor is an error naming it, unless `partial`), resample
//! `pos_embed` to a new image size as timm does, and save safetensors timm loads.

use crate::models::{self, Arch, Classifier, ModelSpec};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// How strictly a checkpoint must match the model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Skip missing or mis-shaped tensors (they keep their initial values) and ignore
    /// extra ones: for fine-tuning with a new head. Off: any mismatch is an error.
    pub partial: bool,
}

/// What a load did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Tensors copied from the file.
    pub loaded: Vec<String>,
    /// Model tensors left at their initial value (partial loads only), with the reason.
    pub skipped: Vec<String>,
    /// File tensors the model has no place for (partial loads only).
    pub ignored: Vec<String>,
    /// Tensors resampled to the model's size (`pos_embed`).
    pub resampled: Vec<String>,
    /// Entries of the file that are not tensors and were not read (see
    /// [`WeightsFile::ignored`]), e.g. a planted `posix.system` call: never executed.
    pub ignored_entries: Vec<String>,
}

/// What a weights file held: its tensors, and what was ignored in it.
#[derive(Debug, Clone, Default)]
pub struct WeightsFile {
    /// Every tensor as f32 on the CPU, keyed by timm names.
    pub tensors: BTreeMap<String, Tensor>,
    /// Entries that were not read, one line each with the reason: non-tensor entries of
    /// the state dict, and any global the pickle names that is not one of torch's
    /// tensor-rebuild functions (never imported, never called). Each was also logged as
    /// a warning.
    pub ignored: Vec<String>,
}

/// Reads every tensor of a checkpoint as f32 on the CPU, keyed by timm names
/// (`module.` prefixes of DataParallel checkpoints are stripped,
/// `num_batches_tracked` counters dropped). See [`read_weights`].
pub fn read_state_dict(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    Ok(read_weights(path)?.tensors)
}

/// Reads a weights file (`formats::weights::read_weights`: `.safetensors`, or a PyTorch
/// checkpoint, told by the file's first bytes; nothing in a pickle is executed, tensors
/// with NaN or infinite values are refused, naming the tensor) into CPU tensors, and
/// logs each ignored entry as a warning.
pub fn read_weights(path: &Path) -> Result<WeightsFile> {
    let host = formats::weights::read_weights(path)?;
    let w = to_tensors(host, &path.display().to_string())?;
    for line in &w.ignored {
        tracing::warn!("{line}");
    }
    Ok(w)
}

/// The host arrays of a weights file as f32 tensors on the CPU; `file` names it in errors.
fn to_tensors(host: formats::weights::WeightsFile, file: &str) -> Result<WeightsFile> {
    let mut tensors = BTreeMap::new();
    for (name, t) in host.tensors {
        let tensor = Tensor::from_vec(t.data, t.shape.as_slice(), &Device::Cpu)
            .with_context(|| format!("{file}: tensor {name}"))?;
        tensors.insert(name, tensor);
    }
    Ok(WeightsFile {
        tensors,
        ignored: host.ignored,
    })
}

/// Copies `tensors` into the variables of `varmap` (built for `spec`).
/// `source` names the file in error messages.
pub fn load_state_dict_into(
    varmap: &VarMap,
    spec: &ModelSpec,
    tensors: &BTreeMap<String, Tensor>,
    opts: &LoadOptions,
    source: &str,
) -> Result<LoadReport> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut report = LoadReport::default();
    let mut missing = Vec::new();
    let mut mismatched = Vec::new();
    let mut updates: Vec<(&String, Tensor)> = Vec::new();
    for name in names {
        let var = &data[name];
        let want = var.as_tensor().dims().to_vec();
        let Some(t) = tensors.get(name.as_str()) else {
            missing.push(name.clone());
            continue;
        };
        if t.dims() == want.as_slice() {
            updates.push((name, t.clone()));
            report.loaded.push(name.clone());
            continue;
        }
        if name == "pos_embed" {
            if let Arch::Deit(cfg) = &spec.arch {
                let prefix = cfg.num_prefix_tokens();
                let rows = if t.rank() == 3 { t.dim(1)? } else { 0 };
                let old_grid = (rows.saturating_sub(prefix) as f64).sqrt().round() as usize;
                let square = rows > prefix && old_grid * old_grid == rows - prefix;
                if square && t.dim(0)? == 1 && t.dim(2)? == cfg.embed_dim {
                    let r = resample_pos_embed(t, prefix, (cfg.grid(), cfg.grid()))
                        .with_context(|| format!("resampling pos_embed of {source}"))?;
                    updates.push((name, r));
                    report.loaded.push(name.clone());
                    report.resampled.push(name.clone());
                    continue;
                }
            }
        }
        mismatched.push(format!(
            "{name}: file has shape {:?}, model expects {want:?}",
            t.dims()
        ));
    }
    let extra: Vec<String> = tensors
        .keys()
        .filter(|k| !data.contains_key(k.as_str()))
        .cloned()
        .collect();
    if !opts.partial && (!missing.is_empty() || !mismatched.is_empty() || !extra.is_empty()) {
        let mut msg = format!("{source} does not match model {}:", spec.name);
        for m in missing.iter().take(20) {
            msg.push_str(&format!("\n  missing tensor {m}"));
        }
        for m in mismatched.iter().take(20) {
            msg.push_str(&format!("\n  mis-shaped tensor {m}"));
        }
        for m in extra.iter().take(20) {
            msg.push_str(&format!("\n  unexpected tensor {m}"));
        }
        let total = missing.len() + mismatched.len() + extra.len();
        if total > 60 {
            msg.push_str(&format!("\n  ... {total} problems in all"));
        }
        msg.push_str(
            "\n(to load what fits, e.g. to fine-tune with a new head: train --finetune PATH, \
             or set model.init_partial = true in the recipe)",
        );
        bail!(msg);
    }
    for (name, t) in updates {
        let var = &data[name];
        let t = t.to_dtype(var.as_tensor().dtype())?.contiguous()?;
        var.set(&t)
            .with_context(|| format!("setting tensor {name} from {source}"))?;
    }
    report
        .skipped
        .extend(missing.into_iter().map(|m| format!("{m} (missing)")));
    report.skipped.extend(mismatched);
    report.ignored = extra;
    Ok(report)
}

/// Reads `path` and copies it into `varmap` (see [`load_state_dict_into`]).
pub fn load_into(
    varmap: &VarMap,
    spec: &ModelSpec,
    path: &Path,
    opts: &LoadOptions,
) -> Result<LoadReport> {
    let file = read_weights(path)?;
    let mut report = load_state_dict_into(
        varmap,
        spec,
        &file.tensors,
        opts,
        &path.display().to_string(),
    )?;
    report.ignored_entries = file.ignored;
    Ok(report)
}

/// Builds `spec` on `device` with variables in a fresh `VarMap`, initialized with
/// timm's init from `seed`, then (if given) loads `weights` into it.
pub fn build_model(
    spec: &ModelSpec,
    weights: Option<&Path>,
    opts: &LoadOptions,
    device: &Device,
    seed: u64,
) -> Result<(VarMap, Box<dyn Classifier>, LoadReport)> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    let model = models::build(spec, vb).with_context(|| format!("building model {}", spec.name))?;
    models::init_weights(spec, &varmap, seed)?;
    let report = match weights {
        Some(p) => load_into(&varmap, spec, p, opts)?,
        None => LoadReport::default(),
    };
    Ok((varmap, model, report))
}

/// Saves every variable of `varmap` to a safetensors file that timm's
/// `load_state_dict(strict=True)` accepts (BatchNorm `num_batches_tracked` counters
/// are written as int64 zeros), with the metadata `{"format": "pt"}` that Hugging Face
/// loaders (`transformers`, `timm`'s hub loader) require. Written atomically.
pub fn save_safetensors(varmap: &VarMap, path: &Path) -> Result<()> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut out: BTreeMap<String, Tensor> = BTreeMap::new();
    for (name, var) in data.iter() {
        out.insert(name.clone(), var.as_tensor().clone());
        if let Some(prefix) = name.strip_suffix(".running_mean") {
            out.insert(
                format!("{prefix}.num_batches_tracked"),
                Tensor::new(0i64, &Device::Cpu)?,
            );
        }
    }
    drop(data);
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating directory {}", dir.display()))?;
        }
    }
    crate::tensor_file::write_atomic(path, &out, HashMap::new())
}

/// timm's `resample_abs_pos_embed(posemb, new_size, num_prefix_tokens=prefix,
/// interpolation='bicubic', antialias=True)`: keeps the `prefix` token rows and
/// resamples the square patch grid with PyTorch's anti-aliased bicubic (a = -0.5,
/// support widened when shrinking, half-pixel centres).
pub fn resample_pos_embed(pe: &Tensor, prefix: usize, new_grid: (usize, usize)) -> Result<Tensor> {
    let (one, n, d) = pe.dims3()?;
    if one != 1 || n <= prefix {
        bail!("pos_embed has shape {:?}", pe.dims());
    }
    let old = ((n - prefix) as f64).sqrt().round() as usize;
    if old * old != n - prefix {
        bail!("pos_embed has {} patch rows, not a square grid", n - prefix);
    }
    let src: Vec<f32> = pe
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    let (nh, nw) = new_grid;
    let wy = aa_bicubic_weights(old, nh);
    let wx = aa_bicubic_weights(old, nw);
    let mut out = vec![0f32; (prefix + nh * nw) * d];
    out[..prefix * d].copy_from_slice(&src[..prefix * d]);
    let grid = &src[prefix * d..];
    // separable: first along x (width), then along y, in f32 like PyTorch.
    let mut tmp = vec![0f32; old * nw * d];
    for y in 0..old {
        for (j, (x0, ws)) in wx.iter().enumerate() {
            let o = &mut tmp[(y * nw + j) * d..(y * nw + j + 1) * d];
            for (k, w) in ws.iter().enumerate() {
                let s = &grid[(y * old + x0 + k) * d..(y * old + x0 + k + 1) * d];
                for (ov, sv) in o.iter_mut().zip(s) {
                    *ov += w * sv;
                }
            }
        }
    }
    let dst = &mut out[prefix * d..];
    for (i, (y0, ws)) in wy.iter().enumerate() {
        for j in 0..nw {
            let o = &mut dst[(i * nw + j) * d..(i * nw + j + 1) * d];
            for (k, w) in ws.iter().enumerate() {
                let s = &tmp[((y0 + k) * nw + j) * d..((y0 + k) * nw + j + 1) * d];
                for (ov, sv) in o.iter_mut().zip(s) {
                    *ov += w * sv;
                }
            }
        }
    }
    Ok(Tensor::from_vec(out, (1, prefix + nh * nw, d), pe.device())?.to_dtype(pe.dtype())?)
}

/// Per output index: (first input index, normalized weights), as PyTorch's
/// `_upsample_bicubic2d_aa` computes them (align_corners = False).
fn aa_bicubic_weights(input: usize, output: usize) -> Vec<(usize, Vec<f32>)> {
    fn cubic(x: f32) -> f32 {
        const A: f32 = -0.5;
        let x = x.abs();
        if x < 1.0 {
            ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            (((x - 5.0) * x + 8.0) * x - 4.0) * A
        } else {
            0.0
        }
    }
    let scale = input as f32 / output as f32;
    let support = if scale >= 1.0 { 2.0 * scale } else { 2.0 };
    let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    (0..output)
        .map(|i| {
            let center = scale * (i as f32 + 0.5);
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(input as i64) as usize;
            let mut ws: Vec<f32> = (xmin..xmax)
                .map(|j| cubic((j as f32 - center + 0.5) * invscale))
                .collect();
            let total: f32 = ws.iter().sum();
            if total != 0.0 {
                for w in ws.iter_mut() {
                    *w /= total;
                }
            }
            (xmin, ws)
        })
        .collect()
}
