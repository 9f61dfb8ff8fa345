//! Allocator tuning measured in `../shared/PLATFORM.md`: glibc turns every large tensor
//! into an mmap/munmap pair (about 30% of cycles in page faults); raising the mmap and
//! trim thresholds made training 1.8-2x faster on this machine kind.

/// Raise glibc's mmap/trim thresholds so large tensors are reused from the heap.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called once at start-up,
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 1 << 30);
    }
}
