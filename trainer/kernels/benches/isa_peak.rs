//! The multiply-add peak of this CPU's vector units, the ceiling the GEMM kernels are
//! measured against: 24 independent accumulators (the register tile of our 12x32 kernels)
//! updated by 512-bit `vfmadd231ps` (f32) and, where the CPU has AVX512-BF16, by
//! `vdpbf16ps` (two bf16 multiply-adds per f32 lane), from registers, on one thread and
//! then on every rayon thread at once. Plain timing loop, no harness:
//! `RAYON_NUM_THREADS=2 cargo bench -p kernels --bench isa_peak`.
//!
//! A GEMM figure from `gemm_shapes` divided by the all-threads figure here is the fraction
//! of the peak it reaches on that host.

use std::time::Instant;

use kernels::isa::{self, Isa};
use rayon::prelude::*;

/// Iterations of the 24 updates per timed run.
const ITERS: usize = 20_000_000;

/// GFLOP/s of `f` (which returns a checksum) doing `flops` floating-point operations,
/// the best of 3 runs.
fn best(flops: f64, f: &(dyn Fn() -> f32 + Sync)) -> f64 {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            flops / t.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

/// The same on every rayon thread at once: the sum of their rates.
fn best_all(flops: f64, f: &(dyn Fn() -> f32 + Sync)) -> f64 {
    let threads = rayon::current_num_threads();
    (0..3)
        .map(|_| {
            let t = Instant::now();
            let sum: f32 = (0..threads).into_par_iter().map(|_| f()).sum();
            std::hint::black_box(sum);
            flops * threads as f64 / t.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// The sum of every lane of the accumulators (a checksum, so the loops are kept).
    ///
    /// # Safety
    /// The CPU has AVX-512 F.
    #[target_feature(enable = "avx512f")]
    unsafe fn sum(c: [__m512; 24]) -> f32 {
        _mm512_reduce_add_ps(
            c.into_iter()
                .fold(_mm512_setzero_ps(), |s, x| _mm512_add_ps(s, x)),
        )
    }

    /// `ITERS` rounds of 24 f32 FMAs (16 lanes each) on independent accumulators.
    ///
    /// # Safety
    /// The CPU has AVX-512 F.
    #[target_feature(enable = "avx512f,fma")]
    pub unsafe fn fma(iters: usize) -> f32 {
        let (a, b) = (_mm512_set1_ps(1.0), _mm512_set1_ps(1e-9));
        let mut c = [_mm512_setzero_ps(); 24];
        for _ in 0..iters {
            for x in c.iter_mut() {
                *x = _mm512_fmadd_ps(*x, a, b);
            }
        }
        sum(c)
    }

    /// `ITERS` rounds of 24 `vdpbf16ps` (16 lanes of two multiply-adds each).
    ///
    /// # Safety
    /// The CPU has AVX-512 F and AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn dpbf16(iters: usize) -> f32 {
        // 1.0 and 2^-20 as bf16 pairs.
        // SAFETY (both): 64 bytes of plain bits.
        let a = unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(0x3F80_3F80)) };
        let b = unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(0x3580_3580)) };
        let mut c = [_mm512_setzero_ps(); 24];
        for _ in 0..iters {
            for x in c.iter_mut() {
                *x = _mm512_dpbf16_ps(*x, a, b);
            }
        }
        sum(c)
    }
}

fn main() {
    println!("host: {}", isa::host().line());
    println!(
        "peak of 24 independent 512-bit accumulators, best of 3, {} rayon threads",
        rayon::current_num_threads()
    );
    #[cfg(target_arch = "x86_64")]
    {
        if isa::detected() < Isa::Avx512 {
            println!("no AVX-512 on this CPU: nothing to measure");
            return;
        }
        let fma_flops = (ITERS * 24 * 16 * 2) as f64;
        // SAFETY: the CPU has AVX-512 F (checked above).
        let fma = || unsafe { x86::fma(std::hint::black_box(ITERS)) };
        println!(
            "f32 vfmadd231ps zmm:  {:>7.1} GFLOP/s one thread, {:>7.1} all threads",
            best(fma_flops, &fma),
            best_all(fma_flops, &fma)
        );
        if isa::detected() >= Isa::Avx512Bf16 {
            // SAFETY: the CPU has AVX512-BF16 (checked).
            let dp = || unsafe { x86::dpbf16(std::hint::black_box(ITERS)) };
            let dp_flops = (ITERS * 24 * 16 * 4) as f64;
            println!(
                "bf16 vdpbf16ps zmm:   {:>7.1} GFLOP/s one thread, {:>7.1} all threads",
                best(dp_flops, &dp),
                best_all(dp_flops, &dp)
            );
        } else {
            println!("no AVX512-BF16 on this CPU: vdpbf16ps not measured");
        }
    }
}
