#!/usr/bin/env bash
# 1 process x 2 threads x batch 64 against 2 MPI ranks x 1 thread x batch 32 (small ViT:
# patch 4, dim 192, depth 12, 32 px), 2 epochs of 15 steps, no eval; img/s of epoch 2.
set -euo pipefail
# Data: deit-pipe synth --out $D/folder --classes 10 --train-per-class 100 --val-per-class 10
#       --seed 0; deit-pipe shard --input $D/folder --out $D/shards --max-side 40.
# BIN: a `cargo build --release --features mpi` binary. Usage: tools/bench_dist.sh ROUND
D=${D:-/tmp/dpbench}; BIN=${BIN:-$D/deit-pipe-mpi}; R=${1:-1}
common="train --config configs/small_image.toml --data $D/shards --epochs 2 --warmup-epochs 1 --set model.patch_size=4 --set model.embed_dim=192 --set model.depth=12 --set model.num_heads=3 --set run.eval_every=0 --quiet"
rm -rf $D/p1-$R $D/p2-$R
RAYON_NUM_THREADS=2 $BIN $common --out $D/p1-$R --batch-size 64 --set data.workers=2 2> $D/p1-$R.err
OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none \
  mpirun --bind-to none -np 2 -x RAYON_NUM_THREADS=1 $BIN $common --out $D/p2-$R --batch-size 32 --set data.workers=1 2> $D/p2-$R.err
for r in p1 p2; do
  python3 -c "
import json,sys
recs=[json.loads(l) for l in open('$D/$r-$R/metrics.jsonl')]
ep=[x for x in recs if x.get('kind')=='epoch']
print('$r', ' '.join(f\"ep{x['epoch']} {x['img_per_s']:.1f} img/s {x['seconds']:.2f} s\" for x in ep))"
done
grep -h "all-reduces" $D/p2-$R.err | sed 's/\x1b\[[0-9;]*m//g'
