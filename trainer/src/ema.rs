//! Exponential moving average of model weights, as timm's `ModelEma` that DeiT uses
//! (`--model-ema`, decay 0.99996): after each optimizer step,
//! `ema = ema * decay + (1 - decay) * weight` for every parameter and buffer, in f32.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;

use crate::grads::named_vars;
use crate::tensor_file;

/// DeiT's default EMA decay.
pub const DEIT_EMA_DECAY: f64 = 0.99996;

const META_FORMAT: &str = "deit-pipe model ema v1";
/// The metadata key of [`META_FORMAT`] (`format` itself says `pt`).
const META_KEY: &str = "deit_pipe_format";

/// A moving average of named tensors (held as copies, never aliasing the model).
#[derive(Debug, Clone)]
pub struct ModelEma {
    decay: f64,
    shadow: BTreeMap<String, Tensor>,
}

impl ModelEma {
    /// Starts the average at a copy of `tensors` (timm copies the model at creation).
    pub fn new<'a>(
        decay: f64,
        tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
    ) -> Result<Self> {
        ensure!(
            (0.0..=1.0).contains(&decay),
            "EMA decay must be in [0, 1], got {decay}"
        );
        let mut shadow = BTreeMap::new();
        for (name, t) in tensors {
            let copy = t
                .detach()
                .copy()
                .with_context(|| format!("copying {name} for the EMA"))?;
            ensure!(
                shadow.insert(name.to_string(), copy).is_none(),
                "tensor {name} given twice to the EMA"
            );
        }
        Ok(Self { decay, shadow })
    }

    /// Starts the average at a copy of every variable of `varmap`.
    pub fn from_varmap(decay: f64, varmap: &VarMap) -> Result<Self> {
        let vars = named_vars(varmap)?;
        Self::new(decay, vars.iter().map(|(n, v)| (n.as_str(), v.as_tensor())))
    }

    /// The decay.
    pub fn decay(&self) -> f64 {
        self.decay
    }

    /// The averaged value of `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.shadow.get(name)
    }

    /// All averaged tensors by name (for saving EMA weights under timm key names).
    pub fn tensors(&self) -> &BTreeMap<String, Tensor> {
        &self.shadow
    }

    /// One update from the current weights. Every averaged name must be present with
    /// the same shape (timm iterates the EMA's state dict and looks each key up).
    pub fn update<'a>(
        &mut self,
        tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
    ) -> Result<()> {
        let current: HashMap<&str, &Tensor> = tensors.into_iter().collect();
        let mut next = BTreeMap::new();
        for (name, ema) in &self.shadow {
            let Some(w) = current.get(name.as_str()) else {
                bail!("the model has no tensor {name}, which the EMA averages");
            };
            ensure!(
                w.shape() == ema.shape(),
                "{name} has shape {:?}, its EMA {:?}",
                w.shape(),
                ema.shape()
            );
            let w = w.detach().to_dtype(ema.dtype())?;
            let avg = (ema.affine(self.decay, 0.0)? + w.affine(1.0 - self.decay, 0.0)?)
                .with_context(|| format!("EMA update of {name}"))?;
            next.insert(name.clone(), avg);
        }
        self.shadow = next;
        Ok(())
    }

    /// One update from the variables of `varmap`.
    pub fn update_from_varmap(&mut self, varmap: &VarMap) -> Result<()> {
        let vars = named_vars(varmap)?;
        self.update(vars.iter().map(|(n, v)| (n.as_str(), v.as_tensor())))
    }

    /// Saves the averaged tensors (timm key names) and the decay, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut meta = HashMap::new();
        // "format" is "pt" (what Hugging Face loaders require of weights); ours goes
        // under its own key.
        meta.insert(
            crate::tensor_file::HF_FORMAT.0.to_string(),
            crate::tensor_file::HF_FORMAT.1.to_string(),
        );
        meta.insert(META_KEY.to_string(), META_FORMAT.to_string());
        meta.insert("decay".to_string(), self.decay.to_string());
        tensor_file::write_atomic(path, &self.shadow, meta)
            .with_context(|| format!("saving the EMA to {}", path.display()))
    }

    /// Loads an EMA saved by [`save`](Self::save) onto `device`.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let (tensors, meta) = tensor_file::read(path, device)?;
        // files before the "pt" format tag held our tag under "format"
        match meta.get(META_KEY).or_else(|| meta.get("format")) {
            Some(f) if f == META_FORMAT => {}
            other => bail!(
                "{} is not a deit-pipe EMA file (format {other:?})",
                path.display()
            ),
        }
        let decay: f64 = meta
            .get("decay")
            .with_context(|| format!("{} has no decay", path.display()))?
            .parse()
            .with_context(|| format!("the decay in {} is not a number", path.display()))?;
        ensure!(
            (0.0..=1.0).contains(&decay),
            "the decay in {} is {decay}, outside [0, 1]",
            path.display()
        );
        Ok(Self {
            decay,
            shadow: tensors.into_iter().collect(),
        })
    }
}
