//! One cached teacher answer: its stored form ([`CacheRow`]), its decoded form
//! ([`CachedTarget`]) and the soft distribution rebuilt from it ([`soft_distribution`]).
//!
//! Stored form, per view: the top-K class ids (exact, sorted by logit, highest first; ties
//! go to the lower class id, so `topk_ids[0]` is the argmax over all classes and is the hard
//! label), the top-1 logit as f16, the K-1 gaps `l_0 - l_i >= 0` as f16, and
//! `lse - l_0` as f16 (`lse` = log-sum-exp of all C logits). Softmax only depends on logit
//! differences, and storing them relative to the top-1 makes them both smaller on disk and
//! more precise than absolute f16 logits; see [`CacheRow::from_logits`] for the error bounds.

use half::f16;

use super::error::{CacheError, Result};

/// Where a view sits in the plan: the row key and what the pipeline built it from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ViewKey {
    /// Epoch of the plan.
    pub epoch: u32,
    /// Slot within the epoch (position in the epoch plan).
    pub slot: u32,
    /// Dataset index of the sample shown in this slot.
    pub sample: u32,
    /// Dataset index of the mixing partner (Mixup/CutMix); equals `sample` when unmixed.
    pub partner: u32,
    /// Mixing weight of `sample` (1.0 when unmixed).
    pub lam: f32,
    /// 64-bit hash of the final view (`pipeline::view::view_hash`).
    pub view_hash: u64,
}

/// A row exactly as stored on disk. Build it with [`CacheRow::from_logits`].
#[derive(Debug, Clone, PartialEq)]
pub struct CacheRow {
    /// The view this row answers for.
    pub key: ViewKey,
    /// Top-K class ids, highest logit first; `topk_ids[0]` is the hard label.
    pub topk_ids: Vec<u32>,
    /// The top-1 logit, f16.
    pub top1_logit: f16,
    /// `l_0 - l_i` for i in 1..K, f16, non-negative and non-decreasing.
    pub logit_gaps: Vec<f16>,
    /// `lse - l_0`, f16, non-negative.
    pub lse_gap: f16,
}

/// A decoded cached teacher answer, as the trainer consumes it.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedTarget {
    /// Epoch of the plan.
    pub epoch: u32,
    /// Slot within the epoch.
    pub slot: u32,
    /// Dataset index of the sample.
    pub sample: u32,
    /// Dataset index of the mixing partner.
    pub partner: u32,
    /// Mixing weight of `sample`.
    pub lam: f32,
    /// 64-bit hash of the view the teacher saw.
    pub view_hash: u64,
    /// Argmax of the teacher's logits over all classes (= `topk_ids[0]`).
    pub hard_label: u32,
    /// Top-K class ids, highest logit first.
    pub topk_ids: Vec<u32>,
    /// Top-K logits, same order (`top1 - gap_i`, computed in f32).
    pub topk_logits: Vec<f32>,
    /// Log-sum-exp of all C logits (`top1 + lse_gap`, computed in f32).
    pub lse: f32,
}

impl CacheRow {
    /// Keeps the top `k` of a full logit vector (`logits.len()` = number of classes).
    ///
    /// Order: descending logit, ties to the lower class id, so `topk_ids[0]` equals the
    /// first-index argmax over all classes (what `torch.argmax` returns). The log-sum-exp is
    /// computed in f64 over all classes. Rounding: each stored value is one f16 rounding of
    /// the exact (f64) value, so with `u = 2^-11` (f16 unit roundoff) the decoded
    /// differences satisfy `|err(l_i - l_0)| <= u * (l_0 - l_i)` and
    /// `|err(lse - l_0)| <= u * (lse - l_0) <= u * ln C` (for C = 1000: 0.0034; subnormal
    /// gaps below 6.1e-5 have an absolute error of at most 3e-8). Hence every decoded top-K
    /// log-probability `l_i - lse` is within `u * (l_0 - l_i + ln C)` of the truth. The top-1
    /// logit itself is f16 (relative error <= u), which shifts all logits and the LSE
    /// together and so changes no probability. Ids and their order are exact.
    pub fn from_logits(key: ViewKey, logits: &[f32], k: usize) -> Result<CacheRow> {
        let bad = |reason: String| CacheError::InvalidRow {
            epoch: key.epoch,
            slot: key.slot,
            reason,
        };
        if k == 0 || k > logits.len() {
            return Err(bad(format!(
                "top-k {k} must be in 1..={} (the number of logits)",
                logits.len()
            )));
        }
        if let Some(i) = logits.iter().position(|v| !v.is_finite()) {
            return Err(bad(format!("teacher logit of class {i} is {}", logits[i])));
        }
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        let cmp = |a: &u32, b: &u32| {
            logits[*b as usize]
                .total_cmp(&logits[*a as usize])
                .then(a.cmp(b))
        };
        if k < order.len() {
            order.select_nth_unstable_by(k - 1, cmp);
            order.truncate(k);
        }
        order.sort_unstable_by(cmp);
        let l0 = f64::from(logits[order[0] as usize]);
        let sum: f64 = logits.iter().map(|&v| (f64::from(v) - l0).exp()).sum();
        let lse_gap = sum.ln(); // lse - l0, >= 0 because the top-1 term is exp(0) = 1
        let logit_gaps = order[1..]
            .iter()
            .map(|&i| f16::from_f64(l0 - f64::from(logits[i as usize])))
            .collect();
        Ok(CacheRow {
            key,
            topk_ids: order,
            top1_logit: f16::from_f64(l0),
            logit_gaps,
            lse_gap: f16::from_f64(lse_gap.max(0.0)),
        })
    }

    /// The decoded form (what the reader returns for this row).
    pub fn to_target(&self) -> CachedTarget {
        let top1 = self.top1_logit.to_f32();
        let mut topk_logits = Vec::with_capacity(self.topk_ids.len());
        topk_logits.push(top1);
        topk_logits.extend(self.logit_gaps.iter().map(|g| top1 - g.to_f32()));
        CachedTarget {
            epoch: self.key.epoch,
            slot: self.key.slot,
            sample: self.key.sample,
            partner: self.key.partner,
            lam: self.key.lam,
            view_hash: self.key.view_hash,
            hard_label: self.topk_ids.first().copied().unwrap_or(0),
            topk_ids: self.topk_ids.clone(),
            topk_logits,
            lse: top1 + self.lse_gap.to_f32(),
        }
    }

    /// Checks the row against the schema's rules for `k` and `num_classes`.
    pub fn validate(&self, k: usize, num_classes: u32) -> Result<()> {
        let bad = |reason: String| CacheError::InvalidRow {
            epoch: self.key.epoch,
            slot: self.key.slot,
            reason,
        };
        if self.topk_ids.len() != k || self.logit_gaps.len() + 1 != k {
            return Err(bad(format!(
                "columns `topk_ids`/`logit_gaps`: {} ids and {} gaps, expected {k} and {}",
                self.topk_ids.len(),
                self.logit_gaps.len(),
                k.saturating_sub(1)
            )));
        }
        if let Some(id) = self.topk_ids.iter().find(|&&id| id >= num_classes) {
            return Err(bad(format!(
                "column `topk_ids`: class id {id} >= num_classes {num_classes}"
            )));
        }
        let mut sorted = self.topk_ids.clone();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(bad(format!(
                "column `topk_ids`: class id {} appears twice in the top-k",
                w[0]
            )));
        }
        if !self.top1_logit.is_finite() {
            return Err(bad(format!(
                "column `top1_logit`: top-1 logit is {}",
                self.top1_logit
            )));
        }
        let mut prev = 0.0f32;
        for (i, g) in self.logit_gaps.iter().enumerate() {
            let g = g.to_f32();
            if !g.is_finite() || g < prev {
                return Err(bad(format!(
                    "column `logit_gaps`: logit gap {} is {g}: gaps must be finite, >= 0 and \
                     non-decreasing",
                    i + 1
                )));
            }
            prev = g;
        }
        let lse_gap = self.lse_gap.to_f32();
        if !(lse_gap.is_finite() && lse_gap >= 0.0) {
            return Err(bad(format!(
                "column `lse_gap`: lse - top1 is {lse_gap}, must be finite and >= 0"
            )));
        }
        // What the values must be, not only their types (rounding: `from_logits`).
        let max_gap = max_lse_gap(num_classes);
        if f64::from(lse_gap) > max_gap {
            return Err(bad(format!(
                "column `lse_gap`: lse - top1 is {lse_gap}, above ln C = ln {num_classes} \
                 (+ f16 rounding: at most {max_gap:.6}): no {num_classes} logits give it"
            )));
        }
        let mass = min_topk_mass(lse_gap, &self.logit_gaps);
        if mass > 1.0 + MASS_SLACK {
            return Err(bad(format!(
                "columns `logit_gaps`/`lse_gap`: the top-{k} probabilities exp(l_i - lse) sum \
                 to at least {mass:.6} (after the f16 rounding allowance), more than 1"
            )));
        }
        if !(self.key.lam.is_finite() && (0.0..=1.0).contains(&self.key.lam)) {
            return Err(bad(format!(
                "column `lam`: lam {} is not in [0, 1]",
                self.key.lam
            )));
        }
        Ok(())
    }
}

/// f16 unit roundoff, `2^-11`: the relative error of one f16 rounding of a normal value.
const F16_U: f64 = 1.0 / 2048.0;

/// Absolute error allowance per stored f16 gap (subnormals: at most 3e-8, rounded up).
const F16_ABS: f64 = 1e-7;

/// Floating-point slack of the f64 sum of at most K probabilities.
const MASS_SLACK: f64 = 1e-9;

/// The largest stored `lse_gap` that C logits can give: `lse - l_0 <= ln C` (every term of
/// the sum is at most `exp(0)`), plus one f16 rounding (relative `u`, taken as `2u`).
pub fn max_lse_gap(num_classes: u32) -> f64 {
    let ln_c = f64::from(num_classes.max(1)).ln();
    ln_c * (1.0 + 2.0 * F16_U) + F16_ABS
}

/// A lower bound of the true top-K mass `sum_i exp(l_i - lse)` of a stored row: each stored
/// gap `g'` (and `lse_gap` `L'`) is one f16 rounding of the true value, so the true value
/// is at most `g' (1 + 2u) + 1e-7`, and each probability at least
/// `exp(-(g' + L') (1 + 2u) - 2e-7)`. True rows have a mass of at most 1; a row whose
/// lower bound exceeds 1 cannot come from any logits.
pub fn min_topk_mass(lse_gap: f32, logit_gaps: &[f16]) -> f64 {
    let l = f64::from(lse_gap);
    std::iter::once(0.0)
        .chain(logit_gaps.iter().map(|g| f64::from(g.to_f32())))
        .map(|g| (-(g + l) * (1.0 + 2.0 * F16_U) - 2.0 * F16_ABS).exp())
        .sum()
}

/// The teacher's softmax at temperature `tau`, rebuilt from the top-K and the LSE.
///
/// Exact: the ratios between top-K probabilities at any `tau` (they depend only on logit
/// differences), and at `tau = 1` the top-K probabilities themselves, `exp(l_i - lse)`.
/// Approximated: the tail. Its mass at `tau = 1`, `r = 1 - sum_i exp(l_i - lse)`, is known,
/// its shape is not; it is spread uniformly over the C-K other classes, i.e. every tail
/// class gets the logit `l_t = lse + ln(r / (C-K))`. At `tau = 1` this gives each tail class
/// `r/(C-K)`, so the result is exact apart from the tail's shape. At `tau != 1` every class
/// gets `exp(l/tau) / Z` with the tail logits set to `l_t`; as `x -> x^(1/tau)` is concave
/// for `tau > 1`, the uniform tail overestimates the true tail mass (top-K probabilities
/// come out too low, by at most the true tail's share), and underestimates it for
/// `tau < 1`. With K = C there is no tail and the result is the exact softmax of the decoded
/// logits. The result sums to 1 (computed in f64).
pub fn soft_distribution(target: &CachedTarget, num_classes: u32, tau: f32) -> Result<Vec<f32>> {
    let bad = |reason: String| CacheError::InvalidRow {
        epoch: target.epoch,
        slot: target.slot,
        reason,
    };
    if !(tau.is_finite() && tau > 0.0) {
        return Err(CacheError::InvalidParameter(format!(
            "temperature must be finite and > 0, got {tau}"
        )));
    }
    let k = target.topk_ids.len();
    let c = num_classes as usize;
    if k == 0 || k != target.topk_logits.len() || k > c {
        return Err(bad(format!(
            "{} ids and {} logits for {c} classes",
            k,
            target.topk_logits.len()
        )));
    }
    if let Some(id) = target.topk_ids.iter().find(|&&id| id >= num_classes) {
        return Err(bad(format!("class id {id} >= num_classes {num_classes}")));
    }
    let tau = f64::from(tau);
    let l0 = f64::from(target.topk_logits[0]);
    let lse = f64::from(target.lse);
    let tail_n = (c - k) as f64;
    let top_mass: f64 = target
        .topk_logits
        .iter()
        .map(|&l| (f64::from(l) - lse).exp())
        .sum();
    let tail_mass = if c > k {
        (1.0 - top_mass).max(0.0)
    } else {
        0.0
    };
    // Everything relative to l0 (and divided by tau) so exp never overflows.
    let tail_a = if tail_mass > 0.0 {
        Some((lse + (tail_mass / tail_n).ln() - l0) / tau)
    } else {
        None
    };
    let top_a: Vec<f64> = target
        .topk_logits
        .iter()
        .map(|&l| (f64::from(l) - l0) / tau)
        .collect();
    let z: f64 =
        top_a.iter().map(|a| a.exp()).sum::<f64>() + tail_a.map_or(0.0, |a| tail_n * a.exp());
    let tail_p = tail_a.map_or(0.0, |a| (a.exp() / z) as f32);
    let mut out = vec![tail_p; c];
    for (&id, a) in target.topk_ids.iter().zip(&top_a) {
        out[id as usize] = (a.exp() / z) as f32;
    }
    Ok(out)
}
