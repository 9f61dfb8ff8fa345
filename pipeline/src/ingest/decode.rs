//! Decoding: input files of any supported kind to 8-bit RGB, and stored records to RGB.

use super::IngestError;
use formats::shard::{Encoding, RecordRef};
use image::{ExtendedColorType, ImageDecoder, ImageFormat, ImageReader, RgbImage};
use std::io::Cursor;

/// A decoded input image.
#[derive(Debug)]
pub struct Decoded {
    /// Pixels as 8-bit RGB (grayscale replicated, alpha dropped, 16-bit scaled, CMYK converted).
    pub rgb: RgbImage,
    /// The container format.
    pub format: ImageFormat,
    /// The colour type stored in the file before conversion.
    pub source_color: ExtendedColorType,
}

impl Decoded {
    /// True when the file is a JPEG that already holds 3-component 8-bit colour, so its bytes
    /// can be stored unchanged when no resize is needed.
    pub fn is_plain_rgb_jpeg(&self) -> bool {
        self.format == ImageFormat::Jpeg && self.source_color == ExtendedColorType::Rgb8
    }
}

/// Check that a JPEG file is complete and return its number of colour components (from the
/// frame header): after the first start-of-scan there must be an end-of-image marker.
/// Truncated files fail this (the decoder itself pads them silently).
pub fn check_jpeg(b: &[u8]) -> Result<u8, String> {
    if b.len() < 4 || b[0] != 0xFF || b[1] != 0xD8 {
        return Err("not a JPEG file (no start-of-image marker)".into());
    }
    let mut i = 2usize;
    let mut components = None;
    // Walk marker segments up to the first SOS.
    loop {
        while i < b.len() && b[i] == 0xFF {
            i += 1;
        }
        let Some(&marker) = b.get(i) else {
            return Err("truncated JPEG (ends inside its headers)".into());
        };
        i += 1;
        match marker {
            0xD8 | 0x01 | 0xD0..=0xD7 => continue,
            0xD9 => return Err("JPEG without image data (end marker before any scan)".into()),
            _ => {}
        }
        let (Some(&hi), Some(&lo)) = (b.get(i), b.get(i + 1)) else {
            return Err("truncated JPEG (ends inside its headers)".into());
        };
        let len = usize::from(hi) << 8 | usize::from(lo);
        if len < 2 || i + len > b.len() {
            return Err("truncated JPEG (a header segment runs past the end)".into());
        }
        let is_sof = matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if is_sof && len >= 8 {
            components = Some(b[i + 7]);
        }
        i += len;
        if marker == 0xDA {
            break;
        }
    }
    let Some(components) = components else {
        return Err("JPEG without a frame header".into());
    };
    if b[i..].windows(2).any(|w| w == [0xFF, 0xD9]) {
        Ok(components)
    } else {
        Err("truncated JPEG (no end-of-image marker after the image data)".into())
    }
}

fn format_name(f: ImageFormat) -> &'static str {
    match f {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        _ => f.extensions_str().first().copied().unwrap_or("unknown"),
    }
}

/// Decode an input file's bytes to 8-bit RGB. Images with more than `max_pixels` pixels are
/// refused from their header, before any pixel memory is allocated. `Err` holds a one-line
/// reason suitable for the manifest's skip list.
pub fn decode_input(bytes: &[u8], max_pixels: u64) -> Result<Decoded, String> {
    if bytes.is_empty() {
        return Err("empty file".into());
    }
    let format = image::guess_format(bytes)
        .map_err(|_| "not an image (unrecognised file signature)".to_string())?;
    if !matches!(format, ImageFormat::Jpeg | ImageFormat::Png) {
        return Err(format!(
            "unsupported image format {} (JPEG and PNG are read)",
            format_name(format)
        ));
    }
    let jpeg_components = if format == ImageFormat::Jpeg {
        Some(check_jpeg(bytes)?)
    } else {
        None
    };
    // Dimensions first, without limits, so an oversized image is refused before any
    // pixel memory is allocated, with a clear reason.
    let mut probe = ImageReader::with_format(Cursor::new(bytes), format);
    probe.no_limits();
    let (w, h) = probe
        .into_dimensions()
        .map_err(|e| format!("cannot read {} header: {e}", format_name(format)))?;
    let pixels = u64::from(w) * u64::from(h);
    if pixels > max_pixels {
        return Err(format!(
            "{w}x{h} = {pixels} pixels exceeds the limit of {max_pixels} (decompression-bomb guard)"
        ));
    }
    if w == 0 || h == 0 {
        return Err(format!("empty image ({w}x{h})"));
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    // Room for a 16-bit RGBA image at the pixel limit.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(1 << 20));
    reader.limits(limits);
    let decoder = reader
        .into_decoder()
        .map_err(|e| format!("cannot read {} header: {e}", format_name(format)))?;
    // image reports CMYK JPEGs as RGB (it converts them): use the frame header instead.
    let source_color = match jpeg_components {
        Some(1) => ExtendedColorType::L8,
        Some(3) => ExtendedColorType::Rgb8,
        Some(4) => ExtendedColorType::Cmyk8,
        Some(_) => ExtendedColorType::Unknown(0),
        None => decoder.original_color_type(),
    };
    let img = image::DynamicImage::from_decoder(decoder)
        .map_err(|e| format!("cannot decode {}: {e}", format_name(format)))?;
    Ok(Decoded {
        rgb: img.into_rgb8(),
        format,
        source_color,
    })
}

/// Decode a stored record to 8-bit RGB (JPEG, or zstd-compressed raw RGB), checking that
/// the result has the size the index promises.
pub fn decode_record(rec: &RecordRef<'_>) -> Result<RgbImage, IngestError> {
    let (w, h) = (rec.width, rec.height);
    let img = match rec.encoding {
        Encoding::Jpeg => {
            let mut reader = ImageReader::with_format(Cursor::new(rec.bytes), ImageFormat::Jpeg);
            let mut limits = image::Limits::default();
            limits.max_alloc = Some(u64::from(w) * u64::from(h) * 4 + (1 << 20));
            reader.limits(limits);
            reader
                .decode()
                .map_err(|e| IngestError::Record(format!("JPEG: {e}")))?
                .into_rgb8()
        }
        Encoding::RawRgbZstd => {
            let n = w as usize * h as usize * 3;
            let raw = zstd::bulk::decompress(rec.bytes, n)
                .map_err(|e| IngestError::Record(format!("zstd: {e}")))?;
            if raw.len() != n {
                return Err(IngestError::Record(format!(
                    "raw record holds {} bytes, {w}x{h} RGB needs {n}",
                    raw.len()
                )));
            }
            RgbImage::from_raw(w, h, raw)
                .ok_or_else(|| IngestError::Record("raw buffer size mismatch".into()))?
        }
    };
    if img.dimensions() != (w, h) {
        return Err(IngestError::Record(format!(
            "decoded {}x{}, the index says {w}x{h}",
            img.width(),
            img.height()
        )));
    }
    Ok(img)
}
