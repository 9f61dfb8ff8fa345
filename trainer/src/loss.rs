//! DeiT's training losses on candle tensors, differentiable with respect to the logits.
//!
//! - base criterion on the class head (main.py): [`soft_target_cross_entropy`] against
//!   the mixed, smoothed targets when Mixup/CutMix is on, otherwise
//!   [`label_smoothing_cross_entropy`] (eps 0.1), or plain [`cross_entropy`];
//! - [`DistillationLoss`] (deit losses.py): `none` = base only; `hard` =
//!   `(1-a) * base + a * CE(dist head, argmax teacher)`; `soft` =
//!   `(1-a) * base + a * tau^2 * KL(softmax(t/tau) || softmax(s/tau))`, summed and
//!   divided by the number of logits (`B * C`), as the official code does.
//!
//! The teacher can be given as full logits (online teacher), as hard labels, or as a
//! cached top-K ([`TopKTeacher`]). For soft distillation from a top-K cache the full
//! distribution is unknown; the approximation used here is documented on
//! [`TopKTeacher::full_logits`].
//!
//! All losses compute in f32 (bf16 logits are converted first). The log-softmax here
//! subtracts a detached row maximum (a constant shift), so its gradient is exactly
//! `onehot - softmax` with no contribution through the max; candle's fused
//! `softmax_last_dim` is not used because it drops gradients.

use std::str::FromStr;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor, D};

/// Log-softmax over the last dimension, differentiable.
pub fn log_softmax(logits: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

fn check_logits(logits: &Tensor) -> Result<(usize, usize)> {
    let (b, c) = logits
        .dims2()
        .with_context(|| format!("logits must be (batch, classes), got {:?}", logits.shape()))?;
    ensure!(b > 0 && c > 0, "empty logits {:?}", logits.shape());
    Ok((b, c))
}

/// Checks that `labels` is a (batch,) integer tensor with every value below
/// `num_classes`, and returns it as u32.
fn check_labels(labels: &Tensor, batch: usize, num_classes: usize) -> Result<Tensor> {
    ensure!(
        labels.dims() == [batch],
        "labels must have shape ({batch},), got {:?}",
        labels.shape()
    );
    let labels = match labels.dtype() {
        DType::U32 => labels.clone(),
        DType::I64 | DType::U8 => labels.to_dtype(DType::U32)?,
        other => bail!("labels must be integers, got dtype {other:?}"),
    };
    let host = labels.to_vec1::<u32>()?;
    if let Some((i, l)) = host
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= num_classes)
    {
        bail!("label {l} of sample {i} is out of range for {num_classes} classes");
    }
    Ok(labels)
}

/// `-log p[label]` per sample, shape (batch,).
fn nll_per_sample(log_probs: &Tensor, labels: &Tensor) -> Result<Tensor> {
    Ok(log_probs
        .gather(&labels.unsqueeze(1)?, 1)?
        .squeeze(1)?
        .neg()?)
}

/// timm's `SoftTargetCrossEntropy`: `mean_b sum_c -target * log_softmax(logits)`.
/// `target` is a dense (batch, classes) distribution (mixed and smoothed labels).
pub fn soft_target_cross_entropy(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    let logits = logits.to_dtype(DType::F32)?;
    check_logits(&logits)?;
    ensure!(
        target.shape() == logits.shape(),
        "soft targets have shape {:?}, the logits {:?}",
        target.shape(),
        logits.shape()
    );
    let target = target.to_dtype(DType::F32)?.detach();
    let lp = log_softmax(&logits)?;
    Ok((target * lp)?.sum(D::Minus1)?.neg()?.mean_all()?)
}

/// timm's `LabelSmoothingCrossEntropy`:
/// `mean_b [(1 - eps) * -log p[label] + eps * mean_c(-log p)]`.
pub fn label_smoothing_cross_entropy(
    logits: &Tensor,
    labels: &Tensor,
    smoothing: f64,
) -> Result<Tensor> {
    ensure!(
        (0.0..1.0).contains(&smoothing),
        "label smoothing must be in [0, 1), got {smoothing}"
    );
    let logits = logits.to_dtype(DType::F32)?;
    let (b, c) = check_logits(&logits)?;
    let labels = check_labels(labels, b, c)?;
    let lp = log_softmax(&logits)?;
    let nll = nll_per_sample(&lp, &labels)?;
    let smooth = lp.mean(D::Minus1)?.neg()?;
    let loss = (nll.affine(1.0 - smoothing, 0.0)? + smooth.affine(smoothing, 0.0)?)?;
    Ok(loss.mean_all()?)
}

/// Plain cross-entropy with integer labels (`torch.nn.CrossEntropyLoss`, mean).
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let logits = logits.to_dtype(DType::F32)?;
    let (b, c) = check_logits(&logits)?;
    let labels = check_labels(labels, b, c)?;
    let lp = log_softmax(&logits)?;
    Ok(nll_per_sample(&lp, &labels)?.mean_all()?)
}

/// DeiT's soft distillation term: `F.kl_div(log_softmax(s/tau), log_softmax(t/tau),
/// reduction='sum', log_target=True) * tau^2 / s.numel()`. No gradient reaches the
/// teacher.
pub fn soft_distillation(student: &Tensor, teacher: &Tensor, tau: f64) -> Result<Tensor> {
    ensure!(
        tau.is_finite() && tau > 0.0,
        "distillation tau must be > 0, got {tau}"
    );
    let student = student.to_dtype(DType::F32)?;
    check_logits(&student)?;
    ensure!(
        teacher.shape() == student.shape(),
        "teacher logits have shape {:?}, the student {:?}",
        teacher.shape(),
        student.shape()
    );
    let t_lp = log_softmax(&(teacher.to_dtype(DType::F32)?.detach() / tau)?)?.detach();
    let s_lp = log_softmax(&(&student / tau)?)?;
    let kl = (t_lp.exp()? * (t_lp - s_lp)?)?.sum_all()?;
    let numel = student.elem_count() as f64;
    Ok(kl.affine(tau * tau / numel, 0.0)?)
}

/// Index of the first maximum of each row of a (batch, classes) tensor
/// (`torch.argmax(dim=1)` semantics).
pub fn argmax_rows(logits: &Tensor) -> Result<Vec<u32>> {
    let rows = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    rows.iter()
        .enumerate()
        .map(|(i, row)| {
            let mut best = 0usize;
            for (j, &v) in row.iter().enumerate() {
                ensure!(!v.is_nan(), "teacher logit {j} of sample {i} is NaN");
                if v > row[best] {
                    best = j;
                }
            }
            Ok(best as u32)
        })
        .collect()
}

/// Dense targets of timm's `mixup_target`: smoothed one-hot of `labels_a` (off value
/// `smoothing / C`, on value `1 - smoothing + off`) mixed with the smoothed one-hot of
/// `labels_b` as `y_a * lam + y_b * (1 - lam)`, per sample (one `lam` per sample, so
/// batch, pair and elem modes all fit). Computed in f32 like timm.
pub fn mixup_targets(
    labels_a: &[u32],
    labels_b: &[u32],
    lam: &[f64],
    num_classes: usize,
    smoothing: f64,
    device: &Device,
) -> Result<Tensor> {
    let b = labels_a.len();
    ensure!(
        labels_b.len() == b && lam.len() == b,
        "mixup targets need as many partner labels and lams as labels ({b}), got {} and {}",
        labels_b.len(),
        lam.len()
    );
    ensure!(num_classes > 0, "mixup targets need at least one class");
    let off = smoothing / num_classes as f64;
    let on = (1.0 - smoothing + off) as f32;
    let off = off as f32;
    let mut out = vec![0f32; b * num_classes];
    for i in 0..b {
        let (la, lb) = (labels_a[i] as usize, labels_b[i] as usize);
        ensure!(
            la < num_classes && lb < num_classes,
            "labels {la}/{lb} of sample {i} are out of range for {num_classes} classes"
        );
        ensure!(
            (0.0..=1.0).contains(&lam[i]),
            "lam {} of sample {i} is outside [0, 1]",
            lam[i]
        );
        let (wa, wb) = (lam[i] as f32, (1.0 - lam[i]) as f32);
        let row = &mut out[i * num_classes..(i + 1) * num_classes];
        for (c, v) in row.iter_mut().enumerate() {
            let ya = if c == la { on } else { off };
            let yb = if c == lb { on } else { off };
            *v = ya * wa + yb * wb;
        }
    }
    Ok(Tensor::from_vec(out, (b, num_classes), device)?)
}

/// The criterion on the class head.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BaseCriterion {
    /// Soft-target CE against dense (mixed, smoothed) targets.
    SoftTarget,
    /// Label-smoothing CE with this epsilon against integer labels.
    LabelSmoothing(f64),
    /// Plain CE against integer labels.
    CrossEntropy,
}

impl BaseCriterion {
    /// DeiT main.py's choice: soft-target CE when Mixup/CutMix produce mixed targets
    /// (main.py tests `mixup > 0` only; here any active mixing counts, since mixed
    /// targets need it), else label smoothing when `smoothing > 0`, else plain CE.
    pub fn for_recipe(mixing_active: bool, smoothing: f64) -> Self {
        if mixing_active {
            Self::SoftTarget
        } else if smoothing > 0.0 {
            Self::LabelSmoothing(smoothing)
        } else {
            Self::CrossEntropy
        }
    }

    /// The loss of `logits` against `targets`; errors when the target kind does not fit
    /// the criterion.
    pub fn loss(&self, logits: &Tensor, targets: &Targets<'_>) -> Result<Tensor> {
        match (self, targets) {
            (Self::SoftTarget, Targets::Dense(t)) => soft_target_cross_entropy(logits, t),
            (Self::LabelSmoothing(eps), Targets::Labels(l)) => {
                label_smoothing_cross_entropy(logits, l, *eps)
            }
            (Self::CrossEntropy, Targets::Labels(l)) => cross_entropy(logits, l),
            (Self::SoftTarget, Targets::Labels(_)) => {
                bail!("soft-target cross-entropy needs dense (mixed) targets, got labels")
            }
            (_, Targets::Dense(_)) => {
                bail!("{self:?} needs integer labels, got dense targets (Mixup/CutMix on?)")
            }
        }
    }
}

/// Targets of the base criterion.
#[derive(Debug, Clone, Copy)]
pub enum Targets<'a> {
    /// Dense (batch, classes) target distributions (see [`mixup_targets`]).
    Dense(&'a Tensor),
    /// Integer labels, shape (batch,).
    Labels(&'a Tensor),
}

/// How the distillation head learns (`--distillation-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DistillationKind {
    /// No distillation: the base criterion on the class head only.
    None,
    /// CE of the distillation head against the teacher's argmax, no smoothing.
    Hard,
    /// Temperature-scaled KL of the distillation head against the teacher.
    Soft,
}

impl FromStr for DistillationKind {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Self::None),
            "hard" => Ok(Self::Hard),
            "soft" => Ok(Self::Soft),
            other => bail!("unknown distillation type {other:?} (none, hard or soft)"),
        }
    }
}

/// Teacher top-K logits as stored in the teacher cache: for each sample the K largest
/// logits, their class indices, and the log-sum-exp of all C logits.
#[derive(Debug, Clone, PartialEq)]
pub struct TopKTeacher {
    batch: usize,
    k: usize,
    indices: Vec<u32>,
    logits: Vec<f32>,
    lse: Vec<f32>,
}

impl TopKTeacher {
    /// Row-major (batch, k) `indices` and `logits`, and (batch,) `lse`.
    pub fn new(
        batch: usize,
        k: usize,
        indices: Vec<u32>,
        logits: Vec<f32>,
        lse: Vec<f32>,
    ) -> Result<Self> {
        ensure!(k > 0, "top-K teacher targets need K >= 1");
        ensure!(
            indices.len() == batch * k && logits.len() == batch * k && lse.len() == batch,
            "top-K teacher targets for {batch} samples x K={k}: got {} indices, {} logits, {} lse",
            indices.len(),
            logits.len(),
            lse.len()
        );
        Ok(Self {
            batch,
            k,
            indices,
            logits,
            lse,
        })
    }

    /// Number of samples.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Number of cached logits per sample.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The teacher's hard label of each sample: the index of the largest cached logit
    /// (the first one among equals).
    pub fn hard_labels(&self) -> Vec<u32> {
        (0..self.batch)
            .map(|i| {
                let row = &self.logits[i * self.k..(i + 1) * self.k];
                let mut best = 0;
                for (j, &v) in row.iter().enumerate() {
                    if v > row[best] {
                        best = j;
                    }
                }
                self.indices[i * self.k + best]
            })
            .collect()
    }

    /// Rebuilds a full (batch, C) logit matrix whose softmax approximates the teacher's:
    ///
    /// - the K cached classes keep their logits, so at temperature 1 their
    ///   probabilities `exp(z - lse)` are exact;
    /// - the tail mass `R = 1 - sum_k exp(z_k - lse)` is spread uniformly over the other
    ///   C - K classes: each gets the logit `lse + ln(R / (C - K))`, i.e. probability
    ///   `R / (C - K)` at temperature 1 (R is floored at 1e-20 so that a rounding-negative
    ///   tail stays finite);
    /// - at temperature tau the same logits are divided by tau (so the tail classes
    ///   share one tempered probability; the true tail would be spread unevenly).
    ///
    /// With K = C this is the teacher's logits up to a constant shift per row, which
    /// softmax ignores. Errors on an index >= C, a repeated index, K > C or a
    /// non-finite logit.
    pub fn full_logits(&self, num_classes: usize) -> Result<Vec<f32>> {
        ensure!(
            self.k <= num_classes,
            "top-K teacher targets have K={} but the model has {num_classes} classes",
            self.k
        );
        let tail_classes = num_classes - self.k;
        let mut out = vec![0f32; self.batch * num_classes];
        let mut seen = vec![false; num_classes];
        for i in 0..self.batch {
            let lse = f64::from(self.lse[i]);
            ensure!(lse.is_finite(), "teacher lse of sample {i} is not finite");
            let idx = &self.indices[i * self.k..(i + 1) * self.k];
            let z = &self.logits[i * self.k..(i + 1) * self.k];
            seen.iter_mut().for_each(|s| *s = false);
            let mut top_mass = 0f64;
            for (&c, &v) in idx.iter().zip(z) {
                let c = c as usize;
                ensure!(
                    c < num_classes,
                    "teacher class {c} of sample {i} is out of range for {num_classes} classes"
                );
                ensure!(!seen[c], "teacher class {c} appears twice in sample {i}");
                ensure!(
                    v.is_finite(),
                    "teacher logit of class {c}, sample {i} is not finite"
                );
                seen[c] = true;
                top_mass += (f64::from(v) - lse).exp();
            }
            let row = &mut out[i * num_classes..(i + 1) * num_classes];
            if tail_classes > 0 {
                let tail = (1.0 - top_mass).max(1e-20) / tail_classes as f64;
                let tail_logit = (lse + tail.ln()) as f32;
                row.iter_mut().for_each(|v| *v = tail_logit);
            }
            for (&c, &v) in idx.iter().zip(z) {
                row[c as usize] = v;
            }
        }
        Ok(out)
    }

    /// [`full_logits`](Self::full_logits) as a (batch, C) f32 tensor on `device`.
    pub fn full_logits_tensor(&self, num_classes: usize, device: &Device) -> Result<Tensor> {
        let v = self.full_logits(num_classes)?;
        Ok(Tensor::from_vec(v, (self.batch, num_classes), device)?)
    }
}

/// What the teacher says about a batch.
#[derive(Debug, Clone, Copy)]
pub enum Teacher<'a> {
    /// Full (batch, classes) logits (the online teacher).
    Logits(&'a Tensor),
    /// Hard labels (batch,) (a cache's stored argmax); hard distillation only.
    Labels(&'a Tensor),
    /// Cached top-K logits + log-sum-exp.
    TopK(&'a TopKTeacher),
}

/// The loss terms of one batch.
#[derive(Debug, Clone)]
pub struct LossParts {
    /// What to backpropagate: `(1 - a) * base + a * distill`, or `base` without
    /// distillation.
    pub total: Tensor,
    /// The base criterion on the class head.
    pub base: Tensor,
    /// The distillation term on the distillation head (None without distillation).
    pub distill: Option<Tensor>,
}

/// DeiT's `DistillationLoss`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DistillationLoss {
    /// Criterion on the class head.
    pub base: BaseCriterion,
    /// Distillation type.
    pub kind: DistillationKind,
    /// Weight of the distillation term (`--distillation-alpha`, 0.5).
    pub alpha: f64,
    /// Temperature of soft distillation (`--distillation-tau`, 1.0).
    pub tau: f64,
}

impl DistillationLoss {
    /// Loss terms for the class-head logits `cls`, the distillation-head logits `dist`
    /// (needed unless the kind is `None`), the base targets and the teacher.
    pub fn compute(
        &self,
        cls: &Tensor,
        dist: Option<&Tensor>,
        targets: &Targets<'_>,
        teacher: Option<&Teacher<'_>>,
    ) -> Result<LossParts> {
        let base = self.base.loss(cls, targets).context("base criterion")?;
        if self.kind == DistillationKind::None {
            return Ok(LossParts {
                total: base.clone(),
                base,
                distill: None,
            });
        }
        ensure!(
            (0.0..=1.0).contains(&self.alpha),
            "distillation alpha must be in [0, 1], got {}",
            self.alpha
        );
        let dist = dist.context("distillation needs the model's distillation head")?;
        let teacher = teacher.context("distillation needs teacher targets")?;
        let (b, c) = check_logits(dist)?;
        let distill = match (self.kind, teacher) {
            (DistillationKind::Hard, Teacher::Logits(t)) => {
                ensure!(
                    t.dims() == [b, c],
                    "teacher logits have shape {:?}, the student {:?}",
                    t.shape(),
                    dist.shape()
                );
                let labels = Tensor::from_vec(argmax_rows(t)?, b, dist.device())?;
                cross_entropy(dist, &labels)?
            }
            (DistillationKind::Hard, Teacher::Labels(l)) => cross_entropy(dist, l)?,
            (DistillationKind::Hard, Teacher::TopK(t)) => {
                ensure!(
                    t.batch() == b,
                    "top-K teacher for {} samples, batch of {b}",
                    t.batch()
                );
                let labels = Tensor::from_vec(t.hard_labels(), b, dist.device())?;
                cross_entropy(dist, &labels)?
            }
            (DistillationKind::Soft, Teacher::Logits(t)) => soft_distillation(dist, t, self.tau)?,
            (DistillationKind::Soft, Teacher::TopK(t)) => {
                ensure!(
                    t.batch() == b,
                    "top-K teacher for {} samples, batch of {b}",
                    t.batch()
                );
                let full = t.full_logits_tensor(c, dist.device())?;
                soft_distillation(dist, &full, self.tau)?
            }
            (DistillationKind::Soft, Teacher::Labels(_)) => {
                bail!("soft distillation needs teacher logits (full or top-K), got hard labels")
            }
            (DistillationKind::None, _) => bail!("no distillation term without distillation"),
        };
        let total = (base.affine(1.0 - self.alpha, 0.0)? + distill.affine(self.alpha, 0.0)?)?;
        Ok(LossParts {
            total,
            base,
            distill: Some(distill),
        })
    }
}
