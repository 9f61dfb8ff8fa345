//! Mixup / CutMix of one pair of views, timm `Mixup`. In "pair" and "batch" modes both
//! views share a lam, mode and box, applied symmetrically (a' = lam*a + (1-lam)*b,
//! b' = lam*b + (1-lam)*a; CutMix swaps the box between the two): [`PairMix::Shared`].
//! In "elem" mode each view has its own and is mixed with the other's un-mixed pixels
//! (timm `_mix_elem`): [`PairMix::PerView`]. Targets are smoothed one-hots mixed by lam.

use rand_chacha::ChaCha8Rng;

use crate::config::MixConfig;
use crate::rng::{beta, randint, unit_f64};

/// Which mix a pair gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MixMode {
    /// No mixing (lam = 1).
    None,
    /// Mixup: a convex blend.
    Mixup,
    /// CutMix: a box swapped between the two views.
    Cutmix,
}

/// A CutMix box: rows `y0..y1`, columns `x0..x1` (timm's `yl, yh, xl, xh`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CutBox {
    /// First row.
    pub y0: u32,
    /// One past the last row.
    pub y1: u32,
    /// First column.
    pub x0: u32,
    /// One past the last column.
    pub x1: u32,
}

impl CutBox {
    /// The box's row segments in a CHW view of 3 x `h` x `w` (every channel), as index
    /// ranges into the flat view.
    fn row_ranges(self, h: u32, w: u32) -> impl Iterator<Item = std::ops::Range<usize>> {
        let (h, w) = (h as usize, w as usize);
        let (x0, x1) = (self.x0 as usize, self.x1 as usize);
        (0..3).flat_map(move |c| {
            (self.y0 as usize..self.y1 as usize).map(move |y| {
                let s = (c * h + y) * w;
                s + x0..s + x1
            })
        })
    }
}

/// The mixing parameters of a pair of slots.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MixParams {
    /// Mode.
    pub mode: MixMode,
    /// The weight of each slot's own label (after CutMix's area correction), f32 as timm.
    pub lam: f32,
    /// The CutMix box, when mode is CutMix.
    pub cut_box: Option<CutBox>,
}

impl MixParams {
    /// No mixing.
    pub const NONE: MixParams = MixParams {
        mode: MixMode::None,
        lam: 1.0,
        cut_box: None,
    };
}

/// How the two views of a pair are mixed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PairMix {
    /// Both views with the same parameters, symmetrically (modes pair and batch).
    Shared(MixParams),
    /// Each view with its own parameters and the other's un-mixed pixels (mode elem).
    PerView([MixParams; 2]),
}

impl PairMix {
    /// The weight of each view's own label: `[lam of slot 2k, lam of slot 2k+1]`.
    pub fn lams(&self) -> [f32; 2] {
        match self {
            PairMix::Shared(p) => [p.lam, p.lam],
            PairMix::PerView([a, b]) => [a.lam, b.lam],
        }
    }

    /// The parameters of view `i` (0 = slot 2k, 1 = slot 2k+1).
    pub fn view(&self, i: usize) -> MixParams {
        match self {
            PairMix::Shared(p) => *p,
            PairMix::PerView(v) => v[i & 1],
        }
    }
}

/// timm `rand_bbox` with the centre given: r = sqrt(1 - lam) and cut = int(side * r) in
/// f32 (NumPy 2 keeps float32), box = clip(c - cut // 2, c + (cut + 1) // 2).
pub fn rand_bbox(h: u32, w: u32, lam: f32, cy: u32, cx: u32) -> CutBox {
    let ratio = (1.0f32 - lam).sqrt();
    let cut_h = (h as f32 * ratio) as i64;
    let cut_w = (w as f32 * ratio) as i64;
    let clip = |v: i64, hi: u32| v.clamp(0, hi as i64) as u32;
    CutBox {
        y0: clip(cy as i64 - cut_h / 2, h),
        y1: clip(cy as i64 + (cut_h + 1) / 2, h),
        x0: clip(cx as i64 - cut_w / 2, w),
        x1: clip(cx as i64 + (cut_w + 1) / 2, w),
    }
}

/// timm's corrected lam: `1 - box_area / (H * W)` (f64, then stored as f32).
pub fn corrected_lam(b: CutBox, h: u32, w: u32) -> f32 {
    let area = ((b.y1 - b.y0) as u64 * (b.x1 - b.x0) as u64) as f64;
    (1.0 - area / (h as f64 * w as f64)) as f32
}

/// Draws a pair's parameters for views of `h` x `w` (timm `_params_per_elem` order:
/// CutMix switch, lam ~ Beta(alpha, alpha), apply with `prob`; then CutMix centre
/// cy ~ [0, H), cx ~ [0, W)).
pub fn pair_params(cfg: &MixConfig, h: u32, w: u32, rng: &mut ChaCha8Rng) -> MixParams {
    if !cfg.enabled() {
        return MixParams::NONE;
    }
    let use_cutmix = if cfg.mixup_alpha > 0.0 && cfg.cutmix_alpha > 0.0 {
        unit_f64(rng) < cfg.switch_prob
    } else {
        cfg.mixup_alpha <= 0.0
    };
    let alpha = if use_cutmix {
        cfg.cutmix_alpha
    } else {
        cfg.mixup_alpha
    };
    let lam_mix = beta(rng, alpha, alpha) as f32;
    let lam = if unit_f64(rng) < cfg.prob {
        lam_mix
    } else {
        1.0
    };
    if lam == 1.0 {
        return MixParams::NONE;
    }
    if !use_cutmix {
        return MixParams {
            mode: MixMode::Mixup,
            lam,
            cut_box: None,
        };
    }
    let cy = randint(rng, 0, h as i64 - 1) as u32;
    let cx = randint(rng, 0, w as i64 - 1) as u32;
    let b = rand_bbox(h, w, lam, cy, cx);
    let lam = if cfg.correct_lam {
        corrected_lam(b, h, w)
    } else {
        lam
    };
    MixParams {
        mode: MixMode::Cutmix,
        lam,
        cut_box: Some(b),
    }
}

/// Mixes two normalized CHW views (3 x `h` x `w`) in place, symmetrically.
pub fn apply_pair(a: &mut [f32], b: &mut [f32], h: u32, w: u32, p: &MixParams) {
    match p.mode {
        MixMode::None => {}
        MixMode::Mixup => {
            let lam = p.lam;
            let oml = 1.0f32 - lam;
            for (x, y) in a.iter_mut().zip(b.iter_mut()) {
                let (xa, yb) = (*x, *y);
                *x = xa * lam + yb * oml;
                *y = yb * lam + xa * oml;
            }
        }
        MixMode::Cutmix => {
            let Some(cb) = p.cut_box else { return };
            for r in cb.row_ranges(h, w) {
                a[r.clone()].swap_with_slice(&mut b[r]);
            }
        }
    }
}

/// Mixes a pair of normalized CHW views (3 x `h` x `w`) in place as `mix` says.
pub fn apply_pair_mix(a: &mut [f32], b: &mut [f32], h: u32, w: u32, mix: &PairMix) {
    match mix {
        PairMix::Shared(p) => apply_pair(a, b, h, w, p),
        PairMix::PerView([pa, pb]) => {
            if pa.mode == MixMode::None {
                apply_one(b, a, h, w, pb);
            } else if pb.mode == MixMode::None {
                apply_one(a, b, h, w, pa);
            } else {
                let a_orig = a.to_vec();
                apply_one(a, b, h, w, pa);
                apply_one(b, &a_orig, h, w, pb);
            }
        }
    }
}

/// Mixes `dst` with its partner's un-mixed view `other` (timm `_mix_elem` for one
/// element): Mixup `dst = lam*dst + (1-lam)*other`, CutMix copies the box from `other`.
pub fn apply_one(dst: &mut [f32], other: &[f32], h: u32, w: u32, p: &MixParams) {
    match p.mode {
        MixMode::None => {}
        MixMode::Mixup => {
            let lam = p.lam;
            let oml = 1.0f32 - lam;
            for (x, &y) in dst.iter_mut().zip(other) {
                *x = *x * lam + y * oml;
            }
        }
        MixMode::Cutmix => {
            let Some(cb) = p.cut_box else { return };
            for r in cb.row_ranges(h, w) {
                dst[r.clone()].copy_from_slice(&other[r]);
            }
        }
    }
}

/// Writes the mixed, smoothed target of one slot into `out` (length `num_classes`):
/// off = eps / C, on = 1 - eps + off (f64, stored f32 as torch), then
/// `y_a * lam + y_b * (1 - lam)` in f32 (timm `mixup_target`).
pub fn mixed_target(label_a: u32, label_b: u32, lam: f32, smoothing: f64, out: &mut [f32]) {
    let c = out.len();
    let off = (smoothing / c as f64) as f32;
    let on = (1.0 - smoothing + smoothing / c as f64) as f32;
    let oml = 1.0f32 - lam;
    let off_mix = off * lam + off * oml;
    out.fill(off_mix);
    let (a, b) = (label_a as usize, label_b as usize);
    let ya = |k: usize| if k == a { on } else { off };
    let yb = |k: usize| if k == b { on } else { off };
    for k in [a, b] {
        if k < c {
            out[k] = ya(k) * lam + yb(k) * oml;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::rng_from_seed;

    #[test]
    fn bbox_and_lam() {
        // lam 0.75: r = 0.5, cut = 112; centred at (100, 50): rows 44..156, cols 0..106.
        let b = rand_bbox(224, 224, 0.75, 100, 50);
        assert_eq!(
            b,
            CutBox {
                y0: 44,
                y1: 156,
                x0: 0,
                x1: 106
            }
        );
        let lam = corrected_lam(b, 224, 224);
        assert_eq!(lam, (1.0 - (112.0 * 106.0) / (224.0 * 224.0f64)) as f32);
    }

    #[test]
    fn mixup_symmetric() {
        let mut a = vec![1.0f32; 12];
        let mut b = vec![3.0f32; 12];
        let p = MixParams {
            mode: MixMode::Mixup,
            lam: 0.25,
            cut_box: None,
        };
        apply_pair(&mut a, &mut b, 2, 2, &p);
        assert!(a.iter().all(|&v| v == 2.5));
        assert!(b.iter().all(|&v| v == 1.5));
    }

    #[test]
    fn elem_mixes_each_view_with_the_others_original() {
        let a0: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let b0: Vec<f32> = (0..12).map(|i| 100.0 + i as f32).collect();
        let up = MixParams {
            mode: MixMode::Mixup,
            lam: 0.25,
            cut_box: None,
        };
        let cut = MixParams {
            mode: MixMode::Cutmix,
            lam: 0.75,
            cut_box: Some(CutBox {
                y0: 0,
                y1: 1,
                x0: 1,
                x1: 2,
            }),
        };
        let (mut a, mut b) = (a0.clone(), b0.clone());
        let mix = PairMix::PerView([up, cut]);
        apply_pair_mix(&mut a, &mut b, 2, 2, &mix);
        assert_eq!(mix.lams(), [0.25, 0.75]);
        for k in 0..12 {
            // a: Mixup with b's original; b: CutMix box (row 0, column 1 of every channel)
            // from a's original, not from the mixed a.
            assert_eq!(a[k], a0[k] * 0.25 + b0[k] * 0.75);
            let in_box = k % 4 == 1;
            assert_eq!(b[k], if in_box { a0[k] } else { b0[k] }, "{k}");
        }
        // Shared is the symmetric pair mix.
        let (mut a, mut b) = (a0.clone(), b0.clone());
        apply_pair_mix(&mut a, &mut b, 2, 2, &PairMix::Shared(up));
        let (mut c, mut d) = (a0.clone(), b0.clone());
        apply_pair(&mut c, &mut d, 2, 2, &up);
        assert_eq!((a, b), (c, d));
    }

    #[test]
    fn target_sums_to_one() {
        let mut t = vec![0f32; 10];
        mixed_target(2, 7, 0.3, 0.1, &mut t);
        assert!((t.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((t[2] - (0.91 * 0.3 + 0.01 * 0.7)).abs() < 1e-6);
        mixed_target(4, 4, 0.3, 0.1, &mut t);
        assert!((t[4] - 0.91).abs() < 1e-6);
    }

    #[test]
    fn params_distribution() {
        let cfg = MixConfig::default();
        let mut rng = rng_from_seed(2);
        let (mut cut, mut n) = (0, 0);
        for _ in 0..4000 {
            let p = pair_params(&cfg, 224, 224, &mut rng);
            n += 1;
            if p.mode == MixMode::Cutmix {
                cut += 1;
                let b = p.cut_box.unwrap();
                assert_eq!(p.lam, corrected_lam(b, 224, 224));
            }
            assert!((0.0..=1.0).contains(&p.lam));
        }
        let frac = cut as f64 / n as f64;
        assert!((frac - 0.5).abs() < 0.04, "{frac}");
    }
}
