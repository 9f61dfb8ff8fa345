#!/usr/bin/env python3
"""PyTorch/timm baseline on a `deit-pipe synth` folder: how far a ConvNet teacher and a
small DeiT get with a plain recipe, and what online distillation from that teacher does.
It is the independent check behind the quickstart's findings (README, "The claim"): it
tells whether the synth task is learnable by each architecture at this budget, outside
our own stack.

Pinned versions: torch 2.15.0, torchvision 0.29, timm 1.0.31 (reference env /work/pyref;
torch from PyPI pulls about 6 GB of CUDA libraries, only the CPU is used here).

    deit-pipe synth --out /tmp/syn --classes 10 --train-per-class 100 --val-per-class 50
    # the teacher: the quarter-width CIFAR ResNet-18 (our `resnet_tiny`)
    python tools/synth_torch_baseline.py /tmp/syn --model resnet_tiny --epochs 16 \
        --save /tmp/teacher.pt
    # the student, without and with distillation from it
    python tools/synth_torch_baseline.py /tmp/syn --model deit --patch 8 --epochs 30
    python tools/synth_torch_baseline.py /tmp/syn --model deit --patch 8 --epochs 30 \
        --teacher /tmp/teacher.pt --distillation hard

Data: images are downscaled to a longest side of 40 px (as `deit-pipe shard --max-side
40`), then RandomResizedCrop(32, scale 0.35-1, bicubic) and flip for training, resize to
37 and centre-crop 32 for validation (crop_pct 0.875), ImageNet normalization. Recipe:
AdamW (lr 1e-3, wd 0.05), batch 32, one warm-up epoch then cosine to 1e-5, no
RandAugment, Mixup, CutMix or erasing (lighter than the quickstart's DeiT recipe).
Losses: none = mean CE of both DeiT heads; hard = 0.5 CE(cls, y) + 0.5 CE(dist, teacher
argmax); soft = 0.5 CE(cls, y) + 0.5 KL(teacher || dist) at tau 1 (REFERENCE.md). The
teacher sees the student's exact view. Prints train loss and val top-1 (mean of both
heads in eval) per epoch.
"""
import argparse
import os
import time

import numpy as np
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image

assert torch.__version__.startswith("2.15"), torch.__version__
assert timm.__version__ == "1.0.31", timm.__version__


def load(root, split, max_side=40):
    classes = sorted(os.listdir(os.path.join(root, split)))
    images, labels = [], []
    for label, name in enumerate(classes):
        folder = os.path.join(root, split, name)
        for file in sorted(os.listdir(folder)):
            im = Image.open(os.path.join(folder, file)).convert("RGB")
            s = max_side / max(im.size)
            if s < 1:
                size = (max(1, round(im.size[0] * s)), max(1, round(im.size[1] * s)))
                im = im.resize(size, Image.BICUBIC)
            images.append(im)
            labels.append(label)
    return images, labels, len(classes)


class BasicBlock(nn.Module):
    """CIFAR ResNet block; the last BN of the branch keeps weight 1 (no zero-init)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if cin != cout or stride != 1:
            self.short = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        y = torch.relu(self.b1(self.c1(x)))
        return torch.relu(self.b2(self.c2(y)) + self.short(x))


def resnet_cifar(width, num_classes):
    layers = [nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    cin = width
    for stage, cout in enumerate([width, 2 * width, 4 * width, 8 * width]):
        layers += [BasicBlock(cin, cout, 1 if stage == 0 else 2), BasicBlock(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("root")
    p.add_argument("--model", choices=["resnet_tiny", "resnet_small", "deit"], default="deit")
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--teacher", help="a model saved by --save (online distillation)")
    p.add_argument("--distillation", choices=["hard", "soft"], default="hard")
    p.add_argument("--save", help="save the trained model here (torch.save)")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)

    train, y_train, num_classes = load(args.root, "train")
    val, y_val, _ = load(args.root, "val")
    norm = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    bicubic = T.InterpolationMode.BICUBIC
    t_train = T.Compose([
        T.RandomResizedCrop(32, scale=(0.35, 1.0), interpolation=bicubic),
        T.RandomHorizontalFlip(), T.ToTensor(), norm,
    ])
    t_val = T.Compose([T.Resize(37, interpolation=bicubic), T.CenterCrop(32), T.ToTensor(), norm])

    if args.model == "deit":
        model = timm.models.deit.VisionTransformerDistilled(
            img_size=32, patch_size=args.patch, embed_dim=args.dim, depth=args.depth,
            num_heads=args.heads, num_classes=num_classes, drop_path_rate=0.0,
        )
        model.set_distilled_training(True)
    else:
        model = resnet_cifar(16 if args.model == "resnet_tiny" else 32, num_classes)
    teacher = None
    if args.teacher:
        teacher = torch.load(args.teacher, weights_only=False).eval()

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    x_val = torch.stack([t_val(im) for im in val])
    y_val = torch.tensor(y_val)
    steps_per_epoch = len(train) // args.batch
    total = args.epochs * steps_per_epoch
    warmup = steps_per_epoch
    step = 0
    for epoch in range(args.epochs):
        model.train()
        order = np.random.RandomState(args.seed * 1000 + epoch).permutation(len(train))
        loss_sum, start = 0.0, time.time()
        for b in range(steps_per_epoch):
            idx = order[b * args.batch:(b + 1) * args.batch]
            x = torch.stack([t_train(train[i]) for i in idx])
            y = torch.tensor([y_train[i] for i in idx])
            if step < warmup:
                lr = args.lr * step / warmup
            else:
                cos = 1 + np.cos(np.pi * (step - warmup) / max(1, total - warmup))
                lr = 1e-5 + 0.5 * (args.lr - 1e-5) * cos
            for g in opt.param_groups:
                g["lr"] = lr
            step += 1
            out = model(x)
            if teacher is not None:
                with torch.no_grad():
                    t_logits = teacher(x)
                if args.distillation == "hard":
                    dist = F.cross_entropy(out[1], t_logits.argmax(1))
                else:
                    dist = F.kl_div(F.log_softmax(out[1], 1), F.log_softmax(t_logits, 1),
                                    reduction="sum", log_target=True) / out[1].numel()
                loss = 0.5 * F.cross_entropy(out[0], y) + 0.5 * dist
            elif isinstance(out, tuple):
                loss = 0.5 * (F.cross_entropy(out[0], y) + F.cross_entropy(out[1], y))
            else:
                loss = F.cross_entropy(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum += loss.item()
        model.eval()
        with torch.no_grad():
            top1 = (model(x_val).argmax(1) == y_val).float().mean().item() * 100
        print(f"epoch {epoch} train loss {loss_sum / steps_per_epoch:.4f} "
              f"val top1 {top1:.1f} ({time.time() - start:.1f}s)", flush=True)
    if args.save:
        torch.save(model, args.save)


if __name__ == "__main__":
    main()
