#!/usr/bin/env python3
"""timm's DeiT training input pipeline as the baseline of `deit-pipe bench loader`.

DeiT's train transform (timm `create_transform(224, is_training=True,
auto_augment='rand-m9-mstd0.5-inc1', interpolation='bicubic', re_prob=0.25,
re_mode='pixel', re_count=1)`: RandomResizedCrop, flip, RandAugment, ToTensor, Normalize,
RandomErasing) in a PyTorch DataLoader with N workers over an ImageFolder of JPEGs, and
timm `Mixup(0.8, 1.0, label_smoothing=0.1)` applied to every batch in the main process,
as DeiT's engine.py does. Prints images/s over the timed batches.

Pinned versions (the reference environment): timm==1.0.31 Pillow==11.3.0 torch==2.15.0
torchvision==0.29.2. Note: torch from PyPI pulls ~6 GB of CUDA libraries; the CPU wheel
(https://download.pytorch.org/whl/cpu) is enough here.

    python tools/bench_timm_loader.py --data /tmp/bench-photos/train --workers 2 --batch 64
"""
import argparse
import time

import torch
import timm
from timm.data import create_transform
from timm.data.mixup import Mixup
from torchvision.datasets import ImageFolder


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="ImageFolder split directory (class/xxx.JPEG)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--images", type=int, default=0, help="stop after this many (0 = all)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed batches")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tf = create_transform(224, is_training=True, auto_augment="rand-m9-mstd0.5-inc1",
                          interpolation="bicubic", re_prob=0.25, re_mode="pixel", re_count=1)
    ds = ImageFolder(args.data, transform=tf)
    mix = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode="batch",
                label_smoothing=0.1, num_classes=len(ds.classes))
    dl = torch.utils.data.DataLoader(ds, batch_size=args.batch, shuffle=True,
                                     num_workers=args.workers, drop_last=True,
                                     persistent_workers=False)
    seen, t0 = 0, None
    for k, (x, y) in enumerate(dl):
        x, y = mix(x, y)
        if k + 1 == args.warmup:
            t0 = time.perf_counter()
        elif k + 1 > args.warmup:
            seen += x.shape[0]
        if args.images and seen >= args.images:
            break
    dt = time.perf_counter() - t0
    print(f"timm {timm.__version__}: {len(ds)} images, workers {args.workers}, batch {args.batch}")
    print(f"RESULT timm loader {seen / dt:.1f} img/s ({seen} images in {dt:.2f} s)")


if __name__ == "__main__":
    main()
