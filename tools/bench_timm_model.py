#!/usr/bin/env python3
"""Times timm on the configurations of `deit-pipe bench model` (same thread count).

Pinned versions: torch 2.15.0, timm 1.0.31 (reference env /work/pyref; torch from
PyPI pulls about 6 GB of CUDA libraries, only the CPU is used here). On a GPU machine
(`--device cuda`) another torch/timm version only prints a warning.

    python tools/bench_timm_model.py --model deit_tiny --img 224 --batch 8
    python tools/bench_timm_model.py --model deit_custom --img 32 --patch 4 --dim 192 \
        --depth 12 --heads 3 --batch 64
    python tools/bench_timm_model.py --model resnet_tiny --img 32 --batch 32 --num-classes 10
    python tools/bench_timm_model.py --device cuda --model deit_tiny --img 224 --batch 128 --amp
    python tools/bench_timm_model.py --model deit_tiny --img 224 --batch 8 --amp

The CPU header line names torch's CPU capability (the widest ISA its kernels took) and
the host (CPU model and ISA flags, as `deit-pipe bench` prints them), so figures from
different hosts are not compared blindly. --amp on the CPU is torch's CPU autocast
(bfloat16), the peer of `deit-pipe bench model --precision bf16`.

Forward: eval mode under torch.no_grad (the mean of both heads). Train step: train mode,
drop path 0.1, both heads (set_distilled_training), loss 0.5 * (CE(cls) + CE(dist)),
backward, AdamW (lr 5e-4, wd 0.05). Two warm-up iterations, then --iters timed ones.
Peak memory: the process's peak resident set (ru_maxrss) on the CPU; on CUDA
torch.cuda.max_memory_allocated() (tensors only, not the caching allocator's reserve).

CUDA: --device cuda runs on the GPU, with torch.cuda.synchronize() before every timer
read. --amp wraps the forward passes (and the loss) in torch.autocast: --amp-dtype
bfloat16 (default; what `deit-pipe --precision bf16` does: bf16 matrix products, f32
weights and optimizer), or float16 with a GradScaler (as the official DeiT main.py trains).
TF32 stays off (torch's default for matmul), so fp32 is true fp32 as in candle.
"""
import argparse
import platform
import resource
import time

import torch
import torch.nn.functional as F
import timm

PINNED = torch.__version__.startswith("2.15") and timm.__version__ == "1.0.31"


def host_line():
    """CPU model and the SIMD flags that pick kernels, from /proc/cpuinfo (Linux)."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
              "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")
    return f"{model} [{' '.join(f for f in wanted if f in flags)}]"


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
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--amp", action="store_true",
                    help="torch.autocast mixed precision (CUDA, or the CPU with bfloat16)")
    ap.add_argument("--amp-dtype", choices=("bfloat16", "float16"), default="bfloat16",
                    help="autocast dtype; float16 adds a GradScaler")
    args = ap.parse_args()
    if args.device == "cpu":
        assert PINNED, (torch.__version__, timm.__version__)
    elif not PINNED:
        print(f"warning: torch {torch.__version__}, timm {timm.__version__} "
              "(pinned: 2.15.x, 1.0.31)")
    if args.amp and args.device == "cpu" and args.amp_dtype != "bfloat16":
        ap.error("--amp on the CPU takes --amp-dtype bfloat16 (CPU autocast's dtype)")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device")
    cuda = args.device == "cuda"
    dev = torch.device(args.device)
    amp_dtype = getattr(torch, args.amp_dtype)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    m = build(args).to(dev)
    x = torch.randn(args.batch, 3, args.img, args.img).to(dev)
    y = torch.randint(0, args.num_classes, (args.batch,)).to(dev)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def autocast():
        return torch.autocast(args.device, dtype=amp_dtype, enabled=args.amp)

    m.eval()
    with torch.no_grad():
        for _ in range(2):
            with autocast():
                m(x)
        sync()
        t = time.perf_counter()
        for _ in range(args.iters):
            with autocast():
                m(x)
        sync()
        fwd = args.iters * args.batch / (time.perf_counter() - t)

    m.train()
    if hasattr(m, "set_distilled_training"):
        m.set_distilled_training(True)
    opt = torch.optim.AdamW(m.parameters(), lr=5e-4, weight_decay=0.05)
    # fp16 needs loss scaling (DeiT's NativeScaler); bf16 and fp32 do not.
    scaler = torch.amp.GradScaler("cuda") if args.amp and amp_dtype == torch.float16 else None

    def step():
        with autocast():
            out = m(x)
            if isinstance(out, tuple):
                loss = 0.5 * (F.cross_entropy(out[0], y) + F.cross_entropy(out[1], y))
            else:
                loss = F.cross_entropy(out, y)
        opt.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

    for _ in range(2):
        step()
    sync()
    t = time.perf_counter()
    for _ in range(args.iters):
        step()
    sync()
    train = args.iters * args.batch / (time.perf_counter() - t)
    params = sum(p.numel() for p in m.parameters())
    if cuda:
        amp = f", amp {args.amp_dtype}" if args.amp else ", fp32"
        print(f"timm {args.model} img {args.img} batch {args.batch} device cuda "
              f"({torch.cuda.get_device_name()}){amp}, {params} params")
    else:
        amp = f", amp {args.amp_dtype}" if args.amp else ", fp32"
        print(f"timm {args.model} img {args.img} batch {args.batch} threads {args.threads}"
              f"{amp}, cpu capability {torch.backends.cpu.get_cpu_capability()}, "
              f"{params} params")
        print(f"host: {host_line()}")
    print(f"forward (eval):             {fwd:8.1f} img/s")
    print(f"train step (fwd+bwd+AdamW): {train:8.1f} img/s")
    if cuda:
        print(f"peak device memory:         {torch.cuda.max_memory_allocated() / 2**20:8.0f} MiB")
    else:
        print(f"peak resident memory:       {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:8.0f} MiB")


if __name__ == "__main__":
    main()
