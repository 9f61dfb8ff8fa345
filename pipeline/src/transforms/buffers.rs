//! Thread-local reuse of image buffers along one view's path (crop/resize output,
//! RandAugment's geometric outputs, the final view image). A fresh `Vec` of 150-200 KB
//! per stage meant zeroing (or page-faulting) it every time: about 100 us of a 300x250 →
//! 224 crop/resize, half of its own work (a throwaway probe, 2026-11-30).
//!
//! Buffers come back with stale bytes: every user overwrites all of them.

use image::RgbImage;

use crate::batch_pool::BufferPool;

/// Buffers kept per thread (a view has at most two images alive at once).
const KEEP: usize = 4;

thread_local! {
    static POOL: BufferPool<u8> = const { BufferPool::new(KEEP) };
}

/// A buffer of exactly `len` bytes with unspecified (initialized) contents: the smallest
/// pooled one that is large enough, else a new zeroed one. The caller must write every
/// byte.
pub fn take(len: usize) -> Vec<u8> {
    POOL.with(|p| p.take(len))
}

/// Returns a buffer for reuse on this thread (when the pool is full, its smallest buffer
/// is dropped).
pub fn give(buf: Vec<u8>) {
    POOL.with(|p| p.give(buf));
}

/// Returns an image's buffer for reuse.
pub fn recycle(img: RgbImage) {
    give(img.into_raw());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_with_the_asked_length() {
        let a = take(1000);
        assert_eq!(a.len(), 1000);
        let ptr = a.as_ptr();
        give(a);
        let b = take(600);
        assert_eq!(b.len(), 600);
        assert_eq!(b.as_ptr(), ptr, "the pooled buffer came back");
        give(b);
        let c = take(5000);
        assert_eq!(c.len(), 5000);
        assert!(c.iter().all(|&v| v == 0), "a new buffer is zeroed");
        for _ in 0..2 * KEEP {
            give(vec![1; 8]);
        }
        POOL.with(|p| assert_eq!(p.len(), KEEP));
    }
}
