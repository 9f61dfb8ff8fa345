//! Global-norm gradient clipping, as `torch.nn.utils.clip_grad_norm_` (what timm's
//! `dispatch_clip_grad(..., mode='norm')` and DeiT's `--clip-grad` call).

use anyhow::{Context, Result};
use candle_core::DType;

use crate::grads::NamedGrads;

/// Clips `grads` in place so that their global L2 norm is at most `max_norm`, and
/// returns the global norm before clipping.
///
/// Like PyTorch: the norm is the L2 norm of the per-tensor L2 norms, the factor is
/// `min(max_norm / (norm + 1e-6), 1)` in f32, and every gradient is multiplied by it
/// (also when it is 1). A non-finite norm is returned as is (the gradients then become
/// non-finite too, as in PyTorch with `error_if_nonfinite=False`); the caller decides.
pub fn clip_grad_norm(grads: &mut NamedGrads, max_norm: f64) -> Result<f64> {
    let total = grad_norm(grads)?;
    let total32 = total as f32;
    let coef = ((max_norm as f32) / (total32 + 1e-6_f32)).min(1.0_f32);
    grads.scale(f64::from(coef))?;
    Ok(total)
}

/// Global L2 norm of all gradients (f32 per tensor, combined in f64).
pub fn grad_norm(grads: &NamedGrads) -> Result<f64> {
    let mut sum_sq = 0.0_f64;
    for (name, g) in grads.iter() {
        let norm = g
            .to_dtype(DType::F32)?
            .sqr()?
            .sum_all()?
            .sqrt()?
            .to_scalar::<f32>()
            .with_context(|| format!("norm of the gradient of {name}"))?;
        sum_sq += f64::from(norm) * f64::from(norm);
    }
    Ok(sum_sq.sqrt())
}
