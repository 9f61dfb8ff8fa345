//! The command-line flags that decide which views the pipeline builds from the data, and
//! so bind a teacher cache: shared by `deit-pipe train` and `deit-pipe teacher-cache`, so
//! a cache is filled with the same flags the student will be trained with.

use clap::Args as ClapArgs;
use trainer::train::config::Overrides;

/// Augmentation, plan and seed overrides (named as the official DeiT `main.py` flags).
#[derive(ClapArgs, Debug, Clone, Default)]
pub struct ViewArgs {
    /// Input size in pixels.
    #[arg(long)]
    pub input_size: Option<u32>,
    /// Label smoothing.
    #[arg(long)]
    pub smoothing: Option<f64>,
    /// Mixup alpha (0: off).
    #[arg(long)]
    pub mixup: Option<f64>,
    /// CutMix alpha (0: off).
    #[arg(long)]
    pub cutmix: Option<f64>,
    /// Probability of mixing a pair.
    #[arg(long)]
    pub mixup_prob: Option<f64>,
    /// Probability of CutMix when both are on.
    #[arg(long)]
    pub mixup_switch_prob: Option<f64>,
    /// How Mixup/CutMix parameters are shared (timm's Mixup mode): batch (one lam and
    /// box per batch of augment.mix.batch_size images, default data.batch_size; image i
    /// mixed with image B-1-i: main.py's), pair (one per pair; the default) or elem (one
    /// per image).
    #[arg(long, value_name = "MODE")]
    pub mixup_mode: Option<String>,
    /// Random erasing probability.
    #[arg(long)]
    pub reprob: Option<f64>,
    /// RandAugment policy (timm string) or none.
    #[arg(long)]
    pub aa: Option<String>,
    /// Repeated augmentation on (x3).
    #[arg(long, conflicts_with = "no_repeated_aug")]
    pub repeated_aug: bool,
    /// Repeated augmentation off.
    #[arg(long)]
    pub no_repeated_aug: bool,
    /// Random erasing mode: pixel (DeiT's), rand or const.
    #[arg(long, value_name = "MODE")]
    pub remode: Option<String>,
    /// Random erasing count per image.
    #[arg(long)]
    pub recount: Option<u32>,
    /// Training crop interpolation: bicubic (DeiT's) or bilinear.
    #[arg(long, value_name = "NAME")]
    pub train_interpolation: Option<String>,
    /// Eval center-crop ratio (DeiT's 0.875): resize to size / ratio, crop size.
    #[arg(long, value_name = "RATIO")]
    pub eval_crop_ratio: Option<f64>,
    /// Colour jitter (main.py --color-jitter). There is no ColorJitter here: with
    /// RandAugment on, timm ignores this flag too and any value is accepted; with --aa
    /// none only 0 is.
    #[arg(long, value_name = "F")]
    pub color_jitter: Option<f64>,
    /// Seed of every random choice.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Override any config field: section.key=value (TOML value), repeatable.
    #[arg(long, value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

impl ViewArgs {
    /// `o` with these flags' fields filled in.
    pub fn add_to(&self, o: Overrides) -> Overrides {
        Overrides {
            input_size: self.input_size,
            smoothing: self.smoothing,
            mixup: self.mixup,
            cutmix: self.cutmix,
            mixup_prob: self.mixup_prob,
            mixup_switch_prob: self.mixup_switch_prob,
            mixup_mode: self.mixup_mode.clone(),
            reprob: self.reprob,
            aa: self.aa.clone(),
            repeated_aug: match (self.repeated_aug, self.no_repeated_aug) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
            seed: self.seed,
            remode: self.remode.clone(),
            recount: self.recount,
            train_interpolation: self.train_interpolation.clone(),
            eval_crop_ratio: self.eval_crop_ratio,
            color_jitter: self.color_jitter,
            set: self.set.clone(),
            ..o
        }
    }
}
