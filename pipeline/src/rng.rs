//! Seed derivation and portable samplers.
//!
//! **This is an on-disk contract.** The teacher cache stores view hashes of views that
//! were built from these seeds; changing anything here changes every view. Bump
//! [`SEED_SCHEME`] (it is part of [`crate::config::AugmentConfig::hash`]) when you do.
//!
//! Scheme `deit-pipe-seed-v2` (v1 drew the erase noise by the f64 Box-Muller of [`normal`],
//! two values per pair of `next_u64`s):
//! - `derive_seed(run_seed, domain, epoch, index)` = XXH3-64 (seed 0) of the 32 bytes
//!   `domain.tag() ‖ run_seed ‖ epoch ‖ index`, each a little-endian `u64`.
//!   Domains: [`Domain::Permutation`] (index 0: the epoch's sample permutation),
//!   [`Domain::Slot`] (index = slot: every per-sample choice of that slot),
//!   [`Domain::Pair`] (index = pair k of slots (2k, 2k+1): Mixup/CutMix mode, lam, box),
//!   [`Domain::MixBatch`] (index = group g of `mix.batch_size / 2` pairs: the same, for
//!   `mix.mode = "batch"`). `mix.mode = "elem"` draws each view's from its slot seed's
//!   [`Stage::Mix`] stream.
//! - A seed becomes a ChaCha8 generator by [`rng_from_seed`]: the 32-byte key is four
//!   SplitMix64 outputs of the seed (little-endian), stream 0. Each augmentation stage uses
//!   its own ChaCha stream ([`Stage`]), so changing how many draws one stage makes never
//!   shifts another stage.
//! - Samplers use only `next_u64` and the pure-Rust `libm` (same bits on every platform):
//!   [`unit_f64`] = top 53 bits / 2^53; [`uniform`] = `lo + (hi - lo) * u`;
//!   [`randint`] = Lemire's multiply-and-reject (inclusive bounds); [`normal`] =
//!   Box-Muller (cos branch); [`gamma`] = Marsaglia-Tsang; [`beta`] = X / (X + Y);
//!   [`fill_normal_f32`] (RandomErasing's noise) = Box-Muller in f32, one `next_u64` per
//!   pair, in blocks of 8 pairs (module `normal_f32`).
//!   `rand`'s own distributions are not used: their algorithms may change between versions.

mod normal_f32;
pub use normal_f32::fill_normal_f32;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use xxhash_rust::xxh3::xxh3_64;

/// Name of the seed derivation scheme; part of the augmentation hash.
pub const SEED_SCHEME: &str = "deit-pipe-seed-v2";

/// What a derived seed is for; keeps the seeds of different uses independent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Domain {
    /// The epoch's sample permutation.
    Permutation,
    /// All per-sample choices of one slot (crop, flip, RandAugment, erasing).
    Slot,
    /// The Mixup/CutMix parameters of one pair of slots.
    Pair,
    /// The Mixup/CutMix parameters shared by a group of pairs (batch mode).
    MixBatch,
}

impl Domain {
    /// The 64-bit tag hashed into derived seeds (ASCII, little-endian).
    pub fn tag(self) -> u64 {
        u64::from_le_bytes(match self {
            Domain::Permutation => *b"perm\0\0\0\0",
            Domain::Slot => *b"slot\0\0\0\0",
            Domain::Pair => *b"pair\0\0\0\0",
            Domain::MixBatch => *b"mixb\0\0\0\0",
        })
    }
}

/// The ChaCha stream each augmentation stage of a slot draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// RandomResizedCrop / RandomCrop parameters.
    Crop = 0,
    /// Horizontal flip.
    Flip = 1,
    /// RandAugment op choice, magnitudes and signs.
    RandAugment = 2,
    /// RandomErasing boxes and fill values.
    Erase = 3,
    /// Mixup/CutMix parameters (with pair and mix-batch seeds, and slot seeds in elem
    /// mode).
    Mix = 4,
}

/// Derives a 64-bit seed from the run seed, a domain, the epoch and an index.
pub fn derive_seed(run_seed: u64, domain: Domain, epoch: u64, index: u64) -> u64 {
    let mut buf = [0u8; 32];
    buf[0..8].copy_from_slice(&domain.tag().to_le_bytes());
    buf[8..16].copy_from_slice(&run_seed.to_le_bytes());
    buf[16..24].copy_from_slice(&epoch.to_le_bytes());
    buf[24..32].copy_from_slice(&index.to_le_bytes());
    xxh3_64(&buf)
}

/// One SplitMix64 step: advances `state` and returns the next output.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A ChaCha8 generator keyed by four SplitMix64 outputs of `seed`, on stream 0.
pub fn rng_from_seed(seed: u64) -> ChaCha8Rng {
    let mut state = seed;
    let mut key = [0u8; 32];
    for chunk in key.chunks_exact_mut(8) {
        chunk.copy_from_slice(&splitmix64(&mut state).to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}

/// The generator of one augmentation stage of a slot (or pair) seed.
pub fn stage_rng(seed: u64, stage: Stage) -> ChaCha8Rng {
    let mut rng = rng_from_seed(seed);
    rng.set_stream(stage as u64);
    rng
}

/// Uniform in [0, 1) with 53 random bits.
pub fn unit_f64(rng: &mut impl RngCore) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Uniform in [lo, hi), computed as `lo + (hi - lo) * u` (Python's `random.uniform`).
pub fn uniform(rng: &mut impl RngCore, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * unit_f64(rng)
}

/// Uniform integer in `[lo, hi]` (both inclusive, like Python's `random.randint`).
/// Returns `lo` when `hi <= lo`.
pub fn randint(rng: &mut impl RngCore, lo: i64, hi: i64) -> i64 {
    if hi <= lo {
        return lo;
    }
    let range = (hi - lo) as u64 + 1;
    let threshold = range.wrapping_neg() % range;
    loop {
        let m = u128::from(rng.next_u64()) * u128::from(range);
        if (m as u64) >= threshold {
            return lo + (m >> 64) as i64;
        }
    }
}

/// Standard normal N(0, 1) by Box-Muller (one value per two uniforms).
pub fn normal(rng: &mut impl RngCore) -> f64 {
    let u1 = 1.0 - unit_f64(rng); // (0, 1]
    let u2 = unit_f64(rng);
    libm::sqrt(-2.0 * libm::log(u1)) * libm::cos(std::f64::consts::TAU * u2)
}

/// Gamma(shape, 1) by Marsaglia and Tsang (shape < 1 boosted by `U^(1/shape)`).
pub fn gamma(rng: &mut impl RngCore, shape: f64) -> f64 {
    if shape < 1.0 {
        let g = gamma(rng, shape + 1.0);
        let u = 1.0 - unit_f64(rng);
        return g * libm::pow(u, 1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / libm::sqrt(9.0 * d);
    loop {
        let x = normal(rng);
        let v = 1.0 + c * x;
        if v <= 0.0 {
            continue;
        }
        let v = v * v * v;
        let u = 1.0 - unit_f64(rng);
        if libm::log(u) < 0.5 * x * x + d - d * v + d * libm::log(v) {
            return d * v;
        }
    }
}

/// Beta(a, b) as X / (X + Y) with X ~ Gamma(a), Y ~ Gamma(b).
pub fn beta(rng: &mut impl RngCore, a: f64, b: f64) -> f64 {
    let x = gamma(rng, a);
    let y = gamma(rng, b);
    if x + y > 0.0 {
        x / (x + y)
    } else {
        0.5
    }
}

/// The random draws a parameter sampler makes, so that tests can replay recorded draws
/// (the reference fixtures monkeypatch Python's `random` with the same values).
pub trait Draws {
    /// Uniform in `[lo, hi)`.
    fn uniform(&mut self, lo: f64, hi: f64) -> f64;
    /// Uniform integer in `[lo, hi]`, inclusive.
    fn randint(&mut self, lo: i64, hi: i64) -> i64;
    /// Uniform in `[0, 1)` (Python's `random.random`).
    fn random(&mut self) -> f64;
    /// Fills `out` with N(0, 1) values (replayed draws fill zeros).
    fn normals(&mut self, out: &mut [f32]) {
        out.fill(0.0);
    }
}

impl Draws for ChaCha8Rng {
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        uniform(self, lo, hi)
    }
    fn randint(&mut self, lo: i64, hi: i64) -> i64 {
        randint(self, lo, hi)
    }
    fn random(&mut self) -> f64 {
        unit_f64(self)
    }
    fn normals(&mut self, out: &mut [f32]) {
        fill_normal_f32(self, out)
    }
}

/// Replays recorded unit draws `u` in [0, 1): `uniform = lo + (hi - lo) * u`,
/// `randint = lo + floor(u * (hi - lo + 1))`, `random = u`. Used by the fixture tests.
#[derive(Clone, Debug)]
pub struct ReplayDraws {
    units: Vec<f64>,
    next: usize,
}

impl ReplayDraws {
    /// Replays `units` in order; panics in tests if more draws are requested than recorded.
    pub fn new(units: Vec<f64>) -> Self {
        ReplayDraws { units, next: 0 }
    }
    /// How many draws were consumed.
    pub fn consumed(&self) -> usize {
        self.next
    }
    fn take(&mut self) -> f64 {
        let u = self.units.get(self.next).copied().unwrap_or(0.0);
        self.next += 1;
        u
    }
}

impl Draws for ReplayDraws {
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.take()
    }
    fn randint(&mut self, lo: i64, hi: i64) -> i64 {
        let u = self.take();
        lo + (u * (hi - lo + 1) as f64).floor() as i64
    }
    fn random(&mut self) -> f64 {
        self.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derive_seed_separates_domains_and_indices() {
        let a = derive_seed(1, Domain::Slot, 0, 5);
        assert_ne!(a, derive_seed(1, Domain::Pair, 0, 5));
        assert_ne!(a, derive_seed(1, Domain::Slot, 1, 5));
        assert_ne!(a, derive_seed(1, Domain::Slot, 0, 6));
        assert_ne!(a, derive_seed(2, Domain::Slot, 0, 5));
        assert_eq!(a, derive_seed(1, Domain::Slot, 0, 5));
    }

    #[test]
    fn splitmix_matches_reference_value() {
        // Reference: SplitMix64 with state 0 yields 0xE220A8397B1DCDAF first.
        let mut s = 0u64;
        assert_eq!(splitmix64(&mut s), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn stages_are_independent_streams() {
        let mut a = stage_rng(7, Stage::Crop);
        let mut b = stage_rng(7, Stage::Flip);
        assert_ne!(a.next_u64(), b.next_u64());
    }

    #[test]
    fn randint_is_inclusive_and_uniform() {
        let mut rng = rng_from_seed(3);
        let mut counts = [0usize; 5];
        for _ in 0..50_000 {
            let v = randint(&mut rng, 2, 6);
            counts[(v - 2) as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn normal_and_beta_moments() {
        let mut rng = rng_from_seed(11);
        let n = 100_000;
        let mut buf = vec![0f32; n];
        fill_normal_f32(&mut rng, &mut buf);
        let mean = buf.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        let var = buf.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(
            mean.abs() < 0.02 && (var - 1.0).abs() < 0.02,
            "{mean} {var}"
        );
        // Beta(0.8, 0.8): mean 0.5, variance a*b/((a+b)^2 (a+b+1)) = 0.64/(2.56*2.6).
        let xs: Vec<f64> = (0..n).map(|_| beta(&mut rng, 0.8, 0.8)).collect();
        let m = xs.iter().sum::<f64>() / n as f64;
        let v = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n as f64;
        assert!((m - 0.5).abs() < 0.01, "{m}");
        assert!((v - 0.64 / (2.56 * 2.6)).abs() < 0.005, "{v}");
        assert!(xs.iter().all(|x| (0.0..=1.0).contains(x)));
    }
}
