#!/usr/bin/env bash
# Build Horovod from the PyPI sdist against the frameworks (torch, TensorFlow, or
# both) installed in $PYTHON's environment, install it, and cache the wheel.
# With an NVIDIA GPU and a CUDA build of torch it builds with NCCL.
#
# Horovod 0.28.1 (its last release) no longer builds against current
# frameworks and toolchains as shipped; the patches and settings below are the
# minimum that makes it build, each with its reason. Each patch fails loudly if
# its target text is gone, so a new Horovod release cannot be silently mis-patched.
#
# Environment:
#   PYTHON                 interpreter of the target environment (default: python)
#   HOROVOD_VERSION        sdist version to build (default: 0.28.1)
#   HOROVOD_SDIST          a local horovod-VERSION.tar.gz, for machines without internet
#                          (default: the cached copy, else a download from PyPI)
#   HOROVOD_GPU_OPERATIONS NCCL or none (default: NCCL when nvidia-smi lists a GPU and torch has CUDA)
#   HOROVOD_BUILD_CUDA_CC_LIST  compute capabilities to compile, e.g. 90 (default: the GPUs nvidia-smi lists)
#   HOROVOD_NCCL_INCLUDE, HOROVOD_NCCL_LIB  NCCL to build against (default: the nvidia-nccl wheel's)
#   HOROVOD_CUDA_HOME      the CUDA toolkit (default: derived from nvcc on PATH)
#   HVDTRAIN_WHEELS_DIR    a folder with the cffi and pycparser wheels, for machines without internet
#   HVDTRAIN_CACHE_DIR     wheel and sdist cache (default: ${XDG_CACHE_HOME:-~/.cache}/hvdtrain)
#   HVDTRAIN_BUILD_DRY_RUN 1: print the choices (key, MPI, GPU operations, CUDA, CC list, cffi) and stop
#   MAKEFLAGS              build parallelism (default: -j$(nproc))
#
# With mpicxx on PATH Horovod is built with MPI and Gloo, else with Gloo alone (say, a GPU machine without
# Open MPI): launch with horovodrun --gloo there.
set -euo pipefail

PYTHON=${PYTHON:-python}
HOROVOD_VERSION=${HOROVOD_VERSION:-0.28.1}
CACHE_ROOT=${HVDTRAIN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hvdtrain}

log() { printf '[build_horovod] %s\n' "$*" >&2; }
die() { printf '[build_horovod] ERROR: %s\n' "$*" >&2; exit 1; }

# installed_version DIST...: the first installed distribution's version, or "none".
installed_version() {
  local dist
  for dist in "$@"; do
    "$PYTHON" -c "import importlib.metadata as m; print(m.version('$dist'))" 2>/dev/null && return
  done
  echo none
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
  # Python 3.12 has no distutils: horovodrun imports it (js_run.py), and so does the torch build.
  replace_line "$src/horovod/runner/js_run.py" 'from distutils.spawn import find_executable' \
    'from shutil import which as find_executable' "Python 3.12 has no distutils"
  replace_line "$src/horovod/torch/CMakeLists.txt" \
    'execute_process(COMMAND ${PY_EXE} -c "from distutils.sysconfig import get_python_inc; print(get_python_inc())"' \
    "execute_process(COMMAND \${PY_EXE} -c \"import sysconfig; print(sysconfig.get_path('include'))\"" \
    "Python 3.12 has no distutils"
  # TF 2.21's headers lack highwayhash/farmhash used by the optional XLA ops.
  replace_line "$src/horovod/tensorflow/CMakeLists.txt" \
    'list(APPEND TF_SOURCES "${PROJECT_SOURCE_DIR}/horovod/tensorflow/xla_mpi_ops.cc")' \
    '# xla_mpi_ops.cc removed by hvdtrain: TF >= 2.21 headers lack highwayhash/farmhash' \
    "optional XLA ops do not compile against TF 2.21"
}

# The GPU operations: NCCL where there is an NVIDIA GPU and torch was built with CUDA.
gpu_operations() {
  if [ -n "${HOROVOD_GPU_OPERATIONS:-}" ]; then echo "$HOROVOD_GPU_OPERATIONS"; return; fi
  if nvidia-smi -L 2>/dev/null | grep -q '^GPU ' \
      && "$PYTHON" -c 'import sys, torch; sys.exit(torch.version.cuda is None)' 2>/dev/null; then
    echo NCCL
  else
    echo none
  fi
}

# NCCL from the nvidia-nccl-cu* wheel that CUDA builds of torch depend on: its include/ dir, and a
# lib dir holding the libnccl.so link that the linker looks for (the wheel ships only libnccl.so.2).
configure_nccl() {
  local work=$1 root
  if [ -n "${HOROVOD_NCCL_INCLUDE:-}${HOROVOD_NCCL_HOME:-}" ]; then return; fi
  root=$("$PYTHON" -c 'import nvidia.nccl as n; print(list(n.__path__)[0])' 2>/dev/null) \
    || die "NCCL not found: install the nvidia-nccl-cu12/-cu13 wheel matching torch's CUDA, or set HOROVOD_NCCL_HOME"
  mkdir -p "$work/nccl-lib"
  ln -sf "$root/lib/libnccl.so.2" "$work/nccl-lib/libnccl.so"
  export HOROVOD_NCCL_INCLUDE="$root/include" HOROVOD_NCCL_LIB="$work/nccl-lib" HOROVOD_NCCL_LINK=SHARED
  log "NCCL from $root (include/, libnccl.so -> libnccl.so.2)"
}

# Compute capabilities to compile: HOROVOD_BUILD_CUDA_CC_LIST, else the GPUs present (9.0 -> 90).
cuda_cc_list() {
  if [ -n "${HOROVOD_BUILD_CUDA_CC_LIST:-}" ]; then echo "$HOROVOD_BUILD_CUDA_CC_LIST (from the environment)"; return; fi
  local list
  list=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | tr -d '. ' | sort -u | paste -sd, -)
  echo "${list:-default} (from nvidia-smi)"
}

# The CUDA toolkit: HOROVOD_CUDA_HOME, else CUDA_HOME, else the folder above nvcc's bin/.
cuda_home() {
  local nvcc
  if [ -n "${HOROVOD_CUDA_HOME:-${CUDA_HOME:-}}" ]; then echo "${HOROVOD_CUDA_HOME:-$CUDA_HOME}"; return; fi
  nvcc=$(command -v nvcc 2>/dev/null) || { echo none; return; }
  dirname "$(dirname "$(readlink -f "$nvcc")")"
}

# Where cffi (a build requirement) comes from: installed, HVDTRAIN_WHEELS_DIR, or PyPI.
cffi_source() {
  if "$PYTHON" -c 'import cffi' 2>/dev/null; then echo installed; return; fi
  if [ -n "${HVDTRAIN_WHEELS_DIR:-}" ]; then echo "$HVDTRAIN_WHEELS_DIR"; else echo PyPI; fi
}

install_cffi() {
  local source=$1
  case $source in
    installed) return ;;
    PyPI) "$PYTHON" -m pip install --quiet cffi pycparser \
            || die "cffi and pycparser (build requirements of Horovod) are missing and PyPI is unreachable: put their wheels in a folder and pass HVDTRAIN_WHEELS_DIR=that/folder" ;;
    *) compgen -G "$source/cffi-*.whl" >/dev/null && compgen -G "$source/pycparser-*.whl" >/dev/null \
         || die "HVDTRAIN_WHEELS_DIR=$source must hold both the cffi and the pycparser wheels (pip download cffi pycparser -d $source)"
       "$PYTHON" -m pip install --quiet --no-index --find-links "$source" cffi pycparser ;;
  esac
}

# Settings current toolchains need; each says why.
configure_toolchain() {
  local gcc_major cmake_major
  gcc_major=$(g++ -dumpversion 2>/dev/null | cut -d. -f1)
  if [ "${gcc_major:-0}" -ge 13 ]; then  # GCC 13 no longer includes these transitively; Horovod's sources rely on it
    export CXXFLAGS="${CXXFLAGS:-} -include string -include cstdint -include stdexcept -include limits -include memory"
    log "GCC $gcc_major: adding the standard includes Horovod's sources miss"
  fi
  cmake_major=$(cmake --version | head -1 | grep -oE '[0-9]+' | head -1)
  if [ "${cmake_major:-0}" -ge 4 ]; then  # CMake 4 rejects gloo's cmake_minimum_required below 3.5
    export CMAKE_POLICY_VERSION_MINIMUM=3.5
    log "CMake $cmake_major: CMAKE_POLICY_VERSION_MINIMUM=3.5"
  fi
}

# The sdist: HOROVOD_SDIST, else the cached copy, else PyPI (then cached for offline rebuilds).
fetch_sdist() {
  local work=$1 cached="$CACHE_ROOT/sdist/horovod-$HOROVOD_VERSION.tar.gz"
  if [ -n "${HOROVOD_SDIST:-}" ]; then cp "$HOROVOD_SDIST" "$work/"; return; fi
  if [ ! -f "$cached" ]; then
    "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: "horovod==$HOROVOD_VERSION" -d "$work" \
      || die "could not download horovod==$HOROVOD_VERSION; without internet, pass HOROVOD_SDIST=path/to/the/sdist"
    mkdir -p "$(dirname "$cached")" && cp "$work/horovod-$HOROVOD_VERSION.tar.gz" "$cached"
  fi
  cp "$cached" "$work/"
}

TORCH_VERSION=$(installed_version torch)
TF_VERSION=$(installed_version tensorflow-cpu tensorflow)
[ "$TORCH_VERSION$TF_VERSION" = nonenone ] && die "neither torch nor TensorFlow is installed in $("$PYTHON" -c 'import sys; print(sys.prefix)'); install one before building Horovod"
GPU_OPS=$(gpu_operations)
if command -v mpicxx >/dev/null; then WITH_MPI=yes; else WITH_MPI=no; fi
PY_VERSION=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
KEY="horovod-${HOROVOD_VERSION}_torch-${TORCH_VERSION}_tf-${TF_VERSION}_py-${PY_VERSION}_gpu-${GPU_OPS}"
[ "$WITH_MPI" = no ] && KEY+="_mpi-no"  # a build with MPI keeps the key it always had (caches stay valid)
CFFI_SOURCE=$(cffi_source)
CUDA_DIR=none CC_LIST=none
if [ "$GPU_OPS" != none ]; then CUDA_DIR=$(cuda_home); CC_LIST=$(cuda_cc_list); fi
log "choices: key $KEY; MPI: $WITH_MPI$([ "$WITH_MPI" = no ] && echo ' (no mpicxx: Gloo only)'); GPU operations: $GPU_OPS; CUDA: $CUDA_DIR; CUDA CC list: $CC_LIST; cffi: $CFFI_SOURCE"
if [ "${HVDTRAIN_BUILD_DRY_RUN:-0}" = 1 ]; then exit 0; fi
MODULES=()
[ "$TORCH_VERSION" != none ] && MODULES+=(horovod.torch)
[ "$TF_VERSION" != none ] && MODULES+=(horovod.tensorflow)
IMPORTS=$(IFS=,; echo "${MODULES[*]}")
WHEEL_DIR="$CACHE_ROOT/wheels/$KEY"
# Records which build is installed in this environment (hvdtrain doctor reads it too).
MARKER="$("$PYTHON" -c 'import sys; print(sys.prefix)')/hvdtrain-horovod-build.txt"

if [ "$(cat "$MARKER" 2>/dev/null)" = "$KEY" ] && "$PYTHON" -c "import $IMPORTS" 2>/dev/null; then
  log "Horovod $KEY is already installed"
  exit 0
fi

if ! compgen -G "$WHEEL_DIR/horovod-*.whl" >/dev/null; then
  command -v cmake >/dev/null || die "cmake not found; install it (apt-get install cmake)"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  log "building $KEY (takes ~8 minutes on 2 cores, ~2.5 minutes on 16)"
  fetch_sdist "$work"
  tar -xzf "$work/horovod-$HOROVOD_VERSION.tar.gz" -C "$work"
  apply_patches "$work/horovod-$HOROVOD_VERSION"
  configure_toolchain
  install_cffi "$CFFI_SOURCE"
  # Build for the frameworks that are installed, and say so explicitly (a missing one is skipped, not an error).
  if [ "$TORCH_VERSION" != none ]; then export HOROVOD_WITH_PYTORCH=1; else export HOROVOD_WITHOUT_PYTORCH=1; fi
  if [ "$TF_VERSION" != none ]; then export HOROVOD_WITH_TENSORFLOW=1; else export HOROVOD_WITHOUT_TENSORFLOW=1; fi
  if [ "$GPU_OPS" != none ]; then
    export HOROVOD_GPU_OPERATIONS=$GPU_OPS
    [ "$GPU_OPS" = NCCL ] && configure_nccl "$work"
    [ "${CC_LIST%% *}" != default ] && export HOROVOD_BUILD_CUDA_CC_LIST=${CC_LIST%% *}
    [ "$CUDA_DIR" != none ] && export HOROVOD_CUDA_HOME=$CUDA_DIR CUDA_HOME=${CUDA_HOME:-$CUDA_DIR}
  fi
  if [ "$WITH_MPI" = yes ]; then export HOROVOD_WITH_MPI=1; else export HOROVOD_WITHOUT_MPI=1; fi
  HOROVOD_WITHOUT_MXNET=1 HOROVOD_WITH_GLOO=1 MAKEFLAGS=${MAKEFLAGS:--j$(nproc)} \
    "$PYTHON" -m pip wheel --no-build-isolation --no-deps -w "$work/dist" "$work/horovod-$HOROVOD_VERSION"
  mkdir -p "$WHEEL_DIR.tmp" && cp "$work"/dist/horovod-*.whl "$WHEEL_DIR.tmp/"
  rm -rf "$WHEEL_DIR" && mv "$WHEEL_DIR.tmp" "$WHEEL_DIR"
  log "cached wheel in $WHEEL_DIR"
else
  log "using cached wheel $WHEEL_DIR"
fi
"$PYTHON" -m pip install --quiet --force-reinstall --no-deps "$WHEEL_DIR"/horovod-*.whl
# Horovod's run-time needs; installed only where missing, so an offline machine that has them is fine.
"$PYTHON" -c 'import cloudpickle, psutil, yaml, packaging' 2>/dev/null \
  || "$PYTHON" -m pip install --quiet cloudpickle psutil pyyaml packaging
echo "$KEY" > "$MARKER"
log "installed Horovod $HOROVOD_VERSION ($KEY)"
