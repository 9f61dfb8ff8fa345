#!/usr/bin/env python3
"""Train a timm DeiT on deit-pipe shards with hard distillation from a teacher cache.

The data path is deit-pipe's: `deit_pipe.Loader` yields the train recipe's views (the
same bytes `deit-pipe train` would use), their mixed, smoothed targets and the cached
teacher's hard labels of exactly those views. The loss is DeiT's DistillationLoss with
`distillation_type='hard'`:

    base    = SoftTargetCrossEntropy(cls_head, mixed_targets)      (Mixup/CutMix on)
    distill = CrossEntropy(dist_head, argmax teacher logits)        (no smoothing)
    loss    = (1 - alpha) * base + alpha * distill,  alpha = 0.5

    torchrun --nproc_per_node 8 train_deit_torch.py --data shards \
        --config configs/deit_small.toml --teacher-cache cache --model deit_small_distilled_patch16_224

Rank and world come from torchrun's environment (each rank gets the pairs `deit-pipe
train` gives it); `--steps N` stops each epoch after N batches (a smoke run).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
import timm
import timm.optim

import deit_pipe


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--teacher-cache", default=None, help="cache dir (None: no distillation)")
    ap.add_argument("--model", default="deit_tiny_distilled_patch16_224")
    ap.add_argument("--img-size", type=int, default=None, help="default: the config's input size")
    ap.add_argument("--patch-size", type=int, default=None, help="default: the model's")
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--start-epoch", type=int, default=0)
    ap.add_argument("--steps", type=int, default=0, help="batches per epoch (0: all)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=5e-4, help="per 512 images (DeiT's scaling)")
    ap.add_argument("--warmup-epochs", type=int, default=5)
    ap.add_argument("--alpha", type=float, default=0.5, help="distillation weight")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        torch.distributed.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
        if args.device.startswith("cuda"):
            args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    loader = deit_pipe.Loader(
        args.data, split="train", config=args.config, batch_size=args.batch_size,
        seed=args.seed, teacher_cache=args.teacher_cache, rank=None, world=None,
        threads=args.threads,
    )
    kw = dict(num_classes=loader.num_classes, img_size=args.img_size or loader.image_size)
    if args.patch_size:
        kw["patch_size"] = args.patch_size
    model = timm.create_model(args.model, pretrained=False, **kw).to(args.device)
    distilled = hasattr(model, "set_distilled_training")
    if distilled:
        model.set_distilled_training(True)  # train mode returns (cls, dist) heads
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    lr = args.lr * loader.batch_size * world / 512
    opt = timm.optim.create_optimizer_v2(model, "adamw", lr=lr, weight_decay=0.05)

    for epoch in range(args.start_epoch, args.epochs):
        # DeiT's per-epoch cosine with linear warmup from 1e-6 to the floor 1e-5.
        if epoch < args.warmup_epochs:
            e_lr = 1e-6 + (lr - 1e-6) * epoch / args.warmup_epochs
        else:
            t = (epoch - args.warmup_epochs) / max(1, args.epochs - args.warmup_epochs)
            e_lr = 1e-5 + 0.5 * (lr - 1e-5) * (1 + math.cos(math.pi * t))
        for g in opt.param_groups:
            g["lr"] = e_lr
        loader.set_epoch(epoch)
        model.train()
        t0, seen = time.time(), 0
        for step, batch in enumerate(loader):
            if args.steps and step >= args.steps:
                break
            x = torch.from_numpy(batch["images"]).to(args.device, non_blocking=True)
            y = torch.from_numpy(batch["targets"]).to(args.device, non_blocking=True)
            out = model(x)
            cls, dist = out if isinstance(out, tuple) else (out, None)
            base = torch.sum(-y * F.log_softmax(cls, dim=-1), dim=-1).mean()
            if args.teacher_cache and dist is not None:
                t = torch.from_numpy(batch["teacher_labels"]).to(args.device)
                loss = (1 - args.alpha) * base + args.alpha * F.cross_entropy(dist, t)
            elif dist is not None:
                # No teacher: both heads learn from the labels (as deit-pipe train does).
                loss = 0.5 * (base + torch.sum(-y * F.log_softmax(dist, -1), -1).mean())
            else:
                loss = base
            if not torch.isfinite(loss):
                print(f"non-finite loss at epoch {epoch} step {step}", file=sys.stderr)
                return 1
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += x.shape[0]
            print(f"epoch {epoch} step {step} loss {loss.item():.4f} lr {e_lr:.2e} "
                  f"{seen / (time.time() - t0):.1f} img/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
