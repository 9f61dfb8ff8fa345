#!/usr/bin/env python3
"""Reference fixtures for deit-pipe's RandAugment (pipeline/src/randaugment).

Pinned versions (the fixtures were made with exactly these):
    timm==1.0.31  Pillow==11.3.0  numpy  scikit-image (only for the bundled `chelsea` photo)
Pillow must stay < 12: Pillow 11 turns PosterizeIncreasing with 0 bits into a black image,
newer Pillow raises there (see ../shared/REFERENCE.md).
Note: `pip install timm` pulls torch from PyPI, which brings ~6 GB of CUDA libraries; a
CPU-only torch wheel (https://download.pytorch.org/whl/cpu) is enough for this script.

Run from the repository root:
    python tools/make_augment_fixtures.py [--out pipeline/tests/fixtures/randaugment]

What it writes (all lossless PNG + one JSON index):
- input_<name>.png: the four fixed input images (a real-photo crop and three synthetic);
- output_<name>.png: every case's output for that image, stacked vertically in case order
  (case i occupies rows [i*H, (i+1)*H));
- index.json: the cases (timm op name, magnitude level, sign, the argument timm's level
  function produced, and how many sign draws the op made), the timm-string parse results,
  and the op kwargs of DeiT's real training transform.
Each case runs timm's own `AugmentOp.__call__` (prob 1, no magnitude noise, bicubic, fill
(124, 116, 104)) with `random` replaced by a stub whose `random()` returns 0.75 (negate) or
0.25 (keep), so the op function, level function and PIL code paths are timm's.
"""
import argparse
import json
import os
import struct

import numpy as np
import PIL
from PIL import Image
import timm
import timm.data.auto_augment as aa

assert timm.__version__ == "1.0.31", timm.__version__
assert PIL.__version__ == "11.3.0", PIL.__version__

FILL = (124, 116, 104)
LEVELS_SIGNED = [0.0, 3.0, 5.0, 8.731, 9.0, 10.0]
LEVELS_INT = [0.0, 3.0, 5.0, 8.731, 9.0, 10.0, 15.0]  # 15: beyond mmax 10, exercises clamps
SIGNED = ["Rotate", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
          "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"]
UNSIGNED_FLOAT = ["Color", "Contrast", "Brightness", "Sharpness"]
INT_OPS = ["PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd", "Posterize", "Solarize"]
NO_ARG = ["AutoContrast", "Equalize", "Invert"]


class StubRandom:
    """Stands in for the `random` module inside timm.data.auto_augment."""

    def __init__(self, value):
        self.value = value
        self.calls = 0

    def random(self):
        self.calls += 1
        return self.value

    def __getattr__(self, name):
        raise AssertionError(f"unexpected random.{name} call")


def images():
    from skimage import data

    photo = data.chelsea()[110:158, 170:234]  # 64x48 crop: fur, eye, whiskers
    rng = np.random.default_rng(1234)
    h, w = 30, 40
    yy, xx = np.mgrid[0:h, 0:w]
    grad = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), (xx + yy) * 4 % 256], -1)
    grad[10:20, 15:25] = [250, 10, 30]  # a sharp-edged block
    grad = grad.astype(np.uint8)
    low = np.stack([
        rng.integers(60, 181, (36, 48)),  # R: 60..180
        rng.integers(100, 131, (36, 48)),  # G: 100..130
        np.full((36, 48), 77),  # B: constant (identity for autocontrast/equalize)
    ], -1).astype(np.uint8)
    noise = rng.integers(0, 256, (27, 33, 3)).astype(np.uint8)  # odd size, full range
    noise[::4, :, :] = 255
    return [("photo", photo), ("gradient", grad), ("lowcontrast", low), ("noise", noise)]


def cases():
    out = []
    for name in NO_ARG:
        out.append((name, 10.0, False))
    for name in INT_OPS:
        for lv in LEVELS_INT:
            out.append((name, lv, False))
    for name in UNSIGNED_FLOAT:
        for lv in LEVELS_SIGNED:
            out.append((name, lv, False))
    for name in SIGNED:
        for lv in LEVELS_SIGNED:
            for neg in (False, True):
                out.append((name, lv, neg))
    return out


def hparams():
    return dict(translate_const=100, img_mean=FILL, interpolation=Image.BICUBIC, magnitude_max=20)


def run_case(img, name, level, negate):
    op = aa.AugmentOp(name, prob=1.0, magnitude=level, hparams=hparams())
    real = aa.random
    try:
        stub = StubRandom(0.75 if negate else 0.25)
        aa.random = stub
        args = op.level_fn(level, op.hparams) if op.level_fn is not None else ()
        arg_draws = stub.calls
        stub = StubRandom(0.75 if negate else 0.25)
        aa.random = stub
        result = op(img)
        assert stub.calls == arg_draws, (name, stub.calls, arg_draws)
    finally:
        aa.random = real
    assert result.mode == "RGB" and result.size == img.size
    return result, args, arg_draws


def describe_arg(args):
    if not args:
        return {"kind": "none"}
    (v,) = args
    if isinstance(v, int):
        return {"kind": "int", "value": v}
    bits = struct.unpack("<Q", struct.pack("<d", float(v)))[0]
    return {"kind": "float", "value": float(v), "bits": str(bits)}


PARSE_STRINGS = [
    "rand-m9-mstd0.5-inc1",
    "rand-m7-n3-mstd0.5",
    "rand-m9-mstd101-inc1",
    "rand-m9-n2-mstd0.5-inc1-p0.3",
    "rand-mstd1-m3-mstd2-m4",
    "rand-m9-mmax15-inc1",
    "rand-m6-mmax0",
    "rand",
    "rand-m5-inc0",
]


def parse_results():
    out = []
    for s in PARSE_STRINGS:
        t = aa.rand_augment_transform(s, {"img_mean": FILL, "interpolation": Image.BICUBIC})
        op0 = t.ops[0]
        mstd = op0.magnitude_std
        out.append({
            "string": s,
            "num_layers": t.num_layers,
            "ops": [o.name for o in t.ops],
            "prob": op0.prob,
            "magnitude": op0.magnitude,
            "magnitude_std": "inf" if mstd == float("inf") else float(mstd),
            "magnitude_max": op0.magnitude_max,
        })
    return out


def deit_transform():
    from timm.data import create_transform
    from timm.data.auto_augment import RandAugment

    tf = create_transform(224, is_training=True, auto_augment="rand-m9-mstd0.5-inc1",
                          interpolation="bicubic", re_prob=0.25, re_mode="pixel", re_count=1,
                          color_jitter=0.4)
    ra = [t for t in tf.transforms if isinstance(t, RandAugment)]
    assert len(ra) == 1
    ra = ra[0]
    op0 = ra.ops[0]
    return {
        "num_layers": ra.num_layers,
        "ops": [o.name for o in ra.ops],
        "prob": op0.prob,
        "magnitude": op0.magnitude,
        "magnitude_std": op0.magnitude_std,
        "fillcolor": list(op0.kwargs["fillcolor"]),
        "resample": Image.Resampling(op0.kwargs["resample"]).name,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="pipeline/tests/fixtures/randaugment")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    case_list = cases()
    index = {"timm": timm.__version__, "pillow": PIL.__version__, "fill": list(FILL),
             "images": [], "cases": [], "parse": parse_results(), "deit": deit_transform()}
    for ci, (name, level, neg) in enumerate(case_list):
        index["cases"].append({"op": name, "level": level, "negate": neg})
    for img_name, arr in images():
        img = Image.fromarray(arr)
        w, h = img.size
        sheet = Image.new("RGB", (w, h * len(case_list)))
        for ci, (name, level, neg) in enumerate(case_list):
            result, args, draws = run_case(img, name, level, neg)
            sheet.paste(result, (0, ci * h))
            c = index["cases"][ci]
            arg = describe_arg(args)
            if "arg" in c:
                assert c["arg"] == arg and c["sign_draws"] == draws
            c["arg"], c["sign_draws"] = arg, draws
        img.save(os.path.join(a.out, f"input_{img_name}.png"))
        sheet.save(os.path.join(a.out, f"output_{img_name}.png"), optimize=True)
        index["images"].append({"name": img_name, "width": w, "height": h,
                                "input": f"input_{img_name}.png", "output": f"output_{img_name}.png"})
    with open(os.path.join(a.out, "index.json"), "w") as f:
        json.dump(index, f, indent=1)
    total = sum(os.path.getsize(os.path.join(a.out, p)) for p in os.listdir(a.out))
    print(f"{len(case_list)} cases x {len(index['images'])} images, {total / 1e6:.2f} MB in {a.out}")


if __name__ == "__main__":
    main()
