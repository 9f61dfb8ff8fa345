#!/usr/bin/env bash
# Mixup/CutMix pairing in accuracy: `--mixup-mode pair` (our default) against `batch`
# (timm Mixup's default, DeiT main.py), the small student without distillation on the
# quickstart's data (synth seed 0, 1000 train / 500 val images at 40 px), 30 epochs.
#   tools/bench_mixup_modes.sh            # seeds 0 1 2 3
#   SEEDS="0 1" B=target/release/deit-pipe W=/tmp/mixcmp tools/bench_mixup_modes.sh
set -euo pipefail
cd "$(dirname "$0")/.."
B=${B:-target/release/deit-pipe}
W=${W:-/tmp/mixcmp}
if [ ! -d "$W/shards" ]; then
  mkdir -p "$W"
  $B --quiet synth --out "$W/data" --classes 10 --train-per-class 100 --val-per-class 50 --seed 0 >/dev/null
  $B --quiet shard --input "$W/data" --out "$W/shards" --shorter-side 40 --seed 0 >/dev/null
fi
for seed in ${SEEDS:-0 1 2 3}; do
  for mode in pair batch; do
    run="$W/run_${mode}_$seed"
    rm -rf "$run"
    $B --quiet train --data "$W/shards" --config configs/small_image.toml --seed "$seed" \
      --mixup-mode "$mode" --out "$run" >"$W/log_${mode}_$seed" 2>&1
    python3 - "$run/metrics.jsonl" "$mode" "$seed" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"val"' in l]
v = rows[-1]["val"]
print(f"mode {sys.argv[2]} seed {sys.argv[3]}: epoch {rows[-1]['epoch']} val top-1 {v['top1']} "
      f"(cls {v['top1_cls']}, dist {v['top1_dist']}) loss {v['loss']:.4f}")
PY
  done
done
