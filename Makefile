# Everything runs from a local virtual environment made by the first target that needs it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo demo-crashy test lint typecheck unit bench bench-more soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/plant_demo.py

demo-crashy: $(STAMP)
	$(BIN)/python examples/crashy_driver.py

test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check src tests examples bench
	$(BIN)/ruff format --check src tests examples bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

soak: $(STAMP)
	$(BIN)/pytest -m soak
	$(BIN)/python bench/soak_respawn.py

# Every figure of the performance table, each beside its baseline and target, one summary at the end.
bench: $(STAMP)
	$(BIN)/python bench/all.py

# The other scripts' fuller tables (dispatch round trips, heartbeats, control plane, scrapes, recording).
bench-more: $(STAMP)
	$(BIN)/python bench/dispatch.py
	$(BIN)/python bench/respawn.py
	$(BIN)/python bench/control.py
	$(BIN)/python bench/scrape.py
	$(BIN)/python bench/record.py
	$(BIN)/python bench/callers.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
