//! The eval transform of timm (`transforms_imagenet_eval`, torchvision semantics): resize
//! the shorter side to `floor(size / crop_pct)` with Pillow's filter (bit for bit, see
//! [`super::pillow_resize`]), centre crop `size`, normalize.
//!
//! One rule for every input size: the config's `eval_crop_pct`, as written (a 32 px run
//! at 0.875 resizes to 36 and crops 32, as timm does). Small-image configs (crop mode
//! `random_crop_pad`, DeiT's `resize_im = False` for inputs of 32 px or less, where
//! `main.py` does no eval resize) get `eval_crop_pct = 1` when they do not state one
//! ([`crate::crop_rule`]): the image's shorter side is resized to the input size (nothing
//! happens to an image that already has it) and the centre cropped.

use image::RgbImage;

use super::crop::CropRect;
use super::normalize::Normalizer;
use super::pillow_resize::{pil_resize, PilFilter};
use super::py_round;
use crate::config::AugmentConfig;
use crate::error::PipelineError;

/// torchvision `Resize(int)` output size: the shorter side becomes `short`, the longer
/// `int(short * long / short_in)`. Returns `(width, height)`.
pub fn shorter_side_size(width: u32, height: u32, short: u32) -> (u32, u32) {
    if width <= height {
        let long = (short as f64 * height as f64 / width as f64) as u32;
        (short, long)
    } else {
        let long = (short as f64 * width as f64 / height as f64) as u32;
        (long, short)
    }
}

/// torchvision `CenterCrop` of `size` from a `width` x `height` image:
/// top = int(round((H - size) / 2)), left likewise (round half to even).
pub fn center_crop_rect(width: u32, height: u32, size: u32) -> CropRect {
    CropRect {
        left: py_round((width as f64 - size as f64) / 2.0) as u32,
        top: py_round((height as f64 - size as f64) / 2.0) as u32,
        width: size,
        height: size,
    }
}

/// The eval transform's parameters: timm's `img_size`, `crop_pct` and `interpolation`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalTransform {
    /// Output side (the centre crop).
    pub size: u32,
    /// Crop fraction: the shorter side is first resized to `floor(size / crop_pct)`.
    pub crop_pct: f64,
    /// Pillow filter of the resize.
    pub filter: PilFilter,
}

impl EvalTransform {
    /// The eval transform a training config implies: its input size, its
    /// `eval_crop_pct` as written (so a run's `config.toml` says what its eval did) and
    /// bicubic.
    pub fn from_config(cfg: &AugmentConfig) -> Self {
        EvalTransform {
            size: cfg.input_size,
            crop_pct: cfg.eval_crop_pct,
            filter: PilFilter::Bicubic,
        }
    }

    /// Checks the parameters: a positive size and a crop fraction in (0, 1].
    pub fn validate(&self) -> Result<(), PipelineError> {
        if self.size == 0 {
            return Err(PipelineError::Resize("eval size must be positive".into()));
        }
        if !(self.crop_pct > 0.0 && self.crop_pct <= 1.0) {
            return Err(PipelineError::Resize(format!(
                "crop_pct = {} is out of (0, 1]",
                self.crop_pct
            )));
        }
        Ok(())
    }

    /// Target of the shorter side before the crop: `floor(size / crop_pct)` (timm's
    /// `scale_size`).
    pub fn resize_side(&self) -> u32 {
        (f64::from(self.size) / self.crop_pct).floor() as u32
    }

    /// The eval view of `img` as a `size` x `size` u8 image (before normalization):
    /// exactly the PIL image timm's transform gives before `ToTensor`.
    pub fn apply(&self, img: &RgbImage) -> Result<RgbImage, PipelineError> {
        self.validate()?;
        let size = self.size;
        let (w, h) = (img.width(), img.height());
        if w == 0 || h == 0 {
            return Err(PipelineError::Resize("empty image".into()));
        }
        let (rw, rh) = shorter_side_size(w, h, self.resize_side());
        if rw < size || rh < size {
            return Err(PipelineError::Resize(format!(
                "eval resize of {w}x{h} gave {rw}x{rh}, smaller than the crop {size}"
            )));
        }
        // torchvision returns the image itself when the size does not change.
        let resized;
        let src = if (rw, rh) == (w, h) {
            img
        } else {
            resized = pil_resize(img, rw, rh, self.filter)?;
            &resized
        };
        let rect = center_crop_rect(rw, rh, size);
        if (rect.width, rect.height) == (rw, rh) {
            return Ok(src.clone());
        }
        Ok(image::imageops::crop_imm(src, rect.left, rect.top, size, size).to_image())
    }

    /// The full eval transform into `out` (3 x size x size, normalized CHW).
    pub fn view(
        &self,
        img: &RgbImage,
        norm: &Normalizer,
        out: &mut [f32],
    ) -> Result<(), PipelineError> {
        let v = self.apply(img)?;
        norm.to_chw(&v, out);
        Ok(())
    }
}

/// The eval view of `img` under `cfg`'s eval transform ([`EvalTransform::from_config`]).
pub fn eval_image(img: &RgbImage, cfg: &AugmentConfig) -> Result<RgbImage, PipelineError> {
    EvalTransform::from_config(cfg).apply(img)
}

/// The full eval transform of `cfg` into `out` (3 x size x size, normalized CHW).
pub fn eval_view(
    img: &RgbImage,
    cfg: &AugmentConfig,
    norm: &Normalizer,
    out: &mut [f32],
) -> Result<(), PipelineError> {
    EvalTransform::from_config(cfg).view(img, norm, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_torchvision() {
        assert_eq!(shorter_side_size(500, 375, 256), (341, 256));
        assert_eq!(shorter_side_size(375, 500, 256), (256, 341));
        assert_eq!(
            center_crop_rect(341, 256, 224),
            CropRect {
                left: 58,
                top: 16,
                width: 224,
                height: 224
            }
        );
        // (225 - 224) / 2 = 0.5 rounds to even: 0.
        assert_eq!(center_crop_rect(225, 225, 224).left, 0);
        assert_eq!(center_crop_rect(227, 227, 224).left, 2);
    }

    #[test]
    fn one_rule_for_every_size() {
        let mut cfg = AugmentConfig {
            input_size: 32,
            ..AugmentConfig::default()
        };
        // A 32 px run at crop_pct 0.875 resizes to 36 and crops 32, as timm.
        assert_eq!(EvalTransform::from_config(&cfg).resize_side(), 36);
        let img = RgbImage::from_fn(50, 40, |x, y| image::Rgb([x as u8 * 5, y as u8 * 6, 7]));
        assert_eq!(eval_image(&img, &cfg).unwrap().dimensions(), (32, 32));
        // The crop mode does not change the eval crop: eval_crop_pct is used as written.
        cfg.crop.mode = crate::config::CropMode::RandomCropPad;
        assert_eq!(EvalTransform::from_config(&cfg).resize_side(), 36);
        // DeiT's small-image path (no eval resize in main.py) is crop_pct 1.
        let cfg = AugmentConfig::small_image(32);
        let t = EvalTransform::from_config(&cfg);
        assert_eq!((t.crop_pct, t.resize_side()), (1.0, 32));
        let exact = RgbImage::from_fn(32, 32, |x, y| image::Rgb([x as u8, y as u8, 9]));
        assert!(eval_image(&exact, &cfg).unwrap() == exact);
        let bad = EvalTransform { crop_pct: 1.5, ..t };
        assert!(bad
            .apply(&exact)
            .unwrap_err()
            .to_string()
            .contains("out of (0, 1]"));
    }
}
