//! DeiT's train and eval transforms other than RandAugment (which lives in
//! `crate::randaugment` and is called through [`randaugment_hook`]).
//!
//! Each sampler is split into a pure "parameters from draws" function (tested against
//! timm with recorded draws) and an apply function.

pub mod buffers;
pub mod crop;
pub mod erase;
pub mod eval;
pub mod mix;
pub mod normalize;
pub mod pillow_resize;
pub mod randaugment_hook;
pub mod rect;
pub mod resize;

/// Python's `int(round(x))` for the non-negative values the samplers produce:
/// round half to even (Python 3 rounding), then truncate.
pub fn py_round(x: f64) -> i64 {
    x.round_ties_even() as i64
}
