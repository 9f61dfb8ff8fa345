#!/usr/bin/env python3
"""The Python loader (`deit_pipe.Loader`, python/) against `deit-pipe bench loader`: the
same shards, augmentation, batch and threads; the bridge should cost nothing.

    pip install ./python
    python tools/bench_py_loader.py --data SHARDS --config configs/deit_tiny.toml \
        --threads 2 --batch 64 --images 640 --reps 4

Prints images/s of each repetition and the best (the figure BENCHMARKS.md compares with
`deit-pipe bench loader --threads T --batch B --images N --reps R`). Each batch is also
turned into torch tensors (`torch.from_numpy`) when torch is installed, as a training loop
would, to show that this costs no copy.
"""

import argparse
import time

import deit_pipe

try:
    import torch
except ImportError:  # numpy only
    torch = None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="shard root holding train/")
    ap.add_argument("--config", required=True, help="training config TOML")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--images", type=int, default=0, help="stop after this many views (0 = epoch)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    loader = deit_pipe.Loader(args.data, split="train", config=args.config,
                              batch_size=args.batch, seed=args.seed, rank=0, world=1,
                              threads=args.threads)
    best = 0.0
    for rep in range(args.reps):
        loader.set_epoch(rep)
        n, t0 = 0, time.perf_counter()
        for b in loader:
            if torch is not None:
                x = torch.from_numpy(b["images"])
                y = torch.from_numpy(b["targets"])
                assert x.data_ptr() == b["images"].ctypes.data and y.shape[0] == x.shape[0]
            n += b["images"].shape[0]
            if args.images and n >= args.images:
                break
        dt = time.perf_counter() - t0
        rate = n / dt
        best = max(best, rate)
        print(f"rep {rep}: {n} images in {dt:.2f} s = {rate:.1f} img/s", flush=True)
    print(f"best: {best:.1f} img/s (threads {args.threads}, batch {args.batch})")


if __name__ == "__main__":
    main()
