//! The ops, timm's level-to-argument functions, and the dispatch to the PIL-exact kernels.

use image::RgbImage;

use super::{enhance, geometric, pointwise};

/// One RandAugment op. The first 15 variants are timm's increasing set
/// (`_RAND_INCREASING_TRANSFORMS`, DeiT); [`Op::STANDARD`] is timm's original set
/// (`_RAND_TRANSFORMS`), which swaps in the six `*NonIncreasing`/plain variants.
/// The variant names `Color`, `Contrast`, `Brightness`, `Sharpness` mean timm's
/// `ColorIncreasing` etc.; [`Op::timm_name`] gives timm's exact name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `ImageOps.autocontrast` per channel (no argument).
    AutoContrast,
    /// `ImageOps.equalize` per channel (no argument).
    Equalize,
    /// `ImageOps.invert` (no argument).
    Invert,
    /// `Image.rotate(±30·f degrees, BICUBIC, fillcolor)`.
    Rotate,
    /// `ImageOps.posterize(4 - int(4f) bits)`; 0 bits gives a black image.
    PosterizeIncreasing,
    /// `ImageOps.solarize(threshold 256 - min(256, int(256f)))`.
    SolarizeIncreasing,
    /// Adds `min(128, int(110f))` to values < 128, saturating at 255.
    SolarizeAdd,
    /// `ImageEnhance.Color(max(0.1, 1 ± 0.9f))` (timm `ColorIncreasing`).
    Color,
    /// `ImageEnhance.Contrast(max(0.1, 1 ± 0.9f))` (timm `ContrastIncreasing`).
    Contrast,
    /// `ImageEnhance.Brightness(max(0.1, 1 ± 0.9f))` (timm `BrightnessIncreasing`).
    Brightness,
    /// `ImageEnhance.Sharpness(max(0.1, 1 ± 0.9f))` (timm `SharpnessIncreasing`).
    Sharpness,
    /// Affine `(1, ±0.3f, 0, 0, 1, 0)`, bicubic, fill.
    ShearX,
    /// Affine `(1, 0, 0, ±0.3f, 1, 0)`, bicubic, fill.
    ShearY,
    /// Affine `(1, 0, ±0.45f·width, 0, 1, 0)`, bicubic, fill.
    TranslateXRel,
    /// Affine `(1, 0, 0, 0, 1, ±0.45f·height)`, bicubic, fill.
    TranslateYRel,
    /// timm `Posterize` (original set): `int(4f)` bits.
    Posterize,
    /// timm `Solarize` (original set): threshold `min(256, int(256f))`.
    Solarize,
    /// timm `Color` (original set): factor `1.8f + 0.1`, no sign.
    ColorNonIncreasing,
    /// timm `Contrast` (original set): factor `1.8f + 0.1`, no sign.
    ContrastNonIncreasing,
    /// timm `Brightness` (original set): factor `1.8f + 0.1`, no sign.
    BrightnessNonIncreasing,
    /// timm `Sharpness` (original set): factor `1.8f + 0.1`, no sign.
    SharpnessNonIncreasing,
}

/// The argument timm's level function gives an op (its one-element tuple), for
/// magnitude fraction `f = magnitude / 10` and a sign.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OpArg {
    /// The op takes no argument.
    None,
    /// An integer argument (posterize bits, solarize threshold, solarize-add amount).
    Int(i64),
    /// A float argument (degrees, enhance factor, shear factor, translate fraction).
    Float(f64),
}

impl Op {
    /// timm's increasing set in timm's order (`rand-...-inc1`, DeiT).
    pub const INCREASING: [Op; 15] = [
        Op::AutoContrast,
        Op::Equalize,
        Op::Invert,
        Op::Rotate,
        Op::PosterizeIncreasing,
        Op::SolarizeIncreasing,
        Op::SolarizeAdd,
        Op::Color,
        Op::Contrast,
        Op::Brightness,
        Op::Sharpness,
        Op::ShearX,
        Op::ShearY,
        Op::TranslateXRel,
        Op::TranslateYRel,
    ];

    /// timm's original set in timm's order (`rand-...` without `inc1`).
    pub const STANDARD: [Op; 15] = [
        Op::AutoContrast,
        Op::Equalize,
        Op::Invert,
        Op::Rotate,
        Op::Posterize,
        Op::Solarize,
        Op::SolarizeAdd,
        Op::ColorNonIncreasing,
        Op::ContrastNonIncreasing,
        Op::BrightnessNonIncreasing,
        Op::SharpnessNonIncreasing,
        Op::ShearX,
        Op::ShearY,
        Op::TranslateXRel,
        Op::TranslateYRel,
    ];

    /// The op's key in timm's `NAME_TO_OP` / `LEVEL_TO_ARG`.
    pub fn timm_name(self) -> &'static str {
        match self {
            Op::AutoContrast => "AutoContrast",
            Op::Equalize => "Equalize",
            Op::Invert => "Invert",
            Op::Rotate => "Rotate",
            Op::PosterizeIncreasing => "PosterizeIncreasing",
            Op::SolarizeIncreasing => "SolarizeIncreasing",
            Op::SolarizeAdd => "SolarizeAdd",
            Op::Color => "ColorIncreasing",
            Op::Contrast => "ContrastIncreasing",
            Op::Brightness => "BrightnessIncreasing",
            Op::Sharpness => "SharpnessIncreasing",
            Op::ShearX => "ShearX",
            Op::ShearY => "ShearY",
            Op::TranslateXRel => "TranslateXRel",
            Op::TranslateYRel => "TranslateYRel",
            Op::Posterize => "Posterize",
            Op::Solarize => "Solarize",
            Op::ColorNonIncreasing => "Color",
            Op::ContrastNonIncreasing => "Contrast",
            Op::BrightnessNonIncreasing => "Brightness",
            Op::SharpnessNonIncreasing => "Sharpness",
        }
    }

    /// The op with timm name `name` (inverse of [`Op::timm_name`]).
    pub fn from_timm_name(name: &str) -> Option<Op> {
        Op::INCREASING
            .iter()
            .chain(Op::STANDARD.iter())
            .copied()
            .find(|op| op.timm_name() == name)
    }

    /// Whether timm's level function draws a random sign for this op (`_randomly_negate`).
    pub fn has_sign(self) -> bool {
        matches!(
            self,
            Op::Rotate
                | Op::Color
                | Op::Contrast
                | Op::Brightness
                | Op::Sharpness
                | Op::ShearX
                | Op::ShearY
                | Op::TranslateXRel
                | Op::TranslateYRel
        )
    }

    /// Whether the op resamples geometry (bicubic, with fill).
    pub fn is_geometric(self) -> bool {
        matches!(
            self,
            Op::Rotate | Op::ShearX | Op::ShearY | Op::TranslateXRel | Op::TranslateYRel
        )
    }

    /// timm's level-to-argument value for magnitude fraction `f` (= magnitude / 10, already
    /// clipped) and sign (`negate` is ignored by ops without a sign). Computed in f64 in
    /// the same order as timm, so it equals Python's value bit for bit.
    pub fn arg(self, f: f64, negate: bool) -> OpArg {
        let signed = |v: f64| if negate { -v } else { v };
        // Python's int() on a float: truncation toward zero (saturating here).
        let trunc = |v: f64| v as i64;
        match self {
            Op::AutoContrast | Op::Equalize | Op::Invert => OpArg::None,
            Op::Rotate => OpArg::Float(signed(f * 30.0)),
            Op::Posterize => OpArg::Int(trunc(f * 4.0)),
            Op::PosterizeIncreasing => OpArg::Int(4 - trunc(f * 4.0)),
            Op::Solarize => OpArg::Int(trunc(f * 256.0).min(256)),
            Op::SolarizeIncreasing => OpArg::Int(256 - trunc(f * 256.0).min(256)),
            Op::SolarizeAdd => OpArg::Int(trunc(f * 110.0).min(128)),
            Op::Color | Op::Contrast | Op::Brightness | Op::Sharpness => {
                OpArg::Float((1.0 + signed(f * 0.9)).max(0.1))
            }
            Op::ColorNonIncreasing
            | Op::ContrastNonIncreasing
            | Op::BrightnessNonIncreasing
            | Op::SharpnessNonIncreasing => OpArg::Float(f * 1.8 + 0.1),
            Op::ShearX | Op::ShearY => OpArg::Float(signed(f * 0.3)),
            Op::TranslateXRel | Op::TranslateYRel => OpArg::Float(signed(f * 0.45)),
        }
    }
}

/// Applies `op` at magnitude fraction `magnitude_frac` (= m / 10) with sign `negate` and
/// geometric fill `fill`, with PIL's semantics (see the module docs for each op's exact
/// definition and how closely it matches Pillow). The fraction is widened to f64; use
/// [`apply_op_f64`] to pass timm's f64 fraction without the f32 rounding.
pub fn apply_op(
    img: &RgbImage,
    op: Op,
    magnitude_frac: f32,
    negate: bool,
    fill: [u8; 3],
) -> RgbImage {
    apply_op_f64(img, op, f64::from(magnitude_frac), negate, fill)
}

/// [`apply_op`] with the magnitude fraction in f64, as timm computes it.
pub fn apply_op_f64(
    img: &RgbImage,
    op: Op,
    magnitude_frac: f64,
    negate: bool,
    fill: [u8; 3],
) -> RgbImage {
    apply_op_owned(img.clone(), op, magnitude_frac, negate, fill)
}

/// Applies `op` with argument `arg` (timm's level-function output, see [`Op::arg`]).
/// Pointwise ops work in place on `img`'s buffer; the others allocate one output image.
/// An argument of the wrong kind for `op` leaves the image unchanged.
pub fn apply_op_with_arg(img: RgbImage, op: Op, arg: OpArg, fill: [u8; 3]) -> RgbImage {
    let mut img = img;
    match (op, arg) {
        (Op::AutoContrast, _) => {
            pointwise::autocontrast(&mut img);
            img
        }
        (Op::Equalize, _) => {
            pointwise::equalize(&mut img);
            img
        }
        (Op::Invert, _) => {
            pointwise::invert(&mut img);
            img
        }
        (Op::Posterize | Op::PosterizeIncreasing, OpArg::Int(bits)) => {
            pointwise::posterize(&mut img, bits);
            img
        }
        (Op::Solarize | Op::SolarizeIncreasing, OpArg::Int(t)) => {
            pointwise::solarize(&mut img, t);
            img
        }
        (Op::SolarizeAdd, OpArg::Int(add)) => {
            pointwise::solarize_add(&mut img, add, 128);
            img
        }
        (Op::Color | Op::ColorNonIncreasing, OpArg::Float(f)) => {
            enhance::color(&mut img, f);
            img
        }
        (Op::Contrast | Op::ContrastNonIncreasing, OpArg::Float(f)) => {
            enhance::contrast(&mut img, f);
            img
        }
        (Op::Brightness | Op::BrightnessNonIncreasing, OpArg::Float(f)) => {
            enhance::brightness(&mut img, f);
            img
        }
        (Op::Sharpness | Op::SharpnessNonIncreasing, OpArg::Float(f)) => enhance::sharpness(img, f),
        (Op::Rotate, OpArg::Float(deg)) => geometric::rotate(img, deg, fill),
        (Op::ShearX, OpArg::Float(s)) => affine_owned(img, [1.0, s, 0.0, 0.0, 1.0, 0.0], fill),
        (Op::ShearY, OpArg::Float(s)) => affine_owned(img, [1.0, 0.0, 0.0, s, 1.0, 0.0], fill),
        (Op::TranslateXRel, OpArg::Float(pct)) => {
            let px = pct * f64::from(img.width());
            affine_owned(img, [1.0, 0.0, px, 0.0, 1.0, 0.0], fill)
        }
        (Op::TranslateYRel, OpArg::Float(pct)) => {
            let px = pct * f64::from(img.height());
            affine_owned(img, [1.0, 0.0, 0.0, 0.0, 1.0, px], fill)
        }
        _ => img,
    }
}

/// [`geometric::affine`] of an owned image, whose buffer then goes back to the pool
/// ([`crate::transforms::buffers`]) for the next output.
fn affine_owned(img: RgbImage, a: [f64; 6], fill: [u8; 3]) -> RgbImage {
    let out = geometric::affine(&img, a, fill);
    crate::transforms::buffers::recycle(img);
    out
}

/// [`apply_op_f64`] on an owned image (pointwise ops reuse its buffer).
pub fn apply_op_owned(
    img: RgbImage,
    op: Op,
    magnitude_frac: f64,
    negate: bool,
    fill: [u8; 3],
) -> RgbImage {
    apply_op_with_arg(img, op, op.arg(magnitude_frac, negate), fill)
}
