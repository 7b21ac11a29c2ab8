# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The torch build: CPU here; on a GPU machine, e.g. TORCH="torch torchvision" with pip's CUDA index.
TORCH ?= torch==2.14.1 torchvision==0.29.1
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install demo test bench bench-gpu clean

$(BIN)/frelon: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,slurm]'
	touch $@

install: $(BIN)/frelon

demo: install
	snakemake --cores all --configfile config/demo.yaml

test: install
	pytest -q

# Benchmarks (not tests): speed and memory targets, measured on this machine.
bench: install
	python bench/engine_throughput.py
	python bench/checkpointing.py
	python bench/centernet.py --size 256 --batches 1 8 --iterations 5 --train-batch 4 --steps 5

# The GPU check, one call on a machine with one GPU (about 8 minutes): exactness tests on the GPU, the
# checkpointing benchmark and course study, engine throughput; logs and tables under bench/out/.
# It uses .venv where `make install` made one, otherwise a python3 that already has torch.
bench-gpu:
	PYTHON=$(if $(wildcard $(BIN)/python),$(BIN)/python,python3) bash bench/gpu.sh

clean:
	rm -rf data results logs .snakemake
