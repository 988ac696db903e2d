# The README's two commands: `make demo` (tiny end-to-end run on CPU) and `make test` (the test suite).
# Each sets up what it needs on a fresh machine: a venv with torch==2.13.0 first (a CPU build), then the package.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_ROOT := runs

.PHONY: demo test setup system-deps clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	DS_BUILD_OPS=0 $(BIN)/pip install --quiet -e ".[dev,deepspeed]"
	touch $@

# Debian packages the SLURM tests start a real single-node cluster with (installed when missing, as root).
system-deps:
	bash tests/install_slurm.sh

demo: setup
	rm -rf $(DEMO_ROOT)/demo-regression
	$(BIN)/python launch/fit.py --config configs/demo/regression.yaml run.root=$(DEMO_ROOT)
	@echo "--- $(DEMO_ROOT)/demo-regression/status.json"; cat $(DEMO_ROOT)/demo-regression/status.json
	@ls $(DEMO_ROOT)/demo-regression/checkpoints

test: setup system-deps
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) *.egg-info $(DEMO_ROOT)
