# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The torch build: CPU here; on a GPU machine, e.g. TORCH="torch torchvision" with pip's CUDA index.
TORCH ?= torch==2.14.1 torchvision==0.29.1
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install demo test bench bench-gpu mutate clean

# uv installs from its cache by hard links: a second install takes seconds where pip unpacks torch's 5 GB
# again. uv does not read pip's configuration, so pip's indexes and find-links (a local mirror) are handed
# on; any index may then serve a package (unsafe-best-match), as with pip. Without uv, pip does it all.
PIP_SETTING = $(shell $(PYTHON) -m pip config get global.$(1) 2>/dev/null)
UV_ARGS = --compile-bytecode --index-strategy unsafe-best-match \
	$(foreach u,$(call PIP_SETTING,extra-index-url),--extra-index-url $(u)) \
	$(foreach l,$(call PIP_SETTING,find-links),--find-links $(l))

$(BIN)/frelon: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	if $(BIN)/pip install --quiet --disable-pip-version-check uv; then \
		$(BIN)/uv pip install --quiet --python $(BIN)/python $(UV_ARGS) $(TORCH) -e '.[test,slurm]'; \
	else \
		$(BIN)/pip install --quiet --disable-pip-version-check $(TORCH) && \
		$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,slurm]'; \
	fi
	touch $@

install: $(BIN)/frelon

demo: install
	snakemake --cores all --configfile config/demo.yaml

test: install
	pytest -q

# Benchmarks (not tests), about 4 minutes on 2 cores: each writes bench/out/<name>.json, then one table
# (bench/out/summary.{md,json}). Small CPU settings; the GPU-only figures say skipped (see bench-gpu).
bench: install
	rm -f bench/out/*.json bench/out/summary.md
	python bench/engine_throughput.py --images 400 --size 32 --batch 32 --epochs 3 --rounds 4
	python bench/engine_throughput.py --task detection --images 96 --size 64 --batch 8 --epochs 3 --rounds 2
	python bench/input_pipeline.py --images 1600 --detection-images 128 --epochs 3
	python bench/checkpointing.py --size 112 --batches 8 --steps 5 --warmup 2
	python bench/centernet.py --batches 1 --iterations 2 --decoders deconv --steps 0
	python bench/gpu_throughput.py
	python bench/coco_eval.py
	python bench/pipeline_overhead.py
	python bench/summary.py --command "make bench"

# The GPU benchmarks, one call on a machine with one GPU, within 10 minutes (bench/gpu.sh: per-step time
# limits, logs and JSON under bench/out/, the same summary table). Only torch and torchvision are needed:
# it uses .venv where `make install` made one, otherwise python3. `make bench-gpu SMOKE=1` runs every
# step tiny on the CPU, to check the script.
bench-gpu:
	PYTHON=$(if $(wildcard $(BIN)/python),$(BIN)/python,python3) SMOKE=$(or $(SMOKE),0) bash bench/gpu.sh

# Mutation testing of the modules whose numbers the tables report, each against its own fast tests
# (tools/mutate.py; not part of `make test`): the kill rate per module and every survivor, explained or not.
MUTMUT := mutmut==3.8.1
mutate: install
	$(BIN)/uv pip install --quiet --python $(BIN)/python $(UV_ARGS) '$(MUTMUT)' 2>/dev/null || \
		$(BIN)/pip install --quiet --disable-pip-version-check '$(MUTMUT)'
	python tools/mutate.py $(MODULES)

clean:
	rm -rf data results logs .snakemake .mutate
