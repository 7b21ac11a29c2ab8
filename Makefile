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
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
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

# The GPU check, run on a machine with a GPU (one call, a few minutes).
bench-gpu: install
	python bench/engine_throughput.py --device cuda --precision bf16 --channels-last --images 4000 --size 128 --batch 128 --workers 4
	python bench/checkpointing.py --device cuda --batch 64 --steps 20 --warmup 5

clean:
	rm -rf data results logs .snakemake
