#!/usr/bin/env bash
# Scaling of data-parallel training on one CPU machine (issue 24, item 6): one process x 2
# threads x global batch G against 2 MPI ranks x 1 thread x G/2 each, same model, same
# recipe, same global batch, no evaluation. Two-rank runs twice: with Open MPI's
# busy-polling wait (`OMPI_MCA_mpi_yield_when_idle=0`, how deit-pipe ran before it set its
# own default) and with deit-pipe's default (`mpi_yield_when_idle=1`, set at MPI start-up
# unless the user set it). Figures: img/s over every epoch but the first (warm-up), from
# metrics.jsonl; the ratio to one process is the scaling efficiency.
#
#   MODEL=small: configs/small_image.toml (DeiT, 32 px, patch 8, dim 128, depth 4; 0.8 M
#                parameters, a 3.3 MB gradient), G = 64, 6 epochs of 15 steps
#   MODEL=tiny:  configs/deit_tiny.toml (DeiT-Ti distilled, 224 px; 5.9 M parameters), G = 16,
#                2 epochs of 6 steps
#
# Data: D/shards from `deit-pipe synth --classes 10 --train-per-class 100 --val-per-class 10
# --seed 0 --out D/folder` and `deit-pipe shard --input D/folder --out D/shards
# --max-side 40` (made when missing). BIN: a `cargo build --release --features mpi` binary.
#
#   MODEL=small tools/bench_dist_scaling.sh 1      # round 1; run it under flock
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
D=${D:-/tmp/dpscale}; BIN=${BIN:-$ROOT/target/release/deit-pipe}; R=${1:-1}
MODEL=${MODEL:-small}
mkdir -p "$D"
if [ ! -d "$D/shards" ]; then
  "$BIN" --quiet synth --classes 10 --train-per-class 100 --val-per-class 10 --seed 0 --out "$D/folder"
  "$BIN" --quiet shard --input "$D/folder" --out "$D/shards" --max-side 40
fi
case "$MODEL" in
  small) G=64; cfg="--config $ROOT/configs/small_image.toml --epochs 6 --warmup-epochs 1" ;;
  tiny) G=16; cfg="--config $ROOT/configs/deit_tiny.toml --epochs 2 --warmup-epochs 1 --accum-steps 1 --set run.max_batches_per_epoch=6" ;;
  *) echo "MODEL=small or MODEL=tiny" >&2; exit 2 ;;
esac
common="train $cfg --data $D/shards --set run.eval_every=0 --quiet"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=${OMPI_MCA_btl_vader_single_copy_mechanism:-none}
tag=$MODEL-$R
rm -rf "$D/$tag-p1" "$D/$tag-busy" "$D/$tag-yield"
# shellcheck disable=SC2086
RAYON_NUM_THREADS=2 "$BIN" $common --out "$D/$tag-p1" --batch-size $G --set data.workers=2 2> "$D/$tag-p1.err"
# shellcheck disable=SC2086
mpirun --bind-to none -np 2 -x RAYON_NUM_THREADS=1 -x OMPI_MCA_mpi_yield_when_idle=0 \
  "$BIN" $common --out "$D/$tag-busy" --batch-size $((G / 2)) --set data.workers=1 2> "$D/$tag-busy.err"
# shellcheck disable=SC2086
mpirun --bind-to none -np 2 -x RAYON_NUM_THREADS=1 \
  "$BIN" $common --out "$D/$tag-yield" --batch-size $((G / 2)) --set data.workers=1 2> "$D/$tag-yield.err"
python3 - "$D" "$tag" <<'PY'
import json, sys
d, tag = sys.argv[1], sys.argv[2]
def last(run):
    ep = [json.loads(l) for l in open(f"{d}/{tag}-{run}/metrics.jsonl")]
    ep = [x for x in ep if x.get("kind") == "epoch"][1:]
    return sum(x["img_per_s"] * x["seconds"] for x in ep) / sum(x["seconds"] for x in ep)
p1, busy, y = last("p1"), last("busy"), last("yield")
print(f"{tag}: 1 process x 2 threads {p1:.1f} img/s | 2 ranks busy-poll {busy:.1f} img/s "
      f"({busy / p1:.2f}) | 2 ranks yield {y:.1f} img/s ({y / p1:.2f})")
PY
