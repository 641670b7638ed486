#!/usr/bin/env bash
# Build Horovod from the PyPI sdist against the torch and TensorFlow installed
# in $PYTHON's environment, install it, and cache the wheel.
#
# Horovod 0.28.1 (its last release) no longer builds against current
# frameworks as shipped; the patches below are the minimum that makes it build.
# Each one fails loudly if its target text is gone, so a new Horovod release
# cannot be silently mis-patched.
#
# Environment:
#   PYTHON                 interpreter of the target environment (default: python)
#   HOROVOD_VERSION        sdist version to build (default: 0.28.1)
#   HOROVOD_GPU_OPERATIONS e.g. NCCL for GPU images (passed through to the build)
#   HVDTRAIN_CACHE_DIR     wheel cache (default: ${XDG_CACHE_HOME:-~/.cache}/hvdtrain)
#   MAKEFLAGS              build parallelism (default: -j$(nproc))
set -euo pipefail

PYTHON=${PYTHON:-python}
HOROVOD_VERSION=${HOROVOD_VERSION:-0.28.1}
CACHE_ROOT=${HVDTRAIN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hvdtrain}

log() { printf '[build_horovod] %s\n' "$*" >&2; }
die() { printf '[build_horovod] ERROR: %s\n' "$*" >&2; exit 1; }

framework_version() {
  "$PYTHON" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null \
    || die "$1 is not installed in $("$PYTHON" -c 'import sys; print(sys.prefix)'); install it before building Horovod"
}

# replace_once FILE OLD NEW WHY: replace the exact line OLD by NEW, or fail.
replace_line() {
  local file=$1 old=$2 new=$3 why=$4
  grep -qxF -- "$old" "$file" || die "patch no longer applies: '$old' not found in $file ($why)"
  OLD="$old" NEW="$new" "$PYTHON" - "$file" <<'PY'
import os, sys
path = sys.argv[1]
lines = open(path).read().split("\n")
lines = [os.environ["NEW"] if line.strip() == os.environ["OLD"].strip() else line for line in lines]
open(path, "w").write("\n".join(lines))
PY
  log "patched $file: $why"
}

apply_patches() {
  local src=$1
  # torch >= 2.1 headers require C++17.
  replace_line "$src/CMakeLists.txt" 'set(CMAKE_CXX_STANDARD 14)' 'set(CMAKE_CXX_STANDARD 17)' \
    "torch >= 2.1 requires C++17"
  replace_line "$src/horovod/torch/CMakeLists.txt" '    set(CMAKE_CXX_STANDARD 14)' '    set(CMAKE_CXX_STANDARD 17)' \
    "torch >= 2.1 requires C++17"
  # TF 2.21's headers lack highwayhash/farmhash used by the optional XLA ops.
  replace_line "$src/horovod/tensorflow/CMakeLists.txt" \
    'list(APPEND TF_SOURCES "${PROJECT_SOURCE_DIR}/horovod/tensorflow/xla_mpi_ops.cc")' \
    '# xla_mpi_ops.cc removed by hvdtrain: TF >= 2.21 headers lack highwayhash/farmhash' \
    "optional XLA ops do not compile against TF 2.21"
}

TORCH_VERSION=$(framework_version torch)
TF_VERSION=$(framework_version tensorflow-cpu 2>/dev/null || framework_version tensorflow)
PY_VERSION=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
KEY="horovod-${HOROVOD_VERSION}_torch-${TORCH_VERSION}_tf-${TF_VERSION}_py-${PY_VERSION}_gpu-${HOROVOD_GPU_OPERATIONS:-none}"
WHEEL_DIR="$CACHE_ROOT/wheels/$KEY"
# Records which build is installed in this environment (hvdtrain doctor reads it too).
MARKER="$("$PYTHON" -c 'import sys; print(sys.prefix)')/hvdtrain-horovod-build.txt"

if [ "$(cat "$MARKER" 2>/dev/null)" = "$KEY" ] && "$PYTHON" -c "import horovod.torch, horovod.tensorflow" 2>/dev/null; then
  log "Horovod $KEY is already installed"
  exit 0
fi

if ! compgen -G "$WHEEL_DIR/horovod-*.whl" >/dev/null; then
  command -v cmake >/dev/null || die "cmake not found; install it (apt-get install cmake)"
  command -v mpicxx >/dev/null || die "mpicxx not found; install Open MPI (apt-get install openmpi-bin libopenmpi-dev)"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  log "building $KEY (takes ~8 minutes on 2 cores)"
  "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: "horovod==$HOROVOD_VERSION" -d "$work"
  tar -xzf "$work/horovod-$HOROVOD_VERSION.tar.gz" -C "$work"
  apply_patches "$work/horovod-$HOROVOD_VERSION"
  HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
  HOROVOD_WITH_GLOO=1 HOROVOD_WITH_MPI=1 MAKEFLAGS=${MAKEFLAGS:--j$(nproc)} \
    "$PYTHON" -m pip wheel --no-build-isolation --no-deps -w "$work/dist" "$work/horovod-$HOROVOD_VERSION"
  mkdir -p "$WHEEL_DIR.tmp" && cp "$work"/dist/horovod-*.whl "$WHEEL_DIR.tmp/"
  rm -rf "$WHEEL_DIR" && mv "$WHEEL_DIR.tmp" "$WHEEL_DIR"
  log "cached wheel in $WHEEL_DIR"
else
  log "using cached wheel $WHEEL_DIR"
fi
"$PYTHON" -m pip install --quiet --force-reinstall --no-deps "$WHEEL_DIR"/horovod-*.whl
"$PYTHON" -m pip install --quiet cloudpickle psutil pyyaml packaging
echo "$KEY" > "$MARKER"
log "installed Horovod $HOROVOD_VERSION ($KEY)"
