# `make test` and `make run` set up .venv themselves on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install test lint run clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[worker,train,dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

run: $(STAMP)
	@echo "The service is not built yet (see the serving issue). For now: $(BIN)/videogpt-serve --help"
	@exit 1

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
