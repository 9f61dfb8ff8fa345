//! Encoding of stored records: JPEG (4:2:0, like Pillow's default) or raw RGB in one zstd frame.

use image::RgbImage;
use jpeg_encoder::{ColorType, Encoder, SamplingFactor};

/// zstd level used for raw records.
pub const ZSTD_LEVEL: i32 = 3;

/// Encode RGB pixels as a JPEG at `quality` (1..=100) with 4:2:0 chroma subsampling and,
/// unless `restart_mcus` is 0, a restart marker every R MCUs, R the largest divisor of the
/// MCUs per row that is at most `restart_mcus` (so the intervals tile the rows; see
/// `jpeg_tiles`).
pub fn encode_jpeg(img: &RgbImage, quality: u8, restart_mcus: u32) -> Result<Vec<u8>, String> {
    let interval = match restart_mcus {
        0 => 0,
        n => restart_interval(img.width().div_ceil(16), n),
    };
    encode_jpeg_with(
        img.as_raw(),
        img.width(),
        img.height(),
        quality,
        ColorType::Rgb,
        interval,
    )
}

/// The largest divisor of `mcus_per_row` that is at most `target` (at least 1), as the C
/// side's `jr_divisor_at_most`.
pub fn restart_interval(mcus_per_row: u32, target: u32) -> u16 {
    let top = target
        .clamp(1, mcus_per_row.max(1))
        .min(u32::from(u16::MAX));
    (1..=top)
        .rev()
        .find(|r| mcus_per_row.is_multiple_of(*r))
        .unwrap_or(1) as u16
}

/// Encode pixels of `color` layout as a JPEG (also used for CMYK test files).
pub fn encode_jpeg_raw(
    data: &[u8],
    w: u32,
    h: u32,
    quality: u8,
    color: ColorType,
) -> Result<Vec<u8>, String> {
    encode_jpeg_with(data, w, h, quality, color, 0)
}

/// [`encode_jpeg_raw`] with a restart marker every `interval` MCUs (0: none).
fn encode_jpeg_with(
    data: &[u8],
    w: u32,
    h: u32,
    quality: u8,
    color: ColorType,
    interval: u16,
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
    if interval > 0 {
        enc.set_restart_interval(interval);
    }
    enc.encode(data, w16, h16, color)
        .map_err(|e| format!("JPEG encode: {e}"))?;
    Ok(out)
}

/// Compress RGB pixels as one zstd frame.
pub fn encode_raw(img: &RgbImage) -> Result<Vec<u8>, String> {
    zstd::bulk::compress(img.as_raw(), ZSTD_LEVEL).map_err(|e| format!("zstd: {e}"))
}
