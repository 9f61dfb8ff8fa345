#!/usr/bin/env bash
# The one script to run on a GPU machine (issue 7): CUDA logits against CPU logits, and
# DeiT-Ti 224 throughput of deit-pipe against timm (PyTorch, fp32 and AMP) on the same GPU.
#
# Needs: the CUDA build of deit-pipe (tools/build-cuda.sh builds target-cuda/release/deit-pipe
# on a machine without a GPU, about 80 MB; it also writes target-cuda/deit-pipe.xz, about
# 10 MB, which this script unpacks when the binary itself is missing, and
# target-cuda/curand-stub/, used only when no libcurand.so.10 is installed: carry those two),
# an NVIDIA driver, the CUDA 13 libraries (found through ldconfig or the python nvidia
# wheels), and python with torch + timm + safetensors. No network, no Rust toolchain.
#
#   tools/gpu_check.sh                       # from the repository root; writes $OUT
#   OUT=/tmp/gc BATCH=64 tools/gpu_check.sh  # other output folder / batch size
#
# Environment: OUT (default ./gpu-check-out), DEIT_PIPE_BIN (default
# target-cuda/release/deit-pipe), PYTHON (default python3), BATCH (128), ITERS (10),
# NUM_IMAGES (8), WEIGHTS (a deit_tiny_distilled_patch16_224 safetensors/pth to use instead
# of random-init timm weights), TOTAL_S (time budget of all steps together, default 420 s).
#
# Steps (each under `timeout`; a failing step is recorded and the script goes on, so one
# run yields every figure it can; steps that would start past the budget are skipped):
#   1. ldd of the binary (after locating the CUDA libraries), nvidia-smi, versions
#   2. `deit-pipe synth`: a few small images
#   3. random-init timm deit_tiny_distilled_patch16_224 weights (timm key names) -> safetensors
#   4. `deit-pipe predict --json` on cpu and on cuda (f32), compared in python:
#      max |cuda - cpu| / max |cpu| over all logits, PASS under 1e-3
#   5. `deit-pipe bench model --device cuda` (DeiT-Ti 224, batch 128) with --precision bf16
#      and f32; `tools/bench_timm_model.py --device cuda` with --amp (bf16), without, and
#      with --amp --amp-dtype float16 (GradScaler, as the official DeiT trains)
#   6. on a machine with 2+ GPUs and mpirun (binary from FEATURES=cuda,mpi
#      tools/build-cuda.sh): tools/dist_invariance.sh with DEVICE=cuda NP=2, 1 GPU x batch
#      16 against 2 GPUs x 8 over NCCL, max weight difference (issue 17)
# Output: $OUT/gpu_check.log (everything), $OUT/<step>.txt / .err (each step's output),
# $OUT/summary.md (a section ready to paste into BENCHMARKS.md), $OUT/work/ (inputs).
# Exit status: 0 when every step passed, 1 otherwise (the summary lists the failures).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/gpu-check-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$OUT/work
mkdir -p "$WORK"
BIN=${DEIT_PIPE_BIN:-$ROOT/target-cuda/release/deit-pipe}
PY=${PYTHON:-python3}
BATCH=${BATCH:-128}
ITERS=${ITERS:-10}
NUM_IMAGES=${NUM_IMAGES:-8}
TOTAL_S=${TOTAL_S:-420}
LOG=$OUT/gpu_check.log
SUMMARY=$OUT/summary.md
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1

START=$(date +%s)
FAILED=()
SKIPPED=()

# step NAME LIMIT_S CMD...: runs CMD under timeout (capped by what is left of TOTAL_S),
# stdout to $OUT/NAME.txt, stderr to $OUT/NAME.err, both echoed to the log; records a failure.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((START + TOTAL_S - $(date +%s)))
    if [ "$left" -lt 15 ]; then
        echo "=== $name: SKIPPED (time budget of ${TOTAL_S}s spent)"
        SKIPPED+=("$name")
        return 0
    fi
    if [ "$limit" -gt "$left" ]; then
        limit=$left
    fi
    echo "=== $name (timeout ${limit}s): $*"
    local rc=0 t0
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.txt" 2> "$OUT/$name.err" || rc=$?
    cut -c1-300 "$OUT/$name.txt" # predict's JSON lines are long; the .txt file has them whole
    if [ -s "$OUT/$name.err" ]; then
        echo "--- $name stderr (last 40 lines):"
        tail -n 40 "$OUT/$name.err"
    fi
    if [ "$rc" -ne 0 ]; then
        if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
            rc="$rc, timed out"
        fi
        echo "=== $name: FAILED (rc $rc) after $(($(date +%s) - t0))s"
        FAILED+=("$name (rc $rc)")
    else
        echo "=== $name: ok after $(($(date +%s) - t0))s"
    fi
    return 0
}

# Samples the GPU's used memory (nvidia-smi, MiB) every 200 ms into $OUT/NAME.mem while a
# benchmark runs: the peak includes the CUDA context and, for torch, its allocator's cache.
MEMPID=
mem_start() {
    MEMPID=
    command -v nvidia-smi > /dev/null || return 0
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 200 \
        > "$OUT/$1.mem" 2> /dev/null &
    MEMPID=$!
}
mem_stop() {
    if [ -n "$MEMPID" ]; then
        kill "$MEMPID" 2> /dev/null || true
        wait "$MEMPID" 2> /dev/null || true
    fi
    MEMPID=
}
mem_peak() { # NAME -> peak used MiB minus the idle baseline, or "n/a"
    local f=$OUT/$1.mem
    [ -s "$f" ] || { echo "n/a"; return 0; }
    awk -v base="${MEM_BASE:-0}" '$1 ~ /^[0-9]+$/ && $1 > m {m = $1} END {if (m == "") print "n/a"; else print m - base}' "$f"
}

echo "gpu_check: $(date -u +%FT%TZ) on $(hostname), repo $ROOT, out $OUT"
echo "gpu_check: git $(git rev-parse --short HEAD 2> /dev/null || echo unknown)" \
    "($(git status --porcelain 2> /dev/null | wc -l | tr -d ' ') changed files)"

# --- the binary ---------------------------------------------------------------------------
if [ ! -x "$BIN" ] && [ -f "$ROOT/target-cuda/deit-pipe.xz" ]; then
    echo "gpu_check: unpacking target-cuda/deit-pipe.xz"
    mkdir -p "$WORK/bin"
    if command -v xz > /dev/null; then
        xz -dc "$ROOT/target-cuda/deit-pipe.xz" > "$WORK/bin/deit-pipe"
    else
        "$PY" -c 'import lzma, shutil, sys
with lzma.open(sys.argv[1]) as s, open(sys.argv[2], "wb") as d: shutil.copyfileobj(s, d)' \
            "$ROOT/target-cuda/deit-pipe.xz" "$WORK/bin/deit-pipe"
    fi
    chmod +x "$WORK/bin/deit-pipe"
    BIN=$WORK/bin/deit-pipe
fi
if [ ! -x "$BIN" ]; then
    echo "gpu_check: no binary at $BIN (build it with tools/build-cuda.sh and carry it over)"
    exit 2
fi

# --- CUDA libraries: ldconfig first, then the python nvidia wheels, then toolkit dirs ------
NEEDED_LIBS="libcuda.so.1 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libcudart.so.13 libnvrtc.so.13"
SITE_DIRS=$("$PY" -c 'import site, sys
print("\n".join(site.getsitepackages() + [site.getusersitepackages()] + sys.path))' 2> /dev/null || true)
CANDIDATES=$(
    for d in $SITE_DIRS; do
        [ -d "$d/nvidia" ] && find "$d/nvidia" -maxdepth 3 -type d -name lib 2> /dev/null
        [ -d "$d/torch/lib" ] && echo "$d/torch/lib"
    done
    ls -d /usr/local/cuda*/lib64 /usr/local/cuda*/targets/*/lib /usr/lib/x86_64-linux-gnu 2> /dev/null || true
)
LIBPATH=
CURAND_NOTE=
add_dir() {
    case ":$LIBPATH:" in *":$1:"*) ;; *) LIBPATH=${LIBPATH:+$LIBPATH:}$1 ;; esac
}
for lib in $NEEDED_LIBS; do
    where=$({ ldconfig -p 2> /dev/null || /sbin/ldconfig -p 2> /dev/null; } | awk -v l="$lib" '$1 == l {print $NF}' | head -n 1 || true)
    if [ -n "$where" ]; then
        echo "gpu_check: $lib from ldconfig: $where"
        continue
    fi
    found=
    for d in $CANDIDATES; do
        if [ -e "$d/$lib" ]; then
            found=$d
            break
        fi
    done
    if [ -n "$found" ]; then
        echo "gpu_check: $lib in $found"
        add_dir "$found"
    elif [ "$lib" = libcurand.so.10 ] && [ -e "$ROOT/target-cuda/curand-stub/$lib" ]; then
        # torch's CUDA 13 wheels ship no cuRAND; deit-pipe draws no random numbers on the
        # device, so build-cuda.sh's stand-in only has to let candle open the device.
        echo "gpu_check: $lib not found; using the stand-in target-cuda/curand-stub/$lib"
        add_dir "$ROOT/target-cuda/curand-stub"
        CURAND_NOTE=" cuRAND: the stand-in from build-cuda.sh (none installed)."
    else
        echo "gpu_check: $lib NOT FOUND (ldconfig, python nvidia wheels, /usr/local/cuda*)"
    fi
done
export LD_LIBRARY_PATH="${LIBPATH}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "gpu_check: LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
echo "=== ldd $BIN"
ldd "$BIN" || true
if ldd "$BIN" 2> /dev/null | grep -q 'not found'; then
    FAILED+=("ldd (missing libraries)")
fi

step nvidia_smi 20 nvidia-smi
GPU_NAME=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader -i 0 2> /dev/null || echo "unknown GPU")
MEM_BASE=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 2> /dev/null | head -n 1 || echo 0)
MEM_BASE=${MEM_BASE:-0}
step versions 60 "$PY" -c 'import torch, timm
print("torch", torch.__version__, "cuda", torch.version.cuda, "timm", timm.__version__,
      "gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")'
NPROC=$(nproc 2> /dev/null || echo 16)

# --- inputs -------------------------------------------------------------------------------
step synth 60 "$BIN" --quiet synth --out "$WORK/synth" --classes 4 --train-per-class 2 \
    --val-per-class 1 --seed 7
mapfile -t IMAGES < <(find "$WORK/synth" -type f \( -iname '*.png' -o -iname '*.jpg' -o -iname '*.jpeg' \) 2> /dev/null | sort | head -n "$NUM_IMAGES")
echo "gpu_check: ${#IMAGES[@]} images"

MODEL=deit_tiny_distilled_patch16_224
if [ -n "${WEIGHTS:-}" ]; then
    W=$WEIGHTS
    echo "gpu_check: weights $W (from WEIGHTS)"
else
    W=$WORK/$MODEL.safetensors
    # Random-init timm weights, perturbed as tools/make_model_fixtures.py does (so biases
    # and norms are not trivial), saved with timm key names in f32.
    step weights 120 "$PY" - "$W" << 'EOF'
import sys
import torch
import timm
from safetensors.torch import save_file

gen = torch.Generator().manual_seed(7)
m = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False)
with torch.no_grad():
    for name, t in m.state_dict().items():
        if not t.is_floating_point():
            continue
        noise = torch.randn(t.shape, generator=gen, dtype=t.dtype)
        if name.endswith(("cls_token", "dist_token", "pos_embed")):
            t.copy_(0.02 * noise)
        elif t.dim() <= 1:
            t.add_(0.1 * noise)
sd = {k: v.detach().float().contiguous() for k, v in m.state_dict().items()}
save_file(sd, sys.argv[1])
print(f"wrote {sys.argv[1]}: {len(sd)} tensors, {sum(v.numel() for v in sd.values())} values")
EOF
fi

# --- correctness: CUDA logits against CPU logits (f32) ------------------------------------
REL="n/a"
VERDICT="not run"
if [ "${#IMAGES[@]}" -gt 0 ] && [ -f "$W" ]; then
    step predict_cpu 120 "$BIN" --quiet predict --device cpu --model "$MODEL" --weights "$W" \
        --json --batch 16 "${IMAGES[@]}"
    step predict_cuda 120 "$BIN" --quiet predict --device cuda --model "$MODEL" --weights "$W" \
        --json --batch 16 "${IMAGES[@]}"
    step compare 60 "$PY" - "$OUT/predict_cpu.txt" "$OUT/predict_cuda.txt" << 'EOF'
import json
import math
import sys

def load(path):
    rows = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                r = json.loads(line)
                rows[r["file"]] = r["logits"]
    return rows

cpu, cuda = load(sys.argv[1]), load(sys.argv[2])
if not cpu or set(cpu) != set(cuda):
    print(f"FAIL: {len(cpu)} cpu rows, {len(cuda)} cuda rows, files differ or none")
    sys.exit(1)
max_diff = max_ref = 0.0
sq_diff = sq_ref = 0.0
top1 = 0
worst_elem = 0.0
for k in sorted(cpu):
    a, b = cpu[k], cuda[k]
    assert len(a) == len(b), k
    scale = max(abs(v) for v in a)
    for x, y in zip(a, b):
        d = abs(x - y)
        max_diff = max(max_diff, d)
        sq_diff += d * d
        sq_ref += x * x
        # element-wise relative error, floored at 1% of the row's largest logit
        worst_elem = max(worst_elem, d / max(abs(x), 0.01 * scale))
    max_ref = max(max_ref, scale)
    top1 += max(range(len(a)), key=a.__getitem__) == max(range(len(b)), key=b.__getitem__)
rel = max_diff / max_ref
l2 = math.sqrt(sq_diff / sq_ref)
print(f"images {len(cpu)}, classes {len(next(iter(cpu.values())))}")
print(f"max |cuda - cpu| = {max_diff:.3e}, max |cpu| = {max_ref:.3e}")
print(f"relative error (max abs diff / max abs logit): {rel:.3e}")
print(f"relative L2 error: {l2:.3e}; element-wise (floor 1% of row max): {worst_elem:.3e}")
print(f"top-1 agreement: {top1}/{len(cpu)}")
ok = rel < 1e-3
print(f"RESULT {'PASS' if ok else 'FAIL'} rel {rel:.3e} (bound 1e-3)")
sys.exit(0 if ok else 1)
EOF
    REL=$(awk '/^RESULT/ {print $4; exit}' "$OUT/compare.txt" 2> /dev/null || true)
    VERDICT=$(awk '/^RESULT/ {print $2; exit}' "$OUT/compare.txt" 2> /dev/null || true)
    REL=${REL:-n/a}
    VERDICT=${VERDICT:-FAIL (no result)}
fi

# --- throughput: DeiT-Ti 224, batch $BATCH ------------------------------------------------
BENCH_ARGS=(--model deit_tiny --img 224 --batch "$BATCH" --iters "$ITERS")
bench() { # NAME LIMIT CMD...
    local name=$1
    mem_start "$name"
    step "$@"
    mem_stop
}
bench dp_bf16 150 "$BIN" --quiet bench model --device cuda --precision bf16 \
    --threads "$NPROC" "${BENCH_ARGS[@]}"
bench timm_amp_bf16 120 "$PY" tools/bench_timm_model.py --device cuda --amp \
    --threads "$NPROC" "${BENCH_ARGS[@]}"
bench dp_f32 150 "$BIN" --quiet bench model --device cuda --precision f32 \
    --threads "$NPROC" "${BENCH_ARGS[@]}"
bench timm_f32 120 "$PY" tools/bench_timm_model.py --device cuda \
    --threads "$NPROC" "${BENCH_ARGS[@]}"
bench timm_amp_fp16 120 "$PY" tools/bench_timm_model.py --device cuda --amp \
    --amp-dtype float16 --threads "$NPROC" "${BENCH_ARGS[@]}"

# --- data parallel over NCCL (issue 17): only where 2+ GPUs and mpirun are present -------
NGPU=$(nvidia-smi -L 2> /dev/null | grep -c '^GPU' || true)
NCCL_NOTE="not run (needs 2+ GPUs, mpirun and a \`FEATURES=cuda,mpi tools/build-cuda.sh\` binary; this machine has ${NGPU:-0} GPU(s))"
if [ "${NGPU:-0}" -ge 2 ] && command -v mpirun > /dev/null; then
    step nccl_invariance 240 env BIN="$BIN" DEVICE=cuda NP=2 OUT="$WORK/dpinv" \
        PYTHON="$PY" tools/dist_invariance.sh
    NCCL_NOTE=$(grep -h 'max |w_1' "$OUT/nccl_invariance.txt" 2> /dev/null || echo "failed, see nccl_invariance.err")
fi

# --- summary ------------------------------------------------------------------------------
fig() { # NAME PATTERN -> the number before "img/s" on the matching line, or "n/a"
    local v
    v=$(awk -v p="$2" 'index($0, p) {print $(NF - 1); exit}' "$OUT/$1.txt" 2> /dev/null || true)
    echo "${v:-n/a}"
}
devmem() { # NAME -> the program's own peak memory figure (torch), or "n/a"
    local v
    v=$(awk '/peak device memory:/ && $4 ~ /^[0-9.]+$/ {print $4; exit}' "$OUT/$1.txt" 2> /dev/null || true)
    echo "${v:-n/a}"
}
ratio() { # A B -> A / B with 2 decimals, or "n/a"
    awk -v a="$1" -v b="$2" 'BEGIN {if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%.2f", a / b; else print "n/a"}'
}
row() { # LABEL NAME
    echo "| $1 | $(fig "$2" 'forward (eval)') | $(fig "$2" 'train step') | $(devmem "$2") | $(mem_peak "$2") |"
}
TORCH_VER=$(head -n 1 "$OUT/versions.txt" 2> /dev/null || echo "unknown")
{
    echo "## GPU check: CUDA against CPU, DeiT-Ti on $GPU_NAME ($(date -u +%F))"
    echo
    echo "\`tools/gpu_check.sh\` (issue 7), git $(git rev-parse --short HEAD 2> /dev/null || echo unknown)," \
        "binary from \`tools/build-cuda.sh\`; $TORCH_VER.$CURAND_NOTE"
    echo
    echo "Correctness: \`deit-pipe predict --json\` of random-init timm DeiT-Ti distilled weights" \
        "on ${#IMAGES[@]} synth images, f32, \`--device cuda\` against \`--device cpu\`:" \
        "max |cuda - cpu| / max |cpu| = $REL, **$VERDICT** (bound 1e-3)."
    echo
    echo "Throughput: DeiT-Ti distilled (\`deit_tiny\`), 224 px, batch $BATCH, $ITERS timed" \
        "iterations after 2 warm-up ones; train step = forward, both heads' CE, backward, AdamW." \
        "deit-pipe: \`bench model --device cuda\`; timm: \`tools/bench_timm_model.py --device cuda\`" \
        "(AMP = torch.autocast; fp16 with a GradScaler). Memory: the program's own peak" \
        "(torch.cuda.max_memory_allocated; candle has none) and the GPU's used memory peak" \
        "over the idle baseline sampled by nvidia-smi every 200 ms (includes the CUDA context" \
        "and torch's allocator cache)."
    echo
    echo "| GPU run | forward img/s | train img/s | peak allocated MiB | nvidia-smi peak MiB |"
    echo "|---|---:|---:|---:|---:|"
    row "deit-pipe bf16 (\`--precision bf16\`)" dp_bf16
    row "timm AMP bf16 (\`--amp\`)" timm_amp_bf16
    row "deit-pipe f32" dp_f32
    row "timm fp32" timm_f32
    row "timm AMP fp16 + GradScaler" timm_amp_fp16
    echo
    echo "Data parallel, 1 GPU x batch 16 against 2 GPUs x 8 over NCCL" \
        "(\`tools/dist_invariance.sh\`, f32): $NCCL_NOTE."
    echo
    echo "Train img/s, deit-pipe / timm: bf16 vs AMP bf16" \
        "$(ratio "$(fig dp_bf16 'train step')" "$(fig timm_amp_bf16 'train step')")x," \
        "f32 vs fp32 $(ratio "$(fig dp_f32 'train step')" "$(fig timm_f32 'train step')")x," \
        "bf16 vs AMP fp16 $(ratio "$(fig dp_bf16 'train step')" "$(fig timm_amp_fp16 'train step')")x."
    if [ "${#FAILED[@]}" -gt 0 ] || [ "${#SKIPPED[@]}" -gt 0 ]; then
        echo
        if [ "${#FAILED[@]}" -gt 0 ]; then
            echo "Failed steps: ${FAILED[*]} (see gpu_check.log)."
        fi
        if [ "${#SKIPPED[@]}" -gt 0 ]; then
            echo "Skipped (time budget): ${SKIPPED[*]}."
        fi
    fi
} > "$SUMMARY"
echo "=== summary ($SUMMARY), $(($(date +%s) - START))s in all"
cat "$SUMMARY"
[ "${#FAILED[@]}" -eq 0 ] && [ "${#SKIPPED[@]}" -eq 0 ]
