# Two entry points, both self-contained on a fresh machine with Python 3.11:
#   make test   set up .venv if needed, then run the test suite
#   make demo   set up .venv if needed, then the quickstart: test the shipped Qwen2.5-VL grounding prior,
#               GRPO + the MedLoc-R1 curriculum on it, test the result
# and one more:
#   make lab    the curriculum lab's quickstart (BoxPolicy, under a minute)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.medloc-installed
export OMP_NUM_THREADS ?= 1
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup test demo lab bench clean

setup: $(STAMP)

# torch is pinned to the CPU wheel on this machine class *before* anything that depends on it,
# so no resolver ever pulls a multi-GB CUDA build. GPU users install their own torch first.
$(STAMP): setup.cfg setup.py .ci/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c .ci/constraints.txt -e '.[dev]'
	touch $@

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo: $(STAMP)
	@echo "== the grounding prior, before GRPO =="
	$(BIN)/medloc test --config configs/quickstart.yaml
	$(BIN)/medloc fit --config configs/quickstart.yaml
	@echo "== after GRPO with the MedLoc-R1 curriculum =="
	$(BIN)/medloc test --config configs/quickstart.yaml --ckpt_path runs/quickstart/checkpoints/last.ckpt

lab: $(STAMP)
	$(BIN)/medloc fit --config configs/lab_quickstart.yaml
	$(BIN)/medloc test --config configs/lab_quickstart.yaml --ckpt_path runs/lab_quickstart/checkpoints/last.ckpt

bench: $(STAMP)
	$(BIN)/python -m benchmarks.curriculum_overhead

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
