//! Encoding of stored records: JPEG (4:2:0, like Pillow's default) or raw RGB in one zstd frame.

use image::RgbImage;
use jpeg_encoder::{ColorType, Encoder, SamplingFactor};

/// zstd level used for raw records.
pub const ZSTD_LEVEL: i32 = 3;

/// Encode RGB pixels as a JPEG at `quality` (1..=100) with 4:2:0 chroma subsampling.
pub fn encode_jpeg(img: &RgbImage, quality: u8) -> Result<Vec<u8>, String> {
    encode_jpeg_raw(
        img.as_raw(),
        img.width(),
        img.height(),
        quality,
        ColorType::Rgb,
    )
}

/// Encode pixels of `color` layout as a JPEG (also used for CMYK test files).
pub fn encode_jpeg_raw(
    data: &[u8],
    w: u32,
    h: u32,
    quality: u8,
    color: ColorType,
) -> Result<Vec<u8>, String> {
    let (w16, h16) = match (u16::try_from(w), u16::try_from(h)) {
        (Ok(a), Ok(b)) => (a, b),
        _ => return Err(format!("{w}x{h} is too large for JPEG (65535 max)")),
    };
    let mut out = Vec::with_capacity(data.len() / 8 + 1024);
    let mut enc = Encoder::new(&mut out, quality.clamp(1, 100));
    // CMYK files (only written by `synth`) keep full resolution in every channel, as
    // Photoshop writes them.
    enc.set_sampling_factor(if matches!(color, ColorType::Cmyk) {
        SamplingFactor::F_1_1
    } else {
        SamplingFactor::F_2_2
    });
    enc.encode(data, w16, h16, color)
        .map_err(|e| format!("JPEG encode: {e}"))?;
    Ok(out)
}

/// Compress RGB pixels as one zstd frame.
pub fn encode_raw(img: &RgbImage) -> Result<Vec<u8>, String> {
    zstd::bulk::compress(img.as_raw(), ZSTD_LEVEL).map_err(|e| format!("zstd: {e}"))
}
