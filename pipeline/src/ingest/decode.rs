//! Decoding: input files of any supported kind to 8-bit RGB, and stored records to RGB.

use super::IngestError;
use crate::transforms::crop::CropRect;
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
    // Searched from the end: a complete file ends with its end-of-image marker.
    if b[i..].windows(2).rev().any(|w| w == [0xFF, 0xD9]) {
        Ok(components)
    } else {
        Err("truncated JPEG (no end-of-image marker after the image data)".into())
    }
}

/// Decode an input file's bytes to 8-bit RGB. The file is first held to the decoder
/// policy ([`super::policy::probe`]: pixel limit from the header, JPEG scan limit, PNG
/// chunk bounds), before any pixel memory is allocated. `Err` holds a one-line reason
/// suitable for the manifest's skip list.
pub fn decode_input(bytes: &[u8], max_pixels: u64) -> Result<Decoded, String> {
    let super::policy::Probe {
        format,
        width: w,
        height: h,
        jpeg_components,
    } = super::policy::probe(bytes, max_pixels)?;
    if jpeg_components == Some(4) {
        // CMYK / YCCK: libjpeg plus Pillow's conversion (the image crate's differs from
        // Pillow's), before any `image` decoder is built.
        let px = super::jpeg::decode_region(bytes, (w, h), CropRect::whole(w, h))?
            .ok_or_else(|| "CMYK JPEG left undecoded".to_string())?;
        let rgb =
            RgbImage::from_raw(w, h, px).ok_or_else(|| "CMYK buffer size mismatch".to_string())?;
        return Ok(Decoded {
            rgb,
            format,
            source_color: ExtendedColorType::Cmyk8,
        });
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    // Room for a 16-bit RGBA image at the pixel limit.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(1 << 20));
    reader.limits(limits);
    let decoder = reader.into_decoder().map_err(|e| {
        format!(
            "cannot read {} header: {e}",
            super::policy::format_name(format)
        )
    })?;
    // image reports CMYK JPEGs as RGB (it converts them): use the frame header instead.
    let source_color = match jpeg_components {
        Some(1) => ExtendedColorType::L8,
        Some(3) => ExtendedColorType::Rgb8,
        Some(4) => ExtendedColorType::Cmyk8,
        Some(_) => ExtendedColorType::Unknown(0),
        None => decoder.original_color_type(),
    };
    let img = image::DynamicImage::from_decoder(decoder)
        .map_err(|e| format!("cannot decode {}: {e}", super::policy::format_name(format)))?;
    Ok(Decoded {
        rgb: img.into_rgb8(),
        format,
        source_color,
    })
}

/// Decode a stored record to 8-bit RGB (JPEG, or zstd-compressed raw RGB), checking that
/// the result has the size the index promises. JPEGs go through libjpeg-turbo (Pillow's
/// pixels, CMYK and YCCK included); colour spaces libjpeg is not asked to handle, through
/// the `image` crate.
pub fn decode_record(rec: &RecordRef<'_>) -> Result<RgbImage, IngestError> {
    decode_record_region(rec, full_rect(rec))
}

fn full_rect(rec: &RecordRef<'_>) -> CropRect {
    CropRect::whole(rec.width, rec.height)
}

/// Decode only the rectangle `rect` of a stored record (in stored pixels). The pixels are
/// exactly those of [`decode_record`] cropped to `rect`: JPEGs decode only the blocks the
/// rectangle needs (libjpeg-turbo's `jpeg_crop_scanline` and `jpeg_skip_scanlines`, and
/// only the restart intervals around it in records tiled by `shard`), other records are
/// decoded fully and cropped. A truncated JPEG (no end-of-image marker) is an error
/// whatever the rectangle.
pub fn decode_record_region(rec: &RecordRef<'_>, rect: CropRect) -> Result<RgbImage, IngestError> {
    region(rec, rect, false).map(|(img, _)| img)
}

/// [`decode_record_region`] that may return a wider band of columns (what libjpeg decodes
/// anyway) to save copying the rectangle out. The returned rectangle holds `rect`'s rows
/// and at least its columns; over `rect` the pixels are exactly those of
/// [`decode_record`], outside it they are decoder output that may differ at the band's
/// edge (see [`super::jpeg::decode_region_wide`]): read only `rect`.
pub fn decode_record_region_around(
    rec: &RecordRef<'_>,
    rect: CropRect,
) -> Result<(RgbImage, CropRect), IngestError> {
    region(rec, rect, true)
}

fn region(
    rec: &RecordRef<'_>,
    rect: CropRect,
    wide: bool,
) -> Result<(RgbImage, CropRect), IngestError> {
    let (w, h) = (rec.width, rec.height);
    if !rect.fits_in(w, h) {
        return Err(IngestError::Record(format!(
            "region {}x{} at ({}, {}) is not inside the {w}x{h} record",
            rect.width, rect.height, rect.left, rect.top
        )));
    }
    // Readers of a shard set refuse larger index entries already (`ShardSet::entry`); this
    // guards every other caller before any buffer is sized from the record's dimensions.
    let pixels = u64::from(w) * u64::from(h);
    if pixels > formats::shard::layout::MAX_PIXELS_CAP {
        return Err(IngestError::Record(format!(
            "{w}x{h} = {pixels} pixels exceeds the limit of {}",
            formats::shard::layout::MAX_PIXELS_CAP
        )));
    }
    let full = rect == full_rect(rec);
    let jpeg_err = |e: String| IngestError::Record(format!("JPEG: {e}"));
    let img = match rec.encoding {
        Encoding::Jpeg => {
            check_jpeg(rec.bytes).map_err(jpeg_err)?;
            // Records with restart markers tiling their rows: decode only the intervals
            // around the rectangle (see `jpeg_tiles`).
            let tiled = (!full)
                .then(|| super::jpeg_tiles::TileLayout::parse(rec.bytes))
                .flatten()
                .and_then(|layout| Some((layout.tile_for(rect)?, layout)));
            let (bytes, origin, size, inner) = match &tiled {
                Some((tile, layout)) => (
                    std::borrow::Cow::Owned(layout.tile_jpeg(rec.bytes, *tile)),
                    (tile.left, tile.top),
                    (tile.width, tile.height),
                    CropRect {
                        left: rect.left - tile.left,
                        top: rect.top - tile.top,
                        ..rect
                    },
                ),
                None => (std::borrow::Cow::Borrowed(rec.bytes), (0, 0), (w, h), rect),
            };
            let decoded = if wide {
                super::jpeg::decode_region_wide(&bytes, size, inner)
            } else {
                super::jpeg::decode_region(&bytes, size, inner).map(|o| o.map(|px| (px, inner)))
            }
            .map_err(jpeg_err)?;
            match decoded {
                Some((px, got)) => {
                    let got = CropRect {
                        left: got.left + origin.0,
                        top: got.top + origin.1,
                        ..got
                    };
                    let img = RgbImage::from_raw(got.width, got.height, px)
                        .ok_or_else(|| IngestError::Record("region buffer size mismatch".into()))?;
                    return Ok((img, got));
                }
                None => decode_jpeg_with_image(rec)?,
            }
        }
        Encoding::RawRgbZstd => {
            let n = w as usize * h as usize * 3;
            // A frame that declares another size is refused from its header; otherwise
            // decompression writes into a buffer of exactly `n` bytes and fails past it.
            if let Ok(Some(declared)) = zstd::zstd_safe::get_frame_content_size(rec.bytes) {
                if declared != n as u64 {
                    return Err(IngestError::Record(format!(
                        "zstd frame declares {declared} bytes, {w}x{h} RGB needs {n}"
                    )));
                }
            }
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
    if full {
        Ok((img, rect))
    } else {
        let part = image::imageops::crop_imm(&img, rect.left, rect.top, rect.width, rect.height)
            .to_image();
        Ok((part, rect))
    }
}

/// The full decode of a JPEG the libjpeg path leaves out (neither grayscale, YCbCr, RGB,
/// CMYK nor YCCK), by the `image` crate.
fn decode_jpeg_with_image(rec: &RecordRef<'_>) -> Result<RgbImage, IngestError> {
    let mut reader = ImageReader::with_format(Cursor::new(rec.bytes), ImageFormat::Jpeg);
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(u64::from(rec.width) * u64::from(rec.height) * 4 + (1 << 20));
    reader.limits(limits);
    Ok(reader
        .decode()
        .map_err(|e| IngestError::Record(format!("JPEG: {e}")))?
        .into_rgb8())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use jpeg_encoder::{ColorType, Encoder, SamplingFactor};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn jpeg(w: u16, h: u16, ct: ColorType, channels: usize) -> Vec<u8> {
        let mut rng = ChaCha8Rng::seed_from_u64(u64::from(w) * 7 + u64::from(h));
        let px: Vec<u8> = (0..w as usize * h as usize * channels)
            .map(|_| rng.random())
            .collect();
        let mut bytes = Vec::new();
        let mut enc = Encoder::new(&mut bytes, 85);
        enc.set_sampling_factor(SamplingFactor::R_4_2_0);
        enc.encode(&px, w, h, ct).unwrap();
        bytes
    }

    /// A JPEG record of `bytes` at its stored size.
    pub(crate) fn record(bytes: &[u8], w: u32, h: u32) -> RecordRef<'_> {
        RecordRef {
            label: 0,
            orig_width: w,
            orig_height: h,
            width: w,
            height: h,
            encoding: Encoding::Jpeg,
            bytes,
        }
    }

    fn rect(left: u32, top: u32, width: u32, height: u32) -> CropRect {
        CropRect {
            left,
            top,
            width,
            height,
        }
    }

    fn err(r: Result<RgbImage, IngestError>) -> String {
        r.map(|_| ()).unwrap_err().to_string()
    }

    #[test]
    fn corrupt_and_truncated_records_are_errors_naming_the_problem() {
        let good = jpeg(64, 48, ColorType::Rgb, 3);
        let top_left = rect(0, 0, 8, 8);
        // Cut inside the image data: an error for any region, even one above the cut.
        for cut in [good.len() - 2, good.len() / 2, 700] {
            let r = record(&good[..cut], 64, 48);
            for e in [
                err(decode_record(&r)),
                err(decode_record_region(&r, top_left)),
            ] {
                assert!(e.contains("truncated JPEG"), "cut {cut}: {e}");
            }
        }
        let e = err(decode_record(&record(
            b"\xFF\xD8\xFF\xE0\x00\x10JFIF",
            64,
            48,
        )));
        assert!(e.contains("truncated JPEG"), "{e}");
        let e = err(decode_record(&record(b"GIF89a, not a jpeg", 64, 48)));
        assert!(e.contains("not a JPEG"), "{e}");
        let e = err(decode_record(&record(&good, 64, 49)));
        assert!(e.contains("header says 64x48, the index says 64x49"), "{e}");
        let e = err(decode_record_region(
            &record(&good, 64, 48),
            rect(60, 0, 5, 1),
        ));
        assert!(e.contains("not inside the 64x48 record"), "{e}");
        // A damaged header (SOF with a bad precision) is libjpeg's error, not an abort.
        let sof = good.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        let mut bad = good.clone();
        bad[sof + 4] = 3;
        let e = err(decode_record(&record(&bad, 64, 48)));
        assert!(e.contains("JPEG: Unsupported JPEG data precision 3"), "{e}");
        // Random damage: never a panic or abort; when both decodes succeed the region is
        // the same rectangle of the full decode.
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut ok = 0;
        for _ in 0..400 {
            let mut b = good.clone();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..b.len());
                b[at] = rng.random();
            }
            let r = record(&b, 64, 48);
            let region = rect(9, 17, 30, 20);
            if let (Ok(full), Ok(part)) = (decode_record(&r), decode_record_region(&r, region)) {
                let want = image::imageops::crop_imm(&full, 9, 17, 30, 20).to_image();
                assert!(part == want);
                ok += 1;
            }
        }
        assert!(ok > 100, "{ok}");
    }

    #[test]
    fn cmyk_records_and_inputs_decode_through_libjpeg() {
        let bytes = jpeg(40, 30, ColorType::Cmyk, 4);
        let r = record(&bytes, 40, 30);
        let full = decode_record(&r).unwrap();
        let want = super::super::jpeg::decode_region(&bytes, (40, 30), rect(0, 0, 40, 30))
            .unwrap()
            .unwrap();
        assert!(full.as_raw() == &want, "CMYK records go through libjpeg");
        let part = decode_record_region(&r, rect(3, 5, 20, 11)).unwrap();
        assert!(part == image::imageops::crop_imm(&full, 3, 5, 20, 11).to_image());
        // Ingest too: the same pixels, and the source colour is reported as CMYK.
        let d = decode_input(&bytes, 1 << 20).unwrap();
        assert!(d.rgb == full);
        assert_eq!(d.source_color, ExtendedColorType::Cmyk8);
    }
}
