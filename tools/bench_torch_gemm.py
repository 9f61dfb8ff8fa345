#!/usr/bin/env python3
"""PyTorch's CPU matmul on the matrix products of a DeiT train step: the counterpart of
`cargo bench -p kernels --bench gemm_shapes` (same shapes, layouts and order).

    python tools/bench_torch_gemm.py --threads 2 [--bf16]

--bf16 runs the products on bfloat16 tensors (what CPU autocast runs a linear layer's
products on; oneDNN's bf16 kernels where the CPU has AVX512-BF16 or AMX), the
counterpart of `GEMM_SHAPES_BF16=1`.

Pinned: torch 2.15.0 (reference env /work/pyref). Each linear layer y = x·Wᵀ appears as
forward, dx = dy·W and dW = dyᵀ·x (transposed views, as autograd passes them);
attention's batched products per image and head. Median of 9 rounds.
"""
import argparse
import time

import torch


def linear(cases, label, m, k, n):
    x, w, dy = torch.randn(m, k), torch.randn(n, k), torch.randn(m, n)
    f = 2.0 * m * k * n
    cases.append((f"{label} fwd  x·Wᵀ  [{m}x{k}]·[{k}x{n}]", f, x, w.t()))
    cases.append((f"{label} dx   dy·W  [{m}x{n}]·[{n}x{k}]", f, dy, w))
    cases.append((f"{label} dW   dyᵀ·x [{n}x{m}]·[{m}x{k}]", f, dy.t(), x))


def attention(cases, label, bh, t, d):
    q, k, p = torch.randn(bh, t, d), torch.randn(bh, t, d), torch.randn(bh, t, t)
    f = 2.0 * bh * t * t * d
    cases.append((f"{label} q·kᵀ  {bh}x[{t}x{d}]·[{d}x{t}]", f, q, k.transpose(1, 2)))
    cases.append((f"{label} p·v   {bh}x[{t}x{t}]·[{t}x{d}]", f, p, k))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="bfloat16 operands")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cases = []
    m = 8 * 198
    linear(cases, "deit_tiny/224 b8 qkv ", m, 192, 576)
    linear(cases, "deit_tiny/224 b8 proj", m, 192, 192)
    linear(cases, "deit_tiny/224 b8 fc1 ", m, 192, 768)
    linear(cases, "deit_tiny/224 b8 fc2 ", m, 768, 192)
    attention(cases, "deit_tiny/224 b8 attn", 8 * 3, 198, 64)
    m = 64 * 66
    linear(cases, "vit32 b64 qkv ", m, 192, 576)
    linear(cases, "vit32 b64 fc1 ", m, 192, 768)
    linear(cases, "vit32 b64 fc2 ", m, 768, 192)
    attention(cases, "vit32 b64 attn", 64 * 3, 66, 64)
    if args.bf16:
        cases = [(name, f, a.bfloat16(), b.bfloat16()) for name, f, a, b in cases]
    print(
        f"torch {torch.__version__} matmul ({'bf16' if args.bf16 else 'f32'}), "
        f"{torch.get_num_threads()} threads, cpu capability "
        f"{torch.backends.cpu.get_cpu_capability()}: median of 9 rounds"
    )
    total_s = total_f = 0.0
    with torch.no_grad():
        for name, f, a, b in cases:
            torch.matmul(a, b)
            reps = min(max(int(2e9 / f), 3), 200)
            times = []
            for _ in range(9):
                t = time.perf_counter()
                for _ in range(reps):
                    torch.matmul(a, b)
                times.append((time.perf_counter() - t) / reps)
            s = sorted(times)[4]
            total_s += s
            total_f += f
            print(f"{name:<52} {s * 1e3:>8.3f} ms {f / s / 1e9:>7.1f} GFLOP/s")
    print(f"all products: {total_s * 1e3:.2f} ms, {total_f / total_s / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
