//! Which crop a config runs when it does not say: DeiT `main.py`'s CIFAR rule and the
//! eval crop that goes with the small-image crop, applied only to keys a config leaves
//! unset, so a flag or a default never rewrites a value a config states.
//!
//! - A config (TOML) that sets `crop.mode = "random_crop_pad"` and no `eval_crop_pct`
//!   evaluates whole images (`eval_crop_pct = 1`, `main.py`'s small-image eval, which
//!   does no resize); one that sets both keeps both.
//! - `--input-size N` changes `input_size` only. When the config leaves `crop.mode` unset
//!   (a run from flags alone, or a TOML without that key) and N <= 32, `main.py`'s CIFAR
//!   rule applies: `crop.mode = "random_crop_pad"` (RandomCrop(N, padding 4)) and, unless
//!   stated, `eval_crop_pct = 1`. The values are written into the config (and so into a
//!   run's `config.toml`) and [`cifar_rule`] returns a line for the log.
//!
//! The eval transform always uses `eval_crop_pct` as written
//! ([`crate::transforms::eval::EvalTransform::from_config`]).

use crate::config::{AugmentConfig, CropMode};

/// Largest `--input-size` that `main.py`'s CIFAR rule switches to RandomCrop with padding.
pub const CIFAR_RULE_MAX_SIZE: u32 = 32;

/// Which of the keys that have derived defaults a config states (in its TOML, by `--set`
/// or by a flag). Where a config came from, not what it holds: every two values compare
/// equal, so configs that hold the same values are equal whatever their provenance.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExplicitKeys {
    /// `crop.mode` is stated.
    pub crop_mode: bool,
    /// `eval_crop_pct` is stated.
    pub eval_crop_pct: bool,
    /// `mix.batch_size` is stated (batch-mode Mixup: the images per lam).
    pub mix_batch_size: bool,
}

impl PartialEq for ExplicitKeys {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl ExplicitKeys {
    /// Every key stated (a config built in code, whose values are what it means).
    pub const ALL: ExplicitKeys = ExplicitKeys {
        crop_mode: true,
        eval_crop_pct: true,
        mix_batch_size: true,
    };

    /// The keys an augmentation table (`[augment]` of a recipe, or a bare augmentation
    /// TOML) states.
    pub fn from_augment_table(augment: &toml::Table) -> Self {
        let crop_mode = matches!(
            augment.get("crop"),
            Some(toml::Value::Table(crop)) if crop.contains_key("mode")
        );
        let mix_batch_size = matches!(
            augment.get("mix"),
            Some(toml::Value::Table(mix)) if mix.contains_key("batch_size")
        );
        ExplicitKeys {
            crop_mode,
            eval_crop_pct: augment.contains_key("eval_crop_pct"),
            mix_batch_size,
        }
    }

    /// Marks the key a `--set` path (`augment.crop.mode`, `augment.eval_crop_pct`,
    /// `augment.mix.batch_size`, or a whole `augment.crop` / `augment.mix` table) states.
    pub fn mark_set_path(&mut self, path: &str) {
        match path {
            "augment.crop.mode" | "augment.crop" => self.crop_mode = true,
            "augment.eval_crop_pct" => self.eval_crop_pct = true,
            "augment.mix.batch_size" | "augment.mix" => self.mix_batch_size = true,
            _ => {}
        }
    }
}

/// The eval crop a config that states `random_crop_pad` but no `eval_crop_pct` means:
/// whole images (1), `main.py`'s small-image eval.
pub fn apply_mode_defaults(cfg: &mut AugmentConfig, explicit: &ExplicitKeys) {
    if cfg.crop.mode == CropMode::RandomCropPad && !explicit.eval_crop_pct {
        cfg.eval_crop_pct = 1.0;
    }
}

/// `main.py`'s CIFAR rule after `--input-size`: when the config leaves `crop.mode` unset
/// and the size is at most [`CIFAR_RULE_MAX_SIZE`], switch to `random_crop_pad` and (unless
/// stated) `eval_crop_pct = 1`. Returns the log line saying what changed, `None` when the
/// rule does not apply (then nothing but the size changed).
pub fn cifar_rule(cfg: &mut AugmentConfig, explicit: &ExplicitKeys) -> Option<String> {
    if explicit.crop_mode || cfg.input_size > CIFAR_RULE_MAX_SIZE {
        return None;
    }
    cfg.crop.mode = CropMode::RandomCropPad;
    let eval = if explicit.eval_crop_pct {
        format!("eval_crop_pct stays {}", cfg.eval_crop_pct)
    } else {
        cfg.eval_crop_pct = 1.0;
        "augment.eval_crop_pct = 1 (whole images)".to_string()
    };
    Some(format!(
        "--input-size {size} <= {max} and the config sets no augment.crop.mode: main.py's \
         CIFAR rule, augment.crop.mode = \"random_crop_pad\" (RandomCrop({size}, padding {pad})), \
         {eval}; recorded in the run's config.toml (set augment.crop.mode to choose the crop)",
        size = cfg.input_size,
        max = CIFAR_RULE_MAX_SIZE,
        pad = cfg.crop.padding,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_only_for_unset_mode() {
        let t: toml::Table = toml::from_str("[crop]\nmode = \"random_resized_crop\"\n").unwrap();
        let explicit = ExplicitKeys::from_augment_table(&t);
        assert!(explicit.crop_mode && !explicit.eval_crop_pct);
        let mut c = AugmentConfig {
            input_size: 32,
            ..AugmentConfig::default()
        };
        assert_eq!(cifar_rule(&mut c, &explicit), None);
        assert_eq!(c.crop.mode, CropMode::RandomResizedCrop);
        assert_eq!(c.eval_crop_pct, 0.875);
        // Unset mode: the rule applies and says so.
        let line = cifar_rule(&mut c, &ExplicitKeys::default()).unwrap();
        assert!(line.contains("random_crop_pad"), "{line}");
        assert_eq!(
            (c.crop.mode, c.eval_crop_pct),
            (CropMode::RandomCropPad, 1.0)
        );
        // A stated eval crop is kept.
        let mut c = AugmentConfig {
            input_size: 24,
            eval_crop_pct: 0.9,
            ..AugmentConfig::default()
        };
        let keep = ExplicitKeys {
            eval_crop_pct: true,
            ..ExplicitKeys::default()
        };
        assert!(cifar_rule(&mut c, &keep).is_some());
        assert_eq!(
            (c.crop.mode, c.eval_crop_pct),
            (CropMode::RandomCropPad, 0.9)
        );
        // Above 32 px nothing changes.
        let mut c = AugmentConfig {
            input_size: 48,
            ..AugmentConfig::default()
        };
        assert_eq!(cifar_rule(&mut c, &ExplicitKeys::default()), None);
        assert_eq!(
            c,
            AugmentConfig {
                input_size: 48,
                ..AugmentConfig::default()
            }
        );
    }
}
