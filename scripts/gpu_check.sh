#!/usr/bin/env bash
# The whole GPU check in one call on a GPU machine: its facts, Horovod built with NCCL, hvdtrain installed,
# `hvdtrain doctor`, the GPU suite, and a short ResNet-50 benchmark. Each stage has its own time limit and
# log under OUT; OUT/summary.txt has one line per stage (name, exit status, seconds).
#
#   bash scripts/gpu_check.sh OUT [PYTHON]        # PYTHON: the machine's own (default: python3)
#   GPU_CHECK_DRY_RUN=1 bash scripts/gpu_check.sh OUT   # on the CPU: the same stages' choices, nothing built
#
# It installs nothing from the internet: the Horovod sdist and the wheels it needs (cffi, pycparser, pytest,
# tqdm, ...) come from GPU_CHECK_CARRY (default .gpu-carry, which `make gpu-carry` fills on a machine with
# internet; the device tool carries it with `carry: [".gpu-carry"]`). Budget: about 9 minutes in all.
set -uo pipefail

OUT=${1:?usage: gpu_check.sh OUT [PYTHON]}
PYTHON=${2:-${PYTHON:-python3}}
CARRY=${GPU_CHECK_CARRY:-.gpu-carry}
DRY=${GPU_CHECK_DRY_RUN:-0}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
: > "$OUT/summary.txt"

# stage NAME SECONDS COMMAND...: run COMMAND under a time limit, log to OUT/NAME.log, record the outcome.
stage() {
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  printf '%-10s rc=%-3s %4ss  (limit %ss)\n' "$name" "$rc" "$(( $(date +%s) - start ))" "$limit" | tee -a "$OUT/summary.txt"
  return "$rc"
}

facts() {
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1 || echo "no nvidia-smi"
  command -v nvcc >/dev/null && nvcc --version | tail -2 || echo "no nvcc"
  "$PYTHON" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda",
torch.version.cuda, "gpus", torch.cuda.device_count(), "nccl", torch.cuda.nccl.version() if torch.cuda.is_available() else None)'
  for tool in mpirun mpicxx gcc cmake; do printf '%s: %s\n' "$tool" "$(command -v "$tool" || echo missing)"; done
  gcc --version 2>/dev/null | head -1
  cmake --version 2>/dev/null | head -1
  nproc
}

# The wheels hvdtrain, Horovod and the suite need at run time, offline; what is installed already stays.
install_carried() {
  [ -d "$CARRY" ] || { echo "no $CARRY: run make gpu-carry on a machine with internet, and carry it"; return 1; }
  "$PYTHON" -m pip install --no-index --find-links "$CARRY" --no-deps $(ls "$CARRY"/*.whl) \
    && "$PYTHON" -m pip install --no-deps --no-build-isolation --no-index -e .
}

build() {
  PYTHON="$PYTHON" HOROVOD_SDIST="$(ls "$CARRY"/horovod-*.tar.gz 2>/dev/null | head -1)" \
    HVDTRAIN_WHEELS_DIR="$CARRY" HVDTRAIN_BUILD_DRY_RUN="$DRY" bash scripts/build_horovod.sh
}

export OUT PYTHON CARRY DRY
export -f facts install_carried build
stage facts 30 bash -c facts
if [ "$DRY" = 1 ]; then
  stage build 60 bash -c build
  stage collect 120 "$PYTHON" -m pytest tests/gpu -m gpu --collect-only -q -p no:cacheprovider
  stage bench-args 60 "$PYTHON" -m benchmarks.gpu --help
  exit 0
fi
stage install 120 bash -c install_carried || exit 1
stage build 300 bash -c build || exit 1
stage doctor 60 "$PYTHON" -m hvdtrain doctor
stage gpu-tests 300 "$PYTHON" -m pytest tests/gpu -m gpu -q -p no:cacheprovider -rA --junitxml "$OUT/gpu-tests.xml"
stage gpu-bench 180 "$(dirname "$PYTHON")/horovodrun" -np 1 --gloo "$PYTHON" -m benchmarks.gpu --warmup 5 --steps 20 \
  --output "$OUT/performance-gpu.md"
cat "$OUT/summary.txt"
