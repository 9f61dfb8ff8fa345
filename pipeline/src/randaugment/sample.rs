//! The random draws of [`RandAugmentConfig::apply`]: a fixed, documented sequence of
//! `next_u64` calls, so the same generator state always gives the same ops and bytes.
//!
//! Per layer `l` in `0..num_ops`, exactly five `u64` are drawn, in this order, whatever
//! the outcome (so `apply` always consumes `5 * num_ops` values):
//! 1. `op`: index `(u * 15) >> 64` (128-bit product) into [`Op::INCREASING`] or
//!    [`Op::STANDARD`] (timm: `np.random.choice(ops, n, replace=True)`);
//! 2. `gate`: `unit(u) < prob` applies the op (timm: skip if `random() > prob`);
//! 3. and 4. `g1`, `g2`: magnitude noise. Gaussian (mstd in (0, 100]):
//!    `m = magnitude + mstd * sqrt(-2 ln(1 - unit(g1))) * cos(2π unit(g2))` (Box-Muller,
//!    `libm`, identical bits on every platform); uniform (mstd > 100): `m = magnitude * unit(g1)`;
//!    mstd <= 0: `m = magnitude`. Then `m = clamp(m, 0, magnitude_max)` and the op gets
//!    the fraction `m / 10` (timm's `_LEVEL_DENOM`);
//! 5. `sign`: `unit(u) >= 0.5` negates the op's argument (timm's `_randomly_negate`:
//!    `random() > 0.5`); ignored by ops without a sign.
//!
//! `unit(u) = (u >> 11) / 2^53` in [0, 1) (the convention of `pipeline::rng`). The
//! distribution is timm's; the stream of course is not Python's (different generator).

use image::RgbImage;
use rand_chacha::rand_core::RngCore;
use rand_chacha::ChaCha8Rng;

use super::config::RandAugmentConfig;
use super::ops::{apply_op_owned, Op};

/// timm's `_LEVEL_DENOM`: magnitude / 10 is the fraction the level functions scale.
pub const LEVEL_DENOM: f64 = 10.0;

/// `u64` values `apply` draws per layer.
pub const DRAWS_PER_LAYER: usize = 5;

/// What one layer of RandAugment drew.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerDraw {
    /// The op.
    pub op: Op,
    /// Whether the op is applied (probability `prob`).
    pub applied: bool,
    /// The clipped magnitude on the 0..10 scale (drawn even when not applied).
    pub magnitude: f64,
    /// The sign draw (used only by ops with a sign).
    pub negate: bool,
}

impl LayerDraw {
    /// Magnitude fraction passed to the op (`magnitude / 10`).
    pub fn magnitude_frac(&self) -> f64 {
        self.magnitude / LEVEL_DENOM
    }
}

fn unit(u: u64) -> f64 {
    (u >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

impl RandAugmentConfig {
    /// The op set this config draws from.
    pub fn ops(&self) -> &'static [Op; 15] {
        if self.increasing {
            &Op::INCREASING
        } else {
            &Op::STANDARD
        }
    }

    /// Draws the layers (module docs of `sample` give the exact sequence); consumes
    /// exactly `5 * num_ops` `u64` from `rng`.
    pub fn sample(&self, rng: &mut ChaCha8Rng) -> Vec<LayerDraw> {
        let ops = self.ops();
        let mean = f64::from(self.magnitude);
        let std = f64::from(self.magnitude_std);
        let max = f64::from(self.magnitude_max);
        let prob = f64::from(self.prob);
        (0..self.num_ops)
            .map(|_| {
                let op = ops[((u128::from(rng.next_u64()) * ops.len() as u128) >> 64) as usize];
                let applied = unit(rng.next_u64()) < prob;
                let (g1, g2) = (unit(rng.next_u64()), unit(rng.next_u64()));
                let negate = unit(rng.next_u64()) >= 0.5;
                let raw = if self.uniform_magnitude() {
                    mean * g1
                } else if std > 0.0 {
                    let z = libm::sqrt(-2.0 * libm::log(1.0 - g1))
                        * libm::cos(std::f64::consts::TAU * g2);
                    mean + std * z
                } else {
                    mean
                };
                // max(0, min(m, upper)) as timm; NaN (invalid config) becomes 0.
                let magnitude = if raw.is_nan() {
                    0.0
                } else {
                    raw.min(max).max(0.0)
                };
                LayerDraw {
                    op,
                    applied,
                    magnitude,
                    negate,
                }
            })
            .collect()
    }

    /// Applies the drawn layers in order to `img` (ops not `applied` are skipped).
    pub fn apply_layers(&self, img: RgbImage, layers: &[LayerDraw]) -> RgbImage {
        layers.iter().filter(|l| l.applied).fold(img, |img, l| {
            apply_op_owned(img, l.op, l.magnitude_frac(), l.negate, self.fill)
        })
    }

    /// timm's `RandAugment.__call__`: draws `num_ops` ops with replacement, each applied
    /// with probability `prob` at a noisy magnitude, PIL semantics. Same generator state,
    /// same output bytes; consumes exactly `5 * num_ops` `u64` (see the `sample` module).
    pub fn apply(&self, img: RgbImage, rng: &mut ChaCha8Rng) -> RgbImage {
        let layers = self.sample(rng);
        self.apply_layers(img, &layers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    fn draws(cfg: &RandAugmentConfig, images: usize, seed: u64) -> Vec<LayerDraw> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..images).flat_map(|_| cfg.sample(&mut rng)).collect()
    }

    fn mean_std(v: &[f64]) -> (f64, f64) {
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
        (mean, var.sqrt())
    }

    #[test]
    fn gaussian_magnitude_noise() {
        // m5 keeps the noise 10 sigma away from both clips: mean 5, std 0.5.
        let cfg = RandAugmentConfig {
            magnitude: 5.0,
            ..Default::default()
        };
        let d = draws(&cfg, 10_000, 1);
        let m: Vec<f64> = d.iter().map(|l| l.magnitude).collect();
        let (mean, std) = mean_std(&m);
        // 20k draws: s.e. of the mean 0.0035, of the std ~0.0025
        assert!((mean - 5.0).abs() < 0.02, "mean {mean}");
        assert!((std - 0.5).abs() < 0.02, "std {std}");
        // roughly normal: ~68.3% within one std
        let within = m.iter().filter(|&&x| (x - 5.0).abs() < 0.5).count() as f64 / m.len() as f64;
        assert!((within - 0.6827).abs() < 0.015, "within 1 sd: {within}");
    }

    #[test]
    fn deit_default_clips_at_ten() {
        let d = draws(&RandAugmentConfig::default(), 10_000, 2);
        assert!(d.iter().all(|l| (0.0..=10.0).contains(&l.magnitude)));
        // P(N(9, 0.5) > 10) = P(z > 2) = 0.02275; s.e. over 20k draws is 0.001
        let at_max = d.iter().filter(|l| l.magnitude == 10.0).count() as f64 / d.len() as f64;
        assert!((at_max - 0.02275).abs() < 0.005, "fraction at 10: {at_max}");
    }

    #[test]
    fn uniform_magnitude_for_mstd_over_100() {
        let cfg = RandAugmentConfig::parse_timm("rand-m9-mstd101-inc1").unwrap();
        let d = draws(&cfg, 10_000, 3);
        let m: Vec<f64> = d.iter().map(|l| l.magnitude).collect();
        assert!(m.iter().all(|&x| (0.0..9.0).contains(&x)));
        let (mean, std) = mean_std(&m);
        assert!((mean - 4.5).abs() < 0.06, "mean {mean}");
        assert!((std - 9.0 / 12f64.sqrt()).abs() < 0.05, "std {std}");
    }

    #[test]
    fn no_noise_without_mstd() {
        let cfg = RandAugmentConfig::parse_timm("rand-m7-n3").unwrap();
        let d = draws(&cfg, 100, 4);
        assert_eq!(d.len(), 300);
        assert!(d.iter().all(|l| l.magnitude == 7.0));
    }

    #[test]
    fn ops_uniform_gate_and_sign_fair() {
        let cfg = RandAugmentConfig::default();
        let d = draws(&cfg, 15_000, 5);
        let n = d.len() as f64;
        let expected = n / 15.0;
        let chi2: f64 = Op::INCREASING
            .iter()
            .map(|op| {
                let k = d.iter().filter(|l| l.op == *op).count() as f64;
                (k - expected) * (k - expected) / expected
            })
            .sum();
        // chi-square with 14 dof: P(> 45) ~ 4e-5
        assert!(chi2 < 45.0, "op frequencies chi2 {chi2}");
        let applied = d.iter().filter(|l| l.applied).count() as f64 / n;
        assert!((applied - 0.5).abs() < 0.015, "applied {applied}");
        let negated = d.iter().filter(|l| l.negate).count() as f64 / n;
        assert!((negated - 0.5).abs() < 0.015, "negated {negated}");
        let std_cfg = RandAugmentConfig {
            increasing: false,
            ..cfg
        };
        assert!(draws(&std_cfg, 1000, 6)
            .iter()
            .all(|l| Op::STANDARD.contains(&l.op)));
    }

    fn test_image() -> RgbImage {
        RgbImage::from_fn(37, 29, |x, y| {
            image::Rgb([(x * 7) as u8, (y * 9) as u8, ((x * y) % 251) as u8])
        })
    }

    #[test]
    fn same_seed_same_bytes_and_fixed_consumption() {
        let cfg = RandAugmentConfig {
            prob: 1.0,
            ..Default::default()
        };
        let img = test_image();
        let mut distinct = std::collections::HashSet::new();
        for seed in 0..40u64 {
            let mut r1 = ChaCha8Rng::seed_from_u64(seed);
            let mut r2 = ChaCha8Rng::seed_from_u64(seed);
            let a = cfg.apply(img.clone(), &mut r1);
            let b = cfg.apply(img.clone(), &mut r2);
            assert_eq!(a, b, "seed {seed}");
            distinct.insert(a.into_raw());
            // apply consumed exactly 5 * num_ops u64
            let mut r3 = ChaCha8Rng::seed_from_u64(seed);
            for _ in 0..DRAWS_PER_LAYER * cfg.num_ops {
                r3.next_u64();
            }
            assert_eq!(r1.next_u64(), r3.next_u64(), "seed {seed}");
        }
        assert!(
            distinct.len() > 30,
            "only {} distinct outputs of 40 seeds",
            distinct.len()
        );
    }

    #[test]
    fn apply_is_sample_then_apply_layers() {
        let cfg = RandAugmentConfig::default();
        let img = test_image();
        for seed in 0..20u64 {
            let layers = cfg.sample(&mut ChaCha8Rng::seed_from_u64(seed));
            let expect = layers
                .iter()
                .filter(|l| l.applied)
                .fold(img.clone(), |im, l| {
                    super::super::ops::apply_op_f64(
                        &im,
                        l.op,
                        l.magnitude / 10.0,
                        l.negate,
                        cfg.fill,
                    )
                });
            assert_eq!(
                cfg.apply(img.clone(), &mut ChaCha8Rng::seed_from_u64(seed)),
                expect
            );
        }
        let never = RandAugmentConfig { prob: 0.0, ..cfg };
        assert_eq!(
            never.apply(img.clone(), &mut ChaCha8Rng::seed_from_u64(9)),
            img
        );
    }
}
