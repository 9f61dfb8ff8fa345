//! Image files as timm reads them: Pillow's `Image.open(path).convert("RGB")`, pixel for
//! pixel. Used by `deit-pipe predict` so its inputs equal timm's.
//!
//! - JPEG: libjpeg-turbo through [`super::jpeg`] (ISLOW IDCT, fancy upsampling: the shard
//!   path's decoder), so grayscale, YCbCr at any chroma subsampling, progressive, RGB,
//!   CMYK and YCCK files give Pillow's pixels; other colour spaces fall back to `image`.
//! - PNG: decoded by `image` (lossless, so the samples are the file's), then converted as
//!   Pillow's `convert("RGB")`: grey replicated, alpha dropped (no compositing, palette
//!   transparency too), 16-bit colour and grey+alpha to their high byte (Pillow's
//!   `RGB;16B` / `LA;16B` unpacking), 16-bit grey clipped to 255 (Pillow's `I;16` to
//!   `RGB`).
//!
//! `shard` keeps its own input decoder ([`super::decode_input`]), whose pixels define the
//! records already written.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, ImageReader, RgbImage};

use crate::transforms::crop::CropRect;

/// Decodes an image file's bytes to the 8-bit RGB pixels Pillow's
/// `Image.open(f).convert("RGB")` gives. The file is first held to the decoder policy
/// `shard` applies too ([`super::policy::probe`]: pixel limit from the header, JPEG scan
/// limit, PNG chunk bounds). `Err` holds a one-line reason (the caller names the file).
pub fn decode_like_pillow(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, String> {
    let super::policy::Probe {
        format,
        width: w,
        height: h,
        ..
    } = super::policy::probe(bytes, max_pixels)?;
    let kind = super::policy::format_name(format);
    if format == ImageFormat::Jpeg {
        if let Some(px) = super::jpeg::decode_region(bytes, (w, h), CropRect::whole(w, h))? {
            return RgbImage::from_raw(w, h, px)
                .ok_or_else(|| "JPEG buffer size mismatch".to_string());
        }
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    // Room for a 16-bit RGBA image at the pixel limit.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(1 << 20));
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| format!("cannot decode {kind}: {e}"))?;
    Ok(to_rgb_like_pillow(img))
}

/// Pillow's `convert("RGB")` of what Pillow would have opened for `img`'s colour type.
fn to_rgb_like_pillow(img: DynamicImage) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let from_u16 = |px: Vec<u16>, channels: usize, grey: bool| -> RgbImage {
        let mut out = Vec::with_capacity(w as usize * h as usize * 3);
        for p in px.chunks_exact(channels) {
            if grey {
                let v = (p[0] >> 8) as u8;
                out.extend_from_slice(&[v, v, v]);
            } else {
                out.extend(p[..3].iter().map(|&v| (v >> 8) as u8));
            }
        }
        RgbImage::from_raw(w, h, out).unwrap_or_default()
    };
    match img {
        DynamicImage::ImageRgb16(i) => from_u16(i.into_raw(), 3, false),
        DynamicImage::ImageRgba16(i) => from_u16(i.into_raw(), 4, false),
        DynamicImage::ImageLumaA16(i) => from_u16(i.into_raw(), 2, true),
        DynamicImage::ImageLuma16(i) => {
            // Pillow opens 16-bit grey as "I;16"; its conversion to RGB clips at 255.
            let mut out = Vec::with_capacity(w as usize * h as usize * 3);
            for &v in i.as_raw() {
                let v = v.min(255) as u8;
                out.extend_from_slice(&[v, v, v]);
            }
            RgbImage::from_raw(w, h, out).unwrap_or_default()
        }
        // 8-bit grey replicates, alpha is dropped: `image`'s conversion is Pillow's.
        other => other.into_rgb8(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(img: DynamicImage) -> Vec<u8> {
        let mut b = Vec::new();
        img.write_to(&mut Cursor::new(&mut b), ImageFormat::Png)
            .unwrap();
        b
    }

    #[test]
    fn sixteen_bit_pngs_convert_as_pillow() {
        let grey =
            image::ImageBuffer::<image::Luma<u16>, _>::from_raw(4, 1, vec![0u16, 255, 256, 40000])
                .unwrap();
        let got = decode_like_pillow(&png(DynamicImage::ImageLuma16(grey)), 1 << 20).unwrap();
        let reds: Vec<u8> = got.pixels().map(|p| p.0[0]).collect();
        assert_eq!(reds, [0, 255, 255, 255]);
        let rgb = image::ImageBuffer::<image::Rgb<u16>, _>::from_raw(
            2,
            1,
            vec![0x1234u16, 0xff00, 0x00ff, 0x8080, 1, 65535],
        )
        .unwrap();
        let got = decode_like_pillow(&png(DynamicImage::ImageRgb16(rgb)), 1 << 20).unwrap();
        assert_eq!(got.as_raw(), &[0x12, 0xff, 0x00, 0x80, 0, 255]);
    }

    #[test]
    fn bad_files_are_reasons_not_panics() {
        assert_eq!(decode_like_pillow(b"", 10).unwrap_err(), "empty file");
        assert!(decode_like_pillow(b"GIF89a....", 10)
            .unwrap_err()
            .contains("unsupported image format"));
        assert!(decode_like_pillow(b"hello", 10)
            .unwrap_err()
            .contains("not an image"));
        let big = png(DynamicImage::ImageRgb8(RgbImage::new(40, 30)));
        assert!(decode_like_pillow(&big, 1000)
            .unwrap_err()
            .contains("exceeds the limit"));
        assert!(decode_like_pillow(&big[..big.len() / 2], 1 << 20).is_err());
    }
}
