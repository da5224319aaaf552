# Fresh machine: `make demo` or `make test` builds .venv from nothing first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup test test-fast demo bench bench-quick model materialize clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU build of torch first (a local file here); any other spec pulls a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# upstream neural-txt, the reference of `rewardrt crosscheck` and of the upstream parity tests:
	# its reward class needs only torch, transformers and pydantic; --no-deps skips the text-generation
	# stack (outlines) the rest of the package pulls in
	$(BIN)/pip install -q --no-deps neural-txt==0.1.7
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m 'not slow'

demo: setup
	$(BIN)/python -m rewardrt.export.demo

bench: setup
	$(BIN)/rewardrt bench --out bench-results

bench-quick: setup
	$(BIN)/rewardrt bench --quick --out bench-results/quick

# training needs labelled sentence pairs that do not ship with the project (see the model card)
model: setup
	@test -n "$(DATA)" || { echo "make model needs DATA=FOLDER holding pairs-train.jsonl and pairs-dev.jsonl (see models/equiv-minilm-l6/README.md)"; exit 2; }
	$(BIN)/rewardrt train --data "$(DATA)" --out .artifacts/equiv-minilm-l6

materialize: setup
	$(BIN)/rewardrt materialize

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks bench-results .artifacts build *.egg-info
