//! RandomResizedCrop (timm `RandomResizedCropAndInterpolation.get_params`), RandomCrop
//! with zero padding (torchvision, DeiT's small-image path) and horizontal flip.

use image::RgbImage;

use super::py_round;
pub use super::rect::CropRect;
use crate::config::{CropConfig, Interpolation};
use crate::error::PipelineError;
use crate::rng::Draws;

/// timm's RandomResizedCrop parameters for a `width` x `height` image: up to 10 tries of
/// area ~ U(scale) * W*H and log-uniform aspect; w = round(sqrt(area*aspect)),
/// h = round(sqrt(area/aspect)) (round half to even, as Python); accepted when w <= W and
/// h <= H, then top ~ randint[0, H-h], left ~ randint[0, W-w]. Fallback: centre crop with
/// the aspect clamped to the ratio range.
pub fn rrc_params(
    width: u32,
    height: u32,
    scale: [f64; 2],
    ratio: [f64; 2],
    draws: &mut impl Draws,
) -> CropRect {
    let (img_w, img_h) = (width as i64, height as i64);
    let area = (img_w * img_h) as f64;
    let log_ratio = (libm::log(ratio[0]), libm::log(ratio[1]));
    for _ in 0..10 {
        let target_area = draws.uniform(scale[0], scale[1]) * area;
        let aspect = libm::exp(draws.uniform(log_ratio.0, log_ratio.1));
        let w = py_round(libm::sqrt(target_area * aspect));
        let h = py_round(libm::sqrt(target_area / aspect));
        if w <= img_w && h <= img_h {
            let top = draws.randint(0, img_h - h);
            let left = draws.randint(0, img_w - w);
            return CropRect {
                left: left as u32,
                top: top as u32,
                width: w as u32,
                height: h as u32,
            };
        }
    }
    let in_ratio = img_w as f64 / img_h as f64;
    let (min_r, max_r) = (ratio[0].min(ratio[1]), ratio[0].max(ratio[1]));
    let (w, h) = if in_ratio < min_r {
        (img_w, py_round(img_w as f64 / min_r))
    } else if in_ratio > max_r {
        (py_round(img_h as f64 * max_r), img_h)
    } else {
        (img_w, img_h)
    };
    CropRect {
        left: ((img_w - w) / 2) as u32,
        top: ((img_h - h) / 2) as u32,
        width: w as u32,
        height: h as u32,
    }
}

/// torchvision `RandomCrop(size, padding)` offsets in the padded image: `(top, left)`,
/// top ~ randint[0, H + 2p - size] first, then left. Errors if the padded image is
/// smaller than `size`.
pub fn random_crop_pad_params(
    width: u32,
    height: u32,
    size: u32,
    padding: u32,
    draws: &mut impl Draws,
) -> Result<(u32, u32), PipelineError> {
    let (pw, ph) = (width + 2 * padding, height + 2 * padding);
    if pw < size || ph < size {
        return Err(PipelineError::Resize(format!(
            "image {width}x{height} with padding {padding} is smaller than the crop {size}"
        )));
    }
    if pw == size && ph == size {
        return Ok((0, 0));
    }
    let top = draws.randint(0, (ph - size) as i64) as u32;
    let left = draws.randint(0, (pw - size) as i64) as u32;
    Ok((top, left))
}

/// Crops `size` x `size` at `(top, left)` of the image zero-padded by `padding`.
pub fn apply_crop_pad(img: &RgbImage, size: u32, padding: u32, top: u32, left: u32) -> RgbImage {
    let (dx, dy) = (
        i64::from(left) - i64::from(padding),
        i64::from(top) - i64::from(padding),
    );
    crop_pad_at(img, size, dx, dy)
}

/// Output pixel (x, y) is source pixel (x + dx, y + dy), zero outside the image.
fn crop_pad_at(img: &RgbImage, size: u32, dx: i64, dy: i64) -> RgbImage {
    let mut out = RgbImage::new(size, size);
    let (w, h) = (img.width() as i64, img.height() as i64);
    for y in 0..size {
        let sy = y as i64 + dy;
        if sy < 0 || sy >= h {
            continue;
        }
        for x in 0..size {
            let sx = x as i64 + dx;
            if sx >= 0 && sx < w {
                out.put_pixel(x, y, *img.get_pixel(sx as u32, sy as u32));
            }
        }
    }
    out
}

/// The training crop of one sample: RRC parameters (or RandomCrop offsets) drawn first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrainCrop {
    /// Crop this rectangle and resize it to `size` x `size`.
    Resized(CropRect),
    /// Pad by `padding` and crop `size` x `size` at (top, left) of the padded image.
    Padded {
        /// Top offset in the padded image.
        top: u32,
        /// Left offset in the padded image.
        left: u32,
    },
}

impl TrainCrop {
    /// The source pixels the crop reads from a `width` x `height` image: the rectangle for
    /// RandomResizedCrop (the resize filter never reads outside it), the part of the image
    /// inside the padded window for RandomCrop. Decoding only this region and applying
    /// [`apply_train_crop_region`] gives the same pixels as [`apply_train_crop`] on the
    /// whole image. Never empty: a window that lies wholly in the padding (possible only
    /// when `size <= padding`) reads nothing and gets the 1x1 corner.
    pub fn source_region(&self, width: u32, height: u32, size: u32, padding: u32) -> CropRect {
        match *self {
            TrainCrop::Resized(rect) => rect,
            TrainCrop::Padded { top, left } => {
                let span = |off: u32, len: u32| {
                    let a = i64::from(off) - i64::from(padding);
                    let lo = a.clamp(0, i64::from(len));
                    let hi = (a + i64::from(size)).clamp(0, i64::from(len));
                    (lo as u32, (hi - lo) as u32)
                };
                let (x, w) = span(left, width);
                let (y, h) = span(top, height);
                if w == 0 || h == 0 {
                    CropRect {
                        left: 0,
                        top: 0,
                        width: 1,
                        height: 1,
                    }
                } else {
                    CropRect {
                        left: x,
                        top: y,
                        width: w,
                        height: h,
                    }
                }
            }
        }
    }
}

/// Draws the training crop for a `width` x `height` image.
pub fn train_crop_params(
    cfg: &CropConfig,
    size: u32,
    width: u32,
    height: u32,
    draws: &mut impl Draws,
) -> Result<TrainCrop, PipelineError> {
    match cfg.mode {
        crate::config::CropMode::RandomResizedCrop => Ok(TrainCrop::Resized(rrc_params(
            width, height, cfg.scale, cfg.ratio, draws,
        ))),
        crate::config::CropMode::RandomCropPad => {
            let (top, left) = random_crop_pad_params(width, height, size, cfg.padding, draws)?;
            Ok(TrainCrop::Padded { top, left })
        }
    }
}

/// Applies a drawn training crop, giving a `size` x `size` image.
pub fn apply_train_crop(
    img: &RgbImage,
    crop: TrainCrop,
    size: u32,
    padding: u32,
    interpolation: Interpolation,
) -> Result<RgbImage, PipelineError> {
    match crop {
        TrainCrop::Resized(rect) => {
            super::resize::crop_resize(img, rect, size, size, interpolation)
        }
        TrainCrop::Padded { top, left } => Ok(apply_crop_pad(img, size, padding, top, left)),
    }
}

/// [`apply_train_crop`] given only `region` of the image (`img` holds those pixels, as
/// from a region decode of [`TrainCrop::source_region`]): the same output, bit for bit.
pub fn apply_train_crop_region(
    img: &RgbImage,
    region: CropRect,
    crop: TrainCrop,
    size: u32,
    padding: u32,
    interpolation: Interpolation,
) -> Result<RgbImage, PipelineError> {
    if img.dimensions() != (region.width, region.height) {
        return Err(PipelineError::Resize(format!(
            "region image is {}x{}, the region {}x{}",
            img.width(),
            img.height(),
            region.width,
            region.height
        )));
    }
    match crop {
        TrainCrop::Resized(rect) => {
            let inside = rect.left >= region.left
                && rect.top >= region.top
                && rect.left + rect.width <= region.left + region.width
                && rect.top + rect.height <= region.top + region.height;
            if !inside {
                return Err(PipelineError::Resize(format!(
                    "crop {rect:?} is not inside the decoded region {region:?}"
                )));
            }
            let shifted = CropRect {
                left: rect.left - region.left,
                top: rect.top - region.top,
                ..rect
            };
            super::resize::crop_resize(img, shifted, size, size, interpolation)
        }
        TrainCrop::Padded { top, left } => {
            let dx = i64::from(left) - i64::from(padding) - i64::from(region.left);
            let dy = i64::from(top) - i64::from(padding) - i64::from(region.top);
            Ok(crop_pad_at(img, size, dx, dy))
        }
    }
}

/// Mirrors the image left-right in place, a row at a time (the image crate's
/// `flip_horizontal_in_place` goes pixel by pixel through bounds-checked accessors and
/// cost about 4% of the loader's time).
pub fn hflip(img: &mut RgbImage) {
    let stride = img.width() as usize * 3;
    if stride == 0 {
        return;
    }
    for row in img.as_mut().chunks_exact_mut(stride) {
        // Reversing the bytes mirrors the pixels but also their channel order; reversing
        // each pixel's 3 bytes puts that back.
        row.reverse();
        for px in row.chunks_exact_mut(3) {
            px.reverse();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{rng_from_seed, ReplayDraws};

    #[test]
    fn hflip_mirrors_rows() {
        for (w, h) in [(1, 1), (2, 3), (5, 2), (8, 4)] {
            let img = RgbImage::from_fn(w, h, |x, y| {
                image::Rgb([(x * 7 + y) as u8, (x * 13) as u8, (y * 29 + 1) as u8])
            });
            let mut flipped = img.clone();
            hflip(&mut flipped);
            assert_eq!(flipped, image::imageops::flip_horizontal(&img), "{w}x{h}");
        }
    }

    #[test]
    fn rrc_fallback_clamps_aspect() {
        // Draws that always ask for the whole area at the extreme aspect fail 10 times.
        let mut d = ReplayDraws::new(vec![0.9999; 20]);
        let r = rrc_params(1000, 100, [0.9, 1.0], [0.75, 4.0 / 3.0], &mut d);
        assert_eq!(d.consumed(), 20);
        // in_ratio 10 > 4/3: h = 100, w = round(100 * 4/3) = 133, centred.
        assert_eq!(
            r,
            CropRect {
                left: 433,
                top: 0,
                width: 133,
                height: 100
            }
        );
    }

    #[test]
    fn rrc_area_and_aspect_distribution() {
        let mut rng = rng_from_seed(5);
        let (mut n, mut sum_log_aspect, mut sum_area) = (0usize, 0.0f64, 0.0f64);
        for _ in 0..20_000 {
            let r = rrc_params(2000, 2000, [0.08, 1.0], [0.75, 4.0 / 3.0], &mut rng);
            let area = (r.width * r.height) as f64 / 4e6;
            let aspect = r.width as f64 / r.height as f64;
            assert!(r.left + r.width <= 2000 && r.top + r.height <= 2000);
            assert!((0.07..=1.01).contains(&area), "{area}");
            assert!((0.74..=1.34).contains(&aspect), "{aspect}");
            n += 1;
            sum_log_aspect += aspect.ln();
            sum_area += area;
        }
        // log-aspect symmetric around 0; area mean below 0.54 (large areas get rejected
        // at extreme aspects, so slightly less than U(0.08,1)'s mean).
        assert!((sum_log_aspect / n as f64).abs() < 0.01);
        let mean_area = sum_area / n as f64;
        assert!((0.45..0.55).contains(&mean_area), "{mean_area}");
    }

    #[test]
    fn crop_pad_places_pixels() {
        let mut img = RgbImage::new(4, 4);
        img.put_pixel(0, 0, image::Rgb([9, 8, 7]));
        let out = apply_crop_pad(&img, 4, 2, 1, 1);
        assert_eq!(out.get_pixel(1, 1).0, [9, 8, 7]);
        assert_eq!(out.get_pixel(0, 0).0, [0, 0, 0]);
    }
}
