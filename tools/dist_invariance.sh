#!/usr/bin/env bash
# World-size invariance of data-parallel training, as a user runs it: one process with
# batch 16 against `mpirun -np NP` processes with batch 16/NP (same seed, same global
# batch; the small-image DeiT recipe with Mixup/CutMix, 3 repeats, drop path 0.25, 2
# epochs), then the largest difference between the two runs' final weights.
# On CPU (`DEVICE=cpu`) the ranks all-reduce over MPI; with `DEVICE=cuda` each rank takes
# the GPU of its local rank and gradients go over NCCL (needs a `--features cuda,mpi`
# build and NP GPUs). tests/dist_mpi.rs checks the CPU case in CI; tools/gpu_check.sh runs
# this with DEVICE=cuda where 2+ GPUs are lent.
#
#   BIN=target/release/deit-pipe DEVICE=cpu NP=2 OUT=/tmp/dpinv tools/dist_invariance.sh
#   EPOCHS=30 ... tools/dist_invariance.sh     (a longer run, bound 2e-4)
#
# Prints "max |w_1 - w_NP| = X" and exits 0 when X < BOUND. The default bound is for what
# this script runs (2 epochs, 12 steps, 64 synthetic images): 1e-6 on CPU (measured 8e-9:
# only the order of the float sums differs), 1e-4 on CUDA (cuBLAS may pick other kernels
# for another batch size). The difference grows with the run, since AdamW turns a rounding
# difference in a small gradient into a difference in a step of size lr and the steps add
# up: a realistic run (held-out-like data, hard distillation, Mixup/CutMix, drop path,
# many more steps) measured 6-9e-5 for 2 and 3 ranks (issue 24). Longer runs (EPOCHS) get
# a bound that allows for it: 2e-4 beyond 2 epochs. Needs python3 with numpy (the
# weights are read from the safetensors files directly).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release/deit-pipe}
DEVICE=${DEVICE:-cpu}
NP=${NP:-2}
OUT=${OUT:-$(mktemp -d)}
PY=${PYTHON:-python3}
EPOCHS=${EPOCHS:-2}
if [ "$EPOCHS" -gt 2 ]; then BOUND=${BOUND:-2e-4}
elif [ "$DEVICE" = cpu ]; then BOUND=${BOUND:-1e-6}; else BOUND=${BOUND:-1e-4}; fi
mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=${OMPI_MCA_btl_vader_single_copy_mechanism:-none}

"$BIN" --quiet synth --classes 4 --train-per-class 16 --val-per-class 4 --seed 3 --out "$OUT/folder"
"$BIN" --quiet shard --max-side 40 --format raw --input "$OUT/folder" --out "$OUT/shards"
student() { # OUT_DIR BATCH
    echo train --config "$ROOT/configs/small_image.toml" --data "$OUT/shards" --out "$1" \
        --epochs "$EPOCHS" --warmup-epochs 1 --batch-size "$2" --drop-path 0.25 \
        --set model.depth=2 --set model.embed_dim=48 --set plan.repeats=3 \
        --device "$DEVICE" --precision f32 --quiet
}
rm -rf "$OUT/one" "$OUT/many"
# shellcheck disable=SC2046
"$BIN" $(student "$OUT/one" 16)
# shellcheck disable=SC2046
mpirun --oversubscribe --bind-to none -np "$NP" "$BIN" $(student "$OUT/many" $((16 / NP)))
"$PY" - "$OUT/one" "$OUT/many" "$BOUND" <<'PY'
import json, struct, sys
import numpy as np

def load(run):
    d = json.load(open(f"{run}/last.json"))["dir"]
    raw = open(f"{run}/{d}/model.safetensors", "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    head = json.loads(raw[8:8 + n])
    out = {}
    for k, v in head.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        out[k] = np.frombuffer(raw[8 + n + a:8 + n + b], dtype=np.float32)
    return out

one, many = load(sys.argv[1]), load(sys.argv[2])
assert one.keys() == many.keys()
worst = max(float(np.abs(one[k] - many[k]).max()) for k in one)
print(f"max |w_1 - w_N| = {worst:.3e} (bound {sys.argv[3]})")
sys.exit(0 if worst < float(sys.argv[3]) else 1)
PY
