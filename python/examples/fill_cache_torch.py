#!/usr/bin/env python3
"""Fill a deit-pipe teacher cache with a timm teacher (any PyTorch model works the same).

The writer hands over exactly the views `deit-pipe train` (and `deit_pipe.Loader`) will
build for the student, epoch by epoch, in order; the teacher runs once on each view and
its top-K logits and hard label are written with the same schema, digests and
fingerprint binding as `deit-pipe teacher-cache`, recording the teacher's identity.

    python fill_cache_torch.py --data shards --config configs/deit_small.toml \
        --out cache --teacher regnety_160 --checkpoint regnety_160.pth --epochs 0..300

Split the work over processes/GPUs with --part i/n (each writes its own files).
Without --checkpoint the teacher is randomly initialized (seeded): only for trying the
pipeline out (CI), never for real distillation.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch
import timm

import deit_pipe


def parse_epochs(s: str) -> range:
    if ".." in s:
        a, b = s.split("..", 1)
        return range(int(a), int(b[1:]) + 1) if b.startswith("=") else range(int(a), int(b))
    return range(int(s), int(s) + 1)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="shard root (deit-pipe shard --out)")
    ap.add_argument("--config", required=True, help="the student's training config TOML")
    ap.add_argument("--out", required=True, help="cache directory")
    ap.add_argument("--teacher", default="resnet18", help="timm model name")
    ap.add_argument("--checkpoint", default=None, help="teacher weights (.pth state_dict)")
    ap.add_argument("--epochs", default="0", help="A..B (half-open), A..=B or A")
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=None, help="run seed (default: the config's)")
    ap.add_argument("--part", default="1/1", help="i/n: this process's part of every epoch")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    classes = json.loads((Path(args.data) / "train" / "manifest.json").read_text())["classes"]
    torch.manual_seed(0)
    teacher = timm.create_model(args.teacher, pretrained=False, num_classes=len(classes))
    if args.checkpoint:
        state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        state = state.get("model", state) if isinstance(state, dict) else state
        teacher.load_state_dict(state)
        teacher_id = f"{args.teacher} sha256:{sha256(Path(args.checkpoint))}"
    else:
        print("warning: no --checkpoint: a randomly initialized teacher (seed 0)", file=sys.stderr)
        teacher_id = f"{args.teacher} random-init-seed-0"
    teacher = teacher.to(args.device).eval()

    i, n = (int(x) for x in args.part.split("/"))
    writer = deit_pipe.TeacherCacheWriter(
        args.out, shards=args.data, config=args.config, seed=args.seed,
        epochs=parse_epochs(args.epochs), top_k=args.top_k, teacher_id=teacher_id,
        part=(i, n), batch_size=args.batch_size, threads=args.threads,
    )
    total, done, t0 = len(writer), 0, time.time()
    with torch.inference_mode():
        for views in writer:
            x = torch.from_numpy(views.images).to(args.device, non_blocking=True)
            writer.put(views, teacher(x).float().cpu())
            done += len(views)
            print(f"\repoch {views.epoch}: {done}/{total} views, "
                  f"{done / max(time.time() - t0, 1e-9):.0f} views/s", end="", file=sys.stderr)
    files = writer.finish()
    print(f"\n{len(files)} file(s) written to {args.out}; skipped (already there): "
          f"{writer.skipped_epochs}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
