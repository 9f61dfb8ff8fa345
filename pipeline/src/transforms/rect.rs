//! [`CropRect`], the integer rectangle that the crops choose, the resize reads and the
//! region decoders decode (re-exported as `transforms::crop::CropRect`).

/// An integer crop rectangle in source pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropRect {
    /// Left edge (x of the first column).
    pub left: u32,
    /// Top edge (y of the first row).
    pub top: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

impl CropRect {
    /// The whole of a `width` x `height` image.
    pub fn whole(width: u32, height: u32) -> Self {
        CropRect {
            left: 0,
            top: 0,
            width,
            height,
        }
    }

    /// True when the rectangle is non-empty and lies inside a `width` x `height` image.
    pub fn fits_in(&self, width: u32, height: u32) -> bool {
        self.width > 0
            && self.height > 0
            && self
                .left
                .checked_add(self.width)
                .is_some_and(|r| r <= width)
            && self
                .top
                .checked_add(self.height)
                .is_some_and(|b| b <= height)
    }
}
