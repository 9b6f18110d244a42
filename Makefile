# Two commands on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)

.PHONY: setup serve test test-deploy check clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,local]'
	rm -f $(VENV)/.installed-*
	touch $@

serve: $(STAMP)
	$(BIN)/voice-bridge serve $(ARGS)

check: $(STAMP)
	$(BIN)/voice-bridge check $(ARGS)

# playwright-core for the softphone's browser test (Debian's chromium; no browser is downloaded). Without npm
# the browser tests skip and say why.
tests/browser/node_modules: tests/browser/package-lock.json
	-command -v npm >/dev/null && cd tests/browser && (npm ci --no-audit --no-fund || npm install --no-audit --no-fund)

# -rs: every skip says why (and how to install what it needs).
# Most tests are calls in real time, mostly waiting: three workers (a test file each at a time) cut the
# wall time to about a third on two cores without crowding them.
test: $(STAMP) tests/browser/node_modules
	$(BIN)/python -m pytest -q -rs -n 3 --dist loadfile --ignore=tests/deploy $(ARGS)

# Slow (minutes, root): builds the Dockerfile with podman from a debootstrap base, runs the image's entry
# point from its mounted root filesystem, calls it, checks the HEALTHCHECK and the systemd unit.
test-deploy: $(STAMP)
	$(BIN)/python -m pytest -q -rs tests/deploy $(ARGS)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
