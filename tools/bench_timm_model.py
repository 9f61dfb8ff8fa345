#!/usr/bin/env python3
"""Times timm on the configurations of `deit-pipe bench model` (same thread count).

Pinned versions: torch 2.15.0, timm 1.0.31 (reference env /work/pyref; torch from
PyPI pulls about 6 GB of CUDA libraries, only the CPU is used here).

    python tools/bench_timm_model.py --model deit_tiny --img 224 --batch 8
    python tools/bench_timm_model.py --model deit_custom --img 32 --patch 4 --dim 192 \
        --depth 12 --heads 3 --batch 64
    python tools/bench_timm_model.py --model resnet_tiny --img 32 --batch 32 --num-classes 10

Forward: eval mode under torch.no_grad (the mean of both heads). Train step: train mode,
drop path 0.1, both heads (set_distilled_training), loss 0.5 * (CE(cls) + CE(dist)),
backward, AdamW (lr 5e-4, wd 0.05). Two warm-up iterations, then --iters timed ones.
Peak memory: the process's peak resident set (ru_maxrss).
"""
import argparse
import resource
import time

import torch
import torch.nn.functional as F
import timm

assert torch.__version__.startswith("2.15"), torch.__version__
assert timm.__version__ == "1.0.31", timm.__version__


def build(args):
    if args.model == "deit_custom":
        return timm.models.deit.VisionTransformerDistilled(
            img_size=args.img, patch_size=args.patch, embed_dim=args.dim, depth=args.depth,
            num_heads=args.heads, num_classes=args.num_classes, drop_path_rate=args.drop_path)
    if args.model in ("resnet_small", "resnet_tiny"):
        # Our CIFAR-style ResNet-18 (3x3 stride-1 stem of the stage width, no max pool),
        # full or quarter width, from timm's BasicBlock. timm's ResNet class always makes a
        # 64-wide stem for a plain stem, so the stages are assembled here.
        from timm.models.resnet import BasicBlock
        nn = torch.nn
        w = 64 if args.model == "resnet_small" else 16

        def stage(inp, out, stride):
            ds = None
            if stride != 1 or inp != out:
                ds = nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out))
            return nn.Sequential(BasicBlock(inp, out, stride, downsample=ds), BasicBlock(out, out))

        return nn.Sequential(
            nn.Conv2d(3, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            stage(w, w, 1), stage(w, 2 * w, 2), stage(2 * w, 4 * w, 2), stage(4 * w, 8 * w, 2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8 * w, args.num_classes))
    name = {"deit_tiny": "deit_tiny_distilled_patch16_224",
            "deit_small": "deit_small_distilled_patch16_224",
            "deit_base": "deit_base_distilled_patch16_224"}.get(args.model, args.model)
    kw = dict(num_classes=args.num_classes, drop_path_rate=args.drop_path)
    if name.startswith("deit"):
        kw["img_size"] = args.img
    return timm.create_model(name, pretrained=False, **kw)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="deit_tiny")
    ap.add_argument("--img", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--dim", type=int, default=192)
    ap.add_argument("--depth", type=int, default=12)
    ap.add_argument("--heads", type=int, default=3)
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("--drop-path", type=float, default=0.1)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    m = build(args)
    x = torch.randn(args.batch, 3, args.img, args.img)
    y = torch.randint(0, args.num_classes, (args.batch,))

    m.eval()
    with torch.no_grad():
        for _ in range(2):
            m(x)
        t = time.perf_counter()
        for _ in range(args.iters):
            m(x)
        fwd = args.iters * args.batch / (time.perf_counter() - t)

    m.train()
    if hasattr(m, "set_distilled_training"):
        m.set_distilled_training(True)
    opt = torch.optim.AdamW(m.parameters(), lr=5e-4, weight_decay=0.05)

    def step():
        out = m(x)
        if isinstance(out, tuple):
            loss = 0.5 * (F.cross_entropy(out[0], y) + F.cross_entropy(out[1], y))
        else:
            loss = F.cross_entropy(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    t = time.perf_counter()
    for _ in range(args.iters):
        step()
    train = args.iters * args.batch / (time.perf_counter() - t)
    params = sum(p.numel() for p in m.parameters())
    print(f"timm {args.model} img {args.img} batch {args.batch} threads {args.threads}, {params} params")
    print(f"forward (eval):             {fwd:8.1f} img/s")
    print(f"train step (fwd+bwd+AdamW): {train:8.1f} img/s")
    print(f"peak resident memory:       {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:8.0f} MiB")


if __name__ == "__main__":
    main()
