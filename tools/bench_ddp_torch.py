#!/usr/bin/env python3
"""PyTorch DDP (gloo) scaling on one CPU machine, the counterpart of
tools/bench_dist_scaling.sh: one process x 2 threads x global batch G against 2 DDP
processes x 1 thread x G/2, the same timm models (distilled DeiT, both heads trained,
drop path 0.1, AdamW lr 5e-4 wd 0.05), random inputs and labels (no data loading: the
ratio is what compares). img/s over --steps timed steps after 3 warm-up steps.

    python tools/bench_ddp_torch.py --model small     # 32 px, patch 8, dim 128, depth 4, G 64
    python tools/bench_ddp_torch.py --model tiny      # DeiT-Ti distilled 224, G 16

torch and timm from PyPI (any recent version; the versions are printed).
"""
import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
import timm


def build(model):
    if model == "small":
        return timm.models.deit.VisionTransformerDistilled(
            img_size=32, patch_size=8, embed_dim=128, depth=4, num_heads=2,
            num_classes=10, drop_path_rate=0.1), 32, 64
    return timm.create_model("deit_tiny_distilled_patch16_224", num_classes=10,
                             drop_path_rate=0.1), 224, 16


def run(rank, world, args, out):
    torch.manual_seed(0)
    torch.set_num_threads(2 // world)
    net, img, g = build(args.model)
    net.set_distilled_training(True)
    net.train()
    if world > 1:
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(args.port)
        dist.init_process_group("gloo", rank=rank, world_size=world)
        net = torch.nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.AdamW(net.parameters(), lr=5e-4, weight_decay=0.05)
    b = g // world
    x = torch.randn(b, 3, img, img)
    y = torch.randint(0, 10, (b,))

    def step():
        cls, dst = net(x)
        loss = 0.5 * (F.cross_entropy(cls, y) + F.cross_entropy(dst, y))
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    if world > 1:
        dist.barrier()
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    if world > 1:
        dist.barrier()
    s = time.perf_counter() - t
    if rank == 0:
        out.put(g * args.steps / s)
    if world > 1:
        dist.destroy_process_group()


def measure(world, args):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=run, args=(r, world, args, q)) for r in range(world)]
    for p in procs:
        p.start()
    v = q.get()
    for p in procs:
        p.join()
    return v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["small", "tiny"], default="small")
    ap.add_argument("--steps", type=int, default=0, help="default: 30 (small), 6 (tiny)")
    ap.add_argument("--port", type=int, default=29511)
    args = ap.parse_args()
    args.steps = args.steps or (30 if args.model == "small" else 6)
    one = measure(1, args)
    two = measure(2, args)
    print(f"torch {torch.__version__} timm {timm.__version__} {args.model}: 1 process x 2 "
          f"threads {one:.1f} img/s | 2 DDP (gloo) processes x 1 thread {two:.1f} img/s "
          f"({two / one:.2f})")


if __name__ == "__main__":
    main()
