#!/usr/bin/env python3
"""Reference fixtures for deit-pipe's JPEG record decoder (pipeline/src/ingest/jpeg.rs).

Pinned version (the fixtures were made with exactly this): Pillow==11.3.0 (its wheel
bundles libjpeg-turbo; Pillow decodes with the ISLOW IDCT and fancy upsampling), numpy.

Run from the repository root:
    python tools/make_jpeg_fixtures.py [--out pipeline/tests/fixtures/jpeg]

What it writes: for each case NAME, NAME.jpg (a noisy image with hard colour edges, saved
by Pillow at quality 90 with the case's chroma subsampling / progressive / grayscale
setting, or CMYK) and NAME.png, Pillow's own decode of NAME.jpg converted to RGB (lossless), plus
index.json listing the cases. The test `jpeg_records_decode_to_pillows_pixels` checks that
our decode of every NAME.jpg, and of regions of it, equals NAME.png byte for byte.
"""
import argparse
import io
import json
import os

import numpy as np
from PIL import Image, features

CASES = [
    # name, width, height, mode, save options
    ("rgb420_37x23", 37, 23, "RGB", {"subsampling": 2}),
    ("rgb420_200x150", 200, 150, "RGB", {"subsampling": 2}),
    ("rgb422_97x61", 97, 61, "RGB", {"subsampling": 1}),
    ("rgb444_64x48", 64, 48, "RGB", {"subsampling": 0}),
    ("rgb420_progressive_131x77", 131, 77, "RGB", {"subsampling": 2, "progressive": True}),
    ("gray_53x41", 53, 41, "L", {}),
    # CMYK: Pillow writes Adobe-inverted CMYK; "subsampling" 2 samples C at 2x2 and the
    # other three channels (K included) at 1x1, a layout where the K plane is subsampled
    # relative to the image.
    ("cmyk444_45x29", 45, 29, "CMYK", {"subsampling": 0}),
    ("cmyk_subsampled_61x39", 61, 39, "CMYK", {"subsampling": 2}),
]


def image(w, h, mode, seed):
    rng = np.random.default_rng(seed)
    c = {"RGB": 3, "CMYK": 4, "L": 1}[mode]
    y, x = np.mgrid[0:h, 0:w]
    base = np.where(((x // 5 + y // 3)[..., None] + np.arange(c)) % 2 == 0, 40, 190)
    px = base + rng.integers(0, 60, size=(h, w, c)) + (x % 7)[..., None]
    px = np.clip(px, 0, 255).astype(np.uint8)
    if c == 4:
        return Image.frombytes("CMYK", (w, h), px.tobytes())
    return Image.fromarray(px[..., 0] if c == 1 else px)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="pipeline/tests/fixtures/jpeg")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    index = {
        "pillow": Image.__version__,
        "libjpeg_turbo": features.version("libjpeg_turbo"),
        "cases": [],
    }
    for seed, (name, w, h, mode, opts) in enumerate(CASES):
        buf = io.BytesIO()
        image(w, h, mode, seed).save(buf, "JPEG", quality=90, **opts)
        data = buf.getvalue()
        with open(os.path.join(a.out, name + ".jpg"), "wb") as f:
            f.write(data)
        decoded = Image.open(io.BytesIO(data)).convert("RGB")
        decoded.save(os.path.join(a.out, name + ".png"))
        index["cases"].append({"name": name, "width": w, "height": h})
    with open(os.path.join(a.out, "index.json"), "w") as f:
        json.dump(index, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
