//! Crop + resize through `fast_image_resize` (Catmull-Rom convolution = PIL's antialiased
//! bicubic with a = -0.5; bilinear = PIL's antialiased bilinear). The crop is a view of
//! the source, so the filter never reads pixels outside it, exactly as torchvision's
//! `resized_crop` (crop, then resize) with PIL.
//!
//! The U8x3 convolution uses integer fixed-point arithmetic in every SIMD path, so the
//! output does not depend on the CPU's extensions (checked by the view hash tests).

use std::cell::RefCell;

use fast_image_resize::images::{CroppedImage, Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;

use super::rect::CropRect;
use crate::config::Interpolation;
use crate::error::PipelineError;

thread_local! {
    static RESIZER: RefCell<Resizer> = RefCell::new(Resizer::new());
}

fn filter(interp: Interpolation) -> FilterType {
    match interp {
        Interpolation::Bicubic => FilterType::CatmullRom,
        Interpolation::Bilinear => FilterType::Bilinear,
    }
}

/// Crops `rect` out of `img` and resizes it to `out_w` x `out_h`.
pub fn crop_resize(
    img: &RgbImage,
    rect: CropRect,
    out_w: u32,
    out_h: u32,
    interp: Interpolation,
) -> Result<RgbImage, PipelineError> {
    let err = |e: &dyn std::fmt::Display| PipelineError::Resize(e.to_string());
    let src = ImageRef::new(img.width(), img.height(), img.as_raw(), PixelType::U8x3)
        .map_err(|e| err(&e))?;
    let cropped = CroppedImage::new(&src, rect.left, rect.top, rect.width, rect.height)
        .map_err(|e| err(&e))?;
    let opts = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(filter(interp)));
    // Pillow resamples horizontally first, then vertically, rounding to u8 in between;
    // fast_image_resize does u8 images vertical-first. The order changes results at hard
    // edges (the clipped overshoot), so run the two passes separately in Pillow's order.
    let dst = if rect.width != out_w && rect.height != out_h {
        let mut dst = out_image(out_w, out_h)?;
        // The intermediate (horizontally resized) image, also on a pooled buffer.
        let mut tmp = out_image(out_w, rect.height)?;
        RESIZER.with(|r| -> Result<(), PipelineError> {
            let mut r = r.borrow_mut();
            r.resize(&cropped, &mut tmp, &opts).map_err(|e| err(&e))?;
            r.resize(&tmp, &mut dst, &opts).map_err(|e| err(&e))
        })?;
        super::buffers::give(tmp.into_vec());
        dst
    } else {
        let mut dst = out_image(out_w, out_h)?;
        RESIZER
            .with(|r| r.borrow_mut().resize(&cropped, &mut dst, &opts))
            .map_err(|e| err(&e))?;
        dst
    };
    RgbImage::from_raw(out_w, out_h, dst.into_vec())
        .ok_or_else(|| PipelineError::Resize("output buffer size mismatch".into()))
}

/// An output image over a pooled buffer ([`super::buffers`]; the resize writes every byte).
fn out_image(w: u32, h: u32) -> Result<Image<'static>, PipelineError> {
    let buf = super::buffers::take(w as usize * h as usize * 3);
    Image::from_vec_u8(w, h, buf, PixelType::U8x3).map_err(|e| PipelineError::Resize(e.to_string()))
}

/// Resizes the whole image to `out_w` x `out_h`.
pub fn resize(
    img: &RgbImage,
    out_w: u32,
    out_h: u32,
    interp: Interpolation,
) -> Result<RgbImage, PipelineError> {
    crop_resize(
        img,
        CropRect::whole(img.width(), img.height()),
        out_w,
        out_h,
        interp,
    )
}
