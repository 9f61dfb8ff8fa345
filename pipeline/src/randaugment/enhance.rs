//! `PIL.ImageEnhance` (Color, Contrast, Brightness, Sharpness), bit-exact with Pillow 11.
//!
//! Every enhancer is `Image.blend(degenerate, image, factor)`. Pillow's `ImagingBlend`
//! takes the factor as a C `float` and computes, per byte, in single precision:
//! `t = (float)d + factor * (float)(v - d)`, then clips `t` to [0, 255] and truncates
//! (the in-range branch truncates too). Rust's saturating `f32 as u8` is exactly that.
//! The degenerate images:
//! - Color: the image converted to L and back: `L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16`
//!   (Pillow's `L24` fixed point, `Convert.c`), replicated to all three channels;
//! - Contrast: a constant `int(mean(L) + 0.5)`, mean over the L image (f64, as `ImageStat`);
//! - Brightness: black;
//! - Sharpness: `ImageFilter.SMOOTH` = 3x3 kernel `[[1,1,1],[1,5,1],[1,1,1]] / 13` in f32
//!   (kernel entries divided by 13 in f32, rows summed bottom row first, `+ 0.5` folded into
//!   the start value, clipped and truncated); the one-pixel border keeps its input values.

use super::blend::blend;
use image::RgbImage;

/// A 256-entry table of `blend(d, v, factor)` over `v` for a constant degenerate `d`.
fn blend_lut(degenerate: u8, factor: f32) -> [u8; 256] {
    std::array::from_fn(|v| blend(degenerate, v as u8, factor))
}

/// Pillow's RGB -> L conversion of one pixel.
#[inline(always)]
pub(crate) fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
}

/// `ImageEnhance.Color(img).enhance(factor)`, in place.
pub fn color(img: &mut RgbImage, factor: f64) {
    color_with(img.as_mut(), factor as f32, super::avx2_available());
}

/// Color on an interleaved RGB buffer; the AVX2 form for whole groups of 8 pixels when
/// `simd` (the caller checked the CPU), the scalar form for the rest.
fn color_with(buf: &mut [u8], f: f32, simd: bool) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is only true when the CPU supports AVX2.
        done = unsafe { super::enhance_avx2::color(buf, f) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = simd;
    for px in buf[done..].chunks_exact_mut(3) {
        let l = luma(px[0], px[1], px[2]);
        px[0] = blend(l, px[0], f);
        px[1] = blend(l, px[1], f);
        px[2] = blend(l, px[2], f);
    }
}

/// Sum of Pillow's luma over the pixels of an interleaved RGB buffer.
fn luma_sum_with(buf: &[u8], simd: bool) -> u64 {
    let (mut sum, mut done) = (0, 0);
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is only true when the CPU supports AVX2.
        (sum, done) = unsafe { super::enhance_avx2::luma_sum(buf) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = simd;
    sum + buf[done..]
        .chunks_exact(3)
        .map(|p| u64::from(luma(p[0], p[1], p[2])))
        .sum::<u64>()
}

/// `v = blend(degenerate, v, f)` for every byte of `buf`.
fn blend_const_with(buf: &mut [u8], degenerate: u8, f: f32, simd: bool) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is only true when the CPU supports AVX2.
        done = unsafe { super::enhance_avx2::blend_const(buf, degenerate, f) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = simd;
    let rest = &mut buf[done..];
    if rest.len() > 256 {
        let lut = blend_lut(degenerate, f);
        for v in rest.iter_mut() {
            *v = lut[*v as usize];
        }
    } else {
        for v in rest.iter_mut() {
            *v = blend(degenerate, *v, f);
        }
    }
}

/// `ImageEnhance.Contrast(img).enhance(factor)`, in place.
pub fn contrast(img: &mut RgbImage, factor: f64) {
    contrast_with(img, factor, super::avx2_available());
}

fn contrast_with(img: &mut RgbImage, factor: f64, simd: bool) {
    let n = u64::from(img.width()) * u64::from(img.height());
    if n == 0 {
        return;
    }
    let sum = luma_sum_with(img.as_raw(), simd);
    let mean = sum as f64 / n as f64;
    blend_const_with(img.as_mut(), (mean + 0.5) as u8, factor as f32, simd);
}

/// `ImageEnhance.Brightness(img).enhance(factor)`, in place.
pub fn brightness(img: &mut RgbImage, factor: f64) {
    blend_const_with(img.as_mut(), 0, factor as f32, super::avx2_available());
}

/// `ImageEnhance.Sharpness(img).enhance(factor)`: blends the SMOOTH-filtered image
/// with the input. Returns the image, computed in place row by row (the input rows the
/// filter still needs are kept as copies).
pub fn sharpness(img: RgbImage, factor: f64) -> RgbImage {
    sharpness_with(img, factor, super::avx2_available())
}

fn sharpness_with(mut img: RgbImage, factor: f64, simd: bool) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w < 3 || h < 3 {
        // Pillow copies images smaller than the kernel; blend(x, x) = x.
        return img;
    }
    let f = factor as f32;
    let stride = w * 3;
    let buf: &mut [u8] = img.as_mut();
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is only true when the CPU supports AVX2. The image is at least
        // 3x3 (checked above), as the function requires.
        unsafe { super::enhance_avx2::sharpness(buf, stride, f) };
        return img;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = simd;
    // The input rows y - 1 and y; row y + 1 is still unwritten in `buf`.
    let mut above = buf[..stride].to_vec();
    let mut row = buf[stride..2 * stride].to_vec();
    for y in 1..h - 1 {
        let (head, tail) = buf.split_at_mut((y + 1) * stride);
        let out = &mut head[y * stride..];
        let below = &tail[..stride];
        sharpness_row(&above, &row, below, out, f);
        std::mem::swap(&mut above, &mut row);
        row.copy_from_slice(below);
    }
    img
}

/// One interior row of Sharpness: bytes `3..stride - 3` of `out` from the input rows
/// `above`, `row`, `below` (the border pixels of `out` are left as they are).
fn sharpness_row(above: &[u8], row: &[u8], below: &[u8], out: &mut [u8], f: f32) {
    let stride = row.len();
    let k1 = 1.0f32 / 13.0f32;
    let k5 = 5.0f32 / 13.0f32;
    for i in 3..stride - 3 {
        let tap =
            |r: &[u8], kc: f32| r[i - 3] as f32 * k1 + r[i] as f32 * kc + r[i + 3] as f32 * k1;
        let mut ss = 0.5f32;
        ss += tap(below, k1);
        ss += tap(row, k5);
        ss += tap(above, k1);
        out[i] = blend(ss as u8, row[i], f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luma_of_gray_is_gray() {
        for v in 0..=255u8 {
            assert_eq!(luma(v, v, v), v);
        }
        assert_eq!(luma(255, 0, 0), 76);
        assert_eq!(luma(0, 255, 0), 150);
        assert_eq!(luma(0, 0, 255), 29);
    }

    #[test]
    fn sharpness_border_and_flat() {
        let img = RgbImage::from_fn(5, 4, |x, y| image::Rgb([(x * 40) as u8, (y * 50) as u8, 9]));
        let out = sharpness(img.clone(), 1.9);
        for x in 0..5 {
            assert_eq!(out.get_pixel(x, 0), img.get_pixel(x, 0));
            assert_eq!(out.get_pixel(x, 3), img.get_pixel(x, 3));
        }
        // the flat blue channel stays flat
        assert!(out.pixels().all(|p| p[2] == 9));
    }

    /// The scalar code from before the AVX2 forms and the in-place Sharpness, kept as the
    /// reference the current paths must match byte for byte.
    mod reference {
        use super::super::{blend, blend_lut, luma};
        use image::RgbImage;

        /// `ImageEnhance.Color(img).enhance(factor)`, in place.
        pub(super) fn color(img: &mut RgbImage, factor: f64) {
            let f = factor as f32;
            for px in img.as_mut().chunks_exact_mut(3) {
                let l = luma(px[0], px[1], px[2]);
                px[0] = blend(l, px[0], f);
                px[1] = blend(l, px[1], f);
                px[2] = blend(l, px[2], f);
            }
        }

        /// `ImageEnhance.Contrast(img).enhance(factor)`, in place.
        pub(super) fn contrast(img: &mut RgbImage, factor: f64) {
            let n = u64::from(img.width()) * u64::from(img.height());
            if n == 0 {
                return;
            }
            let sum: u64 = img
                .as_raw()
                .chunks_exact(3)
                .map(|p| u64::from(luma(p[0], p[1], p[2])))
                .sum();
            let mean = sum as f64 / n as f64;
            let lut = blend_lut((mean + 0.5) as u8, factor as f32);
            for v in img.as_mut().iter_mut() {
                *v = lut[*v as usize];
            }
        }

        /// `ImageEnhance.Brightness(img).enhance(factor)`, in place.
        pub(super) fn brightness(img: &mut RgbImage, factor: f64) {
            let lut = blend_lut(0, factor as f32);
            for v in img.as_mut().iter_mut() {
                *v = lut[*v as usize];
            }
        }

        /// `ImageEnhance.Sharpness(img).enhance(factor)`: blends the SMOOTH-filtered image
        /// with the input. Returns a new image (the filter reads neighbours).
        pub(super) fn sharpness(img: RgbImage, factor: f64) -> RgbImage {
            let (w, h) = (img.width() as usize, img.height() as usize);
            if w < 3 || h < 3 {
                // Pillow copies images smaller than the kernel; blend(x, x) = x.
                return img;
            }
            let f = factor as f32;
            let k1 = 1.0f32 / 13.0f32;
            let k5 = 5.0f32 / 13.0f32;
            let src = img.as_raw();
            let stride = w * 3;
            let mut out = img.clone();
            let dst: &mut [u8] = out.as_mut();
            for y in 1..h - 1 {
                let above = &src[(y - 1) * stride..y * stride];
                let row = &src[y * stride..(y + 1) * stride];
                let below = &src[(y + 1) * stride..(y + 2) * stride];
                let out_row = &mut dst[y * stride..(y + 1) * stride];
                for i in 3..stride - 3 {
                    let tap = |r: &[u8], kc: f32| {
                        r[i - 3] as f32 * k1 + r[i] as f32 * kc + r[i + 3] as f32 * k1
                    };
                    let mut ss = 0.5f32;
                    ss += tap(below, k1);
                    ss += tap(row, k5);
                    ss += tap(above, k1);
                    out_row[i] = blend(ss as u8, row[i], f);
                }
            }
            out
        }
    }

    /// The shared test inputs ([`super::super::test_images`]).
    fn images() -> Vec<RgbImage> {
        super::super::test_images::images(5)
    }

    const FACTORS: [f64; 13] = [
        0.0,
        0.1,
        0.9,
        1.0,
        1.9,
        -0.5,
        1.0 / 3.0,
        2.7,
        -1e30,
        1e-30,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ];

    /// The paths to check: scalar always, AVX2 where the CPU has it.
    fn paths() -> Vec<bool> {
        if crate::randaugment::avx2_available() {
            vec![false, true]
        } else {
            vec![false]
        }
    }

    #[test]
    fn color_matches_scalar_reference() {
        for img in images() {
            for f in FACTORS {
                let mut want = img.clone();
                reference::color(&mut want, f);
                for simd in paths() {
                    let mut got = img.clone();
                    color_with(got.as_mut(), f as f32, simd);
                    assert_eq!(
                        got,
                        want,
                        "{}x{} f {f} simd {simd}",
                        img.width(),
                        img.height()
                    );
                }
            }
        }
    }

    #[test]
    fn contrast_matches_scalar_reference() {
        for img in images() {
            for f in FACTORS {
                let mut want = img.clone();
                reference::contrast(&mut want, f);
                for simd in paths() {
                    let mut got = img.clone();
                    contrast_with(&mut got, f, simd);
                    assert_eq!(
                        got,
                        want,
                        "{}x{} f {f} simd {simd}",
                        img.width(),
                        img.height()
                    );
                }
            }
        }
    }

    #[test]
    fn brightness_matches_scalar_reference() {
        for img in images() {
            for f in FACTORS {
                let mut want = img.clone();
                reference::brightness(&mut want, f);
                for simd in paths() {
                    let mut got = img.clone();
                    blend_const_with(got.as_mut(), 0, f as f32, simd);
                    assert_eq!(
                        got,
                        want,
                        "{}x{} f {f} simd {simd}",
                        img.width(),
                        img.height()
                    );
                }
            }
        }
    }

    #[test]
    fn sharpness_matches_scalar_reference() {
        for img in images() {
            for f in FACTORS {
                let want = reference::sharpness(img.clone(), f);
                for simd in paths() {
                    let got = sharpness_with(img.clone(), f, simd);
                    assert_eq!(
                        got,
                        want,
                        "{}x{} f {f} simd {simd}",
                        img.width(),
                        img.height()
                    );
                }
            }
        }
    }
}
