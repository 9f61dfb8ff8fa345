#!/usr/bin/env python3
"""Make ImageNet-like benchmark photos for `deit-pipe shard` (BENCHMARKS.md, shard section).

Real photographs that ship inside scikit-image (astronaut, chelsea, coffee, rocket,
motorcycle, hubble deep field, retina, immunohistochemistry; no download needed) are cut
into random 4:3 / 3:4 crops covering 35-100% of the photo, resized to 500x375 (or 375x500)
with Pillow's LANCZOS filter and saved as quality-90 JPEGs (4:2:0, Pillow's default), like
typical ImageNet files. Output: OUT/train/<photo>/<photo>_<i>.JPEG (an ImageFolder tree).

Pinned versions (the reference environment): Python 3.11+, scikit-image 0.26.0,
Pillow 11.3.0, numpy 2.4.6. Only scikit-image, Pillow and numpy are needed (no torch;
note that installing torch from PyPI pulls ~6 GB of CUDA libraries).

    python tools/make_bench_photos.py --out /tmp/bench-photos --count 1000 --seed 0
"""

import argparse
import os

import numpy as np
from PIL import Image
from skimage import data

PHOTOS = {
    "astronaut": data.astronaut,
    "chelsea": data.chelsea,
    "coffee": data.coffee,
    "rocket": data.rocket,
    "motorcycle": lambda: data.stereo_motorcycle()[0],
    "hubble": data.hubble_deep_field,
    "retina": data.retina,
    "ihc": data.immunohistochemistry,
}


def crop(img, rng):
    h, w = img.size[1], img.size[0]
    portrait = rng.random() < 0.25
    aspect = 3 / 4 if portrait else 4 / 3
    area = rng.uniform(0.35, 1.0) * w * h
    cw = int(round(np.sqrt(area * aspect)))
    ch = int(round(np.sqrt(area / aspect)))
    if cw > w:
        cw, ch = w, int(round(w / aspect))
    if ch > h:
        ch, cw = h, int(round(h * aspect))
    x = int(rng.integers(0, w - cw + 1))
    y = int(rng.integers(0, h - ch + 1))
    out = img.crop((x, y, x + cw, y + ch))
    size = (375, 500) if portrait else (500, 375)
    out = out.resize(size, Image.LANCZOS)
    if rng.random() < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    sources = {k: Image.fromarray(np.asarray(f())).convert("RGB") for k, f in PHOTOS.items()}
    names = sorted(sources)
    for i in range(args.count):
        name = names[i % len(names)]
        d = os.path.join(args.out, "train", name)
        os.makedirs(d, exist_ok=True)
        crop(sources[name], rng).save(os.path.join(d, f"{name}_{i:05d}.JPEG"), quality=90)
    print(f"wrote {args.count} photos to {args.out}/train")


if __name__ == "__main__":
    main()
