#!/usr/bin/env python3
"""Reference fixtures for trainer's losses, AdamW, lr schedule, EMA and gradient clipping.

Pinned versions (the fixtures were made with exactly these):
    torch 2.15.0, timm 1.0.31, numpy, safetensors
Installing torch from PyPI pulls about 6 GB of CUDA libraries (a `--no-deps` install
cannot import); everything here runs on the CPU.

Usage (from the repository root):
    /work/pyref/bin/python tools/make_optim_fixtures.py [OUT_DIR]
OUT_DIR defaults to trainer/tests/fixtures/optim. The Rust tests
(trainer/tests/{loss_reference,optim_reference,schedule}.rs) read these files and never
need Python.

What is made, and from which reference code:
- loss.safetensors + loss.json: timm's SoftTargetCrossEntropy, LabelSmoothingCrossEntropy,
  torch CrossEntropyLoss, timm's mixup_target, and DeiT's DistillationLoss formulas
  (facebookresearch/deit losses.py, re-stated below because the repo is not a package):
  values and gradients with respect to both heads' logits.
  The top-K soft case uses deit-pipe's documented approximation of a cached teacher
  (top-K logits + log-sum-exp of all logits; the tail mass spread uniformly over the other
  C-K classes), computed here independently in float64 probability space.
- adamw_wd.safetensors / adamw_nowd.safetensors + adamw.json: torch.optim.AdamW built by
  timm's create_optimizer_v2 (weight-decay groups from param_groups_weight_decay and the
  model's no_weight_decay()), several steps with given gradients and changing lr.
- deit_names.json: every parameter of timm's deit_tiny_distilled_patch16_224 with its
  shape and whether create_optimizer_v2 puts it in the weight-decay group.
- schedule.json: the lr used during each epoch when timm's create_scheduler is driven as
  DeiT's main.py drives it (lr_scheduler.step(epoch) at the end of each epoch), and the raw
  CosineLRScheduler._get_lr(t) values.
- ema.safetensors + ema.json: timm.utils.ModelEma after several updates.
- clip.safetensors + clip.json: torch.nn.utils.clip_grad_norm_ (timm dispatch_clip_grad
  mode 'norm').
"""

import argparse
import json
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
import timm
from timm.data.mixup import mixup_target
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler
from timm.utils import ModelEma
from safetensors.torch import save_file

EXPECTED = {"torch": "2.15", "timm": "1.0.31"}


def check_versions():
    if not torch.__version__.startswith(EXPECTED["torch"]) or timm.__version__ != EXPECTED["timm"]:
        sys.exit(f"need torch {EXPECTED['torch']} and timm {EXPECTED['timm']}, "
                 f"found torch {torch.__version__} and timm {timm.__version__}")


def save(tensors, path):
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, path)


def write_json(obj, path):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")


# ----------------------------------------------------------------------------- losses
def deit_distillation(base_criterion, outputs, outputs_kd, labels, teacher_outputs,
                      kind, alpha, tau):
    """DistillationLoss.forward of facebookresearch/deit losses.py (none / soft / hard)."""
    base_loss = base_criterion(outputs, labels)
    if kind == "none":
        return base_loss
    if kind == "soft":
        T = tau
        distillation_loss = F.kl_div(
            F.log_softmax(outputs_kd / T, dim=1),
            F.log_softmax(teacher_outputs / T, dim=1),
            reduction="sum",
            log_target=True,
        ) * (T * T) / outputs_kd.numel()
    elif kind == "hard":
        distillation_loss = F.cross_entropy(outputs_kd, teacher_outputs.argmax(dim=1))
    else:
        raise ValueError(kind)
    return base_loss * (1 - alpha) + distillation_loss * alpha


def topk_teacher_log_probs(topk_logits, topk_idx, lse, num_classes, tau):
    """deit-pipe's top-K approximation, in float64 probability space.

    p_i = exp(z_i - lse) for the K cached classes; the tail mass R = 1 - sum(p_topk) is
    spread uniformly over the other C-K classes; the distribution at temperature tau is
    softmax(log(p) / tau)."""
    b, k = topk_logits.shape
    p = torch.empty(b, num_classes, dtype=torch.float64)
    for r in range(b):
        top = torch.exp(topk_logits[r].double() - lse[r].double())
        tail = max(1.0 - top.sum().item(), 1e-20) / (num_classes - k)
        p[r].fill_(tail)
        p[r, topk_idx[r]] = top
    return F.log_softmax(torch.log(p) / tau, dim=1)


def make_losses(out):
    g = torch.Generator().manual_seed(7)
    B, C = 6, 10
    cls = (torch.randn(B, C, generator=g) * 3.0)
    dist = (torch.randn(B, C, generator=g) * 3.0)
    teacher = (torch.randn(B, C, generator=g) * 4.0)
    labels = torch.randint(0, C, (B,), generator=g)
    lam = 0.7
    smoothing = 0.1
    mixed = mixup_target(labels, C, lam=lam, smoothing=smoothing)

    tensors = {
        "cls": cls, "dist": dist, "teacher": teacher, "labels": labels,
        "mixed_target": mixed,
    }
    cases = {}

    def run(name, fn, heads):
        xs = [t.clone().requires_grad_(True) for t in heads]
        loss = fn(*xs)
        loss.backward()
        tensors[f"{name}.loss"] = loss.detach().reshape(())
        for i, x in enumerate(xs):
            # a head the loss does not use gets no gradient: store zeros
            tensors[f"{name}.grad{i}"] = x.grad if x.grad is not None else torch.zeros_like(x)
        cases[name] = {"loss": loss.item(), "heads": len(xs)}

    soft_ce = SoftTargetCrossEntropy()
    ls_ce = LabelSmoothingCrossEntropy(smoothing=0.1)
    ce = nn.CrossEntropyLoss()
    run("soft_target_ce", lambda x: soft_ce(x, mixed), [cls])
    run("label_smoothing_ce", lambda x: ls_ce(x, labels), [cls])
    run("cross_entropy", lambda x: ce(x, labels), [cls])
    run("distill_none", lambda x, y: deit_distillation(
        soft_ce, x, y, mixed, teacher, "none", 0.5, 1.0), [cls, dist])
    run("distill_hard", lambda x, y: deit_distillation(
        soft_ce, x, y, mixed, teacher, "hard", 0.5, 1.0), [cls, dist])
    run("distill_hard_ls", lambda x, y: deit_distillation(
        ls_ce, x, y, labels, teacher, "hard", 0.5, 1.0), [cls, dist])
    run("distill_soft_tau1", lambda x, y: deit_distillation(
        soft_ce, x, y, mixed, teacher, "soft", 0.5, 1.0), [cls, dist])
    run("distill_soft_tau3", lambda x, y: deit_distillation(
        soft_ce, x, y, mixed, teacher, "soft", 0.1, 3.0), [cls, dist])

    # Top-K cached teacher: C2 classes, K cached logits + LSE of all logits.
    C2, K = 20, 5
    s2 = torch.randn(B, C2, generator=g) * 2.0
    c2 = torch.randn(B, C2, generator=g) * 2.0
    t2 = torch.randn(B, C2, generator=g) * 3.0
    labels2 = torch.randint(0, C2, (B,), generator=g)
    mixed2 = mixup_target(labels2, C2, lam=0.4, smoothing=smoothing)
    topk_logits, topk_idx = t2.topk(K, dim=1)
    lse = torch.logsumexp(t2, dim=1)
    tensors.update({
        "topk.cls": c2, "topk.dist": s2, "topk.teacher_full": t2, "topk.labels": labels2,
        "topk.mixed_target": mixed2, "topk.logits": topk_logits, "topk.indices": topk_idx,
        "topk.lse": lse,
    })
    for tau, alpha in [(1.0, 0.5), (3.0, 0.5)]:
        name = f"distill_soft_topk_tau{int(tau)}"
        t_logp = topk_teacher_log_probs(topk_logits, topk_idx, lse, C2, tau).float()

        def fn(x, y, t_logp=t_logp, tau=tau, alpha=alpha):
            base = soft_ce(x, mixed2)
            kl = F.kl_div(F.log_softmax(y / tau, dim=1), t_logp, reduction="sum",
                          log_target=True) * (tau * tau) / y.numel()
            return base * (1 - alpha) + kl * alpha
        run(name, fn, [c2, s2])
        cases[name].update({"tau": tau, "alpha": alpha, "k": K, "num_classes": C2})
        # For information: the same loss with the full teacher logits.
        full = deit_distillation(soft_ce, c2, s2, mixed2, t2, "soft", alpha, tau)
        cases[name]["loss_full_teacher"] = full.item()

    meta = {
        "lam": lam, "smoothing": smoothing, "num_classes": C, "batch": B,
        "cases": cases,
        "alpha": {"distill_hard": 0.5, "distill_hard_ls": 0.5, "distill_soft_tau1": 0.5,
                  "distill_soft_tau3": 0.1, "distill_none": 0.5},
        "tau": {"distill_soft_tau1": 1.0, "distill_soft_tau3": 3.0},
    }
    save(tensors, os.path.join(out, "loss.safetensors"))
    write_json(meta, os.path.join(out, "loss.json"))


# ----------------------------------------------------------------------------- AdamW
class Tiny(nn.Module):
    """A few DeiT-named parameters of varied shapes."""

    def __init__(self):
        super().__init__()
        self.cls_token = nn.Parameter(torch.randn(1, 1, 4) * 0.02)
        self.dist_token = nn.Parameter(torch.randn(1, 1, 4) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 3, 4) * 0.02)
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, 4, 2, 2)
        blk = nn.Module()
        blk.norm1 = nn.LayerNorm(4)
        blk.attn = nn.Module()
        blk.attn.qkv = nn.Linear(4, 12)
        self.blocks = nn.ModuleList([blk])
        self.head = nn.Linear(4, 5)

    def no_weight_decay(self):
        return {"pos_embed", "cls_token", "dist_token"}


def make_adamw(out):
    lrs = [1e-3, 2e-3, 5e-4, 1e-3, 3e-3, 1e-4, 1e-3]
    meta = {"lrs": lrs, "betas": [0.9, 0.999], "eps": 1e-8, "runs": {}}
    for tag, wd in [("wd", 0.05), ("nowd", 0.0)]:
        torch.manual_seed(11)
        model = Tiny()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.5)
        opt = create_optimizer_v2(model, opt="adamw", lr=lrs[0], weight_decay=wd)
        assert isinstance(opt, torch.optim.AdamW)
        names = {id(p): n for n, p in model.named_parameters()}
        decay = sorted(names[id(p)] for grp in opt.param_groups if grp["weight_decay"] > 0
                       for p in grp["params"])
        tensors = {f"init.{n}": p.detach().clone() for n, p in model.named_parameters()}
        g = torch.Generator().manual_seed(3)
        for s, lr in enumerate(lrs, start=1):
            for grp in opt.param_groups:
                grp["lr"] = lr
            for n, p in model.named_parameters():
                # varied magnitudes, some tiny so eps matters
                scale = 1e-6 if (s == 4 and n.endswith("bias")) else 1.0
                p.grad = torch.randn(p.shape, generator=g) * scale
                tensors[f"grad.{s}.{n}"] = p.grad.clone()
            opt.step()
            for n, p in model.named_parameters():
                tensors[f"param.{s}.{n}"] = p.detach().clone()
        for n, p in model.named_parameters():
            st = opt.state[p]
            tensors[f"exp_avg.{n}"] = st["exp_avg"]
            tensors[f"exp_avg_sq.{n}"] = st["exp_avg_sq"]
            tensors[f"step.{n}"] = st["step"].reshape(()).float()
        meta["runs"][tag] = {
            "weight_decay": wd,
            "names": [n for n, _ in model.named_parameters()],
            "decay_names": decay,
            "steps": len(lrs),
        }
        save(tensors, os.path.join(out, f"adamw_{tag}.safetensors"))
    write_json(meta, os.path.join(out, "adamw.json"))


def make_deit_names(out):
    model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False,
                              num_classes=10)
    opt = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05)
    decay_ids = {id(p) for grp in opt.param_groups if grp["weight_decay"] > 0
                 for p in grp["params"]}
    params = [{"name": n, "shape": list(p.shape), "decay": id(p) in decay_ids}
              for n, p in model.named_parameters()]
    write_json({"model": "deit_tiny_distilled_patch16_224", "weight_decay": 0.05,
                "params": params}, os.path.join(out, "deit_names.json"))


# ----------------------------------------------------------------------------- schedule
def deit_args(epochs, lr, batch_size, world_size, warmup_epochs=5):
    """The scheduler-relevant defaults of DeiT main.py's argument parser."""
    return argparse.Namespace(
        sched="cosine", epochs=epochs, lr=lr * batch_size * world_size / 512.0,
        lr_noise=None, lr_noise_pct=0.67, lr_noise_std=1.0, warmup_lr=1e-6, min_lr=1e-5,
        decay_epochs=30, warmup_epochs=warmup_epochs, cooldown_epochs=10,
        patience_epochs=10, decay_rate=0.1, seed=0, opt="adamw", weight_decay=0.05,
        momentum=0.9, opt_eps=1e-8, opt_betas=None,
    )


def make_schedule(out):
    runs = []
    for epochs, bs, world, warm in [(300, 128, 8, 5), (10, 64, 1, 5), (30, 256, 1, 3)]:
        args = deit_args(epochs, 5e-4, bs, world, warm)
        model = nn.Linear(2, 2)
        optimizer = create_optimizer_v2(model, opt="adamw", lr=args.lr, weight_decay=0.05)
        lr_scheduler, num_epochs = create_scheduler(args, optimizer)
        used = []
        for epoch in range(0, args.epochs):  # main.py: for epoch in range(start, args.epochs)
            used.append(optimizer.param_groups[0]["lr"])  # lr during train_one_epoch
            lr_scheduler.step(epoch)
        raw = [lr_scheduler._get_lr(t)[0] for t in range(epochs + 15)]
        runs.append({
            "epochs": epochs, "batch_size": bs, "world_size": world, "warmup_epochs": warm,
            "scaled_lr": args.lr, "warmup_lr": args.warmup_lr, "min_lr": args.min_lr,
            "num_epochs_returned": num_epochs, "lr_per_epoch": used, "get_lr": raw,
        })
    write_json({"runs": runs}, os.path.join(out, "schedule.json"))


# ----------------------------------------------------------------------------- EMA
def make_ema(out):
    tensors = {}
    meta = {"decays": [0.99996, 0.9], "updates": 4}
    for decay in meta["decays"]:
        torch.manual_seed(5)
        model = Tiny()
        ema = ModelEma(model, decay=decay)
        g = torch.Generator().manual_seed(9)
        for n, v in model.state_dict().items():
            tensors[f"{decay}.init.{n}"] = v.clone()
        for u in range(1, meta["updates"] + 1):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn(p.shape, generator=g) * 0.5)
            for n, v in model.state_dict().items():
                tensors[f"{decay}.model.{u}.{n}"] = v.clone()
            ema.update(model)
            for n, v in ema.ema.state_dict().items():
                tensors[f"{decay}.ema.{u}.{n}"] = v.clone()
    meta["names"] = list(Tiny().state_dict().keys())
    save(tensors, os.path.join(out, "ema.safetensors"))
    write_json(meta, os.path.join(out, "ema.json"))


# ----------------------------------------------------------------------------- clipping
def make_clip(out):
    g = torch.Generator().manual_seed(21)
    shapes = {"a.weight": (8, 5), "a.bias": (8,), "b.weight": (3, 4, 2), "c": (1,)}
    grads = {n: torch.randn(s, generator=g) * 0.7 for n, s in shapes.items()}
    tensors = {f"grad.{n}": v for n, v in grads.items()}
    cases = {}
    for tag, max_norm in [("clipped", 1.0), ("unclipped", 100.0)]:
        params = {n: nn.Parameter(torch.zeros(s)) for n, s in shapes.items()}
        for n, p in params.items():
            p.grad = grads[n].clone()
        total = torch.nn.utils.clip_grad_norm_(list(params.values()), max_norm)
        tensors[f"{tag}.total_norm"] = total.reshape(())
        for n, p in params.items():
            tensors[f"{tag}.{n}"] = p.grad.clone()
        cases[tag] = {"max_norm": max_norm, "total_norm": total.item()}
    save(tensors, os.path.join(out, "clip.safetensors"))
    write_json({"names": list(shapes), "cases": cases}, os.path.join(out, "clip.json"))


def main():
    check_versions()
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(__file__), "..", "trainer", "tests", "fixtures", "optim")
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(1)
    make_losses(out)
    make_adamw(out)
    make_deit_names(out)
    make_schedule(out)
    make_ema(out)
    make_clip(out)
    print("fixtures written to", os.path.abspath(out))


if __name__ == "__main__":
    main()
