#!/usr/bin/env python3
"""Reference fixtures for deit-pipe's train/eval transforms (pipeline/src/transforms),
everything except RandAugment (see make_augment_fixtures.py for that).

Pinned versions (the fixtures were made with exactly these):
    timm==1.0.31  Pillow==11.3.0  torch==2.15.0  torchvision==0.29.2  numpy==2.4.6
Pillow must stay < 12 (see ../shared/REFERENCE.md). Note: `pip install timm` pulls torch
from PyPI, which brings ~6 GB of CUDA libraries; a CPU-only torch wheel
(https://download.pytorch.org/whl/cpu) is enough for this script.

Run from the repository root:
    python tools/make_transform_fixtures.py [--out pipeline/tests/fixtures/transforms]

What it writes:
- cases.json:
  * rrc: timm `RandomResizedCropAndInterpolation.get_params` for image sizes, scale and
    ratio ranges, with `random.uniform` / `random.randint` replaced by replays of
    recorded unit draws u (uniform(a, b) = a + (b - a) * u, randint(a, b) =
    a + floor(u * (b - a + 1))): the draws, the (top, left, h, w) it returned and how many
    draws it consumed (the fallback is reached by some cases);
  * erase: timm `RandomErasing(p, mode='pixel')` on a 3 x H x W tensor with the same
    replay of `random.random/uniform/randint` and the fill replaced by ones, so the box
    is read back from the tensor: draws, box or null, draws consumed;
  * cutmix_box: timm `cutmix_bbox_and_lam` for a float32 lam and a recorded centre
    (np.random.randint replaced): the box and the corrected lam;
  * mix: timm `Mixup(mode='pair', label_smoothing=0.1, num_classes=10)` on a batch of 2
    3x16x16 tensors with `_params_per_elem` fixed (lam, use_cutmix) and the box centre
    fixed: inputs, mixed outputs, targets and the final lam (as float32 lists);
  * crop_pad: torchvision `RandomCrop(32, padding=4)` with `torch.randint` fixed: the
    offsets; the output image is crop_pad_<k>.png, the input small_input.png;
  * normalize: ToTensor + Normalize of every byte value per channel.
- eval_input_<k>.png / eval_output_<k>.png: timm `transforms_imagenet_eval(224,
  crop_pct=0.875, interpolation='bicubic')` minus ToTensor/Normalize (the PIL image);
- rrc_output_<k>.png: torchvision `resized_crop` of eval_input_<k> with a fixed box to
  224 bicubic (PIL), the exact operation behind RandomResizedCrop.
"""
import argparse
import json
import math
import os
import random

import numpy as np
import torch
import timm
import timm.data.random_erasing as re_mod
import timm.data.mixup as mix_mod
from timm.data.transforms import RandomResizedCropAndInterpolation
from timm.data.transforms_factory import transforms_imagenet_eval
from timm.data.random_erasing import RandomErasing
from timm.data.mixup import Mixup, cutmix_bbox_and_lam
import torchvision.transforms as T
import torchvision.transforms.functional as F
from PIL import Image
import PIL

assert timm.__version__ == "1.0.31", timm.__version__
assert PIL.__version__.startswith("11."), PIL.__version__


class Replay:
    """Replays unit draws through Python's `random` API."""

    def __init__(self, units):
        self.units = list(units)
        self.n = 0

    def take(self):
        u = self.units[self.n]
        self.n += 1
        return u

    def uniform(self, a, b):
        return a + (b - a) * self.take()

    def randint(self, a, b):
        return a + int(math.floor(self.take() * (b - a + 1)))

    def random(self):
        return self.take()


def patched_random(rep):
    saved = (random.uniform, random.randint, random.random)
    random.uniform, random.randint, random.random = rep.uniform, rep.randint, rep.random
    return saved


def restore_random(saved):
    random.uniform, random.randint, random.random = saved


def synth_image(w, h, seed):
    """Smooth gradients, shapes and some noise: deterministic, PNG-friendly."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 128 + 100 * np.sin(x / (7 + seed) + y / 13)
    g = 255 * x / max(w - 1, 1)
    b = 255 * ((x // 16 + y // 16) % 2)
    img = np.stack([r, g, b], axis=-1)
    cy, cx, rad = h / 2, w / 3, min(w, h) / 4
    mask = (x - cx) ** 2 + (y - cy) ** 2 < rad**2
    img[mask] = [250, 30, 60]
    img += rng.normal(0, 6, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def rrc_cases(rng):
    cases = []
    sizes = [(500, 375), (375, 500), (224, 224), (1000, 90), (90, 1000), (33, 47)]
    ranges = [((0.08, 1.0), (3 / 4, 4 / 3)), ((0.9, 1.0), (3 / 4, 4 / 3)), ((0.5, 1.0), (0.5, 2.0))]
    for w, h in sizes:
        for scale, ratio in ranges:
            for rep in range(6):
                units = rng.random(40).tolist()
                if rep == 0:  # push toward the fallback: largest areas, extreme aspects
                    units = [0.999 - 0.001 * (k % 3) if k % 2 == 0 else (0.999 if (k // 2) % 2 else 0.001) for k in range(40)]
                r = Replay(units)
                saved = patched_random(r)
                try:
                    i, j, th, tw = RandomResizedCropAndInterpolation.get_params(
                        Image.new("RGB", (w, h)), scale, ratio)
                finally:
                    restore_random(saved)
                cases.append(dict(width=w, height=h, scale=list(scale), ratio=list(ratio),
                                  units=units, top=i, left=j, h=th, w=tw, consumed=r.n))
    return cases


def erase_cases(rng):
    cases = []
    saved_get = re_mod._get_pixels
    re_mod._get_pixels = lambda per_pixel, rand_color, patch_size, dtype=torch.float32, device="cpu": torch.ones(patch_size, dtype=dtype)
    try:
        for (h, w) in [(224, 224), (32, 32), (40, 200)]:
            for p in [0.25, 1.0]:
                for rep in range(8):
                    units = rng.random(50).tolist()
                    if rep == 0:
                        units[0] = 0.0  # erase; then huge areas with extreme aspects
                        units[1:] = [0.999 if k % 2 == 0 else (0.999 if (k // 2) % 2 else 0.001) for k in range(49)]
                    eraser = RandomErasing(probability=p, mode="pixel", device="cpu")
                    img = torch.zeros(3, h, w)
                    r = Replay(units)
                    saved = patched_random(r)
                    try:
                        out = eraser(img)
                    finally:
                        restore_random(saved)
                    nz = torch.nonzero(out[0])
                    box = None
                    if len(nz):
                        t, l = nz.min(0).values.tolist()
                        b, rr = nz.max(0).values.tolist()
                        box = dict(top=t, left=l, h=b - t + 1, w=rr - l + 1)
                    cases.append(dict(height=h, width=w, prob=p, units=units, box=box, consumed=r.n))
    finally:
        re_mod._get_pixels = saved_get
    return cases


def cutmix_box_cases(rng):
    cases = []
    saved = np.random.randint
    try:
        for (h, w) in [(224, 224), (16, 16), (32, 48)]:
            for _ in range(12):
                lam = np.float32(rng.random())
                cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
                seq = iter([cy, cx])
                np.random.randint = lambda lo, hi, size=None: next(seq)
                (yl, yh, xl, xh), lam_c = cutmix_bbox_and_lam((3, h, w), lam, correct_lam=True)
                cases.append(dict(height=h, width=w, lam=float(lam), cy=cy, cx=cx,
                                  box=[int(yl), int(yh), int(xl), int(xh)],
                                  lam_corrected=float(np.float32(lam_c))))
    finally:
        np.random.randint = saved
    return cases


def mix_cases(rng):
    cases = []
    saved = np.random.randint
    try:
        for use_cutmix in [False, True]:
            for _ in range(3):
                lam = np.float32(rng.random())
                cy, cx = int(rng.integers(0, 16)), int(rng.integers(0, 16))
                m = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5,
                          mode="pair", label_smoothing=0.1, num_classes=10)
                m._params_per_elem = lambda n, lam=lam, uc=use_cutmix: (
                    np.array([lam] * n, dtype=np.float32), np.array([uc] * n, dtype=bool))
                seq = iter([cy, cx])
                np.random.randint = lambda lo, hi, size=None: next(seq)
                x = torch.from_numpy(rng.normal(size=(2, 3, 16, 16)).astype(np.float32))
                labels = torch.tensor([int(rng.integers(0, 10)), int(rng.integers(0, 10))])
                x_in = x.clone()
                out, target = m(x, labels)
                cases.append(dict(cutmix=use_cutmix, lam=float(lam), cy=cy, cx=cx,
                                  labels=labels.tolist(),
                                  x_in=x_in.flatten().tolist(), x_out=out.flatten().tolist(),
                                  target=target.flatten().tolist()))
    finally:
        np.random.randint = saved
    return cases


def crop_pad_cases(rng, out_dir):
    img = synth_image(32, 32, 3)
    img.save(os.path.join(out_dir, "small_input.png"))
    cases = []
    saved = torch.randint
    try:
        for k in range(6):
            top, left = int(rng.integers(0, 9)), int(rng.integers(0, 9))
            seq = iter([top, left])
            torch.randint = lambda lo, hi, size=None, **kw: torch.tensor([next(seq)])
            out = T.RandomCrop(32, padding=4)(img)
            out.save(os.path.join(out_dir, f"crop_pad_{k}.png"))
            cases.append(dict(top=top, left=left))
    finally:
        torch.randint = saved
    return cases


def eval_and_rrc_images(out_dir):
    tf = transforms_imagenet_eval(224, crop_pct=0.875, interpolation="bicubic")
    pil_tf = T.Compose([t for t in tf.transforms if isinstance(t, (T.Resize, T.CenterCrop))])
    assert len(pil_tf.transforms) == 2, tf
    sizes = [(500, 375), (375, 500), (200, 150), (256, 256)]
    boxes = [(40, 100, 300, 250), (10, 20, 120, 90), (0, 0, 150, 200), (100, 50, 100, 100)]
    info = []
    for k, ((w, h), (i, j, bh, bw)) in enumerate(zip(sizes, boxes)):
        img = synth_image(w, h, k)
        img.save(os.path.join(out_dir, f"eval_input_{k}.png"))
        pil_tf(img).save(os.path.join(out_dir, f"eval_output_{k}.png"))
        bh, bw = min(bh, h - i), min(bw, w - j)
        F.resized_crop(img, i, j, bh, bw, [224, 224], interpolation=T.InterpolationMode.BICUBIC).save(
            os.path.join(out_dir, f"rrc_output_{k}.png"))
        info.append(dict(width=w, height=h, top=i, left=j, h=bh, w=bw))
    return info


def normalize_table():
    t = torch.arange(256, dtype=torch.uint8).repeat(3, 1).reshape(3, 1, 256)
    img = Image.fromarray(t.permute(1, 2, 0).numpy())
    x = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))(T.ToTensor()(img))
    return x.reshape(3, 256).tolist()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="pipeline/tests/fixtures/transforms")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(20261129)
    cases = dict(
        versions=dict(timm=timm.__version__, pillow=PIL.__version__, torch=torch.__version__),
        rrc=rrc_cases(rng),
        erase=erase_cases(rng),
        cutmix_box=cutmix_box_cases(rng),
        mix=mix_cases(rng),
        crop_pad=crop_pad_cases(rng, args.out),
        eval_rrc=eval_and_rrc_images(args.out),
        normalize=normalize_table(),
    )
    with open(os.path.join(args.out, "cases.json"), "w") as f:
        json.dump(cases, f)
    print("wrote", args.out, {k: len(v) for k, v in cases.items()})


if __name__ == "__main__":
    main()
