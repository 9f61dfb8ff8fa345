//! One byte of Pillow's `ImagingBlend`, the step every `PIL.ImageEnhance` enhancer ends
//! with: shared by the scalar enhancers ([`super::enhance`]) and the scalar tails of their
//! AVX2 forms.

/// One blended byte, exactly as Pillow's `ImagingBlend`.
#[inline(always)]
pub(super) fn blend(degenerate: u8, value: u8, factor: f32) -> u8 {
    let d = degenerate as i32;
    (d as f32 + factor * (value as i32 - d) as f32) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blend_matches_pillow_formula() {
        // factor 1.9, d = 100, v = 200: 100 + 1.9 * 100 = 290 -> 255
        assert_eq!(blend(100, 200, 1.9), 255);
        // factor 1.9, d = 200, v = 100: 200 - 190 = 10
        assert_eq!(blend(200, 100, 1.9), 10);
        // truncation: 0 + 0.73 * 3 = 2.19 -> 2
        assert_eq!(blend(0, 3, 0.73), 2);
        assert_eq!(blend(7, 9, 0.0), 7);
        assert_eq!(blend(7, 9, 1.0), 9);
    }
}
