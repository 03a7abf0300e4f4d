# The targets are the commands CI runs; each creates the virtualenv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: venv serve test lint bench clean

$(BIN)/slatebandit: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/slatebandit

serve: venv
	$(BIN)/slatebandit serve --demo

test: venv
	$(BIN)/pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy slatebandit

bench: venv
	$(BIN)/python -m benchmarks.serve --items 100000

clean:
	rm -rf $(VENV) var .pytest_cache
