//! ToTensor + Normalize: u8 HWC → f32 CHW, `(v / 255 - mean) / std` in f32 exactly as
//! torchvision computes it (through a 256-entry table per channel).

use image::RgbImage;

/// Per-channel lookup tables of the normalized value of every byte.
#[derive(Clone, Debug)]
pub struct Normalizer {
    lut: [[f32; 256]; 3],
}

impl Normalizer {
    /// Builds the tables for `mean` / `std`.
    pub fn new(mean: [f32; 3], std: [f32; 3]) -> Self {
        let mut lut = [[0f32; 256]; 3];
        for c in 0..3 {
            for (v, out) in lut[c].iter_mut().enumerate() {
                *out = (v as f32 / 255.0 - mean[c]) / std[c];
            }
        }
        Normalizer { lut }
    }

    /// The normalized value of byte `v` in channel `c`.
    pub fn value(&self, c: usize, v: u8) -> f32 {
        self.lut[c][v as usize]
    }

    /// Writes `img` as normalized CHW into `out` (length 3*H*W).
    pub fn to_chw(&self, img: &RgbImage, out: &mut [f32]) {
        let plane = (img.width() * img.height()) as usize;
        debug_assert_eq!(out.len(), 3 * plane);
        let (r, rest) = out.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        let [lr, lg, lb] = &self.lut;
        // Zipped iterators: no bounds checks in the loop (indexing the three planes by `i`
        // kept three checks a pixel).
        let planes = r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut());
        for (((r, g), b), px) in planes.zip(img.as_raw().chunks_exact(3)) {
            *r = lr[px[0] as usize];
            *g = lg[px[1] as usize];
            *b = lb[px[2] as usize];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_formula() {
        let n = Normalizer::new([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
        let v = n.value(0, 200);
        assert_eq!(v, (200f32 / 255.0 - 0.485f32) / 0.229f32);
        let img = RgbImage::from_raw(2, 1, vec![0, 1, 2, 3, 4, 5]).unwrap();
        let mut out = vec![0f32; 6];
        n.to_chw(&img, &mut out);
        assert_eq!(out[1], n.value(0, 3));
        assert_eq!(out[2], n.value(1, 1));
        assert_eq!(out[5], n.value(2, 5));
    }
}
