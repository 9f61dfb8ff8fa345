//! timm `RandomErasing` on a normalized CHW tensor (per sample, before mixing).

use super::py_round;
use crate::config::{EraseConfig, EraseMode};
use crate::rng::Draws;

/// One erased box in pixels: rows `top..top+height`, columns `left..left+width`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EraseBox {
    /// First row.
    pub top: u32,
    /// First column.
    pub left: u32,
    /// Rows.
    pub height: u32,
    /// Columns.
    pub width: u32,
}

/// timm's erase boxes for an `h` x `w` image: skip when `random() > prob`; count = `count`
/// (or randint[1, count] when count > 1); per box up to 10 tries of
/// area ~ U(area) * H*W / count, aspect = exp(U(ln a, ln 1/a)),
/// h = round(sqrt(area*aspect)), w = round(sqrt(area/aspect)), accepted when w < W and
/// h < H, then top ~ randint[0, H-h], left ~ randint[0, W-w].
///
/// `fill` runs right after each accepted box (timm draws its fill values there), so
/// draws and fill values interleave exactly as in [`erase`].
pub fn erase_boxes<D: Draws>(
    h: u32,
    w: u32,
    cfg: &EraseConfig,
    draws: &mut D,
    mut fill: impl FnMut(&mut D, EraseBox),
) -> Vec<EraseBox> {
    let mut boxes = Vec::new();
    if draws.random() > cfg.prob {
        return boxes;
    }
    let area = (h as i64 * w as i64) as f64;
    let count = if cfg.count <= 1 {
        1
    } else {
        draws.randint(1, cfg.count as i64)
    };
    let log_aspect = (libm::log(cfg.min_aspect), libm::log(1.0 / cfg.min_aspect));
    for _ in 0..count {
        for _ in 0..10 {
            let target_area = draws.uniform(cfg.area[0], cfg.area[1]) * area / count as f64;
            let aspect = libm::exp(draws.uniform(log_aspect.0, log_aspect.1));
            let bh = py_round(libm::sqrt(target_area * aspect));
            let bw = py_round(libm::sqrt(target_area / aspect));
            if bw < w as i64 && bh < h as i64 {
                let top = draws.randint(0, h as i64 - bh);
                let left = draws.randint(0, w as i64 - bw);
                let b = EraseBox {
                    top: top as u32,
                    left: left as u32,
                    height: bh as u32,
                    width: bw as u32,
                };
                fill(draws, b);
                boxes.push(b);
                break;
            }
        }
    }
    boxes
}

/// Erases in place a normalized CHW tensor `img` of 3 x `h` x `w`. Fill values come from
/// `draws` right after each box: `pixel` one N(0,1) per value (channel, row, column
/// order), `rand` one per channel, `const` zeros. Returns the boxes.
pub fn erase<D: Draws>(
    img: &mut [f32],
    h: u32,
    w: u32,
    cfg: &EraseConfig,
    draws: &mut D,
) -> Vec<EraseBox> {
    let (h_us, w_us) = (h as usize, w as usize);
    let mode = cfg.mode;
    let mut values: Vec<f32> = Vec::new();
    erase_boxes(h, w, cfg, draws, |d, b| {
        let (bh, bw) = (b.height as usize, b.width as usize);
        values.clear();
        match mode {
            EraseMode::Pixel => values.resize(3 * bh * bw, 0.0),
            EraseMode::Rand => values.resize(3, 0.0),
            EraseMode::Const => {}
        }
        if !values.is_empty() {
            d.normals(&mut values);
        }
        for c in 0..3 {
            let plane = &mut img[c * h_us * w_us..(c + 1) * h_us * w_us];
            for y in 0..bh {
                let row = (b.top as usize + y) * w_us + b.left as usize;
                let dst = &mut plane[row..row + bw];
                match mode {
                    EraseMode::Pixel => {
                        let off = (c * bh + y) * bw;
                        dst.copy_from_slice(&values[off..off + bw]);
                    }
                    EraseMode::Rand => dst.fill(values[c]),
                    EraseMode::Const => dst.fill(0.0),
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::rng_from_seed;

    #[test]
    fn erase_rate_and_area_distribution() {
        let cfg = EraseConfig::default();
        let mut rng = rng_from_seed(9);
        let (mut hits, mut area_sum) = (0usize, 0.0f64);
        let n = 20_000;
        for _ in 0..n {
            let b = erase_boxes(224, 224, &cfg, &mut rng, |_, _| {});
            if let Some(b) = b.first() {
                hits += 1;
                let a = (b.height * b.width) as f64 / (224.0 * 224.0);
                assert!((0.015..0.35).contains(&a), "{a}");
                assert!(b.top + b.height <= 224 && b.left + b.width <= 224);
                area_sum += a;
            }
        }
        let rate = hits as f64 / n as f64;
        assert!((rate - 0.25).abs() < 0.015, "{rate}");
        // Mean of U(0.02, 1/3) is 0.177; rejected tall boxes pull it slightly down.
        let mean = area_sum / hits as f64;
        assert!((0.15..0.18).contains(&mean), "{mean}");
    }

    #[test]
    fn pixel_fill_writes_only_the_box() {
        let cfg = EraseConfig {
            prob: 1.0,
            ..EraseConfig::default()
        };
        let mut img = vec![7.0f32; 3 * 16 * 16];
        let mut rng = rng_from_seed(1);
        let boxes = erase(&mut img, 16, 16, &cfg, &mut rng);
        assert_eq!(boxes.len(), 1);
        let b = boxes[0];
        let inside = |y: u32, x: u32| {
            y >= b.top && y < b.top + b.height && x >= b.left && x < b.left + b.width
        };
        for c in 0..3 {
            for y in 0..16 {
                for x in 0..16 {
                    let v = img[(c * 16 + y as usize) * 16 + x as usize];
                    assert_eq!(v == 7.0, !inside(y, x));
                }
            }
        }
    }
}
