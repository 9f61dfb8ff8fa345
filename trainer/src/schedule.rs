//! Learning-rate schedule of DeiT: linear scaling by the global batch, timm's
//! `CosineLRScheduler` with warmup, driven per epoch exactly as DeiT's main.py drives it.
//!
//! main.py builds the scheduler with `create_scheduler(args, optimizer)` (t_initial =
//! epochs, lr_min 1e-5, warmup_t 5, warmup_lr_init 1e-6, cycle_limit 1, t_in_epochs) and
//! calls `lr_scheduler.step(epoch)` at the END of each epoch. So epoch 0 trains at the
//! warmup lr set at construction, epoch 1 at `get_lr(0)` (the same warmup lr), and epoch
//! `e >= 1` at `get_lr(e - 1)`: the schedule is one epoch late, and reaches the full lr
//! only at epoch `warmup + 1`. [`CosineLrSchedule::lr_for_epoch`] reproduces that.
//!
//! main.py's `--cooldown-epochs` (default 10) only changes the epoch count that
//! `create_scheduler` returns (epochs + 10), which main.py discards (`lr_scheduler, _ =`);
//! its loop runs `args.epochs` epochs and t_initial is `args.epochs`. So cooldown has no
//! effect on DeiT's lr, and none here.

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

/// DeiT's linear scaling rule: `base_lr * global_batch / 512`
/// (main.py: `args.lr * args.batch_size * world_size / 512`).
pub fn scaled_lr(base_lr: f64, global_batch: usize) -> f64 {
    base_lr * global_batch as f64 / 512.0
}

/// timm's `CosineLRScheduler` with one cycle (cycle_mul 1, k_decay 1, no noise,
/// warmup_prefix false), in epochs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CosineLrSchedule {
    /// Peak learning rate (already scaled by the batch size).
    pub lr: f64,
    /// Length of the cosine in epochs (timm's t_initial; DeiT: `--epochs`).
    pub epochs: usize,
    /// Final learning rate (timm's lr_min; DeiT `--min-lr` 1e-5).
    pub min_lr: f64,
    /// Warmup length in epochs (DeiT `--warmup-epochs` 5).
    pub warmup_epochs: usize,
    /// Learning rate at the start of warmup (DeiT `--warmup-lr` 1e-6).
    pub warmup_lr: f64,
}

impl CosineLrSchedule {
    /// DeiT's defaults for a peak lr (scaled) and a run length.
    pub fn deit(lr: f64, epochs: usize) -> Self {
        Self {
            lr,
            epochs,
            min_lr: 1e-5,
            warmup_epochs: 5,
            warmup_lr: 1e-6,
        }
    }

    /// Checks the values the way timm asserts them (t_initial > 0, lr_min >= 0), plus
    /// finiteness.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.epochs > 0,
            "the cosine schedule needs at least 1 epoch"
        );
        for (what, v) in [
            ("lr", self.lr),
            ("min-lr", self.min_lr),
            ("warmup-lr", self.warmup_lr),
        ] {
            ensure!(
                v.is_finite() && v >= 0.0,
                "schedule {what} must be finite and >= 0, got {v}"
            );
        }
        Ok(())
    }

    /// timm's `_get_lr(t)`: the value `scheduler.step(t)` sets.
    pub fn lr_at(&self, t: usize) -> f64 {
        if t < self.warmup_epochs {
            let warmup_step = (self.lr - self.warmup_lr) / self.warmup_epochs as f64;
            return self.warmup_lr + t as f64 * warmup_step;
        }
        let t_i = self.epochs;
        let cycle = t / t_i;
        if cycle >= 1 {
            // cycle_limit 1: after the first cycle the lr stays at lr_min
            return self.min_lr;
        }
        let t_curr = (t - t_i * cycle) as f64;
        let cos = (std::f64::consts::PI * t_curr / t_i as f64).cos();
        self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + cos)
    }

    /// The learning rate the optimizer holds right after the scheduler is built
    /// (the warmup lr when there is a warmup, otherwise the peak lr).
    pub fn initial_lr(&self) -> f64 {
        if self.warmup_epochs > 0 {
            self.warmup_lr
        } else {
            self.lr
        }
    }

    /// The learning rate used during `epoch` (0-based) by DeiT's main.py, which steps
    /// the scheduler with `step(epoch)` at the end of each epoch.
    pub fn lr_for_epoch(&self, epoch: usize) -> f64 {
        match epoch {
            0 => self.initial_lr(),
            e => self.lr_at(e - 1),
        }
    }
}
