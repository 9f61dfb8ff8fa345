//! GEMM throughput of candle's CPU matmul (the `gemm` crate) on the matrix products of a
//! DeiT train step, to compare with PyTorch's on the same shapes
//! (`python tools/bench_torch_gemm.py`, same thread count). Plain timing loop, no harness:
//! `RAYON_NUM_THREADS=2 cargo bench -p trainer --bench gemm_shapes`.
//!
//! Each linear layer `y = x·Wᵀ` (x: M x K, W: N x K) appears three times in a train step:
//! forward, input gradient `dx = dy·W` and weight gradient `dW = dyᵀ·x`; each is timed
//! with the layouts candle's autograd uses (transposed views, no copies). Attention's
//! batched products (per image and head) are timed too.

use std::hint::black_box;
use std::time::Instant;

use candle_core::{Device, Tensor};

/// One product: name and a closure building its operands, then the product.
struct Case {
    name: String,
    flops: f64,
    a: Tensor,
    b: Tensor,
}

fn randn(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1f32, shape, &Device::Cpu).expect("randn")
}

/// The three products of a linear layer with `m` rows, `k` inputs, `n` outputs.
fn linear(cases: &mut Vec<Case>, label: &str, m: usize, k: usize, n: usize) {
    let x = randn(&[m, k]);
    let w = randn(&[n, k]);
    let dy = randn(&[m, n]);
    let f = 2.0 * (m * k * n) as f64;
    cases.push(Case {
        name: format!("{label} fwd  x·Wᵀ  [{m}x{k}]·[{k}x{n}]"),
        flops: f,
        a: x.clone(),
        b: w.t().expect("t"),
    });
    cases.push(Case {
        name: format!("{label} dx   dy·W  [{m}x{n}]·[{n}x{k}]"),
        flops: f,
        a: dy.clone(),
        b: w,
    });
    cases.push(Case {
        name: format!("{label} dW   dyᵀ·x [{n}x{m}]·[{m}x{k}]"),
        flops: f,
        a: dy.t().expect("t"),
        b: x,
    });
}

/// Attention's two batched products for `bh` (images x heads) of `t` tokens, head dim `d`.
fn attention(cases: &mut Vec<Case>, label: &str, bh: usize, t: usize, d: usize) {
    let q = randn(&[bh, t, d]);
    let k = randn(&[bh, t, d]);
    let p = randn(&[bh, t, t]);
    let f = 2.0 * (bh * t * t * d) as f64;
    cases.push(Case {
        name: format!("{label} q·kᵀ  {bh}x[{t}x{d}]·[{d}x{t}]"),
        flops: f,
        a: q,
        b: k.t().expect("t"),
    });
    cases.push(Case {
        name: format!("{label} p·v   {bh}x[{t}x{t}]·[{t}x{d}]"),
        flops: f,
        a: p,
        b: k,
    });
}

fn main() {
    let mut cases = Vec::new();
    // DeiT-Ti distilled at 224, batch 8: 198 tokens, dim 192, MLP 768, 3 heads of 64.
    let m = 8 * 198;
    linear(&mut cases, "deit_tiny/224 b8 qkv ", m, 192, 576);
    linear(&mut cases, "deit_tiny/224 b8 proj", m, 192, 192);
    linear(&mut cases, "deit_tiny/224 b8 fc1 ", m, 192, 768);
    linear(&mut cases, "deit_tiny/224 b8 fc2 ", m, 768, 192);
    attention(&mut cases, "deit_tiny/224 b8 attn", 8 * 3, 198, 64);
    // The small ViT (32 px, patch 4, dim 192, 3 heads), batch 64: 66 tokens.
    let m = 64 * 66;
    linear(&mut cases, "vit32 b64 qkv ", m, 192, 576);
    linear(&mut cases, "vit32 b64 fc1 ", m, 192, 768);
    linear(&mut cases, "vit32 b64 fc2 ", m, 768, 192);
    attention(&mut cases, "vit32 b64 attn", 64 * 3, 66, 64);

    println!(
        "candle {} matmul, {} rayon threads: median of 9 rounds",
        env!("CARGO_PKG_VERSION"),
        rayon::current_num_threads()
    );
    let mut total_s = 0.0;
    let mut total_flops = 0.0;
    for c in &cases {
        let run = || black_box(c.a.matmul(&c.b).expect("matmul"));
        run();
        let reps = ((2e9 / c.flops) as usize).clamp(3, 200);
        let mut times: Vec<f64> = (0..9)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..reps {
                    run();
                }
                t.elapsed().as_secs_f64() / reps as f64
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let s = times[4];
        total_s += s;
        total_flops += c.flops;
        println!(
            "{:<52} {:>8.3} ms {:>7.1} GFLOP/s",
            c.name,
            s * 1e3,
            c.flops / s / 1e9
        );
    }
    println!(
        "all products: {:.2} ms, {:.1} GFLOP/s",
        total_s * 1e3,
        total_flops / total_s / 1e9
    );
}
