//! `--finetune PATH` as DeiT's `main.py` does it: read the weights (`checkpoint['model']`
//! of a `.pth`, a safetensors file, or a `deit-pipe train` run / checkpoint directory),
//! drop `head.*` / `head_dist.*` when their shape differs from this model's (a new class
//! count: they keep their fresh init), resample `pos_embed` to this model's patch grid
//! with PyTorch's `F.interpolate(mode='bicubic', align_corners=False)` (no anti-aliasing,
//! a = -0.75, the class/distillation token rows kept as they are), then load the rest
//! like `load_state_dict(strict=False)`: missing and unexpected tensors are reported,
//! a tensor whose shape still differs is an error (as in PyTorch).

use crate::models::{Arch, ModelSpec};
use crate::weights::{load_state_dict_into, read_state_dict, LoadOptions, LoadReport};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use std::collections::BTreeMap;
use std::path::Path;

/// The head tensors main.py drops when their shape differs.
pub const HEAD_KEYS: [&str; 4] = [
    "head.weight",
    "head.bias",
    "head_dist.weight",
    "head_dist.bias",
];

/// What [`prepare`] changed in a checkpoint.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FinetuneChanges {
    /// Head tensors removed (shape differed from the model's).
    pub dropped: Vec<String>,
    /// `pos_embed` resampled: (old grid side, new grid side).
    pub pos_embed: Option<(usize, usize)>,
}

/// PyTorch's cubic convolution coefficients for `t` in [0, 1] (a = -0.75), as
/// `get_cubic_upsample_coefficients` computes them.
fn cubic_coefficients(t: f32) -> [f32; 4] {
    const A: f32 = -0.75;
    let conv1 = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let conv2 = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let x2 = 1.0 - t;
    [conv2(t + 1.0), conv1(t), conv1(x2), conv2(x2 + 1.0)]
}

/// Per output index: the 4 input indices (clamped to the edge) and their weights, as
/// PyTorch's `compute_indices_weights_cubic` with `align_corners=False` and an output
/// size (scale = input / output, source = scale * (i + 0.5) - 0.5, not clamped at 0).
fn cubic_taps(input: usize, output: usize) -> Vec<([usize; 4], [f32; 4])> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|i| {
            let real = scale * (i as f32 + 0.5) - 0.5;
            let index = (real.floor() as i64).min(input as i64 - 1);
            let lambda = (real - index as f32).clamp(0.0, 1.0);
            let mut idx = [0usize; 4];
            for (j, slot) in idx.iter_mut().enumerate() {
                *slot = (index - 1 + j as i64).clamp(0, input as i64 - 1) as usize;
            }
            (idx, cubic_coefficients(lambda))
        })
        .collect()
}

/// `F.interpolate(x, size=(out_h, out_w), mode='bicubic', align_corners=False)` of a
/// grid stored token-major: `src[(y * in_w + x) * channels + c]`; the result has the
/// same layout. Sums in f32 in PyTorch's order (over x inside, then over y).
pub fn interpolate_bicubic(
    src: &[f32],
    channels: usize,
    (in_h, in_w): (usize, usize),
    (out_h, out_w): (usize, usize),
) -> Vec<f32> {
    let ty = cubic_taps(in_h, out_h);
    let tx = cubic_taps(in_w, out_w);
    let mut out = vec![0f32; out_h * out_w * channels];
    for (oy, (iy, wy)) in ty.iter().enumerate() {
        for (ox, (ix, wx)) in tx.iter().enumerate() {
            let o = &mut out[(oy * out_w + ox) * channels..(oy * out_w + ox + 1) * channels];
            for (c, ov) in o.iter_mut().enumerate() {
                // PyTorch: output = t0 * w0; output += tj * wj (the same sums from 0).
                let mut acc = 0f32;
                for (&y, &w_y) in iy.iter().zip(wy) {
                    let row = &src[y * in_w * channels..];
                    let mut t = 0f32;
                    for (&x, &w_x) in ix.iter().zip(wx) {
                        t += row[x * channels + c] * w_x;
                    }
                    acc += t * w_y;
                }
                *ov = acc;
            }
        }
    }
    out
}

/// main.py's position-embedding interpolation: `pe` is `[1, extra + old*old, D]`; the
/// `extra` token rows are kept, the square patch grid is resampled to `new_side` squared.
pub fn resample_pos_embed_mainpy(pe: &Tensor, extra: usize, new_side: usize) -> Result<Tensor> {
    let (one, n, d) = pe
        .dims3()
        .with_context(|| format!("pos_embed has shape {:?}", pe.dims()))?;
    if one != 1 || n <= extra {
        bail!(
            "pos_embed has shape {:?}, expected [1, {extra} + grid, D]",
            pe.dims()
        );
    }
    // main.py: orig_size = int((N - extra) ** 0.5)
    let old = ((n - extra) as f64).sqrt() as usize;
    if old * old != n - extra {
        bail!(
            "pos_embed has {} patch rows after {extra} token rows: not a square grid",
            n - extra
        );
    }
    let src: Vec<f32> = pe
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    let grid = interpolate_bicubic(&src[extra * d..], d, (old, old), (new_side, new_side));
    let mut out = Vec::with_capacity((extra + new_side * new_side) * d);
    out.extend_from_slice(&src[..extra * d]);
    out.extend_from_slice(&grid);
    Ok(Tensor::from_vec(
        out,
        (1, extra + new_side * new_side, d),
        &Device::Cpu,
    )?)
}

/// main.py's changes to a checkpoint before `load_state_dict(strict=False)`: drop head
/// tensors whose shape differs from the model's (`model_shapes`), and resample
/// `pos_embed` of a DeiT to its grid (always, as main.py; the same grid is an identity).
pub fn prepare(
    tensors: &mut BTreeMap<String, Tensor>,
    model_shapes: &BTreeMap<String, Vec<usize>>,
    spec: &ModelSpec,
) -> Result<FinetuneChanges> {
    let mut changes = FinetuneChanges::default();
    for k in HEAD_KEYS {
        let differs = match (tensors.get(k), model_shapes.get(k)) {
            (Some(t), Some(want)) => t.dims() != want.as_slice(),
            // main.py indexes the model's state dict: a head the model lacks differs.
            (Some(_), None) => true,
            _ => false,
        };
        if differs {
            tensors.remove(k);
            changes.dropped.push(k.to_string());
        }
    }
    if let (Arch::Deit(cfg), Some(pe)) = (&spec.arch, tensors.get("pos_embed")) {
        let extra = cfg.num_prefix_tokens();
        let old = ((pe.dim(1)?.saturating_sub(extra)) as f64).sqrt() as usize;
        let r = resample_pos_embed_mainpy(pe, extra, cfg.grid())
            .context("resampling pos_embed as main.py --finetune does")?;
        changes.pos_embed = Some((old, cfg.grid()));
        tensors.insert("pos_embed".into(), r);
    }
    Ok(changes)
}

/// Load `path` into `varmap` (built for `spec`) as `main.py --finetune` does.
pub fn load_finetune(varmap: &VarMap, spec: &ModelSpec, path: &Path) -> Result<LoadReport> {
    let file = crate::train::checkpoint::resolve_weights(path, false)
        .with_context(|| format!("--finetune {}", path.display()))?;
    let mut tensors =
        read_state_dict(&file).with_context(|| format!("--finetune {}", file.display()))?;
    let shapes: BTreeMap<String, Vec<usize>> = {
        let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        data.iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().dims().to_vec()))
            .collect()
    };
    let changes = prepare(&mut tensors, &shapes, spec)?;
    for k in &changes.dropped {
        tracing::info!(
            "--finetune: removing {k} from the checkpoint (its shape differs from the model's)"
        );
    }
    if let Some((old, new)) = changes.pos_embed {
        if old != new {
            tracing::info!(
                "--finetune: pos_embed resampled from a {old}x{old} to a {new}x{new} grid"
            );
        }
    }
    let source = format!("--finetune {}", file.display());
    let report = load_state_dict_into(
        varmap,
        spec,
        &tensors,
        &LoadOptions { partial: true },
        &source,
    )?;
    let misshaped: Vec<&String> = report
        .skipped
        .iter()
        .filter(|s| !s.ends_with("(missing)"))
        .collect();
    if !misshaped.is_empty() {
        bail!(
            "{source}: size mismatch for {} (PyTorch's load_state_dict refuses these too, even \
             with strict=False); is --model the architecture these weights were trained as?",
            misshaped
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    let missing: Vec<&str> = report
        .skipped
        .iter()
        .map(|s| s.trim_end_matches(" (missing)"))
        .collect();
    if !missing.is_empty() {
        tracing::info!(
            "--finetune: {} tensors keep their fresh init (missing keys): {}",
            missing.len(),
            missing.join(", ")
        );
    }
    if !report.ignored.is_empty() {
        tracing::warn!(
            "--finetune: {} tensors of the checkpoint are not in {} (unexpected keys): {}",
            report.ignored.len(),
            spec.name,
            report.ignored.join(", ")
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_the_identity_and_constants_stay_constant() {
        let src: Vec<f32> = (0..4 * 4 * 3).map(|i| (i as f32 * 0.37).sin()).collect();
        assert_eq!(interpolate_bicubic(&src, 3, (4, 4), (4, 4)), src);
        let flat = vec![0.25f32; 5 * 5 * 2];
        for v in interpolate_bicubic(&flat, 2, (5, 5), (3, 3))
            .into_iter()
            .chain(interpolate_bicubic(&flat, 2, (5, 5), (8, 8)))
        {
            assert!((v - 0.25).abs() < 1e-6, "{v}");
        }
    }

    #[test]
    fn coefficients_sum_to_one() {
        for t in [0.0f32, 0.1, 0.5, 0.9, 1.0] {
            let s: f32 = cubic_coefficients(t).iter().sum();
            assert!((s - 1.0).abs() < 1e-6, "{t}: {s}");
        }
    }
}
