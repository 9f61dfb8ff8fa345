//! Pillow's `Image.resize` for 8-bit RGB images, bit for bit: a port of
//! `libImaging/Resample.c` (Pillow 11), the resize behind torchvision's `Resize` and so
//! behind timm's eval transform.
//!
//! The same separable convolution as Pillow: per output pixel the filter's weights in
//! `f64` (`precompute_coeffs`), normalized to sum 1, turned into 22-bit fixed point
//! (`normalize_coeffs_8bpc`), then a horizontal pass over only the rows the vertical pass
//! reads, rounded and clipped to `u8`, then the vertical pass. Written out rather than
//! taken from `fast_image_resize` (used by the train crop): that crate rounds its weights
//! differently and lands within one level of Pillow, not on it, and timm's eval transform
//! is meant to be matched exactly (`predict` and `eval` against timm to 1e-5).
//!
//! Nearest-neighbour resizing is a different code path in Pillow (an affine transform)
//! and is not provided.

use image::RgbImage;

use crate::error::PipelineError;

/// Pillow's convolution filters, named as timm's `--interpolation` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PilFilter {
    /// `Image.BOX` (support 0.5).
    Box,
    /// `Image.BILINEAR` (triangle, support 1).
    Bilinear,
    /// `Image.HAMMING` (support 1).
    Hamming,
    /// `Image.BICUBIC` (Keys cubic with a = -0.5, support 2).
    Bicubic,
    /// `Image.LANCZOS` (sinc windowed by sinc, support 3).
    Lanczos,
}

impl PilFilter {
    /// Every filter, in the order `--help` lists them.
    pub const ALL: [PilFilter; 5] = [
        PilFilter::Bicubic,
        PilFilter::Bilinear,
        PilFilter::Lanczos,
        PilFilter::Box,
        PilFilter::Hamming,
    ];

    /// Parses a timm interpolation name (`bicubic`, `bilinear`, `lanczos`, `box`,
    /// `hamming`). `Err` holds a message listing the accepted names.
    pub fn parse(name: &str) -> Result<Self, String> {
        let lower = name.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|f| f.name() == lower)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|f| f.name()).collect();
                format!(
                    "interpolation '{name}' is not supported (one of {}; nearest is not)",
                    names.join(", ")
                )
            })
    }

    /// The timm / Pillow name.
    pub fn name(self) -> &'static str {
        match self {
            PilFilter::Box => "box",
            PilFilter::Bilinear => "bilinear",
            PilFilter::Hamming => "hamming",
            PilFilter::Bicubic => "bicubic",
            PilFilter::Lanczos => "lanczos",
        }
    }

    fn support(self) -> f64 {
        match self {
            PilFilter::Box => 0.5,
            PilFilter::Bilinear | PilFilter::Hamming => 1.0,
            PilFilter::Bicubic => 2.0,
            PilFilter::Lanczos => 3.0,
        }
    }

    /// The filter's weight at `x`, as Pillow's C functions compute it (the `f` literals
    /// of the Hamming window are single precision there, and so here).
    fn weight(self, x: f64) -> f64 {
        match self {
            PilFilter::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            PilFilter::Bilinear => {
                let x = x.abs();
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            PilFilter::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * std::f64::consts::PI;
                    x.sin() / x * (f64::from(0.54f32) + f64::from(0.46f32) * x.cos())
                }
            }
            PilFilter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            PilFilter::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

impl std::fmt::Display for PilFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for PilFilter {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

/// Fixed-point precision of the weights (`PRECISION_BITS = 32 - 8 - 2`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// One axis' weights: per output pixel the first input pixel, the number of input pixels
/// and `ksize` fixed-point weights (those past the count are zero).
struct Coeffs {
    ksize: usize,
    first: Vec<usize>,
    count: Vec<usize>,
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` followed by `normalize_coeffs_8bpc`, for the input span
/// `[in0, in1)` (single precision, as Pillow's box) of an axis of `in_size` pixels
/// resampled to `out_size`.
fn coeffs(in_size: usize, in0: f32, in1: f32, out_size: usize, filter: PilFilter) -> Coeffs {
    let scale = f64::from(in1 - in0) / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut first = Vec::with_capacity(out_size);
    let mut count = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = f64::from(in0) + (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) conversion truncates toward zero, as `as` does.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
        let n = (xmax - xmin).max(0) as usize;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = filter.weight(((x as i64 + xmin) as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let row = &mut weights[xx * ksize..(xx + 1) * ksize];
        for (x, out) in row.iter_mut().enumerate().take(n) {
            let mut v = k[x];
            if ww != 0.0 {
                v /= ww;
            }
            let scaled = v * f64::from(1u32 << PRECISION_BITS);
            *out = if v < 0.0 {
                (-0.5 + scaled) as i32
            } else {
                (0.5 + scaled) as i32
            };
        }
        first.push(xmin as usize);
        count.push(n);
    }
    Coeffs {
        ksize,
        first,
        count,
        weights,
    }
}

/// Pillow's `clip8`: the accumulator shifted down and clamped to a byte.
#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes `img` to `out_w` x `out_h` exactly as Pillow's `img.resize((out_w, out_h),
/// filter)` does for an RGB image (no `box`, no `reducing_gap`).
pub fn pil_resize(
    img: &RgbImage,
    out_w: u32,
    out_h: u32,
    filter: PilFilter,
) -> Result<RgbImage, PipelineError> {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    let (ow, oh) = (out_w as usize, out_h as usize);
    if ow == 0 || oh == 0 || in_w == 0 || in_h == 0 {
        return Err(PipelineError::Resize(format!(
            "cannot resize {in_w}x{in_h} to {ow}x{oh}"
        )));
    }
    if (ow, oh) == (in_w, in_h) {
        return Ok(img.clone());
    }
    let horiz = coeffs(in_w, 0.0, in_w as f32, ow, filter);
    let vert = coeffs(in_h, 0.0, in_h as f32, oh, filter);
    let src = img.as_raw();
    // The rows the vertical pass reads (all of them when it does not run).
    let (row0, row1) = if oh != in_h {
        (vert.first[0], vert.first[oh - 1] + vert.count[oh - 1])
    } else {
        (0, in_h)
    };
    let half = 1i32 << (PRECISION_BITS - 1);
    // Horizontal pass over rows row0..row1 (Pillow's `ResampleHorizontal_8bpc`).
    let tmp: std::borrow::Cow<'_, [u8]> = if ow != in_w {
        let mut out = vec![0u8; (row1 - row0) * ow * 3];
        for (y, dst) in (row0..row1).zip(out.chunks_exact_mut(ow * 3)) {
            let line = &src[y * in_w * 3..(y + 1) * in_w * 3];
            for xx in 0..ow {
                let k = &horiz.weights[xx * horiz.ksize..][..horiz.count[xx]];
                let base = horiz.first[xx] * 3;
                let (mut s0, mut s1, mut s2) = (half, half, half);
                for (x, &w) in k.iter().enumerate() {
                    let p = &line[base + 3 * x..base + 3 * x + 3];
                    s0 += i32::from(p[0]) * w;
                    s1 += i32::from(p[1]) * w;
                    s2 += i32::from(p[2]) * w;
                }
                dst[3 * xx] = clip8(s0);
                dst[3 * xx + 1] = clip8(s1);
                dst[3 * xx + 2] = clip8(s2);
            }
        }
        std::borrow::Cow::Owned(out)
    } else {
        std::borrow::Cow::Borrowed(&src[row0 * in_w * 3..row1 * in_w * 3])
    };
    let out = if oh != in_h {
        // Vertical pass (`ResampleVertical_8bpc`), rows counted from row0.
        let stride = ow * 3;
        let mut out = vec![0u8; oh * stride];
        let mut acc = vec![0i32; stride];
        for (yy, dst) in out.chunks_exact_mut(stride).enumerate() {
            let k = &vert.weights[yy * vert.ksize..][..vert.count[yy]];
            let first = vert.first[yy] - row0;
            acc.fill(half);
            for (y, &w) in k.iter().enumerate() {
                let line = &tmp[(first + y) * stride..(first + y + 1) * stride];
                for (a, &p) in acc.iter_mut().zip(line) {
                    *a += i32::from(p) * w;
                }
            }
            for (d, &a) in dst.iter_mut().zip(&acc) {
                *d = clip8(a);
            }
        }
        out
    } else {
        tmp.into_owned()
    };
    RgbImage::from_raw(out_w, out_h, out)
        .ok_or_else(|| PipelineError::Resize("resize output buffer size mismatch".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_nearest_is_refused() {
        for f in PilFilter::ALL {
            assert_eq!(PilFilter::parse(f.name()), Ok(f));
        }
        assert_eq!(PilFilter::parse(" BICUBIC"), Ok(PilFilter::Bicubic));
        let e = PilFilter::parse("nearest").unwrap_err();
        assert!(
            e.contains("bicubic, bilinear, lanczos, box, hamming"),
            "{e}"
        );
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for f in PilFilter::ALL {
            for (n_in, n_out) in [(500, 256), (37, 224), (256, 224), (7, 3)] {
                let c = coeffs(n_in, 0.0, n_in as f32, n_out, f);
                for xx in 0..n_out {
                    let s: i64 = c.weights[xx * c.ksize..][..c.count[xx]]
                        .iter()
                        .map(|&w| i64::from(w))
                        .sum();
                    // Each weight rounds separately: off by at most half a unit each.
                    assert!(
                        (s - (1 << PRECISION_BITS)).unsigned_abs() <= c.ksize as u64,
                        "{f} {n_in}->{n_out} pixel {xx}: {s}"
                    );
                    assert!(c.first[xx] + c.count[xx] <= n_in);
                }
            }
        }
    }

    #[test]
    fn flat_images_stay_flat_and_same_size_is_a_copy() {
        let img = RgbImage::from_pixel(41, 29, image::Rgb([3, 128, 250]));
        for f in PilFilter::ALL {
            for (w, h) in [(20, 29), (41, 90), (224, 224), (5, 3)] {
                let out = pil_resize(&img, w, h, f).unwrap();
                assert_eq!(out.dimensions(), (w, h));
                assert!(out.pixels().all(|p| p.0 == [3, 128, 250]), "{f} {w}x{h}");
            }
        }
        let mut noisy = RgbImage::new(9, 7);
        for (i, p) in noisy.pixels_mut().enumerate() {
            p.0 = [
                (i * 37 % 256) as u8,
                (i * 11 % 256) as u8,
                (i * 101 % 256) as u8,
            ];
        }
        assert!(pil_resize(&noisy, 9, 7, PilFilter::Bicubic).unwrap() == noisy);
        assert!(pil_resize(&noisy, 0, 7, PilFilter::Bicubic).is_err());
    }
}
