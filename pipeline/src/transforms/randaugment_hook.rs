//! The single call site of RandAugment (`crate::randaugment`, its own module): parse the
//! timm policy once, apply it per sample with the slot's RandAugment stream.

use image::RgbImage;
use rand_chacha::ChaCha8Rng;

use crate::randaugment::RandAugmentConfig;

/// A parsed RandAugment policy.
#[derive(Clone, Debug)]
pub struct RandAugment {
    cfg: RandAugmentConfig,
}

/// Checks a timm RandAugment string (e.g. `rand-m9-mstd0.5-inc1`).
pub fn validate(spec: &str) -> Result<(), String> {
    RandAugment::parse(spec).map(|_| ())
}

impl RandAugment {
    /// Parses a timm RandAugment string.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let cfg = RandAugmentConfig::parse_timm(spec).map_err(|e| e.to_string())?;
        cfg.validate().map_err(|e| e.to_string())?;
        Ok(RandAugment { cfg })
    }

    /// The parsed policy.
    pub fn config(&self) -> &RandAugmentConfig {
        &self.cfg
    }

    /// Applies the policy to one image.
    pub fn apply(&self, img: RgbImage, rng: &mut ChaCha8Rng) -> RgbImage {
        self.cfg.apply(img, rng)
    }
}
