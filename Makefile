# The two commands that matter: `make train` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=
JOBS   ?= $(shell nproc 2>/dev/null || echo 1)

.PHONY: train test test-fast lint format measure results clean-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## train: train the default model (experiments/cnn.yaml) on MNIST, tracked in MLflow; ARGS="--model vit"
train: $(STAMP)
	$(BIN)/python -m mnist_lab train $(ARGS)

## test: lint, then the whole suite on JOBS pytest-xdist workers (default: one per usable core;
## a test file stays on one worker, so its module-wide fixtures are built once)
test: $(STAMP) lint
	$(BIN)/pytest -n $(JOBS) --dist loadfile $(ARGS)

## test-fast: the inner loop, no lint: the tests not marked slow (slow: those that start a
## process, a server or torchrun, and those that train a large model: VGG16, AlexNet,
## ResNet-18, Faster R-CNN)
test-fast: $(STAMP)
	$(BIN)/pytest -n $(JOBS) --dist loadfile -m "not slow" $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## measure: one measure script (make measure ARGS="time-to-accuracy --output-dir results")
measure: $(STAMP)
	$(BIN)/python -m mnist_lab.measure $(if $(ARGS),$(ARGS),training)

## results: regenerate every table of results/ on this machine (ARGS="--quick": ~15 min on 2 cores)
results: $(STAMP)
	$(BIN)/python -m mnist_lab.measure all $(ARGS)

clean-venv:
	rm -rf $(VENV)
