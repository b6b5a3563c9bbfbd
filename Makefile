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

# Retrain the shipped moving-digits models from scratch (CPU; see the README for the time it takes).
# Training state goes to build/train-digits (resumable); the bundles to weights/moving-digits.
# Provisional settings: the quality bars of the shipped-model issue are not met by these yet.
DIGITS := weights/moving-digits
DIGITS_WORK := build/train-digits
DIGITS_DATA := --data moving-digits --train-size 20000 --batch-size 16 --save-dtype float16 --seed 0
DIGITS_GPT := --vqvae $(DIGITS_WORK)/vqvae --hidden-dim 144 --heads 4 --layers 4 --lr 5e-4 --val-every 300

.PHONY: train-digits
train-digits: $(STAMP)
	$(BIN)/videogpt-serve train-vqvae $(DIGITS_DATA) --resolution 32 --frames 16 --n-hiddens 64 \
		--embedding-dim 64 --n-codes 512 --n-res-layers 2 --downsample 4 4 4 --steps 1200 --val-every 300 \
		--name moving-digits-vqvae --out $(DIGITS_WORK)/vqvae
	$(BIN)/videogpt-serve train-gpt $(DIGITS_DATA) $(DIGITS_GPT) --class-cond --steps 900 \
		--name moving-digits-class --out $(DIGITS)/class
	$(BIN)/videogpt-serve train-gpt $(DIGITS_DATA) $(DIGITS_GPT) --n-cond-frames 1 --steps 900 \
		--name moving-digits-frames --out $(DIGITS)/frames
	$(BIN)/videogpt-serve train-gpt $(DIGITS_DATA) $(DIGITS_GPT) --steps 700 \
		--name moving-digits-unconditional --out $(DIGITS)/unconditional
