//! Shorter-side resize with antialiasing (Lanczos3 convolution via `fast_image_resize`).

use fast_image_resize::images::{Image, ImageRef};
/// The resizer (reusable buffers); re-exported so callers need no direct dependency.
pub use fast_image_resize::Resizer;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions};
use image::RgbImage;

/// The stored size of a `w`x`h` image: unchanged when the shorter side is at most `max_side`,
/// otherwise scaled so the shorter side equals `max_side` (longer side rounded, at least 1).
pub fn target_size(w: u32, h: u32, max_side: u32) -> (u32, u32) {
    let short = w.min(h);
    if max_side == 0 || short <= max_side {
        return (w, h);
    }
    let scale = |long: u32| -> u32 {
        let v =
            (u64::from(long) * u64::from(max_side) * 2 + u64::from(short)) / (2 * u64::from(short));
        v.max(1) as u32
    };
    if w <= h {
        (max_side, scale(h))
    } else {
        (scale(w), max_side)
    }
}

/// Resize `src` to `w`x`h` with Lanczos3 (antialiased when shrinking). `resizer` can be
/// reused between calls to keep its buffers.
pub fn resize_rgb(
    resizer: &mut Resizer,
    src: &RgbImage,
    w: u32,
    h: u32,
) -> Result<RgbImage, String> {
    if src.dimensions() == (w, h) {
        return Ok(src.clone());
    }
    let view = ImageRef::new(src.width(), src.height(), src.as_raw(), PixelType::U8x3)
        .map_err(|e| format!("resize source: {e}"))?;
    let mut dst = Image::new(w, h, PixelType::U8x3);
    let opts = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3));
    resizer
        .resize(&view, &mut dst, &opts)
        .map_err(|e| format!("resize: {e}"))?;
    RgbImage::from_raw(w, h, dst.into_vec()).ok_or_else(|| "resize: buffer size".to_string())
}

/// Resize `src` so its shorter side is at most `max_side` (see [`target_size`]); the same
/// operation `deit-pipe shard` applies before storing.
pub fn shorter_side_resize(src: &RgbImage, max_side: u32) -> Result<RgbImage, String> {
    let (w, h) = target_size(src.width(), src.height(), max_side);
    resize_rgb(&mut Resizer::new(), src, w, h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_size_keeps_small_and_scales_shorter_side() {
        assert_eq!(target_size(500, 375, 512), (500, 375));
        assert_eq!(target_size(1000, 750, 512), (683, 512));
        assert_eq!(target_size(750, 1000, 512), (512, 683));
        assert_eq!(target_size(600, 600, 512), (512, 512));
        assert_eq!(target_size(10000, 513, 512), (9981, 512));
    }

    #[test]
    fn resize_of_flat_image_stays_flat() {
        let src = RgbImage::from_pixel(40, 30, image::Rgb([10, 200, 30]));
        let mut r = Resizer::new();
        let out = resize_rgb(&mut r, &src, 20, 15).unwrap();
        assert_eq!(out.dimensions(), (20, 15));
        assert!(out.pixels().all(|p| p.0 == [10, 200, 30]));
    }
}
