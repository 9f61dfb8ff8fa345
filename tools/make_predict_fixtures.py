#!/usr/bin/env python3
"""Reference fixtures for `deit-pipe predict` / `eval` on image files (tests/predict_reference.rs).

Pinned versions (the fixtures were made with exactly these):
    timm==1.0.31  torch==2.15.0  torchvision==0.29.2  Pillow==11.3.0  numpy==2.4.6
    scikit-image==0.26.0  safetensors==0.8.0  blake3==1.0.11
Pillow must stay < 12 (see ../shared/REFERENCE.md). `pip install timm` pulls torch from
PyPI, which brings ~6 GB of CUDA libraries; a CPU-only torch wheel is enough here.

Run from the repository root:
    python tools/make_predict_fixtures.py [--out tests/fixtures/predict]

What it writes (about 1.5 MB):
- images/*: 26 small files (40-300 px sides, odd sizes) cut from the real photographs that
  ship inside scikit-image: JPEG 4:2:0, 4:2:2, 4:4:4, progressive, grayscale, CMYK
  (Pillow's Adobe-inverted), PNG RGB, RGBA, grey+alpha, palette with transparency, 16-bit
  RGB and 16-bit grey; two smaller than the crop (upscaled) and two very elongated.
- deit32.safetensors: a distilled DeiT (img 32, patch 8, dim 64, depth 2, 2 heads,
  10 classes), `timm.create_model("deit_tiny_distilled_patch16_224", ...)` with those
  dimensions and `pretrained_cfg_overlay=dict(input_size=(3, 32, 32))`, its seeded init
  perturbed by N(0, 0.05) so the logits are far from zero and sensitive to the input.
- deit224.safetensors: a DeiT (img 224, patch 16, dim 32, depth 2, 2 heads, 10 classes)
  with the standard DeiT-Ti input and timm's DeiT pretrained config (224, crop 0.9, bicubic).
- cases.json: per case (model, crop_pct, interpolation, images) the timm transform
  `create_transform(**resolve_data_config(overrides, model=model))` applied to
  `Image.open(f).convert("RGB")`, then the model in eval mode: the logits per image, and
  for the 224 model the BLAKE3 of each input tensor's float32 little-endian bytes and its
  min/max/mean (full 224 tensors would be 600 KB each);
- inputs_<case>.safetensors: the input tensors of the 32 px cases, [N, 3, 32, 32] float32.
- The case "run875" (crop 0.875, bicubic, deit32) is what a run's config with
  `eval_crop_pct = 0.875` (configs/small_image.toml) gives: the test evaluates `predict`
  through a run directory against it.
"""
import argparse
import io
import json
import os
import struct
import zlib

import blake3
import numpy as np
import PIL
import safetensors
import safetensors.torch
import skimage
import timm
import torch
import torchvision
from PIL import Image
from skimage import data as skdata
from timm.data import create_transform, resolve_data_config

VERSIONS = {
    "timm": "1.0.31",
    "torch": "2.15.0",
    "torchvision": "0.29.2",
    "Pillow": "11.3.0",
    "numpy": "2.4.6",
    "scikit-image": "0.26.0",
}
assert timm.__version__ == VERSIONS["timm"], timm.__version__
assert PIL.__version__ == VERSIONS["Pillow"], PIL.__version__
assert torch.__version__.split("+")[0] == VERSIONS["torch"], torch.__version__
assert torchvision.__version__.split("+")[0] == VERSIONS["torchvision"], torchvision.__version__
assert np.__version__ == VERSIONS["numpy"], np.__version__
assert skimage.__version__ == VERSIONS["scikit-image"], skimage.__version__

PHOTOS = {
    "astronaut": skdata.astronaut,
    "chelsea": skdata.chelsea,
    "coffee": skdata.coffee,
    "rocket": skdata.rocket,
    "motorcycle": lambda: skdata.stereo_motorcycle()[0],
    "retina": skdata.retina,
    "ihc": skdata.immunohistochemistry,
}

# (name, photo, width, height, kind, save options)
IMAGES = [
    ("a420_q90_131x97", "astronaut", 131, 97, "jpeg", {"quality": 90, "subsampling": 2}),
    ("b420_q75_200x150", "chelsea", 200, 150, "jpeg", {"quality": 75, "subsampling": 2}),
    ("c420_q95_97x141", "coffee", 97, 141, "jpeg", {"quality": 95, "subsampling": 2}),
    ("d420_q85_299x211", "rocket", 299, 211, "jpeg", {"quality": 85, "subsampling": 2}),
    ("e420_q90_57x43", "motorcycle", 57, 43, "jpeg", {"quality": 90, "subsampling": 2}),
    ("f420_q80_41x300", "retina", 41, 300, "jpeg", {"quality": 80, "subsampling": 2}),
    ("g422_q90_163x121", "ihc", 163, 121, "jpeg", {"quality": 90, "subsampling": 1}),
    ("h444_q90_77x59", "astronaut", 77, 59, "jpeg", {"quality": 90, "subsampling": 0}),
    ("i444_q70_250x187", "coffee", 250, 187, "jpeg", {"quality": 70, "subsampling": 0}),
    ("j444_q95_40x40", "chelsea", 40, 40, "jpeg", {"quality": 95, "subsampling": 0}),
    ("k_prog420_q90_181x133", "rocket", 181, 133, "jpeg",
     {"quality": 90, "subsampling": 2, "progressive": True}),
    ("l_prog444_q85_93x127", "motorcycle", 93, 127, "jpeg",
     {"quality": 85, "subsampling": 0, "progressive": True}),
    ("m_gray_q90_143x101", "chelsea", 143, 101, "jpeg_gray", {"quality": 90}),
    ("n_gray_prog_q80_61x89", "ihc", 61, 89, "jpeg_gray", {"quality": 80, "progressive": True}),
    ("o_cmyk_q90_119x83", "astronaut", 119, 83, "jpeg_cmyk", {"quality": 90}),
    ("p_small420_q90_23x19", "coffee", 23, 19, "jpeg", {"quality": 90, "subsampling": 2}),
    ("q_wide420_q90_300x45", "retina", 300, 45, "jpeg", {"quality": 90, "subsampling": 2}),
    ("r_rgb_png_109x73", "rocket", 109, 73, "png", {}),
    ("s_rgba_png_88x121", "motorcycle", 88, 121, "png_rgba", {}),
    ("t_la_png_67x53", "chelsea", 67, 53, "png_la", {}),
    ("u_palette_trns_png_90x66", "coffee", 90, 66, "png_p", {}),
    ("v_rgb16_png_71x49", "astronaut", 71, 49, "png_rgb16", {}),
    ("w_gray16_png_45x63", "ihc", 45, 63, "png_gray16", {}),
    ("x_small_rgba_png_29x31", "rocket", 29, 31, "png_rgba", {}),
    ("y420_q60_211x157", "ihc", 211, 157, "jpeg", {"quality": 60, "subsampling": 2}),
    ("z444_prog_q92_127x299", "astronaut", 127, 299, "jpeg",
     {"quality": 92, "subsampling": 0, "progressive": True}),
]


def photo_crop(name, w, h, rng):
    """A random crop of the photo with the aspect of w x h, resized with LANCZOS."""
    img = Image.fromarray(PHOTOS[name]()).convert("RGB")
    pw, ph = img.size
    aspect = w / h
    area = rng.uniform(0.3, 1.0) * pw * ph
    cw = int(round(np.sqrt(area * aspect)))
    ch = int(round(np.sqrt(area / aspect)))
    cw, ch = min(cw, pw), min(ch, ph)
    x = int(rng.integers(0, pw - cw + 1))
    y = int(rng.integers(0, ph - ch + 1))
    return img.crop((x, y, x + cw, y + ch)).resize((w, h), Image.LANCZOS)


def png_chunk(kind, body):
    return (struct.pack(">I", len(body)) + kind + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))


def png16(arr, color_type):
    """A 16-bit PNG (color type 0 grey or 2 RGB) from a uint16 array, written by hand
    (Pillow cannot write 16-bit RGB)."""
    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))
    return (b"\x89PNG\r\n\x1a\n"
            + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(raw, 9))
            + png_chunk(b"IEND", b""))


def write_image(path, img, kind, opts, rng):
    w, h = img.size
    if kind == "jpeg":
        img.save(path, "JPEG", **opts)
    elif kind == "jpeg_gray":
        img.convert("L").save(path, "JPEG", **opts)
    elif kind == "jpeg_cmyk":
        img.convert("CMYK").save(path, "JPEG", **opts)
    elif kind == "png":
        img.save(path, "PNG")
    elif kind == "png_rgba":
        a = rng.integers(0, 256, size=(h, w), dtype=np.uint8)
        a[: h // 3] = 0  # fully transparent band: the colour must still come through
        rgba = np.dstack([np.asarray(img), a])
        Image.fromarray(rgba).save(path, "PNG")
    elif kind == "png_la":
        la = img.convert("LA")
        arr = np.asarray(la).copy()
        arr[..., 1] = rng.integers(0, 256, size=(h, w), dtype=np.uint8)
        Image.fromarray(arr).save(path, "PNG")
    elif kind == "png_p":
        p = img.quantize(colors=64, method=Image.Quantize.MEDIANCUT)
        p.info["transparency"] = 5
        p.save(path, "PNG", transparency=5)
    elif kind == "png_rgb16":
        arr = np.asarray(img).astype(np.uint16) * 257
        arr += rng.integers(0, 257, size=arr.shape, dtype=np.uint16)
        open(path, "wb").write(png16(arr, 2))
    elif kind == "png_gray16":
        # Values around 0-400: Pillow's I;16 -> RGB clips at 255.
        arr = (np.asarray(img.convert("L")).astype(np.uint16) * 3 // 2)
        open(path, "wb").write(png16(arr, 0))
    else:
        raise ValueError(kind)


def make_model(name, seed, **kw):
    torch.manual_seed(seed)
    m = timm.create_model(name, pretrained=False, **kw)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return m.eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/predict")
    args = ap.parse_args()
    out = args.out
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    rng = np.random.default_rng(18)
    images = []
    for name, photo, w, h, kind, opts in IMAGES:
        ext = "jpg" if kind.startswith("jpeg") else "png"
        fname = f"{name}.{ext}"
        write_image(os.path.join(out, "images", fname), photo_crop(photo, w, h, rng), kind,
                    opts, rng)
        with Image.open(os.path.join(out, "images", fname)) as im:
            mode = im.mode
        images.append({"file": f"images/{fname}", "kind": kind, "pil_mode": mode,
                       "width": w, "height": h})

    deit32 = make_model(
        "deit_tiny_distilled_patch16_224", 32, img_size=32, patch_size=8, embed_dim=64,
        depth=2, num_heads=2, num_classes=10,
        pretrained_cfg_overlay=dict(input_size=(3, 32, 32)))
    deit224 = make_model(
        "deit_tiny_patch16_224", 224, embed_dim=32, depth=2, num_heads=2, num_classes=10)
    models = {
        "deit32": {"model": deit32, "file": "deit32.safetensors",
                   "timm_name": "deit_tiny_distilled_patch16_224",
                   "flags": {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2,
                             "num_heads": 2, "num_classes": 10}},
        "deit224": {"model": deit224, "file": "deit224.safetensors",
                    "timm_name": "deit_tiny_patch16_224",
                    "flags": {"embed_dim": 32, "depth": 2, "num_heads": 2,
                              "num_classes": 10}},
    }
    for spec in models.values():
        sd = {k: v.contiguous() for k, v in spec["model"].state_dict().items()}
        safetensors.torch.save_file(sd, os.path.join(out, spec["file"]),
                                    metadata={"format": "pt"})

    every = [i["file"] for i in images]
    few = [every[k] for k in (0, 7, 12, 15, 17, 18)]
    cases = [
        ("default32", "deit32", {}, every),
        ("default224", "deit224", {}, every),
        ("run875", "deit32", {"crop_pct": 0.875}, every),
        ("crop1_bilinear", "deit32", {"crop_pct": 1.0, "interpolation": "bilinear"}, few),
        ("crop95_lanczos", "deit32", {"crop_pct": 0.95, "interpolation": "lanczos"}, few),
        ("crop8_box", "deit32", {"crop_pct": 0.8, "interpolation": "box"}, few),
        ("crop85_hamming", "deit32", {"crop_pct": 0.85, "interpolation": "hamming"}, few),
    ]
    out_cases = []
    for cname, mname, overrides, files in cases:
        spec = models[mname]
        model = spec["model"]
        cfg = resolve_data_config(dict(overrides), model=model)
        tf = create_transform(**cfg)
        xs = [tf(Image.open(os.path.join(out, f)).convert("RGB")) for f in files]
        x = torch.stack(xs)
        with torch.no_grad():
            logits = model(x)
        case = {
            "name": cname,
            "model": mname,
            "crop_pct": cfg["crop_pct"],
            "interpolation": cfg["interpolation"],
            "input_size": list(cfg["input_size"]),
            "overrides": overrides,
            "images": files,
            "logits": logits.tolist(),
        }
        if x.shape[-1] <= 64:
            inputs = f"inputs_{cname}.safetensors"
            safetensors.torch.save_file({"inputs": x.contiguous()}, os.path.join(out, inputs))
            case["inputs"] = inputs
        else:
            case["input_stats"] = [
                {
                    "blake3": blake3.blake3(
                        t.contiguous().numpy().astype("<f4").tobytes()).hexdigest(),
                    "min": float(t.min()),
                    "max": float(t.max()),
                    "mean": float(t.double().mean()),
                }
                for t in xs
            ]
        out_cases.append(case)
        print(cname, cfg)

    index = {
        "versions": VERSIONS,
        "images": images,
        "models": {k: {kk: vv for kk, vv in v.items() if kk != "model"}
                   for k, v in models.items()},
        "cases": out_cases,
    }
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump(index, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
