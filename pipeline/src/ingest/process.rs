//! One input file to one shard record: decode, resize if the shorter side is too long,
//! encode (or keep the original JPEG bytes when nothing needs to change).

use super::decode::decode_input;
use super::encode::{encode_jpeg, encode_raw};
use super::resize::{resize_rgb, target_size};
use fast_image_resize::Resizer;
use formats::shard::Encoding;

/// Options of the per-image work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestOptions {
    /// How records are stored.
    pub format: Encoding,
    /// Shorter-side limit; larger images are resized to it.
    pub max_side: u32,
    /// JPEG quality for (re-)encoded images.
    pub quality: u8,
    /// Pixel limit (decompression-bomb guard).
    pub max_pixels: u64,
    /// Target MCUs per restart interval of JPEG records, 0 for none (see
    /// [`formats::shard::ShardOptions::restart_mcus`]): kept JPEGs are re-written
    /// losslessly with restart markers, re-encoded ones are encoded with them.
    pub restart_mcus: u32,
}

/// Default [`IngestOptions::restart_mcus`]: 4 MCUs (64 pixels of a 4:2:0 image) per
/// interval. Cost and gain are in BENCHMARKS.md ("Tiled JPEG records").
pub const DEFAULT_RESTART_MCUS: u32 = 4;

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            format: Encoding::Jpeg,
            max_side: 512,
            quality: 90,
            max_pixels: DEFAULT_MAX_PIXELS,
            restart_mcus: DEFAULT_RESTART_MCUS,
        }
    }
}

/// Default pixel limit: Pillow's `Image.MAX_IMAGE_PIXELS`.
pub const DEFAULT_MAX_PIXELS: u64 = 89_478_485;

/// A finished record, ready for the writer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Processed {
    /// Source width.
    pub orig_width: u32,
    /// Source height.
    pub orig_height: u32,
    /// Stored width.
    pub width: u32,
    /// Stored height.
    pub height: u32,
    /// Stored encoding.
    pub encoding: Encoding,
    /// Stored bytes.
    pub bytes: Vec<u8>,
}

/// Turn one input file's bytes into a record. `Err` is a one-line reason to skip the file.
pub fn process_image(
    bytes: &[u8],
    opts: &IngestOptions,
    resizer: &mut Resizer,
) -> Result<Processed, String> {
    let decoded = decode_input(bytes, opts.max_pixels)?;
    let (ow, oh) = decoded.rgb.dimensions();
    let (w, h) = target_size(ow, oh, opts.max_side);
    let resized = (w, h) != (ow, oh);
    let out = match opts.format {
        Encoding::Jpeg if !resized && decoded.is_plain_rgb_jpeg() => match opts.restart_mcus {
            0 => bytes.to_vec(),
            n => {
                super::jpeg::add_restart_markers(bytes, n)
                    .map_err(|e| format!("JPEG restart-marker rewrite: {e}"))?
                    .0
            }
        },
        Encoding::Jpeg | Encoding::RawRgbZstd => {
            let img = if resized {
                resize_rgb(resizer, &decoded.rgb, w, h)?
            } else {
                decoded.rgb
            };
            match opts.format {
                Encoding::Jpeg => encode_jpeg(&img, opts.quality, opts.restart_mcus)?,
                Encoding::RawRgbZstd => encode_raw(&img)?,
            }
        }
    };
    Ok(Processed {
        orig_width: ow,
        orig_height: oh,
        width: w,
        height: h,
        encoding: opts.format,
        bytes: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::decode::decode_record;
    use crate::ingest::synth::{draw, render_file};
    use formats::shard::RecordRef;

    fn record(p: &Processed) -> RecordRef<'_> {
        RecordRef {
            label: 0,
            orig_width: p.orig_width,
            orig_height: p.orig_height,
            width: p.width,
            height: p.height,
            encoding: p.encoding,
            bytes: &p.bytes,
        }
    }

    fn mean_abs_diff(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
        let s: u64 = a
            .as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(&x, &y)| u64::from(x.abs_diff(y)))
            .sum();
        s as f64 / a.as_raw().len() as f64
    }

    #[test]
    fn every_input_kind_becomes_rgb_close_to_the_drawn_pixels() {
        let opts = IngestOptions {
            max_side: 10_000,
            quality: 95,
            ..IngestOptions::default()
        };
        let mut r = Resizer::new();
        // index 0: RGB JPEG, 1: gray JPEG, 2: PNG, 3: CMYK JPEG, 4: 16-bit RGBA PNG.
        for index in 0..5 {
            let (name, bytes) = render_file(9, "train", 2, index).unwrap();
            let p = process_image(&bytes, &opts, &mut r).unwrap();
            assert_eq!((p.width, p.height), (p.orig_width, p.orig_height), "{name}");
            let img = decode_record(&record(&p)).unwrap();
            let drawn = draw(9, "train", 2, index);
            assert_eq!(img.dimensions(), drawn.dimensions());
            match index {
                0 => {
                    // Re-written with restart markers, losslessly: libjpeg gives the input's
                    // pixels exactly; with restart_mcus 0 the bytes are kept as they are.
                    assert_ne!(p.bytes, bytes);
                    let (w, h) = (p.width, p.height);
                    let whole = crate::transforms::crop::CropRect::whole(w, h);
                    let original = crate::ingest::jpeg::decode_region(&bytes, (w, h), whole)
                        .unwrap()
                        .unwrap();
                    assert_eq!(img.as_raw(), &original, "{name}");
                    let layout = crate::ingest::jpeg_tiles::TileLayout::parse(&p.bytes).unwrap();
                    assert!((1..=DEFAULT_RESTART_MCUS).contains(&layout.interval()));
                    let keep = IngestOptions {
                        restart_mcus: 0,
                        ..opts.clone()
                    };
                    let kept = process_image(&bytes, &keep, &mut r).unwrap();
                    assert_eq!(kept.bytes, bytes, "small RGB JPEG is stored unchanged");
                }
                1 => {
                    assert_ne!(p.bytes, bytes, "grayscale JPEG is re-encoded as RGB");
                    assert!(img.pixels().all(|px| px.0[0].abs_diff(px.0[1]) <= 3));
                }
                2 | 4 => {
                    // Lossless sources (8-bit RGB, 16-bit RGBA): stored raw, the pixels are
                    // exactly the drawn ones (16-bit scaled down, alpha dropped).
                    let raw = IngestOptions {
                        format: Encoding::RawRgbZstd,
                        ..opts.clone()
                    };
                    let p = process_image(&bytes, &raw, &mut r).unwrap();
                    assert_eq!(decode_record(&record(&p)).unwrap(), drawn, "{name}");
                    assert!(mean_abs_diff(&img, &drawn) < 10.0, "{name}");
                }
                _ => {
                    assert_ne!(p.bytes, bytes, "CMYK JPEG is re-encoded as RGB");
                    assert!(
                        mean_abs_diff(&img, &drawn) < 10.0,
                        "{name}: {}",
                        mean_abs_diff(&img, &drawn)
                    );
                }
            }
        }
    }

    #[test]
    fn raw_records_hold_the_resized_pixels_exactly() {
        let (_, bytes) = render_file(1, "val", 0, 7).unwrap();
        let opts = IngestOptions {
            format: Encoding::RawRgbZstd,
            max_side: 48,
            ..IngestOptions::default()
        };
        let p = process_image(&bytes, &opts, &mut Resizer::new()).unwrap();
        let src = crate::ingest::decode::decode_input(&bytes, u64::MAX)
            .unwrap()
            .rgb;
        let want = crate::ingest::resize::shorter_side_resize(&src, 48).unwrap();
        assert_eq!(p.width.min(p.height), 48);
        assert_eq!(decode_record(&record(&p)).unwrap(), want);
    }

    #[test]
    fn bad_inputs_give_reasons() {
        let (_, jpeg) = render_file(1, "train", 0, 0).unwrap();
        let opts = IngestOptions::default();
        let mut r = Resizer::new();
        let reason =
            |b: &[u8], o: &IngestOptions| process_image(b, o, &mut Resizer::new()).unwrap_err();
        assert!(reason(&jpeg[..jpeg.len() - 40], &opts).contains("truncated JPEG"));
        assert!(reason(b"", &opts).contains("empty file"));
        assert!(reason(b"hello world, no image", &opts).contains("not an image"));
        let tiny = IngestOptions {
            max_pixels: 1000,
            ..IngestOptions::default()
        };
        assert!(reason(&jpeg, &tiny).contains("exceeds the limit of 1000"));
        assert!(process_image(&jpeg, &opts, &mut r).is_ok());
    }
}
