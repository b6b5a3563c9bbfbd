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

# The web page's tests drive Debian's Chromium (no browser download of Playwright's own): installed when
# missing, as root or through sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get -y -q
.PHONY: browser
browser:
	@command -v chromium >/dev/null || { echo "installing Debian's chromium for the web page's tests"; \
		$(APT) install chromium >/dev/null || { $(APT) update >/dev/null && $(APT) install chromium >/dev/null; }; }

# Everything the suite needs on a fresh machine: .venv, the deployment checkers, the browser; then the suite.
test: $(STAMP) lint tools browser
	$(BIN)/python -m pytest -q

# Both images built with podman and run for real (containers, one video per mode, HEALTHCHECKs, compose):
# scripts/image-test.sh, then tests/test_images.py. Needs root; installs podman, runc and debootstrap itself,
# keeps podman's state in build/podman (`scripts/image-test.sh clean` removes it); skips where podman cannot run.
.PHONY: image-test
image-test: $(STAMP)
	BIN=$(BIN) PYTHON=$(PYTHON) scripts/image-test.sh

# Redis (private, port 6380, data in ./data), one worker with the shipped model, the gateway on :8000.
run: $(STAMP)
	$(BIN)/videogpt-serve up

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info

# Retrain the shipped moving-digits models from scratch (CPU; docs/training.md says how long it takes):
# scripts/train-digits.sh. Training state and logs go to build/train-digits (resumable: rerun to continue);
# the bundles to weights/moving-digits (class-conditional and unconditional) and weights/moving-digits-frames.
DIGITS := weights/moving-digits weights/moving-digits-frames

.PHONY: train-digits eval-digits

train-digits: $(STAMP)
	BIN=$(BIN) scripts/train-digits.sh

# The quality report of the shipped model (its figures: docs/evaluation.md): eval/report.json, eval/contact_sheet.png.
eval-digits: $(STAMP)
	$(BIN)/videogpt-serve eval $(DIGITS) --classifier weights/moving-digits-classifier.safetensors --n 1000 --out eval
