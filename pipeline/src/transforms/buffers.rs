//! Thread-local reuse of image buffers along one view's path (crop/resize output,
//! RandAugment's geometric outputs, the final view image). A fresh `Vec` of 150-200 KB
//! per stage meant zeroing (or page-faulting) it every time: about 100 us of a 300x250 →
//! 224 crop/resize, half of its own work (a throwaway probe, 2026-11-30).
//!
//! Buffers come back with stale bytes: every user overwrites all of them.

use std::cell::RefCell;

use image::RgbImage;

/// Buffers kept per thread (a view has at most two images alive at once).
const KEEP: usize = 4;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of exactly `len` bytes with unspecified (initialized) contents: a pooled one
/// when one is large enough, else a new zeroed one. The caller must write every byte.
pub fn take(len: usize) -> Vec<u8> {
    let reused = POOL.with(|p| {
        let mut p = p.borrow_mut();
        let i = p.iter().position(|b| b.capacity() >= len)?;
        Some(p.swap_remove(i))
    });
    match reused {
        Some(mut b) => {
            // Within capacity: shrinking is free, growing zero-fills only the new part.
            b.resize(len, 0);
            b
        }
        None => vec![0; len],
    }
}

/// Returns a buffer for reuse on this thread (dropped when the pool is full).
pub fn give(buf: Vec<u8>) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < KEEP {
            p.push(buf);
        }
    });
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
        POOL.with(|p| assert_eq!(p.borrow().len(), KEEP));
    }
}
