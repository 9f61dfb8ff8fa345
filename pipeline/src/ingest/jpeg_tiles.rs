//! Decoding a JPEG region without entropy-decoding the rest of the image, through the
//! restart markers `deit-pipe shard` writes into JPEG records.
//!
//! In a baseline JPEG the Huffman data of every MCU depends on the bits before it, so even a
//! region decode (`jpeg_crop_scanline` + `jpeg_skip_scanlines`) reads the entropy-coded data
//! of every row above the region and of the whole width: about 86% of an ImageNet-sized
//! image for an average RandomResizedCrop, and entropy decoding is most of the decode time.
//! A restart marker resets the decoder's state (the DC predictions and the bit buffer), so
//! the data of a restart interval decodes on its own. When the intervals tile every MCU row
//! (R MCUs each, R dividing the MCUs per row; [`super::jpeg::add_restart_markers`] writes
//! records that way), the intervals that cover a rectangle of MCUs, concatenated under the
//! original headers with the frame size changed and the markers renumbered, are a valid
//! JPEG of that rectangle: a *tile JPEG*, which [`super::jpeg::decode_region`] then decodes.
//!
//! Exactness: the tile's blocks hold the same coefficients, so IDCT and colour conversion
//! give the same values; only chroma upsampling (libjpeg's "fancy" triangle filter reads one
//! chroma sample beyond each side) sees the tile's edge instead of its neighbours, which
//! changes the outermost pixel row/column of a tile edge that is not an image edge. The tile
//! is therefore chosen [`MARGIN`] pixels wider than the wanted rectangle on every inner
//! side, and an edge MCU keeps the image's true right/bottom size (the partial MCU and its
//! edge replication stay as in the full image). The tests compare against full decodes.
//!
//! Why by hand: no maintained crate cuts JPEGs at restart markers (jpegtran's `-crop`
//! re-encodes the Huffman data of the whole cropped area, which costs what we save).

use memchr::memchr_iter;

use crate::transforms::crop::CropRect;

/// Pixels kept between the wanted rectangle and a tile edge that is not an image edge (the
/// fancy upsampler reads one chroma sample, at most 2 pixels, beyond its output).
pub const MARGIN: u32 = 2;

/// Where the pieces of a tiled JPEG are: its frame geometry and the byte range of every
/// restart interval's entropy-coded data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TileLayout {
    /// Offset of the frame header's height field (2 bytes; the width follows).
    size_at: usize,
    /// Image size.
    width: u32,
    height: u32,
    /// MCU size in pixels.
    mcu_w: u32,
    mcu_h: u32,
    /// MCUs per row and MCU rows.
    mcus_per_row: u32,
    mcu_rows: u32,
    /// MCUs per restart interval (divides `mcus_per_row`).
    interval: u32,
    /// End of the start-of-scan segment: where the entropy-coded data begins.
    scan_at: usize,
    /// Byte range of each interval's data, in scan order, markers excluded.
    intervals: Vec<(usize, usize)>,
}

/// Big-endian u16 at `i`.
fn be16(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from(*b.get(i)?) << 8 | u32::from(*b.get(i + 1)?))
}

impl TileLayout {
    /// The layout of `b`, or `None` when it cannot be cut into tiles: not a sequential
    /// 8-bit Huffman JPEG with one scan holding every component, no restart interval, an
    /// interval that does not divide the MCUs per row, or restart markers missing.
    pub fn parse(b: &[u8]) -> Option<TileLayout> {
        if b.len() < 4 || b[0] != 0xFF || b[1] != 0xD8 {
            return None;
        }
        let mut i = 2usize;
        let mut frame: Option<(usize, u32, u32, u32, u32, u32)> = None; // size_at, w, h, n, hmax, vmax
        let mut interval = 0u32;
        let scan_at = loop {
            while b.get(i) == Some(&0xFF) {
                i += 1;
            }
            let marker = *b.get(i)?;
            i += 1;
            if matches!(marker, 0xD8 | 0x01 | 0xD0..=0xD7) {
                continue;
            }
            let len = be16(b, i)? as usize;
            if len < 2 || i + len > b.len() {
                return None;
            }
            match marker {
                // Baseline and extended sequential, Huffman coded.
                0xC0 | 0xC1 => {
                    if b.get(i + 2) != Some(&8) {
                        return None;
                    }
                    let (h, w, n) = (be16(b, i + 3)?, be16(b, i + 5)?, u32::from(*b.get(i + 7)?));
                    if w == 0 || h == 0 || n == 0 || len < 8 + 3 * n as usize {
                        return None;
                    }
                    let (mut hmax, mut vmax) = (1, 1);
                    for c in 0..n as usize {
                        let s = u32::from(b[i + 9 + 3 * c]);
                        let (hs, vs) = (s >> 4, s & 15);
                        if !(1..=4).contains(&hs) || !(1..=4).contains(&vs) {
                            return None;
                        }
                        hmax = hmax.max(hs);
                        vmax = vmax.max(vs);
                    }
                    frame = Some((i + 3, w, h, n, hmax, vmax));
                }
                // Any other frame type (progressive, lossless, arithmetic).
                0xC2 | 0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => return None,
                0xDD => interval = be16(b, i + 2)?,
                0xDA => {
                    let (_, _, _, n, _, _) = frame?;
                    if u32::from(*b.get(i + 2)?) != n {
                        return None;
                    }
                    break i + len;
                }
                0xD9 => return None,
                _ => {}
            }
            i += len;
        };
        let (size_at, width, height, n, hmax, vmax) = frame?;
        // One component: a non-interleaved scan, one 8x8 block per MCU.
        let (mcu_w, mcu_h) = if n == 1 { (8, 8) } else { (8 * hmax, 8 * vmax) };
        let mcus_per_row = width.div_ceil(mcu_w);
        let mcu_rows = height.div_ceil(mcu_h);
        if interval == 0 || !mcus_per_row.is_multiple_of(interval) {
            return None;
        }
        let count = (mcus_per_row / interval) as usize * mcu_rows as usize;
        // Every interval but the last ends in a 2-byte marker: a header promising more
        // intervals than the file can hold (a hostile size) is refused before allocating.
        if count > b.len() / 2 + 1 {
            return None;
        }
        let mut intervals = Vec::with_capacity(count);
        let mut start = scan_at;
        let mut end = None;
        let mut skip_to = scan_at;
        for p in memchr_iter(0xFF, &b[scan_at..]) {
            let p = scan_at + p;
            if p < skip_to {
                continue;
            }
            match b.get(p + 1) {
                // Stuffed zero or a fill byte before a marker.
                Some(0x00) | Some(0xFF) => {}
                Some(0xD0..=0xD7) => {
                    intervals.push((start, p));
                    start = p + 2;
                    skip_to = p + 2;
                }
                Some(0xD9) => {
                    end = Some(p);
                    break;
                }
                // Another marker (DNL, a second scan): not a single-scan image.
                _ => return None,
            }
        }
        intervals.push((start, end?));
        if intervals.len() != count {
            return None;
        }
        Some(TileLayout {
            size_at,
            width,
            height,
            mcu_w,
            mcu_h,
            mcus_per_row,
            mcu_rows,
            interval,
            scan_at,
            intervals,
        })
    }

    /// MCUs per restart interval.
    pub fn interval(&self) -> u32 {
        self.interval
    }

    /// The tile (in image pixels) that decodes `rect` exactly: whole intervals, at least
    /// [`MARGIN`] pixels beyond `rect` on every side that is not an image edge. `None` when
    /// that is the whole image, or `rect` is not inside it.
    pub fn tile_for(&self, rect: CropRect) -> Option<CropRect> {
        if !rect.fits_in(self.width, self.height) || rect.width == 0 || rect.height == 0 {
            return None;
        }
        let x0 = rect.left.saturating_sub(MARGIN);
        let y0 = rect.top.saturating_sub(MARGIN);
        let x1 = (rect.left + rect.width + MARGIN).min(self.width);
        let y1 = (rect.top + rect.height + MARGIN).min(self.height);
        let r = self.interval;
        let c0 = x0 / self.mcu_w / r * r;
        let c1 = (x1.div_ceil(self.mcu_w).div_ceil(r) * r).min(self.mcus_per_row);
        let r0 = y0 / self.mcu_h;
        let r1 = y1.div_ceil(self.mcu_h).min(self.mcu_rows);
        if c0 == 0 && r0 == 0 && c1 == self.mcus_per_row && r1 == self.mcu_rows {
            return None;
        }
        let (left, top) = (c0 * self.mcu_w, r0 * self.mcu_h);
        let right = if c1 == self.mcus_per_row {
            self.width
        } else {
            c1 * self.mcu_w
        };
        let bottom = if r1 == self.mcu_rows {
            self.height
        } else {
            r1 * self.mcu_h
        };
        Some(CropRect {
            left,
            top,
            width: right - left,
            height: bottom - top,
        })
    }

    /// The JPEG of `tile` (a value of [`Self::tile_for`]) cut out of `b` (the bytes this
    /// layout was parsed from): the headers with the frame size set to the tile's, then the
    /// tile's intervals with their restart markers renumbered from 0.
    pub fn tile_jpeg(&self, b: &[u8], tile: CropRect) -> Vec<u8> {
        let r = self.interval;
        let c0 = tile.left / self.mcu_w / r;
        let c1 = (tile.left + tile.width).div_ceil(self.mcu_w).div_ceil(r);
        let r0 = tile.top / self.mcu_h;
        let r1 = (tile.top + tile.height).div_ceil(self.mcu_h);
        let per_row = (self.mcus_per_row / r) as usize;
        let picked = || {
            (r0 as usize..r1 as usize).flat_map(move |row| {
                (c0 as usize..c1 as usize).map(move |c| self.intervals[row * per_row + c])
            })
        };
        let data: usize = picked().map(|(s, e)| e - s + 2).sum();
        let mut out = Vec::with_capacity(self.scan_at + data + 2);
        out.extend_from_slice(&b[..self.scan_at]);
        // Frame size: the width and height fit in u16 (they came from these fields).
        out[self.size_at..self.size_at + 2].copy_from_slice(&(tile.height as u16).to_be_bytes());
        out[self.size_at + 2..self.size_at + 4].copy_from_slice(&(tile.width as u16).to_be_bytes());
        for (k, (s, e)) in picked().enumerate() {
            if k > 0 {
                out.extend_from_slice(&[0xFF, 0xD0 + ((k - 1) % 8) as u8]);
            }
            out.extend_from_slice(&b[s..e]);
        }
        out.extend_from_slice(&[0xFF, 0xD9]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::jpeg::{add_restart_markers, decode_region};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn full(b: &[u8], w: u32, h: u32) -> Vec<u8> {
        decode_region(b, (w, h), CropRect::whole(w, h))
            .expect("decodes")
            .expect("supported")
    }

    /// The shared crop helper of the decoder tests, for a `CropRect`.
    fn crop(px: &[u8], w: u32, r: CropRect) -> Vec<u8> {
        crate::ingest::jpeg::tests::crop(px, w, (r.left, r.top, r.width, r.height))
    }

    /// Every layout of `variants` (4:2:0, 4:2:2, 4:4:4, 4:4:0, gray, progressive,
    /// restarts) re-written with restart markers decodes to the same pixels, and tiles of
    /// random rectangles decode to the same pixels as the full image cropped.
    #[test]
    fn restart_rewrite_is_lossless_and_tiles_decode_exactly() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut tiled = 0;
        for (w, h) in [(61u32, 45u32), (100, 37), (33, 80), (16, 16), (7, 9)] {
            for (name, bytes) in crate::ingest::jpeg::tests::variants(w, h, u64::from(w)) {
                let want = full(&bytes, w, h);
                for target in [1u32, 2, 4, 8] {
                    let (re, r) = add_restart_markers(&bytes, target).expect("rewrites");
                    assert!(r >= 1 && r <= target, "{name}: interval {r}");
                    assert_eq!(
                        full(&re, w, h),
                        want,
                        "{name} {w}x{h}: rewrite changed pixels"
                    );
                    let layout = TileLayout::parse(&re)
                        .unwrap_or_else(|| panic!("{name} {w}x{h}: rewrite not tileable"));
                    assert_eq!(layout.interval(), r);
                    for _ in 0..25 {
                        let rw = rng.random_range(1..=w);
                        let rh = rng.random_range(1..=h);
                        let rect = CropRect {
                            left: rng.random_range(0..=w - rw),
                            top: rng.random_range(0..=h - rh),
                            width: rw,
                            height: rh,
                        };
                        let Some(tile) = layout.tile_for(rect) else {
                            continue;
                        };
                        assert!(tile.fits_in(w, h));
                        let jpeg = layout.tile_jpeg(&re, tile);
                        let inner = CropRect {
                            left: rect.left - tile.left,
                            top: rect.top - tile.top,
                            ..rect
                        };
                        let got = decode_region(&jpeg, (tile.width, tile.height), inner)
                            .expect("tile decodes")
                            .expect("supported");
                        assert_eq!(
                            got,
                            crop(&want, w, rect),
                            "{name} {w}x{h} target {target}: {rect:?} via tile {tile:?}"
                        );
                        tiled += 1;
                    }
                }
            }
        }
        assert!(tiled > 1000, "only {tiled} tiles tried");
    }

    /// The record-level band decode (what the loader calls) on tiled and untiled records:
    /// the full decode's pixels over a band holding the rectangle.
    #[test]
    fn record_band_decode_equals_full_decode() {
        use crate::ingest::{decode_record, decode_record_region_around};
        let mut rng = ChaCha8Rng::seed_from_u64(17);
        let (w, h) = (131u32, 77u32);
        let mut checked = 0;
        for (name, bytes) in crate::ingest::jpeg::tests::variants(w, h, 4) {
            let (tiled, _) = add_restart_markers(&bytes, 2).expect("rewrites");
            for b in [bytes, tiled] {
                let rec = crate::ingest::decode::tests::record(&b, w, h);
                let full = decode_record(&rec).expect("decodes");
                for _ in 0..40 {
                    let (rw, rh) = (rng.random_range(1..=w), rng.random_range(1..=h));
                    let rect = CropRect {
                        left: rng.random_range(0..=w - rw),
                        top: rng.random_range(0..=h - rh),
                        width: rw,
                        height: rh,
                    };
                    let (img, band) = decode_record_region_around(&rec, rect).expect("decodes");
                    assert!(band.fits_in(w, h), "{name}: {band:?}");
                    assert!(band.left <= rect.left && band.top <= rect.top);
                    assert!(band.left + band.width >= rect.left + rect.width);
                    assert!(band.top + band.height >= rect.top + rect.height);
                    assert_eq!(img.dimensions(), (band.width, band.height));
                    let inner = CropRect {
                        left: rect.left - band.left,
                        top: rect.top - band.top,
                        ..rect
                    };
                    assert!(
                        crop(img.as_raw(), band.width, inner) == crop(full.as_raw(), w, rect),
                        "{name}: {rect:?} via {band:?}"
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked >= 600);
    }

    /// Without the margin the tile's edge pixels differ on 4:2:0 (the check above would not
    /// see a broken margin otherwise).
    #[test]
    fn margin_is_needed_on_subsampled_chroma() {
        let (w, h) = (96u32, 64u32);
        let (name, bytes) = crate::ingest::jpeg::tests::variants(w, h, 3)
            .into_iter()
            .next()
            .expect("a variant");
        assert!(name.starts_with("4:2:0 "), "{name}");
        let want = full(&bytes, w, h);
        let (re, _) = add_restart_markers(&bytes, 1).expect("rewrites");
        let layout = TileLayout::parse(&re).expect("tileable");
        // A tile of exactly MCUs 1..3 x 1..3 (16 px MCUs), decoded whole.
        let tile = CropRect {
            left: 16,
            top: 16,
            width: 32,
            height: 32,
        };
        let jpeg = layout.tile_jpeg(&re, tile);
        let got = full(&jpeg, 32, 32);
        assert_ne!(
            got,
            crop(&want, w, tile),
            "edge replication shows at the tile edge"
        );
        // Its interior (MARGIN in from each side) is exact.
        let inner = |px: &[u8], wd: u32, r: CropRect| crop(px, wd, r);
        let m = MARGIN;
        assert_eq!(
            inner(
                &got,
                32,
                CropRect {
                    left: m,
                    top: m,
                    width: 32 - 2 * m,
                    height: 32 - 2 * m
                }
            ),
            inner(
                &want,
                w,
                CropRect {
                    left: 16 + m,
                    top: 16 + m,
                    width: 32 - 2 * m,
                    height: 32 - 2 * m
                }
            )
        );
    }

    #[test]
    fn untileable_files_are_recognised() {
        let (w, h) = (40u32, 24u32);
        for (name, bytes) in crate::ingest::jpeg::tests::variants(w, h, 9) {
            let layout = TileLayout::parse(&bytes);
            if name.contains("progressive") || !name.contains("restart") {
                assert!(layout.is_none(), "{name}");
            }
        }
        assert!(TileLayout::parse(b"not a jpeg").is_none());
        let (re, _) = add_restart_markers(&crate::ingest::jpeg::tests::variants(w, h, 9)[0].1, 2)
            .expect("rewrites");
        // Cut short: the intervals no longer add up.
        assert!(TileLayout::parse(&re[..re.len() / 2]).is_none());
        // A frame header claiming 65535x65535 (millions of intervals in a file of a few
        // hundred bytes): refused from the header, before any list of intervals is built.
        let sof = re.windows(2).position(|x| x == [0xFF, 0xC0]).expect("SOF0");
        let mut huge = re.clone();
        huge[sof + 5..sof + 9].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF]);
        assert!(TileLayout::parse(&huge).is_none());
        // A rectangle covering everything needs no tile.
        let layout = TileLayout::parse(&re).expect("tileable");
        assert!(layout.tile_for(CropRect::whole(w, h)).is_none());
        assert!(layout
            .tile_for(CropRect {
                left: 30,
                top: 0,
                width: 11,
                height: 1
            })
            .is_none());
    }
}
