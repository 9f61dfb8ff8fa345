//! How many threads candle's element-wise kernels use.
//!
//! candle 0.11 runs element-wise ops (adds, muls, unary maps over 64 Ki elements or more)
//! on its own barrier pool, next to rayon's pool that runs GEMM, our fused kernels and the
//! data loader. Its main thread spin-waits for the pool's workers at the end of every op.
//! With two cores and both pools awake, a worker that is not scheduled keeps the other
//! core spinning: `perf` on a `resnet_tiny` train step put 29% of all cycles in
//! `BarrierGuard::drop` (the wait) and 15% more in rayon's idle loop. With the pool off
//! (`CANDLE_NUM_THREADS=1`: element-wise ops on the calling thread; GEMM and our kernels
//! keep every rayon thread) one epoch of the quickstart's student took 3.5 s instead of
//! 15-22 s while another build ran, and the same or less on a quiet machine
//! (BENCHMARKS.md, "candle's element-wise pool"). A user's own setting of the variable wins.

/// The environment variable candle reads once, when it first builds its pool.
pub const CANDLE_THREADS_VAR: &str = "CANDLE_NUM_THREADS";

/// Turns candle's element-wise pool off unless the user set [`CANDLE_THREADS_VAR`].
/// Must run before any other thread exists and before the first tensor op.
pub fn limit_candle_elementwise_pool() {
    if std::env::var_os(CANDLE_THREADS_VAR).is_none() {
        std::env::set_var(CANDLE_THREADS_VAR, "1");
    }
}
