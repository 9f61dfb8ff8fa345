//! Gradients keyed by parameter name, and gradient accumulation over micro-batches.
//!
//! candle's [`GradStore`] is keyed by tensor id; the optimizer, clipping and checkpoints
//! work with the parameter names of a [`VarMap`] (timm key names), so gradients are
//! collected into [`NamedGrads`] once per backward pass.

use std::collections::BTreeMap;

use anyhow::{ensure, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use candle_nn::VarMap;

/// The trainable variables of a [`VarMap`] with their names, sorted by name.
///
/// Sorting makes every iteration over parameters (optimizer steps, norms, files)
/// independent of the hash map's order.
pub fn named_vars(varmap: &VarMap) -> Result<Vec<(String, Var)>> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("the VarMap lock is poisoned"))?;
    let mut vars: Vec<(String, Var)> = data.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(vars)
}

/// Gradients of named parameters (a parameter the loss did not reach has no entry,
/// like a PyTorch parameter whose `.grad` is `None`).
#[derive(Debug, Clone, Default)]
pub struct NamedGrads {
    grads: BTreeMap<String, Tensor>,
}

impl NamedGrads {
    /// An empty set of gradients.
    pub fn new() -> Self {
        Self::default()
    }

    /// Collects the gradient of every parameter in `params` from a backward pass.
    /// Parameters without a gradient are left out.
    pub fn from_store(store: &GradStore, params: &[(String, Var)]) -> Self {
        let grads = params
            .iter()
            .filter_map(|(name, var)| {
                store
                    .get(var.as_tensor())
                    .map(|g| (name.clone(), g.detach()))
            })
            .collect();
        Self { grads }
    }

    /// Sets the gradient of `name`, returning the previous one.
    pub fn insert(&mut self, name: impl Into<String>, grad: Tensor) -> Option<Tensor> {
        self.grads.insert(name.into(), grad)
    }

    /// The gradient of `name`, if the loss reached it.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.grads.get(name)
    }

    /// Number of parameters with a gradient.
    pub fn len(&self) -> usize {
        self.grads.len()
    }

    /// True when no parameter has a gradient.
    pub fn is_empty(&self) -> bool {
        self.grads.is_empty()
    }

    /// (name, gradient) pairs in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.grads.iter().map(|(n, g)| (n.as_str(), g))
    }

    /// Multiplies every gradient by `factor` in place.
    pub fn scale(&mut self, factor: f64) -> Result<()> {
        for (name, g) in self.grads.iter_mut() {
            *g = g
                .affine(factor, 0.0)
                .with_context(|| format!("scaling the gradient of {name}"))?;
        }
        Ok(())
    }
}

/// Sums gradients over `k` micro-batches, each scaled by `1/k`, so that the result is
/// the gradient of the mean loss over the whole effective batch (as PyTorch's
/// `(loss / k).backward()` repeated `k` times computes it).
///
/// A parameter missing from some micro-batches counts as a zero gradient there.
#[derive(Debug)]
pub struct GradAccumulator {
    micro_batches: usize,
    added: usize,
    sum: NamedGrads,
}

impl GradAccumulator {
    /// An accumulator for `micro_batches` micro-batches per optimizer step (at least 1).
    pub fn new(micro_batches: usize) -> Result<Self> {
        ensure!(
            micro_batches >= 1,
            "gradient accumulation needs at least 1 micro-batch per step, got 0"
        );
        Ok(Self {
            micro_batches,
            added: 0,
            sum: NamedGrads::new(),
        })
    }

    /// Micro-batches per optimizer step.
    pub fn micro_batches(&self) -> usize {
        self.micro_batches
    }

    /// Micro-batches added since the last [`take`](Self::take).
    pub fn added(&self) -> usize {
        self.added
    }

    /// True when `micro_batches` micro-batches were added.
    pub fn is_complete(&self) -> bool {
        self.added == self.micro_batches
    }

    /// Adds one micro-batch's gradients, scaled by `1 / micro_batches`.
    pub fn add(&mut self, grads: &NamedGrads) -> Result<()> {
        ensure!(
            self.added < self.micro_batches,
            "gradient accumulation got more than {} micro-batches before the optimizer step",
            self.micro_batches
        );
        let factor = 1.0 / self.micro_batches as f64;
        for (name, g) in grads.iter() {
            let scaled = if self.micro_batches == 1 {
                g.clone()
            } else {
                g.affine(factor, 0.0)?
            };
            let summed = match self.sum.get(name) {
                Some(prev) => {
                    ensure!(
                        prev.shape() == scaled.shape(),
                        "gradient of {name} changed shape between micro-batches: {:?} then {:?}",
                        prev.shape(),
                        scaled.shape()
                    );
                    (prev + &scaled)
                        .with_context(|| format!("accumulating the gradient of {name}"))?
                }
                None => scaled,
            };
            self.sum.insert(name, summed);
        }
        self.added += 1;
        Ok(())
    }

    /// Returns the accumulated gradients and starts a new accumulation.
    /// Errors when fewer than `micro_batches` micro-batches were added.
    pub fn take(&mut self) -> Result<NamedGrads> {
        ensure!(
            self.is_complete(),
            "gradient accumulation has {} of {} micro-batches",
            self.added,
            self.micro_batches
        );
        self.added = 0;
        Ok(std::mem::take(&mut self.sum))
    }

    /// Returns the gradients of an incomplete accumulation (for example at the end of an
    /// epoch whose batch count is not a multiple of `micro_batches`), rescaled to the
    /// mean over the micro-batches actually added, and starts a new accumulation.
    /// Errors when nothing was added.
    pub fn take_partial(&mut self) -> Result<NamedGrads> {
        ensure!(
            self.added > 0,
            "gradient accumulation has no micro-batch to take"
        );
        let added = self.added;
        self.added = 0;
        let mut grads = std::mem::take(&mut self.sum);
        if added != self.micro_batches {
            grads.scale(self.micro_batches as f64 / added as f64)?;
        }
        Ok(grads)
    }
}
