#!/usr/bin/env bash
# Runs both PyTorch examples for a few steps on CPU over a small synthetic data set:
# fill a cache with a (random, seeded) timm ResNet-18 teacher, check it with
# `deit-pipe cache inspect`, train a timm DeiT from it with hard distillation.
# Usage: smoke.sh PYTHON DEIT_PIPE_BINARY   (.ci/run calls it)
set -euo pipefail
PY="${1:?python}"
BIN="$(realpath "${2:?deit-pipe binary}")"
HERE="$(cd "$(dirname "$0")" && pwd)"
CONFIG="$HERE/../../configs/small_image.toml"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
"$BIN" --quiet synth --classes 4 --train-per-class 16 --val-per-class 4 --out "$TMP/folder"
"$BIN" --quiet shard --max-side 40 --format raw --input "$TMP/folder" --out "$TMP/shards"
"$PY" "$HERE/fill_cache_torch.py" --data "$TMP/shards" --config "$CONFIG" --out "$TMP/cache" \
  --teacher resnet18 --epochs 0..2 --top-k 3 --batch-size 32 --threads 2 --device cpu
"$BIN" --quiet cache inspect "$TMP/cache" --data "$TMP/shards"
"$PY" "$HERE/train_deit_torch.py" --data "$TMP/shards" --config "$CONFIG" \
  --teacher-cache "$TMP/cache" --model deit_tiny_distilled_patch16_224 --patch-size 8 \
  --epochs 2 --steps 3 --batch-size 16 --threads 2 --device cpu
