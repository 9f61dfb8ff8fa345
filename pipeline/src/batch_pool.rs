//! Reuse of batch image buffers across loaders. A training batch at 224 px and batch 64
//! is a 38.5 MB `Vec<f32>`; a new one costs about 9,400 page faults (the kernel zeroing
//! each page on first write), which `perf` put at 9% of the loader's time in
//! `deit-pipe bench loader` when each loader allocated its own (2026-11-30). Loaders are
//! short-lived (one per epoch, one per bench repetition), so the buffers live in one
//! process-wide pool: the next loader takes the memory the last one's batches gave back.
//!
//! A batch hands its buffer back when dropped (see `loader::Batch`); a consumer that takes
//! the images out (the trainer wraps them in a tensor) keeps them, and the loader then
//! allocates.
//!
//! [`BufferPool`] is generic: `transforms::buffers` keeps a small thread-local one of image
//! byte buffers along a view's path.

use std::sync::{Mutex, MutexGuard};

/// A bounded pool of buffers; contents of a taken buffer are unspecified.
#[derive(Debug)]
pub struct BufferPool<T> {
    keep: usize,
    bufs: Mutex<Vec<Vec<T>>>,
}

/// Buffers the process-wide pool keeps (a loader has at most `prefetch + 3` batches
/// alive; the default prefetch is 2).
pub const BATCH_POOL_KEEP: usize = 6;

/// The pool every loader takes its batch buffers from.
pub static BATCH_POOL: BufferPool<f32> = BufferPool::new(BATCH_POOL_KEEP);

impl<T: Copy + Default> BufferPool<T> {
    /// An empty pool that keeps at most `keep` buffers.
    pub const fn new(keep: usize) -> Self {
        BufferPool {
            keep,
            bufs: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Vec<T>>> {
        // The guarded data is a list of plain buffers: a panic while it was held cannot
        // leave it inconsistent, so a poisoned lock is used as is.
        self.bufs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A buffer of exactly `len` values: the smallest pooled one that holds `len`, else a
    /// new one of `T::default()` (zero for the number types it is used with). Reused
    /// buffers keep stale values: the caller writes every one.
    pub fn take(&self, len: usize) -> Vec<T> {
        let reused = {
            let mut bufs = self.lock();
            let best = bufs
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= len)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            best.map(|i| bufs.swap_remove(i))
        };
        match reused {
            Some(mut b) => {
                // Within capacity: shrinking is free, growing fills only the new part.
                b.resize(len, T::default());
                b
            }
            // A zero element makes `vec!` ask the allocator for zeroed memory (fresh
            // pages) instead of writing the zeros.
            None => vec![T::default(); len],
        }
    }

    /// Returns a buffer. When the pool is full the smallest buffer (possibly this one) is
    /// dropped, so buffers of an earlier, smaller batch shape do not crowd out the ones
    /// the current loader needs. Buffers without capacity are dropped.
    pub fn give(&self, buf: Vec<T>) {
        if buf.capacity() == 0 || self.keep == 0 {
            return;
        }
        let mut bufs = self.lock();
        bufs.push(buf);
        if bufs.len() > self.keep {
            let smallest = bufs
                .iter()
                .enumerate()
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            if let Some(i) = smallest {
                bufs.swap_remove(i);
            }
        }
    }

    /// Buffers held now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no buffer is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_the_smallest_fitting_buffer_and_stays_bounded() {
        let pool = BufferPool::<f32>::new(2);
        let small = vec![1.0f32; 100];
        let big = vec![2.0f32; 1000];
        let (small_ptr, big_ptr) = (small.as_ptr(), big.as_ptr());
        pool.give(big);
        pool.give(small);
        let a = pool.take(50);
        assert_eq!(a.len(), 50);
        assert_eq!(a.as_ptr(), small_ptr, "the smallest buffer that fits");
        let b = pool.take(500);
        assert_eq!(b.as_ptr(), big_ptr);
        assert!(pool.is_empty());
        let c = pool.take(2000);
        assert_eq!(c.len(), 2000);
        assert!(c.iter().all(|&v| v == 0.0), "a new buffer is zeroed");
        // Growing a reused buffer within its capacity zero-fills the new part only.
        let mut d = b;
        d.truncate(10);
        pool.give(d);
        let e = pool.take(20);
        assert_eq!(&e[..10], &[2.0; 10]);
        assert_eq!(&e[10..], &[0.0; 10]);
        pool.give(e); // capacity 1000
        pool.give(a); // capacity 100
        pool.give(c); // capacity 2000: the pool is full, the smallest (a) goes
        assert_eq!(pool.len(), 2, "keeps at most `keep` buffers");
        pool.give(vec![0.0; 10]); // smaller than both: dropped itself
        pool.give(Vec::new());
        assert_eq!(pool.len(), 2);
        let caps = [pool.take(1500).capacity(), pool.take(900).capacity()];
        assert_eq!(caps, [2000, 1000], "the larger buffers were kept");
    }
}
