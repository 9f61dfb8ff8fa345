//! Per-op cost of RandAugment at 224x224 (DeiT's training size), single thread.
//! `cargo bench -p pipeline --bench randaugment` (plain timing loop, no harness).
//! Prints the median over 15 rounds of the mean time per call, in microseconds, both
//! on-CPU (this thread's schedstat) and wall clock.

use std::hint::black_box;
use std::time::Instant;

use image::RgbImage;
use pipeline::randaugment::{apply_op_owned, Op, RandAugmentConfig};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn photo_like() -> RgbImage {
    RgbImage::from_fn(224, 224, |x, y| {
        let v = (x * 31 + y * 17) ^ (x * y);
        image::Rgb([
            (v % 251) as u8,
            ((x + 2 * y) % 256) as u8,
            ((v / 3) % 256) as u8,
        ])
    })
}

/// Nanoseconds this thread has been on a CPU (Linux `/proc/thread-self/schedstat`), so
/// timings stay meaningful on a loaded machine; `None` elsewhere.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Median over rounds of the mean microseconds per call of `f` (input clone excluded):
/// (on-CPU time, wall time); on-CPU falls back to wall where schedstat is missing.
fn time_us(img: &RgbImage, mut f: impl FnMut(RgbImage) -> RgbImage) -> (f64, f64) {
    let iters = 40;
    let mut cpu = Vec::new();
    let mut wall = Vec::new();
    for _ in 0..15 {
        let inputs: Vec<RgbImage> = (0..iters).map(|_| img.clone()).collect();
        let c0 = thread_cpu_ns();
        let t = Instant::now();
        for im in inputs {
            black_box(f(black_box(im)));
        }
        let w = t.elapsed().as_secs_f64() * 1e6 / iters as f64;
        let c = match (c0, thread_cpu_ns()) {
            (Some(a), Some(b)) => (b - a) as f64 / 1e3 / iters as f64,
            _ => w,
        };
        cpu.push(c);
        wall.push(w);
    }
    cpu.sort_by(f64::total_cmp);
    wall.sort_by(f64::total_cmp);
    (cpu[cpu.len() / 2], wall[wall.len() / 2])
}

fn main() {
    let img = photo_like();
    let fill = [124, 116, 104];
    println!(
        "{:<34}{:>10}{:>10}",
        "op (224x224, m=9, negated)", "cpu us", "wall us"
    );
    for op in Op::INCREASING {
        let (cpu, wall) = time_us(&img, |im| apply_op_owned(im, op, 0.9, true, fill));
        println!("{:<34}{cpu:>10.1}{wall:>10.1}", op.timm_name());
    }
    let cfg = RandAugmentConfig::default();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (cpu, wall) = time_us(&img, |im| cfg.apply(im, &mut rng));
    println!(
        "{:<34}{cpu:>10.1}{wall:>10.1}",
        "apply (rand-m9-mstd0.5-inc1)"
    );
}
