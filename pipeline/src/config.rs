//! Augmentation and epoch-plan configuration: DeiT defaults, TOML, timm-style arguments,
//! a canonical JSON form and its 64-bit hash (what a teacher cache is bound to).

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::error::ConfigError;

/// Version of the augmentation algorithms. Part of [`AugmentConfig::hash`]: bump it
/// whenever a change in code changes the views built from the same config and seeds.
pub const AUGMENT_ALGO_VERSION: &str = "deit-pipe-augment-v1";

/// DeiT's default RandAugment policy (timm `--aa`).
pub const DEIT_AUTO_AUGMENT: &str = "rand-m9-mstd0.5-inc1";

/// How the training crop is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CropMode {
    /// timm `RandomResizedCropAndInterpolation` (the ImageNet path).
    RandomResizedCrop,
    /// torchvision `RandomCrop(size, padding)` with zero padding (DeiT for inputs <= 32 px).
    RandomCropPad,
}

/// Resampling filter for crops and the eval resize.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Interpolation {
    /// PIL bicubic (a = -0.5, antialiased): fast_image_resize Catmull-Rom convolution.
    Bicubic,
    /// PIL bilinear (antialiased): fast_image_resize bilinear convolution.
    Bilinear,
}

/// RandomErasing fill mode (timm `--remode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EraseMode {
    /// Every erased value is N(0, 1) (DeiT default).
    Pixel,
    /// One N(0, 1) value per channel for the whole box.
    Rand,
    /// Zeros.
    Const,
}

/// Training crop settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CropConfig {
    /// Crop mode (`random_resized_crop`); `main.py` switches to `random_crop_pad` for
    /// inputs of 32 px or less, here only where a config leaves it unset
    /// ([`crate::crop_rule`]).
    pub mode: CropMode,
    /// RandomResizedCrop area range as fractions of the image (0.08, 1.0).
    pub scale: [f64; 2],
    /// RandomResizedCrop aspect range (3/4, 4/3).
    pub ratio: [f64; 2],
    /// Zero padding of RandomCrop (4).
    pub padding: u32,
    /// Resampling filter (bicubic).
    pub interpolation: Interpolation,
}

impl Default for CropConfig {
    fn default() -> Self {
        CropConfig {
            mode: CropMode::RandomResizedCrop,
            scale: [0.08, 1.0],
            ratio: [3.0 / 4.0, 4.0 / 3.0],
            padding: 4,
            interpolation: Interpolation::Bicubic,
        }
    }
}

/// RandomErasing settings (timm `--reprob/--remode/--recount`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EraseConfig {
    /// Probability of erasing a sample (0.25).
    pub prob: f64,
    /// Fill mode (pixel).
    pub mode: EraseMode,
    /// Number of boxes (1).
    pub count: u32,
    /// Box area range as fractions of the image (0.02, 1/3).
    pub area: [f64; 2],
    /// Minimum aspect ratio; the range is (min, 1/min) (0.3).
    pub min_aspect: f64,
}

impl Default for EraseConfig {
    fn default() -> Self {
        EraseConfig {
            prob: 0.25,
            mode: EraseMode::Pixel,
            count: 1,
            area: [0.02, 1.0 / 3.0],
            min_aspect: 0.3,
        }
    }
}

/// How Mixup/CutMix parameters are shared (timm `Mixup(mode=...)`, `--mixup-mode`). In
/// every mode a view is mixed with its plan partner (slots 2k and 2k+1), and every choice
/// is a function of the run seed, the epoch and the slot alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MixupMode {
    /// timm's default (`main.py`): one mode, lam and CutMix box per batch of
    /// `mix.batch_size` images, image i mixed with image B-1-i of its batch.
    Batch,
    /// One mode, lam and box per pair, both views mixed symmetrically (our default).
    #[default]
    Pair,
    /// One mode, lam and box per view, each mixed with its partner's un-mixed pixels.
    Elem,
}

impl MixupMode {
    /// Parses `batch`, `pair` or `elem` (`--mixup-mode`).
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        match s {
            "batch" => Ok(MixupMode::Batch),
            "pair" => Ok(MixupMode::Pair),
            "elem" => Ok(MixupMode::Elem),
            other => Err(ConfigError::Invalid(format!(
                "--mixup-mode: unknown mode '{other}' (batch, pair, elem)"
            ))),
        }
    }
}

/// Mixup / CutMix settings (timm `Mixup`; by default "pair" mode: every pair has its own lam).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MixConfig {
    /// Which views share a lam ([`MixupMode`], pair).
    pub mode: MixupMode,
    /// Batch mode: the images (consecutive plan slots, over all ranks and accumulation
    /// steps) that share one lam; a training config sets it to `data.batch_size` unless
    /// stated. 0 = unset. Unused in the other modes.
    pub batch_size: u32,
    /// Mixup Beta alpha (0.8); 0 disables Mixup.
    pub mixup_alpha: f64,
    /// CutMix Beta alpha (1.0); 0 disables CutMix.
    pub cutmix_alpha: f64,
    /// Probability that a pair is mixed at all (1.0).
    pub prob: f64,
    /// Probability of CutMix when both are enabled (0.5).
    pub switch_prob: f64,
    /// Label smoothing of the targets (0.1).
    pub label_smoothing: f64,
    /// Correct CutMix lam to the clipped box area (true).
    pub correct_lam: bool,
}

impl Default for MixConfig {
    fn default() -> Self {
        MixConfig {
            mode: MixupMode::Pair,
            batch_size: 0,
            mixup_alpha: 0.8,
            cutmix_alpha: 1.0,
            prob: 1.0,
            switch_prob: 0.5,
            label_smoothing: 0.1,
            correct_lam: true,
        }
    }
}

impl MixConfig {
    /// Whether any mixing happens.
    pub fn enabled(&self) -> bool {
        self.prob > 0.0 && (self.mixup_alpha > 0.0 || self.cutmix_alpha > 0.0)
    }

    /// Batch mode: the number of plan pairs that share one lam (`batch_size / 2`, at
    /// least 1); `None` in the other modes.
    pub fn pairs_per_lam(&self) -> Option<u64> {
        (self.mode == MixupMode::Batch).then(|| u64::from(self.batch_size / 2).max(1))
    }
}

/// The whole train/eval augmentation. Defaults are DeiT's (`main.py`, timm 1.0).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Output side in pixels (224).
    pub input_size: u32,
    /// Horizontal flip probability (0.5).
    pub hflip: f64,
    /// timm auto-augment string (`rand-m9-mstd0.5-inc1`); `None` (or "none") turns it off.
    pub auto_augment: Option<String>,
    /// Normalization mean per channel (ImageNet).
    pub mean: [f32; 3],
    /// Normalization std per channel (ImageNet).
    pub std: [f32; 3],
    /// Eval crop fraction: resize shorter side to floor(size / crop_pct) (0.875; 1 when a
    /// TOML states `crop.mode = "random_crop_pad"` without it). The eval uses it as written.
    pub eval_crop_pct: f64,
    /// Training crop.
    pub crop: CropConfig,
    /// RandomErasing.
    pub erasing: EraseConfig,
    /// Mixup / CutMix and label smoothing.
    pub mix: MixConfig,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            input_size: 224,
            hflip: 0.5,
            auto_augment: Some(DEIT_AUTO_AUGMENT.to_string()),
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            eval_crop_pct: 0.875,
            crop: CropConfig::default(),
            erasing: EraseConfig::default(),
            mix: MixConfig::default(),
        }
    }
}

#[derive(Serialize)]
struct Canonical<'a> {
    algo: &'a str,
    seed_scheme: &'a str,
    config: &'a AugmentConfig,
}

impl AugmentConfig {
    /// DeiT defaults for CIFAR-sized inputs (<= 32 px): `RandomCrop(size, padding=4)`
    /// instead of RandomResizedCrop and whole-image eval (`eval_crop_pct = 1`: `main.py`
    /// does no eval resize there), as DeiT's `build_transform`.
    pub fn small_image(input_size: u32) -> Self {
        let mut cfg = AugmentConfig {
            input_size,
            eval_crop_pct: 1.0,
            ..AugmentConfig::default()
        };
        cfg.crop.mode = CropMode::RandomCropPad;
        cfg
    }

    /// Parses TOML (all fields optional; missing ones take the DeiT default) and validates.
    ///
    /// Takes either the bare fields or a whole training recipe (`configs/*.toml`), whose
    /// `[augment]` table is then used and every other table ignored.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let table: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        let fields = match table.get("augment") {
            Some(toml::Value::Table(augment)) => augment.clone(),
            _ => table,
        };
        let explicit = crate::crop_rule::ExplicitKeys::from_augment_table(&fields);
        let mut cfg: AugmentConfig = fields
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        crate::crop_rule::apply_mode_defaults(&mut cfg, &explicit);
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and parses a TOML file (bare fields or a whole recipe, as [`Self::from_toml`]).
    pub fn from_toml_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = formats::open::read_text(path, formats::open::CONFIG)
            .map_err(|e| ConfigError::Io(path.display().to_string(), e.to_string()))?;
        Self::from_toml(&text).map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display())))
    }

    /// Serializes to TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// The RandAugment policy, or `None` when it is off.
    pub fn rand_augment(&self) -> Option<&str> {
        match self.auto_augment.as_deref() {
            None | Some("") | Some("none") => None,
            Some(s) => Some(s),
        }
    }

    /// Whether the small-image crop path (RandomCrop with padding) is used.
    pub fn is_small_image(&self) -> bool {
        self.crop.mode == CropMode::RandomCropPad
    }

    /// Eval resize target of the shorter side: `floor(input_size / eval_crop_pct)`.
    pub fn eval_resize(&self) -> u32 {
        (self.input_size as f64 / self.eval_crop_pct).floor() as u32
    }

    /// Applies one timm/DeiT command-line style argument (`aa`, `reprob`, `remode`,
    /// `recount`, `mixup`, `cutmix`, `mixup-prob`, `mixup-switch-prob`, `mixup-mode`,
    /// `smoothing`,
    /// `input-size`, `hflip`, `train-interpolation`, `eval-crop-ratio`, `scale`, `ratio`),
    /// leading dashes optional, e.g. `set_timm_arg("--aa", "rand-m9-mstd0.5-inc1")`.
    pub fn set_timm_arg(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let key = key.trim_start_matches('-').replace('_', "-");
        let num = |v: &str| -> Result<f64, ConfigError> {
            v.trim()
                .parse::<f64>()
                .map_err(|_| ConfigError::Invalid(format!("--{key}: '{v}' is not a number")))
        };
        let pair = |v: &str| -> Result<[f64; 2], ConfigError> {
            let parts: Vec<&str> = v.split([',', ' ']).filter(|s| !s.is_empty()).collect();
            match parts.as_slice() {
                [a, b] => Ok([num(a)?, num(b)?]),
                _ => Err(ConfigError::Invalid(format!(
                    "--{key}: expected two numbers, got '{v}'"
                ))),
            }
        };
        match key.as_str() {
            "aa" | "auto-augment" => {
                self.auto_augment = match value {
                    "" | "none" | "None" => None,
                    s => Some(s.to_string()),
                }
            }
            "reprob" => self.erasing.prob = num(value)?,
            "remode" => {
                self.erasing.mode = match value {
                    "pixel" => EraseMode::Pixel,
                    "rand" => EraseMode::Rand,
                    "const" => EraseMode::Const,
                    other => {
                        return Err(ConfigError::Invalid(format!(
                            "--remode: unknown mode '{other}' (pixel, rand, const)"
                        )))
                    }
                }
            }
            "recount" => self.erasing.count = num(value)? as u32,
            "mixup" => self.mix.mixup_alpha = num(value)?,
            "cutmix" => self.mix.cutmix_alpha = num(value)?,
            "mixup-prob" => self.mix.prob = num(value)?,
            "mixup-switch-prob" => self.mix.switch_prob = num(value)?,
            "mixup-mode" => self.mix.mode = MixupMode::parse(value)?,
            "smoothing" => self.mix.label_smoothing = num(value)?,
            "input-size" => {
                // The size only: the crop stays the config's (main.py's CIFAR rule for
                // configs that leave the crop unset is `crop_rule::cifar_rule`).
                self.input_size = num(value)? as u32;
            }
            "hflip" => self.hflip = num(value)?,
            "train-interpolation" => {
                self.crop.interpolation = match value {
                    "bicubic" => Interpolation::Bicubic,
                    "bilinear" => Interpolation::Bilinear,
                    other => {
                        return Err(ConfigError::Invalid(format!(
                            "--train-interpolation: '{other}' unsupported (bicubic, bilinear)"
                        )))
                    }
                }
            }
            "eval-crop-ratio" | "crop-pct" => self.eval_crop_pct = num(value)?,
            "scale" => self.crop.scale = pair(value)?,
            "ratio" => self.crop.ratio = pair(value)?,
            other => {
                return Err(ConfigError::Invalid(format!(
                    "unknown augmentation argument --{other}"
                )))
            }
        }
        self.validate()
    }

    /// Checks ranges; every message names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let prob = |name: &str, p: f64| -> Result<(), ConfigError> {
            if (0.0..=1.0).contains(&p) {
                Ok(())
            } else {
                Err(ConfigError::Invalid(format!(
                    "{name} = {p} is not a probability in [0, 1]"
                )))
            }
        };
        if self.input_size == 0 || self.input_size > 4096 {
            return bad(format!("input_size = {} out of 1..=4096", self.input_size));
        }
        prob("hflip", self.hflip)?;
        prob("erasing.prob", self.erasing.prob)?;
        prob("mix.prob", self.mix.prob)?;
        prob("mix.switch_prob", self.mix.switch_prob)?;
        prob("mix.label_smoothing", self.mix.label_smoothing)?;
        if self.mix.mode == MixupMode::Batch && self.mix.batch_size % 2 == 1 {
            return bad(format!(
                "mix.batch_size = {} must be even (whole pairs share a lam)",
                self.mix.batch_size
            ));
        }
        let [s0, s1] = self.crop.scale;
        if !(s0 > 0.0 && s0 <= s1 && s1 <= 1.0) {
            return bad(format!(
                "crop.scale = [{s0}, {s1}] must satisfy 0 < lo <= hi <= 1"
            ));
        }
        let [r0, r1] = self.crop.ratio;
        if !(r0 > 0.0 && r0 <= r1) {
            return bad(format!(
                "crop.ratio = [{r0}, {r1}] must satisfy 0 < lo <= hi"
            ));
        }
        let [a0, a1] = self.erasing.area;
        if !(a0 > 0.0 && a0 <= a1 && a1 <= 1.0) {
            return bad(format!(
                "erasing.area = [{a0}, {a1}] must satisfy 0 < lo <= hi <= 1"
            ));
        }
        if self.erasing.min_aspect.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            return bad(format!(
                "erasing.min_aspect = {} must be > 0",
                self.erasing.min_aspect
            ));
        }
        if self.erasing.count == 0 {
            return bad("erasing.count must be >= 1".to_string());
        }
        if !(self.mix.mixup_alpha >= 0.0 && self.mix.cutmix_alpha >= 0.0) {
            return bad("mix.mixup_alpha and mix.cutmix_alpha must be >= 0".to_string());
        }
        if !(self.eval_crop_pct > 0.0 && self.eval_crop_pct <= 1.0) {
            return bad(format!(
                "eval_crop_pct = {} out of (0, 1]",
                self.eval_crop_pct
            ));
        }
        if self
            .std
            .iter()
            .any(|&s| s.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater))
        {
            return bad(format!("std = {:?} must be positive", self.std));
        }
        if let Some(spec) = self.rand_augment() {
            crate::transforms::randaugment_hook::validate(spec)
                .map_err(|e| ConfigError::Invalid(format!("auto_augment = '{spec}': {e}")))?;
        }
        Ok(())
    }

    /// Canonical JSON: algorithm version, seed scheme and every field in a fixed order.
    pub fn canonical_json(&self) -> String {
        let c = Canonical {
            algo: AUGMENT_ALGO_VERSION,
            seed_scheme: crate::rng::SEED_SCHEME,
            config: self,
        };
        serde_json::to_string(&c).unwrap_or_default()
    }

    /// XXH3-64 of [`Self::canonical_json`].
    pub fn hash(&self) -> u64 {
        xxh3_64(self.canonical_json().as_bytes())
    }

    /// [`Self::hash`] as 16 lowercase hex digits.
    pub fn hash_hex(&self) -> String {
        format!("{:016x}", self.hash())
    }
}

/// How an epoch's slots are laid out (RASampler-like repeated augmentation).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlanConfig {
    /// Views per image (RASampler `num_repeats`, 3). 1 = plain shuffling.
    pub repeats: u32,
    /// Epoch length is `floor(N / num_samples_multiple) * num_samples_multiple` slots
    /// (DeiT: 256); 1 = no rounding. Rounded down to an even number (whole pairs).
    pub num_samples_multiple: u32,
}

impl Default for PlanConfig {
    fn default() -> Self {
        PlanConfig {
            repeats: 3,
            num_samples_multiple: 256,
        }
    }
}

impl PlanConfig {
    /// Checks ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.repeats == 0 {
            return Err(ConfigError::Invalid("plan.repeats must be >= 1".into()));
        }
        if self.num_samples_multiple == 0 {
            return Err(ConfigError::Invalid(
                "plan.num_samples_multiple must be >= 1 (1 = no rounding)".into(),
            ));
        }
        Ok(())
    }

    /// Parses TOML and validates.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let cfg: PlanConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_deit() {
        let c = AugmentConfig::default();
        assert_eq!(c.input_size, 224);
        assert_eq!(c.eval_resize(), 256);
        assert_eq!(c.rand_augment(), Some("rand-m9-mstd0.5-inc1"));
        assert_eq!(c.erasing.prob, 0.25);
        assert_eq!(c.mix.mixup_alpha, 0.8);
        assert_eq!(c.mix.cutmix_alpha, 1.0);
        assert_eq!(c.mix.switch_prob, 0.5);
        assert_eq!(c.mix.label_smoothing, 0.1);
        c.validate().unwrap();
    }

    #[test]
    fn toml_roundtrip_and_partial() {
        let c = AugmentConfig::from_toml("input_size = 192\n[erasing]\nprob = 0.0\n").unwrap();
        assert_eq!(c.input_size, 192);
        assert_eq!(c.erasing.prob, 0.0);
        assert_eq!(c.mix, MixConfig::default());
        let back = AugmentConfig::from_toml(&c.to_toml()).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.hash(), c.hash());
    }

    #[test]
    fn bad_toml_names_field() {
        let e = AugmentConfig::from_toml("hflip = 1.5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("hflip"), "{e}");
        let e = AugmentConfig::from_toml("[mix]\nalpha = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("alpha"), "{e}");
    }

    #[test]
    fn hash_changes_with_any_field() {
        let a = AugmentConfig::default();
        let mut b = a.clone();
        b.mix.switch_prob = 0.4;
        assert_ne!(a.hash(), b.hash());
        assert_eq!(a.hash_hex().len(), 16);
        assert!(a
            .canonical_json()
            .starts_with("{\"algo\":\"deit-pipe-augment-v1\""));
    }

    #[test]
    fn timm_args() {
        let mut c = AugmentConfig::default();
        c.set_timm_arg("--aa", "none").unwrap();
        assert_eq!(c.rand_augment(), None);
        c.set_timm_arg("--reprob", "0.5").unwrap();
        c.set_timm_arg("--input-size", "32").unwrap();
        // The size only: the crop stays the config's.
        assert_eq!(c.input_size, 32);
        assert!(!c.is_small_image());
        assert_eq!(c.eval_crop_pct, 0.875);
        assert_eq!(c.erasing.prob, 0.5);
        c.set_timm_arg("--scale", "0.2,1.0").unwrap();
        assert_eq!(c.crop.scale, [0.2, 1.0]);
        assert!(c.set_timm_arg("--remode", "weird").is_err());
        assert!(c.set_timm_arg("--bogus", "1").is_err());
    }

    #[test]
    fn small_image_preset() {
        let c = AugmentConfig::small_image(32);
        assert_eq!(c.crop.mode, CropMode::RandomCropPad);
        assert_eq!(c.crop.padding, 4);
        assert_ne!(c.hash(), AugmentConfig::default().hash());
    }

    #[test]
    fn plan_config() {
        let p = PlanConfig::from_toml("repeats = 1\nnum_samples_multiple = 2\n").unwrap();
        assert_eq!(p.repeats, 1);
        assert!(PlanConfig::from_toml("repeats = 0\n").is_err());
    }
}
