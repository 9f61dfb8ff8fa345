//! GEMM throughput on the matrix products of a DeiT train step: candle's CPU matmul (the
//! `gemm` crate) and ours (`kernels::sgemm`, what our layers run), to compare with
//! PyTorch's on the same shapes (`python tools/bench_torch_gemm.py`, same thread count).
//! Plain timing loop, no harness:
//! `RAYON_NUM_THREADS=2 cargo bench -p kernels --bench gemm_shapes`.
//!
//! Each linear layer `y = x·Wᵀ` (x: M x K, W: N x K) appears three times in a train step:
//! forward, input gradient `dx = dy·W` and weight gradient `dW = dyᵀ·x`; each is timed
//! with the layouts candle's autograd uses (transposed views, no copies). Attention's
//! batched products (per image and head) are timed too: ours as our attention op runs
//! them, one single-threaded product per (image, head) pair, the pairs in parallel.
//!
//! `GEMM_SHAPES_BF16=1` runs ours with both operands read as bf16 (mixed precision: the
//! `vdpbf16ps` kernel where the CPU has AVX512-BF16), against candle's f32 matmul; compare
//! with `tools/bench_torch_gemm.py --bf16`.

use std::hint::black_box;
use std::time::Instant;

use candle_core::{Device, Tensor};
use kernels::sgemm::{self, Operand};
use rayon::prelude::*;

/// One product (or a batch of equal ones): candle's operands, and the same data as
/// [`sgemm`] reads it.
struct Case {
    name: String,
    flops: f64,
    a: Tensor,
    b: Tensor,
    /// `(batch, m, n, k)`.
    dims: (usize, usize, usize, usize),
    /// Stored data, leading dimension and transposition of each operand.
    ours_a: (Vec<f32>, usize, bool),
    ours_b: (Vec<f32>, usize, bool),
}

/// The stored data of a contiguous tensor.
fn data(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .expect("flatten")
        .to_vec1()
        .expect("to_vec1")
}

/// Runs a case through our GEMM, its operands read as bf16 when `bf16`.
fn ours(c: &Case, out: &mut [f32], bf16: bool) {
    let (batch, m, n, k) = c.dims;
    let (sa, sb) = (c.ours_a.0.len() / batch, c.ours_b.0.len() / batch);
    let one = |i: usize, out: &mut [f32], parallel: bool| {
        let a = Operand {
            data: &c.ours_a.0[i * sa..][..sa],
            ld: c.ours_a.1,
            trans: c.ours_a.2,
            bf16,
        };
        let b = Operand {
            data: &c.ours_b.0[i * sb..][..sb],
            ld: c.ours_b.1,
            trans: c.ours_b.2,
            bf16,
        };
        // SAFETY: `out` holds `m x n` floats; the operands hold the matrices; AVX2 and FMA
        // are checked before any case runs.
        unsafe { sgemm::sgemm((out.as_mut_ptr(), n), (m, n, k), a, b, 1.0, parallel) };
    };
    if batch == 1 {
        one(0, out, true);
    } else {
        out.par_chunks_mut(m * n)
            .enumerate()
            .for_each(|(i, o)| one(i, o, false));
    }
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
    let (xd, wd, dyd) = (data(&x), data(&w), data(&dy));
    cases.push(Case {
        name: format!("{label} fwd  x·Wᵀ  [{m}x{k}]·[{k}x{n}]"),
        flops: f,
        a: x.clone(),
        b: w.t().expect("t"),
        dims: (1, m, n, k),
        ours_a: (xd.clone(), k, false),
        ours_b: (wd.clone(), k, true),
    });
    cases.push(Case {
        name: format!("{label} dx   dy·W  [{m}x{n}]·[{n}x{k}]"),
        flops: f,
        a: dy.clone(),
        b: w,
        dims: (1, m, k, n),
        ours_a: (dyd.clone(), n, false),
        ours_b: (wd, k, false),
    });
    cases.push(Case {
        name: format!("{label} dW   dyᵀ·x [{n}x{m}]·[{m}x{k}]"),
        flops: f,
        a: dy.t().expect("t"),
        b: x,
        dims: (1, n, k, m),
        ours_a: (dyd, n, true),
        ours_b: (xd, k, false),
    });
}

/// Attention's two batched products for `bh` (images x heads) of `t` tokens, head dim `d`.
fn attention(cases: &mut Vec<Case>, label: &str, bh: usize, t: usize, d: usize) {
    let q = randn(&[bh, t, d]);
    let k = randn(&[bh, t, d]);
    let p = randn(&[bh, t, t]);
    let f = 2.0 * (bh * t * t * d) as f64;
    let (qd, kd, pd) = (data(&q), data(&k), data(&p));
    cases.push(Case {
        name: format!("{label} q·kᵀ  {bh}x[{t}x{d}]·[{d}x{t}]"),
        flops: f,
        a: q,
        b: k.t().expect("t"),
        dims: (bh, t, t, d),
        ours_a: (qd, d, false),
        ours_b: (kd.clone(), d, true),
    });
    cases.push(Case {
        name: format!("{label} p·v   {bh}x[{t}x{t}]·[{t}x{d}]"),
        flops: f,
        a: p,
        b: k,
        dims: (bh, t, d, t),
        ours_a: (pd, t, false),
        ours_b: (kd, d, false),
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

    assert!(sgemm::available(), "this bench needs AVX2 and FMA");
    let bf16 = std::env::var("GEMM_SHAPES_BF16").is_ok_and(|v| v == "1");
    println!("host: {}", kernels::isa::host().line());
    println!(
        "candle {} matmul and ours (sgemm {}, {} operands), {} rayon threads: median of 9 \
         rounds",
        env!("CARGO_PKG_VERSION"),
        sgemm::kernel().map_or("none", |k| k.describe()),
        if bf16 { "bf16" } else { "f32" },
        rayon::current_num_threads()
    );
    println!("{:<52} {:>22} {:>22}", "", "candle", "ours");
    let median = |f: &mut dyn FnMut(), flops: f64| {
        f();
        let reps = ((2e9 / flops) as usize).clamp(3, 200);
        let mut times: Vec<f64> = (0..9)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..reps {
                    f();
                }
                t.elapsed().as_secs_f64() / reps as f64
            })
            .collect();
        times.sort_by(f64::total_cmp);
        times[4]
    };
    let (mut total_candle, mut total_ours, mut total_flops) = (0.0, 0.0, 0.0);
    // `GEMM_SHAPES_FILTER=text` runs only the products whose name contains it.
    let filter = std::env::var("GEMM_SHAPES_FILTER").unwrap_or_default();
    for c in cases.iter().filter(|c| c.name.contains(&filter)) {
        let candle = median(
            &mut || drop(black_box(c.a.matmul(&c.b).expect("matmul"))),
            c.flops,
        );
        let (batch, m, n, _) = c.dims;
        let mut out = vec![0f32; batch * m * n];
        let mine = median(&mut || ours(c, black_box(&mut out), bf16), c.flops);
        // Same values as candle's (a check that the bench times the same product).
        let want = data(&c.a.matmul(&c.b).expect("matmul"));
        let worst = want
            .iter()
            .zip(&out)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        // bf16 operands: the rounding's error grows as the sum's (about sqrt(k) * 2^-8
        // for unit normals); f32: the order of the sums only.
        let k = c.dims.3;
        let tol = if bf16 { 0.05 * (k as f32).sqrt() } else { 1e-2 };
        assert!(
            worst < tol,
            "{}: ours differs from candle by {worst}",
            c.name
        );
        total_candle += candle;
        total_ours += mine;
        total_flops += c.flops;
        println!(
            "{:<52} {:>8.3} ms {:>6.1} GF/s {:>8.3} ms {:>6.1} GF/s",
            c.name,
            candle * 1e3,
            c.flops / candle / 1e9,
            mine * 1e3,
            c.flops / mine / 1e9
        );
    }
    println!(
        "all products: candle {:.2} ms, {:.1} GFLOP/s; ours {:.2} ms, {:.1} GFLOP/s",
        total_candle * 1e3,
        total_flops / total_candle / 1e9,
        total_ours * 1e3,
        total_flops / total_ours / 1e9
    );
}
