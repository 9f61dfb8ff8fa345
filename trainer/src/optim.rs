//! AdamW with DeiT's weight-decay groups, exactly as `torch.optim.AdamW` (the optimizer
//! timm's `create_optimizer_v2(model, 'adamw', ...)` builds for DeiT's main.py), with its
//! state saved to and loaded from safetensors for exact resumption.
//!
//! One step for a parameter `p` with gradient `g` (step count `t` after increment),
//! in PyTorch's order of operations, all tensors f32:
//! ```text
//! p   = p * (1 - lr * wd)                     (decoupled decay; skipped when wd = 0)
//! m   = m + (1 - b1) * (g - m)                (torch's lerp)
//! v   = v * b2 + ((1 - b2) * g) * g           (torch's addcmul)
//! den = sqrt(v) / sqrt(1 - b2^t) + eps
//! p   = p + ((-lr / (1 - b1^t)) * m) / den    (torch's addcdiv)
//! ```
//! The scalars are computed in f64 like Python's floats and rounded to f32 when applied.
//! PyTorch's vectorized CPU lerp uses a fused multiply-add, so m can differ from it by
//! one rounding; the reference test allows 1e-6 relative error.
//! A parameter without a gradient is skipped (no decay, no step count), as in PyTorch.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use crate::grads::{named_vars, NamedGrads};
use crate::tensor_file;

/// Parameter names DeiT's models list in `no_weight_decay()` (timm's
/// `VisionTransformerDistilled`: pos_embed, cls_token, dist_token).
pub const DEIT_NO_WEIGHT_DECAY_NAMES: [&str; 3] = ["pos_embed", "cls_token", "dist_token"];

/// True when the parameter `name` with `rank` dimensions gets no weight decay, the rule
/// of timm's `param_groups_weight_decay` with DeiT's `no_weight_decay()` list:
/// every parameter with at most one dimension (biases, LayerNorm weights), every name
/// ending in `.bias`, and pos_embed, cls_token, dist_token.
///
/// (The models module may define a model-specific list too; this is the optimizer's.)
pub fn no_weight_decay(name: &str, rank: usize) -> bool {
    rank <= 1 || name.ends_with(".bias") || DEIT_NO_WEIGHT_DECAY_NAMES.contains(&name)
}

/// AdamW hyper-parameters (DeiT main.py defaults).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// Learning rate (replaced each epoch by the schedule).
    pub lr: f64,
    /// Exponential decay rates of the first and second moments.
    pub betas: (f64, f64),
    /// Term added to the denominator (after the square root).
    pub eps: f64,
    /// Weight decay of the decay group (the other group gets 0).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 5e-4,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.05,
        }
    }
}

#[derive(Debug)]
struct Param {
    name: String,
    var: Var,
    weight_decay: f64,
}

#[derive(Debug, Clone)]
struct ParamState {
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: u64,
}

/// AdamW over named candle variables.
#[derive(Debug)]
pub struct AdamW {
    params: Vec<Param>,
    state: BTreeMap<String, ParamState>,
    config: AdamWConfig,
}

const META_FORMAT: &str = "deit-pipe adamw state v1";
/// The metadata key of [`META_FORMAT`] (`format` itself says `pt`).
const META_KEY: &str = "deit_pipe_format";

impl AdamW {
    /// AdamW over `params` with DeiT's groups: [`no_weight_decay`] parameters get weight
    /// decay 0, the others `config.weight_decay`.
    pub fn new(params: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        Self::with_decay_rule(params, config, |name, var| {
            !no_weight_decay(name, var.as_tensor().rank())
        })
    }

    /// AdamW over every variable of `varmap` (sorted by name), with DeiT's groups.
    pub fn from_varmap(varmap: &VarMap, config: AdamWConfig) -> Result<Self> {
        Self::new(named_vars(varmap)?, config)
    }

    /// AdamW where `decays(name, var)` says which parameters get `config.weight_decay`.
    pub fn with_decay_rule(
        params: Vec<(String, Var)>,
        config: AdamWConfig,
        decays: impl Fn(&str, &Var) -> bool,
    ) -> Result<Self> {
        validate_config(&config)?;
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(params.len());
        for (name, var) in params {
            ensure!(
                seen.insert(name.clone()),
                "parameter {name} is listed twice for the optimizer"
            );
            ensure!(
                var.dtype().is_float(),
                "parameter {name} has dtype {:?}, the optimizer needs a float",
                var.dtype()
            );
            let weight_decay = if decays(&name, &var) {
                config.weight_decay
            } else {
                0.0
            };
            out.push(Param {
                name,
                var,
                weight_decay,
            });
        }
        Ok(Self {
            params: out,
            state: BTreeMap::new(),
            config,
        })
    }

    /// The hyper-parameters (with the current learning rate).
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// The current learning rate.
    pub fn lr(&self) -> f64 {
        self.config.lr
    }

    /// Sets the learning rate of every group (what the schedule does each epoch).
    pub fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    /// Names of all parameters, in optimizer order.
    pub fn param_names(&self) -> Vec<&str> {
        self.params.iter().map(|p| p.name.as_str()).collect()
    }

    /// Names of the parameters in the weight-decay group.
    pub fn decay_names(&self) -> Vec<&str> {
        self.params
            .iter()
            .filter(|p| p.weight_decay != 0.0)
            .map(|p| p.name.as_str())
            .collect()
    }

    /// Weight decay applied to `name`, or None if it is not optimized here.
    pub fn weight_decay_of(&self, name: &str) -> Option<f64> {
        self.params
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.weight_decay)
    }

    /// Number of steps taken for `name` (0 before its first gradient).
    pub fn step_count(&self, name: &str) -> u64 {
        self.state.get(name).map_or(0, |s| s.step)
    }

    /// First and second moment of `name`, once it has taken a step.
    pub fn moments(&self, name: &str) -> Option<(&Tensor, &Tensor)> {
        self.state.get(name).map(|s| (&s.exp_avg, &s.exp_avg_sq))
    }

    /// One AdamW step for every parameter that has a gradient in `grads`.
    /// A gradient for a name the optimizer does not know is an error.
    pub fn step(&mut self, grads: &NamedGrads) -> Result<()> {
        for (name, _) in grads.iter() {
            ensure!(
                self.params.iter().any(|p| p.name == name),
                "gradient for {name}, which the optimizer does not hold"
            );
        }
        let (b1, b2) = self.config.betas;
        let lr = self.config.lr;
        let eps = self.config.eps;
        for p in &self.params {
            let Some(g) = grads.get(&p.name) else {
                continue;
            };
            let name = &p.name;
            let param = p.var.as_tensor();
            ensure!(
                g.shape() == param.shape(),
                "gradient of {name} has shape {:?}, the parameter {:?}",
                g.shape(),
                param.shape()
            );
            let g = g.to_dtype(DType::F32)?.detach();
            let state = match self.state.remove(name) {
                Some(s) => s,
                None => ParamState {
                    exp_avg: param.zeros_like()?.to_dtype(DType::F32)?,
                    exp_avg_sq: param.zeros_like()?.to_dtype(DType::F32)?,
                    step: 0,
                },
            };
            let step = state.step + 1;
            let updated = adamw_update(
                &param.to_dtype(DType::F32)?.detach(),
                &g,
                &state,
                StepArgs {
                    step,
                    lr,
                    weight_decay: p.weight_decay,
                    betas: (b1, b2),
                    eps,
                },
            )
            .with_context(|| format!("AdamW step of {name}"))?;
            p.var
                .set(&updated.param.to_dtype(p.var.dtype())?)
                .with_context(|| format!("writing the updated {name}"))?;
            self.state.insert(
                name.clone(),
                ParamState {
                    exp_avg: updated.exp_avg,
                    exp_avg_sq: updated.exp_avg_sq,
                    step,
                },
            );
        }
        Ok(())
    }

    /// The optimizer state as named tensors (`{name}.exp_avg`, `{name}.exp_avg_sq`,
    /// `{name}.step` as a 0-d i64) and metadata, for embedding in a checkpoint.
    pub fn state_tensors(&self) -> Result<(BTreeMap<String, Tensor>, HashMap<String, String>)> {
        let mut tensors = BTreeMap::new();
        for (name, s) in &self.state {
            tensors.insert(format!("{name}.exp_avg"), s.exp_avg.clone());
            tensors.insert(format!("{name}.exp_avg_sq"), s.exp_avg_sq.clone());
            let step = i64::try_from(s.step).context("step count overflows i64")?;
            tensors.insert(format!("{name}.step"), Tensor::new(step, &Device::Cpu)?);
        }
        let mut meta = HashMap::new();
        // "format" is "pt", as on every safetensors file we write (Hugging Face's
        // convention); ours goes under its own key.
        meta.insert(
            tensor_file::HF_FORMAT.0.to_string(),
            tensor_file::HF_FORMAT.1.to_string(),
        );
        meta.insert(META_KEY.to_string(), META_FORMAT.to_string());
        meta.insert("config".to_string(), serde_json::to_string(&self.config)?);
        Ok((tensors, meta))
    }

    /// Saves the optimizer state (moments, step counts, hyper-parameters) to a
    /// safetensors file, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let (tensors, meta) = self.state_tensors()?;
        tensor_file::write_atomic(path, &tensors, meta)
            .with_context(|| format!("saving the optimizer state to {}", path.display()))
    }

    /// Loads state written by [`save`](Self::save): replaces the moments, step counts and
    /// hyper-parameters (including the learning rate). Every entry must name a parameter
    /// of this optimizer with the same shape; the file is checked completely before
    /// anything changes.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let device = self
            .params
            .first()
            .map(|p| p.var.device().clone())
            .unwrap_or(Device::Cpu);
        let (tensors, meta) = tensor_file::read(path, &device)?;
        self.load_state_tensors(&tensors, &meta)
            .with_context(|| format!("loading the optimizer state from {}", path.display()))
    }

    /// Loads state from tensors and metadata as [`state_tensors`](Self::state_tensors)
    /// writes them.
    pub fn load_state_tensors(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        meta: &HashMap<String, String>,
    ) -> Result<()> {
        // files before the "pt" tag held our tag under "format"
        match meta.get(META_KEY).or_else(|| meta.get("format")) {
            Some(f) if f == META_FORMAT => {}
            other => bail!("not a deit-pipe AdamW state (format {other:?})"),
        }
        let config: AdamWConfig = serde_json::from_str(
            meta.get("config")
                .context("the AdamW state has no config metadata")?,
        )
        .context("the AdamW config metadata is not valid")?;
        validate_config(&config)?;
        for key in tensors.keys() {
            let known = [".exp_avg_sq", ".exp_avg", ".step"].iter().any(|suffix| {
                key.strip_suffix(suffix)
                    .is_some_and(|n| self.params.iter().any(|p| p.name == n))
            });
            ensure!(known, "entry {key} names no parameter of this optimizer");
        }
        let mut state = BTreeMap::new();
        for p in &self.params {
            let name = &p.name;
            let m = tensors.get(&format!("{name}.exp_avg"));
            let v = tensors.get(&format!("{name}.exp_avg_sq"));
            let s = tensors.get(&format!("{name}.step"));
            let (m, v, s) = match (m, v, s) {
                (None, None, None) => continue,
                (Some(m), Some(v), Some(s)) => (m, v, s),
                _ => bail!("the state of {name} is incomplete (needs exp_avg, exp_avg_sq, step)"),
            };
            for (what, t) in [("exp_avg", m), ("exp_avg_sq", v)] {
                ensure!(
                    t.shape() == p.var.shape(),
                    "{name}.{what} has shape {:?}, the parameter {:?}",
                    t.shape(),
                    p.var.shape()
                );
                ensure!(
                    t.dtype() == DType::F32,
                    "{name}.{what} has dtype {:?}, expected f32",
                    t.dtype()
                );
            }
            let step = s
                .to_dtype(DType::I64)?
                .to_scalar::<i64>()
                .with_context(|| format!("{name}.step is not a scalar"))?;
            ensure!(step >= 1, "{name}.step is {step}, expected at least 1");
            state.insert(
                name.clone(),
                ParamState {
                    exp_avg: m.to_device(p.var.device())?,
                    exp_avg_sq: v.to_device(p.var.device())?,
                    step: step as u64,
                },
            );
        }
        self.state = state;
        self.config = config;
        // The groups keep their membership; the decay group's rate follows the file.
        for p in &mut self.params {
            if p.weight_decay != 0.0 {
                p.weight_decay = config.weight_decay;
            }
        }
        Ok(())
    }
}

fn validate_config(c: &AdamWConfig) -> Result<()> {
    ensure!(
        c.lr.is_finite() && c.lr >= 0.0,
        "AdamW lr must be finite and >= 0, got {}",
        c.lr
    );
    for (what, b) in [("beta1", c.betas.0), ("beta2", c.betas.1)] {
        ensure!(
            (0.0..1.0).contains(&b),
            "AdamW {what} must be in [0, 1), got {b}"
        );
    }
    ensure!(
        c.eps.is_finite() && c.eps >= 0.0,
        "AdamW eps must be finite and >= 0, got {}",
        c.eps
    );
    ensure!(
        c.weight_decay.is_finite() && c.weight_decay >= 0.0,
        "AdamW weight decay must be finite and >= 0, got {}",
        c.weight_decay
    );
    Ok(())
}

struct Updated {
    param: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// The hyper-parameters of one parameter's step (`step` counted after the increment).
#[derive(Clone, Copy, Debug)]
struct StepArgs {
    step: u64,
    lr: f64,
    weight_decay: f64,
    betas: (f64, f64),
    eps: f64,
}

fn adamw_update(
    param: &Tensor,
    grad: &Tensor,
    state: &ParamState,
    args: StepArgs,
) -> Result<Updated> {
    let all = [param, grad, &state.exp_avg, &state.exp_avg_sq];
    if all
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous())
    {
        return adamw_update_cpu(param, grad, state, args);
    }
    adamw_update_ops(param, grad, state, args)
}

/// The scalars of one step, rounded to f32 where candle's ops round them: the decay
/// factor, 1 - b1, b2, 1 - b2, sqrt(1 - b2^t), eps and -lr / (1 - b1^t).
struct StepScalars {
    decay: Option<f32>,
    one_minus_b1: f32,
    b2: f32,
    one_minus_b2: f32,
    bc2_sqrt: f32,
    eps: f32,
    neg_step_size: f32,
}

impl StepScalars {
    fn new(a: StepArgs) -> Self {
        let StepArgs {
            step,
            lr,
            weight_decay,
            betas: (b1, b2),
            eps,
        } = a;
        let t = step as f64;
        StepScalars {
            decay: (weight_decay != 0.0).then_some((1.0 - lr * weight_decay) as f32),
            one_minus_b1: (1.0 - b1) as f32,
            b2: b2 as f32,
            one_minus_b2: (1.0 - b2) as f32,
            bc2_sqrt: (1.0 - b2.powf(t)).sqrt() as f32,
            eps: eps as f32,
            neg_step_size: (-(lr / (1.0 - b1.powf(t)))) as f32,
        }
    }
}

/// [`adamw_update_ops`] as one pass over contiguous f32 CPU tensors, in parallel. The
/// composite form runs about 12 tensor ops per parameter, each a full pass with a new
/// buffer; this computes the same IEEE operations in the same order per element (candle's
/// `affine(m, a)` is `v * m + a` in f32, which is kept, `+ 0.0` included), so the results
/// are bit-identical (test `fused_step_equals_the_tensor_op_step`).
fn adamw_update_cpu(
    param: &Tensor,
    grad: &Tensor,
    state: &ParamState,
    args: StepArgs,
) -> Result<Updated> {
    use rayon::prelude::*;
    let k = StepScalars::new(args);
    let guards = [param, grad, &state.exp_avg, &state.exp_avg_sq].map(|t| t.storage_and_layout());
    let slice = |k: usize| -> Result<&[f32]> {
        let (storage, layout) = &guards[k];
        let candle_core::Storage::Cpu(cpu) = &**storage else {
            bail!("AdamW: expected a CPU tensor");
        };
        let (a, b) = layout
            .contiguous_offsets()
            .context("AdamW: expected a contiguous tensor")?;
        Ok(&cpu.as_slice::<f32>()?[a..b])
    };
    let (p, g, m, v) = (slice(0)?, slice(1)?, slice(2)?, slice(3)?);
    let n = p.len();
    ensure!(
        [g.len(), m.len(), v.len()].iter().all(|&l| l == n),
        "AdamW: parameter, gradient and state sizes differ"
    );
    let (mut p1, mut m1, mut v1) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
    const CHUNK: usize = 1 << 14;
    p1.par_chunks_mut(CHUNK)
        .zip(m1.par_chunks_mut(CHUNK))
        .zip(v1.par_chunks_mut(CHUNK))
        .enumerate()
        .for_each(|(c, ((po, mo), vo))| {
            let at = c * CHUNK;
            let len = po.len();
            let inputs = [
                &p[at..][..len],
                &g[at..][..len],
                &m[at..][..len],
                &v[at..][..len],
            ];
            adamw_chunk(&k, inputs, [po, mo, vo]);
        });
    drop(guards);
    let shape = param.shape();
    let dev = param.device();
    Ok(Updated {
        param: Tensor::from_vec(p1, shape, dev)?,
        exp_avg: Tensor::from_vec(m1, shape, dev)?,
        exp_avg_sq: Tensor::from_vec(v1, shape, dev)?,
    })
}

kernels::simd_variant!(
    /// One chunk of [`adamw_update_cpu`], compiled for the host's SIMD level (the same bits
    /// at every level: the same IEEE operations per element).
    fn adamw_chunk(k: &StepScalars, inputs: [&[f32]; 4], outputs: [&mut [f32]; 3])
        => adamw_chunk_body
);

/// The body of [`adamw_chunk`]: `(p, g, m, v)` in, `(p', m', v')` out, all one length.
#[inline(always)]
fn adamw_chunk_body(k: &StepScalars, [p, g, m, v]: [&[f32]; 4], [po, mo, vo]: [&mut [f32]; 3]) {
    let n = po.len();
    let (p, g, m, v, mo, vo) = (
        &p[..n],
        &g[..n],
        &m[..n],
        &v[..n],
        &mut mo[..n],
        &mut vo[..n],
    );
    for i in 0..n {
        let gi = g[i];
        let pd = match k.decay {
            Some(d) => p[i] * d + 0.0,
            None => p[i],
        };
        let mi = m[i] + ((gi - m[i]) * k.one_minus_b1 + 0.0);
        let vi = (v[i] * k.b2 + 0.0) + ((gi * k.one_minus_b2 + 0.0) * gi);
        let den = (vi.sqrt() / k.bc2_sqrt) * 1.0 + k.eps;
        po[i] = pd + ((mi * k.neg_step_size + 0.0) / den);
        mo[i] = mi;
        vo[i] = vi;
    }
}

/// One AdamW step as candle tensor ops (any device and dtype path).
fn adamw_update_ops(
    param: &Tensor,
    grad: &Tensor,
    state: &ParamState,
    args: StepArgs,
) -> Result<Updated> {
    let StepArgs {
        step,
        lr,
        weight_decay,
        betas: (b1, b2),
        eps,
    } = args;
    let param = if weight_decay != 0.0 {
        param.affine(1.0 - lr * weight_decay, 0.0)?
    } else {
        param.clone()
    };
    let exp_avg = (&state.exp_avg + (grad - &state.exp_avg)?.affine(1.0 - b1, 0.0)?)?;
    let exp_avg_sq = (state.exp_avg_sq.affine(b2, 0.0)? + (grad.affine(1.0 - b2, 0.0)? * grad)?)?;
    let t = step as f64;
    let bias_correction1 = 1.0 - b1.powf(t);
    let bias_correction2 = 1.0 - b2.powf(t);
    let step_size = lr / bias_correction1;
    let bc2_sqrt = Tensor::new(bias_correction2.sqrt() as f32, param.device())?;
    let denom = exp_avg_sq
        .sqrt()?
        .broadcast_div(&bc2_sqrt)?
        .affine(1.0, eps)?;
    let param = (param + (exp_avg.affine(-step_size, 0.0)? / denom)?)?;
    Ok(Updated {
        param,
        exp_avg,
        exp_avg_sq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fused_step_equals_the_tensor_op_step() -> Result<()> {
        let dev = Device::Cpu;
        for (wd, shape) in [
            (0.05, vec![7usize, 33]),
            (0.0, vec![40_000]),
            (0.3, vec![3]),
        ] {
            let param = Tensor::randn(0f32, 1.0, shape.as_slice(), &dev)?;
            let mut state = ParamState {
                exp_avg: Tensor::randn(0f32, 0.1, shape.as_slice(), &dev)?,
                exp_avg_sq: Tensor::randn(0f32, 0.01, shape.as_slice(), &dev)?.sqr()?,
                step: 0,
            };
            let mut p = param;
            for step in 1..=3u64 {
                let g = Tensor::randn(0f32, 1.0, shape.as_slice(), &dev)?;
                let args = StepArgs {
                    step,
                    lr: 5e-4,
                    weight_decay: wd,
                    betas: (0.9, 0.999),
                    eps: 1e-8,
                };
                let fused = adamw_update_cpu(&p, &g, &state, args)?;
                let ops = adamw_update_ops(&p, &g, &state, args)?;
                let bits = |t: &Tensor| -> Result<Vec<u32>> {
                    Ok(t.flatten_all()?
                        .to_vec1::<f32>()?
                        .iter()
                        .map(|v| v.to_bits())
                        .collect())
                };
                assert_eq!(bits(&fused.param)?, bits(&ops.param)?, "param, step {step}");
                assert_eq!(bits(&fused.exp_avg)?, bits(&ops.exp_avg)?, "exp_avg");
                assert_eq!(
                    bits(&fused.exp_avg_sq)?,
                    bits(&ops.exp_avg_sq)?,
                    "exp_avg_sq"
                );
                p = fused.param;
                state = ParamState {
                    exp_avg: fused.exp_avg,
                    exp_avg_sq: fused.exp_avg_sq,
                    step,
                };
            }
        }
        Ok(())
    }
}
