# The README's two commands: `make demo` (tiny end-to-end run on CPU) and `make test` (the test suite).
# Each sets up what it needs on a fresh machine: a venv with torch==2.13.0 first (a CPU build), then the package.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_ROOT := runs

.PHONY: demo demo-cpl demo-flexecontrol demo-comclip test setup system-deps clean

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

# Mojito: a tiny text-to-video model (pretrained once, cached in runs/demo/cache) gets a motion-intensity input trained
# with launch/fit.py, then samples at intensity levels 1..5 and along a trajectory with and without direction control
demo: setup
	$(BIN)/python -m lightning_modules.mojito.demo --root $(DEMO_ROOT)/demo

# CPL vs CoOp vs CoCoOp vs zero-shot CLIP on a synthetic base-to-new task (the tiny CLIP is cached in runs/demo-cpl/cache)
demo-cpl: setup
	$(BIN)/python -m lightning_modules.cpl.demo --root $(DEMO_ROOT)/demo-cpl

# ControlNet vs Uni-ControlNet vs FlexEControl controlling a tiny text-to-image model on synthetic shapes (the base is
# pretrained once and cached in runs/demo-flexecontrol/cache)
demo-flexecontrol: setup
	$(BIN)/python -m lightning_modules.flexecontrol.demo --root $(DEMO_ROOT)/demo-flexecontrol

# ComCLIP vs plain CLIP on the synthetic compositional task (two shapes, colours swapped), with the tiny CLIP the CPL
# demo pretrains (cached in runs/demo-comclip/cache), through launch/evaluate.py test
demo-comclip: setup
	$(BIN)/python -m lightning_modules.comclip.demo --root $(DEMO_ROOT)/demo-comclip

test: setup system-deps
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) *.egg-info $(DEMO_ROOT)
