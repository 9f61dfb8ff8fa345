//! Deterministic epoch plans: which image every slot of an epoch shows, its Mixup/CutMix
//! partner, and the seeds of every random choice, from (run seed, epoch, dataset size,
//! plan config) alone: never from batch size, thread count or world size.
//!
//! Layout (RASampler-like, facebookresearch/deit `samplers.py`):
//! 1. `perm` = Fisher-Yates shuffle of `0..N` with the generator of
//!    `derive_seed(run_seed, Permutation, epoch, 0)` (DeiT seeds `torch.randperm` with
//!    the epoch only; we add the run seed).
//! 2. `stream` = every entry of `perm` repeated `repeats` times in a row
//!    (`repeat_interleave`), cut to the epoch length
//!    `L = floor(N / num_samples_multiple) * num_samples_multiple`, rounded down to even
//!    (DeiT: `floor(N / 256) * 256`, so an epoch shows about N / repeats distinct images,
//!    `repeats` views each; the last image may have fewer views when L is not a multiple
//!    of `repeats`).
//! 3. Slots pair the two halves: slot `2k` = `stream[k]`, slot `2k+1` = `stream[k + L/2]`.
//!    Pair k = slots (2k, 2k+1) are Mixup/CutMix partners, so partners are different
//!    images whenever L/2 >= repeats (RASampler + timm batch mixing pair i with B-1-i
//!    of one batch instead).
//! 4. `rank_slots(rank, world)`: pair k goes to rank `k % world`; every rank gets
//!    `floor(P / world)` pairs (P = L/2, the rest is dropped, as DistributedSampler keeps
//!    ranks equal). The repeats of an image sit in consecutive pairs, so for
//!    `world >= repeats` they land on different ranks, as RASampler does; with fewer
//!    ranks some repeats share a rank (and then the same or adjacent batches, as in DeiT
//!    with one process).

use rand_chacha::ChaCha8Rng;

use crate::config::{AugmentConfig, PlanConfig};
use crate::error::PipelineError;
use crate::rng::{derive_seed, randint, rng_from_seed, stage_rng, Domain, Stage};
use crate::transforms::mix::{pair_params, MixParams};

/// One slot of an epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Position in the epoch.
    pub slot: u32,
    /// Dataset index of the image shown.
    pub sample: u32,
    /// The partner slot (`slot ^ 1`).
    pub partner: u32,
    /// The seed of every per-sample choice of this slot.
    pub seed: u64,
}

/// The Mixup/CutMix partner of a slot: the other slot of its pair (`slot ^ 1`).
pub fn partner_slot(slot: u32) -> u32 {
    slot ^ 1
}

/// The plan of one epoch.
#[derive(Clone, Debug)]
pub struct EpochPlan {
    run_seed: u64,
    epoch: u64,
    dataset_len: usize,
    config: PlanConfig,
    samples: Vec<u32>,
}

impl EpochPlan {
    /// Builds the plan. Errors when the dataset is empty, too large for u32 indices, or
    /// smaller than the rounding unit (then set `num_samples_multiple` lower).
    pub fn new(
        run_seed: u64,
        epoch: u64,
        dataset_len: usize,
        config: &PlanConfig,
    ) -> Result<Self, PipelineError> {
        config.validate()?;
        if dataset_len > u32::MAX as usize / config.repeats as usize {
            return Err(PipelineError::Plan(format!(
                "dataset of {dataset_len} images is too large"
            )));
        }
        let m = config.num_samples_multiple as usize;
        let mut len = dataset_len / m * m;
        len -= len % 2;
        if len < 2 {
            return Err(PipelineError::Plan(format!(
                "dataset of {dataset_len} images gives an empty epoch with \
                 num_samples_multiple = {m} (need at least 2 slots; lower it)"
            )));
        }
        let mut perm: Vec<u32> = (0..dataset_len as u32).collect();
        let mut rng = rng_from_seed(derive_seed(run_seed, Domain::Permutation, epoch, 0));
        for i in (1..perm.len()).rev() {
            let j = randint(&mut rng, 0, i as i64) as usize;
            perm.swap(i, j);
        }
        let r = config.repeats as usize;
        let stream = |k: usize| perm[k / r];
        let half = len / 2;
        let mut samples = Vec::with_capacity(len);
        for k in 0..half {
            samples.push(stream(k));
            samples.push(stream(k + half));
        }
        Ok(EpochPlan {
            run_seed,
            epoch,
            dataset_len,
            config: config.clone(),
            samples,
        })
    }

    /// The run seed.
    pub fn run_seed(&self) -> u64 {
        self.run_seed
    }

    /// The epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The dataset size the plan was built for.
    pub fn dataset_len(&self) -> usize {
        self.dataset_len
    }

    /// The plan configuration.
    pub fn config(&self) -> &PlanConfig {
        &self.config
    }

    /// Number of slots in the epoch (even).
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether the epoch has no slots (never true for a built plan).
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Number of pairs (`len() / 2`).
    pub fn num_pairs(&self) -> usize {
        self.samples.len() / 2
    }

    /// Dataset index shown by every slot, in slot order.
    pub fn samples(&self) -> &[u32] {
        &self.samples
    }

    /// Dataset index shown by `slot`.
    pub fn sample(&self, slot: usize) -> u32 {
        self.samples[slot]
    }

    /// The seed of every per-sample choice of `slot`: `derive_seed(run, Slot, epoch, slot)`.
    pub fn slot_seed(&self, slot: usize) -> u64 {
        derive_seed(self.run_seed, Domain::Slot, self.epoch, slot as u64)
    }

    /// The seed of pair `pair`'s mixing: `derive_seed(run, Pair, epoch, pair)`.
    pub fn pair_seed(&self, pair: usize) -> u64 {
        derive_seed(self.run_seed, Domain::Pair, self.epoch, pair as u64)
    }

    /// Everything about one slot.
    pub fn slot(&self, slot: usize) -> Slot {
        Slot {
            slot: slot as u32,
            sample: self.samples[slot],
            partner: partner_slot(slot as u32),
            seed: self.slot_seed(slot),
        }
    }

    /// The Mixup/CutMix parameters of pair `pair` (slots 2k, 2k+1) for views of the
    /// configured input size, drawn from the pair seed's `Mix` stream.
    pub fn pair_mix(&self, pair: usize, aug: &AugmentConfig) -> MixParams {
        let mut rng: ChaCha8Rng = stage_rng(self.pair_seed(pair), Stage::Mix);
        pair_params(&aug.mix, aug.input_size, aug.input_size, &mut rng)
    }

    /// Pairs that rank `rank` of `world` processes takes, in order: `k % world == rank`,
    /// `floor(num_pairs / world)` of them.
    pub fn rank_pairs(&self, rank: usize, world: usize) -> Result<Vec<usize>, PipelineError> {
        if world == 0 || rank >= world {
            return Err(PipelineError::Plan(format!(
                "rank {rank} of world {world} is invalid"
            )));
        }
        let per_rank = self.num_pairs() / world;
        if per_rank == 0 {
            return Err(PipelineError::Plan(format!(
                "{} pairs cannot be split over {world} ranks",
                self.num_pairs()
            )));
        }
        Ok((0..per_rank).map(|j| rank + j * world).collect())
    }

    /// Slots that rank `rank` of `world` takes (whole pairs, in slot order).
    pub fn rank_slots(&self, rank: usize, world: usize) -> Result<Vec<usize>, PipelineError> {
        Ok(self
            .rank_pairs(rank, world)?
            .into_iter()
            .flat_map(|k| [2 * k, 2 * k + 1])
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deit_epoch_length() {
        let p = EpochPlan::new(0, 0, 1000, &PlanConfig::default()).unwrap();
        assert_eq!(p.len(), 768);
        assert!(EpochPlan::new(0, 0, 100, &PlanConfig::default()).is_err());
    }

    #[test]
    fn partners_differ() {
        let cfg = PlanConfig {
            repeats: 3,
            num_samples_multiple: 2,
        };
        let p = EpochPlan::new(4, 1, 50, &cfg).unwrap();
        for k in 0..p.num_pairs() {
            assert_ne!(p.sample(2 * k), p.sample(2 * k + 1));
        }
    }
}
