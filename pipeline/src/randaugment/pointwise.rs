//! Pointwise ops as 256-entry lookup tables or the equivalent byte arithmetic, bit-exact
//! with Pillow's `ImageOps` (`autocontrast`, `equalize`, `invert`, `posterize`,
//! `solarize`) and timm's `solarize_add`. Each works in place on the interleaved RGB
//! buffer.

use image::RgbImage;

/// Applies one LUT per channel in place.
fn apply_luts(buf: &mut [u8], luts: &[[u8; 256]; 3]) {
    // 8 pixels (three u64 words) a step, the channel of each byte fixed by its position:
    // one load and one store per 8 bytes instead of one per byte.
    let [l0, l1, l2] = luts;
    let word_luts: [[&[u8; 256]; 8]; 3] = [
        [l0, l1, l2, l0, l1, l2, l0, l1],
        [l2, l0, l1, l2, l0, l1, l2, l0],
        [l1, l2, l0, l1, l2, l0, l1, l2],
    ];
    let mut chunks = buf.chunks_exact_mut(24);
    for c in &mut chunks {
        for (word, wl) in c.chunks_exact_mut(8).zip(&word_luts) {
            map_word(word, wl);
        }
    }
    for px in chunks.into_remainder().chunks_exact_mut(3) {
        px[0] = l0[px[0] as usize];
        px[1] = l1[px[1] as usize];
        px[2] = l2[px[2] as usize];
    }
}

/// `word[k] = luts[k][word[k]]` for the 8 bytes of `word`, as one u64 load and store.
#[inline(always)]
fn map_word(word: &mut [u8], luts: &[&[u8; 256]; 8]) {
    let Ok(bytes) = <&mut [u8; 8]>::try_from(word) else {
        return;
    };
    let w = u64::from_le_bytes(*bytes);
    let mut out = 0u64;
    for (k, lut) in luts.iter().enumerate() {
        out |= u64::from(lut[(w >> (8 * k)) as u8 as usize]) << (8 * k);
    }
    *bytes = out.to_le_bytes();
}

/// Per-channel 256-bin histograms (Pillow's `Image.histogram()` for RGB).
pub(crate) fn histograms(img: &RgbImage) -> [[u64; 256]; 3] {
    // Four partial histograms, one per pixel of a 4-pixel step: a run of equal values
    // (common in photos) then increments four counters in turn instead of one, so the
    // increments do not wait on each other's stores. u32 counts, added into the u64
    // totals every 2^20 steps.
    let mut h = [[0u64; 256]; 3];
    let mut part = [[[0u32; 256]; 3]; 4];
    let raw = img.as_raw();
    let mut steps = raw.chunks_exact(12);
    let mut n = 0u32;
    for px in &mut steps {
        for (k, p) in part.iter_mut().enumerate() {
            p[0][px[3 * k] as usize] += 1;
            p[1][px[3 * k + 1] as usize] += 1;
            p[2][px[3 * k + 2] as usize] += 1;
        }
        n += 1;
        if n == 1 << 20 {
            flush(&mut h, &mut part);
            n = 0;
        }
    }
    flush(&mut h, &mut part);
    for px in steps.remainder().chunks_exact(3) {
        h[0][px[0] as usize] += 1;
        h[1][px[1] as usize] += 1;
        h[2][px[2] as usize] += 1;
    }
    h
}

/// Adds the partial histograms into `h` and zeroes them.
fn flush(h: &mut [[u64; 256]; 3], part: &mut [[[u32; 256]; 3]; 4]) {
    for p in part.iter_mut() {
        for (hc, pc) in h.iter_mut().zip(p.iter_mut()) {
            for (t, c) in hc.iter_mut().zip(pc.iter_mut()) {
                *t += u64::from(*c);
                *c = 0;
            }
        }
    }
}

/// `ImageOps.autocontrast(img)` (cutoff 0): per channel, maps [lo, hi] to [0, 255] with
/// `int(i * scale + offset)`, `scale = 255.0 / (hi - lo)`, `offset = -lo * scale`, clamped;
/// identity for a channel with a single value.
pub fn autocontrast(img: &mut RgbImage) {
    autocontrast_with(img, super::avx2_available());
}

/// AutoContrast; the AVX2 form for whole groups of 8 pixels when `simd` (the caller
/// checked the CPU), the table for the rest.
fn autocontrast_with(img: &mut RgbImage, simd: bool) {
    // The first and last non-zero histogram bins are the channel's min and max.
    let (min, max) = channel_min_max(img.as_raw());
    let mut scale = [1.0f64; 3];
    let mut offset = [0.0f64; 3];
    let mut luts = [identity(); 3];
    for c in 0..3 {
        let (lo, hi) = (min[c], max[c]);
        if hi <= lo {
            // Identity: `i·1 + 0` is `i` for the AVX2 form.
            continue;
        }
        scale[c] = 255.0 / f64::from(hi - lo);
        offset[c] = -f64::from(lo) * scale[c];
        for (i, v) in luts[c].iter_mut().enumerate() {
            // int() truncates toward zero; then clamp like Pillow.
            *v = ((i as f64 * scale[c] + offset[c]) as i64).clamp(0, 255) as u8;
        }
    }
    let buf: &mut [u8] = img.as_mut();
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is only true when the CPU supports AVX2.
        done = unsafe { super::pointwise_avx2::affine_map(buf, scale, offset) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = simd;
    apply_luts(&mut buf[done..], &luts);
}

/// Per-channel minimum and maximum of an interleaved RGB buffer; (255, 0) for a channel
/// without pixels.
fn channel_min_max(raw: &[u8]) -> ([u8; 3], [u8; 3]) {
    // Byte-wise min/max over 48-byte steps (16 pixels, a whole number of vectors and
    // pixels), which vectorizes; then per channel over the 48 positions.
    let mut lo = [255u8; 48];
    let mut hi = [0u8; 48];
    let mut steps = raw.chunks_exact(48);
    for step in &mut steps {
        for ((l, h), &v) in lo.iter_mut().zip(hi.iter_mut()).zip(step) {
            *l = (*l).min(v);
            *h = (*h).max(v);
        }
    }
    for (k, &v) in steps.remainder().iter().enumerate() {
        lo[k] = lo[k].min(v);
        hi[k] = hi[k].max(v);
    }
    let mut min = [255u8; 3];
    let mut max = [0u8; 3];
    for k in 0..48 {
        min[k % 3] = min[k % 3].min(lo[k]);
        max[k % 3] = max[k % 3].max(hi[k]);
    }
    (min, max)
}

/// `ImageOps.equalize(img)`: per channel, `step = (sum of non-zero bins - last non-zero
/// bin) // 255`; identity when there is at most one non-zero bin or `step == 0`; else
/// `lut[i] = (step // 2 + sum(h[..i])) // step`, saturated at 255 as Pillow's `point`
/// does with its 8-bit table.
pub fn equalize(img: &mut RgbImage) {
    let hist = histograms(img);
    let mut luts = [[0u8; 256]; 3];
    for (lut, h) in luts.iter_mut().zip(hist.iter()) {
        let nonzero = h.iter().filter(|&&c| c != 0).count();
        let last = h.iter().rev().find(|&&c| c != 0).copied().unwrap_or(0);
        let total: u64 = h.iter().sum();
        let step = if nonzero <= 1 {
            0
        } else {
            (total - last) / 255
        };
        if step == 0 {
            *lut = identity();
            continue;
        }
        let mut n = step / 2;
        for (i, v) in lut.iter_mut().enumerate() {
            *v = (n / step).min(255) as u8;
            n += h[i];
        }
    }
    apply_luts(img.as_mut(), &luts);
}

fn identity() -> [u8; 256] {
    std::array::from_fn(|i| i as u8)
}

/// `ImageOps.invert`: `255 - v`.
pub fn invert(img: &mut RgbImage) {
    for v in img.as_mut().iter_mut() {
        *v = 255 - *v;
    }
}

/// timm `posterize(img, bits)`: identity for `bits >= 8`, else Pillow's
/// `v & ~(2**(8 - bits) - 1)`; `bits <= 0` gives 0 everywhere (Pillow 11 behaviour).
pub fn posterize(img: &mut RgbImage, bits: i64) {
    if bits >= 8 {
        return;
    }
    let mask: u8 = if bits <= 0 {
        0
    } else {
        !((1u16 << (8 - bits)) - 1) as u8
    };
    for v in img.as_mut().iter_mut() {
        *v &= mask;
    }
}

/// `ImageOps.solarize(img, threshold)`: `v if v < threshold else 255 - v`.
pub fn solarize(img: &mut RgbImage, threshold: i64) {
    // Computed, not looked up: a byte compare and select vectorizes (16 bytes a step).
    if threshold > 255 {
        return;
    }
    let t = threshold.max(0) as u8;
    for v in img.as_mut().iter_mut() {
        *v = if *v < t { *v } else { 255 - *v };
    }
}

/// timm `solarize_add(img, add, thresh)`: `min(255, v + add) if v < thresh else v`
/// (and `max(0, ·)` for a negative `add`).
pub fn solarize_add(img: &mut RgbImage, add: i64, threshold: i64) {
    // Computed with saturating byte arithmetic, which vectorizes, instead of a lookup.
    if threshold <= 0 {
        return;
    }
    let a = add.clamp(-255, 255);
    let (up, down) = if a >= 0 {
        (a as u8, 0)
    } else {
        (0, (-a) as u8)
    };
    let moved = |v: u8| v.saturating_add(up).saturating_sub(down);
    if threshold > 255 {
        for v in img.as_mut().iter_mut() {
            *v = moved(*v);
        }
    } else {
        let t = threshold as u8;
        for v in img.as_mut().iter_mut() {
            *v = if *v < t { moved(*v) } else { *v };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(data: Vec<u8>, w: u32, h: u32) -> RgbImage {
        RgbImage::from_raw(w, h, data).unwrap()
    }

    #[test]
    fn posterize_zero_bits_is_black_and_eight_is_identity() {
        let mut a = img((0..=255).chain(0..=255).chain(0..=255).collect(), 256, 1);
        let orig = a.clone();
        posterize(&mut a, 8);
        assert_eq!(a, orig);
        posterize(&mut a, 4);
        assert!(a.as_raw().iter().all(|v| v & 0x0f == 0));
        assert_eq!(a.as_raw()[0xab], 0xa0);
        posterize(&mut a, 0);
        assert!(a.as_raw().iter().all(|&v| v == 0));
    }

    #[test]
    fn equalize_two_levels() {
        // Pillow: histo [2, 2] per channel -> step = (4 - 2) // 255 = 0 -> identity.
        let mut a = img(
            vec![10, 10, 10, 10, 10, 10, 200, 200, 200, 200, 200, 200],
            4,
            1,
        );
        let orig = a.clone();
        equalize(&mut a);
        assert_eq!(a, orig);
    }

    #[test]
    fn autocontrast_stretches() {
        let mut a = img(vec![50, 0, 7, 150, 255, 7], 2, 1);
        autocontrast(&mut a);
        // R: lo 50 hi 150 -> 0, 255; G already full; B single value -> identity.
        assert_eq!(a.as_raw(), &[0, 0, 7, 255, 255, 7]);
    }

    /// The LUT code from before the vectorized forms, kept as the reference the current
    /// code must match byte for byte.
    mod reference {
        use image::RgbImage;

        /// Applies one LUT per channel in place.
        fn apply_luts(img: &mut RgbImage, luts: &[[u8; 256]; 3]) {
            for px in img.as_mut().chunks_exact_mut(3) {
                px[0] = luts[0][px[0] as usize];
                px[1] = luts[1][px[1] as usize];
                px[2] = luts[2][px[2] as usize];
            }
        }

        /// Applies the same LUT to every channel in place.
        fn apply_lut(img: &mut RgbImage, lut: &[u8; 256]) {
            for v in img.as_mut().iter_mut() {
                *v = lut[*v as usize];
            }
        }

        /// Per-channel 256-bin histograms (Pillow's `Image.histogram()` for RGB).
        pub(super) fn histograms(img: &RgbImage) -> [[u64; 256]; 3] {
            let mut h = [[0u64; 256]; 3];
            for px in img.as_raw().chunks_exact(3) {
                h[0][px[0] as usize] += 1;
                h[1][px[1] as usize] += 1;
                h[2][px[2] as usize] += 1;
            }
            h
        }

        /// `ImageOps.autocontrast(img)` (cutoff 0): per channel, maps [lo, hi] to [0, 255] with
        /// `int(i * scale + offset)`, `scale = 255.0 / (hi - lo)`, `offset = -lo * scale`, clamped;
        /// identity for a channel with a single value.
        pub(super) fn autocontrast(img: &mut RgbImage) {
            let hist = histograms(img);
            let mut luts = [[0u8; 256]; 3];
            for (lut, h) in luts.iter_mut().zip(hist.iter()) {
                let lo = h.iter().position(|&c| c != 0).unwrap_or(255);
                let hi = h.iter().rposition(|&c| c != 0).unwrap_or(0);
                if hi <= lo {
                    *lut = identity();
                    continue;
                }
                let scale = 255.0 / (hi - lo) as f64;
                let offset = -(lo as f64) * scale;
                for (i, v) in lut.iter_mut().enumerate() {
                    // int() truncates toward zero; then clamp like Pillow.
                    *v = ((i as f64 * scale + offset) as i64).clamp(0, 255) as u8;
                }
            }
            apply_luts(img, &luts);
        }

        /// `ImageOps.equalize(img)`: per channel, `step = (sum of non-zero bins - last non-zero
        /// bin) // 255`; identity when there is at most one non-zero bin or `step == 0`; else
        /// `lut[i] = (step // 2 + sum(h[..i])) // step`, saturated at 255 as Pillow's `point`
        /// does with its 8-bit table.
        pub(super) fn equalize(img: &mut RgbImage) {
            let hist = histograms(img);
            let mut luts = [[0u8; 256]; 3];
            for (lut, h) in luts.iter_mut().zip(hist.iter()) {
                let nonzero = h.iter().filter(|&&c| c != 0).count();
                let last = h.iter().rev().find(|&&c| c != 0).copied().unwrap_or(0);
                let total: u64 = h.iter().sum();
                let step = if nonzero <= 1 {
                    0
                } else {
                    (total - last) / 255
                };
                if step == 0 {
                    *lut = identity();
                    continue;
                }
                let mut n = step / 2;
                for (i, v) in lut.iter_mut().enumerate() {
                    *v = (n / step).min(255) as u8;
                    n += h[i];
                }
            }
            apply_luts(img, &luts);
        }

        fn identity() -> [u8; 256] {
            std::array::from_fn(|i| i as u8)
        }

        /// `ImageOps.solarize(img, threshold)`: `v if v < threshold else 255 - v`.
        pub(super) fn solarize(img: &mut RgbImage, threshold: i64) {
            let lut: [u8; 256] = std::array::from_fn(|i| {
                if (i as i64) < threshold {
                    i as u8
                } else {
                    255 - i as u8
                }
            });
            apply_lut(img, &lut);
        }

        /// timm `solarize_add(img, add, thresh)`: `min(255, v + add) if v < thresh else v`.
        pub(super) fn solarize_add(img: &mut RgbImage, add: i64, threshold: i64) {
            let lut: [u8; 256] = std::array::from_fn(|i| {
                if (i as i64) < threshold {
                    (i as i64 + add).clamp(0, 255) as u8
                } else {
                    i as u8
                }
            });
            apply_lut(img, &lut);
        }
    }

    /// The shared test inputs ([`super::super::test_images`]).
    fn images() -> Vec<RgbImage> {
        super::super::test_images::images(9)
    }

    fn check(name: &str, ours: impl Fn(&mut RgbImage), theirs: impl Fn(&mut RgbImage)) {
        for img in images() {
            let (mut got, mut want) = (img.clone(), img.clone());
            ours(&mut got);
            theirs(&mut want);
            assert_eq!(got, want, "{name} {}x{}", img.width(), img.height());
        }
    }

    #[test]
    fn histograms_match_reference() {
        for img in images() {
            assert_eq!(histograms(&img), reference::histograms(&img));
        }
    }

    #[test]
    fn autocontrast_matches_reference() {
        check("autocontrast", autocontrast, reference::autocontrast);
        check(
            "autocontrast (scalar)",
            |i| autocontrast_with(i, false),
            reference::autocontrast,
        );
        if crate::randaugment::avx2_available() {
            check(
                "autocontrast (AVX2)",
                |i| autocontrast_with(i, true),
                reference::autocontrast,
            );
        }
    }

    #[test]
    fn equalize_matches_reference() {
        check("equalize", equalize, reference::equalize);
    }

    #[test]
    fn solarize_matches_reference() {
        for t in [i64::MIN, -5, 0, 1, 26, 128, 255, 256, 300] {
            check(
                "solarize",
                |i| solarize(i, t),
                |i| reference::solarize(i, t),
            );
        }
    }

    #[test]
    fn solarize_add_matches_reference() {
        // (Not i64::MAX: the reference's `i + add` overflows there; ours saturates to 255.)
        for add in [
            i64::MIN,
            -300,
            -255,
            -254,
            -20,
            0,
            1,
            50,
            110,
            128,
            254,
            255,
            256,
            i64::MAX - 255,
        ] {
            for t in [i64::MIN, -5, 0, 1, 100, 128, 255, 256, 300] {
                check(
                    "solarize_add",
                    |i| solarize_add(i, add, t),
                    |i| reference::solarize_add(i, add, t),
                );
            }
        }
    }
}
