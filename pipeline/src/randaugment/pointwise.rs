//! Pointwise ops as 256-entry lookup tables, bit-exact with Pillow's `ImageOps`
//! (`autocontrast`, `equalize`, `invert`, `posterize`, `solarize`) and timm's
//! `solarize_add`. Each works in place on the interleaved RGB buffer.

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
pub(crate) fn histograms(img: &RgbImage) -> [[u64; 256]; 3] {
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
pub fn autocontrast(img: &mut RgbImage) {
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
    apply_luts(img, &luts);
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
pub fn solarize_add(img: &mut RgbImage, add: i64, threshold: i64) {
    let lut: [u8; 256] = std::array::from_fn(|i| {
        if (i as i64) < threshold {
            (i as i64 + add).clamp(0, 255) as u8
        } else {
            i as u8
        }
    });
    apply_lut(img, &lut);
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
}
