//! timm's RandAugment (`rand-m9-mstd0.5-inc1` for DeiT) with Pillow 11's exact semantics.
//!
//! Reference: timm 1.0.31 `timm/data/auto_augment.py` (`rand_augment_transform`,
//! `AugmentOp`, `LEVEL_TO_ARG`, `NAME_TO_OP`) and Pillow 11.3 (`ImageOps`, `ImageEnhance`,
//! `libImaging/{Geometry,Filter,Blend,Convert}.c`). DeiT calls it through timm's
//! `create_transform(..., auto_augment='rand-m9-mstd0.5-inc1', interpolation='bicubic')`,
//! which fixes the resampling to bicubic and the fill to `round(255 * mean)` =
//! (124, 116, 104).
//!
//! # Ops (f = clipped magnitude / 10; "±" = random sign)
//! | op | semantics | match with Pillow (tested on fixtures) |
//! |---|---|---|
//! | AutoContrast | per channel `[lo, hi] → [0, 255]`, `int(i·255/(hi-lo) - lo·255/(hi-lo))` | exact |
//! | Equalize | per channel Pillow's cumulative-histogram LUT (`step = (n - last bin) // 255`) | exact |
//! | Invert | `255 - v` | exact |
//! | Rotate | `Image.rotate(±30f°)`, bicubic, fill | exact (see below) |
//! | PosterizeIncreasing | keep `4 - int(4f)` high bits; 0 bits = black (Pillow 11) | exact |
//! | SolarizeIncreasing | `v ≥ 256 - min(256, int(256f))` → `255 - v` | exact |
//! | SolarizeAdd | `v < 128` → `min(255, v + min(128, int(110f)))` | exact |
//! | Color | blend(L image, img, `max(0.1, 1 ± 0.9f)`) | exact |
//! | Contrast | blend(`int(mean(L) + 0.5)`, img, `max(0.1, 1 ± 0.9f)`) | exact |
//! | Brightness | blend(black, img, `max(0.1, 1 ± 0.9f)`) | exact |
//! | Sharpness | blend(SMOOTH 3x3 (1,1,1;1,5,1;1,1,1)/13, img, `max(0.1, 1 ± 0.9f)`) | exact |
//! | ShearX / ShearY | affine `(1, ±0.3f, 0, 0, 1, 0)` / `(1, 0, 0, ±0.3f, 1, 0)`, bicubic, fill | exact |
//! | TranslateXRel / YRel | affine shift by `±0.45f·width` / `±0.45f·height`, bicubic, fill | exact |
//!
//! With `inc0` (timm's original set) Posterize keeps `int(4f)` bits, Solarize uses
//! threshold `min(256, int(256f))` and the four enhancers use factor `1.8f + 0.1` unsigned.
//! Blend, L conversion and the SMOOTH filter are replicated in Pillow's own precision
//! (`f32` blend/filter, 16.16 fixed-point luma), see [`enhance`]; the affine resampler
//! replicates `Geometry.c` in `f64` operation for operation, see [`geometric`].
//!
//! # Error bounds
//! Every op is bit-exact against fixtures made by `tools/make_augment_fixtures.py` with
//! timm 1.0.31 / Pillow 11.3 on x86-64 (`tests/randaugment_reference.rs` asserts equality
//! for all of them, 4 images x magnitudes {0, 0.3, 0.5, 0.9, 1.0} x both signs). The one
//! source of possible divergence on other platforms is floating point itself: Pillow
//! builds that fuse multiply-adds (e.g. aarch64 compilers contracting `a*b + c`) and
//! platform `cos`/`sin` differences at a 15-digit rounding boundary can move a bicubic
//! sample across an integer, i.e. by 1 level on rare pixels. deit-pipe's own output is
//! the same on every platform (no FMA contraction in Rust, pure-Rust `libm`).
//!
//! # Cost
//! `cargo bench -p pipeline --bench randaugment` (224x224, one thread, on-CPU time on a
//! heavily loaded 2-core VM, 2026-11-29): Rotate 3.1 ms (15 cubics per pixel, all in f64
//! for exactness), full DeiT `apply` 0.6 ms on average (before the changes below).
//! Translate/Shear need one cubic per byte (one axis has a zero fraction) and run as AVX2
//! byte-lane kernels (`axis_avx2`): wall time, same VM less loaded, 2026-11-30:
//! TranslateX/Y 0.10-0.13 ms, ShearX 0.24 ms, ShearY 0.41-0.44 ms (0.4-1.4 ms before).
//! Pointwise and blend ops (wall time, same VM, 2026-11-30; AVX2 forms where the CPU has
//! them): 0.02-0.06 ms, Equalize 0.12 ms (a store-bound histogram, then a table pass),
//! Sharpness 0.1 ms. Rotate (both fractions vary along a row) runs 4 output pixels at a
//! time (`geometric::general_row`, coordinates and both cubic passes as AVX2 loops over the
//! row's blocks): 0.78-0.80 ms wall against 1.68-1.71 ms before (alternating runs,
//! 2026-11-30).
//!
//! # Randomness
//! [`RandAugmentConfig::apply`] draws from a `ChaCha8Rng` in a fixed, documented order
//! (five `u64` per layer, see [`sample`]), so the same generator state always gives the
//! same bytes.

#[cfg(target_arch = "x86_64")]
mod axis_avx2;
#[cfg(target_arch = "x86_64")]
mod bicubic_avx2;
mod blend;
pub mod config;
pub mod enhance;
#[cfg(target_arch = "x86_64")]
mod enhance_avx2;
pub mod geometric;
pub mod ops;
pub mod pointwise;
#[cfg(target_arch = "x86_64")]
mod pointwise_avx2;
pub mod sample;
#[cfg(test)]
mod test_images;

pub use config::{RandAugmentConfig, RandAugmentError};
pub use ops::{apply_op, apply_op_f64, apply_op_owned, apply_op_with_arg, Op, OpArg};
pub use sample::LayerDraw;

/// Whether the CPU has AVX2, for the hand-vectorized forms of the colour and pointwise ops
/// (detected at run time; other CPUs take the scalar code, which gives the same bytes).
#[inline]
pub(crate) fn avx2_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
