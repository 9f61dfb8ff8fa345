#!/usr/bin/env bash
# Builds `deit-pipe` with candle's `cuda` feature for Hopper (compute capability 9.0, H200)
# on a machine without a CUDA toolkit: nvcc, the CUDA headers and the CUDA 13 libraries
# come from NVIDIA's PyPI wheels into a virtual environment. The binary lands in
# target-cuda/release/deit-pipe. It links the CUDA libraries dynamically (candle
# 0.11 asks cudarc for `dynamic-linking`), so the machine that runs it needs an NVIDIA
# driver for CUDA 13 and the CUDA 13 libraries (cuBLAS, cuRAND, NVRTC) on its library path,
# as the H200 machines have. CI never runs this script.
#
# It also writes target-cuda/deit-pipe.xz (the stripped binary, xz-compressed) and
# target-cuda/curand-stub/ for tools/gpu_check.sh (see below).
#
#   tools/build-cuda.sh            # venv in ~/.cache/deit-pipe-cuda, build with 2 jobs
#   CUDA_VENV=/opt/cu13 tools/build-cuda.sh
#   FEATURES=cuda,mpi tools/build-cuda.sh   # data-parallel over MPI + NCCL (README "Several
#                                           # processes"): also needs mpicc (libopenmpi-dev)
#                                           # and libclang-dev; NCCL comes from PyPI here
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${CUDA_VENV:-$HOME/.cache/deit-pipe-cuda}
CUDA_MAJOR=13

if [ ! -x "$VENV/bin/pip" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --upgrade \
    "nvidia-cuda-nvcc==${CUDA_MAJOR}.*" "nvidia-cuda-runtime==${CUDA_MAJOR}.*" \
    "nvidia-cuda-cccl==${CUDA_MAJOR}.*" "nvidia-cuda-nvrtc==${CUDA_MAJOR}.*" \
    "nvidia-cublas==${CUDA_MAJOR}.*" nvidia-curand
FEATURES=${FEATURES:-cuda}
case ",$FEATURES," in
    *,mpi,*)
        # NCCL for cudarc's `nccl` bindings (linked like the other CUDA libraries).
        "$VENV/bin/pip" install --quiet --upgrade "nvidia-nccl-cu${CUDA_MAJOR}"
        command -v mpicc > /dev/null || {
            echo "build-cuda: FEATURES=$FEATURES needs mpicc: apt-get install libopenmpi-dev openmpi-bin libclang-dev" >&2
            exit 1
        }
        ;;
esac

# The wheels install under site-packages/nvidia/cu13 (bin/, include/, lib/).
NVCC=$(find "$VENV" -path '*/bin/nvcc' -type f | head -n 1)
if [ -z "$NVCC" ]; then
    echo "build-cuda: no nvcc found under $VENV after pip install" >&2
    exit 1
fi
CUDA_HOME=$(dirname "$(dirname "$NVCC")")
echo "build-cuda: nvcc $("$NVCC" --version | tail -n 1) at $CUDA_HOME"

# Link-time library directories: every lib/ of the NVIDIA wheels, plus a libcuda stub
# (the driver library exists only on GPU machines; the stub satisfies the linker).
LIBDIRS=$(find "$VENV" -type d -path '*/nvidia/*/lib' | sort -u | paste -sd: -)
# Unversioned names for the linker (`-lcublas` wants libcublas.so).
SHIM="$VENV/link-shim"
mkdir -p "$SHIM"
for dir in ${LIBDIRS//:/ }; do
    for lib in "$dir"/lib*.so.*; do
        [ -e "$lib" ] || continue
        base=$(basename "$lib")
        ln -sf "$lib" "$SHIM/${base%%.so.*}.so"
    done
done
# libcuda comes with the driver, not with the wheels. Link against a stub with the same
# SONAME (libcuda.so.1) that defines every driver function cudarc declares; at run time the
# driver's real libcuda.so.1 is loaded in its place, as with the toolkit's stubs/libcuda.so.
cd "$ROOT"
cargo fetch --quiet
CUDARC_SRC=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -maxdepth 2 -type d -name 'cudarc-0.19.*' | sort | tail -n 1)
if [ -z "$CUDARC_SRC" ]; then
    echo "build-cuda: cudarc sources not found after cargo fetch" >&2
    exit 1
fi
grep -oE '^\s+fn cu[A-Za-z0-9_]+\(' "$CUDARC_SRC/src/driver/sys/mod.rs" \
    | sed -E 's/^\s+fn //; s/\($//' | sort -u \
    | sed 's/.*/int &(void) { return 999; }/' > "$SHIM/cuda_stub.c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$SHIM/libcuda.so" "$SHIM/cuda_stub.c"

export PATH="$CUDA_HOME/bin:$PATH"
export CUDA_ROOT="$CUDA_HOME" CUDA_PATH="$CUDA_HOME" CUDA_TOOLKIT_ROOT_DIR="$CUDA_HOME"
export CUDA_COMPUTE_CAP=90
# cudarc 0.19 knows CUDA up to 13.4 and reads the version from nvcc; newer wheels say 13.5+.
export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13040}
export LIBRARY_PATH="$SHIM:$LIBDIRS${LIBRARY_PATH:+:$LIBRARY_PATH}"
export RUSTFLAGS="${RUSTFLAGS:-} -L native=$SHIM"
export CARGO_TARGET_DIR="$ROOT/target-cuda"

cargo build --release --features "$FEATURES" -j "${JOBS:-2}"
echo "build-cuda: built $CARGO_TARGET_DIR/release/deit-pipe with features $FEATURES (run it with --device cuda)"

# For a GPU machine (tools/gpu_check.sh): the binary (about 80 MB, over what the device
# tool carries) stripped and xz-compressed (about 10 MB), and a stand-in libcurand.so.10.
# candle's CudaDevice creates a cuRAND generator when it opens the device, but deit-pipe
# draws no random numbers on the device (its RNGs are ChaCha8 on the CPU), and torch's
# CUDA 13 wheels do not ship cuRAND. gpu_check.sh puts the stand-in on the library path
# only when no real libcurand.so.10 is found; its generate functions fail with
# CURAND_STATUS_INTERNAL_ERROR (999) rather than return unfilled memory.
strip -o "$CARGO_TARGET_DIR/deit-pipe.stripped" "$CARGO_TARGET_DIR/release/deit-pipe"
xz -T0 -6 -c "$CARGO_TARGET_DIR/deit-pipe.stripped" > "$CARGO_TARGET_DIR/deit-pipe.xz"
rm -f "$CARGO_TARGET_DIR/deit-pipe.stripped"
STUB="$CARGO_TARGET_DIR/curand-stub"
mkdir -p "$STUB"
{
    echo 'int curandCreateGenerator(void **g, int kind) { (void)kind; if (g) *g = 0; return 0; }'
    grep -oE '^\s+(pub )?fn curand[A-Za-z0-9_]+\(' "$CUDARC_SRC/src/curand/sys/mod.rs" \
        | sed -E 's/^\s+(pub )?fn //; s/\($//' | sort -u | grep -vx curandCreateGenerator \
        | while read -r f; do
            case "$f" in
                curandGenerate*|curandCreate*|curandGet*) echo "int $f(void) { return 999; }" ;;
                *) echo "int $f(void) { return 0; }" ;;
            esac
        done
} > "$STUB/curand_stub.c"
# The binary asks for symbols of version `libcurand.so.10`, as the real library defines them.
echo 'libcurand.so.10 { global: *; };' > "$STUB/curand.map"
cc -shared -fPIC -Wl,-soname,libcurand.so.10 -Wl,--version-script,"$STUB/curand.map" \
    -o "$STUB/libcurand.so.10" "$STUB/curand_stub.c"
echo "build-cuda: for a GPU machine carry target-cuda/deit-pipe.xz and target-cuda/curand-stub" \
    "($(du -sh "$CARGO_TARGET_DIR/deit-pipe.xz" | cut -f1)) and run tools/gpu_check.sh"
