//! Test inputs shared by the colour and pointwise op tests: random images that stress the
//! clipping and table edges (uniform, only 0/255, extremes, a narrow smooth range, one
//! constant colour), at odd sizes (vector tails) and at 224x224.

use image::RgbImage;
use rand::{Rng, SeedableRng};

/// Every size x every mode, drawn from `seed`.
pub(crate) fn images(seed: u64) -> Vec<RgbImage> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let sizes = [
        (1, 1),
        (2, 3),
        (3, 3),
        (5, 4),
        (4, 5),
        (11, 9),
        (16, 1),
        (17, 3),
        (37, 23),
        (224, 224),
    ];
    let mut out = Vec::new();
    for (w, h) in sizes {
        for mode in 0..5 {
            out.push(RgbImage::from_fn(w, h, |x, y| {
                image::Rgb(std::array::from_fn(|c| match mode {
                    0 => rng.random(),
                    1 => [0, 255][rng.random_range(0..2)],
                    2 => [0, 1, 127, 128, 254, 255][rng.random_range(0..6)],
                    3 => ((x * 7 + y * 3) % 40 + 100) as u8,
                    _ => 60 * c as u8,
                }))
            }));
        }
    }
    out
}
