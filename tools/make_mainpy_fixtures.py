#!/usr/bin/env python3
"""Fixtures for DeiT main.py compatibility: `train --finetune` and `train --resume FILE.pth`.

Pinned versions (the fixtures were made with exactly these):
    torch 2.15.0, timm 1.0.31, safetensors
Installing torch from PyPI pulls about 6 GB of CUDA libraries; everything here runs on
the CPU.

Usage (from the repository root):
    python tools/make_mainpy_fixtures.py [OUT_DIR]
OUT_DIR defaults to trainer/tests/fixtures/mainpy. The Rust tests
(trainer/tests/mainpy_compat.rs, tests/timm_habits_cli.rs) read these files and never
need Python.

What is made:
- pos_embed_interp.safetensors: inputs and outputs of main.py's --finetune position
  embedding interpolation, i.e. torch.nn.functional.interpolate(pos_tokens,
  size=(new, new), mode='bicubic', align_corners=False) on the patch grid with the extra
  (class, distillation) token rows kept; cases `up` (4x4 -> 7x7, 2 extra tokens),
  `down` (6x6 -> 4x4, 1 extra token) and `same` (5x5 -> 5x5).
- checkpoint.pth: what main.py saves as output_dir/checkpoint.pth after epoch 1 of a tiny
  distilled DeiT (img 32, patch 8, width 24, depth 1, 2 heads, 4 classes): 'model',
  'optimizer' (torch.optim.AdamW from timm's create_optimizer_v2 as main.py builds it:
  weight-decay groups, state per parameter index), 'lr_scheduler' (timm
  CosineLRScheduler), 'epoch', 'model_ema' (timm ModelEmaV2), 'scaler' (GradScaler state)
  and 'args' (an argparse.Namespace), saved with torch.save like main.py.
- checkpoint_expected.safetensors: the same optimizer state keyed by parameter name
  (`NAME.exp_avg`, `NAME.exp_avg_sq`, `NAME.step`), and `ema.NAME` for the EMA weights,
  to check that the index -> name mapping is right.
"""

import argparse
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file


def interp_case(extra, old, new, dim, gen):
    pe = torch.randn(1, extra + old * old, dim, generator=gen)
    extra_tokens = pe[:, :extra]
    pos_tokens = pe[:, extra:].reshape(-1, old, old, dim).permute(0, 3, 1, 2)
    pos_tokens = F.interpolate(pos_tokens, size=(new, new), mode="bicubic", align_corners=False)
    pos_tokens = pos_tokens.permute(0, 2, 3, 1).flatten(1, 2)
    return pe, torch.cat((extra_tokens, pos_tokens), dim=1)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "trainer/tests/fixtures/mainpy"
    os.makedirs(out, exist_ok=True)
    gen = torch.Generator().manual_seed(0)

    tensors = {}
    for name, (extra, old, new, dim) in {
        "up": (2, 4, 7, 6),
        "down": (1, 6, 4, 5),
        "same": (2, 5, 5, 3),
    }.items():
        src, dst = interp_case(extra, old, new, dim, gen)
        tensors[f"{name}.in"] = src.contiguous()
        tensors[f"{name}.out"] = dst.contiguous()
    save_file(tensors, os.path.join(out, "pos_embed_interp.safetensors"))

    import timm
    from timm.models.deit import VisionTransformerDistilled
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler
    from timm.utils import ModelEmaV2, get_state_dict

    torch.manual_seed(0)
    model = VisionTransformerDistilled(
        img_size=32, patch_size=8, embed_dim=24, depth=1, num_heads=2, num_classes=4
    )
    # main.py: create_optimizer(args, model) -> create_optimizer_v2(model, 'adamw', ...)
    opt = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, eps=1e-8)
    sched = CosineLRScheduler(
        opt, t_initial=10, lr_min=1e-5, warmup_lr_init=1e-6, warmup_t=1, cycle_limit=1, t_in_epochs=True
    )
    ema = ModelEmaV2(model, decay=0.9)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    model.train()
    model.set_distilled_training(True)
    for step in range(3):
        x = torch.randn(2, 3, 32, 32, generator=gen)
        y = torch.tensor([step % 4, (step + 1) % 4])
        cls, dist = model(x)
        loss = F.cross_entropy(cls, y) + F.cross_entropy(dist, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update(model)
    sched.step(1)
    args = argparse.Namespace(
        model="deit_tiny_distilled_patch16_224", input_size=32, epochs=10, lr=1e-3,
        opt="adamw", opt_betas=None, opt_eps=1e-8, weight_decay=0.05, sched="cosine",
        output_dir="out", resume="", finetune="", model_ema=True, distillation_type="none",
    )
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "lr_scheduler": sched.state_dict(),
            "epoch": 1,
            "model_ema": get_state_dict(ema),
            "scaler": scaler.state_dict(),
            "args": args,
        },
        os.path.join(out, "checkpoint.pth"),
    )

    expected = {}
    by_param = {p: n for n, p in model.named_parameters()}
    for p, st in opt.state.items():
        name = by_param[p]
        expected[f"{name}.exp_avg"] = st["exp_avg"].contiguous()
        expected[f"{name}.exp_avg_sq"] = st["exp_avg_sq"].contiguous()
        expected[f"{name}.step"] = torch.tensor(float(st["step"]))
    for n, t in get_state_dict(ema).items():
        expected[f"ema.{n}"] = t.contiguous()
    save_file(expected, os.path.join(out, "checkpoint_expected.safetensors"))
    print(f"wrote {out} (timm {timm.__version__}, torch {torch.__version__})")


if __name__ == "__main__":
    main()
