//! The eval transform: resize the shorter side to `floor(size / crop_pct)` (bicubic),
//! centre crop `size`, normalize (timm `transforms_imagenet_eval`, torchvision semantics).
//! Small-image configs (<= 32 px, DeiT's `resize_im = False`) skip the resize when the
//! image already has the input size, and otherwise resize the shorter side to the size.

use image::RgbImage;

use super::crop::CropRect;
use super::normalize::Normalizer;
use super::py_round;
use super::resize::{crop_resize, resize};
use crate::config::{AugmentConfig, Interpolation};
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

/// The eval view of `img` as a `size` x `size` u8 image (before normalization).
pub fn eval_image(img: &RgbImage, cfg: &AugmentConfig) -> Result<RgbImage, PipelineError> {
    let size = cfg.input_size;
    let (w, h) = (img.width(), img.height());
    if w == 0 || h == 0 {
        return Err(PipelineError::Resize("empty image".into()));
    }
    let short = if cfg.is_small_image() {
        if w == size && h == size {
            return Ok(img.clone());
        }
        size
    } else {
        cfg.eval_resize()
    };
    let (rw, rh) = shorter_side_size(w, h, short);
    let resized = if (rw, rh) == (w, h) {
        img.clone()
    } else {
        resize(img, rw, rh, Interpolation::Bicubic)?
    };
    if rw < size || rh < size {
        return Err(PipelineError::Resize(format!(
            "eval resize gave {rw}x{rh}, smaller than the crop {size} (eval_crop_pct > 1?)"
        )));
    }
    let rect = center_crop_rect(rw, rh, size);
    crop_resize(&resized, rect, size, size, Interpolation::Bicubic)
}

/// The full eval transform into `out` (3 x size x size, normalized CHW).
pub fn eval_view(
    img: &RgbImage,
    cfg: &AugmentConfig,
    norm: &Normalizer,
    out: &mut [f32],
) -> Result<(), PipelineError> {
    let v = eval_image(img, cfg)?;
    norm.to_chw(&v, out);
    Ok(())
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
}
