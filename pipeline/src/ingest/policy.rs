//! One decoder policy for every command that decodes an image file (`shard`, `predict`,
//! `bench-shard`): [`probe`] checks a file before any decoder allocates for it, and both
//! input decoders ([`super::decode::decode_input`], [`super::open::decode_like_pillow`])
//! start with it.
//!
//! - Pixels: at most the caller's `max_pixels` (Pillow's decompression-bomb limit by
//!   default), read from the header.
//! - JPEG scans: at most [`MAX_SCANS`] start-of-scan markers, counted by walking the marker
//!   segments (the entropy-coded data is skipped with `memchr`), before libjpeg or
//!   zune-jpeg sees the file: each scan of a progressive JPEG is a pass over every
//!   coefficient, so a 13000x13000 file of 20,000 scans would run for minutes.
//! - PNG ancillary chunks: an `iCCP` profile and a compressed `zTXt`/`iTXt` text inflate
//!   to at most [`MAX_TEXT_CHUNK`] bytes each, and all `iCCP` and text chunks together to
//!   at most [`MAX_TEXT_MEMORY`] bytes: Pillow's `PngImagePlugin.MAX_TEXT_CHUNK` and
//!   `MAX_TEXT_MEMORY`. Inflation stops one byte past the bound, so a 3 MB file whose
//!   profile inflates to 3 GiB costs one MiB of work.

use flate2::read::ZlibDecoder;
use image::{ImageFormat, ImageReader};
use std::io::{Cursor, Read};

/// Most scans (start-of-scan markers) a JPEG may have. zune-jpeg's default cap, which
/// `shard` has applied since its first version; libjpeg's simple progression writes 10
/// (colour) or 6 (grey) scans, and encoders that search scan scripts (mozjpeg) stay far
/// below 100.
pub const MAX_SCANS: usize = 100;

/// Most bytes one PNG `iCCP` profile or compressed text chunk may inflate to: Pillow's
/// `PngImagePlugin.MAX_TEXT_CHUNK` (`ImageFile.SAFEBLOCK`, 1 MiB). ICC profiles are a
/// few KiB (sRGB v4 is 60 KiB).
pub const MAX_TEXT_CHUNK: usize = 1 << 20;

/// Most bytes all `iCCP`, `tEXt`, `zTXt` and `iTXt` chunks of one PNG may hold once
/// inflated: Pillow's `PngImagePlugin.MAX_TEXT_MEMORY` (64 x `MAX_TEXT_CHUNK`).
pub const MAX_TEXT_MEMORY: usize = 64 * MAX_TEXT_CHUNK;

/// What [`probe`] learned about a file that passed the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// JPEG or PNG.
    pub format: ImageFormat,
    /// Width in pixels (at least 1).
    pub width: u32,
    /// Height in pixels (at least 1).
    pub height: u32,
    /// Colour components of a JPEG's frame header.
    pub jpeg_components: Option<u8>,
}

/// `JPEG` or `PNG`, or the format's first extension.
pub fn format_name(f: ImageFormat) -> &'static str {
    match f {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        _ => f.extensions_str().first().copied().unwrap_or("unknown"),
    }
}

/// Checks an image file's bytes against the decoder policy and reads its size, without
/// decoding pixels: a JPEG or PNG, complete (JPEG), at most [`MAX_SCANS`] scans (JPEG),
/// ancillary chunks within Pillow's bounds (PNG), at least one and at most `max_pixels`
/// pixels. `Err` holds a one-line reason (the caller names the file).
pub fn probe(bytes: &[u8], max_pixels: u64) -> Result<Probe, String> {
    if bytes.is_empty() {
        return Err("empty file".into());
    }
    let format = image::guess_format(bytes)
        .map_err(|_| "not an image (unrecognised file signature)".to_string())?;
    let jpeg_components = match format {
        ImageFormat::Jpeg => {
            let components = super::decode::check_jpeg(bytes)?;
            check_jpeg_scans(bytes)?;
            Some(components)
        }
        ImageFormat::Png => {
            check_png_chunks(bytes)?;
            None
        }
        other => {
            return Err(format!(
                "unsupported image format {} (JPEG and PNG are read)",
                format_name(other)
            ))
        }
    };
    // The header parse allocates nothing that depends on the pixel count, and the chunks
    // it inflates were bounded above, so it runs without the `image` crate's limits; the
    // pixel limit then gives a clear reason before pixel memory is allocated.
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.no_limits();
    let (w, h) = reader
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
    Ok(Probe {
        format,
        width: w,
        height: h,
        jpeg_components,
    })
}

/// Start-of-scan markers of a JPEG, counted up to `MAX_SCANS + 1`: marker segments are
/// stepped over by their lengths, entropy-coded data up to the next marker (a 0xFF byte
/// followed by neither a stuffed zero, a restart marker nor a fill byte). Counting stops at
/// the end-of-image marker or where the file ends.
pub fn jpeg_scans(b: &[u8]) -> usize {
    let mut scans = 0;
    let mut i = 2; // after SOI
    while scans <= MAX_SCANS {
        // At a marker: skip fill bytes.
        while b.get(i) == Some(&0xFF) {
            i += 1;
        }
        let Some(&marker) = b.get(i) else { break };
        i += 1;
        match marker {
            0xD9 => break,
            0xD8 | 0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let (Some(&hi), Some(&lo)) = (b.get(i), b.get(i + 1)) else {
            break;
        };
        i += usize::from(hi) << 8 | usize::from(lo);
        if marker != 0xDA {
            continue;
        }
        scans += 1;
        // Entropy-coded data: find the next real marker.
        loop {
            let Some(off) = b.get(i..).and_then(|rest| memchr::memchr(0xFF, rest)) else {
                return scans;
            };
            let at = i + off;
            match b.get(at + 1) {
                None => return scans,
                Some(0x00 | 0xD0..=0xD7) => i = at + 2,
                Some(0xFF) => i = at + 1,
                Some(_) => {
                    i = at;
                    break;
                }
            }
        }
    }
    scans
}

fn check_jpeg_scans(b: &[u8]) -> Result<(), String> {
    let scans = jpeg_scans(b);
    if scans > MAX_SCANS {
        return Err(format!(
            "JPEG with more than {MAX_SCANS} scans (the decoder limit for every command; \
             each progressive scan is another pass over the image)"
        ));
    }
    Ok(())
}

/// Bytes `z` inflates to, counted up to `limit + 1` (never further): a stream that
/// fails to inflate counts what it gave before failing, and the PNG decoder judges it.
fn inflated_len(z: &[u8], limit: usize) -> usize {
    let mut d = ZlibDecoder::new(z).take(limit as u64 + 1);
    let mut buf = [0u8; 16 * 1024];
    let mut n = 0;
    while let Ok(k) = d.read(&mut buf) {
        if k == 0 {
            break;
        }
        n += k;
    }
    n
}

/// Position just past the first NUL of `b` within its first 80 bytes (a PNG keyword is
/// 1 to 79 bytes).
fn after_keyword(b: &[u8]) -> Option<usize> {
    b.iter().take(80).position(|&c| c == 0).map(|p| p + 1)
}

/// Walks a PNG's chunks and bounds its `iCCP` and text chunks as Pillow does
/// ([`MAX_TEXT_CHUNK`], [`MAX_TEXT_MEMORY`]). Malformed chunks are left to the decoder.
fn check_png_chunks(b: &[u8]) -> Result<(), String> {
    let mut i: usize = 8; // after the signature
    let mut total = 0usize;
    while let Some(head) = i.checked_add(8).and_then(|end| b.get(i..end)) {
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let kind = [head[4], head[5], head[6], head[7]];
        let start = i + 8;
        let data = &b[start.min(b.len())..start.saturating_add(len).min(b.len())];
        let name = String::from_utf8_lossy(&kind).into_owned();
        let (inflated, compressed) = match &kind {
            b"IEND" => break,
            b"iCCP" => {
                let at = after_keyword(data)
                    .map_or(data.len(), |k| k + 1)
                    .min(data.len());
                (inflated_len(&data[at..], MAX_TEXT_CHUNK), true)
            }
            b"zTXt" => {
                let at = after_keyword(data)
                    .map_or(data.len(), |k| k + 1)
                    .min(data.len());
                (inflated_len(&data[at..], MAX_TEXT_CHUNK), true)
            }
            b"iTXt" => match after_keyword(data) {
                // Compression flag, method, then language tag and translated keyword, each
                // NUL-terminated.
                Some(k) if data.get(k) == Some(&1) => {
                    let rest = data.get(k + 2..).unwrap_or(&[]);
                    let lang = rest
                        .iter()
                        .position(|&c| c == 0)
                        .map_or(rest.len(), |p| p + 1);
                    let rest = &rest[lang..];
                    let tr = rest
                        .iter()
                        .position(|&c| c == 0)
                        .map_or(rest.len(), |p| p + 1);
                    (inflated_len(&rest[tr..], MAX_TEXT_CHUNK), true)
                }
                _ => (data.len(), false),
            },
            b"tEXt" => (data.len(), false),
            _ => (0, false),
        };
        if compressed && inflated > MAX_TEXT_CHUNK {
            return Err(format!(
                "PNG {name} chunk inflates past {MAX_TEXT_CHUNK} bytes (Pillow's \
                 MAX_TEXT_CHUNK; a decompression bomb)"
            ));
        }
        total = total.saturating_add(inflated);
        if total > MAX_TEXT_MEMORY {
            return Err(format!(
                "PNG text and colour-profile chunks hold more than {MAX_TEXT_MEMORY} bytes \
                 (Pillow's MAX_TEXT_MEMORY)"
            ));
        }
        i = start.saturating_add(len).saturating_add(4); // data, then the CRC
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::ZlibEncoder;
    use std::io::Write;

    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&[0; 4]); // CRC: not checked by the walk
    }

    fn zlib_zeros(n: usize) -> Vec<u8> {
        let mut e = ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&vec![0u8; n]).unwrap();
        e.finish().unwrap()
    }

    fn png_with(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut b = b"\x89PNG\r\n\x1a\n".to_vec();
        chunk(&mut b, b"IHDR", &[0, 0, 0, 1, 0, 0, 0, 1, 8, 0, 0, 0, 0]);
        chunk(&mut b, kind, data);
        chunk(&mut b, b"IEND", &[]);
        b
    }

    #[test]
    fn png_profiles_and_texts_are_bounded_as_pillow_bounds_them() {
        // A profile of exactly MAX_TEXT_CHUNK bytes passes; one byte more does not.
        for (n, ok) in [(MAX_TEXT_CHUNK, true), (MAX_TEXT_CHUNK + 1, false)] {
            let mut d = b"icc\0\0".to_vec();
            d.extend(zlib_zeros(n));
            let r = check_png_chunks(&png_with(b"iCCP", &d));
            assert_eq!(r.is_ok(), ok, "{n}: {r:?}");
            let mut d = b"Comment\0\0".to_vec();
            d.extend(zlib_zeros(n));
            assert_eq!(check_png_chunks(&png_with(b"zTXt", &d)).is_ok(), ok, "{n}");
            let mut d = b"Comment\0\x01\0en\0Kommentar\0".to_vec();
            d.extend(zlib_zeros(n));
            assert_eq!(check_png_chunks(&png_with(b"iTXt", &d)).is_ok(), ok, "{n}");
        }
        let e = {
            let mut d = b"icc\0\0".to_vec();
            d.extend(zlib_zeros(8 << 20));
            check_png_chunks(&png_with(b"iCCP", &d)).unwrap_err()
        };
        assert!(
            e.contains("PNG iCCP chunk inflates past 1048576 bytes"),
            "{e}"
        );
        // 65 uncompressed text chunks of 1 MiB: past MAX_TEXT_MEMORY together.
        let mut b = b"\x89PNG\r\n\x1a\n".to_vec();
        let text = [b"k\0".as_slice(), &vec![b'a'; MAX_TEXT_CHUNK]].concat();
        for _ in 0..65 {
            chunk(&mut b, b"tEXt", &text);
        }
        let e = check_png_chunks(&b).unwrap_err();
        assert!(e.contains("Pillow's MAX_TEXT_MEMORY"), "{e}");
        // Damaged streams and truncated chunks are the decoder's to judge.
        assert!(check_png_chunks(&png_with(b"iCCP", b"icc\0\0garbage")).is_ok());
        assert!(check_png_chunks(&png_with(b"zTXt", b"")).is_ok());
        assert!(check_png_chunks(&b"\x89PNG\r\n\x1a\n\xff\xff\xff\xffiCCP"[..]).is_ok());
    }

    /// SOI, a frame header, then `n` scans of `data`, and EOI.
    fn jpeg_markers(n: usize, data: &[u8]) -> Vec<u8> {
        let mut b = vec![0xFF, 0xD8, 0xFF, 0xC2, 0, 11, 8, 0, 8, 0, 8, 1, 1, 0x11, 0];
        for _ in 0..n {
            // A DHT between scans whose table bytes hold FF DA: stepped over, not counted.
            b.extend_from_slice(&[0xFF, 0xC4, 0, 6, 0xFF, 0xDA, 0xFF, 0xDA]);
            b.extend_from_slice(&[0xFF, 0xDA, 0, 8, 1, 1, 0, 0, 63, 0]);
            b.extend_from_slice(data);
        }
        b.extend_from_slice(&[0xFF, 0xD9]);
        b
    }

    #[test]
    fn jpeg_scans_are_counted_by_marker_walk() {
        // Entropy data with stuffed zeros, restart markers and fill bytes.
        let data = [
            0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56, 0xFF, 0xFF, 0xD1, 0x78,
        ];
        for n in [1, 2, 10, 100] {
            assert_eq!(jpeg_scans(&jpeg_markers(n, &data)), n);
            check_jpeg_scans(&jpeg_markers(n, &data)).unwrap();
        }
        assert_eq!(jpeg_scans(&jpeg_markers(150, &data)), MAX_SCANS + 1);
        let e = check_jpeg_scans(&jpeg_markers(101, &data)).unwrap_err();
        assert!(e.contains("more than 100 scans"), "{e}");
        // Truncated anywhere: a count, never a panic.
        let full = jpeg_markers(3, &data);
        for cut in 0..full.len() {
            assert!(jpeg_scans(&full[..cut]) <= 3);
        }
    }
}
