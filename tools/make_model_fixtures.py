#!/usr/bin/env python3
"""Reference fixtures for the trainer's models (DeiT, ResNet, RegNetY), made with timm.

Pinned versions: torch 2.15.0, timm 1.0.31, safetensors (any 0.4+), numpy 2.x.
Note: torch from PyPI pulls about 6 GB of CUDA libraries; the project's reference
environment is /work/pyref (see DEVELOPERS.md). Only the CPU is used here.

    python tools/make_model_fixtures.py                  # small fixtures -> trainer/tests/fixtures/models/
    python tools/make_model_fixtures.py --full DIR       # full-size DeiT-Ti distilled (not committed)
                                                         # checked by: DEIT_PIPE_FULL_FIXTURES=DIR
                                                         # cargo test --release -p trainer -- --ignored

Every model gets random weights (timm's init, then perturbed so biases, norms and
running statistics are not trivial), a random input, and timm's outputs computed in
float64 (so the fixture is the exact function, and the Rust fp32 result is compared
with a relative tolerance). Files per model NAME:
  NAME.safetensors      weights with timm key names (float32, what the Rust code loads)
  NAME.io.safetensors   input `x`, outputs (`logits`, ...), gradients `grad.<key>`
models.json lists each fixture's spec, plus the timm stage layout and parameter
counts of the named ConvNets and DeiTs (computed on the meta device).
"""
import argparse
import json
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
import timm
from timm.models.regnet import RegNet, RegNetCfg
from timm.models.resnet import ResNet, BasicBlock, Bottleneck
from timm.layers import resample_abs_pos_embed
from safetensors.torch import save_file

assert torch.__version__.startswith("2.15"), torch.__version__
assert timm.__version__ == "1.0.31", timm.__version__

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "trainer", "tests", "fixtures", "models")


def perturb(model, gen):
    """Make every float tensor non-trivial while keeping the model well conditioned."""
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=gen, dtype=t.dtype)
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif name.endswith("running_mean"):
                t.copy_(0.1 * noise)
            elif name.endswith(("cls_token", "dist_token", "pos_embed")):
                t.copy_(0.02 * noise)
            elif t.dim() <= 1:
                t.add_(0.1 * noise)
            # weights keep timm's init


STATE_DICT_KEYS = {}


def save_weights(model, name, pth=False):
    STATE_DICT_KEYS[name] = sorted(model.state_dict().keys())
    sd = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()
          if not k.endswith("num_batches_tracked")}
    save_file(sd, os.path.join(OUT, f"{name}.safetensors"))
    if pth:
        # the official DeiT checkpoint layout: {'model': state_dict}
        torch.save({"model": model.state_dict()}, os.path.join(OUT, f"{name}.pth"))


def save_io(name, tensors):
    save_file({k: v.detach().float().contiguous() for k, v in tensors.items()},
              os.path.join(OUT, f"{name}.io.safetensors"))


def deit(distilled, img, patch, dim, depth, heads, classes):
    cls = timm.models.deit.VisionTransformerDistilled if distilled else timm.models.vision_transformer.VisionTransformer
    return cls(img_size=img, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads,
               num_classes=classes, mlp_ratio=4, qkv_bias=True, norm_layer=None)


def small_deit_fixtures(gen, specs):
    # Distilled: eval logits, train logits of both heads, and one step's gradients.
    name = "deit_distilled_small"
    cfg = dict(img=32, patch=8, dim=48, depth=2, heads=3, classes=10)
    m = deit(True, cfg["img"], cfg["patch"], cfg["dim"], cfg["depth"], cfg["heads"], cfg["classes"])
    perturb(m, gen)
    save_weights(m, name)
    m = m.double()
    x = torch.randn(4, 3, 32, 32, generator=gen, dtype=torch.float64)
    y = torch.tensor([1, 3, 5, 7])
    yd = torch.tensor([2, 3, 9, 0])
    m.eval()
    logits = m(x)
    m.train()
    m.set_distilled_training(True)
    cls_out, dist_out = m(x)
    loss = 0.5 * F.cross_entropy(cls_out, y) + 0.5 * F.cross_entropy(dist_out, yd)
    loss.backward()
    io = {"x": x, "logits": logits, "train_cls": cls_out, "train_dist": dist_out,
          "y": y.double(), "y_dist": yd.double(), "loss": loss.reshape(1)}
    for k, p in m.named_parameters():
        io[f"grad.{k}"] = p.grad
    save_io(name, io)
    specs[name] = dict(kind="deit", distilled=True, **cfg)

    name = "deit_plain_small"
    cfg = dict(img=32, patch=8, dim=48, depth=2, heads=3, classes=10)
    m = deit(False, cfg["img"], cfg["patch"], cfg["dim"], cfg["depth"], cfg["heads"], cfg["classes"])
    perturb(m, gen)
    save_weights(m, name, pth=True)
    m = m.double().eval()
    x = torch.randn(2, 3, 32, 32, generator=gen, dtype=torch.float64)
    save_io(name, {"x": x, "logits": m(x)})
    specs[name] = dict(kind="deit", distilled=False, **cfg)

    # pos_embed resampling as timm does when loading at another image size.
    pe = torch.randn(1, 2 + 16, 8, generator=gen)
    save_io("pos_embed_resample", {
        "pos_embed": pe,
        "up_6x6": resample_abs_pos_embed(pe, new_size=[6, 6], num_prefix_tokens=2),
        "down_3x3": resample_abs_pos_embed(pe, new_size=[3, 3], num_prefix_tokens=2),
    })


def resnet_fixtures(gen, specs):
    cases = [
        ("resnet_basic_small", BasicBlock, [2, 1, 1, 1], (8, 16, 32, 64), 64, False),
        ("resnet_bottleneck_small", Bottleneck, [1, 2, 1, 1], (8, 16, 32, 16), 64, False),
        ("resnet_cifar_small", BasicBlock, [1, 1, 1, 1], (16, 32, 64, 128), 32, True),
    ]
    for name, block, layers, channels, img, cifar in cases:
        torch.manual_seed(0)  # nn.Conv2d's default init in the cifar stem
        m = ResNet(block=block, layers=layers, channels=channels, num_classes=10)
        if cifar:
            # our `resnet_small`: 3x3 stride-1 stem, no max pool (CIFAR-style), timm key names
            m.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            m.maxpool = nn.Identity()
        perturb(m, gen)
        save_weights(m, name)
        m = m.double().eval()
        x = torch.randn(2, 3, img, img, generator=gen, dtype=torch.float64)
        io = {"x": x, "logits": m(x)}
        if cifar:
            # train mode: batch statistics, running stats updated with momentum 0.1
            xt = torch.randn(4, 3, img, img, generator=gen, dtype=torch.float64)
            m.train()
            io["x_train"] = xt
            io["train_logits"] = m(xt)
            io["bn1.running_mean_after"] = m.bn1.running_mean.clone()
            io["bn1.running_var_after"] = m.bn1.running_var.clone()
            # One step's gradients (train-mode BatchNorm, convolutions, shortcut), fixed
            # labels so no random draw shifts the fixtures made after this one.
            y = torch.tensor([1, 3, 5, 7])
            loss = F.cross_entropy(io["train_logits"], y)
            loss.backward()
            io["y_train"] = y.double()
            io["train_loss"] = loss.reshape(1)
            for k, p in m.named_parameters():
                io[f"grad.{k}"] = p.grad
        save_io(name, io)
        specs[name] = dict(kind="resnet", block="basic" if block is BasicBlock else "bottleneck",
                           layers=layers, channels=list(channels), img=img, cifar_stem=cifar, classes=10)


def regnet_fixtures(gen, specs):
    name = "regnety_tiny"
    cfg = dict(w0=8, wa=8.0, wm=1.5, group_size=8, depth=6, se_ratio=0.25, stem_width=8)
    m = RegNet(RegNetCfg(**cfg), num_classes=10)
    perturb(m, gen)
    save_weights(m, name)
    m = m.double().eval()
    x = torch.randn(2, 3, 64, 64, generator=gen, dtype=torch.float64)
    save_io(name, {"x": x, "logits": m(x)})
    specs[name] = dict(kind="regnet", img=64, classes=10, **cfg)


def named_model_facts():
    """Stage layouts and parameter counts of the named models, from timm on the meta device."""
    facts = {}
    names = ["resnet18", "resnet50", "deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224",
             "deit_small_distilled_patch16_224", "deit_base_distilled_patch16_224"]
    names += [f"regnety_{s}" for s in ["002", "004", "006", "008", "016", "032", "040", "064",
                                        "080", "120", "160", "320"]]
    for n in names:
        with torch.device("meta"):
            m = timm.create_model(n, pretrained=False)
        entry = {"params": sum(p.numel() for p in m.parameters())}
        if n.startswith("regnety"):
            stages = []
            for i in range(1, 5):
                s = getattr(m, f"s{i}")
                blocks = list(s.children())
                b1 = blocks[0]
                stages.append(dict(width=b1.conv3.conv.out_channels, depth=len(blocks),
                                   groups=b1.conv2.conv.groups,
                                   bottleneck=b1.conv2.conv.out_channels,
                                   se=b1.se.fc1.out_channels))
            entry["stages"] = stages
        facts[n] = entry
    return facts


def full_deit(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    gen = torch.Generator().manual_seed(7)
    m = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False)
    perturb(m, gen)
    sd = {k: v.detach().float().contiguous() for k, v in m.state_dict().items()}
    save_file(sd, os.path.join(out_dir, "deit_tiny_distilled_patch16_224.safetensors"))
    torch.save({"model": m.state_dict()}, os.path.join(out_dir, "deit_tiny_distilled_patch16_224.pth"))
    m = m.double().eval()
    x = torch.randn(2, 3, 224, 224, generator=gen, dtype=torch.float64)
    save_file({"x": x.float(), "logits": m(x).detach().float()},
              os.path.join(out_dir, "deit_tiny_distilled_patch16_224.io.safetensors"))
    print("wrote", out_dir)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", metavar="DIR", help="write the full-size DeiT-Ti distilled fixture to DIR")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.full:
        full_deit(args.full)
        return
    os.makedirs(OUT, exist_ok=True)
    gen = torch.Generator().manual_seed(1234)
    torch.manual_seed(1234)  # timm's own init draws from the global generator
    specs = {}
    small_deit_fixtures(gen, specs)
    resnet_fixtures(gen, specs)
    regnet_fixtures(gen, specs)
    for k, v in STATE_DICT_KEYS.items():
        specs[k]["state_dict_keys"] = v
    doc = {"torch": torch.__version__, "timm": timm.__version__, "fixtures": specs,
           "named": named_model_facts()}
    with open(os.path.join(OUT, "models.json"), "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
