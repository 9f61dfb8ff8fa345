//! The model and eval-transform flags `predict` and `eval` share: a timm name with
//! shape flags for bare weight files (as `timm.create_model(name, **kwargs)`), and
//! timm's `--crop-pct` / `--interpolation`.

use pipeline::transforms::pillow_resize::PilFilter;
use trainer::train::model_source::ShapeFlags;

/// Model and eval-transform flags.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ModelArgs {
    /// timm model name (deit_tiny_distilled_patch16_224, deit_small_patch16_224,
    /// deit_base_patch16_384, resnet50, regnety_160, resnet_small, ...), or `deit` with
    /// --patch-size --embed-dim --depth --num-heads for free dimensions. Default: the
    /// model of the run the weights belong to (its config.toml), else read from DeiT
    /// weights (--num-heads needed unless they are a timm preset).
    #[arg(long)]
    pub model: Option<String>,
    /// Input image size (default: the run's, else the model's; a DeiT's pos_embed is
    /// resampled to it). At most 4096 (docs/LIMITS.md).
    #[arg(long, alias = "input-size", value_parser = parse_img_size)]
    pub img_size: Option<usize>,
    /// DeiT patch size (overrides the model name's).
    #[arg(long)]
    pub patch_size: Option<usize>,
    /// DeiT embedding width (overrides the model name's).
    #[arg(long)]
    pub embed_dim: Option<usize>,
    /// DeiT number of blocks (overrides the model name's).
    #[arg(long)]
    pub depth: Option<usize>,
    /// DeiT attention heads (overrides the model name's).
    #[arg(long)]
    pub num_heads: Option<usize>,
    /// DeiT MLP hidden width over the embedding width (overrides the model name's).
    #[arg(long)]
    pub mlp_ratio: Option<usize>,
    /// Number of classes (default: the run's, else the rows of the weights' head).
    #[arg(long)]
    pub num_classes: Option<usize>,
    /// Eval crop fraction: the shorter side is resized to floor(size / crop_pct), then
    /// centre-cropped (timm's crop_pct). Default: the run's eval_crop_pct (as its
    /// config.toml records it), else the model's timm
    /// pretrained config: 0.9 for DeiT (1.0 at 384 px), 0.95 for ResNet-18..152, 0.875 to
    /// 0.965 for RegNetY, 0.875 for resnet_small/resnet_tiny. The official DeiT main.py
    /// evaluates at 0.875.
    #[arg(long, alias = "eval-crop-ratio")]
    pub crop_pct: Option<f64>,
    /// Resize filter, Pillow's: bicubic, bilinear, lanczos, box or hamming (default:
    /// bicubic, the run's and the timm configs' of these models).
    #[arg(long, value_parser = parse_filter)]
    pub interpolation: Option<PilFilter>,
}

fn parse_filter(s: &str) -> Result<PilFilter, String> {
    PilFilter::parse(s)
}

impl ModelArgs {
    /// The shape flags.
    pub fn shape(&self) -> ShapeFlags {
        ShapeFlags {
            img_size: self.img_size,
            patch_size: self.patch_size,
            embed_dim: self.embed_dim,
            depth: self.depth,
            num_heads: self.num_heads,
            mlp_ratio: self.mlp_ratio,
            num_classes: self.num_classes,
        }
    }
}

/// `--img-size`: 1 to [`trainer::models::spec::MAX_IMG_SIZE`] pixels.
fn parse_img_size(s: &str) -> Result<usize, String> {
    let max = trainer::models::spec::MAX_IMG_SIZE;
    match s.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        Ok(n) => Err(format!(
            "image size {n} is outside 1..={max} (docs/LIMITS.md)"
        )),
        Err(e) => Err(e.to_string()),
    }
}
