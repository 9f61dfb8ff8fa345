//! Model descriptions: timm model names and free dimensions.

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// What to build: an architecture, its class count and its stochastic depth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// timm model name, or `deit_custom` for free DeiT dimensions.
    pub name: String,
    /// Architecture and its dimensions.
    pub arch: Arch,
    /// Output classes (1000 for the ImageNet names).
    pub num_classes: usize,
    /// Maximal stochastic depth rate (rate of block i = linspace(0, drop_path, depth)[i]).
    pub drop_path: f64,
}

/// Largest image side a model may be built or evaluated at (pixels): 4096 is 18x DeiT's
/// 224 and one 4096^2 RGB f32 image is already 192 MiB.
pub const MAX_IMG_SIZE: usize = 4096;
/// Most DeiT tokens (patches + prefix): one head's attention matrix for one image is
/// tokens^2 x 4 bytes, 1 GiB at this limit.
pub const MAX_TOKENS: usize = 16_386;
/// Widest DeiT token (ViT-22B uses 6144).
pub const MAX_EMBED_DIM: usize = 16_384;
/// Deepest DeiT (ViT-22B has 48 blocks).
pub const MAX_DEPTH: usize = 1024;
/// Largest MLP ratio (timm's models use 4; 0 cannot be built).
pub const MAX_MLP_RATIO: usize = 64;
/// Most output classes (the shard format's own class limit).
pub const MAX_CLASSES: usize = 1_000_000;
/// Most parameters: 4e9 is 16 GB of f32 weights, 64 GB with AdamW state and gradients,
/// four times ViT-g (1.0e9).
pub const MAX_PARAMS: u64 = 4_000_000_000;

/// Architecture families.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Arch {
    /// ViT / DeiT (with or without the distillation token).
    Deit(DeitConfig),
    /// ResNet (timm / torchvision layout).
    ResNet(ResNetConfig),
    /// RegNetY (timm layout).
    RegNet(RegNetConfig),
}

/// DeiT dimensions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeitConfig {
    /// Input image side in pixels (square).
    pub img_size: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Token width D.
    pub embed_dim: usize,
    /// Number of transformer blocks.
    pub depth: usize,
    /// Attention heads (D must divide by it).
    pub num_heads: usize,
    /// MLP hidden width = mlp_ratio * D.
    pub mlp_ratio: usize,
    /// With the distillation token and `head_dist`.
    pub distilled: bool,
}

impl DeitConfig {
    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.img_size / self.patch_size
    }

    /// Number of prefix tokens (cls, and dist when distilled).
    pub fn num_prefix_tokens(&self) -> usize {
        if self.distilled {
            2
        } else {
            1
        }
    }
}

/// ResNet residual block type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResNetBlock {
    /// Two 3x3 convolutions (ResNet-18/34), expansion 1.
    Basic,
    /// 1x1, 3x3 (stride here, v1.5), 1x1 convolutions (ResNet-50+), expansion 4.
    Bottleneck,
}

/// ResNet dimensions (timm's `ResNet(block, layers, channels)`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResNetConfig {
    /// Block type.
    pub block: ResNetBlock,
    /// Blocks per stage.
    pub layers: [usize; 4],
    /// Planes per stage (output = planes * expansion).
    pub channels: [usize; 4],
    /// Stem output channels (64 in timm / torchvision).
    pub stem_width: usize,
    /// CIFAR-style stem for 32-64 px images: 3x3 stride-1 conv and no max pool.
    pub small_stem: bool,
}

/// RegNet dimensions (timm's `RegNetCfg`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegNetConfig {
    /// Number of blocks.
    pub depth: usize,
    /// Initial width.
    pub w0: usize,
    /// Width slope.
    pub wa: f64,
    /// Width multiplier.
    pub wm: f64,
    /// Group width of the 3x3 convolutions.
    pub group_size: usize,
    /// Squeeze-excitation ratio of the block input width (0 = RegNetX).
    pub se_ratio: f64,
    /// Stem width.
    pub stem_width: usize,
}

/// One RegNet stage after width/group adjustment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegStage {
    /// Output width.
    pub width: usize,
    /// Blocks.
    pub depth: usize,
    /// Group width of the 3x3 convolution (groups = width / group_width).
    pub group_width: usize,
}

impl RegNetConfig {
    /// timm's `regnety_*` presets.
    pub fn regnety(size: &str) -> Option<Self> {
        let (w0, wa, wm, group_size, depth) = match size {
            "002" => (24, 36.44, 2.49, 8, 13),
            "004" => (48, 27.89, 2.09, 8, 16),
            "006" => (48, 32.54, 2.32, 16, 15),
            "008" => (56, 38.84, 2.4, 16, 14),
            "016" => (48, 20.71, 2.65, 24, 27),
            "032" => (80, 42.63, 2.66, 24, 21),
            "040" => (96, 31.41, 2.24, 64, 22),
            "064" => (112, 33.22, 2.27, 72, 25),
            "080" => (192, 76.82, 2.19, 56, 17),
            "120" => (168, 73.36, 2.37, 112, 19),
            "160" => (200, 106.23, 2.48, 112, 18),
            "320" => (232, 115.89, 2.53, 232, 20),
            _ => return None,
        };
        Some(Self {
            depth,
            w0,
            wa,
            wm,
            group_size,
            se_ratio: 0.25,
            stem_width: 32,
        })
    }

    /// Per-stage widths, depths and group widths exactly as timm computes them
    /// (`generate_regnet` in float32, then `adjust_widths_groups_comp`).
    pub fn stages(&self) -> Vec<RegStage> {
        let w0 = self.w0 as f32;
        let wa = self.wa as f32;
        let log_wm = (self.wm).ln();
        let mut widths: Vec<usize> = Vec::with_capacity(self.depth);
        for i in 0..self.depth {
            let cont = i as f32 * wa + w0;
            let exp = ((cont / w0).ln() / log_wm as f32).round_ties_even();
            let w = (w0 * (self.wm as f32).powf(exp) / 8.0).round_ties_even() * 8.0;
            widths.push(w as usize);
        }
        // torch.unique: sorted unique widths with counts.
        let mut uniq: Vec<(usize, usize)> = Vec::new();
        let mut sorted = widths.clone();
        sorted.sort_unstable();
        for w in sorted {
            match uniq.last_mut() {
                Some((lw, c)) if *lw == w => *c += 1,
                _ => uniq.push((w, 1)),
            }
        }
        uniq.into_iter()
            .map(|(w, depth)| {
                let g = self.group_size.min(w);
                // quantize_float(w, g) = int(round(w / g) * g) (Python banker's rounding)
                let q = ((w as f64 / g as f64).round_ties_even() * g as f64) as usize;
                RegStage {
                    width: q,
                    depth,
                    group_width: g,
                }
            })
            .collect()
    }
}

impl ModelSpec {
    /// Parses a timm model name: `deit_{tiny,small,base}[_distilled]_patch{P}_{IMG}`,
    /// `deit_{tiny,small,base}` (short for the distilled 224 px student), `resnet18`,
    /// `resnet34`, `resnet50`, `resnet101`, `resnet152`, `regnety_{002..320}`, and
    /// `resnet_small` (our CIFAR-style ResNet-18 for 32-64 px images: 3x3 stem, no max pool)
    /// and `resnet_tiny` (the same at quarter width, 16-32-64-128 channels: 1/16 of the
    /// compute, a teacher that trains in minutes on a CPU).
    /// Classes default to 1000 (10 for the small-image ResNets), drop path to 0.
    pub fn parse(name: &str) -> anyhow::Result<Self> {
        let arch = if let Some(rest) = name.strip_prefix("deit_") {
            parse_deit(rest).with_context(|| format!("unknown DeiT model name {name:?}"))?
        } else if let Some(size) = name.strip_prefix("regnety_") {
            Arch::RegNet(RegNetConfig::regnety(size).with_context(|| {
                format!("unknown RegNetY model {name:?} (known: regnety_002/004/006/008/016/032/040/064/080/120/160/320)")
            })?)
        } else {
            let (block, layers, small, width) = match name {
                "resnet18" => (ResNetBlock::Basic, [2, 2, 2, 2], false, 64),
                "resnet34" => (ResNetBlock::Basic, [3, 4, 6, 3], false, 64),
                "resnet50" => (ResNetBlock::Bottleneck, [3, 4, 6, 3], false, 64),
                "resnet101" => (ResNetBlock::Bottleneck, [3, 4, 23, 3], false, 64),
                "resnet152" => (ResNetBlock::Bottleneck, [3, 8, 36, 3], false, 64),
                "resnet_small" => (ResNetBlock::Basic, [2, 2, 2, 2], true, 64),
                "resnet_tiny" => (ResNetBlock::Basic, [2, 2, 2, 2], true, 16),
                _ => bail!(
                    "unknown model name {name:?}; known: deit_{{tiny,small,base}}[_distilled]_patch16_224, \
                     resnet18/34/50/101/152, resnet_small, resnet_tiny, regnety_002..regnety_320"
                ),
            };
            Arch::ResNet(ResNetConfig {
                block,
                layers,
                channels: [width, 2 * width, 4 * width, 8 * width],
                stem_width: width,
                small_stem: small,
            })
        };
        let num_classes = if small_image_resnet(name) { 10 } else { 1000 };
        Ok(Self {
            name: name.to_string(),
            arch,
            num_classes,
            drop_path: 0.0,
        })
    }

    /// A DeiT with free dimensions (named `deit_custom`).
    pub fn deit(cfg: DeitConfig, num_classes: usize, drop_path: f64) -> Self {
        Self {
            name: "deit_custom".into(),
            arch: Arch::Deit(cfg),
            num_classes,
            drop_path,
        }
    }

    /// Refuses dimensions no machine can build, naming the field and the limit, before
    /// any tensor is allocated (issue 25): zero sizes, image sides over [`MAX_IMG_SIZE`],
    /// DeiT token counts over [`MAX_TOKENS`], widths over [`MAX_EMBED_DIM`], depths over
    /// [`MAX_DEPTH`], MLP ratios over [`MAX_MLP_RATIO`], classes over [`MAX_CLASSES`] and
    /// models over [`MAX_PARAMS`] parameters. The reasons are in `docs/LIMITS.md`.
    pub fn check_limits(&self) -> anyhow::Result<()> {
        let field = |name: &str, v: usize, lo: usize, hi: usize| -> anyhow::Result<()> {
            if v < lo || v > hi {
                bail!("model.{name} = {v} is outside {lo}..={hi} (docs/LIMITS.md)");
            }
            Ok(())
        };
        field("num_classes", self.num_classes, 1, MAX_CLASSES)?;
        if !(0.0..1.0).contains(&self.drop_path) {
            bail!("model.drop_path = {} is outside [0, 1)", self.drop_path);
        }
        if let Arch::Deit(c) = &self.arch {
            field("img_size", c.img_size, 1, MAX_IMG_SIZE)?;
            field("patch_size", c.patch_size, 1, c.img_size)?;
            field("embed_dim", c.embed_dim, 1, MAX_EMBED_DIM)?;
            field("depth", c.depth, 1, MAX_DEPTH)?;
            field("num_heads", c.num_heads, 1, c.embed_dim)?;
            field("mlp_ratio", c.mlp_ratio, 1, MAX_MLP_RATIO)?;
            let tokens = c.grid() * c.grid() + c.num_prefix_tokens();
            if tokens > MAX_TOKENS {
                bail!(
                    "model: img_size {} / patch_size {} gives {tokens} tokens, over the limit \
                     of {MAX_TOKENS} (docs/LIMITS.md)",
                    c.img_size,
                    c.patch_size
                );
            }
            // Per block: qkv + proj (4 D^2) and the MLP (2 r D^2); embeddings and heads.
            let d = c.embed_dim as u128;
            let params = c.depth as u128 * (4 + 2 * c.mlp_ratio as u128) * d * d
                + (c.patch_size * c.patch_size * 3) as u128 * d
                + tokens as u128 * d
                + 2 * d * self.num_classes as u128;
            if params > MAX_PARAMS as u128 {
                bail!(
                    "model: depth {} x embed_dim {} x mlp_ratio {} is about {params} parameters, \
                     over the limit of {MAX_PARAMS} (docs/LIMITS.md)",
                    c.depth,
                    c.embed_dim,
                    c.mlp_ratio
                );
            }
        }
        Ok(())
    }

    /// Same spec with another class count.
    pub fn with_num_classes(mut self, num_classes: usize) -> Self {
        self.num_classes = num_classes;
        self
    }

    /// Same spec with another maximal drop-path rate.
    pub fn with_drop_path(mut self, drop_path: f64) -> Self {
        self.drop_path = drop_path;
        self
    }

    /// Same spec at another input size (DeiT: changes the patch grid and `pos_embed`;
    /// ConvNets accept any size and keep their spec).
    pub fn with_img_size(mut self, img_size: usize) -> anyhow::Result<Self> {
        if img_size > MAX_IMG_SIZE {
            bail!(
                "image size {img_size} is over the limit of {MAX_IMG_SIZE} pixels per side \
                 (docs/LIMITS.md)"
            );
        }
        if let Arch::Deit(cfg) = &mut self.arch {
            if img_size == 0 || !img_size.is_multiple_of(cfg.patch_size) {
                bail!(
                    "image size {img_size} is not a positive multiple of the patch size {}",
                    cfg.patch_size
                );
            }
            cfg.img_size = img_size;
        }
        Ok(self)
    }

    /// The image side the model is meant for (eval crop size).
    pub fn img_size(&self) -> usize {
        match &self.arch {
            Arch::Deit(cfg) => cfg.img_size,
            Arch::ResNet(cfg) if cfg.small_stem => 32,
            _ => 224,
        }
    }
}

/// Whether `name` is one of our small-image ResNets (10 classes by default).
fn small_image_resnet(name: &str) -> bool {
    matches!(name, "resnet_small" | "resnet_tiny")
}

fn parse_deit(rest: &str) -> Option<Arch> {
    let mut parts = rest.split('_');
    let size = parts.next()?;
    let (embed_dim, num_heads) = match size {
        "tiny" => (192, 3),
        "small" => (384, 6),
        "base" => (768, 12),
        _ => return None,
    };
    let mut distilled = false;
    let mut patch_size = 16;
    let mut img_size = 224;
    let rest: Vec<&str> = parts.collect();
    if rest.is_empty() {
        // short form: the distilled student
        distilled = true;
    }
    for (i, p) in rest.iter().enumerate() {
        if *p == "distilled" && i == 0 {
            distilled = true;
        } else if let Some(ps) = p.strip_prefix("patch") {
            patch_size = ps.parse().ok()?;
        } else if i == rest.len() - 1 && p.chars().all(|c| c.is_ascii_digit()) {
            img_size = p.parse().ok()?;
        } else {
            return None;
        }
    }
    if patch_size == 0 || img_size % patch_size != 0 {
        return None;
    }
    Some(Arch::Deit(DeitConfig {
        img_size,
        patch_size,
        embed_dim,
        depth: 12,
        num_heads,
        mlp_ratio: 4,
        distilled,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_deit_names() {
        let s = ModelSpec::parse("deit_tiny_distilled_patch16_224").unwrap();
        let Arch::Deit(c) = &s.arch else {
            panic!("not deit")
        };
        assert_eq!(
            (c.embed_dim, c.num_heads, c.distilled, c.grid()),
            (192, 3, true, 14)
        );
        let s = ModelSpec::parse("deit_base_patch16_384").unwrap();
        let Arch::Deit(c) = &s.arch else {
            panic!("not deit")
        };
        assert_eq!((c.embed_dim, c.img_size, c.distilled), (768, 384, false));
        assert!(ModelSpec::parse("deit_huge_patch16_224").is_err());
        assert!(ModelSpec::parse("deit_tiny_patch16_225").is_err());
        assert!(ModelSpec::parse("vgg16").is_err());
    }
}
