# hvdtrain developer commands. `make setup` then `make test` on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOROVODRUN ?= $(VENV)/bin/horovodrun
BENCH_GPU_ARGS ?=  # e.g. --steps 20 --output $$OUT/performance-gpu.md (python -m benchmarks.gpu --help)
NP ?= 2

.PHONY: setup test test-docker test-gpu unit parallel lint demo bench bench-setup bench-gpu gpu-carry clean doctor slurm-up slurm-down

# Every target that runs something first brings the environment up to date: `make setup` runs again
# when one of its inputs is newer than the stamp it leaves (and on a fresh clone, which has none).
SETUP_INPUTS := requirements.txt requirements-dev.txt setup.py pyproject.toml scripts/install_system_deps.sh \
	scripts/build_horovod.sh
STAMP := $(VENV)/.hvdtrain-setup

setup:  ## system packages (as root), venv, frameworks, Horovod (cached build), hvdtrain
	bash scripts/install_system_deps.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	PYTHON=$(PY) bash scripts/build_horovod.sh
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(VENV)/bin/hvdtrain doctor
	touch $(STAMP)

$(STAMP): $(SETUP_INPUTS)
	$(MAKE) --no-print-directory setup

test: $(STAMP) lint  ## the whole suite: lint, unit tests, multi-process tests under horovodrun/mpirun (GPU tests deselected)
	$(PY) -m pytest tests -m "not gpu and not docker"

test-docker: $(STAMP)  ## as root: build docker/Dockerfile.cpu on a private Docker engine, train in one container and across two over sshd
	$(PY) -m pytest tests/docker -m docker -s

test-gpu: $(STAMP)  ## the GPU suite (needs an NVIDIA GPU and Horovod built with NCCL; fails without them)
	$(PY) -m pytest tests/gpu -m gpu

unit: $(STAMP)
	$(PY) -m pytest tests -m "not parallel and not gpu and not docker"

parallel: $(STAMP)
	$(PY) -m pytest tests -m "parallel and not gpu and not docker"

lint: $(STAMP)  ## ruff on Python, hadolint on every Dockerfile (docker/ and templates)
	$(VENV)/bin/ruff check hvdtrain tests examples benchmarks
	find docker hvdtrain/templates -name 'Dockerfile*' -print0 | xargs -0 -r $(VENV)/bin/hadolint

demo: $(STAMP)  ## the main job: 2-worker PyTorch training on the bundled digits data set
	$(VENV)/bin/hvdtrain run -np $(NP) examples/pytorch_digits.py --epochs 30 --output-dir runs/demo

doctor: $(STAMP)
	$(VENV)/bin/hvdtrain doctor

BENCH_STAMP := $(VENV)/.hvdtrain-bench

bench-setup: $(BENCH_STAMP)  ## the peers make bench compares with (Lightning, Accelerate: requirements-bench.txt); never part of make setup

$(BENCH_STAMP): $(STAMP) requirements-bench.txt
	$(PY) -m pip install --quiet -r requirements-bench.txt
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)  ## throughput against raw Horovod, DDP, Lightning, Accelerate and the ceiling; per-step overhead; the pipeline; sharded-state memory. Writes docs/performance-*.md, docs/performance.png and benchmarks/results/
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m benchmarks.run
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m benchmarks.overhead
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m benchmarks.pipeline
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(PY) -m benchmarks.memory

bench-gpu: $(STAMP)  ## GPU throughput (ResNet-50, 3 precisions, Trainer vs raw Horovod vs plain torch); writes docs/performance-gpu.md, or BENCH_GPU_ARGS="--output FILE"
	$(HOROVODRUN) -np 1 --gloo $(PY) -m benchmarks.gpu $(BENCH_GPU_ARGS)

GPU_CARRY_WHEELS := cffi pycparser pytest pluggy iniconfig packaging tqdm PyYAML cloudpickle psutil setuptools wheel \
	tensorboard protobuf absl-py markdown werkzeug MarkupSafe tensorboard-data-server grpcio
gpu-carry: $(STAMP)  ## on a machine with internet: the Horovod sdist and the wheels scripts/gpu_check.sh installs offline (Python 3.12), in .gpu-carry/
	mkdir -p .gpu-carry
	cp $${HVDTRAIN_CACHE_DIR:-$${XDG_CACHE_HOME:-$$HOME/.cache}/hvdtrain}/sdist/horovod-0.28.1.tar.gz .gpu-carry/ 2>/dev/null \
		|| $(PY) -m pip download --no-deps --no-binary :all: horovod==0.28.1 -d .gpu-carry
	$(PY) -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
		-d .gpu-carry $(GPU_CARRY_WHEELS)
	du -sh .gpu-carry

slurm-up:  ## as root: a real one-node Slurm on this host (installs slurm-wlm and munge if missing)
	bash scripts/slurm_local.sh up

slurm-down:  ## stop exactly the Slurm daemons `make slurm-up` started
	bash scripts/slurm_local.sh down

clean:
	rm -rf runs build *.egg-info .pytest_cache
