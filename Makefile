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

# Deployment checkers that are not Python packages of ours: promtool and prometheus (Debian's package,
# unpacked, not installed), docker-compose v1 to validate the compose file without a Docker engine.
TOOLS := build/tools
PROMTOOL := $(TOOLS)/prometheus/usr/bin/promtool
COMPOSE := $(TOOLS)/compose/bin/docker-compose

$(PROMTOOL):
	mkdir -p $(TOOLS)/prometheus
	cd $(TOOLS) && rm -f prometheus_*.deb && apt-get download prometheus 2>/dev/null \
		&& dpkg -x prometheus_*.deb prometheus && rm -f prometheus_*.deb
	test -x $(PROMTOOL)

# docker-compose 1.29 needs PyYAML 5.4.1, which builds only with Cython < 3 and no build isolation.
$(COMPOSE):
	$(PYTHON) -m venv $(TOOLS)/compose
	$(TOOLS)/compose/bin/pip install --quiet --disable-pip-version-check "cython<3" wheel setuptools
	$(TOOLS)/compose/bin/pip install --quiet --disable-pip-version-check --no-build-isolation "pyyaml==5.4.1"
	$(TOOLS)/compose/bin/pip install --quiet --disable-pip-version-check "docker-compose==1.29.2"

.PHONY: tools
tools: $(PROMTOOL) $(COMPOSE)

test: $(STAMP) lint tools
	$(BIN)/python -m pytest -q

# Redis (private, port 6380, data in ./data), one worker with the shipped model, the gateway on :8000.
run: $(STAMP)
	$(BIN)/videogpt-serve up

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info

# Retrain the shipped moving-digits model from scratch (CPU; the README says how long it takes).
# Training state goes to build/train-digits (resumable: rerun to continue); the bundle to weights/moving-digits.
# One prior, class- and frame-conditional, trained with condition dropout: it serves all three modes.
DIGITS := weights/moving-digits
DIGITS_WORK := build/train-digits
DIGITS_DATA := --data moving-digits --train-size 20000 --batch-size 16 --save-dtype float16 --seed 0

.PHONY: train-digits eval-digits
train-digits: $(STAMP)
	$(BIN)/videogpt-serve train-vqvae $(DIGITS_DATA) --resolution 32 --frames 16 --n-hiddens 64 \
		--embedding-dim 64 --n-codes 1024 --n-res-layers 2 --no-axial-attention --downsample 4 4 4 \
		--lr 1e-3 --schedule cosine --steps 5000 --val-every 500 --name moving-digits-vqvae --out $(DIGITS_WORK)/vqvae
	$(BIN)/videogpt-serve train-gpt $(DIGITS_DATA) --vqvae $(DIGITS_WORK)/vqvae --class-cond --n-cond-frames 1 \
		--condition-dropout 0.5 --hidden-dim 144 --heads 4 --layers 4 --dropout 0.1 --attn-dropout 0 \
		--lr 6e-4 --schedule cosine --warmup 100 --steps 5000 --val-every 500 \
		--checkpoint $(DIGITS_WORK)/gpt.train.pt --name moving-digits --out $(DIGITS)

# The quality report of the shipped model (issue figures in the README): eval/report.json, eval/contact_sheet.png.
eval-digits: $(STAMP)
	$(BIN)/videogpt-serve eval $(DIGITS) --classifier $(DIGITS)-classifier.safetensors --n 200 --out eval
