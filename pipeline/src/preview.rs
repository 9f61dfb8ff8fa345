//! A contact sheet of augmented views for a person to look at
//! (`deit-pipe inspect DIR --augment 16 --out grid.png`): each tile is a view
//! (de-normalized), with a caption strip underneath: a bar split by lam between the two
//! labels' colours and the text `A/B lam` drawn with a tiny built-in 3x5 font.

use image::{Rgb, RgbImage};

use crate::error::PipelineError;
use crate::view::SlotView;

/// Height of the caption strip under each tile.
const CAPTION: u32 = 22;
const SCALE: u32 = 2;

fn glyph(c: char) -> [u8; 5] {
    // Rows of 3 bits, MSB = left column.
    match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '/' => [1, 1, 2, 4, 4],
        '-' => [0, 0, 7, 0, 0],
        ':' => [0, 2, 0, 2, 0],
        _ => [0, 0, 0, 0, 0],
    }
}

/// Draws `text` with the 3x5 font at (x, y), scaled by [`SCALE`].
pub fn draw_text(img: &mut RgbImage, x: u32, y: u32, text: &str, color: Rgb<u8>) {
    let mut cx = x;
    for ch in text.chars() {
        for (row, bits) in glyph(ch).iter().enumerate() {
            for col in 0..3u32 {
                if bits & (4 >> col) != 0 {
                    for dy in 0..SCALE {
                        for dx in 0..SCALE {
                            let (px, py) = (cx + col * SCALE + dx, y + row as u32 * SCALE + dy);
                            if px < img.width() && py < img.height() {
                                img.put_pixel(px, py, color);
                            }
                        }
                    }
                }
            }
        }
        cx += 4 * SCALE;
    }
}

/// A distinct colour per class.
pub fn class_color(label: u32) -> Rgb<u8> {
    let h = crate::rng::splitmix64(&mut (label as u64 + 1));
    Rgb([
        (h & 0xff) as u8 | 0x40,
        ((h >> 8) & 0xff) as u8 | 0x40,
        ((h >> 16) & 0xff) as u8 | 0x40,
    ])
}

/// Turns a normalized CHW view back into a u8 image.
pub fn denormalize(view: &[f32], size: u32, mean: [f32; 3], std: [f32; 3]) -> RgbImage {
    let plane = (size * size) as usize;
    let mut img = RgbImage::new(size, size);
    for (i, px) in img.pixels_mut().enumerate() {
        for c in 0..3 {
            let v = (view[c * plane + i] * std[c] + mean[c]) * 255.0;
            px.0[c] = v.round().clamp(0.0, 255.0) as u8;
        }
    }
    img
}

/// The caption of a view: `A/B lam` (lam with two decimals).
pub fn caption(v: &SlotView) -> String {
    format!("{}/{} {:.2}", v.label_a, v.label_b, v.lam)
}

/// Tiles views into a grid with `cols` columns and a caption strip under each.
pub fn grid(views: &[SlotView], size: u32, cols: u32, mean: [f32; 3], std: [f32; 3]) -> RgbImage {
    let cols = cols.max(1);
    let rows = (views.len() as u32).div_ceil(cols).max(1);
    let (tw, th) = (size + 4, size + CAPTION + 4);
    let mut out = RgbImage::from_pixel(cols * tw, rows * th, Rgb([255, 255, 255]));
    for (k, v) in views.iter().enumerate() {
        let (x0, y0) = ((k as u32 % cols) * tw + 2, (k as u32 / cols) * th + 2);
        let tile = denormalize(&v.data, size, mean, std);
        image::imageops::replace(&mut out, &tile, x0 as i64, y0 as i64);
        let split = (v.lam.clamp(0.0, 1.0) * size as f32).round() as u32;
        for x in 0..size {
            let c = if x < split {
                class_color(v.label_a)
            } else {
                class_color(v.label_b)
            };
            for y in 0..6 {
                out.put_pixel(x0 + x, y0 + size + 1 + y, c);
            }
        }
        draw_text(&mut out, x0, y0 + size + 9, &caption(v), Rgb([0, 0, 0]));
    }
    out
}

/// Writes the grid as PNG.
pub fn write_grid_png(
    views: &[SlotView],
    size: u32,
    cols: u32,
    mean: [f32; 3],
    std: [f32; 3],
    path: &std::path::Path,
) -> Result<(), PipelineError> {
    grid(views, size, cols, mean, std)
        .save(path)
        .map_err(|e| PipelineError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })
}

/// The first `count` views of epoch `epoch` of a run seeded `seed` (DeiT augmentation
/// unless `aug` says otherwise), for [`grid`]. The plan uses no rounding unit, so any
/// data set of two or more images works.
pub fn augment_views(
    source: &dyn crate::source::RecordSource,
    aug: &crate::config::AugmentConfig,
    seed: u64,
    epoch: u64,
    count: usize,
) -> Result<Vec<SlotView>, PipelineError> {
    let plan_cfg = crate::config::PlanConfig {
        repeats: 3,
        num_samples_multiple: 1,
    };
    let plan = crate::plan::EpochPlan::new(seed, epoch, source.len(), &plan_cfg)?;
    let builder = crate::view::ViewBuilder::new(aug)?;
    (0..count.min(plan.len()))
        .map(|slot| crate::view::build_slot_view(source, &plan, &builder, slot))
        .collect()
}

/// `inspect DIR --augment N --out grid.png`: opens the shards of `split_dir`, builds the
/// first `count` training views (seed 0, epoch 0) and writes the captioned grid.
pub fn write_augment_grid(
    split_dir: &std::path::Path,
    aug: &crate::config::AugmentConfig,
    count: usize,
    out: &std::path::Path,
) -> Result<(), PipelineError> {
    let source = crate::source::ShardSource::open(split_dir)?;
    let views = augment_views(&source, aug, 0, 0, count)?;
    let cols = (count as f64).sqrt().ceil() as u32;
    write_grid_png(&views, aug.input_size, cols, aug.mean, aug.std, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AugmentConfig;
    use crate::source::MemorySource;

    #[test]
    fn grid_has_tiles_and_captions() {
        let imgs = (0..6u32)
            .map(|i| {
                (
                    i % 3,
                    RgbImage::from_pixel(40, 30, Rgb([(i * 40) as u8, 100, 50])),
                )
            })
            .collect();
        let src = MemorySource::new(imgs, 3);
        let aug = AugmentConfig {
            input_size: 32,
            ..AugmentConfig::default()
        };
        let views = augment_views(&src, &aug, 1, 0, 4).unwrap();
        assert_eq!(views.len(), 4);
        let g = grid(&views, 32, 2, aug.mean, aug.std);
        assert_eq!(g.dimensions(), (2 * 36, 2 * (32 + CAPTION + 4)));
        // Caption text is drawn in black somewhere under the first tile.
        let black = (2..36).any(|x| (32 + 11..32 + 21).any(|y| g.get_pixel(x, y).0 == [0, 0, 0]));
        assert!(black);
        assert!(caption(&views[0]).contains('/'));
    }
}
